"""Tests of dq_plugins.scores.projection: the torch graph layout (fuzzy graph by hand and against
umap-learn, one SGD step by hand, cluster separation against PCA, determinism, edge cases), PCA,
subsample placement, umap-learn opt-in."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from dq_plugins.scores import projection
from dq_plugins.scores.neighbors import knn_cosine
from dq_plugins.scores.projection import (
    CURVE_A,
    CURVE_B,
    fuzzy_graph,
    graph_layout,
    project_2d,
    propagate_positions,
    resolve_projection,
)

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


def test_auto_is_the_graph_layout_with_or_without_umap(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_projection("umap") == "umap" and resolve_projection("pca") == "pca"
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn not installed
    assert resolve_projection("auto") == "graph" and resolve_projection("graph") == "graph"
    with pytest.raises(ValueError, match=r"`method` to be one of \['auto', 'graph', 'umap', 'pca'\] but got 'tsne'"):
        resolve_projection("tsne")
    with pytest.raises(ValueError, match=r"`max_fit` to be an integer >= 2 but got 1"):
        project_2d(np.ones((3, 2)), max_fit=1, method="pca")


def test_umap_without_the_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn not installed
    hint = r'projection="umap" needs umap-learn.*HINT: `pip install "dq_plugins\[umap\]"`'
    with pytest.raises(ModuleNotFoundError, match=hint):
        resolve_projection("umap")
    with pytest.raises(ModuleNotFoundError, match=hint):
        project_2d(np.ones((3, 2)), method="umap")
    with pytest.raises(ModuleNotFoundError, match=hint):
        projection._umap_fit(np.ones((3, 2)), np.zeros((3, 1), dtype=np.int64), np.ones((3, 1)), 0)
    assert project_2d(np.eye(3), method="graph").shape == (3, 2)  # the default needs no umap


def _many_blobs(n: int = 800, blobs: int = 20, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``blobs`` Gaussian blobs in ``dim``-d whose centres differ along many directions, so the two
    principal components cannot separate them all."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(blobs, dim))
    truth = rng.integers(0, blobs, n)
    return (centres[truth] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32), truth


def _neighbour_agreement(coords: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean share of each point's ``k`` nearest points in 2-D that carry its blob label."""
    squared = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(squared, np.inf)
    nearest = np.argsort(squared, axis=1)[:, :k]
    return float((truth[nearest] == truth[:, None]).mean())


def test_fuzzy_graph_hand_computed() -> None:
    # k = 2 -> target log2(3). Row 0: distances (1, 2): rho = 1, excess (0, 1), so
    # 1 + exp(-1 / sigma) = log2(3) and w_02 = log2(3) - 1; row 1 likewise w_12 = log2(3) - 1.
    # Row 2 has one neighbour (excess 0, weight 1) and a missing one. Fuzzy union:
    # {0,1}: 1 + 1 - 1 = 1; {0,2}: w_02 + 1 - w_02 = 1; {1,2}: only w_12.
    indices = np.array([[1, 2], [0, 2], [0, -1]])
    distances = np.array([[1.0, 2.0], [1.0, 3.0], [2.0, np.nan]])
    head, tail, weight = fuzzy_graph(indices, distances)
    assert head.dtype == tail.dtype == torch.int64 and weight.dtype == torch.float32
    w = np.log2(3) - 1
    assert list(zip(head.tolist(), tail.tolist())) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    np.testing.assert_allclose(weight.numpy(), [1, 1, 1, w, 1, w], rtol=1e-5)


def test_one_attraction_step_hand_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without negatives (rate 0), one epoch (step size 1) moves each end of edge {0, 1} at distance 1
    # by 2 * 2ab / (1 + a) towards the other: 2 for the edge's two directions, as in umap-learn.
    monkeypatch.setattr(projection, "NEGATIVE_SAMPLE_RATE", 0)
    head, tail, weight = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([1.0, 1.0])
    out = graph_layout(head, tail, weight, torch.tensor([[0.0, 0.0], [1.0, 0.0]]), epochs=1)
    move = 2 * 2 * CURVE_A * CURVE_B / (1 + CURVE_A)
    np.testing.assert_allclose(out.numpy(), [[move, 0.0], [1.0 - move, 0.0]], rtol=1e-5)


def test_fixed_point_row_sums_do_not_depend_on_the_order() -> None:
    # the sums used on GPUs, where index_add_ adds in the order atomics land
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, 7, (1000,), generator=generator)
    values = 4 * torch.randn(1000, generator=generator)
    order = torch.randperm(1000, generator=generator)
    once = projection._fixed_point_row_sums(torch.zeros(7), (index[:600], values[:600]), (index[600:], values[600:]))
    shuffled = projection._fixed_point_row_sums(torch.zeros(7), (index[order], values[order]))
    assert torch.equal(once, shuffled)
    expected = torch.zeros(7, dtype=torch.float64).index_add_(0, index, values.double())
    np.testing.assert_allclose(once.numpy(), expected.numpy(), atol=1e-4)


def test_graph_layout_separates_blobs_that_pca_mixes() -> None:
    x, truth = _many_blobs()
    indices, sims = knn_cosine(x, 14)
    graph = project_2d(x, method="graph", neighbor_indices=indices, similarities=sims)
    pca = project_2d(x, method="pca")
    assert graph.shape == (800, 2) and graph.dtype == np.float32 and np.isfinite(graph).all()
    assert _neighbour_agreement(pca, truth) < 0.75  # the case is hard for a linear map
    assert _neighbour_agreement(graph, truth) > 0.95
    again = project_2d(x, method="graph", neighbor_indices=indices, similarities=sims)
    np.testing.assert_array_equal(again, graph)
    other = project_2d(x, method="graph", neighbor_indices=indices, similarities=sims, seed=1)
    assert not np.array_equal(other, graph) and _neighbour_agreement(other, truth) > 0.95
    assert project_2d(x, method="auto", neighbor_indices=indices, similarities=sims).tobytes() == graph.tobytes()


def test_graph_subsample_and_propagation() -> None:
    x, truth = _blobs(1200)
    indices, sims = knn_cosine(x, 10)
    coords = project_2d(x, method="graph", max_fit=300, neighbor_indices=indices, similarities=sims)
    assert coords.shape == (1200, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    assert _separated(coords, truth)
    np.testing.assert_array_equal(
        project_2d(x, method="graph", max_fit=300, neighbor_indices=indices, similarities=sims), coords
    )
    whole = project_2d(x[:200], method="graph")  # no graph given: the rows' own exact 14-NN graph
    assert whole.shape == (200, 2) and _separated(whole, truth[:200])
    assert np.isfinite(project_2d(x[:200], method="graph", seed=None)).all()


def test_graph_layout_edge_cases() -> None:
    # the smallest N that is laid out, identical rows, 1-D embeddings, missing neighbours
    x, _ = _blobs(projection.LAYOUT_MIN_SAMPLES)
    assert project_2d(x, method="graph").shape == (projection.LAYOUT_MIN_SAMPLES, 2)
    assert np.isfinite(project_2d(np.ones((40, 5)), method="graph")).all()
    assert np.isfinite(project_2d(np.linspace(-1, 1, 40)[:, None], method="graph")).all()
    indices, sims = knn_cosine(x, 5)
    indices[:, 3:], sims[:, 3:] = -1, np.nan
    indices[0], sims[0] = -1, np.nan  # a row with no neighbour at all
    coords = project_2d(x, method="graph", neighbor_indices=indices, similarities=sims)
    assert np.isfinite(coords).all()
    with pytest.raises(ValueError, match=r"one row per embedding \(32\) but got shape \(31, 5\); pass the kNN graph"):
        project_2d(x, method="graph", neighbor_indices=indices[:31], similarities=sims[:31])
    head, tail, weight = fuzzy_graph(np.full((3, 2), -1), np.full((3, 2), np.nan))
    assert head.numel() == tail.numel() == weight.numel() == 0
    start = torch.rand(3, 2)
    assert torch.equal(graph_layout(head, tail, weight, start), start)
    with pytest.raises(ValueError, match=r"`epochs` to be an integer >= 1 but got 0"):
        graph_layout(head, tail, weight, start, epochs=0)
    with pytest.raises(ValueError, match=r"`init` of shape \(N, 2\) but got \(3, 3\)"):
        graph_layout(head, tail, weight, torch.rand(3, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_layout_on_gpu_is_deterministic_and_separates() -> None:
    x, truth = _many_blobs()
    indices, sims = knn_cosine(x, 14)
    gpu = project_2d(x, method="graph", neighbor_indices=indices, similarities=sims, device="cuda")
    np.testing.assert_array_equal(
        project_2d(x, method="graph", neighbor_indices=indices, similarities=sims, device="cuda"), gpu
    )
    assert _neighbour_agreement(gpu, truth) > 0.95


@SLOW
def test_umap_subsample_and_propagation() -> None:
    projection.require_umap()
    x, truth = _blobs(1200)
    indices, sims = knn_cosine(x, 10)
    coords = project_2d(x, method="umap", max_fit=300, neighbor_indices=indices, similarities=sims)
    assert coords.shape == (1200, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    assert _separated(coords, truth)
    again = project_2d(x, method="umap", max_fit=300, neighbor_indices=indices, similarities=sims)
    np.testing.assert_array_equal(again, coords)
    whole = project_2d(x[:200], method="umap", neighbor_indices=None)
    assert whole.shape == (200, 2) and _separated(whole, truth[:200])


@SLOW
def test_fuzzy_graph_matches_umap_learn() -> None:
    from umap.umap_ import fuzzy_simplicial_set

    x, _ = _many_blobs(500)
    indices, sims = knn_cosine(x, 14)
    distances = np.sqrt(np.clip(2 - 2 * sims, 0, 4))
    rows = np.arange(500)[:, None]
    graph, _, _ = fuzzy_simplicial_set(
        x, 15, 0, "euclidean",
        knn_indices=np.hstack([rows, indices]).astype(np.int32),
        knn_dists=np.hstack([np.zeros((500, 1)), distances]).astype(np.float32),
    )
    graph = graph.tocoo()
    reference = {(int(i), int(j)): float(v) for i, j, v in zip(graph.row, graph.col, graph.data) if v > 0}
    head, tail, weight = fuzzy_graph(indices, distances)
    ours = {(int(i), int(j)): float(v) for i, j, v in zip(head, tail, weight)}
    assert ours.keys() == reference.keys()
    np.testing.assert_allclose([ours[key] for key in reference], list(reference.values()), rtol=1e-3, atol=1e-4)
