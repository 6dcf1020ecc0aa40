"""``.env`` files as compose reads them.

``KEY=VALUE`` per line, optional ``export``, ``#`` comments (whole line, or after a
space in an unquoted value), single quotes (literal), double quotes (escapes ``\\n``,
``\\"``, ``\\\\``, and interpolation), unquoted values (trimmed, interpolated). Earlier
keys and the process environment are visible to later values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from cargohold.compose.interpolate import InterpolationError, interpolate
from cargohold.errors import ComposeError

_KEY = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_.\-]*)\s*(=|$)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def _double_quoted(body: str, path: str, line: int) -> tuple[str, str]:
    """Parse after the opening quote; return (value, rest after the closing quote)."""
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "$":
                out.append("$$")  # keep it literal through interpolation
            else:
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        if ch == '"':
            return "".join(out), body[i + 1 :]
        out.append(ch)
        i += 1
    raise ComposeError("unterminated double-quoted value", file=path, line=line)


def parse_env_text(text: str, path: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of an env file; ``base`` (the process environment) is seen by values."""
    result: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        lineno = i + 1
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _KEY.match(stripped)
        if match is None:
            raise ComposeError(f"invalid line in env file: {stripped[:60]!r}", file=path, line=lineno)
        key = match.group(1)
        if match.group(2) != "=":
            continue  # "KEY" alone: take it from the environment, compose does the same
        value_text = stripped[match.end() :].lstrip()
        scope = {**(base or {}), **result}
        if value_text.startswith("'"):
            end = value_text.find("'", 1)
            while end < 0 and i < len(lines):  # multi-line single-quoted value
                value_text += "\n" + lines[i]
                i += 1
                end = value_text.find("'", 1)
            if end < 0:
                raise ComposeError("unterminated single-quoted value", file=path, line=lineno)
            result[key] = value_text[1:end]
            continue
        try:
            if value_text.startswith('"'):
                body = value_text[1:]
                while True:
                    try:
                        value, _rest = _double_quoted(body, path, lineno)
                        break
                    except ComposeError:
                        if i >= len(lines):
                            raise
                        body += "\n" + lines[i]
                        i += 1
                result[key] = interpolate(value, scope)
                continue
            comment = re.search(r"\s#", value_text)
            if comment is not None:
                value_text = value_text[: comment.start()]
            result[key] = interpolate(value_text.strip(), scope)
        except InterpolationError as err:
            raise ComposeError(str(err), file=path, line=lineno) from None
    return result


def load_env_file(path: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ComposeError("not UTF-8 text", file=str(path)) from None
    except OSError as err:
        raise ComposeError(f"cannot read: {err.strerror or err}", file=str(path)) from None
    return parse_env_text(text, str(path), base)
