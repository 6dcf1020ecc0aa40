"""The fault proxy of the test bed (cargohold.testbed.faultproxy) against tiny local servers."""

from __future__ import annotations

import http.client
import http.server
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from cargohold.testbed.faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(60)


class _Sink(socketserver.BaseRequestHandler):
    """Echo everything back; remember how many bytes arrived on each connection."""

    received: list[int]

    def handle(self) -> None:
        total = 0
        try:
            while data := self.request.recv(65536):
                total += len(data)
                self.request.sendall(data)
        except OSError:
            pass
        finally:
            type(self).received.append(total)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[tuple[tuple[str, int], list[int]]]:
    received: list[int] = []
    handler = type("Echo", (_Sink,), {"received": received})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[:2], received  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: tuple[tuple[str, int], list[int]]) -> Iterator[FaultProxy]:
    with FaultProxy(echo[0]) as p:
        yield p


def _connect(p: FaultProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.port), timeout=timeout)


def _roundtrip(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` while reading the echo (both at once: the echo is not buffered forever)."""
    got = bytearray()
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    sender.join(5)
    return bytes(got)


def test_pass_through_forwards_both_ways_and_counts(proxy: FaultProxy) -> None:
    data = os.urandom(1 << 20)
    with _connect(proxy) as sock:
        assert _roundtrip(sock, data) == data
    st = proxy.wait_for(lambda s: s.active == 0, 5)
    assert (st.connections, st.bytes_up, st.bytes_down, st.resets) == (1, len(data), len(data), 0)


def test_a_half_close_is_passed_on(proxy: FaultProxy, echo: tuple[tuple[str, int], list[int]]) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(100):
            got += chunk
    assert got == b"hello"
    assert echo[1] == [5]


def test_latency_delays_each_direction_but_pipelines(proxy: FaultProxy) -> None:
    proxy.set_latency(0.1)
    with _connect(proxy) as sock:
        started = time.monotonic()
        assert _roundtrip(sock, b"x") == b"x"
        one = time.monotonic() - started
        # many chunks in flight at once cost one round trip, not one per chunk
        started = time.monotonic()
        assert _roundtrip(sock, os.urandom(2 << 20)) is not None
        many = time.monotonic() - started
    assert 0.2 <= one < 0.6
    assert many < 1.0
    proxy.set_latency(0.0)
    with _connect(proxy) as sock:
        started = time.monotonic()
        assert _roundtrip(sock, b"y") == b"y"
        assert time.monotonic() - started < 0.1


def test_bandwidth_cap(proxy: FaultProxy) -> None:
    proxy.set_bandwidth(up=2 << 20)
    data = os.urandom(1 << 20)
    with _connect(proxy) as sock:
        started = time.monotonic()
        assert _roundtrip(sock, data) == data
        took = time.monotonic() - started
    assert 0.4 <= took < 2.0


def test_reset_mid_upload_passes_exactly_n_bytes(proxy: FaultProxy, echo: tuple[tuple[str, int], list[int]]) -> None:
    proxy.reset_after(up=300_000)
    with _connect(proxy) as sock, pytest.raises(OSError):
        # the server echoes only what it got; the client sees the reset on its socket
        while True:
            sock.sendall(os.urandom(65536))
            sock.recv(65536)
    st = proxy.wait_for(lambda s: s.active == 0, 5)
    assert st.resets == 1
    assert st.bytes_up == 300_000
    deadline = time.monotonic() + 5
    while not echo[1] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo[1] == [300_000]
    # one shot: the next connection is healthy
    assert proxy.resets_pending() == 0
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"z" * 500_000) == b"z" * 500_000


def test_reset_mid_download_repeats_times(proxy: FaultProxy) -> None:
    proxy.reset_after(down=100_000, times=2)
    outcomes = []
    for _ in range(3):
        with _connect(proxy) as sock:
            try:
                outcomes.append(len(_roundtrip(sock, b"d" * 250_000)))
            except OSError:
                outcomes.append(-1)
    st = proxy.stats()
    assert st.resets == 2
    assert outcomes[2] == 250_000
    assert all(o in (-1, 100_000) for o in outcomes[:2])


def test_stall_holds_data_until_released(proxy: FaultProxy) -> None:
    with _connect(proxy, timeout=0.5) as sock:
        assert _roundtrip(sock, b"a") == b"a"
        proxy.stall()
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        # new connections are accepted, and held too
        with _connect(proxy, timeout=0.3) as other:
            other.sendall(b"b")
            with pytest.raises(TimeoutError):
                other.recv(10)
        proxy.stall(False)
        sock.settimeout(5)
        assert sock.recv(10) == b"held"


def test_refuse_is_a_server_down_and_comes_back_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    with _connect(proxy) as open_sock:
        assert _roundtrip(open_sock, b"1") == b"1"
        proxy.refuse(reset_open=True)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        with pytest.raises(ConnectionResetError):
            open_sock.recv(10)
    assert proxy.stats().resets == 1
    proxy.pass_through()
    assert proxy.port == port
    with _connect(proxy) as sock:
        assert _roundtrip(sock, b"3") == b"3"


def test_upstream_down_resets_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[:2]
    with FaultProxy(dead) as p, _connect(p) as sock:
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
        assert p.wait_for(lambda s: s.upstream_failures == 1, 5).connections == 1


def test_reset_all_and_http_mid_download() -> None:
    body = os.urandom(3 << 20)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with FaultProxy(server.server_address[:2]) as p:  # type: ignore[arg-type]
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
            conn.request("GET", "/")
            assert conn.getresponse().read() == body
            p.reset_after(down=1 << 20)
            conn.request("GET", "/")  # the same kept-alive connection
            with pytest.raises((http.client.IncompleteRead, OSError)):
                conn.getresponse().read()
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read(1000)
            assert p.reset_all() == 1
            with pytest.raises((http.client.IncompleteRead, OSError)):
                resp.read()
            conn.close()
            st = p.stats()
            assert st.resets == 2
            assert st.connections == 2
    finally:
        server.shutdown()
        server.server_close()


def test_listens_on_loopback_only() -> None:
    with pytest.raises(Exception, match="loopback"):
        FaultProxy(("127.0.0.1", 1), host="0.0.0.0")
