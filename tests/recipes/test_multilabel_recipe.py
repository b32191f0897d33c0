"""The multi-label recipe's data: digit attributes and the injected errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recipes.common.config import load_config
from recipes.common.multilabel import digit_attributes, inject_multilabel_noise


def test_digit_attributes_by_hand():
    np.testing.assert_array_equal(digit_attributes(np.array([0, 7, 8])),
                                  [[1, 0, 0, 1, 1], [0, 1, 1, 0, 0], [1, 1, 0, 1, 1]])


def test_noise_changes_one_label_per_chosen_sample_in_three_kinds():
    clean = digit_attributes(np.arange(600) % 10)
    noisy, changed = inject_multilabel_noise(clean, 0.15, seed=3)
    per_sample = changed.sum(axis=1)
    assert (per_sample > 0).sum() == 90
    swaps = per_sample == 2  # a swap changes one on and one off label
    assert set(np.unique(per_sample)) <= {0, 1, 2} and 20 <= swaps.sum() <= 31
    added = (noisy - clean == 1) & changed
    dropped = (noisy - clean == -1) & changed
    assert added[~swaps].sum() > 20 and dropped[~swaps].sum() > 20
    np.testing.assert_array_equal(inject_multilabel_noise(clean, 0.15, seed=3)[0], noisy)  # deterministic


def test_the_config_loads():
    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes/configs/multilabel_digits.yaml")
    assert cfg.dataset == "digits" and cfg.noise_rate == 0.15


def test_question_attributes_answer_type_plus_mentions():
    from recipes.common.multilabel import question_attributes

    texts = ["Where is Paris ?", "How many people live in 12 cities ?", "Who wrote Hamlet ?"]
    out = question_attributes(texts, np.array([4, 5, 3]), num_coarse=6)
    assert out.shape == (3, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(axis=1), [4, 5, 3])  # the annotated answer type
    np.testing.assert_array_equal(out[:, 6], [1, 0, 0])  # mentions a place
    np.testing.assert_array_equal(out[:, 7], [0, 1, 0])  # mentions a number


def test_the_text_config_loads():
    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes/configs/multilabel_trec6.yaml")
    assert cfg.dataset == "trec6" and cfg.recipe == "transformers"
