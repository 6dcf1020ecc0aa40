"""What cargohold knows about stateful images: where they keep data and how to copy it safely.

Each entry names the image repositories it covers (``postgres``, ``bitnami/postgresql``,
``docker.elastic.co/elasticsearch/elasticsearch`` ...), the paths inside the container
that hold its state, the paths its image declares as ``VOLUME`` (so compose gives them an
anonymous volume when nothing else is mounted), whether it is a database, and the
consistency mode a backup should use (:mod:`cargohold.model.consistency`).

:func:`lookup` matches an image reference with or without registry, tag or digest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cargohold.model.consistency import Mode


@dataclass(frozen=True, slots=True)
class StatefulImage:
    #: A short name for messages ("postgres").
    key: str
    #: Repository paths without registry or tag: "postgres", "bitnami/postgresql".
    repositories: tuple[str, ...]
    #: Where the state lives inside the container.
    data_paths: tuple[str, ...]
    consistency: Mode
    database: bool = False
    #: Paths the official image declares with VOLUME (a subset of data_paths).
    declared: tuple[str, ...] = ()


def _img(
    key: str,
    repos: Iterable[str],
    paths: Iterable[str],
    mode: Mode,
    *,
    database: bool = False,
    declared: Iterable[str] | None = None,
) -> StatefulImage:
    data = tuple(paths)
    return StatefulImage(
        key=key,
        repositories=tuple(repos),
        data_paths=data,
        consistency=mode,
        database=database,
        declared=data if declared is None else tuple(declared),
    )


D, S, P = Mode.DUMP, Mode.STOP, Mode.PAUSE

#: The knowledge base. Data paths are those of the images' documentation.
IMAGES: tuple[StatefulImage, ...] = (
    _img(
        "postgres",
        [
            "postgres",
            "postgis/postgis",
            "timescale/timescaledb",
            "timescale/timescaledb-ha",
            "supabase/postgres",
            "pgvector/pgvector",
        ],
        ["/var/lib/postgresql/data"],
        D,
        database=True,
    ),
    _img("postgres", ["bitnami/postgresql"], ["/bitnami/postgresql"], D, database=True, declared=()),
    _img(
        "mysql",
        ["mysql", "mysql/mysql-server", "percona", "percona/percona-server"],
        ["/var/lib/mysql"],
        D,
        database=True,
    ),
    _img("mysql", ["bitnami/mysql"], ["/bitnami/mysql"], D, database=True, declared=()),
    _img("mariadb", ["mariadb", "linuxserver/mariadb"], ["/var/lib/mysql"], D, database=True),
    _img("mariadb", ["bitnami/mariadb"], ["/bitnami/mariadb"], D, database=True, declared=()),
    _img("mongo", ["mongo", "mongodb/mongodb-community-server"], ["/data/db", "/data/configdb"], S, database=True),
    _img("mongo", ["bitnami/mongodb"], ["/bitnami/mongodb"], S, database=True, declared=()),
    _img("redis", ["redis", "redis/redis-stack-server", "redis/redis-stack"], ["/data"], D, database=True),
    _img("redis", ["bitnami/redis"], ["/bitnami/redis/data"], D, database=True, declared=()),
    _img("valkey", ["valkey/valkey", "valkey"], ["/data"], D, database=True),
    _img("keydb", ["eqalpha/keydb"], ["/data"], D, database=True),
    _img(
        "elasticsearch",
        ["elasticsearch", "elasticsearch/elasticsearch", "bitnami/elasticsearch"],
        ["/usr/share/elasticsearch/data"],
        S,
        database=True,
        declared=(),
    ),
    _img("opensearch", ["opensearchproject/opensearch"], ["/usr/share/opensearch/data"], S, database=True, declared=()),
    _img("rabbitmq", ["rabbitmq", "bitnami/rabbitmq"], ["/var/lib/rabbitmq"], S, database=True),
    _img("minio", ["minio/minio", "bitnami/minio", "quay.io/minio/minio"], ["/data"], S),
    _img("influxdb", ["influxdb", "bitnami/influxdb"], ["/var/lib/influxdb2", "/var/lib/influxdb"], S, database=True),
    _img(
        "clickhouse",
        ["clickhouse/clickhouse-server", "yandex/clickhouse-server", "clickhouse"],
        ["/var/lib/clickhouse"],
        S,
        database=True,
    ),
    _img("cassandra", ["cassandra", "bitnami/cassandra"], ["/var/lib/cassandra"], S, database=True),
    _img("neo4j", ["neo4j"], ["/data"], S, database=True),
    _img("couchdb", ["couchdb", "apache/couchdb"], ["/opt/couchdb/data"], S, database=True),
    _img("etcd", ["coreos/etcd", "etcd", "etcd-development/etcd"], ["/etcd-data"], S, database=True, declared=()),
    _img("etcd", ["bitnami/etcd"], ["/bitnami/etcd"], S, database=True, declared=()),
    _img("zookeeper", ["zookeeper"], ["/data", "/datalog"], S, database=True),
    _img("zookeeper", ["bitnami/zookeeper"], ["/bitnami/zookeeper"], S, database=True, declared=()),
    _img("kafka", ["confluentinc/cp-kafka"], ["/var/lib/kafka/data"], S, database=True),
    _img("kafka", ["bitnami/kafka"], ["/bitnami/kafka"], S, database=True, declared=()),
    _img("kafka", ["apache/kafka"], ["/var/lib/kafka/data"], S, database=True, declared=()),
    _img("cockroachdb", ["cockroachdb/cockroach"], ["/cockroach/cockroach-data"], S, database=True, declared=()),
    _img("questdb", ["questdb/questdb"], ["/var/lib/questdb"], S, database=True),
    _img("mssql", ["mssql/server", "microsoft/mssql-server-linux"], ["/var/opt/mssql"], S, database=True, declared=()),
    _img("meilisearch", ["getmeili/meilisearch"], ["/meili_data"], S, database=True),
    _img("qdrant", ["qdrant/qdrant"], ["/qdrant/storage"], S, database=True, declared=()),
    _img("solr", ["solr"], ["/var/solr"], S, database=True),
    _img("consul", ["hashicorp/consul", "consul"], ["/consul/data"], S, database=True),
    _img("vault", ["hashicorp/vault", "vault"], ["/vault/file"], S, database=True),
    _img("nextcloud", ["nextcloud", "linuxserver/nextcloud"], ["/var/www/html"], P),
    _img("gitea", ["gitea/gitea"], ["/data"], S),
    _img("forgejo", ["forgejo/forgejo"], ["/data"], S),
    _img("gitlab", ["gitlab/gitlab-ce", "gitlab/gitlab-ee"], ["/etc/gitlab", "/var/opt/gitlab"], S),
    _img("wordpress", ["wordpress", "bitnami/wordpress"], ["/var/www/html"], P),
    _img("ghost", ["ghost"], ["/var/lib/ghost/content"], S),
    _img(
        "grafana",
        ["grafana/grafana", "grafana/grafana-oss", "grafana/grafana-enterprise", "grafana"],
        ["/var/lib/grafana"],
        S,
        declared=(),
    ),
    _img("loki", ["grafana/loki"], ["/loki"], S, declared=()),
    _img("prometheus", ["prom/prometheus", "prometheus"], ["/prometheus"], S),
    _img("vaultwarden", ["vaultwarden/server", "bitwardenrs/server"], ["/data"], S),
    _img(
        "home-assistant",
        ["homeassistant/home-assistant", "home-assistant/home-assistant", "linuxserver/homeassistant"],
        ["/config"],
        S,
        declared=(),
    ),
    _img("jenkins", ["jenkins/jenkins", "jenkins"], ["/var/jenkins_home"], S),
    _img("nexus", ["sonatype/nexus3"], ["/nexus-data"], S),
    _img("registry", ["registry", "distribution/distribution"], ["/var/lib/registry"], P),
    _img("portainer", ["portainer/portainer-ce", "portainer/portainer-ee", "portainer/portainer"], ["/data"], S),
    _img("uptime-kuma", ["louislam/uptime-kuma"], ["/app/data"], S),
    _img(
        "paperless-ngx",
        ["paperless-ngx/paperless-ngx"],
        ["/usr/src/paperless/data", "/usr/src/paperless/media"],
        S,
        declared=(),
    ),
    _img("syncthing", ["syncthing/syncthing", "linuxserver/syncthing"], ["/var/syncthing"], P),
    _img("jellyfin", ["jellyfin/jellyfin", "linuxserver/jellyfin"], ["/config"], S, declared=()),
    _img("pihole", ["pihole/pihole"], ["/etc/pihole"], S, declared=()),
    _img("keycloak", ["keycloak/keycloak"], ["/opt/keycloak/data"], S, declared=()),
    _img(
        "mattermost",
        ["mattermost/mattermost-team-edition", "mattermost/mattermost-enterprise-edition"],
        ["/mattermost/data"],
        P,
        declared=(),
    ),
)

_BY_REPOSITORY: Mapping[str, StatefulImage] = {repo: entry for entry in IMAGES for repo in entry.repositories}


def repository_path(image: str) -> str:
    """``registry:5000/library/postgres:16@sha256:…`` → ``postgres``; ``ghcr.io/a/b:1`` → ``a/b``."""
    ref = image.strip().split("@", 1)[0]
    parts = ref.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    last = parts[-1].split(":", 1)[0]
    parts = [*parts[:-1], last]
    if parts and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts).lower()


def lookup(image: str | None) -> StatefulImage | None:
    """The knowledge-base entry of an image reference, or None.

    Tries the full repository path, then shorter suffixes (``quay.io/minio/minio`` →
    ``minio/minio``), so mirrors and vendor namespaces of an official image match.
    """
    if not image:
        return None
    path = repository_path(image)
    parts = path.split("/")
    for start in range(len(parts)):
        hit = _BY_REPOSITORY.get("/".join(parts[start:]))
        if hit is not None:
            return hit
    return None


def image_keys() -> list[str]:
    """Distinct image keys the knowledge base covers (docs and tests)."""
    return sorted({e.key for e in IMAGES})


def _major(image: str) -> int | None:
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    tag = last.split(":", 1)[1]
    digits = ""
    for ch in tag:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def data_paths(entry: StatefulImage, image: str) -> tuple[str, ...]:
    """The data paths for this exact image: postgres 18 moved its data to /var/lib/postgresql."""
    return image_paths(entry, image)[0]


def image_paths(entry: StatefulImage, image: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(data paths, paths the image declares as VOLUME) for this exact image reference."""
    if entry.key == "postgres" and "/var/lib/postgresql/data" in entry.data_paths:
        major = _major(image)
        if major is not None and major >= 18:
            return ("/var/lib/postgresql",), ("/var/lib/postgresql",)
    return entry.data_paths, entry.declared
