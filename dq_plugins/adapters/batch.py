"""Framework-neutral extraction and validation of (ids, labels, logits) from one batch.

The adapters hand over what their framework gives them; this module finds the tensors (the checks
of what is recorded are :mod:`dq_plugins.recording.checks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dq_plugins.recording.checks import WITH_IDS_HINT


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
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            fix = (f"map them to 0-based integer positions ({WITH_IDS_HINT[6:]}) and keep the string ids as "
                   f"metadata (`metadata_keys=[...]` under another key)." if role == "ids" else
                   "map the class names to 0-based class indices (e.g. `ClassLabel` in `datasets`, or a dict).")
            raise ValueError(
                f"The sample {role} under `{key}` are strings (e.g. {value[0]!r}); dq_plugins needs one integer per "
                f"sample. HINT: {fix}"
            )
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
