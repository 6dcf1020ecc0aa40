"""Backups through worker processes (cargohold.repo.procpool / procworker), on a local repository.

Small backups stay in-process (``processes_after``); these tests force the workers from
the first byte and check what the in-process path guarantees: byte-exact round trips,
exact dedup across workers, a clean check, and no snapshot when a worker fails or dies.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from test_repo_backup_restore import describe

from cargohold.backends import open_backend
from cargohold.errors import BackendError, CargoholdError, RepositoryError, UsageError
from cargohold.repo import procpool
from cargohold.repo.archiver import Archiver, BackupOptions
from cargohold.repo.child import child_error
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import RestoreOptions, Restorer
from cargohold.services import repository as svc


def _repo(path: Path) -> Repository:
    return Repository.init(open_backend(str(path)), "pw", kdf=KdfParams.FAST)


def _reopen(path: Path) -> Repository:
    return Repository.open(open_backend(str(path)), "pw")


def _source(root: Path, rng: random.Random) -> None:
    (root / "many").mkdir(parents=True)
    shared = rng.randbytes(300_000)
    for i in range(300):  # small files, many identical: dedup across the two workers
        (root / "many" / f"f{i:03}").write_bytes(shared if i % 3 == 0 else rng.randbytes(rng.choice([0, 7, 5000])))
    pages = bytearray()
    for _ in range(2048):  # 16 MiB of 8 KiB "pages": fixed-size chunks
        pages += (rng.randbytes(64) * 128) if rng.random() < 0.5 else bytes(8192)
    (root / "rel.db").write_bytes(pages)
    (root / "copy.db").write_bytes(pages)  # the same chunks again, likely in the other worker
    with open(root / "sparse", "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(3 * 1024 * 1024)
        f.write(rng.randbytes(100_000))
    (root / "noise.bin").write_bytes(rng.randbytes(5_000_000))


def test_round_trip_through_worker_processes_is_exact_and_deduplicated(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _source(src, random.Random(7))
    repo = _repo(tmp_path / "repo")
    res = Archiver(repo, BackupOptions(processes_after=0)).run(src)
    assert res.snapshot is not None
    assert repo.packs_written >= 2  # the workers' packs were indexed here

    fresh = _reopen(tmp_path / "repo")
    ids = [bid for bid, _ in fresh.index.blobs()]
    assert len(ids) == len(set(ids))
    stored_entries = sum(len(fresh.read_pack_header(pid, size).blobs) for pid, size in fresh.list_packs())
    assert stored_entries == len(ids), "a chunk was stored twice (dedup across workers failed)"
    assert res.stats.blobs_added == len(ids)

    assert svc.check(fresh, read_data=True).ok
    out = tmp_path / "out"
    Restorer(fresh, RestoreOptions()).run(res.snapshot, out)
    assert describe(out) == describe(src)


def test_an_incremental_through_workers_reads_only_changed_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _source(src, random.Random(8))
    repo = _repo(tmp_path / "repo")
    first = Archiver(repo, BackupOptions(processes_after=0)).run(src)
    with open(src / "rel.db", "r+b") as f:  # one page rewritten in place
        f.seek(5 * 8192)
        f.write(os.urandom(8192))
    repo = _reopen(tmp_path / "repo")
    second = Archiver(repo, BackupOptions(processes_after=0, parent=first.snapshot)).run(src)
    assert second.stats.files_changed == 1
    assert second.stats.blobs_added == 2  # one 64 KiB chunk (not the file) and the root tree
    out = tmp_path / "out"
    assert second.snapshot is not None
    Restorer(_reopen(tmp_path / "repo"), RestoreOptions()).run(second.snapshot, out)
    assert describe(out) == describe(src)


def test_a_worker_that_dies_fails_the_backup_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _source(src, random.Random(9))
    repo = _repo(tmp_path / "repo")
    real_spawn = procpool._spawn
    spawned: list[procpool._Proc] = []

    def spawn_and_kill_the_first(setup: dict[str, object]) -> procpool._Proc:
        p = real_spawn(setup)
        if not spawned:
            p.proc.kill()
        spawned.append(p)
        return p

    monkeypatch.setattr(procpool, "_spawn", spawn_and_kill_the_first)
    with pytest.raises(RepositoryError, match="worker process died"):
        Archiver(repo, BackupOptions(processes_after=0)).run(src)
    assert all(p.proc.poll() is not None for p in spawned), "a worker was left running"
    monkeypatch.undo()

    fresh = _reopen(tmp_path / "repo")
    assert fresh.list_snapshot_ids() == []
    assert svc.check(fresh, read_data=True).ok
    res = Archiver(fresh, BackupOptions(processes_after=0)).run(src)
    assert res.snapshot is not None
    assert svc.check(_reopen(tmp_path / "repo"), read_data=True).ok


def test_a_worker_error_reaches_the_caller_as_ours(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _source(src, random.Random(10))
    repo = _repo(tmp_path / "repo")
    # where packs go is now a file: the workers cannot store anything
    data = tmp_path / "repo" / "data"
    assert not data.exists()  # a new repository has no packs yet
    data.write_bytes(b"not a folder")
    with pytest.raises(BackendError) as info:
        Archiver(repo, BackupOptions(processes_after=0)).run(src)
    assert "\n" not in str(info.value)
    assert _reopen(tmp_path / "repo").list_snapshot_ids() == []


def test_worker_errors_are_rebuilt_from_their_class_name() -> None:
    err = child_error(("fatal", "UsageError", "bad thing", "do this", "Traceback ..."))
    assert isinstance(err, UsageError) and str(err) == "bad thing — do this"
    other = child_error(("fatal", "ZeroDivisionError", "division by zero", None, "Traceback ..."))
    assert isinstance(other, CargoholdError) and "ZeroDivisionError" in str(other)


def test_small_backups_and_unshareable_backends_stay_in_process(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(100_000))
    repo = _repo(tmp_path / "repo")
    archiver = Archiver(repo, BackupOptions())
    assert archiver.run(src).snapshot is not None
    assert archiver._shareable is None  # the threshold was never reached: no processes
    from cargohold.backends import MemoryBackend

    mem = Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)
    assert mem.worker_setup() is None
    assert Archiver(mem, BackupOptions(processes_after=0)).run(src).snapshot is not None


def test_after_a_failed_backup_the_same_repository_object_stores_what_was_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs a failed worker claimed are given back: a second backup through the same open
    repository stores them instead of taking them for stored; no staged pack is left."""
    src = tmp_path / "src"
    _source(src, random.Random(11))
    repo = _repo(tmp_path / "repo")
    real_add = Repository.add_written_pack
    calls = []

    def fail_on_the_first_pack(self: Repository, rec: object) -> None:
        calls.append(rec)
        if len(calls) == 1:
            raise RepositoryError("injected: the first pack report fails")
        real_add(self, rec)  # type: ignore[arg-type]

    monkeypatch.setattr(Repository, "add_written_pack", fail_on_the_first_pack)
    with pytest.raises(RepositoryError, match="injected"):
        Archiver(repo, BackupOptions(processes_after=0)).run(src)
    monkeypatch.undo()
    assert not list((tmp_path / "repo" / "data").glob(".staged*")), "a staged pack was left behind"

    res = Archiver(repo, BackupOptions(processes_after=0)).run(src)
    assert res.snapshot is not None
    fresh = _reopen(tmp_path / "repo")
    assert svc.check(fresh, read_data=True).ok
    out = tmp_path / "out"
    Restorer(fresh, RestoreOptions()).run(res.snapshot, out)
    assert describe(out) == describe(src)
