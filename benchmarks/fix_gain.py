"""Fix gain: how much of the accuracy lost to label noise does fixing the flagged rows win back?

    python -m benchmarks.fix_gain            # MNIST-5k (20% symmetric, 20% pair) and TREC-6 (20% symmetric), 3 seeds
    python -m benchmarks.fix_gain --quick    # one seed, MNIST-5k symmetric only, fewer epochs: a smoke run

Each case is :func:`recipes/fix_and_retrain.run_case`: hold out a clean test set, flip 20% of the
train labels, train an MLP with ``DataQualityCallback`` (the "no fix" model), then
``dq_plugins.fix(..., "drop")`` and, separately, ``"relabel"``, retrain from scratch on each, and on
three references: the noisy set minus as many *random* rows as the drop removed, the noisy set minus
exactly the flipped rows (the best a drop can do), and the clean labels (the ceiling). Accuracy is on the clean held-out test set. "Gap recovered" is
``(acc_fixed - acc_noisy) / (acc_clean - acc_noisy)``, computed per seed, then averaged.
TREC-6 is text: the MLP trains on TF-IDF features (2,000 terms, fitted on the train rows).

Writes the ``fix_gain`` section of ``benchmarks/RESULTS.md``; progress goes to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
import warnings

import numpy as np
import torch

from benchmarks._common import git_revision, machine_line, quiet_lightning, write_section
from recipes.common import RecipeConfig
from recipes.fix_and_retrain import CONDITIONS, CaseResult, run_case

CASES: tuple[tuple[str, str], ...] = (("mnist5k", "symmetric"), ("mnist5k", "pair"), ("trec6", "symmetric"))
"""(data set, noise kind) of the full run; the noise rate is 20% in every case."""

LABELS = {"noisy": "no fix (noisy labels)", "drop": "drop flagged", "relabel": "relabel flagged",
          "random_drop": "drop as many random rows", "oracle_drop": "drop exactly the flipped rows (oracle)",
          "clean": "clean labels (ceiling)"}


def mean_std(values: list[float]) -> str:
    array = np.asarray(values, dtype=np.float64)
    if np.isnan(array).all():
        return "-"
    if len(array) == 1:
        return f"{array[0]:.4f}"
    return f"{np.nanmean(array):.4f} ± {np.nanstd(array, ddof=1):.4f}"


def percent_mean_std(values: list[float]) -> str:
    array = np.asarray(values, dtype=np.float64) * 100
    if np.isnan(array).all():
        return "-"
    if len(array) == 1:
        return f"{array[0]:.0f}%"
    return f"{np.nanmean(array):.0f}% ± {np.nanstd(array, ddof=1):.0f}%"


def case_table(results: list[CaseResult]) -> str:
    lines = ["| trained on | clean test accuracy | gap recovered |", "|---|---|---|"]
    for condition in CONDITIONS:
        accuracy = mean_std([r.accuracy[condition] for r in results])
        recovered = "" if condition in ("noisy", "clean") else percent_mean_std([r.recovered(condition) for r in results])
        lines.append(f"| {LABELS[condition]} | {accuracy} | {recovered} |")
    first = results[0]
    lines.append("")
    lines.append(
        f"Per seed: {first.flipped} labels flipped; drop removed "
        f"{', '.join(str(r.rows_dropped) for r in results)} rows, of which "
        f"{', '.join(str(r.flagged_true) for r in results)} truly flipped; relabel changed "
        f"{', '.join(str(r.rows_relabelled) for r in results)} labels, "
        f"{', '.join(str(r.relabelled_correctly) for r in results)} of them to the true class."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, MNIST-5k symmetric, 5 epochs; no RESULTS.md.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--cases", nargs="*", default=None, metavar="DATASET:KIND",
                        help="subset of the cases, e.g. mnist5k:pair (default: all).")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()
    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    cases = [tuple(c.split(":")) for c in args.cases] if args.cases else list(CASES)
    seeds, epochs = (1, 5) if args.quick else (args.seeds, args.epochs)
    if args.quick:
        cases = cases[:1]
    store = tempfile.mkdtemp(prefix="dq_fix_gain_")
    base = RecipeConfig(recipe="lightning", noise_rate=0.2, epochs=epochs, val_fraction=0.2,
                        tracking_uri=f"sqlite:///{store}/mlflow.db", experiment_name="fix_gain")
    os.chdir(store)  # MLflow keeps the artifacts of the runs under ./mlruns
    started = time.time()
    sections = []
    ceiling: dict[tuple[str, int], float] = {}
    for dataset, kind in cases:
        results = []
        for seed in range(seeds):
            t0 = time.time()
            cfg = dataclasses.replace(base, dataset=dataset, noise_kind=kind, seed=seed)
            # the clean ceiling depends on the data set and seed only (same split, same initialisation)
            known = ceiling.get((dataset, seed))
            result = run_case(cfg, conditions=tuple(c for c in CONDITIONS if c != "clean" or known is None), quiet=True)
            if known is not None:
                result.accuracy["clean"] = known
            ceiling[(dataset, seed)] = result.accuracy["clean"]
            results.append(result)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.accuracy.items())
            print(f"[{time.time() - started:6.0f}s] {dataset} {kind} seed {seed}: {shown} ({time.time() - t0:.0f}s)",
                  flush=True)
        title = f"{dataset}, 20% {kind} noise"
        sections.append(f"#### {title}\n\n{case_table(results)}")
        print(f"\n{title}\n{case_table(results)}\n", flush=True)
    if args.quick:
        return
    body = "\n".join([
        "### Fix gain: drop or relabel the flagged rows, retrain, test on clean labels",
        "",
        f"`python -m benchmarks.fix_gain` ({seeds} seeds, mean ± std; {epochs} epochs; an MLP 784|2000 -> 256 -> C "
        "with dropout 0.2, Adam 1e-3, batch 128; 20% of the rows held out as the clean test set; "
        "MNIST-5k pixels, TREC-6 TF-IDF). The no-fix model is the one trained with the callback. "
        "Gap recovered = (fixed - no fix) / (clean - no fix), per seed.",
        "",
        *[s + "\n" for s in sections],
        f"Machine: {machine_line()}. Revision {git_revision()}. Wall time {time.time() - started:.0f} s.",
    ])
    write_section("fix_gain", body)
    print("wrote the fix_gain section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
