"""Area Under the Margin (AUM) of each sample.

Reference: Pleiss et al., "Identifying Mislabeled Data using the Area Under the Margin Ranking",
NeurIPS 2020 (https://arxiv.org/abs/2001.10528), Eq. 1-2.
"""

from __future__ import annotations

import numpy as np

from dq_plugins.scores._common import as_dynamics, nanmean_epochs


def area_under_margin(margin: np.ndarray) -> np.ndarray:
    """Average the per-epoch margin of every sample over the recorded epochs.

    Pleiss et al. 2020 define the margin at epoch ``e`` as the logit of the given label minus the
    largest logit among the other classes, ``M_e(x, y) = z_y - max_{k != y} z_k``, and the AUM as
    its mean over epochs. A low (negative) AUM flags a likely mislabeled sample.

    Args:
        margin: ``(E, N)`` float array of per-epoch margins (logits, not probabilities).
            NaN = sample not recorded at that epoch.

    Returns:
        ``(N,)`` float64 AUM; NaN epochs are ignored, a sample with every epoch NaN gets NaN.

    Raises:
        ValueError: if ``margin`` is not 2-D.
    """
    return nanmean_epochs(as_dynamics("margin", margin))
