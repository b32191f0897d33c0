"""A GPU check, ready to run on a CUDA machine: no host sync from the callback, step overhead, device memory.

Three parts, one short script (``python -m benchmarks.gpu_check``; a few minutes on one GPU):

1. **No host sync.** A Lightning fit of a ResNet-18-sized model with the callback, under
   ``torch.cuda.set_sync_debug_mode("error")`` from ``on_train_batch_start`` to ``on_train_batch_end``
   of every batch but the first (whose ids and labels are range-checked once, with one sync, by design)
   (of a callback placed after the recording callback, so its hooks run inside the window, flushes
   included): any ``.item()``, ``.cpu()`` or synchronizing copy in a step raises. Epoch ends (where
   the record moves to the host once) are outside the window.
2. **Step overhead.** The same fit with and without the callback, interleaved, median step time
   after a warm-up; the ratio is the recording's overhead on a real-sized model.
3. **ImageNet-shaped recording.** Synthetic logits, 1.28M samples x 1000 classes x ``--epochs``
   epochs in batches of 4096, straight through the ledger on the GPU: ``torch.cuda.max_memory_allocated``
   against the callback's ``dq.memory.device_peak_mb`` bound (target <= 256 MB) and seconds per epoch.

``--dry-run`` runs every part on the CPU at tiny sizes (no sync check: there is no CUDA), to keep
the script working where no GPU is available. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

REPO = Path(__file__).resolve().parents[1]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with batch norm and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet18(pl.LightningModule):
    """ResNet-18 (11.7M parameters at 1000 classes; ``width`` scales the channels for the dry run)."""

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = w
        for cout, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        logits = self(batch["inputs"])
        return {"loss": F.cross_entropy(logits, batch["labels"]), "logits": logits}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class RandomImages(Dataset):
    """``N`` random images (kept on the device when given), whole batches per ``__getitem__``."""

    def __init__(self, n: int, size: int, classes: int, device: str) -> None:
        gen = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(n, 3, size, size, generator=gen).to(device)
        self.labels = torch.randint(0, classes, (n,), generator=gen).to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        ids = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        return {"idx": ids, "inputs": self.inputs[ids], "labels": self.labels[ids]}


class SyncWindow(pl.Callback):
    """``set_sync_debug_mode("error")`` from each batch start to its end; step times."""

    def __init__(self, check: bool) -> None:
        self.check, self.times, self._t = check, [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        # the first batch of a split is checked once with a host sync by design (ids and labels in range)
        if self.check and trainer.global_step > 0:
            torch.cuda.set_sync_debug_mode("error")
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.check:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()  # outside the window: time the whole step
        self.times.append(time.perf_counter() - self._t)


def fit(with_callback: bool, args, device: str, check: bool) -> list[float]:
    """One fit; the step times after the first epoch's warm-up."""
    from dq_plugins.lightning import DataQualityCallback

    data = RandomImages(args.samples, args.image, args.classes, "cuda" if device == "cuda" else "cpu")
    loader = DataLoader(data, sampler=BatchSampler(RandomSampler(range(len(data))), args.batch, drop_last=False),
                        batch_size=None)
    window = SyncWindow(check)
    callbacks = [DataQualityCallback(embeddings=False, tracking_uri=f"sqlite:///{tempfile.mkdtemp()}/m.db"), window] \
        if with_callback else [window]
    trainer = pl.Trainer(max_epochs=args.fit_epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator=device, devices=1,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(ResNet18(args.classes, args.width), loader)
    steps_per_epoch = -(-args.samples // args.batch)
    return window.times[steps_per_epoch:]


def imagenet_recording(args, device: str) -> dict:
    """Synthetic logits through the ledger on ``device``: peak device memory and seconds per epoch."""
    from dq_plugins.recording.ledger import SplitLedger

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    n, c = args.rec_samples, args.rec_classes
    ledger = SplitLedger(n, c, device)
    ledger.early_epochs = 1
    gen = torch.Generator(device=device).manual_seed(0)
    labels = torch.randint(0, c, (n,), device=device, generator=gen)
    seconds = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        order = torch.randperm(n, device=device, generator=gen)
        for begin in range(0, n, 4096):
            ids = order[begin:begin + 4096]
            ledger.record(ids, labels[ids], torch.randn(len(ids), c, device=device, generator=gen), epoch)
        ledger.close_epoch()
        seconds.append(time.perf_counter() - start)
    result = {"samples": n, "classes": c, "epochs": args.epochs, "seconds_per_epoch": seconds,
              "callback_device_bound_mb": ledger.device_bytes() / 2**20, "host_mb": ledger.host_bytes() / 2**20}
    if device == "cuda":
        result["cuda_max_allocated_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    probs = ledger.mean_probs()
    result["mean_probs_rows_seen"] = int((~torch.from_numpy(probs[:, 0]).isnan()).sum())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no sync check")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    device = "cuda" if cuda else "cpu"
    if args.dry_run:
        args.samples, args.image, args.classes, args.batch, args.width, args.fit_epochs = 64, 32, 10, 16, 8, 2
        args.rec_samples, args.rec_classes, args.epochs = 20_000, 1000, 2
    else:
        args.samples, args.image, args.classes, args.batch, args.width, args.fit_epochs = 4096, 64, 1000, 256, 64, 3
        args.rec_samples, args.rec_classes = 1_281_167, 1000
    from benchmarks._common import quiet_lightning

    quiet_lightning()
    out: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dry_run": args.dry_run}
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            fit(True, args, device, check=cuda)  # 1. raises on any host sync inside a step
            out["sync_check"] = "passed" if cuda else "not run (no CUDA)"
            plain, hooked = [], []
            for i in range(2):  # 2. interleaved
                for flag in ((True, False) if i % 2 else (False, True)):
                    (hooked if flag else plain).extend(fit(flag, args, device, check=False))
            out["step_ms_plain"] = 1000 * statistics.median(plain)
            out["step_ms_with_callback"] = 1000 * statistics.median(hooked)
            out["step_overhead_ratio"] = statistics.median(hooked) / statistics.median(plain)
            out["imagenet_recording"] = imagenet_recording(args, device)  # 3.
        finally:
            os.chdir(previous)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
