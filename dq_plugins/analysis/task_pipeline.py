"""The one analysis of a multi-label or token classification run, at the end of fit and in ``dq analyze``.

:func:`analyze_task` is the task counterpart of :func:`dq_plugins.analysis.pipeline.analyze`: the end of a fit
(:meth:`dq_plugins.recording.tasks.TaskRouter.finish`) and the rerun from a run's raw record
(:func:`dq_plugins.sinks.offline.reanalyze`) both call it, so both compute the same tables from the same record.
Its steps, in order:

1. the task's own analysis by slot (:func:`~dq_plugins.analysis.multilabel.analyze_multilabel` or
   :func:`~dq_plugins.analysis.tokens.analyze_tokens`);
2. the embedding columns (:func:`~dq_plugins.analysis.task_embeddings.add_task_embeddings`), the embeddings'
   sample ids turned into slots first;
3. the ``latency_ms`` column (:func:`add_task_latency`), when per-slot latencies are given;
4. the slot columns turned into sample ids (:func:`~dq_plugins.analysis.task_result.with_sample_ids`);
5. the input copies and leakage (:func:`~dq_plugins.analysis.task_copies.add_task_copies`), by sample id.

What a caller adds around it stays with the caller: the end of fit merges the metadata it recorded
(:func:`~dq_plugins.analysis.task_metadata.add_metadata`); ``dq analyze`` carries the metadata and latency columns
over from the run's previous ``dq/samples.parquet``.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, Union

import numpy as np

from dq_plugins.analysis.embeddings import map_projection
from dq_plugins.analysis.pipeline import MAX_ISSUE_ROWS
from dq_plugins.analysis.task_result import TaskResult, with_sample_ids
from dq_plugins.recording.multilabel import MultiLabelHistory
from dq_plugins.recording.tokens import TokenHistory
from dq_plugins.schema import LATENCY_COLUMN, split_metric_key

EmbeddingArrays = dict[str, tuple[np.ndarray, np.ndarray]]
"""split -> ``(ids (M,) int64 sample ids, embeddings (M, D))``."""

FingerprintArrays = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
"""split -> ``(ids (M,) int64 sample ids, hashes (M,) int64, sketches (M, D))``."""

Arrays = TypeVar("Arrays", EmbeddingArrays, FingerprintArrays)

Source = Union[Arrays, Callable[[], Arrays], None]
"""The arrays, or a function returning them that is called when their step runs (the end of fit stages their
files there, so that a failure to stage them is that step's failure); ``None``: the step is skipped."""

TokenStrings = Callable[[str, int], Union[Sequence[str], None]]
"""``(split, sample_id) -> the tokens of the sequence`` (by input position), or ``None`` when unknown."""


def analyze_task(
    task: str,
    histories: dict[str, MultiLabelHistory | TokenHistory],
    *,
    max_issue_rows: int = MAX_ISSUE_ROWS,
    embeddings: Source[EmbeddingArrays] = None,
    fingerprints: Source[FingerprintArrays] = None,
    projection: str | None = None,
    neighbors: dict[str, tuple[np.ndarray, Any]] | None = None,
    latency: Mapping[str, np.ndarray] | None = None,
    token_strings: TokenStrings | None = None,
    class_names: Sequence[str] | None = None,
    warn_optional_failures: bool = False,
) -> TaskResult:
    """The :class:`~dq_plugins.analysis.task_result.TaskResult` of a multi-label or token run (steps: module doc).

    Args:
        task: ``"multilabel"`` or ``"token_classification"`` (the histories' ``task``).
        histories: split -> the task's host record, indexed by slot; a split with sparse ids has ``sample_ids``
            ``(K,)``, the sample id of each slot (``None``: the slots are the ids).
        max_issue_rows: rows of the issue table.
        embeddings: the embeddings by sample id (:data:`Source`); a split without any keeps its rows as they are.
        fingerprints: the input fingerprints by sample id (:data:`Source`).
        projection: the 2-D map's method (``"auto"``, ``"graph"``, ``"umap"``, ``"pca"``); ``None``:
            ``$DQ_PLUGINS_PROJECTION``, else ``"auto"``.
        neighbors: split -> ``(slots, KnnGraph)`` searched beforehand (by every rank of a job), used where the
            analysed rows are those slots.
        latency: split -> ``(K,)`` float milliseconds per slot, NaN where not timed; a split with no finite value
            adds nothing. ``None``: no ``latency_ms`` column.
        token_strings: a token run's tokens by sample id, for the HTML view (``None``: positions only).
        class_names: a token run's tag names by id, for the HTML view (``None``: the ids).
        warn_optional_failures: ``True`` (the end of fit): a failure of the embedding or input-copy step is a
            warning and the result is kept without those columns; ``False`` (``dq analyze``): it is raised.

    Returns:
        The task's result with every table keyed by sample id.

    Raises:
        ValueError: ``task`` is not a multi-label or token classification task.
    """
    tables = {split: h.sample_ids for split, h in histories.items() if getattr(h, "sample_ids", None) is not None}
    if task == MultiLabelHistory.task:
        from dq_plugins.analysis.multilabel import analyze_multilabel

        result = analyze_multilabel(histories, max_issue_rows=max_issue_rows)
    elif task == TokenHistory.task:
        from dq_plugins.analysis.tokens import analyze_tokens

        result = analyze_tokens(histories, max_issue_rows=max_issue_rows, class_names=class_names,
                                token_strings=_by_slot(token_strings, tables))
    else:
        raise ValueError(f"Expected `task` to be {MultiLabelHistory.task!r} or {TokenHistory.task!r} but got "
                         f"{task!r}. HINT: single-label runs are analysed by `dq_plugins.analysis.pipeline.analyze`.")
    if embeddings is not None:
        def add_embeddings(result: TaskResult) -> TaskResult:
            from dq_plugins.analysis.task_embeddings import add_task_embeddings

            by_slot = {split: (np.searchsorted(tables[split], ids) if split in tables else ids, values)
                       for split, (ids, values) in _read(embeddings).items()}  # the analysis indexes by slot
            return add_task_embeddings(result, histories, by_slot, neighbors=neighbors,
                                       projection=map_projection(projection))

        result = _optional_step(result, add_embeddings, "embedding", "embedding", warn_optional_failures)
    result = add_task_latency(result, latency or {})
    result = with_sample_ids(result, tables)
    if fingerprints is not None:
        def add_copies(result: TaskResult) -> TaskResult:
            from dq_plugins.analysis.task_copies import add_task_copies

            return add_task_copies(result, _read(fingerprints))

        result = _optional_step(result, add_copies, "input-copy", "copy", warn_optional_failures)
    return result


def add_task_latency(result: TaskResult, latency: Mapping[str, np.ndarray]) -> TaskResult:
    """``result`` (its tables by slot) with the ``latency_ms`` column (NaN where not timed) and
    ``dq.mean_latency_ms.<split>``, when a split of ``latency`` (split -> ``(K,)`` ms per slot) has a finite value;
    unchanged otherwise (:mod:`dq_plugins.recording.latency` times the latest epoch of each split)."""
    timed = {split: latest for split, latest in latency.items() if np.isfinite(latest).any()}
    if not timed or result.samples.empty:
        return result
    samples = result.samples.copy()
    values = np.full(len(samples), np.nan)
    for split, latest in timed.items():
        rows = (samples["split"] == split).to_numpy()
        slots = samples.loc[rows, "sample_id"].to_numpy(dtype=np.int64)
        inside = slots < latest.size
        values[np.flatnonzero(rows)[inside]] = latest[slots[inside]]
        if np.isfinite(values[rows]).any():
            mean = float(np.nanmean(values[rows]))
            result.metrics = {**result.metrics, split_metric_key("mean_latency_ms", split): mean}
    samples[LATENCY_COLUMN] = values
    result.samples = samples
    return result


def _read(source: Arrays | Callable[[], Arrays]) -> Arrays:
    return source() if callable(source) else source


def _by_slot(token_strings: TokenStrings | None, tables: dict[str, np.ndarray]) -> TokenStrings | None:
    """``token_strings`` asked by slot (the analysis runs by slot; the dataset knows the sample ids)."""
    if token_strings is None or not tables:
        return token_strings
    return lambda split, slot: token_strings(split, int(tables[split][slot]) if split in tables else slot)


def _optional_step(result: TaskResult, step: Callable[[TaskResult], TaskResult], what: str, columns: str,
                   warn: bool) -> TaskResult:
    """``step(result)``; with ``warn``, a failure of it is a warning (naming the ``what`` analysis and the ``columns``
    left out, blaming the caller of :func:`analyze_task`'s caller) and ``result`` is returned as it was."""
    if not warn:
        return step(result)
    try:
        return step(result)
    except Exception:  # noqa: BLE001 - these columns are optional; the task's own results are not
        warnings.warn(f"dq_plugins: the {what} analysis failed; the {result.task} results are kept without the "
                      f"{columns} columns.\n{traceback.format_exc()}", RuntimeWarning, stacklevel=4)
        return result
