"""Shared pieces of the fault campaigns (bench/faults.py): running the real CLI, digests,
repository listings, process scans and the result records.

Everything here classifies by evidence: exit codes, messages, content digests and file
listings. Nothing assumes a fix exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASSWORD = "faults-pw"
TMP_MARK = "~tmp~"
#: README "Exit codes"
EXIT_CODES = {0, 1, 2, 5, 6, 7, 8, 9, 10, 12}
EXIT_WRONG_PASSWORD = 7
CLI = [sys.executable, "-m", "cargohold.cli.app"]


# --- results ---------------------------------------------------------------------------------


@dataclass
class Failure:
    trial: int
    reason: str


@dataclass
class Metric:
    """One measured count and, when there is one, its target (``value == target`` is met)."""

    name: str
    value: int
    target: int | None = None

    @property
    def met(self) -> bool:
        return self.target is None or self.value == self.target


@dataclass
class CampaignResult:
    name: str
    trials: int = 0
    ok: int = 0  # trials that survived (or whose damage was detected and named)
    ok_label: str = "survived"
    metrics: list[Metric] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: str | None = None
    note: str = ""
    seconds: float = 0.0
    seed: int = 0

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def add(self, name: str, value: int = 1, target: int | None = None) -> None:
        for m in self.metrics:
            if m.name == name:
                m.value += value
                return
        self.metrics.append(Metric(name, value, target))

    def fail(self, trial: int, reason: str) -> None:
        self.failures.append(Failure(trial, reason))

    @property
    def targets_met(self) -> bool:
        return self.skipped is not None or all(m.met for m in self.metrics)

    def as_json(self) -> dict[str, Any]:
        return {
            "campaign": self.name,
            "trials": self.trials,
            "ok": self.ok,
            "ok_label": self.ok_label,
            "metrics": [{"name": m.name, "value": m.value, "target": m.target, "met": m.met} for m in self.metrics],
            "failures": [{"trial": f.trial, "reason": f.reason} for f in self.failures],
            "skipped": self.skipped,
            "note": self.note,
            "seconds": round(self.seconds, 1),
            "seed": self.seed,
            "targets_met": self.targets_met,
        }


# --- running the CLI --------------------------------------------------------------------------


@dataclass
class Run:
    args: list[str]
    rc: int
    out: str
    err: str
    seconds: float
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.text

    def brief(self) -> str:
        lines = [ln for ln in self.err.splitlines() if ln.strip()] or [ln for ln in self.out.splitlines() if ln.strip()]
        last = lines[-1][:160] if lines else ""
        return f"`{' '.join(self.args[:1])}` rc={self.rc}{' (timeout)' if self.timed_out else ''} {last}".strip()


class Ctx:
    """A campaign's scratch space (under one temporary directory) and how it runs the CLI."""

    def __init__(self, root: Path, seed: int, timeout: float = 180.0) -> None:
        self.root = root
        self.seed = seed
        self.timeout = timeout
        self.lock_wait = "60"  # CARGOHOLD_LOCK_WAIT: concurrent writers wait for each other
        self._n = 0

    def rng(self, *parts: object) -> random.Random:
        """A generator determined by the seed and ``parts`` (str seeds hash with SHA-512: stable)."""
        return random.Random(":".join([str(self.seed), *map(str, parts)]))

    def dir(self, name: str) -> Path:
        self._n += 1
        d = self.root / f"{name}-{self._n}"
        d.mkdir(parents=True)
        return d

    def env(self, repo: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
        state = self.root / ".state"
        env.update(
            {
                "CARGOHOLD_KDF": "fast",
                "CARGOHOLD_PASSWORD": PASSWORD,
                "CARGOHOLD_LOCK_WAIT": self.lock_wait,
                "CARGOHOLD_STATE_DIR": str(state / "intents"),
                "XDG_STATE_HOME": str(state),
                "XDG_CACHE_HOME": str(state / "cache"),
                "XDG_DATA_HOME": str(state / "data"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if repo is not None:
            env["CARGOHOLD_REPO"] = str(repo)
        env.update(extra or {})
        return env

    def cli(
        self,
        *args: str,
        repo: Path | None,
        timeout: float | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> Run:
        cmd = [*CLI, *args]
        started = time.monotonic()
        try:
            p = subprocess.run(
                cmd,
                env=self.env(repo, extra_env),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout or self.timeout,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            return Run(list(args), -1, out, err, time.monotonic() - started, timed_out=True)
        return Run(list(args), p.returncode, p.stdout, p.stderr, time.monotonic() - started)

    def popen(
        self, *args: str, repo: Path | None, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*CLI, *args],
            env=self.env(repo, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.root,
        )

    def must(self, *args: str, repo: Path | None, timeout: float | None = None) -> Run:
        r = self.cli(*args, repo=repo, timeout=timeout)
        if r.rc != 0:
            raise SetupError(f"setup step {' '.join(args)} failed: {r.brief()}")
        return r


class SetupError(Exception):
    """A step that prepares a campaign (not one under test) failed: the campaign cannot run."""


@contextlib.contextmanager
def scratch(parent: Path | None, prefix: str) -> Iterator[Path]:
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- content ----------------------------------------------------------------------------------


Digest = dict[str, str]


def digest_tree(root: Path) -> Digest:
    """Every entry below ``root``: files by SHA-256, symlinks by target, directories and others by type."""
    out: Digest = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                out[rel] = "file:" + h.hexdigest()
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = f"other:{stat.S_IFMT(st.st_mode)}"
    return out


def diff_digest(expected: Digest, got: Digest) -> str:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    parts = []
    if missing:
        parts.append(f"missing {missing[:3]}")
    if extra:
        parts.append(f"extra {extra[:3]}")
    if changed:
        parts.append(f"changed {changed[:3]}")
    return "; ".join(parts) or "same"


def write_random(path: Path, rng: random.Random, size: int, compressible: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 1 << 20)
            if compressible:
                word = rng.randbytes(64)
                f.write((word * (n // 64 + 1))[:n])
            else:
                f.write(rng.randbytes(n))
            left -= n


def make_tree(root: Path, rng: random.Random, files: int, max_size: int, big: int = 0) -> None:
    """A small tree: ``files`` files up to ``max_size`` bytes in a few directories, a symlink, one ``big`` file."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        d = root / f"d{i % 3}" if i % 2 else root
        write_random(d / f"f{i}.bin", rng, rng.randint(0, max_size), compressible=i % 3 == 0)
    (root / "link").symlink_to("f0.bin")
    if big:
        write_random(root / "big.db", rng, big)


def mutate_tree(root: Path, rng: random.Random, round_: int, big_pages: float = 0.5) -> None:
    """New files, a removed file and rewritten pages of ``big.db`` (when there is one)."""
    for i in range(2):
        write_random(root / f"m{round_}_{i}.bin", rng, rng.choice([1, 5000, 300_000]))
    victims = sorted(root.glob("m*.bin"))
    if len(victims) > 6:
        victims[0].unlink()
    big = root / "big.db"
    if big.exists():
        pages = big.stat().st_size // 8192
        with open(big, "r+b") as f:
            for page in range(pages):
                if rng.random() < big_pages:
                    f.seek(page * 8192)
                    f.write(rng.randbytes(8192))


# --- the repository, from outside ------------------------------------------------------------


def snapshot_ids(ctx: Ctx, repo: Path) -> set[str] | None:
    """Ids ``snapshots --json`` lists; None when the command fails."""
    r = ctx.cli("snapshots", "--json", repo=repo)
    if r.rc != 0:
        return None
    try:
        return {s["id"] for s in json.loads(r.out)}
    except (ValueError, KeyError, TypeError):
        return None


def snapshot_files(repo: Path) -> set[str]:
    d = repo / "snapshots"
    return {p.name for p in d.iterdir() if len(p.name) == 64} if d.is_dir() else set()


def staging_bytes(repo: Path) -> tuple[int, int]:
    """Files with ``~tmp~`` in their names under ``repo``: (count, bytes)."""
    n = size = 0
    for dirpath, _, filenames in os.walk(repo):
        for name in filenames:
            if TMP_MARK in name:
                n += 1
                with contextlib.suppress(OSError):
                    size += os.lstat(os.path.join(dirpath, name)).st_size
    return n, size


def backup_id(run: Run) -> str | None:
    """The snapshot id ``backup --json`` printed (None when none was written)."""
    try:
        doc = json.loads(run.out)
    except ValueError:
        return None
    docs = doc if isinstance(doc, list) else [doc]
    if isinstance(doc, dict) and isinstance(doc.get("results"), list):  # backup VOLUME... --json
        docs = doc["results"]
    for d in docs:
        snap = d.get("snapshot") if isinstance(d, dict) else None
        if isinstance(snap, dict) and isinstance(snap.get("id"), str):
            return str(snap["id"])
    return None


def restore_check(ctx: Ctx, repo: Path, sid: str, expected: Digest, where: Path) -> str | None:
    """Restore ``sid`` into a fresh directory; None when bit-exact, else why not."""
    target = where / f"r-{sid[:12]}-{time.monotonic_ns()}"
    try:
        r = ctx.cli("restore", sid, "--target", str(target), repo=repo)
        if r.rc != 0:
            return f"restore {sid[:8]}: {r.brief()}"
        got = digest_tree(target)
        if got != expected:
            return f"restore {sid[:8]} differs: {diff_digest(expected, got)}"
        return None
    finally:
        shutil.rmtree(target, ignore_errors=True)


# --- processes ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return [raw[: raw.rfind(")") + 1], *raw[raw.rfind(")") + 2 :].split()]


def proc_identity(pid: int) -> tuple[int, int] | None:
    """(pid, start time) of a live non-zombie process, None when gone or a zombie."""
    f = _stat_fields(pid)
    if f is None or f[1] in ("Z", "X"):
        return None
    return pid, int(f[20])


def descendants(pid: int) -> list[tuple[int, int]]:
    """Identities of every live descendant of ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is not None:
            children.setdefault(int(f[2]), []).append(int(entry))
    out: list[tuple[int, int]] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        ident = proc_identity(p)
        if ident is not None:
            out.append(ident)
        todo.extend(children.get(p, []))
    return out


def processes_mentioning(text: str, exclude: Sequence[int] = ()) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, *exclude):
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and proc_identity(int(entry)) is not None:
            found.append(int(entry))
    return found


def kill9(proc: subprocess.Popen[bytes]) -> list[tuple[int, int]]:
    """SIGSTOP (so it spawns nothing more), note its descendants, SIGKILL; returns the descendants."""
    try:
        os.kill(proc.pid, signal.SIGSTOP)
    except ProcessLookupError:
        return []
    kids = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    return kids


def survivors(kids: Sequence[tuple[int, int]], grace: float = 3.0) -> list[int]:
    """Which of ``kids`` (pid, start time) are still alive after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        alive = [pid for pid, start in kids if proc_identity(pid) == (pid, start)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def reap_orphans(pids: Sequence[int]) -> None:
    """Kill what a campaign counted as orphans (they are ours: descendants of our subprocess)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def hostname() -> str:
    return socket.gethostname()
