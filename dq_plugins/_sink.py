"""MLflow sink: where the results of a run land.

Every artifact is first written to a local staging folder, then uploaded to the run by id
through ``MlflowClient`` (never the fluent API, so the user's active run and the frameworks'
own MLflow callbacks are left alone). If MLflow fails, the staging folder is kept under
``fallback_dir`` and a warning says where it is and how to upload it later: nothing is lost.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ARTIFACT_DIR = "dq"
SAMPLES_PATH = f"{ARTIFACT_DIR}/samples.parquet"
ISSUES_PATH = f"{ARTIFACT_DIR}/issues.json"
DATA_MAP_PATH = f"{ARTIFACT_DIR}/data_map.png"
RAW_DIR = f"{ARTIFACT_DIR}/raw"
EMBEDDINGS_DIR = f"{ARTIFACT_DIR}/embeddings"
EMBEDDING_MAP_PATH = f"{ARTIFACT_DIR}/embedding_map.png"
EMBEDDING_HTML_PATH = f"{ARTIFACT_DIR}/embedding_map.html"
CLASS_OVERLAP_PATH = f"{ARTIFACT_DIR}/class_overlap.json"


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
    """

    def __init__(
        self,
        client: Any = None,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        fallback_dir: str | os.PathLike = "dq_artifacts",
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.fallback_dir = Path(fallback_dir)
        self.owns_run = False
        self._staging = Path(tempfile.mkdtemp(prefix="dq_plugins_"))
        self._pending: list[tuple[str, str]] = []  # (local path, artifact dir)
        self._metrics: list[tuple[str, float, int]] = []
        self._tables: list[tuple[Any, str]] = []
        self._figures: list[tuple[Any, str]] = []
        self._tags: dict[str, str] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def ensure_run(self) -> str:
        """Return the run id, creating a run (owned by this sink) when none was given."""
        if self.run_id is None:
            name = self.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags={"dq_plugins": "true"})
            self.run_id = run.info.run_id
            self.owns_run = True
        return self.run_id

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
        """Queue a table in the JSON format of ``mlflow.log_table`` (rendered by the MLflow UI)."""
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

    def add_metric(self, key: str, value: float, step: int = 0) -> None:
        self._metrics.append((key, float(value), int(step)))

    # ------------------------------------------------------------------ upload
    def flush(self) -> bool:
        """Upload everything queued. Returns ``False`` (and keeps a local copy) when MLflow fails."""
        try:
            run_id = self.ensure_run()
            for local, artifact_dir in self._pending:
                self.client.log_artifact(run_id, local, artifact_path=artifact_dir)
            for frame, artifact_path in self._tables:
                self.client.log_table(run_id, data=frame, artifact_file=artifact_path)
            for key, value in self._tags.items():
                self.client.set_tag(run_id, key, value)
            for figure, artifact_path in self._figures:
                self.client.log_figure(run_id, figure, artifact_path, save_kwargs={"dpi": 110, "bbox_inches": "tight"})
            if self._metrics:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                metrics = [Metric(k, v, now, s) for k, v, s in self._metrics]
                for start in range(0, len(metrics), 500):
                    self.client.log_batch(run_id, metrics=metrics[start : start + 500])
        except Exception as err:  # noqa: BLE001 - any tracking failure must keep the files
            target = self._keep_locally()
            warnings.warn(
                f"dq_plugins could not write to MLflow ({type(err).__name__}: {err}). The results are kept in "
                f"{target}. Upload them later with `mlflow artifacts log-artifacts --local-dir {target} "
                f"--run-id <RUN_ID>` once the tracking server is reachable.",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        finally:
            self._pending.clear()
            self._metrics.clear()
            self._tables.clear()
            self._figures.clear()
            self._tags.clear()
        return True

    def _keep_locally(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.fallback_dir / (self.run_id or f"run-{stamp}")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self._staging, target, dirs_exist_ok=True)
        return target.resolve()

    def end(self, status: str = "FINISHED") -> None:
        """Terminate the run if this sink created it; remove the staging folder."""
        try:
            if self.owns_run and self.run_id is not None:
                self.client.set_terminated(self.run_id, status=status)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"dq_plugins could not close MLflow run {self.run_id}: {err}", RuntimeWarning, stacklevel=2)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
