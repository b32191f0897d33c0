"""Tests of dq_plugins.scores.forgetting against hand-computed cases and a loop reference."""

from __future__ import annotations

import numpy as np
import pytest

from dq_plugins.scores import forgetting_events, never_learned

pytestmark = pytest.mark.filterwarnings("error")

NAN = np.nan

# Columns are samples, rows are recorded epochs.
CORRECT = np.array(
    [
        # s0   s1   s2    s3   s4   s5   s6
        [1.0, 1.0, 0.6, 0.0, NAN, 0.0, NAN],
        [0.0, NAN, 0.4, 0.0, NAN, 1.0, NAN],
        [1.0, 0.0, 0.5, 0.0, NAN, 1.0, 0.0],
        [0.0, NAN, 0.49, 0.0, NAN, 1.0, NAN],
        [NAN, 1.0, NAN, 0.0, NAN, 1.0, 0.0],
        [0.0, 0.0, NAN, 0.0, NAN, 1.0, NAN],
    ]
)


def test_forgetting_events_hand_computed() -> None:
    events = forgetting_events(CORRECT)
    # s0: 1->0 (e1), 1->0 (e3); e5 follows observed e3 which was already 0 -> 2
    # s1: observed 1, 0, 1, 0 (skipping NaN) -> 1->0 at e2 and e5 -> 2
    # s2: 0.6 C, 0.4 I, 0.5 C (>= 0.5), 0.49 I -> 2
    # s3: never correct -> 0; s4: never recorded -> 0; s5: learned, never forgotten -> 0
    # s6: observed 0, 0 -> 0
    np.testing.assert_array_equal(events, [2, 2, 2, 0, 0, 0, 0])
    assert events.dtype == np.int64
    assert events.shape == (7,)


def test_never_learned_hand_computed() -> None:
    flags = never_learned(CORRECT)
    # s3 and s6 observed and never >= 0.5; s4 is never observed so it is not flagged
    np.testing.assert_array_equal(flags, [False, False, False, True, False, False, True])
    assert flags.dtype == np.bool_


def test_one_epoch_has_no_events() -> None:
    correct = np.array([[1.0, 0.0, NAN]], dtype=np.float32)
    np.testing.assert_array_equal(forgetting_events(correct), [0, 0, 0])
    np.testing.assert_array_equal(never_learned(correct), [False, True, False])


def test_all_missing_and_no_epoch_give_neutral_values() -> None:
    all_missing = np.full((3, 2), NAN)
    np.testing.assert_array_equal(forgetting_events(all_missing), [0, 0])
    np.testing.assert_array_equal(never_learned(all_missing), [False, False])
    no_epoch = np.empty((0, 2))
    np.testing.assert_array_equal(forgetting_events(no_epoch), [0, 0])
    assert forgetting_events(no_epoch).dtype == np.int64
    np.testing.assert_array_equal(never_learned(no_epoch), [False, False])


def _reference_forgetting(correct: np.ndarray) -> np.ndarray:
    """Plain loop over the observed epochs of each sample."""
    counts = []
    for column in correct.T:
        observed = [value >= 0.5 for value in column if not np.isnan(value)]
        counts.append(sum(prev and not cur for prev, cur in zip(observed, observed[1:])))
    return np.array(counts)


def test_matches_loop_reference_on_random_input() -> None:
    rng = np.random.default_rng(0)
    correct = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=(12, 300))
    correct[rng.random(correct.shape) < 0.3] = NAN
    np.testing.assert_array_equal(forgetting_events(correct), _reference_forgetting(correct))


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"`correct` to be a 2-D array"):
        forgetting_events(np.zeros(4))
    with pytest.raises(ValueError, match=r"`correct` to hold fractions in \[0, 1\] .* found -1\.0"):
        never_learned(np.array([[0.0, -1.0]]))
