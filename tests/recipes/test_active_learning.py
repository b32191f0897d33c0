"""The active-learning recipe's own pieces: its config, the planted partitions, the choice of slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recipes import active_learning as recipe
from recipes.common import load_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_the_config_loads_and_its_rules_parse():
    from dq_plugins.rules import SelectSimilar, parse_rules

    cfg = load_config(RECIPES / "configs" / "al_digits.yaml", recipe="lightning")
    assert set(cfg.extra) <= set(recipe.DEFAULTS)
    rules = parse_rules({"rules": cfg.extra["rules"]})
    assert [rule.name for rule in rules] == ["weak_source", "many_label_issues"]
    assert not any(isinstance(a, SelectSimilar) for rule in rules for a in rule.then)  # the recipe selects itself


def test_partitions_plant_rare_distorted_scans_in_the_labelled_day():
    rng = np.random.default_rng(0)
    features = rng.random((4000, 64)).astype(np.float32)
    labels = np.arange(4000) % 10
    options = {**recipe.DEFAULTS, "scan_rate": 0.1, "pool_scan_rate": 0.4}
    parts = recipe.make_partitions(features, labels, options, seed=0)
    assert (parts.day == 0).mean() == pytest.approx(0.5) and set(np.unique(parts.day)) == {0, 1, 2}
    scans = parts.source == "scan"
    assert scans[parts.day == 0].mean() == pytest.approx(0.1, abs=0.02)
    assert scans[parts.day > 0].mean() == pytest.approx(0.4, abs=0.03)
    np.testing.assert_array_equal(parts.features[~scans], features[~scans])  # only scans are distorted
    grid = parts.features[scans].reshape(-1, 8, 8)
    assert grid.min() >= 0 and grid.max() <= 1 and not np.allclose(parts.features[scans], features[scans])


def test_scan_shifts_and_fades_without_noise():
    image = np.zeros((1, 64), dtype=np.float32)
    image[0, 0] = 1.0  # pixel (0, 0)
    out = recipe.scan(image, np.random.default_rng(0), noise=0.0).reshape(8, 8)
    assert out[1, 1] == pytest.approx(0.8) and out[0, 0] == pytest.approx(0.2)


def test_the_weakest_slice_is_taken_from_validation_first():
    weak = pd.DataFrame({"split": ["train", "validation", "validation"], "slice": ["a", "b", "c"]})
    assert recipe.weakest_slice(weak)["slice"] == "b"
    assert recipe.weakest_slice(weak[weak["split"] == "train"])["slice"] == "a"
    assert recipe.weakest_slice(weak.iloc[0:0]) is None


def test_unknown_extra_options_are_refused_before_training(tmp_path, capsys):
    config = tmp_path / "al.yaml"
    config.write_text("recipe: lightning\ndataset: digits\nextra: {k: 5, bogus: 1}\n")
    with pytest.raises(SystemExit):
        recipe.main(["--config", str(config)])
    assert "unknown `extra` option(s) ['bogus']" in capsys.readouterr().err
