"""Label Wave: where a model stops learning the labels and starts memorising them, without labels of the truth.

Yuan, Feng and Liu, "Early Stopping Against Label Noise Without Validation Data" (ICLR 2024,
arXiv:2502.07551): the number of training samples whose prediction changes from one epoch to the next
(*prediction changes*, PC) falls while a model learns the clean patterns, then rises again when it starts
to fit the mislabeled samples; the first local minimum of PC, smoothed by a moving average, marks the
epoch before that. The probabilities recorded up to that epoch still vote for the true class of most
mislabeled samples, which is what confident learning needs to *count* them: an earlier window still
learning over-counts, the all-epoch mean of a memorising model under-counts.

Here ``changes[i]`` is PC between the ``i``-th and the ``(i + 1)``-th closed epoch, the moving average is
centred over 3 values (2 at either end), and the answer is an index into the closed epochs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def smoothed_changes(changes: Sequence[int]) -> np.ndarray:
    """(len(changes),) float64 centred 3-value moving average of ``changes`` (2 values at either end)."""
    values = np.asarray(changes, dtype=np.float64)
    return np.array([values[max(0, i - 1): i + 2].mean() for i in range(len(values))])


def wave_epoch(changes: Sequence[int], settled: bool = False) -> int | None:
    """Index of the closed epoch that ends the early window: the first local minimum of the smoothed
    prediction changes (the first ``i`` with ``s[i + 1] > s[i]``), or ``None`` when they never rise again.

    Args:
        changes: prediction changes between consecutive closed epochs (``E - 1`` values for ``E`` epochs).
        settled: only a minimum that more epochs cannot move (neither of the two compared values is an
            end value, whose average still lacks a neighbour): what a run still training can rely on.
    """
    smooth = smoothed_changes(changes)
    last = len(smooth) - (2 if settled else 1)
    for i in range(max(last, 0)):
        if smooth[i + 1] > smooth[i]:
            return i
    return None
