"""A backend on S3-compatible object storage (AWS S3, Ceph RGW, MinIO, Garage, R2, B2, ...).

``s3://BUCKET[/PREFIX]?endpoint=URL&addressing=path|virtual|auto&region=R&create=auto|conditional|fallback``
names a store; object ``a/b`` is the key ``PREFIX/a/b``. The URL alone reopens the same
store (worker processes do): credentials never go into it but come from the standard
places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``~/.aws/credentials`` and ``~/.aws/config``); the endpoint from the
``endpoint`` option, else ``AWS_ENDPOINT_URL`` (or the profile's ``endpoint_url``), else
AWS; the region from the option, ``AWS_REGION`` or the profile (default us-east-1).

The client is botocore's (boto3's layer above it, and the s3transfer it imports, would
add 0.08 s to every process and are not needed), imported only when an ``s3://`` URL is
opened; why, measured against obstore, is in docs/REPOSITORY.md ("Remote backends: S3").

How the promises of :class:`~cargohold.backends.base.Backend` are kept (the details
and their reasons are in docs/FORMAT-keys-locks.md, "Storage backends"):

* ``store``: one PUT below :attr:`S3Backend.multipart_threshold`, else a multipart
  upload; S3 makes an object visible only when its PUT or CompleteMultipartUpload
  succeeds, so a reader never sees it half-written. Every upload's body is checked by
  the server with one hash: over http SigV4 signs its SHA-256; over https botocore signs
  no payload when the request carries ``Content-MD5``, which we then send
  (:attr:`S3Backend.content_md5`) — MD5 and SHA-256 of every pack would be twice the
  work. An interrupted multipart upload is a *leftover*
  (:meth:`S3Backend.leftovers`); its writer is recorded in a small marker object
  ``PREFIX/~multipart/<digest>.<writer tag>`` that lives as long as the upload.
* ``create``: a PUT with ``If-None-Match: *`` (412 when the name is taken). Servers that
  ignore or refuse that header are found by a probe on first use (``create=auto``) and
  get the claim protocol of :meth:`S3Backend._create_by_claim` instead. Multipart is
  never used for ``create`` (CompleteMultipartUpload ignores ``If-None-Match`` on RGW).
* ``delete``: S3's DELETE answers 204 for a missing key, so a HEAD comes first to raise
  ObjectNotFound (a race with another deleter can make both succeed: harmless for
  the lock protocol, see the format doc).
* Keys holding ``~`` (markers, claims, probes) are never objects: ``list`` skips them.

Retries are left to :class:`~cargohold.backends.retry.RetryBackend` (botocore's own are
off): it alone can resolve the ambiguous outcome of a create whose answer was lost.
Every request has a connect and a read timeout. The client is thread-safe; the backend
asks for :attr:`S3Backend.connections` parallel connections.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlsplit

import botocore.exceptions as bex
import botocore.session
import urllib3.exceptions
from botocore.config import Config

from cargohold.backends.base import Leftover, ObjectInfo, check_name
from cargohold.backends.leftovers import new_writer_tag, parse_writer_tag
from cargohold.errors import BackendError, BackendIOError, ObjectExists, ObjectNotFound, UsageError

log = logging.getLogger("cargohold.backends.s3")

T = TypeVar("T")

MiB = 1 << 20
#: Objects from this size on go up as multipart uploads (packs are ~16 MiB: one PUT each).
MULTIPART_THRESHOLD = 64 * MiB
PART_SIZE = 16 * MiB
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
#: A create claim older than this (by the server's clock, against our own claim) belongs to
#: a writer that died between its claim and its object; it is ignored.
CLAIM_TTL = 30.0
_CREATE_MODES = ("auto", "conditional", "fallback")
_ADDRESSING = ("auto", "path", "virtual")
_OPTIONS = {"endpoint", "addressing", "region", "create"}
_MARK = "~"
_UPLOAD_SEP = "~upload~"
_MULTIPART_DIR = "~multipart/"
_CLAIMS_DIR = "~claims/"
_PROBE_DIR = "~probe/"

_CREDENTIALS_HINT = (
    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE and ~/.aws/credentials), "
    "the endpoint, and that this user may use the bucket"
)
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",
    "OperationAborted",
}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken"}

_LOWER_ERRORS = (bex.BotoCoreError, bex.ClientError, urllib3.exceptions.HTTPError, OSError)

# Per process: which (endpoint, bucket) honour If-None-Match on PUT (the probe runs once).
_conditional_put: dict[tuple[str, str], bool] = {}
_probe_lock = threading.Lock()


def open_url(url: str) -> S3Backend:
    """The backend an ``s3://BUCKET[/PREFIX][?options]`` URL names."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise UsageError(f"invalid S3 repository URL {url!r}", hint="use s3://BUCKET[/PREFIX]")
    if parts.username or parts.password or "@" in parts.netloc:
        raise UsageError(
            "an s3:// URL must not carry credentials",
            hint="put them in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials",
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(unknown)} in S3 repository URL",
            hint=f"known: {', '.join(sorted(_OPTIONS))}",
        )
    return S3Backend(
        parts.netloc,
        parts.path.strip("/"),
        endpoint=options.get("endpoint") or None,
        addressing=options.get("addressing") or "auto",
        region=options.get("region") or None,
        create_mode=options.get("create") or "auto",
    )


def _md5(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _upload_digest(key: str, upload_id: str) -> str:
    """What names the marker of a multipart upload (``~multipart/<digest>.<writer tag>``)."""
    return hashlib.sha256(f"{key}\0{upload_id}".encode()).hexdigest()[:24]


def _is_aws(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")


def _endpoint_from_environment() -> str | None:
    """The endpoint the environment names for S3, as botocore reads it (its profile's
    ``endpoint_url`` aside)."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _body(data: bytes | bytearray | memoryview) -> bytes | bytearray:
    """What botocore takes as a body (it refuses a memoryview)."""
    return data if isinstance(data, (bytes, bytearray)) else bytes(data)


def _code(err: bex.ClientError) -> tuple[str, int]:
    resp = err.response
    code = str(resp.get("Error", {}).get("Code", ""))
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


class S3Backend:
    """Objects are keys under ``prefix`` in ``bucket``."""

    #: How many parallel connections this backend wants (the repository sizes its pools by it).
    connections: int

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        addressing: str = "auto",
        region: str | None = None,
        create_mode: str = "auto",
        connections: int = 8,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        if addressing not in _ADDRESSING:
            raise UsageError(f"invalid S3 addressing {addressing!r}", hint="use path, virtual or auto")
        if create_mode not in _CREATE_MODES:
            raise UsageError(f"invalid S3 create mode {create_mode!r}", hint=f"use {', '.join(_CREATE_MODES)}")
        if prefix:
            check_name(prefix)
        if part_size < 5 * MiB:
            raise ValueError("S3 parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix + "/" if prefix else ""
        self.create_mode = create_mode
        self.connections = connections
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        try:
            session = botocore.session.get_session()
            # botocore reads AWS_DEFAULT_REGION and the profile's region, not AWS_REGION
            self.region = region or os.environ.get("AWS_REGION") or session.get_config_variable("region")
            self.region = self.region or "us-east-1"
            endpoint = endpoint or None

            def client(style: str) -> Any:
                config = Config(
                    region_name=self.region,
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    max_pool_connections=connections + 2,
                    s3={"addressing_style": style},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    user_agent_extra="cargohold",
                )
                return session.create_client("s3", endpoint_url=endpoint, config=config)

            # A non-AWS endpoint (RGW, MinIO, ...) rarely has wildcard DNS names for buckets:
            # path style. An endpoint the URL or AWS_ENDPOINT_URL(_S3) names is known before the
            # client is built; one from a profile only once botocore has resolved it.
            known = endpoint or _endpoint_from_environment()
            style = addressing
            if addressing == "auto":
                style = "path" if known is not None and not _is_aws(known) else "virtual"
            self._client: Any = client(style)
            if style == "virtual" and addressing == "auto" and not _is_aws(str(self._client.meta.endpoint_url)):
                self._client.close()
                self._client = client("path")
        except bex.BotoCoreError as err:
            raise BackendIOError(f"cannot set up the S3 client for bucket {bucket!r}: {err}") from err
        self.endpoint = str(self._client.meta.endpoint_url)
        payload_signed = (
            not self.endpoint.lower().startswith("https:")
            and (self._client.meta.config.s3 or {}).get("payload_signing_enabled") is not False
        )
        #: Whether uploads carry Content-MD5: only where SigV4 does not sign the payload.
        self.content_md5 = not payload_signed
        shown = f"s3://{bucket}/{prefix}".rstrip("/")
        self.url = shown if endpoint is None else f"{shown}?endpoint={endpoint}"

    def __repr__(self) -> str:
        return f"S3Backend({self.bucket!r}, {self.prefix!r}, endpoint={self.endpoint!r})"

    # --- helpers ---------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def _checksum(self, data: bytes | bytearray | memoryview) -> dict[str, str]:
        """The ``ContentMD5`` argument of an upload of ``data``, where it is sent."""
        return {"ContentMD5": _md5(data)} if self.content_md5 else {}

    def _where(self, name: str) -> str:
        return f"object {name!r} in {self.url}"

    def _error(self, err: Exception, what: str) -> BackendError:
        """Map an error of botocore (or of the connection under it) to the backend error tree."""
        if isinstance(err, bex.ClientError):
            code, status = _code(err)
            if code == "NoSuchBucket":
                return self._no_bucket()
            if code in ("NoSuchKey", "NotFound", "NoSuchUpload") or status == 404:
                return ObjectNotFound(f"{what} does not exist")
            if code == "PreconditionFailed" or status == 412:
                return ObjectExists(f"{what} already exists")
            if code in _DENIED_CODES or status == 403:
                reason = {
                    "InvalidAccessKeyId": "the access key is unknown to the server",
                    "SignatureDoesNotMatch": "the secret key is wrong",
                }.get(code, "access denied")
                return BackendIOError(f"S3 refused access to {what} at {self.endpoint}: {reason}",
                                      hint=_CREDENTIALS_HINT)  # fmt: skip
            transient = code in _TRANSIENT_CODES or status >= 500 or status == 429
            return BackendIOError(f"S3 error on {what}: {code or status} {err}", transient=transient)
        if isinstance(err, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return BackendIOError(f"no S3 credentials found for {self.url}: {err}", hint=_CREDENTIALS_HINT)
        if isinstance(err, (bex.ConnectionError, bex.HTTPClientError, bex.ResponseStreamingError)):
            return BackendIOError(f"S3 connection to {self.endpoint} failed on {what}: {err}", transient=True)
        if isinstance(err, bex.BotoCoreError):
            return BackendIOError(f"S3 client error on {what}: {err}")
        # A connection broken while a body is read comes from urllib3 or the socket.
        return BackendIOError(f"S3 connection to {self.endpoint} failed on {what}: {err}", transient=True)

    def _no_bucket(self) -> BackendIOError:
        return BackendIOError(
            f"bucket {self.bucket!r} does not exist at {self.endpoint}",
            hint="`cargohold init` creates it, or create it with your provider's tools "
            f"(e.g. `aws s3 mb s3://{self.bucket}`)",
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except _LOWER_ERRORS as err:  # botocore's, and urllib3's or the socket's under a body read
            raise self._error(err, what) from err

    def _raise(self, err: Exception, what: str) -> NoReturn:
        raise self._error(err, what) from err

    # --- Backend protocol ------------------------------------------------------

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise UsageError(f"invalid range offset={offset} length={length} for {name!r}")
        key = self._key(name)
        if length == 0:
            self.stat(name)
            return b""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"

        def get() -> bytes:
            try:
                resp = self._client.get_object(**kwargs)
            except bex.ClientError as err:
                if _code(err)[0] == "InvalidRange" or _code(err)[1] == 416:
                    return b""  # the object exists and the range starts past its end
                raise
            body = resp["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return self._call(self._where(name), get)

    def store(self, name: str, data: bytes | bytearray) -> None:
        key = self._key(name)
        body = _body(data)
        if len(body) >= self.multipart_threshold:
            self._store_multipart(name, key, body)
            return
        self._call(
            self._where(name),
            lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=body, **self._checksum(body)),
        )

    def create(self, name: str, data: bytes) -> None:
        key = self._key(name)
        body = _body(data)
        if self._conditional_put_works():
            self._call(
                self._where(name),
                lambda: self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, **self._checksum(body), IfNoneMatch="*"
                ),
            )
            return
        self._create_by_claim(name, key, body)

    def delete(self, name: str) -> None:
        key = self._key(name)
        what = self._where(name)
        # S3 answers a DELETE of a missing key with 204 too: ask first (a racing deleter
        # may make both calls succeed; see docs/FORMAT-keys-locks.md).
        self._call(what, lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        self._call(what, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key, size, _ in self._list_keys(self.prefix + prefix, f"objects under {prefix or '/'!r} of {self.url}"):
            name = key[len(self.prefix) :]
            if _MARK in name:
                continue  # markers, claims, probes: never objects
            try:
                check_name(name)
            except UsageError:
                continue  # a foreign key (a "folder/" placeholder of some tool, ...)
            yield ObjectInfo(name, size)

    def _list_keys(self, key_prefix: str, what: str) -> Iterator[tuple[str, int, float]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": key_prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(what, lambda kw=kwargs: self._client.list_objects_v2(**kw))  # type: ignore[misc]
            for obj in page.get("Contents", []):
                yield str(obj["Key"]), int(obj["Size"]), obj["LastModified"].timestamp()
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        resp = self._call(self._where(name), lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        return ObjectInfo(name, int(resp["ContentLength"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    # --- the bucket --------------------------------------------------------------

    def prepare(self, create: bool) -> str | None:
        """Make sure the bucket exists; create it when ``create`` (``cargohold init``).
        Returns a line to show the user when something was done, else None."""
        what = f"bucket {self.bucket!r} at {self.endpoint}"
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return None
        except bex.ClientError as err:
            code, status = _code(err)
            if status != 404 and code not in ("NoSuchBucket", "NotFound"):
                self._raise(err, what)
        except _LOWER_ERRORS as err:
            self._raise(err, what)
        if not create:
            raise self._no_bucket()
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1" and _is_aws(self.endpoint):
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except bex.ClientError as err:
            code, status = _code(err)
            if code in ("BucketAlreadyOwnedByYou",):
                return None
            if code in _DENIED_CODES or status == 403:
                raise BackendIOError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint} and this user may not create it",
                    hint=f"create it with your provider's console or tools (e.g. `aws s3 mb s3://{self.bucket}`"
                    " with an account that may), or use a bucket that exists",
                ) from err
            self._raise(err, what)
        except _LOWER_ERRORS as err:
            self._raise(err, what)
        return f"created bucket {self.bucket!r} at {self.endpoint}"

    # --- conditional PUT and its fallback ---------------------------------------

    def _conditional_put_works(self) -> bool:
        if self.create_mode != "auto":
            return self.create_mode == "conditional"
        key = (self.endpoint, self.bucket)
        with _probe_lock:
            known = _conditional_put.get(key)
            if known is None:
                known = _conditional_put[key] = self._probe_conditional_put()
        return known

    def _probe_conditional_put(self) -> bool:
        """Does the server honour ``If-None-Match: *`` on PUT? Two conditional PUTs of one
        new key: the second must be refused with 412."""
        key = f"{self.prefix}{_PROBE_DIR}{secrets.token_hex(8)}"
        what = f"the conditional-PUT probe in {self.url}"

        def put() -> str:
            try:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=b"", IfNoneMatch="*")
            except bex.ClientError as err:
                code, status = _code(err)
                if status == 412:
                    return "refused"
                if status in (400, 501) or code in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                    return "unsupported"
                raise
            return "stored"

        try:
            first = self._call(what, put)
            second = self._call(what, put) if first == "stored" else first
        finally:
            with contextlib.suppress(BackendError):
                self._call(what, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))
        works = first == "stored" and second == "refused"
        if not works:
            log.info("%s ignores or refuses If-None-Match on PUT: creating objects by claims", self.endpoint)
        return works

    def _create_by_claim(self, name: str, key: str, data: bytes | bytearray, *, timeout: float = CLAIM_TTL) -> None:
        """Create-if-absent on a server without conditional PUT (docs/FORMAT-keys-locks.md).

        1. HEAD the name: taken -> ObjectExists. 2. PUT a claim ``~claims/NAME/NONCE``, the
        nonce led by the time, so older claims sort first. 3. LIST the claims of the name
        (S3 lists are consistent after a write). A smaller (older) live claim: drop ours,
        wait until no live claim is left, start again at 1. Only larger ones: keep ours
        and list again (their writers drop them on seeing ours, or finish). Ours alone: HEAD the name again (taken ->
        ObjectExists), PUT the object, drop the claim.

        At most one creator wins: of two, the later to write its claim lists after the
        earlier wrote its own, so it sees that claim, unless it was dropped already, which
        the winner does only after its object exists, and then the second HEAD sees the
        object. The oldest live claim always proceeds, so contention ends. Claims older
        than CLAIM_TTL than ours (by the server's clock) are of dead writers: ignored.
        """
        what = self._where(name)
        claim_dir = f"{self.prefix}{_CLAIMS_DIR}{name}/"
        deadline = time.monotonic() + timeout
        own_time: float | None = None

        def live_claims(except_key: str = "") -> list[str]:
            nonlocal own_time
            claims = list(self._list_keys(claim_dir, f"the create claims of {what}"))
            own_time = next((t for k, _, t in claims if k == except_key), own_time)
            return [k for k, _, t in claims if k != except_key and (own_time is None or own_time - t <= CLAIM_TTL)]

        while time.monotonic() < deadline:
            self._raise_if_exists(name, key)
            mine = f"{claim_dir}{time.time_ns():020d}-{new_writer_tag()}"
            self._call(what, lambda k=mine: self._client.put_object(Bucket=self.bucket, Key=k, Body=b""))  # type: ignore[misc]
            try:
                while time.monotonic() < deadline:
                    live = live_claims(mine)
                    if any(k < mine for k in live):
                        break  # an older claim goes first
                    if not live:
                        self._raise_if_exists(name, key)
                        self._call(
                            what,
                            lambda: self._client.put_object(
                                Bucket=self.bucket, Key=key, Body=data, **self._checksum(data)
                            ),
                        )
                        return
                    time.sleep(random.uniform(0.005, 0.02))  # younger claims: they yield or finish
            finally:
                with contextlib.suppress(BackendError):
                    self._call(what, lambda k=mine: self._client.delete_object(Bucket=self.bucket, Key=k))  # type: ignore[misc]
            # Yielded: wait, without a claim, until the older claims are gone (their object
            # then usually exists: ObjectExists at the top) before claiming again.
            while time.monotonic() < deadline and live_claims():
                time.sleep(random.uniform(0.01, 0.03))
        raise BackendIOError(f"could not create {what}: other writers kept claiming it", transient=True)

    def _raise_if_exists(self, name: str, key: str) -> None:
        try:
            self._call(self._where(name), lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        except ObjectNotFound:
            return
        raise ObjectExists(f"{self._where(name)} already exists")

    # --- multipart uploads ------------------------------------------------------------

    def _marker_key(self, key: str, upload_id: str) -> str:
        return f"{self.prefix}{_MULTIPART_DIR}{_upload_digest(key, upload_id)}.{new_writer_tag()}"

    def _store_multipart(self, name: str, key: str, data: bytes | bytearray) -> None:
        what = self._where(name)
        resp = self._call(what, lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=key))
        upload_id = str(resp["UploadId"])
        marker = self._marker_key(key, upload_id)
        view = memoryview(data)
        try:
            self._call(what, lambda: self._client.put_object(Bucket=self.bucket, Key=marker, Body=b""))
            parts = []
            for number, start in enumerate(range(0, len(data), self.part_size), 1):
                chunk = view[start : start + self.part_size]
                part = self._call(
                    what,
                    lambda c=chunk, n=number: self._client.upload_part(  # type: ignore[misc]
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=bytes(c),
                        **self._checksum(c),
                    ),
                )  # fmt: skip
                parts.append({"ETag": part["ETag"], "PartNumber": number})
            # RGW answers CompleteMultipartUpload with an empty ETag: we need none.
            self._call(
                what,
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        finally:
            with contextlib.suppress(Exception):
                self._client.delete_object(Bucket=self.bucket, Key=marker)

    # --- leftovers (HasLeftovers) ------------------------------------------------------

    def leftovers(self) -> Iterator[Leftover]:
        """Incomplete multipart uploads under the prefix, markers of finished ones a killed
        writer left, and create claims a killed writer left."""
        markers: dict[str, Leftover] = {}  # by the digest of their upload
        for mkey, size, modified in self._list_keys(self.prefix + _MULTIPART_DIR, f"multipart markers of {self.url}"):
            digest, _, tag = mkey.rsplit("/", 1)[1].partition(".")
            markers[digest] = Leftover(
                mkey[len(self.prefix) :], size, modified, parse_writer_tag(tag), "multipart marker"
            )
        for key, upload_id, initiated in self._uploads():
            marker = markers.pop(_upload_digest(key, upload_id), None)
            yield Leftover(
                key[len(self.prefix) :] + _UPLOAD_SEP + upload_id,
                self._upload_size(key, upload_id),
                initiated,
                marker.writer if marker else None,
                "multipart upload",
            )
        yield from markers.values()
        for ckey, size, modified in self._list_keys(self.prefix + _CLAIMS_DIR, f"create claims of {self.url}"):
            tag = ckey.rsplit("/", 1)[1].split("-", 1)[1]
            yield Leftover(ckey[len(self.prefix) :], size, modified, parse_writer_tag(tag), "create claim")

    def _uploads(self) -> Iterator[tuple[str, str, float]]:
        what = f"the multipart uploads of {self.url}"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = self._call(what, lambda kw=dict(kwargs): self._client.list_multipart_uploads(**kw))  # type: ignore[misc]
            for up in page.get("Uploads", []):
                yield str(up["Key"]), str(up["UploadId"]), up["Initiated"].timestamp()
            if not page.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def _upload_size(self, key: str, upload_id: str) -> int:
        what = f"the multipart upload of {key!r} in {self.url}"
        total = 0
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            try:
                page = self._call(what, lambda kw=dict(kwargs): self._client.list_parts(**kw))  # type: ignore[misc]
            except ObjectNotFound:
                return total
            total += sum(int(p["Size"]) for p in page.get("Parts", []))
            if not page.get("IsTruncated"):
                return total
            kwargs["PartNumberMarker"] = page.get("NextPartNumberMarker", 0)

    def remove_leftover(self, leftover: Leftover) -> bool:
        """Abort an incomplete multipart upload (unless it grew since it was listed), or
        delete a marker or claim object. Never deletes an object."""
        name = leftover.name
        if _UPLOAD_SEP in name:
            rel, upload_id = name.split(_UPLOAD_SEP, 1)
            key = self.prefix + check_name(rel)
            if self._upload_size(key, upload_id) != leftover.size:
                return False
            try:
                self._call(
                    f"the multipart upload of {rel!r} in {self.url}",
                    lambda: self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id),
                )
            except ObjectNotFound:
                return False
            marker_prefix = f"{self.prefix}{_MULTIPART_DIR}{_upload_digest(key, upload_id)}."
            for mkey, _, _ in self._list_keys(marker_prefix, "multipart markers"):
                with contextlib.suppress(Exception):
                    self._client.delete_object(Bucket=self.bucket, Key=mkey)
            return True
        if not (name.startswith(_MULTIPART_DIR) or name.startswith(_CLAIMS_DIR)) or ".." in name.split("/"):
            raise UsageError(f"{name!r} is no leftover of {self.url}")
        key = self.prefix + name
        try:
            self._call(name, lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        except ObjectNotFound:
            return False
        self._call(name, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))
        return True
