"""EL2N: the L2 norm of the error vector early in training.

Reference: Paul, Ganguli and Dziugaite, "Deep Learning on a Data Diet: Finding Important Examples
Early in Training", NeurIPS 2021 (https://arxiv.org/abs/2107.07075), Section 2, Definition 2.
"""

from __future__ import annotations

import numpy as np

from dq_plugins.scores._common import as_dynamics, check_same_shape, nanmean_epochs

EARLY_FRACTION_DENOMINATOR = 5
""":func:`default_early_epochs` keeps the first ``1 / 5`` (20 %) of the epochs."""


def _is_integer(value: object) -> bool:
    """True for Python and numpy integers, False for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def default_early_epochs(num_epochs: int) -> int:
    """Number of leading epochs to average EL2N over: ``max(1, ceil(0.2 * num_epochs))``.

    Paul et al. 2021 score samples *early* in training (e.g. epoch 20 of 200 on CIFAR-10), before
    the network memorises the training set: later, the error of every sample, mislabeled ones
    included, tends to zero and the score stops separating easy from hard or noisy samples. The
    first 20 % of the epochs covers that early phase, and averaging over several epochs reduces the
    single-run noise that the paper removes by averaging over independent initialisations.

    Args:
        num_epochs: number of epochs of the run (planned or recorded), ``>= 0``.

    Returns:
        ``max(1, ceil(num_epochs / 5))``, computed in integers (``0.2 * 15`` is not 3 in floats).

    Raises:
        ValueError: if ``num_epochs`` is negative or not an integer.
    """
    if not _is_integer(num_epochs) or num_epochs < 0:
        raise ValueError(
            f"Expected argument `num_epochs` to be a non-negative integer but got {num_epochs!r}."
        )
    return max(1, -(-int(num_epochs) // EARLY_FRACTION_DENOMINATOR))


def el2n(prob_given: np.ndarray, prob_sq_sum: np.ndarray, early_epochs: int) -> np.ndarray:
    """Average the per-epoch EL2N score of every sample over the first ``early_epochs`` epochs.

    Paul et al. 2021 define ``EL2N(x, y) = || p(x) - e_y ||_2`` with ``p`` the softmax output and
    ``e_y`` the one-hot given label. Full probability vectors are not kept per epoch, so the norm
    is expanded as ``||p - e_y||^2 = sum_k p_k^2 - 2 p_y + 1``, clipped at 0 against rounding before
    the square root. The result lies in ``[0, sqrt(2)]``; high = hard or likely mislabeled.

    Args:
        prob_given: ``(E, N)`` float array; ``prob_given[e, i] = p_y`` at recorded epoch ``e``.
            NaN = not recorded at that epoch.
        prob_sq_sum: ``(E, N)`` float array; ``prob_sq_sum[e, i] = sum_k p_k^2`` at epoch ``e``.
            NaN = not recorded at that epoch.
        early_epochs: average over rows ``0 .. early_epochs - 1`` (all rows if there are fewer);
            see :func:`default_early_epochs`.

    Returns:
        ``(N,)`` float64; an epoch where either input is NaN is ignored, and a sample with no
        observed epoch among the first ``early_epochs`` gets NaN.

    Raises:
        ValueError: if an input is not 2-D, the shapes differ, or ``early_epochs < 1``.
    """
    if not _is_integer(early_epochs) or early_epochs < 1:
        raise ValueError(
            f"Expected argument `early_epochs` to be a positive integer but got {early_epochs!r}."
            " HINT: use `default_early_epochs(num_epochs)`."
        )
    prob = as_dynamics("prob_given", prob_given)
    sq_sum = as_dynamics("prob_sq_sum", prob_sq_sum)
    check_same_shape(("prob_given", prob), ("prob_sq_sum", sq_sum))
    squared_error = sq_sum[:early_epochs] - 2.0 * prob[:early_epochs] + 1.0
    per_epoch = np.sqrt(np.maximum(squared_error, 0.0))  # np.maximum keeps NaN
    return nanmean_epochs(per_epoch)
