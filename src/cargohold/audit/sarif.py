"""Findings as SARIF 2.1.0, for CI code scanning (GitHub, GitLab)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cargohold.audit.findings import Finding, Severity
from cargohold.audit.rules import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.HIGH: "error", Severity.MEDIUM: "warning", Severity.LOW: "note", Severity.INFO: "note"}
_SCORE = {Severity.HIGH: "8.0", Severity.MEDIUM: "5.0", Severity.LOW: "2.0", Severity.INFO: "0.0"}


def _uri(file: str, base: Path) -> str:
    path = Path(file)
    if path.is_absolute():
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            return path.as_uri()
    return path.as_posix()


def to_sarif(findings: Iterable[Finding], *, version: str, base: Path | None = None) -> dict[str, Any]:
    """One SARIF run; file locations relative to ``base`` (default: current directory)."""
    root = (base or Path(os.getcwd())).absolute()
    found = list(findings)
    used = sorted({f.rule for f in found})
    index = {rule_id: i for i, rule_id in enumerate(used)}
    rules = [
        {
            "id": r.id,
            "name": r.id.title().replace("-", ""),
            "shortDescription": {"text": r.title},
            "fullDescription": {"text": r.explanation},
            "help": {"text": r.explanation},
            "defaultConfiguration": {"level": _LEVEL[r.severity]},
            "properties": {"security-severity": _SCORE[r.severity], "tags": ["docker", "data-loss"]},
        }
        for r in (RULES[i] for i in used)
    ]
    results = []
    for f in found:
        result: dict[str, Any] = {
            "ruleId": f.rule,
            "ruleIndex": index[f.rule],
            "level": _LEVEL[f.severity],
            "message": {"text": f"{f.message}\nFix: {f.fix}"},
            "properties": {"severity": f.severity.value},
        }
        if f.file:
            region = {"startLine": f.line} if f.line else {}
            result["locations"] = [
                {"physicalLocation": {"artifactLocation": {"uri": _uri(f.file, root)}, "region": region}}
            ]
        else:
            result["locations"] = [
                {"logicalLocations": [{"name": f.subject, "kind": "container" if f.container else "resource"}]}
            ]
        key = ":".join(str(x) for x in (f.rule, f.container or f.service or f.volume or "", f.path or ""))
        result["partialFingerprints"] = {"cargoholdFinding/v1": key}
        results.append(result)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "cargohold",
                        "version": version,
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }
