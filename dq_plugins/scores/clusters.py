"""Semantic clusters of the embeddings, a per-cluster summary, and overlapping class pairs.

- :func:`cluster_embeddings`: spherical-style k-means (k-means on L2-normalised rows, so squared
  euclidean distance is ``2 - 2 cos``) with scikit-learn's ``MiniBatchKMeans`` (Sculley, "Web-scale
  k-means clustering", WWW 2010), fitted on at most :data:`KMEANS_FIT_SAMPLE` random rows; above
  that the other rows go to their nearest centre in blocks (one ``O(N K D)`` pass, linear in ``N``;
  timings: ``benchmarks/RESULTS.md``).
- :func:`cluster_summary`: one row per cluster (size, majority label, purity, mean issue
  signals), to find clusters that are mostly wrong and decide to relabel or drop them whole.
- :func:`class_overlap`: pairs of classes sharing many boundary samples, from the kNN graph and,
  when given, the model's probabilities; the neighbour-based counterpart of cleanlab's
  ``cleanlab.dataset.find_overlapping_classes`` (Northcutt et al. 2021), which uses the
  confident joint only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAX_CLUSTERS = 100
"""Cap of the default number of clusters: more is more than a person reviews."""

MIN_CLUSTERS = 2

KMEANS_BATCH_SIZE = 4096
"""Mini-batch size: large enough for stable centres, small enough for the cache."""

KMEANS_INIT_SAMPLE = 20_000
"""Rows the k-means++ seeding draws from (a random subsample for larger N)."""

KMEANS_FIT_SAMPLE = 200_000
"""MiniBatchKMeans is fitted on at most this many random rows (2000 per centre at the cap of 100
clusters, well above the ~256 per centre faiss trains on); the rest are assigned to the nearest centre."""

ASSIGN_BLOCK_ROWS = 65_536
"""Rows per block when assigning rows outside the fitted subsample to their nearest centre."""

BOUNDARY_MIN_EVIDENCE = 0.3
"""A sample is on the boundary of its class ``a`` and class ``b`` when the evidence for ``b``
(the share of its neighbours labelled ``b``, averaged with the predicted probability of ``b`` when
``pred_probs`` is given) is at least this: with ``k = 10``, 3 neighbours of the other class."""

OVERLAP_COLUMNS: tuple[str, ...] = ("class_a", "class_b", "boundary_samples", "share")
CLUSTER_COLUMNS: tuple[str, ...] = (
    "cluster", "size", "majority_label", "purity", "mean_neighbor_disagreement", "outlier_share",
    "label_issue_share",
)


def default_num_clusters(num_samples: int) -> int:
    """``round(sqrt(N / 2))`` clipped to ``[MIN_CLUSTERS, MAX_CLUSTERS]`` (and to ``N``).

    The square-root rule of thumb (Mardia, Kent and Bibby, Multivariate Analysis, 1979): 7 clusters
    for 100 samples, 71 for 10k, capped at 100 from 20k samples on.
    """
    guess = int(round(np.sqrt(num_samples / 2.0)))
    return int(min(max(guess, MIN_CLUSTERS), MAX_CLUSTERS, max(num_samples, 1)))


def cluster_embeddings(
    embeddings: np.ndarray, n_clusters: int | None = None, seed: int = 0
) -> np.ndarray:
    """Cluster ``(N, D)`` embeddings with MiniBatchKMeans on L2-normalised rows.

    Args:
        embeddings: ``(N, D)`` float array (fp16 is upcast to fp32 chunk by chunk; an fp32 array
            of unit rows is used without a copy).
        n_clusters: number of clusters; default :func:`default_num_clusters`.
        seed: random state of the initialisation and the mini-batches.

    Returns:
        ``(N,)`` int64 cluster ids in ``0 .. n_clusters-1``. Deterministic for a given seed.
    """
    from sklearn.cluster import MiniBatchKMeans

    from dq_plugins.scores.neighbors import unit_rows

    unit = unit_rows(np.asarray(embeddings), device="cpu").numpy()
    num_samples = unit.shape[0]
    if num_samples == 0:
        return np.empty(0, dtype=np.int64)
    clusters = default_num_clusters(num_samples) if n_clusters is None else n_clusters
    if not isinstance(clusters, (int, np.integer)) or not 1 <= clusters <= num_samples:
        raise ValueError(
            f"Expected argument `n_clusters` to be an integer in 1 .. N = {num_samples} but got {n_clusters!r}."
        )
    if clusters == 1:
        return np.zeros(num_samples, dtype=np.int64)
    rng = np.random.default_rng(seed)
    sample = unit[np.sort(rng.choice(num_samples, min(num_samples, KMEANS_INIT_SAMPLE), replace=False))]
    model = MiniBatchKMeans(
        n_clusters=int(clusters), init=kmeans_plus_plus(sample, int(clusters), rng), n_init=1,
        batch_size=KMEANS_BATCH_SIZE, random_state=seed, max_no_improvement=10,
    )
    if num_samples <= KMEANS_FIT_SAMPLE:
        model.fit(unit)
        return model.labels_.astype(np.int64)
    fit_rows = np.sort(rng.choice(num_samples, KMEANS_FIT_SAMPLE, replace=False))
    model.fit(unit[fit_rows])
    return nearest_centre(unit, model.cluster_centers_)


def nearest_centre(unit: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(N,)`` int64 index of the centre nearest (euclidean) to each row of ``unit``, in blocks.

    ``argmin |x - c|^2 = argmax (x . c - |c|^2 / 2)``: one fp32 matmul per block of
    :data:`ASSIGN_BLOCK_ROWS` rows, memory ``rows x K``.
    """
    import torch

    centres_t = torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float32))
    half_norms = 0.5 * (centres_t * centres_t).sum(dim=1)
    out = np.empty(unit.shape[0], dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, unit.shape[0], ASSIGN_BLOCK_ROWS):
            block = torch.from_numpy(unit[start:start + ASSIGN_BLOCK_ROWS])
            out[start:start + ASSIGN_BLOCK_ROWS] = (block @ centres_t.T - half_norms).argmax(dim=1).numpy()
    return out


def kmeans_plus_plus(unit: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur and Vassilvitskii, SODA 2007) of L2-normalised rows.

    Each next centre is a row drawn with probability proportional to its squared distance
    ``2 - 2 cos`` to the nearest centre so far. One matrix-vector product per centre in fp32:
    ``O(m K D)``. scikit-learn's own seeding upcasts to float64 and evaluates ``2 + log K`` candidates
    per centre, which is much slower (``benchmarks/RESULTS.md``); one candidate is the original algorithm.

    Returns:
        ``(n_clusters, D)`` float32 centres (rows of ``unit``).
    """
    num_rows = unit.shape[0]
    chosen = [int(rng.integers(num_rows))]
    nearest = np.clip(2.0 - 2.0 * (unit @ unit[chosen[0]]), 0.0, None)
    for _ in range(1, n_clusters):
        total = float(nearest.sum())
        if total <= 0.0:  # fewer distinct rows than clusters: any unused row
            candidates = np.setdiff1d(np.arange(num_rows), chosen)
            index = int(rng.choice(candidates))
        else:
            index = int(rng.choice(num_rows, p=nearest / total))
        chosen.append(index)
        np.minimum(nearest, np.clip(2.0 - 2.0 * (unit @ unit[index]), 0.0, None), out=nearest)
    return np.ascontiguousarray(unit[chosen], dtype=np.float32)


def cluster_summary(
    cluster: np.ndarray,
    labels: np.ndarray | None,
    *,
    neighbor_disagreement: np.ndarray | None = None,
    is_outlier: np.ndarray | None = None,
    is_label_issue: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per cluster, the least pure first.

    Columns :data:`CLUSTER_COLUMNS`: ``size``, ``majority_label`` (most common given label),
    ``purity`` (its share), and the means of the optional per-sample signals (NaN when not given).
    A cluster with low purity and high ``label_issue_share`` is a candidate for relabelling or
    removal as a whole. ``labels=None`` (a task without one class per sample): ``majority_label``
    -1 and ``purity`` NaN.
    """
    cluster = np.asarray(cluster, dtype=np.int64)
    unlabelled = labels is None
    labels = np.full(cluster.shape, -1, dtype=np.int64) if unlabelled else np.asarray(labels, dtype=np.int64)
    frame = pd.DataFrame({"cluster": cluster, "label": labels})
    for name, values in (
        ("mean_neighbor_disagreement", neighbor_disagreement),
        ("outlier_share", is_outlier),
        ("label_issue_share", is_label_issue),
    ):
        frame[name] = np.nan if values is None else np.asarray(values, dtype=np.float64)
    if frame.empty:
        return pd.DataFrame(columns=list(CLUSTER_COLUMNS))
    counts = frame.groupby(["cluster", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["cluster", "n", "label"], ascending=[True, False, True])
    majority = counts.drop_duplicates("cluster").set_index("cluster")
    grouped = frame.groupby("cluster")
    table = pd.DataFrame({"size": grouped.size()})
    table["majority_label"] = majority["label"]
    table["purity"] = np.nan if unlabelled else majority["n"] / table["size"]
    for name in ("mean_neighbor_disagreement", "outlier_share", "label_issue_share"):
        table[name] = grouped[name].mean()
    table = table.reset_index().sort_values(["purity", "size"], ascending=[True, False])
    return table[list(CLUSTER_COLUMNS)].reset_index(drop=True)


def class_overlap(
    neighbor_indices: np.ndarray,
    labels: np.ndarray,
    pred_probs: np.ndarray | None = None,
    *,
    min_evidence: float = BOUNDARY_MIN_EVIDENCE,
) -> pd.DataFrame:
    """Pairs of classes whose samples sit on their common boundary, the most overlapping first.

    For sample ``i`` of label ``a`` and every other class ``b``, the evidence is the share of its
    neighbours labelled ``b`` (``s_ib``), or ``(s_ib + p_i[b]) / 2`` when ``pred_probs`` is given.
    The sample is a boundary sample of the pair ``{a, b*}`` for its strongest other class ``b*``
    when that evidence is at least ``min_evidence`` (ties go to the class of the nearer neighbour);
    each sample counts for one pair at most.

    Args:
        neighbor_indices: ``(N, k)`` row positions (``knn_cosine``); -1 = missing.
        labels: ``(N,)`` integer given labels.
        pred_probs: optional ``(N, C)`` predicted probabilities (NaN rows = not recorded: their
            neighbour share alone is used).
        min_evidence: see above, :data:`BOUNDARY_MIN_EVIDENCE` by default.

    Returns:
        DataFrame with columns :data:`OVERLAP_COLUMNS`, one row per unordered pair with at least one
        boundary sample, ``class_a < class_b``; ``boundary_samples`` counts those samples (of
        either class) and ``share`` is that count over the number of samples labelled ``a`` or
        ``b``. Sorted by ``share``, then ``boundary_samples``, descending.
    """
    neighbors = np.asarray(neighbor_indices)
    labels = np.asarray(labels, dtype=np.int64)
    if neighbors.ndim != 2 or labels.shape != (neighbors.shape[0],):
        raise ValueError(
            f"Expected `neighbor_indices` of shape (N, k) and `labels` of shape (N,) but got"
            f" {neighbors.shape} and {labels.shape}."
        )
    num_samples, k = neighbors.shape
    empty = pd.DataFrame({name: pd.Series(dtype="int64" if name != "share" else "float64") for name in OVERLAP_COLUMNS})
    if num_samples == 0 or k == 0:
        return empty
    present = neighbors >= 0
    neighbor_labels = np.where(present, labels[np.where(present, neighbors, 0)], -1)
    neighbor_labels = np.where(neighbor_labels == labels[:, None], -1, neighbor_labels)  # other classes only
    num_present = np.maximum(present.sum(axis=1), 1)
    # candidates: every other label among the neighbours (+ the top other predicted class)
    candidates = neighbor_labels
    if pred_probs is not None:
        probs = np.asarray(pred_probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != num_samples:
            raise ValueError(
                f"Expected argument `pred_probs` of shape (N, C) with N = {num_samples} but got {probs.shape}."
            )
        masked = np.nan_to_num(probs, nan=-1.0).copy()
        masked[np.arange(num_samples), np.clip(labels, 0, probs.shape[1] - 1)] = -1.0
        candidates = np.concatenate([candidates, np.argmax(masked, axis=1)[:, None]], axis=1)
    share = (candidates[:, :, None] == neighbor_labels[:, None, :]).sum(axis=2) / num_present[:, None]
    evidence = share
    if pred_probs is not None:
        recorded = ~np.isnan(probs).any(axis=1)
        model = np.take_along_axis(np.nan_to_num(probs), np.clip(candidates, 0, probs.shape[1] - 1), 1)
        evidence = np.where(recorded[:, None], (share + model) / 2.0, share)
    evidence = np.where((candidates >= 0) & (candidates != labels[:, None]), evidence, -1.0)
    best = np.argmax(evidence, axis=1)
    rows = np.flatnonzero(evidence[np.arange(num_samples), best] >= min_evidence)
    if rows.size == 0:
        return empty
    other = candidates[rows, best[rows]]
    class_a, class_b = np.minimum(labels[rows], other), np.maximum(labels[rows], other)
    pairs = pd.DataFrame({"class_a": class_a, "class_b": class_b})
    table = pairs.groupby(["class_a", "class_b"]).size().rename("boundary_samples").reset_index()
    class_sizes = np.bincount(labels[labels >= 0], minlength=int(max(labels.max(), other.max())) + 1)
    denominator = class_sizes[table["class_a"]] + class_sizes[table["class_b"]]
    table["share"] = table["boundary_samples"] / np.maximum(denominator, 1)
    table = table.astype({"class_a": "int64", "class_b": "int64", "boundary_samples": "int64"})
    table = table.sort_values(["share", "boundary_samples", "class_a", "class_b"], ascending=[False, False, True, True])
    return table[list(OVERLAP_COLUMNS)].reset_index(drop=True)
