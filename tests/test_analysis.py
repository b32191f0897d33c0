"""The per-split analysis: early-window flags, the neighbour signal in mislabel_score, confidence_pred."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dq_plugins.analysis.pipeline import analyze_split, early_window_flags, label_flags, mislabel_signals
from dq_plugins.scores import confident_learning


def planted(n=300, classes=3, flips=30, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % classes
    labels = truth.copy()
    flipped = rng.choice(n, flips, replace=False)
    labels[flipped] = (truth[flipped] + 1) % classes
    early = np.full((n, classes), 0.04)
    early[np.arange(n), truth] = 0.92
    score = np.where(np.isin(np.arange(n), flipped), 0.9, 0.1) + rng.uniform(0, 0.05, n)
    return labels, early, score, set(flipped.tolist()), truth


def test_the_early_window_counts_and_the_score_orders_the_flags():
    labels, early, score, flipped, truth = planted()
    flags = early_window_flags(labels, early, score)
    flagged = set(np.flatnonzero(flags.is_label_issue))
    assert len(flagged & flipped) >= 27 and len(flagged - flipped) <= 3
    rows = np.flatnonzero(flags.is_label_issue)
    assert (flags.suggested_label[rows] == truth[rows]).mean() > 0.9
    assert (flags.suggested_label[~flags.is_label_issue] == labels[~flags.is_label_issue]).all()
    assert 0.05 < flags.noise_rate < 0.15 and flags.early_window_fitted is True


def test_a_flag_needs_the_early_model_to_disagree_with_the_label():
    """The count comes from the early window, the order from the score; a top-scored sample whose
    early prediction agrees with its label is not flagged."""
    labels, early, score, flipped, _ = planted()
    clean_top = int(np.flatnonzero(~np.isin(np.arange(len(labels)), list(flipped)))[0])
    score[clean_top] = 2.0  # ranked first, but the early window agrees with its label
    flags = early_window_flags(labels, early, score)
    assert not flags.is_label_issue[clean_top]
    assert len(set(np.flatnonzero(flags.is_label_issue)) & flipped) >= 27


def test_an_underfit_early_window_is_not_trusted():
    labels, early, score, _, _ = planted()
    early = np.full_like(early, 1 / 3)
    assert early_window_flags(labels, early, score) is None
    cl = confident_learning(labels, early)
    flags = label_flags(labels, cl, score, early)  # the all-epoch flags are kept
    np.testing.assert_array_equal(flags.is_label_issue, cl.is_label_issue)
    assert flags.early_window_fitted is False and label_flags(labels, cl, score, None).early_window_fitted is None


def test_neighbor_disagreement_joins_the_score_and_reorders_the_flags():
    """Dynamics that cannot tell the flips apart (a memorised model: identical records for every
    sample) plus embeddings whose neighbours can: the score follows the neighbours, and so do the flags."""
    from dq_plugins.raw_record import FLOAT_FIELDS, SplitHistory

    labels, early, _, flipped, truth = planted()
    n, epochs = len(labels), 4
    fields = {name: np.ones((epochs, n), np.float32) for name in FLOAT_FIELDS}
    fields["prob_given"][:] = 0.99
    fields["prob_sq_sum"][:] = 0.98
    history = SplitHistory(epochs=np.arange(epochs), fields=fields, pred=np.zeros((epochs, n), np.int32),
                           labels=labels, mean_probs=early.astype(np.float32), early_probs=early.astype(np.float32))
    rng = np.random.default_rng(1)
    vectors = 4.0 * np.eye(3)[truth] + rng.normal(size=(n, 3)) * 0.5  # neighbours share the true class
    ids = np.arange(1, n)  # sample 0 has no embedding: it keeps the three-signal score
    tied = analyze_split(history, "train", early_epochs=1).samples["mislabel_score"].to_numpy()
    part = analyze_split(history, "train", early_epochs=1, embeddings=(ids, vectors[ids].astype(np.float32)),
                         projection="pca")
    score = part.samples["mislabel_score"].to_numpy()
    assert score[0] == tied[0]
    is_flipped = np.isin(np.arange(n), list(flipped))
    rest = np.arange(n) != 0
    assert score[is_flipped & rest].min() > score[~is_flipped & rest].max()
    flagged = set(np.flatnonzero(part.flags.is_label_issue))
    assert len(flagged & flipped) >= 27 and len(flagged - flipped) <= 3
    assert part.samples["neighbor_disagreement"].isna().tolist() == [True] + [False] * (n - 1)


def test_a_knn_graph_searched_beforehand_is_used_only_for_the_rows_it_was_searched_for():
    """What a DDP job hands rank 0 (``neighbors=``): used when its rows are the analysed ones (unknown labels left
    out), ignored (searched again) otherwise; the results are the same either way, ``dq.knn_ranks`` tells."""
    from dq_plugins.analysis.embeddings import knn_settings
    from dq_plugins.raw_record import FLOAT_FIELDS, SplitHistory
    from dq_plugins.scores.neighbors import KnnGraph, knn_cosine

    labels, early, _, _, truth = planted(n=120)
    labels[5], early[5] = -1, np.nan  # never recorded, but embedded: not among the analysed rows
    fields = {name: np.ones((2, 120), np.float32) for name in FLOAT_FIELDS}
    history = SplitHistory(epochs=np.arange(2), fields=fields, pred=np.zeros((2, 120), np.int32), labels=labels,
                           mean_probs=early.astype(np.float32), early_probs=early.astype(np.float32))
    vectors = (4.0 * np.eye(3)[truth] + np.random.default_rng(1).normal(size=(120, 3))).astype(np.float32)
    rows = np.flatnonzero(labels >= 0)
    k, method = knn_settings(rows.size)
    graph = KnnGraph(*knn_cosine(vectors[rows], k, method=method), method=method, ranks=2, seconds=1.0)
    embeddings = (np.arange(120), vectors)
    alone = analyze_split(history, "train", embeddings=embeddings, projection="pca")
    given = analyze_split(history, "train", embeddings=embeddings, projection="pca", neighbors=(rows, graph))
    other = analyze_split(history, "train", embeddings=embeddings, projection="pca", neighbors=(rows[1:], graph))
    assert (alone.embedding_metrics["dq.knn_ranks"], given.embedding_metrics["dq.knn_ranks"],
            other.embedding_metrics["dq.knn_ranks"]) == (1.0, 2.0, 1.0)
    pd.testing.assert_frame_equal(given.samples, alone.samples)


def test_an_early_window_still_learning_is_left_out_of_the_score():
    """Early EL2N votes only when the early window fits the labels halfway from chance (C = 4: 0.625)."""
    from dq_plugins.raw_record import FLOAT_FIELDS

    rng = np.random.default_rng(0)
    fields = {name: rng.uniform(0.2, 0.9, (3, 50)).astype(np.float32) for name in FLOAT_FIELDS}
    fields["correct"][0] = 0.5  # epoch 0 (the window) is at 0.5 < 0.625
    signals = mislabel_signals(fields, 1, num_classes=4)
    assert np.isfinite(signals.el2n_early).all() and np.isnan(signals.el2n_early_scored).all()
    fields["correct"][0] = 0.7
    signals = mislabel_signals(fields, 1, num_classes=4)
    np.testing.assert_array_equal(signals.el2n_early_scored, signals.el2n_early)


def test_confidence_pred_is_the_last_epochs_predicted_class_probability_and_feeds_ece():
    import torch

    from dq_plugins.analysis.pipeline import analyze
    from dq_plugins.recording.ledger import SplitLedger
    from dq_plugins.analysis.slices import slice_metrics

    ledger = SplitLedger(capacity=2, num_classes=2)
    ledger.record(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[0.0, 0.0], [0.0, 0.0]]), epoch=0)
    ledger.record(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[np.log(3.0), 0.0], [np.log(4.0), 0.0]]),
                  epoch=1)
    samples = analyze({"train": ledger.to_history()}).samples
    np.testing.assert_allclose(samples["confidence_pred"], [0.75, 0.8], rtol=1e-6)  # last epoch: 3/4 and 4/5
    table = slice_metrics(samples, columns=[], min_size=1)
    overall = table[(table["column"] == "label") & (table["value"].astype(str) == "1")]
    # sample 1 predicts class 0 with confidence 0.8 and is wrong: |0 - 0.8| in its one-sample bin
    assert overall["ece"].iloc[0] == pytest.approx(0.8, rel=1e-5)


def test_issue_table_leads_with_train_and_display_tables_are_rounded():
    import pandas as pd

    from dq_plugins.analysis.pipeline import top_issues
    from dq_plugins.sinks.mlflow_sink import rounded_for_display

    samples = pd.DataFrame({
        "sample_id": [0, 1, 2, 3], "split": ["validation", "train", "validation", "train"], "label": 0, "pred": 0,
        "suggested_label": 0, "mislabel_score": np.array([0.99, 0.2, 0.5, 0.7], np.float32),
        "is_label_issue": [True, False, False, True], "confidence": np.float32(0.123456789), "aum": 1.0,
        "forgetting_events": 0,
    })
    issues = top_issues(samples)
    assert issues.columns[0] == "split"
    assert issues[["split", "sample_id"]].values.tolist() == [["train", 3], ["train", 1], ["validation", 0],
                                                               ["validation", 2]]
    shown = rounded_for_display(issues.assign(p_value=3.6123e-200))
    text = shown.to_json(orient="split")
    assert '"mislabel_score"' in text and "0.7" in text and "0.69999" not in text and "0.1235" in text
    assert shown["p_value"].iloc[0] == 3.612e-200  # significant digits: a tiny p-value keeps its exponent
    assert issues["confidence"].dtype.kind == "f"  # the input is left alone


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_chunked_confident_learning_equals_cleanlab_find_label_issues(dtype, monkeypatch):
    """The default method runs row chunk by row chunk and class by class (no full-size copy of the softmax);
    it must flag exactly what ``cleanlab.filter.find_label_issues`` flags on the same normalised float32 rows,
    with unrecorded rows and a class nobody was given, with chunks of a few rows (many chunk boundaries)."""
    import warnings

    import cleanlab.count
    import cleanlab.filter

    import importlib

    module = importlib.import_module("dq_plugins.scores.confident_learning")
    monkeypatch.setattr(module, "ROW_CHUNK_ELEMENTS", 97)  # a handful of rows per chunk
    rng = np.random.default_rng(3)
    for _ in range(6):
        n, c = int(rng.integers(50, 600)), int(rng.integers(3, 25))
        truth = rng.integers(0, c, n)
        labels = truth.copy()
        flip = rng.random(n) < 0.25
        labels[flip] = rng.integers(0, c, int(flip.sum()))
        labels[labels == 0] = 1  # class 0 given to nobody
        logits = rng.normal(size=(n, c)) * 2.0
        logits[np.arange(n), truth] += 2.5
        probs = np.exp(logits)
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(dtype)
        probs[rng.random(n) < 0.1] = np.nan  # never recorded

        result = confident_learning(labels, probs)

        valid = ~np.isnan(probs[:, 0].astype(np.float64))
        present = np.unique(labels[valid])
        compact, _ = module._normalised_float32(probs, np.flatnonzero(valid), present, labels[valid])
        compact_labels = np.searchsorted(present, labels[valid])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = cleanlab.filter.find_label_issues(compact_labels, compact, n_jobs=1)
        assert expected.any() and not expected.all()
        np.testing.assert_array_equal(result.is_label_issue[valid], expected)
        assert not result.is_label_issue[~valid].any()
        suggested = labels[valid].copy()
        suggested[expected] = present[compact[expected].argmax(axis=1)]
        np.testing.assert_array_equal(result.suggested_label[valid], suggested)
        joint = cleanlab.count.estimate_joint(
            compact_labels, compact,
            confident_joint=cleanlab.count.compute_confident_joint(compact_labels, compact, calibrate=False))
        np.testing.assert_allclose(result.joint[np.ix_(present, present)], joint, atol=1e-12)
        assert result.joint[0].sum() == 0 and result.joint[:, 0].sum() == 0


def test_mislabel_signals_measure_how_each_all_epoch_signal_resorts_between_the_halves():
    """AUM's order flips between the two halves of training while EL2N's holds: AUM is the unsteady one."""
    from dq_plugins.raw_record import FLOAT_FIELDS
    from dq_plugins.scores.mislabel import half_instability

    rng = np.random.default_rng(1)
    fields = {name: rng.uniform(0.2, 0.9, (4, 40)).astype(np.float32) for name in FLOAT_FIELDS}
    order = np.linspace(-1.0, 1.0, 40, dtype=np.float32)
    fields["margin"][:2], fields["margin"][2:] = order, -order  # late epochs reverse the margin order
    fields["prob_given"][:] = 0.5 + 0.4 * order  # EL2N keeps one order throughout
    fields["prob_sq_sum"][:] = fields["prob_given"] ** 2 + (1 - fields["prob_given"]) ** 2
    signals = mislabel_signals(fields, 1, num_classes=2)
    assert signals.instability[0] == pytest.approx(2.0) and signals.instability[1] == pytest.approx(0.0)
    assert signals.instability[1] == pytest.approx(half_instability(-order, -order))
    one_epoch = {name: values[:1] for name, values in fields.items()}
    assert np.isnan(mislabel_signals(one_epoch, 1, num_classes=2).instability).all()  # no second half
