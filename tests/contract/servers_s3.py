"""The conformance suite on a real S3 server (the test bed's Ceph RADOS Gateway; ``s3_bucket``
and ``rgw_server`` are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cargohold.backends import Backend, open_backend
from cargohold.backends.s3 import S3Backend


@pytest.fixture
def s3_backend(s3_bucket: str) -> Iterator[Backend]:
    """A fresh, empty S3Backend under a prefix of its own bucket, opened by URL from the
    standard AWS variables, as a user would."""
    backend = open_backend(f"s3://{s3_bucket}/repo")
    assert isinstance(backend, S3Backend)
    try:
        yield backend
    finally:
        backend.close()


SERVER_BACKENDS = {"s3(rgw)": "s3_backend"}


@pytest.fixture
def s3_fallback_backend(s3_bucket: str) -> Iterator[Backend]:
    """Like ``s3_backend``, with create-if-absent by claims (``create=fallback``), as on a
    server that ignores ``If-None-Match``: the whole suite runs on that path too."""
    backend = open_backend(f"s3://{s3_bucket}/repo?create=fallback")
    assert isinstance(backend, S3Backend) and backend.create_mode == "fallback"
    try:
        yield backend
    finally:
        backend.close()


SERVER_BACKENDS["s3(rgw,create=fallback)"] = "s3_fallback_backend"
