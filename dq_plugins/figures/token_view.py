"""The HTML view of a token classification run: the most suspicious sequences, flagged tokens highlighted.

Every piece of text (tokens, tag names) is HTML-escaped; the given and suggested tags of a flagged
token are shown on hover (the ``title`` attribute).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import pandas as pd

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}li{margin:.6em 0;line-height:1.9}"
    "mark{background:#ffb3b3;padding:0 .15em;border-radius:3px}"
    ".lab{color:#555;font-size:.8em}.meta{color:#777;font-size:.85em}"
)


def _tag(names: Sequence[str] | None, tag: int) -> str:
    return str(names[tag]) if names is not None and 0 <= tag < len(names) else str(tag)


def token_issue_html(
    issues: pd.DataFrame, tokens: pd.DataFrame,
    token_strings: Callable[[str, int], Sequence[str] | None] | None = None,
    class_names: Sequence[str] | None = None,
) -> str:
    """One page listing the sequences of ``issues`` (in its order) with their labelled tokens.

    Args:
        issues: rows with ``split``, ``sample_id``, ``mislabel_score`` (the issue table).
        tokens: the per-token table (``dq/tokens.parquet`` columns).
        token_strings: ``(split, sample_id) -> tokens`` by input position; ``None`` or a ``None`` result
            shows each labelled position as ``#i``.
        class_names: tag names by id.
    """
    by_key = {key: part for key, part in tokens.groupby(["split", "sample_id"], sort=False)}
    items = []
    for row in issues.itertuples(index=False):
        part = by_key.get((row.split, row.sample_id))
        if part is None:
            continue
        strings = token_strings(row.split, int(row.sample_id)) if token_strings is not None else None
        labelled = {int(t.token_index): t for t in part.itertuples(index=False)}
        width = len(strings) if strings is not None else (max(labelled) + 1 if labelled else 0)
        pieces = []
        for position in range(width):
            token = labelled.get(position)
            if strings is not None:
                text = str(strings[position])
            elif token is not None:
                text = f"#{position}"
            else:
                continue
            text = html.escape(text)
            if token is not None and token.is_label_issue:
                hint = html.escape(f"position {position}: given {_tag(class_names, int(token.label))}, "
                                   f"suggested {_tag(class_names, int(token.suggested_label))}", quote=True)
                pieces.append(f'<mark title="{hint}">{text}<span class="lab">/'
                              f"{html.escape(_tag(class_names, int(token.label)))}&rarr;"
                              f"{html.escape(_tag(class_names, int(token.suggested_label)))}</span></mark>")
            elif token is not None:
                pieces.append(f'{text}<span class="lab">/{html.escape(_tag(class_names, int(token.label)))}</span>')
            else:
                pieces.append(text)
        meta = html.escape(f"{row.split} #{row.sample_id}, mislabel_score {float(row.mislabel_score):.3f}")
        items.append(f'<li><span class="meta">{meta}</span><br>{" ".join(pieces)}</li>')
    body = "\n".join(items) or "<li>No sequence recorded.</li>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Token label issues</title>"
            f"<style>{_STYLE}</style></head><body><h1>Most suspicious sequences</h1>"
            f"<p>Flagged tokens are highlighted; hover for the given and suggested tags.</p><ol>\n{body}\n</ol>"
            "</body></html>")
