"""Token classification: the ledger, the scores, the bad-input paths and the HTML view."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from dq_plugins.figures.token_view import token_issue_html
from dq_plugins.recording.session import DynamicsSession, SessionConfig
from dq_plugins.recording.tasks import Task, TaskRouter, detect_task
from dq_plugins.recording.tokens import TokenLedger, check_token_batch
from dq_plugins.schema import LABEL_FREE_EMBEDDING_COLUMNS
from dq_plugins.scores.tokens import token_label_issues, token_scores


def test_ledger_keeps_labelled_tokens_only_and_averages_occurrences():
    ledger = TokenLedger(capacity=2, width=4, num_classes=3)
    logits = torch.randn(2, 3, 3)
    tags = torch.tensor([[-100, 2, 0], [1, -100, -100]])
    ledger.record(torch.tensor([1, 0]), tags, logits, epoch=0)
    ledger.record(torch.tensor([1]), tags[:1], logits[:1] * 2, epoch=1)
    history = ledger.to_history()
    expected_labels = np.full((2, 4), -1)
    expected_labels[1, 1:3] = [2, 0]
    expected_labels[0, 0] = 1
    np.testing.assert_array_equal(history.labels, expected_labels)
    mean = 0.5 * (torch.softmax(logits[0, 1], 0) + torch.softmax(2 * logits[0, 1], 0))
    np.testing.assert_allclose(history.mean_probs[1, 1], mean.numpy(), rtol=1e-6)
    assert np.isnan(history.mean_probs[1, 0]).all() and np.isnan(history.mean_probs[0, 1]).all()
    assert history.pred[1, 2] == int((2 * logits[0, 2]).argmax())  # the latest prediction
    assert history.epochs.tolist() == [0, 1]


def test_too_long_and_bad_tags_are_counted_and_warned():
    router = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=4)))
    router.widths["train"] = 3
    tags = torch.tensor([[0, 1, 2, 1, -100], [7, 1, -100, -100, -100]])
    first = torch.tensor([[0, 1, 2, 1, -100], [0, 1, -100, -100, -100]])  # the first batch is checked: no bad tag
    router.route("train", 0, torch.tensor([0, 1]), first, torch.randn(2, 5, 3))
    router.route("train", 0, torch.tensor([2, 3]), tags, torch.randn(2, 5, 3))
    with pytest.warns(RuntimeWarning) as caught:
        router.close_epoch("train")
    text = " ".join(str(w.message) for w in caught)
    assert "2 train rows in epoch 0 were labelled tokens at a position >= the recorded width 3" in text
    assert "1 train rows in epoch 0 were tokens with a tag outside 0..2" in text


def test_first_token_batch_errors():
    router = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=4)))
    with pytest.raises(ValueError, match=r"Tag 5 under `labels` is outside the 3 tags"):
        router.route("train", 0, torch.tensor([0]), torch.tensor([[5, -100]]), torch.randn(1, 2, 3))
    router = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=4)))
    with pytest.raises(ValueError, match=r"pad the tags with -100"):
        router.route("train", 0, torch.tensor([0]), torch.tensor([[1, -100, 0]]), torch.randn(1, 2, 3))


def test_detection_and_the_option():
    assert detect_task(torch.zeros(2, dtype=torch.long), torch.zeros(2, 3)) is Task.SINGLE_LABEL
    assert detect_task(torch.zeros(2, 3), torch.zeros(2, 3)) is Task.MULTILABEL
    assert detect_task(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, 3)) is Task.TOKEN_CLASSIFICATION
    router = TaskRouter("token_classification", DynamicsSession(SessionConfig(num_samples=4)))
    with pytest.raises(ValueError, match=r"task='token_classification'.*looks like 'multilabel'"):
        router.route("train", 0, torch.tensor([0]), torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"Expected `task` to be one of"):
        TaskRouter("ner", None)


def test_token_flags_are_cleanlabs():
    from cleanlab.token_classification.filter import find_label_issues

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = np.full((300, 3), 0.05)
    probs[np.arange(300), labels] = 0.9
    wrong = rng.choice(300, 20, replace=False)
    probs[wrong] = probs[wrong][:, [1, 2, 0]]  # the model votes for another tag
    sequence = np.repeat(np.arange(30), 10)
    ours = token_label_issues(labels, probs, sequence)
    theirs = find_label_issues([labels[i * 10:(i + 1) * 10] for i in range(30)],
                               [probs[i * 10:(i + 1) * 10] for i in range(30)], n_jobs=1)
    assert sorted(np.flatnonzero(ours).tolist()) == sorted(i * 10 + j for i, j in theirs)
    assert set(wrong) == set(np.flatnonzero(ours))
    scores = token_scores(labels, sequence, probs, None, probs)
    np.testing.assert_array_equal(scores.suggested_label[wrong], probs[wrong].argmax(1))
    from cleanlab.rank import get_label_quality_scores

    np.testing.assert_allclose(scores.mislabel_score, 1 - get_label_quality_scores(labels, probs, adjust_pred_probs=True))
    assert scores.mislabel_score[wrong].min() > np.delete(scores.mislabel_score, wrong).max()


def test_adjusted_self_confidence_by_hand_and_with_absent_tags():
    from dq_plugins.scores.tokens import adjusted_self_confidence

    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    # per-tag thresholds (mean self-confidence) 0.8 and 0.7 are subtracted, the largest added back, rows renormalised
    adjusted = probs - np.array([0.8, 0.7]) + 0.8
    adjusted = adjusted / adjusted.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(adjusted_self_confidence(labels, probs), adjusted[np.arange(4), labels])
    wide = np.hstack([probs * 0.9, np.full((4, 1), 0.1)])  # a third tag nobody has: left out, rows renormalised
    np.testing.assert_allclose(adjusted_self_confidence(labels, wide), adjusted[np.arange(4), labels])
    with_nan = np.vstack([probs, [np.nan, np.nan]])
    assert np.isnan(adjusted_self_confidence(np.r_[labels, 0], with_nan)[-1])


def test_html_view_escapes_text():
    import pandas as pd

    tokens = pd.DataFrame({"sample_id": [0, 0], "split": "train", "token_index": [1, 2], "label": [0, 1],
                           "pred": [0, 0], "mislabel_score": [0.1, 0.9], "is_label_issue": [False, True],
                           "suggested_label": [0, 0]})
    issues = pd.DataFrame({"split": ["train"], "sample_id": [0], "mislabel_score": [0.9]})
    page = token_issue_html(issues, tokens, lambda split, i: ["[CLS]", "<b>", "a&b"], ["O", "B-\"X"])
    assert "<b>" not in page and "&lt;b&gt;" in page and "a&amp;b" in page
    assert 'title="position 2: given B-&quot;X, suggested O"' in page


def _fit_tagger(epochs: int, **options):
    """A Lightning tagger on (B, T) tags (the word id mod 3, 20% ignored) with (B, T, C) logits: (callback, tags)."""
    import pytorch_lightning as pl
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from dq_plugins.lightning import DataQualityCallback

    g = torch.Generator().manual_seed(0)
    words = torch.randint(1, 20, (40, 6), generator=g)
    tags = torch.where(torch.rand(40, 6, generator=g) < 0.2, -100, words % 3)
    data = [{"x": words[i], "labels": tags[i], "idx": i} for i in range(40)]

    class Tagger(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 3)

        def training_step(self, batch, batch_idx):
            logits = self.head(self.embed(batch["x"]))
            return {"loss": F.cross_entropy(logits.reshape(-1, 3), batch["labels"].reshape(-1)), "logits": logits}

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    callback = DataQualityCallback(**options)
    pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=[callback]).fit(
        Tagger(), DataLoader(data, batch_size=8, shuffle=True))
    return callback, tags


def test_lightning_token_classification(tracking_uri):
    """(B, T) tags and (B, T, C) logits from a Lightning step: detected, one row per labelled token."""
    callback, tags = _fit_tagger(epochs=6)
    tokens = callback.result.tables["tokens"]
    assert callback.result.task == "token_classification"
    assert len(tokens) == int((tags != -100).sum())
    row = tokens[(tokens["sample_id"] == 3)].sort_values("token_index")
    assert row["token_index"].tolist() == torch.nonzero(tags[3] != -100).flatten().tolist()
    assert row["label"].tolist() == tags[3][tags[3] != -100].tolist()
    # one embedding per sequence (the head's (B, T, 8) input, mean-pooled): the label-free columns on every row
    samples = callback.result.samples
    # (no copy columns: the tagger's input, integer ids under "x", is not found to fingerprint; warned)
    assert list(samples.columns)[-len(LABEL_FREE_EMBEDDING_COLUMNS) - 1:] == [*LABEL_FREE_EMBEDDING_COLUMNS, "latency_ms"]
    assert (samples["cluster"] >= 0).all() and samples["x2d"].notna().all() and "neighbor_disagreement" not in samples
    # a tagger that learned its (clean) rule: the flags are trusted, and said so in the run
    assert callback.result.trust["train"].trusted
    assert mlflow.MlflowClient().get_run(callback.run_id).data.metrics["dq.flags_trusted"] == 1.0


def test_rules_run_on_a_token_run(tracking_uri, tmp_path):
    import pandas as pd

    from dq_plugins.rules import Condition, ExportRows, Rule

    rules = [Rule("long", Condition("num_tokens", ">=", 5), then=[ExportRows()])]  # per row: sequences of 5+ tags
    callback, tags = _fit_tagger(epochs=2, rules=rules)
    path = mlflow.MlflowClient().download_artifacts(callback.run_id, "dq/rules/long.parquet", str(tmp_path))
    exported = pd.read_parquet(path)
    assert sorted(exported["sample_id"]) == [i for i in range(40) if int((tags[i] != -100).sum()) >= 5]


def test_token_flags_of_one_epoch_are_not_trusted(tracking_uri):
    with pytest.warns(UserWarning, match=r"(?s)not to be trusted.*train: flags NOT trusted.*1 training epoch"):
        callback, _ = _fit_tagger(epochs=1)
    metrics = mlflow.MlflowClient().get_run(callback.run_id).data.metrics
    assert metrics["dq.flags_trusted"] == 0.0 and metrics["dq.flags_confidence"] == 0.0


def test_a_record_that_starts_late_is_warned():
    router = TaskRouter(None, DynamicsSession(SessionConfig(num_samples=4)))
    with pytest.warns(RuntimeWarning, match=r"starts at epoch 2 \(a resumed run\?\).*epochs 0..1 are missing"):
        router.route("train", 2, torch.tensor([0]), torch.tensor([[1, -100]]), torch.randn(1, 2, 3))


def test_token_batch_shape_and_dtype_errors_name_the_fix():
    ids = torch.arange(2)
    logits = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match=r"Expected token logits of shape \(batch, seq_len, num_tags\).*"
                                         r"tags \(2, 4\).*pad the tags with -100"):
        check_token_batch(ids, torch.zeros(2, 4, dtype=torch.int64), logits, "labels", first=True)
    with pytest.raises(ValueError, match=r"Expected integer tags under `labels` \(-100 where ignored\).*float32"):
        check_token_batch(ids, torch.zeros(2, 5), logits, "labels", first=True)
    with pytest.raises(ValueError, match=r"Expected one sample id per sequence.*ids of shape \(3,\)"):
        check_token_batch(torch.arange(3), torch.zeros(2, 5, dtype=torch.int64), logits, "labels", first=False)
