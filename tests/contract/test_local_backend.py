"""What only the local directory backend promises: durability steps and OS error mapping."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from cargohold.backends import LocalBackend
from cargohold.backends.local import translate_oserror
from cargohold.errors import BackendIOError, ObjectExists, ObjectNotFound


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_store_fsyncs_file_then_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = LocalBackend(tmp_path / "repo")
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    b.store("data/ab/pack", b"x" * 100)
    # new directories made durable, then file data, then the rename, then the directory entry
    assert calls[-3:] == ["fsync-file", "rename", "fsync-dir"]
    assert calls.count("fsync-dir") >= 3  # repo/, data/, ab/ are new: each parent fsync'd
    calls.clear()
    b.store("data/ab/pack", b"y")
    assert calls == ["fsync-file", "rename", "fsync-dir"]


def test_create_publishes_a_complete_file_by_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = LocalBackend(tmp_path)
    seen: list[bytes] = []
    real_link = os.link

    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(Path(src).read_bytes())  # the content is complete before the name appears
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    b.create("locks/exclusive", b"holder")
    assert seen == [b"holder"]
    assert listing(tmp_path) == ["locks/exclusive"]  # the temporary file is gone
    assert os.stat(tmp_path / "locks/exclusive").st_nlink == 1
    with pytest.raises(ObjectExists):
        b.create("locks/exclusive", b"other")
    assert listing(tmp_path) == ["locks/exclusive"]


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOTSUP])
def test_create_without_hard_links_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_link)
    b = LocalBackend(tmp_path)
    b.create("locks/x", b"one")
    with pytest.raises(ObjectExists):
        b.create("locks/x", b"two")
    assert b.load("locks/x") == b"one"
    assert listing(tmp_path) == ["locks/x"]


def test_temporary_files_are_never_listed(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.store("index/a", b"1")
    # What a crash between write and rename leaves behind:
    (tmp_path / "index" / ".b~tmp~0123456789ab").write_bytes(b"partial")
    assert [i.name for i in b.list()] == ["index/a"]
    assert [i.name for i in b.list("index/")] == ["index/a"]


def test_failed_rename_keeps_old_version_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = LocalBackend(tmp_path)
    b.store("snapshots/s", b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(BackendIOError, match="I/O error") as info:
        b.store("snapshots/s", b"new")
    assert "dmesg" in str(info.value)
    monkeypatch.undo()
    assert b.load("snapshots/s") == b"old"
    assert listing(tmp_path) == ["snapshots/s"]


def test_disk_full_is_reported_and_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = LocalBackend(tmp_path)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(BackendIOError, match="no space") as info:
        b.store("data/00/p", b"abc")
    assert not info.value.transient
    monkeypatch.undo()
    assert listing(tmp_path) == []


def test_permission_denied_has_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = LocalBackend(tmp_path)
    b.store("config", b"c")

    def denied(*args: object, **kwargs: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(BackendIOError, match="permission denied") as info:
        b.store("config", b"d")
    assert "owner" in (info.value.hint or "")


def test_translate_oserror_table() -> None:
    def tr(code: int) -> Exception:
        return translate_oserror(OSError(code, os.strerror(code)), "object 'x'")

    assert isinstance(tr(errno.ENOENT), ObjectNotFound)
    assert isinstance(tr(errno.ENOTDIR), ObjectNotFound)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EACCES, errno.EPERM, errno.EROFS):
        err = tr(code)
        assert isinstance(err, BackendIOError) and not err.transient, code
    for code in (errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT):
        err = tr(code)
        assert isinstance(err, BackendIOError) and err.transient, code


def test_missing_root(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "not" / "yet")
    assert list(b.list()) == []
    with pytest.raises(ObjectNotFound):
        b.load("config")
    b.store("config", b"now")
    assert (tmp_path / "not" / "yet" / "config").read_bytes() == b"now"
    assert b.url == (tmp_path / "not" / "yet").as_uri()


def test_directories_are_not_objects_and_links_are_followed(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "repo")
    b.store("data/aa/p", b"1")
    with pytest.raises(ObjectNotFound):
        b.load("data/aa")
    # data/bb lives on "another disk"; a loop and a dangling link are harmless.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "q").write_bytes(b"22")
    (tmp_path / "repo" / "data" / "bb").symlink_to(tmp_path / "other")
    (tmp_path / "other" / "loop").symlink_to(tmp_path / "repo" / "data")
    (tmp_path / "repo" / "data" / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "repo" / "data" / "fifo")
    assert [(i.name, i.size) for i in b.list("data/")] == [("data/aa/p", 1), ("data/bb/q", 2)]
    assert b.load("data/bb/q") == b"22"


def test_objects_are_private(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.store("keys/0011223344556677", b"k")
    b.create("locks/exclusive", b"l")
    for name in ("keys/0011223344556677", "locks/exclusive"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600


def test_name_clashing_with_a_folder(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.store("data/aa/p", b"1")
    b.store("file", b"2")
    with pytest.raises(BackendIOError, match="clashes"):
        b.store("data/aa", b"x")
    with pytest.raises(BackendIOError, match="clashes"):
        b.store("file/sub", b"x")
    with pytest.raises(BackendIOError, match="clashes"):
        b.create("file/sub", b"x")
    assert listing(tmp_path) == ["data/aa/p", "file"]
