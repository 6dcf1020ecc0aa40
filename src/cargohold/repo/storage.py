"""How a repository opens its store, in this process and in its worker processes.

:func:`open_storage` opens a repository URL (:func:`cargohold.backends.open_backend`)
and wraps every remote store in a :class:`~cargohold.backends.retry.RetryBackend`
(bounded exponential backoff with jitter, a total time budget per call); a local
directory and an in-memory store are used as they are. Worker processes get the URL
(:func:`spec_of`, or the one the service layer opened) over their socket and call
:func:`open_storage` themselves, so they retry alike; credentials come from their
environment, inherited from this process, never from the URL or a command line.

``file:///PATH?staging=no`` opens a local directory that is written like a remote
store — whole objects with ``store``, no staged files (:class:`WholeObjectLocal`) —
so the code paths of remote repositories (packs built in memory and uploaded in
parallel, retries, the metadata cache, request counts) run on local disk, through
real worker processes, in tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from cargohold.backends import open_backend, url_with_options
from cargohold.backends.base import Backend, Leftover, ObjectInfo
from cargohold.backends.counting import CountingBackend, RequestCounts
from cargohold.backends.local import LocalBackend
from cargohold.backends.memory import MemoryBackend
from cargohold.backends.retry import RetryBackend
from cargohold.errors import BackendError, UsageError

#: Retries of remote stores: attempts per call, first and largest delay, total seconds.
RETRY_ATTEMPTS = 12
RETRY_BASE_DELAY = 0.25
RETRY_MAX_DELAY = 8.0
RETRY_BUDGET = 90.0
#: Packs one process uploads at once at most (each is held in memory: pack size each). Two
#: keep up with a worker filling packs on loopback; four were as fast and cost ~30 MB more.
MAX_UPLOADS = 2
#: Ranged reads one process has in flight at most when restoring from a remote store.
MAX_READS = 8
#: Connections of a ``file://...?staging=no`` store.
WHOLE_OBJECT_CONNECTIONS = 4

_STAGING = "staging"


class WholeObjectLocal:
    """A local directory used like a remote store: objects are written whole with
    ``store`` (no ``stage``), and it says it wants several connections."""

    connections = WHOLE_OBJECT_CONNECTIONS

    def __init__(self, root: Path) -> None:
        self.local = LocalBackend(root)
        self.root = self.local.root
        self.url = url_with_options(self.local.url, {_STAGING: "no"})

    def __repr__(self) -> str:
        return f"WholeObjectLocal({str(self.local.root)!r})"

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.local.load(name, offset, length)

    def store(self, name: str, data: bytes | bytearray) -> None:
        self.local.store(name, data)

    def create(self, name: str, data: bytes) -> None:
        self.local.create(name, data)

    def delete(self, name: str) -> None:
        self.local.delete(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.local.list(prefix)

    def stat(self, name: str) -> ObjectInfo:
        return self.local.stat(name)

    def leftovers(self) -> Iterator[Leftover]:
        return self.local.leftovers()

    def remove_leftover(self, leftover: Leftover) -> bool:
        return self.local.remove_leftover(leftover)

    def close(self) -> None:
        self.local.close()


def _open(url: str) -> Backend:
    parts = urlsplit(url) if "://" in url else None
    if parts is not None and parts.scheme.lower() == "file" and parts.query:
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        staging = query.pop(_STAGING, None)
        if query:
            unknown = ", ".join(sorted(query))
            raise UsageError(f"unknown option(s) {unknown} in {url!r}", hint="file:// URLs know staging=no")
        if staging is not None:
            if staging != "no":
                raise UsageError(f"{url!r}: staging={staging!r}", hint="give staging=no or leave the option out")
            base = open_backend(urlunsplit(parts._replace(query="")))
            assert isinstance(base, LocalBackend)
            return WholeObjectLocal(base.root)
    return open_backend(url)


def layers(backend: Backend) -> Iterator[object]:
    """``backend``, then each store it wraps (``inner``), down to the innermost."""
    b: object = backend
    while b is not None:
        yield b
        b = getattr(b, "inner", None)


def request_counts(backend: Backend, counts: RequestCounts) -> dict[str, int]:
    """``counts`` (of the requests made to ``backend``) with the retries that the
    :class:`RetryBackend` somewhere under ``backend`` made (they count themselves)."""
    out = counts.as_dict()
    out["retries"] += sum(int(getattr(b, "retries", 0) or 0) for b in layers(backend))
    return out


def innermost(backend: Backend) -> object:
    """The store under any wrappers (retries, counting, faults)."""
    *_, inner = layers(backend)
    return inner


def local_root(backend: Backend) -> Path | None:
    """The directory of a store on a local file system, staged or not (through any
    wrappers), else None."""
    inner = innermost(backend)
    return inner.root if isinstance(inner, (LocalBackend, WholeObjectLocal)) else None


def is_remote(backend: Backend) -> bool:
    """Whether ``backend`` is anything but a local directory or an in-memory store (a
    ``staging=no`` directory counts as remote: it stands in for one)."""
    return not isinstance(innermost(backend), (LocalBackend, MemoryBackend))


def with_retries(backend: Backend, *, budget: float = RETRY_BUDGET) -> Backend:
    """``backend`` wrapped in retries when it is remote (and not wrapped already)."""
    if not is_remote(backend) or isinstance(backend, RetryBackend):
        return backend
    return RetryBackend(
        backend,
        attempts=RETRY_ATTEMPTS,
        base_delay=RETRY_BASE_DELAY,
        max_delay=RETRY_MAX_DELAY,
        budget=budget,
    )


def open_storage(url: str, *, retry_budget: float = RETRY_BUDGET) -> CountingBackend:
    """The store of a repository URL, remote ones wrapped in retries, every request counted
    (:class:`~cargohold.backends.counting.CountingBackend`: over the retries, which count
    themselves)."""
    return CountingBackend(with_retries(_open(url), budget=retry_budget))


def open_worker_storage(setup: dict[str, Any]) -> CountingBackend:
    """The store of a worker process, from the setup its parent sent
    (:meth:`cargohold.repo.repository.Repository.worker_setup`): the same URL and retry
    budget as the parent's, so that it retries alike."""
    return open_storage(setup["spec"], retry_budget=float(setup.get("retry_budget", RETRY_BUDGET)))


def counts_of(backend: Backend) -> RequestCounts | None:
    """The request counter of the first counting wrapper of ``backend``, if any."""
    return next((b.counts for b in layers(backend) if isinstance(b, CountingBackend)), None)


def spec_of(url: str, backend: Backend) -> str | None:
    """The URL that reopens ``backend`` (opened from ``url``) in another process, or None
    when no other process can (an in-memory store)."""
    inner = innermost(backend)
    if isinstance(inner, MemoryBackend):
        return None
    if isinstance(inner, (LocalBackend, WholeObjectLocal)):
        return inner.url  # absolute: a relative path means nothing in another directory
    return url


def local_spec(backend: Backend) -> str | None:
    """The URL of a local store reached only through wrappers that another process
    rebuilds alike (retries, counting), else None (fault injection, memory, remote)."""
    b: object = backend
    while type(b) in (CountingBackend, RetryBackend):
        assert isinstance(b, (CountingBackend, RetryBackend))
        b = b.inner
    if type(b) in (LocalBackend, WholeObjectLocal):
        assert isinstance(b, (LocalBackend, WholeObjectLocal))
        return b.url
    return None


def retry_budget_of(backend: Backend) -> float:
    """The retry budget of the first retrying wrapper of ``backend`` (else the default)."""
    budgets = (b.budget for b in layers(backend) if isinstance(b, RetryBackend) and b.budget is not None)
    return next(budgets, RETRY_BUDGET)


def store_or_clean(backend: Backend, name: str, data: bytes | bytearray) -> None:
    """Store ``name``; when that fails, try once (:func:`delete_once`) to remove what a
    broken store may have left half written, so a failed write never leaves a damaged
    object behind, then raise the store's error."""
    try:
        backend.store(name, data)
    except BackendError:
        with contextlib.suppress(BackendError):
            delete_once(backend, name)  # one attempt: not a second retry budget
        raise


def delete_once(backend: Backend, name: str) -> None:
    """Delete ``name`` with one attempt, under any retries: the clean-up after a failed
    write, which must not spend a second retry budget on a store that is unreachable."""
    retrying = next((b for b in layers(backend) if isinstance(b, RetryBackend)), None)
    (retrying.inner if retrying is not None else backend).delete(name)


def connections_of(backend: Backend) -> int:
    """How many parallel connections the store wants (1 when it does not say)."""
    said = (n for b in layers(backend) if isinstance(n := getattr(b, "connections", None), int) and n > 0)
    return next(said, 1)


def uploads_per_process(connections: int, processes: int = 1) -> int:
    """Packs one of ``processes`` processes may upload at once: a share of the store's
    connections, at most :data:`MAX_UPLOADS` (each is a pack held in memory)."""
    return max(1, min(MAX_UPLOADS, math.ceil(connections / max(1, processes))))


def readers_per_process(connections: int, processes: int = 1, *, remote: bool = True) -> int:
    """Writer threads (each with one ranged read in flight) one of ``processes`` restoring
    processes runs: one on local disk, a share of a remote store's connections (at most
    :data:`MAX_READS`) otherwise."""
    if not remote:
        return 1
    return max(1, min(MAX_READS, math.ceil(connections / max(1, processes))))
