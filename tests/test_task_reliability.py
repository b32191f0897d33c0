"""Multi-label and token tasks: checkpoint state and exact resume, the raw record kept whatever fails,
left padding, and the bad-input paths of issue 14 that are not in test_multilabel.py / test_tokens.py."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from dq_plugins.raw_record import load_task_record
from dq_plugins.recording.multilabel import MultiLabelLedger
from dq_plugins.recording.session import DynamicsSession, SessionConfig
from dq_plugins.recording.tasks import TaskRouter
from dq_plugins.recording.tokens import TokenLedger, first_attended


def _batches(seed: int, multilabel: bool):
    """Four batches of two epochs (two per epoch) for a 6-sample split."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for epoch in (0, 1):
        for ids in (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])):
            if multilabel:
                out.append((epoch, ids, (torch.rand(3, 4, generator=g) < 0.5).float(), torch.randn(3, 4, generator=g)))
            else:
                tags = torch.randint(0, 3, (3, 5), generator=g)
                tags[:, 0] = -100
                out.append((epoch, ids, tags, torch.randn(3, 5, 3, generator=g)))
    return out


def _assert_same(a, b) -> None:
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, dict):
            for key in value:
                np.testing.assert_array_equal(value[key], other[key], err_msg=f"{name}[{key}]")
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, other, err_msg=name)
        else:
            assert value == other, name


@pytest.mark.parametrize("multilabel", [True, False], ids=["multilabel", "tokens"])
@pytest.mark.parametrize("cut", [1, 2, 3], ids=["mid-epoch", "epoch-end", "mid-next-epoch"])
def test_a_ledger_restored_from_its_state_records_as_if_never_stopped(tmp_path, multilabel, cut):
    def new(folder):
        if multilabel:
            ledger = MultiLabelLedger(6, 4, history_folder=str(folder))
        else:
            ledger = TokenLedger(6, 5, 3)
        ledger.early_epochs = 1
        return ledger

    batches = _batches(0, multilabel)
    reference = new(tmp_path / "reference")
    for epoch, ids, labels, logits in batches:
        reference.record(ids, labels, logits, epoch)
    stopped = new(tmp_path / "run")
    for epoch, ids, labels, logits in batches[:cut]:
        stopped.record(ids, labels, logits, epoch)
    state = stopped.state_dict()
    torch.save(state, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    if multilabel:  # issue 13: the checkpoint points to the epoch files, it does not hold the rows
        assert state["history_store"]["in_memory"] == {}
        assert state["history_store"]["epochs_on_disk"] == ([0] if cut >= 3 else [])
    restored = (MultiLabelLedger if multilabel else TokenLedger).from_state_dict(state)
    for epoch, ids, labels, logits in batches[cut:]:
        restored.record(ids, labels, logits, epoch)
    _assert_same(restored.to_history(), reference.to_history())


def test_the_router_state_goes_through_the_session_checkpoint(tmp_path):
    session = DynamicsSession(SessionConfig(num_samples=6, history_dir=str(tmp_path)))
    router = TaskRouter(None, session)
    batches = _batches(1, True)
    for epoch, ids, labels, logits in batches[:3]:
        router.route("train", epoch, ids, labels, logits)
    state = torch.load(_saved(session.state_dict(), tmp_path), weights_only=True)
    assert state["task"]["task"] == "multilabel" and set(state["task"]["ledgers"]) == {"train"}

    resumed = DynamicsSession(SessionConfig(num_samples=6, history_dir=str(tmp_path)))
    again = TaskRouter(None, resumed)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["task"] == state["task"]  # a checkpoint before resume keeps the restored record
    resumed.resume(torch.device("cpu"), current_epoch=1)
    assert again.active and again.task.value == "multilabel"
    for epoch, ids, labels, logits in batches[3:]:
        with_no_warning = again.route("train", epoch, ids, labels, logits)  # no "starts at epoch 1" warning
        assert with_no_warning
    reference = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=6, history_dir=str(tmp_path))))
    for epoch, ids, labels, logits in batches:
        reference.route("train", epoch, ids, labels, logits)
    _assert_same(again.histories()["train"], reference.histories()["train"])

    other = TaskRouter("token_classification", DynamicsSession(SessionConfig(num_samples=6)))
    other.session.load_state_dict(state)
    with pytest.raises(ValueError, match=r"checkpoint holds a 'multilabel' record.*task='token_classification'.*HINT"):
        other.session.resume(torch.device("cpu"), current_epoch=1)


def _saved(state: dict, tmp_path) -> str:
    path = str(tmp_path / "session.pt")
    torch.save(state, path)
    return path


def test_single_label_checkpoints_have_no_task_key(tmp_path):
    session = DynamicsSession(SessionConfig(num_samples=4))
    router = TaskRouter(None, session)
    assert not router.route("train", 0, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.randn(2, 3))
    session.record("train", 0, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.randn(2, 3))
    assert "task" not in session.state_dict()


# ---------------------------------------------------------------------------------- left padding
def test_first_attended_is_the_left_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]])
    assert first_attended(mask, torch.zeros(3, 4)).tolist() == [2, 0, 0]
    assert first_attended(mask.bool(), torch.zeros(3, 4)).tolist() == [2, 0, 0]
    assert first_attended(None, torch.zeros(3, 4)) is None
    assert first_attended(mask, torch.zeros(3, 5)) is None  # not the tags' shape: positions as they come


def test_left_and_right_padding_record_the_same_token_positions():
    """One sequence of 3 tokens, padded right in epoch 0 and left (by 2) in epoch 1: the same three slots."""
    router = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=2)))
    router.widths["train"] = 3
    tags = torch.tensor([[-100, 1, 2]])
    logits = torch.randn(1, 3, 3)
    router.route("train", 0, torch.tensor([0]), torch.cat([tags, torch.full((1, 2), -100)], 1),
                 torch.cat([logits, torch.zeros(1, 2, 3)], 1), torch.tensor([[1, 1, 1, 0, 0]]))
    router.route("train", 1, torch.tensor([0]), torch.cat([torch.full((1, 2), -100), tags], 1),
                 torch.cat([torch.zeros(1, 2, 3), 2 * logits], 1), torch.tensor([[0, 0, 1, 1, 1]]))
    history = router.histories()["train"]
    assert history.labels[0].tolist() == [-1, 1, 2] and history.epochs.tolist() == [0, 1]
    mean = (torch.softmax(logits[0, 1:], -1) + torch.softmax(2 * logits[0, 1:], -1)) / 2
    np.testing.assert_allclose(history.mean_probs[0, 1:], mean.numpy(), rtol=1e-6)
    assert history.accuracy[0] == history.accuracy[1]  # the same predictions: nothing landed elsewhere


def test_a_labelled_left_pad_position_is_counted_not_recorded():
    router = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=2)))
    router.widths["train"] = 4
    router.route("train", 0, torch.tensor([0]), torch.tensor([[1, 1, 2, -100]]), torch.randn(1, 4, 3),
                 torch.tensor([[1, 1, 1, 0]]))
    router.route("train", 0, torch.tensor([1]), torch.tensor([[0, 1, 2, 1]]), torch.randn(1, 4, 3),
                 torch.tensor([[0, 1, 1, 1]]))  # a tag on the padding: not a token of the input
    with pytest.warns(RuntimeWarning, match=r"1 train rows in epoch 0 were labelled tokens at a position >= the "
                                             r"recorded width 4 \(or before the first attended position\)"):
        router.close_epoch("train")
    assert router.histories()["train"].labels[1].tolist() == [1, 2, 1, -1]


# ---------------------------------------------------------------------------------- bad input
def test_negative_multi_hot_targets_are_an_error_at_the_first_batch():
    router = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=4)))
    with pytest.raises(ValueError, match=r"got the value -1 \(soft, smoothed or negative targets.*HINT: pass hard 0/1"):
        router.route("train", 0, torch.tensor([0, 1]), torch.tensor([[1.0, -1.0], [0.0, 1.0]]), torch.randn(2, 2))


def test_a_later_token_batch_with_every_tag_ignored_records_nothing_and_an_empty_epoch_warns():
    router = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=4)))
    router.route("train", 0, torch.tensor([0]), torch.tensor([[1, -100]]), torch.randn(1, 2, 3))
    router.route("train", 0, torch.tensor([1]), torch.tensor([[-100, -100]]), torch.randn(1, 2, 3))
    router.close_epoch("train")
    router.route("train", 1, torch.tensor([1]), torch.tensor([[-100, -100]]), torch.randn(1, 2, 3))
    with pytest.warns(RuntimeWarning, match=r"no labelled token was recorded in train epoch 1 \(every tag -100\?\)"):
        router.close_epoch("train")
    history = router.histories()["train"]
    assert (history.labels[1] == -1).all() and history.labels[0].tolist() == [1, -1]


# ---------------------------------------------------------------------------------- Lightning end to end
def _lightning(callback, max_epochs: int = 2, **kwargs):
    import pytorch_lightning as pl

    options = dict(max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=[callback])
    options.update(kwargs)
    return pl.Trainer(**options)


def _loaders(train_size: int = 64):
    from torch.utils.data import DataLoader

    from test_multilabel import MultiHotDataset
    from test_resume_kill import ResumableLoader

    return ResumableLoader(MultiHotDataset(train_size), batch_size=16), DataLoader(MultiHotDataset(24, seed=1), batch_size=16)


def _raw(run_id: str, split: str, tmp_path) -> dict[str, np.ndarray]:
    path = mlflow.MlflowClient().download_artifacts(run_id, f"dq/raw/{split}.npz", str(tmp_path / run_id / split))
    task, arrays = load_task_record(path)
    assert task == "multilabel"
    return arrays


def test_lightning_multilabel_resumed_mid_epoch_records_as_the_uninterrupted_fit(tracking_uri, tmp_path):
    """A checkpoint at step 6 (mid epoch 1, epochs of 4 steps), a new fit from it: the same record, epoch by
    epoch. The first fit's epoch files are gone once its raw record is uploaded: epoch 0 comes from the run."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from dq_plugins.lightning import DataQualityCallback
    from test_multilabel import MultiLabelModule

    torch.manual_seed(0)
    reference = DataQualityCallback(task="multilabel")
    _lightning(reference).fit(MultiLabelModule(), *_loaders())

    torch.manual_seed(0)
    first = DataQualityCallback(task="multilabel")
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6, save_top_k=-1)
    _lightning(first, max_steps=6, enable_checkpointing=True, callbacks=[first, saver]).fit(MultiLabelModule(), *_loaders())
    checkpoint = next((tmp_path / "ckpt").glob("*step=6*.ckpt"))
    saved = next(iter(torch.load(checkpoint, weights_only=True)["callbacks"].values()))["task"]["ledgers"]["train"]
    assert saved["pending_epoch"] == 1 and saved["history_store"]["epochs_on_disk"] == [0]
    assert not Path(saved["history_store"]["folder"]).exists()  # removed after the upload
    second = DataQualityCallback(task="multilabel")
    _lightning(second, enable_checkpointing=True, callbacks=[second, ModelCheckpoint(dirpath=tmp_path / "c2")]).fit(
        MultiLabelModule(), *_loaders(), ckpt_path=str(checkpoint))

    assert second.run_id == first.run_id  # the resumed fit logs into the run of the checkpoint
    for split in ("train", "validation"):
        got, want = _raw(second.run_id, split, tmp_path), _raw(reference.run_id, split, tmp_path)
        assert got["epochs"].tolist() == [0, 1], split
        for name in ("field_prob_given", "field_margin", "field_correct", "mean_probs", "labels"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=f"{split} {name}")
    np.testing.assert_allclose(second.result.samples["mislabel_score"], reference.result.samples["mislabel_score"],
                               rtol=1e-5, atol=1e-6)
    # the embeddings of the samples seen before the checkpoint come from it: every row has its embedding columns
    assert (second.result.samples["cluster"] >= 0).all()
    for column in ("outlier_score", "neighbor_disagreement"):
        np.testing.assert_allclose(second.result.samples[column], reference.result.samples[column], atol=1e-3)


def test_a_failing_task_analysis_keeps_the_model_and_the_raw_record(tracking_uri, tmp_path, monkeypatch):
    import dq_plugins.analysis.multilabel as analysis
    from dq_plugins.lightning import DataQualityCallback
    from test_multilabel import MultiLabelModule

    def broken(*args, **kwargs):
        raise RuntimeError("analysis bug")

    monkeypatch.setattr(analysis, "analyze_multilabel", broken)
    module = MultiLabelModule()
    before = [p.detach().clone() for p in module.parameters()]
    callback = DataQualityCallback()
    with pytest.warns(RuntimeWarning, match=r"(?s)end-of-fit analysis failed.*model is untouched.*dq analyze"):
        _lightning(callback).fit(module, *_loaders())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))  # trained, nothing undone
    raw = _raw(callback.run_id, "train", tmp_path)
    assert raw["epochs"].tolist() == [0, 1] and raw["field_prob_given"].shape == (2, 64, 4)
    error = mlflow.MlflowClient().download_artifacts(callback.run_id, "dq/raw/analysis_error.txt", str(tmp_path))
    assert "analysis bug" in open(error).read()
    monkeypatch.undo()  # the bug fixed: `dq analyze` gives the run its results from the raw record
    from dq_plugins.sinks.offline import reanalyze

    assert (reanalyze(callback.run_id).result.samples["split"] == "train").sum() == 64
    assert "dq/samples.parquet" in {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq")}


def test_an_interrupted_task_fit_keeps_its_raw_record_and_ends_failed(tracking_uri, tmp_path):
    import pytorch_lightning as pl

    from dq_plugins.lightning import DataQualityCallback
    from test_multilabel import MultiLabelModule

    class Crash(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 2:
                raise RuntimeError("the machine went away")  # Lightning calls the callbacks' on_exception

    callback = DataQualityCallback(task="multilabel")
    with pytest.raises(RuntimeError, match="went away"):
        _lightning(callback, max_epochs=3, callbacks=[callback, Crash()]).fit(MultiLabelModule(), *_loaders())
    run = mlflow.MlflowClient().get_run(callback.run_id)
    assert run.info.status == "FAILED"
    raw = _raw(callback.run_id, "train", tmp_path)
    assert raw["epochs"].tolist() == [0, 1]  # epoch 0 and the part of epoch 1 before the interruption
    seen = ~np.isnan(raw["field_prob_given"][1, :, 0])
    assert seen.sum() == 32  # two batches of 16


# ---------------------------------------------------------------------------------- metadata, rules
class _WithSource(torch.utils.data.Dataset):
    """The multi-hot set of test_multilabel.py with a ``source`` per sample; source "noisy" has every
    label of its samples flipped."""

    def __init__(self, n: int = 64) -> None:
        from test_multilabel import MultiHotDataset

        self.flip = [i for i in range(n) if i % 4 == 0]
        self.data = MultiHotDataset(n, flip=[(i, k) for i in self.flip for k in range(4)])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return {**self.data[index], "source": "noisy" if index % 4 == 0 else "clean"}


def test_lightning_multilabel_metadata_is_merged_and_sliced(tracking_uri, tmp_path):
    import json

    from torch.utils.data import DataLoader

    from dq_plugins.lightning import DataQualityCallback
    from test_multilabel import MultiLabelModule

    callback = DataQualityCallback(metadata_keys=["source"])
    _lightning(callback, max_epochs=8).fit(MultiLabelModule(), DataLoader(_WithSource(), batch_size=16, shuffle=True))
    samples = callback.result.samples
    assert (samples["source"] == np.where(samples["sample_id"] % 4 == 0, "noisy", "clean")).all()
    path = mlflow.MlflowClient().download_artifacts(callback.run_id, "dq/slices.json", str(tmp_path))
    slices = json.load(open(path))
    rows = {row[slices["columns"].index("slice")]: dict(zip(slices["columns"], row)) for row in slices["data"]}
    assert {"class=0", "source=clean", "source=noisy"} <= set(rows)
    assert rows["source=noisy"]["size"] == 16 and rows["source=clean"]["size"] == 48
    assert rows["source=noisy"]["mean_mislabel_score"] > rows["source=clean"]["mean_mislabel_score"]
    flagged = samples.groupby("source")["is_label_issue"].mean()
    assert rows["source=noisy"]["label_issue_rate"] == pytest.approx(flagged["noisy"])


def test_rules_on_a_task_run_are_checked_against_its_columns_at_the_first_batch(tracking_uri):
    from dq_plugins.rules import Condition, Rule, TagRun

    def first_batch(rule):
        router = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=4, rules=[rule])))
        router.route("train", 0, torch.tensor([0]), torch.tensor([[1.0, 0.0]]), torch.randn(1, 2))
        return router

    assert first_batch(Rule("ok", Condition("num_label_issues", ">", 0, aggregate="mean"), then=[TagRun("a", "b")])).active
    with pytest.raises(ValueError, match=r"(?s)multilabel run.*unknown metric 'aum'"):
        first_batch(Rule("margins", Condition("aum", "<", 0, aggregate="mean"), then=[TagRun("a", "b")]))
