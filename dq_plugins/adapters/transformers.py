"""Hugging Face ``Trainer`` adapter: :class:`DataQualityCallback`.

Usage::

    from dq_plugins.transformers import DataQualityCallback

    train_ds = train_ds.map(lambda ex, i: {"idx": i}, with_indices=True)   # or dq_plugins.with_ids(train_ds)
    callback = DataQualityCallback()
    trainer = Trainer(model=model, args=TrainingArguments(...), train_dataset=train_ds,
                      eval_dataset=val_ds, processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    callback.run_id                           # the MLflow run that holds dq/samples.parquet etc.

How the callback sees ids, labels and logits
--------------------------------------------
The ``Trainer`` gives callbacks neither the batch nor the model output, and it drops every dataset
column that ``model.forward`` does not name (``remove_unused_columns=True``). So at ``on_init_end``,
before the Trainer first inspects the model, the callback binds a thin wrapper as the model
instance's ``forward``: its signature is the original one plus the id column, so the Trainer keeps
that column and passes it to the model; the wrapper pops it, calls the original ``forward`` and hands
``(ids, logits)`` to the callback on the model's device, without a host sync. accelerate's mixed
precision wraps ``model.forward.__func__``, so it wraps this wrapper and autocast still applies.

Labels are not taken from the batch: label smoothing and ``compute_loss_func`` make the Trainer pop
``labels`` before calling the model. They are looked up by sample id in a device table built once
from the dataset's label column (train: at ``on_train_begin``; validation: at the first evaluation).
Training batches are recorded in the wrapper (``model.training``); evaluation batches are held until
``on_prediction_step``, where the evaluation dataloader tells which dataset they came from.

After training the wrapper stays on the model but only pops the id keyword: the Trainer caches the
column list it derived from the signature, so a later ``trainer.evaluate()`` still passes ids.

Prediction latency (column ``latency_ms``, see :mod:`dq_plugins.recording.latency`): the wrapper also times the
original ``forward`` it calls, with CUDA events when the batch is on a GPU (read once per epoch, no
host sync in the step) or ``time.perf_counter`` otherwise; a sample's latency is its batch's forward
time divided by the batch size.

Metadata columns (``metadata_keys=``) never pass through the forward or the data collator (a string
column could not be batched as a tensor): the Trainer drops them with the other unused columns, and
the callback reads them once by sample id from the Trainer's own ``train_dataset`` / ``eval_dataset`` at
``on_train_begin``. Callbacks get no reference to the Trainer, so it is found as the ``self`` of the
Trainer method that runs the callback (:func:`_calling_trainer`); without one (a callback driven by
hand) the dataloader's dataset is read instead, which keeps the columns when
``remove_unused_columns=False``.

Checkpoints: ``on_save`` writes the record (:meth:`DynamicsSession.state_dict`) to
``<checkpoint>/dq_plugins_state.pt``, and ``on_train_begin`` of a resumed run reads it back. The
Trainer's own mechanism for stateful callbacks (``ExportableState``) stores JSON in
``trainer_state.json``, is off by default (``restore_callback_states_from_checkpoint``) and replaces
the callback object the user holds, so it is not used.
"""

from __future__ import annotations

import inspect
import math
import os
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from dq_plugins.logs import warn
from dq_plugins.adapters.batch import find_logits
from dq_plugins.adapters.compat import require
from dq_plugins.adapters.options import TRANSFORMERS_RENAMED, check_projection
from dq_plugins.recording.embeddings import find_head, find_tensor, pool
from dq_plugins.recording.latency import ForwardTimer, Span
from dq_plugins.deprecation import renamed_options
from dq_plugins.recording.session import DynamicsSession, SessionConfig
from dq_plugins.schema import COMPUTED_COLUMNS, TRAIN, VALIDATION
from dq_plugins.sinks.datasets import given_options
from dq_plugins.recording.tasks import Task, TaskRouter, model_task, parse_task
from dq_plugins.sinks.mlflow_sink import MlflowSink

_transformers = require("transformers", "transformers accelerate")
TrainerCallback = _transformers.TrainerCallback

LABEL_COLUMNS: tuple[str, ...] = ("labels", "label", "label_ids")
"""Label columns tried in order when ``label_key`` is ``None`` (the names the Trainer's collators accept)."""

STATE_FILE = "dq_plugins_state.pt"
"""File inside each Trainer checkpoint folder that holds the record so far."""

_TAP_ATTRIBUTE = "_dq_plugins_tap"
"""Attribute of the wrapper function that points to its :class:`_IdTap` (found under accelerate's wrappers)."""


def _ids_line(id_column: str, split: str) -> str:
    """The one line that adds an id column to the train (or eval) dataset, and the helper that does the same."""
    ds = "train_ds" if split == TRAIN else "eval_ds"
    helper = f"dq_plugins.with_ids({ds})" if id_column == "idx" else f"dq_plugins.with_ids({ds}, id_key={id_column!r})"
    return f"`{ds} = {ds}.map(lambda ex, i: {{{id_column!r}: i}}, with_indices=True)` (or `{ds} = {helper}`)"


def _add_ids_hint(id_column: str, split: str) -> str:
    return f"HINT: add it in one line before building the Trainer: {_ids_line(id_column, split)}."


# ---------------------------------------------------------------------------------- forward tap
class _IdTap:
    """What the forward wrapper needs: the id keyword it pops and who records (``None``: nobody)."""

    def __init__(self, id_column: str) -> None:
        self.id_column = id_column
        self.recorder: DataQualityCallback | None = None
        self.attention_mask: torch.Tensor | None = None
        self.input_ids: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None  # the batch's targets, read by multi-label / token tasks
        self.timer: ForwardTimer | None = None  # times the original forward while set


def _tap_of(forward: Any, id_column: str) -> _IdTap | None:
    """The tap behind ``forward`` (possibly under accelerate's autocast wrappers) for ``id_column``."""
    func, seen = forward, 0
    while func is not None and seen < 32:  # accelerate chains its wrappers through ``__wrapped__``
        func = getattr(func, "__func__", func)
        tap = getattr(func, _TAP_ATTRIBUTE, None)
        if isinstance(tap, _IdTap) and tap.id_column == id_column:
            return tap
        func, seen = getattr(func, "__wrapped__", None), seen + 1
    return None


def _forward_owner(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``forward`` the Trainer inspects and that receives the batch keywords.

    For a PEFT model that is the base model (the Trainer inspects ``get_base_model().forward`` and
    PEFT passes unknown keywords down to it); otherwise the model itself.
    """
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model) and type(model).__module__.startswith("peft."):
        return get_base_model()
    return model


def _install_tap(model: torch.nn.Module, id_column: str) -> _IdTap:
    """Bind a forward wrapper that accepts ``id_column`` to ``model`` (once) and return its tap."""
    current = model.forward
    tap = _tap_of(current, id_column)
    if tap is not None:
        return tap
    signature = inspect.signature(current)
    if id_column in signature.parameters:
        raise ValueError(
            f"`{type(model).__name__}.forward` already takes an argument `{id_column}`, so the sample ids cannot "
            f"use that name. HINT: store the ids in another column and pass `id_key=` that name to the callback."
        )
    tap = _IdTap(id_column)
    # Call the original through the instance it is bound to *at call time*, so a deep copy of the
    # model (EMA, best-model copies) runs its own weights.
    bound_to_model = getattr(current, "__self__", None) is model
    original: Callable[..., Any] = current.__func__ if bound_to_model else current

    def forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs.pop(id_column, None)
        tap.attention_mask = kwargs.get("attention_mask")
        tap.input_ids = kwargs.get("input_ids")
        tap.labels = kwargs.get("labels")
        timer = tap.timer
        if timer is not None:
            timer.start(ids.device if isinstance(ids, torch.Tensor) else None)
        try:
            output = original(self, *args, **kwargs) if bound_to_model else original(*args, **kwargs)
        finally:
            if timer is not None:
                timer.stop()
        recorder = tap.recorder
        if recorder is not None:
            recorder._capture(ids, output, self.training)
        return output

    parameters = list(signature.parameters.values())
    position = next(
        (i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters)
    )
    parameters.insert(position, inspect.Parameter(id_column, inspect.Parameter.KEYWORD_ONLY, default=None))
    parameters.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY))
    forward.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    forward.__name__ = "forward"
    forward.__qualname__ = f"{type(model).__name__}.forward"
    forward.__doc__ = getattr(current, "__doc__", None)
    setattr(forward, _TAP_ATTRIBUTE, tap)
    # No ``__wrapped__``: accelerate's ``unwrap_model`` follows that chain and would drop the wrapper.
    model.forward = types.MethodType(forward, model)
    return tap


def _logits_of(output: Any) -> torch.Tensor | None:
    """The logits in a model output: ``.logits``, or the first non-scalar tensor of a tuple (return_dict=False)."""
    if isinstance(output, tuple):
        return next((t for t in output if isinstance(t, torch.Tensor) and t.ndim >= 2), None)
    return find_logits(output)


# ---------------------------------------------------------------------------------- labels by id
def _dataset_of(dataloader: Any) -> Any:
    return getattr(dataloader, "dataset", None)


def _read_columns(
    dataset: Any, id_column: str, label_column: str | None, split: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """Return (ids, labels, label column name) of a map-style dataset, host arrays of equal length."""
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError(
            f"dq_plugins needs a map-style {split} dataset (with __len__ and __getitem__) to read its labels by "
            f"sample id, but got {type(dataset).__name__}. HINT: pass a `datasets.Dataset` (not an IterableDataset)."
        )
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # a torch Dataset of dicts: read one item for the names
        first = dataset[0] if len(dataset) else {}
        if not isinstance(first, Mapping):
            raise ValueError(
                f"dq_plugins expects the {split} dataset to yield dicts holding `{id_column}` and a label, but its "
                f"items are {type(first).__name__}. {_add_ids_hint(id_column, split)}"
            )
        columns = list(first)
    if id_column not in columns:
        raise ValueError(
            f"The {split} dataset has no column `{id_column}` holding the sample ids (its columns are "
            f"{sorted(map(str, columns))}). {_add_ids_hint(id_column, split)}"
        )
    candidates = (label_column,) if label_column is not None else LABEL_COLUMNS
    found = next((name for name in candidates if name in columns), None)
    if found is None:
        fix = (
            "HINT: the Trainer drops columns that the model's forward does not take; name the label column "
            "`labels` or `label`."
            if label_column is not None
            else "HINT: pass `label_key=` the column that holds the class labels."
        )
        raise ValueError(
            f"The {split} dataset has no label column {' or '.join(f'`{c}`' for c in candidates)} "
            f"(its columns are {sorted(map(str, columns))}). {fix}"
        )
    if hasattr(dataset, "with_format") and hasattr(dataset, "column_names"):  # datasets.Dataset: one Arrow read
        view = dataset.with_format("numpy")
        ids, labels = np.asarray(view[id_column]), np.asarray(view[found])
    else:
        items = [dataset[i] for i in range(len(dataset))]
        ids = np.asarray([np.asarray(item[id_column]) for item in items])
        labels = np.asarray([np.asarray(item[found]) for item in items])
    for name, values, role in ((id_column, ids, "sample ids"), (found, labels, "class labels")):
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"Expected one integer per row in column `{name}` of the {split} dataset ({role}), but got dtype "
                f"{values.dtype} and shape {values.shape}."
                + (f" {_add_ids_hint(id_column, split)}" if role == "sample ids" else
                   " HINT: pass class indices, not one-hot, soft or string labels.")
            )
    return ids.astype(np.int64), labels.astype(np.int64), found


# ---------------------------------------------------------------------------------- metadata by id
def _calling_trainer() -> Any:
    """The ``transformers.Trainer`` whose method is running this callback, or ``None``.

    Callbacks get no reference to the Trainer; the event reaches them through
    ``Trainer._inner_training_loop -> CallbackHandler.call_event``, so the Trainer is the ``self`` of a
    frame a few levels up the stack.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(32):
            if frame is None:
                return None
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, _transformers.Trainer):
                return candidate
            frame = frame.f_back
        return None
    finally:
        del frame


def _end_active_run(run_id: str) -> Callable[[str], None]:
    """A function that ends MLflow's active (fluent) run with a status, if it is still ``run_id``."""

    def end(status: str) -> None:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)

    return end


def _column_names(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    first = dataset[0] if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and len(dataset) else {}
    return list(first) if isinstance(first, Mapping) else []


def _scalar(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        return value.item()
    return value


def _read_metadata(dataset: Any, id_column: str, columns: Sequence[str], split: str, hint: str) -> Any:
    """``sample_id`` and ``columns`` of a map-style dataset, one row per dataset row (a pandas DataFrame)."""
    import pandas as pd

    available = _column_names(dataset)
    missing = [c for c in columns if c not in available]
    if missing:
        raise ValueError(
            f"`metadata_keys` names {missing}, but the {split} dataset has no such column (its columns are "
            f"{sorted(map(str, available))}). HINT: {hint}"
        )
    if id_column not in available:
        raise ValueError(f"The {split} dataset has no column `{id_column}` holding the sample ids. "
                         f"{_add_ids_hint(id_column, split)}")
    if hasattr(dataset, "select_columns") and hasattr(dataset, "to_pandas"):  # datasets.Dataset: one Arrow read
        frame = dataset.select_columns([id_column, *columns]).to_pandas()
    else:
        items = [dataset[i] for i in range(len(dataset))]
        frame = pd.DataFrame({name: [_scalar(item[name]) for item in items] for name in (id_column, *columns)})
    for name in columns:
        if frame[name].dtype == object:
            bad = frame[name].map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray, torch.Tensor)))
            if bad.any():
                raise ValueError(
                    f"Metadata column `{name}` of the {split} dataset holds {type(frame[name][bad].iloc[0]).__name__} "
                    "values; slices need one scalar (a number or a string) per sample. HINT: reduce it to a scalar "
                    "column (e.g. its length) and name that one."
                )
    ids = frame[id_column].to_numpy()
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"Expected integer sample ids in column `{id_column}` of the {split} dataset but got "
                         f"dtype {ids.dtype}. {_add_ids_hint(id_column, split)}")
    return frame.rename(columns={id_column: "sample_id"})


class _LabelTable:
    """Labels of one split indexed by slot (the sample id, unless the ids are sparse: see
    :meth:`DynamicsSession.set_sample_ids`): (N,) int64, -1 for slots absent from the dataset.

    Built on the host, moved once to the device of the first lookup. ``slots``: the slot of each of ``ids``
    (``None``: the ids); messages name the ids.
    """

    def __init__(self, ids: np.ndarray, labels: np.ndarray, capacity: int, id_column: str, split: str,
                 slots: np.ndarray | None = None) -> None:
        distinct = np.unique(ids).size
        if distinct < ids.size:
            values, counts = np.unique(ids, return_counts=True)
            raise ValueError(
                f"The {split} dataset has {ids.size} rows but only {distinct} distinct sample ids in column "
                f"`{id_column}` (e.g. id {int(values[counts > 1][0])} is in {int(counts.max())} rows): different "
                "samples share an id, so their records would be merged. This happens with "
                "`concatenate_datasets([with_ids(a), with_ids(b)])`, both counting from 0. HINT: add the ids after "
                "concatenating, `with_ids(concatenate_datasets([a, b]))`, or give the second part its own range, "
                "`with_ids(b, offset=len(a))`."
            )
        slots = ids if slots is None else slots
        table = np.full(capacity, -1, dtype=np.int64)
        table[slots] = labels
        conflict = np.flatnonzero(table[slots] != labels)
        if conflict.size:
            row = int(conflict[0])
            raise ValueError(
                f"Sample id {int(ids[row])} appears in several rows of the {split} dataset with different labels "
                f"(column `{id_column}`): each sample needs its own id. {_add_ids_hint(id_column, split)}"
            )
        self.capacity = capacity
        self._host = torch.from_numpy(table)
        self._device_table: torch.Tensor | None = None

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) labels of (B,) ids on ``ids.device``; ids out of range get some label (the ledger drops them)."""
        table = self._device_table
        if table is None or table.device != ids.device:
            table = self._device_table = self._host.to(ids.device)
        return table[ids.long().clamp(0, self.capacity - 1)]


def _max_length(dataset: Any, column: str = "input_ids") -> int | None:
    """The longest ``column`` sequence of a map-style dataset (one Arrow pass for ``datasets.Dataset``);
    ``None`` when the dataset has no such column (then the first batch's length is the recorded width)."""
    if column not in _column_names(dataset):
        return None
    table = getattr(dataset, "data", None)
    if hasattr(dataset, "select_columns") and table is not None:
        import pyarrow.compute as pc

        lengths = pc.list_value_length(dataset.select_columns([column]).data.column(column))
        return int(pc.max(lengths).as_py() or 0) or None
    return max((len(dataset[i][column]) for i in range(len(dataset))), default=0) or None


def _token_strings(datasets: dict[str, Any], id_column: str, convert: Callable[[list[int]], list[str]] | None
                   ) -> Callable[[str, int], Sequence[str] | None] | None:
    """``(split, sample_id) -> tokens`` read from the split's dataset by id (for the HTML view), from the
    first attended position on (a row padded on the left in the dataset loses its padding, as the
    recorded token positions count from there)."""
    if convert is None:
        return None
    rows: dict[str, dict[int, int]] = {}

    def strings(split: str, sample_id: int) -> Sequence[str] | None:
        dataset = datasets.get(split)
        if dataset is None or "input_ids" not in _column_names(dataset):
            return None
        if split not in rows:
            ids = dataset[id_column] if hasattr(dataset, "column_names") else [dataset[i][id_column] for i in range(len(dataset))]
            rows[split] = {int(v): i for i, v in enumerate(ids)}
        row = rows[split].get(int(sample_id))
        if row is None:
            return None
        item = dataset[row]
        tokens = [int(t) for t in item["input_ids"]]
        mask = item.get("attention_mask") if isinstance(item, Mapping) else None
        if mask is not None and len(mask) == len(tokens):
            tokens = tokens[next((i for i, m in enumerate(mask) if m), 0):]
        return list(convert(tokens))

    return strings


def _checkpoint_folder(args: Any, state: Any) -> str:
    """Where the Trainer writes the checkpoint of the current step (``<output_dir>/checkpoint-<step>``)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


def _check_metadata_keys(columns: Sequence[str], id_column: str, label_column: str | None) -> tuple[str, ...]:
    if isinstance(columns, str):
        raise ValueError(f"Expected `metadata_keys` to be a list of column names but got the string {columns!r}. "
                         f"HINT: metadata_keys=[{columns!r}].")
    columns = tuple(columns)
    bad = [c for c in columns if not isinstance(c, str) or not c]
    if bad:
        raise ValueError(f"Expected `metadata_keys` to hold column names (strings) but got {bad}.")
    taken = {id_column, *(LABEL_COLUMNS if label_column is None else (label_column,))}
    reserved = [c for c in columns if c in taken or c in COMPUTED_COLUMNS]
    if reserved:
        raise ValueError(
            f"`metadata_keys` {reserved} name the id or label column or a column dq_plugins computes "
            f"({sorted(COMPUTED_COLUMNS)}). HINT: name only extra dataset columns such as "
            "'source'; rename a dataset column that clashes."
        )
    return columns


# ---------------------------------------------------------------------------------- callback
class DataQualityCallback(TrainerCallback):
    """Record per-sample training dynamics in a ``transformers.Trainer`` and log label issues to MLflow.

    The train (and eval) dataset needs an integer sample-id column ``id_key`` (0-based, stable
    across epochs): ``ds.map(lambda ex, i: {"idx": i}, with_indices=True)`` or
    :func:`dq_plugins.with_ids`. Works with default ``TrainingArguments`` (the id column survives
    ``remove_unused_columns=True``), gradient accumulation, dataloader workers, mixed precision,
    label smoothing, ``compute_loss_func`` and ``compute_loss`` overrides. Pass the callback to
    ``Trainer(callbacks=[...])``: it attaches to the model while the Trainer is built.

    Args:
        id_key: dataset column of the sample ids.
        label_key: dataset column of the class labels; ``None`` tries "labels", "label", "label_ids".
        num_samples: number of train sample ids; ``None`` uses ``len(train_dataset)``.
        num_val_samples: number of validation sample ids; ``None`` uses ``len(eval_dataset)``.
        record_validation: also record the (first) eval dataset as split "validation". Evaluations run
            during an epoch (``eval_strategy="steps"``) or at its end count for that epoch; when an epoch
            has several, the last one is kept. ``eval_on_start`` is not recorded.
        early_epochs: the first epochs, averaged by EL2N and by the early signals of ``mislabel_score``;
            ``None`` uses the first 20% of epochs.
        max_issue_rows: rows of ``dq/issues.json``.
        tracking_uri, experiment_name, run_name: where to create a run when the Trainer has no active
            MLflow run (``report_to`` without "mlflow"); ``None``: MLflow's current tracking URI and experiment.
        fallback_dir: local folder that keeps the results when MLflow cannot be reached.
        embeddings: capture the input of the classification head (the pooled representation) as
            each sample's embedding for outliers, near-duplicates, neighbour label disagreement,
            clusters and the 2D map; ``False`` switches all of that off.
        logits_module: dotted name of the classification head (its output is the logits, its INPUT
            the embedding, as with the Lightning callback's ``logits_module``); ``None`` finds
            ``classifier`` / ``score`` / ``classification_head``. 3-D head inputs (RoBERTa-style
            heads) are pooled: first token, or the mean under the attention mask for ``score`` heads.
        final_pass: after training, one eval-mode pass over the train loader (inference mode,
            autocast under bf16/fp16) refreshes the train embeddings with the final weights;
            ``False`` keeps those captured during the last epoch.
        texts: train texts by sample id (a sequence indexed by id, or a mapping), shown on hover in
            ``dq/embedding_map.html``.
        metadata_keys: columns of the train (and eval) dataset, one scalar per row (numbers or
            strings), kept as columns of ``dq/samples.parquet`` and sliced on (``dq/slices.json``, weak
            slices). They never reach the model or the data collator: they are read by sample id from
            the Trainer's datasets at train begin (see the module docstring); a missing column is an
            error there.
        metadata: a DataFrame with a ``sample_id`` column (and optionally ``split``): its columns join
            ``dq/samples.parquet`` and are sliced on (``dq/slices.json``, ``dq/weak_slices.json``).
        rules: :class:`dq_plugins.rules.Rule` objects, or YAML text / a path, validated at
            construction and evaluated after training (``dq/rules.json``). Rules with
            ``on_validation=True`` are also evaluated after each evaluation on its record (fail fast: see
            :meth:`~dq_plugins.recording.session.DynamicsSession.check_validation_rules`).
        projection: the 2D map of the embeddings: "graph" (a UMAP-style layout in torch, seconds,
            no compilation), "umap" (umap-learn, the extra ``dq_plugins[umap]``; its first use in a
            process compiles numba kernels, minutes on CPU), "pca", or ``None``/"auto":
            ``$DQ_PLUGINS_PROJECTION`` if set, else "graph".
        pools: name -> :class:`dq_plugins.selection.EmbeddingPool` for ``SelectSimilar`` actions.
        fingerprints: fingerprint each sample's ``input_ids`` under its ``attention_mask`` on the device
            (an exact hash and a 32-d bag-of-tokens sketch, :mod:`dq_plugins.recording.fingerprints`) to
            find exact and near copies within a split and eval rows that copy a train row
            (``train_duplicate_of``, ``dq/leakage.json``).
        task: ``None`` (default) takes the task from the model: ``config.problem_type ==
            "multi_label_classification"`` -> "multilabel" (float multi-hot ``labels``), a
            ``*ForTokenClassification`` model -> "token_classification" (``labels`` per token, -100 where
            ignored); otherwise single-label. These tasks read the targets from the batch the model gets
            (``labels``) and record sequences up to the longest ``input_ids`` of each dataset (see
            :mod:`dq_plugins.recording.tasks`); embeddings as for single-label (a token model's head input
            is mean-pooled under the attention mask, one embedding per sequence); rules are not used for them
            yet (a warning).
        history_dir: root folder of the per-epoch record files (one `.npz` file per epoch and
            split; checkpoints only point to them, so they do not grow with the epochs); ``None``:
            ``$DQ_PLUGINS_HISTORY_DIR`` or the temp folder. A fit's files are deleted once its raw record is
            uploaded (a resume then reads the epochs from the run); a killed fit leaves them for its resume.
        memory_budget_mb: the most the recording may allocate (device + host RAM); a split that would
            need more fails at fit start or at its first batch, before allocating. ``None``: 16384.
        embeddings_upload_mb: ``dq/embeddings/<split>.npz`` holds every embedding up to this size
            (fp16, before compression); above it a random sample of rows that fits.

    The former names ``id_column``, ``label_column``, ``head_module``, ``metadata_columns`` and
    ``el2n_epochs`` still work, with a ``FutureWarning`` naming the new one.

    Attributes:
        run_id: the MLflow run holding the results (set at train start on the main process). With
            ``report_to="mlflow"`` it is the Trainer's own run.
        result: the :class:`~dq_plugins.analysis.pipeline.AnalysisResult` after training (main process), else ``None``.
    """

    def __init__(
        self,
        id_key: str = "idx",
        label_key: str | None = None,
        num_samples: int | None = None,
        num_val_samples: int | None = None,
        record_validation: bool = True,
        early_epochs: int | None = None,
        max_issue_rows: int = 500,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        fallback_dir: str = "dq_artifacts",
        embeddings: bool = True,
        logits_module: str | None = None,
        final_pass: bool = True,
        texts: Any = None,
        metadata_keys: Sequence[str] = (),
        metadata: Any = None,
        rules: Any = None,
        pools: Mapping[str, Any] | None = None,
        projection: str | None = None,
        fingerprints: bool = True,
        task: str | None = None,
        history_dir: str | None = None,
        memory_budget_mb: float | None = None,
        embeddings_upload_mb: float = 256,
        **renamed: Any,
    ) -> None:
        if renamed:
            options = renamed_options(
                DataQualityCallback.__init__, renamed, TRANSFORMERS_RENAMED,
                {"id_key": id_key, "label_key": label_key, "logits_module": logits_module,
                 "metadata_keys": metadata_keys, "early_epochs": early_epochs},
            )
            id_key, label_key, logits_module = options["id_key"], options["label_key"], options["logits_module"]
            metadata_keys, early_epochs = options["metadata_keys"], options["early_epochs"]
        check_projection(projection)
        self._options = given_options(DataQualityCallback.__init__, locals())  # logged as dq.* parameters
        self._task_option: Task | None = parse_task(task)
        # (ids, logits, labels, attention mask, pooled embeddings) of the eval batches of a task
        self._task_stash: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None,
                                     torch.Tensor | None]] = []
        self._task_datasets: dict[str, Any] = {}
        self.embeddings = embeddings
        self.fingerprints = fingerprints
        self.logits_module = logits_module
        self.final_pass = final_pass
        self.texts = texts
        self._head_handle: Any = None
        self._head_name = ""
        self._captured_embeddings: torch.Tensor | None = None
        self._final_split: str | None = None
        self.label_key = label_key
        self.record_validation = record_validation
        self.session = DynamicsSession(
            SessionConfig(id_key=id_key, label_key=label_key or LABEL_COLUMNS[0], num_samples=num_samples,
                          num_val_samples=num_val_samples, early_epochs=early_epochs, max_issue_rows=max_issue_rows,
                          fallback_dir=fallback_dir,
                          metadata_columns=_check_metadata_keys(metadata_keys, id_key, label_key),
                          metadata=metadata, rules=rules, pools=pools, projection=projection,
                          history_dir=history_dir, memory_budget_mb=memory_budget_mb,
                          embeddings_upload_mb=embeddings_upload_mb)
        )
        self._forward_timer = ForwardTimer()
        self._val_metadata_read = False
        self._sink_options = {"tracking_uri": tracking_uri, "experiment_name": experiment_name, "run_name": run_name}
        self._sink: MlflowSink | None = None
        self._tap: _IdTap | None = None
        self._train_labels: _LabelTable | None = None
        self._val_labels: _LabelTable | None = None
        self._val_key: Any = None
        self._val_disabled = False
        self._warned_other_eval = False
        self._eval_stash: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[Span], Any]] = []
        self._epoch: int | None = None
        self.run_id: str | None = None
        self._tasks = TaskRouter(self._task_option, self.session, label_key or LABEL_COLUMNS[0])

    @property
    def id_key(self) -> str:
        return self.session.config.id_key

    @property
    def result(self):
        return self.session.result

    # ------------------------------------------------------------------ setup
    @override
    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            self._tap = _install_tap(_forward_owner(model), self.id_key)
            self._task_option = self._task_option or model_task(_forward_owner(model))
            if self.embeddings and self._head_handle is None:
                owner = _forward_owner(model)
                if self.logits_module is not None:
                    try:
                        head, self._head_name = owner.get_submodule(self.logits_module), self.logits_module
                    except AttributeError:
                        names = [n for n, _ in owner.named_modules() if n][:20]
                        raise ValueError(
                            f"`logits_module={self.logits_module!r}` is not a submodule of {type(owner).__name__}. "
                            f"HINT: pick one of {names}."
                        ) from None
                else:
                    self._head_name, head = find_head(owner)
                self._head_handle = head.register_forward_pre_hook(self._capture_head_input)

    def _capture_head_input(self, module: Any, args: Any) -> None:
        tensor = find_tensor(args)
        self._captured_embeddings = tensor.detach() if tensor is not None else None

    def _pooled_embeddings(self, rows: int) -> torch.Tensor | None:
        """The head input of the last forward as (rows, D): 3-D inputs are pooled (CLS for encoder
        heads, mean under the attention mask for decoder ``score`` heads)."""
        hidden, self._captured_embeddings = self._captured_embeddings, None
        if hidden is None or not self.embeddings:
            return None
        mask = self._tap.attention_mask if self._tap is not None else None
        # a token classifier's head sees every position: its [CLS] row is not trained as a summary, so mean
        token_task = self._task_option is Task.TOKEN_CLASSIFICATION
        mode = "mean" if self._head_name == "score" or token_task else "cls"
        pooled = pool(hidden, mask if isinstance(mask, torch.Tensor) else None, mode)
        return pooled if pooled.shape[0] == rows else None

    @override
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        owner = _forward_owner(model) if model is not None else None
        if self._tap is None or owner is None or _tap_of(owner.forward, self.id_key) is not self._tap:
            raise ValueError(
                "DataQualityCallback did not attach to the model before the Trainer built its dataloaders, so the "
                f"`{self.id_key}` column was dropped. This happens when the callback is added with "
                "`trainer.add_callback()` after `Trainer(...)`, or when the Trainer creates a new model "
                "(`model_init`). "
                "HINT: pass it at construction: `Trainer(model=model, ..., callbacks=[DataQualityCallback()])`."
            )
        resumed = state.global_step > 0  # the Trainer loaded the state of a checkpoint
        if self._task_option in (Task.MULTILABEL, Task.TOKEN_CLASSIFICATION):
            self._begin_task(model, kwargs)
        else:
            ids, labels, found = _read_columns(_dataset_of(kwargs.get("train_dataloader")), self.id_key,
                                               self.label_key, TRAIN)
            self.session = DynamicsSession(replace(self.session.config, label_key=found))  # each train() records anew
            self.session.set_sample_ids(TRAIN, ids, f"column `{self.id_key}` of the {TRAIN} dataset")
            self._train_labels = _LabelTable(ids, labels, self.session.capacities[TRAIN], self.id_key, TRAIN,
                                             slots=self.session.host_slots(TRAIN, ids))
            self._tasks = TaskRouter(self._task_option, self.session, found)
            if self.session.rules:  # the task is known from the model: check the rules against its columns now
                self._tasks.check_rules(Task.SINGLE_LABEL)
        self.session.set_max_epochs(math.ceil(args.num_train_epochs) if args.max_steps is None or args.max_steps <= 0 else None)
        self._val_labels, self._val_key, self._val_disabled, self._warned_other_eval = None, None, False, False
        self._eval_stash = []
        self._epoch = None
        self._load_metadata(kwargs.get("train_dataloader"))
        resumed_run = self._restore(args, state, model) if resumed else None
        if state.is_world_process_zero:
            self._open_sink(args, resumed_run)
        self._forward_timer.take()
        self._tap.recorder = self
        self._tap.timer = self._forward_timer

    def _begin_task(self, model: Any, kwargs: dict[str, Any]) -> None:
        """Train begin of a multi-label or token task: the targets come with each batch, so only the id
        column, the number of samples and (tokens) the recorded width are read from the dataset."""
        dataset = _dataset_of(kwargs.get("train_dataloader"))
        if dataset is None or self.id_key not in _column_names(dataset):
            raise ValueError(f"The {TRAIN} dataset has no column `{self.id_key}` holding the sample ids. "
                             f"{_add_ids_hint(self.id_key, TRAIN)}")
        self.session = DynamicsSession(self.session.config)  # each train() records anew
        self._set_task_ids(TRAIN, dataset)
        self._tasks = TaskRouter(self._task_option, self.session, self.label_key or LABEL_COLUMNS[0])
        self._tasks.option = self._task_option
        if self.session.rules:  # the task is known from the model: check the rules against its columns now
            self._tasks.check_rules(self._task_option)
        self._task_datasets = {TRAIN: dataset}
        self._task_stash = []
        if self._task_option is Task.TOKEN_CLASSIFICATION:
            self._tasks.widths[TRAIN] = _max_length(dataset)
            names = getattr(getattr(model, "config", None), "id2label", None)
            if isinstance(names, Mapping) and names:
                self._tasks.class_names = [str(names.get(i, names.get(str(i), i))) for i in range(len(names))]
            tokenizer = kwargs.get("processing_class")
            convert = getattr(tokenizer, "convert_ids_to_tokens", None)
            self._tasks.token_strings = _token_strings(self._task_datasets, self.id_key, convert)

    def _set_task_ids(self, split: str, dataset: Any) -> None:
        """The id range of a task split from the dataset's id column (sparse ids get dense slots, as for
        single-label); the dataset length when the column cannot be read in one go."""
        from dq_plugins.recording.slots import dataset_ids

        ids = dataset_ids(dataset, self.id_key)
        if ids is None:
            self.session.set_capacity(split, len(dataset))
        else:
            self.session.set_sample_ids(split, ids, f"column `{self.id_key}` of the {split} dataset")

    def _load_metadata(self, train_dataloader: Any) -> None:
        """Read ``metadata_keys`` by sample id from the Trainer's train (and first eval) dataset."""
        columns = self.session.config.metadata_columns
        self._val_metadata_read = False
        if not columns:
            return
        trainer = _calling_trainer()
        if trainer is not None:
            hint = "add the column to the dataset given to the Trainer, or pass a `metadata=` DataFrame."
            frame = _read_metadata(trainer.train_dataset, self.id_key, columns, TRAIN, hint)
            self.session.set_metadata(TRAIN, frame)
            eval_dataset = trainer.eval_dataset
            if isinstance(eval_dataset, Mapping):  # evaluated in order: the first one is recorded
                eval_dataset = next(iter(eval_dataset.values()), None)
            if self.record_validation and eval_dataset is not None and self.id_key in _column_names(eval_dataset):
                self.session.set_metadata(
                    VALIDATION, _read_metadata(eval_dataset, self.id_key, columns, VALIDATION, hint))
                self._val_metadata_read = True
            return
        hint = ("no Trainer runs this callback, so the columns are read from the train dataloader's dataset, "
                "from which the Trainer drops unused columns: pass `remove_unused_columns=False`, or a `metadata=` "
                "DataFrame.")
        self.session.set_metadata(TRAIN, _read_metadata(_dataset_of(train_dataloader), self.id_key, columns,
                                                        TRAIN, hint))

    def _open_sink(self, args: Any, resumed_run: str | None = None) -> None:
        """Open the sink: the Trainer's active MLflow run (``report_to="mlflow"``), else the run of the fit this
        one resumes (``resumed_run``, saved in the checkpoint), else a new run."""
        fallback_dir = self.session.config.fallback_dir
        run = None
        if "mlflow" in (getattr(args, "report_to", None) or []):
            import mlflow

            run = mlflow.active_run()  # started by transformers' MLflowCallback, which runs before this one
        if run is not None:
            self._sink = MlflowSink(run_id=run.info.run_id, tracking_uri=mlflow.get_tracking_uri(),
                                    fallback_dir=fallback_dir)
            self._sink.run_owner = "transformers' MLflowCallback (report_to='mlflow')"
            self._sink.end_foreign = _end_active_run(run.info.run_id)
            self._run_before_mlflow_callback()
        else:
            self._sink = MlflowSink(fallback_dir=fallback_dir, **self._sink_options)
        try:
            if run is None and resumed_run is not None:
                self._sink.resume_run(resumed_run)
            self.run_id = self._sink.ensure_run()
        except Exception as err:  # noqa: BLE001 - tracking trouble must not stop training
            warn(
                f"dq_plugins could not open an MLflow run ({type(err).__name__}: {err}); training goes on and "
                f"the results will be kept under {fallback_dir!r}.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _run_before_mlflow_callback(self) -> None:
        """Move this callback ahead of transformers' ``MLflowCallback``, whose ``on_train_end`` ends the run:
        the results are then in the run before it ends (its end time comes after them), and a
        ``FailRun("mark_failed")`` rule can end it FAILED first (the MLflowCallback then finds no active run
        and leaves it). The events of ``on_train_begin`` still in progress run in the old order."""
        trainer = _calling_trainer()
        integration = getattr(getattr(_transformers, "integrations", None), "MLflowCallback", None)
        if trainer is None or integration is None:
            return
        callbacks = list(trainer.callback_handler.callbacks)
        first = next((i for i, callback in enumerate(callbacks) if isinstance(callback, integration)), None)
        mine = next((i for i, callback in enumerate(callbacks) if callback is self), None)
        if first is not None and mine is not None and mine > first:
            callbacks.insert(first, callbacks.pop(mine))
            trainer.callback_handler.callbacks = callbacks  # a new list: the running event loop keeps its own

    # ------------------------------------------------------------------ recording
    def _capture(self, ids: torch.Tensor | None, output: Any, training: bool) -> None:
        """Called by the forward wrapper after each forward while training runs. No host sync.

        An error raised here stops training (bad input at the first batch): the run this callback opened
        ends FAILED and its staging folder is removed before the error propagates."""
        try:
            self._record(ids, output, training)
        except BaseException:
            self._end_failed()
            raise

    def _record(self, ids: torch.Tensor | None, output: Any, training: bool) -> None:
        spans = self._forward_timer.take()  # the forward just timed by the wrapper
        if self._final_split is not None:  # the post-training embedding pass
            embeddings = self._pooled_embeddings(ids.shape[0]) if ids is not None else None
            if embeddings is not None:
                ids = self.session.to_slots(self._final_split, torch.as_tensor(ids, device=embeddings.device))
                self.session.record_embeddings(self._final_split, ids, embeddings)
            return
        if not training and (not self.record_validation or self._val_disabled):
            self._captured_embeddings = None
            return
        if ids is None:
            if training:
                raise ValueError(
                    f"A training batch reached the model without `{self.id_key}` although the train dataset has "
                    f"that column. HINT: a `compute_loss` override must call `model(**inputs)` (or pass "
                    f"`{self.id_key}=inputs[{self.id_key!r}]`), and a custom `data_collator` must keep the "
                    "column (as `DataCollatorWithPadding` and `default_data_collator` do)."
                )
            return
        logits = _logits_of(output)
        if logits is None:
            raise ValueError(
                f"dq_plugins needs the logits of each batch, but {type(output).__name__} returned by the model holds "
                "none. HINT: use a `*ForSequenceClassification` model (its output has `.logits`)."
            )
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids, device=logits.device)
        if self._task_option in (Task.MULTILABEL, Task.TOKEN_CLASSIFICATION):
            self._capture_task(ids, logits, training, self._pooled_embeddings(ids.shape[0]), spans)
            return
        embeddings = self._pooled_embeddings(ids.shape[0])
        tokens = self._model_input()
        if training:
            ids = self.session.to_slots(TRAIN, ids)  # the ids themselves unless they are sparse
            labels = self._train_labels.lookup(ids)
            loss = getattr(output, "loss", None)
            self.session.record(TRAIN, self._epoch or 0, ids, labels, logits, loss if isinstance(loss, torch.Tensor) else None)
            self.session.record_latency(TRAIN, ids, spans)
            if embeddings is not None:
                self.session.record_embeddings(TRAIN, ids, embeddings)
            if tokens is not None:
                self.session.record_inputs(TRAIN, ids, *tokens)
        elif self._epoch is not None:  # evaluations before the first epoch (eval_on_start) are not recorded
            self._eval_stash.append((ids, logits.detach(), embeddings, spans, tokens))

    def _model_input(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(input_ids, attention_mask) of the forward just run, for the fingerprints; ``None`` when off or absent."""
        tap = self._tap
        if not self.fingerprints or tap is None or not isinstance(tap.input_ids, torch.Tensor):
            return None
        mask = tap.attention_mask if isinstance(tap.attention_mask, torch.Tensor) else None
        return tap.input_ids, mask

    def _capture_task(self, ids: torch.Tensor, logits: torch.Tensor, training: bool,
                      embeddings: torch.Tensor | None, spans: Any) -> None:
        """A multi-label / token batch: its targets are the ``labels`` the model received; ``embeddings``:
        its (B, D) pooled head input, or ``None``; ``spans``: its timed forward. No host sync."""
        labels = self._tap.labels if self._tap is not None else None
        if not isinstance(labels, torch.Tensor):
            raise ValueError(
                f"A {self._task_option.value} batch reached the model without `labels`, which dq_plugins reads "
                "the targets from. HINT: keep `label_smoothing_factor=0` and no `compute_loss_func` (they make the "
                "Trainer pop `labels`), and name the target column `labels`."
            )
        mask = self._tap.attention_mask if self._tap is not None else None
        mask = mask.detach() if isinstance(mask, torch.Tensor) else None
        tokens = self._model_input()
        if training:
            ids = self.session.to_slots(TRAIN, ids)  # the ids themselves unless they are sparse
            self._tasks.route(TRAIN, self._epoch or 0, ids, labels, logits, mask)
            self.session.record_latency(TRAIN, ids, spans)
            if embeddings is not None:
                self.session.record_embeddings(TRAIN, ids, embeddings)
            if tokens is not None:
                self.session.record_inputs(TRAIN, ids, *tokens)
        elif self._epoch is not None:
            self._task_stash.append((ids, logits.detach(), labels.detach(), mask, embeddings, spans, tokens))

    def _record_task_eval(self, dataloader: Any) -> None:
        """Record the held evaluation batches of a multi-label / token task (first eval dataset only)."""
        stash, self._task_stash = self._task_stash, []
        if not self.record_validation or self._val_disabled or self._epoch is None or not stash:
            return
        dataset = _dataset_of(dataloader)
        key = getattr(dataset, "_fingerprint", None) or id(dataset)
        if self._val_key is None:
            if dataset is None or self.id_key not in _column_names(dataset):
                warnings.warn(f"dq_plugins does not record the validation split: it has no column `{self.id_key}`. "
                              f"{_add_ids_hint(self.id_key, VALIDATION)}", UserWarning, stacklevel=2)
                self._val_disabled = True
                return
            try:
                self._set_task_ids(VALIDATION, dataset)
            except ValueError as err:
                warn(f"dq_plugins does not record the validation split: {err} Or pass `record_validation=False` to "
                     "the callback.", UserWarning, stacklevel=2)
                self._val_disabled = True
                return
            self._val_key = key
            self._task_datasets[VALIDATION] = dataset
            if self._task_option is Task.TOKEN_CLASSIFICATION:
                self._tasks.widths[VALIDATION] = _max_length(dataset)
        elif key != self._val_key:
            return
        for ids, logits, labels, mask, embeddings, spans, tokens in stash:
            ids = self.session.to_slots(VALIDATION, ids)
            self._tasks.route(VALIDATION, self._epoch, ids, labels, logits, mask)
            self.session.record_latency(VALIDATION, ids, spans)
            if tokens is not None:
                self.session.record_inputs(VALIDATION, ids, *tokens)
            if embeddings is not None:
                self.session.record_embeddings(VALIDATION, ids, embeddings)

    @override
    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch = math.floor((state.epoch or 0.0) + 1e-6)

    @override
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session.close_epoch(TRAIN)
        self._tasks.close_epoch(TRAIN)

    def _validation_table(self, dataloader: Any) -> _LabelTable | None:
        """The label table of the recorded eval dataset, or ``None`` for any other dataset."""
        dataset = _dataset_of(dataloader)
        key = getattr(dataset, "_fingerprint", None) or id(dataset)
        if self._val_labels is not None:
            if key == self._val_key:
                return self._val_labels
            if not self._warned_other_eval:
                warn(
                    "dq_plugins records the first eval dataset only as split 'validation'; other eval datasets "
                    "are not recorded.",
                    UserWarning,
                    stacklevel=2,
                )
                self._warned_other_eval = True
            return None
        try:
            ids, labels, _ = _read_columns(dataset, self.id_key, self.label_key, VALIDATION)
            self.session.set_sample_ids(VALIDATION, ids, f"column `{self.id_key}` of the {VALIDATION} dataset")
            table = _LabelTable(ids, labels, self.session.capacities[VALIDATION], self.id_key, VALIDATION,
                                slots=self.session.host_slots(VALIDATION, ids))
        except ValueError as err:
            warn(
                f"dq_plugins does not record the validation split: {err} Or pass `record_validation=False` to "
                "the callback.",
                UserWarning,
                stacklevel=2,
            )
            self._val_disabled = True
            return None
        self._val_labels, self._val_key = table, key
        columns = self.session.config.metadata_columns
        if columns and not self._val_metadata_read:  # no Trainer at train begin: read the eval loader's dataset
            self._val_metadata_read = True
            try:
                self.session.set_metadata(VALIDATION, _read_metadata(dataset, self.id_key, columns, VALIDATION,
                                                                     "pass `remove_unused_columns=False`."))
            except ValueError as err:
                warn(f"dq_plugins: the validation split has no metadata: {err}", UserWarning, stacklevel=2)
        return table

    @override
    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._task_option in (Task.MULTILABEL, Task.TOKEN_CLASSIFICATION):
            self._record_task_eval(kwargs.get("eval_dataloader"))
            return
        stash, self._eval_stash = self._eval_stash, []
        if not self.record_validation or self._val_disabled or self._epoch is None:
            return
        table = self._validation_table(kwargs.get("eval_dataloader"))  # checked even when no ids arrived
        if table is None:
            return
        for ids, logits, embeddings, spans, tokens in stash:
            ids = self.session.to_slots(VALIDATION, ids)
            self.session.record(VALIDATION, self._epoch or 0, ids, table.lookup(ids), logits)
            self.session.record_latency(VALIDATION, ids, spans)
            if embeddings is not None:
                self.session.record_embeddings(VALIDATION, ids, embeddings)
            if tokens is not None:
                self.session.record_inputs(VALIDATION, ids, *tokens)

    @override
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from dq_plugins.rules import DataQualityRuleFailed

        self._eval_stash = self._task_stash = []
        self.session.close_epoch(VALIDATION)
        self._tasks.close_epoch(VALIDATION)
        try:
            self.session.check_validation_rules(self._sink)
        except DataQualityRuleFailed:  # fail fast: keep the record, end the run FAILED, stop training
            self._end_failed()
            raise

    def _end_failed(self) -> None:
        if self._tap is not None:
            self._tap.recorder = self._tap.timer = None
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            self.session.save_raw(sink)
            sink.flush()
        finally:
            sink.end("FAILED")
            self.run_id = sink.run_id

    # ------------------------------------------------------------------ end of training
    @override
    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._eval_stash = []
        if self._tap is not None:
            self._tap.timer = None
        if self.embeddings and self.final_pass and model is not None and TRAIN in self.session.embeddings:
            self._embedding_pass(args, model, kwargs.get("train_dataloader"), TRAIN)
        if self._tap is not None:
            self._tap.recorder = None  # the wrapper stays (see the module docstring) but records nothing
        if self._tasks.active:  # multi-label / token classification: their own analysis and outputs
            self._tasks.close_all()
            sink, self._sink = self._sink, None
            if state.is_world_process_zero and sink is not None:
                try:
                    self._tasks.finish_run(sink)
                finally:
                    self.run_id = sink.run_id
            return
        self.session.close_all()  # a collective under torch.distributed: every rank takes part
        if not state.is_world_process_zero or self._sink is None:
            return
        if self.texts is not None:
            texts = self.texts
            self.session.texts = dict(texts) if isinstance(texts, Mapping) else dict(enumerate(texts))
        sink, self._sink = self._sink, None
        try:
            self.session.finish_run(sink, options=self._options)
        finally:
            self.run_id = sink.run_id

    def _embedding_pass(self, args: Any, model: Any, dataloader: Any, split: str) -> None:
        """One eval-mode pass over the train loader: the embeddings of the final weights.

        ``torch.inference_mode``, autocast when training ran in bf16/fp16; the forward wrapper
        hands each batch's head input to :meth:`_capture`, which writes them to a fresh buffer. Under
        torchrun every rank passes over its own shard, which holds other samples than the ones it
        trained on last: the pass's rows are gathered across ranks (a collective) before they
        overwrite the training-time rows, so no rank's stale row wins the final gather. Samples the
        pass does not reach (``dataloader_drop_last``) keep their training-time row.
        """
        if dataloader is None:
            return
        device = next(model.parameters()).device
        dtype = torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) else None
        was_training = model.training
        model.eval()
        self._final_split = split
        captured = self.session.embeddings.pop(split, None)
        try:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                for batch in dataloader:
                    if isinstance(batch, Mapping):
                        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                        inputs.pop("labels", None)
                        model(**inputs)
        finally:
            self._final_split = None
            model.train(was_training)
            final = self.session.embeddings.pop(split, None)
            if captured is not None:
                self.session.embeddings[split] = captured
        if final is not None and captured is not None:
            with torch.inference_mode():  # the pass created its buffer in inference mode
                final.gather()
                ids, values = final.to_numpy()
            captured.write(torch.from_numpy(ids).to(captured.device), torch.from_numpy(values).to(captured.device))
        elif final is not None:
            self.session.embeddings[split] = final

    # ------------------------------------------------------------------ checkpoint
    @override
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        record = self.session.state_dict()  # a collective under DDP: every rank takes part, rank 0 writes
        record["run_id"] = self.run_id
        if not args.should_save:
            return
        folder = _checkpoint_folder(args, state)
        if os.path.isdir(folder):
            torch.save(record, os.path.join(folder, STATE_FILE))

    def _restore(self, args: Any, state: Any, model: Any) -> str | None:
        """Load the record of the checkpoint this run resumes from (``state.global_step`` > 0); returns the
        MLflow run id the checkpointed fit logged into (``None`` if unknown)."""
        folders = [
            getattr(args, "resume_from_checkpoint", None),
            _checkpoint_folder(args, state),
        ]
        path = next((os.path.join(f, STATE_FILE) for f in folders
                     if isinstance(f, str) and os.path.isfile(os.path.join(f, STATE_FILE))), None)
        current_epoch = math.floor((state.epoch or 0.0) + 1e-6)
        if path is None:
            warn(
                f"dq_plugins: training resumes at step {state.global_step} but {folders[1]!r} holds no "
                f"{STATE_FILE}, so the record starts at epoch {current_epoch} and earlier epochs are missing "
                "from the analysis. HINT: resume from a checkpoint under `output_dir`, or also pass its path as "
                "`TrainingArguments(resume_from_checkpoint=...)`.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        record = torch.load(path, map_location="cpu", weights_only=True)
        self.session.load_state_dict(record)
        device = next(model.parameters()).device
        run_id = record.get("run_id")
        run_id = run_id if isinstance(run_id, str) else None
        self.session.resume(device, current_epoch, raw_record=self._raw_record(run_id))
        return run_id

    def _raw_record(self, run_id: str | None) -> Any:
        """``raw_record(split)``: a local copy of ``dq/raw/<split>.npz`` in the run the checkpointed fit logged into
        (``None`` without one). Called only when epoch files are missing from the history folder (a resume on
        another machine): the epochs recorded before come from the run, as in the Lightning callback."""
        if run_id is None:
            return None
        tracking_uri = self._sink_options["tracking_uri"]

        def fetch(split: str) -> str:
            import tempfile

            import mlflow

            from dq_plugins.schema import raw_path

            folder = tempfile.mkdtemp(prefix="dq_plugins_raw_")
            return mlflow.MlflowClient(tracking_uri=tracking_uri).download_artifacts(run_id, raw_path(split), folder)

        return fetch
