"""Multi-label scores: per (sample, class) and per sample, from training dynamics.

A multi-label target is C binary decisions. For each (sample, class) pair the training dynamics
give the sigmoid probability of the *given* value at each epoch (``p`` where the class is on,
``1 - p`` where it is off). Definitions:

- ``class_score`` (per pair, in [0, 1], higher = the given value of this class is more likely
  wrong): ``1 - mean(prob_given)`` over all recorded epochs, 1 minus cartography confidence
  (Swayamdipta et al. 2020) of a binary decision; optionally averaged with the same over an early
  window (``early_prob_given``; the analysis does not pass one: on the benchmark it ranked worse).
- ``mislabel_score`` (per sample, in [0, 1]): ``max_k class_score_k``, the score of the sample's most
  doubtful class: a lower bound of the probability that at least one of its C decisions is wrong
  (``1 - prod_k (1 - class_score_k)`` under independence, which saturates towards 1 for every sample
  while the model is unsure of many classes, and so ranks worse).
- Flags: cleanlab's multi-label confident learning (Northcutt et al. 2021, one-vs-rest per class:
  ``cleanlab.multilabel_classification.filter.find_multilabel_issues_per_class``) on class
  probabilities (the all-epoch mean sigmoid; a held-out split: its latest pass) estimates *how many* pairs of each class are wrong; as in the
  single-label path the flags of class k go to that many pairs in ``class_score`` order among
  those whose probability is on the other side of 0.5 from the given value. A flagged pair whose
  class is off suggests *adding* the class; one whose class is on suggests *removing* it; a
  sample is a label issue when any pair is flagged.

References: Northcutt, Jiang and Chuang, JAIR 2021 (https://arxiv.org/abs/1911.00068); Thyagarajan
et al. 2023, "Identifying Incorrect Annotations in Multi-Label Classification Data"
(https://arxiv.org/abs/2211.13895); Swayamdipta et al., EMNLP 2020 (https://arxiv.org/abs/2009.10795).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

ADD, REMOVE, KEEP = "add", "remove", "keep"
"""Values of the per-(sample, class) ``action`` column."""


@dataclass(frozen=True)
class MultiLabelScores:
    """Scores of N samples and C classes.

    Attributes:
        class_score: (N, C) float64 in [0, 1], higher = the given value of the class is more likely wrong.
        mislabel_score: (N,) float64 in [0, 1], higher = more likely at least one label is wrong.
        class_issue: (N, C) bool, the pair is flagged by confident learning.
        is_label_issue: (N,) bool, any pair of the sample is flagged.
        suggested: (N, C) int8 multi-hot suggested labels (the given ones with flagged pairs toggled).
    """

    class_score: np.ndarray
    mislabel_score: np.ndarray
    class_issue: np.ndarray
    is_label_issue: np.ndarray
    suggested: np.ndarray

    @property
    def action(self) -> np.ndarray:
        """(N, C) object array of :data:`ADD`, :data:`REMOVE` or :data:`KEEP`."""
        given = self.suggested != self.class_issue  # the given value (toggled back)
        return np.where(self.class_issue, np.where(given, REMOVE, ADD), KEEP)


def class_label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N, C) bool flags of cleanlab's one-vs-rest confident learning on (N, C) multi-hot ``labels``
    and (N, C) class probabilities (``find_multilabel_issues_per_class``, single process).

    A class that is on for every sample or for none has no confident joint: its pairs are not flagged.
    """
    from dq_plugins.scores.confident_learning import import_cleanlab

    find_multilabel_issues_per_class = import_cleanlab(
        "cleanlab.multilabel_classification.filter").find_multilabel_issues_per_class

    n, c = labels.shape
    flags = np.zeros((n, c), dtype=bool)
    varied = np.flatnonzero((labels.sum(axis=0) > 0) & (labels.sum(axis=0) < n))
    if n < 2 or varied.size == 0:
        return flags
    # cleanlab reads labels as lists of class ids; only classes with both values present are passed
    sub = labels[:, varied]
    as_lists = [list(np.flatnonzero(row)) for row in sub]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = find_multilabel_issues_per_class(as_lists, np.clip(probs[:, varied], 1e-6, 1 - 1e-6), n_jobs=1)
    flags[:, varied] = np.asarray(found, dtype=bool)
    return flags


def multilabel_scores(
    labels: np.ndarray, prob_given: np.ndarray, probs: np.ndarray, early_prob_given: np.ndarray | None = None,
) -> MultiLabelScores:
    """Scores of N samples from their record.

    Args:
        labels: (N, C) 0/1 given multi-hot labels.
        prob_given: (E, N, C) per-epoch sigmoid probability of the given value, NaN where missing.
        probs: (N, C) class probabilities the flags are taken from (the all-epoch mean sigmoid).
        early_prob_given: (N, C) mean over an early window of ``prob_given`` to average in, or ``None``.
    """
    labels = np.asarray(labels).astype(np.int8)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair missing at every epoch stays NaN
        confidence = np.nanmean(prob_given, axis=0) if prob_given.shape[0] else np.full(labels.shape, np.nan)
    class_score = 1.0 - confidence.astype(np.float64)
    if early_prob_given is not None:
        class_score = 0.5 * (class_score + (1.0 - early_prob_given.astype(np.float64)))
    class_score = np.nan_to_num(class_score, nan=0.0)
    mislabel = class_score.max(axis=1) if class_score.shape[1] else np.zeros(len(class_score))
    counts = class_label_issues(labels, probs).sum(axis=0)
    disagree = (probs > 0.5) != (labels == 1)
    issues = np.zeros(labels.shape, dtype=bool)
    for k, count in enumerate(counts):
        order = np.argsort(-class_score[:, k], kind="stable")[:count]
        issues[order, k] = True
    issues &= disagree
    suggested = np.where(issues, 1 - labels, labels).astype(np.int8)
    return MultiLabelScores(class_score, mislabel, issues, issues.any(axis=1), suggested)
