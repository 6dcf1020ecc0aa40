"""Storage backends, chosen by URL.

``open_backend(url)`` understands a plain path, ``file:///abs/path`` and
``memory://NAME``. Other schemes plug in through :func:`register_scheme`; ``sftp://``
and ``s3://`` are registered as "not supported yet" until their backends land.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cargohold.backends.base import (
    Backend,
    HasLeftovers,
    Leftover,
    ObjectInfo,
    Writer,
    check_name,
    leftovers_of,
    remove_leftover,
)
from cargohold.backends.local import LocalBackend
from cargohold.backends.memory import MemoryBackend, named_memory_backend
from cargohold.errors import UsageError

__all__ = [
    "Backend",
    "BackendFactory",
    "HasLeftovers",
    "Leftover",
    "LocalBackend",
    "MemoryBackend",
    "ObjectInfo",
    "Writer",
    "check_name",
    "leftovers_of",
    "open_backend",
    "register_scheme",
    "registered_schemes",
    "remove_leftover",
]

#: Builds a backend from the full URL of its scheme.
BackendFactory = Callable[[str], Backend]

_schemes: dict[str, BackendFactory] = {}
_schemes_lock = threading.Lock()


def register_scheme(scheme: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Make ``open_backend`` build ``scheme://...`` URLs with ``factory(url)``."""
    key = scheme.lower()
    with _schemes_lock:
        if key in _schemes and not replace:
            raise ValueError(f"URL scheme {scheme!r} is registered already")
        _schemes[key] = factory


def registered_schemes() -> list[str]:
    with _schemes_lock:
        return sorted(_schemes)


def open_backend(url: str) -> Backend:
    """The backend a repository URL names.

    A string without ``://`` is a local path (``~`` expanded, relative to the current
    directory).
    """
    if not url:
        raise UsageError("empty repository URL", hint="give --repo PATH or set CARGOHOLD_REPO")
    if "://" not in url:
        return LocalBackend(Path(url))
    scheme = url.split("://", 1)[0].lower()
    with _schemes_lock:
        factory = _schemes.get(scheme)
    if factory is None:
        raise UsageError(
            f"unknown repository URL scheme {scheme!r} in {url!r}",
            hint=f"use a path or one of: {', '.join(s + '://' for s in registered_schemes())}",
        )
    return factory(url)


def _open_file(url: str) -> Backend:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(
            f"file:// URL {url!r} names host {parts.netloc!r}",
            hint="use file:///absolute/path (three slashes) for a local directory",
        )
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise UsageError(f"file:// URL {url!r} needs an absolute path")
    return LocalBackend(Path(path))


def _open_memory(url: str) -> Backend:
    return named_memory_backend(url.split("://", 1)[1])


def _not_yet(kind: str) -> BackendFactory:
    def factory(url: str) -> Backend:
        raise UsageError(
            f"{kind} repositories ({url}) are not supported yet",
            hint="use a local path or file:///path for now",
        )

    return factory


register_scheme("file", _open_file)
register_scheme("memory", _open_memory)
register_scheme("sftp", _not_yet("SFTP"))
register_scheme("s3", _not_yet("S3"))
