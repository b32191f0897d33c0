"""The result of the end-of-fit analysis of a task other than single-label classification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dq_plugins.analysis.trust import FlagTrust


@dataclass
class TaskResult:
    """What the analysis of a multi-label or token classification run found.

    Attributes:
        task: "multilabel" or "token_classification".
        samples: one row per (split, sample_id), written as ``dq/samples.parquet``.
        issues: the top rows to act on, ``dq/issues.json`` (an MLflow table, bounded).
        metrics: summary metrics (``dq.*``), one value each.
        epoch_metrics: key -> list of (epoch, value), logged as metric histories.
        slices: one row per (split, class), ``dq/slices.json``.
        tables: extra per-row tables by name ("sample_labels" or "tokens"), written as Parquet.
        html: artifact path -> HTML page (the token view).
        trust: split -> whether its flags can be trusted (:mod:`dq_plugins.analysis.trust`).
        rules_report: what the rules did at the end (``None``: no rules, or not evaluated yet).
        leakage: held-out rows that copy a train row (``dq/leakage.json``), ``None`` without input fingerprints
            of a held-out split (:mod:`dq_plugins.analysis.task_copies`).
    """

    task: str
    samples: pd.DataFrame
    issues: pd.DataFrame
    metrics: dict[str, float]
    epoch_metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    slices: pd.DataFrame | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    html: dict[str, str] = field(default_factory=dict)
    trust: dict[str, FlagTrust] = field(default_factory=dict)
    rules_report: Any = None
    leakage: pd.DataFrame | None = None

    def trust_lines(self) -> list[str]:
        """One line per split for the end-of-fit warning and ``dq report``."""
        return [verdict.line(split) for split, verdict in self.trust.items()]


def with_sample_ids(result: TaskResult, tables: dict[str, np.ndarray]) -> TaskResult:
    """``result`` with the slot columns of its tables (``sample_id``, ``near_duplicate_of``) turned into sample ids,
    ``tables``: split -> ``(K,)`` the sample id of each slot (splits with sparse ids; ``-1`` stays ``-1``)."""
    if not tables:
        return result

    def convert(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None or frame.empty or "split" not in frame:
            return frame
        frame = frame.copy()
        for split, table in tables.items():
            rows = (frame["split"] == split).to_numpy()
            for column in ("sample_id", "near_duplicate_of"):
                if column in frame and rows.any():
                    slots = frame.loc[rows, column].to_numpy(dtype=np.int64)
                    frame.loc[rows, column] = np.where(slots >= 0, table[np.maximum(slots, 0)], -1)
        return frame

    result.samples = convert(result.samples)
    result.issues = convert(result.issues)
    result.tables = {name: convert(table) for name, table in result.tables.items()}
    return result
