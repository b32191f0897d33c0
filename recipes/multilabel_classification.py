"""Recipe: multi-label classification on noisy labels with Lightning, and the wrong labels found.

    python -m recipes.multilabel_classification --config recipes/configs/multilabel_digits.yaml

Steps: load the offline digits (``digits``, or ``mnist5k``), give each image the multi-hot attributes
of its digit (``recipes/common/multilabel.py``), change one label of ``noise_rate`` of the train
samples with a fixed seed (a swap, a drop or an add), train an MLP with
``DataQualityCallback(task="multilabel")``, then print the top issues with the classes to add or
remove, how well the flags match the injected errors, and the MLflow run.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from recipes.common import add_common_arguments, config_from_args, load_dataset, stratified_split
from recipes.common.multilabel import ATTRIBUTES, digit_attributes, inject_multilabel_noise


class MultiHot(Dataset):
    """Items ``{"x", "labels": (C,) float multi-hot, "idx"}``."""

    def __init__(self, x: torch.Tensor, labels: np.ndarray) -> None:
        self.x, self.labels = x, torch.as_tensor(labels, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.labels[i], "idx": i}


def build_module(num_features: int, num_classes: int, learning_rate: float, hidden: int = 128):
    """An MLP ``num_features -> hidden -> num_classes`` trained with one sigmoid per class (Adam)."""
    import pytorch_lightning as pl

    class MultiLabelMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(num_features, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, num_classes))

        def _step(self, batch):
            logits = self.net(batch["x"])
            return {"loss": F.binary_cross_entropy_with_logits(logits, batch["labels"]), "logits": logits}

        def training_step(self, batch, batch_idx):
            return self._step(batch)

        def validation_step(self, batch, batch_idx):
            return self._step(batch)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=learning_rate)

    return MultiLabelMLP()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv), recipe="lightning")

    import mlflow
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import MLFlowLogger
    from sklearn.metrics import average_precision_score, f1_score

    from dq_plugins.lightning import DataQualityCallback

    pl.seed_everything(cfg.seed, verbose=False)
    data = load_dataset(cfg.dataset)
    if data.features is None or data.num_classes != 10:
        parser.error(f"--dataset {cfg.dataset!r}: this recipe needs a digit image set ('digits' or 'mnist5k').")
    train_idx, val_idx = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
    clean = digit_attributes(data.labels)
    noisy, changed = inject_multilabel_noise(clean[train_idx], cfg.noise_rate, cfg.seed)
    features = torch.as_tensor(data.features, dtype=torch.float32)
    features = features / features.max()
    train, val = MultiHot(features[train_idx], noisy), MultiHot(features[val_idx], clean[val_idx])

    tracking_uri = cfg.tracking_uri or mlflow.get_tracking_uri()
    logger = MLFlowLogger(experiment_name=cfg.experiment_name, tracking_uri=tracking_uri,
                          run_name=f"{cfg.dataset}-multilabel{cfg.noise_rate:g}")
    logger.log_hyperparams({k: v for k, v in vars(cfg).items() if k != "extra"})
    callback = DataQualityCallback(task="multilabel")
    trainer = pl.Trainer(max_epochs=cfg.epochs, callbacks=[callback], logger=logger, accelerator="auto",
                         devices=1, enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=10)
    trainer.fit(build_module(features.shape[1], clean.shape[1], cfg.learning_rate),
                DataLoader(train, batch_size=cfg.batch_size, shuffle=True), DataLoader(val, batch_size=512))

    result = callback.result
    rows = result.samples[result.samples["split"] == "train"].sort_values("sample_id")
    truth = changed.any(axis=1)
    print(result.issues.head(10).to_string(index=False))
    print(f"classes: {dict(enumerate(ATTRIBUTES))}")
    print(f"injected errors: {int(truth.sum())} of {len(truth)} train samples; flagged "
          f"{int(rows['is_label_issue'].sum())}; flag F1 {f1_score(truth, rows['is_label_issue']):.3f}; "
          f"mislabel_score AUPRC {average_precision_score(truth, rows['mislabel_score']):.3f}")
    print(f"MLflow run {callback.run_id} at {tracking_uri}")
    return callback.run_id


if __name__ == "__main__":
    main()
