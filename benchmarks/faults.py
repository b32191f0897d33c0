"""Fault injection: what a fault costs a fit that carries the Lightning callback.

For each fault a small fit (the example MLP on Gaussian blobs, a few seconds) runs with the fault
injected, and the table says whether training finished, where the results are kept and the time the
fault added against a healthy fit of the same size in the same process (the baseline)::

    python -m benchmarks.faults                 # every fault, the table on stdout
    python -m benchmarks.faults --write         # ... and into benchmarks/RESULTS.md
    python -m benchmarks.faults --only unreachable readonly

Faults: MLflow unreachable (connection refused), MLflow hung (accepts, never answers), MLflow killed
mid-fit (a real ``mlflow server`` stopped after the first epoch), read-only folders (the sqlite store
and the fallback folder cannot be written), run deleted mid-fit, process killed mid-epoch (SIGKILL,
then resumed from its checkpoint: ``tests/test_resume_kill.py`` as a script), repeated ids
(``ConcatDataset`` of two ``with_ids`` sets) and a callback reused in a second fit.
``tests/test_faults.py`` runs the cheapest of them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS_HEADING = "## Fault injection (benchmarks/faults.py)"


@dataclass
class Outcome:
    """One row of the table."""

    fault: str
    finished: bool
    kept: str
    seconds: float
    note: str = ""


# ---------------------------------------------------------------------------------------- the fit
def blobs(n: int = 256, classes: int = 3, dim: int = 8, seed: int = 0):
    """``n`` points in ``classes`` Gaussian blobs as a ``TensorDataset`` ``(inputs, labels)``."""
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=generator) * 3
    return TensorDataset(centers[labels] + torch.randn(n, dim, generator=generator), labels)


def small_fit(callback, dataset=None, epochs: int = 3, extra: list | None = None, **trainer_options):
    """Fit the example MLP on ``dataset`` (default: 256 blobs, ids added) with ``callback``; the trainer."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from dq_plugins import with_ids
    from recipes.common.models import MLPClassifier

    dataset = dataset if dataset is not None else with_ids(blobs())
    options = dict(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False)
    options.update(trainer_options)
    trainer = pl.Trainer(callbacks=[callback, *(extra or [])], **options)
    torch.manual_seed(0)
    trainer.fit(MLPClassifier(8, 3, hidden=(32,), lr=1e-2, log_val_loss=False),
                DataLoader(dataset, batch_size=32, shuffle=True))
    return trainer


def kept_folders(root: Path) -> list[Path]:
    """Fallback folders (with their manifest) under ``root``."""
    return sorted(p.parent for p in root.rglob("dq_fallback.json")) if root.is_dir() else []


def run_kept(uri: str, run_id: str | None) -> bool:
    """Whether ``run_id`` at ``uri`` holds ``dq/samples.parquet``."""
    import mlflow

    if run_id is None:
        return False
    with contextlib.suppress(Exception):
        return "dq/samples.parquet" in {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "dq")}
    return False


@contextlib.contextmanager
def isolated(folder: Path) -> Iterator[Path]:
    """Run in ``folder`` (MLflow's default store and the fallback folder are relative), warnings quiet."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = Path.cwd()
    os.chdir(folder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield folder
    finally:
        os.chdir(previous)


def timed(fit: Callable[[], object]) -> tuple[bool, float, BaseException | None]:
    """(finished, seconds, the exception that stopped it or ``None``)."""
    start = time.perf_counter()
    try:
        fit()
        return True, time.perf_counter() - start, None
    except Exception as err:  # noqa: BLE001 - the fault's outcome is reported, not raised
        return False, time.perf_counter() - start, err


# ---------------------------------------------------------------------------------------- servers
class SilentServer:
    """Loopback TCP server that accepts connections and never answers (a hung tracking server)."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.uri = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self._held.append(self.socket.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.socket.close()
        for connection in self._held:
            connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(folder: Path, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """A real ``mlflow server`` on loopback (sqlite store and artifacts in ``folder``); (process, URI)."""
    import urllib.request

    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "art"),
               "--workers", "1"]
    process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return process, uri
        if process.poll() is not None:
            break
        time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"mlflow server did not start on port {port}")


def stop(process: subprocess.Popen) -> None:
    """Kill the server and its workers (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


# ---------------------------------------------------------------------------------------- the faults
def baseline(work: Path) -> Outcome:
    from dq_plugins.lightning import DataQualityCallback

    with isolated(work / "baseline"):
        callback = DataQualityCallback(tracking_uri=f"sqlite:///{work}/baseline/mlflow.db")
        finished, seconds, _ = timed(lambda: small_fit(callback))
        kept = "MLflow run" if run_kept(f"sqlite:///{work}/baseline/mlflow.db", callback.run_id) else "lost"
    return Outcome("none (baseline)", finished, kept, seconds)


def unreachable(work: Path) -> Outcome:
    from dq_plugins.lightning import DataQualityCallback

    with isolated(work / "unreachable") as here:
        callback = DataQualityCallback(tracking_uri="http://127.0.0.1:9")
        finished, seconds, _ = timed(lambda: small_fit(callback))
        folders = kept_folders(here / "dq_artifacts")
    return Outcome("MLflow unreachable (connection refused)", finished,
                   "fallback folder ./dq_artifacts/<run>" if folders else "lost", seconds)


def hung(work: Path) -> Outcome:
    from dq_plugins.lightning import DataQualityCallback

    server = SilentServer()
    try:
        with isolated(work / "hung") as here:
            callback = DataQualityCallback(tracking_uri=server.uri)
            finished, seconds, _ = timed(lambda: small_fit(callback))
            folders = kept_folders(here / "dq_artifacts")
    finally:
        server.close()
    return Outcome("MLflow hung (accepts, never answers)", finished,
                   "fallback folder ./dq_artifacts/<run>" if folders else "lost", seconds,
                   "one call times out (2 x 10 s), then offline")


def killed_mid_fit(work: Path) -> Outcome:
    import pytorch_lightning as pl

    from dq_plugins.lightning import DataQualityCallback

    folder = work / "killed_server"
    folder.mkdir(parents=True, exist_ok=True)
    process, uri = start_mlflow_server(folder)

    class KillServer(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                stop(process)

    try:
        with isolated(folder) as here:
            callback = DataQualityCallback(tracking_uri=uri)
            finished, seconds, _ = timed(lambda: small_fit(callback, extra=[KillServer()]))
            folders = kept_folders(here / "dq_artifacts")
    finally:
        stop(process)
    return Outcome("MLflow server killed after epoch 0", finished,
                   f"fallback folder ./dq_artifacts/{callback.run_id}" if folders else "lost", seconds,
                   "run left RUNNING on the dead server; `dq upload` later")


def readonly(work: Path) -> Outcome:
    """The sqlite store and the fallback folder sit under a path that cannot be created (a file
    is in the way: root ignores permission bits, so a read-only mode would not fail here)."""
    from dq_plugins.lightning import DataQualityCallback

    folder = work / "readonly"
    folder.mkdir(parents=True, exist_ok=True)
    blocker = folder / "blocked"
    blocker.write_text("")
    temp = folder / "tmp"
    temp.mkdir(exist_ok=True)
    previous, tempfile.tempdir = tempfile.tempdir, str(temp)
    try:
        with isolated(folder):
            callback = DataQualityCallback(tracking_uri=f"sqlite:///{blocker}/mlflow.db",
                                           fallback_dir=str(blocker / "dq_artifacts"))
            finished, seconds, _ = timed(lambda: small_fit(callback))
            folders = kept_folders(temp / "dq_artifacts")
    finally:
        tempfile.tempdir = previous
    return Outcome("read-only store and fallback folder", finished,
                   "temp folder <tmp>/dq_artifacts/<run>" if folders else "lost", seconds)


def deleted_mid_fit(work: Path) -> Outcome:
    import mlflow
    import pytorch_lightning as pl

    from dq_plugins.cli.upload import upload_fallback
    from dq_plugins.lightning import DataQualityCallback

    folder = work / "deleted"
    uri = f"sqlite:///{folder}/mlflow.db"

    class DeleteRun(pl.Callback):
        def __init__(self, target):
            self.target = target

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                mlflow.MlflowClient(uri).delete_run(self.target.run_id)

    with isolated(folder) as here:
        callback = DataQualityCallback(tracking_uri=uri)
        finished, seconds, _ = timed(lambda: small_fit(callback, extra=[DeleteRun(callback)]))
        folders = kept_folders(here / "dq_artifacts")
        if run_kept(uri, callback.run_id) and mlflow.MlflowClient(uri).get_run(callback.run_id).info.lifecycle_stage == "active":
            kept = "MLflow run"
        elif folders:
            done = upload_fallback(folders[0], tracking_uri=uri)
            kept = "fallback folder, then `dq upload` into " + ("a new run" if done.created_run else "the run")
        else:
            kept = "deleted run only (restore it: `mlflow runs restore`)" if run_kept(uri, callback.run_id) else "lost"
    return Outcome("run deleted mid-fit", finished, kept, seconds)


def killed_process(work: Path) -> Outcome:
    """SIGKILL inside epoch 1 (after the step-8 checkpoint), then a resume from it in a new process
    (``tests/test_resume_kill.py`` as a script); time added: both processes minus the baseline."""
    import mlflow

    script = REPO / "tests" / "test_resume_kill.py"
    folder = work / "killed_process"
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder}/mlflow.db"
    path = os.pathsep.join(filter(None, [str(script.parent), str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        crash = subprocess.Popen([sys.executable, str(script), "lightning", str(folder), uri, "--hang-at", "10"],
                                 cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (folder / "hanging").exists() and crash.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        crash.send_signal(signal.SIGKILL)
        crash.wait(timeout=60)
        checkpoint = folder / "ckpt" / "step=8.ckpt"
        resumed = subprocess.run([sys.executable, str(script), "lightning", str(folder), uri, "--resume",
                                  str(checkpoint)], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=600)
    seconds = time.perf_counter() - start
    runs = mlflow.MlflowClient(uri).search_runs(["0"]) if (folder / "mlflow.db").exists() else []
    statuses = sorted(run.info.status for run in runs)
    finished = resumed.returncode == 0
    kept = "the same MLflow run, FINISHED" if statuses == ["FINISHED"] and run_kept(uri, runs[0].info.run_id) else (
        f"runs {statuses}")
    return Outcome("process killed mid-epoch, resumed", finished, kept, seconds,
                   "two processes (start-up included); not a like-for-like time")


def repeated_ids(work: Path) -> Outcome:
    from torch.utils.data import ConcatDataset

    from dq_plugins import with_ids
    from dq_plugins.lightning import DataQualityCallback

    with isolated(work / "repeated") as here:
        uri = f"sqlite:///{here}/mlflow.db"
        callback = DataQualityCallback(tracking_uri=uri)
        data = ConcatDataset([with_ids(blobs(128, seed=0)), with_ids(blobs(128, seed=1))])
        finished, seconds, error = timed(lambda: small_fit(callback, dataset=data))
        kept = "raw record in the FAILED run" if run_kept(uri, callback.run_id) or _has_raw(uri, callback.run_id) else "lost"
    note = "stopped at the end of epoch 0 with the fix (`with_ids(b, offset=len(a))`)" if error else "not detected"
    return Outcome("repeated ids (ConcatDataset of two with_ids)", finished, kept, seconds, note)


def _has_raw(uri: str, run_id: str | None) -> bool:
    import mlflow

    if run_id is None:
        return False
    with contextlib.suppress(Exception):
        return any(a.path.endswith(".npz") for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "dq/raw"))
    return False


def reused(work: Path) -> Outcome:
    from dq_plugins import with_ids
    from dq_plugins.lightning import DataQualityCallback

    with isolated(work / "reused") as here:
        uri = f"sqlite:///{here}/mlflow.db"
        callback = DataQualityCallback(tracking_uri=uri)
        small_fit(callback)
        first = callback.run_id
        finished, seconds, _ = timed(lambda: small_fit(callback, dataset=with_ids(blobs(128, seed=2)), epochs=2))
        history = callback.session.ledgers["train"].to_history()
        clean = history.epochs.tolist() == [0, 1] and history.labels.shape == (128,) and callback.run_id != first
    return Outcome("callback reused in a second fit", finished,
                   "a new MLflow run" if clean and run_kept(uri, callback.run_id) else "mixed with the first fit",
                   seconds)


FAULTS: dict[str, Callable[[Path], Outcome]] = {
    "unreachable": unreachable, "hung": hung, "killed_server": killed_mid_fit, "readonly": readonly,
    "deleted": deleted_mid_fit, "killed_process": killed_process, "repeated_ids": repeated_ids, "reused": reused,
}
CHEAP = ("unreachable", "readonly", "deleted", "repeated_ids", "reused")
"""Faults that cost seconds (``tests/test_faults.py``)."""


def run(names: list[str], work: Path) -> tuple[Outcome, list[Outcome]]:
    """The baseline and the outcome of each named fault."""
    from benchmarks._common import quiet_lightning

    quiet_lightning()
    torch.set_num_threads(1)
    baseline(work / "warm-up")  # imports, MLflow's store creation and first-call costs stay out of the baseline
    base = baseline(work)
    return base, [FAULTS[name](work) for name in names]


def table(base: Outcome, outcomes: list[Outcome]) -> str:
    lines = ["| fault | training finished | results kept | time added (s) | note |", "|---|---|---|---|---|"]
    for row in [base, *outcomes]:
        added = "-" if row is base else f"{row.seconds - base.seconds:+.1f}"
        lines.append(f"| {row.fault} | {'yes' if row.finished else 'no'} | {row.kept} | {added} | {row.note} |")
    return "\n".join(lines) + (f"\n\nBaseline fit: {base.seconds:.1f} s (256 samples, 3 epochs, example MLP, 1 thread, "
                               "results logged to a local sqlite store). A negative time: the fault skipped the upload.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(FAULTS), default=None)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dq_faults_") as work:
        base, outcomes = run(args.only or list(FAULTS), Path(work))
    text = table(base, outcomes)
    print(text)
    if args.write:
        from benchmarks._common import RESULTS_PATH

        results = RESULTS_PATH.read_text(encoding="utf-8")
        section = f"{RESULTS_HEADING}\n\nRun: `python -m benchmarks.faults --write` ({time.strftime('%Y-%m-%d')}).\n\n{text}\n"
        if RESULTS_HEADING in results:
            head, _, rest = results.partition(RESULTS_HEADING)
            tail = rest[rest.find("\n## ") + 1:] if "\n## " in rest else ""
            results = head + section + ("\n" + tail if tail else "")
        else:
            results = results.rstrip("\n") + "\n\n" + section
        RESULTS_PATH.write_text(results, encoding="utf-8")


if __name__ == "__main__":
    main()
