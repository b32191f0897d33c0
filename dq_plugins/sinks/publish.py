"""Results -> sink: the one place that decides what an analysis writes into a run.

Used at the end of fit (:meth:`dq_plugins.recording.session.DynamicsSession.finish`) and by ``dq analyze``
(:func:`dq_plugins.sinks.offline.analyze_run`), so that an offline rerun writes exactly what a fit
writes: ``dq/samples.parquet``, the issue table, the data map, class overlap, the embedding maps,
the metrics, and the slice tables, weak slices, latency report and rules.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

import numpy as np

from dq_plugins.logs import warn
from dq_plugins.schema import (
    CLASS_OVERLAP_PATH,
    COMPUTED_COLUMNS,
    DATA_MAP_PATH,
    EMBEDDING_HTML_PATH,
    EMBEDDING_MAP_PATH,
    ISSUES_PATH,
    LATENCY_COLUMN,
    LATENCY_PATH,
    LEAKAGE_PATH,
    SAMPLES_PATH,
    SLICES_PATH,
    TRAIN,
    WEAK_SLICES_FIGURE_PATH,
    WEAK_SLICES_PATH,
    ordered_splits,
    split_metric_key,
)
from dq_plugins.sinks.mlflow_sink import MlflowSink

if TYPE_CHECKING:
    from dq_plugins.analysis.pipeline import AnalysisResult


def add_metrics(sink: MlflowSink, metrics: dict[str, float], epoch_metrics: dict[str, list[tuple[int, float]]]) -> None:
    """Queue the run's metrics on ``sink`` (non-finite values left out) and each per-epoch series
    (``key -> [(epoch, value), ...]``, logged with the epoch as step)."""
    for key, value in metrics.items():
        if np.isfinite(value):
            sink.add_metric(key, value)
    for key, values in epoch_metrics.items():
        for epoch, value in values:
            sink.add_metric(key, value, step=epoch, series=True)


def publish_results(
    result: AnalysisResult,
    histories: dict[str, Any],
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
    sink: MlflowSink,
    *,
    texts: dict[int, str] | None = None,
    write_html: bool = True,
    rules: list | None = None,
    pools: dict[str, Any] | None = None,
    rule_history: Any = None,
) -> None:
    """Queue every result of an analysis on ``sink`` (the caller flushes it).

    Args:
        result: the analysis, whose ``samples`` already hold the metadata and latency columns; its
            ``slices``, ``weak_slices``, ``latency`` and ``rules_report`` are set here.
        histories: split -> ``SplitHistory`` (per-epoch slice accuracy is computed from them).
        embeddings: split -> ``(ids, embeddings)``; the pools of ``SelectSimilar`` rule actions.
        texts: train sample id -> text shown on hover in the interactive map; ``None``: no texts.
        write_html: write the interactive map (``dq analyze`` keeps a fit-time map that has texts).
        rules: rules to evaluate at the end (``None`` or empty: none).
        pools: name -> ``EmbeddingPool`` for ``SelectSimilar`` actions.
        rule_history: ``dq/rules.json`` rows of validation-time evaluations, or ``None``.

    Order: the core results (samples, issues, metrics), the slice table, the rules (which read only
    those), then everything drawn or derived for a person (figures, weak slices, latency report). Each
    later step is guarded on its own: an error there becomes a warning (with the traceback) and never
    skips the rules or drops what is already queued.
    """
    result.samples.to_parquet(sink.stage_path(SAMPLES_PATH), index=False)
    sink.add_artifact(SAMPLES_PATH)
    sink.add_table(result.issues, ISSUES_PATH)
    add_metrics(sink, result.metrics, result.epoch_metrics)
    warn_if_untrusted(result)
    samples = result.samples
    meta = metadata_columns(samples)
    slices = guarded("the slice table", _slice_table, result, meta, sink)
    if rules:
        run_rules(result, samples, slices, embeddings, sink, rules, pools or {}, rule_history)
    train_rows = samples[samples["split"] == TRAIN]
    if len(train_rows):
        guarded("the data map", _data_map, train_rows, sink)
    if result.class_overlap is not None:
        sink.add_table(result.class_overlap, CLASS_OVERLAP_PATH)
    if getattr(result, "leakage", None) is not None:
        sink.add_table(result.leakage, LEAKAGE_PATH)
    if len(train_rows) and "x2d" in train_rows and bool(train_rows["x2d"].notna().any()):
        guarded("the embedding map", _embedding_maps, train_rows, texts, write_html, sink)
    if slices is not None:
        guarded("the weak-slice analysis", _weak_slices, result, histories, slices, meta, sink)
    if LATENCY_COLUMN in samples.columns and samples[LATENCY_COLUMN].notna().any():
        guarded("the latency report", _latency_report, result, meta, sink)


def warn_if_untrusted(result: AnalysisResult) -> None:
    """The end-of-fit warning when a split's label-issue flags are not to be trusted
    (:mod:`dq_plugins.analysis.trust`): one line per split, with the reasons."""
    trust = result.trust
    if all(verdict.trusted for verdict in trust.values()):
        return
    warn(
        "dq_plugins: the label-issue flags are not to be trusted; the estimated noise rate is not logged for:\n  "
        + "\n  ".join(verdict.line(split) for split, verdict in trust.items() if not verdict.trusted)
        + "\nHINT: train longer (at least 2 epochs) or fix the model until it learns, then rerun.",
        UserWarning,
        stacklevel=3,
    )


def metadata_columns(samples: Any) -> list[str]:
    """The metadata columns of a samples table (everything the analysis did not compute)."""
    return [c for c in samples.columns if c not in COMPUTED_COLUMNS]


def guarded(what: str, step: Any, *args: Any) -> Any:
    """Run one optional step of :func:`publish_results`; an error becomes a warning and ``None``."""
    try:
        return step(*args)
    except Exception:  # noqa: BLE001 - optional results never cost the core results or the rules
        warn(
            f"dq_plugins: {what} failed; the per-sample results and the rules are kept.\n{traceback.format_exc()}",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def _slice_table(result: Any, meta: list[str], sink: MlflowSink) -> Any:
    """``dq/slices.json``: metrics per class, cluster, latency bucket and metadata value."""
    from dq_plugins.analysis.slices import slice_metrics

    slices = slice_metrics(result.samples, columns=meta)
    result.slices = slices
    sink.add_table(slices, SLICES_PATH)
    return slices


def run_rules(
    result: Any, samples: Any, slices: Any, embeddings: dict, sink: MlflowSink, rules: list, pools: dict,
    rule_history: Any,
) -> None:
    """Evaluate the rules and run their actions. When the evaluation itself fails, a rule with a
    ``FailRun`` action cannot be shown to hold or not: the run is treated as failing that gate."""
    import pandas as pd

    from dq_plugins.rules import evaluate_rules
    from dq_plugins.rules.actions import evaluation_failed, run_rule_actions
    from dq_plugins.selection import EmbeddingPool

    try:
        outcomes = evaluate_rules(rules, samples, slices)
    except Exception as err:  # noqa: BLE001 - turned into a failed gate below
        warn(f"dq_plugins: the rules could not be evaluated.\n{traceback.format_exc()}", RuntimeWarning,
                      stacklevel=3)
        result.rules_report = evaluation_failed(rules, err)
        return
    own_pools = {split: EmbeddingPool(ids, values) for split, (ids, values) in embeddings.items()}
    tags: dict[str, str] = {}
    history = rule_history if rule_history is None or isinstance(rule_history, pd.DataFrame) else None
    report = run_rule_actions(outcomes, sink, set_tag=tags.__setitem__, embeddings=own_pools, pools=pools,
                              history=history)
    for key, value in tags.items():
        sink.add_tag(key, value)
    result.rules_report = report


def _data_map(train_rows: Any, sink: MlflowSink) -> None:
    from dq_plugins.figures.data_map import data_map

    sink.add_figure(data_map(train_rows, "Data map, train"), DATA_MAP_PATH)


def _embedding_maps(train_rows: Any, texts: dict[int, str] | None, write_html: bool, sink: MlflowSink) -> None:
    from dq_plugins.figures.embedding_map import embedding_map, embedding_map_html

    sink.add_figure(embedding_map(train_rows, "Embedding map, train"), EMBEDDING_MAP_PATH)
    if write_html:
        html = embedding_map_html(train_rows, texts, title="Embedding map, train")
        sink.stage_path(EMBEDDING_HTML_PATH).write_text(html, encoding="utf-8")
        sink.add_artifact(EMBEDDING_HTML_PATH)


def _weak_slices(result: Any, histories: dict, slices: Any, meta: list[str], sink: MlflowSink) -> None:
    """Weak-slice discovery, its figure and the per-epoch accuracy of the slices shown."""
    from dq_plugins.analysis.slice_history import slice_epoch_accuracy
    from dq_plugins.analysis.weak_slices import find_weak_slices
    from dq_plugins.figures.slices import weak_slices_figure

    samples = result.samples
    weak = find_weak_slices(samples, columns=meta)
    result.weak_slices = weak
    sink.add_table(weak, WEAK_SLICES_PATH)
    result.metrics["dq.num_weak_slices"] = float(len(weak))
    sink.add_metric("dq.num_weak_slices", float(len(weak)))
    shown = weak if len(weak) else slices
    correct = {split: (h.epochs, h.fields["correct"]) for split, h in histories.items()}
    for key, values in slice_epoch_accuracy(_by_slot(samples, histories), shown, correct).items():
        for epoch, value in values:
            sink.add_metric(key, value, step=epoch, series=True)
    splits = [split for split in histories if (samples["split"] == split).any()]
    if len(shown) and splits:
        overall = {split: result.metrics.get(split_metric_key("accuracy", split), float("nan")) for split in splits}
        sink.add_figure(weak_slices_figure(shown, overall, split=ordered_splits(splits)),
                        WEAK_SLICES_FIGURE_PATH)


def _by_slot(samples: Any, histories: dict) -> Any:
    """``samples`` with the ``sample_id`` of each split whose history has ``sample_ids`` turned into its slot
    (the column index of that history's per-epoch arrays); the same frame when no split has them."""
    mapped = [split for split, h in histories.items() if getattr(h, "sample_ids", None) is not None]
    if not mapped:
        return samples
    samples = samples.copy()
    ids = samples["sample_id"].to_numpy(dtype=np.int64).copy()
    for split in mapped:
        rows = (samples["split"] == split).to_numpy()
        ids[rows] = histories[split].slots_of(ids[rows])
    samples["sample_id"] = ids
    return samples


def _latency_report(result: AnalysisResult, columns: list[str], sink: MlflowSink) -> None:
    """``dq/latency.json`` (latency vs correctness and each metadata column, per split) and the metrics
    ``dq.mean_latency_ms.<split>`` and ``dq.latency.corr_correct.<split>`` (Spearman rho across batches between a
    batch's latency and its accuracy: negative when slower batches are less often correct)."""
    from dq_plugins.analysis.latency_report import latency_report

    report = latency_report(result.samples, columns=columns)
    result.latency = report
    sink.add_table(report, LATENCY_PATH)
    for split, part in result.samples.groupby("split", sort=False):
        mean = float(part[LATENCY_COLUMN].mean())
        if np.isfinite(mean):
            result.metrics[split_metric_key("mean_latency_ms", split)] = mean
            sink.add_metric(split_metric_key("mean_latency_ms", split), mean)
    for row in report[report["column"] == "correct"].itertuples():
        if np.isfinite(row.statistic):
            key = split_metric_key("latency.corr_correct", row.split)
            result.metrics[key] = float(row.statistic)
            sink.add_metric(key, float(row.statistic))
