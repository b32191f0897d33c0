"""Cost of sparse ids: the per-batch recording with ids ``10**12 + 7k`` (one slot per id, found by a binary
search on the device) against the same batches with ids ``0..N-1`` (no map), in one process.

For each shape, the same random batches go through :meth:`DynamicsSession.to_slots` and
:meth:`DynamicsSession.record` (what the adapters call per batch), once with dense ids and once with
sparse ids, alternating over ``--repeats`` rounds; reported: the median time per batch of each, their
ratio, and the lookup alone (``to_slots``) per batch. Memory: the capacity (slots) of the sparse split is
its number of distinct ids, whatever the largest id.

Run from the repository root::

    .venv/bin/python -m benchmarks.sparse_ids            # prints the table (paste it into RESULTS.md)
    .venv/bin/python -m benchmarks.sparse_ids --quick    # smaller
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from dq_plugins.recording.session import DynamicsSession, SessionConfig

SHAPES = ((5_000, 10, 64), (100_000, 100, 1024))
"""(samples, classes, batch): the light overhead model's shape (MNIST-5k, batch 64), and a larger one."""


def _epoch_seconds(session: DynamicsSession, ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                   batch: int, lookup_only: bool = False) -> float:
    """Seconds for one epoch of ``len(ids) // batch`` batches through ``to_slots`` (+ ``record``)."""
    start = time.perf_counter()
    for first in range(0, ids.numel() - batch + 1, batch):
        rows = slice(first, first + batch)
        slots = session.to_slots("train", ids[rows])
        if not lookup_only:
            session.record("train", 0, slots, labels[rows], logits[rows])
    if not lookup_only:
        session.ledgers["train"].flush()
    return time.perf_counter() - start


def measure(samples: int, classes: int, batch: int, repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(samples, generator=generator)
    labels = torch.randint(0, classes, (samples,), generator=generator)[order]
    logits = torch.randn(samples, classes, generator=generator)
    dense_ids = order
    sparse_ids = 10**12 + 7 * order
    with tempfile.TemporaryDirectory() as folder:
        sessions = {}
        for name, ids in (("dense", dense_ids), ("sparse", sparse_ids)):
            session = DynamicsSession(SessionConfig(history_dir=folder))
            session.set_sample_ids("train", ids.numpy())
            _epoch_seconds(session, ids, labels, logits, batch)  # warm-up: allocations, first-batch checks
            sessions[name] = (session, ids)
        times: dict[str, list[float]] = {"dense": [], "sparse": [], "lookup": []}
        for round_ in range(repeats):
            for name in ("dense", "sparse") if round_ % 2 == 0 else ("sparse", "dense"):
                session, ids = sessions[name]
                times[name].append(_epoch_seconds(session, ids, labels, logits, batch))
            times["lookup"].append(_epoch_seconds(sessions["sparse"][0], sparse_ids, labels, logits, batch, True))
        steps = samples // batch
        capacity = sessions["sparse"][0].capacities["train"]
    dense, sparse, lookup = (statistics.median(times[k]) / steps * 1e3 for k in ("dense", "sparse", "lookup"))
    return {"dense_ms": dense, "sparse_ms": sparse, "ratio": sparse / dense, "lookup_ms": lookup,
            "capacity": capacity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small shape only, 3 rounds")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = SHAPES[:1] if args.quick else SHAPES
    print(f"torch {torch.__version__}, CPU, 1 thread; median of {3 if args.quick else args.repeats} epochs\n")
    print("| samples x classes, batch | record per batch, ids 0..N-1 | ids 10^12 + 7k | ratio | lookup alone | slots |")
    print("|---|---|---|---|---|---|")
    for samples, classes, batch in shapes:
        r = measure(samples, classes, batch, 3 if args.quick else args.repeats)
        print(f"| {samples:,} x {classes}, {batch} | {r['dense_ms']:.3f} ms | {r['sparse_ms']:.3f} ms | "
              f"{r['ratio']:.2f} | {r['lookup_ms']:.3f} ms | {r['capacity']:,} |")
    print(f"\nLargest id {10**12 + 7 * (SHAPES[-1][0] - 1):,}; the sparse split holds one slot per distinct id.")


if __name__ == "__main__":
    main()
