#!/usr/bin/env python3
"""Repository benchmark: cargohold against restic and `tar | zstd -T0 -3` (issue 3).

In one run: generate the shared corpus (`../shared/bench/make_corpus.py DIR --scale S`,
relative to the repository root), then time, for every tool, as a user runs it (a fresh
process per operation, repository in the work directory):

  full        first backup of the corpus into an empty repository
  incremental backup after `make_corpus.py DIR --scale S --generation 1` (one busy day)
  no-op       the same backup again, nothing changed
  restore     the latest snapshot into an empty directory

and measure the repository size after the full backup (`du -sb`), its growth after the
incremental and peak memory: the larger of each process's own peak RSS (`os.wait4`; summed
over a pipeline) and the peak of the sum of PSS over the whole process tree, sampled every
20 ms (cargohold's backup runs worker processes: their memory counts, shared pages once).
The page cache is
left warm (nothing is dropped: the machine is shared), so the corpus is read from memory
by every tool alike; dirty pages are written back (`sync`, untimed) before each step, so no
tool pays for the writeback of the previous one's writes, and 2 GiB of free memory is
touched and freed again (untimed: see prime_memory) so that no tool waits for the
hypervisor to hand the guest its page-cache pages. The restored tree is compared
with the source (type, mode, size, content digest; mtime_ns too for cargohold and restic)
and any difference fails the run.

cargohold: `cargohold` next to this Python (`.venv/bin/cargohold`), CARGOHOLD_PASSWORD set,
KDF left at its default. restic: repository format 2, `--compression auto`, its normal
cache in the work directory. tar: `tar -cf - . | zstd -T0 -3`; its incremental is a full archive
again and it has no no-op.

Prints a table of cargohold/restic ratios against the targets of issue 3 and writes
bench/results/repository-<scale>.json. `--scaling` runs scales 0.25, 0.5 and 1.0 and shows
how time and memory grow. `--profile` adds one more full backup of cargohold under py-spy
(sampling, every thread) and prints where the time goes.

    python bench/bench_repository.py [--scale 1.0] [--runs 1] [--workdir DIR] [--keep]
    python bench/bench_repository.py --scaling
    python bench/bench_repository.py --scale 1.0 --profile
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import hashlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAKE_CORPUS = ROOT.parent / "shared" / "bench" / "make_corpus.py"
RESULTS = ROOT / "bench" / "results"
PASSWORD = "bench-password"
TOOLS = ("cargohold", "restic", "tar+zstd")

#: (metric, target ratio cargohold/restic) — issue 3, "Performance".
TARGETS: dict[str, float] = {
    "full_s": 0.45,
    "incremental_s": 0.5,
    "noop_s": 0.8,
    "restore_s": 0.55,
    "repo_bytes": 1.0,
    "growth_bytes": 0.4,
    "peak_rss_bytes": 1.0,
}
LABELS = {
    "full_s": "full backup (s)",
    "incremental_s": "incremental, gen 1 (s)",
    "noop_s": "no-op backup (s)",
    "restore_s": "full restore (s)",
    "repo_bytes": "repository after full (MB)",
    "growth_bytes": "growth after gen 1 (MB)",
    "peak_rss_bytes": "peak RSS, any operation (MB)",
}
OPS = ("full", "incremental", "noop", "restore")


# --- running and measuring one process ---------------------------------------------------


@dataclass
class Run:
    """One measured process (or pipeline of processes run side by side)."""

    argv: list[str]
    wall_s: float
    cpu_s: float  # user + system of the measured processes
    peak_rss_bytes: int  # max(sum of each process's own peak RSS, peak of the tree's summed PSS)
    others_cpu_s: float  # CPU time the rest of the machine used meanwhile (shared cores)
    load: tuple[float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": self.argv,
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "others_cpu_s": round(self.others_cpu_s, 3),
            "loadavg": list(self.load),
        }


class _TreeMemory(threading.Thread):
    """Samples the summed PSS of some processes and all their descendants; the peak, in bytes."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, sum(_pss(pid) for pid in _descendants(self.pids)))
            self._done.wait(0.02)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _descendants(pids: list[int]) -> list[int]:
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def _pss(pid: int) -> int:
    """Proportional set size of a process in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _busy_cpu_s() -> float:
    """Seconds of CPU the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


#: Free memory touched before every step (see prime_memory).
PRIME_BYTES = 2 * 1024**3


def prime_memory() -> None:
    """Touch PRIME_BYTES of anonymous memory and free it again, untimed, before a step.

    On this project's virtual machines the hypervisor takes back memory the guest frees
    (free page reporting) and reclaims cold page cache; the next writer of the page cache
    then waits for the host to supply every page again. Measured with `dd` writing 1 GiB:
    0.2 s when the pages were recently in use, 15.4 s when not, whatever wrote before.
    Which tool pays depended on the order of the steps (every tool's restore swung between
    3 and 19 s). Touching the memory first gives every step the same, normal start: pages
    the kernel can hand out at once, as on a machine that is not a VM. Done in a child
    process: a peak RSS is inherited by the processes started afterwards (``ru_maxrss``).
    """
    subprocess.run([sys.executable, "-c", _PRIME, str(PRIME_BYTES)], check=True)


_PRIME = """
import mmap, sys
avail = 0
with open("/proc/meminfo", encoding="ascii") as f:
    for line in f:
        if line.startswith("MemAvailable:"):
            avail = int(line.split()[1]) * 1024
size = min(int(sys.argv[1]), avail // 4)
if size > 0:
    with mmap.mmap(-1, size) as m:
        for off in range(0, size, mmap.PAGESIZE):
            m[off] = 1
"""


def run(
    argvs: list[list[str]],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    stdin_file: Path | None = None,
) -> Run:
    """Run ``argvs`` as a pipeline (each one's stdout feeding the next; the last one's
    output is discarded), wait for each process with ``os.wait4`` to get its own peak RSS
    and CPU time, and fail loudly on any non-zero exit."""
    # Write back what earlier steps left dirty (the page cache stays): otherwise one tool's
    # restore pays for the writeback of the previous one's (dirty-page throttling).
    os.sync()
    prime_memory()
    load = os.getloadavg()
    busy0 = _busy_cpu_s()
    procs: list[tuple[subprocess.Popen[bytes], list[str], Any]] = []
    cpu = 0.0
    rss = 0
    failures = []
    with contextlib.ExitStack() as stack:
        inp: Any = stack.enter_context(open(stdin_file, "rb")) if stdin_file is not None else subprocess.DEVNULL
        start = time.perf_counter()
        prev: Any = inp
        for i, argv in enumerate(argvs):
            err = stack.enter_context(tempfile.TemporaryFile())
            last = i == len(argvs) - 1
            p = subprocess.Popen(
                argv,
                stdin=prev,
                stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                stderr=err,
                cwd=cwd,
                env=env,
            )
            if i > 0 and prev is not None:
                prev.close()  # the pipe now belongs to the two children
            prev = p.stdout
            procs.append((p, argv, err))
        sampler = _TreeMemory([p.pid for p, _, _ in procs])
        sampler.start()
        for p, argv, err in procs:
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            rss += usage.ru_maxrss * 1024  # KiB on Linux
            if p.returncode != 0:
                err.seek(0)
                msg = err.read().decode(errors="replace").strip()[-2000:]
                failures.append(f"{' '.join(argv)}: exit {p.returncode}: {msg}")
        wall = time.perf_counter() - start
        rss = max(rss, sampler.stop())
    if failures:
        raise SystemExit("FAILED: " + "\n".join(failures))
    others = max(0.0, _busy_cpu_s() - busy0 - cpu)
    return Run([" ".join(a) for a in argvs], wall, cpu, rss, others, load)


def du_sb(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, check=True, text=True)
    return int(out.stdout.split()[0])


# --- comparing trees ---------------------------------------------------------------------


def manifest(root: Path, *, workers: int = 2) -> dict[str, tuple[Any, ...]]:
    """path -> (kind, mode, size, mtime_ns, digest) of every entry below ``root``."""
    from concurrent.futures import ThreadPoolExecutor

    entries: dict[str, tuple[Any, ...]] = {}
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                entries[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns)
                files.append((rel, p))
            elif stat.S_ISLNK(st.st_mode):
                entries[rel] = ("link", 0, 0, st.st_mtime_ns, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", stat.S_IMODE(st.st_mode), 0, 0)
            else:
                entries[rel] = ("other", stat.S_IFMT(st.st_mode), 0, 0)

    def digest(p: Path) -> str:
        h = hashlib.blake2b(digest_size=16)
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    with ThreadPoolExecutor(workers) as pool:
        for (rel, _), d in zip(files, pool.map(digest, [p for _, p in files]), strict=True):
            entries[rel] = (*entries[rel], d)
    return entries


def compare(source: dict[str, tuple[Any, ...]], restored: dict[str, tuple[Any, ...]], *, mtimes: bool) -> list[str]:
    problems = []
    for rel in sorted(source.keys() | restored.keys()):
        a, b = source.get(rel), restored.get(rel)
        if a is None:
            problems.append(f"{rel}: not in the source")
        elif b is None:
            problems.append(f"{rel}: missing from the restore")
        else:
            if not mtimes:
                a, b = a[:3] + a[4:], b[:3] + b[4:]
            if a != b:
                problems.append(f"{rel}: source {a} != restored {b}")
    return problems


# --- the tools ---------------------------------------------------------------------------


def find_cargohold() -> list[str]:
    exe = Path(sys.executable).parent / "cargohold"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("cargohold")
    if found:
        return [found]
    return [sys.executable, "-m", "cargohold.cli.app"]


@dataclass
class Tool(abc.ABC):
    name: str
    work: Path
    env: dict[str, str]
    runs: dict[str, list[Run]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def repo(self) -> Path:
        return self.work / f"{self.name}-repo"

    def record(self, op: str, r: Run) -> None:
        self.runs.setdefault(op, []).append(r)

    @abc.abstractmethod
    def init(self) -> None:
        """Create an empty repository (removing an old one)."""

    @abc.abstractmethod
    def backup(self, src: Path, op: str) -> Run:
        """Back ``src`` up into the repository."""

    @abc.abstractmethod
    def restore(self, target: Path) -> tuple[Run, Path]:
        """Restore the latest backup into the new directory ``target``."""


class Cargohold(Tool):
    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__("cargohold", work, {**env, "CARGOHOLD_PASSWORD": PASSWORD})
        self.cmd = find_cargohold()

    def init(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        run([[*self.cmd, "init", "--repo", str(self.repo)]], env=self.env)

    def backup(self, src: Path, op: str) -> Run:
        return run([[*self.cmd, "backup", "--repo", str(self.repo), "--path", str(src), "--no-progress"]], env=self.env)

    def restore(self, target: Path) -> tuple[Run, Path]:
        r = run(
            [[*self.cmd, "restore", "latest", "--repo", str(self.repo), "--target", str(target), "--no-progress"]],
            env=self.env,
        )
        return r, target

    def snapshots(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            [*self.cmd, "snapshots", "--json", "--repo", str(self.repo)],
            env=self.env,
            capture_output=True,
            check=True,
        )
        snaps: list[dict[str, Any]] = json.loads(out.stdout)
        return snaps


class Restic(Tool):
    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__(
            "restic",
            work,
            {**env, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "restic-cache")},
        )

    def init(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        shutil.rmtree(self.work / "restic-cache", ignore_errors=True)
        run([["restic", "--repo", str(self.repo), "init", "--repository-version", "2"]], env=self.env)

    def backup(self, src: Path, op: str) -> Run:
        return run(
            [["restic", "--repo", str(self.repo), "backup", "--compression", "auto", "--quiet", str(src)]],
            env=self.env,
        )

    def restore(self, target: Path) -> tuple[Run, Path]:
        r = run([["restic", "--repo", str(self.repo), "restore", "latest", "--target", str(target)]], env=self.env)
        return r, target  # files land at target/<absolute source path>


class TarZstd(Tool):
    """The floor: one compressed archive per backup, nothing shared between them."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__("tar+zstd", work, env)
        self.latest: Path | None = None
        self.count = 0

    @property
    def repo(self) -> Path:
        return self.work / "tar-repo"

    def init(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        self.repo.mkdir()
        self.count = 0

    def backup(self, src: Path, op: str) -> Run:
        self.count += 1
        archive = self.repo / f"{self.count:03d}-{op}.tar.zst"
        r = run([["tar", "-cf", "-", "."], ["zstd", "-q", "-T0", "-3", "-o", str(archive)]], env=self.env, cwd=src)
        self.latest = archive
        return r

    def restore(self, target: Path) -> tuple[Run, Path]:
        assert self.latest is not None
        target.mkdir(parents=True)
        r = run(
            [["zstd", "-q", "-d", "-T0", "-c"], ["tar", "-xf", "-"]], env=self.env, cwd=target, stdin_file=self.latest
        )
        return r, target


# --- one scale ---------------------------------------------------------------------------


def make_corpus(src: Path, scale: float, generation: int) -> float:
    if not MAKE_CORPUS.exists():
        raise SystemExit(f"{MAKE_CORPUS} not found: the shared corpus generator sits in ../shared/bench")
    start = time.perf_counter()
    argv = [sys.executable, str(MAKE_CORPUS), str(src), "--scale", str(scale)]
    if generation:
        argv += ["--generation", str(generation)]
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


def tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


#: The code a repository benchmark exercises (the CLI runs the working tree).
ENGINE = ("src/cargohold/repo", "src/cargohold/backends", "src/cargohold/services/repository.py", "src/cargohold/cli")


def engine_hash() -> str:
    """A hash of the engine's source files as they are now (committed or not)."""
    h = hashlib.sha256()
    for part in ENGINE:
        p = ROOT / part
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError as err:
            return f"unavailable: {err}"
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"

    return {
        "cargohold": first_line([*find_cargohold(), "--version"]),
        # The CLI runs the working tree (editable install): say when it differs from the commit.
        "cargohold_commit": first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "cargohold_uncommitted": " ".join(
            subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()[1::2]
        ),
        "engine_sha256": engine_hash(),
        "restic": first_line(["restic", "version"]),
        "zstd": first_line(["zstd", "--version"]),
        "tar": first_line(["tar", "--version"]),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }


def bench_scale(scale: float, workdir: Path, runs: int, profile: str | None) -> dict[str, Any]:
    work = workdir / f"scale-{scale}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = (work / "src").resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGOHOLD_", "RESTIC_"))}
    env["XDG_CACHE_HOME"] = str(work / "xdg-cache")
    env["XDG_DATA_HOME"] = str(work / "xdg-data")
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    versions_start = versions()

    print(f"== scale {scale}: generating the corpus in {src} ...", flush=True)
    gen0_s = make_corpus(src, scale, 0)
    files0, bytes0 = tree_size(src)
    print(f"   {files0} files, {bytes0 / 1e6:.0f} MB in {gen0_s:.1f} s", flush=True)

    ch, rs, tz = Cargohold(work, env), Restic(work, env), TarZstd(work, env)
    tools: list[Tool] = [ch, rs, tz]

    def show(t: Tool, op: str, r: Run) -> None:
        print(
            f"   {op:<12} {t.name:<10} {r.wall_s:7.2f} s  cpu {r.cpu_s:6.2f} s  rss {r.peak_rss_bytes / 1e6:6.0f} MB"
            f"  (others' cpu {r.others_cpu_s:5.2f} s, load {r.load[0]:.2f})",
            flush=True,
        )

    for _ in range(runs):
        for t in tools:
            t.init()
            r = t.backup(src, "full")
            t.record("full", r)
            show(t, "full", r)
    for t in tools:
        t.sizes["full"] = du_sb(t.repo)

    print("   applying generation 1 ...", flush=True)
    gen1_s = make_corpus(src, scale, 1)
    files1, bytes1 = tree_size(src)
    for t in tools:
        r = t.backup(src, "incremental")
        t.record("incremental", r)
        show(t, "incremental", r)
        t.sizes["incremental"] = du_sb(t.repo)

    for _ in range(runs):
        for t in (ch, rs):  # tar has no no-op: it would be a full archive again
            r = t.backup(src, "noop")
            t.record("noop", r)
            show(t, "noop", r)

    snaps = ch.snapshots()  # one full (fresh repository per run), the incremental, the no-ops
    if len(snaps) != runs + 2 or snaps[-1]["stats"]["files"] != files1:
        raise SystemExit(f"FAILED: cargohold snapshots --json does not show the expected snapshots: {snaps}")

    print("   checksumming the source ...", flush=True)
    want = manifest(src)
    verified: dict[str, int] = {}
    # Restored trees are deleted only after the last restore: ext4 skips inodes freed in the
    # last seconds when it allocates new ones, so a restore right after deleting 20,000 files
    # spends seconds of kernel time in recently_deleted() (seen with perf), whichever tool runs.
    restored: list[Path] = []
    for rep in range(runs):
        for t in tools:
            target = work / f"restore-{t.name}-{rep}"
            shutil.rmtree(target, ignore_errors=True)
            restored.append(target)
            r, _ = t.restore(target)
            t.record("restore", r)
            show(t, "restore", r)
            if rep == 0:
                root = target / src.relative_to("/") if isinstance(t, Restic) else target
                problems = compare(want, manifest(root), mtimes=not isinstance(t, TarZstd))
                if problems:
                    raise SystemExit(
                        f"FAILED: {t.name} restored a tree that differs from the source "
                        f"({len(problems)} differences):\n  " + "\n  ".join(problems[:20])
                    )
                verified[t.name] = len(want)
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
            "workdir_fs": subprocess.run(
                ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "page_cache": "warm: nothing dropped (shared machine); every tool reads the corpus from memory",
        },
        "versions": versions_start,
        "corpus": {
            "generation0": {"files": files0, "bytes": bytes0, "generate_s": round(gen0_s, 2)},
            "generation1": {"files": files1, "bytes": bytes1, "generate_s": round(gen1_s, 2)},
        },
        "verified_entries": verified,
        "tools": {t.name: summarize(t) for t in tools},
    }
    if engine_hash() != versions_start["engine_sha256"]:
        result["warning"] = "the engine source changed during the run: figures mix versions"
        print(f"WARNING: {result['warning']}", file=sys.stderr)
    result["ratios"] = ratios(result["tools"]["cargohold"], result["tools"]["restic"])
    all_runs = [r for t in tools for rs in t.runs.values() for r in rs]
    cores = os.cpu_count() or 1
    result["others_share"] = round(sum(r.others_cpu_s for r in all_runs) / (cores * sum(r.wall_s for r in all_runs)), 3)
    if profile is not None:
        result["profile"] = profile_backup(ch, src, work, profile)
    return result


def summarize(t: Tool) -> dict[str, Any]:
    def med(op: str) -> float | None:
        rs = t.runs.get(op)
        return round(statistics.median(r.wall_s for r in rs), 3) if rs else None

    full, incr = t.sizes.get("full"), t.sizes.get("incremental")
    return {
        "full_s": med("full"),
        "incremental_s": med("incremental"),
        "noop_s": med("noop"),
        "restore_s": med("restore"),
        "repo_bytes": full,
        "growth_bytes": incr - full if full is not None and incr is not None else None,
        "peak_rss_bytes": max(r.peak_rss_bytes for rs in t.runs.values() for r in rs),
        "peak_rss_by_op": {op: max(r.peak_rss_bytes for r in rs) for op, rs in t.runs.items()},
        "cpu_s_by_op": {op: round(statistics.median(r.cpu_s for r in rs), 3) for op, rs in t.runs.items()},
        "runs": {op: [r.to_json() for r in rs] for op, rs in t.runs.items()},
    }


def ratios(ch: dict[str, Any], rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
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
    return out


# --- reporting ---------------------------------------------------------------------------


def _fmt(metric: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1e6:.0f}" if metric.endswith("bytes") else f"{v:.2f}"


def table(result: dict[str, Any]) -> str:
    t = result["tools"]
    lines = [
        *([f"WARNING: {result['warning']}"] if "warning" in result else []),
        f"scale {result['scale']}: {result['corpus']['generation0']['files']} files, "
        f"{result['corpus']['generation0']['bytes'] / 1e6:.0f} MB; "
        f"cargohold at {result['versions']['cargohold_commit']}, {result['runs']} run(s); "
        f"{result['machine']['uptime_end']}",
        "",
        "| metric | cargohold | restic | tar + zstd | cargohold / restic | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for metric, r in result["ratios"].items():
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "—"
        lines.append(
            f"| {LABELS[metric]} | {_fmt(metric, t['cargohold'][metric])} | {_fmt(metric, t['restic'][metric])} "
            f"| {_fmt(metric, t['tar+zstd'][metric])} | {ratio} | <= {r['target']} "
            f"| {'met' if r['met'] else 'MISSED'} |"
        )
    cpu = {n: t[n]["cpu_s_by_op"] for n in ("cargohold", "restic")}
    cpu_ratios = ", ".join(
        f"{op} {cpu['cargohold'][op] / cpu['restic'][op]:.2f}"
        for op in OPS
        if cpu["restic"].get(op) and cpu["cargohold"].get(op) is not None
    )
    best = {n: {op: min(r["wall_s"] for r in rs) for op, rs in t[n]["runs"].items()} for n in ("cargohold", "restic")}
    best_ratios = ", ".join(
        f"{op} {best['cargohold'][op] / best['restic'][op]:.2f}"
        for op in OPS
        if best["restic"].get(op) and best["cargohold"].get(op) is not None
    )
    lines += [
        "",
        f"CPU time cargohold / restic (user + system, independent of the load): {cpu_ratios}",
        f"fastest run of each, cargohold / restic (the run least disturbed by the machine): {best_ratios}",
        f"other processes used {result['others_share']:.0%} of the 2 cores while the tools ran "
        "(wall times are inflated by that much contention)",
    ]
    lines += ["", "peak RSS (MB) and CPU time (s) by operation:", ""]
    lines += ["| operation | " + " | ".join(f"{n} RSS | {n} CPU" for n in TOOLS) + " |"]
    lines += ["|---|" + "---|---|" * len(TOOLS)]
    for op in OPS:
        cells = []
        for n in TOOLS:
            rss, cpu = t[n]["peak_rss_by_op"].get(op), t[n]["cpu_s_by_op"].get(op)
            cells += [f"{rss / 1e6:.0f}" if rss else "—", f"{cpu:.2f}" if cpu is not None else "—"]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling_table(results: list[dict[str, Any]]) -> str:
    """How time (CPU time: the contention of a shared machine distorts wall time) and peak
    memory grow with the data, relative to the smallest scale."""
    base = results[0]
    base_bytes = base["corpus"]["generation0"]["bytes"]
    lines = [
        "| scale | corpus MB | tool | full wall s | full CPU s | incr CPU s | no-op CPU s | restore CPU s "
        "| peak RSS MB | full CPU growth | restore CPU growth | RSS growth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        data = res["corpus"]["generation0"]["bytes"]
        for n in ("cargohold", "restic"):
            m, b = res["tools"][n], base["tools"][n]
            cpu, bcpu = m["cpu_s_by_op"], b["cpu_s_by_op"]
            lines.append(
                f"| {res['scale']} | {data / 1e6:.0f} | {n} | {m['full_s']:.2f} | {cpu['full']:.2f} "
                f"| {cpu['incremental']:.2f} | {cpu['noop']:.2f} | {cpu['restore']:.2f} "
                f"| {m['peak_rss_bytes'] / 1e6:.0f} | x{cpu['full'] / bcpu['full']:.2f} "
                f"| x{cpu['restore'] / bcpu['restore']:.2f} | x{m['peak_rss_bytes'] / b['peak_rss_bytes']:.2f} |"
            )
    lines.append("")
    lines.append(
        "data grows "
        + ", ".join(f"x{r['corpus']['generation0']['bytes'] / base_bytes:.2f} at scale {r['scale']}" for r in results)
        + f" (relative to scale {base['scale']}); linear growth means the same factor for CPU time."
    )
    return "\n".join(lines)


# --- profile -----------------------------------------------------------------------------


#: Leaf frames of a thread that waits (a lock, a queue, a condition): py-spy's idle filter
#: does not catch these waits on every kernel, so they are counted apart.
_WAITS = ("threading.py", "queue.py", "concurrent/futures/thread.py:81", "concurrent/futures/_base.py")


def profile_backup(ch: Cargohold, src: Path, work: Path, py_spy: str) -> dict[str, Any]:
    """One more full backup of cargohold into a fresh repository, sampled by py-spy (every
    thread, without pausing the process); returns and prints the top functions.

    A sample counts where a thread *is*, which includes waiting for the GIL inside the
    Python frame that called into C: the seconds are thread time, not CPU time (the sum
    over threads exceeds the process's CPU time)."""
    repo = work / "profile-repo"
    raw = work / "profile.txt"
    rate = 200
    shutil.rmtree(repo, ignore_errors=True)
    run([[*ch.cmd, "init", "--repo", str(repo)]], env=ch.env)
    r = run(
        [
            [
                py_spy, "record", "--nonblocking", "--rate", str(rate), "--threads", "--format", "raw",
                "--output", str(raw), "--",
                *ch.cmd, "backup", "--repo", str(repo), "--path", str(src), "--no-progress",
            ]
        ],
        env=ch.env,
    )  # fmt: skip
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    waiting = samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        if not frames:
            continue
        samples += n
        if any(w in frames[-1] for w in _WAITS):
            waiting += n
            continue
        threads[frames[0]] += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    sec = 1.0 / rate
    out = {
        "wall_s_under_py_spy": round(r.wall_s, 3),
        "thread_s_sampled": round(samples * sec, 2),
        "thread_s_waiting": round(waiting * sec, 2),
        "self_s": [[k, round(v * sec, 2)] for k, v in own.most_common(20)],
        "cumulative_s": [[k, round(v * sec, 2)] for k, v in total.most_common(30)],
    }
    print(
        f"\nprofile of a full backup (py-spy {rate} Hz, every thread): wall {r.wall_s:.2f} s; "
        f"{samples * sec:.1f} thread-seconds sampled, {waiting * sec:.1f} of them waiting on a "
        "lock/queue (left out below; seconds below include waits for the GIL)"
    )
    print("self (s):")
    for k, v in own.most_common(15):
        print(f"  {v * sec:6.2f}  {k}")
    print("cumulative (s):")
    for k, v in total.most_common(25):
        print(f"  {v * sec:6.2f}  {k}")
    return out


# --- main --------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="corpus scale (1.0 is about 1.1 GB)")
    ap.add_argument("--scaling", action="store_true", help="run scales 0.25, 0.5 and 1.0 and compare")
    ap.add_argument("--runs", type=int, default=1, help="repeat full, no-op and restore; report medians")
    ap.add_argument("--workdir", type=Path, help="where corpus and repositories go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--profile", action="store_true", help="profile one more cargohold full backup with py-spy")
    ap.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable (default: from PATH)")
    ap.add_argument("--tables", action="store_true", help="only print the tables of the results already written")
    a = ap.parse_args()
    if a.tables:
        for path in sorted(RESULTS.glob("repository-[0-9]*.json")):
            print(table(json.loads(path.read_text())) + "\n")
        scaling = RESULTS / "repository-scaling.json"
        if scaling.exists():
            print(scaling_table(json.loads(scaling.read_text())["results"]))
        return 0
    if shutil.which("restic") is None or shutil.which("zstd") is None:
        raise SystemExit("restic and zstd are needed (Debian packages restic, zstd)")
    if a.profile and not a.py_spy:
        raise SystemExit("--profile needs py-spy (pip install py-spy, or --py-spy PATH)")

    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="cargohold-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(workdir)], capture_output=True, text=True, check=False)
    if fs.stdout.strip() == "tmpfs":
        print(f"warning: {workdir} is a tmpfs (memory), not a disk: use --workdir", file=sys.stderr)
    RESULTS.mkdir(parents=True, exist_ok=True)
    scales = [0.25, 0.5, 1.0] if a.scaling else [a.scale]
    results = []
    try:
        for scale in scales:
            res = bench_scale(scale, workdir, a.runs, a.py_spy if a.profile else None)
            results.append(res)
            out = RESULTS / f"repository-{scale}.json"
            out.write_text(json.dumps(res, indent=2) + "\n")
            print("\n" + table(res) + f"\n\nwritten to {out.relative_to(ROOT)}\n", flush=True)
            if not a.keep:
                shutil.rmtree(workdir / f"scale-{scale}", ignore_errors=True)
        if a.scaling:
            print(scaling_table(results))
            (RESULTS / "repository-scaling.json").write_text(json.dumps({"results": results}, indent=2) + "\n")
    finally:
        if a.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
