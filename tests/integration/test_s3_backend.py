"""The S3 backend on a real S3 server: the test bed's Ceph RADOS Gateway (``rgw_server``).

What the conformance suite (tests/contract, kinds ``s3(rgw)`` and ``s3(rgw,create=fallback)``)
cannot show: multipart uploads never visible half-written and their leftovers, the
conditional-PUT probe on a server that ignores ``If-None-Match``, create races between
separate clients, error messages and exit codes, bucket creation by ``init``, and the
issue's acceptance through the CLI. No Docker needed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.backends import leftovers_of, open_backend
from cargohold.backends.leftovers import this_writer
from cargohold.backends.s3 import S3Backend
from cargohold.cli import exit_codes
from cargohold.errors import BackendIOError, ObjectExists, ObjectNotFound
from cargohold.testbed.rgw import RgwServer

MiB = 1 << 20


@pytest.fixture
def env(s3_env: RgwServer, tmp_path: Path) -> dict[str, str]:
    """The environment of a cargohold command a user runs against the gateway."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("CARGOHOLD_", "AWS_"))}
    out.update(s3_env.env())
    out.update(
        {
            "CARGOHOLD_PASSWORD": "s3-test-password",
            "CARGOHOLD_KDF": "fast",
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        }
    )
    return out


@pytest.fixture
def fresh_bucket_name(s3_env: RgwServer) -> Iterator[str]:
    """A bucket name nobody created yet; removed afterwards if a test created it."""
    name = f"ch-new-{uuid.uuid4().hex[:16]}"
    yield name
    with contextlib.suppress(Exception):
        s3_env.remove_bucket(name)


def cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cargohold.cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cargohold: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def small_parts(bucket: str, prefix: str = "repo") -> S3Backend:
    """A backend that uploads objects of 6 MiB and more in parts of 5 MiB (S3's minimum)."""
    return S3Backend(bucket, prefix, multipart_threshold=6 * MiB, part_size=5 * MiB)


# --- the body's checksum ------------------------------------------------------------------


def test_a_body_changed_on_the_way_is_refused_without_content_md5(s3_bucket: str) -> None:
    """Over http uploads carry no Content-MD5 (S3Backend.content_md5): the SHA-256 of the body
    that SigV4 signs is what the server checks, so a body changed after signing is refused,
    a single PUT and a part alike, and nothing is stored."""
    backend = small_parts(s3_bucket)
    assert backend.endpoint.startswith("http:") and not backend.content_md5

    def corrupt(request: Any, **_kw: object) -> None:
        body = request.body if isinstance(request.body, (bytes, bytearray)) else request.body.read()
        if body:  # not the empty marker of a multipart upload
            request.body = bytes([body[0] ^ 1]) + bytes(body[1:])

    backend._client.meta.events.register("before-send.s3.PutObject", corrupt)
    backend._client.meta.events.register("before-send.s3.UploadPart", corrupt)
    for name, size in (("data/small", 1000), ("data/large", 7 * MiB)):
        with pytest.raises(BackendIOError) as err:
            backend.store(name, os.urandom(size))
        assert not err.value.transient and "XAmzContentSHA256Mismatch" in str(err.value)
        with pytest.raises(ObjectNotFound):
            backend.stat(name)
    assert leftovers_of(backend) == []


# --- multipart uploads ------------------------------------------------------------------


def test_multipart_object_is_never_visible_half_written(s3_bucket: str) -> None:
    backend = small_parts(s3_bucket)
    data = os.urandom(13 * MiB)  # three parts: 5 + 5 + 3 MiB
    seen: list[str] = []
    real_upload_part = backend._client.upload_part

    def upload_part(**kwargs: Any) -> Any:
        answer = real_upload_part(**kwargs)
        # Between the parts: the object does not exist for any reader, the upload is a
        # leftover of this very process.
        with pytest.raises(ObjectNotFound):
            backend.stat("data/big")
        with pytest.raises(ObjectNotFound):
            backend.load("data/big", 0, 10)
        assert [i.name for i in backend.list("data/")] == []
        (lo,) = leftovers_of(backend)
        assert lo.kind == "multipart upload" and lo.name.startswith("data/big~upload~")
        assert lo.writer == this_writer()
        assert lo.size == min(kwargs["PartNumber"] * 5 * MiB, len(data))
        seen.append(lo.name)
        return answer

    backend._client.upload_part = upload_part
    backend.store("data/big", data)
    assert len(seen) == 3
    assert backend.load("data/big") == data
    assert backend.load("data/big", 5 * MiB - 3, 6) == data[5 * MiB - 3 : 5 * MiB + 3]
    assert backend.stat("data/big").size == len(data)
    assert leftovers_of(backend) == []  # the upload and its marker are gone
    assert [i.name for i in backend.list()] == ["data/big"]


def test_a_failed_multipart_upload_is_aborted(s3_bucket: str) -> None:
    backend = small_parts(s3_bucket)
    backend.store("data/obj", b"old")
    calls = 0
    real_upload_part = backend._client.upload_part

    def failing_upload_part(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionResetError("connection reset by peer (test)")
        return real_upload_part(**kwargs)

    backend._client.upload_part = failing_upload_part
    with pytest.raises(BackendIOError) as err:
        backend.store("data/obj", os.urandom(12 * MiB))
    assert err.value.transient
    assert backend.load("data/obj") == b"old"  # the old object stays whole
    assert leftovers_of(backend) == []


KILLED_WRITER = """
import os, signal, sys
from cargohold.backends.s3 import S3Backend
b = S3Backend(sys.argv[1], sys.argv[2], multipart_threshold=6 << 20, part_size=5 << 20)
real = b._client.upload_part
def upload_part(**kw):
    answer = real(**kw)
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-upload, after the first part
    return answer
b._client.upload_part = upload_part
b.store("data/00/" + "0" * 64, os.urandom(12 << 20))
"""


def test_an_abandoned_multipart_upload_is_found_by_check_and_removed_by_prune(
    s3_bucket: str, s3_env: RgwServer, env: dict[str, str]
) -> None:
    env = {**env, "CARGOHOLD_REPO": f"s3://{s3_bucket}/repo"}
    ok(cli("init", env=env))
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, s3_bucket, "repo"], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr
    backend = open_backend(f"s3://{s3_bucket}/repo")
    (lo,) = leftovers_of(backend)
    assert lo.kind == "multipart upload" and lo.size == 5 * MiB
    assert lo.writer is not None and lo.writer.host == this_writer().host

    report = cli("check", env=env)
    assert report.returncode == 0, (report.stdout, report.stderr)
    assert "leftover" in (report.stdout + report.stderr).lower(), (report.stdout, report.stderr)
    ok(cli("prune", env=env))
    assert leftovers_of(backend) == []
    client: Any = s3_env.client()
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not [k for k in keys if "~" in k], keys  # no marker, claim or probe left behind
    ok(cli("check", env=env))


# --- create-if-absent -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["conditional", "fallback"])
def test_create_race_between_separate_clients_has_one_winner(s3_bucket: str, mode: str) -> None:
    clients = [open_backend(f"s3://{s3_bucket}/repo?create={mode}") for _ in range(6)]
    for round_ in range(3):
        name = f"locks/exclusive{round_}"
        winners: list[int] = []
        losers: list[int] = []
        barrier = threading.Barrier(len(clients))

        def contend(
            i: int,
            name: str = name,
            barrier: threading.Barrier = barrier,
            winners: list[int] = winners,
            losers: list[int] = losers,
        ) -> None:
            barrier.wait()
            try:
                clients[i].create(name, f"holder {i}".encode())
            except ObjectExists:
                losers.append(i)
            else:
                winners.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(winners) == 1 and len(losers) == len(clients) - 1, (winners, losers)
        assert clients[0].load(name) == f"holder {winners[0]}".encode()
    assert leftovers_of(clients[0]) == []  # every claim was dropped
    for c in clients:
        c.close()


def test_a_server_that_ignores_if_none_match_gets_the_claim_protocol(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cargohold.backends import s3 as s3mod

    monkeypatch.setattr(s3mod, "_conditional_put", {})  # probe again in this test
    backend = open_backend(f"s3://{s3_bucket}/repo")
    assert isinstance(backend, S3Backend) and backend.create_mode == "auto"
    real_put = backend._client.put_object
    headers_sent: list[bool] = []

    def ignoring_put(**kwargs: Any) -> Any:  # what such a server does: the header has no effect
        headers_sent.append("IfNoneMatch" in kwargs)
        kwargs.pop("IfNoneMatch", None)
        return real_put(**kwargs)

    backend._client.put_object = ignoring_put
    backend.create("locks/exclusive", b"first")
    with pytest.raises(ObjectExists):
        backend.create("locks/exclusive", b"second")
    assert backend.load("locks/exclusive") == b"first"
    assert s3mod._conditional_put[(backend.endpoint, s3_bucket)] is False
    assert headers_sent[:2] == [True, True]  # the probe's two conditional PUTs
    assert not any(headers_sent[2:])  # then claims, no conditional PUT
    assert [i.name for i in backend.list()] == ["locks/exclusive"]


def test_the_probe_finds_that_rgw_honours_if_none_match(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cargohold.backends import s3 as s3mod

    monkeypatch.setattr(s3mod, "_conditional_put", {})
    backend = open_backend(f"s3://{s3_bucket}/repo")
    assert isinstance(backend, S3Backend)
    backend.create("a", b"1")
    assert s3mod._conditional_put[(backend.endpoint, s3_bucket)] is True
    assert [i.name for i in backend.list()] == ["a"]  # the probe object is gone


def test_a_dead_writers_claim_is_a_leftover(s3_bucket: str) -> None:
    backend = small_parts(s3_bucket)
    key = f"repo/~claims/locks/exclusive/{time.time_ns():020d}-999999999-x-aaaaaaaaaaaa-bbbbbbbb-cccccccccccc"
    backend._client.put_object(Bucket=s3_bucket, Key=key, Body=b"")
    (lo,) = leftovers_of(backend)
    assert lo.kind == "create claim" and lo.writer is not None and lo.writer.pid == 999999999
    assert [i.name for i in backend.list()] == []  # a claim is no object
    assert backend.remove_leftover(lo) is True
    assert backend.remove_leftover(lo) is False
    assert leftovers_of(backend) == []


# --- errors -----------------------------------------------------------------------------


def test_wrong_secret_is_one_clear_line(s3_bucket: str, env: dict[str, str]) -> None:
    env = {**env, "CARGOHOLD_REPO": f"s3://{s3_bucket}/repo"}
    ok(cli("init", env=env))
    line = one_line_error(cli("snapshots", env={**env, "AWS_SECRET_ACCESS_KEY": "wrong" * 8}), exit_codes.STORAGE)
    assert "secret key is wrong" in line and "AWS_SECRET_ACCESS_KEY" in line
    line = one_line_error(cli("snapshots", env={**env, "AWS_ACCESS_KEY_ID": "NOSUCHKEY0000000"}), exit_codes.STORAGE)
    assert "access key is unknown" in line and "AWS_ACCESS_KEY_ID" in line


def test_unreachable_endpoint_is_transient_and_bounded(s3_env: RgwServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    backend = S3Backend("bucket", "repo", endpoint=f"http://127.0.0.1:{port}", connect_timeout=2, read_timeout=2)
    started = time.monotonic()
    with pytest.raises(BackendIOError) as err:
        backend.load("config")
    assert err.value.transient and f"127.0.0.1:{port}" in str(err.value)
    assert time.monotonic() - started < 10


def test_missing_bucket_init_creates_it_and_says_so(fresh_bucket_name: str, env: dict[str, str]) -> None:
    env = {**env, "CARGOHOLD_REPO": f"s3://{fresh_bucket_name}/repo"}
    line = one_line_error(cli("snapshots", env=env), exit_codes.STORAGE)
    assert f"bucket '{fresh_bucket_name}' does not exist" in line and "cargohold init" in line
    out = ok(cli("init", env=env))
    assert out.splitlines()[0] == f"created bucket '{fresh_bucket_name}' at {env['AWS_ENDPOINT_URL']}"
    assert "created repository" in out
    # a second repository in the same bucket: the bucket exists, nothing said of it
    out = ok(cli("init", env={**env, "CARGOHOLD_REPO": f"s3://{fresh_bucket_name}/other"}))
    assert "created bucket" not in out


def test_init_says_how_to_create_a_bucket_it_may_not_create(
    fresh_bucket_name: str, env: dict[str, str], s3_env: RgwServer
) -> None:
    env = {
        **env,
        "CARGOHOLD_REPO": f"s3://{fresh_bucket_name}/repo",
        "AWS_ACCESS_KEY_ID": s3_env.limited_access_key,  # a user that may not create buckets
        "AWS_SECRET_ACCESS_KEY": s3_env.limited_secret_key,
    }
    line = one_line_error(cli("init", env=env), exit_codes.STORAGE)
    assert f"bucket '{fresh_bucket_name}' does not exist" in line and "may not create it" in line
    assert f"aws s3 mb s3://{fresh_bucket_name}" in line
    assert "created" not in line


def test_s3_options_on_the_command_line(s3_bucket: str, env: dict[str, str], tmp_path: Path) -> None:
    endpoint = env.pop("AWS_ENDPOINT_URL")
    env["CARGOHOLD_REPO"] = f"s3://{s3_bucket}/cli"
    ok(cli("--s3-endpoint", endpoint, "--s3-addressing", "path", "init", env=env))
    data = tmp_path / "d"
    data.mkdir()
    (data / "f").write_text("x")
    ok(cli("--s3-endpoint", endpoint, "backup", "--path", str(data), env=env))
    assert len(ok(cli("--s3-endpoint", endpoint, "snapshots", "--json", env=env)).strip()) > 2
    line = one_line_error(cli("--s3-addressing", "sideways", "snapshots", env=env), exit_codes.USAGE)
    assert "addressing" in line


# --- the acceptance, as written ---------------------------------------------------


def test_acceptance_as_written(rgw_server: RgwServer, env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "DATA"
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "big.bin").write_bytes(os.urandom(20 * MiB))
    (data / "sub" / "deeper" / "small").write_bytes(os.urandom(5000))
    os.symlink("a.txt", data / "link")
    bucket = "acceptance"
    with contextlib.suppress(Exception):
        rgw_server.remove_bucket(bucket)  # a left-over bucket of an earlier run
    env = {**env, "CARGOHOLD_REPO": "s3://acceptance/repo"}
    try:
        script = (
            "cargohold init && cargohold backup --path DATA && cargohold restore latest --target OUT"
            " && cargohold check --read-data"
        )
        bindir = Path(sys.executable).parent
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env={**env, "PATH": f"{bindir}:{env.get('PATH', '')}"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert "created bucket 'acceptance'" in proc.stdout
        diff = subprocess.run(["diff", "-r", "--no-dereference", str(data), str(tmp_path / "OUT")], capture_output=True)
        assert diff.returncode == 0, diff.stdout
    finally:
        with contextlib.suppress(Exception):
            rgw_server.remove_bucket(bucket)
