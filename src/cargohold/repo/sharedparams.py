"""What two repositories must share so that a blob has the same id in both — the condition
for copying snapshots between them by blob id (``cargohold copy-snapshots``) — and a new
repository that shares it with an existing one (``cargohold init --copy-chunker-params-from``).

A blob id is the BLAKE3 of the plaintext keyed with the master key's ``id_key``, and the
plaintexts are the chunks the chunker cuts, whose cut points depend on the master key's
``chunker_seed`` and on the config's chunker parameters. So "the same chunker parameters"
means all three:

* ``id_key`` — without it the ids differ for equal data: a copy cannot tell what the
  target already has, so it reads every blob and rewrites every tree (a translated copy,
  :mod:`cargohold.services.copy_snapshots`);
* ``chunker_seed`` and ``config.chunker`` — without them the target's own backups of the
  same files cut other chunks than the copies did, so they would not deduplicate against
  each other.

The AES key (``enc_key``) is never shared: each repository keeps its own, and a copy
re-encrypts every blob under the target's key.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cargohold.backends.base import Backend
from cargohold.errors import UsageError
from cargohold.repo import keys
from cargohold.repo.crypto import KEY_LEN, MasterKey
from cargohold.repo.repository import Repository


def differences(a: Repository, b: Repository) -> list[str]:
    """What of the blob id key, the chunker seed and the chunker parameters differs between
    two open repositories (empty: blob ids agree, so snapshots copy by id)."""
    out = []
    if not secrets.compare_digest(a.key.id_key, b.key.id_key):
        out.append("blob id key")
    if a.key.chunker_seed != b.key.chunker_seed:
        out.append("chunker seed")
    if a.config.chunker != b.config.chunker:
        out.append("chunker parameters")
    return out


def sharing_master_key(like: MasterKey) -> MasterKey:
    """A new master key with its own AES key and the blob id key and chunker seed of ``like``."""
    return MasterKey(
        enc_key=secrets.token_bytes(KEY_LEN),
        id_key=like.id_key,
        chunker_seed=like.chunker_seed,
    )


def init_like(
    backend: Backend,
    password: str,
    like: Repository,
    *,
    kdf: keys.KdfParams | None = None,
    cache_dir: Path | None = None,
    spec: str | None = None,
) -> Repository:
    """Create a repository on ``backend`` whose blob ids and chunks agree with ``like``'s (same
    blob id key, chunker seed, chunker parameters and compression level; its own AES key and
    repository id) and return it open: :meth:`Repository.init` (the same steps and checks)
    with the master key derived from ``like``'s instead of drawn."""
    if not password:
        raise UsageError("an empty password is not allowed")
    return Repository.init(
        backend,
        password,
        kdf=kdf,
        chunker=like.config.chunker,
        compression_level=like.config.compression_level,
        cache_dir=cache_dir,
        spec=spec,
        master=sharing_master_key(like.key),
    )
