"""Variable interpolation as compose does it: ``$VAR``, ``${VAR}``, defaults, errors, ``$$``.

Supported forms (compose-spec "Interpolation")::

    $VAR  ${VAR}            value, or "" (with a warning) when unset
    ${VAR:-default}         default when VAR is unset or empty
    ${VAR-default}          default when VAR is unset
    ${VAR:?message}         error when VAR is unset or empty
    ${VAR?message}          error when VAR is unset
    ${VAR:+replacement}     replacement when VAR is set and not empty
    ${VAR+replacement}      replacement when VAR is set
    $$                      a literal ``$``

Defaults and replacements may themselves hold interpolations (``${A:-${B}}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """A ``${...}`` is malformed or a required variable is missing (message says which)."""


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` that closes the ``${`` whose body starts at ``start``."""
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def interpolate(
    text: str,
    env: Mapping[str, str],
    *,
    on_missing: Callable[[str], None] | None = None,
) -> str:
    """Expand every variable reference in ``text``; raise :class:`InterpolationError`."""
    if "$" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < n else ""
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt == "{":
            end = _closing_brace(text, i + 2)
            if end < 0:
                raise InterpolationError(f"invalid interpolation format for {text!r}: unclosed '${{'")
            out.append(_expand_braced(text[i + 2 : end], text, env, on_missing))
            i = end + 1
            continue
        match = _NAME.match(text, i + 1)
        if match is None:  # a lone "$" (compose keeps it)
            out.append("$")
            i += 1
            continue
        name = match.group(0)
        value = env.get(name)
        if value is None:
            if on_missing is not None:
                on_missing(name)
            value = ""
        out.append(value)
        i = match.end()
    return "".join(out)


def _expand_braced(body: str, whole: str, env: Mapping[str, str], on_missing: Callable[[str], None] | None) -> str:
    match = _NAME.match(body)
    if match is None:
        raise InterpolationError(f"invalid interpolation format for {whole!r}: bad name in '${{{body}}}'")
    name = match.group(0)
    rest = body[match.end() :]
    value = env.get(name)
    if not rest:
        if value is None:
            if on_missing is not None:
                on_missing(name)
            return ""
        return value
    op = next((o for o in _OPERATORS if rest.startswith(o)), None)
    if op is None:
        raise InterpolationError(f"invalid interpolation format for {whole!r}: '${{{body}}}'")
    arg = rest[len(op) :]
    empty_counts = op.startswith(":")
    unset = value is None or (empty_counts and value == "")
    if op in (":-", "-"):
        return interpolate(arg, env, on_missing=on_missing) if unset else str(value)
    if op in (":+", "+"):
        return "" if unset else interpolate(arg, env, on_missing=on_missing)
    # ":?" and "?"
    if unset:
        detail = interpolate(arg, env, on_missing=on_missing) if arg else ""
        raise InterpolationError(f"required variable {name} is missing a value" + (f": {detail}" if detail else ""))
    return str(value)
