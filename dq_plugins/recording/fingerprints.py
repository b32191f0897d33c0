"""Per-sample fingerprints of the model's *input*: copies found from the data itself.

Embeddings cannot find copies reliably during training: two copies are embedded at different
steps by different weights (40 exact copies planted in 5,000 MNIST images: 7% found from the
embeddings). The input does not move, so each batch's input rows are fingerprinted on the device:

- ``hash`` (int64): an exact hash of the row, ``sum_k v_k * m_k mod 2^64`` in wrapping 64-bit
  integer arithmetic, ``m_k`` odd multipliers derived from the position ``k`` alone (SplitMix64)
  and ``v_k`` the row's values as integers: the float32 bit pattern of a float input, sign-extended
  (so ``-0.0`` and ``0.0`` differ, as do NaN payloads; a float64 value gives its two 32-bit halves,
  a float16/bfloat16 one goes through float32), or the value of a token id (any integer input).
  Integer arithmetic wraps, so the hash does not depend on the order of the sum (the batch size,
  the device, the chunking): two rows with the same values always share it. Zeros add nothing, so
  token ids padded with 0 (under the attention mask) hash alike whatever the batch's padded
  length. Two rows that differ in one value never collide; rows that differ in several collide
  with probability about ``2^-64`` per pair for values that are not adversarial (``2^-48`` for
  floats that differ only in their top 16 bits, ``2^-33`` for rows that differ only in signs).
- ``sketch`` (:data:`SKETCH_DIM` float32): a random projection for near-copies. A float input:
  ``flat @ R`` with ``R`` a fixed Gaussian ``(F, D)`` matrix (Johnson-Lindenstrauss: cosines of
  sketches follow cosines of inputs); a row with a NaN or infinite value gets a non-finite sketch
  from :func:`fingerprint`, which :class:`FingerprintBuffer` stores as zeros (that row's exact
  copies are still found, its near copies are not). Token ids: a bag-of-tokens sketch, each
  token adding a fixed pseudo-random +-1 vector, row ``id mod P`` of a ``(P, D)`` table with
  ``P`` = :data:`TOKEN_SLOTS` (the hashing trick, Weinberger et al. 2009, "Feature Hashing for Large
  Scale Multitask Learning": two tokens share a vector when their ids are congruent mod ``P``), so
  cosines follow the token-count vectors. One ``embedding_bag`` per batch.

:class:`FingerprintBuffer` keeps the latest fingerprint of every sample id (last write wins, as
the embedding buffer does) in a table on the **host**: each step fingerprints its batch on the
device (a few kernels, no host sync) and stages the ``8 + 4D`` bytes per row; a full stage is
handed to a :class:`~dq_plugins.recording.stage.HostFold` (non-blocking copies into pinned memory,
written into the table on a worker thread). Memory, ``N`` sample ids, ``S`` staged rows,
``D = 32``:

- device: ``2 * S * (16 + 4D)`` bytes of stage (2.4 MB), the per-step workspace (at most
  :data:`CHUNK_WORDS` hashed values at a time) and the constants (``4 * F * D`` bytes of
  projection for inputs of ``F`` values, ``4 * (P + 1) * D`` bytes of token table, 2.1 MB);
  nothing per sample;
- host: ``N * (9 + 4D)`` bytes (137 per sample, 175 MB for 1.28M samples) and two pinned stages.
"""

from __future__ import annotations

import numpy as np
import torch

from dq_plugins.recording.stage import HostFold, RowStage

SKETCH_DIM = 32
"""Width of the random-projection sketch."""

STAGE_ROWS = 8192
"""Fingerprints staged on the device before they are handed to the host (``S`` in the module doc)."""

CHUNK_WORDS = 1 << 21
"""Hashed values (int64 ``v_k``) at once: a batch above this is fingerprinted in row chunks, which
bounds the temporaries of a step (:data:`WORKSPACE_BYTES_PER_WORD` per value)."""

WORKSPACE_BYTES_PER_WORD = 20
"""Device bytes of a step's temporaries per hashed value, at most: the int64 values and their int64
products (16), and a float32 copy of a float input of another dtype (4)."""

HOST_BYTES_PER_SAMPLE = 8 + 4 * SKETCH_DIM + 1
"""Host bytes per sample id of :class:`FingerprintBuffer`: int64 hash, float32 sketch, seen flag."""

TOKEN_SLOTS = 16381
"""Rows ``P`` of the token sketch's table (a prime, so that ids ``mod P`` spread evenly)."""

_SEED = 0x5EED


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser of ``values`` (uint64, wrapping): a well-mixed 64-bit value per input."""
    z = values + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_multipliers(width: int) -> torch.Tensor:
    """``(width,)`` int64 odd multipliers ``m_k`` of the hash; entry ``k`` depends on ``k`` only, so
    those of a narrower width are a prefix (a padded token batch hashes like an unpadded one)."""
    positions = np.arange(width, dtype=np.uint64) + np.uint64(_SEED << 32)
    return torch.from_numpy((_splitmix64(positions) | np.uint64(1)).view(np.int64))


class _Constants:
    """Per device: the hash multipliers (the widest width seen, and a view per width), per width the
    projection matrix, and the token table, built once and looked up by ``(width, device)`` (no per-step host work)."""

    def __init__(self) -> None:
        self._widest: dict[torch.device, torch.Tensor] = {}
        self._views: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._projections: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._token_tables: dict[torch.device, torch.Tensor] = {}

    def multipliers(self, width: int, device: torch.device) -> torch.Tensor:
        """``(width,)`` int64 on ``device`` (a view of the widest built so far)."""
        key = (width, device)
        view = self._views.get(key)
        if view is None:
            widest = self._widest.get(device)
            if widest is None or widest.shape[0] < width:
                grown = max(width, 2 * (0 if widest is None else widest.shape[0]))
                widest = self._widest[device] = hash_multipliers(grown).to(device)
                self._views = {k: v for k, v in self._views.items() if k[1] != device}  # views of the old one
            view = self._views[key] = widest[:width]
        return view

    def projection(self, width: int, device: torch.device) -> torch.Tensor:
        """``(width, D)`` float32 Gaussian matrix on ``device``, scaled by ``1 / sqrt(D)``."""
        key = (width, device)
        matrix = self._projections.get(key)
        if matrix is None:
            generator = torch.Generator().manual_seed(_SEED + width)
            matrix = torch.randn(width, SKETCH_DIM, generator=generator) / SKETCH_DIM**0.5
            matrix = self._projections[key] = matrix.to(device)
        return matrix

    def token_table(self, device: torch.device) -> torch.Tensor:
        """``(P + 1, D)`` float32 on ``device``: rows ``0 .. P-1`` random +-1 (the vector of the tokens whose
        id is that row mod ``P``), row ``P`` zeros (where padding goes)."""
        table = self._token_tables.get(device)
        if table is None:
            generator = torch.Generator().manual_seed(_SEED)
            signs = torch.randint(0, 2, (TOKEN_SLOTS, SKETCH_DIM), generator=generator).float() * 2 - 1
            table = self._token_tables[device] = torch.cat([signs, torch.zeros(1, SKETCH_DIM)]).to(device)
        return table

    def device_bytes(self, device: torch.device) -> int:
        """Bytes of the constants held on ``device``."""
        tensors = [t for (_, d), t in self._projections.items() if d == device]
        tensors += [self._widest[device]] if device in self._widest else []
        tensors += [self._token_tables[device]] if device in self._token_tables else []
        return sum(t.numel() * t.element_size() for t in tensors)


_CONSTANTS = _Constants()


def _values(rows: torch.Tensor) -> torch.Tensor:
    """``(B, W)`` int64 values ``v_k`` of ``(B, F)`` rows (see the module doc)."""
    if rows.is_floating_point():
        if rows.dtype in (torch.float16, torch.bfloat16):
            rows = rows.to(torch.float32)
        rows = rows.contiguous().view(torch.int32)  # float64: two words per value
    return rows.to(torch.int64)


def _values_per_input(rows: torch.Tensor) -> int:
    """Hashed values per input value (2 for float64, else 1)."""
    return 2 if rows.is_floating_point() and rows.element_size() == 8 else 1


def _hash(values: torch.Tensor) -> torch.Tensor:
    """``(B,)`` int64 hash of ``(B, W)`` int64 values (wrapping). On the CPU one integer matrix-vector
    product (no ``(B, W)`` temporary of products); elsewhere (CUDA has no integer ``mv``) a product and a sum.
    Integer arithmetic wraps, so both give the same bits."""
    multipliers = _CONSTANTS.multipliers(values.shape[1], values.device)
    if values.device.type == "cpu":
        return torch.mv(values, multipliers)
    return (values * multipliers).sum(dim=1)


def _token_sketch(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` float32 bag-of-tokens sketch of ``(B, T)`` token ids (0 = padding, left out): the sum of the
    table rows ``id mod P`` (see the module doc). The entries are +-1, so every sum is an exact integer: the
    same bag gives the same bits in any order, padded or not."""
    table = _CONSTANTS.token_table(tokens.device)
    slots = torch.where(tokens != 0, tokens.remainder(TOKEN_SLOTS), TOKEN_SLOTS)
    if tokens.device.type in ("cpu", "cuda"):
        return torch.nn.functional.embedding_bag(slots, table, mode="sum")
    return table[slots].sum(dim=1)  # devices without embedding_bag


def _fingerprint_rows(rows: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fingerprint` of ``(B, F)`` rows (and a ``(B, F)`` mask for token ids), all at once."""
    if rows.is_floating_point():
        values = rows if rows.dtype == torch.float32 else rows.to(torch.float32)
        return _hash(_values(rows)), values @ _CONSTANTS.projection(rows.shape[1], rows.device)
    tokens = rows if mask is None else rows * (mask != 0)
    return _hash(_values(tokens)), _token_sketch(tokens)


def _chunk_rows(rows: torch.Tensor) -> int:
    """Rows fingerprinted at once (see :data:`CHUNK_WORDS`)."""
    return max(1, CHUNK_WORDS // max(1, rows.shape[1] * _values_per_input(rows)))


def fingerprint(inputs: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact hash and near-copy sketch of each row of a batch (see the module docstring). No host sync.

    Args:
        inputs: ``(B, ...)`` one row per sample: a float tensor (images, features) or an integer
            tensor of token ids ``(B, T)``.
        attention_mask: ``(B, T)`` for token ids, 1 for real tokens (positions at 0 are left out);
            ``None``: every position counts. Ignored for a float input.

    Returns:
        ``(hash (B,) int64, sketch (B, SKETCH_DIM) float32)`` on ``inputs.device``; a float row with
        a NaN or infinite value has a non-finite sketch.

    Raises:
        ValueError: if ``inputs`` has no batch dimension or a mask does not match ``(B, T)``.
    """
    return _fingerprint_chunks(*_rows_and_mask(inputs, attention_mask))


def _fingerprint_chunks(rows: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fingerprint` of checked ``(B, F)`` rows, in row chunks of at most :data:`CHUNK_WORDS` words."""
    step = _chunk_rows(rows)
    if rows.shape[0] <= step:
        return _fingerprint_rows(rows, mask)
    parts = [_fingerprint_rows(rows[i:i + step], None if mask is None else mask[i:i + step])
             for i in range(0, rows.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _rows_and_mask(inputs: torch.Tensor, attention_mask: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, F)`` rows and, for token ids, the ``(B, F)`` mask or ``None``; shapes checked (no sync)."""
    if inputs.ndim < 1:
        raise ValueError(f"Expected inputs of shape (batch, ...) but got {tuple(inputs.shape)}.")
    rows = inputs.detach().reshape(inputs.shape[0], -1)
    if attention_mask is None or rows.is_floating_point():
        return rows, None
    mask = attention_mask.detach().reshape(attention_mask.shape[0], -1)
    if mask.shape != rows.shape:
        raise ValueError(
            f"Expected an attention mask of shape {tuple(rows.shape)} (one entry per token) but got "
            f"{tuple(attention_mask.shape)}."
        )
    return rows, mask


class FingerprintBuffer:
    """Latest input fingerprint per sample id, in a host table (see the module doc).

    Each :meth:`write` fingerprints its batch on the device and stages the result; a full stage
    goes to the host asynchronously. An input does not change between epochs (unless augmented),
    so once every id ``0..N-1`` has a fingerprint the buffer stops fingerprinting (:attr:`active`
    is False; :meth:`close_epoch` checks once per epoch, after waiting for the host writes): a full
    pass over the data pays once, in its first epoch, and a sampler that covers a subset keeps
    fingerprinting the ids it brings until all are seen. With random augmentation, the first
    view of each sample is kept.

    Args:
        capacity: N sample ids (0..N-1); rows for other ids are dropped.
        device: the model's device, where batches are fingerprinted and staged.
        stage_rows: fingerprints staged before they go to the host (:data:`STAGE_ROWS`).
    """

    def __init__(self, capacity: int, device: torch.device | str, stage_rows: int = STAGE_ROWS) -> None:
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self._hash = torch.zeros(self.capacity, dtype=torch.int64)
        self._sketch = torch.zeros(self.capacity, SKETCH_DIM, dtype=torch.float32)
        self._seen = torch.zeros(self.capacity, dtype=torch.bool)
        self._num_seen = 0  # distinct ids written so far (host side, updated by the folds)
        self._fold = HostFold(self.device)
        self.stage_rows = int(stage_rows)
        self._stage = RowStage(self.stage_rows)
        self._workspace_peak = 0  # device bytes of the largest step's temporaries
        self.active = True
        """False once every id has a fingerprint: :meth:`write` then does nothing."""

    def write(self, ids: torch.Tensor, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Fingerprint ``inputs`` ``(B, ...)`` (:func:`fingerprint`) and keep them under ``ids`` ``(B,)``.
        No host sync; nothing happens when :attr:`active` is False. When an id occurs more than once
        before the stage reaches the host (a stage can span epochs), the last write wins."""
        if not self.active:
            return
        if inputs.ndim < 1 or inputs.shape[0] != ids.shape[0]:
            raise ValueError(
                f"Expected one input row per sample id: {ids.shape[0]} ids but inputs of shape {tuple(inputs.shape)}. "
                "HINT: name the batch key that holds the model input with `input_key=`."
            )
        rows, mask = _rows_and_mask(inputs, attention_mask)
        hashes, sketch = _fingerprint_chunks(rows, mask)
        words = min(rows.shape[0], _chunk_rows(rows)) * rows.shape[1] * _values_per_input(rows)
        self._workspace_peak = max(self._workspace_peak, WORKSPACE_BYTES_PER_WORD * words)
        if self._stage.add(ids.detach(), hashes, sketch):
            self.flush()

    def flush(self) -> None:
        """Hand the staged fingerprints to the host (asynchronously on CUDA)."""
        staged = self._stage.take(self.device, (torch.int64, torch.int64, torch.float32))
        if staged is not None:
            self._fold.submit(self._write_host, *staged)

    def _write_host(self, ids: torch.Tensor, hashes: torch.Tensor, sketch: torch.Tensor) -> None:
        """Host side of a flush: (R,) ids, (R,) hashes, (R, D) sketches in write order; the last
        occurrence of each id wins, ids outside ``0..N-1`` are dropped, non-finite sketches become 0."""
        ids_np = ids.numpy()
        reverse = ids_np[::-1]
        unique, first = np.unique(reverse, return_index=True)  # first in reverse = last written
        keep = (unique >= 0) & (unique < self.capacity)
        slots, rows = unique[keep], (ids_np.shape[0] - 1 - first)[keep]
        self._hash.numpy()[slots] = hashes.numpy()[rows]
        values = sketch.numpy()[rows]  # a copy (fancy indexing)
        values[~np.isfinite(values)] = 0.0
        self._sketch.numpy()[slots] = values
        seen = self._seen.numpy()
        self._num_seen += int(np.count_nonzero(~seen[slots]))
        seen[slots] = True

    def close_epoch(self) -> None:
        """Hand over what is staged, wait for the host writes and stop (:attr:`active` False) once
        every id has a fingerprint. Waits for the device: call it once per epoch."""
        self.flush()
        self._fold.wait()
        self.active = self._num_seen < self.capacity

    def device_bytes(self) -> int:
        """The most bytes held on the model's device at once: the stage and its concatenation, the
        largest step's temporaries and the constants (projection, multipliers) for this device."""
        return 2 * self._stage.peak_bytes + self._workspace_peak + _CONSTANTS.device_bytes(self.device)

    def host_bytes(self) -> int:
        """Bytes held in host RAM: the table (:data:`HOST_BYTES_PER_SAMPLE` per id) and the pinned stages in flight."""
        return self.capacity * HOST_BYTES_PER_SAMPLE + self._fold.peak_pinned_bytes

    def gather(self) -> None:
        """Under ``torch.distributed``: every rank gets every sample's fingerprint (a collective);
        each id keeps the row of the lowest rank that saw it."""
        from dq_plugins.recording.embeddings import lowest_rank_rows
        from dq_plugins.recording.ledger import all_reduce_sum, distributed_rank_and_world

        self.flush()
        self._fold.wait()
        rank, world = distributed_rank_and_world()
        if world < 2:
            return
        mine, self._seen = lowest_rank_rows(self._seen, rank, world, self.device)
        self._hash.masked_fill_(~mine, 0)
        self._sketch.masked_fill_(~mine.unsqueeze(1), 0)
        all_reduce_sum(self._hash, self.device)
        all_reduce_sum(self._sketch, self.device)
        self._num_seen = int(self._seen.sum())

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (M,) int64, hashes (M,) int64, sketches (M, SKETCH_DIM) float32) of the ids seen."""
        self.flush()
        self._fold.wait()
        ids = np.flatnonzero(self._seen.numpy())
        return ids, self._hash.numpy()[ids], self._sketch.numpy()[ids]
