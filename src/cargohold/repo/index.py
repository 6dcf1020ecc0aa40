"""The blob index: where each blob lives.

In memory, :class:`BlobTable` keeps one 48-byte record per blob (32-byte id, pack
number, offset, stored length, plaintext length) in a sorted ``bytearray`` with a
65,536-bucket directory on the first two id bytes, plus a small dict of recent
additions merged in geometrically. That is ~48 bytes per blob (the issue allows 64);
a ``dict`` keyed by ``bytes`` would cost ~250.

On disk, index files (``index/<sha256>``) list packs and their blobs in a compact
binary form (documented in docs/FORMAT.md); a new index may *supersede* older ones,
which is how prune and ``check``'s rebuild replace index files without an atomic
rename.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from cargohold.errors import IntegrityError, UnsupportedFormat
from cargohold.repo.format import ID_SIZE, BlobType

_REC = struct.Struct("<32sIIII")  # id, pack number, offset, length, raw length
REC_SIZE = _REC.size  # 48
_MERGE_MIN = 16384


class BlobEntry(NamedTuple):
    """One blob of a pack (a named tuple: index files hold tens of thousands, built fast)."""

    id: bytes
    type: BlobType
    offset: int
    length: int
    raw_length: int


@dataclass(frozen=True, slots=True)
class Location:
    pack: bytes
    type: BlobType
    offset: int
    length: int
    raw_length: int


@dataclass
class PackRecord:
    """A pack and the blobs it holds, as listed by an index file."""

    id: bytes
    type: BlobType
    blobs: list[BlobEntry] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(b.length for b in self.blobs)


class _Keys:
    """A read-only sequence view of the ids of a record table (for ``bisect``)."""

    __slots__ = ("_mv",)

    def __init__(self, mv: memoryview) -> None:
        self._mv = mv

    def __len__(self) -> int:
        return len(self._mv) // REC_SIZE

    def __getitem__(self, i: int) -> bytes:
        o = i * REC_SIZE
        return bytes(self._mv[o : o + ID_SIZE])


class BlobTable:
    """A compact map blob id -> (pack number, offset, length, raw length)."""

    def __init__(self) -> None:
        self._main = bytearray()
        self._buckets = array("I", bytes(4 * 65537))
        self._pending: dict[bytes, tuple[int, int, int, int]] = {}

    def __len__(self) -> int:
        return len(self._main) // REC_SIZE + len(self._pending)

    def nbytes(self) -> int:
        """Approximate memory held (main table, directory and pending dict)."""
        return len(self._main) + len(self._buckets) * 4 + len(self._pending) * 200

    def get(self, blob_id: bytes) -> tuple[int, int, int, int] | None:
        p = self._pending.get(blob_id)
        if p is not None:
            return p
        main = self._main
        if not main:
            return None
        prefix = (blob_id[0] << 8) | blob_id[1]
        lo = self._buckets[prefix]
        hi = self._buckets[prefix + 1]
        if lo == hi:
            return None
        if len(blob_id) != ID_SIZE:
            return None
        # The records of one 2-byte prefix are few (~n/65536): a search in C over their
        # bytes beats a bisection in Python. A hit must start a record (an id cannot start
        # inside another record's fields, but the bytes could happen to match there).
        end = hi * REC_SIZE
        o = main.find(blob_id, lo * REC_SIZE, end)
        while o >= 0 and o % REC_SIZE:
            o = main.find(blob_id, o + 1, end)
        if o < 0:
            return None
        _, pack, off, length, raw = _REC.unpack_from(main, o)
        return (pack, off, length, raw)

    def __contains__(self, blob_id: bytes) -> bool:
        return self.get(blob_id) is not None

    def add(self, blob_id: bytes, pack: int, offset: int, length: int, raw_length: int) -> None:
        """Add a blob; the first location of a blob wins."""
        if blob_id in self._pending or self.get(blob_id) is not None:
            return
        self._pending[blob_id] = (pack, offset, length, raw_length)
        if len(self._pending) >= max(_MERGE_MIN, len(self._main) // REC_SIZE // 2):
            self._merge()

    def load(self, records: Iterable[tuple[bytes, int, int, int, int]]) -> None:
        """Replace the content with ``records`` at once (much faster than :meth:`add` each);
        for a blob listed more than once the first record wins."""
        pack = _REC.pack
        recs = [pack(*r) for r in records]
        recs.sort(key=lambda r: r[:ID_SIZE])  # stable: the first record of an id stays first
        out = bytearray()
        last = b""
        for r in recs:
            bid = r[:ID_SIZE]
            if bid != last:
                out += r
                last = bid
        del recs
        self._pending = {}
        self._main = out
        self._buckets = _buckets(out)

    def items(self) -> Iterator[tuple[bytes, int, int, int, int]]:
        self._merge()
        main = self._main
        for o in range(0, len(main), REC_SIZE):
            yield _REC.unpack_from(main, o)

    def _merge(self) -> None:
        if not self._pending:
            return
        main = self._main
        keys = _Keys(memoryview(main))
        buckets = self._buckets
        out = bytearray()
        prev = 0
        for bid in sorted(self._pending):
            prefix = (bid[0] << 8) | bid[1]  # search only the records of the same 2-byte prefix
            pos = bisect_left(keys, bid, max(prev, buckets[prefix]), buckets[prefix + 1])
            out += main[prev * REC_SIZE : pos * REC_SIZE]
            out += _REC.pack(bid, *self._pending[bid])
            prev = pos
        out += main[prev * REC_SIZE :]
        self._pending = {}
        self._main = out
        self._buckets = _buckets(out)


def _buckets(table: bytearray) -> array[int]:
    """``b[p]`` = index of the first record whose 2-byte id prefix is >= p (b[65536] = count)."""
    counts = [0] * 65537
    for o in range(0, len(table), REC_SIZE):
        counts[((table[o] << 8) | table[o + 1]) + 1] += 1
    total = 0
    for p in range(65537):
        total += counts[p]
        counts[p] = total
    return array("I", counts)


class MasterIndex:
    """All packs and blobs known to this process (loaded index files + packs written)."""

    def __init__(self) -> None:
        self.packs: list[bytes] = []
        self.pack_types: list[BlobType] = []
        self._pack_no: dict[bytes, int] = {}
        self.table = BlobTable()

    def __len__(self) -> int:
        return len(self.table)

    def load(self, packs: Iterable[PackRecord]) -> None:
        """Replace everything by these packs (bulk: used when reading the index files)."""
        self.packs, self.pack_types, self._pack_no = [], [], {}
        records: list[tuple[bytes, int, int, int, int]] = []
        for p in packs:
            no = self._pack_no.get(p.id)
            if no is None:
                no = len(self.packs)
                self.packs.append(p.id)
                self.pack_types.append(p.type)
                self._pack_no[p.id] = no
            records.extend((b.id, no, b.offset, b.length, b.raw_length) for b in p.blobs)
        self.table.load(records)

    def add_pack(self, pack: PackRecord) -> None:
        no = self._pack_no.get(pack.id)
        if no is None:
            no = len(self.packs)
            self.packs.append(pack.id)
            self.pack_types.append(pack.type)
            self._pack_no[pack.id] = no
        for b in pack.blobs:
            self.table.add(b.id, no, b.offset, b.length, b.raw_length)

    def has_pack(self, pack_id: bytes) -> bool:
        return pack_id in self._pack_no

    def lookup(self, blob_id: bytes) -> Location | None:
        hit = self.table.get(blob_id)
        if hit is None:
            return None
        pack, off, length, raw = hit
        return Location(self.packs[pack], self.pack_types[pack], off, length, raw)

    def __contains__(self, blob_id: bytes) -> bool:
        return self.table.get(blob_id) is not None

    def blobs(self) -> Iterator[tuple[bytes, Location]]:
        for bid, pack, off, length, raw in self.table.items():
            yield bid, Location(self.packs[pack], self.pack_types[pack], off, length, raw)


# --- index files ------------------------------------------------------------------

_MAGIC = b"CHIX"
_HDR = struct.Struct("<4sBII")  # magic, version, n_supersedes, n_packs
_PACK = struct.Struct("<32sBI")  # pack id, type, n_blobs
_ENTRY = struct.Struct("<32sIII")  # blob id, offset, length, raw length


def encode_index(packs: Iterable[PackRecord], supersedes: Iterable[bytes] = ()) -> bytes:
    """The plaintext of an index file."""
    sup = list(supersedes)
    plist = list(packs)
    out = bytearray(_HDR.pack(_MAGIC, 1, len(sup), len(plist)))
    for s in sup:
        out += s
    for p in plist:
        out += _PACK.pack(p.id, int(p.type), len(p.blobs))
        for b in p.blobs:
            out += _ENTRY.pack(b.id, b.offset, b.length, b.raw_length)
    return bytes(out)


def decode_index(data: bytes, *, what: str) -> tuple[list[PackRecord], list[bytes]]:
    """Packs and superseded index ids of an index file's plaintext."""
    try:
        magic, version, nsup, npacks = _HDR.unpack_from(data, 0)
        if magic != _MAGIC:
            raise IntegrityError(f"{what}: not an index file")
        if version != 1:
            raise UnsupportedFormat(f"{what}: index version {version} is not supported")
        pos = _HDR.size
        sup = []
        for _ in range(nsup):
            sup.append(bytes(data[pos : pos + ID_SIZE]))
            pos += ID_SIZE
        packs: list[PackRecord] = []
        for _ in range(npacks):
            pid, ptype, nblobs = _PACK.unpack_from(data, pos)
            pos += _PACK.size
            btype = BlobType(ptype)
            end = pos + nblobs * _ENTRY.size
            if end > len(data):
                raise IntegrityError(f"{what}: malformed index (truncated)")
            entries = _ENTRY.iter_unpack(memoryview(data)[pos:end])
            packs.append(PackRecord(pid, btype, [BlobEntry(b, btype, o, n, r) for b, o, n, r in entries]))
            pos = end
    except (struct.error, ValueError) as err:
        raise IntegrityError(f"{what}: malformed index ({err})") from None
    if pos != len(data):
        raise IntegrityError(f"{what}: trailing bytes in index")
    return packs, sup
