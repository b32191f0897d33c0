"""Row staging shared by the per-sample ledger and the embedding buffer.

A training step hands over a few small tensors per batch; doing the per-sample arithmetic on each
of them costs dozens of tiny device ops per step. A :class:`RowStage` keeps the batches by
reference (a list append, no tensor op) and concatenates them once, when enough rows are staged or
the owner needs its buffers up to date.

What is wide (a softmax row per sample, an embedding per sample) does not stay on the device: a
:class:`HostFold` copies each folded stage to pinned host memory with non-blocking copies and adds
it into host buffers on a worker thread once the copy's CUDA event has completed, so a training
step never waits for the host (on a CPU device the fold is a plain call).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


class RowStage:
    """Batches of aligned tensors (same first dimension within a batch), kept until taken.

    Args:
        rows: :meth:`add` reports the stage full once at least this many rows are staged.
    """

    def __init__(self, rows: int) -> None:
        self.rows = int(rows)
        self._batches: list[tuple[torch.Tensor, ...]] = []
        self._count = 0
        self._peak_bytes = 0

    @property
    def peak_bytes(self) -> int:
        """The most bytes held by staged tensors at once (shapes only, no sync). Staged bytes only grow until
        :meth:`take`, so they are summed there (and here for what is staged now), not in every :meth:`add`."""
        return max(self._peak_bytes, self._staged_bytes())

    def _staged_bytes(self) -> int:
        return sum(tensor.nbytes for batch in self._batches for tensor in batch)

    def add(self, *tensors: torch.Tensor) -> bool:
        """Keep one batch by reference (the caller must not modify it in place); ``True`` when full."""
        self._batches.append(tensors)
        self._count += tensors[0].shape[0]
        return self._count >= self.rows

    def take(self, device: torch.device, dtypes: tuple[torch.dtype, ...]) -> tuple[torch.Tensor, ...] | None:
        """Empty the stage: one concatenated tensor per position, on ``device`` with ``dtypes``; ``None`` when empty."""
        batches = self.take_batches()
        if not batches:
            return None
        return tuple(concatenate(column, device, dtype) for column, dtype in zip(zip(*batches), dtypes))

    def take_batches(self) -> list[tuple[torch.Tensor, ...]]:
        """Empty the stage: the staged batches as they were added (for an owner that folds them one by one)."""
        if self._batches:
            self._peak_bytes = max(self._peak_bytes, self._staged_bytes())
        batches, self._batches, self._count = self._batches, [], 0
        return batches


def concatenate(tensors: tuple[torch.Tensor, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``torch.cat`` of ``tensors`` on ``device`` with ``dtype``: one concatenation (``cat`` promotes mixed dtypes,
    exactly for the integer ids and labels and the float logits staged here) and one conversion, instead of a
    ``.to`` per batch, which costs more than the copy of a small batch; tensors on several devices (which ``cat``
    refuses) are converted one by one first. Any error of ``cat`` itself (tensors of mismatched shapes) is raised."""
    first = tensors[0].device
    for tensor in tensors:  # a loop over the staged batches (device metadata, no sync), not over samples
        if tensor.device != first:
            return torch.cat([t.to(device, dtype) for t in tensors])
    return torch.cat(tensors).to(device, dtype)


class EpochStaging:
    """What every ledger (single-label, multi-label, tokens) does around its stage: open the batch's epoch
    before staging it (:meth:`_open_epoch`), and hand the staged rows to ``_accumulate`` (:meth:`flush`).

    A subclass has ``pending_epoch`` (``None``: no epoch open), ``latest_probs_only`` (a held-out split
    whose softmax sums hold its latest pass only), ``device``, a :class:`RowStage` ``_stage`` whose
    batches hold tensors of :attr:`_STAGED_DTYPES` (ids or slots first), ``close_epoch()``,
    ``_reset_latest_probs()`` and ``_accumulate(*staged)``.
    """

    pending_epoch: int | None
    latest_probs_only: bool
    device: torch.device
    _stage: RowStage
    _STAGED_DTYPES: tuple[torch.dtype, ...] = (torch.int64, torch.int64, torch.float32)
    """The dtypes the staged tensors are concatenated to, in the order ``record`` stages them."""

    def flush(self) -> None:
        """Fold the staged rows into the sums (a handful of device ops, no host sync)."""
        staged = self._stage.take(self.device, self._STAGED_DTYPES)
        if staged is not None:
            self._accumulate(*staged)

    def _open_epoch(self, epoch: int) -> None:
        """A batch of another epoch than the pending one closes that one first; the first batch of a pass of a
        ``latest_probs_only`` split clears the previous pass's softmax; then ``epoch`` is the pending one."""
        if self.pending_epoch is not None and epoch != self.pending_epoch:
            self.close_epoch()
        if self.pending_epoch is None and self.latest_probs_only:  # a new pass replaces the previous softmax
            self._reset_latest_probs()
        self.pending_epoch = epoch

    def close_epoch(self) -> Any:  # pragma: no cover - each ledger defines it
        raise NotImplementedError

    def _reset_latest_probs(self) -> None:  # pragma: no cover - each ledger defines it
        raise NotImplementedError

    def _accumulate(self, *staged: torch.Tensor) -> None:  # pragma: no cover - each ledger defines it
        raise NotImplementedError


def stageable(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` detached for staging by reference; a CUDA tensor is cloned (its memory may be reused once
    the step's graph is freed, before the stage is folded)."""
    logits = logits.detach()
    return logits.clone() if logits.is_cuda else logits


def last_occurrence(slots: torch.Tensor, trash: int) -> torch.Tensor:
    """``slots`` (R,) int64 with every occurrence of a slot but its last routed to ``trash``.

    ``index_copy_`` with repeated indices keeps an unspecified one of them (multithreaded on CPU,
    racing on GPU). A stage can hold the same sample from several epochs, and the latest must win:
    the position of each slot's last occurrence is found with one ``scatter_reduce`` (no host sync),
    so only the trash slot is ever written twice.
    """
    positions = torch.arange(slots.shape[0], device=slots.device)
    last = torch.full((trash + 1,), -1, dtype=torch.int64, device=slots.device)
    last.scatter_reduce_(0, slots, positions, reduce="amax")
    return torch.where(last[slots] == positions, slots, trash)


class HostFold:
    """Applies host-side folds of device results in submission order, off the training thread.

    ``submit(fold, *tensors)`` calls ``fold(*host_tensors)`` with CPU copies of ``tensors``. On a
    CPU device that is a plain call (the tensors are already on the host). On CUDA the tensors are
    copied into pinned memory with ``non_blocking=True`` on the current stream, a CUDA event is
    recorded, and a single worker thread waits for that event and runs the fold: the caller never
    synchronizes. At most ``max_in_flight`` folds are pending; a further submit first waits for the
    oldest (by then long done, since a stage is thousands of rows). :meth:`wait` drains them all
    (before reading or checkpointing the host buffers).
    """

    def __init__(self, device: torch.device | str, max_in_flight: int = 2) -> None:
        self.device = torch.device(device)
        self.max_in_flight = int(max_in_flight)
        self._pending: deque[Future] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self.peak_pinned_bytes = 0
        """The most pinned host bytes held by folds in flight at once."""
        self._pinned_bytes: deque[int] = deque()

    def submit(self, fold: Callable[..., None], *tensors: torch.Tensor) -> None:
        """Run ``fold`` on host copies of ``tensors`` (see the class doc)."""
        if self.device.type != "cuda":
            fold(*(t.to("cpu") for t in tensors))
            return
        while len(self._pending) >= self.max_in_flight:
            self._pending.popleft().result()
            self._pinned_bytes.popleft()
        host = []
        for tensor in tensors:
            pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            pinned.copy_(tensor, non_blocking=True)
            host.append(pinned)
        event = torch.cuda.Event()
        event.record()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dq_plugins_fold")

        def run() -> None:
            event.synchronize()
            fold(*host)

        self._pending.append(self._executor.submit(run))
        self._pinned_bytes.append(sum(t.numel() * t.element_size() for t in host))
        self.peak_pinned_bytes = max(self.peak_pinned_bytes, sum(self._pinned_bytes))

    def wait(self) -> None:
        """Block until every submitted fold has run (re-raises a fold's exception)."""
        while self._pending:
            self._pending.popleft().result()
            self._pinned_bytes.popleft()
