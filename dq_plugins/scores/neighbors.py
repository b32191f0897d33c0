"""k-nearest neighbours by cosine similarity, and the neighbour label-disagreement score.

The neighbour graph is the building block of every embedding score (:mod:`.outliers`,
:mod:`.duplicates`, :mod:`.clusters`, the 2-D map of :mod:`.projection`), so it is computed once by
:func:`knn_cosine` and passed around as two ``(N, k)`` arrays:

- ``indices``: int64 row positions ``0 .. N-1`` of the neighbours, nearest first (-1 = no
  neighbour found, which only the approximate method can return);
- ``similarities``: float32 cosine similarities, in the same order (NaN where the index is -1).

Two methods sit behind :func:`knn_cosine`:

- ``"exact"``: rows are L2-normalised, and blocks of query rows are multiplied with all rows
  (``block @ keys.T``) followed by ``topk``, on the device of the input tensor (or ``device=``).
  Memory is the normalised fp32 keys (``N x D``) plus one ``rows x N`` fp32 block, never ``N x N``;
  fp16 / bf16 input is upcast per block. Cost ``2 N^2 D`` flops: 6 s for 10k x 384 on 2 CPU cores
  shared with other jobs (``benchmarks/RESULTS.md``), about 25x that for 50k, most of a day for 1M
  on CPU; 1M x 384 is 7.7e14 flops, tens of seconds on one data-centre GPU.
- ``"ann"``: NN-descent (Dong, Charikar and Li, "Efficient k-nearest neighbor graph construction
  for generic similarity measures", WWW 2011) through ``pynndescent.NNDescent`` with
  ``metric="cosine"``, on CPU, cost near ``O(N^1.14 D)``. Recall@10 measured here: 0.95 at 20k and
  0.73 at 100k rows on isotropic Gaussian blobs in 384-d (a hard case: every direction is noise),
  above 0.9 on 3k clustered rows in 32-d; real embeddings have a low intrinsic dimension and sit
  nearer the latter. pynndescent compiles its kernels with numba on the first call of a process:
  75 to 180 s on 2 CPU cores shared with other jobs (``_embedding_analysis.warm_up`` can do it
  while the model trains), then 24 s for 100k x 384 on the same cores.

``"auto"`` picks ``"exact"`` on a GPU or up to :data:`EXACT_MAX_SAMPLES_CPU` rows on CPU, else
``"ann"`` (``"exact"`` with a warning when pynndescent is not installed).

References: Sun, Ming, Zhu and Li, "Out-of-Distribution Detection with Deep Nearest Neighbors",
ICML 2022 (cosine kNN on normalised features); Bahri, Jiang and Gupta, "Deep k-NN for Noisy
Labels", ICML 2020 and Zhu, Dong and Liu, "Detecting Corrupted Labels Without Training a Model to
Predict", ICML 2022 (SimiFeat): neighbour label disagreement as a label-noise signal.
"""

from __future__ import annotations

import importlib.util
import warnings
from types import ModuleType
from typing import Literal

import numpy as np
import torch

KnnMethod = Literal["auto", "exact", "ann"]

KNN_METHODS: tuple[str, ...] = ("auto", "exact", "ann")
"""Values accepted by the ``method`` argument of :func:`knn_cosine`."""

EXACT_MAX_SAMPLES_CPU = 50_000
"""Largest ``N`` for which ``method="auto"`` computes exact neighbours on CPU.

Exact search costs ``2 N^2 D`` flops: 6 s for 10k x 384 on 2 shared CPU cores (fp32 matmul at
30 to 100 GFLOP/s), so about 150 s for 50k and 600 s for 100k, where NN-descent takes 24 s (plus its
one-off numba compilation, see the module docstring). At 50k the two are about even once
compilation is counted; above it the approximate search wins.
"""

MAX_BLOCK_ELEMENTS_CPU = 2**26
"""At most this many similarities (256 MB of fp32) are held at once on CPU."""

MAX_BLOCK_ELEMENTS_GPU = 2**28
"""At most this many similarities (1 GiB of fp32) are held at once on a GPU."""

NORM_EPSILON = 1e-12
"""Rows with an L2 norm below this are left at zero (similarity 0 to every other row)."""

UNIT_NORM_TOLERANCE = 1e-3
"""An fp32 array whose row norms are all within this of 1 is used as is, without a copy."""


def _as_tensor(embeddings: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return a 2-D floating tensor view of ``embeddings``, or raise naming the argument."""
    if isinstance(embeddings, torch.Tensor):
        tensor = embeddings.detach()
    else:
        array = np.asarray(embeddings)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"Expected argument `embeddings` to have a float dtype but got {array.dtype}."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim != 2:
        raise ValueError(
            f"Expected argument `embeddings` to be 2-D of shape (N, D) but got shape"
            f" {tuple(tensor.shape)}."
        )
    if not tensor.is_floating_point():
        raise ValueError(
            f"Expected argument `embeddings` to have a float dtype but got {tensor.dtype}."
        )
    return tensor


def _normalise_block(block: torch.Tensor) -> torch.Tensor:
    """fp32 copy of ``block`` with unit-norm rows (rows of norm < eps stay zero)."""
    block = block.float()
    norms = torch.linalg.vector_norm(block, dim=1, keepdim=True)
    return block / norms.clamp_min(NORM_EPSILON)


def unit_rows(
    embeddings: torch.Tensor | np.ndarray, *, chunk_size: int = 65_536, device: str | torch.device | None = None
) -> torch.Tensor:
    """L2-normalised fp32 ``(N, D)`` tensor of ``embeddings``, built chunk by chunk.

    An fp32 input whose rows already have unit norm (within :data:`UNIT_NORM_TOLERANCE`) on the
    target device is returned as is (no copy); otherwise one fp32 ``N x D`` copy is made and the
    input is upcast one chunk at a time. Zero rows stay zero.
    """
    tensor = _as_tensor(embeddings)
    target = torch.device(device) if device is not None else tensor.device
    if tensor.dtype == torch.float32 and tensor.device == target and _has_unit_rows(tensor, chunk_size):
        return tensor
    out = torch.empty(tensor.shape, dtype=torch.float32, device=target)
    for start in range(0, tensor.shape[0], chunk_size):
        out[start : start + chunk_size] = _normalise_block(tensor[start : start + chunk_size].to(target))
    return out


def _has_unit_rows(tensor: torch.Tensor, chunk_size: int) -> bool:
    for start in range(0, tensor.shape[0], chunk_size):
        norms = torch.linalg.vector_norm(tensor[start : start + chunk_size], dim=1)
        if not bool(((norms - 1.0).abs() <= UNIT_NORM_TOLERANCE).all()):
            return False
    return True


def _check_k(k: int, num_samples: int, exclude_self: bool) -> None:
    limit = num_samples - 1 if exclude_self else num_samples
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= limit:
        raise ValueError(
            f"Expected argument `k` to be an integer in 1 .. {limit} (N = {num_samples},"
            f" exclude_self={exclude_self}) but got {k!r}. HINT: use k = min(k, N - 1) for small"
            " splits."
        )


def resolve_method(method: str, num_samples: int, device: torch.device) -> str:
    """``"exact"`` or ``"ann"`` for the given ``method``, size and device (see module docstring)."""
    if method not in KNN_METHODS:
        raise ValueError(f"Expected argument `method` to be one of {list(KNN_METHODS)} but got {method!r}.")
    if method != "auto":
        return method
    if device.type != "cpu" or num_samples <= EXACT_MAX_SAMPLES_CPU:
        return "exact"
    if importlib.util.find_spec("pynndescent") is None:
        warnings.warn(
            f"knn_cosine: {num_samples} rows on CPU would use approximate search, but pynndescent is not"
            " installed; the exact search costs 2 N^2 D flops (hours at 1M rows). HINT: `pip install"
            " pynndescent` (it comes with umap-learn).",
            RuntimeWarning,
            stacklevel=3,
        )
        return "exact"
    return "ann"


def knn_cosine(
    embeddings: torch.Tensor | np.ndarray,
    k: int,
    *,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
    exclude_self: bool = True,
    method: KnnMethod = "auto",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar rows of every row of ``embeddings``.

    Args:
        embeddings: ``(N, D)`` float array or tensor (fp16, bf16, fp32 or fp64). A tensor on a GPU
            is searched on that GPU; only the normalised fp32 copy and one block live there.
        k: neighbours per row, ``1 .. N-1`` (``1 .. N`` when ``exclude_self=False``).
        chunk_size: query rows per block; fewer when ``chunk_size x N`` would exceed
            :data:`MAX_BLOCK_ELEMENTS_CPU` (:data:`MAX_BLOCK_ELEMENTS_GPU` on a GPU). Exact method only.
        device: where the exact search runs (default: the device of ``embeddings``, CPU for numpy).
        exclude_self: leave row ``i`` out of its own neighbours (an exact duplicate of ``i`` at
            another row is kept: it is a different sample).
        method: ``"exact"``, ``"ann"`` (pynndescent, CPU) or ``"auto"`` (see the module docstring).
        seed: random state of the approximate search.

    Returns:
        ``(indices, similarities)``: ``(N, k)`` int64 row positions and ``(N, k)`` float32 cosine
        similarities, nearest first. Ties are broken arbitrarily. The approximate method may
        return -1 / NaN for a neighbour it did not find.

    Raises:
        ValueError: for a non-2-D or non-float input, a ``k`` out of range, an unknown ``method``.
        ModuleNotFoundError: for ``method="ann"`` without pynndescent.
    """
    tensor = _as_tensor(embeddings)
    target = torch.device(device) if device is not None else tensor.device
    num_samples = tensor.shape[0]
    _check_k(k, num_samples, exclude_self)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"Expected argument `chunk_size` to be a positive integer but got {chunk_size!r}.")
    if resolve_method(method, num_samples, target) == "ann":
        return _knn_ann(unit_rows(tensor, device="cpu").numpy(), int(k), exclude_self, seed)
    return _knn_exact(unit_rows(tensor, device=target), int(k), chunk_size, exclude_self)


@torch.inference_mode()
def _knn_exact(keys: torch.Tensor, k: int, chunk_size: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    num_samples = keys.shape[0]
    budget = MAX_BLOCK_ELEMENTS_CPU if keys.device.type == "cpu" else MAX_BLOCK_ELEMENTS_GPU
    rows = max(1, min(chunk_size, budget // max(num_samples, 1)))
    indices = np.empty((num_samples, k), dtype=np.int64)
    similarities = np.empty((num_samples, k), dtype=np.float32)
    for start in range(0, num_samples, rows):
        stop = min(start + rows, num_samples)
        scores = keys[start:stop] @ keys.T
        if exclude_self:
            local = torch.arange(stop - start, device=keys.device)
            scores[local, local + start] = -torch.inf
        values, positions = torch.topk(scores, k, dim=1)
        indices[start:stop] = positions.cpu().numpy()
        similarities[start:stop] = values.clamp(-1.0, 1.0).cpu().numpy()
    return indices, similarities


def _import_pynndescent() -> ModuleType:
    try:
        import pynndescent
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "`knn_cosine(method='ann')` needs pynndescent. HINT: `pip install pynndescent` (it comes"
            " with umap-learn), or use method='exact'."
        ) from error
    return pynndescent


def _knn_ann(unit: np.ndarray, k: int, exclude_self: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    pynndescent = _import_pynndescent()
    num_samples = unit.shape[0]
    n_neighbors = min(k + 1 if exclude_self else k, num_samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba / pynndescent performance chatter
        index = pynndescent.NNDescent(
            unit, metric="cosine", n_neighbors=n_neighbors, random_state=seed, low_memory=True,
            compressed=True, n_jobs=-1, verbose=False,
        )
        found, distances = index.neighbor_graph
    found = found.astype(np.int64)
    similarities = (1.0 - distances).astype(np.float32)
    missing = found < 0
    similarities[missing] = np.nan
    if exclude_self:
        found, similarities = _drop_self(found, similarities, k)
    order = np.argsort(-np.nan_to_num(similarities, nan=-np.inf), axis=1, kind="stable")
    return np.take_along_axis(found, order, 1)[:, :k], np.take_along_axis(similarities, order, 1)[:, :k]


def _drop_self(found: np.ndarray, similarities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove row ``i`` from row ``i`` (or the last column where ``i`` is absent), keep ``k`` columns."""
    rows = np.arange(found.shape[0])[:, None]
    drop = found == rows
    no_self = ~drop.any(axis=1)
    drop[no_self, -1] = True
    drop &= np.cumsum(drop, axis=1) == 1  # one column per row
    keep = np.argsort(drop, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, keep, 1), np.take_along_axis(similarities, keep, 1)


def neighbor_label_disagreement(
    neighbor_indices: np.ndarray,
    labels: np.ndarray,
    similarities: np.ndarray | None = None,
) -> np.ndarray:
    """Similarity-weighted fraction of each sample's neighbours whose label differs from its own.

    ``d_i = sum_j w_ij [y_j != y_i] / sum_j w_ij`` over the neighbours ``j`` of ``i``, with
    ``w_ij = max(sim_ij, 0)`` when ``similarities`` is given, else 1. A sample whose neighbours
    all carry another label scores 1: the kNN label-noise signal of Bahri et al. 2020 (Deep k-NN)
    and Zhu et al. 2022 (SimiFeat, their "local voting"). When all weights of a row are 0
    (neighbours orthogonal or opposite) the unweighted fraction is used.

    Args:
        neighbor_indices: ``(N, k)`` row positions from :func:`knn_cosine` (-1 = missing).
        labels: ``(N,)`` integer given labels, indexed by row position.
        similarities: optional ``(N, k)`` cosine similarities aligned with ``neighbor_indices``.

    Returns:
        ``(N,)`` float64 in ``[0, 1]``; NaN for a row without any neighbour.

    Raises:
        ValueError: on mismatched shapes or non-integer labels.
    """
    neighbors = np.asarray(neighbor_indices)
    labels = np.asarray(labels)
    if neighbors.ndim != 2 or not np.issubdtype(neighbors.dtype, np.integer):
        raise ValueError(
            "Expected argument `neighbor_indices` to be a 2-D integer array (N, k) but got shape"
            f" {neighbors.shape} and dtype {neighbors.dtype}."
        )
    if labels.shape != (neighbors.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Expected argument `labels` to be a 1-D integer array of length N = {neighbors.shape[0]}"
            f" but got shape {labels.shape} and dtype {labels.dtype}."
        )
    present = neighbors >= 0
    differs = (labels[np.where(present, neighbors, 0)] != labels[:, None]) & present
    if similarities is None:
        weights = present.astype(np.float64)
    else:
        sims = np.asarray(similarities, dtype=np.float64)
        if sims.shape != neighbors.shape:
            raise ValueError(
                f"Expected `similarities` and `neighbor_indices` to have the same shape but got"
                f" {sims.shape} and {neighbors.shape}."
            )
        weights = np.where(present, np.clip(np.nan_to_num(sims, nan=0.0), 0.0, None), 0.0)
        all_zero = weights.sum(axis=1) <= 0.0
        weights[all_zero] = present[all_zero]
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * differs).sum(axis=1) / total, np.nan)
