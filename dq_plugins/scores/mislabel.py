"""``mislabel_score``: dq_plugins' own combination of the training-dynamics signals.

Definition. For each split, every signal below is turned into its percentile rank among the
split's recorded samples (0 = least suspicious, 1 = most suspicious; ties share their mean
rank), and ``mislabel_score`` is the mean of the available ranks:

1. ``-aum``: a low area under the margin (Pleiss et al. 2020) means the given label lost to
   another class for most of training;
2. ``1 - self_confidence``: one minus the probability of the given label under the mean
   softmax over all epochs (the ``pred_probs`` given to confident learning, Northcutt et al.
   2021, ``cleanlab.rank`` "self_confidence");
3. ``el2n``: the early-training error norm (Paul et al. 2021), measured before the model has
   had time to memorise wrong labels.

Why ranks: the signals live on different scales (logits, probabilities, norms) and their
distributions move with the model, the number of classes and the training length; ranks
make the combination scale-free, and an average of ranks is robust to one signal collapsing
(late-epoch margins and probabilities collapse when a large model memorises noisy labels,
the early-epoch EL2N does not). Why these three: each carries a different time window
(all epochs in logit space, all epochs in probability space, early epochs only). The
choice and the equal weights were validated with ``benchmarks/label_noise.py`` (see
``benchmarks/RESULTS.md``).

The score is a rank, not a probability: on any split about 10% of samples score above 0.9.
Use ``is_label_issue`` (confident learning) for a calibrated yes/no decision, and
``mislabel_score`` to order samples for review.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Map (N,) values to [0, 1] by average rank; NaN stays NaN.

    ``[3.0, 1.0, 2.0, nan]`` -> ``[1.0, 0.0, 0.5, nan]``; a single valid value gets 0.5.
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


def mislabel_score(aum: np.ndarray, self_confidence: np.ndarray, el2n: np.ndarray) -> np.ndarray:
    """Combine the signals into one (N,) float64 score in [0, 1], higher = more likely mislabeled.

    Args:
        aum: (N,) area under the margin (higher = cleaner).
        self_confidence: (N,) probability of the given label under the mean softmax (higher = cleaner).
        el2n: (N,) early-epoch EL2N (higher = more suspicious).

    NaN in one signal drops it from that sample's mean; a sample with every signal NaN gets NaN.
    """
    ranks = np.stack(
        [
            percentile_rank(-np.asarray(aum, dtype=np.float64)),
            percentile_rank(1.0 - np.asarray(self_confidence, dtype=np.float64)),
            percentile_rank(np.asarray(el2n, dtype=np.float64)),
        ]
    )
    valid = ~np.isnan(ranks)
    count = valid.sum(axis=0)
    total = np.where(valid, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
