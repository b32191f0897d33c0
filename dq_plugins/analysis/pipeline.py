"""End-of-fit analysis: per-split histories -> the per-sample table, issues and summary.

Pure host code on numpy/pandas: no framework, no MLflow. Scores come from
:mod:`dq_plugins.scores`; this module only assembles them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dq_plugins.analysis.trust import FlagTrust, early_window_metrics, flag_trust
from dq_plugins.logs import progress
from dq_plugins.raw_record import SplitHistory
from dq_plugins.recording.wave import SETTLED_EPOCHS_AFTER
from dq_plugins.schema import (
    COPY_COLUMNS,
    DYNAMICS_COLUMNS,
    LATENCY_COLUMN,
    TRAIN,
    split_metric_key,
    split_rank,
    summary_metric_key,
)
from dq_plugins.scores import (
    area_under_margin,
    cartography,
    confident_learning,
    default_early_epochs,
    el2n,
    forgetting_events,
)
from dq_plugins.scores._common import last_observed
from dq_plugins.scores.confident_learning import ConfidentLearningScores, nan_rows, row_chunks
from dq_plugins.scores.copies import SplitCopies, find_copies
from dq_plugins.scores.mislabel import half_instability, memorised_share, mislabel_score

if TYPE_CHECKING:
    from dq_plugins.scores.neighbors import KnnGraph
    from dq_plugins.rules.actions import RulesReport

SAMPLE_COLUMNS: tuple[str, ...] = DYNAMICS_COLUMNS
"""The first columns of ``dq/samples.parquet``, in order (:data:`dq_plugins.schema.DYNAMICS_COLUMNS`)."""

ISSUE_COLUMNS: tuple[str, ...] = (
    "split", "sample_id", "label", "suggested_label", "pred", "mislabel_score", "is_label_issue",
    "confidence", "aum", "forgetting_events", "reason",
)

MAX_ISSUE_ROWS = 500
"""Rows of ``dq/issues.json``: far under the ~2 MB the MLflow UI renders."""


@dataclass
class AnalysisResult:
    """What the analysis found.

    Attributes:
        samples: one row per (split, sample_id) recorded, columns :data:`SAMPLE_COLUMNS`.
        issues: the top rows to act on, columns :data:`ISSUE_COLUMNS`, at most ``max_issue_rows``.
        metrics: summary metrics (``dq.*``), one value each.
        epoch_metrics: key -> list of (epoch, value), logged as MLflow metric histories.
        class_overlap: class-overlap table of the splits with embeddings (``dq/class_overlap.json``), or ``None``.
        trust: split -> whether its flags and noise rate can be trusted (:mod:`dq_plugins.analysis.trust`).
        slices, weak_slices, latency: ``dq/slices.json``, ``dq/weak_slices.json`` and ``dq/latency.json``, set
            when the results are published (:func:`dq_plugins.sinks.publish.publish_results`); ``None`` before,
            or when that step failed (``latency``: no latency recorded).
        rules_report: what the rules did at the end (``None``: no rules, or not published yet).
        leakage: held-out rows that copy a train row (``dq/leakage.json``), ``None`` without input fingerprints
            of a held-out split.
    """

    samples: pd.DataFrame
    issues: pd.DataFrame
    metrics: dict[str, float]
    epoch_metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    class_overlap: pd.DataFrame | None = None
    trust: dict[str, FlagTrust] = field(default_factory=dict)
    slices: pd.DataFrame | None = None
    weak_slices: pd.DataFrame | None = None
    latency: pd.DataFrame | None = None
    rules_report: RulesReport | None = None
    leakage: pd.DataFrame | None = None

    def trust_lines(self) -> list[str]:
        """One line per split for the end-of-fit warning and ``dq report``."""
        return [verdict.line(split) for split, verdict in self.trust.items()]


@dataclass(frozen=True)
class MislabelSignals:
    """The training-dynamics signals of ``mislabel_score``, each ``(N,)`` float (see :func:`mislabel_signals`)."""

    aum: np.ndarray
    el2n_all_epochs: np.ndarray
    el2n_early: np.ndarray
    el2n_early_scored: np.ndarray
    instability: tuple[float, float] = (float("nan"), float("nan"))
    """:func:`~dq_plugins.scores.mislabel.half_instability` of ``(aum, el2n_all_epochs)``; NaN below 2 epochs."""


@dataclass(frozen=True)
class LabelFlags:
    """The label-issue decision of one split.

    Attributes:
        is_label_issue: ``(N,)`` bool.
        suggested_label: ``(N,)`` int64, the given label where not flagged.
        noise_rate: estimated share of wrong labels.
        noise_rate_interval: its 95% bootstrap interval ``(low, high)``.
        early_window_fitted: ``True`` when the flags come from the early window, ``False`` when it was
            recorded but did not fit the labels (the all-epoch flags are kept), ``None`` when not recorded.
    """

    is_label_issue: np.ndarray
    suggested_label: np.ndarray
    noise_rate: float
    noise_rate_interval: tuple[float, float]
    early_window_fitted: bool | None = None


@dataclass
class SplitAnalysis:
    """What the analysis found in one split.

    Attributes:
        samples: the split's rows of ``dq/samples.parquet`` (dynamics columns, then the embedding
            columns when the split has embeddings, then ``latency_ms`` when timed).
        flags: the label-issue decision (before near-duplicate conflicts add their flags).
        embedding_metrics: ``dq.*`` metrics of the embedding analysis (empty without embeddings).
        class_overlap: the split's class-overlap table, or ``None`` without embeddings.
    """

    samples: pd.DataFrame
    flags: LabelFlags
    embedding_metrics: dict[str, float] = field(default_factory=dict)
    class_overlap: pd.DataFrame | None = None


def analyze_split(
    history: SplitHistory,
    split: str,
    *,
    early_epochs: int | None = None,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    projection: str = "auto",
    neighbors: tuple[np.ndarray, KnnGraph] | None = None,
) -> SplitAnalysis:
    """Every score of one split (only ids recorded at least once), each computed once.

    Order: the dynamics signals and confident learning; the embedding analysis (when ``embeddings``
    = ``(ids (M,), embeddings (M, D))`` is given), whose ``neighbor_disagreement`` is the fourth
    signal of ``mislabel_score``; confident learning on the early window (:func:`early_window_cl`), whose
    flags weigh the signals (the flags' window's when the fixed one is not trusted), with the share of them
    the model fits at the end (:func:`~dq_plugins.scores.mislabel.memorised_share`); then ``mislabel_score``
    and the label flags (:func:`label_flags`, on the history's ``wave_probs`` when the Label Wave ended the
    flags' window, else on ``early_probs``);
    last, near-duplicate pairs whose labels conflict add label issues (:func:`duplicate_label_issues`).

    ``neighbors``: ``(rows (R,), graph)``, the kNN graph of the embeddings of ``rows`` searched beforehand (see
    :func:`analyze`); used when ``rows`` are the rows the embedding analysis takes, else searched again.
    """
    seen = history.seen
    ids = np.flatnonzero(seen)
    fields = {name: values[:, seen] for name, values in history.fields.items()}
    labels = history.labels[seen]
    everyone = bool(seen.all())  # no (N, C) copy of the softmax when every id was seen
    probs = history.mean_probs if everyone else history.mean_probs[seen]
    num_epochs = fields["loss"].shape[0]
    early = early_epochs or default_early_epochs(max(num_epochs, 1))

    carto = cartography(fields["prob_given"], fields["correct"])
    cl = confident_learning(labels, probs)
    learned = window_learned(history, early)
    settled = wave_settled(history)
    wave_epochs = int((np.asarray(history.epochs) <= history.early_window_end).sum()) if settled else None
    signals = mislabel_signals(fields, early, probs.shape[1], require_fit=not learned, wave_epochs=wave_epochs)
    embedding = None
    if embeddings is not None and ids.size:
        embedding = _embedding_analysis(history, *embeddings, cl.is_label_issue, ids, projection, neighbors)
    disagreement = None
    if embedding is not None:
        by_id = embedding.samples.set_index("sample_id")["neighbor_disagreement"]
        values = by_id.reindex(ids).to_numpy(dtype=np.float64)
        disagreement = values if np.isfinite(values).any() else None
    early_probs = None
    if history.early_probs is not None:
        early_probs = history.early_probs if everyone else history.early_probs[seen]
    early_cl = None
    if early_probs is not None and num_epochs:
        early_cl = early_window_cl(labels, early_probs, require_fit=not learned)
    flag_probs, flag_cl = early_probs, early_cl
    if history.wave_probs is not None:  # the flags' window ends at the Label Wave (dq_plugins.recording.wave)
        flag_probs = history.wave_probs if everyone else history.wave_probs[seen]
        flag_cl = early_window_cl(labels, flag_probs, require_fit=not settled) if num_epochs else None
    pseudo_cl = early_cl if early_cl is not None else flag_cl  # an untrusted fixed window: the flags' window weighs
    pseudo = None if pseudo_cl is None else pseudo_cl.is_label_issue
    score = mislabel_score(aum=signals.aum, el2n_all_epochs=signals.el2n_all_epochs,
                           el2n_early=signals.el2n_early_scored, neighbor_disagreement=disagreement,
                           pseudo_labels=pseudo, instability=signals.instability,
                           memorised=memorised_share(fields["correct"], pseudo))
    flags = label_flags(labels, cl, score, flag_probs if num_epochs else None, flag_cl)
    if early_probs is not None and not num_epochs:
        flags = replace(flags, early_window_fitted=False)
    pred = last_observed(history.pred[:, seen], history.pred[:, seen] < 0)
    frame = pd.DataFrame(
        {
            "sample_id": ids.astype(np.int64),
            "split": split,
            "label": labels.astype(np.int64),
            "pred": pred.astype(np.int64),
            "mislabel_score": score,
            "is_label_issue": flags.is_label_issue,
            "suggested_label": flags.suggested_label,
            "confidence": carto.confidence,
            "variability": carto.variability,
            "correctness": carto.correctness,
            "aum": signals.aum,
            "forgetting_events": forgetting_events(fields["correct"]).astype(np.int64),
            "el2n": signals.el2n_early,
            "confidence_pred": _confidence_pred(fields),
        },
        columns=list(SAMPLE_COLUMNS),
    )
    if embedding is not None:
        frame = _merge_embedding_columns(frame, embedding.samples)
        frame["is_label_issue"] = frame["is_label_issue"] | duplicate_label_issues(frame, history.mean_probs)
    if history.latency_ms is not None and len(frame):
        frame[LATENCY_COLUMN] = history.latency_ms[frame["sample_id"].to_numpy()]
    if embedding is None:
        return SplitAnalysis(frame, flags)
    return SplitAnalysis(frame, flags, embedding.summary.metrics(split), embedding.summary.class_overlap.assign(split=split))


def _confidence_pred(fields: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) probability of the predicted class at the last epoch that saw each sample; NaN without ``prob_pred``."""
    values = fields.get("prob_pred")
    if values is None:
        return np.full(fields["loss"].shape[1], np.nan, dtype=np.float32)
    return last_observed(values, np.isnan(values))


def mislabel_signals(fields: dict[str, np.ndarray], early: int, num_classes: int, *,
                     require_fit: bool = True, wave_epochs: int | None = None) -> MislabelSignals:
    """The dynamics signals of ``mislabel_score`` from ``(E, N)`` fields.

    ``el2n_early_scored`` is the input of ``mislabel_score``: the early EL2N, or all NaN (the signal
    is left out) when ``require_fit`` and the early window does not fit the given labels at least
    halfway from chance to perfect (mean correctness below ``(1 + 1/C) / 2``, the guard of
    :func:`early_window_flags`). Such a window is a model still learning the clean patterns (a short
    fine-tuning whose first epoch is the whole window), and its errors rank hard and mislabeled
    samples alike. ``require_fit=False`` when the window is known to end after that learning
    (:func:`window_learned`). ``wave_epochs``: the number of first epochs of a window that ends at a
    settled Label Wave minimum (:func:`wave_settled`); a fixed window that fails the fit test is then
    replaced by it (EL2N over those epochs) instead of being left out: a two-class task at 25% noise never
    fits halfway, yet its wave window is where the mislabeled samples stand out (SMS spam at 25% noise, 10
    epochs: ``mislabel_score`` AUPRC 0.859 / 0.872 -> 0.962 / 0.961, ``benchmarks/RESULTS.md``).
    ``instability``: how much AUM and all-epoch EL2N each re-sort the samples between the first
    ``E // 2`` and the last ``E - E // 2`` epochs (``mislabel_score`` keeps the steadier one).
    """
    aum = area_under_margin(fields["margin"])
    full_norm = el2n(fields["prob_given"], fields["prob_sq_sum"], max(fields["prob_given"].shape[0], 1))
    instability = (float("nan"), float("nan"))
    half = fields["margin"].shape[0] // 2
    if half:
        first, second = slice(0, half), slice(half, None)
        instability = (half_instability(area_under_margin(fields["margin"][first]),
                                        area_under_margin(fields["margin"][second])),
                       half_instability(_window_el2n(fields, first), _window_el2n(fields, second)))
    early_norm = el2n(fields["prob_given"], fields["prob_sq_sum"], early)
    window = fields["correct"][:early]
    with np.errstate(invalid="ignore"):
        fit = float(np.nanmean(window)) if np.isfinite(window).any() else 0.0
    fitted = not require_fit or fit >= 0.5 * (1.0 + 1.0 / num_classes)
    if fitted:
        scored = early_norm
    elif wave_epochs:
        scored = el2n(fields["prob_given"], fields["prob_sq_sum"], wave_epochs)
    else:
        scored = np.full_like(early_norm, np.nan)
    return MislabelSignals(aum, full_norm, early_norm, scored, instability)


def _window_el2n(fields: dict[str, np.ndarray], rows: slice) -> np.ndarray:
    """(N,) EL2N averaged over the epochs ``rows`` of the ``(E, N)`` fields."""
    given = fields["prob_given"][rows]
    return el2n(given, fields["prob_sq_sum"][rows], given.shape[0])


def label_flags(labels: np.ndarray, cl: Any, score: np.ndarray, early_probs: np.ndarray | None,
                early: ConfidentLearningScores | None = None) -> LabelFlags:
    """The label flags of one split: the early-window decision (:func:`early_window_flags`) when the
    early softmax ``(N, C)`` is given and fits the labels, else confident learning's ``cl`` (the
    ``ConfidentLearningResult`` of the all-epoch mean softmax). ``early``: :func:`early_window_cl`
    of ``early_probs`` when already computed."""
    flags = LabelFlags(cl.is_label_issue.astype(bool), cl.suggested_label.astype(np.int64), float(cl.noise_rate),
                       cl.noise_rate_interval, None if early_probs is None else False)
    if early_probs is None:
        return flags
    return early_window_flags(labels, early_probs, score, early) or flags


def row_argmax(probs: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """``(N,)`` int64 arg-max of each row of the ``(N, C)`` ``probs``, in row chunks (no full-size temporary).

    NaN counts as 0.0 (``np.nan_to_num``); with ``exclude`` ``(N,)``, that column of each row is left out
    (the arg-max among the other classes). Ties go to the lowest column, as ``np.argmax``.
    """
    out = np.empty(probs.shape[0], dtype=np.int64)
    for rows in row_chunks(*probs.shape):
        block = np.nan_to_num(probs[rows], nan=0.0)
        if exclude is not None:
            inside = (exclude[rows] >= 0) & (exclude[rows] < probs.shape[1])
            block[np.flatnonzero(inside), exclude[rows][inside]] = -np.inf
        out[rows] = block.argmax(axis=1)
    return out


def early_window_cl(labels: np.ndarray, early_probs: np.ndarray, *, require_fit: bool = True
                    ) -> ConfidentLearningScores | None:
    """Confident learning on the early-window softmax ``(N, C)``, or ``None`` when that window is not trusted.

    Trusted: at least 2 samples with an early softmax and, with ``require_fit``, an early-window
    accuracy on the given labels at least halfway from chance to perfect (a short fine-tuning whose
    whole window is a first, still-learning epoch ranks hard and mislabeled samples alike and
    over-counts). ``require_fit=False`` for a window that ends at a settled Label Wave
    (:func:`wave_settled`): there the model has stopped learning the shared patterns, and the fit
    test would refuse every window of a two-class task with 25% noise or more (a perfect model fits
    only ``1 - noise`` of the given labels). Its flags set the count of :func:`early_window_flags`
    and are the pseudo-labels that weigh the signals of ``mislabel_score``
    (:func:`~dq_plugins.scores.mislabel.signal_weights`).
    """
    valid = ~nan_rows(early_probs)
    num_classes = early_probs.shape[1]
    if valid.sum() < 2:
        return None
    accuracy = float((row_argmax(early_probs)[valid] == labels[valid]).mean())
    if require_fit and accuracy < 0.5 * (1.0 + 1.0 / num_classes):
        return None
    return confident_learning(labels, early_probs)


def window_learned(history: SplitHistory, early: int) -> bool:
    """Whether the fixed early window (the first ``early`` recorded epochs) ends at or after a settled Label Wave
    minimum (:func:`wave_settled`): then it is not a model still learning the shared patterns, and the fit test
    of :func:`early_window_cl` and :func:`mislabel_signals`, which a two-class task with 25% noise or more never
    passes, is not needed. Measured: SMS spam at 30% noise, ``mislabel_score`` AUPRC 0.697 -> 0.936 (cleanlab
    5-fold 0.718); where the wave ends after the fixed window (Animal-MNIST, minimum at epoch 8-9 for a window of
    epochs 0-3) nothing changes (``benchmarks/RESULTS.md``)."""
    if early < 1 or not wave_settled(history):  # settled: epochs were recorded, 3 of them after the minimum
        return False
    return history.early_window_end <= int(history.epochs[min(early, len(history.epochs)) - 1])


def wave_settled(history: SplitHistory) -> bool:
    """Whether the Label Wave window of ``history`` ended at a settled minimum: at least
    :data:`~dq_plugins.recording.wave.SETTLED_EPOCHS_AFTER` epochs were recorded after it (the
    smoothed changes rose after the minimum and no later epoch can move it; a minimum seen only in
    the last epochs of a run is not)."""
    end = history.early_window_end
    return end is not None and int((np.asarray(history.epochs) > end).sum()) >= SETTLED_EPOCHS_AFTER


def early_window_flags(labels: np.ndarray, early_probs: np.ndarray, score: np.ndarray,
                       early: ConfidentLearningScores | None = None) -> LabelFlags | None:
    """The label-issue flags of the early window, or ``None`` when it is not trusted.

    In-sample probabilities lean towards the given labels: confident learning (Northcutt et al.
    2021) on the all-epoch mean softmax under-counts the flips (it flagged 693 of 800 on MNIST-5k,
    20% symmetric noise), and once a model memorises its labels it hides them almost entirely.
    Before memorisation the softmax still votes for the true class of a flipped sample. So:
    confident learning on the early-window softmax estimates *how many* samples are mislabeled
    (and the noise rate), the flags go to that many samples in ``score`` (``mislabel_score``) order,
    keeping only those whose early-window prediction disagrees with the given label (two pieces of
    evidence); the suggested label is the early-window arg-max among the other classes.

    Measured on ``benchmarks/label_noise.py`` and on the fix-gain cases (8 seeds, MNIST-5k, 20%
    noise): precision / recall 0.945 / 0.819 -> 0.925 / 0.935 (symmetric), 0.937 / 0.802 ->
    0.836 / 0.918 (pair), and dropping the flags before retraining recovers 29% of the accuracy
    lost to symmetric noise instead of 8% (42% instead of 41% under pair noise).

    Guard (``None``): the early window must fit the given labels at least halfway from chance to
    perfect (a short fine-tuning whose whole window is a first, still-learning epoch ranks hard and
    mislabeled samples alike and over-counts); fewer than 2 samples with an early softmax: ``None``.

    Args:
        labels: ``(N,)`` integer given labels.
        early_probs: ``(N, C)`` mean softmax over the early window (NaN rows: not seen in it).
        score: ``(N,)`` ``mislabel_score`` (NaN ranks last).
        early: :func:`early_window_cl` of ``early_probs`` when already computed.
    """
    early = early if early is not None else early_window_cl(labels, early_probs)
    if early is None:
        return None
    count = int(early.is_label_issue.sum())
    order = np.argsort(-np.nan_to_num(np.asarray(score), nan=-1.0), kind="stable")
    flags = np.zeros(len(labels), dtype=bool)
    flags[order[:count]] = True
    flags &= row_argmax(early_probs) != labels  # the early model itself must disagree with the label
    suggested = np.where(flags, row_argmax(early_probs, exclude=labels), labels).astype(np.int64)
    return LabelFlags(flags, suggested, float(early.noise_rate), early.noise_rate_interval, True)


def label_issue_metrics(frame: pd.DataFrame, flags: LabelFlags, split: str, trust: FlagTrust) -> dict[str, float]:
    """The split's label-issue metrics (keys by :func:`~dq_plugins.schema.summary_metric_key`).

    ``dq.num_label_issues``, ``dq.flags_trusted`` (1/0) and ``dq.flags_confidence`` always;
    ``dq.estimated_noise_rate`` and its 95% bootstrap interval ``dq.estimated_noise_rate_low`` /
    ``_high`` only when the flags are trusted: an untrusted estimate is not presented as a fact.
    """
    metrics = {
        summary_metric_key("num_label_issues", split): float(frame["is_label_issue"].sum()),
        summary_metric_key("flags_trusted", split): float(trust.trusted),
        summary_metric_key("flags_confidence", split): float(trust.confidence),
    }
    if trust.trusted:
        low, high = flags.noise_rate_interval
        metrics[summary_metric_key("estimated_noise_rate", split)] = float(flags.noise_rate)
        metrics[summary_metric_key("estimated_noise_rate_low", split)] = float(low)
        metrics[summary_metric_key("estimated_noise_rate_high", split)] = float(high)
    return metrics


def issue_reason(row: pd.Series) -> str:
    """One plain-language line saying why a row is in the issue table."""
    parts = []
    if row["is_label_issue"]:
        parts.append(f"confident learning suggests class {row['suggested_label']}")
    if row["aum"] < 0:
        parts.append("another class out-scored the label for most of training")
    if row["forgetting_events"] > 0:
        parts.append(f"forgotten {row['forgetting_events']}x")
    if row.get("conflicting_duplicate", False):
        parts.append(f"near-duplicate of sample {row['near_duplicate_of']} with another label")
    if row["pred"] != row["label"]:
        parts.append(f"final prediction {row['pred']}")
    return "; ".join(parts) or "high mislabel_score"


def top_issues(samples: pd.DataFrame, max_rows: int = MAX_ISSUE_ROWS) -> pd.DataFrame:
    """Train first (the data one fixes), then the held-out splits; within a split flagged rows first, then by
    mislabel_score; bounded to ``max_rows``. The split is the first column."""
    if samples.empty:
        return pd.DataFrame(columns=list(ISSUE_COLUMNS))
    split = samples["split"].astype(str)
    ordered = samples.assign(_rank=split.map(split_rank), _split=split).sort_values(
        ["_rank", "_split", "is_label_issue", "mislabel_score"], ascending=[True, True, False, False], kind="stable")
    top = ordered.drop(columns=["_rank", "_split"]).head(max_rows).copy()
    top["reason"] = top.apply(issue_reason, axis=1)
    top["mislabel_score"] = top["mislabel_score"].round(4)
    top["confidence"] = top["confidence"].round(4)
    top["aum"] = top["aum"].round(4)
    return top[list(ISSUE_COLUMNS)].reset_index(drop=True)


def _embedding_analysis(
    history: SplitHistory, ids: np.ndarray, embeddings: np.ndarray, is_label_issue: np.ndarray, seen: np.ndarray,
    projection: str, neighbors: tuple[np.ndarray, KnnGraph] | None = None,
) -> Any:
    """:func:`~dq_plugins.analysis.embeddings.analyze_embeddings` of the rows whose label is known
    (:func:`labelled_rows`).

    ``is_label_issue``: ``(S,)`` confident learning's flags of the ``seen`` ids (for the cluster table).
    ``neighbors``: ``(rows, graph)`` as in :func:`analyze_split`.
    """
    from dq_plugins.analysis.embeddings import analyze_embeddings

    known = labelled_rows(ids, history.labels)
    if not known.all():  # a selection copies the rows: none when every row counts (the memory-mapped rows stay so)
        ids, embeddings = ids[known], embeddings[known]
    labels = history.labels[ids]
    probs = history.mean_probs[ids]
    issues = pd.Series(is_label_issue, index=seen).reindex(ids, fill_value=False).to_numpy(bool)
    graph = neighbors[1] if neighbors is not None and np.array_equal(neighbors[0], ids) else None
    return analyze_embeddings(embeddings, ids, labels, pred_probs=probs, is_label_issue=issues, projection=projection,
                              neighbors=graph)


def labelled_rows(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(M,)`` bool: which of the embedding rows ``ids`` (``(M,)`` slots) the embedding analysis takes, those whose
    label (``labels``, ``(N,)`` by slot, -1 = unknown) is known."""
    return labels[ids] >= 0


def _merge_embedding_columns(frame: pd.DataFrame, embedding_samples: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the embedding columns; rows without an embedding get their fill value
    (:func:`~dq_plugins.analysis.embeddings.merge_embedding_columns`)."""
    from dq_plugins.analysis.embeddings import merge_embedding_columns

    return merge_embedding_columns(frame, embedding_samples)


def duplicate_label_issues(frame: pd.DataFrame, mean_probs: np.ndarray) -> pd.Series:
    """``(N,)`` bool: the member of a conflicting near-duplicate pair whose label is probably wrong.

    In a near-duplicate pair with different labels, one label is usually right: flag the member
    whose label the training dynamics trust less (higher ``mislabel_score``) when the model's mean
    prediction for it (``mean_probs``, ``(num_ids, C)`` indexed by sample id) agrees with its
    partner's label (two independent pieces of evidence).
    """
    by_id = frame.set_index("sample_id")
    partner_score = frame["near_duplicate_of"].map(by_id["mislabel_score"])
    partner_label = frame["near_duplicate_of"].map(by_id["label"])
    mean_pred = row_argmax(mean_probs)[frame["sample_id"].to_numpy()]  # chunked: no (N, C) gather
    return (
        frame["conflicting_duplicate"]
        & (frame["mislabel_score"] > partner_score.fillna(np.inf))
        & (partner_label.to_numpy() == mean_pred)
    )


_DUPLICATE_COLUMNS: tuple[str, ...] = ("near_duplicate_of", "is_near_duplicate", "near_duplicate_score",
                                       "conflicting_duplicate", "conflicting_duplicate_score")
"""The near-duplicate columns, in their order in ``dq/samples.parquet``."""


def merge_input_copies(frame: pd.DataFrame, copies: SplitCopies | None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A copy of one split's ``frame`` (``sample_id`` and, from the embeddings, maybe ``near_duplicate_of`` /
    ``near_duplicate_score``) with its input copies merged in, for every task.

    ``near_duplicate_of`` takes the input copy where there is one, else keeps the embedding rule's near-duplicate,
    unless that rule paired more than :data:`COLLAPSED_EMBEDDING_SHARE` of the split (a collapsed embedding space);
    ``is_near_duplicate`` and ``near_duplicate_score`` (the larger of the embedding cosine and the input copy's) follow,
    and the :data:`~dq_plugins.schema.COPY_COLUMNS` are set. Returns ``(frame, kind, similarity)``: per row the kind
    (``"exact"``, ``"near"``, ``""``) and similarity of its train copy, for the leakage table.
    """
    frame = frame.copy()
    ids = frame["sample_id"].to_numpy()
    none, nan = np.full(len(frame), -1, dtype=np.int64), np.full(len(frame), np.nan)
    input_copy, input_similarity, leaked, similarity = none, nan, none, nan
    kind = np.full(len(frame), "", dtype=object)
    if copies is not None:
        at = pd.Series(np.arange(copies.ids.size), index=copies.ids).reindex(ids)
        found = at.notna().to_numpy()
        rows = at.fillna(0).to_numpy(dtype=np.int64)
        input_copy = np.where(found, copies.copy_of[rows], -1)
        input_similarity = np.where(found & (input_copy >= 0), copies.copy_similarity[rows], np.nan)
        leaked = np.where(found, copies.train_copy_of[rows], -1)
        kind = np.where(found & (leaked >= 0), copies.train_copy_kind[rows], "").astype(object)
        similarity = np.where(found & (leaked >= 0), copies.train_copy_similarity[rows], np.nan)
    previous = frame["near_duplicate_of"].to_numpy(np.int64) if "near_duplicate_of" in frame else none
    if len(previous) and (previous >= 0).mean() > COLLAPSED_EMBEDDING_SHARE:  # the embedding space collapsed
        previous = none
    duplicate_of = np.where(input_copy >= 0, input_copy, previous).astype(np.int64)
    embedding_score = frame["near_duplicate_score"].to_numpy(np.float64) if "near_duplicate_score" in frame else nan
    frame["near_duplicate_of"] = duplicate_of
    frame["is_near_duplicate"] = duplicate_of >= 0
    frame["near_duplicate_score"] = np.where(input_copy >= 0, np.fmax(embedding_score, input_similarity), embedding_score)
    frame["train_duplicate_of"] = leaked.astype(np.int64)
    frame["is_leaked"] = leaked >= 0
    frame["leaked_score"] = np.nan_to_num(similarity, nan=0.0)
    return frame, kind, similarity


def add_copy_columns(frame: pd.DataFrame, copies: SplitCopies | None, history: SplitHistory,
                     train_labels: pd.Series | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge the input copies of one split (:mod:`dq_plugins.scores.copies`) into its table.

    ``near_duplicate_of`` takes the input copy where there is one, else keeps the embedding rule's
    near-duplicate (semantic near-duplicates), unless that rule paired more than
    :data:`COLLAPSED_EMBEDDING_SHARE` of the split (then its space collapsed: a model that has not
    learned maps every input to nearly one vector, and only the input copies are kept).
    ``is_near_duplicate``, ``near_duplicate_score`` (the larger of the embedding cosine and the input
    copy's, 1 for an exact copy), ``conflicting_duplicate`` and its score follow; conflicting pairs
    add label issues (:func:`duplicate_label_issues`). The :data:`~dq_plugins.schema.COPY_COLUMNS`
    name the train row a held-out row copies.

    Args:
        train_labels: train label by sample id (for the leakage table), ``None`` without a train split.

    Returns:
        The frame and the split's leakage rows (split, sample_id, label, train_duplicate_of,
        train_label, kind, similarity).
    """
    from dq_plugins.scores.duplicates import conflicting_duplicate_score, conflicting_duplicates

    given = list(frame.columns)
    frame, kind, similarity = merge_input_copies(frame, copies)
    ids, labels = frame["sample_id"].to_numpy(), frame["label"].to_numpy()
    duplicate_of, score, leaked = (frame[c].to_numpy() for c in ("near_duplicate_of", "near_duplicate_score",
                                                                 "train_duplicate_of"))
    frame["conflicting_duplicate"] = conflicting_duplicates(duplicate_of, labels, ids)
    frame["conflicting_duplicate_score"] = conflicting_duplicate_score(duplicate_of, score, labels, ids)
    added = [c for c in (*_DUPLICATE_COLUMNS, *COPY_COLUMNS) if c not in given]  # a run without embeddings
    frame = frame[[*given, *added]].copy()
    if len(frame):
        frame["is_label_issue"] = frame["is_label_issue"] | duplicate_label_issues(frame, history.mean_probs)
    leak = frame.loc[leaked >= 0, ["split", "sample_id", "label", "train_duplicate_of"]].copy()
    leak["train_label"] = (leak["train_duplicate_of"].map(train_labels).fillna(-1).astype(np.int64)
                           if train_labels is not None else -1)
    leak["kind"] = kind[leaked >= 0]
    leak["similarity"] = similarity[leaked >= 0]
    return frame, leak


def _to_slots(histories: dict[str, SplitHistory], arrays: dict[str, tuple] | None) -> dict[str, tuple] | None:
    """``split -> (ids (M,), values...)`` with the ids of a split whose history has ``sample_ids`` turned into its
    slots (rows of ids without a slot dropped); other splits unchanged."""
    if not arrays:
        return arrays
    out = {}
    for split, (ids, *values) in arrays.items():
        history = histories.get(split)
        if history is None or history.sample_ids is None:
            out[split] = (ids, *values)
            continue
        slots = history.slots_of(ids)
        known = slots >= 0
        out[split] = (slots[known], *(np.asarray(v)[known] for v in values))
    return out


_OWN_ID_COLUMNS: tuple[str, ...] = ("sample_id", "near_duplicate_of")
"""Columns of a split's frames that hold slots of that split (:func:`_to_ids`); ``train_duplicate_of`` holds train slots."""


def _to_ids(frame: pd.DataFrame, history: SplitHistory, train: SplitHistory | None) -> pd.DataFrame:
    """``frame`` of one split with its slot columns turned into sample ids (``-1`` stays ``-1``); unchanged when
    neither the split nor the train split has ``sample_ids``."""
    if history.sample_ids is None and (train is None or train.sample_ids is None):
        return frame
    frame = frame.copy()
    for column in _OWN_ID_COLUMNS:
        if column in frame:
            frame[column] = history.ids_of(frame[column].to_numpy())
    if "train_duplicate_of" in frame and train is not None:
        frame["train_duplicate_of"] = train.ids_of(frame["train_duplicate_of"].to_numpy())
    return frame


COLLAPSED_EMBEDDING_SHARE = 0.5
"""Share of a split above which the embedding near-duplicates are dropped when input copies are known.
Seen on a randomly initialised tiny BERT that did not learn: 99% of its rows had an embedding
"near-duplicate" (identical pooled vectors), none of them an input copy."""

MAX_LEAKAGE_ROWS = 1000
"""Rows of ``dq/leakage.json`` (exact copies first); the full list is the ``train_duplicate_of`` column."""


def analyze(
    histories: dict[str, SplitHistory],
    *,
    early_epochs: int | None = None,
    max_issue_rows: int = MAX_ISSUE_ROWS,
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    projection: str = "auto",
    fingerprints: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    neighbors: dict[str, tuple[np.ndarray, KnnGraph]] | None = None,
    copy_neighbors: tuple[np.ndarray, KnnGraph] | None = None,
) -> AnalysisResult:
    """Run every score on every split and assemble the results.

    Args:
        histories: split -> recorded dynamics.
        embeddings: split -> (ids (M,), embeddings (M, D)); ``None`` or a missing split skips the
            embedding scores (their columns are then absent).
        projection: the 2D map: "auto" (= "graph", a UMAP-style layout in torch), "graph", "umap"
            (umap-learn) or "pca".
        fingerprints: split -> (ids (M,), hashes (M,), sketches (M, D)) of the model inputs
            (:mod:`dq_plugins.recording.fingerprints`); ``None`` or empty: no input copies, no
            :data:`~dq_plugins.schema.COPY_COLUMNS`, no leakage table.
        neighbors: split -> ``(rows (R,), graph)``: the kNN graph of the split's embeddings at the slots ``rows``
            (those with a known label, :func:`labelled_rows`), searched beforehand with the analysis's ``k``
            and method (:func:`dq_plugins.analysis.embeddings.knn_settings`), e.g. by every rank of a job;
            ``None`` or a missing split: the analysis searches it.
        copy_neighbors: ``(ids, graph)``, the near-copy search of the sketches searched beforehand
            (``neighbors`` of :func:`dq_plugins.scores.copies.find_copies`); ``None``: searched here.
    """
    frames, metrics, epoch_metrics, overlaps, trust, leaks = [], {}, {}, [], {}, []
    embeddings = _to_slots(histories, embeddings)  # the scores index by slot; the frames get the ids back
    fingerprints = _to_slots(histories, fingerprints)
    copies = find_copies(fingerprints, neighbors=copy_neighbors) if fingerprints else {}
    train_labels = pd.Series(histories[TRAIN].labels) if TRAIN in histories else None  # by sample id
    train_epochs = int(histories[TRAIN].epochs.size) if TRAIN in histories else None
    for split, history in progress(histories.items(), total=len(histories), desc="scores per split"):
        part = analyze_split(history, split, early_epochs=early_epochs, embeddings=(embeddings or {}).get(split),
                             projection=projection, neighbors=(neighbors or {}).get(split))
        frame = part.samples
        metrics.update(part.embedding_metrics)
        if part.class_overlap is not None:
            overlaps.append(part.class_overlap)
        if copies and len(frame):
            frame, leak = add_copy_columns(frame, copies.get(split), history, train_labels)
            metrics[split_metric_key("num_input_copies", split)] = float((frame["near_duplicate_of"] >= 0).sum())
            if split != TRAIN:
                metrics[split_metric_key("num_leaked", split)] = float(len(leak))
                leaks.append(_to_ids(leak, history, histories.get(TRAIN)))
        frame = _to_ids(frame, history, histories.get(TRAIN))
        frames.append(frame)
        metrics[split_metric_key("accuracy", split)] = (
            float((frame["pred"] == frame["label"]).mean()) if len(frame) else float("nan")
        )
        metrics[split_metric_key("num_samples", split)] = float(len(frame))
        with np.errstate(invalid="ignore"):
            per_epoch = np.nanmean(history.fields["correct"], axis=1) if history.epochs.size else []
        epoch_metrics[split_metric_key("epoch_accuracy", split)] = [
            (int(e), float(v)) for e, v in zip(history.epochs, per_epoch) if not np.isnan(v)
        ]
        epochs = train_epochs if train_epochs is not None else int(history.epochs.size)
        trust[split] = flag_trust(frame["label"].to_numpy(), frame["pred"].to_numpy(), epochs,
                                  early_window_fitted=part.flags.early_window_fitted)
        metrics.update(label_issue_metrics(frame, part.flags, split, trust[split]))
        metrics.update(early_window_metrics(history, split))
    samples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SAMPLE_COLUMNS))
    class_overlap = pd.concat(overlaps, ignore_index=True) if overlaps else None
    leakage = None
    if leaks:
        leakage = pd.concat(leaks, ignore_index=True).sort_values(["kind", "split", "sample_id"])
        leakage = leakage.head(MAX_LEAKAGE_ROWS).reset_index(drop=True)
    return AnalysisResult(samples, top_issues(samples, max_issue_rows), metrics, epoch_metrics,
                          class_overlap=class_overlap, trust=trust, leakage=leakage)
