"""A real S3 server for the tests: a single-node Ceph RADOS Gateway on 127.0.0.1.

:func:`start_rgw` builds a one-monitor, one-OSD Ceph cluster from nothing (Debian's
``radosgw ceph-mon ceph-osd ceph-common`` packages, installed when missing and we are
root), with a **memstore** OSD (objects live in the OSD's memory; nothing on disk but
a few small files), starts a RADOS Gateway with the ``beast`` front end and creates an
S3 user with fixed test keys. Everything lives under one short directory (config,
keyrings, monitor store, logs, pids, admin sockets); every daemon listens on 127.0.0.1
only, on free ports unless told otherwise. :func:`stop_rgw` stops the daemons by their
recorded pids and deletes the directory. ~13 s to a working endpoint, ~150 MB resident.

RGW quirks the S3 backend lives with (``docs/REPOSITORY.md``): CompleteMultipartUpload
answers with an empty ETag, ``If-Match`` matches only an unquoted ETag, and
CompleteMultipartUpload ignores ``If-None-Match``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cargohold.errors import TestbedError
from cargohold.testbed._system import (
    apt_install,
    free_port,
    log,
    log_tail,
    orphaned_dirs,
    owned_temp_dir,
    pid_in,
    run_logged,
    spawn_daemon,
    state_dir,
    stop_pid,
)

PACKAGES: tuple[str, ...] = ("--no-install-recommends", "radosgw", "ceph-mon", "ceph-osd", "ceph-common")
#: Fixed keys of the test user (a test server on loopback: no secret worth keeping).
ACCESS_KEY = "TESTACCESSKEY0000001"
SECRET_KEY = "testsecretkey0000000000000000000000000001"
#: A second user that may not create buckets (``--max-buckets=-1``).
LIMITED_ACCESS_KEY = "TESTLIMITEDKEY000001"
LIMITED_SECRET_KEY = "testlimitedsecret00000000000000000000001"
#: The port the acceptance examples use; taken when free.
DEFAULT_PORT = 7480
#: The cap on the memory the memstore OSD may fill (a cap, not an allocation).
MEMSTORE_BYTES = 4 << 30
_DAEMONS = ("rgw", "osd", "mon")


@dataclass(frozen=True, slots=True)
class RgwServer:
    """A running gateway: where it answers and the keys of its test user."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    base: str
    #: Keys of a user that may not create buckets.
    limited_access_key: str = LIMITED_ACCESS_KEY
    limited_secret_key: str = LIMITED_SECRET_KEY

    def client(self, **config: Any) -> Any:
        """A plain botocore S3 client of the test user (to make and empty buckets in tests);
        ``config``: botocore ``Config`` options (``s3={"addressing_style": "path"}``, ...)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**config) if config else None,
        )

    def empty_bucket(self, bucket: str, prefix: str = "") -> None:
        """Abort the multipart uploads and delete the keys under ``prefix`` (all by default)."""
        c = self.client()
        for page in c.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for up in page.get("Uploads", []):
                c.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            if keys := [{"Key": obj["Key"]} for obj in page.get("Contents", [])]:
                failed = c.delete_objects(Bucket=bucket, Delete={"Objects": keys}).get("Errors")
                if failed:
                    raise TestbedError(f"cannot delete {len(failed)} object(s) of bucket {bucket}: {failed[0]}")

    def remove_bucket(self, bucket: str) -> None:
        """Abort the bucket's multipart uploads, delete every key, then the bucket."""
        self.empty_bucket(bucket)
        self.client().delete_bucket(Bucket=bucket)

    def env(self) -> dict[str, str]:
        """The environment a client needs (the standard AWS variables)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }


def default_base() -> Path:
    """The directory of the gateway ``python -m cargohold.testbed rgw`` manages."""
    return state_dir() / "rgw"


def _answers(endpoint: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=timeout) as resp:
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def _conf(base: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {base}/$name.keyring
run dir = {base}/run
admin socket = {base}/run/$name.asok
pid file = {base}/run/$name.pid
log file = {base}/log/$name.log
mon cluster log file = {base}/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon data avail warn = 5
auth allow insecure global id reclaim = false
[mon]
mon data = {base}/mon.$id
[osd]
osd data = {base}/osd.$id
keyring = {base}/osd.$id/keyring
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
osd memory target = 1073741824
osd max object size = 134217728
[client.rgw.a]
# tcp_nodelay: without it every small GET waits ~45 ms for a delayed ACK
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw dns name = 127.0.0.1
rgw enable usage log = false
"""


class _Cluster:
    """Commands on one cluster directory."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.conf = base / "ceph.conf"
        self.log = base / "log" / "setup.log"

    def run(self, *args: str) -> None:
        run_logged([args[0], "-c", str(self.conf), *args[1:]], self.log)

    def output(self, *args: str, timeout: float = 20.0) -> str:
        try:
            proc = subprocess.run(
                [args[0], "-c", str(self.conf), *args[1:]],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TestbedError(f"{args[0]} {args[1]} failed: {exc}") from exc
        if proc.returncode != 0:
            raise TestbedError(f"{args[0]} {' '.join(args[1:3])} failed: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def spawn(self, name: str, args: Sequence[str]) -> None:
        proc = spawn_daemon([args[0], "-c", str(self.conf), *args[1:]], self.base / "log" / f"{name}.out")
        (self.base / "run" / f"pid.{name}").write_text(f"{proc.pid}\n")

    def wait(self, what: str, ready: object, timeout: float, daemon: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(ready) and ready():
                return
            if pid_in(self.base / "run" / f"pid.{daemon}") is None:
                break
            time.sleep(0.3)
        raise TestbedError(
            f"the Ceph {what} did not come up: {log_tail(self.base / 'log' / f'{daemon}.out')}",
            hint=f"logs in {self.base / 'log'}",
        )


def _installed() -> bool:
    return all(shutil.which(b) for b in ("radosgw", "ceph-mon", "ceph-osd", "ceph", "radosgw-admin", "monmaptool"))


def ensure_packages() -> None:
    if not _installed():
        apt_install(PACKAGES, why="the S3 test server (Ceph RADOS Gateway) is not installed")


def rgw_status(base: Path | None = None) -> RgwServer | None:
    """The gateway recorded in ``base`` when all its daemons run and it answers; else None."""
    base = base or default_base()
    try:
        info = json.loads((base / "server.json").read_text())
        server = RgwServer(**info)
    except (OSError, ValueError, TypeError):
        return None
    if any(pid_in(base / "run" / f"pid.{d}") is None for d in _DAEMONS):
        return None
    return server if _answers(server.endpoint) else None


def start_rgw(base: Path | None = None, *, port: int | None = None, timeout: float = 120.0) -> RgwServer:
    """Start a gateway in ``base`` (a short directory: admin sockets live in it), or return
    the one running there. ``port``: the gateway's port (default: 7480 when free, else any)."""
    base = (base or default_base()).absolute()
    running = rgw_status(base)
    if running is not None:
        return running
    stop_rgw(base)  # a half-started or dead one
    ensure_packages()
    started = time.monotonic()
    for sub in ("log", "run", "mon.a", "osd.0"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    mon_port = free_port()
    rgw_port = free_port(port or DEFAULT_PORT)
    fsid = str(uuid.uuid4())
    cl = _Cluster(base)
    cl.conf.write_text(_conf(base, fsid, mon_port, rgw_port))
    try:
        _build(cl, base, fsid, mon_port)
        cl.spawn("mon", ["ceph-mon", "-i", "a", "-f"])
        cl.wait("monitor", lambda: _quiet(cl, "-s"), timeout, "mon")
        _make_osd(cl, base)
        cl.spawn("osd", ["ceph-osd", "-i", "0", "-f"])
        cl.wait("OSD", lambda: '"num_up_osds":1' in _quiet_out(cl, "osd", "stat", "-f", "json"), timeout, "osd")
        cl.output(
            "ceph", "auth", "get-or-create", "client.rgw.a", "mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw",
            "-o", str(base / "client.rgw.a.keyring"),
        )  # fmt: skip
        cl.spawn("rgw", ["radosgw", "-n", "client.rgw.a", "-f"])
        endpoint = f"http://127.0.0.1:{rgw_port}"
        cl.wait(f"RADOS Gateway on {endpoint}", lambda: _answers(endpoint, 1.0), timeout, "rgw")
        cl.output(
            "radosgw-admin", "user", "create", "--uid=test", "--display-name=cargohold tests",
            f"--access-key={ACCESS_KEY}", f"--secret={SECRET_KEY}",
        )  # fmt: skip
        cl.output(
            "radosgw-admin", "user", "create", "--uid=limited", "--display-name=no buckets of its own",
            f"--access-key={LIMITED_ACCESS_KEY}", f"--secret={LIMITED_SECRET_KEY}", "--max-buckets=-1",
        )  # fmt: skip
    except BaseException:
        stop_rgw(base)
        raise
    server = RgwServer(endpoint, ACCESS_KEY, SECRET_KEY, "us-east-1", str(base))
    (base / "server.json").write_text(json.dumps(asdict(server)))
    log.info("RADOS Gateway answers on %s (%.1f s)", endpoint, time.monotonic() - started)
    return server


def _quiet(cl: _Cluster, *args: str) -> bool:
    try:
        cl.output("ceph", *args, "--connect-timeout", "5", timeout=10)
    except TestbedError:
        return False
    return True


def _quiet_out(cl: _Cluster, *args: str) -> str:
    try:
        return cl.output("ceph", *args, timeout=10)
    except TestbedError:
        return ""


def _build(cl: _Cluster, base: Path, fsid: str, mon_port: int) -> None:
    mon_keyring = base / "mon.keyring"
    admin = base / "client.admin.keyring"
    run_logged(["ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.",
                "--cap", "mon", "allow *"], cl.log)  # fmt: skip
    run_logged(["ceph-authtool", "--create-keyring", str(admin), "--gen-key", "-n", "client.admin",
                "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mds", "allow *",
                "--cap", "mgr", "allow *"], cl.log)  # fmt: skip
    run_logged(["ceph-authtool", str(mon_keyring), "--import-keyring", str(admin)], cl.log)
    run_logged(["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", "--fsid", fsid,
                str(base / "monmap")], cl.log)  # fmt: skip
    cl.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(base / "monmap"), "--keyring", str(mon_keyring))


def _make_osd(cl: _Cluster, base: Path) -> None:
    osd_uuid = str(uuid.uuid4())
    key = subprocess.run(["ceph-authtool", "--gen-print-key"], capture_output=True, text=True, check=True).stdout
    new = base / "osd.0" / "new.json"
    new.write_text(json.dumps({"cephx_secret": key.strip()}))
    osd_id = cl.output("ceph", "osd", "new", osd_uuid, "-i", str(new)).strip()
    if osd_id != "0":
        raise TestbedError(f"ceph osd new gave id {osd_id!r}, expected 0")
    run_logged(["ceph-authtool", "--create-keyring", str(base / "osd.0" / "keyring"), "-n", "osd.0",
                "--add-key", key.strip()], cl.log)  # fmt: skip
    cl.run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)


def stop_rgw(base: Path | None = None, *, timeout: float = 10.0) -> bool:
    """Stop the daemons recorded in ``base`` (gateway, OSD, monitor) and delete ``base``.
    True when something was running."""
    base = (base or default_base()).absolute()
    was = False
    for daemon in _DAEMONS:
        pid = pid_in(base / "run" / f"pid.{daemon}")
        if pid is not None:
            was = True
            stop_pid(pid, f"Ceph {daemon}", timeout=timeout)
    if base.exists() and ((base / "ceph.conf").exists() or (base / "run").exists()):
        shutil.rmtree(base, ignore_errors=True)
    return was


_TEMP_PREFIX = "ch-rgw-"


def temp_base() -> Path:
    """A new short directory for a gateway of its own (a test session's), naming this process
    as its owner, so that :func:`sweep_orphans` can stop it if this process dies without
    stopping it (a test run killed by a timeout)."""
    return owned_temp_dir(_TEMP_PREFIX)


def sweep_orphans() -> list[Path]:
    """Stop the gateways of :func:`temp_base` directories whose owner process is gone; the
    directories they were in. Directories without an owner record are left alone."""
    swept = orphaned_dirs(_TEMP_PREFIX)
    for base in swept:
        log.info("stopping the orphaned RADOS Gateway in %s", base)
        stop_rgw(base)
        shutil.rmtree(base, ignore_errors=True)
    return swept
