"""Outlier score: distance to the k nearest neighbours in embedding space, normalised to [0, 1].

Reference: Sun, Ming, Zhu and Li, "Out-of-Distribution Detection with Deep Nearest Neighbors",
ICML 2022 (the distance to the k-th neighbour of the normalised feature); cleanlab's
``OutlierIssueManager`` (``cleanlab/datalab/internal/issue_manager/outlier.py``, cleanlab 2.9),
which uses the *mean* distance to the ``k`` neighbours, scales it by its median and flags rows
above ``Q3 + (1 / 0.37037 - 1) * IQR``. Both are followed here.

Normalisation. With ``d_i = 1 - mean_j cos(x_i, x_j)`` (the mean cosine distance to the ``k``
neighbours) and ``m`` the median of ``d`` over the samples scored together,

    ``outlier_score_i = d_i / (d_i + m)``.

It is 0 for a sample with identical neighbours, 0.5 for a typical sample, 0.75 at three times the
typical distance and tends to 1 far away. Why this and not a percentile rank: a rank is uniform on
every dataset (10% of samples always score above 0.9, whether the data holds outliers or not),
while the ratio to the median keeps how far a sample is; it is scale-free (invariant to the
spread of the embedding space, which differs between models), monotone in ``d``, and reads the
same on any dataset. cleanlab's ``exp(-d / m)`` is the same idea as a quality score; the rational
form leaves more room at the top (``exp`` reaches 0.95 at ``3m``, the ratio 0.75).
"""

from __future__ import annotations

import numpy as np

OUTLIER_IQR_SCALE = 1.0 / 0.37037 - 1.0
"""A sample is an outlier when ``d > Q3(d) + OUTLIER_IQR_SCALE * IQR(d)`` (cleanlab's default, ~1.7)."""

MIN_SCALE = 1e-12
"""Scale used when the median distance is 0 and no distance is positive."""


def knn_distance(similarities: np.ndarray) -> np.ndarray:
    """``(N, k)`` cosine similarities -> ``(N,)`` float64 mean cosine distance ``1 - mean(sim)``.

    NaN similarities (neighbours not found) are ignored; a row of NaN gives NaN. Clipped to
    ``[0, 2]`` against rounding.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.ndim != 2:
        raise ValueError(
            f"Expected argument `similarities` to be 2-D of shape (N, k) but got shape {sims.shape}."
        )
    valid = ~np.isnan(sims)
    count = valid.sum(axis=1)
    total = np.where(valid, sims, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return np.clip(1.0 - mean, 0.0, 2.0)


def _scale(distances: np.ndarray) -> float:
    """Median distance; the median of the positive ones when that is 0 (mostly exact duplicates)."""
    valid = distances[~np.isnan(distances)]
    if valid.size == 0:
        return MIN_SCALE
    median = float(np.median(valid))
    if median > 0:
        return median
    positive = valid[valid > 0]
    return float(np.median(positive)) if positive.size else MIN_SCALE


def outlier_score(similarities: np.ndarray) -> np.ndarray:
    """``(N,)`` float64 in ``[0, 1]``, higher = farther from its neighbours than typical.

    ``d / (d + median(d))`` with ``d`` the mean cosine distance to the ``k`` neighbours (module
    docstring). When more than half of the samples have ``d = 0`` (exact duplicates), the median
    of the positive distances is the scale.

    Args:
        similarities: ``(N, k)`` cosine similarities to the neighbours (from ``knn_cosine``);
            NaN = neighbour not found.

    Returns:
        ``(N,)`` float64; NaN for a row without any neighbour.
    """
    distances = knn_distance(similarities)
    scale = _scale(distances)
    return distances / (distances + scale)


def is_outlier(similarities: np.ndarray, iqr_scale: float = OUTLIER_IQR_SCALE) -> np.ndarray:
    """``(N,)`` bool: mean kNN distance above ``Q3 + iqr_scale * IQR`` (cleanlab's rule).

    The fence is computed on the samples scored together; NaN rows are False.
    """
    distances = knn_distance(similarities)
    valid = ~np.isnan(distances)
    flags = np.zeros(distances.shape, dtype=bool)
    if valid.sum() < 4:
        return flags
    q1, q3 = np.percentile(distances[valid], [25, 75])
    flags[valid] = distances[valid] > q3 + iqr_scale * (q3 - q1)
    return flags
