"""Constructor options that both adapters share: checked alike, at construction."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from dq_plugins.lightning import DataQualityCallback as LightningCallback

pytest.importorskip("transformers")
from dq_plugins.transformers import DataQualityCallback as HFCallback  # noqa: E402

ADAPTERS = [LightningCallback, HFCallback]

UMAP_HINT = r'projection="umap" needs umap-learn.*HINT: `pip install "dq_plugins\[umap\]"`'


@pytest.mark.parametrize("callback", ADAPTERS)
def test_umap_projection_without_the_extra_fails_at_construction(callback, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn not installed
    with pytest.raises(ModuleNotFoundError, match=UMAP_HINT):
        callback(projection="umap")
    callback(projection="graph")  # the default projection needs no extra


@pytest.mark.skipif(importlib.util.find_spec("umap") is None, reason="umap-learn not installed")
@pytest.mark.parametrize("callback", ADAPTERS)
def test_umap_projection_with_umap_installed_constructs(callback):
    callback(projection="umap")


HF_RENAMED = [  # old name, value, new name, where the value lands
    ("id_column", "sid", "id_key", lambda cb: cb.session.config.id_key),
    ("label_column", "target", "label_key", lambda cb: cb.session.config.label_key),
    ("head_module", "bert.pooler", "logits_module", lambda cb: cb.logits_module),
    ("metadata_columns", ["source"], "metadata_keys", lambda cb: list(cb.session.config.metadata_columns)),
    ("el2n_epochs", 3, "early_epochs", lambda cb: cb.session.config.early_epochs),
]


@pytest.mark.parametrize(("old", "value", "new", "read"), HF_RENAMED, ids=[r[0] for r in HF_RENAMED])
def test_hf_former_option_names_work_and_warn_naming_the_new_one(old, value, new, read):
    with pytest.warns(FutureWarning, match=rf"DataQualityCallback\(\): `{old}=` is deprecated .*use `{new}=`") as record:
        old_way = HFCallback(**{old: value})
    assert record[0].filename == __file__  # the warning points at the caller
    assert read(old_way) == value == read(HFCallback(**{new: value}))


def test_lightning_former_el2n_epochs_works_and_warns():
    with pytest.warns(FutureWarning, match=r"`el2n_epochs=` is deprecated .*use `early_epochs=`"):
        callback = LightningCallback(el2n_epochs=3)
    assert callback.session.config.early_epochs == 3 == LightningCallback(early_epochs=3).session.config.early_epochs


@pytest.mark.parametrize("callback", ADAPTERS)
def test_an_option_under_both_names_or_an_unknown_keyword_is_refused(callback):
    with pytest.raises(TypeError, match=r"got both `el2n_epochs=` and its new name `early_epochs=`.*HINT: pass only"):
        callback(el2n_epochs=2, early_epochs=3)
    with pytest.raises(TypeError, match=r"DataQualityCallback\(\) got an unexpected keyword argument 'id_colum'"):
        callback(id_colum="sid")


def test_lightning_has_no_hf_only_former_names():
    with pytest.raises(TypeError, match="unexpected keyword argument 'head_module'"):
        LightningCallback(head_module="head")
