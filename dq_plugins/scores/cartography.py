"""Dataset Cartography: confidence, variability and correctness of each sample over training.

Reference: Swayamdipta et al., "Dataset Cartography: Mapping and Diagnosing Datasets with
Training Dynamics", EMNLP 2020 (https://arxiv.org/abs/2009.10795), Section 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dq_plugins.scores._common import as_dynamics, check_fraction, check_same_shape, nanmean_epochs


@dataclass(frozen=True)
class CartographyScores:
    """Per-sample cartography coordinates, each of shape ``(N,)`` and dtype float64.

    Attributes:
        confidence: mean over recorded epochs of the probability of the given label.
        variability: population standard deviation (``ddof=0``) of that probability over epochs.
        correctness: mean over recorded epochs of the fraction of correct predictions.

    A sample never recorded has NaN in all three.
    """

    confidence: np.ndarray
    variability: np.ndarray
    correctness: np.ndarray


def cartography(prob_given: np.ndarray, correct: np.ndarray) -> CartographyScores:
    """Compute the Dataset Cartography coordinates of every sample.

    Swayamdipta et al. 2020 define, over the ``E`` epochs of training, the *confidence*
    ``mean_e p_e(y_i | x_i)``, the *variability* ``sqrt(mean_e (p_e(y_i | x_i) - confidence)^2)``
    (population std, ``ddof=0``, as in the paper's Eq. 2) and the *correctness* (fraction of epochs
    in which the sample was predicted correctly).

    Args:
        prob_given: ``(E, N)`` float array; ``prob_given[e, i]`` is the model probability of the
            given label of sample ``i`` at recorded epoch ``e``. NaN = not recorded at that epoch.
        correct: ``(E, N)`` float array in ``[0, 1]``; ``correct[e, i]`` is the fraction of correct
            predictions of sample ``i`` in epoch ``e`` (fractional when it was seen several times
            in the epoch). NaN = not recorded at that epoch.

    Returns:
        :class:`CartographyScores`, each field ``(N,)`` float64. Epochs where a sample is NaN are
        ignored; a sample with every epoch NaN gets NaN. With one observed epoch the variability
        is 0.

    Raises:
        ValueError: if an input is not 2-D, the shapes differ, or ``correct`` leaves ``[0, 1]``.
    """
    prob = as_dynamics("prob_given", prob_given)
    hits = as_dynamics("correct", correct)
    check_same_shape(("prob_given", prob), ("correct", hits))
    check_fraction("correct", hits)

    confidence = nanmean_epochs(prob)
    variability = np.sqrt(nanmean_epochs((prob - confidence) ** 2))
    correctness = nanmean_epochs(hits)
    return CartographyScores(
        confidence=confidence, variability=variability, correctness=correctness
    )
