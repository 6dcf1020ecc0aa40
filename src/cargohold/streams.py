"""Byte streams from iterators of chunks (what docker-py and the archive API yield)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any


class IterStream(io.RawIOBase):
    """A readable raw stream over an iterator of byte chunks (what docker-py yields)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Close the source too (an HTTP stream read only in part must be released)."""
        close = getattr(self._it, "close", None)
        if callable(close):
            close()
        super().close()

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._it))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def open_stream(chunks: Iterable[bytes]) -> io.BufferedReader:
    return io.BufferedReader(IterStream(chunks), buffer_size=1 << 20)
