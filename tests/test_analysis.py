"""The early-window flags that replace the all-epoch flags when a model memorised its labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dq_plugins._analysis import early_flags


def planted(n=300, classes=3, flips=30, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % classes
    labels = truth.copy()
    flipped = rng.choice(n, flips, replace=False)
    labels[flipped] = (truth[flipped] + 1) % classes
    early = np.full((n, classes), 0.04)
    early[np.arange(n), truth] = 0.92
    score = np.where(np.isin(np.arange(n), flipped), 0.9, 0.1) + rng.uniform(0, 0.05, n)
    frame = pd.DataFrame({"sample_id": np.arange(n), "label": labels, "mislabel_score": score,
                          "is_label_issue": False, "suggested_label": labels})
    return frame, early, set(flipped.tolist()), truth


def test_a_memorised_model_gets_the_early_window_flags():
    frame, early, flipped, truth = planted()
    early_flags(frame, early, final_accuracy=1.0)  # every label fitted: memorised
    flagged = set(frame.loc[frame["is_label_issue"], "sample_id"])
    assert len(flagged & flipped) >= 27 and len(flagged - flipped) <= 3
    rows = frame[frame["is_label_issue"]]
    assert (rows["suggested_label"].to_numpy() == truth[rows["sample_id"]]).mean() > 0.9
    assert 0.05 < frame.attrs["noise_rate"] < 0.15


def test_without_memorisation_the_flags_are_left_alone():
    frame, early, _, _ = planted()
    early_flags(frame, early, final_accuracy=0.9)  # 10% of labels not fitted: the flips are not memorised
    assert not frame["is_label_issue"].any()


def test_an_underfit_early_window_is_not_trusted():
    frame, early, _, _ = planted()
    early = np.full_like(early, 1 / 3)
    early_flags(frame, early, final_accuracy=1.0)
    assert not frame["is_label_issue"].any()
