"""Embeddings of a multi-label or token classification run: the embedding columns of its per-sample table.

Pure host code over :func:`~dq_plugins.analysis.embeddings.analyze_embeddings` (the same kNN graph
and scores as single-label), without the parts that compare one class per sample:

- every task: ``outlier_score``, ``is_outlier``, ``near_duplicate_of``, ``is_near_duplicate``,
  ``near_duplicate_score``, ``cluster``, ``x2d``, ``y2d`` (:data:`~dq_plugins.schema.LABEL_FREE_EMBEDDING_COLUMNS`);
- multi-label: also ``neighbor_disagreement``, the similarity-weighted mean Jaccard distance between a
  sample's label set and its neighbours' (:func:`~dq_plugins.scores.neighbors.neighbor_label_set_disagreement`).

A token task has one embedding per sequence. The task's own columns (``mislabel_score``, flags) are
not changed: the embedding columns are appended, and rows without an embedding get the fill values
of :data:`~dq_plugins.analysis.embeddings.EMBEDDING_FILL`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dq_plugins.analysis.task_result import TaskResult


def add_task_embeddings(
    result: TaskResult,
    histories: dict[str, Any],
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    projection: str = "auto",
    neighbors: dict[str, tuple[np.ndarray, Any]] | None = None,
) -> TaskResult:
    """``result`` with the embedding columns in its ``samples`` and the embedding metrics
    (``dq.num_near_duplicates``, ``dq.num_outliers``, ``dq.num_clusters``, ``dq.embedding_analysis_seconds``
    per split) in its ``metrics``.

    Args:
        result: the task's analysis (:func:`~dq_plugins.analysis.multilabel.analyze_multilabel` or
            :func:`~dq_plugins.analysis.tokens.analyze_tokens`); its ``samples`` has ``split`` and ``sample_id``.
        histories: split -> the task's host record; a ``MultiLabelHistory``'s ``labels`` ``(N, C)`` give the
            label sets (indexed by sample id).
        embeddings: split -> ``(ids (M,) int64, embeddings (M, D))``; a split without one keeps its rows as they are.
        projection: the 2-D map's method (``scores.projection.project_2d``).
        neighbors: split -> ``(ids, KnnGraph)``, a graph searched beforehand (by every rank of a job); used when
            the analysed rows are exactly ``ids``, else the graph is searched here.

    Returns:
        ``result``, its ``samples`` replaced by a frame with the same rows in the same order; unchanged
        when no split of ``samples`` has embeddings.
    """
    from dq_plugins.analysis.embeddings import analyze_embeddings, embedding_columns, merge_embedding_columns

    samples = result.samples
    if samples.empty or not any(split in embeddings for split in samples["split"].unique()):
        return result
    multilabel = result.task == "multilabel"
    none = pd.DataFrame({"sample_id": np.zeros(0, np.int64),
                         **{c: pd.Series(dtype=np.float64) for c in embedding_columns(False, multilabel)}})
    parts, metrics = [], {}
    position = np.arange(len(samples))
    for split in samples["split"].unique():
        rows = samples[samples["split"] == split].assign(_position=position[(samples["split"] == split).to_numpy()])
        if split not in embeddings:
            parts.append(merge_embedding_columns(rows, none))  # the fill values, so every split has the columns
            continue
        ids, values = embeddings[split]
        keep = np.isin(ids, rows["sample_id"].to_numpy())
        ids, values = np.asarray(ids, dtype=np.int64)[keep], values[keep]
        labels = getattr(histories.get(split), "labels", None)
        label_sets = None
        if multilabel and labels is not None:
            label_sets = (np.asarray(labels)[ids] > 0).astype(np.int8)  # -1 rows (never seen) are not in `rows`
        found = (neighbors or {}).get(split)
        graph = found[1] if found is not None and np.array_equal(found[0], ids) else None
        analysis = analyze_embeddings(values, ids, label_sets=label_sets, projection=projection, neighbors=graph)
        parts.append(merge_embedding_columns(rows, analysis.samples))
        metrics.update(analysis.summary.metrics(split))
    merged = pd.concat(parts, ignore_index=True).sort_values("_position", kind="stable")
    result.samples = merged.drop(columns="_position").reset_index(drop=True)
    result.metrics = {**result.metrics, **metrics}
    return result
