"""Recipe: train a Lightning classifier on noisy labels and find the flipped ones.

    python -m recipes.lightning_classification                      # MNIST-5k, 20% symmetric noise
    python -m recipes.lightning_classification --config recipes/configs/lightning_mnist.yaml --noise-rate 0.3

Steps: load a real offline data set, flip a fraction of the train labels with a fixed seed,
train an MLP with ``DataQualityCallback`` attached (the one line this toolkit asks for),
then print the top issues, how well the flags match the injected flips, and the MLflow run.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from recipes.common import add_common_arguments, config_from_args, inject_noise, load_dataset, print_report, stratified_split
from recipes.common.models import MLPClassifier


def build_module(num_features: int, num_classes: int, learning_rate: float, hidden: int = 256) -> MLPClassifier:
    """The recipe's MLP: ``num_features -> hidden -> num_classes`` with dropout 0.2, Adam."""
    return MLPClassifier(num_features, num_classes, hidden=(hidden,), dropout=0.2, lr=learning_rate)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv), recipe="lightning")
    if cfg.model != "mlp":
        parser.error(f"--model {cfg.model!r}: this recipe trains its own MLP ('mlp'); use the transformers recipe for hub models.")

    import mlflow
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import MLFlowLogger

    from dq_plugins import with_ids
    from dq_plugins.lightning import DataQualityCallback

    pl.seed_everything(cfg.seed, verbose=False)
    data = load_dataset(cfg.dataset)
    if data.features is None:
        parser.error(f"--dataset {cfg.dataset!r} is a text data set; use recipes/text_classification.py.")
    train_idx, val_idx = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
    if cfg.max_samples:
        train_idx = train_idx[: cfg.max_samples]
    noisy, flipped = inject_noise(data.labels[train_idx], cfg.noise_rate, cfg.noise_kind, data.num_classes, cfg.seed)
    features = torch.as_tensor(data.features)
    train = with_ids(TensorDataset(features[train_idx], torch.as_tensor(noisy)))
    val = with_ids(TensorDataset(features[val_idx], torch.as_tensor(data.labels[val_idx])))

    tracking_uri = cfg.tracking_uri or mlflow.get_tracking_uri()
    logger = MLFlowLogger(experiment_name=cfg.experiment_name, tracking_uri=tracking_uri,
                          run_name=f"{cfg.dataset}-{cfg.noise_kind}{cfg.noise_rate:g}")
    logger.log_hyperparams({k: v for k, v in vars(cfg).items() if k != "extra"})
    callback = DataQualityCallback()  # the one line: ids under "idx", labels under "labels"
    trainer = pl.Trainer(max_epochs=cfg.epochs, callbacks=[callback], logger=logger, accelerator="auto",
                         devices=1, enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=10)
    trainer.fit(build_module(features.shape[1], data.num_classes, cfg.learning_rate),
                DataLoader(train, batch_size=cfg.batch_size, shuffle=True), DataLoader(val, batch_size=512))

    samples = callback.result.samples
    print_report(samples, flipped_ids=np.flatnonzero(flipped), run_id=callback.run_id,
                 tracking_uri=tracking_uri, class_names=data.class_names)
    return callback.run_id


if __name__ == "__main__":
    main()
