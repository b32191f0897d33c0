"""Public import path of the PyTorch Lightning callback (``from dq_plugins.lightning import DataQualityCallback``).

The adapter lives in :mod:`dq_plugins.adapters.lightning`.
"""

from dq_plugins.adapters.lightning import DataQualityCallback

__all__ = ["DataQualityCallback"]
