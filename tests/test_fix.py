"""dq_plugins.fix: both dataset kinds, both actions, provenance, and every error message."""

from __future__ import annotations

import json
import warnings

import datasets
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

import dq_plugins
from dq_plugins.fixes import PROVENANCE_PATH, FixAction, FixedDataset, plan_fix, rule_text
from fixture_runs import shared_store, use_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with use_store(shared_store(tmp_path_factory)) as store:
        yield store


@pytest.fixture(scope="module")
def train_rows(store):
    return dq_plugins.load_samples(store.run_a, split="train")


def hf_dataset(store, with_class_label: bool = False) -> datasets.Dataset:
    ds = store.train_a
    features = datasets.Features({
        "idx": datasets.Value("int64"),
        "x": datasets.Sequence(datasets.Value("float32")),
        "labels": datasets.ClassLabel(names=["a", "b", "c"]) if with_class_label else datasets.Value("int64"),
    })
    return datasets.Dataset.from_dict(
        {"idx": list(range(len(ds))), "x": ds.inputs.tolist(), "labels": ds.labels.tolist()}, features=features
    )


# ---------------------------------------------------------------------------------------- plan (pure)
def toy() -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": [4, 1, 2, 3],
        "label": [0, 1, 2, 0],
        "suggested_label": [1, 1, 0, 2],
        "is_label_issue": [True, True, False, True],
        "mislabel_score": [0.95, 0.5, 0.99, 0.7],
    })


def test_plan_drop_takes_flagged_rows_sorted_by_id():
    plan = plan_fix(toy(), "drop")
    assert plan.action is FixAction.DROP
    assert plan.sample_ids.tolist() == [1, 3, 4] and plan.new_labels is None
    assert plan.old_labels.tolist() == [1, 0, 0] and plan.num_selected == 3


def test_plan_relabel_skips_rows_whose_suggestion_is_their_label():
    plan = plan_fix(toy(), FixAction.RELABEL)
    assert plan.sample_ids.tolist() == [3, 4]  # id 1: suggested 1 == label 1
    assert plan.new_labels.tolist() == [2, 1]
    assert plan.num_selected == 3


def test_plan_min_score_with_and_without_the_flag():
    assert plan_fix(toy(), "drop", min_score=0.9).sample_ids.tolist() == [4]
    assert plan_fix(toy(), "drop", min_score=0.9, only_flagged=False).sample_ids.tolist() == [2, 4]
    assert rule_text({"only_flagged": True, "min_score": 0.9}) == "is_label_issue and mislabel_score >= 0.9"
    assert rule_text({"only_flagged": False, "min_score": 0.5}) == "mislabel_score >= 0.5"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "delete"}, "Expected argument `action` to be one of ['drop', 'relabel'] but got 'delete'."),
        ({"min_score": 1.5}, "Expected argument `min_score` in [0, 1] (a mislabel_score) but got 1.5."),
        ({"only_flagged": False}, "`only_flagged=False` without `min_score` would select every sample."),
    ],
)
def test_plan_errors(kwargs, message):
    with pytest.raises(ValueError, match=_literal(message)):
        plan_fix(toy(), **kwargs)


def _literal(text: str) -> str:
    import re

    return re.escape(text)


# ---------------------------------------------------------------------------------------- torch datasets
def test_drop_on_a_dict_dataset(store, train_rows):
    flagged = set(train_rows.loc[train_rows["is_label_issue"], "sample_id"])
    clean, record = dq_plugins.fix(store.train_a, store.run_a, "drop", log_provenance=False, return_provenance=True)
    assert isinstance(clean, FixedDataset)
    assert len(clean) == len(store.train_a) - len(flagged)
    kept_ids = {int(clean[i]["idx"]) for i in range(len(clean))}
    assert kept_ids == set(range(len(store.train_a))) - flagged
    assert record["rows_changed"] == len(flagged) and record["action"] == "drop"
    assert record["dataset"]["rows_before"] == 150 and record["dataset"]["rows_after"] == len(clean)
    assert clean.provenance == record


def test_relabel_on_a_dict_dataset_uses_suggested_labels(store, train_rows):
    clean = dq_plugins.fix(store.train_a, store.run_a, "relabel", log_provenance=False)
    assert len(clean) == len(store.train_a)
    suggested = train_rows.set_index("sample_id")["suggested_label"]
    changed = [i for i in range(len(clean)) if int(clean[i]["labels"]) != int(store.train_a[i]["labels"])]
    flagged = train_rows[train_rows["is_label_issue"] & (train_rows["suggested_label"] != train_rows["label"])]
    assert sorted(changed) == sorted(flagged["sample_id"])
    for i in changed:
        item = clean[i]
        assert int(item["labels"]) == suggested[i]
        assert item["labels"].dtype == store.train_a[i]["labels"].dtype


def test_fix_on_a_tuple_dataset_keeps_tuples_and_dtypes(store, train_rows):
    base = TensorDataset(store.train_a.inputs, store.train_a.labels)
    relabelled = dq_plugins.fix(base, store.run_a, "relabel", log_provenance=False)
    flagged = train_rows[train_rows["is_label_issue"]].iloc[0]
    x, y = relabelled[int(flagged["sample_id"])]
    assert isinstance(relabelled[0], tuple)
    assert torch.equal(x, base[int(flagged["sample_id"])][0])
    assert y.dtype == torch.int64 and int(y) == flagged["suggested_label"]
    dropped = dq_plugins.fix(base, store.run_a, "drop", log_provenance=False)
    assert len(dropped) == len(base) - int(train_rows["is_label_issue"].sum())


def test_fix_with_ids_wrapper_keeps_the_ids(store):
    base = TensorDataset(store.train_a.inputs, store.train_a.labels)
    clean = dq_plugins.fix(dq_plugins.with_ids(base), store.run_a, "drop", log_provenance=False)
    first_dropped = int(np.setdiff1d(np.arange(len(base)), clean.positions)[0])
    assert all(int(clean[i]["idx"]) == int(clean.positions[i]) for i in range(len(clean)))
    assert first_dropped not in {int(clean[i]["idx"]) for i in range(len(clean))}


def test_dict_items_whose_id_is_not_the_position_are_refused(store):
    shifted = [{**store.train_a[i], "idx": i + 1000} for i in range(len(store.train_a))]
    clean = dq_plugins.fix(shifted, store.run_a, "drop", log_provenance=False)
    with pytest.raises(ValueError, match="carries idx=1000, but fix\\(\\) matches a torch dataset's samples by position"):
        clean[0]


# ---------------------------------------------------------------------------------------- HF datasets
def test_drop_on_a_hf_dataset(store, train_rows):
    ds = hf_dataset(store)
    clean = dq_plugins.fix(ds, store.run_a, "drop", log_provenance=False)
    flagged = set(train_rows.loc[train_rows["is_label_issue"], "sample_id"])
    assert isinstance(clean, datasets.Dataset)
    assert set(clean["idx"]) == set(range(len(ds))) - flagged


def test_relabel_on_a_hf_dataset_keeps_its_features(store, train_rows):
    ds = hf_dataset(store, with_class_label=True)
    clean = dq_plugins.fix(ds, store.run_a, "relabel", log_provenance=False)
    assert clean.features == ds.features
    flagged = train_rows[train_rows["is_label_issue"]].set_index("sample_id")["suggested_label"]
    new = dict(zip(clean["idx"], clean["labels"], strict=True))
    old = dict(zip(ds["idx"], ds["labels"], strict=True))
    assert {i for i in new if new[i] != old[i]} == {i for i, s in flagged.items() if s != old[i]}
    assert all(new[i] == s for i, s in flagged.items())


def test_hf_dataset_without_the_id_column(store):
    ds = hf_dataset(store).remove_columns("idx")
    with pytest.raises(ValueError, match=_literal("The dataset has no id column 'idx' (columns: ['x', 'labels'])")):
        dq_plugins.fix(ds, store.run_a, "drop", log_provenance=False)


def test_hf_dataset_without_the_label_column_cannot_be_relabelled(store):
    ds = hf_dataset(store).rename_column("labels", "target")
    with pytest.raises(ValueError, match="The dataset has no label column 'labels'.*HINT: pass `label_column=`"):
        dq_plugins.fix(ds, store.run_a, "relabel", log_provenance=False)
    assert len(dq_plugins.fix(ds, store.run_a, "relabel", label_column="target", log_provenance=False)) == len(ds)


def test_dataset_dict_is_refused(store):
    both = datasets.DatasetDict({"train": hf_dataset(store)})
    with pytest.raises(TypeError, match=_literal("HINT: pass `dataset['train']`")):
        dq_plugins.fix(both, store.run_a, "drop", log_provenance=False)


# ---------------------------------------------------------------------------------------- provenance
def test_provenance_is_logged_in_the_source_run_and_appended(store):
    client = mlflow.MlflowClient(store.uri)
    run = store.run_b  # a run the other tests do not fix
    dq_plugins.fix(store.train_a, run, "drop", tracking_uri=store.uri)
    _, record = dq_plugins.fix(store.train_a, run, "relabel", min_score=0.5, return_provenance=True)
    tags = client.get_run(run).data.tags
    assert tags["dq.fix.count"] == "2" and tags["dq.fix.last_action"] == "relabel"
    assert tags["dq.fix.last_rule"] == "is_label_issue and mislabel_score >= 0.5"
    assert tags["dq.fix.last_rows_changed"] == str(record["rows_changed"])
    local = client.download_artifacts(run, PROVENANCE_PATH, str(store.folder / "prov"))
    with open(local) as handle:
        fixes = json.load(handle)["fixes"]
    assert [f["action"] for f in fixes] == ["drop", "relabel"]
    assert fixes[1]["source_run_id"] == run and fixes[1]["sample_ids"] == record["sample_ids"]
    assert len(fixes[1]["new_labels"]) == len(fixes[1]["sample_ids"]) == fixes[1]["rows_changed"]


def test_the_fixed_dataset_is_an_mlflow_dataset_whose_source_is_the_source_run(store):
    client = mlflow.MlflowClient(store.uri)
    run = store.run_b
    with mlflow.start_run(run_name="retrain") as retrain:
        fixed, record = dq_plugins.fix(store.train_a, run, "drop", return_provenance=True)
    for run_id, context in ((run, "fix_output"), (retrain.info.run_id, "train")):
        inputs = [i for i in client.get_run(run_id).inputs.dataset_inputs
                  if i.dataset.source_type == "dq_plugins.fix" and json.loads(i.dataset.source)["action"] == "drop"]
        assert len(inputs) == 1, f"no fix dataset in run {run_id}"  # the same fix twice is one dataset
        assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == context
        assert json.loads(inputs[0].dataset.source)["source_run_id"] == run  # lineage
        assert inputs[0].dataset.name == "train-drop"
        assert json.loads(inputs[0].dataset.profile)["num_rows"] == len(fixed)
    assert record["rows_changed"] > 0


def test_no_provenance_logged_when_switched_off(store):
    client = mlflow.MlflowClient(store.uri)
    before = client.get_run(store.run_a).data.tags.get("dq.fix.count")
    dq_plugins.fix(store.train_a, store.run_a, "drop", log_provenance=False)
    assert client.get_run(store.run_a).data.tags.get("dq.fix.count") == before


# ---------------------------------------------------------------------------------------- bad input
def test_unknown_action_fails_before_reading_the_run():
    with pytest.raises(ValueError, match=_literal("one of ['drop', 'relabel'] but got 'remove'")):
        dq_plugins.fix([], "no-such-run", "remove")


def test_run_without_samples(store):
    client = mlflow.MlflowClient(store.uri)
    empty = client.create_run(client.get_run(store.run_a).info.experiment_id).info.run_id
    with pytest.raises(FileNotFoundError, match=f"Run '{empty}' has no dq/samples.parquet"):
        dq_plugins.fix(store.train_a, empty, "drop")


def test_unknown_run(store):
    with pytest.raises(LookupError, match="Run 'nope' was not found at tracking URI"):
        dq_plugins.fix(store.train_a, "nope", "drop")


def test_unknown_split(store):
    with pytest.raises(ValueError, match=_literal("has no 'test' rows in dq/samples.parquet; it has the splits")):
        dq_plugins.fix(store.train_a, store.run_a, "drop", split="test")


def test_different_dataset_warns_about_labels_and_missing_ids(store):
    other = [{"idx": i, "inputs": torch.zeros(8), "labels": torch.tensor(0)} for i in range(40)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dq_plugins.fix(other, store.run_a, "drop", log_provenance=False)
    messages = [str(w.message) for w in caught]
    assert any("are not in the dataset and were skipped" in m for m in messages)
    assert any("have a different label in the dataset than in the run" in m for m in messages)


def test_load_samples_reads_the_table_as_the_commands_do(store, train_rows):
    from dq_plugins.sinks.offline import make_client, read_samples

    everything = dq_plugins.load_samples(store.run_a)
    pd.testing.assert_frame_equal(everything, read_samples(make_client(), store.run_a))
    pd.testing.assert_frame_equal(train_rows, read_samples(make_client(), store.run_a, split="train"))
    assert dq_plugins.load_samples(store.run_a, split="test").empty  # no such split: no rows, as before
    with pytest.raises(LookupError, match="Run 'nope' was not found at tracking URI"):
        dq_plugins.load_samples("nope")
