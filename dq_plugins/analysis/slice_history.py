"""Slice membership over training: :func:`slice_members` / :func:`slice_masks` (the sample ids or row
masks of named slices) and :func:`slice_epoch_accuracy` (their accuracy per epoch, as MLflow metric
histories keyed by :func:`metric_key`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from dq_plugins.analysis.slice_keys import PAIR_JOIN, slice_columns, slice_key

def slice_members(
    samples: pd.DataFrame, slices: pd.DataFrame | Iterable[tuple[str, str]], *, numeric_bins: int | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """Sample ids of named slices.

    Args:
        samples: the per-sample table the slices were computed from (bucket edges depend on it).
        slices: a table with ``split`` and ``slice`` columns (from :func:`slice_metrics` or
            :func:`find_weak_slices`), or (split, slice name) pairs. Pair slices join two names with
            :data:`PAIR_JOIN`.
        numeric_bins: the value used to compute the slices; ``None`` reads ``slices.attrs["numeric_bins"]``
            (set by :func:`slice_metrics`), else 4.

    Returns:
        (split, slice) -> sorted int64 sample ids; a slice name that matches nothing maps to an empty array.
    """
    ids = samples["sample_id"].to_numpy(dtype=np.int64)
    return {key: np.sort(ids[mask]) for key, mask in slice_masks(samples, slices, numeric_bins=numeric_bins).items()}


def slice_masks(
    samples: pd.DataFrame, slices: pd.DataFrame | Iterable[tuple[str, str]], *, numeric_bins: int | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """Like :func:`slice_members`, but (split, slice) -> (len(samples),) bool mask over the rows of ``samples``."""
    if isinstance(slices, pd.DataFrame):
        wanted = list(zip(slices["split"].astype(str), slices["slice"].astype(str), strict=True))
        bins = numeric_bins or slices.attrs.get("numeric_bins", 4)
    else:
        wanted = [(str(s), str(n)) for s, n in slices]
        bins = numeric_bins or 4
    slice_columns(samples, None)
    split_of = samples["split"].astype(str).to_numpy()
    split_masks: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    columns = [c for c in samples.columns if c not in ("sample_id", "split")]
    keyed: set[str] = set()

    def single_mask(name: str) -> np.ndarray | None:
        if name in masks:
            return masks[name]
        for column in columns:
            if column in keyed or not (name.startswith(f"{column}=") or name.startswith(f"{column} in ")):
                continue
            keyed.add(column)
            key = slice_key(samples, column, bins)
            for code in range(len(key.values)):
                masks[key.slice_name(code)] = key.codes == code
            if name in masks:
                return masks[name]
        return None

    out: dict[tuple[str, str], np.ndarray] = {}
    for split, name in wanted:
        mask = single_mask(name)
        if mask is None:
            for match in re.finditer(re.escape(PAIR_JOIN), name):
                left, right = single_mask(name[: match.start()]), single_mask(name[match.end():])
                if left is not None and right is not None:
                    mask = left & right
                    break
        if split not in split_masks:
            split_masks[split] = split_of == split
        out[(split, name)] = np.zeros(len(samples), dtype=bool) if mask is None else mask & split_masks[split]
    return out


def slice_epoch_accuracy(
    samples: pd.DataFrame,
    slices: pd.DataFrame,
    correct: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    max_slices: int = 50,
    prefix: str = "dq.slice",
) -> dict[str, list[tuple[int, float]]]:
    """Accuracy per epoch of named slices, as MLflow metric histories.

    Args:
        samples: the per-sample table.
        slices: rows with ``split`` and ``slice`` (from :func:`slice_metrics` / :func:`find_weak_slices`);
            the first ``max_slices`` rows are used.
        correct: split -> (epochs (E,) int, correct (E, N) float, 1/0 per epoch and sample id, NaN where
            missing), e.g. ``(history.epochs, history.fields["correct"])`` of a ``SplitHistory``.

    Returns:
        metric key (:func:`metric_key`) -> [(epoch, accuracy), ...], epochs without any recorded member left out.
    """
    members = slice_members(samples, slices.head(max_slices))
    out: dict[str, list[tuple[int, float]]] = {}
    for (split, name), ids in members.items():
        if split not in correct or not len(ids):
            continue
        epochs, values = correct[split]
        ids = ids[ids < values.shape[1]]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch where no member was recorded: NaN
            per_epoch = np.nanmean(values[:, ids], axis=1) if len(ids) else np.full(len(epochs), np.nan)
        out[metric_key(prefix, split, name, "accuracy")] = [
            (int(e), float(v)) for e, v in zip(epochs, per_epoch, strict=True) if np.isfinite(v)
        ]
    return out


_METRIC_UNSAFE = re.compile(r"[^\w\-./:]+")


def metric_key(*parts: str) -> str:
    """An MLflow metric key from parts joined by ``.``, readable and within MLflow's character set:
    ``metric_key("dq.slice", "train", "source=forum AND length in (120, 250]", "accuracy")`` is
    ``"dq.slice.train.source_forum_AND_length_in_120-250.accuracy"`` (at most 250 characters)."""
    cleaned = []
    for part in parts:
        text = re.sub(r"\s*,\s*", "-", str(part))
        text = re.sub(r"[()\[\]]", "", text)
        cleaned.append(_METRIC_UNSAFE.sub("_", text).strip("_"))
    return ".".join(cleaned)[:250]
