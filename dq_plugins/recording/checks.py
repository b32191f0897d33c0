"""Checks of one batch's (ids, labels, logits) before it is recorded.

Shapes and dtypes on every batch (metadata only, no host sync); value ranges on the first batch of a
split (one host sync), so that bad input fails at once with a message that names the culprit and the fix.
"""

from __future__ import annotations

import torch

from dq_plugins.schema import TRAIN

WITH_IDS_HINT = (
    "HINT: wrap your dataset so each item carries its index: "
    "`from dq_plugins import with_ids; train_ds = with_ids(train_ds)`."
)


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
            f"`{'num_samples' if split == TRAIN else 'num_val_samples'}=<max id + 1>` to the callback."
        )
