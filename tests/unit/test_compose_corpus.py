"""The compose corpus: every case under tests/compose_corpus/ with its expected findings or error.

Each case is a directory with compose files (and maybe ``.env``, overrides, bind sources)
and ``expected.json``::

    {"files": [...]?,            # -f in order; default: compose's own file discovery
     "project_name": "..."?,     # -p
     "env": {...}?,              # the process environment (nothing else leaks in)
     "project": "..."?,          # expected normalised project name
     "volumes": {"key": "engine name"}?,
     "findings": [[rule, service-or-volume, path, severity, line?], ...]   # exactly these
     "error": {"line": N, "contains": "..."}}                             # or this input error
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cargohold.audit.findings import Finding
from cargohold.errors import ComposeError
from cargohold.services import audit as svc

CORPUS = Path(__file__).resolve().parent.parent / "compose_corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.json").is_file())


def _expected(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS / case / "expected.json").read_text())
    return data


def _load(case: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], svc.AuditReport | ComposeError]:
    exp = _expected(case)
    monkeypatch.chdir(CORPUS / case)
    try:
        report = svc.audit_files(
            exp.get("files", []),
            project_name=exp.get("project_name"),
            environ=exp.get("env", {}),
        )
    except ComposeError as err:
        return exp, err
    return exp, report


def _key(f: Finding) -> tuple[Any, ...]:
    subject = f.service or f.container or f.volume
    return (f.rule, subject, f.path, f.severity.value)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert sum(1 for c in CASES if "error" in _expected(c)) >= 6


@pytest.mark.parametrize("case", CASES)
def test_case(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    exp, result = _load(case, monkeypatch)
    if "error" in exp:
        assert isinstance(result, ComposeError), f"expected an input error, got {result}"
        assert result.line == exp["error"]["line"], str(result)
        assert exp["error"]["contains"] in str(result)
        assert "\n" not in str(result)
        return
    assert isinstance(result, svc.AuditReport), str(result)
    got = sorted(_key(f) for f in result.findings)
    want = sorted(tuple(f[:4]) for f in exp["findings"])
    assert got == want
    lines = {tuple(f[:4]): f[4] for f in exp["findings"] if len(f) > 4}
    for f in result.findings:
        if _key(f) in lines:
            assert f.line == lines[_key(f)], f
    if "project" in exp:
        assert result.project == exp["project"]


@pytest.mark.parametrize("case", [c for c in CASES if "volumes" in _expected(c)])
def test_volume_names(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = _expected(case)
    monkeypatch.chdir(CORPUS / case)
    project = svc.load(exp.get("files", []), environ=exp.get("env", {}))
    assert {k: v.name for k, v in project.volumes.items()} == exp["volumes"]


@pytest.mark.parametrize("case", ["12-required-variable", "26-malformed-yaml", "27-duplicate-key"])
def test_cli_input_errors_are_one_line_exit_2(case: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cargohold.cli.app", "audit", "-f", "compose.yaml"],
        cwd=CORPUS / case,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith("cargohold: error: compose.yaml:")
