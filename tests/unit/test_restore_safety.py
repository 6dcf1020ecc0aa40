"""`restore --target` refuses to write over, into or around the snapshot's own live source."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.cli import exit_codes
from cargohold.cli.app import main
from cargohold.errors import RestoreConflict
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.services import repository as svc


def state(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry below ``root``: mode, mtime and content digest — what a restore would change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = hashlib.sha256(Path(p).read_bytes()).hexdigest() if os.path.isfile(p) else ""
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, digest)
    return out


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository (outside the source) and a source directory backed up once, then changed."""
    for k in list(os.environ):
        if k.startswith("CARGOHOLD_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("CARGOHOLD_REPO", str(tmp_path / "repo"))
    monkeypatch.setenv("CARGOHOLD_PASSWORD", "pw")
    monkeypatch.setenv("CARGOHOLD_KDF", "fast")
    src = tmp_path / "data" / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("version 1\n")
    (src / "sub" / "b.txt").write_text("bee\n")
    assert main(["init"]) == 0
    assert main(["backup", "--path", str(src)]) == 0
    (src / "a.txt").write_text("version 2, newer than the snapshot\n")
    (src / "sub" / "new.txt").write_text("made after the backup\n")
    return src


def refused(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    capsys.readouterr()
    assert main(args) == exit_codes.CONFLICT == 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cargohold: error: "), err
    assert "--force" in err[0]
    return err[0]


def test_restore_onto_the_source_is_refused_and_changes_nothing(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = state(env)
    msg = refused(capsys, ["restore", "latest", "--target", str(env)])
    # a.txt and sub/b.txt would be replaced (sub is a directory in both: merged, not counted)
    assert f"2 files of {env} would be overwritten by snapshot " in msg
    assert "just now" in msg or "minute" in msg
    assert state(env) == before


@pytest.mark.parametrize("how", ["sub", "sub/..", "link", "link/sub", "../src/sub"])
def test_a_target_inside_the_source_by_any_path_is_refused(
    env: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    os.symlink(env, env.parent / "link")
    target = env.parent / how if how.startswith(("link", "..")) else env / how
    if how == "../src/sub":
        target = env / ".." / "src" / "sub"
    before = state(env)
    msg = refused(capsys, ["restore", "latest", "--target", str(target)])
    assert str(env) in msg
    assert state(env) == before


def test_a_target_around_the_source_is_refused(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = env.parent
    before = state(parent)
    msg = refused(capsys, ["restore", "latest", "--target", str(parent)])
    assert f"--target {parent} is around {env}, the live source of snapshot" in msg
    assert state(parent) == before
    refused(capsys, ["restore", "latest", "--target", "/"])
    assert state(parent) == before


def test_include_counts_only_what_it_restores(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    msg = refused(capsys, ["restore", "latest", "--target", str(env), "--include", "sub"])
    assert f"1 file of {env} would be overwritten" in msg


def test_force_restores_over_the_source(env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    refused(capsys, ["restore", "latest", "--target", str(env)])
    out = tmp_path / "elsewhere"  # another target needs nothing
    assert main(["restore", "latest", "--target", str(out)]) == 0
    assert main(["restore", "latest", "--target", str(out)]) == 0  # over an earlier restore: fine
    assert (out / "a.txt").read_text() == "version 1\n"
    assert main(["restore", "latest", "--target", str(env), "--force"]) == 0
    assert (env / "a.txt").read_text() == "version 1\n"
    assert (env / "sub" / "new.txt").exists()  # a restore replaces, it does not delete


def test_a_source_that_is_gone_or_empty_is_restored_without_force(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (env / "a.txt").unlink()
    (env / "sub" / "b.txt").unlink()
    (env / "sub" / "new.txt").unlink()
    (env / "unrelated.txt").write_text("not in the snapshot\n")
    assert main(["restore", "latest", "--target", str(env)]) == 0  # replaces nothing
    assert (env / "unrelated.txt").exists() and (env / "a.txt").read_text() == "version 1\n"
    refused(capsys, ["restore", "latest", "--target", str(env)])  # now it would replace them
    for p in sorted(env.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    assert main(["restore", "latest", "--target", str(env)]) == 0  # the recovery it is for
    assert (env / "a.txt").read_text() == "version 1\n"
    for p in sorted(env.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    env.rmdir()
    assert main(["restore", "latest", "--target", str(env)]) == 0
    assert (env / "sub" / "b.txt").read_text() == "bee\n"


def test_library_api_raises_and_another_hosts_snapshot_is_not_guarded(tmp_path: Path) -> None:
    repo = Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    snap = svc.backup(repo, src).snapshot
    assert snap is not None
    with pytest.raises(RestoreConflict, match=r"1 file of .* would be overwritten") as err:
        svc.restore(repo, "latest", src)
    assert exit_codes.exit_code_for(err.value) == exit_codes.CONFLICT
    elsewhere = dataclasses.replace(snap, hostname="another-host")
    assert svc.restore_overlap(repo, elsewhere, src) is None
    overlap = svc.restore_overlap(repo, snap, src / "deeper")
    assert overlap is not None and overlap.kind == svc.INSIDE and overlap.refused
    _, res = svc.restore(repo, "latest", src, force=True)
    assert res.files == 1
