"""Figures of the embedding analysis: the 2-D embedding map as a PNG and as interactive HTML.

Both read one split's rows of the per-sample table (``dq/samples.parquet`` after the embedding
columns are merged): ``x2d``, ``y2d``, ``label`` (the PNG: the ``colour_by`` column) are required; ``sample_id``, ``pred``,
``suggested_label``, ``is_label_issue``, ``is_outlier``, ``near_duplicate_of`` and
``conflicting_duplicate`` are used when present. Large splits are subsampled to
:data:`MAX_POINTS`, keeping every marked row (label issue, outlier, near-duplicate) first.

The HTML page is self-contained (data, CSS and a small script inline; no CDN, no network, no
storage), so MLflow's artifact viewer, which shows HTML in an ``<iframe sandbox="allow-scripts">``,
renders it as is.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dq_plugins.figures.text import plain

MAX_POINTS = 20_000
"""Points drawn in the PNG and the HTML; larger splits are subsampled (marked rows kept first)."""

MAX_TEXT_CHARS = 200
"""Characters of each text kept in the HTML (the page stays under ~6 MB at 20k points)."""

MARKERS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("is_label_issue", "label issue", {"marker": "x", "s": 14, "c": "black", "linewidths": 0.7, "alpha": 0.75}),
    ("conflicting_duplicate", "near-duplicate, other label", {"marker": "D", "s": 30, "facecolors": "none", "edgecolors": "#c2185b", "linewidths": 1.2}),
    ("is_near_duplicate", "near-duplicate, same label", {"marker": "s", "s": 24, "facecolors": "none", "edgecolors": "#1f3a93", "linewidths": 0.9}),
    ("is_outlier", "outlier", {"marker": "o", "s": 36, "facecolors": "none", "edgecolors": "black", "linewidths": 0.8}),
)
"""(flag column, legend text, matplotlib scatter style) of the marked rows, drawn in this order."""


def _flags(frame: pd.DataFrame) -> pd.DataFrame:
    """Bool columns of :data:`MARKERS` (False when the source column is absent)."""
    out = pd.DataFrame(index=frame.index)
    for column, _, _ in MARKERS:
        if column == "is_near_duplicate":
            source = frame["near_duplicate_of"] >= 0 if "near_duplicate_of" in frame else False
            if "conflicting_duplicate" in frame:  # drawn with their own marker
                source = source & ~frame["conflicting_duplicate"].fillna(False).astype(bool)
        else:
            source = frame[column].fillna(False).astype(bool) if column in frame else False
        out[column] = source
    return out.astype(bool)


def _check_frame(frame: pd.DataFrame, colour_by: str = "label") -> None:
    missing = [column for column in ("x2d", "y2d", colour_by) if column not in frame]
    if missing:
        raise ValueError(
            f"Expected the frame to have columns x2d, y2d and {colour_by} but {missing} are missing. HINT: merge"
            " the `samples` of `analyze_embeddings` into the per-sample table on sample_id first."
        )


def subsample(frame: pd.DataFrame, max_points: int = MAX_POINTS, seed: int = 0) -> pd.DataFrame:
    """At most ``max_points`` rows with finite coordinates: every marked row first, then a random rest."""
    frame = frame[np.isfinite(frame["x2d"]) & np.isfinite(frame["y2d"])]
    if len(frame) <= max_points:
        return frame
    marked = _flags(frame).any(axis=1)
    keep = frame[marked]
    if len(keep) > max_points:
        return keep.sample(n=max_points, random_state=seed)
    rest = frame[~marked].sample(n=max_points - len(keep), random_state=seed)
    return pd.concat([rest, keep])


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _palette(num: int) -> list[str]:
    """``num`` distinct colours: tab10 / tab20, then evenly spaced hues."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if num <= 10:
        return [to_hex(colormaps["tab10"](i)) for i in range(num)]
    if num <= 20:
        return [to_hex(colormaps["tab20"](i)) for i in range(num)]
    return [to_hex(colormaps["turbo"](0.05 + 0.9 * i / max(num - 1, 1))) for i in range(num)]


def embedding_map(
    frame: pd.DataFrame,
    title: str = "Embedding map",
    *,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    colour_by: str = "label",
) -> Any:
    """The 2-D map coloured by given label, with label issues, outliers and near-duplicates marked.

    Args:
        frame: rows of one split (module docstring for the columns).
        title: figure title; the number of points drawn is appended.
        class_names: names of the labels (index = label), shown in the class legend.
        seed: random state of the subsample.
        colour_by: the integer column that colours the points (``"cluster"`` for tasks whose
            ``label`` is not one class per sample); it names the colour legend.

    Returns:
        a matplotlib ``Figure`` (Agg backend, no display needed).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    _check_frame(frame, colour_by)
    total = len(frame)
    shown = subsample(frame, MAX_POINTS, seed)
    flags = _flags(shown)
    classes = np.unique(shown[colour_by].to_numpy()) if len(shown) else np.array([], dtype=np.int64)
    colours = dict(zip(classes.tolist(), _palette(len(classes))))
    legend = "given label" if colour_by == "label" else colour_by

    figure = Figure(figsize=(10, 7.5), layout="constrained")
    axes = figure.add_subplot()
    point_size = 10 if len(shown) < 2000 else 5
    axes.scatter(
        shown["x2d"], shown["y2d"], c=[colours[label] for label in shown[colour_by]], s=point_size, alpha=0.55,
        linewidths=0, rasterized=True,
    )
    for column, text, style in MARKERS:
        rows = shown[flags[column]]
        if len(rows):
            axes.scatter(rows["x2d"], rows["y2d"], label=f"{text} ({int(flags[column].sum())})", **style)
    marker_handles = axes.get_legend_handles_labels()
    if marker_handles[0]:
        marker_legend = axes.legend(*marker_handles, loc="upper left", title="marked", fontsize=8, title_fontsize=8,
                                    framealpha=0.85)
        axes.add_artist(marker_legend)
    if 0 < len(classes) <= 20:
        class_handles = [
            Line2D([], [], marker="o", linestyle="", markersize=6, markerfacecolor=colours[c], markeredgewidth=0,
                   label=plain(_class_name(int(c), class_names)))
            for c in classes
        ]
        axes.legend(handles=class_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=legend,
                    fontsize=8, title_fontsize=8, frameon=False)
    elif len(classes) > 20:
        axes.text(1.01, 1.0, f"{len(classes)} values\n(colour = {legend})", transform=axes.transAxes, va="top",
                  fontsize=8)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_xlabel("2-D map of the embeddings (axes have no units)")
    suffix = f"n={len(shown)}" if len(shown) == total else f"{len(shown)} of {total} shown"
    axes.set_title(f"{plain(title)} ({suffix})")
    return figure


def script_json(data: Any) -> str:
    """``data`` as JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` become ``\\u003c``,
    ``\\u003e`` and ``\\u0026``, so no text (``</script>``, ``<!--``, ``<script``) can end or re-enter the
    script-data state of the HTML parser; ``JSON.parse`` reads them back unchanged."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _text_column(texts: Sequence[str] | pd.Series | dict | None, shown: pd.DataFrame) -> list[str] | None:
    """Texts aligned with ``shown`` (by sample_id for a mapping, else by row position), truncated."""
    if texts is None:
        return None
    if isinstance(texts, dict):
        keys = shown["sample_id"] if "sample_id" in shown else shown.index
        values = [texts.get(int(i), "") for i in keys]
    elif isinstance(texts, pd.Series):
        values = [texts.get(i, "") for i in shown.index]
    else:
        sequence = list(texts)
        values = [sequence[i] if 0 <= i < len(sequence) else "" for i in shown.index]
    out = []
    for value in values:
        text = "" if value is None else str(value)
        out.append(text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "\u2026")
    return out


def _names(shown: pd.DataFrame, class_names: Sequence[str] | None) -> dict[str, str]:
    """``str(label) -> name`` for every label, prediction and suggestion shown."""
    values: set[int] = set()
    for name in ("label", "pred", "suggested_label"):
        if name in shown:
            values.update(int(v) for v in shown[name].dropna().unique())
    return {str(v): _class_name(v, class_names) for v in sorted(values)}


def _int_or_none(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def embedding_map_html(
    frame: pd.DataFrame,
    texts: Sequence[str] | pd.Series | dict | None = None,
    *,
    title: str = "Embedding map",
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> str:
    """A self-contained interactive page of the 2-D map: hover a point to read the sample.

    The tooltip shows id, given label, prediction, suggested label, the flags and the text when
    given. Wheel zooms, drag pans, double-click resets; the checkboxes hide classes of points.

    Args:
        frame: rows of one split (module docstring for the columns).
        texts: optional texts: a mapping ``sample_id -> text`` (``frame.index -> text`` when the
            frame has no ``sample_id``), a Series indexed like ``frame``, or a sequence indexed by
            ``frame.index`` (a RangeIndex). Truncated to :data:`MAX_TEXT_CHARS` characters.
        title: page title.
        class_names: names of the labels (index = label).
        seed: random state of the subsample.

    Returns:
        the HTML document as a string (UTF-8, no external resource).
    """
    _check_frame(frame)
    total = len(frame)
    shown = subsample(frame, MAX_POINTS, seed)
    flags = _flags(shown)
    classes = np.unique(shown["label"].to_numpy()).tolist() if len(shown) else []
    colours = _palette(len(classes))
    class_index = {label: i for i, label in enumerate(classes)}

    def column(name: str) -> list[int | None]:
        if name not in shown:
            return [None] * len(shown)
        return [_int_or_none(v) for v in shown[name]]

    codes = np.zeros(len(shown), dtype=np.int64)
    for bit, (name, _, _) in enumerate(MARKERS):
        codes |= flags[name].to_numpy().astype(np.int64) << bit
    data = {
        "x": np.round(shown["x2d"].to_numpy(np.float64), 4).tolist(),
        "y": np.round(shown["y2d"].to_numpy(np.float64), 4).tolist(),
        "c": [class_index[label] for label in shown["label"]],
        "id": column("sample_id") if "sample_id" in shown else [int(i) for i in shown.index],
        "label": column("label"),
        "pred": column("pred"),
        "suggested": column("suggested_label"),
        "dup": column("near_duplicate_of"),
        "flags": codes.tolist(),
        "text": _text_column(texts, shown),
        "classes": [_class_name(int(c), class_names) for c in classes],
        "names": _names(shown, class_names),
        "colours": colours,
        "markers": [text for _, text, _ in MARKERS],
        "counts": [int(flags[name].sum()) for name, _, _ in MARKERS],
    }
    payload = script_json(data)
    suffix = f"n={len(shown)}" if len(shown) == total else f"{len(shown)} of {total} points shown"
    heading = html.escape(f"{title} ({suffix})")
    return _PAGE.replace("__TITLE__", heading).replace("__DATA__", payload)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font: 13px/1.35 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; }
header { padding: 8px 12px 4px; }
h1 { font-size: 15px; margin: 0 0 4px; }
#hint { color: #666; }
#main { display: flex; gap: 8px; padding: 0 12px 12px; }
#plot { position: relative; flex: 1 1 auto; min-width: 300px; }
canvas { border: 1px solid #ccc; cursor: crosshair; display: block; width: 100%; }
#side { flex: 0 0 190px; max-height: 80vh; overflow-y: auto; }
#side label { display: block; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; }
#tip { position: absolute; pointer-events: none; background: rgba(255,255,255,0.97); border: 1px solid #888;
       border-radius: 4px; padding: 6px 8px; max-width: 360px; display: none; box-shadow: 0 1px 4px rgba(0,0,0,.25); }
#tip b { font-weight: 600; }
.tiptext { margin-top: 4px; color: #333; white-space: normal; word-wrap: break-word; }
</style>
</head>
<body>
<header><h1>__TITLE__</h1>
<div id="hint">Hover a point for the sample. Wheel: zoom, drag: pan, double-click: reset.
Colour = given label; x = label issue, diamond = near-duplicate with another label, square = near-duplicate with the same label, ring = outlier.</div>
</header>
<div id="main">
<div id="plot"><canvas id="map" height="640"></canvas><div id="tip"></div></div>
<div id="side"><b>Marked</b><div id="markers"></div><b>Given label</b><div id="classes"></div></div>
</div>
<script id="dq-data" type="application/json">__DATA__</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("dq-data").textContent);
  var n = D.x.length, canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  var tip = document.getElementById("tip"), hidden = {}, view = null, hover = -1, drag = null;
  var MARK = [
    function (x, y) { ctx.strokeStyle = "rgba(0,0,0,0.75)"; ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(x - 3, y - 3); ctx.lineTo(x + 3, y + 3); ctx.moveTo(x - 3, y + 3); ctx.lineTo(x + 3, y - 3); ctx.stroke(); },
    function (x, y) { ctx.strokeStyle = "#c2185b"; ctx.lineWidth = 1.5; ctx.beginPath(); ctx.moveTo(x, y - 6); ctx.lineTo(x + 6, y); ctx.lineTo(x, y + 6); ctx.lineTo(x - 6, y); ctx.closePath(); ctx.stroke(); },
    function (x, y) { ctx.strokeStyle = "#1f3a93"; ctx.lineWidth = 1.2; ctx.strokeRect(x - 4.5, y - 4.5, 9, 9); },
    function (x, y) { ctx.strokeStyle = "#000"; ctx.lineWidth = 1.1; ctx.beginPath(); ctx.arc(x, y, 6.5, 0, 2 * Math.PI); ctx.stroke(); }
  ];
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; }); }
  function name(v) {
    if (v === null || v === undefined) return "-";
    var s = D.names[String(v)];
    return s === undefined || s === String(v) ? String(v) : s + " (" + v + ")";
  }
  function reset() {
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, i;
    for (i = 0; i < n; i++) { x0 = Math.min(x0, D.x[i]); x1 = Math.max(x1, D.x[i]); y0 = Math.min(y0, D.y[i]); y1 = Math.max(y1, D.y[i]); }
    if (!isFinite(x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
    var padx = (x1 - x0) * 0.04 || 1, pady = (y1 - y0) * 0.04 || 1;
    view = {x0: x0 - padx, x1: x1 + padx, y0: y0 - pady, y1: y1 + pady};
  }
  function sx(x) { return (x - view.x0) / (view.x1 - view.x0) * canvas.width; }
  function sy(y) { return canvas.height - (y - view.y0) / (view.y1 - view.y0) * canvas.height; }
  function resize() { var w = canvas.parentNode.clientWidth; canvas.width = Math.max(300, w - 2); canvas.height = Math.max(300, Math.min(window.innerHeight - 90, canvas.width * 0.75)); draw(); }
  function draw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    var r = n > 5000 ? 1.8 : 3, i, m, px, py;
    ctx.globalAlpha = 0.6;
    for (i = 0; i < n; i++) {
      if (hidden[D.c[i]]) continue;
      ctx.fillStyle = D.colours[D.c[i]];
      ctx.fillRect(sx(D.x[i]) - r, sy(D.y[i]) - r, 2 * r, 2 * r);
    }
    ctx.globalAlpha = 1;
    for (m = 0; m < MARK.length; m++) {
      for (i = 0; i < n; i++) {
        if (hidden[D.c[i]] || !(D.flags[i] & (1 << m))) continue;
        MARK[m](sx(D.x[i]), sy(D.y[i]));
      }
    }
    if (hover >= 0) {
      px = sx(D.x[hover]); py = sy(D.y[hover]);
      ctx.strokeStyle = "#ff9800"; ctx.lineWidth = 2.5; ctx.beginPath(); ctx.arc(px, py, 8, 0, 2 * Math.PI); ctx.stroke();
    }
  }
  function nearest(mx, my) {
    var best = -1, bestD = 100, i, dx, dy, d;
    for (i = 0; i < n; i++) {
      if (hidden[D.c[i]]) continue;
      dx = sx(D.x[i]) - mx; dy = sy(D.y[i]) - my; d = dx * dx + dy * dy - (D.flags[i] ? 16 : 0);  // marked points win ties
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }
  function pos(e) { var b = canvas.getBoundingClientRect(); return [(e.clientX - b.left) * canvas.width / b.width, (e.clientY - b.top) * canvas.height / b.height]; }
  function show(i, e) {
    if (i < 0) { tip.style.display = "none"; return; }
    var flags = [], m;
    for (m = 0; m < D.markers.length; m++) if (D.flags[i] & (1 << m)) flags.push(D.markers[m]);
    var h = "<b>id</b> " + esc(D.id[i]) + "<br><b>label</b> " + esc(name(D.label[i])) +
      "<br><b>prediction</b> " + esc(name(D.pred[i])) + "<br><b>suggested label</b> " + esc(name(D.suggested[i]));
    if (D.dup[i] !== null && D.dup[i] >= 0) h += "<br><b>near-duplicate of</b> " + esc(D.dup[i]);
    if (flags.length) h += "<br><b>flags</b> " + esc(flags.join(", "));
    if (D.text) h += '<div class="tiptext">' + esc(D.text[i]) + "</div>";
    tip.innerHTML = h; tip.style.display = "block";
    var b = canvas.getBoundingClientRect(), x = e.clientX - b.left + 14, y = e.clientY - b.top + 14;
    if (x + 370 > b.width) x = Math.max(0, x - 390);
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }
  canvas.addEventListener("mousemove", function (e) {
    var p = pos(e);
    if (drag) {
      var dx = (p[0] - drag[0]) / canvas.width * (view.x1 - view.x0), dy = (p[1] - drag[1]) / canvas.height * (view.y1 - view.y0);
      view.x0 -= dx; view.x1 -= dx; view.y0 += dy; view.y1 += dy; drag = p; draw(); return;
    }
    var i = nearest(p[0], p[1]);
    if (i !== hover) { hover = i; draw(); }
    show(i, e);
  });
  canvas.addEventListener("mouseleave", function () { hover = -1; tip.style.display = "none"; draw(); });
  canvas.addEventListener("mousedown", function (e) { drag = pos(e); tip.style.display = "none"; });
  window.addEventListener("mouseup", function () { drag = null; });
  canvas.addEventListener("dblclick", function () { reset(); draw(); });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var p = pos(e), f = e.deltaY > 0 ? 1.2 : 1 / 1.2;
    var cx = view.x0 + p[0] / canvas.width * (view.x1 - view.x0), cy = view.y0 + (1 - p[1] / canvas.height) * (view.y1 - view.y0);
    view = {x0: cx - (cx - view.x0) * f, x1: cx + (view.x1 - cx) * f, y0: cy - (cy - view.y0) * f, y1: cy + (view.y1 - cy) * f};
    draw();
  }, {passive: false});
  var markers = document.getElementById("markers"), classes = document.getElementById("classes"), i;
  var symbols = ["\\u00d7", "\\u25c7", "\\u25a1", "\\u25cb"];
  for (i = 0; i < D.markers.length; i++) {
    var row = document.createElement("div");
    row.textContent = symbols[i] + " " + D.markers[i] + " (" + D.counts[i] + ")";
    markers.appendChild(row);
  }
  D.classes.forEach(function (label, c) {
    var box = document.createElement("label"), input = document.createElement("input"), sw = document.createElement("span");
    input.type = "checkbox"; input.checked = true;
    input.addEventListener("change", function () { hidden[c] = !input.checked; hover = -1; draw(); });
    sw.className = "swatch"; sw.style.background = D.colours[c];
    box.appendChild(input); box.appendChild(sw); box.appendChild(document.createTextNode(label));
    classes.appendChild(box);
  });
  reset(); resize();
  window.addEventListener("resize", resize);
})();
</script>
</body>
</html>
"""
