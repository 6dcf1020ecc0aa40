"""Self-checking plaintext JSON objects: the ``config`` and the key slots (``keys/<id>``).

These objects are read before anything can be decrypted, so a damaged byte in them must be
recognised as damage by itself — not mistaken for a newer format or a wrong password.
Each carries a ``checksum`` field::

    "checksum": "sha256:" + hex(SHA-256(compact canonical JSON of every other field))

where *compact canonical JSON* is ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``, and the stored bytes must be exactly the object's *stored form*
(``json.dumps(doc, sort_keys=True, indent=N, ensure_ascii=True) + "\\n"``; N = 2 for the
config, 1 for key slots). Together the two rules make every changed byte detectable: a
change inside a value or a name changes the checksum input, a change in the spacing
breaks the stored form. A reader verifies the checksum before it interprets any other
field (the format version included), so a damaged version number reads as damage.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

FIELD = "checksum"
_PREFIX = "sha256:"


def checksum(doc: dict[str, Any]) -> str:
    """The checksum of ``doc`` without its ``checksum`` field."""
    body = {k: v for k, v in doc.items() if k != FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _PREFIX + hashlib.sha256(text.encode("ascii")).hexdigest()


def stored_form(doc: dict[str, Any], indent: int) -> bytes:
    """The exact bytes an object with this content is stored as."""
    return json.dumps(doc, sort_keys=True, indent=indent, ensure_ascii=True).encode("ascii") + b"\n"


def seal(doc: dict[str, Any], indent: int) -> bytes:
    """``doc`` with its checksum, in stored form."""
    return stored_form({**doc, FIELD: checksum(doc)}, indent)


def problem(doc: dict[str, Any], raw: bytes, indent: int) -> str | None:
    """What is wrong with a parsed object that has a ``checksum`` field, or None when it
    verifies (checksum matches and ``raw`` is exactly its stored form)."""
    if doc.get(FIELD) != checksum(doc):
        return "its checksum does not match its content"
    if stored_form(doc, indent) != raw:
        return "its bytes differ from the stored form of its content (a changed space, line break or escape)"
    return None
