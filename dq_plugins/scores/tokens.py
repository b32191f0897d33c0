"""Token classification scores: per labelled token and per sequence, from training dynamics.

Definitions, for a token with given tag ``y`` and mean softmax ``p`` over training:

- ``mislabel_score`` of a token (in [0, 1], higher = the tag is more likely wrong): 1 minus the
  *adjusted* self-confidence of the all-epoch mean softmax ``p`` (cleanlab's
  ``rank.get_label_quality_scores(..., adjust_pred_probs=True)``: each tag's average self-confidence
  is subtracted from its column, the largest added back and the rows renormalised, so a tag that the model is less sure of
  on the whole, such as an entity tag beside "O", is not over-ranked; in-sample probabilities differ
  by tag far more than out-of-sample ones), averaged with the same over the early window when that
  window is trusted: it fits the given tags at
  least halfway from the majority tag's share to perfect (tags are imbalanced: "O" alone is often
  70-85% of the tokens, so "halfway from chance" would trust a model that only predicts "O").
- Flags: cleanlab's token classification method (Wang and Mueller 2022,
  ``cleanlab.token_classification.filter.find_label_issues``: confident learning over the pooled
  labelled tokens) on the early-window mean softmax when trusted, else the all-epoch mean (a
  held-out split: its latest pass) estimates *how many* tokens are mislabeled; as in the
  single-label path the flags go to that many tokens in ``mislabel_score`` order among those whose
  predicted tag (under the same probabilities) differs from the given one. The suggested tag of a
  flagged token is the most probable other tag.
- A sequence's ``mislabel_score`` is its most suspicious token's; it is a label issue when any of
  its tokens is flagged.

References: Wang and Mueller 2022, "Detecting Label Errors in Token Classification Data"
(https://arxiv.org/abs/2210.03920); Northcutt, Jiang and Chuang, JAIR 2021.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenScores:
    """Scores of M labelled tokens (flattened in row-major (sequence, position) order).

    Attributes:
        mislabel_score: (M,) float64 in [0, 1].
        is_label_issue: (M,) bool.
        suggested_label: (M,) int64, the given tag where not flagged.
    """

    mislabel_score: np.ndarray
    is_label_issue: np.ndarray
    suggested_label: np.ndarray


def early_window_trusted(labels: np.ndarray, early_probs: np.ndarray | None) -> bool:
    """Whether the (M, C) early-window softmax predicts the (M,) given tags at least halfway from the
    majority tag's share to perfect (accuracy >= (1 + majority share) / 2 over the tokens it saw)."""
    if early_probs is None or not len(labels):
        return False
    seen = ~np.isnan(early_probs).any(axis=1)
    if not seen.any():
        return False
    accuracy = float((early_probs[seen].argmax(axis=1) == labels[seen]).mean())
    majority = float(np.bincount(labels[seen]).max() / seen.sum())
    return accuracy >= 0.5 * (1.0 + majority)


def token_label_issues(labels: np.ndarray, probs: np.ndarray, sequence: np.ndarray) -> np.ndarray:
    """(M,) bool flags of cleanlab's token classification method.

    Args:
        labels: (M,) given tags of the labelled tokens.
        probs: (M, C) class probabilities of the same tokens (rows sum to 1).
        sequence: (M,) sequence index of each token, non-decreasing (tokens grouped by sequence).
    """
    from dq_plugins.scores.confident_learning import import_cleanlab

    find_label_issues = import_cleanlab("cleanlab.token_classification.filter").find_label_issues

    flags = np.zeros(len(labels), dtype=bool)
    if len(labels) < 2 or len(np.unique(labels)) < 2:
        return flags
    starts = np.flatnonzero(np.r_[True, sequence[1:] != sequence[:-1]])
    bounds = np.r_[starts, len(labels)]
    per_label = [labels[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    per_probs = [probs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = find_label_issues(per_label, per_probs, n_jobs=1)
    for i, j in found:
        flags[bounds[i] + j] = True
    return flags


def adjusted_self_confidence(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(M,) cleanlab's self-confidence with ``adjust_pred_probs=True`` of (M, C) ``probs``; NaN rows stay NaN."""
    from dq_plugins.scores.confident_learning import import_cleanlab

    get_label_quality_scores = import_cleanlab("cleanlab.rank").get_label_quality_scores

    out = np.full(len(labels), np.nan)
    valid = ~np.isnan(probs).any(axis=1)
    if not valid.any():
        return out
    present = np.unique(labels[valid])
    if len(present) < 2:  # one tag only: nothing to adjust against
        out[valid] = probs[valid, labels[valid]]
        return out
    # cleanlab needs every column's tag present among the labels: score over the present tags, renormalised
    sub = probs[valid][:, present]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out[valid] = get_label_quality_scores(np.searchsorted(present, labels[valid]), sub, adjust_pred_probs=True)
    return out


def token_scores(labels: np.ndarray, sequence: np.ndarray, mean_probs: np.ndarray,
                 early_probs: np.ndarray | None, flag_probs: np.ndarray) -> TokenScores:
    """Scores of M labelled tokens.

    Args:
        labels: (M,) int given tags.
        sequence: (M,) sequence index of each token (grouped, non-decreasing).
        mean_probs: (M, C) all-epoch mean softmax.
        early_probs: (M, C) early-window mean softmax when trusted, else ``None``.
        flag_probs: (M, C) probabilities the flags come from.
    """
    labels = np.asarray(labels, dtype=np.int64)
    score = 1.0 - adjusted_self_confidence(labels, mean_probs)
    if early_probs is not None:
        early = 1.0 - adjusted_self_confidence(labels, early_probs)
        score = np.where(np.isnan(early), score, 0.5 * (score + early))
    count = int(token_label_issues(labels, flag_probs, sequence).sum())
    score = np.nan_to_num(score, nan=0.0)
    order = np.argsort(-score, kind="stable")
    flags = np.zeros(len(labels), dtype=bool)
    flags[order[:count]] = True
    flags &= flag_probs.argmax(axis=1) != labels  # the model itself must disagree with the given tag
    others = np.where(np.arange(flag_probs.shape[1])[None, :] == labels[:, None], -np.inf, flag_probs)
    suggested = np.where(flags, others.argmax(axis=1), labels).astype(np.int64)
    return TokenScores(score, flags, suggested)
