"""Tasks beyond single-label classification: which task a run is, and its recording and end of fit.

The adapters hand every batch to a :class:`TaskRouter` first. For single-label classification it
returns ``False`` and the batch goes on to :class:`~dq_plugins.recording.session.DynamicsSession`
as before; for a multi-label or token classification task it records the batch in its own
ledgers (:mod:`dq_plugins.recording.multilabel`, :mod:`dq_plugins.recording.tokens`) and returns
``True``. At the end of fit :meth:`TaskRouter.finish_run` analyses and publishes the record.

The task comes from the callback option, from the model (Hugging Face: ``problem_type`` and the
``*ForTokenClassification`` head) and from the first batch (the shapes and dtypes of targets and
logits); when an explicit option and the data disagree, the first batch raises an error saying what
was detected. Not yet supported for these tasks: embeddings, metadata, rules, latency, resuming
from a checkpoint, and ``torch.distributed`` (an error at the first batch).
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch

from dq_plugins.recording.multilabel import MultiLabelLedger, check_multilabel_batch
from dq_plugins.recording.tokens import TokenLedger, check_token_batch


class Task(str, Enum):
    """The learning task of a run."""

    SINGLE_LABEL = "single_label"
    MULTILABEL = "multilabel"
    TOKEN_CLASSIFICATION = "token_classification"


TASK_OPTIONS: tuple[str, ...] = tuple(task.value for task in Task)
"""Values of the callbacks' ``task=`` option (``None``: detect)."""


def parse_task(task: str | Task | None) -> Task | None:
    """The :class:`Task` of a callback option; ``None`` means detect from the model and the data."""
    if task is None or isinstance(task, Task):
        return task
    try:
        return Task(task)
    except ValueError:
        raise ValueError(f"Expected `task` to be one of {list(TASK_OPTIONS)} or None (detect), but got {task!r}.") from None


def detect_task(labels: torch.Tensor, logits: torch.Tensor) -> Task:
    """The task a batch looks like (metadata only, no host sync): (B, T, C) logits with (B, T) tags -> token
    classification; (B, C) targets as wide as (B, C) logits -> multi-label; anything else -> single-label
    (whose checks then name what is wrong)."""
    if logits.ndim == 3 and labels.ndim == 2:
        return Task.TOKEN_CLASSIFICATION
    if labels.ndim == 2 and logits.ndim == 2 and labels.shape[1] == logits.shape[1] and labels.shape[1] > 1:
        return Task.MULTILABEL
    if labels.ndim == 2 and labels.is_floating_point():
        return Task.MULTILABEL  # float rows of the wrong width: the multi-label checks name the mismatch
    return Task.SINGLE_LABEL


def describe(labels: torch.Tensor, logits: torch.Tensor) -> str:
    return f"targets of shape {tuple(labels.shape)} and dtype {labels.dtype}, logits of shape {tuple(logits.shape)}"


def model_task(model: Any) -> Task | None:
    """The task a Hugging Face model is built for, from its config and head class; ``None``: unknown."""
    config = getattr(model, "config", None)
    if getattr(config, "problem_type", None) == "multi_label_classification":
        return Task.MULTILABEL
    if type(model).__name__.endswith("ForTokenClassification"):
        return Task.TOKEN_CLASSIFICATION
    return None


class TaskRouter:
    """Decides the task at the first batch and records the batches of tasks other than single-label.

    Args:
        option: the callbacks' ``task=`` (``None``: detect).
        session: the adapter's :class:`~dq_plugins.recording.session.DynamicsSession` (its capacities,
            early window and options are shared).
        label_key: the batch key / dataset column of the targets, named in errors.
    """

    def __init__(self, option: str | Task | None, session: Any, label_key: str = "labels") -> None:
        self.option = parse_task(option)
        self.session = session
        self.label_key = label_key
        self.task: Task | None = None
        self.ledgers: dict[str, MultiLabelLedger | TokenLedger] = {}
        self.widths: dict[str, int] = {}  # token tasks: recorded width per split (None: the first batch's length)
        self.class_names: Sequence[str] | None = None
        self.token_strings: Callable[[str, int], Sequence[str] | None] | None = None
        self.result: Any = None

    @property
    def active(self) -> bool:
        """True once the first batch decided a task other than single-label."""
        return self.task is not None and self.task is not Task.SINGLE_LABEL

    def resolve(self, labels: torch.Tensor, logits: torch.Tensor) -> Task:
        """The run's task, fixed at the first batch; an explicit option must match what the batch looks like."""
        if self.task is not None:
            return self.task
        detected = detect_task(labels, logits)
        if self.option is not None and self.option is not detected:
            raise ValueError(
                f"The callback was given task={self.option.value!r}, but the first batch looks like "
                f"{detected.value!r}: {describe(labels, logits)}. HINT: "
                + {Task.MULTILABEL: "multi-label batches hold float multi-hot targets of shape (batch, num_classes) "
                                    "under the label key and logits of the same shape.",
                   Task.TOKEN_CLASSIFICATION: "token batches hold (batch, seq_len) tags and (batch, seq_len, "
                                              "num_tags) logits.",
                   Task.SINGLE_LABEL: "single-label batches hold one integer class per sample."}[self.option]
                + f" Or pass task={detected.value!r} (or leave `task` unset to detect it)."
            )
        self.task = detected
        if self.active:
            from dq_plugins.recording.ledger import distributed_rank_and_world

            if distributed_rank_and_world()[1] > 1:
                raise NotImplementedError(
                    f"dq_plugins records {detected.value!r} runs in a single process only. HINT: train on one "
                    "device for the data-quality run, or remove the callback.")
        return detected

    # ------------------------------------------------------------------ hot path
    def route(self, split: str, epoch: int, ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> bool:
        """Record one batch if the run is not single-label (returns ``True``); ``False``: the caller records it.

        Shape checks every batch (metadata only); value checks on the first batch of a split (one host sync).
        """
        if self.resolve(labels, logits) is Task.SINGLE_LABEL:
            return False
        ledger = self.ledgers.get(split)
        first = ledger is None
        if self.task is Task.MULTILABEL:
            check_multilabel_batch(labels, logits, self.label_key, first)
        else:
            check_token_batch(ids, labels, logits, self.label_key, first)
        if first:
            ledger = self.ledgers[split] = self._new_ledger(split, labels, logits)
            if split == "train" and epoch > 0:
                warnings.warn(
                    f"dq_plugins: the {self.task.value} record starts at epoch {epoch} (a resumed run?): it is not "
                    "kept in checkpoints yet, so epochs 0..{} are missing from the analysis. HINT: run the "
                    "data-quality fit from the start.".format(epoch - 1), RuntimeWarning, stacklevel=3)
        elif logits.shape[-1] != ledger.num_classes:
            raise ValueError(f"Expected logits with {ledger.num_classes} classes as in earlier batches of the {split} "
                             f"split, but got {logits.shape[-1]}.")
        ledger.record(ids, labels, logits, epoch)
        return True

    def _new_ledger(self, split: str, labels: torch.Tensor, logits: torch.Tensor) -> MultiLabelLedger | TokenLedger:
        capacity = self.session.capacities.get(split)
        if capacity is None:
            self.session.set_capacity(split, None)
            capacity = self.session.capacities[split]
        if self.task is Task.MULTILABEL:
            ledger: MultiLabelLedger | TokenLedger = MultiLabelLedger(capacity, logits.shape[1], logits.device)
        else:
            width = self.widths.get(split) or self.widths.get("train") or int(labels.shape[1])
            ledger = TokenLedger(capacity, width, logits.shape[2], logits.device)
        if split == "train":
            ledger.early_epochs = self.session.early_epochs
        else:
            ledger.latest_probs_only = True
        return ledger

    # ------------------------------------------------------------------ once per epoch
    def close_epoch(self, split: str) -> None:
        """Close the split's pending epoch and warn about rows that were not recorded."""
        ledger = self.ledgers.get(split)
        if ledger is None:
            return
        epoch = ledger.pending_epoch
        counters = ledger.close_epoch()
        if isinstance(ledger, MultiLabelLedger):
            messages = {
                "out_of_range": f"had a sample id outside 0..{ledger.capacity - 1}",
                "non_finite": "had NaN or inf logits",
                "bad_target": "had a target other than 0 or 1 (soft or negative targets)",
            }
        else:
            messages = {
                "non_finite": "were labelled tokens with NaN or inf logits",
                "bad_tag": f"were tokens with a tag outside 0..{ledger.num_classes - 1} (and not -100)",
                "too_long": f"were labelled tokens at a position >= the recorded width {ledger.width} or of a sample "
                            f"id outside 0..{ledger.capacity - 1}",
            }
        for key, what in messages.items():
            if counters.get(key):
                warnings.warn(f"dq_plugins: {counters[key]} {split} rows in epoch {epoch} {what}; they were not "
                              "recorded.", RuntimeWarning, stacklevel=3)
        if isinstance(ledger, TokenLedger) and epoch is not None and counters["labelled"] == 0:
            warnings.warn(f"dq_plugins: no labelled token was recorded in {split} epoch {epoch} (every tag -100?).",
                          RuntimeWarning, stacklevel=3)

    def close_all(self) -> None:
        for split in list(self.ledgers):
            self.close_epoch(split)

    # ------------------------------------------------------------------ end of fit
    def histories(self) -> dict[str, Any]:
        return {split: ledger.to_history() for split, ledger in self.ledgers.items()}

    def finish(self, sink: Any) -> Any:
        """Save the raw record, analyse it and publish through ``sink``. Never raises: an analysis error
        becomes a warning and ``dq/raw/analysis_error.txt``; the raw record is staged first."""
        from dq_plugins.schema import ANALYSIS_ERROR_PATH, raw_path

        histories = self.histories()
        for split, history in histories.items():
            arrays = {name: value for name, value in vars(history).items() if isinstance(value, np.ndarray)}
            arrays.update({f"field_{name}": value for name, value in getattr(history, "fields", {}).items()})
            with open(sink.stage_path(raw_path(split)), "wb") as handle:
                np.savez_compressed(handle, task=np.asarray(self.task.value), **arrays)
            sink.add_artifact(raw_path(split))
        result = None
        try:
            from dq_plugins.sinks.task_publish import publish_task_result

            max_rows = self.session.config.max_issue_rows
            if self.task is Task.MULTILABEL:
                from dq_plugins.analysis.multilabel import analyze_multilabel

                result = analyze_multilabel(histories, max_issue_rows=max_rows)
            else:
                from dq_plugins.analysis.tokens import analyze_tokens

                result = analyze_tokens(histories, max_issue_rows=max_rows, token_strings=self.token_strings,
                                        class_names=self.class_names)
            publish_task_result(result, sink)
        except Exception:  # noqa: BLE001 - analysis must never fail the training run
            trace = traceback.format_exc()
            sink.stage_path(ANALYSIS_ERROR_PATH).write_text(trace)
            sink.add_artifact(ANALYSIS_ERROR_PATH)
            warnings.warn(f"dq_plugins: the end-of-fit analysis failed; the trained model is untouched and the raw "
                          f"record was saved as `{raw_path('<split>')}` in the run.\n{trace}", RuntimeWarning, stacklevel=2)
        sink.flush()
        self.result = self.session.result = result
        return result

    def finish_run(self, sink: Any) -> Any:
        """:meth:`finish`, then end the run."""
        result = self.finish(sink)
        sink.end("FINISHED")
        return result
