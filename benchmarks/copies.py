"""Input copies: recall and false positives of the fingerprints on planted copies, and their cost.

For each image set (MNIST-5k and digits, as the callbacks see them: one float row per sample) a
random 80/20 split into train and validation is drawn from the seed, then 40 train rows are
overwritten by exact copies of 40 other train rows (within-train copies), 40 validation rows by
exact copies of train rows (leakage) and 40 more validation rows by near copies (the train row
plus Gaussian noise of 1% of the data's standard deviation). Every row is fingerprinted by
:class:`dq_plugins.recording.fingerprints.FingerprintBuffer` in batches of 128, as the callbacks do,
and :func:`dq_plugins.scores.copies.find_copies` reports the copies. False positives are rows
reported as a copy (within the split, or of a train row) that were not planted.

Run from the repository root::

    .venv/bin/python -m benchmarks.copies            # seeds 0 1 2, writes the `copies` section of RESULTS.md
    .venv/bin/python -m benchmarks.copies --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time

import numpy as np
import torch

from benchmarks._common import git_revision, machine_line, write_section
from dq_plugins.recording.fingerprints import FingerprintBuffer
from dq_plugins.scores.copies import find_copies
from recipes.common import load_dataset

SECTION = "copies"
PLANTED = 40
BATCH = 128


def fingerprint_rows(rows: torch.Tensor) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float]:
    """The split's fingerprints written batch by batch, and the seconds spent writing them."""
    buffer = FingerprintBuffer(len(rows), "cpu")
    start = time.perf_counter()
    for first in range(0, len(rows), BATCH):
        ids = torch.arange(first, min(first + BATCH, len(rows)))
        buffer.write(ids, rows[ids])
    seconds = time.perf_counter() - start
    return buffer.to_numpy(), seconds


def one_run(name: str, seed: int) -> dict[str, float]:
    features = torch.as_tensor(load_dataset(name).features, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features))
    cut = int(0.8 * len(features))
    train, val = features[order[:cut]].clone(), features[order[cut:]].clone()
    sources = rng.choice(len(train), 3 * PLANTED, replace=False)
    originals, copies, leaked = sources[:PLANTED], sources[PLANTED:2 * PLANTED], sources[2 * PLANTED:]
    train[copies] = train[originals]
    val[:PLANTED] = train[leaked]
    val[PLANTED:2 * PLANTED] = train[leaked] + torch.randn(PLANTED, train.shape[1]) * 0.01 * features.std()
    (train_prints, t1), (val_prints, t2) = fingerprint_rows(train), fingerprint_rows(val)
    start = time.perf_counter()
    found = find_copies({"train": train_prints, "validation": val_prints})
    analysis = time.perf_counter() - start
    tr, va = found["train"], found["validation"]
    planted_train = np.zeros(len(train), bool)
    planted_train[originals] = planted_train[copies] = True
    return {
        "within_recall": float(np.mean(tr.copy_of[copies] == originals)),
        "within_fp": float((tr.copy_of[~planted_train] >= 0).mean()),
        "exact_leak_recall": float(np.mean(va.train_copy_of[:PLANTED] == leaked)),
        "near_leak_recall": float(np.mean(va.train_copy_of[PLANTED:2 * PLANTED] == leaked)),
        "leak_fp": float((va.train_copy_of[2 * PLANTED:] >= 0).mean()),
        "us_per_row": 1e6 * (t1 + t2) / (len(train) + len(val)),
        "analysis_s": analysis,
        "rows": float(len(features)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [
        "## Input copies (`benchmarks/copies.py`)",
        "",
        f"- Date: {dt.date.today().isoformat()}; revision {git_revision()}.",
        f"- Machine: {machine_line()}.",
        "- Command: `python -m benchmarks.copies " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])) + "`",
        f"- Per seed: 80/20 train/validation split; {PLANTED} exact copies within train, {PLANTED} exact and "
        f"{PLANTED} near (noise 1% of the data's std) copies of train rows in validation; fingerprints written in "
        f"batches of {BATCH} on the CPU (1 thread). Mean over seeds {', '.join(map(str, args.seeds))} "
        "[min, max]. FP = share of the rows that were not planted reported as a copy.",
        "",
        "| data | rows | within-train recall | within-train FP | train->val exact recall | train->val near recall "
        "| train->val FP | fingerprint (us per row) | find_copies (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("mnist5k", "digits"):
        runs = [one_run(name, seed) for seed in args.seeds]

        def cell(key: str, fmt: str = ".3f") -> str:
            values = [r[key] for r in runs]
            return f"{np.mean(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"

        lines.append(f"| {name} | {int(runs[0]['rows'])} | {cell('within_recall')} | {cell('within_fp', '.4f')} | "
                     f"{cell('exact_leak_recall')} | {cell('near_leak_recall')} | {cell('leak_fp', '.4f')} | "
                     f"{cell('us_per_row', '.1f')} | {cell('analysis_s', '.2f')} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
