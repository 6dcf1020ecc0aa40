"""``prune``: remove data no snapshot needs, repack partly used packs — crash safe and
without making backups wait.

Phase 1 (under a *shared* lock, so backups keep running):

1. Read every live index file and every snapshot; walk all trees to find the blobs in
   use. Refuse to go on if a snapshot or tree cannot be read (its blobs would look unused).
2. Copy the used blobs of packs that are mostly garbage into new packs (the encrypted
   bytes are copied as they are: a blob's associated data names its type and id, not its
   pack).
3. Write one new index of every kept pack plus the new ones, *superseding* the index
   files read in 1, then delete those. Readers ignore superseded index files, so a
   crash at any point leaves a valid repository (at worst with duplicate blobs).
4. Write an ``obsolete/<id>`` marker listing the packs no longer indexed (fully unused,
   repacked) and the packs found in no index, with the names of the other locks held at
   that moment.

Phase 2 (this run or a later one): a marker is completed once every lock it names is
gone or stale — a backup that might have deduplicated against the old index has then
either committed its snapshot or died. Its packs are re-checked against the current
snapshots and index: a pack holding a blob some snapshot needs and no index lists is
re-indexed, others are deleted, then the marker is deleted.

First of all (it frees space the repacking may need): the **leftovers** of interrupted
writes — temporary files of killed backups, see :mod:`cargohold.backends.leftovers` —
whose writers are surely gone are removed; those of writers that may still run are
kept and counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cargohold.backends.base import leftovers_of, remove_leftover
from cargohold.errors import BackendError, IntegrityError, ObjectNotFound, UnsupportedFormat
from cargohold.repo.format import BlobType, decode_object, encode_object, pack_name, parse_hex_id, sha256_hex
from cargohold.repo.index import PackRecord
from cargohold.repo.locks import LockManager
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tree import DIR, FILE

AD_OBSOLETE = b"cargohold:obsolete"
OBSOLETE_PREFIX = "obsolete/"


@dataclass
class PruneReport:
    snapshots: int = 0
    packs_total: int = 0
    packs_kept: int = 0
    packs_repacked: int = 0
    packs_unused: int = 0
    packs_unindexed: int = 0
    blobs_used: int = 0
    blobs_unused: int = 0
    bytes_unused: int = 0
    bytes_repacked: int = 0
    packs_deleted: int = 0
    bytes_freed: int = 0
    packs_reindexed: int = 0
    markers_pending: int = 0
    #: Leftovers of interrupted writes removed (or, with dry_run, that would be), and bytes.
    leftovers_removed: int = 0
    leftover_bytes_removed: int = 0
    #: Leftovers kept because their writer may still be running, and bytes.
    leftovers_kept: int = 0
    leftover_bytes_kept: int = 0
    dry_run: bool = False
    messages: list[str] = field(default_factory=list)


def used_blobs(repo: Repository, snaps: Iterable[Snapshot]) -> set[bytes]:
    """Every tree and data blob the snapshots reach; raises IntegrityError on a bad tree."""
    used: set[bytes] = set()
    stack = [t for s in snaps for t in s.all_trees()]
    while stack:
        tid = stack.pop()
        if tid in used:
            continue
        used.add(tid)
        tree = repo.load_tree(tid)
        for node in tree.nodes:
            if node.type == DIR and node.subtree is not None:
                stack.append(node.subtree)
            elif node.type == FILE:
                used.update(node.content)
    return used


def live_pack_records(repo: Repository) -> tuple[dict[bytes, PackRecord], list[str]]:
    """Packs listed by the live index files, and the names of all index files read."""
    names = repo.list_index_files()
    files: dict[str, list[PackRecord]] = {}
    superseded: set[str] = set()
    for name in names:
        try:
            recs, sup = repo.read_index_file(name)
        except (IntegrityError, BackendError, UnsupportedFormat) as err:
            raise IntegrityError(
                f"index/{name} is damaged ({err})", hint="run `cargohold check` and repair before pruning"
            ) from None
        files[name] = recs
        superseded.update(s.hex() for s in sup)
    packs: dict[bytes, PackRecord] = {}
    for name in sorted(files):
        if name in superseded:
            continue
        for r in files[name]:
            packs.setdefault(r.id, r)
    return packs, sorted(files)


class Pruner:
    def __init__(
        self,
        repo: Repository,
        locks: LockManager,
        *,
        repack_threshold: float = 0.2,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self.repo = repo
        self.locks = locks
        self.threshold = repack_threshold
        self.dry_run = dry_run
        self.progress = progress or NullProgress()
        self.report = PruneReport(dry_run=dry_run)
        self._flush_index: list[str] = []

    def run(self) -> PruneReport:
        with self.locks.shared("prune"):
            self.remove_leftovers()
            if not self.dry_run:
                self.complete_markers()
            self._phase1()
            if not self.dry_run:
                self.complete_markers()
        return self.report

    # --- phase 1 --------------------------------------------------------------------

    def _phase1(self) -> None:
        repo = self.repo
        # Snapshots first, index second: a snapshot is written after its index file, so every
        # snapshot listed here has its blobs in the index read next, even if a backup commits
        # in between. (Backups committing later are protected by the marker's lock list.)
        errors: dict[str, str] = {}
        snaps = repo.snapshots(errors)
        repo.load_index()
        packs, index_files = live_pack_records(repo)
        if errors:
            sid = sorted(errors)[0]
            raise IntegrityError(
                f"snapshot {sid} is damaged; prune would treat its data as unused",
                hint="run `cargohold check`, then `cargohold forget` the damaged snapshot",
            )
        self.report.snapshots = len(snaps)
        used = used_blobs(repo, snaps)
        present = dict(repo.list_packs())
        missing = [p for p in packs if p not in present]
        if missing:
            raise IntegrityError(
                f"pack {pack_name(missing[0])} is indexed but missing",
                hint="run `cargohold check` to see what it affects",
            )
        self.report.packs_total = len(present)
        seen: set[bytes] = set()
        keep: list[PackRecord] = []
        repack: list[tuple[PackRecord, list[int]]] = []
        obsolete: list[bytes] = []
        for pid in sorted(packs):
            rec = packs[pid]
            wanted = []
            unused_bytes = 0
            for i, b in enumerate(rec.blobs):
                if b.id in used and b.id not in seen:
                    seen.add(b.id)
                    wanted.append(i)
                else:
                    unused_bytes += b.length
                    self.report.blobs_unused += 1
            self.report.blobs_used += len(wanted)
            self.report.bytes_unused += unused_bytes
            if not wanted:
                obsolete.append(pid)
                self.report.packs_unused += 1
            elif unused_bytes > self.threshold * max(rec.size, 1) or (
                len(wanted) < len(rec.blobs) and rec.size < repo.config.pack_size // 8
            ):
                repack.append((rec, wanted))
                obsolete.append(pid)
                self.report.packs_repacked += 1
            else:
                keep.append(rec)
        unindexed = [p for p in present if p not in packs]
        self.report.packs_unindexed = len(unindexed)
        self.report.packs_kept = len(keep)
        if self.dry_run:
            return
        if not repack and not obsolete and not unindexed:
            self.report.messages.append("no packs to prune" if self.report.leftovers_removed else "nothing to prune")
            return
        new_packs = self._repack(repack)
        final = self.repo.write_index(keep + new_packs, tuple(index_files) + tuple(self._flush_index))
        for name in index_files + self._flush_index:
            if name != final:
                with contextlib.suppress(ObjectNotFound):
                    repo.backend.delete(f"index/{name}")
        self._write_marker(obsolete, unindexed)

    def _repack(self, repack: list[tuple[PackRecord, list[int]]]) -> list[PackRecord]:
        repo = self.repo
        self._flush_index = []
        if not repack:
            return []
        self.progress.start("repack", sum(r.size for r, _ in repack))
        written: list[PackRecord] = []
        for rec, wanted in repack:
            data = repo.backend.load(pack_name(rec.id))
            if sha256_hex(data) != rec.id.hex():
                raise IntegrityError(f"pack {pack_name(rec.id)} is damaged", hint="run `cargohold check --read-data`")
            for i in wanted:
                b = rec.blobs[i]
                stored = data[b.offset : b.offset + b.length]
                repo.add_encoded(b.type, b.id, stored, b.raw_length)
                self.report.bytes_repacked += b.length
            self.progress.advance(rec.size, 1)
        self._flush_index = repo.flush()
        for name in self._flush_index:
            recs, _ = repo.read_index_file(name)
            written.extend(recs)
        self.progress.finish()
        return written

    def _other_locks(self) -> list[str]:
        me = (socket.gethostname(), os.getpid())
        return sorted(
            i.name for i in self.locks.list() if not i.stale and not ((i.host, i.pid) == me and i.operation == "prune")
        )

    def _write_marker(self, packs: list[bytes], unindexed: list[bytes]) -> None:
        doc = {
            "time": datetime.now(UTC).isoformat(),
            "packs": [p.hex() for p in packs],
            "unindexed": [p.hex() for p in unindexed],
            "locks": self._other_locks(),
        }
        plain = json.dumps(doc, sort_keys=True).encode("utf-8")
        stored = encode_object(self.repo.cipher, plain, AD_OBSOLETE)
        self.repo.store_object(f"{OBSOLETE_PREFIX}{sha256_hex(stored)}", stored)

    # --- leftovers of interrupted writes ---------------------------------------------

    def remove_leftovers(self) -> None:
        """Remove the leftovers whose writers are surely gone (count them with dry_run)."""
        backend = self.repo.backend
        rep = self.report
        try:
            verdicts = self.locks.judge_leftovers(leftovers_of(backend))
        except BackendError as err:
            rep.messages.append(f"could not look for leftovers of interrupted writes: {err}")
            return
        kept = [v for v in verdicts if not v.removable]
        for v in verdicts:
            if not v.removable:
                continue
            if not self.dry_run:
                self.locks.ensure_held()
                try:
                    if not remove_leftover(backend, v.leftover):
                        continue  # gone or changed meanwhile
                except BackendError as err:
                    rep.messages.append(f"could not remove {v.leftover.kind} {v.leftover.name}: {err}")
                    continue
            rep.leftovers_removed += 1
            rep.leftover_bytes_removed += v.leftover.size
        rep.leftovers_kept = len(kept)
        rep.leftover_bytes_kept = sum(v.leftover.size for v in kept)
        if kept:
            rep.messages.append(
                f"kept {len(kept)} leftover(s) of writes that may still be running ({kept[0].leftover.name}: "
                f"{kept[0].reason}); a later prune removes them once their writers are gone"
            )

    # --- phase 2 --------------------------------------------------------------------

    def _markers(self) -> list[tuple[str, dict[str, list[str]]]]:
        out = []
        for info in self.repo.backend.list(OBSOLETE_PREFIX):
            name = info.name
            if parse_hex_id(name.rsplit("/", 1)[1]) is None:
                continue
            try:
                stored = self.repo.backend.load(name)
                doc = json.loads(decode_object(self.repo.cipher, stored, AD_OBSOLETE, what=name))
            except ObjectNotFound:
                continue
            except (IntegrityError, ValueError) as err:
                self.report.messages.append(f"{name} is unreadable ({err}); left alone")
                continue
            out.append((name, doc))
        return out

    def complete_markers(self) -> None:
        markers = self._markers()
        if not markers:
            return
        present_locks = {i.name for i in self.locks.list() if not i.stale}
        ready = [(n, d) for n, d in markers if not (set(d.get("locks", [])) & present_locks)]
        self.report.markers_pending = len(markers) - len(ready)
        if self.report.markers_pending:
            self.report.messages.append(
                f"{self.report.markers_pending} earlier prune(s) wait for running operations to end "
                "before deleting their packs; run prune again later"
            )
        if not ready:
            return
        repo = self.repo
        snaps = repo.snapshots()  # before the index: see _phase1
        repo.load_index()
        used = used_blobs(repo, snaps)
        present = dict(repo.list_packs())
        if ready:
            self.locks.ensure_held()  # never delete packs after our lock was lost or taken over
        for name, doc in ready:
            for hexid in [*doc.get("packs", []), *doc.get("unindexed", [])]:
                pid = parse_hex_id(hexid)
                if pid is None or pid not in present or repo.index.has_pack(pid):
                    continue
                rec = self._read_header(pid, present[pid])
                if rec is not None and any(b.id in used and b.id not in repo.index for b in rec.blobs):
                    repo.write_index([rec])
                    repo.index.add_pack(rec)
                    self.report.packs_reindexed += 1
                    continue
                try:
                    repo.backend.delete(pack_name(pid))
                except ObjectNotFound:
                    continue
                self.report.packs_deleted += 1
                self.report.bytes_freed += present[pid]
                del present[pid]
            with contextlib.suppress(ObjectNotFound):
                repo.backend.delete(name)

    def _read_header(self, pid: bytes, size: int) -> PackRecord | None:
        try:
            return self.repo.read_pack_header(pid, size)
        except (IntegrityError, BackendError, UnsupportedFormat):
            return None


__all__ = ["BlobType", "PruneReport", "Pruner", "live_pack_records", "used_blobs"]
