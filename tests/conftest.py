"""Shared test helpers (no engine needed here; engine fixtures live in tests/integration)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from cargohold.errors import TestbedError
from cargohold.testbed.resources import unique_name as _unique_name
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
