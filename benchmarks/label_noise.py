"""Label-noise benchmark: how well ``mislabel_score`` and ``is_label_issue`` find injected flips.

For each case (data set x noise kind x model regime) and seed, one small MLP is trained with
:class:`~dq_plugins.lightning.DataQualityCallback` (``logger=False``, an MLflow sqlite store in a
temporary folder) and its train rows are scored against the known flips, beside anchors computed
in the same run with the same architecture and epochs:

- cleanlab with 5-fold cross-validated probabilities (5 fresh models trained on 4/5 of the data,
  each predicting its held-out fold): ``cleanlab.filter.find_label_issues`` for the flags and
  ``cleanlab.rank.get_label_quality_scores`` (self-confidence) as the ranking;
- AUM alone (Pleiss et al. 2020), cartography confidence alone (Swayamdipta et al. 2020), both from
  the callback's own record;
- the final in-sample loss: one forward pass of the final model over the training set.

Every single signal that ``mislabel_score`` may combine is reported too, so the table shows which
of them carry the ranking. Training cost is counted in model-epochs over the full data set:
the callback's methods cost ``E``; cross-validation costs ``5 x E x 0.8 = 4E``.

Run from the repository root::

    .venv/bin/python benchmarks/label_noise.py --seeds 0 1   # as in RESULTS.md; writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/label_noise.py               # one seed, half the time
    .venv/bin/python benchmarks/label_noise.py --quick       # smoke run (digits, tiny MLP, 6 epochs), no write

``--reading FILE`` puts a written interpretation into the section; ``--dump DIR`` keeps every run's
per-epoch record (``.npz``) for offline study of other designs.

The noise of seed ``s`` comes from ``inject_noise(..., seed=s)`` and the models of seed ``s`` are
initialised and shuffled from ``s``: each seed is a different draw of both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MLP,
    RESULTS_PATH,
    TensorDictDataset,
    batch_loader,
    git_revision,
    machine_line,
    make_trainer,
    predict_logits,
    quiet_lightning,
    use_recipes_common,
    working_directory,
    write_section,
)

use_recipes_common()

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import detection_metrics, inject_noise, load_dataset  # noqa: E402
from dq_plugins.lightning import DataQualityCallback  # noqa: E402
from dq_plugins.scores import confident_learning, default_early_epochs, el2n  # noqa: E402
from dq_plugins.scores.mislabel import percentile_rank  # noqa: E402

SECTION = "label_noise"
NOISE_RATE = 0.2
CV_FOLDS = 5


@dataclass(frozen=True)
class Case:
    """One benchmark case: a data set, a noise kind and a model regime."""

    name: str
    dataset: str
    noise: str
    hidden: tuple[int, ...]
    dropout: float
    epochs: int
    lr: float
    batch_size: int

    @property
    def model(self) -> str:
        width = "x".join(str(h) for h in self.hidden)
        return f"MLP {width}, dropout {self.dropout:g}, Adam {self.lr:g}, batch {self.batch_size}, {self.epochs} epochs"


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("mnist5k-symmetric", "mnist5k", "symmetric", (256,), 0.2, 20, 1e-3, 128),
        Case("mnist5k-pair", "mnist5k", "pair", (256,), 0.2, 20, 1e-3, 128),
        Case("digits-symmetric", "digits", "symmetric", (256,), 0.2, 40, 1e-3, 64),
        Case("digits-pair", "digits", "pair", (256,), 0.2, 40, 1e-3, 64),
        # Memorisation: wider, no dropout, a higher rate and long enough to fit the noisy labels.
        Case("mnist5k-symmetric-memorise", "mnist5k", "symmetric", (512,), 0.0, 40, 2e-3, 128),
        Case("mnist5k-pair-memorise", "mnist5k", "pair", (512,), 0.0, 40, 2e-3, 128),
        # Short training, as when fine-tuning for a few epochs: the early window is 2 epochs, still underfit.
        Case("mnist5k-symmetric-short", "mnist5k", "symmetric", (256,), 0.2, 8, 1e-3, 128),
    )
}
DEFAULT_CASES = (
    "mnist5k-symmetric", "mnist5k-pair", "digits-symmetric", "digits-pair", "mnist5k-symmetric-memorise",
    "mnist5k-symmetric-short",
)
QUICK_CASES = {"digits-symmetric": Case("digits-symmetric", "digits", "symmetric", (64,), 0.2, 6, 3e-3, 128)}

OURS = "mislabel_score / is_label_issue (ours)"
PREVIOUS = "previous mislabel_score (-aum, 1 - self-confidence, early el2n)"
PROPOSED_FLAGS = "flags: top n-hat by mislabel_score, n-hat = CL count on the early-epoch softmax"
CV = "cleanlab, 5-fold CV"

ANCHORS = (CV, "AUM", "cartography confidence", "final in-sample loss")
"""Methods against which the AUPRC target is checked."""



@dataclass
class Method:
    """One row of the table: a ranking, optional flags, and its training cost."""

    name: str
    kind: str  # "ours", "anchor", "previous", "signal" or "proposal"
    scores: np.ndarray | None
    flags: np.ndarray | None
    cost: float


@dataclass
class RunResult:
    """Metrics of one (case, seed)."""

    case: str
    seed: int
    n: int
    n_flipped: int
    train_acc_noisy: float
    flipped_fit: float
    seconds: dict[str, float]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def new_model(case: Case, in_dim: int, num_classes: int, seed: int) -> MLP:
    pl.seed_everything(seed, verbose=False)
    return MLP(in_dim, num_classes, case.hidden, case.dropout, case.lr)


class EpochProbsRecorder(pl.Callback):
    """Benchmark-only: the full softmax of every sample at every epoch, ``(E, N, C)`` float32 on the CPU.

    The library keeps per-epoch scalars and one all-epoch mean of the softmax; this full record feeds
    the *proposal* rows (confident learning on the early-epoch softmax) and ``--dump``.
    """

    def __init__(self, epochs: int, num_samples: int, num_classes: int) -> None:
        self.probs = torch.full((epochs, num_samples, num_classes), float("nan"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: dict,
                           batch: dict, batch_idx: int) -> None:
        logits = outputs["logits"].detach().float().cpu()
        self.probs[trainer.current_epoch, batch["idx"].cpu()] = torch.softmax(logits, dim=1)


def train_with_callback(case: Case, features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                        tracking_uri: str, recorder: EpochProbsRecorder | None = None
                        ) -> tuple[MLP, DataQualityCallback]:
    """Train once with the callback; return the final model and the callback holding the result."""
    model = new_model(case, features.shape[1], num_classes, seed)
    callback = DataQualityCallback(tracking_uri=tracking_uri, experiment_name="label_noise",
                                   run_name=f"{case.name}-seed{seed}")
    loader = batch_loader(TensorDictDataset(features, labels), case.batch_size, shuffle=True, seed=seed)
    make_trainer(case.epochs, [callback] + ([recorder] if recorder else [])).fit(model, loader)
    if callback.result is None:
        raise RuntimeError(f"{case.name}: the callback produced no result (see the warnings above).")
    return model, callback


def cross_validated_probs(case: Case, features: np.ndarray, labels: np.ndarray, num_classes: int,
                          seed: int) -> np.ndarray:
    """Out-of-fold softmax probabilities: 5 fresh models, each trained on 4/5 and predicting 1/5."""
    from sklearn.model_selection import StratifiedKFold

    probs = np.full((len(labels), num_classes), np.nan, dtype=np.float64)
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    for fold, (fit_rows, held_out) in enumerate(folds.split(features, labels)):
        fold_seed = seed * 1000 + fold + 1
        model = new_model(case, features.shape[1], num_classes, fold_seed)
        loader = batch_loader(TensorDictDataset(features[fit_rows], labels[fit_rows]), case.batch_size,
                              shuffle=True, seed=fold_seed)
        make_trainer(case.epochs).fit(model, loader)
        probs[held_out] = torch.softmax(predict_logits(model, features[held_out]), dim=1).double().numpy()
    return probs


def cleanlab_cv(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flags, label quality) from cross-validated probabilities, with cleanlab's defaults."""
    with warnings.catch_warnings():  # importing cleanlab resets the warning filters (see confident_learning)
        import cleanlab.filter
        import cleanlab.rank
    flags = cleanlab.filter.find_label_issues(labels, probs, n_jobs=1)
    quality = cleanlab.rank.get_label_quality_scores(labels, probs)
    return np.asarray(flags, dtype=bool), np.asarray(quality, dtype=np.float64)


def cleanlab_count(labels: np.ndarray, probs: np.ndarray) -> int:
    """Confident learning's estimate of the number of wrong labels (calibrated confident joint).

    Rows are clipped and renormalised as :func:`dq_plugins.scores.confident_learning` does.
    """
    with warnings.catch_warnings():
        import cleanlab.count
    clipped = np.clip(probs, 1e-12, None)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return int(cleanlab.count.num_label_issues(labels, clipped, estimation_method="off_diagonal_calibrated"))


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """(N,) bool: True for the ``n`` highest scores (ties broken by position)."""
    flags = np.zeros(len(scores), dtype=bool)
    flags[np.argsort(-scores, kind="stable")[: max(n, 0)]] = True
    return flags


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------


def run_case(case: Case, seed: int, tracking_uri: str, dump_dir: Path | None) -> RunResult:
    data = load_dataset(case.dataset)
    features, num_classes = data.features, data.num_classes
    noisy, flipped = inject_noise(data.labels, NOISE_RATE, case.noise, num_classes, seed=seed)
    seconds: dict[str, float] = {}

    recorder = EpochProbsRecorder(case.epochs, len(noisy), num_classes)
    start = time.perf_counter()
    model, callback = train_with_callback(case, features, noisy, num_classes, seed, tracking_uri, recorder)
    seconds["ours"] = time.perf_counter() - start
    samples = callback.result.samples
    train = samples[samples["split"] == "train"].sort_values("sample_id").reset_index(drop=True)
    if not np.array_equal(train["sample_id"].to_numpy(), np.arange(len(noisy))):
        raise RuntimeError(f"{case.name}: the train table does not hold every sample exactly once.")
    if not np.array_equal(train["label"].to_numpy(), noisy):
        raise RuntimeError(f"{case.name}: recorded labels differ from the noisy labels that were trained on.")
    history = callback.session.ledgers["train"].to_history()
    mean_probs = history.mean_probs.astype(np.float64)
    self_confidence = mean_probs[np.arange(len(noisy)), noisy] / mean_probs.sum(axis=1)

    final_logits = predict_logits(model, features)
    final_loss = F.cross_entropy(final_logits, torch.as_tensor(noisy), reduction="none").numpy()
    final_pred = final_logits.argmax(dim=1).numpy()

    start = time.perf_counter()
    cv_probs = cross_validated_probs(case, features, noisy, num_classes, seed)
    cv_flags, cv_quality = cleanlab_cv(noisy, cv_probs)
    seconds[CV] = time.perf_counter() - start

    epochs = float(case.epochs)
    early = default_early_epochs(case.epochs)
    fields = history.fields
    el2n_all = el2n(fields["prob_given"], fields["prob_sq_sum"], max(fields["prob_given"].shape[0], 1))
    aum, el2n_early = train["aum"].to_numpy(), train["el2n"].to_numpy()
    score = train["mislabel_score"].to_numpy()
    previous_score = np.nanmean(
        [percentile_rank(-aum), percentile_rank(1.0 - self_confidence), percentile_rank(el2n_early)], axis=0
    )
    early_probs = recorder.probs[:early].double().mean(dim=0).numpy()
    early_cl = confident_learning(noisy, early_probs)
    n_issues = cleanlab_count(noisy, early_probs)
    ours_flags = train["is_label_issue"].to_numpy(dtype=bool)
    methods = [
        Method(OURS, "ours", score, ours_flags, epochs),
        Method(CV, "anchor", 1.0 - cv_quality, cv_flags, CV_FOLDS * epochs * (CV_FOLDS - 1) / CV_FOLDS),
        Method("AUM", "anchor", -aum, None, epochs),
        Method("cartography confidence", "anchor", 1.0 - train["confidence"].to_numpy(), None, epochs),
        Method("final in-sample loss", "anchor", final_loss, None, epochs),
        Method(PREVIOUS, "previous", previous_score, None, epochs),
        Method("1 - self-confidence (mean softmax, all epochs)", "signal", 1.0 - self_confidence, None, epochs),
        Method("el2n, all epochs", "signal", el2n_all, None, epochs),
        Method(f"el2n, early epochs (first {early})", "signal", el2n_early, None, epochs),
        Method("forgetting events", "signal", train["forgetting_events"].to_numpy(dtype=np.float64), None, epochs),
        Method(f"flags: cleanlab on the early-epoch softmax (first {early})", "proposal", None,
               early_cl.is_label_issue, epochs),
        Method(PROPOSED_FLAGS, "proposal", None, top_n(score, n_issues), epochs),
    ]
    result = RunResult(
        case=case.name, seed=seed, n=len(noisy), n_flipped=int(flipped.sum()),
        train_acc_noisy=float((final_pred == noisy).mean()),
        flipped_fit=float((final_pred == noisy)[flipped].mean()),
        seconds=seconds,
    )
    for method in methods:
        flags = method.flags if method.flags is not None else np.zeros(len(noisy), dtype=bool)
        scores = method.scores if method.scores is not None else np.zeros(len(noisy))
        metrics = detection_metrics(scores, flags, flipped)
        if method.flags is None:
            for key in ("precision", "recall", "f1"):
                metrics[key] = float("nan")
        if method.scores is None:
            for key in ("auroc", "auprc", "precision_at_k"):
                metrics[key] = float("nan")
        result.metrics[method.name] = metrics
        result.costs[method.name] = method.cost
        result.kinds[method.name] = method.kind

    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            dump_dir / f"{case.name}-seed{seed}.npz",
            true_labels=data.labels, noisy=noisy, flipped=flipped, cv_probs=cv_probs, final_logits=final_logits.numpy(),
            mean_probs=history.mean_probs, epochs=history.epochs, pred=history.pred,
            mislabel_score=train["mislabel_score"].to_numpy(), is_label_issue=ours_flags,
            epoch_probs=recorder.probs.numpy().astype(np.float16),
            **{f"field_{name}": values for name, values in history.fields.items()},
        )
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def summarise(values: list[float]) -> tuple[float, float]:
    """(mean, half range) ignoring NaN; (nan, nan) when nothing is finite."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float((max(finite) - min(finite)) / 2)


def fmt(values: list[float]) -> str:
    mean, spread = summarise(values)
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.3f}" if len(values) < 2 else f"{mean:.3f} ± {spread:.3f}"


def case_table(case: Case, runs: list[RunResult]) -> str:
    first = runs[0]
    header = (
        f"**{case.name}**: {case.dataset}, {NOISE_RATE:.0%} {case.noise} noise (N = {first.n}, K = "
        f"{first.n_flipped} flips), {case.model}. Final train accuracy on the noisy labels "
        f"{fmt([r.train_acc_noisy for r in runs])}; flipped samples fitted to their wrong label "
        f"{fmt([r.flipped_fit for r in runs])}.\n"
    )
    lines = [
        header,
        "| method | kind | cost (model-epochs) | AUROC | AUPRC | P@K | flag precision | flag recall | flag F1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in first.metrics:
        get = lambda key: [r.metrics[name][key] for r in runs]  # noqa: E731
        lines.append(
            f"| {name} | {first.kinds[name]} | {first.costs[name]:g} | {fmt(get('auroc'))} | {fmt(get('auprc'))} | "
            f"{fmt(get('precision_at_k'))} | {fmt(get('precision'))} | {fmt(get('recall'))} | {fmt(get('f1'))} |"
        )
    return "\n".join(lines)


def target_rows(cases: list[Case], by_case: dict[str, list[RunResult]]) -> str:
    """One row per case: ours against the best anchor (AUPRC) and cleanlab-CV (F1), means over seeds."""
    lines = [
        "| case | mislabel_score AUPRC | previous definition | best anchor AUPRC | AUPRC target | "
        "is_label_issue F1 | cleanlab CV F1 | F1 target | proposed flags F1 |",
        "|---|---:|---:|---:|:---:|---:|---:|:---:|---:|",
    ]
    for case in cases:
        runs = by_case[case.name]
        mean = lambda name, key: summarise([r.metrics[name][key] for r in runs])[0]  # noqa: E731
        ours_auprc, ours_f1 = mean(OURS, "auprc"), mean(OURS, "f1")
        best = max(ANCHORS, key=lambda name: mean(name, "auprc"))
        cv_f1 = mean(CV, "f1")
        lines.append(
            f"| {case.name} | {ours_auprc:.3f} | {mean(PREVIOUS, 'auprc'):.3f} | {mean(best, 'auprc'):.3f} ({best}) | "
            f"{'met' if ours_auprc >= mean(best, 'auprc') else 'missed'} | {ours_f1:.3f} | {cv_f1:.3f} | "
            f"{'met' if ours_f1 >= cv_f1 else 'missed'} | {mean(PROPOSED_FLAGS, 'f1'):.3f} |"
        )
    return "\n".join(lines)


def report(cases: list[Case], by_case: dict[str, list[RunResult]], seeds: list[int], command: str,
           wall: float, reading: str) -> str:
    summary = target_rows(cases, by_case)
    spread = "mean ± half the range over seeds " + ", ".join(map(str, seeds)) if len(seeds) > 1 else f"seed {seeds[0]}"
    parts = [
        "## Label noise (`benchmarks/label_noise.py`)",
        "",
        f"- Date: {dt.date.today().isoformat()}; revision {git_revision()}; wall time {wall / 60:.1f} min.",
        f"- Machine: {machine_line()}.",
        f"- Command: `{command}`",
        f"- Noise: {NOISE_RATE:.0%} of the labels flipped by `recipes/common.inject_noise` (symmetric: uniform "
        "over the other classes; pair: class c to c+1). Numbers: " + spread + ".",
        "- Kinds: *ours* = what the callback logs (`mislabel_score`, `is_label_issue`); *anchor* = the baselines "
        "the targets compare against; *previous* = the definition of `mislabel_score` before this benchmark, "
        "recomputed from the same run; *signal* = one signal alone (higher = more suspicious); *proposal* = "
        "flags the library does not compute yet, computed here from the same run (the early-epoch softmax comes "
        "from a benchmark-only callback that keeps every epoch's softmax; the early window is "
        "`default_early_epochs(E)`, the one EL2N uses; the count is "
        "`cleanlab.count.num_label_issues(..., estimation_method='off_diagonal_calibrated')`). "
        "Cost = training epochs over the full data: the callback costs E, "
        f"{CV_FOLDS}-fold cross-validation {CV_FOLDS} x E x {(CV_FOLDS - 1) / CV_FOLDS:g}.",
        "",
        "### Targets",
        "",
        summary,
        "",
        "### Reading",
        "",
        reading.strip() or "(none: pass `--reading FILE`)",
        "",
        "### Per case",
        "",
    ]
    for case in cases:
        parts += [case_table(case, by_case[case.name]), ""]
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: digits-symmetric, a tiny MLP, 6 epochs, 1 seed; prints only")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(DEFAULT_CASES),
                        help="cases to run (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds (default: %(default)s; RESULTS.md uses 0 1, twice the time)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine more threads oversubscribe)")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS_PATH.name}")
    parser.add_argument("--reading", type=Path, help="markdown file holding the 'Reading' paragraph to include")
    parser.add_argument("--json", type=Path, help="also write every metric of every (case, seed) to this file")
    parser.add_argument("--dump", type=Path, help="save the raw per-sample record of each run (.npz) to this folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    torch.set_num_threads(args.threads)
    if args.quick:
        cases, seeds = list(QUICK_CASES.values()), args.seeds[:1]
    else:
        cases, seeds = [CASES[name] for name in args.cases], args.seeds
    command = "python benchmarks/label_noise.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.perf_counter()
    by_case: dict[str, list[RunResult]] = {case.name: [] for case in cases}
    dump = args.dump.resolve() if args.dump else None
    with tempfile.TemporaryDirectory(prefix="dq_label_noise_") as tmp, working_directory(tmp):
        tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        for seed in seeds:
            for case in cases:
                run = run_case(case, seed, tracking_uri, dump)
                by_case[case.name].append(run)
                ours = run.metrics[OURS]
                print(f"[{time.perf_counter() - started:6.0f}s] {case.name} seed {seed}: mislabel_score AUPRC "
                      f"{ours['auprc']:.3f}, flags F1 {ours['f1']:.3f}; cleanlab-CV AUPRC "
                      f"{run.metrics[CV]['auprc']:.3f}, F1 {run.metrics[CV]['f1']:.3f}; "
                      f"train acc on noisy labels {run.train_acc_noisy:.3f}; "
                      + ", ".join(f"{k} {v:.0f}s" for k, v in run.seconds.items()), flush=True)
    wall = time.perf_counter() - started
    reading = args.reading.read_text() if args.reading else ""
    text = report(cases, by_case, seeds, command, wall, reading)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({name: [vars(r) for r in runs] for name, runs in by_case.items()}, indent=1))
    if not (args.quick or args.no_write):
        write_section(SECTION, text)
        print(f"wrote the `{SECTION}` section of {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
