"""Copy snapshots from one repository into another (3-2-1: a second copy elsewhere).

When the two repositories agree on blob ids (the same blob id key: a target made with ``init
--copy-chunker-params-from SOURCE``, :mod:`cargohold.repo.sharedparams`), a copy is a walk
and a transfer by id:

1. Locks: a shared lock on the target (as a backup takes), then a shared lock on the source
   (as a restore takes); the source's snapshots, then its index, then the target's snapshots,
   then its index are read under them — so a prune on either side, which deletes in two
   phases, never removes what this copy reads or deduplicates against.
2. Each selected snapshot (oldest first) that the target does not hold yet — same trees,
   time, source, host, user, tags and paths: :func:`identity` — is walked on the source; every
   tree and data blob the target's index does not list is read from the source (ranged reads
   of the source packs, adjacent blobs in one read), decrypted with the source key, its id
   checked, and re-encrypted under the target's key. The payload (compressed or not) is kept
   as it is: no recompression.
3. Blobs go through the target's normal write path (packs, then an index file); the
   snapshot is written last, after its packs and index: an interruption never leaves a
   snapshot referring to missing data. Every ``checkpoint_bytes`` of copied data an index
   file is written as well, so a killed copy keeps most of its work: the next run finds those
   blobs in the target's index and does not transfer them again; packs written after the
   last index file are leftovers that ``prune`` removes.

When they do not (two repositories made by plain ``init``), the same data has other ids in
each, so the copy is *translated* (:func:`_translate_one`): every data blob of a snapshot is
read from the source (ranged reads, as above), checked, and given its id under the target's
key — stored only when the target lacks that id, its payload re-encrypted, not recompressed —
then every tree is rewritten, children first, with the new ids, and the snapshot points at
the new root. The blobs are read once per run (a map of source to target ids is kept across
the run's snapshots), but a later run reads them again: a target made with
``--copy-chunker-params-from`` reads only what it lacks, and its own backups deduplicate
against the copies. A snapshot is then recognised in the target by everything
:func:`identity` compares except its trees (their ids differ by construction).

Snapshots the target already holds are skipped, so running the same copy again transfers
nothing. The copied snapshot keeps its time, source, host, tags, paths and statistics; its
``parent`` names the target's copy of the source snapshot's parent when there is one (else
none). Verification records (``verify``) are not copied.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from cargohold.errors import IntegrityError, SnapshotNotFound, UsageError
from cargohold.repo.format import BlobType, blob_ad, decode_payload, pack_name
from cargohold.repo.index import Location
from cargohold.repo.locks import LockManager
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.sharedparams import differences
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tree import DIR, FILE, Tree
from cargohold.services.repository import find_snapshot

__all__ = [
    "CopyResult",
    "CopySettings",
    "Selection",
    "SnapshotCopy",
    "copy_snapshots",
    "identity",
    "select",
]

R = TypeVar("R")

#: Adjacent blobs of one source pack are read together when the gap between them is at most this.
_MAX_GAP = 256 * 1024
#: ... and the read stays at most this long (memory: one such read per thread).
_MAX_READ = 4 * 1024 * 1024
#: Jobs handed to the worker threads at once (bounds memory: about this many reads in flight).
_BATCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Selection:
    """Which snapshots of the source to copy. Empty: all of them.

    ``refs``: snapshot ids, unique prefixes or ``latest``; ``sources``: only snapshots of these
    source names; ``tags``: only snapshots having every one of these tags; ``latest``: of the
    snapshots left, the N newest of each source.
    """

    refs: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    latest: int | None = None


@dataclass(frozen=True)
class CopySettings:
    """How to copy: passed in by the caller (the CLI reads the environment, not this module)."""

    #: Seconds to wait for a lock on either repository (0: fail at once).
    lock_wait: float = 0.0
    #: Threads that read, decrypt and re-encrypt blobs (None: 2, or for a remote source as
    #: many as its connections, up to 8, so that the ranged reads' round trips overlap).
    threads: int | None = None
    #: Write an index file after this many stored bytes, so an interrupted copy keeps them.
    checkpoint_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UsageError("copy threads must be at least 1")
        if self.checkpoint_bytes < 1:
            raise UsageError("the copy checkpoint must be a positive number of bytes")


@dataclass
class SnapshotCopy:
    """One selected snapshot: copied (``target_id`` is its new id) or skipped (``target_id``
    is the copy the target holds already)."""

    source_id: str
    target_id: str
    copied: bool
    source_name: str
    time: str
    blobs: int = 0
    #: Stored (encrypted) bytes written into the target; equal to what the source stores for them.
    bytes: int = 0
    #: Plaintext bytes of those blobs.
    raw_bytes: int = 0


@dataclass
class CopyResult:
    snapshots: list[SnapshotCopy] = field(default_factory=list)
    #: The two repositories do not share blob ids: every blob was read and re-identified.
    translated: bool = False
    #: What of blob id key, chunker seed and chunker parameters differs (empty: nothing).
    differences: list[str] = field(default_factory=list)
    #: Source snapshots that could not be read (id -> why): not copied, the others were.
    unreadable: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0

    @property
    def copied(self) -> list[SnapshotCopy]:
        return [s for s in self.snapshots if s.copied]

    @property
    def skipped(self) -> list[SnapshotCopy]:
        return [s for s in self.snapshots if not s.copied]

    @property
    def blobs(self) -> int:
        return sum(s.blobs for s in self.snapshots)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.snapshots)

    @property
    def raw_bytes(self) -> int:
        return sum(s.raw_bytes for s in self.snapshots)


def identity(snap: Snapshot, *, trees: bool = True) -> str:
    """What makes two snapshots (in two repositories with the same blob ids) the same backup:
    trees, time, source, host, user, tags, paths and the root directory's metadata — not the
    id (a hash of the encrypted object), the parent (an id) or the statistics. Without
    ``trees``: the same, for repositories whose blob ids differ (a translated copy)."""
    doc: dict[str, Any] = {
        "time": snap.time.isoformat(),
        "source": snap.source.to_json(),
        "hostname": snap.hostname,
        "username": snap.username,
        "tags": sorted(snap.tags),
        "paths": list(snap.paths),
        "root": snap.root.to_json() if snap.root is not None else None,
    }
    if trees:
        doc["tree"] = snap.tree.hex()
        doc["extra_trees"] = {k: v.hex() for k, v in sorted(snap.extra_trees.items())}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def select(
    repo: Repository, selection: Selection, everything: Sequence[Snapshot], *, complete: bool = False
) -> list[Snapshot]:
    """The snapshots of ``everything`` (the repository's, oldest first) that ``selection``
    names, oldest first. A ``--source`` name without any snapshot is an error (a typo must not
    look like an up-to-date copy); a ref that matches nothing too. ``complete``: every
    snapshot of the repository was readable, so refs are resolved in ``everything`` without
    reading the repository again (else as :func:`find_snapshot` does, which names the
    damage a ref runs into)."""
    if selection.latest is not None and selection.latest < 1:
        raise UsageError("--latest must be at least 1")
    chosen = list(everything)
    if selection.refs:
        among = everything if complete else None
        wanted = {find_snapshot(repo, ref, among=among).id for ref in selection.refs}
        chosen = [s for s in chosen if s.id in wanted]
    if selection.sources:
        names = {s.source.name for s in everything}
        for name in selection.sources:
            if name not in names:
                raise SnapshotNotFound(f"no snapshot of source {name!r} in {repo.backend.url}")
        chosen = [s for s in chosen if s.source.name in selection.sources]
    if selection.tags:
        chosen = [s for s in chosen if set(selection.tags) <= set(s.tags)]
    if selection.latest is not None:
        by_source: dict[tuple[str, str], list[Snapshot]] = defaultdict(list)
        for s in chosen:
            by_source[(s.source.kind, s.source.name)].append(s)
        keep = {s.id for group in by_source.values() for s in group[-selection.latest :]}
        chosen = [s for s in chosen if s.id in keep]
    return chosen


def copy_snapshots(
    source: Repository,
    target: Repository,
    selection: Selection = Selection(),
    *,
    settings: CopySettings = CopySettings(),
    progress: Progress | None = None,
) -> CopyResult:
    """Copy the selected snapshots of ``source`` that ``target`` lacks into ``target``: by
    blob id when the two share blob ids, else translated (:attr:`CopyResult.translated`).

    Raises :class:`~cargohold.errors.IntegrityError` when the source's data is damaged
    (nothing is committed for the snapshot being copied then), and the lock errors. A source
    snapshot that cannot be read at all is listed in :attr:`CopyResult.unreadable`, the
    others are copied.
    """
    shown = progress or NullProgress()
    started = time.monotonic()
    translate = not secrets.compare_digest(source.key.id_key, target.key.id_key)
    result = CopyResult(translated=translate, differences=differences(source, target))
    target_locks = LockManager(target.backend, wait=settings.lock_wait)
    source_locks = LockManager(source.backend, wait=settings.lock_wait)
    with (
        target_locks.shared(f"copy-snapshots from {source.backend.url}"),
        source_locks.shared(f"copy-snapshots to {target.backend.url}"),
    ):
        everything = source.snapshots(errors=result.unreadable)  # a damaged one stops no other
        chosen = select(source, selection, everything, complete=not result.unreadable)
        source.load_index()
        # Snapshots, then the index (as a backup reads its parents): a snapshot is written
        # after its index file, so every snapshot read here has its blobs in the index read next.
        by_trees = not translate
        held = {identity(s, trees=by_trees): s.id for s in target.snapshots(errors={})}
        target.load_index()
        of_source = {s.id: identity(s, trees=by_trees) for s in everything}
        walked: set[bytes] = set()
        ids: dict[bytes, bytes] = {}  # translated copies: source id -> target id, for the run
        for snap in chosen:
            key = identity(snap, trees=by_trees)
            existing = held.get(key)
            if existing is not None:
                result.snapshots.append(_entry(snap, existing, copied=False))
                continue
            parent_key = of_source.get(snap.parent) if snap.parent is not None else None
            parent = held.get(parent_key) if parent_key is not None else None
            if translate:
                entry = _translate_one(source, target, snap, ids, settings, shown)
                trees = {k: ids[v] for k, v in snap.extra_trees.items()}
                copy = replace(snap, parent=parent, id="", tree=ids[snap.tree], extra_trees=trees)
            else:
                entry = _copy_one(source, target, snap, walked, settings, shown)
                copy = replace(snap, parent=parent, id="")
            entry.target_id = target.save_snapshot(copy)  # the commit point, after its index
            held[key] = entry.target_id
            result.snapshots.append(entry)
    result.duration = time.monotonic() - started
    return result


def _entry(snap: Snapshot, target_id: str, *, copied: bool) -> SnapshotCopy:
    return SnapshotCopy(
        source_id=snap.id,
        target_id=target_id,
        copied=copied,
        source_name=snap.source.name,
        time=snap.time.isoformat(),
    )


@dataclass(frozen=True)
class _Blob:
    type: BlobType
    id: bytes
    loc: Location


@dataclass
class _Job:
    """Blobs of one source pack read with one ranged read."""

    pack: bytes
    start: int
    end: int
    blobs: list[_Blob]


def _needed(source: Repository, target: Repository, snap: Snapshot, walked: set[bytes]) -> list[_Blob]:
    """The blobs of ``snap`` the target lacks, reserved in the target (so none is stored twice).

    Every tree is read from the source (and its id checked by ``load_tree``): a tree the target
    already has says nothing about the data below it (a prune may have dropped that data while
    keeping the tree in a pack it did not repack), so nothing is skipped on that ground. Trees
    walked for an earlier snapshot of this run are not walked again: their blobs are in the
    target since that snapshot's index file.
    """
    candidates: dict[bytes, BlobType] = {}
    stack = [t for t in snap.all_trees() if t not in walked]
    while stack:
        tid = stack.pop()
        if tid in walked:
            continue
        walked.add(tid)
        if not target.known(tid):
            candidates[tid] = BlobType.TREE
        for node in source.load_tree(tid).nodes:
            if node.type == DIR and node.subtree is not None:
                if node.subtree not in walked:
                    stack.append(node.subtree)
            elif node.type == FILE:
                for bid in node.content:
                    if bid not in candidates and not target.known(bid):
                        candidates[bid] = BlobType.DATA
    ids = list(candidates)
    flags = target.reserve_many(ids)
    todo = [bid for bid, flag in zip(ids, flags, strict=True) if flag]
    out: list[_Blob] = []
    try:
        for bid in todo:
            out.append(_Blob(candidates[bid], bid, _located(source, snap, bid, candidates[bid])))
    except BaseException:
        target.release_many(todo)
        raise
    return out


def _jobs(blobs: list[_Blob]) -> Iterator[_Job]:
    """Group blobs by source pack; adjacent ones (gaps up to ``_MAX_GAP``) share one read."""
    by_pack: dict[bytes, list[_Blob]] = defaultdict(list)
    for b in blobs:
        by_pack[b.loc.pack].append(b)
    for pack, group in by_pack.items():
        group.sort(key=lambda b: b.loc.offset)
        job: _Job | None = None
        for b in group:
            end = b.loc.offset + b.loc.length
            if job is not None and b.loc.offset - job.end <= _MAX_GAP and end - job.start <= _MAX_READ:
                job.blobs.append(b)
                job.end = max(job.end, end)
                continue
            if job is not None:
                yield job
            job = _Job(pack, b.loc.offset, end, [b])
        if job is not None:
            yield job


def _transfer(source: Repository, target: Repository, job: _Job) -> tuple[int, int, int]:
    """Read one job's range from the source, re-encrypt each blob for the target and add it to
    the target's open packs; returns (blobs, stored bytes, plaintext bytes)."""
    name = pack_name(job.pack)
    data = source.backend.load(name, job.start, job.end - job.start)
    if len(data) != job.end - job.start:
        raise IntegrityError(f"{name} is truncated (needed up to byte {job.end})")
    view = memoryview(data)
    stored_bytes = raw_bytes = 0
    for b in job.blobs:
        what = f"{b.type.name.lower()} blob {b.id.hex()} in {name}"
        stored = view[b.loc.offset - job.start : b.loc.offset - job.start + b.loc.length]
        ad = blob_ad(b.type, b.id)
        try:
            payload = source.cipher.decrypt(stored, ad)
        except IntegrityError:
            raise IntegrityError(f"{what}: authentication failed (damaged)") from None
        plain = decode_payload(payload, what=what, max_size=max(b.loc.raw_length, 1))
        if len(plain) != b.loc.raw_length or source.blob_id(plain) != b.id:
            raise IntegrityError(f"{what}: content does not match its id")
        sealed = target.cipher.encrypt(payload, ad)
        target.add_encoded(b.type, b.id, sealed, len(plain))  # one blob at a time: memory stays low
        stored_bytes += len(sealed)
        raw_bytes += len(plain)
    return len(job.blobs), stored_bytes, raw_bytes


def _copy_one(
    source: Repository,
    target: Repository,
    snap: Snapshot,
    walked: set[bytes],
    settings: CopySettings,
    progress: Progress,
) -> SnapshotCopy:
    """Store every blob of ``snap`` the target lacks and write the target's index (not the
    snapshot: the caller writes it, last)."""
    entry = _entry(snap, "", copied=True)
    blobs = _needed(source, target, snap, walked)
    jobs = list(_jobs(blobs))
    done: set[bytes] = set()
    progress.start(f"copy {snap.short_id}", sum(b.loc.length for b in blobs))

    def transferred(job: _Job, result: tuple[int, int, int]) -> int:
        n, stored, raw = result
        done.update(b.id for b in job.blobs)
        entry.blobs += n
        entry.bytes += stored
        entry.raw_bytes += raw
        progress.advance(stored, n)
        return stored

    try:
        _run_jobs(source, target, jobs, lambda j: _transfer(source, target, j), transferred, settings)
        target.flush()
    except BaseException:
        target.release_many(b.id for b in blobs if b.id not in done)
        raise
    finally:
        progress.finish()
    return entry


def _translate_one(
    source: Repository,
    target: Repository,
    snap: Snapshot,
    ids: dict[bytes, bytes],
    settings: CopySettings,
    progress: Progress,
) -> SnapshotCopy:
    """Copy ``snap`` into a target whose blob ids differ: its data blobs re-identified (and
    stored where the target lacks them), then its trees rewritten children first. ``ids``
    maps source ids to target ids (data and trees) and grows; the target's index is
    written, not the snapshot (the caller writes it, last, pointing at ``ids[snap.tree]``)."""
    entry = _entry(snap, "", copied=True)
    trees: dict[bytes, Tree] = {}
    order: list[bytes] = []  # children before their parents
    pending: dict[bytes, _Blob] = {}
    stack = [(t, False) for t in snap.all_trees() if t not in ids]
    while stack:
        tid, expanded = stack.pop()
        if expanded:
            order.append(tid)
            continue
        if tid in trees or tid in ids:
            continue
        tree = trees[tid] = source.load_tree(tid)  # its id checked
        stack.append((tid, True))
        for node in tree.nodes:
            if node.type == DIR and node.subtree is not None:
                if node.subtree not in trees and node.subtree not in ids:
                    stack.append((node.subtree, False))
            elif node.type == FILE:
                for bid in node.content:
                    if bid not in ids and bid not in pending:
                        pending[bid] = _Blob(BlobType.DATA, bid, _located(source, snap, bid, BlobType.DATA))
    blobs = list(pending.values())
    jobs = list(_jobs(blobs))
    reserved: list[bytes] = []
    progress.start(f"copy {snap.short_id}", sum(b.loc.length for b in blobs))

    def translated(job: _Job, result: tuple[list[tuple[bytes, bytes, int, int]], int]) -> int:
        pairs, stored = result
        for old_id, new_id, raw, sealed_len in pairs:
            ids[old_id] = new_id
            if sealed_len:
                reserved.append(new_id)
                entry.blobs += 1
                entry.bytes += sealed_len
                entry.raw_bytes += raw
        progress.advance(job.end - job.start, len(job.blobs))
        return stored

    try:
        _run_jobs(source, target, jobs, lambda j: _translate(source, target, j), translated, settings)
        for tid in order:
            tree = trees[tid]
            nodes = [
                replace(
                    n,
                    content=[ids[c] for c in n.content],
                    subtree=ids[n.subtree] if n.subtree is not None else None,
                )
                for n in tree.nodes
            ]
            before = target.added_bytes
            ids[tid] = target.save_tree(Tree(nodes))
            if target.added_bytes != before:
                entry.blobs += 1
                entry.bytes += target.added_bytes - before
        target.flush()
    except BaseException:
        target.release_many(reserved)
        raise
    finally:
        progress.finish()
    return entry


def _located(source: Repository, snap: Snapshot, bid: bytes, btype: BlobType) -> Location:
    loc = source.locate(bid)
    if loc is None:
        raise IntegrityError(
            f"{btype.name.lower()} blob {bid.hex()} of snapshot {snap.short_id} is not in {source.backend.url}",
            hint="run `cargohold check` on the source repository",
        )
    if loc.type != btype:
        raise IntegrityError(f"blob {bid.hex()} is indexed as {loc.type.name.lower()}, needed as {btype.name.lower()}")
    return loc


def _translate(
    source: Repository, target: Repository, job: _Job
) -> tuple[list[tuple[bytes, bytes, int, int]], int]:
    """Read one job's range from the source; for each data blob, check it, compute its id
    under the target's key and store it there (its payload re-encrypted) unless the target
    has that id. Returns ``[(source id, target id, plaintext length, stored length or 0)]``
    and the stored bytes."""
    name = pack_name(job.pack)
    data = source.backend.load(name, job.start, job.end - job.start)
    if len(data) != job.end - job.start:
        raise IntegrityError(f"{name} is truncated (needed up to byte {job.end})")
    view = memoryview(data)
    out: list[tuple[bytes, bytes, int, int]] = []
    total = 0
    for b in job.blobs:
        what = f"data blob {b.id.hex()} in {name}"
        stored = view[b.loc.offset - job.start : b.loc.offset - job.start + b.loc.length]
        try:
            payload = source.cipher.decrypt(stored, blob_ad(BlobType.DATA, b.id))
        except IntegrityError:
            raise IntegrityError(f"{what}: authentication failed (damaged)") from None
        plain = decode_payload(payload, what=what, max_size=max(b.loc.raw_length, 1))
        if len(plain) != b.loc.raw_length or source.blob_id(plain) != b.id:
            raise IntegrityError(f"{what}: content does not match its id")
        new_id = target.blob_id(plain)
        if not target.reserve(new_id):
            out.append((b.id, new_id, len(plain), 0))
            continue
        try:
            sealed = target.cipher.encrypt(payload, blob_ad(BlobType.DATA, new_id))
            target.add_encoded(BlobType.DATA, new_id, sealed, len(plain))
        except BaseException:
            target.release(new_id)
            raise
        out.append((b.id, new_id, len(plain), len(sealed)))
        total += len(sealed)
    return out, total


def _run_jobs(
    source: Repository,
    target: Repository,
    jobs: list[_Job],
    work: Callable[[_Job], R],
    finished: Callable[[_Job, R], int],
    settings: CopySettings,
) -> None:
    """Carry ``jobs`` out with ``work`` on the copy threads, a batch at a time; ``finished``
    takes each result in order and returns the bytes it stored. An index file is written
    after every ``checkpoint_bytes`` stored, so an interrupted copy keeps those blobs."""
    since_checkpoint = 0
    with ThreadPoolExecutor(_threads(source, settings), thread_name_prefix="ch-copy") as pool:
        for batch in _batches(jobs, min(_BATCH_BYTES, settings.checkpoint_bytes)):
            for job, result in zip(batch, pool.map(work, batch), strict=True):
                since_checkpoint += finished(job, result)
            if since_checkpoint >= settings.checkpoint_bytes:
                target.flush()
                since_checkpoint = 0


def _threads(source: Repository, settings: CopySettings) -> int:
    if settings.threads is not None:
        return settings.threads
    return max(2, min(source.connections, 8)) if source.remote else 2


def _batches(jobs: list[_Job], limit: int) -> Iterator[list[_Job]]:
    """Jobs in groups of about ``limit`` bytes to read: the threads work on one group at a
    time, and a checkpoint falls between two groups."""
    batch: list[_Job] = []
    size = 0
    for job in jobs:
        batch.append(job)
        size += job.end - job.start
        if size >= limit:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
