"""A backup worker process: reads, chunks, hashes, compresses, encrypts and packs files.

Started by :mod:`cargohold.repo.procpool` as ``python -m cargohold.repo.procworker FD``
where ``FD`` is its end of a socket pair; everything else arrives over that socket (the
key never appears on a command line or in the environment). Python threads share one
interpreter lock, so in-process threads keep only ~1.4 of 2 cores busy and spend much of
their time handing the lock back and forth; worker processes each have their own.

The protocol (pickled tuples, the worker asks, the parent answers)::

    parent -> worker   {"spec", "key", "chunker", "level", "pack_size", "uploads"}   once, first
    worker -> parent   ("next",)                     -> ("files", [(seq, path, prev chunking)]) | ("stop",)
    worker -> parent   ("claim", ids, nbytes)        -> bytes: 1 = store this blob, 0 = known
    worker -> parent   ("pack", PackRecord)          a pack is written (durably)
    worker -> parent   ("files", [(seq, FileRead)])  files cut and hashed (their new chunks claimed)
    worker -> parent   ("bye", request counts)       after "stop": last pack written
    worker -> parent   ("fatal", kind, message, hint, traceback)

Dedup stays exact across processes: a worker hashes a batch of chunks and *claims* the
ids; the parent answers from its index and its in-flight set, so a chunk is stored once
even when two workers meet it at the same time. A claimed blob counts as in flight until
the worker reports the pack that holds it; if a worker dies before that, the parent fails
the whole backup (no snapshot refers to a blob that was never written).

The worker opens the repository's backend itself from its URL (``spec``, with
:func:`cargohold.repo.storage.open_storage`: retries for remote stores). On a backend that
can stage (a local directory) a pack streams into a staged file and one writer thread
makes it durable while the next fills. Others (remote stores) get whole packs: built in
memory (:class:`PackBuilder`) and uploaded by ``uploads`` threads while the next packs
fill — at most ``uploads`` packs wait or are in flight, so memory stays bounded by
``(uploads + 1) x pack size``.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from cargohold.backends.local import StagedObject
from cargohold.repo.child import run_child
from cargohold.repo.chunker import Chunker, ChunkerParams, ChunkSource
from cargohold.repo.crypto import Cipher, MasterKey, blob_id
from cargohold.repo.fileread import Compressibility, read_file
from cargohold.repo.format import BlobType, pack_name
from cargohold.repo.index import PackRecord
from cargohold.repo.pack import PackBuilder, PackStream
from cargohold.repo.storage import open_worker_storage, request_counts, store_or_clean

#: New chunks are claimed from the parent in batches of about this many bytes.
CLAIM_BATCH = 2 * 1024 * 1024


class Worker:
    def __init__(self, conn: Connection, setup: dict[str, Any]) -> None:
        self.conn = conn
        self.backend = open_worker_storage(setup)
        stage = getattr(self.backend.inner, "stage", None)
        #: Staged files in the store's folder (local), or packs in memory (remote).
        self._stage = stage if callable(stage) else None
        self._uploads = 1 if self._stage is not None else max(1, int(setup.get("uploads", 1)))
        self.key = MasterKey.from_bytes(setup["key"])
        self.cipher = Cipher(self.key)
        self.params = ChunkerParams.from_json(setup["chunker"])
        self.chunker = Chunker(self.params, self.key.chunker_seed)
        self.level: int = setup["level"]
        self.pack_size: int = setup["pack_size"]
        #: The pack being written (straight to a staged file, or into memory) and its file.
        self.pack: PackStream | PackBuilder | None = None
        self._staged: StagedObject | None = None
        self._send_lock = threading.Lock()
        self._writer = ThreadPoolExecutor(self._uploads, thread_name_prefix="ch-pack")
        #: Packs being made durable or uploaded, oldest first.
        self._pending: deque[Future[None]] = deque()
        #: Chunks hashed but not yet claimed (id, data, the compressibility of their file),
        #: and those claimed whose answer is not read yet.
        self._batch: list[tuple[bytes, bytes, Compressibility]] = []
        self._claimed: list[tuple[bytes, bytes, Compressibility]] = []
        self._nbytes = 0

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def run(self) -> None:
        while True:
            self.send(("next",))
            msg = self.conn.recv()
            if msg[0] == "stop":
                break
            done = [(seq, read_file(path, previous, self.params, self.store)) for seq, path, previous in msg[1]]
            self._claim()
            self.send(("files", done))  # the parent may go on while the last chunks are stored
            self._store_claimed()
        if self.pack is not None:
            self._queue_pack()
        self._wait_packs()
        self._writer.shutdown(wait=True)
        self.send(("bye", request_counts(self.backend, self.backend.counts)))

    def store(self, reader: ChunkSource, method: str, data_size: int) -> tuple[list[bytes], int]:
        """Cut and hash one file; its chunks are claimed and stored in batches that may hold
        many small files (one round trip to the parent per ~2 MiB, not per file)."""
        content: list[bytes] = []
        comp = Compressibility()
        total = 0
        key = self.key
        batch = self._batch
        for data in self.chunker.chunks(reader, method, data_size):
            bid = blob_id(key, data)
            content.append(bid)
            batch.append((bid, data, comp))
            total += len(data)
            self._nbytes += len(data)
            if self._nbytes >= CLAIM_BATCH:
                self._claim()
                batch = self._batch
        return content, total

    def _claim(self) -> None:
        """Ask the parent which of the hashed chunks are new; its answer is read (and the new
        chunks stored) only after the next batch is hashed or the job ends, so the round
        trip overlaps with work."""
        self._store_claimed()
        if not self._batch:
            return
        self.send(("claim", b"".join(bid for bid, _, _ in self._batch), self._nbytes))
        self._claimed, self._batch, self._nbytes = self._batch, [], 0

    def _store_claimed(self) -> None:
        claimed, self._claimed = self._claimed, []
        if not claimed:
            return
        wanted = self.conn.recv_bytes()
        for (bid, data, comp), want in zip(claimed, wanted, strict=True):
            if not want:
                continue
            stored = comp.encode(self.cipher, bid, data, self.level)
            if self.pack is None:
                if self._stage is not None:
                    self._staged = self._stage("data")
                    self.pack = PackStream(BlobType.DATA, self._staged)
                else:
                    self.pack = PackBuilder(BlobType.DATA)
            self.pack.add(bid, stored, len(data))
            if self.pack.size >= self.pack_size:
                self._queue_pack()

    def _queue_pack(self) -> None:
        """Close the pack; a writer thread makes it durable (fsync, rename) or uploads it
        while the next one fills. At most ``uploads`` wait or are in flight."""
        pack, staged = self.pack, self._staged
        assert pack is not None
        self.pack = self._staged = None
        if isinstance(pack, PackBuilder):
            pack_id, data, rec = pack.finish(self.cipher)
            self._wait_packs(self._uploads - 1)
            self._pending.append(self._writer.submit(self._upload, data, pack_id, rec))
            return
        assert staged is not None
        try:
            pack_id, rec = pack.finish(self.cipher)
            self._wait_packs(self._uploads - 1)
        except BaseException:
            staged.abort()
            raise
        self._pending.append(self._writer.submit(self._commit, staged, pack_id, rec, pack.size))

    def _wait_packs(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` packs are pending; raise the first failure."""
        while len(self._pending) > keep:
            self._pending.popleft().result()

    def _commit(self, staged: StagedObject, pack_id: bytes, rec: PackRecord, size: int) -> None:
        staged.commit(pack_name(pack_id))
        self.backend.counts.add("store", up=size)
        self.send(("pack", rec))

    def _upload(self, data: bytes | bytearray, pack_id: bytes, rec: PackRecord) -> None:
        store_or_clean(self.backend, pack_name(pack_id), data)
        self.send(("pack", rec))

    def close(self) -> None:
        """Drop a pack not finished (the worker is failing)."""
        if self._staged is not None:
            self._staged.abort()


def main(argv: list[str]) -> int:
    return run_child(argv, Worker)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
