"""Metadata on the per-sample table of a multi-label or token classification run: the columns merged
into ``dq/samples.parquet`` and one slice per metadata value (or quantile bucket) in ``dq/slices.json``.

Pure pandas/numpy. A slice here counts samples (sequences for a token task): ``size``, the mean
``mislabel_score`` and ``label_issue_rate``, the share of its samples flagged (``is_label_issue``).
Slices are cut as in :mod:`dq_plugins.analysis.slice_keys` (a value each, or quantile buckets of a
numeric column with many values; missing values form ``<NA>``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dq_plugins.analysis.slice_keys import slice_key
from dq_plugins.analysis.task_result import TaskResult

METADATA_SLICE_COLUMNS: tuple[str, ...] = (
    "split", "slice", "column", "value", "size", "mean_mislabel_score", "label_issue_rate",
)
"""Columns of a metadata slice row (the task's own slice rows have NaN where they lack one)."""


def metadata_slices(samples: pd.DataFrame, columns: Sequence[str], numeric_bins: int = 4) -> pd.DataFrame:
    """One row per (split, slice of a metadata column) of ``samples`` (:data:`METADATA_SLICE_COLUMNS`).

    Args:
        samples: the task's per-sample table with ``split``, ``mislabel_score``, ``is_label_issue`` and ``columns``.
        columns: the metadata columns to slice.
        numeric_bins: quantile buckets of a numeric column with more distinct values than this.
    """
    rows = []
    for column in columns:
        key = slice_key(samples, column, numeric_bins)
        table = pd.DataFrame({"split": samples["split"].to_numpy(), "code": key.codes,
                              "score": samples["mislabel_score"].to_numpy(dtype=np.float64),
                              "flag": samples["is_label_issue"].to_numpy(dtype=bool)})
        for (split, code), part in table.groupby(["split", "code"], sort=True):
            rows.append({"split": split, "slice": key.slice_name(int(code)), "column": column,
                         "value": key.values[int(code)], "size": len(part),
                         "mean_mislabel_score": float(part["score"].mean()),
                         "label_issue_rate": float(part["flag"].mean())})
    return pd.DataFrame(rows, columns=list(METADATA_SLICE_COLUMNS))


def add_metadata(result: TaskResult, metadata: pd.DataFrame | None) -> TaskResult:
    """``result`` with the metadata columns merged into its samples (on ``split`` and ``sample_id``, or
    ``sample_id`` alone when ``metadata`` has no ``split``) and their slices after its own; unchanged when
    ``metadata`` is ``None`` or has no column besides the keys."""
    if metadata is None:
        return result
    on = ["split", "sample_id"] if "split" in metadata.columns else ["sample_id"]
    columns = [c for c in metadata.columns if c not in ("split", "sample_id")]
    if not columns:
        return result
    metadata = metadata.drop_duplicates(on, keep="last")
    result.samples = result.samples.merge(metadata[on + columns], on=on, how="left")
    extra = metadata_slices(result.samples, columns)
    result.slices = extra if result.slices is None else pd.concat([result.slices, extra], ignore_index=True)
    return result
