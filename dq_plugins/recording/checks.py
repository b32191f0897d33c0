"""Checks of one batch's (ids, labels, logits) before it is recorded.

Shapes and dtypes on every batch (metadata only, no host sync); value ranges on the first batch of a
split (one host sync), so that bad input fails at once with a message that names the culprit and the fix.
"""

from __future__ import annotations

import torch

from dq_plugins.recording.collisions import IGNORE_INDEX
from dq_plugins.schema import TRAIN

WITH_IDS_HINT = (
    "HINT: wrap your dataset so each item carries its index: "
    "`from dq_plugins import with_ids; train_ds = with_ids(train_ds)`."
)


_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_INTEGER_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})


def check_shapes(ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, id_key: str, label_key: str) -> None:
    """Shape and dtype checks; metadata only, no host sync."""
    shape = logits.shape
    if (len(shape) == 2 and shape[1] != 1 and logits.dtype in _FLOAT_DTYPES and labels.dtype in _INTEGER_DTYPES
            and ids.dtype in _INTEGER_DTYPES and labels.ndim == 1 and ids.ndim == 1
            and ids.shape[0] == labels.shape[0] == shape[0]):
        return  # every check below passes (they run one by one, for their messages, on a batch that fails one)
    if logits.ndim != 2:
        raise ValueError(
            f"Expected logits of shape (batch, num_classes), but got shape {tuple(logits.shape)}. "
            "HINT: return the classifier's output before softmax, one row per sample "
            "(for sequence models, the pooled logits, not per-token logits)."
        )
    if logits.shape[1] == 1:
        raise ValueError(
            f"Expected logits with one column per class, but got shape {tuple(logits.shape)}: a binary head with a "
            "single output (sigmoid / BCEWithLogitsLoss). HINT: hand dq_plugins two logits per sample, "
            "`torch.cat([torch.zeros_like(z), z], dim=1)` for the single logit `z` (its softmax is "
            "[1 - sigmoid(z), sigmoid(z)]), with labels 0/1 as class indices; train with the same head as before."
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


def label_range_message(label: int, num_classes: int, label_key: str) -> str:
    """The error for a class label outside the logits' classes."""
    return (
        f"Label {label} under `{label_key}` is outside the {num_classes} classes of the logits "
        f"(valid labels are 0..{num_classes - 1}, and {IGNORE_INDEX}, PyTorch's ignore index, for rows that are not "
        "recorded). HINT: the classifier head needs as many outputs as there are classes, and labels must be class "
        "indices."
    )


def check_transposed(logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor | None) -> None:
    """For a square batch (batch size == classes), whose shape cannot tell rows from classes: when the step's
    ``loss`` matches the cross-entropy of ``logits.T`` and not that of ``logits``, the logits are transposed.
    Syncs with the host: call on the first batch of a split only."""
    if loss is None or logits.shape[0] != logits.shape[1] or not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return
    keep = labels != IGNORE_INDEX
    if not bool(keep.any()):
        return
    with torch.no_grad():
        values = logits.detach().float()
        as_given = torch.nn.functional.cross_entropy(values[keep], labels[keep].long())
        swapped = torch.nn.functional.cross_entropy(values.T[keep], labels[keep].long())
        target = loss.detach().float()
        tolerance = 1e-3 * max(1.0, float(target.abs()))
        if abs(float(swapped - target)) <= tolerance < abs(float(as_given - target)):
            raise ValueError(
                f"The logits look transposed: the step's loss {float(target):.4g} is the cross-entropy of "
                f"`logits.T` ({float(swapped):.4g}), not of `logits` ({float(as_given):.4g}); with {logits.shape[0]} "
                "samples and as many classes the shape cannot tell. HINT: return logits of shape "
                "(batch, num_classes), one row per sample, as the loss sees them."
            )


def check_values(
    ids: torch.Tensor, labels: torch.Tensor, num_classes: int, capacity: int, split: str, id_key: str, label_key: str
) -> None:
    """Range checks of ids and labels. Syncs with the host: call on the first batch of a split only."""
    if ids.numel() == 0:
        return
    kept = labels[labels != IGNORE_INDEX]  # PyTorch's ignore index: such rows are not recorded (see collisions.py)
    low_label, high_label = (int(kept.min()), int(kept.max())) if kept.numel() else (0, 0)
    if low_label < 0 or high_label >= num_classes:
        raise ValueError(label_range_message(low_label if low_label < 0 else high_label, num_classes, label_key))
    low_id, high_id = int(ids.min()), int(ids.max())
    if low_id < 0 or high_id >= capacity:
        bad = low_id if low_id < 0 else high_id
        raise ValueError(
            f"Sample id {bad} under `{id_key}` is outside the known range 0..{capacity - 1} of the "
            f"{split} split (its dataset length). HINT: ids must be 0-based positions in the dataset; "
            f"{WITH_IDS_HINT} Or, if your ids are stable but sparse or large, pass them all as `sample_ids=` "
            f"to the callback (one slot per distinct id; `{'num_samples' if split == TRAIN else 'num_val_samples'}"
            "=<max id + 1>` allocates a slot for every id below the largest)."
        )
