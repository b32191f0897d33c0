"""Issue 16 (Reliability) through the Hugging Face Trainer: colliding ids, runs left RUNNING."""

from __future__ import annotations

import mlflow
import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")

from dq_plugins import with_ids  # noqa: E402
from dq_plugins.transformers import DataQualityCallback  # noqa: E402
from test_transformers_callback import make_dataset, train  # noqa: E402


def test_concatenated_datasets_with_colliding_ids_fail_at_train_start(tracking_uri, tmp_path):
    train_ds = datasets.concatenate_datasets([make_dataset(32, seed=0), make_dataset(32, seed=2)])  # same labels
    with pytest.raises(ValueError, match=r"64 rows but only 32 distinct sample ids.*HINT: .*with_ids\(b, offset=len\(a\)\)"):
        train(tmp_path, train_dataset=train_ds)


def test_an_id_offset_keeps_concatenated_datasets_apart(tracking_uri, tmp_path):
    a, b = make_dataset(32, seed=0, ids=False), make_dataset(32, seed=2, ids=False)
    train_ds = datasets.concatenate_datasets([with_ids(a), with_ids(b, offset=len(a))])
    assert train_ds["idx"] == list(range(64))
    callback, _ = train(tmp_path, train_dataset=train_ds, num_train_epochs=1)
    assert sorted(callback.result.samples.query("split == 'train'")["sample_id"]) == list(range(64))


def test_an_error_in_the_first_batch_ends_the_run_failed(tracking_uri, tmp_path):
    from transformers import Trainer

    class DropsIds(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            inputs = {k: v for k, v in inputs.items() if k != "idx"}
            return super().compute_loss(model, inputs, *args, **kwargs)

    callback = DataQualityCallback()
    with pytest.raises(ValueError, match="without `idx`"):
        train(tmp_path, callback, trainer_cls=DropsIds)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [run.info.status for run in runs] == ["FAILED"]


def test_a_resume_elsewhere_recovers_the_epochs_from_the_runs_raw_record(tracking_uri, tmp_path):
    """Issue 13: the checkpoint only points to the per-epoch files; where they are missing (another machine, or
    removed after the upload), the epochs recorded before come from the run's ``dq/raw/<split>.npz``."""
    import numpy as np
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from dq_plugins.raw_record import load_history
    from test_transformers_callback import make_args, make_model, VAL, TRAIN

    history = tmp_path / "history"
    first = DataQualityCallback(history_dir=str(history))
    Trainer(model=make_model(), args=make_args(tmp_path, save_strategy="epoch"), train_dataset=TRAIN,
            eval_dataset=VAL, callbacks=[first]).train()
    checkpoint = get_last_checkpoint(str(tmp_path / "out"))
    # once the raw record is in the run, the epoch files are removed: like another machine, the resume has the
    # checkpoint and the MLflow run only
    assert not any(history.rglob("epoch_*.npz"))

    second = DataQualityCallback(history_dir=str(tmp_path / "elsewhere"))
    Trainer(model=make_model(), args=make_args(tmp_path, save_strategy="epoch", num_train_epochs=3),
            train_dataset=TRAIN, eval_dataset=VAL, callbacks=[second]).train(resume_from_checkpoint=checkpoint)
    assert second.run_id == first.run_id  # the resumed fit logs into the same run
    client = mlflow.MlflowClient()
    record = load_history(client.download_artifacts(first.run_id, "dq/raw/train.npz", str(tmp_path / "raw")))
    assert record.epochs.tolist() == [0, 1, 2]
    assert not np.isnan(record.fields["loss"]).any()  # every sample in every epoch, the first two from the run
