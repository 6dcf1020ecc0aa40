"""The S3 backend's pure parts: URL parsing and the error map (no server; the behaviour on a
real one is in tests/contract and tests/integration/test_s3_backend.py)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _sent_checksums(backend: S3Backend) -> list[tuple[str | None, str]]:
    """(Content-MD5, X-Amz-Content-SHA256) of each request the backend sends (answered 200
    here, never sent on the wire)."""
    from botocore.awsrequest import AWSResponse

    class _Raw:
        def stream(self, **_kw: object) -> Iterator[bytes]:
            yield b""

    seen: list[tuple[str | None, str]] = []

    def answer(request: Any, **_kw: object) -> AWSResponse:
        md5 = request.headers.get("Content-MD5")
        sha = request.headers["X-Amz-Content-SHA256"]
        seen.append((None if md5 is None else md5.decode(), sha.decode()))
        return AWSResponse(request.url, 200, {}, _Raw())

    backend._client.meta.events.register("before-send.s3.*", answer)
    return seen


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_every_upload_is_hashed_once(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over http SigV4 signs the body's SHA-256 (the server checks it): no Content-MD5 on top;
    over https botocore signs no payload when Content-MD5 is sent, so it is sent."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    backend = S3Backend("b", "p", endpoint=f"{scheme}://127.0.0.1:9", create_mode="conditional")
    seen = _sent_checksums(backend)
    data = bytes(range(256)) * 4
    backend.store("data/small", data)
    backend.create("locks/x", data)
    backend._client.upload_part(Bucket="b", Key="p/k", UploadId="u", PartNumber=1, Body=data,
                                **backend._checksum(data))  # fmt: skip
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    sha = hashlib.sha256(data).hexdigest()
    if scheme == "http":
        assert not backend.content_md5 and seen == [(None, sha)] * 3
    else:
        assert backend.content_md5 and seen == [(md5, "UNSIGNED-PAYLOAD")] * 3


def test_content_md5_is_sent_over_http_when_the_profile_turns_payload_signing_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\ns3 =\n  payload_signing_enabled = false\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    backend = open_url("s3://b/p?endpoint=http://127.0.0.1:9")
    seen = _sent_checksums(backend)
    backend.store("data/small", b"abc")
    assert backend.content_md5 and seen == [
        (base64.b64encode(hashlib.md5(b"abc").digest()).decode(), "UNSIGNED-PAYLOAD")
    ]


def test_one_client_is_built_when_the_url_or_the_environment_names_the_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import botocore.session

    built: list[str] = []
    real_client = botocore.session.Session.create_client

    def client(self: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(kwargs["config"].s3["addressing_style"])
        return real_client(self, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", client)
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    open_url("s3://bucket/p?endpoint=http://127.0.0.1:9")
    open_url("s3://bucket/p")
    open_url("s3://bucket/p?endpoint=https://s3.eu-west-1.amazonaws.com")
    assert built == ["path", "virtual", "virtual"]
    built.clear()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:7")
    assert open_url("s3://bucket/p")._client.meta.config.s3["addressing_style"] == "path"
    assert built == ["path"]
    built.clear()
    # an endpoint from the profile is known only once botocore has resolved it: a second client
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    (tmp_path / "config").write_text("[default]\nendpoint_url = http://127.0.0.1:8\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    backend = open_url("s3://bucket/p")
    assert backend._client.meta.config.s3["addressing_style"] == "path" and backend.endpoint == "http://127.0.0.1:8"
    assert built == ["virtual", "path"]
