"""Tests of dq_plugins.scores.cartography against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from dq_plugins.scores import CartographyScores, cartography

pytestmark = pytest.mark.filterwarnings("error")

NAN = np.nan


def test_hand_computed_with_missing_epochs() -> None:
    # E = 3 epochs, N = 3 samples; sample 2 is never recorded.
    prob_given = np.array(
        [
            [0.2, 0.9, NAN],
            [0.6, 0.7, NAN],
            [NAN, 0.8, NAN],
        ]
    )
    correct = np.array(
        [
            [0.0, 1.0, NAN],
            [1.0, 0.5, NAN],
            [NAN, 1.0, NAN],
        ]
    )
    scores = cartography(prob_given, correct)
    # sample 0: mean(0.2, 0.6) = 0.4; deviations +-0.2 -> var 0.04 -> std 0.2
    # sample 1: mean(0.9, 0.7, 0.8) = 0.8; deviations 0.1, -0.1, 0 -> var 0.02 / 3 -> std 0.0816497
    np.testing.assert_allclose(scores.confidence, [0.4, 0.8, NAN])
    np.testing.assert_allclose(scores.variability, [0.2, 0.08164966, NAN], rtol=1e-6)
    # correctness: sample 0 (0 + 1) / 2 = 0.5; sample 1 (1 + 0.5 + 1) / 3 = 0.8333333
    np.testing.assert_allclose(scores.correctness, [0.5, 0.83333333, NAN], rtol=1e-6)


def test_output_types_from_float32() -> None:
    prob_given = np.array([[0.25, 0.5], [0.75, 0.5]], dtype=np.float32)
    correct = np.array([[0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    scores = cartography(prob_given, correct)
    assert isinstance(scores, CartographyScores)
    for field in (scores.confidence, scores.variability, scores.correctness):
        assert field.dtype == np.float64
        assert field.shape == (2,)
    # sample 0: mean(0.25, 0.75) = 0.5, std 0.25 (ddof=0, not 0.3536 of ddof=1)
    np.testing.assert_allclose(scores.confidence, [0.5, 0.5])
    np.testing.assert_allclose(scores.variability, [0.25, 0.0])
    np.testing.assert_allclose(scores.correctness, [0.5, 1.0])


def test_one_epoch_has_zero_variability() -> None:
    scores = cartography(np.array([[0.3, 0.9]]), np.array([[0.0, 1.0]]))
    np.testing.assert_allclose(scores.confidence, [0.3, 0.9])
    np.testing.assert_array_equal(scores.variability, [0.0, 0.0])
    np.testing.assert_array_equal(scores.correctness, [0.0, 1.0])


def test_all_missing_and_no_epoch_give_nan() -> None:
    all_missing = np.full((4, 3), NAN)
    scores = cartography(all_missing, all_missing)
    assert np.isnan(scores.confidence).all()
    assert np.isnan(scores.variability).all()
    assert np.isnan(scores.correctness).all()

    no_epoch = np.empty((0, 2))
    scores = cartography(no_epoch, no_epoch)
    assert scores.confidence.shape == (2,)
    assert np.isnan(scores.confidence).all()


def test_scores_are_frozen() -> None:
    scores = cartography(np.array([[0.5]]), np.array([[1.0]]))
    with pytest.raises(AttributeError):
        scores.confidence = np.zeros(1)  # type: ignore[misc]


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"`prob_given` to be a 2-D array .* got shape \(3,\)"):
        cartography(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"`prob_given` and `correct` to have the same shape"):
        cartography(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"`correct` to hold fractions in \[0, 1\] .* found 2\.0"):
        cartography(np.zeros((1, 2)), np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"`correct` to have a real numeric dtype"):
        cartography(np.zeros((1, 2)), np.array([["a", "b"]]))
