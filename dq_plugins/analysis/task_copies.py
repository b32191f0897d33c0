"""Input copies and leakage for a multi-label or token classification run (the per-sample table of a task).

The same evidence as single-label runs (:func:`dq_plugins.analysis.pipeline.add_copy_columns`): the input
fingerprints of :mod:`dq_plugins.recording.fingerprints`, matched by :func:`dq_plugins.scores.copies.find_copies`
(exact copies by hash, near copies by the centred sketches). Per row of ``dq/samples.parquet``:

- ``near_duplicate_of`` / ``is_near_duplicate`` / ``near_duplicate_score``: the input copy within the split where
  there is one, else the embedding rule's near-duplicate (semantic), unless that rule paired more than
  :data:`~dq_plugins.analysis.pipeline.COLLAPSED_EMBEDDING_SHARE` of the split (a collapsed embedding space);
- :data:`~dq_plugins.schema.COPY_COLUMNS`: the train row a held-out row copies (``train_duplicate_of``), whether it
  does (``is_leaked``) and how closely (``leaked_score``).

The run logs ``dq.num_input_copies.<split>`` and ``dq.num_leaked.<split>`` and the leakage table
(``dq/leakage.json``: ``split, sample_id, train_duplicate_of, kind, similarity``). Conflicting labels between
copies are not looked at for these tasks (labels are sets or per-token tags).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dq_plugins.schema import TRAIN, split_metric_key

TASK_LEAKAGE_COLUMNS: tuple[str, ...] = ("split", "sample_id", "train_duplicate_of", "kind", "similarity")
"""Columns of ``dq/leakage.json`` for a multi-label or token run."""


def add_task_copies(result: Any, fingerprints: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Any:
    """``result`` (a :class:`~dq_plugins.analysis.task_result.TaskResult` whose tables hold sample ids) with the
    copy columns, metrics and leakage table; unchanged without fingerprints.

    Args:
        fingerprints: split -> ``(ids (M,) int64 sample ids, hashes (M,) int64, sketches (M, D))``.
    """
    from dq_plugins.analysis.pipeline import COLLAPSED_EMBEDDING_SHARE
    from dq_plugins.scores.copies import find_copies

    samples = result.samples
    if not fingerprints or samples.empty:
        return result
    copies = find_copies(fingerprints, reference=TRAIN)
    parts, leaks, metrics = [], [], {}
    for split in samples["split"].unique():
        frame = samples[samples["split"] == split].copy()
        ids = frame["sample_id"].to_numpy(np.int64)
        none, nan = np.full(len(frame), -1, dtype=np.int64), np.full(len(frame), np.nan)
        input_copy, input_similarity, leaked, similarity = none, nan, none, nan
        kind = np.full(len(frame), "", dtype=object)
        found_copies = copies.get(split)
        if found_copies is not None:
            at = pd.Series(np.arange(found_copies.ids.size), index=found_copies.ids).reindex(ids)
            found = at.notna().to_numpy()
            rows = at.fillna(0).to_numpy(dtype=np.int64)
            input_copy = np.where(found, found_copies.copy_of[rows], -1)
            input_similarity = np.where(found & (input_copy >= 0), found_copies.copy_similarity[rows], np.nan)
            leaked = np.where(found, found_copies.train_copy_of[rows], -1)
            kind = np.where(found & (leaked >= 0), found_copies.train_copy_kind[rows], "").astype(object)
            similarity = np.where(found & (leaked >= 0), found_copies.train_copy_similarity[rows], np.nan)
        previous = frame["near_duplicate_of"].to_numpy(np.int64) if "near_duplicate_of" in frame else none
        if len(previous) and (previous >= 0).mean() > COLLAPSED_EMBEDDING_SHARE:
            previous = none  # the embedding space collapsed, not the data
        duplicate_of = np.where(input_copy >= 0, input_copy, previous).astype(np.int64)
        embedding_score = frame["near_duplicate_score"].to_numpy(np.float64) if "near_duplicate_score" in frame else nan
        frame["near_duplicate_of"] = duplicate_of
        frame["is_near_duplicate"] = duplicate_of >= 0
        frame["near_duplicate_score"] = np.where(input_copy >= 0, np.fmax(embedding_score, input_similarity),
                                                 embedding_score)
        frame["train_duplicate_of"] = leaked.astype(np.int64)
        frame["is_leaked"] = leaked >= 0
        frame["leaked_score"] = np.nan_to_num(similarity, nan=0.0)
        parts.append(frame)
        metrics[split_metric_key("num_input_copies", split)] = float((input_copy >= 0).sum())
        if split != TRAIN:
            metrics[split_metric_key("num_leaked", split)] = float((leaked >= 0).sum())
            hit = leaked >= 0
            leaks.append(pd.DataFrame({"split": split, "sample_id": ids[hit], "train_duplicate_of": leaked[hit],
                                       "kind": kind[hit], "similarity": similarity[hit]},
                                      columns=list(TASK_LEAKAGE_COLUMNS)))
    result.samples = pd.concat(parts).loc[samples.index].reset_index(drop=True)
    result.metrics = {**result.metrics, **metrics}
    if leaks:
        result.leakage = pd.concat(leaks, ignore_index=True).sort_values(["kind", "split", "sample_id"]).reset_index(
            drop=True)
    return result
