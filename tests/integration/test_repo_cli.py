"""The repository commands as scripts use them: real subprocesses, exit codes, one-line errors.

No Docker needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cargohold.cli import exit_codes
from cargohold.repo import docsum


def run(
    *args: str, env: dict[str, str] | None = None, ok: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    full_env.update({"CARGOHOLD_KDF": "fast", "CARGOHOLD_PASSWORD": "pw"})
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "cargohold.cli.app", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    if ok:
        assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cargohold: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("alpha\n")
    (d / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    os.symlink("a.txt", d / "link")
    return d


def test_the_documented_command_forms(tmp_path: Path, src: Path) -> None:
    repo = str(tmp_path / "repo")
    env = {"CARGOHOLD_REPO": repo}
    out = run("init", env=env)
    assert repo in out.stdout
    run("backup", "--path", str(src), "--tag", "daily", env=env)
    (src / "a.txt").write_text("alpha two\n")
    (src / "new.txt").write_text("new\n")
    run("backup", "--path", str(src), env=env)
    snaps = json.loads(run("snapshots", "--json", env=env).stdout)
    assert len(snaps) == 2
    first, second = snaps
    for s in snaps:
        assert {"id", "time", "source", "tags", "stats"} <= set(s)
        assert s["source"] == {"kind": "path", "name": str(src), "meta": {}}
        assert {"files", "bytes", "added_bytes"} <= set(s["stats"])
    assert first["tags"] == ["daily"] and second["tags"] == []
    assert first["stats"]["files"] == 2 and first["stats"]["bytes"] == 200_006
    assert run("snapshots", env=env).stdout.count("\n") == 3  # header + 2 rows when piped

    listing = run("ls", second["id"][:10], env=env).stdout.splitlines()
    assert listing == ["/a.txt", "/link -> a.txt", "/new.txt", "/sub/", "/sub/b.bin"]
    assert run("ls", "latest", "sub", env=env).stdout.splitlines() == ["/sub/b.bin"]
    diff = run("diff", first["id"], second["id"], env=env).stdout.splitlines()
    assert diff == ["M  /a.txt", "+  /new.txt"]

    target = tmp_path / "out"
    run("restore", "latest", "--target", str(target), env=env)
    assert (target / "a.txt").read_text() == "alpha two\n"
    assert (target / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert os.readlink(target / "link") == "a.txt"
    part = tmp_path / "part"
    run("restore", first["id"][:8], "--target", str(part), "--include", "sub", env=env)
    assert sorted(p.name for p in part.rglob("*")) == ["b.bin", "sub"]
    run("restore", "latest", "--source", str(src), "--target", str(tmp_path / "o3"), env=env)
    one_line_error(
        run("restore", "latest", "--source", "/nope", "--target", str(tmp_path / "o4"), env=env, ok=False),
        exit_codes.NOT_FOUND,
    )

    assert "no errors" in run("check", env=env).stdout
    assert "no errors" in run("check", "--read-data", env=env).stdout
    assert run("check", "--read-data-subset", "50", "--json", env=env).stdout.count('"ok": true') == 1

    dry = run("forget", "--keep-last", "1", "--dry-run", env=env).stdout
    assert "keep" in dry and "would remove" in dry and "last 1" in dry
    assert len(json.loads(run("snapshots", "--json", env=env).stdout)) == 2
    run("forget", "--keep-last", "1", "--prune", env=env)
    assert [s["id"] for s in json.loads(run("snapshots", "--json", env=env).stdout)] == [second["id"]]
    run("prune", env=env)
    assert "no errors" in run("check", "--read-data", env=env).stdout

    st = json.loads(run("stats", "--json", env=env).stdout)
    assert st["snapshots"] == 1 and st["stored_bytes"] > 0 and st["dedup_ratio"] > 0

    pwfile = tmp_path / "pw2"
    pwfile.write_text("second password\n")
    run("key", "add", "--new-password-file", str(pwfile), "--label", "laptop", env=env)
    keys = json.loads(run("key", "list", "--json", env=env).stdout)["keys"]
    assert len(keys) == 2 and [k["label"] for k in keys if not k["current"]] == ["laptop"]
    env2 = {**env, "CARGOHOLD_PASSWORD": ""}
    run("snapshots", "--password-file", str(pwfile), env={k: v for k, v in env2.items() if k != "CARGOHOLD_PASSWORD"})
    other = next(k["id"] for k in keys if not k["current"])
    run("key", "remove", other, env=env)
    assert len(json.loads(run("key", "list", "--json", env=env).stdout)["keys"]) == 1
    newpw = tmp_path / "pw3"
    newpw.write_text("third\n")
    run("key", "passwd", "--new-password-file", str(newpw), env=env)
    one_line_error(run("snapshots", env=env, ok=False), exit_codes.WRONG_PASSWORD)
    run("snapshots", env={**env, "CARGOHOLD_PASSWORD": "third"})
    assert "removed 0 lock(s)" in run("unlock", env=env).stdout


def test_errors_are_one_line_with_documented_codes(tmp_path: Path, src: Path) -> None:
    repo = tmp_path / "repo"
    one_line_error(run("snapshots", "--repo", str(repo), ok=False), exit_codes.REPOSITORY)
    run("init", "--repo", str(repo))
    one_line_error(run("init", "--repo", str(repo), ok=False), exit_codes.REPOSITORY)
    one_line_error(
        run("snapshots", "--repo", str(repo), env={"CARGOHOLD_PASSWORD": "bad"}, ok=False), exit_codes.WRONG_PASSWORD
    )
    proc = subprocess.run(
        [sys.executable, "-m", "cargohold.cli.app", "snapshots", "--repo", str(repo)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")},
    )
    one_line_error(proc, exit_codes.USAGE)
    one_line_error(
        run("restore", "deadbeef", "--target", str(tmp_path / "o"), "--repo", str(repo), ok=False), exit_codes.NOT_FOUND
    )
    one_line_error(run("backup", "--path", str(tmp_path / "missing"), "--repo", str(repo), ok=False), exit_codes.USAGE)
    one_line_error(run("check", "--read-data-subset", "0", "--repo", str(repo), ok=False), exit_codes.USAGE)
    one_line_error(run("forget", "--repo", str(repo), ok=False), exit_codes.USAGE)
    one_line_error(run("snapshots", "--repo", "gopher://host/x", ok=False), exit_codes.USAGE)
    one_line_error(run("snapshots", "--repo", "sftp://no-such-host.invalid/x", ok=False), exit_codes.STORAGE)
    original = (repo / "config").read_bytes()
    config = json.loads(original)
    config["version"] = 42
    (repo / "config").write_text(json.dumps(config))  # 42 under the checksum of version 1: damage
    one_line_error(run("snapshots", "--repo", str(repo), ok=False), exit_codes.INTEGRITY)
    (repo / "config").write_bytes(docsum.seal(config, 2))  # as a newer writer would: its own checksum
    one_line_error(run("snapshots", "--repo", str(repo), ok=False), exit_codes.REPOSITORY)
    (repo / "config").write_bytes(original)


def test_default_repository_is_under_xdg_data_home(tmp_path: Path, src: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    run("init", env=env)
    assert (tmp_path / "xdg" / "cargohold" / "repo" / "config").is_file()
    run("backup", "--path", str(src), env=env)


def test_check_and_restore_report_damage_with_exit_code(tmp_path: Path, src: Path) -> None:
    repo = tmp_path / "repo"
    env = {"CARGOHOLD_REPO": str(repo)}
    run("init", env=env)
    run("backup", "--path", str(src), env=env)
    packs = sorted((repo / "data").rglob("*"))
    packs = [p for p in packs if p.is_file()]
    for p in packs:
        data = bytearray(p.read_bytes())
        data[40] ^= 0xFF
        p.write_bytes(bytes(data))
    proc = run("check", "--read-data", env=env, ok=False)
    assert proc.returncode == exit_codes.INTEGRITY
    assert "damaged:" in proc.stdout and "is affected" in proc.stdout
    proc = run("restore", "latest", "--target", str(tmp_path / "out"), env=env, ok=False)
    assert proc.returncode == exit_codes.INTEGRITY
    assert "damaged:" in proc.stderr


def test_damaged_index_is_repaired_by_rebuild_index(tmp_path: Path, src: Path) -> None:
    repo = tmp_path / "repo"
    env = {"CARGOHOLD_REPO": str(repo)}
    run("init", env=env)
    run("backup", "--path", str(src), env=env)
    for p in (repo / "index").iterdir():
        p.write_bytes(p.read_bytes()[:-5])
    proc = run("check", env=env, ok=False)
    assert proc.returncode == exit_codes.INTEGRITY and "damaged: index index/" in proc.stdout
    run("restore", "latest", "--target", str(tmp_path / "out"), env=env)
    assert (tmp_path / "out" / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert "replaced 1 index file(s)" in run("rebuild-index", env=env).stdout
    assert "no errors" in run("check", "--read-data", env=env).stdout


def test_a_damaged_lock_is_named_until_unlock_removes_it(tmp_path: Path, src: Path) -> None:
    repo = tmp_path / "repo"
    env = {"CARGOHOLD_REPO": str(repo)}
    run("init", env=env)
    (repo / "locks").mkdir(exist_ok=True)
    (repo / "locks" / "00000000000000dd").write_bytes(b'{"kind": "shar')
    proc = run("backup", "--path", str(src), env=env)  # a damaged lock counts as stale: no refusal
    (line,) = [x for x in proc.stderr.splitlines() if "00000000000000dd" in x]
    assert line.startswith("warning: ignoring damaged lock locks/00000000000000dd") and "cargohold unlock" in line
    run("unlock", env=env)
    assert not (repo / "locks" / "00000000000000dd").exists()
    assert "00000000000000dd" not in run("backup", "--path", str(src), env=env).stderr


def test_skip_if_unchanged_says_so(tmp_path: Path, src: Path) -> None:
    env = {"CARGOHOLD_REPO": str(tmp_path / "repo")}
    run("init", env=env)
    run("backup", "--path", str(src), env=env)
    out = run("backup", "--path", str(src), "--skip-if-unchanged", env=env).stdout
    assert "nothing changed" in out and "no snapshot written" in out
    assert len(json.loads(run("snapshots", "--json", env=env).stdout)) == 1
