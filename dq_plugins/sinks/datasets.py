"""What the run saw, for MLflow: dataset inputs, the callback's options as parameters, the library version.

- Each recorded split becomes an MLflow dataset input of the run (``MlflowClient.log_inputs``, what
  ``mlflow.log_input`` writes): name = the split, digest = a hash of its (sample id, given label) pairs,
  so two runs on the same data version show the same digest; source = where the run keeps that record;
  the input tag ``mlflow.data.context`` = the split.
- :func:`fix_dataset_input` describes the output of :func:`dq_plugins.fix`: a new dataset whose digest is
  that of the fix (rows changed and new labels) and whose source names the run it was made from (lineage).
- :func:`option_params` turns callback options into ``dq.<option>`` parameters (text, bounded length).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from dq_plugins.schema import ARTIFACT_DIR, RAW_DIR, SAMPLES_PATH

RECORD_SOURCE_TYPE = "dq_plugins.record"
"""``source_type`` of a recorded split."""
FIX_SOURCE_TYPE = "dq_plugins.fix"
"""``source_type`` of the output of ``fix()``."""
CONTEXT_TAG = "mlflow.data.context"
"""The input tag MLflow shows as a dataset's context (``mlflow.log_input(..., context=...)``)."""
VERSION_TAG = "dq_plugins.version"
"""Run tag: the dq_plugins version that wrote the results."""
MAX_PARAM_CHARS = 500
"""Longer option values are shortened (MLflow limits a parameter value's length)."""


def record_digest(ids: np.ndarray, labels: np.ndarray) -> str:
    """16 hex digits of SHA-256 over the (sample id, given label) pairs, as int64, in id order."""
    order = np.argsort(ids, kind="stable")
    pairs = np.stack([np.asarray(ids, np.int64)[order], np.asarray(labels, np.int64)[order]])
    return hashlib.sha256(np.ascontiguousarray(pairs).tobytes()).hexdigest()[:16]


def dataset_input(name: str, digest: str, source_type: str, source: Mapping[str, Any], context: str,
                  num_rows: int) -> Any:
    """An ``mlflow.entities.DatasetInput`` with ``context`` as its :data:`CONTEXT_TAG`."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest, source_type=source_type, source=json.dumps(dict(source)),
                      profile=json.dumps({"num_rows": int(num_rows)}))
    return DatasetInput(dataset=dataset, tags=[InputTag(key=CONTEXT_TAG, value=context)])


def split_input(split: str, ids: np.ndarray, labels: np.ndarray) -> Any:
    """The dataset input of one recorded split: ``ids`` (M,) recorded sample ids, ``labels`` (M,) their labels."""
    source = {"split": split, "record": f"{RAW_DIR}/{split}.npz", "samples": SAMPLES_PATH}
    return dataset_input(split, record_digest(ids, labels), RECORD_SOURCE_TYPE, source, split, len(ids))


def fix_dataset_input(record: Mapping[str, Any], context: str) -> Any:
    """The dataset input of a ``fix()`` output from its provenance ``record``; the source names the source run."""
    payload = json.dumps({key: record[key] for key in ("source_run_id", "split", "action", "sample_ids", "new_labels")},
                         sort_keys=True).encode()
    source = {"source_run_id": record["source_run_id"], "split": record["split"], "action": record["action"],
              "rule": record["rule"], "provenance": f"{ARTIFACT_DIR}/fix_provenance.json"}
    name = f"{record['split']}-{record['action']}"
    return dataset_input(name, hashlib.sha256(payload).hexdigest()[:16], FIX_SOURCE_TYPE, source, context,
                         record["dataset"]["rows_after"])


def describe_option(value: Any) -> str:
    """A parameter value for an option: plain values as text, a DataFrame by its shape and columns, a
    callable by its name, a mapping by its keys, rules by their names."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = str(value)
    elif hasattr(value, "columns") and hasattr(value, "shape"):
        text = f"DataFrame({value.shape[0]} rows; columns {list(map(str, value.columns))})"
    elif callable(value):
        text = getattr(value, "__qualname__", type(value).__name__)
    elif isinstance(value, Mapping):
        text = json.dumps(sorted(map(str, value)))
    elif isinstance(value, (list, tuple)) and len(value) > 20:
        text = f"{type(value).__name__} of {len(value)}"
    elif isinstance(value, (list, tuple)):
        text = json.dumps([getattr(item, "name", item) if not isinstance(item, (str, int, float)) else item
                           for item in value], default=str)
    else:
        text = type(value).__name__
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"


def option_params(options: Mapping[str, Any]) -> dict[str, str]:
    """``dq.<option>`` -> :func:`describe_option` of its value."""
    return {f"dq.{name}": describe_option(value) for name, value in options.items()}


def given_options(function: Any, local_vars: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of ``function`` (a callback's ``__init__``) with their values in ``local_vars``
    (its ``locals()``), ``self`` and ``**`` catch-alls left out."""
    import inspect

    names = [name for name, p in inspect.signature(function).parameters.items()
             if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return {name: local_vars[name] for name in names if name in local_vars}
