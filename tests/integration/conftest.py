"""Fixtures for every integration test: a real engine, test images, tracked resources.

* ``engine`` (session): URL of an engine that answers; the test bed starts one when it
  can. If it cannot, every integration test FAILS with the reason (no silent skip).
* ``docker_port`` (session): a :class:`~cargohold.docker.sdk.SdkDocker` on it.
* ``busybox_image``, ``postgres_image``, ``mariadb_image``, ``redis_image`` (session):
  refs of the local test images, built on first use.
* ``resources`` (function): creates labelled containers/volumes and force-removes them
  at the end of the test, pass or fail. ``unique_name`` (tests/conftest.py) makes names.
* ``second_engine`` (session): URL of a second, independent engine of this session
  (own directory, stopped and deleted at session end); ``second_docker_port``,
  ``second_resources`` and ``second_engine_image(name)`` go with it.

At session end, leftovers labelled ``cargohold.test=1`` that this session (or a dead
one) made are swept from both engines. Everything under tests/integration/ is marked
``integration``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cargohold.docker.connect import Endpoint, resolve_endpoint
from cargohold.docker.sdk import SdkDocker
from cargohold.errors import CargoholdError, TestbedError
from cargohold.testbed.engine import ensure_engine, ensure_second_engine, stop_second_engine
from cargohold.testbed.images import ensure_images
from cargohold.testbed.resources import Resources, sweep

_HERE = Path(__file__).resolve().parent
#: Each session's second engine lives in /run/cargohold-e2-<pid>: short (socket path
#: limit) and its own, so parallel sessions never stop each other's engine.
_SECOND_PREFIX = "/run/cargohold-e2-"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _port(host: str) -> SdkDocker:
    return SdkDocker(Endpoint(host=host, origin="test bed"))


def _testbed(call: Callable[[], str]) -> str:
    try:
        return call()
    except TestbedError as exc:
        message = str(exc)
    pytest.fail(f"test bed: {message}", pytrace=False)


def _sweep(host: str) -> None:
    port = _port(host)
    try:
        result = sweep(port)
    except CargoholdError as exc:
        print(f"\ntest bed: sweep of {host} failed: {exc}")
        return
    finally:
        port.close()
    if result.containers or result.volumes or result.errors:
        print(
            f"\ntest bed: swept {host}: containers {result.containers}, volumes {result.volumes}"
            + (f", errors {result.errors}" if result.errors else "")
        )


@pytest.fixture(scope="session")
def engine() -> Iterator[str]:
    host = _testbed(ensure_engine)
    patch = pytest.MonkeyPatch()
    try:
        usual = resolve_endpoint().host
    except CargoholdError:
        usual = None
    if usual != host:
        # Code under test that finds the engine itself (CLI subprocesses too) finds this one.
        patch.setenv("DOCKER_HOST", host)
    try:
        yield host
    finally:
        _sweep(host)
        patch.undo()


@pytest.fixture(scope="session")
def docker_port(engine: str) -> Iterator[SdkDocker]:
    port = _port(engine)
    yield port
    port.close()


def _image(name: str, host: str, copy_from: str | None = None) -> str:
    return _testbed(lambda: ensure_images([name], host=host, copy_from=copy_from)[name])


@pytest.fixture(scope="session")
def busybox_image(engine: str) -> str:
    return _image("busybox", engine)


@pytest.fixture(scope="session")
def postgres_image(engine: str) -> str:
    return _image("postgres", engine)


@pytest.fixture(scope="session")
def mariadb_image(engine: str) -> str:
    return _image("mariadb", engine)


@pytest.fixture(scope="session")
def redis_image(engine: str) -> str:
    return _image("redis", engine)


def _tracked(port: SdkDocker) -> Iterator[Resources]:
    res = Resources(port)
    yield res
    errors = res.cleanup()
    if errors:
        pytest.fail("test bed cleanup failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def resources(docker_port: SdkDocker) -> Iterator[Resources]:
    yield from _tracked(docker_port)


def _stop_dead_sessions_engines() -> None:
    """Stop second engines left by sessions that died (their pid is gone)."""
    parent = Path(_SECOND_PREFIX).parent
    for path in parent.glob(Path(_SECOND_PREFIX).name + "*"):
        match = re.fullmatch(r"\d+", path.name[len(Path(_SECOND_PREFIX).name) :])
        if not match or int(match.group()) == os.getpid():
            continue
        try:
            os.kill(int(match.group()), 0)
        except ProcessLookupError:
            with contextlib.suppress(CargoholdError):
                stop_second_engine(path, purge=True)
        except PermissionError:
            continue


@pytest.fixture(scope="session")
def second_engine(engine: str) -> Iterator[str]:
    base = Path(f"{_SECOND_PREFIX}{os.getpid()}")
    _stop_dead_sessions_engines()
    host = _testbed(lambda: ensure_second_engine(base))
    try:
        yield host
    finally:
        _sweep(host)
        stop_second_engine(base, purge=True)


@pytest.fixture(scope="session")
def second_docker_port(second_engine: str) -> Iterator[SdkDocker]:
    port = _port(second_engine)
    yield port
    port.close()


@pytest.fixture
def second_resources(second_docker_port: SdkDocker) -> Iterator[Resources]:
    yield from _tracked(second_docker_port)


@pytest.fixture(scope="session")
def second_engine_image(engine: str, second_engine: str) -> Callable[[str], str]:
    """Factory: the ref of test image ``name`` on the second engine (copied from the first)."""

    def get(name: str) -> str:
        return _image(name, second_engine, copy_from=None if name == "busybox" else engine)

    return get
