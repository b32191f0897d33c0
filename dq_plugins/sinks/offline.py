"""Work on finished runs: read their artifacts back, rerun the analysis from the raw record.

Used by the ``dq`` command line (:mod:`dq_plugins.cli`), :func:`dq_plugins.fix` and
:func:`dq_plugins.select_subset`. The analysis itself is :func:`dq_plugins.analysis.pipeline.analyze` (a multi-label
or token run's: :func:`dq_plugins.analysis.task_pipeline.analyze_task`), the raw
record is read with :func:`dq_plugins.raw_record.load_history` and the artifact paths are those of
:mod:`dq_plugins.schema`: nothing here recomputes a score.

Rerunning into the same run writes what the end of fit writes (:func:`dq_plugins.sinks.publish.publish_results`)
through an :class:`~dq_plugins.sinks.mlflow_sink.MlflowSink` in ``replace`` mode: files are overwritten at their
artifact paths, tables are replaced rather than appended to, and unchanged metrics are not logged again.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from dq_plugins.schema import (
    ARTIFACT_DIR,
    EMBEDDING_HTML_PATH,
    EMBEDDINGS_DIR,
    FINGERPRINTS_DIR,
    PROJECTION_TAG,
    RAW_DIR,
    SAMPLES_PATH,
)
from dq_plugins.sinks.mlflow_sink import MlflowSink
from dq_plugins.sinks.publish import publish_results

if TYPE_CHECKING:
    from dq_plugins.analysis.pipeline import AnalysisResult

SOURCE_RUN_TAG = "dq.source_run"
"""Tag of a run derived from another (a child analysis run): the id of the run holding the raw record."""


PARENT_RUN_TAG = "mlflow.parentRunId"

Progress = Callable[[str], None]
"""Receives one line of progress text (the command line prints it to stderr)."""


class RunNotFoundError(LookupError):
    """The run id does not exist at the tracking URI."""


def _silent(message: str) -> None:
    del message


def make_client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (``None``: ``MLFLOW_TRACKING_URI``, else MLflow's default).

    Raises:
        FileNotFoundError: for a ``sqlite:///PATH`` URI whose file does not exist (MLflow would
            silently create an empty store there, and every run id would then look unknown).
    """
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if str(path) != ":memory:" and not path.exists():
            raise FileNotFoundError(
                f"No MLflow store at tracking URI {uri!r}: {path.resolve()} does not exist. HINT: pass "
                "`--tracking-uri` (or set MLFLOW_TRACKING_URI) to the store the run was logged to, for example "
                "`sqlite:///mlflow.db` in the folder you trained from."
            )
    return mlflow.MlflowClient(tracking_uri=uri)


def get_run(client: Any, run_id: str) -> Any:
    """``client.get_run(run_id)``, with an error that names the run and the tracking URI."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as err:
        raise RunNotFoundError(
            f"Run {run_id!r} was not found at tracking URI {client.tracking_uri!r}. HINT: check the run id "
            "(`mlflow runs list --experiment-id <ID>`) and the tracking URI (`--tracking-uri` or MLFLOW_TRACKING_URI)."
        ) from err


def artifact_paths(client: Any, run_id: str, directory: str = ARTIFACT_DIR) -> list[str]:
    """Paths of the files directly under ``directory`` in the run's artifacts (empty when absent)."""
    try:
        return [item.path for item in client.list_artifacts(run_id, directory) if not item.is_dir]
    except Exception:  # noqa: BLE001 - a missing folder reads as empty on every artifact store
        return []


def download(client: Any, run_id: str, path: str, dst: str | os.PathLike) -> Path:
    """Download one artifact file of the run into ``dst``.

    Raises:
        FileNotFoundError: the run has no such artifact (message names the run, path and fix).
    """
    message = (
        f"Run {run_id!r} has no {path}. HINT: it is written at the end of fit by a dq_plugins callback; "
        "check that the run finished and that this is the run the callback reported (`callback.run_id`)."
    )
    try:
        local = Path(client.download_artifacts(run_id, path, str(dst)))
    except Exception as err:  # noqa: BLE001 - every store raises its own type; re-raised with the fix
        raise FileNotFoundError(message) from err
    if not local.is_file():
        raise FileNotFoundError(message)
    return local


def load_histories(client: Any, run_id: str, dst: str | os.PathLike, progress: Progress = _silent) -> tuple[str, dict]:
    """Download and read the raw record (``dq/raw/<split>.npz``) of a run.

    A run without a raw record that was derived from another one (tag :data:`SOURCE_RUN_TAG`) is
    read from that source run.

    Returns:
        ``(run id holding the record, {split: history})``: a ``SplitHistory`` per split, or a multi-label /
        token task's ``MultiLabelHistory`` / ``TokenHistory`` (:func:`~dq_plugins.raw_record.load_task_history`).

    Raises:
        FileNotFoundError: neither the run nor its source holds ``dq/raw/*.npz``.
    """
    from dq_plugins.raw_record import load_history

    holder = run_id
    files = [p for p in artifact_paths(client, run_id, RAW_DIR) if p.endswith(".npz")]
    if not files:
        source = get_run(client, run_id).data.tags.get(SOURCE_RUN_TAG)
        if source:
            holder = source
            files = [p for p in artifact_paths(client, source, RAW_DIR) if p.endswith(".npz")]
    if not files:
        raise FileNotFoundError(
            f"Run {run_id!r} has no raw record under {RAW_DIR}/ (expected files such as {RAW_DIR}/train.npz). "
            "HINT: the callbacks save it at the end of fit, or when fit stops on an error; rerun training with "
            "a dq_plugins callback to get one."
        )
    from dq_plugins.raw_record import is_task_record, load_task_history

    histories = {}
    for path in sorted(files):
        split = Path(path).stem
        progress(f"downloading the raw record of split {split!r} ({path})")
        local = download(client, holder, path, dst)
        histories[split] = load_task_history(local) if is_task_record(local) else load_history(local)
    return holder, histories


def read_samples(client: Any, run_id: str, split: str | None = None) -> pd.DataFrame:
    """The run's ``dq/samples.parquet`` (rows of ``split`` only when given).

    Raises:
        RunNotFoundError: unknown run.
        FileNotFoundError: no per-sample table (the hint says when ``dq analyze`` can make one).
        ValueError: the table has no row for ``split`` (the message lists the splits it has).
    """
    get_run(client, run_id)
    if SAMPLES_PATH not in artifact_paths(client, run_id):
        has_raw = any(p.endswith(".npz") for p in artifact_paths(client, run_id, RAW_DIR))
        hint = (
            f"the run holds the raw record, so `dq analyze {run_id}` rebuilds it."
            if has_raw
            else "it is written at the end of fit by a dq_plugins callback; check that the run finished and that "
            "this is the run the callback reported (`callback.run_id`)."
        )
        raise FileNotFoundError(f"Run {run_id!r} has no {SAMPLES_PATH}. HINT: {hint}")
    with tempfile.TemporaryDirectory(prefix="dq_samples_") as tmp:
        frame = pd.read_parquet(download(client, run_id, SAMPLES_PATH, tmp))
    if split is not None:
        splits = sorted(frame["split"].unique().tolist())
        frame = frame[frame["split"] == split].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"Run {run_id!r} has no {split!r} rows in {SAMPLES_PATH}; it has the splits {splits}.")
    return frame


def load_embeddings(client: Any, run_id: str, dst: str | os.PathLike, progress: Progress = _silent) -> dict:
    """The run's ``dq/embeddings/<split>.npz`` (written by ``raw_record.save_embeddings``), or ``{}``.

    Returns:
        split -> (ids (M,) int64, embeddings (M, D)).
    """
    from dq_plugins.raw_record import load_embeddings as read_embeddings

    embeddings = {}
    for path in sorted(p for p in artifact_paths(client, run_id, EMBEDDINGS_DIR) if p.endswith(".npz")):
        progress(f"downloading the embeddings of split {Path(path).stem!r} ({path})")
        embeddings[Path(path).stem] = read_embeddings(download(client, run_id, path, dst))
    return embeddings


def load_fingerprints(client: Any, run_id: str, dst: str | os.PathLike, progress: Progress = _silent) -> dict:
    """The run's ``dq/fingerprints/<split>.npz`` (input fingerprints), or ``{}``: split -> (ids, hashes, sketches)."""
    from dq_plugins.raw_record import load_fingerprints as read_fingerprints

    found = {}
    for path in sorted(p for p in artifact_paths(client, run_id, FINGERPRINTS_DIR) if p.endswith(".npz")):
        progress(f"downloading the input fingerprints of split {Path(path).stem!r} ({path})")
        found[Path(path).stem] = read_fingerprints(download(client, run_id, path, dst))
    return found


@dataclass
class OfflineAnalysis:
    """What :func:`reanalyze` did.

    Attributes:
        run_id: the run the results were logged into.
        source_run_id: the run holding the raw record.
        result: the :class:`~dq_plugins.analysis.pipeline.AnalysisResult`.
        kept_columns: columns of the previous ``dq/samples.parquet`` that the core analysis does not
            compute (added by other features), carried over by ``(split, sample_id)``.
        previous_metrics: the run's ``dq.*`` metrics before the rerun (empty for a child run).
    """

    run_id: str
    source_run_id: str
    result: AnalysisResult
    kept_columns: list[str] = field(default_factory=list)
    previous_metrics: dict[str, float] = field(default_factory=dict)


def _previous_samples(client: Any, run_id: str, dst: Path) -> pd.DataFrame | None:
    if SAMPLES_PATH not in artifact_paths(client, run_id):
        return None
    return pd.read_parquet(download(client, run_id, SAMPLES_PATH, dst))


def carry_columns(new: pd.DataFrame, old: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str]]:
    """``new`` plus the columns of ``old`` it lacks, matched on ``(split, sample_id)``."""
    if old is None:
        return new, []
    extra = [c for c in old.columns if c not in new.columns]
    if not extra or not {"split", "sample_id"} <= set(old.columns):
        return new, []
    merged = new.merge(old[["split", "sample_id", *extra]], on=["split", "sample_id"], how="left")
    return merged, extra


def reanalyze(
    run_id: str,
    *,
    tracking_uri: str | None = None,
    child_run: bool = False,
    early_epochs: int | None = None,
    max_issue_rows: int | None = None,
    rules: Any = None,
    progress: Progress = _silent,
) -> OfflineAnalysis:
    """Rerun the end-of-fit analysis from the raw record saved in a run, and log the results.

    Args:
        run_id: the run holding ``dq/raw/<split>.npz`` (or a child run derived from it).
        tracking_uri: ``None`` means MLflow's current tracking URI.
        child_run: log into a new run nested under ``run_id`` instead of replacing the results of
            ``run_id`` in place.
        early_epochs: epochs averaged by EL2N (``None``: the default of :func:`~dq_plugins.scores.el2n`).
        max_issue_rows: rows of ``dq/issues.json`` (``None``: :data:`~dq_plugins.analysis.pipeline.MAX_ISSUE_ROWS`).
        rules: rules to evaluate on the new results (a list of :class:`~dq_plugins.rules.Rule`, or YAML
            text or a path to a YAML file); ``None``: none. Their actions run as at the end of fit
            (``SelectSimilar`` can draw from the run's own embeddings).
        progress: receives one line per step.

    The results are written by the same code as at the end of fit
    (:func:`dq_plugins.sinks.publish.publish_results`): samples, issues, figures, metrics, the slice
    tables, weak slices and latency report (from the metadata and latency columns of the run's
    previous ``dq/samples.parquet``, carried over), and the rules.

    In the same run, files are replaced at their paths, summary metrics are logged only when their
    value changed, and the per-epoch metric histories (a pure function of the unchanged raw record)
    are not logged again: nothing is duplicated.

    Raises:
        RunNotFoundError, FileNotFoundError: unknown run, or no raw record.
    """
    from dq_plugins.analysis.embeddings import map_projection
    from dq_plugins.analysis.pipeline import MAX_ISSUE_ROWS, analyze

    client = make_client(tracking_uri)
    run = get_run(client, run_id)
    if max_issue_rows is not None and max_issue_rows < 1:
        raise ValueError(f"Expected `max_issue_rows` >= 1 but got {max_issue_rows}.")
    if early_epochs is not None and early_epochs < 1:
        raise ValueError(f"Expected `early_epochs` >= 1 but got {early_epochs}.")
    with tempfile.TemporaryDirectory(prefix="dq_offline_") as tmp:
        staging = Path(tmp)
        source_id, histories = load_histories(client, run_id, staging / "download", progress)
        embeddings = load_embeddings(client, source_id, staging / "embeddings", progress)
        fingerprints = load_fingerprints(client, source_id, staging / "fingerprints", progress)
        task = next((getattr(h, "task", None) for h in histories.values() if hasattr(h, "task")), None)
        # the map the run was fitted with, so that an unchanged record gives unchanged results
        projection = map_projection(get_run(client, source_id).data.tags.get(PROJECTION_TAG))
        if task is not None:
            return _reanalyze_task(client, run, source_id, histories, embeddings, fingerprints, staging, projection,
                                   child_run=child_run, max_issue_rows=max_issue_rows or MAX_ISSUE_ROWS, rules=rules,
                                   progress=progress)
        for split, history in histories.items():
            progress(f"analysing split {split!r}: {int(history.seen.sum())} samples, {len(history.epochs)} epochs"
                     + (", with embeddings" if split in embeddings else ""))
        result = analyze(histories, early_epochs=early_epochs, max_issue_rows=max_issue_rows or MAX_ISSUE_ROWS,
                         embeddings=embeddings or None, fingerprints=fingerprints or None, projection=projection)
        result.samples, kept = carry_columns(result.samples, _previous_samples(client, run_id, staging / "old"))
        if kept:
            progress(f"keeping columns computed by other features: {kept}")

        parsed_rules = _parse_rules(rules, result.samples)
        target, previous = _target_run(client, run, source_id, child_run, progress)
        # The texts shown on hover are not stored in the run: an existing interactive map (made at fit
        # time, with texts) is kept rather than replaced by one without them.
        keep_html = not child_run and EMBEDDING_HTML_PATH in set(artifact_paths(client, target))
        _publish_into(client, target, child_run, result, lambda sink: publish_results(
            result, histories, embeddings, sink, write_html=not keep_html, rules=parsed_rules), {
            "source": "offline", "raw_record_run": source_id, "early_epochs": early_epochs,
            "max_issue_rows": max_issue_rows or MAX_ISSUE_ROWS, "rules": [rule.name for rule in parsed_rules]})
    return OfflineAnalysis(target, source_id, result, kept, previous)


def _reanalyze_task(client: Any, run: Any, source_id: str, histories: dict, embeddings: dict, fingerprints: dict,
                    staging: Path, projection: str, *, child_run: bool, max_issue_rows: int, rules: Any, progress: Progress
                    ) -> OfflineAnalysis:
    """:func:`reanalyze` of a multi-label or token run: the end of fit's analysis
    (:func:`~dq_plugins.analysis.task_pipeline.analyze_task`) of its raw record, the run's embeddings and fingerprints,
    the columns of the old ``dq/samples.parquet`` it does not compute (metadata, latency) carried over, published by
    the end-of-fit code (:func:`~dq_plugins.sinks.task_publish.publish_task_result`)."""
    from dq_plugins.analysis.task_pipeline import analyze_task
    from dq_plugins.sinks.publish import run_rules
    from dq_plugins.sinks.task_publish import publish_task_result

    run_id = run.info.run_id
    task = next(iter(histories.values())).task
    for split, history in histories.items():
        progress(f"analysing split {split!r} of the {task} run: {len(history.epochs)} epochs")
    result = analyze_task(task, histories, max_issue_rows=max_issue_rows, embeddings=embeddings or None,
                          fingerprints=fingerprints or None, projection=projection)
    result.samples, kept = carry_columns(result.samples, _previous_samples(client, run_id, staging / "old"))
    parsed_rules = _parse_rules(rules, result.samples)
    target, previous = _target_run(client, run, source_id, child_run, progress)
    def publish(sink: MlflowSink) -> None:
        publish_task_result(result, sink)
        if parsed_rules:
            run_rules(result, result.samples, result.slices, embeddings, sink, parsed_rules, {}, None)

    _publish_into(client, target, child_run, result, publish, {
        "source": "offline", "raw_record_run": source_id, "task": task, "max_issue_rows": max_issue_rows,
        "rules": [rule.name for rule in parsed_rules]})
    return OfflineAnalysis(target, source_id, result, kept, previous)


def _publish_into(client: Any, target: str, child_run: bool, result: Any, publish: Callable[[MlflowSink], None],
                  analysis: dict) -> None:
    """Write the results into run ``target`` through ``publish(sink)``, tag it ``dq.analysis`` (``analysis`` and the
    time) and flush; a child run ends FAILED when that fails or a rule marked it, else FINISHED."""
    sink = MlflowSink(client=client, run_id=target, replace=not child_run)
    try:
        publish(sink)
        sink.add_tag("dq.analysis", json.dumps({**analysis, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        sink.flush(strict=True)
    except BaseException:
        if child_run:
            client.set_terminated(target, status="FAILED")
        raise
    finally:
        sink.end()
    report = result.rules_report
    if child_run:
        client.set_terminated(target, status="FAILED" if report is not None and report.mark_failed else "FINISHED")


def _target_run(client: Any, run: Any, source_id: str, child_run: bool, progress: Progress) -> tuple[str, dict]:
    """``(run id to log into, its dq.* metrics before)``: ``run`` itself, or a new run nested under it."""
    run_id = run.info.run_id
    target, previous = run_id, {k: v for k, v in run.data.metrics.items() if k.startswith("dq.")}
    if child_run:
        created = client.create_run(run.info.experiment_id, run_name=f"dq-analyze-{run.info.run_name or run_id[:8]}",
                                    tags={PARENT_RUN_TAG: run_id, SOURCE_RUN_TAG: source_id, "dq_plugins": "true"})
        target, previous = created.info.run_id, {}
    progress(f"logging into run {target}" + (" (child run)" if child_run else " (replacing its dq/ results)"))
    return target, previous


def _parse_rules(rules: Any, samples: pd.DataFrame) -> list:
    """Rules from a list, YAML text or a YAML path, validated against the columns of ``samples``."""
    if rules is None:
        return []
    from dq_plugins.rules import rules_from_yaml, validate_rules

    if isinstance(rules, (str, os.PathLike)):
        rules = rules_from_yaml(rules)
    rules = list(rules)
    validate_rules(rules, list(samples.columns), pools=None)
    return rules
