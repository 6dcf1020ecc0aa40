"""``python -m cargohold.testbed COMMAND``: set up the engine and the test images.

engine               make sure an engine answers (start one if root on Linux); print its URL
images [NAME ...]    build the missing test images (default: all)
second-engine        start the second, independent engine; print its URL
stop-second-engine   stop it (--purge also deletes its data)
status               what answers and which images are up to date
sshd start|stop|status   a private OpenSSH sshd on 127.0.0.1 (SFTP tests)
rgw start|stop|status    a single-node Ceph RADOS Gateway (S3) on 127.0.0.1 (S3 tests)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cargohold.errors import CargoholdError
from cargohold.testbed import rgw
from cargohold.testbed.engine import (
    DEFAULT_SECOND_BASE,
    candidate_hosts,
    engine_answers,
    ensure_engine,
    ensure_second_engine,
    second_engine_host,
    stop_second_engine,
)
from cargohold.testbed.images import ensure_images, image_status
from cargohold.testbed.recipes import IMAGE_NAMES
from cargohold.testbed.sshd import default_base, sshd_status, start_sshd, stop_sshd


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cargohold.testbed",
        description="Set up the Docker engine and the local test images of cargohold's tests.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("engine", help="make sure a Docker engine answers; print its URL")
    images = sub.add_parser("images", help="build the missing test images")
    images.add_argument(
        "names", nargs="*", metavar="NAME", help=f"images to build (default: all of {', '.join(IMAGE_NAMES)})"
    )
    images.add_argument("--host", help="engine URL (default: the one `engine` finds)")
    base_help = f"its directory (short: socket paths are limited), default {DEFAULT_SECOND_BASE}"
    second = sub.add_parser("second-engine", help="start a second, independent engine; print its URL")
    second.add_argument("--base", type=Path, default=DEFAULT_SECOND_BASE, help=base_help)
    stop = sub.add_parser("stop-second-engine", help="stop the second engine")
    stop.add_argument("--base", type=Path, default=DEFAULT_SECOND_BASE, help=base_help)
    stop.add_argument("--purge", action="store_true", help="also delete its data")
    status = sub.add_parser("status", help="what answers and which images are up to date")
    status.add_argument("--base", type=Path, default=DEFAULT_SECOND_BASE)
    sshd = sub.add_parser("sshd", help="a private OpenSSH sshd on 127.0.0.1 for the SFTP tests")
    sshd.add_argument("action", choices=["start", "stop", "status"])
    sshd.add_argument("--base", type=Path, default=None, help=f"its state directory (default {default_base()})")
    gw = sub.add_parser("rgw", help="a single-node Ceph RADOS Gateway (S3) on 127.0.0.1 for the S3 tests")
    gw.add_argument("action", choices=["start", "stop", "status"])
    gw.add_argument("--base", type=Path, default=None, help="its state directory (default: under the state dir)")
    gw.add_argument("--port", type=int, default=None, help=f"its port (default {rgw.DEFAULT_PORT} when free)")
    return parser


def _rgw(action: str, base: Path | None, port: int | None) -> int:
    if action == "stop":
        print("stopped" if rgw.stop_rgw(base) else "was not running")
        return 0
    server = rgw.start_rgw(base, port=port) if action == "start" else rgw.rgw_status(base)
    if server is None:
        print("not running")
        return 1
    for key, value in server.env().items():
        print(f"export {key}={value}")
    return 0


def _sshd(action: str, base: Path | None) -> int:
    if action == "stop":
        print("stopped" if stop_sshd(base) else "was not running")
        return 0
    server = start_sshd(base) if action == "start" else sshd_status(base or default_base())
    if server is None:
        print("not running")
        return 1
    print(f"sftp://{server.user}@{server.host}:{server.port}{server.data}")
    print("# ssh config block (key and known_hosts of the test bed):")
    print(server.ssh_config("cargohold-testbed"), end="")
    return 0


def _status(base: Path) -> int:
    host = next((h for h in candidate_hosts(os.environ) if engine_answers(h)), None)
    print(f"engine:        {host or 'none answers'}")
    second = second_engine_host(base)
    print(f"second engine: {second} ({'answers' if engine_answers(second) else 'not running'})")
    if host is None:
        return 1
    for name, (ref, present) in image_status(host).items():
        print(f"image {name:9} {ref:42} {'present' if present else 'missing'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s testbed: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    started = time.monotonic()
    try:
        if args.command == "engine":
            print(ensure_engine())
        elif args.command == "images":
            host = args.host or ensure_engine()
            for name, ref in ensure_images(args.names or IMAGE_NAMES, host=host).items():
                print(f"{name}\t{ref}")
        elif args.command == "second-engine":
            print(ensure_second_engine(args.base))
        elif args.command == "sshd":
            return _sshd(args.action, args.base)
        elif args.command == "rgw":
            return _rgw(args.action, args.base, args.port)
        elif args.command == "stop-second-engine":
            was = stop_second_engine(args.base, purge=args.purge)
            print("stopped" if was else "was not running")
        else:
            return _status(args.base)
    except CargoholdError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("cargohold.testbed").info("done in %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
