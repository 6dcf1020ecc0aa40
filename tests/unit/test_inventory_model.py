"""The inventory model's conclusions: kinds, users, flags, declared-VOLUME coverage."""

from __future__ import annotations

from cargohold.model.engine import ContainerInfo, ImageInfo, MountInfo, MountType, VolumeInfo
from cargohold.model.inventory import (
    Coverage,
    Flag,
    VolumeKind,
    build_mount_inventory,
    build_volume_inventory,
    declared_coverage,
    volume_kind,
)

ANON = "a" * 64


def vol(name: str, **labels: str) -> VolumeInfo:
    return VolumeInfo(name=name, driver="local", mountpoint=f"/v/{name}/_data", labels=labels)


def container(
    name: str, *mounts: MountInfo, state: str = "running", image_id: str = "img1", **labels: str
) -> ContainerInfo:
    return ContainerInfo(
        id=name * 4, name=name, image="app:1", image_id=image_id, state=state, labels=labels, mounts=mounts
    )


def vmount(name: str, dest: str, ro: bool = False) -> MountInfo:
    return MountInfo(
        type=MountType.VOLUME,
        destination=dest,
        source=f"/v/{name}/_data",
        name=name,
        driver="local",
        read_only=ro,
    )


def test_kind_by_name_and_label() -> None:
    assert volume_kind(vol("data")) is VolumeKind.NAMED
    assert volume_kind(vol(ANON)) is VolumeKind.ANONYMOUS
    assert volume_kind(vol("x", **{"com.docker.volume.anonymous": ""})) is VolumeKind.ANONYMOUS
    # 64 characters but not hex: someone's name
    assert volume_kind(vol("z" * 64)) is VolumeKind.NAMED


def test_users_flags_and_compose() -> None:
    volumes = [
        vol("proj_db", **{"com.docker.compose.project": "proj", "com.docker.compose.volume": "db"}),
        vol(ANON),
        vol("old"),
        vol("empty"),
        vol("stopped-user"),
    ]
    containers = [
        container(
            "db",
            vmount("proj_db", "/var/lib/postgresql/data"),
            vmount(ANON, "/cache", ro=True),
            **{"com.docker.compose.project": "proj", "com.docker.compose.service": "db"},
        ),
        container("idle", vmount("stopped-user", "/data"), state="exited"),
    ]
    entries = {
        e.name: e for e in build_volume_inventory(volumes, containers, {"old": 10, "empty": 0, "proj_db": 5})
    }
    db = entries["proj_db"]
    assert (db.compose_project, db.compose_volume) == ("proj", "db")
    assert [(u.name, u.mount_path, u.compose_service) for u in db.users] == [
        ("db", "/var/lib/postgresql/data", "db")
    ]
    assert db.flags == ()
    assert entries[ANON].flags == (Flag.ANONYMOUS_IN_USE,)
    assert entries[ANON].users[0].read_only is True
    assert entries["old"].flags == (Flag.DANGLING, Flag.DANGLING_WITH_DATA)
    assert entries["empty"].flags == (Flag.DANGLING,)
    # a volume of a stopped container is not dangling: `volume prune` keeps it
    assert entries["stopped-user"].flags == ()
    # unknown size (non-local driver): dangling but not known to hold data
    assert entries["proj_db"].size == 5 and entries[ANON].size is None
    assert list(entries) == sorted(entries)


def test_json_shape() -> None:
    [entry] = build_volume_inventory([vol("v")], [container("c", vmount("v", "/d"))], {"v": 3})
    data = entry.to_json()
    assert data["name"] == "v" and data["kind"] == "named" and data["size_bytes"] == 3
    assert data["compose"] is None and data["flags"] == []
    assert data["containers"][0] == {
        "name": "c",
        "id": "cccc",
        "state": "running",
        "mount_path": "/d",
        "read_only": False,
        "compose_project": None,
        "compose_service": None,
    }


def test_declared_coverage_exact_parent_and_nothing() -> None:
    mounts = [
        vmount("named", "/var/lib/mysql"),
        vmount(ANON, "/data/"),
        MountInfo(type=MountType.BIND, destination="/srv", source="/host/srv"),
        MountInfo(type=MountType.TMPFS, destination="/run/redis"),
    ]
    got = {
        d.path: d
        for d in declared_coverage(
            ["/var/lib/mysql", "/data", "/srv/uploads", "/run/redis", "/etc/conf"], mounts, {}
        )
    }
    assert got["/var/lib/mysql"].covered_by is Coverage.NAMED_VOLUME
    assert got["/data"].covered_by is Coverage.ANONYMOUS_VOLUME
    assert got["/srv/uploads"].covered_by is Coverage.BIND
    assert got["/srv/uploads"].via_parent == "/srv" and got["/srv/uploads"].source == "/host/srv"
    assert got["/run/redis"].covered_by is Coverage.TMPFS
    assert got["/etc/conf"].covered_by is Coverage.NOTHING


def test_mount_inventory_binds_tmpfs_and_missing_image() -> None:
    c1 = container(
        "web",
        MountInfo(type=MountType.BIND, destination="/cfg", source="/exists", read_only=True),
        MountInfo(type=MountType.BIND, destination="/gone", source="/missing"),
        MountInfo(type=MountType.TMPFS, destination="/tmp", options="size=64m"),
        vmount(ANON, "/data"),
        image_id="img1",
    )
    c2 = container("orphan", image_id="deleted")
    images = {"img1": ImageInfo(id="img1", tags=("app:1",), volumes=("/data", "/logs"))}
    entries = build_mount_inventory([c2, c1], images, {ANON: VolumeKind.ANONYMOUS}, lambda p: p == "/exists")
    assert [e.name for e in entries] == ["orphan", "web"]
    assert entries[0].image_missing and entries[0].declared_volumes == ()
    web = entries[1]
    by_dest = {m.destination: m for m in web.mounts}
    assert by_dest["/cfg"].source_exists is True and by_dest["/cfg"].read_only
    assert by_dest["/gone"].source_exists is False
    assert by_dest["/tmp"].type is MountType.TMPFS and by_dest["/tmp"].options == "size=64m"
    assert by_dest["/tmp"].source_exists is None
    assert by_dest["/data"].declared and by_dest["/data"].volume_kind is VolumeKind.ANONYMOUS
    declared = {d.path: d.covered_by for d in web.declared_volumes}
    assert declared == {"/data": Coverage.ANONYMOUS_VOLUME, "/logs": Coverage.NOTHING}
    js = web.to_json()
    assert js["compose"] is None
    assert {m["destination"] for m in js["mounts"]} == {"/cfg", "/gone", "/tmp", "/data"}
