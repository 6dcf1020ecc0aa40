"""Naming, ownership and cleanup of test resources (with an in-memory engine)."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from cargohold.errors import ContainerNotFound, DockerAPIError, VolumeNotFound
from cargohold.model.engine import ContainerInfo, VolumeInfo
from cargohold.testbed.resources import (
    OWNER_LABEL,
    TEST_LABEL,
    UNOWNED_GRACE,
    Resources,
    created_epoch,
    is_leftover,
    owner_id,
    sweep,
    unique_name,
)

HOST = socket.gethostname()


class FakeEngine:
    """The few DockerPort calls Resources and sweep use, kept in dicts."""

    def __init__(self) -> None:
        self.containers: dict[str, ContainerInfo] = {}
        self.volumes: dict[str, VolumeInfo] = {}
        self.started: list[str] = []
        self.removed: list[str] = []
        self.broken: set[str] = set()

    def create_volume(
        self, name: str | None = None, *, labels: Mapping[str, str] | None = None, **_: Any
    ) -> VolumeInfo:
        assert name is not None
        info = VolumeInfo(name=name, driver="local", mountpoint="", labels=dict(labels or {}))
        self.volumes[name] = info
        return info

    def create_container(
        self,
        image: str,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        mounts: Sequence[Mapping[str, object]] = (),
        **_: Any,
    ) -> str:
        assert name is not None
        self.containers[name] = ContainerInfo(
            id=name, name=name, image=image, image_id="", state="created", labels=dict(labels or {})
        )
        self.mounts = list(mounts)
        return name

    def start(self, name: str) -> None:
        self.started.append(name)

    def list_containers(self, *, all: bool = True) -> list[ContainerInfo]:
        return list(self.containers.values())

    def list_volumes(self) -> list[VolumeInfo]:
        return list(self.volumes.values())

    def remove_container(self, name: str, *, force: bool = False, volumes: bool = False) -> None:
        assert force
        if name in self.broken:
            raise DockerAPIError("device busy")
        if self.containers.pop(name, None) is None:
            raise ContainerNotFound(name)
        self.removed.append(name)

    def remove_volume(self, name: str, *, force: bool = False) -> None:
        assert force
        if self.volumes.pop(name, None) is None:
            raise VolumeNotFound(name)
        self.removed.append(name)


def test_unique_names() -> None:
    name = unique_name("pg")
    assert re.fullmatch(r"chtest-pg-[0-9a-f]{8}", name)
    assert unique_name("pg") != name
    with pytest.raises(ValueError):
        unique_name("no spaces")
    with pytest.raises(ValueError):
        unique_name("-lead")


def test_unique_name_fixture(unique_name: Any) -> None:
    assert unique_name("x").startswith("chtest-x-")


def test_resources_label_track_and_remove_everything() -> None:
    fake = FakeEngine()
    res = Resources(fake)  # type: ignore[arg-type]
    vol = res.volume("data", labels={"extra": "y"})
    ctr = res.run("img", volumes={vol: "/data"})
    assert fake.started == [ctr]
    assert fake.mounts == [{"Type": "volume", "Source": vol, "Target": "/data", "ReadOnly": False}]
    for labels in (fake.volumes[vol].labels, fake.containers[ctr].labels):
        assert labels[TEST_LABEL] == "1" and labels[OWNER_LABEL] == owner_id()
    assert fake.volumes[vol].labels["extra"] == "y"
    res.track_volume("already-gone")
    assert res.cleanup() == []
    assert fake.removed == [ctr, vol]  # containers first: volumes in use cannot go
    assert not fake.containers and not fake.volumes
    assert res.cleanup() == []  # nothing left to do


def test_cleanup_reports_failures_but_goes_on() -> None:
    fake = FakeEngine()
    res = Resources(fake)  # type: ignore[arg-type]
    stuck = res.container("img")
    fine = res.container("img")
    fake.broken.add(stuck)
    errors = res.cleanup()
    assert len(errors) == 1 and stuck in errors[0] and "device busy" in errors[0]
    assert fine not in fake.containers


def test_leftover_rules() -> None:
    me = f"{HOST}:{os.getpid()}"
    assert is_leftover({TEST_LABEL: "1", OWNER_LABEL: me}, owner=me)
    assert not is_leftover({OWNER_LABEL: me}, owner=me)  # not a test resource
    assert not is_leftover({TEST_LABEL: "1", OWNER_LABEL: f"{HOST}:1"}, owner=me)  # pid 1 lives
    assert is_leftover({TEST_LABEL: "1", OWNER_LABEL: f"{HOST}:{_dead_pid()}"}, owner=me)
    assert not is_leftover({TEST_LABEL: "1", OWNER_LABEL: f"elsewhere:{_dead_pid()}"}, owner=me)
    unowned = {TEST_LABEL: "1"}
    assert is_leftover(unowned, owner=me)  # age unknown
    assert not is_leftover(unowned, owner=me, created="1000", now=1000 + UNOWNED_GRACE - 1)
    assert is_leftover(unowned, owner=me, created="1000", now=1000 + UNOWNED_GRACE + 1)


def test_created_epoch_reads_both_engine_formats() -> None:
    assert created_epoch("1700000000") == 1700000000
    assert created_epoch("2023-11-14T22:13:20Z") == 1700000000
    assert created_epoch("2023-11-14T22:13:20.123456789Z") == 1700000000
    assert created_epoch("2023-11-15T00:13:20+02:00") == 1700000000
    assert created_epoch("") is None and created_epoch("yesterday") is None


def test_sweep_removes_only_leftovers() -> None:
    fake = FakeEngine()
    mine = Resources(fake, owner="me:1")  # type: ignore[arg-type]
    theirs = Resources(fake, owner=f"{HOST}:1")  # type: ignore[arg-type]
    dead = Resources(fake, owner=f"{HOST}:{_dead_pid()}")  # type: ignore[arg-type]
    a, b, c = mine.volume(), theirs.volume(), dead.volume()
    x = mine.container("img")
    fake.create_volume("plain", labels={})
    result = sweep(fake, owner="me:1")  # type: ignore[arg-type]
    assert sorted(result.volumes) == sorted([a, c]) and result.containers == [x]
    assert set(fake.volumes) == {b, "plain"}


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1
