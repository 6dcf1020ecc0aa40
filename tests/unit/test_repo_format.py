"""Format core: blob codec, packs, index files, the compact index, trees, snapshots, chunker."""

from __future__ import annotations

import os
import random
import sys
from datetime import UTC, datetime

import pytest

from cargohold.errors import IntegrityError, UnsupportedFormat
from cargohold.repo.chunker import CDC, Chunker, ChunkerParams, ExtentReader
from cargohold.repo.crypto import Cipher, MasterKey, blob_id
from cargohold.repo.format import BlobType, decode_blob, decode_payload, encode_blob, encode_payload
from cargohold.repo.index import REC_SIZE, BlobTable, MasterIndex, PackRecord, decode_index, encode_index
from cargohold.repo.pack import PackBuilder, read_pack_bytes
from cargohold.repo.snapshot import Snapshot, SnapshotStats, Source
from cargohold.repo.tree import DIR, FILE, SYMLINK, Node, Tree

KEY = MasterKey.generate()
CIPHER = Cipher(KEY)


def test_payload_compresses_and_keeps_raw_when_it_does_not_shrink() -> None:
    text = b"hello world " * 1000
    enc = encode_payload(text, level=3)
    assert enc[0] == 1 and len(enc) < len(text)
    assert decode_payload(enc, what="x") == text
    noise = os.urandom(4096)
    enc = encode_payload(noise, level=3)
    assert enc[0] == 0 and enc[1:] == noise
    assert decode_payload(encode_payload(b"", level=3), what="x") == b""
    with pytest.raises(IntegrityError):
        decode_payload(b"\x07abc", what="x")


def test_blob_is_bound_to_its_type_and_id() -> None:
    data = b"some data" * 100
    bid = blob_id(KEY, data)
    stored = encode_blob(CIPHER, BlobType.DATA, bid, data, level=3)
    assert decode_blob(CIPHER, BlobType.DATA, bid, stored, len(data)) == data
    with pytest.raises(IntegrityError):
        decode_blob(CIPHER, BlobType.TREE, bid, stored, len(data))
    with pytest.raises(IntegrityError):
        decode_blob(CIPHER, BlobType.DATA, bytes(32), stored, len(data))
    flipped = bytearray(stored)
    flipped[20] ^= 1
    with pytest.raises(IntegrityError):
        decode_blob(CIPHER, BlobType.DATA, bid, bytes(flipped), len(data))


def test_pack_describes_itself() -> None:
    b = PackBuilder(BlobType.DATA)
    blobs = [os.urandom(n) for n in (1, 100, 5000)]
    for d in blobs:
        bid = blob_id(KEY, d)
        b.add(bid, encode_blob(CIPHER, BlobType.DATA, bid, d, level=1), len(d))
    pack_id, data, rec = b.finish(CIPHER)
    parsed = read_pack_bytes(CIPHER, pack_id, data, what="p")
    assert parsed.blobs == rec.blobs and parsed.type == BlobType.DATA
    for e, d in zip(parsed.blobs, blobs, strict=True):
        assert decode_blob(CIPHER, e.type, e.id, data[e.offset : e.offset + e.length], e.raw_length) == d
    with pytest.raises(IntegrityError):
        read_pack_bytes(CIPHER, pack_id, data[:-10], what="p")
    with pytest.raises(IntegrityError):
        read_pack_bytes(Cipher(MasterKey.generate()), pack_id, data, what="p")


def test_index_file_round_trip_and_damage() -> None:
    rec = PackRecord(os.urandom(32), BlobType.TREE)
    b = PackBuilder(BlobType.TREE)
    for i in range(5):
        b.add(os.urandom(32), b"x" * (i + 40), i + 10)
    rec.blobs = b.entries
    sup = [os.urandom(32)]
    packs, superseded = decode_index(encode_index([rec], sup), what="i")
    assert superseded == sup and packs[0].blobs == rec.blobs and packs[0].type == BlobType.TREE
    with pytest.raises(IntegrityError):
        decode_index(encode_index([rec])[:-3], what="i")
    bad = bytearray(encode_index([rec]))
    bad[4] = 9
    with pytest.raises(UnsupportedFormat):
        decode_index(bytes(bad), what="i")


def test_blob_table_finds_everything_and_nothing_else() -> None:
    rng = random.Random(5)
    t = BlobTable()
    ids = [rng.randbytes(32) for _ in range(50_000)]
    for i, bid in enumerate(ids):
        t.add(bid, i % 7, i, i + 1, i + 2)
    t.add(ids[0], 99, 99, 99, 99)  # first location wins
    assert len(t) == len(ids)
    for i in range(0, len(ids), 97):
        assert t.get(ids[i]) == (i % 7, i, i + 1, i + 2)
    assert t.get(ids[0]) == (0, 0, 1, 2)
    for _ in range(200):
        assert t.get(rng.randbytes(32)) is None
    assert sum(1 for _ in t.items()) == len(ids)


def test_index_memory_is_at_most_64_bytes_per_blob() -> None:
    rng = random.Random(7)
    n = 100_000
    ids = [rng.randbytes(32) for _ in range(n)]
    idx = MasterIndex()
    for start in range(0, n, 2000):
        rec = PackRecord(rng.randbytes(32), BlobType.DATA)
        b = PackBuilder(BlobType.DATA)
        for bid in ids[start : start + 2000]:
            b.add(bid, b"", 1000)
        rec.blobs = b.entries
        idx.add_pack(rec)
    idx.table.items()  # compacts the recent additions into the sorted table
    t = idx.table
    held = sys.getsizeof(t._main) + sys.getsizeof(t._buckets) + sys.getsizeof(t._pending)
    assert REC_SIZE == 48
    assert held / n <= 64, held / n
    assert all(idx.lookup(ids[i]) is not None for i in range(0, n, 101))


def test_tree_round_trip_with_odd_names_and_all_fields() -> None:
    nodes = [
        Node(
            name=b"n\xffame",
            type=FILE,
            mode=0o4755,
            uid=7,
            gid=8,
            mtime_ns=1_000_000_001,
            size=3,
            content=[os.urandom(32)],
            chunking=CDC,
            extents=[(0, 1), (4096, 2)],
            xattrs=[(b"user.a", b"\x00\xff")],
        ),
        Node(name=b"d", type=DIR, subtree=os.urandom(32)),
        Node(name=b"l", type=SYMLINK, target=b"t\xfe"),
    ]
    data = Tree(list(nodes)).encode()
    back = Tree.decode(data, what="t")
    assert sorted(back.nodes, key=lambda n: n.name) == sorted(nodes, key=lambda n: n.name)
    assert Tree(list(reversed(nodes))).encode() == data  # canonical
    with pytest.raises(IntegrityError):
        Tree.decode(b"{not json", what="t")


def test_snapshot_round_trip() -> None:
    s = Snapshot(
        tree=os.urandom(32),
        time=datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
        source=Source("path", "/x", {"labels": {"a": "b"}}),
        hostname="h",
        tags=["t"],
        stats=SnapshotStats(files=3, bytes=10, added_bytes=4),
        root=Node(name=b"", type=DIR, mode=0o755),
    )
    back = Snapshot.decode(s.encode(), snap_id="abc")
    assert back.tree == s.tree and back.time == s.time and back.source == s.source
    assert back.stats == s.stats and back.root == s.root and back.id == "abc"


def test_chunker_fixed_is_page_aligned_and_cdc_is_seeded(tmp_path: object) -> None:
    params = ChunkerParams()
    assert params.choose(8 * 1024 * 1024, None) == "fixed:65536"
    assert params.choose(8 * 1024 * 1024 + 1, None) == CDC
    assert params.choose(100, "fixed:65536") == "fixed:65536"  # the previous snapshot decides
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 5000)
    path = os.path.join(str(tmp_path), "f")
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        fixed = list(Chunker(params, 1).chunks(ExtentReader(fd, None, len(data)), "fixed:65536"))
        assert b"".join(fixed) == data
        assert all(len(c) == 65536 for c in fixed[:-1])
        os.lseek(fd, 0, os.SEEK_SET)
        a = list(Chunker(params, 1).chunks(ExtentReader(fd, None, len(data)), CDC))
        b = list(Chunker(params, 2).chunks(ExtentReader(fd, None, len(data)), CDC))
        assert b"".join(a) == data == b"".join(b)
        assert [len(c) for c in a] != [len(c) for c in b]
    finally:
        os.close(fd)
