"""The data phase of a restore: needed blobs read pack by pack, checked, written to files.

The restorer plans which blobs go where (:data:`Job`: one pack and the blobs needed from
it); a :class:`DataWriter` carries a job out: one ranged read per dense span of the pack
(:meth:`DataWriter.fetch`), then decrypt, decompress, check the blob id, ``pwrite`` to every
place that needs it (:meth:`DataWriter.apply`). A blob that cannot be read damages only the
files that need it (:class:`WriteReport`); a store that stays unreachable once its retries
are spent fails the restore instead (it says nothing about the data).

From a remote store one thread per process decodes and writes while ``reads`` threads
fetch the next jobs' spans (:func:`write_jobs`): the network waits overlap, and the
decoding is not spread over threads that would wait for each other's interpreter lock.

Two ways to run the writers: threads in this process (small restores, and repositories
another process cannot open), or :class:`ProcessWriters` — this process and worker
processes (:mod:`.restoreworker`; one by default) that take jobs from one list. Python
threads share one interpreter lock: with two writer threads a restore spent ~8 % of its
samples waking the other thread and a quarter of the cores idle; processes do not wait for
each other. The parent writes too (instead of a second worker) because it has nothing else
to do by then, and a worker costs ~30 MB.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from cargohold.backends.counting import RequestCounts
from cargohold.errors import BackendError, BackendIOError, IntegrityError
from cargohold.repo.child import WorkerFailed, child_error, died, spawn
from cargohold.repo.crypto import Cipher
from cargohold.repo.format import BlobType, decode_blob, pack_name

#: Read a span of a pack at once when at least this share of it is needed.
_DENSE = 0.5
_MAX_FDS = 64
#: Largest ranged read of a pack (bounds memory: each writer holds one such range).
_MAX_READ = 4 * 1024 * 1024
#: Jobs a worker process holds at once beyond those its writer threads work on (so it
#: never waits).
_AHEAD = 1

#: One place a blob goes: (path, name shown, the file's size when it is sparse else None,
#: [(file offset, offset in the blob, length)]).
Target = tuple[bytes, str, "int | None", list[tuple[int, int, int]]]
#: (blob id, offset in the pack, stored length, plain length, where it goes).
BlobJob = tuple[bytes, int, int, int, list[Target]]
#: (pack id, the blobs needed from it).
Job = tuple[bytes, list[BlobJob]]
#: (pack id, [(blobs of a span, the span's offset in the pack, its bytes or why not)]).
Fetched = tuple[bytes, list[tuple[list[BlobJob], int, "bytes | BackendError"]]]


@dataclass
class WriteReport:
    #: Files this writer created (the others are created empty afterwards).
    created: set[bytes] = field(default_factory=set)
    #: Name shown -> why its content is damaged.
    damaged: dict[str, str] = field(default_factory=dict)
    bytes: int = 0

    def merge(self, other: WriteReport) -> None:
        self.created |= other.created
        for rel, why in other.damaged.items():
            self.damaged.setdefault(rel, why)
        self.bytes += other.bytes

    def to_message(self) -> tuple[Any, ...]:
        return ("done", list(self.created), self.damaged, self.bytes)

    @classmethod
    def from_message(cls, msg: tuple[Any, ...]) -> WriteReport:
        _, created, damaged, nbytes = msg
        return cls(set(created), damaged, nbytes)


class DataWriter:
    """Writes the blobs of jobs into their files; one per thread or process (its small
    cache of open files is its own)."""

    def __init__(
        self,
        load: Callable[[str, int, int], bytes],
        cipher: Cipher,
        blob_id: Callable[[bytes], bytes],
        advance: Callable[[int], None] | None = None,
    ) -> None:
        self._load = load
        self._cipher = cipher
        self._blob_id = blob_id
        self._advance = advance
        self._fds: OrderedDict[bytes, int] = OrderedDict()
        self.report = WriteReport()

    def write(self, job: Job) -> None:
        """Carry out one job of :func:`split_jobs` (its blobs in pack order)."""
        self.apply(self.fetch(job))

    def fetch(self, job: Job) -> Fetched:
        """Read the spans of the pack that ``job`` needs: the I/O half of :meth:`write`,
        which another thread may do. A span that cannot be read is kept as its error
        (damage to report), unless the store is unreachable: raised."""
        pack, blobs = job
        groups: list[list[BlobJob]] = [[blobs[0]]]
        needed = blobs[0][2]
        for b in blobs[1:]:
            g = groups[-1]
            span = b[1] + b[2] - g[0][1]
            if span <= _MAX_READ and needed + b[2] >= _DENSE * span:
                g.append(b)
                needed += b[2]
            else:
                groups.append([b])
                needed = b[2]
        name = pack_name(pack)
        spans: list[tuple[list[BlobJob], int, bytes | BackendError]] = []
        for g in groups:
            start = g[0][1]
            end = g[-1][1] + g[-1][2]
            try:
                spans.append((g, start, self._load(name, start, end - start)))
            except BackendIOError as err:
                if err.unreachable:  # not the pack's fault
                    raise
                spans.append((g, start, err))
            except BackendError as err:
                spans.append((g, start, err))
        return pack, spans

    def apply(self, fetched: Fetched) -> None:
        """Check the blobs of fetched spans and write them where they go."""
        pack, spans = fetched
        for g, start, data in spans:
            if isinstance(data, BackendError):
                for b in g:
                    self._damage(b, f"pack {pack.hex()} unreadable: {data}")
                continue
            view = memoryview(data)
            for b in g:
                bid, off, length, raw, _ = b
                chunk = view[off - start : off - start + length]
                if len(chunk) != length:
                    self._damage(b, f"pack {pack.hex()} is truncated")
                    continue
                try:
                    plain = decode_blob(self._cipher, BlobType.DATA, bid, bytes(chunk), raw)
                    if self._blob_id(plain) != bid:
                        raise IntegrityError(f"data blob {bid.hex()}: content does not match its id")
                except IntegrityError as err:
                    self._damage(b, f"pack {pack.hex()}: {err}")
                    continue
                self._put(b[4], plain)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def _damage(self, blob: BlobJob, reason: str) -> None:
        for t in blob[4]:
            self.report.damaged.setdefault(t[1], reason)

    def _fd(self, path: bytes, sparse_size: int | None) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        # The walk removed whatever was at ``path``, so creating without O_TRUNC is safe when
        # two writers race to create the same file; setting the final size is idempotent.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if sparse_size is not None:  # the writes alone would not reach a hole at the end
            try:
                os.ftruncate(fd, sparse_size)
            except BaseException:
                os.close(fd)
                raise
        self.report.created.add(path)
        self._fds[path] = fd
        if len(self._fds) > _MAX_FDS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _put(self, targets: list[Target], plain: bytes) -> None:
        view = memoryview(plain)
        for path, rel, sparse_size, pieces in targets:
            try:
                fd = self._fd(path, sparse_size)
            except OSError as err:
                if err.errno != errno.ENOENT:  # (gone: the walk could not make its directory)
                    self.report.damaged.setdefault(rel, f"cannot create: {err.strerror}")
                continue
            try:
                for file_off, chunk_off, n in pieces:
                    os.pwrite(fd, view[chunk_off : chunk_off + n], file_off)
            except OSError as err:  # full disk, quota, I/O error of the target
                self.report.damaged[rel] = f"cannot write: {err.strerror}"
        self.report.bytes += len(plain)
        if self._advance is not None:
            self._advance(len(plain))


def split_jobs(by_pack: dict[bytes, list[BlobJob]]) -> list[Job]:
    """One job per :data:`_MAX_READ` of stored bytes of a pack: small enough that the
    writers finish close together (the last one is not left with a whole pack)."""
    jobs: list[Job] = []
    for pack, blobs in by_pack.items():
        blobs.sort(key=lambda b: b[1])
        part: list[BlobJob] = []
        start = blobs[0][1]
        for b in blobs:
            if part and b[1] + b[2] - start > _MAX_READ:
                jobs.append((pack, part))
                part, start = [], b[1]
            part.append(b)
        jobs.append((pack, part))
    return jobs


def write_jobs(
    writer: DataWriter,
    take: Callable[[], Job | None],
    reads: int = 1,
    *,
    done: Callable[[], None] | None = None,
) -> None:
    """Write the jobs ``take`` hands out until it returns None: one after the other, or,
    with ``reads`` > 1, with that many jobs being fetched by threads while this one applies
    the oldest fetched (in order). ``done`` is called after each job. Closes the writer's
    files at the end."""
    try:
        if reads <= 1:
            while (job := take()) is not None:
                writer.write(job)
                if done is not None:
                    done()
            return
        with ThreadPoolExecutor(reads, thread_name_prefix="ch-read") as pool:
            fetching: collections.deque[Future[Fetched]] = collections.deque()
            more = True  # ``take`` is not asked again once it said None
            try:
                while True:
                    while more and len(fetching) < reads:
                        job = take()
                        if job is None:
                            more = False
                        else:
                            fetching.append(pool.submit(writer.fetch, job))
                    if not fetching:
                        return
                    writer.apply(fetching.popleft().result())
                    if done is not None:
                        done()
            finally:
                for f in fetching:
                    f.cancel()
    finally:
        writer.close()


class _Jobs:
    """The jobs left, taken by every writer in turn; none once one of them failed."""

    def __init__(self) -> None:
        self._pending: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self.failures: list[BaseException] = []

    def add(self, jobs: list[Job]) -> None:
        with self._lock:
            self._pending.extend(jobs)

    def take(self) -> Job | None:
        with self._lock:
            return self._pending.popleft() if self._pending and not self.failures else None

    def fail(self, err: BaseException) -> bool:
        """Record ``err``; True when it is the first failure."""
        with self._lock:
            self.failures.append(err)
            return len(self.failures) == 1

    def write_all(self, writer: DataWriter, reads: int = 1) -> None:
        """Take and write jobs until none is left (or one writer failed)."""
        write_jobs(writer, self.take, reads)


def write_in_threads(jobs: list[Job], make: Callable[[], DataWriter], n: int, reads: int = 1) -> WriteReport:
    """Carry the jobs out with ``n`` threads, each with its own writer fetching ``reads``
    jobs ahead (:func:`write_jobs`)."""
    todo = _Jobs()
    todo.add(jobs)
    writers = [make() for _ in range(max(1, min(n, len(jobs))))]

    def work(writer: DataWriter) -> None:
        try:
            todo.write_all(writer, reads)
        except BaseException as err:
            todo.fail(err)

    threads = [threading.Thread(target=work, args=(w,), name="ch-restore", daemon=True) for w in writers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException as err:  # interrupted: the writers stop after their current job
        todo.fail(err)
        for t in threads:
            if t.ident is not None:
                t.join()
        raise
    if todo.failures:
        raise todo.failures[0]
    report = WriteReport()
    for w in writers:
        report.merge(w.report)
    return report


class ProcessWriters:
    """This process (a writer from ``make``) and ``n - 1`` worker processes
    (:mod:`.restoreworker`, at least one) taking jobs from one list. Started before the
    jobs are known (their start-up overlaps the restorer's walk), then :meth:`run` once,
    or :meth:`abort`.

    Every process fetches ``setup["reads"]`` jobs ahead of the one it writes
    (:func:`write_jobs`). A worker holds that many plus :data:`_AHEAD` at a
    time and reports every job done, and its request counts at the end (added to
    ``counts``); this process's
    interpreter lock is free for its own writer, as the other threads only pass messages.
    A worker that fails or dies fails the restore (with its error) once all have stopped."""

    def __init__(self, setup: dict[str, Any], n: int, counts: RequestCounts | None = None) -> None:
        self._procs: list[tuple[subprocess.Popen[bytes], Connection]] = []
        self._reads = max(1, int(setup.get("reads", 1)))
        self._ahead = self._reads + _AHEAD
        self._counts = counts
        self._lock = threading.Lock()  # for the report
        self._jobs = _Jobs()
        try:
            for _ in range(max(1, n - 1)):
                self._procs.append(spawn("cargohold.repo.restoreworker", setup))
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop the workers (the restore is failing, or has nothing for them)."""
        for proc, conn in self._procs:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            conn.close()
        self._procs = []

    def run(self, jobs: list[Job], make: Callable[[], DataWriter], advance: Callable[[int], None]) -> WriteReport:
        self._jobs.add(jobs)
        report = WriteReport()
        threads = [
            threading.Thread(target=self._serve, args=(c, report, advance), name="ch-restore", daemon=True)
            for _, c in self._procs
        ]
        try:
            for t in threads:
                t.start()
            own = make()
            self._jobs.write_all(own, self._reads)
            for t in threads:
                t.join()
            with self._lock:
                report.merge(own.report)
        except BaseException as err:  # our own writer failed, or we were interrupted
            self._fail(err)
            raise
        finally:
            for t in threads:
                if t.ident is not None:  # started
                    t.join()
            for proc, conn in self._procs:
                proc.wait()
                conn.close()
            self._procs = []
        if self._jobs.failures:
            raise self._jobs.failures[0]
        return report

    def _serve(self, conn: Connection, report: WriteReport, advance: Callable[[int], None]) -> None:
        stopped = False

        def feed() -> None:
            nonlocal stopped
            job = self._jobs.take()
            if job is not None:
                conn.send(("job", job))
            elif not stopped:
                conn.send(("stop",))
                stopped = True

        try:
            for _ in range(self._ahead):
                feed()
            while True:
                msg = conn.recv()
                if msg[0] == "done":
                    done = WriteReport.from_message(msg)
                    with self._lock:
                        report.merge(done)
                    advance(done.bytes)
                    feed()
                elif msg[0] == "bye":
                    if self._counts is not None:
                        self._counts.merge(msg[1])
                    return
                elif msg[0] == "fatal":
                    raise child_error(msg)
                else:
                    raise WorkerFailed(f"a restore worker sent an unknown message {msg[0]!r}")
        except (EOFError, OSError):
            self._fail(died(conn, "a restore worker"))
        except BaseException as err:
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        if self._jobs.fail(err):
            for proc, _ in self._procs:
                with contextlib.suppress(OSError):
                    proc.kill()
