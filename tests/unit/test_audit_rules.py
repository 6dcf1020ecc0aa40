"""The audit rules as pure functions of an AuditInput (no engine)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cargohold.audit.findings import Finding, Severity
from cargohold.audit.model import AuditInput, Mount, StoreKind, VolumeFact, Workload, WritableLayer
from cargohold.audit.rules import RULES, run
from cargohold.model.backups import BackupPolicy, BackupRecord, index_from_snapshots
from cargohold.model.consistency import Mode
from cargohold.repo.snapshot import Snapshot, Source

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
ANON = "a" * 64


def container(name: str, image: str, *mounts: Mount, **kw: object) -> Workload:
    return Workload(name=name, image=image, mounts=mounts, kind="container", **kw)  # type: ignore[arg-type]


def live(*workloads: Workload, volumes: tuple[VolumeFact, ...] = (), **kw: object) -> AuditInput:
    return AuditInput(source="live", workloads=workloads, volumes=volumes, **kw)  # type: ignore[arg-type]


def rules_of(findings: list[Finding]) -> list[tuple[str, str | None, str | None]]:
    return [(f.rule, f.container or f.service or f.volume, f.path) for f in findings]


def test_every_rule_has_explanation_and_severity() -> None:
    assert len(RULES) >= 20
    for rule in RULES.values():
        assert rule.explanation and len(rule.explanation) > 40 and rule.title
        assert isinstance(rule.severity, Severity)


def test_anonymous_volume_on_known_database_path() -> None:
    pg = container("pg", "postgres:16", Mount(StoreKind.ANONYMOUS_VOLUME, "/var/lib/postgresql/data", ANON))
    found = run(live(pg))
    assert rules_of(found)[0] == ("stateful-data-anonymous-volume", "pg", "/var/lib/postgresql/data")
    assert found[0].severity is Severity.HIGH and found[0].volume == ANON
    assert "cargohold adopt pg:/var/lib/postgresql/data --as pg-data --recreate" in found[0].fix
    assert ("anonymous-volume", "pg", "/var/lib/postgresql/data") not in rules_of(found)


def test_image_volume_of_unknown_image_is_generic_anonymous() -> None:
    app = container(
        "app",
        "example/app:1",
        Mount(StoreKind.ANONYMOUS_VOLUME, "/var/lib/app", ANON),
        image_volumes=("/var/lib/app",),
        project="shop",
        service="app",
    )
    [f] = [f for f in run(live(app)) if f.rule == "anonymous-volume"]
    assert f.path == "/var/lib/app" and f.service == "app" and f.project == "shop"
    assert "cargohold adopt app:/var/lib/app --as shop_app-data" in f.fix


def test_named_volume_or_bind_or_parent_mount_is_fine() -> None:
    ok = [
        container("a", "mysql:8", Mount(StoreKind.NAMED_VOLUME, "/var/lib/mysql", "db")),
        container("b", "mysql:8", Mount(StoreKind.BIND, "/var/lib/mysql", "/srv/db", source_exists=True)),
        container("c", "mongo:7", Mount(StoreKind.NAMED_VOLUME, "/data", "m")),
    ]
    storage = {"stateful-data-anonymous-volume", "stateful-data-writable-layer", "anonymous-volume"}
    assert not [f for f in run(live(*ok)) if f.rule in storage]


def test_writable_layer_data_path_and_tmpfs() -> None:
    es = container("es", "docker.elastic.co/elasticsearch/elasticsearch:8.15.0")
    redis = container("r", "redis:7", Mount(StoreKind.TMPFS, "/data"))
    found = rules_of(run(live(es, redis)))
    assert ("stateful-data-writable-layer", "es", "/usr/share/elasticsearch/data") in found
    assert ("tmpfs-data-path", "r", "/data") in found


def test_tmpfs_on_a_parent_of_the_data_path() -> None:
    mongo = container("m", "mongo", Mount(StoreKind.TMPFS, "/data"))
    found = [f for f in run(live(mongo)) if f.rule == "tmpfs-data-path"]
    assert sorted(f.path or "" for f in found) == ["/data/configdb", "/data/db"]


def test_writable_layer_sizes_and_severity() -> None:
    layer = WritableLayer(
        paths=("/srv/uploads", "/srv/uploads/a.bin", "/srv/uploads/b.bin", "/etc/app.conf"),
        sizes={"/srv/uploads/a.bin": 3 << 20, "/srv/uploads/b.bin": 1024, "/etc/app.conf": 10},
    )
    c = container("web", "nginx", writable=layer)
    found = {f.path: f for f in run(live(c)) if f.rule == "writable-layer-data"}
    assert set(found) == {"/srv/uploads", "/etc/app.conf"}
    assert found["/srv/uploads"].severity is Severity.HIGH
    assert found["/srv/uploads"].size == (3 << 20) + 1024
    assert "3.0 MiB" in found["/srv/uploads"].message
    assert found["/etc/app.conf"].severity is Severity.LOW


def test_small_write_under_a_data_path_is_high() -> None:
    layer = WritableLayer(paths=("/var/lib/grafana/grafana.db",), sizes={"/var/lib/grafana/grafana.db": 10})
    c = container("g", "grafana/grafana", writable=layer)
    [f] = [f for f in run(live(c)) if f.rule == "writable-layer-data"]
    assert f.severity is Severity.HIGH and f.path == "/var/lib/grafana"


def test_bind_missing_live_and_working_dir_gone() -> None:
    c = container(
        "app",
        "nginx",
        Mount(StoreKind.BIND, "/cfg", "/gone/proj/cfg", source_exists=False),
        working_dir="/gone/proj",
        working_dir_exists=False,
    )
    [f] = [f for f in run(live(c)) if f.rule == "bind-source-missing"]
    assert f.severity is Severity.HIGH and "working directory /gone/proj no longer exists" in f.message


def test_docker_socket() -> None:
    c = container("ci", "gitlab/gitlab-runner", Mount(StoreKind.BIND, "/var/run/docker.sock", "/run/docker.sock"))
    [f] = [f for f in run(live(c)) if f.rule == "docker-socket-mounted"]
    assert f.severity is Severity.HIGH


def test_dangling_volumes_depend_on_engine_version() -> None:
    vols = (
        VolumeFact("named-data", anonymous=False, size=4096, dangling_with_data=True),
        VolumeFact(ANON, anonymous=True, size=10, dangling_with_data=True),
        VolumeFact("empty", anonymous=False, size=0),
        VolumeFact("used", anonymous=False, size=99, users=("c",)),
    )
    old = {f.volume: f.severity for f in run(live(volumes=vols, engine_api="1.41")) if f.rule == "dangling-volume-data"}
    new = {f.volume: f.severity for f in run(live(volumes=vols, engine_api="1.45")) if f.rule == "dangling-volume-data"}
    assert old == {"named-data": Severity.HIGH, ANON: Severity.HIGH}
    assert new == {"named-data": Severity.MEDIUM, ANON: Severity.HIGH}


def test_backups_unknown_is_one_info_finding() -> None:
    vols = tuple(VolumeFact(f"v{i}", anonymous=False, users=("c",)) for i in range(5))
    found = [f for f in run(live(volumes=vols)) if f.rule.startswith("backup")]
    assert [(f.rule, f.severity) for f in found] == [("backups-unknown", Severity.INFO)]


def test_backup_rules_with_an_index() -> None:
    vols = (
        VolumeFact("never", anonymous=False, users=("a",)),
        VolumeFact("stale", anonymous=False, users=("b",)),
        VolumeFact("fresh", anonymous=False, users=("c",)),
        VolumeFact("db", anonymous=False, users=("pg",), database_users=("pg",)),
    )
    index = {
        "stale": BackupRecord(NOW - timedelta(days=3), NOW - timedelta(days=1), Mode.STOP),
        "fresh": BackupRecord(NOW - timedelta(hours=2), NOW - timedelta(days=2), Mode.NONE),
        "db": BackupRecord(NOW - timedelta(hours=1), None, Mode.NONE),
    }
    policy = BackupPolicy(max_age=timedelta(days=1), verify_max_age=timedelta(days=7), now=NOW)
    found = sorted((f.rule, f.volume) for f in run(live(volumes=vols, backups=index, policy=policy)))
    assert found == [
        ("backup-missing", "never"),
        ("backup-no-consistency", "db"),
        ("backup-stale", "stale"),
        ("backup-unverified", "db"),
    ]


def test_index_from_snapshots_takes_newest_volume_snapshot() -> None:
    def snap(kind: str, name: str, when: datetime, **meta: object) -> Snapshot:
        s = Snapshot(tree=b"", time=when, source=Source(kind, name, dict(meta)))
        s.id = f"{name}-{when.isoformat()}"
        return s

    snaps = [
        snap(
            "volume",
            "data",
            NOW - timedelta(days=2),
            consistency="dump",
            verified_at=(NOW - timedelta(days=1)).isoformat(),
        ),
        snap("volume", "data", NOW - timedelta(hours=1), consistency="stop"),
        snap("path", "/etc", NOW),
    ]
    index = index_from_snapshots(snaps)
    assert set(index) == {"data"}
    rec = index["data"]
    assert rec.last_backup == NOW - timedelta(hours=1) and rec.consistency is Mode.STOP
    assert rec.last_verified == NOW - timedelta(days=1)


def test_hygiene_rules() -> None:
    pg = container("pg", "postgres:16", restart="always")
    labelled = container(
        "pg2",
        "postgres:16",
        Mount(StoreKind.NAMED_VOLUME, "/var/lib/postgresql/data", "x"),
        labels={"cargohold.consistency": "dump"},
        restart="always",
    )
    c = Workload(name="app", image="nginx", mounts=(), kind="service", service="app", volumes_from=("data",))
    found = rules_of(run(live(pg, labelled, c)))
    assert ("database-restart-always-no-volume", "pg", "/var/lib/postgresql/data") in found
    assert ("consistency-label-missing", "pg", None) in found
    assert ("volumes-from", "app", None) in found
    assert not [r for r in found if r[1] == "pg2"]


def test_compose_rules_external_and_unused() -> None:
    inp = AuditInput(
        source="files",
        workloads=(),
        volumes=(
            VolumeFact("real", anonymous=False, external=True, compose_key="ext", users=("s",)),
            VolumeFact("p_spare", anonymous=False, compose_key="spare"),
        ),
        project="p",
        engine_volumes=frozenset({"other"}),
        version_locs=(("compose.yaml", 1),),
    )
    found = sorted((f.rule, f.volume) for f in run(inp))
    assert ("external-volume-missing", "real") in found
    assert ("volume-unused", "p_spare") in found
    assert ("compose-version-obsolete", None) in found
    without_engine = AuditInput(source="files", workloads=(), volumes=inp.volumes, project="p")
    assert "external-volume-missing" not in {f.rule for f in run(without_engine)}


def test_drift() -> None:
    declared = Workload(
        name="db",
        image="postgres:16",
        kind="service",
        project="p",
        service="db",
        mounts=(
            Mount(StoreKind.NAMED_VOLUME, "/var/lib/postgresql/data", "p_pg", file="compose.yaml", line=6),
            Mount(StoreKind.NAMED_VOLUME, "/backup", "p_backup"),
            Mount(StoreKind.BIND, "/cfg", "/srv/cfg"),
        ),
    )
    running = container(
        "p-db-1",
        "postgres:16",
        Mount(StoreKind.ANONYMOUS_VOLUME, "/var/lib/postgresql/data", ANON),
        Mount(StoreKind.NAMED_VOLUME, "/backup", "old_backup"),
        Mount(StoreKind.BIND, "/cfg", "/srv/cfg"),
        project="p",
        service="db",
    )
    other_project = container("q-db-1", "postgres", project="q", service="db")
    inp = AuditInput(source="files", workloads=(declared,), project="p")
    found = [f for f in run(inp, live=[running, other_project]) if f.rule.startswith("drift")]
    assert sorted((f.rule, f.path, f.container) for f in found) == [
        ("drift-anonymous-instead-of-named", "/var/lib/postgresql/data", "p-db-1"),
        ("drift-volume-mismatch", "/backup", "p-db-1"),
    ]
    anon = next(f for f in found if f.rule == "drift-anonymous-instead-of-named")
    assert anon.line == 6 and "cargohold adopt p-db-1:/var/lib/postgresql/data --as p_pg" in anon.fix


def test_findings_sorted_by_severity_and_deduplicated() -> None:
    pg = container("pg", "postgres", Mount(StoreKind.ANONYMOUS_VOLUME, "/var/lib/postgresql/data", ANON))
    found = run(live(pg, pg))
    ranks = [f.severity.rank for f in found]
    assert ranks == sorted(ranks, reverse=True)
    assert len(found) == len({(f.rule, f.container, f.path) for f in found})


def test_parent_directories_of_writes_are_not_separate_findings() -> None:
    layer = WritableLayer(paths=("/srv", "/srv/up", "/srv/up/f"), sizes={"/srv/up/f": 65536})
    found = [f for f in run(live(container("w", "busybox", writable=layer))) if f.rule == "writable-layer-data"]
    assert [(f.path, f.size) for f in found] == [("/srv/up", 65536)]


def test_relevant_changes_drop_noise_mounts_and_deletions() -> None:
    from cargohold.audit.collect_live import relevant_changes
    from cargohold.model.engine import FileChange

    changes = [
        FileChange("/tmp/x", 1),
        FileChange("/run/app.pid", 1),
        FileChange("/var/lib", 0),  # parent of a mount point
        FileChange("/var/lib/mysql", 1),  # the mount point itself
        FileChange("/etc/old.conf", 2),  # deleted
        FileChange("/root/.ash_history", 1),
        FileChange("/srv/up", 1),
        FileChange("/srv/up/f", 1),
        FileChange("/etc/app.conf", 0),
    ]
    assert relevant_changes(changes, ["/var/lib/mysql"]) == ["/etc/app.conf", "/srv/up", "/srv/up/f"]


def test_service_of_unknown_image_with_a_declared_volume() -> None:
    svc = Workload(
        name="app", image="example/app:1", mounts=(), kind="service", service="app", image_volumes=("/var/lib/app",)
    )
    [f] = [f for f in run(AuditInput(source="files", workloads=(svc,))) if f.rule == "anonymous-volume"]
    assert f.path == "/var/lib/app" and "compose gives it an anonymous volume" in f.message


def test_index_reads_docker_backup_meta_and_verification_records() -> None:
    from dataclasses import dataclass

    @dataclass
    class Verified:
        source_kind: str
        source_name: str
        time: datetime
        ok: bool

    s = Snapshot(
        tree=b"", time=NOW - timedelta(hours=2), source=Source("volume", "db", {"consistency": {"mode": "stop"}})
    )
    s.id = "x"
    index = index_from_snapshots(
        [s],
        [
            Verified("volume", "db", NOW - timedelta(hours=1), True),
            Verified("volume", "db", NOW, False),
            Verified("volume", "other", NOW, True),
        ],
    )
    assert set(index) == {"db"}
    assert index["db"].consistency is Mode.STOP and index["db"].last_verified == NOW - timedelta(hours=1)
