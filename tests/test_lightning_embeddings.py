"""Embedding capture in the Lightning adapter: sources, pooling, the post-fit pass, switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import BlobsDataset
from dq_plugins.recording.embeddings import EmbeddingBuffer, pool
from dq_plugins.lightning import DataQualityCallback
from test_lightning_callback import TinyClassifier, fit


def captured(callback, split="train"):
    return callback.session.embeddings[split].to_numpy()


def test_default_captures_the_input_of_the_classifier_head(tracking_uri):
    module = TinyClassifier(hidden=16)
    callback, _ = fit(DataQualityCallback(), module=module, max_epochs=1)
    ids, values = captured(callback)
    assert ids.tolist() == list(range(96)) and values.shape == (96, 16) and values.dtype == np.float16


def test_step_output_embeddings_take_precedence(tracking_uri):
    class WithEmbeddings(TinyClassifier):
        def training_step(self, batch, batch_idx):
            out = self._step(batch)
            return {**out, "embeddings": batch["inputs"]}

    callback, _ = fit(module=WithEmbeddings(), max_epochs=1)
    ids, values = captured(callback)
    assert values.shape == (96, 8)  # the inputs, not the 16-wide head input


def test_embedding_module_output_is_mean_pooled_under_the_attention_mask():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask).tolist() == [[2.0, 2.0]]
    assert pool(hidden, mode="cls").tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match=r"shape \(batch, dim\) or \(batch, tokens, dim\)"):
        pool(torch.zeros(2, 3, 4, 5))


def test_named_embedding_module(tracking_uri):
    callback, _ = fit(DataQualityCallback(embedding_module="backbone"), max_epochs=1)
    assert captured(callback)[1].shape == (96, 16)


def test_forward_fn_pass_refreshes_embeddings_with_the_final_model(tracking_uri):
    module = TinyClassifier()
    callback, _ = fit(DataQualityCallback(forward_fn=lambda m, b: m(b["inputs"])), module=module, max_epochs=2,
                      val=BlobsDataset(20, seed=3))
    ids, values = captured(callback)
    train = callback.session.ledgers["train"]
    with torch.no_grad():
        expected = module.backbone(BlobsDataset(96).inputs).numpy()
    np.testing.assert_allclose(values.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert captured(callback, "validation")[1].shape == (20, 16)
    assert train.capacity == 96


def test_embeddings_false_switches_capture_off(tracking_uri):
    callback, _ = fit(DataQualityCallback(embeddings=False), max_epochs=1)
    assert callback.session.embeddings == {}


def test_a_guessed_head_of_the_wrong_width_warns_and_switches_off(tracking_uri):
    class ExtraLinear(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Linear(3, 7)  # registered last: not the head

    with pytest.warns(UserWarning, match="last nn.Linear has 7 outputs, not the 3 classes"):
        callback, _ = fit(module=ExtraLinear(), max_epochs=1)
    assert callback.session.embeddings == {}


def test_buffer_keeps_the_latest_row_and_drops_bad_ones():
    buffer = EmbeddingBuffer(capacity=3, dim=2, device="cpu")
    buffer.write(torch.tensor([0, 1]), torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    buffer.write(torch.tensor([1, 7, 2]), torch.tensor([[5.0, 5.0], [9.0, 9.0], [float("nan"), 0.0]]))
    ids, values = buffer.to_numpy()
    assert ids.tolist() == [0, 1] and values.tolist() == [[1.0, 1.0], [5.0, 5.0]]
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        buffer.write(torch.tensor([0]), torch.zeros(1, 3))


def test_a_stage_spanning_epochs_keeps_each_samples_latest_embedding():
    """One fold holding 20 epochs of 5,000 samples (stage of 100k rows): every sample gets the row of
    its last epoch. Before, ``index_copy_`` kept an arbitrary occurrence: on the MNIST recipe, 946 of
    4,000 embeddings differed between two runs of identical training."""
    capacity, dim, epochs = 5000, 8, 20
    buffer = EmbeddingBuffer(capacity=capacity, dim=dim, device="cpu", stage_rows=capacity * epochs)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        order = torch.randperm(capacity, generator=generator)
        for batch in order.split(128):
            buffer.write(batch, torch.full((len(batch), dim), float(epoch)) + batch.unsqueeze(1) / capacity)
    ids, values = buffer.to_numpy()
    expected = (epochs - 1) + torch.arange(capacity).unsqueeze(1).expand(-1, dim) / capacity
    assert ids.tolist() == list(range(capacity))
    np.testing.assert_allclose(values, expected.numpy(), rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cpu_fold_batch_by_batch_writes_what_the_concatenated_fold_writes(dtype):
    # duplicates across batches (the latest wins), NaN and inf rows, ids out of range, values beyond fp16's range
    generator = torch.Generator().manual_seed(0)
    writes = []
    for _ in range(6):
        ids = torch.randint(-2, 42, (16,), generator=generator)
        values = torch.randn(16, 5, generator=generator) * 3e4
        values[ids % 7 == 0, 1] = float("nan")
        values[ids % 11 == 0, 2] = float("inf")
        writes.append((ids, values.to(dtype)))
    by_batch, concatenated = (EmbeddingBuffer(capacity=40, dim=5, device="cpu") for _ in range(2))
    for buffer in (by_batch, concatenated):
        for ids, values in writes:
            buffer.write(ids, values)
    by_batch.flush()  # the CPU path: batch by batch
    concatenated._fold(*concatenated._stage.take(torch.device("cpu"), (torch.int64, torch.float32)))
    assert torch.equal(by_batch._seen, concatenated._seen) and by_batch._seen[:40].any()
    assert by_batch._values[:40].numpy().tobytes() == concatenated._values[:40].numpy().tobytes()
    assert by_batch._values[:40].abs().max() == 65504  # clamped, not inf


def test_last_occurrence_routes_earlier_duplicates_to_the_trash_slot():
    from dq_plugins.recording.stage import last_occurrence

    slots = torch.tensor([2, 0, 2, 1, 0, 3])
    assert last_occurrence(slots, trash=3).tolist() == [3, 3, 2, 1, 0, 3]
