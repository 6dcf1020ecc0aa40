"""A wrapper that injects faults into any backend, for tests.

A :class:`FaultPlan` counts the operations of the kinds in ``ops`` (0-based) and at
index ``N``:

* ``fail_at`` — the operation is not done and raises :class:`BackendIOError`
  (``transient`` as planned; ``fail_times`` consecutive counted operations fail);
* ``truncate_at`` — a write stores only the first half of its data, then raises
  :class:`BackendIOError` (a torn write of a broken store); other operations just fail;
* ``lose_ack_at`` — the operation is done, then raises :class:`BackendIOError` as if
  the answer was lost on the way (the caller cannot tell it succeeded);
* ``crash_at`` — the operation is not done and raises :class:`FaultCrash`, a
  ``BaseException`` nothing in cargohold catches, and every later operation of any
  kind raises it too: the "process" is dead, as after a SIGKILL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from cargohold.backends.base import Backend, Leftover, ObjectInfo, leftovers_of, remove_leftover
from cargohold.errors import BackendIOError

_Data = TypeVar("_Data", bytes, bytes | bytearray)

T = TypeVar("T")

ALL_OPS = frozenset({"load", "store", "create", "delete", "list", "stat", "leftovers", "remove_leftover"})
WRITE_OPS = frozenset({"store", "create", "delete", "remove_leftover"})


class FaultCrash(BaseException):  # a simulated death, not an error
    """The simulated process died; raised by every operation after the crash point."""


@dataclass(frozen=True)
class FaultPlan:
    fail_at: int | None = None
    truncate_at: int | None = None
    crash_at: int | None = None
    ops: frozenset[str] = field(default=WRITE_OPS)
    lose_ack_at: int | None = None
    #: Whether the injected BackendIOError says a retry may help.
    transient: bool = False
    #: How many consecutive counted operations fail from ``fail_at`` on.
    fail_times: int = 1

    def __post_init__(self) -> None:
        unknown = self.ops - ALL_OPS
        if unknown:
            raise ValueError(f"unknown operation kinds {sorted(unknown)}")
        if self.fail_times < 1:
            raise ValueError("fail_times must be >= 1")


class FaultBackend:
    """Pass operations to ``inner`` and inject the faults of ``plan``."""

    def __init__(self, inner: Backend, plan: FaultPlan | None = None) -> None:
        self.inner = inner
        self.plan = plan or FaultPlan()
        self.url = inner.url
        #: Counted operations seen so far.
        self.count = 0
        #: Set once the simulated crash happened.
        self.crashed = False
        #: Log of (index, kind, name) of counted operations, for test messages.
        self.log: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FaultBackend({self.inner!r}, {self.plan!r})"

    def _next(self, kind: str, name: str) -> str | None:
        """Count the operation; return the fault to inject: 'fail', 'truncate', 'lose_ack' or None."""
        with self._lock:
            if self.crashed:
                raise FaultCrash(f"process crashed before {kind} {name!r}")
            if kind not in self.plan.ops:
                return None
            index = self.count
            self.count += 1
            self.log.append((index, kind, name))
            plan = self.plan
            if plan.crash_at is not None and index == plan.crash_at:
                self.crashed = True
                raise FaultCrash(f"injected crash at operation {index} ({kind} {name!r})")
            if plan.fail_at is not None and plan.fail_at <= index < plan.fail_at + plan.fail_times:
                return "fail"
            if plan.truncate_at is not None and index == plan.truncate_at:
                return "truncate"
            if plan.lose_ack_at is not None and index == plan.lose_ack_at:
                return "lose_ack"
            return None

    def _fail(self, kind: str, name: str) -> BackendIOError:
        return BackendIOError(
            f"injected failure of {kind} {name!r} at operation {self.count - 1}",
            transient=self.plan.transient,
        )

    def _run(self, kind: str, name: str, fn: Callable[[], T]) -> T:
        fault = self._next(kind, name)
        if fault == "lose_ack":
            fn()
        if fault is not None:
            raise self._fail(kind, name)
        return fn()

    def _write(self, kind: str, name: str, data: _Data, fn: Callable[[str, _Data], None]) -> None:
        fault = self._next(kind, name)
        if fault == "truncate":
            fn(name, bytes(data[: len(data) // 2]))
        elif fault == "lose_ack":
            fn(name, data)
        if fault is not None:
            raise self._fail(kind, name)
        fn(name, data)

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._run("load", name, lambda: self.inner.load(name, offset, length))

    def store(self, name: str, data: bytes | bytearray) -> None:
        self._write("store", name, data, self.inner.store)

    def create(self, name: str, data: bytes) -> None:
        self._write("create", name, data, self.inner.create)

    def delete(self, name: str) -> None:
        self._run("delete", name, lambda: self.inner.delete(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._run("list", prefix, lambda: list(self.inner.list(prefix))))

    def stat(self, name: str) -> ObjectInfo:
        return self._run("stat", name, lambda: self.inner.stat(name))

    def leftovers(self) -> Iterator[Leftover]:
        return iter(self._run("leftovers", "", lambda: leftovers_of(self.inner)))

    def remove_leftover(self, leftover: Leftover) -> bool:
        return self._run("remove_leftover", leftover.name, lambda: remove_leftover(self.inner, leftover))

    def close(self) -> None:
        self.inner.close()
