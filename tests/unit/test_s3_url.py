"""The S3 backend's pure parts: URL parsing and the error map (no server; the behaviour on a
real one is in tests/contract and tests/integration/test_s3_backend.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from cargohold.backends import open_backend
from cargohold.backends.s3 import S3Backend, open_url
from cargohold.cli import exit_codes
from cargohold.errors import BackendIOError, ObjectExists, ObjectNotFound, UsageError


@pytest.fixture(autouse=True)
def _no_user_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")


def test_url_forms() -> None:
    b = open_backend("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9&addressing=path&region=eu-1")
    assert isinstance(b, S3Backend)
    assert (b.bucket, b.prefix, b.region, b.endpoint) == ("bucket", "some/prefix/", "eu-1", "http://127.0.0.1:9")
    assert b.url == "s3://bucket/some/prefix?endpoint=http://127.0.0.1:9"
    assert b.connections == 8
    b2 = open_url("s3://bucket")
    assert (b2.prefix, b2.region, b2.url) == ("", "us-east-1", "s3://bucket")
    assert b2.endpoint.startswith("https://") and "amazonaws.com" in b2.endpoint
    assert b2._client.meta.config.s3["addressing_style"] == "virtual"
    assert b._client.meta.config.s3["addressing_style"] == "path"


def test_endpoint_and_region_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:7")
    monkeypatch.setenv("AWS_REGION", "local-1")
    b = open_url("s3://bucket/p")
    assert (b.endpoint, b.region) == ("http://127.0.0.1:7", "local-1")
    assert b._client.meta.config.s3["addressing_style"] == "path"  # a custom endpoint: path style
    assert "127.0.0.1" not in b.url  # the URL stays what the user wrote


def test_region_and_endpoint_of_a_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile backup]\nregion = prof-1\nendpoint_url = http://127.0.0.1:5\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "backup")
    b = open_url("s3://bucket/p")
    assert (b.endpoint, b.region) == ("http://127.0.0.1:5", "prof-1")
    assert b._client.meta.config.s3["addressing_style"] == "path"


def test_every_request_has_timeouts_and_botocore_does_not_retry() -> None:
    cfg = open_url("s3://bucket")._client.meta.config
    assert cfg.connect_timeout == 10 and cfg.read_timeout == 60
    assert cfg.retries["total_max_attempts"] == 1


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3://KEY:SECRET@bucket/p", "must not carry credentials"),
        ("s3://bucket/p?secret=x", "unknown option"),
        ("s3://bucket/p?addressing=sideways", "addressing"),
        ("s3://bucket/p?create=maybe", "create mode"),
        ("s3:///p", "invalid S3 repository URL"),
        ("s3://bucket/a/../b", "invalid object name"),
    ],
)
def test_bad_urls_are_usage_errors(url: str, words: str) -> None:
    with pytest.raises(UsageError, match=words) as err:
        open_backend(url)
    assert exit_codes.exit_code_for(err.value) == exit_codes.USAGE


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("err", "kind", "transient", "words"),
    [
        (_client_error("NoSuchKey", 404), ObjectNotFound, False, "does not exist"),
        (_client_error("404", 404), ObjectNotFound, False, "does not exist"),  # a HEAD has no body
        (_client_error("PreconditionFailed", 412), ObjectExists, False, "already exists"),
        (_client_error("SlowDown", 503), BackendIOError, True, "SlowDown"),
        (_client_error("InternalError", 500), BackendIOError, True, "InternalError"),
        (_client_error("ConditionalRequestConflict", 409), BackendIOError, True, "Conflict"),
        (_client_error("SignatureDoesNotMatch", 403), BackendIOError, False, "secret key is wrong"),
        (_client_error("InvalidAccessKeyId", 403), BackendIOError, False, "access key is unknown"),
        (_client_error("AccessDenied", 403), BackendIOError, False, "access denied"),
        (_client_error("NoSuchBucket", 404), BackendIOError, False, "bucket 'b' does not exist"),
        (EndpointConnectionError(endpoint_url="http://x"), BackendIOError, True, "connection"),
        (ReadTimeoutError(endpoint_url="http://x"), BackendIOError, True, "connection"),
        (ConnectionResetError("reset"), BackendIOError, True, "reset"),
        (NoCredentialsError(), BackendIOError, False, "no S3 credentials"),
    ],
)
def test_error_map(err: Exception, kind: type[Exception], transient: bool, words: str) -> None:
    backend = open_url("s3://b/p?endpoint=http://127.0.0.1:9")
    mapped = backend._error(err, "object 'x' in s3://b/p")
    assert type(mapped) is kind
    assert words in str(mapped)
    if isinstance(mapped, BackendIOError):
        assert mapped.transient is transient
        assert exit_codes.exit_code_for(mapped) == exit_codes.STORAGE
        if isinstance(err, ClientError) and _is_denied(err):
            assert "AWS_ACCESS_KEY_ID" in str(mapped)  # says what to check


def _is_denied(err: ClientError) -> bool:
    return int(err.response["ResponseMetadata"]["HTTPStatusCode"]) == 403


def test_a_bug_is_not_mapped_to_an_io_error() -> None:
    backend = open_url("s3://b/p?endpoint=http://127.0.0.1:9")

    def buggy() -> None:
        raise TypeError("a bug")

    with pytest.raises(TypeError):
        backend._call("x", buggy)
