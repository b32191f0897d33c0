"""End-of-fit analysis of a token classification task: histories -> per-token and per-sequence tables.

Pure host code (numpy, pandas). Scores come from :mod:`dq_plugins.scores.tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from dq_plugins.analysis.task_result import TaskResult
from dq_plugins.analysis.trust import early_window_metrics, flag_trust, trust_metrics
from dq_plugins.recording.tokens import TokenHistory
from dq_plugins.schema import TOKEN_COLUMNS, TOKEN_SAMPLE_COLUMNS, TOKEN_VIEW_PATH, TRAIN, summary_metric_key
from dq_plugins.scores.tokens import early_window_trusted, token_scores

TOKEN_ISSUE_COLUMNS: tuple[str, ...] = (
    "split", "sample_id", "mislabel_score", "is_label_issue", "num_label_issues", "flagged_tokens",
)
"""Columns of ``dq/issues.json`` for a token task; ``flagged_tokens`` lists ``position:given->suggested``."""

TAG_SLICE_COLUMNS: tuple[str, ...] = (
    "split", "slice", "column", "value", "size", "accuracy", "mean_mislabel_score", "label_issue_rate",
)
"""Columns of ``dq/slices.json`` for a token task: one row per (split, given tag), counted in tokens."""


def analyze_token_split(history: TokenHistory, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tokens, samples) of one split: every labelled token, every sequence with one."""
    rows, positions = np.nonzero(history.labels >= 0)
    labels = history.labels[rows, positions].astype(np.int64)
    mean_probs = history.mean_probs[rows, positions]
    early = history.early_probs[rows, positions] if history.early_probs is not None else None
    trusted = early_window_trusted(labels, early)
    scores = token_scores(labels, rows, mean_probs, early if trusted else None, early if trusted else mean_probs)
    tokens = pd.DataFrame({
        "sample_id": rows.astype(np.int64), "split": split, "token_index": positions.astype(np.int64),
        "label": labels, "pred": history.pred[rows, positions].astype(np.int64),
        "mislabel_score": scores.mislabel_score, "is_label_issue": scores.is_label_issue,
        "suggested_label": scores.suggested_label,
    }, columns=list(TOKEN_COLUMNS))
    grouped = tokens.assign(correct=tokens["pred"] == tokens["label"]).groupby("sample_id", sort=True)
    samples = pd.DataFrame({
        "mislabel_score": grouped["mislabel_score"].max(),
        "is_label_issue": grouped["is_label_issue"].any(),
        "num_tokens": grouped.size().astype(np.int64),
        "num_label_issues": grouped["is_label_issue"].sum().astype(np.int64),
        "token_accuracy": grouped["correct"].mean(),
    }).reset_index()
    samples.insert(1, "split", split)
    tokens.attrs["early_window"] = trusted
    return tokens, samples[list(TOKEN_SAMPLE_COLUMNS)]


def tag_slices(tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, given tag): :data:`TAG_SLICE_COLUMNS`."""
    if tokens.empty:
        return pd.DataFrame(columns=list(TAG_SLICE_COLUMNS))
    frame = tokens.assign(correct=tokens["pred"] == tokens["label"])
    table = frame.groupby(["split", "label"], sort=True).agg(
        size=("correct", "size"), accuracy=("correct", "mean"), mean_mislabel_score=("mislabel_score", "mean"),
        label_issue_rate=("is_label_issue", "mean")).reset_index()
    table["column"] = "label"
    table["value"] = table["label"].astype(str)
    table["slice"] = "label=" + table["value"]
    return table[list(TAG_SLICE_COLUMNS)]


def token_issues(samples: pd.DataFrame, tokens: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """Flagged sequences first, then by ``mislabel_score``; at most ``max_rows``."""
    if samples.empty:
        return pd.DataFrame(columns=list(TOKEN_ISSUE_COLUMNS))
    top = samples.sort_values(["is_label_issue", "mislabel_score"], ascending=[False, False]).head(max_rows)
    flagged = tokens[tokens["is_label_issue"]]
    text = (flagged["token_index"].astype(str) + ":" + flagged["label"].astype(str) + "->"
            + flagged["suggested_label"].astype(str))
    by_key = text.groupby([flagged["split"], flagged["sample_id"]]).agg(", ".join)
    index = pd.MultiIndex.from_frame(top[["split", "sample_id"]])
    out = top[["split", "sample_id", "mislabel_score", "is_label_issue", "num_label_issues"]].copy()
    out["mislabel_score"] = out["mislabel_score"].round(4)
    out["flagged_tokens"] = by_key.reindex(index).fillna("").to_numpy()
    return out[list(TOKEN_ISSUE_COLUMNS)].reset_index(drop=True)


def analyze_tokens(
    histories: dict[str, TokenHistory], *, max_issue_rows: int = 500,
    token_strings: Callable[[str, int], Sequence[str] | None] | None = None,
    class_names: Sequence[str] | None = None, max_view_rows: int = 50,
) -> TaskResult:
    """Every split's tables, the issue table, per-tag slices, the metrics and the HTML view.

    Args:
        token_strings: ``(split, sample_id) -> the tokens of the sequence`` (position i = the token at input
            position i) for the view; ``None`` shows positions only.
        class_names: tag names by id for the view (``None``: the ids).
        max_view_rows: sequences in the view (most suspicious first).
    """
    from dq_plugins.figures.token_view import token_issue_html

    token_frames, sample_frames, metrics, epoch_metrics, trust = [], [], {}, {}, {}
    train = histories.get(TRAIN)
    for split, history in histories.items():
        tokens, samples = analyze_token_split(history, split)
        fitted = bool(tokens.attrs["early_window"]) if split == TRAIN else None
        trust[split] = flag_trust(tokens["label"].to_numpy(), tokens["pred"].to_numpy(), int((train or history).epochs.size),
                                  early_window_fitted=fitted)
        metrics.update(trust_metrics(trust[split], split))
        metrics.update(early_window_metrics(history, split))
        token_frames.append(tokens)
        sample_frames.append(samples)
        metrics[summary_metric_key("num_label_issues", split)] = float(samples["is_label_issue"].sum())
        metrics[summary_metric_key("num_token_label_issues", split)] = float(tokens["is_label_issue"].sum())
        metrics[f"dq.num_samples.{split}"] = float(len(samples))
        metrics[f"dq.num_tokens.{split}"] = float(len(tokens))
        metrics[f"dq.token_accuracy.{split}"] = float((tokens["pred"] == tokens["label"]).mean()) if len(tokens) else float("nan")
        epoch_metrics[f"dq.epoch_token_accuracy.{split}"] = [
            (int(e), float(v)) for e, v in zip(history.epochs, history.accuracy) if np.isfinite(v)]
    tokens = pd.concat(token_frames, ignore_index=True) if token_frames else pd.DataFrame(columns=list(TOKEN_COLUMNS))
    samples = pd.concat(sample_frames, ignore_index=True) if sample_frames else pd.DataFrame(columns=list(TOKEN_SAMPLE_COLUMNS))
    issues = token_issues(samples, tokens, max_issue_rows)
    html = token_issue_html(issues.head(max_view_rows), tokens, token_strings, class_names)
    return TaskResult(task="token_classification", samples=samples, issues=issues, metrics=metrics,
                      epoch_metrics=epoch_metrics, slices=tag_slices(tokens), tables={"tokens": tokens},
                      html={TOKEN_VIEW_PATH: html}, trust=trust)
