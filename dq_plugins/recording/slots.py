"""Sparse or huge sample ids mapped to dense slots on the device.

Every per-sample buffer (ledger, latency, embeddings, fingerprints) is indexed by a slot in ``0..K-1``.
When a split's ids are already ``0..N-1`` (the usual case) the slot is the id and no map exists: zero
added cost. Otherwise (ids of a database, around 10**12, or a subset of a numbered dataset) a
:class:`SlotMap` holds the K distinct ids, sorted, on the model's device; a batch's slots are found by a
binary search on the device (no host sync). The sorted table is the same on every DDP rank and after a
resume, so all-reduces by slot and checkpoints stay consistent. Outputs keep the original ids
(:attr:`dq_plugins.raw_record.SplitHistory.sample_ids` maps slot -> id).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class SlotMap:
    """The sorted distinct sample ids of one split and the slot of each.

    Args:
        ids: the split's sample ids, any order, repeats allowed (1-D integers).

    Attributes:
        table: (K,) int64 host array, the distinct ids in increasing order; slot ``k`` holds ``table[k]``.
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.table = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        self._device_table: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """K, the number of distinct ids (the capacity of the split's buffers)."""
        return int(self.table.size)

    def slots(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) int64 slots of (B,) ids on ``ids.device``; an id not in the table gets slot ``K`` (the
        buffers' out-of-range slot, counted by the ledger). No host sync; the table moves to the device
        of the first call once."""
        table = self._device_table
        if table is None or table.device != ids.device:
            table = self._device_table = torch.from_numpy(self.table).to(ids.device)
        ids = ids.reshape(-1).long()
        position = torch.searchsorted(table, ids).clamp_(max=self.size - 1)
        return torch.where(table[position] == ids, position, self.size)

    def device_bytes(self) -> int:
        """Bytes of the device copy of the table (0 before the first batch)."""
        return 0 if self._device_table is None else self._device_table.numel() * 8


def is_dense(ids: np.ndarray, capacity: int) -> bool:
    """Whether ``ids`` index buffers of ``capacity`` slots directly (all in ``0..capacity-1``)."""
    return ids.size == 0 or (int(ids.min()) >= 0 and int(ids.max()) < capacity)


def integer_ids(ids: Any, what: str) -> np.ndarray:
    """``ids`` (array-like or tensor) as a 1-D int64 host array.

    Raises:
        ValueError: the values are not integers.
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids).reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Expected integer sample ids in {what}, but got dtype {array.dtype}. "
                         "HINT: give one integer id per sample.")
    return array.astype(np.int64, copy=False)


def dataset_ids(dataset: Any, id_key: str) -> np.ndarray | None:
    """The ``id_key`` column of a dataset that holds it as a column (a ``datasets.Dataset``: one Arrow read),
    or ``None`` when reading it would mean iterating the items."""
    names = getattr(dataset, "column_names", None)
    if not isinstance(names, (list, tuple)) or id_key not in names or not hasattr(dataset, "with_format"):
        return None
    try:
        values = np.asarray(dataset.with_format("numpy")[id_key])
    except Exception:  # noqa: BLE001 - an unusual dataset: fall back to the dataset length
        return None
    return values if values.ndim == 1 and np.issubdtype(values.dtype, np.integer) else None
