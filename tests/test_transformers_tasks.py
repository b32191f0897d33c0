"""Multi-label and token classification through the Hugging Face Trainer on tiny random BERTs.

As in test_transformers_callback.py the models do not learn (learning rate 0, no dropout), so what the
callback recorded for a sample id must equal what the model gives that sample, computed here.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig, BertForSequenceClassification, BertForTokenClassification, Trainer, TrainingArguments,
)

from dq_plugins import load_samples, with_ids  # noqa: E402
from dq_plugins.schema import (  # noqa: E402
    COPY_COLUMNS, LABEL_FREE_EMBEDDING_COLUMNS, MULTILABEL_EMBEDDING_COLUMNS, MULTILABEL_SAMPLE_COLUMNS, TOKEN_COLUMNS, TOKEN_SAMPLE_COLUMNS,
)
from dq_plugins.scores.tokens import adjusted_self_confidence  # noqa: E402
from dq_plugins.transformers import DataQualityCallback  # noqa: E402

SEQ_LEN = 12
NUM_CLASSES = 4
NUM_TAGS = 3


def _tokens(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ_LEN + 1, n)
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype(np.int64)
    return rng.integers(1, 100, (n, SEQ_LEN)) * mask, mask


def multilabel_dataset(n: int, seed: int) -> datasets.Dataset:
    tokens, mask = _tokens(n, seed)
    labels = (np.random.default_rng(seed + 7).random((n, NUM_CLASSES)) < 0.4).astype(np.float32)
    return with_ids(datasets.Dataset.from_dict(
        {"input_ids": tokens.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()}))


def token_dataset(n: int, seed: int, all_ignored: bool = False) -> datasets.Dataset:
    """Tags ``token % 3``; -100 on padding, on position 0 (a [CLS]) and on a random fifth of positions."""
    tokens, mask = _tokens(n, seed)
    tags = tokens % NUM_TAGS
    ignored = (mask == 0) | (np.random.default_rng(seed + 3).random(tokens.shape) < 0.2)
    ignored[:, 0] = True
    tags = np.where(ignored | all_ignored, -100, tags)
    return with_ids(datasets.Dataset.from_dict(
        {"input_ids": tokens.tolist(), "attention_mask": mask.tolist(), "labels": tags.tolist()}))


def bert_config(num_labels: int, **extra) -> BertConfig:
    torch.manual_seed(0)
    return BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, num_labels=num_labels, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, initializer_range=0.2, **extra)


def args(tmp_path, **overrides) -> TrainingArguments:
    options = dict(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=16,
                   per_device_eval_batch_size=16, learning_rate=0.0, use_cpu=True, report_to="none",
                   save_strategy="no", eval_strategy="epoch", disable_tqdm=True, logging_strategy="no", seed=0)
    options.update(overrides)
    return TrainingArguments(**options)


def artifact(run_id: str, path: str, tmp_path) -> str:
    return mlflow.MlflowClient().download_artifacts(run_id, path, str(tmp_path))


def model_outputs(model, ds) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ds["input_ids"]), attention_mask=torch.tensor(ds["attention_mask"])).logits
    return logits.numpy()[np.argsort(np.asarray(ds["idx"]))]


def test_hf_multilabel_from_the_model_config(tracking_uri, tmp_path):
    train, val = multilabel_dataset(48, 0), multilabel_dataset(16, 1)
    model = BertForSequenceClassification(bert_config(NUM_CLASSES, problem_type="multi_label_classification"))
    callback = DataQualityCallback()
    Trainer(model=model, args=args(tmp_path), train_dataset=train, eval_dataset=val, callbacks=[callback]).train()

    samples = load_samples(callback.run_id)
    assert list(samples.columns) == [*MULTILABEL_SAMPLE_COLUMNS, *MULTILABEL_EMBEDDING_COLUMNS, "latency_ms", *COPY_COLUMNS]  # embeddings on by default
    assert samples["latency_ms"].notna().all() and (samples["latency_ms"] > 0).all()  # train and validation timed
    for split, ds in (("train", train), ("validation", val)):
        rows = samples[samples["split"] == split].sort_values("sample_id")
        assert rows["sample_id"].tolist() == list(range(len(ds)))
        labels = np.asarray(ds["labels"])[np.argsort(np.asarray(ds["idx"]))]
        assert [list(v) for v in rows["label"]] == [list(np.flatnonzero(r)) for r in labels]
        p = 1 / (1 + np.exp(-model_outputs(model, ds)))
        given = np.where(labels == 1, p, 1 - p).mean(axis=1)
        np.testing.assert_allclose(rows["confidence"].to_numpy(), given, atol=1e-5)
        assert [list(v) for v in rows["pred"]] == [list(np.flatnonzero(r)) for r in p > 0.5]
    per_class = pd.read_parquet(artifact(callback.run_id, "dq/sample_labels.parquet", tmp_path))
    assert len(per_class) == (48 + 16) * NUM_CLASSES
    assert mlflow.MlflowClient().get_run(callback.run_id).data.tags["dq.task"] == "multilabel"


def test_hf_token_classification(tracking_uri, tmp_path):
    train, val = token_dataset(48, 0), token_dataset(16, 1)
    config = bert_config(NUM_TAGS, id2label={0: "O", 1: "B-<x>", 2: "I-X"}, label2id={"O": 0, "B-<x>": 1, "I-X": 2})
    model = BertForTokenClassification(config)
    callback = DataQualityCallback()
    Trainer(model=model, args=args(tmp_path), train_dataset=train, eval_dataset=val, callbacks=[callback]).train()

    tokens = pd.read_parquet(artifact(callback.run_id, "dq/tokens.parquet", tmp_path))
    assert list(tokens.columns) == list(TOKEN_COLUMNS)
    for split, ds in (("train", train), ("validation", val)):
        tags = np.asarray(ds["labels"])[np.argsort(np.asarray(ds["idx"]))]
        rows = tokens[tokens["split"] == split].sort_values(["sample_id", "token_index"])
        sid, pos = np.nonzero(tags != -100)
        np.testing.assert_array_equal(rows["sample_id"], sid)  # exactly the labelled tokens, ignored ones skipped
        np.testing.assert_array_equal(rows["token_index"], pos)
        np.testing.assert_array_equal(rows["label"], tags[sid, pos])
        logits = model_outputs(model, ds)
        np.testing.assert_array_equal(rows["pred"], logits.argmax(-1)[sid, pos])
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        expected = 1 - adjusted_self_confidence(tags[sid, pos], probs[sid, pos])  # a model that never learns
        np.testing.assert_allclose(rows["mislabel_score"], expected, atol=1e-4)
    samples = load_samples(callback.run_id)
    assert list(samples.columns) == [*TOKEN_SAMPLE_COLUMNS, *LABEL_FREE_EMBEDDING_COLUMNS, "latency_ms", *COPY_COLUMNS]  # embeddings on by default
    assert samples["latency_ms"].notna().all()
    top = tokens.groupby(["split", "sample_id"])["mislabel_score"].max()
    np.testing.assert_allclose(samples.set_index(["split", "sample_id"])["mislabel_score"], top.reindex(
        pd.MultiIndex.from_frame(samples[["split", "sample_id"]])))
    flagged = tokens.groupby(["split", "sample_id"])["is_label_issue"].any()
    assert (samples.set_index(["split", "sample_id"])["is_label_issue"] == flagged).all()
    assert (tokens.loc[~tokens["is_label_issue"], "suggested_label"] == tokens.loc[~tokens["is_label_issue"], "label"]).all()
    html = open(artifact(callback.run_id, "dq/token_issues.html", tmp_path)).read()
    assert "<li>" in html and "B-<x>" not in html  # tag names are escaped
    issues = json.load(open(artifact(callback.run_id, "dq/issues.json", tmp_path)))
    assert issues["columns"][:3] == ["split", "sample_id", "mislabel_score"]


def test_hf_token_batch_with_every_tag_ignored_is_an_error(tracking_uri, tmp_path):
    model = BertForTokenClassification(bert_config(NUM_TAGS))
    trainer = Trainer(model=model, args=args(tmp_path, eval_strategy="no"), train_dataset=token_dataset(32, 0, True),
                      callbacks=[DataQualityCallback()])
    with pytest.raises(ValueError, match=r"Every tag under `labels` in the first batch is -100.*HINT"):
        trainer.train()


def unpadded_token_dataset(n: int, seed: int) -> datasets.Dataset:
    """Sequences of 4..SEQ_LEN tokens, not padded (a collator pads each batch); tags as in token_dataset."""
    tokens, mask = _tokens(n, seed)
    tags = np.where(np.random.default_rng(seed + 3).random(tokens.shape) < 0.2, -100, tokens % NUM_TAGS)
    tags[:, 0] = -100
    lengths = mask.sum(1)
    return with_ids(datasets.Dataset.from_dict({
        "input_ids": [t[:k].tolist() for t, k in zip(tokens, lengths)],
        "attention_mask": [m[:k].tolist() for m, k in zip(mask, lengths)],
        "labels": [t[:k].tolist() for t, k in zip(tags, lengths)]}))


def pad_left(features: list[dict]) -> dict[str, torch.Tensor]:
    """A ``padding_side="left"`` collator: each batch padded on the left to its longest sequence."""
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "idx": []}
    for f in features:
        pad = width - len(f["input_ids"])
        batch["input_ids"].append([0] * pad + list(f["input_ids"]))
        batch["attention_mask"].append([0] * pad + list(f["attention_mask"]))
        batch["labels"].append([-100] * pad + list(f["labels"]))
        batch["idx"].append(f["idx"])
    return {key: torch.tensor(value) for key, value in batch.items()}


def test_hf_token_classification_with_left_padding(tracking_uri, tmp_path):
    """Shuffled batches padded on the left: a token keeps its position (counted from the first attended one)
    whatever its batch's padding, so each labelled token is one row, with its own tag."""
    train = unpadded_token_dataset(40, 0)
    model = BertForTokenClassification(bert_config(NUM_TAGS))
    callback = DataQualityCallback()
    Trainer(model=model, args=args(tmp_path, num_train_epochs=3, learning_rate=1e-3, eval_strategy="no",
                                   per_device_train_batch_size=8),
            train_dataset=train, data_collator=pad_left, callbacks=[callback]).train()
    tokens = callback.result.tables["tokens"].sort_values(["sample_id", "token_index"])
    order = np.argsort(np.asarray(train["idx"]))
    tags = [train["labels"][i] for i in order]
    expected = [(s, p, t) for s, row in enumerate(tags) for p, t in enumerate(row) if t != -100]
    assert list(zip(tokens["sample_id"], tokens["token_index"], tokens["label"])) == expected
    history = callback._tasks.histories()["train"]
    assert history.epochs.tolist() == [0, 1, 2] and np.isfinite(history.accuracy).all()


def test_hf_token_metadata_columns_are_merged_and_sliced(tracking_uri, tmp_path):
    train = token_dataset(32, 0)
    train = train.add_column("source", ["web" if i % 2 else "news" for i in train["idx"]])
    callback = DataQualityCallback(metadata_keys=["source"])
    Trainer(model=BertForTokenClassification(bert_config(NUM_TAGS)), args=args(tmp_path, eval_strategy="no"),
            train_dataset=train, callbacks=[callback]).train()
    samples = callback.result.samples
    assert (samples["source"] == np.where(samples["sample_id"] % 2, "web", "news")).all()
    slices = callback.result.slices.set_index("slice")
    assert slices.loc["source=web", "size"] == (samples["source"] == "web").sum()
    assert slices.loc["source=news", "mean_mislabel_score"] == pytest.approx(
        samples.loc[samples["source"] == "news", "mislabel_score"].mean())
    assert {f"label={k}" for k in range(NUM_TAGS)} <= set(slices.index)  # the per-tag slices stay


def test_hf_token_classification_embeddings(tracking_uri, tmp_path):
    from dq_plugins.raw_record import load_embeddings

    rows = token_dataset(32, 0).to_dict()
    for key in ("input_ids", "attention_mask", "labels"):
        rows[key][5] = rows[key][2]  # sequence 5 copies sequence 2
    train = datasets.Dataset.from_dict(rows)
    model = BertForTokenClassification(bert_config(NUM_TAGS))
    callback = DataQualityCallback()
    Trainer(model=model, args=args(tmp_path), train_dataset=train, eval_dataset=token_dataset(16, 1),
            callbacks=[callback]).train()

    samples = load_samples(callback.run_id)
    assert list(samples.columns) == [*TOKEN_SAMPLE_COLUMNS, *LABEL_FREE_EMBEDDING_COLUMNS, "latency_ms", *COPY_COLUMNS]
    assert samples[list(LABEL_FREE_EMBEDDING_COLUMNS)].dtypes.astype(str).to_dict() == {
        "outlier_score": "float64", "is_outlier": "bool", "near_duplicate_of": "int64", "is_near_duplicate": "bool",
        "near_duplicate_score": "float64", "cluster": "int64", "x2d": "float32", "y2d": "float32",
    }
    assert samples.groupby("split").size().to_dict() == {"train": 32, "validation": 16}  # one row per sequence
    train_rows = samples[samples["split"] == "train"].set_index("sample_id")
    assert train_rows.loc[5, "near_duplicate_of"] == 2 and train_rows.loc[2, "near_duplicate_of"] == 5
    assert samples["x2d"].notna().all() and samples["outlier_score"].notna().all()

    # one embedding per sequence: the head input (last hidden state) averaged under the attention mask
    for split, ds in (("train", train), ("validation", token_dataset(16, 1))):
        ids, values = load_embeddings(artifact(callback.run_id, f"dq/embeddings/{split}.npz", tmp_path))
        assert ids.tolist() == list(range(len(ds))) and values.shape == (len(ds), 16)
        order = np.argsort(np.asarray(ds["idx"]))
        mask = torch.tensor(ds["attention_mask"])[order]
        with torch.no_grad():
            hidden = model.bert(input_ids=torch.tensor(ds["input_ids"])[order], attention_mask=mask)[0]
        expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        np.testing.assert_allclose(values.astype(np.float32), expected.numpy(), rtol=1e-2, atol=2e-3)
    run = mlflow.MlflowClient().get_run(callback.run_id)
    assert "dq.num_near_duplicates" in run.data.metrics and "dq.num_clusters.validation" in run.data.metrics


def test_hf_token_classification_with_sparse_ids(tracking_uri, tmp_path):
    """Huge ids in the ``idx`` column: one slot each, and every table names the sequences by their ids."""
    dense = token_dataset(24, 0)
    sparse = dense.map(lambda row: {"idx": 10**12 + 7 * row["idx"]})
    results, callbacks = {}, {}
    for name, train in (("dense", dense), ("sparse", sparse)):
        callback = DataQualityCallback(embeddings=False)
        Trainer(model=BertForTokenClassification(bert_config(NUM_TAGS)), args=args(tmp_path, eval_strategy="no"),
                train_dataset=train, callbacks=[callback]).train()
        results[name], callbacks[name] = callback.result, callback
    want, got = (results[n].tables["tokens"].sort_values(["sample_id", "token_index"]).reset_index(drop=True)
                 for n in ("dense", "sparse"))
    np.testing.assert_array_equal(got["sample_id"], 10**12 + 7 * want["sample_id"])
    np.testing.assert_array_equal(got[["token_index", "label", "pred"]], want[["token_index", "label", "pred"]])
    np.testing.assert_allclose(got["mislabel_score"], want["mislabel_score"], rtol=1e-5)
    assert set(results["sparse"].samples["sample_id"]) == {10**12 + 7 * i for i in range(24)}
    # `dq analyze` rebuilds the token tables from the raw record, under the same ids
    from dq_plugins.sinks.offline import reanalyze

    again = reanalyze(callbacks["sparse"].run_id, child_run=True).result.tables["tokens"]
    again = again.sort_values(["sample_id", "token_index"]).reset_index(drop=True)
    np.testing.assert_array_equal(again["sample_id"], got["sample_id"])
    np.testing.assert_allclose(again["mislabel_score"], got["mislabel_score"], rtol=1e-6)
    np.testing.assert_array_equal(again["is_label_issue"], got["is_label_issue"])


def test_hf_token_input_copies_and_leakage(tracking_uri, tmp_path):
    """Input fingerprints in a token run: a train sequence copied within the split and into the validation split."""
    rows = token_dataset(32, 0).to_dict()
    for key in ("input_ids", "attention_mask", "labels"):
        rows[key][9] = rows[key][4]  # train sequence 9 copies train sequence 4
    train = datasets.Dataset.from_dict(rows)
    val_rows = token_dataset(16, 1).to_dict()
    for key in ("input_ids", "attention_mask", "labels"):
        val_rows[key][3] = rows[key][7]  # validation sequence 3 is train sequence 7: leakage
    callback = DataQualityCallback(embeddings=False)
    Trainer(model=BertForTokenClassification(bert_config(NUM_TAGS)), args=args(tmp_path), train_dataset=train,
            eval_dataset=datasets.Dataset.from_dict(val_rows), callbacks=[callback]).train()
    samples = callback.result.samples.set_index(["split", "sample_id"])
    assert {samples.loc[("train", 9), "near_duplicate_of"], samples.loc[("train", 4), "near_duplicate_of"]} == {4, 9}
    assert samples.loc[("validation", 3), "train_duplicate_of"] == 7 and samples.loc[("validation", 3), "is_leaked"]
    assert samples["is_leaked"].sum() == 1 and samples.loc[("validation", 3), "leaked_score"] == 1.0
    metrics = mlflow.MlflowClient().get_run(callback.run_id).data.metrics
    assert metrics["dq.num_leaked.validation"] == 1.0
    leakage = json.load(open(artifact(callback.run_id, "dq/leakage.json", tmp_path)))
    assert leakage["data"] == [["validation", 3, 7, "exact", 1.0]]


def test_hf_rule_on_a_single_label_column_fails_at_train_begin_of_a_token_run(tracking_uri, tmp_path):
    from dq_plugins.rules import Condition, Rule, TagRun

    callback = DataQualityCallback(rules=[Rule("margins", Condition("aum", "<", 0, aggregate="mean"), then=[TagRun("a", "b")])])
    trainer = Trainer(model=BertForTokenClassification(bert_config(NUM_TAGS)), args=args(tmp_path, eval_strategy="no"),
                      train_dataset=token_dataset(16, 0), callbacks=[callback])
    with pytest.raises(ValueError, match=r"(?s)token_classification run.*unknown metric 'aum'"):
        trainer.train()
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []  # nothing opened
