"""kill -9 at random points of backup, prune, restore and copy (bench/faults.py)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from faults_common import (
    CampaignResult,
    Ctx,
    Digest,
    SetupError,
    backup_id,
    digest_tree,
    kill9,
    make_tree,
    mutate_tree,
    processes_mentioning,
    reap_orphans,
    restore_check,
    snapshot_ids,
    staging_bytes,
    survivors,
)

KEEP = 3  # snapshots forget keeps after each trial: bounds the repository and gives prune work
BIG = 16 * 1024 * 1024
DOCKER_HOST = "unix:///var/run/docker.sock"


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def engine_reachable() -> bool:
    if shutil.which("docker") is None or not Path("/var/run/docker.sock").exists():
        return False
    try:
        return docker("version", "--format", "{{.Server.Version}}", timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Subject:
    """What a kill campaign kills, and the source whose snapshots it commits."""

    def __init__(self, ctx: Ctx, op: str, repo: Path) -> None:
        self.ctx = ctx
        self.op = op
        self.repo = repo
        self.src = ctx.dir("src")
        self.volume: str | None = None
        self.target_volume: str | None = None
        self.note = ""

    # the command under test (with --repo on its command line so orphans can be found by it)
    def command(self, trial: int) -> list[str]:
        r = ["--repo", str(self.repo)]
        if self.op == "backup":
            return ["backup", "--path", str(self.src), *r]
        if self.op == "prune":
            return ["prune", *r]
        if self.op == "restore":
            return ["restore", "latest", "--target", str(self.ctx.root / f"restore-target-{trial}"), *r]
        if self.volume is not None:
            assert self.target_volume is not None
            return ["copy", self.volume, "--to-engine", DOCKER_HOST, "--as", self.target_volume, "--force", *r]
        return ["backup", "--path", str(self.src), *r]  # copy without an engine: backup of a restored tree

    def next_backup(self) -> list[str]:
        if self.volume is not None:
            return ["backup", self.volume, "--json"]
        return ["backup", "--path", str(self.src), "--json"]

    def content(self) -> Digest:
        return digest_tree(self.src)


def _setup(ctx: Ctx, op: str, res: CampaignResult) -> Subject:
    repo = ctx.dir("repo") / "r"
    subj = Subject(ctx, op, repo)
    rng = ctx.rng(op, "setup")
    ctx.must("init", repo=repo)
    if op == "copy" and engine_reachable():
        tag = f"chfault-{ctx.seed}-{int(time.time() * 1000) % 10**8}"
        subj.volume, subj.target_volume = f"{tag}-src", f"{tag}-dst"
        if docker("volume", "create", subj.volume).returncode != 0:
            raise SetupError("docker volume create failed")
        mp = docker("volume", "inspect", "-f", "{{.Mountpoint}}", subj.volume).stdout.strip()
        shutil.rmtree(subj.src)
        subj.src = Path(mp)
        make_tree(subj.src, rng, files=12, max_size=200_000, big=BIG)
        subj.note = "cargohold copy VOL --to-engine (same engine) --as VOL2"
    else:
        make_tree(subj.src, rng, files=12, max_size=200_000, big=BIG)
        if op == "copy":
            # no engine: the copy is a backup of a tree restored from the repository
            ctx.must("backup", "--path", str(subj.src), repo=repo)
            restored = ctx.dir("restored") / "tree"
            ctx.must("restore", "latest", "--target", str(restored), repo=repo)
            shutil.rmtree(subj.src)
            subj.src = restored
            subj.note = "no Docker engine: backup --path of a restored tree stands in for copy"
    res.note = subj.note
    return subj


def _prepare(subj: Subject, trial: int, committed: dict[str, Digest], res: CampaignResult) -> None:
    """Changes before the command under test (prune: garbage to delete)."""
    ctx, rng = subj.ctx, subj.ctx.rng(subj.op, trial, "prepare")
    mutate_tree(subj.src, rng, trial)
    if subj.op in ("prune", "restore"):
        r = ctx.cli(*subj.next_backup(), repo=subj.repo)
        sid = backup_id(r)
        if r.rc != 0 or sid is None:
            raise SetupError(f"trial {trial}: preparing backup failed: {r.brief()}")
        committed[sid] = subj.content()
    if subj.op == "prune":
        _forget(subj, committed, keep=1)


def _forget(subj: Subject, committed: dict[str, Digest], keep: int) -> None:
    import json

    r = subj.ctx.cli("forget", "--keep-last", str(keep), "--json", repo=subj.repo)
    if r.rc != 0:
        raise SetupError(f"forget failed: {r.brief()}")
    for sid in json.loads(r.out).get("removed", []):
        committed.pop(sid, None)


def _duration(subj: Subject, committed: dict[str, Digest]) -> float:
    """How long the undisturbed command takes (once, on a copy of the state where possible)."""
    ctx = subj.ctx
    if subj.op == "prune":
        _prepare(subj, -1, committed, CampaignResult("probe"))
    elif subj.op != "restore":
        mutate_tree(subj.src, ctx.rng(subj.op, "probe"), 99)
    started = time.monotonic()
    r = ctx.cli(*subj.command(-1), repo=None)
    took = time.monotonic() - started
    if r.rc != 0:
        raise SetupError(f"undisturbed {subj.op} failed: {r.brief()}")
    # the probe may have committed a snapshot (backup, copy)
    ids = snapshot_ids(ctx, subj.repo) or set()
    for s in ids - set(committed):
        committed[s] = subj.content()
    shutil.rmtree(ctx.root / "restore-target--1", ignore_errors=True)
    return took


def run_kill(ctx: Ctx, op: str, trials: int, res: CampaignResult) -> None:
    res.ok_label = "survived"
    for name, target in (
        ("killed", None),
        ("finished before the kill", None),
        ("committed snapshots lost", 0),
        ("check not clean", 0),
        ("prune failed", 0),
        ("next backup failed", 0),
        ("trials with staging leftovers", 0),
        ("staging bytes after prune", 0),
        ("orphan processes", 0),
    ):
        res.add(name, 0, target)
    subj = _setup(ctx, op, res)
    try:
        _kill_trials(ctx, subj, trials, res)
    finally:
        if subj.volume is not None:
            for v in (subj.volume, subj.target_volume):
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    docker("volume", "rm", "-f", str(v))


def _kill_trials(ctx: Ctx, subj: Subject, trials: int, res: CampaignResult) -> None:
    committed: dict[str, Digest] = {}
    r = ctx.cli(*subj.next_backup(), repo=subj.repo)
    sid = backup_id(r)
    if r.rc != 0 or sid is None:
        raise SetupError(f"first backup failed: {r.brief()}")
    committed[sid] = subj.content()
    duration = _duration(subj, committed)
    for trial in range(trials):
        rng = ctx.rng(subj.op, trial)
        res.trials += 1
        problems: list[str] = []
        _prepare(subj, trial, committed, res)
        before = snapshot_ids(ctx, subj.repo)
        if before is None:
            raise SetupError(f"trial {trial}: snapshots failed before the kill")
        delay = rng.uniform(0.02, 0.95) * duration
        proc = ctx.popen(*subj.command(trial), repo=None)
        started = time.monotonic()
        deadline = started + delay
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        kids: list[tuple[int, int]] = []
        if proc.poll() is None:
            kids = kill9(proc)
            res.add("killed")
        else:
            res.add("finished before the kill")
            duration = max(duration, (time.monotonic() - started) * 1.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)
        orphans = sorted(set(survivors(kids)) | set(processes_mentioning(str(subj.repo))))
        if orphans:
            res.add("orphan processes", len(orphans))
            problems.append(f"{len(orphans)} orphan process(es) {orphans}")
            reap_orphans(orphans)
        # a snapshot the killed command committed at its very end is committed
        after_kill = snapshot_ids(ctx, subj.repo) or set()
        if subj.op in ("backup", "copy"):
            for s in after_kill - before:
                committed[s] = subj.content()
        chk = ctx.cli("check", "--read-data", repo=subj.repo)
        if chk.rc != 0:
            res.add("check not clean")
            problems.append(f"check: {chk.brief()}")
        pr = ctx.cli("prune", repo=subj.repo)
        if pr.rc != 0:
            res.add("prune failed")
            problems.append(f"prune: {pr.brief()}")
        n, size = staging_bytes(subj.repo)
        if n:
            res.add("trials with staging leftovers")
            res.add("staging bytes after prune", size)
            problems.append(f"{n} staging file(s), {size} bytes after prune")
        nb = ctx.cli(*subj.next_backup(), repo=subj.repo)
        sid = backup_id(nb)
        if nb.rc != 0 or sid is None:
            res.add("next backup failed")
            problems.append(f"next backup: {nb.brief()}")
        else:
            committed[sid] = subj.content()
        # every snapshot listed before the kill is still there; the newest and one other restore bit-exact
        now = snapshot_ids(ctx, subj.repo) or set()
        lost = sorted(s for s in before if s not in now)
        tracked = sorted(s for s in before if s in committed and s in now)
        sample = tracked[-1:] + ([rng.choice(tracked[:-1])] if len(tracked) > 1 else [])
        for s in sample:
            why = restore_check(ctx, subj.repo, s, committed[s], ctx.root)
            if why is not None:
                lost.append(s)
                problems.append(why)
        if lost:
            res.add("committed snapshots lost", len(lost))
            problems.append(f"lost {[s[:8] for s in lost]}")
            for s in lost:
                committed.pop(s, None)
        shutil.rmtree(ctx.root / f"restore-target-{trial}", ignore_errors=True)
        _forget(subj, committed, keep=KEEP)
        if problems:
            res.fail(trial, "; ".join(problems))
        else:
            res.ok += 1
    # the final sweep: every snapshot still committed restores bit-exact
    for s, expected in sorted(committed.items()):
        why = restore_check(ctx, subj.repo, s, expected, ctx.root)
        if why is not None:
            res.add("committed snapshots lost")
            res.fail(trials, f"final sweep: {why}")


def campaign(op: str) -> Callable[[Ctx, int, CampaignResult], None]:
    def run(ctx: Ctx, trials: int, res: CampaignResult) -> None:
        run_kill(ctx, op, trials, res)

    return run
