"""Shared test helpers (no engine needed here; engine fixtures live in tests/integration)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from cargohold.errors import TestbedError
from cargohold.testbed.resources import unique_name as _unique_name
from cargohold.testbed.rgw import RgwServer, start_rgw, stop_rgw, temp_base
from cargohold.testbed.sshd import Sshd, start_sshd, stop_sshd


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory: ``unique_name("pg")`` → ``chtest-pg-1a2b3c4d`` (valid container/volume name)."""
    return _unique_name


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A private OpenSSH sshd on 127.0.0.1 (key-only login as the current user), started once
    per run by the test bed (installing OpenSSH when missing) and stopped at the end."""
    try:
        server = start_sshd(tmp_path_factory.mktemp("sshd"))
    except TestbedError as exc:
        pytest.fail(f"test bed: {exc}", pytrace=False)
    try:
        yield server
    finally:
        stop_sshd(server.base)


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[RgwServer]:
    """A single-node Ceph RADOS Gateway (S3) on 127.0.0.1 with a memstore OSD, started once
    per run by the test bed (installing Ceph's packages when missing) and stopped at the end."""
    base = temp_base()  # short: the daemons' admin sockets live in it
    try:
        server = start_rgw(base)
    except TestbedError as exc:
        stop_rgw(base)
        pytest.fail(f"test bed: {exc}", pytrace=False)
    try:
        yield server
    finally:
        stop_rgw(base)
