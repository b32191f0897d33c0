"""Active-learning selection: the pool samples most similar to a problem slice, without near-duplicates.

    from dq_plugins.selection import select_similar
    picked = select_similar(pool_emb, pool_ids, slice_emb, k=100, partitions=pool_day, balance=True)

Given an unlabeled pool (``M x D`` embeddings from the same model) and a query set (``Q x D``: the
members of a weak slice, or flagged label issues), :func:`select_similar` ranks the pool by cosine
similarity to the query set and picks greedily:

1. similarity of a pool sample to the query set (``reduce``): ``"max"`` (default) is the cosine to
   its *nearest* query: it finds look-alikes of any one query and suits a query set with several
   modes; ``"mean"`` is the mean cosine to all queries (= the dot product with the mean unit query
   vector): it favours the typical member of the set.
2. diversity: candidates are visited from most to least similar; one whose cosine to an already
   picked sample is at least ``diversity_threshold`` is skipped, so a group of near-duplicates
   contributes one sample.
3. balance (optional): the ``k`` picks are shared equally among partitions (e.g. days or sources of
   the pool), as a round-robin over partitions would share them; a partition with too few distinct
   candidates gives its share to the others.

Similarities are computed in chunks with ``torch`` matmuls (on ``device``): memory is bounded by
``chunk_elements`` floats, never ``M x Q`` at once. References: the similarity-search side of
SEALS (Coleman et al. 2022, "Similarity Search for Efficient Active Learning and Search of Rare
Concepts"), and the usual greedy near-duplicate filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from dq_plugins.logs import warn

SELECTION_COLUMNS: tuple[str, ...] = ("pool_id", "similarity", "partition", "rank")
"""Columns of :func:`select_similar`."""

DEFAULT_CHUNK_ELEMENTS = 1 << 24
"""Largest similarity block computed at once (16M floats, 64 MB)."""

GREEDY_BLOCK = 256
"""Candidates compared with the picks in one matmul during the greedy diversity pass."""


@dataclass(frozen=True)
class EmbeddingPool:
    """Embeddings keyed by sample id, e.g. an unlabeled pool or the embeddings of a training split.

    Attributes:
        ids: (M,) int64 sample ids, unique.
        embeddings: (M, D) float array or tensor.
        partitions: (M,) partition of each row (any hashable values), or ``None``.
    """

    ids: np.ndarray
    embeddings: Any
    partitions: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids).reshape(-1)
        if len(self.embeddings.shape) != 2 or self.embeddings.shape[0] != len(ids):
            raise ValueError(
                f"Expected embeddings of shape ({len(ids)}, D) to match {len(ids)} ids but got "
                f"{tuple(self.embeddings.shape)}."
            )
        if self.partitions is not None and len(self.partitions) != len(ids):
            raise ValueError(f"Expected {len(ids)} partitions (one per id) but got {len(self.partitions)}.")
        object.__setattr__(self, "ids", ids)

    def take(self, ids: np.ndarray) -> Any:
        """(K, D) embeddings of the given ids, in the order of ``ids``; ids not in the pool are skipped."""
        position = pd.Series(np.arange(len(self.ids)), index=self.ids)
        rows = position.reindex(np.asarray(ids).reshape(-1)).dropna().to_numpy(dtype=np.int64)
        return self.embeddings[rows]


def _as_tensor(values: Any, device: Any):
    import torch

    tensor = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(values))
    return tensor.to(device=device, dtype=torch.float32)


def _finite_rows(values: Any) -> np.ndarray:
    import torch

    if isinstance(values, torch.Tensor):
        return torch.isfinite(values).all(dim=1).cpu().numpy()
    return np.isfinite(np.asarray(values, dtype=np.float64)).all(axis=1)


def _unit(tensor):
    import torch

    return tensor / torch.linalg.vector_norm(tensor, dim=1, keepdim=True).clamp_min(1e-12)


def cosine_to_queries(
    pool_embeddings: Any,
    query_embeddings: Any,
    *,
    reduce: Literal["max", "mean"] = "max",
    device: Any = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> np.ndarray:
    """(M,) float32: cosine similarity of each pool row to the query set (max or mean over queries).

    Args:
        pool_embeddings: (M, D) array or tensor; rows must be finite.
        query_embeddings: (Q, D), Q >= 1, finite.
        reduce: ``"max"`` or ``"mean"`` (module docstring).
        device: where the matmuls run; ``None``: the pool tensor's device, else CPU.
        chunk_elements: at most this many similarities are held at once.
    """
    import torch

    if reduce not in ("max", "mean"):
        raise ValueError(f"Expected argument `reduce` to be 'max' or 'mean' but got {reduce!r}.")
    if device is None:
        device = pool_embeddings.device if isinstance(pool_embeddings, torch.Tensor) else "cpu"
    num_pool, num_queries = pool_embeddings.shape[0], query_embeddings.shape[0]
    query_chunk = max(1, min(num_queries, chunk_elements))
    pool_chunk = max(1, chunk_elements // query_chunk)
    out = np.empty(num_pool, dtype=np.float32)
    with torch.no_grad():
        if reduce == "mean":
            centre = torch.zeros(query_embeddings.shape[1], dtype=torch.float32, device=device)
            for start in range(0, num_queries, pool_chunk):
                centre += _unit(_as_tensor(query_embeddings[start : start + pool_chunk], device)).sum(0)
            centre /= num_queries
        for start in range(0, num_pool, pool_chunk):
            block = _unit(_as_tensor(pool_embeddings[start : start + pool_chunk], device))
            if reduce == "mean":
                best = block @ centre
            else:
                best = torch.full((block.shape[0],), -float("inf"), device=device)
                for q_start in range(0, num_queries, query_chunk):
                    queries = _unit(_as_tensor(query_embeddings[q_start : q_start + query_chunk], device))
                    best = torch.maximum(best, (block @ queries.T).amax(dim=1))
            out[start : start + block.shape[0]] = best.cpu().numpy()
    return out


def select_similar(
    pool_embeddings: Any,
    pool_ids: Sequence[int] | np.ndarray,
    query_embeddings: Any,
    k: int,
    *,
    diversity_threshold: float | None = 0.95,
    partitions: Sequence[Any] | np.ndarray | None = None,
    balance: bool = False,
    reduce: Literal["max", "mean"] = "max",
    exclude_ids: Sequence[int] | np.ndarray | None = None,
    device: Any = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> pd.DataFrame:
    """The ``k`` pool samples most similar to the query set, without near-duplicates.

    Args:
        pool_embeddings: (M, D) float array or tensor of the unlabeled pool.
        pool_ids: (M,) ids of the pool rows.
        query_embeddings: (Q, D) embeddings of the query set (a weak slice, issue samples).
        k: how many to select (fewer come back when the pool runs out of distinct candidates).
        diversity_threshold: a candidate whose cosine to an already selected sample is at least this is
            skipped; ``None`` disables the check.
        partitions: (M,) partition of each pool row; shown in the result, and shared equally with ``balance``.
        balance: share the ``k`` picks equally among partitions (needs ``partitions``).
        reduce: similarity to the query set: ``"max"`` (nearest query) or ``"mean"`` (module docstring).
        exclude_ids: pool ids never selected (e.g. samples already labelled).
        device: where the matmuls run (default: the pool tensor's device, else CPU).
        chunk_elements: memory bound of one similarity block (floats).

    Returns:
        columns :data:`SELECTION_COLUMNS`: ``pool_id``, ``similarity`` (float, to the query set),
        ``partition`` (``None`` without partitions), ``rank`` (1 = most similar). Rows with non-finite
        embeddings are left out with a warning; an empty query set gives a warning and an empty table.

    Raises:
        ValueError: shapes that do not match (the message names them), ``k < 1``, ``balance`` without
            partitions, a threshold outside (-1, 1].
    """
    ids = np.asarray(pool_ids).reshape(-1)
    if len(pool_embeddings.shape) != 2 or len(query_embeddings.shape) != 2:
        raise ValueError(
            f"Expected 2-D embeddings (rows, dim) but got pool {tuple(pool_embeddings.shape)} and queries "
            f"{tuple(query_embeddings.shape)}."
        )
    if pool_embeddings.shape[0] != len(ids):
        raise ValueError(f"Expected one pool id per pool row: {pool_embeddings.shape[0]} rows but {len(ids)} ids.")
    if query_embeddings.shape[0] and pool_embeddings.shape[1] != query_embeddings.shape[1]:
        raise ValueError(
            f"Expected pool and query embeddings of the same width but got {pool_embeddings.shape[1]} and "
            f"{query_embeddings.shape[1]}. HINT: embed both with the same model and module."
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"Expected argument `k` to be an integer >= 1 but got {k!r}.")
    if diversity_threshold is not None and not -1.0 < float(diversity_threshold) <= 1.0:
        raise ValueError(
            "Expected argument `diversity_threshold` to be a cosine in (-1, 1] or None but got "
            f"{diversity_threshold!r}."
        )
    if partitions is not None and len(partitions) != len(ids):
        raise ValueError(f"Expected one partition per pool row: {len(ids)} rows but {len(partitions)} partitions.")
    if balance and partitions is None:
        raise ValueError("`balance=True` needs `partitions=` (the partition of each pool row).")

    finite_queries = _finite_rows(query_embeddings) if query_embeddings.shape[0] else np.zeros(0, bool)
    if not finite_queries.all():
        warn(f"dq_plugins: {int((~finite_queries).sum())} query rows with NaN/inf embeddings are ignored.",
                      RuntimeWarning, stacklevel=2)
        query_embeddings = query_embeddings[np.flatnonzero(finite_queries)]
    if query_embeddings.shape[0] == 0:
        warn("dq_plugins: select_similar got an empty query set (an empty slice?); nothing selected.",
                      RuntimeWarning, stacklevel=2)
        return _result(ids, np.zeros(0, np.int64), np.zeros(0, np.float32), partitions)
    eligible = _finite_rows(pool_embeddings)
    if not eligible.all():
        warn(f"dq_plugins: {int((~eligible).sum())} pool rows with NaN/inf embeddings are left out.",
                      RuntimeWarning, stacklevel=2)
    if exclude_ids is not None:
        eligible &= ~np.isin(ids, np.asarray(exclude_ids))
    rows = np.flatnonzero(eligible)
    similarity = np.full(len(ids), -np.inf, dtype=np.float32)
    if len(rows):
        pool_rows = pool_embeddings if len(rows) == len(ids) else pool_embeddings[rows]
        similarity[rows] = cosine_to_queries(pool_rows, query_embeddings, reduce=reduce, device=device,
                                             chunk_elements=chunk_elements)
    order = rows[np.argsort(-similarity[rows], kind="stable")]
    if partitions is not None and balance:
        codes, _ = pd.factorize(pd.Series(np.asarray(partitions, dtype=object)), use_na_sentinel=False)
    else:
        codes = np.zeros(len(ids), dtype=np.int64)
    picked = _greedy(pool_embeddings, order, np.asarray(codes, dtype=np.int64), int(k), diversity_threshold)
    picked = picked[np.argsort(-similarity[picked], kind="stable")]
    return _result(ids, picked, similarity[picked], partitions)


def _result(ids: np.ndarray, picked: np.ndarray, similarity: np.ndarray, partitions: Any) -> pd.DataFrame:
    return pd.DataFrame({
        "pool_id": ids[picked],
        "similarity": similarity.astype(np.float64),
        "partition": [None] * len(picked) if partitions is None else np.asarray(partitions, dtype=object)[picked],
        "rank": np.arange(1, len(picked) + 1, dtype=np.int64),
    }, columns=list(SELECTION_COLUMNS))


def _round_robin(budget: int, ranked_parts: list[int], capacity: dict[int, int]) -> dict[int, int]:
    """Shares of ``budget`` dealt one at a time to ``ranked_parts`` in turn, none beyond its capacity."""
    share = dict.fromkeys(ranked_parts, 0)
    open_parts = [p for p in ranked_parts if capacity[p] > 0]
    while budget > 0 and open_parts:
        for part in list(open_parts):
            if budget == 0:
                break
            share[part] += 1
            budget -= 1
            if share[part] >= capacity[part]:
                open_parts.remove(part)
    return share


def _greedy(pool_embeddings: Any, order: np.ndarray, codes: np.ndarray, k: int, threshold: float | None) -> np.ndarray:
    """Pool rows picked in ``order`` (most similar first), skipping near-duplicates of earlier picks and
    candidates of partitions whose share is full; shares are refilled round-robin while the pool lasts."""
    ranked_parts = list(dict.fromkeys(codes[order].tolist()))  # by their most similar candidate
    capacity = {p: int(n) for p, n in zip(*np.unique(codes[order], return_counts=True), strict=True)}
    quota = _round_robin(k, ranked_parts, capacity)
    counts = dict.fromkeys(ranked_parts, 0)
    picked: list[int] = []
    picked_units = np.zeros((min(k, len(order)), pool_embeddings.shape[1]), dtype=np.float32)
    candidates = order
    while len(picked) < k and len(candidates):
        deferred = []
        for start in range(0, len(candidates), GREEDY_BLOCK):
            block = candidates[start : start + GREEDY_BLOCK]
            units = _unit(_as_tensor(pool_embeddings[block], "cpu")).numpy()
            close = np.zeros(len(block), dtype=bool)
            if threshold is not None and picked:
                close = (units @ picked_units[: len(picked)].T).max(axis=1) >= threshold
            within = units @ units.T if threshold is not None else None
            mine: list[int] = []  # positions in this block picked so far
            for j, row in enumerate(block):
                if close[j] or (within is not None and mine and within[j, mine].max() >= threshold):
                    continue  # a near-duplicate of a pick: never picked
                part = int(codes[row])
                if counts[part] >= quota[part]:
                    deferred.append(row)
                    continue
                picked_units[len(picked)] = units[j]
                picked.append(int(row))
                mine.append(j)
                counts[part] += 1
                if len(picked) == k:
                    return np.asarray(picked, dtype=np.int64)
        # Some partitions ran out of distinct candidates: share what is left among those that still have some.
        candidates = np.asarray(deferred, dtype=np.int64)
        waiting = list(dict.fromkeys(codes[candidates].tolist()))
        extra = _round_robin(k - len(picked), waiting, {p: int((codes[candidates] == p).sum()) for p in waiting})
        for part, more in extra.items():
            quota[part] = counts[part] + more
    return np.asarray(picked, dtype=np.int64)
