"""What the audit reports: severities, rules (stable ids with explanation) and findings."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def at_least(self, other: Severity) -> bool:
        return self.rank >= other.rank

    @classmethod
    def parse(cls, value: str) -> Severity:
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise ValueError(f"unknown severity {value!r} (high, medium, low, info)") from None


_RANKS = {Severity.INFO: 0, Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3}


@dataclass(frozen=True, slots=True)
class Rule:
    """A check with a stable id. ``explanation`` is one paragraph for humans and SARIF."""

    id: str
    title: str
    severity: Severity
    explanation: str


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    severity: Severity
    message: str
    #: What to do, concretely: a compose snippet, a command or a label.
    fix: str
    #: Compose service (files, or a live container of a compose project).
    service: str | None = None
    #: Live container name.
    container: str | None = None
    project: str | None = None
    #: Path inside the container the finding is about.
    path: str | None = None
    volume: str | None = None
    file: str | None = None
    line: int | None = None
    #: Bytes at stake, when known (writable layer, dangling volume).
    size: int | None = None

    @property
    def subject(self) -> str:
        """Who the finding is about, for a table: container, service, volume or project."""
        if self.container:
            return self.container
        if self.service:
            return f"{self.project}/{self.service}" if self.project else self.service
        if self.volume:
            return f"volume {self.volume}"
        return self.project or "-"

    def sort_key(self) -> tuple[Any, ...]:
        return (
            -self.severity.rank,
            self.file or "",
            self.line or 0,
            self.container or self.service or "",
            self.path or "",
            self.volume or "",
            self.rule,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity.value,
            "message": self.message,
            "fix": self.fix,
            "service": self.service,
            "container": self.container,
            "project": self.project,
            "path": self.path,
            "volume": self.volume,
            "file": self.file,
            "line": self.line,
            "size_bytes": self.size,
        }
