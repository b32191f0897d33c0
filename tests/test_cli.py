"""The ``dq`` command line on real runs: every command, its exit codes and its error messages."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

import dq_plugins
from dq_plugins.analysis.pipeline import SAMPLE_COLUMNS
from dq_plugins.sinks.offline import carry_columns
from dq_plugins.cli import build_parser, main
from dq_plugins.cli.commands import (
    ExitCode,
    compare_summary,
    escape_formulas,
    flag_overlap,
    issue_column,
    issue_counts,
    issue_types,
)
from dq_plugins.cli.tables import format_numbers, slice_table, summary_table, weakest_slices
from fixture_runs import copy_run, shared_store, use_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with use_store(shared_store(tmp_path_factory)) as store:
        yield store


@pytest.fixture(scope="module")
def empty_run(store):
    client = mlflow.MlflowClient(store.uri)
    experiment = client.get_run(store.run_a).info.experiment_id
    return client.create_run(experiment, run_name="no-dq").info.run_id


def run_dq(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, command: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith(f"dq {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# ---------------------------------------------------------------------------------------- report
def test_report_prints_summary_issues_and_slices(store, capsys):
    code, out, err = run_dq(capsys, "report", store.run_a, "--tracking-uri", store.uri, "--top", "3")
    assert code == ExitCode.OK
    assert store.run_a in out
    for title in ("Summary", "Issues by type", "Top 3 issues", "Weakest slices"):
        assert title in out
    by_type = out.split("Issues by type", 1)[1].split("Top", 1)[0]
    shown = [line.split()[0] for line in by_type.strip().splitlines()[2:]]
    assert shown == [t.name for t in dq_plugins.issue_types()]  # every type: the run has embeddings
    summary = out.split("Summary", 1)[1].split("Top", 1)[0]
    assert "train" in summary and "validation" in summary and "est_noise_rate" in summary
    assert "label=" in out.split("Weakest slices", 1)[1]
    assert f"dq: reading the results of run {store.run_a}" in err


def test_report_reads_the_tracking_uri_from_the_environment(store, capsys):
    code, out, _ = run_dq(capsys, "report", store.run_a)  # MLFLOW_TRACKING_URI is set by the fixture
    assert code == ExitCode.OK and store.run_a in out


def test_tracking_uri_flag_is_accepted_before_the_command(store, capsys):
    code, _, err = run_dq(capsys, "--tracking-uri", store.uri, "-q", "report", store.run_a)
    assert code == ExitCode.OK
    assert err == ""  # --quiet silences progress


def test_report_unknown_run_is_a_one_line_error(store, capsys):
    code, out, err = run_dq(capsys, "report", "0123456789abcdef0123456789abcdef")
    assert code == ExitCode.ERROR
    assert out == ""
    assert_one_line_error(err, "report", "Run '0123456789abcdef0123456789abcdef' was not found at tracking URI",
                          "HINT: check the run id")


def test_report_run_without_results_says_what_is_missing(store, empty_run, capsys):
    code, _, err = run_dq(capsys, "report", empty_run)
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "report", f"Run {empty_run!r} has no dq/samples.parquet", "written at the end of fit")


def test_report_run_with_only_the_raw_record_points_to_analyze(store, capsys):
    raw_only = copy_run(store, store.run_a, ("dq/raw/train.npz",))
    code, _, err = run_dq(capsys, "report", raw_only)
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "report", f"`dq analyze {raw_only}` rebuilds it")


def test_missing_sqlite_store_is_an_error_not_a_new_store(store, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/typo.db"
    code, _, err = run_dq(capsys, "report", store.run_a, "--tracking-uri", uri)
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "report", f"No MLflow store at tracking URI {uri!r}")
    assert not (tmp_path / "typo.db").exists()


def test_traceback_flag_shows_the_exception(store):
    with pytest.raises(LookupError, match="was not found"):
        main(["report", "0123456789abcdef0123456789abcdef", "--traceback"])


# ---------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_writes_the_flagged_rows_with_suggested_labels(store, tmp_path, capsys, fmt):
    target = tmp_path / f"issues.{fmt}"
    code, _, err = run_dq(capsys, "export", store.run_a, "--issue", "label", "--format", fmt, "--output", str(target))
    assert code == ExitCode.OK
    rows = {"csv": pd.read_csv, "parquet": pd.read_parquet, "jsonl": lambda p: pd.read_json(p, lines=True)}[fmt](target)
    samples = mlflow_samples(store)
    flagged = samples[samples["is_label_issue"]]
    assert len(rows) == len(flagged) > 0
    assert list(rows.columns) == list(samples.columns)
    assert rows["is_label_issue"].all()
    assert np.all(np.diff(rows["mislabel_score"].to_numpy()) <= 0)  # most suspicious first
    merged = rows.merge(flagged, on=["split", "sample_id"], suffixes=("", "_run"))
    assert (merged["suggested_label"] == merged["suggested_label_run"]).all()
    assert f"wrote {len(rows)} label issues (of {len(samples)} rows) to {target}" in err


def mlflow_samples(store) -> pd.DataFrame:
    from dq_plugins import load_samples

    return load_samples(store.run_a, tracking_uri=store.uri)


def test_export_default_path_split_filter_and_stdout(store, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_dq(capsys, "export", store.run_a, "--split", "train")
    assert code == ExitCode.OK
    written = pd.read_csv(tmp_path / f"dq_label_issues_{store.run_a[:8]}.csv")
    assert set(written["split"]) == {"train"}
    code, out, _ = run_dq(capsys, "export", store.run_a, "--format", "jsonl", "--output", "-", "--split", "train")
    assert code == ExitCode.OK
    assert [json.loads(line)["sample_id"] for line in out.splitlines()] == written["sample_id"].tolist()


def test_export_refuses_to_overwrite_without_force(store, capsys, tmp_path):
    target = tmp_path / "fix.csv"
    target.write_text("mine")
    code, _, err = run_dq(capsys, "export", store.run_a, "-o", str(target))
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "export", f"{target} exists. HINT: pass --force")
    assert target.read_text() == "mine"
    code, _, _ = run_dq(capsys, "export", store.run_a, "-o", str(target), "--force")
    assert code == ExitCode.OK
    assert pd.read_csv(target)["is_label_issue"].all()


def test_csv_cells_that_would_run_as_formulas_are_escaped():
    rows = pd.DataFrame({"source": ["=HYPERLINK(1)", "+1", "-2", "@SUM(A1)", "\tx", "\ry", "plain", None],
                         "aum": [-0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]})
    escaped = escape_formulas(rows)
    assert escaped["source"].tolist()[:7] == ["'=HYPERLINK(1)", "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\ry", "plain"]
    assert escaped["source"].isna().tolist()[-1]
    assert escaped["aum"].tolist() == rows["aum"].tolist()  # numbers stay numbers
    assert rows["source"].iloc[0] == "=HYPERLINK(1)"  # the input is left alone


def test_export_unknown_issue_type_lists_the_available_ones(store, capsys):
    code, _, err = run_dq(capsys, "export", store.run_a, "--issue", "typo")
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "export", "The run has no 'typo' issues. Issue types in this run: [", "'label'",
                          "HINT: the registered issue types are ['label', 'outlier', 'near_duplicate', 'duplicate', 'leaked']")


@pytest.mark.parametrize("issue", [t.name for t in dq_plugins.issue_types()])
def test_export_accepts_every_registered_issue_type(store, capsys, issue):
    kind = next(t for t in dq_plugins.issue_types() if t.name == issue)
    code, out, _ = run_dq(capsys, "export", store.run_a, "--issue", issue, "-o", "-")
    assert code == ExitCode.OK
    rows = pd.read_csv(io.StringIO(out)) if out.strip() else pd.DataFrame(columns=[kind.flag_column])
    assert rows[kind.flag_column].all()
    assert rows[kind.score_column].is_monotonic_decreasing  # every built-in score: higher is worse


def test_issue_types_of_a_table_come_from_the_registry():
    frame = toy_samples().assign(is_outlier=True, outlier_score=0.5, conflicting_duplicate=False, is_odd_issue=False)
    types = issue_types(frame)
    assert list(types) == ["label", "outlier", "duplicate"]  # registry order; is_odd_issue is not registered
    assert (types["duplicate"].flag_column, types["duplicate"].score_column) == (
        "conflicting_duplicate", "conflicting_duplicate_score")
    with pytest.raises(ValueError, match=r"no 'near_duplicate' issues \(no is_near_duplicate column\)"):
        issue_column(frame, "near_duplicate")
    counts = issue_counts(frame)
    assert list(counts.columns[:2]) == ["issue", "flag"] and list(counts["issue"]) == list(types)


def test_export_unknown_split_lists_the_splits(store, capsys):
    code, _, err = run_dq(capsys, "export", store.run_a, "--split", "test")
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "export", "has no 'test' rows", "['train', 'validation']")


def test_export_usage_errors_exit_2(store, capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", store.run_a, "--format", "xlsx"])
    assert info.value.code == ExitCode.USAGE
    assert "invalid choice: 'xlsx'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["export", store.run_a, "--format", "parquet", "--output", "-"])
    assert info.value.code == ExitCode.USAGE
    assert "--format parquet cannot be written to stdout" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- analyze
def test_analyze_rebuilds_results_in_place_without_duplicates(store, capsys):
    raw_only = copy_run(store, store.run_a, ("dq/raw/train.npz", "dq/raw/validation.npz", "dq/embeddings/train.npz",
                                             "dq/embeddings/validation.npz", "dq/fingerprints/train.npz",
                                             "dq/fingerprints/validation.npz"))
    client = mlflow.MlflowClient(store.uri)
    for _ in range(2):
        code, out, err = run_dq(capsys, "analyze", raw_only)
        assert code == ExitCode.OK
    assert f"results of run {raw_only} logged into run {raw_only}" in out
    assert "dq.num_label_issues" in out
    assert "analysing split 'train'" in err and "(replacing its dq/ results)" in err
    paths = {a.path for a in client.list_artifacts(raw_only, "dq")}
    assert {"dq/samples.parquet", "dq/issues.json", "dq/data_map.png", "dq/raw"} <= paths
    tags = client.get_run(raw_only).data.tags
    tables = [entry["path"] for entry in json.loads(tags["mlflow.loggedArtifacts"])]
    assert sorted(tables) == sorted(set(tables))  # listed once each, however often rerun
    assert {"dq/issues.json", "dq/class_overlap.json", "dq/slices.json", "dq/weak_slices.json"} <= set(tables)
    assert len(client.get_metric_history(raw_only, "dq.num_label_issues")) == 1  # unchanged value: not relogged
    original = mlflow_samples(store)
    local = client.download_artifacts(raw_only, "dq/issues.json", str(store.folder / "dl_issues"))
    issues = pd.read_json(local, orient="split")
    assert len(issues) == min(500, len(original))  # replaced, not appended to
    rebuilt = pd.read_parquet(client.download_artifacts(raw_only, "dq/samples.parquet", str(store.folder / "dl")))
    pd.testing.assert_frame_equal(rebuilt, original)


def test_analyze_with_new_options_updates_metrics_once(store, capsys):
    run = copy_run(store, store.run_a, ("dq/raw/train.npz",))
    assert main(["-q", "analyze", run]) == ExitCode.OK
    code, out, _ = run_dq(capsys, "analyze", run, "--early-epochs", "1", "--max-issue-rows", "7")
    assert code == ExitCode.OK
    client = mlflow.MlflowClient(store.uri)
    issues = pd.read_json(client.download_artifacts(run, "dq/issues.json", str(store.folder / "dl7")), orient="split")
    assert len(issues) == 7
    assert json.loads(client.get_run(run).data.tags["dq.analysis"])["early_epochs"] == 1


def test_analyze_former_el2n_epochs_flag_works_and_warns():
    parser = build_parser()
    with pytest.warns(FutureWarning, match=r"`--el2n-epochs` is deprecated .*use `--early-epochs`"):
        old = parser.parse_args(["analyze", "run", "--el2n-epochs", "3"])
    assert old.early_epochs == 3 == parser.parse_args(["analyze", "run", "--early-epochs", "3"]).early_epochs
    assert "--el2n-epochs" not in parser._subparsers._group_actions[0].choices["analyze"].format_help()


def test_analyze_child_run_leaves_the_source_alone(store, capsys):
    client = mlflow.MlflowClient(store.uri)
    before = {a.path for a in client.list_artifacts(store.run_b, "dq")}
    code, out, _ = run_dq(capsys, "analyze", store.run_b, "--child-run")
    assert code == ExitCode.OK
    child = out.split("logged into run ", 1)[1].split()[0]
    assert child != store.run_b
    tags = client.get_run(child).data.tags
    assert tags["mlflow.parentRunId"] == store.run_b and tags["dq.source_run"] == store.run_b
    assert client.get_run(child).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(store.run_b, "dq")} == before
    assert len(client.get_metric_history(child, "dq.epoch_accuracy.train")) == 6
    # the child has no raw record of its own: analysing it again reads the source's
    code, _, err = run_dq(capsys, "analyze", child)
    assert code == ExitCode.OK and "dq/raw/train.npz" in err


def test_analyze_without_raw_record_is_an_error(store, empty_run, capsys):
    code, _, err = run_dq(capsys, "analyze", empty_run)
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "analyze", f"Run {empty_run!r} has no raw record under dq/raw/")


def test_analyze_keeps_columns_added_by_other_features(store, capsys, tmp_path):
    run = copy_run(store, store.run_a, ("dq/raw/train.npz",))
    samples = mlflow_samples(store)
    samples = samples[samples["split"] == "train"].assign(source=lambda f: f["sample_id"] % 4)
    samples.to_parquet(tmp_path / "samples.parquet", index=False)
    mlflow.MlflowClient(store.uri).log_artifact(run, str(tmp_path / "samples.parquet"), artifact_path="dq")
    code, out, _ = run_dq(capsys, "analyze", run)
    assert code == ExitCode.OK
    kept = out.split("kept columns from the previous table: ", 1)[1].split("\n")[0].split(", ")
    assert kept[-1] == "source"  # and, without dq/embeddings/ in this run, the embedding columns
    from dq_plugins import load_samples

    rebuilt = load_samples(run, tracking_uri=store.uri)
    assert list(rebuilt.columns)[: len(SAMPLE_COLUMNS)] == list(SAMPLE_COLUMNS) and "source" in rebuilt
    train = rebuilt[rebuilt["split"] == "train"]
    assert (train["source"] == train["sample_id"] % 4).all()
    assert rebuilt.loc[rebuilt["split"] == "validation", "source"].isna().all()


def test_analyze_recomputes_slices_over_carried_metadata_and_runs_rules(store, capsys, tmp_path):
    run = copy_run(store, store.run_a, ("dq/raw/train.npz", "dq/raw/validation.npz"))
    samples = mlflow_samples(store).assign(source=lambda f: np.where(f["sample_id"] % 2 == 0, "scan", "photo"))
    samples.to_parquet(tmp_path / "samples.parquet", index=False)
    client = mlflow.MlflowClient(store.uri)
    client.log_artifact(run, str(tmp_path / "samples.parquet"), artifact_path="dq")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: any_issue\n"
        "    when: {metric: is_label_issue, aggregate: count, op: '>=', threshold: 1}\n"
        "    then: [tag_run: {key: dq.alert, value: label issues found}]\n"
        "  - name: never\n"
        "    when: {metric: is_label_issue, aggregate: count, op: '<', threshold: 0}\n"
        "    then: [tag_run: {key: dq.never, value: x}]\n"
    )
    for _ in range(2):  # rerunning replaces the tables, it does not append to them
        code, _, err = run_dq(capsys, "analyze", run, "--rules", str(rules))
        assert code == ExitCode.OK, err
    slices = pd.read_json(client.download_artifacts(run, "dq/slices.json", str(tmp_path / "s")), orient="split")
    source_rows = slices[slices["column"] == "source"]
    assert set(source_rows["value"].astype(str)) == {"scan", "photo"}
    expected = samples[(samples["split"] == "train") & (samples["source"] == "scan")]
    scan = source_rows[(source_rows["split"] == "train") & (source_rows["value"].astype(str) == "scan")]
    assert int(scan["size"].iloc[0]) == len(expected)
    assert len(slices) == len(slices.drop_duplicates(["split", "column", "value"]))
    tags = client.get_run(run).data.tags
    assert tags["dq.alert"] == "label issues found" and "dq.never" not in tags
    assert json.loads(tags["dq.analysis"])["rules"] == ["any_issue", "never"]
    held = pd.read_json(client.download_artifacts(run, "dq/rules.json", str(tmp_path / "r")), orient="split")
    assert dict(zip(held["rule"], held["status"])) == {"any_issue": "held", "never": "not_held"}


def test_analyze_rejects_rules_on_unknown_columns(store, capsys, tmp_path):
    run = copy_run(store, store.run_a, ("dq/raw/train.npz",))
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: r\n    when: {metric: no_such_column, aggregate: mean, op: '>', threshold: 0}\n"
                     "    then: [tag_run: {key: a, value: b}]\n")
    code, _, err = run_dq(capsys, "analyze", run, "--rules", str(rules))
    assert code == ExitCode.ERROR and "no_such_column" in err
    with pytest.raises(SystemExit) as info:
        main(["analyze", run, "--rules", str(tmp_path / "missing.yaml")])
    assert info.value.code == ExitCode.USAGE and "no such file" in capsys.readouterr().err


def test_carry_columns_matches_on_split_and_id():
    new = pd.DataFrame({"split": ["train", "train", "validation"], "sample_id": [0, 1, 0], "score": [0.1, 0.2, 0.3]})
    old = pd.DataFrame({"split": ["validation", "train"], "sample_id": [0, 1], "score": [9, 9], "cluster": [7, 5]})
    merged, kept = carry_columns(new, old)
    assert kept == ["cluster"]
    assert merged["score"].tolist() == [0.1, 0.2, 0.3]
    assert merged["cluster"].tolist()[1:] == [5, 7] and np.isnan(merged["cluster"].iloc[0])
    assert carry_columns(new, None) == (new, [])


# ---------------------------------------------------------------------------------------- compare
def test_compare_puts_two_runs_side_by_side(store, capsys):
    code, out, _ = run_dq(capsys, "compare", store.run_a, store.run_b)
    assert code == ExitCode.OK
    assert f"A: run {store.run_a}" in out and f"B: run {store.run_b}" in out
    assert "est_noise_rate" in out and "accuracy_B-A" in out
    assert "Flagged train samples (same 150 sample ids in both runs)" in out
    slices = out.split("Per-class slices")[1]
    assert "label=" in slices and "cluster=" not in slices  # cluster ids are per run: not comparable


def test_compare_with_a_bad_run_is_a_one_line_error(store, capsys):
    code, _, err = run_dq(capsys, "compare", store.run_a, "nope")
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "compare", "Run 'nope' was not found")


# ---------------------------------------------------------------------------------------- usage
def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == ExitCode.USAGE
    assert "report" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["report"], ["report", "x", "--top", "0"], ["analyze", "x", "--early-epochs", "a"], ["analyze", "x", "--el2n-epochs", "a"],
                                  ["frobnicate"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == ExitCode.USAGE


def test_python_dash_m_runs_the_same_command_line():
    done = subprocess.run([sys.executable, "-m", "dq_plugins", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "dq report RUN_ID" in done.stdout and "--tracking-uri" in done.stdout


# ---------------------------------------------------------------------------------------- pure tables
def toy_samples() -> pd.DataFrame:
    return pd.DataFrame({
        "split": ["train"] * 4 + ["validation"] * 2,
        "sample_id": [0, 1, 2, 3, 0, 1],
        "label": [0, 0, 1, 1, 0, 1],
        "pred": [0, 1, 1, 1, 0, 0],
        "is_label_issue": [False, True, False, False, False, False],
        "mislabel_score": [0.1, 0.9, 0.2, 0.4, 0.3, 0.7],
        "aum": [2.0, -1.0, 1.0, 3.0, 0.5, -0.5],
    })


def test_summary_table_hand_computed():
    table = summary_table(toy_samples(), {"dq.estimated_noise_rate": 0.25})
    train = table.iloc[0]
    assert (train["split"], train["samples"], train["accuracy"], train["label_issues"]) == ("train", 4, 0.75, 1)
    assert train["issue_rate"] == 0.25 and train["est_noise_rate"] == 0.25
    assert train["mean_aum"] == pytest.approx(1.25)
    assert np.isnan(table.iloc[1]["est_noise_rate"])  # no metric logged for validation


def test_slice_table_and_weakest_hand_computed():
    slices = slice_table(toy_samples())
    row = slices[(slices["split"] == "train") & (slices["slice"] == "label=0")].iloc[0]
    assert (row["size"], row["accuracy"], row["issue_rate"]) == (2, 0.5, 0.5)
    assert row["mean_aum"] == pytest.approx(0.5)
    other = slices[(slices["split"] == "train") & (slices["slice"] == "label=1")].iloc[0]
    assert other["mean_aum"] == pytest.approx(2.0)  # varies by class
    weakest = weakest_slices(slices, top=2, min_size=1)
    assert weakest["accuracy"].tolist() == [0.0, 0.5]


def test_compare_summary_and_overlap():
    a = toy_samples()
    b = a.assign(is_label_issue=[False, True, True, False, False, False])
    table = compare_summary(summary_table(a, {}), summary_table(b, {}))
    issues = table[(table["split"] == "train") & (table["measure"] == "label_issues")].iloc[0]
    assert (issues["A"], issues["B"], issues["B-A"]) == (1, 2, 1)
    assert flag_overlap(a, b) == ("Flagged train samples (same 4 sample ids in both runs): 1 in both, 0 only in A, "
                                  "1 only in B (Jaccard 0.5000)")
    assert flag_overlap(a, b.assign(sample_id=[5, 6, 7, 8, 0, 1])) is None


def test_format_numbers_counts_rates_and_signed_differences():
    frame = pd.DataFrame({"measure": ["n", "rate"], "A": [3.0, 0.25], "B-A": [-1.0, np.nan]})
    shown = format_numbers(frame, ["A", "B-A"], frame["measure"] == "n")
    assert [c.strip() for c in shown.columns] == ["measure", "A", "B-A"]
    assert [v.strip() for v in shown.iloc[:, 1]] == ["3", "0.2500"]
    assert [v.strip() for v in shown.iloc[:, 2]] == ["-1", "-"]


def test_analyze_draws_the_map_the_run_was_fitted_with(store, monkeypatch):
    """The fit tags the run with its map's method; `dq analyze` reuses it (an unchanged record gives unchanged
    results), and falls back on $DQ_PLUGINS_PROJECTION, as the fit does, for a run without the tag."""
    import dq_plugins.analysis.pipeline as pipeline

    client = mlflow.MlflowClient(store.uri)
    assert client.get_run(store.run_a).data.tags["dq.projection"] == "auto"  # fitted with neither option nor variable
    seen: list[str] = []
    real = pipeline.analyze

    def spy(*args, **kwargs):
        seen.append(kwargs["projection"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "analyze", spy)
    monkeypatch.setenv("DQ_PLUGINS_PROJECTION", "pca")
    tagged = copy_run(store, store.run_a, ("dq/raw/train.npz", "dq/embeddings/train.npz"))
    untagged = copy_run(store, store.run_a, ("dq/raw/train.npz", "dq/embeddings/train.npz"))
    client.delete_tag(untagged, "dq.projection")
    assert main(["-q", "analyze", tagged]) == ExitCode.OK
    assert main(["-q", "analyze", untagged]) == ExitCode.OK
    assert seen == ["auto", "pca"]
