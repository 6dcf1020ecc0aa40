"""Backup and restore of a directory: byte-exact content and metadata, incrementals, damage."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.errors import UsageError
from cargohold.repo.archiver import Archiver, BackupOptions
from cargohold.repo.format import pack_name
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import RestoreOptions, Restorer


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a byte-exact restore must reproduce, by relative path."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = Path(p).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            link = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
            xattrs = sorted(
                (k, os.getxattr(p, k, follow_symlinks=False)) for k in os.listxattr(p, follow_symlinks=False)
            )
            mtime = st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else None
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                mtime,
                st.st_size,
                content,
                link,
                xattrs,
                st.st_rdev,
                data_regions(p) if content and stat.S_ISREG(st.st_mode) else None,
            )
    return out


def data_regions(path: str) -> list[tuple[int, int]]:
    """Where a file holds data (SEEK_DATA/SEEK_HOLE): its holes must survive a round trip.
    Not st_blocks, which also counts the file system's own blocks for a fragmented file's
    extent tree (a file written out of order by two writers can have one more)."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, pos))
    finally:
        os.close(fd)
    return out


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "big.bin").write_bytes(os.urandom(3_000_000))
    (root / "sub" / "deeper" / "pages.db").write_bytes(b"P" * 8192 * 300)
    os.symlink("a.txt", root / "link")
    os.symlink("/nonexistent/\xff".encode("utf-8", "surrogateescape"), root / "dangling")
    os.link(root / "a.txt", root / "hard")
    os.mkfifo(root / "fifo")
    (root / os.fsdecode(b"odd\xffname\x01")).write_bytes(b"odd")
    with open(root / "sparse", "wb") as f:
        f.truncate(20 * 1024 * 1024)
        f.seek(5_000_000)
        f.write(b"data in the middle")
    os.setxattr(root / "a.txt", "user.note", b"\x00\xffvalue")
    os.chmod(root / "sub" / "big.bin", 0o4751)
    os.utime(root / "a.txt", ns=(1, 1_234_567_890_123_456_789))
    if os.geteuid() == 0:
        os.chown(root / "sub" / "big.bin", 1234, 99)
        os.mknod(root / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))


@pytest.fixture()
def repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)


def test_round_trip_is_byte_exact(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    os.utime(src / "sub", ns=(5, 6_000_000_007))
    before = describe(src)
    res = Archiver(repo).run(src)
    assert res.snapshot is not None and not res.warnings
    assert res.stats.files == 7 and res.stats.files_new == 7
    reopened = Repository.open(repo.backend, "pw")
    snap = reopened.snapshots()[-1]
    out = Restorer(reopened).run(snap, tmp_path / "out")
    assert not out.damaged and not out.warnings
    assert describe(tmp_path / "out") == before
    assert os.stat(tmp_path / "out" / "sparse").st_blocks * 512 < 1_000_000  # holes stay holes


def test_incremental_reads_only_changed_files_and_dedups(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    first = Archiver(repo).run(src)
    assert first.snapshot is not None
    with open(src / "sub" / "deeper" / "pages.db", "r+b") as f:
        f.seek(8192 * 100)
        f.write(b"Q" * 8192)
    second = Archiver(repo, BackupOptions(parent=first.snapshot)).run(src)
    assert second.stats.files_changed == 1 and second.stats.files_unchanged == 6
    # one 64 KiB chunk of the page file plus the three trees on its path
    assert second.stats.blobs_added == 4
    assert second.stats.added_raw_bytes < 65536 + 8000
    third = Archiver(repo, BackupOptions(parent=second.snapshot, skip_if_unchanged=True)).run(src)
    assert third.skipped and third.snapshot is None and third.stats.added_bytes == 0
    assert len(repo.list_snapshot_ids()) == 2


def test_include_restores_only_that_path(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    snap = Archiver(repo).run(src).snapshot
    assert snap is not None
    Restorer(repo, RestoreOptions(include=["sub/deeper"])).run(snap, tmp_path / "out")
    got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert got == ["sub", "sub/deeper", "sub/deeper/pages.db"]
    with pytest.raises(UsageError):
        Restorer(repo, RestoreOptions(include=["nope"])).run(snap, tmp_path / "out2")


def test_damaged_pack_names_affected_files_and_restores_the_rest(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_bytes(b"small")
    (src / "big.bin").write_bytes(os.urandom(20_000_000))
    snap = Archiver(repo).run(src).snapshot
    assert snap is not None
    loc = repo.index.lookup(repo.load_tree(snap.tree).find(b"big.bin").content[-1])  # type: ignore[union-attr]
    assert loc is not None
    backend = repo.backend
    assert isinstance(backend, MemoryBackend)
    data = bytearray(backend.load(pack_name(loc.pack)))
    data[loc.offset + 40] ^= 0xFF
    backend.store(pack_name(loc.pack), bytes(data))
    out = Restorer(repo).run(snap, tmp_path / "out")
    assert list(out.damaged) == ["big.bin"]
    assert (tmp_path / "out" / "small.txt").read_bytes() == b"small"
