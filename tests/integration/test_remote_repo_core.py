"""The repository core on the real servers of the test bed (RGW for S3, OpenSSH for SFTP):
backup through worker processes that open the store from its URL and upload whole packs,
restore through workers with parallel ranged reads (bit-exact), a no-op backup that loads
no metadata from the store thanks to the cache, and ``check --read-data`` clean."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cargohold.repo import storage
from cargohold.repo.archiver import Archiver, BackupOptions
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import RestoreOptions, Restorer
from cargohold.services import repository as svc

if TYPE_CHECKING:
    from conftest import RemoteRepo  # tests/conftest.py (the remote_repo fixture)


@pytest.fixture
def remote_url(remote_repo: RemoteRepo) -> str:
    """A fresh repository location on RGW (S3) and on sshd (SFTP), as this process opens it."""
    return remote_repo.store_url


def _source(root: Path) -> None:
    rng = random.Random(10)
    (root / "d").mkdir(parents=True)
    for i in range(60):
        (root / "d" / f"f{i:02}").write_bytes(rng.randbytes(rng.choice([0, 50, 4000, 90_000])))
    (root / "big.bin").write_bytes(rng.randbytes(20_000_000))
    (root / "text").write_bytes(b"all work and no play\n" * 500_000)


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Type, mode, size, modification time and content digest by relative path."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size if digest else 0, st.st_mtime_ns, digest)
    return out


def test_workers_round_trip_and_a_no_op_backup_on_real_servers(remote_url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _source(src)
    cache = tmp_path / "cache"
    backend = storage.open_storage(remote_url)
    assert storage.is_remote(backend) and storage.connections_of(backend) > 1
    repo = Repository.init(
        backend, "pw", kdf=KdfParams.FAST, cache_dir=cache, spec=storage.spec_of(remote_url, backend)
    )
    setup = repo.worker_setup()
    assert setup is not None and setup["spec"] == remote_url
    res = Archiver(repo, BackupOptions(processes_after=0)).run(src)
    assert res.snapshot is not None
    counts = repo.request_counts()
    assert counts["store"] >= repo.packs_written >= 2  # the workers' uploads were counted here

    again = svc.open_repository(remote_url, "pw", cache_dir=cache)
    before = again.request_counts()
    second = svc.backup(again, src)
    assert second.snapshot is not None and second.stats.files_unchanged == second.stats.files
    after = again.request_counts()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["load"] == 0 and delta["store"] == 2 and delta["create"] == 0, delta  # the lock, the snapshot
    assert sum(delta[op] for op in ("load", "store", "list", "stat", "create", "delete")) <= 10, delta

    reader = svc.open_repository(remote_url, "pw", cache_dir=cache)
    reader.load_index()
    out = tmp_path / "out"
    loads = reader.request_counts()["load"]
    Restorer(reader, RestoreOptions(processes_after=0)).run(second.snapshot, out)
    assert describe(out) == describe(src)
    assert reader.request_counts()["load"] > loads  # the restore worker's ranged reads
    assert svc.check(svc.open_repository(remote_url, "pw", cache_dir=None), read_data=True).ok
