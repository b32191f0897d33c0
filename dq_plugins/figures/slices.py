"""Figure of the weakest slices: accuracy per slice against the split's overall accuracy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

MAX_BARS = 15
"""Slices drawn in one figure."""

SIGNIFICANT, OTHER = "#c0392b", "#95a5a6"
"""Bar colours: significantly weak slices, other slices."""

MAX_LABEL_CHARS = 60
"""Longer slice names are shortened with an ellipsis."""


def wilson_interval(correct: np.ndarray, size: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) Wilson score interval of a proportion ``correct / size`` (95% for z=1.96)."""
    size = np.asarray(size, dtype=np.float64)
    p = np.asarray(correct, dtype=np.float64) / np.maximum(size, 1)
    denom = 1 + z**2 / size
    centre = (p + z**2 / (2 * size)) / denom
    half = z * np.sqrt(p * (1 - p) / size + z**2 / (4 * size**2)) / denom
    return centre - half, centre + half


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def weak_slices_figure(
    slices: pd.DataFrame, overall_accuracy: float, *, split: str = "train", top: int = MAX_BARS,
    title: str | None = None,
) -> Any:
    """Horizontal bars of the ``top`` least accurate slices of ``split``, weakest on top.

    Args:
        slices: a table with ``split, slice, size, accuracy`` (from
            :func:`dq_plugins.analysis.slices.find_weak_slices`, or :func:`dq_plugins.analysis.slices.slice_metrics`); with a
            ``q_value`` column the bars say it, and a ``rest_accuracy`` column is not needed.
        overall_accuracy: accuracy of the whole split, drawn as a vertical line.
        split: which split to draw.
        top: how many slices.

    Returns:
        a matplotlib ``Figure`` (Agg, no display needed); with no slice, a figure that says so.
        Bars carry a 95% Wilson interval and ``accuracy (n=size)``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = slices[slices["split"].astype(str) == split].sort_values(["accuracy", "size"], ascending=[True, False])
    rows = rows.head(top).iloc[::-1]  # barh draws bottom-up: weakest on top
    height = 1.2 + 0.42 * max(len(rows), 2)
    figure = Figure(figsize=(9, height))
    axes = figure.add_subplot()
    heading = title or f"Weakest slices, {split}"
    if rows.empty:
        axes.text(0.5, 0.5, "no slice to show", ha="center", va="center", transform=axes.transAxes, color="0.4")
        axes.set_axis_off()
        axes.set_title(heading)
        return figure
    accuracy = rows["accuracy"].to_numpy(dtype=np.float64)
    size = rows["size"].to_numpy(dtype=np.float64)
    lower, upper = wilson_interval(accuracy * size, size)
    positions = np.arange(len(rows))
    significant = rows["q_value"].to_numpy() <= 0.05 if "q_value" in rows.columns else np.zeros(len(rows), bool)
    colours = np.where(significant, SIGNIFICANT, OTHER)
    axes.barh(positions, accuracy, color=colours, height=0.65,
              xerr=np.clip(np.nan_to_num(np.vstack([accuracy - lower, upper - accuracy])), 0.0, None),
              error_kw={"ecolor": "0.25", "capsize": 2, "lw": 0.8})
    axes.set_yticks(positions, [_short(str(s)) for s in rows["slice"]], fontsize=9)
    for y, (top_of_bar, acc, n) in enumerate(zip(upper, accuracy, size, strict=True)):
        axes.text(min(top_of_bar, 1.0) + 0.012, y, f"{acc:.2f} (n={int(n)})", va="center", ha="left", fontsize=8,
                  color="0.15", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.4})
    handles = []
    if overall_accuracy is not None and not math.isnan(overall_accuracy):
        handles.append(axes.axvline(overall_accuracy, color="#2c3e50", linestyle="--", linewidth=1.2,
                                    label=f"{split} overall accuracy {overall_accuracy:.2f}"))
    if "q_value" in rows.columns:
        handles.append(Patch(color=SIGNIFICANT, label="significantly below the rest of the split (q <= 0.05)"))
        if not significant.all():
            handles.append(Patch(color=OTHER, label="not significant"))
    axes.set_xlim(0, 1.18)
    axes.set_xticks(np.linspace(0, 1, 6))
    axes.set_xlabel("accuracy (prediction == given label), 95% Wilson interval")
    axes.set_title(heading)
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.6 / (0.78 * height)), fontsize=8,
                frameon=False, ncol=2)
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)
    return figure
