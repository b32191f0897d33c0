"""The raw record of a run: the host record of each split (:class:`SplitHistory`) and its file format.

What the analysis reads (:mod:`dq_plugins.analysis.pipeline`), what a fit saves (``dq/raw/<split>.npz``,
the embeddings and the input fingerprints; paths in :mod:`dq_plugins.schema`) and what ``dq analyze``
reads back. numpy only, so every phase can import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from dq_plugins.npz_guard import check_npz

FLOAT_FIELDS: tuple[str, ...] = ("loss", "prob_given", "margin", "correct", "prob_sq_sum", "prob_pred")
"""Float fields of the per-epoch record (:mod:`dq_plugins.recording.ledger`), in the row order of ``SplitLedger._sums``."""


@dataclass
class SplitHistory:
    """Host-side record of one split, the input of the scores.

    Attributes:
        epochs: (E,) int64, the trainer epoch of each recorded row, increasing.
        fields: name -> (E, N) float32 for each of :data:`FLOAT_FIELDS`, NaN where missing.
        pred: (E, N) int32 predicted class, -1 where missing.
        labels: (N,) int64 given label, -1 for ids never seen.
        mean_probs: (N, C) mean softmax over all valid occurrences, NaN rows when never seen; float32, float16
            above :data:`WIDE_FLOAT32_MAX_ELEMENTS` elements (as the ledger's sums);
            for a held-out split (``SplitLedger.latest_probs_only``) the softmax of its latest pass,
            the out-of-sample prediction of the final model, as cleanlab expects.
        early_probs: (N, C) mean softmax over the occurrences of the early window (dtype as ``mean_probs``; epochs
            below ``SplitLedger.early_epochs``), NaN rows when not seen there; ``None`` when not kept.
        wave_probs: (N, C) mean softmax over the epochs up to the Label Wave minimum (``early_window_end``, see
            :mod:`dq_plugins.recording.wave`), the window of the label flags; ``None``: no minimum was seen (or
            ``early_epochs`` was fixed), the flags use ``early_probs``.
        early_window_end: the last epoch of ``wave_probs``' window, ``None`` without it.
        latency_ms: (N,) float32 forward milliseconds per sample of the latest timed epoch
            (:mod:`dq_plugins.recording.latency`), NaN where not timed; ``None`` when nothing was timed.
        sample_ids: (N,) int64 increasing, the sample id of each slot (:mod:`dq_plugins.recording.slots`)
            when the split's ids were sparse or huge; ``None``: slot ``i`` is sample id ``i``. Every (N,)
            array above is indexed by slot; :meth:`ids_of` and :meth:`slots_of` convert.
    """

    epochs: np.ndarray
    fields: dict[str, np.ndarray]
    pred: np.ndarray
    labels: np.ndarray
    mean_probs: np.ndarray
    early_probs: np.ndarray | None = None
    latency_ms: np.ndarray | None = None
    sample_ids: np.ndarray | None = None
    wave_probs: np.ndarray | None = None
    early_window_end: int | None = None

    def ids_of(self, slots: np.ndarray) -> np.ndarray:
        """int64 sample ids of ``slots`` (any shape); negative values (``-1``: none) stay as they are."""
        slots = np.asarray(slots, dtype=np.int64)
        if self.sample_ids is None:
            return slots
        return np.where(slots >= 0, self.sample_ids[np.clip(slots, 0, None)], slots)

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """int64 slots of sample ``ids`` (any shape), ``-1`` for an id without a slot."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.sample_ids is None:
            return np.where((ids >= 0) & (ids < self.labels.shape[0]), ids, -1)
        if not self.sample_ids.size:
            return np.full(ids.shape, -1, dtype=np.int64)
        at = np.clip(np.searchsorted(self.sample_ids, ids), 0, self.sample_ids.size - 1)
        return np.where(self.sample_ids[at] == ids, at, -1)

    @property
    def seen(self) -> np.ndarray:
        """(N,) bool: recorded at least once with finite logits."""
        return ~np.isnan(self.mean_probs[:, 0]) if self.mean_probs.size else np.zeros(0, bool)


def save_history(history: SplitHistory, path: str | os.PathLike) -> None:
    """Write a :class:`SplitHistory` as a compressed ``.npz`` (see :func:`load_history`), straight to the file
    (numpy writes each array through the zip stream in blocks: no in-memory copy of the archive)."""
    with open(path, "wb") as handle:
        np.savez_compressed(
            handle,
            epochs=history.epochs,
            pred=history.pred,
            labels=history.labels,
            mean_probs=_narrow(history.mean_probs),
            **({"early_probs": _narrow(history.early_probs)} if history.early_probs is not None else {}),
            **({"latency_ms": history.latency_ms} if history.latency_ms is not None else {}),
            **({"sample_ids": history.sample_ids} if history.sample_ids is not None else {}),
            **({"wave_probs": _narrow(history.wave_probs), "early_window_end": np.int64(history.early_window_end)}
               if history.wave_probs is not None else {}),
            **{f"field_{name}": values for name, values in history.fields.items()},
        )


def save_task_history(history: Any, path: str | os.PathLike) -> None:
    """Write the host record of one split of a multi-label or token task (``MultiLabelHistory`` /
    ``TokenHistory``, whose class attribute ``task`` names it) as a compressed ``.npz``: ``task``, each
    array attribute under its name and each entry of ``fields`` as ``field_<name>`` (see :func:`load_task_record`)."""
    arrays = {name: value for name, value in vars(history).items() if isinstance(value, np.ndarray)}
    arrays.update({f"field_{name}": value for name, value in (getattr(history, "fields", None) or {}).items()})
    if getattr(history, "early_window_end", None) is not None:  # the Label Wave's choice (see recording/wave.py)
        arrays["early_window_end"] = np.int64(history.early_window_end)
    with open(path, "wb") as handle:  # straight to the file, as save_history
        np.savez_compressed(handle, task=np.asarray(history.task), **arrays)


def load_task_record(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """``(task, arrays)`` of a record written by :func:`save_task_history`."""
    check_npz(path)  # declared sizes first: an untrusted file is never decompressed blindly
    with np.load(path, allow_pickle=False) as data:
        return str(data["task"]), {name: data[name] for name in data.files if name != "task"}


def load_task_history(path: str | os.PathLike) -> Any:
    """The ``MultiLabelHistory`` / ``TokenHistory`` of a record written by :func:`save_task_history`."""
    task, arrays = load_task_record(path)
    optional = {name: arrays.get(name) for name in ("early_probs", "sample_ids")}
    if task == "multilabel":
        from dq_plugins.recording.multilabel import MultiLabelHistory

        fields = {name[len("field_"):]: value for name, value in arrays.items() if name.startswith("field_")}
        return MultiLabelHistory(arrays["epochs"], fields, arrays["labels"], arrays["mean_probs"], **optional)
    if task == "token_classification":
        from dq_plugins.recording.tokens import TokenHistory

        end = arrays.get("early_window_end")
        return TokenHistory(int(arrays["labels"].shape[1]), arrays["labels"], arrays["pred"], arrays["mean_probs"],
                            optional["early_probs"], arrays["epochs"], arrays["accuracy"], optional["sample_ids"],
                            None if end is None else int(end))
    raise ValueError(f"{path} holds a record of task {task!r}, which this version of dq_plugins does not read.")


def is_task_record(path: str | os.PathLike) -> bool:
    """Whether a raw record (``dq/raw/<split>.npz``) is a multi-label or token task's (:func:`save_task_history`)."""
    check_npz(path)
    with np.load(path, allow_pickle=False) as data:
        return "task" in data.files


WIDE_FLOAT32_MAX_ELEMENTS = 2**25
"""Softmax sums and means of at most this many elements are float32; larger ones float16 (the ledger's
host sums, the raw record's ``mean_probs`` / ``early_probs``)."""


def _widen(probs: np.ndarray) -> np.ndarray:
    """A stored softmax mean as the ledger hands it to the analysis: float32 up to :data:`WIDE_FLOAT32_MAX_ELEMENTS`
    elements, float16 (as stored) above."""
    return probs if probs.size > WIDE_FLOAT32_MAX_ELEMENTS else probs.astype(np.float32, copy=False)


def _narrow(probs: np.ndarray) -> np.ndarray:
    """Softmax means as float16 above :data:`WIDE_FLOAT32_MAX_ELEMENTS` (float32 below), no copy when they already are."""
    return probs.astype(np.float16, copy=False) if probs.size > WIDE_FLOAT32_MAX_ELEMENTS else probs


def save_embeddings(ids: np.ndarray, embeddings: np.ndarray, path: str | os.PathLike) -> None:
    """Write (ids (M,) int64, embeddings (M, D) float16) as compressed ``.npz`` arrays ``ids`` and ``embeddings``."""
    with open(path, "wb") as handle:
        np.savez_compressed(handle, ids=ids, embeddings=embeddings)


def upload_sample(ids: np.ndarray, embeddings: np.ndarray, limit_bytes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, embeddings)`` unchanged when ``embeddings.nbytes <= limit_bytes``, else a uniform random
    sample of rows (in id order) whose embeddings fit in ``limit_bytes``; the analysis uses every row."""
    if embeddings.nbytes <= limit_bytes or embeddings.shape[0] == 0:
        return ids, embeddings
    keep = max(1, limit_bytes // max(1, embeddings[0].nbytes))
    rows = np.sort(np.random.default_rng(seed).choice(embeddings.shape[0], size=keep, replace=False))
    return ids[rows], embeddings[rows]


def save_fingerprints(ids: np.ndarray, hashes: np.ndarray, sketches: np.ndarray, path: str | os.PathLike) -> None:
    """Write input fingerprints (ids (M,), hashes (M,) int64, sketches (M, D) float32) as ``.npz``."""
    with open(path, "wb") as handle:
        np.savez(handle, ids=ids, hashes=hashes, sketches=sketches)


def load_fingerprints(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``(ids, hashes, sketches)`` written by :func:`save_fingerprints`."""
    check_npz(path)  # declared sizes first: an untrusted file is never decompressed blindly
    with np.load(path, allow_pickle=False) as data:
        return data["ids"], data["hashes"], data["sketches"]


def load_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(ids, embeddings)`` written by :func:`save_embeddings`."""
    check_npz(path)  # declared sizes first: an untrusted file is never decompressed blindly
    with np.load(path, allow_pickle=False) as data:
        return data["ids"], data["embeddings"]


def load_history(path: str | os.PathLike) -> SplitHistory:
    """Read a history written by :func:`save_history`."""
    check_npz(path)  # declared sizes first: an untrusted file is never decompressed blindly
    with np.load(path, allow_pickle=False) as data:
        return SplitHistory(
            epochs=data["epochs"],
            # a raw record of an older version lacks the later fields: NaN (missing) there
            fields={name: data[f"field_{name}"] if f"field_{name}" in data.files
                    else np.full(data["pred"].shape, np.nan, np.float32) for name in FLOAT_FIELDS},
            pred=data["pred"],
            labels=data["labels"],
            mean_probs=_widen(data["mean_probs"]),
            early_probs=_widen(data["early_probs"]) if "early_probs" in data.files else None,
            latency_ms=data["latency_ms"] if "latency_ms" in data.files else None,
            sample_ids=data["sample_ids"] if "sample_ids" in data.files else None,
            wave_probs=_widen(data["wave_probs"]) if "wave_probs" in data.files else None,
            early_window_end=int(data["early_window_end"]) if "early_window_end" in data.files else None,
        )
