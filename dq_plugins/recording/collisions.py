"""Per-epoch checks of the ids and labels a split received: colliding ids, out-of-range labels and
PyTorch's ignore index.

Why: the ledger keeps one slot per sample id, so two samples that share an id (``ConcatDataset`` of two
``with_ids`` datasets, both counting from 0) are merged silently and get false flags. Two signs give a
collision away within one epoch: the same id arrives with two different labels, or (under a sampler
without replacement, where each sample comes once) there are more rows than distinct ids.

Cost: nothing on the device in the step (:meth:`EpochCheck.add` keeps references to the batch's ``(B,)``
ids and labels, 16 bytes a row for the epoch); at the epoch's end one pass on the device (a bincount and
two scatter reductions over ``N + 1`` slots, the last one a trash slot for the rows not counted) and one
host sync for the counters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dq_plugins.recording.stage import concatenate

IGNORE_INDEX = -100
"""PyTorch's default ``ignore_index`` (``F.cross_entropy``): rows with this label are not recorded."""


@dataclass(frozen=True)
class EpochIds:
    """What one epoch of a split received.

    Attributes:
        rows: rows with an id in ``0..capacity-1`` and a label that is not :data:`IGNORE_INDEX`.
        distinct: distinct ids among them.
        conflicting: ids seen with two or more different labels.
        example: ``(id, label, other label)`` of one conflicting id, else ``None``.
        ignored: rows with label :data:`IGNORE_INDEX`.
        bad_labels: rows with a label outside ``0..num_classes-1`` (other than :data:`IGNORE_INDEX`).
        bad_label: one such label, else ``None``.
    """

    rows: int
    distinct: int
    conflicting: int
    example: tuple[int, int, int] | None
    ignored: int
    bad_labels: int
    bad_label: int | None


class EpochCheck:
    """Collect a split's ``(ids, labels)`` during an epoch; :meth:`close` summarises them.

    Args:
        capacity: N, the number of sample ids of the split.
        num_classes: C, the width of the logits.
    """

    def __init__(self, capacity: int, num_classes: int) -> None:
        self.capacity, self.num_classes = int(capacity), int(num_classes)
        self._ids: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def add(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep ``(B,)`` integer ids and labels of one batch (references: integer tensors carry no autograd
        graph; no device work, no host sync)."""
        self._ids.append(ids)
        self._labels.append(labels)

    def close(self) -> EpochIds | None:
        """Summarise the epoch and start a new one; ``None`` when nothing was added."""
        if not self._ids:
            return None
        ids = concatenate(tuple(_flat(i) for i in self._ids), self._ids[0].device, torch.int64)
        labels = concatenate(tuple(_flat(lab) for lab in self._labels), ids.device, torch.int64)
        self._ids, self._labels = [], []
        ignored = labels == IGNORE_INDEX
        bad = ~ignored & ((labels < 0) | (labels >= self.num_classes))
        bad_label = labels[torch.argmax(bad.to(torch.int8))]  # a bad label (any label when none)
        keep = (ids >= 0) & (ids < self.capacity) & ~ignored & ~bad
        n = self.capacity
        slots = torch.where(keep, ids, n)  # the rows not kept go to a trash slot n (no boolean indexing, no sync)
        counts = torch.bincount(slots, minlength=n + 1)[:n]
        low = torch.full((n + 1,), self.num_classes, dtype=torch.long, device=ids.device)
        low = low.scatter_reduce(0, slots, labels, "amin")[:n]
        high = torch.full((n + 1,), -1, dtype=torch.long, device=ids.device).scatter_reduce(0, slots, labels, "amax")[:n]
        conflict = (counts > 0) & (high > low)
        first = torch.argmax(conflict.to(torch.int8))  # an id with a conflict (0 when none)
        summary = torch.stack([
            keep.sum(), (counts > 0).sum(), conflict.sum(), first, low[first], high[first], ignored.sum(), bad.sum(),
            bad_label,
        ]).tolist()  # the one host sync of the epoch
        rows, distinct, conflicting, where, lo, hi, n_ignored, n_bad, example_label = (int(v) for v in summary)
        return EpochIds(
            rows=rows, distinct=distinct, conflicting=conflicting,
            example=(where, lo, hi) if conflicting else None, ignored=n_ignored, bad_labels=n_bad,
            bad_label=example_label if n_bad else None,
        )


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as 1-D (a 1-D batch, the usual case, as it is: no view made per batch)."""
    return tensor if tensor.ndim == 1 else tensor.reshape(-1)
