"""Shared input checks and NaN-aware reductions for the per-epoch score functions.

Private to :mod:`dq_plugins.scores`. Per-epoch dynamics arrive as ``(E, N)`` arrays (``E`` recorded
epochs in order, ``N`` samples) where NaN means "this sample was not recorded at that epoch".
"""

from __future__ import annotations

import numpy as np


def as_dynamics(name: str, values: np.ndarray) -> np.ndarray:
    """Return ``values`` as a float64 ``(E, N)`` array, or raise naming the argument ``name``."""
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(
            f"Expected argument `{name}` to be a 2-D array of shape (epochs, samples) but got shape"
            f" {array.shape}. HINT: stack one row per recorded epoch, NaN where a sample was not"
            " seen."
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"Expected argument `{name}` to have a real numeric dtype but got {array.dtype}."
        )
    return array.astype(np.float64, copy=False)


def check_same_shape(first: tuple[str, np.ndarray], second: tuple[str, np.ndarray]) -> None:
    """Raise if the two named arrays do not have the same shape."""
    (first_name, first_array), (second_name, second_array) = first, second
    if first_array.shape != second_array.shape:
        raise ValueError(
            f"Expected `{first_name}` and `{second_name}` to have the same shape but got"
            f" {first_array.shape} and {second_array.shape}."
        )


def check_fraction(name: str, values: np.ndarray) -> None:
    """Raise if a non-NaN entry of ``values`` lies outside ``[0, 1]``."""
    with np.errstate(invalid="ignore"):
        outside = (values < 0.0) | (values > 1.0)
    if np.any(outside):
        bad = float(values[outside].flat[0])
        raise ValueError(
            f"Expected argument `{name}` to hold fractions in [0, 1] (NaN = not recorded) but found"
            f" {bad!r}."
        )


def nanmean_epochs(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where a column has no observed value. No warnings.

    Unlike ``np.nanmean`` this emits no "Mean of empty slice" warning and also accepts ``E == 0``.
    """
    observed = ~np.isnan(values)
    count = observed.sum(axis=0)
    total = np.where(observed, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return np.where(count > 0, mean, np.nan)


def last_observed(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """(E, N) -> (N,): the value at each column's last non-missing epoch (row 0 if none)."""
    if values.shape[0] == 0:
        return np.full(values.shape[1], -1, dtype=values.dtype)
    observed = ~missing
    last = values.shape[0] - 1 - np.argmax(observed[::-1], axis=0)
    return values[last, np.arange(values.shape[1])]
