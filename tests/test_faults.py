"""The cheapest faults of benchmarks/faults.py: training finishes and the results are kept."""

from __future__ import annotations

import pytest

from benchmarks import faults


@pytest.mark.parametrize("name", ["unreachable", "readonly", "deleted", "reused"])
def test_a_fault_neither_stops_training_nor_loses_the_results(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DQ_PLUGINS_PROJECTION", "pca")
    outcome = faults.FAULTS[name](tmp_path)
    assert outcome.finished, outcome
    assert outcome.kept not in ("lost", "mixed with the first fit"), outcome
    assert outcome.seconds < 60, outcome


def test_repeated_ids_stop_training_with_the_fix_and_keep_the_raw_record(tmp_path):
    outcome = faults.repeated_ids(tmp_path)
    assert not outcome.finished and outcome.kept == "raw record in the FAILED run", outcome
    assert "offset=len(a)" in outcome.note
