"""The conformance suite on a real S3 server (the test bed's Ceph RADOS Gateway, ``rgw_server``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import boto3
import pytest

from cargohold.backends import Backend, open_backend
from cargohold.backends.s3 import S3Backend
from cargohold.testbed.rgw import RgwServer


def s3_admin(server: RgwServer) -> object:
    """A plain boto3 client of the test user (for creating and emptying buckets)."""
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
    )


def empty_and_remove(client: object, bucket: str) -> None:
    """Abort the bucket's multipart uploads, delete every key, then the bucket."""
    c: object = client
    for page in c.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):  # type: ignore[attr-defined]
        for up in page.get("Uploads", []):
            c.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])  # type: ignore[attr-defined]
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):  # type: ignore[attr-defined]
        for obj in page.get("Contents", []):
            c.delete_object(Bucket=bucket, Key=obj["Key"])  # type: ignore[attr-defined]
    c.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]


@pytest.fixture
def s3_env(rgw_server: RgwServer, monkeypatch: pytest.MonkeyPatch) -> RgwServer:
    """The standard AWS variables pointing at the test bed's gateway (and no profile of the user)."""
    for key, value in rgw_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/cargohold-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/cargohold-test-aws-credentials")
    return rgw_server


@pytest.fixture
def s3_bucket(s3_env: RgwServer) -> Iterator[str]:
    """A new, empty bucket on the gateway, emptied and removed afterwards."""
    client = s3_admin(s3_env)
    bucket = f"ch-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    try:
        yield bucket
    finally:
        with contextlib.suppress(Exception):
            empty_and_remove(client, bucket)


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
