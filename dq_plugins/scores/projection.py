"""2-D coordinates of the embeddings for the embedding map: UMAP when installed, PCA otherwise.

References: McInnes, Healy and Melville, "UMAP: Uniform Manifold Approximation and Projection for
Dimension Reduction", 2018 (https://arxiv.org/abs/1802.03426), package ``umap-learn``; PCA from
scikit-learn.

Large N. Both methods are fitted on a random subsample of at most ``max_fit`` rows:

- PCA then maps every row with its linear ``transform`` (chunk by chunk).
- UMAP places the other rows by propagation over the kNN graph of all rows (the graph the other
  embedding scores use, computed once by ``knn_cosine``): a row gets the similarity-weighted mean
  position of its neighbours that are already placed, round after round, which is the
  initialisation ``UMAP.transform`` uses, without its per-point optimisation. ``UMAP.transform``
  itself is not used: after a numba compilation of several minutes it takes about 1 s per 1000
  rows on 2 CPU cores (17 minutes for 1M), where the propagation takes seconds. Rows the graph
  does not connect to the subsample get a least-squares linear map of the embedding instead.

Cost on 2 CPU cores shared with other jobs (D = 384, ``benchmarks/RESULTS.md``): 27 s for 10k
rows (UMAP on all of them, on the kNN graph given) and 51 s for 100k (exact 15-NN graph of the
20k subsample, UMAP on it, propagation), plus umap-learn's numba compilation at the first call of a
process (about 55 s on those cores). PCA: seconds.

UMAP runs on the subsample's exact neighbours passed as ``precomputed_knn``, with euclidean
distances between L2-normalised rows (``sqrt(2 - 2 cos)``, the same order as cosine), so it does
not run its own NN-descent. With a ``seed`` (default) UMAP is deterministic and single-threaded;
``seed=None`` lets it use every core but the result changes between runs.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

ProjectionMethod = Literal["auto", "umap", "pca"]

PROJECTION_METHODS: tuple[str, ...] = ("auto", "umap", "pca")

DEFAULT_MAX_FIT = 20_000
"""Rows the 2-D map is fitted on; the others are placed (module docstring)."""

UMAP_NEIGHBORS = 15
"""``n_neighbors`` of UMAP (its default) when the subsample's own graph is computed."""

UMAP_EPOCHS = 200
"""Optimisation epochs of UMAP (its default above 10k rows; 500 below, 2.5x slower)."""

UMAP_MIN_SAMPLES = 32
"""Below this many rows UMAP's spectral layout is unreliable: PCA is used."""

MAX_PROPAGATION_ROUNDS = 50


def umap_available() -> bool:
    """True when ``umap-learn`` can be imported (it is imported lazily, on first use)."""
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def resolve_projection(method: str) -> str:
    """``"umap"`` or ``"pca"`` for ``method`` (``"auto"``: UMAP when installed)."""
    if method not in PROJECTION_METHODS:
        raise ValueError(
            f"Expected argument `method` to be one of {list(PROJECTION_METHODS)} but got {method!r}."
        )
    if method == "auto":
        return "umap" if umap_available() else "pca"
    return method


def project_2d(
    embeddings: np.ndarray,
    seed: int | None = 0,
    max_fit: int = DEFAULT_MAX_FIT,
    *,
    method: ProjectionMethod = "auto",
    neighbor_indices: np.ndarray | None = None,
    similarities: np.ndarray | None = None,
) -> np.ndarray:
    """``(N, D)`` embeddings -> ``(N, 2)`` float32 coordinates for a map.

    Args:
        embeddings: ``(N, D)`` float array (fp16 is upcast chunk by chunk).
        seed: random state of the subsample and of UMAP; ``None`` = nondeterministic (UMAP then
            uses all cores).
        max_fit: at most this many rows are used to fit the projection.
        method: ``"umap"``, ``"pca"`` or ``"auto"`` (UMAP when ``umap-learn`` is installed).
        neighbor_indices, similarities: optional ``(N, k)`` kNN graph of all rows from
            ``knn_cosine`` (nearest first, self excluded). With UMAP it places the rows outside the
            subsample (computed here when missing and ``N > max_fit``), and it is UMAP's graph when
            ``N <= max_fit``.

    Returns:
        ``(N, 2)`` float32, deterministic for an integer ``seed``. Fewer than
        :data:`UMAP_MIN_SAMPLES` rows always use PCA; one row maps to ``(0, 0)``.
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
    if chosen == "pca" or fit_rows.size < UMAP_MIN_SAMPLES:
        return _pca_2d(unit, fit_rows, seed)
    if neighbor_indices is not None and (similarities is None or np.shape(neighbor_indices) != np.shape(similarities)):
        raise ValueError("Expected `similarities` of the same shape as `neighbor_indices` when the graph is given.")
    if fit_rows.size == num_samples and neighbor_indices is not None:
        fitted = _umap_fit(unit, np.asarray(neighbor_indices), np.asarray(similarities), seed)
        return fitted.astype(np.float32)
    from dq_plugins.scores.neighbors import knn_cosine

    sub_k = min(UMAP_NEIGHBORS - 1, fit_rows.size - 1)
    sub_indices, sub_sims = knn_cosine(unit[fit_rows], sub_k, method="exact")
    fitted = _umap_fit(unit[fit_rows], sub_indices, sub_sims, seed)
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


def _umap_fit(unit: np.ndarray, indices: np.ndarray, similarities: np.ndarray, seed: int | None) -> np.ndarray:
    """UMAP of ``unit`` rows on their given kNN graph (self excluded; self is prepended here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap 0.5 warns (ImportWarning) that TensorFlow is missing
        import umap

    num_samples = unit.shape[0]
    rows = np.arange(num_samples)[:, None]
    knn_indices = np.concatenate([rows, np.where(indices >= 0, indices, rows)], axis=1).astype(np.int32)
    sims = np.where(indices >= 0, np.nan_to_num(similarities, nan=-1.0), 1.0)
    distances = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, 4.0))
    knn_distances = np.concatenate([np.zeros((num_samples, 1)), distances], axis=1).astype(np.float32)
    reducer = umap.UMAP(
        n_components=2, n_neighbors=knn_indices.shape[1], metric="euclidean", n_epochs=UMAP_EPOCHS,
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
