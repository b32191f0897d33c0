"""Pure per-sample data-quality scores (numpy in, numpy out), one family per module.

Per-epoch inputs are ``(E, N)`` arrays where NaN means "not recorded at that epoch".
"""

from dq_plugins.scores.aum import area_under_margin
from dq_plugins.scores.cartography import CartographyScores, cartography
from dq_plugins.scores.confident_learning import ConfidentLearningScores, confident_learning
from dq_plugins.scores.el2n import default_early_epochs, el2n
from dq_plugins.scores.forgetting import forgetting_events, never_learned

__all__ = [
    "CartographyScores",
    "ConfidentLearningScores",
    "area_under_margin",
    "cartography",
    "confident_learning",
    "default_early_epochs",
    "el2n",
    "forgetting_events",
    "never_learned",
]
