"""Tests of dq_plugins.scores.outliers: hand-computed normalisation and planted outliers."""

from __future__ import annotations

import numpy as np
import pytest

from dq_plugins.scores.neighbors import knn_cosine
from dq_plugins.scores.outliers import OUTLIER_IQR_SCALE, is_outlier, knn_distance, outlier_score

pytestmark = pytest.mark.filterwarnings("error")


def test_hand_computed_scores() -> None:
    sims = np.array([[0.9, 0.7], [0.8, 0.8], [0.6, 0.4], [1.0, 1.0], [np.nan, 0.5]])
    # d = 1 - mean: 0.2, 0.2, 0.5, 0.0, 0.5 (NaN ignored) -> median 0.2
    np.testing.assert_allclose(knn_distance(sims), [0.2, 0.2, 0.5, 0.0, 0.5], atol=1e-12)
    # score = d / (d + 0.2): 0.5, 0.5, 0.5 / 0.7, 0, 0.5 / 0.7
    np.testing.assert_allclose(outlier_score(sims), [0.5, 0.5, 5 / 7, 0.0, 5 / 7], atol=1e-12)


def test_scale_free_and_bounded() -> None:
    rng = np.random.default_rng(0)
    distances = rng.uniform(0.0, 0.4, size=(100, 5))
    score = outlier_score(1.0 - distances)
    # the same geometry at half the spread scores the same
    np.testing.assert_allclose(outlier_score(1.0 - distances / 2), score, atol=1e-12)
    assert ((score >= 0.0) & (score < 1.0)).all()


def test_mostly_exact_duplicates_use_the_positive_median() -> None:
    sims = np.array([[1.0], [1.0], [1.0], [0.9], [0.7]])
    # d = 0, 0, 0, 0.1, 0.3; median 0 -> median of positives 0.2
    np.testing.assert_allclose(outlier_score(sims), [0.0, 0.0, 0.0, 1 / 3, 0.6], atol=1e-12)
    assert np.isnan(outlier_score(np.array([[np.nan, np.nan]]))[0])


def test_planted_outliers_rank_first_and_are_flagged() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 32)) * 3
    x = centres[rng.integers(0, 5, 500)] + rng.normal(size=(500, 32))
    planted = np.array([13, 77, 250, 499])
    x[planted] = rng.normal(size=(4, 32)) * 6  # far from every blob and from each other
    _, sims = knn_cosine(x, 10)
    score = outlier_score(sims)
    assert set(np.argsort(-score)[:4]) == set(planted)
    flags = is_outlier(sims)
    assert flags[planted].all()
    assert flags.sum() <= 20  # the IQR fence also takes a few percent of the natural tail


def test_iqr_rule_hand_computed() -> None:
    # d = 0.1 x 7 and 0.1, 0.2, 0.9: Q1 = 0.1, Q3 = 0.1 -> fence 0.1; only 0.2 and 0.9 exceed it
    distances = np.array([0.1] * 8 + [0.2, 0.9])
    flags = is_outlier((1.0 - distances)[:, None])
    np.testing.assert_array_equal(np.flatnonzero(flags), [8, 9])
    assert OUTLIER_IQR_SCALE == pytest.approx(1.7, abs=1e-3)
    assert not is_outlier(np.array([[0.1], [0.9], [0.5]])).any()  # fewer than 4 rows: no fence


def test_rejects_one_dimensional_input() -> None:
    with pytest.raises(ValueError, match=r"`similarities` to be 2-D of shape \(N, k\) but got shape \(3,\)"):
        outlier_score(np.zeros(3))
