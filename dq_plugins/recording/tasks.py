"""Tasks beyond single-label classification: which task a run is, and its recording and end of fit.

The adapters hand every batch to a :class:`TaskRouter` first. For single-label classification it
returns ``False`` and the batch goes on to :class:`~dq_plugins.recording.session.DynamicsSession`
as before; for a multi-label or token classification task it records the batch in its own
ledgers (:mod:`dq_plugins.recording.multilabel`, :mod:`dq_plugins.recording.tokens`) and returns
``True``. At the end of fit :meth:`TaskRouter.finish_run` analyses and publishes the record.

The task comes from the callback option, from the model (Hugging Face: ``problem_type`` and the
``*ForTokenClassification`` head) and from the first batch (the shapes and dtypes of targets and
logits); when an explicit option and the data disagree, the first batch raises an error saying what
was detected. The router's ledgers go into the checkpoint through the session
(:meth:`TaskRouter.state_dict`, restored by :meth:`TaskRouter.resume`: a mid-epoch resume records each
batch once) and their raw record through :meth:`DynamicsSession.save_raw`, the one place a fit saves
its record. Under ``torch.distributed`` the ledgers are reduced over ranks at each epoch close (a
collective, as for single-label) and rank 0 analyses. Metadata (``metadata_keys=`` from the batches,
``metadata_columns=`` / ``metadata=``) is merged into the per-sample table and sliced
(:mod:`dq_plugins.analysis.task_metadata`). Embeddings are recorded by the session's embedding
buffers as for single-label (one row per sample id; one per sequence for a token task), gathered over
ranks in :meth:`TaskRouter.close_all` and analysed without the one-class-per-sample parts
(:mod:`dq_plugins.analysis.task_embeddings`). Rules are checked at the first batch against the task's
per-sample columns and evaluated at the end of the fit on its tables (``on_validation`` rules too, warned).
Latency is timed as for single-label runs (the ``latency_ms`` column and ``dq.mean_latency_ms.<split>``), and the
model inputs are fingerprinted for input copies and leakage (:mod:`dq_plugins.analysis.task_copies`).
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dq_plugins.recording.ledger import distributed_rank_and_world
from dq_plugins.recording.multilabel import MULTILABEL_FIELDS, MultiLabelLedger, check_multilabel_batch
from dq_plugins.recording.tokens import TokenLedger, check_token_batch, first_attended


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
        self._restored: dict[str, Any] | None = None  # a checkpoint's state until resume()
        self._neighbors: dict[str, tuple[np.ndarray, Any]] = {}  # split -> (ids, KnnGraph) searched by every rank
        if session is not None:
            session.task_router = self

    @property
    def single_label(self) -> bool:
        """True once the first batch decided a single-label task (no batch needs routing after that)."""
        return self.task is Task.SINGLE_LABEL

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
        if getattr(self.session, "rules", None):
            self.check_rules(detected)
        return detected

    def check_rules(self, task: Task) -> None:
        """Once the task is known (the first batch, or the model at train begin): the rules against that task's
        per-sample columns (a rule reading another task's column is an error now, not a skip after training); for
        a multi-label or token run, rules with ``on_validation=True`` run at the end of the fit only (warned)."""
        from dq_plugins.recording.session import rule_columns
        from dq_plugins.rules import validate_rules

        config = self.session.config
        try:
            validate_rules(self.session.rules, rule_columns(config, task.value), pools=list(config.pools or {}) or None)
        except ValueError as error:
            raise ValueError(f"This is a {task.value} run: its per-sample table "
                             f"(dq/samples.parquet) has that task's columns. {error}") from None
        early = [rule.name for rule in self.session.rules if rule.on_validation]
        if task is not Task.SINGLE_LABEL and early:
            warnings.warn(f"dq_plugins: rules {early} have on_validation=True; for {task.value} runs rules are "
                          "evaluated at the end of the fit only.", RuntimeWarning, stacklevel=4)

    # ------------------------------------------------------------------ hot path
    def route(self, split: str, epoch: int, ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
              attention_mask: torch.Tensor | None = None) -> bool:
        """Record one batch if the run is not single-label (returns ``True``); ``False``: the caller records it.

        ``attention_mask``: the (B, T) mask of the model input, or ``None``; for a token task a token's
        position counts from the row's first attended position, so left padding (``padding_side="left"``)
        does not shift it. Shape checks every batch (metadata only); value checks on the first batch of
        a split (one host sync).
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
        if isinstance(ledger, TokenLedger):
            ledger.record(ids, labels, logits, epoch, first_attended(attention_mask, labels))
        else:
            ledger.record(ids, labels, logits, epoch)
        return True

    def _new_ledger(self, split: str, labels: torch.Tensor, logits: torch.Tensor) -> MultiLabelLedger | TokenLedger:
        # sparse ids arrive as dense slots (the adapters call session.to_slots): the ledger is sized by their number
        capacity = self.session.capacities.get(split)
        if capacity is None:
            self.session.set_capacity(split, None)
            capacity = self.session.capacities[split]
        if self.task is Task.MULTILABEL:
            ledger: MultiLabelLedger | TokenLedger = MultiLabelLedger(
                capacity, logits.shape[1], logits.device, history_folder=self.session.history_folder(split))
        else:
            width = self.widths.get(split) or self.widths.get("train") or int(labels.shape[1])
            ledger = TokenLedger(capacity, width, logits.shape[2], logits.device)
        if split == "train":
            ledger.early_epochs = self.session.early_epochs
            if isinstance(ledger, TokenLedger) and self.session.config.early_epochs is None:
                ledger.enable_wave()  # the window ends where the tags stop being learnt (Label Wave)
        else:
            ledger.latest_probs_only = True
        return ledger

    # ------------------------------------------------------------------ once per epoch
    def close_epoch(self, split: str, reduce: bool = True) -> None:
        """Close the split's pending epoch and warn about rows that were not recorded. Under
        ``torch.distributed`` a collective (every rank calls it); ``reduce=False`` skips it."""
        ledger = self.ledgers.get(split)
        if ledger is None:
            return
        epoch = ledger.pending_epoch
        counters = ledger.close_epoch(reduce)
        self.session.close_metadata(split, reduce)
        self.session.close_inputs(split)
        self.session.close_latency(split, reduce, ledger.device)
        if distributed_rank_and_world()[0] != 0:
            return  # the counters are global after the reduction: rank 0 warns
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
                "too_long": f"were labelled tokens at a position >= the recorded width {ledger.width} (or before "
                            f"the first attended position), or of a sample id outside 0..{ledger.capacity - 1}",
            }
        for key, what in messages.items():
            if counters.get(key):
                warnings.warn(f"dq_plugins: {counters[key]} {split} rows in epoch {epoch} {what}; they were not "
                              "recorded.", RuntimeWarning, stacklevel=3)
        if isinstance(ledger, TokenLedger) and epoch is not None and counters["labelled"] == 0:
            warnings.warn(f"dq_plugins: no labelled token was recorded in {split} epoch {epoch} (every tag -100?).",
                          RuntimeWarning, stacklevel=3)

    def close_all(self, reduce: bool = True) -> None:
        """Close every pending epoch and gather the session's embeddings over ranks (collectives under
        ``torch.distributed``, see :meth:`close_epoch`; every rank calls it)."""
        for split in list(self.ledgers):
            self.close_epoch(split, reduce)
        if reduce:
            for buffer in [*self.session.embeddings.values(), *self.session.fingerprints.values()]:
                buffer.gather()
            self._search_neighbors()

    def _search_neighbors(self) -> None:
        """Under ``torch.distributed`` with several ranks: each split's embedding kNN graph, searched by every rank
        (:func:`~dq_plugins.analysis.distributed.search_on_all_ranks`, collectives, after the gather) over every
        embedded id; rank 0 keeps it for :meth:`finish`, which uses it when the analysed rows are those ids (else,
        and when a rank failed, rank 0 searches alone). Without several ranks: nothing."""
        if distributed_rank_and_world()[1] < 2:
            return
        from dq_plugins.analysis.distributed import search_on_all_ranks
        from dq_plugins.analysis.embeddings import knn_settings

        for split in sorted(self.session.embeddings):  # the same order on every rank
            buffer = self.session.embeddings[split]
            graph = search_on_all_ranks(f"the {split} embeddings", buffer.to_numpy, knn_settings, buffer.device)
            if graph is not None:
                self._neighbors[split] = graph

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The task and its ledgers (plain values and CPU tensors, ``torch.load(weights_only=True)`` reads it);
        empty while the run is single-label or undecided. A state restored but not yet resumed is kept."""
        if not self.active:
            return dict(self._restored or {})
        return {"task": self.task.value, "widths": dict(self.widths),
                "ledgers": {split: ledger.state_dict() for split, ledger in self.ledgers.items()}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Keep a :meth:`state_dict` until :meth:`resume` rebuilds its ledgers on the model's device."""
        self._restored = dict(state) if state else None

    def resume(self, device: torch.device | str, current_epoch: int, raw_record: Any = None) -> None:
        """Rebuild the restored ledgers on ``device``. An epoch still pending in the checkpoint is closed
        when training resumes at a later epoch; resumed inside it, the replayed batches average in.

        ``raw_record(split)``: a local copy of the run's ``dq/raw/<split>.npz`` or ``None`` (recovers
        multi-label epoch files missing from the history folder).

        Raises:
            ValueError: the checkpoint holds another task than the callback's ``task=`` option.
        """
        state, self._restored = self._restored, None
        if not state:
            return
        task = Task(state["task"])
        if self.option is not None and self.option is not task:
            raise ValueError(f"The checkpoint holds a {task.value!r} record, but the callback was given "
                             f"task={self.option.value!r}. HINT: resume with the same `task=` as the checkpointed fit.")
        self.task = task
        self.widths.update({split: int(width) for split, width in state.get("widths", {}).items()})
        for split, saved in state.get("ledgers", {}).items():
            if task is Task.MULTILABEL:
                ledger: MultiLabelLedger | TokenLedger = MultiLabelLedger.from_state_dict(
                    saved, device, fetch=_task_epochs_of_raw(raw_record, split))
            else:
                ledger = TokenLedger.from_state_dict(saved, device)
            if isinstance(ledger, MultiLabelLedger) and distributed_rank_and_world()[0] != 0:
                ledger.history.detach_to_memory()  # the folder is rank 0's: read it, then write this rank's own
                ledger.history.folder = Path(self.session.history_folder(split))
            ledger.localize_for_rank()
            if ledger.pending_epoch is not None and ledger.pending_epoch < current_epoch:
                ledger.close_epoch()
            self.ledgers[split] = ledger

    # ------------------------------------------------------------------ end of fit
    def histories(self) -> dict[str, Any]:
        """Host records of every split (no collective: close the epochs on every rank first, :meth:`close_all`).
        A split with sparse ids (a slot map) gets ``sample_ids``: the id of each slot, saved in the raw record."""
        histories = {split: ledger.to_history(reduce=False) for split, ledger in self.ledgers.items()}
        for split, history in histories.items():
            slot_map = self.session.slot_maps.get(split)
            if slot_map is not None:
                history.sample_ids = slot_map.table[: history.labels.shape[0]].copy()
        return histories

    def finish(self, sink: Any) -> Any:
        """Save the raw record, analyse it (:func:`~dq_plugins.analysis.task_pipeline.analyze_task`, as ``dq analyze``
        does; the embeddings and fingerprints staged by their steps) and publish through ``sink``. Never raises: an
        analysis error becomes a warning and ``dq/raw/analysis_error.txt``; the raw record is staged first."""
        from dq_plugins.schema import ANALYSIS_ERROR_PATH, PROJECTION_TAG, raw_path

        histories = self.histories()
        self.session.save_raw(sink, histories)
        for buffer in self.session.embeddings.values():
            buffer.remove_mapped_file()  # the mapping stays readable
        result = None
        neighbors, self._neighbors = self._neighbors, {}
        try:
            from dq_plugins.analysis.embeddings import map_projection
            from dq_plugins.analysis.task_pipeline import analyze_task
            from dq_plugins.sinks.task_publish import publish_task_result

            session = self.session
            projection = map_projection(session.config.projection)
            sink.add_tag(PROJECTION_TAG, projection)
            result = analyze_task(
                self.task.value, histories, max_issue_rows=session.config.max_issue_rows,
                embeddings=(lambda: session.stage_embeddings(sink)) if session.embeddings else None,
                fingerprints=(lambda: session.stage_fingerprints(sink)) if session.fingerprints else None,
                projection=projection, neighbors=neighbors,
                latency={split: recorder.latest for split, recorder in session.latency.items()},
                token_strings=self.token_strings, class_names=self.class_names, warn_optional_failures=True)
            from dq_plugins.analysis.task_metadata import add_metadata

            result = add_metadata(result, self.session.metadata_frame())
            publish_task_result(result, sink)
            if self.session.rules:
                from dq_plugins.sinks.publish import run_rules

                embeddings = {split: (self.session.ids_of(split, slots), values) for split, (slots, values)
                              in ((split, buffer.to_numpy()) for split, buffer in self.session.embeddings.items())}
                run_rules(result, result.samples, result.slices, embeddings, sink, self.session.rules,
                          self.session.pools or {}, None)
        except Exception:  # noqa: BLE001 - analysis must never fail the training run
            trace = traceback.format_exc()
            sink.stage_path(ANALYSIS_ERROR_PATH).write_text(trace)
            sink.add_artifact(ANALYSIS_ERROR_PATH)
            warnings.warn(f"dq_plugins: the end-of-fit analysis failed; the trained model is untouched and the raw "
                          f"record was saved as `{raw_path('<split>')}` in the run: `dq analyze {sink.run_id}` reruns the "
                          f"analysis from it.\n{trace}", RuntimeWarning, stacklevel=2)
        if sink.flush():  # the raw record is in the run: a resume reads the epochs from there, as for single-label
            for ledger in self.ledgers.values():
                if isinstance(ledger, MultiLabelLedger):
                    ledger.history.detach_to_memory()
            self.session.remove_history_files()
        self.result = self.session.result = result
        return result

    def finish_run(self, sink: Any) -> Any:
        """:meth:`finish`, then end the run: FAILED when a ``FailRun`` rule held (or the rules could not be
        evaluated and one had a ``FailRun``), and :class:`~dq_plugins.rules.DataQualityRuleFailed` raised after
        the run is closed when a ``FailRun("raise")`` rule held, as for single-label runs."""
        result = self.finish(sink)
        report = getattr(result, "rules_report", None)
        failed = report is not None and (report.mark_failed or report.error is not None)
        sink.end("FAILED" if failed else "FINISHED", by_rule=failed)
        if report is not None:
            report.raise_if_failed()
        return result


def _task_epochs_of_raw(raw_record: Any, split: str) -> Callable[[int], dict[str, np.ndarray] | None] | None:
    """``fetch(epoch) -> row`` reading a multi-label epoch from ``raw_record(split)`` (the run's raw record),
    for epoch files missing from the history folder; ``None`` without ``raw_record``."""
    if raw_record is None:
        return None

    def fetch(epoch: int) -> dict[str, np.ndarray] | None:
        from dq_plugins.raw_record import load_task_record

        try:
            path = raw_record(split)
            arrays = load_task_record(path)[1] if path is not None else None
        except Exception as error:  # noqa: BLE001 - the caller's error names what is missing
            warnings.warn(f"dq_plugins: could not read the run's raw record of {split!r}: {error}", RuntimeWarning)
            return None
        if arrays is None or epoch not in arrays.get("epochs", ()):
            return None
        row = int(np.flatnonzero(arrays["epochs"] == epoch)[0])
        return {name: arrays[f"field_{name}"][row] for name in MULTILABEL_FIELDS}

    return fetch
