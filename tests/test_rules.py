"""dq_plugins.rules and dq_plugins.rules.actions: conditions, validation, the YAML parser (hostile input
included) and every action against a staging sink."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from dq_plugins.rules.actions import (
    FAILED_TAG,
    RULE_TABLE_COLUMNS,
    RULES_TABLE_PATH,
    failure_of,
    marks_failed,
    outcomes_table,
    run_rule_actions,
)
from dq_plugins.sinks.mlflow_sink import MlflowSink
from dq_plugins.rules import (
    Condition,
    DataQualityRuleFailed,
    ExportRows,
    FailRun,
    RelabelList,
    Rule,
    RuleStatus,
    SelectSimilar,
    TagRun,
    evaluate_rules,
    parse_rules,
    rules_from_yaml,
    validate_rules,
)
from dq_plugins.rules.model import MAX_YAML_CHARS
from dq_plugins.selection import EmbeddingPool
from dq_plugins.analysis.slices import slice_metrics


def samples() -> pd.DataFrame:
    """Ten train rows, four validation rows. Train: label issues at ids 1, 4, 7 (rate 0.3); source=forum at
    ids 0-3, three of them wrong; mislabel_score = id / 10."""
    return pd.DataFrame({
        "sample_id": list(range(10)) + list(range(4)),
        "split": ["train"] * 10 + ["validation"] * 4,
        "label": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 1],
        "pred": [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        "suggested_label": [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1, 1],
        "is_label_issue": [False, True, False, False, True, False, False, True, False, False] + [False] * 4,
        "mislabel_score": [i / 10 for i in range(10)] + [0.5] * 4,
        "source": ["forum"] * 4 + ["news"] * 6 + ["forum", "news", "news", "news"],
    })


COLUMNS = list(samples().columns)


def one(rule: Rule, table: pd.DataFrame | None = None, slices: pd.DataFrame | None = None):
    return evaluate_rules([rule], samples() if table is None else table, slices)[0]


# ---------------------------------------------------------------------------------------- conditions
def test_aggregate_conditions_hand_computed():
    rate = one(Rule("r", Condition("is_label_issue", ">", 0.25, aggregate="rate")))
    assert (rate.status, rate.values, rate.num_matched) == (RuleStatus.HELD, (0.3,), 3)
    assert rate.matched["sample_id"].tolist() == [1, 4, 7]  # the truthy rows
    count = one(Rule("c", Condition("is_label_issue", ">=", 4, aggregate="count")))
    assert (count.status, count.values) == (RuleStatus.NOT_HELD, (3.0,))
    assert count.num_matched == 0
    mean = one(Rule("m", Condition("mislabel_score", ">", 0.1, aggregate="mean", where={"source": "forum"})))
    assert mean.values == (pytest.approx(0.15),) and mean.status is RuleStatus.HELD  # (0 + .1 + .2 + .3) / 4
    assert mean.matched["sample_id"].tolist() == [0, 1, 2, 3]  # every kept row
    accuracy = one(Rule("a", Condition("correct", "<", 0.5, aggregate="rate", where={"source": "forum"})))
    assert accuracy.values == (0.25,) and accuracy.status is RuleStatus.HELD  # only id 3 is correct
    extremes = one(Rule("x", [Condition("mislabel_score", "==", 0.9, aggregate="max"),
                              Condition("mislabel_score", "==", 0.0, aggregate="min"),
                              Condition("is_label_issue", "==", 1, aggregate="any")]))
    assert extremes.values == (0.9, 0.0, 1.0) and extremes.status is RuleStatus.HELD


def test_row_conditions_where_forms_and_conjunction():
    high = one(Rule("h", Condition("mislabel_score", ">=", 0.75)))
    assert (high.values, high.matched["sample_id"].tolist()) == ((2.0,), [8, 9])
    listed = one(Rule("l", Condition("mislabel_score", "<", 0.2, where={"source": ["forum", "blog"]})))
    assert listed.matched["sample_id"].tolist() == [0, 1]
    ranged = one(Rule("g", Condition("is_label_issue", "==", 1, where={"mislabel_score": {">": 0.2, "<": 0.7}})))
    assert ranged.matched["sample_id"].tolist() == [4]
    label_as_text = one(Rule("t", Condition("correct", "==", 0, where={"label": "1"})))  # "1" matches label 1
    assert label_as_text.matched["sample_id"].tolist() == [1]
    both = one(Rule("b", [Condition("is_label_issue", "==", 1), Condition("correct", "==", 1)]))
    assert both.status is RuleStatus.HELD and both.matched["sample_id"].tolist() == [4, 7]  # the intersection
    all_splits = one(Rule("s", Condition("correct", "==", 0, where={"source": "forum"}), split=None))
    assert list(zip(all_splits.matched["split"], all_splits.matched["sample_id"])) == [
        ("train", 0), ("train", 1), ("train", 2),
    ]
    validation = one(Rule("v", Condition("correct", "==", 0), split="validation"))
    assert validation.matched["sample_id"].tolist() == [1]


def test_slice_conditions_match_the_members_of_the_matching_slices():
    table = samples()
    slices = slice_metrics(table, columns=["source"], min_size=1)
    weak = Rule("weak", Condition("accuracy", "<", 0.5, where={"column": "source"}, over="slices"))
    outcome = one(weak, table, slices)
    assert outcome.status is RuleStatus.HELD
    assert outcome.matched_slices["slice"].tolist() == ["source=forum"]
    assert outcome.matched["sample_id"].tolist() == [0, 1, 2, 3]
    count = one(Rule("n", Condition("size", ">=", 2, aggregate="count", where={"accuracy": {"<": 0.9}},
                                    over="slices")), table, slices)
    # train slices below 0.9 accuracy: source=forum (0.25), label=0 (0.6), label=1 (0.8): 3 truthy sizes
    assert count.values == (3.0,)


def test_no_data_and_skipped_are_outcomes_with_warnings_not_errors():
    with pytest.warns(RuntimeWarning, match=r"rule 'w' no_data: `where` of condition .* keeps no row"):
        outcome = one(Rule("w", Condition("correct", "==", 0, where={"source": "blog"})))
    assert outcome.status is RuleStatus.NO_DATA and math.isnan(outcome.values[0])
    with pytest.warns(RuntimeWarning, match=r"rule 'p' no_data: no rows in split 'test' \(splits present"):
        assert one(Rule("p", Condition("correct", "==", 0), split="test")).status is RuleStatus.NO_DATA
    with pytest.warns(RuntimeWarning, match=r"rule 'k' skipped: column 'mislabel_score' is not in the samples table"):
        light = samples().drop(columns=["mislabel_score"])  # e.g. at a validation, before the analysis
        assert one(Rule("k", Condition("mislabel_score", ">", 0.5)), light).status is RuleStatus.SKIPPED
    with pytest.warns(RuntimeWarning, match=r"rule 'z' skipped: it has a slice condition but no slice table"):
        assert one(Rule("z", Condition("accuracy", "<", 0.5, over="slices"))).status is RuleStatus.SKIPPED


def test_construction_errors_name_the_field_and_the_valid_values():
    with pytest.raises(ValueError, match=r"Unknown operator '=>'\. Valid: \['<', '<=', '>', '>=', '==', '!='\]"):
        Condition("correct", "=>", 0.5)
    with pytest.raises(ValueError, match=r"Unknown aggregate 'median'\. Valid: \['rate', 'mean', 'count', 'any'"):
        Condition("correct", "<", 0.5, aggregate="median")
    with pytest.raises(ValueError, match=r"Unknown `over` 'rows'\. Valid: \['samples', 'slices'\]"):
        Condition("correct", "<", 0.5, over="rows")
    with pytest.raises(ValueError, match=r"`threshold` to be a finite number but got 'high'"):
        Condition("correct", "<", "high")
    with pytest.raises(ValueError, match=r"Condition on 'correct': `where\['x'\]`: Unknown operator '~'"):
        Condition("correct", "<", 0.5, where={"x": {"~": 1}})
    with pytest.raises(ValueError, match=r"`name` to be 1-64 letters.*but got '../etc'"):
        Rule("../etc", Condition("correct", "<", 0.5))
    with pytest.raises(ValueError, match=r"Rule 'r': unknown action 'print'\. Valid: \['TagRun', 'ExportRows'"):
        Rule("r", Condition("correct", "<", 0.5), then=["print"])
    with pytest.raises(ValueError, match=r"TagRun: expected `key` to be an MLflow tag key"):
        TagRun("bad=key")
    with pytest.raises(ValueError, match=r"Unknown mode 'crash'\. Valid: \['raise', 'mark_failed'\]"):
        FailRun("crash")
    with pytest.raises(ValueError, match=r"SelectSimilar: expected `k` to be an integer >= 1 but got 0"):
        SelectSimilar(0)


# ---------------------------------------------------------------------------------------- validation
def test_validate_rules_names_unknown_metrics_and_columns():
    validate_rules([Rule("ok", Condition("mislabel_score", ">", 0.5, where={"source": "forum"}))], COLUMNS)
    with pytest.raises(ValueError, match=r"Rule 'r': unknown metric 'mislabel' for a condition over samples\. "
                                         r"Valid metrics: \[.*'mislabel_score'.*'correct'\]"):
        validate_rules([Rule("r", Condition("mislabel", ">", 0.5))], COLUMNS)
    with pytest.raises(ValueError, match=r"unknown metric 'accuracy' .* HINT: slice metrics need over='slices'"):
        validate_rules([Rule("r", Condition("accuracy", "<", 0.5))], COLUMNS)
    with pytest.raises(ValueError, match=r"unknown metric 'outlier' .* HINT: 'outlier' is an issue type; test its "
                                         r"flag column 'is_outlier' \(or its score 'outlier_score'\)"):
        validate_rules([Rule("r", Condition("outlier", ">", 0.1, aggregate="rate"))], COLUMNS)
    with pytest.raises(ValueError, match=r"Rule 'r': unknown column 'day' in `where`\. Valid columns: \["):
        validate_rules([Rule("r", Condition("correct", "<", 0.5, where={"day": 1}))], COLUMNS)
    with pytest.raises(ValueError, match=r"unknown metric 'mislabel_score' for a condition over slices\. "
                                         r"Valid metrics: \['size', 'accuracy'"):
        validate_rules([Rule("r", Condition("mislabel_score", ">", 0.5, over="slices"))], COLUMNS)
    with pytest.raises(ValueError, match=r"selects slices of column 'day', which the per-sample table will not have"):
        validate_rules([Rule("r", Condition("accuracy", "<", 0.5, where={"column": "day"}, over="slices"))], COLUMNS)
    with pytest.raises(ValueError, match=r"ExportRows has unknown column 'text'"):
        validate_rules([Rule("r", Condition("correct", "<", 0.5), then=[ExportRows(columns=["text"])])], COLUMNS)
    with pytest.raises(ValueError, match=r"Two rules are named 'r'"):
        validate_rules([Rule("r", Condition("correct", "<", 0.5))] * 2, COLUMNS)
    with pytest.raises(ValueError, match=r"pool 'unlabeled', but the callback was given pools \['day2'\]\. "
                                         r"HINT: pass `pools=\{'unlabeled': dataset\}`"):
        validate_rules([Rule("r", Condition("correct", "<", 0.5), then=[SelectSimilar(5, pool="unlabeled")])],
                       COLUMNS, pools=["day2"])


# ---------------------------------------------------------------------------------------- YAML
VALID_YAML = """
rules:
  - name: forum_weak
    when:
      - {metric: accuracy, op: "<", threshold: 0.8, where: {column: source, value: forum}, over: slices}
    then:
      - tag_run: {key: dq.alert, value: forum}
      - export_rows: {columns: [sample_id, label, pred]}
      - relabel_list
      - select_similar: {k: 50, pool: unlabeled, balance: true}
      - fail_run: {mode: mark_failed}
  - name: noisy
    split: null
    on_validation: true
    when: {metric: is_label_issue, aggregate: rate, op: ">", threshold: 0.15}
    then: [fail_run]
"""


def test_yaml_gives_the_same_rules_as_code(tmp_path):
    expected = [
        Rule("forum_weak",
             Condition("accuracy", "<", 0.8, where={"column": "source", "value": "forum"}, over="slices"),
             then=[TagRun("dq.alert", "forum"), ExportRows(columns=["sample_id", "label", "pred"]), RelabelList(),
                   SelectSimilar(50, pool="unlabeled", balance=True), FailRun("mark_failed")]),
        Rule("noisy", Condition("is_label_issue", ">", 0.15, aggregate="rate"), then=[FailRun()], split=None,
             on_validation=True),
    ]
    assert rules_from_yaml(VALID_YAML, available_columns=COLUMNS) == expected
    path = tmp_path / "rules.yaml"
    path.write_text(VALID_YAML)
    assert rules_from_yaml(path) == expected
    assert rules_from_yaml(str(path)) == expected
    assert parse_rules([{"name": "x", "when": {"metric": "correct", "op": "<", "threshold": 1}}])[0].split == "train"
    assert rules_from_yaml("rules: []") == [] and rules_from_yaml("") == []


@pytest.mark.parametrize(("text", "message"), [
    ("rules:\n  - {name: r, when: {metric: correct, op: '<', treshold: 1}}",
     r"rules\[0\] \(r\)\.when: unknown field 'treshold'\. Valid fields: \['metric', 'op', 'threshold'"),
    ("rules:\n  - {name: r, when: {metric: correct, op: '<'}}",
     r"rules\[0\] \(r\)\.when: missing required field 'threshold'"),
    ("rules:\n  - {name: r, when: [{metric: correct, op: '=~', threshold: 1}]}",
     r"rules\[0\] \(r\)\.when\[0\]: Condition on 'correct': Unknown operator '=~'\. Valid: \['<'"),
    ("rules:\n  - {name: r, when: {metric: correct, op: '<', threshold: high}}",
     r"\.when\.threshold: expected a number but got str 'high'"),
    ("rules:\n  - {name: r, when: {metric: correct, op: '<', threshold: true}}",
     r"\.when\.threshold: expected a number but got True"),
    ("rules:\n  - {name: r, when: {metric: correct, op: '<', threshold: 1}, then: [shell: {cmd: ls}]}",
     r"rules\[0\] \(r\)\.then\[0\]: unknown action 'shell'\. Valid actions: \['tag_run', 'export_rows'"),
    ("rules:\n  - {name: r, when: {metric: correct, op: '<', threshold: 1}, then: [{tag_run: {key: a, colour: b}}]}",
     r"\.then\[0\]\.tag_run: unknown field 'colour'\. Valid fields: \['key', 'value'\]"),
    ("rules:\n  - {name: r, when: {metric: correct, op: '<', threshold: 1}, then: [tag_run]}",
     r"\.then\[0\]\.tag_run: missing required field 'key'"),
    ("rules:\n  - {name: r, when: {metric: correct, op: '<', threshold: 1}, color: red}",
     r"rules\[0\]: unknown field 'color'\. Valid fields: \['name', 'when', 'then', 'split', 'on_validation'\]"),
    ("rules:\n  - {name: r, when: {metric: correct, op: '<', threshold: 1, where: {day: 2020-01-01}}}",
     r"`where\['day'\]` must be a value, a list of values or a mapping operator -> number, but got date"),
    ("rules:\n  - {name: r, when: {metric: nope, op: '<', threshold: 1}}",
     r"Rule 'r': unknown metric 'nope' for a condition over samples\. Valid metrics:"),
    ("version: 2\nrules: []", r"a mapping with the single key 'rules', but got keys \['version', 'rules'\]"),
    ("- just text", r"rules\[0\]: expected a mapping with fields \['name', 'when'"),
    ("rules: {", r"could not be read as plain YAML"),
])
def test_yaml_errors_name_the_location_and_the_valid_choices(text, message):
    with pytest.raises(ValueError, match=message):
        rules_from_yaml(text, available_columns=COLUMNS)


@pytest.mark.parametrize("payload", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "rules:\n  - name: r\n    when: !!python/object/apply:os.system ['touch {marker}']",
    "rules:\n  - !!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
])
def test_hostile_yaml_is_refused_and_never_executed(tmp_path, payload):
    marker = tmp_path / "pwned"
    with pytest.raises(ValueError, match=r"not be read as plain YAML .* tags such as !!python/\.\.\. are refused"):
        rules_from_yaml(payload.format(marker=marker))
    assert not marker.exists()


def test_bombs_and_oversized_yaml_are_bounded():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
    )
    with pytest.raises(ValueError, match=r"too large: more than 20000 values|nested too deeply"):
        rules_from_yaml(bomb)
    with pytest.raises(ValueError, match=r"nested too deeply \(more than 12 levels\)"):
        rules_from_yaml("rules: " + "[" * 50 + "]" * 50)
    with pytest.raises(ValueError, match=r"nested too deeply"):
        rules_from_yaml("[" * 30000 + "]" * 30000)  # deeper than the parser's recursion
    with pytest.raises(ValueError, match=r"nested too deeply|too large"):
        rules_from_yaml("&a [*a]")  # a self-referencing list
    with pytest.raises(ValueError, match=rf"larger than {MAX_YAML_CHARS} characters"):
        rules_from_yaml("# " + "x" * MAX_YAML_CHARS)


# ---------------------------------------------------------------------------------------- actions
@pytest.fixture
def sink(tmp_path):
    staged = MlflowSink(fallback_dir=tmp_path / "fallback")  # staging only: nothing is flushed here
    yield staged
    staged.end()


def artifact(sink: MlflowSink, path: str):
    return sink.stage_path(path)


def test_export_relabel_and_tag_actions_write_their_files(sink):
    tags: dict[str, str] = {}
    rule = Rule("issues", Condition("is_label_issue", "==", 1),
                then=[TagRun("dq.alert", "label noise"), ExportRows(columns=["sample_id", "label", "source"]),
                      RelabelList(name="fix_me")])
    quiet = Rule("quiet", Condition("mislabel_score", ">", 5.0), then=[TagRun("dq.never", "x")])
    outcomes = evaluate_rules([rule, quiet], samples())
    report = run_rule_actions(outcomes, sink, set_tag=tags.__setitem__)

    assert tags == {"dq.alert": "label noise"}
    exported = pd.read_parquet(artifact(sink, "dq/rules/issues.parquet"))
    assert exported.to_dict("list") == {"sample_id": [1, 4, 7], "label": [1, 0, 1], "source": ["forum", "news", "news"]}
    relabel = pd.read_csv(artifact(sink, "dq/rules/fix_me_relabel.csv"))
    # ids 1, 4, 7 by mislabel_score descending; suggested differs from label for 1 (1 -> 0), 4 (0 -> 1), 7 (1 -> 0)
    assert relabel.columns.tolist() == ["split", "sample_id", "label", "suggested_label", "action", "mislabel_score"]
    assert relabel[["sample_id", "suggested_label", "action"]].values.tolist() == [
        [7, 0, "relabel"], [4, 1, "relabel"], [1, 0, "relabel"],
    ]
    assert report.artifacts == ["dq/rules/issues.parquet", "dq/rules/fix_me_relabel.csv"]
    assert report.outcomes[0].actions_run == (
        "tag_run dq.alert=label noise", "export_rows dq/rules/issues.parquet (3 rows)",
        "relabel_list dq/rules/fix_me_relabel.csv (3 rows, 3 relabel)",
    )
    assert report.outcomes[1].actions_run == ()
    table = pd.read_json(artifact(sink, RULES_TABLE_PATH), orient="split")
    assert table.columns.tolist() == list(RULE_TABLE_COLUMNS)
    assert table[["rule", "status", "matched_samples"]].values.tolist() == [["issues", "held", 3],
                                                                           ["quiet", "not_held", 0]]
    assert report.error is None and not report.mark_failed


def test_relabel_list_marks_rows_without_another_class_as_drop(sink):
    rule = Rule("forum", Condition("correct", "==", 0, where={"source": "forum"}), then=[RelabelList()])
    run_rule_actions(evaluate_rules([rule], samples()), sink)
    relabel = pd.read_csv(artifact(sink, "dq/rules/forum_relabel.csv"))
    # ids 0 (0 -> 0), 1 (1 -> 0), 2 (0 -> 0)
    assert dict(zip(relabel["sample_id"], relabel["action"])) == {0: "drop", 1: "relabel", 2: "drop"}


def test_fail_run_raise_and_mark_failed(sink):
    tags: dict[str, str] = {}
    rules = [
        Rule("too_noisy", Condition("is_label_issue", ">", 0.2, aggregate="rate"), then=[FailRun("raise")]),
        Rule("soft", Condition("correct", "<", 0.9, aggregate="rate"), then=[FailRun("mark_failed", "accuracy low")]),
    ]
    report = run_rule_actions(evaluate_rules(rules, samples()), sink, set_tag=tags.__setitem__)
    assert report.mark_failed
    assert tags == {FAILED_TAG: "too_noisy,soft"}
    assert isinstance(report.error, DataQualityRuleFailed) and report.error.rules == ("too_noisy",)
    with pytest.raises(DataQualityRuleFailed, match=r"rule 'too_noisy' held: rate\(is_label_issue\) > 0\.2 \[samples\] "
                                                    r"\(values 0\.3, 3 matching samples\)"):
        report.raise_if_failed()
    assert failure_of(evaluate_rules(rules[1:], samples())) is None  # mark_failed never raises
    assert marks_failed(evaluate_rules(rules[1:], samples())) and not marks_failed(evaluate_rules(rules[:1], samples()))


def test_actions_that_cannot_run_are_skipped_with_a_warning(sink):
    rule = Rule("r", Condition("is_label_issue", "==", 1), then=[TagRun("dq.x"), SelectSimilar(3, pool="unlabeled")])
    with pytest.warns(RuntimeWarning) as record:
        report = run_rule_actions(evaluate_rules([rule], samples()), sink)
    assert report.outcomes[0].actions_run == (
        "tag_run: skipped (no tag setter)",
        "select_similar: skipped (no unlabeled pool named 'unlabeled'; pools given: [])",
    )
    assert len(record) == 2 and "rule 'r': tag_run: skipped" in str(record[0].message)

    def broken_tracking(key: str, value: str) -> None:
        raise ConnectionError("tracking server down")

    with pytest.warns(RuntimeWarning) as record:
        report = run_rule_actions(evaluate_rules([rule], samples()), sink, set_tag=broken_tracking)
    assert "tag_run: failed (ConnectionError: tracking server down)\nTraceback" in str(record[0].message)
    assert report.outcomes[0].actions_run[0] == "tag_run: failed (ConnectionError: tracking server down)"
    assert report.outcomes[0].actions_run[1].startswith("select_similar: skipped")  # the next action still ran


def test_select_similar_action_writes_the_selection_table(sink):
    rng = np.random.default_rng(0)
    train = EmbeddingPool(np.arange(10), rng.normal(size=(10, 4)).astype(np.float32))
    pool_vectors = np.vstack([train.embeddings[[1, 4, 7]] * 2.0, rng.normal(size=(20, 4))])  # copies of the issues
    pool = EmbeddingPool(np.arange(100, 123), pool_vectors, partitions=np.array(["day1"] * 23))
    rule = Rule("issues", Condition("is_label_issue", "==", 1), then=[SelectSimilar(3, pool="unlabeled")])
    report = run_rule_actions(evaluate_rules([rule], samples()), sink, embeddings={"train": train},
                              pools={"unlabeled": pool})
    picked = pd.read_json(artifact(sink, "dq/rules/issues_selection.json"), orient="split")
    assert picked.columns.tolist() == ["rule", "pool_id", "similarity", "partition", "rank"]
    assert sorted(picked["pool_id"]) == [100, 101, 102]
    assert picked["similarity"].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert report.outcomes[0].actions_run == (
        "select_similar dq/rules/issues_selection.json (3 from pool 'unlabeled')",
    )


def test_validation_history_and_export_of_matching_slices(sink):
    table = samples()
    slices = slice_metrics(table, columns=["source"], min_size=1)
    rule = Rule("weak", Condition("accuracy", "<", 0.5, where={"column": "source"}, over="slices"),
                then=[ExportRows()], on_validation=True)
    early = outcomes_table(evaluate_rules([rule], table, slices), epoch=3)
    report = run_rule_actions(evaluate_rules([rule], table, slices), sink, history=early)
    assert report.table["epoch"].tolist() == [3, None]
    assert pd.read_parquet(artifact(sink, "dq/rules/weak_slices.parquet"))["slice"].tolist() == ["source=forum"]
    assert len(pd.read_parquet(artifact(sink, "dq/rules/weak.parquet"))) == 4


def test_rule_results_upload_to_mlflow(tmp_path_factory, tmp_path):
    import mlflow
    from fixture_runs import shared_store  # imports Lightning: only for this test

    store = shared_store(tmp_path_factory)  # the session's store: no second sqlite database to create
    client = mlflow.MlflowClient(store.uri)
    experiment = client.get_run(store.run_a).info.experiment_id
    run_id = client.create_run(experiment, run_name="rules").info.run_id
    sink = MlflowSink(client=client, run_id=run_id, fallback_dir=tmp_path / "fallback")
    rule = Rule("issues", Condition("is_label_issue", "==", 1), then=[ExportRows(), RelabelList()])
    early = outcomes_table(evaluate_rules([rule], samples()), epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed upload warns
        run_rule_actions(evaluate_rules([rule], samples()), sink, history=early)
        assert sink.flush()
    listed = {f.path for folder in ("dq", "dq/rules") for f in client.list_artifacts(run_id, folder)}
    assert {"dq/rules/issues.parquet", "dq/rules/issues_relabel.csv", RULES_TABLE_PATH} <= listed
    logged = pd.read_json(client.download_artifacts(run_id, RULES_TABLE_PATH, str(tmp_path)), orient="split")
    assert logged["rule"].tolist() == ["issues", "issues"]
    sink.end()
