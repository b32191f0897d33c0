"""Tests of dq_plugins.scores.duplicates: planted exact / near duplicates and label conflicts."""

from __future__ import annotations

import numpy as np
import pytest

from dq_plugins.scores.duplicates import (
    NEAR_DUPLICATE_SIMILARITY,
    conflicting_duplicate_score,
    conflicting_duplicates,
    near_duplicate_of,
    near_duplicate_score,
)
from dq_plugins.scores.neighbors import knn_cosine

pytestmark = pytest.mark.filterwarnings("error")


def test_hand_computed() -> None:
    neighbors = np.array([[1, 2], [0, 2], [0, 1], [2, -1]])
    sims = np.array([[0.99, 0.5], [0.99, 0.4], [0.97, 0.5], [0.985, np.nan]])
    ids = np.array([10, 11, 12, 13])
    np.testing.assert_array_equal(near_duplicate_of(neighbors, sims, ids), [11, 10, -1, 12])
    np.testing.assert_array_equal(near_duplicate_of(neighbors, sims, ids, threshold=0.96, relative=1.0), [11, 10, 10, 12])
    # at relative 0.05 row 2 (distance 0.03 against 0.5 at its 2nd neighbour: 0.06) does not stand out
    np.testing.assert_array_equal(near_duplicate_of(neighbors, sims, ids, threshold=0.96), [11, 10, -1, 12])
    labels = np.array([0, 0, 1, 2])
    # 10 <-> 11 agree; 13 -> 12 with labels 2 vs 1: both 13 and 12 conflict
    np.testing.assert_array_equal(
        conflicting_duplicates(np.array([11, 10, -1, 12]), labels, ids), [False, False, True, True]
    )
    assert NEAR_DUPLICATE_SIMILARITY == 0.98


def test_scores_hand_computed() -> None:
    """near_duplicate_score: the best similarity of each row; conflicting_duplicate_score: the similarity
    of a conflicting pair on both members, 0 elsewhere."""
    sims = np.array([[0.99, 0.5], [0.99, 0.4], [0.97, 0.5], [0.985, np.nan], [np.nan, np.nan]])
    np.testing.assert_allclose(near_duplicate_score(sims), [0.99, 0.99, 0.97, 0.985, np.nan])
    ids = np.array([10, 11, 12, 13, 14])
    labels = np.array([0, 0, 1, 2, 0])
    near = np.array([11, 10, -1, 12, -1])
    score = conflicting_duplicate_score(near, near_duplicate_score(sims), labels, ids)
    # 10 <-> 11 agree (0); 13 -> 12 conflict at similarity 0.985, given to 13 and to its partner 12
    np.testing.assert_allclose(score, [0.0, 0.0, 0.985, 0.985, 0.0])
    assert ((score > 0) == conflicting_duplicates(near, labels, ids)).all()
    with pytest.raises(ValueError, match=r"`nearest_similarity` and `near_dup_of` to have the same shape"):
        conflicting_duplicate_score(near, np.zeros(3), labels, ids)


def test_a_pair_must_stand_out_from_its_neighbourhood() -> None:
    """Fine-tuned class blobs: every neighbour at cosine >= 0.98, none a copy; a copy is far closer
    than the rest of its neighbours; identical vectors count whatever surrounds them."""
    neighbors = np.array([[1, 2, 3], [0, 2, 3], [3, 0, 1], [2, 0, 1]])
    sims = np.array([[0.995, 0.99, 0.985], [0.995, 0.99, 0.985], [0.9995, 0.6, 0.5], [0.9995, 0.6, 0.5]])
    ids = np.arange(4)
    # rows 0, 1: distance 0.005 against 0.015 at the 3rd neighbour (ratio 0.33): a blob, not copies
    np.testing.assert_array_equal(near_duplicate_of(neighbors, sims, ids), [-1, -1, 3, 2])
    np.testing.assert_array_equal(near_duplicate_of(neighbors, sims, ids, relative=1.0), [1, 0, 3, 2])
    identical = np.array([[1 - 1e-7, 1 - 2e-7, 1 - 3e-7]] * 4)
    np.testing.assert_array_equal(near_duplicate_of(neighbors, identical, ids), [1, 0, 0, 0])
    with pytest.raises(ValueError, match=r"`relative` to be a ratio of distances in \[0, 1\] but got 2"):
        near_duplicate_of(neighbors, sims, ids, relative=2)


def test_ties_point_to_the_smallest_id() -> None:
    neighbors = np.array([[1, 2], [2, 0], [1, 0]])
    sims = np.ones((3, 2))
    ids = np.array([7, 5, 9])
    # row 0 (id 7): ties 5 and 9 -> 5; row 1 (id 5): ties 9, 7 -> 7; row 2 (id 9): 5
    np.testing.assert_array_equal(near_duplicate_of(neighbors, sims, ids), [5, 7, 5])


def test_planted_duplicates_are_found() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 48))
    x[100] = x[3]  # exact copy
    x[200] = x[50] + 0.01 * rng.normal(size=48)  # near copy (cosine ~ 0.9999)
    x[201] = x[60] * 3.0  # same direction, other scale: cosine 1
    labels = rng.integers(0, 3, 300)
    labels[100] = labels[3]
    labels[200] = (labels[50] + 1) % 3  # conflicting pair
    labels[201] = labels[60]
    ids = np.arange(300) + 1000
    indices, sims = knn_cosine(x.astype(np.float16), 5)
    dup = near_duplicate_of(indices, sims, ids)
    expected = {3: 1100, 100: 1003, 50: 1200, 200: 1050, 60: 1201, 201: 1060}
    assert {int(i): int(dup[i]) for i in np.flatnonzero(dup >= 0)} == expected
    conflict = conflicting_duplicates(dup, labels, ids)
    assert set(np.flatnonzero(conflict)) == {50, 200}


def test_partner_outside_ids_is_ignored() -> None:
    flags = conflicting_duplicates(np.array([99, -1]), np.array([0, 1]), np.array([1, 2]))
    np.testing.assert_array_equal(flags, [False, False])


def test_rejects_bad_inputs() -> None:
    neighbors, sims = np.zeros((2, 1), dtype=np.int64), np.ones((2, 1))
    with pytest.raises(ValueError, match=r"same shape \(N, k\) but got \(2, 1\) and \(2, 2\)"):
        near_duplicate_of(neighbors, np.ones((2, 2)), np.arange(2))
    with pytest.raises(ValueError, match=r"`threshold` to be a cosine similarity in \[-1, 1\] but got 1.5"):
        near_duplicate_of(neighbors, sims, np.arange(2), threshold=1.5)
    with pytest.raises(ValueError, match=r"`ids` to be a 1-D integer array of length N = 2"):
        near_duplicate_of(neighbors, sims, np.arange(3))
    with pytest.raises(ValueError, match=r"`ids` to be non-negative .* found -4"):
        near_duplicate_of(neighbors, sims, np.array([0, -4]))
    with pytest.raises(ValueError, match=r"`ids` to be unique"):
        conflicting_duplicates(np.array([-1, -1]), np.array([0, 1]), np.array([3, 3]))
    with pytest.raises(ValueError, match=r"`labels` and `near_dup_of` to have the same shape"):
        conflicting_duplicates(np.array([-1, -1]), np.array([0]), np.array([3, 4]))


def test_a_collapsed_class_blob_is_not_a_pile_of_duplicates() -> None:
    """What a fine-tuned classifier's embedding looks like: one class squeezed around a point
    (every pair at cosine > 0.99), the other spread; copies planted in the spread part are found,
    the blob yields none, and a copy inside the blob is found only when its vector is identical."""
    rng = np.random.default_rng(1)
    centre = rng.normal(size=64)
    blob = centre + 0.02 * rng.normal(size=(200, 64))
    spread = rng.normal(size=(200, 64))
    x = np.concatenate([blob, spread])
    x[390:400] = x[300:310] + 1e-3 * rng.normal(size=(10, 64))  # ten near-copies in the spread part
    x[199] = x[0]  # one identical copy inside the blob
    indices, sims = knn_cosine(x.astype(np.float32), 10)
    assert np.median(sims[:200, 0]) > 0.99  # the blob alone would pass any absolute threshold
    dup = near_duplicate_of(indices, sims, np.arange(400))
    flagged = set(np.flatnonzero(dup >= 0).tolist())
    assert flagged == {0, 199, *range(300, 310), *range(390, 400)}
    assert (near_duplicate_of(indices, sims, np.arange(400), relative=1.0)[:200] >= 0).sum() > 150
