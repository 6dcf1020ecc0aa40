"""A restore worker process: reads packs, checks their blobs and writes them into files.

Started by :class:`cargohold.repo.restoredata.ProcessWriters` as
``python -m cargohold.repo.restoreworker FD`` (see :mod:`.child`). The protocol (pickled
tuples)::

    parent -> worker   {"root", "key", ...}            once, first
    parent -> worker   ("job", (pack id, blobs))       a pack's needed blobs and their places
    worker -> parent   ("done", created, damaged, bytes)   for every job
    parent -> worker   ("stop",)                       no more jobs
    worker -> parent   ("bye",)                        its files are closed
    worker -> parent   ("fatal", kind, message, hint, traceback)

The parent keeps the worker's next job queued behind the one it is on, so it never waits
for work; a thread receives them, so that neither side's send waits for the other's. The
parent's walk cleared the paths it writes; the writers create the files (``O_CREAT``).
"""

from __future__ import annotations

import queue
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from cargohold.backends.local import LocalBackend
from cargohold.repo.child import run_child
from cargohold.repo.crypto import Cipher, MasterKey, blob_id
from cargohold.repo.restoredata import DataWriter, WriteReport


class RestoreWorker:
    def __init__(self, conn: Connection, setup: dict[str, Any]) -> None:
        self.conn = conn
        backend = LocalBackend(setup["root"])
        key = MasterKey.from_bytes(setup["key"])
        self.writer = DataWriter(backend.load, Cipher(key), lambda data: blob_id(key, data))

    def send(self, msg: tuple[Any, ...]) -> None:
        self.conn.send(msg)

    def run(self) -> None:
        # Received on a thread of their own: the parent may be sending the next (large) job
        # while this process sends a report, and neither may wait for the other.
        inbox: queue.SimpleQueue[tuple[Any, ...] | BaseException] = queue.SimpleQueue()
        threading.Thread(target=self._receive, args=(inbox,), name="ch-inbox", daemon=True).start()
        while True:
            msg = inbox.get()
            if isinstance(msg, BaseException):
                raise msg
            if msg[0] == "stop":
                break
            self.writer.write(msg[1])
            self.send(self.writer.report.to_message())
            self.writer.report = WriteReport()
        self.writer.close()
        self.send(("bye",))

    def _receive(self, inbox: queue.SimpleQueue[tuple[Any, ...] | BaseException]) -> None:
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
