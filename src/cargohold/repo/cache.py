"""A local cache of a repository's metadata: index files, snapshots and tree blobs.

Everything in it is keyed by content id and stored as it is in the repository
(encrypted), so it holds nothing a reader of the repository could not read, and a cached
entry is checked on every read: index files and snapshots by the SHA-256 their name is,
tree blobs by their authenticated encryption and keyed id (:class:`Repository` does that).
An entry that fails its check is removed and fetched again. The cache is safe to delete
at any time; writes into it are best effort (a full or read-only disk only costs
downloads).

Layout, one directory per repository id (``$XDG_CACHE_HOME/cargohold/<repo id>/``, chosen
by the caller)::

    index/<sha256 of the index file>
    snapshots/<sha256 of the snapshot file>
    trees/<2 hex>/<tree blob id>        the stored (encrypted) blob

With it, ``snapshots``, a backup that changes nothing or a ``diff`` against a remote
repository download only what they did not see before. Index files and snapshots that
left the repository leave the cache when it is next listed (:meth:`MetadataCache.retain`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

#: The kinds of entries and whether their name is the SHA-256 of their content.
KINDS = {"index": True, "snapshots": True, "trees": False}

#: Marks the directory as a cache for backup tools (the Cache Directory Tagging spec).
_CACHEDIR_TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# a cache directory of cargohold: safe to delete\n"


class MetadataCache:
    """The cache directory of one repository."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        #: Entries found (and intact as far as the cache can tell), absent, found damaged.
        self.hits = 0
        self.misses = 0
        self.damaged = 0
        self._made: set[Path] = set()

    def __repr__(self) -> str:
        return f"MetadataCache({str(self.root)!r})"

    def _path(self, kind: str, name: str) -> Path:
        if kind not in KINDS or not name or not all(c in "0123456789abcdef" for c in name):
            raise ValueError(f"bad cache entry {kind}/{name}")
        if kind == "trees":
            return self.root / kind / name[:2] / name
        return self.root / kind / name

    def get(self, kind: str, name: str) -> bytes | None:
        """The cached bytes, or None when absent or (index, snapshots) not matching their name."""
        path = self._path(kind, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            self.misses += 1
            return None
        if KINDS[kind] and hashlib.sha256(data).hexdigest() != name:
            self.discard(kind, name, damaged=True)
            return None
        self.hits += 1
        return data

    def put(self, kind: str, name: str, data: bytes) -> None:
        """Keep ``data`` (written whole under a temporary name, then renamed); errors ignored."""
        path = self._path(kind, name)
        tmp = path.with_name(f".{name}.{secrets.token_hex(4)}.tmp")
        for _attempt in range(2):  # again when the directory was deleted meanwhile
            try:
                self._mkdir(path.parent)
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
                return
            except FileNotFoundError:
                self._made.clear()
            except OSError:
                break
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def discard(self, kind: str, name: str, *, damaged: bool = False) -> None:
        """Remove an entry; ``damaged``: it failed its check (a hit taken back)."""
        if damaged:
            self.damaged += 1
            if kind == "trees":  # checked by the caller after get counted a hit
                self.hits -= 1
        with contextlib.suppress(OSError, ValueError):
            os.unlink(self._path(kind, name))

    def retain(self, kind: str, names: Iterable[str]) -> None:
        """Remove the entries of ``kind`` (index or snapshots) not in ``names``."""
        keep = set(names)
        try:
            present = os.listdir(self.root / kind)
        except OSError:
            return
        for entry in present:
            if entry not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(self.root / kind / entry)

    def _mkdir(self, directory: Path) -> None:
        if directory in self._made:
            return
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            tag = self.root.parent / "CACHEDIR.TAG"
            if not tag.exists():
                with contextlib.suppress(OSError):
                    tag.write_text(_CACHEDIR_TAG)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._made.add(directory)
