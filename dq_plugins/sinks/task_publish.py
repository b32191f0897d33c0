"""A :class:`~dq_plugins.analysis.task_result.TaskResult` -> sink: what a multi-label or token
classification run writes.

- ``dq/samples.parquet``: one row per (split, sample_id);
- ``dq/sample_labels.parquet`` (multi-label) or ``dq/tokens.parquet`` (tokens): the finer rows;
- ``dq/issues.json``: the issue table, an MLflow table the UI renders;
- ``dq/slices.json``: one row per (split, class);
- ``dq/leakage.json``: held-out rows that copy a train row (with input fingerprints);
- ``dq/token_issues.html`` (tokens): the most suspicious sequences;
- ``dq/embedding_map.png`` when the train rows have embedding coordinates (coloured by ``cluster``:
  a multi-label ``label`` is a set, a token task's a sequence of tags);
- the ``dq.*`` metrics and the tag ``dq.task``.
"""

from __future__ import annotations

from typing import Any

from dq_plugins.schema import (
    EMBEDDING_MAP_PATH, ISSUES_PATH, LEAKAGE_PATH, SAMPLE_LABELS_PATH, SAMPLES_PATH, SLICES_PATH, TOKENS_PATH, TRAIN,
)
from dq_plugins.sinks.publish import add_metrics, guarded, warn_if_untrusted

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
    if getattr(result, "leakage", None) is not None:
        sink.add_table(result.leakage, LEAKAGE_PATH)
    for path, page in result.html.items():
        sink.stage_path(path).write_text(page, encoding="utf-8")
        sink.add_artifact(path)
    sink.add_tag(TASK_TAG, result.task)
    add_metrics(sink, result.metrics, result.epoch_metrics)
    warn_if_untrusted(result)
    train_rows = result.samples[result.samples["split"] == TRAIN] if "split" in result.samples else result.samples
    if len(train_rows) and "x2d" in train_rows and bool(train_rows["x2d"].notna().any()):
        guarded("the embedding map", _embedding_map, train_rows, sink)


def _embedding_map(train_rows: Any, sink: Any) -> None:
    from dq_plugins.figures.embedding_map import embedding_map

    sink.add_figure(embedding_map(train_rows, "Embedding map, train (colour = cluster)", colour_by="cluster"),
                    EMBEDDING_MAP_PATH)
