"""Storage backends: immutable bytes under names.

The interface is deliberately small so it fits local disk, SFTP and S3 alike:

* no atomic rename is assumed (object stores have none);
* ``create`` is the only atomic primitive (create-if-absent), used for locks;
* ``list`` may be eventually consistent on some stores: callers must not rely on a
  just-written name showing up at once;
* names are ``/``-separated relative paths made of ``[A-Za-z0-9._-]`` segments.

Backends raise only :class:`cargohold.errors.BackendError` subclasses:
``ObjectNotFound``, ``ObjectExists``, ``BackendIOError`` (``transient=True`` when a
retry may help).

Besides objects, a store may hold **leftovers**: what an interrupted write left that is
no object (a local temporary file, an incomplete S3 multipart upload, a partial SFTP
upload). The :class:`Backend` protocol knows nothing of them; a backend that can have
some also implements :class:`HasLeftovers` (list them, remove one), and
:func:`leftovers_of` gives none for the others. Whether a leftover may be removed (is
its writer gone?) is decided above the backend, from what it says of the writer
(:class:`Writer`), its age and the repository's locks
(:mod:`cargohold.backends.leftovers`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cargohold.errors import UsageError

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int


def check_name(name: str) -> str:
    """Validate an object name; return it unchanged."""
    if not name or name.startswith("/") or name.endswith("/"):
        raise UsageError(f"invalid object name {name!r}")
    for seg in name.split("/"):
        if seg in (".", "..") or not _SEGMENT.match(seg):
            raise UsageError(f"invalid object name {name!r}")
    return name


@runtime_checkable
class Backend(Protocol):
    """What the repository needs from a store."""

    #: A URL that names this store (for messages and ``cargohold`` output).
    url: str

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes, or ``length`` bytes from ``offset``.

        Raises ObjectNotFound. A range past the end returns what exists (possibly b"").
        """
        ...

    def store(self, name: str, data: bytes | bytearray) -> None:
        """Write the object durably, replacing an existing one of that name.

        When this returns the object is durable (fsync'd on local disk). A reader never
        sees a partly written object.
        """
        ...

    def create(self, name: str, data: bytes) -> None:
        """Write the object only if the name is free; raise ObjectExists otherwise."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object; raise ObjectNotFound if it does not exist."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose name starts with ``prefix`` (a folder like ``"data/"`` or any string)."""
        ...

    def stat(self, name: str) -> ObjectInfo:
        """Size of an object; raise ObjectNotFound."""
        ...

    def close(self) -> None: ...


# --- leftovers of interrupted writes ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Writer:
    """Who wrote a leftover, as far as its backend recorded it.

    ``host`` and ``pidns`` are digests of the writer's host name and PID namespace
    (:func:`cargohold.backends.leftovers.host_digest`), so a name can carry them
    without revealing them; ``start`` is the process start time in clock ticks since
    boot (None when unknown), so a reused pid is not taken for the writer.
    """

    host: str
    pidns: str
    pid: int
    start: int | None


@dataclass(frozen=True, slots=True)
class Leftover:
    """Something an interrupted write left in a store that is no object."""

    #: The backend's handle for it, unique in the store (a relative path for files).
    name: str
    size: int
    #: Last modification (or initiation), seconds since the epoch, by the store's clock.
    modified: float
    #: Who wrote it, when the backend knows; None when it does not.
    writer: Writer | None = None
    #: What it is, for messages: "temporary file", "multipart upload", ...
    kind: str = "temporary file"


@runtime_checkable
class HasLeftovers(Protocol):
    """The optional capability of a backend that can hold leftovers."""

    def leftovers(self) -> Iterator[Leftover]:
        """Every leftover in the store (any order). Objects are never listed."""
        ...

    def remove_leftover(self, leftover: Leftover) -> bool:
        """Remove a leftover found by :meth:`leftovers`; False when it is gone already or
        changed since it was listed (modified, grown: then it is left alone). Never
        removes an object, whatever ``leftover.name`` says."""
        ...


def leftovers_of(backend: Backend) -> list[Leftover]:
    """The leftovers of ``backend``, sorted by name; none for a backend without them."""
    if not isinstance(backend, HasLeftovers):
        return []
    return sorted(backend.leftovers(), key=lambda lo: lo.name)


def remove_leftover(backend: Backend, leftover: Leftover) -> bool:
    """Remove one leftover of ``backend`` (False if it cannot have any, or it changed)."""
    if not isinstance(backend, HasLeftovers):
        return False
    return backend.remove_leftover(leftover)
