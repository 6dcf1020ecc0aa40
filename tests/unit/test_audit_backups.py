"""Backup facts from a real (local) repository feed the backup rules, through the CLI too."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cargohold.cli.app import app
from cargohold.model.backups import BackupRecord
from cargohold.model.consistency import Mode
from cargohold.repo import verifications
from cargohold.repo.snapshot import Snapshot, Source
from cargohold.services import audit as svc
from cargohold.services import repository

PASSWORD = "correct horse"


@pytest.fixture
def repo_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CARGOHOLD_KDF", "fast")
    url = str(tmp_path / "repo")
    repo = repository.init_repository(url, PASSWORD)
    now = datetime.now(UTC)
    snaps = [
        Snapshot(tree=b"\0" * 32, time=now - timedelta(days=3), source=Source("volume", "proj_db", {})),
        Snapshot(
            tree=b"\0" * 32,
            time=now - timedelta(hours=1),
            source=Source("volume", "proj_db", {"consistency": {"mode": "dump", "containers": {}}}),
        ),
        Snapshot(tree=b"\0" * 32, time=now - timedelta(days=5), source=Source("volume", "proj_old", {})),
        Snapshot(tree=b"\0" * 32, time=now, source=Source("path", "/etc", {})),
    ]
    for s in snaps:
        repo.save_snapshot(s)

    def record(name: str, ok: bool, when: datetime) -> verifications.VerificationRecord:
        return verifications.VerificationRecord(
            snapshot_id="0" * 64, source_kind="volume", source_name=name, time=when, ok=ok, method="volume", via="api"
        )

    verifications.save(repo, record("proj_db", True, now - timedelta(minutes=30)))
    verifications.save(repo, record("proj_old", False, now))  # a failed verification proves nothing
    repo.close()
    return url


def test_backups_from_repository(repo_url: str) -> None:
    index = svc.backups_from_repository(repo_url, PASSWORD)
    assert set(index) == {"proj_db", "proj_old"}
    db: BackupRecord = index["proj_db"]
    assert db.consistency is Mode.DUMP and db.last_verified is not None
    assert index["proj_old"].last_verified is None


def test_cli_reads_backups_from_repo(repo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        "name: proj\nservices:\n  db:\n    image: postgres\n    labels: {cargohold.consistency: dump}\n"
        "    volumes: [db:/var/lib/postgresql/data]\n  app:\n    image: nginx\n"
        "    volumes: [old:/srv, new:/new]\nvolumes:\n  db:\n  old:\n  new:\n"
    )
    monkeypatch.setenv("CARGOHOLD_PASSWORD", PASSWORD)
    res = CliRunner().invoke(app, ["audit", "-f", str(compose), "--repo", repo_url, "--json", "--fail-on", "none"])
    assert res.exit_code == 0, res.output
    found = sorted(
        (f["rule"], f["volume"]) for f in json.loads(res.stdout)["findings"] if f["rule"].startswith("backup")
    )
    assert found == [
        ("backup-missing", "proj_new"),
        ("backup-stale", "proj_old"),
        ("backup-unverified", "proj_old"),
    ]
    monkeypatch.delenv("CARGOHOLD_PASSWORD")
    res = CliRunner().invoke(app, ["audit", "-f", str(compose), "--repo", repo_url])
    assert res.exit_code != 0 and "password" in str(res.exception or res.output)
