"""Weak slices: :func:`find_weak_slices` (``dq/weak_slices.json``).

Single and pair slices whose accuracy is significantly below the rest of their split (one-sided
Fisher exact test, Benjamini-Hochberg correction), ranked, each with a plain-language line.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dq_plugins.logs import warn
from dq_plugins.analysis.slice_keys import PAIR_JOIN, SliceKey, _check_positive_int, slice_columns, slice_key
from dq_plugins.analysis.slices import _empty, _Rows, _statistics
from dq_plugins.schema import ordered_splits

WEAK_SLICE_COLUMNS: tuple[str, ...] = (
    "rank", "split", "slice", "column", "value", "order", "size", "accuracy", "rest_size",
    "rest_accuracy", "gap", "macro_f1", "p_value", "q_value", "description",
)
"""Columns of :func:`find_weak_slices`."""


# ---------------------------------------------------------------------------------------- statistics helpers
def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """(K,) -> (K,) Benjamini-Hochberg adjusted p-values (q-values):
    ``scipy.stats.false_discovery_control(p, method="bh")``; rejecting ``q <= alpha`` controls the
    false discovery rate at ``alpha`` (Benjamini & Hochberg 1995). ``p`` is clipped to [0, 1] first
    (a p-value summed from probabilities may exceed 1 by a rounding error)."""
    from scipy.stats import false_discovery_control

    p = np.clip(np.asarray(p_values, dtype=np.float64), 0.0, 1.0)
    if p.size == 0:
        return p
    return false_discovery_control(p, method="bh")


def lower_accuracy_p_value(correct_in: np.ndarray, size_in: np.ndarray, correct_all: np.ndarray,
                           size_all: np.ndarray) -> np.ndarray:
    """One-sided Fisher exact test that a subset is *less* accurate than the rest of its population.

    The 2 x 2 table is (subset, rest) x (correct, wrong). Under the null hypothesis the correct count of
    the subset is hypergeometric, so ``p = P[X <= correct_in]`` with
    ``X ~ Hypergeom(M=size_all, n=correct_all, N=size_in)``: the same value as
    ``scipy.stats.fisher_exact(table, alternative="less")``, vectorised.
    """
    from scipy.stats import hypergeom

    return hypergeom.cdf(np.rint(correct_in), size_all, np.rint(correct_all), size_in)


EXACT_SCREEN_P = 0.25
"""p-values are exact (Fisher) except where the table is large (more than 2,000 rows), the hypergeometric
variance is at least :data:`APPROX_MIN_VARIANCE` and the continuity-corrected normal approximation gives
more than ``max(EXACT_SCREEN_P, 4 * alpha)``: there the approximation stays (checked over accuracies
0.01-0.999: the exact value is then above 0.248), so no decision changes. Exact values for large tables
cost about a millisecond each (a sum over the hypergeometric support), which adds up over thousands
of pair slices."""

APPROX_MIN_VARIANCE = 100.0
"""Smallest hypergeometric variance at which the normal approximation may stand in for the exact p-value."""


def _normal_lower_p(correct_in: np.ndarray, size_in: np.ndarray, correct_all: np.ndarray,
                    size_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p, variance): continuity-corrected normal approximation of :func:`lower_accuracy_p_value`
    (same hypergeometric distribution) and the variance of that distribution."""
    from scipy.special import ndtr

    share = correct_all / size_all
    mean = size_in * share
    var = size_in * share * (1 - share) * (size_all - size_in) / np.maximum(size_all - 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (correct_in + 0.5 - mean) / np.sqrt(var)
    return np.where(var > 0, ndtr(z), 1.0), var


def _screened_lower_p(correct_in: np.ndarray, size_in: np.ndarray, correct_all: np.ndarray, size_all: np.ndarray,
                      screen: float, wanted: np.ndarray | None = None) -> np.ndarray:
    """:func:`lower_accuracy_p_value` where it can matter (see :data:`EXACT_SCREEN_P`; and only where
    ``wanted``), the normal approximation elsewhere."""
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (correct_in, size_in, correct_all,
                                                                             size_all)))
    p, var = _normal_lower_p(*arrays)
    exact = (p <= screen) | (var < APPROX_MIN_VARIANCE) | (arrays[3] <= 2_000)
    if wanted is not None:
        exact &= wanted
    if exact.any():
        p[exact] = lower_accuracy_p_value(*(a[exact] for a in arrays))
    return p


# ---------------------------------------------------------------------------------------- weak slices
def find_weak_slices(
    samples: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    min_size: int = 30,
    alpha: float = 0.05,
    max_pairs_columns: int = 8,
    numeric_bins: int = 4,
) -> pd.DataFrame:
    """Slices whose accuracy is significantly below the rest of their split.

    Candidates, per split: every single slice (see :func:`slice_metrics`) and every pair slice of two
    of the first ``max_pairs_columns`` sliced columns, with at least ``min_size`` rows and at least one
    row outside. Each is tested against the rest of its split with :func:`lower_accuracy_p_value`
    (one-sided Fisher exact; large tables far from significance keep a normal approximation, see
    :data:`EXACT_SCREEN_P`); the p-values of all candidates of a split are corrected together with
    :func:`benjamini_hochberg`. A slice is reported when ``q <= alpha``.

    A pair is reported only if it also *refines* both of its single slices: it must be significantly
    less accurate than the rest of each (``source=forum AND length in (120, 250]`` against the other
    forum rows, and against the other rows of that length bucket; the larger of the two p-values,
    corrected over all pairs). Without this, every pair inside one weak slice would be reported too.

    Args:
        samples: the per-sample table.
        columns: columns to slice besides the built-in ones (see :func:`slice_columns`).
        min_size: smallest slice tested.
        alpha: false discovery rate.
        max_pairs_columns: how many of the sliced columns (yours first, then label, cluster, latency)
            form pairs; 0 or 1 tests single slices only.
        numeric_bins: quantile buckets of a numeric column.

    Returns:
        columns :data:`WEAK_SLICE_COLUMNS`, per split (train, validation, others) ranked by ``gap``
        (rest accuracy minus slice accuracy, largest first), then p-value; ``rank`` starts at 1 in each
        split; ``order`` is 1 (single) or 2 (pair); ``description`` is one line,
        e.g. ``"source=forum AND length in (120, 250]: accuracy 0.61 vs 0.93 for the rest of train,
        n=412 (q=2.1e-09)"``. Empty when nothing is significant.
    """
    min_size = _check_positive_int("min_size", min_size)
    numeric_bins = _check_positive_int("numeric_bins", numeric_bins)
    max_pairs_columns = _check_positive_int("max_pairs_columns", max_pairs_columns, minimum=0)
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"Expected argument `alpha` in (0, 1) (the false discovery rate) but got {alpha!r}.")
    chosen = slice_columns(samples, columns)
    keys = [slice_key(samples, column, numeric_bins) for column in chosen]
    split_of = samples["split"].astype(str).to_numpy()
    found = []
    for split in ordered_splits(samples["split"]):
        mask = split_of == split
        frame = _weak_in_split(split, _Rows.of(samples[mask]), [_restrict(k, mask) for k in keys],
                               min_size, alpha, max_pairs_columns)
        if frame is not None:
            found.append(frame)
    if not found:
        return _empty(WEAK_SLICE_COLUMNS)
    table = pd.concat(found, ignore_index=True)  # already in split order; each split ranked by itself
    table.insert(0, "rank", table.groupby("split", sort=False).cumcount() + 1)
    table = table[list(WEAK_SLICE_COLUMNS)].reset_index(drop=True)
    table.attrs["numeric_bins"] = numeric_bins
    return table


def _restrict(key: SliceKey, mask: np.ndarray) -> SliceKey:
    return SliceKey(key.column, key.codes[mask], key.values, key.bucketed)


@dataclass
class _Candidates:
    """Tested slices of one split: names, parts and statistics, concatenated."""

    slice: list[str]
    column: list[str]
    value: list[str]
    order: list[int]
    stats: list[dict[str, np.ndarray]]
    parents: list[np.ndarray]  # (n, 4): correct and size of parent a, then of parent b (NaN for singles)


def _weak_in_split(split: str, rows: _Rows, keys: list[SliceKey], min_size: int, alpha: float,
                   max_pairs_columns: int) -> pd.DataFrame | None:
    total = len(rows.correct)
    if total == 0:
        warn(f"dq_plugins: split {split!r} has no rows; no weak slices searched.", RuntimeWarning,
                      stacklevel=3)
        return None
    total_correct = rows.correct.sum()
    single = [_statistics(key.codes, rows, len(key.values), full=False) for key in keys]
    cand = _Candidates([], [], [], [], [], [])

    def add(names: list[str], column: str, values: list[str], order: int, stats: dict[str, np.ndarray],
            parents: np.ndarray) -> None:
        cand.slice += names
        cand.column += [column] * len(names)
        cand.value += values
        cand.order += [order] * len(names)
        cand.stats.append(stats)
        cand.parents.append(parents)

    for key, stats in zip(keys, single, strict=True):
        keep = np.flatnonzero((stats["size"] >= min_size) & (stats["size"] < total))
        add([key.slice_name(i) for i in keep], key.column, [key.values[i] for i in keep], 1,
            {k: v[keep] for k, v in stats.items()}, np.full((len(keep), 4), np.nan))
    paired = list(zip(keys, single, strict=True))[:max_pairs_columns]
    for (key_a, stats_a), (key_b, stats_b) in itertools.combinations(paired, 2):
        joint = key_a.codes * len(key_b.values) + key_b.codes
        num_cells = len(key_a.values) * len(key_b.values)
        if num_cells <= max(4 * total, 1 << 16):  # dense cells: no sort
            cells, codes = np.arange(num_cells), joint
        else:
            cells, codes = np.unique(joint, return_inverse=True)
        stats = _statistics(codes.astype(np.int64), rows, len(cells), full=False)
        keep = np.flatnonzero((stats["size"] >= min_size) & (stats["size"] < total))
        if not len(keep):
            continue
        code_a, code_b = cells[keep] // len(key_b.values), cells[keep] % len(key_b.values)
        parents = np.stack([stats_a["correct"][code_a], stats_a["size"][code_a],
                            stats_b["correct"][code_b], stats_b["size"][code_b]], axis=1).astype(np.float64)
        add([f"{key_a.slice_name(a)}{PAIR_JOIN}{key_b.slice_name(b)}" for a, b in zip(code_a, code_b, strict=True)],
            f"{key_a.column} & {key_b.column}",
            [f"{key_a.values[a]} & {key_b.values[b]}" for a, b in zip(code_a, code_b, strict=True)],
            2, {k: v[keep] for k, v in stats.items()}, parents)
    if not cand.slice:
        warn(
            f"dq_plugins: no slice of split {split!r} has at least min_size={min_size} samples and rows outside it; "
            "no weak slices searched. HINT: lower `min_size`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    stats = {k: np.concatenate([s[k] for s in cand.stats]) for k in cand.stats[0]}
    order = np.asarray(cand.order)
    size, correct = stats["size"].astype(np.float64), stats["correct"]
    rest_size = total - size
    rest_accuracy = (total_correct - correct) / rest_size
    screen = max(EXACT_SCREEN_P, 4 * alpha)
    p_value = _screened_lower_p(correct, size, total_correct, total, screen)
    q_value = benjamini_hochberg(p_value)
    refine_q = np.zeros_like(p_value)
    pairs = order == 2
    if pairs.any():
        parents = np.concatenate(cand.parents)[pairs]
        wanted = q_value[pairs] <= alpha  # only those can be reported: the others keep approximate values
        refine = np.maximum(
            _refine_p(correct[pairs], size[pairs], parents[:, 0], parents[:, 1], screen, wanted),
            _refine_p(correct[pairs], size[pairs], parents[:, 2], parents[:, 3], screen, wanted),
        )
        refine_q[pairs] = benjamini_hochberg(refine)
    significant = (q_value <= alpha) & (stats["accuracy"] < rest_accuracy) & (refine_q <= alpha)
    if not significant.any():
        return None
    idx = np.flatnonzero(significant)
    frame = pd.DataFrame({
        "split": split,
        "slice": [cand.slice[i] for i in idx],
        "column": [cand.column[i] for i in idx],
        "value": [cand.value[i] for i in idx],
        "order": order[idx],
        "size": size[idx].astype(np.int64),
        "accuracy": stats["accuracy"][idx],
        "rest_size": rest_size[idx].astype(np.int64),
        "rest_accuracy": rest_accuracy[idx],
        "gap": rest_accuracy[idx] - stats["accuracy"][idx],
        "macro_f1": stats["macro_f1"][idx],
        "p_value": p_value[idx],
        "q_value": q_value[idx],
    })
    frame = frame.sort_values(["gap", "p_value", "size"], ascending=[False, True, False], kind="stable")
    frame["description"] = [
        f"{row.slice}: accuracy {row.accuracy:.2f} vs {row.rest_accuracy:.2f} for the rest of {split}, "
        f"n={row.size} (q={row.q_value:.2g})"
        for row in frame.itertuples()
    ]
    return frame


def _refine_p(correct: np.ndarray, size: np.ndarray, parent_correct: np.ndarray, parent_size: np.ndarray,
              screen: float, wanted: np.ndarray) -> np.ndarray:
    """p-value that a pair is less accurate than the rest of its parent slice (1 when it is the whole parent)."""
    inside = parent_size > size
    p = np.ones_like(correct, dtype=np.float64)
    if inside.any():
        p[inside] = _screened_lower_p(correct[inside], size[inside], parent_correct[inside], parent_size[inside],
                                      screen, wanted[inside])
    return p
