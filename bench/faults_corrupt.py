"""Byte flips and truncations per repository file kind (bench/faults.py).

One small repository (two snapshots, a stale lock left by a dead process) is built once; each
trial damages one file of one kind in a fresh copy of it, then runs ``check --read-data`` and a
``restore`` of every snapshot and classifies the outcome by evidence.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from faults_common import (
    EXIT_WRONG_PASSWORD,
    CampaignResult,
    Ctx,
    Digest,
    Run,
    SetupError,
    backup_id,
    diff_digest,
    digest_tree,
    hostname,
    make_tree,
    mutate_tree,
)

KINDS = ("config", "keys", "index", "snapshots", "packs", "locks")
#: words that name a kind in a message (besides the damaged object's own name)
KIND_WORDS = {
    "config": r"config",
    "keys": r"\bkey",
    "index": r"\bindex",
    "snapshots": r"snapshot",
    "packs": r"\bpack|\bblob|data/",
    "locks": r"\block",
}
OUTCOMES = (
    "detected and named",
    "ignored as stale (locks)",
    "detected, not named",
    "undetected",
    "wrong password for damage",
    "silent wrong restore",
)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _stale_lock(repo: Path, kind: str) -> None:
    """A lock as a crashed holder on this host leaves it (FORMAT-keys-locks.md)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    doc = {
        "version": 1,
        "kind": kind,
        "operation": "backup" if kind == "shared" else "prune",
        "host": hostname(),
        "pid": _dead_pid(),
        "pidns": os.readlink("/proc/self/ns/pid"),
        "user": "root",
        "token": secrets.token_hex(8),
        "created": now,
        "refreshed": now,
    }
    name = "exclusive" if kind == "exclusive" else secrets.token_hex(8)
    (repo / "locks").mkdir(exist_ok=True)
    (repo / "locks" / name).write_text(json.dumps(doc))


def build_base(ctx: Ctx) -> tuple[Path, dict[str, Digest]]:
    """A small repository with two snapshots; returns it and each snapshot's expected content."""
    repo = ctx.dir("corrupt-base") / "repo"
    src = ctx.dir("corrupt-src") / "src"
    rng = ctx.rng("corrupt", "base")
    make_tree(src, rng, files=10, max_size=120_000, big=2_000_000)
    ctx.must("init", repo=repo)
    expected: dict[str, Digest] = {}
    for round_ in range(2):
        r = ctx.cli("backup", "--path", str(src), "--json", repo=repo)
        sid = backup_id(r)
        if r.rc != 0 or sid is None:
            raise SetupError(f"corruption base backup failed: {r.brief()}")
        expected[sid] = digest_tree(src)
        mutate_tree(src, rng, round_)
    return repo, expected


def files_of(repo: Path, kind: str) -> list[Path]:
    if kind == "config":
        return [repo / "config"]
    sub = {"keys": "keys", "index": "index", "snapshots": "snapshots", "packs": "data", "locks": "locks"}[kind]
    found = [p for p in (repo / sub).rglob("*") if p.is_file() and "~" not in p.name]
    return sorted(found, key=lambda p: (p.stat().st_size, p.name))


def damage(path: Path, rng_seed: str, truncate: bool) -> str:
    """Flip one bit or truncate ``path``; returns what was done."""
    import random

    rng = random.Random(rng_seed)
    data = bytearray(path.read_bytes())
    if truncate or not data:
        new = rng.randrange(len(data)) if data else 0
        path.write_bytes(bytes(data[:new]))
        return f"truncated to {new} of {len(data)} bytes"
    pos, bit = rng.randrange(len(data)), rng.randrange(8)
    data[pos] ^= 1 << bit
    path.write_bytes(bytes(data))
    return f"flipped bit {bit} of byte {pos} of {len(data)}"


def _names(run: Run, kind: str, obj: str) -> bool:
    """Whether ``run`` names the damaged object or its kind (outside "warning:" lines, except for locks,
    whose expiry is a warning: "single key slot never exported" names keys on every check)."""
    lines = run.text.lower().splitlines()
    text = "\n".join(ln for ln in lines if kind == "locks" or not ln.startswith("warning:"))
    return obj[:8].lower() in text or re.search(KIND_WORDS[kind], text) is not None


def classify(runs: list[Run], restores: list[tuple[Run, Digest | None, Digest]], kind: str, obj: str) -> str:
    """The outcome of one trial, from the commands' exit codes, messages and restored content."""
    for run, got, expected in restores:
        if run.rc == 0 and got != expected:
            return "silent wrong restore"
    every = runs + [r for r, _, _ in restores]
    if any(r.rc == EXIT_WRONG_PASSWORD or "wrong password" in r.text.lower() for r in every):
        return "wrong password for damage"
    failed = [r for r in every if r.rc != 0]
    if kind == "locks":
        # a damaged lock counts as stale (FORMAT-keys-locks.md): ignoring it is right; one that still
        # reads as a live holder's may block, but then the message must name the lock
        if any(_names(r, kind, obj) for r in every):
            return "detected and named"
        return "detected, not named" if failed else "ignored as stale (locks)"
    if failed:
        return "detected and named" if any(_names(r, kind, obj) for r in failed) else "detected, not named"
    return "undetected"


def run_corrupt(ctx: Ctx, trials: int, res: CampaignResult, only_trial: int | None = None) -> None:
    res.ok_label = "detected+named (locks: or ignored as stale)"
    for o in OUTCOMES:
        res.add(
            o,
            0,
            0
            if o in ("silent wrong restore", "wrong password for damage", "undetected", "detected, not named")
            else None,
        )
    res.add("tracebacks", 0, 0)
    per_kind: dict[str, dict[str, int]] = {k: dict.fromkeys(OUTCOMES, 0) for k in KINDS}
    base, expected = build_base(ctx)
    ctx.lock_wait = "1"  # a damaged lock that reads as a live holder's: fail fast, naming it
    for trial in range(trials):
        if only_trial is not None and trial != only_trial:
            continue
        kind = KINDS[trial % len(KINDS)]
        rng = ctx.rng("corrupt", trial)
        truncate = (trial // len(KINDS)) % 3 == 2
        work = ctx.dir(f"corrupt-{trial}")
        repo = work / "repo"
        shutil.copytree(base, repo, symlinks=True)
        if kind == "locks":
            _stale_lock(repo, "exclusive" if rng.random() < 0.5 else "shared")
        candidates = files_of(repo, kind)
        if not candidates:
            raise SetupError(f"no {kind} file in the base repository")
        victim = candidates[rng.randrange(len(candidates))]
        what = damage(victim, f"{ctx.seed}:corrupt:{trial}:damage", truncate)
        rel = str(victim.relative_to(repo))
        res.trials += 1
        runs = [ctx.cli("check", "--read-data", repo=repo)]
        if kind == "locks":  # the exclusive lock's taker meets it too
            runs.append(ctx.cli("prune", repo=repo))
        restores: list[tuple[Run, Digest | None, Digest]] = []
        for sid, exp in sorted(expected.items()):
            target = work / f"restore-{sid[:8]}"
            r = ctx.cli("restore", sid, "--target", str(target), repo=repo)
            restores.append((r, digest_tree(target) if target.exists() else None, exp))
        outcome = classify(runs, restores, kind, victim.name)
        per_kind[kind][outcome] += 1
        res.add(outcome)
        tb = sum(r.traceback for r in runs + [r for r, _, _ in restores])
        res.add("tracebacks", tb)
        if outcome in ("detected and named", "ignored as stale (locks)") and not tb:
            res.ok += 1
        else:
            detail = "; ".join(r.brief() for r in runs + [r for r, _, _ in restores])
            if outcome == "silent wrong restore":
                bad = [diff_digest(e, g or {}) for r, g, e in restores if r.rc == 0 and g != e]
                detail = f"{bad[0]}; {detail}"
            res.fail(trial, f"{kind} {rel} {what}: {outcome}{' + traceback' if tb else ''}: {detail}")
        shutil.rmtree(work, ignore_errors=True)
    res.note = "per kind (named/trials): " + ", ".join(
        f"{k} {v['detected and named'] + v['ignored as stale (locks)']}/{sum(v.values())}"
        for k, v in per_kind.items()
        if sum(v.values())
    )
