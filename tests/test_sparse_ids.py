"""Sparse or huge sample ids (issue 13): one dense slot per distinct id, outputs keep the ids."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from conftest import BlobsDataset
from dq_plugins import load_samples
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.raw_record import load_history
from dq_plugins.recording.session import DynamicsSession, SessionConfig
from dq_plugins.recording.slots import SlotMap, dataset_ids
from test_lightning_callback import TinyClassifier, make_trainer

TRAIN_BASE, TRAIN_STEP = 10**12, 7  # train id of sample k: 10**12 + 7k
VAL_BASE, VAL_STEP = 5 * 10**11, 3


class Renumbered(Dataset):
    """``BlobsDataset`` items under id ``base + step * k`` (``base=0, step=1``: the dense ids); sample 5 copies
    the input of sample 3 (a near-duplicate with another label), ``copy_from``: this split's sample 2 copies
    row 4 of that dataset (a leak)."""

    def __init__(self, n: int, base: int, step: int, seed: int = 0, copy_from: BlobsDataset | None = None) -> None:
        self.blobs = BlobsDataset(n, seed=seed)
        self.blobs.inputs[5] = self.blobs.inputs[3]
        if copy_from is not None:
            self.blobs.inputs[2] = copy_from.inputs[4]
        self.base, self.step = base, step

    @property
    def ids(self) -> np.ndarray:
        return self.base + self.step * np.arange(len(self.blobs), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> dict:
        item = self.blobs[index]
        return {**item, "idx": self.base + self.step * index}


def _fit(callback, train, val=None, max_epochs=3, **kwargs):
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(callback, max_epochs=max_epochs, **kwargs)
    val_loader = DataLoader(val, batch_size=16) if val is not None else None
    trainer.fit(TinyClassifier(), DataLoader(train, batch_size=16), val_loader)
    return callback


def _pair(n=64, n_val=24):
    dense_train = Renumbered(n, 0, 1)
    sparse_train = Renumbered(n, TRAIN_BASE, TRAIN_STEP)
    dense_val = Renumbered(n_val, 0, 1, seed=1, copy_from=dense_train.blobs)
    sparse_val = Renumbered(n_val, VAL_BASE, VAL_STEP, seed=1, copy_from=sparse_train.blobs)
    return dense_train, sparse_train, dense_val, sparse_val


def _dense(ids: pd.Series, base: int, step: int) -> np.ndarray:
    ids = ids.to_numpy(np.int64)
    return np.where(ids >= 0, (ids - base) // step, ids)


def test_sparse_huge_ids_give_the_scores_of_dense_ids_under_the_original_ids(tracking_uri, tmp_path):
    dense_train, sparse_train, dense_val, sparse_val = _pair()
    dense = _fit(DataQualityCallback(), dense_train, dense_val)
    sparse = _fit(DataQualityCallback(sample_ids={"train": sparse_train.ids, "validation": sparse_val.ids}),
                  sparse_train, sparse_val)
    assert sparse.session.capacities == {"train": 64, "validation": 24}  # memory follows the number of ids
    got, want = load_samples(sparse.run_id), load_samples(dense.run_id)
    assert set(got.loc[got["split"] == "train", "sample_id"]) == set(sparse_train.ids)
    assert set(got.loc[got["split"] == "validation", "sample_id"]) == set(sparse_val.ids)
    train, val = got["split"] == "train", got["split"] == "validation"
    got.loc[train, "sample_id"] = _dense(got.loc[train, "sample_id"], TRAIN_BASE, TRAIN_STEP)
    got.loc[val, "sample_id"] = _dense(got.loc[val, "sample_id"], VAL_BASE, VAL_STEP)
    got.loc[train, "near_duplicate_of"] = _dense(got.loc[train, "near_duplicate_of"], TRAIN_BASE, TRAIN_STEP)
    got.loc[val, "near_duplicate_of"] = _dense(got.loc[val, "near_duplicate_of"], VAL_BASE, VAL_STEP)
    got["train_duplicate_of"] = _dense(got["train_duplicate_of"], TRAIN_BASE, TRAIN_STEP)
    key = ["split", "sample_id"]
    got = got.sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    assert want.loc[(want["split"] == "train") & (want["sample_id"] == 5), "near_duplicate_of"].item() == 3
    assert want.loc[(want["split"] == "validation") & (want["sample_id"] == 2), "train_duplicate_of"].item() == 4
    assert got["latency_ms"].notna().all()  # timed under its slot; wall time differs between the fits
    pd.testing.assert_frame_equal(got.drop(columns="latency_ms"), want.drop(columns="latency_ms"),
                                  check_dtype=False, rtol=1e-6)
    raw = load_history(mlflow.MlflowClient().download_artifacts(sparse.run_id, "dq/raw/train.npz", str(tmp_path)))
    np.testing.assert_array_equal(raw.sample_ids, sparse_train.ids)  # the raw record keeps the slot -> id table
    from dq_plugins.sinks.offline import reanalyze

    again = reanalyze(sparse.run_id, child_run=True).result.samples  # `dq analyze`: raw record + artifacts
    again = again.sort_values(key).set_index(key)
    fit_time = load_samples(sparse.run_id).sort_values(key).set_index(key)
    assert again.index.equals(fit_time.index)
    for column in ("near_duplicate_of", "train_duplicate_of", "mislabel_score", "outlier_score"):
        np.testing.assert_allclose(again[column], fit_time[column], rtol=1e-6, err_msg=column)


def test_ids_of_a_datasets_column_are_read_without_the_option(tracking_uri):
    datasets = pytest.importorskip("datasets")
    blobs = BlobsDataset(48)
    ids = TRAIN_BASE + TRAIN_STEP * np.arange(48)
    table = datasets.Dataset.from_dict({"idx": ids, "inputs": blobs.inputs.numpy(), "labels": blobs.labels.numpy()})
    callback = _fit(DataQualityCallback(embeddings=False), table.with_format("torch"), max_epochs=1)
    assert callback.session.slot_maps["train"].size == 48
    assert set(load_samples(callback.run_id)["sample_id"]) == set(ids)
    dense = DynamicsSession(SessionConfig())  # ids 0..n-1 read the same way: no map
    dense.set_sample_ids("train", dataset_ids(table.map(lambda row, i: {"idx": i}, with_indices=True), "idx"))
    assert dense.slot_maps == {} and dense.capacities == {"train": 48}


def test_dense_ids_take_the_identity_path():
    session = DynamicsSession(SessionConfig())
    session.set_sample_ids("train", np.arange(10)[::-1])
    ids = torch.arange(4)
    assert session.slot_maps == {} and session.capacities == {"train": 10}
    assert session.to_slots("train", ids) is ids  # nothing computed, nothing allocated
    session = DynamicsSession(SessionConfig(num_samples=200))
    session.set_sample_ids("train", np.arange(100, 150))  # a subset of numbered samples under num_samples
    assert session.slot_maps == {} and session.capacities == {"train": 200}


def test_a_checkpoint_with_slot_tables_is_version_3_and_restores_them():
    session = DynamicsSession(SessionConfig())
    session.set_sample_ids("train", TRAIN_BASE + 7 * np.arange(4))
    session.record("train", 0, session.to_slots("train", TRAIN_BASE + 7 * torch.arange(4)), torch.tensor([0, 1, 0, 1]),
                   torch.zeros(4, 2))
    state = session.state_dict()
    assert state["version"] == 3  # a dq_plugins that cannot map the ids refuses it rather than misreading it
    restored = DynamicsSession(SessionConfig())
    restored.load_state_dict(state)
    restored.set_capacity("train", 4)
    np.testing.assert_array_equal(restored.slot_maps["train"].table, TRAIN_BASE + 7 * np.arange(4))


def test_slot_map_finds_known_ids_and_sends_unknown_ones_to_the_trash_slot():
    slot_map = SlotMap(np.array([10**12 + 5, -3, 10**12 + 5, 7]))
    assert slot_map.table.tolist() == [-3, 7, 10**12 + 5]
    got = slot_map.slots(torch.tensor([7, 10**12 + 5, -3, 8, 10**13, -10]))
    assert got.tolist() == [1, 2, 0, 3, 3, 3]


def test_an_unknown_id_in_a_later_batch_is_counted_and_warned_not_recorded(tracking_uri):
    data = Renumbered(48, TRAIN_BASE, TRAIN_STEP)
    known = np.delete(data.ids, 40)  # id of sample 40 (third batch) missing from sample_ids
    with pytest.warns(RuntimeWarning, match=r"1 train rows in epoch 0 had a sample id not among the 47 known ids"):
        callback = _fit(DataQualityCallback(sample_ids=known, embeddings=False), data, max_epochs=1)
    samples = load_samples(callback.run_id)
    assert set(samples["sample_id"]) == set(known)
    assert (samples["label"].to_numpy() == _dense(samples["sample_id"], TRAIN_BASE, TRAIN_STEP) % 3).all()


def test_an_unknown_id_in_the_first_batch_is_an_error_naming_it():
    session = DynamicsSession(SessionConfig())
    session.set_sample_ids("train", TRAIN_BASE + 7 * np.arange(1, 32))
    with pytest.raises(ValueError, match=rf"Sample id {TRAIN_BASE} under `idx` is not one of the 31 ids.*sample_ids="):
        session.to_slots("train", TRAIN_BASE + 7 * torch.arange(16))
    later = session.to_slots("train", TRAIN_BASE + 7 * torch.arange(16))  # later batches: counted, not raised
    assert later.tolist() == [31, *range(15)]


def test_memory_follows_the_distinct_ids_and_fails_before_allocating_above_the_budget():
    session = DynamicsSession(SessionConfig(memory_budget_mb=1))
    with pytest.raises(MemoryError, match=r"100,000 distinct train sample ids\), above memory_budget_mb=1.*HINT"):
        session.set_sample_ids("train", TRAIN_BASE + 7 * np.arange(100_000))
    assert not session.slot_maps and not session.ledgers
    with pytest.raises(ValueError, match=r"integer sample ids in `sample_ids=`, but got dtype float64"):
        session.set_sample_ids("train", np.array([0.5, 1.5]))


def test_resume_keeps_the_slots_and_refuses_a_changed_dataset(tracking_uri, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    data = Renumbered(48, TRAIN_BASE, TRAIN_STEP)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = DataQualityCallback(sample_ids=data.ids, embeddings=False)
    _fit(first, data, max_epochs=2, callbacks=[first, checkpoint], enable_checkpointing=True)
    path = str(tmp_path / "ckpt" / "last.ckpt")
    second = DataQualityCallback(embeddings=False)  # no ids given: the checkpoint's table is used
    pl.seed_everything(0, verbose=False)
    make_trainer(second, max_epochs=3, callbacks=[second], enable_checkpointing=False).fit(
        TinyClassifier(), DataLoader(data, batch_size=16), ckpt_path=path)
    assert second.session.ledgers["train"].to_history().epochs.tolist() == [0, 1, 2]
    samples = load_samples(second.run_id)
    assert set(samples["sample_id"]) == set(data.ids) and len(samples) == 48
    third = DataQualityCallback(sample_ids=data.ids + 1, embeddings=False)
    with pytest.raises(ValueError, match=r"holds 48 sample ids, but `sample_ids=` \(train\) has ids it lacks.*HINT"):
        make_trainer(third, max_epochs=3).fit(TinyClassifier(), DataLoader(data, batch_size=16), ckpt_path=path)


def test_hugging_face_sparse_id_column(tracking_uri, tmp_path):
    pytest.importorskip("transformers")
    from test_transformers_callback import TRAIN, VAL, train

    sparse_train = TRAIN.map(lambda row: {"idx": TRAIN_BASE + TRAIN_STEP * row["idx"]})
    sparse_val = VAL.map(lambda row: {"idx": VAL_BASE + VAL_STEP * row["idx"]})
    dense, _ = train(tmp_path / "dense")
    sparse, _ = train(tmp_path / "sparse", train_dataset=sparse_train, eval_dataset=sparse_val)
    assert sparse.session.capacities == {"train": len(TRAIN), "validation": len(VAL)}
    got, want = load_samples(sparse.run_id), load_samples(dense.run_id)
    for split, base, step in (("train", TRAIN_BASE, TRAIN_STEP), ("validation", VAL_BASE, VAL_STEP)):
        rows = got[got["split"] == split].sort_values("sample_id")
        reference = want[want["split"] == split].sort_values("sample_id")
        assert (rows["sample_id"].to_numpy() - base) // step == pytest.approx(reference["sample_id"].to_numpy())
        np.testing.assert_allclose(rows["confidence"], reference["confidence"], rtol=1e-5)
        assert rows["label"].tolist() == reference["label"].tolist()


def test_a_sparse_dataset_that_grows_past_its_ids_names_the_option(tracking_uri):
    from test_reliability import _resizing_module

    class Growing(Renumbered):
        sizes, size = {0: 48, 1: 96}, 48

        def __len__(self) -> int:
            return self.size

    data = Growing(96, TRAIN_BASE, TRAIN_STEP)
    callback = DataQualityCallback(sample_ids=data.ids[:48], embeddings=False, fingerprints=False)
    with pytest.raises(ValueError, match=r"grew from 48 to 96 samples.*sized its record for the 48 ids it was given"
                                         r".*HINT: pass every id the dataset will hold as `sample_ids=`"):
        make_trainer(callback, max_epochs=2).fit(_resizing_module(data), DataLoader(data, batch_size=16))
