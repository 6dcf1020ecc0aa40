"""Tree blobs: one per directory, a JSON list of nodes sorted by name bytes.

Names, symlink targets and xattr names that are not valid UTF-8 are stored base64
encoded under ``*_b64`` keys, so any byte string round-trips. The JSON is canonical
(sorted keys, no spaces) so the same directory always yields the same blob id and is
stored once across snapshots.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cargohold.errors import IntegrityError

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
FIFO = "fifo"
SOCKET = "socket"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
NODE_TYPES = frozenset({FILE, DIR, SYMLINK, FIFO, SOCKET, CHARDEV, BLOCKDEV})


def _put_bytes(d: dict[str, Any], key: str, value: bytes) -> None:
    try:
        d[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        d[key + "_b64"] = base64.b64encode(value).decode("ascii")


def _get_bytes(d: dict[str, Any], key: str) -> bytes | None:
    if key in d:
        v = d[key]
        if not isinstance(v, str):
            raise ValueError(f"{key} is not a string")
        return v.encode("utf-8")
    if key + "_b64" in d:
        return base64.b64decode(d[key + "_b64"], validate=True)
    return None


def _int(v: Any) -> int:
    return v if type(v) is int else int(v)


@dataclass
class Node:
    """One directory entry with everything needed to restore it byte-exactly."""

    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    device: int = 0
    links: int = 1
    size: int = 0
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    target: bytes | None = None  # symlink
    rdev: int | None = None  # character / block devices
    content: list[bytes] = field(default_factory=list)  # file: chunk ids in order
    extents: list[tuple[int, int]] | None = None  # sparse file: data regions (offset, length)
    chunking: str = ""  # file: how it was chunked ("cdc", "fixed:65536"), informs the next backup
    subtree: bytes | None = None  # dir: tree blob id

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "mode": self.mode, "uid": self.uid, "gid": self.gid}
        _put_bytes(d, "name", self.name)
        d["mtime_ns"] = self.mtime_ns
        d["atime_ns"] = self.atime_ns
        d["ctime_ns"] = self.ctime_ns
        d["inode"] = self.inode
        d["device"] = self.device
        d["links"] = self.links
        if self.type == FILE:
            d["size"] = self.size
            d["content"] = [c.hex() for c in self.content]
            if self.chunking:
                d["chunking"] = self.chunking
            if self.extents is not None:
                d["extents"] = [[o, n] for o, n in self.extents]
        if self.xattrs:
            xs = []
            for k, v in self.xattrs:
                x: dict[str, Any] = {"value_b64": base64.b64encode(v).decode("ascii")}
                _put_bytes(x, "name", k)
                xs.append(x)
            d["xattrs"] = xs
        if self.target is not None:
            _put_bytes(d, "target", self.target)
        if self.rdev is not None:
            d["rdev"] = self.rdev
        if self.subtree is not None:
            d["subtree"] = self.subtree.hex()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Node:
        # Hot: every node of the parent snapshot is decoded by every backup. Plain ints pass
        # through (int() only when JSON gave something else, which then must convert).
        get = d.get
        name = d.get("name")
        if type(name) is str:
            name = name.encode("utf-8")
        else:
            name = _get_bytes(d, "name")
            if name is None:
                raise ValueError("node without a name")
        ntype = d["type"]
        if ntype not in NODE_TYPES:
            raise ValueError(f"unknown node type {ntype!r}")
        xattrs = []
        for x in get("xattrs", ()):
            k = _get_bytes(x, "name")
            if k is None:
                raise ValueError("xattr without a name")
            xattrs.append((k, base64.b64decode(x["value_b64"], validate=True)))
        sub = get("subtree")
        extents = get("extents")
        rdev = get("rdev")
        target = _get_bytes(d, "target")
        return cls(
            name,
            ntype,
            _int(get("mode", 0)),
            _int(get("uid", 0)),
            _int(get("gid", 0)),
            _int(get("mtime_ns", 0)),
            _int(get("atime_ns", 0)),
            _int(get("ctime_ns", 0)),
            _int(get("inode", 0)),
            _int(get("device", 0)),
            _int(get("links", 1)),
            _int(get("size", 0)),
            xattrs,
            target,
            _int(rdev) if rdev is not None else None,
            [bytes.fromhex(c) for c in get("content", ())],
            [(int(o), int(n)) for o, n in extents] if extents is not None else None,
            str(get("chunking", "")),
            bytes.fromhex(sub) if sub is not None else None,
        )

    @property
    def display_name(self) -> str:
        return self.name.decode("utf-8", "surrogateescape")


@dataclass
class Tree:
    nodes: list[Node] = field(default_factory=list)

    def encode(self) -> bytes:
        self.nodes.sort(key=lambda n: n.name)
        doc = {"nodes": [n.to_json() for n in self.nodes]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, *, what: str) -> Tree:
        try:
            doc = json.loads(data)
            return cls([Node.from_json(n) for n in doc["nodes"]])
        except (ValueError, KeyError, TypeError) as err:
            raise IntegrityError(f"{what}: malformed tree ({err})") from None

    def find(self, name: bytes) -> Node | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None
