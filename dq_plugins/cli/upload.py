"""``dq upload``: log a folder that a callback kept while MLflow was unreachable into a run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dq_plugins.sinks.mlflow_sink import FALLBACK_MANIFEST, LOGGED_ARTIFACTS_TAG, read_fallback_manifest
from dq_plugins.sinks.offline import RunNotFoundError, get_run


UPLOADED_FROM_TAG = "dq.uploaded_from"
"""Tag of a run created by ``dq upload``: the fallback folder it was uploaded from."""


@dataclass
class Upload:
    """What :func:`upload_fallback` logged."""

    run_id: str
    tracking_uri: str
    created_run: bool
    files: int
    tables: list[str]
    metrics: int
    skipped_metrics: list[str]
    tags: int


def _upload_tracking_uri(flag: str | None, manifest: dict[str, Any]) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the URI the results were meant for, else MLflow's default."""
    import mlflow

    return flag or os.environ.get("MLFLOW_TRACKING_URI") or manifest.get("tracking_uri") or mlflow.get_tracking_uri()


def _run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage != "deleted"


def upload_fallback(
    folder: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment_name: str | None = None,
    progress: Any = None,
) -> Upload:
    """Log a fallback folder (kept by the callbacks while MLflow was unreachable) into a run.

    The run: ``run_id``; else the run the callback had opened (the manifest's run id) when it exists at
    the tracking URI and was not deleted; else a new run in ``experiment_name`` (default: the experiment the results were
    meant for) with the intended run name, tagged ``dq_plugins`` and :data:`UPLOADED_FROM_TAG`, whose id
    is then written to the manifest so that uploading again goes to the same run. Every file is logged
    at its artifact path; the tables are listed in the ``mlflow.loggedArtifacts`` tag (as ``log_table``
    does), so the MLflow UI renders them; the run tags and the metrics (with their epochs as steps) are
    logged, except metrics the run already holds: uploading twice logs nothing twice.

    Raises:
        FileNotFoundError, ValueError: ``folder`` is not a fallback folder (see :func:`read_fallback_manifest`).
        RunNotFoundError: ``run_id`` does not exist at the tracking URI.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    say = progress or (lambda message: None)
    folder = Path(folder)
    manifest = read_fallback_manifest(folder)
    uri = _upload_tracking_uri(tracking_uri, manifest)
    client = MlflowClient(tracking_uri=uri)
    created = False
    if run_id is not None:
        if get_run(client, run_id).info.lifecycle_stage == "deleted":
            raise RunNotFoundError(
                f"Run {run_id!r} was deleted at tracking URI {uri!r}. HINT: leave out `--run-id` to upload into a new "
                f"run, or restore it first: `mlflow runs restore --run-id {run_id}`."
            )
    elif manifest.get("run_id") and _run_exists(client, manifest["run_id"]):
        run_id = manifest["run_id"]
    else:
        name = experiment_name or manifest.get("experiment_name") or "Default"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run_id = client.create_run(experiment_id, run_name=manifest.get("run_name"),
                                   tags={"dq_plugins": "true", UPLOADED_FROM_TAG: str(folder.resolve())}).info.run_id
        created = True
        say(f"created run {run_id} in experiment {name!r}")
    files = [path for path in sorted(folder.rglob("*")) if path.is_file() and path.name != FALLBACK_MANIFEST]
    for path in files:
        parent = path.parent.relative_to(folder).as_posix()
        client.log_artifact(run_id, str(path), artifact_path=None if parent == "." else parent)
    say(f"logged {len(files)} files")
    tables = [table for table in manifest.get("tables", []) if (folder / table).is_file()]
    logged = json.loads(client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    missing = [entry for entry in ({"path": table, "type": "table"} for table in tables) if entry not in logged]
    if missing:
        client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps(logged + missing))
    tags = manifest.get("tags", {})
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    present = set(client.get_run(run_id).data.metrics)
    now = int(time.time() * 1000)
    metrics = [Metric(str(key), float(value), now, int(step)) for key, value, step in manifest.get("metrics", [])
               if key not in present]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])
    skipped = sorted({str(key) for key, _, _ in manifest.get("metrics", []) if key in present})
    if created:
        client.set_terminated(run_id, status="FINISHED")
        manifest.update(run_id=run_id, tracking_uri=uri)
        (folder / FALLBACK_MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return Upload(run_id, uri, created, len(files), tables, len(metrics), skipped, len(tags))
