"""Slices (dq_plugins.analysis: slice_keys, slices, weak_slices, latency_report, slice_history): metrics against a hand-computed case, the weak-slice test, latency, figure."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from dq_plugins.figures.slices import weak_slices_figure, wilson_interval
from dq_plugins.analysis.latency_report import LATENCY_REPORT_COLUMNS, latency_report
from dq_plugins.analysis.slice_history import metric_key, slice_epoch_accuracy, slice_members
from dq_plugins.analysis.slices import SLICE_COLUMNS, _Rows, macro_f1_by_slice, slice_metrics
from dq_plugins.analysis.weak_slices import (
    EXACT_SCREEN_P,
    WEAK_SLICE_COLUMNS,
    _screened_lower_p,
    benjamini_hochberg,
    find_weak_slices,
    lower_accuracy_p_value,
)


def hand_table() -> pd.DataFrame:
    """Six train rows and two validation rows; every number of the tests below is worked out by hand."""
    return pd.DataFrame({
        "sample_id":       [0,    1,    2,    3,    4,    5,    6,    7],
        "split":           ["train"] * 6 + ["validation"] * 2,
        "label":           [0,    0,    1,    1,    1,    0,    0,    1],
        "pred":            [0,    1,    1,    1,    0,    1,    0,    1],
        "source":          ["a",  "a",  "a",  "b",  "b",  "b",  "a",  "b"],
        "confidence_pred": [0.9,  0.6,  0.8,  0.95, 0.55, 0.65, 0.7,  0.9],
        "mislabel_score":  [0.1,  0.8,  0.2,  0.3,  0.9,  0.4,  0.5,  0.5],
        "is_label_issue":  [False, True, False, False, True, False, False, False],
        "latency_ms":      [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0],
    })


def row(table: pd.DataFrame, split: str, name: str) -> pd.Series:
    match = table[(table["split"] == split) & (table["slice"] == name)]
    assert len(match) == 1, (split, name, table["slice"].tolist())
    return match.iloc[0]


# ---------------------------------------------------------------------------------------- slice metrics
def test_slice_metrics_hand_computed():
    table = slice_metrics(hand_table(), columns=["source"], min_size=1)
    assert list(table.columns) == list(SLICE_COLUMNS)

    a = row(table, "train", "source=a")  # rows 0, 1, 2: correct 1, 0, 1
    assert (a["column"], a["value"], a["size"]) == ("source", "a", 3)
    assert a["accuracy"] == pytest.approx(2 / 3)
    # class 0: support 2, predicted 1 (row 0), TP 1 -> 2*1/(2+1) = 2/3; class 1: support 1, predicted 2, TP 1 -> 2/3
    assert a["macro_f1"] == pytest.approx(2 / 3)
    assert a["mean_mislabel_score"] == pytest.approx((0.1 + 0.8 + 0.2) / 3)
    assert a["label_issue_rate"] == pytest.approx(1 / 3)
    # one row per bin: (|1 - 0.9| + |0 - 0.6| + |1 - 0.8|) / 3
    assert a["ece"] == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    assert a["mean_latency_ms"] == pytest.approx(20.0)

    b = row(table, "train", "source=b")  # rows 3, 4, 5: correct 1, 0, 0
    assert b["accuracy"] == pytest.approx(1 / 3)
    # class 0: support 1 (row 5), predicted 1 (row 4), TP 0 -> 0; class 1: support 2, predicted 2, TP 1 -> 2/4
    assert b["macro_f1"] == pytest.approx((0.0 + 0.5) / 2)
    assert b["ece"] == pytest.approx((0.05 + 0.55 + 0.65) / 3)
    assert b["mean_latency_ms"] == pytest.approx(50.0)

    zero = row(table, "train", "label=0")  # rows 0, 1, 5: correct 1, 0, 0; confidences 0.9 | 0.6, 0.65 share bin 6
    assert zero["accuracy"] == pytest.approx(1 / 3)
    assert zero["macro_f1"] == pytest.approx(2 * 1 / (3 + 1))  # only class 0 occurs as a label in the slice
    assert zero["ece"] == pytest.approx((1 / 3) * abs(1 - 0.9) + (2 / 3) * abs(0 - (0.6 + 0.65) / 2))
    one = row(table, "train", "label=1")  # rows 2, 3, 4: TP 2, predicted 1 twice -> 2*2/(3+2)
    assert one["macro_f1"] == pytest.approx(0.8)

    val = row(table, "validation", "source=a")  # row 6 only
    assert (val["size"], val["accuracy"], val["mean_latency_ms"]) == (1, 1.0, 70.0)
    assert set(table["split"]) == {"train", "validation"}


def test_latency_column_is_bucketed_into_quantiles_with_readable_names():
    frame = hand_table()
    table = slice_metrics(frame[frame["split"] == "train"], columns=[], numeric_bins=2, min_size=1)
    latency = table[table["column"] == "latency_ms"]
    # np.quantile([10..60], [0, .5, 1]) = 10, 35, 60
    assert latency["slice"].tolist() == ["latency_ms in [10, 35]", "latency_ms in (35, 60]"]
    assert latency["size"].tolist() == [3, 3]
    assert latency["mean_latency_ms"].tolist() == pytest.approx([20.0, 50.0])


def test_numeric_metadata_bucketed_small_integer_columns_kept_as_values():
    frame = pd.DataFrame({
        "sample_id": range(8), "split": "train", "label": 0, "pred": 0,
        "length": [1, 2, 3, 4, 5, 6, 7, 8], "day": [1, 1, 2, 2, 3, 3, 1, 2],
    })
    table = slice_metrics(frame, columns=["length", "day"], numeric_bins=4, min_size=1)
    # np.quantile(1..8, [0, .25, .5, .75, 1]) = 1, 2.75, 4.5, 6.25, 8
    assert table[table["column"] == "length"]["slice"].tolist() == [
        "length in [1, 2.75]", "length in (2.75, 4.5]", "length in (4.5, 6.25]", "length in (6.25, 8]",
    ]
    assert table[table["column"] == "length"]["size"].tolist() == [2, 2, 2, 2]
    assert table[table["column"] == "day"]["slice"].tolist() == ["day=1", "day=2", "day=3"]


def test_missing_values_form_their_own_slice_and_no_confidence_gives_nan_ece():
    frame = hand_table().drop(columns=["confidence_pred"])
    frame["source"] = frame["source"].astype(object)
    frame.loc[[0, 1], "source"] = None
    table = slice_metrics(frame, columns=["source"], min_size=1)
    assert row(table, "train", "source=<NA>")["size"] == 2
    assert table["ece"].isna().all()


def test_macro_f1_matches_sklearn_over_the_labels_of_each_slice():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    part = pd.DataFrame({"label": rng.integers(0, 5, 400), "pred": rng.integers(0, 6, 400)})
    codes = rng.integers(0, 7, 400)
    ours = macro_f1_by_slice(codes, _Rows.of(part), 7)
    for code in range(7):
        y, p = part["label"][codes == code], part["pred"][codes == code]
        classes, counts = np.unique(y, return_counts=True)
        expected = f1_score(y, p, labels=classes[counts >= 0.05 * len(y)], average="macro", zero_division=0)
        assert ours[code] == pytest.approx(expected)


def test_macro_f1_of_a_cluster_is_not_dragged_down_by_stray_labels():
    # a cluster of 88 samples of class 0 (all predicted 0) and 12 stray labels, one or two of each other class
    label = np.array([0] * 88 + [1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8])
    part = pd.DataFrame({"label": label, "pred": np.zeros(100, dtype=int)})
    f1 = macro_f1_by_slice(np.zeros(100, dtype=int), _Rows.of(part), 1)[0]
    assert f1 == pytest.approx(2 * 88 / (88 + 100))  # class 0 only: the strays hold < 5% each


def test_unknown_column_names_it_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown slice column 'sorce'.*Valid columns: \[.*'source'"):
        slice_metrics(hand_table(), columns=["sorce"])
    with pytest.raises(ValueError, match=r"list of column names but got the string 'source'"):
        slice_metrics(hand_table(), columns="source")
    with pytest.raises(ValueError, match=r"\['pred'\] are missing"):
        slice_metrics(hand_table().drop(columns=["pred"]), columns=[])
    with pytest.raises(ValueError, match=r"Unknown slice column 'x'"):
        find_weak_slices(hand_table(), columns=["x"])


def test_slices_below_min_size_are_left_out_with_a_warning():
    with pytest.warns(RuntimeWarning, match=r"no slice reaches min_size=3 samples for column 'latency_ms' in 'train' "
                      r"\(largest slice: 2\), column 'source' in 'validation' \(largest slice: 1\)") as record:
        table = slice_metrics(hand_table(), columns=["source"], min_size=3)
    assert len(record) == 1
    assert (table["size"] >= 3).all()
    assert set(table["split"]) == {"train"}


# ---------------------------------------------------------------------------------------- weak slices
def planted(n: int = 3000, seed: int = 1) -> pd.DataFrame:
    """Accuracy 0.6 where source=forum AND length>300 (about 1/8 of the rows), 0.93 elsewhere; plus a random
    group of the same size as the weak slice and a random day, both unrelated to correctness."""
    rng = np.random.default_rng(seed)
    source = rng.choice(["forum", "news", "blog", "wiki"], n)
    length = rng.integers(10, 600, n)
    weak = (source == "forum") & (length > 300)
    label = rng.integers(0, 4, n)
    correct = rng.random(n) < np.where(weak, 0.6, 0.93)
    group = np.full(n, "rest", dtype=object)
    group[rng.choice(n, size=int(weak.sum()), replace=False)] = "random"
    return pd.DataFrame({
        "sample_id": np.arange(n), "split": np.where(np.arange(n) < 2400, "train", "validation"),
        "label": label, "pred": np.where(correct, label, (label + 1) % 4),
        "source": source, "length": length, "day": rng.integers(0, 3, n), "group": group,
        "latency_ms": rng.gamma(2.0, 2.0, n) + 4.0 * ~correct,
    })


def test_planted_weak_conjunction_is_found_and_a_random_slice_is_not():
    frame = planted().drop(columns=["latency_ms"])  # latency is built from correctness: it would find the errors
    weak = find_weak_slices(frame, columns=["source", "length", "day", "group"])
    assert list(weak.columns) == list(WEAK_SLICE_COLUMNS)
    train = weak[weak["split"] == "train"]
    top = train.iloc[0]
    assert top["rank"] == 1 and top["order"] == 2
    assert re.fullmatch(r"source=forum AND length in \((2\d\d|3\d\d|4\d\d), \d+\]", top["slice"]), top["slice"]
    assert top["accuracy"] < 0.7 and top["rest_accuracy"] > 0.85 and top["q_value"] <= 0.05
    assert top["description"] == (
        f"{top['slice']}: accuracy {top['accuracy']:.2f} vs {top['rest_accuracy']:.2f} for the rest of train, "
        f"n={top['size']} (q={top['q_value']:.2g})"
    )
    assert (train["gap"].diff().dropna() <= 0).all()  # ranked by effect
    assert not weak["slice"].str.contains("group=").any()  # same size as the planted slice, but random
    # pairs inside the weak source=forum that do not refine it (a random day) are not reported
    assert not weak["slice"].str.contains("source=forum AND day=").any()


def test_pairs_off_finds_only_single_slices():
    weak = find_weak_slices(planted(), columns=["source", "length"], max_pairs_columns=0)
    assert (weak["order"] == 1).all()
    assert "source=forum" in weak["slice"].tolist()


def test_multiple_testing_correction_removes_chance_findings():
    rng = np.random.default_rng(3)
    n = 2000
    frame = pd.DataFrame({"sample_id": np.arange(n), "split": "train", "label": rng.integers(0, 2, n)})
    frame["pred"] = np.where(rng.random(n) < 0.85, frame["label"], 1 - frame["label"])
    columns = [f"noise{i}" for i in range(40)]
    for column in columns:
        frame[column] = rng.integers(0, 2, n)
    correct = (frame["label"] == frame["pred"]).to_numpy()
    raw = [
        lower_accuracy_p_value(correct[m].sum(), m.sum(), correct.sum(), n)
        for m in (frame[c].to_numpy() == v for c in columns for v in (0, 1))
    ]
    assert min(raw) < 0.05  # uncorrected, chance alone "finds" weak slices...
    weak = find_weak_slices(frame, columns=columns, max_pairs_columns=0)
    assert weak.empty  # ...Benjamini-Hochberg does not


def test_fisher_p_value_and_benjamini_hochberg_match_scipy():
    from scipy.stats import false_discovery_control, fisher_exact

    for correct_in, size_in, correct_all, size_all in [(30, 50, 900, 1000), (45, 50, 900, 1000), (3, 10, 80, 100)]:
        table = [[correct_in, size_in - correct_in],
                 [correct_all - correct_in, size_all - size_in - (correct_all - correct_in)]]
        expected = fisher_exact(table, alternative="less").pvalue
        assert lower_accuracy_p_value(correct_in, size_in, correct_all, size_all) == pytest.approx(expected)
    p = np.random.default_rng(0).random(50) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"))


def _hand_written_benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """The library's implementation before it called scipy (kept here as the reference)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.clip(q, 0.0, 1.0)
    return out


def test_benjamini_hochberg_gives_the_hand_written_implementations_values():
    rng = np.random.default_rng(3)
    cases = [
        np.array([]), np.array([0.3]), np.array([0.01, 0.01, 0.01, 0.5]), np.ones(7), np.zeros(4),
        rng.random(1000) ** 4, np.round(rng.random(200), 2),  # many ties
        np.array([1.0 + 1e-12, 0.2, 1e-300]),  # a p-value summed past 1 by rounding
    ]
    for p in cases:
        np.testing.assert_allclose(benjamini_hochberg(p), _hand_written_benjamini_hochberg(p), rtol=1e-14, atol=0)


def test_weak_slices_are_the_same_as_with_the_hand_written_correction(monkeypatch: pytest.MonkeyPatch):
    import dq_plugins.analysis.weak_slices as slices_module

    frame = planted().drop(columns=["latency_ms"])
    now = find_weak_slices(frame, columns=["source", "length", "day", "group"])
    monkeypatch.setattr(slices_module, "benjamini_hochberg", _hand_written_benjamini_hochberg)
    before = find_weak_slices(frame, columns=["source", "length", "day", "group"])
    assert len(now) > 0
    pd.testing.assert_frame_equal(now, before, check_exact=False, rtol=1e-14)


def test_screened_p_values_are_exact_wherever_they_could_be_significant():
    rng = np.random.default_rng(5)
    size_all = rng.integers(3_000, 200_000, 400).astype(float)
    share = rng.uniform(0.02, 0.999, 400)
    size_in = np.floor(size_all * rng.uniform(0.001, 0.5, 400))
    correct_in = np.floor(size_in * np.clip(share + rng.normal(0, 0.03, 400), 0, 1))
    correct_all = correct_in + np.floor((size_all - size_in) * share)
    exact = lower_accuracy_p_value(correct_in, size_in, correct_all, size_all)
    screened = _screened_lower_p(correct_in, size_in, correct_all, size_all, EXACT_SCREEN_P)
    approximate = screened != exact
    assert approximate.any() and (exact[~approximate] == screened[~approximate]).all()
    assert exact[approximate].min() > 0.2  # never where a slice could be significant


def test_weak_slices_bad_arguments():
    with pytest.raises(ValueError, match=r"`alpha` in \(0, 1\)"):
        find_weak_slices(planted(), columns=[], alpha=1.5)
    with pytest.raises(ValueError, match=r"`min_size` to be an integer >= 1 but got 0"):
        find_weak_slices(planted(), columns=[], min_size=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert find_weak_slices(planted(), columns=[], min_size=5000).empty
    assert [str(w.message).split(" has")[0] for w in record] == [
        "dq_plugins: no slice of split 'train'", "dq_plugins: no slice of split 'validation'",
    ]
    assert "at least min_size=5000 samples and rows outside it" in str(record[0].message)


# ---------------------------------------------------------------------------------------- latency
def test_latency_report_relates_latency_to_correctness_and_columns():
    report = latency_report(planted(), ["source", "length"])
    train = report[report["split"] == "train"].set_index("column")
    assert list(report.columns) == list(LATENCY_REPORT_COLUMNS)
    # every sample timed alone (all latencies differ): each sample is its own batch
    assert train.loc["correct", ["level", "method", "n"]].tolist() == ["batch", "spearman", 2400]
    assert train.loc["correct", "statistic"] < -0.3  # wrong predictions took 4 ms longer
    assert "slower batches are less often correct" in train.loc["correct", "summary"]
    assert train.loc["length", "method"] == "spearman"
    assert train.loc["source", ["level", "method"]].tolist() == ["sample", "kruskal_epsilon2"]
    assert 0.0 <= train.loc["source", "statistic"] <= 1.0
    with pytest.raises(ValueError, match=r"latency_report needs a 'latency_ms' column"):
        latency_report(planted().drop(columns=["latency_ms"]), [])


def batched(order: np.ndarray, batch_size: int, seed: int = 0) -> pd.DataFrame:
    """300 samples, 3 classes, timed in batches taken in ``order``: each batch's latency is its time / size,
    and the batch time does not depend on the classes in it."""
    rng = np.random.default_rng(seed)
    label = np.arange(300) % 3
    latency = np.empty(300)
    for start in range(0, 300, batch_size):
        members = order[start:start + batch_size]
        latency[members] = rng.gamma(20.0, 1.0) / len(members)
    return pd.DataFrame({"sample_id": np.arange(300), "split": "validation", "label": label, "pred": label,
                         "latency_ms": latency})


def test_latency_grouping_confounded_with_batches_makes_no_claim():
    by_class = np.argsort(np.arange(300) % 3, kind="stable")  # a validation set sorted by class
    row = latency_report(batched(by_class, 100), []).set_index("column").loc["label"]  # one batch per class
    assert row["level"] == "none" and np.isnan(row["statistic"]) and np.isnan(row["p_value"])
    assert "no claim (confounded with batch composition: 3 of 3 batches hold a single value of label" in row["summary"]
    # enough single-class batches: compared across batches, never per sample
    row = latency_report(batched(by_class, 10), []).set_index("column").loc["label"]
    assert row["level"] == "batch" and row["n"] == 30 and "confounded with batch composition" in row["summary"]


def test_latency_per_sample_only_when_batches_mix_the_groups():
    shuffled = np.random.default_rng(1).permutation(300)
    report = latency_report(batched(shuffled, 30), []).set_index("column")
    assert report.loc["label", ["level", "n"]].tolist() == ["sample", 300]
    assert "batches mix its values" in report.loc["label", "summary"]
    assert report.loc["correct", "level"] == "batch"  # correctness: always per batch (10 batches, all correct)
    assert report.loc["correct", "n"] == 10


def test_latency_report_constant_latency_is_nan_not_an_error():
    frame = planted().assign(latency_ms=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = latency_report(frame, ["source"])
    assert report["statistic"].isna().all()
    assert "undefined" in report["summary"].iloc[0]


# ---------------------------------------------------------------------------------------- members, epochs, figure
def test_slice_members_and_epoch_accuracy():
    frame = hand_table()
    table = slice_metrics(frame, columns=["source"], min_size=1)
    members = slice_members(frame, table)
    assert members[("train", "source=a")].tolist() == [0, 1, 2]
    assert members[("validation", "source=b")].tolist() == [7]
    pair = slice_members(frame, [("train", "source=b AND label=0"), ("train", "nope=1")])
    assert pair[("train", "source=b AND label=0")].tolist() == [5]
    assert pair[("train", "nope=1")].tolist() == []

    correct = np.array([[1, 0, 0, 1, 0, 0], [1, 1, np.nan, 1, 0, 1]], dtype=float)
    history = slice_epoch_accuracy(frame, table.head(2), {"train": (np.array([0, 1]), correct)})
    assert history == {
        "dq.slice.train.source_a.accuracy": [(0, pytest.approx(1 / 3)), (1, 1.0)],  # NaN = not recorded
        "dq.slice.train.source_b.accuracy": [(0, pytest.approx(1 / 3)), (1, pytest.approx(2 / 3))],
    }
    assert metric_key("dq.slice", "train", "source=forum AND length in (120, 250]", "accuracy") == (
        "dq.slice.train.source_forum_AND_length_in_120-250.accuracy"
    )


def test_weak_slices_figure(tmp_path):
    frame = planted()
    weak = find_weak_slices(frame, columns=["source", "length"])
    figure = weak_slices_figure(weak, overall_accuracy=0.88, top=5)
    axes = figure.axes[0]
    assert len(axes.patches) == min(5, int((weak["split"] == "train").sum()))
    labels = [t.get_text() for t in axes.get_yticklabels()]
    assert labels[-1] == weak[weak["split"] == "train"].sort_values("accuracy")["slice"].iloc[0]  # weakest on top
    figure.savefig(tmp_path / "weak.png")
    assert (tmp_path / "weak.png").stat().st_size > 1000
    empty = weak_slices_figure(weak.iloc[:0], overall_accuracy=0.9)
    assert "no significantly weak slice in train" in [t.get_text() for t in empty.axes[0].texts]
    # One panel per split, named: a weak slice of validation is drawn even when train has none.
    only_validation = weak[weak["split"] == "validation"].head(2)
    assert len(only_validation) == 2
    both = weak_slices_figure(only_validation, {"train": 0.9, "validation": 0.8}, split=["train", "validation"])
    assert [a.get_title() for a in both.axes] == ["Weakest slices, train", "Weakest slices, validation"]
    assert "no significantly weak slice in train" in [t.get_text() for t in both.axes[0].texts]
    assert len(both.axes[1].patches) == 2 and "validation overall accuracy 0.80" in [
        t.get_text() for t in both.axes[1].get_legend().get_texts()]
    low, high = wilson_interval(np.array([5.0]), np.array([10.0]))
    assert (low[0], high[0]) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
