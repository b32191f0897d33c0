"""Real MLflow runs for the tests of the command line, fix and select_subset.

A tiny MLP trained with :class:`dq_plugins.lightning.DataQualityCallback` on
:class:`conftest.BlobsDataset` with some labels flipped, so the run holds every artifact the
callback writes (samples, issues, data map, raw record) and a few flagged label issues.
Test modules build them once, in a module-scoped fixture (:func:`module_store`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from conftest import BlobsDataset
from recipes.common.models import MLPClassifier

NUM_SAMPLES = 150
NUM_CLASSES = 3


class NoisyBlobs(BlobsDataset):
    """BlobsDataset whose labels at ``flipped`` ids moved to the next class."""

    def __init__(self, n: int = NUM_SAMPLES, flip_fraction: float = 0.1, seed: int = 0) -> None:
        super().__init__(n, NUM_CLASSES, seed=seed)
        self.clean_labels = self.labels.clone()
        rng = np.random.default_rng(seed)
        self.flipped = np.sort(rng.choice(n, size=round(flip_fraction * n), replace=False))
        self.labels[self.flipped] = (self.labels[self.flipped] + 1) % NUM_CLASSES


def tiny_mlp(dim: int = 8, num_classes: int = NUM_CLASSES) -> MLPClassifier:
    """The example MLP, ``dim -> 16 -> num_classes``, SGD at 0.1."""
    return MLPClassifier(dim, num_classes, hidden=(16,), lr=0.1, optimizer="sgd", log_val_loss=False)


def train_run(tracking_uri: str, *, seed: int = 0, flip_fraction: float = 0.1, epochs: int = 6) -> tuple[str, NoisyBlobs]:
    """Train once with the callback; returns ``(run_id, train dataset)``."""
    from dq_plugins.lightning import DataQualityCallback

    pl.seed_everything(seed, verbose=False)
    train = NoisyBlobs(flip_fraction=flip_fraction, seed=seed)
    val = BlobsDataset(45, NUM_CLASSES, seed=seed + 100)
    callback = DataQualityCallback(tracking_uri=tracking_uri, run_name=f"blobs-seed{seed}")
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.fit(tiny_mlp(), DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=64))
    assert callback.run_id is not None
    return callback.run_id, train


@dataclass(frozen=True)
class Store:
    """A sqlite MLflow store holding two trained runs.

    Attributes:
        uri: the tracking URI.
        run_a: trained with 10% flipped labels (seed 0); ``train_a`` is its train dataset.
        run_b: trained with 20% flipped labels (seed 1).
    """

    uri: str
    folder: Path
    run_a: str
    run_b: str
    train_a: NoisyBlobs


_STORE: Store | None = None


def shared_store(tmp_path_factory) -> Store:
    """The session's :class:`Store`, trained on first use (two tiny fits, one store).

    Tests that change a run in place (``dq analyze``) work on copies (:func:`copy_run`), so the test
    modules may share these runs in any order.
    """
    global _STORE
    if _STORE is None:
        folder = tmp_path_factory.mktemp("dq_store")
        uri = f"sqlite:///{folder}/mlflow.db"
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)  # the store keeps its artifacts under ./mlruns
            run_a, train_a = train_run(uri, seed=0, flip_fraction=0.1)
            run_b, _ = train_run(uri, seed=1, flip_fraction=0.2)
        _STORE = Store(uri, folder, run_a, run_b, train_a)
    return _STORE


@contextlib.contextmanager
def use_store(store: Store) -> Iterator[Store]:
    """Make ``store`` MLflow's current tracking URI (also through MLFLOW_TRACKING_URI) while open."""
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(store.folder)
        patch.setenv("MLFLOW_TRACKING_URI", store.uri)
        mlflow.set_tracking_uri(store.uri)
        try:
            yield store
        finally:
            mlflow.set_tracking_uri(None)


def copy_run(store: Store, run_id: str, paths: tuple[str, ...]) -> str:
    """A new run in the store holding copies of the artifact files ``paths`` of ``run_id`` and of its
    ``dq.projection`` tag (which ``dq analyze`` reads)."""
    import tempfile

    import mlflow

    client = mlflow.MlflowClient(store.uri)
    source = client.get_run(run_id)
    copy = client.create_run(source.info.experiment_id, run_name="copy").info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            local = client.download_artifacts(run_id, path, tmp)
            client.log_artifact(copy, local, artifact_path=str(Path(path).parent))
    if "dq.projection" in source.data.tags:
        client.set_tag(copy, "dq.projection", source.data.tags["dq.projection"])
    client.set_terminated(copy)
    return copy
