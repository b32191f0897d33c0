"""``mislabel_score``: dq_plugins' own combination of the training-dynamics signals.

Definition. For each split, every signal below is turned into its percentile rank among the
split's recorded samples (0 = least suspicious, 1 = most suspicious; ties share their mean
rank, see :func:`percentile_rank`), and ``mislabel_score`` is the mean of the available ranks:

1. ``-aum``: the area under the margin (Pleiss et al. 2020), the given-label logit minus the
   largest other logit averaged over **all** epochs; low means another class out-scored the
   given label for most of training;
2. ``el2n_all_epochs``: the error norm ``||softmax - onehot(label)||_2`` of Paul et al. 2021
   averaged over **all** epochs;
3. ``el2n_early``: the same norm averaged over the **early** epochs only
   (:func:`~dq_plugins.scores.default_early_epochs`, as in Paul et al. 2021), before a model
   that can memorise has fitted the wrong labels. The analysis leaves it out (passes NaN) when the
   early window does not fit the given labels at least halfway from chance to perfect: a short
   fine-tuning whose whole window is a first, still-learning epoch. On TREC-6 with MiniLM (3
   epochs, window accuracy 0.46-0.47) that raised the AUPRC from 0.898 / 0.911 to 0.926 / 0.923
   (two seeds, recomputed from the saved records); no image case of the benchmark trips it. A
   window that ends at or after a settled Label Wave minimum keeps the signal whatever its fit
   (:func:`~dq_plugins.analysis.pipeline.window_learned`: a two-class task at 25% noise or more
   never fits halfway; SMS spam at 30% noise 0.697 -> 0.936), and one that fails the test while the
   wave settled later hands over to the wave's window, the epochs up to its minimum (``wave_epochs`` of
   :func:`~dq_plugins.analysis.pipeline.mislabel_signals`);
4. ``neighbor_disagreement``, when the run has embeddings: the similarity-weighted share of the
   sample's nearest neighbours in embedding space whose label differs from its own (Bahri et al.
   2020, Deep k-NN; Zhu et al. 2022, SimiFeat), a signal from *where* the sample lies rather than
   how its loss moved. Measured on ``benchmarks/label_noise.py`` cases (1 seed, AUPRC of the
   score against the known flips, three signals -> four): digits symmetric 0.9956 -> 0.9977, digits
   pair 0.9462 -> 0.9493, MNIST-5k symmetric 0.9782 -> 0.9821, MNIST-5k pair 0.8781 -> 0.8762,
   MNIST-5k memorisation 0.9666 -> 0.9782; alone it scores below the three-signal score on all
   but the memorisation case (0.9859, 0.9129, 0.9507, 0.8222, 0.9707).

Why ranks: the signals live on different scales (logits, probability-space norms) and their
distributions move with the model, the number of classes and the training length; ranks make
the combination scale-free, and an average of ranks is robust to one signal collapsing.

Why these three. Label noise is learnt late (Arpit et al. 2017, "A Closer Look at Memorization
in Deep Networks", https://arxiv.org/abs/1706.05394): a model first fits the patterns shared by
the clean samples, then, if it has the capacity and the time, memorises the wrong labels, after
which late-epoch losses and probabilities no longer separate them. Averages over all epochs use
the most evidence when the model does not memorise; the early window is what is left when it
does. The score gives each time window a vote (two all-epoch signals in two spaces, one early),
so it degrades gracefully in both regimes instead of being the best in one and failing in the
other. Within the all-epoch window, AUM measures in logit space (unbounded, so dominated by the
late epochs where logits are large) and EL2N in probability space (bounded, every epoch weighs
alike); EL2N also sees *where* the missing probability goes: mass concentrated on one rival class,
the signature of a flipped label, scores higher than the same mass spread thin, the signature of
a hard or ambiguous sample. An earlier version used the self-confidence of the mean softmax
(cleanlab's "self_confidence") as its second signal; when each sample is seen once per epoch that
is exactly cartography confidence, a probability-space copy of AUM's window that ignores the
rival mass; on ``benchmarks/label_noise.py`` it ranked below all-epoch EL2N on every case and
below AUM on all but the memorisation case (see ``benchmarks/RESULTS.md``, before and after).

Weights that adapt to the run (issue 17). A fixed mean can lose to one of its own parts on data it
was not tuned on (a model that memorises fast, where the early window carries the signal). Without
truth labels, each run scores its signals against the flags of confident learning on the
early-window softmax (the pseudo-labels, :func:`~dq_plugins.analysis.pipeline.early_window_cl`):
signal ``s`` gets weight ``max(AP_s - r, 0) ** WEIGHT_POWER``, its average precision at finding the
pseudo-labelled rows above their rate ``r`` (what a random order scores), sharpened so that a
signal that clearly separates them dominates and the others still vote. A fixed early window that is not
trusted hands this to the flags' window when that one is (a settled Label Wave, see
:func:`~dq_plugins.analysis.pipeline.analyze_split`), as it hands over its EL2N. Without pseudo-labels (no window trusted, fewer than
:data:`MIN_PSEUDO_LABELS` flagged, or no signal better than random) the weights are equal: the mean of ranks
above. The exponent was 4 (chosen among 1, 2, 4 and 8 before the memorisation rule below), 8 with it.

One all-epoch signal, the steadier (issue 17). AUM and all-epoch EL2N read one window in two spaces
and agree on most of the order (Spearman 0.94-0.99 on the benchmark), so the pseudo-labels, which
only inform the top of the order, cannot tell them apart, yet they are not equally good: under pair
noise AUM, dominated by the large late logits, trails EL2N by 0.02-0.06 AUPRC, and on FashionMNIST
with symmetric noise it leads by 0.015. Label-free, the better of the two is the one whose order
moves less between the first and the second half of the epochs (:func:`half_instability`,
``1 - Spearman rho`` of the signal over each half): a signal that re-sorts the samples late in
training is being rewritten by the labels the model fits then. So only the steadier of the two
enters the mean, when the early window is trusted (the pseudo-labels weigh the signals); otherwise,
or when the instabilities tie or cannot be measured (fewer than 2 epochs), both do. An untrusted
early window is a first half still learning the clean patterns, whose order says nothing about
steadiness (TREC-6 with MiniLM, 3 epochs: keeping AUM alone there lost 0.001 / 0.009 AUPRC).
Measured over 24 records (12 cases of ``benchmarks/label_noise.py`` x seeds 0, 1; AUPRC of the
score minus the best of its parts and the anchors AUM, cartography confidence and final loss):
mean -0.0046 -> +0.0005, worst -0.030 -> -0.014; on 12 new records (6 cases x seeds 2, 3) that no
rule was chosen on: mean -0.0100 -> -0.0006, worst -0.027 -> -0.011 (``benchmarks/RESULTS.md``).
The pick is wrong where the model memorises (MNIST-5k memorise, SMS spam: EL2N saturates late, so
AUM looks steadier while EL2N ranks better); there the early window carries the score anyway.

Memorisation moves the weight between the windows (issue 17). The pseudo-labels come from the early window,
so they favour the early EL2N, which reads the same softmax, over the all-epoch signals whatever the truth
(FashionMNIST, symmetric noise: the largest weight while trailing AUM by 0.04 AUPRC). The early window is
for a model that goes on to fit the wrong labels, and whether it did is measured without truth labels by
:func:`memorised_share`: the share ``m`` of the pseudo-labelled rows that the model predicts as their given
label at the end (0.02-0.53 on the benchmark records whose flipped samples stay unfitted, 0.81-1.00 on those
that end up fitted: SMS spam, VADER, MNIST-5k memorise). The signals that read the late model (AUM and EL2N over
all epochs, and the neighbour disagreement of embeddings taken during training) keep their evidence on ``1 - m``
of those rows; the early window keeps it on all of them, but adds to the all-epoch means, whose epochs include
its own, only what the late epochs lost. So the early EL2N's weight is multiplied by ``m`` and the others' by
``1 - m``. Measured on 71 records of ``benchmarks/label_noise.py`` and on 16 run after the choice, AUPRC of the
score minus the best of its parts and anchors (section "memorisation moves the weight" of
``benchmarks/RESULTS.md``).

The score is a mean of ranks, not a probability: its distribution depends on how much the
signals agree (uniform on [0, 1] when they agree perfectly). Use ``is_label_issue`` for a yes/no
decision and ``mislabel_score`` to order samples for review.

References: Pleiss et al., NeurIPS 2020 (https://arxiv.org/abs/2001.10528); Paul, Ganguli and
Dziugaite, NeurIPS 2021 (https://arxiv.org/abs/2107.07075); Arpit et al., ICML 2017.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from dq_plugins.scores._common import last_observed

WEIGHT_POWER = 8
"""Exponent of the lift of each signal's average precision at the pseudo-labels (see the module docstring)."""

MIN_PSEUDO_LABELS = 10
"""Fewest pseudo-labelled rows for adaptive weights; fewer: equal weights."""


def average_precision(positives: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ``(N,)`` scores at finding the ``(N,)`` bool positives (higher score first).

    ``sum over thresholds of (recall gained) x precision``, one threshold per distinct score, so tied rows
    count together and the result does not depend on their order (as ``sklearn.metrics.average_precision_score``:
    a constant score gets the positives' rate, what a random order scores). NaN scores rank last. NaN when
    there is no positive.
    """
    positives = np.asarray(positives, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not positives.any():
        return float("nan")
    ordered = np.nan_to_num(scores, nan=-np.inf)
    order = np.argsort(-ordered, kind="stable")
    ordered, hits = ordered[order], positives[order]
    group_ends = np.r_[np.flatnonzero(np.diff(ordered) != 0), ordered.size - 1]  # the last row of each tie
    found = np.cumsum(hits)[group_ends]
    recall_gained = np.diff(np.r_[0, found]) / found[-1]
    return float(np.sum(recall_gained * found / (group_ends + 1)))


def signal_weights(ranks: np.ndarray, pseudo_labels: np.ndarray | None) -> np.ndarray:
    """``(S,)`` weights of ``(S, N)`` percentile ranks from their agreement with ``(N,)`` bool pseudo-labels.

    ``max(AP_s - rate, 0) ** WEIGHT_POWER`` normalised to sum to 1; equal weights when
    ``pseudo_labels`` is ``None``, has fewer than :data:`MIN_PSEUDO_LABELS` positives, or no signal
    beats a random order. A signal absent for a row (NaN rank) does not count there (see
    :func:`mislabel_score`).
    """
    equal = np.full(ranks.shape[0], 1.0 / ranks.shape[0])
    if pseudo_labels is None:
        return equal
    pseudo = np.asarray(pseudo_labels, dtype=bool)
    if pseudo.shape != ranks.shape[1:]:
        raise ValueError(f"Expected `pseudo_labels` of shape {ranks.shape[1:]} (one per sample) but got {pseudo.shape}.")
    if pseudo.sum() < MIN_PSEUDO_LABELS:
        return equal
    rate = float(pseudo.mean())
    lifts = np.array([
        max(average_precision(pseudo, row) - rate, 0.0) if np.isfinite(row).any() else 0.0 for row in ranks
    ]) ** WEIGHT_POWER
    return lifts / lifts.sum() if lifts.sum() > 0 else equal


def half_instability(first: np.ndarray, second: np.ndarray) -> float:
    """How much a signal re-sorts the samples between the two halves of training, in ``[0, 2]``.

    ``1 - Spearman rho`` between the ``(N,)`` values of one signal over the first and over the
    second half of the epochs, over the rows where both are finite (0: same order, 1: unrelated).
    NaN with fewer than 3 such rows or when either half is constant (no order to compare).
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"Expected two 1-D arrays of one length (one value per sample) but got shapes {first.shape} "
                         f"and {second.shape}.")
    both = np.isfinite(first) & np.isfinite(second)
    if both.sum() < 3:
        return float("nan")
    a, b = rankdata(first[both]), rankdata(second[both])
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(1.0 - np.corrcoef(a, b)[0, 1])


def memorised_share(correct: np.ndarray, pseudo_labels: np.ndarray | None) -> float:
    """Share of the pseudo-labelled rows that the model fits to their given label at the end of training.

    Args:
        correct: ``(E, N)`` float per epoch and sample: 1.0 where the epoch predicted the given label, 0.0
            where not, NaN where the epoch did not see the sample.
        pseudo_labels: ``(N,)`` bool, the rows the early-window confident learning flags; ``None``: none.

    Returns:
        Over the pseudo-labelled rows seen at least once, the mean of ``correct`` at the last epoch that saw
        each, in ``[0, 1]``; NaN without pseudo-labels or such rows. 0: the late epochs still dispute every
        suspect label; 1: the model memorised them. Reads only the pseudo-labelled columns.
    """
    correct = np.asarray(correct)  # no float64 copy of the whole (E, N) record: only its suspect columns are read
    if pseudo_labels is None:
        return float("nan")
    pseudo = np.asarray(pseudo_labels, dtype=bool)
    if correct.ndim != 2 or pseudo.shape != correct.shape[1:]:
        raise ValueError(f"Expected `correct` of shape (epochs, N) and `pseudo_labels` of shape (N,) but got "
                         f"{correct.shape} and {pseudo.shape}.")
    suspects = correct[:, pseudo]
    unseen = np.isnan(suspects)
    fitted = last_observed(suspects, unseen)[~unseen.all(axis=0)]
    return float(fitted.mean(dtype=np.float64)) if fitted.size else float("nan")


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Map ``(N,)`` values to ``[0, 1]`` by average rank; NaN stays NaN.

    The smallest valid value gets 0, the largest 1, ``rank / (n - 1)`` in between, with ties sharing
    their mean rank: ``[3.0, 1.0, 2.0, nan]`` -> ``[1.0, 0.0, 0.5, nan]``. A single valid value gets
    0.5 (neither end of an order of one).

    Args:
        values: ``(N,)`` real values; NaN = no value.

    Returns:
        ``(N,)`` float64 in ``[0, 1]``, NaN where ``values`` is NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    valid = ~np.isnan(values)
    n = int(valid.sum())
    if n == 0:
        return out
    if n == 1:
        out[valid] = 0.5
        return out
    ranks = rankdata(values[valid], method="average") - 1.0
    out[valid] = ranks / (n - 1)
    return out


def mislabel_score(
    *, aum: np.ndarray, el2n_all_epochs: np.ndarray, el2n_early: np.ndarray,
    neighbor_disagreement: np.ndarray | None = None, pseudo_labels: np.ndarray | None = None,
    instability: tuple[float, float] | None = None, memorised: float | None = None,
) -> np.ndarray:
    """Combine the signals into one ``(N,)`` float64 score in ``[0, 1]``, higher = more likely mislabeled.

    The weighted mean of ``percentile_rank(-aum), percentile_rank(el2n_all_epochs),
    percentile_rank(el2n_early) [, percentile_rank(neighbor_disagreement)]`` per sample, over the
    signals that are not NaN for it, with weights from :func:`signal_weights` (equal without
    ``pseudo_labels``; see the module docstring). With ``instability`` and ``pseudo_labels``, only
    the steadier of ``-aum`` and ``el2n_all_epochs`` takes part (both on a tie, a NaN, or fewer than
    :data:`MIN_PSEUDO_LABELS` pseudo-labels). With ``memorised`` and the pseudo-labels, the weight of
    ``el2n_early`` is multiplied by ``memorised`` and the others' by ``1 - memorised``.

    Args:
        aum: ``(N,)`` area under the margin over all epochs (higher = cleaner), from
            :func:`~dq_plugins.scores.area_under_margin`.
        el2n_all_epochs: ``(N,)`` EL2N averaged over all recorded epochs (higher = more
            suspicious): :func:`~dq_plugins.scores.el2n` with ``early_epochs`` = number of epochs.
        el2n_early: ``(N,)`` EL2N averaged over the early epochs (higher = more suspicious):
            :func:`~dq_plugins.scores.el2n` with ``default_early_epochs(number of epochs)``.
        neighbor_disagreement: optional ``(N,)`` share of each sample's embedding neighbours whose
            label differs (higher = more suspicious), from
            :func:`~dq_plugins.scores.neighbor_label_disagreement`; ``None`` (no embeddings): three signals.
        pseudo_labels: optional ``(N,)`` bool, the rows the early-window confident learning flags;
            ``None``: equal weights.
        instability: optional ``(aum, el2n_all_epochs)`` :func:`half_instability` of the two
            all-epoch signals; the one with the larger value is left out when the pseudo-labels
            weigh the signals. ``None``: both take part.
        memorised: optional :func:`memorised_share` of the pseudo-labels, in ``[0, 1]``; moves the weight from
            the signals that read the late model to the early window as it grows (see the module docstring).
            ``None`` or NaN: no move.

    Returns:
        ``(N,)`` float64 in ``[0, 1]``. NaN in one signal drops it from that sample's mean (the
        other samples' ranks are computed without it); a sample with every signal NaN gets NaN.

    Raises:
        ValueError: if the three inputs are not 1-D arrays of one length, ``instability`` is not two values,
            or ``memorised`` is outside ``[0, 1]``.
    """
    signals = {
        "aum": np.asarray(aum, dtype=np.float64),
        "el2n_all_epochs": np.asarray(el2n_all_epochs, dtype=np.float64),
        "el2n_early": np.asarray(el2n_early, dtype=np.float64),
    }
    if neighbor_disagreement is not None:
        signals["neighbor_disagreement"] = np.asarray(neighbor_disagreement, dtype=np.float64)
    shapes = {name: values.shape for name, values in signals.items()}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(
            f"Expected `aum`, `el2n_all_epochs`, `el2n_early` (and `neighbor_disagreement`) to be 1-D arrays of one length (one value "
            f"per sample) but got shapes {shapes}."
        )
    if instability is not None:
        unsteady = np.asarray(instability, dtype=np.float64)
        if unsteady.shape != (2,):
            raise ValueError(f"Expected `instability` = (aum, el2n_all_epochs), two floats, but got {instability!r}.")
        trusted = pseudo_labels is not None and int(np.count_nonzero(pseudo_labels)) >= MIN_PSEUDO_LABELS
        if trusted and np.isfinite(unsteady).all() and unsteady[0] != unsteady[1]:
            del signals["aum" if unsteady[0] > unsteady[1] else "el2n_all_epochs"]  # the steadier one stays
    ranks = np.stack([percentile_rank(-values if name == "aum" else values) for name, values in signals.items()])
    weights = signal_weights(ranks, pseudo_labels)
    if memorised is not None and np.isfinite(memorised):
        if not 0.0 <= memorised <= 1.0:
            raise ValueError(f"Expected `memorised` in [0, 1] (a share of rows) but got {memorised!r}.")
        if pseudo_labels is not None and int(np.count_nonzero(pseudo_labels)) >= MIN_PSEUDO_LABELS:
            moved = weights * np.array([memorised if name == "el2n_early" else 1.0 - memorised for name in signals])
            weights = moved / moved.sum() if moved.sum() > 0 else weights  # only weightless signals left: unmoved
    weights = weights[:, None]
    valid = ~np.isnan(ranks)
    count = np.where(valid, weights, 0.0).sum(axis=0)
    total = np.where(valid, ranks * weights, 0.0).sum(axis=0)
    plain = np.where(valid, ranks, 0.0).sum(axis=0) / np.maximum(valid.sum(axis=0), 1)  # only zero-weight signals
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = np.where(count > 0, total / np.where(count > 0, count, 1.0), plain)
    return np.where(valid.any(axis=0), weighted, np.nan)
