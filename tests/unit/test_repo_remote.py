"""The repository on a store written like a remote one (``file:///PATH?staging=no``):
worker processes that open the backend from its URL and upload whole packs, restores with
parallel ranged reads, retries with a time budget, the metadata cache, request counts."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest
from test_repo_backup_restore import describe

from cargohold.backends import LocalBackend, MemoryBackend, leftovers_of
from cargohold.backends.counting import CountingBackend
from cargohold.backends.faults import FaultBackend, FaultPlan
from cargohold.backends.retry import RetryBackend
from cargohold.cli import exit_codes
from cargohold.errors import BackendIOError, UsageError
from cargohold.repo import storage
from cargohold.repo.archiver import Archiver, BackupOptions
from cargohold.repo.cache import MetadataCache
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import RestoreOptions, Restorer
from cargohold.services import repository as svc


def _url(path: Path) -> str:
    return path.as_uri() + "?staging=no"


def _init(path: Path, cache: Path | None = None) -> Repository:
    url = _url(path)
    backend = storage.open_storage(url)
    return Repository.init(backend, "pw", kdf=KdfParams.FAST, cache_dir=cache, spec=storage.spec_of(url, backend))


def _open(path: Path, cache: Path | None = None) -> Repository:
    url = _url(path)
    backend = storage.open_storage(url)
    return Repository.open(backend, "pw", cache_dir=cache, spec=storage.spec_of(url, backend))


def _source(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    (root / "d").mkdir(parents=True)
    for i in range(40):
        (root / "d" / f"f{i:02}").write_bytes(rng.randbytes(rng.choice([0, 10, 3000, 70_000])))
    (root / "big.bin").write_bytes(rng.randbytes(9_000_000))
    (root / "again.bin").write_bytes((root / "big.bin").read_bytes()[:4_000_000])


# --- opening -------------------------------------------------------------------------


def test_a_staging_no_store_is_remote_retried_counted_and_reopenable(tmp_path: Path) -> None:
    url = _url(tmp_path / "r")
    b = storage.open_storage(url)
    assert isinstance(b, CountingBackend) and isinstance(b.inner, RetryBackend)
    assert isinstance(b.inner.inner, storage.WholeObjectLocal)
    assert storage.is_remote(b) and storage.connections_of(b) == storage.WHOLE_OBJECT_CONNECTIONS
    assert not hasattr(b.inner, "stage")
    assert storage.spec_of(url, b) == url
    local = storage.open_storage(str(tmp_path / "l"))
    assert isinstance(local.inner, LocalBackend) and not storage.is_remote(local)
    assert storage.spec_of("l", local) == (tmp_path / "l").as_uri()  # absolute for workers
    assert storage.spec_of("memory://x", storage.open_storage("memory://x")) is None
    with pytest.raises(UsageError):
        storage.open_storage(url + "&colour=blue")
    with pytest.raises(UsageError):
        storage.open_storage((tmp_path / "r").as_uri() + "?staging=yes")


def test_local_and_fault_injecting_repositories_keep_their_paths(tmp_path: Path) -> None:
    repo = Repository.init(LocalBackend(tmp_path / "l"), "pw", kdf=KdfParams.FAST)
    setup = repo.worker_setup()
    assert setup is not None and setup["spec"] == (tmp_path / "l").as_uri()
    faulty = Repository.open(FaultBackend(LocalBackend(tmp_path / "l"), FaultPlan()), "pw")
    assert faulty.worker_setup() is None
    assert faulty.local_dir() == tmp_path / "l"


# --- workers over a store without staging --------------------------------------------


def test_backup_and_restore_through_workers_without_staging_are_exact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _source(src, 1)
    repo = _init(tmp_path / "repo")
    res = Archiver(repo, BackupOptions(processes_after=0)).run(src)
    assert res.snapshot is not None
    counts = repo.request_counts()
    # the workers uploaded whole packs with store and reported their requests
    assert repo.packs_written >= 2 and counts["store"] >= repo.packs_written
    assert 9_000_000 <= counts["bytes_up"] < 12_000_000  # again.bin deduplicated
    assert leftovers_of(LocalBackend(tmp_path / "repo")) == []  # no temporary file of any writer

    fresh = _open(tmp_path / "repo")
    ids = [bid for bid, _ in fresh.index.blobs()]
    assert len(ids) == len(set(ids))
    assert sum(len(fresh.read_pack_header(pid, size).blobs) for pid, size in fresh.list_packs()) == len(ids)
    assert svc.check(fresh, read_data=True).ok

    out = tmp_path / "out"
    before = fresh.request_counts()["load"]
    Restorer(fresh, RestoreOptions(processes_after=0)).run(res.snapshot, out)
    assert describe(out) == describe(src)
    assert fresh.request_counts()["load"] > before  # the restore workers' loads were added


def test_restore_threads_in_process_on_a_remote_store(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _source(src, 2)
    repo = _init(tmp_path / "repo")
    snap = Archiver(repo, BackupOptions(processes_after=None)).run(src).snapshot  # in-process uploads
    assert snap is not None
    out = tmp_path / "out"
    Restorer(_open(tmp_path / "repo"), RestoreOptions(processes_after=None)).run(snap, out)
    assert describe(out) == describe(src)


# --- retries ---------------------------------------------------------------------------


class _Unreachable(MemoryBackend):
    """Every request fails as a dropped connection does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.calls += 1
        raise BackendIOError(f"connection to {self.url} reset", transient=True)

    def store(self, name: str, data: bytes) -> None:
        self.load(name)


def test_an_unreachable_store_fails_within_the_retry_budget_with_one_line() -> None:
    inner = _Unreachable()
    rb = RetryBackend(inner, attempts=1000, base_delay=0.01, max_delay=0.05, budget=0.4)
    start = time.monotonic()
    with pytest.raises(BackendIOError) as info:
        rb.store("data/x", b"1")
    took = time.monotonic() - start
    assert 0.2 < took < 1.5, took
    assert inner.calls > 3 and rb.retries == inner.calls - 1
    line = str(info.value)
    assert "\n" not in line and "reset" in line and f"tried {inner.calls} times" in line
    assert exit_codes.exit_code_for(info.value) == exit_codes.STORAGE


def test_the_budget_bounds_total_time_not_only_attempts() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    rb = RetryBackend(
        _Unreachable(), attempts=10_000, base_delay=1, max_delay=8, budget=60, sleep=sleep, clock=lambda: now[0]
    )
    with pytest.raises(BackendIOError):
        rb.load("x")
    assert sum(sleeps) <= 60 and sum(sleeps) > 60 - 8
    assert max(sleeps) <= 8


def test_remote_stores_are_retried_in_workers_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(svc.RETRY_BUDGET_ENV, "7.5")
    repo = svc.init_repository(_url(tmp_path / "repo"), "pw", kdf=KdfParams.FAST)
    setup = repo.worker_setup()
    assert setup is not None and setup["retry_budget"] == 7.5
    worker_backend = storage.open_storage(setup["spec"], retry_budget=setup["retry_budget"])
    assert isinstance(worker_backend.inner, RetryBackend) and worker_backend.inner.budget == 7.5
    monkeypatch.setenv(svc.RETRY_BUDGET_ENV, "soon")
    with pytest.raises(UsageError, match=svc.RETRY_BUDGET_ENV):
        svc.open_repository(_url(tmp_path / "repo"), "pw")


# --- the metadata cache ----------------------------------------------------------------


def _backup_twice(tmp_path: Path, cache: Path | None) -> tuple[Repository, dict[str, int]]:
    src = tmp_path / "src"
    if not src.exists():
        _source(src, 4)
    repo = _init(tmp_path / "repo", cache) if not (tmp_path / "repo").exists() else _open(tmp_path / "repo", cache)
    first = svc.backup(repo, src)
    assert first.snapshot is not None
    again = _open(tmp_path / "repo", cache)
    before = again.request_counts()
    svc.backup(again, src)
    after = again.request_counts()
    return again, {k: after[k] - before[k] for k in after}


def test_a_no_op_backup_downloads_no_metadata_it_has(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    repo, counts = _backup_twice(tmp_path, cache)
    assert repo.cache is not None and repo.cache.root == cache / repo.config.id
    assert repo.cache.misses == 0 and repo.cache.hits > 0
    # locks (list, store, delete), the index and snapshot listings, one new snapshot: no
    # index file, snapshot or tree loaded, no pack written
    assert counts["load"] == 0, counts
    assert counts["bytes_down"] == 0
    assert counts["store"] == 2 and counts["create"] == 0  # the shared lock and the snapshot
    total = sum(counts[op] for op in ("load", "store", "list", "stat", "create", "delete"))
    assert total <= 10, counts
    _, uncached = _backup_twice(tmp_path / "nocache", None)
    assert uncached["load"] > 0  # without the cache, they are loaded


def test_a_damaged_cache_entry_is_fetched_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    repo, _ = _backup_twice(tmp_path, cache)
    assert repo.cache is not None
    root = repo.cache.root
    entries = [p for p in root.rglob("*") if p.is_file()]
    assert {p.relative_to(root).parts[0] for p in entries} == {"index", "snapshots", "trees"}
    for p in entries:  # flip a byte of every entry
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x55
        p.write_bytes(bytes(data))
    fresh = _open(tmp_path / "repo", cache)
    before = fresh.request_counts()["load"]
    _read_all_metadata(fresh)
    assert fresh.request_counts()["load"] - before == len(entries) - 1  # (the index: read at open)
    assert fresh.cache is not None and fresh.cache.damaged == len(entries)
    for p in entries:  # the cache holds intact copies again
        if p.relative_to(root).parts[0] != "trees":
            assert p.read_bytes() == LocalBackend(tmp_path / "repo").load(_stored_name(p, root))
    again = _open(tmp_path / "repo", cache)
    before = again.request_counts()["load"]
    _read_all_metadata(again)
    assert again.request_counts()["load"] == before  # all hits now
    assert again.cache is not None and again.cache.damaged == 0


def _read_all_metadata(repo: Repository) -> None:
    def walk(tid: bytes) -> None:
        for node in repo.load_tree(tid).nodes:
            if node.subtree is not None:
                walk(node.subtree)

    for s in repo.snapshots():
        walk(s.tree)


def _stored_name(p: Path, root: Path) -> str:
    parts = p.relative_to(root).parts
    return f"{parts[0]}/{parts[-1]}"


def test_a_deleted_cache_directory_is_only_a_miss(tmp_path: Path) -> None:
    import shutil

    cache = tmp_path / "cache"
    repo, _ = _backup_twice(tmp_path, cache)
    shutil.rmtree(cache)
    fresh = _open(tmp_path / "repo", cache)
    assert [s.id for s in fresh.snapshots()] == [s.id for s in repo.snapshots()]
    assert fresh.request_counts()["load"] > 0
    assert any((cache / repo.config.id / "snapshots").iterdir())  # filled again
    shutil.rmtree(cache)  # while open: writes go on
    fresh.load_tree(fresh.snapshots()[-1].tree)
    assert (cache / repo.config.id / "trees").is_dir()


def test_cache_entries_of_removed_objects_leave_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    repo, _ = _backup_twice(tmp_path, cache)
    snaps = repo.snapshots()
    repo.delete_snapshot(snaps[0].id)
    assert repo.cache is not None
    assert (repo.cache.root / "snapshots" / snaps[0].id).exists()
    repo.list_snapshot_ids()
    assert not (repo.cache.root / "snapshots" / snaps[0].id).exists()


def test_cache_checks_names_and_ignores_write_errors(tmp_path: Path) -> None:
    c = MetadataCache(tmp_path / "c")
    data = b"hello"
    import hashlib

    name = hashlib.sha256(data).hexdigest()
    assert c.get("index", name) is None
    c.put("index", name, data)
    assert c.get("index", name) == data
    c.put("index", "ab" * 32, data)  # wrong name for this content
    assert c.get("index", "ab" * 32) is None and not (tmp_path / "c" / "index" / ("ab" * 32)).exists()
    with pytest.raises(ValueError):
        c.get("index", "../x")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        ro = MetadataCache(tmp_path / "ro" / "c")
        ro.put("index", name, data)  # no error: a cache that cannot be written costs downloads
    finally:
        os.chmod(tmp_path / "ro", 0o700)


# --- the command line --------------------------------------------------------------------


def test_cli_debug_line_and_backup_json_show_requests_and_a_no_op_costs_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from cargohold.cli.app import main

    monkeypatch.setattr("cargohold.cli.docker_state.recover_orphans_quietly", lambda: None)
    monkeypatch.setenv("CARGOHOLD_PASSWORD", "pw")
    monkeypatch.setenv("CARGOHOLD_KDF", "fast")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("CARGOHOLD_NO_CACHE", raising=False)
    monkeypatch.setenv("CARGOHOLD_REPO", _url(tmp_path / "repo"))
    src = tmp_path / "src"
    _source(src, 5)
    assert main(["init"]) == 0
    assert main(["backup", "--path", str(src)]) == 0
    capsys.readouterr()
    assert main(["--debug", "backup", "--path", str(src), "--json"]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    req = doc["requests"]
    # the config and the key slot are read; no index file, snapshot or tree is
    assert req["load"] == 2 and req["bytes_down"] < 4096 and req["store"] == 2, req  # the lock, the snapshot
    assert sum(req[op] for op in ("load", "store", "list", "stat", "create", "delete")) <= 10, req
    debug = [line for line in out.err.splitlines() if line.startswith("cargohold: debug:")]
    assert len(debug) == 1 and "requests: " in debug[0] and "store 2" in debug[0], out.err
    assert (tmp_path / "xdg-cache" / "cargohold").is_dir()  # the default cache directory
    monkeypatch.setenv("CARGOHOLD_NO_CACHE", "1")
    assert main(["backup", "--path", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"]["load"] > 2  # no cache: downloads


def test_a_failing_upload_in_a_worker_fails_the_backup_and_commits_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _source(src, 6)
    repo = _init(tmp_path / "repo")
    data = tmp_path / "repo" / "data"
    if data.exists():
        data.rmdir()
    data.write_bytes(b"not a folder")  # every pack upload fails (permanently: no retries)
    with pytest.raises(BackendIOError, match="clashes"):
        Archiver(repo, BackupOptions(processes_after=0)).run(src)
    assert repo.list_snapshot_ids() == [] and repo.list_index_files() == []
    assert leftovers_of(LocalBackend(tmp_path / "repo")) == []


def test_check_reads_the_store_not_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    repo, _ = _backup_twice(tmp_path, cache)
    snap = repo.snapshots()[-1]
    repo.load_tree(snap.tree)  # cached now
    stored = LocalBackend(tmp_path / "repo")
    for info in stored.list("snapshots/"):  # damage the snapshots in the store only
        data = bytearray(stored.load(info.name))
        data[-5] ^= 0xFF
        stored.store(info.name, bytes(data))
    fresh = _open(tmp_path / "repo", cache)
    assert len(fresh.snapshots()) == 2  # served from the intact cached copies
    report = svc.check(fresh)
    assert not report.ok
    assert fresh.cache is not None  # back on after the check


def test_the_clean_up_after_a_failed_store_is_not_retried() -> None:
    deletes: list[str] = []

    class Deletes(_Unreachable):
        def delete(self, name: str) -> None:
            deletes.append(name)

    backend = CountingBackend(RetryBackend(Deletes(), attempts=3, base_delay=0.001))
    storage.delete_once(backend, "data/x")
    assert deletes == ["data/x"]
    repo_like = FaultBackend(
        MemoryBackend(), FaultPlan(fail_at=0, transient=True, fail_times=100, ops=frozenset({"delete"}))
    )
    rb = RetryBackend(repo_like, attempts=50, base_delay=0.001)
    with pytest.raises(BackendIOError):
        storage.delete_once(rb, "data/y")
    assert repo_like.count == 1 and rb.retries == 0


def test_a_failed_store_removes_what_it_left_with_one_attempt() -> None:
    """``storage.store_or_clean`` (the repository's objects and the workers' packs): the
    store's error is raised, after one delete of the half-written object."""

    class HalfWrites(MemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.deletes: list[str] = []

        def store(self, name: str, data: bytes) -> None:
            super().store(name, data[: len(data) // 2])
            raise BackendIOError(f"connection to {self.url} reset", transient=True)

        def delete(self, name: str) -> None:
            self.deletes.append(name)
            super().delete(name)

    inner = HalfWrites()
    backend = CountingBackend(RetryBackend(inner, attempts=3, base_delay=0.001))
    with pytest.raises(BackendIOError, match="reset"):
        storage.store_or_clean(backend, "data/x", b"12345678")
    assert inner.deletes == ["data/x"] and not list(inner.list(""))


def test_snapshots_and_index_files_are_hashed_once_per_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object named by its SHA-256 is checked against its name once: by the repository
    on a miss (then cached), by the cache on a hit — not a second time by its reader."""
    import cargohold.repo.repository as repo_mod

    cache = tmp_path / "cache"
    repo, _ = _backup_twice(tmp_path, cache)
    sids, names = repo.list_snapshot_ids(), repo.list_index_files()
    hashed: list[int] = []
    real = repo_mod.sha256_hex

    def counted(data: bytes | memoryview) -> str:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(repo_mod, "sha256_hex", counted)
    shutil.rmtree(cache)
    assert repo.cache is not None
    hits = repo.cache.hits
    for expected in (len(sids) + len(names), 0):  # from the store, then from the cache
        hashed.clear()
        for sid in sids:
            repo.load_snapshot(sid)
        for name in names:
            repo.read_index_file(name)
        assert len(hashed) == expected
    assert repo.cache.hits - hits == len(sids) + len(names)
