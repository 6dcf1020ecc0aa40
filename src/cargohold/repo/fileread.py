"""Reading one regular file for a backup: shared by the in-process pipeline
(:mod:`cargohold.repo.archiver`) and the worker processes (:mod:`cargohold.repo.procworker`).

:func:`read_file` opens the file without touching its atime, finds its data regions when
it is sparse, chooses the chunking method and hands the data to a ``store`` function that
cuts, hashes and stores it; what it returns describes the file's content or why it was
left out (vanished, replaced, unreadable). Errors other than the file's own I/O errors
propagate: they are the backup's, not the file's.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from cargohold.repo.chunker import ChunkerParams, ChunkSource, ExtentReader, data_extents
from cargohold.repo.crypto import Cipher
from cargohold.repo.format import BlobType, encode_blob

#: ``store(reader, method, data_size)`` -> (chunk ids, bytes read), or None when the backup is failing.
StoreFn = Callable[[ChunkSource, str, int], "tuple[list[bytes], int] | None"]


@dataclass
class FileRead:
    """The content of a file as stored, or ``ok=False`` (with a ``warning`` unless it vanished)."""

    ok: bool
    content: list[bytes] = field(default_factory=list)
    size: int = 0
    extents: list[tuple[int, int]] | None = None
    method: str = ""
    warning: str | None = None
    #: The file changed while it was read (size, modification or change time differ before
    #: and after): what is stored is what was read, which may mix old and new data.
    changed: bool = False


class Compressibility:
    """Stop compressing the rest of a file whose first chunks did not shrink."""

    __slots__ = ("shrank", "tried")
    PROBE = 4

    def __init__(self) -> None:
        self.tried = 0
        self.shrank = 0

    @property
    def compress(self) -> bool:
        return self.tried < self.PROBE or self.shrank > 0

    def record(self, shrank: bool) -> None:
        self.tried += 1
        if shrank:
            self.shrank += 1

    def encode(self, cipher: Cipher, blob_id: bytes, data: bytes, level: int) -> bytes:
        """The stored form of a data chunk of this file, compressed while that pays."""
        stored = encode_blob(cipher, BlobType.DATA, blob_id, data, level=level, compress=self.compress)
        self.record(len(stored) - Cipher.OVERHEAD - 1 < len(data))
        return stored


def open_noatime(path: bytes, *, directory: bool = False) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    if directory:
        flags |= os.O_DIRECTORY
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(path, flags | noatime)
        except PermissionError:
            pass
    return os.open(path, flags)


def read_file(path: bytes, previous_chunking: str | None, params: ChunkerParams, store: StoreFn) -> FileRead:
    """Store the content of the regular file ``path`` through ``store``."""
    shown = os.fsdecode(path)
    try:
        fd = open_noatime(path)
    except FileNotFoundError:
        return FileRead(False)
    except OSError as err:
        return FileRead(False, warning=f"{shown}: cannot read: {err.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return FileRead(False, warning=f"{shown}: replaced while reading")
        size = st.st_size
        extents = data_extents(fd, size) if st.st_blocks * 512 < size else None
        method = params.choose(size, previous_chunking)
        data_size = size if extents is None else sum(n for _, n in extents)
        stored = store(ExtentReader(fd, extents, size), method, data_size)
        if stored is None:
            return FileRead(False)
        content, total = stored
        after = os.fstat(fd)  # one more fstat per file: cheap beside the read it checks
        changed = (
            after.st_size != st.st_size
            or after.st_mtime_ns != st.st_mtime_ns
            or after.st_ctime_ns != st.st_ctime_ns
            or (extents is None and total != size)
        )
        warning = _changed_warning(shown, st, after, total) if changed else None
        if extents is None:
            size = total
        return FileRead(True, content, size, extents, method, warning, changed)
    except OSError as err:
        return FileRead(False, warning=f"{shown}: read error: {err.strerror}")
    finally:
        os.close(fd)


def _changed_warning(shown: str, before: os.stat_result, after: os.stat_result, total: int) -> str:
    if after.st_size != before.st_size:
        detail = f" (size {before.st_size} -> {after.st_size} bytes)"
    elif after.st_mtime_ns != before.st_mtime_ns:
        detail = " (modified)"
    elif after.st_ctime_ns != before.st_ctime_ns:
        detail = " (metadata changed)"
    else:
        detail = ""
    return f"{shown}: changed while it was read{detail}; the snapshot holds the {total} bytes read"
