"""dq_plugins.selection: most similar first, near-duplicates picked once, balance across partitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dq_plugins.selection import SELECTION_COLUMNS, EmbeddingPool, cosine_to_queries, select_similar


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def planted_pool(seed: int = 0):
    """A query direction q; pool rows 0-4 are near-copies of one vector very close to q (cosine ~0.99 to q,
    > 0.999 to each other); rows 5-14 lie at a decreasing angle from q; rows 15-64 are random."""
    rng = np.random.default_rng(seed)
    dim = 32
    q = unit(rng.normal(size=dim))
    side = unit(rng.normal(size=dim) - q * (q @ rng.normal(size=dim)))
    side = unit(side - q * (q @ side))  # orthogonal to q
    near = unit(q + 0.15 * side)
    dupes = np.stack([unit(near + 1e-3 * rng.normal(size=dim)) for _ in range(5)])
    # decreasing similarity, each in its own direction so they are not near-duplicates of each other
    graded = []
    for i in range(10):
        other = rng.normal(size=dim)
        other = unit(other - q * (q @ other))
        angle = 0.35 + 0.08 * i
        graded.append(np.cos(angle) * q + np.sin(angle) * other)
    noise = unit(rng.normal(size=(50, dim)))
    pool = np.vstack([dupes, np.stack(graded), noise]).astype(np.float32)
    return pool, q[None, :].astype(np.float32)


def test_most_similar_first_and_near_duplicates_picked_once():
    pool, query = planted_pool()
    ids = np.arange(1000, 1000 + len(pool))
    picked = select_similar(pool, ids, query, k=6)
    assert list(picked.columns) == list(SELECTION_COLUMNS)
    assert picked["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert (np.diff(picked["similarity"]) <= 0).all()
    expected_best = 1000 + int(np.argmax(unit(pool[:5]) @ query[0]))
    assert picked["pool_id"].iloc[0] == expected_best  # the most similar of the duplicates...
    assert picked["pool_id"].isin(ids[:5]).sum() == 1  # ...and only one of them
    assert picked["pool_id"].iloc[1:].tolist() == list(ids[5:10])  # then the graded rows, in order
    np.testing.assert_allclose(picked["similarity"], (unit(pool) @ query[0])[picked["pool_id"] - 1000], rtol=1e-5)
    assert picked["partition"].isna().all()

    all_dupes = select_similar(pool, ids, query, k=6, diversity_threshold=None)
    assert all_dupes["pool_id"].iloc[:5].isin(ids[:5]).all()  # without the check, every near-copy comes first


def test_selected_set_never_holds_a_pair_above_the_threshold():
    rng = np.random.default_rng(1)
    base = unit(rng.normal(size=(40, 16)))
    pool = np.vstack([base, base + 0.01 * rng.normal(size=base.shape), base + 0.01 * rng.normal(size=base.shape)])
    picked = select_similar(pool, np.arange(len(pool)), base[:5], k=60, diversity_threshold=0.9)
    vectors = unit(pool[picked["pool_id"]])
    cosine = vectors @ vectors.T
    np.fill_diagonal(cosine, 0)
    assert cosine.max() < 0.9
    assert len(picked) == 40  # one per group of three copies: the pool runs out of distinct candidates


def test_balance_shares_the_picks_round_robin_across_partitions():
    pool, query = planted_pool()
    partitions = np.array(["day1"] * 15 + ["day2"] * 50)  # all the close rows are in day1
    unbalanced = select_similar(pool, np.arange(65), query, k=6, partitions=partitions)
    assert (unbalanced["partition"] == "day1").all()
    balanced = select_similar(pool, np.arange(65), query, k=6, partitions=partitions, balance=True)
    assert balanced["partition"].value_counts().to_dict() == {"day1": 3, "day2": 3}
    day2 = balanced[balanced["partition"] == "day2"]["pool_id"]
    best_day2 = 15 + np.argsort(-(unit(pool[15:]) @ query[0]))[:3]
    assert sorted(day2) == sorted(best_day2)  # the best of each partition
    assert (np.diff(balanced["similarity"]) <= 0).all()


def test_balance_gives_the_share_of_a_partition_without_distinct_candidates_to_the_others():
    pool, query = planted_pool()
    partitions = np.array(["dupes"] * 5 + ["a"] * 30 + ["b"] * 30)  # "dupes" holds one distinct sample
    picked = select_similar(pool, np.arange(65), query, k=7, partitions=partitions, balance=True)
    assert len(picked) == 7
    counts = picked["partition"].value_counts().to_dict()
    assert counts["dupes"] == 1 and counts["a"] + counts["b"] == 6 and abs(counts["a"] - counts["b"]) <= 1


def test_max_and_mean_reduce_and_chunking_match_a_reference():
    rng = np.random.default_rng(2)
    pool, queries = rng.normal(size=(300, 8)), rng.normal(size=(37, 8))
    cosine = unit(pool) @ unit(queries).T
    np.testing.assert_allclose(cosine_to_queries(pool, queries, reduce="max", chunk_elements=50), cosine.max(1),
                               rtol=1e-5)
    np.testing.assert_allclose(cosine_to_queries(pool, queries, reduce="mean", chunk_elements=50), cosine.mean(1),
                               rtol=1e-4, atol=1e-6)
    tensor = cosine_to_queries(torch.from_numpy(pool), torch.from_numpy(queries))
    np.testing.assert_allclose(tensor, cosine.max(1), rtol=1e-5)
    # two query modes: "max" picks a look-alike of one mode, "mean" the point between them
    a, b = np.eye(8)[0], np.eye(8)[1]
    pool2 = np.stack([a * 0.99 + b * 0.01, unit(a + b), -a]).astype(np.float32)
    assert select_similar(pool2, [0, 1, 2], np.stack([a, b]), k=1)["pool_id"].tolist() == [0]
    assert select_similar(pool2, [0, 1, 2], np.stack([a, b]), k=1, reduce="mean")["pool_id"].tolist() == [1]


def test_torch_tensors_give_the_same_selection_as_numpy():
    pool, query = planted_pool()
    partitions = np.array(["day1"] * 15 + ["day2"] * 50)
    expected = select_similar(pool, np.arange(65), query, k=6, partitions=partitions, balance=True)
    got = select_similar(torch.from_numpy(pool), np.arange(65), torch.from_numpy(query), k=6, partitions=partitions,
                         balance=True)
    assert got["pool_id"].tolist() == expected["pool_id"].tolist()
    np.testing.assert_allclose(got["similarity"], expected["similarity"], rtol=1e-6)


def test_exclusions_non_finite_rows_and_empty_queries():
    pool, query = planted_pool()
    picked = select_similar(pool, np.arange(65), query, k=3, exclude_ids=np.arange(5))
    assert not picked["pool_id"].isin(range(5)).any()
    broken = pool.copy()
    broken[5] = np.nan
    with pytest.warns(RuntimeWarning, match=r"1 pool rows with NaN/inf embeddings are left out"):
        assert 5 not in select_similar(broken, np.arange(65), query, k=10)["pool_id"].tolist()
    with pytest.warns(RuntimeWarning, match=r"empty query set \(an empty slice\?\); nothing selected"):
        empty = select_similar(pool, np.arange(65), query[:0], k=3)
    assert empty.empty and list(empty.columns) == list(SELECTION_COLUMNS)


def test_bad_input_names_the_problem():
    pool, query = planted_pool()
    with pytest.raises(ValueError, match=r"same width but got 32 and 8\. HINT: embed both with the same model"):
        select_similar(pool, np.arange(65), np.ones((2, 8)), k=3)
    with pytest.raises(ValueError, match=r"one pool id per pool row: 65 rows but 3 ids"):
        select_similar(pool, [1, 2, 3], query, k=3)
    with pytest.raises(ValueError, match=r"`k` to be an integer >= 1 but got 0"):
        select_similar(pool, np.arange(65), query, k=0)
    with pytest.raises(ValueError, match=r"`balance=True` needs `partitions=`"):
        select_similar(pool, np.arange(65), query, k=3, balance=True)
    with pytest.raises(ValueError, match=r"one partition per pool row: 65 rows but 2 partitions"):
        select_similar(pool, np.arange(65), query, k=3, partitions=["a", "b"])
    with pytest.raises(ValueError, match=r"`reduce` to be 'max' or 'mean' but got 'sum'"):
        select_similar(pool, np.arange(65), query, k=3, reduce="sum")
    with pytest.raises(ValueError, match=r"embeddings of shape \(3, D\) to match 3 ids but got \(2, 4\)"):
        EmbeddingPool(np.arange(3), np.zeros((2, 4)))


def test_embedding_pool_take_keeps_the_order_of_the_ids():
    pool = EmbeddingPool(np.array([10, 11, 12]), np.arange(6, dtype=np.float32).reshape(3, 2))
    np.testing.assert_array_equal(pool.take(np.array([12, 99, 10])), [[4, 5], [0, 1]])
