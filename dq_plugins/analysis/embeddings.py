"""End-of-fit analysis of one split's embeddings: kNN graph -> per-sample columns and a summary.

Pure host code (plus torch for the kNN search, on the device of the embeddings): no framework, no
MLflow. The scores come from :mod:`dq_plugins.scores` (``neighbors``, ``outliers``,
``duplicates``, ``clusters``, ``projection``); this module computes the kNN graph once, passes
it to each of them and times every stage.

The result's ``samples`` frame is indexed like the inputs (row ``i`` = ``ids[i]``) and holds
``sample_id`` and :data:`EMBEDDING_COLUMNS`, to be merged into ``dq/samples.parquet`` on
``(split, sample_id)`` (:func:`merge_embedding_columns`). The label-dependent parts are optional:
without ``labels`` (multi-label and token tasks) only the label-free columns are computed, plus
``neighbor_disagreement`` over label sets when ``label_sets`` are given (:func:`embedding_columns`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from dq_plugins.scores.clusters import class_overlap, cluster_embeddings, cluster_summary
from dq_plugins.schema import (
    EMBEDDING_COLUMNS, LABEL_FREE_EMBEDDING_COLUMNS, MULTILABEL_EMBEDDING_COLUMNS, TRAIN, summary_metric_key,
)
from dq_plugins.scores.duplicates import (
    NEAR_DUPLICATE_SIMILARITY,
    conflicting_duplicate_score,
    conflicting_duplicates,
    near_duplicate_of,
    near_duplicate_score,
)
from dq_plugins.scores.neighbors import (
    KnnGraph, KnnMethod, knn_cosine, needs_reduction, neighbor_label_disagreement, neighbor_label_set_disagreement,
    reduced_rows, resolve_method, unit_rows,
)
from dq_plugins.scores.outliers import is_outlier, outlier_score
from dq_plugins.scores.projection import DEFAULT_MAX_FIT, ProjectionMethod, project_2d, resolve_projection

DEFAULT_K = 10
"""Neighbours per sample: cleanlab's default for outliers and SimiFeat's order of magnitude."""


@dataclass
class EmbeddingSummary:
    """What the embedding analysis of one split found.

    Attributes:
        num_samples: rows analysed.
        k: neighbours per sample actually used (``min(k, N - 1)``).
        knn_method: ``"exact"``, ``"ivf"`` or ``"ann"``; ``projection_method``: ``"graph"``, ``"umap"``
            or ``"pca"``.
        num_near_duplicates: rows with ``near_duplicate_of != -1``.
        num_conflicting_duplicates: rows in a near-duplicate pair whose labels differ (``None``: no
            ``labels`` were given).
        num_outliers: rows flagged by the IQR rule of ``scores.outliers.is_outlier``.
        num_clusters: distinct cluster ids.
        class_overlap: ``scores.clusters.class_overlap`` table (class_a, class_b,
            boundary_samples, share); empty without ``labels``.
        clusters: ``scores.clusters.cluster_summary`` table, least pure cluster first.
        timings: seconds per stage (``normalise``, ``knn``, ``scores``, ``clusters``,
            ``projection``, ``tables``); ``knn`` is the search's own time when the graph was given.
        knn_ranks: processes the kNN search was split over (1: this one alone; more when a
            ``torch.distributed`` job searched it, :mod:`dq_plugins.analysis.distributed`).
    """

    num_samples: int
    k: int
    knn_method: str
    projection_method: str
    num_near_duplicates: int
    num_conflicting_duplicates: int | None
    num_outliers: int
    num_clusters: int
    class_overlap: pd.DataFrame
    clusters: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    knn_ranks: int = 1

    def metrics(self, split: str = TRAIN) -> dict[str, float]:
        """``dq.*`` metrics of this summary (keys by :func:`dq_plugins.schema.summary_metric_key`);
        ``num_conflicting_duplicates`` only when labels were compared."""
        metrics = {
            summary_metric_key("num_near_duplicates", split): float(self.num_near_duplicates),
            summary_metric_key("num_conflicting_duplicates", split): float(self.num_conflicting_duplicates or 0),
            summary_metric_key("num_outliers", split): float(self.num_outliers),
            summary_metric_key("num_clusters", split): float(self.num_clusters),
            summary_metric_key("embedding_analysis_seconds", split): float(sum(self.timings.values())),
            summary_metric_key("knn_ranks", split): float(self.knn_ranks),
        }
        if self.num_conflicting_duplicates is None:
            del metrics[summary_metric_key("num_conflicting_duplicates", split)]
        return metrics


class EmbeddingAnalysis(NamedTuple):
    """``(samples, summary)``: the per-sample frame and the :class:`EmbeddingSummary`."""

    samples: pd.DataFrame
    summary: EmbeddingSummary


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


PROJECTION_ENV = "DQ_PLUGINS_PROJECTION"
"""Environment variable naming the 2D map's method when the callback option (or, for ``dq analyze``, the fitted
run's ``dq.projection`` tag) does not."""


def map_projection(chosen: str | None) -> str:
    """The 2D map's method: ``chosen`` (the callback's ``projection=``, or the method a run was fitted with), else
    ``$DQ_PLUGINS_PROJECTION``, else ``"auto"``. One rule for the end of fit and ``dq analyze``."""
    return chosen or os.environ.get(PROJECTION_ENV) or "auto"


def searched_rows(
    embeddings: np.ndarray | torch.Tensor, seed: int = 0, timings: dict[str, float] | None = None
) -> np.ndarray | torch.Tensor:
    """The ``(N, D')`` rows the kNN search works on: ``embeddings`` as given, or for a huge ``N x D``
    (:func:`~dq_plugins.scores.neighbors.needs_reduction`) their random projection
    (:func:`~dq_plugins.scores.neighbors.reduced_rows` from ``seed``: every rank of a job and the analysis draw the
    same matrix), its seconds added to ``timings["reduce"]`` when ``timings`` is given."""
    if not needs_reduction(*embeddings.shape):
        return embeddings
    with _timed({} if timings is None else timings, "reduce"):
        return reduced_rows(embeddings, seed=seed)


def embedding_columns(labelled: bool = True, label_sets: bool = False) -> tuple[str, ...]:
    """The columns :func:`analyze_embeddings` computes: every one of :data:`EMBEDDING_COLUMNS` with
    ``labels``; else the label-free ones, with ``neighbor_disagreement`` when ``label_sets`` are given."""
    if labelled:
        return EMBEDDING_COLUMNS
    return MULTILABEL_EMBEDDING_COLUMNS if label_sets else LABEL_FREE_EMBEDDING_COLUMNS


def _check_inputs(
    embeddings: torch.Tensor | np.ndarray, ids: np.ndarray, labels: np.ndarray | None, pred_probs: np.ndarray | None,
    label_sets: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    shape = tuple(embeddings.shape)
    if len(shape) != 2:
        raise ValueError(f"Expected argument `embeddings` to be 2-D of shape (N, D) but got shape {shape}.")
    num_samples = shape[0]
    ids = np.asarray(ids)
    if labels is not None and label_sets is not None:
        raise ValueError("Expected `labels` (one class per sample) or `label_sets` (multi-hot rows), not both.")
    if label_sets is not None and (np.ndim(label_sets) != 2 or np.shape(label_sets)[0] != num_samples):
        raise ValueError(
            f"Expected argument `label_sets` to have shape (N, C) with N = {num_samples} but got {np.shape(label_sets)}."
        )
    checked = [("ids", ids)] if labels is None else [("ids", ids), ("labels", np.asarray(labels))]
    for name, values in checked:
        if values.shape != (num_samples,) or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"Expected argument `{name}` to be a 1-D integer array of length N = {num_samples}"
                f" (rows of `embeddings`) but got shape {values.shape} and dtype {values.dtype}."
            )
    if pred_probs is not None and (np.ndim(pred_probs) != 2 or np.shape(pred_probs)[0] != num_samples):
        raise ValueError(
            f"Expected argument `pred_probs` to have shape (N, C) with N = {num_samples} but got"
            f" {np.shape(pred_probs)}."
        )
    return ids.astype(np.int64, copy=False), None if labels is None else np.asarray(labels).astype(np.int64, copy=False)


def knn_settings(
    num_samples: int, k: int = DEFAULT_K, knn_method: KnnMethod = "auto", device: str | torch.device = "cpu"
) -> tuple[int, str]:
    """``(k, method)`` of the kNN search :func:`analyze_embeddings` runs on ``num_samples >= 2`` rows searched on
    ``device``: ``k`` clipped to ``N - 1``, the method resolved by ``scores.neighbors.resolve_method``."""
    return int(min(k, num_samples - 1)), resolve_method(knn_method, num_samples, torch.device(device))


def warm_up(num_samples: int, *, projection: ProjectionMethod = "auto", device: str | torch.device = "cpu") -> float:
    """Compile the numba kernels that :func:`analyze_embeddings` of ``num_samples`` rows will use.

    pynndescent (``knn_method="ann"``, never chosen by ``"auto"``) and umap-learn (``projection="umap"``)
    compile their kernels at their first call in a process, which can take longer than the analysis
    itself (``benchmarks/RESULTS.md``); the default methods need no compilation. Calling this on tiny data in a background thread while the
    model trains (``threading.Thread(target=warm_up, args=(n,), daemon=True).start()``) moves that
    cost out of the end of fit. Returns the seconds spent.
    """
    start = time.perf_counter()
    tiny = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    if resolve_method("auto", num_samples, torch.device(device)) == "ann":
        knn_cosine(tiny, 10, method="ann")
    if resolve_projection(projection) == "umap":
        project_2d(tiny, method="umap")
    return time.perf_counter() - start


def _empty_frame(ids: np.ndarray, columns: tuple[str, ...]) -> pd.DataFrame:
    num_samples = ids.size
    values = {
        "outlier_score": np.full(num_samples, np.nan),
        "is_outlier": np.zeros(num_samples, dtype=bool),
        "near_duplicate_of": np.full(num_samples, -1, dtype=np.int64),
        "is_near_duplicate": np.zeros(num_samples, dtype=bool),
        "near_duplicate_score": np.full(num_samples, np.nan),
        "conflicting_duplicate": np.zeros(num_samples, dtype=bool),
        "conflicting_duplicate_score": np.full(num_samples, np.nan),
        "neighbor_disagreement": np.full(num_samples, np.nan),
        "cluster": np.zeros(num_samples, dtype=np.int64),
        "x2d": np.zeros(num_samples, dtype=np.float32),
        "y2d": np.zeros(num_samples, dtype=np.float32),
    }
    return pd.DataFrame({"sample_id": ids, **{column: values[column] for column in columns}})


EMBEDDING_FILL: dict[str, object] = {
    "outlier_score": np.nan, "is_outlier": False, "near_duplicate_of": -1, "is_near_duplicate": False,
    "near_duplicate_score": np.nan, "conflicting_duplicate": False, "conflicting_duplicate_score": np.nan,
    "neighbor_disagreement": np.nan, "cluster": -1, "x2d": np.nan, "y2d": np.nan,
}
"""Value of each embedding column on a row of the per-sample table without an embedding."""


def merge_embedding_columns(frame: pd.DataFrame, embedding_samples: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (one split's rows, with ``sample_id``) with the embedding columns of ``embedding_samples``
    (an :class:`EmbeddingAnalysis` ``samples``) appended; rows without an embedding get :data:`EMBEDDING_FILL`.
    Integer and bool columns keep their dtypes."""
    columns = [c for c in EMBEDDING_COLUMNS if c in embedding_samples.columns]
    merged = frame.merge(embedding_samples[["sample_id", *columns]], on="sample_id", how="left")
    for column in columns:
        merged[column] = merged[column].fillna(EMBEDDING_FILL[column])
        if column in ("near_duplicate_of", "cluster"):
            merged[column] = merged[column].astype(np.int64)
        elif column in ("is_outlier", "is_near_duplicate", "conflicting_duplicate"):
            merged[column] = merged[column].astype(bool)
    return merged


def analyze_embeddings(
    embeddings: torch.Tensor | np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    label_sets: np.ndarray | None = None,
    k: int = DEFAULT_K,
    pred_probs: np.ndarray | None = None,
    is_label_issue: np.ndarray | None = None,
    duplicate_threshold: float = NEAR_DUPLICATE_SIMILARITY,
    n_clusters: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    knn_method: KnnMethod = "auto",
    projection: ProjectionMethod = "auto",
    max_fit: int = DEFAULT_MAX_FIT,
    neighbors: KnnGraph | None = None,
) -> EmbeddingAnalysis:
    """Every embedding score of one split, from one kNN graph.

    Args:
        embeddings: ``(N, D)`` fp16 / fp32 array or tensor; a tensor on a GPU is searched there
            (exact kNN), the rest runs on CPU from one normalised fp32 host copy.
        ids: ``(N,)`` unique non-negative sample ids, row ``i`` of ``embeddings`` is ``ids[i]``.
        labels: ``(N,)`` integer given labels; ``None`` (a task without one class per sample): no
            conflicting duplicates, no class-overlap table, and ``neighbor_disagreement`` only from
            ``label_sets``.
        label_sets: ``(N, C)`` multi-hot given labels (multi-label), instead of ``labels``:
            ``neighbor_disagreement`` is ``scores.neighbors.neighbor_label_set_disagreement``.
        k: neighbours per sample, clipped to ``N - 1``.
        pred_probs: optional ``(N, C)`` probabilities for the class-overlap table.
        is_label_issue: optional ``(N,)`` bool (confident learning) for the cluster table.
        duplicate_threshold: cosine similarity of a near-duplicate.
        n_clusters: default ``scores.clusters.default_num_clusters(N)``.
        seed: random state of the ANN search, k-means and the 2-D map.
        device: where the exact kNN runs (default: the device of ``embeddings``).
        knn_method: ``"auto"``, ``"exact"``, ``"ivf"`` or ``"ann"`` (``scores.neighbors.knn_cosine``).
        projection: ``"auto"``, ``"graph"``, ``"umap"`` or ``"pca"`` (``scores.projection.project_2d``).
        max_fit: rows the 2-D map is fitted on.
        neighbors: the kNN graph of these rows searched beforehand with this ``k`` (clipped) and method
            (e.g. by every rank of a job, :func:`dq_plugins.analysis.distributed.distributed_knn`), used instead
            of a search; ``None``: search here.

    Returns:
        :class:`EmbeddingAnalysis` ``(samples, summary)``; ``samples`` has a RangeIndex aligned
        with the inputs and the columns ``sample_id`` + :func:`embedding_columns` (all of
        :data:`EMBEDDING_COLUMNS` with ``labels``). With fewer than 2 rows nothing can be compared:
        scores are NaN, no flag is set, cluster 0, (0, 0).

    Raises:
        ValueError: for inputs of mismatched shapes, or ``neighbors`` of another shape or method than the
            search would have.
    """
    ids, labels = _check_inputs(embeddings, ids, labels, pred_probs, label_sets)
    columns = embedding_columns(labels is not None, label_sets is not None)
    num_samples = ids.size
    timings: dict[str, float] = {}
    overlap_labels = labels if labels is not None else np.zeros(num_samples, dtype=np.int64)
    if num_samples < 2:
        summary = EmbeddingSummary(
            num_samples, 0, "exact", "pca", 0, 0 if labels is not None else None, 0, int(num_samples > 0),
            class_overlap(np.empty((num_samples, 0), dtype=np.int64), overlap_labels),
            cluster_summary(np.zeros(num_samples), labels),
            timings,
        )
        return EmbeddingAnalysis(_empty_frame(ids, columns), summary)
    embeddings = searched_rows(embeddings, seed, timings)  # a huge N x D: the analysis works on a projection
    with _timed(timings, "normalise"):
        if isinstance(embeddings, torch.Tensor):
            tensor = embeddings
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(embeddings))
        search_device = torch.device(device) if device is not None else tensor.device
        k, method = knn_settings(num_samples, k, knn_method, search_device)
        if neighbors is not None and (neighbors.indices.shape != (num_samples, k) or neighbors.method != method):
            raise ValueError(
                f"Expected argument `neighbors` to be a {method!r} graph of shape ({num_samples}, {k}) but got a"
                f" {neighbors.method!r} graph of shape {neighbors.indices.shape}. HINT: search it with"
                " `knn_settings(N)`'s k and method."
            )
        unit_device = unit_rows(tensor, device=search_device if method == "exact" and neighbors is None else "cpu")
        unit = unit_device.cpu().numpy() if unit_device.device.type != "cpu" else unit_device.numpy()
    if neighbors is None:
        with _timed(timings, "knn"):
            where = search_device if method == "exact" else "cpu"
            indices, sims = knn_cosine(unit_device, k, device=where, method=method, seed=seed)
    else:
        indices, sims = neighbors.indices, neighbors.similarities
        timings["knn"] = neighbors.seconds
    del unit_device
    with _timed(timings, "scores"):
        outliers = outlier_score(sims)
        outlier_flags = is_outlier(sims)
        duplicate_of = near_duplicate_of(indices, sims, ids, duplicate_threshold)
        nearest = near_duplicate_score(sims)
        disagreement = conflicting = conflict_score = None
        if labels is not None:
            disagreement = neighbor_label_disagreement(indices, labels, sims)
            conflicting = conflicting_duplicates(duplicate_of, labels, ids)
            conflict_score = conflicting_duplicate_score(duplicate_of, nearest, labels, ids)
        elif label_sets is not None:
            disagreement = neighbor_label_set_disagreement(indices, label_sets, sims)
    with _timed(timings, "clusters"):
        cluster = cluster_embeddings(unit, n_clusters=n_clusters, seed=seed)
    with _timed(timings, "projection"):
        projection_method = resolve_projection(projection)
        coords = project_2d(
            unit, seed=seed, max_fit=max_fit, method=projection_method, neighbor_indices=indices, similarities=sims
        )
    with _timed(timings, "tables"):
        if labels is not None:
            overlap = class_overlap(indices, labels, pred_probs)
        else:
            overlap = class_overlap(np.empty((num_samples, 0), dtype=np.int64), overlap_labels)
        clusters = cluster_summary(
            cluster, labels, neighbor_disagreement=disagreement, is_outlier=outlier_flags, is_label_issue=is_label_issue
        )
    values = {
        "outlier_score": outliers,
        "is_outlier": outlier_flags,
        "near_duplicate_of": duplicate_of,
        "is_near_duplicate": duplicate_of >= 0,
        "near_duplicate_score": nearest,
        "conflicting_duplicate": conflicting,
        "conflicting_duplicate_score": conflict_score,
        "neighbor_disagreement": disagreement,
        "cluster": cluster,
        "x2d": coords[:, 0],
        "y2d": coords[:, 1],
    }
    samples = pd.DataFrame({"sample_id": ids, **{column: values[column] for column in columns}})
    summary = EmbeddingSummary(
        num_samples=num_samples,
        k=k,
        knn_method=method,
        projection_method=projection_method,
        num_near_duplicates=int((duplicate_of >= 0).sum()),
        num_conflicting_duplicates=int(conflicting.sum()) if conflicting is not None else None,
        num_outliers=int(outlier_flags.sum()),
        num_clusters=int(np.unique(cluster).size),
        class_overlap=overlap,
        clusters=clusters,
        timings=timings,
        knn_ranks=1 if neighbors is None else neighbors.ranks,
    )
    return EmbeddingAnalysis(samples, summary)
