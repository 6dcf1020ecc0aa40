"""The delta between two snapshots, and writing it into a directory that holds the older one."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.repo.archiver import Archiver
from cargohold.repo.keys import KdfParams
from cargohold.repo.progress import NullProgress
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import Restorer
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tar_writer import TarStats
from cargohold.services.verify import Hasher, compare, expected_nodes, observe_dir
from cargohold.services.volume_sync import (
    SyncRecord,
    SyncState,
    _apply_direct,
    _collapse,
    _target_changed,
    delta_tar,
    tree_delta,
)


@pytest.fixture()
def repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)


def snap(repo: Repository, root: Path) -> Snapshot:
    s = Archiver(repo).run(root).snapshot
    assert s is not None
    return s


def fill(root: Path) -> None:
    (root / "keep" / "deep").mkdir(parents=True)
    (root / "keep" / "deep" / "same.txt").write_text("unchanged\n")
    (root / "keep" / "edit.txt").write_text("before\n")
    (root / "gone").mkdir()
    (root / "gone" / "x").write_text("x")
    (root / "big.bin").write_bytes(os.urandom(1_500_000))
    (root / "drop.txt").write_text("drop me")
    (root / "mode.txt").write_text("mode")
    os.link(root / "keep" / "edit.txt", root / "edit-link")
    os.symlink("keep/edit.txt", root / "link")


def change(root: Path) -> None:
    (root / "keep" / "edit.txt").write_text("after, longer\n")  # and its hard link edit-link
    (root / "new").mkdir()
    (root / "new" / "n.txt").write_text("new")
    (root / "drop.txt").unlink()
    import shutil

    shutil.rmtree(root / "gone")
    os.chmod(root / "mode.txt", 0o600)
    os.unlink(root / "link")
    os.symlink("big.bin", root / "link")


def matches(repo: Repository, s: Snapshot, root: Path) -> list[str]:
    expected = expected_nodes(repo, s)
    hasher = Hasher(repo)
    return compare(
        repo, expected, observe_dir(root, expected, hasher), seconds_only=False, owners=True, hasher=hasher
    ).problems


def test_delta_names_exactly_what_changed(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    fill(src)
    old = snap(repo, src)
    change(src)
    new = snap(repo, src)
    d = tree_delta(repo, old, new)
    assert sorted(d.write) == ["edit-link", "keep/edit.txt", "link", "new"]
    assert sorted(d.meta) == ["mode.txt"]
    assert d.delete == ["drop.txt", "gone"]
    assert "keep" in d.dirs and "keep/deep" not in d.dirs  # an unchanged subtree is not even read
    assert d.root_changed
    assert tree_delta(repo, new, new).empty


def test_applying_the_delta_directly_gives_the_new_snapshot(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    fill(src)
    old = snap(repo, src)
    change(src)
    new = snap(repo, src)
    target = tmp_path / "target"
    Restorer(repo).run(old, target)
    big_inode = os.stat(target / "big.bin").st_ino
    assert _target_changed(str(target), expected_nodes(repo, old), seconds=False) is None
    _files, nbytes, _warnings = _apply_direct(repo, new, tree_delta(repo, old, new), str(target), NullProgress())
    assert matches(repo, new, target) == []
    assert os.stat(target / "big.bin").st_ino == big_inode  # never rewritten
    assert nbytes == len("after, longer\n") + len("new")
    assert os.stat(target / "edit-link").st_ino == os.stat(target / "keep" / "edit.txt").st_ino


def test_a_changed_target_is_noticed(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    fill(src)
    old = snap(repo, src)
    target = tmp_path / "target"
    Restorer(repo).run(old, target)
    expected = expected_nodes(repo, old)
    (target / "extra").write_text("someone else")
    assert _target_changed(str(target), expected, seconds=False) == "extra was added"
    (target / "extra").unlink()
    (target / "drop.txt").unlink()
    assert _target_changed(str(target), expected, seconds=False) == "1 entries were removed"
    Restorer(repo).run(old, target)
    with open(target / "keep" / "deep" / "same.txt", "a") as f:
        f.write("more")
    assert _target_changed(str(target), expected, seconds=False) == "keep/deep/same.txt was modified"


def test_delta_tar_carries_only_the_changes(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    fill(src)
    old = snap(repo, src)
    change(src)
    new = snap(repo, src)
    stats = TarStats()
    data = b"".join(delta_tar(repo, new, tree_delta(repo, old, new), prefix="volume", stats=stats))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == [
        "volume",
        "volume/edit-link",
        "volume/keep",
        "volume/keep/edit.txt",
        "volume/link",
        "volume/mode.txt",  # the archive API cannot change a mode alone: sent whole
        "volume/new",
        "volume/new/n.txt",
    ]
    links = [m for m in members.values() if m.islnk()]
    assert len(links) == 1 and links[0].linkname in ("volume/edit-link", "volume/keep/edit.txt")
    assert members["volume/link"].linkname == "big.bin" and members["volume/mode.txt"].mode == 0o600
    assert stats.bytes == len("after, longer\n") + len("mode") + len("new")


def test_collapse_bounds_the_includes() -> None:
    paths = [f"d{i // 10}/f{i}" for i in range(50)]
    assert _collapse(paths, limit=100) == sorted(paths)
    assert _collapse(paths, limit=5) == [f"d{i}" for i in range(5)]
    assert _collapse(paths, limit=2) == []  # the whole tree
    assert _collapse(["a", "a/b", "c"], limit=10) == ["a", "c"]


def test_sync_state_round_trip(tmp_path: Path) -> None:
    state = SyncState(tmp_path / "s" / "synced.json")
    assert state.get("e1", "v") is None
    rec = SyncRecord("e1", "v", "2026-01-01T00:00:00Z", "repo1", "ab" * 32, True, "now")
    state.put(rec)
    state.put(SyncRecord("e2", "v", "c", "repo1", "cd" * 32, False, "now"))
    assert state.get("e1", "v") == rec
    state.drop("e1", "v")
    assert state.get("e1", "v") is None and state.get("e2", "v") is not None
    (tmp_path / "s" / "synced.json").write_text("{broken")
    assert state.get("e2", "v") is None


def test_a_file_rewritten_in_place_gets_only_its_changed_chunks(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pages = bytearray(os.urandom(8192 * 1024))  # 8 MiB of database pages
    (src / "rel").write_bytes(pages)
    (src / "log").write_bytes(os.urandom(300_000))
    old = snap(repo, src)
    pages[8192 * 700 : 8192 * 701] = os.urandom(8192)  # one page rewritten
    (src / "rel").write_bytes(pages)
    with open(src / "log", "ab") as f:  # appended
        f.write(b"one more line\n")
    new = snap(repo, src)
    target = tmp_path / "target"
    Restorer(repo).run(old, target)
    inode = os.stat(target / "rel").st_ino
    delta = tree_delta(repo, old, new)
    assert sorted(delta.write) == ["log", "rel"] and sorted(delta.before) == ["log", "rel"]
    files, nbytes, _ = _apply_direct(repo, new, delta, str(target), NullProgress())
    assert matches(repo, new, target) == []
    assert files == 2 and nbytes < len(pages) // 2, nbytes
    assert os.stat(target / "rel").st_ino == inode  # patched in place
