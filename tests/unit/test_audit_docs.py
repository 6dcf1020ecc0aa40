"""docs/AUDIT.md documents every rule and every knowledge-base image."""

from __future__ import annotations

from pathlib import Path

from cargohold.audit.knowledge import image_keys
from cargohold.audit.rules import RULES

DOC = Path(__file__).resolve().parents[2] / "docs" / "AUDIT.md"


def test_every_rule_is_documented() -> None:
    text = DOC.read_text()
    missing = [r for r in RULES if f"`{r}`" not in text]
    assert not missing


def test_every_image_is_documented() -> None:
    text = DOC.read_text()
    assert not [k for k in image_keys() if f"| {k} |" not in text]
