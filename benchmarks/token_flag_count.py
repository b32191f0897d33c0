"""Why the per-token flags of ``tokens-synthetic`` under-count: the count of each candidate rule, per seed.

Runs the ``tokens-synthetic`` case of :mod:`benchmarks.label_noise_tasks` (one callback fit and the 5-fold
anchor per seed) and prints, as markdown:

1. per seed, the per-token flags of dq_plugins and of the anchor (flagged, precision, recall, F1) and the
   per-sequence flag F1 of both;
2. the token count of each candidate rule on the callback's own record, with the flag F1 the current
   rule (that many tokens in ``mislabel_score`` order, kept where the all-epoch arg-max disagrees with the
   given tag) would reach under that count: confident learning on the all-epoch mean softmax with each
   ``filter_by`` of ``cleanlab.filter.find_label_issues``, ``cleanlab.count.num_label_issues`` with each
   ``estimation_method``, confident learning on the early window (whether or not its guard trusts it) and
   the off-diagonal of the confident joint on the anchor's out-of-sample softmax;
3. why: the per-tag thresholds of confident learning (each tag's mean self-confidence) on the in-sample
   and out-of-sample softmax, and the share of the changed tokens whose true tag reaches its threshold;
4. with ``--early-epochs E ...``: the early window of E epochs (callback only): its accuracy, whether the
   guard trusts it, its count and the flag F1 if its count were used. A diagnostic, not a default.

Usage: ``python -m benchmarks.token_flag_count --seeds 0 1 2 3 [--early-epochs 2 4 6]`` (about 15 s per
seed and window on a shared 2-core CPU). Prints only; nothing is written.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from benchmarks.label_noise_tasks import TAGS, GRUTagger, _fit, _out_of_fold, inject_token_noise, synthetic_sequences
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.scores.tokens import early_window_trusted, token_label_issues, token_scores

EPOCHS = 12


def _record(x: torch.Tensor, y: torch.Tensor, seed: int, early_epochs: int | None = None):
    """(callback, train TokenHistory) of one callback fit, as ``run_tokens_synthetic`` trains it."""
    torch.manual_seed(seed)
    callback = DataQualityCallback(task="token_classification", early_epochs=early_epochs)
    _fit(GRUTagger(301, len(TAGS)), x, y, EPOCHS, seed, [callback])
    return callback, callback._tasks.histories()["train"]  # the record the end-of-fit analysis read


def _flags_for(count: int, order: np.ndarray, disagree: np.ndarray) -> np.ndarray:
    flags = np.zeros(len(disagree), dtype=bool)
    flags[order[:count]] = True
    return flags & disagree


def _prf(truth: np.ndarray, flags: np.ndarray) -> tuple[int, float, float, float]:
    return (int(flags.sum()), float(precision_score(truth, flags, zero_division=0)),
            float(recall_score(truth, flags)), float(f1_score(truth, flags)))


def _sequence_f1(truth: np.ndarray, rows: np.ndarray, flags: np.ndarray) -> float:
    per_sequence = np.zeros(len(truth), dtype=bool)
    per_sequence[rows[flags]] = True
    return float(f1_score(truth, per_sequence))


def run_seed(seed: int, early_epochs: list[int]) -> dict:
    from cleanlab.count import compute_confident_joint, get_confident_thresholds, num_label_issues
    from cleanlab.filter import find_label_issues

    x_np, clean = synthetic_sequences(1200, seed)
    noisy, changed = inject_token_noise(clean, 0.10, seed)
    x, y = torch.tensor(x_np), torch.tensor(noisy)
    callback, history = _record(x, y, seed)
    rows, positions = np.nonzero(history.labels >= 0)
    labels = history.labels[rows, positions].astype(np.int64)
    recorded = history.mean_probs[rows, positions]
    mean = recorded.astype(np.float64) / recorded.astype(np.float64).sum(axis=1, keepdims=True)
    early = history.early_probs[rows, positions]
    truth, true_tags, sequence_truth = changed[rows, positions], clean[rows, positions], changed.any(axis=1)
    trusted = early_window_trusted(labels, early)
    ours = token_scores(labels, rows, recorded, early if trusted else None, early if trusted else recorded)
    published = callback.result.tables["tokens"].sort_values(["sample_id", "token_index"])["is_label_issue"]
    if not np.array_equal(published.to_numpy(), ours.is_label_issue):
        raise RuntimeError("the recomputed flags differ from the callback's: the record read is not the analysed one")
    oof = _out_of_fold(lambda: GRUTagger(301, len(TAGS)), x, y, EPOCHS, seed,
                       lambda t: torch.softmax(t, -1))[rows, positions].astype(np.float64)
    anchor = token_label_issues(labels, oof, rows)

    order = np.argsort(-ours.mislabel_score, kind="stable")
    disagree = mean.argmax(axis=1) != labels
    counts: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for filter_by in ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"):
            counts[f"CL all-epoch, filter_by={filter_by}"] = int(find_label_issues(labels, mean, filter_by=filter_by).sum())
        for method in ("off_diagonal", "off_diagonal_calibrated"):
            counts[f"num_label_issues all-epoch, {method}"] = int(num_label_issues(labels, mean, estimation_method=method))
        counts["CL early window (guarded out)" if not trusted else "CL early window"] = int(
            token_label_issues(labels, early, rows).sum())
        joint = compute_confident_joint(labels, oof, calibrate=False)
        counts["anchor: off-diagonal, out-of-sample"] = int(joint.sum() - np.trace(joint))
        thresholds = {"in-sample": get_confident_thresholds(labels, mean), "out-of-sample": get_confident_thresholds(labels, oof)}
    rules = {}
    for name, count in counts.items():
        flags = _flags_for(count, order, disagree)
        rules[name] = (count, f1_score(truth, flags), _sequence_f1(sequence_truth, rows, flags))
    changed_at = np.flatnonzero(truth)
    reach = {name: float((probs[changed_at, true_tags[changed_at]] >= t[true_tags[changed_at]]).mean())
             for name, (probs, t) in {"in-sample": (mean, thresholds["in-sample"]),
                                      "out-of-sample": (oof, thresholds["out-of-sample"])}.items()}
    windows = []
    for window in early_epochs:
        _, other = _record(x, y, seed, window)
        probs = other.early_probs[rows, positions]
        count = int(token_label_issues(labels, probs, rows).sum())
        flags = token_scores(labels, rows, other.mean_probs[rows, positions], probs, probs).is_label_issue
        windows.append((window, float((probs.argmax(axis=1) == labels).mean()), early_window_trusted(labels, probs),
                        count, float(f1_score(truth, flags))))
    return {"seed": seed, "changed": int(truth.sum()), "trusted": trusted,
            "early_accuracy": float((early.argmax(axis=1) == labels).mean()),
            "guard": 0.5 * (1.0 + np.bincount(labels).max() / len(labels)),
            "ours": _prf(truth, ours.is_label_issue), "anchor": _prf(truth, anchor),
            "ours_seq_f1": _sequence_f1(sequence_truth, rows, ours.is_label_issue),
            "anchor_seq_f1": _sequence_f1(sequence_truth, rows, anchor),
            "rules": rules, "thresholds": thresholds, "reach": reach, "windows": windows}


def report(runs: list[dict]) -> str:
    lines = ["| seed | changed tokens | ours flagged | P | R | F1 | anchor flagged | P | R | F1 | ours seq F1 | anchor seq F1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    table = []
    for r in runs:
        row = [r["changed"], *r["ours"], *r["anchor"], r["ours_seq_f1"], r["anchor_seq_f1"]]
        table.append(row)
        lines.append(f"| {r['seed']} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    mean = np.mean(np.array(table, dtype=float), axis=0)
    lines.append("| mean | " + " | ".join(f"{v:.0f}" if i in (0, 1, 5) else f"{v:.3f}" for i, v in enumerate(mean)) + " |")
    lines += ["", "| count rule (current flags rule under that count) | count | token F1 | sequence F1 |", "|---|---|---|---|"]
    for name in runs[0]["rules"]:
        values = np.array([r["rules"][name] for r in runs if name in r["rules"]])
        lines.append(f"| {name} | {values[:, 0].mean():.0f} | {values[:, 1].mean():.3f} | {values[:, 2].mean():.3f} |")
    lines.append("")
    for r in runs:
        t_in, t_out = (np.round(r["thresholds"][k], 3).tolist() for k in ("in-sample", "out-of-sample"))
        lines.append(f"- seed {r['seed']}: early window accuracy {r['early_accuracy']:.3f} (guard {r['guard']:.3f}, "
                     f"trusted: {r['trusted']}); per-tag thresholds in-sample {t_in}, out-of-sample {t_out}; changed "
                     f"tokens whose true tag reaches its threshold: {r['reach']['in-sample']:.2f} in-sample, "
                     f"{r['reach']['out-of-sample']:.2f} out-of-sample")
        for window, accuracy, trusted, count, f1 in r["windows"]:
            lines.append(f"  - early window of {window} epochs: accuracy {accuracy:.3f}, trusted: {trusted}, "
                         f"count {count}, flag F1 under its count {f1:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--early-epochs", nargs="*", type=int, default=[],
                        help="also record early windows of these lengths (a diagnostic, one more fit each)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(report([run_seed(seed, args.early_epochs) for seed in args.seeds]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
