"""Tests of dq_plugins.scores.el2n against hand-computed cases and full probability vectors."""

from __future__ import annotations

import numpy as np
import pytest

from dq_plugins.scores import default_early_epochs, el2n

pytestmark = pytest.mark.filterwarnings("error")

NAN = np.nan


def test_hand_computed_with_missing_and_late_epochs() -> None:
    # Sample 0, given label 0: epoch 0 p = (0.7, 0.2, 0.1), epoch 1 p = (0.5, 0.5, 0.0).
    # Sample 1: perfect prediction at epoch 0, not recorded at epoch 1.
    # Sample 2: p_y = 1 with sum p_k^2 rounded just below 1 -> negative square, clipped to 0.
    # Sample 3: recorded only at epoch 2, which lies after the early window.
    prob_given = np.array(
        [
            [0.7, 1.0, 1.0, NAN],
            [0.5, NAN, 1.0, NAN],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    prob_sq_sum = np.array(
        [
            [0.54, 1.0, 1.0 - 1e-9, NAN],
            [0.5, NAN, 1.0 - 1e-9, NAN],
            [1.0, 1.0, 1.0, 1.0],
        ]
    )
    scores = el2n(prob_given, prob_sq_sum, early_epochs=2)
    # sample 0: epoch 0: 0.54 - 1.4 + 1 = 0.14 -> 0.3741657; epoch 1: 0.5 - 1 + 1 = 0.5 -> 0.7071068
    #           mean = 0.5406363
    # sample 1: epoch 0: 1 - 2 + 1 = 0 -> 0; epoch 1 missing -> 0
    # sample 2: -1e-9 clipped to 0 -> 0 (no NaN from sqrt of a negative)
    # sample 3: nothing recorded in epochs 0..1 -> NaN
    np.testing.assert_allclose(scores, [0.5406363, 0.0, 0.0, NAN], rtol=1e-6)
    assert scores.dtype == np.float64
    assert scores.shape == (4,)


def test_late_epochs_count_when_window_covers_them() -> None:
    prob_given = np.array([[0.5], [0.0]])
    prob_sq_sum = np.array([[0.5], [1.0]])
    # epoch 0: 0.5 - 1 + 1 = 0.5 -> 0.7071068; epoch 1: 1 - 0 + 1 = 2 -> 1.4142136
    first = el2n(prob_given, prob_sq_sum, early_epochs=1)
    np.testing.assert_allclose(first, [0.7071068], rtol=1e-6)
    # mean(0.7071068, 1.4142136) = 1.0606602; a window longer than E uses every row
    both = el2n(prob_given, prob_sq_sum, early_epochs=2)
    np.testing.assert_allclose(both, [1.0606602], rtol=1e-6)
    beyond = el2n(prob_given, prob_sq_sum, early_epochs=9)
    np.testing.assert_allclose(beyond, [1.0606602], rtol=1e-6)


def test_matches_norm_of_full_probability_vectors() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    labels = rng.integers(0, 5, size=50)
    onehot = np.eye(5)[labels]
    expected = np.linalg.norm(probs - onehot, axis=-1)[:2].mean(axis=0)
    prob_given = np.take_along_axis(probs, labels[None, :, None], axis=-1)[..., 0]
    prob_sq_sum = (probs**2).sum(axis=-1)
    result = el2n(prob_given.astype(np.float32), prob_sq_sum.astype(np.float32), early_epochs=2)
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_all_missing_gives_nan() -> None:
    missing = np.full((3, 2), NAN)
    assert np.isnan(el2n(missing, missing, early_epochs=1)).all()


@pytest.mark.parametrize(
    ("num_epochs", "expected"),
    # ceil(0.2 * n), at least 1; 15 -> 3 even though 0.2 * 15 = 3.0000000000000004 in floats
    [(0, 1), (1, 1), (4, 1), (5, 1), (6, 2), (10, 2), (15, 3), (100, 20), (101, 21)],
)
def test_default_early_epochs(num_epochs: int, expected: int) -> None:
    assert default_early_epochs(num_epochs) == expected


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`num_epochs` to be a non-negative integer but got -1"):
        default_early_epochs(-1)
    with pytest.raises(ValueError, match=r"`num_epochs` to be a non-negative integer but got 2\.5"):
        default_early_epochs(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`early_epochs` to be a positive integer but got 0"):
        el2n(np.zeros((2, 2)), np.zeros((2, 2)), early_epochs=0)
    with pytest.raises(ValueError, match=r"`prob_given` and `prob_sq_sum` to have the same shape"):
        el2n(np.zeros((2, 2)), np.zeros((2, 3)), early_epochs=1)
    with pytest.raises(ValueError, match=r"`prob_sq_sum` to be a 2-D array"):
        el2n(np.zeros((2, 2)), np.zeros(2), early_epochs=1)
