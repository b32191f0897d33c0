"""``dq upload``: results kept locally while MLflow was unreachable, logged into a run afterwards.

A tiny Lightning fit runs against a closed port (``http://127.0.0.1:9``): the callback keeps its
results in a fallback folder and warns with the ``dq upload`` command. The tests upload that folder
into sqlite stores and check the files, the tables (rendered by the MLflow UI through the
``mlflow.loggedArtifacts`` tag, read here with ``mlflow.load_table`` which uses that tag), the
metrics with their epochs, the tags, and that uploading twice logs nothing twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import BlobsDataset
from dq_plugins import load_samples
from dq_plugins.schema import SAMPLES_PATH
from dq_plugins.sinks.mlflow_sink import FALLBACK_MANIFEST, LOGGED_ARTIFACTS_TAG, read_fallback_manifest
from dq_plugins.cli import main
from dq_plugins.cli.commands import ExitCode
from dq_plugins.cli.upload import UPLOADED_FROM_TAG
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.rules import Condition, Rule, TagRun
from test_lightning_callback import fit

CLOSED_PORT_URI = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> tuple[Path, str]:
    """(the fallback folder of a fit against a closed port, the text of the warning that names it)."""
    root = tmp_path_factory.mktemp("unreachable")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        patch.setenv("DQ_PLUGINS_PROJECTION", "pca")
        patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        rules = [Rule("always", Condition("confidence", ">=", 0, aggregate="min"), then=[TagRun("dq.flagged", "yes")])]
        callback = DataQualityCallback(tracking_uri=CLOSED_PORT_URI, fallback_dir=str(root / "kept"), rules=rules,
                                       run_name="blobs")
        with pytest.warns(RuntimeWarning) as caught:
            _, trainer = fit(callback, val=BlobsDataset(30, seed=1), max_epochs=2)
    assert trainer.state.finished
    (folder,) = (root / "kept").iterdir()
    messages = [str(w.message) for w in caught if "could not write to MLflow" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in caught]
    return folder, messages[0]


@pytest.fixture
def folder(kept, tmp_path) -> Path:
    """A copy of the fallback folder for one test (an upload records its run id in the manifest)."""
    copy = tmp_path / "kept" / kept[0].name
    shutil.copytree(kept[0], copy)
    return copy


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A sqlite tracking URI in tmp_path that does not exist yet, also MLflow's current one."""
    uri = f"sqlite:///{tmp_path}/uploaded.db"
    monkeypatch.chdir(tmp_path)  # the store's artifact root (./mlruns) resolves here, not in the repository
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def run_dq(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def all_artifacts(client, run_id: str, path: str = "dq") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= all_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_the_warning_names_the_upload_command_and_the_manifest_holds_what_was_not_logged(kept):
    folder, message = kept
    assert f"`dq upload {folder.resolve()} --tracking-uri {CLOSED_PORT_URI}`" in message
    manifest = read_fallback_manifest(folder)
    assert manifest["tracking_uri"] == CLOSED_PORT_URI and manifest["run_id"] is None
    assert manifest["experiment_name"] == "Default" and manifest["run_name"] == "blobs"
    assert "ConnectionError" in manifest["error"] or "Connection" in manifest["error"]
    assert "dq/issues.json" in manifest["tables"] and all((folder / t).is_file() for t in manifest["tables"])
    assert manifest["tags"]["dq.flagged"] == "yes"
    steps = sorted(step for key, _, step in manifest["metrics"] if key == "dq.epoch_accuracy.train")
    assert steps == [0, 1]
    assert (folder / SAMPLES_PATH).is_file() and (folder / "dq/raw/train.npz").is_file()


def test_upload_into_a_new_run_logs_files_tables_metrics_and_tags_once(folder, store, capsys):
    manifest = read_fallback_manifest(folder)
    code, out, err = run_dq(capsys, "upload", str(folder))  # the URI comes from MLFLOW_TRACKING_URI
    assert code == ExitCode.OK, err
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    run_id = run.info.run_id
    assert f"logged into a new run {run_id} at {store}" in out
    assert run.info.status == "FINISHED" and run.info.run_name == "blobs"
    assert run.data.tags["dq_plugins"] == "true" and run.data.tags["dq.flagged"] == "yes"
    assert run.data.tags[UPLOADED_FROM_TAG] == str(folder.resolve())
    client = mlflow.MlflowClient(store)
    expected_files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {FALLBACK_MANIFEST}
    assert all_artifacts(client, run_id) == expected_files
    assert {"dq/samples.parquet", "dq/issues.json", "dq/data_map.png", "dq/raw/train.npz"} <= expected_files
    # the table tag, and the table as the MLflow UI (and load_table) reads it through that tag
    tables = json.loads(run.data.tags[LOGGED_ARTIFACTS_TAG])
    assert {"path": "dq/issues.json", "type": "table"} in tables
    issues = mlflow.load_table("dq/issues.json", run_ids=[run_id])
    local = pd.read_json(folder / "dq/issues.json", orient="split")
    assert len(issues) == len(local) > 0 and list(issues.columns[: len(local.columns)]) == list(local.columns)
    samples = load_samples(run_id, tracking_uri=store)
    pd.testing.assert_frame_equal(samples, pd.read_parquet(folder / SAMPLES_PATH))
    # metrics with their epochs as steps
    final = {key: value for key, value, step in manifest["metrics"] if not key.startswith("dq.epoch_")}
    assert {key: run.data.metrics[key] for key in final} == pytest.approx(final)
    history = client.get_metric_history(run_id, "dq.epoch_accuracy.train")
    assert sorted(m.step for m in history) == [0, 1]

    # Again: the same run (its id was written to the manifest), nothing logged twice.
    code, out, err = run_dq(capsys, "upload", str(folder))
    assert code == ExitCode.OK, err
    assert f"logged into run {run_id}" in out and "already in the run were not logged again" in out
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1
    assert len(client.get_metric_history(run_id, "dq.epoch_accuracy.train")) == 2
    assert json.loads(client.get_run(run_id).data.tags[LOGGED_ARTIFACTS_TAG]) == tables


def test_upload_into_an_existing_run(folder, store, capsys):
    client = mlflow.MlflowClient(store)
    experiment = client.create_experiment("training")
    run_id = client.create_run(experiment, run_name="the training run").info.run_id
    code, out, err = run_dq(capsys, "upload", str(folder), "--run-id", run_id, "--tracking-uri", store)
    assert code == ExitCode.OK, err
    assert f"logged into run {run_id}" in out
    assert [r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")] == [run_id]
    run = client.get_run(run_id)
    assert "dq/samples.parquet" in all_artifacts(client, run_id) and "dq.num_label_issues" in run.data.metrics
    assert run.info.status == "RUNNING"  # not ours to close
    assert read_fallback_manifest(folder)["run_id"] is None  # the manifest keeps pointing at no run


def test_upload_with_an_experiment_name(folder, store, capsys):
    code, _, err = run_dq(capsys, "upload", str(folder), "--experiment-name", "recovered")
    assert code == ExitCode.OK, err
    (run,) = mlflow.search_runs(experiment_names=["recovered"], output_format="list")
    assert "dq/issues.json" in all_artifacts(mlflow.MlflowClient(store), run.info.run_id)


# ---------------------------------------------------------------------------------------- errors
def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("dq upload: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_folder_is_a_clear_error(tmp_path, store, capsys):
    code, _, err = run_dq(capsys, "upload", str(tmp_path / "nowhere"))
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "nowhere' does not exist", "HINT: pass the folder named in the dq_plugins warning")


def test_a_file_is_not_a_folder(tmp_path, store, capsys):
    (tmp_path / "a.txt").write_text("x")
    code, _, err = run_dq(capsys, "upload", str(tmp_path / "a.txt"))
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "is a file, not a folder")


def test_a_folder_that_is_not_a_fallback_folder(tmp_path, store, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_dq(capsys, "upload", str(tmp_path / "empty"))
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "is not a dq_plugins fallback folder: it has no dq_fallback.json")
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_the_parent_folder_names_the_fallback_folders_inside(folder, store, capsys):
    code, _, err = run_dq(capsys, "upload", str(folder.parent))
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "is not a dq_plugins fallback folder", f"HINT: upload one of the fallback folders "
                          f"inside it: `dq upload {folder}`")


def test_a_foreign_manifest_is_refused(tmp_path, store, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / FALLBACK_MANIFEST).write_text(json.dumps({"format": "something else"}))
    code, _, err = run_dq(capsys, "upload", str(tmp_path / "other"))
    assert code == ExitCode.ERROR
    assert_one_line_error(err, "is not a dq_plugins fallback manifest")


def test_an_unknown_run_id_is_a_clear_error(folder, store, capsys):
    code, _, err = run_dq(capsys, "upload", str(folder), "--run-id", "0" * 32)
    assert code == ExitCode.ERROR
    assert_one_line_error(err, f"Run {'0' * 32!r} was not found at tracking URI")
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
