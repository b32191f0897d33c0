"""Rules declared in code or YAML: predicates over the per-sample table, conditions, actions.

Public import path: ``from dq_plugins.rules import Rule, Condition, ExportRows, FailRun, ...``.
The rule model and its evaluation live in :mod:`dq_plugins.rules.model`; the actions that act on the
run (export, relabel list, tags, active-learning picks) in :mod:`dq_plugins.rules.actions`.
"""

from dq_plugins.rules.model import *  # noqa: F401,F403 - the public names, listed in model.__all__
from dq_plugins.rules.model import __all__  # noqa: F401
