"""Embedding capture on the device: pooling, head discovery and an ``N x D`` fp16 buffer.

The buffer keeps the **latest** embedding of every sample id: each training (or post-fit
inference) batch overwrites its rows with one ``index_copy_``, no host sync. Device memory:
``N * D * 2`` bytes (1M x 384: 768 MB); host: one copy of the same size at the end of fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dq_plugins.recording.stage import RowStage, last_occurrence

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
        device: where the buffer lives.
    """

    def __init__(self, capacity: int, dim: int, device: torch.device | str, stage_rows: int | None = None) -> None:
        self.capacity, self.dim = int(capacity), int(dim)
        self.device = torch.device(device)
        self._values = torch.zeros(self.capacity + 1, self.dim, dtype=torch.float16, device=self.device)
        self._seen = torch.zeros(self.capacity + 1, dtype=torch.bool, device=self.device)
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
        if self._stage.add(ids, embeddings.detach()):
            self.flush()

    def flush(self) -> None:
        """Fold the staged rows into the buffer."""
        staged = self._stage.take(self.device, (torch.int64, torch.float32))
        if staged is not None:
            self._fold(*staged)

    @torch.no_grad()
    def _fold(self, ids: torch.Tensor, values: torch.Tensor) -> None:
        """Write (R,) int64 ids and (R, D) float32 values on the buffer's device (as :meth:`flush` hands them over)."""
        finite = torch.isfinite(values.sum(dim=1))  # one reduction instead of an elementwise mask
        in_range = (ids >= 0) & (ids < self.capacity) & finite
        slots = last_occurrence(torch.where(in_range, ids, self.capacity), self.capacity)
        # fp16 saturates at 65504: clamp so large activations stay finite
        self._values.index_copy_(0, slots, values.clamp(-65504, 65504).to(torch.float16))
        self._seen.index_fill_(0, slots, True)

    def gather(self) -> None:
        """Under ``torch.distributed``: make every rank hold every sample's embedding (a collective).

        Each id keeps the row of the lowest rank that saw it, so rows are never summed twice.
        """
        from dq_plugins.recording.ledger import distributed_rank_and_world

        self.flush()
        rank, world = distributed_rank_and_world()
        if world < 2:
            return
        import torch.distributed as dist

        owner = torch.where(self._seen, rank, world).to(torch.int64)
        dist.all_reduce(owner, op=dist.ReduceOp.MIN)
        mine = owner == rank
        values = torch.where(mine.unsqueeze(1), self._values, torch.zeros((), dtype=self._values.dtype, device=self.device))
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        self._values = values
        self._seen = owner < world

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (M,) int64, embeddings (M, D) float16) of the ids seen, one host copy."""
        self.flush()
        seen = self._seen[: self.capacity].cpu().numpy()
        ids = np.flatnonzero(seen)
        return ids, self._values[: self.capacity][torch.from_numpy(seen).to(self.device)].cpu().numpy()
