"""The kNN graph of the embedding analysis, searched by every rank of a ``torch.distributed`` job.

At the end of a fit every rank holds every embedding (``EmbeddingBuffer.gather``), but only rank 0 analyses.
The kNN search is most of that analysis (10M x 128: 418 of 510 s, ``benchmarks/RESULTS.md``), and it splits
cleanly: each rank searches its part of the query rows (``knn_cosine(part=(rank, world))``, the same blocks
or lists as one search) and rank 0 collects the rows (a ``reduce`` by maximum, in chunks: the rows a rank did
not search are -1 there). The ``"ivf"`` quantizer is computed once, on rank 0, and broadcast, so every rank
probes the same lists and each query is searched exactly once. The result is the graph one process would
have found, handed to :func:`~dq_plugins.analysis.embeddings.analyze_embeddings` as ``neighbors=``.

Every rank makes the same collective calls whatever happens locally: a rank that fails says so in the next
agreement (an all-reduce of an ok flag) and all ranks then give up together, leaving rank 0 to search alone.
Under NCCL, host tensors travel through ``device`` (the model's GPU), as the recording's reductions do.
"""

from __future__ import annotations

import time
import traceback
import warnings
from collections.abc import Callable

import numpy as np
import torch

from dq_plugins.analysis.embeddings import searched_rows
from dq_plugins.logs import warn
from dq_plugins.recording.embeddings import all_reduce_min
from dq_plugins.recording.ledger import distributed_rank_and_world
from dq_plugins.scores.neighbors import KnnGraph, ivf_lists, ivf_num_lists, knn_cosine, unit_rows

REDUCE_CHUNK_ELEMENTS = 1 << 22
"""Elements of the ``(N, k)`` results sent per ``reduce`` call (32 MB of int64)."""

_MISSING_SIMILARITY = -3.0
"""Stands for NaN in the reduce by maximum (cosine similarities lie in [-1, 1])."""


def distributed_knn(
    embeddings: np.ndarray | torch.Tensor | None, k: int, method: str, *, seed: int = 0,
    device: torch.device | str = "cpu",
) -> KnnGraph | None:
    """The ``k``-NN graph of ``embeddings`` searched by all ranks; a collective, to call on every rank.

    Args:
        embeddings: ``(N, D)`` rows, the same on every rank (e.g. after ``EmbeddingBuffer.gather``); ``None``
            when this rank could not prepare them. Every rank returns ``None`` when one rank passes ``None``,
            fewer than 2 rows or a ``method`` other than ``"exact"`` / ``"ivf"`` (``"ann"`` is not split).
        k: neighbours per row, ``1 .. N-1`` (self excluded).
        method: ``"exact"`` or ``"ivf"`` (already resolved, e.g. by ``analysis.embeddings.knn_settings``).
        seed: random state of the ``"ivf"`` quantizer, as in :func:`~dq_plugins.scores.neighbors.knn_cosine`.
        device: where the collectives' tensors go under NCCL (the model's device); the search runs on CPU.

    Returns:
        On rank 0 the :class:`~dq_plugins.scores.neighbors.KnnGraph` that ``knn_cosine(embeddings, k,
        method=method, seed=seed)`` gives; ``None`` on the other ranks, without ``torch.distributed`` (or
        with one rank), and on every rank when a rank failed (warned).
    """
    rank, world = distributed_rank_and_world()
    if world < 2:
        return None
    device = torch.device(device)
    start = time.perf_counter()
    ready = embeddings is not None and embeddings.shape[0] >= 2 and method in ("exact", "ivf")
    unit = _locally(lambda: unit_rows(searched_rows(embeddings, seed), device="cpu"), "normalise the embeddings", ready)
    if not _everyone_ok(unit is not None, device, "prepare the embeddings"):
        return None
    quantizer = _shared_quantizer(unit, seed, device) if method == "ivf" else None
    if method == "ivf" and quantizer is None:
        return None
    found = _locally(lambda: knn_cosine(unit, k, device="cpu", method=method, seed=seed, part=(rank, world),
                                        quantizer=quantizer), "search its part of the kNN graph")
    del unit, quantizer
    if not _everyone_ok(found is not None, device, "search its part of the kNN graph"):
        return None
    indices, similarities = _reduce_to_rank0(*found, device)
    if rank != 0:
        return None
    return KnnGraph(indices, similarities, method, world, time.perf_counter() - start)


def search_on_all_ranks(
    what: str, rows: Callable[[], tuple[np.ndarray, np.ndarray]], settings: Callable[[int], tuple[int, str]],
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, KnnGraph] | None:
    """``(ids, graph)``: the rows ``rows() -> (ids (R,), values (R, D))`` and their kNN graph searched by every rank
    with ``settings(R) -> (k, method)`` (the analysis's own), on rank 0; a collective, to call on every rank.

    ``None`` on the other ranks, and on every rank when something failed on one of them (warned, naming
    ``what``): a local error still reaches the collectives, so no rank hangs, and rank 0's analysis then
    searches alone.
    """
    ids, values, k, method = None, None, 0, "exact"
    try:  # local work: a failure here must still reach the collectives of distributed_knn
        ids, values = rows()
        k, method = settings(max(ids.size, 2))
        values = unit_rows(searched_rows(values, 0), device="cpu")  # what the search uses; rows()'s copy is freed
    except Exception:  # noqa: BLE001 - the other ranks learn it in distributed_knn's first agreement
        warnings.warn(f"dq_plugins: could not read {what} for the kNN search of all ranks:\n"
                      f"{traceback.format_exc()}", RuntimeWarning, stacklevel=2)
        values = None
    try:
        graph = distributed_knn(values, k, method, device=device)
    except Exception:  # noqa: BLE001 - a broken collective: rank 0 still analyses, searching alone
        warn(f"dq_plugins: the kNN search of {what} over the job's ranks failed; rank 0 searches alone.\n"
             f"{traceback.format_exc()}", RuntimeWarning, stacklevel=2)
        graph = None
    return None if graph is None else (ids, graph)


def _locally(work, what: str, ready: bool = True):
    """``work()``, or ``None`` when it raised (warned on this rank, whichever it is) or this rank was not ``ready``:
    local, never a collective."""
    if not ready:
        return None
    try:
        return work()
    except Exception:  # noqa: BLE001 - the other ranks must hear of it, not hang
        rank = distributed_rank_and_world()[0]
        warnings.warn(f"dq_plugins: rank {rank} could not {what}; rank 0 will search the kNN graph alone.\n"
                      f"{traceback.format_exc()}", RuntimeWarning, stacklevel=3)
        return None


def _everyone_ok(ok: bool, device: torch.device, what: str) -> bool:
    """Whether every rank is ``ok`` (a collective); rank 0 warns when only another rank was not."""
    flag = torch.tensor([int(ok)], dtype=torch.int64)
    all_reduce_min(flag, device)
    if ok and not flag[0]:
        warn(f"dq_plugins: another rank could not {what}; rank 0 searches the kNN graph alone.", RuntimeWarning,
             stacklevel=3)
    return bool(flag[0])


def _broadcast(tensor: torch.Tensor, device: torch.device) -> None:
    """``dist.broadcast`` from rank 0 of a host tensor, in place (through ``device`` under NCCL)."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        part = tensor.to(device)
        dist.broadcast(part, src=0)
        tensor.copy_(part)
    else:
        dist.broadcast(tensor, src=0)


def _shared_quantizer(unit: torch.Tensor, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rank 0's :func:`ivf_lists` of ``unit``, on every rank (a collective); ``None`` everywhere when it failed."""
    rank = distributed_rank_and_world()[0]
    quantizer = None
    if rank == 0:
        quantizer = _locally(lambda: ivf_lists(unit, ivf_num_lists(unit.shape[0]), seed=seed),
                             "build the ivf quantizer")
    header = torch.tensor([int(quantizer is not None), 0 if quantizer is None else quantizer[0].shape[0]])
    _broadcast(header, device)
    if not header[0]:
        return None
    if quantizer is None:
        quantizer = (torch.empty((int(header[1]), unit.shape[1]), dtype=torch.float32),
                     torch.empty(unit.shape[0], dtype=torch.int64))
    centroids, assign = (tensor.contiguous() for tensor in quantizer)
    _broadcast(centroids, device)
    _broadcast(assign, device)
    return centroids, assign


def _reduce_to_rank0(
    indices: np.ndarray, similarities: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's rows of ``(N, k)`` results on rank 0 (a collective): the maximum over ranks, where the rows a
    rank did not search are -1 / NaN (NaN travels as :data:`_MISSING_SIMILARITY`)."""
    import torch.distributed as dist

    indices = np.ascontiguousarray(indices, dtype=np.int64)
    similarities = np.ascontiguousarray(np.nan_to_num(similarities, nan=_MISSING_SIMILARITY), dtype=np.float32)
    nccl = dist.get_backend() == "nccl"
    for array in (indices, similarities):
        flat = torch.from_numpy(array).view(-1)
        for start in range(0, flat.numel(), REDUCE_CHUNK_ELEMENTS):
            part = flat[start:start + REDUCE_CHUNK_ELEMENTS]
            sent = part.to(device) if nccl else part
            dist.reduce(sent, dst=0, op=dist.ReduceOp.MAX)
            if nccl:
                part.copy_(sent)
    similarities[similarities < -1.5] = np.nan
    return indices, similarities
