"""Multi-label classification: the ledger, the scores and the Lightning adapter end to end."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dq_plugins import load_samples
from dq_plugins.schema import COPY_COLUMNS, MULTILABEL_EMBEDDING_COLUMNS, MULTILABEL_SAMPLE_COLUMNS, SAMPLE_LABEL_COLUMNS
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.recording.multilabel import MultiLabelLedger
from dq_plugins.scores.multilabel import class_label_issues, multilabel_scores

NUM_CLASSES = 4


class MultiHotDataset(Dataset):
    """Points whose class k is on when ``w_k . x > 0``; ``flip`` lists (sample, class) pairs given flipped."""

    def __init__(self, n: int = 160, dim: int = 8, seed: int = 0, flip: list[tuple[int, int]] = ()) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        weights = torch.randn(NUM_CLASSES, dim, generator=torch.Generator().manual_seed(99))
        self.true = (self.x @ weights.T > 0).float()
        self.labels = self.true.clone()
        for i, k in flip:
            self.labels[i, k] = 1 - self.labels[i, k]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index], "labels": self.labels[index], "idx": index}


class MultiLabelModule(pl.LightningModule):
    def __init__(self, dim: int = 8, width: int = NUM_CLASSES) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, width))

    def _step(self, batch):
        logits = self.net(batch["x"])
        target = batch["labels"].float() if batch["labels"].ndim == 2 else F.one_hot(batch["labels"], logits.shape[1]).float()
        return {"loss": F.binary_cross_entropy_with_logits(logits[:, : target.shape[1]], target), "logits": logits}

    def training_step(self, batch, batch_idx):
        return self._step(batch)

    def validation_step(self, batch, batch_idx):
        return self._step(batch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)


def fit(callback, train, val=None, module=None, epochs: int = 6):
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=[callback])
    trainer.fit(module or MultiLabelModule(), DataLoader(train, batch_size=16, shuffle=True),
                DataLoader(val, batch_size=32) if val is not None else None)
    return trainer


def artifact(run_id: str, path: str, tmp_path) -> str:
    return mlflow.MlflowClient().download_artifacts(run_id, path, str(tmp_path))


# ---------------------------------------------------------------------------------- ledger
def test_ledger_records_per_class_fields_by_hand():
    ledger = MultiLabelLedger(capacity=3, num_classes=2)
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    ledger.record(torch.tensor([0, 2]), labels, logits, epoch=0)
    ledger.record(torch.tensor([0]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]]), epoch=0)
    history = ledger.to_history()
    sig = torch.sigmoid
    # sample 0, seen twice: the mean of the two occurrences
    expected = 0.5 * (sig(torch.tensor([2.0, -1.0])) + sig(torch.tensor([0.0, 1.0])))
    np.testing.assert_allclose(history.fields["prob_given"][0, 0], expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(history.fields["margin"][0, 0], [1.0, 0.0])
    np.testing.assert_allclose(history.fields["correct"][0, 0], [0.5, 0.5])  # 0.0 > 0 is not correct
    np.testing.assert_allclose(history.fields["prob_given"][0, 2], [1 - sig(torch.tensor(0.5)), sig(torch.tensor(0.5))],
                               rtol=1e-6)
    assert np.isnan(history.fields["prob_given"][0, 1]).all() and not history.seen[1]
    np.testing.assert_array_equal(history.labels[[0, 2]], [[1, 1], [0, 1]])
    np.testing.assert_allclose(history.mean_probs[2], sig(torch.tensor([0.5, 0.5])).numpy(), rtol=1e-6)


def test_ledger_drops_and_counts_bad_rows_without_writing_them():
    ledger = MultiLabelLedger(capacity=2, num_classes=2)
    ids = torch.tensor([0, 1, 5, 1])
    labels = torch.tensor([[1.0, 0.0], [0.3, 1.0], [1.0, 0.0], [0.0, 1.0]])
    logits = torch.tensor([[1.0, -1.0], [1.0, 1.0], [1.0, 1.0], [float("nan"), 0.0]])
    ledger.record(ids, labels, logits, epoch=0)
    counters = ledger.close_epoch()
    assert counters == {"out_of_range": 1, "non_finite": 1, "bad_target": 1}
    history = ledger.to_history()
    assert history.seen.tolist() == [True, False]


# ---------------------------------------------------------------------------------- scores
def test_sample_flags_are_cleanlabs_multilabel_flags():
    from cleanlab.multilabel_classification.filter import find_label_issues

    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) < 0.4).astype(np.int8)
    probs = np.clip(labels * 0.8 + rng.normal(0, 0.15, labels.shape), 0.01, 0.99)
    probs[:10] = 1 - probs[:10]  # ten samples whose every label the model contradicts
    ours = class_label_issues(labels, probs)
    theirs = find_label_issues([list(np.flatnonzero(r)) for r in labels], probs, n_jobs=1)
    np.testing.assert_array_equal(ours.any(axis=1), theirs)
    assert ours[:10].any(axis=1).all() and ours[:10].sum() > ours[10:20].sum()


def test_mislabel_score_is_the_most_doubtful_class():
    labels = np.array([[1, 0], [0, 1]])
    prob_given = np.array([[[0.9, 0.6], [0.8, 1.0]], [[0.7, 0.8], [0.6, 1.0]]])  # (E=2, N=2, C=2)
    scores = multilabel_scores(labels, prob_given, np.array([[0.8, 0.3], [0.3, 0.9]]))
    np.testing.assert_allclose(scores.class_score, [[0.2, 0.3], [0.3, 0.0]])
    np.testing.assert_allclose(scores.mislabel_score, [0.3, 0.3])
    early = np.array([[0.5, 0.5], [1.0, 1.0]])
    with_early = multilabel_scores(labels, prob_given, np.array([[0.8, 0.3], [0.3, 0.9]]), early)
    np.testing.assert_allclose(with_early.class_score, [[0.35, 0.4], [0.15, 0.0]])


# ---------------------------------------------------------------------------------- Lightning end to end
def test_lightning_multilabel_outputs_and_planted_errors(tracking_uri, tmp_path, capsys):
    torch.manual_seed(0)  # the model's initialisation and the shuffling: not the earlier tests' random state
    rng = np.random.default_rng(1)
    flips = [(int(i), int(rng.integers(NUM_CLASSES))) for i in rng.choice(160, 16, replace=False)]
    train = MultiHotDataset(160, flip=flips)
    val = MultiHotDataset(48, seed=1)
    callback = DataQualityCallback(task="multilabel")
    fit(callback, train, val, epochs=12)

    samples = load_samples(callback.run_id)
    assert list(samples.columns) == [*MULTILABEL_SAMPLE_COLUMNS, *MULTILABEL_EMBEDDING_COLUMNS, "latency_ms", *COPY_COLUMNS]  # embeddings on by default
    assert (samples["latency_ms"] > 0).all()  # every sample's share of its timed forward, as for single-label
    train_rows = samples[samples["split"] == "train"].set_index("sample_id").sort_index()
    assert len(train_rows) == 160 and (samples["split"] == "validation").sum() == 48
    assert train_rows.loc[5, "label"].tolist() == np.flatnonzero(train.labels[5].numpy()).tolist()
    noisy = np.zeros(160, bool)
    noisy[[i for i, _ in flips]] = True
    score = train_rows["mislabel_score"].to_numpy()
    assert score[noisy].mean() > score[~noisy].mean() + 0.2
    from sklearn.metrics import average_precision_score

    assert average_precision_score(noisy, score) > 0.6
    flagged = train_rows["is_label_issue"].to_numpy()
    assert (flagged & noisy).sum() >= 6
    # a flagged sample's suggested set differs from its given set; an unflagged one's does not
    same = np.array([a.tolist() == b.tolist() for a, b in zip(train_rows["label"], train_rows["suggested_label"])])
    np.testing.assert_array_equal(same, ~flagged)

    per_class = pd.read_parquet(artifact(callback.run_id, "dq/sample_labels.parquet", tmp_path))
    assert list(per_class.columns) == list(SAMPLE_LABEL_COLUMNS)
    assert len(per_class) == (160 + 48) * NUM_CLASSES
    rows = per_class[(per_class["split"] == "train")].set_index(["sample_id", "class_id"])
    hits = [rows.loc[(i, k), "action"] == ("remove" if train.labels[i, k] == 1 else "add")
            for i, k in flips if rows.loc[(i, k), "is_label_issue"]]
    assert len(hits) >= 6 and all(hits)
    assert set(per_class["action"]) <= {"add", "remove", "keep"}

    client = mlflow.MlflowClient()
    issues = json.load(open(artifact(callback.run_id, "dq/issues.json", tmp_path)))
    assert issues["columns"][:4] == ["split", "sample_id", "label", "suggested_label"]
    slices = json.load(open(artifact(callback.run_id, "dq/slices.json", tmp_path)))
    slice_names = {row[slices["columns"].index("slice")] for row in slices["data"]}
    assert {f"class={k}" for k in range(NUM_CLASSES)} <= slice_names
    run = client.get_run(callback.run_id)
    assert run.data.tags["dq.task"] == "multilabel"
    assert run.data.metrics["dq.num_label_issues"] == float(flagged.sum())
    assert run.data.metrics["dq.flags_trusted"] == 1.0 and callback.result.trust["train"].trusted

    from dq_plugins.cli import main

    assert main(["report", callback.run_id]) == 0  # dq report reads a multi-label run
    report = capsys.readouterr().out
    assert "Task: multilabel" in report and "class=3" in report and "yes (" in report


def test_lightning_multilabel_embeddings(tracking_uri, tmp_path):
    from dq_plugins.raw_record import load_embeddings
    from dq_plugins.scores.neighbors import knn_cosine, neighbor_label_set_disagreement

    train = MultiHotDataset(96)
    train.x[7] = train.x[3]  # an exact copy of sample 3's input, with the opposite label set
    train.labels[7] = 1 - train.labels[3]
    runs = {}
    for embeddings in (True, False):
        pl.seed_everything(0)
        runs[embeddings] = DataQualityCallback(task="multilabel", embeddings=embeddings, embedding_module="net.1",
                                               forward_fn=lambda module, batch: module.net(batch["x"]))  # final weights
        fit(runs[embeddings], train, MultiHotDataset(32, seed=1), epochs=3)

    samples = load_samples(runs[True].run_id)
    assert list(samples.columns) == [*MULTILABEL_SAMPLE_COLUMNS, *MULTILABEL_EMBEDDING_COLUMNS, "latency_ms", *COPY_COLUMNS]
    assert samples[list(MULTILABEL_EMBEDDING_COLUMNS)].dtypes.astype(str).to_dict() == {
        "outlier_score": "float64", "is_outlier": "bool", "near_duplicate_of": "int64", "is_near_duplicate": "bool",
        "near_duplicate_score": "float64", "neighbor_disagreement": "float64", "cluster": "int64",
        "x2d": "float32", "y2d": "float32",
    }
    rows = samples[samples["split"] == "train"].set_index("sample_id").sort_index()
    assert rows.loc[7, "near_duplicate_of"] == 3 and rows.loc[3, "near_duplicate_of"] == 7
    assert rows.loc[[3, 7], "is_near_duplicate"].all()
    np.testing.assert_allclose(rows.loc[[3, 7], "near_duplicate_score"], 1.0, atol=1e-3)
    assert samples["neighbor_disagreement"].between(0, 1).all() and samples["x2d"].notna().all()
    assert (samples["split"] == "validation").sum() == 32 and (samples["cluster"] >= 0).all()

    # the uploaded embeddings: one fp16 row per sample id, the ReLU's 32 outputs after fit (forward_fn);
    # the score is recomputable from them
    ids, values = load_embeddings(artifact(runs[True].run_id, "dq/embeddings/train.npz", tmp_path))
    assert ids.tolist() == list(range(96)) and values.shape == (96, 32) and values.dtype == np.float16
    np.testing.assert_array_equal(values[3], values[7])
    indices, sims = knn_cosine(values, 10)
    sets = np.stack([np.isin(np.arange(NUM_CLASSES), label) for label in rows.loc[ids, "label"]])
    np.testing.assert_allclose(rows.loc[ids, "neighbor_disagreement"], neighbor_label_set_disagreement(indices, sets, sims),
                               atol=1e-6)

    # the task's own scores and flags are those of the same fit without embeddings
    plain = load_samples(runs[False].run_id)
    assert list(plain.columns) == [*MULTILABEL_SAMPLE_COLUMNS, "latency_ms", "near_duplicate_of", "is_near_duplicate", "near_duplicate_score", *COPY_COLUMNS]
    for column in ("sample_id", "split", "mislabel_score", "is_label_issue", "num_label_issues", "confidence"):
        np.testing.assert_array_equal(samples[column], plain[column])
    assert [list(v) for v in samples["suggested_label"]] == [list(v) for v in plain["suggested_label"]]

    run = mlflow.MlflowClient().get_run(runs[True].run_id)
    assert run.data.metrics["dq.num_near_duplicates"] >= 2 and "dq.num_outliers.validation" in run.data.metrics
    assert "dq.num_conflicting_duplicates" not in run.data.metrics
    assert open(artifact(runs[True].run_id, "dq/embedding_map.png", tmp_path), "rb").read(4) == b"\x89PNG"


def test_multilabel_is_detected_without_the_option(tracking_uri):
    callback = DataQualityCallback()
    fit(callback, MultiHotDataset(64), epochs=2)
    assert callback.result.task == "multilabel"
    assert len(callback.result.tables["sample_labels"]) == 64 * NUM_CLASSES


def test_multilabel_flags_of_one_epoch_are_not_trusted(tracking_uri, capsys):
    callback = DataQualityCallback(task="multilabel")
    with pytest.warns(UserWarning, match=r"(?s)not to be trusted.*train: flags NOT trusted.*1 training epoch"):
        fit(callback, MultiHotDataset(64), epochs=1)
    assert mlflow.MlflowClient().get_run(callback.run_id).data.metrics["dq.flags_trusted"] == 0.0
    from dq_plugins.cli import main

    assert main(["report", callback.run_id]) == 0
    assert "NOT to be trusted for train" in capsys.readouterr().out


class SingleLabelDataset(MultiHotDataset):
    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index], "labels": int(self.labels[index].argmax()), "idx": index}


def test_option_and_data_disagree(tracking_uri):
    with pytest.raises(ValueError, match=r"task='multilabel'.*looks like 'single_label'.*shape \(16,\)"):
        fit(DataQualityCallback(task="multilabel"), SingleLabelDataset(64), epochs=1)
    with pytest.raises(ValueError, match=r"task='single_label'.*looks like 'multilabel'"):
        fit(DataQualityCallback(task="single_label"), MultiHotDataset(64), epochs=1)


def test_wrong_width_multi_hot_is_an_error(tracking_uri):
    with pytest.raises(ValueError, match=r"as wide as the logits \(5 classes\).*HINT"):
        fit(DataQualityCallback(task="multilabel"), MultiHotDataset(64), module=MultiLabelModule(width=5), epochs=1)


class SoftDataset(MultiHotDataset):
    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["labels"] = item["labels"] * 0.9 + 0.05
        return item


def test_soft_targets_are_an_error_at_the_first_batch(tracking_uri):
    with pytest.raises(ValueError, match=r"multi-hot targets.*got the value 0\.(05|95).*HINT: pass hard 0/1"):
        fit(DataQualityCallback(), SoftDataset(64), epochs=1)


# ---------------------------------------------------------------------------------- rules
def _flipped_set(seed: int = 1) -> MultiHotDataset:
    rng = np.random.default_rng(seed)
    return MultiHotDataset(160, flip=[(int(i), int(rng.integers(NUM_CLASSES))) for i in rng.choice(160, 16, replace=False)])


def test_rules_run_on_a_multilabel_run(tracking_uri, tmp_path):
    from dq_plugins.rules import Condition, ExportRows, FailRun, RelabelList, Rule, TagRun

    rules = [Rule("flagged", Condition("is_label_issue", ">=", 1, aggregate="count"),
                  then=[ExportRows("ml_issues"), RelabelList(), TagRun("dq.flagged", "yes")]),
             Rule("gate", Condition("mislabel_score", ">", 2.0, aggregate="max"), then=[FailRun("mark_failed")])]
    callback = DataQualityCallback(task="multilabel", rules=rules)
    fit(callback, _flipped_set(), epochs=8)
    run = mlflow.MlflowClient().get_run(callback.run_id)
    assert run.info.status == "FINISHED" and run.data.tags.get("dq.flagged") == "yes"
    exported = pd.read_parquet(artifact(callback.run_id, "dq/rules/ml_issues.parquet", tmp_path))
    flagged = callback.result.samples[callback.result.samples["is_label_issue"]]
    assert len(exported) == len(flagged) > 0 and exported["is_label_issue"].all()
    relabel = pd.read_csv(artifact(callback.run_id, "dq/rules/flagged_relabel.csv", tmp_path))
    assert len(relabel) == len(flagged) and set(relabel["action"]) <= {"relabel", "drop"}
    assert relabel["label"].str.startswith("[").all()  # the class lists, as dq/samples.parquet has them
    rules_table = json.load(open(artifact(callback.run_id, "dq/rules.json", tmp_path)))
    status = dict(zip((r[rules_table["columns"].index("rule")] for r in rules_table["data"]),
                      (r[rules_table["columns"].index("status")] for r in rules_table["data"])))
    assert status == {"flagged": "held", "gate": "not_held"}


def test_a_fail_rule_fails_a_multilabel_run_after_its_results_are_saved(tracking_uri):
    from dq_plugins.rules import Condition, DataQualityRuleFailed, FailRun, Rule

    callback = DataQualityCallback(task="multilabel", rules=[
        Rule("no_issues", Condition("is_label_issue", ">=", 1, aggregate="count"), then=[FailRun("raise")])])
    with pytest.raises(DataQualityRuleFailed, match="no_issues"):
        fit(callback, _flipped_set(), epochs=8)
    client = mlflow.MlflowClient()
    run_id = client.search_runs([e.experiment_id for e in client.search_experiments()])[0].info.run_id
    assert client.get_run(run_id).info.status == "FAILED"
    assert "dq/samples.parquet" in {a.path for a in client.list_artifacts(run_id, "dq")}


def test_a_rule_on_a_single_label_column_fails_at_the_first_multilabel_batch(tracking_uri):
    from dq_plugins.rules import Condition, Rule, TagRun

    callback = DataQualityCallback(rules=[Rule("margins", Condition("aum", "<", 0, aggregate="mean"), then=[TagRun("a", "b")])])
    with pytest.raises(ValueError, match=r"(?s)multilabel run.*aum"):
        fit(callback, MultiHotDataset(32), epochs=1)


# ---------------------------------------------------------------------------------- sparse ids
SPARSE_BASE, SPARSE_STEP = 10**12, 7


class SparseIds(MultiHotDataset):
    """The same samples under ids ``SPARSE_BASE + SPARSE_STEP * i``; sample 9 copies sample 3's input and labels."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.x[9], self.labels[9] = self.x[3], self.labels[3]

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "idx": SPARSE_BASE + SPARSE_STEP * index}


def test_sparse_ids_give_a_multilabel_run_the_dense_run_under_the_original_ids(tracking_uri, tmp_path):
    from dq_plugins.raw_record import load_task_record

    dense_data = SparseIds(64)
    dense_data.__class__ = MultiHotDataset  # the same samples under ids 0..63
    sparse_data = SparseIds(64)
    ids = SPARSE_BASE + SPARSE_STEP * np.arange(64)
    runs = {}
    for name, data, extra in (("dense", dense_data, {}), ("sparse", sparse_data, {"sample_ids": {"train": ids}})):
        torch.manual_seed(0)
        callback = DataQualityCallback(task="multilabel", embedding_module="net.1", **extra)
        fit(callback, data, epochs=3)
        runs[name] = callback
    assert runs["sparse"].session.capacities["train"] == 64  # memory follows the number of ids
    dense, sparse = (runs[n].result.samples.sort_values("sample_id").reset_index(drop=True) for n in ("dense", "sparse"))
    np.testing.assert_array_equal(sparse["sample_id"], ids)
    np.testing.assert_allclose(sparse["mislabel_score"], dense["mislabel_score"], rtol=1e-5)
    assert [list(v) for v in sparse["label"]] == [list(v) for v in dense["label"]]
    assert sparse.loc[9, "near_duplicate_of"] == ids[3] and dense.loc[9, "near_duplicate_of"] == 3  # ids, not slots
    per_class = runs["sparse"].result.tables["sample_labels"]
    assert set(per_class["sample_id"]) == set(ids)
    issues = runs["sparse"].result.issues
    assert set(issues["sample_id"]) <= set(ids)
    raw = mlflow.MlflowClient().download_artifacts(runs["sparse"].run_id, "dq/raw/train.npz", str(tmp_path))
    np.testing.assert_array_equal(load_task_record(raw)[1]["sample_ids"], ids)  # the raw record keeps slot -> id


def _small_history(sample_ids=None):
    """A two-epoch multi-label record of 6 samples (slots 0..5), ``sample_ids`` the id of each slot when given."""
    ledger = MultiLabelLedger(capacity=6, num_classes=2)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for epoch in range(2):
        ledger.record(torch.arange(6), labels, torch.randn(6, 2, generator=torch.Generator().manual_seed(epoch)), epoch)
    history = ledger.to_history()
    history.sample_ids = sample_ids
    return history


def test_analyze_task_latency_ids_and_optional_steps():
    """The task analysis of fit and `dq analyze`: latency by slot, tables by sample id, and an optional step that
    fails is warned about (end of fit) or raised (`dq analyze`)."""
    from dq_plugins.analysis.task_pipeline import analyze_task

    ids = SPARSE_BASE + SPARSE_STEP * np.arange(6)
    latency = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    result = analyze_task("multilabel", {"train": _small_history(ids)}, latency={"train": latency})
    samples = result.samples.sort_values("sample_id")
    np.testing.assert_array_equal(samples["sample_id"], ids)
    np.testing.assert_array_equal(samples["latency_ms"], latency)
    assert result.metrics["dq.mean_latency_ms.train"] == pytest.approx(18.0 / 5)

    def unreadable():
        raise OSError("disk full")

    with pytest.warns(RuntimeWarning, match="the embedding analysis failed; the multilabel results are kept without "
                                            "the embedding columns"):
        kept = analyze_task("multilabel", {"train": _small_history()}, embeddings=unreadable,
                            warn_optional_failures=True)
    assert "outlier_score" not in kept.samples and len(kept.samples) == 6
    with pytest.raises(OSError, match="disk full"):
        analyze_task("multilabel", {"train": _small_history()}, fingerprints=unreadable)
    with pytest.raises(ValueError, match="Expected `task` to be 'multilabel' or 'token_classification' but got "
                                         "'single_label'. HINT: single-label runs are analysed by"):
        analyze_task("single_label", {"train": _small_history()})


def test_dq_analyze_reruns_a_multilabel_run_from_its_raw_record(tracking_uri, capsys):
    """`dq analyze` on a task run (sparse ids, embeddings, metadata carried over): the fit's results again."""
    from dq_plugins.cli import main
    from dq_plugins.sinks.offline import reanalyze

    torch.manual_seed(0)
    ids = SPARSE_BASE + SPARSE_STEP * np.arange(64)
    callback = DataQualityCallback(task="multilabel", embedding_module="net.1", sample_ids={"train": ids})
    fit(callback, SparseIds(64), epochs=3)
    again = reanalyze(callback.run_id, child_run=True)
    key = ["split", "sample_id"]
    fit_time = callback.result.samples.sort_values(key).reset_index(drop=True)
    offline = again.result.samples.sort_values(key).reset_index(drop=True)
    assert sorted(offline.columns) == sorted(fit_time.columns)  # latency_ms carried over from the fit's table
    np.testing.assert_array_equal(offline["sample_id"], ids)
    for column in ("mislabel_score", "near_duplicate_of", "outlier_score", "latency_ms"):
        np.testing.assert_allclose(offline[column], fit_time[column], rtol=1e-6, err_msg=column)
    assert [list(v) for v in offline["suggested_label"]] == [list(v) for v in fit_time["suggested_label"]]
    assert main(["analyze", callback.run_id, "--child-run", "-q"]) == 0  # the CLI reads it as well


def test_a_raw_record_of_an_unknown_task_is_refused_by_name(tmp_path):
    from dq_plugins.raw_record import is_task_record, load_task_history

    path = tmp_path / "train.npz"
    np.savez_compressed(path, task=np.asarray("regression"), labels=np.zeros((2, 3)))
    assert is_task_record(path)
    with pytest.raises(ValueError, match=r"holds a record of task 'regression', which this version of dq_plugins"):
        load_task_history(path)
