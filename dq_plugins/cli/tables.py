"""Tables of the ``dq`` commands: formatting, the per-split summary, noise-rate and trust lines, slices.

Pure pandas on a run's per-sample table and metrics; no MLflow calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dq_plugins.schema import ordered_splits, summary_metric_key


SLICE_COLUMNS: tuple[str, ...] = ("label", "cluster")
"""Columns of the per-sample table whose values define the slices that ``report`` and ``compare`` show
(``cluster`` only when the embeddings feature added it)."""


COMPARABLE_SLICE_COLUMNS: tuple[str, ...] = ("label",)
"""Slice columns whose values mean the same in two runs; ``compare`` leaves out ``cluster``: k-means
cluster ids are numbered anew in each run, so ``cluster=3`` of one run is not ``cluster=3`` of another."""


MIN_SLICE_SIZE = 5
"""Slices with fewer samples are left out of the weakest-slices table (their accuracy is noise)."""


def format_table(frame: pd.DataFrame) -> str:
    """Plain-text table: floats with 4 decimals, text left-aligned, missing values as ``-``, ``(none)`` when empty."""
    if frame.empty:
        return "(none)"
    frame = frame.copy()
    for column in frame.columns:  # text reads better left-aligned
        if not (pd.api.types.is_string_dtype(frame[column]) or frame[column].dtype == object):
            continue
        text = frame[column].astype(str)
        width = max(text.str.len().max(), len(str(column)))
        frame[column] = text.str.ljust(width)
        frame = frame.rename(columns={column: str(column).ljust(width)})
    return frame.to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.4f}")


def format_numbers(frame: pd.DataFrame, columns: Sequence[str], integer_rows: pd.Series) -> pd.DataFrame:
    """A copy of ``frame`` whose ``columns`` hold text: counts (``integer_rows``) without decimals,
    other values with 4, differences (columns starting with ``B-A``) signed, missing as ``-``; right-aligned."""
    shown = frame.copy()
    for column in columns:
        sign = "+" if column.startswith("B-A") else ""
        text = [
            "-" if pd.isna(value) else (f"{value:{sign}.0f}" if integer else f"{value:{sign}.4f}")
            for value, integer in zip(frame[column], integer_rows, strict=True)
        ]
        width = max([len(column), *map(len, text)])
        shown[column] = [cell.rjust(width) for cell in text]
        shown = shown.rename(columns={column: column.rjust(width)})
    return shown


def _metric(metrics: dict[str, float], key: str) -> float:
    return float(metrics.get(key, np.nan))


def summary_table(samples: pd.DataFrame, metrics: dict[str, float]) -> pd.DataFrame:
    """One row per split: samples, accuracy (against the given labels), label issues and their
    rate, the estimated noise rate (the run's ``dq.estimated_noise_rate*`` metric, NaN when the run's
    ``dq.flags_trusted*`` is 0), the flags' trust (``dq.flags_trusted*``, 1/0, NaN for older runs) and
    the mean AUM (given-label margin: lower = the model fought the labels more; mislabel_score, a percentile
    rank within the split, would average 0.5 in every split). :func:`report_summary` is the text the report shows."""
    rows = []
    for split in ordered_splits(samples["split"]):
        part = samples[samples["split"] == split]
        trusted = _metric(metrics, summary_metric_key("flags_trusted", split))
        rows.append({
            "split": split,
            "samples": len(part),
            "accuracy": float((part["pred"] == part["label"]).mean()),
            "label_issues": int(part["is_label_issue"].sum()),
            "issue_rate": float(part["is_label_issue"].mean()),
            "est_noise_rate": (
                np.nan if trusted == 0.0 else _metric(metrics, summary_metric_key("estimated_noise_rate", split))
            ),
            "flags_trusted": trusted,
            "mean_aum": float(part["aum"].mean()) if "aum" in part.columns else np.nan,
        })
    return pd.DataFrame(rows)


def report_summary(summary: pd.DataFrame, metrics: dict[str, float]) -> pd.DataFrame:
    """:func:`summary_table` as ``dq report`` shows it: the noise rate with its 95% bootstrap interval
    (``0.3000 [0.2700, 0.3300]``) or ``untrusted``, and the trust with its confidence (``yes (0.95)``)."""
    shown = summary.copy()
    shown["est_noise_rate"] = [noise_rate_text(metrics, split) for split in shown["split"]]
    shown["flags_trusted"] = [trust_text(metrics, split) for split in shown["split"]]
    return shown


def noise_rate_text(metrics: dict[str, float], split: str) -> str:
    """``"0.3000 [0.2700, 0.3300]"``, ``"0.3000"`` (a run without the interval), ``"untrusted"`` or ``"-"``."""
    if _metric(metrics, summary_metric_key("flags_trusted", split)) == 0.0:
        return "untrusted"
    rate = _metric(metrics, summary_metric_key("estimated_noise_rate", split))
    if not np.isfinite(rate):
        return "-"
    low, high = (_metric(metrics, summary_metric_key(f"estimated_noise_rate_{end}", split)) for end in ("low", "high"))
    return f"{rate:.4f} [{low:.4f}, {high:.4f}]" if np.isfinite(low) and np.isfinite(high) else f"{rate:.4f}"


def trust_text(metrics: dict[str, float], split: str) -> str:
    """``"yes (0.95)"`` / ``"NO (0.00)"`` from ``dq.flags_trusted*`` and ``dq.flags_confidence*``; ``"-"`` for older runs."""
    trusted = _metric(metrics, summary_metric_key("flags_trusted", split))
    if not np.isfinite(trusted):
        return "-"
    return f"{'yes' if trusted else 'NO'} ({_metric(metrics, summary_metric_key('flags_confidence', split)):.2f})"


def slice_table(samples: pd.DataFrame, columns: Sequence[str] = SLICE_COLUMNS) -> pd.DataFrame:
    """Per split and per value of each of ``columns`` present: size, accuracy, label-issue rate and
    mean AUM (NaN without an ``aum`` column). The slice is named ``column=value``."""
    frames = []
    for column in (c for c in columns if c in samples.columns):
        grouped = samples.assign(
            _correct=(samples["pred"] == samples["label"]).astype(float),
            _issue=samples["is_label_issue"].astype(float),
            _aum=samples["aum"] if "aum" in samples.columns else np.nan,
        ).groupby(["split", column], sort=True)
        table = grouped.agg(
            size=("sample_id", "size"), accuracy=("_correct", "mean"), issue_rate=("_issue", "mean"),
            mean_aum=("_aum", "mean"),
        ).reset_index()
        table.insert(1, "slice", [f"{column}={value}" for value in table.pop(column)])
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["split", "slice", "size", "accuracy", "issue_rate", "mean_aum"])
    return pd.concat(frames, ignore_index=True)


def weakest_slices(slices: pd.DataFrame, top: int, min_size: int = MIN_SLICE_SIZE) -> pd.DataFrame:
    """The ``top`` slices of at least ``min_size`` samples with the lowest accuracy."""
    big = slices[slices["size"] >= min_size]
    return big.sort_values(["accuracy", "size"], ascending=[True, False]).head(top).reset_index(drop=True)


def _run_line(run: Any) -> str:
    name = run.info.run_name or "-"
    return f"run {run.info.run_id} (name {name!r}, status {run.info.status})"
