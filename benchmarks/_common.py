"""Pieces shared by the benchmarks: a fast dict-batch loader, a small CNN, a trainer, RESULTS.md.

The benchmarks run from the repository root as modules (``python -m benchmarks.overhead``) and import
``recipes.common`` (data, noise, the example MLP ``recipes.common.models.MLPClassifier``) and this module.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO / "benchmarks" / "RESULTS.md"


@contextlib.contextmanager
def working_directory(path: str | Path) -> Iterator[None]:
    """Run the block in ``path``: MLflow's sqlite store puts artifacts under ``./mlruns`` and the
    callback's fallback folder is relative, so the benchmarks' runs must not land in the repository."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def quiet_lightning() -> None:
    """Silence Lightning's advice that does not apply to an in-memory CPU benchmark."""
    for pattern in (
        ".*does not have many workers.*",
        ".*GPU available but not used.*",
        ".*TPU available but not used.*",
        ".*LeafSpec.*",
        ".*number of training batches.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


class TensorDictDataset(Dataset):
    """In-memory ``(x, y)`` whose items are whole batches: ``ds[list_of_ids]`` -> dict of tensors.

    Used with a ``BatchSampler`` as the loader's sampler and ``batch_size=None``, so one batch is
    one indexing operation instead of ``B`` item look-ups plus a collate.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.inputs = torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Sequence[int]) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(index, dtype=torch.int64)
        return {"idx": ids, "inputs": self.inputs[ids], "labels": self.labels[ids]}


def batch_loader(dataset: TensorDictDataset, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """A loader of dict batches; shuffled with its own seeded generator when ``shuffle``."""
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)


class SmallCNN(pl.LightningModule):
    """A small CNN for 28x28 inputs given as 784 floats: 2 x (conv 3x3, ReLU, max-pool), linear."""

    def __init__(self, num_classes: int = 10, channels: int = 16, lr: float = 1e-3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * channels * 7 * 7, num_classes),
        )
        self.lr = lr

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["inputs"])
        return {"loss": F.cross_entropy(logits, batch["labels"]), "logits": logits}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def make_trainer(max_epochs: int, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """A silent single-CPU trainer without logger, checkpoints or validation."""
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


@torch.no_grad()
def predict_logits(module: nn.Module, features: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``module`` in eval mode for every row of ``features``, as a float32 CPU tensor."""
    module.eval()
    inputs = torch.as_tensor(features, dtype=torch.float32)
    out = torch.cat([module(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])
    module.train()
    return out.float().cpu()


def machine_line() -> str:
    """CPU model, core count, Python / torch / Lightning versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cores} cores available (shared with other jobs), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), pytorch-lightning {pl.__version__}, Python {platform.python_version()}"
    )


def git_revision() -> str:
    """Short commit of the working tree, with ``+dirty`` when it has changes; ``unknown`` outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(name: str, body: str, path: Path = RESULTS_PATH) -> None:
    """Replace the ``<!-- name:start -->`` .. ``<!-- name:end -->`` section of ``path`` (append if absent).

    Other sections, owned by other scripts, are left byte for byte as they are.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the script it names.\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
