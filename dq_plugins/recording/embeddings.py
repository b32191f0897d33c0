"""Embedding capture on the device: pooling, head discovery and an ``N x D`` fp16 buffer on the host.

The buffer keeps the **latest** embedding of every sample id. Batches are staged on the device
by reference; a flush picks each id's latest row, converts to fp16 and hands the rows to a
:class:`~dq_plugins.recording.stage.HostFold` (non-blocking copies into pinned memory, written
into the host buffer on a worker thread): no host sync in a step, and the device holds only the
stage (at most ~16 MB). Host memory: ``N * (2D + 1)`` bytes; above :data:`MEMMAP_BYTES` the
buffer is a memory-mapped file in ``spill_folder`` (when given), so the page cache rather than the
process holds it (10M x 768: 15 GB on disk).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dq_plugins.recording.stage import HostFold, RowStage, concatenate, last_occurrence

MEMMAP_BYTES = 2**30
"""Host buffers above this many bytes are memory-mapped files when a spill folder is given."""

HEAD_NAMES: tuple[str, ...] = ("classifier", "score", "classification_head", "head")
"""Attribute names of the classification head in Hugging Face ``*ForSequenceClassification`` models."""


def find_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor in a module input/output (tensor, tuple, or mapping/ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
        return None
    if isinstance(output, (tuple, list)):
        for value in output:
            if isinstance(value, torch.Tensor):
                return value
    return None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, mode: str = "mean") -> torch.Tensor:
    """(B, D) -> itself; (B, T, D) -> (B, D) by ``"cls"`` (first token) or ``"mean"`` under the mask.

    Args:
        hidden: 2-D or 3-D activations.
        attention_mask: (B, T), 1 for real tokens; ``None`` means all tokens count.
        mode: "mean" or "cls".
    """
    if hidden.ndim == 2:
        return hidden
    if hidden.ndim != 3:
        raise ValueError(
            f"Expected embeddings of shape (batch, dim) or (batch, tokens, dim), but got {tuple(hidden.shape)}. "
            "HINT: name a module whose output is one vector per sample (or per token)."
        )
    if mode == "cls":
        return hidden[:, 0]
    if attention_mask is None or attention_mask.shape != hidden.shape[:2]:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def find_head(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """(name, module) of the classification head of a ``*ForSequenceClassification`` model."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return name, module
    raise ValueError(
        f"Could not find the classification head of {type(model).__name__} (looked for {list(HEAD_NAMES)}). "
        "HINT: pass `embedding_module='<name of the module whose INPUT is the pooled representation>'`, "
        "or `embeddings=False` to switch embeddings off."
    )


class EmbeddingBuffer:
    """Latest embedding per sample id, on the device.

    Args:
        capacity: N sample ids (0..N-1); rows for other ids are dropped (slot N is a trash slot).
        dim: D, the embedding width (fixed by the first batch).
        device: the model's device, where batches are staged and folded; the buffer is on the host.
        spill_folder: where a buffer above :data:`MEMMAP_BYTES` is memory-mapped; ``None``: in RAM.
    """

    def __init__(self, capacity: int, dim: int, device: torch.device | str, stage_rows: int | None = None,
                 spill_folder: str | os.PathLike | None = None) -> None:
        self.capacity, self.dim = int(capacity), int(dim)
        self.device = torch.device(device)
        self.mapped_path: Path | None = None
        shape = (self.capacity + 1, self.dim)
        if spill_folder is not None and shape[0] * shape[1] * 2 > MEMMAP_BYTES:
            self.mapped_path = Path(spill_folder) / "embeddings.f16"
            self.mapped_path.parent.mkdir(parents=True, exist_ok=True)
            mapped = np.memmap(self.mapped_path, dtype=np.float16, mode="w+", shape=shape)
            self._values = torch.from_numpy(mapped)  # zero-filled by the file system
        else:
            self._values = torch.zeros(shape, dtype=torch.float16)
        self._seen = torch.zeros(self.capacity + 1, dtype=torch.bool)
        self._fold_rows = HostFold(self.device)
        # Writes are staged by reference and folded in once S rows are staged or the buffer is read:
        # about 10 small ops per batch become none. Stage memory: at most S * D floats (~16 MB).
        self.stage_rows = int(stage_rows or min(65536, max(256, 4_000_000 // self.dim)))
        self._stage = RowStage(self.stage_rows)

    def write(self, ids: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Overwrite the rows of ``ids`` (B,) with ``embeddings`` (B, D). No host sync.

        The tensors are kept by reference until the stage is folded in: the caller must not modify
        them in place (clone activations that a later in-place op may overwrite). When an id occurs
        more than once before the stage is folded in (a stage can span epochs), the last write wins.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"Expected embeddings of shape (batch, {self.dim}), but got {tuple(embeddings.shape)}.")
        if self._stage.add(ids, embeddings.detach() if embeddings.requires_grad else embeddings):
            self.flush()

    def flush(self) -> None:
        """Fold the staged rows into the buffer."""
        if self.device.type == "cpu":
            batches = self._stage.take_batches()
            if batches:
                self._fold_batches(batches)
            return
        staged = self._stage.take(self.device, (torch.int64, torch.float32))
        if staged is not None:
            self._fold(*staged)

    @torch.no_grad()
    def _fold_batches(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """:meth:`_fold` on the CPU, batch by batch: the rows go straight from each staged ``(B, D)`` batch into
        the host buffer, without the concatenated ``(R, D)`` float32 copy of the stage (the same values; only the
        slots, one ``(R,)`` tensor, are computed over the whole stage, so the latest write of an id still wins)."""
        values = [v if v.dtype == torch.float32 else v.to(torch.float32) for _, v in batches]
        ids = concatenate(tuple(i for i, _ in batches), self.device, torch.int64)
        finite = torch.cat([torch.isfinite(v.sum(dim=1)) for v in values])
        in_range = (ids >= 0) & (ids < self.capacity) & finite
        slots = last_occurrence(torch.where(in_range, ids, self.capacity), self.capacity)
        for rows, batch in zip(slots.split([v.shape[0] for v in values]), values):
            self._write_host(rows, batch.to(torch.float16).clamp_(-65504, 65504))  # as in _fold

    @torch.no_grad()
    def _fold(self, ids: torch.Tensor, values: torch.Tensor) -> None:
        """Write (R,) int64 ids and (R, D) float32 values on the model's device (as :meth:`flush` hands them over)."""
        finite = torch.isfinite(values.sum(dim=1))  # one reduction instead of an elementwise mask
        in_range = (ids >= 0) & (ids < self.capacity) & finite
        slots = last_occurrence(torch.where(in_range, ids, self.capacity), self.capacity)
        # fp16 saturates at 65504: clamp so large activations stay finite. Converted first, then clamped in place:
        # fp16(clamp(x)) == clamp(fp16(x)) for every float x, and the clamp runs over half the bytes
        self._fold_rows.submit(self._write_host, slots, values.to(torch.float16).clamp_(-65504, 65504))

    def _write_host(self, slots: torch.Tensor, values: torch.Tensor) -> None:
        """Host side of a flush: (R,) slots, each at most once but the trash slot, and (R, D) fp16 rows."""
        self._values.index_copy_(0, slots, values)
        self._seen.index_fill_(0, slots, True)

    def remove_mapped_file(self) -> None:
        """Delete the memory-mapped file, if any (the mapping stays readable until the buffer is dropped)."""
        if self.mapped_path is not None:
            self.mapped_path.unlink(missing_ok=True)

    def device_bytes(self) -> int:
        """The most bytes staged on the model's device at once (the stage and its fp16 copy)."""
        return self._stage.peak_bytes * 3 // 2

    def host_bytes(self) -> int:
        """Bytes held in host RAM: the buffer (0 when memory-mapped) and the pinned rows in flight."""
        values = 0 if self.mapped_path is not None else self._values.numel() * 2
        return values + self._seen.numel() + self._fold_rows.peak_pinned_bytes

    def gather(self) -> None:
        """Under ``torch.distributed``: make every rank hold every sample's embedding (a collective).

        Each id keeps the row of the lowest rank that saw it, so rows are never summed twice.
        """
        from dq_plugins.recording.ledger import all_reduce_sum, distributed_rank_and_world

        self.flush()
        self._fold_rows.wait()
        rank, world = distributed_rank_and_world()
        if world < 2:
            return
        mine, self._seen = lowest_rank_rows(self._seen, rank, world, self.device)
        self._values.masked_fill_(~mine.unsqueeze(1), 0)
        all_reduce_sum(self._values, self.device)

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (M,) int64, embeddings (M, D) float16) of the ids seen: a view of the buffer (memory-mapped above
        1 GiB) when every id was seen, else one host copy of the rows seen (a 10M x 768 copy alone is 15 GB)."""
        self.flush()
        self._fold_rows.wait()
        seen = self._seen[: self.capacity].numpy()
        ids = np.flatnonzero(seen)
        values = self._values[: self.capacity].numpy()
        return ids, values if ids.size == self.capacity else values[ids]


def lowest_rank_rows(seen: torch.Tensor, rank: int, world: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mine, seen_anywhere)``, each ``(N,)`` bool, from this rank's ``(N,)`` bool ``seen`` (a collective):
    the rows this rank keeps, those it saw that no lower rank saw, so a row summed over ranks is counted once;
    and the rows some rank saw."""
    owner = torch.where(seen, rank, world).to(torch.int64)
    all_reduce_min(owner, device)
    return owner == rank, owner < world


def all_reduce_min(tensor: torch.Tensor, device: torch.device) -> None:
    """``dist.all_reduce(MIN)`` of a host tensor, through ``device`` under NCCL."""
    import torch.distributed as dist

    if tensor.device.type == "cpu" and dist.get_backend() == "nccl":
        part = tensor.to(device)
        dist.all_reduce(part, op=dist.ReduceOp.MIN)
        tensor.copy_(part)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
