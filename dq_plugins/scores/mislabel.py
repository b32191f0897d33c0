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
   (two seeds, recomputed from the saved records); no image case of the benchmark trips it;
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

The score is a mean of ranks, not a probability: its distribution depends on how much the
signals agree (uniform on [0, 1] when they agree perfectly). Use ``is_label_issue`` for a yes/no
decision and ``mislabel_score`` to order samples for review.

References: Pleiss et al., NeurIPS 2020 (https://arxiv.org/abs/2001.10528); Paul, Ganguli and
Dziugaite, NeurIPS 2021 (https://arxiv.org/abs/2107.07075); Arpit et al., ICML 2017.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


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
    neighbor_disagreement: np.ndarray | None = None,
) -> np.ndarray:
    """Combine the signals into one ``(N,)`` float64 score in ``[0, 1]``, higher = more likely mislabeled.

    ``mean(percentile_rank(-aum), percentile_rank(el2n_all_epochs), percentile_rank(el2n_early)
    [, percentile_rank(neighbor_disagreement)])`` per sample, over the signals that are not NaN for
    it (see the module docstring).

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

    Returns:
        ``(N,)`` float64 in ``[0, 1]``. NaN in one signal drops it from that sample's mean (the
        other samples' ranks are computed without it); a sample with every signal NaN gets NaN.

    Raises:
        ValueError: if the three inputs are not 1-D arrays of one length.
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
    ranks = np.stack([percentile_rank(-values if name == "aum" else values) for name, values in signals.items()])
    valid = ~np.isnan(ranks)
    count = valid.sum(axis=0)
    total = np.where(valid, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
