"""The Hugging Face adapter's ``metadata_keys`` and prediction latency, on a tiny BERT."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402
from transformers.data.data_collator import default_data_collator  # noqa: E402

from dq_plugins import load_samples  # noqa: E402
from dq_plugins.transformers import DataQualityCallback  # noqa: E402

SLOW_TOKEN = 99
MODEL_KEYS = {"input_ids", "attention_mask", "labels", "idx"}


def make_dataset(n: int, num_slow: int, seed: int) -> datasets.Dataset:
    """Rows 0..num_slow-1 hold SLOW_TOKEN and come from source "scan"; the others from "web"."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, SLOW_TOKEN, (n, 8))
    tokens[:num_slow, 0] = SLOW_TOKEN
    return datasets.Dataset.from_dict({
        "input_ids": tokens.tolist(), "attention_mask": [[1] * 8] * n, "labels": [i % 3 for i in range(n)],
        "idx": list(range(n)), "source": ["scan" if i < num_slow else "web" for i in range(n)],
        "length": [int(i % 5) + 10 for i in range(n)],
    })


class SleepyBert(BertForSequenceClassification):
    """Sleeps 100 ms in a forward whose batch holds SLOW_TOKEN."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if bool((input_ids == SLOW_TOKEN).any()):
            time.sleep(0.1)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)


def strict_collator(features):
    """The default collator, after checking that no metadata column reached it."""
    extra = set(features[0]) - MODEL_KEYS
    assert not extra, f"columns {extra} reached the collator"
    return default_data_collator(features)


def make_trainer(tmp_path, callback, train, val, **overrides):
    torch.manual_seed(0)
    model = SleepyBert(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, num_labels=3))
    options = dict(output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=8,
                   per_device_eval_batch_size=8, report_to="none", use_cpu=True, save_strategy="no",
                   eval_strategy="epoch", disable_tqdm=True, logging_strategy="no")
    options.update(overrides)
    return Trainer(model=model, args=TrainingArguments(**options), train_dataset=train, eval_dataset=val,
                   data_collator=strict_collator, callbacks=[callback])


def test_metadata_keys_are_read_by_id_and_latency_is_recorded(tmp_path, tracking_uri):
    train, val = make_dataset(40, 20, seed=0), make_dataset(24, 8, seed=1)  # slices of >= 20 (min_size)
    callback = DataQualityCallback(metadata_keys=["source", "length"], embeddings=False)
    make_trainer(tmp_path, callback, train, val).train()  # default TrainingArguments: remove_unused_columns=True
    samples = load_samples(callback.run_id, tracking_uri=tracking_uri)
    for split, num_slow in (("train", 20), ("validation", 8)):
        rows = samples[samples["split"] == split].set_index("sample_id").sort_index()
        assert list(rows["source"]) == ["scan"] * num_slow + ["web"] * (len(rows) - num_slow)
        assert list(rows["length"]) == [int(i % 5) + 10 for i in range(len(rows))]
        assert rows["latency_ms"].gt(0).all()
    assert {"source=scan", "source=web"} <= set(callback.result.slices["slice"])
    # evaluation runs in order, 8 per batch: the first batch holds the slow rows; its sleep is a lower
    # bound, and at least one of the two fast batches stays below it on a busy machine
    val_rows = samples[samples["split"] == "validation"].set_index("sample_id").sort_index()
    assert val_rows["latency_ms"].iloc[:8].min() > 100 / 8 > val_rows["latency_ms"].iloc[8:].min()
    report = callback.result.latency.set_index(["split", "column"])
    # Each evaluation batch holds one source (1 scan batch, 2 web batches): latency is confounded with batch
    # composition, and one batch per value cannot support a claim, so the report makes none and says why.
    source = report.loc[("validation", "source")]
    assert source["level"] == "none" and np.isnan(source["p_value"])
    assert "confounded with batch composition: 3 of 3 batches hold a single value of source" in source["summary"]


def test_a_missing_metadata_column_fails_at_train_begin_naming_it(tmp_path, tracking_uri):
    callback = DataQualityCallback(metadata_keys=["source", "day"], embeddings=False)
    trainer = make_trainer(tmp_path, callback, make_dataset(16, 4, seed=0), None, eval_strategy="no")
    with pytest.raises(ValueError, match=r"names \['day'\].*train dataset has no such column.*'length', 'source'"):
        trainer.train()


def test_metadata_keys_are_checked_at_construction():
    with pytest.raises(ValueError, match=r"list of column names but got the string 'source'.*\['source'\]"):
        DataQualityCallback(metadata_keys="source")
    with pytest.raises(ValueError, match=r"\['labels', 'mislabel_score'\] name the id or label column"):
        DataQualityCallback(metadata_keys=["labels", "mislabel_score", "source"])
