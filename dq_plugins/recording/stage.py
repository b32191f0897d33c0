"""Row staging shared by the per-sample ledger and the embedding buffer.

A training step hands over a few small tensors per batch; doing the per-sample arithmetic on each
of them costs dozens of tiny device ops per step. A :class:`RowStage` keeps the batches by
reference (a list append, no tensor op) and concatenates them once, when enough rows are staged or
the owner needs its buffers up to date.
"""

from __future__ import annotations

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

    def add(self, *tensors: torch.Tensor) -> bool:
        """Keep one batch by reference (the caller must not modify it in place); ``True`` when full."""
        self._batches.append(tensors)
        self._count += tensors[0].shape[0]
        return self._count >= self.rows

    def take(self, device: torch.device, dtypes: tuple[torch.dtype, ...]) -> tuple[torch.Tensor, ...] | None:
        """Empty the stage: one concatenated tensor per position, on ``device`` with ``dtypes``; ``None`` when empty."""
        if not self._batches:
            return None
        batches, self._batches, self._count = self._batches, [], 0
        return tuple(torch.cat([t.to(device, dtype) for t in column]) for column, dtype in zip(zip(*batches), dtypes))


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
