"""Read results back from an MLflow run."""

from __future__ import annotations

import tempfile
from typing import Any

from dq_plugins.schema import SAMPLES_PATH


def load_samples(run_id: str, tracking_uri: str | None = None, split: str | None = None) -> Any:
    """Return the run's ``dq/samples.parquet`` as a pandas DataFrame.

    Args:
        run_id: the MLflow run (``callback.run_id``).
        tracking_uri: ``None`` means MLflow's current tracking URI.
        split: keep only "train" or "validation" rows; ``None`` keeps all.

    Raises:
        FileNotFoundError: when the run has no ``dq/samples.parquet``.
    """
    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, SAMPLES_PATH, tmp)
        except Exception as err:  # noqa: BLE001 - re-raised with the fix
            raise FileNotFoundError(
                f"Run {run_id!r} has no {SAMPLES_PATH} at tracking URI {client.tracking_uri!r} ({err}). "
                "HINT: check the run id and the tracking URI (`MLFLOW_TRACKING_URI`), and that the run finished."
            ) from err
        frame = pd.read_parquet(path)
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return frame
