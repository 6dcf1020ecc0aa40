"""The repository's plaintext ``config``: format version and the settings every writer
must share, stored with a checksum so that any damaged byte reads as damage."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cargohold.backends.base import Backend
from cargohold.errors import ConfigDamaged, ObjectNotFound, RepositoryNotFound, UnsupportedFormat
from cargohold.repo import docsum
from cargohold.repo.chunker import ChunkerParams
from cargohold.repo.format import FORMAT_VERSION, PACK_SIZE

CONFIG_NAME = "config"


#: The fields of ``config`` this format writes; configs written before the checksum existed
#: have all but ``checksum`` (and are still read).
CONFIG_FIELDS = frozenset({"version", "id", "created", "chunker", "compression_level", "pack_size", "checksum"})
_LEGACY_CONFIG_FIELDS = CONFIG_FIELDS - {"checksum"}
_CONFIG_INDENT = 2
_CONFIG_SHOULD_HOLD = (
    "it should be the JSON object of docs/FORMAT.md with exactly version, id (32 hex digits), created, "
    "chunker (cdc_min, cdc_avg, cdc_max, fixed_size, page_size, fixed_min_file), compression_level, "
    "pack_size and checksum"
)
_FIELD_RE = re.compile(rb'"([A-Za-z_]{1,32})"\s*:\s*("(?:[^"\\\n]|\\.){0,80}"|-?[0-9]{1,20})')
_RECOVERABLE = (CONFIG_FIELDS - {"chunker"}) | {
    "cdc_min",
    "cdc_avg",
    "cdc_max",
    "fixed_size",
    "page_size",
    "fixed_min_file",
}


def recover_config_fields(data: bytes) -> dict[str, object]:
    """The fields that can still be read from a damaged config, by name (chunker fields by
    their own names): each ``"name": value`` pair whose name is a config field."""
    found: dict[str, object] = {}
    for m in _FIELD_RE.finditer(data):
        name = m.group(1).decode("ascii")
        if name not in _RECOVERABLE or name in found:
            continue
        try:
            found[name] = json.loads(m.group(2))
        except ValueError:
            continue
    return found


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class RepoConfig:
    """The plaintext ``config`` object: format version and settings every writer must share."""

    id: str
    version: int = FORMAT_VERSION
    created: str = ""
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    compression_level: int = 3
    pack_size: int = PACK_SIZE

    def to_doc(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "id": self.id,
            "created": self.created,
            "chunker": self.chunker.to_json(),
            "compression_level": self.compression_level,
            "pack_size": self.pack_size,
        }

    def encode(self) -> bytes:
        """The stored form, with its checksum (:mod:`cargohold.repo.docsum`)."""
        return docsum.seal(self.to_doc(), _CONFIG_INDENT)

    @classmethod
    def decode(cls, data: bytes, *, where: str = "the repository config") -> RepoConfig:
        """Parse and verify a config. Any damage — unreadable JSON, a checksum or stored-form
        mismatch, an unknown, missing or ill-typed field — raises :class:`ConfigDamaged`
        naming ``where`` and the fields still readable; a newer format version (with a
        checksum that verifies, or none) raises :class:`UnsupportedFormat`."""

        def damaged(reason: str) -> ConfigDamaged:
            recovered = recover_config_fields(data)
            shown = sorted((k, v) for k, v in recovered.items() if k != docsum.FIELD)
            readable = ", ".join(f"{k}={v}" for k, v in shown) or "none"
            return ConfigDamaged(
                f"{where} is damaged: {reason}; {_CONFIG_SHOULD_HOLD}; fields still readable: {readable}",
                recovered=recovered,
            )

        try:
            d: Any = json.loads(data)
        except (UnicodeDecodeError, ValueError) as err:
            raise damaged(f"not valid JSON ({err})") from None
        if not isinstance(d, dict):
            raise damaged("not a JSON object")
        version = d.get("version")
        checked = docsum.FIELD in d
        if checked:
            problem = docsum.problem(d, data, _CONFIG_INDENT)
            if problem is not None:
                if version != FORMAT_VERSION:
                    problem += (
                        f" (it says format version {version!r}: unless a newer cargohold wrote it, "
                        "that number is damaged too)"
                    )
                raise damaged(problem)
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository format version {version!r} is not supported (this is {FORMAT_VERSION})"
            )
        if version != FORMAT_VERSION:
            raise damaged(f"format version {version!r} is not a version number this format ever had")
        expected = CONFIG_FIELDS if checked else _LEGACY_CONFIG_FIELDS
        unknown, missing = sorted(set(d) - expected), sorted(expected - set(d))
        if unknown or missing:
            parts = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
            parts += [f"missing field(s) {', '.join(missing)}"] if missing else []
            raise damaged("; ".join(parts))
        rid, created, level, pack_size = d["id"], d["created"], d["compression_level"], d["pack_size"]
        if not isinstance(rid, str) or len(rid) != 32 or any(c not in "0123456789abcdef" for c in rid):
            raise damaged(f"id {rid!r} is not 32 lowercase hex digits")
        if not isinstance(created, str):
            raise damaged(f"created {created!r} is not a string")
        if not _is_int(level) or not -(1 << 17) <= level <= 22:
            raise damaged(f"compression_level {level!r} is not a zstd level")
        if not _is_int(pack_size) or not 0 < pack_size < 1 << 32:
            raise damaged(f"pack_size {pack_size!r} is not a positive 32-bit integer")
        try:
            chunker = ChunkerParams.from_json(d["chunker"])
        except (ValueError, TypeError) as err:
            raise damaged(str(err)) from None
        return cls(
            id=rid,
            version=FORMAT_VERSION,
            created=created,
            chunker=chunker,
            compression_level=level,
            pack_size=pack_size,
        )


def config_where(backend: Backend) -> str:
    """How errors name the config object of ``backend``."""
    return f"the repository config {backend.url.rstrip('/')}/{CONFIG_NAME}"


def read_config(backend: Backend) -> RepoConfig:
    """The verified config; :class:`ConfigDamaged` when it is damaged, or missing while the
    repository still has key files; :class:`RepositoryNotFound` when nothing is there."""
    try:
        data = backend.load(CONFIG_NAME)
    except ObjectNotFound:
        if any(next(iter(backend.list(prefix)), None) is not None for prefix in ("keys/", "index/", "snapshots/")):
            raise ConfigDamaged(
                f"{config_where(backend)} is missing, but the rest of a repository is there (keys/, index/ or "
                f"snapshots/); {_CONFIG_SHOULD_HOLD}"
            ) from None
        raise RepositoryNotFound(f"no repository at {backend.url}") from None
    return RepoConfig.decode(data, where=config_where(backend))
