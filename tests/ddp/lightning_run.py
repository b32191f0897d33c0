"""Train the tiny blobs classifier with DataQualityCallback, on 1 process or under DDP (gloo, CPU).

    python tests/ddp/lightning_run.py OUT.parquet DEVICES TRACKING_URI [sparse]

Writes the callback's per-sample table (rank 0) to OUT.parquet. Used by tests/test_distributed.py.
``sparse``: sample ``k`` has id ``SPARSE_BASE + SPARSE_STEP * k`` (given as ``sample_ids=``), recorded in slots.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from conftest import BlobsDataset  # tests/ and the repository root are on PYTHONPATH (tests/test_distributed.py)
from test_lightning_callback import TinyClassifier

from dq_plugins.lightning import DataQualityCallback

SPARSE_BASE, SPARSE_STEP = 10**12, 7


class SparseIds(torch.utils.data.Dataset):
    """``dataset``'s items under the id ``SPARSE_BASE + SPARSE_STEP * index``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], "idx": SPARSE_BASE + SPARSE_STEP * index}


def main(out: str, devices: int, tracking_uri: str, sparse: bool = False) -> None:
    pl.seed_everything(0, verbose=False)
    per_rank_batch = 16 // devices  # same global batch (16) and sample order as one process
    ids = {split: SPARSE_BASE + SPARSE_STEP * torch.arange(n) for split, n in (("train", 96), ("validation", 32))}
    callback = DataQualityCallback(tracking_uri=tracking_uri, sample_ids=ids if sparse else None)
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, use_distributed_sampler=False,
    )
    train, val = BlobsDataset(96), BlobsDataset(32, seed=1)
    if sparse:
        train, val = SparseIds(train), SparseIds(val)

    def loader(dataset):
        # Lightning's own distributed sampler shuffles train data; an unshuffled one keeps the global
        # batches equal to the one-process run (rank r takes ids r, r + devices, ...).
        sampler = None
        if devices > 1:
            sampler = DistributedSampler(dataset, num_replicas=devices, rank=trainer.global_rank, shuffle=False)
        return DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler)

    trainer.fit(TinyClassifier(), loader(train), loader(val))
    if trainer.is_global_zero:
        callback.result.samples.to_parquet(out)
        Path(out + ".run_id").write_text(callback.run_id)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sparse=sys.argv[4:] == ["sparse"])
