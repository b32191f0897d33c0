"""benchmarks/overhead_against.py: the earlier library it measures and the table it reports (no timing here)."""

from __future__ import annotations

import math
import subprocess

import pytest

from benchmarks._common import REPO
from benchmarks.overhead_against import VARIANTS, extract_library, report, run_overhead, share


def test_extract_library_gives_the_revisions_library_beside_todays_benchmarks(tmp_path):
    root = extract_library("HEAD", tmp_path / "against")
    committed = subprocess.run(["git", "show", "HEAD:dq_plugins/__init__.py"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout
    assert (root / "dq_plugins" / "__init__.py").read_text() == committed
    assert not (root / "dq_plugins").is_symlink()  # a copy: later edits of the working tree do not reach it
    for name in ("benchmarks", "recipes"):
        assert (root / name).is_symlink() and (root / name).resolve() == (REPO / name).resolve()


def test_extract_library_names_a_revision_git_does_not_know(tmp_path):
    with pytest.raises(RuntimeError, match=r"cannot archive `dq_plugins` at 'no-such-rev'.*HINT"):
        extract_library("no-such-rev", tmp_path / "against")


def test_a_failed_measurement_shows_its_command_and_output(tmp_path):
    with pytest.raises(RuntimeError, match=r"benchmarks\.overhead .* in .* failed:\n(.|\n)*No module named"):
        run_overhead(tmp_path, ["light"], 1, [], tmp_path / "rows.json")  # no benchmarks/ under that root


def test_share_is_main_thread_cpu_where_measured_else_wall():
    assert share({"cpu_fraction": 0.03, "fraction": 0.05}) == 0.03
    assert share({"cpu_fraction": math.nan, "fraction": 0.05}) == 0.05  # HF rows: wall time only
    assert share({"fraction": 0.05}) == 0.05


def test_report_gives_the_median_over_rounds_and_the_difference_to_the_earlier_code():
    def rounds(*values: float) -> list[list[dict]]:
        return [[{"model": "light", "cpu_fraction": v, "fraction": 1.0}] for v in values]

    runs = {VARIANTS[0]: rounds(0.04, 0.05, 0.06), VARIANTS[1]: rounds(0.07, 0.06, 0.08),
            VARIANTS[2]: rounds(0.03, 0.05, 0.04)}
    text = report(runs, ["light"], "abc1234", "python -m benchmarks.overhead_against", 60.0, "")
    row = next(line for line in text.splitlines() if line.startswith("| light |"))
    assert row == ("| light | 5.00% [4.00%, 5.00%, 6.00%] | 7.00% [7.00%, 6.00%, 8.00%] | 4.00% [3.00%, 5.00%, 4.00%] "
                   "| +2.00% | -1.00% |")
    assert "Lightning" in text.splitlines()[0] and "against abc1234" in text
