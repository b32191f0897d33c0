"""MLflow sink: where the results of a run land.

Every artifact is first written to a local staging folder, then uploaded to the run by id
through ``MlflowClient`` (never the fluent API, so the user's active run and the frameworks'
own MLflow callbacks are left alone). If MLflow fails, the staging folder is kept under
``fallback_dir`` and a warning says where it is and how to upload it later: nothing is lost.
The kept folder (a *fallback folder*) mirrors the run's artifact paths and holds
:data:`FALLBACK_MANIFEST`, which ``dq upload`` reads to log everything into a run later.

An outage costs seconds, not minutes: every MLflow call of the sink runs under a short HTTP timeout
and one retry (:func:`bounded_mlflow`, for the sink's own calls only), a ``sqlite:`` store whose
folder cannot be written is refused before MLflow retries its engine, and after the first failed call
the sink makes no other (it is *offline*: the results go to the fallback folder for the rest of the
fit). The fallback folder itself falls back to the temp folder when ``fallback_dir`` cannot be
written, and keeping it never raises.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dq_plugins.logs import logger, warn
from dq_plugins.schema import ARTIFACT_DIR

FALLBACK_MANIFEST = "dq_fallback.json"
"""File of a fallback folder that says what could not be logged besides the files: where the results
were meant to go (tracking URI, run id or experiment and run name), the metrics, the tags, and which
JSON files are tables. Written by :class:`MlflowSink`, read by :func:`read_fallback_manifest`."""
FALLBACK_FORMAT = "dq_plugins.fallback"
FALLBACK_VERSION = 1
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
"""MLflow's tag listing the JSON tables its UI renders (written by ``log_table``)."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""Experiment tag from which MLflow 3's UI picks its view; without it an experiment opens on the GenAI
"Traces" page and its runs show only after switching to "Model training"."""
EXPERIMENT_KIND = "custom_model_development"
"""The value of :data:`EXPERIMENT_KIND_TAG` that opens an experiment on its run list."""
TIMEOUT_ENV = "DQ_PLUGINS_MLFLOW_TIMEOUT"
"""Environment variable: seconds an MLflow HTTP request of the sink may take (default :data:`DEFAULT_TIMEOUT_S`)."""
DEFAULT_TIMEOUT_S = 10
MAX_RETRIES = 1
"""Retries of one MLflow HTTP request of the sink (MLflow's own default is 7, with exponential backoff)."""
_ENV_LOCK = threading.Lock()


class MlflowOffline(RuntimeError):
    """An earlier MLflow call of this sink failed: no other is tried during this fit."""


@contextlib.contextmanager
def bounded_mlflow() -> Iterator[None]:
    """Run MLflow calls under a short HTTP timeout and :data:`MAX_RETRIES` retry with a short backoff.

    MLflow reads ``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``_MAX_RETRIES`` / ``_BACKOFF_FACTOR`` at each request, so
    they are set for the duration of the block and restored after it (a lock serialises the blocks).
    Worst case per call with the defaults: 2 x 10 s plus about 1 s of backoff.
    """
    timeout = str(max(1, round(float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S))))  # MLflow reads an int
    bounds = {"MLFLOW_HTTP_REQUEST_TIMEOUT": timeout, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(MAX_RETRIES),
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.1"}
    with _ENV_LOCK:
        saved = {key: os.environ.get(key) for key in bounds}
        os.environ.update(bounds)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def check_sqlite_writable(tracking_uri: str | None) -> None:
    """Raise ``OSError`` at once when ``tracking_uri`` is a ``sqlite:`` store whose file or folder cannot be
    written (MLflow would retry creating its engine for minutes)."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
    if str(path) in ("", ":memory:"):
        return
    folder = path.parent if str(path.parent) else Path(".")
    target = path if path.exists() else folder
    if (path.exists() and path.is_dir()) or (folder.exists() and not folder.is_dir()) or \
            (target.exists() and not os.access(target, os.W_OK)):
        raise OSError(f"the MLflow store {tracking_uri!r} cannot be written ({target} is not a writable "
                      f"{'file' if target is path else 'folder'})")


class MlflowSink:
    """Writes artifacts, tables, figures and metrics into one MLflow run.

    Args:
        client: an ``mlflow.MlflowClient`` (for example ``MLFlowLogger.experiment``); ``None``
            builds one for ``tracking_uri``.
        run_id: the run to write into; ``None`` creates a run in ``experiment_name`` when first needed.
        tracking_uri: used when ``client`` is ``None``; ``None`` means MLflow's current tracking URI
            (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory).
        experiment_name: experiment of a created run; ``None`` means ``MLFLOW_EXPERIMENT_NAME`` or "Default".
        run_name: name of a created run.
        fallback_dir: local folder that keeps the artifacts when MLflow is unreachable.
        replace: write into a run that already holds results (``dq analyze``): tables replace the
            existing ones (``MlflowClient.log_table`` would append rows to them), a metric whose
            latest value is unchanged is not logged again, and a per-epoch series already in the
            run is not logged twice.
    """

    def __init__(
        self,
        client: Any = None,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        fallback_dir: str | os.PathLike = "dq_artifacts",
        replace: bool = False,
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.fallback_dir = Path(fallback_dir)
        self.owns_run = False
        self.replace = replace
        self._staging = Path(tempfile.mkdtemp(prefix="dq_plugins_"))
        self._pending: list[tuple[str, str]] = []  # (local path, artifact dir)
        self._metrics: list[tuple[str, float, int, bool]] = []
        self._tables: list[tuple[Any, str]] = []
        self._figures: list[tuple[Any, str]] = []
        self._tags: dict[str, str] = {}
        self._params: dict[str, str] = {}
        self._inputs: list[Any] = []
        self._experiment_marked = False
        self.experiment_id: str | None = None
        self.kept_at: Path | None = None  # the fallback folder, once a flush failed
        self.run_owner: str | None = None  # who ends a run this sink did not create, in words (for messages)
        self.end_foreign: Any = None  # callable(status) that ends such a run with a status, where one can
        self.offline: BaseException | None = None  # the error of the first failed MLflow call, if any
        self._keep_staging = False  # no fallback folder could be written: the staging folder is the copy

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` (built on first use: that alone can reach the store). Call MLflow through
        :meth:`call`, which bounds the time and stops after the first failure."""
        if self._client is None:
            import mlflow

            check_sqlite_writable(self.tracking_uri or mlflow.get_tracking_uri())
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.client.<method>(*args, **kwargs)`` under :func:`bounded_mlflow`. After one failure the sink is
        offline: this raises :class:`MlflowOffline` without calling MLflow again."""
        if self.offline is not None:
            raise MlflowOffline(f"MLflow failed earlier in this fit ({type(self.offline).__name__}: {self.offline})")
        try:
            with bounded_mlflow():
                return getattr(self.client, method)(*args, **kwargs)
        except BaseException as err:
            self.offline = err
            raise

    def ensure_run(self) -> str:
        """Return the run id, creating a run (owned by this sink) when none was given.

        The experiment that holds the run gets :data:`EXPERIMENT_KIND_TAG` (once, unless it has one)."""
        if self.run_id is None:
            name = self.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
            experiment = self.call("get_experiment_by_name", name)
            experiment_id = experiment.experiment_id if experiment else self.call("create_experiment", name)
            run = self.call("create_run", experiment_id, run_name=self.run_name, tags={"dq_plugins": "true"})
            self.run_id = run.info.run_id
            self.owns_run = True
            self._mark_experiment(experiment_id)
        elif not self._experiment_marked:
            self._mark_experiment(None)
        return self.run_id

    def _mark_experiment(self, experiment_id: str | None) -> None:
        """Set :data:`EXPERIMENT_KIND_TAG` on the run's experiment unless it has a value (the user's wins).
        Cosmetic: a failure is logged at DEBUG level and never stops the run."""
        self._experiment_marked = True
        if self.offline is not None:
            return
        try:
            with bounded_mlflow():
                if experiment_id is None:
                    experiment_id = self.client.get_run(self.run_id).info.experiment_id
                self.experiment_id = experiment_id
                experiment = self.client.get_experiment(experiment_id)
                if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
                    self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except Exception as err:  # noqa: BLE001 - the UI view is not worth a failed run
            logger.debug("could not tag the experiment of run %s: %s", self.run_id, err)

    def resume_run(self, run_id: str) -> bool:
        """Write into ``run_id`` (the run of the fit a checkpoint was saved from) and own it: it is set
        RUNNING again and ended by :meth:`end`; when it already holds tables, ``replace`` is switched on. Returns ``False`` (and a new run is created when first
        needed) when that run no longer exists or was deleted."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.call("get_run", run_id)
        except MlflowException as err:  # not found: a fresh run then (an outage propagates: the sink is offline)
            if getattr(err, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.offline = None
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            warn(f"dq_plugins: the MLflow run {run_id} of the resumed fit no longer exists; the results go "
                          "to a new run.", RuntimeWarning, stacklevel=2)
            return False
        if run.info.status != "RUNNING":
            self.call("update_run", run_id, status="RUNNING")
        self.run_id, self.owns_run = run_id, True
        # a fit that had ended (and logged its tables) is continued: its tables are replaced, not appended to
        self.replace = self.replace or bool(json.loads(run.data.tags.get(LOGGED_ARTIFACTS_TAG, "[]")))
        return True

    # ------------------------------------------------------------------ staging
    def stage_path(self, artifact_path: str) -> Path:
        """Local path where an artifact is written before upload (parents created)."""
        path = self._staging / artifact_path
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add_artifact(self, artifact_path: str) -> None:
        """Queue a file written at :meth:`stage_path` for upload."""
        self._pending.append((str(self.stage_path(artifact_path)), str(Path(artifact_path).parent)))

    def add_table(self, frame: Any, artifact_path: str) -> None:
        """Queue a table in the JSON format of ``mlflow.log_table`` (rendered by the MLflow UI), its numbers
        rounded for reading (:func:`rounded_for_display`; full precision stays in ``dq/samples.parquet``)."""
        frame = rounded_for_display(frame)
        path = self.stage_path(artifact_path)
        frame.to_json(path, orient="split", index=False, date_format="iso")  # the local copy
        self._tables.append((frame, artifact_path))

    def add_figure(self, figure: Any, artifact_path: str) -> None:
        """Queue a matplotlib figure, uploaded with ``MlflowClient.log_figure`` (a PNG for a ``.png`` path)."""
        figure.savefig(self.stage_path(artifact_path), dpi=110, bbox_inches="tight")  # the local copy
        self._figures.append((figure, artifact_path))

    def add_tag(self, key: str, value: str) -> None:
        """Queue a run tag."""
        self._tags[key] = str(value)

    def add_param(self, key: str, value: str) -> None:
        """Queue a run parameter (MLflow keeps a parameter's first value: log each key with one value only)."""
        self._params[key] = str(value)

    def add_input(self, dataset_input: Any) -> None:
        """Queue an ``mlflow.entities.DatasetInput`` (see :mod:`dq_plugins.sinks.datasets`); not logged again
        when ``replace`` (the run has it from its fit)."""
        self._inputs.append(dataset_input)

    def add_metric(self, key: str, value: float, step: int = 0, series: bool = False) -> None:
        """Queue a metric; ``series=True`` marks one point of a per-epoch series (see ``replace``)."""
        self._metrics.append((key, float(value), int(step), bool(series)))

    # ------------------------------------------------------------------ upload
    def flush(self, strict: bool = False) -> bool:
        """Upload everything queued. Returns ``False`` (and keeps a local copy) when MLflow fails;
        ``strict=True`` re-raises the error after keeping the local copy."""
        try:
            run_id = self.ensure_run()
            for local, artifact_dir in self._pending:
                self.call("log_artifact", run_id, local, artifact_path=artifact_dir)
            if self.replace:
                self._replace_tables(run_id)
            else:
                for frame, artifact_path in self._tables:
                    self.call("log_table", run_id, data=frame, artifact_file=artifact_path)
            for key, value in self._tags.items():
                self.call("set_tag", run_id, key, value)
            if self._params:
                from mlflow.entities import Param

                logged = self.call("get_run", run_id).data.params
                params = [Param(k, v) for k, v in self._params.items() if k not in logged]  # first value stays
                if params:
                    self.call("log_batch", run_id, params=params)
            if self._inputs and not self.replace:
                self.call("log_inputs", run_id, datasets=self._inputs)
            for figure, artifact_path in self._figures:
                self.call("log_figure", run_id, figure, artifact_path, save_kwargs={"dpi": 110, "bbox_inches": "tight"})
            if self._metrics:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                queued = self._metrics
                if self.replace:
                    latest = self.call("get_run", run_id).data.metrics
                    queued = [(k, v, s, series) for k, v, s, series in queued
                              if k not in latest or (not series and abs(latest[k] - v) > 1e-12)]
                metrics = [Metric(k, v, now, s) for k, v, s, _ in queued]
                for start in range(0, len(metrics), 500):
                    self.call("log_batch", run_id, metrics=metrics[start : start + 500])
        except Exception as err:  # noqa: BLE001 - any tracking failure must keep the files
            cause = self.offline if isinstance(err, MlflowOffline) and self.offline is not None else err
            target = self.kept_at = self._keep_locally(cause)
            where = (f"The results are kept in {target}. Upload them once the tracking server is reachable with "
                     f"`{upload_command(target)}` (add `--run-id RUN_ID` to log into another existing run)."
                     if target is not None else
                     f"No folder could be written, not even the temp folder: the results stay in {self._staging}.")
            warn(
                f"dq_plugins could not write to MLflow ({type(cause).__name__}: {cause}). {where}",
                RuntimeWarning,
                stacklevel=2,
            )
            if strict:
                raise
            return False
        finally:
            self._pending.clear()
            self._metrics.clear()
            self._tables.clear()
            self._figures.clear()
            self._tags.clear()
            self._params.clear()
            self._inputs.clear()
        return True

    def _replace_tables(self, run_id: str) -> None:
        """Upload the staged JSON tables as files (replacing any table at the same path) and list them in
        the ``mlflow.loggedArtifacts`` tag, which is what makes the MLflow UI render a file as a table."""
        for _, artifact_path in self._tables:
            self.call("log_artifact", run_id, str(self.stage_path(artifact_path)),
                      artifact_path=str(Path(artifact_path).parent))
        logged = json.loads(self.call("get_run", run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
        missing = [{"path": path, "type": "table"} for _, path in self._tables]
        missing = [entry for entry in missing if entry not in logged]
        if missing:
            self.call("set_tag", run_id, LOGGED_ARTIFACTS_TAG, json.dumps(logged + missing))

    def _keep_locally(self, error: BaseException) -> Path | None:
        """Copy the staged files to the fallback folder and record the rest in its manifest. Tries
        ``fallback_dir``, then ``<temp folder>/dq_artifacts``; never raises. Returns the folder, or ``None``
        (with the staging folder kept: :meth:`end` then leaves it) when neither can be written."""
        name = self.run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        for root in (self.fallback_dir, Path(tempfile.gettempdir()) / "dq_artifacts"):
            try:
                target = root / name
                target.mkdir(parents=True, exist_ok=True)
                shutil.copytree(self._staging, target, dirs_exist_ok=True)
                self._write_manifest(target, error)
                return target.resolve()
            except Exception:  # noqa: BLE001 - an unwritable folder: try the next one
                continue
        self._keep_staging = True
        return None

    def _write_manifest(self, target: Path, error: BaseException) -> None:
        """Write (or extend, when the folder already holds one) :data:`FALLBACK_MANIFEST` in ``target``."""
        path = target / FALLBACK_MANIFEST
        try:
            tracking_uri = self.tracking_uri or getattr(self._client, "tracking_uri", None)
            if tracking_uri is None:
                import mlflow

                tracking_uri = mlflow.get_tracking_uri()
        except Exception:  # noqa: BLE001 - the manifest must be written; `dq upload --tracking-uri` fills this in
            tracking_uri = None
        try:
            previous = read_fallback_manifest(target) if path.is_file() else {}
        except ValueError:  # unreadable: replaced by this one
            previous = {}
        metrics = previous.get("metrics", []) + [[key, value, step] for key, value, step, *_ in self._metrics]
        tables = list(dict.fromkeys([*previous.get("tables", []), *(p for _, p in self._tables)]))
        manifest = {
            "format": FALLBACK_FORMAT,
            "version": FALLBACK_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "error": f"{type(error).__name__}: {error}",
            "tracking_uri": tracking_uri,
            "run_id": self.run_id,
            "experiment_name": None if self.run_id else (
                self.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"),
            "run_name": self.run_name,
            "tables": tables,
            "tags": {**previous.get("tags", {}), **self._tags},
            "metrics": metrics,
        }
        path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")

    def location(self) -> str:
        """Where the results are and how to open them: the run and its MLflow UI page (for a local store,
        the ``mlflow ui`` command with the store's absolute URI), or the fallback folder."""
        if self.kept_at is not None:
            return f"MLflow could not be reached; the results are kept in {self.kept_at} (`{upload_command(self.kept_at)}`)."
        if self.run_id is None:
            return "no MLflow run was opened."
        try:
            uri = absolute_tracking_uri(getattr(self.client, "tracking_uri", None) or self.tracking_uri or "")
            if self.experiment_id is None:
                self.experiment_id = self.call("get_run", self.run_id).info.experiment_id
            return f"Run {self.run_id}: {open_hint(uri, self.experiment_id, self.run_id)}."
        except Exception:  # noqa: BLE001 - the id alone still finds the run
            return f"Run {self.run_id}."

    def end(self, status: str = "FINISHED", *, by_rule: bool = False) -> None:
        """Terminate the run if this sink created it; remove the staging folder.

        ``by_rule=True`` (with ``status="FAILED"``): a ``FailRun("mark_failed")`` rule held. A run owned by
        someone else is then tagged :data:`RUN_FAILED_TAG` and ended FAILED through :attr:`end_foreign`; where
        there is none (the Lightning ``MLFlowLogger`` sets the status itself after the callbacks), a warning
        says so and what to do instead."""
        try:
            if self.owns_run and self.run_id is not None:
                if self.offline is None:
                    self.call("set_terminated", self.run_id, status=status)
            elif by_rule and status == "FAILED" and self.run_id is not None and self.offline is None:
                self.call("set_tag", self.run_id, RUN_FAILED_TAG, "true")
                if self.end_foreign is not None:
                    self.end_foreign(status)
                else:
                    owner = self.run_owner or "another component"
                    warn(
                        f"dq_plugins: a FailRun('mark_failed') rule held, but run {self.run_id} belongs to {owner}, "
                        f"which sets the run's status itself when it ends (FINISHED after a completed fit); the run is "
                        f"tagged {RUN_FAILED_TAG}=true instead. HINT: find such runs with "
                        f"`mlflow.search_runs(filter_string=\"tags.`{RUN_FAILED_TAG}` = 'true'\")`, or use "
                        f"FailRun('raise'): the fit then stops and {owner} ends the run FAILED.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        except Exception as err:  # noqa: BLE001
            warn(f"dq_plugins could not close MLflow run {self.run_id}: {err}", RuntimeWarning, stacklevel=2)
        finally:
            if not self._keep_staging:
                shutil.rmtree(self._staging, ignore_errors=True)


RUN_FAILED_TAG = "dq.run_failed"
"""Tag set to ``"true"`` on a run a ``FailRun("mark_failed")`` rule failed, when dq_plugins does not own the run."""

UI_ADDRESS = "http://127.0.0.1:5000"
"""Where ``mlflow ui`` serves by default."""


def ui_url(server: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's run list, or of one run, on ``server`` (``http://host:port``).

    ``workflowType=machine_learning`` makes MLflow 3.17's UI show runs, not its GenAI pages (it picks the view
    from the URL, else from what the browser last chose, else GenAI); older 3.x read :data:`EXPERIMENT_KIND_TAG`.
    """
    page = f"{server.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{page}/runs/{run_id}?workflowType=machine_learning" if run_id else f"{page}?workflowType=machine_learning"


DISPLAY_DIGITS = 4
"""Significant digits of the floats in a table written for the MLflow UI (a p-value keeps its exponent)."""


def rounded_for_display(frame: Any, digits: int = DISPLAY_DIGITS) -> Any:
    """A copy of ``frame`` whose float columns hold ``digits`` significant digits, as float64 (a float32 column
    would print as ``0.12340000271797180``); other columns are left as they are."""
    import numpy as np

    floats = [column for column in frame.columns if frame[column].dtype.kind == "f"]
    if not floats:
        return frame
    rounded = frame.copy()
    for column in floats:
        values = rounded[column].to_numpy(dtype=np.float64)
        rounded[column] = [float(f"{v:.{digits}g}") if np.isfinite(v) else v for v in values]
    return rounded


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` with a relative sqlite or file path made absolute (it then works from any folder)."""
    for scheme in ("sqlite:///", "file://"):
        if uri.startswith(scheme):
            path = uri[len(scheme):]
            if path and not os.path.isabs(path) and path != ":memory:":
                return f"{scheme}{os.path.abspath(path)}"
            return uri
    if uri and "://" not in uri:  # a plain folder (file store)
        return os.path.abspath(uri)
    return uri


def mlflow_command() -> str:
    """The ``mlflow`` program of this Python environment (``.venv/bin/mlflow``, relative to the working
    directory when inside it), which works without activating the venv; plain ``mlflow`` if there is none."""
    import shlex
    import sys

    program = Path(sys.executable).parent / "mlflow"
    if not program.is_file():
        return "mlflow"
    relative = os.path.relpath(program)
    return shlex.quote(relative if not relative.startswith("..") else str(program))


def open_hint(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """How to open a run in the MLflow UI: the ``mlflow ui`` command for a local store, and the page."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {ui_url(tracking_uri, experiment_id, run_id)}"
    return (f"open it with `{mlflow_command()} ui --backend-store-uri {tracking_uri}` and "
            f"{ui_url(UI_ADDRESS, experiment_id, run_id)}")


def upload_command(folder: str | os.PathLike) -> str:
    """The ``dq upload`` command line that uploads a fallback folder (with its tracking URI when recorded)."""
    import shlex

    command = f"dq upload {shlex.quote(str(folder))}"
    try:
        uri = read_fallback_manifest(folder).get("tracking_uri")
    except ValueError:
        uri = None
    return f"{command} --tracking-uri {shlex.quote(uri)}" if uri else command


def read_fallback_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a fallback folder written by :class:`MlflowSink` (see :data:`FALLBACK_MANIFEST`).

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
        ValueError: ``folder`` is not a fallback folder (no manifest, or one of another format);
            the message lists the fallback folders inside it, if any.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(
            f"{str(folder)!r} {what}. HINT: pass the folder named in the dq_plugins warning "
            "(`dq_artifacts/<run id>` or `dq_artifacts/run-<time>` under the folder you trained from)."
        )
    path = folder / FALLBACK_MANIFEST
    if not path.is_file():
        inside = sorted(str(p.parent) for p in folder.glob(f"*/{FALLBACK_MANIFEST}"))
        if inside:
            hint = "HINT: upload one of the fallback folders inside it: " + ", ".join(f"`dq upload {p}`" for p in inside)
        elif (folder / ARTIFACT_DIR).is_dir():
            hint = (f"HINT: an older dq_plugins kept it without a manifest; upload its files with "
                    f"`mlflow artifacts log-artifacts --local-dir {folder} --run-id RUN_ID`.")
        else:
            hint = "HINT: pass the folder named in the dq_plugins warning that MLflow could not be reached."
        raise ValueError(f"{str(folder)!r} is not a dq_plugins fallback folder: it has no {FALLBACK_MANIFEST}. {hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} cannot be read as JSON ({err}); it is not a dq_plugins fallback manifest.") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FALLBACK_FORMAT:
        raise ValueError(f"{str(path)!r} is not a dq_plugins fallback manifest (expected \"format\": \"{FALLBACK_FORMAT}\").")
    if int(manifest.get("version", 0)) > FALLBACK_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer dq_plugins (manifest version {manifest['version']}, this one reads "
            f"{FALLBACK_VERSION}). HINT: upgrade dq_plugins: `pip install -U dq_plugins`."
        )
    return manifest
