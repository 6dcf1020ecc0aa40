"""`cargohold audit` on files: output formats, exit codes, --fix and --dry-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from cargohold.cli import audit as audit_cli
from cargohold.cli.app import main

COMPOSE = """\
services:
  db:
    image: postgres:16   # database
  web:
    image: nginx
    volumes:
      - ./site:/usr/share/nginx/html:ro
"""


def _app() -> typer.Typer:
    app = typer.Typer()
    audit_cli.register(app)

    @app.callback()
    def _root() -> None:
        pass

    return app


def _project(tmp_path: Path, text: str = COMPOSE) -> Path:
    (tmp_path / "site").mkdir(exist_ok=True)
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    return path


def test_register_adds_audit_and_adopt() -> None:
    names = {c.name for c in _app().registered_commands}
    assert {"audit", "adopt"} <= names


def test_json_shape_and_exit_code(tmp_path: Path) -> None:
    path = _project(tmp_path)
    res = CliRunner().invoke(_app(), ["audit", "-f", str(path), "--json"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["source"] == "files" and doc["project"] == tmp_path.name.lower()
    rules = {f["rule"] for f in doc["findings"]}
    assert "stateful-data-anonymous-volume" in rules
    for f in doc["findings"]:
        assert {"rule", "severity", "service", "container", "path", "message", "fix"} <= set(f)
    assert doc["summary"]["high"] >= 1


def test_fail_on_levels(tmp_path: Path) -> None:
    path = _project(
        tmp_path, "services:\n  db:\n    image: postgres\n    volumes: [pg:/var/lib/postgresql/data]\nvolumes:\n  pg:\n"
    )
    runner = CliRunner()
    assert runner.invoke(_app(), ["audit", "-f", str(path)]).exit_code == 0  # only low + info
    assert runner.invoke(_app(), ["audit", "-f", str(path), "--fail-on", "low"]).exit_code == 1
    assert runner.invoke(_app(), ["audit", "-f", str(path), "--fail-on", "none"]).exit_code == 0


def test_sarif(tmp_path: Path) -> None:
    path = _project(tmp_path)
    res = CliRunner().invoke(_app(), ["audit", "-f", str(path), "--sarif", "--fail-on", "none"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    result = next(r for r in run["results"] if r["ruleId"] == "stateful-data-anonymous-volume")
    assert rule_ids[result["ruleIndex"]] == result["ruleId"]
    assert result["level"] == "error"
    loc = result["locations"][0]["physicalLocation"]
    assert loc["region"]["startLine"] == 2 and loc["artifactLocation"]["uri"].endswith("compose.yaml")


def test_plain_table_when_piped(tmp_path: Path) -> None:
    path = _project(tmp_path)
    res = CliRunner().invoke(_app(), ["audit", "-f", str(path)])
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["#", "SEVERITY", "RULE", "SUBJECT"]
    assert "How to fix:" in res.stdout and "db-data:/var/lib/postgresql/data" in res.stdout
    assert "findings:" in lines[-1]


def test_dry_run_shows_diff_and_writes_nothing(tmp_path: Path) -> None:
    path = _project(tmp_path)
    res = CliRunner().invoke(_app(), ["audit", "-f", str(path), "--fix", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "+      - db-data:/var/lib/postgresql/data" in res.stdout
    assert path.read_text() == COMPOSE


def test_fix_writes_and_keeps_comment(tmp_path: Path) -> None:
    path = _project(tmp_path)
    res = CliRunner().invoke(_app(), ["audit", "-f", str(path), "--fix"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("--- a/")
    text = path.read_text()
    assert "# database" in text and "db-data:/var/lib/postgresql/data" in text
    again = CliRunner().invoke(_app(), ["audit", "-f", str(path), "--fix"])
    assert "nothing to fix" in again.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    path = _project(tmp_path)
    assert main(["audit", "-f", str(path), "--json", "--sarif"]) == 2
    assert main(["audit", "-f", str(path), "--fail-on", "severe"]) == 2
    assert main(["audit", "--live"]) == 2
    assert main(["audit", "-f", str(path), "--dry-run"]) == 2
    assert main(["audit", "-f", str(tmp_path / "missing.yaml")]) == 2


def test_main_exit_code_with_findings(tmp_path: Path) -> None:
    path = _project(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "cargohold.cli.app", "audit", "-f", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["findings"]
