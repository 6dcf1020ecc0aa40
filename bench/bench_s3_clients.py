"""Compare S3 client libraries on cargohold's workload against a real S3 server.

    python bench/bench_s3_clients.py [--packs 8] [--small 2000]

Starts the test bed's Ceph RADOS Gateway (or uses the one ``python -m cargohold.testbed
rgw start`` runs), then runs each client in a fresh process of its own: import time,
PUT of 16 MiB packs from 8 threads, ranged GETs, small PUT/GET (index, snapshots, locks),
LIST of a few thousand keys; wall time, CPU time (user+sys) and peak RSS of each phase.
The figures and the choice are in docs/REPOSITORY.md ("Remote backends: S3").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cargohold.testbed.rgw import RgwServer

PACK = 16 << 20
THREADS = 8


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _phase(out: dict[str, object], name: str, fn: Callable[[], object]) -> None:
    t, c = time.perf_counter(), _cpu()
    fn()
    out[name] = {"wall_s": round(time.perf_counter() - t, 3), "cpu_s": round(_cpu() - c, 3)}


def _client_boto3(bucket: str, n_packs: int, n_small: int) -> dict[str, object]:
    out: dict[str, object] = {}
    t = time.perf_counter()
    import boto3
    from botocore.config import Config

    out["import_s"] = round(time.perf_counter() - t, 3)
    s3 = boto3.session.Session().client(
        "s3", config=Config(max_pool_connections=THREADS, s3={"addressing_style": "path"})
    )
    packs = [os.urandom(PACK) for _ in range(n_packs)]
    pool = ThreadPoolExecutor(THREADS)
    _phase(out, "put_packs", lambda: list(pool.map(lambda i: s3.put_object(
        Bucket=bucket, Key=f"data/{i:04d}", Body=packs[i]), range(n_packs))))

    def ranged(i: int) -> bytes:
        start = (i * 7919 * 4096) % (PACK - 262144)
        r = s3.get_object(Bucket=bucket, Key=f"data/{i % n_packs:04d}", Range=f"bytes={start}-{start + 262143}")
        return bytes(r["Body"].read())

    _phase(out, "ranged_get_256k_x200", lambda: list(pool.map(ranged, range(200))))
    _phase(out, "get_packs", lambda: list(pool.map(lambda i: s3.get_object(
        Bucket=bucket, Key=f"data/{i:04d}")["Body"].read(), range(n_packs))))
    small = os.urandom(600)
    _phase(out, f"small_put_x{n_small}", lambda: list(pool.map(lambda i: s3.put_object(
        Bucket=bucket, Key=f"index/{i:06d}", Body=small), range(n_small))))

    def lst() -> int:
        n = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="index/"):
            n += len(page.get("Contents", []))
        assert n == n_small, n
        return n

    _phase(out, f"list_{n_small}", lst)
    _phase(out, "small_get_x500", lambda: list(pool.map(lambda i: s3.get_object(
        Bucket=bucket, Key=f"index/{i:06d}")["Body"].read(), range(min(500, n_small)))))
    return out


def _client_obstore(bucket: str, n_packs: int, n_small: int) -> dict[str, object]:
    out: dict[str, object] = {}
    t = time.perf_counter()
    import obstore
    from obstore.store import S3Store

    out["import_s"] = round(time.perf_counter() - t, 3)
    store = S3Store(
        bucket,
        endpoint=os.environ["AWS_ENDPOINT_URL"],
        region=os.environ["AWS_REGION"],
        virtual_hosted_style_request=False,
        client_options={"allow_http": True, "pool_max_idle_per_host": str(THREADS)},
    )
    packs = [os.urandom(PACK) for _ in range(n_packs)]
    pool = ThreadPoolExecutor(THREADS)
    _phase(out, "put_packs", lambda: list(pool.map(lambda i: obstore.put(
        store, f"data/{i:04d}", packs[i], use_multipart=False), range(n_packs))))

    def ranged(i: int) -> bytes:
        start = (i * 7919 * 4096) % (PACK - 262144)
        return bytes(obstore.get_range(store, f"data/{i % n_packs:04d}", start=start, length=262144))

    _phase(out, "ranged_get_256k_x200", lambda: list(pool.map(ranged, range(200))))
    _phase(out, "get_packs", lambda: list(pool.map(lambda i: bytes(obstore.get(
        store, f"data/{i:04d}").bytes()), range(n_packs))))
    small = os.urandom(600)
    _phase(out, f"small_put_x{n_small}", lambda: list(pool.map(lambda i: obstore.put(
        store, f"index/{i:06d}", small), range(n_small))))

    def lst() -> int:
        n = sum(len(batch) for batch in obstore.list(store, "index/"))
        assert n == n_small, n
        return n

    _phase(out, f"list_{n_small}", lst)
    _phase(out, "small_get_x500", lambda: list(pool.map(lambda i: bytes(obstore.get(
        store, f"index/{i:06d}").bytes()), range(min(500, n_small)))))
    return out


def _child(client: str, bucket: str, n_packs: int, n_small: int) -> None:
    fn = _client_boto3 if client == "boto3" else _client_obstore
    t = time.perf_counter()
    out = fn(bucket, n_packs, n_small)
    out["total_s"] = round(time.perf_counter() - t, 3)
    out["cpu_total_s"] = round(_cpu(), 3)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--packs", type=int, default=8)
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--child", nargs=2, metavar=("CLIENT", "BUCKET"))
    args = p.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.packs, args.small)
        return 0
    from cargohold.testbed.rgw import rgw_status, start_rgw, stop_rgw

    ours = rgw_status() is None  # else the one `python -m cargohold.testbed rgw start` runs: left running
    server = start_rgw()
    try:
        results = _compare(server, args.packs, args.small)
    finally:
        if ours:
            stop_rgw()
    print(json.dumps(results, indent=1))
    return 0


def _compare(server: RgwServer, n_packs: int, n_small: int) -> dict[str, object]:
    env = {**os.environ, **server.env()}
    s3 = server.client()
    results: dict[str, object] = {}
    for client in ("boto3", "obstore"):
        # an empty process: the import time of the client alone
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {client}"], check=True)
        cold = round(time.perf_counter() - t, 3)
        bucket = f"bench-{client}-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", client, bucket, "--packs", str(n_packs),
                 "--small", str(n_small)], env=env, capture_output=True, text=True, check=True)
            results[client] = {"python_plus_import_s": cold, **json.loads(proc.stdout)}
        finally:
            server.remove_bucket(bucket)
    return results


if __name__ == "__main__":
    sys.exit(main())
