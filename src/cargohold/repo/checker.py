"""``check``: find damage and say what it affects.

Structure (always): key slots, index files, that every indexed pack exists and is
long enough, snapshots, and that every tree and data blob of every snapshot is
indexed and every tree decodes. With ``read_data`` (all packs) or ``subset`` (a
percentage of packs, chosen at random): every pack is read whole, its SHA-256 must
match its name, its header must match the index and every blob must decrypt,
decompress and hash to its id.

Each problem is a :class:`Damage`; damaged blobs are then traced to the snapshots and
paths that need them (``affected``).

Leftovers of interrupted writes (temporary files of killed backups) are no damage: no
object refers to them. They are listed in ``leftovers``, each with whether its writer
is surely gone (``cargohold prune`` then removes it) or may still be running.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cargohold.backends.base import leftovers_of
from cargohold.backends.leftovers import Verdict
from cargohold.errors import (
    BackendError,
    BackendIOError,
    IntegrityError,
    ObjectNotFound,
    UnsupportedFormat,
)
from cargohold.repo.format import BlobType, decode_blob, pack_name, sha256_hex
from cargohold.repo.index import PackRecord
from cargohold.repo.locks import LockManager
from cargohold.repo.pack import read_pack_bytes
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tree import DIR, FILE


@dataclass(frozen=True)
class Damage:
    kind: str  # key, index, pack, snapshot, tree, blob
    name: str  # object name or blob id
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.message}"


@dataclass
class CheckReport:
    damage: list[Damage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: snapshot id -> paths whose data or listing is damaged
    affected: dict[str, list[str]] = field(default_factory=dict)
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_checked: int = 0
    #: Leftovers of interrupted writes (not damage), each judged removable or not.
    leftovers: list[Verdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage

    @property
    def leftover_bytes(self) -> int:
        return sum(v.leftover.size for v in self.leftovers)

    @property
    def removable_leftovers(self) -> list[Verdict]:
        """The leftovers ``cargohold prune`` would remove now."""
        return [v for v in self.leftovers if v.removable]


class Checker:
    def __init__(
        self,
        repo: Repository,
        *,
        progress: Progress | None = None,
        workers: int | None = None,
        locks: LockManager | None = None,
    ) -> None:
        self.repo = repo
        #: Judges the leftovers against the other holders' locks (give the one holding ours).
        self.locks = locks or LockManager(repo.backend)
        self.progress = progress or NullProgress()
        #: Packs read at once by --read-data (each whole in memory): two, or up to four of a
        #: remote store's connections (the round trips overlap).
        self.workers = workers if workers is not None else (max(2, min(repo.connections, 4)) if repo.remote else 2)
        self.report = CheckReport()
        self._bad_blobs: dict[bytes, str] = {}
        self._unlisted: set[bytes] = set()
        self._unlisted_present: set[bytes] = set()
        self._needed_unlisted: set[bytes] = set()

    def _damage(self, kind: str, name: str, message: str) -> None:
        self.report.damage.append(Damage(kind, name, message))

    def run(self, *, read_data: bool = False, subset: float | None = None) -> CheckReport:
        from cargohold.repo import keys as keyslots

        for slot, msg in sorted(keyslots.damaged_keys(self.repo.backend).items()):
            self._damage("key", f"keys/{slot}", msg)
        # Snapshots before the index: a snapshot is written after its index file, so a backup
        # committing meanwhile cannot make its trees look lost.
        errors: dict[str, str] = {}
        snaps = self.repo.snapshots(errors)
        self.repo.load_index()
        for name, msg in sorted(self.repo.load_report.damaged_index.items()):
            self._damage("index", f"index/{name}", f"{msg} (`cargohold rebuild-index` rewrites the index)")
        # Packs no readable index lists (leftovers of interrupted backups, or the packs of a
        # damaged or missing index file): trace blobs through their own headers, so lost index
        # files are named as such and not mistaken for lost data.
        present = dict(self.repo.list_packs())  # one listing of data/ for both uses
        self._unlisted = {r.id for r in self.repo.index_unindexed_packs(present)}
        packs = self._pack_records()
        self._check_packs_exist(packs, present)
        if read_data or subset is not None:
            chosen = list(packs.values())
            if subset is not None and not read_data:
                n = max(1, round(len(chosen) * subset / 100.0)) if chosen and subset > 0 else 0
                chosen = random.sample(chosen, min(n, len(chosen)))
            self._read_packs(chosen)
        for sid, msg in sorted(errors.items()):
            self._damage("snapshot", f"snapshots/{sid}", msg)
        self.report.snapshots = len(snaps)
        self._walk_snapshots(snaps)
        for pid in sorted(self._needed_unlisted):
            self._damage(
                "index",
                pack_name(pid),
                "holds blobs that snapshots need but no readable index file lists them "
                "(an index file is missing or damaged; `cargohold rebuild-index` repairs it)",
            )
        for pid in sorted(self._unlisted_present - self._needed_unlisted):
            self.report.warnings.append(
                f"pack {pack_name(pid)} is in no index and no snapshot needs it "
                "(left by an interrupted backup; prune removes it)"
            )
        self._find_leftovers()
        return self.report

    def _find_leftovers(self) -> None:
        try:
            self.report.leftovers = self.locks.judge_leftovers(leftovers_of(self.repo.backend))
        except BackendError as err:
            self.report.warnings.append(f"could not look for leftovers of interrupted writes: {err}")

    # --- packs ----------------------------------------------------------------------

    def _pack_records(self) -> dict[bytes, PackRecord]:
        """Pack id -> the blobs the live index files list for it."""
        out: dict[bytes, PackRecord] = {}
        superseded: set[str] = set()
        files: dict[str, list[PackRecord]] = {}
        for name in self.repo.list_index_files():
            if name in self.repo.load_report.damaged_index:
                continue
            try:
                recs, sup = self.repo.read_index_file(name)
            except (IntegrityError, BackendError, UnsupportedFormat):
                continue
            files[name] = recs
            superseded.update(s.hex() for s in sup)
        for name, recs in files.items():
            if name in superseded:
                continue
            for r in recs:
                out.setdefault(r.id, r)
        return out

    def _mark_pack_bad(self, rec: PackRecord, why: str) -> None:
        for b in rec.blobs:
            self._bad_blobs.setdefault(b.id, why)

    def _check_packs_exist(self, packs: dict[bytes, PackRecord], present: dict[bytes, int]) -> None:
        self.report.packs = len(present)
        for pid, rec in sorted(packs.items()):
            size = present.get(pid)
            name = pack_name(pid)
            if size is None:
                self._damage("pack", name, f"missing ({len(rec.blobs)} blobs lost)")
                self._mark_pack_bad(rec, f"pack {pid.hex()[:12]} missing")
            elif size < rec.size + 4:
                self._damage("pack", name, f"truncated: {size} bytes, the index needs more than {rec.size}")
                self._mark_pack_bad(rec, f"pack {pid.hex()[:12]} truncated")
        self._unlisted_present = set(present) - set(packs)

    def _read_packs(self, packs: list[PackRecord]) -> None:
        self.progress.start("read data", sum(p.size for p in packs))
        with ThreadPoolExecutor(self.workers) as pool:
            reads = [pool.submit(self._read_pack, p) for p in packs]
            try:
                for r in reads:
                    r.result()
            except BaseException:  # an unreachable store (or an interrupt): no more reads
                for r in reads:
                    r.cancel()
                raise
        self.progress.finish()

    def _read_pack(self, rec: PackRecord) -> None:
        name = pack_name(rec.id)
        try:
            data = self.repo.backend.load(name)
        except ObjectNotFound:
            return  # reported already
        except BackendIOError as err:
            if err.unreachable:  # the store, not the pack: no verdict
                raise
            self._damage("pack", name, f"unreadable: {err}")
            self._mark_pack_bad(rec, f"pack {rec.id.hex()[:12]} unreadable")
            return
        except BackendError as err:
            self._damage("pack", name, f"unreadable: {err}")
            self._mark_pack_bad(rec, f"pack {rec.id.hex()[:12]} unreadable")
            return
        self.report.packs_read += 1
        if sha256_hex(data) != rec.id.hex():
            self._damage("pack", name, "content does not match its name (damaged)")
        try:
            header = read_pack_bytes(self.repo.cipher, rec.id, data, what=name)
        except (IntegrityError, UnsupportedFormat) as err:
            self._damage("pack", name, f"header unreadable: {err}")
            header = None
        if header is not None:
            mine = {(b.id, b.offset, b.length) for b in header.blobs}
            theirs = {(b.id, b.offset, b.length) for b in rec.blobs}
            if not theirs <= mine:
                self._damage("pack", name, "the index lists blobs the pack header does not")
        for b in rec.blobs:
            self.report.blobs_checked += 1
            stored = data[b.offset : b.offset + b.length]
            try:
                if len(stored) != b.length:
                    raise IntegrityError("blob extends past the end of the pack")
                plain = decode_blob(self.repo.cipher, b.type, b.id, stored, b.raw_length)
                if self.repo.blob_id(plain) != b.id:
                    raise IntegrityError("content does not match its id")
            except IntegrityError as err:
                self._damage("blob", b.id.hex(), f"in {name}: {err}")
                self._bad_blobs.setdefault(b.id, f"blob {b.id.hex()[:12]} damaged")
        self.progress.advance(len(data), 1)

    # --- snapshots and trees --------------------------------------------------------

    def _walk_snapshots(self, snaps: list[Snapshot]) -> None:
        seen_trees: dict[bytes, bool] = {}  # tree id -> everything below it is fine
        reported_trees: set[bytes] = set()
        for snap in snaps:
            bad_paths: list[str] = []
            roots = [("", snap.tree), *((f"[{role}]/", tid) for role, tid in sorted(snap.extra_trees.items()))]
            for prefix, tid in roots:
                for path, why in self._walk(tid, prefix, seen_trees, reported_trees):
                    bad_paths.append(f"{path} ({why})" if why else path)
            if bad_paths:
                self.report.affected[snap.id] = bad_paths

    def _walk(
        self, tid: bytes, prefix: str, seen: dict[bytes, bool], reported: set[bytes]
    ) -> Iterator[tuple[str, str]]:
        if seen.get(tid) is True and not self._bad_blobs:
            return
        loc = self.repo.index.lookup(tid)
        if loc is None or loc.type != BlobType.TREE:
            if tid not in reported:
                reported.add(tid)
                self._damage("tree", tid.hex(), f"listing of {prefix or '/'} is not in the index")
            yield (prefix or "/", "directory listing lost")
            return
        if loc.pack in self._unlisted:
            self._needed_unlisted.add(loc.pack)
        why = self._bad_blobs.get(tid)
        if why is not None:
            yield (prefix or "/", why)
            return
        try:
            tree = self.repo.load_tree(tid)
        except (IntegrityError, BackendError) as err:
            if tid not in reported:
                reported.add(tid)
                self._damage("tree", tid.hex(), f"listing of {prefix or '/'}: {err}")
            yield (prefix or "/", "directory listing unreadable")
            return
        ok = True
        for node in tree.nodes:
            path = f"{prefix}/{node.display_name}"
            if node.type == DIR and node.subtree is not None:
                for hit in self._walk(node.subtree, path, seen, reported):
                    ok = False
                    yield hit
            elif node.type == FILE:
                for c in node.content:
                    why = self._bad_blobs.get(c)
                    if why is None:
                        if self._unlisted:
                            where = self.repo.index.lookup(c)
                            if where is not None and where.pack in self._unlisted:
                                self._needed_unlisted.add(where.pack)
                            missing = where is None
                        else:
                            missing = c not in self.repo.index
                        if missing:
                            why = f"data blob {c.hex()[:12]} missing"
                            self._bad_blobs[c] = why
                            self._damage("blob", c.hex(), f"data of {path} is in no index")
                    if why is not None:
                        ok = False
                        yield (path, why)
                        break
        seen[tid] = ok
