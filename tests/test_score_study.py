"""benchmarks/score_study.py re-scores saved runs as the analysis scores them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.score_study import FIELDS, Record, library_score, main, margins
from dq_plugins.analysis.pipeline import analyze_split
from dq_plugins.recording.ledger import SplitLedger
from dq_plugins.scores.el2n import default_early_epochs

ROWS, CLASSES, EPOCHS = 300, 3, 10


def _noisy_run(seed: int = 0):
    """A ledger run with the Label Wave on: a model that learns the true classes, then memorises the 20% flipped
    labels; returns ``(history, per-epoch softmax (E, N, C), flipped)``."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, CLASSES, ROWS)
    flipped = rng.random(ROWS) < 0.2
    labels = np.where(flipped, (truth + 1) % CLASSES, truth)
    ledger = SplitLedger(capacity=ROWS, num_classes=CLASSES)
    ledger.early_epochs = default_early_epochs(EPOCHS)
    ledger.enable_wave()
    probs = []
    for epoch in range(EPOCHS):
        memorised = max(0.0, epoch - 4) / 3.0  # from epoch 5 the flipped labels are learnt
        logits = 1.5 * np.eye(CLASSES)[truth] * min(epoch + 1, 4) + memorised * 3.0 * np.eye(CLASSES)[labels] * flipped[:, None]
        logits = torch.tensor(logits + rng.normal(size=(ROWS, CLASSES)), dtype=torch.float32)
        for rows in torch.arange(ROWS).split(64):
            ledger.record(rows, torch.tensor(labels)[rows], logits[rows], epoch=epoch)
        ledger.close_epoch()
        probs.append(torch.softmax(logits, dim=1).numpy())
    return ledger.to_history(), np.stack(probs), flipped


def _record(history, probs, flipped) -> Record:
    return Record("run", {name: history.fields[name].astype(np.float64) for name in FIELDS}, probs.astype(np.float64),
                  history.pred, history.labels.astype(np.int64), flipped, np.zeros(ROWS), None)


def test_the_study_scores_a_saved_run_as_the_analysis_does():
    history, probs, flipped = _noisy_run()
    assert history.early_window_end is not None  # the wave settled: its window takes part
    record = _record(history, probs, flipped)
    assert record.wave_end == history.early_window_end
    analysed = analyze_split(history, "train").samples["mislabel_score"].to_numpy()
    np.testing.assert_allclose(library_score(record), analysed, atol=1e-6)
    without_move = library_score(record, move=False)
    assert not np.allclose(without_move, analysed)  # the variants are other scores


def test_the_study_prints_one_row_per_folder_and_refuses_an_empty_one(tmp_path, capsys):
    history, probs, flipped = _noisy_run(1)
    folder = tmp_path / "runs"
    folder.mkdir()
    np.savez_compressed(folder / "case-seed0.npz", noisy=history.labels, flipped=flipped, pred=history.pred,
                        epoch_probs=probs.astype(np.float16), final_loss=np.zeros(ROWS),
                        neighbor_disagreement=np.full(ROWS, np.nan),
                        **{f"field_{name}": values for name, values in history.fields.items()})
    assert main([str(folder), "--variants"]) == 0
    table = capsys.readouterr().out
    assert f"| {folder} | 1 | " in table and "no memorisation move" in table
    row = margins(Record.load(folder / "case-seed0.npz"), ["library"])
    assert f"{row['library']:+.4f} /" in table
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "no .npz records" in capsys.readouterr().err


def test_a_record_with_no_neighbour_values_scores_without_them(tmp_path):
    history, probs, flipped = _noisy_run(2)
    path = tmp_path / "r.npz"
    np.savez_compressed(path, noisy=history.labels, flipped=flipped, pred=history.pred, epoch_probs=probs,
                        final_loss=np.zeros(ROWS), neighbor_disagreement=np.full(ROWS, np.nan),
                        **{f"field_{name}": values for name, values in history.fields.items()})
    record = Record.load(path)
    assert record.neighbor_disagreement is None
    assert np.isfinite(library_score(record)).all()
    with pytest.raises(ValueError, match=r"lacks \['field_margin'\]\. HINT: .*label_noise --dump"):
        Record.load(_without(path, "field_margin", tmp_path))


def _without(path, key, tmp_path):
    data = dict(np.load(path))
    del data[key]
    out = tmp_path / "missing.npz"
    np.savez(out, **data)
    return out
