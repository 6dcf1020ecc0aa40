"""Property: backup then restore reproduces any tree byte-exactly, metadata included."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.backends import MemoryBackend
from cargohold.repo.archiver import Archiver
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import Restorer

ROOT = os.geteuid() == 0

names = st.binary(min_size=1, max_size=24).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
times = st.integers(min_value=0, max_value=4_000_000_000 * 10**9)


@dataclass
class Entry:
    kind: str  # file, sparse, big, dir, symlink, fifo, hardlink
    name: bytes
    mode: int
    mtime: int
    uid: int
    data: bytes = b""
    size: int = 0
    link_to: int = 0
    xattr: bytes | None = None


entry = st.builds(
    Entry,
    kind=st.sampled_from(["file", "file", "file", "sparse", "big", "dir", "symlink", "fifo", "hardlink"]),
    name=names,
    mode=st.integers(0, 0o7777),
    mtime=times,
    uid=st.integers(0, 70000),
    data=st.binary(max_size=3000),
    size=st.integers(0, 3 * 1024 * 1024),
    link_to=st.integers(0, 1000),
    xattr=st.none() | st.binary(max_size=100),
)


def build(root: Path, entries: list[Entry]) -> None:
    root_b = os.fsencode(root)
    dirs = [root_b]
    files: list[bytes] = []
    created: set[bytes] = set()
    fixups: list[tuple[bytes, Entry]] = []
    for e in entries:
        parent = dirs[e.link_to % len(dirs)]
        path = parent + b"/" + e.name
        if path in created:
            continue
        if e.kind == "hardlink":
            if not files:
                continue
            os.link(files[e.link_to % len(files)], path)
            created.add(path)
            continue
        created.add(path)
        if e.kind == "dir":
            os.mkdir(path)
            dirs.append(path)
        elif e.kind == "symlink":
            os.symlink(e.data[:200].replace(b"\0", b"") or b"x", path)
        elif e.kind == "fifo":
            os.mkfifo(path)
        else:
            with open(path, "wb") as f:
                if e.kind == "file":
                    f.write(e.data)
                elif e.kind == "sparse":
                    f.truncate(e.size + 1)
                    f.seek(e.size // 2)
                    f.write(e.data)
                else:  # big: page-sized (fixed chunks) or not (CDC)
                    size = e.size - e.size % 8192 if e.mode % 2 else e.size
                    block = (e.data or b"z") * (1 + 65536 // max(1, len(e.data)))
                    f.write((block * (1 + size // len(block)))[:size])
            files.append(path)
        fixups.append((path, e))
    for path, e in reversed(fixups):  # children before parents
        if e.xattr is not None and e.kind not in ("symlink", "fifo"):  # user.* only on files and dirs
            os.setxattr(path, b"user.prop", e.xattr)
        if ROOT:
            os.chown(path, e.uid, e.uid % 5000, follow_symlinks=False)
        if e.kind != "symlink":
            os.chmod(path, e.mode)
        os.utime(path, ns=(e.mtime // 3, e.mtime), follow_symlinks=False)


def describe(root: Path) -> dict[bytes, tuple[object, ...]]:
    out: dict[bytes, tuple[object, ...]] = {}
    first_path: dict[int, bytes] = {}
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root_b)
            s = os.lstat(p)
            content: object = None
            if stat.S_ISREG(s.st_mode):
                fd = os.open(p, os.O_RDONLY | os.O_NOATIME)  # reading must not change what we compare
                with os.fdopen(fd, "rb") as f:
                    content = f.read()
            elif stat.S_ISLNK(s.st_mode):
                content = os.readlink(p)
            link = first_path.setdefault(s.st_ino, rel) if s.st_nlink > 1 else None
            xattrs = sorted(
                (k, os.getxattr(p, k, follow_symlinks=False)) for k in os.listxattr(p, follow_symlinks=False)
            )
            out[rel] = (
                stat.S_IFMT(s.st_mode),
                stat.S_IMODE(s.st_mode),
                s.st_uid,
                s.st_gid,
                s.st_mtime_ns,
                # access times of files (listing a directory to compare it changes its own)
                s.st_atime_ns if stat.S_ISREG(s.st_mode) else None,
                s.st_size,
                content,
                link,
                s.st_nlink,
                xattrs,
                s.st_blocks if stat.S_ISREG(s.st_mode) else None,
            )
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(entry, max_size=14))
def test_backup_restore_round_trip(entries: list[Entry]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        build(src, entries)
        before = describe(src)
        repo = Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)
        res = Archiver(repo).run(src)
        assert res.snapshot is not None and not res.warnings
        out = Path(tmp) / "out"
        restored = Restorer(repo).run(res.snapshot, out)
        assert not restored.damaged and not restored.warnings
        assert describe(out) == before
