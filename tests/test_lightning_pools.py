"""Unlabeled pools given to the Lightning callback as DataLoaders: embedded after fit through the
same hook as the train split, then used by a ``SelectSimilar`` rule."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from conftest import BlobsDataset
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.rules import Condition, Rule, SelectSimilar
from dq_plugins.selection import EmbeddingPool
from test_lightning_callback import TinyClassifier, fit


class Unlabeled(Dataset):
    """The inputs of a BlobsDataset without their labels (items: idx, inputs)."""

    def __init__(self, blobs: BlobsDataset) -> None:
        self.blobs = blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> dict:
        return {"idx": index, "inputs": self.blobs.inputs[index]}


def forward_fn(module, batch):
    return module(batch["inputs"])


def test_a_loader_pool_is_embedded_like_the_train_split_and_selected_from(tracking_uri):
    pool_blobs = BlobsDataset(60, seed=0)  # the blob centres of the train set (seed 0), other points; label = id % 3
    rules = [Rule("class_zero", Condition("label", "==", 0),
                  then=[SelectSimilar(k=8, pool="unlabeled", diversity_threshold=None)])]
    module = TinyClassifier()
    callback, _ = fit(DataQualityCallback(forward_fn=forward_fn, rules=rules,
                                          pools={"unlabeled": DataLoader(Unlabeled(pool_blobs), batch_size=16)}),
                      module=module, max_epochs=4)
    pool = callback.pools["unlabeled"]
    assert isinstance(pool, EmbeddingPool) and sorted(pool.ids) == list(range(60))
    with torch.no_grad():  # the input of the head, with the final weights
        expected = module.backbone(pool_blobs.inputs[torch.as_tensor(pool.ids)]).numpy()
    np.testing.assert_allclose(pool.embeddings, expected, rtol=1e-5, atol=1e-6)

    selection = mlflow.MlflowClient().load_table(mlflow.get_experiment_by_name("Default").experiment_id,
                                                 artifact_file="dq/rules/class_zero_selection.json",
                                                 run_ids=[callback.run_id])
    # similarity = cosine to the nearest class-0 train sample (embeddings of the final weights); the top 8 are picked
    train_ids, train_emb = callback.session.embeddings["train"].to_numpy()
    queries = train_emb[train_ids % 3 == 0].astype(np.float64)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    similarity = (unit(pool.embeddings.astype(np.float64)) @ unit(queries).T).max(1)
    rows = [list(pool.ids).index(int(i)) for i in selection["pool_id"]]
    np.testing.assert_allclose(selection["similarity"], similarity[rows], atol=2e-3)  # train embeddings are float16
    assert len(rows) == 8 and similarity[rows].min() >= np.sort(similarity)[-8] - 2e-3
    assert (pool.ids[rows] % 3 == 0).mean() >= 0.75  # look-alikes of class 0


def test_a_loader_pool_needs_forward_fn():
    with pytest.raises(ValueError, match=r"\['unlabeled'\] are DataLoaders.*needs `forward_fn=`"):
        DataQualityCallback(pools={"unlabeled": DataLoader(Unlabeled(BlobsDataset(8)))})
    with pytest.raises(ValueError, match=r"\['bad'\] are neither an EmbeddingPool nor a DataLoader"):
        DataQualityCallback(pools={"bad": 3}, forward_fn=forward_fn)
