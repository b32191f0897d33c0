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
matched (for a slice condition: the members of the matching slices).

This module is the rule model (:class:`Rule`, :class:`Condition`, the actions). Rules are evaluated
by :mod:`dq_plugins.rules.evaluation` (outcomes are :class:`~dq_plugins.rules.evaluation.RuleStatus`
values), checked against the table's columns by :mod:`dq_plugins.rules.validation`, read from YAML
by :mod:`dq_plugins.rules.parsing`; actions are executed by
:func:`dq_plugins.rules.actions.run_rule_actions`.

Rules in YAML (:func:`~dq_plugins.rules.parsing.rules_from_yaml`) are read with ``yaml.safe_load``
only and checked field by field against a whitelist: nothing in them is ever executed. See
:func:`~dq_plugins.rules.parsing.parse_rules` for the format.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd


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
            ``over="slices"`` (:data:`dq_plugins.schema.SLICE_TABLE_METRICS`).
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
        if self.key.lower().startswith("mlflow."):
            raise ValueError(
                f"TagRun: the tag key {self.key!r} is reserved: MLflow reads `mlflow.*` tags itself (run name, source, "
                "the tables its UI renders). HINT: use your own prefix, e.g. 'dq.' + the name."
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


__all__ = [
    "Action", "Condition", "DataQualityRuleFailed", "ExportRows", "FailRun", "RelabelList", "Rule", "SelectSimilar",
    "TagRun",
]
