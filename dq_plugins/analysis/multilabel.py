"""End-of-fit analysis of a multi-label task: histories -> per-sample and per-(sample, class) tables.

Pure host code (numpy, pandas). Scores come from :mod:`dq_plugins.scores.multilabel`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dq_plugins.analysis.task_result import TaskResult
from dq_plugins.analysis.trust import flag_trust, multilabel_skill, trust_metrics
from dq_plugins.recording.multilabel import MultiLabelHistory
from dq_plugins.schema import MULTILABEL_SAMPLE_COLUMNS, SAMPLE_LABEL_COLUMNS, TRAIN, summary_metric_key
from dq_plugins.scores.multilabel import multilabel_scores

MULTILABEL_ISSUE_COLUMNS: tuple[str, ...] = (
    "split", "sample_id", "label", "suggested_label", "add", "remove", "mislabel_score", "is_label_issue",
)
"""Columns of ``dq/issues.json`` for a multi-label task (class-id lists written as text)."""

CLASS_SLICE_COLUMNS: tuple[str, ...] = (
    "split", "slice", "column", "value", "size", "precision", "recall", "f1", "mean_class_score",
    "label_issue_rate", "num_add", "num_remove",
)
"""Columns of ``dq/slices.json`` for a multi-label task: one row per (split, class); ``size`` is the
number of samples given the class; precision/recall/F1 of the final predictions (probability > 0.5)."""


def _ids(row: np.ndarray) -> list[int]:
    return [int(k) for k in np.flatnonzero(row)]


def analyze_multilabel_split(history: MultiLabelHistory, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples, sample_labels) of one split, only ids recorded at least once."""
    seen = history.seen
    ids = np.flatnonzero(seen)
    labels = history.labels[seen].astype(np.int8)
    prob_given = history.fields["prob_given"][:, seen]
    mean_probs = history.mean_probs[seen]
    # all-epoch probabilities: the early window ranked and flagged worse on the multilabel-digits case of
    # benchmarks/label_noise.py (benchmarks/RESULTS.md, section label_noise_tasks)
    flag_probs = mean_probs
    scores = multilabel_scores(labels, prob_given, flag_probs)
    # the final prediction: the last epoch's decision per class (a sample absent from it: the mean sigmoid)
    last = history.fields["correct"][-1, seen] if len(history.epochs) else np.full(labels.shape, np.nan)
    pred = np.where(np.isnan(last), mean_probs > 0.5, (last > 0.5) == (labels == 1))
    with np.errstate(invalid="ignore"):
        confidence = np.nanmean(prob_given, axis=(0, 2)) if prob_given.shape[0] else np.full(len(ids), np.nan)
    samples = pd.DataFrame({
        "sample_id": ids.astype(np.int64), "split": split,
        "label": [_ids(row) for row in labels],
        "suggested_label": [_ids(row) for row in scores.suggested],
        "pred": [_ids(row) for row in pred],
        "mislabel_score": scores.mislabel_score,
        "is_label_issue": scores.is_label_issue,
        "num_label_issues": scores.class_issue.sum(axis=1).astype(np.int64),
        "confidence": confidence.astype(np.float64),
    }, columns=list(MULTILABEL_SAMPLE_COLUMNS))
    n, c = labels.shape
    sample_labels = pd.DataFrame({
        "sample_id": np.repeat(ids.astype(np.int64), c), "split": split,
        "class_id": np.tile(np.arange(c, dtype=np.int64), n),
        "given": labels.reshape(-1).astype(np.int8),
        "prob": flag_probs.reshape(-1).astype(np.float32),
        "class_score": scores.class_score.reshape(-1),
        "is_label_issue": scores.class_issue.reshape(-1),
        "action": scores.action.reshape(-1),
    }, columns=list(SAMPLE_LABEL_COLUMNS))
    samples.attrs["pred_matrix"] = pred
    return samples, sample_labels


def class_slices(samples: pd.DataFrame, sample_labels: pd.DataFrame, pred: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per (split, class): :data:`CLASS_SLICE_COLUMNS`."""
    rows = []
    for split, part in sample_labels.groupby("split", sort=False):
        c = int(part["class_id"].max()) + 1
        given = part["given"].to_numpy().reshape(-1, c).astype(bool)
        flags = part["is_label_issue"].to_numpy().reshape(-1, c)
        score = part["class_score"].to_numpy().reshape(-1, c)
        action = part["action"].to_numpy().reshape(-1, c)
        predicted = pred[split].astype(bool)
        for k in range(c):
            tp = float((predicted[:, k] & given[:, k]).sum())
            precision = tp / predicted[:, k].sum() if predicted[:, k].any() else float("nan")
            recall = tp / given[:, k].sum() if given[:, k].any() else float("nan")
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
            rows.append({
                "split": split, "slice": f"class={k}", "column": "class", "value": str(k),
                "size": int(given[:, k].sum()), "precision": precision, "recall": recall, "f1": f1,
                "mean_class_score": float(score[:, k].mean()), "label_issue_rate": float(flags[:, k].mean()),
                "num_add": int((action[:, k] == "add").sum()), "num_remove": int((action[:, k] == "remove").sum()),
            })
    return pd.DataFrame(rows, columns=list(CLASS_SLICE_COLUMNS))


def multilabel_issues(samples: pd.DataFrame, sample_labels: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """Flagged samples first, then by ``mislabel_score``; at most ``max_rows`` rows, class lists as text."""
    if samples.empty:
        return pd.DataFrame(columns=list(MULTILABEL_ISSUE_COLUMNS))
    top = samples.sort_values(["is_label_issue", "mislabel_score"], ascending=[False, False]).head(max_rows)
    flagged = sample_labels[sample_labels["is_label_issue"]]
    key = ["split", "sample_id"]
    adds = flagged[flagged["action"] == "add"].groupby(key)["class_id"].apply(list)
    removes = flagged[flagged["action"] == "remove"].groupby(key)["class_id"].apply(list)
    index = pd.MultiIndex.from_frame(top[key])
    return pd.DataFrame({
        "split": top["split"].to_numpy(), "sample_id": top["sample_id"].to_numpy(),
        "label": top["label"].map(str).to_numpy(), "suggested_label": top["suggested_label"].map(str).to_numpy(),
        "add": [str(v) if isinstance(v, list) else "[]" for v in adds.reindex(index).to_numpy()],
        "remove": [str(v) if isinstance(v, list) else "[]" for v in removes.reindex(index).to_numpy()],
        "mislabel_score": top["mislabel_score"].round(4).to_numpy(),
        "is_label_issue": top["is_label_issue"].to_numpy(),
    }, columns=list(MULTILABEL_ISSUE_COLUMNS))


def analyze_multilabel(histories: dict[str, MultiLabelHistory], *, max_issue_rows: int = 500) -> TaskResult:
    """Every split's tables, the issue table, per-class slices and the ``dq.*`` metrics."""
    samples, labels, metrics, epoch_metrics, pred, trust = [], [], {}, {}, {}, {}
    train = histories.get(TRAIN)
    for split, history in histories.items():
        frame, per_class = analyze_multilabel_split(history, split)
        pred[split] = frame.attrs.pop("pred_matrix")
        samples.append(frame)
        labels.append(per_class)
        metrics[summary_metric_key("num_label_issues", split)] = float(frame["is_label_issue"].sum())
        metrics[summary_metric_key("num_class_label_issues", split)] = float(per_class["is_label_issue"].sum())
        given = per_class["given"].to_numpy().reshape(pred[split].shape)
        epochs = int((train or history).epochs.size)
        trust[split] = flag_trust(given, pred[split], epochs, skill=multilabel_skill(given, pred[split]))
        metrics.update(trust_metrics(trust[split], split))
        metrics[f"dq.num_samples.{split}"] = float(len(frame))
        exact = [a == b for a, b in zip(frame["label"], frame["pred"])]
        metrics[f"dq.exact_match.{split}"] = float(np.mean(exact)) if exact else float("nan")
        with np.errstate(invalid="ignore"):
            per_epoch = np.nanmean(history.fields["correct"], axis=(1, 2)) if history.epochs.size else []
        epoch_metrics[f"dq.epoch_label_accuracy.{split}"] = [
            (int(e), float(v)) for e, v in zip(history.epochs, per_epoch) if np.isfinite(v)]
    all_samples = pd.concat(samples, ignore_index=True) if samples else pd.DataFrame(columns=list(MULTILABEL_SAMPLE_COLUMNS))
    all_labels = pd.concat(labels, ignore_index=True) if labels else pd.DataFrame(columns=list(SAMPLE_LABEL_COLUMNS))
    return TaskResult(
        task="multilabel", samples=all_samples,
        issues=multilabel_issues(all_samples, all_labels, max_issue_rows),
        metrics=metrics, epoch_metrics=epoch_metrics,
        slices=class_slices(all_samples, all_labels, pred), tables={"sample_labels": all_labels}, trust=trust,
    )
