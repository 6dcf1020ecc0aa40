#!/usr/bin/env python3
"""Remote repository benchmark: cargohold against restic on the same S3 and SFTP servers (issue 10).

The project's test bed starts the servers, on 127.0.0.1 only, for this run alone (and stops
them at the end): a single-node Ceph RADOS Gateway with a memstore OSD
(``cargohold.testbed.rgw``) and an OpenSSH sshd with its own keys and known_hosts
(``cargohold.testbed.sshd``). restic (Debian's 0.14) is installed with apt when missing. Then,
in one run, on the same servers, for each of S3 and SFTP and each of cargohold and restic
(interleaved operation by operation, as bench_repository.py does):

  full        `init` of an empty repository, then the first backup of the shared corpus
              (``../shared/bench/make_corpus.py DIR --scale S``)
  incremental backup after ``make_corpus.py DIR --scale S --generation 1`` (one busy day)
  no-op       the same backup again, nothing changed
  restore     the latest snapshot into an empty local directory (checked against the source)

Each operation is a fresh process, measured the same way for both tools
(bench_repository.run's method): wall time, CPU time (user + system of the process and the
children it waited for: cargohold's worker processes, restic's ssh), peak memory (the larger
of the process's own peak RSS and the peak of the summed PSS of its whole process tree, sampled
every 20 ms), the CPU time the servers spent meanwhile, and requests: cargohold's own count
(``backup --json`` "requests", the ``--debug`` line of the others) and, on S3, the requests the
gateway logged for both tools (its access log). Before every step dirty pages are written
back and 2 GiB of free memory is touched (bench_repository.prime_memory); the page cache stays
warm for both tools alike (the machine is shared). Both tools keep their local caches between
operations (cargohold's metadata cache under XDG_CACHE_HOME, restic's cache directory), as a
user's would; both start empty with each new repository. cargohold runs with its default KDF;
restic with repository format 2 and ``--compression auto``.

Prints, per server kind, a table of cargohold/restic ratios against the targets of issue 10
(the best of ``--runs`` for full, no-op and restore; incremental once) and writes
bench/results/remote-<scale>.json. ``--profile`` then runs one more cargohold full backup per
server kind under py-spy (every process and thread) and prints where the time goes.

    python bench/bench_remote.py [--scale 1.0] [--runs 2] [--only s3|sftp] [--workdir DIR] [--keep] [--profile]
    python bench/bench_remote.py --tables
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_repository as br  # the measuring code of the local benchmark

from cargohold.testbed import rgw as rgw_bed
from cargohold.testbed import sshd as sshd_bed

ROOT = br.ROOT
RESULTS = ROOT / "bench" / "results"
PASSWORD = br.PASSWORD
KINDS = ("s3", "sftp")
TOOLS = ("cargohold", "restic")
OPS = ("init", "full", "incremental", "noop", "restore")

#: (metric, target ratio cargohold/restic) — issue 10, "Performance"; the same for S3 and SFTP.
TARGETS: dict[str, float] = {
    "full_s": 0.5,
    "incremental_s": 0.5,
    "noop_s": 0.8,
    "restore_s": 0.6,
    "peak_rss_bytes": 1.0,
}
#: Requests of one no-op backup, at most (an absolute target: cargohold's own count).
NOOP_REQUESTS = 10
LABELS = {
    "full_s": "full backup (s)",
    "incremental_s": "incremental, gen 1 (s)",
    "noop_s": "no-op backup (s)",
    "restore_s": "full restore (s)",
    "peak_rss_bytes": "peak memory, any operation (MB)",
    "repo_bytes": "repository after full (MB)",
    "growth_bytes": "growth after gen 1 (MB)",
}
_REQUESTS_LINE = re.compile(r"cargohold: debug: .*?requests: (\d+)(?: \(([^)]*)\))?")


# --- measuring one process ---------------------------------------------------------------


@dataclass
class Measure:
    """One measured process: bench_repository's figures, plus requests and server CPU."""

    run: br.Run
    server_cpu_s: float
    requests: int | None  # the tool's own count (cargohold)
    requests_by_op: dict[str, int]
    server_requests: int | None  # requests the server logged (S3 only)
    stdout: str

    def to_json(self) -> dict[str, Any]:
        return {
            **self.run.to_json(),
            "server_cpu_s": round(self.server_cpu_s, 3),
            "requests": self.requests,
            "requests_by_op": self.requests_by_op,
            "server_requests": self.server_requests,
        }


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds of a process and of the children it has waited for (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based from state
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class Server(abc.ABC):
    """A test server started by the project's test bed; its CPU time and logged requests."""

    kind: str

    @abc.abstractmethod
    def pids(self) -> list[int]:
        """The server's long-lived processes (their CPU includes reaped sessions)."""

    def cpu_s(self) -> float:
        return sum(_proc_cpu_s(pid) for pid in self.pids())

    def log_mark(self) -> int | None:
        """A position in the server's request log (None: requests are not logged)."""
        return None

    def requests_since(self, mark: int | None) -> int | None:
        return None

    @abc.abstractmethod
    def stop(self) -> None: ...


class Rgw(Server):
    kind = "s3"

    def __init__(self) -> None:
        rgw_bed.sweep_orphans()  # gateways of runs killed before they stopped theirs
        self.base = rgw_bed.temp_base()  # short: the daemons' admin sockets live in it
        try:
            self.server = rgw_bed.start_rgw(self.base)
            self.log = self.base / "log" / "client.rgw.a.log"
            # The gateway creates its pools with the first bucket and object (seconds): not
            # something the first tool to run should pay for.
            client = self.server.client()
            client.create_bucket(Bucket="bench-warm-up")
            client.put_object(Bucket="bench-warm-up", Key="x", Body=b"x")
            self.server.remove_bucket("bench-warm-up")
        except BaseException:  # not yet in bench()'s list of servers to stop
            rgw_bed.stop_rgw(self.base)
            raise

    def pids(self) -> list[int]:
        out = []
        for daemon in ("rgw", "osd", "mon"):
            with contextlib.suppress(OSError, ValueError):
                out.append(int((self.base / "run" / f"pid.{daemon}").read_text().strip()))
        return out

    def log_mark(self) -> int | None:
        try:
            return self.log.stat().st_size
        except OSError:
            return None

    def requests_since(self, mark: int | None) -> int | None:
        """Requests in the gateway's access log (one ``beast:`` line each) since ``mark``;
        waits until the log has stopped growing (Ceph writes its log from a thread)."""
        if mark is None:
            return None
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            size = self.log.stat().st_size
            if size != last:
                last, stable_since = size, time.monotonic()
            elif time.monotonic() - stable_since > 0.3:
                break
            time.sleep(0.05)
        with open(self.log, "rb") as f:
            f.seek(mark)
            return sum(1 for line in f if b" beast: " in line and b'" ' in line)

    def bucket_bytes(self, bucket: str, prefix: str) -> int:
        client = self.server.client()
        total = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            total += sum(int(o["Size"]) for o in page.get("Contents", []))
        return total

    def remove_bucket(self, bucket: str) -> None:
        with contextlib.suppress(Exception):  # absent: nothing to remove
            self.server.remove_bucket(bucket)

    def stop(self) -> None:
        rgw_bed.stop_rgw(self.base)


class Sshd(Server):
    kind = "sftp"
    alias = "bench-sftp"

    def __init__(self, work: Path) -> None:
        sshd_bed.sweep_orphans()
        self.server = sshd_bed.start_sshd(sshd_bed.temp_base())
        try:
            self.config = work / "ssh_config"
            self.config.write_text(self.server.ssh_config(self.alias))
        except BaseException:  # not yet in bench()'s list of servers to stop
            sshd_bed.stop_sshd(self.server.base)
            raise

    def pids(self) -> list[int]:
        return [self.server.pid]

    def cpu_s(self) -> float:
        """The listener's CPU and that of the sessions it has reaped: waits (up to 5 s) for
        the sessions of a client that has exited to end first."""
        deadline = time.monotonic() + 5.0
        while self.server.session_pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        return super().cpu_s()

    def stop(self) -> None:
        sshd_bed.stop_sshd(self.server.base)


def measure(argv: list[str], *, env: dict[str, str], server: Server) -> Measure:
    """Run ``argv`` once, measured as bench_repository.run measures (peak RSS and PSS of the
    tree, CPU, the rest of the machine), with its output kept, and the server's CPU time and
    logged requests meanwhile; a non-zero exit fails the run."""
    os.sync()
    br.prime_memory()
    load = os.getloadavg()
    mark = server.log_mark()
    server0 = server.cpu_s()
    busy0 = br._busy_cpu_s()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        sampler = br._TreeMemory([p.pid])
        sampler.start()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        pss = sampler.stop()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    cpu = usage.ru_utime + usage.ru_stime
    busy = br._busy_cpu_s() - busy0
    server_cpu = server.cpu_s() - server0
    if p.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(argv)}: exit {p.returncode}: {stderr.strip()[-2000:]}")
    requests: int | None = None
    by_op: dict[str, int] = {}
    if m := _REQUESTS_LINE.search(stderr):
        requests = int(m.group(1))
        for part in (m.group(2) or "").split(", "):
            name, _, n = part.partition(" ")
            if n.isdigit():
                by_op[name] = int(n)
    run = br.Run(
        [" ".join(argv)],
        wall,
        cpu,
        max(usage.ru_maxrss * 1024, pss),
        max(0.0, busy - cpu - server_cpu),
        load,
    )
    return Measure(run, server_cpu, requests, by_op, server.requests_since(mark), stdout)


# --- the tools on a remote repository ------------------------------------------------------


@dataclass
class Tool(abc.ABC):
    name: str
    server: Server
    work: Path
    env: dict[str, str]
    generation: int = 0
    runs: dict[str, list[Measure]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.server.kind}/{self.name}"

    @property
    def slot(self) -> str:
        """This repository's name on its server (a new one for every full run)."""
        return f"bench-{self.name}-{self.generation}"

    def record(self, op: str, m: Measure) -> Measure:
        self.runs.setdefault(op, []).append(m)
        return m

    @property
    def cache(self) -> Path:
        return self.work / f"cache-{self.server.kind}-{self.name}"

    def fresh(self) -> None:
        """Remove the previous repository and the tool's cache (untimed); the next slot."""
        self.remove()
        shutil.rmtree(self.cache, ignore_errors=True)
        self.generation += 1

    @abc.abstractmethod
    def remove(self) -> None:
        """Remove the current repository from the server."""

    @abc.abstractmethod
    def size(self) -> int:
        """Bytes the repository holds on the server."""

    @abc.abstractmethod
    def init(self) -> Measure: ...

    @abc.abstractmethod
    def backup(self, src: Path) -> Measure: ...

    @abc.abstractmethod
    def restore(self, target: Path) -> Measure: ...


class Cargohold(Tool):
    def __init__(self, server: Server, work: Path, env: dict[str, str]) -> None:
        super().__init__("cargohold", server, work, {**env, "CARGOHOLD_PASSWORD": PASSWORD})
        self.cmd = br.find_cargohold()

    @property
    def url(self) -> str:
        if isinstance(self.server, Rgw):
            return f"s3://{self.slot}/repo"
        assert isinstance(self.server, Sshd)
        return f"sftp://{Sshd.alias}{self.work / 'sftp' / self.slot}?ssh_config={self.server.config}"

    def _env(self) -> dict[str, str]:
        return {**self.env, "XDG_CACHE_HOME": str(self.cache)}

    def remove(self) -> None:
        _remove(self.server, self.work, self.slot)

    def size(self) -> int:
        return _size(self.server, self.work, self.slot, "repo")

    def init(self) -> Measure:
        return measure([*self.cmd, "--debug", "init", "--repo", self.url], env=self._env(), server=self.server)

    def backup(self, src: Path) -> Measure:
        argv = [*self.cmd, "backup", "--repo", self.url, "--path", str(src), "--no-progress", "--json"]
        m = measure(argv, env=self._env(), server=self.server)
        doc = json.loads(m.stdout)
        req = doc.get("requests") or {}
        m.requests_by_op = {k: v for k, v in req.items() if isinstance(v, int) and v}
        m.requests = sum(int(req.get(op, 0)) for op in ("load", "store", "list", "stat", "create", "delete"))
        return m

    def restore(self, target: Path) -> Measure:
        argv = [*self.cmd, "--debug", "restore", "latest", "--repo", self.url, "--target", str(target), "--no-progress"]
        return measure(argv, env=self._env(), server=self.server)


class Restic(Tool):
    def __init__(self, server: Server, work: Path, env: dict[str, str]) -> None:
        super().__init__("restic", server, work, {**env, "RESTIC_PASSWORD": PASSWORD})

    def _args(self) -> list[str]:
        if isinstance(self.server, Rgw):
            return ["restic", "--repo", f"s3:{self.server.server.endpoint}/{self.slot}/repo"]
        assert isinstance(self.server, Sshd)
        ssh = f"ssh -F {self.server.config} -o BatchMode=yes {Sshd.alias} -s sftp"
        return ["restic", "--repo", f"sftp:{Sshd.alias}:{self.work / 'sftp' / self.slot}", "-o", f"sftp.command={ssh}"]

    def _env(self) -> dict[str, str]:
        return {**self.env, "RESTIC_CACHE_DIR": str(self.cache)}

    def remove(self) -> None:
        _remove(self.server, self.work, self.slot)

    def size(self) -> int:
        return _size(self.server, self.work, self.slot, "repo")

    def init(self) -> Measure:
        return measure([*self._args(), "init", "--repository-version", "2"], env=self._env(), server=self.server)

    def backup(self, src: Path) -> Measure:
        argv = [*self._args(), "backup", "--compression", "auto", "--quiet", str(src)]
        return measure(argv, env=self._env(), server=self.server)

    def restore(self, target: Path) -> Measure:
        return measure(
            [*self._args(), "restore", "latest", "--target", str(target)], env=self._env(), server=self.server
        )


def _remove(server: Server, work: Path, slot: str) -> None:
    if isinstance(server, Rgw):
        server.remove_bucket(slot)
    else:
        shutil.rmtree(work / "sftp" / slot, ignore_errors=True)


def _size(server: Server, work: Path, slot: str, prefix: str) -> int:
    if isinstance(server, Rgw):
        return server.bucket_bytes(slot, prefix + "/")
    return br.du_sb(work / "sftp" / slot)


# --- counting restic's SFTP requests ------------------------------------------------------

#: SFTP packet types a client sends (draft-ietf-secsh-filexfer-02, OpenSSH's version 3).
_SFTP_TYPES = {
    1: "init", 3: "open", 4: "close", 5: "read", 6: "write", 7: "lstat", 8: "fstat", 9: "setstat",
    10: "fsetstat", 11: "opendir", 12: "readdir", 13: "remove", 14: "mkdir", 15: "rmdir", 16: "realpath",
    17: "stat", 18: "rename", 19: "readlink", 20: "symlink", 200: "extended",
}  # fmt: skip
RELAY_FLAG = "--sftp-relay"


def sftp_relay(count_file: str, argv: list[str]) -> int:
    """Run ``argv`` (``ssh ... -s sftp``) with our stdout as its stdout, pass our stdin on to
    it packet by packet and keep ``count_file`` (JSON) up to date with how many requests of
    each type went through. restic's ``sftp.command`` runs this for one extra,
    untimed no-op backup: restic does not count its requests, and sshd's internal-sftp does
    not log them at the test bed's log level."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE)
    assert p.stdin is not None
    counts: dict[str, int] = {}
    buf = b""
    while chunk := os.read(0, 1 << 20):
        buf += chunk
        end = 0
        while len(buf) - end >= 5:
            length = int.from_bytes(buf[end : end + 4], "big")
            if len(buf) - end < 4 + length:
                break
            name = _SFTP_TYPES.get(buf[end + 4], str(buf[end + 4]))
            counts[name] = counts.get(name, 0) + 1
            end += 4 + length
        if end:
            p.stdin.write(buf[:end])
            p.stdin.flush()
            buf = buf[end:]
            # written as it goes: restic kills its sftp.command when it is done
            Path(count_file).write_text(json.dumps(counts))
    p.stdin.write(buf)
    p.stdin.close()
    return p.wait()


def count_restic_sftp(t: Restic, src: Path) -> dict[str, int]:
    """One more no-op backup of restic over SFTP, through :func:`sftp_relay` (untimed)."""
    assert isinstance(t.server, Sshd)
    counts = t.work / "sftp-counts.json"
    relay = f"{sys.executable} {Path(__file__).resolve()} {RELAY_FLAG} {counts}"
    args = [
        a.replace("sftp.command=ssh ", f"sftp.command={relay} ssh ") if a.startswith("sftp.command=") else a
        for a in t._args()
    ]
    subprocess.run([*args, "backup", "--quiet", str(src)], env=t._env(), check=True, stdin=subprocess.DEVNULL)
    doc: dict[str, int] = json.loads(counts.read_text())
    return doc


# --- profile -------------------------------------------------------------------------------


def profile_full(t: Cargohold, src: Path, py_spy: str, rate: int = 100) -> dict[str, Any]:
    """One more full backup of cargohold into a fresh repository on ``t``'s server, sampled
    by py-spy in every process (the workers too) and thread; prints and returns where the
    samples are. Idle threads (waiting on a lock, a queue, a socket's answer) are left out,
    so the seconds are roughly CPU seconds plus waits for the GIL."""
    t.fresh()
    t.init()
    raw = t.work / f"profile-{t.server.kind}.txt"
    argv = [
        py_spy, "record", "--subprocesses", "--threads", "--rate", str(rate), "--format", "raw",
        "--output", str(raw), "--",
        *t.cmd, "backup", "--repo", t.url, "--path", str(src), "--no-progress",
    ]  # fmt: skip
    m = measure(argv, env=t._env(), server=t.server)
    own: dict[str, int] = {}
    by_process: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        proc = procs[-1] if procs else ""  # the innermost: a worker's frames sit under the main process's
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames or any(w in frames[-1] for w in br._WAITS):
            continue
        n = int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + n
        kind = "worker" if "cargohold.repo." in proc else "main"
        by_process[kind] = by_process.get(kind, 0) + n
    top = sorted(own.items(), key=lambda kv: -kv[1])[:20]
    out = {
        "wall_s_under_py_spy": round(m.run.wall_s, 2),
        "sampled_s_by_process": {k: round(v / rate, 2) for k, v in by_process.items()},
        "self_s": [[k, round(v / rate, 2)] for k, v in top],
    }
    print(
        f"\nprofile of a cargohold full backup on {t.server.kind} (py-spy {rate} Hz, every process and thread, "
        f"waits left out): wall {m.run.wall_s:.2f} s, sampled seconds {out['sampled_s_by_process']}"
    )
    for k, v in top[:15]:
        print(f"  {v / rate:6.2f}  {k}")
    return out


# --- the run -------------------------------------------------------------------------------


def ensure_restic() -> None:
    if shutil.which("restic") is not None:
        return
    from cargohold.testbed._system import apt_install

    apt_install(["restic"], why="the remote benchmark compares with restic")


def versions() -> dict[str, str]:
    v = br.versions()
    v.pop("zstd", None)
    v.pop("tar", None)
    for name, argv in {"ssh": ["ssh", "-V"], "radosgw": ["radosgw", "--version"]}.items():
        if shutil.which(argv[0]) is None:
            v[name] = "not installed"
            continue
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        v[name] = (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"
    return v


def others_share(tools: list[Tool]) -> float:
    runs = [m.run for t in tools for ms in t.runs.values() for m in ms]
    wall = sum(r.wall_s for r in runs)
    return round(sum(r.others_cpu_s for r in runs) / ((os.cpu_count() or 1) * wall), 3) if wall else 0.0


def bench(scale: float, workdir: Path, runs: int, kinds: list[str], py_spy: str | None) -> dict[str, Any]:
    work = (workdir / f"remote-{scale}").resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "sftp").mkdir(parents=True)
    (work / "home").mkdir()
    src = work / "src"
    # PYTHONDONTWRITEBYTECODE (set in some shells and CI) would make every cargohold process,
    # workers too, compile again each module whose cached bytecode is stale (0.3 CPU-seconds
    # and more per process while the source is being edited); an installed cargohold has its
    # bytecode compiled. So: compiled once here, untimed, and written whenever stale.
    drop = ("CARGOHOLD_", "RESTIC_", "AWS_", "SSH_", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "cargohold")], check=False)
    env.update({"HOME": str(work / "home"), "XDG_DATA_HOME": str(work / "xdg-data")})
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()

    servers: list[Server] = []
    try:
        print("== starting the test servers (project test bed, 127.0.0.1 only) ...", flush=True)
        t0 = time.perf_counter()
        if "s3" in kinds:
            servers.append(Rgw())
        if "sftp" in kinds:
            servers.append(Sshd(work))
        print(f"   up in {time.perf_counter() - t0:.1f} s", flush=True)
        versions_start = versions()  # after the test bed installed what was missing
        tools: list[Tool] = []
        for server in servers:
            senv = dict(env)
            if isinstance(server, Rgw):
                senv.update(server.server.env())
                senv["AWS_CONFIG_FILE"] = str(work / "no-aws-config")
                senv["AWS_SHARED_CREDENTIALS_FILE"] = str(work / "no-aws-credentials")
            tools += [Cargohold(server, work, senv), Restic(server, work, senv)]
        return _bench_tools(scale, work, src, runs, tools, uptime_start, versions_start, py_spy)
    finally:
        for server in servers:
            server.stop()


def show(t: Tool, op: str, m: Measure) -> None:
    r = m.run
    req = f"{m.requests}" if m.requests is not None else "-"
    sreq = f"{m.server_requests}" if m.server_requests is not None else "-"
    print(
        f"   {op:<12} {t.label:<16} {r.wall_s:7.2f} s  cpu {r.cpu_s:6.2f} s  mem {r.peak_rss_bytes / 1e6:5.0f} MB"
        f"  server cpu {m.server_cpu_s:5.2f} s  requests {req:>5} (server {sreq:>5})"
        f"  others {r.others_cpu_s:5.2f} s",
        flush=True,
    )


def _bench_tools(
    scale: float,
    work: Path,
    src: Path,
    runs: int,
    tools: list[Tool],
    uptime_start: str,
    versions_start: dict[str, str],
    py_spy: str | None,
) -> dict[str, Any]:
    print(f"== scale {scale}: generating the corpus in {src} ...", flush=True)
    gen0_s = br.make_corpus(src, scale, 0)
    files0, bytes0 = br.tree_size(src)
    print(f"   {files0} files, {bytes0 / 1e6:.0f} MB in {gen0_s:.1f} s", flush=True)

    for _ in range(runs):
        for t in tools:
            t.fresh()
            show(t, "init", t.record("init", t.init()))
            show(t, "full", t.record("full", t.backup(src)))
    for t in tools:
        t.sizes["full"] = t.size()

    print("   applying generation 1 ...", flush=True)
    gen1_s = br.make_corpus(src, scale, 1)
    files1, bytes1 = br.tree_size(src)
    for t in tools:
        show(t, "incremental", t.record("incremental", t.backup(src)))
        t.sizes["incremental"] = t.size()
    for _ in range(runs):
        for t in tools:
            show(t, "noop", t.record("noop", t.backup(src)))
    sftp_packets: dict[str, dict[str, int]] = {}
    for t in tools:
        if isinstance(t, Restic) and isinstance(t.server, Sshd):
            sftp_packets["restic"] = count_restic_sftp(t, src)
            n = sum(v for k, v in sftp_packets["restic"].items() if k != "init")
            print(f"   restic's SFTP requests in a no-op backup (untimed, counted by a relay): {n}", flush=True)

    print("   checksumming the source ...", flush=True)
    want = br.manifest(src)
    restored: list[Path] = []  # deleted after the last restore (see bench_repository)
    verified: dict[str, int] = {}
    for rep in range(runs):
        for t in tools:
            target = work / f"restore-{t.server.kind}-{t.name}-{rep}"
            shutil.rmtree(target, ignore_errors=True)
            restored.append(target)
            show(t, "restore", t.record("restore", t.restore(target)))
            if rep == 0:
                root = target / src.relative_to("/") if isinstance(t, Restic) else target
                problems = br.compare(want, br.manifest(root), mtimes=True)
                if problems:
                    raise SystemExit(
                        f"FAILED: {t.label} restored a tree that differs from the source "
                        f"({len(problems)} differences):\n  " + "\n  ".join(problems[:20])
                    )
                verified[t.label] = len(want)
    for target in restored:
        shutil.rmtree(target)
    print(f"   restores verified: {verified} entries each", flush=True)

    result: dict[str, Any] = {
        "scale": scale,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "uptime_start": uptime_start,
            "uptime_end": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(),
            "page_cache": "warm: nothing dropped (shared machine); both tools read the corpus from memory",
            "servers": "Ceph RGW (beast, memstore OSD) and OpenSSH sshd (internal-sftp), both on 127.0.0.1",
        },
        "versions": versions_start,
        "corpus": {
            "generation0": {"files": files0, "bytes": bytes0, "generate_s": round(gen0_s, 2)},
            "generation1": {"files": files1, "bytes": bytes1, "generate_s": round(gen1_s, 2)},
        },
        "verified_entries": verified,
        "others_share": others_share(tools),
        "restic_sftp_noop_packets": sftp_packets,
        "kinds": {},
    }
    if br.engine_hash() != versions_start["engine_sha256"]:
        result["warning"] = "the engine source changed during the run: figures mix versions"
        print(f"WARNING: {result['warning']}", file=sys.stderr)
    for kind in dict.fromkeys(t.server.kind for t in tools):
        ch, rs = (next(t for t in tools if t.server.kind == kind and t.name == n) for n in TOOLS)
        sums = {"cargohold": summarize(ch), "restic": summarize(rs)}
        result["kinds"][kind] = {"tools": sums, "ratios": ratios(sums["cargohold"], sums["restic"])}
    if py_spy is not None:
        result["profile"] = {t.server.kind: profile_full(t, src, py_spy) for t in tools if isinstance(t, Cargohold)}
    return result


def summarize(t: Tool) -> dict[str, Any]:
    def best(op: str) -> float | None:
        ms = t.runs.get(op)
        return round(min(m.run.wall_s for m in ms), 3) if ms else None

    def med(op: str, key: str) -> Any:
        vals = [getattr(m.run, key) if hasattr(m.run, key) else getattr(m, key) for m in t.runs.get(op, [])]
        vals = [v for v in vals if v is not None]
        return round(statistics.median(vals), 3) if vals else None

    full, incr = t.sizes.get("full"), t.sizes.get("incremental")
    return {
        "full_s": best("full"),
        "incremental_s": best("incremental"),
        "noop_s": best("noop"),
        "restore_s": best("restore"),
        "init_s": best("init"),
        "median_s": {op: med(op, "wall_s") for op in t.runs},
        "repo_bytes": full,
        "growth_bytes": incr - full if full is not None and incr is not None else None,
        "peak_rss_bytes": max(m.run.peak_rss_bytes for ms in t.runs.values() for m in ms),
        "peak_rss_by_op": {op: max(m.run.peak_rss_bytes for m in ms) for op, ms in t.runs.items()},
        "cpu_s_by_op": {op: med(op, "cpu_s") for op in t.runs},
        "server_cpu_s_by_op": {op: med(op, "server_cpu_s") for op in t.runs},
        "requests_by_op": {op: med(op, "requests") for op in t.runs},
        "server_requests_by_op": {op: med(op, "server_requests") for op in t.runs},
        "runs": {op: [m.to_json() for m in ms] for op, ms in t.runs.items()},
    }


def ratios(ch: dict[str, Any], rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for metric, target in TARGETS.items():
        a, b = ch[metric], rs[metric]
        ratio = a / b if a is not None and b else None
        out[metric] = {
            "cargohold": a,
            "restic": b,
            "ratio": round(ratio, 3) if ratio is not None else None,
            "target": target,
            "met": ratio is not None and ratio <= target,
        }
    noop = ch["requests_by_op"].get("noop")
    out["noop_requests"] = {
        "cargohold": noop,
        "restic": rs["server_requests_by_op"].get("noop"),
        "ratio": None,
        "target": NOOP_REQUESTS,
        "met": noop is not None and noop <= NOOP_REQUESTS,
    }
    return out


# --- reporting -----------------------------------------------------------------------------


def _fmt(metric: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1e6:.0f}" if metric.endswith("bytes") else f"{v:.2f}"


def _n(v: Any) -> str:
    return "—" if v is None else f"{v:.0f}"


def table(result: dict[str, Any]) -> str:
    lines = [
        *([f"WARNING: {result['warning']}"] if "warning" in result else []),
        f"scale {result['scale']}: {result['corpus']['generation0']['files']} files, "
        f"{result['corpus']['generation0']['bytes'] / 1e6:.0f} MB; cargohold at "
        f"{result['versions']['cargohold_commit']}; best of {result['runs']} (incremental: 1); "
        f"other processes used {result['others_share']:.0%} of the cores; {result['machine']['uptime_end']}",
    ]
    for kind, k in result["kinds"].items():
        t = k["tools"]
        lines += [
            "",
            f"{kind.upper()}:",
            "",
            "| metric | cargohold | restic | cargohold / restic | target | |",
            "|---|---|---|---|---|---|",
        ]
        for metric, r in k["ratios"].items():
            if metric == "noop_requests":
                peer = f"{_n(r['restic'])} (logged by RGW)"
                if kind == "sftp":
                    packets = result.get("restic_sftp_noop_packets", {}).get("restic")
                    peer = f"{sum(v for k, v in packets.items() if k != 'init')} SFTP packets" if packets else "—"
                lines.append(
                    f"| requests, no-op backup (cargohold: its own count) | {_n(r['cargohold'])} | {peer} | "
                    f"| <= {r['target']} | {'met' if r['met'] else 'MISSED'} |"
                )
                continue
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "—"
            lines.append(
                f"| {LABELS[metric]} | {_fmt(metric, t['cargohold'][metric])} | {_fmt(metric, t['restic'][metric])} "
                f"| {ratio} | <= {r['target']} | {'met' if r['met'] else 'MISSED'} |"
            )
        for metric in ("repo_bytes", "growth_bytes"):
            a, b = t["cargohold"][metric], t["restic"][metric]
            ratio = f"{a / b:.2f}" if a is not None and b else "—"
            lines.append(f"| {LABELS[metric]} | {_fmt(metric, a)} | {_fmt(metric, b)} | {ratio} | | |")
        lines += [
            "",
            "| operation | cargohold s | restic s | cargohold CPU s | restic CPU s | server CPU s (ch / restic) "
            "| cargohold MB | restic MB | requests cargohold | requests at the server (ch / restic) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for op in OPS:
            c, r = t["cargohold"], t["restic"]
            best_c = min((x["wall_s"] for x in c["runs"].get(op, [])), default=None)
            best_r = min((x["wall_s"] for x in r["runs"].get(op, [])), default=None)
            lines.append(
                f"| {op} | {_fmt(op, best_c)} | {_fmt(op, best_r)} | {_fmt(op, c['cpu_s_by_op'].get(op))} "
                f"| {_fmt(op, r['cpu_s_by_op'].get(op))} | {_fmt(op, c['server_cpu_s_by_op'].get(op))} / "
                f"{_fmt(op, r['server_cpu_s_by_op'].get(op))} "
                f"| {_fmt('bytes', c['peak_rss_by_op'].get(op))} | {_fmt('bytes', r['peak_rss_by_op'].get(op))} "
                f"| {_n(c['requests_by_op'].get(op))} | {_n(c['server_requests_by_op'].get(op))} / "
                f"{_n(r['server_requests_by_op'].get(op))} |"
            )
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == RELAY_FLAG:  # restic's sftp.command (count_restic_sftp)
        return sftp_relay(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="corpus scale (1.0 is about 1.1 GB)")
    ap.add_argument("--runs", type=int, default=2, help="repeat init+full, no-op and restore; report the best")
    ap.add_argument("--only", choices=KINDS, action="append", help="one server kind only (repeatable)")
    ap.add_argument("--workdir", type=Path, help="where corpus, SFTP repositories and restores go (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--profile", action="store_true", help="then one more cargohold full backup per kind under py-spy")
    ap.add_argument(
        "--py-spy",
        default=shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent)),
        help="py-spy executable (default: from PATH or beside this Python)",
    )
    ap.add_argument("--tables", action="store_true", help="only print the tables of the results already written")
    a = ap.parse_args()
    if a.tables:
        for path in sorted(RESULTS.glob("remote-[0-9]*.json")):
            print(table(json.loads(path.read_text())) + "\n")
        return 0
    if not br.MAKE_CORPUS.exists():
        raise SystemExit(f"{br.MAKE_CORPUS} not found: the shared corpus generator sits in ../shared/bench")
    if a.profile and not a.py_spy:
        raise SystemExit("--profile needs py-spy (pip install py-spy, or --py-spy PATH)")
    ensure_restic()
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="cargohold-bench-remote-"))
    workdir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        res = bench(a.scale, workdir, a.runs, a.only or list(KINDS), a.py_spy if a.profile else None)
        out = RESULTS / f"remote-{a.scale}.json"
        out.write_text(json.dumps(res, indent=2) + "\n")
        print("\n" + table(res) + f"\n\nwritten to {out.relative_to(ROOT)}\n", flush=True)
    finally:
        if a.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
