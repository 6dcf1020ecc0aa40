"""A restore worker process: reads packs, checks their blobs and writes them into files.

Started by :class:`cargohold.repo.restoredata.ProcessWriters` as
``python -m cargohold.repo.restoreworker FD`` (see :mod:`.child`). The protocol (pickled
tuples)::

    parent -> worker   {"spec", "key", "reads", ...}   once, first
    parent -> worker   ("job", (pack id, blobs))       a pack's needed blobs and their places
    worker -> parent   ("done", created, damaged, bytes)   for every job
    parent -> worker   ("stop",)                       no more jobs
    worker -> parent   ("bye", request counts)         its files are closed
    worker -> parent   ("fatal", kind, message, hint, traceback)

The worker opens the backend itself from its URL (``spec``, with
:func:`cargohold.repo.storage.open_storage`: retries for remote stores). One thread
decodes and writes; ``reads`` threads fetch the spans of the next jobs meanwhile (one
job at a time, fetched by the writing thread itself, for a local directory:
:func:`cargohold.repo.restoredata.write_jobs`). The parent keeps the worker's next jobs
queued behind the ones it is on, so it never waits for work; a thread receives them, so
that neither side's send waits for the other's. The parent's walk cleared the paths it
writes; the writers create the files (``O_CREAT``).
"""

from __future__ import annotations

import queue
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from cargohold.repo.child import run_child
from cargohold.repo.crypto import Cipher, MasterKey, blob_id
from cargohold.repo.restoredata import DataWriter, Job, WriteReport, write_jobs
from cargohold.repo.storage import open_worker_storage, request_counts

_Inbox = queue.SimpleQueue[tuple[Any, ...] | BaseException]


class RestoreWorker:
    def __init__(self, conn: Connection, setup: dict[str, Any]) -> None:
        self.conn = conn
        self.backend = open_worker_storage(setup)
        key = MasterKey.from_bytes(setup["key"])
        self.writer = DataWriter(self.backend.load, Cipher(key), lambda data: blob_id(key, data))
        self.reads = max(1, int(setup.get("reads", 1)))
        self._send_lock = threading.Lock()

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def run(self) -> None:
        # Received on a thread of their own: the parent may be sending the next (large) job
        # while this process sends a report, and neither may wait for the other.
        inbox: _Inbox = queue.SimpleQueue()
        threading.Thread(target=self._receive, args=(inbox,), name="ch-inbox", daemon=True).start()

        def take() -> Job | None:
            msg = inbox.get()
            if isinstance(msg, BaseException):
                raise msg
            return None if msg[0] == "stop" else msg[1]

        write_jobs(self.writer, take, self.reads, done=self._report)
        self.send(("bye", request_counts(self.backend, self.backend.counts)))

    def _report(self) -> None:
        """Tell the parent a job is written (it then sends the next)."""
        done = self.writer.report.to_message()
        self.writer.report = WriteReport()
        self.send(done)

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
        self.writer.close()


def main(argv: list[str]) -> int:
    return run_child(argv, RestoreWorker)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
