"""The token ledger: per labelled token training dynamics on the model's device.

A token classifier gives ``(B, T, C)`` logits and ``(B, T)`` class ids with ``-100`` where a position
is ignored (padding, special tokens, the non-first sub-words of a word). Each token is addressed by
``(sample id, position in the model's input)``: slot ``id * W + position`` of buffers that are
``W`` positions wide (the *recorded width*, the longest input of the split). Per slot the ledger
keeps the sum of the softmax vectors over every occurrence and over the early window, the number
of occurrences, the given tag and the latest predicted tag; once per epoch it moves two scalars
(labelled tokens and correct predictions) to the host for the accuracy curve.

Ignored positions, ids out of range, tags outside ``0..C-1``, non-finite logits and positions at or
beyond the recorded width are routed to one trash slot on the device (no host sync, no boolean
indexing); the labelled ones among them are counted and the caller warns at the end of the epoch.

Memory per token position, ``C`` classes: ``8 C + 14`` bytes on the device (two ``C``-float sums, two
int32 counts, int16 tag, prediction and previous epoch's prediction): 86 bytes for ``C = 9`` (CoNLL
tags), so 1M tokens of CoNLL-2003 size cost 86 MB. Positions are allocated for ``N * W`` slots, padding
included; no per-epoch per-token history is kept on the host (the Label Wave keeps at most three host
copies of the sums while its window is open, see :class:`TokenLedger`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dq_plugins.recording import wave as wave_module
from dq_plugins.recording.ledger import distributed_rank_and_world
from dq_plugins.recording.stage import EpochStaging, RowStage, stageable
from dq_plugins.recording.task_ranks import localize_for_rank, reduce_buffers, reduced_copies
from dq_plugins.recording.wave import WaveTracker

_STATE_BUFFERS: tuple[str, ...] = ("prob_sum", "count", "early_sum", "early_count", "labels", "pred", "epoch_counts",
                                   "dropped")
"""Device buffers ``_<name>`` saved in a checkpoint (:meth:`TokenLedger.state_dict`)."""

_SUMMED: tuple[str, ...] = ("prob_sum", "count", "early_sum", "early_count", "epoch_counts", "dropped")
"""Buffers summed over ranks under ``torch.distributed`` (``labels`` and the epoch's predictions take the max)."""

_CROSS_EPOCH: tuple[str, ...] = ("prob_sum", "count", "early_sum", "early_count")
"""Sums kept across epochs: rank-local between reductions (:mod:`dq_plugins.recording.task_ranks`)."""

IGNORE_INDEX = -100
"""Tag of a position that is not labelled (the Hugging Face / PyTorch cross-entropy convention)."""

BYTES_PER_TOKEN = "8 C + 14"
"""Device bytes per recorded token position, ``C`` the number of tags (stated in the README)."""


@dataclass
class TokenHistory:
    """Host-side record of one split of a token classification task.

    Attributes:
        width: W, positions recorded per sequence.
        labels: (N, W) int16 given tag, -1 where the position was never labelled.
        pred: (N, W) int16 latest predicted tag, -1 where never labelled.
        mean_probs: (N, W, C) float32 mean softmax over every occurrence (held out: the latest pass);
            NaN where never labelled.
        early_probs: (N, W, C) float32 mean softmax over the early window, or ``None``.
        epochs: (E,) int64 recorded epochs; ``accuracy``: (E,) token accuracy of each.
        sample_ids: (N,) int64 sample id of each slot when the split's ids are sparse; ``None``: slot = id.
        early_window_end: the last epoch of the early window when the Label Wave chose it
            (:mod:`dq_plugins.recording.wave`); ``None``: the fixed window of ``early_epochs`` epochs.
    """

    width: int
    labels: np.ndarray
    pred: np.ndarray
    mean_probs: np.ndarray
    early_probs: np.ndarray | None
    epochs: np.ndarray
    accuracy: np.ndarray
    sample_ids: np.ndarray | None = None
    early_window_end: int | None = None

    task = "token_classification"  # the raw record's `task` (a class attribute, not a field)


class TokenLedger(EpochStaging):
    """Device buffers of one split of a token classification task.

    Args:
        capacity: N, valid sequence ids are ``0 .. N-1``.
        width: W, the recorded width; positions ``>= W`` are dropped and counted.
        num_classes: C, the number of tags.
        device: where the buffers live.
        stage_rows: token rows staged before they are folded into the sums.

    The early window: the first ``early_epochs`` epochs, or, with ``wave`` set (the train split when the
    user did not fix ``early_epochs``), the epochs up to the Label Wave minimum of the prediction changes
    (:func:`~dq_plugins.recording.wave.wave_epoch`). A token tagger learns its majority tag first and its
    entity tags for several epochs more, so a fixed window either falls while the tags are still being
    learnt (confident learning then counts twice the errors) or is not trusted and the count falls back to
    the memorising all-epoch mean. To take the window up to an epoch found three closes later, each close
    copies the all-epoch sums to the host while the minimum is not settled, keeping the last three (the window
    starts at the first epoch, so the all-epoch sum at an epoch's close *is* that window's sum); once it is
    settled one copy stays and nothing more is copied. No minimum: the fixed window.
    """

    def __init__(self, capacity: int, width: int, num_classes: int, device: torch.device | str = "cpu",
                 stage_rows: int | None = None) -> None:
        if capacity < 1 or width < 1 or num_classes < 2:
            raise ValueError(f"Expected capacity >= 1, width >= 1 and num_classes >= 2, but got {capacity}, "
                             f"{width} and {num_classes}.")
        self.capacity, self.width, self.num_classes = int(capacity), int(width), int(num_classes)
        self.device = torch.device(device)
        self.trash = self.capacity * self.width
        slots = self.trash + 1
        self._prob_sum = torch.zeros(slots, self.num_classes, device=self.device)
        self._count = torch.zeros(slots, dtype=torch.int32, device=self.device)
        self._early_sum = torch.zeros(slots, self.num_classes, device=self.device)
        self._early_count = torch.zeros(slots, dtype=torch.int32, device=self.device)
        self._labels = torch.full((slots,), -1, dtype=torch.int16, device=self.device)
        self._pred = torch.full((slots,), -1, dtype=torch.int16, device=self.device)
        # this epoch: labelled tokens recorded, correct ones; dropped: non-finite, bad tag, too long / unknown id
        self._epoch_counts = torch.zeros(2, dtype=torch.int64, device=self.device)
        self._dropped = torch.zeros(3, dtype=torch.int64, device=self.device)
        # under torch.distributed: this epoch's predictions (-1: not seen on this rank), merged into _pred at the
        # close, since another rank may hold an older prediction of the same token
        self._epoch_pred = (torch.full((slots,), -1, dtype=torch.int16, device=self.device)
                            if distributed_rank_and_world()[1] > 1 else None)
        self.early_epochs = 0
        self.latest_probs_only = False
        self.pending_epoch: int | None = None
        self.accuracy: dict[int, float] = {}
        self.wave: WaveTracker | None = None  # the Label Wave window, see enable_wave
        self._prev_pred: torch.Tensor | None = None
        self._stage = RowStage(int(stage_rows or min(262144, max(4096, 8_000_000 // self.num_classes))))

    # ------------------------------------------------------------------ hot path
    def record(self, ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, epoch: int,
               offsets: torch.Tensor | None = None) -> None:
        """Stage one batch: (B,) integer ids, (B, T) integer tags (-100 ignored), (B, T, C) float logits.

        ``offsets``: (B,) integer position of each row's first real token (its left padding, see
        :func:`first_attended`); a token's recorded position is its column minus its row's offset.
        ``None``: no left padding. A few small device ops per batch (the slot of each position), no host sync.
        """
        self._open_epoch(epoch)
        batch, length = labels.shape
        positions = torch.arange(length, device=ids.device).unsqueeze(0)
        if offsets is not None:
            positions = positions - offsets.to(ids.device, torch.int64).reshape(-1, 1)
        ids = ids.reshape(-1, 1).to(torch.int64)
        inside = (ids >= 0) & (ids < self.capacity) & (positions >= 0) & (positions < self.width)
        slots = torch.where(inside, ids * self.width + positions, self.trash).reshape(-1)
        # a position at or beyond the width, or of an unknown id, keeps its tag but goes to trash: counted below
        if self._stage.add(slots, labels.detach().reshape(-1), stageable(logits.reshape(batch * length, -1))):
            self.flush()

    def _reset_latest_probs(self) -> None:
        self._prob_sum.zero_()
        self._count.zero_()

    @torch.no_grad()
    def _accumulate(self, slots: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
        labelled = labels != IGNORE_INDEX
        finite = torch.isfinite(logits.sum(dim=1))
        tag_ok = (labels >= 0) & (labels < self.num_classes)
        placed = slots < self.trash
        valid = labelled & finite & tag_ok & placed
        slots = torch.where(valid, slots, self.trash)
        safe = torch.where(finite.unsqueeze(1), logits, 0.0)
        probs = torch.softmax(safe, dim=1)
        pred = safe.argmax(dim=1)
        tags = labels.clamp(0, self.num_classes - 1)
        ones = torch.ones_like(slots, dtype=torch.int32)
        self._prob_sum.index_add_(0, slots, probs)
        self._count.index_add_(0, slots, ones)
        if self.pending_epoch is not None and self.pending_epoch < self.early_epochs:
            self._early_sum.index_add_(0, slots, probs)
            self._early_count.index_add_(0, slots, ones)
        self._labels.index_copy_(0, slots, tags.to(torch.int16))
        self._pred.index_copy_(0, slots, pred.to(torch.int16))
        if self._epoch_pred is not None:
            self._epoch_pred.index_copy_(0, slots, pred.to(torch.int16))
        self._epoch_counts += torch.stack((valid.sum(), (valid & (pred == tags)).sum()))
        self._dropped += torch.stack((
            (labelled & placed & ~finite).sum(),
            (labelled & placed & ~tag_ok).sum(),
            (labelled & ~placed).sum(),
        ))

    # ------------------------------------------------------------------ once per epoch
    def close_epoch(self, reduce: bool = True) -> dict[str, int]:
        """Close the pending epoch: its token accuracy goes to the host; returns the counters of
        labelled tokens not recorded (``non_finite``, ``bad_tag``, ``too_long`` (beyond the width or of
        an unknown id)) and ``labelled`` (tokens recorded this epoch).

        Under ``torch.distributed`` a collective (every rank calls it): sums and counters over every
        rank, each token's prediction from the rank that saw it this epoch. ``reduce=False`` skips it."""
        if self.pending_epoch is None:
            return {"non_finite": 0, "bad_tag": 0, "too_long": 0, "labelled": 0}
        self.flush()
        if self._epoch_pred is not None:
            if reduce:
                reduce_buffers(self, _SUMMED, ("labels", "epoch_pred"), _CROSS_EPOCH)
            self._pred = torch.where(self._epoch_pred >= 0, self._epoch_pred, self._pred)
            self._epoch_pred.fill_(-1)
        changed = self._count_changes() if self.wave is not None and self.wave.open else None
        moved = torch.cat((self._epoch_counts, self._dropped) + (() if changed is None else (changed.reshape(1),)))
        labelled, correct, *dropped = moved.cpu().tolist()  # the one host sync of the close
        self.accuracy[self.pending_epoch] = correct / labelled if labelled else float("nan")
        if changed is not None:
            self.wave.close(self.pending_epoch, dropped.pop(),  # the tracker ignores a first close's count
                            lambda: (self._prob_sum[: self.trash].to("cpu", copy=True),
                                     self._count[: self.trash].to("cpu", copy=True)))
        self._epoch_counts.zero_()
        self._dropped.zero_()
        self.pending_epoch = None
        return {"non_finite": dropped[0], "bad_tag": dropped[1], "too_long": dropped[2], "labelled": labelled}

    def enable_wave(self) -> bool:
        """Choose the early window by the Label Wave (see the class doc) when the sums are small enough to
        copy (:data:`~dq_plugins.recording.wave.WAVE_SNAPSHOT_MAX_BYTES`); returns whether it is on. Call
        before the first epoch."""
        on = self.capacity * self.width * self.num_classes * 4 <= wave_module.WAVE_SNAPSHOT_MAX_BYTES
        self.wave = WaveTracker() if on else None
        return on

    def _count_changes(self) -> torch.Tensor:
        """Tokens whose prediction differs from the previous closed epoch's (a device scalar, int64); the
        current predictions become the previous ones."""
        if self._prev_pred is None:
            self._prev_pred = torch.full_like(self._pred, -1)
        pred, prev = self._pred[: self.trash], self._prev_pred[: self.trash]  # the trash slot is not a token
        changed = ((pred != prev) & (prev >= 0) & (pred >= 0)).sum()
        self._prev_pred.copy_(self._pred)
        return changed.to(torch.int64)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """Plain dict of CPU tensors and Python scalars (loads with ``weights_only=True``): the buffers
        (sums over every epoch so far and the pending epoch's counters) and the accuracy of closed epochs.
        No per-epoch per-token rows exist, so its size does not grow with the epochs. Under
        ``torch.distributed`` a collective: the saved buffers hold every rank's part."""
        self.flush()
        distributed = self._epoch_pred is not None
        buffers = reduced_copies(self, _STATE_BUFFERS + (("epoch_pred",) if distributed else ()), _SUMMED)
        if distributed:  # the pending epoch's predictions (from the rank that saw each token) over the older ones
            epoch_pred = buffers.pop("epoch_pred")
            buffers["pred"] = torch.where(epoch_pred >= 0, epoch_pred, buffers["pred"])
        return {
            "capacity": self.capacity,
            "width": self.width,
            "num_classes": self.num_classes,
            "pending_epoch": self.pending_epoch,
            "accuracy_epochs": list(self.accuracy),
            "accuracy": [float(v) for v in self.accuracy.values()],
            "early_epochs": self.early_epochs,
            "latest_probs_only": self.latest_probs_only,
            "wave": None if self.wave is None else self.wave.state_dict(),
            "prev_pred": None if self._prev_pred is None else self._prev_pred.to("cpu", copy=True),
            **buffers,
        }

    def localize_for_rank(self) -> None:
        """After every rank restored the same checkpoint, keep its sums on rank 0 only."""
        localize_for_rank(self, _SUMMED)

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> TokenLedger:
        """Rebuild a ledger saved by :meth:`state_dict` on ``device``."""
        ledger = cls(state["capacity"], state["width"], state["num_classes"], device)
        ledger.pending_epoch = state.get("pending_epoch")
        ledger.accuracy = {int(e): float(v) for e, v in zip(state["accuracy_epochs"], state["accuracy"])}
        ledger.early_epochs = int(state.get("early_epochs", 0))
        ledger.latest_probs_only = bool(state.get("latest_probs_only", False))
        ledger.wave = WaveTracker.from_state_dict(state["wave"]) if state.get("wave") else None
        if state.get("prev_pred") is not None:
            ledger._prev_pred = state["prev_pred"].to(ledger.device)
        for name in _STATE_BUFFERS:
            getattr(ledger, f"_{name}").copy_(state[name])
        return ledger

    def _mean(self, total: torch.Tensor, count: torch.Tensor) -> np.ndarray:
        c = count[: self.trash].unsqueeze(1)
        mean = torch.where(c > 0, total[: self.trash] / c.clamp(min=1), float("nan"))
        return mean.cpu().numpy().reshape(self.capacity, self.width, self.num_classes)

    def to_history(self, reduce: bool = True) -> TokenHistory:
        """The host record (the pending epoch is closed first, see :meth:`close_epoch`)."""
        self.close_epoch(reduce)
        seen = (self._count[: self.trash] > 0).cpu().numpy().reshape(self.capacity, self.width)
        labels = self._labels[: self.trash].cpu().numpy().reshape(self.capacity, self.width)
        pred = self._pred[: self.trash].cpu().numpy().reshape(self.capacity, self.width)
        epochs = sorted(self.accuracy)
        early_probs = self._mean(self._early_sum, self._early_count) if self.early_epochs > 0 else None
        window = self.wave.window() if self.wave is not None else None
        if window is not None:
            early_probs = self._mean(*window[1])
        return TokenHistory(
            width=self.width,
            labels=np.where(seen, labels, -1).astype(np.int16),
            pred=np.where(seen, pred, -1).astype(np.int16),
            mean_probs=self._mean(self._prob_sum, self._count),
            early_probs=early_probs,
            epochs=np.asarray(epochs, dtype=np.int64),
            accuracy=np.asarray([self.accuracy[e] for e in epochs], dtype=np.float64),
            early_window_end=None if window is None else window[0],
        )


def first_attended(attention_mask: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor | None:
    """(B,) int64 position of each row's first attended token: the length of its left padding (0 with
    right padding or none). ``None`` when there is no (B, T) mask of the tags' shape. One device op, no sync.
    A row with no attended position gets 0."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != labels.shape:
        return None
    return (attention_mask != 0).to(torch.int8).argmax(dim=1).to(torch.int64)


def check_token_batch(ids: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, label_key: str,
                      first: bool) -> None:
    """Shape checks of one token batch (metadata only); on the ``first`` batch of a split also the
    values (one host sync): some position must be labelled and every tag must be -100 or a class."""
    if logits.ndim != 3 or labels.ndim != 2 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"Expected token logits of shape (batch, seq_len, num_tags) and `{label_key}` of shape (batch, seq_len), "
            f"but got logits {tuple(logits.shape)} and tags {tuple(labels.shape)}. HINT: pad the tags with -100 to "
            "the length of input_ids (`DataCollatorForTokenClassification` does)."
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"Expected integer tags under `{label_key}` (-100 where ignored), but got dtype {labels.dtype}.")
    if ids.ndim != 1 or ids.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected one sample id per sequence, but got ids of shape {tuple(ids.shape)} for "
                         f"{labels.shape[0]} sequences.")
    if not first or not labels.numel():
        return
    labelled = labels != IGNORE_INDEX
    if not bool(labelled.any()):
        raise ValueError(
            f"Every tag under `{label_key}` in the first batch is -100 (ignored), so there is nothing to record. "
            "HINT: align the word tags to the tokens (label the first sub-word of each word) and check that "
            "the label column reaches the model."
        )
    bad = labels[labelled & ((labels < 0) | (labels >= logits.shape[2]))]
    if bad.numel():
        raise ValueError(
            f"Tag {int(bad[0])} under `{label_key}` is outside the {logits.shape[2]} tags of the logits (valid: "
            f"0..{logits.shape[2] - 1}, or -100 where ignored). HINT: the head needs one output per tag."
        )
