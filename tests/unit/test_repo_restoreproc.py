"""Restores through a worker process (cargohold.repo.restoredata / restoreworker).

A local repository's restore of more than ``processes_after`` bytes is written by this
process and a worker process; these tests force that from the first byte and check what
the threaded path guarantees: byte-exact results (sparse files, hard links, files spread
over several packs), damage confined to the files that need a bad blob, and a worker
that dies or fails ending the restore with one of our errors, never a hang.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import socket
import subprocess
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from test_repo_backup_restore import describe

from cargohold.backends import open_backend
from cargohold.errors import CargoholdError, RepositoryError
from cargohold.repo import restoredata
from cargohold.repo.archiver import Archiver, BackupOptions
from cargohold.repo.child import died
from cargohold.repo.format import pack_name
from cargohold.repo.keys import KdfParams
from cargohold.repo.memory import gc_paused
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import RestoreOptions, Restorer
from cargohold.repo.snapshot import Snapshot


def _backup(tmp_path: Path) -> tuple[Path, Snapshot]:
    src = tmp_path / "src"
    rng = random.Random(11)
    (src / "small").mkdir(parents=True)
    for i in range(200):
        (src / "small" / f"f{i:03}").write_bytes(rng.randbytes(rng.choice([0, 10, 3000, 70_000])))
    (src / "big.bin").write_bytes(rng.randbytes(40 * 1024 * 1024))  # spans three packs
    os.link(src / "small" / "f001", src / "small" / "hard")
    with open(src / "sparse", "wb") as f:
        f.truncate(6 * 1024 * 1024)
        f.seek(2 * 1024 * 1024)
        f.write(rng.randbytes(50_000))
    os.symlink("big.bin", src / "link")
    repo = Repository.init(open_backend(str(tmp_path / "repo")), "pw", kdf=KdfParams.FAST)
    res = Archiver(repo, BackupOptions()).run(src)
    assert res.snapshot is not None
    return src, res.snapshot


def _open(tmp_path: Path) -> Repository:
    return Repository.open(open_backend(str(tmp_path / "repo")), "pw")


def _spawned(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """Record the worker processes started (and let them start)."""
    real = restoredata.spawn
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(module: str, setup: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Connection]:
        proc, conn = real(module, setup)
        procs.append(proc)
        return proc, conn

    monkeypatch.setattr(restoredata, "spawn", spawn)
    return procs


def test_a_restore_through_a_worker_process_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, snap = _backup(tmp_path)
    procs = _spawned(monkeypatch)
    out = tmp_path / "out"
    result = Restorer(_open(tmp_path), RestoreOptions(processes_after=0)).run(snap, out)
    assert len(procs) == 1 and procs[0].returncode == 0
    assert not result.damaged and not result.warnings
    assert describe(out) == describe(src)


def test_small_restores_and_unshareable_backends_use_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, snap = _backup(tmp_path)
    procs = _spawned(monkeypatch)
    Restorer(_open(tmp_path), RestoreOptions(processes_after=None)).run(snap, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)
    assert procs == []


def test_a_damaged_pack_damages_only_the_files_that_need_it(tmp_path: Path) -> None:
    src, snap = _backup(tmp_path)
    repo = _open(tmp_path)
    big = repo.node_at(snap.tree, "big.bin")
    assert big is not None
    loc = repo.index.lookup(big.content[1])
    assert loc is not None
    path = tmp_path / "repo" / pack_name(loc.pack)
    with open(path, "r+b") as f:  # flip a byte inside one blob of big.bin
        f.seek(loc.offset + 100)
        b = f.read(1)
        f.seek(loc.offset + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    out = tmp_path / "out"
    result = Restorer(_open(tmp_path), RestoreOptions(processes_after=0)).run(snap, out)
    assert list(result.damaged) == ["big.bin"]
    assert "authentication failed" in result.damaged["big.bin"]
    want, got = describe(src), describe(out)
    assert {k for k in want if want[k] != got.get(k)} == {"big.bin"}
    assert (out / "big.bin").stat().st_size == (src / "big.bin").stat().st_size


def test_a_worker_that_dies_fails_the_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, snap = _backup(tmp_path)
    procs = _spawned(monkeypatch)
    real = restoredata.spawn

    def spawn_and_kill(module: str, setup: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Connection]:
        proc, conn = real(module, setup)
        proc.kill()
        return proc, conn

    monkeypatch.setattr(restoredata, "spawn", spawn_and_kill)
    with pytest.raises(RepositoryError, match="worker process died") as info:
        Restorer(_open(tmp_path), RestoreOptions(processes_after=0)).run(snap, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert all(p.poll() is not None for p in procs), "a worker was left running"


def test_a_worker_error_reaches_the_caller_as_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, snap = _backup(tmp_path)
    repo = _open(tmp_path)
    setup = repo.worker_setup()
    assert setup is not None
    monkeypatch.setattr(repo, "worker_setup", lambda: {**setup, "key": b"not a key"})
    with pytest.raises(CargoholdError) as info:
        Restorer(repo, RestoreOptions(processes_after=0)).run(snap, tmp_path / "out")
    assert "\n" not in str(info.value)


def test_modules_in_the_working_directory_do_not_reach_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, snap = _backup(tmp_path)
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "queue.py").write_text("raise SystemExit('a module of the working directory was imported')\n")
    monkeypatch.chdir(here)
    out = tmp_path / "out"
    result = Restorer(_open(tmp_path), RestoreOptions(processes_after=0)).run(snap, out)
    assert not result.damaged
    assert describe(out) == describe(src)


def test_a_file_that_cannot_be_created_is_reported_damaged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, snap = _backup(tmp_path)
    real = restoredata.DataWriter._fd

    def refuse_big(self: restoredata.DataWriter, path: bytes, sparse_size: int | None) -> int:
        if path.endswith(b"/big.bin"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(self, path, sparse_size)

    monkeypatch.setattr(restoredata.DataWriter, "_fd", refuse_big)
    result = Restorer(_open(tmp_path), RestoreOptions(processes_after=None)).run(snap, tmp_path / "out")
    assert result.damaged == {"big.bin": "cannot create: Permission denied"}
    assert not result.warnings


def test_a_fatal_report_is_found_after_the_socket_broke() -> None:
    ours, theirs = socket.socketpair()
    a, b = Connection(ours.detach()), Connection(theirs.detach())
    b.send(("fatal", "UsageError", "bad thing", "do this", "Traceback ..."))
    b.close()
    err = died(a, "a restore worker")
    assert isinstance(err, CargoholdError) and str(err) == "bad thing — do this"
    assert "a restore worker process died" in str(died(a, "a restore worker"))  # nothing more waiting
    a.close()


def test_gc_paused_nests_across_threads_and_restores_the_thresholds() -> None:
    before = gc.get_threshold()
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=other)
    with gc_paused():
        t.start()
        assert inside.wait(5)
        with gc_paused():
            assert gc.get_threshold()[2] == 1 << 30
    assert gc.get_threshold()[2] == 1 << 30  # the other thread is still inside
    leave.set()
    t.join()
    assert gc.get_threshold() == before


# --- fetching ahead (remote stores) -------------------------------------------------------------


class _Writer(restoredata.DataWriter):
    """A DataWriter whose fetch and apply only record what happened."""

    def __init__(self, fail: dict[bytes, BaseException] | None = None) -> None:
        super().__init__(lambda name, off, n: b"", None, lambda data: b"")  # type: ignore[arg-type]
        self.fail = fail or {}
        self.applied: list[bytes] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.closed = False
        self._count = threading.Lock()

    def fetch(self, job: restoredata.Job) -> restoredata.Fetched:
        with self._count:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            threading.Event().wait(random.uniform(0, 0.01))
            if job[0] in self.fail:
                raise self.fail[job[0]]
            return job[0], []
        finally:
            with self._count:
                self.in_flight -= 1

    def apply(self, fetched: restoredata.Fetched) -> None:
        self.applied.append(fetched[0])

    def close(self) -> None:
        self.closed = True


def _jobs(n: int) -> list[restoredata.Job]:
    return [(bytes([i]), []) for i in range(n)]


def test_jobs_fetched_ahead_are_applied_in_order_and_take_is_not_asked_after_none() -> None:
    jobs = _jobs(40)
    asked_after_end = []
    it = iter(jobs)
    ended = False

    def take() -> restoredata.Job | None:
        nonlocal ended
        if ended:
            asked_after_end.append(1)
        job = next(it, None)
        ended = job is None
        return job

    writer, done = _Writer(), []
    restoredata.write_jobs(writer, take, 4, done=lambda: done.append(1))
    assert writer.applied == [j[0] for j in jobs] and len(done) == 40
    assert 1 < writer.most_in_flight <= 4 and writer.closed and not asked_after_end


def test_a_store_unreachable_after_its_retries_fails_the_restore_not_the_data() -> None:
    from cargohold.errors import BackendIOError, StoreUnreachable

    down = BackendIOError("S3 connection to http://127.0.0.1:9 failed", transient=True)
    writer = _Writer({bytes([5]): down})
    with pytest.raises(BackendIOError, match="failed"):
        restoredata.write_jobs(writer, iter([*_jobs(20), None]).__next__, 3)
    assert writer.closed and bytes([5]) not in writer.applied

    # the real fetch: a transient error is raised, a lasting one is damage to report
    def load(name: str, offset: int, length: int) -> bytes:
        raise down

    real = restoredata.DataWriter(load, None, lambda data: b"")  # type: ignore[arg-type]
    job: restoredata.Job = (b"\x01" * 32, [(b"\x02" * 32, 0, 10, 10, [])])
    with pytest.raises(BackendIOError):
        real.fetch(job)
    down = StoreUnreachable("... (tried 4 times over 2.8 s, s3://b still failing)")  # what RetryBackend gives up with
    with pytest.raises(StoreUnreachable):
        real.fetch(job)
    down = BackendIOError("data/01/0101...: Input/output error")  # lasting, of this pack
    pack, spans = real.fetch(job)
    assert pack == job[0] and spans[0][2] is down
