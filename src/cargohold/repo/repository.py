"""The repository: blobs in packs, the index and snapshots over one backend.

Thread safe for writers: any number of threads may :meth:`Repository.reserve` and
:meth:`Repository.add_encoded` blobs; a full pack is written by the thread that filled
it, outside the lock. :meth:`Repository.flush` writes the open packs, then one index
file for every pack written since the last flush. A snapshot saved after ``flush`` is
the commit point: packs and index files without a snapshot are harmless leftovers that
``prune`` removes.

Calls to a counting backend are counted (:attr:`Repository.requests`); index files,
snapshots and tree blobs go through a :class:`~cargohold.repo.cache.MetadataCache`
when the caller gives one (remote repositories); full packs are uploaded by as many
threads as the backend wants connections (:func:`cargohold.repo.storage.uploads_per_process`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cargohold.backends.base import Backend
from cargohold.backends.counting import RequestCounts
from cargohold.errors import (
    BackendError,
    ConfigDamaged,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    RepositoryError,
    RepositoryExists,
    UnsupportedFormat,
)
from cargohold.repo import storage
from cargohold.repo.cache import MetadataCache
from cargohold.repo.chunker import ChunkerParams
from cargohold.repo.config import (
    CONFIG_FIELDS,
    CONFIG_NAME,
    RepoConfig,
    config_where,
    read_config,
    recover_config_fields,
)
from cargohold.repo.crypto import Cipher, MasterKey, blob_id
from cargohold.repo.format import (
    AD_INDEX,
    AD_SNAPSHOT,
    BlobType,
    decode_blob,
    decode_object,
    encode_blob,
    encode_object,
    pack_name,
    parse_hex_id,
    sha256_hex,
)
from cargohold.repo.index import Location, MasterIndex, PackRecord, decode_index, encode_index
from cargohold.repo.pack import TRAILER_SIZE, PackBuilder, header_length, parse_header
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tree import Node, Tree

#: Re-exported: the config lives in :mod:`cargohold.repo.config`.
__all__ = [
    "CONFIG_FIELDS",
    "CONFIG_NAME",
    "LoadReport",
    "RepoConfig",
    "Repository",
    "config_where",
    "read_config",
    "recover_config_fields",
]


@dataclass
class LoadReport:
    """Index files that could not be read while opening (``check`` reports them)."""

    damaged_index: dict[str, str] = field(default_factory=dict)


class Repository:
    """An open repository. Use :meth:`init` or :meth:`open`."""

    def __init__(
        self,
        backend: Backend,
        key: MasterKey,
        config: RepoConfig,
        key_id: str = "",
        *,
        cache: MetadataCache | None = None,
        spec: str | None = None,
    ) -> None:
        self.backend = backend
        #: Requests made through :attr:`backend` when it counts them (a
        #: :class:`~cargohold.backends.counting.CountingBackend`, as
        #: :func:`cargohold.repo.storage.open_storage` gives), and those worker processes reported.
        self.requests = storage.counts_of(backend) or RequestCounts()
        #: The metadata cache (None: none).
        self.cache = cache
        #: The URL that reopens the backend in a worker process (None: derived if local).
        self.spec = spec
        #: Parallel connections the backend wants; uploads and downloads are sized from it.
        self.connections = storage.connections_of(backend)
        #: Whether the backend is remote (retried, cached, uploads and reads in parallel).
        self.remote = storage.is_remote(backend)
        self._uploads = storage.uploads_per_process(self.connections) if self.remote else 1
        self.key = key
        self.key_id = key_id
        self.config = config
        self.cipher = Cipher(key)
        self.index = MasterIndex()
        self.load_report = LoadReport()
        self.index_ids: set[str] = set()
        #: Index files read by the last full :meth:`load_index` or added since (None: none yet).
        self._index_names: set[str] | None = None
        self._lock = threading.Lock()
        self._inflight: set[bytes] = set()
        self._builders: dict[BlobType, PackBuilder] = {t: PackBuilder(t) for t in BlobType}
        self._unindexed: list[PackRecord] = []
        #: Packs no index file lists, from their own headers: for reading only (see locate).
        self._lost: MasterIndex | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._writes: list[Future[None]] = []
        self._write_slot = threading.Semaphore(self._uploads)
        self._tree_cache: OrderedDict[bytes, Tree] = OrderedDict()
        self.added_bytes = 0
        self.added_raw_bytes = 0
        self.added_blobs = 0
        self.packs_written = 0

    # --- lifecycle ----------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: str,
        *,
        kdf: Any = None,
        chunker: ChunkerParams | None = None,
        compression_level: int = 3,
        cache_dir: Path | None = None,
        spec: str | None = None,
        master: MasterKey | None = None,
    ) -> Repository:
        """Create a repository on ``backend`` (a key slot first, then the config, created
        only if absent). ``master``: the master key to use (default: a new one; see
        :func:`cargohold.repo.sharedparams.init_like`)."""
        from cargohold.repo import keys as keys

        try:
            backend.stat(CONFIG_NAME)
        except ObjectNotFound:
            pass
        else:
            raise RepositoryExists(f"a repository exists already at {backend.url}")
        if any(True for _ in backend.list("keys/")):
            raise RepositoryExists(
                f"{backend.url} has key files but no config: it is a repository whose config is lost",
                hint="restore the config with `cargohold repair config` (or `cargohold key import FILE`)",
            )
        master = master if master is not None else MasterKey.generate()
        config = RepoConfig(
            id=secrets.token_hex(16),
            created=datetime.now(UTC).isoformat(),
            chunker=chunker or ChunkerParams(),
            compression_level=compression_level,
        )
        key_id = keys.create_key(backend, password, master, label="initial", kdf=kdf, config=config)
        try:
            backend.create(CONFIG_NAME, config.encode())
        except ObjectExists:
            raise RepositoryExists(f"a repository exists already at {backend.url}") from None
        return cls(backend, master, config, key_id, cache=_cache(cache_dir, config), spec=spec)

    @classmethod
    def open(
        cls,
        backend: Backend,
        password: str,
        *,
        load_index: bool = True,
        cache_dir: Path | None = None,
        spec: str | None = None,
    ) -> Repository:
        """Open with ``password``. ``cache_dir``: where the metadata caches of repositories
        are (this one's is the subdirectory named by its id), or None for no cache;
        ``spec``: the URL that reopens ``backend`` in a worker process."""
        from cargohold.repo import keys as keys

        try:
            config = read_config(backend)
        except ConfigDamaged as err:
            # Say whether the password opens a key slot holding a verified copy to repair from.
            with contextlib.suppress(RepositoryError, BackendError):
                opened = keys.open_slots(backend, password)
                if opened.config is not None:
                    err.hint = (
                        f"run `cargohold repair config`: key slot {opened.slot_id} holds a verified copy "
                        "that this password opens"
                    )
            raise
        opened = keys.open_slots(backend, password)
        if opened.config is not None and opened.config != config:
            differ = sorted(k for k, v in opened.config.to_doc().items() if config.to_doc()[k] != v)
            raise ConfigDamaged(
                f"{config_where(backend)} does not match the verified copy in key slot {opened.slot_id} "
                f"(differs in {', '.join(differ)})",
                recovered=config.to_doc(),
            )
        master, key_id = opened.master, opened.slot_id
        repo = cls(backend, master, config, key_id, cache=_cache(cache_dir, config), spec=spec)
        if load_index:
            repo.load_index()
        return repo

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._drain_writes()
        self.backend.close()

    # --- ids and blobs --------------------------------------------------------------

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blob_id(self.key, data)

    def known(self, bid: bytes) -> bool:
        return bid in self._inflight or bid in self.index

    def reserve(self, bid: bytes) -> bool:
        """True when the caller must store this blob (not known, not being stored)."""
        return self.reserve_many([bid]) == b"\x01"

    def reserve_many(self, bids: list[bytes]) -> bytes:
        """:meth:`reserve` for many ids under one lock: a byte per id, 1 where it must be stored."""
        out = bytearray(len(bids))
        with self._lock:
            inflight, index = self._inflight, self.index
            for i, bid in enumerate(bids):
                if bid not in inflight and bid not in index:
                    inflight.add(bid)
                    out[i] = 1
        return bytes(out)

    def release(self, bid: bytes) -> None:
        """Give up a reservation (the blob was not stored)."""
        self.release_many((bid,))

    def release_many(self, bids: Iterable[bytes]) -> None:
        """Give up reservations (the blobs were not stored)."""
        with self._lock:
            self._inflight.difference_update(bids)

    def encode(self, btype: BlobType, bid: bytes, data: bytes | memoryview, *, compress: bool = True) -> bytes:
        level = self.config.compression_level
        return encode_blob(self.cipher, btype, bid, data, level=level, compress=compress)

    def add_encoded(self, btype: BlobType, bid: bytes, stored: bytes, raw_length: int) -> None:
        """Put an encoded blob into the open pack of its type; write the pack when full."""
        self.add_encoded_many(btype, [(bid, stored, raw_length)])

    def add_encoded_many(self, btype: BlobType, blobs: list[tuple[bytes, bytes, int]]) -> None:
        """Put encoded ``(id, stored, raw length)`` blobs into the open pack of their type,
        writing each pack when it is full; the lock is taken once per pack, not per blob."""
        i = 0
        while i < len(blobs):
            full: PackBuilder | None = None
            with self._lock:
                b = self._builders[btype]
                while i < len(blobs):
                    bid, stored, raw_length = blobs[i]
                    i += 1
                    b.add(bid, stored, raw_length)
                    self.added_bytes += len(stored)
                    self.added_raw_bytes += raw_length
                    self.added_blobs += 1
                    if b.size >= self.config.pack_size:
                        full = b
                        self._builders[btype] = PackBuilder(btype)
                        break
            if full is not None:
                self._queue_pack(full)

    def save_blob(self, btype: BlobType, data: bytes) -> bytes:
        """Store a blob (if new) and return its id."""
        bid = self.blob_id(data)
        if self.reserve(bid):
            try:
                stored = self.encode(btype, bid, data)
            except BaseException:
                self.release(bid)
                raise
            if btype is BlobType.TREE and self.cache is not None:
                self.cache.put("trees", bid.hex(), stored)
            self.add_encoded(btype, bid, stored, len(data))
        return bid

    def _queue_pack(self, builder: PackBuilder) -> None:
        """Write a full pack on the pack-writer thread, so the thread that filled it goes
        back to compressing while the pack is written and fsync'd. At most one pack per
        upload slot (one for a local directory, more for a remote store) waits or is being
        written at a time (bounded memory); errors surface on the next call or in
        :meth:`flush`."""
        self._raise_write_errors()
        self._write_slot.acquire()
        try:
            with self._lock:
                if self._writer is None:
                    self._writer = ThreadPoolExecutor(self._uploads, thread_name_prefix="ch-pack")
                fut = self._writer.submit(self._write_pack_released, builder)
                self._writes.append(fut)
        except BaseException:
            self._write_slot.release()
            raise

    def _write_pack_released(self, builder: PackBuilder) -> None:
        try:
            self._write_pack(builder)
        finally:
            self._write_slot.release()

    def _raise_write_errors(self, *, wait: bool = False) -> None:
        with self._lock:
            writes = self._writes
            if wait:
                self._writes = []
            else:
                self._writes = [f for f in writes if not f.done()]
                writes = [f for f in writes if f.done()]
        for fut in writes:
            fut.result()  # re-raises the writer's error here

    def _drain_writes(self) -> None:
        """Wait for the pack writer; raise its first error."""
        try:
            self._raise_write_errors(wait=True)
        finally:
            with self._lock:
                writer, self._writer = self._writer, None
            if writer is not None:
                writer.shutdown(wait=True)

    def _write_pack(self, builder: PackBuilder) -> None:
        try:
            pack_id, data, rec = builder.finish(self.cipher)
            self.store_object(pack_name(pack_id), data)
        except BaseException:  # not stored: a later backup on this repository must store them
            self.release_many(e.id for e in builder.entries)
            raise
        self._indexed_pack(rec)

    def _indexed_pack(self, rec: PackRecord) -> None:
        with self._lock:
            self.index.add_pack(rec)
            self._unindexed.append(rec)
            for b in rec.blobs:
                self._inflight.discard(b.id)
            self.packs_written += 1

    def add_written_pack(self, rec: PackRecord) -> None:
        """Index a pack that a worker process wrote with blobs it reserved here
        (:meth:`reserve_many`); the next :meth:`flush` lists it in an index file."""
        with self._lock:
            self.added_bytes += sum(b.length for b in rec.blobs)
            self.added_raw_bytes += sum(b.raw_length for b in rec.blobs)
            self.added_blobs += len(rec.blobs)
        self._indexed_pack(rec)

    def worker_setup(self) -> dict[str, Any] | None:
        """What a worker process needs to store or read blobs of this repository itself
        (:mod:`cargohold.repo.procworker`, :mod:`cargohold.repo.restoreworker`), or None
        when another process cannot open its backend (in-memory, fault-injecting). The
        backend travels as its URL; the worker opens it with
        :func:`cargohold.repo.storage.open_storage` (with retries when it is remote)."""
        spec = self.spec if self.spec is not None else storage.local_spec(self.backend)
        if spec is None:
            return None
        return {
            "spec": spec,
            "key": self.key.to_bytes(),
            "chunker": self.config.chunker.to_json(),
            "level": self.config.compression_level,
            "pack_size": self.config.pack_size,
            "connections": self.connections,
            "retry_budget": storage.retry_budget_of(self.backend),
        }

    def local_dir(self) -> Path | None:
        """The directory of a repository on a local file system (through any wrappers)."""
        return storage.local_root(self.backend)

    @contextlib.contextmanager
    def uncached(self) -> Iterator[None]:
        """Read index files, snapshots and trees from the store itself meanwhile (``check``:
        an intact cached copy must not hide a damaged object)."""
        with self._lock:
            cache, self.cache = self.cache, None
            self._tree_cache.clear()
        try:
            yield
        finally:
            with self._lock:
                self.cache = cache
                self._tree_cache.clear()

    def request_counts(self) -> dict[str, int]:
        """Requests per operation, bytes up and down and retries, of this process and of
        the worker processes that reported theirs."""
        return storage.request_counts(self.backend, self.requests)

    def flush(self) -> list[str]:
        """Write open packs, then an index file for every pack not yet indexed."""
        self._drain_writes()
        with self._lock:
            builders = [b for b in self._builders.values() if len(b)]
            self._builders = {t: PackBuilder(t) for t in BlobType}
        for b in builders:
            self._write_pack(b)
        with self._lock:
            recs = self._unindexed
            self._unindexed = []
        if not recs:
            return []
        return [self.write_index(recs)]

    def write_index(self, packs: list[PackRecord], supersedes: tuple[str, ...] = ()) -> str:
        plain = encode_index(packs, [bytes.fromhex(s) for s in supersedes])
        stored = encode_object(self.cipher, plain, AD_INDEX)
        name = sha256_hex(stored)
        self.store_object(f"index/{name}", stored)
        if self.cache is not None:
            self.cache.put("index", name, stored)
        with self._lock:
            self.index_ids.add(name)
            if self._index_names is not None:
                if supersedes:  # the in-memory index still has what it replaces: read all again
                    self._index_names = None
                else:  # its packs are in the in-memory index already
                    self._index_names.add(name)
        return name

    def store_object(self, name: str, data: bytes | bytearray) -> None:
        """Store; when that fails, try to remove what a broken store may have left half
        written, so a failed write never leaves a damaged object behind."""
        storage.store_or_clean(self.backend, name, data)

    def locate(self, bid: bytes) -> Location | None:
        """Where to read a blob: the index, else a pack no readable index file lists (a
        damaged or lost index file, leftovers of an interrupted backup), found from the
        packs' own headers the first time a blob is missing — so a lost index file loses no
        data. Only for reading: what a backup stores is decided by the index alone, since
        prune removes packs that no index file lists."""
        loc = self.index.lookup(bid)
        if loc is not None:
            return loc
        with self._lock:
            lost = self._lost
        if lost is None:
            lost = MasterIndex()
            for rec in self._unindexed_headers():
                lost.add_pack(rec)
            with self._lock:
                self._lost = lost
        return lost.lookup(bid)

    def load_blob(self, btype: BlobType, bid: bytes) -> bytes:
        loc = self.locate(bid)
        if loc is None:
            raise IntegrityError(f"{btype.name.lower()} blob {bid.hex()} is not in the index")
        cache = self.cache if btype is BlobType.TREE else None
        if cache is not None:
            cached = cache.get("trees", bid.hex())
            if cached is not None:
                try:
                    plain = decode_blob(self.cipher, btype, bid, cached, loc.raw_length)
                    if self.blob_id(plain) == bid:
                        return plain
                except IntegrityError:
                    pass
                cache.discard("trees", bid.hex(), damaged=True)  # fetched again below
        what = f"pack {loc.pack.hex()}"
        try:
            stored = self.backend.load(pack_name(loc.pack), loc.offset, loc.length)
        except ObjectNotFound:
            raise IntegrityError(f"{what} is missing (needed for blob {bid.hex()})") from None
        if len(stored) != loc.length:
            raise IntegrityError(f"{what} is truncated (blob {bid.hex()})")
        plain = decode_blob(self.cipher, btype, bid, stored, loc.raw_length)
        if cache is not None:
            cache.put("trees", bid.hex(), stored)
        return plain

    def load_tree(self, tid: bytes) -> Tree:
        with self._lock:
            t = self._tree_cache.get(tid)
            if t is not None:
                self._tree_cache.move_to_end(tid)
                return t
        data = self.load_blob(BlobType.TREE, tid)
        if self.blob_id(data) != tid:
            raise IntegrityError(f"tree blob {tid.hex()}: content does not match its id")
        t = Tree.decode(data, what=f"tree {tid.hex()}")
        with self._lock:
            self._tree_cache[tid] = t
            while len(self._tree_cache) > 512:
                self._tree_cache.popitem(last=False)
        return t

    def node_at(self, tree_id: bytes | None, path: str | Sequence[bytes]) -> Node | None:
        """The entry at ``path`` ("a/b/c", or its parts as bytes) below the tree ``tree_id``;
        None when a part is missing or is not a directory on the way."""
        parts = [os.fsencode(p) for p in path.split("/")] if isinstance(path, str) else path
        node: Node | None = None
        for part in parts:
            node = self.load_tree(tree_id).find(part) if tree_id is not None else None
            if node is None:
                return None
            tree_id = node.subtree
        return node

    def save_tree(self, tree: Tree) -> bytes:
        return self.save_blob(BlobType.TREE, tree.encode())

    # --- index ----------------------------------------------------------------------

    def list_index_files(self) -> list[str]:
        names = sorted(
            info.name.rsplit("/", 1)[1]
            for info in self.backend.list("index/")
            if parse_hex_id(info.name.rsplit("/", 1)[1]) is not None
        )
        if self.cache is not None:
            self.cache.retain("index", names)
        return names

    def _load_named(self, kind: str, name: str) -> bytes:
        """The object ``kind/name`` (an index file or a snapshot, named by the SHA-256 of
        its bytes), checked against its name once: from the cache when it has it intact
        (the cache checks), else loaded, checked and cached. :class:`IntegrityError` when
        it does not match its name."""
        cache = self.cache
        if cache is not None and (cached := cache.get(kind, name)) is not None:
            return cached
        stored = self.backend.load(f"{kind}/{name}")
        if sha256_hex(stored) != name:
            raise IntegrityError(f"{kind}/{name}: content does not match its name")
        if cache is not None:
            cache.put(kind, name, stored)
        return stored

    def read_index_file(self, name: str) -> tuple[list[PackRecord], list[bytes]]:
        what = f"index/{name}"
        try:
            stored = self._load_named("index", name)
        except ObjectNotFound:
            raise IntegrityError(f"{what} is missing") from None
        return decode_index(decode_object(self.cipher, stored, AD_INDEX, what=what), what=what)

    def load_index(self) -> None:
        """Read every index file (in parallel); damaged ones are noted, not fatal.

        An index file that disappears between listing and reading was superseded by a prune
        that has written its replacement first: list again and read the new files.

        Called again on the same repository (a command that restores, then verifies), it
        reads only index files that appeared since; it reads everything again when one
        vanished, one was damaged, or a new one supersedes others.
        """
        if self._load_new_index_files():
            return
        loaded: dict[str, tuple[list[PackRecord], list[bytes]]] = {}
        report = LoadReport()
        for _attempt in range(10):
            names = self.list_index_files()
            vanished: list[str] = []
            report = LoadReport()

            def one(name: str, report: LoadReport = report, vanished: list[str] = vanished) -> None:
                if name in loaded:
                    return
                try:
                    loaded[name] = self.read_index_file(name)
                except (IntegrityError, BackendError) as err:
                    try:
                        self.backend.stat(f"index/{name}")
                    except ObjectNotFound:
                        vanished.append(name)  # deleted since listed: superseded by a prune
                        return
                    except BackendError:
                        pass
                    report.damaged_index[name] = str(err)

            with ThreadPoolExecutor(max_workers=self._readers()) as pool:
                list(pool.map(one, names))
            if not vanished:
                break
        listed = set(names)
        results = {n: r for n, r in loaded.items() if n in listed}
        superseded: set[str] = set()
        for _packs, sup in results.values():
            superseded.update(s.hex() for s in sup)
        index = MasterIndex()
        index.load(p for name in sorted(results) if name not in superseded for p in results[name][0])
        with self._lock:
            self.index = index
            self.index_ids = set(results) - superseded
            self.load_report = report
            self._index_names = set(results)

    def _load_new_index_files(self) -> bool:
        """Add the index files written since the last full :meth:`load_index`; False when
        that cannot be done incrementally (nothing loaded yet, files gone, damage, supersedes)."""
        known = self._index_names
        if known is None or self.load_report.damaged_index:
            return False
        names = set(self.list_index_files())
        if not known <= names:
            return False
        new: dict[str, tuple[list[PackRecord], list[bytes]]] = {}
        for name in sorted(names - known):
            try:
                new[name] = self.read_index_file(name)
            except (IntegrityError, BackendError):
                return False
            if new[name][1]:
                return False
        with self._lock:
            for packs, _ in new.values():
                for pack in packs:
                    self.index.add_pack(pack)
            self.index_ids |= set(new)
            self._index_names = known | set(new)
        return True

    def _readers(self) -> int:
        """Threads that read many small objects at once (index files, snapshots)."""
        return max(4, min(self.connections, 16))

    # --- snapshots ------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> str:
        stored = encode_object(self.cipher, snap.encode(), AD_SNAPSHOT)
        sid = sha256_hex(stored)
        self.store_object(f"snapshots/{sid}", stored)
        if self.cache is not None:
            self.cache.put("snapshots", sid, stored)
        snap.id = sid
        return sid

    def list_snapshot_ids(self) -> list[str]:
        ids = sorted(
            info.name.rsplit("/", 1)[1]
            for info in self.backend.list("snapshots/")
            if parse_hex_id(info.name.rsplit("/", 1)[1]) is not None
        )
        if self.cache is not None:
            self.cache.retain("snapshots", ids)
        return ids

    def load_snapshot(self, sid: str) -> Snapshot:
        what = f"snapshots/{sid}"
        try:
            stored = self._load_named("snapshots", sid)
        except ObjectNotFound:
            from cargohold.errors import SnapshotNotFound

            raise SnapshotNotFound(f"snapshot {sid} not found") from None
        return Snapshot.decode(decode_object(self.cipher, stored, AD_SNAPSHOT, what=what), snap_id=sid)

    def snapshots(self, errors: dict[str, str] | None = None) -> list[Snapshot]:
        """Every readable snapshot, oldest first; unreadable ones go to ``errors`` (or raise)."""
        ids = self.list_snapshot_ids()
        out: list[Snapshot] = []
        failed: dict[str, str] = {}

        def one(sid: str) -> Snapshot | None:
            try:
                return self.load_snapshot(sid)
            except (IntegrityError, BackendError) as err:
                failed[sid] = str(err)
                return None

        with ThreadPoolExecutor(max_workers=self._readers()) as pool:
            for s in pool.map(one, ids):
                if s is not None:
                    out.append(s)
        if failed:
            if errors is None:
                sid, msg = sorted(failed.items())[0]
                raise IntegrityError(f"snapshot {sid} is damaged: {msg}")
            errors.update(failed)
        out.sort(key=lambda s: (s.time, s.id))
        return out

    def delete_snapshot(self, sid: str) -> None:
        self.backend.delete(f"snapshots/{sid}")

    # --- packs ----------------------------------------------------------------------

    def list_packs(self) -> Iterator[tuple[bytes, int]]:
        for info in self.backend.list("data/"):
            pid = parse_hex_id(info.name.rsplit("/", 1)[1])
            if pid is not None:
                yield pid, info.size

    def read_pack_header(self, pid: bytes, size: int) -> PackRecord:
        """The blobs a pack lists in its own header (two small ranged reads)."""
        name = pack_name(pid)
        if size < TRAILER_SIZE:
            raise IntegrityError(f"{name}: truncated to {size} bytes (no trailer)")
        try:
            trailer = self.backend.load(name, size - TRAILER_SIZE, TRAILER_SIZE)
            n = header_length(trailer, size, what=name)
            sealed = self.backend.load(name, size - TRAILER_SIZE - n, n)
        except ObjectNotFound:
            raise IntegrityError(f"{name} is missing") from None
        return parse_header(self.cipher, pid, sealed, size - TRAILER_SIZE - n, what=name)

    def index_unindexed_packs(self, present: dict[bytes, int] | None = None) -> list[PackRecord]:
        """Add the packs no readable index lists to the in-memory index, from their headers.

        For check, which then reports what uses them; unreadable headers are skipped (check
        reports them). Readers use :meth:`locate` instead, which leaves the index alone.
        ``present``: the packs and sizes of :meth:`list_packs`, when the caller listed them.
        """
        found = self._unindexed_headers(present)
        with self._lock:
            for rec in found:
                self.index.add_pack(rec)
        return found

    def _unindexed_headers(self, present: dict[bytes, int] | None = None) -> list[PackRecord]:
        found: list[PackRecord] = []
        for pid, size in present.items() if present is not None else self.list_packs():
            if self.index.has_pack(pid):
                continue
            try:
                found.append(self.read_pack_header(pid, size))
            except (IntegrityError, BackendError, UnsupportedFormat):
                continue
        return found


def _cache(cache_dir: Path | None, config: RepoConfig) -> MetadataCache | None:
    return MetadataCache(Path(cache_dir) / config.id) if cache_dir is not None else None
