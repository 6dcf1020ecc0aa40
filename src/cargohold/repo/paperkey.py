"""Key exports as text: a file to keep (base64) and a paper key to print or type by hand.

Both carry the same binary *payload* (big-endian, docs/FORMAT-keys-locks.md)::

    "CHKX" | u8 version = 1 | repository id 16 | u8 time_cost | u32 memory_kib |
    u8 parallelism | u8 n | salt (n) | u16 n | wrapped master key (n) |
    u16 n | sealed config copy (n) | first 4 bytes of SHA-256(everything before)

The text form wraps the base64 of the payload in ``-----BEGIN CARGOHOLD KEY-----`` /
``-----END CARGOHOLD KEY-----`` lines. The paper form writes it as numbered lines of up to
18 bytes in groups of 4 hex digits, each followed by its own check (4 hex digits), so a
typo is found and named by line::

     1: 4348 4b58 0108 fbf0 aac0 16aa 163f a5f5 0102 - 3a9f

Lines of other shapes (headings, notes) are ignored on import, and so are the letters
``o`` (read as 0) and ``l``/``i`` (read as 1) that hand-typing confuses with digits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct

from cargohold.errors import IntegrityError, UnsupportedFormat, UsageError
from cargohold.repo.keys import ExportedKey, KdfParams

MAGIC = b"CHKX"
VERSION = 1
BEGIN = "-----BEGIN CARGOHOLD KEY-----"
END = "-----END CARGOHOLD KEY-----"
LINE_BYTES = 18
_CHECK_LEN = 4
_TEXT_WIDTH = 64
_LINE_RE = re.compile(r"^\s*(\d+)\s*:(.*)$")
_PAPER_RE = re.compile(r"^([0-9a-f\s]*)-\s*([0-9a-f]{4})\s*$")
_TYPO = str.maketrans({"o": "0", "l": "1", "i": "1"})


# --- payload ---------------------------------------------------------------------------------


def encode_payload(key: ExportedKey) -> bytes:
    kdf = key.kdf
    body = (
        MAGIC
        + bytes([VERSION])
        + bytes.fromhex(key.repo_id)
        + struct.pack(">BIB", kdf.time_cost, kdf.memory_kib, kdf.parallelism)
        + bytes([len(key.salt)])
        + key.salt
        + struct.pack(">H", len(key.wrapped))
        + key.wrapped
        + struct.pack(">H", len(key.config))
        + key.config
    )
    return body + hashlib.sha256(body).digest()[:_CHECK_LEN]


class _Short(Exception):
    """The payload ends early; ``need`` = how many bytes it should have at least."""

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


def _payload_length(data: bytes) -> int:
    """The full length the payload's own length fields announce (raises _Short when even
    those are cut off)."""
    pos = 4 + 1 + 16 + 6
    for size in (1, 2, 2):
        if len(data) < pos + size:
            raise _Short(pos + size)
        n = data[pos] if size == 1 else struct.unpack(">H", data[pos : pos + 2])[0]
        pos += size + n
    return pos + _CHECK_LEN


def decode_payload(data: bytes, *, what: str = "the exported key") -> ExportedKey:
    """Parse and verify a payload; IntegrityError when it is damaged or incomplete."""
    if data[:4] != MAGIC:
        raise IntegrityError(f"{what} is not a cargohold key export (or its start is damaged)")
    if data[4:5] != bytes([VERSION]):
        # Every version ends with the check over everything before it: without a match the
        # version byte is as likely damaged as new.
        if (
            len(data) <= 5 + _CHECK_LEN
            or hashlib.sha256(data[:-_CHECK_LEN]).digest()[:_CHECK_LEN] != data[-_CHECK_LEN:]
        ):
            raise IntegrityError(f"{what} is damaged: its checksum does not match")
        raise UnsupportedFormat(f"{what} has export format version {data[4]}; this cargohold reads {VERSION}")
    try:
        total = _payload_length(data)
    except _Short:
        raise IntegrityError(f"{what} is incomplete (it ends after {len(data)} bytes)") from None
    if len(data) != total:
        raise IntegrityError(f"{what} has {len(data)} bytes where it announces {total} (incomplete or damaged)")
    body, check = data[:-_CHECK_LEN], data[-_CHECK_LEN:]
    if hashlib.sha256(body).digest()[:_CHECK_LEN] != check:
        raise IntegrityError(f"{what} is damaged: its checksum does not match")
    repo_id = body[5:21].hex()
    time_cost, memory_kib, parallelism = struct.unpack(">BIB", body[21:27])
    pos = 27
    salt = body[pos + 1 : pos + 1 + body[pos]]
    pos += 1 + body[pos]
    (n,) = struct.unpack(">H", body[pos : pos + 2])
    wrapped = body[pos + 2 : pos + 2 + n]
    pos += 2 + n
    (n,) = struct.unpack(">H", body[pos : pos + 2])
    config = body[pos + 2 : pos + 2 + n]
    try:
        kdf = KdfParams(time_cost=time_cost, memory_kib=memory_kib, parallelism=parallelism)
    except ValueError as err:
        raise IntegrityError(f"{what} is damaged: {err}") from None
    return ExportedKey(repo_id=repo_id, kdf=kdf, salt=salt, wrapped=wrapped, config=config)


# --- rendering -------------------------------------------------------------------------------


def _heading(key: ExportedKey, created: str) -> list[str]:
    return [
        f"cargohold key of repository {key.repo_id}, exported {created}",
        "It opens the repository with the password the key had when exported. Keep it away from the repository.",
        "To use it: cargohold key import FILE   (or type the numbered lines into: cargohold key import -)",
    ]


def render_text(key: ExportedKey, *, created: str) -> str:
    b64 = base64.b64encode(encode_payload(key)).decode("ascii")
    body = [b64[i : i + _TEXT_WIDTH] for i in range(0, len(b64), _TEXT_WIDTH)]
    return "\n".join([*_heading(key, created), BEGIN, *body, END]) + "\n"


def line_check(number: int, data: bytes) -> str:
    """The check of paper line ``number`` (1-based) holding ``data``: 4 hex digits."""
    return hashlib.sha256(b"cargohold-paper\0" + struct.pack(">H", number) + data).hexdigest()[:_CHECK_LEN]


def render_paper(key: ExportedKey, *, created: str) -> str:
    payload = encode_payload(key)
    chunks = [payload[i : i + LINE_BYTES] for i in range(0, len(payload), LINE_BYTES)]
    width = len(str(len(chunks)))
    lines = []
    for number, chunk in enumerate(chunks, 1):
        h = chunk.hex()
        groups = " ".join(h[i : i + 4] for i in range(0, len(h), 4))
        lines.append(f"{number:>{width}}: {groups} - {line_check(number, chunk)}")
    return "\n".join([*_heading(key, created), "", *lines]) + "\n"


# --- parsing ---------------------------------------------------------------------------------


def parse(text: str, *, what: str = "the exported key") -> ExportedKey:
    """An export in either form. Typos in a paper key raise UsageError naming the line;
    a text export that does not verify raises IntegrityError."""
    if BEGIN in text:
        return _parse_text(text, what)
    return _parse_paper(text, what)


def _parse_text(text: str, what: str) -> ExportedKey:
    after = text.split(BEGIN, 1)[1]
    if END not in after:
        raise IntegrityError(f"{what} is incomplete: the line {END} is missing")
    b64 = "".join(after.split(END, 1)[0].split())
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{what} is damaged: its base64 text has characters or padding it cannot have") from None
    return decode_payload(data, what=what)


def _parse_paper(text: str, what: str) -> ExportedKey:
    found: dict[int, bytes] = {}
    for raw in text.splitlines():
        m = _LINE_RE.match(raw)
        if m is None:
            continue
        number = int(m.group(1))
        body = m.group(2).lower().translate(_TYPO)
        pm = _PAPER_RE.match(body.strip())
        if pm is None:
            raise UsageError(
                f"line {number} of {what} is not of the form 'N: hex groups - check' (a typo?)",
                hint=f"compare line {number} with the paper key",
            )
        digits = "".join(pm.group(1).split())
        if len(digits) % 2 or not digits:
            raise UsageError(
                f"line {number} of {what} has {len(digits)} hex digits: one is missing or extra",
                hint=f"compare line {number} with the paper key",
            )
        data = bytes.fromhex(digits)
        if line_check(number, data) != pm.group(2):
            raise UsageError(
                f"line {number} of {what} has a typo: its check {pm.group(2)} does not match its digits",
                hint=f"compare line {number} with the paper key, group by group",
            )
        if number in found and found[number] != data:
            raise UsageError(f"line {number} of {what} is given twice, differently")
        found[number] = data
    if not found:
        raise UsageError(
            f"{what} holds no key: neither a {BEGIN} block nor numbered paper-key lines",
            hint="give the file `cargohold key export` wrote, or the lines of the paper key",
        )
    last = max(found)
    missing = [n for n in range(1, last + 1) if n not in found]
    if missing:
        raise UsageError(f"line(s) {', '.join(map(str, missing))} of {what} are missing")
    data = b"".join(found[n] for n in range(1, last + 1))
    if data[:4] == MAGIC and data[4:5] == bytes([VERSION]):
        at_least = ""
        try:
            total = _payload_length(data)
        except _Short as short:
            total, at_least = short.need, "at least "
        if len(data) < total:
            lines = -(-total // LINE_BYTES)
            raise UsageError(
                f"{what} is incomplete: it has {at_least}{lines} lines, the lines after line {last} are missing"
            )
    return decode_payload(data, what=what)
