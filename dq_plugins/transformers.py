"""Public import path of the Hugging Face ``Trainer`` callback (``from dq_plugins.transformers import DataQualityCallback``).

The adapter lives in :mod:`dq_plugins.adapters.transformers`.
"""

from dq_plugins.adapters.transformers import STATE_FILE, DataQualityCallback

__all__ = ["STATE_FILE", "DataQualityCallback"]
