"""The per-sample ledger: training dynamics recorded on the model's device.

One :class:`SplitLedger` per split ("train", "validation"). Within an epoch every write is an
index operation on preallocated device tensors (no host sync); at the end of an epoch the
per-sample means are moved to the host once and appended to the epoch history.

What an epoch keeps per sample (the *record*):

- ``loss``: cross-entropy of the logits against the given label (float32, no label smoothing);
- ``prob_given``: softmax probability of the given label;
- ``margin``: given-label logit minus the largest other logit (Pleiss et al. 2020);
- ``correct``: 1.0 when the arg-max prediction equals the given label;
- ``prob_sq_sum``: sum of squared softmax probabilities (lets EL2N be computed from scalars);
- ``prob_pred``: softmax probability of the predicted (arg-max) class, the confidence that
  calibration (expected calibration error per slice) is measured on;
- ``pred``: arg-max predicted class (int32, -1 when missing).

A sample seen several times in one epoch (a sampler with replacement such as
``WeightedRandomSampler``, or a replayed batch after a mid-epoch resume) keeps the **mean** of
the float fields over its occurrences (so ``correct`` becomes the fraction of correct
occurrences) and the prediction of one of them. A sample never seen in an epoch, or whose
logits were NaN/inf every time it was seen, is *missing* for that epoch: NaN floats, ``pred`` -1.

Writes are staged: a batch's ids, labels and detached logits are kept by reference (on CUDA the
logits are cloned, one asynchronous copy, since CUDA-graph replays reuse output buffers), and the
record of the staged rows is computed in one go when ``S`` rows are staged, when the epoch closes,
and before any read of the buffers (a checkpoint, the softmax means). That turns some 35 small
tensor operations per batch into none on the CPU, which is what keeps the callback cheap beside a
light training step. Staging memory: at most ``S * (C + 2)`` x 4-8 bytes with
``S = min(65536, max(1024, 4M / C))`` rows (2.6 MB for ``C = 10``, 16 MB for ``C = 1000``).

Across epochs the ledger also keeps the sum of the full softmax vectors of every valid
occurrence, from which :meth:`SplitLedger.mean_probs` derives the out-of-the-loop class
probabilities fed to confident learning, and a second such sum over the early window. These
``N x C`` sums are the only wide part, and they live on the **host**: each flush computes the
softmax of the staged rows on the device and hands it to a :class:`~dq_plugins.recording.stage.HostFold`
(non-blocking copies into pinned memory, added on a worker thread; no host sync in a step). They
are float32 up to :data:`WIDE_FLOAT32_MAX_ELEMENTS` elements per buffer and float16 above
(``SplitLedger(wide_dtype=...)`` overrides), which halves the host memory of an ImageNet-sized run.

Memory per split, ``N`` sample ids, ``C`` classes, ``S`` staged rows:

- device: ``N * 48`` bytes of per-sample buffers (six float32 sums, four int32 counters/prediction,
  an int64 label) plus the stage and its fold, about ``S * C * 24`` bytes at the flush; none of it
  grows with ``C`` per sample;
- host: ``N * C * 2 * b`` bytes for the two softmax sums (``b`` = 4 or 2 bytes) and two pinned
  stages in flight;
- disk: ``N * 28`` bytes per epoch, one file per epoch in ``history`` (an
  :class:`~dq_plugins.recording.history_store.EpochStore`); in RAM when the ledger has no folder.
"""

from __future__ import annotations

import numpy as np
import torch

from dq_plugins.raw_record import FLOAT_FIELDS, WIDE_FLOAT32_MAX_ELEMENTS, SplitHistory
from dq_plugins.recording import wave as wave_module
from dq_plugins.recording.history_store import EpochStore, Fetch
from dq_plugins.recording.stage import EpochStaging, HostFold, RowStage, last_occurrence, stageable
from dq_plugins.recording.wave import WaveTracker

_STATE_BUFFERS: tuple[str, ...] = ("sums", "count", "pred", "labels", "prob_sum", "prob_count", "early_sum",
                                   "early_count")
"""Buffers saved in a checkpoint (attribute ``_<name>`` of :class:`SplitLedger`)."""

_HOST_BUFFERS: tuple[str, ...] = ("prob_sum", "early_sum")
"""The wide ``(N + 1, C)`` softmax sums, kept on the host (see the module doc)."""

_DEVICE_BUFFERS: tuple[str, ...] = ("sums", "count", "pred", "labels", "prob_count", "early_count", "out_of_range",
                                    "non_finite")
"""The narrow per-sample buffers kept on the model's device."""

DEVICE_BYTES_PER_SAMPLE = 6 * 4 + 4 * 4 + 8
"""Bytes per sample id of the narrow device buffers (six float32 sums, four int32, one int64 label)."""


def wide_dtype_for(capacity: int, num_classes: int) -> torch.dtype:
    """float32 for softmax sums of at most :data:`WIDE_FLOAT32_MAX_ELEMENTS` elements, float16 above."""
    return torch.float32 if (capacity + 1) * num_classes <= WIDE_FLOAT32_MAX_ELEMENTS else torch.float16


def default_stage_rows(num_classes: int) -> int:
    """Rows of the staging buffer: ``min(65536, max(1024, 4M / C))``."""
    return min(65536, max(1024, 4_000_000 // num_classes))


def planned_bytes(capacity: int, num_classes: int, wide_dtype: torch.dtype | None = None,
                  stage_rows: int | None = None) -> tuple[int, int]:
    """(device, host) bytes a :class:`SplitLedger` of this size will hold, before allocating anything.

    Device: the narrow buffers plus the stage and its fold workspace (float32 logits and four
    temporaries of their size); host: the two softmax sums plus two pinned stages in flight.
    """
    dtype = wide_dtype or wide_dtype_for(capacity, num_classes)
    rows = stage_rows or default_stage_rows(num_classes)
    wide = (capacity + 1) * num_classes * torch.finfo(dtype).bits // 8
    device = (capacity + 1) * DEVICE_BYTES_PER_SAMPLE + rows * num_classes * 4 * 6
    host = 2 * wide + 2 * rows * num_classes * torch.finfo(dtype).bits // 8
    return device, host

_SUMMED_BUFFERS: tuple[str, ...] = ("sums", "count", "prob_sum", "prob_count", "early_sum", "early_count",
                                    "out_of_range", "non_finite")
"""Device buffers summed over ranks under ``torch.distributed`` (``pred`` and ``labels`` take the max)."""

_CROSS_EPOCH_SUMS: tuple[str, ...] = ("prob_sum", "prob_count", "early_sum", "early_count")
"""Softmax sums kept across epochs: rank-local between reductions, the global total on rank 0 after one."""


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy that does not alias the live buffer (``.cpu()`` of a CPU tensor is the tensor itself)."""
    return tensor.to("cpu", copy=True)


def distributed_rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default ``torch.distributed`` process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SplitLedger(EpochStaging):
    """Device buffers of one split plus the host history of its completed epochs.

    Args:
        capacity: N, the number of sample ids; valid ids are ``0 .. N-1``.
        num_classes: C, the width of the logits.
        device: where the narrow buffers live (the model's device); the softmax sums stay on the host.
        stage_rows: rows of the staging buffer; ``None`` sizes it from ``num_classes`` (see the module doc).
        wide_dtype: dtype of the host softmax sums; ``None`` picks it from the size (:func:`wide_dtype_for`).
        history_folder: where closed epochs are written (:class:`EpochStore`); ``None`` keeps them in RAM.

    Slot ``N`` of every buffer is a trash slot: rows with an id out of range, a label out of
    range or non-finite logits are routed there, so every write is unconditional and no host
    sync is needed to filter them.
    """

    def __init__(self, capacity: int, num_classes: int, device: torch.device | str = "cpu",
                 stage_rows: int | None = None, wide_dtype: torch.dtype | None = None,
                 history_folder: str | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"Expected a split with at least one sample id, but got capacity={capacity}.")
        if num_classes < 2:
            raise ValueError(f"Expected logits with at least 2 classes, but got num_classes={num_classes}.")
        self.capacity = int(capacity)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        slots = self.capacity + 1
        self._sums = torch.zeros(len(FLOAT_FIELDS), slots, dtype=torch.float32, device=self.device)
        self._count = torch.zeros(slots, dtype=torch.int32, device=self.device)
        self._pred = torch.full((slots,), -1, dtype=torch.int32, device=self.device)
        self._labels = torch.full((slots,), -1, dtype=torch.int64, device=self.device)
        self.wide_dtype = wide_dtype or wide_dtype_for(self.capacity, self.num_classes)
        self._prob_sum = torch.zeros(slots, self.num_classes, dtype=self.wide_dtype)  # host
        self._prob_count = torch.zeros(slots, dtype=torch.int32, device=self.device)
        # the early window: before memorisation, the softmax still votes for the true class of a flipped label
        self.early_epochs = 0
        # a held-out split (validation) is never fitted: its latest pass is its best out-of-sample softmax
        self.latest_probs_only = False
        self._early_sum = torch.zeros(slots, self.num_classes, dtype=self.wide_dtype)  # host
        self._early_count = torch.zeros(slots, dtype=torch.int32, device=self.device)
        self._out_of_range = torch.zeros((), dtype=torch.int64, device=self.device)
        self._non_finite = torch.zeros((), dtype=torch.int64, device=self.device)
        self.pending_epoch: int | None = None
        self.history = EpochStore(history_folder)
        self.stage_rows = int(stage_rows or default_stage_rows(self.num_classes))
        self._stage = RowStage(self.stage_rows)  # batches not yet in the sums
        self._fold = HostFold(self.device)  # softmax rows on their way to the host sums
        self._workspace_peak = 0  # device bytes of the largest fold (float32 logits and temporaries)
        self.wave: WaveTracker | None = None  # the Label Wave window of the flags, see enable_wave
        self._last_pred: np.ndarray | None = None  # the previous close's predictions, while the wave is open

    # ------------------------------------------------------------------ hot path
    def record(self, ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, epoch: int) -> None:
        """Stage one batch of the current epoch. No host sync, no tensor arithmetic.

        Args:
            ids: (B,) integer sample ids.
            labels: (B,) integer class labels.
            logits: (B, C) logits of any float dtype (bf16/fp16 are upcast to float32). The caller
                must not modify ``ids``, ``labels`` or ``logits`` in place afterwards.
            epoch: the trainer epoch this batch belongs to. A batch of a later epoch than the
                pending one first closes the pending epoch (see :meth:`close_epoch`).
        """
        self._open_epoch(epoch)
        if self._stage.add(ids, labels, stageable(logits)):
            self.flush()

    def _reset_latest_probs(self) -> None:
        self._fold.wait()
        self._prob_sum.zero_()
        self._prob_count.zero_()

    @torch.no_grad()
    def _accumulate(self, ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
        """Add the record of (R,) int64 ids, (R,) int64 labels and (R, C) float32 logits on the ledger's
        device (as :meth:`flush` hands them over) of the pending epoch to the sums."""

        finite = torch.isfinite(logits.sum(dim=1))  # one reduction: a NaN or inf anywhere makes the sum non-finite
        in_range = (ids >= 0) & (ids < self.capacity) & (labels >= 0) & (labels < self.num_classes)
        valid = finite & in_range
        slots = torch.where(valid, ids, self.capacity)
        safe_labels = labels.clamp(0, self.num_classes - 1).unsqueeze(1)
        safe_logits = torch.where(finite.unsqueeze(1), logits, 0.0)

        # log-softmax by hand: for narrow rows (C ~ 10) it is faster on CPU than F.log_softmax (benchmarks/RESULTS.md)
        # one reduction gives the row maximum and its first index (as argmax, which costs as much on its own)
        row_max, pred = safe_logits.max(dim=1, keepdim=True)
        shifted = safe_logits - row_max
        log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
        probs = log_probs.exp()
        given_logit = safe_logits.gather(1, safe_labels).squeeze(1)
        other_logit = safe_logits.scatter(1, safe_labels, float("-inf")).amax(dim=1)
        pred = pred.squeeze(1)
        values = torch.stack(
            (
                -log_probs.gather(1, safe_labels).squeeze(1),
                probs.gather(1, safe_labels).squeeze(1),
                given_logit - other_logit,
                (pred == safe_labels.squeeze(1)).float(),
                (probs * probs).sum(dim=1),
                probs.gather(1, pred.unsqueeze(1)).squeeze(1),
            )
        )
        ones = torch.ones_like(slots, dtype=torch.int32)
        self._sums.index_add_(1, slots, values)
        self._count.index_add_(0, slots, ones)
        latest = last_occurrence(slots, self.capacity)  # a sample seen twice in the epoch: its last prediction
        self._pred.index_copy_(0, latest, pred.to(torch.int32))
        self._labels.index_copy_(0, latest, labels)
        self._prob_count.index_add_(0, slots, ones)
        early = self.pending_epoch is not None and self.pending_epoch < self.early_epochs
        if early:
            self._early_count.index_add_(0, slots, ones)
        self._out_of_range += (~in_range).sum()
        self._non_finite += (in_range & ~finite).sum()
        self._workspace_peak = max(self._workspace_peak, 5 * logits.numel() * 4 + 64 * logits.shape[0])
        self._fold.submit(self._fold_probs if not early else self._fold_early_probs, slots, probs.to(self.wide_dtype))

    def _fold_probs(self, slots: torch.Tensor, probs: torch.Tensor) -> None:
        """Host side of a flush: add (R, C) softmax rows into the cross-epoch sum (``HostFold`` runs it)."""
        self._prob_sum.index_add_(0, slots, probs)

    def _fold_early_probs(self, slots: torch.Tensor, probs: torch.Tensor) -> None:
        """:meth:`_fold_probs` for a flush of the early window: into both sums."""
        self._prob_sum.index_add_(0, slots, probs)
        self._early_sum.index_add_(0, slots, probs)

    # ------------------------------------------------------------------ once per epoch
    def close_epoch(self, reduce: bool = True) -> dict[str, int]:
        """Move the pending epoch to the host history (one transfer) and reset the buffers.

        Under ``torch.distributed`` (DDP, torchrun) this is a collective: every rank must call
        it, in the same order. The per-sample sums and counts are summed across ranks, so each
        sample's record is the mean over every occurrence on every rank (the samples that
        ``DistributedSampler`` repeats to even out the ranks are averaged, never counted twice),
        and the result is identical on all ranks. ``reduce=False`` skips the collective (after
        an exception, when other ranks may be gone).

        Idempotent per epoch: closing an epoch that is already in the history replaces it, so
        an epoch is never counted twice. Returns counters of rows that were not recorded
        (``out_of_range``, ``non_finite``) so the caller can warn.
        """
        if self.pending_epoch is None:
            return {"out_of_range": 0, "non_finite": 0}
        self.flush()
        if reduce:
            self._all_reduce()
        n = self.capacity
        count = self._count[:n]
        with torch.no_grad():
            means = self._sums[:, :n] / count.clamp(min=1)
            means = torch.where(count > 0, means, float("nan"))
            pred = torch.where(count > 0, self._pred[:n], -1)
        host_means = means.cpu().numpy()
        row = {name: host_means[i] for i, name in enumerate(FLOAT_FIELDS)}
        row["pred"] = pred.cpu().numpy()
        self.history[self.pending_epoch] = row
        if self.wave is not None and self.wave.open:
            self._follow_wave(row["pred"])
        counters = {"out_of_range": int(self._out_of_range), "non_finite": int(self._non_finite)}
        self._sums.zero_()
        self._count.zero_()
        self._pred.fill_(-1)
        self._out_of_range.zero_()
        self._non_finite.zero_()
        self.pending_epoch = None
        return counters

    def enable_wave(self) -> bool:
        """End the flags' early window at the Label Wave (:mod:`dq_plugins.recording.wave`) when the softmax sums
        are small enough to copy (:data:`~dq_plugins.recording.wave.WAVE_SNAPSHOT_MAX_BYTES`); returns whether it
        is on. The fixed window (``early_epochs``) is kept as well: it still weighs the signals of
        ``mislabel_score``, and it is the window when the prediction changes never rise again."""
        on = self.capacity * self.num_classes * self._prob_sum.element_size() <= wave_module.WAVE_SNAPSHOT_MAX_BYTES
        self.wave = WaveTracker() if on else None
        return on

    def _follow_wave(self, pred: np.ndarray) -> None:
        """At a close (after the reduction: rank 0 holds the global sums): count the samples whose prediction
        changed since the previous close and hand the wave a copy of the all-epoch softmax sums."""
        last = self._last_pred
        if last is None and self.wave.epochs and self.wave.epochs[-1] in self.history:  # resumed from a checkpoint
            last = self.history[self.wave.epochs[-1]]["pred"]
        changed = None if last is None else int(((pred != last) & (last >= 0) & (pred >= 0)).sum())
        self._last_pred = pred
        self._fold.wait()
        n = self.capacity
        self.wave.close(self.pending_epoch, changed,
                        lambda: (self._prob_sum[:n].clone(), _host_copy(self._prob_count[:n])))

    def _all_reduce(self) -> None:
        """Sum this epoch's buffers over ranks; fold the rank-local softmax sums into rank 0.

        The cross-epoch softmax sums use one buffer per rank: after each reduction rank 0 keeps
        the global total and the other ranks restart from zero, so the next reduction adds only
        their new contributions (and a checkpoint written by rank 0 holds the global total).
        """
        rank, world = distributed_rank_and_world()
        if world < 2:
            return
        import torch.distributed as dist

        self._fold.wait()
        for tensor in self._buffers(_SUMMED_BUFFERS):
            all_reduce_sum(tensor, self.device)
        for tensor in self._buffers(("pred", "labels")):
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        if rank != 0:
            for tensor in self._buffers(_CROSS_EPOCH_SUMS):
                tensor.zero_()

    def localize_for_rank(self) -> None:
        """After a checkpoint restore on every rank, keep the global sums on rank 0 only.

        The checkpoint holds the sums of every rank (:meth:`state_dict`): the pending epoch's
        partial sums and the cross-epoch softmax sums. Rank 0 keeps them; the other ranks start from
        zero, so the next all-reduce counts each restored occurrence once.
        """
        rank, world = distributed_rank_and_world()
        if world > 1 and rank != 0:
            self._fold.wait()
            for tensor in self._buffers(_SUMMED_BUFFERS):
                tensor.zero_()

    def _buffers(self, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        """The device buffers ``_<name>`` of ``names``."""
        return tuple(getattr(self, f"_{name}") for name in names)

    # ------------------------------------------------------------------ results
    def mean_probs(self) -> np.ndarray:
        """(N, C) mean softmax over every valid occurrence (with ``latest_probs_only``: over the latest pass
        only), float32 (float16 when the sums are, see :func:`_means`); NaN rows for unseen ids.

        Under ``torch.distributed`` this is the global mean on rank 0 once the last epoch is closed.
        """
        self.flush()
        self._fold.wait()
        return _means(self._prob_sum, self._prob_count, self.capacity)

    def early_probs(self) -> np.ndarray | None:
        """(N, C) mean softmax over the early window (dtype as :meth:`mean_probs`); ``None`` when no window was kept."""
        if self.early_epochs <= 0:
            return None
        self.flush()
        self._fold.wait()
        return _means(self._early_sum, self._early_count, self.capacity)

    def labels(self) -> np.ndarray:
        """(N,) int64 host copy of each id's latest label, -1 for an id never recorded (the same on every rank once an
        epoch was closed with ``reduce``)."""
        self.flush()
        self._fold.wait()
        return _host_copy(self._labels[: self.capacity]).numpy()

    def to_history(self, reduce: bool = True) -> SplitHistory:
        """The host record of all closed epochs (the pending one is closed first, see :meth:`close_epoch`)."""
        self.close_epoch(reduce=reduce)
        epochs = sorted(self.history)
        n = self.capacity
        if epochs:
            fields = {f: np.stack([self.history[e][f] for e in epochs]) for f in FLOAT_FIELDS}
            pred = np.stack([self.history[e]["pred"] for e in epochs])
        else:
            fields = {f: np.zeros((0, n), np.float32) for f in FLOAT_FIELDS}
            pred = np.zeros((0, n), np.int32)
        window = self.wave.window() if self.wave is not None else None
        return SplitHistory(
            epochs=np.asarray(epochs, dtype=np.int64),
            fields=fields,
            pred=pred,
            labels=self._labels[:n].cpu().numpy(),
            mean_probs=self.mean_probs(),
            early_probs=self.early_probs(),
            wave_probs=None if window is None else _means(*window[1], n),
            early_window_end=None if window is None else window[0],
        )

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """Plain dict of CPU tensors and Python scalars (loads with ``weights_only=True``).

        Under ``torch.distributed`` this is a collective (every rank must call it, as Lightning's and
        the HF Trainer's checkpointing do): the buffers of the pending epoch and the cross-epoch
        softmax sums are summed over ranks into the saved copy, so a checkpoint written by rank 0
        in the middle of an epoch holds every rank's part of it (see :meth:`localize_for_rank`).
        The live buffers are left alone.
        """
        self.flush()
        self._fold.wait()
        buffers = dict(zip(_STATE_BUFFERS, self._buffers(_STATE_BUFFERS)))
        if distributed_rank_and_world()[1] > 1:
            import torch.distributed as dist

            buffers = {name: tensor.clone() for name, tensor in buffers.items()}
            for name, tensor in buffers.items():
                if name in ("pred", "labels"):
                    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
                else:
                    all_reduce_sum(tensor, self.device)
        return {
            "capacity": self.capacity,
            "num_classes": self.num_classes,
            "pending_epoch": self.pending_epoch,
            "history_store": self.history.state_dict(),
            **{name: _host_copy(tensor) for name, tensor in buffers.items()},
            "early_epochs": self.early_epochs,
            "latest_probs_only": self.latest_probs_only,
            "wave": None if self.wave is None else self.wave.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu", fetch: Fetch | None = None) -> SplitLedger:
        """Rebuild a ledger saved by :meth:`state_dict` on ``device``.

        ``fetch(epoch)`` recovers epoch files missing from the history folder (see
        :meth:`EpochStore.from_state_dict`, which raises a clear error when it cannot).
        """
        wide = state.get("prob_sum")
        ledger = cls(state["capacity"], state["num_classes"], device,
                     wide_dtype=wide.dtype if isinstance(wide, torch.Tensor) and wide.dtype != torch.float32 else None)
        ledger.pending_epoch = state.get("pending_epoch")
        if "history_store" in state:
            ledger.history = EpochStore.from_state_dict(state["history_store"], fetch)
        else:  # a checkpoint of an older version: the rows themselves
            for e, row in state.get("history", {}).items():
                ledger.history[int(e)] = {k: v.numpy() for k, v in row.items()}
        ledger.early_epochs = int(state.get("early_epochs", 0))
        ledger.latest_probs_only = bool(state.get("latest_probs_only", False))
        ledger.wave = WaveTracker.from_state_dict(state["wave"]) if state.get("wave") else None
        for name in _STATE_BUFFERS:
            if name in state:
                # a checkpoint of an older version holds fewer float fields: they fill the first rows
                target = getattr(ledger, f"_{name}")
                target[: state[name].shape[0]].copy_(state[name])
        return ledger

    # ------------------------------------------------------------------ memory
    def device_bytes(self) -> int:
        """The most bytes this ledger held at once on its device: buffers, stage and fold workspace."""
        buffers = sum(t.numel() * t.element_size() for t in self._buffers(_DEVICE_BUFFERS))
        return buffers + self._stage.peak_bytes + self._workspace_peak

    def host_bytes(self) -> int:
        """The most bytes this ledger held at once on the host: softmax sums, the Label Wave's copies of them,
        pinned stages, history in RAM."""
        wide = sum(t.numel() * t.element_size() for t in self._buffers(_HOST_BUFFERS))
        copies = self.wave.peak_bytes if self.wave is not None else 0  # the Label Wave's copies of the sums
        return wide + copies + self._fold.peak_pinned_bytes + self.history.memory_bytes()


def _means(sums: torch.Tensor, counts: torch.Tensor, n: int, chunk: int = 65536) -> np.ndarray:
    """(n, C) ``sums / counts`` on the host, NaN rows where the count is 0, in the dtype of ``sums`` (float32, or
    float16 for the sums above :data:`~dq_plugins.raw_record.WIDE_FLOAT32_MAX_ELEMENTS`: a float32 copy of a
    1.28M x 1000 mean would add 5 GB to the analysis); divided in float32, row chunk by row chunk."""
    counts = counts[:n].cpu()
    out = np.empty((n, sums.shape[1]), dtype=np.float16 if sums.dtype == torch.float16 else np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        count = counts[start:stop].unsqueeze(1)
        block = sums[start:stop].float() / count.clamp(min=1)
        out[start:stop] = torch.where(count > 0, block, float("nan")).numpy()
    return out


def all_reduce_sum(tensor: torch.Tensor, device: torch.device) -> None:
    """``dist.all_reduce(SUM)`` in place; a host tensor under NCCL (which reduces only CUDA tensors)
    goes through ``device`` in chunks of 16M elements."""
    import torch.distributed as dist

    if tensor.device.type == "cpu" and dist.get_backend() == "nccl":
        flat = tensor.view(-1)
        step = 1 << 24
        for start in range(0, flat.numel(), step):
            part = flat[start:start + step].to(device)
            dist.all_reduce(part, op=dist.ReduceOp.SUM)
            flat[start:start + step].copy_(part)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
