"""Label Wave: where a model stops learning the labels and starts memorising them, without labels of the truth.

Yuan, Feng and Liu, "Early Stopping Against Label Noise Without Validation Data" (ICLR 2024,
arXiv:2502.07551): the number of training samples whose prediction changes from one epoch to the next
(*prediction changes*, PC) falls while a model learns the clean patterns, then rises again when it starts
to fit the mislabeled samples; the first local minimum of PC, smoothed by a moving average, marks the
epoch before that. The probabilities recorded up to that epoch still vote for the true class of most
mislabeled samples, which is what confident learning needs to *count* them: an earlier window still
learning over-counts, the all-epoch mean of a memorising model under-counts.

Here ``changes[i]`` is PC between the ``i``-th and the ``(i + 1)``-th closed epoch, the moving average is
centred over 3 values (2 at either end), and the answer is an index into the closed epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


WAVE_SNAPSHOT_MAX_BYTES = 256 * 2**20
"""Largest all-epoch softmax sum whose per-epoch copies a ledger keeps on the host to follow the Label Wave
(at most three at a time, see :class:`WaveTracker`); above it the early window stays the fixed one."""

SETTLED_EPOCHS_AFTER = 3
"""Epochs recorded after a minimum of the smoothed changes before it is settled (:func:`wave_epoch` with
``settled``): the next change completes its average and the one after shows the rise."""


def smoothed_changes(changes: Sequence[int]) -> np.ndarray:
    """(len(changes),) float64 centred 3-value moving average of ``changes`` (2 values at either end)."""
    values = np.asarray(changes, dtype=np.float64)
    return np.array([values[max(0, i - 1): i + 2].mean() for i in range(len(values))])


def wave_epoch(changes: Sequence[int], settled: bool = False) -> int | None:
    """Index of the closed epoch that ends the early window: the first local minimum of the smoothed
    prediction changes (the first ``i`` with ``s[i + 1] > s[i]``), or ``None`` when they never rise again.

    Args:
        changes: prediction changes between consecutive closed epochs (``E - 1`` values for ``E`` epochs).
        settled: only a minimum that more epochs cannot move (neither of the two compared values is an
            end value, whose average still lacks a neighbour): what a run still training can rely on.
    """
    smooth = smoothed_changes(changes)
    last = len(smooth) - (2 if settled else 1)
    for i in range(max(last, 0)):
        if smooth[i + 1] > smooth[i]:
            return i
    return None


class WaveTracker:
    """Follows one split's prediction changes epoch by epoch and keeps the host copies of its all-epoch
    sums that can still end the early window.

    The window starts at the first epoch, so the all-epoch sums at an epoch's close are that window's
    sums; the minimum of epoch ``i`` is settled only at the close of epoch ``i + 3`` (the moving
    average needs the next change, and the comparison the one after), so the copies of the last three
    closes are kept until then and the settled one after. Nothing is copied once it is settled.

    Attributes:
        epochs: the closed epochs followed, in order.
        changes: ``changes[i]`` = predictions that changed between ``epochs[i]`` and ``epochs[i + 1]``.
        settled: index into ``epochs`` of the settled minimum, ``None`` while the window is open.
        snapshots: index into ``epochs`` -> the copies ``(sums, counts)`` taken at its close.
    """

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.changes: list[int] = []
        self.settled: int | None = None
        self.snapshots: dict[int, tuple[Any, Any]] = {}
        self.peak_bytes = 0  # the most bytes the copies held at once (tensors and arrays count their nbytes)

    @property
    def open(self) -> bool:
        """Whether the minimum is not settled yet (the ledger must count changes and copy its sums)."""
        return self.settled is None

    def close(self, epoch: int, changed: int | None, copy: Callable[[], tuple[Any, Any]]) -> None:
        """Record the close of ``epoch``: ``changed`` predictions since the previous close (``None`` at the
        first), ``copy()`` the current all-epoch ``(sums, counts)``. An epoch closed again is ignored."""
        if not self.open or epoch in self.epochs:
            return
        if self.epochs and changed is not None:
            self.changes.append(int(changed))
        self.epochs.append(int(epoch))
        index = len(self.epochs) - 1
        self.settled = wave_epoch(self.changes, settled=True)  # never this close: it needs three more changes
        keep = {self.settled} if self.settled is not None else {index - 2, index - 1}
        self.snapshots = {k: v for k, v in self.snapshots.items() if k in keep}  # dropped before the new copy
        if self.settled is None:
            self.snapshots[index] = copy()
        self.peak_bytes = max(self.peak_bytes, sum(_nbytes(part) for pair in self.snapshots.values() for part in pair))

    def window(self) -> tuple[int, tuple[Any, Any]] | None:
        """``(last epoch of the early window, its copy of the sums)`` when the changes have a minimum
        (settled, or at the end of the run the one the last changes show), else ``None``."""
        end = wave_epoch(self.changes)
        if end is None or end not in self.snapshots:
            return None
        return self.epochs[end], self.snapshots[end]

    def state_dict(self) -> dict:
        """Plain dict (tensors and Python scalars) for a checkpoint: at most three copies, one once settled."""
        return {"epochs": list(self.epochs), "changes": list(self.changes), "settled": self.settled,
                "snapshots": {str(k): v for k, v in self.snapshots.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> WaveTracker:
        tracker = cls()
        tracker.epochs = [int(e) for e in state.get("epochs", [])]
        tracker.changes = [int(v) for v in state.get("changes", [])]
        tracker.settled = state.get("settled")
        tracker.snapshots = {int(k): tuple(v) for k, v in state.get("snapshots", {}).items()}
        return tracker


def _nbytes(value: Any) -> int:
    """Bytes of a tensor (``numel * element_size``) or an array (``nbytes``)."""
    return int(value.numel() * value.element_size()) if hasattr(value, "element_size") else int(value.nbytes)
