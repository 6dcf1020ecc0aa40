"""Backups of tar streams (the Engine archive API's read path) restore like directory backups."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_repo_backup_restore import describe, make_tree

from cargohold.backends import MemoryBackend
from cargohold.errors import UsageError
from cargohold.repo.archiver import Archiver, BackupOptions
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import Restorer
from cargohold.repo.snapshot import Source
from cargohold.repo.tar_archiver import TarArchiver
from cargohold.repo.tar_writer import TarStats, snapshot_tar


@pytest.fixture()
def repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)


def tar_stream(src: Path, *, chunk: int = 65536) -> Iterator[bytes]:
    """GNU tar in POSIX format: ns times, xattrs, hard links, devices (like a good archive API)."""
    out = subprocess.run(
        ["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", str(src), "-cf", "-", "."],
        check=True,
        capture_output=True,
    ).stdout
    for i in range(0, len(out), chunk):  # arbitrary cuts, as an HTTP stream delivers it
        yield out[i : i + chunk]


def without_blocks(d: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {k: v[:-1] for k, v in d.items()}  # tar expands holes: compare all but the block count


def test_tar_round_trip_matches_the_directory(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    before = describe(src)
    res = TarArchiver(repo, BackupOptions(source=Source("volume", "v1"))).run_tar(tar_stream(src), name="v1")
    assert res.snapshot is not None and not res.warnings, res.warnings
    assert res.stats.files == 7 and res.snapshot.source.kind == "volume"  # as a directory backup counts
    out = Restorer(repo).run(res.snapshot, tmp_path / "out")
    assert not out.damaged and not out.warnings, out.warnings
    assert without_blocks(describe(tmp_path / "out")) == without_blocks(before)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == stat.S_IMODE(os.stat(src).st_mode)


def test_tar_and_directory_backups_share_their_data(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").mkdir()
    (src / "a" / "big.bin").write_bytes(os.urandom(3_000_000))
    (src / "pages.db").write_bytes(os.urandom(8192) * 200)
    first = Archiver(repo).run(src)
    second = TarArchiver(repo).run_tar(tar_stream(src, chunk=7777), name="src")
    assert first.snapshot is not None and second.snapshot is not None
    # every content chunk was already there: only trees are new
    assert second.stats.added_raw_bytes < 10_000
    # the same cut points: both snapshots name the same chunks for each file
    for name in (b"pages.db",):
        a, b = repo.load_tree(first.tree).find(name), repo.load_tree(second.tree).find(name)
        assert a is not None and b is not None and a.content == b.content and a.mtime_ns == b.mtime_ns
    third = TarArchiver(repo, BackupOptions(parent=second.snapshot, skip_if_unchanged=True)).run_tar(
        tar_stream(src), name="src"
    )
    assert third.skipped and third.snapshot is None


def test_not_a_tar_is_a_usage_error(repo: Repository) -> None:
    with pytest.raises(UsageError, match="not a tar stream"):
        TarArchiver(repo).run_tar([b"this is not a tar archive" * 40], name="junk")


def test_snapshot_as_tar_extracts_byte_exact(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    before = describe(src)
    snap = Archiver(repo).run(src).snapshot
    assert snap is not None
    stats = TarStats()
    data = b"".join(snapshot_tar(repo, snap, stats=stats))
    assert len(data) % 512 == 0 and stats.files == 7 and stats.skipped == 0
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-", "-C", str(out)],
        input=data,
        check=True,
    )
    assert without_blocks(describe(out)) == without_blocks(before)
    # and a tar backup of that tar stream finds its content stored already (but for the
    # zeros of the sparse file's holes, which compress to almost nothing)
    again = TarArchiver(repo).run_tar([data], name="again")
    assert again.stats.added_bytes < 10_000


def test_snapshot_tar_include(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    snap = Archiver(repo).run(src).snapshot
    assert snap is not None
    data = b"".join(snapshot_tar(repo, snap, include="sub/deeper"))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xpf", "-", "-C", str(out)], input=data, check=True)
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert got == ["sub", "sub/deeper", "sub/deeper/pages.db"]
    assert (out / "sub/deeper/pages.db").read_bytes() == (src / "sub/deeper/pages.db").read_bytes()
    with pytest.raises(UsageError, match="no such path"):
        b"".join(snapshot_tar(repo, snap, include="sub/nope"))


def test_prefetch_keeps_order_raises_source_errors_and_stops_early() -> None:
    import threading

    from cargohold.repo.tar_archiver import prefetch

    assert list(prefetch(iter([b"a", b"b", b"c"]), max_chunks=1)) == [b"a", b"b", b"c"]

    def failing() -> Iterator[bytes]:
        yield b"x"
        raise OSError("connection reset")

    got = []
    with pytest.raises(OSError, match="connection reset"):
        for chunk in prefetch(failing()):
            got.append(chunk)
    assert got == [b"x"]

    class Blocking:
        """A stream whose reader blocks until it is closed from another thread."""

        def __init__(self) -> None:
            self.closed = threading.Event()
            self.sent = 0

        def __iter__(self) -> Blocking:
            return self

        def __next__(self) -> bytes:
            if self.sent < 3:
                self.sent += 1
                return b"y"
            self.closed.wait(30)
            raise StopIteration

        def close(self) -> None:
            self.closed.set()

    source = Blocking()
    stream = prefetch(source)
    assert next(stream) == b"y"
    stream.close()  # the consumer gives up early: the blocked reader is woken, nothing hangs
    assert source.closed.is_set()
