"""Copies found from the model's inputs, end to end in both frameworks, with default options.

Targets of issue 17: planted exact copies (within train, and train -> validation) found with
recall >= 0.95 and false positives <= 1% of the other rows; a leakage table and
``dq.num_leaked.validation`` in the run.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dq_plugins import load_samples
from dq_plugins.lightning import DataQualityCallback

N_TRAIN, N_VAL, DIM, CLASSES = 400, 100, 16, 4
WITHIN = [(i, 200 + i) for i in range(20)]  # train row 200 + i is a copy of train row i
LEAKED = [(i, 100 + i) for i in range(20)]  # validation row i is a copy of train row 100 + i


def planted_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blobs with planted copies; one copy pair within train has another label (a conflict)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (CLASSES, DIM))
    y_train = rng.integers(0, CLASSES, N_TRAIN)
    x_train = centers[y_train] + rng.normal(0, 1, (N_TRAIN, DIM))
    y_val = rng.integers(0, CLASSES, N_VAL)
    x_val = centers[y_val] + rng.normal(0, 1, (N_VAL, DIM))
    for source, copy in WITHIN:
        x_train[copy], y_train[copy] = x_train[source], y_train[source]
    y_train[WITHIN[0][1]] = (y_train[WITHIN[0][0]] + 1) % CLASSES  # conflicting labels
    for copy, source in LEAKED:
        x_val[copy], y_val[copy] = x_train[source], y_train[source]
    return x_train.astype(np.float32), y_train, x_val.astype(np.float32), y_val


class Rows(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"idx": i, "labels": self.y[i], "inputs": self.x[i]}


class Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        logits = self(batch["inputs"])
        return {"loss": F.cross_entropy(logits, batch["labels"]), "logits": logits}

    validation_step = training_step

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def check_copies(samples, run_id: str) -> None:
    train = samples[samples["split"] == "train"].set_index("sample_id")
    val = samples[samples["split"] == "validation"].set_index("sample_id")
    found = [train.at[copy, "near_duplicate_of"] == source for source, copy in WITHIN]
    assert np.mean(found) >= 0.95
    planted_train = {i for pair in WITHIN for i in pair}
    others = train.drop(index=list(planted_train))
    assert (others["near_duplicate_of"] >= 0).mean() <= 0.01
    leaked = [val.at[copy, "train_duplicate_of"] == source for copy, source in LEAKED]
    assert np.mean(leaked) >= 0.95
    clean_val = val.drop(index=[copy for copy, _ in LEAKED])
    assert (clean_val["train_duplicate_of"] >= 0).mean() <= 0.01
    assert (train["train_duplicate_of"] == -1).all() and not train["is_leaked"].any()
    assert (val["is_leaked"] == (val["train_duplicate_of"] >= 0)).all()
    assert (val.loc[val["is_leaked"], "leaked_score"] >= 0.995).all() and (val.loc[~val["is_leaked"], "leaked_score"] == 0).all()
    assert train.loc[[copy for _, copy in WITHIN], "is_near_duplicate"].all()
    conflict_source, conflict_copy = WITHIN[0]
    assert train.at[conflict_copy, "conflicting_duplicate"] and train.at[conflict_source, "conflicting_duplicate"]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.metrics["dq.num_leaked.validation"] == (val["train_duplicate_of"] >= 0).sum()
    logged = json.loads(run.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "dq/leakage.json", "type": "table"} in logged
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="dq/leakage.json")
    table = json.load(open(local))
    assert set(table["columns"]) >= {"split", "sample_id", "train_duplicate_of", "train_label", "kind", "similarity"}
    assert len(table["data"]) == run.data.metrics["dq.num_leaked.validation"]


def test_lightning_finds_planted_copies_with_default_options(tracking_uri):
    x_train, y_train, x_val, y_val = planted_arrays()
    callback = DataQualityCallback()
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=[callback])
    trainer.fit(Linear(), DataLoader(Rows(x_train, y_train), batch_size=32, shuffle=True),
                DataLoader(Rows(x_val, y_val), batch_size=32))
    check_copies(load_samples(callback.run_id), callback.run_id)


def test_lightning_input_key_names_the_input_and_a_bad_key_fails_early(tracking_uri):
    x_train, y_train, x_val, y_val = planted_arrays()
    callback = DataQualityCallback(input_key="missing", embeddings=False)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=[callback])
    with pytest.raises(ValueError, match=r"`input_key='missing'` names no tensor in the batch .*HINT"):
        trainer.fit(Linear(), DataLoader(Rows(x_train, y_train), batch_size=32))


def test_hugging_face_finds_planted_copies_with_default_options(tracking_uri, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from dq_plugins import with_ids
    from dq_plugins.transformers import DataQualityCallback as HFCallback

    rng = np.random.default_rng(1)
    seq = 10

    def tokens(n: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lengths = rng.integers(4, seq + 1, n)
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        ids = (rng.integers(5, 100, (n, seq)) + 0 * labels[:, None]) * mask
        return ids, mask

    y_train = rng.integers(0, 3, N_TRAIN)
    y_val = rng.integers(0, 3, N_VAL)
    t_train, m_train = tokens(N_TRAIN, y_train)
    t_val, m_val = tokens(N_VAL, y_val)
    for source, copy in WITHIN:
        t_train[copy], m_train[copy], y_train[copy] = t_train[source], m_train[source], y_train[source]
    y_train[WITHIN[0][1]] = (y_train[WITHIN[0][0]] + 1) % 3
    for copy, source in LEAKED:
        t_val[copy], m_val[copy], y_val[copy] = t_train[source], m_train[source], y_train[source]

    def dataset(t, m, y):
        return with_ids(datasets.Dataset.from_dict({"input_ids": t.tolist(), "attention_mask": m.tolist(),
                                                    "labels": y.tolist()}))

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=3))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=32,
                             per_device_eval_batch_size=32, learning_rate=1e-3, use_cpu=True, report_to="none",
                             save_strategy="no", eval_strategy="epoch", disable_tqdm=True, logging_strategy="no",
                             seed=0)
    callback = HFCallback()
    Trainer(model=model, args=args, train_dataset=dataset(t_train, m_train, y_train),
            eval_dataset=dataset(t_val, m_val, y_val), callbacks=[callback]).train()
    check_copies(load_samples(callback.run_id), callback.run_id)


class RefilledBuffer:
    """A loader that refills one preallocated input buffer in place for every batch (as ring-buffer loaders do)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        self.x, self.y, self.batch_size = torch.as_tensor(x), torch.as_tensor(y), batch_size
        self.buffer = torch.empty(batch_size, x.shape[1])

    def __len__(self) -> int:
        return len(self.y) // self.batch_size

    def __iter__(self):
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            rows = torch.arange(start, start + self.batch_size)
            self.buffer.copy_(self.x[rows])
            yield {"idx": rows, "labels": self.y[rows], "inputs": self.buffer}


def test_lightning_fingerprints_an_input_buffer_refilled_in_place_in_its_own_step(tracking_uri):
    """The fingerprint is taken in the training step: a batch buffer that the loader refills afterwards must not
    make the batches recorded later look like copies of each other."""
    x_train, y_train, _, _ = planted_arrays()
    callback = DataQualityCallback(num_samples=N_TRAIN)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=[callback])
    trainer.fit(Linear(), RefilledBuffer(x_train, y_train, 16))
    train = load_samples(callback.run_id).set_index("sample_id")
    planted = {i for pair in WITHIN for i in pair}
    found = [train.at[copy, "near_duplicate_of"] == source for source, copy in WITHIN]
    assert np.mean(found) >= 0.95
    assert (train.drop(index=list(planted))["near_duplicate_of"] >= 0).mean() <= 0.01
