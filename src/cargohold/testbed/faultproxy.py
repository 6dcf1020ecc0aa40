"""A TCP proxy on 127.0.0.1 that injects network faults, steered by a test at run time.

It sits between cargohold and a real server (the test bed's RADOS Gateway or sshd) and
forwards bytes both ways. A test changes what the "network" does while a command runs::

    with FaultProxy(("127.0.0.1", rgw_port)) as proxy:     # listens on 127.0.0.1:proxy.port
        proxy.set_latency(0.2)                             # 200 ms each way, pipelined
        proxy.set_bandwidth(up=1 << 20)                    # 1 MiB/s client -> server
        proxy.reset_after(up=2 << 20, times=2)             # RST mid-upload, twice
        proxy.reset_after(down=1 << 20)                    # RST mid-download
        proxy.stall()                                      # accept, forward nothing
        proxy.refuse()                                     # "server down": connections refused
        proxy.reset_all()                                  # RST every open connection now
        proxy.pass_through()                               # back to a healthy network
        proxy.stats()                                      # connections, bytes, resets

*Up* is client -> server (an upload), *down* is server -> client (a download). Latency
is a delay line per direction: every chunk is forwarded ``latency`` seconds after it was
read, so throughput is not throttled by it (as on a long link). The bandwidth cap is
shared by all connections of a direction (one link). ``reset_after`` counts the bytes
forwarded in that direction since it was armed, over all connections: the connection
that would carry byte ``N + 1`` gets exactly ``N`` bytes through and is then reset
(TCP RST on both sides); with ``times > 1`` the count starts again after each reset.
``stall`` holds the data of every connection, open or new (new ones are accepted), until
``pass_through``/``stall(False)``. ``refuse`` closes the listening socket, so a connect
fails with ECONNREFUSED as with a stopped server (``refuse(reset_open=True)`` resets the
open connections too, as a killed server would); ``refuse(False)`` listens again on the
same port.

The proxy runs an asyncio loop in a daemon thread; every control method is thread-safe
and takes effect before it returns. Standard library only.
``python -m cargohold.testbed.faultproxy --upstream HOST:PORT [--latency-ms N]`` runs one
from a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

from cargohold.errors import TestbedError

T = TypeVar("T")

UP = "up"
DOWN = "down"
_DIRECTIONS = (UP, DOWN)
_CHUNK = 64 * 1024
#: Chunks held per direction of a connection before its reader stops reading (backpressure).
_QUEUE_CHUNKS = 32
_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """Counters since the proxy started (or since :meth:`FaultProxy.reset_stats`)."""

    #: Connections accepted from clients.
    connections: int
    #: Connections open now.
    active: int
    #: Bytes forwarded client -> server and server -> client.
    bytes_up: int
    bytes_down: int
    #: Connections this proxy reset (``reset_after``, ``reset_all``, ``refuse(reset_open=True)``).
    resets: int
    #: Connections whose upstream could not be reached (reset towards the client).
    upstream_failures: int


@dataclass(slots=True)
class _ResetRule:
    after: int
    times: int
    remaining: int


@dataclass(slots=True)
class _Direction:
    latency: float = 0.0
    rate: float | None = None  # bytes per second
    next_free: float = 0.0  # when the shared link is free again (bandwidth cap)
    reset: _ResetRule | None = None
    forwarded: int = 0


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with a TCP RST (SO_LINGER 0), dropping anything unsent."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``upstream``, with faults a test switches on and off."""

    def __init__(self, upstream: tuple[str, int], *, port: int = 0, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise TestbedError(f"the fault proxy listens on loopback only, not {host!r}")
        self.upstream = upstream
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._dirs = {d: _Direction() for d in _DIRECTIONS}
        self._flowing: asyncio.Event | None = None
        self._counts = {"connections": 0, "resets": 0, "upstream_failures": 0}

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"faultproxy-{self.upstream[1]}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread = None
            raise TestbedError(f"the fault proxy cannot listen on {self.host}:{self.port}: {failure[0]}")
        return self

    def stop(self) -> None:
        """Reset every connection, stop listening and end the thread."""
        if self._thread is None or self._loop is None:
            return

        async def shutdown() -> None:
            await self._close_listener()
            for conn in list(self._conns):
                self._reset(conn, count=False)
            for conn in list(self._conns):
                for task in conn.tasks:
                    task.cancel()

        with contextlib.suppress(Exception):
            self._call(shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``host:port`` where clients connect."""
        return f"{self.host}:{self.port}"

    # --- controls (any thread) ----------------------------------------------------------

    def pass_through(self) -> None:
        """A healthy network: no latency, no cap, no armed reset, nothing stalled, listening."""

        async def clear() -> None:
            for d in self._dirs.values():
                d.latency, d.rate, d.reset = 0.0, None, None
            self._flow().set()
            await self._listen()

        self._call(clear)

    def set_latency(self, up: float, down: float | None = None) -> None:
        """Delay every chunk by ``up`` seconds client -> server and ``down`` (default: the
        same) server -> client."""
        values = {UP: up, DOWN: up if down is None else down}
        if min(values.values()) < 0:
            raise ValueError("latency must be >= 0")

        async def apply() -> None:
            for name, value in values.items():
                self._dirs[name].latency = value

        self._call(apply)

    def set_bandwidth(self, up: float | None = None, down: float | None = None) -> None:
        """Cap each direction at so many bytes per second (None: no cap)."""
        for value in (up, down):
            if value is not None and value <= 0:
                raise ValueError("a bandwidth cap must be > 0 bytes per second")

        async def apply() -> None:
            self._dirs[UP].rate, self._dirs[DOWN].rate = up, down

        self._call(apply)

    def reset_after(self, up: int | None = None, down: int | None = None, *, times: int = 1) -> None:
        """Arm a reset: after ``up`` (``down``) more bytes client -> server (server -> client),
        the connection carrying the next byte is reset; ``times`` resets in all, each after
        that many further bytes. None leaves a direction as it is; 0 disarms it."""
        if times < 1:
            raise ValueError("times must be >= 1")
        if min(up or 0, down or 0) < 0:
            raise ValueError("reset_after needs a byte count >= 0")

        async def apply() -> None:
            for name, after in ((UP, up), (DOWN, down)):
                if after is None:
                    continue
                self._dirs[name].reset = _ResetRule(after, times, after) if after else None

        self._call(apply)

    def resets_pending(self) -> int:
        """Resets armed by :meth:`reset_after` that have not happened yet."""

        async def count() -> int:
            return sum(d.reset.times for d in self._dirs.values() if d.reset is not None)

        return self._call(count)

    def stall(self, on: bool = True) -> None:
        """Stop forwarding on every connection, open or new (new ones are still accepted)."""

        async def apply() -> None:
            if on:
                self._flow().clear()
            else:
                self._flow().set()

        self._call(apply)

    def refuse(self, on: bool = True, *, reset_open: bool = False) -> None:
        """Stop listening (connects are refused), and reset the open connections when
        ``reset_open``; ``refuse(False)`` listens again on the same port."""

        async def apply() -> None:
            if on:
                await self._close_listener()
                if reset_open:
                    for conn in list(self._conns):
                        self._reset(conn)
            else:
                await self._listen()

        self._call(apply)

    def reset_all(self) -> int:
        """Reset every open connection now; how many were reset."""

        async def apply() -> int:
            conns = [c for c in self._conns if not c.closed]
            for conn in conns:
                self._reset(conn)
            return len(conns)

        return self._call(apply)

    def stats(self) -> ProxyStats:
        async def read() -> ProxyStats:
            return ProxyStats(
                connections=self._counts["connections"],
                active=sum(1 for c in self._conns if not c.closed),
                bytes_up=self._dirs[UP].forwarded,
                bytes_down=self._dirs[DOWN].forwarded,
                resets=self._counts["resets"],
                upstream_failures=self._counts["upstream_failures"],
            )

        return self._call(read)

    def reset_stats(self) -> None:
        async def apply() -> None:
            self._counts = dict.fromkeys(self._counts, 0)
            for d in self._dirs.values():
                d.forwarded = 0

        self._call(apply)

    def wait_for(self, predicate: Callable[[ProxyStats], bool], timeout: float, interval: float = 0.02) -> ProxyStats:
        """Poll :meth:`stats` until ``predicate`` holds; raise TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if predicate(st):
                return st
            if time.monotonic() >= deadline:
                raise TimeoutError(f"proxy condition not met within {timeout} s: {st}")
            time.sleep(interval)

    # --- the loop's side ----------------------------------------------------------------

    def _call(self, fn: Callable[[], Coroutine[object, object, T]]) -> T:
        if self._loop is None or self._thread is None:
            raise TestbedError("the fault proxy is not running")
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(30)

    def _flow(self) -> asyncio.Event:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True, backlog=128, limit=_CHUNK
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # wait_closed() would wait for the open connections too (3.12): not wanted here
            await asyncio.sleep(0)

    def _reset(self, conn: _Conn, *, count: bool = True) -> None:
        if conn.closed:
            return
        conn.closed = True
        if count:
            self._counts["resets"] += 1
        _abort(conn.client)
        _abort(conn.server)
        current = asyncio.current_task()
        for task in conn.tasks:
            if task is not current:
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._counts["connections"] += 1
        conn = _Conn(client=writer)
        self._conns.add(conn)
        try:
            try:
                s_reader, s_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.upstream, limit=_CHUNK), _CONNECT_TIMEOUT
                )
            except (TimeoutError, OSError):
                self._counts["upstream_failures"] += 1
                self._reset(conn, count=False)
                return
            conn.server = s_writer
            if conn.closed:  # reset while connecting
                _abort(s_writer)
                return
            conn.tasks = [
                asyncio.create_task(self._pump(conn, UP, reader, s_writer)),
                asyncio.create_task(self._pump(conn, DOWN, s_reader, writer)),
            ]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            if not conn.closed:
                conn.closed = True
                for w in (conn.client, conn.server):
                    w.close()
        finally:
            self._conns.discard(conn)

    async def _pump(self, conn: _Conn, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction: a reader task feeds a delay line the writer drains."""
        # (when due, bytes); b"" is an end of stream, None a reset
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(_QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()
        d = self._dirs[name]

        async def read() -> None:
            try:
                while True:
                    await self._flow().wait()
                    data = await reader.read(_CHUNK)
                    await queue.put((loop.time() + d.latency, data))
                    if not data:
                        return
            except OSError:  # reset by this side's peer: pass the reset on
                await queue.put((loop.time(), None))

        feeder = asyncio.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                await self._flow().wait()
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._flow().wait()
                if data is None:
                    self._reset(conn, count=False)
                    return
                if not data:  # half-close, as the peer did
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                if not await self._send(conn, d, writer, data):
                    return
        except (OSError, ConnectionError):
            self._reset(conn, count=False)
        finally:
            feeder.cancel()

    async def _send(self, conn: _Conn, d: _Direction, writer: asyncio.StreamWriter, data: bytes) -> bool:
        """Forward ``data`` under the cap and the armed reset; False once the connection is reset."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            piece = view[: 16 * 1024] if d.rate else view
            rule = d.reset
            cut = rule is not None and len(piece) > rule.remaining
            if rule is not None and cut:
                piece = piece[: rule.remaining]
            if d.rate and piece:
                start = max(loop.time(), d.next_free)
                d.next_free = start + len(piece) / d.rate
                wait = d.next_free - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            if piece:
                writer.write(piece)
                await writer.drain()
                d.forwarded += len(piece)
                if rule is not None and not cut:
                    rule.remaining -= len(piece)
            if rule is not None and cut:
                rule.times -= 1
                if rule.times > 0:
                    rule.remaining = rule.after
                elif d.reset is rule:
                    d.reset = None
                self._reset(conn)
                return False
            view = view[len(piece) :]
        return True


def _parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cargohold.testbed.faultproxy",
        description="A TCP proxy on 127.0.0.1 that adds latency and caps bandwidth (for manual tests).",
    )
    parser.add_argument("--upstream", type=_parse_hostport, required=True, metavar="HOST:PORT")
    parser.add_argument("--port", type=int, default=0, help="where to listen on 127.0.0.1 (default: any free port)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added delay each way")
    parser.add_argument("--up-bps", type=float, default=None, help="bandwidth cap client -> server, bytes/s")
    parser.add_argument("--down-bps", type=float, default=None, help="bandwidth cap server -> client, bytes/s")
    args = parser.parse_args(argv)
    with FaultProxy(args.upstream, port=args.port) as proxy:
        proxy.set_latency(args.latency_ms / 1000)
        proxy.set_bandwidth(args.up_bps, args.down_bps)
        print(f"listening on {proxy.address} -> {args.upstream[0]}:{args.upstream[1]} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print(proxy.stats(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
