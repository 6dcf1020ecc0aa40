"""verify's comparison finds every kind of difference between a restore and its snapshot."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.repo.archiver import Archiver
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import Restorer
from cargohold.repo.tar_writer import Content
from cargohold.repo.verifications import latest_by_snapshot, load_all
from cargohold.services.verify import Hasher, compare, expected_nodes, observe_dir, verify


@pytest.fixture()
def repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)


def snapshot_of(repo: Repository, src: Path):  # type: ignore[no-untyped-def]
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("alpha\n")
    (src / "big.bin").write_bytes(os.urandom(2_500_000))
    (src / "pages.db").write_bytes(os.urandom(8192) * 300)
    os.symlink("d/a.txt", src / "link")
    snap = Archiver(repo).run(src).snapshot
    assert snap is not None
    return snap


def check(repo: Repository, snap, root: Path) -> list[str]:  # type: ignore[no-untyped-def]
    expected = expected_nodes(repo, snap)
    hasher = Hasher(repo)
    with ThreadPoolExecutor(2) as pool:
        observed = observe_dir(root, expected, hasher)
        cmp = compare(
            repo, expected, observed, seconds_only=False, owners=True, hasher=hasher, content=Content(repo, pool)
        )
    return cmp.problems


def test_identical_restore_has_no_problems(tmp_path: Path, repo: Repository) -> None:
    snap = snapshot_of(repo, tmp_path / "src")
    Restorer(repo).run(snap, tmp_path / "out")
    assert check(repo, snap, tmp_path / "out") == []


def test_every_difference_is_named(tmp_path: Path, repo: Repository) -> None:
    snap = snapshot_of(repo, tmp_path / "src")
    out = tmp_path / "out"
    Restorer(repo).run(snap, out)
    with open(out / "pages.db", "r+b") as f:  # one page rewritten in place, same size and mtime
        st = os.stat(out / "pages.db")
        f.seek(8192 * 7)
        f.write(b"X" * 8192)
    os.utime(out / "pages.db", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(out / "d" / "a.txt", 0o600)
    (out / "big.bin").unlink()
    (out / "extra").write_text("x")
    os.unlink(out / "link")
    os.symlink("elsewhere", out / "link")
    problems = check(repo, snap, out)
    assert "pages.db: content differs" in problems
    assert any(p.startswith("d/a.txt: mode 600") for p in problems)
    assert "big.bin: missing" in problems and "extra: not in the snapshot" in problems
    assert "link: link target differs" in problems


def test_verify_directory_snapshot_records_the_outcome(tmp_path: Path, repo: Repository) -> None:
    snap = snapshot_of(repo, tmp_path / "src")
    record = verify(repo, snap)
    assert record.ok and record.method == "directory" and record.files == 3 and record.problems == []
    [stored] = load_all(repo)
    assert stored.id == record.id and stored.ok and latest_by_snapshot([stored])[snap.id].ok


def test_holes_filled_with_zeros_are_not_a_difference(tmp_path: Path, repo: Repository) -> None:
    """A sparse file restored through the archive API arrives without holes: same bytes, no alarm."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(3_000_000)
        f.write(b"middle")
    snap = Archiver(repo).run(src).snapshot
    assert snap is not None
    out = tmp_path / "out"
    Restorer(repo).run(snap, out)
    st = os.stat(out / "sparse")
    data = (out / "sparse").read_bytes()
    (out / "sparse").unlink()
    (out / "sparse").write_bytes(data)  # every block allocated now
    os.utime(out / "sparse", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(out, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns))
    assert os.stat(out / "sparse").st_blocks * 512 >= 8 * 1024 * 1024
    assert check(repo, snap, out) == []
    with open(out / "sparse", "r+b") as f:
        f.seek(100)
        f.write(b"x")
    os.utime(out / "sparse", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert check(repo, snap, out) == ["sparse: content differs"]
