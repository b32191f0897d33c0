import io
import math

import numpy as np
import pytest
import torch

from dq_plugins.recording.ledger import FLOAT_FIELDS, SplitLedger


def test_record_matches_hand_computed_values():
    ledger = SplitLedger(capacity=3, num_classes=2)
    # sample 0: logits (2, 0), label 0 -> p = e^2/(e^2+1); margin 2; correct
    # sample 2: logits (0, 0), label 1 -> p = 0.5; margin 0; pred 0 (argmax ties -> first) -> wrong
    ledger.record(torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([[2.0, 0.0], [0.0, 0.0]]), epoch=0)
    history = ledger.to_history()
    p0 = math.exp(2) / (math.exp(2) + 1)
    f = history.fields
    assert f["prob_given"][0, 0] == pytest.approx(p0, rel=1e-6)
    assert f["loss"][0, 0] == pytest.approx(-math.log(p0), rel=1e-6)
    assert f["margin"][0, 0] == pytest.approx(2.0)
    assert f["correct"][0, 0] == 1.0
    assert f["prob_sq_sum"][0, 0] == pytest.approx(p0**2 + (1 - p0) ** 2, rel=1e-6)
    assert f["prob_given"][0, 2] == pytest.approx(0.5)
    assert f["prob_pred"][0, 0] == pytest.approx(p0, rel=1e-6)  # predicted class 0: its probability
    assert f["prob_pred"][0, 2] == pytest.approx(0.5)
    assert f["margin"][0, 2] == pytest.approx(0.0)
    assert f["correct"][0, 2] == 0.0
    assert history.pred[0].tolist() == [0, -1, 0]
    assert np.isnan(f["loss"][0, 1])  # id 1 never seen: missing
    assert history.labels.tolist() == [0, -1, 1]
    assert history.seen.tolist() == [True, False, True]


def test_duplicates_within_an_epoch_are_averaged():
    ledger = SplitLedger(capacity=2, num_classes=2)
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    ledger.record(torch.tensor([1, 1]), torch.tensor([0, 0]), logits, epoch=0)
    f = ledger.to_history().fields
    assert f["margin"][0, 1] == pytest.approx((1.0 + -3.0) / 2)
    assert f["correct"][0, 1] == pytest.approx(0.5)


def test_non_finite_logits_are_missing_and_do_not_poison_other_samples():
    ledger = SplitLedger(capacity=3, num_classes=2)
    logits = torch.tensor([[float("nan"), 0.0], [1.0, float("inf")], [0.0, 1.0]])
    ledger.record(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), logits, epoch=0)
    counters = ledger.close_epoch()
    assert counters == {"out_of_range": 0, "non_finite": 2}
    history = ledger.to_history()
    for name in FLOAT_FIELDS:
        assert np.isnan(history.fields[name][0, :2]).all()
        assert np.isfinite(history.fields[name][0, 2])
    assert np.isnan(history.mean_probs[:2]).all() and np.isfinite(history.mean_probs[2]).all()


def test_out_of_range_rows_go_to_the_trash_slot():
    ledger = SplitLedger(capacity=2, num_classes=2)
    ledger.record(torch.tensor([0, 5, -1]), torch.tensor([0, 0, 0]), torch.zeros(3, 2), epoch=0)
    counters = ledger.close_epoch()
    assert counters["out_of_range"] == 2
    assert ledger.history[0]["loss"][0] == pytest.approx(math.log(2))


def test_epochs_close_in_order_and_a_reclosed_epoch_replaces_itself():
    ledger = SplitLedger(capacity=1, num_classes=2)
    ledger.record(torch.tensor([0]), torch.tensor([0]), torch.tensor([[1.0, 0.0]]), epoch=0)
    ledger.record(torch.tensor([0]), torch.tensor([0]), torch.tensor([[3.0, 0.0]]), epoch=1)  # closes epoch 0
    assert list(ledger.history) == [0]
    ledger.close_epoch()
    ledger.record(torch.tensor([0]), torch.tensor([0]), torch.tensor([[5.0, 0.0]]), epoch=1)  # replayed epoch 1
    history = ledger.to_history()
    assert history.epochs.tolist() == [0, 1]
    assert history.fields["margin"][:, 0].tolist() == [1.0, 5.0]


def test_mean_probs_average_every_occurrence():
    ledger = SplitLedger(capacity=1, num_classes=2)
    ledger.record(torch.tensor([0]), torch.tensor([0]), torch.tensor([[0.0, 0.0]]), epoch=0)
    ledger.record(torch.tensor([0]), torch.tensor([0]), torch.tensor([[100.0, 0.0]]), epoch=1)
    assert ledger.mean_probs()[0] == pytest.approx([0.75, 0.25], abs=1e-6)


def test_a_held_out_split_keeps_the_softmax_of_its_latest_pass():
    """Validation is never fitted: the final model's softmax is its out-of-sample prediction (what
    cleanlab expects), not a mean that the first, underfit evaluation drags down. Ids missing from
    the latest pass have no softmax; the per-epoch fields keep every pass; a checkpoint keeps the mode."""
    ledger = SplitLedger(capacity=2, num_classes=2)
    ledger.latest_probs_only = True
    ledger.record(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([[0.0, 0.0], [0.0, 0.0]]), epoch=0)
    ledger.close_epoch()
    ledger.record(torch.tensor([0]), torch.tensor([0]), torch.tensor([[math.log(3.0), 0.0]]), epoch=1)
    probs = ledger.mean_probs()
    assert probs[0] == pytest.approx([0.75, 0.25], abs=1e-6)  # the mean over both passes would be 0.625
    assert np.isnan(probs[1]).all()
    restored = SplitLedger.from_state_dict(ledger.state_dict())
    assert restored.latest_probs_only
    history = ledger.to_history()
    assert history.fields["prob_given"][:, 0].tolist() == pytest.approx([0.5, 0.75])
    assert history.early_probs is None


def test_low_precision_logits_are_upcast():
    ledger = SplitLedger(capacity=2, num_classes=3)
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.1, 0.0]], dtype=torch.bfloat16)
    ledger.record(torch.tensor([0, 1]), torch.tensor([2, 0]), logits, epoch=0)
    history = ledger.to_history()
    assert history.fields["loss"].dtype == np.float32
    assert history.fields["margin"][0].tolist() == pytest.approx([1.0, 0.4], abs=1e-2)


def test_state_dict_round_trips_through_a_weights_only_checkpoint():
    ledger = SplitLedger(capacity=3, num_classes=2)
    ledger.record(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), epoch=0)
    ledger.close_epoch()
    ledger.record(torch.tensor([2]), torch.tensor([1]), torch.tensor([[0.0, 1.0]]), epoch=1)  # pending
    buffer = io.BytesIO()
    torch.save(ledger.state_dict(), buffer)
    buffer.seek(0)
    restored = SplitLedger.from_state_dict(torch.load(buffer, weights_only=True))
    assert restored.pending_epoch == 1
    a, b = ledger.to_history(), restored.to_history()
    assert a.epochs.tolist() == b.epochs.tolist() == [0, 1]
    for name in FLOAT_FIELDS:
        np.testing.assert_array_equal(a.fields[name], b.fields[name])
    np.testing.assert_array_equal(a.mean_probs, b.mean_probs)


@pytest.mark.parametrize("capacity,num_classes,match", [(0, 2, "at least one sample id"), (3, 1, "at least 2 classes")])
def test_invalid_sizes_are_rejected(capacity, num_classes, match):
    with pytest.raises(ValueError, match=match):
        SplitLedger(capacity, num_classes)


@pytest.mark.parametrize("stage_rows", [5, 7, 64])
def test_staged_record_equals_the_unstaged_one_across_flushes_and_a_checkpoint(stage_rows):
    """Batches of 3, 9, 4 and 2 rows over two epochs (a 5- or 7-row stage flushes mid-epoch), with a
    mid-epoch checkpoint read: every stage size gives the record of one big stage."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for epoch in range(2):
        for size in (3, 9, 4, 2):
            ids = torch.randint(0, 12, (size,), generator=generator)
            labels = torch.randint(0, 3, (size,), generator=generator)
            logits = torch.randn(size, 3, generator=generator)
            batches.append((ids, labels, logits, epoch))

    def run(rows):
        ledger = SplitLedger(capacity=12, num_classes=3, stage_rows=rows)
        ledger.early_epochs = 1
        for i, (ids, labels, logits, epoch) in enumerate(batches):
            ledger.record(ids, labels, logits, epoch)
            if i == 5:  # a checkpoint in the middle of epoch 1 sees the staged rows
                state = ledger.state_dict()
        return ledger.to_history(), state

    staged, staged_state = run(stage_rows)
    reference, reference_state = run(10_000)
    for name in FLOAT_FIELDS:
        np.testing.assert_allclose(staged.fields[name], reference.fields[name], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(staged.pred, reference.pred)
    np.testing.assert_allclose(staged.mean_probs, reference.mean_probs, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(staged.early_probs, reference.early_probs, rtol=1e-6, equal_nan=True)
    torch.testing.assert_close(staged_state["sums"], reference_state["sums"])
    assert reference_state["count"].sum() > 0


def test_the_session_keeps_the_early_window_for_train_and_the_latest_pass_for_validation():
    from dq_plugins.recording.session import DynamicsSession, SessionConfig

    session = DynamicsSession(SessionConfig())
    session.set_max_epochs(10)
    for split in ("train", "validation"):
        session.set_capacity(split, 4)
        session.record(split, 0, torch.arange(4), torch.tensor([0, 1, 0, 1]), torch.zeros(4, 2))
    train, validation = session.ledgers["train"], session.ledgers["validation"]
    assert train.early_epochs == 2 and not train.latest_probs_only
    assert validation.early_epochs == 0 and validation.latest_probs_only


def test_session_state_of_a_newer_version_is_refused_and_an_old_one_loads():
    from dq_plugins.recording.session import STATE_VERSION, DynamicsSession, SessionConfig

    session = DynamicsSession(SessionConfig())
    session.set_capacity("train", 4)
    session.record("train", 0, torch.arange(4), torch.tensor([0, 1, 0, 1]), torch.zeros(4, 2))
    state = session.state_dict()
    assert state["version"] == 2  # dense ids: what dq_plugins before the slot tables (version 3) reads
    with pytest.raises(ValueError, match=rf"state of version {STATE_VERSION + 1}.*reads versions up to "
                                         rf"{STATE_VERSION}.*HINT: upgrade dq_plugins"):
        DynamicsSession(SessionConfig()).load_state_dict({**state, "version": STATE_VERSION + 1})
    restored = DynamicsSession(SessionConfig())
    restored.load_state_dict({k: v for k, v in state.items() if k != "version"})  # written before the version key
    assert set(restored._restored) == {"train"}


def test_concatenate_converts_batches_of_several_devices_one_by_one():
    """Batches on two devices (``cat`` refuses them together): each is moved first; the meta device stands in
    for a GPU, so this runs on CPU."""
    from dq_plugins.recording.stage import concatenate

    with pytest.raises(RuntimeError, match="not on the expected device"):
        torch.cat((torch.arange(3), torch.zeros(2, dtype=torch.int64, device="meta")))
    out = concatenate((torch.arange(3), torch.zeros(2, dtype=torch.int32, device="meta")), torch.device("meta"),
                      torch.float32)
    assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == (5,)
    same = concatenate((torch.arange(3), torch.tensor([1.5])), torch.device("cpu"), torch.float32)
    torch.testing.assert_close(same, torch.tensor([0.0, 1.0, 2.0, 1.5]))


def test_concatenate_raises_cats_own_error_without_retrying():
    """A batch of another width is ``cat``'s error, raised as it is (not caught and retried as a device mismatch)."""
    from dq_plugins.recording.stage import concatenate

    with pytest.raises(RuntimeError, match="Sizes of tensors must match") as raised:
        concatenate((torch.zeros(2, 3), torch.zeros(2, 4)), torch.device("cpu"), torch.float32)
    assert raised.value.__context__ is None  # raised once, not during the handling of an earlier error
