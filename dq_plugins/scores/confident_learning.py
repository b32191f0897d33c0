"""Confident Learning: label issues, suggested labels and the noise joint, via cleanlab.

Reference: Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 2021 (https://arxiv.org/abs/1911.00068); implementation: cleanlab >= 2.9
(``cleanlab.count.estimate_joint``; for ``filter_by="prune_by_noise_rate"``, the default,
``cleanlab.filter.find_label_issues`` and ``cleanlab.count.compute_confident_joint`` are recomputed here row
chunk by row chunk, and class by class for the pruning, so that a 1.28M x 1000 softmax is never copied whole;
the flags are identical to cleanlab's, see :func:`_prune_by_noise_rate_chunked`; other ``filter_by`` values
call cleanlab on one float32 copy). cleanlab is imported on first call, not at import time.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from collections.abc import Callable
from types import ModuleType

import numpy as np
from scipy import sparse

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
        noise_rate_interval: ``(low, high)``, the 95% bootstrap interval of ``noise_rate`` over
            samples (:func:`noise_rate_interval`); ``(noise_rate, noise_rate)`` when nothing could be
            estimated.
    """

    is_label_issue: np.ndarray
    suggested_label: np.ndarray
    label_quality: np.ndarray
    noise_rate: float
    joint: np.ndarray
    noise_rate_interval: tuple[float, float] = (float("nan"), float("nan"))


def import_cleanlab(module: str = "cleanlab") -> ModuleType:
    """``importlib.import_module(module)`` for a cleanlab module, leaving the process's warning filters as they were.

    ``import cleanlab`` (2.9) imports ``cleanlab.datalab``, whose ``spurious_correlation`` module
    runs ``warnings.filterwarnings("ignore")`` at import time and so silences every warning of the
    process (the trust warning of a run included). Every cleanlab import of the package goes through here.

    Raises:
        ModuleNotFoundError: without cleanlab, with an install hint.
    """
    import importlib

    try:
        with warnings.catch_warnings():
            return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"dq_plugins needs cleanlab (`{module}`). HINT: `pip install 'cleanlab>=2.9'`.") from error


def _import_cleanlab() -> tuple[ModuleType, ModuleType, ModuleType]:
    """The cleanlab modules used here (:func:`import_cleanlab`)."""
    return import_cleanlab("cleanlab.filter"), import_cleanlab("cleanlab.rank"), import_cleanlab("cleanlab.count")


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


BOOTSTRAP_DRAWS = 1000
"""Bootstrap resamples of :func:`noise_rate_interval`."""


def noise_rate_interval(
    confident_joint: np.ndarray, label_counts: np.ndarray, *, level: float = 0.95, draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval over samples of the noise rate ``1 - trace(joint)`` of confident learning.

    Confident learning counts each sample into at most one cell of the ``(C, C)`` confident joint
    (given label ``i``, confidently class ``j``) and calibrates every row to its label count
    ``n_i``: ``noise_rate = 1 - sum_i (n_i / N) * cj[i, i] / sum_j cj[i, j]`` (Northcutt et al.
    2021, Eq. 3-4; cleanlab's ``estimate_joint``). Resampling the ``N`` samples with replacement
    is a multinomial draw of ``N`` over the ``C * C`` cells plus one "not confidently counted" cell
    per given label, so each resample costs ``O(C^2)``, not ``O(N)``, and no model is refitted.
    The per-class thresholds are held fixed (their own sampling error is not in the interval).

    Args:
        confident_joint: ``(C, C)`` non-negative counts, uncalibrated
            (``cleanlab.count.compute_confident_joint(..., calibrate=False)``).
        label_counts: ``(C,)`` number of samples given each label (a row sum above it counts instead).
        level: coverage of the central interval.
        draws: number of resamples.
        seed: seed of the resampling (the interval is deterministic for given counts).

    Returns:
        ``(low, high)`` percentiles of the resampled noise rates.

    Raises:
        ValueError: on shapes that do not fit or negative counts.
    """
    joint = np.asarray(confident_joint, dtype=np.float64)
    counts = np.asarray(label_counts, dtype=np.float64)
    if joint.ndim != 2 or joint.shape[0] != joint.shape[1] or counts.shape != (joint.shape[0],):
        raise ValueError(
            f"Expected `confident_joint` of shape (C, C) and `label_counts` of shape (C,) but got {joint.shape} and "
            f"{counts.shape}."
        )
    if (joint < 0).any() or (counts < 0).any():
        raise ValueError("Expected non-negative counts in `confident_joint` and `label_counts`.")
    # cleanlab puts at least 1 on every diagonal cell, so a row may exceed its label count by one
    unassigned = np.maximum(counts - joint.sum(axis=1), 0.0)
    counts = joint.sum(axis=1) + unassigned
    total = counts.sum()
    num_classes = joint.shape[0]
    if total <= 0:
        return float("nan"), float("nan")
    cells = np.concatenate([joint.ravel(), np.maximum(unassigned, 0.0)])
    # only the non-empty cells can be drawn: at C = 1000 the C x C joint is mostly zeros, and drawing every
    # cell for every resample took draws x C^2 x 8 bytes (16 GB, minutes); draws go in chunks of ~4M cells
    occupied = np.flatnonzero(cells > 0)
    in_joint = occupied < num_classes * num_classes
    row_of = np.where(in_joint, occupied // num_classes, occupied - num_classes * num_classes)
    on_diagonal = in_joint & (occupied % num_classes == row_of)
    probabilities = cells[occupied] / cells[occupied].sum()
    to_row = sparse.csr_matrix((np.ones(occupied.size), (np.arange(occupied.size), row_of)),
                               shape=(occupied.size, num_classes))
    rng = np.random.default_rng(seed)
    rates = np.empty(draws)
    chunk = max(1, 4_000_000 // occupied.size)
    for start in range(0, draws, chunk):
        drawn = rng.multinomial(int(round(total)), probabilities, size=min(chunk, draws - start)).astype(np.float64)
        n = np.asarray(drawn @ to_row)  # per given label: every cell of its row and its unassigned samples
        rows = np.asarray((drawn * in_joint) @ to_row)
        diagonal = np.asarray((drawn * on_diagonal) @ to_row)
        with np.errstate(invalid="ignore", divide="ignore"):
            kept = np.where(rows > 0, diagonal / np.maximum(rows, 1e-12), 1.0)
        rates[start:start + drawn.shape[0]] = 1.0 - (n / n.sum(axis=1, keepdims=True) * kept).sum(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(rates, [tail, 1.0 - tail])
    return float(low), float(high)


ROW_CHUNK_ELEMENTS = 2**22
"""Elements of an ``(N, C)`` array handled at once by the row-chunked passes (32 MB of float64)."""


def row_chunks(num_rows: int, num_columns: int) -> list[slice]:
    """Slices of ``range(num_rows)`` of about :data:`ROW_CHUNK_ELEMENTS` elements each (at least one row)."""
    step = max(1, ROW_CHUNK_ELEMENTS // max(num_columns, 1))
    return [slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def nan_rows(values: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: rows of the ``(N, C)`` array ``values`` holding any NaN, in row chunks (no ``(N, C)`` mask)."""
    out = np.zeros(values.shape[0], dtype=bool)
    for rows in row_chunks(*values.shape):
        out[rows] = np.isnan(values[rows]).any(axis=1)
    return out


def _normalise_rows(probs: np.ndarray) -> np.ndarray:
    """Clip to :data:`PROB_EPSILON` and rescale every row to sum to 1 (float64 arithmetic, float64 out)."""
    clipped = np.clip(probs.astype(np.float64, copy=False), PROB_EPSILON, None)
    clipped /= clipped.sum(axis=1, keepdims=True)
    return clipped


def _normalised_chunks(pred_probs: np.ndarray, rows: np.ndarray | None, columns: np.ndarray | None,
                       labels: np.ndarray | None = None):
    """Yield ``(chunk, block, given)`` over row chunks of ``pred_probs``: ``chunk`` a slice of the selected rows,
    ``block`` the float32 rows ``rows[chunk]`` (all rows when ``rows`` is None) restricted to ``columns`` (all
    when None), clipped and renormalised in float64 (again after the column selection); ``given`` with
    ``labels`` ``(M,)``, the float64 normalised probability of each row's label before the column selection,
    else None. Every row is normalised on its own, so a row's block does not depend on the chunking."""
    num_rows = pred_probs.shape[0] if rows is None else rows.size
    for chunk in row_chunks(num_rows, pred_probs.shape[1]):
        block = _normalise_rows(pred_probs[chunk] if rows is None else pred_probs[rows[chunk]])
        given = None if labels is None else block[np.arange(block.shape[0]), labels[chunk]]
        if columns is not None:
            block = _normalise_rows(block[:, columns])
        yield chunk, block.astype(np.float32), given


def _normalised_float32(pred_probs: np.ndarray, rows: np.ndarray | None, columns: np.ndarray | None,
                        labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(M, K)`` float32 rows ``rows`` (all when None) and columns ``columns`` (all when None) of
    ``pred_probs``, clipped and renormalised chunk by chunk in float64 (the only full-size array is the
    float32 result); with ``labels`` ``(M,)``, also the ``(M,)`` float64 normalised probability of each
    row's label (before the column selection)."""
    num_rows = pred_probs.shape[0] if rows is None else rows.size
    width = pred_probs.shape[1] if columns is None else columns.size
    out = np.empty((num_rows, width), dtype=np.float32)
    given = None if labels is None else np.empty(num_rows)
    for chunk, block, label_probs in _normalised_chunks(pred_probs, rows, columns, labels):
        out[chunk] = block
        if given is not None:
            given[chunk] = label_probs
    return out, given


FLOATING_POINT_COMPARISON = 1e-6
"""cleanlab's fuzzy-equality tolerance (``cleanlab.internal.constants``)."""

CONFIDENT_THRESHOLDS_LOWER_BOUND = 2 * FLOATING_POINT_COMPARISON
"""cleanlab's lower bound of the per-class thresholds (``cleanlab.internal.constants``)."""


def _prune_counts(confident_joint: np.ndarray, min_examples_per_class: int = 1) -> np.ndarray:
    """``(K, K)`` int: how many samples given label ``k`` to prune towards class ``j``, at ``[j, k]``.

    cleanlab's ``filter._keep_at_least_n_per_class(confident_joint.T, n, frac_noise=1.0)``: each column's
    diagonal is raised to at least ``n`` and the raise taken evenly from the column's non-zero noise counts;
    the counts are truncated to integers (with ``frac_noise=1`` cleanlab's final row-total-preserving rounding
    then has nothing left to change).
    """
    matrix = confident_joint.T
    diagonal = np.diagonal(matrix)
    new_diagonal = np.maximum(diagonal, min_examples_per_class)
    per_column = np.maximum(np.count_nonzero(matrix, axis=0) - 1.0, 1.0)
    adjusted = matrix - (new_diagonal - diagonal) / per_column
    adjusted[adjusted < 0] = 0
    np.fill_diagonal(adjusted, new_diagonal)
    return adjusted.astype(int)


@dataclass(frozen=True)
class _ChunkedResult:
    """What :func:`_prune_by_noise_rate_chunked` returns for ``M`` selected rows and ``K`` classes."""

    is_label_issue: np.ndarray  # (M,) bool
    argmax: np.ndarray  # (M,) int64, column of the largest normalised probability
    label_quality: np.ndarray  # (M,) float64 self-confidence over all columns
    confident_joint: np.ndarray  # (K, K) int, uncalibrated, diagonal at least 1


def _prune_by_noise_rate_chunked(pred_probs: np.ndarray, rows: np.ndarray | None, columns: np.ndarray | None,
                                 labels: np.ndarray, full_labels: np.ndarray,
                                 calibrate_confident_joint: Callable[[np.ndarray, np.ndarray], np.ndarray],
                                 ) -> _ChunkedResult:
    """``cleanlab.filter.find_label_issues(labels, P, filter_by="prune_by_noise_rate", n_jobs=1)`` and
    ``cleanlab.count.compute_confident_joint(labels, P, calibrate=False)`` with ``P`` the float32 normalised
    rows of :func:`_normalised_chunks`, without ever holding ``P`` whole.

    Three passes, each of ``(rows, C)`` memory one chunk (or one class) at a time: (1) the self-confidence,
    arg-max and "the prediction is the given label" mask; the per-class thresholds (the float32 mean
    self-confidence of each class, as cleanlab's ``get_confident_thresholds``); (2) the confident joint, calibrated
    by ``calibrate_confident_joint`` (cleanlab's) for the pruning counts, as ``compute_confident_joint``'s default;
    (3) per given label ``k``, its rows gathered, and for every ``j != k`` the ``prune[j, k]`` rows of the
    largest margin ``P[:, j] - P[:, k]`` flagged (cleanlab's ``_prune_by_count``); flags whose arg-max (with
    the given label favoured by ``1e-6``) is the given label are dropped (cleanlab's ``_reduce_issues``).
    The same float32 values go through the same numpy operations as in cleanlab, so the flags are identical
    (tested against cleanlab). ``labels``: ``(M,)`` compact labels ``0 .. K-1`` of the selected rows, every
    class present; ``full_labels``: the same labels as columns of ``pred_probs`` (for ``label_quality``).
    """
    num_rows, num_classes = labels.size, (pred_probs.shape[1] if columns is None else columns.size)
    self_confidence = np.empty(num_rows, dtype=np.float32)
    argmax = np.empty(num_rows, dtype=np.int64)
    predicts_given = np.empty(num_rows, dtype=bool)
    label_quality = np.empty(num_rows)
    for chunk, block, given in _normalised_chunks(pred_probs, rows, columns, full_labels):
        local = np.arange(block.shape[0])
        label_quality[chunk] = given
        self_confidence[chunk] = block[local, labels[chunk]]
        argmax[chunk] = block.argmax(axis=1)
        block[local, labels[chunk]] += FLOATING_POINT_COMPARISON
        predicts_given[chunk] = block.argmax(axis=1) == labels[chunk]
    thresholds = np.asarray(np.clip([np.mean(self_confidence[labels == k]) for k in range(num_classes)],
                                    a_min=CONFIDENT_THRESHOLDS_LOWER_BOUND, a_max=None))
    del self_confidence

    cells = np.zeros(num_classes * num_classes, dtype=np.int64)
    for chunk, block, _ in _normalised_chunks(pred_probs, rows, columns):
        confident = block >= thresholds - 1e-6
        num_confident = confident.sum(axis=1)
        guess = np.where(num_confident > 1, argmax[chunk], confident.argmax(axis=1))
        counted = num_confident > 0
        cells += np.bincount(labels[chunk][counted] * num_classes + guess[counted], minlength=cells.size)
    joint = cells.reshape(num_classes, num_classes).astype(int)
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    # find_label_issues prunes by the calibrated joint (compute_confident_joint's default calibrate=True)
    prune = _prune_counts(calibrate_confident_joint(joint, labels))

    issues = np.zeros(num_rows, dtype=bool)
    order = np.argsort(labels, kind="stable")  # rows of each class in their original order, as labels == k
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    selected = np.arange(pred_probs.shape[0]) if rows is None else rows
    for k in range(num_classes):
        members = order[bounds[k]:bounds[k + 1]]
        targets = [j for j in np.flatnonzero(prune[:, k] > 0) if j != k]
        if members.size <= 1 or not targets:
            continue
        block, _ = _normalised_float32(pred_probs, selected[members], columns)
        mask = np.zeros(members.size, dtype=bool)
        for j in targets:
            margin = block[:, j] - block[:, k]
            mask[np.argsort(-margin)[:prune[j, k]]] = True
        issues[members] = mask
    issues[predicts_given] = False
    return _ChunkedResult(issues, argmax, label_quality, joint)


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

    valid = ~nan_rows(pred_probs)
    if any(np.isinf(pred_probs[rows][valid[rows]]).any() for rows in row_chunks(*pred_probs.shape)):
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
        return ConfidentLearningScores(is_label_issue, suggested_label, label_quality, 0.0, joint, (0.0, 0.0))

    cl_filter, _, cl_count = _import_cleanlab()
    present = np.unique(valid_labels)
    rows = None if valid.all() else np.flatnonzero(valid)
    if valid_labels.size < 2 or present.size < 2:
        # self-confidence (cleanlab.rank.get_label_quality_scores(method="self_confidence")): the label's probability
        _, label_quality[valid] = _normalised_float32(pred_probs, rows, np.zeros(0, np.int64), valid_labels)
        frequencies = np.bincount(valid_labels, minlength=num_classes) / valid_labels.size
        return ConfidentLearningScores(
            is_label_issue, suggested_label, label_quality, 0.0, np.diag(frequencies), (0.0, 0.0)
        )

    # Restrict to the classes present among the given labels, then map back. The default method runs in row
    # chunks (:func:`_prune_by_noise_rate_chunked`, no full-size copy); the others hand cleanlab one float32 copy.
    compact_labels = np.searchsorted(present, valid_labels)
    columns = None if present.size == num_classes else present
    if filter_by == "prune_by_noise_rate":
        chunked = _prune_by_noise_rate_chunked(pred_probs, rows, columns, compact_labels, valid_labels,
                                               cl_count.calibrate_confident_joint)
        issues, confident, label_quality[valid] = chunked.is_label_issue, chunked.confident_joint, chunked.label_quality
        suggested = chunked.argmax[issues]
    else:
        compact_probs, label_quality[valid] = _normalised_float32(pred_probs, rows, columns, valid_labels)
        issues = cl_filter.find_label_issues(compact_labels, compact_probs, filter_by=filter_by, n_jobs=1)
        confident = cl_count.compute_confident_joint(compact_labels, compact_probs, calibrate=False)
        suggested = np.argmax(compact_probs[issues], axis=1)
    compact_joint = cl_count.estimate_joint(compact_labels, None, confident_joint=confident)
    joint[np.ix_(present, present)] = compact_joint
    interval = noise_rate_interval(confident, np.bincount(compact_labels, minlength=present.size))

    valid_rows = np.flatnonzero(valid)
    flagged_rows = valid_rows[issues]
    is_label_issue[flagged_rows] = True
    suggested_label[flagged_rows] = present[suggested]
    noise_rate = float(1.0 - np.trace(joint))
    return ConfidentLearningScores(
        is_label_issue, suggested_label, label_quality, noise_rate, joint, interval
    )
