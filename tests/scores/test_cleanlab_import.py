"""cleanlab's import silences every warning of the process (a filter it adds); the package's imports of it must not."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_task_scores_leave_the_warning_filters_as_they_were():
    # a fresh interpreter: in this one cleanlab is already imported and the first import is what adds the filter
    code = textwrap.dedent("""
        import warnings
        import numpy as np
        before = list(warnings.filters)
        from dq_plugins.scores.multilabel import class_label_issues
        from dq_plugins.scores.tokens import adjusted_self_confidence, token_label_issues
        rng = np.random.default_rng(0)
        labels = (rng.random((40, 3)) < 0.4).astype(np.int8)
        class_label_issues(labels, rng.random((40, 3)))
        tags = rng.integers(0, 3, 30)
        probs = rng.dirichlet(np.ones(3), 30)
        token_label_issues(tags, probs, np.repeat(np.arange(6), 5))
        adjusted_self_confidence(tags, probs)
        assert "cleanlab" in __import__("sys").modules
        blanket = [f for f in warnings.filters if f not in before and f[0] == "ignore" and f[1] is None and f[3] is None]
        assert not blanket, blanket
        with warnings.catch_warnings(record=True) as seen:  # record=True keeps the filters: an "ignore all" drops it
            warnings.warn("still heard", UserWarning)
        assert [str(w.message) for w in seen] == ["still heard"]
    """)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
