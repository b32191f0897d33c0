"""Label-noise cases for multi-label and token classification (run through ``benchmarks/label_noise.py``).

Each case trains one small model with :class:`~dq_plugins.lightning.DataQualityCallback` and scores its
train rows against the known injected errors, beside cleanlab's own method on 5-fold out-of-sample
probabilities (5 fresh models of the same architecture, epochs and optimiser, each predicting its
held-out fifth: ``4 E`` model-epochs against the callback's ``E``).

- ``multilabel-digits``: scikit-learn's 1,797 8x8 digits (BSD-3) with 5 attributes of the digit as a
  multi-hot target (``recipes/common/multilabel.py``); 15% of the samples get one error each, a third
  each of: a true label swapped for a wrong one, a label dropped, a label added. An MLP (64-128-5), 30 epochs. Anchor:
  ``cleanlab.multilabel_classification`` (``find_label_issues`` for flags, ``get_label_quality_scores``
  for the ranking). A sample is positive when any of its labels was changed.
- ``tokens-synthetic``: 1,200 sequences of 6-14 words from a 300-word vocabulary in which each tag
  (O, B-PER, I-PER, B-LOC, I-LOC) has its own words (10% of them shared between two tags, so context
  matters); 10% of the sequences get one error: a tag changed (half) or an entity span shifted by one
  word (half). A one-layer bidirectional GRU tagger, 12 epochs. Anchor:
  ``cleanlab.token_classification`` on the out-of-sample softmax. A sequence is positive when any tag
  was changed; token flags are scored against the changed tokens.

Both are small enough for a shared 2-core CPU (a minute or two per seed). No real multi-label text set or
CoNLL-style corpus ships inside a package of the registry that we found; the text recipes are left to a
later issue (see the README).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score
from sklearn.model_selection import KFold

from dq_plugins.lightning import DataQualityCallback
from recipes.common.multilabel import digit_attributes, inject_multilabel_noise

OURS = "dq_plugins (1x)"
ANCHOR = "cleanlab 5-fold (4x)"


@dataclass
class TaskRun:
    """One (case, seed): AUPRC and F1 per method, and seconds per phase."""

    case: str
    seed: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class _Frame(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i], "idx": i}


class MultiLabelMLP(pl.LightningModule):
    def __init__(self, in_dim: int, num_classes: int, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(in_dim, 128), torch.nn.ReLU(), torch.nn.Linear(128, num_classes))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        logits = self(batch["x"])
        return {"loss": F.binary_cross_entropy_with_logits(logits, batch["labels"]), "logits": logits}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class GRUTagger(pl.LightningModule):
    def __init__(self, vocab: int, num_tags: int, lr: float = 5e-3) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 32, padding_idx=0)
        self.gru = torch.nn.GRU(32, 32, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(64, num_tags)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.embed(x))[0])

    def training_step(self, batch, batch_idx):
        logits = self(batch["x"])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100)
        return {"loss": loss, "logits": logits}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=callbacks)


def _fit(module: pl.LightningModule, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, callbacks=()) -> None:
    pl.seed_everything(seed, verbose=False)
    loader = torch.utils.data.DataLoader(_Frame(x, y), batch_size=64, shuffle=True)
    _trainer(epochs, list(callbacks)).fit(module, loader)


def _out_of_fold(make, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, activation) -> np.ndarray:
    out = None
    for fold, (fit_rows, held) in enumerate(KFold(5, shuffle=True, random_state=seed).split(np.arange(len(x)))):
        torch.manual_seed(seed * 10 + fold)
        module = make()
        _fit(module, x[fit_rows], y[fit_rows], epochs, seed * 10 + fold)
        module.eval()
        with torch.no_grad():
            probs = activation(module(x[held])).numpy()
        if out is None:
            out = np.zeros((len(x), *probs.shape[1:]), np.float32)
        out[held] = probs
    return out


def _scores(truth: np.ndarray, ranking: np.ndarray, flags: np.ndarray) -> dict[str, float]:
    return {"auprc": float(average_precision_score(truth, ranking)), "f1": float(f1_score(truth, flags)),
            "flagged": float(flags.sum())}


# ---------------------------------------------------------------------------------- cases
def run_multilabel_digits(seed: int, quick: bool = False) -> TaskRun:
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    clean = digit_attributes(digits.target)
    noisy, changed = inject_multilabel_noise(clean, 0.15, seed)
    y = torch.tensor(noisy)
    epochs = 8 if quick else 30
    run = TaskRun("multilabel-digits", seed)
    start = time.perf_counter()
    torch.manual_seed(seed)
    callback = DataQualityCallback(task="multilabel")
    _fit(MultiLabelMLP(64, clean.shape[1]), x, y, epochs, seed, [callback])
    samples = callback.result.samples.sort_values("sample_id")
    run.seconds["callback"] = time.perf_counter() - start
    truth = changed.any(axis=1)
    run.metrics[OURS] = _scores(truth, samples["mislabel_score"].to_numpy(), samples["is_label_issue"].to_numpy())
    per_class = callback.result.tables["sample_labels"].sort_values(["sample_id", "class_id"])
    run.metrics[OURS + ", per (sample, class)"] = _scores(
        changed.reshape(-1), per_class["class_score"].to_numpy(), per_class["is_label_issue"].to_numpy())
    start = time.perf_counter()
    probs = _out_of_fold(lambda: MultiLabelMLP(64, clean.shape[1]), x, y, epochs, seed, torch.sigmoid)
    run.seconds["cleanlab-cv"] = time.perf_counter() - start
    as_lists = [list(np.flatnonzero(r)) for r in noisy]
    run.metrics[ANCHOR] = _scores(truth, 1 - get_label_quality_scores(as_lists, probs),
                                  find_label_issues(as_lists, probs, n_jobs=1))
    return run


TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def synthetic_sequences(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 16) word ids (0 = padding) and (N, 16) tags (-100 on padding) of a toy two-entity language."""
    rng = np.random.default_rng(1000 + seed)
    width = 16
    # each tag owns 60 words (ids 1..300); 10% of each entity's words are shared with the other entity
    words = {t: np.arange(1 + 60 * t, 61 + 60 * t) for t in range(len(TAGS))}
    x = np.zeros((n, width), np.int64)
    y = np.full((n, width), -100, np.int64)
    for row in range(n):
        length = int(rng.integers(6, 15))
        tags, position = [], 0
        while position < length:
            if rng.random() < 0.25 and position < length - 1:
                kind = 1 if rng.random() < 0.5 else 3
                span = min(int(rng.integers(1, 4)), length - position)
                tags += [kind] + [kind + 1] * (span - 1)
                position += span
            else:
                tags.append(0)
                position += 1
        for i, tag in enumerate(tags):
            pool = words[tag]
            if tag in (1, 3) and rng.random() < 0.1:
                pool = words[4 - tag]  # an ambiguous word: PER and LOC share some names
            x[row, i] = rng.choice(pool)
            y[row, i] = tag
    return x, y


def inject_token_noise(tags: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy tags, changed (N, T) bool): ``rate`` of the sequences get a changed tag or a shifted entity span."""
    rng = np.random.default_rng(seed)
    noisy = tags.copy()
    for i, row in enumerate(rng.choice(len(tags), int(rate * len(tags)), replace=False)):
        labelled = np.flatnonzero(noisy[row] >= 0)
        begins = [p for p in labelled if noisy[row, p] in (1, 3)]
        if i % 2 == 0 or not begins:  # change one tag to another
            p = rng.choice(labelled)
            noisy[row, p] = rng.choice([t for t in range(len(TAGS)) if t != noisy[row, p]])
        else:  # shift an entity span one word to the right
            start = rng.choice(begins)
            end = start + 1
            while end in labelled and noisy[row, end] == noisy[row, start] + 1:
                end += 1
            if end in labelled:
                span = noisy[row, start:end].copy()
                noisy[row, start] = 0
                noisy[row, start + 1:end + 1] = span
            else:
                noisy[row, start] = 0
    return noisy, noisy != tags


def run_tokens_synthetic(seed: int, quick: bool = False) -> TaskRun:
    from cleanlab.token_classification.filter import find_label_issues
    from cleanlab.token_classification.rank import get_label_quality_scores

    x_np, clean = synthetic_sequences(300 if quick else 1200, seed)
    noisy, changed = inject_token_noise(clean, 0.10, seed)
    x, y = torch.tensor(x_np), torch.tensor(noisy)
    epochs = 4 if quick else 12
    run = TaskRun("tokens-synthetic", seed)
    start = time.perf_counter()
    torch.manual_seed(seed)
    callback = DataQualityCallback(task="token_classification")
    _fit(GRUTagger(301, len(TAGS)), x, y, epochs, seed, [callback])
    run.seconds["callback"] = time.perf_counter() - start
    samples = callback.result.samples.sort_values("sample_id")
    tokens = callback.result.tables["tokens"].sort_values(["sample_id", "token_index"])
    truth = changed.any(axis=1)
    run.metrics[OURS] = _scores(truth, samples["mislabel_score"].to_numpy(), samples["is_label_issue"].to_numpy())
    token_truth = changed[tokens["sample_id"].to_numpy(), tokens["token_index"].to_numpy()]
    run.metrics[OURS + ", per token"] = _scores(token_truth, tokens["mislabel_score"].to_numpy(),
                                                tokens["is_label_issue"].to_numpy())
    start = time.perf_counter()
    probs = _out_of_fold(lambda: GRUTagger(301, len(TAGS)), x, y, epochs, seed, lambda t: torch.softmax(t, -1))
    run.seconds["cleanlab-cv"] = time.perf_counter() - start
    rows = [np.flatnonzero(noisy[i] >= 0) for i in range(len(noisy))]
    labels = [noisy[i, r] for i, r in enumerate(rows)]
    pred_probs = [probs[i, r] for i, r in enumerate(rows)]
    sentence_scores, token_scores = get_label_quality_scores(labels, pred_probs)
    issues = find_label_issues(labels, pred_probs, n_jobs=1)
    flags = np.zeros(len(noisy), bool)
    token_flags = np.zeros_like(changed)
    for i, j in issues:
        flags[i] = True
        token_flags[i, rows[i][j]] = True
    run.metrics[ANCHOR] = _scores(truth, 1 - sentence_scores, flags)
    token_rank = np.zeros(changed.shape)
    for i, r in enumerate(rows):
        token_rank[i, r] = 1 - np.asarray(token_scores[i])
    mask = noisy >= 0
    run.metrics[ANCHOR + ", per token"] = _scores(changed[mask], token_rank[mask], token_flags[mask])
    return run


TASK_CASES = {"multilabel-digits": run_multilabel_digits, "tokens-synthetic": run_tokens_synthetic}
TASK_SECTION = "label_noise_tasks"


def task_report(runs: list[TaskRun], command: str, wall: float) -> str:
    """The RESULTS.md section: one table per case, mean (min-max) over seeds."""
    lines = ["## Label noise, multi-label and token classification (`benchmarks/label_noise_tasks.py`)", "",
             f"Command: `{command}` ({wall:.0f} s on a shared 2-core CPU; seconds include MLflow and the analysis). "
             "AUPRC of the ranking and F1 of the flags against the injected errors; per-sample rows count a sample "
             "as positive when any of its labels / tags was changed. The anchor trains 5 models on 4/5 of the data "
             "(4x the training cost).", ""]
    for case in sorted({r.case for r in runs}):
        part = [r for r in runs if r.case == case]
        lines += [f"**{case}** (seeds {', '.join(str(r.seed) for r in part)})", "",
                  "| method | AUPRC | flag F1 | flagged | seconds |", "|---|---|---|---|---|"]
        for method in part[0].metrics:
            values = {k: [r.metrics[method][k] for r in part] for k in ("auprc", "f1", "flagged")}
            key = "cleanlab-cv" if method.startswith(ANCHOR) else "callback"
            seconds = np.mean([r.seconds[key] for r in part])
            lines.append(f"| {method} | {np.mean(values['auprc']):.3f} | {np.mean(values['f1']):.3f} | "
                         f"{np.mean(values['flagged']):.0f} | {seconds:.0f} |")
        lines.append("")
    return "\n".join(lines)
