"""The Hugging Face Trainer adapter end to end on a randomly initialised tiny BERT.

Every Trainer setting of the issue runs the same checks: the record reaches MLflow with the
columns of the Lightning path, every train (and validation) sample appears exactly once, and the
recorded numbers belong to the sample whose id they carry. For that last check the model does
not learn (learning rate 0, no dropout), so the logits of a sample are a fixed function of its
tokens and the recorded ``confidence`` (mean softmax of the given label over epochs) must equal
the probability that the model gives that sample, computed here independently.
"""

from __future__ import annotations

import inspect
import json

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from dq_plugins import load_samples, with_ids  # noqa: E402
from dq_plugins.analysis.pipeline import SAMPLE_COLUMNS  # noqa: E402
from dq_plugins.transformers import STATE_FILE, DataQualityCallback  # noqa: E402

NUM_CLASSES = 3
SEQ_LEN = 12


def make_dataset(n: int, seed: int, ids: bool = True, label_name: str = "labels") -> datasets.Dataset:
    """``n`` random token sequences; the label of sample ``i`` is ``i % 3`` so ids and labels can be checked."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ_LEN + 1, n)
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype(np.int64)
    tokens = rng.integers(1, 100, (n, SEQ_LEN)) * mask
    ds = datasets.Dataset.from_dict(
        {"input_ids": tokens.tolist(), "attention_mask": mask.tolist(),
         label_name: (np.arange(n) % NUM_CLASSES).tolist()}
    )
    return with_ids(ds) if ids else ds


TRAIN = make_dataset(64, seed=0)
VAL = make_dataset(24, seed=1)


def make_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=NUM_CLASSES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.2,  # spreads the probabilities (std ~0.16) so a sample mix-up cannot pass
    )
    return BertForSequenceClassification(config)


def make_args(tmp_path, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=16,
        per_device_eval_batch_size=16, learning_rate=0.0, use_cpu=True, report_to="none", save_strategy="no",
        eval_strategy="epoch", disable_tqdm=True, logging_strategy="no", seed=0,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def reference_probs(model: torch.nn.Module, ds: datasets.Dataset) -> np.ndarray:
    """(N, C) softmax of the model on every sample, in id order, computed without the Trainer."""
    model.eval()
    with torch.no_grad():
        inputs = {"input_ids": torch.tensor(ds["input_ids"]), "attention_mask": torch.tensor(ds["attention_mask"])}
        logits = model(**inputs).logits
    order = np.argsort(np.asarray(ds["idx"]))
    return F.softmax(logits.float(), dim=1).numpy()[order]


def train(tmp_path, callback=None, trainer_cls=Trainer, eval_dataset=VAL, train_dataset=TRAIN, **overrides):
    callback = callback or DataQualityCallback()
    model = make_model()
    trainer_kwargs = {key: overrides.pop(key) for key in ("compute_loss_func",) if key in overrides}
    trainer = trainer_cls(model=model, args=make_args(tmp_path, **overrides), train_dataset=train_dataset,
                          eval_dataset=eval_dataset, callbacks=[callback], **trainer_kwargs)
    trainer.train()
    return callback, trainer


def check_record(callback, model, splits=(("train", TRAIN), ("validation", VAL)), atol=1e-5) -> None:
    samples = load_samples(callback.run_id)
    assert list(samples.columns)[: len(SAMPLE_COLUMNS)] == list(SAMPLE_COLUMNS)  # embedding columns follow
    assert sorted(samples["split"].unique()) == sorted(name for name, _ in splits)
    for split, ds in splits:
        rows = samples[samples["split"] == split].sort_values("sample_id")
        assert list(rows["sample_id"]) == list(range(len(ds)))  # every sample exactly once
        assert list(rows["label"]) == [i % NUM_CLASSES for i in range(len(ds))]
        probs = reference_probs(model, ds)
        given = probs[np.arange(len(ds)), rows["label"].to_numpy()]
        np.testing.assert_allclose(rows["confidence"].to_numpy(), given, atol=atol)  # ids stay with their samples
        assert (rows["pred"].to_numpy() == probs.argmax(1)).mean() > (0.9 if atol > 1e-3 else 0.999)


def smoothed_compute_loss_func(outputs, labels, num_items_in_batch=None):
    return F.cross_entropy(outputs.logits, labels, label_smoothing=0.2)


class OwnLossTrainer(Trainer):
    """A subclass that overrides ``compute_loss`` the usual way: pop the labels, call ``model(**inputs)``."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss


def bf16_supported_on_cpu() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except RuntimeError:
        return False


SETTINGS = {
    "defaults": {},
    "gradient_accumulation": {"gradient_accumulation_steps": 2},
    "dataloader_workers": {"dataloader_num_workers": 2},
    "eval_steps": {"eval_strategy": "steps", "eval_steps": 3},
    "label_smoothing": {"label_smoothing_factor": 0.1},
    "compute_loss_func": {"compute_loss_func": smoothed_compute_loss_func},
    "compute_loss_override": {"trainer_cls": OwnLossTrainer},
    "bf16": {"bf16": True},
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_trainer_setting_records_every_sample_with_its_id(tracking_uri, tmp_path, setting):
    if setting == "bf16" and not bf16_supported_on_cpu():
        pytest.skip("bf16 autocast is not supported on this CPU")
    callback, trainer = train(tmp_path, **SETTINGS[setting])
    check_record(callback, trainer.model, atol=1e-2 if setting == "bf16" else 1e-5)
    assert sorted(callback.session.ledgers["train"].history) == [0, 1]
    assert sorted(callback.session.ledgers["validation"].history) == [0, 1]  # one row per epoch, also eval steps
    # report_to="none": the callback's own run, finished, holds the artifacts.
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [run.info.run_id for run in runs] == [callback.run_id]
    assert runs[0].data.tags["dq_plugins"] == "true" and runs[0].info.status == "FINISHED"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq")}
    assert {"dq/samples.parquet", "dq/issues.json", "dq/data_map.png"} <= artifacts
    # The wrapper stays after training and only drops the ids, so the Trainer can still evaluate.
    assert "idx" in inspect.signature(trainer.model.forward).parameters
    assert "eval_loss" in trainer.evaluate()


def test_report_to_mlflow_logs_into_the_trainers_single_run(tracking_uri, tmp_path):
    callback, _ = train(tmp_path, report_to="mlflow", logging_strategy="epoch")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [run.info.run_id for run in runs] == [callback.run_id]  # no second, stray run
    run = mlflow.get_run(callback.run_id)
    assert {"train_loss", "eval_loss"} <= set(run.data.metrics)  # the Trainer's own metrics
    assert any(key.startswith("dq.") for key in run.data.metrics)
    assert "num_train_epochs" in run.data.params
    client = mlflow.MlflowClient()
    assert {"dq/samples.parquet", "dq/issues.json"} <= {a.path for a in client.list_artifacts(callback.run_id, "dq")}
    issues = json.loads(open(client.download_artifacts(callback.run_id, "dq/issues.json", str(tmp_path))).read())
    assert "columns" in issues
    assert len(load_samples(callback.run_id, split="train")) == len(TRAIN)
    # The results went in before transformers' MLflowCallback ended the run: its end time comes after them.
    assert run.info.status == "FINISHED"
    written = max(m.timestamp for key in run.data.metrics if key.startswith("dq.")
                  for m in client.get_metric_history(callback.run_id, key))
    assert run.info.end_time >= written


def test_report_to_mlflow_and_a_mark_failed_rule_end_the_trainers_run_failed(tracking_uri, tmp_path):
    from dq_plugins.rules import Condition, FailRun, Rule

    rule = Rule("always", Condition("confidence", ">=", 0, aggregate="min"), then=[FailRun("mark_failed")])
    callback, _ = train(tmp_path, DataQualityCallback(rules=[rule]), report_to="mlflow", logging_strategy="epoch")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [run.info.run_id for run in runs] == [callback.run_id]
    assert runs[0].info.status == "FAILED" and runs[0].data.tags["dq.run_failed"] == "true"
    assert mlflow.active_run() is None


def test_resume_mid_epoch_continues_the_record(tracking_uri, tmp_path):
    first, _ = train(tmp_path, save_strategy="steps", save_steps=3, num_train_epochs=1)  # 4 steps per epoch
    checkpoint = tmp_path / "out" / "checkpoint-3"
    assert (checkpoint / STATE_FILE).is_file()
    callback = DataQualityCallback()
    trainer = Trainer(model=make_model(), args=make_args(tmp_path, num_train_epochs=2), train_dataset=TRAIN,
                      eval_dataset=VAL, callbacks=[callback])
    trainer.train(resume_from_checkpoint=str(checkpoint))
    ledger = callback.session.ledgers["train"]
    assert sorted(ledger.history) == [0, 1]
    # Epoch 0 joins the 3 batches recorded before the checkpoint with the one trained after it.
    assert not np.isnan(ledger.history[0]["loss"]).any()
    check_record(callback, trainer.model)
    assert first.run_id == callback.run_id  # a resumed training logs into the run it resumes (issue 16)


def test_missing_id_column_fails_at_train_start_with_the_line_that_adds_it(tracking_uri, tmp_path):
    with pytest.raises(ValueError, match=r"no column `idx`.*`train_ds = train_ds\.map\(lambda ex, i: \{'idx': i\}, "
                                         r"with_indices=True\)`"):
        train(tmp_path, train_dataset=make_dataset(64, seed=0, ids=False))
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_custom_id_and_label_columns(tracking_uri, tmp_path):
    ds = make_dataset(64, seed=0, ids=False, label_name="label").map(lambda ex, i: {"sid": i}, with_indices=True)
    val = make_dataset(24, seed=1, ids=False, label_name="label").map(lambda ex, i: {"sid": i}, with_indices=True)
    callback, trainer = train(tmp_path, callback=DataQualityCallback(id_key="sid"), train_dataset=ds,
                              eval_dataset=val, num_train_epochs=1)
    samples = load_samples(callback.run_id)
    assert sorted(samples[samples["split"] == "train"]["sample_id"]) == list(range(64))
    assert callback.session.config.label_key == "label"


def test_missing_label_column_names_the_option(tracking_uri, tmp_path):
    with pytest.raises(ValueError, match=r"no label column `target`.*Trainer drops columns"):
        train(tmp_path, callback=DataQualityCallback(label_key="target"))


def test_callback_added_after_construction_is_refused(tracking_uri, tmp_path):
    trainer = Trainer(model=make_model(), args=make_args(tmp_path), train_dataset=TRAIN, eval_dataset=VAL)
    trainer.add_callback(DataQualityCallback())
    with pytest.raises(ValueError, match=r"did not attach to the model.*callbacks=\[DataQualityCallback\(\)\]"):
        trainer.train()


def test_compute_loss_override_that_drops_the_ids_is_explained(tracking_uri, tmp_path):
    class ExplicitInputsTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            loss = F.cross_entropy(outputs.logits, inputs["labels"])
            return (loss, outputs) if return_outputs else loss

    with pytest.raises(ValueError, match=r"without `idx`.*must call `model\(\*\*inputs\)`"):
        train(tmp_path, trainer_cls=ExplicitInputsTrainer)


def test_eval_dataset_without_ids_warns_and_records_train_only(tracking_uri, tmp_path):
    with pytest.warns(UserWarning, match=r"does not record the validation split.*`eval_ds = eval_ds\.map"):
        callback, trainer = train(tmp_path, eval_dataset=make_dataset(24, seed=1, ids=False), num_train_epochs=1)
    check_record(callback, trainer.model, splits=(("train", TRAIN),))


def test_embeddings_are_the_head_input_and_land_in_the_run(tmp_path, monkeypatch):
    """The classifier's input (BERT's pooled output, hidden size 16) is captured for every sample."""
    import mlflow as _mlflow

    from dq_plugins.transformers import DataQualityCallback as Callback

    uri = f"sqlite:///{tmp_path}/emb.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    train = _emb_dataset(48)
    callback = Callback(texts=[f"text {i}" for i in range(48)])
    trainer = _emb_trainer(tmp_path, train, callback)
    trainer.train()
    ids, values = callback.session.embeddings["train"].to_numpy()
    assert ids.tolist() == list(range(48)) and values.shape == (48, 16)
    samples = load_samples(callback.run_id, tracking_uri=uri)
    assert {"outlier_score", "cluster", "x2d", "y2d", "near_duplicate_of"} <= set(samples.columns)
    client = _mlflow.MlflowClient(uri)
    paths = {a.path for a in client.list_artifacts(callback.run_id, "dq")}
    assert {"dq/embedding_map.png", "dq/embedding_map.html"} <= paths
    html = open(client.download_artifacts(callback.run_id, "dq/embedding_map.html", str(tmp_path))).read()
    assert "text 0" in html


def test_embeddings_false_captures_nothing(tmp_path, monkeypatch):
    from dq_plugins.transformers import DataQualityCallback as Callback

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/none.db")
    callback = Callback(embeddings=False)
    _emb_trainer(tmp_path, _emb_dataset(32), callback).train()
    assert callback.session.embeddings == {}


def _emb_dataset(n):
    import datasets

    generator = torch.Generator().manual_seed(0)
    return datasets.Dataset.from_dict({
        "input_ids": torch.randint(5, 100, (n, 8), generator=generator).tolist(),
        "attention_mask": [[1] * 8] * n,
        "labels": [i % 3 for i in range(n)],
        "idx": list(range(n)),
    })


def _emb_trainer(tmp_path, train, callback):
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=3))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=16,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])


def test_metadata_frame_joins_the_samples_and_is_sliced(tmp_path, monkeypatch):
    import pandas as pd

    from dq_plugins.transformers import DataQualityCallback as Callback

    uri = f"sqlite:///{tmp_path}/meta.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    frame = pd.DataFrame({"sample_id": range(48), "source": ["a" if i < 24 else "b" for i in range(48)]})
    callback = Callback(metadata=frame, embeddings=False)
    _emb_trainer(tmp_path, _emb_dataset(48), callback).train()
    samples = load_samples(callback.run_id, tracking_uri=uri)
    assert (samples["source"] == samples["sample_id"].map(lambda i: "a" if i < 24 else "b")).all()
    assert {"source=a", "source=b"} <= set(callback.result.slices["slice"])
