"""DDP on CPU (gloo, 2 processes): the record is gathered across ranks, deduplicated by id, and
matches a one-process run with the same global batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dq_plugins.raw_record import load_fingerprints
from dq_plugins.recording.ledger import SplitLedger
from dq_plugins.schema import COPY_COLUMNS, EMBEDDING_COLUMNS

SCRIPT = Path(__file__).parent / "ddp" / "lightning_run.py"


def run_script(tmp_path: Path, devices: int, tracking_uri: str, *options: str, script: Path = SCRIPT) -> pd.DataFrame:
    out = tmp_path / f"samples_{devices}{''.join(options)}.parquet"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(out), str(devices), tracking_uri, *options],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pd.read_parquet(out).sort_values(["split", "sample_id"]).reset_index(drop=True)


def test_lightning_ddp_matches_one_process(tmp_path, tracking_uri):
    single = run_script(tmp_path, 1, tracking_uri)
    ddp = run_script(tmp_path, 2, tracking_uri)
    assert len(ddp) == len(single) == 96 + 32
    assert not ddp.duplicated(["split", "sample_id"]).any()
    assert ddp["latency_ms"].notna().all()  # every sample was timed on some rank; the totals are reduced on rank 0
    pd.testing.assert_frame_equal(ddp[["split", "sample_id", "label"]], single[["split", "sample_id", "label"]])
    for column in ("confidence", "variability", "aum", "el2n", "correctness"):
        np.testing.assert_allclose(ddp[column], single[column], rtol=1e-3, atol=1e-4, err_msg=column)
    # the embedding and input-copy columns: from the kNN graphs the two ranks searched (dq.knn_ranks), the same as
    # one process's
    for column in (*EMBEDDING_COLUMNS, *COPY_COLUMNS):
        np.testing.assert_allclose(ddp[column], single[column], rtol=1e-3, atol=1e-4, err_msg=column)
    # one run per training job, written by rank 0 only
    run_ids = {d: Path(str(tmp_path / f"samples_{d}.parquet.run_id")).read_text() for d in (1, 2)}
    assert len(set(run_ids.values())) == 2
    for devices, run_id in run_ids.items():
        paths = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "dq")}
        assert "dq/samples.parquet" in paths
        metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
        assert metrics["dq.knn_ranks"] == metrics["dq.knn_ranks.validation"] == devices
    # the input fingerprints of each rank's host table, gathered: every id, the same hash as one process
    prints = [load_fingerprints(mlflow.artifacts.download_artifacts(
        run_id=Path(str(tmp_path / f"samples_{d}.parquet.run_id")).read_text(),
        artifact_path="dq/fingerprints/train.npz", dst_path=str(tmp_path / f"prints_{d}"))) for d in (1, 2)]
    assert prints[1][0].tolist() == prints[0][0].tolist() == list(range(96))
    np.testing.assert_array_equal(prints[1][1], prints[0][1])
    np.testing.assert_allclose(prints[1][2], prints[0][2], rtol=1e-5, atol=1e-5)
    # sparse ids (10**12 + 7k, one slot each): the ranks all-reduce by slot, the table keeps the ids
    sparse = run_script(tmp_path, 2, tracking_uri, "sparse")
    assert sparse["sample_id"].min() == 10**12 and ((sparse["sample_id"] - 10**12) % 7 == 0).all()
    sparse["sample_id"] = (sparse["sample_id"] - 10**12) // 7
    sparse = sparse.sort_values(["split", "sample_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(sparse[["split", "sample_id", "label"]], single[["split", "sample_id", "label"]])
    for column in ("confidence", "variability", "aum", "el2n", "correctness"):
        np.testing.assert_allclose(sparse[column], single[column], rtol=1e-3, atol=1e-4, err_msg=column)


HF_SCRIPT = Path(__file__).parent / "ddp" / "hf_run.py"
HF_SCORES = ("confidence", "variability", "aum", "el2n", "correctness", "forgetting_events", "mislabel_score",
             "outlier_score", "neighbor_disagreement", "x2d", "y2d")


def run_hf(tmp_path: Path, processes: int, task: str = "single_label") -> tuple[pd.DataFrame, list]:
    """Run tests/ddp/hf_run.py on ``processes`` processes against its own sqlite store; (samples, runs)."""
    out = tmp_path / f"hf_{task}_{processes}.parquet"
    uri = f"sqlite:///{tmp_path}/hf_{task}_{processes}.db"
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]), "OMP_NUM_THREADS": "1",
           "DQ_PLUGINS_PROJECTION": "pca"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, *launcher, str(HF_SCRIPT), str(out), uri, task], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()]
    )
    assert [run.info.run_id for run in runs] == [Path(f"{out}.run_id").read_text()]
    return pd.read_parquet(out).sort_values(["split", "sample_id"]).reset_index(drop=True), runs


def test_hf_trainer_under_torchrun_matches_one_process(tmp_path):
    """The HF Trainer under ``torchrun --nproc_per_node 2`` (gloo, CPU) against one process.

    Both runs train on the same global batches in the same order: the Trainer's sampler is seeded
    (``seed=0``) identically in both, and accelerate hands rank r the batches r, r + 2, ... of it, with 8
    samples per device on two processes and 16 on one. So the two records must be equal, not only
    alike: every score, including the embedding scores of the post-training pass (each rank embeds its
    own shard; the rows are gathered), within float tolerance. ``latency_ms`` is a timing and is not
    compared. One MLflow run per job, written by rank 0, holds the results.
    """
    single, _ = run_hf(tmp_path, 1)
    ddp, runs = run_hf(tmp_path, 2)
    counts = ddp.groupby("split")["sample_id"].agg(["count", "nunique", "min", "max"])
    assert counts.to_dict("index") == {"train": {"count": 64, "nunique": 64, "min": 0, "max": 63},
                                       "validation": {"count": 24, "nunique": 24, "min": 0, "max": 23}}
    pd.testing.assert_frame_equal(ddp[["split", "sample_id", "label", "pred", "is_label_issue"]],
                                  single[["split", "sample_id", "label", "pred", "is_label_issue"]])
    for column in HF_SCORES:
        np.testing.assert_allclose(ddp[column], single[column], rtol=1e-4, atol=1e-5, err_msg=column)
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.tags["dq_plugins"] == "true"
    assert run.data.metrics["dq.num_label_issues"] == single["is_label_issue"][single["split"] == "train"].sum()
    assert run.data.metrics["dq.num_samples.train"] == 64
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/hf_single_label_2.db")
    assert {"dq/samples.parquet", "dq/issues.json", "dq/raw"} <= {a.path for a in client.list_artifacts(run.info.run_id, "dq")}


def test_hf_token_classification_under_torchrun_matches_one_process(tmp_path):
    """Issue 14 under torchrun: a token classification BERT on 2 gloo ranks and on one process (same global
    batches, as above; learning rate 0, see tests/ddp/hf_run.py): the per-token record is reduced over ranks,
    rank 0 analyses and publishes."""
    read = lambda processes: pd.read_parquet(tmp_path / f"hf_tokens_{processes}.parquet.tokens").sort_values(
        ["split", "sample_id", "token_index"]).reset_index(drop=True)
    single, _ = run_hf(tmp_path, 1, "tokens")
    ddp, runs = run_hf(tmp_path, 2, "tokens")
    one, two = read(1), read(2)
    assert len(two) == len(one) > 0 and not two.duplicated(["split", "sample_id", "token_index"]).any()
    pd.testing.assert_frame_equal(two[["split", "sample_id", "token_index", "label", "pred"]],
                                  one[["split", "sample_id", "token_index", "label", "pred"]])
    np.testing.assert_allclose(two["mislabel_score"], one["mislabel_score"], rtol=1e-4, atol=1e-5)
    assert len(ddp) == len(single) == 64 + 24
    (run,) = runs
    assert run.data.tags["dq.task"] == "token_classification" and run.info.status == "FINISHED"
    assert run.data.metrics["dq.num_token_label_issues"] == one.loc[one["split"] == "train", "is_label_issue"].sum()


def _ledger_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ledger = SplitLedger(capacity=4, num_classes=2)
    # rank 0 sees ids 0, 2 and (padding) 0 again; rank 1 sees 1, 3
    ids = torch.tensor([0, 2, 0]) if rank == 0 else torch.tensor([1, 3])
    margins = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
    logits = torch.tensor([[margins[i], 0.0] for i in ids.tolist()])
    ledger.record(ids, torch.zeros(len(ids), dtype=torch.int64), logits, epoch=0)
    ledger.close_epoch()
    ledger.record(ids, torch.zeros(len(ids), dtype=torch.int64), logits, epoch=1)
    history = ledger.to_history()
    if rank == 0:
        np.savez(out_file, margin=history.fields["margin"], mean_probs=history.mean_probs, labels=history.labels)
    dist.destroy_process_group()


def test_ledger_reduces_across_ranks_and_dedups_padding(tmp_path):
    out = str(tmp_path / "ledger.npz")
    mp.spawn(_ledger_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    result = np.load(out)
    np.testing.assert_allclose(result["margin"], [[1, 2, 3, 4], [1, 2, 3, 4]])
    assert result["labels"].tolist() == [0, 0, 0, 0]
    expected_p0 = 1 / (1 + np.exp(-np.array([1.0, 2.0, 3.0, 4.0])))
    np.testing.assert_allclose(result["mean_probs"][:, 0], expected_p0, rtol=1e-5)  # not double counted


def _resume_worker(rank: int, world: int, init_file: str, out_file: str, interrupted: bool) -> None:
    """Two ranks, one epoch of 8 ids in two halves; ``interrupted``: a checkpoint after the first half
    (saved by rank 0 only, as the frameworks do), then fresh ledgers restored from it on every rank."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    halves = [torch.tensor([0, 2]) + 4 * h + rank for h in range(2)]  # rank 0: 0 2 | 4 6, rank 1: 1 3 | 5 7
    ledger = SplitLedger(capacity=8, num_classes=2)
    ledger.early_epochs = 1

    def record(ledger, ids, epoch):
        logits = torch.stack([ids.float() / 4, -ids.float() / 8], dim=1)
        ledger.record(ids, (ids % 2).long(), logits, epoch)

    record(ledger, halves[0], 0)
    if interrupted:
        state = ledger.state_dict()  # collective; then "rank 0 writes the file" and every process restarts
        saved = [state if rank == 0 else None]
        dist.broadcast_object_list(saved, src=0)
        ledger = SplitLedger.from_state_dict(saved[0])
        ledger.localize_for_rank()
    record(ledger, halves[1], 0)
    record(ledger, halves[0], 1)
    history = ledger.to_history()
    if rank == 0:
        np.savez(out_file, margin=history.fields["margin"], mean_probs=history.mean_probs,
                 early_probs=history.early_probs, count=np.isfinite(history.fields["margin"]).sum(axis=1))
    dist.destroy_process_group()


def test_a_mid_epoch_checkpoint_under_ddp_keeps_every_ranks_part(tmp_path):
    results = {}
    for interrupted in (False, True):
        out = str(tmp_path / f"resume_{interrupted}.npz")
        mp.spawn(_resume_worker, args=(2, str(tmp_path / f"init_{interrupted}"), out, interrupted), nprocs=2, join=True)
        results[interrupted] = np.load(out)
    assert results[True]["count"].tolist() == [8, 4]  # epoch 0: all 8 ids, none lost; epoch 1: 4 so far
    for key in ("margin", "mean_probs", "early_probs"):
        np.testing.assert_allclose(results[True][key], results[False][key], rtol=1e-6, equal_nan=True)


# ---------------------------------------------------------------------------------- the kNN graph over the ranks
def _knn_rows(n: int = 6000, d: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(40, d))[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, d))).astype(np.float16)


def _knn_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    """Every rank searches its part of the same rows (exact: 2 blocks of 4096 rows; ivf: 6 lists); rank 0 saves the
    graphs. Last, rank 1 has no rows to give: every rank must then return None, and nobody hang."""
    import warnings

    from dq_plugins.analysis.distributed import distributed_knn

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x = _knn_rows()
    exact = distributed_knn(x, 10, "exact")
    ivf = distributed_knn(x, 10, "ivf", seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        failed = distributed_knn(None if rank == 1 else x, 10, "exact")
    assert failed is None
    from dq_plugins.analysis.distributed import search_on_all_ranks

    def rows():
        if rank == 1:
            raise MemoryError("no room")  # a local failure on one rank: every rank returns None, nobody hangs
        return np.arange(len(x)), x

    assert search_on_all_ranks("the rows", rows, lambda n: (10, "exact")) is None
    if rank == 0:
        assert exact.ranks == ivf.ranks == 2 and (exact.method, ivf.method) == ("exact", "ivf")
        assert [str(w.message) for w in caught] == [
            "dq_plugins: another rank could not prepare the embeddings; rank 0 searches the kNN graph alone."]
        np.savez(out_file, exact_indices=exact.indices, exact_sims=exact.similarities, ivf_indices=ivf.indices,
                 ivf_sims=ivf.similarities)
    else:
        assert exact is None and ivf is None
    dist.destroy_process_group()


def test_the_knn_graph_searched_by_two_ranks_equals_one_process(tmp_path):
    from dq_plugins.scores.neighbors import knn_cosine

    out = str(tmp_path / "knn.npz")
    mp.spawn(_knn_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    got = np.load(out)
    x = _knn_rows()
    exact_indices, exact_sims = knn_cosine(x, 10, method="exact")
    np.testing.assert_array_equal(got["exact_indices"], exact_indices)  # bit for bit: the same blocks
    np.testing.assert_array_equal(got["exact_sims"], exact_sims)
    ivf_indices, ivf_sims = knn_cosine(x, 10, method="ivf", seed=3)
    assert (got["ivf_indices"] == ivf_indices).mean() >= 0.999  # rank 0's quantizer, broadcast: the same lists
    np.testing.assert_allclose(got["ivf_sims"], ivf_sims, atol=1e-6)
    assert (got["ivf_indices"] >= 0).all()


# ---------------------------------------------------------------------------------- multi-label and token tasks
def _task_batch(kind: str, ids: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and logits of ``ids`` in ``epoch`` (logits change with the epoch, so do the predictions)."""
    phase = ids.float().unsqueeze(1) * 1.3 + epoch * 0.9
    if kind == "multilabel":
        return (ids.unsqueeze(1) + torch.arange(3)) % 2 * 1.0, 3 * torch.sin(phase + torch.arange(3))
    tags = (ids.unsqueeze(1) + torch.arange(4)) % 3
    tags[:, 0] = -100
    return tags, 3 * torch.sin(phase.unsqueeze(2) + torch.arange(4).view(1, 4, 1) + 2.1 * torch.arange(3))


def _task_ledger(kind: str):
    from dq_plugins.recording.multilabel import MultiLabelLedger
    from dq_plugins.recording.tokens import TokenLedger

    ledger = MultiLabelLedger(4, 3) if kind == "multilabel" else TokenLedger(4, 4, 3)
    ledger.early_epochs = 1
    return ledger


def _task_history_arrays(history) -> dict[str, np.ndarray]:
    arrays = {k: v for k, v in vars(history).items() if isinstance(v, np.ndarray)}
    arrays.update({f"field_{k}": v for k, v in (getattr(history, "fields", None) or {}).items()})
    return arrays


def _task_worker(rank: int, world: int, init_file: str, out_file: str, kind: str) -> None:
    """Epoch 0: rank 0 sees ids 0, 2 and rank 1 ids 1, 3; epoch 1 the other way round (a token's latest
    prediction then comes from the other rank). A checkpoint after the first batch of epoch 1, written by
    rank 0 and restored on every rank."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ledger = _task_ledger(kind)
    for epoch in (0, 1):
        for index, sample in enumerate([rank, rank + 2] if epoch == 0 else [1 - rank, 3 - rank]):
            ids = torch.tensor([sample])
            ledger.record(ids, *_task_batch(kind, ids, epoch), epoch)
            if epoch == 1 and index == 0:
                state = ledger.state_dict()  # collective; rank 0 writes it, every process restarts from it
                saved = [state if rank == 0 else None]
                dist.broadcast_object_list(saved, src=0)
                ledger = type(ledger).from_state_dict(saved[0])
                ledger.localize_for_rank()
        if epoch == 0:
            ledger.close_epoch()
    history = ledger.to_history()
    if rank == 0:
        np.savez(out_file, **_task_history_arrays(history))
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["multilabel", "tokens"])
def test_task_ledgers_under_ddp_match_one_process_across_a_checkpoint(tmp_path, kind):
    out = str(tmp_path / "task.npz")
    mp.spawn(_task_worker, args=(2, str(tmp_path / "init"), out, kind), nprocs=2, join=True)
    reference = _task_ledger(kind)
    for epoch in (0, 1):
        for sample in range(4):
            ids = torch.tensor([sample])
            reference.record(ids, *_task_batch(kind, ids, epoch), epoch)
    want = _task_history_arrays(reference.to_history())
    got = np.load(out)
    assert sorted(got.files) == sorted(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, equal_nan=True, err_msg=name)


def test_lightning_ddp_multilabel_matches_one_process(tmp_path, tracking_uri):
    """Issue 14 under DDP: the multi-label record is reduced over ranks, rank 0 analyses and publishes."""
    script = Path(__file__).parent / "ddp" / "lightning_task_run.py"
    single = run_script(tmp_path, 1, tracking_uri, script=script)
    ddp = run_script(tmp_path, 2, tracking_uri, script=script)
    assert len(ddp) == len(single) == 64 + 32 and not ddp.duplicated(["split", "sample_id"]).any()
    for column in ("label", "suggested_label", "pred"):
        assert [list(v) for v in ddp[column]] == [list(v) for v in single[column]], column
    for column in ("mislabel_score", "confidence"):
        np.testing.assert_allclose(ddp[column], single[column], rtol=1e-4, atol=1e-5, err_msg=column)
    # the embeddings (on by default) are gathered over ranks in close_all: every row has them, as in one process
    assert (ddp["cluster"] >= 0).all() and ddp["neighbor_disagreement"].notna().all()
    np.testing.assert_allclose(ddp["outlier_score"], single["outlier_score"], atol=1e-2)
    np.testing.assert_array_equal(ddp["near_duplicate_of"], single["near_duplicate_of"])
    run_id = Path(str(tmp_path / "samples_2.parquet.run_id")).read_text()
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.tags["dq.task"] == "multilabel"
    assert run.data.metrics["dq.knn_ranks"] == run.data.metrics["dq.knn_ranks.validation"] == 2  # searched by both
