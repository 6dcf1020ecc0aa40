"""Remote repositories under network faults (issue 10): the real CLI against the test bed's
real servers — a Ceph RADOS Gateway (S3) and an OpenSSH sshd (SFTP) — through the fault
proxy (:mod:`cargohold.testbed.faultproxy`) on 127.0.0.1.

Every scenario ends in either a completed command (retries) or one clear error line with
exit code 12 (storage), never a hang and never a committed snapshot that references data
that is not there: ``check --read-data`` is clean afterwards and every listed snapshot
restores bit-exact. Each scenario also asserts that its fault really happened (the proxy's
counters), so none passes on a network that never failed. Figures (times, retries,
connections, resets) are printed and, with ``CARGOHOLD_FAULT_FIGURES=FILE``, appended to
``FILE`` as JSON lines (docs/RELIABILITY.md, "Remote repositories under network faults").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cargohold.testbed._system import pid_in, wait_gone
from cargohold.testbed.faultproxy import FaultProxy
from cargohold.testbed.rgw import RgwServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from faults_common import Digest, descendants, diff_digest, digest_tree, survivors, write_random

pytestmark = [pytest.mark.timeout(420)]

CLI = [sys.executable, "-m", "cargohold.cli.app"]
PASSWORD = "remote-faults-pw"
STORAGE_EXIT = 12
MiB = 1 << 20
#: Seconds an SFTP request may take (the backend's ``timeout=`` option; default 30).
SFTP_TIMEOUT = 10.0
#: The retry budget of the stalled-server test (seconds; the default is 90).
STALL_BUDGET = 45.0


# --- the real servers ---------------------------------------------------------------------


class Server:
    """A real server the proxy forwards to, and how a client reaches it through the proxy."""

    kind: str
    upstream: tuple[str, int]

    def repo_url(self, proxy_port: int, name: str, home: Path) -> str:
        raise NotImplementedError

    def env(self, home: Path) -> dict[str, str]:
        raise NotImplementedError

    def leftovers(self, name: str) -> list[str]:
        """What interrupted writes left in repository ``name``, seen from the server side."""
        raise NotImplementedError

    def packs(self, name: str) -> set[str]:
        """The pack objects (``data/...``) of repository ``name``, seen from the server side."""
        raise NotImplementedError

    def cleanup(self, name: str) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL the server process(es) that serve clients."""
        raise NotImplementedError

    def restart(self) -> None:
        """Start it again after :meth:`kill` (same address, same keys, same data)."""
        raise NotImplementedError


def _cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def _kill9(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class SftpServer(Server):
    kind = "sftp"

    def __init__(self, sshd: Any) -> None:
        self.sshd = sshd
        self.upstream = ("127.0.0.1", int(sshd.port))
        self._pid = int(sshd.pid)
        base = Path(sshd.base)
        # sshd rewrites its own command line: start it again the way the test bed does
        self._argv = ["/usr/sbin/sshd", "-D", "-f", str(base / "sshd_config"), "-E", str(base / "sshd.log")]
        self._respawned: subprocess.Popen[bytes] | None = None

    def repo_url(self, proxy_port: int, name: str, home: Path) -> str:
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
        (ssh / "known_hosts").write_text(self.sshd.known_hosts_line(proxy_port))
        (ssh / "config").write_text(self.sshd.ssh_config("faulty", known_hosts=ssh / "known_hosts", port=proxy_port))
        # a short request timeout, so a stalled server costs less time than the default 30 s
        return f"sftp://faulty{self.sshd.data / name}?timeout={SFTP_TIMEOUT:g}"

    def env(self, home: Path) -> dict[str, str]:
        return {"HOME": str(home)}

    def _repo(self, name: str) -> Path:
        return Path(self.sshd.data) / name

    def leftovers(self, name: str) -> list[str]:
        # An object name is [A-Za-z0-9._-] segments; anything else under the repository is
        # what an interrupted write left (the backend's temporary names).
        out = []
        root = self._repo(name)
        for dirpath, _, files in os.walk(root):
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), root)
                if not _is_object_name(rel) or _looks_temporary(f):
                    out.append(rel)
        return sorted(out)

    def packs(self, name: str) -> set[str]:
        root = self._repo(name)
        return {
            os.path.relpath(os.path.join(d, f), root)
            for d, _, files in os.walk(root / "data")
            for f in files
            if not _looks_temporary(f)
        }

    def cleanup(self, name: str) -> None:
        shutil.rmtree(self._repo(name), ignore_errors=True)

    def sessions(self) -> list[int]:
        return [pid for pid in _children(self._pid)]

    def kill(self) -> None:
        _kill9([self._pid, *self.sessions()])
        gone = wait_gone(self._pid, 10)
        assert gone, f"sshd (pid {self._pid}) did not die"

    def restart(self) -> None:
        self._respawned = subprocess.Popen(
            self._argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._pid = self._respawned.pid
        # the test bed stops its sshd by the pid it recorded: record the new one
        record = Path(self.sshd.base) / "sshd.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "pid": self._pid}))
        _wait_listening(self.upstream)


class S3Server(Server):
    kind = "s3"

    def __init__(self, rgw: RgwServer) -> None:
        self.rgw = rgw
        endpoint = str(rgw.endpoint)
        host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.bucket = f"faults-{uuid.uuid4().hex[:12]}"
        self._pidfile = Path(rgw.base) / "run" / "pid.rgw"
        self._respawned: subprocess.Popen[bytes] | None = None
        self._argv = _cmdline(int(self._pidfile.read_text()))
        self.client().create_bucket(Bucket=self.bucket)

    def client(self) -> Any:
        return self.rgw.client(s3={"addressing_style": "path"}, retries={"max_attempts": 2})

    def repo_url(self, proxy_port: int, name: str, home: Path) -> str:
        return f"s3://{self.bucket}/{name}?endpoint=http://127.0.0.1:{proxy_port}&addressing=path"

    def env(self, home: Path) -> dict[str, str]:
        return {
            "HOME": str(home),
            "AWS_ACCESS_KEY_ID": self.rgw.access_key,
            "AWS_SECRET_ACCESS_KEY": self.rgw.secret_key,
            "AWS_REGION": self.rgw.region,
            "AWS_CONFIG_FILE": str(home / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        }

    def leftovers(self, name: str) -> list[str]:
        s3 = self.client()
        with contextlib.suppress(s3.exceptions.NoSuchBucket):
            got = s3.list_multipart_uploads(Bucket=self.bucket, Prefix=f"{name}/")
            return sorted(f"{u['Key']} (multipart {u['UploadId'][:8]})" for u in got.get("Uploads", []))
        return []

    def packs(self, name: str) -> set[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{name}/data/")
        return {o["Key"][len(name) + 1 :] for page in pages for o in page.get("Contents", [])}

    def cleanup(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.rgw.empty_bucket(self.bucket, f"{name}/")

    def kill(self) -> None:
        pid = int(self._pidfile.read_text())
        _kill9([pid])
        gone = wait_gone(pid, 10)
        assert gone, f"radosgw (pid {pid}) did not die"

    def restart(self) -> None:
        self._respawned = subprocess.Popen(
            self._argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # the test bed stops its daemons by the pids it recorded: record the new one
        self._pidfile.write_text(f"{self._respawned.pid}\n")
        _wait_listening(self.upstream, timeout=60)

    def ensure_running(self) -> None:
        """Start the gateway again if a test killed it and did not."""
        if pid_in(self._pidfile) is None:
            self.restart()


_OBJECT_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def _is_object_name(rel: str) -> bool:
    return all(_OBJECT_SEGMENT.match(seg) for seg in rel.split(os.sep))


def _looks_temporary(name: str) -> bool:
    return "tmp" in name.lower() or name.startswith(".")


def _children(pid: int) -> list[int]:
    return [p for p, _ in descendants(pid)]


def _wait_listening(addr: tuple[str, int], timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(addr, timeout=1):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {addr} after {timeout} s")


@pytest.fixture(scope="module")
def sftp_server() -> Iterator[SftpServer]:
    sshd_mod = pytest.importorskip("cargohold.testbed.sshd")
    pytest.importorskip("cargohold.backends.sftp")
    sshd_mod.sweep_orphans()
    base = sshd_mod.temp_base()
    sshd = sshd_mod.start_sshd(base)
    server = SftpServer(sshd)
    try:
        yield server
    finally:
        sshd_mod.stop_sshd(base)


@pytest.fixture(scope="module")
def s3_server(rgw_server: RgwServer) -> Iterator[S3Server]:
    """The session's gateway (tests/conftest.py) with a bucket of these tests. A test kills its
    radosgw and starts it again (the cluster stays); should one leave it dead, it is started
    again here, for the tests that follow."""
    server = S3Server(rgw_server)
    try:
        yield server
    finally:
        server.ensure_running()
        with contextlib.suppress(Exception):
            rgw_server.remove_bucket(server.bucket)


@pytest.fixture(params=["s3", "sftp"])
def server(request: pytest.FixtureRequest) -> Server:
    return request.getfixturevalue(f"{request.param}_server")  # type: ignore[no-any-return]


# --- one repository behind the proxy ------------------------------------------------------


@dataclass
class Run:
    args: list[str]
    rc: int
    out: str
    err: str
    seconds: float
    timed_out: bool = False

    def errors(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("cargohold: ") and "error" in ln]

    def brief(self) -> str:
        tail = " | ".join(self.err.strip().splitlines()[-4:])
        return f"{' '.join(self.args[:2])}: rc={self.rc} in {self.seconds:.1f} s: {tail}"

    def requests(self) -> int:
        """Requests the command made, from its ``--debug`` summary (0 when none is shown)."""
        return sum(int(n) for n in re.findall(r"requests: (\d+)", self.err))

    def retried(self) -> int:
        m = re.search(r"(\d+) retried", self.err)
        return int(m.group(1)) if m else 0


@dataclass
class Remote:
    server: Server
    proxy: FaultProxy
    work: Path
    name: str = field(default_factory=lambda: f"r{uuid.uuid4().hex[:10]}")
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = self.work / "home"
        self.home.mkdir()
        self.url = self.server.repo_url(self.proxy.port, self.name, self.home)

    @property
    def kind(self) -> str:
        return self.server.kind

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGOHOLD_", "AWS_", "SSH_"))}
        state = self.work / ".state"
        env.update(
            {
                "CARGOHOLD_KDF": "fast",
                "CARGOHOLD_PASSWORD": PASSWORD,
                "CARGOHOLD_REPO": self.url,
                "CARGOHOLD_STATE_DIR": str(state / "intents"),
                "CARGOHOLD_LOCK_WAIT": "30",
                "XDG_STATE_HOME": str(state),
                "XDG_CACHE_HOME": str(state / "cache"),
                "XDG_DATA_HOME": str(state / "data"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.server.env(self.home))
        env.update(extra or {})
        return env

    def cli(self, *args: str, timeout: float = 240, debug: bool = False) -> Run:
        cmd = [*CLI, *(["--debug"] if debug else []), *args]
        started = time.monotonic()
        try:
            p = subprocess.run(
                cmd,
                env=self.env(),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                cwd=self.work,
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            return Run(list(args), -1, out, err, time.monotonic() - started, timed_out=True)
        return Run(list(args), p.returncode, p.stdout, p.stderr, time.monotonic() - started)

    def must(self, *args: str, timeout: float = 240) -> Run:
        r = self.cli(*args, timeout=timeout)
        assert r.rc == 0, r.brief()
        return r

    def popen(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*CLI, *args],
            env=self.env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.work,
        )

    def snapshots(self) -> list[dict[str, Any]]:
        r = self.must("snapshots", "--json")
        return list(json.loads(r.out))

    def backup(self, source: Path, *, timeout: float = 240, debug: bool = True) -> Run:
        return self.cli("backup", "--path", str(source), "--json", timeout=timeout, debug=debug)

    def restore_matches(self, sid: str, expected: Digest) -> Run:
        target = self.work / f"restore-{sid[:8]}-{time.monotonic_ns()}"
        try:
            r = self.cli("restore", sid, "--target", str(target), debug=True)
            if r.rc == 0:
                got = digest_tree(target)
                assert got == expected, f"restore of {sid[:8]} differs: {diff_digest(expected, got)}"
            return r
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def record(self, **values: Any) -> None:
        self.figures.update(values)


@contextlib.contextmanager
def open_remote(server: Server, work: Path, test: str) -> Iterator[Remote]:
    """A fresh repository on ``server`` behind a proxy of its own; its figures printed (and
    appended to ``$CARGOHOLD_FAULT_FIGURES``) at the end, the repository removed."""
    work.mkdir(parents=True, exist_ok=True)
    with FaultProxy(server.upstream) as proxy:
        rem = Remote(server, proxy, work)
        try:
            yield rem
        finally:
            proxy.pass_through()
            figures = {"test": test, **rem.figures}
            print(f"\nFIGURES {json.dumps(figures)}")
            out = os.environ.get("CARGOHOLD_FAULT_FIGURES")
            if out and rem.figures:
                with open(out, "a") as fh:
                    fh.write(json.dumps(figures) + "\n")
            server.cleanup(rem.name)


@pytest.fixture
def remote(server: Server, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Remote]:
    with open_remote(server, tmp_path, request.node.name) as rem:
        yield rem


def make_source(root: Path, seed: str, size: int) -> Digest:
    """A tree of ``size`` bytes of incompressible data: one big file and a few small ones."""
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True)
    write_random(root / "big.bin", rng, size - 64 * 1024)
    for i in range(8):
        write_random(root / "small" / f"f{i}", rng, 8 * 1024)
    return digest_tree(root)


def snapshot_id(run: Run) -> str | None:
    with contextlib.suppress(ValueError):
        doc = json.loads(run.out)
        docs = doc if isinstance(doc, list) else [doc]
        for d in docs:
            snap = d.get("snapshot") if isinstance(d, dict) else None
            if isinstance(snap, dict) and isinstance(snap.get("id"), str):
                return str(snap["id"])
    return None


def assert_clear_failure(run: Run, budget: float | None = None) -> None:
    """Exit 12 with one ``cargohold: error:`` line, no traceback, no internal error."""
    assert not run.timed_out, f"hung: {run.brief()}"
    assert run.rc == STORAGE_EXIT, run.brief()
    assert len(run.errors()) == 1, run.brief()
    assert "Traceback" not in run.err and "internal error" not in run.err, run.brief()
    if budget is not None:
        assert run.seconds < 2 * budget, f"took {run.seconds:.1f} s (budget {budget} s): {run.brief()}"


def assert_repository_sound(rem: Remote, committed: Mapping[str, Digest]) -> list[dict[str, Any]]:
    """On a healthy network: ``check --read-data`` is clean, every snapshot listed is one we
    saw committed and restores bit-exact, every one we saw committed is listed."""
    rem.proxy.pass_through()
    check = rem.cli("check", "--read-data")
    assert check.rc == 0, f"check --read-data after the fault: {check.brief()}\n{check.out[-2000:]}"
    snaps = rem.snapshots()
    listed = {s["id"] for s in snaps}
    assert set(committed) <= listed, f"committed snapshots lost: {set(committed) - listed}"
    for sid in listed:
        assert sid in committed, f"a snapshot nobody saw committed: {sid}"
        r = rem.restore_matches(sid, committed[sid])
        assert r.rc == 0, r.brief()
    return snaps


# --- the scenarios ------------------------------------------------------------------------


def test_reset_mid_upload(remote: Remote) -> None:
    """Connections reset while a pack goes up: retries complete the backup, or it fails
    clearly; nothing committed refers to data that is not there."""
    src = remote.work / "src"
    digest = make_source(src, "upload", 6 * MiB)
    remote.must("init")
    remote.proxy.reset_stats()
    remote.proxy.reset_after(up=2 * MiB, times=2)
    run = remote.backup(src)
    st = remote.proxy.stats()
    assert st.resets >= 1, f"no connection was reset: {st}"
    committed = {}
    if run.rc == 0:
        sid = snapshot_id(run)
        assert sid, run.out
        committed[sid] = digest
    else:
        assert_clear_failure(run)
    assert_repository_sound(remote, committed)
    # and the next backup on a healthy network works
    again = remote.backup(src)
    assert again.rc == 0, again.brief()
    remote.record(
        outcome="completed" if run.rc == 0 else f"exit {run.rc}",
        seconds=round(run.seconds, 2),
        resets=st.resets,
        connections=st.connections,
        retried=run.retried(),
        mib_up=round(st.bytes_up / MiB, 1),
    )


def test_reset_mid_download(remote: Remote) -> None:
    """Connections reset while packs come down: the restore completes bit-exact or fails clearly."""
    src = remote.work / "src"
    digest = make_source(src, "download", 6 * MiB)
    remote.must("init")
    sid = snapshot_id(remote.must("backup", "--path", str(src), "--json"))
    assert sid
    remote.proxy.reset_stats()
    remote.proxy.reset_after(down=2 * MiB, times=2)
    target = remote.work / "out"
    run = remote.cli("restore", sid, "--target", str(target), debug=True)
    st = remote.proxy.stats()
    assert st.resets >= 1, f"no connection was reset: {st}"
    if run.rc == 0:
        got = digest_tree(target)
        assert got == digest, diff_digest(digest, got)
    else:
        assert_clear_failure(run)
    assert_repository_sound(remote, {sid: digest})
    remote.record(
        outcome="completed" if run.rc == 0 else f"exit {run.rc}",
        seconds=round(run.seconds, 2),
        resets=st.resets,
        connections=st.connections,
        retried=run.retried(),
        mib_down=round(st.bytes_down / MiB, 1),
    )


def test_latency_200ms(remote: Remote) -> None:
    """200 ms each way: backup and restore complete; their times are recorded."""
    src = remote.work / "src"
    digest = make_source(src, "latency", 4 * MiB)
    remote.must("init")
    clean = remote.backup(src)
    assert clean.rc == 0, clean.brief()
    (src / "new.bin").write_bytes(os.urandom(MiB))
    digest2 = digest_tree(src)
    remote.proxy.set_latency(0.2)
    run = remote.backup(src)
    assert run.rc == 0, run.brief()
    sid = snapshot_id(run)
    assert sid
    target = remote.work / "out"
    restore = remote.cli("restore", sid, "--target", str(target), debug=True)
    assert restore.rc == 0, restore.brief()
    assert digest_tree(target) == digest2
    snaps = remote.cli("snapshots")
    assert snaps.rc == 0, snaps.brief()
    remote.record(
        backup_s=round(run.seconds, 2),
        backup_requests=run.requests(),
        restore_s=round(restore.seconds, 2),
        restore_requests=restore.requests(),
        snapshots_s=round(snaps.seconds, 2),
        clean_backup_s=round(clean.seconds, 2),
        connections=remote.proxy.stats().connections,
    )
    assert_repository_sound(remote, {snapshot_id(clean) or "": digest, sid: digest2})


def test_stalled_servers(s3_server: S3Server, sftp_server: SftpServer, tmp_path: Path) -> None:
    """Servers that accept connections but never answer: a clear error within a bounded time
    (twice the retry budget), no hang. The two run at once: each waits out the budget, here
    45 s (``CARGOHOLD_RETRY_BUDGET``) rather than the default 90 s, which only made the test
    wait longer: a stalled S3 request ends at the backend's 60 s read timeout, past the budget
    (one attempt), SFTP's at the URL's 10 s timeout (retried until the budget is spent)."""
    budget = STALL_BUDGET
    with contextlib.ExitStack() as stack:
        remotes = [
            stack.enter_context(open_remote(srv, tmp_path / srv.kind, f"test_stalled_servers[{srv.kind}]"))
            for srv in (s3_server, sftp_server)
        ]
        procs = []
        for rem in remotes:
            src = rem.work / "src"
            make_source(src, "stall", 4 * MiB)
            rem.must("init")
            rem.proxy.stall()
            backup = rem.popen("backup", "--path", str(src), "--json", env={"CARGOHOLD_RETRY_BUDGET": f"{budget:g}"})
            procs.append((rem, time.monotonic(), backup))
        for rem, started, proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1.0, started + 4 * budget - time.monotonic()))
                timed_out = False
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                timed_out = True
            run = Run(["backup"], proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                      time.monotonic() - started, timed_out)  # fmt: skip
            st = rem.proxy.stats()
            rem.record(outcome=f"exit {run.rc}", seconds=round(run.seconds, 2), budget=budget,
                       connections=st.connections, error=(run.errors() or [run.err[-300:]])[0][:300])  # fmt: skip
            assert st.connections >= 1, st
            assert_clear_failure(run, budget=budget)
        for rem in remotes:
            assert_repository_sound(rem, {})


def test_server_killed_and_restarted_during_backup(remote: Remote) -> None:
    """The server dies (SIGKILL) mid-upload and comes back a few seconds later: retries
    complete the backup or it fails clearly; the next backup works."""
    src = remote.work / "src"
    digest = make_source(src, "killsrv", 8 * MiB)
    remote.must("init")
    remote.proxy.set_bandwidth(up=4 * MiB)  # so the upload takes a while
    remote.proxy.reset_stats()
    proc = remote.popen("backup", "--path", str(src), "--json")
    started = time.monotonic()
    try:
        remote.proxy.wait_for(lambda s: s.bytes_up > 2 * MiB, 60)
        remote.server.kill()
        remote.proxy.refuse(reset_open=True)
        time.sleep(3)
        remote.server.restart()
        remote.proxy.refuse(False)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run = Run(
        ["backup"],
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - started,
    )
    committed = {}
    if run.rc == 0:
        sid = snapshot_id(run)
        assert sid, run.out
        committed[sid] = digest
    else:
        assert_clear_failure(run)
    remote.proxy.pass_through()
    again = remote.backup(src)
    assert again.rc == 0, again.brief()
    sid2 = snapshot_id(again)
    assert sid2
    committed[sid2] = digest
    assert_repository_sound(remote, committed)
    remote.record(
        outcome="completed" if run.rc == 0 else f"exit {run.rc}",
        seconds=round(run.seconds, 2),
        connections=remote.proxy.stats().connections,
    )


def test_kill_9_during_upload_then_next_backup_and_prune(remote: Remote) -> None:
    """cargohold SIGKILLed mid-upload: the next backup works, check is clean, and prune
    removes what the dead one left (incomplete multipart uploads, temporary files)."""
    src = remote.work / "src"
    digest = make_source(src, "kill9", 40 * MiB)
    remote.must("init")
    remote.proxy.set_bandwidth(up=8 * MiB)
    remote.proxy.reset_stats()
    proc = remote.popen("backup", "--path", str(src), "--json")
    try:
        remote.proxy.wait_for(lambda s: s.bytes_up > 20 * MiB, 90)
        os.kill(proc.pid, signal.SIGSTOP)
        kids = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        for pid, _ in kids:  # its workers, as a kill of the whole process group would
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not survivors(kids), "workers outlived the killed backup"
    remote.proxy.pass_through()
    # the server side closes the dead connections; give it a moment
    time.sleep(1)
    left = remote.server.leftovers(remote.name)
    dead_packs = remote.server.packs(remote.name)
    remote.record(leftovers_after_kill=len(left), packs_after_kill=len(dead_packs))
    # the kill landed mid-upload: the dead backup left something behind
    assert left or dead_packs, "the killed backup left nothing: it was not killed mid-upload"
    assert remote.snapshots() == [], "a killed backup committed a snapshot"
    again = remote.backup(src)
    assert again.rc == 0, again.brief()
    sid = snapshot_id(again)
    assert sid
    check = remote.cli("check")
    assert check.rc == 0, check.brief()
    prune = remote.cli("prune")
    assert prune.rc == 0, prune.brief()
    assert remote.server.leftovers(remote.name) == [], f"prune left {remote.server.leftovers(remote.name)}"
    kept = dead_packs & remote.server.packs(remote.name)
    assert not kept, f"prune kept {len(kept)} pack(s) of the killed backup that no index lists: {sorted(kept)[:3]}"
    assert_repository_sound(remote, {sid: digest})
    remote.record(check_out=check.out.strip().splitlines()[-2:], prune_out=prune.out.strip().splitlines()[-3:])


def test_retries_of_an_upload_are_reported(sftp_server: SftpServer, tmp_path: Path) -> None:
    """The ``--debug`` request summary of a backup that survived resets counts its retries."""
    with open_remote(sftp_server, tmp_path, "test_retries_of_an_upload_are_reported") as rem:
        src = rem.work / "src"
        make_source(src, "retries", 6 * MiB)
        rem.must("init")
        rem.proxy.reset_after(up=2 * MiB, times=2)
        run = rem.backup(src)
        assert run.rc == 0, run.brief()
        assert rem.proxy.stats().resets == 2
        assert run.retried() >= 2, f"resets survived but no retries reported: {run.err[-400:]}"
