"""Tests of dq_plugins.scores.neighbors: chunked exact kNN against brute force, the ANN glue,
and neighbour label disagreement on hand-computed and planted cases."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch

from dq_plugins.scores import neighbors
from dq_plugins.scores.neighbors import (
    EXACT_MAX_SAMPLES_CPU,
    EXACT_MAX_SAMPLES_GPU,
    knn_cosine,
    neighbor_label_disagreement,
    neighbor_label_set_disagreement,
    resolve_method,
    unit_rows,
)

pytestmark = pytest.mark.filterwarnings("error")

SLOW = pytest.mark.skipif(
    os.environ.get("DQ_SLOW_TESTS") != "1",
    reason="pynndescent compiles for 40-110 s per process; set DQ_SLOW_TESTS=1 to run",
)


def _brute_force(x: np.ndarray, k: int, exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, 1)


def _data(n: int = 203, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 203, 4096])
def test_chunked_exact_equals_brute_force(chunk_size: int) -> None:
    x = _data()
    indices, sims = knn_cosine(x, 5, chunk_size=chunk_size, method="exact")
    expected_indices, expected_sims = _brute_force(x, 5)
    assert indices.dtype == np.int64 and indices.shape == (203, 5)
    assert sims.dtype == np.float32 and sims.shape == (203, 5)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-5)


def test_block_is_bounded_by_the_element_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # 203 rows with a 1000-element budget: 4 rows per block, still the brute-force answer
    monkeypatch.setattr(neighbors, "MAX_BLOCK_ELEMENTS_CPU", 1000)
    seen: list[int] = []
    real_topk = torch.topk

    def spy(scores: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(scores.numel())
        return real_topk(scores, k, dim=dim)

    monkeypatch.setattr(torch, "topk", spy)
    x = _data()
    indices, _ = knn_cosine(x, 3)
    assert max(seen) <= 1000
    np.testing.assert_array_equal(indices, _brute_force(x, 3)[0])


def test_hand_computed_four_points_and_include_self() -> None:
    # unit vectors at 0, 10, 90 and 180 degrees
    angles = np.deg2rad([0.0, 10.0, 90.0, 180.0])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([[1.0], [2.0], [3.0], [0.5]])
    indices, sims = knn_cosine(x, 2)
    np.testing.assert_array_equal(indices[:, 0], [1, 0, 1, 2])
    np.testing.assert_allclose(sims[0], [np.cos(np.deg2rad(10)), 0.0], atol=1e-6)
    np.testing.assert_allclose(sims[3], [0.0, -np.cos(np.deg2rad(10))], atol=1e-6)
    with_self, self_sims = knn_cosine(x, 1, exclude_self=False)
    np.testing.assert_array_equal(with_self[:, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(self_sims[:, 0], 1.0, atol=1e-6)


def test_exact_duplicate_is_kept_as_a_neighbour() -> None:
    x = _data(20)
    x[7] = x[3]
    indices, sims = knn_cosine(x, 1)
    assert indices[3, 0] == 7 and indices[7, 0] == 3
    assert sims[3, 0] == pytest.approx(1.0, abs=1e-6)


def test_fp16_tensor_and_zero_rows() -> None:
    x = _data(50).astype(np.float32)
    x[4] = 0.0
    indices, sims = knn_cosine(torch.from_numpy(x).half(), 4)
    assert np.isfinite(sims).all()
    np.testing.assert_allclose(sims[4], 0.0)  # a zero row is orthogonal to everything
    rows = [i for i in range(50) if i != 4]
    halves = x.astype(np.float16).astype(np.float64)
    unit = halves / np.maximum(np.linalg.norm(halves, axis=1, keepdims=True), 1e-12)
    all_sims = unit @ unit.T
    np.fill_diagonal(all_sims, -np.inf)
    expected_sims = -np.sort(-all_sims, axis=1)[:, :4]
    np.testing.assert_allclose(sims[rows], expected_sims[rows], atol=1e-5)


def test_unit_rows_avoids_a_copy_for_normalised_fp32() -> None:
    x = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    assert unit_rows(x).data_ptr() == x.data_ptr()
    copy = unit_rows(x.double())
    assert copy.dtype == torch.float32 and copy is not x


def test_auto_method_resolution() -> None:
    assert resolve_method("auto", EXACT_MAX_SAMPLES_CPU, torch.device("cpu")) == "exact"
    assert resolve_method("auto", EXACT_MAX_SAMPLES_CPU + 1, torch.device("cpu")) == "ivf"
    assert resolve_method("auto", EXACT_MAX_SAMPLES_GPU, torch.device("cuda")) == "exact"
    assert resolve_method("auto", EXACT_MAX_SAMPLES_GPU + 1, torch.device("cuda")) == "ivf"
    assert resolve_method("ann", 10, torch.device("cpu")) == "ann"


def test_ann_glue_drops_self_and_sorts(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for pynndescent: returns a fixed graph in which row 1 lacks itself and row 2
    # has self second (tie with an exact duplicate) and a missing neighbour (-1).
    graph = np.array([[0, 2, 1], [2, 0, 3], [1, 2, -1], [3, 1, 0]])
    distances = np.array([[0.0, 0.1, 0.3], [0.2, 0.3, 0.4], [0.0, 0.0, np.inf], [0.0, 0.5, 0.6]], dtype=np.float32)
    calls: dict[str, object] = {}

    class FakeIndex:
        def __init__(self, data: np.ndarray, **kwargs: object) -> None:
            calls.update(kwargs)
            self.neighbor_graph = (graph, distances)

    monkeypatch.setitem(sys.modules, "pynndescent", types.SimpleNamespace(NNDescent=FakeIndex))
    indices, sims = knn_cosine(_data(4), 2, method="ann", seed=3)
    assert calls["metric"] == "cosine" and calls["n_neighbors"] == 3 and calls["random_state"] == 3
    np.testing.assert_array_equal(indices, [[2, 1], [2, 0], [1, -1], [1, 0]])
    np.testing.assert_allclose(sims[:, 0], [0.9, 0.8, 1.0, 0.5])
    assert np.isnan(sims[2, 1])


def test_ann_missing_dependency_has_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynndescent", None)
    with pytest.raises(ModuleNotFoundError, match=r"needs pynndescent\. HINT: `pip install pynndescent`"):
        knn_cosine(_data(10), 2, method="ann")


@SLOW
def test_ann_path_runs_and_recalls() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    x = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32))
    indices, sims = knn_cosine(x, 10, method="ann")
    expected, _ = _brute_force(x, 10)
    assert indices.shape == (3000, 10) and (indices != np.arange(3000)[:, None]).all()
    recall = np.mean([np.intersect1d(indices[i], expected[i]).size / 10 for i in range(3000)])
    assert recall > 0.9
    assert (np.diff(sims, axis=1) <= 1e-6).all()


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"`k` to be an integer in 1 \.\. 4 \(N = 5, exclude_self=True\) but got 5"):
        knn_cosine(_data(5), 5)
    with pytest.raises(ValueError, match=r"`embeddings` to be 2-D of shape \(N, D\) but got shape \(5,\)"):
        knn_cosine(np.zeros(5), 1)
    with pytest.raises(ValueError, match=r"`embeddings` to have a float dtype but got int64"):
        knn_cosine(np.zeros((5, 2), dtype=np.int64), 1)
    with pytest.raises(ValueError, match=r"`method` to be one of \['auto', 'exact', 'ivf', 'ann'\] but got 'hnsw'"):
        knn_cosine(_data(5), 1, method="hnsw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`chunk_size` to be a positive integer but got 0"):
        knn_cosine(_data(5), 1, chunk_size=0)


def test_disagreement_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1])
    neighbors_ = np.array([[1, 2], [0, 3], [3, 0], [2, -1]])
    # unweighted: row 0 -> (0 + 1) / 2; row 1 -> 1/2; row 2 -> 1/2; row 3: one present neighbour, same label
    np.testing.assert_allclose(neighbor_label_disagreement(neighbors_, labels), [0.5, 0.5, 0.5, 0.0])
    sims = np.array([[0.9, 0.1], [0.5, 0.5], [0.8, -0.3], [0.0, np.nan]])
    # row 0: 0.1 / 1.0; row 1: 0.5 / 1.0; row 2: negative weight clipped to 0 -> 0 / 0.8;
    # row 3: all weights 0 -> unweighted over present neighbours -> 0
    np.testing.assert_allclose(neighbor_label_disagreement(neighbors_, labels, sims), [0.1, 0.5, 0.0, 0.0])
    assert np.isnan(neighbor_label_disagreement(np.array([[-1, -1]]), np.array([0]))[0])


def test_disagreement_is_high_on_planted_flips() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 3
    true = np.repeat(np.arange(4), 50)
    x = centres[true] + rng.normal(size=(200, 16))
    labels = true.copy()
    flipped = rng.choice(200, 10, replace=False)
    labels[flipped] = (labels[flipped] + 1) % 4
    indices, sims = knn_cosine(x, 10)
    score = neighbor_label_disagreement(indices, labels, sims)
    assert score[flipped].min() > 0.7
    assert np.delete(score, flipped).max() < 0.35
    top = np.argsort(-score)[:10]
    assert set(top) == set(flipped)


def test_disagreement_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"`neighbor_indices` to be a 2-D integer array"):
        neighbor_label_disagreement(np.zeros((3, 2)), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"`labels` to be a 1-D integer array of length N = 3"):
        neighbor_label_disagreement(np.zeros((3, 2), dtype=np.int64), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"`similarities` and `neighbor_indices` to have the same shape"):
        neighbor_label_disagreement(np.zeros((3, 2), dtype=np.int64), np.zeros(3, dtype=np.int64), np.zeros((3, 1)))


def test_label_set_disagreement_hand_computed() -> None:
    sets = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=np.int8)
    neighbors_ = np.array([[1, 2], [0, 2], [0, -1], [4, 0], [3, 1]])
    # Jaccard distances: {0,1} vs {0} = 1 - 1/2; {0,1} vs {2} = 1; {0} vs {2} = 1; {} vs {} = 0; {} vs {0} = 1
    np.testing.assert_allclose(neighbor_label_set_disagreement(neighbors_, sets), [0.75, 0.75, 1.0, 0.5, 0.5])
    sims = np.array([[0.6, 0.2], [0.9, -0.5], [0.3, np.nan], [0.0, 0.0], [0.5, 0.25]])
    # row 0: (0.6 * 0.5 + 0.2 * 1) / 0.8; row 1: the negative weight is clipped -> 0.5; row 2: one neighbour;
    # row 3: all weights 0 -> equal weights over both; row 4: (0.5 * 0 + 0.25 * 1) / 0.75
    np.testing.assert_allclose(neighbor_label_set_disagreement(neighbors_, sets.astype(bool), sims),
                               [0.625, 0.5, 1.0, 0.5, 1 / 3])
    assert np.isnan(neighbor_label_set_disagreement(np.array([[-1, -1]]), np.array([[1, 0]]))[0])


def test_label_set_disagreement_equals_the_single_label_score_on_one_hot_rows(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 60)
    indices, sims = knn_cosine(rng.normal(size=(60, 8)), 5)
    monkeypatch.setattr(neighbors, "LABEL_SET_CHUNK_ELEMENTS", 40)  # several row chunks
    np.testing.assert_allclose(neighbor_label_set_disagreement(indices, np.eye(4)[labels], sims),
                               neighbor_label_disagreement(indices, labels, sims))


def test_label_set_disagreement_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"`label_sets` to be a multi-hot \(N, C\) array of 0 and 1 with N = 2"):
        neighbor_label_set_disagreement(np.zeros((2, 1), dtype=np.int64), np.array([[0.5, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"`label_sets` to be a multi-hot"):
        neighbor_label_set_disagreement(np.zeros((2, 1), dtype=np.int64), np.array([1, 0]))
    with pytest.raises(ValueError, match=r"`neighbor_indices` to be a 2-D integer array"):
        neighbor_label_set_disagreement(np.zeros((2, 1)), np.eye(2))


def _clustered(n: int, d: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, d))


@pytest.mark.parametrize("exclude_self", [True, False])
def test_ivf_recalls_the_exact_neighbours_and_keeps_the_contract(exclude_self: bool) -> None:
    x = _clustered(4000)
    indices, sims = knn_cosine(x, 10, method="ivf", exclude_self=exclude_self, seed=1)
    expected, expected_sims = _brute_force(x, 10, exclude_self=exclude_self)
    assert indices.shape == sims.shape == (4000, 10)
    assert indices.dtype == np.int64 and sims.dtype == np.float32
    recall = np.mean([np.intersect1d(indices[i], expected[i]).size / 10 for i in range(4000)])
    assert recall > 0.95
    rows = np.arange(4000)[:, None]
    if exclude_self:
        assert (indices != rows).all()
    else:
        assert (indices[:, 0] == rows[:, 0]).mean() > 0.99  # each row is its own nearest neighbour
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # nearest first
    found = indices >= 0
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    true_sims = np.einsum("nd,nkd->nk", unit, unit[np.where(found, indices, 0)])
    np.testing.assert_allclose(sims[found], true_sims[found], atol=1e-5)  # similarities are the real ones


def test_ivf_is_deterministic_for_a_seed_and_small_inputs_work() -> None:
    x = _clustered(600, seed=3)
    first = knn_cosine(x, 5, method="ivf", seed=7)
    second = knn_cosine(x, 5, method="ivf", seed=7)
    np.testing.assert_array_equal(first[0], second[0])
    tiny_indices, _ = knn_cosine(_data(9), 3, method="ivf")
    expected, _ = _brute_force(_data(9), 3)
    np.testing.assert_array_equal(np.sort(tiny_indices, axis=1), np.sort(expected, axis=1))  # one list: exact




def test_ivf_two_level_quantizer_keeps_recall_and_list_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    import dq_plugins.scores.neighbors as neighbors

    monkeypatch.setattr(neighbors, "IVF_LIST_SIZE", 100)
    monkeypatch.setattr(neighbors, "IVF_FLAT_MAX_LISTS", 8)  # 40 lists -> two levels (6 top groups)
    x = _clustered(4000, clusters=80)
    unit = neighbors.unit_rows(x)
    centroids, assign = neighbors.ivf_lists(unit, 40, seed=0)
    assert 32 <= centroids.shape[0] <= 48  # about num_lists, split in proportion to the top groups
    sizes = torch.bincount(assign, minlength=centroids.shape[0])
    assert int(sizes.sum()) == 4000 and int(sizes.max()) < 400  # no list holds a whole top group
    # a row's list centroid is close to the best of all centroids (the top level only prunes)
    best = (unit @ centroids.T).max(dim=1).values
    own = (unit * centroids[assign]).sum(dim=1)
    assert float((own >= best - 0.05).float().mean()) > 0.9
    indices, sims = knn_cosine(x, 10, method="ivf", seed=1)  # 12 probes of ~40 lists: not exhaustive
    expected, _ = _brute_force(x, 10)
    recall = np.mean([np.intersect1d(indices[i], expected[i]).size / 10 for i in range(4000)])
    assert recall > 0.9
    assert (indices >= 0).all() and (np.diff(sims, axis=1) <= 1e-6).all()


def _union_of_parts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, similarities, searched (P, N) bool) of the parts of one search, each row from its own part."""
    searched = np.stack([(found >= 0).any(axis=1) for found, _ in parts])
    owner = searched.argmax(axis=0)
    rows = np.arange(owner.size)
    return (np.stack([p[0] for p in parts])[owner, rows], np.stack([p[1] for p in parts])[owner, rows], searched)


def test_exact_parts_take_whole_blocks_and_together_equal_one_search() -> None:
    x = _data(1000, 24)
    whole = knn_cosine(x, 6, chunk_size=64, method="exact")  # 16 blocks of 64 rows (the last 40)
    parts = [knn_cosine(x, 6, chunk_size=64, method="exact", part=(p, 3)) for p in range(3)]
    indices, sims, searched = _union_of_parts(parts)
    assert (searched.sum(axis=0) == 1).all()  # each row searched by exactly one part
    assert [int(s.sum()) for s in searched] == [320, 320, 360]  # blocks 0-4, 5-9, 10-15 (by middle row)
    for found, similarity in parts:  # rows of the other parts are -1 / NaN
        assert np.isnan(similarity[(found < 0)]).all()
    np.testing.assert_array_equal(indices, whole[0])  # bit for bit: the same blocks, the same sums
    np.testing.assert_array_equal(sims, whole[1])


def test_ivf_parts_with_one_quantizer_equal_one_search_and_balance_the_work() -> None:
    x = _clustered(6000, seed=2)
    unit = unit_rows(x)
    quantizer = neighbors.ivf_lists(unit, neighbors.ivf_num_lists(6000), seed=4)
    whole = knn_cosine(x, 10, method="ivf", seed=4)
    parts = [knn_cosine(x, 10, method="ivf", seed=99, part=(p, 2), quantizer=quantizer) for p in range(2)]
    indices, sims, searched = _union_of_parts(parts)
    assert (searched.sum(axis=0) == 1).all()
    assert 0.3 < searched[0].mean() < 0.7  # lists balanced by queries x candidates
    np.testing.assert_array_equal(indices, whole[0])  # seed=99 is unused: the quantizer is given
    np.testing.assert_array_equal(sims, whole[1])


def test_part_owners_are_contiguous_and_balanced() -> None:
    owners = neighbors.part_owners(np.array([1, 1, 1, 1, 4, 0, 1, 1]), 2)
    assert owners.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert neighbors.part_owners(np.ones(3), 5).tolist() == [0, 2, 4]  # more parts than items: some idle
    assert neighbors.part_owners(np.ones(4), 1).tolist() == [0, 0, 0, 0]


def test_bad_part_and_quantizer_are_refused() -> None:
    with pytest.raises(ValueError, match=r"`part` to be \(p, P\) with 0 <= p < P .* got \(2, 2\)"):
        knn_cosine(_data(20), 3, part=(2, 2))
    with pytest.raises(ValueError, match=r"`part=\(0, 1\)` with method='ann'.*HINT: use method='exact' or 'ivf'"):
        knn_cosine(_data(20), 3, method="ann", part=(0, 2))
    with pytest.raises(ValueError, match=r"`quantizer` to be \(centroids \(L, 16\), assignment \(20,\)\).*HINT"):
        knn_cosine(_data(20), 3, method="ivf", quantizer=(torch.zeros(2, 16), torch.zeros(19, dtype=torch.int64)))


def test_reduced_rows_is_one_projection_read_in_chunks_and_keeps_neighbours():
    from dq_plugins.scores.neighbors import needs_reduction, reduced_rows

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 512))
    cluster = rng.integers(0, 20, 600)
    rows = (centres[cluster] + 0.3 * rng.normal(size=(600, 512))).astype(np.float16)
    rows[7] = rows[3]  # an exact copy stays an exact copy
    whole = reduced_rows(rows, chunk_size=10_000)
    chunked = reduced_rows(rows, chunk_size=37)
    assert whole.shape == (600, 128) and whole.dtype == torch.float32
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(whole[7], whole[3])
    projected, _ = knn_cosine(whole, 10, method="exact")
    assert (cluster[projected] == cluster[:, None]).mean() > 0.99  # the neighbours stay in the sample's own cluster
    assert not needs_reduction(1_000_000, 768) and needs_reduction(10_000_000, 768) and not needs_reduction(10**9, 128)


def test_the_analysis_of_a_huge_table_searches_the_projection(monkeypatch):
    import dq_plugins.analysis.embeddings as analysis
    import dq_plugins.scores.neighbors as neighbors

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    rows = (np.eye(4)[labels] @ rng.normal(size=(4, 256)) * 3 + rng.normal(size=(400, 256))).astype(np.float32)
    rows[11] = rows[5]
    monkeypatch.setattr(neighbors, "REDUCE_ABOVE_ELEMENTS", 400 * 256 - 1)  # this table counts as huge
    result = analysis.analyze_embeddings(rows, np.arange(400), labels, projection="pca")
    assert "reduce" in result.summary.timings
    samples = result.samples.set_index("sample_id")
    assert samples.loc[11, "near_duplicate_of"] == 5  # the copy is still found
    assert samples["neighbor_disagreement"].mean() < 0.2  # neighbours still share their class
