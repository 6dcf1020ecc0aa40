"""Shared test helpers (no engine needed here; engine fixtures live in tests/integration)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from cargohold.errors import TestbedError
from cargohold.testbed.resources import unique_name as _unique_name
from cargohold.testbed.rgw import RgwServer, start_rgw, stop_rgw, sweep_orphans, temp_base
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
    sweep_orphans()  # gateways of earlier runs killed before they stopped theirs
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


@pytest.fixture
def s3_env(rgw_server: RgwServer, monkeypatch: pytest.MonkeyPatch) -> RgwServer:
    """The standard AWS variables pointing at the test bed's gateway (and none of the user's
    own AWS settings)."""
    for key, value in rgw_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/cargohold-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/cargohold-test-aws-credentials")
    return rgw_server


@pytest.fixture
def s3_bucket(s3_env: RgwServer) -> Iterator[str]:
    """A new, empty bucket on the test bed's gateway, emptied and removed afterwards."""
    bucket = f"ch-test-{uuid.uuid4().hex[:16]}"
    s3_env.client().create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:
        with contextlib.suppress(Exception):
            s3_env.remove_bucket(bucket)
