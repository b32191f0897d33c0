"""Input fingerprints (recording/fingerprints.py) and the copies found from them (scores/copies.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dq_plugins.recording.fingerprints import SKETCH_DIM, FingerprintBuffer, fingerprint
from dq_plugins.scores.copies import exact_copy_in, exact_copy_within, find_copies


def test_hash_is_exact_and_ignores_padding_under_the_mask():
    x = torch.randn(4, 3, 5)
    x[2] = x[0]
    hashes, sketch = fingerprint(x)
    assert hashes.dtype == torch.int64 and sketch.shape == (4, SKETCH_DIM)
    assert hashes[0] == hashes[2] and len(set(hashes.tolist())) == 3
    y = x.clone()
    y[1, 0, 0] = torch.nextafter(y[1, 0, 0], torch.tensor(10.0))  # one ulp
    assert fingerprint(y)[0][1] != hashes[1]
    short = torch.tensor([[101, 7, 8, 102]])
    padded = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 8, 7, 102, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])
    h_short, s_short = fingerprint(short, torch.ones_like(short))
    h_pad, s_pad = fingerprint(padded, mask)
    assert h_short[0] == h_pad[0] and torch.equal(s_short[0], s_pad[0])
    assert h_pad[0] != h_pad[1]  # same tokens, another order: not a copy
    assert torch.equal(s_pad[0], s_pad[1])  # ...but the same bag of tokens
    with pytest.raises(ValueError, match=r"attention mask of shape \(2, 6\)"):
        fingerprint(padded, mask[:, :4])


def test_token_sketch_cosines_follow_the_token_count_cosines():
    """Bags of 200 token ids: one with 10% of its tokens replaced (count cosine 0.9) sketches close to the
    original, an unrelated bag (count cosine about 0) does not; over 20 bags, so the 32-d estimate's spread
    (about 1 / sqrt(32) per pair) averages out."""
    generator = torch.Generator().manual_seed(0)
    near, unrelated = [], []
    for _ in range(20):
        bag = torch.randint(1, 30000, (200,), generator=generator)
        changed = bag.clone()
        changed[:20] = torch.randint(1, 30000, (20,), generator=generator)
        other = torch.randint(1, 30000, (200,), generator=generator)
        _, sketch = fingerprint(torch.stack([bag, changed, other]))
        near.append(float(torch.nn.functional.cosine_similarity(sketch[0], sketch[1], dim=0)))
        unrelated.append(float(torch.nn.functional.cosine_similarity(sketch[0], sketch[2], dim=0)))
    assert np.mean(near) > 0.8 and min(near) > 0.6
    assert abs(np.mean(unrelated)) < 0.1 and np.mean(np.abs(unrelated)) < 0.25


def test_buffer_keeps_the_last_write_and_drops_ids_out_of_range():
    buffer = FingerprintBuffer(4, "cpu", stage_rows=2)  # to the host after every second row or so
    a, b = torch.randn(2, 6), torch.randn(2, 6)
    buffer.write(torch.tensor([0, 1]), a)
    buffer.write(torch.tensor([1, 7]), b)  # id 7 is out of range
    buffer.write(torch.tensor([2]), a[:1])
    ids, hashes, sketches = buffer.to_numpy()
    assert ids.tolist() == [0, 1, 2]
    expected, _ = fingerprint(torch.stack([a[0], b[0], a[0]]))
    assert hashes.tolist() == expected.tolist() and sketches.shape == (3, SKETCH_DIM)
    with pytest.raises(ValueError, match="one input row per sample id"):
        buffer.write(torch.tensor([0, 1, 2]), a)


def test_buffer_fingerprints_token_batches_of_different_padded_lengths_alike():
    short = torch.tensor([[101, 7, 8, 102]])
    padded = torch.tensor([[101, 7, 8, 102, 0, 0, 0], [101, 9, 102, 0, 0, 0, 0]])
    mask = (padded != 0).long()
    buffer = FingerprintBuffer(3, "cpu")
    buffer.write(torch.tensor([0]), short, torch.ones_like(short))
    buffer.write(torch.tensor([1, 2]), padded, mask)
    ids, hashes, sketches = buffer.to_numpy()
    assert ids.tolist() == [0, 1, 2] and hashes[0] == hashes[1] != hashes[2]
    np.testing.assert_array_equal(sketches[0], sketches[1])
    with pytest.raises(ValueError, match=r"attention mask of shape \(2, 7\)"):
        buffer.write(torch.tensor([1, 2]), padded, mask[:, :3])


def test_exact_copies_hand_computed():
    hashes = np.array([5, 9, 5, 5, 3])
    ids = np.array([10, 11, 4, 12, 13])
    # group {10, 4, 12}: 4 is the representative (points at 10), the others at 4
    assert exact_copy_within(hashes, ids).tolist() == [4, -1, 10, 4, -1]
    assert exact_copy_in(np.array([3, 7, 5]), hashes, ids).tolist() == [13, -1, 4]


def test_find_copies_exact_near_and_leakage_without_false_positives():
    rng = np.random.default_rng(0)
    train = torch.as_tensor(rng.random((400, 64)), dtype=torch.float32)
    train[300:320] = train[:20]  # exact copies within train
    val = torch.as_tensor(rng.random((100, 64)), dtype=torch.float32)
    val[:10] = train[50:60]  # leaked exact copies
    val[10:20] = train[60:70] + 0.001 * torch.randn(10, 64)  # leaked near copies
    prints = {}
    for split, rows in (("train", train), ("validation", val)):
        buffer = FingerprintBuffer(len(rows), "cpu")
        buffer.write(torch.arange(len(rows)), rows)
        prints[split] = buffer.to_numpy()
    copies = find_copies(prints)
    tr, va = copies["train"], copies["validation"]
    assert tr.copy_of[300:320].tolist() == list(range(20)) and tr.copy_of[:20].tolist() == list(range(300, 320))
    assert (tr.copy_of[20:300] == -1).all() and (tr.copy_kind[300:320] == "exact").all()
    assert (tr.train_copy_of == -1).all()
    assert va.train_copy_of[:10].tolist() == list(range(50, 60)) and (va.train_copy_kind[:10] == "exact").all()
    assert va.train_copy_of[10:20].tolist() == list(range(60, 70)) and (va.train_copy_kind[10:20] == "near").all()
    assert (va.train_copy_similarity[10:20] >= 0.995).all() and (va.train_copy_of[20:] == -1).all()
    exact_only = find_copies(prints, threshold=1.0)["validation"]
    assert (exact_only.train_copy_of[10:20] == -1).all() and (exact_only.train_copy_of[:10] >= 0).all()
    with pytest.raises(ValueError, match="threshold"):
        find_copies(prints, threshold=0.0)


def test_find_copies_uses_a_graph_searched_beforehand_only_for_its_own_rows():
    from dq_plugins.scores.copies import centred_sketches, near_copy_search
    from dq_plugins.scores.neighbors import KnnGraph, knn_cosine

    rng = np.random.default_rng(1)
    rows = torch.as_tensor(rng.random((30, 16)), dtype=torch.float32)
    buffer = FingerprintBuffer(30, "cpu")
    buffer.write(torch.arange(30), rows)
    prints = {"train": buffer.to_numpy()}
    k, method = near_copy_search(30)
    assert (k, method) == (5, "exact")
    indices, sims = knn_cosine(centred_sketches(prints), k, method=method)
    assert (sims[:, 0] < 0.995).all()  # no near copy in random rows
    sims[3, 0] = 0.999  # a graph that says row 3 nearly copies its nearest neighbour
    graph = KnnGraph(indices, sims, method, ranks=2, seconds=0.0)
    found = find_copies(prints, neighbors=(np.arange(30), graph))["train"]
    assert found.copy_of.tolist() == [-1] * 3 + [indices[3, 0]] + [-1] * 26 and found.copy_kind[3] == "near"
    for other in ((np.arange(1, 31), graph), (np.arange(30), graph._replace(method="ivf"))):  # other rows, method
        assert (find_copies(prints, neighbors=other)["train"].copy_of == -1).all()  # searched again


def test_buffer_stops_once_every_id_has_a_fingerprint():
    buffer = FingerprintBuffer(3, "cpu")
    first, later = torch.randn(3, 4), torch.randn(3, 4)
    buffer.write(torch.tensor([0, 1]), first[:2])
    buffer.close_epoch()
    assert buffer.active  # id 2 not seen yet: keep fingerprinting
    buffer.write(torch.tensor([2]), first[2:])
    buffer.close_epoch()
    assert not buffer.active
    buffer.write(torch.tensor([0, 1, 2]), later)  # an augmented later view: the first one is kept
    _, hashes, _ = buffer.to_numpy()
    assert hashes.tolist() == fingerprint(first)[0].tolist()
