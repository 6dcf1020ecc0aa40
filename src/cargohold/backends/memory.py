"""An in-memory backend: for tests, and ``memory://NAME`` repositories in one process."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from cargohold.backends.base import Leftover, ObjectInfo, check_name
from cargohold.errors import ObjectExists, ObjectNotFound, UsageError

_anon = itertools.count(1)


class MemoryBackend:
    """Objects in a dict; thread-safe. Nothing survives the process."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or f"memory://anonymous-{next(_anon)}"
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryBackend({self.url!r})"

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_name(name)
        if offset < 0 or (length is not None and length < 0):
            raise UsageError(f"invalid range offset={offset} length={length} for {name!r}")
        with self._lock:
            data = self._objects.get(name)
        if data is None:
            raise ObjectNotFound(f"object {name!r} does not exist in {self.url}")
        end = None if length is None else offset + length
        return data[offset:end]

    def store(self, name: str, data: bytes | bytearray) -> None:
        check_name(name)
        blob = bytes(data)
        with self._lock:
            self._objects[name] = blob

    def create(self, name: str, data: bytes) -> None:
        check_name(name)
        blob = bytes(data)
        with self._lock:
            if name in self._objects:
                raise ObjectExists(f"object {name!r} already exists in {self.url}")
            self._objects[name] = blob

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            if self._objects.pop(name, None) is None:
                raise ObjectNotFound(f"object {name!r} does not exist in {self.url}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            found = [ObjectInfo(n, len(d)) for n, d in self._objects.items() if n.startswith(prefix)]
        found.sort(key=lambda info: info.name)
        yield from found

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        with self._lock:
            data = self._objects.get(name)
        if data is None:
            raise ObjectNotFound(f"object {name!r} does not exist in {self.url}")
        return ObjectInfo(name, len(data))

    def close(self) -> None:
        return None

    # An object is whole or absent here: no write leaves anything behind.

    def leftovers(self) -> Iterator[Leftover]:
        return iter(())

    def remove_leftover(self, leftover: Leftover) -> bool:
        return False


_named: dict[str, MemoryBackend] = {}
_named_lock = threading.Lock()


def named_memory_backend(name: str) -> MemoryBackend:
    """The process-wide backend ``memory://NAME`` (created empty on first use)."""
    if not name:
        raise UsageError("memory:// needs a name, e.g. memory://test")
    with _named_lock:
        backend = _named.get(name)
        if backend is None:
            backend = _named[name] = MemoryBackend(f"memory://{name}")
        return backend


def forget_named_memory_backend(name: str) -> None:
    """Drop ``memory://NAME`` so the next use starts empty (for tests)."""
    with _named_lock:
        _named.pop(name, None)
