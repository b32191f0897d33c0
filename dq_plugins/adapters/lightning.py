"""PyTorch Lightning adapter: :class:`DataQualityCallback`.

Usage::

    from dq_plugins.lightning import DataQualityCallback

    callback = DataQualityCallback()          # batches hold ids under "idx", labels under "labels"
    trainer = pl.Trainer(max_epochs=10, callbacks=[callback], logger=MLFlowLogger(...))
    trainer.fit(module, train_loader, val_loader)
    callback.run_id                           # the MLflow run that holds dq/samples.parquet etc.

The callback works with ``pytorch_lightning`` and with ``lightning.pytorch``: it subclasses the
``Callback`` of every flavour installed. It only translates Lightning hooks into calls on the
shared :class:`~dq_plugins.recording.session.DynamicsSession`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from dq_plugins.logs import warn
from dq_plugins.adapters.batch import find_input, find_logits, get_key
from dq_plugins.adapters.compat import lightning_packages
from dq_plugins.adapters.options import LIGHTNING_RENAMED, check_projection
from dq_plugins.recording.embeddings import find_tensor, pool
from dq_plugins.recording.latency import ForwardTimer
from dq_plugins.deprecation import renamed_options
from dq_plugins.recording.session import DynamicsSession, SessionConfig
from dq_plugins.recording.slots import dataset_ids
from dq_plugins.schema import TRAIN, VALIDATION
from dq_plugins.sinks.datasets import given_options
from dq_plugins.recording.tasks import TaskRouter
from dq_plugins.sinks.mlflow_sink import MlflowSink

_PACKAGES = lightning_packages()
_CALLBACK_BASES = tuple(package.Callback for package in _PACKAGES)


DEFERRED_BATCHES = 32
"""On the CPU, the record of a batch after a split's first (the ledger's stage, the epoch's id checks, the latency
and the embeddings) is kept in a list and made for this many batches in one go: the bookkeeping of one batch
between two training steps runs with cold caches and costs several times what it costs in a loop. The first batch of
a split is checked and recorded at once; a later batch that fails a check raises when its group is recorded (at the
latest at the epoch's end). Fingerprints are taken in the step, on the input while it is in cache."""


def _mlflow_logger(trainer: Any) -> Any:
    """The trainer's ``MLFlowLogger``, whichever Lightning flavour it comes from, or ``None``."""
    classes = []
    for package in _PACKAGES:
        logger_cls = getattr(getattr(package, "loggers", None), "MLFlowLogger", None)
        if logger_cls is not None:
            classes.append(logger_cls)
    for logger in getattr(trainer, "loggers", []) or []:
        if classes and isinstance(logger, tuple(classes)):
            return logger
    return None


def _first_dataset(loaders: Any) -> Any:
    """The dataset behind a dataloader, or behind the first one in a list/dict; ``None`` if none."""
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return getattr(loaders, "dataset", None)


def _dataset_length(loaders: Any) -> int | None:
    """Length of the dataset behind a dataloader, or of the first one in a list/dict."""
    dataset = _first_dataset(loaders)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def _yields_each_sample_once(loaders: Any) -> bool:
    """Whether the (first) dataloader's sampler yields every sample once an epoch: a ``SequentialSampler``,
    or a ``RandomSampler`` without replacement over the whole dataset (Lightning's own wrappers included)."""
    from torch.utils.data import RandomSampler, SequentialSampler

    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    sampler = getattr(loaders, "sampler", None)
    dataset = getattr(loaders, "dataset", None)
    batch_sampler = getattr(loaders, "batch_sampler", None)
    if batch_sampler is not None and getattr(batch_sampler, "sampler", None) is not sampler:
        return False  # a custom batch sampler: unknown
    if isinstance(sampler, SequentialSampler):
        return True
    if isinstance(sampler, RandomSampler) and not sampler.replacement:
        try:
            return sampler.num_samples == len(dataset)
        except TypeError:
            return False
    return False


def _step_loss(outputs: Any) -> torch.Tensor | None:
    """The scalar ``loss`` a step returned (a dict entry or the output itself), or ``None``."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


def _submodule(pl_module: Any, name: str, argument: str) -> Any:
    try:
        return pl_module.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in pl_module.named_modules() if n][:20]
        raise ValueError(
            f"`{argument}={name!r}` is not a submodule of {type(pl_module).__name__}. HINT: pick one of {names}."
        ) from None


def _timed_modules(pl_module: Any) -> list[Any]:
    """The modules whose forwards make up the model's forward, whatever a step calls: the LightningModule
    itself (``self(x)``) and its direct submodules that hold parameters (``self.net(x)``, or
    ``self.head(self.backbone(x))``); parameter-free children (losses, metrics) are not the model."""
    children = [child for child in pl_module.children() if next(child.parameters(), None) is not None]
    return [pl_module, *children]


class _FirstParameters:
    """The device of a timed module (that of its first parameter, else its ``device`` attribute) without
    walking ``module.parameters()`` at every forward: the first parameter is found once and kept with the
    submodule that registers it, and found again when that submodule no longer holds it under its name
    (parameters replaced, e.g. by ``.to()`` with ``overwrite_module_params_on_conversion``)."""

    def __init__(self) -> None:
        self._found: dict[int, tuple[Any, str, Any]] = {}  # id(module) -> (owner, name, parameter)

    def device(self, module: Any) -> torch.device | None:
        found = self._found.get(id(module))
        if found is not None:
            owner, name, parameter = found
            if owner._parameters.get(name) is parameter:
                return parameter.device
        for owner_name, parameter in module.named_parameters():
            prefix, _, name = owner_name.rpartition(".")
            self._found[id(module)] = (module.get_submodule(prefix), name, parameter)
            return parameter.device
        self._found.pop(id(module), None)
        return getattr(module, "device", None)

    def clear(self) -> None:
        self._found.clear()


class DataQualityCallback(*_CALLBACK_BASES):  # type: ignore[misc]
    """Record per-sample training dynamics and log label issues to MLflow at the end of fit.

    Each batch must be a dict holding integer sample ids under ``id_key`` and class labels under
    ``label_key`` (:func:`dq_plugins.with_ids` adds ids to any map-style dataset). Logits come from
    the ``"logits"`` entry of what ``training_step`` / ``validation_step`` return, or, with
    ``logits_module``, from a forward hook on that submodule.

    Prediction latency (column ``latency_ms``, see :mod:`dq_plugins.recording.latency`): forward pre-hooks and
    forward hooks on the LightningModule and on its direct submodules that hold parameters time the model's
    forward inside a training or validation step, whatever the step calls (``self(x)``, ``self.net(x)``, or
    ``self.head(self.backbone(x))``: nested forwards count once, consecutive ones add up), with CUDA events on
    a GPU (read once per epoch, no host sync in the step) or ``time.perf_counter`` elsewhere; a sample's
    latency is its batch's forward time divided by the batch size. A validation step in which none of them
    runs is timed from ``on_validation_batch_start`` to ``on_validation_batch_end`` instead.

    Args:
        id_key: batch key of the sample ids (0-based, unique, stable across epochs).
        label_key: batch key of the class labels.
        logits_module: dotted name of the submodule whose output is the logits (for example
            ``"head"`` or ``"model.classifier"``); ``None`` reads ``outputs["logits"]``.
        num_samples: number of train sample ids; ``None`` uses ``len(train_dataset)``.
        num_val_samples: number of validation sample ids; ``None`` uses ``len(val_dataset)``.
        record_validation: also record the first validation dataloader as split "validation".
        early_epochs: the first epochs, averaged by EL2N and by the early signals of ``mislabel_score``;
            ``None`` uses the first 20% of epochs. (Formerly ``el2n_epochs``, still accepted with a warning.)
        max_issue_rows: rows of ``dq/issues.json``.
        tracking_uri, experiment_name, run_name: where to create a run when the trainer has no
            ``MLFlowLogger`` (``None``: MLflow's current tracking URI and experiment).
        fallback_dir: local folder that keeps the results when MLflow cannot be reached.
        embeddings: capture one embedding per sample for outliers, near-duplicates, neighbour
            label disagreement, clusters and the 2D map; ``False`` switches all of that off.
        embedding_module: dotted name of the submodule whose OUTPUT is the embedding (3-D outputs
            are pooled, see ``embedding_pooling``). ``None``: ``outputs["embeddings"]`` when the step
            returns it, else the INPUT of ``logits_module``, else the input of the last
            ``nn.Linear`` whose width equals the number of classes (the usual classifier head).
        embedding_pooling: "mean" (under ``batch[attention_mask_key]`` when present) or "cls".
        attention_mask_key: batch key of the attention mask used by mean pooling.
        forward_fn: ``forward_fn(module, batch)`` runs the model on a batch. When given, after fit
            one eval-mode pass (``torch.inference_mode``, the trainer's precision) over the train
            and validation loaders refreshes the embeddings with the final weights. When ``None``,
            the embeddings are those captured during the last training epoch (and the last
            validation run).
        metadata_keys: extra batch keys (per-sample values: tensors or lists of strings) kept as
            columns of ``dq/samples.parquet`` and sliced on (``dq/slices.json``, weak slices).
        metadata: a DataFrame with a ``sample_id`` column (and optionally ``split``) merged in the same way.
        rules: :class:`dq_plugins.rules.Rule` objects, or YAML text / a path to a YAML file, validated
            at construction and evaluated at the end of fit (``dq/rules.json``). Rules with
            ``on_validation=True`` are also evaluated after each validation epoch on its record (fail
            fast: see :meth:`~dq_plugins.recording.session.DynamicsSession.check_validation_rules`).
        projection: the 2D map of the embeddings: "graph" (a UMAP-style layout in torch, seconds,
            no compilation), "umap" (umap-learn, the extra ``dq_plugins[umap]``; its first use in a
            process compiles numba kernels, minutes on CPU), "pca", or ``None``/"auto":
            ``$DQ_PLUGINS_PROJECTION`` if set, else "graph".
        fingerprints: fingerprint each sample's input on the device (an exact hash and a 32-d random
            projection, :mod:`dq_plugins.recording.fingerprints`) to find exact and near copies within a
            split and validation rows that copy a train row (``train_duplicate_of``, ``dq/leakage.json``).
        input_key: batch key of the model input for the fingerprints. ``None``: ``"input_ids"`` (with
            ``batch[attention_mask_key]``) when present, else the first floating-point tensor of the
            batch that is not under ``id_key``, ``label_key`` or ``metadata_keys``.
        pools: name -> unlabeled pool for ``SelectSimilar`` actions (and :attr:`pools` after fit): a
            :class:`dq_plugins.selection.EmbeddingPool`, or a DataLoader of unlabeled batches (ids under
            ``id_key``, no labels needed) that is embedded after fit by ``forward_fn`` through the same
            embedding hook as the train split, with the final weights.
        task: "single_label", "multilabel" (targets: (B, C) float multi-hot under ``label_key``, logits
            (B, C)) or "token_classification" ((B, T) tags with -100 where ignored, logits (B, T, C));
            ``None`` detects it from the first batch. An explicit task that the first batch contradicts is
            an error saying what was detected (see :mod:`dq_plugins.recording.tasks`). Embeddings work as
            for single-label (a token task's 3-D head input is pooled per sequence by ``embedding_pooling``);
            their label-free columns (and, multi-label, ``neighbor_disagreement`` over label sets) join
            ``dq/samples.parquet``.
        history_dir: root folder of the per-epoch record files (one `.npz` file per epoch and
            split; checkpoints only point to them, so they do not grow with the epochs); ``None``:
            ``$DQ_PLUGINS_HISTORY_DIR`` or the temp folder. A fit's files are deleted once its raw record is
            uploaded (a resume then reads the epochs from the run); a killed fit leaves them for its resume.
        memory_budget_mb: the most the recording may allocate (device + host RAM); a split that would
            need more fails at fit start or at its first batch, before allocating. ``None``: 16384.
        embeddings_upload_mb: ``dq/embeddings/<split>.npz`` holds every embedding up to this size
            (fp16, before compression); above it a random sample of rows that fits.
        sample_ids: every sample id of the train split (1-D integers: array, list or tensor), or a mapping
            ``{"train": ids, "validation": ids}``. Ids that are not ``0..N-1`` (database keys, ids near 10**12,
            a subset of a numbered dataset) get one dense slot each on the device, so memory follows the number
            of ids; the outputs keep the ids. ``None``: the ``id_key`` column of a ``datasets.Dataset`` behind
            the dataloader when there is one, else ids ``0..len(dataset)-1`` (or ``num_samples``).

    Attributes:
        run_id: the MLflow run holding the results (set at fit start on the main process).
        pools: name -> :class:`~dq_plugins.selection.EmbeddingPool` after fit (main process), loader pools embedded.
        result: the :class:`~dq_plugins.analysis.pipeline.AnalysisResult` after fit (main process), else ``None``.
    """

    def __init__(
        self,
        id_key: str = "idx",
        label_key: str = "labels",
        logits_module: str | None = None,
        num_samples: int | None = None,
        num_val_samples: int | None = None,
        record_validation: bool = True,
        early_epochs: int | None = None,
        max_issue_rows: int = 500,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        fallback_dir: str = "dq_artifacts",
        embeddings: bool = True,
        embedding_module: str | None = None,
        embedding_pooling: str = "mean",
        attention_mask_key: str = "attention_mask",
        forward_fn: Callable[[Any, Any], Any] | None = None,
        metadata_keys: Sequence[str] = (),
        metadata: Any = None,
        rules: Any = None,
        pools: Mapping[str, Any] | None = None,
        projection: str | None = None,
        fingerprints: bool = True,
        input_key: str | None = None,
        task: str | None = None,
        history_dir: str | None = None,
        memory_budget_mb: float | None = None,
        embeddings_upload_mb: float = 256,
        sample_ids: Any = None,
        **renamed: Any,
    ) -> None:
        if renamed:
            early_epochs = renamed_options(DataQualityCallback.__init__, renamed, LIGHTNING_RENAMED,
                                           {"early_epochs": early_epochs})["early_epochs"]
        check_projection(projection)
        given = given_options(DataQualityCallback.__init__, locals())
        super().__init__()
        self._options = given  # logged as dq.* parameters
        self.session = DynamicsSession(
            SessionConfig(id_key, label_key, num_samples, num_val_samples, early_epochs, max_issue_rows, fallback_dir,
                          metadata_keys=tuple(metadata_keys), metadata=metadata, rules=rules, pools=pools, projection=projection,
                          history_dir=history_dir, memory_budget_mb=memory_budget_mb,
                          embeddings_upload_mb=embeddings_upload_mb, sample_ids=sample_ids)
        )
        self._tasks = TaskRouter(task, self.session, label_key)
        self.logits_module = logits_module
        self.record_validation = record_validation
        self._sink_options = {"tracking_uri": tracking_uri, "experiment_name": experiment_name, "run_name": run_name}
        self._sink: MlflowSink | None = None
        self._hook_handle: Any = None
        self._captured: torch.Tensor | None = None
        self._warned_no_val_logits = False
        self.run_id: str | None = None
        if embedding_pooling not in ("mean", "cls"):
            raise ValueError(f"Expected `embedding_pooling` to be 'mean' or 'cls', but got {embedding_pooling!r}.")
        self.embeddings = embeddings
        self.embedding_module = embedding_module
        self.embedding_pooling = embedding_pooling
        self.attention_mask_key = attention_mask_key
        self.forward_fn = forward_fn
        self.fingerprints = fingerprints
        self.input_key = input_key
        self._warned_no_input = False
        self._embedding_handle: Any = None
        self._captured_embeddings: torch.Tensor | None = None
        self._auto_head_width: int | None = None  # set when the head was guessed: checked at the first batch
        self._check_pools()
        self._forward_timer = ForwardTimer()  # root forward hooks
        self._batch_timer = ForwardTimer()  # validation fallback: batch start -> batch end
        self._timing_split: str | None = None  # the split whose step is running, while one is timed
        self._timing_handles: list[Any] = []
        self._first_parameters = _FirstParameters()  # the device of each timed module, found once
        self._loaded_state: dict[str, Any] | None = None  # checkpoint state loaded for the coming fit
        self._fitting = False  # between on_fit_start and the end of that fit: validation is recorded then only
        self._warned_not_fitting = False
        self._train_length: int | None = None  # the train dataset's length at the last epoch start
        # (split, epoch, slots, labels, logits, spans, embeddings) of batches recorded in one go (_record_deferred)
        self._deferred: list[tuple[Any, ...]] = []
        self._deferring: set[str] = set()  # single-label splits on the CPU whose first batch was recorded

    @property
    def result(self):
        return self.session.result

    @property
    def pools(self) -> dict[str, Any]:
        return self.session.pools

    def _check_pools(self) -> None:
        from dq_plugins.selection import EmbeddingPool

        data = [name for name, pool in self.session.pools.items() if not isinstance(pool, EmbeddingPool)]
        if not data:
            return
        not_iterable = [name for name in data if not hasattr(self.session.pools[name], "__iter__")]
        if not_iterable:
            raise ValueError(
                f"`pools` {not_iterable} are neither an EmbeddingPool nor a DataLoader. HINT: pass "
                "`dq_plugins.selection.EmbeddingPool(ids, embeddings)` or a DataLoader of unlabeled batches."
            )
        if self.forward_fn is None or not self.embeddings:
            raise ValueError(
                f"`pools` {data} are DataLoaders; embedding them after fit needs `forward_fn=` and `embeddings=True`. "
                "HINT: pass `forward_fn=lambda module, batch: module(batch['inputs'])`, or embed the pool yourself "
                "and pass a `dq_plugins.selection.EmbeddingPool`."
            )

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if self.logits_module is not None and self._hook_handle is None:
            module = _submodule(pl_module, self.logits_module, "logits_module")
            self._hook_handle = module.register_forward_hook(self._capture_logits)
        if not self._timing_handles:
            for module in _timed_modules(pl_module):
                self._timing_handles += [module.register_forward_pre_hook(self._forward_started),
                                         module.register_forward_hook(self._forward_ended)]
        if self.embeddings and self._embedding_handle is None:
            if self.embedding_module is not None:
                module = _submodule(pl_module, self.embedding_module, "embedding_module")
                self._embedding_handle = module.register_forward_hook(self._capture_embedding_output)
                return
            if self.logits_module is not None:
                head = pl_module.get_submodule(self.logits_module)
            else:
                linears = [m for m in pl_module.modules() if isinstance(m, torch.nn.Linear)]
                head = linears[-1] if linears else None
                self._auto_head_width = head.out_features if head is not None else None
            if head is not None:
                self._embedding_handle = head.register_forward_pre_hook(self._capture_embedding_input)

    def _forward_started(self, module: Any, args: Any) -> None:
        if self._timing_split is not None:
            timer = self._forward_timer  # a nested forward only counts depth: its device is not looked up
            timer.start(self._first_parameters.device(module) if not timer.open else None)

    def _forward_ended(self, module: Any, args: Any, output: Any) -> None:
        if self._timing_split is not None:
            self._forward_timer.stop()

    def _start_timing(self, split: str, device: torch.device) -> None:
        self._forward_timer.take()
        self._timing_split = split
        if split == VALIDATION:
            self._batch_timer.take()
            self._batch_timer.start(device)

    def _stop_timing(self) -> list:
        """The spans of the batch that ends: its root forwards, else (validation) the whole batch."""
        split, self._timing_split = self._timing_split, None
        spans = self._forward_timer.take()
        if split == VALIDATION:
            self._batch_timer.stop()
            batch_spans = self._batch_timer.take()
            spans = spans or batch_spans
        return spans

    def _capture_logits(self, module: Any, args: Any, output: Any) -> None:
        self._captured = find_logits(output)

    def _capture_embedding_output(self, module: Any, args: Any, output: Any) -> None:
        tensor = find_tensor(output)
        if tensor is not None and tensor.ndim == 2:
            tensor = tensor.clone()  # a later in-place op (ReLU(inplace=True)) must not rewrite the staged rows
        self._captured_embeddings = tensor.detach() if tensor is not None else None

    def _capture_embedding_input(self, module: Any, args: Any) -> None:
        tensor = find_tensor(args)
        self._captured_embeddings = tensor.detach() if tensor is not None else None

    def _record_embeddings(self, split: str, outputs: Any, batch: Any, ids: torch.Tensor, num_classes: int) -> None:
        embeddings = self._batch_embeddings(outputs, batch, ids, num_classes)
        if embeddings is not None:
            self.session.record_embeddings(split, ids, embeddings)

    def _batch_embeddings(self, outputs: Any, batch: Any, ids: torch.Tensor, num_classes: int) -> torch.Tensor | None:
        """The batch's ``(B, D)`` embeddings (detached, pooled), or ``None`` (off, or none captured); switches
        embeddings off, with a warning, when what was captured cannot be the head's input."""
        captured, self._captured_embeddings = self._captured_embeddings, None
        if not self.embeddings:
            return None
        embeddings = outputs.get("embeddings") if isinstance(outputs, Mapping) else None
        if not isinstance(embeddings, torch.Tensor):
            if self._auto_head_width is not None and self._auto_head_width != num_classes:
                self._disable_embeddings(
                    f"the last nn.Linear has {self._auto_head_width} outputs, not the {num_classes} classes, "
                    "so it is not the classifier head"
                )
                return None
            embeddings = captured
        if embeddings is None:
            return None
        if embeddings.requires_grad:  # the captured input of the head is detached already
            embeddings = embeddings.detach()
        if embeddings.ndim != 2:  # (B, T, D): pooled per sequence
            mask = batch.get(self.attention_mask_key) if isinstance(batch, Mapping) else None
            embeddings = pool(embeddings, mask if isinstance(mask, torch.Tensor) else None, self.embedding_pooling)
        if embeddings.shape[0] != ids.shape[0]:
            self._disable_embeddings(f"the captured embeddings have {embeddings.shape[0]} rows for {ids.shape[0]} ids")
            return None
        return embeddings

    def _disable_embeddings(self, why: str) -> None:
        warn(
            f"dq_plugins: embeddings are switched off because {why}. HINT: return `outputs['embeddings']` from the "
            "step or pass `embedding_module=`; pass `embeddings=False` to silence this.",
            UserWarning,
            stacklevel=3,
        )
        self.embeddings = False
        self.session.embeddings.clear()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for name in ("_hook_handle", "_embedding_handle"):
            handle = getattr(self, name)
            if handle is not None:
                handle.remove()
                setattr(self, name, None)
        for handle in self._timing_handles:
            handle.remove()
        self._timing_handles = []
        self._first_parameters.clear()
        self._timing_split = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Each fit records anew: a callback reused in a second fit forgets the first one's record and
        # results, keeping only the checkpoint state Lightning loaded for this fit (before this hook).
        self.session = DynamicsSession(self.session.config)
        self._deferred, self._deferring = [], set()
        router = self._tasks
        self._tasks = TaskRouter(router.option, self.session, router.label_key)
        self._tasks.class_names, self._tasks.token_strings = router.class_names, router.token_strings
        state, self._loaded_state = self._loaded_state, None
        if state is not None:
            self.session.load_state_dict(state)
        self._fitting = True
        self._warned_no_val_logits = False
        if not trainer.is_global_zero:
            return
        logger = _mlflow_logger(trainer)
        fallback_dir = self.session.config.fallback_dir
        resumed_run = (state or {}).get("run_id") if logger is None else None
        if logger is not None:
            self._sink = MlflowSink(client=logger.experiment, run_id=logger.run_id, fallback_dir=fallback_dir)
            self._sink.run_owner = "the Lightning MLFlowLogger"
        else:
            self._sink = MlflowSink(fallback_dir=fallback_dir, **self._sink_options)
        try:
            if resumed_run is not None:
                self._sink.resume_run(resumed_run)
            self.run_id = self._sink.ensure_run()
        except Exception as err:  # noqa: BLE001 - tracking trouble must not stop training
            self.run_id = self._sink.run_id
            warn(
                f"dq_plugins could not open an MLflow run ({type(err).__name__}: {err}); training goes on and "
                f"the results will be kept under {fallback_dir!r}.",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._train_length = _dataset_length(trainer.train_dataloader)
        self._set_ids(TRAIN, trainer.train_dataloader, self._train_length)
        self.session.unique_rows[TRAIN] = _yields_each_sample_once(trainer.train_dataloader)
        if self.record_validation and trainer.val_dataloaders is not None:
            self._set_ids(VALIDATION, trainer.val_dataloaders, _dataset_length(trainer.val_dataloaders))
            self.session.unique_rows[VALIDATION] = _yields_each_sample_once(trainer.val_dataloaders)
        self.session.set_max_epochs(trainer.max_epochs)
        self.session.resume(pl_module.device, trainer.current_epoch, raw_record=self._raw_record)

    def _set_ids(self, split: str, loaders: Any, length: int | None) -> None:
        """The id range of ``split``: the ``sample_ids`` option, else the id column of a ``datasets.Dataset``
        behind the (first) dataloader, else the dataset length (see :meth:`DynamicsSession.set_sample_ids`)."""
        ids, what = self.session.given_sample_ids(split), f"`sample_ids=` ({split})"
        if ids is None:
            ids, what = dataset_ids(_first_dataset(loaders), self.session.config.id_key), f"the {split} dataset"
        if ids is None:
            self.session.set_capacity(split, length)
        else:
            self.session.set_sample_ids(split, ids, what)

    def _raw_record(self, split: str) -> Any:
        """A local copy of ``dq/raw/<split>.npz`` in this fit's MLflow run, or ``None``: on a resume in the same
        run (an ``MLFlowLogger(run_id=...)``) on a machine without the history folder, the epochs come from there."""
        if self._sink is None or self._sink.run_id is None:
            return None
        import tempfile

        from dq_plugins.schema import raw_path

        folder = tempfile.mkdtemp(prefix="dq_plugins_raw_")
        return self._sink.client.download_artifacts(self._sink.run_id, raw_path(split), folder)

    # ------------------------------------------------------------------ recording
    def _logits(self, outputs: Any) -> torch.Tensor | None:
        if self.logits_module is not None:
            logits, self._captured = self._captured, None
            if logits is None:
                raise ValueError(
                    f"`logits_module={self.logits_module!r}` did not run during this batch, or its output holds "
                    "no tensor. HINT: name the module that produces the logits."
                )
            return logits
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        return logits if isinstance(logits, torch.Tensor) else None

    def _ids_and_labels(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.session.config
        return get_key(batch, cfg.id_key, "ids", "id_key"), get_key(batch, cfg.label_key, "labels", "label_key")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """A dataset whose length changed between epochs: an error when it outgrew the id range, else a warning."""
        length, before = _dataset_length(trainer.train_dataloader), self._train_length
        if length is None or before is None or length == before:
            return
        self._train_length = length
        capacity = self.session.capacities.get(TRAIN, before)
        if length > capacity:
            sparse = TRAIN in self.session.slot_maps
            sized = f"the {capacity} ids it was given" if sparse else f"ids 0..{capacity - 1}"
            fix = ("pass every id the dataset will hold as `sample_ids=`" if sparse
                   else "pass `num_samples=<the largest size the dataset will reach>`")
            raise ValueError(
                f"The train dataset grew from {before} to {length} samples before epoch {trainer.current_epoch}; "
                f"dq_plugins sized its record for {sized} at fit start, so the new samples could not be "
                f"recorded. HINT: {fix} to the callback."
            )
        warn(
            f"dq_plugins: the train dataset changed from {before} to {length} samples before epoch "
            f"{trainer.current_epoch}. Samples that left it keep the record of the epochs they were in, and their "
            "scores and flags rest on those epochs only. HINT: to score every sample on the same epochs, keep the "
            "dataset fixed during fit (filter it between fits instead).",
            RuntimeWarning,
            stacklevel=2,
        )

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start_timing(TRAIN, pl_module.device)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        spans = self._stop_timing()
        logits = outputs.get("logits") if self.logits_module is None and type(outputs) is dict else None
        if type(logits) is not torch.Tensor:  # the general lookup (a Mapping, a logits_module, a tensor subclass)
            logits = self._logits(outputs)
        if logits is None:
            keys = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"dq_plugins needs the logits of each training batch, but `training_step` returned {keys}. "
                "HINT: return `{'loss': loss, 'logits': logits}` from `training_step`, or pass "
                "`logits_module='<name of the submodule whose output is the logits>'` to the callback."
            )
        self._record_batch(TRAIN, trainer.current_epoch, outputs, batch, logits, spans)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._record_deferred()
        self.session.close_epoch(TRAIN)
        self._tasks.close_epoch(TRAIN)

    def _records_validation(self, trainer: Any) -> bool:
        """Validation batches are recorded inside ``trainer.fit`` only; ``trainer.validate()`` on its own is
        skipped with one warning (its samples have no training dynamics to score)."""
        if self._fitting:
            return True
        if not self._warned_not_fitting:
            warn(
                "dq_plugins records inside `trainer.fit` only; this `trainer.validate()` (or another loop run "
                "outside fit) is not recorded. HINT: to score a held-out set, pass it as the validation loader "
                "of `trainer.fit`.",
                UserWarning,
                stacklevel=3,
            )
            self._warned_not_fitting = True
        return False

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._records_validation(trainer):
            return
        if not (trainer.sanity_checking or not self.record_validation or dataloader_idx != 0):
            self._start_timing(VALIDATION, pl_module.device)

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        spans = self._stop_timing()
        if not self._fitting or trainer.sanity_checking or not self.record_validation or dataloader_idx != 0:
            self._captured = self._captured_embeddings = None
            return
        logits = self._logits(outputs)
        if logits is None:
            if not self._warned_no_val_logits:
                warn(
                    "dq_plugins: `validation_step` returned no logits, so the validation split is not recorded. "
                    "HINT: return `{'loss': loss, 'logits': logits}` from `validation_step`, or pass "
                    "`logits_module=` to the callback.",
                    UserWarning,
                    stacklevel=2,
                )
                self._warned_no_val_logits = True
            return
        self._record_batch(VALIDATION, trainer.current_epoch, outputs, batch, logits, spans)

    def _record_batch(self, split: str, epoch: int, outputs: Any, batch: Any, logits: torch.Tensor,
                      spans: Any) -> None:
        """Hand one batch of ``split`` to the recording: a multi-label or token task's recorder, else the
        session (dynamics, metadata, latency, embeddings, input fingerprints). No host sync."""
        session = self.session
        cfg = session.config
        ids = batch.get(cfg.id_key) if type(batch) is dict else None
        labels = batch.get(cfg.label_key) if ids is not None else None
        if type(ids) is not torch.Tensor or type(labels) is not torch.Tensor:  # the general lookup, with its errors
            ids, labels = self._ids_and_labels(batch)
        slots = session.to_slots(split, ids) if session.slot_maps else ids  # the ids themselves unless they are sparse
        if split in self._deferring:
            if cfg.metadata_keys:
                session.record_metadata(split, ids, batch)  # joined by sample id
            embeddings = self._batch_embeddings(outputs, batch, slots, logits.shape[-1]) if self.embeddings else None
            self._deferred.append((split, epoch, slots, labels, logits.detach(), spans, embeddings))
            if self.fingerprints:  # in the step, on the input while it is in cache
                buffer = session.fingerprints.get(split)
                if buffer is None or buffer.active:
                    self._record_inputs(split, batch, slots)
            if len(self._deferred) >= DEFERRED_BATCHES:
                self._record_deferred()
            return
        if not self._tasks.single_label:  # decided at the first batch: no mask lookup per step after that
            mask = batch.get(self.attention_mask_key) if isinstance(batch, Mapping) else None
            if self._tasks.route(split, epoch, slots, labels, logits, mask if isinstance(mask, torch.Tensor) else None):
                session.record_metadata(split, ids, batch)  # joined by sample id
                session.record_latency(split, slots, spans)
                self._record_embeddings(split, outputs, batch, slots, logits.shape[-1])  # one per sample (or sequence)
                self._record_inputs(split, batch, slots)
                return
        # the step's loss tells transposed square logits apart, checked on a split's first batch only
        session.record(split, epoch, slots, labels, logits, _step_loss(outputs) if session.first_batch(split) else None)
        if session.config.metadata_keys:
            session.record_metadata(split, ids, batch)  # joined by sample id
        session.record_latency(split, slots, spans)
        self._record_embeddings(split, outputs, batch, slots, logits.shape[1])
        if self.fingerprints:
            self._record_inputs(split, batch, slots)
        if logits.device.type == "cpu":  # checked and recorded: the split's next batches can wait (DEFERRED_BATCHES)
            self._deferring.add(split)

    def _record_deferred(self) -> None:
        """Record the deferred batches, in their order (see :data:`DEFERRED_BATCHES`)."""
        deferred, self._deferred = self._deferred, []
        session = self.session
        for split, epoch, slots, labels, logits, spans, embeddings in deferred:
            session.record(split, epoch, slots, labels, logits)
            session.record_latency(split, slots, spans)
            if embeddings is not None and self.embeddings:
                session.record_embeddings(split, slots, embeddings)

    def _record_inputs(self, split: str, batch: Any, ids: torch.Tensor) -> None:
        """Fingerprint the batch's model input (see ``input_key``); warn once when none is found."""
        buffer = self.session.fingerprints.get(split)
        if not self.fingerprints or (buffer is not None and not buffer.active):
            return  # every id has its fingerprint (FingerprintBuffer.active): the input is not even looked up
        cfg = self.session.config
        found = find_input(batch, self.input_key, (cfg.id_key, cfg.label_key, *cfg.metadata_keys),
                           self.attention_mask_key)
        if found is None:
            if not self._warned_no_input:
                warn(
                    "dq_plugins found no model input in the batch to fingerprint (no `input_ids` and no floating-point "
                    "tensor besides ids and labels), so input copies and leakage are not checked. HINT: pass "
                    "`input_key=` the batch key of the model input, or `fingerprints=False`.",
                    UserWarning,
                    stacklevel=2,
                )
                self._warned_no_input = True
            return
        _, inputs, mask = found
        self.session.record_inputs(split, ids, inputs, mask)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._fitting and not trainer.sanity_checking:
            self._record_deferred()
            self.session.close_epoch(VALIDATION)
            self._tasks.close_epoch(VALIDATION)
            self.session.check_validation_rules(self._sink)  # a FailRun("raise") rule stops fit (on_exception)

    # ------------------------------------------------------------------ end of fit
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._fitting = False
        self._record_deferred()
        if self._tasks.active:  # multi-label / token classification: their own analysis and outputs
            if self.embeddings and self.forward_fn is not None:
                self._inference_pass(trainer, pl_module)
            self._tasks.close_all()  # a collective under DDP (epochs and embeddings): every rank takes part
            if trainer.is_global_zero and self._sink is not None:
                try:
                    self._tasks.finish_run(self._sink)
                finally:
                    self.run_id = self._sink.run_id
            return
        if self.embeddings and self.forward_fn is not None:
            self._inference_pass(trainer, pl_module)
            if trainer.is_global_zero:
                self._embed_pools(trainer, pl_module)
        self.session.close_all()  # a collective under DDP: every rank takes part
        sink, self._sink = self._sink, None  # finished here: an exception raised now (a FailRun gate) ends nothing twice
        if not trainer.is_global_zero or sink is None:
            return
        try:
            self.session.finish_run(sink, options=self._options)
        finally:
            self.run_id = sink.run_id

    def _inference_pass(self, trainer: Any, pl_module: Any) -> None:
        """One eval-mode pass over the train and validation loaders with ``forward_fn``: final embeddings."""
        loaders = [(TRAIN, trainer.train_dataloader)]
        if self.record_validation and trainer.val_dataloaders is not None:
            val = trainer.val_dataloaders
            loaders.append((VALIDATION, val[0] if isinstance(val, (list, tuple)) else val))
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode(), trainer.precision_plugin.forward_context():
                for split, loader in loaders:
                    for batch in loader if loader is not None else []:
                        batch = trainer.strategy.batch_to_device(batch)
                        self._captured_embeddings = None
                        outputs = self.forward_fn(pl_module, batch)
                        ids = self.session.to_slots(split, get_key(batch, self.session.config.id_key, "ids", "id_key"))
                        ledger = self.session.ledgers.get(split) or self._tasks.ledgers.get(split)
                        width = ledger.num_classes if ledger is not None else -1
                        self._record_embeddings(split, outputs, batch, ids, width)
        finally:
            pl_module.train(was_training)

    def _embed_pools(self, trainer: Any, pl_module: Any) -> None:
        """Replace each DataLoader pool by the :class:`EmbeddingPool` of its batches, embedded like the
        train split (``forward_fn`` in eval and inference mode, the same hook and pooling)."""
        from dq_plugins.selection import EmbeddingPool

        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode(), trainer.precision_plugin.forward_context():
                for name, loader in list(self.session.pools.items()):
                    if isinstance(loader, EmbeddingPool):
                        continue
                    ids, rows = [], []
                    for batch in loader:
                        batch = trainer.strategy.batch_to_device(batch)
                        self._captured_embeddings = None
                        outputs = self.forward_fn(pl_module, batch)
                        captured, self._captured_embeddings = self._captured_embeddings, None
                        embeddings = outputs.get("embeddings") if isinstance(outputs, Mapping) else None
                        embeddings = embeddings if isinstance(embeddings, torch.Tensor) else captured
                        if embeddings is None:
                            raise ValueError(
                                f"Pool {name!r}: `forward_fn` ran but no embedding was captured. HINT: make "
                                "`forward_fn` call the module whose head the callback hooks, or return "
                                "{'embeddings': tensor}."
                            )
                        mask = batch.get(self.attention_mask_key) if isinstance(batch, Mapping) else None
                        rows.append(pool(embeddings.detach(), mask if isinstance(mask, torch.Tensor) else None,
                                         self.embedding_pooling).float())
                        ids.append(get_key(batch, self.session.config.id_key, "ids", "id_key").reshape(-1))
                    if not rows:
                        warn(f"dq_plugins: pool {name!r} yielded no batch; it is left out.", UserWarning,
                                      stacklevel=2)
                        del self.session.pools[name]
                        continue
                    self.session.pools[name] = EmbeddingPool(torch.cat(ids).cpu().numpy(),
                                                             torch.cat(rows).cpu().numpy())
        finally:
            pl_module.train(was_training)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Keep the raw record of an interrupted fit, end a run this callback opened FAILED and remove the
        staging folder, whatever stopped the fit (this callback's own error at the first batch included)."""
        self._fitting = False
        sink, self._sink = self._sink, None
        try:
            self._record_deferred()  # the batches before the failure belong to the kept record
        except Exception:  # noqa: BLE001 - a deferred batch that fails its checks is not kept; the fit's error is reported
            self._deferred = []
        if not trainer.is_global_zero or sink is None:
            return
        try:
            if self.session.ledgers or self._tasks.ledgers:
                self.session.close_all(reduce=False)  # other ranks may be gone: no collective
                self.session.save_raw(sink)
                sink.flush()
        except Exception as err:  # noqa: BLE001 - the fit's own exception is the one to report
            warn(f"dq_plugins could not keep the record of the interrupted fit: {err}", RuntimeWarning,
                          stacklevel=2)
        finally:
            sink.end("FAILED")

    # ------------------------------------------------------------------ checkpoint
    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint: two instances that record differently (other keys,
        logits module, splits or run) keep their records apart in one checkpoint."""
        cfg = self.session.config
        return self._generate_state_key(
            id_key=cfg.id_key, label_key=cfg.label_key, logits_module=self.logits_module,
            record_validation=self.record_validation, **self._sink_options,
        )

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Read a checkpoint written before :attr:`state_key` existed (state under the class name)."""
        states = checkpoint.get("callbacks") or {}
        legacy = type(self).__qualname__
        if self.state_key not in states and legacy in states:
            self.load_state_dict(states[legacy])

    def state_dict(self) -> dict[str, Any]:
        """The session's record plus ``run_id``: a resumed fit logs into the same MLflow run."""
        self._record_deferred()
        return {**self.session.state_dict(), "run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_state = dict(state_dict)  # applied at on_fit_start, which resets the session first
