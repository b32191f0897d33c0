"""Check rules against the columns the per-sample table will have (:func:`validate_rules`), at fit start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dq_plugins.rules.model import DERIVED_COLUMNS, ExportRows, Rule, SelectSimilar
from dq_plugins.schema import SLICE_TABLE_COLUMNS, SLICE_TABLE_METRICS, issue_types


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


__all__ = ["validate_rules"]
