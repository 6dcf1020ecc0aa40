"""Unix sockets in a snapshot: recreated on restore (bound and closed), verified, or named
in a warning where they cannot be (a tar for the Engine API) — never dropped silently."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.repo import restorer
from cargohold.repo.archiver import Archiver
from cargohold.repo.fsnode import SUN_PATH_MAX, make_socket
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import Restorer
from cargohold.repo.tar_writer import TarStats, snapshot_tar
from cargohold.services.verify import Hasher, compare, expected_nodes, observe_dir, verify


def bind(path: Path, mode: int, mtime_ns: int) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture()
def repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    (d / "run").mkdir(parents=True)
    (d / "data.txt").write_text("data\n")
    bind(d / "run" / "app.sock", 0o660, 1_600_000_000_123_456_789)
    return d


def test_a_socket_is_restored_as_a_socket_and_verify_sees_no_difference(
    tmp_path: Path, repo: Repository, src: Path
) -> None:
    snap = Archiver(repo).run(src).snapshot
    assert snap is not None
    # a deep target: the socket's path is longer than a unix socket address can be
    out = tmp_path / ("d" * 120) / "restored"
    res = Restorer(repo).run(snap, out)
    sock = out / "run" / "app.sock"
    assert len(os.fsencode(sock)) > SUN_PATH_MAX
    assert res.warnings == [] and res.others == 1
    st = os.lstat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert sorted(os.listdir(out / "run")) == ["app.sock"]  # no temporary name left behind

    expected = expected_nodes(repo, snap)
    cmp = compare(
        repo, expected, observe_dir(out, expected, Hasher(repo)), seconds_only=False, owners=True, hasher=Hasher(repo)
    )
    assert cmp.problems == []
    run = os.stat(out / "run")
    os.unlink(sock)  # a restore that lost it is a difference
    os.utime(out / "run", ns=(run.st_atime_ns, run.st_mtime_ns))
    cmp = compare(
        repo, expected, observe_dir(out, expected, Hasher(repo)), seconds_only=False, owners=True, hasher=Hasher(repo)
    )
    assert cmp.problems == ["run/app.sock: missing"]
    cmp = compare(
        repo,
        expected,
        observe_dir(out, expected, Hasher(repo)),
        seconds_only=False,
        owners=True,
        hasher=Hasher(repo),
        sockets=False,
    )
    assert cmp.problems == []  # unless a tar was involved, which cannot hold one

    record = verify(repo, snap)
    assert record.ok, record.problems


def test_a_socket_that_cannot_be_made_is_named(
    tmp_path: Path, repo: Repository, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = Archiver(repo).run(src).snapshot
    assert snap is not None

    def refuse(path: bytes) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(restorer, "make_socket", refuse)
    out = tmp_path / "out"
    res = Restorer(repo).run(snap, out)
    assert res.warnings == ["run/app.sock: socket not recreated: Permission denied"]
    assert (out / "data.txt").read_text() == "data\n" and os.listdir(out / "run") == []


def test_make_socket_replaces_nothing_and_reports_errors(tmp_path: Path) -> None:
    p = tmp_path / "s"
    make_socket(os.fsencode(p))
    with pytest.raises(OSError):
        make_socket(os.fsencode(p))  # in use as a name: the caller cleared it first
    long_dir = tmp_path / ("x" * 150)
    long_dir.mkdir()
    make_socket(os.fsencode(long_dir / "s"))
    with pytest.raises(OSError):
        make_socket(os.fsencode(long_dir / "s"))
    assert sorted(os.listdir(long_dir)) == ["s"]


def test_a_tar_for_the_engine_names_every_socket_it_leaves_out(repo: Repository, src: Path) -> None:
    snap = Archiver(repo).run(src).snapshot
    assert snap is not None
    stats = TarStats()
    data = b"".join(snapshot_tar(repo, snap, prefix="cargohold/volume", stats=stats))
    assert b"app.sock" not in data
    assert stats.skipped == 1
    assert stats.warnings("cargohold/volume") == [
        "run/app.sock: a unix socket, not restored: a tar cannot carry it (its server recreates it when it starts)"
    ]
