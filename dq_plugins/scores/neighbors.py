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
  fp16 / bf16 input is upcast per block. Cost ``2 N^2 D`` flops (1M x 384: 7.7e14), quadratic in
  ``N``: fine on CPU up to tens of thousands of rows, on a GPU up to millions (timings:
  ``benchmarks/RESULTS.md``, "Readings formerly in docstrings").
- ``"ann"``: NN-descent (Dong, Charikar and Li, "Efficient k-nearest neighbor graph construction
  for generic similarity measures", WWW 2011) through ``pynndescent.NNDescent`` with
  ``metric="cosine"``, on CPU, cost near ``O(N^1.14 D)``. Its recall falls on high-dimensional
  isotropic data (every direction is noise) and stays high on clustered rows; real embeddings have a
  low intrinsic dimension and sit nearer the latter. pynndescent compiles its kernels with numba on
  the first call of a process, which can take minutes on CPU (``analysis.embeddings.warm_up`` can
  do it while the model trains). Recall and timings: ``benchmarks/RESULTS.md``.

- ``"ivf"``: cluster-pruned exact search in torch, on the device of the input (an inverted file
  index as in Jegou, Douze and Schmid, "Product Quantization for Nearest Neighbor Search", TPAMI
  2011, and faiss's ``IndexIVFFlat``, but probed per list rather than per query so every step
  is a dense matmul): spherical k-means puts the rows in ``L = N / S`` lists of about
  :data:`IVF_LIST_SIZE` rows ``S``; the queries of list ``c`` are searched exactly (matmul + topk)
  among the members of the :data:`IVF_NPROBE` lists whose centroids are nearest to ``c``'s. Above
  :data:`IVF_FLAT_MAX_LISTS` lists the coarse quantizer has two levels (a hierarchical k-means,
  the vocabulary tree of Nister and Stewenius, "Scalable Recognition with a Vocabulary Tree",
  CVPR 2006, two levels deep): ``sqrt(L)`` top centroids, then each top group is split into lists in proportion to
  its size, so assigning the rows costs ``O(N sqrt(L) D)`` rather than ``O(N L D)``. Every k-means
  is trained on a random subsample of at most :data:`IVF_TRAIN_PER_LIST` rows per centroid (as
  faiss does). Search cost about ``2 N (nprobe S) D`` flops: linear in ``N``; no compilation, the
  same code on CPU and GPU. Recall is that of probing ``nprobe S`` candidates per query; it falls
  when a query's true neighbours spread over more rows than that (high intrinsic dimension within
  a cluster). Recall@10 measured in ``tests/scores/test_neighbors.py`` and ``benchmarks/RESULTS.md``.

A search can be split into ``P`` parts (``part=(p, P)``, one per rank of a job: :mod:`dq_plugins.analysis.distributed`):
part ``p`` searches only its share of the query rows and leaves the others at -1 / NaN, and the parts together
give what one search gives, row for row. ``"exact"`` splits its blocks of query rows (the same blocks as one search,
so the same floating-point sums); ``"ivf"`` splits its lists, balanced by queries x candidates, and every part
must use the same quantizer (``quantizer=``, the :func:`ivf_lists` of one process).

``"auto"`` picks ``"exact"`` up to :data:`EXACT_MAX_SAMPLES_CPU` rows on CPU (and
:data:`EXACT_MAX_SAMPLES_GPU` on a GPU), else ``"ivf"``. ``"ann"`` (pynndescent) is only used when
asked for.

References: Sun, Ming, Zhu and Li, "Out-of-Distribution Detection with Deep Nearest Neighbors",
ICML 2022 (cosine kNN on normalised features); Bahri, Jiang and Gupta, "Deep k-NN for Noisy
Labels", ICML 2020 and Zhu, Dong and Liu, "Detecting Corrupted Labels Without Training a Model to
Predict", ICML 2022 (SimiFeat): neighbour label disagreement as a label-noise signal.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Literal, NamedTuple

import numpy as np
import torch

KnnMethod = Literal["auto", "exact", "ivf", "ann"]

KNN_METHODS: tuple[str, ...] = ("auto", "exact", "ivf", "ann")
"""Values accepted by the ``method`` argument of :func:`knn_cosine`."""

EXACT_MAX_SAMPLES_CPU = 50_000
"""Largest ``N`` for which ``method="auto"`` computes exact neighbours on CPU.

Exact search costs ``2 N^2 D`` flops, quadratic in ``N``; the approximate searches grow about
linearly. On the 2 shared CPU cores this was chosen on, the two were about even at 50k rows once
NN-descent's one-off compilation is counted (``benchmarks/RESULTS.md``, "Readings formerly in
docstrings"); above it ``"ivf"`` wins.
"""

EXACT_MAX_SAMPLES_GPU = 2_000_000
"""Largest ``N`` for which ``method="auto"`` computes exact neighbours on a GPU."""

IVF_NPROBE = 12
"""Lists searched per list of queries by the ``"ivf"`` method (its own list included)."""

IVF_LIST_SIZE = 1000
"""Target rows per list of the ``"ivf"`` method: ``L = round(N / IVF_LIST_SIZE)`` lists (at most ``N / 8``).

With :data:`IVF_NPROBE` this fixes the candidates per query (about 12k) whatever ``N``, so the
search grows linearly; recall@10 >= 0.99 at 100k and 1M clustered rows (``benchmarks/RESULTS.md``)."""

IVF_FLAT_MAX_LISTS = 256
"""Up to this many lists the rows are assigned by brute force; above it by the two-level quantizer."""

IVF_TRAIN_PER_LIST = 64
"""Each k-means of the ``"ivf"`` quantizer is trained on at most this many random rows per centroid."""

IVF_KMEANS_ITERATIONS = 10
"""Lloyd iterations of the spherical k-means that builds the ``"ivf"`` lists."""

MAX_BLOCK_ELEMENTS_CPU = 2**26
"""At most this many similarities (256 MB of fp32) are held at once on CPU."""

MAX_BLOCK_ELEMENTS_GPU = 2**28
"""At most this many similarities (1 GiB of fp32) are held at once on a GPU."""

NORM_EPSILON = 1e-12
"""Rows with an L2 norm below this are left at zero (similarity 0 to every other row)."""

UNIT_NORM_TOLERANCE = 1e-3
"""An fp32 array whose row norms are all within this of 1 is used as is, without a copy."""


class KnnGraph(NamedTuple):
    """A kNN graph searched ahead of the analysis (e.g. by every rank of a job), to be used instead of a search.

    Attributes:
        indices: ``(N, k)`` int64 row positions, nearest first, as :func:`knn_cosine` returns them.
        similarities: ``(N, k)`` float32 cosine similarities (NaN where the index is -1).
        method: ``"exact"`` or ``"ivf"``, the method that searched it.
        ranks: processes the search was split over (1: one process).
        seconds: wall time of the search.
    """

    indices: np.ndarray
    similarities: np.ndarray
    method: str
    ranks: int
    seconds: float


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


REDUCE_ABOVE_ELEMENTS = 2**31
"""``N x D`` above which the embedding analysis works on :func:`reduced_rows` (10M x 768 is 3.6 times this; 1M x 768 is
below it). The search's cost and its float32 copy grow with ``D``: at 10M x 768 the copy alone is 31 GB and the
``"ivf"`` search about six times the 128-d one's 418 s (``benchmarks/RESULTS.md``)."""

REDUCED_DIM = 128
"""Columns of :func:`reduced_rows`."""


def needs_reduction(num_samples: int, dim: int) -> bool:
    """Whether ``(num_samples, dim)`` embeddings are analysed through :func:`reduced_rows`."""
    return dim > REDUCED_DIM and num_samples * dim > REDUCE_ABOVE_ELEMENTS


def reduced_rows(
    embeddings: torch.Tensor | np.ndarray, dim: int = REDUCED_DIM, *, seed: int = 0, chunk_size: int = 65_536
) -> torch.Tensor:
    """``(N, dim)`` float32 CPU tensor: a Gaussian random projection of the ``(N, D)`` rows, chunk by chunk.

    Johnson-Lindenstrauss (Achlioptas 2003, "Database-friendly random projections"): with a ``D x dim`` matrix of
    independent ``N(0, 1/dim)`` entries, distances and inner products are kept up to a relative error of order
    ``sqrt(2 / dim)`` (about 12% at 128 columns for a pair's distance), so nearest neighbours, near-duplicates (a
    small distance stays small: identical rows stay identical) and clusters survive while the search works on
    ``dim`` columns instead of ``D``. The matrix comes from ``seed`` (every rank of a job draws the same one). A
    memory-mapped or GPU input is read one chunk of rows at a time, never copied whole.
    """
    tensor = _as_tensor(embeddings)
    matrix = torch.randn(tensor.shape[1], dim, generator=torch.Generator().manual_seed(seed)) / dim**0.5
    out = torch.empty((tensor.shape[0], dim), dtype=torch.float32)
    for start in range(0, tensor.shape[0], chunk_size):
        out[start : start + chunk_size] = tensor[start : start + chunk_size].to("cpu", torch.float32) @ matrix
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
    """``"exact"``, ``"ivf"`` or ``"ann"`` for the given ``method``, size and device (see module docstring)."""
    if method not in KNN_METHODS:
        raise ValueError(f"Expected argument `method` to be one of {list(KNN_METHODS)} but got {method!r}.")
    if method != "auto":
        return method
    limit = EXACT_MAX_SAMPLES_CPU if device.type == "cpu" else EXACT_MAX_SAMPLES_GPU
    return "exact" if num_samples <= limit else "ivf"


def _check_part(part: tuple[int, int]) -> tuple[int, int]:
    try:
        index, parts = (int(value) for value in part)
        valid = parts >= 1 and 0 <= index < parts and tuple(part) == (index, parts)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"Expected argument `part` to be (p, P) with 0 <= p < P (this process's part of P) but got {part!r}."
        )
    return index, parts


def knn_cosine(
    embeddings: torch.Tensor | np.ndarray,
    k: int,
    *,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
    exclude_self: bool = True,
    method: KnnMethod = "auto",
    seed: int = 0,
    part: tuple[int, int] = (0, 1),
    quantizer: tuple[torch.Tensor, torch.Tensor] | None = None,
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
        method: ``"exact"``, ``"ivf"``, ``"ann"`` (pynndescent, CPU) or ``"auto"`` (see the module
            docstring).
        seed: random state of the approximate searches.
        part: ``(p, P)``: search only part ``p`` of ``P`` of the query rows (module docstring); the rows of
            the other parts are -1 / NaN. ``"exact"`` and ``"ivf"`` only.
        quantizer: ``"ivf"`` only: ``(centroids (L, D), assignment (N,) int64)`` from :func:`ivf_lists` to
            use instead of computing it (the parts of one search must share it); ``None``: computed from
            ``seed``.

    Returns:
        ``(indices, similarities)``: ``(N, k)`` int64 row positions and ``(N, k)`` float32 cosine
        similarities, nearest first. Ties are broken arbitrarily. The approximate method may
        return -1 / NaN for a neighbour it did not find.

    Raises:
        ValueError: for a non-2-D or non-float input, a ``k`` out of range, an unknown ``method``, a bad
            ``part`` or a ``part`` of the ``"ann"`` method.
        ModuleNotFoundError: for ``method="ann"`` without pynndescent.
    """
    tensor = _as_tensor(embeddings)
    target = torch.device(device) if device is not None else tensor.device
    num_samples = tensor.shape[0]
    _check_k(k, num_samples, exclude_self)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"Expected argument `chunk_size` to be a positive integer but got {chunk_size!r}.")
    chosen = resolve_method(method, num_samples, target)
    part = _check_part(part)
    if chosen == "ann":
        if part[1] > 1:
            raise ValueError("Expected `part=(0, 1)` with method='ann' (NN-descent searches all rows at once) but"
                             f" got part={part}. HINT: use method='exact' or 'ivf' to split a search.")
        return _knn_ann(unit_rows(tensor, device="cpu").numpy(), int(k), exclude_self, seed)
    if chosen == "ivf":
        return _knn_ivf(unit_rows(tensor, device=target), int(k), exclude_self, seed, part=part, quantizer=quantizer)
    return _knn_exact(unit_rows(tensor, device=target), int(k), chunk_size, exclude_self, part)


def part_owners(costs: np.ndarray, parts: int) -> np.ndarray:
    """``(n,)`` int64: the part ``0 .. parts-1`` of each of ``n`` work items of cost ``costs`` (``(n,)``, >= 0).

    Contiguous runs of items, balanced by cost: item ``i`` goes to the part in which the middle of its
    cost falls on the cumulative cost. A deterministic function of its input, so every process that
    computes it from the same costs splits the work the same way.
    """
    costs = np.asarray(costs, dtype=np.float64)
    if parts == 1 or costs.size == 0:
        return np.zeros(costs.size, dtype=np.int64)
    cumulative = np.cumsum(costs)
    middle = (cumulative - costs / 2) / max(float(cumulative[-1]), 1e-300)
    return np.minimum((middle * parts).astype(np.int64), parts - 1)


@torch.inference_mode()
def _knn_exact(
    keys: torch.Tensor, k: int, chunk_size: int, exclude_self: bool, part: tuple[int, int] = (0, 1)
) -> tuple[np.ndarray, np.ndarray]:
    num_samples = keys.shape[0]
    budget = MAX_BLOCK_ELEMENTS_CPU if keys.device.type == "cpu" else MAX_BLOCK_ELEMENTS_GPU
    rows = max(1, min(chunk_size, budget // max(num_samples, 1)))
    starts = np.arange(0, num_samples, rows)
    # a part takes whole blocks of the one-process search: a row's sums do not depend on how it was split
    mine = starts[part_owners(np.minimum(starts + rows, num_samples) - starts, part[1]) == part[0]]
    indices = np.full((num_samples, k), -1, dtype=np.int64)
    similarities = np.full((num_samples, k), np.nan, dtype=np.float32)
    for start in mine.tolist():
        stop = min(start + rows, num_samples)
        scores = keys[start:stop] @ keys.T
        if exclude_self:
            local = torch.arange(stop - start, device=keys.device)
            scores[local, local + start] = -torch.inf
        values, positions = torch.topk(scores, k, dim=1)
        indices[start:stop] = positions.cpu().numpy()
        similarities[start:stop] = values.clamp(-1.0, 1.0).cpu().numpy()
    return indices, similarities


def spherical_kmeans(
    unit: torch.Tensor, num_lists: int, *, iterations: int = IVF_KMEANS_ITERATIONS, seed: int = 0,
    max_train: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means of unit rows: ``(centroids (L, D) unit fp32, assignment (N,) int64)``.

    Trained with Lloyd iterations on at most ``max_train`` random rows (default ``32 L``), from
    random distinct rows; every row is then assigned to its most similar centroid, in blocks.
    An empty list keeps its previous centroid.
    """
    num_samples = unit.shape[0]
    generator = torch.Generator().manual_seed(seed)
    train_rows = min(num_samples, max_train or 32 * num_lists)
    sample = unit[torch.randperm(num_samples, generator=generator)[:train_rows].to(unit.device)]
    centroids = sample[torch.randperm(train_rows, generator=generator)[:num_lists].to(unit.device)].clone()
    for _ in range(iterations):
        assign = _nearest_centroid(sample, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        norms = torch.linalg.vector_norm(sums, dim=1, keepdim=True)
        centroids = torch.where(norms > NORM_EPSILON, sums / norms.clamp_min(NORM_EPSILON), centroids)
    return centroids, _nearest_centroid(unit, centroids)


def ivf_num_lists(num_samples: int) -> int:
    """Lists of the ``"ivf"`` search of ``num_samples`` rows: ``N / IVF_LIST_SIZE``, at least 1, at most ``N / 8``."""
    return int(min(max(1, round(num_samples / IVF_LIST_SIZE)), max(1, num_samples // 8)))


def ivf_lists(unit: torch.Tensor, num_lists: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse quantizer of the ``"ivf"`` search: ``(centroids (L', D) unit fp32, assignment (N,) int64)``.

    Up to :data:`IVF_FLAT_MAX_LISTS` lists, one :func:`spherical_kmeans`. Above, two levels:
    ``T = round(sqrt(num_lists))`` top centroids, then top group ``g`` (``n_g`` rows) gets its own
    k-means with ``max(1, round(num_lists n_g / N))`` centroids, trained on its own rows; a row
    belongs to a list of its top group. ``L'`` is then close to, not exactly, ``num_lists``.
    Every k-means trains on at most :data:`IVF_TRAIN_PER_LIST` random rows per centroid (the top
    level on 4 times as many). Cost of the assignment ``O(N (T + L / T) D)``.
    """
    num_samples = unit.shape[0]
    if num_lists <= IVF_FLAT_MAX_LISTS:
        return spherical_kmeans(unit, num_lists, seed=seed, max_train=IVF_TRAIN_PER_LIST * num_lists)
    num_top = int(round(np.sqrt(num_lists)))
    _, top = spherical_kmeans(unit, num_top, seed=seed, max_train=IVF_TRAIN_PER_LIST * num_top * 4)
    order = torch.argsort(top)
    sizes = torch.bincount(top, minlength=num_top).cpu().numpy()
    assign = torch.empty(num_samples, dtype=torch.int64, device=unit.device)
    parts: list[torch.Tensor] = []
    offset, start = 0, 0
    for group, size in enumerate(sizes):
        if size == 0:
            continue
        rows = order[start:start + int(size)]
        start += int(size)
        lists = int(min(max(1, round(num_lists * size / num_samples)), size))
        centroids, local = spherical_kmeans(unit[rows], lists, seed=seed + 1 + group,
                                            max_train=IVF_TRAIN_PER_LIST * lists)
        assign[rows] = local + offset
        parts.append(centroids)
        offset += lists
    return torch.cat(parts), assign


def _nearest_centroid(unit: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    budget = MAX_BLOCK_ELEMENTS_CPU if unit.device.type == "cpu" else MAX_BLOCK_ELEMENTS_GPU
    rows = max(1, budget // max(centroids.shape[0], 1))
    return torch.cat([(unit[start:start + rows] @ centroids.T).argmax(dim=1) for start in range(0, unit.shape[0], rows)])


def _nearest_lists(centroids: torch.Tensor, nprobe: int) -> torch.Tensor:
    """``(L, nprobe)`` the lists whose centroids are most similar to each centroid (itself first), in blocks."""
    budget = MAX_BLOCK_ELEMENTS_CPU if centroids.device.type == "cpu" else MAX_BLOCK_ELEMENTS_GPU
    rows = max(1, budget // max(centroids.shape[0], 1))
    return torch.cat([torch.topk(centroids[start:start + rows] @ centroids.T, nprobe, dim=1).indices
                      for start in range(0, centroids.shape[0], rows)])


@torch.inference_mode()
def _knn_ivf(
    unit: torch.Tensor, k: int, exclude_self: bool, seed: int, nprobe: int = IVF_NPROBE,
    part: tuple[int, int] = (0, 1), quantizer: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-pruned exact search (module docstring, ``"ivf"``); ``part``, ``quantizer`` as in :func:`knn_cosine`."""
    num_samples = unit.shape[0]
    if quantizer is None:
        quantizer = ivf_lists(unit, ivf_num_lists(num_samples), seed=seed)
    centroids, assign = (tensor.to(unit.device) for tensor in quantizer)
    if assign.shape != (num_samples,) or centroids.ndim != 2 or centroids.shape[1] != unit.shape[1]:
        raise ValueError(
            f"Expected argument `quantizer` to be (centroids (L, {unit.shape[1]}), assignment ({num_samples},)) but"
            f" got shapes {tuple(centroids.shape)} and {tuple(assign.shape)}. HINT: pass the `ivf_lists` of these rows."
        )
    num_lists = centroids.shape[0]
    order = torch.argsort(assign)
    sizes = torch.bincount(assign, minlength=num_lists)
    starts = torch.cumsum(sizes, 0) - sizes
    probes = _nearest_lists(centroids, min(nprobe, num_lists))
    sizes_host, starts_host, probes_host = sizes.cpu().numpy(), starts.cpu().numpy(), probes.cpu().numpy()
    order_host = order.cpu().numpy()
    wanted = k + 1 if exclude_self else k
    budget = MAX_BLOCK_ELEMENTS_CPU if unit.device.type == "cpu" else MAX_BLOCK_ELEMENTS_GPU
    indices = np.full((num_samples, wanted), -1, dtype=np.int64)
    similarities = np.full((num_samples, wanted), np.nan, dtype=np.float32)
    # one buffer each for the keys and the scores, reused by every list: a fresh large tensor per
    # list costs the OS's page faults on first touch, about as much as the matmul itself on CPU
    candidates_per_list = sizes_host[probes_host].sum(axis=1)
    mine = part_owners(sizes_host * candidates_per_list, part[1]) == part[0]
    most_candidates = int(candidates_per_list.max())
    key_buffer = torch.empty(most_candidates * unit.shape[1], dtype=unit.dtype, device=unit.device)
    score_buffer = torch.empty(min(budget, int(sizes_host.max()) * most_candidates), dtype=unit.dtype, device=unit.device)
    for lst in range(num_lists):
        if sizes_host[lst] == 0 or not mine[lst]:
            continue
        queries = order_host[starts_host[lst]:starts_host[lst] + sizes_host[lst]]
        candidates = np.concatenate([order_host[starts_host[p]:starts_host[p] + sizes_host[p]] for p in probes_host[lst]])
        keys = key_buffer[: candidates.size * unit.shape[1]].view(candidates.size, unit.shape[1])
        torch.index_select(unit, 0, torch.from_numpy(candidates).to(unit.device), out=keys)
        take = min(wanted, candidates.size)
        rows = max(1, budget // max(candidates.size, 1))
        for start in range(0, queries.size, rows):
            block = queries[start:start + rows]
            scores = score_buffer[: block.size * candidates.size].view(block.size, candidates.size)
            torch.mm(unit[torch.from_numpy(block).to(unit.device)], keys.T, out=scores)
            values, positions = torch.topk(scores, take, dim=1)
            indices[block, :take] = candidates[positions.cpu().numpy()]
            similarities[block, :take] = values.clamp(-1.0, 1.0).cpu().numpy()
    if exclude_self:
        return _drop_self(indices, similarities, k)
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
    neighbors = _neighbor_array(neighbor_indices)
    labels = np.asarray(labels)
    if labels.shape != (neighbors.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Expected argument `labels` to be a 1-D integer array of length N = {neighbors.shape[0]}"
            f" but got shape {labels.shape} and dtype {labels.dtype}."
        )
    present = neighbors >= 0
    differs = (labels[np.where(present, neighbors, 0)] != labels[:, None]) & present
    return _weighted_mean(differs, _neighbor_weights(neighbors, similarities))


def _neighbor_array(neighbor_indices: np.ndarray) -> np.ndarray:
    """``neighbor_indices`` as an ``(N, k)`` integer array (-1 = missing); a ValueError naming it otherwise."""
    neighbors = np.asarray(neighbor_indices)
    if neighbors.ndim != 2 or not np.issubdtype(neighbors.dtype, np.integer):
        raise ValueError(
            "Expected argument `neighbor_indices` to be a 2-D integer array (N, k) but got shape"
            f" {neighbors.shape} and dtype {neighbors.dtype}."
        )
    return neighbors


def _neighbor_weights(neighbors: np.ndarray, similarities: np.ndarray | None) -> np.ndarray:
    """``(N, k)`` float64 weights of the neighbours: ``max(sim, 0)`` (1 without ``similarities``), 0 where
    the index is -1; a row whose weights are all 0 weighs its present neighbours equally."""
    present = neighbors >= 0
    if similarities is None:
        return present.astype(np.float64)
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.shape != neighbors.shape:
        raise ValueError(
            f"Expected `similarities` and `neighbor_indices` to have the same shape but got"
            f" {sims.shape} and {neighbors.shape}."
        )
    weights = np.where(present, np.clip(np.nan_to_num(sims, nan=0.0), 0.0, None), 0.0)
    all_zero = weights.sum(axis=1) <= 0.0
    weights[all_zero] = present[all_zero]
    return weights


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(N,)`` row means of ``values`` under ``weights`` (both ``(N, k)``); NaN where the weights sum to 0."""
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * values).sum(axis=1) / total, np.nan)


LABEL_SET_CHUNK_ELEMENTS = 2**24
"""At most this many (row, neighbour, class) entries are held at once by :func:`neighbor_label_set_disagreement`."""


def neighbor_label_set_disagreement(
    neighbor_indices: np.ndarray,
    label_sets: np.ndarray,
    similarities: np.ndarray | None = None,
) -> np.ndarray:
    """Similarity-weighted mean Jaccard distance between each sample's label set and its neighbours'.

    The multi-label form of :func:`neighbor_label_disagreement`: with ``Y_i`` the set of classes given
    to sample ``i``, ``d_i = sum_j w_ij J(Y_i, Y_j) / sum_j w_ij`` over the neighbours ``j`` of ``i``,
    where ``J(A, B) = 1 - |A & B| / |A | B|`` (0 when both sets are empty) and the weights are those of
    :func:`neighbor_label_disagreement` (``max(sim_ij, 0)``, or 1 without ``similarities``; equal
    weights when all are 0). With one class per sample it equals the single-label score. A sample
    whose neighbours all carry label sets disjoint from its own scores 1: the kNN label-noise signal of
    Bahri, Jiang and Gupta, "Deep k-NN for Noisy Labels", ICML 2020, on label sets.

    Args:
        neighbor_indices: ``(N, k)`` row positions from :func:`knn_cosine` (-1 = missing).
        label_sets: ``(N, C)`` multi-hot given labels (bool or 0/1 integers), indexed by row position.
        similarities: optional ``(N, k)`` cosine similarities aligned with ``neighbor_indices``.

    Returns:
        ``(N,)`` float64 in ``[0, 1]``; NaN for a row without any neighbour.

    Raises:
        ValueError: on mismatched shapes, or ``label_sets`` with values other than 0 and 1.
    """
    neighbors = _neighbor_array(neighbor_indices)
    sets = np.asarray(label_sets)
    if sets.ndim != 2 or sets.shape[0] != neighbors.shape[0] or not np.isin(sets, (0, 1)).all():
        raise ValueError(
            f"Expected argument `label_sets` to be a multi-hot (N, C) array of 0 and 1 with N = {neighbors.shape[0]}"
            f" but got shape {sets.shape} and dtype {sets.dtype}. HINT: pass the given labels as multi-hot rows."
        )
    sets = sets.astype(bool)
    weights = _neighbor_weights(neighbors, similarities)
    present = neighbors >= 0
    distance = np.zeros(neighbors.shape, dtype=np.float64)
    step = max(1, LABEL_SET_CHUNK_ELEMENTS // max(1, neighbors.shape[1] * sets.shape[1]))
    for start in range(0, neighbors.shape[0], step):
        rows = slice(start, start + step)
        own = sets[rows, None, :]  # (R, 1, C)
        theirs = sets[np.where(present[rows], neighbors[rows], 0)]  # (R, k, C)
        union = (own | theirs).sum(axis=2)
        inter = (own & theirs).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            distance[rows] = np.where(union > 0, 1.0 - inter / union, 0.0)
    return _weighted_mean(np.where(present, distance, 0.0), weights)
