"""Interpolation and .env parsing, as compose does them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.compose.envfile import parse_env_text
from cargohold.compose.interpolate import InterpolationError, interpolate
from cargohold.errors import ComposeError

ENV = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("$SET", "value"),
        ("${SET}", "value"),
        ("a${SET}b$SET.c", "avalueb" + "value.c"),
        ("${UNSET:-def}", "def"),
        ("${EMPTY:-def}", "def"),
        ("${EMPTY-def}", ""),
        ("${UNSET-def}", "def"),
        ("${SET:-def}", "value"),
        ("${SET:+rep}", "rep"),
        ("${EMPTY:+rep}", ""),
        ("${EMPTY+rep}", "rep"),
        ("${UNSET+rep}", ""),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("cost: 5$", "cost: 5$"),
        ("${UNSET:-${SET}}", "value"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${UNSET:-a:b/c}", "a:b/c"),
        ("${SET:?must be set}", "value"),
    ],
)
def test_interpolate(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


def test_missing_variables_are_reported_and_empty() -> None:
    missing: list[str] = []
    assert interpolate("x${NOPE}y$ALSO", ENV, on_missing=missing.append) == "xy"
    assert missing == ["NOPE", "ALSO"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${UNSET:?tell me}", "required variable UNSET is missing a value: tell me"),
        ("${EMPTY:?}", "required variable EMPTY is missing a value"),
        ("${UNSET?x}", "required variable UNSET"),
        ("${SET", "unclosed"),
        ("${}", "bad name"),
        ("${1X}", "bad name"),
        ("${SET%x}", "invalid interpolation format"),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError, match=message.replace("?", r"\?")):
        interpolate(text, ENV)


def test_empty_with_question_mark_only_fails_when_unset() -> None:
    assert interpolate("${EMPTY?boom}", ENV) == ""


def test_env_file_forms() -> None:
    text = "\n".join(
        [
            "# comment",
            "",
            "A=1",
            "export B = two words  # trailing comment",
            "C='single $A # kept'",
            'D="double $A\\n\\"q\\""',
            "E=${A}-${MISSING:-dflt}",
            "F=",
            "G",
            'H="multi',
            'line"',
        ]
    )
    env = parse_env_text(text, ".env", {"OUTER": "o"})
    assert env == {
        "A": "1",
        "B": "two words",
        "C": "single $A # kept",
        "D": 'double 1\n"q"',
        "E": "1-dflt",
        "F": "",
        "H": "multi\nline",
    }


def test_env_file_sees_process_environment() -> None:
    assert parse_env_text("X=${OUTER}/x", ".env", {"OUTER": "/o"}) == {"X": "/o/x"}


def test_env_file_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ComposeError) as info:
        parse_env_text("A=1\nnot a valid line\n", "proj/.env")
    assert info.value.file == "proj/.env" and info.value.line == 2
    with pytest.raises(ComposeError, match=r"\.env:1: required variable"):
        parse_env_text("A=${NOPE:?needed}", ".env", {})
