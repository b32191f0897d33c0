"""Optional dependencies, guarded in one place and imported lazily."""

from __future__ import annotations

import importlib
from types import ModuleType


def lightning_packages() -> list[ModuleType]:
    """The installed Lightning flavours: ``pytorch_lightning`` and/or ``lightning.pytorch``.

    Raises:
        ModuleNotFoundError: when neither is installed, saying what to ``pip install``.
    """
    found = []
    for name in ("pytorch_lightning", "lightning.pytorch"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    if not found:
        raise ModuleNotFoundError(
            "dq_plugins.lightning needs PyTorch Lightning. HINT: `pip install pytorch-lightning` "
            "(or `pip install lightning`)."
        )
    return found


def require(module: str, pip_name: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"dq_plugins needs `{module}` for this feature. HINT: `pip install {pip_name or module}`."
        ) from err
