"""The fingerprint buffer's host table (recording/fingerprints.py): no rows lost across flushes, the last
write wins, no host sync in a step, device memory that does not grow with the number of samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import forbid_host_sync
from dq_plugins.recording.fingerprints import HOST_BYTES_PER_SAMPLE, SKETCH_DIM, FingerprintBuffer, fingerprint
from dq_plugins.recording.session import DynamicsSession, SessionConfig


def _batches(n: int, batch: int, width: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    rows = torch.randn(n, width, generator=generator)
    return [(order[i:i + batch], rows[order[i:i + batch]]) for i in range(0, n, batch)]


def test_every_row_reaches_the_host_table_across_flushes():
    n = 103
    buffer = FingerprintBuffer(n, "cpu", stage_rows=16)  # several flushes, the last one partial
    batches = _batches(n, 10, 6)
    for ids, rows in batches:
        buffer.write(ids, rows)
    ids, hashes, sketches = buffer.to_numpy()
    assert ids.tolist() == list(range(n))
    expected = np.empty(n, dtype=np.int64)
    expected_sketch = np.empty((n, SKETCH_DIM), dtype=np.float32)
    for batch_ids, rows in batches:
        h, s = fingerprint(rows)
        expected[batch_ids.numpy()], expected_sketch[batch_ids.numpy()] = h.numpy(), s.numpy()
    np.testing.assert_array_equal(hashes, expected)
    np.testing.assert_allclose(sketches, expected_sketch, rtol=1e-5, atol=1e-5)
    buffer.close_epoch()
    assert not buffer.active  # every id seen


def test_last_write_wins_within_a_stage_and_across_flushes():
    a, b, c = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    buffer = FingerprintBuffer(3, "cpu", stage_rows=100)
    buffer.write(torch.tensor([0, 1, 0]), a)  # id 0 twice in one batch: its second row wins
    buffer.write(torch.tensor([1]), b[:1])  # a later batch in the same stage
    buffer.flush()
    buffer.write(torch.tensor([2, 2]), c[:2])  # after a flush
    _, hashes, _ = buffer.to_numpy()
    expected = [fingerprint(a[2:3])[0][0], fingerprint(b[:1])[0][0], fingerprint(c[1:2])[0][0]]
    assert hashes.tolist() == [int(h) for h in expected]


def test_a_step_never_syncs_the_host():
    buffer = FingerprintBuffer(64, "cpu", stage_rows=8)  # a flush every second batch, inside the check
    tokens = FingerprintBuffer(16, "cpu", stage_rows=4)
    ids, rows = torch.arange(4), torch.randn(4, 3, 5)
    with forbid_host_sync():
        for step in range(5):
            buffer.write(ids + 4 * step, rows + step)
            tokens.write(ids, torch.randint(1, 50, (4, 7)), torch.ones(4, 7, dtype=torch.int64))
    assert buffer.to_numpy()[0].tolist() == list(range(20))
    session = DynamicsSession(SessionConfig())
    session.set_capacity("train", 8)
    with forbid_host_sync():  # through the session, as the adapters call it (the buffer made at the first batch)
        for step in range(2):
            session.record_inputs("train", ids + 4 * step, rows)
    assert session.fingerprints["train"].to_numpy()[0].tolist() == list(range(8))
    with pytest.raises(AssertionError, match="host sync"), forbid_host_sync():
        buffer.write(ids, rows[rows[:, 0, 0] > 0])  # a boolean mask is a sync: the check sees it


def test_hash_tells_apart_rows_that_differ_only_in_sign_bits_or_high_bits():
    x = torch.randn(200, 64)
    # -x differs from x in the sign bits alone, round(x) and 2x mostly in the high bits
    variants = torch.cat([x, -x, x * 2, x.round(), -x.round(), torch.zeros(1, 64), -torch.zeros(1, 64)])
    assert torch.unique(fingerprint(variants)[0]).numel() == variants.shape[0]
    assert torch.equal(fingerprint(x)[0][:3], fingerprint(x[:3].clone())[0])  # the same row in another batch


def test_device_memory_does_not_grow_with_the_samples_and_the_host_table_is_counted():
    peaks = {}
    for n in (1_000, 100_000):
        session = DynamicsSession(SessionConfig())
        session.set_capacity("train", n)
        for ids, rows in _batches(256, 64, 16):
            session.record_inputs("train", ids, rows)
        session.close_epoch("train")
        part = session.fingerprints["train"]
        peaks[n] = (part.device_bytes(), part.host_bytes(), session.memory_peaks())
    assert peaks[1_000][0] == peaks[100_000][0] > 0
    assert peaks[100_000][1] - peaks[1_000][1] == 99_000 * HOST_BYTES_PER_SAMPLE
    for n, (device, host, (session_device, session_host)) in peaks.items():
        assert session_device >= device and session_host >= host >= n * HOST_BYTES_PER_SAMPLE


def test_the_fingerprint_table_counts_against_the_memory_budget():
    session = DynamicsSession(SessionConfig(memory_budget_mb=8))
    session.set_capacity("train", 50_000)  # the ledger fits; 50k x 137 bytes of fingerprints do not
    with pytest.raises(MemoryError, match=r"input fingerprints of 50,000 train sample ids.*memory_budget_mb=8"):
        session.record_inputs("train", torch.arange(4), torch.randn(4, 3))
    assert "train" not in session.fingerprints


def test_a_row_with_a_non_finite_value_keeps_its_hash_and_a_zero_sketch():
    rows = torch.randn(3, 4)
    rows[1, 2], rows[2, 0] = float("nan"), float("inf")
    buffer = FingerprintBuffer(3, "cpu")
    buffer.write(torch.arange(3), rows)
    _, hashes, sketches = buffer.to_numpy()
    assert hashes.tolist() == fingerprint(rows)[0].tolist() and len(set(hashes.tolist())) == 3
    assert np.isfinite(sketches).all() and not sketches[1:].any() and sketches[0].any()


def test_hash_matches_the_documented_formula_for_every_input_dtype():
    """``sum_k v_k * m_k mod 2^64`` from the module doc, computed in numpy: the fast path changes no bits."""
    from dq_plugins.recording.fingerprints import hash_multipliers

    def reference(rows: torch.Tensor) -> np.ndarray:
        rows = rows.reshape(rows.shape[0], -1)
        if rows.is_floating_point():
            rows = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
            values = rows.contiguous().view(torch.int32).numpy().astype(np.int64)
        else:
            values = rows.numpy().astype(np.int64)
        multipliers = hash_multipliers(values.shape[1]).numpy().astype(np.uint64)
        with np.errstate(over="ignore"):
            return (values.astype(np.uint64) * multipliers).sum(axis=1, dtype=np.uint64).view(np.int64)

    gen = torch.Generator().manual_seed(0)
    for rows in (torch.randn(64, 784, generator=gen) * 1e6, torch.randn(5, 3, 8, 8, generator=gen).double(),
                 torch.randn(7, 33, generator=gen).half(), torch.randint(-2**62, 2**62, (9, 40), generator=gen),
                 torch.randint(0, 30000, (9, 40), generator=gen, dtype=torch.int32)):
        hashes, _ = fingerprint(rows)
        np.testing.assert_array_equal(hashes.numpy(), reference(rows), err_msg=str(rows.dtype))
