"""Recipe: find the weakest slice of a model and pick, from an unlabeled pool, what to label next.

    python -m recipes.active_learning --config recipes/configs/al_digits.yaml

The data: scikit-learn's 8x8 digits, split into days. Day 0 is labelled (train and validation);
the other days form the unlabeled pool. Every image comes from a source, ``pen``, ``tablet`` or
``scan``; scans are planted as the weak segment: shifted, noisy and faded, and rare on day 0
(``extra.scan_rate``) but common in the pool (``extra.pool_scan_rate``).

Steps:

1. Train an MLP on day 0 with ``DataQualityCallback(metadata_keys=["source"], pools={"unlabeled":
   loader}, forward_fn=...)``: the callback records the source of each sample, slices the results,
   runs the rules of the config (``extra.rules``), and embeds the pool after fit through the same
   hook as the train samples (the input of the classifier head, final weights).
2. Take the weakest slice the callback found (``result.weak_slices``: validation first, where the
   model has not memorised its labels).
3. Select ``extra.k`` pool samples most similar to that slice's members, skipping near-duplicates
   (:func:`dq_plugins.selection.select_similar`), optionally balanced across days; log the selection
   as ``dq/al_selection.json`` in the run and print it, with the share of scans among the picks
   compared with the share in the pool.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from recipes.common import add_common_arguments, config_from_args, load_dataset, print_report, stratified_split
from recipes.common.models import MLPClassifier

SOURCES: tuple[str, ...] = ("pen", "tablet", "scan")
SELECTION_PATH = "dq/al_selection.json"

DEFAULTS: dict[str, Any] = {
    "hidden": 128,
    "labelled_fraction": 0.5,  # share of the rows on day 0 (labelled); the rest is the pool
    "pool_days": 2,  # days 1..pool_days share the pool
    "scan_rate": 0.2,  # share of scans on day 0
    "pool_scan_rate": 0.3,  # share of scans in the pool
    "scan_noise": 0.3,  # std of the Gaussian noise added to a scan (pixels in [0, 1])
    "k": 40,
    "diversity_threshold": 0.95,
    "balance_days": True,
    "rules": None,
}
"""``extra`` options of the config and their defaults."""


# ---------------------------------------------------------------------------------------- data
def scan(images: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """What a scanner does to (M, 64) digits in [0, 1]: a shift of one pixel right and down, faded ink
    (x 0.6 + 0.2) and Gaussian noise, clipped to [0, 1]."""
    grid = images.reshape(-1, 8, 8)
    shifted = np.zeros_like(grid)
    shifted[:, 1:, 1:] = grid[:, :-1, :-1]
    faded = shifted * 0.6 + 0.2
    return np.clip(faded + rng.normal(0.0, noise, faded.shape), 0.0, 1.0).reshape(-1, 64).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Partitions:
    """Rows of the data set by day and source; scans already distorted in ``features``."""

    features: np.ndarray  # (N, 64) float32
    labels: np.ndarray  # (N,) int64
    day: np.ndarray  # (N,) int64, 0 = labelled
    source: np.ndarray  # (N,) str


def make_partitions(features: np.ndarray, labels: np.ndarray, options: dict[str, Any], seed: int) -> Partitions:
    """Assign days and sources at random (seeded) and distort the scans."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    order = rng.permutation(n)
    day = np.empty(n, dtype=np.int64)
    labelled = int(round(options["labelled_fraction"] * n))
    day[order[:labelled]] = 0
    day[order[labelled:]] = 1 + np.arange(n - labelled) % int(options["pool_days"])
    scan_rate = np.where(day == 0, options["scan_rate"], options["pool_scan_rate"])
    is_scan = rng.random(n) < scan_rate
    source = np.where(is_scan, "scan", np.where(rng.random(n) < 0.5, "pen", "tablet"))
    features = features.copy()
    features[is_scan] = scan(features[is_scan], rng, float(options["scan_noise"]))
    return Partitions(features, labels, day, source)


class Rows(Dataset):
    """Items ``{"idx", "inputs", "source"}`` (+ ``"labels"``) of some rows; ``idx`` numbers them 0..len-1."""

    def __init__(self, parts: Partitions, rows: np.ndarray, labelled: bool) -> None:
        self.inputs = torch.as_tensor(parts.features[rows])
        self.labels = torch.as_tensor(parts.labels[rows]) if labelled else None
        self.source = [str(s) for s in parts.source[rows]]

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"idx": index, "inputs": self.inputs[index], "source": self.source[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


# ---------------------------------------------------------------------------------------- model
def build_module(num_features: int, num_classes: int, learning_rate: float, hidden: int) -> MLPClassifier:
    """The recipe's MLP: ``num_features -> hidden -> num_classes`` with dropout 0.2, Adam with weight decay 1e-4."""
    return MLPClassifier(num_features, num_classes, hidden=(hidden,), dropout=0.2, lr=learning_rate, weight_decay=1e-4)


def forward_fn(module: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Runs the model on a batch (labelled or not) for the callback's post-fit embedding pass."""
    return module(batch["inputs"])


# ---------------------------------------------------------------------------------------- selection
def weakest_slice(weak: Any) -> Any:
    """The top-ranked weak slice of validation (held out), else of train; ``None`` when there is none."""
    for split in ("validation", "train"):
        rows = weak[weak["split"] == split]
        if len(rows):
            return rows.iloc[0]
    return None


def select_for_slice(result: Any, embeddings: dict, pool: Any, pool_days: np.ndarray, slice_row: Any,
                     options: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """Pool picks most similar to the members of ``slice_row``; returns (selection table, member ids)."""
    from dq_plugins.selection import select_similar
    from dq_plugins.analysis.slice_history import slice_members

    members = slice_members(result.samples, [(slice_row["split"], slice_row["slice"])])
    ids = members[(slice_row["split"], slice_row["slice"])]
    split_ids, split_embeddings = embeddings[slice_row["split"]].to_numpy()
    queries = split_embeddings[np.isin(split_ids, ids)]
    selection = select_similar(pool.embeddings, pool.ids, queries, int(options["k"]),
                               diversity_threshold=options["diversity_threshold"],
                               partitions=pool_days[pool.ids], balance=bool(options["balance_days"]))
    return selection, ids


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--k", type=int, default=None, help="How many pool samples to select (extra.k).")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, recipe="lightning")
    unknown = sorted(set(cfg.extra) - set(DEFAULTS))
    if unknown:
        parser.error(f"unknown `extra` option(s) {unknown} in the config; valid: {sorted(DEFAULTS)}.")
    options = {**DEFAULTS, **cfg.extra, **({"k": args.k} if args.k is not None else {})}
    if cfg.model != "mlp":
        parser.error(f"--model {cfg.model!r}: this recipe trains its own MLP ('mlp').")

    import mlflow
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import MLFlowLogger

    from dq_plugins.lightning import DataQualityCallback
    from dq_plugins.rules import parse_rules

    pl.seed_everything(cfg.seed, verbose=False)
    data = load_dataset(cfg.dataset)
    if data.features is None:
        parser.error(f"--dataset {cfg.dataset!r} is a text data set; this recipe needs numeric features.")
    parts = make_partitions(data.features, data.labels, options, cfg.seed)
    labelled = np.flatnonzero(parts.day == 0)
    train_pos, val_pos = stratified_split(parts.labels[labelled], cfg.val_fraction, cfg.seed)
    train_rows, val_rows = labelled[train_pos], labelled[val_pos]
    pool_rows = np.flatnonzero(parts.day > 0)
    train, val, pool = Rows(parts, train_rows, True), Rows(parts, val_rows, True), Rows(parts, pool_rows, False)

    tracking_uri = cfg.tracking_uri or mlflow.get_tracking_uri()
    logger = MLFlowLogger(experiment_name=cfg.experiment_name, tracking_uri=tracking_uri,
                          run_name=f"{cfg.dataset}-active-learning")
    logger.log_hyperparams({k: v for k, v in vars(cfg).items() if k != "extra"}
                           | {k: v for k, v in options.items() if k != "rules"})
    callback = DataQualityCallback(
        metadata_keys=["source"], forward_fn=forward_fn, projection="pca",
        pools={"unlabeled": DataLoader(pool, batch_size=512)},
        rules=parse_rules({"rules": options["rules"]}) if options["rules"] else None,
    )
    trainer = pl.Trainer(max_epochs=cfg.epochs, callbacks=[callback], logger=logger, accelerator="auto", devices=1,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                         log_every_n_steps=10)
    trainer.fit(build_module(parts.features.shape[1], data.num_classes, cfg.learning_rate, int(options["hidden"])),
                DataLoader(train, batch_size=cfg.batch_size, shuffle=True), DataLoader(val, batch_size=512))

    result = callback.result
    print_report(result.samples, flipped_ids=None, run_id=callback.run_id, tracking_uri=tracking_uri,
                 class_names=data.class_names, top=5)
    print_slices(result)
    report = getattr(result, "rules_report", None)
    if report is not None:
        print("\nRules (dq/rules.json):")
        print(report.table[["rule", "status", "condition", "matched_samples", "actions"]].to_string(index=False))

    weakest = weakest_slice(result.weak_slices)
    if weakest is None:
        print("\nNo slice is significantly weaker than the rest: nothing to select.")
    else:
        day_of_pool = parts.day[pool_rows]
        selection, members = select_for_slice(result, callback.session.embeddings, callback.pools["unlabeled"],
                                              day_of_pool, weakest, options)
        selection.insert(1, "source", [pool.source[i] for i in selection["pool_id"]])
        selection["partition"] = [f"day {d}" for d in selection["partition"]]
        mlflow.MlflowClient(tracking_uri).log_table(callback.run_id, selection, SELECTION_PATH)
        member_source = result.samples.set_index(["split", "sample_id"]).loc[
            [(weakest["split"], int(i)) for i in members], "source"]
        print(f"\nWeakest slice ({weakest['split']}): {weakest['description']}")
        print(f"  its members: {(member_source == 'scan').mean():.0%} scans")
        print(f"\nSelected {len(selection)} of {len(pool)} pool samples to label next "
              f"(diversity threshold {options['diversity_threshold']}, balanced across days: "
              f"{bool(options['balance_days'])}), logged as {SELECTION_PATH}:")
        print(selection.head(15).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        picked_scans = float(np.mean(selection["source"] == "scan")) if len(selection) else float("nan")
        pool_scans = float(np.mean(np.asarray(pool.source) == "scan"))
        print(f"  scans among the selected: {picked_scans:.0%} (pool: {pool_scans:.0%})")
        print(f"  per day: {selection['partition'].value_counts().sort_index().to_dict()}")
        mlflow.MlflowClient(tracking_uri).log_metric(callback.run_id, "al.selected_scan_share", picked_scans)
    return callback.run_id


def print_slices(result: Any, top: int = 5) -> None:
    """The weak slices the callback found, and the accuracy of each source."""
    slices = result.slices
    by_source = slices[slices["column"] == "source"][["split", "slice", "size", "accuracy", "mean_latency_ms"]]
    print("\nAccuracy by source (dq/slices.json):")
    print(by_source.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    weak = result.weak_slices
    print(f"\nWeak slices (dq/weak_slices.json, {len(weak)} found), top {top} per split:")
    for _, rows in weak.groupby("split", sort=False):
        for line in rows["description"].head(top):
            print(f"  {line}")


if __name__ == "__main__":
    main()
