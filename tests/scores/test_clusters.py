"""Tests of dq_plugins.scores.clusters: blobs recovered, the cluster table and class overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dq_plugins.scores.clusters import (
    CLUSTER_COLUMNS,
    MAX_CLUSTERS,
    OVERLAP_COLUMNS,
    class_overlap,
    cluster_embeddings,
    cluster_summary,
    default_num_clusters,
)

pytestmark = pytest.mark.filterwarnings("error")


def _blobs(n_per: int = 60, n_blobs: int = 4, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, d)) * 4
    truth = np.repeat(np.arange(n_blobs), n_per)
    return (centres[truth] + rng.normal(size=(truth.size, d))).astype(np.float32), truth


def _pair_purity(found: np.ndarray, truth: np.ndarray) -> float:
    """1.0 when the partition equals the truth up to renaming."""
    table = pd.crosstab(found, truth).to_numpy()
    return float(table.max(axis=1).sum() / truth.size * table.max(axis=0).sum() / truth.size)


def test_recovers_well_separated_blobs_and_is_deterministic() -> None:
    x, truth = _blobs()
    found = cluster_embeddings(x, n_clusters=4, seed=0)
    assert found.dtype == np.int64 and found.shape == (240,)
    assert _pair_purity(found, truth) == 1.0
    # same seed, fp16 copy of the same rows: the same partition, the same ids
    np.testing.assert_array_equal(cluster_embeddings(x.astype(np.float16), n_clusters=4, seed=0), found)


def test_default_number_of_clusters() -> None:
    assert default_num_clusters(100) == 7  # sqrt(50) = 7.07
    assert default_num_clusters(10_000) == 71
    assert default_num_clusters(1_000_000) == MAX_CLUSTERS
    assert default_num_clusters(3) == 2
    assert default_num_clusters(1) == 1
    assert np.unique(cluster_embeddings(_blobs()[0])).size == default_num_clusters(240)


def test_cluster_rejects_bad_count() -> None:
    with pytest.raises(ValueError, match=r"`n_clusters` to be an integer in 1 \.\. N = 240 but got 0"):
        cluster_embeddings(_blobs()[0], n_clusters=0)
    np.testing.assert_array_equal(cluster_embeddings(_blobs()[0], n_clusters=1), 0)


def test_cluster_summary_hand_computed() -> None:
    cluster = np.array([0, 0, 0, 1, 1])
    labels = np.array([2, 2, 1, 0, 0])
    table = cluster_summary(cluster, labels, is_label_issue=np.array([0, 0, 1, 1, 0], dtype=bool))
    assert list(table.columns) == list(CLUSTER_COLUMNS)
    # cluster 0: majority 2 with purity 2/3, least pure first; cluster 1: pure
    assert table["cluster"].tolist() == [0, 1]
    assert table["majority_label"].tolist() == [2, 0]
    np.testing.assert_allclose(table["purity"], [2 / 3, 1.0])
    np.testing.assert_allclose(table["label_issue_share"], [1 / 3, 1 / 2])
    assert table["outlier_share"].isna().all()


def test_class_overlap_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    neighbors = np.array([[1, 2, 3], [0, 4, 5], [3, 0, 1], [2, 4, 4], [5, 0, 2], [4, 3, 1]])
    # strongest other class (ties go to the nearer neighbour) and its share of the 3 neighbours:
    # row 0: 1 (2/3) -> {0,1}; row 1: 2 (2/3) -> {0,2}; row 2: 0 (2/3) -> {0,1};
    # row 3: 2 (2/3) -> {1,2}; row 4: 0 (1/3, tie with 1) -> {0,2}; row 5: 1 (1/3, tie with 0) -> {1,2}
    table = class_overlap(neighbors, labels)
    assert list(table.columns) == list(OVERLAP_COLUMNS)
    # every pair has 2 boundary samples out of 4 samples; equal shares are ordered by class
    assert table.values.tolist() == [[0, 1, 2, 0.5], [0, 2, 2, 0.5], [1, 2, 2, 0.5]]
    strict = class_overlap(neighbors, labels, min_evidence=0.5)
    assert {(a, b): n for a, b, n in strict[["class_a", "class_b", "boundary_samples"]].itertuples(index=False)} == {
        (0, 1): 2, (0, 2): 1, (1, 2): 1,
    }
    np.testing.assert_allclose(strict.set_index(["class_a", "class_b"]).loc[(0, 1), "share"], 2 / 4)


def test_class_overlap_with_pred_probs() -> None:
    labels = np.array([0, 0, 1, 1])
    neighbors = np.array([[1, 2], [0, 3], [3, 2], [2, 0]])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [np.nan, np.nan]])
    # row 0: share of 1 = 1/2, p = 0.1 -> 0.3 (boundary); row 1: 1/2 and 0.8 -> 0.65 (boundary);
    # row 2: 0 and 0.1 -> 0.05; row 3 (not recorded): share of 0 = 1/2 -> boundary
    table = class_overlap(neighbors, labels, probs)
    assert table[["class_a", "class_b", "boundary_samples"]].values.tolist() == [[0, 1, 3]]
    np.testing.assert_allclose(table["share"], [3 / 4])


def test_class_overlap_finds_the_touching_pair() -> None:
    from dq_plugins.scores.neighbors import knn_cosine

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 4
    centres[1] = centres[0] + 0.5 * rng.normal(size=16)  # classes 0 and 1 overlap
    truth = np.repeat(np.arange(4), 80)
    x = centres[truth] + rng.normal(size=(320, 16))
    indices, _ = knn_cosine(x, 10)
    table = class_overlap(indices, truth)
    assert (table.iloc[0]["class_a"], table.iloc[0]["class_b"]) == (0, 1)
    assert table.iloc[0]["share"] > 0.3
    assert table.iloc[0]["boundary_samples"] > 5 * table["boundary_samples"].iloc[1:].sum()


def test_class_overlap_empty_and_bad_inputs() -> None:
    table = class_overlap(np.array([[1], [0]]), np.array([0, 0]))
    assert table.empty and list(table.columns) == list(OVERLAP_COLUMNS)
    with pytest.raises(ValueError, match=r"`neighbor_indices` of shape \(N, k\) and `labels` of shape \(N,\)"):
        class_overlap(np.zeros((3, 2), dtype=np.int64), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match=r"`pred_probs` of shape \(N, C\) with N = 2"):
        class_overlap(np.array([[1], [0]]), np.array([0, 1]), np.ones((3, 2)))


def test_kmeans_plus_plus_seeding() -> None:
    from dq_plugins.scores.clusters import kmeans_plus_plus

    unit = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    # 3 distinct directions and 3 centres: each direction once (a zero-distance row is never drawn)
    centres = kmeans_plus_plus(unit, 3, np.random.default_rng(0))
    assert centres.dtype == np.float32 and centres.shape == (3, 2)
    assert {tuple(row) for row in centres} == {(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)}
    # more centres than distinct rows: the remaining rows are used, no error
    assert kmeans_plus_plus(unit, 4, np.random.default_rng(0)).shape == (4, 2)


def test_fit_on_a_subsample_then_assign_keeps_the_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    import dq_plugins.scores.clusters as clusters

    x, truth = _blobs()
    full = cluster_embeddings(x, n_clusters=4, seed=0)
    monkeypatch.setattr(clusters, "KMEANS_FIT_SAMPLE", 80)  # fit on 80 of 240 rows, assign the rest
    monkeypatch.setattr(clusters, "ASSIGN_BLOCK_ROWS", 64)
    monkeypatch.setattr(clusters, "KMEANS_BATCH_SIZE", 32)  # many mini-batch steps, as at real sizes
    sub = cluster_embeddings(x, n_clusters=4, seed=0)
    assert sub.dtype == np.int64 and sub.shape == (240,)
    assert _pair_purity(sub, truth) == 1.0 == _pair_purity(full, truth)
    np.testing.assert_array_equal(cluster_embeddings(x, n_clusters=4, seed=0), sub)


def test_nearest_centre_hand_computed() -> None:
    from dq_plugins.scores.clusters import nearest_centre

    rows = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]], dtype=np.float32)
    centres = np.array([[0.9, 0.1], [0.0, 0.5], [-2.0, 0.0]], dtype=np.float32)
    # squared distances: row 2 to centre 0 = 0.09 + 0.49 = 0.58, to centre 1 = 0.36 + 0.09 = 0.45
    np.testing.assert_array_equal(nearest_centre(rows, centres), [0, 1, 1, 2])
