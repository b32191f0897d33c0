"""Kill a training process with SIGKILL in the middle of an epoch, resume it from its last checkpoint
in a new process, and check that the record neither loses nor repeats an epoch.

The training runs in a subprocess: this file is also its script (``python tests/test_resume_kill.py
lightning|hf WORKDIR TRACKING_URI [--hang-at STEP] [--resume CHECKPOINT]``). ``--hang-at`` makes the
process stop inside the epoch, before training step STEP, once the checkpoint of an earlier step has
been written completely, and write a marker file; the test then kills it with SIGKILL. The hang only
fixes the moment of the kill (this machine's load would make a timed kill land anywhere): the
process dies as it would on a crash, with batches trained and recorded after its last checkpoint.

Each framework's resumed record is compared with an uninterrupted run of the same training
(same seed and data order), trained in the test process: epoch by epoch, the per-sample record must
be the same, so the batches recorded before the checkpoint are kept once and the batches lost with
the killed process are recorded once by the resumed one.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SCRIPT = Path(__file__).resolve()
KILLED_MARKER = "hanging"
"""File the hanging process writes when it stops (its content: the global step)."""


# ---------------------------------------------------------------------------------- training
class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader that Lightning resumes in the middle of an epoch (it has ``state_dict`` and
    ``load_state_dict``): it counts the batches it handed out this epoch, and after
    ``load_state_dict`` its next epoch skips that many. A plain DataLoader is not resumable: Lightning
    then replays the epoch's first batches and ends the epoch early (its "dataloader is not
    resumable" warning), so the samples of the last batches miss that epoch. Lightning does not
    prefetch from a loader with a length, so the count is the number of batches trained.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._skip = 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for index, batch in enumerate(super().__iter__()):
            if index >= skip:
                self._yielded += 1
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"yielded": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = state["yielded"]


def train_lightning(workdir: Path, tracking_uri: str, hang_at: int | None = None, resume: str | None = None):
    """3 epochs of 6 steps (96 blobs, batch 16), a checkpoint every 4 steps: steps 4, 8 (mid epoch 1), 12, 16."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from conftest import BlobsDataset
    from dq_plugins.lightning import DataQualityCallback
    from test_lightning_callback import TinyClassifier

    class HangAt(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == hang_at:  # the checkpoint of an earlier step is complete
                (workdir / KILLED_MARKER).write_text(str(trainer.global_step))
                time.sleep(600)

    pl.seed_everything(0, verbose=False)
    callback = DataQualityCallback(tracking_uri=tracking_uri)
    checkpoints = ModelCheckpoint(dirpath=workdir / "ckpt", filename="{step}", every_n_train_steps=4, save_top_k=-1)
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=workdir,
        callbacks=[callback, checkpoints, *([HangAt()] if hang_at is not None else [])],
    )
    train = ResumableLoader(BlobsDataset(96), batch_size=16, shuffle=False)
    val = DataLoader(BlobsDataset(20, seed=1), batch_size=16)
    trainer.fit(TinyClassifier(), train, val, ckpt_path=resume)
    return callback


def train_hf(workdir: Path, tracking_uri: str, hang_at: int | None = None, resume: str | None = None,
             tokens: bool = False):
    """3 epochs of 4 steps (64 samples, batch 16), a checkpoint every 3 steps: steps 3, 6 (mid epoch 1), 9, 12.
    ``tokens``: token classification (issue 14) on a tiny random BERT instead of sequence classification."""
    from transformers import BertForTokenClassification, Trainer, TrainerCallback, TrainingArguments

    from dq_plugins.transformers import DataQualityCallback
    from test_transformers_callback import make_dataset, make_model
    from test_transformers_tasks import NUM_TAGS, bert_config, token_dataset

    if tokens:
        model, train, val = BertForTokenClassification(bert_config(NUM_TAGS)), token_dataset(64, 0), token_dataset(24, 1)
    else:
        model, train, val = make_model(), make_dataset(64, seed=0), make_dataset(24, seed=1)

    class HangAt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == hang_at:  # on_save of the earlier steps has returned
                (workdir / KILLED_MARKER).write_text(str(state.global_step))
                time.sleep(600)

    callback = DataQualityCallback(tracking_uri=tracking_uri)
    args = TrainingArguments(
        output_dir=str(workdir / "out"), num_train_epochs=3, per_device_train_batch_size=16,
        per_device_eval_batch_size=16, learning_rate=0.05 if tokens else 0.5, optim="sgd", use_cpu=True,
        report_to="none",
        save_strategy="steps", save_steps=3, eval_strategy="epoch", disable_tqdm=True, logging_strategy="no",
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[callback, *([HangAt()] if hang_at is not None else [])])
    trainer.train(resume_from_checkpoint=resume)
    return callback


TRAIN = {"lightning": train_lightning, "hf": train_hf, "hf-token": functools.partial(train_hf, tokens=True)}


# ---------------------------------------------------------------------------------- the tests
def _run_script(framework: str, workdir: Path, uri: str, *options: str) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    # tests/ for the script's imports, the root for recipes.common, then the caller's path (a worktree first)
    path = os.pathsep.join(filter(None, [str(SCRIPT.parent), str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    log = open(workdir / f"log{len(list(workdir.glob('log*')))}.txt", "w")
    return subprocess.Popen([sys.executable, str(SCRIPT), framework, str(workdir), uri, *options], cwd=workdir,
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _log_tail(workdir: Path) -> str:
    return "\n".join(path.read_text()[-3000:] for path in sorted(workdir.glob("log*.txt")))


def kill_in_epoch(framework: str, workdir: Path, uri: str, hang_at: int, timeout: float = 240) -> int:
    """Start training, wait until it stands before step ``hang_at``, SIGKILL it; return the step it reached."""
    proc = _run_script(framework, workdir, uri, "--hang-at", str(hang_at))
    marker, deadline = workdir / KILLED_MARKER, time.monotonic() + timeout
    try:
        while not marker.exists():
            assert proc.poll() is None, f"training ended (exit {proc.returncode}) before step {hang_at}:\n{_log_tail(workdir)}"
            assert time.monotonic() < deadline, f"no step {hang_at} after {timeout} s:\n{_log_tail(workdir)}"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return int(marker.read_text())


def resume(framework: str, workdir: Path, uri: str, checkpoint: Path) -> str:
    """Resume from ``checkpoint`` in a new process; return the run id of the resumed training."""
    proc = _run_script(framework, workdir, uri, "--resume", str(checkpoint))
    assert proc.wait(timeout=300) == 0, _log_tail(workdir)
    return (workdir / "run_id").read_text()


def raw_record(client, run_id: str, split: str, dst: Path):
    from dq_plugins.raw_record import load_history

    return load_history(client.download_artifacts(run_id, f"dq/raw/{split}.npz", str(dst)))


def check_resumed_record(uri: str, run_id: str, reference_uri: str, reference_id: str, sizes: dict, tmp_path: Path):
    """Every epoch once, every sample in every epoch, and the same record as the uninterrupted run."""
    import mlflow

    from dq_plugins import load_samples
    from dq_plugins.recording.ledger import FLOAT_FIELDS

    client, reference = mlflow.MlflowClient(uri), mlflow.MlflowClient(reference_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # the resumed training logs into the run the killed one opened: one run, no run left RUNNING (issue 16)
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run_id]
    for split, size in sizes.items():
        got = raw_record(client, run_id, split, tmp_path / "resumed")
        want = raw_record(reference, reference_id, split, tmp_path / "reference")
        assert got.epochs.tolist() == [0, 1, 2], split  # no epoch lost, none counted twice
        assert got.labels.shape == (size,) and not np.isnan(got.fields["loss"]).any(), split  # each sample, each epoch
        for name in FLOAT_FIELDS:
            np.testing.assert_allclose(got.fields[name], want.fields[name], rtol=1e-4, atol=1e-5, err_msg=f"{split} {name}")
        np.testing.assert_allclose(got.mean_probs, want.mean_probs, rtol=1e-4, atol=1e-5, err_msg=split)
        steps = [m.step for m in client.get_metric_history(run_id, f"dq.epoch_accuracy.{split}")]
        assert sorted(steps) == [0, 1, 2], split
    samples = load_samples(run_id, tracking_uri=uri).sort_values(["split", "sample_id"], ignore_index=True)
    expected = load_samples(reference_id, tracking_uri=reference_uri).sort_values(["split", "sample_id"], ignore_index=True)
    assert samples.groupby("split")["sample_id"].apply(list).to_dict() == {s: list(range(n)) for s, n in sizes.items()}
    for column in ("confidence", "variability", "aum", "el2n", "correctness", "forgetting_events", "mislabel_score"):
        np.testing.assert_allclose(samples[column], expected[column], rtol=1e-4, atol=1e-5, err_msg=column)


def uninterrupted(framework: str, workdir: Path, uri: str) -> str:
    """The same training without a kill, in this process (one thread, as the script runs); its run id."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return TRAIN[framework](workdir, uri).run_id
    finally:
        torch.set_num_threads(threads)


def test_lightning_killed_mid_epoch_resumes_from_its_checkpoint(tracking_uri, tmp_path):
    uri = f"sqlite:///{tmp_path}/crash.db"
    reached = kill_in_epoch("lightning", tmp_path / "crash", uri, hang_at=10)
    checkpoints = sorted((tmp_path / "crash" / "ckpt").glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
    assert [p.name for p in checkpoints] == ["step=4.ckpt", "step=8.ckpt"]
    assert reached == 10  # killed in epoch 1 (steps 6-11), two trained batches after its last checkpoint
    run_id = resume("lightning", tmp_path / "crash", uri, checkpoints[-1])
    check_resumed_record(uri, run_id, tracking_uri, uninterrupted("lightning", tmp_path / "reference", tracking_uri),
                         {"train": 96, "validation": 20}, tmp_path)


def test_hf_killed_mid_epoch_resumes_from_its_checkpoint(tracking_uri, tmp_path):
    from transformers.trainer_utils import get_last_checkpoint

    from dq_plugins.transformers import STATE_FILE

    uri = f"sqlite:///{tmp_path}/crash.db"
    reached = kill_in_epoch("hf", tmp_path / "crash", uri, hang_at=7)
    checkpoint = Path(get_last_checkpoint(str(tmp_path / "crash" / "out")))
    assert checkpoint.name == "checkpoint-6" and (checkpoint / STATE_FILE).is_file()
    assert reached == 7  # killed in epoch 1 (steps 5-8), one trained batch after its last checkpoint
    run_id = resume("hf", tmp_path / "crash", uri, checkpoint)
    check_resumed_record(uri, run_id, tracking_uri, uninterrupted("hf", tmp_path / "reference", tracking_uri),
                         {"train": 64, "validation": 24}, tmp_path)


def test_hf_token_task_killed_mid_epoch_resumes_from_its_checkpoint(tracking_uri, tmp_path):
    """Issue 14: a token-classification record survives a SIGKILL as the single-label one does."""
    import mlflow
    from transformers.trainer_utils import get_last_checkpoint

    from dq_plugins.raw_record import load_task_record

    uri = f"sqlite:///{tmp_path}/crash.db"
    assert kill_in_epoch("hf-token", tmp_path / "crash", uri, hang_at=7) == 7
    checkpoint = Path(get_last_checkpoint(str(tmp_path / "crash" / "out")))
    assert checkpoint.name == "checkpoint-6"
    run_id = resume("hf-token", tmp_path / "crash", uri, checkpoint)
    reference_id = uninterrupted("hf-token", tmp_path / "reference", tracking_uri)
    client, reference = mlflow.MlflowClient(uri), mlflow.MlflowClient(tracking_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    for split in ("train", "validation"):
        task, got = load_task_record(client.download_artifacts(run_id, f"dq/raw/{split}.npz", str(tmp_path / "a")))
        _, want = load_task_record(reference.download_artifacts(reference_id, f"dq/raw/{split}.npz", str(tmp_path / "b")))
        assert task == "token_classification" and got["epochs"].tolist() == [0, 1, 2], split
        for name in ("labels", "pred"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{split} {name}")
        for name in ("mean_probs", "accuracy", *(["early_probs"] if split == "train" else [])):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{split} {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("framework", choices=sorted(TRAIN))
    parser.add_argument("workdir", type=Path)
    parser.add_argument("tracking_uri")
    parser.add_argument("--hang-at", type=int, default=None)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    callback = TRAIN[args.framework](args.workdir, args.tracking_uri, args.hang_at, args.resume)
    (args.workdir / "run_id").write_text(callback.run_id)


if __name__ == "__main__":
    main()
