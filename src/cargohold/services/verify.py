"""Prove a snapshot restores: restore it into scratch space and compare every entry with it.

* Volume and bind snapshots are restored into a scratch Docker volume (plain local driver,
  never the snapshot's driver options, which may point at the live data) the way a real
  restore would go, then read back — from the mountpoint, or as a tar through the Engine
  API — and compared. Directory snapshots are restored into a scratch directory.
* Every entry is compared: type, mode, owner, modification time (to the second through the
  Engine API, which carries no more), symlink target, size and content. Content is compared
  by cutting the restored file the way the snapshot cut it and computing the keyed chunk ids:
  equal ids mean equal bytes, and nothing has to be read from the repository twice. Unix
  sockets must be there too, except where a tar was involved (the Engine API's tars cannot
  hold them).
* Application dumps stored with the snapshot are each loaded into a scratch volume by a
  scratch container of the recorded image, and a sanity query is run
  (:func:`cargohold.services.dump_restore.check_dumps`); a dump that fails makes the
  verification fail.
* The scratch volume or directory is always removed; the outcome is stored in the repository
  (:mod:`cargohold.repo.verifications`).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, cast

import blake3

from cargohold.docker.connect import Endpoint
from cargohold.docker.helper import OWNER_LABEL, helper_container
from cargohold.docker.port import DockerPort
from cargohold.errors import BackendError, ConsistencyError, IntegrityError, UsageError
from cargohold.procinfo import owner_token
from cargohold.repo.chunker import Chunker, ChunkSource, ExtentReader, data_extents
from cargohold.repo.fsnode import node_type
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import Restorer
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tar_archiver import member_type
from cargohold.repo.tar_writer import Content, file_body
from cargohold.repo.tree import DIR, FILE, SOCKET, SYMLINK, Node
from cargohold.repo.verifications import DumpCheck, VerificationRecord, save
from cargohold.services.docker_backup import HELPER_MOUNT
from cargohold.services.docker_restore import RESTORABLE_KINDS, VolumeRestoreRequest, restore_volume
from cargohold.services.docker_sources import Via
from cargohold.services.dump_restore import check_dumps
from cargohold.services.intents import IntentJournal
from cargohold.services.repository import locks_of
from cargohold.streams import open_stream

#: Differences listed in a record; the count says how many there were in all.
MAX_PROBLEMS = 50
SCRATCH_LABEL = "cargohold.verify"


@dataclass
class Observed:
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    target: bytes | None = None
    chunks: list[bytes] | None = None
    digest: bytes | None = None


@dataclass
class Comparison:
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    total_problems: int = 0

    def problem(self, text: str) -> None:
        self.total_problems += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


def expected_nodes(repo: Repository, snapshot: Snapshot) -> dict[str, Node]:
    """Every entry of the snapshot by relative path ("" = the root)."""
    out: dict[str, Node] = {}
    if snapshot.root is not None:
        out[""] = snapshot.root

    def walk(tree_id: bytes, prefix: str) -> None:
        for node in repo.load_tree(tree_id).nodes:
            path = f"{prefix}{os.fsdecode(node.name)}"
            out[path] = node
            if node.type == DIR and node.subtree is not None:
                walk(node.subtree, path + "/")

    walk(snapshot.tree, "")
    return out


class Hasher:
    """Content fingerprints of restored files, comparable with the snapshot's nodes."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.chunker = Chunker(repo.config.chunker, repo.key.chunker_seed)

    def chunk_ids(self, reader: object, node: Node, size: int) -> list[bytes]:
        return [self.repo.blob_id(c) for c in self.chunker.chunks(cast(ChunkSource, reader), node.chunking, size)]

    def expected_digest(self, node: Node, content: Content) -> bytes:
        h = blake3.blake3()
        for piece in file_body(node, content):
            h.update(piece)
        return h.digest()


def observe_path(full: str, node: Node | None, hasher: Hasher) -> Observed:
    st = os.lstat(full)
    kind = _kind(st.st_mode)
    obs = Observed(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    if kind == SYMLINK:
        obs.target = os.fsencode(os.readlink(full))
    elif kind == FILE:
        obs.size = st.st_size
        if node is not None and node.type == FILE:
            fd = os.open(full, os.O_RDONLY)
            try:
                extents = data_extents(fd, st.st_size) if node.extents is not None else None
                if node.extents is not None and extents != node.extents:
                    # The holes were not kept (written through the archive API, or a file system
                    # without them): compare the bytes, zeros included, not the chunks.
                    with os.fdopen(os.dup(fd), "rb") as f:
                        obs.digest = _digest(f)
                else:
                    data_size = st.st_size if extents is None else sum(n for _, n in extents)
                    obs.chunks = hasher.chunk_ids(ExtentReader(fd, extents, st.st_size), node, data_size)
            finally:
                os.close(fd)
    return obs


def observe_dir(root: Path, expected: dict[str, Node], hasher: Hasher) -> Iterator[tuple[str, Observed]]:
    yield "", observe_path(str(root), expected.get(""), hasher)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for name in sorted([*dirnames, *filenames]):
            rel = prefix + name
            yield rel, observe_path(os.path.join(dirpath, name), expected.get(rel), hasher)


def _kind(mode: int) -> str:
    return node_type(mode) or "other"


def _digest(stream: IO[bytes]) -> bytes:
    h = blake3.blake3()
    while piece := stream.read(1 << 20):
        h.update(piece)
    return h.digest()


def observe_tar(stream: IO[bytes], expected: dict[str, Node], hasher: Hasher) -> Iterator[tuple[str, Observed]]:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            rel = os.path.normpath(member.name).removeprefix("./")
            rel = "" if rel == "." else rel
            kind = member_type(member) or "other"
            obs = Observed(kind, member.mode & 0o7777, member.uid, member.gid, int(member.mtime) * 1_000_000_000)
            if member.issym():
                obs.target = os.fsencode(member.linkname)
            node = expected.get(rel)
            if member.islnk():
                target = expected.get(os.path.normpath(member.linkname).removeprefix("./"))
                obs.size = target.size if target is not None else 0
                obs.chunks = list(target.content) if target is not None else None
            elif member.isreg():
                obs.size = member.size
                data = tar.extractfile(member)
                if data is not None and node is not None and node.type == FILE:
                    if node.extents is None:
                        obs.chunks = hasher.chunk_ids(data, node, member.size)
                    else:
                        obs.digest = _digest(data)
            yield rel, obs


def compare(
    repo: Repository,
    expected: dict[str, Node],
    observed: Iterator[tuple[str, Observed]],
    *,
    seconds_only: bool,
    owners: bool,
    hasher: Hasher,
    content: Content | None = None,
    sockets: bool = True,
) -> Comparison:
    """Compare what was restored with the snapshot. ``sockets``: whether the restore could
    recreate unix sockets (a restore through a tar cannot: their absence is no difference)."""
    result = Comparison()
    seen: set[str] = set()
    for path, obs in observed:
        seen.add(path)
        node = expected.get(path)
        where = path or "/"
        if node is None:
            result.problem(f"{where}: not in the snapshot")
            continue
        if node.type != obs.type:
            result.problem(f"{where}: is a {obs.type}, the snapshot has a {node.type}")
            continue
        if node.type != SYMLINK and node.mode != obs.mode:
            result.problem(f"{where}: mode {obs.mode:o}, the snapshot has {node.mode:o}")
        if owners and (node.uid, node.gid) != (obs.uid, obs.gid):
            result.problem(f"{where}: owner {obs.uid}:{obs.gid}, the snapshot has {node.uid}:{node.gid}")
        want_mtime = node.mtime_ns // 1_000_000_000 * 1_000_000_000 if seconds_only else node.mtime_ns
        if node.type != SYMLINK and path and want_mtime != obs.mtime_ns:
            result.problem(f"{where}: modified {obs.mtime_ns} ns, the snapshot has {want_mtime}")
        if node.type == SYMLINK and node.target != obs.target:
            result.problem(f"{where}: link target differs")
        if node.type == FILE:
            result.files += 1
            result.bytes += node.size
            if node.size != obs.size:
                result.problem(f"{where}: {obs.size} bytes, the snapshot has {node.size}")
            elif obs.chunks is not None:
                if obs.chunks != node.content:
                    result.problem(f"{where}: content differs")
            elif obs.digest is not None and content is not None:
                if obs.digest != hasher.expected_digest(node, content):
                    result.problem(f"{where}: content differs")
            else:
                result.problem(f"{where}: content not checked")
    for path in sorted(set(expected) - seen):
        if sockets or expected[path].type != SOCKET:
            result.problem(f"{path or '/'}: missing")
    return result


@dataclass
class VerifyRequest:
    via: Via = Via.AUTO
    journal: IntentJournal = field(default_factory=IntentJournal)


def _verify_in_volume(
    repo: Repository, docker: DockerPort, endpoint: Endpoint, snapshot: Snapshot, req: VerifyRequest
) -> tuple[Comparison, str, str]:
    engine = docker.engine_info()
    scratch = f"cargohold-verify-{snapshot.id[:8]}-{uuid.uuid4().hex[:6]}"
    docker.create_volume(scratch, labels={SCRATCH_LABEL: snapshot.id, OWNER_LABEL: owner_token()})
    try:
        report = restore_volume(
            repo, docker, endpoint, snapshot, VolumeRestoreRequest(to=scratch, via=req.via, journal=req.journal)
        )
        if report.damaged:
            cmp = Comparison()
            for path, why in sorted(report.damaged.items()):
                cmp.problem(f"{path}: damaged in the repository: {why}")
            return cmp, report.via.value, engine.host
        expected = expected_nodes(repo, snapshot)
        hasher = Hasher(repo)
        mountpoint = docker.inspect_volume(scratch).mountpoint
        readable = engine.local and mountpoint and os.access(mountpoint, os.R_OK | os.X_OK)
        if readable and req.via is not Via.API:
            observed = observe_dir(Path(mountpoint), expected, hasher)
            with ThreadPoolExecutor(2) as pool:
                cmp = compare(
                    repo,
                    expected,
                    observed,
                    seconds_only=report.via is Via.API,
                    owners=True,
                    hasher=hasher,
                    content=Content(repo, pool),
                    sockets=report.via is not Via.API,
                )
            return cmp, report.via.value, engine.host
        mount = {"Type": "volume", "Source": scratch, "Target": HELPER_MOUNT, "ReadOnly": True}
        with (
            helper_container(docker, [mount], purpose="verify") as cid,
            open_stream(docker.get_archive(cid, f"{HELPER_MOUNT}/.")) as stream,
            ThreadPoolExecutor(2) as pool,
        ):
            observed = observe_tar(stream, expected, hasher)
            cmp = compare(
                repo,
                expected,
                observed,
                seconds_only=True,
                owners=True,
                hasher=hasher,
                content=Content(repo, pool),
                sockets=False,  # the engine's tar leaves sockets out, whether they were restored or not
            )
        return cmp, report.via.value, engine.host
    finally:
        docker.remove_volume(scratch, force=True)


def _verify_in_directory(repo: Repository, snapshot: Snapshot) -> Comparison:
    scratch = Path(tempfile.mkdtemp(prefix="cargohold-verify-"))
    try:
        result = Restorer(repo).run(snapshot, scratch / "r")
        if result.damaged:
            cmp = Comparison()
            for path, why in sorted(result.damaged.items()):
                cmp.problem(f"{path}: damaged in the repository: {why}")
            return cmp
        expected = expected_nodes(repo, snapshot)
        hasher = Hasher(repo)
        observed = observe_dir(scratch / "r", expected, hasher)
        with ThreadPoolExecutor(2) as pool:
            return compare(
                repo,
                expected,
                observed,
                seconds_only=False,
                owners=os.geteuid() == 0,
                hasher=hasher,
                content=Content(repo, pool),
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def verify(
    repo: Repository,
    snapshot: Snapshot,
    *,
    docker: DockerPort | None = None,
    endpoint: Endpoint | None = None,
    request: VerifyRequest | None = None,
) -> VerificationRecord:
    """Restore ``snapshot`` into scratch space, compare, clean up, and record the outcome."""
    req = request or VerifyRequest()
    started = time.monotonic()
    via, engine_host = "", ""
    if snapshot.source.kind in RESTORABLE_KINDS:
        if docker is None or endpoint is None:
            raise UsageError(f"verifying a {snapshot.source.kind} snapshot needs a Docker engine")
        method = "volume"
        try:
            cmp, via, engine_host = _verify_in_volume(repo, docker, endpoint, snapshot, req)
        except (IntegrityError, BackendError, ConsistencyError) as err:
            # what the snapshot cannot give back is the verdict; engine trouble is not (it raises)
            cmp = Comparison()
            cmp.problem(f"restore failed: {err}")
    else:
        method, via = "directory", "direct"
        repo.load_index()
        cmp = _verify_in_directory(repo, snapshot)
    dumps: list[DumpCheck] = []
    if snapshot.source.meta.get("dumps") and docker is not None:
        with locks_of(repo).shared(f"verify dumps of {snapshot.short_id}"):
            repo.load_index()
            dumps = check_dumps(repo, docker, snapshot, labels={SCRATCH_LABEL: snapshot.id})
    problems = list(cmp.problems)
    if cmp.total_problems > len(cmp.problems):
        problems.append(f"... and {cmp.total_problems - len(cmp.problems)} more")
    problems += [f"{d.kind} dump of {d.container}: {d.detail}" for d in dumps if not d.ok]
    record = VerificationRecord(
        snapshot_id=snapshot.id,
        source_kind=snapshot.source.kind,
        source_name=snapshot.source.name,
        time=datetime.now(UTC),
        ok=cmp.total_problems == 0 and all(d.ok for d in dumps),
        method=method,
        via=via,
        files=cmp.files,
        bytes=cmp.bytes,
        problems=problems,
        dumps=dumps,
        seconds=round(time.monotonic() - started, 3),
        engine=engine_host,
    )
    save(repo, record)
    return record
