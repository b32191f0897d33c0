"""Read an untrusted ``.npz`` (a raw record or embeddings downloaded from a run) only after its
declared sizes are checked.

An ``.npz`` is a zip of ``.npy`` files; a small compressed file can declare gigabytes. Before
``np.load`` decompresses anything, :func:`check_npz` reads the zip directory (each member's declared
uncompressed size) and each member's ``.npy`` header (dtype and shape: the first few hundred bytes of
the member, the only part decompressed), and refuses object arrays (pickles), headers that disagree
with the zip directory, and totals above a budget.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

MAX_NPZ_BYTES_ENV = "DQ_PLUGINS_MAX_NPZ_BYTES"
"""Environment variable that overrides :data:`DEFAULT_MAX_NPZ_BYTES`."""
DEFAULT_MAX_NPZ_BYTES = 8 * 2**30
"""Largest total of declared array bytes read from one ``.npz`` (8 GiB)."""


def max_npz_bytes() -> int:
    """The budget: ``$DQ_PLUGINS_MAX_NPZ_BYTES`` if set, else :data:`DEFAULT_MAX_NPZ_BYTES`."""
    value = os.environ.get(MAX_NPZ_BYTES_ENV)
    return int(value) if value else DEFAULT_MAX_NPZ_BYTES


def check_npz(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Declared ``name -> (dtype, shape)`` of every array in the ``.npz`` at ``path``, read without
    decompressing the arrays.

    Raises:
        ValueError: not a zip of ``.npy`` files, an object (pickled) array, a member whose header
            declares more bytes than the zip directory does, or a total above ``max_bytes``
            (default :func:`max_npz_bytes`); the message names the file, the sizes and the fix.
    """
    budget = max_npz_bytes() if max_bytes is None else int(max_bytes)
    path = Path(path)
    declared: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    total = 0
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{str(path)!r} is not an .npz file (not a zip archive: {err}).") from err
    with archive:
        members = archive.infolist()
        listed = sum(info.file_size for info in members)
        if listed > budget + 4096 * len(members):
            raise ValueError(_too_large(path, listed, budget))
        for info in members:
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{str(path)!r} holds {info.filename!r}, which is not an .npy array.")
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                except ValueError as err:
                    raise ValueError(f"{str(path)!r}: member {info.filename!r} has no valid .npy header ({err}).") from err
            if dtype.hasobject:
                raise ValueError(f"{str(path)!r}: array {info.filename[:-4]!r} holds Python objects; dq_plugins reads "
                                 "numeric arrays only (no pickles).")
            nbytes = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
            if nbytes > info.file_size:
                raise ValueError(
                    f"{str(path)!r}: array {info.filename[:-4]!r} declares shape {shape} ({nbytes} bytes) but its zip "
                    f"entry holds {info.file_size} bytes: the file is corrupt or forged."
                )
            total += nbytes
            declared[info.filename[:-4]] = (dtype, tuple(int(n) for n in shape))
    if total > budget:
        raise ValueError(_too_large(path, total, budget))
    return declared


def _too_large(path: Path, size: int, budget: int) -> str:
    return (f"{str(path)!r} declares {size / 2**30:.2f} GiB of arrays, above the {budget / 2**30:.2f} GiB that "
            f"dq_plugins reads from one .npz. HINT: if the file is yours and that size is expected, raise the limit "
            f"with the environment variable {MAX_NPZ_BYTES_ENV}=<bytes>.")
