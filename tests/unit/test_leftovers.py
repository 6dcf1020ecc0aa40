"""Leftovers of interrupted writes (issue 16, item 1): check reports them with their bytes and
is not alarmed by them, prune removes those whose writer is surely gone and never one a
running writer may still be writing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cargohold.backends import Backend, Leftover, LocalBackend, MemoryBackend, Writer, leftovers_of
from cargohold.backends.faults import FaultBackend, FaultPlan
from cargohold.backends.leftovers import (
    host_digest,
    judge,
    parse_writer_tag,
    temp_leftover,
    temp_name,
    temp_path_parts,
    this_writer,
    writer_tag,
)
from cargohold.backends.retry import RetryBackend
from cargohold.errors import UsageError
from cargohold.repo.keys import KdfParams
from cargohold.repo.locks import LockManager
from cargohold.repo.repository import Repository
from cargohold.services import repository as svc

HOUR = 3600.0

# A writer that stages a pack and writes `size` bytes into it, then dies without cleaning up
# (os._exit: no finally, no abort), as a SIGKILLed worker does.
STAGE_AND_DIE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from cargohold.backends import LocalBackend
    staged = LocalBackend(Path(sys.argv[1])).stage("data")
    staged.write(os.urandom(int(sys.argv[2])))
    os._exit(0)
    """
)

# A store() killed after its temporary file is written and fsync'd, before the rename.
STORE_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cargohold.backends import LocalBackend
    backend = LocalBackend(Path(sys.argv[1]))
    os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    backend.store("index/" + "ab" * 32, os.urandom(int(sys.argv[2])))
    """
)

# A writer that keeps its staged file open until it is killed.
STAGE_AND_WAIT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from cargohold.backends import LocalBackend
    staged = LocalBackend(Path(sys.argv[1])).stage("data")
    staged.write(os.urandom(int(sys.argv[2])))
    print("ready", flush=True)
    time.sleep(600)
    """
)


def init_repo(tmp_path: Path) -> tuple[LocalBackend, Path]:
    root = tmp_path / "repo"
    backend = LocalBackend(root)
    repo = Repository.init(backend, "pw", kdf=KdfParams.FAST)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(200_000))
    assert svc.backup(repo, src).snapshot is not None
    return backend, root


def fresh(backend: Backend) -> Repository:
    return Repository.open(backend, "pw", load_index=False)


def run_child(script: str, root: Path, size: int) -> int:
    proc = subprocess.run([sys.executable, "-c", script, str(root), str(size)], check=False, timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL)
    return size


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if "~tmp~" in p.name)


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def fake_lock(backend: Backend, name: str, *, host: str, age_s: float = 0.0) -> None:
    t = (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat()
    doc = {"version": 1, "kind": "shared", "operation": "backup", "host": host, "pid": 4242, "user": "u",
           "created": t, "refreshed": t, "token": "f" * 16}  # fmt: skip
    backend.store(name, json.dumps(doc).encode())


# --- check reports them, prune removes them --------------------------------------------------


def test_check_reports_and_prune_removes_what_exited_writers_left(tmp_path: Path) -> None:
    backend, root = init_repo(tmp_path)
    sizes = [run_child(STAGE_AND_DIE, root, 1_500_000), run_child(STAGE_AND_DIE, root, 700_000)]
    sizes.append(run_child(STORE_AND_DIE, root, 30_000))
    assert len(temp_files(root)) == 3

    rep = svc.check(fresh(backend), read_data=True)
    assert rep.ok and not rep.damage  # leftovers are no damage: exit code 0
    assert len(rep.leftovers) == 3 and rep.leftover_bytes == sum(sizes)
    assert all(v.removable and "is gone" in v.reason for v in rep.leftovers)
    assert {v.leftover.name.split("/")[0] for v in rep.leftovers} == {"data", "index"}

    dry = svc.prune(fresh(backend), dry_run=True)
    assert (dry.leftovers_removed, dry.leftover_bytes_removed) == (3, sum(sizes))
    assert len(temp_files(root)) == 3  # a dry run removes nothing

    pr = svc.prune(fresh(backend))
    assert (pr.leftovers_removed, pr.leftover_bytes_removed, pr.leftovers_kept) == (3, sum(sizes), 0)
    assert temp_files(root) == []
    after = svc.check(fresh(backend), read_data=True)
    assert after.ok and after.leftovers == []


def test_prune_never_removes_the_staged_file_of_this_live_writer(tmp_path: Path) -> None:
    backend, root = init_repo(tmp_path)
    locks = LockManager(backend)
    with locks.shared("backup"):
        staged = backend.stage("data")
        staged.write(os.urandom(300_000))
        (path,) = temp_files(root)
        age(path, 10 * HOUR)  # however old: its writer is running
        rep = svc.check(fresh(backend))
        assert rep.ok and len(rep.leftovers) == 1 and not rep.leftovers[0].removable
        assert f"pid {os.getpid()} on this host, is running" in rep.leftovers[0].reason
        pr = svc.prune(fresh(backend))
        assert (pr.leftovers_removed, pr.leftovers_kept, pr.leftover_bytes_kept) == (0, 1, 300_000)
        assert temp_files(root) == [path]
        staged.write(b"more")
        staged.commit("data/00/" + "00" * 32)  # the writer finishes undisturbed
    assert backend.load("data/00/" + "00" * 32)[-4:] == b"more"
    assert temp_files(root) == []


def test_a_running_writer_in_another_process_is_kept_until_it_is_killed(tmp_path: Path) -> None:
    backend, root = init_repo(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", STAGE_AND_WAIT, str(root), "250000"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        (path,) = temp_files(root)
        age(path, 10 * HOUR)
        assert svc.prune(fresh(backend)).leftovers_kept == 1
        assert temp_files(root) == [path]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pr = svc.prune(fresh(backend))
        assert (pr.leftovers_removed, pr.leftover_bytes_removed) == (1, 250_000)
        assert temp_files(root) == []
    finally:
        proc.kill()
        proc.wait()


# --- other hosts (a repository on NFS) and unknown writers -----------------------------------


def plant(root: Path, name: str, size: int, age_s: float) -> Path:
    path = root / name
    path.write_bytes(b"\0" * size)
    age(path, age_s)
    return path


def other_host_writer(host: str = "otherhost") -> Writer:
    return Writer(host=host_digest(host), pidns=host_digest("pid:[4026531836]", 8), pid=os.getpid(), start=None)


def test_another_hosts_leftover_waits_for_its_age_and_that_hosts_locks(tmp_path: Path) -> None:
    backend, root = init_repo(tmp_path)
    tag = writer_tag(other_host_writer(), "0" * 12)
    young = plant(root, f"data/.staged~tmp~{tag[:-1]}1", 1000, 60)  # same pid as ours: no matter, other host
    old = plant(root, f"data/.staged~tmp~{tag}", 5000, 2 * HOUR)
    fake_lock(backend, "locks/00000000000000aa", host="otherhost")  # a backup runs on that host
    pr = svc.prune(fresh(backend))
    assert (pr.leftovers_removed, pr.leftovers_kept) == (0, 2)
    assert temp_files(root) == sorted([young, old])

    fake_lock(backend, "locks/00000000000000aa", host="thirdhost")  # only another host is busy now
    pr = svc.prune(fresh(backend))
    assert (pr.leftovers_removed, pr.leftover_bytes_removed, pr.leftovers_kept) == (1, 5000, 1)
    assert temp_files(root) == [young]  # not old enough: its writer may be slow, not dead


def test_unknown_writers_leftover_waits_until_no_fresh_lock_is_held(tmp_path: Path) -> None:
    backend, root = init_repo(tmp_path)
    legacy = plant(root, "data/.staged~tmp~4242-0123456789ab", 2000, 2 * HOUR)  # older name: host unknown
    (root / "index" / "sub").mkdir()
    stored = plant(root, "index/sub/.x~tmp~0123456789ab", 300, 2 * HOUR)
    fake_lock(backend, "locks/00000000000000aa", host=socket.gethostname())
    rep = svc.check(fresh(backend))
    assert [v.removable for v in rep.leftovers] == [False, False]
    assert "pid 4242" in rep.leftovers[0].leftover.kind
    backend.delete("locks/00000000000000aa")
    pr = svc.prune(fresh(backend))
    assert (pr.leftovers_removed, pr.leftover_bytes_removed) == (2, 2300)
    assert not legacy.exists() and not stored.exists()


def test_judge_rules() -> None:
    me = this_writer()
    now = 1_000_000.0

    def lo(writer: Writer | None, age_s: float) -> Leftover:
        return Leftover("data/.x~tmp~y", 10, now - age_s, writer)

    def verdicts(*items: Leftover, busy: tuple[str, ...] = (), gone: bool = True) -> list[bool]:
        found = judge(items, busy_hosts=busy, stale_after=HOUR, now=now, me=me, gone=lambda pid, start: gone)
        return [v.removable for v in found]

    other = other_host_writer()
    same_host_other_ns = Writer(me.host, "00000000", 1, None)
    # this host: only whether the process is gone counts, not age nor locks
    assert verdicts(lo(me, 0), busy=(socket.gethostname(),), gone=True) == [True]
    assert verdicts(lo(me, 100 * HOUR), gone=False) == [False]
    # another host or PID namespace: old enough and no fresh lock of that host
    assert verdicts(lo(other, HOUR - 1), lo(other, HOUR + 1), lo(same_host_other_ns, HOUR + 1)) == [False, True, True]
    assert verdicts(lo(other, HOUR + 1), busy=("otherhost",)) == [False]
    assert verdicts(lo(other, HOUR + 1), busy=("thirdhost",)) == [True]
    # unknown writer: old enough and no fresh lock at all
    assert verdicts(lo(None, HOUR + 1), lo(None, HOUR - 1)) == [True, False]
    assert verdicts(lo(None, 10 * HOUR), busy=("thirdhost",)) == [False]


def test_a_pid_reused_by_another_process_is_no_live_writer() -> None:
    me = this_writer()
    assert me.start is not None
    reused = Writer(me.host, me.pidns, me.pid, me.start + 1)  # our pid, another start time
    (v,) = judge([Leftover("n~tmp~x", 1, time.time(), reused)], busy_hosts=(), stale_after=HOUR, now=time.time())
    assert v.removable
    (v,) = judge([Leftover("n~tmp~x", 1, time.time(), me)], busy_hosts=(), stale_after=HOUR, now=time.time())
    assert not v.removable


# --- the backend capability ---------------------------------------------------------------------


def test_temp_names_carry_the_writer(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    staged = backend.stage("data")
    (lo,) = leftovers_of(backend)
    assert lo.writer == this_writer() and lo.name.startswith(f"data/.staged~tmp~{os.getpid()}-")
    assert parse_writer_tag(lo.name.rsplit("~tmp~", 1)[1]) == this_writer()
    staged.abort()
    assert leftovers_of(backend) == []


def test_the_temp_file_helpers_the_file_backends_share() -> None:
    name = temp_name("obj")
    assert name.startswith(f".obj~tmp~{os.getpid()}-") and name != temp_name("obj")
    lo = temp_leftover(f"data/ab/{name}", 7, 1.5)
    assert (lo.name, lo.size, lo.modified, lo.writer, lo.kind) == (f"data/ab/{name}", 7, 1.5, this_writer(),
                                                                   "temporary file")  # fmt: skip
    old = temp_leftover("data/.staged~tmp~4242-0123456789ab", 1, 0.0)
    assert old.writer is None and old.kind == "temporary file of pid 4242 (host not recorded)"
    assert temp_leftover("data/.x~tmp~foreign", 1, 0.0).kind == "temporary file"
    assert temp_path_parts(lo, "file:///r") == ["data", "ab", name]
    for bad in ("data/ab/obj", "data/../x~tmp~y", "a~tmp~b/.x~tmp~y", "/.x~tmp~y", "data//.x~tmp~y"):
        with pytest.raises(UsageError, match="no temporary file of file:///r"):
            temp_path_parts(Leftover(bad, 1, 0.0), "file:///r")


def test_remove_leftover_removes_only_temp_files_that_did_not_change(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    backend.store("data/ab/obj", b"object")
    with pytest.raises(UsageError):
        backend.remove_leftover(Leftover("data/ab/obj", 6, 0.0))
    with pytest.raises(UsageError):
        backend.remove_leftover(Leftover("data/../x~tmp~y/../ab/obj", 6, 0.0))
    assert backend.load("data/ab/obj") == b"object"
    staged = backend.stage("data")
    staged.write(b"12345")
    (lo,) = leftovers_of(backend)
    staged.write(b"678")  # it grew since it was listed: left alone
    assert not backend.remove_leftover(lo)
    (lo,) = leftovers_of(backend)
    assert backend.remove_leftover(lo)
    assert not backend.remove_leftover(lo)  # gone already
    assert leftovers_of(backend) == []


def test_wrappers_pass_leftovers_through(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "repo")
    local.stage("data").write(b"x" * 10)
    (lo,) = leftovers_of(local)
    assert leftovers_of(RetryBackend(local)) == [lo]
    assert leftovers_of(FaultBackend(RetryBackend(local))) == [lo]
    assert leftovers_of(RetryBackend(MemoryBackend())) == leftovers_of(FaultBackend(MemoryBackend())) == []
    failing = FaultBackend(local, FaultPlan(fail_at=0))  # remove_leftover is a write
    with pytest.raises(Exception, match="injected"):
        failing.remove_leftover(lo)
    assert leftovers_of(local) == [lo]
    assert RetryBackend(local).remove_leftover(lo) and leftovers_of(local) == []


def test_prune_goes_on_when_a_leftover_cannot_be_removed(tmp_path: Path) -> None:
    backend, root = init_repo(tmp_path)
    run_child(STAGE_AND_DIE, root, 1000)
    run_child(STAGE_AND_DIE, root, 2000)
    fb = FaultBackend(backend, FaultPlan(fail_at=0, ops=frozenset({"remove_leftover"})))
    pr = svc.prune(fresh(fb))
    assert pr.leftovers_removed == 1 and any("could not remove" in m for m in pr.messages)
    assert len(temp_files(root)) == 1
    assert svc.prune(fresh(backend)).leftovers_removed == 1 and temp_files(root) == []


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_check_and_prune_tell_the_leftovers_and_their_bytes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env.update({"CARGOHOLD_KDF": "fast", "CARGOHOLD_PASSWORD": "pw"})
    _, root = init_repo(tmp_path)
    run_child(STAGE_AND_DIE, root, 2 * 1024 * 1024)
    run_child(STAGE_AND_DIE, root, 1024 * 1024)
    cli = [sys.executable, "-m", "cargohold.cli.app"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args, "--repo", str(root)], env=env, capture_output=True, text=True, timeout=120)

    text = run("check")
    assert text.returncode == 0, text.stderr  # leftovers are no damage
    (line,) = [x for x in text.stdout.splitlines() if x.startswith("leftovers:")]
    assert "2 temporary file(s)" in line and "3.0 MiB" in line and "`cargohold prune` removes 2" in line
    doc = json.loads(run("check", "--json").stdout)
    assert doc["ok"] and doc["leftovers"]["count"] == 2 and doc["leftovers"]["bytes"] == 3 * 1024 * 1024
    assert doc["leftovers"]["removable"] == 2 and all(i["removable"] for i in doc["leftovers"]["items"])

    pruned = json.loads(run("prune", "--json").stdout)
    assert (pruned["leftovers_removed"], pruned["leftover_bytes_removed"]) == (2, 3 * 1024 * 1024)
    assert temp_files(root) == []
    again = run("prune")
    assert again.returncode == 0 and "leftovers" not in again.stdout
    assert "leftovers:" not in run("check").stdout
