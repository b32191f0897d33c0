"""Figures for a person: the data map of Swayamdipta et al. (2020)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from dq_plugins.figures.text import plain

MAX_POINTS = 20_000
"""Points drawn in a scatter; larger splits are subsampled (label issues always kept)."""


def data_map(samples: pd.DataFrame, title: str = "Data map", seed: int = 0) -> Any:
    """Confidence vs variability, coloured by correctness, label issues marked.

    Args:
        samples: rows of one split with columns confidence, variability, correctness, is_label_issue.
    Returns:
        a matplotlib ``Figure`` (Agg backend, no display needed).
    """
    from matplotlib.figure import Figure

    frame = samples.dropna(subset=["confidence", "variability"])
    if len(frame) > MAX_POINTS:
        issues = frame[frame["is_label_issue"]]
        rest = frame[~frame["is_label_issue"]]
        keep = max(MAX_POINTS - len(issues), 0)
        frame = pd.concat([rest.sample(n=min(keep, len(rest)), random_state=seed), issues])
    figure = Figure(figsize=(7.5, 6))
    axes = figure.add_subplot()
    points = axes.scatter(
        frame["variability"], frame["confidence"], c=frame["correctness"], cmap="coolwarm_r",
        vmin=0.0, vmax=1.0, s=9, alpha=0.6, linewidths=0,
    )
    flagged = frame[frame["is_label_issue"]]
    axes.scatter(
        flagged["variability"], flagged["confidence"], marker="x", s=22, c="black", linewidths=0.8,
        label=f"label issue ({len(flagged)})",
    )
    figure.colorbar(points, ax=axes, label="correctness (fraction of epochs correct)")
    axes.set_xlabel("variability (std of p(given label) over epochs)")
    axes.set_ylabel("confidence (mean p(given label) over epochs)")
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlim(left=-0.01)
    axes.text(0.98, 0.97, "easy to learn", transform=axes.transAxes, ha="right", va="top", color="0.35")
    axes.text(0.98, 0.03, "hard to learn\n(often mislabeled)", transform=axes.transAxes, ha="right", va="bottom", color="0.35")
    axes.text(0.98, 0.5, "ambiguous", transform=axes.transAxes, ha="right", va="center", color="0.35")
    axes.set_title(f"{plain(title)} (n={len(frame)})")
    if len(flagged):
        axes.legend(loc="upper left")
    return figure
