"""A :class:`~dq_plugins.analysis.task_result.TaskResult` -> sink: what a multi-label or token
classification run writes.

- ``dq/samples.parquet``: one row per (split, sample_id);
- ``dq/sample_labels.parquet`` (multi-label) or ``dq/tokens.parquet`` (tokens): the finer rows;
- ``dq/issues.json``: the issue table, an MLflow table the UI renders;
- ``dq/slices.json``: one row per (split, class);
- ``dq/token_issues.html`` (tokens): the most suspicious sequences;
- the ``dq.*`` metrics and the tag ``dq.task``.
"""

from __future__ import annotations

from typing import Any

from dq_plugins.schema import ISSUES_PATH, SAMPLE_LABELS_PATH, SAMPLES_PATH, SLICES_PATH, TOKENS_PATH
from dq_plugins.sinks.publish import add_metrics, warn_if_untrusted

TABLE_PATHS = {"sample_labels": SAMPLE_LABELS_PATH, "tokens": TOKENS_PATH}
"""Parquet artifact of each extra table of a :class:`TaskResult`."""

TASK_TAG = "dq.task"


def publish_task_result(result: Any, sink: Any) -> None:
    """Queue every output of ``result`` on ``sink`` (the caller flushes)."""
    result.samples.to_parquet(sink.stage_path(SAMPLES_PATH), index=False)
    sink.add_artifact(SAMPLES_PATH)
    for name, frame in result.tables.items():
        path = TABLE_PATHS[name]
        frame.to_parquet(sink.stage_path(path), index=False)
        sink.add_artifact(path)
    sink.add_table(result.issues, ISSUES_PATH)
    if result.slices is not None:
        sink.add_table(result.slices, SLICES_PATH)
    for path, page in result.html.items():
        sink.stage_path(path).write_text(page, encoding="utf-8")
        sink.add_artifact(path)
    sink.add_tag(TASK_TAG, result.task)
    add_metrics(sink, result.metrics, result.epoch_metrics)
    warn_if_untrusted(result)
