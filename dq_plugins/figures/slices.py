"""Figure of the weakest slices: accuracy per slice against the split's overall accuracy."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dq_plugins.figures.text import plain

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
    text = text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"
    return plain(text)


def weak_slices_figure(
    slices: pd.DataFrame, overall_accuracy: float | Mapping[str, float], *, split: str | Sequence[str] = "train",
    top: int = MAX_BARS, title: str | None = None,
) -> Any:
    """Horizontal bars of the ``top`` least accurate slices of each split in ``split``, weakest on top: one panel
    per split, titled with the split, so the figure shows what ``dq/weak_slices.json`` holds for each split.

    Args:
        slices: a table with ``split, slice, size, accuracy`` (from
            :func:`dq_plugins.analysis.weak_slices.find_weak_slices`, or :func:`dq_plugins.analysis.slices.slice_metrics`); with a
            ``q_value`` column the bars say it, and a ``rest_accuracy`` column is not needed.
        overall_accuracy: accuracy of the whole split, drawn as a vertical line (a mapping: per split).
        split: which split, or splits (one panel each, in this order), to draw.
        top: how many slices per split.
        title: heading of a one-split figure (default ``Weakest slices, <split>``).

    Returns:
        a matplotlib ``Figure`` (Agg, no display needed); a split with no slice gets a panel that says so
        (``no significantly weak slice in <split>`` for a table with ``q_value``).
        Bars carry a 95% Wilson interval and ``accuracy (n=size)``.
    """
    from matplotlib.figure import Figure

    splits = [split] if isinstance(split, str) else list(split)
    panels = []
    for name in splits:
        rows = slices[slices["split"].astype(str) == name].sort_values(["accuracy", "size"], ascending=[True, False])
        panels.append((name, rows.head(top).iloc[::-1]))  # barh draws bottom-up: weakest on top
    heights = [1.2 + 0.42 * max(len(rows), 2) if len(rows) else 0.6 for _, rows in panels]
    legend_room = [1.6 if len(rows) else 0.3 for _, rows in panels]  # under each drawn panel: its legend
    figure = Figure(figsize=(9, sum(heights) + sum(legend_room[:-1])))
    grid = figure.add_gridspec(len(panels), 1, height_ratios=heights,
                               hspace=sum(legend_room[:-1]) / max(sum(heights) / len(panels), 1e-9) / max(len(panels) - 1, 1)
                               if len(panels) > 1 else 0.0)
    for index, (name, rows) in enumerate(panels):
        overall = overall_accuracy.get(name) if isinstance(overall_accuracy, Mapping) else overall_accuracy
        heading = plain(title if title and len(panels) == 1 else f"Weakest slices, {name}")
        empty = "no significantly weak slice in " + name if "q_value" in slices.columns else "no slice to show"
        _draw_panel(figure.add_subplot(grid[index]), rows, overall, name, heading, heights[index], empty,
                    "q_value" in slices.columns)
    return figure


def _draw_panel(axes: Any, rows: pd.DataFrame, overall_accuracy: float | None, split: str, heading: str,
                height: float, empty: str, tested: bool) -> None:
    from matplotlib.patches import Patch

    if rows.empty:
        axes.text(0.5, 0.5, empty, ha="center", va="center", transform=axes.transAxes, color="0.4")
        axes.set_axis_off()
        axes.set_title(heading)
        return
    accuracy = rows["accuracy"].to_numpy(dtype=np.float64)
    size = rows["size"].to_numpy(dtype=np.float64)
    lower, upper = wilson_interval(accuracy * size, size)
    positions = np.arange(len(rows))
    significant = rows["q_value"].to_numpy() <= 0.05 if tested else np.zeros(len(rows), bool)
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
    if tested:
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
