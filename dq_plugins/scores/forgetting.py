"""Forgetting events: how often a sample goes from correctly to incorrectly classified.

Reference: Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural Network
Learning", ICLR 2019 (https://arxiv.org/abs/1812.05159), Section 3.
"""

from __future__ import annotations

import numpy as np

from dq_plugins.scores._common import as_dynamics, check_fraction

CORRECT_THRESHOLD = 0.5
"""An epoch counts as correct for a sample when its fraction of correct predictions is >= this."""


def _observed_and_correct(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``correct``; return the ``(E, N)`` bool masks (observed, observed and correct)."""
    hits = as_dynamics("correct", correct)
    check_fraction("correct", hits)
    observed = ~np.isnan(hits)
    with np.errstate(invalid="ignore"):
        is_correct = observed & (hits >= CORRECT_THRESHOLD)
    return observed, is_correct


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """Count the forgetting events of every sample.

    Toneva et al. 2019 call it a forgetting event when a sample that was classified correctly is
    classified incorrectly at the next presentation (``acc_t < acc_{t-1}``). Here presentations are
    recorded epochs: an epoch is correct when ``correct >= 0.5`` (:data:`CORRECT_THRESHOLD`), and
    missing epochs are skipped, i.e. transitions are counted between consecutive *observed* epochs.

    Args:
        correct: ``(E, N)`` float array in ``[0, 1]``; ``correct[e, i]`` is the fraction of correct
            predictions of sample ``i`` in epoch ``e``. NaN = not recorded at that epoch.

    Returns:
        ``(N,)`` int64 count of correct -> incorrect transitions. A sample with fewer than two
        observed epochs (in particular one never recorded) gets the neutral value 0; use
        :func:`never_learned` to tell apart samples that were never correct.

    Raises:
        ValueError: if ``correct`` is not 2-D or leaves ``[0, 1]``.
    """
    observed, is_correct = _observed_and_correct(correct)
    num_epochs, num_samples = observed.shape
    if num_epochs == 0:
        return np.zeros(num_samples, dtype=np.int64)
    # Index of the last observed epoch strictly before e (-1 when there is none).
    observed_index = np.where(observed, np.arange(num_epochs)[:, None], -1)
    last_observed = np.maximum.accumulate(observed_index, axis=0)
    previous = np.vstack([np.full((1, num_samples), -1), last_observed[:-1]])
    previous_correct = (previous >= 0) & np.take_along_axis(
        is_correct, np.maximum(previous, 0), axis=0
    )
    events = observed & ~is_correct & previous_correct
    return events.sum(axis=0).astype(np.int64)


def never_learned(correct: np.ndarray) -> np.ndarray:
    """Flag samples that were observed at least once and never classified correctly.

    Toneva et al. 2019 treat such samples as forgotten infinitely often (they rank above every
    finite count); :func:`forgetting_events` gives them 0, so they are reported by this function.

    Args:
        correct: ``(E, N)`` float array in ``[0, 1]``, as for :func:`forgetting_events`.
            NaN = not recorded at that epoch.

    Returns:
        ``(N,)`` bool; False for a sample never recorded.

    Raises:
        ValueError: if ``correct`` is not 2-D or leaves ``[0, 1]``.
    """
    observed, is_correct = _observed_and_correct(correct)
    return observed.any(axis=0) & ~is_correct.any(axis=0)
