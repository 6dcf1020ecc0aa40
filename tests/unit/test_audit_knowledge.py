"""The knowledge base of stateful images."""

from __future__ import annotations

import pytest

from cargohold.audit.knowledge import IMAGES, data_paths, image_keys, lookup, repository_path

REQUIRED = [
    "postgres", "mysql", "mariadb", "mongo", "redis", "valkey", "elasticsearch", "opensearch", "rabbitmq",
    "minio", "influxdb", "clickhouse", "cassandra", "neo4j", "couchdb", "etcd", "zookeeper", "kafka",
    "nextcloud", "gitea", "wordpress", "ghost", "grafana", "prometheus", "vaultwarden", "home-assistant",
]  # fmt: skip


def test_at_least_the_required_images() -> None:
    assert set(REQUIRED) <= set(image_keys())
    assert len(image_keys()) >= 25


def test_entries_are_sane() -> None:
    for e in IMAGES:
        assert e.data_paths and all(p.startswith("/") for p in e.data_paths)
        assert set(e.declared) <= set(e.data_paths)
        assert e.repositories


@pytest.mark.parametrize(
    ("ref", "path"),
    [
        ("postgres", "postgres"),
        ("postgres:16-alpine", "postgres"),
        ("docker.io/library/postgres:16", "postgres"),
        ("localhost:5000/postgres@sha256:abcd", "postgres"),
        ("ghcr.io/home-assistant/home-assistant:stable", "home-assistant/home-assistant"),
        ("Grafana/Grafana:10", "grafana/grafana"),
    ],
)
def test_repository_path(ref: str, path: str) -> None:
    assert repository_path(ref) == path


@pytest.mark.parametrize(
    ("ref", "key"),
    [
        ("postgres:16", "postgres"),
        ("bitnami/postgresql:16", "postgres"),
        ("mysql/mysql-server:8.0", "mysql"),
        ("mariadb", "mariadb"),
        ("mongo:7@sha256:0123", "mongo"),
        ("quay.io/minio/minio:RELEASE.2024", "minio"),
        ("docker.elastic.co/elasticsearch/elasticsearch:8.15.0", "elasticsearch"),
        ("opensearchproject/opensearch:2", "opensearch"),
        ("clickhouse/clickhouse-server:24", "clickhouse"),
        ("confluentinc/cp-kafka:7.6.0", "kafka"),
        ("vaultwarden/server:latest", "vaultwarden"),
        ("ghcr.io/home-assistant/home-assistant:stable", "home-assistant"),
        ("prom/prometheus", "prometheus"),
        ("gitea/gitea:1.22", "gitea"),
        ("cargohold-test/postgres:abc123", "postgres"),
    ],
)
def test_lookup(ref: str, key: str) -> None:
    entry = lookup(ref)
    assert entry is not None and entry.key == key


@pytest.mark.parametrize("ref", ["nginx", "busybox:1.36", "traefik:v3", "", None, "example/app"])
def test_not_stateful(ref: str | None) -> None:
    assert lookup(ref) is None


def test_postgres_18_data_path() -> None:
    entry = lookup("postgres:18")
    assert entry is not None
    assert data_paths(entry, "postgres:18-alpine") == ("/var/lib/postgresql",)
    assert data_paths(entry, "postgres:17") == ("/var/lib/postgresql/data",)
    assert data_paths(entry, "postgres") == ("/var/lib/postgresql/data",)
