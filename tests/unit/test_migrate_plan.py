"""Project restore and move: which run, which names, which labels, what to change in compose."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cargohold.errors import SnapshotNotFound, UsageError
from cargohold.repo.snapshot import Snapshot, Source
from cargohold.services.migrate import compose_changes, plan_volumes, project_run

ANON = "a" * 64
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def container(service: str | None, mount: str, project: str = "shop") -> dict[str, Any]:
    return {
        "name": f"{project}-{service}-1",
        "mount_path": mount,
        "compose": {"project": project, "service": service} if service else None,
    }


def snapshot(name: str, run: str, minutes: int, *, kind: str = "volume", project: str = "shop", tags=()) -> Snapshot:  # type: ignore[no-untyped-def]
    meta = {
        "run_id": run,
        "volume": {"name": name, "labels": {"com.docker.compose.project": project}} if kind == "volume" else None,
        "containers": [container("db", "/data", project)],
    }
    return Snapshot(
        tree=b"\0" * 32,
        time=T0 + timedelta(minutes=minutes),
        source=Source(kind, name, meta),
        tags=list(tags),
        id=f"{run}-{name}",
    )


def test_plan_renames_and_relabels() -> None:
    plans = plan_volumes(
        [
            (
                "shop_data",
                {"com.docker.compose.project": "shop", "com.docker.compose.volume": "data"},
                [container("db", "/var/lib/db")],
            ),
            (ANON, {}, [container("cache", "/tmp/b")]),
            ("b" * 64, {"com.docker.volume.anonymous": ""}, [container("cache", "/tmp/a")]),
            ("uploads", {}, [container("web", "/up")]),
        ],
        project="shop",
        new_project="shop2",
    )
    by = {p.source: p for p in plans}
    assert by["shop_data"].target == "shop2_data" and not by["shop_data"].named_in_compose
    assert by["shop_data"].labels == {"com.docker.compose.project": "shop2", "com.docker.compose.volume": "data"}
    # anonymous volumes: numbered per service by mount path
    assert by["b" * 64].target == "shop2_anon-cache-1" and by[ANON].target == "shop2_anon-cache-2"
    assert by["b" * 64].labels == {"com.docker.compose.project": "shop2", "com.docker.compose.volume": "anon-cache-1"}
    assert by["uploads"].target == "shop2_uploads" and by["uploads"].named_in_compose
    lines = compose_changes(plans, new_project="shop2")
    assert any("anon-cache-1:/tmp/a" in line for line in lines)
    assert any("uploads" in line and "shop2_uploads" in line for line in lines)
    assert lines[-1].endswith("docker compose -p shop2 up -d")


def test_a_new_name_must_be_a_compose_project_name() -> None:
    with pytest.raises(UsageError, match="not a compose project name"):
        plan_volumes([("shop_data", {}, [])], project="shop", new_project="Shop 2")


def test_plan_without_a_new_name_keeps_names() -> None:
    plans = plan_volumes(
        [("shop_data", {"com.docker.compose.project": "shop"}, []), ("uploads", {}, [])], project="shop"
    )
    assert [(p.source, p.target, p.renamed) for p in plans] == [
        ("shop_data", "shop_data", False),
        ("uploads", "uploads", False),
    ]
    assert compose_changes(plans, new_project="shop") == []


def test_project_run_picks_the_newest_run_and_skips_binds_and_safety() -> None:
    snaps = [
        snapshot("shop_data", "run1", 0),
        snapshot("shop_data", "run2", 10),
        snapshot("shop_cache", "run2", 11),
        snapshot("/srv/conf", "run2", 12, kind="bind"),
        snapshot("shop_data", "run3", 20, tags=["safety"]),
        snapshot("other_data", "run4", 30, project="other"),
    ]
    snaps.append(snapshot("shop_data", "run5", 40, tags=["copy"]))  # one volume copied: not a project run
    snaps.append(snapshot("shop_old", "run0", -10))  # a volume only an older run has
    run = project_run(snaps, "shop")
    assert run.run_id == "run2" and [s.source.name for s in run.snapshots] == ["shop_cache", "shop_data"]
    assert run.missing == {"shop_old": "run0"}
    assert [s.source.name for s, _ in run.skipped] == ["/srv/conf"]
    assert project_run(snaps, "shop", "run1").snapshots[0].id == "run1-shop_data"
    with pytest.raises(SnapshotNotFound):
        project_run(snaps, "nope")
    with pytest.raises(SnapshotNotFound):
        project_run(snaps, "shop", "zzz")
    with pytest.raises(UsageError, match="matches 3 runs"):
        project_run(snaps, "shop", "run")
