"""copy-snapshots: snapshots from one repository into another (3-2-1), only the blobs the
target lacks, re-encrypted, idempotent and resumable; init --copy-chunker-params-from."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.cli import exit_codes
from cargohold.cli.app import main
from cargohold.errors import BackendError, IntegrityError, RepositoryLocked, SnapshotNotFound, WrongPassword
from cargohold.repo.format import BlobType, pack_name
from cargohold.repo.index import Location
from cargohold.repo.keys import KdfParams
from cargohold.repo.locks import LockManager
from cargohold.repo.repository import Repository
from cargohold.services import copy_snapshots as cs
from cargohold.services import repository as svc
from cargohold.services.copy_snapshots import CopySettings, Selection, copy_snapshots
from cargohold.testbed.faultproxy import FaultProxy
from cargohold.testbed.rgw import RgwServer
from cargohold.testbed.sshd import Sshd

FAST = KdfParams.FAST


def write_random(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))


def state(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry below ``root``: type and mode, mtime, size and content digest."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = hashlib.sha256(Path(p).read_bytes()).hexdigest() if os.path.isfile(p) else ""
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, st.st_size, digest)
    return out


def init(path: Path, password: str = "pw", like: Repository | None = None) -> Repository:
    return svc.init_repository(str(path), password, kdf=FAST, like=like)


def reopen(repo: Repository, password: str = "pw") -> Repository:
    return svc.open_repository(repo.backend.url, password)


@pytest.fixture()
def sources(tmp_path: Path) -> tuple[Path, Path]:
    """Two source directories: a few MiB of random data in several files each."""
    a, b = tmp_path / "data" / "a", tmp_path / "data" / "b"
    write_random(a / "big.bin", 3_000_000, 1)
    write_random(a / "sub" / "mid.bin", 1_200_000, 2)
    (a / "sub" / "small.txt").write_text("small\n")
    write_random(b / "other.bin", 2_000_000, 3)
    os.symlink("other.bin", b / "link")
    return a, b


@pytest.fixture()
def three(tmp_path: Path, sources: tuple[Path, Path]) -> Iterator[tuple[Repository, list[str]]]:
    """A source repository with three snapshots: a, b, then a again after a change."""
    a, b = sources
    src = init(tmp_path / "src")
    ids = [svc.backup(src, a).snapshot.id, svc.backup(src, b).snapshot.id]  # type: ignore[union-attr]
    write_random(a / "sub" / "new.bin", 900_000, 4)
    ids.append(svc.backup(src, a).snapshot.id)  # type: ignore[union-attr]
    yield src, ids
    src.close()


def assert_restores_alike(src: Repository, dst: Repository, src_id: str, dst_id: str, tmp_path: Path) -> None:
    one, two = tmp_path / f"r-{src_id[:8]}-src", tmp_path / f"r-{dst_id[:8]}-dst"
    _, res1 = svc.restore(src, src_id, one)
    _, res2 = svc.restore(dst, dst_id, two)
    assert not res1.damaged and not res2.damaged
    assert state(one) == state(two) and state(one)


# --- copying ---------------------------------------------------------------------------------


def test_copy_all_then_again_copies_nothing(tmp_path: Path, three: tuple[Repository, list[str]]) -> None:
    src, ids = three
    dst = init(tmp_path / "dst", like=src)
    res = copy_snapshots(src, dst)
    assert [e.source_id for e in res.copied] == ids and not res.skipped
    stored = sum(size for _, size in src.list_packs())
    assert 0 < res.bytes <= stored and res.raw_bytes >= 6_200_000

    report = svc.check(reopen(dst), read_data=True)
    assert report.ok and report.snapshots == 3, report.damage
    by_source = {e.source_id: e.target_id for e in res.copied}
    for sid in ids:
        assert_restores_alike(src, dst, sid, by_source[sid], tmp_path)

    copied = {s.id: s for s in svc.snapshots(reopen(dst))}
    for s in svc.snapshots(src):
        c = copied[by_source[s.id]]
        assert (c.tree, c.time, c.source, c.hostname, c.tags, c.paths, c.stats) == (
            s.tree,
            s.time,
            s.source,
            s.hostname,
            s.tags,
            s.paths,
            s.stats,
        )
    # the third snapshot's parent is the first: in the target, the first one's copy
    third = copied[by_source[ids[2]]]
    assert third.parent == by_source[ids[0]]

    assert not list(dst.backend.list("locks/")) and not list(src.backend.list("locks/"))  # released

    again = copy_snapshots(reopen(src), reopen(dst))
    assert not again.copied and [e.target_id for e in again.skipped] == [by_source[i] for i in ids]
    assert (again.blobs, again.bytes, again.raw_bytes) == (0, 0, 0)
    assert len(reopen(dst).list_snapshot_ids()) == 3


def test_latest_and_source_select(
    tmp_path: Path, three: tuple[Repository, list[str]], sources: tuple[Path, Path]
) -> None:
    src, ids = three
    a, b = (str(p) for p in sources)
    dst = init(tmp_path / "dst", like=src)
    res = copy_snapshots(src, dst, Selection(latest=1))
    assert [e.source_id for e in res.copied] == [ids[1], ids[2]]  # the newest of b, the newest of a

    dst2 = init(tmp_path / "dst2", like=src)
    res = copy_snapshots(src, dst2, Selection(sources=(a,)))
    assert [e.source_id for e in res.copied] == [ids[0], ids[2]]
    assert {s.source.name for s in svc.snapshots(reopen(dst2))} == {a}
    res = copy_snapshots(src, dst2, Selection(sources=(a, b)))  # only b is new there
    assert [e.source_id for e in res.copied] == [ids[1]] and len(res.skipped) == 2

    with pytest.raises(SnapshotNotFound, match="no snapshot of source"):
        copy_snapshots(src, dst2, Selection(sources=("/no/such/source",)))
    dst3 = init(tmp_path / "dst3", like=src)
    res = copy_snapshots(src, dst3, Selection(refs=(ids[1][:10],)))
    assert [e.source_id for e in res.copied] == [ids[1]]
    assert copy_snapshots(src, dst3, Selection(tags=("nightly",))).snapshots == []


def test_refs_are_resolved_in_the_snapshots_read_once(tmp_path: Path, three: tuple[Repository, list[str]]) -> None:
    """Snapshot refs name snapshots of the listing the copy read under its lock: no further
    listing or loading of the source's snapshots per ref (unless one was unreadable)."""
    src, ids = three
    dst = init(tmp_path / "dst", like=src)
    copy_snapshots(src, dst)  # all of them: the refs below copy nothing

    def source_reads(selection: Selection) -> tuple[int, int]:
        before = src.request_counts()
        res = copy_snapshots(src, dst, selection)
        after = src.request_counts()
        assert not res.copied
        return after["list"] - before["list"], after["load"] - before["load"]

    assert source_reads(Selection(refs=("latest", ids[1][:10], ids[0]))) == source_reads(Selection(refs=(ids[0],)))
    with pytest.raises(SnapshotNotFound, match="no snapshot 'ffff'"):
        copy_snapshots(src, dst, Selection(refs=("ffff",)))


def test_second_copy_transfers_only_the_new_blobs(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    a, _ = sources
    src = init(tmp_path / "src")
    dst = init(tmp_path / "dst", like=src)
    first = svc.backup(src, a).snapshot
    assert first is not None
    res1 = copy_snapshots(src, dst)
    assert res1.bytes == first.stats.added_bytes and res1.raw_bytes == first.stats.added_raw_bytes

    write_random(a / "added.bin", 1_500_000, 9)  # new data; the rest is unchanged
    second = svc.backup(src, a).snapshot
    assert second is not None and 1_500_000 <= second.stats.added_raw_bytes < 1_600_000
    res2 = copy_snapshots(reopen(src), reopen(dst))
    assert [e.source_id for e in res2.copied] == [second.id] and len(res2.skipped) == 1
    # exactly what the incremental backup added: the payloads are re-encrypted as they are
    assert res2.blobs == second.stats.blobs_added
    assert res2.bytes == second.stats.added_bytes
    assert res2.raw_bytes == second.stats.added_raw_bytes
    assert svc.check(reopen(dst), read_data=True).ok


def test_target_backups_deduplicate_against_copies(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    """The point of --copy-chunker-params-from: the same files backed up straight into the
    target store nothing new after a copy (same cut points, same ids)."""
    a, _ = sources
    src = init(tmp_path / "src")
    dst = init(tmp_path / "dst", like=src)
    svc.backup(src, a)
    copy_snapshots(src, dst)
    direct = svc.backup(reopen(dst), a, ignore_inode=True).snapshot
    assert direct is not None and direct.stats.bytes > 4_000_000
    assert direct.stats.added_raw_bytes < 2000  # at most the changed root tree (atime)


def test_different_passwords(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    a, _ = sources
    src = init(tmp_path / "src", "source-secret")
    svc.backup(src, a)
    dst = init(tmp_path / "dst", "target-secret", like=src)
    res = copy_snapshots(src, dst)
    assert len(res.copied) == 1
    with pytest.raises(WrongPassword):
        svc.open_repository(dst.backend.url, "source-secret")
    dst2 = svc.open_repository(dst.backend.url, "target-secret")
    assert svc.check(dst2, read_data=True).ok
    (sid,) = dst2.list_snapshot_ids()
    assert_restores_alike(src, dst2, res.copied[0].source_id, sid, tmp_path)
    # each repository keeps its own AES key: the target's packs do not open with the source's
    assert src.key.enc_key != dst2.key.enc_key and src.key.id_key == dst2.key.id_key


# --- what must agree ---------------------------------------------------------------------------


def test_init_copy_chunker_params_shares_ids_not_the_aes_key(tmp_path: Path) -> None:
    src = init(tmp_path / "src")
    dst = init(tmp_path / "dst", like=src)
    assert dst.key.id_key == src.key.id_key and dst.key.chunker_seed == src.key.chunker_seed
    assert dst.key.enc_key != src.key.enc_key
    assert dst.config.chunker == src.config.chunker and dst.config.id != src.config.id
    assert reopen(dst).key == dst.key  # what was written opens again
    other = init(tmp_path / "other")
    assert other.key.id_key != src.key.id_key


def test_init_copy_chunker_params_writes_once_and_does_not_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new repository is the one just written: one key derivation (the slot's), no
    second reading of its config and key slots."""
    src = init(tmp_path / "src")
    derived: list[bytes] = []
    real = KdfParams.derive

    def derive(self: KdfParams, password: str, salt: bytes) -> bytes:
        derived.append(salt)
        return real(self, password, salt)

    monkeypatch.setattr(KdfParams, "derive", derive)
    dst = init(tmp_path / "dst", like=src)
    assert len(derived) == 1
    assert dst.key_id and dst.config.compression_level == src.config.compression_level


def test_a_target_with_its_own_blob_ids_gets_a_translated_copy(
    tmp_path: Path, three: tuple[Repository, list[str]], sources: tuple[Path, Path]
) -> None:
    """Two repositories made by plain `init` (the acceptance of issue 10): every snapshot is
    copied with its blobs re-identified under the target's key and its trees rewritten;
    restores are identical, `check --read-data` is clean, and a second run copies nothing."""
    src, ids = three
    a, _ = sources
    dst = init(tmp_path / "dst")  # not made with --copy-chunker-params-from
    svc.backup(dst, a)  # a snapshot of the target's own stays beside the copies
    res = copy_snapshots(src, dst)
    assert res.translated and res.differences == ["blob id key", "chunker seed"]
    assert [e.source_id for e in res.copied] == ids and res.unreadable == {}
    stored = sum(size for _, size in src.list_packs())
    assert 0 < res.bytes <= stored  # each blob once, though the source's three snapshots share most
    dst = reopen(dst)
    report = svc.check(dst, read_data=True)
    assert report.ok and report.snapshots == 4, report.damage
    by_source = {s.id: s for s in svc.snapshots(src)}
    copied = {s.id: s for s in svc.snapshots(dst)}
    for entry in res.copied:
        copy, original = copied[entry.target_id], by_source[entry.source_id]
        assert copy.tree != original.tree
        assert cs.identity(copy, trees=False) == cs.identity(original, trees=False)
        assert_restores_alike(src, dst, entry.source_id, entry.target_id, tmp_path)
    parents = {s.id: s.parent for s in svc.snapshots(dst)}
    assert parents[res.copied[2].target_id] == res.copied[0].target_id  # a's second backup
    again = copy_snapshots(src, reopen(dst))
    assert again.copied == [] and [e.target_id for e in again.skipped] == [e.target_id for e in res.copied]
    assert not list(dst.backend.list("locks/")) and not list(src.backend.list("locks/"))


def test_a_translated_copy_that_meets_damage_commits_nothing(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    a, _ = sources
    src = init(tmp_path / "src")
    svc.backup(src, a)
    src = reopen(src)
    src.load_index()
    pack_id, _ = max(src.list_packs(), key=lambda p: p[1])
    path = tmp_path / "src" / pack_name(pack_id)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    dst = init(tmp_path / "dst")
    with pytest.raises(IntegrityError, match=r"damaged|does not match"):
        copy_snapshots(reopen(src), dst)
    assert reopen(dst).list_snapshot_ids() == []


def test_waits_for_no_exclusive_lock_on_either_side(tmp_path: Path, three: tuple[Repository, list[str]]) -> None:
    """Shared locks, as a backup (target) and a restore (source) take: an exclusive holder
    (key changes, prune's deletions) on either repository stops the copy before it writes."""
    src, _ = three
    dst = init(tmp_path / "dst", like=src)
    for held in (src, dst):
        with LockManager(held.backend).exclusive("key passwd"), pytest.raises(RepositoryLocked):
            copy_snapshots(src, dst)
        assert dst.list_snapshot_ids() == [] and list(dst.list_packs()) == []
    with LockManager(src.backend).shared("backup"), LockManager(dst.backend).shared("backup"):
        assert len(copy_snapshots(src, dst).copied) == 3  # beside backups into either


def test_damaged_source_data_commits_nothing(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    a, _ = sources
    src = init(tmp_path / "src")
    snap = svc.backup(src, a).snapshot
    assert snap is not None
    src.load_index()
    node = src.node_at(snap.tree, "big.bin")
    assert node is not None
    loc = src.index.lookup(node.content[1])
    assert loc is not None
    path = tmp_path / "src" / pack_name(loc.pack)
    data = bytearray(path.read_bytes())
    data[loc.offset + 40] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    dst = init(tmp_path / "dst", like=src)
    with pytest.raises(IntegrityError, match="authentication failed"):
        copy_snapshots(reopen(src), dst)
    assert reopen(dst).list_snapshot_ids() == []


def test_a_damaged_source_snapshot_stops_no_other(
    tmp_path: Path,
    three: tuple[Repository, list[str]],
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, ids = three
    obj = tmp_path / "src" / "snapshots" / ids[1]
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\0")
    dst = init(tmp_path / "dst", like=src)
    res = copy_snapshots(reopen(src), dst)
    assert [e.source_id for e in res.copied] == [ids[0], ids[2]] and list(res.unreadable) == [ids[1]]
    assert svc.check(reopen(dst), read_data=True).ok

    monkeypatch.setenv("CARGOHOLD_PASSWORD", "pw")
    code, out, err = run(capsys, "copy-snapshots", "--from", str(tmp_path / "src"), "--repo", str(tmp_path / "dst"))
    assert code == exit_codes.INTEGRITY and "0 snapshot(s) copied, 2 already here" in out
    assert err.startswith(f"warning: snapshot {ids[1][:8]} of ") and "not copied" in err


# --- interrupted --------------------------------------------------------------------------------

KILLED_COPY = textwrap.dedent(
    """
    import os, signal, sys
    from cargohold.services import repository as svc
    from cargohold.services.copy_snapshots import CopySettings, copy_snapshots

    class KillAfter:
        done = 0
        def start(self, phase, total_bytes=None): pass
        def advance(self, nbytes=0, items=0):
            self.done += nbytes
            if self.done >= int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)
        def finish(self): pass

    src = svc.open_repository(sys.argv[1], "pw")
    dst = svc.open_repository(sys.argv[2], "pw")
    copy_snapshots(src, dst, settings=CopySettings(checkpoint_bytes=1 << 20), progress=KillAfter())
    print("not killed")
    """
)


def test_killed_copy_resumes_and_prune_leaves_nothing_unreferenced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(12):
        write_random(data / f"f{i:02d}.bin", 1_000_000, 100 + i)
    src = init(tmp_path / "src")
    snap = svc.backup(src, data).snapshot
    assert snap is not None
    dst = init(tmp_path / "dst", like=src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_COPY, str(tmp_path / "src"), str(tmp_path / "dst"), "6000000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)
    target = reopen(dst)
    assert target.list_snapshot_ids() == []  # no snapshot without its data
    target.load_index()
    kept = sum(loc.length for _, loc in target.index.blobs())
    assert kept >= 4_000_000  # the checkpoints' index files keep the work done

    res = copy_snapshots(reopen(src), reopen(dst))
    assert len(res.copied) == 1
    assert res.bytes + kept == snap.stats.added_bytes  # the rest, and only the rest
    report = svc.check(reopen(dst), read_data=True)
    assert report.ok, report.damage
    (tid,) = reopen(dst).list_snapshot_ids()
    assert_restores_alike(src, reopen(dst), snap.id, tid, tmp_path)

    svc.prune(reopen(dst))  # what the killed copy wrote after its last index file
    again = svc.prune(reopen(dst), dry_run=True)
    assert (again.blobs_unused, again.packs_unused, again.packs_unindexed, again.leftovers_removed) == (0, 0, 0, 0)
    after = svc.check(reopen(dst), read_data=True)
    assert after.ok and not after.leftovers and not [w for w in after.warnings if "unused" in w or "index" in w]


# --- a remote repository -----------------------------------------------------------------------


def test_local_to_sftp_to_local(tmp_path: Path, sources: tuple[Path, Path], sshd_server: Sshd) -> None:
    """The same code against a real OpenSSH server (the test bed's sshd): local -> SFTP, then
    SFTP -> another local repository; each copy checks clean and restores bit-exact."""
    a, b = sources
    config = tmp_path / "ssh_config"
    config.write_text(sshd_server.ssh_config("copy-sftp"))
    folder = sshd_server.data / f"copy-{uuid.uuid4().hex[:12]}"
    try:
        src = init(tmp_path / "src")
        first = svc.backup(src, a).snapshot
        assert first is not None
        svc.backup(src, b)
        remote = svc.init_repository(f"sftp://copy-sftp{folder}?ssh_config={config}", "pw", kdf=FAST, like=src)
        res = copy_snapshots(src, remote)
        assert len(res.copied) == 2 and res.bytes == _blob_bytes(src)  # everything the source stores
        assert svc.check(remote, read_data=True).ok
        back = init(tmp_path / "back", like=remote)
        res2 = copy_snapshots(remote, back, Selection(sources=(str(a),)))
        assert [e.source_id for e in res2.copied] == [res.copied[0].target_id]
        assert res2.bytes == first.stats.added_bytes
        assert_restores_alike(src, back, first.id, res2.copied[0].target_id, tmp_path)
        assert not copy_snapshots(src, remote).copied
        remote.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_connection_reset_mid_copy_then_rerun(
    tmp_path: Path, sources: tuple[Path, Path], sshd_server: Sshd, direction: str
) -> None:
    """Connections reset mid-upload (local -> SFTP) or mid-download (SFTP -> local) through
    the test bed's fault proxy: the copy completes (retries) or fails with a storage error
    leaving no snapshot; either way a re-run completes, check --read-data is clean, the
    restore is bit-exact and prune leaves nothing unused."""
    a, _ = sources
    write_random(a / "more.bin", 4_000_000, 7)
    folder = sshd_server.data / f"copy-{uuid.uuid4().hex[:12]}"
    with FaultProxy((sshd_server.host, sshd_server.port)) as proxy:
        hosts = tmp_path / "known_hosts"
        hosts.write_text(f"[{sshd_server.host}]:{proxy.port} {sshd_server.host_public_key.read_text().strip()}\n")
        config = tmp_path / "ssh_config"
        config.write_text(
            sshd_server.ssh_config("copy-proxied", known_hosts=hosts).replace(
                f"Port {sshd_server.port}", f"Port {proxy.port}"
            )
        )
        url = f"sftp://copy-proxied{folder}?ssh_config={config}"
        try:
            local = init(tmp_path / "local")
            snap = svc.backup(local, a).snapshot
            assert snap is not None
            remote = svc.init_repository(url, "pw", kdf=FAST, like=local)
            if direction == "up":
                source, target = local, remote
            else:
                copy_snapshots(local, remote)
                source, target = svc.open_repository(url, "pw"), init(tmp_path / "back", like=local)
            proxy.reset_after(**{direction: 3_000_000})
            try:
                first = copy_snapshots(source, target)
            except BackendError as err:
                print(f"first copy failed: {err}")
                assert svc.open_repository(target.backend.url, "pw").list_snapshot_ids() == []
            else:
                print("first copy completed")
                assert len(first.copied) == 1
            assert proxy.stats().resets == 1
            proxy.pass_through()
            target = svc.open_repository(target.backend.url, "pw")
            res = copy_snapshots(svc.open_repository(source.backend.url, "pw"), target)
            assert len(res.copied) + len(res.skipped) == 1
            assert svc.check(target, read_data=True).ok
            (tid,) = target.list_snapshot_ids()
            assert_restores_alike(local, target, snap.id, tid, tmp_path)
            svc.prune(svc.open_repository(target.backend.url, "pw"))
            after = svc.prune(svc.open_repository(target.backend.url, "pw"), dry_run=True)
            assert (after.blobs_unused, after.packs_unused, after.packs_unindexed) == (0, 0, 0)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def test_acceptance_local_to_s3_to_sftp(
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
    sources: tuple[Path, Path],
    sshd_server: Sshd,
    rgw_server: RgwServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10's acceptance, as a user runs it: a local repository copied to S3 (the test
    bed's RADOS Gateway, bucket created by init), then S3 copied to SFTP through a Host alias;
    check --read-data clean on both, a restore from SFTP bit-exact, a re-run copies nothing."""
    t = cli_env
    a, _ = sources
    for key, value in rgw_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(t / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(t / "no-aws-credentials"))
    monkeypatch.setenv("CARGOHOLD_PASSWORD", "pw")
    monkeypatch.setenv("CARGOHOLD_NO_CACHE", "1")
    config = t / "ssh_config"
    config.write_text(sshd_server.ssh_config("backuphost"))
    folder = sshd_server.data / f"copy-{uuid.uuid4().hex[:12]}"
    local, s3 = str(t / "local"), f"s3://copy-{uuid.uuid4().hex[:12]}/repo"
    sftp = f"sftp://backuphost{folder}?ssh_config={config}"
    try:
        assert run(capsys, "init", "--repo", local)[0] == 0
        assert run(capsys, "backup", "--path", str(a), "--repo", local)[0] == 0
        code, out, err = run(capsys, "init", "--repo", s3, "--copy-chunker-params-from", local)
        assert code == 0, err
        code, out, err = run(capsys, "copy-snapshots", "--from", local, "--repo", s3, "--json")
        assert code == 0, err
        assert json.loads(out)["snapshots_copied"] == 1
        code, out, err = run(capsys, "check", "--read-data", "--repo", s3)
        assert code == 0 and "no errors" in out, out + err

        code, out, err = run(capsys, "init", "--repo", sftp, "--copy-chunker-params-from", s3)
        assert code == 0, err
        code, out, err = run(capsys, "copy-snapshots", "--from", s3, "--repo", sftp, "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["snapshots_copied"] == 1 and doc["bytes"] > 4_000_000
        code, out, err = run(capsys, "check", "--read-data", "--repo", sftp)
        assert code == 0 and "no errors" in out, out + err
        code, out, err = run(capsys, "restore", "latest", "--target", str(t / "out"), "--repo", sftp)
        assert code == 0, err
        assert state(t / "out") == state(a)
        code, out, _ = run(capsys, "copy-snapshots", "--from", s3, "--repo", sftp, "--json")
        assert code == 0 and (json.loads(out)["snapshots_copied"], json.loads(out)["bytes"]) == (0, 0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _blob_bytes(repo: Repository) -> int:
    """Stored bytes of every blob a repository's index lists."""
    repo.load_index()
    return sum(loc.length for _, loc in repo.index.blobs())


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture()
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for k in list(os.environ):
        if k.startswith("CARGOHOLD_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("CARGOHOLD_KDF", "fast")
    (tmp_path / "src-pw").write_text("source-secret\n")
    (tmp_path / "dst-pw").write_text("target-secret\n")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_copy_snapshots(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sources: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    t = cli_env
    a, b = (str(p) for p in sources)
    src, dst, plain = str(t / "src"), str(t / "dst"), str(t / "plain")
    spw, dpw = ("--password-file", str(t / "src-pw")), ("--password-file", str(t / "dst-pw"))
    assert run(capsys, "init", "--repo", src, *spw)[0] == 0
    for path in (a, b, a):
        assert run(capsys, "backup", "--path", path, "--repo", src, *spw)[0] == 0

    # a target with its own blob ids gets a translated copy, and a note on what that costs
    assert run(capsys, "init", "--repo", plain, *dpw)[0] == 0
    code, out, err = run(
        capsys, "copy-snapshots", "--from", src, "--from-password-file", str(t / "src-pw"), "--repo", plain, *dpw,
        "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["translated"] is True and json.loads(out)["snapshots_copied"] == 3
    assert err.count("\n") == 1 and "--copy-chunker-params-from" in err and "Traceback" not in err

    # init --copy-chunker-params-from: the source's password is asked for by its own option
    code, _, err = run(capsys, "init", "--repo", dst, *dpw, "--copy-chunker-params-from", src)
    assert code == exit_codes.WRONG_PASSWORD and "--from-password-file" in err and err.count("\n") == 1
    code, out, _ = run(
        capsys,
        "init",
        "--repo",
        dst,
        *dpw,
        "--copy-chunker-params-from",
        src,
        "--from-password-file",
        str(t / "src-pw"),
    )
    assert code == 0 and "blob ids shared with" in out
    code, _, err = run(
        capsys,
        "init",
        "--repo",
        dst,
        *dpw,
        "--copy-chunker-params-from",
        src,
        "--from-password-file",
        str(t / "src-pw"),
    )
    assert code == exit_codes.REPOSITORY and "exists already" in err

    # the source's password from the environment; --latest 1 per source
    monkeypatch.setenv("CARGOHOLD_FROM_PASSWORD", "source-secret")
    code, out, err = run(capsys, "copy-snapshots", "--from", src, "--repo", dst, *dpw, "--latest", "1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["snapshots_copied"], doc["snapshots_skipped"]) == (2, 0) and doc["bytes"] > 0
    assert {e["source"] for e in doc["snapshots"]} == {a, b}

    code, out, _ = run(capsys, "copy-snapshots", "--from", src, "--repo", dst, *dpw, "--json")
    doc = json.loads(out)
    assert code == 0 and (doc["snapshots_copied"], doc["snapshots_skipped"]) == (1, 2)
    # the target: at least the snapshot; the source: its shared lock alone
    assert doc["requests"]["to"]["store"] >= 1 and doc["requests"]["from"]["store"] == 1
    code, out, err = run(capsys, "--debug", "copy-snapshots", "--from", src, "--repo", dst, *dpw, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["snapshots_copied"] == 0
    assert doc["requests"]["to"]["store"] == doc["requests"]["from"]["store"] == 1  # only a lock each
    assert doc["requests"]["to"]["create"] == doc["requests"]["from"]["create"] == 0
    assert [line.split(":", 3)[2] for line in err.splitlines()] == [" from file", " to file"]
    code, out, _ = run(capsys, "copy-snapshots", "--from", src, "--repo", dst, *dpw)
    assert code == 0 and "0 snapshot(s) copied, 3 already here; 0 blobs, 0 B transferred" in out

    code, out, _ = run(capsys, "check", "--read-data", "--repo", dst, *dpw)
    assert code == 0 and "no errors" in out
    code, _, err = run(capsys, "copy-snapshots", "--from", src, "--repo", dst, *dpw, "--source", "/nope")
    assert code == exit_codes.NOT_FOUND and err.count("\n") == 1
    code, _, err = run(capsys, "copy-snapshots", "--repo", dst, *dpw)
    assert code == exit_codes.USAGE and "--from" in err
    code, _, err = run(capsys, "copy-snapshots", "--from", str(t / "nothing"), "--repo", dst, *dpw)
    assert code == exit_codes.REPOSITORY and "no repository at" in err and "check --from " in err
    code, _, err = run(capsys, "init", "--repo", str(t / "new"), *dpw, "--copy-chunker-params-from", str(t / "nothing"))
    assert code == exit_codes.REPOSITORY and "check --copy-chunker-params-from " in err
    assert not (t / "new").exists() or not list((t / "new").iterdir())  # nothing created

    # without a source password of its own, the target's is tried, and the error says so
    monkeypatch.delenv("CARGOHOLD_FROM_PASSWORD")
    code, _, err = run(capsys, "copy-snapshots", "--from", src, "--repo", dst, *dpw)
    assert code == exit_codes.WRONG_PASSWORD and "target's password" in err and err.count("\n") == 1


def test_reads_join_neighbours_within_limits() -> None:
    def blob(pack: int, offset: int, length: int) -> cs._Blob:
        bid = hashlib.sha256(f"{pack}/{offset}".encode()).digest()
        return cs._Blob(BlobType.DATA, bid, Location(bytes([pack]) * 32, BlobType.DATA, offset, length, length))

    mib = 1 << 20
    near = [blob(1, 0, mib), blob(1, mib + 100, mib), blob(1, 2 * mib + 100 + cs._MAX_GAP, mib)]  # gap <= max
    far = [blob(1, 10 * mib, mib)]  # gap > max: a read of its own
    big = [blob(2, i * mib, mib) for i in range(6)]  # contiguous, but 6 MiB > one read (4 MiB)
    blobs = [*reversed(near), *far, *big]
    jobs = list(cs._jobs(blobs))
    assert sorted(b.id for j in jobs for b in j.blobs) == sorted(b.id for b in blobs)  # each once
    for j in jobs:
        assert all(j.start <= b.loc.offset and b.loc.offset + b.loc.length <= j.end for b in j.blobs)
        assert j.end - j.start <= cs._MAX_READ and {b.loc.pack for b in j.blobs} == {j.pack}
    spans = sorted((j.pack[0], j.start, j.end) for j in jobs)
    assert spans == [
        (1, 0, 3 * mib + 100 + cs._MAX_GAP),
        (1, 10 * mib, 11 * mib),
        (2, 0, 4 * mib),
        (2, 4 * mib, 6 * mib),
    ]


def test_settings_are_checked() -> None:
    with pytest.raises(Exception, match="at least 1"):
        CopySettings(threads=0)
