"""Repository locks on any backend, built on ``create`` (create-if-absent) alone.

Lock objects live under ``locks/`` (JSON, see docs/FORMAT.md):

* a **shared** lock is ``locks/<16 hex>``, a fresh name per holder;
* the **exclusive** lock is the single name ``locks/exclusive``.

Taking a shared lock: write it, then look for a fresh exclusive lock; if there is one,
remove ours again and wait or fail. Taking the exclusive lock: ``create`` the name
(atomic: at most one process succeeds), then look for fresh shared locks; if there is
one, remove ours again and wait or fail. Each side writes before it reads, so of two
processes racing, at least one sees the other: never both proceed.

A held lock is refreshed by a daemon thread every ``stale_after / 3`` seconds. A lock
is **stale** when it was not refreshed for ``stale_after`` seconds, or when its holder
ran on this host (same host name and PID namespace) and that process is gone. Stale
locks are ignored, so a crashed holder never blocks anyone for longer than
``stale_after``; taking a lock deletes the stale ones it finds (as restic does, so the
locks of killed processes do not pile up) and says so through this module's logger
(``cargohold.repo.locks``, level WARNING: one line on stderr in the CLI); ``remove_stale``
deletes them too, damaged ones included.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cargohold.backends.base import Backend, Leftover
from cargohold.backends.leftovers import Verdict, judge, pid_namespace
from cargohold.errors import BackendError, ObjectExists, ObjectNotFound, RepositoryLocked, UsageError
from cargohold.procinfo import current_user, my_start, process_gone

log = logging.getLogger(__name__)

PREFIX = "locks/"
EXCLUSIVE = PREFIX + "exclusive"
LOCK_VERSION = 1
SHARED_KIND = "shared"
EXCLUSIVE_KIND = "exclusive"


@dataclass(frozen=True)
class LockInfo:
    """A lock object as found in the repository."""

    name: str
    kind: str
    operation: str
    host: str
    pid: int
    user: str
    created: datetime | None
    refreshed: datetime | None
    #: Seconds since the last refresh (0 when unknown).
    age: float
    stale: bool
    #: Why the object could not be read ("" when it could); damaged locks count as stale.
    damaged: str = ""
    #: Why it is stale ("" when it is not).
    why_stale: str = ""

    def describe(self) -> str:
        if self.damaged:
            return f"damaged lock {self.name} ({self.damaged})"
        return (
            f"{self.kind} lock of {self.user}@{self.host} pid {self.pid} ({self.operation}), "
            f"refreshed {_human(self.age)} ago"
        )


def _human(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class _Held:
    name: str
    token: str
    doc: dict[str, Any]
    stop: threading.Event
    thread: threading.Thread | None = None
    lost: str = ""


class LockManager:
    """Take, refresh, list and clean up the locks of one repository.

    ``wait`` is how long to keep trying when a lock is taken (0: fail at once with
    :class:`RepositoryLocked`). One manager may hold several shared locks and, besides
    them, the exclusive lock (its own shared locks do not block its exclusive lock).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        stale_after: float = 1800.0,
        wait: float = 0.0,
        poll: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if stale_after <= 0:
            raise ValueError("stale_after must be positive")
        self.backend = backend
        self.stale_after = stale_after
        self.wait = wait
        self.poll = poll
        self._clock = clock
        self._host = socket.gethostname()
        self._pidns = pid_namespace()
        self._held: dict[str, _Held] = {}
        self._mutex = threading.Lock()

    # --- public API ------------------------------------------------------------

    @contextlib.contextmanager
    def shared(self, operation: str) -> Iterator[None]:
        """Hold a shared lock (backup, restore, check) for the ``with`` block."""
        held = self._acquire_shared(operation)
        try:
            yield
        finally:
            self._release(held)

    @contextlib.contextmanager
    def exclusive(self, operation: str) -> Iterator[None]:
        """Hold the exclusive lock (prune's deletions, key changes) for the ``with`` block."""
        held = self._acquire_exclusive(operation)
        try:
            yield
        finally:
            self._release(held)

    def list(self) -> builtins.list[LockInfo]:
        """Every lock object, oldest refresh first."""
        infos = [self._info(name) for name in self._lock_names()]
        found = [i for i in infos if i is not None]
        found.sort(key=lambda i: -i.age)
        return found

    def remove_stale(self) -> int:
        """Delete stale and damaged locks; return how many were removed."""
        removed = 0
        for info in self.list():
            if info.stale and self._delete_if_unchanged(info):
                removed += 1
        return removed

    def break_all(self) -> int:
        """Delete every lock, fresh or not (only when their holders are surely gone)."""
        removed = 0
        for name in self._lock_names():
            with contextlib.suppress(ObjectNotFound):
                self.backend.delete(name)
                removed += 1
        return removed

    def ensure_held(self) -> None:
        """Raise RepositoryLocked if a lock this manager holds was removed by someone else.

        Call it before an irreversible step (e.g. prune deleting packs).
        """
        with self._mutex:
            lost = [h for h in self._held.values() if h.lost]
        if lost:
            raise RepositoryLocked(
                f"lost the lock {lost[0].name} of {self.backend.url}: {lost[0].lost}",
                hint="someone ran `cargohold unlock --remove-all` or it was not refreshed in time; retry",
            )

    # --- lock documents -------------------------------------------------------

    def _new_doc(self, kind: str, operation: str, token: str) -> dict[str, Any]:
        now = _iso(self._clock())
        return {
            "version": LOCK_VERSION,
            "kind": kind,
            "operation": operation,
            "host": self._host,
            "pid": os.getpid(),
            "pid_start": my_start(),
            "pidns": self._pidns,
            "user": current_user(),
            "created": now,
            "refreshed": now,
            "token": token,
        }

    @staticmethod
    def _encode(doc: dict[str, Any]) -> bytes:
        return json.dumps(doc, sort_keys=True).encode("utf-8") + b"\n"

    def _lock_names(self) -> builtins.list[str]:
        return sorted(i.name for i in self.backend.list(PREFIX) if i.name.count("/") == 1)

    def _info(self, name: str) -> LockInfo | None:
        """Read one lock; None if it vanished meanwhile."""
        try:
            raw = self.backend.load(name)
        except ObjectNotFound:
            return None
        return self._parse(name, raw)

    def _parse(self, name: str, raw: bytes) -> LockInfo:
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            kind = doc["kind"]
            if kind not in (SHARED_KIND, EXCLUSIVE_KIND):
                raise ValueError(f"unknown kind {kind!r}")
            pid = doc["pid"]
            if not isinstance(pid, int):
                raise ValueError("pid is not an integer")
            created = datetime.fromisoformat(doc["created"])
            refreshed = datetime.fromisoformat(doc["refreshed"])
            info = LockInfo(
                name=name,
                kind=kind,
                operation=str(doc["operation"]),
                host=str(doc["host"]),
                pid=pid,
                user=str(doc["user"]),
                created=created,
                refreshed=refreshed,
                age=self._clock() - refreshed.timestamp(),
                stale=False,
            )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            return LockInfo(
                name, "?", "?", "?", 0, "?", None, None, 0.0, stale=True, damaged=str(err), why_stale="damaged"
            )
        if info.age > self.stale_after:
            why = f"not refreshed within {_human(self.stale_after)}"
            return dataclasses.replace(info, stale=True, why_stale=why)
        if info.host == self._host and doc.get("pidns", "") == self._pidns:
            start = doc.get("pid_start")
            if process_gone(info.pid, start if isinstance(start, int) else None):
                return dataclasses.replace(info, stale=True, why_stale=f"process {info.pid} on this host is gone")
        return info

    def _token_of(self, raw: bytes) -> str | None:
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            return None
        token = doc.get("token") if isinstance(doc, dict) else None
        return token if isinstance(token, str) else None

    def _own_names(self) -> set[str]:
        with self._mutex:
            return set(self._held)

    def _delete_if_unchanged(self, info: LockInfo) -> bool:
        """Delete a lock we judged stale, unless it changed meanwhile (refreshed or replaced)."""
        try:
            again = self._info(info.name)
            if again is None or not again.stale or again.refreshed != info.refreshed:
                return False
            self.backend.delete(info.name)
        except ObjectNotFound:
            return False
        if info.damaged:
            log.warning("removed %s", info.describe())
        else:
            log.warning("removed stale %s (%s)", info.describe(), info.why_stale)
        return True

    def _expire_stale(self) -> None:
        """Delete the stale locks of others before taking one, so the locks of killed
        processes do not pile up. Damaged locks are left to ``cargohold unlock`` (one written
        by a newer cargohold may only look damaged) and named in a warning. Best effort: a failure here is logged
        and the acquisition goes on (stale locks are ignored anyway)."""
        own = self._own_names()
        try:
            for info in self.list():
                if info.name in own or not info.stale:
                    continue
                if info.damaged:
                    log.warning("ignoring %s: remove it with `cargohold unlock`", info.describe())
                else:
                    self._delete_if_unchanged(info)
        except BackendError as err:
            log.warning("could not remove stale locks: %s", err)

    def others_fresh(self) -> builtins.list[LockInfo]:
        """The fresh locks of other holders than this manager (other processes, other hosts)."""
        own = self._own_names()
        return [i for i in self.list() if not i.stale and i.name not in own]

    def judge_leftovers(self, leftovers: Iterable[Leftover]) -> builtins.list[Verdict]:
        """Which leftovers of interrupted writes are surely abandoned (see
        :mod:`cargohold.backends.leftovers`): judged against the fresh locks of others
        and this manager's staleness bound."""
        busy = {i.host for i in self.others_fresh()}
        return judge(leftovers, busy_hosts=busy, stale_after=self.stale_after, now=self._clock())

    # --- acquiring -------------------------------------------------------------

    def _locked_error(self, holder: LockInfo, wanted: str) -> RepositoryLocked:
        return RepositoryLocked(
            f"repository {self.backend.url} is locked ({wanted} lock wanted): {holder.describe()}",
            hint=(
                f"wait for it to finish; a lock not refreshed for {_human(self.stale_after)} is stale and "
                "ignored, and `cargohold unlock` removes stale locks"
            ),
        )

    def _pause(self, deadline: float) -> bool:
        """Sleep a jittered poll interval; False when the wait time is used up."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(remaining, self.poll * random.uniform(0.5, 1.5)))
        return True

    def _fresh_exclusive(self) -> LockInfo | None:
        info = self._info(EXCLUSIVE)
        if info is None or info.stale or EXCLUSIVE in self._own_names():
            return None
        return info

    def _fresh_shared(self) -> LockInfo | None:
        own = self._own_names()
        for name in self._lock_names():
            if name == EXCLUSIVE or name in own:
                continue
            info = self._info(name)
            if info is not None and not info.stale:
                return info
        return None

    def _acquire_shared(self, operation: str) -> _Held:
        deadline = time.monotonic() + self.wait
        self._expire_stale()
        while True:
            holder = self._fresh_exclusive()
            if holder is None:
                token = secrets.token_hex(8)
                name = PREFIX + token
                doc = self._new_doc(SHARED_KIND, operation, token)
                # A name no other holder picks (a random token): a plain store does, and on
                # S3 spares the per-process probe of conditional PUT that `create` needs.
                self.backend.store(name, self._encode(doc))
                try:
                    holder = self._fresh_exclusive()
                except Exception:
                    self._cleanup(functools.partial(self._delete_quietly, name))
                    raise
                if holder is None:
                    return self._hold(name, token, doc)
                self._delete_quietly(name)
            if not self._pause(deadline):
                raise self._locked_error(holder, SHARED_KIND)

    def _acquire_exclusive(self, operation: str) -> _Held:
        if EXCLUSIVE in self._own_names():
            raise UsageError("this process holds the exclusive lock already")
        deadline = time.monotonic() + self.wait
        self._expire_stale()
        while True:
            token = secrets.token_hex(8)
            doc = self._new_doc(EXCLUSIVE_KIND, operation, token)
            try:
                self.backend.create(EXCLUSIVE, self._encode(doc))
            except ObjectExists:
                holder = self._info(EXCLUSIVE)
                if holder is None:
                    continue  # released meanwhile: try again at once
                if holder.stale:
                    self._delete_if_unchanged(holder)
                    continue
            else:
                try:
                    holder = self._fresh_shared()
                except Exception:
                    self._cleanup(functools.partial(self._delete_if_token, EXCLUSIVE, token))
                    raise
                if holder is None:
                    return self._hold(EXCLUSIVE, token, doc)
                self._delete_if_token(EXCLUSIVE, token)
            if not self._pause(deadline):
                raise self._locked_error(holder, EXCLUSIVE_KIND)

    # --- holding and releasing -------------------------------------------------

    def _hold(self, name: str, token: str, doc: dict[str, Any]) -> _Held:
        held = _Held(name=name, token=token, doc=doc, stop=threading.Event())
        with self._mutex:
            self._held[name] = held
        thread = threading.Thread(
            target=self._refresh_loop, args=(held,), name=f"cargohold-lock-refresh-{token[:6]}", daemon=True
        )
        held.thread = thread
        thread.start()
        return held

    def _refresh_loop(self, held: _Held) -> None:
        interval = self.stale_after / 3
        while not held.stop.wait(interval):
            try:
                self._refresh(held)
            except BackendError as err:
                log.warning("could not refresh lock %s: %s (will retry)", held.name, err)
            if held.lost:
                log.error("lock %s lost: %s", held.name, held.lost)
                return

    def _refresh(self, held: _Held) -> None:
        # Check it is still ours first: the exclusive name may have been taken over by
        # another process after ours was removed as stale, and must not be overwritten.
        try:
            token = self._token_of(self.backend.load(held.name))
        except ObjectNotFound:
            held.lost = "it was removed"
            return
        if token != held.token:
            held.lost = "another process holds it now"
            return
        held.doc["refreshed"] = _iso(self._clock())
        self.backend.store(held.name, self._encode(held.doc))

    def _release(self, held: _Held) -> None:
        held.stop.set()
        if held.thread is not None and held.thread is not threading.current_thread():
            held.thread.join()
        with self._mutex:
            self._held.pop(held.name, None)
        try:
            if held.name == EXCLUSIVE:
                self._delete_if_token(EXCLUSIVE, held.token)
            else:
                self._delete_quietly(held.name)
        except BackendError as err:
            # The lock stays behind; it turns stale (our pid is gone soon, or by age).
            log.warning("could not remove lock %s: %s", held.name, err)

    @staticmethod
    def _cleanup(undo: Callable[[], None]) -> None:
        """Best effort to take back a lock written by an acquisition that then failed."""
        try:
            undo()
        except BackendError as err:
            log.warning("could not remove a lock after a failed acquisition: %s", err)

    def _delete_quietly(self, name: str) -> None:
        with contextlib.suppress(ObjectNotFound):
            self.backend.delete(name)

    def _delete_if_token(self, name: str, token: str) -> None:
        try:
            if self._token_of(self.backend.load(name)) == token:
                self.backend.delete(name)
        except ObjectNotFound:
            pass
