"""dq_plugins: find data-quality issues while a classifier trains.

Public API: :func:`with_ids`, :func:`load_samples`, :func:`fix`, :func:`select_subset`,
:func:`issue_types` and :func:`register_issue_type` (the registry of :mod:`dq_plugins.schema`) here, the
callbacks in :mod:`dq_plugins.lightning` and :mod:`dq_plugins.transformers`, and the ``dq`` command
line (:mod:`dq_plugins.cli`). Heavy modules load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "IndexedDataset", "IssueType", "fix", "issue_types", "load_samples", "register_issue_type", "select_subset",
    "with_ids", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("with_ids", "IndexedDataset"):
        from dq_plugins import data

        return getattr(data, name)
    if name in ("issue_types", "register_issue_type", "IssueType"):
        from dq_plugins import schema

        return getattr(schema, name)
    if name == "load_samples":
        from dq_plugins.results import load_samples

        return load_samples
    if name == "fix":
        from dq_plugins.fixes import fix

        return fix
    if name == "select_subset":
        from dq_plugins.subset import select_subset

        return select_subset
    raise AttributeError(f"module 'dq_plugins' has no attribute {name!r}")
