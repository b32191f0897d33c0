"""Evaluate rules on the per-sample table (and the slice table): :func:`evaluate_rules` and its outcomes.

What a condition means is in :mod:`dq_plugins.rules.model` (:meth:`~dq_plugins.rules.model.Condition.evaluate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from dq_plugins.logs import warn
from dq_plugins.rules.model import Rule, _where_mask


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
            warn(f"dq_plugins: rule {rule.name!r} {outcome.status.value}: {outcome.message}",
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
    from dq_plugins.analysis.slice_history import slice_masks

    for member in slice_masks(samples, slice_rows).values():
        mask |= member
    return mask


__all__ = ["RuleOutcome", "RuleStatus", "evaluate_rules"]
