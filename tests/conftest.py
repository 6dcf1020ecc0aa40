"""Shared test helpers (no engine needed here; engine fixtures live in tests/integration)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cargohold.backends import Backend, open_backend
from cargohold.errors import TestbedError
from cargohold.testbed import rgw as rgw_bed
from cargohold.testbed import sshd as sshd_bed
from cargohold.testbed.resources import unique_name as _unique_name
from cargohold.testbed.rgw import RgwServer
from cargohold.testbed.sshd import Sshd


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory: ``unique_name("pg")`` → ``chtest-pg-1a2b3c4d`` (valid container/volume name)."""
    return _unique_name


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[Sshd]:
    """A private OpenSSH sshd on 127.0.0.1 (key-only login as the current user), started once
    per run by the test bed (installing OpenSSH when missing) and stopped at the end."""
    sshd_bed.sweep_orphans()  # sshds of earlier runs killed before they stopped theirs
    base = sshd_bed.temp_base()
    try:
        server = sshd_bed.start_sshd(base)
    except TestbedError as exc:
        sshd_bed.stop_sshd(base)
        pytest.fail(f"test bed: {exc}", pytrace=False)
    try:
        yield server
    finally:
        sshd_bed.stop_sshd(base)


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[RgwServer]:
    """A single-node Ceph RADOS Gateway (S3) on 127.0.0.1 with a memstore OSD, started once
    per run by the test bed (installing Ceph's packages when missing) and stopped at the end."""
    rgw_bed.sweep_orphans()  # gateways of earlier runs killed before they stopped theirs
    base = rgw_bed.temp_base()  # short: the daemons' admin sockets live in it
    try:
        server = rgw_bed.start_rgw(base)
    except TestbedError as exc:
        rgw_bed.stop_rgw(base)
        pytest.fail(f"test bed: {exc}", pytrace=False)
    try:
        yield server
    finally:
        rgw_bed.stop_rgw(base)


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


# --- a repository on a remote server of the test bed, used through the CLI ---------------------------


@dataclass
class RemoteRepo:
    """A not yet initialised repository on one of the test bed's servers (``kind`` ``s3``: a fresh
    bucket of the RADOS Gateway; ``sftp``: a fresh folder of the OpenSSH server), and how a user's
    shell reaches it: :meth:`cli` runs ``python -m cargohold.cli.app`` with ``CARGOHOLD_REPO`` set,
    the AWS variables (S3) or a HOME whose ``~/.ssh/config`` names the server (SFTP), a password, a
    cache and a state directory of the test's own. :meth:`backend` opens the same store in this
    process, to look at (or plant) objects behind cargohold's back."""

    kind: str
    url: str
    #: The URL this process opens (for SFTP it names the ssh config explicitly).
    store_url: str
    home: Path
    extra_env: dict[str, str]
    password: str = "remote-test-password"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGOHOLD_", "AWS_", "SSH_"))}
        env.update(self.extra_env)
        env.update(
            {
                "CARGOHOLD_REPO": self.url,
                "CARGOHOLD_PASSWORD": self.password,
                "CARGOHOLD_KDF": "fast",
                "XDG_CACHE_HOME": str(self.home / "cache"),
                "CARGOHOLD_STATE_DIR": str(self.home / "state"),
            }
        )
        env.update(overrides)
        return env

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cargohold.cli.app", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env or self.env(),
        )

    def cli(
        self,
        *args: str,
        code: int | None = 0,
        env: dict[str, str] | None = None,
        timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a cargohold command; assert its exit code (``code=None``: any)."""
        proc = subprocess.run(
            [sys.executable, "-m", "cargohold.cli.app", *args],
            capture_output=True,
            text=True,
            env=env or self.env(),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            timeout=timeout,
        )
        if code is not None:
            assert proc.returncode == code, (self.kind, args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def backend(self) -> Backend:
        return open_backend(self.store_url)

    def objects(self, prefix: str) -> dict[str, int]:
        """Name → size of the objects under ``prefix``, read straight from the server."""
        backend = self.backend()
        try:
            return {i.name: i.size for i in backend.list(prefix)}
        finally:
            backend.close()


@pytest.fixture
def remote_repo_type() -> type[RemoteRepo]:
    """The class of ``remote_repo``, for a test that points one at a server of its own (through a
    fault proxy, say): test modules cannot import this conftest by name."""
    return RemoteRepo


@pytest.fixture(params=["s3", "sftp"])
def remote_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RemoteRepo]:
    """A fresh remote repository location, once on RGW (S3) and once on sshd (SFTP); its bucket or
    folder is removed afterwards."""
    home = tmp_path / "remote-home"
    home.mkdir()
    if request.param == "s3":
        rgw: RgwServer = request.getfixturevalue("s3_env")
        bucket: str = request.getfixturevalue("s3_bucket")
        # the endpoint in the URL (worker processes reopen the store from it), the keys in the env
        url = f"s3://{bucket}/repo?endpoint={rgw.endpoint}"
        no_aws = {
            "AWS_ACCESS_KEY_ID": rgw.access_key,
            "AWS_SECRET_ACCESS_KEY": rgw.secret_key,
            "AWS_REGION": rgw.region,
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        }
        yield RemoteRepo("s3", url, url, home, no_aws)
        return
    sshd: Sshd = request.getfixturevalue("sshd_server")
    (home / ".ssh").mkdir()
    config = home / ".ssh" / "config"
    config.write_text(sshd.ssh_config("backuphost"))
    folder = sshd.data / f"remote-{uuid.uuid4().hex[:12]}"
    try:
        yield RemoteRepo(
            "sftp",
            f"sftp://backuphost{folder}/repo",
            f"sftp://backuphost{folder}/repo?ssh_config={config}",
            home,
            {"HOME": str(home)},
        )
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
