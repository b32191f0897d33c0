"""The recording path at scale: synthetic logits through the real Lightning callback.

A map-style dataset of ``N`` ids (``C`` classes, 10% flipped labels) and a LightningModule whose
``training_step`` returns synthetic logits: Gaussian noise plus a signal on the true class that
grows with the epoch, and on the given class of a flipped sample only from the last epoch on
(late memorisation), so mislabel detection has something to find. The only parameter is a bias of
``C`` floats, so the step itself costs little beside the recording. Runs in its own process
(``python -m benchmarks.scale --recording [CASE ...]``) and prints one JSON line
(``python -m benchmarks.scale_recording knn N``: recall of the ``ivf`` kNN search at ``N`` rows):

- ``device_peak_mb`` / ``host_peak_mb``: ``dq.memory.*`` as the callback logs them;
- ``rss_start_gb``, ``rss_train_end_gb``: resident memory at train start and end (growth while training);
- ``peak_rss_gb``: the process's maximum resident set (analysis included);
- ``train_s``, ``analysis_s``; ``auprc``: average precision of ``mislabel_score`` against the flips.

``--wide float32`` forces the dense float32 softmax sums of the previous design, for the AUPRC comparison.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_gb() -> float:
    """Current resident set size of this process in GB (Linux ``/proc``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def run(num_samples: int, num_classes: int, epochs: int, batch: int, dim: int = 0, wide: str = "auto",
        noise: float = 0.1, analyze: bool = True) -> dict:
    import numpy as np
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import average_precision_score
    from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

    import dq_plugins.recording.ledger as ledger_module
    from dq_plugins.lightning import DataQualityCallback

    from benchmarks._common import quiet_lightning

    quiet_lightning()
    if wide == "float32":
        ledger_module.WIDE_FLOAT32_MAX_ELEMENTS = 2**62
    rng = np.random.default_rng(0)
    true = torch.from_numpy(rng.integers(0, num_classes, num_samples))
    flipped = torch.from_numpy(rng.random(num_samples) < noise)
    labels = torch.where(flipped, (true + torch.from_numpy(rng.integers(1, num_classes, num_samples))) % num_classes, true)
    difficulty = torch.from_numpy(rng.random(num_samples).astype(np.float32))

    class Ids(Dataset):
        def __len__(self) -> int:
            return num_samples

        def __getitem__(self, index):  # a whole batch per call (BatchSampler as sampler)
            ids = torch.as_tensor(index, dtype=torch.int64)
            return {"idx": ids, "labels": labels[ids]}

    class Synthetic(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(num_classes))
            self.gen = torch.Generator().manual_seed(1)

        def training_step(self, batch, batch_idx):
            ids, given = batch["idx"], batch["labels"]
            epoch = self.current_epoch
            logits = torch.randn(len(ids), num_classes, generator=self.gen)
            signal = (1.0 + 2.0 * epoch) * (1.2 - difficulty[ids])
            logits[torch.arange(len(ids)), true[ids]] += signal
            late = flipped[ids] & (epoch >= epochs - 1)
            logits[torch.arange(len(ids)), given] += torch.where(late, signal + 1.0, 0.0)
            logits = logits + self.bias
            out = {"loss": F.cross_entropy(logits, given), "logits": logits}
            if dim:
                out["embeddings"] = torch.randn(len(ids), dim, generator=self.gen) + true[ids, None].float()
            return out

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    marks: dict[str, float] = {}

    class Marks(pl.Callback):
        def on_train_start(self, trainer, module):
            marks["rss_start_gb"], marks["t0"] = rss_gb(), time.perf_counter()

        def on_train_epoch_end(self, trainer, module):  # after the recording callback's own hook
            marks["rss_train_end_gb"], marks["train_s"] = rss_gb(), time.perf_counter() - marks["t0"]

    loader = DataLoader(Ids(), sampler=BatchSampler(RandomSampler(range(num_samples), generator=torch.Generator().manual_seed(0)),
                                                    batch, drop_last=False), batch_size=None)
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        callback = DataQualityCallback(embeddings=bool(dim), tracking_uri=f"sqlite:///{folder}/mlflow.db",
                                       history_dir=f"{folder}/history")
        if not analyze:
            from dq_plugins.recording.session import DynamicsSession

            DynamicsSession.finish_run = lambda self, sink, **options: sink.end("FINISHED")  # recording only
        trainer = pl.Trainer(max_epochs=epochs, callbacks=[Marks(), callback], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                             num_sanity_val_steps=0, limit_val_batches=0)
        start = time.perf_counter()
        trainer.fit(Synthetic(), loader)
        total = time.perf_counter() - start
        device_peak, host_peak = callback.session.memory_peaks()
        result = {
            "n": num_samples, "classes": num_classes, "epochs": epochs, "batch": batch, "dim": dim,
            "wide": str(callback.session.ledgers["train"].wide_dtype).replace("torch.", ""),
            "device_peak_mb": device_peak / 2**20, "host_peak_mb": host_peak / 2**20,
            "rss_start_gb": marks["rss_start_gb"], "rss_train_end_gb": marks["rss_train_end_gb"],
            "train_s": marks["train_s"], "analysis_s": total - marks["train_s"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "load_average": os.getloadavg()[0],
        }
        if analyze and callback.result is not None:
            samples = callback.result.samples
            train = samples[samples["split"] == "train"]
            ids = train["sample_id"].to_numpy()
            result["auprc"] = float(average_precision_score(flipped.numpy()[ids], train["mislabel_score"].to_numpy()))
        os.chdir(REPO)
    return result


def checkpoint_growth(num_samples: int = 200_000, num_classes: int = 100) -> dict:
    """Bytes of the ledger's checkpoint state after 2 and after 8 epochs (history spilled to files)."""
    import io

    import torch

    from dq_plugins.recording.ledger import SplitLedger

    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        ledger = SplitLedger(num_samples, num_classes, history_folder=f"{folder}/train")
        gen = torch.Generator().manual_seed(0)
        for epoch in range(8):
            for start in range(0, num_samples, 8192):
                ids = torch.arange(start, min(start + 8192, num_samples))
                ledger.record(ids, ids % num_classes, torch.randn(len(ids), num_classes, generator=gen), epoch)
            ledger.close_epoch()
            if epoch + 1 in (2, 8):
                buffer = io.BytesIO()
                torch.save(ledger.state_dict(), buffer)
                sizes[epoch + 1] = buffer.tell()
        files = ledger.history.disk_bytes()
    return {"n": num_samples, "classes": num_classes, "after_2_mb": sizes[2] / 2**20, "after_8_mb": sizes[8] / 2**20,
            "ratio": sizes[8] / sizes[2], "epoch_files_mb": files / 2**20}


def knn_recall(num_samples: int, dim: int = 128, k: int = 10, queries: int = 2000) -> dict:
    """Recall@k of the approximate (``ivf``) kNN search against exact search, on ``queries`` random rows
    of the scale benchmark's clustered embeddings (exact neighbours by brute force for those rows)."""
    import numpy as np
    import torch

    from dq_plugins.scores.neighbors import knn_cosine

    from benchmarks import scale

    scale.DIM = dim
    embeddings = scale.synthetic(num_samples)[0]
    start = time.perf_counter()
    approx, _ = knn_cosine(embeddings, k, method="ivf")
    seconds = time.perf_counter() - start
    rows = np.random.default_rng(1).choice(num_samples, size=min(queries, num_samples), replace=False)
    unit = torch.nn.functional.normalize(torch.from_numpy(embeddings).float(), dim=1)
    sims = unit[rows] @ unit.T
    sims[torch.arange(len(rows)), torch.from_numpy(rows)] = -2.0  # exclude self
    exact = sims.topk(k, dim=1).indices.numpy()
    hits = sum(len(set(a) & set(e)) for a, e in zip(approx[rows], exact))
    return {"n": num_samples, "dim": dim, "k": k, "queries": len(rows), "recall": hits / (len(rows) * k),
            "ivf_s": seconds}


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "recording":
        n, c, e, b = (int(v) for v in sys.argv[2:6])
        d = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        options = dict(arg.split("=", 1) for arg in sys.argv[7:])
        print(json.dumps(run(n, c, e, b, d, wide=options.get("wide", "auto"),
                             analyze=options.get("analyze", "1") == "1")))
    elif kind == "checkpoint":
        print(json.dumps(checkpoint_growth()))
    elif kind == "knn":
        print(json.dumps(knn_recall(int(sys.argv[2]))))
