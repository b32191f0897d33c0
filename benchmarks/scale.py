"""End-of-fit analysis time and peak memory against the number of samples.

Synthetic data: ``N`` embeddings of dimension ``D = 384`` (fp16, as the callbacks store them) in
``C = 20`` classes of 5 sub-clusters each, 10% flipped labels, and ``pred_probs`` from a softmax
over the similarity to the class centres. Each ``N`` runs in a fresh subprocess (so numba
compilation and peak memory are those of one training process); stages:

- ``compile``: numba compilation of pynndescent / umap-learn, paid once per process (measured on a
  tiny warm-up; 0 with the default methods, which do not use them);
- ``knn``: ``knn_cosine`` (exact up to 50k rows on CPU, the cluster-pruned ``"ivf"`` search above);
- ``scores``: outliers, near-duplicates, neighbour disagreement; ``clusters``: MiniBatchKMeans;
  ``map``: 2-D map (the torch graph layout on at most 20k rows + propagation); ``tables``: class
  overlap and clusters;
- ``cleanlab``: ``dq_plugins.scores.confident_learning`` on ``pred_probs``;
- ``parquet``: the per-sample table (training-dynamics columns + embedding columns) to Parquet.

Peak memory is the subprocess's maximum resident set size (``ru_maxrss``), data included.

Extraction: in a separate subprocess, the post-fit embedding pass (a forward pre-hook on the
classification head of a MiniLM-sized BERT, 6 layers x 384, random weights, pooling and the write
into :class:`~dq_plugins.recording.embeddings.EmbeddingBuffer`) against the same inference pass without the
hook, interleaved, as a ratio of medians (target: within 5%).

Usage: ``python -m benchmarks.scale [--sizes 10000 100000] [--no-write]`` writes the ``scale``
section of ``benchmarks/RESULTS.md``; ``--quick`` runs 10k and only prints. One size alone:
``--worker N --out r.json``, then ``--results r10k.json r100k.json ...`` renders the table.

The recording path (``benchmarks/scale_recording.py``: synthetic logits through the real Lightning
callback) runs with ``--recording [CASE ...]`` (cases: :data:`RECORDING_CASES`, plus ``checkpoint``
for the checkpoint size after 2 and 8 epochs, ``knn`` and ``knn_1m`` for the recall of the
approximate kNN search at 100k and 1M); each case in its own process, results appended as JSON lines to ``--out``
(default ``<temp folder>/scale_recording.jsonl``), from which the ``scale_recording`` section of
RESULTS.md is written by hand (it compares cases and states what was extrapolated).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIM = 384
NUM_CLASSES = 20
SUBCLUSTERS = 5
NOISE_RATE = 0.1
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
IMAGENET = 1_281_167
RECORDING_CASES: dict[str, list[str]] = {
    # name: scale_recording.py arguments (N, C, epochs, batch, embedding dim, options)
    "imagenet": [str(IMAGENET), "1000", "3", "4096", "0", "analyze=0"],
    "imagenet_20th": [str(IMAGENET // 20), "1000", "3", "4096", "0"],
    "imagenet_20th_float32": [str(IMAGENET // 20), "1000", "3", "4096", "0", "wide=float32"],
    "text_1m_768": ["1000000", "2", "1", "4096", "768", "analyze=0"],
}
TARGETS = "Targets on 2 CPU cores: 100k under 60 s; 1M under 10 min with peak RAM under 6 GB."


def synthetic(num_samples: int, seed: int = 0, chunk: int = 100_000):  # noqa: ANN201 - numpy arrays
    """``(embeddings fp16 (N, D), labels (N,), true (N,), pred_probs float32 (N, C))``, built chunk by chunk."""
    import numpy as np

    rng = np.random.default_rng(seed)
    class_centres = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32)
    sub_centres = class_centres[:, None, :] + 0.6 * rng.normal(size=(NUM_CLASSES, SUBCLUSTERS, DIM)).astype(np.float32)
    unit_classes = class_centres / np.linalg.norm(class_centres, axis=1, keepdims=True)
    embeddings = np.empty((num_samples, DIM), dtype=np.float16)
    true = rng.integers(0, NUM_CLASSES, num_samples)
    pred_probs = np.empty((num_samples, NUM_CLASSES), dtype=np.float32)
    for start in range(0, num_samples, chunk):
        stop = min(start + chunk, num_samples)
        sub = rng.integers(0, SUBCLUSTERS, stop - start)
        block = sub_centres[true[start:stop], sub] + 0.7 * rng.normal(size=(stop - start, DIM)).astype(np.float32)
        embeddings[start:stop] = block
        logits = 12.0 * (block / np.linalg.norm(block, axis=1, keepdims=True)) @ unit_classes.T
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        pred_probs[start:stop] = probs / probs.sum(axis=1, keepdims=True)
    labels = true.copy()
    flipped = rng.random(num_samples) < NOISE_RATE
    labels[flipped] = (labels[flipped] + rng.integers(1, NUM_CLASSES, flipped.sum())) % NUM_CLASSES
    return embeddings, labels, true, pred_probs


def worker(num_samples: int, out: Path) -> None:
    """Run every stage once for ``num_samples`` rows and write the timings as JSON to ``out``."""
    import numpy as np
    import pandas as pd

    from dq_plugins.analysis.embeddings import analyze_embeddings, warm_up
    from dq_plugins.scores.confident_learning import confident_learning

    embeddings, labels, true, pred_probs = synthetic(num_samples)
    data_bytes = embeddings.nbytes + pred_probs.nbytes + labels.nbytes
    stages: dict[str, float] = {"compile": warm_up(num_samples)}

    start = time.perf_counter()
    cl = confident_learning(labels, pred_probs)
    stages["cleanlab"] = time.perf_counter() - start

    ids = np.arange(num_samples, dtype=np.int64)
    analysis = analyze_embeddings(embeddings, ids, labels, pred_probs=pred_probs, is_label_issue=cl.is_label_issue)
    timings = analysis.summary.timings
    stages["knn"] = timings["normalise"] + timings["knn"]
    for name in ("scores", "clusters", "tables"):
        stages[name] = timings[name]
    stages["map"] = timings["projection"]

    start = time.perf_counter()
    frame = pd.DataFrame(
        {
            "split": "train", "label": labels, "pred": pred_probs.argmax(axis=1),
            "mislabel_score": 1.0 - cl.label_quality, "is_label_issue": cl.is_label_issue,
            "suggested_label": cl.suggested_label,
        }
    )
    for name in ("confidence", "variability", "correctness", "aum", "el2n"):
        frame[name] = np.random.default_rng(0).random(num_samples)
    frame = pd.concat([analysis.samples, frame], axis=1)
    with tempfile.TemporaryDirectory() as folder:
        frame.to_parquet(Path(folder) / "samples.parquet", index=False)
    stages["parquet"] = time.perf_counter() - start

    samples = analysis.samples
    flipped = labels != true
    order = np.argsort(-samples["neighbor_disagreement"].to_numpy(), kind="stable")[: int(flipped.sum())]
    result = {
        "n": num_samples,
        "dim": embeddings.shape[1],
        "knn_method": analysis.summary.knn_method,
        "projection": analysis.summary.projection_method,
        "stages": stages,
        "total": sum(stages.values()),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "data_gb": data_bytes / 2**30,
        "disagreement_precision_at_noise": float(flipped[order].mean()),
        "num_clusters": analysis.summary.num_clusters,
        "load_average": os.getloadavg()[0],
    }
    out.write_text(json.dumps(result))


def extraction_worker(out: Path, batches: int = 12, batch_size: int = 32, length: int = 64, repeats: int = 5) -> None:
    """Time an inference pass with and without the embedding capture; write the JSON result to ``out``."""
    import statistics

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from dq_plugins.recording.embeddings import EmbeddingBuffer, find_head, find_tensor, pool

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, num_labels=NUM_CLASSES)
    model = BertForSequenceClassification(config).eval()
    inputs = [torch.randint(0, config.vocab_size, (batch_size, length)) for _ in range(batches)]
    mask = torch.ones(batch_size, length, dtype=torch.int64)
    buffer = EmbeddingBuffer(batches * batch_size, config.hidden_size, "cpu")
    _, head = find_head(model)
    captured: list[torch.Tensor] = []

    def capture(module: torch.nn.Module, args: tuple) -> None:
        captured.append(pool(find_tensor(args)))

    def one_pass(hooked: bool) -> float:
        handle = head.register_forward_pre_hook(capture) if hooked else None
        start = time.perf_counter()
        with torch.inference_mode():
            for index, tokens in enumerate(inputs):
                model(input_ids=tokens, attention_mask=mask)
                if hooked:
                    ids = torch.arange(index * batch_size, (index + 1) * batch_size)
                    buffer.write(ids, captured.pop())
            if hooked:
                buffer.to_numpy()
        seconds = time.perf_counter() - start
        if handle is not None:
            handle.remove()
        return seconds

    one_pass(True)  # warm-up
    plain, hooked = [], []
    for i in range(repeats):
        for flag in ((True, False) if i % 2 else (False, True)):
            (hooked if flag else plain).append(one_pass(flag))
    result = {"plain_s": statistics.median(plain), "hooked_s": statistics.median(hooked),
              "ratio": statistics.median(hooked) / statistics.median(plain),
              "samples": batches * batch_size, "repeats": repeats, "load_average": os.getloadavg()[0]}
    out.write_text(json.dumps(result))


STAGE_ORDER = ("compile", "knn", "scores", "cleanlab", "clusters", "map", "tables", "parquet")


def table(results: list[dict]) -> str:
    """Markdown table of the results, one row per N."""
    head = ("| N | kNN | " + " | ".join(f"{s} (s)" for s in STAGE_ORDER)
            + " | total (s) | without compile (s) | peak RSS (GB) | load avg |")
    rule = "|" + "---|" * (len(STAGE_ORDER) + 6)
    rows = [head, rule]
    for r in results:
        cells = [f"{r['n']:,}", r["knn_method"], *(f"{r['stages'][s]:.1f}" for s in STAGE_ORDER),
                 f"**{r['total']:.1f}**", f"{r['total'] - r['stages']['compile']:.1f}", f"{r['peak_rss_gb']:.2f}",
                 f"{r['load_average']:.1f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def verdict(results: list[dict]) -> str:
    """One sentence per target size: met or not, with and without the one-off compilation."""
    limits = {100_000: (60.0, None), 1_000_000: (600.0, 6.0)}
    parts = []
    for r in results:
        if r["n"] not in limits:
            continue
        seconds, gigabytes = limits[r["n"]]
        steady = r["total"] - r["stages"]["compile"]
        text = (f"{r['n']:,}: {r['total']:.0f} s with compilation, {steady:.0f} s without "
                f"(target {seconds:.0f} s: {'met' if r['total'] <= seconds else 'met without compilation' if steady <= seconds else 'not met'})")
        if gigabytes is not None:
            text += f", peak {r['peak_rss_gb']:.1f} GB (target {gigabytes:.0f} GB: {'met' if r['peak_rss_gb'] <= gigabytes else 'not met'})"
        parts.append(text + f" at load average {r['load_average']:.1f}")
    return ("Against the targets: " + "; ".join(parts) + ".") if parts else ""


def run_recording(cases: list[str], out: Path) -> None:
    """Run each recording case in a fresh process; append its JSON line (with ``case``) to ``out``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for case in cases:
        argv = {"checkpoint": ["checkpoint"], "knn": ["knn", "100000"], "knn_1m": ["knn", "1000000"]}.get(case) or ["recording", *RECORDING_CASES[case]]
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "benchmarks.scale_recording", *argv], cwd=REPO, env=env, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(f"{case}: failed ({done.returncode})\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        result = {"case": case, **json.loads(lines[-1]), "wall_s": time.perf_counter() - start}
        print(json.dumps(result), flush=True)
        with open(out, "a") as handle:
            handle.write(json.dumps(result) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k only, printed (implies --no-write)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help=f"default {DEFAULT_SIZES}")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    parser.add_argument("--results", type=Path, nargs="+", default=None,
                        help="render the table from saved worker outputs (--worker N --out FILE) instead of running")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--extraction-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="with --worker: where the JSON goes")
    parser.add_argument("--dim", type=int, default=DIM, help=f"embedding dimension of the synthetic data (default {DIM})")
    parser.add_argument("--recording", nargs="*", default=None,
                        help=f"recording cases to run: {list(RECORDING_CASES)}, checkpoint, knn, knn_1m (default: all)")
    args = parser.parse_args(argv)
    globals()["DIM"] = args.dim
    if args.recording is not None:
        run_recording(args.recording or [*RECORDING_CASES, "checkpoint", "knn", "knn_1m"], args.out or Path(tempfile.gettempdir()) / "scale_recording.jsonl")
        return 0
    if args.worker is not None:
        worker(args.worker, args.out)
        return 0
    if args.extraction_worker:
        extraction_worker(args.out)
        return 0

    sizes = (10_000,) if args.quick else tuple(args.sizes or DEFAULT_SIZES)
    results = [json.loads(path.read_text()) for path in args.results] if args.results else []
    for num_samples in () if args.results else sizes:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "result.json"
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.scale", "--worker", str(num_samples), "--out", str(out), "--dim", str(args.dim)],
                cwd=REPO, check=False
            )
            if done.returncode != 0 or not out.exists():
                print(f"N={num_samples}: worker failed with exit code {done.returncode}", file=sys.stderr)
                continue
            result = json.loads(out.read_text())
        print(f"N={num_samples:,}: {result['total']:.1f} s, peak {result['peak_rss_gb']:.2f} GB "
              f"(wall {time.perf_counter() - start:.1f} s) {json.dumps(result['stages'])}", flush=True)
        results.append(result)
    if not results:
        return 1
    body = table(results)
    print(body)
    extraction = None
    if not args.results:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "extraction.json"
            subprocess.run([sys.executable, __file__, "--extraction-worker", "--out", str(out)], cwd=REPO, check=False)
            extraction = json.loads(out.read_text()) if out.exists() else None
        print(f"extraction: {extraction}")
    if not (args.no_write or args.quick):
        from benchmarks._common import git_revision, machine_line, write_section

        precision = ", ".join(f"{r['n']:,}: {r['disagreement_precision_at_noise']:.2f}" for r in results)
        text = (
            "## Scale: end-of-fit analysis against N (`benchmarks/scale.py`)\n\n"
            f"Synthetic D={DIM} fp16 embeddings, C={NUM_CLASSES} classes x {SUBCLUSTERS} sub-clusters, "
            f"{NOISE_RATE:.0%} flipped labels; one fresh process per N; CPU only. {TARGETS}\n"
            f"Machine: {machine_line()}; revision {git_revision()}. `load avg` is the 1-minute load average "
            "at the end of the run: above 2 the 2 cores were shared with other jobs and times are inflated.\n\n"
            f"{body}\n\n"
            "`compile` is numba's one-off compilation, 0 here: the default methods (the torch `ivf` kNN search "
            "and the torch graph layout of the map) compile nothing; `knn_method=\"ann\"` (pynndescent) and "
            "`projection=\"umap\"` (umap-learn) pay 25 to 180 s per process on these cores. `map` is the graph "
            "layout of at most 20k rows (their own kNN graph by the `ivf` search), the others placed over the kNN "
            "graph. Precision of "
            f"`neighbor_disagreement` at the noise rate (top 10% vs flipped labels; easy synthetic data): {precision}.\n"
            + (f"\nExtraction pass (MiniLM-sized BERT, random weights, {extraction['samples']} sequences of 64 tokens, "
               f"{extraction['repeats']} interleaved repeats, medians): {extraction['hooked_s']:.2f} s with the "
               f"embedding capture against {extraction['plain_s']:.2f} s of plain inference, ratio "
               f"**{extraction['ratio']:.3f}** (target within 5%: "
               f"{'met' if extraction['ratio'] <= 1.05 else 'not met'}), load average {extraction['load_average']:.1f}.\n"
               if extraction else "")
            + f"\n{verdict(results)} The GPU path (exact kNN and the layout on the device) is not measured here: "
            "this machine has no GPU.\n"
        )
        write_section("scale", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
