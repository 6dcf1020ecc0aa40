"""The conformance suite on a real OpenSSH server (the test bed's sshd, ``sshd_server``)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.backends import Backend, open_backend
from cargohold.backends.sftp import SFTPBackend
from cargohold.testbed.sshd import Sshd


@pytest.fixture
def sftp_backend(sshd_server: Sshd, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty SFTPBackend in its own folder on the server, opened by URL through a
    Host alias of a private ssh config (the user's own ~/.ssh is never read); the folder is
    removed afterwards."""
    config = tmp_path / "ssh_config"
    config.write_text(sshd_server.ssh_config("contract-sftp"))
    folder = sshd_server.data / f"contract-{uuid.uuid4().hex[:12]}"
    backend = open_backend(f"sftp://contract-sftp{folder}?ssh_config={config}")
    assert isinstance(backend, SFTPBackend)
    try:
        yield backend
    finally:
        backend.close()
        shutil.rmtree(folder, ignore_errors=True)


SERVER_BACKENDS = {"sftp(openssh)": "sftp_backend"}
