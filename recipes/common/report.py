"""The end-of-run report every recipe prints, and the detection metrics behind it.

:func:`detection_metrics` scores label-issue detection against injected flips (pure, reused by the
benchmarks); :func:`print_report` prints split accuracies, the flagged issues, the top suspects,
those metrics when the flips are known, and how to open the MLflow run.
"""

from __future__ import annotations

import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "split",
    "label",
    "pred",
    "mislabel_score",
    "is_label_issue",
)
"""Columns :func:`print_report` cannot do without; the others of the per-sample table are shown
in the top-issues table when present."""

TOP_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sample_id", "sample_id"),
    ("label", "given"),
    ("suggested_label", "suggested"),
    ("pred", "pred"),
    ("mislabel_score", "mislabel_score"),
    ("confidence", "confidence"),
    ("variability", "variability"),
    ("aum", "aum"),
    ("forgetting_events", "forgets"),
    ("is_label_issue", "flagged"),
)
"""(per-sample column, header) pairs of the top-issues table, in display order."""

CLASS_COLUMNS: frozenset[str] = frozenset({"label", "suggested_label", "pred"})
"""Columns holding class indices, shown by name when class names are given."""

MLFLOW_UI_URL = "http://127.0.0.1:5000"
"""Where ``mlflow ui`` serves by default."""


def detection_metrics(
    scores: np.ndarray, flags: np.ndarray, flipped_mask: np.ndarray
) -> dict[str, float]:
    """How well flags and scores find the truly flipped samples.

    Args:
        scores: ``(N,)`` float, higher = more likely mislabelled; NaN counts as the lowest score.
        flags: ``(N,)`` bool, the samples flagged as label issues.
        flipped_mask: ``(N,)`` bool ground truth, True where the label was flipped.

    Returns:
        A dict of floats: ``n``, ``n_flipped``, ``n_flagged``, ``true_positives``; ``precision``,
        ``recall``, ``f1`` of ``flags``; ``k`` (= ``n_flipped``) and ``precision_at_k``, the share
        of flips among the ``k`` highest scores (ties broken by position); ``auroc`` and ``auprc``
        (average precision) of ``scores``. A metric that is undefined (no flags, no flips, or a
        single class for AUROC/AUPRC) is NaN; F1 is 0 when precision and recall are both 0.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    flagged = np.asarray(flags, dtype=bool)
    truth = np.asarray(flipped_mask, dtype=bool)
    if not s.shape == flagged.shape == truth.shape or s.ndim != 1:
        raise ValueError(
            f"Expected `scores`, `flags` and `flipped_mask` to be 1-D of one length but got shapes "
            f"{s.shape}, {flagged.shape}, {truth.shape}."
        )
    n, n_flipped, n_flagged = len(s), int(truth.sum()), int(flagged.sum())
    tp = int((flagged & truth).sum())
    precision = tp / n_flagged if n_flagged else float("nan")
    recall = tp / n_flipped if n_flipped else float("nan")
    if np.isnan(precision) or np.isnan(recall):
        f1 = float("nan")
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)

    finite = np.isfinite(s)
    lowest = (s[finite].min() - 1.0) if finite.any() else 0.0
    ranked = np.where(finite, s, lowest)
    top_k = np.argsort(-ranked, kind="stable")[:n_flipped]
    precision_at_k = float(truth[top_k].mean()) if n_flipped else float("nan")
    if 0 < n_flipped < n:
        auroc = float(roc_auc_score(truth, ranked))
        auprc = float(average_precision_score(truth, ranked))
    else:
        auroc = auprc = float("nan")
    return {
        "n": float(n),
        "n_flipped": float(n_flipped),
        "n_flagged": float(n_flagged),
        "true_positives": float(tp),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "k": float(n_flipped),
        "precision_at_k": precision_at_k,
        "auroc": auroc,
        "auprc": auprc,
    }


def _class_name(value: Any, class_names: Sequence[str] | None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    index = int(value)
    if index < 0:
        return "-"
    if class_names is not None and index < len(class_names):
        return str(class_names[index])
    return str(index)


def _format_cell(column: str, value: Any, class_names: Sequence[str] | None) -> str:
    if column in CLASS_COLUMNS:
        return _class_name(value, class_names)
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def _top_issues_table(
    train: pd.DataFrame, top: int, class_names: Sequence[str] | None, flipped: np.ndarray | None
) -> str:
    order = np.argsort(-train["mislabel_score"].to_numpy(dtype=np.float64), kind="stable")
    # NaN scores sort last: -NaN is NaN, which argsort places at the end.
    rows = train.iloc[order[:top]]
    table: dict[str, list[str]] = {}
    for column, header in TOP_TABLE_COLUMNS:
        if column in rows.columns:
            table[header] = [_format_cell(column, v, class_names) for v in rows[column].tolist()]
    if flipped is not None:
        table["injected_flip"] = ["yes" if f else "no" for f in flipped[order[:top]]]
    return pd.DataFrame(table).to_string(index=False)


def _relative_store(uri: str) -> bool:
    """True when the tracking URI names a path relative to the working directory."""
    if uri.startswith("sqlite:///"):
        return not uri[len("sqlite:///") :].startswith("/")
    if uri.startswith("file:"):
        path = uri[len("file:") :]
        return not path.startswith("/")
    if "://" in uri:
        return False
    return not os.path.isabs(uri)


def _view_command(tracking_uri: str | None) -> str:
    """The ``mlflow ui`` command line, with the ``mlflow`` of this venv (works without activating it)."""
    from dq_plugins.sinks.mlflow_sink import mlflow_command

    program = mlflow_command()
    if program != "mlflow" and not os.path.isabs(program):
        program = shlex.quote(os.path.abspath(program))  # the command may start with a `cd`
    if tracking_uri is None:
        return f"cd {shlex.quote(os.getcwd())} && {program} ui"
    command = f"{program} ui --backend-store-uri {shlex.quote(tracking_uri)}"
    if _relative_store(tracking_uri):
        command = f"cd {shlex.quote(os.getcwd())} && {command}"
    return command


def _run_page(run_id: str, tracking_uri: str | None) -> str:
    """The run's page in ``mlflow ui`` (its Model-training view), or the UI's address if the run cannot be read."""
    from dq_plugins.sinks.mlflow_sink import ui_url

    store = (tracking_uri or "sqlite:///mlflow.db").removeprefix("sqlite:///")
    if (tracking_uri is None or tracking_uri.startswith("sqlite:///")) and not os.path.isfile(store):
        return MLFLOW_UI_URL  # reading would create an empty store
    try:
        import mlflow

        experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a hint: the address alone still works
        return MLFLOW_UI_URL
    return ui_url(MLFLOW_UI_URL, experiment_id, run_id)


def print_report(
    samples: pd.DataFrame,
    *,
    flipped_ids: np.ndarray | None,
    run_id: str | None,
    tracking_uri: str | None,
    top: int = 10,
    class_names: Sequence[str] | None = None,
    file: TextIO | None = None,
) -> None:
    """Print the end-of-run summary of a recipe.

    Args:
        samples: the per-sample table, one row per sample and split, with at least
            :data:`REQUIRED_COLUMNS` (``split`` is ``"train"`` or ``"validation"``).
        flipped_ids: ``sample_id`` of the train samples whose labels were flipped on purpose, or
            ``None`` when unknown (then no detection metrics are printed).
        run_id: the MLflow run holding the results (``None``: not logged).
        tracking_uri: its tracking URI (``None``: MLflow's default in the working directory).
        top: how many of the highest-scored train samples to list.
        class_names: names for the class indices in ``label``, ``pred``, ``suggested_label``.
        file: where to print; ``sys.stdout`` when ``None``.
    """
    out = sys.stdout if file is None else file
    missing = [c for c in REQUIRED_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"`samples` lacks the columns {missing}; it has {list(samples.columns)}.")

    def emit(line: str = "") -> None:
        print(line, file=out)

    emit("dq_plugins report")
    emit("=================")
    splits = [s for s in ("train", "validation") if s in set(samples["split"])]
    splits += sorted(set(samples["split"]) - set(splits))
    width = max([len("split"), *map(len, splits)])
    emit(f"{'split':<{width}}  {'samples':>8}  {'accuracy':>8}")
    for split in splits:
        part = samples[samples["split"] == split]
        accuracy = float((part["pred"].to_numpy() == part["label"].to_numpy()).mean())
        emit(f"{split:<{width}}  {len(part):>8}  {accuracy:>8.4f}")
    emit("(accuracy: prediction equals the given, possibly noisy, label)")
    emit()

    train = samples[samples["split"] == "train"].reset_index(drop=True)
    n_flagged = int(train["is_label_issue"].astype(bool).sum())
    share = n_flagged / len(train) if len(train) else 0.0
    emit(f"Label issues flagged in train: {n_flagged} of {len(train)} ({share:.1%})")

    flipped: np.ndarray | None = None
    if flipped_ids is not None:
        ids = np.asarray(flipped_ids)
        flipped = np.isin(train["sample_id"].to_numpy(), ids)
        unknown = len(np.setdiff1d(ids, train["sample_id"].to_numpy()))
        if unknown:
            warnings.warn(
                f"{unknown} of the {len(ids)} `flipped_ids` are not train sample ids; "
                "they are ignored.",
                stacklevel=2,
            )

    if len(train) and top > 0:
        emit()
        emit(f"Top {min(top, len(train))} suspected label issues (train, by mislabel_score):")
        emit(_top_issues_table(train, top, class_names, flipped))

    if flipped is not None:
        m = detection_metrics(
            train["mislabel_score"].to_numpy(dtype=np.float64),
            train["is_label_issue"].to_numpy(dtype=bool),
            flipped,
        )
        emit()
        emit(f"Detection of the {int(m['n_flipped'])} injected label flips (train):")
        emit(
            f"  flagged issues: precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
            f"F1 {m['f1']:.4f}  ({int(m['true_positives'])} of {int(m['n_flagged'])} flags "
            "are flips)"
        )
        emit(
            f"  mislabel_score: precision@{int(m['k'])} {m['precision_at_k']:.4f}  "
            f"AUROC {m['auroc']:.4f}  AUPRC {m['auprc']:.4f}"
        )

    emit()
    if run_id is None:
        emit("MLflow run: not logged")
        return
    emit(f"MLflow run: {run_id}")
    emit(f"  view it:   {_view_command(tracking_uri)}")
    emit(f"  then open: {_run_page(run_id, tracking_uri)}")
