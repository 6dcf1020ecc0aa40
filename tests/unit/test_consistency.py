"""Choosing a consistency mode from labels, offen's labels and known images."""

from __future__ import annotations

import pytest

from cargohold.errors import UsageError
from cargohold.model.consistency import DumpKind, Mode, decide, image_base_name, strongest


@pytest.mark.parametrize(
    ("image", "base"),
    [
        ("postgres", "postgres"),
        ("postgres:15-alpine", "postgres"),
        ("docker.io/library/postgres:15@sha256:abc", "postgres"),
        ("registry.local:5000/team/MariaDB:11", "mariadb"),
        ("bitnami/postgresql", "postgresql"),
        ("cargohold-test/redis:latest", "redis"),
    ],
)
def test_image_base_name(image: str, base: str) -> None:
    assert image_base_name(image) == base


def test_label_wins_over_image() -> None:
    d = decide("db", "postgres:15", {"cargohold.consistency": "stop"})
    assert d.mode is Mode.STOP and d.dump is None and d.warning is None
    assert d.reason == "label cargohold.consistency"


def test_known_database_defaults_to_dump_with_warning() -> None:
    d = decide("db", "mariadb:11", {})
    assert d.mode is Mode.DUMP and d.dump is DumpKind.MYSQL
    assert d.warning is not None and "cargohold.consistency=none|pause|stop|dump" in d.warning


def test_stateful_without_dump_defaults_to_stop() -> None:
    d = decide("m", "mongo:7", {})
    assert d.mode is Mode.STOP and d.warning is not None


def test_unknown_image_defaults_to_none_silently() -> None:
    d = decide("web", "nginx:1", {})
    assert d.mode is Mode.NONE and d.warning is None


def test_offen_labels() -> None:
    d = decide(
        "app",
        "nginx",
        {
            "docker-volume-backup.stop-during-backup": "true",
            "docker-volume-backup.archive-pre": "sync",
            "docker-volume-backup.archive-post": "x",
        },
    )
    assert d.mode is Mode.STOP and d.pre_hook == "sync" and d.post_hook == "x"
    assert decide("app", "nginx", {"docker-volume-backup.stop-during-backup": "false"}).mode is Mode.NONE
    # offen's label is a "yes" even when it holds a group name
    assert decide("app", "nginx", {"docker-volume-backup.stop-during-backup": "grp1"}).mode is Mode.STOP


def test_hooks_and_explicit_dump() -> None:
    d = decide(
        "app",
        "myorg/app",
        {"cargohold.consistency": "dump", "cargohold.dump": "sqlite", "cargohold.pre": "echo hi"},
    )
    assert d.mode is Mode.DUMP and d.dump is DumpKind.SQLITE and d.pre_hook == "echo hi"


def test_override() -> None:
    d = decide("db", "postgres", {"cargohold.consistency": "none"}, override=Mode.PAUSE)
    assert d.mode is Mode.PAUSE and d.reason == "chosen on the command line"


@pytest.mark.parametrize(
    "labels",
    [{"cargohold.consistency": "freeze"}, {"cargohold.consistency": "dump"}, {"cargohold.dump": "oracle"}],
)
def test_bad_labels_are_usage_errors(labels: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        decide("app", "myorg/app", labels)


def test_strongest() -> None:
    assert strongest([Mode.NONE, Mode.DUMP]) is Mode.DUMP
    assert strongest([Mode.PAUSE, Mode.STOP, Mode.NONE]) is Mode.STOP
    assert strongest([]) is Mode.NONE


def test_explicit_dump_label_adds_a_dump_to_stop() -> None:
    d = decide("db", "postgres:15", {"cargohold.consistency": "stop", "cargohold.dump": "postgres"})
    assert d.mode is Mode.STOP and d.dump is DumpKind.POSTGRES
    assert decide("db", "postgres:15", {"cargohold.consistency": "stop"}).dump is None
