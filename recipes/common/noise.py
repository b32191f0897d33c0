"""Synthetic label noise with a known ground truth, for measuring label-issue detection.

Two kinds (:class:`NoiseKind`), both flipping exactly ``round(rate * N)`` samples chosen uniformly
without replacement:

- ``symmetric``: each chosen sample moves to a class drawn uniformly from the ``C - 1`` *other*
  classes (never its own);
- ``pair``: each chosen sample of class ``c`` moves to ``(c + 1) % C``, one fixed confusable
  class (the "pair flipping" of Han et al., *Co-teaching*, NeurIPS 2018).
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class NoiseKind(StrEnum):
    """How a chosen sample's label is changed."""

    SYMMETRIC = "symmetric"
    PAIR = "pair"


def inject_noise(
    labels: np.ndarray,
    rate: float,
    kind: NoiseKind | str = NoiseKind.SYMMETRIC,
    num_classes: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(rate * N)`` labels; deterministic for a given ``seed``.

    Args:
        labels: ``(N,)`` integer class indices in ``[0, num_classes)``; not modified.
        rate: fraction of samples to flip, in ``[0, 1]``.
        kind: ``"symmetric"`` or ``"pair"`` (see the module docstring).
        num_classes: number of classes ``C >= 2``; defaults to ``labels.max() + 1``.
        seed: seed of ``np.random.default_rng``.

    Returns:
        ``(noisy_labels, flipped_mask)``: ``(N,)`` int64 labels and ``(N,)`` bool, True exactly
        where ``noisy_labels != labels``.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"Expected `labels` to be a 1-D integer array but got shape {y.shape}, dtype {y.dtype}."
        )
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"Expected `rate` in [0, 1] but got {rate}.")
    try:
        noise_kind = NoiseKind(kind)
    except ValueError:
        raise ValueError(
            f"Expected `kind` to be one of {[k.value for k in NoiseKind]} but got {kind!r}."
        ) from None
    n_classes = (int(y.max()) + 1 if len(y) else 0) if num_classes is None else int(num_classes)
    if n_classes < 2:
        raise ValueError(f"Expected `num_classes` >= 2 (nothing to flip to) but got {n_classes}.")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"Expected `labels` in [0, {n_classes}) but got range [{y.min()}, {y.max()}]. "
            "HINT: pass the right `num_classes`."
        )

    rng = np.random.default_rng(seed)
    noisy = y.astype(np.int64, copy=True)
    chosen = rng.choice(len(y), size=round(rate * len(y)), replace=False)
    if noise_kind is NoiseKind.SYMMETRIC:
        # An offset in [1, C) is uniform over the C - 1 other classes.
        offsets = rng.integers(1, n_classes, size=len(chosen))
    else:
        offsets = np.ones(len(chosen), dtype=np.int64)
    noisy[chosen] = (noisy[chosen] + offsets) % n_classes
    flipped = np.zeros(len(y), dtype=bool)
    flipped[chosen] = True
    return noisy, flipped
