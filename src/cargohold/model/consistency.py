"""How to make a container's data consistent while it is read. Pure logic.

A container says what it wants through labels (or the caller passes a choice):

* ``cargohold.consistency`` = ``none`` | ``pause`` | ``stop`` | ``dump``
* ``cargohold.pre`` / ``cargohold.post`` — commands run with ``sh -c`` inside the container
  before and after its volumes are read (a failing pre-hook aborts that backup);
* ``cargohold.dump`` = ``postgres`` | ``mysql`` | ``redis`` | ``sqlite`` — which dump, when the
  image is not recognised; with ``stop`` or ``pause`` it adds that dump, taken while the
  container still runs, to the consistent copy of the files;
* offen/docker-volume-backup's labels, so its users can switch without relabelling:
  ``docker-volume-backup.stop-during-backup`` (any value but ``false``) means ``stop``,
  ``docker-volume-backup.archive-pre`` / ``archive-post`` are the hooks.

With no explicit choice, containers of known database images get a safe default — a dump
where cargohold knows the application, else ``stop`` — and a warning that says how to choose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from cargohold.errors import UsageError

LABEL_MODE = "cargohold.consistency"
LABEL_PRE = "cargohold.pre"
LABEL_POST = "cargohold.post"
LABEL_DUMP = "cargohold.dump"
OFFEN_STOP = "docker-volume-backup.stop-during-backup"
OFFEN_PRE = "docker-volume-backup.archive-pre"
OFFEN_POST = "docker-volume-backup.archive-post"


class Mode(StrEnum):
    NONE = "none"
    PAUSE = "pause"
    STOP = "stop"
    DUMP = "dump"


class DumpKind(StrEnum):
    POSTGRES = "postgres"
    MYSQL = "mysql"
    REDIS = "redis"
    SQLITE = "sqlite"


#: Image base names (see :func:`image_base_name`) whose application cargohold can dump.
DUMPABLE_IMAGES: Mapping[str, DumpKind] = {
    "postgres": DumpKind.POSTGRES,
    "postgresql": DumpKind.POSTGRES,
    "postgis": DumpKind.POSTGRES,
    "timescaledb": DumpKind.POSTGRES,
    "timescaledb-ha": DumpKind.POSTGRES,
    "mysql": DumpKind.MYSQL,
    "mariadb": DumpKind.MYSQL,
    "percona": DumpKind.MYSQL,
    "percona-server": DumpKind.MYSQL,
    "mysql-server": DumpKind.MYSQL,
    "redis": DumpKind.REDIS,
    "redis-stack-server": DumpKind.REDIS,
    "valkey": DumpKind.REDIS,
    "keydb": DumpKind.REDIS,
}

#: Stateful images without a built-in dump: their files are only consistent when stopped.
STOP_IMAGES = frozenset(
    {
        "mongo",
        "mongodb",
        "elasticsearch",
        "opensearch",
        "rabbitmq",
        "influxdb",
        "clickhouse-server",
        "cassandra",
        "neo4j",
        "couchdb",
        "etcd",
        "zookeeper",
        "kafka",
        "minio",
        "questdb",
        "cockroach",
    }
)


def image_base_name(image: str) -> str:
    """``registry:5000/org/postgres:15@sha256:…`` → ``postgres``."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0].lower()


@dataclass(frozen=True, slots=True)
class Decision:
    mode: Mode
    dump: DumpKind | None
    pre_hook: str | None
    post_hook: str | None
    #: Why this mode: "label cargohold.consistency", "offen label", "default for postgres", "default".
    reason: str
    #: Set when cargohold chose for the user and they should say what they want.
    warning: str | None = None


def _parse_mode(value: str, container: str) -> Mode:
    try:
        return Mode(value.strip().lower())
    except ValueError:
        raise UsageError(
            f"container {container!r}: {LABEL_MODE}={value!r} is not one of none, pause, stop, dump"
        ) from None


def _parse_dump(value: str, container: str) -> DumpKind:
    try:
        return DumpKind(value.strip().lower())
    except ValueError:
        raise UsageError(
            f"container {container!r}: {LABEL_DUMP}={value!r} is not one of postgres, mysql, redis, sqlite"
        ) from None


def decide(
    container: str,
    image: str,
    labels: Mapping[str, str],
    *,
    override: Mode | None = None,
) -> Decision:
    """The consistency mode for one container, from an override, its labels or its image."""
    pre = labels.get(LABEL_PRE) or labels.get(OFFEN_PRE) or None
    post = labels.get(LABEL_POST) or labels.get(OFFEN_POST) or None
    base = image_base_name(image)
    known_dump = DUMPABLE_IMAGES.get(base)
    dump = _parse_dump(labels[LABEL_DUMP], container) if LABEL_DUMP in labels else known_dump

    if override is not None:
        mode, reason = override, "chosen on the command line"
    elif LABEL_MODE in labels:
        mode, reason = _parse_mode(labels[LABEL_MODE], container), f"label {LABEL_MODE}"
    elif labels.get(OFFEN_STOP, "").strip().lower() not in ("", "false"):
        mode, reason = Mode.STOP, f"label {OFFEN_STOP}"
    elif known_dump is not None:
        return Decision(
            mode=Mode.DUMP,
            dump=dump,
            pre_hook=pre,
            post_hook=post,
            reason=f"default for {base} images",
            warning=(
                f"container {container!r} ({image}) has no {LABEL_MODE} label: "
                f"backing it up with a {known_dump.value} dump; "
                f"set {LABEL_MODE}=none|pause|stop|dump to choose"
            ),
        )
    elif base in STOP_IMAGES:
        return Decision(
            mode=Mode.STOP,
            dump=None,
            pre_hook=pre,
            post_hook=post,
            reason=f"default for {base} images",
            warning=(
                f"container {container!r} ({image}) has no {LABEL_MODE} label: stopping it while its "
                f"volumes are read; set {LABEL_MODE}=none|pause|stop|dump to choose"
            ),
        )
    else:
        mode, reason = Mode.NONE, "default"

    if mode is Mode.DUMP and dump is None:
        raise UsageError(
            f"container {container!r} ({image}): consistency 'dump' but cargohold does not know how to dump "
            f"this image; add the label {LABEL_DUMP}=postgres|mysql|redis|sqlite or choose stop"
        )
    return Decision(
        mode=mode,
        # an explicit cargohold.dump adds a dump to a stop/pause backup of the files
        dump=dump if mode is Mode.DUMP or LABEL_DUMP in labels else None,
        pre_hook=pre,
        post_hook=post,
        reason=reason,
    )


def strongest(modes: list[Mode]) -> Mode:
    """When several containers share a volume, the most careful mode wins (stop > pause > dump > none).

    A dump is taken of its own container; the files on a shared volume are still read live
    unless some user of it is paused or stopped.
    """
    order = [Mode.NONE, Mode.DUMP, Mode.PAUSE, Mode.STOP]
    return max(modes, key=order.index, default=Mode.NONE)
