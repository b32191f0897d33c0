"""Constructor options shared by both adapters, checked the same way in both (at construction)."""

from __future__ import annotations

from dq_plugins.scores.projection import require_umap


def check_projection(projection: str | None) -> None:
    """Fail at construction, not after training, when ``projection="umap"`` lacks its optional extra.

    Raises:
        ModuleNotFoundError: umap-learn is not installed (HINT: ``pip install "dq_plugins[umap]"``).
    """
    if projection == "umap":
        require_umap()
