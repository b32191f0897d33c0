"""Slice keys: which columns of the per-sample table are sliced and how each row maps to a slice.

Pure pandas/numpy on the per-sample table (``dq/samples.parquet``): no framework, no MLflow.

A *slice* is the set of rows of one split that share a value of one column (``source=forum``,
``label=3``) or fall into one quantile bucket of a numeric column (``length in (120, 250]``); a
*pair slice* is the conjunction of two slices of different columns
(``source=forum AND length in (120, 250]``).

Which columns are sliced: the ``columns`` you name (metadata, or any column of the table), plus
the built-in :data:`BUILTIN_COLUMNS` that are present: ``label`` (per class), ``cluster`` (from the
embeddings feature) and ``latency_ms`` (prediction latency, bucketed). A column is bucketed into
``numeric_bins`` quantiles when it is numeric (not boolean) with more than ``numeric_bins`` distinct
values; otherwise each value is a slice. Bucket edges are computed once over all splits so that a
slice has the same name in train and validation. Missing values form their own slice ``<NA>``.

The slices are used by :mod:`.slices` (metrics per slice), :mod:`.weak_slices` (significantly
weak slices), :mod:`.latency_report` and :mod:`.slice_history` (members and accuracy per epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("sample_id", "split", "label", "pred")
"""Columns every function here needs."""

BUILTIN_COLUMNS: tuple[str, ...] = ("label", "cluster", "latency_ms")
"""Columns sliced whenever present, after the ones you name."""

CATEGORICAL_COLUMNS: tuple[str, ...] = ("label", "cluster", "pred", "suggested_label")
"""Integer columns that are never bucketed: each value is a slice."""

MISSING_VALUE = "<NA>"
"""Value name of the slice of rows where a column is missing."""

PAIR_JOIN = " AND "
"""Joins the two slice names of a pair slice."""


@dataclass(frozen=True)
class SliceKey:
    """One sliced column over all rows of the table.

    Attributes:
        column: the column name.
        codes: (N,) int64, the slice of each row, ``0..len(values)-1``.
        values: display value of each code (``"forum"``, ``"(120, 250]"``, ``"<NA>"``).
        bucketed: True when the values are quantile buckets of a numeric column.
    """

    column: str
    codes: np.ndarray
    values: tuple[str, ...]
    bucketed: bool

    def slice_name(self, code: int) -> str:
        """``column=value`` for a value, ``column in (a, b]`` for a bucket (and ``column=<NA>``)."""
        value = self.values[code]
        if self.bucketed and value != MISSING_VALUE:
            return f"{self.column} in {value}"
        return f"{self.column}={value}"


def _format_value(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return str(value)


def _format_edges(edges: np.ndarray) -> list[str]:
    """Shortest ``%g`` formatting (3 to 12 significant digits) that keeps distinct edges distinct."""
    for digits in range(3, 13):
        text = [f"{edge:.{digits}g}" for edge in edges]
        if len(set(text)) == len(text):
            return text
    return [repr(float(edge)) for edge in edges]


def _is_bucketed(series: pd.Series, column: str, numeric_bins: int) -> bool:
    if column in CATEGORICAL_COLUMNS:
        return False
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return False
    return series.nunique(dropna=True) > numeric_bins


def slice_key(samples: pd.DataFrame, column: str, numeric_bins: int = 4) -> SliceKey:
    """The slices of one column over all rows of ``samples`` (see the module docstring).

    Quantile buckets: edges ``np.quantile(values, linspace(0, 1, numeric_bins + 1))`` over the finite
    values of every split (duplicates merged); the first bucket is closed ``[min, q1]``, the others
    ``(q_i, q_i+1]``, as ``pandas.cut(..., include_lowest=True)``.
    """
    series = samples[column]
    if _is_bucketed(series, column, numeric_bins):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        edges = np.unique(np.quantile(values[finite], np.linspace(0.0, 1.0, numeric_bins + 1)))
        if len(edges) >= 2:
            text = _format_edges(edges)
            names = [f"[{text[0]}, {text[1]}]"] + [f"({text[i]}, {text[i + 1]}]" for i in range(1, len(edges) - 1)]
            codes = np.searchsorted(edges[1:-1], np.where(finite, values, 0.0), side="left").astype(np.int64)
            if not finite.all():
                codes[~finite] = len(names)
                names.append(MISSING_VALUE)
            return SliceKey(column, codes, tuple(names), True)
    codes, uniques = pd.factorize(series, sort=True, use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    names = [_format_value(value) for value in uniques]
    if (codes < 0).any():
        codes[codes < 0] = len(names)
        names.append(MISSING_VALUE)
    return SliceKey(column, codes, tuple(names), False)


def slice_columns(samples: pd.DataFrame, columns: Sequence[str] | None) -> list[str]:
    """``columns`` checked, then the :data:`BUILTIN_COLUMNS` present, without repeats.

    Raises:
        ValueError: a required column is missing, or a named column is not in the table (the message
            lists the columns that can be sliced).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(
            f"Expected a per-sample table with columns {list(REQUIRED_COLUMNS)}, but {missing} are missing "
            f"(it has {list(samples.columns)})."
        )
    if isinstance(columns, str):
        raise ValueError(f"Expected argument `columns` to be a list of column names but got the string {columns!r}. "
                         f"HINT: columns=[{columns!r}].")
    valid = [c for c in samples.columns if c not in ("sample_id", "split")]
    chosen: list[str] = []
    for column in columns or ():
        if column not in valid:
            raise ValueError(
                f"Unknown slice column {column!r}: the per-sample table has no such column. Valid columns: {valid}. "
                "HINT: metadata columns appear when the callback is given `metadata_keys=` "
                "or a metadata DataFrame."
            )
        if column not in chosen:
            chosen.append(column)
    chosen += [c for c in BUILTIN_COLUMNS if c in samples.columns and c not in chosen]
    return chosen


def _check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an integer >= {minimum} but got {value!r}.")
    return int(value)
