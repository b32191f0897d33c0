"""Re-score saved label-noise runs with the library's ``mislabel_score`` and compare it with its parts.

Reads the per-run records that ``python -m benchmarks.label_noise --dump DIR`` saves (one ``.npz`` per case and
seed), recomputes ``mislabel_score`` from each record with the library's own functions (the steps of
:func:`dq_plugins.analysis.pipeline.analyze_split`, with the record's neighbour disagreement in place of the
embeddings), and prints, per record and per folder, its AUPRC against the flipped samples minus the best of its
parts and the anchors (AUM, all-epoch EL2N, early EL2N, neighbour disagreement, cartography confidence, the
final model's loss). This is how the rules of ``mislabel_score`` were studied offline (``benchmarks/RESULTS.md``,
section "memorisation moves the weight between the windows"): a rule is changed in the library, and every saved
run is re-scored in seconds instead of retrained.

Usage::

    python -m benchmarks.label_noise --cases fashion5k-pair sms-spam-minilm-symmetric --seeds 0 1 --no-write --dump /tmp/runs
    python -m benchmarks.score_study /tmp/runs [more folders]  [--variants]

``--variants`` adds the rows of the study: without the memorisation move, without the hand-over of an untrusted
fixed window to the wave window, and with neither and the lift's exponent at 4 (the rule before 2026-12-07, but
with the tie-aware ``average_precision``).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from sklearn.metrics import average_precision_score

from dq_plugins.analysis.pipeline import early_window_cl, mislabel_signals
from dq_plugins.recording.wave import SETTLED_EPOCHS_AFTER, wave_epoch
from dq_plugins.scores import mislabel as mislabel_module
from dq_plugins.scores.el2n import default_early_epochs
from dq_plugins.scores.mislabel import memorised_share, mislabel_score

FIELDS = ("loss", "prob_given", "margin", "correct", "prob_sq_sum", "prob_pred")


@dataclass
class Record:
    """One saved run: ``(E, N)`` fields, ``(E, N, C)`` per-epoch softmax, ``(E, N)`` predictions, ``(N,)`` labels."""

    name: str
    fields: dict[str, np.ndarray]
    epoch_probs: np.ndarray
    pred: np.ndarray
    labels: np.ndarray
    flipped: np.ndarray
    final_loss: np.ndarray
    neighbor_disagreement: np.ndarray | None

    @classmethod
    def load(cls, path: Path) -> Record:
        data = np.load(path)
        missing = sorted({"noisy", "flipped", "pred", "epoch_probs", "final_loss", *(f"field_{name}" for name in FIELDS)}
                         - set(data.files))
        if missing:
            raise ValueError(f"{path} is not a saved label-noise run: it lacks {missing}. HINT: write the records "
                             f"with `python -m benchmarks.label_noise --dump DIR`.")
        disagreement = data["neighbor_disagreement"].astype(np.float64) if "neighbor_disagreement" in data.files else None
        if disagreement is not None and not np.isfinite(disagreement).any():
            disagreement = None
        return cls(path.stem, {name: data[f"field_{name}"].astype(np.float64) for name in FIELDS},
                   data["epoch_probs"].astype(np.float64), data["pred"], data["noisy"].astype(np.int64),
                   data["flipped"].astype(bool), data["final_loss"].astype(np.float64), disagreement)

    @property
    def wave_end(self) -> int | None:
        """The Label Wave epoch from the per-epoch predictions, as the ledger finds it at its epoch closes."""
        seen = self.pred >= 0
        changes = ((self.pred[1:] != self.pred[:-1]) & seen[1:] & seen[:-1]).sum(axis=1)
        return wave_epoch([int(c) for c in changes])


def library_score(record: Record, *, move: bool = True, fallback: bool = True) -> np.ndarray:
    """``(N,)`` ``mislabel_score`` of the record, computed as ``analyze_split`` does (``move``: the memorisation
    move; ``fallback``: a fixed window that is not trusted hands the pseudo-labels and the early EL2N over to a
    settled Label Wave window)."""
    epochs, _, classes = record.epoch_probs.shape
    early = default_early_epochs(epochs)
    end = record.wave_end
    settled = end is not None and epochs - 1 - end >= SETTLED_EPOCHS_AFTER
    learned = settled and end <= early - 1
    signals = mislabel_signals(record.fields, early, classes, require_fit=not learned,
                               wave_epochs=end + 1 if settled and fallback else None)
    pseudo_cl = early_window_cl(record.labels, record.epoch_probs[:early].mean(axis=0), require_fit=not learned)
    if pseudo_cl is None and fallback and end is not None:
        wave_probs = record.epoch_probs[:end + 1].mean(axis=0)
        pseudo_cl = early_window_cl(record.labels, wave_probs, require_fit=not settled)
    pseudo = None if pseudo_cl is None else pseudo_cl.is_label_issue
    return mislabel_score(aum=signals.aum, el2n_all_epochs=signals.el2n_all_epochs,
                          el2n_early=signals.el2n_early_scored, neighbor_disagreement=record.neighbor_disagreement,
                          pseudo_labels=pseudo, instability=signals.instability,
                          memorised=memorised_share(record.fields["correct"], pseudo) if move else None)


def auprc(flipped: np.ndarray, score: np.ndarray) -> float:
    """AUPRC of a score (higher = more suspicious) at finding the flipped samples; NaN ranks last."""
    score = np.asarray(score, dtype=np.float64)
    if not np.isfinite(score).any():
        return float("nan")
    return float(average_precision_score(flipped, np.nan_to_num(score, nan=np.nanmin(score) - 1.0)))


def references(record: Record) -> dict[str, float]:
    """AUPRC of each part of the score and of each anchor."""
    epochs = record.epoch_probs.shape[0]
    signals = mislabel_signals(record.fields, default_early_epochs(epochs), record.epoch_probs.shape[2])
    candidates = {"AUM": -signals.aum, "EL2N all epochs": signals.el2n_all_epochs, "EL2N early": signals.el2n_early,
                  "cartography confidence": 1.0 - np.nanmean(record.fields["prob_given"], axis=0),
                  "final loss": record.final_loss}
    if record.neighbor_disagreement is not None:
        candidates["neighbour disagreement"] = record.neighbor_disagreement
    return {name: auprc(record.flipped, values) for name, values in candidates.items()}


@contextmanager
def weight_power(power: int) -> Iterator[None]:
    """Temporarily set the exponent of the lift (``mislabel.WEIGHT_POWER``)."""
    kept = mislabel_module.WEIGHT_POWER
    mislabel_module.WEIGHT_POWER = power
    try:
        yield
    finally:
        mislabel_module.WEIGHT_POWER = kept


VARIANTS = {
    "library": dict(move=True, fallback=True, power=None),
    "no memorisation move": dict(move=False, fallback=True, power=None),
    "no hand-over to the wave window": dict(move=True, fallback=False, power=None),
    "neither, exponent 4 (before 2026-12-07)": dict(move=False, fallback=False, power=4),
}


def margins(record: Record, variants: list[str]) -> dict[str, float]:
    """Per variant, AUPRC of the score minus the best reference of the record."""
    best = max(value for value in references(record).values() if np.isfinite(value))
    out = {}
    for name in variants:
        spec = VARIANTS[name]
        with weight_power(spec["power"] or mislabel_module.WEIGHT_POWER):
            out[name] = auprc(record.flipped, library_score(record, move=spec["move"], fallback=spec["fallback"])) - best
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of .npz records (label_noise.py --dump)")
    parser.add_argument("--variants", action="store_true", help="also the study's variants of the rule")
    args = parser.parse_args(argv)
    variants = list(VARIANTS) if args.variants else ["library"]
    print("| folder | records | " + " | ".join(variants) + " |")
    print("|---|---:|" + "---|" * len(variants))
    for folder in args.folders:
        paths = sorted(folder.glob("*.npz"))
        if not paths:
            print(f"{folder}: no .npz records (write them with `python -m benchmarks.label_noise --dump {folder}`)",
                  file=sys.stderr)
            return 2
        rows = []
        for path in paths:
            row = margins(Record.load(path), variants)
            rows.append(row)
            print(f"  {path.stem}: " + ", ".join(f"{name} {value:+.4f}" for name, value in row.items()), file=sys.stderr)
        cells = []
        for name in variants:
            values = np.array([row[name] for row in rows])
            cells.append(f"{values.mean():+.4f} / {values.min():+.3f} / {int((values < -0.005).sum())}")
        print(f"| {folder} | {len(rows)} | " + " | ".join(cells) + " |")
    print("\ncells: mean / worst / records below -0.005 of (score AUPRC - best part or anchor AUPRC)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
