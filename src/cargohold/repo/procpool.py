"""Worker processes for the backup pipeline (the parent's side; see :mod:`.procworker`).

The archiver's walk submits changed files; each worker process asks for a few at a time,
reads and stores them itself (packs included) and reports every pack it wrote and every
file's content. One thread per worker in this process answers it: claims of chunk ids
against the repository's index and in-flight set (so dedup is exact across workers), new
packs into the index, finished files into their nodes.

Only repositories whose backend a child process can open by itself from its URL (a
local directory, a remote store) use workers; others (in-memory, fault-injecting) keep
the in-process threads. Each worker uploads its share of the backend's connections of
packs at once (:func:`cargohold.repo.storage.uploads_per_process`) and reports its
request counts at the end, which are added to the repository's. If a worker fails or dies the backup
fails: the archiver commits no snapshot, so nothing refers to a blob that was never
written.
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from cargohold.repo.child import WorkerFailed, child_error, died, spawn
from cargohold.repo.fileread import FileRead
from cargohold.repo.format import ID_SIZE
from cargohold.repo.progress import Progress
from cargohold.repo.repository import Repository
from cargohold.repo.storage import uploads_per_process

#: A worker is handed up to this many files, or this many bytes of them, at a time.
_TAKE_FILES = 64
_TAKE_BYTES = 4 * 1024 * 1024

Done = Callable[[FileRead], bool]


class _Task:
    """A queued file; :meth:`result` waits for it like ``Future.result`` (a Future per file
    costs a Condition and two locks: measurable at 20,000 files)."""

    __slots__ = ("done", "ok", "path", "previous_chunking", "size", "store")

    def __init__(self, store: ProcessStore, path: bytes, size: int, previous: str | None, done: Done) -> None:
        self.store = store
        self.path = path
        self.size = size
        self.previous_chunking = previous
        self.done = done
        self.ok: bool | None = None

    def result(self) -> bool:
        if self.ok is None:
            with self.store.finished:
                while self.ok is None:
                    self.store.finished.wait()
        return self.ok


@dataclass
class _Proc:
    proc: subprocess.Popen[bytes]
    conn: Connection
    tasks: dict[int, _Task] = field(default_factory=dict)
    seq: int = 0
    #: Blobs the parent told this worker to store that no reported pack holds yet.
    claimed: set[bytes] = field(default_factory=set)
    thread: threading.Thread | None = None


class ProcessStore:
    """Stores files through ``n`` worker processes; see the module docstring."""

    def __init__(
        self,
        repo: Repository,
        n: int,
        progress: Progress,
        on_error: Callable[[BaseException], None],
        setup: dict[str, Any] | None = None,
    ) -> None:
        setup = setup if setup is not None else repo.worker_setup()
        if setup is None:
            raise ValueError("this repository's backend cannot be opened by a worker process")
        n = max(1, n)
        setup = {**setup, "uploads": uploads_per_process(int(setup.get("connections", 1)), n)}
        self.repo = repo
        local = repo.local_dir()
        #: Where a killed worker's staged pack may be left (a local repository).
        self._root = str(local) if local is not None else None
        self.progress = progress
        self._on_error = on_error
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._failed: BaseException | None = None
        #: Notified whenever tasks finish.
        self.finished = threading.Condition()
        self._procs: list[_Proc] = []
        try:
            for _ in range(n):
                self._procs.append(_spawn(setup))
        except BaseException:
            self.abort()
            raise
        for p in self._procs:
            p.thread = threading.Thread(target=self._serve, args=(p,), name="ch-proc", daemon=True)
            p.thread.start()

    def submit(self, path: bytes, size: int, previous_chunking: str | None, done: Done) -> _Task:
        """Queue a file; its ``result()`` says whether it was stored (``done`` ran with its content)."""
        task = _Task(self, path, size, previous_chunking, done)
        with self.finished:  # against _fail: a task is either drained by it or never queued
            if self._failed is not None:
                task.ok = False
            else:
                self._queue.put(task)
        return task

    def close(self) -> None:
        """Let the workers finish (their last packs are written and indexed); raise their error."""
        for _ in self._procs:
            self._queue.put(None)
        for p in self._procs:
            if p.thread is not None:
                p.thread.join()
            try:
                p.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
            p.conn.close()
            self._forget(p)
        if self._failed is not None:
            raise self._failed

    def abort(self) -> None:
        """Stop the workers now (the backup is failing)."""
        for p in self._procs:
            with contextlib.suppress(OSError):
                p.proc.kill()
            self._queue.put(None)  # wakes a thread waiting for work to hand out
        for p in self._procs:
            p.proc.wait()
            if p.thread is not None and p.thread is not threading.current_thread():
                p.thread.join()  # before closing the socket it may still be reading
            with contextlib.suppress(OSError):
                p.conn.close()
            self._forget(p)

    def _forget(self, p: _Proc) -> None:
        """After a worker is gone: give back the blobs it claimed but never reported in a
        pack (or a later backup on this repository would take them for stored), and remove
        the pack it was writing (a killed worker cannot)."""
        if p.claimed:
            self.repo.release_many(p.claimed)
            p.claimed.clear()
        if self._root is None:
            return
        for leftover in glob.glob(os.path.join(glob.escape(self._root), "data", f".staged~tmp~{p.proc.pid}-*")):
            with contextlib.suppress(OSError):
                os.unlink(leftover)

    # --- one thread per worker ------------------------------------------------------

    def _serve(self, p: _Proc) -> None:
        conn = p.conn
        repo = self.repo
        try:
            while True:
                msg: tuple[Any, ...] = conn.recv()
                kind = msg[0]
                if kind == "claim":
                    ids: bytes = msg[1]
                    wanted = [ids[i : i + ID_SIZE] for i in range(0, len(ids), ID_SIZE)]
                    answer = repo.reserve_many(wanted)
                    p.claimed.update(bid for bid, want in zip(wanted, answer, strict=True) if want)
                    conn.send_bytes(answer)
                    self.progress.advance(msg[2])
                elif kind == "pack":
                    repo.add_written_pack(msg[1])
                    p.claimed.difference_update(b.id for b in msg[1].blobs)
                elif kind == "files":
                    with self.finished:
                        for seq, result in msg[1]:
                            task = p.tasks.pop(seq)
                            try:
                                task.ok = task.done(result)
                            except BaseException:
                                task.ok = False  # never left waiting
                                raise
                        self.finished.notify_all()
                    self.progress.advance(0, len(msg[1]))
                elif kind == "next":
                    batch = self._take()
                    if batch is None:
                        conn.send(("stop",))
                        continue
                    items = []
                    for task in batch:
                        p.seq += 1
                        p.tasks[p.seq] = task
                        items.append((p.seq, task.path, task.previous_chunking))
                    conn.send(("files", items))
                elif kind == "bye":
                    repo.requests.merge(msg[1])
                    return
                elif kind == "fatal":
                    raise child_error(msg)
                else:
                    raise WorkerFailed(f"a backup worker sent an unknown message {kind!r}")
        except (EOFError, OSError):
            self._fail(died(conn, "a backup worker"), p)
        except BaseException as err:
            self._fail(err, p)

    def _take(self) -> list[_Task] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch, nbytes = [first], first.size
        while len(batch) < _TAKE_FILES and nbytes < _TAKE_BYTES:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is None:
                self._queue.put(None)
                break
            batch.append(task)
            nbytes += task.size
        return batch

    def _fail(self, err: BaseException, p: _Proc) -> None:
        with self._lock:
            first = self._failed is None
            if first:
                self._failed = err
        with contextlib.suppress(OSError):
            p.proc.kill()
        p.proc.wait()
        self._forget(p)
        if first:
            self._on_error(err)
        stops = 0
        with self.finished:
            for task in p.tasks.values():
                task.ok = False
            p.tasks.clear()
            while True:  # nothing queued will be stored now
                try:
                    queued = self._queue.get_nowait()
                except queue.Empty:
                    break
                if queued is None:
                    stops += 1
                else:
                    queued.ok = False
            self.finished.notify_all()
        for _ in range(stops):
            self._queue.put(None)


def _spawn(setup: dict[str, Any]) -> _Proc:
    return _Proc(*spawn("cargohold.repo.procworker", setup))
