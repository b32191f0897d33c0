"""Rules: conditions over the per-sample table or the slice table, and actions to take when they hold.

    from dq_plugins.rules import Condition, ExportRows, FailRun, RelabelList, Rule, TagRun

    rules = [
        Rule("too_many_label_issues",
             when=Condition("is_label_issue", ">", 0.15, aggregate="rate"),
             then=[TagRun("dq.alert", "label noise"), RelabelList(), FailRun("mark_failed")]),
        Rule("forum_is_weak",
             when=Condition("accuracy", "<", 0.8, where={"column": "source", "value": "forum"}, over="slices"),
             then=[ExportRows(columns=["sample_id", "label", "pred", "source"])]),
        Rule("suspicious_rows", when=Condition("mislabel_score", ">=", 0.95), then=[ExportRows()]),
    ]
    callback = DataQualityCallback(rules=rules)            # or rules_from_yaml("rules.yaml")

What a condition means (:meth:`Condition.evaluate`): ``over="samples"`` reads the rows of the rule's
split in the per-sample table (plus the derived column ``correct = pred == label``), ``over="slices"``
the rows of the slice table (:func:`dq_plugins.analysis.slices.slice_metrics`); ``where`` keeps some of them
first. Then:

- ``aggregate=None``: each row is tested, ``metric op threshold``; the condition holds when at least
  one row passes, its value is the number of rows that pass, and those rows are the matching rows.
- ``"mean"`` / ``"min"`` / ``"max"``: of ``metric`` over the kept rows (missing values ignored),
  compared with ``threshold``; the matching rows are all kept rows.
- ``"rate"`` / ``"count"`` / ``"any"``: fraction / number / presence (1.0 or 0.0) of kept rows whose
  ``metric`` is *truthy* (non-zero, not missing), compared with ``threshold``; meant for boolean
  columns (``is_label_issue``, ``correct``); the matching rows are the truthy ones.

A rule holds when all its conditions hold; its matching samples are the samples every condition
matched (for a slice condition: the members of the matching slices). Outcomes are
:class:`RuleStatus` values. Actions are executed by :func:`dq_plugins.rules.actions.run_rule_actions`.

Rules in YAML (:func:`rules_from_yaml`) are read with ``yaml.safe_load`` only and checked field by
field against a whitelist: nothing in them is ever executed. See :func:`parse_rules` for the format.
"""

from __future__ import annotations

import math
import operator
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from dq_plugins.schema import SLICE_TABLE_COLUMNS, SLICE_TABLE_METRICS, issue_types

Op = Literal["<", "<=", ">", ">=", "==", "!="]
Aggregate = Literal["rate", "mean", "count", "any", "min", "max"]
Over = Literal["samples", "slices"]
FailMode = Literal["raise", "mark_failed"]
Reduce = Literal["max", "mean"]

OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
"""Comparison operators a condition (and a ``where`` comparison) may use."""

AGGREGATES: tuple[str, ...] = get_args(Aggregate)
OVER: tuple[str, ...] = get_args(Over)
FAIL_MODES: tuple[str, ...] = get_args(FailMode)

DERIVED_COLUMNS: tuple[str, ...] = ("correct",)
"""Columns a sample condition may use besides those of the per-sample table: ``correct = pred == label``."""


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
"""Rule and artifact names: they become file names under ``dq/rules/``."""

TAG_KEY_PATTERN = re.compile(r"^[\w.\-/ :]{1,250}$")
"""MLflow tag keys: letters, digits, ``_ - . / :`` and spaces, at most 250 characters."""

MAX_TAG_VALUE_CHARS = 5000
MAX_YAML_CHARS = 200_000
MAX_YAML_NODES = 20_000
MAX_YAML_DEPTH = 12
MAX_RULES = 500
"""Bounds on rules read from YAML: larger or deeper input is rejected before it is interpreted."""


# ---------------------------------------------------------------------------------------- small checks
def _check_choice(argument: str, value: Any, choices: Sequence[str], where: str = "") -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}Unknown {argument} {value!r}. Valid: {list(choices)}.")


def _check_name(argument: str, value: Any, where: str = "") -> None:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ValueError(
            f"{where}Expected `{argument}` to be 1-64 letters, digits, '_', '.' or '-' (it names files under "
            f"dq/rules/) but got {value!r}."
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


_SCALARS = (str, int, float, bool, np.integer, np.floating, np.bool_)


def _check_where(where: Any, context: str) -> dict[str, Any]:
    """A copy of a ``where`` filter after checking its shape (column names are checked later)."""
    if where is None:
        return {}
    if not isinstance(where, Mapping):
        raise ValueError(f"{context}Expected `where` to be a mapping column -> value but got {type(where).__name__}.")
    checked: dict[str, Any] = {}
    for column, value in where.items():
        if not isinstance(column, str) or not column:
            raise ValueError(f"{context}`where` keys must be column names (text) but got {column!r}.")
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"{context}`where[{column!r}]` is an empty comparison mapping.")
            for op, bound in value.items():
                _check_choice("operator", op, list(OPS), f"{context}`where[{column!r}]`: ")
                if not _is_number(bound):
                    raise ValueError(f"{context}`where[{column!r}][{op!r}]` must be a number but got {bound!r}.")
            checked[column] = dict(value)
        elif isinstance(value, (list, tuple)):
            if not value or not all(isinstance(v, _SCALARS) for v in value):
                raise ValueError(
                    f"{context}`where[{column!r}]` must be a non-empty list of text, numbers or booleans "
                    f"but got {value!r}."
                )
            checked[column] = list(value)
        elif isinstance(value, _SCALARS):
            checked[column] = value
        else:
            raise ValueError(
                f"{context}`where[{column!r}]` must be a value, a list of values or a mapping operator -> number, "
                f"but got {type(value).__name__}."
            )
    return checked


# ---------------------------------------------------------------------------------------- conditions
@dataclass(frozen=True)
class Condition:
    """A test on the per-sample table or the slice table (module docstring: exact meaning).

    Args:
        metric: a column of the per-sample table (or ``correct``), or of the slice table when
            ``over="slices"`` (:data:`SLICE_TABLE_METRICS`).
        op: one of :data:`OPS`.
        threshold: the number ``metric`` (or its aggregate) is compared with.
        aggregate: ``None`` (test each row) or one of :data:`AGGREGATES`.
        where: filters applied first: ``{"source": "forum"}`` (equal), ``{"source": ["forum", "blog"]}``
            (one of), ``{"length": {">": 120, "<=": 250}}`` (comparisons). Values compare as numbers on a
            numeric column, as text otherwise (``3.0`` and ``"3"`` both match label 3).
        over: ``"samples"`` or ``"slices"``.
    """

    metric: str
    op: Op
    threshold: float
    aggregate: Aggregate | None = None
    where: Mapping[str, Any] | None = None
    over: Over = "samples"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"Expected `metric` to be a column name but got {self.metric!r}.")
        _check_choice("operator", self.op, list(OPS), f"Condition on {self.metric!r}: ")
        if self.aggregate is not None:
            _check_choice("aggregate", self.aggregate, AGGREGATES, f"Condition on {self.metric!r}: ")
        _check_choice("`over`", self.over, OVER, f"Condition on {self.metric!r}: ")
        if not _is_number(self.threshold) or not math.isfinite(float(self.threshold)):
            raise ValueError(
                f"Condition on {self.metric!r}: expected `threshold` to be a finite number but got {self.threshold!r}."
            )
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "where", _check_where(self.where, f"Condition on {self.metric!r}: ") or None)

    def columns(self) -> list[str]:
        """Every column the condition reads."""
        return [self.metric, *(self.where or {})]

    def describe(self) -> str:
        """``rate(is_label_issue) > 0.15 where source=forum [samples]``."""
        target = f"{self.aggregate}({self.metric})" if self.aggregate else self.metric
        text = f"{target} {self.op} {self.threshold:g}"
        if self.where:
            parts = []
            for column, value in self.where.items():
                if isinstance(value, Mapping):
                    parts += [f"{column}{op}{bound:g}" for op, bound in value.items()]
                elif isinstance(value, list):
                    parts.append(f"{column} in {value}")
                else:
                    parts.append(f"{column}={value}")
            text += " where " + " and ".join(parts)
        return f"{text} [{self.over}]"

    def evaluate(self, table: pd.DataFrame) -> tuple[bool, float, np.ndarray]:
        """(holds, value, matching-row mask) on ``table`` (already restricted to the rule's split).

        The value is the number of rows that pass (``aggregate=None``) or the aggregate (NaN when no
        row is kept).
        """
        kept = _where_mask(table, self.where or {})
        values = _numeric(table[self.metric])
        compare = OPS[self.op]
        if self.aggregate is None:
            with np.errstate(invalid="ignore"):
                passed = kept & np.isfinite(values) & compare(values, self.threshold)
            count = int(passed.sum())
            return count > 0, float(count), passed
        truthy = kept & np.isfinite(values) & (values != 0)
        n = int(kept.sum())
        if self.aggregate in ("rate", "count", "any"):
            hits = int(truthy.sum())
            value = {"rate": hits / n if n else math.nan, "count": float(hits), "any": float(hits > 0)}[self.aggregate]
            matched = truthy
        else:
            finite = values[kept & np.isfinite(values)]
            reduce = {"mean": np.mean, "min": np.min, "max": np.max}[self.aggregate]
            value = float(reduce(finite)) if len(finite) else math.nan
            matched = kept
        holds = bool(math.isfinite(value) and compare(value, self.threshold)) and n > 0
        return holds, float(value), matched


def _numeric(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    converted = pd.to_numeric(series, errors="coerce")
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def _text(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return str(value)


def _equal_mask(series: pd.Series, values: list[Any]) -> np.ndarray:
    numeric_column = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if numeric_column and all(_is_number(v) for v in values):
        return series.isin([float(v) for v in values]).to_numpy(dtype=bool)
    codes, uniques = pd.factorize(series)  # compare the text of each distinct value once
    wanted = {_text(v) for v in values}
    hits = np.flatnonzero([_text(u) in wanted for u in uniques])
    return np.isin(codes, hits)


def _where_mask(table: pd.DataFrame, where: Mapping[str, Any]) -> np.ndarray:
    mask = np.ones(len(table), dtype=bool)
    for column, value in where.items():
        series = table[column]
        if isinstance(value, Mapping):
            numbers = _numeric(series)
            with np.errstate(invalid="ignore"):
                for op, bound in value.items():
                    mask &= np.isfinite(numbers) & OPS[op](numbers, float(bound))
        else:
            mask &= _equal_mask(series, value if isinstance(value, list) else [value])
    return mask


# ---------------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class TagRun:
    """Set the MLflow tag ``key`` to ``value`` on the run."""

    key: str
    value: str = "true"

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not TAG_KEY_PATTERN.match(self.key):
            raise ValueError(
                f"TagRun: expected `key` to be an MLflow tag key (1-250 letters, digits, '_', '-', '.', '/', ':' or "
                f"spaces) but got {self.key!r}."
            )
        if not isinstance(self.value, _SCALARS):
            raise ValueError(f"TagRun: expected `value` to be text but got {type(self.value).__name__}.")
        object.__setattr__(self, "value", str(self.value)[:MAX_TAG_VALUE_CHARS])


@dataclass(frozen=True)
class ExportRows:
    """Write the matching rows to ``dq/rules/<name>.parquet`` (``name`` defaults to the rule's name);
    ``columns`` selects columns (default: all). A rule with a slice condition also writes the matching
    slices to ``dq/rules/<name>_slices.parquet``."""

    name: str | None = None
    columns: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            _check_name("name", self.name, "ExportRows: ")
        if self.columns is not None:
            if isinstance(self.columns, str) or not all(isinstance(c, str) and c for c in self.columns):
                raise ValueError(
                    f"ExportRows: expected `columns` to be a list of column names but got {self.columns!r}."
                )
            object.__setattr__(self, "columns", tuple(self.columns))


@dataclass(frozen=True)
class RelabelList:
    """Write ``dq/rules/<name>_relabel.csv``: ``split, sample_id, label, suggested_label, action`` for
    the matching rows, ``action`` = ``"relabel"`` where confident learning suggests another class,
    else ``"drop"``."""

    name: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            _check_name("name", self.name, "RelabelList: ")


@dataclass(frozen=True)
class SelectSimilar:
    """Select the ``k`` samples of the unlabeled pool ``pool`` most similar to the matching samples
    (:func:`dq_plugins.selection.select_similar`), written to ``dq/rules/<name>_selection.json``."""

    k: int
    pool: str = "pool"
    diversity_threshold: float | None = 0.95
    balance: bool = False
    reduce: Reduce = "max"
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"SelectSimilar: expected `k` to be an integer >= 1 but got {self.k!r}.")
        _check_name("pool", self.pool, "SelectSimilar: ")
        if self.diversity_threshold is not None and (
            not _is_number(self.diversity_threshold) or not -1.0 < float(self.diversity_threshold) <= 1.0
        ):
            raise ValueError(
                "SelectSimilar: expected `diversity_threshold` to be a cosine similarity in (-1, 1] or None "
                f"but got {self.diversity_threshold!r}."
            )
        if not isinstance(self.balance, bool):
            raise ValueError(f"SelectSimilar: expected `balance` to be true or false but got {self.balance!r}.")
        _check_choice("reduce", self.reduce, get_args(Reduce), "SelectSimilar: ")
        if self.name is not None:
            _check_name("name", self.name, "SelectSimilar: ")


@dataclass(frozen=True)
class FailRun:
    """Fail the run: ``"raise"`` raises :class:`DataQualityRuleFailed` at the end of fit (after the
    results are logged); ``"mark_failed"`` lets training finish and marks the MLflow run FAILED."""

    mode: FailMode = "raise"
    message: str | None = None

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, FAIL_MODES, "FailRun: ")
        if self.message is not None and not isinstance(self.message, str):
            raise ValueError(f"FailRun: expected `message` to be text but got {type(self.message).__name__}.")


Action = TagRun | ExportRows | RelabelList | SelectSimilar | FailRun
ACTION_TYPES: dict[str, type] = {
    "tag_run": TagRun, "export_rows": ExportRows, "relabel_list": RelabelList,
    "select_similar": SelectSimilar, "fail_run": FailRun,
}
"""YAML name -> action class."""


class DataQualityRuleFailed(RuntimeError):
    """Raised at the end of fit when a rule with ``FailRun("raise")`` held.

    Attributes:
        rules: names of the rules that failed the run.
    """

    def __init__(self, rules: Sequence[str], messages: Sequence[str]) -> None:
        self.rules = tuple(rules)
        super().__init__("Data-quality rule(s) failed: " + "; ".join(messages))


# ---------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """Conditions (all must hold) and the actions to run when they do.

    Args:
        name: 1-64 letters, digits, ``_ . -``; unique among the rules of a run (it names artifacts).
        when: one condition or a list (AND).
        then: actions, run in order.
        split: the split whose rows (or slices) are tested; ``None`` tests all splits together.
        on_validation: also evaluate at each validation (for fail-fast rules); default: end of fit only.
    """

    name: str
    when: Condition | Sequence[Condition]
    then: Sequence[Action] = ()
    split: str | None = "train"
    on_validation: bool = False

    def __post_init__(self) -> None:
        _check_name("name", self.name, "Rule: ")
        when = (self.when,) if isinstance(self.when, Condition) else tuple(self.when)
        if not when or not all(isinstance(c, Condition) for c in when):
            raise ValueError(f"Rule {self.name!r}: expected `when` to be a Condition or a non-empty list of them.")
        then = tuple(self.then)
        bad = [a for a in then if not isinstance(a, tuple(ACTION_TYPES.values()))]
        if bad:
            raise ValueError(
                f"Rule {self.name!r}: unknown action {bad[0]!r}. Valid: {[c.__name__ for c in ACTION_TYPES.values()]}."
            )
        if self.split is not None and not isinstance(self.split, str):
            raise ValueError(f"Rule {self.name!r}: expected `split` to be a split name or None but got {self.split!r}.")
        if not isinstance(self.on_validation, bool):
            raise ValueError(f"Rule {self.name!r}: expected `on_validation` to be true or false.")
        object.__setattr__(self, "when", when)
        object.__setattr__(self, "then", then)

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return self.when  # type: ignore[return-value]

    def describe(self) -> str:
        return " AND ".join(c.describe() for c in self.conditions)


class RuleStatus(StrEnum):
    """What became of a rule."""

    HELD = "held"
    NOT_HELD = "not_held"
    NO_DATA = "no_data"
    """The rule's split, or a ``where`` filter, kept no row: nothing to test (a warning says which)."""
    SKIPPED = "skipped"
    """A column the rule needs is not in the table it was evaluated on (e.g. a slice rule without a
    slice table, or ``mislabel_score`` at a validation before the end-of-fit analysis)."""


@dataclass(frozen=True)
class RuleOutcome:
    """The result of one rule.

    Attributes:
        rule: the rule.
        status: :class:`RuleStatus`.
        values: one value per condition (rows that pass, or the aggregate; NaN when not evaluated).
        held: per condition, whether it held.
        matched: the matching rows of the per-sample table (all columns, ``correct`` added).
        matched_slices: the matching rows of the slice table (rules with a slice condition), else ``None``.
        message: why a rule was skipped or had no data; empty otherwise.
        actions_run: one line per action run, filled in by ``run_rule_actions``.
    """

    rule: Rule
    status: RuleStatus
    values: tuple[float, ...]
    held: tuple[bool, ...]
    matched: pd.DataFrame
    matched_slices: pd.DataFrame | None = None
    message: str = ""
    actions_run: tuple[str, ...] = ()

    @property
    def num_matched(self) -> int:
        return len(self.matched)


def _with_correct(samples: pd.DataFrame) -> pd.DataFrame:
    if "correct" in samples.columns or not {"label", "pred"} <= set(samples.columns):
        return samples
    return samples.assign(correct=samples["label"].to_numpy() == samples["pred"].to_numpy())


def evaluate_rules(
    rules: Sequence[Rule], samples: pd.DataFrame, slices: pd.DataFrame | None = None
) -> list[RuleOutcome]:
    """Evaluate every rule; run no action.

    Args:
        rules: the rules (checked with :func:`validate_rules` beforehand).
        samples: the per-sample table (``dq/samples.parquet``), or any table with a ``split`` column
            and the columns the rules read (at a validation: ``sample_id, split, label, pred`` and metadata).
        slices: the slice table (:func:`dq_plugins.analysis.slices.slice_metrics`) for slice conditions.

    Returns:
        one :class:`RuleOutcome` per rule, in order. A rule that needs a missing column is SKIPPED and
        one whose split or filter keeps no row has NO_DATA, each with a warning: never an exception.
    """
    samples = _with_correct(samples)
    outcomes = []
    for rule in rules:
        outcome = _evaluate(rule, samples, slices)
        if outcome.status in (RuleStatus.SKIPPED, RuleStatus.NO_DATA):
            warnings.warn(f"dq_plugins: rule {rule.name!r} {outcome.status.value}: {outcome.message}",
                          RuntimeWarning, stacklevel=2)
        outcomes.append(outcome)
    return outcomes


def _evaluate(rule: Rule, samples: pd.DataFrame, slices: pd.DataFrame | None) -> RuleOutcome:
    nan = tuple(math.nan for _ in rule.conditions)
    no = tuple(False for _ in rule.conditions)
    empty = samples.iloc[0:0]

    def stop(status: RuleStatus, message: str) -> RuleOutcome:
        return RuleOutcome(rule, status, nan, no, empty, None, message)

    if "split" not in samples.columns:
        return stop(RuleStatus.SKIPPED, f"the per-sample table has no 'split' column (it has {list(samples.columns)})")
    in_split = np.ones(len(samples), dtype=bool) if rule.split is None else (
        samples["split"].astype(str).to_numpy() == rule.split)
    rows = samples[in_split]
    if rule.split is not None and rows.empty:
        present = sorted(pd.unique(samples["split"].astype(str)))
        return stop(RuleStatus.NO_DATA, f"no rows in split {rule.split!r} (splits present: {present})")
    slice_rows = None
    if any(c.over == "slices" for c in rule.conditions):
        if slices is None:
            return stop(RuleStatus.SKIPPED, "it has a slice condition but no slice table was given")
        slice_rows = slices if rule.split is None else slices[slices["split"].astype(str) == rule.split]
    for condition in rule.conditions:
        table = slice_rows if condition.over == "slices" else rows
        missing = [c for c in condition.columns() if c not in table.columns]
        if missing:
            return stop(RuleStatus.SKIPPED, f"column {missing[0]!r} is not in the {condition.over} table "
                                            f"(it has {list(table.columns)})")

    values, held, matched_slices = [], [], []
    selected = np.ones(len(rows), dtype=bool)  # rows every condition matched so far
    for condition in rule.conditions:
        table = slice_rows if condition.over == "slices" else rows
        if condition.where and not _where_mask(table, condition.where).any():
            return stop(RuleStatus.NO_DATA, f"`where` of condition {condition.describe()!r} keeps no row")
        holds, value, mask = condition.evaluate(table)
        values.append(value)
        held.append(holds)
        if condition.over == "slices":
            matched_slices.append(table[mask])
            selected &= _slice_member_mask(samples, table[mask])[in_split]
        else:
            selected &= mask
    status = RuleStatus.HELD if all(held) else RuleStatus.NOT_HELD
    matched = rows[selected] if status is RuleStatus.HELD else empty
    slices_out = pd.concat(matched_slices, ignore_index=True) if matched_slices and status is RuleStatus.HELD else None
    return RuleOutcome(rule, status, tuple(values), tuple(held), matched, slices_out)


def _slice_member_mask(samples: pd.DataFrame, slice_rows: pd.DataFrame) -> np.ndarray:
    """(len(samples),) bool: the rows of ``samples`` in one of ``slice_rows``."""
    mask = np.zeros(len(samples), dtype=bool)
    if slice_rows.empty:
        return mask
    from dq_plugins.analysis.slices import slice_masks

    for member in slice_masks(samples, slice_rows).values():
        mask |= member
    return mask


# ---------------------------------------------------------------------------------------- validation
def validate_rules(
    rules: Sequence[Rule], available_columns: Iterable[str], *, pools: Iterable[str] | None = None
) -> None:
    """Check rules against the columns the per-sample table will have; call it at fit start.

    Args:
        rules: the rules.
        available_columns: columns of the per-sample table at the end of fit (``SAMPLE_COLUMNS``,
            metadata columns, and ``cluster`` / ``latency_ms`` / ``confidence_pred`` when recorded).
        pools: names of the unlabeled pools given to the callback; ``None`` skips the check of
            :class:`SelectSimilar` pools.

    Raises:
        ValueError: a rule reads an unknown metric or column (the message names the rule, the column
            and lists the valid ones), a ``where`` on the slice table names an unknown sliced column,
            two rules share a name, or an action names an unknown pool.
    """
    sample_columns = [*dict.fromkeys([*available_columns, *DERIVED_COLUMNS])]
    seen: set[str] = set()
    for rule in rules:
        if not isinstance(rule, Rule):
            raise ValueError(f"Expected a list of Rule objects but got {type(rule).__name__}: {rule!r}.")
        if rule.name in seen:
            raise ValueError(f"Two rules are named {rule.name!r}; rule names must be unique (they name artifacts).")
        seen.add(rule.name)
        for condition in rule.conditions:
            if condition.over == "samples":
                valid_metric, valid_where = sample_columns, sample_columns
            else:
                valid_metric, valid_where = list(SLICE_TABLE_METRICS), list(SLICE_TABLE_COLUMNS)
            if condition.metric not in valid_metric:
                raise ValueError(
                    f"Rule {rule.name!r}: unknown metric {condition.metric!r} for a condition over {condition.over}. "
                    f"Valid metrics: {valid_metric}."
                    + (" HINT: slice metrics need over='slices'." if condition.metric in SLICE_TABLE_METRICS else "")
                    + _issue_type_hint(condition.metric)
                )
            for column, value in (condition.where or {}).items():
                if column not in valid_where:
                    raise ValueError(
                        f"Rule {rule.name!r}: unknown column {column!r} in `where`. Valid columns: {valid_where}."
                    )
                if condition.over == "slices" and column == "column":
                    for name in value if isinstance(value, list) else [value]:
                        if str(name) not in sample_columns:
                            raise ValueError(
                                f"Rule {rule.name!r}: `where` selects slices of column {name!r}, which the per-sample "
                                f"table will not have. Valid columns: {sample_columns}."
                            )
        for action in rule.then:
            if isinstance(action, ExportRows) and action.columns is not None:
                unknown = [c for c in action.columns if c not in sample_columns]
                if unknown:
                    raise ValueError(
                        f"Rule {rule.name!r}: ExportRows has unknown column {unknown[0]!r}. "
                        f"Valid columns: {sample_columns}."
                    )
            if isinstance(action, SelectSimilar) and pools is not None:
                pools = list(pools)
                if action.pool not in pools:
                    raise ValueError(
                        f"Rule {rule.name!r}: SelectSimilar uses pool {action.pool!r}, but the callback was given "
                        f"pools {pools}. HINT: pass `pools={{{action.pool!r}: dataset}}` to the callback."
                    )


def _issue_type_hint(name: str) -> str:
    """A HINT naming the columns of the registered issue type ``name`` (empty when there is none)."""
    kind = {issue.name: issue for issue in issue_types()}.get(name)
    if kind is None:
        return ""
    return (f" HINT: {name!r} is an issue type; test its flag column {kind.flag_column!r} "
            f"(or its score {kind.score_column!r}).")


# ---------------------------------------------------------------------------------------- YAML
RULE_FIELDS: tuple[str, ...] = ("name", "when", "then", "split", "on_validation")
CONDITION_FIELDS: tuple[str, ...] = ("metric", "op", "threshold", "aggregate", "where", "over")


def _check_bounds(data: Any) -> None:
    """Reject structures nested deeper than MAX_YAML_DEPTH or with more than MAX_YAML_NODES nodes
    (an alias bomb shares objects: this walk counts every visit, so it stops early)."""
    stack = [(data, 1)]
    visits = 0
    while stack:
        node, depth = stack.pop()
        visits += 1
        if visits > MAX_YAML_NODES:
            raise ValueError(f"Rules YAML is too large: more than {MAX_YAML_NODES} values (after aliases).")
        if depth > MAX_YAML_DEPTH:
            raise ValueError(f"Rules YAML is nested too deeply (more than {MAX_YAML_DEPTH} levels).")
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
            stack.extend((k, depth + 1) for k in node)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _check_event_depth(text: str) -> None:
    """Reject deep nesting from the parser's event stream (iterative, stops at the first level too deep)
    before the recursive composer sees it."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ValueError(f"Rules YAML is nested too deeply (more than {MAX_YAML_DEPTH} levels).")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def rules_from_yaml(source: str | os.PathLike, *, available_columns: Iterable[str] | None = None) -> list[Rule]:
    """Rules from YAML text or a YAML file (format: :func:`parse_rules`).

    Args:
        source: a path (``pathlib.Path``, or text ending in ``.yaml`` / ``.yml`` without a line break),
            or the YAML text itself.
        available_columns: when given, the rules are also checked with :func:`validate_rules`.

    Raises:
        ValueError: the text is larger than :data:`MAX_YAML_CHARS`, is not plain YAML (any tag such as
            ``!!python/object/apply:...`` is refused by ``yaml.safe_load``; nothing is constructed or
            run), nests deeper than :data:`MAX_YAML_DEPTH`, or a field is unknown or of the wrong type
            (the message gives its location, e.g. ``rules[0].when[1]``, and the valid fields).
    """
    import yaml

    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and "\n" not in source and source.strip().endswith((".yaml", ".yml"))
    ):
        path = Path(source)
        if path.stat().st_size > MAX_YAML_CHARS:
            raise ValueError(f"Rules file {path} is larger than {MAX_YAML_CHARS} bytes.")
        text = path.read_text(encoding="utf-8")
    elif isinstance(source, str):
        text = source
    else:
        raise ValueError(f"Expected YAML text or a path but got {type(source).__name__}.")
    if len(text) > MAX_YAML_CHARS:
        raise ValueError(f"Rules YAML is larger than {MAX_YAML_CHARS} characters.")
    try:
        _check_event_depth(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(
            "Rules YAML could not be read as plain YAML (mappings, lists, text, numbers, booleans); tags such as "
            f"!!python/... are refused and nothing in the file is executed. Parser said: {err}"
        ) from None
    except RecursionError:
        raise ValueError(f"Rules YAML is nested too deeply (more than {MAX_YAML_DEPTH} levels).") from None
    return parse_rules(data, available_columns=available_columns)


def parse_rules(data: Any, *, available_columns: Iterable[str] | None = None) -> list[Rule]:
    """Rules from already-loaded YAML/JSON data (e.g. the ``rules:`` section of a recipe config).

    Format: a list of rules, or a mapping whose only key is ``rules`` holding that list::

        rules:
          - name: forum_is_weak                  # required
            split: train                          # default train; null = all splits
            on_validation: false
            when:                                 # one condition or a list (AND)
              - {metric: correct, aggregate: rate, op: "<", threshold: 0.8, where: {source: forum}}
            then:                                 # each action: a one-key mapping, or its bare name
              - tag_run: {key: dq.alert, value: forum}
              - export_rows: {columns: [sample_id, label, pred]}
              - relabel_list
              - select_similar: {k: 50, pool: unlabeled, balance: true}
              - fail_run: {mode: mark_failed}

    Raises:
        ValueError: see :func:`rules_from_yaml`.
    """
    _check_bounds(data)
    if isinstance(data, Mapping):
        extra = [k for k in data if k != "rules"]
        if extra or "rules" not in data:
            raise ValueError(
                f"Rules YAML: expected a list of rules or a mapping with the single key 'rules', but got keys "
                f"{list(data)}."
            )
        data = data["rules"]
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError(f"Rules YAML: expected a list of rules but got {type(data).__name__}.")
    if len(data) > MAX_RULES:
        raise ValueError(f"Rules YAML: {len(data)} rules, more than the {MAX_RULES} accepted.")
    rules = [_parse_rule(item, f"rules[{i}]") for i, item in enumerate(data)]
    if available_columns is not None:
        validate_rules(rules, available_columns)
    return rules


def _fields(node: Any, location: str, valid: Sequence[str], required: Sequence[str]) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        raise ValueError(f"{location}: expected a mapping with fields {list(valid)} but got {type(node).__name__}.")
    for key in node:
        if key not in valid:
            raise ValueError(f"{location}: unknown field {key!r}. Valid fields: {list(valid)}.")
    for key in required:
        if key not in node:
            raise ValueError(f"{location}: missing required field {key!r}.")
    return dict(node)


def _typed(value: Any, location: str, kinds: tuple[type, ...], description: str) -> Any:
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"{location}: expected {description} but got {value!r}.")
    if not isinstance(value, kinds):
        raise ValueError(f"{location}: expected {description} but got {type(value).__name__} {value!r}.")
    return value


def _parse_rule(node: Any, location: str) -> Rule:
    spec = _fields(node, location, RULE_FIELDS, ("name", "when"))
    name = _typed(spec["name"], f"{location}.name", (str,), "text")
    location = f"{location} ({name})"
    when = spec["when"]
    conditions = [_parse_condition(c, f"{location}.when[{i}]") for i, c in enumerate(when)] \
        if isinstance(when, list) else [_parse_condition(when, f"{location}.when")]
    then = spec.get("then") or []
    if not isinstance(then, list):
        raise ValueError(f"{location}.then: expected a list of actions but got {type(then).__name__}.")
    actions = [_parse_action(a, f"{location}.then[{i}]") for i, a in enumerate(then)]
    split = spec.get("split", "train")
    if split is not None:
        _typed(split, f"{location}.split", (str,), "a split name or null")
    on_validation = _typed(spec.get("on_validation", False), f"{location}.on_validation", (bool,), "true or false")
    try:
        return Rule(name, conditions, actions, split=split, on_validation=on_validation)
    except ValueError as err:
        raise ValueError(f"{location}: {err}") from None


def _parse_condition(node: Any, location: str) -> Condition:
    spec = _fields(node, location, CONDITION_FIELDS, ("metric", "op", "threshold"))
    _typed(spec["metric"], f"{location}.metric", (str,), "a column name")
    _typed(spec["threshold"], f"{location}.threshold", (int, float), "a number")
    for key in ("op", "aggregate", "over"):
        if spec.get(key) is not None:
            _typed(spec[key], f"{location}.{key}", (str,), "text")
    try:
        return Condition(**spec)
    except ValueError as err:
        raise ValueError(f"{location}: {err}") from None


def _parse_action(node: Any, location: str) -> Action:
    if isinstance(node, str):
        kind, args = node, {}
    elif isinstance(node, Mapping) and len(node) == 1:
        kind, args = next(iter(node.items()))
        args = {} if args is None else args
    else:
        raise ValueError(
            f"{location}: expected an action, a one-key mapping such as `tag_run: {{key: k, value: v}}` or a bare "
            f"name; valid actions: {list(ACTION_TYPES)}."
        )
    if not isinstance(kind, str) or kind not in ACTION_TYPES:
        raise ValueError(f"{location}: unknown action {kind!r}. Valid actions: {list(ACTION_TYPES)}.")
    cls = ACTION_TYPES[kind]
    names = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    spec = _fields(args, f"{location}.{kind}", names, required)
    for key, value in spec.items():
        if key == "columns" and isinstance(value, list):
            for i, column in enumerate(value):
                _typed(column, f"{location}.{kind}.columns[{i}]", (str,), "a column name")
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"{location}.{kind}.{key}: expected a value but got {type(value).__name__}.")
    try:
        return cls(**spec)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{location}: {err}") from None


__all__ = [
    "Action", "Condition", "DataQualityRuleFailed", "ExportRows", "FailRun", "RelabelList", "Rule", "RuleOutcome",
    "RuleStatus", "SelectSimilar", "TagRun", "evaluate_rules", "parse_rules", "rules_from_yaml", "validate_rules",
]

