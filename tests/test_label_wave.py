"""Label Wave: the first local minimum of the smoothed prediction changes ends the token early window."""

from __future__ import annotations

import numpy as np
import torch

from dq_plugins.recording import wave as wave_module
from dq_plugins.recording.tokens import TokenLedger
from dq_plugins.recording.wave import smoothed_changes, wave_epoch


FLIPS = [0, 120, 60, 20, 80, 100, 100]
"""Tokens whose arg-max changes in each epoch: changes 120, 60, 20, 80, 100, 100 -> smoothed minimum at epoch 2."""


def _flipping_epochs(seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Tags (40, 5) and per-epoch logits (40, 5, 3) whose arg-max changes for ``FLIPS[e]`` tokens in epoch e."""
    rng = np.random.default_rng(seed)
    tags = torch.tensor(rng.integers(0, 3, (40, 5)))
    current = torch.tensor(rng.normal(size=(200, 3)), dtype=torch.float32)
    per_epoch = []
    for n in FLIPS:
        current = current.clone()
        current[:n] = current[:n].roll(1, dims=1)
        per_epoch.append(current.reshape(40, 5, 3))
    return tags, per_epoch


def _run_tokens(ledger: TokenLedger, tags: torch.Tensor, per_epoch: list[torch.Tensor],
                epochs: range | None = None) -> TokenLedger:
    """Record ``per_epoch[e]`` for every sequence in each epoch of ``epochs`` (all by default), closing each."""
    for epoch in epochs if epochs is not None else range(len(per_epoch)):
        ledger.record(torch.arange(len(tags)), tags, per_epoch[epoch], epoch=epoch)
        ledger.close_epoch()
    return ledger


def _wave_tokens() -> TokenLedger:
    """A 40 x 5 x 3 token ledger following the Label Wave."""
    ledger = TokenLedger(capacity=40, width=5, num_classes=3)
    assert ledger.enable_wave()
    return ledger


def test_smoothing_is_a_centred_three_value_mean():
    np.testing.assert_allclose(smoothed_changes([9, 3, 6, 0]), [6.0, 6.0, 3.0, 3.0])


def test_first_local_minimum_of_the_smoothed_changes():
    # falls while learning, rises while memorising, falls again once everything is fitted
    changes = [900, 400, 200, 100, 90, 150, 200, 120, 20, 5]
    assert wave_epoch(changes) == 4  # smoothed: 650, 500, 233, 130, 113, 147, ...
    assert wave_epoch([900, 400, 200, 100, 60, 30, 10, 5, 2]) is None  # no rise: no wave
    assert wave_epoch([5, 100]) is None  # one comparison of two equal end values
    assert wave_epoch([]) is None and wave_epoch([3]) is None


def test_settled_minimum_does_not_rest_on_an_end_value():
    # the last value lifts the end average: a minimum by the full rule, not yet a settled one
    changes = [900, 800, 500, 50, 200, 300]  # smoothed: 850, 733, 450, 250, 183, 250 (the end mean of 2)
    assert wave_epoch(changes) == 4
    assert wave_epoch(changes, settled=True) is None
    assert wave_epoch(changes + [400], settled=True) == 4


def test_token_ledger_takes_the_window_up_to_the_wave():
    tags, per_epoch = _flipping_epochs(0)
    ledger = _wave_tokens()
    ledger.early_epochs = 1
    _run_tokens(ledger, tags, per_epoch)
    assert ledger.wave.changes == FLIPS[1:6]  # settled at the close of epoch 5: nothing more is counted
    assert len(ledger.wave.snapshots) == 1  # settled: one copy kept
    history = ledger.to_history()
    assert history.early_window_end == 2
    seen = [torch.softmax(logits, dim=-1) for logits in per_epoch]
    np.testing.assert_allclose(history.early_probs, torch.stack(seen[:3]).mean(0).numpy(), rtol=1e-5)
    assert not np.allclose(history.early_probs, seen[0].numpy())  # early_epochs = 1: what it replaced


def test_no_wave_keeps_the_fixed_window():
    ledger = TokenLedger(capacity=4, width=2, num_classes=3)
    ledger.enable_wave()
    ledger.early_epochs = 2
    tags = torch.zeros(4, 2, dtype=torch.long)
    voting_one = [8, 0, 6, 2, 5, 4, 4]  # tokens predicting tag 1: changes 8, 6, 4, 3, 1, 0 fall and never rise
    first_two = []
    for epoch, k in enumerate(voting_one):
        logits = torch.zeros(8, 3)
        logits[:, 0] = 1.0
        logits[:k, 1] = 2.0
        if epoch < 2:
            first_two.append(torch.softmax(logits, dim=1))
        ledger.record(torch.arange(4), tags, logits.reshape(4, 2, 3), epoch=epoch)
        ledger.close_epoch()
    assert ledger.wave.changes == [8, 6, 4, 3, 1, 0]
    history = ledger.to_history()
    assert history.early_window_end is None
    np.testing.assert_allclose(history.early_probs, torch.stack(first_two).mean(0).reshape(4, 2, 3).numpy(), rtol=1e-6)


def test_wave_survives_a_checkpoint_and_stays_off_above_its_budget(monkeypatch):
    tags, per_epoch = _flipping_epochs(1)
    straight = _run_tokens(_wave_tokens(), tags, per_epoch).to_history()
    state = _run_tokens(_wave_tokens(), tags, per_epoch, range(4)).state_dict()  # before the minimum settles
    assert len(state["wave"]["snapshots"]) == 3  # three copies in it
    resumed = _run_tokens(TokenLedger.from_state_dict(state), tags, per_epoch, range(4, 7)).to_history()
    assert resumed.early_window_end == straight.early_window_end == 2
    np.testing.assert_array_equal(resumed.early_probs, straight.early_probs)

    monkeypatch.setattr(wave_module, "WAVE_SNAPSHOT_MAX_BYTES", 40 * 5 * 3 * 4 - 1)
    small = TokenLedger(capacity=40, width=5, num_classes=3)
    assert not small.enable_wave()
    assert _run_tokens(small, tags, per_epoch).to_history().early_window_end is None


def _ddp_wave_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    tags, per_epoch = _flipping_epochs(2)
    ledger = TokenLedger(capacity=40, width=5, num_classes=3)
    ledger.enable_wave()
    rows = torch.arange(rank, 40, world)  # each rank sees half of the sequences every epoch
    for epoch, logits in enumerate(per_epoch):
        ledger.record(rows, tags[rows], logits[rows], epoch=epoch)
        ledger.close_epoch()
    history = ledger.to_history()
    if rank == 0:
        np.savez(out_file, early=history.early_probs, end=-1 if history.early_window_end is None
                 else history.early_window_end, changes=np.asarray(ledger.wave.changes))
    dist.destroy_process_group()


def test_wave_under_torch_distributed_matches_one_process(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "wave.npz")
    mp.spawn(_ddp_wave_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    single = _run_tokens(_wave_tokens(), *_flipping_epochs(2))
    expected = single.to_history()
    result = np.load(out)
    assert int(result["end"]) == expected.early_window_end == 2
    assert result["changes"].tolist() == single.wave.changes
    np.testing.assert_allclose(result["early"], expected.early_probs, rtol=1e-6)


def _single_label_epochs(seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Labels (200,) and per-epoch logits (200, 3) whose arg-max changes for 0, 120, 60, 20, 80, 100, 100 samples."""
    tags, per_epoch = _flipping_epochs(seed)
    return tags.reshape(-1), [logits.reshape(-1, 3) for logits in per_epoch]


def _run_single(ledger, labels, per_epoch, epochs):
    for epoch in epochs:
        for rows in torch.arange(200).split(64):
            ledger.record(rows, labels[rows], per_epoch[epoch][rows], epoch=epoch)
        ledger.close_epoch()
    return ledger


def test_single_label_flags_window_ends_at_the_wave_and_survives_checkpoint_and_raw_record(tmp_path):
    from dq_plugins.raw_record import load_history, save_history
    from dq_plugins.recording.ledger import SplitLedger

    labels, per_epoch = _single_label_epochs(3)
    ledger = SplitLedger(capacity=200, num_classes=3)
    ledger.early_epochs = 1
    assert ledger.enable_wave()
    history = _run_single(ledger, labels, per_epoch, range(7)).to_history()
    assert history.early_window_end == 2 and ledger.wave.changes == [120, 60, 20, 80, 100]
    expected = torch.stack([torch.softmax(per_epoch[e], dim=1) for e in range(3)]).mean(0).numpy()
    np.testing.assert_allclose(history.wave_probs, expected, rtol=1e-5)
    np.testing.assert_allclose(history.early_probs, torch.softmax(per_epoch[0], dim=1).numpy(), rtol=1e-5)

    save_history(history, tmp_path / "train.npz")
    loaded = load_history(tmp_path / "train.npz")
    assert loaded.early_window_end == 2
    np.testing.assert_array_equal(loaded.wave_probs, history.wave_probs)

    first = SplitLedger(capacity=200, num_classes=3)
    first.early_epochs = 1
    first.enable_wave()
    state = _run_single(first, labels, per_epoch, range(4)).state_dict()
    resumed = _run_single(SplitLedger.from_state_dict(state), labels, per_epoch, range(4, 7)).to_history()
    assert resumed.early_window_end == 2
    np.testing.assert_array_equal(resumed.wave_probs, history.wave_probs)

    fixed = _run_single(SplitLedger(capacity=200, num_classes=3), labels, per_epoch, range(7)).to_history()
    assert fixed.wave_probs is None and fixed.early_window_end is None  # not enabled: as before


def _history_and_disputing_window(rows: int, classes: int, epochs: int, disputed_rows: int):
    """A single-label history of a model that fits its labels better each epoch (fixed early window: 2 epochs) and a
    confident ``(rows, classes)`` window softmax that votes for the next class on ``disputed_rows`` random rows:
    ``(history, window, disputed)``."""
    from dq_plugins.recording.ledger import SplitLedger

    rng = np.random.default_rng(0)
    labels = torch.tensor(rng.integers(0, classes, rows))
    ledger = SplitLedger(capacity=rows, num_classes=classes)
    ledger.early_epochs = 2
    for epoch in range(epochs):
        noise = torch.tensor(rng.normal(size=(rows, classes)), dtype=torch.float32)
        ledger.record(torch.arange(rows), labels, torch.nn.functional.one_hot(labels, classes).float() * (1 + epoch)
                      + noise, epoch=epoch)
        ledger.close_epoch()
    history = ledger.to_history()
    votes = history.labels.copy()
    disputed = rng.choice(rows, disputed_rows, replace=False)
    votes[disputed] = (votes[disputed] + 1) % classes
    window = torch.softmax(torch.nn.functional.one_hot(torch.tensor(votes), classes).float() * 3, dim=1).numpy()
    return history, window, disputed


def test_single_label_analysis_takes_its_flags_from_the_wave_window():
    from dataclasses import replace

    from dq_plugins.analysis.pipeline import analyze_split, early_window_flags

    history, wave, disputed = _history_and_disputing_window(300, 3, 6, 30)  # the window disputes 30 labels
    with_wave = analyze_split(replace(history, wave_probs=wave, early_window_end=3), "train")
    without = analyze_split(history, "train")
    # the score keeps its fixed window: only the flags move
    np.testing.assert_array_equal(with_wave.samples["mislabel_score"], without.samples["mislabel_score"])
    expected = early_window_flags(history.labels, wave, with_wave.samples["mislabel_score"].to_numpy())
    assert expected is not None and expected.is_label_issue.any()
    flagged = with_wave.samples["is_label_issue"].to_numpy()
    np.testing.assert_array_equal(flagged, expected.is_label_issue)
    assert set(np.flatnonzero(flagged)) <= set(disputed)  # only where the wave window disagrees
    assert not np.array_equal(flagged, without.samples["is_label_issue"].to_numpy())


def test_the_window_the_wave_chose_is_a_metric():
    from dataclasses import dataclass

    from dq_plugins.analysis.trust import early_window_metrics

    @dataclass
    class Record:
        early_window_end: int | None

    assert early_window_metrics(Record(7), "train") == {"dq.early_window_end": 7.0}
    assert early_window_metrics(Record(None), "train") == {}


def test_the_copies_count_in_the_host_memory_of_the_ledger():
    from dq_plugins.recording.ledger import SplitLedger

    labels, per_epoch = _single_label_epochs(4)
    plain = _run_single(SplitLedger(capacity=200, num_classes=3), labels, per_epoch, range(4))
    waved = SplitLedger(capacity=200, num_classes=3)
    waved.enable_wave()
    _run_single(waved, labels, per_epoch, range(4))
    copy = 200 * 3 * 4 + 200 * 4  # float32 sums and int32 counts of one close
    assert waved.wave.peak_bytes == 3 * copy  # three closes open at once before the minimum settles
    assert waved.host_bytes() - plain.host_bytes() == 3 * copy


def test_token_raw_record_keeps_the_window_end(tmp_path):
    from dq_plugins.raw_record import load_task_history, save_task_history

    history = _run_tokens(_wave_tokens(), *_flipping_epochs(5)).to_history()
    save_task_history(history, tmp_path / "train.npz")
    loaded = load_task_history(tmp_path / "train.npz")
    assert loaded.early_window_end == history.early_window_end == 2
    np.testing.assert_array_equal(loaded.early_probs, history.early_probs)


def test_a_settled_wave_window_is_trusted_without_the_fit_test():
    """Two classes, 30% of the given labels disputed by the window: it fits the labels 0.70 < 0.75 (halfway from
    chance), so only a window that ends at a settled minimum (3 epochs recorded after it) sets the flags."""
    from dataclasses import replace

    from dq_plugins.analysis.pipeline import analyze_split, early_window_cl, early_window_flags, wave_settled

    history, window, disputed = _history_and_disputing_window(400, 2, 7, 120)
    assert early_window_cl(history.labels, window) is None  # the fit test refuses it
    assert early_window_cl(history.labels, window, require_fit=False) is not None

    settled = replace(history, wave_probs=window, early_window_end=3)  # epochs 4, 5, 6 after it
    unsettled = replace(history, wave_probs=window, early_window_end=4)  # two epochs after: could still move
    assert wave_settled(settled) and not wave_settled(unsettled) and not wave_settled(history)
    samples = analyze_split(settled, "train").samples
    flagged, score = samples["is_label_issue"].to_numpy(), samples["mislabel_score"].to_numpy()
    expected = early_window_flags(history.labels, window, score, early_window_cl(history.labels, window,
                                                                                require_fit=False))
    np.testing.assert_array_equal(flagged, expected.is_label_issue)
    assert flagged.any() and set(np.flatnonzero(flagged)) <= set(disputed)
    fallback = analyze_split(unsettled, "train").samples["is_label_issue"].to_numpy()
    assert not np.array_equal(fallback, flagged)  # the all-epoch flags, as before


def test_the_score_drops_the_fit_test_only_for_a_fixed_window_that_ends_after_a_settled_wave():
    """The fixed window (epochs 0-1 here) keeps its early EL2N when the wave settled at or before its last epoch;
    a wave minimum after it, or not settled, leaves the fit test in place."""
    from dataclasses import replace

    from dq_plugins.analysis.pipeline import mislabel_signals, window_learned

    history, window, _ = _history_and_disputing_window(400, 2, 7, 120)
    assert window_learned(replace(history, wave_probs=window, early_window_end=1), early=2)
    assert not window_learned(replace(history, wave_probs=window, early_window_end=2), early=2)  # after the window
    assert not window_learned(replace(history, wave_probs=window, early_window_end=4), early=6)  # not settled
    assert not window_learned(history, early=2)  # no wave

    fields = {name: values.copy() for name, values in history.fields.items()}
    fields["correct"][:] = 0.6  # below halfway from chance (0.75) for two classes
    refused = mislabel_signals(fields, 2, num_classes=2)
    kept = mislabel_signals(fields, 2, num_classes=2, require_fit=False)
    assert np.isnan(refused.el2n_early_scored).all()
    np.testing.assert_array_equal(kept.el2n_early_scored, kept.el2n_early)

    from dq_plugins.analysis.pipeline import analyze_split

    unfit = replace(history, fields=fields, early_probs=window)  # a fixed window that fails the fit test
    learned = analyze_split(replace(unfit, wave_probs=window, early_window_end=1), "train", early_epochs=2)
    still = analyze_split(replace(unfit, wave_probs=window, early_window_end=2), "train", early_epochs=2)
    assert not np.allclose(learned.samples["mislabel_score"], still.samples["mislabel_score"])


def test_an_untrusted_fixed_window_lets_the_settled_wave_window_weigh_the_score():
    """The fixed window (epochs 0-1) fails the fit test and the wave minimum (epoch 2) falls after it: the score's
    pseudo-labels and its early EL2N come from the settled wave window (epochs 0-2), with the share of the
    pseudo-labels the model fits at the end."""
    from dataclasses import replace

    from dq_plugins.analysis.pipeline import analyze_split, early_window_cl, mislabel_signals
    from dq_plugins.scores.mislabel import memorised_share, mislabel_score

    history, window, disputed = _history_and_disputing_window(400, 2, 7, 120)
    fields = {name: values.copy() for name, values in history.fields.items()}
    fields["correct"][:2] = 0.6  # the fixed window fits below halfway from chance (0.75)
    unfit = replace(history, fields=fields, early_probs=window)
    settled = analyze_split(replace(unfit, wave_probs=window, early_window_end=2), "train", early_epochs=2)
    unsettled = analyze_split(replace(unfit, wave_probs=window, early_window_end=4), "train", early_epochs=2)

    signals = mislabel_signals(fields, 2, num_classes=2, wave_epochs=3)
    assert np.isnan(mislabel_signals(fields, 2, num_classes=2).el2n_early_scored).all()  # fails the fit test
    np.testing.assert_allclose(signals.el2n_early_scored, mislabel_signals(fields, 3, 2, require_fit=False).el2n_early)
    pseudo = early_window_cl(history.labels, window, require_fit=False).is_label_issue
    assert early_window_cl(history.labels, window) is None and set(np.flatnonzero(pseudo)) <= set(disputed)
    memorised = memorised_share(fields["correct"], pseudo)
    expected = mislabel_score(aum=signals.aum, el2n_all_epochs=signals.el2n_all_epochs,
                              el2n_early=signals.el2n_early_scored, pseudo_labels=pseudo,
                              instability=signals.instability, memorised=memorised)
    np.testing.assert_allclose(settled.samples["mislabel_score"], expected)
    equal = mislabel_score(aum=signals.aum, el2n_all_epochs=signals.el2n_all_epochs,
                           el2n_early=np.full(400, np.nan))  # no trusted window: no early EL2N, equal weights
    np.testing.assert_allclose(unsettled.samples["mislabel_score"], equal)
    assert not np.allclose(expected, equal)
