"""The repository commands on remote repositories, through the CLI as a user runs them, once on the
test bed's RADOS Gateway (S3) and once on its OpenSSH server (SFTP) (``remote_repo``, tests/conftest.py):
``check --read-data`` and ``--read-data-subset``, ``forget`` + ``prune`` (space reclaimed on the
server, the kept snapshot bit-exact), ``stats`` against what the server holds, every ``key``
command, ``unlock``, locks of another host sharing the bucket or folder (a prune that defers its
deletions while that host's fresh lock exists, proceeds once it is stale; a backup that refuses and
waits while its exclusive lock exists), and two concurrent backups from two processes while prune
loops: no snapshot lost, ``check --read-data`` clean."""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cargohold.cli import exit_codes

if TYPE_CHECKING:
    from conftest import RemoteRepo  # tests/conftest.py (the remote_repo fixture)

OTHER_HOST = "ci-other-host.example"


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Type and mode, size, modification time, content digest or link target, by relative path."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                what = "-> " + os.readlink(path)
            elif path.is_file():
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = ""
            size = st.st_size if path.is_file() and not path.is_symlink() else 0
            out[str(path.relative_to(root))] = (st.st_mode, size, st.st_mtime_ns, what)
    return out


def make_tree(root: Path, seed: int, big: int = 1_500_000) -> None:
    rng = random.Random(seed)
    (root / "d" / "e").mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (root / "d" / f"f{i:02}").write_bytes(rng.randbytes(rng.choice([0, 10, 3000, 40_000])))
    (root / "d" / "e" / "text").write_bytes(b"remote repositories keep working\n" * 5000)
    (root / "big.bin").write_bytes(rng.randbytes(big))
    link = root / "link"
    if not link.is_symlink():
        link.symlink_to("d/e/text")
    (root / "d" / "f03").chmod(0o640)


def js(proc: Any) -> Any:
    return json.loads(proc.stdout)


def snapshot_id(remote: RemoteRepo, *args: str) -> str:
    out = js(remote.cli("backup", *args, "--json"))
    return str(out["snapshot"]["id"])


def restore_equals(
    remote: RemoteRepo,
    snapshot: str,
    expected: dict[str, tuple[object, ...]],
    out: Path,
    env: dict[str, str] | None = None,
) -> None:
    remote.cli("restore", snapshot, "--target", str(out), env=env)
    assert describe(out) == expected


def one_line_error(proc: Any, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cargohold: error:") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def data_objects(remote: RemoteRepo) -> dict[str, int]:
    return remote.objects("data/")


def lock_doc(kind: str, operation: str, *, age: float = 0.0, pid: int = 4242) -> bytes:
    """A lock as a cargohold process on another host writes it (docs/FORMAT-keys-locks.md)."""
    now = time.time()
    created = datetime.fromtimestamp(now - age - 5, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    refreshed = datetime.fromtimestamp(now - age, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    doc = {
        "version": 1,
        "kind": kind,
        "operation": operation,
        "host": OTHER_HOST,
        "pid": pid,
        "pid_start": 1234567,
        "pidns": "pid:[4026531836]",
        "user": "backup",
        "token": secrets.token_hex(8),
        "created": created,
        "refreshed": refreshed,
    }
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


def plant_lock(remote: RemoteRepo, name: str, data: bytes, *, replace: bool = False) -> None:
    backend = remote.backend()
    try:
        (backend.store if replace else backend.create)(name, data)
    finally:
        backend.close()


# --- check, forget + prune, stats ------------------------------------------------------------------


def test_check_forget_prune_stats(remote_repo: RemoteRepo, tmp_path: Path) -> None:
    r = remote_repo
    src = tmp_path / "src"
    make_tree(src, 1)
    r.cli("init")
    old = snapshot_id(r, "--path", str(src))
    old_state = describe(src)
    (src / "big.bin").write_bytes(random.Random(2).randbytes(2_000_000))  # the old one becomes garbage
    (src / "d" / "f05").unlink()
    new = snapshot_id(r, "--path", str(src))
    new_state = describe(src)
    assert old_state != new_state

    full = js(r.cli("check", "--read-data", "--json"))
    assert full["ok"] is True and full["damage"] == [] and full["snapshots"] == 2
    assert full["packs"] >= 2 and full["packs_read"] == full["packs"]
    subset = js(r.cli("check", "--read-data-subset", "50", "--json"))
    assert subset["ok"] is True and 1 <= subset["packs_read"] <= full["packs"]
    assert "no errors" in r.cli("check", "--read-data-subset", "50").stdout

    stats = js(r.cli("stats", "--json"))
    before = data_objects(r)
    assert stats["snapshots"] == 2 and stats["packs"] == len(before) and stats["stored_bytes"] == sum(before.values())
    assert stats["logical_bytes"] > stats["unique_bytes"] > 3_000_000  # two versions of big.bin, the rest deduplicated
    assert "dedup ratio" in r.cli("stats").stdout

    forgot = js(r.cli("forget", "--keep-last", "1", "--json"))
    assert forgot["removed"] == [old]
    [group] = forgot["groups"]
    assert [k["id"] for k in group["keep"]] == [new]
    pruned = js(r.cli("prune", "--json"))
    after = data_objects(r)
    assert pruned["packs_deleted"] >= 1 and pruned["bytes_freed"] >= 1_400_000, pruned
    assert pruned["markers_pending"] == 0
    gone = set(before) - set(after)
    assert len(gone) == pruned["packs_deleted"] and sum(before[n] for n in gone) == pruned["bytes_freed"]
    assert sum(after.values()) <= sum(before.values()) - 1_400_000  # the old big.bin's space, reclaimed
    assert r.objects("obsolete/") == {}

    again = js(r.cli("prune", "--json"))
    assert again["packs_deleted"] == 0 and again["packs_unused"] == 0 and again["packs_repacked"] == 0
    clean = js(r.cli("check", "--read-data", "--json"))
    assert clean["ok"] is True and clean["snapshots"] == 1 and clean["packs_read"] == len(after)
    restore_equals(r, new, new_state, tmp_path / "out")
    stats = js(r.cli("stats", "--json"))
    assert stats["snapshots"] == 1 and stats["stored_bytes"] == sum(after.values())
    missing = r.cli("restore", old, "--target", str(tmp_path / "old"), code=None)
    one_line_error(missing, exit_codes.NOT_FOUND)


# --- keys -------------------------------------------------------------------------------------------


def test_key_commands(remote_repo: RemoteRepo, tmp_path: Path) -> None:
    r = remote_repo
    src = tmp_path / "src"
    make_tree(src, 3, big=300_000)
    r.cli("init")
    snap = snapshot_id(r, "--path", str(src))
    state = describe(src)

    def pwfile(name: str, pw: str) -> str:
        path = tmp_path / name
        path.write_text(pw + "\n")
        return str(path)

    def as_password(pw: str) -> dict[str, str]:
        return r.env(CARGOHOLD_PASSWORD=pw)

    [first] = js(r.cli("key", "list", "--json"))["keys"]
    assert first["current"] is True and first["checksum"] is True
    assert r.cli(
        "key", "add", "--label", "second", "--new-password-file", pwfile("pw2", "second-pw")
    ).stdout.startswith("added key ")
    keys = js(r.cli("key", "list", "--json", env=as_password("second-pw")))["keys"]
    assert len(keys) == 2
    [second] = [k for k in keys if k["current"]]
    assert second["label"] == "second" and second["id"] != first["id"]
    assert len(r.objects("keys/")) == 2

    # the second password changes: the old one no longer opens the repository, the new one does
    r.cli("key", "passwd", "--new-password-file", pwfile("pw3", "third-pw"), env=as_password("second-pw"))
    one_line_error(r.cli("snapshots", code=None, env=as_password("second-pw")), exit_codes.WRONG_PASSWORD)
    keys = js(r.cli("key", "list", "--json", env=as_password("third-pw")))["keys"]
    assert len(keys) == 2 and first["id"] in {k["id"] for k in keys} and second["id"] not in {k["id"] for k in keys}

    # the slot in use is refused; the first slot is removed through the third password
    refused = r.cli(
        "key", "remove", next(k["id"] for k in keys if k["current"]), code=None, env=as_password("third-pw")
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    r.cli("key", "remove", first["id"], env=as_password("third-pw"))
    one_line_error(r.cli("snapshots", code=None), exit_codes.WRONG_PASSWORD)  # the first password
    assert len(js(r.cli("key", "list", "--json", env=as_password("third-pw")))["keys"]) == 1

    # exports: text to a file, paper to stdout
    export = tmp_path / "key.txt"
    r.cli("key", "export", "-o", str(export), env=as_password("third-pw"))
    assert "-----BEGIN CARGOHOLD KEY-----" in export.read_text()
    paper = r.cli("key", "export", "--paper", env=as_password("third-pw")).stdout
    assert len([line for line in paper.splitlines() if " - " in line]) >= 10
    assert len(r.objects("keys/exports/")) == 2

    # every key slot lost on the server: nothing opens, until the export is imported
    backend = r.backend()
    try:
        for name in r.objects("keys/"):
            if not name.startswith("keys/exports/"):
                backend.delete(name)
    finally:
        backend.close()
    lost = r.cli("snapshots", code=None, env=as_password("third-pw"))
    assert lost.returncode != 0 and "Traceback" not in lost.stderr and len(lost.stderr.strip().splitlines()) == 1
    imported = r.cli("key", "import", str(export), "--label", "from-export", env=as_password("third-pw"))
    assert "imported key" in imported.stdout
    r.cli("key", "import", "-", "--label", "from-paper", env=as_password("third-pw"), input=paper)
    labels = sorted(k["label"] for k in js(r.cli("key", "list", "--json", env=as_password("third-pw")))["keys"])
    assert labels == ["from-export", "from-paper"]
    restore_equals(r, snap, state, tmp_path / "out", env=as_password("third-pw"))
    assert js(r.cli("check", "--read-data", "--json", env=as_password("third-pw")))["ok"] is True


# --- locks ------------------------------------------------------------------------------------------


def test_unlock_removes_stale_and_damaged_locks_only(remote_repo: RemoteRepo, tmp_path: Path) -> None:
    r = remote_repo
    r.cli("init")
    plant_lock(r, "locks/" + secrets.token_hex(8), lock_doc("shared", "backup", age=3600))
    plant_lock(r, "locks/" + secrets.token_hex(8), b"{not json")
    fresh = "locks/" + secrets.token_hex(8)
    plant_lock(r, fresh, lock_doc("shared", "backup"))
    assert len(r.objects("locks/")) == 3
    assert r.cli("unlock").stdout.strip() == "removed 2 lock(s)"
    assert list(r.objects("locks/")) == [fresh]
    assert r.cli("unlock", "--remove-all").stdout.strip() == "removed 1 lock(s)"
    assert r.objects("locks/") == {}


def test_locks_of_another_host(remote_repo: RemoteRepo, tmp_path: Path) -> None:
    r = remote_repo
    src = tmp_path / "src"
    make_tree(src, 4)
    r.cli("init")
    snapshot_id(r, "--path", str(src))
    (src / "big.bin").write_bytes(random.Random(5).randbytes(1_500_000))
    kept = snapshot_id(r, "--path", str(src))
    state = describe(src)
    r.cli("forget", "--keep-last", "1")

    # another host's backup is running (its shared lock is fresh): prune does its first phase
    # but deletes nothing that backup could still be deduplicating against
    other = "locks/" + secrets.token_hex(8)
    plant_lock(r, other, lock_doc("shared", "backup"))
    before = data_objects(r)
    waiting = js(r.cli("prune", "--json"))
    assert waiting["packs_deleted"] == 0 and waiting["markers_pending"] == 1, waiting
    assert any("wait for running operations" in m for m in waiting["messages"]), waiting
    assert set(before) <= set(data_objects(r)) and len(r.objects("obsolete/")) == 1
    assert other in r.objects("locks/")
    restore_equals(r, kept, state, tmp_path / "out1")

    # that host died 2 hours ago: its lock is stale, the next prune removes it and the packs
    plant_lock(r, other, lock_doc("shared", "backup", age=7200), replace=True)
    done = r.cli("prune", "--json")
    assert f"removed stale shared lock of backup@{OTHER_HOST} pid 4242 (backup)" in done.stderr, done.stderr
    report = js(done)
    assert report["packs_deleted"] >= 1 and report["bytes_freed"] >= 1_400_000 and report["markers_pending"] == 0
    assert r.objects("locks/") == {} and r.objects("obsolete/") == {}
    assert sum(data_objects(r).values()) <= sum(before.values()) - 1_400_000
    restore_equals(r, kept, state, tmp_path / "out2")
    assert js(r.cli("check", "--read-data", "--json"))["ok"] is True

    # another host holds the exclusive lock (a key change): a backup refuses at once, naming it ...
    plant_lock(r, "locks/exclusive", lock_doc("exclusive", "key add", pid=777))
    refused = one_line_error(r.cli("backup", "--path", str(src), code=None), exit_codes.LOCKED)
    assert f"backup@{OTHER_HOST} pid 777" in refused and "key add" in refused
    # ... or, with CARGOHOLD_LOCK_WAIT, waits until it is released, then runs
    release = threading.Timer(3.0, lambda: r.backend().delete("locks/exclusive"))
    t0 = time.monotonic()
    release.start()
    try:
        waited = js(r.cli("backup", "--path", str(src), "--json", env=r.env(CARGOHOLD_LOCK_WAIT="60")))
    finally:
        release.cancel()
        release.join()
    assert time.monotonic() - t0 >= 3.0 and waited["snapshot"] is not None
    assert len(js(r.cli("snapshots", "--json"))) == 2


def test_concurrent_backups_while_prune_loops(remote_repo: RemoteRepo, tmp_path: Path) -> None:
    """Two processes back up two sources into the same repository, three times each, while prune
    runs in a loop; part of what they back up is the very data of a forgotten snapshot, which the
    prunes are deleting. Every snapshot they committed must stay whole."""
    r = remote_repo
    r.cli("init")
    junk = tmp_path / "junk"
    junk.mkdir()
    shared_a, shared_b = random.Random(6).randbytes(900_000), random.Random(7).randbytes(900_000)
    (junk / "a").write_bytes(shared_a)
    (junk / "b").write_bytes(shared_b)
    snapshot_id(r, "--path", str(junk))
    for f in ("a", "b"):
        (junk / f).unlink()
    (junk / "c").write_text("small")
    snapshot_id(r, "--path", str(junk))
    r.cli("forget", "--keep-last", "1", "--source", str(junk))  # a and b are garbage now

    sources = {"A": tmp_path / "A", "B": tmp_path / "B"}
    for i, path in enumerate(sources.values()):
        make_tree(path, 10 + i, big=600_000)
    committed: dict[str, list[tuple[str, dict[str, tuple[object, ...]]]]] = {"A": [], "B": []}
    errors: list[str] = []
    backups_done = threading.Event()
    lock_env = r.env(CARGOHOLD_LOCK_WAIT="120")

    def backups(label: str) -> None:
        path = sources[label]
        try:
            for run in range(3):
                if run == 1:  # the forgotten data comes back: deduplicated against packs prune deletes
                    (path / "again").write_bytes(shared_a if label == "A" else shared_b)
                if run == 2:
                    (path / "d" / "f01").write_bytes(os.urandom(50_000))
                state = describe(path)
                proc = r.cli("backup", "--path", str(path), "--json", code=None, env=lock_env)
                if proc.returncode != 0:
                    errors.append(f"backup {label}#{run}: {proc.returncode} {proc.stderr.strip()}")
                    return
                committed[label].append((js(proc)["snapshot"]["id"], state))
        except Exception as err:  # reported by the test below
            errors.append(f"backup {label}: {err!r}")

    prunes: list[dict[str, Any]] = []

    def prune_loop() -> None:
        while not backups_done.is_set() or len(prunes) < 2:
            proc = r.cli("prune", "--json", code=None, env=lock_env)
            if proc.returncode != 0:
                errors.append(f"prune: {proc.returncode} {proc.stderr.strip()}")
                return
            prunes.append(js(proc))

    pruner = threading.Thread(target=prune_loop)
    workers = [threading.Thread(target=backups, args=(label,)) for label in sources]
    pruner.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=400)
    backups_done.set()
    pruner.join(timeout=400)
    assert not errors, errors
    assert len(committed["A"]) == len(committed["B"]) == 3 and len(prunes) >= 2
    assert sum(p["packs_deleted"] for p in prunes) >= 1, prunes  # the forgotten data went meanwhile

    print(
        f"{r.kind}: {len(prunes)} prunes beside the backups; packs deleted "
        f"{[p['packs_deleted'] for p in prunes]}, re-indexed {[p['packs_reindexed'] for p in prunes]}, "
        f"markers pending {[p['markers_pending'] for p in prunes]}"
    )
    # settle: the markers of the loop's prunes complete once no backup lock is left
    final = js(r.cli("prune", "--json"))
    assert final["markers_pending"] == 0, final
    listed = {s["id"]: s["source"]["name"] for s in js(r.cli("snapshots", "--json"))}
    for label, snaps in committed.items():
        for sid, _state in snaps:
            assert listed.get(sid) == str(sources[label]), (label, sid, listed)
    assert len(listed) == 7  # the six, and junk's kept one
    check = js(r.cli("check", "--read-data", "--json"))
    assert check["ok"] is True and check["damage"] == [] and check["packs_read"] == check["packs"], check
    for label, snaps in committed.items():
        for n, (sid, state) in enumerate(snaps):
            restore_equals(r, sid, state, tmp_path / f"out-{label}{n}")


def test_prune_beside_a_backup_of_another_host(remote_repo: RemoteRepo, tmp_path: Path) -> None:
    """A backup runs on another host (its own UTS namespace and host name) and deduplicates against
    a forgotten snapshot's data; it is frozen mid-upload while a prune on this host runs. The prune
    must not delete the pack the backup's snapshot will need: it defers the deletion (its marker
    names the other host's lock), and once that backup committed, the next prune finds the pack
    used again and indexes it instead of deleting it."""
    r = remote_repo
    r.cli("init")
    junk = tmp_path / "junk"
    junk.mkdir()
    reused = random.Random(8).randbytes(900_000)
    (junk / "a").write_bytes(reused)
    snapshot_id(r, "--path", str(junk))
    (junk / "a").unlink()
    (junk / "c").write_text("small")
    snapshot_id(r, "--path", str(junk))
    r.cli("forget", "--keep-last", "1", "--source", str(junk))
    packs_before = set(data_objects(r))

    src = tmp_path / "src"
    src.mkdir()
    (src / "again").write_bytes(reused)  # read first (the walk is sorted): deduplicated against a garbage pack
    # large enough that the backup is still running when its first pack shows up (a busy CI
    # machine once saw the first pack only as a 40 MB backup was ending, its lock gone)
    (src / "big.bin").write_bytes(os.urandom(120_000_000))
    state = describe(src)
    host = "ch-other-" + secrets.token_hex(3)
    backup = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$0" "$@"', sys.executable, "-m",
         "cargohold.cli.app", "backup", "--path", str(src), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=r.env(),
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (set(data_objects(r)) - packs_before and r.objects("locks/")):  # a first pack is up: freeze
            assert backup.poll() is None, ("the backup ended before a pack appeared", backup.communicate())
            assert time.monotonic() < deadline, "no pack of the backup appeared"
            time.sleep(0.05)
        os.killpg(backup.pid, signal.SIGSTOP)
        [holder] = list(r.objects("locks/"))
        store = r.backend()
        try:
            assert json.loads(store.load(holder))["host"] == host
        finally:
            store.close()
        during = js(r.cli("prune", "--json"))
        assert during["packs_deleted"] == 0 and during["markers_pending"] == 1, during
        assert packs_before <= set(data_objects(r))
    finally:
        os.killpg(backup.pid, signal.SIGCONT)
    out, err = backup.communicate(timeout=300)
    assert backup.returncode == 0, (out, err)
    snap = json.loads(out)["snapshot"]["id"]

    after = js(r.cli("prune", "--json"))
    print(f"{r.kind}: prune during the backup {during}, after it {after}")
    assert after["markers_pending"] == 0 and after["packs_reindexed"] >= 1, after
    assert js(r.cli("check", "--read-data", "--json"))["ok"] is True
    restore_equals(r, snap, state, tmp_path / "out")
    again = js(r.cli("prune", "--json"))
    assert again["packs_deleted"] == 0 and again["packs_unused"] == 0, again


def _wait_for_lock(remote: RemoteRepo, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 60
    while not (locks := list(remote.objects("locks/"))):
        assert proc.poll() is None, ("the backup ended before its lock appeared", proc.communicate())
        assert time.monotonic() < deadline, "no lock appeared"
        time.sleep(0.05)
    [name] = locks
    return name


def test_killed_backups_of_this_host_and_of_another(remote_repo: RemoteRepo, tmp_path: Path) -> None:
    """kill -9 leaves a backup's lock in the bucket or folder. Of a process of this host it is stale
    at once (the pid is gone): the next command removes it and says so. Of another host nobody can
    tell the process is gone: the lock stays fresh for 30 minutes — commands that need the exclusive
    lock refuse, naming that host, `unlock` keeps it, `unlock --remove-all` removes it."""
    r = remote_repo
    r.cli("init")
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(30_000_000))

    mine = r.popen("backup", "--path", str(src))
    lock = _wait_for_lock(r, mine)
    mine.kill()
    mine.communicate()
    assert list(r.objects("locks/")) == [lock]
    after = r.cli("backup", "--path", str(src))
    assert "removed stale shared lock of" in after.stderr and "is gone" in after.stderr, after.stderr
    assert r.objects("locks/") == {}

    (src / "big.bin").write_bytes(os.urandom(30_000_000))  # something to do for a while
    host = "ch-dead-" + secrets.token_hex(3)
    theirs = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$0" "$@"', sys.executable, "-m",
         "cargohold.cli.app", "backup", "--path", str(src)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=r.env(),
    )  # fmt: skip
    lock = _wait_for_lock(r, theirs)
    theirs.kill()
    theirs.communicate()
    refused = one_line_error(r.cli("key", "add", code=None, env=r.env(CARGOHOLD_NEW_PASSWORD="x")), exit_codes.LOCKED)
    assert "shared lock of " in refused and f"@{host} pid " in refused and "(backup " in refused, refused
    assert r.cli("unlock").stdout.strip() == "removed 0 lock(s)"
    assert list(r.objects("locks/")) == [lock]
    r.cli("backup", "--path", str(src))  # shared locks go along with it
    assert r.cli("unlock", "--remove-all").stdout.strip() == "removed 1 lock(s)"
    r.cli("key", "add", env=r.env(CARGOHOLD_NEW_PASSWORD="x"))
    assert len(js(r.cli("key", "list", "--json"))["keys"]) == 2
    assert js(r.cli("check", "--json"))["ok"] is True


def _as_host(remote: RemoteRepo, host: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A cargohold command run as if on another machine: its own UTS namespace and host name."""
    return subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$0" "$@"', sys.executable, "-m",
         "cargohold.cli.app", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip


def test_hosts_contending_for_the_locks(remote_repo: RemoteRepo, tmp_path: Path) -> None:
    """Three hosts want the exclusive lock at once (key add) while two others back up and a sixth
    prunes; everyone waits its turn (CARGOHOLD_LOCK_WAIT) and succeeds. On S3 twice: with the
    conditional PUT and with the claims of servers that ignore it (``create=fallback``)."""
    r = remote_repo
    r.cli("init")
    urls = [r.url] + ([r.url + "&create=fallback"] if r.kind == "s3" else [])
    sources = []
    for i in range(2):
        src = tmp_path / f"src{i}"
        make_tree(src, 20 + i, big=2_000_000)
        sources.append(src)
    for round_, url in enumerate(urls):
        procs: list[tuple[str, subprocess.Popen[str]]] = []
        for i in range(3):
            env = r.env(CARGOHOLD_REPO=url, CARGOHOLD_LOCK_WAIT="120", CARGOHOLD_NEW_PASSWORD=f"pw-{round_}-{i}")
            procs.append(
                (f"key add {i}", _as_host(r, f"ch-h{round_}{i}", "key", "add", "--label", f"h{round_}{i}", env=env))
            )
        for i, src in enumerate(sources):
            (src / "round").write_text(str(round_))
            env = r.env(CARGOHOLD_REPO=url, CARGOHOLD_LOCK_WAIT="120")
            procs.append((f"backup {i}", _as_host(r, f"ch-b{round_}{i}", "backup", "--path", str(src), env=env)))
        env = r.env(CARGOHOLD_REPO=url, CARGOHOLD_LOCK_WAIT="120")
        procs.append(("prune", _as_host(r, f"ch-p{round_}", "prune", env=env)))
        for what, proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, (url, what, out, err)
        assert r.objects("locks/") == {}
    keys = js(r.cli("key", "list", "--json"))["keys"]
    assert sorted(k["host"] for k in keys if k["label"].startswith("h")) == sorted(
        f"ch-h{n}{i}" for n in range(len(urls)) for i in range(3)
    )
    for n in range(len(urls)):
        for i in range(3):
            r.cli("snapshots", env=r.env(CARGOHOLD_PASSWORD=f"pw-{n}-{i}"))
    assert len(js(r.cli("snapshots", "--json"))) == 2 * len(urls)
    assert js(r.cli("check", "--read-data", "--json"))["ok"] is True
    if r.kind == "s3":  # no claim left behind
        keys_in_bucket = [o["Key"] for o in _bucket_listing(r)]
        assert not [k for k in keys_in_bucket if "~claims" in k or "~probe" in k], keys_in_bucket


def _bucket_listing(remote: RemoteRepo) -> list[dict[str, Any]]:
    import botocore.session

    env = remote.env()
    bucket = remote.url.split("/")[2]
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=remote.url.split("endpoint=")[1],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    return list(client.list_objects_v2(Bucket=bucket).get("Contents", []))
