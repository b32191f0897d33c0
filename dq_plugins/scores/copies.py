"""Copies found from the model's inputs: exact and near copies within a split and train -> held-out leakage.

Input: per split, the fingerprints of :mod:`dq_plugins.recording.fingerprints` (an exact int64
hash and a random-projection sketch of every sample's input row).

- **Exact copies**: equal hashes. Within a split, each member of a group of copies points at the
  smallest other id of its group (the representative points at the second smallest), as
  :func:`dq_plugins.scores.duplicates.near_duplicate_of` does for embeddings. A held-out row whose
  hash a train row has points at the smallest such train id.
- **Near copies** (no exact copy found): cosine similarity of the *centred* sketches (the mean
  sketch over all rows subtracted, i.e. the inputs centred, since the projection is linear)
  ``>= NEAR_COPY_SIMILARITY``, among the :data:`NEIGHBOURS` nearest rows of the union of all splits
  (:func:`~dq_plugins.scores.neighbors.knn_cosine`: exact up to 50k rows on CPU, cluster-pruned
  above). Centring matters: raw pixels are all positive, so two different images of one digit
  can have a raw cosine above 0.9.

This is the data-leakage check of cleanlab's Datalab (``NearDuplicateIssueManager``, exact
and near duplicates) made independent of the model: the fingerprint does not change with the
weights, so two copies seen at different steps still match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dq_plugins.scores.neighbors import KnnGraph

NEAR_COPY_SIMILARITY = 0.995
"""Cosine similarity of centred sketches at or above which two rows are near copies."""

NEIGHBOURS = 5
"""Nearest rows searched per row for a near copy."""

EXACT, NEAR, NONE = "exact", "near", ""


@dataclass(frozen=True)
class SplitCopies:
    """Copies of one split's rows, aligned with its ``ids``.

    Attributes:
        ids: ``(M,)`` int64 sample ids.
        copy_of: ``(M,)`` int64 id of a copy within the split, -1 for none.
        copy_kind: ``(M,)`` object, "exact", "near" or "".
        copy_similarity: ``(M,)`` float64 cosine of the centred sketches to that copy (1 for an exact
            copy), NaN for none.
        train_copy_of: ``(M,)`` int64 id of a train row this row copies (held-out splits), -1 for none
            (always -1 for the train split).
        train_copy_kind: ``(M,)`` object, "exact", "near" or "".
        train_copy_similarity: ``(M,)`` float64 cosine of the centred sketches to that train row (1 for
            an exact copy), NaN for none.
    """

    ids: np.ndarray
    copy_of: np.ndarray
    copy_kind: np.ndarray
    copy_similarity: np.ndarray
    train_copy_of: np.ndarray
    train_copy_kind: np.ndarray
    train_copy_similarity: np.ndarray


def exact_copy_within(hashes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(M,)`` int64: the smallest other id sharing each row's hash, -1 when none.

    Args:
        hashes: ``(M,)`` int64 exact hashes.
        ids: ``(M,)`` unique int64 sample ids.
    """
    hashes, ids = np.asarray(hashes, dtype=np.int64), np.asarray(ids, dtype=np.int64)
    if hashes.shape != ids.shape or hashes.ndim != 1:
        raise ValueError(f"Expected `hashes` and `ids` of one shape (M,) but got {hashes.shape} and {ids.shape}.")
    out = np.full(ids.shape, -1, dtype=np.int64)
    if ids.size < 2:
        return out
    order = np.lexsort((ids, hashes))
    sorted_hash, sorted_ids = hashes[order], ids[order]
    start = np.r_[True, sorted_hash[1:] != sorted_hash[:-1]]
    group = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    size = np.diff(np.r_[first, sorted_hash.size])[group]
    smallest = sorted_ids[first][group]
    second = sorted_ids[np.minimum(first + 1, sorted_hash.size - 1)][group]
    copy = np.where(sorted_ids == smallest, second, smallest)
    out[order] = np.where(size > 1, copy, -1)
    return out


def exact_copy_in(hashes: np.ndarray, reference_hashes: np.ndarray, reference_ids: np.ndarray) -> np.ndarray:
    """``(M,)`` int64: the smallest reference id with each row's hash, -1 when none."""
    hashes = np.asarray(hashes, dtype=np.int64)
    reference_hashes = np.asarray(reference_hashes, dtype=np.int64)
    reference_ids = np.asarray(reference_ids, dtype=np.int64)
    out = np.full(hashes.shape, -1, dtype=np.int64)
    if reference_ids.size == 0 or hashes.size == 0:
        return out
    order = np.lexsort((reference_ids, reference_hashes))
    keys, values = reference_hashes[order], reference_ids[order]
    first = np.r_[True, keys[1:] != keys[:-1]]
    keys, values = keys[first], values[first]
    slot = np.minimum(np.searchsorted(keys, hashes), keys.size - 1)
    found = keys[slot] == hashes
    out[found] = values[slot[found]]
    return out


def find_copies(
    fingerprints: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    reference: str = "train",
    threshold: float = NEAR_COPY_SIMILARITY,
    neighbors: tuple[np.ndarray, KnnGraph] | None = None,
) -> dict[str, SplitCopies]:
    """Exact and near copies within every split and from every other split into ``reference``.

    Args:
        fingerprints: split -> ``(ids (M,) int64, hashes (M,) int64, sketches (M, D) float)``.
        reference: the split whose rows others may copy (leakage).
        threshold: cosine similarity of centred sketches for a near copy, in ``(0, 1]``; 1 finds exact
            copies alone (by hash).
        neighbors: ``(ids (R,), graph)``: the kNN graph of :func:`centred_sketches` searched beforehand with
            :func:`near_copy_search`'s ``k`` (e.g. by every rank of a job), for the rows ``ids`` (the ids of
            :func:`copy_splits` in order, concatenated); used when those are this search's rows, else searched.

    Returns:
        split -> :class:`SplitCopies`.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"Expected argument `threshold` to be a cosine similarity in (0, 1] but got {threshold!r}.")
    splits = copy_splits(fingerprints)
    result: dict[str, SplitCopies] = {}
    for split in splits:
        ids, hashes, _ = fingerprints[split]
        ids = np.asarray(ids, dtype=np.int64)
        within = exact_copy_within(hashes, ids)
        if split != reference and reference in fingerprints:
            ref_ids, ref_hashes, _ = fingerprints[reference]
            leaked = exact_copy_in(hashes, ref_hashes, ref_ids)
        else:
            leaked = np.full(ids.shape, -1, dtype=np.int64)
        result[split] = SplitCopies(
            ids=ids, copy_of=within, copy_kind=np.where(within >= 0, EXACT, NONE).astype(object),
            copy_similarity=np.where(within >= 0, 1.0, np.nan),
            train_copy_of=leaked, train_copy_kind=np.where(leaked >= 0, EXACT, NONE).astype(object),
            train_copy_similarity=np.where(leaked >= 0, 1.0, np.nan),
        )
    if threshold < 1.0:
        _add_near_copies(fingerprints, splits, result, reference, threshold, neighbors)
    return result


def copy_splits(fingerprints: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[str]:
    """The splits of ``fingerprints`` with rows, in order: those whose sketches the near-copy search stacks."""
    return [split for split, (ids, _, _) in fingerprints.items() if len(ids)]


def centred_sketches(fingerprints: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """``(R, D)`` float32: the sketches of :func:`copy_splits` stacked in order, minus their mean (a row equal to
    the mean gets a direction of its own, not NaN): the rows of the near-copy search."""
    sketches = np.concatenate([np.asarray(fingerprints[s][2], dtype=np.float32) for s in copy_splits(fingerprints)])
    centred = sketches - sketches.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    centred[norms <= 1e-12] = 1e-6
    return centred


def near_copy_search(num_rows: int) -> tuple[int, str]:
    """``(k, method)`` of the near-copy kNN search of ``num_rows >= 2`` rows (on CPU, seed 0)."""
    import torch

    from dq_plugins.scores.neighbors import resolve_method

    return min(NEIGHBOURS, num_rows - 1), resolve_method("auto", num_rows, torch.device("cpu"))


def _add_near_copies(fingerprints: dict, splits: list[str], result: dict[str, SplitCopies], reference: str,
                     threshold: float, given: tuple[np.ndarray, KnnGraph] | None = None) -> None:
    """Fill the rows without an exact copy from the nearest centred sketches of the union of all splits."""
    from dq_plugins.scores.neighbors import knn_cosine

    row_ids = np.concatenate([np.asarray(fingerprints[s][0], dtype=np.int64) for s in splits])
    if row_ids.size < 2:
        return
    owner = np.concatenate([np.full(len(fingerprints[s][0]), i) for i, s in enumerate(splits)])
    k, method = near_copy_search(row_ids.size)
    if given is not None and np.array_equal(given[0], row_ids) and given[1].indices.shape == (row_ids.size, k) \
            and given[1].method == method:
        neighbors, sims = given[1].indices, given[1].similarities
    else:
        neighbors, sims = knn_cosine(centred_sketches(fingerprints), k, method=method)
    valid = (neighbors >= 0) & np.isfinite(sims) & (sims >= threshold)
    ref_index = splits.index(reference) if reference in splits else -1
    offset = 0
    for index, split in enumerate(splits):
        copies = result[split]
        rows = slice(offset, offset + copies.ids.size)
        offset += copies.ids.size
        nbr, sim, ok = neighbors[rows], sims[rows], valid[rows]
        same = ok & (owner[np.maximum(nbr, 0)] == index)
        _fill(copies.copy_of, copies.copy_kind, copies.copy_similarity, same, nbr, sim, row_ids)
        if index != ref_index and ref_index >= 0:
            into = ok & (owner[np.maximum(nbr, 0)] == ref_index)
            _fill(copies.train_copy_of, copies.train_copy_kind, copies.train_copy_similarity, into, nbr, sim, row_ids)


def _fill(copy_of: np.ndarray, kind: np.ndarray, similarity: np.ndarray, allowed: np.ndarray,
          neighbors: np.ndarray, sims: np.ndarray, row_ids: np.ndarray) -> None:
    """In place: rows without a copy take their nearest allowed neighbour (a near copy)."""
    has = allowed.any(axis=1) & (copy_of < 0)
    first = np.argmax(allowed, axis=1)
    rows = np.flatnonzero(has)
    chosen = neighbors[rows, first[rows]]
    copy_of[rows] = row_ids[chosen]
    kind[rows] = NEAR
    similarity[rows] = sims[rows, first[rows]]
