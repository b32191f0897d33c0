"""Bounded memory and checkpoints: spilled history, host softmax sums, budget errors, upload caps."""

import errno
import io
import os

import numpy as np
import pytest
import torch

from dq_plugins.recording.history_store import EpochStore
from dq_plugins.recording.ledger import DEVICE_BYTES_PER_SAMPLE, SplitLedger, planned_bytes
from dq_plugins.raw_record import upload_sample
from dq_plugins.recording.session import DynamicsSession, SessionConfig


def _train(ledger: SplitLedger, epochs: range, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    n, c = ledger.capacity, ledger.num_classes
    for epoch in epochs:
        ids = torch.randperm(n, generator=gen)
        for start in range(0, n, 32):
            batch = ids[start:start + 32]
            ledger.record(batch, batch % c, torch.randn(len(batch), c, generator=gen), epoch)
        ledger.close_epoch()


def _checkpoint_bytes(ledger: SplitLedger) -> int:
    buffer = io.BytesIO()
    torch.save(ledger.state_dict(), buffer)
    return buffer.tell()


def test_checkpoint_does_not_grow_with_epochs_and_resume_reads_the_spilled_epochs(tmp_path):
    ledger = SplitLedger(500, 5, history_folder=str(tmp_path / "train"))
    _train(ledger, range(2))
    after_two = _checkpoint_bytes(ledger)
    _train(ledger, range(2, 8))
    state = ledger.state_dict()
    assert _checkpoint_bytes(ledger) <= 1.25 * after_two
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [f"epoch_{e:05d}.npz" for e in range(8)]
    restored = SplitLedger.from_state_dict(state)
    expected, got = ledger.to_history(), restored.to_history()
    assert got.epochs.tolist() == list(range(8))
    for name, values in expected.fields.items():
        np.testing.assert_array_equal(got.fields[name], values)
    np.testing.assert_array_equal(got.mean_probs, expected.mean_probs)


def test_missing_history_folder_is_fetched_or_named_in_a_clear_error(tmp_path):
    ledger = SplitLedger(50, 3, history_folder=str(tmp_path / "spill"))
    _train(ledger, range(2))
    state = ledger.state_dict()
    saved = {e: ledger.history[e] for e in ledger.history}
    copies = tmp_path / "copies"
    copies.mkdir()
    for epoch, row in saved.items():
        np.savez(copies / f"{epoch}.npz", **row)
    for path in (tmp_path / "spill").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"epochs \[0, 1\] is not in .*spill.*HINT: copy that folder"):
        SplitLedger.from_state_dict(state)
    restored = SplitLedger.from_state_dict(state, fetch=lambda epoch: dict(np.load(copies / f"{epoch}.npz")))
    np.testing.assert_array_equal(restored.history[1]["loss"], saved[1]["loss"])
    assert (tmp_path / "spill" / "epoch_00001.npz").exists()  # written back for the next resume


def test_unwritable_history_folder_warns_with_the_folder_and_keeps_the_record(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the folder should be")
    ledger = SplitLedger(20, 2, history_folder=str(blocker / "train"))
    with pytest.warns(RuntimeWarning, match=r"could not write .*not_a_folder.*HINT: free disk space there or pass `history_dir=`"):
        _train(ledger, range(2))
    history = ledger.to_history()
    assert history.epochs.tolist() == [0, 1] and np.isfinite(history.fields["loss"]).all()
    restored = SplitLedger.from_state_dict(ledger.state_dict())  # the rows travel in the checkpoint instead
    np.testing.assert_array_equal(restored.to_history().fields["loss"], history.fields["loss"])


def test_full_disk_warns_and_keeps_every_epoch(tmp_path, monkeypatch):
    ledger = SplitLedger(20, 2, history_folder=str(tmp_path / "train"))
    _train(ledger, range(1))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    with pytest.warns(RuntimeWarning, match=r"No space left on device.*kept in memory"):
        _train(ledger, range(1, 3))
    assert ledger.to_history().epochs.tolist() == [0, 1, 2]
    assert ledger.history.folder is None


def test_float16_softmax_sums_match_float32_means():
    exact, narrow = SplitLedger(300, 7), SplitLedger(300, 7, wide_dtype=torch.float16)
    exact.early_epochs = narrow.early_epochs = 2
    _train(exact, range(3), seed=1)
    _train(narrow, range(3), seed=1)
    assert narrow._prob_sum.dtype == torch.float16 and narrow._prob_sum.device.type == "cpu"
    np.testing.assert_allclose(narrow.mean_probs(), exact.mean_probs(), atol=2e-3)
    np.testing.assert_allclose(narrow.early_probs(), exact.early_probs(), atol=2e-3)
    # the means stay in the sums' dtype: no float32 (N, C) copy for the analysis of a float16 ledger
    assert narrow.mean_probs().dtype == np.float16 and exact.mean_probs().dtype == np.float32


def test_raw_record_keeps_large_means_float16_and_small_ones_float32(tmp_path, monkeypatch):
    import dq_plugins.raw_record as raw

    monkeypatch.setattr(raw, "WIDE_FLOAT32_MAX_ELEMENTS", 1000)
    ledger = SplitLedger(300, 7, wide_dtype=torch.float16)
    ledger.early_epochs = 2
    _train(ledger, range(3), seed=1)
    history = ledger.to_history()
    raw.save_history(history, tmp_path / "large.npz")
    back = raw.load_history(tmp_path / "large.npz")
    assert back.mean_probs.dtype == np.float16 and back.early_probs.dtype == np.float16
    np.testing.assert_array_equal(back.mean_probs, history.mean_probs)
    np.testing.assert_array_equal(back.seen, history.seen)
    monkeypatch.setattr(raw, "WIDE_FLOAT32_MAX_ELEMENTS", 10**6)
    raw.save_history(history, tmp_path / "small.npz")
    small = raw.load_history(tmp_path / "small.npz")
    assert small.mean_probs.dtype == np.float32
    np.testing.assert_array_equal(small.mean_probs, history.mean_probs.astype(np.float32))


def test_device_bytes_per_sample_do_not_depend_on_the_classes():
    for classes in (2, 1000):
        grown = planned_bytes(2_000_000, classes)[0] - planned_bytes(1_000_000, classes)[0]
        assert grown == 1_000_000 * DEVICE_BYTES_PER_SAMPLE
    ledger = SplitLedger(1000, 50)
    _train(ledger, range(1))
    buffers = 1001 * DEVICE_BYTES_PER_SAMPLE
    assert buffers < ledger.device_bytes() < buffers + 1000 * 50 * 4 * 7  # the 1000 staged rows, folded at once
    assert ledger.host_bytes() >= 2 * 1001 * 50 * 4


def test_huge_ids_fail_before_any_allocation():
    session = DynamicsSession(SessionConfig(num_samples=10**12 + 200))
    with pytest.raises(MemoryError, match=r"above memory_budget_mb=16,384.*HINT: for sparse or huge ids do not pass `num_samples=<max id \+ 1>`.*`sample_ids=`"):
        session.set_capacity("train", 1000)
    assert not session.ledgers


def test_budget_counts_the_classes_at_the_first_batch():
    session = DynamicsSession(SessionConfig(memory_budget_mb=4))
    session.set_capacity("train", 2000)  # the narrow part fits in 4 MB
    with pytest.raises(MemoryError, match=r"2,000 train sample ids x 1,000 classes\), above memory_budget_mb=4"):
        session.record("train", 0, torch.arange(4), torch.zeros(4, dtype=torch.int64), torch.zeros(4, 1000))
    assert "train" not in session.ledgers


def test_embeddings_upload_in_full_up_to_the_cap_else_a_sample():
    ids = np.arange(1000)
    values = np.random.default_rng(0).normal(size=(1000, 16)).astype(np.float16)
    same_ids, same = upload_sample(ids, values, values.nbytes)
    assert same is values
    small_ids, small = upload_sample(ids, values, 100 * 32)
    assert small.shape == (100, 16) and np.all(np.diff(small_ids) > 0)
    np.testing.assert_array_equal(small, values[small_ids])


def test_memory_peaks_are_reported_and_history_files_removed(tmp_path):
    session = DynamicsSession(SessionConfig(history_dir=str(tmp_path)))
    session.set_capacity("train", 64)
    for epoch in range(2):
        session.record("train", epoch, torch.arange(64), torch.arange(64) % 3, torch.randn(64, 3))
        session.record_embeddings("train", torch.arange(64), torch.randn(64, 8))
    session.close_all()
    assert any(tmp_path.rglob("epoch_*.npz"))
    device, host = session.memory_peaks()
    assert device >= 65 * DEVICE_BYTES_PER_SAMPLE and host >= 65 * 3 * 4 * 2 + 65 * 8 * 2
    history = session.histories()["train"]
    session.remove_history_files()
    assert not any(tmp_path.rglob("*.npz"))
    np.testing.assert_array_equal(session.histories()["train"].fields["loss"], history.fields["loss"])


def test_resume_elsewhere_recovers_the_epochs_from_the_runs_raw_record(tmp_path):
    import shutil

    from dq_plugins.raw_record import save_history

    first = DynamicsSession(SessionConfig(history_dir=str(tmp_path / "machine_a")))
    first.set_capacity("train", 40)
    for epoch in range(3):
        first.record("train", epoch, torch.arange(40), torch.arange(40) % 2, torch.randn(40, 2))
        first.close_epoch("train")
    state = first.state_dict()
    expected = first.histories()["train"]
    save_history(expected, tmp_path / "raw_train.npz")  # what the run holds under dq/raw/
    shutil.rmtree(tmp_path / "machine_a")

    second = DynamicsSession(SessionConfig())
    second.load_state_dict(state)
    with pytest.raises(FileNotFoundError, match=r"epochs \[0, 1, 2\] is not in .*machine_a"):
        second.resume(torch.device("cpu"), 3)
    second.load_state_dict(state)
    second.resume(torch.device("cpu"), 3, raw_record=lambda split: tmp_path / f"raw_{split}.npz")
    got = second.histories()["train"]
    assert got.epochs.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(got.fields["margin"], expected.fields["margin"])


def _lightning_fit(callback, tmp_path, *others):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from conftest import BlobsDataset
    from recipes.common.models import MLPClassifier

    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=[callback, *others],
                         default_root_dir=str(tmp_path))
    model = MLPClassifier(8, 3, hidden=(16,), lr=0.1, optimizer="sgd", log_val_loss=False)
    trainer.fit(model, DataLoader(BlobsDataset(64), batch_size=16))
    return model


def test_lightning_fit_logs_its_memory_peaks_and_spills_its_epochs(tracking_uri, tmp_path):
    import mlflow

    from dq_plugins.lightning import DataQualityCallback
    from dq_plugins.schema import DEVICE_PEAK_METRIC, HOST_PEAK_METRIC

    import pytorch_lightning as pl

    spilled = []

    class CountEpochFiles(pl.Callback):  # runs after the recording callback's own epoch end
        def on_train_epoch_end(self, trainer, pl_module):
            for ledger in callback.session.ledgers.values():
                ledger.history.wait()  # the file is written in the background (a checkpoint waits the same way)
            spilled.append(len(list((tmp_path / "history").rglob("epoch_*.npz"))))

    callback = DataQualityCallback(embeddings=False, history_dir=str(tmp_path / "history"))
    _lightning_fit(callback, tmp_path, CountEpochFiles())
    metrics = mlflow.MlflowClient().get_run(callback.run_id).data.metrics
    assert metrics[DEVICE_PEAK_METRIC] >= 65 * DEVICE_BYTES_PER_SAMPLE / 2**20
    assert metrics[HOST_PEAK_METRIC] >= 65 * 3 * 4 * 2 / 2**20
    assert spilled == [1, 2]  # one file per closed epoch while training
    assert not list((tmp_path / "history").rglob("epoch_*.npz"))  # gone once the raw record is in the run


def test_lightning_huge_ids_fail_at_fit_start_before_any_step(tracking_uri, tmp_path):
    from dq_plugins.lightning import DataQualityCallback

    callback = DataQualityCallback(embeddings=False, num_samples=10**12 + 200)
    with pytest.raises(MemoryError, match=r"1,000,000,000,200 train sample ids\), above memory_budget_mb"):
        _lightning_fit(callback, tmp_path)
    assert not callback.session.ledgers


def test_epoch_files_go_once_the_raw_record_is_uploaded_and_stay_when_it_is_not(tmp_path, monkeypatch):
    from dq_plugins.sinks.mlflow_sink import MlflowSink

    monkeypatch.setenv("DQ_PLUGINS_PROJECTION", "pca")
    for uploaded in (True, False):
        folder = tmp_path / f"history_{uploaded}"
        session = DynamicsSession(SessionConfig(history_dir=str(folder)))
        session.set_capacity("train", 64)
        for epoch in range(2):
            session.record("train", epoch, torch.arange(64), torch.arange(64) % 3, torch.randn(64, 3))
        session.close_all()
        assert any(folder.rglob("epoch_*.npz"))
        sink = MlflowSink(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", fallback_dir=str(tmp_path / "kept"))
        monkeypatch.setattr(sink, "flush", lambda strict=False, ok=uploaded: ok)  # False: MLflow was unreachable
        assert session.finish(sink) is not None
        # uploaded: a resume reads the epochs from the run's raw record; not uploaded: the files are all there is
        assert any(folder.rglob("epoch_*.npz")) is not uploaded


def test_a_checkpoint_waits_for_the_background_epoch_write(tmp_path, monkeypatch):
    import time

    import dq_plugins.recording.history_store as store

    write = store._write_row

    def slow_write(target, row):
        time.sleep(0.3)
        write(target, row)

    monkeypatch.setattr(store, "_write_row", slow_write)
    ledger = SplitLedger(40, 3, history_folder=str(tmp_path / "train"))
    _train(ledger, range(1))
    assert not (tmp_path / "train" / "epoch_00000.npz").exists()  # still being written: the hook did not wait
    np.testing.assert_array_equal(ledger.history[0]["loss"], ledger.to_history(reduce=False).fields["loss"][0])
    state = ledger.state_dict()
    assert state["history_store"]["epochs_on_disk"] == [0] and state["history_store"]["in_memory"] == {}
    restored = SplitLedger.from_state_dict(state)  # the file the checkpoint points to is complete
    np.testing.assert_array_equal(restored.history[0]["loss"], ledger.history[0]["loss"])


def test_a_ledger_with_a_spilled_history_can_be_deep_copied(tmp_path):
    import copy

    ledger = SplitLedger(30, 3, history_folder=str(tmp_path / "train"))
    _train(ledger, range(2))  # the writer thread exists now
    copied = copy.deepcopy(ledger)
    np.testing.assert_array_equal(copied.to_history().fields["loss"], ledger.to_history().fields["loss"])
    _train(copied, range(2, 3))  # the copy writes with its own thread
    assert copied.state_dict()["history_store"]["epochs_on_disk"] == [0, 1, 2]
