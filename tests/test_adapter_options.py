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
