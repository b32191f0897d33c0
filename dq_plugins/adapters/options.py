"""Constructor options shared by both adapters: one name each, checked the same way (at construction)."""

from __future__ import annotations

from dq_plugins.scores.projection import require_umap


def check_projection(projection: str | None) -> None:
    """Fail at construction, not after training, when ``projection="umap"`` lacks its optional extra.

    Raises:
        ModuleNotFoundError: umap-learn is not installed (HINT: ``pip install "dq_plugins[umap]"``).
    """
    if projection == "umap":
        require_umap()


LIGHTNING_RENAMED: dict[str, str] = {"el2n_epochs": "early_epochs"}
"""Old -> new option names of the Lightning callback (the old ones warn; :mod:`dq_plugins.deprecation`)."""

TRANSFORMERS_RENAMED: dict[str, str] = {
    "id_column": "id_key",
    "label_column": "label_key",
    "head_module": "logits_module",  # as in Lightning: the classification head; its input is the embedding
    "metadata_columns": "metadata_keys",
    "el2n_epochs": "early_epochs",
}
"""Old -> new option names of the Hugging Face callback: both callbacks now use the same names."""
