"""Rules read from YAML or from plain data: :func:`rules_from_yaml` and :func:`parse_rules`.

YAML is read with ``yaml.safe_load`` only, bounded in size, depth and node count before it is
interpreted, and checked field by field against a whitelist: nothing in it is ever executed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from dq_plugins.rules.model import (
    ACTION_TYPES,
    MAX_RULES,
    MAX_YAML_CHARS,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    Action,
    Condition,
    Rule,
)
from dq_plugins.rules.validation import validate_rules


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


__all__ = ["parse_rules", "rules_from_yaml"]
