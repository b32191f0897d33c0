"""The embeddings' kNN search on one process against the same search split over ranks (gloo, CPU).

    python -m benchmarks.distributed_knn [--n 500000] [--dim 128] [--method ivf] [--ranks 2] [--no-write]

The scale benchmark's clustered embeddings (``benchmarks.scale.synthetic``), k = 10, searched on the same machine
in the same run: by one process with torch's default threads (what rank 0 alone did before); by ``--ranks`` gloo
processes of one thread each through :func:`dq_plugins.analysis.distributed.distributed_knn` (quantizer on rank 0
and broadcast, each rank its part, the rows reduced to rank 0: the whole collective, timed on rank 0 from a
barrier); and, to show how the work splits, by one process of one thread that builds the quantizer and then
searches each rank's part in turn. Also checks that the split search found the same neighbours. Writes the
``distributed_knn`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

K = 10


def _one_process(path: str, method: str, threads: int | None) -> tuple[float, np.ndarray]:
    from dq_plugins.scores.neighbors import knn_cosine

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        embeddings = np.load(path)
        start = time.perf_counter()
        indices, _ = knn_cosine(embeddings, K, method=method)
        return time.perf_counter() - start, indices
    finally:
        torch.set_num_threads(previous)


def _parts(path: str, method: str, world: int) -> tuple[float, list[float], np.ndarray]:
    """One thread: (seconds of the quantizer, seconds of each part's search, the parts' union of indices)."""
    from dq_plugins.scores.neighbors import ivf_lists, ivf_num_lists, knn_cosine, unit_rows

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        unit = unit_rows(np.load(path), device="cpu")
        start = time.perf_counter()
        quantizer = ivf_lists(unit, ivf_num_lists(unit.shape[0]), seed=0) if method == "ivf" else None
        quantizer_s, seconds, union = time.perf_counter() - start, [], None
        for part in range(world):
            start = time.perf_counter()
            indices, _ = knn_cosine(unit, K, method=method, part=(part, world), quantizer=quantizer)
            seconds.append(time.perf_counter() - start)
            union = indices if union is None else np.maximum(union, indices)
        return quantizer_s, seconds, union
    finally:
        torch.set_num_threads(previous)


def _rank(rank: int, world: int, path: str, method: str, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from dq_plugins.analysis.distributed import distributed_knn

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    embeddings = np.load(path)
    dist.barrier()
    start = time.perf_counter()
    graph = distributed_knn(embeddings, K, method)
    seconds = time.perf_counter() - start
    if rank == 0:
        np.save(out, graph.indices)
        Path(out + ".json").write_text(json.dumps({"seconds": seconds}))
    dist.destroy_process_group()


def _ranks(path: str, method: str, world: int, folder: str) -> tuple[float, np.ndarray]:
    import torch.multiprocessing as mp

    out = os.path.join(folder, "ranks.npy")
    mp.spawn(_rank, args=(world, path, method, os.path.join(folder, "init"), out), nprocs=world, join=True)
    return json.loads(Path(out + ".json").read_text())["seconds"], np.load(out)


def render(result: dict, machine: str) -> str:
    """The ``distributed_knn`` section of RESULTS.md from ``main``'s result (``machine``: where it ran)."""
    runs = result["runs"]
    baseline = runs[0]["seconds"]
    lines = [
        f"### kNN search over the job's ranks ({result['n']:,} x {result['dim']}, `{result['method']}`, k = {K})",
        "",
        f"`python -m benchmarks.distributed_knn --n {result['n']} --dim {result['dim']} --method {result['method']}` "
        f"({machine}). Load average {result['load'][0]:.1f} before, {result['load'][1]:.1f} after (other workers "
        "ran beside).",
        "",
        "| run | kNN search (s) | speed-up | neighbours equal to 1 process |",
        "|---|---|---|---|",
    ]
    for index, run in enumerate(runs):
        speed = f"{baseline / run['seconds']:.2f}x" if index < 2 or index == len(runs) - 1 else ""  # not for parts
        lines.append(f"| {run['run']} | {run['seconds']:.1f} | {speed} | {run['same_neighbours']:.5f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--method", default="ivf", choices=["exact", "ivf"])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from benchmarks import scale

    scale.DIM = args.dim
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "embeddings.npy")
        np.save(path, scale.synthetic(args.n)[0])
        default_threads = torch.get_num_threads()
        rows = []
        one_s, one = _one_process(path, args.method, None)
        rows.append((f"1 process, {default_threads} threads (rank 0 alone, before)", one_s, 1.0))
        ranks_s, split = _ranks(path, args.method, args.ranks, folder)
        rows.append((f"{args.ranks} gloo ranks, 1 thread each (`distributed_knn`, all of it)", ranks_s,
                     float((split == one).mean())))
        quantizer_s, part_s, union = _parts(path, args.method, args.ranks)
        same = float((union == one).mean())
        if args.method == "ivf":
            rows.append(("1 thread: the quantizer (rank 0 alone, then broadcast)", quantizer_s, same))
        rows += [(f"1 thread: part {p} of {args.ranks} (rank {p}'s search)", sec, same) for p, sec in enumerate(part_s)]
        rows.append((f"1 thread: all {args.ranks} parts in turn (rows normalised beforehand)",
                     quantizer_s + sum(part_s), same))
    load_after = os.getloadavg()[0]
    result = {"n": args.n, "dim": args.dim, "method": args.method, "load": [load_before, load_after],
              "runs": [{"run": name, "seconds": seconds, "same_neighbours": same} for name, seconds, same in rows]}
    print(json.dumps(result))
    if not args.no_write:
        from benchmarks._common import git_revision, machine_line, write_section

        write_section("distributed_knn", render(result, f"commit {git_revision()}. {machine_line()}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
