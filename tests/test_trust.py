"""Flags that know when not to be trusted, and the noise rate's bootstrap interval."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from conftest import BlobsDataset
from dq_plugins.analysis.trust import MIN_SKILL, flag_trust, multilabel_skill, skill_above_chance
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.scores.confident_learning import confident_learning, noise_rate_interval


class Blobs(pl.LightningModule):
    """A linear classifier on the blobs; ``frozen`` keeps its weights at zero (logits all 0: chance)."""

    def __init__(self, frozen: bool = False, dim: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(dim, num_classes)
        if frozen:
            torch.nn.init.zeros_(self.layer.weight)
            torch.nn.init.zeros_(self.layer.bias)
            self.layer.requires_grad_(False)
        self.frozen = frozen
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # keeps the optimizer something to step

    def training_step(self, batch, batch_idx):
        logits = self.layer(batch["inputs"]) + 0.0 * self.anchor
        return {"loss": F.cross_entropy(logits, batch["labels"]), "logits": logits}

    def validation_step(self, batch, batch_idx):
        logits = self.layer(batch["inputs"])
        return {"loss": F.cross_entropy(logits, batch["labels"]), "logits": logits}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(module: pl.LightningModule, epochs: int, dataset=None) -> DataQualityCallback:
    callback = DataQualityCallback(embeddings=False)
    dataset = dataset or BlobsDataset(150, seed=3)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=[callback])
    trainer.fit(module, DataLoader(dataset, batch_size=16, shuffle=True),
                DataLoader(BlobsDataset(60, seed=3), batch_size=16))
    return callback


def logged_metrics(run_id: str) -> dict[str, float]:
    return mlflow.MlflowClient().get_run(run_id).data.metrics


# ---------------------------------------------------------------------------------------------- the rule
def test_skill_hand_computed():
    labels = np.array([0, 0, 0, 1])  # base = 0.75 (always predicting 0)
    assert skill_above_chance(labels, np.array([0, 0, 0, 0])) == 0.0
    assert skill_above_chance(labels, labels) == 1.0
    assert skill_above_chance(labels, np.array([0, 0, 1, 1])) == pytest.approx((0.75 - 0.75) / 0.25)
    assert np.isnan(skill_above_chance(np.array([2, 2]), np.array([2, 2])))  # one class: undefined


def test_multilabel_skill_against_each_class_majority():
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])  # class 0: 3/4 positive, class 1: 1/4: base = 0.75
    assert multilabel_skill(labels, np.array([[1, 0]] * 4)) == 0.0  # each class's majority value
    assert multilabel_skill(labels, labels) == 1.0
    assert multilabel_skill(labels, np.zeros((4, 2))) == pytest.approx((0.5 - 0.75) / 0.25)
    assert np.isnan(multilabel_skill(np.ones((3, 2)), np.ones((3, 2))))  # every cell the same: undefined
    verdict = flag_trust(labels, labels, 3, skill=0.1)  # a given skill is used as is
    assert not verdict.trusted and verdict.skill == 0.1


def test_rule_needs_two_epochs_and_skill():
    labels = np.arange(100) % 4
    good = labels.copy()
    good[:10] = (good[:10] + 1) % 4  # accuracy 0.9, skill 0.867
    verdict = flag_trust(labels, good, epochs=5, early_window_fitted=True)
    assert verdict.trusted and verdict.confidence == 1.0 and not verdict.reasons
    one_epoch = flag_trust(labels, good, epochs=1, early_window_fitted=True)
    assert not one_epoch.trusted and one_epoch.confidence == 0.0
    assert "1 training epoch(s)" in one_epoch.line("train")
    chance = flag_trust(labels, np.zeros(100, dtype=int), epochs=10)
    assert not chance.trusted and "near chance" in chance.line("validation")
    weak = labels.copy()
    weak[:60] = (weak[:60] + 1) % 4  # accuracy 0.4, skill 0.2 < MIN_SKILL
    assert skill_above_chance(labels, weak) < MIN_SKILL and not flag_trust(labels, weak, epochs=10).trusted
    unfitted = flag_trust(labels, good, epochs=5, early_window_fitted=False)
    assert unfitted.trusted and unfitted.confidence == 0.5 and "early window" in unfitted.line("train")


# ---------------------------------------------------------------------------------------------- the interval
def test_noise_rate_interval_brackets_the_estimate_and_narrows_with_samples():
    # 2 classes, 100 given each; class 0: 80 confidently 0, 20 confidently 1; class 1: 90 / 10.
    joint = np.array([[80.0, 20.0], [10.0, 90.0]])
    rate = 1.0 - (0.5 * 0.8 + 0.5 * 0.9)  # 0.15, cleanlab's calibrated 1 - trace
    low, high = noise_rate_interval(joint, np.array([100, 100]))
    assert low < rate < high and 0.05 < high - low < 0.15
    big_low, big_high = noise_rate_interval(joint * 100, np.array([10_000, 10_000]))
    assert big_low < rate < big_high and (big_high - big_low) < (high - low) / 5
    assert noise_rate_interval(joint, np.array([100, 100])) == (low, high)  # deterministic
    with pytest.raises(ValueError, match="non-negative counts"):
        noise_rate_interval(-joint, np.array([100, 100]))
    with pytest.raises(ValueError, match="shape"):
        noise_rate_interval(joint, np.array([100, 100, 1]))


def test_confident_learning_reports_an_interval_around_its_noise_rate():
    rng = np.random.default_rng(0)
    n, classes = 3000, 5
    true = rng.integers(0, classes, n)
    labels = true.copy()
    flipped = rng.random(n) < 0.2
    labels[flipped] = (labels[flipped] + rng.integers(1, classes, flipped.sum())) % classes
    logits = rng.normal(0.0, 1.0, (n, classes))
    logits[np.arange(n), true] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = confident_learning(labels, probs)
    low, high = result.noise_rate_interval
    assert low <= result.noise_rate <= high and high - low < 0.05
    assert low < flipped.mean() + 0.03 and high > flipped.mean() - 0.03


# ---------------------------------------------------------------------------------------------- end to end
def test_one_epoch_on_clean_labels_is_not_trusted(tracking_uri):
    with pytest.warns(UserWarning, match=r"not to be trusted(.|\n)*train: flags NOT trusted(.|\n)*1 training epoch"):
        callback = fit(Blobs(), epochs=1)
    metrics = logged_metrics(callback.run_id)
    assert metrics["dq.flags_trusted"] == 0.0 and metrics["dq.flags_confidence"] == 0.0
    assert metrics["dq.flags_trusted.validation"] == 0.0
    assert "dq.estimated_noise_rate" not in metrics and "dq.estimated_noise_rate_low" not in metrics
    assert not callback.result.trust["train"].trusted


def test_a_model_stuck_at_chance_is_not_trusted(tracking_uri, capsys):
    with pytest.warns(UserWarning, match=r"train: flags NOT trusted(.|\n)*near chance"):
        callback = fit(Blobs(frozen=True), epochs=3)
    metrics = logged_metrics(callback.run_id)
    assert metrics["dq.flags_trusted"] == 0.0 and metrics["dq.flags_trusted.validation"] == 0.0
    assert "dq.estimated_noise_rate.validation" not in metrics

    from dq_plugins.cli import main

    assert main(["report", callback.run_id, "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "untrusted" in text and "NO (0.00)" in text
    assert "Label-issue flags NOT to be trusted for train, validation" in text


def test_a_model_that_learned_is_trusted_and_reports_the_interval(tracking_uri, recwarn, capsys):
    callback = fit(Blobs(), epochs=6)
    assert not [w for w in recwarn if "not to be trusted" in str(w.message)]
    metrics = logged_metrics(callback.run_id)
    assert metrics["dq.flags_trusted"] == 1.0 and metrics["dq.flags_confidence"] > 0.5
    low, rate, high = (metrics[f"dq.estimated_noise_rate{end}"] for end in ("_low", "", "_high"))
    assert low <= rate <= high

    from dq_plugins.cli import main

    assert main(["report", callback.run_id, "--quiet"]) == 0
    assert f"{rate:.4f} [{low:.4f}, {high:.4f}]" in capsys.readouterr().out


def test_hugging_face_model_stuck_at_chance_is_not_trusted(tracking_uri, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from dq_plugins import with_ids
    from dq_plugins.transformers import DataQualityCallback as HFCallback

    rng = np.random.default_rng(0)
    n = 48
    ds = with_ids(datasets.Dataset.from_dict({
        "input_ids": rng.integers(1, 100, (n, 8)).tolist(), "attention_mask": np.ones((n, 8), int).tolist(),
        "labels": (np.arange(n) % 3).tolist(),
    }))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3,
    ))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=16,
                             learning_rate=0.0, use_cpu=True, report_to="none", save_strategy="no",
                             disable_tqdm=True, logging_strategy="no", seed=0)
    callback = HFCallback(embeddings=False)
    with pytest.warns(UserWarning, match=r"train: flags NOT trusted(.|\n)*near chance"):
        Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback]).train()
    metrics = logged_metrics(callback.run_id)
    assert metrics["dq.flags_trusted"] == 0.0 and "dq.estimated_noise_rate" not in metrics
