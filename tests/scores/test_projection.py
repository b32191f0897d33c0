"""Tests of dq_plugins.scores.projection: shape, determinism, subsample placement, UMAP opt-in."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from dq_plugins.scores import projection
from dq_plugins.scores.neighbors import knn_cosine
from dq_plugins.scores.projection import project_2d, propagate_positions, resolve_projection

pytestmark = pytest.mark.filterwarnings("error")

SLOW = pytest.mark.skipif(
    os.environ.get("DQ_SLOW_TESTS") != "1",
    reason="umap-learn compiles for 20-60 s per process; set DQ_SLOW_TESTS=1 to run",
)


def _blobs(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 20)) * 4
    truth = rng.integers(0, 4, n)
    return (centres[truth] + rng.normal(size=(n, 20))).astype(np.float32), truth


def _separated(coords: np.ndarray, truth: np.ndarray) -> bool:
    """Every point is nearer its own blob's 2-D centre than any other blob's."""
    centres = np.stack([coords[truth == c].mean(axis=0) for c in range(4)])
    nearest = np.argmin(((coords[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    return bool((nearest == truth).mean() > 0.98)


def test_pca_shape_dtype_and_determinism() -> None:
    x, truth = _blobs()
    coords = project_2d(x, method="pca")
    assert coords.shape == (400, 2) and coords.dtype == np.float32
    np.testing.assert_array_equal(project_2d(x, method="pca"), coords)
    assert _separated(coords, truth)


def test_pca_fit_on_a_subsample_maps_every_row() -> None:
    x, truth = _blobs()
    coords = project_2d(x, method="pca", max_fit=50, seed=1)
    assert coords.shape == (400, 2) and np.isfinite(coords).all()
    np.testing.assert_array_equal(project_2d(x, method="pca", max_fit=50, seed=1), coords)
    assert _separated(coords, truth)


def test_tiny_inputs() -> None:
    assert project_2d(np.zeros((0, 5)), method="pca").shape == (0, 2)
    np.testing.assert_array_equal(project_2d(np.ones((1, 5)), method="pca"), [[0.0, 0.0]])
    coords = project_2d(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), method="auto")  # < 32 rows: PCA
    assert coords.shape == (3, 2)


def test_propagation_hand_computed() -> None:
    # rows 0 and 1 are fitted at (0, 0) and (4, 0); row 2 sees both (weights 0.5, 0.5 + 1e-6 each);
    # row 3 sees only row 2 -> placed in round 2 at row 2's position; row 4 has no path -> linear map
    unit = np.eye(5)
    fitted = np.array([[0.0, 0.0], [4.0, 0.0]])
    neighbors = np.array([[1, -1], [0, -1], [0, 1], [2, -1], [-1, -1]])
    sims = np.array([[0.5, np.nan], [0.5, np.nan], [0.5, 0.5], [0.9, np.nan], [np.nan, np.nan]])
    out = propagate_positions(unit, np.array([0, 1]), fitted, neighbors, sims)
    np.testing.assert_allclose(out[:4], [[0, 0], [4, 0], [2, 0], [2, 0]], atol=1e-5)
    assert np.isfinite(out[4]).all()


def test_auto_falls_back_to_pca_without_umap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection, "umap_available", lambda: False)
    assert resolve_projection("auto") == "pca"
    with pytest.raises(ValueError, match=r"`method` to be one of \['auto', 'umap', 'pca'\] but got 'tsne'"):
        resolve_projection("tsne")
    with pytest.raises(ValueError, match=r"`max_fit` to be an integer >= 2 but got 1"):
        project_2d(np.ones((3, 2)), max_fit=1, method="pca")


@SLOW
def test_umap_subsample_and_propagation() -> None:
    assert "umap" in sys.modules or projection.umap_available()
    x, truth = _blobs(1200)
    indices, sims = knn_cosine(x, 10)
    coords = project_2d(x, method="umap", max_fit=300, neighbor_indices=indices, similarities=sims)
    assert coords.shape == (1200, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    assert _separated(coords, truth)
    again = project_2d(x, method="umap", max_fit=300, neighbor_indices=indices, similarities=sims)
    np.testing.assert_array_equal(again, coords)
    whole = project_2d(x[:200], method="umap", neighbor_indices=None)
    assert whole.shape == (200, 2) and _separated(whole, truth[:200])
