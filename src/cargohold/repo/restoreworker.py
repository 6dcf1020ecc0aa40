"""A restore worker process: reads packs, checks their blobs and writes them into files.

Started by :class:`cargohold.repo.restoredata.ProcessWriters` as
``python -m cargohold.repo.restoreworker FD`` (see :mod:`.child`). The protocol (pickled
tuples)::

    parent -> worker   {"spec", "key", "threads", ...}  once, first
    parent -> worker   ("job", (pack id, blobs))       a pack's needed blobs and their places
    worker -> parent   ("done", created, damaged, bytes)   for every job
    parent -> worker   ("stop",)                       no more jobs
    worker -> parent   ("bye", request counts)         its files are closed
    worker -> parent   ("fatal", kind, message, hint, traceback)

The worker opens the backend itself from its URL (``spec``, with
:func:`cargohold.repo.storage.open_storage`: retries for remote stores). ``threads``
writers work on jobs at once: one for a local directory (reading is not what waits);
more for a remote store, so that several ranged reads are in flight while blobs are
decrypted and written. The parent keeps the worker's next jobs queued behind the ones it
is on, so it never waits for work; a thread receives them, so that neither side's send
waits for the other's. The parent's walk cleared the paths it writes; the writers create
the files (``O_CREAT``).
"""

from __future__ import annotations

import queue
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from cargohold.repo.child import run_child
from cargohold.repo.crypto import Cipher, MasterKey, blob_id
from cargohold.repo.restoredata import DataWriter, WriteReport
from cargohold.repo.storage import open_worker_storage, request_counts

_Inbox = queue.SimpleQueue[tuple[Any, ...] | BaseException]


class RestoreWorker:
    def __init__(self, conn: Connection, setup: dict[str, Any]) -> None:
        self.conn = conn
        self.backend = open_worker_storage(setup)
        key = MasterKey.from_bytes(setup["key"])
        cipher = Cipher(key)
        self.writers = [
            DataWriter(self.backend.load, cipher, lambda data: blob_id(key, data))
            for _ in range(max(1, int(setup.get("threads", 1))))
        ]
        self._send_lock = threading.Lock()
        self._failures: list[BaseException] = []

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def run(self) -> None:
        # Received on a thread of their own: the parent may be sending the next (large) job
        # while this process sends a report, and neither may wait for the other.
        inbox: _Inbox = queue.SimpleQueue()
        threading.Thread(target=self._receive, args=(inbox,), name="ch-inbox", daemon=True).start()
        # This thread is the first writer; the others (remote stores) get threads of their own.
        others = [
            threading.Thread(target=self._work, args=(w, inbox), name="ch-restore", daemon=True)
            for w in self.writers[1:]
        ]
        for t in others:
            t.start()
        self._work(self.writers[0], inbox)
        for t in others:
            t.join()
        if self._failures:
            raise self._failures[0]
        self.close()
        self.send(("bye", request_counts(self.backend, self.backend.counts)))

    def _work(self, writer: DataWriter, inbox: _Inbox) -> None:
        """Write jobs until "stop" (passed on to the other writers) or a failure (noted for
        :meth:`run` to raise, and passed on too, so they stop after their current job)."""
        while True:
            msg = inbox.get()
            if isinstance(msg, BaseException) or msg[0] == "stop":
                inbox.put(msg)
                if isinstance(msg, BaseException):
                    self._failures.append(msg)
                return
            try:
                writer.write(msg[1])
                done = writer.report.to_message()
                writer.report = WriteReport()
                self.send(done)
            except BaseException as err:
                self._failures.append(err)
                inbox.put(err)
                return

    def _receive(self, inbox: _Inbox) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except BaseException as err:  # the parent is gone (EOFError) or the socket failed
                inbox.put(err)
                return
            inbox.put(msg)
            if msg[0] == "stop":
                return

    def close(self) -> None:
        for w in self.writers:
            w.close()


def main(argv: list[str]) -> int:
    return run_child(argv, RestoreWorker)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
