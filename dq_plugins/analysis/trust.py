"""Whether a split's label-issue flags (and its estimated noise rate) can be trusted.

The flags and the noise rate are read off what the model learned: a model that has not learned
the task flags samples at random and still reports a noise rate. Seen before this rule existed:
one epoch on clean labels (accuracy 0.55 on 10 classes) flagged 33 samples and reported a noise
rate of 0.18; a Hugging Face model stuck at chance flagged 88 of 200.

The rule (:func:`flag_trust`), per split:

1. **Enough training**: at least :data:`MIN_EPOCHS` training epochs were recorded. With one
   epoch every sample's record is the model still learning (its early window is the whole run, in
   sample), so hard and mislabeled samples look alike.
2. **Skill above chance**: ``skill = (accuracy - base) / (1 - base) >= MIN_SKILL``, where
   ``accuracy`` is the split's final accuracy against the given labels and ``base`` the share of
   its most frequent given label (what a model that always predicts one class scores). With
   label noise at rate ``r`` a good model's skill is about ``1 - r * C / (C - 1)``: 0.78 at 20%
   symmetric noise on 10 classes, 0.56 at 40%, so :data:`MIN_SKILL` = 0.3 leaves room for heavy
   noise while a model at chance (skill about 0) is caught.

Multi-label and token classification runs apply the same rule: for tokens ``accuracy`` and ``base``
are counted over the labelled tokens (``base``: the share of the most frequent tag, often "O"); for
multi-label over the (sample, class) cells, ``base`` being what predicting each class's more frequent
value scores (:func:`multilabel_skill`).

``trusted`` is 1 when both hold. ``confidence`` grades the same evidence in ``[0, 1]``:
``min(1, skill / FULL_SKILL)``, 0 with too few epochs, halved for the train split when its early
window did not fit the labels halfway from chance (its flags then come from the all-epoch
softmax, see :func:`dq_plugins.analysis.pipeline.early_flags`). An untrusted split's estimated
noise rate is not logged as ``dq.estimated_noise_rate*`` (the reports say "untrusted" instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_EPOCHS = 2
"""Training epochs a run needs before its flags are trusted."""

MIN_SKILL = 0.3
"""Least skill (accuracy rescaled so that a constant predictor scores 0 and a perfect one 1) for trust."""

FULL_SKILL = 0.6
"""Skill from which ``confidence`` is 1 (before the epoch and early-window factors)."""

UNTRUSTED_EARLY_WINDOW_FACTOR = 0.5
"""``confidence`` factor of a train split whose early window did not fit the labels (flags from all epochs)."""


@dataclass(frozen=True)
class FlagTrust:
    """The verdict of :func:`flag_trust` for one split.

    Attributes:
        trusted: both conditions of the rule hold.
        confidence: graded confidence in ``[0, 1]`` (see the module docstring).
        skill: ``(accuracy - base) / (1 - base)``; NaN when it cannot be computed (one class, no rows).
        epochs: training epochs recorded.
        reasons: plain-language lines, one per condition that failed or lowered ``confidence``.
    """

    trusted: bool
    confidence: float
    skill: float
    epochs: int
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def line(self, split: str) -> str:
        """One line for the end-of-fit warning and ``dq report``."""
        if self.trusted and not self.reasons:
            return f"{split}: flags trusted (confidence {self.confidence:.2f})"
        verdict = "trusted" if self.trusted else "NOT trusted"
        return f"{split}: flags {verdict} (confidence {self.confidence:.2f}): " + "; ".join(self.reasons)


def skill_above_chance(labels: np.ndarray, pred: np.ndarray) -> float:
    """``(accuracy - base) / (1 - base)`` of ``(N,)`` predictions against ``(N,)`` given labels.

    ``base`` is the share of the most frequent given label. Returns NaN with no rows or when every
    label is the same class (``base`` = 1).
    """
    labels, pred = np.asarray(labels), np.asarray(pred)
    if labels.size == 0:
        return float("nan")
    base = float(np.bincount(labels.astype(np.int64)).max() / labels.size)
    if base >= 1.0:
        return float("nan")
    accuracy = float((pred == labels).mean())
    return (accuracy - base) / (1.0 - base)


def multilabel_skill(labels: np.ndarray, pred: np.ndarray) -> float:
    """``(accuracy - base) / (1 - base)`` over the cells of ``(N, C)`` 0/1 given labels and ``(N, C)`` predictions.

    ``base`` is the accuracy of predicting each class's more frequent given value (a constant predictor per
    class). NaN with no cells or when ``base`` is 1.
    """
    labels, pred = np.asarray(labels).astype(bool), np.asarray(pred).astype(bool)
    if labels.size == 0:
        return float("nan")
    share = labels.mean(axis=0)
    base = float(np.maximum(share, 1.0 - share).mean())
    if base >= 1.0:
        return float("nan")
    return (float((pred == labels).mean()) - base) / (1.0 - base)


def flag_trust(labels: np.ndarray, pred: np.ndarray, epochs: int, *, early_window_fitted: bool | None = None,
               skill: float | None = None) -> FlagTrust:
    """Apply the rule of the module docstring to one split.

    Args:
        labels: ``(N,)`` integer given labels of the split's recorded samples (tokens: of its labelled tokens).
        pred: ``(N,)`` integer final predictions of the same samples.
        epochs: number of training epochs recorded (the train split's epochs, for every split).
        early_window_fitted: train split: whether its early window fitted the labels halfway from
            chance (the flags came from it); ``None`` for a held-out split (no early window).
        skill: the skill when the caller computed it (multi-label: :func:`multilabel_skill`); ``None``:
            :func:`skill_above_chance` of ``labels`` and ``pred``.

    Returns:
        :class:`FlagTrust`.
    """
    skill = skill_above_chance(labels, pred) if skill is None else float(skill)
    reasons = []
    if epochs < MIN_EPOCHS:
        reasons.append(f"{epochs} training epoch(s), at least {MIN_EPOCHS} needed for training dynamics")
    if not np.isfinite(skill) or skill < MIN_SKILL:
        shown = "undefined" if not np.isfinite(skill) else f"{skill:.2f}"
        reasons.append(f"the model is near chance (skill above the majority class {shown} < {MIN_SKILL})")
    trusted = not reasons
    confidence = 0.0 if (epochs < MIN_EPOCHS or not np.isfinite(skill)) else float(np.clip(skill / FULL_SKILL, 0.0, 1.0))
    if early_window_fitted is False:
        confidence *= UNTRUSTED_EARLY_WINDOW_FACTOR
        reasons.append("the early window did not fit the labels halfway from chance (flags from all epochs)")
    return FlagTrust(trusted, confidence, float(skill), int(epochs), tuple(reasons))


def trust_metrics(trust: FlagTrust, split: str) -> dict[str, float]:
    """``dq.flags_trusted`` (1/0) and ``dq.flags_confidence`` of one split (keys by ``summary_metric_key``)."""
    from dq_plugins.schema import summary_metric_key

    return {summary_metric_key("flags_trusted", split): float(trust.trusted),
            summary_metric_key("flags_confidence", split): float(trust.confidence)}


def early_window_metrics(history: Any, split: str) -> dict[str, float]:
    """``dq.early_window_end``: the last epoch of the flags' early window when the Label Wave chose it
    (``history.early_window_end``, :mod:`dq_plugins.recording.wave`); nothing for the fixed window."""
    from dq_plugins.schema import summary_metric_key

    end = history.early_window_end
    return {} if end is None else {summary_metric_key("early_window_end", split): float(end)}
