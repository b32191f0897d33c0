"""Multi-label data with a known ground truth: digit attributes and multi-label noise.

The digits of ``sklearn.datasets.load_digits`` (1,797 8x8 images, BSD-3-Clause) or MNIST-5k carry a
real multi-label target: attributes of the digit they show (even, >= 5, prime, has a closed loop,
vertically symmetric). Each image has between 0 and 5 of them, all derived from its class.
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
