"""check names damage and what it affects; forget and prune free space and keep the rest intact."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.errors import IntegrityError, RepositoryNotFound, UnsupportedFormat, WrongPassword
from cargohold.repo.format import BlobType, pack_name
from cargohold.repo.keys import KdfParams
from cargohold.repo.prune import OBSOLETE_PREFIX
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import RestoreOptions, Restorer
from cargohold.repo.retention import Policy
from cargohold.repo.tar_writer import snapshot_tar
from cargohold.services import repository as svc


@pytest.fixture()
def repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)


def fill(root: Path, seed: int, big: int = 3_000_000) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "small.txt").write_text(f"small {seed}\n")
    (root / "shared.bin").write_bytes(b"S" * 100_000)
    (root / f"big{seed}.bin").write_bytes(os.urandom(big))


def fresh(repo: Repository) -> Repository:
    return Repository.open(repo.backend, "pw", load_index=False)


def names(repo: Repository, prefix: str) -> list[str]:
    return sorted(i.name for i in repo.backend.list(prefix))


def test_clean_repository_checks_clean(tmp_path: Path, repo: Repository) -> None:
    fill(tmp_path / "a", 1)
    svc.backup(repo, tmp_path / "a")
    rep = svc.check(fresh(repo), read_data=True)
    assert rep.ok and rep.snapshots == 1 and rep.packs_read == rep.packs == 2
    assert svc.check(fresh(repo), subset=50).ok


def test_open_errors(repo: Repository) -> None:
    with pytest.raises(WrongPassword):
        Repository.open(repo.backend, "nope")
    with pytest.raises(RepositoryNotFound):
        Repository.open(MemoryBackend(), "pw")
    repo.backend.store("config", b'{"version": 99, "id": "x"}')
    with pytest.raises(UnsupportedFormat):
        Repository.open(repo.backend, "pw")


def damage(repo: Repository, name: str, how: str) -> None:
    b = repo.backend
    if how == "delete":
        b.delete(name)
    elif how == "truncate":
        b.store(name, b.load(name)[: b.stat(name).size // 2])
    else:
        data = bytearray(b.load(name))
        data[len(data) // 2] ^= 0x55
        b.store(name, bytes(data))


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_damaged_data_pack_is_named_with_affected_files(tmp_path: Path, repo: Repository, how: str) -> None:
    fill(tmp_path / "a", 1)
    snap1 = svc.backup(repo, tmp_path / "a").snapshot
    fill(tmp_path / "b", 2)
    snap2 = svc.backup(repo, tmp_path / "b").snapshot
    assert snap1 is not None and snap2 is not None
    tree = repo.load_tree(snap2.tree)
    node = tree.find(b"big2.bin")
    assert node is not None
    loc = repo.index.lookup(node.content[0])
    assert loc is not None
    damage(repo, pack_name(loc.pack), how)
    rep = svc.check(fresh(repo), read_data=True)
    assert not rep.ok
    assert any(d.name == pack_name(loc.pack) or d.kind == "blob" for d in rep.damage), rep.damage
    assert snap2.id in rep.affected and any("big2.bin" in p for p in rep.affected[snap2.id])
    assert snap1.id not in rep.affected
    # the undamaged snapshot still restores; the damaged one names the file
    _, ok = svc.restore(fresh(repo), snap1.id, tmp_path / "r1")
    assert not ok.damaged and (tmp_path / "r1" / "big1.bin").read_bytes() == (tmp_path / "a" / "big1.bin").read_bytes()
    _, bad = svc.restore(fresh(repo), snap2.id, tmp_path / "r2")
    assert "big2.bin" in bad.damaged
    assert "shared.bin" not in bad.damaged  # stored by the first backup, in another pack
    for name in ("small.txt", "shared.bin"):
        if name not in bad.damaged:
            assert (tmp_path / "r2" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_missing_pack_is_found_without_read_data(tmp_path: Path, repo: Repository) -> None:
    fill(tmp_path / "a", 1)
    svc.backup(repo, tmp_path / "a")
    for name in names(repo, "data/"):
        repo.backend.delete(name)
        break
    rep = svc.check(fresh(repo))
    assert not rep.ok and any(d.kind == "pack" and "missing" in d.message for d in rep.damage)


@pytest.mark.parametrize("prefix", ["index/", "snapshots/", "keys/"])
def test_damaged_metadata_objects_are_named(tmp_path: Path, repo: Repository, prefix: str) -> None:
    fill(tmp_path / "a", 1)
    svc.backup(repo, tmp_path / "a")
    victim = names(repo, prefix)[0]
    if prefix == "keys/":
        victim = f"keys/{svc.key_add(repo, 'second')}"
    damage(repo, victim, "flip")
    opened = Repository.open(repo.backend, "pw", load_index=False)
    rep = svc.check(opened)
    assert not rep.ok
    assert any(d.name == victim for d in rep.damage), (victim, rep.damage)


def test_damaged_tree_is_named_and_attributed(tmp_path: Path, repo: Repository) -> None:
    fill(tmp_path / "a" / "sub", 1)
    snap = svc.backup(repo, tmp_path / "a").snapshot
    assert snap is not None
    sub = repo.load_tree(snap.tree).find(b"sub")
    assert sub is not None and sub.subtree is not None
    loc = repo.index.lookup(sub.subtree)
    assert loc is not None
    damage(repo, pack_name(loc.pack), "flip")
    rep = svc.check(fresh(repo), read_data=True)
    assert not rep.ok and snap.id in rep.affected


def test_forget_and_prune_free_space_and_keep_snapshots_intact(tmp_path: Path, repo: Repository) -> None:
    for i in range(4):
        fill(tmp_path / "src", i)
        for old in (tmp_path / "src").glob("big*.bin"):
            if old.name != f"big{i}.bin":
                old.unlink()
        svc.backup(repo, tmp_path / "src")
    r = fresh(repo)
    dry = svc.forget(r, Policy(last=2), dry_run=True)
    assert len(dry.groups) == 1 and len(dry.groups[0].decision.remove) == 2 and not dry.removed
    assert len(r.list_snapshot_ids()) == 4
    before = sum(i.size for i in repo.backend.list("data/"))
    res = svc.forget(r, Policy(last=2), prune_after=True)
    assert len(res.removed) == 2 and res.prune is not None
    assert res.prune.packs_deleted >= 1 and res.prune.bytes_freed > 5_000_000
    after = sum(i.size for i in repo.backend.list("data/"))
    assert after < before - 5_000_000
    assert names(repo, OBSOLETE_PREFIX) == []
    assert svc.check(fresh(repo), read_data=True).ok
    _, out = svc.restore(fresh(repo), "latest", tmp_path / "out")
    assert (
        not out.damaged and (tmp_path / "out" / "big3.bin").read_bytes() == (tmp_path / "src" / "big3.bin").read_bytes()
    )
    again = svc.prune(fresh(repo))
    assert again.packs_deleted == 0 and again.packs_repacked == 0


def test_prune_repacks_partly_used_packs(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(400_000))
    svc.backup(repo, src)
    for i in range(6):
        (src / f"f{i}").unlink()
    svc.backup(repo, src)
    r = fresh(repo)
    svc.forget(r, Policy(last=1))
    rep = svc.prune(fresh(repo))
    assert rep.packs_repacked >= 1 and rep.packs_deleted >= 1
    stored = sum(i.size for i in repo.backend.list("data/"))
    assert stored < 1_200_000
    assert svc.check(fresh(repo), read_data=True).ok
    _, restored = svc.restore(fresh(repo), "latest", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f6", "f7"]
    assert not restored.damaged


def test_prune_defers_deletion_while_a_backup_holds_a_lock(tmp_path: Path, repo: Repository) -> None:
    fill(tmp_path / "a", 1)
    svc.backup(repo, tmp_path / "a")
    (tmp_path / "a" / "big1.bin").unlink()
    fill(tmp_path / "a", 2)
    svc.backup(repo, tmp_path / "a")
    svc.forget(fresh(repo), Policy(last=1))
    other = svc.locks_of(fresh(repo))
    with other.shared("backup elsewhere"):
        rep = svc.prune(fresh(repo))
        assert rep.packs_deleted == 0 and rep.markers_pending == 1
        assert len(names(repo, OBSOLETE_PREFIX)) == 1
    rep = svc.prune(fresh(repo))
    assert rep.packs_deleted >= 1 and names(repo, OBSOLETE_PREFIX) == []
    assert svc.check(fresh(repo), read_data=True).ok


def test_prune_refuses_when_a_snapshot_is_damaged(tmp_path: Path, repo: Repository) -> None:
    fill(tmp_path / "a", 1)
    svc.backup(repo, tmp_path / "a")
    damage(repo, names(repo, "snapshots/")[0], "flip")
    with pytest.raises(IntegrityError):
        svc.prune(fresh(repo))


def test_stats_and_keys(tmp_path: Path, repo: Repository) -> None:
    fill(tmp_path / "a", 1)
    svc.backup(repo, tmp_path / "a")
    svc.backup(repo, tmp_path / "a")
    st = svc.stats(fresh(repo))
    assert (st.snapshots == 2 and st.logical_bytes == 2 * st.unique_bytes - 0) or st.dedup_ratio > 1.9
    r = fresh(repo)
    new_id = svc.key_add(r, "other", label="laptop")
    slots, damaged = svc.key_list(r)
    assert {s.id for s in slots} == {r.key_id, new_id} and not damaged
    r2 = Repository.open(repo.backend, "other", load_index=False)
    svc.key_passwd(r2, "third")
    with pytest.raises(WrongPassword):
        Repository.open(repo.backend, "other")
    Repository.open(repo.backend, "third")
    svc.key_remove(r, r2.key_id)
    with pytest.raises(WrongPassword):
        Repository.open(repo.backend, "third")


def test_damaged_index_loses_nothing_and_rebuild_index_repairs_it(tmp_path: Path, repo: Repository) -> None:
    fill(tmp_path / "a", 1)
    snap = svc.backup(repo, tmp_path / "a").snapshot
    assert snap is not None
    for name in names(repo, "index/"):
        damage(repo, name, "flip")
    rep = svc.check(fresh(repo), read_data=True)
    assert rep.damage and {d.kind for d in rep.damage} == {"index"}
    assert not rep.affected  # the packs still hold everything
    assert all("rebuild-index" in d.message for d in rep.damage)
    _, out = svc.restore(fresh(repo), snap.id, tmp_path / "out")
    assert not out.damaged
    assert (tmp_path / "out" / "big1.bin").read_bytes() == (tmp_path / "a" / "big1.bin").read_bytes()
    with pytest.raises(IntegrityError):
        svc.prune(fresh(repo))
    rebuilt = svc.rebuild_index(fresh(repo))
    assert rebuilt.packs == 2 and rebuilt.index_files_replaced == 1 and not rebuilt.damaged_packs
    assert svc.check(fresh(repo), read_data=True).ok
    assert svc.prune(fresh(repo)).packs_deleted == 0


def test_missing_index_is_named_and_loses_nothing(tmp_path: Path, repo: Repository) -> None:
    fill(tmp_path / "a", 1)
    first = svc.backup(repo, tmp_path / "a")
    snap = first.snapshot
    assert snap is not None
    for name in names(repo, "index/"):
        repo.backend.delete(name)
    rep = svc.check(fresh(repo))
    data_packs = names(repo, "data/")
    assert sorted(d.name for d in rep.damage) == data_packs and {d.kind for d in rep.damage} == {"index"}
    assert not rep.affected
    _, out = svc.restore(fresh(repo), snap.id, tmp_path / "out")
    assert not out.damaged and (tmp_path / "out" / "small.txt").read_text() == "small 1\n"
    # the other readers (Docker restores, verify, copy) use the restorer and the tar stream
    reader = fresh(repo)
    direct = Restorer(reader, RestoreOptions()).run(snap, tmp_path / "direct")
    assert not direct.damaged and (tmp_path / "direct" / "small.txt").read_text() == "small 1\n"
    with tarfile.open(fileobj=io.BytesIO(b"".join(snapshot_tar(fresh(repo), snap)))) as tar:
        member = tar.extractfile("./small.txt")
        assert member is not None and member.read() == b"small 1\n"
    # ... but what a backup stores is decided by the index alone: prune deletes the packs that
    # no index file lists, so a backup in the same process must not count on them
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    again = svc.backup(reader, tmp_path / "b")
    assert again.snapshot is not None and again.stats.blobs_added == first.stats.blobs_added
    svc.rebuild_index(fresh(repo))
    assert svc.check(fresh(repo), read_data=True).ok


def test_leftover_packs_of_an_interrupted_backup_are_only_warnings(tmp_path: Path, repo: Repository) -> None:
    fill(tmp_path / "a", 1)
    svc.backup(repo, tmp_path / "a")
    r = fresh(repo)
    r.load_index()
    r.save_blob(BlobType.DATA, os.urandom(5000))
    r._drain_writes()
    with r._lock:
        builders = [b for b in r._builders.values() if len(b)]
    for b in builders:
        r._write_pack(b)  # a pack written, its index never: as after a crash
    rep = svc.check(fresh(repo), read_data=True)
    assert rep.ok and any("interrupted backup" in w for w in rep.warnings)
