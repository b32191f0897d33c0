"""Framework-neutral extraction and validation of (ids, labels, logits) from one batch.

The adapters hand over what their framework gives them; this module finds the tensors and,
on the first batch of a split, checks them with one host sync so that bad input fails at
once with a message that names the culprit and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

WITH_IDS_HINT = (
    "HINT: wrap your dataset so each item carries its index: "
    "`from dq_plugins import with_ids; train_ds = with_ids(train_ds)`."
)


def get_key(batch: Any, key: str, role: str, argument: str) -> torch.Tensor:
    """Return ``batch[key]`` as a tensor or raise a ``ValueError`` that names the key and the fix."""
    if not isinstance(batch, Mapping):
        raise ValueError(
            f"dq_plugins expects each batch to be a dict holding the sample {role} under `{key}`, "
            f"but got a batch of type {type(batch).__name__}. {WITH_IDS_HINT} "
            f"It yields dicts with keys 'idx', 'inputs' and 'labels' from tuple items."
        )
    if key not in batch:
        hint = WITH_IDS_HINT if role == "ids" else f"HINT: pass `{argument}=` the key that holds them."
        raise ValueError(
            f"The batch has no key `{key}` holding the sample {role} "
            f"(its keys are {sorted(map(str, batch))}). {hint}"
        )
    value = batch[key]
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    return value


def find_logits(output: Any) -> torch.Tensor | None:
    """The logits tensor inside a step output or a module output, or ``None``.

    Accepts a tensor, a mapping or object with ``logits`` (HF ``ModelOutput``), or a tuple whose
    first element is a tensor.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        value = output.get("logits")
        return value if isinstance(value, torch.Tensor) else None
    value = getattr(output, "logits", None)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def check_shapes(ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, id_key: str, label_key: str) -> None:
    """Shape and dtype checks; metadata only, no host sync."""
    if logits.ndim != 2:
        raise ValueError(
            f"Expected logits of shape (batch, num_classes), but got shape {tuple(logits.shape)}. "
            "HINT: return the classifier's output before softmax, one row per sample "
            "(for sequence models, the pooled logits, not per-token logits)."
        )
    if not logits.is_floating_point():
        raise ValueError(f"Expected floating-point logits, but got dtype {logits.dtype}.")
    if labels.ndim != 1:
        raise ValueError(
            f"Expected `{label_key}` to hold one integer class per sample, shape (batch,), but got shape "
            f"{tuple(labels.shape)}. HINT: pass class indices, not one-hot or soft labels."
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"Expected integer class labels under `{label_key}`, but got dtype {labels.dtype}.")
    if ids.ndim != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(
            f"Expected integer sample ids of shape (batch,) under `{id_key}`, but got dtype {ids.dtype} "
            f"and shape {tuple(ids.shape)}. {WITH_IDS_HINT}"
        )
    if not (ids.shape[0] == labels.shape[0] == logits.shape[0]):
        raise ValueError(
            f"Batch sizes disagree: {ids.shape[0]} ids under `{id_key}`, {labels.shape[0]} labels under "
            f"`{label_key}` and {logits.shape[0]} rows of logits."
        )


def check_values(
    ids: torch.Tensor, labels: torch.Tensor, num_classes: int, capacity: int, split: str, id_key: str, label_key: str
) -> None:
    """Range checks of ids and labels. Syncs with the host: call on the first batch of a split only."""
    if ids.numel() == 0:
        return
    low_label, high_label = int(labels.min()), int(labels.max())
    if low_label < 0 or high_label >= num_classes:
        bad = low_label if low_label < 0 else high_label
        raise ValueError(
            f"Label {bad} under `{label_key}` is outside the {num_classes} classes of the logits "
            f"(valid labels are 0..{num_classes - 1}). HINT: the classifier head needs as many outputs "
            "as there are classes, and labels must be class indices (no ignore index such as -100)."
        )
    low_id, high_id = int(ids.min()), int(ids.max())
    if low_id < 0 or high_id >= capacity:
        bad = low_id if low_id < 0 else high_id
        raise ValueError(
            f"Sample id {bad} under `{id_key}` is outside the known range 0..{capacity - 1} of the "
            f"{split} split (its dataset length). HINT: ids must be 0-based positions in the dataset; "
            f"{WITH_IDS_HINT} Or, if your ids are stable but larger, pass "
            f"`{'num_samples' if split == 'train' else 'num_val_samples'}=<max id + 1>` to the callback."
        )


TOKEN_KEY = "input_ids"
"""Batch key read as token ids (with the attention mask) when no ``input_key`` is given."""


def find_input(batch: Any, input_key: str | None, skip: tuple[str, ...], mask_key: str
               ) -> tuple[str, torch.Tensor, torch.Tensor | None] | None:
    """The model input of a dict batch, for input fingerprints: ``(key, tensor, attention mask or None)``.

    ``input_key`` when given (a missing key or a non-tensor raises, naming the keys there are);
    else ``batch["input_ids"]`` with ``batch[mask_key]``; else the first floating-point tensor whose
    key is not in ``skip`` (ids, labels, metadata); else ``None``. Only metadata is read: no host sync.
    """
    if not isinstance(batch, Mapping):
        return None
    if input_key is not None:
        value = batch.get(input_key)
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"`input_key={input_key!r}` names no tensor in the batch (its keys are {sorted(map(str, batch))}). "
                "HINT: pass the key of the model's input, or `fingerprints=False` to switch input copies off."
            )
        mask = batch.get(mask_key)
        return input_key, value, mask if isinstance(mask, torch.Tensor) else None
    tokens = batch.get(TOKEN_KEY)
    if isinstance(tokens, torch.Tensor) and not tokens.is_floating_point():
        mask = batch.get(mask_key)
        return TOKEN_KEY, tokens, mask if isinstance(mask, torch.Tensor) else None
    for key, value in batch.items():
        if key in skip or key == mask_key or not isinstance(value, torch.Tensor):
            continue
        if value.is_floating_point() and value.ndim >= 1:
            return str(key), value, None
    return None
