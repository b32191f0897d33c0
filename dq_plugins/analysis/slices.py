"""Metrics per slice of the per-sample table: :func:`slice_metrics` (``dq/slices.json``).

Per split and slice (:mod:`.slice_keys` says what a slice is): size, accuracy, macro F1, mean
mislabel_score, label-issue rate, expected calibration error, mean latency. Pure pandas/numpy on
the per-sample table: no framework, no MLflow.

Accuracy is measured against the *given* labels (``pred == label``), which may be noisy: a slice
full of mislabeled samples looks weak too; its ``label_issue_rate`` tells the two apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dq_plugins.logs import warn
from dq_plugins.analysis.slice_keys import _check_positive_int, slice_columns, slice_key
from dq_plugins.schema import LATENCY_COLUMN, SLICE_TABLE_COLUMNS, SLICE_TABLE_METRICS, ordered_splits

CONFIDENCE_COLUMN = "confidence_pred"
"""Max softmax probability of the final prediction; the expected calibration error needs it."""

ECE_BINS = 10
"""Equal-width confidence bins of the expected calibration error (Guo et al. 2017)."""

SLICE_COLUMNS: tuple[str, ...] = SLICE_TABLE_COLUMNS
"""Columns of :func:`slice_metrics` (and of ``dq/slices.json``; :data:`dq_plugins.schema.SLICE_TABLE_COLUMNS`)."""

SLICE_METRICS: tuple[str, ...] = SLICE_TABLE_METRICS
"""The numeric columns of a slice table: what a rule ``over="slices"`` can test."""


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


MIN_CLASS_SHARE = 0.05
"""A class enters a slice's macro F1 when it holds at least this share of the slice's given labels."""


def macro_f1_by_slice(codes: np.ndarray, rows: _Rows, size: int) -> np.ndarray:
    """(S,) macro F1 of ``pred`` (the final prediction) vs ``label`` (the given label) within each slice.

    The macro average runs over the classes that hold at least :data:`MIN_CLASS_SHARE` of the slice's
    *given labels* (sklearn's ``f1_score(label, pred, labels=those classes, average="macro",
    zero_division=0)``). So a slice that holds one class is scored on that class only, and a k-means
    cluster of one class with a few stray labels of other classes (often label noise, which ``accuracy``
    and ``label_issue_rate`` count) is not scored near ``1 / classes`` by the zero F1 of each stray class.
    Per class: ``F1 = 2 TP / (support + predicted)``.
    """
    c = rows.num_classes
    support = np.bincount(codes * c + rows.label_class, minlength=size * c).reshape(size, c)
    predicted = np.bincount(codes * c + rows.pred_class, minlength=size * c).reshape(size, c)
    true_pos = np.bincount(codes * c + rows.label_class, weights=rows.correct, minlength=size * c).reshape(size, c)
    present = (support > 0) & (support >= MIN_CLASS_SHARE * support.sum(1, keepdims=True))
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
        warn(
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
