"""The ``dq`` commands (``report``, ``export``, ``analyze``, ``compare``, ``upload``): each reads what it
needs from the run and prints a table (:mod:`dq_plugins.cli.tables`) or writes a file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from dq_plugins.cli.tables import (
    COMPARABLE_SLICE_COLUMNS,
    MIN_SLICE_SIZE,
    _run_line,
    format_numbers,
    format_table,
    report_summary,
    slice_table,
    summary_table,
    trust_text,
    weakest_slices,
)
from dq_plugins.cli.upload import upload_fallback
from dq_plugins.schema import (
    IssueType,
    SLICES_PATH,
    ScoreDirection,
    issue_type,
    issue_types as registered_issue_types,
    ordered_splits,
    summary_metric_key,
)
from dq_plugins.sinks.offline import artifact_paths, download, get_run, read_samples, reanalyze


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


def cmd_report(args: argparse.Namespace, client: Any, progress: _Progress, out: TextIO) -> ExitCode:
    from dq_plugins.analysis.pipeline import top_issues

    run = get_run(client, args.run_id)
    progress(f"reading the results of run {args.run_id}")
    samples = read_samples(client, args.run_id)
    print(f"dq report: {_run_line(run)}", file=out)
    print(f"tracking URI: {client.tracking_uri}", file=out)
    task = run.data.tags.get("dq.task")
    if task in ("multilabel", "token_classification"):
        return _report_task(task, samples, run, args, client, progress, out)
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


def _report_task(task: str, samples: pd.DataFrame, run: Any, args: argparse.Namespace, client: Any,
                 progress: _Progress, out: TextIO) -> ExitCode:
    """``dq report`` of a multi-label or token classification run (:mod:`dq_plugins.recording.tasks`): its
    ``dq.*`` metrics, the flagged rows per split, the top rows by ``mislabel_score`` and the per-class slices."""
    print(f"\nTask: {task} (per-{'class rows in dq/sample_labels.parquet' if task == 'multilabel' else 'token rows in dq/tokens.parquet'})",
          file=out)
    metrics = pd.DataFrame(sorted((k, round(v, 4)) for k, v in run.data.metrics.items() if k.startswith("dq.")),
                           columns=["metric", "value"])
    print(format_table(metrics), file=out)
    counts = samples.groupby("split", sort=False).agg(rows=("sample_id", "size"), label_issues=("is_label_issue", "sum"))
    counts["flags_trusted"] = [trust_text(run.data.metrics, split) for split in counts.index]
    print("\nLabel issues by split", file=out)
    print(format_table(counts.reset_index()), file=out)
    untrusted = [s for s in counts.index if run.data.metrics.get(summary_metric_key("flags_trusted", s)) == 0.0]
    if untrusted:
        print(f"Label-issue flags NOT to be trusted for {', '.join(untrusted)}: the model has not learned enough "
              "(fewer than 2 epochs or accuracy near chance).", file=out)
    top = samples.sort_values(["is_label_issue", "mislabel_score"], ascending=[False, False]).head(args.top)
    print(f"\nTop {len(top)} rows (flagged first, then by mislabel_score)", file=out)
    print(format_table(top.astype({c: str for c in top.columns if top[c].dtype == object})), file=out)
    slices = _logged_slices(client, args.run_id, progress)
    if slices is not None:
        print(f"\nPer-class slices (from {SLICES_PATH})", file=out)
        print(format_table(slices), file=out)
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
