"""Faults during a backup never damage the repository.

* the fault-injection backend fails, tears (truncates) or "crashes" at every operation
  index of a small backup: afterwards the repository checks clean, the snapshot
  committed before is intact and the next backup succeeds;
* a real backup subprocess is SIGKILLed at random moments: same guarantees;
* four backup processes and a prune run at once: nothing is lost, check is clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cargohold.backends import Backend, MemoryBackend
from cargohold.backends.faults import ALL_OPS, FaultBackend, FaultCrash, FaultPlan
from cargohold.errors import CargoholdError
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.retention import Policy
from cargohold.services import repository as svc


def digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def copy_backend(src: Backend) -> MemoryBackend:
    dst = MemoryBackend()
    for info in src.list(""):
        dst.store(info.name, src.load(info.name))
    return dst


def assert_healthy(backend: Backend, tmp: Path, committed: dict[str, dict[str, str]], src: Path) -> None:
    """Check clean; every committed snapshot restores exactly; a new backup works."""
    repo = Repository.open(backend, "pw", load_index=False)
    rep = svc.check(repo, read_data=True)
    assert rep.ok, rep.damage
    ids = set(repo.list_snapshot_ids())
    for sid, expected in committed.items():
        assert sid in ids
        out = tmp / f"restore-{sid[:8]}-{random.random()}"
        _, res = svc.restore(repo, sid, out)
        assert not res.damaged
        assert digest_tree(out) == expected
    after = svc.backup(Repository.open(backend, "pw", load_index=False), src)
    assert after.snapshot is not None
    assert svc.check(Repository.open(backend, "pw", load_index=False), read_data=True).ok


@pytest.fixture()
def small_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_text("first\n")
    (src / "d" / "b.bin").write_bytes(os.urandom(300_000))
    return src


def base_repo(src: Path) -> tuple[MemoryBackend, dict[str, dict[str, str]]]:
    backend = MemoryBackend()
    repo = Repository.init(backend, "pw", kdf=KdfParams.FAST)
    snap = svc.backup(repo, src).snapshot
    assert snap is not None
    return backend, {snap.id: digest_tree(src)}


def change(src: Path) -> None:
    (src / "a.txt").write_text("second\n")
    (src / "c.bin").write_bytes(os.urandom(200_000))


def count_ops(base: MemoryBackend, src: Path, ops: frozenset[str]) -> int:
    fb = FaultBackend(copy_backend(base), FaultPlan(ops=ops))
    svc.backup(Repository.open(fb, "pw", load_index=False), src)
    return fb.count


@pytest.mark.parametrize(
    ("kind", "ops"),
    [("fail", ALL_OPS), ("truncate", frozenset({"store", "create"})), ("crash", ALL_OPS)],
)
def test_a_fault_at_every_operation_index_leaves_a_valid_repository(
    tmp_path: Path, small_source: Path, kind: str, ops: frozenset[str]
) -> None:
    base, committed = base_repo(small_source)
    change(small_source)
    n = count_ops(base, small_source, ops)
    assert n >= (15 if ops == ALL_OPS else 5)
    for i in range(n + 1):
        backend = copy_backend(base)
        plan = FaultPlan(ops=ops, **{f"{kind}_at": i})  # type: ignore[arg-type]
        fb = FaultBackend(backend, plan)
        new: dict[str, dict[str, str]] = {}
        try:
            res = svc.backup(Repository.open(fb, "pw", load_index=False), small_source)
        except (CargoholdError, FaultCrash):
            pass
        else:
            if res.snapshot is not None:
                new[res.snapshot.id] = digest_tree(small_source)
        # a snapshot that made it to the backend counts as committed even if the call failed later
        assert_healthy(backend, tmp_path / f"{kind}{i}", {**committed, **new}, small_source)


def prune_base(tmp: Path) -> tuple[MemoryBackend, dict[str, dict[str, str]], Path]:
    """A repository with garbage for prune: three backups of a changing tree, two forgotten."""
    src = tmp / "psrc"
    src.mkdir()
    backend = MemoryBackend()
    Repository.init(backend, "pw", kdf=KdfParams.FAST)
    rng = random.Random(3)
    snaps = []
    for i in range(3):
        # f0, f1 are written once and keep the first pack partly used; f2, f3 change every time
        for j in (0, 1) if i == 0 else ():
            (src / f"f{j}.bin").write_bytes(rng.randbytes(300_000))
        for j in (2, 3):
            (src / f"f{j}.bin").write_bytes(rng.randbytes(300_000))
        snap = svc.backup(Repository.open(backend, "pw", load_index=False), src).snapshot
        assert snap is not None
        snaps.append(snap.id)
    svc.forget(Repository.open(backend, "pw", load_index=False), Policy(last=1))
    return backend, {snaps[-1]: digest_tree(src)}, src


@pytest.mark.parametrize("kind", ["fail", "crash"])
def test_a_fault_at_every_operation_of_a_prune_leaves_a_valid_repository(tmp_path: Path, kind: str) -> None:
    base, committed, _ = prune_base(tmp_path)
    probe = FaultBackend(copy_backend(base), FaultPlan())
    report = svc.prune(Repository.open(probe, "pw", load_index=False))
    assert report.packs_deleted > 0 and report.packs_repacked > 0
    n = probe.count
    for i in range(n + 1):
        backend = copy_backend(base)
        fb = FaultBackend(backend, FaultPlan(**{f"{kind}_at": i}))  # type: ignore[arg-type]
        with contextlib.suppress(CargoholdError, FaultCrash):
            svc.prune(Repository.open(fb, "pw", load_index=False))
        healthy = Repository.open(backend, "pw", load_index=False)
        assert svc.check(healthy, read_data=True).ok, i
        for sid, expected in committed.items():
            out = tmp_path / f"prune-{kind}-{i}"
            _, res = svc.restore(Repository.open(backend, "pw", load_index=False), sid, out)
            assert not res.damaged and digest_tree(out) == expected
        svc.prune(Repository.open(backend, "pw", load_index=False))  # a later prune finishes the job
        assert svc.check(Repository.open(backend, "pw", load_index=False), read_data=True).ok
        stored = sum(o.size for o in backend.list("data/"))
        assert stored <= sum(o.size for o in probe.inner.list("data/")) * 1.05


def _backup_cmd(repo: Path, src: Path) -> list[str]:
    return [sys.executable, "-m", "cargohold.cli.app", "backup", "--repo", str(repo), "--path", str(src)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env.update({"CARGOHOLD_KDF": "fast", "CARGOHOLD_PASSWORD": "pw", "CARGOHOLD_LOCK_WAIT": "60"})
    return env


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, env=_env(), capture_output=True, timeout=300)


def _mutate(src: Path, rng: random.Random, round_: int) -> None:
    for i in range(3):
        (src / f"f{round_}_{i}.bin").write_bytes(rng.randbytes(rng.choice([1, 5000, 2_000_000])))
    victims = sorted(src.glob("f*.bin"))
    if len(victims) > 6:
        victims[0].unlink()


def test_sigkill_at_random_points(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CARGOHOLD_FAULT_SEED", "1")))
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.db").write_bytes(rng.randbytes(24 * 1024 * 1024))
    _run([sys.executable, "-m", "cargohold.cli.app", "init", "--repo", str(repo)])
    started = time.monotonic()
    _run(_backup_cmd(repo, src))  # how long an undisturbed backup of this tree takes
    duration = time.monotonic() - started
    committed = {
        sid: digest_tree(src) for sid in Repository.open(_local(repo), "pw", load_index=False).list_snapshot_ids()
    }
    killed = 0
    for round_ in range(8):
        _mutate(src, rng, round_)
        with open(src / "big.db", "r+b") as f:  # rewrite most pages: as much work as the first backup
            for page in range(3072):
                if rng.random() < 0.8:
                    f.seek(page * 8192)
                    f.write(rng.randbytes(8192))
        before = set(Repository.open(_local(repo), "pw", load_index=False).list_snapshot_ids())
        proc = subprocess.Popen(
            _backup_cmd(repo, src), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.2, 0.95) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        after = set(Repository.open(_local(repo), "pw", load_index=False).list_snapshot_ids())
        for sid in after - before:
            committed[sid] = digest_tree(src)
    assert killed >= 3, f"only {killed} of 8 backups were killed before they finished"
    assert_healthy(_local(repo), tmp_path, committed, src)


def _local(path: Path) -> Backend:
    from cargohold.backends import open_backend

    return open_backend(str(path))


def test_four_concurrent_backups_and_a_prune(tmp_path: Path) -> None:
    rng = random.Random(4)
    repo = tmp_path / "repo"
    _run([sys.executable, "-m", "cargohold.cli.app", "init", "--repo", str(repo)])
    sources = []
    for i in range(4):
        s = tmp_path / f"src{i}"
        s.mkdir()
        (s / "shared.bin").write_bytes(random.Random(99).randbytes(3_000_000))  # dedup across sources
        (s / "own.bin").write_bytes(rng.randbytes(4_000_000))
        sources.append(s)
    # history for prune to work on: snapshots to forget
    for s in sources[:2]:
        _run(_backup_cmd(repo, s))
        (s / "own.bin").write_bytes(rng.randbytes(4_000_000))
        _run(_backup_cmd(repo, s))
    _run([sys.executable, "-m", "cargohold.cli.app", "forget", "--repo", str(repo), "--keep-last", "1"])
    procs = [
        subprocess.Popen(_backup_cmd(repo, s), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for s in sources
    ]
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "cargohold.cli.app", "prune", "--repo", str(repo)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    _run([sys.executable, "-m", "cargohold.cli.app", "prune", "--repo", str(repo)])
    backend = _local(repo)
    r = Repository.open(backend, "pw", load_index=False)
    latest = {}
    for snap in svc.snapshots(r):
        latest[snap.source.name] = snap.id
    assert len(latest) == 4
    committed = {latest[str(s)]: digest_tree(s) for s in sources}
    assert_healthy(backend, tmp_path, committed, sources[0])
