"""The logic both callbacks share: ledgers per split, checks, checkpoint state and the
end-of-fit pipeline (raw record -> analysis -> MLflow). Adapters only translate their
framework's hooks into these calls.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dq_plugins.logs import fit_summary_line, logger, progress, warn
from dq_plugins.recording.collisions import EpochCheck, EpochIds, IGNORE_INDEX
from dq_plugins.recording.embeddings import MEMMAP_BYTES as EMBEDDINGS_MEMMAP_BYTES
from dq_plugins.recording.embeddings import EmbeddingBuffer
from dq_plugins.recording.fingerprints import HOST_BYTES_PER_SAMPLE as FINGERPRINT_HOST_BYTES_PER_SAMPLE
from dq_plugins.recording.fingerprints import FingerprintBuffer
from dq_plugins.recording.latency import LatencyRecorder, Span
from dq_plugins.raw_record import (
    FLOAT_FIELDS, SplitHistory, load_history, save_embeddings, save_fingerprints, save_history, save_task_history,
    upload_sample,
)
from dq_plugins.recording.checks import check_shapes, check_transposed, check_values
from dq_plugins.recording.history_store import new_history_folder
from dq_plugins.recording.ledger import SplitLedger, distributed_rank_and_world, planned_bytes
from dq_plugins.recording.slots import SlotMap, integer_ids, is_dense
from dq_plugins.schema import (
    ANALYSIS_ERROR_PATH,
    DEVICE_PEAK_METRIC,
    HOST_PEAK_METRIC,
    DYNAMICS_COLUMNS,
    EMBEDDING_COLUMNS,
    LATENCY_COLUMN,
    PROJECTION_TAG,
    RAW_DIR,
    TRAIN,
    VALIDATION,
    embeddings_path,
    fingerprints_path,
    raw_path,
)
from dq_plugins.sinks.mlflow_sink import MlflowSink
from dq_plugins.sinks.publish import publish_results

if TYPE_CHECKING:
    from dq_plugins.analysis.pipeline import AnalysisResult

VALIDATION_RECORD_COLUMNS: tuple[str, ...] = (
    "sample_id", "split", "label", "pred", "correct", "loss", "prob_given", "margin", LATENCY_COLUMN,
)
"""Columns of the table a rule with ``on_validation=True`` sees at a validation (plus the metadata):
the record of that validation epoch, before any end-of-fit score exists."""

VALIDATION_SLICE_METRICS: tuple[str, ...] = ("size", "accuracy", "macro_f1", "mean_latency_ms")
"""Slice metrics defined at a validation (the others need end-of-fit scores)."""
STATE_VERSION = 3
"""Version of :meth:`DynamicsSession.state_dict` (2: metadata values, embeddings and the validation-time rule
history too; 3: the slot tables of sparse ids, written only by a fit that has them, so a dense-id checkpoint
stays version 2); a checkpoint of a newer version is refused on load."""

DEFAULT_MEMORY_BUDGET_MB = 16_384
"""Default ``memory_budget_mb``: the most the callback may allocate for its buffers (device + host RAM)."""


@dataclass(frozen=True)
class SessionConfig:
    """Options shared by both callbacks (see their docstrings)."""

    id_key: str = "idx"
    label_key: str = "labels"
    num_samples: int | None = None
    num_val_samples: int | None = None
    early_epochs: int | None = None
    max_issue_rows: int = 500
    fallback_dir: str = "dq_artifacts"
    metadata_keys: tuple[str, ...] = ()
    metadata_columns: tuple[str, ...] = ()  # HF: dataset columns read by sample id (see DynamicsSession.set_metadata)
    metadata: Any = None  # pandas DataFrame with a sample_id column (and optionally split)
    rules: Any = None  # list of dq_plugins.rules.Rule, or YAML text / path
    pools: Any = None  # name -> dq_plugins.selection.EmbeddingPool for SelectSimilar actions
    projection: str | None = None  # 2D map: "auto" | "graph" | "umap" | "pca"; None: $DQ_PLUGINS_PROJECTION or "auto"
    history_dir: str | None = None  # root of the per-epoch history files; None: $DQ_PLUGINS_HISTORY_DIR or temp
    memory_budget_mb: float | None = None  # None: DEFAULT_MEMORY_BUDGET_MB
    embeddings_upload_mb: float = 256  # dq/embeddings/<split>.npz in full up to this size, else a sample of rows
    sample_ids: Any = None  # Lightning: the train ids (1-D integers) or split -> ids; sparse ids get slots


class DynamicsSession:
    """Records dynamics for each split and turns them into results at the end of fit."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.ledgers: dict[str, SplitLedger] = {}
        self.capacities: dict[str, int] = {}
        self._checked: set[str] = set()
        self._restored: dict[str, dict] = {}
        self._restored_embeddings: dict[str, dict] = {}  # split -> {"ids", "values"} from a checkpoint
        self.embeddings: dict[str, EmbeddingBuffer] = {}
        self.fingerprints: dict[str, FingerprintBuffer] = {}
        self.texts: dict[int, str] | None = None  # train sample id -> text, shown in the interactive map
        self._metadata_batches: dict[str, list[tuple[torch.Tensor, dict[str, Any]]]] = {}
        self._metadata_frames: dict[str, Any] = {}
        self.latency: dict[str, LatencyRecorder] = {}
        # name -> EmbeddingPool for SelectSimilar; an adapter replaces pools given as data by their embeddings
        self.pools: dict[str, Any] = dict(config.pools or {})
        self.rules = self._parse_rules(config)
        self._fresh_validation: int | None = None  # a validation epoch closed and not yet checked by the rules
        self._rule_history: list[Any] = []  # dq/rules.json rows of the validation-time evaluations
        self.mark_failed_at_validation = False
        self.checks: dict[str, EpochCheck] = {}  # per split: the ids and labels of the open epoch
        self.unique_rows: dict[str, bool] = {}  # split -> its sampler yields each sample once an epoch
        self._warned_ignored: set[str] = set()
        self.result = None
        # split -> (slots, KnnGraph): the embeddings' kNN graph searched by every rank in close_all (rank 0 keeps it),
        # and (slots, KnnGraph) of the input sketches' near-copy search
        self._neighbors: dict[str, tuple[np.ndarray, Any]] = {}
        self._copy_neighbors: tuple[np.ndarray, Any] | None = None
        self._warned: set[str] = set()  # keys of the warnings given in this fit (each once)
        self.early_epochs = config.early_epochs or 2  # refined by set_max_epochs once the trainer is known
        self._history_root = new_history_folder(config.history_dir)  # this fit's epoch files: <root>/<split>/
        self._planned: dict[str, int] = {}  # buffer -> bytes promised by the budget checks
        # the TaskRouter of a multi-label / token task (it registers itself): its ledgers go into the checkpoint
        # state and the raw record through this session (state_dict, resume, save_raw)
        self.task_router: Any = None
        self.slot_maps: dict[str, SlotMap] = {}  # splits whose sparse or huge ids are mapped to dense slots
        self._restored_slots: dict[str, np.ndarray] = {}  # split -> slot table of a checkpoint, until adopted
        self._slots_checked: set[str] = set()  # splits whose first batch's ids were looked up

    def history_folder(self, split: str) -> str:
        """Where this fit writes the per-epoch files of ``split`` (:mod:`dq_plugins.recording.history_store`)."""
        return str(self._history_root / split)

    # ------------------------------------------------------------------ memory
    @property
    def memory_budget_bytes(self) -> int:
        """``memory_budget_mb`` (or :data:`DEFAULT_MEMORY_BUDGET_MB`) in bytes."""
        return int((self.config.memory_budget_mb or DEFAULT_MEMORY_BUDGET_MB) * 2**20)

    def check_budget(self, name: str, planned: int, what: str) -> None:
        """Raise before allocating ``planned`` bytes for buffer ``name`` when, with the buffers planned so
        far, they pass the memory budget; ``what`` says what the bytes are for in the message."""
        others = sum(b for key, b in self._planned.items() if key != name)
        if others + planned > self.memory_budget_bytes:
            budget_mb = self.memory_budget_bytes / 2**20
            raise MemoryError(
                f"dq_plugins would need {(others + planned) / 2**20:,.0f} MB for its buffers ({what}), above "
                f"memory_budget_mb={budget_mb:,.0f}. Its memory follows the number of sample ids (the dataset "
                "length, `num_samples=`, or the distinct ids when they are sparse). HINT: for sparse or huge ids "
                "do not pass `num_samples=<max id + 1>`: give the ids themselves (`sample_ids=` of the Lightning "
                "callback, or the dataset's id column), or number the samples 0..n-1 (`dq_plugins.with_ids`); "
                "or pass a larger `memory_budget_mb=` to the callback if the machine has the memory."
            )
        self._planned[name] = planned

    def memory_peaks(self) -> tuple[int, int]:
        """(device, host) bytes: the most the ledgers, embedding and fingerprint buffers and slot tables held at
        once (an upper bound: the sum of each part's peak), host RAM during training only (analysis excluded)."""
        parts = [*self.ledgers.values(), *self.embeddings.values(), *self.fingerprints.values()]
        tables = self.slot_maps.values()
        return (sum(part.device_bytes() for part in parts) + sum(m.device_bytes() for m in tables),
                sum(part.host_bytes() for part in parts) + sum(m.table.nbytes for m in tables))

    # ------------------------------------------------------------------ metadata, rules
    @staticmethod
    def _parse_rules(config: SessionConfig) -> list:
        """Rules from the config, validated at construction (the earliest moment) against the columns."""
        if config.rules is None:
            return []
        from dq_plugins.rules import rules_from_yaml, validate_rules

        rules = config.rules
        if isinstance(rules, (str, os.PathLike)):
            rules = rules_from_yaml(rules)
        # the task is known at the first batch (TaskRouter.resolve checks the rules against its columns then):
        # here a column of no task's table is the error
        columns = [*dict.fromkeys(c for task in ("single_label", "multilabel", "token_classification")
                                  for c in rule_columns(config, task))]
        validate_rules(list(rules), columns, pools=list(config.pools or {}) or None)
        metadata = [c for c in rule_columns(config, "single_label") if c not in DYNAMICS_COLUMNS and c not in EMBEDDING_COLUMNS]
        for rule in rules:
            if rule.on_validation:
                _check_validation_rule(rule, metadata)
        return list(rules)

    def record_metadata(self, split: str, ids: torch.Tensor, batch: Any) -> None:
        """Keep the metadata values of a batch during the first recorded epoch of a split.

        Values stay as they come (device tensors, lists of strings): no host sync in the step;
        they are moved to the host when that epoch closes.
        """
        keys = self.config.metadata_keys
        if not keys or split in self._metadata_frames:
            return
        missing = [key for key in keys if key not in batch]
        if missing:
            raise ValueError(
                f"The batch has no metadata key(s) {missing} (its keys are {sorted(map(str, batch))}). "
                "HINT: return them from the dataset's items, or remove them from `metadata_keys=`."
            )
        self._metadata_batches.setdefault(split, []).append((ids.detach(), {key: batch[key] for key in keys}))

    def _close_metadata(self, split: str, reduce: bool) -> None:
        batches = self._metadata_batches.pop(split, None)
        if not batches or split in self._metadata_frames:
            return
        import pandas as pd

        frame = _metadata_frame(batches)
        from dq_plugins.recording.ledger import distributed_rank_and_world

        if reduce and distributed_rank_and_world()[1] > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * distributed_rank_and_world()[1]
            dist.all_gather_object(gathered, frame)
            frame = pd.concat(gathered, ignore_index=True)
        self._metadata_frames[split] = frame.drop_duplicates("sample_id", keep="last")

    def close_metadata(self, split: str, reduce: bool = True) -> None:
        """Move the metadata kept from the batches of ``split``'s first recorded epoch to the host (the close
        of a multi-label / token epoch; a single-label epoch does it in :meth:`close_epoch`). Under
        ``torch.distributed`` with ``reduce`` a collective: the frames of every rank are gathered."""
        self._close_metadata(split, reduce)

    def metadata_frame(self) -> Any:
        """(split, sample_id, metadata...) rows from batches and from the user's DataFrame, or ``None``."""
        import pandas as pd

        frames = [frame.assign(split=split) for split, frame in self._metadata_frames.items()]
        table = pd.concat(frames, ignore_index=True) if frames else None
        user = self.config.metadata
        if user is not None:
            if "sample_id" not in user.columns:
                raise ValueError(
                    f"The `metadata` DataFrame needs a `sample_id` column (it has {list(user.columns)}). "
                    "HINT: `metadata = frame.reset_index(names='sample_id')`."
                )
            if table is None:
                table = user
            else:
                on = ["split", "sample_id"] if "split" in user.columns else ["sample_id"]
                table = table.merge(user, on=on, how="outer")
        return table

    def set_metadata(self, split: str, frame: Any) -> None:
        """Metadata of a split read at once (not from batches): a DataFrame with ``sample_id`` and one
        column per metadata field, one row per sample (the HF adapter's ``metadata_columns``)."""
        if "sample_id" not in frame.columns:
            raise ValueError(f"Expected a metadata frame with a `sample_id` column but got {list(frame.columns)}.")
        self._metadata_frames[split] = frame.drop_duplicates("sample_id", keep="last").reset_index(drop=True)

    # ------------------------------------------------------------------ latency
    def record_latency(self, split: str, ids: torch.Tensor, spans: list[Span]) -> None:
        """Attribute the timed forward(s) of one batch to its ``(B,)`` ids (see :mod:`dq_plugins.recording.latency`).
        No host sync; a split whose number of ids is not known yet is not timed."""
        recorder = self.latency.get(split)
        if recorder is None:
            capacity = self.capacities.get(split)
            if capacity is None or not spans:
                return
            recorder = self.latency[split] = LatencyRecorder(capacity)
        recorder.record(ids, spans)

    # ------------------------------------------------------------------ rules at each validation
    def check_validation_rules(self, sink: MlflowSink | None) -> None:
        """Evaluate the rules with ``on_validation=True`` on the validation epoch closed last (once per epoch).

        The table holds :data:`VALIDATION_RECORD_COLUMNS` and the metadata of the validation samples
        recorded in that epoch; slice conditions see its slice table (:data:`VALIDATION_SLICE_METRICS`).
        Only ``FailRun`` acts here: ``"raise"`` raises :class:`~dq_plugins.rules.DataQualityRuleFailed`
        now (fail fast; ``dq/rules.json`` so far is staged in ``sink`` first), ``"mark_failed"`` marks the run
        FAILED when it ends. The other actions run at the end of fit. Each evaluation becomes rows of
        ``dq/rules.json`` (with its epoch) and the metric ``dq.rule.<name>.held`` (1 or 0) at that epoch.
        """
        epoch, self._fresh_validation = self._fresh_validation, None
        rules = [rule for rule in self.rules if rule.on_validation]
        if epoch is None or not rules or VALIDATION not in self.ledgers:
            return
        import pandas as pd

        from dq_plugins.rules.actions import RULES_TABLE_PATH, failure_of, marks_failed, outcomes_table
        from dq_plugins.rules import RuleStatus, evaluate_rules
        from dq_plugins.analysis.slices import slice_metrics

        table = self._validation_epoch_table(epoch)
        metadata = [c for c in table.columns if c not in VALIDATION_RECORD_COLUMNS]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # small slices: the end-of-fit analysis warns once
            slices = slice_metrics(table, columns=metadata)
        outcomes = evaluate_rules(rules, table, slices)
        self._rule_history.append(outcomes_table(outcomes, epoch=epoch))
        self.mark_failed_at_validation |= marks_failed(outcomes)
        if sink is not None:
            for outcome in outcomes:
                held = float(outcome.status is RuleStatus.HELD)
                sink.add_metric(f"dq.rule.{outcome.rule.name}.held", held, step=epoch)
        error = failure_of(outcomes)
        if error is not None:
            if sink is not None:
                sink.add_table(pd.concat(self._rule_history, ignore_index=True), RULES_TABLE_PATH)
            raise error

    def _validation_epoch_table(self, epoch: int) -> Any:
        """One row per validation sample recorded in ``epoch``: :data:`VALIDATION_RECORD_COLUMNS` and metadata."""
        import pandas as pd

        history = self.ledgers[VALIDATION].to_history(reduce=False)
        row = int(np.flatnonzero(history.epochs == epoch)[0])
        pred = history.pred[row]
        ids = np.flatnonzero(pred >= 0)
        table = pd.DataFrame({
            "sample_id": self.ids_of(VALIDATION, ids), "split": VALIDATION, "label": history.labels[ids], "pred": pred[ids],
            **{name: history.fields[name][row, ids] for name in ("loss", "prob_given", "margin")},
        })
        latency = self.latency.get(VALIDATION)
        if latency is not None and np.isfinite(latency.latest).any():
            table[LATENCY_COLUMN] = latency.latest[ids]
        metadata = self.metadata_frame()
        if metadata is not None:
            if "split" in metadata.columns:
                metadata = metadata[metadata["split"].astype(str) == VALIDATION].drop(columns="split")
            table = table.merge(metadata.drop_duplicates("sample_id"), on="sample_id", how="left")
        return table

    # ------------------------------------------------------------------ setup
    def set_capacity(self, split: str, dataset_length: int | None) -> None:
        """Fix the id range of a split from the callback option or the dataset length (a split that already
        has a slot map, or gets one from the checkpoint, keeps it)."""
        if self._adopt_restored_slots(split) or split in self.slot_maps:
            return
        override = self.config.num_samples if split == TRAIN else self.config.num_val_samples
        capacity = override or dataset_length
        if capacity is None:
            argument = "num_samples" if split == TRAIN else "num_val_samples"
            raise ValueError(
                f"dq_plugins cannot tell how many samples the {split} split has (its dataset has no len(), "
                f"for example an IterableDataset). HINT: pass `{argument}=<number of sample ids>` to the callback."
            )
        # the classes are not known yet: check what does not depend on them (catches ids near 10**12 now)
        self.check_budget(f"ledger/{split}", planned_bytes(int(capacity), 2)[0], f"{int(capacity):,} {split} sample ids")
        self.capacities[split] = int(capacity)

    def given_sample_ids(self, split: str) -> Any:
        """The ids of ``split`` given by the ``sample_ids`` option (train: an array, or a mapping split -> ids),
        or ``None``."""
        given = self.config.sample_ids
        if given is None:
            return None
        if isinstance(given, Mapping):
            return given.get(split)
        return given if split == TRAIN else None

    def set_sample_ids(self, split: str, ids: Any, what: str = "`sample_ids=`") -> None:
        """Fix the id range of a split from all of its sample ids (1-D integers, any order), read once before
        its first batch; ``what`` names where they come from in messages.

        Ids inside ``0..capacity-1`` (capacity: ``num_samples`` / ``num_val_samples``, else ``len(ids)``) index
        the buffers directly, exactly as :meth:`set_capacity`. Other ids (sparse, huge or negative) get a
        :class:`~dq_plugins.recording.slots.SlotMap`: one slot per distinct id, so memory follows the number of
        ids; the adapter turns each batch's ids into slots with :meth:`to_slots`.

        Raises:
            ValueError: not integers, or ids the checkpoint being resumed does not hold.
            MemoryError: the buffers for these ids would pass ``memory_budget_mb``.
        """
        ids = integer_ids(ids, what)
        restored = self._restored_slots.get(split)
        if restored is not None:
            self._check_against_checkpoint(split, ids, restored, what)
            self._adopt_restored_slots(split)
            return
        override = self.config.num_samples if split == TRAIN else self.config.num_val_samples
        if is_dense(ids, override or ids.size):
            self.set_capacity(split, ids.size)
            return
        slot_map = SlotMap(ids)
        self.check_budget(f"ledger/{split}", planned_bytes(slot_map.size, 2)[0],
                          f"{slot_map.size:,} distinct {split} sample ids")
        self.check_budget(f"slots/{split}", 2 * slot_map.table.nbytes, f"the table of {slot_map.size:,} {split} ids")
        self.slot_maps[split] = slot_map
        self.capacities[split] = slot_map.size

    def _check_against_checkpoint(self, split: str, ids: np.ndarray, table: np.ndarray, what: str) -> None:
        """Raise when ``ids`` hold an id the checkpoint's slot table of ``split`` lacks."""
        slots = np.clip(np.searchsorted(table, ids), 0, max(table.size - 1, 0))
        missing = ids[table[slots] != ids] if table.size else ids
        if missing.size:
            raise ValueError(
                f"The checkpoint's record of the {split} split holds {table.size:,} sample ids, but {what} has ids it "
                f"lacks (e.g. {int(missing[0])}): the dataset changed since that checkpoint, and its samples cannot be "
                "recorded on the same slots. HINT: resume with the dataset of the checkpointed fit, or start a new "
                "fit without the checkpoint."
            )

    def _adopt_restored_slots(self, split: str) -> bool:
        """Use the checkpoint's slot table of ``split`` (once); whether there was one."""
        table = self._restored_slots.pop(split, None)
        if table is None:
            return False
        self.slot_maps[split] = SlotMap(table)
        self.capacities[split] = self.slot_maps[split].size
        return True

    def to_slots(self, split: str, ids: torch.Tensor) -> torch.Tensor:
        """The slots of a batch's ``(B,)`` ids: the ids themselves when the split has no slot map (no work),
        else their position among the split's ids on the device, ``K`` (not recorded, counted) for an unknown id.
        Call it once per batch and hand the slots to :meth:`record`, :meth:`record_latency`,
        :meth:`record_embeddings` and :meth:`record_inputs` (:meth:`record_metadata` takes the ids).
        No host sync, except on the first batch of a split with a slot map (like :meth:`record`'s checks).

        Raises:
            ValueError: an unknown id in the first batch of the split.
        """
        slot_map = self.slot_maps.get(split)
        if slot_map is None or not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
            return ids  # dense ids, or ids that check_shapes will reject with its own message
        slots = slot_map.slots(ids)
        if split not in self._slots_checked:
            self._slots_checked.add(split)
            unknown = slots == slot_map.size
            if bool(unknown.any()):
                bad = int(ids.reshape(-1)[unknown][0])
                raise ValueError(
                    f"Sample id {bad} under `{self.config.id_key}` is not one of the {slot_map.size:,} ids of the "
                    f"{split} split. HINT: give every id the split uses, in `sample_ids=` (Lightning) or in the "
                    f"dataset's `{self.config.id_key}` column."
                )
        return slots

    def ids_of(self, split: str, slots: np.ndarray) -> np.ndarray:
        """Host sample ids of host ``slots`` of ``split`` (the slots themselves without a slot map)."""
        slot_map = self.slot_maps.get(split)
        slots = np.asarray(slots, dtype=np.int64)
        return slots if slot_map is None else slot_map.table[slots]

    def host_slots(self, split: str, ids: np.ndarray) -> np.ndarray:
        """Host slots of host ``ids`` that are all among the split's ids (the ids without a slot map)."""
        slot_map = self.slot_maps.get(split)
        ids = np.asarray(ids, dtype=np.int64)
        return ids if slot_map is None else np.searchsorted(slot_map.table, ids)

    def set_max_epochs(self, max_epochs: int | None) -> None:
        """Size the early window (EL2N and the early softmax) from the planned number of epochs."""
        from dq_plugins.scores import default_early_epochs

        if self.config.early_epochs is None and max_epochs and max_epochs > 0:
            self.early_epochs = default_early_epochs(int(max_epochs))

    def resume(self, device: torch.device, current_epoch: int, raw_record: Any = None) -> None:
        """Rebuild ledgers restored from a checkpoint on ``device``.

        ``raw_record(split)``, when given, returns a local copy of the run's ``dq/raw/<split>.npz`` (or
        ``None``): it recovers epoch files missing from the history folder (a resume on another machine).

        An epoch that was still pending when the checkpoint was written (the checkpoint was saved
        before this callback closed it) is closed now if training resumes at a later epoch; if
        training resumes inside that same epoch, it stays open and the replayed batches average in.
        """
        for split, state in self._restored.items():
            ledger = SplitLedger.from_state_dict(state, device, fetch=_epochs_of_raw(raw_record, split))
            if ledger.history.folder is not None:
                if distributed_rank_and_world()[0] == 0:  # keep writing beside the restored epochs
                    self._history_root = ledger.history.folder.parent
                else:  # the folder is rank 0's: read it, then write this rank's own
                    ledger.history.detach_to_memory()
                    ledger.history.folder = self._history_root / split
            ledger.localize_for_rank()
            if ledger.pending_epoch is not None and ledger.pending_epoch < current_epoch:
                ledger.close_epoch()
            self.ledgers[split] = ledger
            self._checked.add(split)
        for split, saved in self._restored_embeddings.items():
            capacity = self.capacities.get(split) or (self.ledgers[split].capacity if split in self.ledgers else None)
            if capacity is None or saved["values"].ndim != 2:
                continue
            buffer = self.embeddings[split] = EmbeddingBuffer(capacity, saved["values"].shape[1], device)
            buffer.write(saved["ids"].to(device), saved["values"].to(device).float())
        self._restored = {}
        self._restored_embeddings = {}
        if self.task_router is not None:
            self.task_router.resume(device, current_epoch, raw_record)

    # ------------------------------------------------------------------ hot path
    def first_batch(self, split: str) -> bool:
        """Whether :meth:`record` has not checked a batch of ``split`` yet (its next batch gets the value checks,
        which read the step's ``loss``)."""
        return split not in self._checked

    def record(self, split: str, epoch: int, ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
               loss: torch.Tensor | None = None) -> None:
        """Record one batch. Metadata checks every batch; value checks (one sync) on the first, where the step's
        scalar ``loss`` (``None``: unknown) tells transposed square logits apart. Rows labelled -100 (PyTorch's
        ignore index) are not recorded; the ids and labels are checked once an epoch (:meth:`close_epoch`)."""
        cfg = self.config
        check_shapes(ids, labels, logits, cfg.id_key, cfg.label_key)
        ledger = self.ledgers.get(split)
        if ledger is None:
            capacity = self.capacities.get(split)
            if capacity is None:
                self.set_capacity(split, None)
                capacity = self.capacities[split]
            device, host = planned_bytes(capacity, logits.shape[1])
            self.check_budget(f"ledger/{split}", device + host,
                              f"{capacity:,} {split} sample ids x {logits.shape[1]:,} classes")
            ledger = self.ledgers[split] = SplitLedger(capacity, logits.shape[1], logits.device,
                                                       history_folder=str(self._history_root / split))
            if split == TRAIN:
                ledger.early_epochs = self.early_epochs
                if self.config.early_epochs is None:
                    ledger.enable_wave()  # the flags' window ends where the labels stop being learnt
            else:  # held out: nothing is memorised, the final model's softmax is the out-of-sample estimate
                ledger.latest_probs_only = True
        elif logits.shape[1] != ledger.num_classes:
            raise ValueError(
                f"Expected logits with {ledger.num_classes} classes as in earlier batches of the {split} split, "
                f"but got {logits.shape[1]}."
            )
        if split not in self._checked:
            check_values(ids, labels, ledger.num_classes, ledger.capacity, split, cfg.id_key, cfg.label_key)
            check_transposed(logits, labels, loss)
            self._checked.add(split)
        ledger.record(ids, labels, logits, epoch)
        check = self.checks.get(split)
        if check is None:
            check = self.checks[split] = EpochCheck(ledger.capacity, ledger.num_classes)
        check.add(ids, labels)

    def record_embeddings(self, split: str, ids: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Keep the latest (B, D) embeddings of a batch's ids. No host sync."""
        buffer = self.embeddings.get(split)
        if buffer is None:
            capacity = self.capacities.get(split) or self.ledgers[split].capacity
            dim = embeddings.shape[1]
            spill = self._history_root / f"{split}_embeddings"
            mapped = (capacity + 1) * dim * 2 > EMBEDDINGS_MEMMAP_BYTES
            self.check_budget(f"embeddings/{split}", (capacity + 1) * (1 + (0 if mapped else 2 * dim)),
                              f"{capacity:,} {split} embeddings of dimension {dim}")
            buffer = self.embeddings[split] = EmbeddingBuffer(capacity, dim, embeddings.device, spill_folder=spill)
        buffer.write(ids, embeddings)

    def record_inputs(self, split: str, ids: torch.Tensor, inputs: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> None:
        """Keep the latest fingerprint of each ``(B, ...)`` input row under its id
        (:mod:`dq_plugins.recording.fingerprints`). No host sync."""
        buffer = self.fingerprints.get(split)
        if buffer is None:
            capacity = self.capacities.get(split) or self.ledgers[split].capacity
            self.check_budget(f"fingerprints/{split}", capacity * FINGERPRINT_HOST_BYTES_PER_SAMPLE,
                              f"input fingerprints of {capacity:,} {split} sample ids")
            buffer = self.fingerprints[split] = FingerprintBuffer(capacity, inputs.device)
        buffer.write(ids, inputs, attention_mask)

    def close_epoch(self, split: str, reduce: bool = True) -> None:
        """Move the split's pending epoch to the host and warn about rows that were not recorded.

        A collective under ``torch.distributed`` (see :meth:`SplitLedger.close_epoch`): call it on every rank.
        """
        ledger = self.ledgers.get(split)
        if ledger is None:
            return
        epoch = ledger.pending_epoch
        counters = ledger.close_epoch(reduce=reduce)
        if split == VALIDATION and epoch is not None:
            self._fresh_validation = epoch
        self._close_metadata(split, reduce)
        self.close_inputs(split)
        self.close_latency(split, reduce, ledger.device)
        check = self.checks.get(split)
        seen = check.close() if check is not None else None
        bad_ids = counters["out_of_range"] - (seen.ignored + seen.bad_labels if seen is not None else 0)
        if bad_ids > 0:
            known = (f"not among the {ledger.capacity:,} known ids" if split in self.slot_maps
                     else f"outside 0..{ledger.capacity - 1}")
            warn(
                f"dq_plugins: {bad_ids} {split} rows in epoch {epoch} had a sample id {known} and were not recorded. "
                "HINT: give stable 0-based ids (`dq_plugins.with_ids`), or pass all the ids as `sample_ids=` "
                "(or `num_samples=`) to the callback.",
                RuntimeWarning,
                stacklevel=2, once=self._warned, key=f"out_of_range/{split}",
            )
        if counters["non_finite"]:
            warn(
                f"dq_plugins: {counters['non_finite']} {split} rows in epoch {epoch} had NaN or inf logits; "
                "they are recorded as missing for that epoch (warned once per split).",
                RuntimeWarning,
                stacklevel=2, once=self._warned, key=f"non_finite/{split}",
            )
        if seen is not None:
            self._check_epoch_ids(split, epoch, seen, reduce)

    def close_inputs(self, split: str) -> None:
        """Fold the split's staged input fingerprints of the epoch into its host table (local, no collective)."""
        fingerprints = self.fingerprints.get(split)
        if fingerprints is not None:
            fingerprints.close_epoch()

    def close_latency(self, split: str, reduce: bool, device: torch.device) -> None:
        """Turn the split's timed forwards of the epoch into per-sample milliseconds (a collective under
        ``torch.distributed`` with ``reduce``: every rank calls it, also one that timed nothing)."""
        latency = self.latency.get(split)
        if latency is None and reduce and split in self.capacities:  # every rank takes part in the collective
            latency = self.latency[split] = LatencyRecorder(self.capacities[split])
        if latency is not None:
            latency.close_epoch(reduce=reduce, device=device)

    def _check_epoch_ids(self, split: str, epoch: int | None, seen: EpochIds, reduce: bool) -> None:
        """Fail on colliding ids and out-of-range labels, warn once about ignored (-100) rows.

        Under ``torch.distributed`` with several ranks each rank sees its own shard (and a
        ``DistributedSampler`` pads with repeats), so only the label checks run there.
        """
        from dq_plugins.recording.ledger import distributed_rank_and_world

        key = self.config.id_key
        if seen.bad_labels:
            from dq_plugins.recording.checks import label_range_message

            raise ValueError(f"dq_plugins: {seen.bad_labels} {split} rows in epoch {epoch} have a label outside the "
                             f"classes. " + label_range_message(seen.bad_label, self.ledgers[split].num_classes,
                                                                self.config.label_key))
        fix = (f"HINT: give each part of a concatenated dataset its own id range, e.g. "
               f"`ConcatDataset([with_ids(a), with_ids(b, offset=len(a))])`, or add the ids after concatenating "
               f"(`with_ids(ConcatDataset([a, b]))`; for `datasets`, `with_ids(concatenate_datasets([a, b]))`).")
        if seen.conflicting:
            sample, low, high = seen.example
            raise ValueError(
                f"dq_plugins: {seen.conflicting} sample ids of the {split} split arrived with two different labels in "
                f"epoch {epoch} (e.g. id {sample} under `{key}` with labels {low} and {high}): different samples share "
                f"an id, so their records would be merged. {fix}"
            )
        if self.unique_rows.get(split) and seen.rows > seen.distinct and distributed_rank_and_world()[1] == 1:
            raise ValueError(
                f"dq_plugins: epoch {epoch} of the {split} split had {seen.rows} rows but only {seen.distinct} distinct "
                f"ids under `{key}`, with a sampler that yields each sample once: {seen.rows - seen.distinct} samples "
                f"share an id with another, so their records would be merged. {fix}"
            )
        if seen.ignored and split not in self._warned_ignored:
            self._warned_ignored.add(split)
            warn(
                f"dq_plugins: {seen.ignored} {split} rows in epoch {epoch} have the label {IGNORE_INDEX} (PyTorch's "
                "ignore index); they are not recorded, so those samples get no scores (this warning is shown once). "
                "HINT: give every sample a class label, or leave such samples out of the recorded dataset.",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """The record so far: ledgers, latency, and (version 2) metadata values, embeddings and the
        validation-time rule history, as tensors, lists and plain values (``torch.load(weights_only=True)``
        reads it). Metadata of an epoch still open is moved to the host here (one sync per checkpoint)."""
        ledgers = {split: ledger.state_dict() for split, ledger in self.ledgers.items()}
        ledgers.update({s: st for s, st in self._restored.items() if s not in ledgers})
        latency = {split: recorder.state_dict() for split, recorder in self.latency.items()}
        metadata = {split: _frame_state(frame) for split, frame in self._metadata_frames.items()}
        pending = {split: _frame_state(_metadata_frame(batches)) for split, batches in self._metadata_batches.items()
                   if batches and split not in self._metadata_frames}
        embeddings = {}
        for split, buffer in self.embeddings.items():
            ids, values = buffer.to_numpy()
            embeddings[split] = {"ids": torch.from_numpy(ids), "values": torch.from_numpy(values)}
        embeddings.update({s: st for s, st in self._restored_embeddings.items() if s not in embeddings})
        state = {"version": 2, "ledgers": ledgers, "latency": latency, "metadata": metadata,
                 "pending_metadata": pending, "embeddings": embeddings,
                 "rule_history": [_frame_state(frame) for frame in self._rule_history],
                 "mark_failed_at_validation": self.mark_failed_at_validation}
        task = self.task_router.state_dict() if self.task_router is not None else None
        if task:  # a multi-label / token task's ledgers (an optional key: single-label checkpoints are unchanged)
            state["task"] = task
        tables = {**{split: torch.from_numpy(table) for split, table in self._restored_slots.items()},
                  **{split: torch.from_numpy(m.table) for split, m in self.slot_maps.items()}}
        if tables:  # the slot tables of sparse ids (an optional key: dense-id checkpoints are unchanged)
            state["sample_ids"], state["version"] = tables, 3
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (a checkpoint without ``"version"`` is of version 1;
        versions before 2 have no metadata, embeddings or rule history).

        Raises:
            ValueError: the state was written by a newer dq_plugins (``"version"`` above :data:`STATE_VERSION`).
        """
        version = state.get("version", 1)
        if not isinstance(version, int) or version > STATE_VERSION:
            raise ValueError(
                f"The checkpoint holds dq_plugins callback state of version {version!r}, but this dq_plugins reads "
                f"versions up to {STATE_VERSION}: it was written by a newer dq_plugins. HINT: upgrade dq_plugins "
                "(`pip install -U dq_plugins`), or resume without that checkpoint."
            )
        import pandas as pd

        self._restored = dict(state.get("ledgers", {}))
        self.ledgers = {}
        self.latency = {split: LatencyRecorder.from_state_dict(s) for split, s in state.get("latency", {}).items()}
        # frames read at train begin (HF metadata_columns) stay unless the checkpoint has its own
        self._metadata_frames.update({split: pd.DataFrame(columns) for split, columns in state.get("metadata", {}).items()})
        self._metadata_batches = {}
        for split, columns in state.get("pending_metadata", {}).items():
            frame = pd.DataFrame(columns)
            values = {key: frame[key].tolist() for key in frame.columns if key != "sample_id"}
            self._metadata_batches[split] = [(torch.as_tensor(frame["sample_id"].to_numpy()), values)]
        self._restored_embeddings = dict(state.get("embeddings", {}))
        self._rule_history = [pd.DataFrame(columns) for columns in state.get("rule_history", [])]
        self.mark_failed_at_validation = bool(state.get("mark_failed_at_validation", False))
        if self.task_router is not None:
            self.task_router.load_state_dict(state.get("task"))
        for split, table in state.get("sample_ids", {}).items():
            table = np.asarray(table, dtype=np.int64)
            current = self.slot_maps.get(split)
            if current is not None:  # the ids were read before the state (Hugging Face): they must agree
                self._check_against_checkpoint(split, current.table, table, "the dataset")
                if current.size != table.size:
                    raise ValueError(
                        f"The checkpoint's record of the {split} split holds {table.size:,} sample ids, but the dataset "
                        f"has {current.size:,}: the dataset changed since that checkpoint. HINT: resume with the "
                        "dataset of the checkpointed fit, or start a new fit without the checkpoint."
                    )
            else:
                self._restored_slots[split] = table

    # ------------------------------------------------------------------ end of fit
    def close_all(self, reduce: bool = True) -> None:
        """Close every pending epoch; under ``torch.distributed`` call it on every rank before :meth:`finish`.

        With several ranks it also searches the embeddings' kNN graph on all of them (:meth:`search_neighbors`).
        """
        for split in list(self.ledgers):
            self.close_epoch(split, reduce=reduce)
        if reduce:
            for buffer in [*self.embeddings.values(), *self.fingerprints.values()]:
                buffer.gather()
            self.search_neighbors()
            if distributed_rank_and_world()[0] != 0:  # rank 0 alone saves and analyses the record
                self.remove_history_files()

    def search_neighbors(self) -> None:
        """Under ``torch.distributed`` with several ranks: the kNN graph of each split's embeddings and the
        near-copy search of the input sketches, searched by every rank
        (:func:`~dq_plugins.analysis.distributed.search_on_all_ranks`, collectives: call it on every rank after
        the buffers are gathered); rank 0 keeps the graphs for its analysis in :meth:`finish`.

        Each graph is the one the analysis would search (its rows, ``k``, method and seed); when a rank fails,
        every rank gives up and rank 0 searches alone in the analysis. Without several ranks: nothing.
        """
        if distributed_rank_and_world()[1] < 2:
            return
        from dq_plugins.analysis.distributed import search_on_all_ranks
        from dq_plugins.analysis.embeddings import knn_settings
        from dq_plugins.scores.copies import near_copy_search

        for split in sorted(self.embeddings):  # the same order on every rank
            ledger = self.ledgers.get(split)
            if ledger is None:
                continue
            graph = search_on_all_ranks(f"the {split} embeddings", lambda: self._embedding_rows(split, ledger),
                                        knn_settings, self.embeddings[split].device)
            if graph is not None:
                self._neighbors[split] = graph
        if self.fingerprints:  # the near-copy search of the input sketches, all splits together
            device = next(iter(self.fingerprints.values())).device
            self._copy_neighbors = search_on_all_ranks("the input sketches", self._sketch_rows, near_copy_search, device)

    def _embedding_rows(self, split: str, ledger: SplitLedger) -> tuple[np.ndarray, np.ndarray]:
        """(slots (R,), embeddings (R, D)) of the rows the embedding analysis of ``split`` takes."""
        from dq_plugins.analysis.pipeline import labelled_rows

        slots, values = self.embeddings[split].to_numpy()
        known = labelled_rows(slots, ledger.labels())
        return (slots, values) if known.all() else (slots[known], values[known])

    def _sketch_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(slots (R,), centred sketches (R, D)) of the near-copy search, the splits in the analysis's order."""
        from dq_plugins.scores.copies import centred_sketches, copy_splits

        fingerprints = {split: buffer.to_numpy() for split, buffer in self.fingerprints.items()}
        splits = copy_splits(fingerprints)
        slots = np.concatenate([fingerprints[split][0] for split in splits]) if splits else np.zeros(0, np.int64)
        return slots, (centred_sketches(fingerprints) if splits else np.zeros((0, 1), np.float32))

    def save_raw(self, sink: MlflowSink, histories: dict[str, Any] | None = None) -> None:
        """Stage the raw record of every split (``dq/raw/<split>.npz``) in ``sink`` (closed epochs only): the
        one place a fit saves its record, single-label or (through :attr:`task_router`) a multi-label or
        token task's (:func:`~dq_plugins.raw_record.save_task_history`).

        ``histories``: the records of :meth:`histories` (or of the task router) when the caller already has
        them (``None``: read them, the task router's included).
        """
        if histories is None:
            histories = self.histories()
            if self.task_router is not None:
                histories.update(self.task_router.histories())
        for split, history in histories.items():
            if isinstance(history, SplitHistory):
                save_history(history, sink.stage_path(raw_path(split)))
            else:
                save_task_history(history, sink.stage_path(raw_path(split)))
            sink.add_artifact(raw_path(split))

    def remove_history_files(self) -> None:
        """Delete this fit's per-epoch files and memory-mapped embeddings (once the raw record is saved)."""
        import shutil

        for ledger in self.ledgers.values():
            ledger.history.detach_to_memory()
        shutil.rmtree(self._history_root, ignore_errors=True)

    def stage_embeddings(self, sink: MlflowSink) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every split's embeddings as ``split -> (ids (M,) int64, embeddings (M, D) float16)`` (the sample
        ids, not the slots; gathered over ranks first, see :meth:`close_all`), each staged in ``sink`` as
        ``dq/embeddings/<split>.npz`` (in full up to ``embeddings_upload_mb``, else a sample of rows)."""
        embeddings = {}
        for split, buffer in self.embeddings.items():  # outputs hold the sample ids, not the slots
            slots, values = buffer.to_numpy()
            embeddings[split] = (self.ids_of(split, slots), values)
        limit = int(self.config.embeddings_upload_mb * 2**20)
        for split, (ids, values) in embeddings.items():
            save_embeddings(*upload_sample(ids, values, limit), sink.stage_path(embeddings_path(split)))
            sink.add_artifact(embeddings_path(split))
        return embeddings

    def stage_fingerprints(self, sink: MlflowSink) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every split's input fingerprints as ``split -> (ids (M,), hashes (M,), sketches (M, D))`` (the sample ids,
        not the slots; gathered over ranks first), each staged in ``sink`` as ``dq/fingerprints/<split>.npz``."""
        fingerprints = {}
        for split, buffer in self.fingerprints.items():
            slots, *values = buffer.to_numpy()
            fingerprints[split] = (self.ids_of(split, slots), *values)
        for split, values in fingerprints.items():
            save_fingerprints(*values, sink.stage_path(fingerprints_path(split)))
            sink.add_artifact(fingerprints_path(split))
        return fingerprints

    def histories(self) -> dict[str, SplitHistory]:
        """Host records of every split (pending epochs must be closed first on every rank, see :meth:`close_all`)."""
        histories = {split: ledger.to_history(reduce=False) for split, ledger in self.ledgers.items()}
        for split, history in histories.items():
            if split in self.slot_maps:
                history.sample_ids = self.slot_maps[split].table[: history.labels.shape[0]].copy()
            recorder = self.latency.get(split)
            if recorder is not None and np.isfinite(recorder.latest).any():
                history.latency_ms = recorder.latest[: history.labels.shape[0]].copy()
        return histories

    def finish(self, sink: MlflowSink, *, options: Any = None) -> AnalysisResult | None:
        """Save the raw record, analyse it and log everything through ``sink`` (with :meth:`describe_run`).

        Never raises: an analysis error becomes a warning, and the raw record is uploaded (or kept
        locally) first so the analysis can be rerun. Returns the ``AnalysisResult`` or ``None``.
        """
        threads = torch.get_num_threads()  # UMAP/numba can change torch's thread count: restore it
        try:
            return self._finish(sink, options)
        finally:
            torch.set_num_threads(threads)

    def describe_run(self, sink: MlflowSink, histories: dict[str, SplitHistory], options: Any = None) -> None:
        """Stage what the run saw (:mod:`dq_plugins.sinks.datasets`): each recorded split as a dataset input,
        the callback's ``options`` (name -> value as given) as ``dq.<name>`` parameters, the library version tag."""
        from dq_plugins import __version__
        from dq_plugins.sinks.datasets import VERSION_TAG, option_params, split_input

        sink.add_tag(VERSION_TAG, __version__)
        for key, value in option_params(options or {}).items():
            sink.add_param(key, value)
        for split, history in histories.items():
            slots = np.flatnonzero(history.seen)
            sink.add_input(split_input(split, history.ids_of(slots), history.labels[slots]))

    def finish_run(self, sink: MlflowSink, *, options: Any = None) -> AnalysisResult | None:
        """:meth:`finish`, then close the run (FAILED when a ``FailRun`` rule held) and
        raise :class:`~dq_plugins.rules.DataQualityRuleFailed` when a ``FailRun("raise")`` rule held."""
        result = self.finish(sink, options=options)
        report = result.rules_report if result is not None else None
        failed = self.mark_failed_at_validation or (report is not None and (report.mark_failed or report.error is not None))
        sink.end("FAILED" if failed else "FINISHED", by_rule=failed)
        logger.info(fit_summary_line(result.metrics if result is not None else {},
                                     result.samples if result is not None else None, sink.location()))
        if report is not None:
            report.raise_if_failed()
        return result

    def _finish(self, sink: MlflowSink, options: Any = None) -> AnalysisResult | None:
        device_peak, host_peak = self.memory_peaks()
        sink.add_metric(DEVICE_PEAK_METRIC, device_peak / 2**20)
        sink.add_metric(HOST_PEAK_METRIC, host_peak / 2**20)
        histories = self.histories()
        self.save_raw(sink, histories)
        self.describe_run(sink, histories, options)
        for buffer in self.embeddings.values():  # the epoch files stay until the raw record is uploaded
            buffer.remove_mapped_file()
        result = None
        bar = progress(total=3, desc="end-of-fit analysis")
        try:
            from dq_plugins.analysis.embeddings import map_projection
            from dq_plugins.analysis.pipeline import analyze

            bar.set_postfix_str("scores")

            embeddings = self.stage_embeddings(sink)
            fingerprints = self.stage_fingerprints(sink)
            neighbors, self._neighbors = self._neighbors, {}
            copy_neighbors, self._copy_neighbors = self._copy_neighbors, None
            projection = map_projection(self.config.projection)
            sink.add_tag(PROJECTION_TAG, projection)
            result = analyze(histories, early_epochs=self.config.early_epochs, max_issue_rows=self.config.max_issue_rows,
                             embeddings=embeddings, fingerprints=fingerprints, neighbors=neighbors,
                             copy_neighbors=copy_neighbors, projection=projection)
            del neighbors, copy_neighbors
            metadata = self.metadata_frame()
            if metadata is not None:
                on = ["split", "sample_id"] if "split" in metadata.columns else ["sample_id"]
                result.samples = result.samples.merge(metadata, on=on, how="left")
            import pandas as pd

            rule_history = pd.concat(self._rule_history, ignore_index=True) if self._rule_history else None
            bar.update()
            bar.set_postfix_str("figures, slices, rules")
            publish_results(result, histories, embeddings, sink, texts=self.texts, rules=self.rules, pools=self.pools,
                            rule_history=rule_history)
        except Exception:  # noqa: BLE001 - analysis must never fail the training run
            trace = traceback.format_exc()
            sink.stage_path(ANALYSIS_ERROR_PATH).write_text(trace)
            sink.add_artifact(ANALYSIS_ERROR_PATH)
            warn(
                "dq_plugins: the end-of-fit analysis failed; the trained model is untouched and the raw "
                f"dynamics were saved under `{RAW_DIR}/` in the run so the analysis can be rerun.\n{trace}",
                RuntimeWarning,
                stacklevel=2,
            )
        bar.update()
        bar.set_postfix_str("upload")
        if sink.flush():
            # the raw record is in the run now: a resume from a checkpoint of this fit reads the epochs from there
            # (both callbacks do), so the per-epoch files are not kept on disk for it
            self.remove_history_files()
        bar.update()
        bar.close()
        self.result = result
        return result


def rule_columns(config: SessionConfig, task: str) -> list[str]:
    """The columns of the per-sample table a rule may read in a run of ``task`` ("single_label", "multilabel",
    "token_classification"): the task's own, the embedding columns, the metadata (and the latency for single-label)."""
    from dq_plugins.schema import COPY_COLUMNS, LABEL_FREE_EMBEDDING_COLUMNS, MULTILABEL_SAMPLE_COLUMNS, TOKEN_SAMPLE_COLUMNS

    if task == "single_label":
        columns = [*DYNAMICS_COLUMNS, *EMBEDDING_COLUMNS, LATENCY_COLUMN]
    else:
        # the embedding columns whether or not the run records embeddings: a rule reading them without is
        # skipped (warned) at the end, as for single-label runs
        columns = [*(MULTILABEL_SAMPLE_COLUMNS if task == "multilabel" else TOKEN_SAMPLE_COLUMNS),
                   *LABEL_FREE_EMBEDDING_COLUMNS, *(["neighbor_disagreement"] if task == "multilabel" else []),
                   *COPY_COLUMNS, LATENCY_COLUMN]
    columns += [*config.metadata_keys, *config.metadata_columns]
    if config.metadata is not None:
        columns += [c for c in config.metadata.columns if c not in ("sample_id", "split")]
    return [*dict.fromkeys(columns)]


def _metadata_frame(batches: list[tuple[torch.Tensor, dict[str, Any]]]) -> Any:
    """``sample_id`` and one column per metadata key from the kept ``(ids, values)`` of batches (host copies)."""
    import pandas as pd

    frames = []
    for ids, values in batches:
        ids_host = ids.cpu().numpy()
        columns = {}
        for key, value in values.items():
            value = value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(list(value), dtype=object)
            if len(value) != len(ids_host):
                raise ValueError(
                    f"Metadata `{key}` has {len(value)} values for a batch of {len(ids_host)} samples. "
                    "HINT: give one value per sample."
                )
            columns[key] = value
        frames.append(pd.DataFrame({"sample_id": ids_host, **columns}))
    return pd.concat(frames, ignore_index=True)


def _frame_state(frame: Any) -> dict[str, list]:
    """A DataFrame as ``column -> list of plain Python values`` (what ``torch.load(weights_only=True)`` reads)."""
    return {str(column): [value.item() if hasattr(value, "item") else value for value in frame[column].tolist()]
            for column in frame.columns}


def _epochs_of_raw(raw_record: Any, split: str) -> Any:
    """``fetch(epoch) -> row`` reading the epochs of ``raw_record(split)`` (see :meth:`DynamicsSession.resume`)."""
    if raw_record is None:
        return None
    cache: list[SplitHistory | None] = []

    def fetch(epoch: int) -> dict[str, np.ndarray] | None:
        if not cache:
            try:
                path = raw_record(split)
                cache.append(load_history(path) if path is not None else None)
            except Exception as error:  # noqa: BLE001 - an unreachable run is reported by the caller's error
                warn(f"dq_plugins: could not read the run's raw record of {split!r}: {error}", RuntimeWarning)
                cache.append(None)
        history = cache[0]
        if history is None or epoch not in history.epochs:
            return None
        row_index = int(np.flatnonzero(history.epochs == epoch)[0])
        return {**{name: history.fields[name][row_index] for name in FLOAT_FIELDS}, "pred": history.pred[row_index]}

    return fetch


def _check_validation_rule(rule: Any, metadata: list[str]) -> None:
    """A rule with ``on_validation=True`` may only read what a validation epoch has (at construction)."""
    if rule.split not in (VALIDATION, None):
        raise ValueError(
            f"Rule {rule.name!r} has on_validation=True but split={rule.split!r}: at a validation only the "
            f"validation split's record exists. HINT: set split={VALIDATION!r} (or None) on this rule."
        )
    columns = [*VALIDATION_RECORD_COLUMNS, *metadata]
    for condition in rule.conditions:
        if condition.over == "slices":
            needed = [condition.metric] if condition.metric not in VALIDATION_SLICE_METRICS else []
            where = (condition.where or {}).get("column")
            needed += [c for c in (where if isinstance(where, list) else [where]) if c is not None and c not in columns]
        else:
            needed = [c for c in condition.columns() if c not in columns]
        if needed:
            raise ValueError(
                f"Rule {rule.name!r} is evaluated at each validation (on_validation=True), but {needed[0]!r} exists "
                f"only after the end-of-fit analysis. At a validation the samples have {columns} and the slices "
                f"{list(VALIDATION_SLICE_METRICS)}. HINT: set on_validation=False for this rule, or test one of those."
            )
