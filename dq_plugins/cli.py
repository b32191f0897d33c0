"""The ``dq`` command line: read, export, re-analyse and compare the results of past runs.

    dq report RUN_ID                                   summary, top issues, weakest slices
    dq export RUN_ID --issue label --format csv        flagged rows with their suggested labels
    dq analyze RUN_ID [--child-run]                    rerun the analysis from the raw record in the run
    dq compare RUN_A RUN_B                             issue counts, noise rates and slices side by side
    dq upload LOCAL_DIR [--run-id RUN_ID]              log a folder kept while MLflow was unreachable

Also ``python -m dq_plugins ...``. Every command takes the tracking URI as MLflow's own CLI does:
``--tracking-uri URI``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working
directory. Tables go to stdout, progress to stderr (``--quiet`` silences it).

Exit codes (:class:`ExitCode`): 0 success, 1 runtime error (unknown run, missing artifact, ...:
one line on stderr, no traceback unless ``--traceback``), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from dq_plugins.sinks.offline import (
    RunNotFoundError,
    artifact_paths,
    download,
    get_run,
    make_client,
    read_samples,
    reanalyze,
)
from dq_plugins.deprecation import warn_renamed
from dq_plugins.schema import (
    SLICES_PATH,
    IssueType,
    ScoreDirection,
    issue_type,
    ordered_splits,
    summary_metric_key,
)
from dq_plugins.schema import issue_types as registered_issue_types
from dq_plugins.sinks.mlflow_sink import FALLBACK_MANIFEST, LOGGED_ARTIFACTS_TAG, read_fallback_manifest

DESCRIPTION = """Read, export, re-analyse and compare the dq_plugins results of past MLflow runs.

  dq report RUN_ID                               summary, top issues, weakest slices
  dq export RUN_ID --issue label --format csv    flagged rows with their suggested labels
  dq analyze RUN_ID [--child-run]                rerun the analysis from the raw record in the run
  dq compare RUN_A RUN_B                         issue counts, noise rates and slices side by side
  dq upload LOCAL_DIR [--run-id RUN_ID]          log a folder kept while MLflow was unreachable"""

EPILOG = """The tracking URI: --tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.
Exit codes: 0 success, 1 runtime error (one line on stderr), 2 usage error.
Run `dq COMMAND --help` for the options of a command."""

EXPORT_FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl")
"""Values of ``dq export --format``."""

SLICE_COLUMNS: tuple[str, ...] = ("label", "cluster")
"""Columns of the per-sample table whose values define the slices that ``report`` and ``compare`` show
(``cluster`` only when the embeddings feature added it)."""

COMPARABLE_SLICE_COLUMNS: tuple[str, ...] = ("label",)
"""Slice columns whose values mean the same in two runs; ``compare`` leaves out ``cluster``: k-means
cluster ids are numbered anew in each run, so ``cluster=3`` of one run is not ``cluster=3`` of another."""

MIN_SLICE_SIZE = 5
"""Slices with fewer samples are left out of the weakest-slices table (their accuracy is noise)."""

ISSUE_TABLE_COLUMNS: tuple[str, ...] = (
    "split", "sample_id", "label", "suggested_label", "pred", "mislabel_score", "confidence", "aum",
    "forgetting_events", "reason",
)


class ExitCode(IntEnum):
    """Process exit status of ``dq``."""

    OK = 0
    ERROR = 1
    USAGE = 2


class _Progress:
    """Progress lines on stderr, prefixed with ``dq:``; silent when ``quiet``."""

    def __init__(self, quiet: bool, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"dq: {message}", file=self.stream or sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- tables
def format_table(frame: pd.DataFrame) -> str:
    """Plain-text table: floats with 4 decimals, text left-aligned, missing values as ``-``, ``(none)`` when empty."""
    if frame.empty:
        return "(none)"
    frame = frame.copy()
    for column in frame.columns:  # text reads better left-aligned
        if not (pd.api.types.is_string_dtype(frame[column]) or frame[column].dtype == object):
            continue
        text = frame[column].astype(str)
        width = max(text.str.len().max(), len(str(column)))
        frame[column] = text.str.ljust(width)
        frame = frame.rename(columns={column: str(column).ljust(width)})
    return frame.to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.4f}")


def format_numbers(frame: pd.DataFrame, columns: Sequence[str], integer_rows: pd.Series) -> pd.DataFrame:
    """A copy of ``frame`` whose ``columns`` hold text: counts (``integer_rows``) without decimals,
    other values with 4, differences (columns starting with ``B-A``) signed, missing as ``-``; right-aligned."""
    shown = frame.copy()
    for column in columns:
        sign = "+" if column.startswith("B-A") else ""
        text = [
            "-" if pd.isna(value) else (f"{value:{sign}.0f}" if integer else f"{value:{sign}.4f}")
            for value, integer in zip(frame[column], integer_rows, strict=True)
        ]
        width = max([len(column), *map(len, text)])
        shown[column] = [cell.rjust(width) for cell in text]
        shown = shown.rename(columns={column: column.rjust(width)})
    return shown


def _metric(metrics: dict[str, float], key: str) -> float:
    return float(metrics.get(key, np.nan))


def summary_table(samples: pd.DataFrame, metrics: dict[str, float]) -> pd.DataFrame:
    """One row per split: samples, accuracy (against the given labels), label issues and their
    rate, the estimated noise rate (the run's ``dq.estimated_noise_rate*`` metric, NaN when the run's
    ``dq.flags_trusted*`` is 0), the flags' trust (``dq.flags_trusted*``, 1/0, NaN for older runs) and
    the mean AUM (given-label margin: lower = the model fought the labels more; mislabel_score, a percentile
    rank within the split, would average 0.5 in every split). :func:`report_summary` is the text the report shows."""
    rows = []
    for split in ordered_splits(samples["split"]):
        part = samples[samples["split"] == split]
        trusted = _metric(metrics, summary_metric_key("flags_trusted", split))
        rows.append({
            "split": split,
            "samples": len(part),
            "accuracy": float((part["pred"] == part["label"]).mean()),
            "label_issues": int(part["is_label_issue"].sum()),
            "issue_rate": float(part["is_label_issue"].mean()),
            "est_noise_rate": (
                np.nan if trusted == 0.0 else _metric(metrics, summary_metric_key("estimated_noise_rate", split))
            ),
            "flags_trusted": trusted,
            "mean_aum": float(part["aum"].mean()) if "aum" in part.columns else np.nan,
        })
    return pd.DataFrame(rows)


def report_summary(summary: pd.DataFrame, metrics: dict[str, float]) -> pd.DataFrame:
    """:func:`summary_table` as ``dq report`` shows it: the noise rate with its 95% bootstrap interval
    (``0.3000 [0.2700, 0.3300]``) or ``untrusted``, and the trust with its confidence (``yes (0.95)``)."""
    shown = summary.copy()
    shown["est_noise_rate"] = [noise_rate_text(metrics, split) for split in shown["split"]]
    shown["flags_trusted"] = [trust_text(metrics, split) for split in shown["split"]]
    return shown


def noise_rate_text(metrics: dict[str, float], split: str) -> str:
    """``"0.3000 [0.2700, 0.3300]"``, ``"0.3000"`` (a run without the interval), ``"untrusted"`` or ``"-"``."""
    if _metric(metrics, summary_metric_key("flags_trusted", split)) == 0.0:
        return "untrusted"
    rate = _metric(metrics, summary_metric_key("estimated_noise_rate", split))
    if not np.isfinite(rate):
        return "-"
    low, high = (_metric(metrics, summary_metric_key(f"estimated_noise_rate_{end}", split)) for end in ("low", "high"))
    return f"{rate:.4f} [{low:.4f}, {high:.4f}]" if np.isfinite(low) and np.isfinite(high) else f"{rate:.4f}"


def trust_text(metrics: dict[str, float], split: str) -> str:
    """``"yes (0.95)"`` / ``"NO (0.00)"`` from ``dq.flags_trusted*`` and ``dq.flags_confidence*``; ``"-"`` for older runs."""
    trusted = _metric(metrics, summary_metric_key("flags_trusted", split))
    if not np.isfinite(trusted):
        return "-"
    return f"{'yes' if trusted else 'NO'} ({_metric(metrics, summary_metric_key('flags_confidence', split)):.2f})"


def slice_table(samples: pd.DataFrame, columns: Sequence[str] = SLICE_COLUMNS) -> pd.DataFrame:
    """Per split and per value of each of ``columns`` present: size, accuracy, label-issue rate and
    mean AUM (NaN without an ``aum`` column). The slice is named ``column=value``."""
    frames = []
    for column in (c for c in columns if c in samples.columns):
        grouped = samples.assign(
            _correct=(samples["pred"] == samples["label"]).astype(float),
            _issue=samples["is_label_issue"].astype(float),
            _aum=samples["aum"] if "aum" in samples.columns else np.nan,
        ).groupby(["split", column], sort=True)
        table = grouped.agg(
            size=("sample_id", "size"), accuracy=("_correct", "mean"), issue_rate=("_issue", "mean"),
            mean_aum=("_aum", "mean"),
        ).reset_index()
        table.insert(1, "slice", [f"{column}={value}" for value in table.pop(column)])
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["split", "slice", "size", "accuracy", "issue_rate", "mean_aum"])
    return pd.concat(frames, ignore_index=True)


def weakest_slices(slices: pd.DataFrame, top: int, min_size: int = MIN_SLICE_SIZE) -> pd.DataFrame:
    """The ``top`` slices of at least ``min_size`` samples with the lowest accuracy."""
    big = slices[slices["size"] >= min_size]
    return big.sort_values(["accuracy", "size"], ascending=[True, False]).head(top).reset_index(drop=True)


def _run_line(run: Any) -> str:
    name = run.info.run_name or "-"
    return f"run {run.info.run_id} (name {name!r}, status {run.info.status})"


# ---------------------------------------------------------------------------------------- commands
def cmd_report(args: argparse.Namespace, client: Any, progress: _Progress, out: TextIO) -> ExitCode:
    from dq_plugins.analysis.pipeline import top_issues

    run = get_run(client, args.run_id)
    progress(f"reading the results of run {args.run_id}")
    samples = read_samples(client, args.run_id)
    print(f"dq report: {_run_line(run)}", file=out)
    print(f"tracking URI: {client.tracking_uri}", file=out)
    print("\nSummary (accuracy is against the given, possibly noisy, labels)", file=out)
    summary = summary_table(samples, run.data.metrics)
    print(format_table(report_summary(summary, run.data.metrics)), file=out)
    untrusted = summary.loc[summary["flags_trusted"] == 0.0, "split"].tolist()
    if untrusted:
        print(f"Label-issue flags NOT to be trusted for {', '.join(untrusted)}: the model has not learned enough "
              "(fewer than 2 epochs or accuracy near chance); the noise rate is not estimated.", file=out)

    print(f"\nIssues by type (rows of each: `dq export {args.run_id} --issue ISSUE`)", file=out)
    print(format_table(issue_counts(samples)), file=out)

    issues = top_issues(samples, max_rows=args.top)
    print(f"\nTop {len(issues)} issues (flagged label issues first, then by mislabel_score)", file=out)
    print(format_table(issues[list(ISSUE_TABLE_COLUMNS)]), file=out)

    slices = _logged_slices(client, args.run_id, progress)
    if slices is None:
        slices = weakest_slices(slice_table(samples), args.top)
        title = f"Weakest slices (lowest accuracy, at least {MIN_SLICE_SIZE} samples)"
    else:
        title = f"Weakest slices (from {SLICES_PATH})"
    print(f"\n{title}", file=out)
    print(format_table(slices), file=out)
    print(f"\nAll rows: `dq export {args.run_id} --issue label --format csv`", file=out)
    return ExitCode.OK


def _logged_slices(client: Any, run_id: str, progress: _Progress) -> pd.DataFrame | None:
    """The run's ``dq/slices.json`` (lowest accuracy first when it has that column), or ``None``."""
    if SLICES_PATH not in artifact_paths(client, run_id):
        return None
    progress(f"reading {SLICES_PATH}")
    with tempfile.TemporaryDirectory(prefix="dq_cli_") as tmp:
        table = pd.read_json(download(client, run_id, SLICES_PATH, tmp), orient="split")
    if "accuracy" in table.columns:
        table = table.sort_values("accuracy")
    # mislabel_score is a percentile rank within its split: its mean over a slice says little (about 0.5);
    # label_issue_rate is what the table shows about the labels instead.
    table = table.drop(columns=["mean_mislabel_score"], errors="ignore")
    return table.head(10).reset_index(drop=True)


def issue_types(samples: pd.DataFrame) -> dict[str, IssueType]:
    """The registered issue types (:func:`dq_plugins.issue_types`) whose flag column the table has, by name."""
    return {issue.name: issue for issue in registered_issue_types() if issue.flag_column in samples.columns}


def issue_column(samples: pd.DataFrame, issue: str) -> IssueType:
    """The registered issue type ``issue``, checked against the table.

    Raises:
        ValueError: the table has no such issue type (the message lists the ones it has and the registered ones).
    """
    types = issue_types(samples)
    if issue not in types:
        known = [t.name for t in registered_issue_types()]
        why = "" if issue not in known else f" (no {issue_type(issue).flag_column} column)"
        raise ValueError(f"The run has no {issue!r} issues{why}. Issue types in this run: {sorted(types)}. "
                         f"HINT: the registered issue types are {known}.")
    return types[issue]


def issue_counts(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per issue type of the table (registry order): its name, flag column, the flagged rows of
    each split and its description."""
    splits = ordered_splits(samples["split"])
    rows = []
    for issue in issue_types(samples).values():
        flags = samples[issue.flag_column].astype(bool)
        counts = {split: int(flags[samples["split"] == split].sum()) for split in splits}
        rows.append({"issue": issue.name, "flag": issue.flag_column, **counts, "description": issue.description})
    return pd.DataFrame(rows, columns=["issue", "flag", *splits, "description"])

def cmd_export(args: argparse.Namespace, client: Any, progress: _Progress, out: TextIO) -> ExitCode:
    target = args.output or f"dq_{args.issue}_issues_{args.run_id[:8]}.{args.format}"
    if target != "-" and Path(target).exists() and not args.force:
        raise FileExistsError(f"{target} exists. HINT: pass --force to overwrite it, or --output another path.")
    progress(f"reading the results of run {args.run_id}")
    samples = read_samples(client, args.run_id, split=args.split)
    issue = issue_column(samples, args.issue)
    rows = samples[samples[issue.flag_column].astype(bool)]
    if issue.score_column in rows.columns:  # runs of older versions may lack a score
        worst_first = issue.score_direction is ScoreDirection.HIGHER_IS_WORSE
        rows = rows.sort_values(issue.score_column, ascending=not worst_first, kind="stable")
    rows = rows.reset_index(drop=True)
    if target == "-":
        _write_rows(rows, args.format, out)
        where = "stdout"
    else:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_rows(rows, args.format, path)
        where = str(path)
    progress(f"wrote {len(rows)} {args.issue} issues (of {len(samples)} rows) to {where}")
    return ExitCode.OK


FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
"""A CSV text cell starting with one of these runs as a formula in a spreadsheet (CSV injection)."""


def escape_formulas(rows: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``rows`` whose text cells starting with a :data:`FORMULA_PREFIXES` character get a leading
    ``'`` (what spreadsheets show as text); numbers (a negative AUM) are left as they are."""
    escaped = rows.copy()
    for column in escaped.columns:
        values = escaped[column]
        if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
            continue
        risky = values.map(lambda cell: isinstance(cell, str) and cell.startswith(FORMULA_PREFIXES))
        if risky.any():
            escaped[column] = values.where(~risky, "'" + values.astype(str))
    return escaped


def _write_rows(rows: pd.DataFrame, fmt: str, target: Path | TextIO) -> None:
    if fmt == "csv":
        escape_formulas(rows).to_csv(target, index=False)
    elif fmt == "jsonl":
        text = rows.to_json(orient="records", lines=True)
        if isinstance(target, Path):
            target.write_text(text)
        else:
            target.write(text)
    else:
        rows.to_parquet(target, index=False)


class _RenamedFlag(argparse.Action):
    """A flag's former name: stores into the new flag's ``dest`` and warns (:func:`~dq_plugins.deprecation.warn_renamed`)."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warn_renamed(option_string or self.option_strings[0], self.new, parser.prog, stacklevel=2)
        setattr(namespace, self.dest, values)


def cmd_analyze(args: argparse.Namespace, client: Any, progress: _Progress, out: TextIO) -> ExitCode:
    done = reanalyze(
        args.run_id, tracking_uri=client.tracking_uri, child_run=args.child_run, early_epochs=args.early_epochs,
        max_issue_rows=args.max_issue_rows, rules=Path(args.rules) if args.rules else None, progress=progress,
    )
    metrics = done.result.metrics
    print(f"dq analyze: results of run {done.source_run_id} logged into run {done.run_id}", file=out)
    rows = []
    for key in sorted(k for k in metrics if k.startswith(("dq.num_label_issues", "dq.estimated_noise_rate", "dq.accuracy"))):
        rows.append({"metric": key, "before": done.previous_metrics.get(key, np.nan), "after": metrics[key]})
    table = pd.DataFrame(rows, columns=["metric", "before", "after"])
    print(format_table(format_numbers(table, ["before", "after"], table["metric"].str.startswith("dq.num_"))), file=out)
    if done.kept_columns:
        print(f"kept columns from the previous table: {', '.join(done.kept_columns)}", file=out)
    return ExitCode.OK


def compare_summary(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Summary rows of two runs side by side: one row per (split, measure), columns A, B, B-A."""
    left = a.set_index("split")
    right = b.set_index("split")
    rows = []
    for split in dict.fromkeys([*left.index, *right.index]):
        for measure in ("samples", "accuracy", "label_issues", "issue_rate", "est_noise_rate"):
            va = float(left.at[split, measure]) if split in left.index else np.nan
            vb = float(right.at[split, measure]) if split in right.index else np.nan
            rows.append({"split": split, "measure": measure, "A": va, "B": vb, "B-A": vb - va})
    return pd.DataFrame(rows)


def compare_slices(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Slice tables of two runs joined on (split, slice): size, accuracy and issue rate of each, and
    the accuracy change, largest drop first."""
    keep = ["split", "slice", "size", "accuracy", "issue_rate"]
    merged = a[keep].merge(b[keep], on=["split", "slice"], how="outer", suffixes=("_A", "_B"))
    merged["accuracy_B-A"] = merged["accuracy_B"] - merged["accuracy_A"]
    ordered = ["split", "slice", "size_A", "size_B", "accuracy_A", "accuracy_B", "accuracy_B-A", "issue_rate_A",
               "issue_rate_B"]
    return merged[ordered].sort_values(["accuracy_B-A", "split", "slice"], na_position="last").reset_index(drop=True)


def flag_overlap(a: pd.DataFrame, b: pd.DataFrame, split: str = "train") -> str | None:
    """A line saying how far the flagged ``split`` samples of two runs agree (same sample ids), or ``None``."""
    ids_a = set(a.loc[(a["split"] == split), "sample_id"])
    ids_b = set(b.loc[(b["split"] == split), "sample_id"])
    if not ids_a or ids_a != ids_b:
        return None
    fa = set(a.loc[(a["split"] == split) & a["is_label_issue"], "sample_id"])
    fb = set(b.loc[(b["split"] == split) & b["is_label_issue"], "sample_id"])
    union = fa | fb
    jaccard = len(fa & fb) / len(union) if union else 1.0
    return (f"Flagged {split} samples (same {len(ids_a)} sample ids in both runs): {len(fa & fb)} in both, "
            f"{len(fa - fb)} only in A, {len(fb - fa)} only in B (Jaccard {jaccard:.4f})")


def cmd_compare(args: argparse.Namespace, client: Any, progress: _Progress, out: TextIO) -> ExitCode:
    runs = [get_run(client, run_id) for run_id in (args.run_a, args.run_b)]
    tables = []
    for run_id in (args.run_a, args.run_b):
        progress(f"reading the results of run {run_id}")
        tables.append(read_samples(client, run_id))
    print("dq compare", file=out)
    print(f"A: {_run_line(runs[0])}", file=out)
    print(f"B: {_run_line(runs[1])}", file=out)
    summaries = [summary_table(t, r.data.metrics) for t, r in zip(tables, runs, strict=True)]
    print("\nSummary", file=out)
    summary = compare_summary(*summaries)
    counts = summary["measure"].isin(["samples", "label_issues"])
    print(format_table(format_numbers(summary, ["A", "B", "B-A"], counts)), file=out)
    print("\nPer-class slices (largest accuracy drop from A to B first; clusters are numbered anew in each run "
          "and are not compared)", file=out)
    slices = [slice_table(t, COMPARABLE_SLICE_COLUMNS) for t in tables]
    print(format_table(compare_slices(*slices).head(args.top)), file=out)
    overlap = flag_overlap(*tables)
    if overlap:
        print(f"\n{overlap}", file=out)
    return ExitCode.OK


# ---------------------------------------------------------------------------------------- upload
UPLOADED_FROM_TAG = "dq.uploaded_from"
"""Tag of a run created by ``dq upload``: the fallback folder it was uploaded from."""


@dataclass
class Upload:
    """What :func:`upload_fallback` logged."""

    run_id: str
    tracking_uri: str
    created_run: bool
    files: int
    tables: list[str]
    metrics: int
    skipped_metrics: list[str]
    tags: int


def _upload_tracking_uri(flag: str | None, manifest: dict[str, Any]) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the URI the results were meant for, else MLflow's default."""
    import mlflow

    return flag or os.environ.get("MLFLOW_TRACKING_URI") or manifest.get("tracking_uri") or mlflow.get_tracking_uri()


def _run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def upload_fallback(
    folder: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment_name: str | None = None,
    progress: Any = None,
) -> Upload:
    """Log a fallback folder (kept by the callbacks while MLflow was unreachable) into a run.

    The run: ``run_id``; else the run the callback had opened (the manifest's run id) when it exists at
    the tracking URI; else a new run in ``experiment_name`` (default: the experiment the results were
    meant for) with the intended run name, tagged ``dq_plugins`` and :data:`UPLOADED_FROM_TAG`, whose id
    is then written to the manifest so that uploading again goes to the same run. Every file is logged
    at its artifact path; the tables are listed in the ``mlflow.loggedArtifacts`` tag (as ``log_table``
    does), so the MLflow UI renders them; the run tags and the metrics (with their epochs as steps) are
    logged, except metrics the run already holds: uploading twice logs nothing twice.

    Raises:
        FileNotFoundError, ValueError: ``folder`` is not a fallback folder (see :func:`read_fallback_manifest`).
        RunNotFoundError: ``run_id`` does not exist at the tracking URI.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    say = progress or (lambda message: None)
    folder = Path(folder)
    manifest = read_fallback_manifest(folder)
    uri = _upload_tracking_uri(tracking_uri, manifest)
    client = MlflowClient(tracking_uri=uri)
    created = False
    if run_id is not None:
        get_run(client, run_id)
    elif manifest.get("run_id") and _run_exists(client, manifest["run_id"]):
        run_id = manifest["run_id"]
    else:
        name = experiment_name or manifest.get("experiment_name") or "Default"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run_id = client.create_run(experiment_id, run_name=manifest.get("run_name"),
                                   tags={"dq_plugins": "true", UPLOADED_FROM_TAG: str(folder.resolve())}).info.run_id
        created = True
        say(f"created run {run_id} in experiment {name!r}")
    files = [path for path in sorted(folder.rglob("*")) if path.is_file() and path.name != FALLBACK_MANIFEST]
    for path in files:
        parent = path.parent.relative_to(folder).as_posix()
        client.log_artifact(run_id, str(path), artifact_path=None if parent == "." else parent)
    say(f"logged {len(files)} files")
    tables = [table for table in manifest.get("tables", []) if (folder / table).is_file()]
    logged = json.loads(client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    missing = [entry for entry in ({"path": table, "type": "table"} for table in tables) if entry not in logged]
    if missing:
        client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps(logged + missing))
    tags = manifest.get("tags", {})
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    present = set(client.get_run(run_id).data.metrics)
    now = int(time.time() * 1000)
    metrics = [Metric(str(key), float(value), now, int(step)) for key, value, step in manifest.get("metrics", [])
               if key not in present]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])
    skipped = sorted({str(key) for key, _, _ in manifest.get("metrics", []) if key in present})
    if created:
        client.set_terminated(run_id, status="FINISHED")
        manifest.update(run_id=run_id, tracking_uri=uri)
        (folder / FALLBACK_MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return Upload(run_id, uri, created, len(files), tables, len(metrics), skipped, len(tags))


def cmd_upload(args: argparse.Namespace, client: Any, progress: _Progress, out: TextIO) -> ExitCode:
    done = upload_fallback(args.local_dir, tracking_uri=args.tracking_uri, run_id=args.run_id,
                           experiment_name=args.experiment_name, progress=progress)
    where = "a new run" if done.created_run else "run"
    print(f"dq upload: {args.local_dir} logged into {where} {done.run_id} at {done.tracking_uri}", file=out)
    print(f"  {done.files} files ({len(done.tables)} tables: {', '.join(done.tables) or '-'}), "
          f"{done.metrics} metric values, {done.tags} tags", file=out)
    if done.skipped_metrics:
        print(f"  {len(done.skipped_metrics)} metrics already in the run were not logged again", file=out)
    return ExitCode.OK


# ---------------------------------------------------------------------------------------- parser
def _existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r} (give the path of a YAML file of rules)")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer but got {value}")
    return value


def _add_common(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    # Accepted before and after the command: below it, a flag left out keeps the top-level value.
    unset_uri, unset_flag = (None, False) if top_level else (argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument("--tracking-uri", default=unset_uri, metavar="URI",
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    parser.add_argument("-q", "--quiet", action="store_true", default=unset_flag, help="no progress lines on stderr.")
    parser.add_argument("--traceback", action="store_true", default=unset_flag,
                        help="show the full traceback of an error.")


def build_parser() -> argparse.ArgumentParser:
    """The ``dq`` argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="dq", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    report = commands.add_parser("report", help="summary, top issues and weakest slices of a run.")
    report.add_argument("run_id", metavar="RUN_ID")
    report.add_argument("--top", type=_positive_int, default=10, help="rows per table (default 10).")
    report.set_defaults(handler=cmd_report)

    export = commands.add_parser("export", help="write the flagged rows of a run, with suggested labels.")
    export.add_argument("run_id", metavar="RUN_ID")
    names = ", ".join(f"'{t.name}' ({t.flag_column})" for t in registered_issue_types())
    export.add_argument("--issue", default="label", help=f"issue type: {names}; default 'label'.")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="csv", help="file format (default csv).")
    export.add_argument("--output", "-o", metavar="PATH", help="file to write, '-' for stdout (csv, jsonl); "
                        "default dq_<issue>_issues_<run id prefix>.<format>.")
    export.add_argument("--split", default=None, help="only this split (default: every split, with a split column).")
    export.add_argument("--force", action="store_true", help="overwrite the output file if it exists.")
    export.set_defaults(handler=cmd_export)

    analyze = commands.add_parser("analyze", help="rerun the end-of-fit analysis from the raw record in a run.")
    analyze.add_argument("run_id", metavar="RUN_ID")
    analyze.add_argument("--child-run", action="store_true",
                         help="log into a new run nested under RUN_ID instead of replacing its dq/ results.")
    analyze.add_argument("--early-epochs", type=_positive_int, default=None,
                         help="the first epochs, averaged by EL2N and the early mislabel signals (default: the "
                         "callback's default).")
    analyze.add_argument("--el2n-epochs", dest="early_epochs", type=_positive_int, action=_RenamedFlag,
                         new="--early-epochs", help=argparse.SUPPRESS)
    analyze.add_argument("--max-issue-rows", type=_positive_int, default=None,
                         help="rows of dq/issues.json (default 500).")
    analyze.add_argument("--rules", type=_existing_file, default=None, metavar="YAML",
                         help="rules to evaluate on the new results (the recipe config format: a `rules:` list).")
    analyze.set_defaults(handler=cmd_analyze)

    compare = commands.add_parser("compare", help="two runs side by side: issues, noise rates, slices.")
    compare.add_argument("run_a", metavar="RUN_A")
    compare.add_argument("run_b", metavar="RUN_B")
    compare.add_argument("--top", type=_positive_int, default=20, help="slice rows (default 20).")
    compare.set_defaults(handler=cmd_compare)

    upload = commands.add_parser(
        "upload", help="log a folder that a callback kept while MLflow was unreachable into a run.",
        description="Log a fallback folder (kept by the callbacks while MLflow was unreachable; the warning "
        "names it) into a run: its files, tables, metrics and tags. The tracking URI: --tracking-uri, else "
        "MLFLOW_TRACKING_URI, else the one the results were meant for.",
    )
    upload.add_argument("local_dir", metavar="LOCAL_DIR", help="the fallback folder, e.g. dq_artifacts/<run id>.")
    upload.add_argument("--run-id", default=None, help="log into this existing run (default: the run the callback "
                        "had opened if it exists there, else a new run).")
    upload.add_argument("--experiment-name", default=None, metavar="NAME",
                        help="experiment of a new run (default: the one the results were meant for).")
    upload.set_defaults(handler=cmd_upload)

    for sub in (report, export, analyze, compare, upload):
        _add_common(sub, top_level=False)
    return parser


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    expected = (RunNotFoundError, FileNotFoundError, FileExistsError, ValueError, PermissionError)
    if not isinstance(err, expected):
        text = f"{type(err).__name__}: {text} (rerun with --traceback for details)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dq`` and ``python -m dq_plugins``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    if args.command == "export" and args.output == "-" and args.format == "parquet":
        parser.error("--format parquet cannot be written to stdout; pass --output PATH.")
    _quiet_mlflow()
    progress = _Progress(args.quiet)
    try:
        client = make_client(args.tracking_uri) if args.command != "upload" else None  # upload picks its own URI
        return int(args.handler(args, client, progress, sys.stdout))
    except BrokenPipeError:  # the reader went away (`dq report ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.ERROR
    except KeyboardInterrupt:
        print(f"dq {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one clear line instead of a traceback, unless asked
        if args.traceback:
            raise
        print(f"dq {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return ExitCode.ERROR
