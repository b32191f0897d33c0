"""Metadata, slices and rules through the Lightning callback."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import BlobsDataset
from dq_plugins import load_samples
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.rules import Condition, ExportRows, FailRun, Rule, TagRun
from test_lightning_callback import TinyClassifier, fit


class WithSource(BlobsDataset):
    """Blobs with a metadata key "source"; every sample of source "forum" has a wrong label."""

    def __init__(self, n=240):
        super().__init__(n)
        self.source = ["forum" if i % 4 == 0 else "web" for i in range(n)]
        self.noisy = self.labels.clone()
        forum = torch.tensor([s == "forum" for s in self.source])
        self.noisy[forum] = (self.labels[forum] + 1) % 3

    def __getitem__(self, index):
        item = super().__getitem__(index)
        item["labels"] = self.noisy[index]
        item["source"] = self.source[index]
        return item


def test_metadata_keys_become_columns_and_the_planted_weak_slice_is_found(tracking_uri):
    callback, _ = fit(DataQualityCallback(metadata_keys=["source"]), train=WithSource(), max_epochs=4, batch_size=32)
    samples = load_samples(callback.run_id, split="train")
    assert (samples["source"] == samples["sample_id"].map(lambda i: "forum" if i % 4 == 0 else "web")).all()
    weak = callback.result.weak_slices
    assert "source=forum" in set(weak[weak["split"] == "train"]["slice"])
    paths = {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq")}
    assert {"dq/slices.json", "dq/weak_slices.json", "dq/weak_slices.png"} <= paths


def test_a_metadata_dataframe_is_merged_by_sample_id(tracking_uri):
    frame = pd.DataFrame({"sample_id": range(96), "day": [i // 48 for i in range(96)]})
    callback, _ = fit(DataQualityCallback(metadata=frame), max_epochs=1)
    samples = load_samples(callback.run_id, split="train")
    assert (samples["day"] == samples["sample_id"] // 48).all()
    assert {"day=0", "day=1"} <= set(callback.result.slices["slice"])


def test_rules_run_their_actions_and_are_logged(tracking_uri):
    rules = [Rule("many_issues", Condition("is_label_issue", ">=", 1, aggregate="count"),
                  then=[ExportRows("issues"), TagRun("dq.flagged", "yes")])]
    callback, _ = fit(DataQualityCallback(rules=rules), train=WithSource(), max_epochs=4, batch_size=32)
    run = mlflow.MlflowClient().get_run(callback.run_id)
    assert run.data.tags.get("dq.flagged") == "yes"
    paths = {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq/rules")}
    assert "dq/rules/issues.parquet" in paths
    assert "dq/rules.json" in {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq")}


def test_a_fail_rule_raises_after_the_results_are_saved(tracking_uri):
    from dq_plugins.rules import DataQualityRuleFailed

    rules = [Rule("no_issues_allowed", Condition("is_label_issue", ">=", 1, aggregate="count"), then=[FailRun("raise")])]
    callback = DataQualityCallback(rules=rules)
    with pytest.raises(DataQualityRuleFailed):
        fit(callback, train=WithSource(), max_epochs=4, batch_size=32)
    assert "dq/samples.parquet" in {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq")}


def test_rules_on_unknown_columns_fail_at_construction():
    with pytest.raises(ValueError, match="nope"):
        DataQualityCallback(rules=[Rule("r", Condition("nope", ">", 0, aggregate="mean"), then=[TagRun("a", "b")])])


def test_a_rule_on_another_tasks_column_fails_at_the_first_single_label_batch(tracking_uri):
    # `num_tokens` is a column of token runs: valid at construction (the task is not known yet), not once a
    # single-label batch arrives
    callback = DataQualityCallback(rules=[Rule("r", Condition("num_tokens", ">", 3), then=[TagRun("a", "b")])])
    with pytest.raises(ValueError, match=r"(?s)single_label run.*unknown metric 'num_tokens'"):
        fit(callback, train=WithSource(), max_epochs=1, batch_size=32)


def test_yaml_rules_and_missing_metadata_keys(tracking_uri):
    text = "rules:\n  - name: noisy\n    when: {metric: mislabel_score, op: '>', threshold: 0.5, aggregate: mean}\n    then: [{tag_run: {key: k, value: v}}]\n"
    assert [rule.name for rule in DataQualityCallback(rules=text).session.rules] == ["noisy"]
    with pytest.raises(ValueError, match=r"no metadata key\(s\) \['source'\]"):
        fit(DataQualityCallback(metadata_keys=["source"]), max_epochs=1)
