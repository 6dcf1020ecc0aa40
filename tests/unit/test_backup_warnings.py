"""Backup warnings: files that change while they are read, and a repository inside the source."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.backends.local import LocalBackend
from cargohold.cli import exit_codes
from cargohold.cli.app import main
from cargohold.repo.archiver import Archiver, BackupOptions
from cargohold.repo.chunker import ChunkerParams, ChunkSource
from cargohold.repo.fileread import read_file
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import Restorer


class Meddling:
    """A reader that changes its file after the first read: deterministic, no timing involved."""

    def __init__(self, reader: ChunkSource, path: Path, change: str) -> None:
        self.reader = reader
        self.path = path
        self.change = change
        self.done = False

    def _meddle(self) -> None:
        if self.done:
            return
        self.done = True
        if self.change == "grow":
            with open(self.path, "ab") as f:
                f.write(b"appended while the backup read the file\n")
        else:  # same size, other bytes, another mtime
            st = self.path.stat()
            with open(self.path, "r+b") as f:
                f.write(b"X" * 16)
            os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    def read(self, n: int) -> bytes:
        data = self.reader.read(n)
        self._meddle()
        return data

    def readinto(self, buf: memoryview) -> int:
        got = self.reader.readinto(buf)  # type: ignore[attr-defined]
        self._meddle()
        return int(got)


def hook_reads(monkeypatch: pytest.MonkeyPatch, victim: Path, change: str = "grow") -> None:
    """Make the in-process backup readers change ``victim`` while they read it."""
    original = Archiver._store_content

    def store(self: Archiver, reader: ChunkSource, method: str, size: int) -> tuple[list[bytes], int] | None:
        fd = reader._fd  # type: ignore[attr-defined]
        if os.readlink(f"/proc/self/fd/{fd}") == str(victim):
            reader = Meddling(reader, victim, change)  # type: ignore[assignment]
        return original(self, reader, method, size)

    monkeypatch.setattr(Archiver, "_store_content", store)


@pytest.mark.parametrize("change", ["grow", "rewrite"])
def test_read_file_reports_a_file_that_changed_while_it_was_read(tmp_path: Path, change: str) -> None:
    path = tmp_path / "live.log"
    path.write_bytes(os.urandom(300_000))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))
    read_bytes = []

    def store(reader: ChunkSource, method: str, size: int) -> tuple[list[bytes], int]:
        meddling = Meddling(reader, path, change)
        total = 0
        while data := meddling.read(65536):
            total += len(data)
            read_bytes.append(data)
        return [b"id"], total

    res = read_file(os.fsencode(path), None, ChunkerParams(), store)
    assert res.ok and res.changed
    assert res.warning is not None and res.warning.startswith(f"{path}: changed while it was read")
    assert res.size == 300_000 == sum(map(len, read_bytes))  # the prefix that was read, consistently sized
    if change == "grow":
        assert "size 300000 -> 300040 bytes" in res.warning
    else:
        assert "modified" in res.warning

    untouched = read_file(os.fsencode(path), None, ChunkerParams(), lambda r, m, s: ([b"id"], s))
    assert untouched.ok and not untouched.changed and untouched.warning is None


def test_the_archiver_lists_files_changed_while_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)
    src = tmp_path / "src"
    src.mkdir()
    (src / "quiet.txt").write_text("stays\n")
    victim = src / "growing.log"
    victim.write_bytes(os.urandom(500_000))
    hook_reads(monkeypatch, victim)
    res = Archiver(repo, BackupOptions(processes_after=None)).run(src)
    assert res.changed == [str(victim)]
    assert [w for w in res.warnings if "changed while it was read" in w] == [
        f"{victim}: changed while it was read (size 500000 -> 500040 bytes); the snapshot holds the 500000 bytes read"
    ]
    assert res.snapshot is not None
    out = tmp_path / "out"
    Restorer(repo).run(res.snapshot, out)
    assert (out / "growing.log").read_bytes() == victim.read_bytes()[:500_000]


@pytest.fixture()
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for k in list(os.environ):
        if k.startswith("CARGOHOLD_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("CARGOHOLD_PASSWORD", "pw")
    monkeypatch.setenv("CARGOHOLD_KDF", "fast")
    return tmp_path


def test_backup_json_lists_files_changed_while_read(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CARGOHOLD_REPO", str(cli_env / "repo"))
    assert main(["init"]) == 0
    src = cli_env / "src"
    src.mkdir()
    victim = src / "db.bin"
    victim.write_bytes(os.urandom(200_000))
    (src / "other").write_text("x")
    hook_reads(monkeypatch, victim, "rewrite")
    capsys.readouterr()
    assert main(["backup", "--path", str(src), "--json"]) == exit_codes.FINDINGS
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["changed_while_read"] == [str(victim)]
    assert doc["excluded"] == []
    assert any(w.startswith(f"{victim}: changed while it was read (modified)") for w in doc["warnings"])
    assert f"warning: {victim}: changed while it was read" in out.err
    assert doc["snapshot"] is not None  # it is saved: the user is told, not refused

    assert main(["backup", "--path", str(src)]) == exit_codes.FINDINGS  # plain output: a notice line
    assert f"warning: {victim}: changed while it was read" in capsys.readouterr().err


def test_backup_of_a_directory_holding_the_repository_excludes_it(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = cli_env / "srv"
    repo = src / "backups" / "repo"
    monkeypatch.setenv("CARGOHOLD_REPO", str(repo))
    assert main(["init"]) == 0
    (src / "data").mkdir()
    (src / "data" / "a.txt").write_text("alpha\n")
    (src / "backups" / "notes.txt").write_text("kept\n")
    for run in range(2):
        capsys.readouterr()
        assert main(["backup", "--path", str(src), "--json"]) == exit_codes.FINDINGS
        out = capsys.readouterr()
        doc = json.loads(out.out)
        assert doc["excluded"] == [str(repo)]
        warning = f"{repo}: the repository itself, excluded from the snapshot"
        assert [w for w in doc["warnings"] if w.startswith(warning)] == doc["warnings"]
        assert out.err.count(f"warning: {warning}") == 1
        assert doc["stats"]["files"] == 2, run  # a.txt and notes.txt: nothing of the repository
    capsys.readouterr()
    assert main(["ls", "latest"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing == ["/backups/", "/backups/notes.txt", "/data/", "/data/a.txt"]

    # through a symlink to the source, or a path with "..", the repository is still recognised
    os.symlink(src, cli_env / "link")
    for other in (cli_env / "link", src / "data" / ".."):
        capsys.readouterr()
        assert main(["backup", "--path", str(other), "--json"]) == exit_codes.FINDINGS
        doc = json.loads(capsys.readouterr().out)
        assert doc["excluded"] == [str(repo)] and doc["stats"]["files"] == 2

    # a directory inside the repository is not backed up into it
    assert main(["backup", "--path", str(repo / "data")]) == exit_codes.USAGE
    assert "inside the repository" in capsys.readouterr().err


def test_a_backup_of_a_quiet_directory_beside_a_local_repository_warns_of_nothing(cli_env: Path) -> None:
    repo = Repository.init(LocalBackend(cli_env / "repo"), "pw", kdf=KdfParams.FAST)
    src = cli_env / "plain"
    src.mkdir()
    (src / "f").write_text("f")
    res = Archiver(repo).run(src)
    assert res.excluded == [] and res.changed == [] and res.warnings == []
