from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cargohold.backends import LocalBackend, MemoryBackend
from cargohold.backends.faults import ALL_OPS, FaultBackend, FaultPlan
from cargohold.backends.retry import RetryBackend
from cargohold.errors import BackendIOError, RepositoryLocked, UsageError
from cargohold.repo.locks import EXCLUSIVE, LockManager


def fake_lock(
    backend: MemoryBackend | LocalBackend,
    name: str,
    *,
    kind: str = "shared",
    host: str = "elsewhere",
    pid: int = 4242,
    age: float = 0.0,
    operation: str = "backup",
) -> None:
    """A lock as another process would have written it ``age`` seconds ago."""
    t = datetime.now(UTC) - timedelta(seconds=age)
    doc = {
        "version": 1,
        "kind": kind,
        "operation": operation,
        "host": host,
        "pid": pid,
        "user": "someone",
        "created": t.isoformat(),
        "refreshed": t.isoformat(),
        "token": "f" * 16,
    }
    backend.store(name, json.dumps(doc).encode())


def lock_names(backend: MemoryBackend | LocalBackend) -> list[str]:
    return sorted(i.name for i in backend.list("locks/"))


def test_shared_locks_coexist_and_are_removed() -> None:
    backend = MemoryBackend()
    a, b = LockManager(backend), LockManager(backend)
    with a.shared("backup"), b.shared("restore"):
        infos = a.list()
        assert sorted(i.operation for i in infos) == ["backup", "restore"]
        assert all(i.kind == "shared" and not i.stale and i.pid == os.getpid() for i in infos)
        assert all(i.host == socket.gethostname() for i in infos)
    assert lock_names(backend) == []


def test_exclusive_blocks_shared_with_clear_message() -> None:
    backend = MemoryBackend()
    holder, other = LockManager(backend), LockManager(backend)
    with holder.exclusive("prune"):
        assert lock_names(backend) == [EXCLUSIVE]
        with pytest.raises(RepositoryLocked) as info, other.shared("backup"):
            pass
        msg = str(info.value)
        assert "prune" in msg and str(os.getpid()) in msg and socket.gethostname() in msg
        assert "cargohold unlock" in msg and "\n" not in msg
        with pytest.raises(RepositoryLocked), other.exclusive("prune"):
            pass
        assert lock_names(backend) == [EXCLUSIVE]  # the failed attempts left nothing behind
    assert lock_names(backend) == []


def test_shared_blocks_exclusive() -> None:
    backend = MemoryBackend()
    a, b = LockManager(backend), LockManager(backend)
    with a.shared("backup"):
        with pytest.raises(RepositoryLocked, match="backup"), b.exclusive("prune"):
            pass
        assert len(lock_names(backend)) == 1
        assert EXCLUSIVE not in lock_names(backend)
    with b.exclusive("prune"):
        pass


def test_own_shared_lock_does_not_block_own_exclusive() -> None:
    backend = MemoryBackend()
    m = LockManager(backend)
    with m.shared("prune: mark"), m.exclusive("prune: delete"):
        assert len(lock_names(backend)) == 2
        with pytest.raises(UsageError), m.exclusive("again"):
            pass
    assert lock_names(backend) == []


def test_lock_released_on_exception() -> None:
    backend = MemoryBackend()
    m = LockManager(backend)
    with pytest.raises(ZeroDivisionError), m.exclusive("prune"):
        _ = 1 / 0
    assert lock_names(backend) == []


def test_wait_for_release() -> None:
    backend = MemoryBackend()
    holder = LockManager(backend)
    waiter = LockManager(backend, wait=10.0, poll=0.02)
    got = threading.Event()
    inside = threading.Event()

    def hold() -> None:
        with holder.exclusive("prune"):
            inside.set()
            time.sleep(0.3)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait()
    t0 = time.monotonic()
    with waiter.shared("backup"):
        got.set()
        assert EXCLUSIVE not in lock_names(backend)
    t.join()
    assert got.is_set()
    assert 0.1 < time.monotonic() - t0 < 5


def test_wait_gives_up() -> None:
    backend = MemoryBackend()
    fake_lock(backend, EXCLUSIVE, kind="exclusive", operation="prune")
    m = LockManager(backend, wait=0.3, poll=0.05)
    t0 = time.monotonic()
    with pytest.raises(RepositoryLocked, match="someone@elsewhere"), m.shared("backup"):
        pass
    assert 0.25 < time.monotonic() - t0 < 3


def test_refresh_keeps_lock_fresh() -> None:
    backend = MemoryBackend()
    holder = LockManager(backend, stale_after=0.6)
    observer = LockManager(backend, stale_after=0.6)
    with holder.exclusive("prune"):
        first = observer.list()[0].refreshed
        for _ in range(5):
            time.sleep(0.3)
            (info,) = observer.list()
            assert not info.stale, info
            assert info.age < 0.6
            with pytest.raises(RepositoryLocked), observer.shared("backup"):
                pass
        assert info.refreshed is not None and first is not None and info.refreshed > first
        holder.ensure_held()


def test_stale_by_age_is_ignored_and_removed() -> None:
    backend = MemoryBackend()
    fake_lock(backend, "locks/00000000000000aa", age=3600)
    fake_lock(backend, EXCLUSIVE, kind="exclusive", age=3600, operation="prune")
    fake_lock(backend, "locks/00000000000000bb", age=10)  # fresh, other host
    m = LockManager(backend, stale_after=1800)
    stale = {i.name: i.stale for i in m.list()}
    assert stale == {"locks/00000000000000aa": True, EXCLUSIVE: True, "locks/00000000000000bb": False}
    with m.shared("backup"):  # a stale exclusive lock does not block; taking a lock expires stale ones
        assert "locks/00000000000000bb" in lock_names(backend)
        assert not {"locks/00000000000000aa", EXCLUSIVE} & set(lock_names(backend))
    fake_lock(backend, EXCLUSIVE, kind="exclusive", age=3600, operation="prune")
    with pytest.raises(RepositoryLocked, match="elsewhere"), m.exclusive("prune"):
        pass  # the fresh foreign shared lock does; the stale exclusive was cleared on the way
    assert EXCLUSIVE not in lock_names(backend)
    fake_lock(backend, "locks/00000000000000cc", age=3600)
    assert m.remove_stale() == 1
    assert lock_names(backend) == ["locks/00000000000000bb"]
    assert m.break_all() == 1
    with m.exclusive("prune"):
        pass


def test_stale_exclusive_is_taken_over() -> None:
    backend = MemoryBackend()
    fake_lock(backend, EXCLUSIVE, kind="exclusive", age=100, operation="prune")
    m = LockManager(backend, stale_after=60)
    with m.exclusive("prune"):
        (info,) = m.list()
        assert info.pid == os.getpid() and not info.stale


def test_dead_process_on_this_host_is_stale() -> None:
    backend = MemoryBackend()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    fake_lock(backend, EXCLUSIVE, kind="exclusive", host=socket.gethostname(), pid=proc.pid)
    doc = json.loads(backend.load(EXCLUSIVE))
    doc["pidns"] = os.readlink("/proc/self/ns/pid")
    backend.store(EXCLUSIVE, json.dumps(doc).encode())
    m = LockManager(backend)
    assert [i.stale for i in m.list()] == [True]
    with m.shared("backup"):
        pass
    # The same pid seen from another PID namespace (another container) is not judged.
    doc["pidns"] = "pid:[1]"
    backend.store(EXCLUSIVE, json.dumps(doc).encode())
    assert [i.stale for i in m.list()] == [False]


def test_damaged_lock_is_stale() -> None:
    backend = MemoryBackend()
    backend.store("locks/00000000000000cc", b'{"kind": "shar')
    m = LockManager(backend)
    (info,) = m.list()
    assert info.stale and info.damaged and "damaged" in info.describe()
    with m.exclusive("prune"):
        pass
    assert m.remove_stale() == 1
    assert lock_names(backend) == []


def test_broken_lock_is_noticed_and_not_overwritten() -> None:
    backend = MemoryBackend()
    a = LockManager(backend, stale_after=0.3)
    b = LockManager(backend, stale_after=0.3)
    with a.exclusive("prune"):
        assert b.break_all() == 1
        with b.exclusive("prune"):
            b_token = json.loads(backend.load(EXCLUSIVE))["token"]
            time.sleep(0.35)  # a's refresher runs and finds b's lock
            with pytest.raises(RepositoryLocked, match="lost"):
                a.ensure_held()
            assert json.loads(backend.load(EXCLUSIVE))["token"] == b_token  # not overwritten
            b.ensure_held()
        assert lock_names(backend) == []
    assert lock_names(backend) == []  # a's release did not delete anything of others


def test_threads_mutual_exclusion() -> None:
    backend = MemoryBackend()
    state = {"shared": 0, "exclusive": 0, "max_exclusive": 0, "violations": 0, "done": 0}
    mutex = threading.Lock()
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        m = LockManager(backend, wait=30.0, poll=0.005)
        try:
            for j in range(8):
                if (i + j) % 3 == 0:
                    with m.exclusive(f"prune {i}"):
                        with mutex:
                            state["exclusive"] += 1
                            if state["exclusive"] > 1 or state["shared"] > 0:
                                state["violations"] += 1
                        time.sleep(0.002)
                        with mutex:
                            state["exclusive"] -= 1
                else:
                    with m.shared(f"backup {i}"):
                        with mutex:
                            state["shared"] += 1
                            if state["exclusive"] > 0:
                                state["violations"] += 1
                        time.sleep(0.002)
                        with mutex:
                            state["shared"] -= 1
                with mutex:
                    state["done"] += 1
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert state["violations"] == 0
    assert state["done"] == 48
    assert lock_names(backend) == []


def _increment_worker(root: str, counter: str, rounds: int) -> None:
    m = LockManager(LocalBackend(Path(root)), wait=60.0, poll=0.01)
    for _ in range(rounds):
        with m.exclusive("increment"):
            path = Path(counter)
            value = int(path.read_text())
            time.sleep(0.001)  # widen the race window
            path.write_text(str(value + 1))


def test_processes_mutual_exclusion(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment_worker, args=(str(root), str(counter), 10)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert counter.read_text() == "40"
    assert lock_names(LocalBackend(root)) == []


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cargohold.backends import LocalBackend
    from cargohold.repo.locks import LockManager
    m = LockManager(LocalBackend(Path(sys.argv[1])))
    with getattr(m, sys.argv[2])("backup"):
        print("locked", flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("kind", ["shared", "exclusive"])
@pytest.mark.parametrize("reap", [True, False])
def test_sigkilled_holder_does_not_block(tmp_path: Path, kind: str, reap: bool) -> None:
    root = tmp_path / "repo"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), kind], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        m = LockManager(LocalBackend(root))  # default 30 min staleness
        with pytest.raises(RepositoryLocked, match=f"pid {proc.pid}"), m.exclusive("prune"):
            pass
        os.kill(proc.pid, signal.SIGKILL)
        if reap:
            proc.wait()
        else:  # a zombie nobody reaped yet is dead too
            deadline = time.monotonic() + 10
            while Path(f"/proc/{proc.pid}/stat").read_text().split(")")[1].split()[0] != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.01)
        (info,) = m.list()
        assert info.stale and info.pid == proc.pid
        with m.exclusive("prune"):  # expires the dead holder's lock on the way
            pass
        assert m.remove_stale() == 0
        assert lock_names(LocalBackend(root)) == []
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("kind", ["shared", "exclusive"])
def test_failure_at_every_operation_leaves_no_lock_behind(kind: str) -> None:
    probe = FaultBackend(MemoryBackend(), FaultPlan(ops=ALL_OPS))
    with getattr(LockManager(probe), kind)("op"):
        pass
    assert probe.count >= 3
    for n in range(probe.count):
        inner = MemoryBackend()
        m = LockManager(FaultBackend(inner, FaultPlan(fail_at=n, ops=ALL_OPS)))
        entered = False
        try:
            with getattr(m, kind)("op"):
                entered = True
        except BackendIOError:
            assert not entered
        if not entered:
            assert lock_names(inner) == [], n  # a failed acquisition takes its lock back
        else:
            # A failed release leaves at most the lock itself: stale once this process is gone.
            assert len(lock_names(inner)) <= 1
            assert all(i.pid == os.getpid() for i in LockManager(inner).list())
            LockManager(inner).break_all()
        with LockManager(inner).exclusive("next"):
            pass


@pytest.mark.parametrize("kind", ["shared", "exclusive"])
def test_locks_through_retry_with_transient_faults(kind: str) -> None:
    for n in range(6):
        inner = MemoryBackend()
        flaky = FaultBackend(inner, FaultPlan(fail_at=n, fail_times=2, transient=True, ops=ALL_OPS))
        m = LockManager(RetryBackend(flaky, base_delay=0.001))
        with getattr(m, kind)("op"):
            assert len(lock_names(inner)) == 1
        assert lock_names(inner) == []


# --- stale locks expire when a lock is taken (issue 16, item 5c) -----------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def local_lock_of_dead_process(backend: MemoryBackend | LocalBackend, name: str, kind: str = "shared") -> int:
    """A lock as a process of this host killed a moment ago left it (fresh by age)."""
    pid = dead_pid()
    fake_lock(backend, name, kind=kind, host=socket.gethostname(), pid=pid)
    doc = json.loads(backend.load(name))
    doc["pidns"] = os.readlink("/proc/self/ns/pid")
    backend.store(name, json.dumps(doc).encode())
    return pid


@pytest.mark.parametrize("kind", ["shared", "exclusive"])
def test_taking_a_lock_expires_locks_of_dead_processes(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend()
    pids = [local_lock_of_dead_process(backend, f"locks/{i:016x}") for i in range(3)]
    m = LockManager(backend)  # 30 min: stale only because the processes are gone
    with caplog.at_level("WARNING", logger="cargohold.repo.locks"), getattr(m, kind)("backup"):
        (mine,) = m.list()
        assert mine.pid == os.getpid()
    assert lock_names(backend) == []
    removed = [r.getMessage() for r in caplog.records if "removed stale" in r.getMessage()]
    assert len(removed) == 3
    for pid in pids:  # one line per lock, naming the holder and why it was stale
        (line,) = [msg for msg in removed if f"pid {pid} " in msg]
        assert f"process {pid} on this host is gone" in line and "\n" not in line


def test_taking_a_lock_expires_locks_not_refreshed_and_keeps_fresh_ones(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cargohold.repo.locks")
    backend = MemoryBackend()
    fake_lock(backend, "locks/00000000000000aa", age=3600)  # another host, not refreshed for an hour
    fake_lock(backend, EXCLUSIVE, kind="exclusive", age=3600, operation="prune")
    fake_lock(backend, "locks/00000000000000bb", age=60)  # another host, fresh: may be running
    fake_lock(backend, "locks/00000000000000cc", host=socket.gethostname(), pid=os.getpid())  # alive here
    backend.store("locks/00000000000000dd", b"{not json")  # damaged: left to `cargohold unlock`
    m = LockManager(backend, stale_after=1800)
    with m.shared("backup"):
        pass
    assert lock_names(backend) == ["locks/00000000000000bb", "locks/00000000000000cc", "locks/00000000000000dd"]
    (named,) = [r.getMessage() for r in caplog.records if "00000000000000dd" in r.getMessage()]
    assert "damaged lock" in named and "cargohold unlock" in named  # damage is named, not silently ignored
    assert m.remove_stale() == 1  # the damaged one
    assert lock_names(backend) == ["locks/00000000000000bb", "locks/00000000000000cc"]


class RefreshedBetweenReads(MemoryBackend):
    """A backend where the holder of ``name`` refreshes it right after its first read: the
    lock looked stale when listed but is fresh by the time it would be deleted."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.reads = 0

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = super().load(name, offset, length)
        if name == self.name:
            self.reads += 1
            if self.reads == 1:
                doc = json.loads(data)
                doc["refreshed"] = datetime.now(UTC).isoformat()
                self.store(name, json.dumps(doc).encode())
        return data


def test_expiry_never_deletes_a_lock_refreshed_meanwhile() -> None:
    backend = RefreshedBetweenReads("locks/00000000000000aa")
    fake_lock(backend, "locks/00000000000000aa", age=3600)
    with LockManager(backend, stale_after=1800).shared("backup"):
        pass
    assert backend.reads >= 2  # judged stale, then read again before deleting
    assert lock_names(backend) == ["locks/00000000000000aa"]
    info = LockManager(backend, stale_after=1800).list()[0]
    assert not info.stale


def test_expiry_failure_does_not_fail_the_acquisition() -> None:
    inner = MemoryBackend()
    fake_lock(inner, "locks/00000000000000aa", age=3600)
    # the first delete is the stale lock's: it fails, the lock is taken all the same
    m = LockManager(FaultBackend(inner, FaultPlan(fail_at=0, ops=frozenset({"delete"}))), stale_after=1800)
    with m.shared("backup"):
        assert len(lock_names(inner)) == 2
    assert lock_names(inner) == ["locks/00000000000000aa"]  # still stale: the next lock removes it
    with LockManager(inner, stale_after=1800).shared("backup"):
        pass
    assert lock_names(inner) == []


def test_cli_says_so_on_stderr_when_it_expires_a_lock(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env.update({"CARGOHOLD_KDF": "fast", "CARGOHOLD_PASSWORD": "pw"})
    root = tmp_path / "repo"
    cli = [sys.executable, "-m", "cargohold.cli.app"]
    subprocess.run([*cli, "init", "--repo", str(root)], check=True, env=env, capture_output=True)
    pid = local_lock_of_dead_process(LocalBackend(root), "locks/00000000000000aa")
    done = subprocess.run([*cli, "check", "--repo", str(root)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "lock" in line]
    assert len(lines) == 1, done.stderr
    assert f"pid {pid}" in lines[0] and "removed stale" in lines[0] and "is gone" in lines[0]
    assert lock_names(LocalBackend(root)) == []
