"""Confident Learning: label issues, suggested labels and the noise joint, via cleanlab.

Reference: Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 2021 (https://arxiv.org/abs/1911.00068); implementation: cleanlab >= 2.9
(``cleanlab.filter.find_label_issues``, ``cleanlab.rank.get_label_quality_scores``,
``cleanlab.count.estimate_joint``). cleanlab is imported on first call, not at import time.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import ModuleType

import numpy as np

FILTER_BY_OPTIONS: tuple[str, ...] = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
"""Values of ``filter_by`` accepted by ``cleanlab.filter.find_label_issues`` (cleanlab 2.9)."""

PROB_EPSILON = 1e-12
"""Predicted probabilities are clipped to at least this before renormalising each row."""


@dataclass(frozen=True)
class ConfidentLearningScores:
    """Result of :func:`confident_learning` for ``N`` samples and ``C`` classes.

    Attributes:
        is_label_issue: ``(N,)`` bool, True where the given label is likely wrong.
        suggested_label: ``(N,)`` int64, the predicted class for flagged rows, the given label
            for the others.
        label_quality: ``(N,)`` float64 in ``[0, 1]``, higher = cleaner (self-confidence, i.e. the
            renormalised predicted probability of the given label); NaN for unrecorded rows.
        noise_rate: estimated fraction of wrong labels, ``1 - trace(joint)``.
        joint: ``(C, C)`` float64 estimate of ``P(given label = i, true label = j)``, summing to 1
            (all zeros when no row was recorded).
    """

    is_label_issue: np.ndarray
    suggested_label: np.ndarray
    label_quality: np.ndarray
    noise_rate: float
    joint: np.ndarray


def _import_cleanlab() -> tuple[ModuleType, ModuleType, ModuleType]:
    """Import the cleanlab modules used here, with an install hint when cleanlab is missing.

    ``import cleanlab`` (2.9) imports ``cleanlab.datalab``, whose ``spurious_correlation`` module
    runs ``warnings.filterwarnings("ignore")`` at import time and so silences every warning of the
    process. The import runs inside ``warnings.catch_warnings()`` to restore the filters after it.
    """
    try:
        with warnings.catch_warnings():
            import cleanlab.count
            import cleanlab.filter
            import cleanlab.rank
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "`confident_learning` needs cleanlab. HINT: `pip install 'cleanlab>=2.9'`."
        ) from error
    return cleanlab.filter, cleanlab.rank, cleanlab.count


def _check_inputs(labels: np.ndarray, pred_probs: np.ndarray, filter_by: str) -> None:
    """Raise a ValueError naming the argument when an input does not fit the contract."""
    if filter_by not in FILTER_BY_OPTIONS:
        raise ValueError(
            f"Expected argument `filter_by` to be one of {list(FILTER_BY_OPTIONS)} but got"
            f" {filter_by!r}."
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "Expected argument `labels` to be a 1-D integer array but got shape"
            f" {labels.shape} and dtype {labels.dtype}."
        )
    if pred_probs.ndim != 2 or pred_probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Expected argument `pred_probs` to have shape (N, C) with N = len(labels) ="
            f" {labels.shape[0]} but got shape {pred_probs.shape}."
        )
    if not np.issubdtype(pred_probs.dtype, np.floating):
        raise ValueError(
            f"Expected argument `pred_probs` to have a float dtype but got {pred_probs.dtype}."
        )


def _normalise_rows(probs: np.ndarray) -> np.ndarray:
    """Clip to :data:`PROB_EPSILON` and rescale every row to sum to 1."""
    clipped = np.clip(probs, PROB_EPSILON, None)
    return clipped / clipped.sum(axis=1, keepdims=True)


def confident_learning(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    filter_by: str = "prune_by_noise_rate",
) -> ConfidentLearningScores:
    """Find likely label issues with Confident Learning (Northcutt et al. 2021) through cleanlab.

    Rows of ``pred_probs`` are clipped to :data:`PROB_EPSILON` and renormalised to sum to 1. Rows
    holding any NaN are samples never recorded: they are left out of cleanlab and get
    ``is_label_issue=False``, ``suggested_label=label`` and ``label_quality=NaN`` (their labels
    are passed through unchecked).

    Classes absent from the labels of the recorded rows are dropped before calling cleanlab (their
    columns removed, rows renormalised, labels remapped to ``0 .. K-1``) and mapped back after:
    their rows and columns of ``joint`` are 0 and they are never suggested. Confident Learning
    cannot estimate a threshold for a class nobody was given, and cleanlab's handling of that case
    differs between its methods and versions. ``label_quality`` uses all ``C`` columns.

    With fewer than 2 recorded rows, or a single class among their labels, nothing can be
    estimated: no row is flagged, ``noise_rate`` is 0.0 and ``joint`` is the diagonal matrix of
    the given-label frequencies (all zeros when no row was recorded).

    cleanlab runs with ``n_jobs=1``: its multiprocessing forks the process (unsafe once CUDA is
    initialised) and the per-class pruning is cheap.

    Args:
        labels: ``(N,)`` integer given labels in ``0 .. C-1``.
        pred_probs: ``(N, C)`` float predicted probabilities, ideally out-of-sample; NaN rows =
            not recorded.
        filter_by: method of ``cleanlab.filter.find_label_issues``, one of
            :data:`FILTER_BY_OPTIONS`.

    Returns:
        :class:`ConfidentLearningScores`.

    Raises:
        ValueError: on a bad ``filter_by``, shape or dtype, an infinite probability, or a label
            of a recorded row outside ``0 .. C-1``.
        ModuleNotFoundError: if cleanlab is not installed.
    """
    labels = np.asarray(labels)
    pred_probs = np.asarray(pred_probs)
    _check_inputs(labels, pred_probs, filter_by)
    num_samples, num_classes = pred_probs.shape

    valid = ~np.isnan(pred_probs).any(axis=1)
    if np.isinf(pred_probs[valid]).any():
        raise ValueError(
            "Expected argument `pred_probs` to be finite in recorded rows (NaN = not recorded)"
            " but found inf."
        )
    valid_labels = labels[valid].astype(np.int64)
    if valid_labels.size and (valid_labels.min() < 0 or valid_labels.max() >= num_classes):
        bad = int(valid_labels[(valid_labels < 0) | (valid_labels >= num_classes)][0])
        raise ValueError(
            f"Expected argument `labels` in 0 .. {num_classes - 1} (pred_probs has {num_classes}"
            f" columns) but found {bad}."
        )

    is_label_issue = np.zeros(num_samples, dtype=bool)
    suggested_label = labels.astype(np.int64)
    label_quality = np.full(num_samples, np.nan)
    joint = np.zeros((num_classes, num_classes))
    if valid_labels.size == 0:
        return ConfidentLearningScores(is_label_issue, suggested_label, label_quality, 0.0, joint)

    cl_filter, cl_rank, cl_count = _import_cleanlab()
    probs = _normalise_rows(pred_probs[valid].astype(np.float64))
    label_quality[valid] = cl_rank.get_label_quality_scores(
        valid_labels, probs, method="self_confidence"
    )

    present = np.unique(valid_labels)
    if valid_labels.size < 2 or present.size < 2:
        frequencies = np.bincount(valid_labels, minlength=num_classes) / valid_labels.size
        return ConfidentLearningScores(
            is_label_issue, suggested_label, label_quality, 0.0, np.diag(frequencies)
        )

    # Restrict to the classes present among the given labels, then map back.
    compact_labels = np.searchsorted(present, valid_labels)
    compact_probs = _normalise_rows(probs[:, present])
    issues = cl_filter.find_label_issues(
        compact_labels, compact_probs, filter_by=filter_by, n_jobs=1
    )
    compact_joint = cl_count.estimate_joint(compact_labels, compact_probs)
    joint[np.ix_(present, present)] = compact_joint

    valid_rows = np.flatnonzero(valid)
    flagged_rows = valid_rows[issues]
    is_label_issue[flagged_rows] = True
    suggested_label[flagged_rows] = present[np.argmax(compact_probs[issues], axis=1)]
    noise_rate = float(1.0 - np.trace(joint))
    return ConfidentLearningScores(
        is_label_issue, suggested_label, label_quality, noise_rate, joint
    )
