"""Rules declared in code or YAML: predicates over the per-sample table, conditions, actions.

Public import path: ``from dq_plugins.rules import Rule, Condition, ExportRows, FailRun, ...``.
One module per job: the rule model (:mod:`dq_plugins.rules.model`), its evaluation
(:mod:`dq_plugins.rules.evaluation`), the check against the table's columns
(:mod:`dq_plugins.rules.validation`), reading YAML (:mod:`dq_plugins.rules.parsing`), and the actions
that act on the run (export, relabel list, tags, active-learning picks: :mod:`dq_plugins.rules.actions`).
"""

from dq_plugins.rules.evaluation import RuleOutcome, RuleStatus, evaluate_rules
from dq_plugins.rules.model import (
    Action,
    Condition,
    DataQualityRuleFailed,
    ExportRows,
    FailRun,
    RelabelList,
    Rule,
    SelectSimilar,
    TagRun,
)
from dq_plugins.rules.parsing import parse_rules, rules_from_yaml
from dq_plugins.rules.validation import validate_rules

__all__ = [
    "Action", "Condition", "DataQualityRuleFailed", "ExportRows", "FailRun", "RelabelList", "Rule", "RuleOutcome",
    "RuleStatus", "SelectSimilar", "TagRun", "evaluate_rules", "parse_rules", "rules_from_yaml", "validate_rules",
]
