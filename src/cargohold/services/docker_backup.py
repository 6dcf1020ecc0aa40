"""Back up Docker state: one snapshot per volume or bind mount, consistent, grouped by a run id.

For each source of the run (see :mod:`cargohold.services.docker_sources`):

1. decide each user container's consistency mode (labels, image, ``--consistency``); the
   most careful mode among the users of the source applies to its files;
2. under :class:`~cargohold.services.quiesce.Quiescer`: pre-hooks; application dumps of
   ``dump`` containers while they run; pause or stop; read the files — directly from the
   mountpoint, or as a tar through the Engine archive API; then put every container back
   and run the post-hooks;
3. the snapshot (written last, the repository's commit point) records what is needed to
   recreate the volume exactly: name, driver, options, labels, root owner and mode, the
   containers that used it (image and digest, mount path, compose labels), the engine, the
   host, the read path and the consistency used.

A failing pre-hook or dump aborts that source: no snapshot, every container running.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cargohold import __version__
from cargohold.docker.connect import Endpoint
from cargohold.docker.helper import helper_container, sweep_leftovers
from cargohold.docker.port import DockerPort
from cargohold.errors import CargoholdError, DockerNotFound
from cargohold.model.consistency import Decision, Mode, decide, strongest
from cargohold.model.engine import EngineInfo
from cargohold.repo.archiver import Archiver, BackupOptions, BackupResult
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.snapshot import Snapshot, Source
from cargohold.repo.tar_archiver import TarArchiver
from cargohold.repo.tar_writer import directory_tar
from cargohold.services.docker_sources import SourceKind, StateSource, Via, choose_via, container_meta
from cargohold.services.dumps import DUMPS_TREE, DumpFile, dump
from cargohold.services.intents import IntentJournal
from cargohold.services.quiesce import Participant, Quiescer, Window
from cargohold.services.repository import locks_of, parents_then_index

#: Where the volume (or bind source) is mounted in a helper container.
HELPER_MOUNT = "/volume"


@dataclass
class SourceResult:
    source: StateSource
    via: Via
    via_reason: str
    mode: Mode
    snapshot: Snapshot | None = None
    result: BackupResult | None = None
    #: container name -> seconds paused or stopped
    downtime: dict[str, float] = field(default_factory=dict)
    dumps: list[DumpFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    exception: CargoholdError | None = None
    seconds: float = 0.0


@dataclass
class _BeforeFreeze:
    """What is done while the containers still run: dumps, and the pre-pass over the files."""

    extra_trees: dict[str, bytes] = field(default_factory=dict)
    prepass: Snapshot | None = None
    #: the repository's (added bytes, raw bytes, blobs) before the pre-pass
    counters: tuple[int, int, int] | None = None


@dataclass
class RunReport:
    run_id: str
    results: list[SourceResult] = field(default_factory=list)

    @property
    def failed(self) -> list[SourceResult]:
        return [r for r in self.results if r.error is not None]


@dataclass
class BackupRequest:
    via: Via = Via.AUTO
    consistency: Mode | None = None
    tags: Sequence[str] = ()
    skip_if_unchanged: bool = False
    progress_factory: Callable[[str], Progress] = field(default=lambda _label: NullProgress())
    journal: IntentJournal = field(default_factory=IntentJournal)
    #: Only the files: no hooks, no dumps, no stop or pause (a safety snapshot taken while the
    #: caller already holds the containers stopped).
    files_only: bool = False


def _decisions(source: StateSource, request: BackupRequest) -> list[tuple[Participant, str | None]]:
    """One decision per container (a container mounting the source twice is held once)."""
    out = []
    seen: set[str] = set()
    for user in source.users:
        if user.container.id in seen:
            continue
        seen.add(user.container.id)
        c = user.container
        if request.files_only:
            decision = Decision(Mode.NONE, None, None, None, "files only")
        else:
            decision = decide(c.name, c.image, c.labels, override=request.consistency)
        out.append((Participant(c, decision), decision.warning))
    return out


def _image_digests(docker: DockerPort, image_id: str, cache: dict[str, list[str]]) -> list[str]:
    if image_id not in cache:
        try:
            cache[image_id] = list(docker.inspect_image(image_id).digests)
        except DockerNotFound:
            cache[image_id] = []
    return cache[image_id]


def source_meta(
    docker: DockerPort,
    engine: EngineInfo,
    source: StateSource,
    *,
    run_id: str,
    via: Via,
    mode: Mode,
    held: Sequence[Participant],
    digests: dict[str, list[str]],
) -> dict[str, Any]:
    volume = source.volume
    return {
        "run_id": run_id,
        "via": via.value,
        "volume": {
            "name": volume.name,
            "driver": volume.driver,
            "options": dict(volume.options),
            "labels": dict(volume.labels),
            "scope": volume.scope,
        }
        if volume is not None
        else None,
        "bind": {"path": source.name} if source.kind is SourceKind.BIND else None,
        "containers": [container_meta(u, _image_digests(docker, u.container.image_id, digests)) for u in source.users],
        "consistency": {
            "mode": mode.value,
            "containers": {
                p.container.name: {"mode": p.decision.mode.value, "reason": p.decision.reason} for p in held
            },
        },
        "engine": {"id": engine.id, "name": engine.name, "host": engine.host, "version": engine.server_version},
        "host": socket.gethostname(),
        "cargohold_version": __version__,
    }


class DockerBackup:
    """One backup run over several sources of one engine."""

    def __init__(self, repo: Repository, docker: DockerPort, endpoint: Endpoint, request: BackupRequest) -> None:
        self.repo = repo
        self.docker = docker
        self.request = request
        self.engine = docker.engine_info()
        self.quiescer = Quiescer(docker, request.journal, endpoint=endpoint, engine_id=self.engine.id)
        self._digests: dict[str, list[str]] = {}

    def run(self, sources: Sequence[StateSource]) -> RunReport:
        report = RunReport(run_id=uuid.uuid4().hex[:16])
        sweep_leftovers(self.docker)  # what an earlier, killed run left on this engine
        with locks_of(self.repo).shared(f"backup run {report.run_id}"):
            parents = parents_then_index(self.repo)
            for source in sources:
                report.results.append(self._one(source, report.run_id, parents))
        return report

    def _one(self, source: StateSource, run_id: str, parents: dict[tuple[str, str], Snapshot]) -> SourceResult:
        started = time.monotonic()
        try:
            via, path, why = choose_via(self.engine, source, self.request.via)
            decided = _decisions(source, self.request)
        except CargoholdError as err:  # a bad label or an impossible --via fails this source only
            res = SourceResult(source, self.request.via, str(err), Mode.NONE, error=str(err), exception=err)
            res.seconds = time.monotonic() - started
            return res
        mode = strongest([p.decision.mode for p, _ in decided])
        res = SourceResult(source, via, why, mode)
        res.warnings += [w for _, w in decided if w]
        participants = [p for p, _ in decided]
        meta = source_meta(
            self.docker,
            self.engine,
            source,
            run_id=run_id,
            via=via,
            mode=mode,
            held=participants,
            digests=self._digests,
        )
        spool = Path(tempfile.mkdtemp(prefix="cargohold-dumps-"))
        try:
            before = _BeforeFreeze()

            def take_dumps() -> None:
                """Dumps while everything still runs; stored before any container is frozen."""
                for p in participants:
                    if p.decision.dump is not None:
                        user = next(u for u in source.users if u.container.id == p.container.id)
                        taken = dump(
                            self.docker,
                            p.container,
                            p.decision.dump,
                            spool / p.container.name,
                            volume_root=Path(path) if path else None,
                            mount_path=user.mount_path,
                        )
                        # paths in the dumps tree: CONTAINER/KIND/FILE
                        res.dumps += [replace(d, path=f"{p.container.name}/{d.path}") for d in taken]
                if res.dumps:
                    # The dumps go into the same snapshot, as a tree of their own beside the files.
                    before.extra_trees[DUMPS_TREE] = TarArchiver(self.repo).build_tree(
                        directory_tar(spool), name=f"dumps of {source.label}"
                    )
                if via is Via.DIRECT and path is not None and mode in (Mode.STOP, Mode.PAUSE):
                    # Read everything while the containers still run; frozen, only what changed
                    # since then is read again: the stop is as short as the last changes.
                    before.counters = (self.repo.added_bytes, self.repo.added_raw_bytes, self.repo.added_blobs)
                    opts = BackupOptions(parent=parents.get((source.kind.value, source.name)))
                    before.prepass = Archiver(self.repo, opts).prepass(path)

            with self.quiescer.hold(
                participants, purpose=f"backup of {source.label}", mode=mode, before_freeze=take_dumps
            ) as window:
                res.result = self._read(source, via, path, meta, res, parents, before)
            self._finish(res, window)
        except CargoholdError as err:
            res.error, res.exception = str(err), err
        finally:
            shutil.rmtree(spool, ignore_errors=True)
            res.seconds = time.monotonic() - started
        return res

    def _read(
        self,
        source: StateSource,
        via: Via,
        path: str | None,
        meta: dict[str, Any],
        res: SourceResult,
        parents: dict[tuple[str, str], Snapshot],
        before: _BeforeFreeze,
    ) -> BackupResult:
        meta["dumps"] = [d.to_json() for d in res.dumps]
        snap_source = Source(source.kind.value, source.name, meta)
        opts = BackupOptions(
            source=snap_source,
            tags=list(self.request.tags),
            parent=parents.get((source.kind.value, source.name)),
            # a volume's files keep their inodes; ctime changes on chown/chmod only
            ignore_inode=False,
            skip_if_unchanged=self.request.skip_if_unchanged,
            progress=self.request.progress_factory(source.label),
            extra_trees=before.extra_trees,
            reference=before.prepass,
        )
        if via is Via.DIRECT:
            assert path is not None
            return Archiver(self.repo, opts).run(path, since=before.counters)
        mount: dict[str, object]
        if source.kind is SourceKind.VOLUME:
            mount = {"Type": "volume", "Source": source.name, "Target": HELPER_MOUNT, "ReadOnly": True}
        else:
            mount = {"Type": "bind", "Source": source.name, "Target": HELPER_MOUNT, "ReadOnly": True}
        ctx: AbstractContextManager[str] = helper_container(self.docker, [mount], purpose=f"read {source.label}")
        with ctx as cid:
            return TarArchiver(self.repo, opts).run_tar(
                self.docker.get_archive(cid, f"{HELPER_MOUNT}/."), name=source.label
            )

    @staticmethod
    def _finish(res: SourceResult, window: Window) -> None:
        res.downtime = dict(window.downtime)
        res.warnings += window.warnings
        if res.result is not None:
            res.snapshot = res.result.snapshot
            res.warnings += res.result.warnings
