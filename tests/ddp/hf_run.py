"""Train a tiny randomly initialised BERT with the HF ``DataQualityCallback``, on 1 process or under torchrun.

    python tests/ddp/hf_run.py OUT.parquet TRACKING_URI [tokens]                          # one process
    python -m torch.distributed.run --nproc_per_node 2 tests/ddp/hf_run.py OUT.parquet TRACKING_URI [tokens]

CPU, gloo. The global batch is 16 in both cases (16 per device on one process, 8 per device on two):
accelerate shards the batches of the Trainer's seeded sampler across ranks (rank r takes batches
r, r + world, ...), so the two ranks together train on the same global batches, in the same order,
as one process. Rank 0 writes the callback's per-sample table to OUT.parquet and the MLflow run id
to OUT.parquet.run_id. With ``tokens``: a token classification BERT on the tagged sequences of
tests/test_transformers_tasks.py at learning rate 0 (its loss is a mean over each rank's labelled tokens,
which weighs tokens differently from one process, so only a model that does not learn gives the same record
both ways), and the per-token table goes to OUT.parquet.tokens. Used by tests/test_distributed.py.
"""

import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from test_transformers_callback import make_dataset, make_model  # tests/ is on PYTHONPATH (tests/test_distributed.py)

from dq_plugins.transformers import DataQualityCallback

GLOBAL_BATCH = 16


def main(out: str, tracking_uri: str, task: str = "single_label") -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if task == "tokens":
        from transformers import BertForTokenClassification

        from test_transformers_tasks import NUM_TAGS, bert_config, token_dataset

        model, train, val = BertForTokenClassification(bert_config(NUM_TAGS)), token_dataset(64, 0), token_dataset(24, 1)
    else:
        model, train, val = make_model(), make_dataset(64, seed=0), make_dataset(24, seed=1)
    callback = DataQualityCallback(tracking_uri=tracking_uri)
    args = TrainingArguments(
        output_dir=str(Path(out).parent / f"hf_out_{world}"), num_train_epochs=3,
        learning_rate=0.0 if task == "tokens" else 5e-3,
        per_device_train_batch_size=GLOBAL_BATCH // world, per_device_eval_batch_size=8, use_cpu=True,
        ddp_backend="gloo" if world > 1 else None, report_to="none", save_strategy="no", eval_strategy="epoch",
        disable_tqdm=True, logging_strategy="no", seed=0,
        # transformers multiplies the loss by the world size for models whose forward takes **kwargs
        # (BERT does, yet its loss ignores num_items_in_batch): DDP would train with twice the gradient.
        average_tokens_across_devices=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[callback])
    trainer.train()
    if trainer.is_world_process_zero():
        callback.result.samples.to_parquet(out)
        if task == "tokens":
            callback.result.tables["tokens"].to_parquet(out + ".tokens")
        Path(out + ".run_id").write_text(callback.run_id)
    else:
        assert callback.run_id is None and callback.result is None, "only rank 0 opens a run and analyses"
    if torch.distributed.is_initialized():
        # PyTorch's advice: a gloo group left to the interpreter's exit can abort a rank (SIGABRT, "terminate
        # called without an active exception") after everything is done (pytorch/pytorch#190489); seen here twice.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:4])
