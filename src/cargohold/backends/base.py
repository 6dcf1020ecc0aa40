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

    def store(self, name: str, data: bytes) -> None:
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
