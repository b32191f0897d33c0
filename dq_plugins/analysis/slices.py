"""Slices of the per-sample table: metrics per segment, weak-slice discovery, latency report.

Pure pandas/numpy/scipy on the per-sample table (``dq/samples.parquet``): no framework, no MLflow.

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

Functions:

- :func:`slice_metrics`: per split and slice: size, accuracy, macro F1, mean mislabel_score,
  label-issue rate, expected calibration error, mean latency.
- :func:`find_weak_slices`: single and pair slices whose accuracy is significantly below the rest
  of their split (one-sided Fisher exact test, Benjamini-Hochberg correction), ranked, each with a
  plain-language line.
- :func:`latency_report`: how prediction latency relates to correctness and to each column.
- :func:`slice_members` / :func:`slice_masks` / :func:`slice_epoch_accuracy`: the sample ids (or row
  masks) of named slices and their accuracy per epoch (for MLflow metric histories).

Accuracy is measured against the *given* labels (``pred == label``), which may be noisy: a slice
full of mislabeled samples looks weak too; its ``label_issue_rate`` tells the two apart.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dq_plugins.schema import LATENCY_COLUMN, SLICE_TABLE_COLUMNS, SLICE_TABLE_METRICS, ordered_splits

REQUIRED_COLUMNS: tuple[str, ...] = ("sample_id", "split", "label", "pred")
"""Columns every function here needs."""

BUILTIN_COLUMNS: tuple[str, ...] = ("label", "cluster", "latency_ms")
"""Columns sliced whenever present, after the ones you name."""

CATEGORICAL_COLUMNS: tuple[str, ...] = ("label", "cluster", "pred", "suggested_label")
"""Integer columns that are never bucketed: each value is a slice."""

CONFIDENCE_COLUMN = "confidence_pred"
"""Max softmax probability of the final prediction; the expected calibration error needs it."""

ECE_BINS = 10
"""Equal-width confidence bins of the expected calibration error (Guo et al. 2017)."""

MISSING_VALUE = "<NA>"
"""Value name of the slice of rows where a column is missing."""

SLICE_COLUMNS: tuple[str, ...] = SLICE_TABLE_COLUMNS
"""Columns of :func:`slice_metrics` (and of ``dq/slices.json``; :data:`dq_plugins.schema.SLICE_TABLE_COLUMNS`)."""

SLICE_METRICS: tuple[str, ...] = SLICE_TABLE_METRICS
"""The numeric columns of a slice table: what a rule ``over="slices"`` can test."""

WEAK_SLICE_COLUMNS: tuple[str, ...] = (
    "rank", "split", "slice", "column", "value", "order", "size", "accuracy", "rest_size",
    "rest_accuracy", "gap", "macro_f1", "p_value", "q_value", "description",
)
"""Columns of :func:`find_weak_slices`."""

LATENCY_REPORT_COLUMNS: tuple[str, ...] = (
    "split", "column", "level", "method", "statistic", "p_value", "n", "summary",
)
"""Columns of :func:`latency_report`; ``level`` is the unit compared: "batch", "sample", or "none" (no claim)."""

MIN_MIXED_SHARE = 0.5
"""A categorical column is compared per sample only when at least this share of the samples sits in
batches that hold two or more of its values (the batches mix the compared groups)."""

MIN_BATCHES = 3
"""Fewest batches (per group, for a categorical column: 2) for a batch-level statistic."""

PAIR_JOIN = " AND "
"""Joins the two slice names of a pair slice."""


# ---------------------------------------------------------------------------------------- keys
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


# ---------------------------------------------------------------------------------------- per-slice statistics
@dataclass(frozen=True)
class _Rows:
    """The arrays of one split that the statistics need."""

    correct: np.ndarray  # (n,) float 0/1
    label_class: np.ndarray  # (n,) int, index into the classes of the split
    pred_class: np.ndarray  # (n,) int
    num_classes: int
    mislabel: np.ndarray | None
    issue: np.ndarray | None
    latency: np.ndarray | None
    confidence: np.ndarray | None

    @classmethod
    def of(cls, part: pd.DataFrame) -> _Rows:
        label = part["label"].to_numpy()
        pred = part["pred"].to_numpy()
        classes, inverse = np.unique(np.concatenate([label, pred]), return_inverse=True)

        def optional(column: str) -> np.ndarray | None:
            if column not in part.columns:
                return None
            return part[column].to_numpy(dtype=np.float64, na_value=np.nan)

        return cls(
            correct=(label == pred).astype(np.float64),
            label_class=inverse[: len(label)],
            pred_class=inverse[len(label):],
            num_classes=len(classes),
            mislabel=optional("mislabel_score"),
            issue=optional("is_label_issue"),
            latency=optional(LATENCY_COLUMN),
            confidence=optional(CONFIDENCE_COLUMN),
        )


def _finite_mean(codes: np.ndarray, values: np.ndarray | None, size: int) -> np.ndarray:
    if values is None:
        return np.full(size, np.nan)
    finite = np.isfinite(values)
    total = np.bincount(codes[finite], weights=values[finite], minlength=size)
    count = np.bincount(codes[finite], minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def macro_f1_by_slice(codes: np.ndarray, rows: _Rows, size: int) -> np.ndarray:
    """(S,) macro F1 of ``pred`` vs ``label`` within each slice.

    The macro average runs over the classes that occur as *given labels* in the slice (sklearn's
    ``f1_score(label, pred, labels=np.unique(label), average="macro", zero_division=0)``), so a slice
    that holds one class is scored on that class only instead of being dragged down by the zero F1 of
    classes it does not contain. Per class: ``F1 = 2 TP / (support + predicted)``.
    """
    c = rows.num_classes
    support = np.bincount(codes * c + rows.label_class, minlength=size * c).reshape(size, c)
    predicted = np.bincount(codes * c + rows.pred_class, minlength=size * c).reshape(size, c)
    true_pos = np.bincount(codes * c + rows.label_class, weights=rows.correct, minlength=size * c).reshape(size, c)
    present = support > 0
    f1 = np.where(present, 2.0 * true_pos / np.maximum(support + predicted, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present.any(1), f1.sum(1) / present.sum(1), np.nan)


def ece_by_slice(codes: np.ndarray, rows: _Rows, size: int, bins: int = ECE_BINS) -> np.ndarray:
    """(S,) expected calibration error within each slice; NaN without a confidence column.

    ``ECE = sum_b (n_b / n) |accuracy_b - mean confidence_b|`` over ``bins`` equal-width bins of the
    confidence of the prediction (``[0, 0.1), ..., [0.9, 1.0]``), rows with a missing confidence left
    out (Guo et al. 2017, "On Calibration of Modern Neural Networks").
    """
    if rows.confidence is None:
        return np.full(size, np.nan)
    ok = np.isfinite(rows.confidence)
    conf = rows.confidence[ok]
    cell = codes[ok] * bins + np.clip((conf * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(codes[ok], minlength=size)
    gap = np.bincount(cell, weights=rows.correct[ok], minlength=size * bins) - np.bincount(
        cell, weights=conf, minlength=size * bins
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.abs(gap).reshape(size, bins).sum(1) / np.maximum(count, 1), np.nan)


def _statistics(codes: np.ndarray, rows: _Rows, size: int, full: bool = True) -> dict[str, np.ndarray]:
    """Per-slice numbers: every one of :data:`SLICE_METRICS` (plus ``correct``, the count of correct
    rows), or with ``full=False`` only size, correct, accuracy and macro F1 (what the weak-slice search needs)."""
    count = np.bincount(codes, minlength=size)
    correct = np.bincount(codes, weights=rows.correct, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
    stats = {"size": count, "correct": correct, "accuracy": accuracy, "macro_f1": macro_f1_by_slice(codes, rows, size)}
    if full:
        stats["mean_mislabel_score"] = _finite_mean(codes, rows.mislabel, size)
        stats["label_issue_rate"] = _finite_mean(codes, rows.issue, size)
        stats["ece"] = ece_by_slice(codes, rows, size)
        stats["mean_latency_ms"] = _finite_mean(codes, rows.latency, size)
    return stats


# ---------------------------------------------------------------------------------------- slice metrics
def slice_metrics(
    samples: pd.DataFrame, *, columns: Sequence[str] | None = None, numeric_bins: int = 4, min_size: int = 20
) -> pd.DataFrame:
    """Metrics of every slice of every split.

    Args:
        samples: the per-sample table (at least :data:`REQUIRED_COLUMNS`; ``mislabel_score``,
            ``is_label_issue``, ``confidence_pred`` and ``latency_ms`` are used when present, else the
            matching metric is NaN).
        columns: columns to slice besides the built-in ones (see :func:`slice_columns`).
        numeric_bins: quantile buckets of a numeric column.
        min_size: slices with fewer rows are left out (their accuracy is noise).

    Returns:
        one row per (split, slice) with at least ``min_size`` rows, columns :data:`SLICE_COLUMNS`:
        ``size`` (rows), ``accuracy`` (``pred == label``), ``macro_f1`` (:func:`macro_f1_by_slice`),
        ``mean_mislabel_score``, ``label_issue_rate`` (fraction ``is_label_issue``), ``ece``
        (:func:`ece_by_slice`), ``mean_latency_ms``. Ordered by split, column (as given), value.
        ``value`` is text. A column none of whose slices reaches ``min_size`` in a split gives one
        warning (naming every such column and split) instead of rows.
    """
    numeric_bins = _check_positive_int("numeric_bins", numeric_bins)
    min_size = _check_positive_int("min_size", min_size)
    chosen = slice_columns(samples, columns)
    keys = [slice_key(samples, column, numeric_bins) for column in chosen]
    split_of = samples["split"].astype(str).to_numpy()
    frames, left_out = [], []
    for split in ordered_splits(samples["split"]):
        mask = split_of == split
        rows = _Rows.of(samples[mask])
        for key in keys:
            codes = key.codes[mask]
            stats = _statistics(codes, rows, len(key.values))
            keep = np.flatnonzero(stats["size"] >= min_size)
            if not len(keep):
                left_out.append(f"{key.column!r} in {split!r} (largest slice: {int(stats['size'].max(initial=0))})")
                continue
            frame = pd.DataFrame({name: stats[name][keep] for name in SLICE_METRICS})
            frame.insert(0, "value", [key.values[i] for i in keep])
            frame.insert(0, "column", key.column)
            frame.insert(0, "slice", [key.slice_name(i) for i in keep])
            frame.insert(0, "split", split)
            frames.append(frame)
    if left_out:
        warnings.warn(
            f"dq_plugins: no slice reaches min_size={min_size} samples for column {', column '.join(left_out)}; "
            "those columns are left out of the slice table. HINT: lower `min_size` to see small slices.",
            RuntimeWarning,
            stacklevel=2,
        )
    if not frames:
        return _empty(SLICE_COLUMNS)
    table = pd.concat(frames, ignore_index=True)[list(SLICE_COLUMNS)]
    table["size"] = table["size"].astype(np.int64)
    table.attrs["numeric_bins"] = numeric_bins
    return table


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object if c in ("split", "slice", "column", "value", "description",
                                                           "summary", "method") else float)
                         for c in columns})


# ---------------------------------------------------------------------------------------- statistics helpers
def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """(K,) -> (K,) Benjamini-Hochberg adjusted p-values (q-values):
    ``scipy.stats.false_discovery_control(p, method="bh")``; rejecting ``q <= alpha`` controls the
    false discovery rate at ``alpha`` (Benjamini & Hochberg 1995). ``p`` is clipped to [0, 1] first
    (a p-value summed from probabilities may exceed 1 by a rounding error)."""
    from scipy.stats import false_discovery_control

    p = np.clip(np.asarray(p_values, dtype=np.float64), 0.0, 1.0)
    if p.size == 0:
        return p
    return false_discovery_control(p, method="bh")


def lower_accuracy_p_value(correct_in: np.ndarray, size_in: np.ndarray, correct_all: np.ndarray,
                           size_all: np.ndarray) -> np.ndarray:
    """One-sided Fisher exact test that a subset is *less* accurate than the rest of its population.

    The 2 x 2 table is (subset, rest) x (correct, wrong). Under the null hypothesis the correct count of
    the subset is hypergeometric, so ``p = P[X <= correct_in]`` with
    ``X ~ Hypergeom(M=size_all, n=correct_all, N=size_in)``: the same value as
    ``scipy.stats.fisher_exact(table, alternative="less")``, vectorised.
    """
    from scipy.stats import hypergeom

    return hypergeom.cdf(np.rint(correct_in), size_all, np.rint(correct_all), size_in)


EXACT_SCREEN_P = 0.25
"""p-values are exact (Fisher) except where the table is large (more than 2,000 rows), the hypergeometric
variance is at least :data:`APPROX_MIN_VARIANCE` and the continuity-corrected normal approximation gives
more than ``max(EXACT_SCREEN_P, 4 * alpha)``: there the approximation stays (checked over accuracies
0.01-0.999: the exact value is then above 0.248), so no decision changes. Exact values for large tables
cost about a millisecond each (a sum over the hypergeometric support), which adds up over thousands
of pair slices."""

APPROX_MIN_VARIANCE = 100.0
"""Smallest hypergeometric variance at which the normal approximation may stand in for the exact p-value."""


def _normal_lower_p(correct_in: np.ndarray, size_in: np.ndarray, correct_all: np.ndarray,
                    size_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p, variance): continuity-corrected normal approximation of :func:`lower_accuracy_p_value`
    (same hypergeometric distribution) and the variance of that distribution."""
    from scipy.special import ndtr

    share = correct_all / size_all
    mean = size_in * share
    var = size_in * share * (1 - share) * (size_all - size_in) / np.maximum(size_all - 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (correct_in + 0.5 - mean) / np.sqrt(var)
    return np.where(var > 0, ndtr(z), 1.0), var


def _screened_lower_p(correct_in: np.ndarray, size_in: np.ndarray, correct_all: np.ndarray, size_all: np.ndarray,
                      screen: float, wanted: np.ndarray | None = None) -> np.ndarray:
    """:func:`lower_accuracy_p_value` where it can matter (see :data:`EXACT_SCREEN_P`; and only where
    ``wanted``), the normal approximation elsewhere."""
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (correct_in, size_in, correct_all,
                                                                             size_all)))
    p, var = _normal_lower_p(*arrays)
    exact = (p <= screen) | (var < APPROX_MIN_VARIANCE) | (arrays[3] <= 2_000)
    if wanted is not None:
        exact &= wanted
    if exact.any():
        p[exact] = lower_accuracy_p_value(*(a[exact] for a in arrays))
    return p


# ---------------------------------------------------------------------------------------- weak slices
def find_weak_slices(
    samples: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    min_size: int = 30,
    alpha: float = 0.05,
    max_pairs_columns: int = 8,
    numeric_bins: int = 4,
) -> pd.DataFrame:
    """Slices whose accuracy is significantly below the rest of their split.

    Candidates, per split: every single slice (see :func:`slice_metrics`) and every pair slice of two
    of the first ``max_pairs_columns`` sliced columns, with at least ``min_size`` rows and at least one
    row outside. Each is tested against the rest of its split with :func:`lower_accuracy_p_value`
    (one-sided Fisher exact; large tables far from significance keep a normal approximation, see
    :data:`EXACT_SCREEN_P`); the p-values of all candidates of a split are corrected together with
    :func:`benjamini_hochberg`. A slice is reported when ``q <= alpha``.

    A pair is reported only if it also *refines* both of its single slices: it must be significantly
    less accurate than the rest of each (``source=forum AND length in (120, 250]`` against the other
    forum rows, and against the other rows of that length bucket; the larger of the two p-values,
    corrected over all pairs). Without this, every pair inside one weak slice would be reported too.

    Args:
        samples: the per-sample table.
        columns: columns to slice besides the built-in ones (see :func:`slice_columns`).
        min_size: smallest slice tested.
        alpha: false discovery rate.
        max_pairs_columns: how many of the sliced columns (yours first, then label, cluster, latency)
            form pairs; 0 or 1 tests single slices only.
        numeric_bins: quantile buckets of a numeric column.

    Returns:
        columns :data:`WEAK_SLICE_COLUMNS`, per split (train, validation, others) ranked by ``gap``
        (rest accuracy minus slice accuracy, largest first), then p-value; ``rank`` starts at 1 in each
        split; ``order`` is 1 (single) or 2 (pair); ``description`` is one line,
        e.g. ``"source=forum AND length in (120, 250]: accuracy 0.61 vs 0.93 for the rest of train,
        n=412 (q=2.1e-09)"``. Empty when nothing is significant.
    """
    min_size = _check_positive_int("min_size", min_size)
    numeric_bins = _check_positive_int("numeric_bins", numeric_bins)
    max_pairs_columns = _check_positive_int("max_pairs_columns", max_pairs_columns, minimum=0)
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"Expected argument `alpha` in (0, 1) (the false discovery rate) but got {alpha!r}.")
    chosen = slice_columns(samples, columns)
    keys = [slice_key(samples, column, numeric_bins) for column in chosen]
    split_of = samples["split"].astype(str).to_numpy()
    found = []
    for split in ordered_splits(samples["split"]):
        mask = split_of == split
        frame = _weak_in_split(split, _Rows.of(samples[mask]), [_restrict(k, mask) for k in keys],
                               min_size, alpha, max_pairs_columns)
        if frame is not None:
            found.append(frame)
    if not found:
        return _empty(WEAK_SLICE_COLUMNS)
    table = pd.concat(found, ignore_index=True)  # already in split order; each split ranked by itself
    table.insert(0, "rank", table.groupby("split", sort=False).cumcount() + 1)
    table = table[list(WEAK_SLICE_COLUMNS)].reset_index(drop=True)
    table.attrs["numeric_bins"] = numeric_bins
    return table


def _restrict(key: SliceKey, mask: np.ndarray) -> SliceKey:
    return SliceKey(key.column, key.codes[mask], key.values, key.bucketed)


@dataclass
class _Candidates:
    """Tested slices of one split: names, parts and statistics, concatenated."""

    slice: list[str]
    column: list[str]
    value: list[str]
    order: list[int]
    stats: list[dict[str, np.ndarray]]
    parents: list[np.ndarray]  # (n, 4): correct and size of parent a, then of parent b (NaN for singles)


def _weak_in_split(split: str, rows: _Rows, keys: list[SliceKey], min_size: int, alpha: float,
                   max_pairs_columns: int) -> pd.DataFrame | None:
    total = len(rows.correct)
    if total == 0:
        warnings.warn(f"dq_plugins: split {split!r} has no rows; no weak slices searched.", RuntimeWarning,
                      stacklevel=3)
        return None
    total_correct = rows.correct.sum()
    single = [_statistics(key.codes, rows, len(key.values), full=False) for key in keys]
    cand = _Candidates([], [], [], [], [], [])

    def add(names: list[str], column: str, values: list[str], order: int, stats: dict[str, np.ndarray],
            parents: np.ndarray) -> None:
        cand.slice += names
        cand.column += [column] * len(names)
        cand.value += values
        cand.order += [order] * len(names)
        cand.stats.append(stats)
        cand.parents.append(parents)

    for key, stats in zip(keys, single, strict=True):
        keep = np.flatnonzero((stats["size"] >= min_size) & (stats["size"] < total))
        add([key.slice_name(i) for i in keep], key.column, [key.values[i] for i in keep], 1,
            {k: v[keep] for k, v in stats.items()}, np.full((len(keep), 4), np.nan))
    paired = list(zip(keys, single, strict=True))[:max_pairs_columns]
    for (key_a, stats_a), (key_b, stats_b) in itertools.combinations(paired, 2):
        joint = key_a.codes * len(key_b.values) + key_b.codes
        num_cells = len(key_a.values) * len(key_b.values)
        if num_cells <= max(4 * total, 1 << 16):  # dense cells: no sort
            cells, codes = np.arange(num_cells), joint
        else:
            cells, codes = np.unique(joint, return_inverse=True)
        stats = _statistics(codes.astype(np.int64), rows, len(cells), full=False)
        keep = np.flatnonzero((stats["size"] >= min_size) & (stats["size"] < total))
        if not len(keep):
            continue
        code_a, code_b = cells[keep] // len(key_b.values), cells[keep] % len(key_b.values)
        parents = np.stack([stats_a["correct"][code_a], stats_a["size"][code_a],
                            stats_b["correct"][code_b], stats_b["size"][code_b]], axis=1).astype(np.float64)
        add([f"{key_a.slice_name(a)}{PAIR_JOIN}{key_b.slice_name(b)}" for a, b in zip(code_a, code_b, strict=True)],
            f"{key_a.column} & {key_b.column}",
            [f"{key_a.values[a]} & {key_b.values[b]}" for a, b in zip(code_a, code_b, strict=True)],
            2, {k: v[keep] for k, v in stats.items()}, parents)
    if not cand.slice:
        warnings.warn(
            f"dq_plugins: no slice of split {split!r} has at least min_size={min_size} samples and rows outside it; "
            "no weak slices searched. HINT: lower `min_size`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    stats = {k: np.concatenate([s[k] for s in cand.stats]) for k in cand.stats[0]}
    order = np.asarray(cand.order)
    size, correct = stats["size"].astype(np.float64), stats["correct"]
    rest_size = total - size
    rest_accuracy = (total_correct - correct) / rest_size
    screen = max(EXACT_SCREEN_P, 4 * alpha)
    p_value = _screened_lower_p(correct, size, total_correct, total, screen)
    q_value = benjamini_hochberg(p_value)
    refine_q = np.zeros_like(p_value)
    pairs = order == 2
    if pairs.any():
        parents = np.concatenate(cand.parents)[pairs]
        wanted = q_value[pairs] <= alpha  # only those can be reported: the others keep approximate values
        refine = np.maximum(
            _refine_p(correct[pairs], size[pairs], parents[:, 0], parents[:, 1], screen, wanted),
            _refine_p(correct[pairs], size[pairs], parents[:, 2], parents[:, 3], screen, wanted),
        )
        refine_q[pairs] = benjamini_hochberg(refine)
    significant = (q_value <= alpha) & (stats["accuracy"] < rest_accuracy) & (refine_q <= alpha)
    if not significant.any():
        return None
    idx = np.flatnonzero(significant)
    frame = pd.DataFrame({
        "split": split,
        "slice": [cand.slice[i] for i in idx],
        "column": [cand.column[i] for i in idx],
        "value": [cand.value[i] for i in idx],
        "order": order[idx],
        "size": size[idx].astype(np.int64),
        "accuracy": stats["accuracy"][idx],
        "rest_size": rest_size[idx].astype(np.int64),
        "rest_accuracy": rest_accuracy[idx],
        "gap": rest_accuracy[idx] - stats["accuracy"][idx],
        "macro_f1": stats["macro_f1"][idx],
        "p_value": p_value[idx],
        "q_value": q_value[idx],
    })
    frame = frame.sort_values(["gap", "p_value", "size"], ascending=[False, True, False], kind="stable")
    frame["description"] = [
        f"{row.slice}: accuracy {row.accuracy:.2f} vs {row.rest_accuracy:.2f} for the rest of {split}, "
        f"n={row.size} (q={row.q_value:.2g})"
        for row in frame.itertuples()
    ]
    return frame


def _refine_p(correct: np.ndarray, size: np.ndarray, parent_correct: np.ndarray, parent_size: np.ndarray,
              screen: float, wanted: np.ndarray) -> np.ndarray:
    """p-value that a pair is less accurate than the rest of its parent slice (1 when it is the whole parent)."""
    inside = parent_size > size
    p = np.ones_like(correct, dtype=np.float64)
    if inside.any():
        p[inside] = _screened_lower_p(correct[inside], size[inside], parent_correct[inside], parent_size[inside],
                                      screen, wanted[inside])
    return p


# ---------------------------------------------------------------------------------------- latency
def latency_report(samples: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """How prediction latency relates to correctness and to each column, per split, claiming only what the
    data can show.

    A sample's latency is its batch's forward time divided by the batch size (:mod:`dq_plugins.recording.latency`),
    so the samples of one batch share one value: the batch is the unit that was timed, found here as the
    samples sharing a latency value. Hence:

    - ``correct`` (``pred == label``) and a numeric column: Spearman rank correlation across batches between the
      batch's latency and its accuracy (or the column's batch mean); level "batch", ``n`` = batches.
    - a categorical column whose values the batches mix (at least :data:`MIN_MIXED_SHARE` of the samples in
      batches holding two or more values; a shuffled loader): Kruskal-Wallis H test across its values per
      sample, level "sample", statistic the effect size epsilon squared ``H / (n - 1)`` in [0, 1] (Tomczak &
      Tomczak 2014).
    - a categorical column that the batches do not mix (a loader sorted by it): the grouping is confounded with
      batch composition. Kruskal-Wallis across the single-valued batches (level "batch") when at least two
      values have two such batches each; otherwise no claim (level "none", NaN), and the summary says why.

    Rows with a missing latency or value are left out. A statistic that is undefined (constant input,
    too few batches) is NaN.

    Args:
        samples: the per-sample table with a ``latency_ms`` column.
        columns: columns to relate to latency besides ``correct`` (``label`` and ``cluster`` are added
            when present).

    Returns:
        columns :data:`LATENCY_REPORT_COLUMNS`, ``summary`` one line per row.

    Raises:
        ValueError: no ``latency_ms`` column, or an unknown column.
    """
    if LATENCY_COLUMN not in samples.columns:
        raise ValueError(
            f"latency_report needs a {LATENCY_COLUMN!r} column, but the per-sample table has only "
            f"{list(samples.columns)}. HINT: the callbacks add it when they time the forward pass."
        )
    chosen = [c for c in slice_columns(samples, columns) if c != LATENCY_COLUMN]
    rows = []
    for split in ordered_splits(samples["split"]):
        part = samples[samples["split"].astype(str) == split]
        latency = part[LATENCY_COLUMN].to_numpy(dtype=np.float64, na_value=np.nan)
        correct = (part["label"].to_numpy() == part["pred"].to_numpy()).astype(np.float64)
        rows.append(_latency_row(split, "correct", latency, pd.Series(correct), numeric=True))
        for column in chosen:
            series = part[column].reset_index(drop=True)
            rows.append(_latency_row(split, column, latency, series, numeric=_is_bucketed(series, column, 2)))
    if not rows:
        return _empty(LATENCY_REPORT_COLUMNS)
    return pd.DataFrame(rows, columns=list(LATENCY_REPORT_COLUMNS))


def _latency_row(split: str, column: str, latency: np.ndarray, values: pd.Series, numeric: bool) -> dict:
    from scipy import stats

    ok = np.isfinite(latency) & values.notna().to_numpy()
    lat, val = latency[ok], values[ok].reset_index(drop=True)
    batch, batch_latency = np.unique(lat, return_inverse=True)[1], np.unique(lat)
    num_batches = len(batch_latency)
    row = {"split": split, "column": column, "statistic": math.nan, "p_value": math.nan}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN, which we report
        if numeric:
            means = pd.Series(val.to_numpy(dtype=np.float64)).groupby(batch).mean().to_numpy()
            row.update(level="batch", method="spearman", n=num_batches)
            if num_batches >= MIN_BATCHES and np.ptp(batch_latency) > 0 and np.ptp(means) > 0:
                result = stats.spearmanr(means, batch_latency)
                row.update(statistic=float(result[0]), p_value=float(result[1]))
            row["summary"] = _batch_correlation_summary(column, row)
            return row
        codes = pd.factorize(val)[0]
        values_per_batch = pd.Series(codes).groupby(batch).nunique().to_numpy()
        shared = np.bincount(batch, minlength=num_batches)[batch] >= 2  # samples timed together with others
        mixed_share = float((values_per_batch[batch][shared] >= 2).mean()) if shared.any() else 1.0
        if mixed_share >= MIN_MIXED_SHARE:  # (every sample timed alone: per sample is per batch)
            row.update(level="sample", method="kruskal_epsilon2", n=int(len(lat)))
            order = np.argsort(codes, kind="stable")
            groups = np.split(lat[order], np.flatnonzero(np.diff(codes[order])) + 1)
            if len(groups) >= 2 and len(lat) >= 3 and np.ptp(lat) > 0:
                h, p_value = stats.kruskal(*groups)
                row.update(statistic=float(h) / (len(lat) - 1), p_value=float(p_value))
            row["summary"] = _kruskal_summary(column, row, f"batches mix its values ({mixed_share:.0%} of samples)")
            return row
        single = values_per_batch == 1
        value_of_batch = pd.Series(codes).groupby(batch).first().to_numpy()
        groups = [batch_latency[single & (value_of_batch == code)] for code in np.unique(value_of_batch[single])]
        groups = [group for group in groups if len(group) >= 2]
        confounded = (f"confounded with batch composition: {int(single.sum())} of {num_batches} batches hold a "
                      f"single value of {column}, and a sample's latency is its batch's time / size")
        if len(groups) >= 2 and np.ptp(np.concatenate(groups)) > 0:
            h, p_value = stats.kruskal(*groups)
            count = sum(len(group) for group in groups)
            row.update(level="batch", method="kruskal_epsilon2", n=count, statistic=float(h) / max(count - 1, 1),
                       p_value=float(p_value))
            row["summary"] = _kruskal_summary(column, row, f"{confounded}; compared across those batches")
        else:
            row.update(level="none", method="none", n=num_batches,
                       summary=f"latency vs {column}: no claim ({confounded}; too few batches per value to compare "
                               "batches). HINT: shuffle the loader to compare per sample.")
    return row


def _batch_correlation_summary(column: str, row: dict) -> str:
    what = "accuracy" if column == "correct" else f"mean {column}"
    if math.isnan(row["statistic"]):
        return (f"latency vs {column}: undefined (constant values or fewer than {MIN_BATCHES} batches, "
                f"{row['n']} batches)")
    line = (f"latency vs {column}, per batch: Spearman rho={row['statistic']:.2f} between a batch's latency and "
            f"its {what} (p={row['p_value']:.2g}, {row['n']} batches)")
    if row["p_value"] < 0.05:
        if column == "correct":
            line += "; slower batches are " + ("less" if row["statistic"] < 0 else "more") + " often correct"
        else:
            line += f"; latency {'rises' if row['statistic'] > 0 else 'falls'} with {column}"
    return line


def _kruskal_summary(column: str, row: dict, basis: str) -> str:
    unit = "batches" if row["level"] == "batch" else "samples"
    if math.isnan(row["statistic"]):
        return f"latency vs {column}: undefined (constant latency or a single value, n={row['n']} {unit}; {basis})"
    line = (f"latency vs {column}: epsilon^2={row['statistic']:.2f} (p={row['p_value']:.2g}, n={row['n']} {unit}; "
            f"{basis})")
    if row["p_value"] < 0.05:
        line += f"; latency differs across values of {column}"
    return line


# ---------------------------------------------------------------------------------------- membership
def slice_members(
    samples: pd.DataFrame, slices: pd.DataFrame | Iterable[tuple[str, str]], *, numeric_bins: int | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """Sample ids of named slices.

    Args:
        samples: the per-sample table the slices were computed from (bucket edges depend on it).
        slices: a table with ``split`` and ``slice`` columns (from :func:`slice_metrics` or
            :func:`find_weak_slices`), or (split, slice name) pairs. Pair slices join two names with
            :data:`PAIR_JOIN`.
        numeric_bins: the value used to compute the slices; ``None`` reads ``slices.attrs["numeric_bins"]``
            (set by :func:`slice_metrics`), else 4.

    Returns:
        (split, slice) -> sorted int64 sample ids; a slice name that matches nothing maps to an empty array.
    """
    ids = samples["sample_id"].to_numpy(dtype=np.int64)
    return {key: np.sort(ids[mask]) for key, mask in slice_masks(samples, slices, numeric_bins=numeric_bins).items()}


def slice_masks(
    samples: pd.DataFrame, slices: pd.DataFrame | Iterable[tuple[str, str]], *, numeric_bins: int | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """Like :func:`slice_members`, but (split, slice) -> (len(samples),) bool mask over the rows of ``samples``."""
    if isinstance(slices, pd.DataFrame):
        wanted = list(zip(slices["split"].astype(str), slices["slice"].astype(str), strict=True))
        bins = numeric_bins or slices.attrs.get("numeric_bins", 4)
    else:
        wanted = [(str(s), str(n)) for s, n in slices]
        bins = numeric_bins or 4
    slice_columns(samples, None)
    split_of = samples["split"].astype(str).to_numpy()
    split_masks: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    columns = [c for c in samples.columns if c not in ("sample_id", "split")]
    keyed: set[str] = set()

    def single_mask(name: str) -> np.ndarray | None:
        if name in masks:
            return masks[name]
        for column in columns:
            if column in keyed or not (name.startswith(f"{column}=") or name.startswith(f"{column} in ")):
                continue
            keyed.add(column)
            key = slice_key(samples, column, bins)
            for code in range(len(key.values)):
                masks[key.slice_name(code)] = key.codes == code
            if name in masks:
                return masks[name]
        return None

    out: dict[tuple[str, str], np.ndarray] = {}
    for split, name in wanted:
        mask = single_mask(name)
        if mask is None:
            for match in re.finditer(re.escape(PAIR_JOIN), name):
                left, right = single_mask(name[: match.start()]), single_mask(name[match.end():])
                if left is not None and right is not None:
                    mask = left & right
                    break
        if split not in split_masks:
            split_masks[split] = split_of == split
        out[(split, name)] = np.zeros(len(samples), dtype=bool) if mask is None else mask & split_masks[split]
    return out


def slice_epoch_accuracy(
    samples: pd.DataFrame,
    slices: pd.DataFrame,
    correct: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    max_slices: int = 50,
    prefix: str = "dq.slice",
) -> dict[str, list[tuple[int, float]]]:
    """Accuracy per epoch of named slices, as MLflow metric histories.

    Args:
        samples: the per-sample table.
        slices: rows with ``split`` and ``slice`` (from :func:`slice_metrics` / :func:`find_weak_slices`);
            the first ``max_slices`` rows are used.
        correct: split -> (epochs (E,) int, correct (E, N) float, 1/0 per epoch and sample id, NaN where
            missing), e.g. ``(history.epochs, history.fields["correct"])`` of a ``SplitHistory``.

    Returns:
        metric key (:func:`metric_key`) -> [(epoch, accuracy), ...], epochs without any recorded member left out.
    """
    members = slice_members(samples, slices.head(max_slices))
    out: dict[str, list[tuple[int, float]]] = {}
    for (split, name), ids in members.items():
        if split not in correct or not len(ids):
            continue
        epochs, values = correct[split]
        ids = ids[ids < values.shape[1]]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch where no member was recorded: NaN
            per_epoch = np.nanmean(values[:, ids], axis=1) if len(ids) else np.full(len(epochs), np.nan)
        out[metric_key(prefix, split, name, "accuracy")] = [
            (int(e), float(v)) for e, v in zip(epochs, per_epoch, strict=True) if np.isfinite(v)
        ]
    return out


_METRIC_UNSAFE = re.compile(r"[^\w\-./:]+")


def metric_key(*parts: str) -> str:
    """An MLflow metric key from parts joined by ``.``, readable and within MLflow's character set:
    ``metric_key("dq.slice", "train", "source=forum AND length in (120, 250]", "accuracy")`` is
    ``"dq.slice.train.source_forum_AND_length_in_120-250.accuracy"`` (at most 250 characters)."""
    cleaned = []
    for part in parts:
        text = re.sub(r"\s*,\s*", "-", str(part))
        text = re.sub(r"[()\[\]]", "", text)
        cleaned.append(_METRIC_UNSAFE.sub("_", text).strip("_"))
    return ".".join(cleaned)[:250]
