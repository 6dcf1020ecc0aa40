from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cargohold import backends
from cargohold.backends import Backend, LocalBackend, MemoryBackend, lazy_scheme, open_backend, register_scheme
from cargohold.backends.faults import FaultBackend, FaultCrash, FaultPlan
from cargohold.backends.memory import forget_named_memory_backend
from cargohold.backends.retry import RetryBackend
from cargohold.errors import BackendIOError, CargoholdError, ObjectExists, ObjectNotFound, UsageError

# --- FaultBackend ------------------------------------------------------------------


def test_fault_fail_at_skips_the_operation() -> None:
    inner = MemoryBackend()
    fb = FaultBackend(inner, FaultPlan(fail_at=1))
    fb.store("a", b"1")
    with pytest.raises(BackendIOError, match="injected") as info:
        fb.store("b", b"2")
    assert not info.value.transient
    fb.store("c", b"3")
    assert sorted(i.name for i in inner.list()) == ["a", "c"]
    assert fb.count == 3
    assert [entry[:2] for entry in fb.log] == [(0, "store"), (1, "store"), (2, "store")]


def test_fault_counts_only_planned_kinds() -> None:
    fb = FaultBackend(MemoryBackend(), FaultPlan(fail_at=0, ops=frozenset({"delete"})))
    fb.store("a", b"1")
    fb.create("b", b"2")
    assert fb.load("a") == b"1"
    assert fb.count == 0
    with pytest.raises(BackendIOError):
        fb.delete("a")
    assert fb.count == 1
    fb.delete("a")


def test_fault_fail_times_and_reads() -> None:
    inner = MemoryBackend()
    inner.store("x", b"data")
    fb = FaultBackend(inner, FaultPlan(fail_at=1, fail_times=2, ops=frozenset({"load", "list", "stat"})))
    assert fb.load("x") == b"data"
    with pytest.raises(BackendIOError):
        list(fb.list())
    with pytest.raises(BackendIOError):
        fb.stat("x")
    assert fb.stat("x").size == 4


def test_fault_truncate_leaves_prefix() -> None:
    inner = MemoryBackend()
    fb = FaultBackend(inner, FaultPlan(truncate_at=0, ops=frozenset({"store", "create"})))
    with pytest.raises(BackendIOError):
        fb.store("data/00/pack", b"0123456789")
    assert inner.load("data/00/pack") == b"01234"
    fb.create("locks/x", b"abcd")
    assert inner.load("locks/x") == b"abcd"


def test_fault_lost_ack_does_the_operation() -> None:
    inner = MemoryBackend()
    fb = FaultBackend(inner, FaultPlan(lose_ack_at=0, ops=frozenset({"create", "delete"})))
    with pytest.raises(BackendIOError):
        fb.create("k", b"v")
    assert inner.load("k") == b"v"
    fb.delete("k")


def test_fault_crash_kills_everything_after() -> None:
    inner = MemoryBackend()
    fb = FaultBackend(inner, FaultPlan(crash_at=2))
    fb.store("a", b"1")
    fb.store("b", b"2")
    with pytest.raises(FaultCrash):
        fb.store("c", b"3")
    assert fb.crashed
    for op in (lambda: fb.load("a"), lambda: fb.store("d", b""), lambda: list(fb.list()), lambda: fb.stat("a")):
        with pytest.raises(FaultCrash):
            op()
    assert sorted(i.name for i in inner.list()) == ["a", "b"]
    # Nothing of cargohold catches it: it is not an Exception.
    assert not issubclass(FaultCrash, Exception)
    with pytest.raises(FaultCrash):
        try:
            fb.load("a")
        except Exception:  # the point of the test
            pytest.fail("FaultCrash must not be caught by except Exception")


def test_fault_plan_validation() -> None:
    with pytest.raises(ValueError):
        FaultPlan(ops=frozenset({"rename"}))
    with pytest.raises(ValueError):
        FaultPlan(fail_times=0)


def test_fault_campaign_every_index() -> None:
    """The pattern fault tests use: fail at every index of a small workload."""

    def workload(b: Backend) -> None:
        b.store("data/aa/p1", b"pack one")
        b.store("index/i1", b"index")
        b.create("snapshots/s1", b"snapshot")
        b.delete("index/i1")

    total = FaultBackend(MemoryBackend())
    workload(total)
    assert total.count == 4
    for n in range(total.count):
        inner = MemoryBackend()
        with pytest.raises(BackendIOError):
            workload(FaultBackend(inner, FaultPlan(fail_at=n)))
        stored = {i.name for i in inner.list()}
        assert ("snapshots/s1" in stored) == (n == 3)
    for n in range(total.count):
        inner = MemoryBackend()
        with pytest.raises(FaultCrash):
            workload(FaultBackend(inner, FaultPlan(crash_at=n)))
        assert len(list(inner.list())) == n  # exactly the operations before the crash happened


# --- RetryBackend ------------------------------------------------------------------


def make_retry(inner: Backend, attempts: int = 5) -> tuple[RetryBackend, list[float]]:
    sleeps: list[float] = []
    return RetryBackend(inner, attempts=attempts, base_delay=0.1, sleep=sleeps.append), sleeps


def test_retry_transient_then_success() -> None:
    inner = MemoryBackend()
    fb = FaultBackend(inner, FaultPlan(fail_at=0, fail_times=3, transient=True))
    rb, sleeps = make_retry(fb)
    rb.store("a", b"x")
    assert inner.load("a") == b"x"
    assert rb.retries == 3
    assert len(sleeps) == 3
    assert sleeps[0] <= 0.1 and sleeps[1] <= 0.2 and sleeps[2] <= 0.4
    assert sleeps[2] >= 0.2  # exponential backoff with jitter in [0.5, 1]


def test_retry_gives_up() -> None:
    fb = FaultBackend(MemoryBackend(), FaultPlan(fail_at=0, fail_times=10, transient=True))
    rb, sleeps = make_retry(fb, attempts=4)
    with pytest.raises(BackendIOError):
        rb.store("a", b"x")
    assert fb.count == 4 and len(sleeps) == 3


def test_retry_does_not_retry_permanent_errors() -> None:
    fb = FaultBackend(MemoryBackend(), FaultPlan(fail_at=0, transient=False))
    rb, sleeps = make_retry(fb)
    with pytest.raises(BackendIOError):
        rb.store("a", b"x")
    assert sleeps == [] and fb.count == 1
    with pytest.raises(ObjectNotFound):
        rb.load("missing")
    with pytest.raises(ObjectNotFound):
        rb.delete("missing")
    rb.create("c", b"1")
    with pytest.raises(ObjectExists):
        rb.create("c", b"1")  # no retry happened: an existing object is an answer
    assert sleeps == []


def test_retry_reads() -> None:
    inner = MemoryBackend()
    inner.store("a/b", b"12345")
    fb = FaultBackend(inner, FaultPlan(fail_at=0, fail_times=1, transient=True, ops=frozenset({"load", "list"})))
    rb, _ = make_retry(fb)
    assert rb.load("a/b", 1, 2) == b"23"
    fb2 = FaultBackend(inner, FaultPlan(fail_at=0, transient=True, ops=frozenset({"list"})))
    rb2, _ = make_retry(fb2)
    assert [i.name for i in rb2.list("a/")] == ["a/b"]


def test_retry_create_with_lost_ack_is_success() -> None:
    inner = MemoryBackend()
    fb = FaultBackend(inner, FaultPlan(lose_ack_at=0, transient=True, ops=frozenset({"create"})))
    rb, _ = make_retry(fb)
    rb.create("locks/exclusive", b"mine")  # the retry sees ObjectExists with our bytes
    assert inner.load("locks/exclusive") == b"mine"
    assert rb.retries == 1


def test_retry_create_lost_to_someone_else_is_exists() -> None:
    inner = MemoryBackend()

    class Racer(FaultBackend):
        def create(self, name: str, data: bytes) -> None:
            if self.count == 0:
                inner.create(name, b"theirs")  # someone else wins meanwhile
            super().create(name, data)

    fb = Racer(inner, FaultPlan(fail_at=0, transient=True, ops=frozenset({"create"})))
    rb, _ = make_retry(fb)
    with pytest.raises(ObjectExists):
        rb.create("locks/exclusive", b"mine")
    assert inner.load("locks/exclusive") == b"theirs"


def test_retry_delete_with_lost_ack_is_success() -> None:
    inner = MemoryBackend()
    inner.store("x", b"1")
    fb = FaultBackend(inner, FaultPlan(lose_ack_at=0, transient=True, ops=frozenset({"delete"})))
    rb, _ = make_retry(fb)
    rb.delete("x")
    assert list(inner.list()) == []


def test_retry_validation() -> None:
    with pytest.raises(ValueError):
        RetryBackend(MemoryBackend(), attempts=0)


# --- open_backend and the scheme registry -----------------------------------------


def test_open_plain_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = open_backend(str(tmp_path / "r"))
    assert isinstance(b, LocalBackend)
    assert b.root == tmp_path / "r"
    assert b.url == (tmp_path / "r").as_uri()
    monkeypatch.chdir(tmp_path)
    rel = open_backend("rel/repo")
    assert isinstance(rel, LocalBackend) and rel.root == tmp_path / "rel" / "repo"
    monkeypatch.setenv("HOME", str(tmp_path))
    home = open_backend("~/x")
    assert isinstance(home, LocalBackend) and home.root == tmp_path / "x"


def test_open_file_url(tmp_path: Path) -> None:
    target = tmp_path / "with space"
    b = open_backend(target.as_uri())
    assert isinstance(b, LocalBackend) and b.root == target
    b.store("config", b"c")
    assert (target / "config").read_bytes() == b"c"
    assert isinstance(open_backend(f"file://localhost{tmp_path}"), LocalBackend)
    with pytest.raises(UsageError, match="host"):
        open_backend("file://otherhost/x")


def test_open_memory_url() -> None:
    a = open_backend("memory://t1")
    assert isinstance(a, MemoryBackend) and a.url == "memory://t1"
    a.store("config", b"x")
    assert open_backend("memory://t1").load("config") == b"x"
    assert open_backend("memory://t2") is not a
    forget_named_memory_backend("t1")
    assert list(open_backend("memory://t1").list()) == []
    with pytest.raises(UsageError):
        open_backend("memory://")


def test_lazy_scheme_imports_its_module_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_scheme_mod.py").write_text(
        "from cargohold.backends.memory import MemoryBackend\n"
        "def open_url(url):\n"
        "    b = MemoryBackend()\n"
        "    b.url = url\n"
        "    return b\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    register_scheme("lazyx", lazy_scheme("lazy_scheme_mod"), replace=True)
    assert "lazy_scheme_mod" not in sys.modules
    assert open_backend("lazyx://bucket/p?opt=1").url == "lazyx://bucket/p?opt=1"
    assert "lazy_scheme_mod" in sys.modules
    monkeypatch.delitem(sys.modules, "lazy_scheme_mod")


def test_a_missing_module_or_library_of_a_lazy_scheme_is_one_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend module missing, or a library it imports (botocore, paramiko): a UsageError
    that names what is missing, never a raw ModuleNotFoundError (a traceback)."""
    (tmp_path / "lazy_needs_lib.py").write_text("import no_such_library_for_ch.sub\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(backends, "_schemes", dict(backends._schemes))
    register_scheme("needslib", lazy_scheme("lazy_needs_lib"))
    with pytest.raises(UsageError, match="need the Python package 'no_such_library_for_ch'") as err:
        open_backend("needslib://bucket")
    assert "pip install no_such_library_for_ch" in (err.value.hint or "")
    register_scheme("gone", lazy_scheme("no_such_backend_module_for_ch"))
    with pytest.raises(UsageError, match="not available in this installation"):
        open_backend("gone://bucket")
    monkeypatch.delitem(sys.modules, "lazy_needs_lib", raising=False)


def test_unknown_scheme_and_empty() -> None:
    with pytest.raises(UsageError, match="unknown repository URL scheme"):
        open_backend("gopher://x")
    with pytest.raises(UsageError):
        open_backend("")


def test_register_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_schemes", dict(backends._schemes))
    made: list[str] = []

    def factory(url: str) -> Backend:
        made.append(url)
        return RetryBackend(MemoryBackend(url))

    register_scheme("test", factory)
    b = open_backend("test://bucket/x")
    assert made == ["test://bucket/x"] and b.url == "test://bucket/x"
    with pytest.raises(ValueError):
        register_scheme("test", factory)
    register_scheme("sftp", factory, replace=True)  # how the SFTP backend will plug in
    assert isinstance(open_backend("sftp://h/p"), RetryBackend)
    assert "test" in backends.registered_schemes()


def test_errors_are_cargohold_errors() -> None:
    for exc in (BackendIOError, ObjectExists, ObjectNotFound, UsageError):
        assert issubclass(exc, CargoholdError)


def test_wrappers_say_the_connections_of_the_store_they_wrap() -> None:
    """The wrappers keep no copy of ``connections``: storage.connections_of finds the wrapped
    store's (or 1 when it says none) through any stack of them."""
    from cargohold.backends.counting import CountingBackend
    from cargohold.repo.storage import connections_of

    wide = MemoryBackend()
    wide.connections = 8  # type: ignore[attr-defined]
    for inner, n in ((wide, 8), (MemoryBackend(), 1)):
        assert connections_of(CountingBackend(RetryBackend(FaultBackend(inner)))) == n
        assert connections_of(RetryBackend(inner)) == connections_of(CountingBackend(inner)) == n
