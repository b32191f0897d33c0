"""Quality over quantity: test accuracy against the share of training data kept, select_subset vs random.

    python -m benchmarks.subset           # MNIST-5k and TREC-6 (TF-IDF), 20% symmetric noise, 3 seeds
    python -m benchmarks.subset --quick   # one seed, MNIST-5k, 5 epochs: a smoke run

Per seed: hold out a clean test set (20%), flip 20% of the train labels, train the MLP with
``DataQualityCallback`` (this is also the 100% point), then for each fraction (30%, 50%, 70%) train
from scratch on ``dq_plugins.select_subset(run_id, fraction)`` and on a uniformly random subset of the
same size, and test on the clean labels; also ``skip_hardest=0`` (keep the hardest first), the ablation
of the hard cutoff. Same model and epochs as ``benchmarks/fix_gain.py``.

Writes the ``subset`` section of ``benchmarks/RESULTS.md``.
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
from recipes.common import RecipeConfig, inject_noise, load_dataset, stratified_split
from recipes.fix_and_retrain import TFIDF_FEATURES, features_of, train_and_test

FRACTIONS: tuple[float, ...] = (0.3, 0.5, 0.7)

ROWS: tuple[tuple[str, str, bool], ...] = (
    ("select_subset", "select_subset (default, skip_hardest=0.2): test accuracy", False),
    ("hardest_first", "select_subset, skip_hardest=0 (hardest first): test accuracy", False),
    ("random", "random subset: test accuracy", False),
    ("noise_in_subset", "select_subset (default): flipped labels kept", True),
    ("noise_hardest_first", "select_subset, skip_hardest=0: flipped labels kept", True),
    ("random_noise", "random subset: flipped labels kept", True),
)
"""(key, row title, shown as a percentage) of the result table."""
DATASETS: tuple[str, ...] = ("mnist5k", "trec6")


def run_seed(cfg: RecipeConfig, fractions: tuple[float, ...]) -> dict[str, dict[float, float]]:
    """Clean test accuracy per method and fraction for one seed; also what the selection dropped."""
    import dq_plugins
    from dq_plugins.lightning import DataQualityCallback

    data = load_dataset(cfg.dataset)
    train_idx, test_idx = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
    x_train, x_test = features_of(data, train_idx, test_idx, TFIDF_FEATURES)
    noisy, flipped = inject_noise(data.labels[train_idx], cfg.noise_rate, cfg.noise_kind, data.num_classes, cfg.seed)
    inputs, labels = torch.as_tensor(x_train), torch.as_tensor(noisy)
    test = (torch.as_tensor(x_test), torch.as_tensor(data.labels[test_idx]))

    def fit(rows: np.ndarray, **kwargs) -> float:
        return train_and_test(cfg, inputs[rows], labels[rows], test, data.num_classes, seed=cfg.seed, **kwargs)

    callback = DataQualityCallback(tracking_uri=cfg.tracking_uri, experiment_name=cfg.experiment_name,
                                   run_name=f"subset-{cfg.dataset}-seed{cfg.seed}")
    everything = np.arange(len(noisy))
    out: dict[str, dict[float, float]] = {key: {} for key, _, _ in ROWS}
    full = fit(everything, callbacks=[callback])
    rng = np.random.default_rng(cfg.seed + 7)
    for fraction in fractions:
        ids, _ = dq_plugins.select_subset(callback.run_id, fraction, seed=cfg.seed, tracking_uri=cfg.tracking_uri)
        random_rows = np.sort(rng.choice(len(noisy), size=len(ids), replace=False))
        hardest, _ = dq_plugins.select_subset(callback.run_id, fraction, seed=cfg.seed, skip_hardest=0.0,
                                              tracking_uri=cfg.tracking_uri)
        out["select_subset"][fraction] = fit(ids)
        out["hardest_first"][fraction] = fit(hardest)
        out["random"][fraction] = fit(random_rows)
        out["noise_in_subset"][fraction] = float(flipped[ids].mean())
        out["noise_hardest_first"][fraction] = float(flipped[hardest].mean())
        out["random_noise"][fraction] = float(flipped[random_rows].mean())
    for method in ("select_subset", "hardest_first", "random"):
        out[method][1.0] = full
    for key in ("noise_in_subset", "noise_hardest_first", "random_noise"):
        out[key][1.0] = float(flipped.mean())
    return out


def cell(values: list[float], percent: bool = False) -> str:
    array = np.asarray(values, dtype=np.float64) * (100 if percent else 1)
    fmt = ".1f" if percent else ".4f"
    suffix = "%" if percent else ""
    if len(array) == 1:
        return f"{array[0]:{fmt}}{suffix}"
    return f"{array.mean():{fmt}}{suffix} ± {array.std(ddof=1):{fmt}}{suffix}"


def table(per_seed: list[dict[str, dict[float, float]]], fractions: tuple[float, ...]) -> str:
    columns = [*fractions, 1.0]
    lines = ["| kept | " + " | ".join(f"{f:.0%}" for f in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, name, percent in ROWS:
        lines.append(f"| {name} | " + " | ".join(cell([s[key][f] for s in per_seed], percent) for f in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, MNIST-5k, 5 epochs; no RESULTS.md.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()
    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    seeds, epochs = (1, 5) if args.quick else (args.seeds, args.epochs)
    datasets = args.datasets[:1] if args.quick else args.datasets
    store = tempfile.mkdtemp(prefix="dq_subset_")
    os.chdir(store)  # MLflow keeps the artifacts of the runs under ./mlruns
    base = RecipeConfig(recipe="lightning", noise_rate=0.2, epochs=epochs, val_fraction=0.2,
                        tracking_uri=f"sqlite:///{store}/mlflow.db", experiment_name="subset")
    started = time.time()
    sections = []
    for dataset in datasets:
        per_seed = []
        for seed in range(seeds):
            t0 = time.time()
            per_seed.append(run_seed(dataclasses.replace(base, dataset=dataset, seed=seed), FRACTIONS))
            shown = {m: {f: round(v, 4) for f, v in per_seed[-1][m].items()}
                     for m in ("select_subset", "hardest_first", "random")}
            print(f"[{time.time() - started:6.0f}s] {dataset} seed {seed}: {shown} ({time.time() - t0:.0f}s)", flush=True)
        title = f"{dataset}, 20% symmetric noise"
        sections.append(f"#### {title}\n\n{table(per_seed, FRACTIONS)}")
        print(f"\n{title}\n{table(per_seed, FRACTIONS)}\n", flush=True)
    if args.quick:
        return
    body = "\n".join([
        "### Subset selection: test accuracy against the share of training data kept",
        "",
        f"`python -m benchmarks.subset` ({seeds} seeds, mean ± std; {epochs} epochs; the MLP of the fix-gain "
        "benchmark; 20% of the rows held out as the clean test set). `select_subset` drops flagged label issues "
        "first, then the hardest 20% of each class's other samples (suspected undetected noise), then the easiest "
        "(EL2N and forgetting ranks), per class and cluster; the random subset is uniform. "
        "100% is the full noisy set (the model trained with the callback).",
        "",
        *[s + "\n" for s in sections],
        f"Machine: {machine_line()}. Revision {git_revision()}. Wall time {time.time() - started:.0f} s.",
    ])
    write_section("subset", body)
    print("wrote the subset section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
