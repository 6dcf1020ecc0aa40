"""Concurrent writers with prune, a full disk, a changing file, bad restore targets (bench/faults.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from faults_common import (
    EXIT_CODES,
    CampaignResult,
    Ctx,
    Digest,
    Run,
    SetupError,
    backup_id,
    diff_digest,
    digest_tree,
    make_tree,
    restore_check,
    snapshot_files,
    snapshot_ids,
    staging_bytes,
    write_random,
)

# --- concurrent writers with prune -----------------------------------------------------------


def run_concurrent(ctx: Ctx, trials: int, res: CampaignResult, writers: int = 3) -> None:
    """``trials`` rounds: ``writers`` backups of different sources at once while forget+prune loop."""
    for name in (
        "backups failed",
        "forget/prune failed",
        "committed snapshots lost",
        "check not clean",
        "staging bytes after prune",
        "tracebacks",
    ):
        res.add(name, 0, 0)
    res.add("prunes run", 0)
    repo = ctx.dir("conc-repo") / "repo"
    ctx.must("init", repo=repo)
    shared = ctx.rng("concurrent", "shared").randbytes(1_500_000)
    sources = []
    for i in range(writers):
        s = ctx.dir(f"conc-src{i}") / "src"
        make_tree(s, ctx.rng("concurrent", "src", i), files=6, max_size=100_000, big=3_000_000)
        (s / "shared.bin").write_bytes(shared)  # dedup across sources
        sources.append(s)
    committed: dict[str, Digest] = {}
    forgotten: set[str] = set()
    lock = threading.Lock()
    for trial in range(trials):
        res.trials += 1
        problems: list[str] = []
        done = threading.Event()

        def backup(i: int, trial: int = trial, problems: list[str] = problems) -> None:
            src = sources[i]
            rng = ctx.rng("concurrent", trial, i)
            write_random(src / "big.db", rng, 3_000_000)
            write_random(src / f"t{trial}.bin", rng, rng.randint(1, 400_000))
            r = ctx.cli("backup", "--path", str(src), "--json", repo=repo)
            sid = backup_id(r)
            with lock:
                if r.rc != 0 or sid is None:
                    res.add("backups failed")
                    problems.append(f"backup {i}: {r.brief()}")
                else:
                    committed[sid] = digest_tree(src)
                res.add("tracebacks", int(r.traceback))

        def pruner(problems: list[str] = problems, done: threading.Event = done) -> None:
            while not done.is_set():
                f = ctx.cli("forget", "--keep-last", "2", "--json", repo=repo)
                p = ctx.cli("prune", repo=repo)
                with lock:
                    res.add("prunes run")
                    for r in (f, p):
                        res.add("tracebacks", int(r.traceback))
                        if r.rc != 0:
                            res.add("forget/prune failed")
                            problems.append(f"{r.args[0]}: {r.brief()}")
                    if f.rc == 0:
                        with contextlib.suppress(ValueError, AttributeError):
                            forgotten.update(json.loads(f.out).get("removed", []))

        threads = [threading.Thread(target=backup, args=(i,)) for i in range(writers)]
        pt = threading.Thread(target=pruner)
        pt.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        pt.join()
        chk = ctx.cli("check", "--read-data", repo=repo)
        if chk.rc != 0:
            res.add("check not clean")
            problems.append(f"check: {chk.brief()}")
        listed = snapshot_ids(ctx, repo) or set()
        for sid in sorted(set(committed) - forgotten):
            why = None if sid in listed else f"{sid[:8]} no longer listed (and forget did not remove it)"
            why = why or restore_check(ctx, repo, sid, committed[sid], ctx.root)
            if why:
                res.add("committed snapshots lost")
                problems.append(why)
                forgotten.add(sid)
        if problems:
            res.fail(trial, "; ".join(problems[:4]))
        else:
            res.ok += 1
    ctx.cli("prune", repo=repo)
    res.add("staging bytes after prune", staging_bytes(repo)[1])


# --- full disk ------------------------------------------------------------------------------------


def _one_line_error(r: Run) -> bool:
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    return len(lines) == 1 and not r.traceback


def _sh(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)


class LoopFs:
    """A small ext4 file system on a loop device; unmounted and detached in ``close``."""

    def __init__(self, ctx: Ctx, name: str, size_mb: int = 64) -> None:
        self.dir = ctx.dir(name)
        self.img = self.dir / "img"
        self.mnt = self.dir / "mnt"
        self.mnt.mkdir()
        self.dev: str | None = None
        self.mounted = False
        with open(self.img, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        r = _sh("mkfs.ext4", "-q", "-F", "-m", "0", str(self.img))
        if r.returncode != 0:
            raise SetupError(f"mkfs.ext4: {r.stderr.strip()}")
        r = _sh("losetup", "--find", "--show", str(self.img))
        if r.returncode != 0:
            raise SetupError(f"losetup: {r.stderr.strip() or 'failed'}")
        self.dev = r.stdout.strip()
        r = _sh("mount", self.dev, str(self.mnt))
        if r.returncode != 0:
            self.close()
            raise SetupError(f"mount: {r.stderr.strip() or 'failed'}")
        self.mounted = True

    def free(self) -> int:
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> Path:
        """A filler file that leaves about ``leave`` bytes free."""
        filler = self.mnt / "filler"
        size = max(0, self.free() - leave)
        with open(filler, "wb") as f:
            block = b"\0" * (1 << 20)
            while size > 0:
                n = min(size, len(block))
                f.write(block[:n])
                size -= n
            f.flush()
            os.fsync(f.fileno())
        return filler

    def close(self) -> None:
        if self.mounted:
            if _sh("umount", str(self.mnt)).returncode != 0:
                time.sleep(1)
                if _sh("umount", str(self.mnt)).returncode != 0:
                    _sh("umount", "-l", str(self.mnt))
            self.mounted = False
        if self.dev:
            _sh("losetup", "-d", self.dev)
            self.dev = None


def loop_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root: loop mounts need root"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control (a container without loop devices?)"
    for tool in ("mkfs.ext4", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt-get install e2fsprogs mount)"
    return None


def run_full_disk(ctx: Ctx, trials: int, res: CampaignResult) -> None:
    """Trial 0: the repository's file system fills up; trial 1: the restore target's does."""
    why = loop_unavailable()
    if why:
        res.skipped = why
        return
    for name in (
        "unclear error",
        "partial snapshot written",
        "check not clean",
        "backup after freeing space failed",
        "tracebacks",
    ):
        res.add(name, 0, 0)
    res.add("full target reported as damaged data (exit 9)", 0)
    fss: list[LoopFs] = []
    try:
        try:
            repo_fs = LoopFs(ctx, "fs-repo")
            fss.append(repo_fs)
            target_fs = LoopFs(ctx, "fs-target")
            fss.append(target_fs)
        except SetupError as e:
            res.skipped = f"loop mount impossible: {e}"
            return
        src = ctx.dir("fs-src") / "src"
        make_tree(src, ctx.rng("fulldisk", "src"), files=6, max_size=100_000, big=32 * 1024 * 1024)
        repo = repo_fs.mnt / "repo"
        ctx.must("init", repo=repo)
        # trial 0: the repository's disk is full
        res.trials += 1
        problems: list[str] = []
        filler = repo_fs.fill(leave=16 * 1024 * 1024)
        before = snapshot_files(repo)
        r = ctx.cli("backup", "--path", str(src), repo=repo)
        res.add("tracebacks", int(r.traceback))
        if r.rc == 0 or r.rc not in EXIT_CODES or not _one_line_error(r):
            res.add("unclear error")
            problems.append(f"backup on a full disk: {r.brief()} ({len(r.err.splitlines())} stderr lines)")
        if snapshot_files(repo) != before:
            res.add("partial snapshot written")
            problems.append("a snapshot appeared")
        chk = ctx.cli("check", "--read-data", repo=repo)
        if chk.rc != 0:
            res.add("check not clean")
            problems.append(f"check: {chk.brief()}")
        filler.unlink()
        nb = ctx.cli("backup", "--path", str(src), "--json", repo=repo)
        sid = backup_id(nb)
        why2 = None if nb.rc == 0 and sid else nb.brief()
        why2 = why2 or restore_check(ctx, repo, str(sid), digest_tree(src), ctx.root)
        if why2:
            res.add("backup after freeing space failed")
            problems.append(f"after freeing space: {why2}")
        res.note = f"backup on a full fs: exit {r.rc}"
        if problems:
            res.fail(0, "; ".join(problems))
        else:
            res.ok += 1
        if sid is None or trials < 2:
            return
        # trial 1: the restore target's disk is full
        res.trials += 1
        target_fs.fill(leave=8 * 1024 * 1024)
        rr = ctx.cli("restore", str(sid), "--target", str(target_fs.mnt / "out"), repo=repo)
        res.add("tracebacks", int(rr.traceback))
        res.note += f"; restore onto a full fs: exit {rr.rc}"
        no_space = "no space" in rr.text.lower()
        if rr.rc == 9:
            res.add("full target reported as damaged data (exit 9)")
        if rr.rc == 0 or rr.rc not in EXIT_CODES or rr.traceback or not no_space:
            res.add("unclear error")
            res.fail(
                1,
                f"restore onto a full disk: rc={rr.rc}, {len(rr.err.splitlines())} stderr lines: "
                + " | ".join(rr.err.splitlines())[:400],
            )
        else:
            res.ok += 1
    finally:
        for fs in reversed(fss):
            fs.close()


# --- a file changing while it is read ----------------------------------------------------------

WRITER = r"""
import os, sys, time
path, mode, i = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "append":
    with open(path, "ab") as f:
        while True:
            f.write(b"".join(b"%012d\n" % (i + k) for k in range(256)))
            f.flush()
            i += 256
            time.sleep(0.002)
size, block = os.path.getsize(path), 65536
if mode == "replace":  # the atomic-save pattern: a new file renamed over the old one
    while True:
        i += 1
        with open(path + ".new", "wb") as f:
            f.write(bytes([i % 251]) * size)
        os.replace(path + ".new", path)
        time.sleep(0.005)
with open(path, "r+b") as f:  # rewrite in place, block by block
    while True:
        i += 1
        for off in range(0, size, block):
            f.seek(off)
            f.write(bytes([i % 251]) * block)
            f.flush()
            if off % (16 * block) == 0:
                time.sleep(0.001)
"""

MODES = ("append", "rewrite", "replace")


def _append_stream(n: int) -> bytes:
    return b"".join(b"%012d\n" % i for i in range(n // 13 + 2))


def _consistent(mode: str, data: bytes, start_lines: int) -> bool:
    if mode == "append":
        return data == _append_stream(len(data))[: len(data)] and len(data) >= start_lines * 13
    return len(set(data)) <= 1


def run_changing(ctx: Ctx, trials: int, res: CampaignResult) -> None:
    """A writer appends to, rewrites in place, or replaces (rename) a file while a backup reads it."""
    for name in (
        "backups failed",
        "changed file not warned",
        "inconsistent version in snapshot",
        "torn and not warned",
        "tracebacks",
    ):
        res.add(name, 0, 0)
    res.add("warnings seen", 0)
    res.add("torn, warned (in-place rewrite)", 0)
    repo = ctx.dir("chg-repo") / "repo"
    ctx.must("init", repo=repo)
    for trial in range(trials):
        mode = MODES[trial % len(MODES)]
        res.trials += 1
        rng = ctx.rng("changing", trial)
        src = ctx.dir(f"chg-src{trial}") / "src"
        make_tree(src, rng, files=4, max_size=50_000)
        live = src / {"append": "live.log", "rewrite": "live.db", "replace": "live.json"}[mode]
        start_lines = 1_000_000
        if mode == "append":
            live.write_bytes(_append_stream(start_lines * 13)[: start_lines * 13])
        else:
            live.write_bytes(b"\0" * (24 * 1024 * 1024 if mode == "rewrite" else 4 * 1024 * 1024))
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live), mode, str(start_lines)])
        try:
            time.sleep(0.3)
            r = ctx.cli("backup", "--path", str(src), repo=repo)
        finally:
            writer.kill()
            writer.wait()
        res.add("tracebacks", int(r.traceback))
        problems: list[str] = []
        m = re.search(r"snapshot ([0-9a-f]{8,64}) saved", r.text)
        if r.rc not in (0, 1) or m is None:
            res.add("backups failed")
            res.fail(trial, f"{mode}: backup {r.brief()}")
            continue
        warned = live.name in r.text
        res.add("warnings seen", int(warned))
        if not warned and mode != "replace":  # a replaced file is not changed under the reader
            res.add("changed file not warned")
            problems.append(f"no warning naming {live.name} (exit {r.rc})")
        target = ctx.dir(f"chg-out{trial}") / "out"
        rr = ctx.cli("restore", m.group(1), "--target", str(target), repo=repo)
        got = (target / live.name).read_bytes() if (target / live.name).is_file() else None
        if rr.rc != 0 or got is None or not _consistent(mode, got, start_lines):
            what = "missing" if got is None else f"{len(got)} bytes, {len(set(got))} distinct byte values"
            if mode == "rewrite" and warned and got is not None:
                res.add("torn, warned (in-place rewrite)")  # no consistent version exists to read
            elif mode == "rewrite":
                res.add("torn and not warned")
                problems.append(f"{live.name} in the snapshot is torn ({what}) and no warning")
            else:
                res.add("inconsistent version in snapshot")
                problems.append(f"{live.name} in the snapshot is not one consistent version ({what}; rc={rr.rc})")
        shutil.rmtree(target.parent, ignore_errors=True)
        shutil.rmtree(src.parent, ignore_errors=True)
        if problems:
            problems.append(f"backup said: {' | '.join(ln for ln in r.text.splitlines() if ln.strip())[:300]}")
            res.fail(trial, f"{mode}: " + "; ".join(problems))
        else:
            res.ok += 1


# --- bad restore targets --------------------------------------------------------------------------

VARIANTS = ("SRC", "SRC/sub", "parent of SRC")


def run_bad_targets(ctx: Ctx, trials: int, res: CampaignResult) -> None:
    for name in ("silent overwrites of the source", "source changed by a failed restore", "tracebacks"):
        res.add(name, 0, 0)
    res.add("refused", 0)
    res.ok_label = "source kept"
    repo = ctx.dir("bt-repo") / "repo"
    ctx.must("init", repo=repo)
    for trial in range(trials):
        variant = VARIANTS[trial % len(VARIANTS)]
        res.trials += 1
        rng = ctx.rng("badtargets", trial)
        parent = ctx.dir(f"bt{trial}") / "p"
        src = parent / "src"
        make_tree(src, rng, files=5, max_size=20_000)
        (src / "sub").mkdir()
        (src / "sub" / "s.txt").write_text("sub\n")
        (src / "src").mkdir()  # so that a restore into the parent lands in SRC itself
        (src / "src" / "inner.txt").write_text("inner\n")
        r = ctx.cli("backup", "--path", str(src), "--json", repo=repo)
        if r.rc != 0 or backup_id(r) is None:
            raise SetupError(f"bad-targets backup failed: {r.brief()}")
        # the source moves on after its backup: a restore over it would undo that
        with open(src / "f0.bin", "ab") as f:
            f.write(b"changed after the backup\n")
        (src / "src" / "inner.txt").write_text("inner, changed after the backup\n")
        (src / "sub" / "s.txt").write_text("sub, changed\n")
        before = digest_tree(src)
        target = {"SRC": src, "SRC/sub": src / "sub", "parent of SRC": parent}[variant]
        rr = ctx.cli("restore", "latest", "--target", str(target), repo=repo)
        after = digest_tree(src)
        res.add("tracebacks", int(rr.traceback))
        changed = after != before
        if rr.rc != 0:
            res.add("refused")
        if changed and rr.rc == 0:
            res.add("silent overwrites of the source")
            res.fail(trial, f"--target {variant}: exit 0 and the source changed ({diff_digest(before, after)})")
        elif changed:
            res.add("source changed by a failed restore")
            res.fail(trial, f"--target {variant}: {rr.brief()} but the source changed ({diff_digest(before, after)})")
        else:
            res.ok += 1
        shutil.rmtree(parent.parent, ignore_errors=True)
