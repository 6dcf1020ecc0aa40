"""Issue 16 (4): key export (text and paper) and import, so one key file is no longer a single
point of total loss; ``check`` warns about a single key slot never exported."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.backends import open_backend
from cargohold.cli import exit_codes
from cargohold.cli.app import main
from cargohold.errors import IntegrityError, RepositoryNotFound, UsageError, WrongPassword
from cargohold.repo import keys, paperkey
from cargohold.repo.keys import ExportedKey, KdfParams
from cargohold.repo.repository import Repository
from cargohold.services import keys as keysvc
from cargohold.services import repository as svc

PW = "pw"
LINE = re.compile(r"^\s*(\d+): ((?:[0-9a-f]{2,4} ?)+) - ([0-9a-f]{4})$")


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CARGOHOLD_KDF", "fast")
    yield


def fixed_key() -> ExportedKey:
    """An export with fixed bytes: the typo tests below have one outcome, not a random one."""
    return ExportedKey(
        repo_id="8fbf0aac016aa163fa5f54d140cfdc05",
        kdf=KdfParams(time_cost=3, memory_kib=65536, parallelism=2),
        salt=bytes(range(16)),
        wrapped=bytes((7 * i + 3) % 256 for i in range(101)),
        config=bytes((11 * i + 5) % 256 for i in range(99)),
    )


def paper_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if LINE.match(line)]


# --- the text formats ------------------------------------------------------------------------


def test_both_forms_round_trip() -> None:
    key = fixed_key()
    text = paperkey.render_text(key, created="2026-11-24T08:00:00Z")
    paper = paperkey.render_paper(key, created="2026-11-24T08:00:00Z")
    assert paperkey.parse(text) == key
    assert paperkey.parse(paper) == key
    assert key.repo_id in text and key.repo_id in paper
    lines = paper_lines(paper)
    payload = paperkey.encode_payload(key)
    assert len(lines) == -(-len(payload) // paperkey.LINE_BYTES) <= 16
    assert all(len(line) <= 60 for line in lines)
    # Only the numbered lines matter: notes, blank lines, upper case and o/l typed for 0/1 are fine.
    typed = "\n".join(
        [
            "my notes",
            *(
                n + ":" + rest.upper().replace("0", "o").replace("1", "l")
                for n, rest in (line.split(":", 1) for line in lines)
            ),
        ]
    )
    assert paperkey.parse(typed) == key


def test_every_single_digit_typo_on_paper_is_found_and_its_line_named() -> None:
    key = fixed_key()
    lines = paper_lines(paperkey.render_paper(key, created="x"))
    tried = 0
    for n, line in enumerate(lines, 1):
        m = LINE.match(line)
        assert m is not None
        start = m.start(2)
        for pos in range(start, len(line)):
            if line[pos] not in "0123456789abcdef":
                continue
            for other in "0123456789abcdef":
                if other == line[pos]:
                    continue
                typo = line[:pos] + other + line[pos + 1 :]
                text = "\n".join([*lines[: n - 1], typo, *lines[n:]])
                with pytest.raises(UsageError, match=rf"^line {n} of .* has a typo"):
                    paperkey.parse(text)
                tried += 1
    assert tried > 3000


def test_missing_extra_and_swapped_paper_lines() -> None:
    lines = paper_lines(paperkey.render_paper(fixed_key(), created="x"))
    with pytest.raises(UsageError, match=r"line\(s\) 3 of"):
        paperkey.parse("\n".join(lines[:2] + lines[3:]))
    with pytest.raises(
        UsageError, match=rf"incomplete: it has {len(lines)} lines, the lines after line 12 are missing"
    ):
        paperkey.parse("\n".join(lines[:12]))
    with pytest.raises(UsageError, match=r"line 2 of .* has a typo"):
        swapped = [lines[0], lines[2].replace(" 3:", " 2:", 1), lines[1].replace(" 2:", " 3:", 1), *lines[3:]]
        paperkey.parse("\n".join(swapped))
    dropped = lines[4][:-8] + lines[4][-7:]  # one hex digit less
    with pytest.raises(UsageError, match=r"line 5 of .* one is missing or extra"):
        paperkey.parse("\n".join([*lines[:4], dropped, *lines[5:]]))
    with pytest.raises(UsageError, match=r"line 1 .*not of the form"):
        paperkey.parse(lines[0].replace(" - ", " "))
    with pytest.raises(UsageError, match="holds no key"):
        paperkey.parse("hello\n")


def test_damaged_text_export_is_damage() -> None:
    text = paperkey.render_text(fixed_key(), created="x")
    body = text.split(paperkey.BEGIN)[1].splitlines()[1]
    for i in range(0, len(body), 3):
        changed = body[:i] + ("A" if body[i] != "A" else "B") + body[i + 1 :]
        with pytest.raises(IntegrityError):
            paperkey.parse(text.replace(body, changed))
    with pytest.raises(IntegrityError, match="END"):
        paperkey.parse(text.replace(paperkey.END, ""))
    with pytest.raises(IntegrityError):
        paperkey.parse(text.replace(body, body[:-4]))


# --- export and import (library) -------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.txt").write_text("alpha\n")
    return d


@pytest.fixture
def repo(data: Path) -> Repository:
    r = svc.init_repository(f"memory://paperkey-{uuid.uuid4().hex}", PW)
    svc.backup(r, str(data))
    return r


def _export(repo: Repository, *, paper: bool) -> str:
    out: list[str] = []
    keysvc.export_key(repo, PW, paper=paper, write=out.append)
    return "".join(out)


@pytest.mark.parametrize("paper", [False, True])
def test_import_after_every_key_file_and_the_config_are_lost(repo: Repository, paper: bool) -> None:
    url = repo.backend.url
    exported = _export(repo, paper=paper)
    assert keys.list_exports(repo.backend)[0].form == ("paper" if paper else "text")
    for slot in keys.list_keys(repo.backend):
        repo.backend.delete(f"keys/{slot.id}")
    with pytest.raises(IntegrityError, match="no key files left") as info:
        Repository.open(repo.backend, PW)
    assert "key import" in str(info.value)
    res = keysvc.import_key(url, exported, PW)
    assert res.repo_id == repo.config.id and not res.config_restored
    assert res.verified_with.startswith("snapshots/")
    again = Repository.open(open_backend(url), PW)
    assert again.key == repo.key and again.key_id == res.slot_id
    assert len(svc.snapshots(again)) == 1
    # Config and key files gone: the export restores both.
    original = repo.backend.load("config")
    repo.backend.delete("config")
    repo.backend.delete(f"keys/{res.slot_id}")
    res = keysvc.import_key(url, exported, PW, label="paper")
    assert res.config_restored
    assert repo.backend.load("config") == original
    assert [(k.id, k.label, k.has_config) for k in keys.list_keys(repo.backend)] == [(res.slot_id, "paper", True)]
    assert Repository.open(repo.backend, PW).config == repo.config


def test_import_restores_a_damaged_config_and_keeps_damaged_slots(repo: Repository) -> None:
    exported = _export(repo, paper=False)
    repo.backend.store(f"keys/{repo.key_id}", b"{ damaged")
    repo.backend.store("config", b"{ damaged too")
    res = keysvc.import_key(repo.backend.url, exported, PW)
    assert res.config_restored
    r = Repository.open(repo.backend, PW)
    assert r.key_id == res.slot_id and r.config == repo.config
    assert list(keys.damaged_keys(repo.backend)) == [repo.key_id]


def test_import_refuses_wrong_password_other_repository_and_empty_places(repo: Repository, data: Path) -> None:
    exported = _export(repo, paper=True)
    with pytest.raises(WrongPassword):
        keysvc.import_key(repo.backend.url, exported, "nope")
    other = svc.init_repository(f"memory://paperkey-{uuid.uuid4().hex}", PW)
    with pytest.raises(UsageError, match=f"of repository {repo.config.id}, but .* is {other.config.id}"):
        keysvc.import_key(other.backend.url, exported, PW)
    # Same id but other data (the config copied over): the key decrypts none of its objects.
    svc.backup(other, str(data))
    other.backend.store("config", repo.backend.load("config"))
    with pytest.raises(UsageError, match="not this repository's key"):
        keysvc.import_key(other.backend.url, exported, PW)
    with pytest.raises(RepositoryNotFound):
        keysvc.import_key(f"memory://paperkey-{uuid.uuid4().hex}", exported, PW)
    # A repository with key slots only (no snapshot yet), config lost: its slots' config copies
    # tell that the key is foreign.
    empty = svc.init_repository(f"memory://paperkey-{uuid.uuid4().hex}", PW)
    empty.backend.delete("config")
    with pytest.raises(UsageError, match="fits none of the 1 key slot"):
        keysvc.import_key(empty.backend.url, exported, PW)
    assert not list(empty.backend.list("config"))
    assert len(keys.list_keys(repo.backend)) == 1


def test_check_warns_about_a_single_key_never_exported(repo: Repository) -> None:
    warnings = keysvc.key_warnings(repo)
    assert len(warnings) == 1 and "single key slot" in warnings[0] and "key export --paper" in warnings[0]
    svc.key_add(repo, "second")
    assert keysvc.key_warnings(repo) == []
    r = Repository.open(repo.backend, "second")
    svc.key_remove(r, repo.key_id)
    assert any("single key slot" in w for w in keysvc.key_warnings(r))
    _export(r, paper=False)
    assert keysvc.key_warnings(r) == []


# --- the commands ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CARGOHOLD_PASSWORD_FILE", "CARGOHOLD_NEW_PASSWORD", "CARGOHOLD_LOCK_WAIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CARGOHOLD_PASSWORD", PW)
    monkeypatch.setenv("CARGOHOLD_REPO", str(tmp_path / "repo"))
    monkeypatch.setenv("CARGOHOLD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "repo"


def test_the_documented_commands(cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = cli_env
    assert main(["init"]) == 0
    err = capsys.readouterr().err
    assert sum("cargohold key export" in line for line in err.splitlines()) == 1
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("hello")
    assert main(["backup", "--path", str(data)]) == 0
    capsys.readouterr()
    assert main(["check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert any("never exported" in w for w in report["warnings"])

    assert main(["key", "export", "--paper"]) == 0
    paper = capsys.readouterr().out
    assert len(paper_lines(paper)) >= 10
    assert main(["key", "export", "-o", "key.txt"]) == 0
    assert (tmp_path / "key.txt").stat().st_mode & 0o777 == 0o600
    assert paperkey.BEGIN in (tmp_path / "key.txt").read_text()
    assert main(["key", "export", "-o", "key.txt"]) == exit_codes.USAGE  # never overwrites
    (tmp_path / "wrong").write_text("not the password\n")
    assert main(["key", "export", "-o", "other.txt", "--password-file", "wrong"]) == exit_codes.WRONG_PASSWORD
    assert not (tmp_path / "other.txt").exists()
    capsys.readouterr()
    assert main(["check", "--json"]) == 0
    assert not any("never exported" in w for w in json.loads(capsys.readouterr().out)["warnings"])

    # Lose the only key file: the repository does not open; the text export brings it back.
    (slot,) = [p for p in (repo / "keys").iterdir() if p.is_file()]
    slot.unlink()
    assert main(["snapshots"]) == exit_codes.INTEGRITY
    assert "key import" in capsys.readouterr().err
    assert main(["key", "import", "key.txt"]) == 0
    assert "imported key" in capsys.readouterr().out
    assert main(["snapshots"]) == 0

    # Damage the config: exit code 9, a hint naming the repair; `repair config` fixes it.
    config = (repo / "config").read_bytes()
    (repo / "config").write_bytes(config.replace(b"cdc_avg", b"cdv_avg"))
    capsys.readouterr()
    assert main(["snapshots"]) == exit_codes.INTEGRITY
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config is damaged" in err and "cargohold repair config" in err
    assert main(["repair", "config"]) == 0
    assert "restored the config" in capsys.readouterr().out
    assert (repo / "config").read_bytes() == config
    assert main(["repair", "config"]) == 0
    assert "intact" in capsys.readouterr().out

    # The paper key, typed into stdin with a typo, names the line; without, it imports.
    lines = paper_lines(paper)
    typo = lines[3][:6] + ("0" if lines[3][6] != "0" else "1") + lines[3][7:]
    (tmp_path / "typed.txt").write_text("\n".join([*lines[:3], typo, *lines[4:]]))
    assert main(["key", "import", "typed.txt"]) == exit_codes.USAGE
    assert "line 4 of typed.txt has a typo" in capsys.readouterr().err
    (tmp_path / "typed.txt").write_text("\n".join(lines))
    assert main(["key", "import", "typed.txt", "--label", "paper"]) == 0
    capsys.readouterr()
    assert main(["key", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["keys"]
    assert sorted(k["label"] for k in listed) == ["imported", "paper"]
    assert all(k["checksum"] and k["config_copy"] for k in listed)
