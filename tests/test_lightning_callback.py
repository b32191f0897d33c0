"""The Lightning adapter end to end on a tiny model, plus every user-facing error."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, WeightedRandomSampler

import dq_plugins
from conftest import BlobsDataset
from dq_plugins import load_samples
from dq_plugins.analysis.pipeline import SAMPLE_COLUMNS
from dq_plugins.analysis.embeddings import EMBEDDING_COLUMNS
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.schema import COMPUTED_COLUMNS, COMPUTED_IN
from recipes.common.models import MLPClassifier


class TinyClassifier(MLPClassifier):
    """The example MLP, ``dim -> hidden -> num_classes``, SGD at 0.1; returns {"loss", "logits"} unless
    ``return_logits`` is False (then only the loss)."""

    def __init__(self, dim: int = 8, num_classes: int = 3, return_logits: bool = True, hidden: int = 16) -> None:
        super().__init__(dim, num_classes, hidden=(hidden,), lr=0.1, optimizer="sgd", return_logits=return_logits,
                         log_val_loss=False)


def make_trainer(callback, **kwargs):
    options = dict(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, accelerator="cpu", devices=1)
    options["callbacks"] = [callback]
    options.update(kwargs)
    return pl.Trainer(**options)


def fit(callback=None, module=None, train=None, val=None, batch_size=16, shuffle=True, num_workers=0, **trainer_kwargs):
    callback = callback or DataQualityCallback()
    train = train if train is not None else BlobsDataset(96)
    loader = DataLoader(train, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)
    val_loader = DataLoader(val, batch_size=batch_size) if val is not None else None
    trainer = make_trainer(callback, **trainer_kwargs)
    trainer.fit(module or TinyClassifier(), loader, val_loader)
    return callback, trainer


def artifact_paths(run_id, path="dq"):
    client = mlflow.MlflowClient()
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_fit_logs_samples_issues_figure_and_metrics(tracking_uri):
    callback, _ = fit(val=BlobsDataset(30, seed=1))
    assert callback.run_id is not None
    samples = load_samples(callback.run_id)
    assert list(samples.columns)[: len(SAMPLE_COLUMNS)] == list(SAMPLE_COLUMNS)
    assert set(EMBEDDING_COLUMNS) <= set(samples.columns)
    assert samples["outlier_score"].between(0, 1).all() and (samples["cluster"] >= 0).all()
    train = samples[samples["split"] == "train"]
    assert sorted(train["sample_id"]) == list(range(96))  # every sample exactly once
    assert sorted(samples[samples["split"] == "validation"]["sample_id"]) == list(range(30))
    assert samples["mislabel_score"].between(0, 1).all()
    assert {"dq/samples.parquet", "dq/issues.json", "dq/data_map.png", "dq/raw", "dq/embeddings",
            "dq/embedding_map.png", "dq/embedding_map.html", "dq/class_overlap.json"} <= artifact_paths(callback.run_id)
    run = mlflow.MlflowClient().get_run(callback.run_id)
    for key in ("dq.num_label_issues", "dq.estimated_noise_rate", "dq.accuracy.train", "dq.accuracy.validation"):
        assert key in run.data.metrics
    assert run.info.status == "FINISHED"
    assert {"path": "dq/issues.json", "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])
    history = mlflow.MlflowClient().get_metric_history(callback.run_id, "dq.epoch_accuracy.train")
    assert [m.step for m in history] == [0, 1, 2]
    _check_schema(samples)


def _check_schema(samples):
    """The registry of dq_plugins.schema and a real samples.parquet agree: every boolean column is the flag
    of a registered issue type and every registered flag (with its score) is written; every column is declared."""
    flags = {c for c in samples.columns if pd.api.types.is_bool_dtype(samples[c])}
    assert flags == {t.flag_column for t in dq_plugins.issue_types()}
    for issue in dq_plugins.issue_types():
        assert pd.api.types.is_numeric_dtype(samples[issue.score_column]), issue
    assert set(samples.columns) <= COMPUTED_COLUMNS and set(samples.columns) <= set(COMPUTED_IN)
    conflicting = samples[samples["conflicting_duplicate"]]
    assert (conflicting["conflicting_duplicate_score"] > 0).all()
    assert (samples.loc[~samples["conflicting_duplicate"], "conflicting_duplicate_score"].fillna(0) == 0).all()
    assert (samples["is_near_duplicate"] == (samples["near_duplicate_of"] >= 0)).all()


def test_results_land_in_the_mlflow_logger_run(tracking_uri):
    from pytorch_lightning.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="exp", tracking_uri=tracking_uri)
    callback, _ = fit(logger=logger)
    assert callback.run_id == logger.run_id
    experiment = mlflow.get_experiment_by_name("exp")
    runs = mlflow.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert "dq/samples.parquet" in artifact_paths(logger.run_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the logger's experiment


def test_mark_failed_on_a_logger_owned_run_says_why_not_and_tags_it(tracking_uri):
    from pytorch_lightning.loggers import MLFlowLogger

    from dq_plugins.rules import Condition, FailRun, Rule

    rule = Rule("always", Condition("confidence", ">=", 0, aggregate="min"), then=[FailRun("mark_failed")])
    logger = MLFlowLogger(experiment_name="exp", tracking_uri=tracking_uri)
    with pytest.warns(RuntimeWarning, match=r"belongs to the Lightning MLFlowLogger, which sets the run's status "
                                            r"itself .* tagged dq.run_failed=true instead\. HINT: .*FailRun\('raise'\)"):
        fit(DataQualityCallback(rules=[rule]), logger=logger, max_epochs=1)
    run = mlflow.MlflowClient().get_run(logger.run_id)
    assert run.data.tags["dq.run_failed"] == "true" and run.info.status == "FINISHED"


def test_recorded_splits_options_and_version_are_in_the_run(tracking_uri):
    import dq_plugins

    val = BlobsDataset(30, seed=1)
    first, _ = fit(DataQualityCallback(run_name="a", metadata=pd.DataFrame({"sample_id": [0], "w": [1]})), val=val,
                   max_epochs=1)
    second, _ = fit(DataQualityCallback(run_name="b"), val=val, max_epochs=1)
    client = mlflow.MlflowClient()
    runs = [client.get_run(c.run_id) for c in (first, second)]
    inputs = [{i.dataset.name: i for i in run.inputs.dataset_inputs} for run in runs]
    assert sorted(inputs[0]) == ["train", "validation"]
    train = inputs[0]["train"]
    assert {t.key: t.value for t in train.tags} == {"mlflow.data.context": "train"}
    assert json.loads(train.dataset.source)["record"] == "dq/raw/train.npz"
    assert json.loads(train.dataset.profile)["num_rows"] == 96
    assert inputs[0]["train"].dataset.digest == inputs[1]["train"].dataset.digest  # same data version
    assert inputs[0]["train"].dataset.digest != inputs[0]["validation"].dataset.digest
    params = runs[0].data.params
    assert params["dq.id_key"] == "idx" and params["dq.run_name"] == "a" and params["dq.logits_module"] == "None"
    assert params["dq.metadata"] == "DataFrame(1 rows; columns ['sample_id', 'w'])"
    assert runs[0].data.tags["dq_plugins.version"] == dq_plugins.__version__


def test_the_experiment_opens_on_its_runs_unless_the_user_chose_a_view(tracking_uri):
    fit(DataQualityCallback(experiment_name="fresh"), max_epochs=1)
    assert mlflow.get_experiment_by_name("fresh").tags["mlflow.experimentKind"] == "custom_model_development"
    mine = mlflow.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
    fit(DataQualityCallback(experiment_name="mine"), max_epochs=1)
    assert mlflow.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"


def test_logits_module_hook_reads_logits_when_the_step_returns_only_the_loss(tracking_uri):
    callback, _ = fit(DataQualityCallback(logits_module="head"), module=TinyClassifier(return_logits=False))
    samples = load_samples(callback.run_id, split="train")
    assert len(samples) == 96 and samples["aum"].notna().all()


def test_recorded_values_match_a_recomputation_with_the_final_model(tracking_uri):
    # lr 0 keeps the model fixed, so every epoch records the same values as a fresh forward pass
    class Frozen(TinyClassifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    module = Frozen()
    data = BlobsDataset(40)
    callback, _ = fit(module=module, train=data, batch_size=16, accumulate_grad_batches=2)
    history = callback.session.ledgers["train"].to_history()
    with torch.no_grad():
        logits = module(data.inputs)
    expected_loss = F.cross_entropy(logits, data.labels, reduction="none").numpy()
    for epoch_row in history.fields["loss"]:
        np.testing.assert_allclose(epoch_row, expected_loss, rtol=1e-5)
    np.testing.assert_array_equal(history.labels, data.labels.numpy())


def test_shuffling_and_workers_keep_ids_aligned_with_labels(tracking_uri):
    data = BlobsDataset(70)  # 70 = 4 full batches of 16 + a partial one
    callback, _ = fit(train=data, num_workers=2, shuffle=True)
    samples = load_samples(callback.run_id, split="train")
    assert len(samples) == 70
    assert (samples["label"].to_numpy() == samples["sample_id"].to_numpy() % 3).all()


def test_bf16_logits(tracking_uri):
    callback, _ = fit(precision="bf16-mixed")
    samples = load_samples(callback.run_id, split="train")
    assert len(samples) == 96 and samples["confidence"].notna().all()


def test_limit_train_batches_records_only_the_batches_seen(tracking_uri):
    callback, _ = fit(limit_train_batches=2, shuffle=False)
    samples = load_samples(callback.run_id, split="train")
    assert sorted(samples["sample_id"]) == list(range(32))


def test_sampler_with_replacement_does_not_raise(tracking_uri):
    data = BlobsDataset(48)
    sampler = WeightedRandomSampler(torch.ones(48), num_samples=96, replacement=True)
    callback = DataQualityCallback()
    trainer = make_trainer(callback, max_epochs=2)
    trainer.fit(TinyClassifier(), DataLoader(data, batch_size=16, sampler=sampler))
    samples = load_samples(callback.run_id, split="train")
    assert samples["sample_id"].is_unique
    assert samples["correctness"].between(0, 1).all()


def test_resume_from_checkpoint_neither_loses_nor_repeats_an_epoch(tracking_uri, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    data, val = BlobsDataset(48), BlobsDataset(20, seed=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = DataQualityCallback()
    make_trainer(first, max_epochs=2, callbacks=[first, checkpoint], enable_checkpointing=True).fit(
        TinyClassifier(), DataLoader(data, batch_size=16), DataLoader(val, batch_size=16)
    )
    second = DataQualityCallback()
    make_trainer(second, max_epochs=4, enable_checkpointing=True, callbacks=[second, ModelCheckpoint(dirpath=tmp_path / "c2")]).fit(
        TinyClassifier(), DataLoader(data, batch_size=16), DataLoader(val, batch_size=16),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    for split in ("train", "validation"):
        assert second.session.ledgers[split].to_history().epochs.tolist() == [0, 1, 2, 3]


def test_two_callbacks_keep_their_records_apart_in_one_checkpoint(tracking_uri, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    data, val = BlobsDataset(48), BlobsDataset(20, seed=1)

    def pair():
        return DataQualityCallback(run_name="both"), DataQualityCallback(run_name="train_only", record_validation=False)

    first = pair()
    assert first[0].state_key != first[1].state_key
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    make_trainer(None, max_epochs=2, callbacks=[*first, checkpoint], enable_checkpointing=True).fit(
        TinyClassifier(), DataLoader(data, batch_size=16), DataLoader(val, batch_size=16)
    )
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    assert {first[0].state_key, first[1].state_key} <= set(saved)
    second = pair()
    make_trainer(None, max_epochs=3, callbacks=[*second, ModelCheckpoint(dirpath=tmp_path / "c2")],
                 enable_checkpointing=True).fit(
        TinyClassifier(), DataLoader(data, batch_size=16), DataLoader(val, batch_size=16),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert sorted(second[0].session.ledgers) == ["train", "validation"]
    assert sorted(second[1].session.ledgers) == ["train"]
    for callback in second:
        assert callback.session.ledgers["train"].to_history().epochs.tolist() == [0, 1, 2]


def test_a_later_batch_with_other_classes_fails_the_fit_with_its_message(tracking_uri):
    # batches after a split's first are recorded in groups (DEFERRED_BATCHES): a bad one still fails the fit, by name
    class WiderFromBatchThree(TinyClassifier):
        def training_step(self, batch, batch_idx):
            out = self._step(batch)
            logits = out["logits"]
            if batch_idx >= 3:
                logits = torch.cat([logits, logits[:, :1]], dim=1)
            return {"loss": out["loss"], "logits": logits}

    with pytest.raises(ValueError, match="Expected logits with 3 classes as in earlier batches of the train split, but got 4"):
        fit(module=WiderFromBatchThree(), max_epochs=1)


def test_a_checkpoint_inside_an_epoch_holds_every_batch_before_it(tracking_uri):
    from dq_plugins.adapters.lightning import DEFERRED_BATCHES

    states = []

    class SaveAtBatch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 4:
                states.append(dq.state_dict())

    dq = DataQualityCallback()
    assert 5 < DEFERRED_BATCHES  # the five batches are not recorded yet when the checkpoint is taken
    trainer = make_trainer(dq, max_epochs=1, callbacks=[dq, SaveAtBatch()])
    trainer.fit(TinyClassifier(), DataLoader(BlobsDataset(160), batch_size=16, shuffle=False))
    counts = states[0]["ledgers"]["train"]["count"]
    assert counts[:80].tolist() == [1] * 80 and int(counts[80:].sum()) == 0


def test_nan_logits_are_recorded_as_missing_without_crashing(tracking_uri):
    class NanForSampleZero(TinyClassifier):
        def training_step(self, batch, batch_idx):
            out = self._step(batch)
            poisoned = torch.where((batch["idx"] == 0).unsqueeze(1), torch.nan, out["logits"].detach())
            return {"loss": out["loss"], "logits": poisoned}

    with pytest.warns(RuntimeWarning, match="NaN or inf logits"):
        callback, _ = fit(module=NanForSampleZero(), shuffle=False)
    samples = load_samples(callback.run_id, split="train")
    assert 0 not in set(samples["sample_id"])  # never recorded with finite logits
    assert len(samples) == 95 and samples["aum"].notna().all()


def test_an_analysis_error_warns_and_keeps_the_raw_record(tracking_uri, monkeypatch):
    import dq_plugins.analysis.pipeline as analysis

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(analysis, "analyze", broken)
    with pytest.warns(RuntimeWarning, match="analysis failed.*raw dynamics were saved"):
        callback, trainer = fit()
    assert trainer.state.finished
    raw = {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq/raw")}
    assert {"dq/raw/train.npz", "dq/raw/analysis_error.txt"} <= raw


def test_unreachable_tracking_server_keeps_results_locally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    callback = DataQualityCallback(tracking_uri="http://127.0.0.1:9", fallback_dir=str(tmp_path / "kept"))
    with pytest.warns(RuntimeWarning, match="could not write to MLflow.*kept in"):
        _, trainer = fit(callback, max_epochs=1)
    assert trainer.state.finished
    kept = list((tmp_path / "kept").rglob("samples.parquet"))
    assert len(kept) == 1 and len(pd.read_parquet(kept[0])) == 96


# ---------------------------------------------------------------------- bad input
class Renamed(BlobsDataset):
    def __init__(self, drop: str, **kwargs):
        super().__init__(**kwargs)
        self.drop = drop

    def __getitem__(self, index):
        item = super().__getitem__(index)
        del item[self.drop]
        return item


class BadLogits(TinyClassifier):
    def __init__(self, transform):
        super().__init__()
        self.transform = transform

    def training_step(self, batch, batch_idx):
        out = self._step(batch)
        return {"loss": out["loss"], "logits": self.transform(out["logits"])}


class LabelFreeLoss(TinyClassifier):
    """A loss that ignores labels, so out-of-range labels reach the callback instead of failing in the loss."""

    def training_step(self, batch, batch_idx):
        logits = self(batch["inputs"])
        return {"loss": logits.pow(2).mean(), "logits": logits}


class ShiftedLabels(BlobsDataset):
    def __getitem__(self, index):
        item = super().__getitem__(index)
        item["labels"] = item["labels"] + 5
        return item


class ShiftedIds(BlobsDataset):
    def __getitem__(self, index):
        item = super().__getitem__(index)
        item["idx"] = index + 1000
        return item


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(train=Renamed("idx", n=32)), r"no key `idx`.*with_ids"),
        (dict(train=Renamed("idx", n=32), callback=DataQualityCallback(label_key="target")), r"no key `idx`"),
        (dict(callback=DataQualityCallback(label_key="target")), r"no key `target`.*label_key="),
        (dict(module=TinyClassifier(return_logits=False)), r"returned \['loss'\].*logits_module="),
        (dict(module=BadLogits(lambda x: x.unsqueeze(1))), r"shape \(batch, num_classes\)"),
        (dict(train=ShiftedLabels(32), module=LabelFreeLoss()), r"Label [5-7] under `labels` is outside the 3 classes"),
        (dict(train=ShiftedIds(32)), r"Sample id 10\d\d .*outside the known range 0..31.*sample_ids="),
        (dict(callback=DataQualityCallback(logits_module="nope")), r"`logits_module='nope'` is not a submodule.*backbone"),
    ],
)
def test_bad_input_fails_early_with_a_message_naming_the_fix(tracking_uri, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(max_epochs=1, **kwargs)


def test_tuple_batches_point_to_with_ids(tracking_uri):
    data = torch.utils.data.TensorDataset(torch.randn(16, 8), torch.arange(16) % 3)
    callback = DataQualityCallback()

    class TupleModule(TinyClassifier):
        def training_step(self, batch, batch_idx):
            logits = self(batch[0])
            return {"loss": F.cross_entropy(logits, batch[1]), "logits": logits}

    with pytest.raises(ValueError, match=r"batch of type list.*with_ids"):
        make_trainer(callback, max_epochs=1).fit(TupleModule(), DataLoader(data, batch_size=8))


def test_validation_without_logits_warns_and_training_goes_on(tracking_uri):
    class NoValLogits(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            return None

    with pytest.warns(UserWarning, match="validation_step` returned no logits"):
        callback, _ = fit(module=NoValLogits(), val=BlobsDataset(16, seed=2))
    assert set(load_samples(callback.run_id)["split"]) == {"train"}
