"""Apply the findings of a run to a dataset: drop or relabel the flagged samples, with provenance.

The function is exported as :func:`dq_plugins.fix` (this module is named ``fixes`` so that importing
it never shadows that function on the package).

    clean = dq_plugins.fix(train_ds, run_id, action="drop")                   # HF Dataset or torch dataset
    clean = dq_plugins.fix(train_ds, run_id, action="relabel", min_score=0.9)

Which rows (:func:`plan_fix`, pure): the rows of ``split`` in the run's ``dq/samples.parquet`` that
are flagged (``is_label_issue``, when ``only_flagged``) and whose ``mislabel_score`` is at least
``min_score`` (when given). ``relabel`` gives them the run's ``suggested_label``; rows whose suggested
label equals their label are left as they are.

How rows are matched: a Hugging Face ``datasets.Dataset`` by the values of its ``id_column``; any
other map-style dataset by position (the sample id of a dataset wrapped with
:func:`dq_plugins.with_ids` is its position). Apply ``fix`` to the dataset the run was trained on,
before any re-indexing, and keep ``with_ids`` outermost or innermost consistently.

Provenance (which run, which rule, how many rows changed, the changed ids and new labels) goes
into the source run: tags ``dq.fix.*`` (latest fix) and ``dq/fix_provenance.json`` (every fix, in
order), so the same change can be replayed on a new copy of the data.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dq_plugins.logs import warn
from dq_plugins.schema import PROVENANCE_PATH


class FixAction(StrEnum):
    """What :func:`fix` does to the selected rows."""

    DROP = "drop"
    RELABEL = "relabel"


@dataclass(frozen=True)
class FixPlan:
    """The rows a fix changes.

    Attributes:
        action: drop or relabel.
        sample_ids: (K,) int64 ids of the rows that change, ascending.
        new_labels: (K,) int64 labels they get (relabel), or ``None`` (drop).
        old_labels: (K,) int64 labels they had in the run.
        criteria: the rule that selected them, as plain values.
        num_selected: rows that met the rule (``>= K``: relabel skips rows whose suggested label is their label).
    """

    action: FixAction
    sample_ids: np.ndarray
    new_labels: np.ndarray | None
    old_labels: np.ndarray
    criteria: dict[str, Any]
    num_selected: int


def _check_action(action: FixAction | str) -> FixAction:
    try:
        return FixAction(action)
    except ValueError:
        raise ValueError(
            f"Expected argument `action` to be one of {[a.value for a in FixAction]} but got {action!r}."
        ) from None


def plan_fix(
    samples: pd.DataFrame,
    action: FixAction | str = FixAction.DROP,
    *,
    min_score: float | None = None,
    only_flagged: bool = True,
) -> FixPlan:
    """Select the rows of one split's per-sample table that a fix changes (pure).

    Args:
        samples: rows of one split with ``sample_id``, ``label``, ``mislabel_score``, ``is_label_issue``,
            ``suggested_label``.
        action: ``"drop"`` or ``"relabel"``.
        min_score: keep only rows with ``mislabel_score >= min_score`` (in ``[0, 1]``).
        only_flagged: keep only rows flagged by confident learning (``is_label_issue``).

    Raises:
        ValueError: unknown action, ``min_score`` outside ``[0, 1]``, or a rule that selects every row
            (``only_flagged=False`` without ``min_score``).
    """
    action = _check_action(action)
    if min_score is not None and not 0.0 <= float(min_score) <= 1.0:
        raise ValueError(f"Expected argument `min_score` in [0, 1] (a mislabel_score) but got {min_score}.")
    if not only_flagged and min_score is None:
        raise ValueError(
            "`only_flagged=False` without `min_score` would select every sample. HINT: pass `min_score=` "
            "(for example 0.9), or keep `only_flagged=True`."
        )
    selected = np.ones(len(samples), dtype=bool)
    if only_flagged:
        selected &= samples["is_label_issue"].to_numpy(dtype=bool)
    if min_score is not None:
        selected &= samples["mislabel_score"].to_numpy(dtype=np.float64) >= float(min_score)
    rows = samples[selected].sort_values("sample_id")
    num_selected = len(rows)
    if action is FixAction.RELABEL:
        rows = rows[rows["suggested_label"].to_numpy() != rows["label"].to_numpy()]
    criteria = {"only_flagged": bool(only_flagged), "min_score": None if min_score is None else float(min_score)}
    return FixPlan(
        action=action,
        sample_ids=rows["sample_id"].to_numpy(dtype=np.int64),
        new_labels=rows["suggested_label"].to_numpy(dtype=np.int64) if action is FixAction.RELABEL else None,
        old_labels=rows["label"].to_numpy(dtype=np.int64),
        criteria=criteria,
        num_selected=num_selected,
    )


# ---------------------------------------------------------------------------------------- torch datasets
class FixedDataset(Dataset):
    """A map-style dataset with some positions dropped and some labels replaced.

    Item ``i`` is ``dataset[positions[i]]``, with its label replaced when that position is in
    ``new_labels``. Dict items get ``label_column`` replaced; tuple or list items ``(x, y, ...)`` get
    ``y`` replaced; the new label keeps the type of the old one (tensor dtype, numpy or int).

    Args:
        dataset: the original map-style dataset (``__getitem__`` and ``__len__``).
        positions: (M,) int64 positions of ``dataset`` to keep, in order.
        new_labels: position -> new label.
        label_column: key of the label in dict items.
        id_column: key of the sample id in dict items; when present it must equal the position.
        provenance: the record of the fix that made this dataset.
    """

    def __init__(
        self,
        dataset: Any,
        positions: np.ndarray,
        new_labels: Mapping[int, int],
        *,
        label_column: str = "labels",
        id_column: str = "idx",
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.positions = np.asarray(positions, dtype=np.int64)
        self.new_labels = dict(new_labels)
        self.label_column = label_column
        self.id_column = id_column
        self.provenance = provenance or {}

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> Any:
        position = int(self.positions[index])
        item = self.dataset[position]
        if isinstance(item, Mapping) and self.id_column in item and int(item[self.id_column]) != position:
            raise ValueError(
                f"Item at position {position} carries {self.id_column}={int(item[self.id_column])}, but fix() matches "
                "a torch dataset's samples by position. HINT: apply fix() to the dataset whose positions are the "
                "sample ids of the run (the one given to `with_ids`)."
            )
        if position not in self.new_labels:
            return item
        return _with_label(item, self.new_labels[position], self.label_column, position)


def _same_type(old: Any, new: int) -> Any:
    if isinstance(old, torch.Tensor):
        return torch.as_tensor(new, dtype=old.dtype)
    if isinstance(old, np.generic):
        return type(old)(new)
    return int(new)


def _with_label(item: Any, label: int, label_column: str, position: int) -> Any:
    if isinstance(item, Mapping):
        if label_column not in item:
            raise KeyError(
                f"Item at position {position} has no label key {label_column!r} (keys: {sorted(item)}). "
                "HINT: pass `label_column=` to fix()."
            )
        return {**item, label_column: _same_type(item[label_column], label)}
    if isinstance(item, Sequence) and not isinstance(item, str) and len(item) >= 2:
        replaced = [item[0], _same_type(item[1], label), *item[2:]]
        return tuple(replaced) if isinstance(item, tuple) else replaced
    raise TypeError(
        f"fix() can relabel dict items or (inputs, label, ...) tuples, but item {position} is a {type(item).__name__}."
    )


def _is_hf_dataset(dataset: Any) -> bool:
    return type(dataset).__module__.startswith("datasets.")


def _apply_torch(dataset: Any, plan: FixPlan, id_column: str, label_column: str) -> tuple[FixedDataset, int]:
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"fix() needs a Hugging Face `datasets.Dataset` or a map-style dataset (with __getitem__ and __len__), "
            f"got {type(dataset).__name__}."
        )
    size = len(dataset)
    present = plan.sample_ids[plan.sample_ids < size]
    keep = np.ones(size, dtype=bool)
    new_labels: dict[int, int] = {}
    if plan.action is FixAction.DROP:
        keep[present] = False
    else:
        assert plan.new_labels is not None
        new_labels = {int(i): int(y) for i, y in zip(plan.sample_ids, plan.new_labels, strict=True) if i < size}
    fixed = FixedDataset(dataset, np.flatnonzero(keep), new_labels, label_column=label_column, id_column=id_column)
    return fixed, len(present)


def _apply_hf(dataset: Any, plan: FixPlan, id_column: str, label_column: str) -> tuple[Any, int]:
    columns = list(dataset.column_names)
    if id_column not in columns:
        raise ValueError(
            f"The dataset has no id column {id_column!r} (columns: {columns}). HINT: pass `id_column=` the column "
            "holding the sample ids the run recorded, or add one with `dq_plugins.with_ids(dataset)` before training."
        )
    if plan.action is FixAction.RELABEL and label_column not in columns:
        raise ValueError(
            f"The dataset has no label column {label_column!r} (columns: {columns}). HINT: pass `label_column=`."
        )
    ids = np.asarray(dataset[id_column], dtype=np.int64)
    present = int(np.isin(plan.sample_ids, ids).sum())
    changed = {int(i) for i in plan.sample_ids}
    if plan.action is FixAction.DROP:
        fixed = dataset.filter(
            lambda batch: [int(i) not in changed for i in batch], batched=True, input_columns=id_column,
            desc="dq_plugins.fix: drop",
        )
    else:
        assert plan.new_labels is not None
        mapping = {int(i): int(y) for i, y in zip(plan.sample_ids, plan.new_labels, strict=True)}

        def relabel(batch_ids: list, batch_labels: list) -> dict[str, list]:
            return {label_column: [mapping.get(int(i), y) for i, y in zip(batch_ids, batch_labels, strict=True)]}

        fixed = dataset.map(
            relabel, batched=True, input_columns=[id_column, label_column], features=dataset.features,
            desc="dq_plugins.fix: relabel",
        )
    return fixed, present


def _check_labels(dataset: Any, plan: FixPlan, id_column: str, label_column: str) -> None:
    """Warn when the dataset's labels at the changed ids differ from the labels the run saw."""
    if _is_hf_dataset(dataset):
        if label_column not in dataset.column_names:
            return
        frame = pd.DataFrame({"id": dataset[id_column], "label": dataset[label_column]})
        seen = frame.set_index("id")["label"].reindex(plan.sample_ids)
    else:
        size = len(dataset)
        ids = plan.sample_ids[plan.sample_ids < size][:200]  # a sample: items may be costly to load
        seen = pd.Series([_label_of(dataset[int(i)], label_column) for i in ids], index=ids, dtype="float64")
    expected = pd.Series(plan.old_labels, index=plan.sample_ids).reindex(seen.index)
    known = seen.notna() & expected.notna()
    mismatched = int((seen[known].astype(np.int64) != expected[known]).sum())
    if mismatched:
        warn(
            f"dq_plugins.fix: {mismatched} of the {int(known.sum())} rows checked have a different label in the "
            "dataset than in the run. HINT: pass the dataset the run was trained on (same ids, same labels).",
            UserWarning,
            stacklevel=3,
        )


def _label_of(item: Any, label_column: str) -> float:
    if isinstance(item, Mapping):
        value = item.get(label_column)
    elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) >= 2:
        value = item[1]
    else:
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


# ---------------------------------------------------------------------------------------- provenance
def rule_text(criteria: Mapping[str, Any]) -> str:
    """The selection rule of a fix as a readable predicate, e.g. ``is_label_issue and mislabel_score >= 0.9``."""
    parts = ["is_label_issue"] if criteria["only_flagged"] else []
    if criteria["min_score"] is not None:
        parts.append(f"mislabel_score >= {criteria['min_score']}")
    return " and ".join(parts)


def _provenance(plan: FixPlan, run_id: str, split: str, dataset: Any, fixed: Any, present: int) -> dict[str, Any]:
    from dq_plugins import __version__

    return {
        "source_run_id": run_id,
        "split": split,
        "action": plan.action.value,
        "criteria": plan.criteria,
        "rule": rule_text(plan.criteria),
        "rows_selected": plan.num_selected,
        "rows_changed": present,
        "rows_not_in_dataset": int(len(plan.sample_ids) - present),
        "dataset": {"type": f"{type(dataset).__module__}.{type(dataset).__qualname__}", "rows_before": len(dataset),
                    "rows_after": len(fixed)},
        "sample_ids": plan.sample_ids.tolist(),
        "old_labels": plan.old_labels.tolist(),
        "new_labels": None if plan.new_labels is None else plan.new_labels.tolist(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dq_plugins_version": __version__,
    }


def _log_provenance(client: Any, run_id: str, record: dict[str, Any]) -> None:
    """Append ``record`` to the run's :data:`PROVENANCE_PATH` and set the ``dq.fix.*`` tags."""
    from dq_plugins.sinks.offline import artifact_paths, download

    with tempfile.TemporaryDirectory(prefix="dq_fix_") as tmp:
        history: list[dict[str, Any]] = []
        if PROVENANCE_PATH in artifact_paths(client, run_id):
            history = json.loads(download(client, run_id, PROVENANCE_PATH, Path(tmp) / "old").read_text())["fixes"]
        history.append(record)
        local = Path(tmp) / "new" / Path(PROVENANCE_PATH).name
        local.parent.mkdir(parents=True)
        local.write_text(json.dumps({"fixes": history}, indent=1))
        client.log_artifact(run_id, str(local), artifact_path=str(Path(PROVENANCE_PATH).parent))
    tags = {
        "dq.fix.count": str(len(history)),
        "dq.fix.last_action": record["action"],
        "dq.fix.last_rule": record["rule"],
        "dq.fix.last_rows_changed": str(record["rows_changed"]),
        "dq.fix.last_split": record["split"],
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def _log_fixed_dataset(client: Any, run_id: str, record: dict[str, Any]) -> None:
    """Log the fixed dataset as an MLflow dataset whose source is the source run (lineage): into the source run
    (context ``fix_output``), and into MLflow's active run, if another one is open (context ``train``: the run
    that retrains on it)."""
    import mlflow

    from dq_plugins.sinks.datasets import fix_dataset_input

    client.log_inputs(run_id, datasets=[fix_dataset_input(record, "fix_output")])
    active = mlflow.active_run()
    if active is not None and active.info.run_id != run_id:
        mlflow.MlflowClient().log_inputs(active.info.run_id, datasets=[fix_dataset_input(record, "train")])


def fix(
    dataset: Any,
    run_id: str,
    action: FixAction | str = FixAction.DROP,
    *,
    split: str = "train",
    min_score: float | None = None,
    only_flagged: bool = True,
    id_column: str = "idx",
    label_column: str = "labels",
    tracking_uri: str | None = None,
    log_provenance: bool = True,
    return_provenance: bool = False,
) -> Any:
    """Drop or relabel the samples a run flagged, and return the cleaned dataset.

    Args:
        dataset: a Hugging Face ``datasets.Dataset`` (rows matched by ``id_column``) or a map-style
            torch dataset (rows matched by position, see the module docstring).
        run_id: the MLflow run whose ``dq/samples.parquet`` names the rows.
        action: ``"drop"`` removes the rows; ``"relabel"`` sets their label to ``suggested_label``.
        split: which rows of the run to use.
        min_score: also require ``mislabel_score >= min_score``.
        only_flagged: require ``is_label_issue`` (confident learning's flag).
        id_column: id column of a HF dataset; for dict items of a torch dataset, checked against the position.
        label_column: label column (HF) or key of dict items (torch) to relabel; tuple items relabel element 1.
        tracking_uri: ``None`` means MLflow's current tracking URI.
        log_provenance: record the fix in the source run (tags ``dq.fix.*`` and ``dq/fix_provenance.json``).
        return_provenance: return ``(dataset, provenance dict)`` instead of the dataset alone.

    Returns:
        A new ``datasets.Dataset``, or a :class:`FixedDataset` wrapping the torch dataset (its
        ``provenance`` attribute holds the record); with ``return_provenance``, a tuple.

    Raises:
        ValueError: unknown action, bad ``min_score``, a rule selecting every row, a missing column,
            or a split the run does not have.
        FileNotFoundError: the run has no ``dq/samples.parquet``.
    """
    from dq_plugins.sinks.offline import make_client, read_samples

    plan_action = _check_action(action)
    if hasattr(dataset, "keys") and type(dataset).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise TypeError(
            f"fix() works on one split, but got a {type(dataset).__name__} with {list(dataset.keys())}. "
            f"HINT: pass `dataset[{split!r}]`."
        )
    client = make_client(tracking_uri)
    plan = plan_fix(read_samples(client, run_id, split=split), plan_action, min_score=min_score,
                    only_flagged=only_flagged)
    if _is_hf_dataset(dataset):
        fixed, present = _apply_hf(dataset, plan, id_column, label_column)
    else:
        fixed, present = _apply_torch(dataset, plan, id_column, label_column)
    _check_labels(dataset, plan, id_column, label_column)
    record = _provenance(plan, run_id, split, dataset, fixed, present)
    if present < len(plan.sample_ids):
        warn(
            f"dq_plugins.fix: {len(plan.sample_ids) - present} of the {len(plan.sample_ids)} sample ids to "
            f"{plan.action.value} are not in the dataset and were skipped. HINT: pass the dataset the run was "
            "trained on.",
            UserWarning,
            stacklevel=2,
        )
    if isinstance(fixed, FixedDataset):
        fixed.provenance = record
    if log_provenance:
        _log_provenance(client, run_id, record)
        _log_fixed_dataset(client, run_id, record)
    return (fixed, record) if return_provenance else fixed
