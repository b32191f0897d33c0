"""Run the actions of rules that held, and log the rule results as ``dq/rules.json``.

The sink is duck-typed (``stage_path``, ``add_artifact``, ``add_table``, as :class:`dq_plugins.sinks.mlflow_sink.MlflowSink`);
tags go through a ``set_tag(key, value)`` callable. Nothing here raises for a failing rule: the
caller gets a :class:`RulesReport` and raises (:meth:`RulesReport.raise_if_failed`) or marks the run
FAILED (:attr:`RulesReport.mark_failed`) once the results are uploaded. An action that cannot run
(no pool, no tag setter) is recorded as skipped, one that raises (a tracking error) as failed, each
with a warning; the other actions still run.

Artifacts, per rule (``name`` defaults to the rule's name):

- ``dq/rules/<name>.parquet`` (:class:`ExportRows`), and ``dq/rules/<name>_slices.parquet`` for a rule
  with a slice condition;
- ``dq/rules/<name>_relabel.csv`` (:class:`RelabelList`): ``split, sample_id, label, suggested_label, action``;
- ``dq/rules/<name>_selection.json`` (:class:`SelectSimilar`, an MLflow table);
- ``dq/rules.json``: one row per rule (and per validation-time evaluation passed as ``history``),
  columns :data:`RULE_TABLE_COLUMNS`.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd

from dq_plugins.logs import warn
from dq_plugins.rules.evaluation import RuleOutcome, RuleStatus
from dq_plugins.rules.model import DataQualityRuleFailed, ExportRows, FailRun, RelabelList, SelectSimilar, TagRun
from dq_plugins.schema import RULES_DIR, RULES_TABLE_PATH, ScoreDirection, issue_type

FAILED_TAG = "dq.rules.failed"
"""Tag set (to the comma-separated rule names) whenever a :class:`FailRun` rule held."""

RULE_TABLE_COLUMNS: tuple[str, ...] = (
    "epoch", "rule", "split", "status", "condition", "values", "matched_samples", "actions", "message",
)
"""Columns of ``dq/rules.json``; ``epoch`` is empty for the end-of-fit evaluation."""

RELABEL_COLUMNS: tuple[str, ...] = ("split", "sample_id", "label", "suggested_label", "action")


class RuleSink(Protocol):
    """What the actions need from a sink (:class:`dq_plugins.sinks.mlflow_sink.MlflowSink` has it)."""

    def stage_path(self, artifact_path: str) -> Any: ...
    def add_artifact(self, artifact_path: str) -> None: ...
    def add_table(self, frame: pd.DataFrame, artifact_path: str) -> None: ...


@dataclass(frozen=True)
class RulesReport:
    """What :func:`run_rule_actions` did.

    Attributes:
        outcomes: the outcomes with ``actions_run`` filled in.
        table: the rows logged as ``dq/rules.json``.
        error: a :class:`DataQualityRuleFailed` to raise (a ``FailRun("raise")`` rule held), else ``None``.
        mark_failed: a ``FailRun("mark_failed")`` rule held: end the run with status FAILED.
        artifacts: artifact paths written.
    """

    outcomes: list[RuleOutcome]
    table: pd.DataFrame
    error: DataQualityRuleFailed | None
    mark_failed: bool
    artifacts: list[str]

    def raise_if_failed(self) -> None:
        """Raise :attr:`error` if a ``FailRun("raise")`` rule held."""
        if self.error is not None:
            raise self.error


def evaluation_failed(rules: Sequence[Any], error: BaseException) -> RulesReport:
    """The report when the rules could not be evaluated at all: every rule with a :class:`FailRun` action is
    treated as held (a gate that cannot be checked fails closed), its mode deciding raise or mark-failed."""
    gates = [(rule, action) for rule in rules for action in rule.then if isinstance(action, FailRun)]
    why = f"the rules could not be evaluated ({type(error).__name__}: {error})"
    raising = [(rule, action) for rule, action in gates if action.mode == "raise"]
    table = pd.DataFrame([{"epoch": None, "rule": rule.name, "split": rule.split if rule.split is not None else "all",
                           "status": "error", "condition": rule.describe(), "values": "", "matched_samples": 0,
                           "actions": "", "message": why} for rule in rules], columns=list(RULE_TABLE_COLUMNS))
    error_out = DataQualityRuleFailed([r.name for r, _ in raising], [f"rule {r.name!r}: {why}" for r, _ in raising])
    return RulesReport(outcomes=[], table=table, error=error_out if raising else None,
                       mark_failed=any(a.mode == "mark_failed" for _, a in gates), artifacts=[])


def _artifact_name(action: Any, outcome: RuleOutcome) -> str:
    return action.name or outcome.rule.name


def _values_text(values: Sequence[float]) -> str:
    return ", ".join("nan" if math.isnan(v) else f"{v:.6g}" for v in values)


def outcomes_table(outcomes: Sequence[RuleOutcome], *, epoch: int | None = None) -> pd.DataFrame:
    """The rows of ``dq/rules.json`` for ``outcomes`` (columns :data:`RULE_TABLE_COLUMNS`)."""
    rows = [{
        "epoch": epoch,
        "rule": o.rule.name,
        "split": o.rule.split if o.rule.split is not None else "all",
        "status": o.status.value,
        "condition": o.rule.describe(),
        "values": _values_text(o.values),
        "matched_samples": o.num_matched,
        "actions": "; ".join(o.actions_run),
        "message": o.message,
    } for o in outcomes]
    return pd.DataFrame(rows, columns=list(RULE_TABLE_COLUMNS))


def failure_of(outcomes: Sequence[RuleOutcome]) -> DataQualityRuleFailed | None:
    """The error to raise for held rules with ``FailRun("raise")`` (for a fail-fast check at a validation)."""
    failing = [(o, a) for o in outcomes if o.status is RuleStatus.HELD for a in o.rule.then
               if isinstance(a, FailRun) and a.mode == "raise"]
    if not failing:
        return None
    return DataQualityRuleFailed(
        [o.rule.name for o, _ in failing],
        [a.message or f"rule {o.rule.name!r} held: {o.rule.describe()} (values {_values_text(o.values)}, "
                      f"{o.num_matched} matching samples)" for o, a in failing],
    )


def marks_failed(outcomes: Sequence[RuleOutcome]) -> bool:
    """Whether a held rule has ``FailRun("mark_failed")`` (for outcomes evaluated at a validation)."""
    return any(isinstance(a, FailRun) and a.mode == "mark_failed"
               for o in outcomes if o.status is RuleStatus.HELD for a in o.rule.then)


def relabel_list(matched: pd.DataFrame) -> pd.DataFrame:
    """``split, sample_id, label, suggested_label, action`` (+ the label issue's score, ``mislabel_score``,
    when present), most suspicious first: ``action`` is ``"relabel"`` where ``suggested_label`` differs from
    ``label``, else ``"drop"``."""
    frame = matched.copy()
    if "suggested_label" not in frame.columns:
        frame["suggested_label"] = pd.NA
    relabel = frame["suggested_label"].notna() & (frame["suggested_label"] != frame["label"])
    frame["action"] = np.where(relabel.to_numpy(dtype=bool), "relabel", "drop")
    label = issue_type("label")
    score = [label.score_column] if label.score_column in frame.columns else []
    frame = frame[list(RELABEL_COLUMNS) + score]
    if score:
        worst_first = label.score_direction is ScoreDirection.HIGHER_IS_WORSE
        frame = frame.sort_values(score, ascending=not worst_first, kind="stable")
    return frame.reset_index(drop=True)


def run_rule_actions(
    outcomes: Sequence[RuleOutcome],
    sink: RuleSink,
    *,
    set_tag: Callable[[str, str], None] | None = None,
    embeddings: Mapping[str, Any] | None = None,
    pools: Mapping[str, Any] | None = None,
    history: pd.DataFrame | None = None,
) -> RulesReport:
    """Run the actions of every rule that held, queue the artifacts, and log ``dq/rules.json``.

    Args:
        outcomes: from :func:`dq_plugins.rules.evaluate_rules` on the end-of-fit tables.
        sink: where artifacts are staged and queued (:class:`dq_plugins.sinks.mlflow_sink.MlflowSink`).
        set_tag: sets an MLflow tag on the run; ``None``: :class:`TagRun` actions are skipped with a warning.
        embeddings: split -> :class:`dq_plugins.selection.EmbeddingPool` of the recorded samples (the
            query embeddings of :class:`SelectSimilar`).
        pools: pool name -> :class:`dq_plugins.selection.EmbeddingPool` of an unlabeled pool.
        history: earlier rows of the rules table (validation-time :func:`outcomes_table` rows) logged first.

    Returns:
        a :class:`RulesReport`; call :meth:`RulesReport.raise_if_failed` after the sink is flushed.
    """
    done: list[RuleOutcome] = []
    artifacts: list[str] = []
    failed: list[str] = []
    for outcome in outcomes:
        lines: list[str] = []
        if outcome.status is RuleStatus.HELD:
            for action in outcome.rule.then:
                try:
                    line, paths = _run(action, outcome, sink, set_tag, embeddings, pools)
                except _Skip as skip:
                    line, paths = f"{_kind(action)}: skipped ({skip})", []
                    warn(f"dq_plugins: rule {outcome.rule.name!r}: {line}", RuntimeWarning, stacklevel=2)
                except Exception as err:  # noqa: BLE001 - one failing action must not stop the others
                    line, paths = f"{_kind(action)}: failed ({type(err).__name__}: {err})", []
                    warn(f"dq_plugins: rule {outcome.rule.name!r}: {line}\n{traceback.format_exc()}",
                                  RuntimeWarning, stacklevel=2)
                lines.append(line)
                artifacts += paths
                if isinstance(action, FailRun):
                    failed.append(outcome.rule.name)
        done.append(replace(outcome, actions_run=tuple(lines)))
    mark_failed = marks_failed(done)
    if failed and set_tag is not None:
        try:
            set_tag(FAILED_TAG, ",".join(dict.fromkeys(failed)))
        except Exception as err:  # noqa: BLE001 - a tracking error must not hide the rule results
            warn(f"dq_plugins: could not set tag {FAILED_TAG}: {err}", RuntimeWarning, stacklevel=2)
    table = outcomes_table(done)
    if history is not None and len(history):
        table = pd.concat([history[list(RULE_TABLE_COLUMNS)], table], ignore_index=True)
    table["epoch"] = pd.Series([None if pd.isna(e) else int(e) for e in table["epoch"]], dtype=object)  # JSON null
    sink.add_table(table, RULES_TABLE_PATH)
    return RulesReport(done, table, failure_of(done), mark_failed, artifacts)


class _Skip(Exception):
    """An action that cannot run; the reason is recorded, nothing raised to the caller."""


def _kind(action: Any) -> str:
    return {TagRun: "tag_run", ExportRows: "export_rows", RelabelList: "relabel_list",
            SelectSimilar: "select_similar", FailRun: "fail_run"}[type(action)]


def _run(action: Any, outcome: RuleOutcome, sink: RuleSink, set_tag: Callable[[str, str], None] | None,
         embeddings: Mapping[str, Any] | None, pools: Mapping[str, Any] | None) -> tuple[str, list[str]]:
    if isinstance(action, TagRun):
        if set_tag is None:
            raise _Skip("no tag setter")
        set_tag(action.key, action.value)
        return f"tag_run {action.key}={action.value}", []
    if isinstance(action, ExportRows):
        return _export(action, outcome, sink)
    if isinstance(action, RelabelList):
        path = f"{RULES_DIR}/{_artifact_name(action, outcome)}_relabel.csv"
        frame = relabel_list(outcome.matched)
        frame.to_csv(sink.stage_path(path), index=False)
        sink.add_artifact(path)
        return f"relabel_list {path} ({len(frame)} rows, {int((frame['action'] == 'relabel').sum())} relabel)", [path]
    if isinstance(action, SelectSimilar):
        return _select(action, outcome, sink, embeddings, pools)
    if isinstance(action, FailRun):
        return f"fail_run {action.mode}", []
    raise _Skip(f"unknown action {action!r}")


def _export(action: ExportRows, outcome: RuleOutcome, sink: RuleSink) -> tuple[str, list[str]]:
    name = _artifact_name(action, outcome)
    frame = outcome.matched
    if action.columns is not None:
        missing = [c for c in action.columns if c not in frame.columns]
        if missing:
            warn(f"dq_plugins: rule {outcome.rule.name!r}: export_rows columns {missing} are not in the "
                          "table; exported without them.", RuntimeWarning, stacklevel=4)
        frame = frame[[c for c in action.columns if c in frame.columns]]
    paths = [f"{RULES_DIR}/{name}.parquet"]
    frame.reset_index(drop=True).to_parquet(sink.stage_path(paths[0]), index=False)
    sink.add_artifact(paths[0])
    if outcome.matched_slices is not None:
        paths.append(f"{RULES_DIR}/{name}_slices.parquet")
        outcome.matched_slices.reset_index(drop=True).to_parquet(sink.stage_path(paths[1]), index=False)
        sink.add_artifact(paths[1])
    return f"export_rows {paths[0]} ({len(frame)} rows)", paths


def _select(action: SelectSimilar, outcome: RuleOutcome, sink: RuleSink, embeddings: Mapping[str, Any] | None,
            pools: Mapping[str, Any] | None) -> tuple[str, list[str]]:
    from dq_plugins.selection import select_similar

    if not pools or action.pool not in pools:
        raise _Skip(f"no unlabeled pool named {action.pool!r}; pools given: {sorted(pools or {})}")
    pool = pools[action.pool]
    queries = []
    for split, part in outcome.matched.groupby(outcome.matched["split"].astype(str), sort=False):
        if not embeddings or split not in embeddings:
            raise _Skip(f"no embeddings recorded for split {split!r}")
        queries.append(np.asarray(_to_numpy(embeddings[split].take(part["sample_id"].to_numpy())), dtype=np.float32))
    if not queries or not sum(len(q) for q in queries):
        raise _Skip("the matching samples have no embeddings")
    picked = select_similar(
        pool.embeddings, pool.ids, np.concatenate(queries), action.k, diversity_threshold=action.diversity_threshold,
        partitions=pool.partitions, balance=action.balance, reduce=action.reduce,
    )
    picked.insert(0, "rule", outcome.rule.name)
    path = f"{RULES_DIR}/{_artifact_name(action, outcome)}_selection.json"
    picked["partition"] = picked["partition"].map(lambda v: None if v is None else str(v))  # JSON-safe
    sink.add_table(picked, path)
    return f"select_similar {path} ({len(picked)} from pool {action.pool!r})", [path]


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        return values.detach().float().cpu().numpy()
    return np.asarray(values)
