"""dq_plugins.select_subset: the selection order, class and cluster coverage, and bad input."""

from __future__ import annotations

import re

import mlflow
import numpy as np
import pandas as pd
import pytest

import dq_plugins
from dq_plugins.subset import hardness, plan_subset, proportional_quotas, redundant_duplicates
from fixture_runs import shared_store, use_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with use_store(shared_store(tmp_path_factory)) as store:
        yield store


def table(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {
        "sample_id": np.arange(n),
        "label": np.zeros(n, dtype=int),
        "is_label_issue": np.zeros(n, dtype=bool),
        "mislabel_score": np.linspace(0, 1, n),
        "el2n": np.linspace(0, 1, n),
        "forgetting_events": np.zeros(n, dtype=int),
    }
    base.update(columns)
    return pd.DataFrame(base)


# ---------------------------------------------------------------------------------------- pure pieces
def test_hardness_is_the_mean_percentile_rank_of_el2n_and_forgetting():
    frame = table(el2n=[0.1, 0.3, 0.2, np.nan], forgetting_events=[0, 2, 0, 0])
    # el2n ranks: nan lowest -> [2, 4, 3, 1]/4; forgetting ranks (ties averaged): [2, 4, 2, 2]/4
    np.testing.assert_allclose(hardness(frame), [(0.5 + 0.5) / 2, 1.0, (0.75 + 0.5) / 2, (0.25 + 0.5) / 2])


def test_proportional_quotas_hand_cases():
    rng = np.random.default_rng(0)
    assert proportional_quotas(np.array([50, 30, 20]), 10, rng).tolist() == [5, 3, 2]
    assert proportional_quotas(np.array([97, 2, 1]), 5, rng).tolist() == [3, 1, 1]  # every cell covered
    assert proportional_quotas(np.array([3, 1]), 4, rng).tolist() == [3, 1]
    quotas = proportional_quotas(np.array([7, 7, 7]), 10, rng)
    assert quotas.sum() == 10 and sorted(quotas.tolist()) == [3, 3, 4]
    assert proportional_quotas(np.array([5, 5, 5]), 2, rng).sum() == 2  # fewer than cells: no minimum


def test_redundant_duplicates_keeps_one_of_each_pair():
    frame = table(el2n=np.zeros(5), near_duplicate_of=[1, 0, -1, 2, 9])
    assert redundant_duplicates(frame).tolist() == [False, True, False, True, False]
    assert not redundant_duplicates(table(el2n=np.zeros(3))).any()


# ---------------------------------------------------------------------------------------- plan_subset
def test_label_issues_go_first_then_the_easiest():
    frame = table(
        label=[0] * 6 + [1] * 4,
        el2n=[0.1, 0.9, 0.5, 0.95, 0.2, 0.3, 0.8, 0.1, 0.7, 0.99],
        is_label_issue=[False, False, False, True, False, False, False, False, False, True],
    )
    ids, report = plan_subset(frame, 0.5, seed=0, skip_hardest=0.0)
    # class 0 keeps 3 of 6: flagged id 3 dropped, then the easiest (ids 0, 4); class 1 keeps 2 of 4.
    assert ids.tolist() == [1, 2, 5, 6, 8]
    assert report["label_issues_dropped"] == 2 and report["label_issues_kept"] == 0
    assert report["easy_dropped"] == 3
    assert report["per_class"] == {0: {"total": 6, "selected": 3}, 1: {"total": 4, "selected": 2}}


def test_the_hardest_share_goes_right_after_the_label_issues():
    frame = table(
        el2n=[0.1, 0.9, 0.5, 0.95, 0.2, 0.3, 0.8, 0.4, 0.7, 0.6, 0.05],
        is_label_issue=[False, False, False, True, False, False, False, False, False, False, False],
    )
    # 10 unflagged: the 2 hardest (ids 1, 6) are suspects; then the easiest (0, 10, 4, ...) go
    ids, report = plan_subset(frame, 5 / 11, skip_hardest=0.2)
    assert ids.tolist() == [2, 5, 7, 8, 9]
    assert report["hardest_dropped"] == 2 and report["label_issues_dropped"] == 1 and report["skip_hardest"] == 0.2
    # a larger budget takes the suspects back, least hard first, before any flagged row
    ids, report = plan_subset(frame, 10 / 11, skip_hardest=0.2)
    assert ids.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert report["hardest_dropped"] == 0 and report["label_issues_kept"] == 0


def test_forgotten_samples_are_kept_before_equally_hard_unforgotten_ones():
    frame = table(el2n=[0.5, 0.5, 0.5, 0.5], forgetting_events=[0, 3, 0, 1])
    ids, _ = plan_subset(frame, 0.5)
    assert ids.tolist() == [1, 3]


def test_flagged_samples_fill_the_budget_last_least_suspicious_first():
    frame = table(is_label_issue=[True, True, True, False], mislabel_score=[0.9, 0.6, 0.99, 0.1])
    ids, report = plan_subset(frame, 0.5)
    assert ids.tolist() == [1, 3]
    assert report["label_issues_kept"] == 1


def test_every_cluster_is_covered():
    frame = table(el2n=np.r_[np.linspace(0.5, 1, 18), [0.01, 0.02]], cluster=[0] * 18 + [1] * 2)
    ids, report = plan_subset(frame, 0.2)
    assert report["strata"] == "label+cluster" and report["cells_covered"] == 2
    assert {18, 19} & set(ids.tolist())  # the easy, small cluster still has a representative


def test_near_duplicates_are_dropped_before_distinct_samples():
    frame = table(el2n=[0.9, 0.8, 0.1, 0.2], near_duplicate_of=[1, 0, -1, -1])
    ids, report = plan_subset(frame, 0.75)
    assert ids.tolist() == [0, 2, 3] and report["near_duplicates_dropped"] == 1


def test_fraction_one_keeps_everything_and_seed_breaks_ties():
    frame = table(el2n=np.zeros(10))
    ids, _ = plan_subset(frame, 1.0)
    assert ids.tolist() == list(range(10))
    picks = {tuple(plan_subset(frame, 0.3, seed=s)[0]) for s in range(5)}
    assert len(picks) > 1
    assert plan_subset(frame, 0.3, seed=3)[0].tolist() == plan_subset(frame, 0.3, seed=3)[0].tolist()


@pytest.mark.parametrize(
    ("fraction", "message"),
    [
        (0.0, "Expected argument `fraction` in (0, 1] (the share of samples to keep) but got 0.0."),
        (1.5, "Expected argument `fraction` in (0, 1] (the share of samples to keep) but got 1.5."),
        ("half", "Expected argument `fraction` to be a number in (0, 1] but got 'half'."),
    ],
)
def test_bad_fraction(fraction, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_subset(table(el2n=np.zeros(3)), fraction)


@pytest.mark.parametrize("skip", [-0.1, 1.0])
def test_bad_skip_hardest(skip):
    with pytest.raises(ValueError, match=re.escape(f"Expected argument `skip_hardest` in [0, 1) but got {skip}.")):
        plan_subset(table(el2n=np.zeros(3)), 0.5, skip_hardest=skip)


def test_missing_columns_and_empty_table():
    with pytest.raises(ValueError, match=re.escape("The per-sample table lacks the columns ['el2n']")):
        plan_subset(table(el2n=np.zeros(3)).drop(columns="el2n"), 0.5)
    with pytest.raises(ValueError, match="The per-sample table has no rows to select from."):
        plan_subset(table(el2n=np.zeros(0)), 0.5)


# ---------------------------------------------------------------------------------------- on a run
def test_select_subset_on_a_trained_run(store):
    samples = dq_plugins.load_samples(store.run_a, split="train")
    ids, report = dq_plugins.select_subset(store.run_a, 0.5, seed=1)
    assert len(ids) == report["num_selected"] == 75 and np.all(np.diff(ids) > 0)
    assert report["run_id"] == store.run_a and report["split"] == "train"
    flagged = set(samples.loc[samples["is_label_issue"], "sample_id"])
    assert not flagged & set(ids.tolist()), str(report)
    chosen = samples.set_index("sample_id").loc[ids]
    unflagged = samples[~samples["is_label_issue"]]
    cells_per_class = unflagged.groupby("label")["cluster"].nunique() if "cluster" in samples else 1
    for label, count in unflagged["label"].value_counts().items():
        share = count * len(ids) / len(unflagged)  # proportional to the unflagged rows, up to per-cell rounding
        assert abs((chosen["label"] == label).sum() - share) <= np.max(cells_per_class) + 1
    _, hardest_first = dq_plugins.select_subset(store.run_a, 0.5, seed=1, skip_hardest=0.0)
    assert hardest_first["mean_el2n_selected"] > samples.loc[~samples["is_label_issue"], "el2n"].mean()


def test_select_subset_bad_input(store):
    with pytest.raises(ValueError, match=re.escape("Expected argument `fraction` in (0, 1]")):
        dq_plugins.select_subset(store.run_a, 0)
    with pytest.raises(ValueError, match=re.escape("Expected argument `skip_hardest` in [0, 1)")):
        dq_plugins.select_subset(store.run_a, 0.5, skip_hardest=1)
    client = mlflow.MlflowClient(store.uri)
    empty = client.create_run(client.get_run(store.run_a).info.experiment_id).info.run_id
    with pytest.raises(FileNotFoundError, match=f"Run '{empty}' has no dq/samples.parquet"):
        dq_plugins.select_subset(empty, 0.5)
    with pytest.raises(ValueError, match="has no 'test' rows"):
        dq_plugins.select_subset(store.run_a, 0.5, split="test")
