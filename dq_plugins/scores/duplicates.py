"""Near-duplicates in embedding space, and near-duplicate pairs whose labels conflict.

Reference: cleanlab's ``NearDuplicateIssueManager`` (``cleanlab/datalab/internal/issue_manager/
duplicate.py``, cleanlab 2.9), which flags a sample whose nearest neighbour lies closer than
``0.13 x`` the median nearest-neighbour distance of the dataset. Here a pair counts when it is
both close in absolute terms and exceptionally close for its neighbourhood:

- cosine similarity ``>= NEAR_DUPLICATE_SIMILARITY`` (reads the same on every dataset), and
- the nearest neighbour's cosine distance at most :data:`NEAR_DUPLICATE_RELATIVE` times the
  distance to the sample's k-th neighbour: a copy sits much closer than everything else around it.

The second condition is what a classifier's own embedding needs: fine-tuning collapses each class
towards a point (on TREC-6 with MiniLM, 1,454 of 1,500 head inputs had a neighbour at cosine
>= 0.98 after 3 epochs, none of them a textual copy). Inside such a blob every neighbour is
equally close, so no pair stands out; a global relative threshold (cleanlab's) fails there too
when only part of the data collapses (the median distance then comes from the rest).
Embeddings identical up to storage rounding (distance <= :data:`IDENTICAL_DISTANCE`) are copies
whatever their neighbourhood, so a group of more than k copies is still found.

A pair of near-duplicates with different labels cannot both be labelled right (or the classes
overlap there): :func:`conflicting_duplicates` reports both members as label issues.
"""

from __future__ import annotations

import numpy as np

NEAR_DUPLICATE_SIMILARITY = 0.98
"""Cosine similarity at or above which the nearest neighbour counts as a near-duplicate.

For sentence embeddings (MiniLM, 384-d) 0.98 separates copies that differ by case, punctuation
or a word from paraphrases (typically 0.85 to 0.95); exact copies score 1.0 up to rounding
(fp16 storage: ~1e-3).
"""

NEAR_DUPLICATE_RELATIVE = 0.05
"""Largest ratio of the nearest neighbour's cosine distance to the k-th neighbour's for a near-duplicate.

A pair of copies in a pretrained sentence embedding sits at distance ~0.001-0.02 with the 10th
neighbour at 0.3-0.6 (ratio <= 0.05); inside a fine-tuned class blob the ratio's 1st percentile
was 0.10 (TREC-6, MiniLM, 1,200 blob members, k = 10).
"""

IDENTICAL_DISTANCE = 1e-5
"""Cosine distance at or below which two embeddings are the same vector (fp16 storage rounding
and fp32 dot products stay below 1e-6; a fine-tuned blob's closest pairs were at 2e-4)."""

TIE_TOLERANCE = 1e-6
"""Neighbours whose similarity is within this of the best are ties; the smallest id wins."""


def _check_ids(ids: np.ndarray, num_samples: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (num_samples,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"Expected argument `ids` to be a 1-D integer array of length N = {num_samples} but got"
            f" shape {ids.shape} and dtype {ids.dtype}."
        )
    if np.any(ids < 0):
        raise ValueError(f"Expected argument `ids` to be non-negative (-1 means 'none') but found {int(ids.min())}.")
    return ids.astype(np.int64, copy=False)


def near_duplicate_of(
    neighbor_indices: np.ndarray,
    similarities: np.ndarray,
    ids: np.ndarray,
    threshold: float = NEAR_DUPLICATE_SIMILARITY,
    relative: float = NEAR_DUPLICATE_RELATIVE,
) -> np.ndarray:
    """The id of each sample's nearest neighbour when it is a near-duplicate (see the module docstring).

    A near-duplicate: cosine similarity ``>= threshold`` and cosine distance ``<= relative x`` the
    distance to the farthest of the ``k`` neighbours given (not checked for a row with a single
    neighbour), or distance ``<= IDENTICAL_DISTANCE``.

    Among neighbours tied with the nearest (within :data:`TIE_TOLERANCE`), the smallest id is
    returned, so every member of a group of exact copies points at the same representative and the
    result does not depend on the order the search returned ties in (that representative points
    at the second smallest id).

    Args:
        neighbor_indices: ``(N, k)`` row positions, nearest first (``knn_cosine``); -1 = missing.
        similarities: ``(N, k)`` cosine similarities aligned with ``neighbor_indices``.
        ids: ``(N,)`` non-negative sample ids, indexed by row position.
        threshold: cosine similarity in ``[-1, 1]``.
        relative: ratio in ``[0, 1]``; 1 keeps the absolute threshold alone.

    Returns:
        ``(N,)`` int64: a sample id, or -1 where the nearest neighbour is not a near-duplicate.
    """
    neighbors = np.asarray(neighbor_indices)
    sims = np.asarray(similarities, dtype=np.float64)
    if neighbors.ndim != 2 or sims.shape != neighbors.shape:
        raise ValueError(
            "Expected `neighbor_indices` and `similarities` to be 2-D arrays of the same shape (N, k)"
            f" but got {neighbors.shape} and {sims.shape}."
        )
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"Expected argument `threshold` to be a cosine similarity in [-1, 1] but got {threshold!r}.")
    if not 0.0 <= relative <= 1.0:
        raise ValueError(f"Expected argument `relative` to be a ratio of distances in [0, 1] but got {relative!r}.")
    ids = _check_ids(ids, neighbors.shape[0])
    if neighbors.shape[1] == 0:
        return np.full(neighbors.shape[0], -1, dtype=np.int64)
    present = (neighbors >= 0) & ~np.isnan(sims)
    sims = np.where(present, sims, -np.inf)
    best = sims.max(axis=1)
    neighbor_ids = np.where(present, ids[np.where(present, neighbors, 0)], np.iinfo(np.int64).max)
    tied = sims >= (best - TIE_TOLERANCE)[:, None]
    chosen = np.where(tied, neighbor_ids, np.iinfo(np.int64).max).min(axis=1)
    farthest = np.where(present, sims, np.inf).min(axis=1)
    nearest_distance, kth_distance = 1.0 - best, 1.0 - farthest
    # one neighbour is no neighbourhood to compare with: the absolute threshold decides alone
    stands_out = (nearest_distance <= relative * kth_distance) | (present.sum(axis=1) < 2)
    duplicate = (best >= threshold) & stands_out
    duplicate |= nearest_distance <= IDENTICAL_DISTANCE
    return np.where(duplicate, chosen, -1).astype(np.int64)


def near_duplicate_score(similarities: np.ndarray) -> np.ndarray:
    """``(N,)`` float64: the cosine similarity to the nearest neighbour (higher: more of a copy).

    The score of the near-duplicate issue type: :func:`near_duplicate_of` flags a row when this
    reaches the threshold and its neighbourhood agrees. NaN for a row without a neighbour.

    Args:
        similarities: ``(N, k)`` cosine similarities (``knn_cosine``); NaN = missing neighbour.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.ndim != 2:
        raise ValueError(f"Expected argument `similarities` to be 2-D of shape (N, k) but got shape {sims.shape}.")
    if sims.shape[1] == 0:
        return np.full(sims.shape[0], np.nan)
    with np.errstate(invalid="ignore"):
        best = np.where(np.isnan(sims), -np.inf, sims).max(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def _conflicting_pairs(near_dup_of: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(rows, partners)`` of the near-duplicate pairs whose labels differ (checked inputs)."""
    near_dup_of = np.asarray(near_dup_of)
    labels = np.asarray(labels)
    ids = _check_ids(ids, near_dup_of.shape[0])
    if labels.shape != near_dup_of.shape:
        raise ValueError(
            f"Expected `labels` and `near_dup_of` to have the same shape but got {labels.shape} and"
            f" {near_dup_of.shape}."
        )
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if sorted_ids.size > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise ValueError("Expected argument `ids` to be unique but found repeated ids.")
    rows = np.flatnonzero(near_dup_of >= 0)
    slots = np.searchsorted(sorted_ids, near_dup_of[rows])
    in_range = np.minimum(slots, max(sorted_ids.size - 1, 0))
    found = (slots < sorted_ids.size) & (sorted_ids[in_range] == near_dup_of[rows])
    rows, partners = rows[found], order[slots[found]]
    conflict = labels[rows] != labels[partners]
    return rows[conflict], partners[conflict]


def conflicting_duplicates(near_dup_of: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: True for both members of every near-duplicate pair whose labels differ.

    Row ``i`` with ``near_dup_of[i] = j_id != -1`` and ``labels[i] != label of j_id`` marks ``i`` and
    the row of ``j_id``. A ``j_id`` that is not among ``ids`` (its sample was scored elsewhere) is
    ignored.

    Args:
        near_dup_of: ``(N,)`` int64 from :func:`near_duplicate_of`.
        labels: ``(N,)`` integer given labels.
        ids: ``(N,)`` unique sample ids, aligned with the two above.
    """
    rows, partners = _conflicting_pairs(near_dup_of, labels, ids)
    flags = np.zeros(np.shape(near_dup_of), dtype=bool)
    flags[rows] = True
    flags[partners] = True
    return flags


def conflicting_duplicate_score(
    near_dup_of: np.ndarray, nearest_similarity: np.ndarray, labels: np.ndarray, ids: np.ndarray
) -> np.ndarray:
    """``(N,)`` float64 in [0, 1]: how close the conflicting near-duplicate pair of each row is.

    Both members of a pair found by :func:`conflicting_duplicates` score the pair's cosine similarity
    (``nearest_similarity`` of the row that points at the other, clipped to [0, 1]; the highest when a
    row is in several pairs); every other row scores 0. Higher: the two labels are more surely
    given to the same content.

    Args:
        near_dup_of: ``(N,)`` int64 from :func:`near_duplicate_of`.
        nearest_similarity: ``(N,)`` cosine similarity to the nearest neighbour (:func:`near_duplicate_score`).
        labels: ``(N,)`` integer given labels.
        ids: ``(N,)`` unique sample ids, aligned with the others.
    """
    similarity = np.asarray(nearest_similarity, dtype=np.float64)
    if similarity.shape != np.shape(near_dup_of):
        raise ValueError(
            f"Expected `nearest_similarity` and `near_dup_of` to have the same shape but got {similarity.shape} "
            f"and {np.shape(near_dup_of)}."
        )
    rows, partners = _conflicting_pairs(near_dup_of, labels, ids)
    pair = np.clip(np.nan_to_num(similarity[rows], nan=0.0), 0.0, 1.0)
    score = np.zeros(similarity.shape, dtype=np.float64)
    np.maximum.at(score, rows, pair)
    np.maximum.at(score, partners, pair)
    return score
