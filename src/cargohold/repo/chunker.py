"""Cutting file contents into chunks.

Two methods, recorded per file in its tree node (``chunking``) so the next backup of
the same file keeps the same cut points:

* ``cdc`` — content-defined chunking (FastCDC, per-repository gear seed) with ~1 MiB
  chunks: insertions and deletions move only the chunks around them;
* ``fixed:N`` — N-byte chunks aligned to the file start, for large files whose size is a
  multiple of a database page (8 KiB): databases rewrite pages in place, so a rewritten
  page dirties one small chunk instead of the ~1 MiB CDC chunk around it. This is what
  makes one day of database change cheap (docs/FORMAT.md, "Chunking").

A file is read through :class:`ExtentReader`, which yields only the data regions of a
sparse file (the holes are recorded in the tree node, not stored).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pyfastcdc import FastCDC

CDC = "cdc"
FIXED_PREFIX = "fixed:"


@dataclass(frozen=True)
class ChunkerParams:
    #: FastCDC minimum, "average" (pyfastcdc's avg_size: the real mean is avg + min) and maximum.
    cdc_min: int = 512 * 1024
    cdc_avg: int = 512 * 1024
    cdc_max: int = 8 * 1024 * 1024
    #: Chunk size for page-structured files.
    fixed_size: int = 64 * 1024
    #: A file is treated as page-structured when its size is a multiple of this ...
    page_size: int = 8 * 1024
    #: ... and it is at least this large.
    fixed_min_file: int = 1024 * 1024

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChunkerParams:
        """Exactly the fields :meth:`to_json` writes, each a positive integer: an unknown or
        missing field is damage (a flipped byte in a name must not silently become a default).
        Raises ValueError (or TypeError) saying what is wrong."""
        if not isinstance(d, dict):
            raise TypeError(f"chunker settings must be an object, not {type(d).__name__}")
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - fields)
        missing = sorted(fields - set(d))
        if unknown or missing:
            what = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
            what += [f"missing field(s) {', '.join(missing)}"] if missing else []
            raise ValueError(f"chunker settings: {'; '.join(what)}")
        for k, v in d.items():
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"chunker setting {k} must be a positive integer, not {v!r}")
        params = cls(**d)
        if not params.cdc_min <= params.cdc_max or params.cdc_avg > params.cdc_max:
            raise ValueError("chunker settings: cdc_min <= cdc_avg <= cdc_max does not hold")
        return params

    def choose(self, size: int, previous: str | None) -> str:
        """The method for a file of ``size`` bytes; ``previous`` = the method of the parent snapshot."""
        if previous and (previous == CDC or previous.startswith(FIXED_PREFIX)):
            return previous
        if size >= self.fixed_min_file and size % self.page_size == 0:
            return f"{FIXED_PREFIX}{self.fixed_size}"
        return CDC


def data_extents(fd: int, size: int) -> list[tuple[int, int]] | None:
    """Data regions of a sparse file, or None when the file has no holes."""
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            end = min(end, size)
            if end > start:
                extents.append((start, end - start))
            pos = end
    except OSError:
        return None
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    if extents == [(0, size)]:
        return None
    return extents


class ExtentReader:
    """A file-like reader of the concatenated data regions of a file."""

    def __init__(self, fd: int, extents: list[tuple[int, int]] | None, size: int) -> None:
        self._fd = fd
        self._extents = list(extents) if extents is not None else [(0, size)]
        self._i = 0
        self._pos = self._extents[0][0] if self._extents else 0

    def _room(self, n: int) -> int:
        """How much of ``n`` can be read at the current position (0: no data left); moves to
        the next data region when the current one is done."""
        while self._i < len(self._extents):
            start, length = self._extents[self._i]
            end = start + length
            if self._pos < end:
                return min(n, end - self._pos)
            self._i += 1
            if self._i < len(self._extents):
                self._pos = self._extents[self._i][0]
        return 0

    def _advance(self, got: int) -> None:
        if got <= 0:  # the file shrank while we read it
            self._i = len(self._extents)
        else:
            self._pos += got

    def readinto(self, buf: memoryview) -> int:
        want = self._room(len(buf))
        if not want:
            return 0
        n = os.preadv(self._fd, [buf[:want]], self._pos)
        self._advance(n)
        return max(n, 0)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current data region (fewer at its end)."""
        want = self._room(n)
        if not want:
            return b""
        data = os.pread(self._fd, want, self._pos)
        self._advance(len(data))
        return data


class ChunkSource(Protocol):
    """What the chunker reads: a file's data regions, a tar member, any binary stream."""

    def readinto(self, buf: memoryview) -> int: ...

    def read(self, n: int) -> bytes: ...


class Chunker:
    """Cuts a reader into chunks; one instance per thread (FastCDC objects are not shareable)."""

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self.params = params
        self._cdc = FastCDC(params.cdc_avg, min_size=params.cdc_min, max_size=params.cdc_max, seed=seed)

    def chunks(self, reader: ChunkSource, method: str, size: int | None = None) -> Iterator[bytes]:
        """Chunks of the reader's data; ``size`` (expected data length) lets small files skip
        the stream chunker, whose per-call buffer set-up costs more than chunking them."""
        if method.startswith(FIXED_PREFIX):
            yield from self._fixed(reader, int(method[len(FIXED_PREFIX) :]))
            return
        if size is not None and size <= 2 * self.params.cdc_min:
            data = _read_upto(reader, size)
            if len(data) <= self.params.cdc_min:
                if data:
                    yield bytes(data)
                return
            for ch in self._cdc.cut_buf(data):
                yield bytes(ch.data)
            return
        for ch in self._cdc.cut_stream(reader):
            yield bytes(ch.data)

    @staticmethod
    def _fixed(reader: ChunkSource, size: int) -> Iterator[bytes]:
        """Chunks of exactly ``size`` bytes (the last one shorter), each read straight into
        its own bytes object: no block buffer to slice and copy again."""
        while True:
            data = reader.read(size)
            if len(data) < size and data:
                parts = [data]
                got = len(data)
                while got < size:
                    more = reader.read(size - got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
            if not data:
                return
            yield data
            if len(data) < size:
                return


def _read_upto(reader: ChunkSource, size: int) -> bytes | bytearray:
    """Read ``size`` bytes (fewer if the file shrank); a file that grew is read to its end."""
    buf = bytearray(size)
    mv = memoryview(buf)
    got = 0
    while got < size:
        n = reader.readinto(mv[got:])
        if n == 0:
            break
        got += n
    del mv
    if got < size:
        del buf[got:]
        return buf
    rest = []
    while True:
        more = reader.read(1024 * 1024)
        if not more:
            break
        rest.append(more)
    if rest:
        buf += b"".join(rest)
    return buf
