"""A wrapper that retries transient I/O failures of any backend.

Only :class:`BackendIOError` with ``transient=True`` is retried, with exponential
backoff and jitter, for at most ``attempts`` attempts and a total time ``budget`` per
call: a store unreachable for longer fails with one :class:`BackendIOError` that says
how long it was tried (never a hang, as long as the backend's own calls time out).
The repository wraps every remote backend in one (:mod:`cargohold.repo.storage`).

``store`` after a transient failure whose outcome is unknown (a timeout after the
request was sent) is simply repeated: it replaces the object with the same bytes
(idempotent), and a reader never sees a partial object. Two other outcomes of a retry
are ambiguous and resolved here:

* ``create`` failed transiently but had in fact succeeded: the retry sees
  ``ObjectExists``; if the object holds exactly our bytes, it was ours — success.
* ``delete`` failed transiently but had in fact succeeded: the retry sees
  ``ObjectNotFound`` — the object is gone, which is what was asked.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from cargohold.backends.base import Backend, Leftover, ObjectInfo, leftovers_of, remove_leftover
from cargohold.errors import BackendIOError, ObjectExists, ObjectNotFound, StoreUnreachable

T = TypeVar("T")


class RetryBackend:
    """Retry transient failures of ``inner`` up to ``attempts`` times in all."""

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 5,
        base_delay: float = 0.05,
        max_delay: float = 5.0,
        budget: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.inner = inner
        self.url = inner.url
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        #: Seconds one call may spend retrying in all (None: only ``attempts`` bounds it).
        self.budget = budget
        self._sleep = sleep
        self._clock = clock
        #: Number of retries done so far (for tests and statistics).
        self.retries = 0

    def __repr__(self) -> str:
        return f"RetryBackend({self.inner!r}, attempts={self.attempts}, budget={self.budget})"

    def _call(self, fn: Callable[[], T], on_retry_error: Callable[[Exception], T | None] | None = None) -> T:
        retried = False
        start = self._clock()
        for attempt in range(self.attempts):
            try:
                return fn()
            except BackendIOError as err:
                if not err.transient:
                    raise
                delay = min(self.max_delay, self.base_delay * (2**attempt)) * random.uniform(0.5, 1.0)
                elapsed = self._clock() - start
                out_of_budget = self.budget is not None and elapsed + delay > self.budget
                if attempt == self.attempts - 1 or out_of_budget:
                    if not retried:
                        raise
                    raise self._gave_up(err, attempt + 1, elapsed) from err
            except (ObjectExists, ObjectNotFound) as err:
                if retried and on_retry_error is not None:
                    resolved = on_retry_error(err)
                    if resolved is not None:
                        return resolved
                raise
            retried = True
            self.retries += 1
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _gave_up(self, err: BackendIOError, attempts: int, elapsed: float) -> BackendIOError:
        return StoreUnreachable(
            f"{err.message} (tried {attempts} times over {elapsed:.1f} s, {self.url} still failing)",
            hint=err.hint or "check the network and the storage server, then run the command again",
        )

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(lambda: self.inner.load(name, offset, length))

    def store(self, name: str, data: bytes | bytearray) -> None:
        self._call(lambda: self.inner.store(name, data))

    def create(self, name: str, data: bytes) -> None:
        def resolve(err: Exception) -> bool | None:
            if isinstance(err, ObjectExists):
                try:
                    if self.inner.load(name) == bytes(data):
                        return True
                except (ObjectNotFound, BackendIOError):
                    return None
            return None

        def attempt() -> bool:
            self.inner.create(name, data)
            return True

        self._call(attempt, resolve)

    def delete(self, name: str) -> None:
        def resolve(err: Exception) -> bool | None:
            return True if isinstance(err, ObjectNotFound) else None

        def attempt() -> bool:
            self.inner.delete(name)
            return True

        self._call(attempt, resolve)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Listing is retried as a whole, so a failure mid-way never yields duplicates.
        yield from self._call(lambda: list(self.inner.list(prefix)))

    def stat(self, name: str) -> ObjectInfo:
        return self._call(lambda: self.inner.stat(name))

    def leftovers(self) -> Iterator[Leftover]:
        # Listed (and retried) as a whole, like ``list``; none when ``inner`` has none.
        yield from self._call(lambda: leftovers_of(self.inner))

    def remove_leftover(self, leftover: Leftover) -> bool:
        # A retry after a lost answer finds it gone: False, "not removed by this call".
        return self._call(lambda: remove_leftover(self.inner, leftover))

    def close(self) -> None:
        self.inner.close()
