"""Input copies and leakage for a multi-label or token classification run (the per-sample table of a task).

The same evidence and merge as single-label runs (:func:`dq_plugins.analysis.pipeline.merge_input_copies`): the
input fingerprints of :mod:`dq_plugins.recording.fingerprints`, matched by :func:`dq_plugins.scores.copies.find_copies`
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
    from dq_plugins.analysis.pipeline import merge_input_copies
    from dq_plugins.scores.copies import find_copies

    samples = result.samples
    if not fingerprints or samples.empty:
        return result
    copies = find_copies(fingerprints, reference=TRAIN)
    parts, leaks, metrics = [], [], {}
    for split in samples["split"].unique():
        frame, kind, similarity = merge_input_copies(samples[samples["split"] == split], copies.get(split))
        parts.append(frame)
        metrics[split_metric_key("num_input_copies", split)] = float(frame["is_near_duplicate"].sum())
        if split != TRAIN:
            hit = frame["is_leaked"].to_numpy()
            metrics[split_metric_key("num_leaked", split)] = float(hit.sum())
            leaks.append(pd.DataFrame({"split": split, "sample_id": frame["sample_id"].to_numpy()[hit],
                                       "train_duplicate_of": frame["train_duplicate_of"].to_numpy()[hit],
                                       "kind": kind[hit], "similarity": similarity[hit]},
                                      columns=list(TASK_LEAKAGE_COLUMNS)))
    result.samples = pd.concat(parts).loc[samples.index].reset_index(drop=True)
    result.metrics = {**result.metrics, **metrics}
    if leaks:
        result.leakage = pd.concat(leaks, ignore_index=True).sort_values(["kind", "split", "sample_id"]).reset_index(
            drop=True)
    return result
