"""Rules with ``on_validation=True``: evaluated after each validation epoch on its record (fail fast)."""

from __future__ import annotations

import json

import mlflow
import pytest

from dq_plugins.lightning import DataQualityCallback
from dq_plugins.rules import Condition, DataQualityRuleFailed, FailRun, Rule, TagRun
from test_lightning_callback import fit
from test_lightning_slices_rules import WithSource

ALWAYS = Condition("correct", "<=", 1.0, aggregate="mean")  # mean correctness is at most 1: holds every time


def rules_table(run_id):
    client = mlflow.MlflowClient()
    path = client.download_artifacts(run_id, "dq/rules.json")
    with open(path) as handle:
        table = json.load(handle)
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def test_rules_are_evaluated_after_each_validation_and_logged_with_their_epoch(tracking_uri):
    rules = [
        Rule("forum_accuracy",
             Condition("accuracy", "<", 0.5, over="slices", where={"column": "source", "value": "forum"}),
             then=[TagRun("dq.forum", "weak")], split="validation", on_validation=True),
        Rule("watch", ALWAYS, then=[FailRun("mark_failed")], split="validation", on_validation=True),
    ]
    callback, _ = fit(DataQualityCallback(metadata_keys=["source"], rules=rules, embeddings=False),
                      train=WithSource(), val=WithSource(120), max_epochs=3, batch_size=32)
    rows = rules_table(callback.run_id)
    assert [(row["epoch"], row["rule"]) for row in rows] == [
        (0, "forum_accuracy"), (0, "watch"), (1, "forum_accuracy"), (1, "watch"), (2, "forum_accuracy"), (2, "watch"),
        (None, "forum_accuracy"), (None, "watch"),  # the end-of-fit evaluation, where the actions run
    ]
    assert rows[0]["status"] == "held" and rows[0]["actions"] == ""  # every forum label is wrong: accuracy 0
    client = mlflow.MlflowClient()
    held = client.get_metric_history(callback.run_id, "dq.rule.forum_accuracy.held")
    assert sorted((m.step, m.value) for m in held) == [(0, 1.0), (1, 1.0), (2, 1.0)]
    run = client.get_run(callback.run_id)
    assert run.data.tags["dq.forum"] == "weak" and run.info.status == "FAILED"  # mark_failed held at a validation


def test_a_failing_rule_stops_fit_at_the_first_validation(tracking_uri):
    rules = [Rule("stop", ALWAYS, then=[FailRun("raise", "validation went wrong")], split="validation",
                  on_validation=True)]
    callback = DataQualityCallback(rules=rules, embeddings=False)
    with pytest.raises(DataQualityRuleFailed, match="validation went wrong"):
        fit(callback, train=WithSource(), val=WithSource(120), max_epochs=5, batch_size=32)
    assert sorted(callback.session.ledgers["validation"].history) == [0]  # stopped after the first validation
    run = mlflow.MlflowClient().get_run(callback.run_id)
    assert run.info.status == "FAILED"
    assert [(row["epoch"], row["status"]) for row in rules_table(callback.run_id)] == [(0, "held")]
    paths = {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq/raw")}
    assert "dq/raw/train.npz" in paths


@pytest.mark.parametrize(("rule", "match"), [
    (Rule("r", ALWAYS, on_validation=True), r"split='train': at a validation only the validation split"),
    (Rule("r", Condition("mislabel_score", ">", 0.5), split="validation", on_validation=True),
     r"'mislabel_score' exists only after the end-of-fit analysis"),
    (Rule("r", Condition("label_issue_rate", ">", 0.5, over="slices"), split=None, on_validation=True),
     r"'label_issue_rate' exists only after"),
])
def test_validation_rules_that_need_end_of_fit_scores_fail_at_construction(rule, match):
    with pytest.raises(ValueError, match=match):
        DataQualityCallback(rules=[rule])


def test_hf_a_failing_rule_stops_training_and_ends_the_run_failed(tmp_path, tracking_uri):
    pytest.importorskip("transformers")
    from test_transformers_metadata_latency import make_dataset, make_trainer

    from dq_plugins.transformers import DataQualityCallback as HFCallback

    rules = [Rule("stop", ALWAYS, then=[FailRun("raise")], split="validation", on_validation=True)]
    callback = HFCallback(rules=rules, embeddings=False)
    trainer = make_trainer(tmp_path, callback, make_dataset(16, 0, seed=0), make_dataset(8, 0, seed=1),
                           num_train_epochs=3)
    with pytest.raises(DataQualityRuleFailed, match="rule 'stop' held"):
        trainer.train()
    assert trainer.state.epoch == pytest.approx(1.0)  # stopped at the first evaluation
    client = mlflow.MlflowClient(tracking_uri)
    assert client.get_run(callback.run_id).info.status == "FAILED"
    assert {"dq/rules.json", "dq/raw"} <= {a.path for a in client.list_artifacts(callback.run_id, "dq")}


def test_hf_rule_on_another_tasks_column_fails_at_train_begin(tracking_uri, tmp_path):
    """The Hugging Face model says the task at train begin: a rule on a token run's column fails there."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from dq_plugins.rules import Condition, Rule, TagRun
    from dq_plugins.transformers import DataQualityCallback as HFCallback
    from test_transformers_callback import make_dataset, make_model

    callback = HFCallback(rules=[Rule("r", Condition("num_tokens", ">", 3), then=[TagRun("a", "b")])])
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1, use_cpu=True, report_to="none",
                             save_strategy="no", disable_tqdm=True, logging_strategy="no")
    with pytest.raises(ValueError, match=r"(?s)single_label run.*unknown metric 'num_tokens'"):
        Trainer(model=make_model(), args=args, train_dataset=make_dataset(16, seed=0), callbacks=[callback]).train()
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []  # no run left open or empty
