"""Tests of dq_plugins.scores.aum against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from dq_plugins.scores import area_under_margin

pytestmark = pytest.mark.filterwarnings("error")

NAN = np.nan


def test_hand_computed_with_missing_epochs() -> None:
    margin = np.array(
        [
            [2.0, -1.0, NAN],
            [1.0, NAN, NAN],
            [0.0, -3.0, NAN],
        ],
        dtype=np.float32,
    )
    aum = area_under_margin(margin)
    # sample 0: (2 + 1 + 0) / 3 = 1; sample 1: (-1 - 3) / 2 = -2; sample 2: never recorded
    np.testing.assert_allclose(aum, [1.0, -2.0, NAN])
    assert aum.dtype == np.float64
    assert aum.shape == (3,)


def test_one_epoch_is_the_margin_itself() -> None:
    np.testing.assert_allclose(area_under_margin(np.array([[0.5, -4.0]])), [0.5, -4.0])


def test_all_missing_and_no_epoch_give_nan() -> None:
    assert np.isnan(area_under_margin(np.full((3, 2), NAN))).all()
    result = area_under_margin(np.empty((0, 4)))
    assert result.shape == (4,)
    assert np.isnan(result).all()


def test_rejects_non_2d_margin() -> None:
    with pytest.raises(ValueError, match=r"`margin` to be a 2-D array .* got shape \(1, 2, 3\)"):
        area_under_margin(np.zeros((1, 2, 3)))
