"""The multi-label ledger: per (sample, class) training dynamics on the model's device.

A multi-label classifier gives one logit per class and is trained with one sigmoid per class
against a multi-hot target. Each (sample, class) pair is a binary decision, so each is recorded
like a sample of the single-label path:

- ``prob_given``: sigmoid probability of the given value (``p`` where the class is on, ``1 - p``
  where it is off);
- ``margin``: the logit signed towards the given value (``(2y - 1) * logit``);
- ``correct``: 1.0 when ``logit > 0`` agrees with the given value.

An epoch keeps the per-(sample, class) mean of these over the sample's occurrences; across epochs
the ledger keeps the sum of the sigmoid probabilities ``p`` (and, for the early window, a second
sum), from which the class probabilities fed to confident learning are derived. As in
:mod:`dq_plugins.recording.ledger`, slot ``N`` is a trash slot: a row with an id out of range, a
non-finite logit or a target that is not 0/1 is routed there (and counted), so writes are
unconditional and the training step never syncs with the host. Batches are staged by reference
(:class:`~dq_plugins.recording.stage.RowStage`) and folded in a handful of ops.

Memory, ``N`` samples and ``C`` classes: device ``N * C * 4 * 6`` bytes (three per-epoch fields,
two cross-epoch sums, the labels as float) plus ``N * 12``; ``N * C * 3 * 4`` bytes per closed epoch, written
to one file per epoch (:class:`~dq_plugins.recording.history_store.EpochStore`, issue 13's design: a
checkpoint holds the folder, not the rows) or kept in RAM without a folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dq_plugins.recording.history_store import EpochStore, Fetch
from dq_plugins.recording.stage import EpochStaging, RowStage, last_occurrence, stageable
from dq_plugins.recording.task_ranks import localize_for_rank, reduce_buffers, reduced_copies

MULTILABEL_FIELDS: tuple[str, ...] = ("prob_given", "margin", "correct")
"""Per-(sample, class) fields of the per-epoch record."""

_STATE_BUFFERS: tuple[str, ...] = ("sums", "count", "labels", "prob_sum", "prob_count", "early_sum", "early_count",
                                   "dropped")
"""Device buffers ``_<name>`` saved in a checkpoint (:meth:`MultiLabelLedger.state_dict`)."""

_SUMMED: tuple[str, ...] = ("sums", "count", "prob_sum", "prob_count", "early_sum", "early_count", "dropped")
"""Buffers summed over ranks under ``torch.distributed`` (``labels`` takes the max)."""

_CROSS_EPOCH: tuple[str, ...] = ("prob_sum", "prob_count", "early_sum", "early_count")
"""Sums kept across epochs: rank-local between reductions (:mod:`dq_plugins.recording.task_ranks`)."""


@dataclass
class MultiLabelHistory:
    """Host-side record of one split of a multi-label task.

    Attributes:
        epochs: (E,) int64 trainer epoch of each recorded row.
        fields: name -> (E, N, C) float32 for each of :data:`MULTILABEL_FIELDS`, NaN where missing.
        labels: (N, C) int8 multi-hot given labels, -1 rows for ids never seen.
        mean_probs: (N, C) float32 mean sigmoid over all valid occurrences (held out: the latest pass),
            NaN rows for ids never seen.
        early_probs: (N, C) float32 mean sigmoid over the early window, NaN rows when not seen there;
            ``None`` when no window was kept.
        sample_ids: (N,) int64 sample id of each slot when the split's ids are sparse; ``None``: slot = id.
    """

    epochs: np.ndarray
    fields: dict[str, np.ndarray]
    labels: np.ndarray
    mean_probs: np.ndarray
    early_probs: np.ndarray | None = None
    sample_ids: np.ndarray | None = None

    task = "multilabel"  # the raw record's `task` (a class attribute, not a field)

    @property
    def seen(self) -> np.ndarray:
        """(N,) bool: recorded at least once with finite logits and a valid target."""
        return ~np.isnan(self.mean_probs[:, 0]) if self.mean_probs.size else np.zeros(0, bool)


class MultiLabelLedger(EpochStaging):
    """Device buffers of one split of a multi-label task plus the host history of its closed epochs.

    Args:
        capacity: N, valid sample ids are ``0 .. N-1``.
        num_classes: C, the width of the logits and of the multi-hot targets.
        device: where the buffers live.
        stage_rows: rows staged before they are folded into the sums.
        history_folder: where closed epochs are written (:class:`EpochStore`); ``None`` keeps them in RAM.
    """

    _STAGED_DTYPES = (torch.int64, torch.float32, torch.float32)  # ids, multi-hot targets, logits

    def __init__(self, capacity: int, num_classes: int, device: torch.device | str = "cpu",
                 stage_rows: int | None = None, history_folder: str | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"Expected a split with at least one sample id, but got capacity={capacity}.")
        if num_classes < 1:
            raise ValueError(f"Expected at least one class, but got num_classes={num_classes}.")
        self.capacity, self.num_classes, self.device = int(capacity), int(num_classes), torch.device(device)
        slots = self.capacity + 1
        self._sums = torch.zeros(len(MULTILABEL_FIELDS), slots, self.num_classes, device=self.device)
        self._count = torch.zeros(slots, dtype=torch.int32, device=self.device)
        self._labels = torch.full((slots, self.num_classes), -1.0, device=self.device)
        self._prob_sum = torch.zeros(slots, self.num_classes, device=self.device)
        self._prob_count = torch.zeros(slots, dtype=torch.int32, device=self.device)
        self._early_sum = torch.zeros(slots, self.num_classes, device=self.device)
        self._early_count = torch.zeros(slots, dtype=torch.int32, device=self.device)
        self._dropped = torch.zeros(3, dtype=torch.int64, device=self.device)  # out of range, non-finite, bad target
        self.early_epochs = 0
        self.latest_probs_only = False
        self.pending_epoch: int | None = None
        self.history = EpochStore(history_folder)
        self._stage = RowStage(int(stage_rows or min(65536, max(1024, 4_000_000 // self.num_classes))))

    # ------------------------------------------------------------------ hot path
    def record(self, ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, epoch: int) -> None:
        """Stage one batch: (B,) integer ids, (B, C) multi-hot targets (any dtype), (B, C) float logits.

        No host sync, no tensor arithmetic; a batch of a later epoch first closes the pending one.
        """
        self._open_epoch(epoch)
        if self._stage.add(ids, labels.detach(), stageable(logits)):
            self.flush()

    def _reset_latest_probs(self) -> None:
        self._prob_sum.zero_()
        self._prob_count.zero_()

    @torch.no_grad()
    def _accumulate(self, ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
        finite = torch.isfinite(logits.sum(dim=1))
        binary = ((labels == 0) | (labels == 1)).all(dim=1)
        in_range = (ids >= 0) & (ids < self.capacity)
        valid = finite & in_range & binary
        slots = torch.where(valid, ids, self.capacity)
        target = torch.where(binary.unsqueeze(1), labels, 0.0)
        signed = torch.where(finite.unsqueeze(1), logits, 0.0) * (2.0 * target - 1.0)
        probs = torch.sigmoid(torch.where(finite.unsqueeze(1), logits, 0.0))
        values = torch.stack((torch.sigmoid(signed), signed, (signed > 0).float()))
        ones = torch.ones_like(slots, dtype=torch.int32)
        self._sums.index_add_(1, slots, values)
        self._count.index_add_(0, slots, ones)
        self._labels.index_copy_(0, last_occurrence(slots, self.capacity), target)
        self._prob_sum.index_add_(0, slots, probs)
        self._prob_count.index_add_(0, slots, ones)
        if self.pending_epoch is not None and self.pending_epoch < self.early_epochs:
            self._early_sum.index_add_(0, slots, probs)
            self._early_count.index_add_(0, slots, ones)
        self._dropped += torch.stack(((~in_range).sum(), (in_range & ~finite).sum(), (in_range & finite & ~binary).sum()))

    # ------------------------------------------------------------------ once per epoch
    def close_epoch(self, reduce: bool = True) -> dict[str, int]:
        """Move the pending epoch to the host history (one transfer), reset the per-epoch buffers and
        return the counters of rows not recorded (``out_of_range``, ``non_finite``, ``bad_target``).

        Under ``torch.distributed`` a collective (every rank calls it): each sample's values are the mean
        over its occurrences on every rank. ``reduce=False`` skips it (other ranks may be gone)."""
        if self.pending_epoch is None:
            return {"out_of_range": 0, "non_finite": 0, "bad_target": 0}
        self.flush()
        if reduce:
            reduce_buffers(self, _SUMMED, ("labels",), _CROSS_EPOCH)
        n = self.capacity
        count = self._count[:n].view(1, n, 1)
        means = torch.where(count > 0, self._sums[:, :n] / count.clamp(min=1), float("nan")).cpu().numpy()
        self.history[self.pending_epoch] = {name: means[i] for i, name in enumerate(MULTILABEL_FIELDS)}
        dropped = self._dropped.cpu().tolist()
        self._sums.zero_()
        self._count.zero_()
        self._dropped.zero_()
        self.pending_epoch = None
        return dict(zip(("out_of_range", "non_finite", "bad_target"), dropped))

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """Plain dict of CPU tensors and Python scalars (loads with ``weights_only=True``): the buffers of
        the pending epoch and across epochs, and the history folder with the epochs written there.

        Under ``torch.distributed`` a collective (every rank calls it, as the frameworks' checkpointing
        does): the saved buffers hold every rank's part (:func:`~dq_plugins.recording.task_ranks.reduced_copies`)."""
        self.flush()
        return {
            "capacity": self.capacity,
            "num_classes": self.num_classes,
            "pending_epoch": self.pending_epoch,
            "history_store": self.history.state_dict(),
            "early_epochs": self.early_epochs,
            "latest_probs_only": self.latest_probs_only,
            **reduced_copies(self, _STATE_BUFFERS, _SUMMED),
        }

    def localize_for_rank(self) -> None:
        """After every rank restored the same checkpoint, keep its sums on rank 0 only."""
        localize_for_rank(self, _SUMMED)

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu",
                        fetch: Fetch | None = None) -> MultiLabelLedger:
        """Rebuild a ledger saved by :meth:`state_dict` on ``device``; ``fetch(epoch)`` recovers epoch files
        missing from the history folder (:meth:`EpochStore.from_state_dict` raises a clear error otherwise)."""
        ledger = cls(state["capacity"], state["num_classes"], device)
        ledger.pending_epoch = state.get("pending_epoch")
        ledger.history = EpochStore.from_state_dict(state["history_store"], fetch)
        ledger.early_epochs = int(state.get("early_epochs", 0))
        ledger.latest_probs_only = bool(state.get("latest_probs_only", False))
        for name in _STATE_BUFFERS:
            getattr(ledger, f"_{name}").copy_(state[name])
        return ledger

    def _mean(self, total: torch.Tensor, count: torch.Tensor) -> np.ndarray:
        n = self.capacity
        c = count[:n].unsqueeze(1)
        return torch.where(c > 0, total[:n] / c.clamp(min=1), float("nan")).cpu().numpy()

    def to_history(self, reduce: bool = True) -> MultiLabelHistory:
        """The host record of all closed epochs (the pending one is closed first, see :meth:`close_epoch`)."""
        self.close_epoch(reduce)
        epochs = sorted(self.history)
        n, c = self.capacity, self.num_classes
        fields = {f: np.stack([self.history[e][f] for e in epochs]) if epochs else np.zeros((0, n, c), np.float32)
                  for f in MULTILABEL_FIELDS}
        return MultiLabelHistory(
            epochs=np.asarray(epochs, dtype=np.int64),
            fields=fields,
            labels=self._labels[:n].to(torch.int8).cpu().numpy(),
            mean_probs=self._mean(self._prob_sum, self._prob_count),
            early_probs=self._mean(self._early_sum, self._early_count) if self.early_epochs > 0 else None,
        )


def check_multilabel_batch(labels: torch.Tensor, logits: torch.Tensor, label_key: str, first: bool) -> None:
    """Shape checks of one multi-label batch (metadata only); on the ``first`` batch of a split also
    the values (one host sync): targets must be 0/1. Later bad rows are dropped and counted."""
    if logits.ndim != 2 or labels.ndim != 2:
        raise ValueError(
            f"Expected multi-label logits and `{label_key}` of shape (batch, num_classes), but got logits "
            f"{tuple(logits.shape)} and targets {tuple(labels.shape)}. HINT: give one multi-hot row per sample."
        )
    if labels.shape != logits.shape:
        raise ValueError(
            f"Expected multi-hot `{label_key}` as wide as the logits ({logits.shape[1]} classes), but got targets "
            f"of shape {tuple(labels.shape)} for logits {tuple(logits.shape)}. HINT: the head needs one output per "
            "class and each target row one 0/1 entry per class."
        )
    if first and labels.numel():
        target = labels.float()
        if bool(((target != 0) & (target != 1)).any()):
            bad = target[(target != 0) & (target != 1)][0].item()
            raise ValueError(
                f"Expected multi-hot targets under `{label_key}` (0 or 1 per class), but got the value {bad:g} "
                "(soft, smoothed or negative targets cannot say which labels are given). HINT: pass hard 0/1 "
                "targets; apply label smoothing in the loss instead."
            )
