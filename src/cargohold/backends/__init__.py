"""Storage backends, chosen by URL.

``open_backend(url)`` understands a plain path, ``file:///abs/path`` and
``memory://NAME``. Other schemes plug in through :func:`register_scheme`. The remote
ones (``s3://``, ``sftp://``) live in modules imported only when such a URL is opened
(:func:`lazy_scheme`), so local commands never pay for their client libraries. A URL's
query string carries a backend's options (``s3://bucket/prefix?endpoint=...``): the URL
alone reopens the same store, in another process too; secrets never go into it.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

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
    "lazy_scheme",
    "leftovers_of",
    "open_backend",
    "register_scheme",
    "registered_schemes",
    "remove_leftover",
    "url_with_options",
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


def url_with_options(url: str, options: dict[str, str]) -> str:
    """``url`` with ``options`` set in its query string (an option already there is replaced)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(options)
    return urlunsplit(parts._replace(query=urlencode(query)))


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


def lazy_scheme(module: str, attr: str = "open_url") -> BackendFactory:
    """A factory that imports ``module`` on first use and calls its ``attr(url)``."""

    def factory(url: str) -> Backend:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is None:
                raise
            scheme = url.split("://", 1)[0]
            if module.startswith(err.name):
                raise UsageError(
                    f"{scheme}:// repositories are not available in this installation ({module} is missing)",
                    hint="use a local path or file:///path, or install cargohold with its remote backends",
                ) from None
            package = err.name.split(".", 1)[0]  # a library the backend needs (botocore, paramiko)
            raise UsageError(
                f"{scheme}:// repositories need the Python package {package!r}, which is not installed",
                hint=f"install it (`pip install {package}`) in cargohold's environment, or reinstall cargohold",
            ) from None
        fn: BackendFactory = getattr(mod, attr)
        return fn(url)

    return factory


register_scheme("file", _open_file)
register_scheme("memory", _open_memory)
register_scheme("sftp", lazy_scheme("cargohold.backends.sftp"))
register_scheme("s3", lazy_scheme("cargohold.backends.s3"))
