"""Latency report: :func:`latency_report`, how prediction latency relates to correctness and to each column.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from dq_plugins.analysis.slice_keys import _is_bucketed, slice_columns
from dq_plugins.analysis.slices import _empty
from dq_plugins.schema import LATENCY_COLUMN, ordered_splits

LATENCY_REPORT_COLUMNS: tuple[str, ...] = (
    "split", "column", "level", "method", "statistic", "p_value", "n", "summary",
)
"""Columns of :func:`latency_report`; ``level`` is the unit compared: "batch", "sample", or "none" (no claim)."""

MIN_MIXED_SHARE = 0.5
"""A categorical column is compared per sample only when at least this share of the samples sits in
batches that hold two or more of its values (the batches mix the compared groups)."""

MIN_BATCHES = 3
"""Fewest batches (per group, for a categorical column: 2) for a batch-level statistic."""


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
