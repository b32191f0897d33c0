"""Prediction latency: the wall time of each forward pass, attributed to the samples of its batch.

Contract (the ``latency_ms`` column of ``dq/samples.parquet``): the latency of a sample is the wall
time of its batch's forward pass in milliseconds divided by the batch size, i.e. its share of the
forward. When one batch runs several timed forwards (a step that calls the model twice) their times
add up; a sample seen in several batches of one epoch gets the mean of its shares. Each split keeps
the latest epoch that timed it (:attr:`LatencyRecorder.latest`).

Timing, by the device of the forward:

- CUDA: a pair of ``torch.cuda.Event(enable_timing=True)`` recorded on the current stream before and
  after the forward. Nothing waits for them inside the step: each batch keeps ``(ids, start, end)``
  and the elapsed times are read once, when the epoch closes (one ``synchronize`` on the last event).
  The events measure the stream's timeline, so the time includes the GPU work of the forward.
- any other device: ``time.perf_counter()`` around the forward. On CPU the operators run
  synchronously, so this is the forward's wall time; on asynchronous backends (MPS, XLA) it is
  the time to launch the forward, not to run it.

Two pieces: :class:`ForwardTimer` (owned by an adapter) opens and closes spans around forwards;
:class:`LatencyRecorder` (one per split, owned by :class:`~dq_plugins.recording.session.DynamicsSession`)
receives each batch's ids with its spans and turns them into per-sample milliseconds once per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from dq_plugins.recording.stage import concatenate



def _cuda_event() -> Any:
    return torch.cuda.Event(enable_timing=True)


class Span(NamedTuple):
    """One timed forward (a named tuple: one is made in every timed step, and a tuple is cheaper to make
    than a frozen dataclass).

    Attributes:
        start, end: ``time.perf_counter()`` seconds (host timing), or two recorded CUDA events
            (anything with ``elapsed_time(end) -> ms`` and ``synchronize()``).
    """

    start: Any
    end: Any

    @property
    def on_host(self) -> bool:
        return isinstance(self.start, float)

    def elapsed_ms(self) -> float:
        """Milliseconds between start and end. For events, call :meth:`wait` first (once per epoch)."""
        if self.on_host:
            return (self.end - self.start) * 1000.0
        return float(self.start.elapsed_time(self.end))

    def wait(self) -> None:
        """Block until the end event has run (a no-op for host timing)."""
        if not self.on_host:
            self.end.synchronize()


def _batch_ms(spans: Sequence[Span]) -> float:
    """Milliseconds of a batch's timed forwards, added up (one span: its own time, as ``sum`` would give)."""
    if len(spans) == 1:
        return spans[0].elapsed_ms()
    return sum(span.elapsed_ms() for span in spans)


class ForwardTimer:
    """Opens a span before a forward and closes it after; :meth:`take` hands the closed spans over.

    Nested forwards (a module calling itself, a wrapper around a wrapped forward) count once: only the
    outermost start/stop pair makes a span. No host sync: CUDA events are only recorded here.

    Args:
        event_factory: makes a timing event for a CUDA forward (default
            ``torch.cuda.Event(enable_timing=True)``); events are recorded on the current stream.
    """

    def __init__(self, event_factory: Callable[[], Any] | None = None) -> None:
        self._event_factory = event_factory or _cuda_event
        self._depth = 0
        self._start: Any = None
        self._spans: list[Span] = []

    def start(self, device: torch.device | str | None) -> None:
        """Mark the start of a forward on ``device`` (the device of the model's parameters)."""
        self._depth += 1
        if self._depth > 1:
            return
        if device is not None and (device if isinstance(device, torch.device) else torch.device(device)).type == "cuda":
            event = self._event_factory()
            event.record()
            self._start = event
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        """Mark the end of the forward opened by the matching :meth:`start`."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth > 0 or self._start is None:
            return
        start, self._start = self._start, None
        if isinstance(start, float):
            self._spans.append(Span(start, time.perf_counter()))
        else:
            end = self._event_factory()
            end.record()
            self._spans.append(Span(start, end))

    def take(self) -> list[Span]:
        """The spans closed since the last call (a forward still open is dropped)."""
        spans, self._spans = self._spans, []
        self._depth, self._start = 0, None
        return spans

    @property
    def open(self) -> bool:
        """Whether a forward is open (a :meth:`start` without its :meth:`stop`): a nested start only counts depth."""
        return self._depth > 0

    @property
    def pending(self) -> bool:
        """Whether a span was closed (or opened) since the last :meth:`take`."""
        return bool(self._spans) or self._depth > 0


class LatencyRecorder:
    """Per-sample forward latency of one split.

    Args:
        capacity: N, the number of sample ids (valid ids ``0 .. N-1``; others are ignored).

    Attributes:
        latest: (N,) float32 milliseconds of the latest closed epoch that timed this split (see the
            module docstring for the contract), NaN for samples it did not time; all NaN before that.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.latest = np.full(self.capacity, np.nan, dtype=np.float32)
        self._batches: list[tuple[torch.Tensor, Sequence[Span]]] = []

    def record(self, ids: torch.Tensor, spans: Sequence[Span]) -> None:
        """Keep a batch's ``(B,)`` ids (any device) with the spans of its forward(s). No host sync."""
        if spans and ids.numel():
            self._batches.append((ids, tuple(spans)))  # (B,) integer ids: no grad, no copy needed

    def close_epoch(self, reduce: bool = False, device: torch.device | str | None = None) -> None:
        """Resolve the epoch's spans (one wait on the last CUDA event, one transfer of the ids) into
        per-sample means, and make them :attr:`latest` if the epoch timed any sample.

        ``reduce=True`` under ``torch.distributed`` sums the per-sample totals over ranks (a collective:
        every rank must call it, with the same ``device`` as its ledger).
        """
        batches, self._batches = self._batches, []
        sums = np.zeros(self.capacity, dtype=np.float64)
        counts = np.zeros(self.capacity, dtype=np.float64)
        if batches:
            batches[-1][1][-1].wait()  # events complete in stream order: the last one ends the epoch
            ms = np.fromiter((_batch_ms(spans) for _, spans in batches), dtype=np.float64, count=len(batches))
            sizes = np.fromiter((ids.numel() for ids, _ in batches), dtype=np.int64, count=len(batches))
            ids = concatenate(tuple(ids if ids.ndim == 1 else ids.reshape(-1) for ids, _ in batches),
                              batches[0][0].device, torch.int64)
            ids = ids.cpu().numpy()
            share = np.repeat(ms / sizes, sizes)
            ok = (ids >= 0) & (ids < self.capacity)
            sums = np.bincount(ids[ok], weights=share[ok], minlength=self.capacity).astype(np.float64)
            counts = np.bincount(ids[ok], minlength=self.capacity).astype(np.float64)
        if reduce:
            sums, counts = _all_reduce(sums, counts, device)
        if counts.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                self.latest = np.where(counts > 0, sums / counts, np.nan).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "latest": torch.from_numpy(self.latest.copy())}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LatencyRecorder:
        recorder = cls(int(state["capacity"]))
        recorder.latest = np.asarray(state["latest"], dtype=np.float32).copy()
        return recorder


def _all_reduce(
    sums: np.ndarray, counts: np.ndarray, device: torch.device | str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``(N,)`` totals and counts over the ranks of the default process group (no-op without one)."""
    from dq_plugins.recording.ledger import distributed_rank_and_world

    if distributed_rank_and_world()[1] < 2:
        return sums, counts
    import torch.distributed as dist

    stacked = torch.from_numpy(np.stack([sums, counts])).to(device or "cpu")
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    host = stacked.cpu().numpy()
    return host[0], host[1]
