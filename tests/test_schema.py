"""The schema module: split order, metric keys, artifact paths and the registry of issue types."""

from __future__ import annotations

import dataclasses

import pytest

import dq_plugins
from dq_plugins import schema
from dq_plugins.schema import IssueType, ScoreDirection


def test_builtin_issue_types_name_their_columns():
    types = {t.name: t for t in dq_plugins.issue_types()}
    assert list(types) == ["label", "outlier", "near_duplicate", "duplicate", "leaked"]
    assert (types["leaked"].flag_column, types["leaked"].score_column) == ("is_leaked", "leaked_score")
    assert (types["label"].flag_column, types["label"].score_column) == ("is_label_issue", "mislabel_score")
    assert (types["duplicate"].flag_column, types["duplicate"].score_column) == (
        "conflicting_duplicate", "conflicting_duplicate_score")
    for issue in types.values():
        assert issue.score_direction is ScoreDirection.HIGHER_IS_WORSE and issue.description
        assert issue.flag_column in schema.COMPUTED_COLUMNS and issue.score_column in schema.COMPUTED_COLUMNS
        assert issue.needs_embeddings == (issue.flag_column in schema.EMBEDDING_COLUMNS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        types["label"].name = "x"  # type: ignore[misc]


def test_every_computed_column_says_where_it_is_computed():
    assert set(schema.COMPUTED_IN) == set(schema.COMPUTED_COLUMNS)
    assert schema.COMPUTED_IN["conflicting_duplicate_score"] == "dq_plugins.scores.duplicates"


def test_register_issue_type(monkeypatch):
    monkeypatch.setattr(schema, "_ISSUE_TYPES", dict(schema._ISSUE_TYPES))
    extra = IssueType("ambiguous", "is_ambiguous", "ambiguity", ScoreDirection.HIGHER_IS_WORSE, "two classes fit",
                      "my_package.scores")
    assert dq_plugins.register_issue_type(extra) is extra
    assert dq_plugins.issue_types()[-1] is extra and schema.issue_type("ambiguous") is extra
    with pytest.raises(ValueError, match=r"Issue type 'ambiguous' is already registered .*HINT: .*replace=True"):
        dq_plugins.register_issue_type(extra)
    again = dataclasses.replace(extra, description="redefined")
    assert dq_plugins.register_issue_type(again, replace=True) is schema.issue_type("ambiguous")
    with pytest.raises(ValueError, match=r"Unknown issue type 'nope'. HINT: use one of \['ambiguous', 'duplicate'"):
        schema.issue_type("nope")


def test_splits_metric_keys_and_paths():
    assert schema.ordered_splits(["test", "validation", "train", "holdout", "train"]) == [
        "train", "validation", "holdout", "test"]
    assert [schema.split_rank(s) for s in ("train", "validation", "test")] == [0, 1, 2]
    assert schema.summary_metric_key("num_label_issues", "train") == "dq.num_label_issues"
    assert schema.summary_metric_key("num_label_issues", "validation") == "dq.num_label_issues.validation"
    assert schema.split_metric_key("accuracy", "train") == "dq.accuracy.train"
    assert schema.raw_path("train") == "dq/raw/train.npz" and schema.embeddings_path("val") == "dq/embeddings/val.npz"
    assert (schema.SAMPLES_PATH, schema.ISSUES_PATH, schema.SLICES_PATH) == (
        "dq/samples.parquet", "dq/issues.json", "dq/slices.json")
