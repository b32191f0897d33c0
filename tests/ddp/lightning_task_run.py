"""Train the tiny multi-label model of tests/test_multilabel.py with DataQualityCallback, on 1 process
or under DDP (gloo, CPU), with the same global batches.

    python tests/ddp/lightning_task_run.py OUT.parquet DEVICES TRACKING_URI

Writes the callback's per-sample table (rank 0) to OUT.parquet. Used by tests/test_distributed.py.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from test_multilabel import MultiHotDataset, MultiLabelModule  # tests/ is on PYTHONPATH (tests/test_distributed.py)

from dq_plugins.lightning import DataQualityCallback


def main(out: str, devices: int, tracking_uri: str) -> None:
    pl.seed_everything(0, verbose=False)
    callback = DataQualityCallback(task="multilabel", tracking_uri=tracking_uri)
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, use_distributed_sampler=False,
    )

    def loader(dataset):  # rank r takes ids r, r + devices, ...: the one-process global batches
        sampler = None
        if devices > 1:
            sampler = DistributedSampler(dataset, num_replicas=devices, rank=trainer.global_rank, shuffle=False)
        return DataLoader(dataset, batch_size=16 // devices, sampler=sampler)

    trainer.fit(MultiLabelModule(), loader(MultiHotDataset(64)), loader(MultiHotDataset(32, seed=1)))
    if trainer.is_global_zero:
        callback.result.samples.to_parquet(out)
        Path(out + ".run_id").write_text(callback.run_id)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
