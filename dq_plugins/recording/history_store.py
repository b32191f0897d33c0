"""Append-only store of the per-epoch record: one file per epoch, outside the checkpoint.

A ledger closes an epoch into a row of ``(N,)`` arrays (:data:`~dq_plugins.recording.ledger.FLOAT_FIELDS`
as float32 and ``pred`` as int32, 28 bytes per sample). Kept in RAM and in every checkpoint, that
history made checkpoints grow with the epochs; here each closed epoch is written once to
``<folder>/epoch_<e>.npz`` (``np.savez``, uncompressed: a copy, not a compression, inside the
epoch-end hook; written to a temporary name and renamed, so a kill mid-write never leaves a half
file) and the checkpoint holds only the folder and the epochs written (:meth:`EpochStore.state_dict`): its size does not depend on the number of epochs.

The write runs on a background thread (one at a time, in order), so the epoch-end hook does not wait
for the disk: until it has finished the row is served from RAM, and every read of the folder's state
(:meth:`EpochStore.state_dict`, :meth:`EpochStore.detach_to_memory`, the next write) waits for it
first, so a checkpoint lists only epochs whose file is complete.

Without a folder (``folder=None``, a bare :class:`~dq_plugins.recording.ledger.SplitLedger`) the
rows stay in RAM and in the checkpoint, as before. When a write fails (full disk, a folder that is
not writable) the store warns once, naming the folder and the fix, and keeps that epoch and the
next ones in RAM: nothing recorded is lost and training goes on.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from dq_plugins.logs import warn

HISTORY_DIR_ENV = "DQ_PLUGINS_HISTORY_DIR"
"""Environment variable naming the default root of the spilled history (else the temp folder)."""

Row = dict[str, np.ndarray]
Fetch = Callable[[int], "Row | None"]
"""``fetch(epoch)``: the row of an epoch recovered from elsewhere (the run's raw record), or ``None``."""


def default_history_root() -> Path:
    """``$DQ_PLUGINS_HISTORY_DIR`` or ``<temp folder>/dq_plugins_history``."""
    return Path(os.environ.get(HISTORY_DIR_ENV) or Path(tempfile.gettempdir()) / "dq_plugins_history")


def new_history_folder(root: str | os.PathLike | None = None) -> Path:
    """A fresh, unique folder name under ``root`` (not created yet)."""
    return Path(root if root is not None else default_history_root()) / uuid.uuid4().hex[:16]


class EpochStore(Mapping):
    """``epoch -> row`` (a dict of ``(N,)`` arrays), written to ``folder`` as it is set.

    Args:
        folder: where epoch files go (created on the first write); ``None`` keeps rows in RAM.
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._on_disk: set[int] = set()
        self._in_memory: dict[int, Row] = {}
        self._cache: tuple[int, Row] | None = None  # the row written or read last
        self._writing: dict[int, tuple[Row, Future]] = {}  # epoch -> (row, its write), in submission order
        self._executor: ThreadPoolExecutor | None = None
        self._made: Path | None = None  # the folder created (the first write to it creates it)

    def __getstate__(self) -> dict:
        """Pickle / ``copy.deepcopy`` support: the writes finished first, without the writer thread (a copy
        starts its own on its first write)."""
        self.wait()
        return {**self.__dict__, "_executor": None, "_writing": {}}

    # ------------------------------------------------------------------ Mapping
    def __getitem__(self, epoch: int) -> Row:
        epoch = int(epoch)
        if epoch in self._in_memory:
            return self._in_memory[epoch]
        if epoch in self._writing:
            return self._writing[epoch][0]
        if epoch not in self._on_disk:
            raise KeyError(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        with np.load(self.path(epoch)) as data:
            row = {name: data[name] for name in data.files}
        self._cache = (epoch, row)
        return row

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._on_disk | set(self._in_memory) | set(self._writing)))

    def __len__(self) -> int:
        return len(self._on_disk | set(self._in_memory) | set(self._writing))

    def __contains__(self, epoch: object) -> bool:
        return epoch in self._on_disk or epoch in self._in_memory or epoch in self._writing

    # ------------------------------------------------------------------ writes
    def path(self, epoch: int) -> Path:
        """The file of ``epoch`` (whether written or not)."""
        assert self.folder is not None
        return self.folder / f"epoch_{int(epoch):05d}.npz"

    def __setitem__(self, epoch: int, row: Row) -> None:
        """Write (or replace) ``epoch`` on the background thread (see the module doc); a write that fails
        with an OS error warns once, at the next write or read of the folder's state, and the epoch
        stays in RAM."""
        epoch = int(epoch)
        self.wait()  # one write in flight: the previous epoch's outcome is known before this one starts
        if self.folder is not None and self._made != self.folder:
            try:  # once per folder, here: a background write never recreates a folder removed since
                self.folder.mkdir(parents=True, exist_ok=True)
                self._made = self.folder
            except OSError as error:
                self._fall_back_to_memory(epoch, error)
        if self.folder is None:
            self._in_memory[epoch] = row
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dq_plugins_history")
        self._in_memory.pop(epoch, None)
        self._cache = (epoch, row)
        self._writing[epoch] = (row, self._executor.submit(_write_row, self.path(epoch), row))

    def wait(self) -> None:
        """Finish the background writes: their epochs are on disk, or (a write failed) every epoch is in RAM
        from now on, with one warning that names the folder and the fix."""
        while self._writing:
            epoch = next(iter(self._writing))
            row, future = self._writing[epoch]
            error = future.exception()
            del self._writing[epoch]
            if self.folder is None:  # an earlier write failed: everything lives in RAM now
                self._in_memory[epoch] = row
            elif error is None:
                self._on_disk.add(epoch)
            elif isinstance(error, OSError):
                self._fall_back_to_memory(epoch, error)
                self._in_memory[epoch] = row
            else:
                self._in_memory[epoch] = row
                raise error

    def _fall_back_to_memory(self, epoch: int, error: OSError) -> None:
        """Warn once, naming the folder and the fix, and keep every epoch in RAM from now on."""
        assert self.folder is not None
        warn(
            f"dq_plugins: could not write the recorded history of epoch {epoch} to {str(self.folder)!r} "
            f"({error}); it is kept in memory and in the checkpoints instead (they grow with the epochs). "
            f"HINT: free disk space there or pass `history_dir=` (or set ${HISTORY_DIR_ENV}) to a "
            "writable folder with room.",
            RuntimeWarning,
            stacklevel=3,
        )
        for old in sorted(self._on_disk):  # everything from now on lives in RAM
            try:
                self._in_memory.setdefault(old, self[old])
            except OSError:
                pass  # unreadable too: only the checkpoint's pointer to it is lost
        self._on_disk.clear()
        self.folder = None

    def disk_bytes(self) -> int:
        """Bytes of the epoch files written."""
        self.wait()
        return sum(self.path(e).stat().st_size for e in self._on_disk if self.path(e).exists())

    def memory_bytes(self) -> int:
        """Bytes of the rows held in RAM (the cache of one row included)."""
        rows = list(self._in_memory.values()) + ([self._cache[1]] if self._cache else [])
        rows += [row for epoch, (row, _) in self._writing.items() if self._cache is None or self._cache[0] != epoch]
        return sum(a.nbytes for row in rows for a in row.values())

    def detach_to_memory(self) -> None:
        """Read every epoch file into RAM and forget the folder (before its files are deleted)."""
        self.wait()
        if self.folder is None:
            return
        for epoch in sorted(self._on_disk):
            self._in_memory[epoch] = self[epoch]
        self._on_disk.clear()
        self._cache = None
        self.folder = None

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """The folder and the epochs on disk (constant size), plus the rows kept in RAM if any. Waits for
        the background writes: a checkpoint never points to an epoch file that is not complete."""
        self.wait()
        return {
            "folder": str(self.folder) if self.folder is not None else None,
            "epochs_on_disk": sorted(self._on_disk),
            "in_memory": {e: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in row.items()}
                          for e, row in self._in_memory.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict, fetch: Fetch | None = None) -> EpochStore:
        """Rebuild a store; epoch files missing from the folder are fetched with ``fetch`` (the MLflow
        run) when it can, else a ``FileNotFoundError`` names the folder, the epochs and the fix."""
        store = cls(state.get("folder"))
        store._in_memory = {int(e): {k: v.numpy() for k, v in row.items()} for e, row in state.get("in_memory", {}).items()}
        missing = []
        for epoch in state.get("epochs_on_disk", []):
            store._on_disk.add(int(epoch))
            if not store.path(epoch).exists():
                missing.append(int(epoch))
        for epoch in list(missing):
            row = fetch(epoch) if fetch is not None else None
            if row is not None:
                store._on_disk.discard(epoch)
                store[epoch] = row  # back into the folder (or RAM if it cannot be written)
                missing.remove(epoch)
        store.wait()
        if missing:
            raise FileNotFoundError(
                f"dq_plugins: the checkpoint's recorded history of epochs {missing} is not in {str(store.folder)!r} "
                "(resumed on another machine, or the folder was cleaned up) and could not be fetched from the MLflow "
                "run. HINT: copy that folder here (same path), or pass `history_dir=` a folder shared by both "
                "machines, or resume in the same MLflow run so the epoch files logged there can be fetched."
            )
        return store


def _write_row(target: Path, row: Row) -> None:
    """Write ``row`` to ``target`` (in a folder that exists) through a temporary name and a rename (the
    background write)."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        np.savez(handle, **row)
    os.replace(partial, target)
