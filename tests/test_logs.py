"""How the library speaks: the end-of-fit INFO line, warnings from rank zero once, progress off without a terminal."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import pytest

from conftest import BlobsDataset
from dq_plugins.logs import LOGGER_NAME, fit_summary_line, progress, warn
from dq_plugins.sinks.mlflow_sink import absolute_tracking_uri
from test_lightning_callback import fit


def test_the_fit_ends_with_one_info_line_saying_what_was_found_and_how_to_open_it(tracking_uri, caplog, capsys):
    from dq_plugins.lightning import DataQualityCallback

    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        callback, _ = fit(DataQualityCallback(), val=BlobsDataset(30, seed=1), max_epochs=3)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME and r.levelno == logging.INFO]
    assert len(lines) == 1, lines
    line = lines[0]
    samples = callback.result.samples
    train = samples[samples["split"] == "train"]
    assert f"train: {int(train['is_label_issue'].sum())} label issues of 96" in line
    assert f"{int(train['is_outlier'].sum())} outliers" in line and "conflicting duplicates" in line
    assert "validation: " in line
    assert "estimated noise rate (train)" in line or "no trusted noise-rate estimate" in line
    store = os.path.join(os.getcwd(), "mlflow.db")  # the real, absolute store, not the relative default
    mlflow = Path(sys.executable).parent / "mlflow"  # this venv's: works without activating it
    assert f"Run {callback.run_id}: open it with `{mlflow} ui --backend-store-uri sqlite:///{store}`" in line
    assert f"runs/{callback.run_id}?workflowType=machine_learning" in line
    assert "dq_plugins: end-of-fit" not in capsys.readouterr().err  # stderr is no terminal here: no bar


def test_summary_line_without_results_and_without_embeddings():
    import pandas as pd

    assert fit_summary_line({}, None, "Run x.") == "dq_plugins: the analysis produced no results; Run x."
    samples = pd.DataFrame({"split": ["train"] * 4, "is_label_issue": [True, False, False, True]})
    line = fit_summary_line({"dq.estimated_noise_rate": 0.25}, samples, "Run x.")
    assert line == ("dq_plugins: train: 2 label issues of 4, no other issue checks; "
                    "estimated noise rate (train) 0.250. Run x.")


def test_warnings_come_once_and_from_rank_zero_only(monkeypatch):
    seen: set[str] = set()
    with pytest.warns(UserWarning, match="first") as caught:
        assert warn("first", once=seen)
        assert not warn("first", once=seen)
        assert not warn("first again", once=seen, key="first")
    assert len(caught) == 1
    monkeypatch.setenv("RANK", "1")  # what torchrun sets before the process group exists
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn("from rank one")


def test_progress_is_off_when_stderr_is_no_terminal(capsys):
    assert list(progress(range(3), total=3, desc="x")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("uri", "expected"), [
    ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"),
    ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("mlruns", "{cwd}/mlruns"),
])
def test_absolute_tracking_uri(uri, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri(uri) == expected.format(cwd=tmp_path)
