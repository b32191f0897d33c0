"""Read results back from an MLflow run: :func:`load_samples` (public as ``dq_plugins.load_samples``)."""

from __future__ import annotations

from typing import Any


def load_samples(run_id: str, tracking_uri: str | None = None, split: str | None = None) -> Any:
    """Return the run's ``dq/samples.parquet`` as a pandas DataFrame.

    One reader serves this function, the ``dq`` commands, ``fix`` and ``select_subset``:
    :func:`dq_plugins.sinks.offline.read_samples`.

    Args:
        run_id: the MLflow run (``callback.run_id``).
        tracking_uri: ``None`` means MLflow's current tracking URI.
        split: keep only "train" or "validation" rows (none: an empty frame); ``None`` keeps all.

    Raises:
        LookupError: the run does not exist at the tracking URI
            (:class:`~dq_plugins.sinks.offline.RunNotFoundError`).
        FileNotFoundError: the run has no ``dq/samples.parquet``, or a ``sqlite:///`` store file does not exist.
    """
    from dq_plugins.sinks.offline import make_client, read_samples

    frame = read_samples(make_client(tracking_uri), run_id)
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return frame
