"""Key exports, key import and config repair: the library API behind ``cargohold key
export|import`` and ``cargohold repair config`` (the other ``key`` commands are in
:mod:`cargohold.services.repository`).

A repository whose only key file is damaged is lost; an export (text or paper) kept
elsewhere is a second way in. Exports are recorded as ``keys/exports/<16 hex>`` so that
``check`` can warn about a repository with one key slot and no export (:func:`key_warnings`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cargohold.backends.base import Backend
from cargohold.errors import (
    BackendError,
    ConfigDamaged,
    IntegrityError,
    ObjectNotFound,
    RepositoryNotFound,
    UsageError,
)
from cargohold.repo import keys as keyslots
from cargohold.repo import paperkey
from cargohold.repo.repository import CONFIG_NAME, RepoConfig, Repository, config_where, read_config
from cargohold.repo.storage import open_storage
from cargohold.services.repository import locks_of

PAPER = "paper"
TEXT = "text"


# --- export ------------------------------------------------------------------------------------


def export_key(repo: Repository, password: str, *, paper: bool = False, write: Callable[[str], object]) -> str:
    """Write an export of ``repo``'s key, sealed by ``password`` (the password that opened
    ``repo``: the export opens with it), through ``write``; then record the export in the
    repository. Returns the text written."""
    exported = keyslots.export_key(repo.key, repo.config, password)
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    render = paperkey.render_paper if paper else paperkey.render_text
    text = render(exported, created=created)
    write(text)
    keyslots.record_export(repo.backend, form=PAPER if paper else TEXT, slot=repo.key_id)
    return text


# --- import ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    slot_id: str
    repo_id: str
    #: The config was missing or damaged and was written from the export's verified copy.
    config_restored: bool
    #: Which object proved the key belongs to this repository ("" when it holds none yet).
    verified_with: str


def _has_repository_objects(backend: Backend) -> bool:
    return any(next(iter(backend.list(prefix)), None) is not None for prefix in ("keys/", "index/", "snapshots/"))


def _prove_key(repo: Repository) -> str:
    """Name an object the key decrypts or vouches for; UsageError when the repository has
    snapshots, index files or key slots with config copies and the key fits none of them (it
    is another repository's key)."""
    vouched, foreign = keyslots.config_copies_of(repo.backend, repo.key)
    if vouched:
        return f"keys/{vouched[0]}"
    tried = len(foreign)
    for sid in repo.list_snapshot_ids()[:3]:
        tried += 1
        with contextlib.suppress(IntegrityError, BackendError):
            repo.load_snapshot(sid)
            return f"snapshots/{sid}"
    for name in repo.list_index_files()[:3]:
        tried += 1
        with contextlib.suppress(IntegrityError, BackendError):
            repo.read_index_file(name)
            return f"index/{name}"
    if tried:
        raise UsageError(
            f"the exported key of repository {repo.config.id} fits none of the {tried} key slot, snapshot or "
            f"index object(s) tried at {repo.backend.url}: it is not this repository's key",
            hint="import it into the repository it was exported from",
        )
    return ""


def write_config(backend: Backend, config: RepoConfig) -> None:
    """Store ``config`` and read it back (it must verify and equal ``config``)."""
    backend.store(CONFIG_NAME, config.encode())
    if read_config(backend) != config:  # pragma: no cover - a backend that returns other bytes
        raise IntegrityError(f"{config_where(backend)} reads back differently after writing it")


def import_key(url: str, text: str, password: str, *, label: str = "imported", what: str = "") -> ImportResult:
    """Add a key slot for ``password`` from an export (text or paper form, see
    :mod:`cargohold.repo.paperkey`). Works when every key file is damaged or gone; when the
    config is missing or damaged too it is restored from the export's verified copy."""
    exported = paperkey.parse(text, what=what or "the exported key")
    master, config = keyslots.open_export(exported, password)
    backend = open_storage(url)  # remote stores with retries
    restore = False
    try:
        current = read_config(backend)
    except ConfigDamaged:
        restore = True
    except RepositoryNotFound:
        if not _has_repository_objects(backend):
            raise RepositoryNotFound(f"no repository at {url}: nothing to import the key of {config.id} into") from None
        restore = True
    else:
        if current.id != config.id:
            raise UsageError(
                f"the exported key is of repository {config.id}, but the repository at {url} is {current.id}",
                hint="import it into the repository it was exported from",
            )
        restore = current != config
    repo = Repository(backend, master, config)
    evidence = _prove_key(repo)
    with locks_of(repo).exclusive("key import"):
        if restore:
            write_config(backend, config)
        slot_id = keyslots.create_key(backend, password, master, label=label, config=config)
    return ImportResult(slot_id=slot_id, repo_id=config.id, config_restored=restore, verified_with=evidence)


# --- repair ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairResult:
    #: "restored" (written from a verified copy), "rewritten" (intact, now in the current form
    #: with its checksum) or "intact" (nothing to do).
    action: str
    slot_id: str
    #: What was wrong with the config before ("" when nothing was).
    problem: str = ""
    #: The config was compared with (or restored from) a verified copy in the slot.
    compared: bool = False


def repair_config(url: str, password: str) -> RepairResult:
    """Restore a damaged or missing ``config`` from the verified copy in the key slot that
    ``password`` opens. An intact config is left alone (or rewritten with its checksum when
    it predates checksums)."""
    backend = open_storage(url)  # remote stores with retries
    current: RepoConfig | None = None
    problem = ""
    try:
        current = read_config(backend)
    except ConfigDamaged as err:
        problem = err.message
    opened = keyslots.open_slots(backend, password)
    copy = opened.config
    if copy is None:
        if current is not None:
            return _rewrite_if_old(backend, current, opened)
        why = opened.config_problem or f"key slot {opened.slot_id} (this password's) has no copy of the config"
        raise ConfigDamaged(
            f"{problem}; {why}",
            hint="try the password of another key slot (slots written by a cargohold with config copies hold one), "
            "or `cargohold key import FILE` with an exported key",
        )
    if current == copy:
        return _rewrite_if_old(backend, current, opened)
    if current is not None:
        differ = sorted(k for k, v in copy.to_doc().items() if current.to_doc()[k] != v)
        problem = f"{config_where(backend)} differs from the verified copy in {', '.join(differ)}"
    repo = Repository(backend, opened.master, copy, opened.slot_id)
    with locks_of(repo).exclusive("repair config"):
        write_config(backend, copy)
    return RepairResult("restored", opened.slot_id, problem, compared=True)


def _rewrite_if_old(backend: Backend, current: RepoConfig, opened: keyslots.Unlocked) -> RepairResult:
    try:
        raw = backend.load(CONFIG_NAME)
    except ObjectNotFound:  # pragma: no cover - deleted meanwhile
        raw = b""
    compared = opened.config is not None
    if raw == current.encode():
        return RepairResult("intact", opened.slot_id, compared=compared)
    repo = Repository(backend, opened.master, current, opened.slot_id)
    with locks_of(repo).exclusive("repair config"):
        write_config(backend, current)
    why = "the config had no checksum (written by an older cargohold)"
    return RepairResult("rewritten", opened.slot_id, why, compared=compared)


# --- warnings for check ------------------------------------------------------------------------


def key_warnings(repo: Repository) -> list[str]:
    """What ``check`` warns about the keys: a single key slot whose key was never exported,
    slots from before checksums and config copies, a config from before its checksum."""
    out: list[str] = []
    slots = keyslots.list_keys(repo.backend)
    if len(slots) == 1 and not keyslots.list_exports(repo.backend):
        out.append(
            f"the repository has a single key slot (keys/{slots[0].id}) and its key was never exported: "
            "if that key file is damaged or lost, every snapshot is lost — run `cargohold key export --paper` "
            "(or `key export -o FILE`) and keep it apart from the repository, "
            "or add a password with `cargohold key add`"
        )
    old = [s.id for s in slots if not (s.checksummed and s.has_config)]
    if old:
        out.append(
            f"key slot(s) {', '.join(old)} were written before key files carried a checksum and a copy of the config: "
            "damage to them reads as a wrong password and they cannot repair the config — replace each with "
            "`cargohold key passwd` (the same password may be given again)"
        )
    with contextlib.suppress(BackendError):
        if repo.backend.load(CONFIG_NAME) != repo.config.encode():
            out.append("the config has no checksum (written by an older cargohold): `cargohold repair config` adds it")
    return out
