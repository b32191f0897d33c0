"""Prediction latency: the timer and recorder against hand-computed cases, the CUDA-event path with
CPU fakes, and the Lightning adapter end to end (slow samples get larger ``latency_ms``)."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from conftest import BlobsDataset
from dq_plugins import load_samples
from dq_plugins.recording.latency import ForwardTimer, LatencyRecorder, Span
from dq_plugins.recording.session import DynamicsSession, SessionConfig
from dq_plugins.lightning import DataQualityCallback
from test_lightning_callback import TinyClassifier, fit


# ---------------------------------------------------------------------------------------- recorder
def test_latency_is_the_batch_forward_time_divided_by_the_batch_size():
    recorder = LatencyRecorder(6)
    recorder.record(torch.tensor([0, 1]), [Span(0.0, 0.010)])  # 10 ms for 2 samples: 5 ms each
    recorder.record(torch.tensor([2, 3, 4]), [Span(1.0, 1.003), Span(2.0, 2.006)])  # two forwards: 9 ms / 3
    recorder.record(torch.tensor([0, 7, -1]), [Span(3.0, 3.006)])  # 2 ms each; ids 7 and -1 are out of range
    recorder.close_epoch()
    expected = [(5 + 2) / 2, 5, 3, 3, 3, np.nan]  # sample 0 seen twice: the mean of its shares
    np.testing.assert_allclose(recorder.latest, expected, rtol=1e-5)
    assert recorder.latest.dtype == np.float32


def test_the_latest_timed_epoch_is_kept():
    recorder = LatencyRecorder(3)
    recorder.record(torch.tensor([0, 1, 2]), [Span(0.0, 0.003)])
    recorder.close_epoch()
    recorder.close_epoch()  # an epoch that timed nothing keeps the previous values
    np.testing.assert_allclose(recorder.latest, [1, 1, 1], rtol=1e-5)
    recorder.record(torch.tensor([1]), [Span(0.0, 0.004)])
    recorder.close_epoch()  # a new timed epoch replaces them: samples it did not time become NaN
    np.testing.assert_allclose(recorder.latest, [np.nan, 4, np.nan], rtol=1e-5)
    restored = LatencyRecorder.from_state_dict(recorder.state_dict())
    np.testing.assert_array_equal(restored.latest, recorder.latest)


def test_host_timer_measures_the_forward_and_counts_nested_forwards_once():
    timer = ForwardTimer()
    timer.start("cpu")
    timer.start("cpu")  # a nested forward
    time.sleep(0.02)
    timer.stop()
    timer.stop()
    timer.stop()  # an unmatched stop is ignored
    spans = timer.take()
    assert len(spans) == 1 and spans[0].on_host
    assert 15 < spans[0].elapsed_ms() < 1000
    assert timer.take() == []
    timer.start("cpu")  # a forward that raised: never stopped, dropped at the next take
    assert timer.pending and timer.take() == [] and not timer.pending


class FakeEvent:
    """A CPU stand-in for ``torch.cuda.Event(enable_timing=True)``: records a fake clock, and refuses to
    report a time before it was synchronised, as a CUDA event that has not run yet would."""

    clock = 0.0
    synchronized = 0
    log: list[str] = []

    def __init__(self):
        self.time = None
        self.done = False

    def record(self, stream=None):
        FakeEvent.log.append("record")
        self.time = FakeEvent.clock

    def synchronize(self):
        FakeEvent.log.append("synchronize")
        FakeEvent.synchronized += 1

    def elapsed_time(self, end):
        FakeEvent.log.append("elapsed_time")
        if not FakeEvent.synchronized:
            raise RuntimeError("elapsed_time on events that have not completed")
        return (end.time - self.time) * 1000.0


def test_cuda_events_are_recorded_in_the_step_and_read_once_at_epoch_close():
    FakeEvent.clock, FakeEvent.synchronized, FakeEvent.log = 0.0, 0, []
    timer = ForwardTimer(event_factory=FakeEvent)
    recorder = LatencyRecorder(4)
    for ids, seconds in (([0, 1], 0.008), ([2, 3], 0.020)):
        timer.start(torch.device("cuda", 0))
        FakeEvent.clock += seconds
        timer.stop()
        recorder.record(torch.tensor(ids), timer.take())
    assert FakeEvent.log == ["record"] * 4  # the step only records events: no wait, no read
    recorder.close_epoch()
    assert FakeEvent.synchronized == 1  # one wait, on the last event of the epoch
    np.testing.assert_allclose(recorder.latest, [4, 4, 10, 10], rtol=1e-5)


def test_latency_joins_the_split_record_survives_a_checkpoint_and_the_raw_file(tmp_path):
    from dq_plugins.analysis.pipeline import analyze
    from dq_plugins.raw_record import load_history, save_history

    session = DynamicsSession(SessionConfig())
    session.set_capacity("train", 4)
    session.record("train", 0, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0]), torch.randn(3, 2))
    session.record_latency("train", torch.tensor([0, 1]), [Span(0.0, 0.002)])
    session.record_latency("unknown_split", torch.tensor([0]), [Span(0.0, 0.002)])  # no capacity: not timed
    session.close_epoch("train")
    history = session.histories()["train"]
    np.testing.assert_array_equal(history.latency_ms, [1.0, 1.0, np.nan, np.nan])
    restored = DynamicsSession(SessionConfig())
    restored.load_state_dict(session.state_dict())
    np.testing.assert_array_equal(restored.latency["train"].latest, history.latency_ms)
    save_history(history, tmp_path / "train.npz")  # the raw record `dq analyze` reruns from
    reloaded = load_history(tmp_path / "train.npz")
    np.testing.assert_array_equal(reloaded.latency_ms, history.latency_ms)
    samples = analyze({"train": reloaded}).samples
    assert samples["latency_ms"].tolist()[:2] == [1.0, 1.0] and np.isnan(samples["latency_ms"].iloc[2])


# ---------------------------------------------------------------------------------------- Lightning
class SlowBlobs(BlobsDataset):
    """Blobs whose samples 0..47 are "slow" (a flag in the last input feature); their labels are shifted
    by one class, so correctness differs between slow and fast samples."""

    def __init__(self, n: int = 96):
        super().__init__(n, dim=9)
        self.inputs[:, -1] = (torch.arange(n) < 48).float()
        self.noisy = self.labels.clone()
        self.noisy[:48] = (self.labels[:48] + 1) % 3

    def __getitem__(self, index):
        item = super().__getitem__(index)
        item["labels"] = self.noisy[index]
        item["kind"] = "slow" if index < 48 else "fast"
        return item


class SleepyClassifier(TinyClassifier):
    """Its forward sleeps 100 ms when the batch holds a slow sample."""

    def __init__(self):
        super().__init__(dim=9)

    def forward(self, inputs):
        if bool(inputs[:, -1].max() > 0.5):
            time.sleep(0.1)
        return super().forward(inputs)


def test_slow_forwards_give_larger_latency_and_a_latency_report(tracking_uri):
    # no shuffling: the batches of 16 hold only slow or only fast samples
    callback, _ = fit(DataQualityCallback(metadata_keys=["kind"], embeddings=False), module=SleepyClassifier(),
                      train=SlowBlobs(), val=SlowBlobs(), shuffle=False, max_epochs=2)
    samples = load_samples(callback.run_id)
    for split in ("train", "validation"):
        part = samples[samples["split"] == split]
        slow, fast = part[part["kind"] == "slow"]["latency_ms"], part[part["kind"] == "fast"]["latency_ms"]
        assert len(slow) == len(fast) == 48 and slow.notna().all() and fast.notna().all()
        # 100 ms of sleep shared by 16 samples is a lower bound; the fast batches (3 per epoch) stay below
        # it but for a rare stall on a busy machine, so their median is compared
        assert slow.min() > 100 / 16 > fast.median()
    slices = callback.result.slices
    buckets = slices[(slices["split"] == "train") & (slices["column"] == "latency_ms")]
    assert buckets["mean_latency_ms"].max() > 100 / 16 > buckets["mean_latency_ms"].min()
    report = callback.result.latency.set_index(["split", "column"])
    # Unshuffled: every batch holds one kind, so kind is confounded with the batches; 3 slow and 3 fast
    # batches are compared as batches (the smallest p of a 3-vs-3 rank test is 0.05), never as 96 samples.
    kind = report.loc[("train", "kind")]
    assert kind["level"] == "batch" and kind["n"] == 6 and kind["p_value"] < 0.06
    assert "confounded with batch composition: 6 of 6 batches" in kind["summary"]
    train = samples[samples["split"] == "train"]
    batches = train.assign(correct=train["label"] == train["pred"]).groupby("latency_ms")["correct"].mean()
    rho = spearmanr(batches.to_numpy(), batches.index.to_numpy())[0]
    run = mlflow.MlflowClient().get_run(callback.run_id)
    assert report.loc[("train", "correct"), ["level", "n"]].tolist() == ["batch", 6]
    assert report.loc[("train", "correct"), "statistic"] == pytest.approx(rho, abs=1e-6, nan_ok=True)
    if np.isfinite(rho):
        assert run.data.metrics["dq.latency.corr_correct.train"] == pytest.approx(rho, abs=1e-6)
    assert run.data.metrics["dq.mean_latency_ms.validation"] > 0
    assert "dq/latency.json" in {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq")}


class NetOnly(TinyClassifier):
    """Steps call ``self.head(self.backbone(x))`` directly: the module's own forward never runs."""

    def _step(self, batch):
        logits = self.head(self.backbone(batch["inputs"]))
        return {"loss": F.cross_entropy(logits, batch["labels"]), "logits": logits}


def test_steps_that_call_submodules_are_timed_on_those_submodules(tracking_uri):
    callback, _ = fit(DataQualityCallback(embeddings=False), module=NetOnly(), val=BlobsDataset(30, seed=1),
                      max_epochs=1)
    samples = callback.result.samples
    assert samples[samples["split"] == "validation"]["latency_ms"].gt(0).all()
    assert samples[samples["split"] == "train"]["latency_ms"].gt(0).all()  # backbone + head, not the backward


class SlowLoss(torch.nn.Module):
    """A parameter-free child (a loss): not part of the model's forward, so never timed."""

    def forward(self, logits, labels):
        time.sleep(0.05)
        return F.cross_entropy(logits, labels)


class SlowLossModule(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.loss = SlowLoss()

    def _step(self, batch):
        logits = self(batch["inputs"])
        return {"loss": self.loss(logits, batch["labels"]), "logits": logits}


def test_a_parameter_free_child_is_not_timed(tracking_uri):
    callback, _ = fit(DataQualityCallback(embeddings=False), module=SlowLossModule(), max_epochs=1)
    latency = callback.result.samples["latency_ms"]
    assert latency.notna().all() and latency.max() < 50 / 16  # 50 ms of loss per batch of 16 would show


def test_hooks_are_removed_after_fit(tracking_uri):
    module = TinyClassifier()
    fit(DataQualityCallback(embeddings=False), module=module, max_epochs=1)
    assert not module._forward_pre_hooks and not module._forward_hooks


def test_the_timed_module_device_follows_replaced_parameters():
    from dq_plugins.adapters.lightning import _FirstParameters

    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(3, 2))
    devices = _FirstParameters()
    assert devices.device(model) == torch.device("cpu")
    model[1].weight = torch.nn.Parameter(torch.zeros(2, 3, device="meta"))  # the first parameter, replaced
    assert devices.device(model) == torch.device("meta")
    assert devices.device(torch.nn.ReLU()) is None  # no parameter, no `device` attribute
