"""2-D coordinates of the embeddings for the embedding map: a UMAP-style graph layout in torch.

Methods (``project_2d(method=...)``):

- ``"graph"`` (what ``"auto"`` picks): UMAP's algorithm (McInnes, Healy and Melville, "UMAP: Uniform
  Manifold Approximation and Projection for Dimension Reduction", 2018,
  https://arxiv.org/abs/1802.03426, section 3 and umap-learn's ``fuzzy_simplicial_set`` and
  ``optimize_layout_euclidean``) written with vectorised torch ops: fuzzy edge weights of the kNN
  graph (:func:`fuzzy_graph`), a PCA initialisation scaled to ``[0, 10]``, then
  :data:`GRAPH_EPOCHS` epochs of negative-sampling SGD over all edges at once
  (:func:`graph_layout`). It runs on CPU or on a GPU (``device=``), needs no compilation, and is
  deterministic for an integer seed on either.
- ``"umap"``: umap-learn itself (the optional extra ``dq_plugins[umap]``), for users who want the
  reference implementation. Its numba kernels compile at the first call of every process (it does
  not cache them), which costs more than the graph layout's whole fit.
- ``"pca"``: scikit-learn's PCA, a linear map (clusters that differ along more than two directions
  overlap).

Timings of each method and of each step, and how well a 2-D 10-NN classifier does on each map,
are in ``benchmarks/RESULTS.md`` ("Readings formerly in docstrings"). The layout runs on one torch
thread on CPU (:data:`LAYOUT_CPU_THREADS`).

Large N. Every method is fitted on a random subsample of at most ``max_fit`` rows:

- PCA then maps every row with its linear ``transform`` (chunk by chunk).
- The graph layout and UMAP are fitted on the exact :data:`GRAPH_NEIGHBORS`-NN graph of the
  subsample (self included, as UMAP counts it), with euclidean distances between L2-normalised rows
  (``sqrt(2 - 2 cos)``, the same order as cosine), and place the other rows by propagation over the
  kNN graph of all rows (the graph the other embedding scores use, computed once by
  ``knn_cosine``): a row gets the similarity-weighted mean position of its neighbours that are
  already placed, round after round, which is the initialisation ``UMAP.transform`` uses, without
  its per-point optimisation (``UMAP.transform`` optimises every row again; the propagation is a
  few sparse matrix products). Rows the graph does not connect to the
  subsample get a least-squares linear map of the embedding instead. With ``N <= max_fit`` the
  given kNN graph of all rows is used as is.

umap-learn runs on the subsample's exact neighbours passed as ``precomputed_knn``, so it does not
run its own NN-descent. With a ``seed`` (default) it is deterministic and single-threaded;
``seed=None`` lets it use every core but the result changes between runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch

ProjectionMethod = Literal["auto", "graph", "umap", "pca"]

PROJECTION_METHODS: tuple[str, ...] = ("auto", "graph", "umap", "pca")
"""Values accepted by the ``method`` argument of :func:`project_2d`."""

DEFAULT_MAX_FIT = 20_000
"""Rows the 2-D map is fitted on; the others are placed (module docstring)."""

GRAPH_NEIGHBORS = 15
"""Neighbours per row, self included (UMAP's default ``n_neighbors``), when the subsample's own
graph is computed."""

GRAPH_EPOCHS = 200
"""Optimisation epochs of the graph layout and of UMAP (UMAP's default above 10k rows; 500 below)."""

LAYOUT_MIN_SAMPLES = 32
"""Below this many rows a neighbour-graph layout says little (and UMAP's spectral initialisation
is unreliable): PCA is used."""

CURVE_A = 1.577
CURVE_B = 0.895
"""``a``, ``b`` of the low-dimensional similarity ``1 / (1 + a d^{2b})``: umap-learn's
``find_ab_params(spread=1.0, min_dist=0.1)`` (its defaults) gives 1.5769 and 0.8951."""

NEGATIVE_SAMPLE_RATE = 5
"""Uniformly drawn rows each sampled edge pushes its head away from (UMAP's default)."""

GRADIENT_CLIP = 4.0
"""Each gradient coordinate is clipped to ``[-4, 4]``, as in umap-learn."""

INIT_RANGE = 10.0
"""The initial layout spans ``[0, INIT_RANGE]`` on each axis, as umap-learn scales its own."""

SIGMA_SEARCH_STEPS = 64
"""Bisection steps of the per-row bandwidth (umap-learn's ``smooth_knn_dist`` uses 64)."""

MIN_SIGMA_SCALE = 1e-3
"""The bandwidth of a row is at least this times its mean neighbour distance (umap-learn's
``MIN_K_DIST_SCALE``)."""

FIXED_POINT_BITS = 24
"""Per-row gradient sums are taken in ``2^-FIXED_POINT_BITS`` fixed point (see :func:`graph_layout`)."""

LAYOUT_CPU_THREADS = 1
"""torch threads of the graph layout on CPU. Its ops are small, so with more threads each op waits
for all of them, and on cores shared with other jobs that made the layout several times slower
than one thread (``benchmarks/RESULTS.md``)."""

MAX_PROPAGATION_ROUNDS = 50

SUBSAMPLE_EXACT_MAX = 5_000
"""Above this many fitted rows the subsample's own kNN graph comes from the ``"ivf"`` search."""


UMAP_MISSING = (
    'projection="umap" needs umap-learn, an optional dependency that is not installed. '
    'HINT: `pip install "dq_plugins[umap]"`, or use projection="graph" (the default, a UMAP-style layout in torch).'
)


def require_umap() -> None:
    """Raise ``ModuleNotFoundError`` (:data:`UMAP_MISSING`) when umap-learn cannot be imported.

    Looks the module up without importing it (importing umap-learn loads numba: seconds).
    """
    import importlib.util
    import sys

    if sys.modules.get("umap") is not None:
        return
    try:
        spec = importlib.util.find_spec("umap")
    except (ImportError, ValueError):  # ValueError: sys.modules["umap"] is None (import blocked)
        spec = None
    if spec is None:
        raise ModuleNotFoundError(UMAP_MISSING, name="umap")


def resolve_projection(method: str) -> str:
    """``"graph"``, ``"umap"`` or ``"pca"`` for ``method`` (``"auto"``: ``"graph"``).

    Raises:
        ValueError: an unknown method.
        ModuleNotFoundError: ``"umap"`` without umap-learn installed (:func:`require_umap`).
    """
    if method not in PROJECTION_METHODS:
        raise ValueError(
            f"Expected argument `method` to be one of {list(PROJECTION_METHODS)} but got {method!r}."
        )
    if method == "umap":
        require_umap()
    return "graph" if method == "auto" else method


def project_2d(
    embeddings: np.ndarray,
    seed: int | None = 0,
    max_fit: int = DEFAULT_MAX_FIT,
    *,
    method: ProjectionMethod = "auto",
    neighbor_indices: np.ndarray | None = None,
    similarities: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """``(N, D)`` embeddings -> ``(N, 2)`` float32 coordinates for a map.

    Args:
        embeddings: ``(N, D)`` float array (fp16 is upcast chunk by chunk).
        seed: random state of the subsample and of the layout; ``None`` = nondeterministic
            (umap-learn then uses all cores).
        max_fit: at most this many rows are used to fit the projection.
        method: ``"graph"`` (torch UMAP-style layout), ``"umap"`` (umap-learn), ``"pca"`` or
            ``"auto"`` (``"graph"``).
        neighbor_indices, similarities: optional ``(N, k)`` kNN graph of all rows from
            ``knn_cosine`` (nearest first, self excluded). With ``"graph"`` and ``"umap"`` it places
            the rows outside the subsample (computed here when missing and ``N > max_fit``), and
            it is the layout's graph when ``N <= max_fit``.
        device: where the ``"graph"`` layout runs (default CPU); the other methods run on CPU.

    Returns:
        ``(N, 2)`` float32, deterministic for an integer ``seed``. Fewer than
        :data:`LAYOUT_MIN_SAMPLES` rows always use PCA; one row maps to ``(0, 0)``.
    """
    from dq_plugins.scores.neighbors import unit_rows

    chosen = resolve_projection(method)
    if not isinstance(max_fit, int) or max_fit < 2:
        raise ValueError(f"Expected argument `max_fit` to be an integer >= 2 but got {max_fit!r}.")
    unit = unit_rows(np.asarray(embeddings), device="cpu").numpy()
    num_samples = unit.shape[0]
    if num_samples < 2:
        return np.zeros((num_samples, 2), dtype=np.float32)
    rng = np.random.default_rng(seed)
    if num_samples > max_fit:
        fit_rows = np.sort(rng.choice(num_samples, max_fit, replace=False))
    else:
        fit_rows = np.arange(num_samples)
    if chosen == "pca" or fit_rows.size < LAYOUT_MIN_SAMPLES:
        return _pca_2d(unit, fit_rows, seed)
    if neighbor_indices is not None and (similarities is None or np.shape(neighbor_indices) != np.shape(similarities)):
        raise ValueError("Expected `similarities` of the same shape as `neighbor_indices` when the graph is given.")
    if neighbor_indices is not None and np.shape(neighbor_indices)[0] != num_samples:
        raise ValueError(
            f"Expected `neighbor_indices` with one row per embedding ({num_samples}) but got shape"
            f" {np.shape(neighbor_indices)}; pass the kNN graph of these embeddings, or None."
        )
    if chosen == "graph":
        layout_seed = int(rng.integers(2**31)) if seed is None else seed

        def fit(rows: np.ndarray, indices: np.ndarray, sims: np.ndarray) -> np.ndarray:
            return _graph_fit(rows, indices, sims, layout_seed, device)
    else:

        def fit(rows: np.ndarray, indices: np.ndarray, sims: np.ndarray) -> np.ndarray:
            return _umap_fit(rows, indices, sims, seed)

    if fit_rows.size == num_samples and neighbor_indices is not None:
        return fit(unit, np.asarray(neighbor_indices), np.asarray(similarities)).astype(np.float32)
    from dq_plugins.scores.neighbors import knn_cosine

    sub_k = min(GRAPH_NEIGHBORS - 1, fit_rows.size - 1)
    # the layout needs a good graph, not the exact one: the cluster-pruned search is faster above this size
    sub_method = "ivf" if fit_rows.size > SUBSAMPLE_EXACT_MAX else "exact"
    sub_indices, sub_sims = knn_cosine(unit[fit_rows], sub_k, method=sub_method, seed=seed or 0)
    fitted = fit(unit[fit_rows], sub_indices, sub_sims)
    if fit_rows.size == num_samples:
        return fitted.astype(np.float32)
    if neighbor_indices is None:
        neighbor_indices, similarities = knn_cosine(unit, min(10, num_samples - 1), seed=seed or 0)
    placed = propagate_positions(unit, fit_rows, fitted, np.asarray(neighbor_indices), np.asarray(similarities))
    return placed.astype(np.float32)


def _pca_2d(unit: np.ndarray, fit_rows: np.ndarray, seed: int | None, chunk_size: int = 65_536) -> np.ndarray:
    from sklearn.decomposition import PCA

    components = min(2, unit.shape[1], fit_rows.size)
    pca = PCA(n_components=components, svd_solver="full" if fit_rows.size <= 1000 else "randomized", random_state=seed)
    pca.fit(unit[fit_rows])
    out = np.zeros((unit.shape[0], 2), dtype=np.float32)
    for start in range(0, unit.shape[0], chunk_size):
        out[start : start + chunk_size, :components] = pca.transform(unit[start : start + chunk_size])
    return out


def fuzzy_graph(
    indices: np.ndarray | torch.Tensor,
    distances: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UMAP's fuzzy simplicial set of a kNN graph: symmetric edge weights in ``(0, 1]``.

    As umap-learn's ``smooth_knn_dist`` and ``fuzzy_simplicial_set`` (McInnes et al. 2018, section
    3.1, ``local_connectivity=1``, ``set_op_mix_ratio=1``): per row ``i``, ``rho_i`` is the distance to
    its nearest neighbour and ``sigma_i`` solves ``sum_j exp(-max(d_ij - rho_i, 0) / sigma_i) =
    log2(k + 1)`` (``k + 1`` counts the row itself, as UMAP's ``n_neighbors`` does) by
    :data:`SIGMA_SEARCH_STEPS` steps of a bisection run on every row at once, floored at
    :data:`MIN_SIGMA_SCALE` times the row's mean distance (the mean over all rows where ``rho_i = 0``);
    then ``w_ij = exp(-max(d_ij - rho_i, 0) / sigma_i)`` and the
    fuzzy union ``W + W^T - W * W^T``.

    Args:
        indices: ``(N, k)`` neighbour rows (self excluded; ``-1`` = none, skipped).
        distances: ``(N, k)`` non-negative distances in the same order (NaN where ``indices`` is -1).
        device: where the graph is built and returned.

    Returns:
        ``(head, tail, weight)``: int64, int64 and float32 ``(E,)`` tensors holding each undirected
        edge of positive weight in both directions, ordered by ``head`` then ``tail``.
    """
    device = torch.device(device)
    idx = torch.as_tensor(np.asarray(indices), device=device).long()
    dist = torch.as_tensor(np.asarray(distances), device=device).double()
    num_rows = idx.shape[0]
    rows = torch.arange(num_rows, device=device)[:, None].expand_as(idx)
    present = (idx >= 0) & (idx != rows) & torch.isfinite(dist)
    dist = torch.where(present, dist.clamp_min(0.0), torch.zeros_like(dist))
    count = present.sum(dim=1)
    positive = present & (dist > 0)
    rho = torch.where(positive, dist, torch.full_like(dist, torch.inf)).amin(dim=1)
    rho = torch.where(torch.isfinite(rho), rho, torch.zeros_like(rho))
    excess = torch.where(present, (dist - rho[:, None]).clamp_min(0.0), torch.full_like(dist, torch.inf))
    target = float(np.log2(idx.shape[1] + 1))
    low = torch.zeros(num_rows, dtype=torch.float64, device=device)
    high = torch.full_like(low, torch.inf)
    sigma = torch.ones_like(low)
    for _ in range(SIGMA_SEARCH_STEPS):
        total = torch.exp(-excess / sigma[:, None]).sum(dim=1)
        too_wide = total > target
        high = torch.where(too_wide, sigma, high)
        low = torch.where(too_wide, low, sigma)
        sigma = torch.where(torch.isinf(high), low * 2.0, (low + high) / 2.0)
    # umap-learn's means include the row itself (distance 0) as a neighbour
    row_mean = dist.sum(dim=1) / (count + 1)
    all_mean = dist.sum() / (count.sum() + num_rows)
    floor = MIN_SIGMA_SCALE * torch.where(rho > 0, row_mean, all_mean)
    sigma = torch.maximum(sigma, floor)
    weight = torch.where(sigma[:, None] > 0, torch.exp(-excess / sigma[:, None]), torch.ones_like(excess))
    weight = torch.where(present, weight, torch.zeros_like(weight))
    head, tail, w = rows[present], idx[present], weight[present]
    # fuzzy union: an edge stored once or twice (i -> j and j -> i) gets w_ij + w_ji - w_ij * w_ji
    keys = torch.cat([head * num_rows + tail, tail * num_rows + head])
    both = torch.cat([w, w])
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    total = torch.zeros(unique.numel(), dtype=both.dtype, device=device).index_add_(0, inverse, both)
    product = torch.ones_like(total).scatter_reduce_(0, inverse, both, reduce="prod")
    times = torch.bincount(inverse, minlength=unique.numel())
    union = torch.where(times > 1, total - product, total).float()
    kept = union > 0  # umap-learn drops the weights that underflow to 0
    return unique[kept] // num_rows, unique[kept] % num_rows, union[kept]


def graph_layout(
    head: torch.Tensor,
    tail: torch.Tensor,
    weight: torch.Tensor,
    init: torch.Tensor,
    *,
    epochs: int = GRAPH_EPOCHS,
    seed: int = 0,
) -> torch.Tensor:
    """UMAP's negative-sampling gradient descent of a 2-D layout, all edges of an epoch at once.

    umap-learn's ``optimize_layout_euclidean`` (McInnes et al. 2018, section 3.2 and appendix C;
    ``min_dist=0.1``: curve ``1 / (1 + a d^{2b})`` with :data:`CURVE_A`, :data:`CURVE_B`;
    ``negative_sample_rate=5``; ``repulsion_strength=1``; ``learning_rate=1``) samples edge
    ``(i, j)`` once every ``max(w) / w_ij`` epochs and then pulls ``i`` and ``j`` together and pushes
    ``i`` away from 5 uniformly drawn rows, one update at a time (Hogwild), each gradient coordinate
    clipped to ``[-4, 4]``, with a step size falling linearly from 1 to 0. Here each epoch makes
    that epoch's expected update in one vectorised step, from the positions at its start:

    - attraction: every undirected edge pulls both ends by ``2 r_ij clip(grad)``, where
      ``r_ij = w_ij / max(w)`` is its sampling rate (2: UMAP lists it as ``i -> j`` and ``j -> i``);
    - repulsion: UMAP gives row ``i`` ``5 sum_j r_ij`` negative samples per epoch on average; here
      every row gets the same ``K`` (that average over rows, rounded up), drawn uniformly, and its
      sum of clipped gradients is scaled by ``5 sum_j r_ij / K``. The negatives are read from one
      pool of uniform random rows drawn once, at a random offset per epoch.

    Edges lighter than ``max(w) / epochs`` are dropped, as UMAP does. The attraction sums use
    ``index_add_``, sequential on CPU; on other devices they are taken in
    ``2^-FIXED_POINT_BITS`` fixed point (int64), so the order of the GPU's atomic additions does not
    change the result.

    Args:
        head, tail, weight: ``(E,)`` edges from :func:`fuzzy_graph` (both directions listed).
        init: ``(N, 2)`` starting positions (about ``[0, 10]``, as UMAP's scaled initialisation);
            the layout runs on its device.
        epochs: optimisation epochs (UMAP's default above 10k rows is 200).
        seed: seed of the ``torch.Generator`` that draws the negatives.

    Returns:
        ``(N, 2)`` float32 positions on ``init``'s device, deterministic for given inputs and ``seed``.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"Expected argument `epochs` to be an integer >= 1 but got {epochs!r}.")
    if init.ndim != 2 or init.shape[1] != 2:
        raise ValueError(f"Expected argument `init` of shape (N, 2) but got {tuple(init.shape)}.")
    device = init.device
    num_rows = init.shape[0]
    px = init[:, 0].detach().to(torch.float32).clone()
    py = init[:, 1].detach().to(torch.float32).clone()
    head, tail, weight = head.to(device), tail.to(device), weight.to(device=device, dtype=torch.float32)
    keep = head < tail
    if weight.numel():
        keep &= weight >= weight.max() / epochs
    first, second = head[keep], tail[keep]
    if num_rows < 2 or first.numel() == 0:
        return torch.stack([px, py], dim=1)
    rate = weight[keep] / weight.max()
    pull_scale = 2.0 * rate
    per_row = _row_sums(torch.zeros(num_rows, device=device), (first, rate), (second, rate))
    wanted = NEGATIVE_SAMPLE_RATE * per_row
    per_epoch = max(1, int(np.ceil(float(wanted.mean()))))
    push_scale = wanted / per_epoch
    generator = torch.Generator(device=device).manual_seed(int(seed))
    num_slots = num_rows * per_epoch
    pool = torch.randint(0, num_rows, (2 * num_slots,), generator=generator, device=device)
    offsets = torch.randint(0, num_slots + 1, (epochs,), generator=generator, device=device).tolist()
    a, b = CURVE_A, CURVE_B
    dx, dy, d2, pull = (torch.empty(first.numel(), device=device) for _ in range(4))
    nx, ny, n2, push = (torch.empty((num_rows, per_epoch), device=device) for _ in range(4))
    for epoch in range(epochs):
        alpha = 1.0 - epoch / epochs
        # attraction: -2ab d^{2(b-1)} / (1 + a d^{2b}) (y_i - y_j), clipped, weighted by 2 r_ij
        torch.sub(px.index_select(0, first), px.index_select(0, second), out=dx)
        torch.sub(py.index_select(0, first), py.index_select(0, second), out=dy)
        torch.mul(dx, dx, out=d2).addcmul_(dy, dy).clamp_min_(1e-12)  # dx = dy = 0 -> gradient 0
        torch.log(d2, out=pull).mul_(b).exp_()  # d^{2b}
        d2.mul_(pull.mul_(a).add_(1.0))  # d^2 (1 + a d^{2b})
        torch.div(pull.sub_(1.0), d2, out=pull).mul_(-2.0 * b)  # -2ab d^{2b} / (d^2 (1 + a d^{2b}))
        dx.mul_(pull).clamp_(-GRADIENT_CLIP, GRADIENT_CLIP).mul_(pull_scale)
        dy.mul_(pull).clamp_(-GRADIENT_CLIP, GRADIENT_CLIP).mul_(pull_scale)
        # repulsion: 2b / ((0.001 + d^2) (1 + a d^{2b})) (y_i - y_k), clipped (0 when d = 0)
        negative = pool[offsets[epoch] : offsets[epoch] + num_slots]
        torch.sub(px[:, None], px.index_select(0, negative).view(num_rows, per_epoch), out=nx)
        torch.sub(py[:, None], py.index_select(0, negative).view(num_rows, per_epoch), out=ny)
        torch.mul(nx, nx, out=n2).addcmul_(ny, ny)
        torch.log(n2, out=push).mul_(b).exp_().mul_(a).add_(1.0).mul_(n2.add_(0.001))
        push.reciprocal_().mul_(2.0 * b)
        rx = nx.mul_(push).clamp_(-GRADIENT_CLIP, GRADIENT_CLIP).sum(dim=1).mul_(push_scale)
        ry = ny.mul_(push).clamp_(-GRADIENT_CLIP, GRADIENT_CLIP).sum(dim=1).mul_(push_scale)
        px.add_(_row_sums(rx, (first, dx), (second, -dx)), alpha=alpha)
        py.add_(_row_sums(ry, (first, dy), (second, -dy)), alpha=alpha)
    return torch.stack([px, py], dim=1)


def _row_sums(out: torch.Tensor, *parts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``out`` plus, for each ``(index, values)`` part, ``values`` summed at ``index``, in a fixed order.

    CPU ``index_add_`` adds sequentially; on other devices the values are summed as int64 in
    ``2^-FIXED_POINT_BITS`` fixed point, where atomic additions commute exactly.
    """
    if out.device.type != "cpu":
        return _fixed_point_row_sums(out, *parts)
    for index, values in parts:
        out.index_add_(0, index, values)
    return out


def _fixed_point_row_sums(out: torch.Tensor, *parts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """:func:`_row_sums` through int64 ``index_add_`` of the values rounded to ``2^-FIXED_POINT_BITS``."""
    scale = float(2**FIXED_POINT_BITS)
    fixed = torch.zeros(out.shape, dtype=torch.int64, device=out.device)
    for index, values in parts:
        fixed.index_add_(0, index, torch.round(values * scale).long())
    return out.add_(fixed.double().div_(scale).to(out.dtype))


def _graph_fit(
    unit: np.ndarray, indices: np.ndarray, similarities: np.ndarray, seed: int, device: str | torch.device | None
) -> np.ndarray:
    """Graph layout of ``unit`` rows on their given cosine kNN graph (self excluded): float64 ``(N, 2)``."""
    where = torch.device(device) if device is not None else torch.device("cpu")
    present = indices >= 0
    sims = np.where(present, np.nan_to_num(similarities, nan=-1.0), np.nan)
    distances = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, 4.0))
    with _cpu_threads(where, LAYOUT_CPU_THREADS):
        head, tail, weight = fuzzy_graph(indices, distances, device=where)
        generator = torch.Generator(device=where).manual_seed(int(seed))
        init = _pca_init(torch.from_numpy(unit).to(where), generator)
        layout = graph_layout(head, tail, weight, init, seed=seed + 1)
    return layout.cpu().numpy().astype(np.float64)


def _pca_init(unit: torch.Tensor, generator: torch.Generator, iterations: int = 8) -> torch.Tensor:
    """``(N, 2)`` PCA coordinates of ``unit`` scaled to ``[0, INIT_RANGE]`` per axis, plus ``1e-4`` noise.

    umap-learn's ``init="pca"`` (scaled as its ``noisy_scale_coords`` and ``simplicial_set_embedding``
    do). The top two directions come from ``iterations`` rounds of subspace iteration on 8 random
    directions (Halko, Martinsson and Tropp, "Finding structure with randomness", 2011), so the cost
    is ``O(N D)`` per round whatever ``D``.
    """
    centred = unit - unit.mean(dim=0)
    width = min(8, centred.shape[1])
    basis = torch.randn((centred.shape[1], width), generator=generator, device=unit.device)
    for _ in range(iterations):
        basis = torch.linalg.qr(centred.T @ (centred @ basis)).Q
    right = torch.linalg.svd(centred @ basis, full_matrices=False).Vh
    coords = torch.zeros((unit.shape[0], 2), device=unit.device)
    components = min(2, width)
    coords[:, :components] = centred @ (basis @ right[:components].T)
    low, high = coords.amin(dim=0), coords.amax(dim=0)
    coords = INIT_RANGE * (coords - low) / torch.where(high > low, high - low, torch.ones_like(high))
    return coords + 1e-4 * torch.randn(coords.shape, generator=generator, device=unit.device)


@contextmanager
def _cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Run torch's CPU ops of the block with at most ``threads`` threads (restored after)."""
    before = torch.get_num_threads()
    if device.type != "cpu" or before <= threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _umap_fit(unit: np.ndarray, indices: np.ndarray, similarities: np.ndarray, seed: int | None) -> np.ndarray:
    """UMAP of ``unit`` rows on their given kNN graph (self excluded; self is prepended here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap 0.5 warns (ImportWarning) that TensorFlow is missing
        try:
            import umap
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(UMAP_MISSING, name="umap") from error

    num_samples = unit.shape[0]
    rows = np.arange(num_samples)[:, None]
    knn_indices = np.concatenate([rows, np.where(indices >= 0, indices, rows)], axis=1).astype(np.int32)
    sims = np.where(indices >= 0, np.nan_to_num(similarities, nan=-1.0), 1.0)
    distances = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, 4.0))
    knn_distances = np.concatenate([np.zeros((num_samples, 1)), distances], axis=1).astype(np.float32)
    reducer = umap.UMAP(
        n_components=2, n_neighbors=knn_indices.shape[1], metric="euclidean", n_epochs=GRAPH_EPOCHS,
        random_state=seed, precomputed_knn=(knn_indices, knn_distances, None), verbose=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; disconnected-graph notes
        return np.asarray(reducer.fit_transform(unit), dtype=np.float64)


def propagate_positions(
    unit: np.ndarray,
    fit_rows: np.ndarray,
    fitted: np.ndarray,
    neighbor_indices: np.ndarray,
    similarities: np.ndarray,
) -> np.ndarray:
    """Place every row from the positions of the ``fit_rows`` by propagation over the kNN graph.

    Round after round, every unplaced row with at least one placed neighbour gets the mean of their
    positions weighted by ``max(similarity, 0) + 1e-6``. Rows still unplaced after
    :data:`MAX_PROPAGATION_ROUNDS` (no path to the subsample) get the least-squares linear map
    from ``unit`` (with intercept) to ``fitted``.

    Returns:
        ``(N, 2)`` float64, equal to ``fitted`` on ``fit_rows``.
    """
    num_samples = unit.shape[0]
    positions = np.zeros((num_samples, 2))
    positions[fit_rows] = fitted
    placed = np.zeros(num_samples, dtype=bool)
    placed[fit_rows] = True
    present = neighbor_indices >= 0
    safe = np.where(present, neighbor_indices, 0)
    weights = np.where(present, np.clip(np.nan_to_num(similarities, nan=0.0), 0.0, None) + 1e-6, 0.0)
    for _ in range(MAX_PROPAGATION_ROUNDS):
        todo = np.flatnonzero(~placed)
        if todo.size == 0:
            break
        neighbours = safe[todo]
        w = weights[todo] * placed[neighbours]
        total = w.sum(axis=1)
        ready = total > 0
        if not ready.any():
            break
        rows = todo[ready]
        positions[rows] = (w[ready, :, None] * positions[neighbours[ready]]).sum(axis=1) / total[ready, None]
        placed[rows] = True
    if not placed.all():
        design = np.hstack([unit[fit_rows], np.ones((fit_rows.size, 1), dtype=unit.dtype)])
        coefficients, *_ = np.linalg.lstsq(design, fitted, rcond=None)
        rest = np.flatnonzero(~placed)
        positions[rest] = np.hstack([unit[rest], np.ones((rest.size, 1), dtype=unit.dtype)]) @ coefficients
    return positions
