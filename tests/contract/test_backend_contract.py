"""The conformance suite every storage backend runs.

Adding a backend = adding one entry to ``FACTORIES``: a function that takes pytest's
``tmp_path`` and returns a fresh, empty backend. A backend on a real server (S3 on Ceph RGW,
SFTP on OpenSSH) instead adds a fixture that yields a fresh, empty one (a new bucket or
directory each time) in a ``servers_*.py`` module of this folder and names it in that
module's ``SERVER_BACKENDS`` (kind -> fixture name); ``conftest.py`` collects them.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.backends import Backend, LocalBackend, MemoryBackend, ObjectInfo, leftovers_of, open_backend
from cargohold.backends.faults import FaultBackend, FaultPlan
from cargohold.backends.retry import RetryBackend
from cargohold.errors import ObjectExists, ObjectNotFound, UsageError

from .conftest import SERVER_BACKENDS

FACTORIES: dict[str, Callable[[Path], Backend]] = {
    "local": lambda tmp: LocalBackend(tmp / "repo"),
    "memory": lambda tmp: MemoryBackend(),
    "retry(memory)": lambda tmp: RetryBackend(MemoryBackend()),
    "retry(local)": lambda tmp: RetryBackend(LocalBackend(tmp / "repo")),
    "faults(memory)": lambda tmp: FaultBackend(MemoryBackend(), FaultPlan()),
    "faults(local)": lambda tmp: FaultBackend(LocalBackend(tmp / "repo"), FaultPlan()),
    "url(file)": lambda tmp: open_backend((tmp / "repo").as_uri()),
}


@pytest.fixture(params=sorted(FACTORIES) + sorted(SERVER_BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param in SERVER_BACKENDS:
        server_backend: Backend = request.getfixturevalue(SERVER_BACKENDS[request.param])
        yield server_backend
        return
    b = FACTORIES[request.param](tmp_path)
    try:
        yield b
    finally:
        b.close()


def names(b: Backend, prefix: str = "") -> list[str]:
    return sorted(info.name for info in b.list(prefix))


def test_is_a_backend(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    assert isinstance(backend.url, str) and "://" in backend.url


def test_round_trip(backend: Backend) -> None:
    backend.store("config", b"hello")
    assert backend.load("config") == b"hello"
    backend.store("data/ab/abcdef", b"")
    assert backend.load("data/ab/abcdef") == b""
    payload = bytes(range(256)) * 17
    backend.store("x", payload)
    assert backend.load("x") == payload


def test_missing_objects(backend: Backend) -> None:
    with pytest.raises(ObjectNotFound):
        backend.load("nope")
    with pytest.raises(ObjectNotFound):
        backend.load("deep/nope/x", 3, 4)
    with pytest.raises(ObjectNotFound):
        backend.stat("nope")
    with pytest.raises(ObjectNotFound):
        backend.delete("nope")
    assert names(backend) == []
    assert names(backend, "data/") == []


def test_ranges(backend: Backend) -> None:
    data = os.urandom(1000)
    backend.store("obj", data)
    assert backend.load("obj", 0, 10) == data[:10]
    assert backend.load("obj", 10) == data[10:]
    assert backend.load("obj", 990, 10) == data[990:]
    assert backend.load("obj", 995, 10) == data[995:]  # partly past the end
    assert backend.load("obj", 1000) == b""
    assert backend.load("obj", 5000, 3) == b""  # wholly past the end
    assert backend.load("obj", 100, 0) == b""
    assert backend.load("obj", 0, None) == data
    with pytest.raises(UsageError):
        backend.load("obj", -1, 3)
    with pytest.raises(UsageError):
        backend.load("obj", 0, -3)


def test_overwrite(backend: Backend) -> None:
    backend.store("snapshots/a", b"first version, long")
    backend.store("snapshots/a", b"second")
    assert backend.load("snapshots/a") == b"second"
    assert backend.stat("snapshots/a") == ObjectInfo("snapshots/a", 6)
    assert names(backend) == ["snapshots/a"]


def test_create_if_absent(backend: Backend) -> None:
    backend.create("locks/exclusive", b"mine")
    with pytest.raises(ObjectExists):
        backend.create("locks/exclusive", b"theirs")
    assert backend.load("locks/exclusive") == b"mine"
    backend.delete("locks/exclusive")
    backend.create("locks/exclusive", b"theirs")
    assert backend.load("locks/exclusive") == b"theirs"
    assert names(backend, "locks/") == ["locks/exclusive"]


def _race_create(backend: Backend, name: str, contenders: int) -> tuple[list[int], list[int]]:
    winners: list[int] = []
    losers: list[int] = []
    barrier = threading.Barrier(contenders)

    def contender(i: int) -> None:
        barrier.wait()
        try:
            backend.create(name, f"contender {i}".encode() * 1000)
        except ObjectExists:
            losers.append(i)
        else:
            winners.append(i)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return winners, losers


def test_create_race_has_one_winner(backend: Backend) -> None:
    for round_ in range(5):
        name = f"locks/race{round_}"
        winners, losers = _race_create(backend, name, 8)
        assert len(winners) == 1, winners
        assert len(losers) == 7
        assert backend.load(name) == f"contender {winners[0]}".encode() * 1000


def test_delete(backend: Backend) -> None:
    backend.store("index/1", b"a")
    backend.store("index/2", b"b")
    backend.delete("index/1")
    assert names(backend) == ["index/2"]
    with pytest.raises(ObjectNotFound):
        backend.load("index/1")
    with pytest.raises(ObjectNotFound):
        backend.delete("index/1")
    with pytest.raises(ObjectNotFound):
        backend.delete("index")  # a "directory" is not an object


def test_list_by_prefix(backend: Backend) -> None:
    objs = {
        "config": b"c",
        "keys/k1": b"kk",
        "data/00/00aa": b"1",
        "data/00/00bb": b"22",
        "data/01/01cc": b"333",
        "data/ff/ffdd": b"4444",
        "database": b"not under data/",
        "index/i1": b"i",
    }
    for n, d in objs.items():
        backend.store(n, d)
    assert names(backend) == sorted(objs)
    assert names(backend, "data/") == ["data/00/00aa", "data/00/00bb", "data/01/01cc", "data/ff/ffdd"]
    assert names(backend, "data/00/") == ["data/00/00aa", "data/00/00bb"]
    assert names(backend, "data/0") == ["data/00/00aa", "data/00/00bb", "data/01/01cc"]
    assert names(backend, "data/00/00b") == ["data/00/00bb"]
    assert names(backend, "data") == sorted(n for n in objs if n.startswith("data"))
    assert names(backend, "keys/") == ["keys/k1"]
    assert names(backend, "locks/") == []
    assert names(backend, "config/") == []
    sizes = {i.name: i.size for i in backend.list("")}
    assert sizes == {n: len(d) for n, d in objs.items()}


def test_stat(backend: Backend) -> None:
    backend.store("a/b", b"12345")
    assert backend.stat("a/b") == ObjectInfo("a/b", 5)
    backend.store("empty", b"")
    assert backend.stat("empty").size == 0
    with pytest.raises(ObjectNotFound):
        backend.stat("a")  # a "directory" is not an object


@pytest.mark.parametrize(
    "bad",
    ["", "/abs", "trailing/", "a//b", "../up", "a/../b", "./a", "a/.", "sp ace", "a\\b", "nul\0", "é", "a~b"],
)
def test_name_validation(backend: Backend, bad: str) -> None:
    with pytest.raises(UsageError):
        backend.store(bad, b"x")
    with pytest.raises(UsageError):
        backend.create(bad, b"x")
    with pytest.raises(UsageError):
        backend.load(bad)
    with pytest.raises(UsageError):
        backend.delete(bad)
    with pytest.raises(UsageError):
        backend.stat(bad)
    assert names(backend) == []


def test_large_object(backend: Backend) -> None:
    data = os.urandom(20 * 1024 * 1024 + 123)
    backend.store("data/la/large", data)
    assert backend.stat("data/la/large").size == len(data)
    assert backend.load("data/la/large") == data
    assert backend.load("data/la/large", 16 * 1024 * 1024, 4096) == data[16 * 1024 * 1024 :][:4096]
    assert backend.load("data/la/large", len(data) - 7) == data[-7:]


def test_concurrent_writers(backend: Backend) -> None:
    versions = {i: bytes([i]) * (100_000 + i) for i in range(6)}
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for j in range(10):
                backend.store(f"data/{i:02d}/own{j}", versions[i])
                backend.store("shared", versions[i])
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert backend.load("shared") in versions.values()  # one whole version, never a mix
    for i in range(6):
        assert names(backend, f"data/{i:02d}/") == [f"data/{i:02d}/own{j}" for j in range(10)]
        assert all(backend.load(f"data/{i:02d}/own{j}") == versions[i] for j in range(10))
    assert len(names(backend)) == 61


def test_store_accepts_buffers(backend: Backend) -> None:
    backend.store("buf", memoryview(b"view bytes")[5:])  # type: ignore[arg-type]
    assert backend.load("buf") == b"bytes"
    backend.create("buf2", bytearray(b"array"))  # type: ignore[arg-type]
    assert backend.load("buf2") == b"array"


# --- model-based: random operation sequences against a dict ----------------------

# No name is a folder of another: a local directory cannot hold both "data" and "data/x".
_NAMES = st.sampled_from(["config", "keys/a", "keys/b", "data/00/x", "data/00/y", "data/01/x", "datafile"])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("store"), _NAMES, st.binary(max_size=300)),
        st.tuples(st.just("create"), _NAMES, st.binary(max_size=300)),
        st.tuples(st.just("delete"), _NAMES, st.just(b"")),
        st.tuples(st.just("load"), _NAMES, st.tuples(st.integers(0, 400), st.none() | st.integers(0, 400))),
        st.tuples(st.just("list"), st.sampled_from(["", "data/", "data/0", "keys/", "d", "zz"]), st.just(b"")),
    ),
    max_size=40,
)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_behaves_like_a_dict(kind: str, ops: list[tuple[str, str, object]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        b = FACTORIES[kind](Path(tmp))
        model: dict[str, bytes] = {}
        for op, name, arg in ops:
            if op == "store":
                assert isinstance(arg, bytes)
                b.store(name, arg)
                model[name] = arg
            elif op == "create":
                assert isinstance(arg, bytes)
                if name in model:
                    with pytest.raises(ObjectExists):
                        b.create(name, arg)
                else:
                    b.create(name, arg)
                    model[name] = arg
            elif op == "delete":
                if name in model:
                    b.delete(name)
                    del model[name]
                else:
                    with pytest.raises(ObjectNotFound):
                        b.delete(name)
            elif op == "load":
                assert isinstance(arg, tuple)
                offset, length = arg
                if name in model:
                    end = None if length is None else offset + length
                    assert b.load(name, offset, length) == model[name][offset:end]
                    assert b.stat(name).size == len(model[name])
                else:
                    with pytest.raises(ObjectNotFound):
                        b.load(name, offset, length)
            else:
                expected = sorted((n, len(d)) for n, d in model.items() if n.startswith(name))
                assert sorted((i.name, i.size) for i in b.list(name)) == expected
        b.close()


def test_completed_writes_leave_no_leftovers(backend: Backend) -> None:
    """Leftovers (``HasLeftovers``) are only what *interrupted* writes leave: a backend lists
    none after writes that completed or failed cleanly, whether or not it can have any."""
    backend.store("data/ab/abcdef", b"x" * 1000)
    backend.create("locks/0123456789abcdef", b"{}")
    with pytest.raises(ObjectExists):
        backend.create("locks/0123456789abcdef", b"{}")
    backend.store("data/ab/abcdef", b"y")
    backend.delete("locks/0123456789abcdef")
    assert leftovers_of(backend) == []
    assert names(backend) == ["data/ab/abcdef"]
