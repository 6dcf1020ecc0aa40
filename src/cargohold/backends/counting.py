"""A wrapper that counts the requests made to a backend, per operation, and the bytes moved.

The repository wraps its backend in one (:class:`cargohold.repo.repository.Repository`),
so ``--debug`` and the benchmarks can say how many requests a command made: what a
remote repository costs is mostly round trips. Counted are the calls the repository
makes; the retries under them are counted by :class:`~cargohold.backends.retry.RetryBackend`
(:meth:`cargohold.repo.repository.Repository.request_counts` adds them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from cargohold.backends.base import Backend, Leftover, ObjectInfo, leftovers_of, remove_leftover

#: The operations counted, in the order they are shown.
OPERATIONS = ("load", "store", "list", "stat", "create", "delete")


class RequestCounts:
    """Requests per operation and bytes up/down; thread safe, mergeable across processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys((*OPERATIONS, "bytes_up", "bytes_down", "retries"), 0)

    def add(self, op: str, n: int = 1, *, up: int = 0, down: int = 0) -> None:
        with self._lock:
            c = self._counts
            c[op] += n
            if up:
                c["bytes_up"] += up
            if down:
                c["bytes_down"] += down

    def merge(self, other: dict[str, Any]) -> None:
        """Add the counts of another process (:meth:`as_dict` of its counter)."""
        with self._lock:
            for k, v in other.items():
                if k in self._counts and isinstance(v, int):
                    self._counts[k] += v

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        """Requests of every operation (bytes and retries not included)."""
        with self._lock:
            return sum(self._counts[op] for op in OPERATIONS)

    def summary(self) -> str:
        return summary(self.as_dict())


def summary(counts: dict[str, int]) -> str:
    """One line: ``requests: 9 (load 3, list 4, ...), 1.2 KiB up, 3.4 MiB down[, 2 retried]``."""
    c = {k: counts.get(k, 0) for k in (*OPERATIONS, "bytes_up", "bytes_down", "retries")}
    ops = ", ".join(f"{op} {c[op]}" for op in OPERATIONS if c[op])
    total = sum(c[op] for op in OPERATIONS)
    line = f"requests: {total}" + (f" ({ops})" if ops else "")
    line += f", {_size(c['bytes_up'])} up, {_size(c['bytes_down'])} down"
    if c["retries"]:
        line += f", {c['retries']} retried"
    return line


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class CountingBackend:
    """``inner``, with every call counted into ``counts``."""

    def __init__(self, inner: Backend, counts: RequestCounts | None = None) -> None:
        self.inner = inner
        self.url = inner.url
        self.counts = counts if counts is not None else RequestCounts()

    def __repr__(self) -> str:
        return f"CountingBackend({self.inner!r})"

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.load(name, offset, length)
        self.counts.add("load", down=len(data))
        return data

    def store(self, name: str, data: bytes | bytearray) -> None:
        self.counts.add("store", up=len(data))
        self.inner.store(name, data)

    def create(self, name: str, data: bytes) -> None:
        self.counts.add("create", up=len(data))
        self.inner.create(name, data)

    def delete(self, name: str) -> None:
        self.counts.add("delete")
        self.inner.delete(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.counts.add("list")
        return self.inner.list(prefix)

    def stat(self, name: str) -> ObjectInfo:
        self.counts.add("stat")
        return self.inner.stat(name)

    def leftovers(self) -> Iterator[Leftover]:
        self.counts.add("list")
        yield from leftovers_of(self.inner)

    def remove_leftover(self, leftover: Leftover) -> bool:
        self.counts.add("delete")
        return remove_leftover(self.inner, leftover)

    def close(self) -> None:
        self.inner.close()
