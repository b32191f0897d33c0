"""Shared pieces of the recipes, benchmarks and tests: data, label noise, configuration, report, model.

Imported as ``from recipes.common import ...`` (the repository root on ``sys.path``: ``python -m``
from there, or pytest's ``pythonpath``).

- :mod:`recipes.common.data`: offline data sets (:func:`load_dataset`), stratified split and subsample;
- :mod:`recipes.common.noise`: :func:`inject_noise`, label flips with a known ground truth;
- :mod:`recipes.common.config`: :class:`RecipeConfig`, its YAML file and command-line overrides;
- :mod:`recipes.common.report`: :func:`print_report` and :func:`detection_metrics`;
- :mod:`recipes.common.text`: the text recipe's steps (model folder, noisy split, tokenised dataset,
  training arguments), shared with the benchmarks;
- :mod:`recipes.common.models`: :class:`~recipes.common.models.MLPClassifier`, the example
  LightningModule (imported from there: it needs PyTorch Lightning).
"""

from .config import (
    RECIPE_DEFAULTS,
    RECIPES,
    RecipeConfig,
    add_common_arguments,
    apply_overrides,
    config_from_args,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from .data import (
    BUILTIN_LOADERS,
    Dataset,
    load_dataset,
    load_digits,
    load_hub_dataset,
    load_mnist5k,
    load_sms_spam,
    load_trec6,
    stratified_split,
    subsample,
)
from .noise import NoiseKind, inject_noise
from .report import detection_metrics, print_report
from .text import encode_texts, noisy_text_splits, resolve_model, training_arguments

__all__ = [
    "BUILTIN_LOADERS",
    "RECIPES",
    "RECIPE_DEFAULTS",
    "Dataset",
    "NoiseKind",
    "RecipeConfig",
    "add_common_arguments",
    "apply_overrides",
    "config_from_args",
    "config_from_dict",
    "config_to_dict",
    "detection_metrics",
    "encode_texts",
    "inject_noise",
    "load_config",
    "load_dataset",
    "load_digits",
    "load_hub_dataset",
    "load_mnist5k",
    "load_sms_spam",
    "load_trec6",
    "noisy_text_splits",
    "print_report",
    "resolve_model",
    "save_config",
    "stratified_split",
    "subsample",
    "training_arguments",
]
