"""Shared fixtures: an isolated MLflow store per test and a tiny Lightning classification setup."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.data import Dataset


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory):
    """An initialised, empty MLflow sqlite store: creating one (the schema migrations) takes about a second,
    copying it a few milliseconds."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow_template")
    path = folder / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the Default experiment's artifact root (./mlruns) resolves here, not in the repository
        mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch, empty_mlflow_store):
    """A fresh sqlite MLflow store in tmp_path (a copy of the empty one), also MLflow's current tracking URI.

    Runs are isolated per test; the Default experiment keeps the template's artifact root, where each
    run writes under its own id (experiments created by a test put theirs under its tmp_path).
    """
    import mlflow

    shutil.copy(empty_mlflow_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


class BlobsDataset(Dataset):
    """N points in ``num_classes`` Gaussian blobs; items are dicts with idx, inputs, labels.

    Labels are a deterministic function of the id (``id % num_classes``) so tests can check
    that recorded labels stay aligned with ids under shuffling.
    """

    def __init__(self, n: int = 96, num_classes: int = 3, dim: int = 8, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % num_classes
        centers = torch.randn(num_classes, dim, generator=generator) * 3
        self.inputs = centers[self.labels] + torch.randn(n, dim, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"idx": index, "inputs": self.inputs[index], "labels": self.labels[index]}


@pytest.fixture
def blobs():
    return BlobsDataset


@pytest.fixture(autouse=True)
def pca_maps(monkeypatch):
    """Tests draw the 2D map with PCA, the cheapest: the graph layout (the default) takes 0.5 to
    5 s (1k to 20k rows on shared cores) and is tested in tests/scores/test_projection.py, where
    umap-learn's tests (minutes of numba compilation) opt in with DQ_SLOW_TESTS=1."""
    monkeypatch.setenv("DQ_PLUGINS_PROJECTION", "pca")


@pytest.fixture(autouse=True)
def history_in_tmp(tmp_path, monkeypatch):
    """The per-epoch history files (kept after a fit, a checkpoint may point to them) go under the test's
    tmp_path rather than the shared temp folder."""
    monkeypatch.setenv("DQ_PLUGINS_HISTORY_DIR", str(tmp_path / "dq_history"))


SYNCING_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::equal", "aten::masked_select",
    "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::repeat_interleave",
})
"""Operators whose result the host must wait for on CUDA (a value, or a shape that depends on values)."""

SYNCING_METHODS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu"})
"""Tensor methods that bring a device value to the host."""


def forbid_host_sync():
    """Context manager: raise ``AssertionError`` on any operation that would make the host wait for a
    CUDA device (``.item()``, ``.tolist()``, ``.cpu()``, ``bool(t)``, ``nonzero``, boolean-mask
    indexing, ...), so a CPU test checks what ``torch.cuda.set_sync_debug_mode("error")`` checks on a GPU.
    ``.numpy()`` is allowed: it only works on host tensors (a host fold on a CPU device)."""
    import contextlib

    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Methods(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in SYNCING_METHODS:
                raise AssertionError(f"host sync: Tensor.{func.__name__}")
            return func(*args, **(kwargs or {}))

    class Operators(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name
            masks = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or [])
            if name in SYNCING_OPS or masks:
                raise AssertionError(f"host sync: {name}")
            return func(*args, **(kwargs or {}))

    stack = contextlib.ExitStack()
    stack.enter_context(Methods())
    stack.enter_context(Operators())
    return stack
