"""Recording overhead against an earlier revision of the library, measured in the same run.

Issue 13 asks for a recording overhead "no worse than today" (the code before the scale work).
An overhead share measured on another day is not comparable: the same code measures 2.6% or 3.7% on
the CNN depending on the shared machine's state (``benchmarks/RESULTS.md``). So this script runs
``benchmarks/overhead.py`` on both codes back to back, in alternating order, on the same machine:

- *against*: the library (``dq_plugins/``) of ``--against`` (default :data:`PRE_SCALE`), taken with
  ``git archive`` into a temporary folder, measured by **today's** benchmark code (``benchmarks/``,
  ``recipes/``), so both sides are timed with the same hooks list and clocks, with default options;
- *current*: the working tree, with default options and with ``fingerprints=False`` (the input
  fingerprints of issue 17, which the earlier code does not have).

Each round runs the three in turn (the order reversed every other round); each run is a separate
process (``python -m benchmarks.overhead --no-write --json``) so nothing is shared between them. Reported
per model: the median over rounds of the hooks' share of main-thread CPU time and of wall time, and the
difference to *against*. Run from the repository root::

    .venv/bin/python -m benchmarks.overhead_against                     # light and heavy, 3 pairs, 2 rounds
    .venv/bin/python -m benchmarks.overhead_against --models hf-light --pairs 2 --rounds 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import REPO, git_revision, machine_line, write_section

PRE_SCALE = "4f2091c"
"""The main of the fourth session's start, before the scale work (issue 13): its overhead is "today" in the issue."""

SECTION = "overhead_against"
"""The RESULTS.md section of the Lightning models; the Hugging Face models' (when only they run) is ``SECTION + "_hf"``."""
VARIANTS = ("against", "current", "current, fingerprints=False")


def extract_library(revision: str, into: Path) -> Path:
    """A folder importable as the repository root: ``dq_plugins/`` of ``revision`` and links to today's
    ``benchmarks/`` and ``recipes/``. Raises ``RuntimeError`` when git cannot produce the revision."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision, "dq_plugins"], cwd=REPO,
                             capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(f"git cannot archive `dq_plugins` at {revision!r}: {archive.stderr.decode().strip()}. "
                           "HINT: run from a clone with the full history (not a shallow clone), or pass --against.")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    for name in ("benchmarks", "recipes"):
        (into / name).symlink_to(REPO / name, target_is_directory=True)
    return into


def run_overhead(root: Path, models: list[str], pairs: int, extra: list[str], out: Path) -> list[dict[str, Any]]:
    """One ``benchmarks.overhead`` process with ``root`` first on the import path; its ``--json`` rows."""
    command = [sys.executable, "-m", "benchmarks.overhead", "--models", *models, "--pairs", str(pairs),
               "--threads", str(torch.get_num_threads()),
               "--no-write", "--json", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{shlex.join(command)}` in {root} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def share(row: dict[str, Any]) -> float:
    """The hooks' share of training time: main-thread CPU where measured (Lightning), else wall (HF)."""
    cpu = row.get("cpu_fraction")
    return float(cpu) if cpu is not None and cpu == cpu else float(row["fraction"])


def report(runs: dict[str, list[list[dict[str, Any]]]], models: list[str], against: str, command: str,
           wall: float, reading: str) -> str:
    family = "Hugging Face" if all(m.startswith("hf-") for m in models) else "Lightning"
    lines = [
        f"## Overhead against the code before the scale work, {family} (`benchmarks/overhead_against.py`)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}; revision {git_revision()} against {against}; wall time "
        f"{wall / 60:.1f} min.",
        f"- Machine: {machine_line()}.",
        f"- Command: `{command}`",
        f"- {len(runs['current'])} rounds of three processes of `benchmarks/overhead.py` (the library of {against} "
        "measured by today's benchmark code; today's library with default options; the same with "
        "`fingerprints=False`), order reversed every other round. *Share* = the hooks' share of main-thread CPU "
        "time in training (Lightning models) or of wall time (HF models), the median of each run's pairs; the "
        "table gives the median over rounds and, in brackets, each round's value.",
        "",
        "| model | " + " | ".join(VARIANTS) + " | current - against | without fingerprints - against |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        values = {v: [share(next(r for r in rnd if r["model"] == model)) for rnd in runs[v]] for v in VARIANTS}
        med = {v: statistics.median(values[v]) for v in VARIANTS}
        cells = [f"{med[v]:.2%} [{', '.join(f'{x:.2%}' for x in values[v])}]" for v in VARIANTS]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {med['current'] - med['against']:+.2%} | "
                     f"{med['current, fingerprints=False'] - med['against']:+.2%} |")
    lines += ["", "### Reading", "", reading.strip() or "(none: pass `--reading FILE`)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default=PRE_SCALE, help=f"git revision to compare with (default {PRE_SCALE})")
    parser.add_argument("--models", nargs="+", default=["light", "heavy"],
                        choices=("light", "heavy", "hf-light", "hf-heavy"))
    parser.add_argument("--pairs", type=int, default=3, help="interleaved pairs per run (see benchmarks.overhead)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of every run (benchmarks.overhead)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--reading", type=Path, help="markdown file holding the 'Reading' paragraph to include")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # as the runs do; the machine line reports it
    command = "python -m benchmarks.overhead_against " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.perf_counter()
    runs: dict[str, list[list[dict[str, Any]]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="dq_overhead_against_") as tmp:
        old_root = extract_library(args.against, Path(tmp) / "against")
        setups = {
            "against": (old_root, []),
            "current": (REPO, []),
            "current, fingerprints=False": (REPO, ["--no-fingerprints"]),
        }
        for round_index in range(args.rounds):
            order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                root, extra = setups[variant]
                rows = run_overhead(root, args.models, args.pairs, extra, Path(tmp) / "rows.json")
                runs[variant].append(rows)
                print(f"round {round_index} {variant}: " + ", ".join(f"{r['model']} {share(r):.2%}" for r in rows),
                      flush=True)
    text = report(runs, args.models, args.against, command, time.perf_counter() - started,
                  args.reading.read_text() if args.reading else "")
    print(text)
    if not args.no_write:
        write_section(SECTION + ("_hf" if all(m.startswith("hf-") for m in args.models) else ""), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
