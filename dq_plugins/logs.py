"""How the library speaks: the ``dq_plugins`` logger, warnings (rank zero only, once), progress bars.

- :data:`logger` is ``logging.getLogger("dq_plugins")``. It writes one INFO line at the end of a fit
  (:func:`fit_summary_line`: what was found and how to open the run). Python shows INFO only when the
  application configured logging (``logging.basicConfig(level=logging.INFO)``); Lightning and
  transformers users usually have.
- :func:`warn` is the one way the library warns: ``warnings.warn`` on the process of rank zero only (under
  ``torch.distributed``, or ``RANK`` set by ``torchrun`` before the process group exists), and at most once
  per key in a caller's ``once`` set (one fit).
- :func:`progress` is a ``tqdm`` bar on stderr for rank zero, off when stderr is not a terminal (CI logs,
  pytest), so a log file never fills with carriage returns.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

LOGGER_NAME = "dq_plugins"
logger = logging.getLogger(LOGGER_NAME)


def is_rank_zero() -> bool:
    """Whether this process is rank zero of its job (``True`` without ``torch.distributed``)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return os.environ.get("RANK", "0") == "0"


def warn(message: str, category: type[Warning] = UserWarning, *, stacklevel: int = 1,
         once: set[str] | None = None, key: str | None = None) -> bool:
    """``warnings.warn(message, category)`` on rank zero only; returns whether it warned.

    Args:
        stacklevel: as for ``warnings.warn``, counted from the caller of this function.
        once: a set owned by the caller (for example one per fit): a ``key`` already in it is not warned
            again, and a warned key is added. ``None``: no deduplication here.
        key: what counts as "the same warning" for ``once``; ``None`` means the message itself.
    """
    if not is_rank_zero():
        return False
    if once is not None:
        key = message if key is None else key
        if key in once:
            return False
        once.add(key)
    warnings.warn(message, category, stacklevel=stacklevel + 1)
    return True


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "") -> Any:
    """A ``tqdm`` progress bar on stderr (``desc`` prefixed with ``dq_plugins``), shown only on rank zero
    and only when stderr is a terminal; usable as an iterator wrapper or with ``update()`` and as a
    context manager."""
    from tqdm import tqdm

    shown = is_rank_zero() and _is_terminal(sys.stderr)
    return tqdm(iterable, total=total, desc=f"dq_plugins: {desc}" if desc else "dq_plugins", file=sys.stderr,
                leave=False, disable=not shown, dynamic_ncols=True)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def fit_summary_line(metrics: dict[str, float], samples: Any, where: str) -> str:
    """The end-of-fit line: label issues and other issues (per split), the estimated noise rate, and ``where``
    (the run and how to open it, or the local folder that kept the results).

    Args:
        metrics: the analysis metrics (``dq.num_label_issues[.<split>]``, ``dq.estimated_noise_rate``).
        samples: the per-sample table (``split``, ``is_label_issue`` and, with embeddings, ``is_outlier`` and
            ``conflicting_duplicate``), or ``None`` when the analysis failed.
    """
    if samples is None or len(samples) == 0:
        return f"dq_plugins: the analysis produced no results; {where}"
    parts = []
    for split, part in samples.groupby("split", sort=False):
        others = {name: int(part[column].sum()) for name, column in
                  (("outliers", "is_outlier"), ("conflicting duplicates", "conflicting_duplicate"))
                  if column in part.columns}
        other = ", ".join(f"{count} {name}" for name, count in others.items()) or "no other issue checks"
        parts.append(f"{split}: {int(part['is_label_issue'].sum())} label issues of {len(part)}, {other}")
    noise = metrics.get("dq.estimated_noise_rate")
    noise_text = (f"estimated noise rate (train) {noise:.3f}" if noise is not None and noise == noise
                  else "no trusted noise-rate estimate")
    return f"dq_plugins: {'; '.join(parts)}; {noise_text}. {where}"
