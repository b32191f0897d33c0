"""Overhead benchmark: what the callback costs during training, and at the end of fit.

Two models on MNIST-5k (784 floats per image, 10 classes), trained on the CPU with Lightning:

- *light*: an MLP 784-128-10 whose training step takes a few milliseconds;
- *heavy*: a small CNN (2 x conv 3x3 + max-pool, 16 and 32 channels, then a linear layer).

For each model, ``--pairs`` pairs of fits run interleaved in one process, alternating which of the
pair goes first (with / without :class:`~dq_plugins.lightning.DataQualityCallback`), each from the
same seed. Reported:

- the wall-clock ratio of training time with / without the callback (median over pairs), where
  training time is ``trainer.fit`` minus the callback's ``on_fit_start`` (opens the MLflow run)
  and ``on_fit_end`` (the analysis), which are reported on their own;
- the time spent inside the callback's per-batch and per-epoch hooks as a fraction of that
  training time (each hook wrapped with ``time.perf_counter``; CPU ops are synchronous, so this is
  the hooks' real cost). On a shared machine this is steadier than the wall-clock ratio;
- the end-of-fit time (``on_fit_end``: analysis, parquet, figure, MLflow upload).

Run from the repository root::

    .venv/bin/python benchmarks/overhead.py            # full run, writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/overhead.py --quick    # smoke run, no write
    .venv/bin/python benchmarks/overhead.py --profile  # also cProfile the light model's hooks
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import pstats
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MLP,
    RESULTS_PATH,
    SmallCNN,
    TensorDictDataset,
    batch_loader,
    git_revision,
    machine_line,
    make_trainer,
    quiet_lightning,
    use_recipes_common,
    working_directory,
    write_section,
)

use_recipes_common()

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from common import load_dataset  # noqa: E402
from dq_plugins.lightning import DataQualityCallback  # noqa: E402

SECTION = "overhead"
TARGET = 0.03
"""The callback's hooks should cost under 3% of training time on the light model on CPU."""

TRAINING_HOOKS = (
    "setup", "on_train_start", "on_train_batch_end", "on_train_epoch_end",
    "on_validation_batch_end", "on_validation_epoch_end", "teardown",
)
"""Hooks that run while training; their summed time is the callback's training overhead."""
FIT_START, FIT_END = "on_fit_start", "on_fit_end"
CALLBACK_OPTIONS: dict[str, Any] = {}
"""Extra keyword arguments of the callback (``--no-embeddings`` sets ``embeddings=False``)."""

THREAD_RESETS: list[tuple[int, int]] = []
"""(threads found after a fit, threads set before it), one entry per fit that changed torch's thread count."""

SESSION_PARTS = ("record", "record_embeddings", "close_epoch")
"""Session methods called from the hooks, timed on their own to show where the hook time goes."""


class TimedCallback(DataQualityCallback):
    """:class:`DataQualityCallback` whose hooks add their wall time to ``self.seconds[hook]``.

    ``self.profiler``, when set to a ``cProfile.Profile``, is enabled inside the training hooks only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.profiler: cProfile.Profile | None = None
        # Inside the hooks: the per-sample record (ledger) and the embedding capture, timed apart.
        for method in SESSION_PARTS:
            if hasattr(self.session, method):
                setattr(self.session, method, self._timed_part(method, getattr(self.session, method)))

    def _timed_part(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[f"session.{name}"] += time.perf_counter() - start

        return timed


def _timed(name: str) -> Callable[..., Any]:
    parent = getattr(DataQualityCallback, name)
    profiled = name in TRAINING_HOOKS

    def hook(self: TimedCallback, *args: Any, **kwargs: Any) -> Any:
        profiler = self.profiler if profiled else None
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        try:
            return parent(self, *args, **kwargs)
        finally:
            if profiler is not None:
                profiler.disable()
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    hook.__name__ = name
    return hook


for _name in (*TRAINING_HOOKS, FIT_START, FIT_END):
    setattr(TimedCallback, _name, _timed(_name))


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    make: Callable[[], pl.LightningModule]
    epochs: int
    batch_size: int


def workloads(quick: bool) -> list[Workload]:
    return [
        Workload("light", "MLP 784-128-10", lambda: MLP(784, 10, (128,)), 2 if quick else 5, 64),
        Workload("heavy", "CNN conv16-conv32-linear", lambda: SmallCNN(10, 16), 1 if quick else 2, 64),
    ]


@dataclass
class Fit:
    with_callback: bool
    total: float
    training: float
    hooks: float
    fit_start: float
    fit_end: float
    steps: int
    per_hook: dict[str, float]


def one_fit(work: Workload, dataset: TensorDictDataset, with_callback: bool, tracking_uri: str, seed: int,
            profiler: cProfile.Profile | None = None) -> Fit:
    pl.seed_everything(seed, verbose=False)
    module = work.make()
    loader = batch_loader(dataset, work.batch_size, shuffle=True, seed=seed)
    callback = TimedCallback(tracking_uri=tracking_uri, experiment_name="overhead", **CALLBACK_OPTIONS) if with_callback else None
    if callback is not None:
        callback.profiler = profiler
    trainer = make_trainer(work.epochs, [callback] if callback else [])
    threads = torch.get_num_threads()
    start = time.perf_counter()
    trainer.fit(module, loader)
    total = time.perf_counter() - start
    if torch.get_num_threads() != threads:
        # The end-of-fit analysis (UMAP's numba threading layer) resets torch's intra-op threads;
        # put them back so the next fit of the pair runs under the same conditions.
        THREAD_RESETS.append((torch.get_num_threads(), threads))
        torch.set_num_threads(threads)
    seconds = dict(callback.seconds) if callback else {}
    fit_start, fit_end = seconds.get(FIT_START, 0.0), seconds.get(FIT_END, 0.0)
    hooks = sum(seconds.get(name, 0.0) for name in TRAINING_HOOKS)
    if callback is not None and callback.result is None:
        raise RuntimeError(f"{work.name}: the callback produced no result (see the warnings above).")
    parts = {k: v for k, v in seconds.items() if k in TRAINING_HOOKS or k.startswith("session.")}
    return Fit(with_callback, total, total - fit_start - fit_end, hooks, fit_start, fit_end,
               int(trainer.global_step), parts)


def measure(work: Workload, dataset: TensorDictDataset, pairs: int, tracking_uri: str) -> dict[str, Any]:
    """Warm up once, then ``pairs`` interleaved (with, without) pairs, alternating the order."""
    one_fit(work, dataset, True, tracking_uri, seed=0)  # warm-up: imports, MLflow experiment, allocator
    fits: list[tuple[Fit, Fit]] = []
    for i in range(pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        done = {flag: one_fit(work, dataset, flag, tracking_uri, seed=i) for flag in order}
        fits.append((done[True], done[False]))
        print(f"  {work.name} pair {i}: with {done[True].training:.2f}s (hooks {done[True].hooks:.3f}s), "
              f"without {done[False].training:.2f}s", flush=True)
    ratios = [w.training / wo.training for w, wo in fits]
    fractions = [w.hooks / w.training for w, _ in fits]
    per_hook: dict[str, list[float]] = defaultdict(list)
    for w, _ in fits:
        for name, value in w.per_hook.items():
            per_hook[name].append(value / w.training)
    steps = fits[0][0].steps
    return {
        "work": work,
        "steps": steps,
        "step_ms_without": statistics.median(wo.training for _, wo in fits) / steps * 1e3,
        "hook_ms_per_step": statistics.median(w.hooks for w, _ in fits) / steps * 1e3,
        "train_with": statistics.median(w.training for w, _ in fits),
        "train_without": statistics.median(wo.training for _, wo in fits),
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "fraction": statistics.median(fractions),
        "fraction_range": (min(fractions), max(fractions)),
        "per_hook": {name: statistics.median(values) for name, values in per_hook.items()},
        "fit_start": statistics.median(w.fit_start for w, _ in fits),
        "fit_end": statistics.median(w.fit_end for w, _ in fits),
    }


def profile_light(work: Workload, dataset: TensorDictDataset, tracking_uri: str, top: int = 25) -> str:
    """cProfile of the training hooks only (the profiler is enabled inside them), top by own time."""
    profiler = cProfile.Profile()
    one_fit(work, dataset, True, tracking_uri, seed=0, profiler=profiler)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def report(results: list[dict[str, Any]], pairs: int, command: str, wall: float, num_samples: int,
           reading: str) -> str:
    lines = [
        "## Overhead (`benchmarks/overhead.py`)",
        "",
        f"- Date: {dt.date.today().isoformat()}; revision {git_revision()}; wall time {wall / 60:.1f} min.",
        f"- Machine: {machine_line()}.",
        f"- Command: `{command}`",
        f"- Data: MNIST-5k ({num_samples} samples, in memory, one indexing op per batch), no validation loader, "
        f"{pairs} interleaved pairs per model (order alternating), medians; [min, max] over pairs in brackets. "
        f"Callback options: {CALLBACK_OPTIONS or 'defaults'}.",
        "- *Training time* = `trainer.fit` minus the callback's `on_fit_start` (opens the MLflow run) and "
        "`on_fit_end` (analysis + logging), both shown on their own. *Hooks* = time inside the callback's "
        "training hooks (`on_train_batch_end`, `on_train_epoch_end`, `on_train_start`, `setup`, ...).",
        "",
        "| model | steps per fit | step without callback (ms) | hooks per step (ms) | training with / without | "
        f"hooks / training time | target < {TARGET:.0%} | on_fit_start (s) | end-of-fit analysis (s) |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in results:
        work = r["work"]
        target = ("met" if r["fraction"] < TARGET else "missed") if work.name == "light" else "n/a"
        lines.append(
            f"| {work.name}: {work.description}, batch {work.batch_size}, {work.epochs} epochs | {r['steps']} | "
            f"{r['step_ms_without']:.2f} | {r['hook_ms_per_step']:.3f} | {r['ratio']:.3f} "
            f"[{r['ratio_range'][0]:.3f}, {r['ratio_range'][1]:.3f}] | {r['fraction']:.2%} "
            f"[{r['fraction_range'][0]:.2%}, {r['fraction_range'][1]:.2%}] | {target} | {r['fit_start']:.2f} | "
            f"{r['fit_end']:.2f} |"
        )
    lines += ["", "Share of training time per hook, and of the session calls made inside them (median):", ""]
    for r in results:
        shares = ", ".join(f"`{k}` {v:.2%}" for k, v in sorted(r["per_hook"].items(), key=lambda kv: -kv[1]))
        lines.append(f"- {r['work'].name}: {shares}")
    if THREAD_RESETS:
        found, wanted = THREAD_RESETS[0]
        lines += ["", f"Side effect seen: after {len(THREAD_RESETS)} of the fits with the callback, torch's intra-op "
                  f"thread count was {found} instead of the {wanted} set before `trainer.fit`; the script restores it "
                  "after each fit so that the pairs stay comparable."]
    lines += ["", "### Reading", "", reading.strip() or "(none: pass `--reading FILE`)"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 pair, 1-2 epochs; prints only")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved (with, without) pairs per model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine more threads oversubscribe)")
    parser.add_argument("--models", nargs="+", choices=("light", "heavy"), default=["light", "heavy"],
                        help="workloads to measure (default: both)")
    parser.add_argument("--no-embeddings", action="store_true",
                        help="callback with embeddings=False: the per-sample record alone")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the light model's hooks")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS_PATH.name}")
    parser.add_argument("--reading", type=Path, help="markdown file holding the 'Reading' paragraph to include")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    torch.set_num_threads(args.threads)
    pairs = 1 if args.quick else args.pairs
    if args.no_embeddings:
        CALLBACK_OPTIONS["embeddings"] = False
    data = load_dataset("mnist5k")
    dataset = TensorDictDataset(data.features, data.labels)
    command = "python benchmarks/overhead.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="dq_overhead_") as tmp, working_directory(tmp):
        tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        works = [work for work in workloads(args.quick) if work.name in args.models]
        for work in works:
            results.append(measure(work, dataset, pairs, tracking_uri))
        if args.profile:
            print(profile_light(workloads(args.quick)[0], dataset, tracking_uri))
    wall = time.perf_counter() - started
    reading = args.reading.read_text() if args.reading else ""
    text = report(results, pairs, command, wall, len(dataset), reading)
    print(text)
    if not (args.quick or args.no_write):
        write_section(SECTION, text)
        print(f"wrote the `{SECTION}` section of {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
