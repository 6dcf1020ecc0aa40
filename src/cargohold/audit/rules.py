"""The audit rules: pure functions from an :class:`~cargohold.audit.model.AuditInput` to findings.

Every rule has a stable id (:data:`RULES`); :func:`run` applies them all, removes
duplicates and sorts by severity. Severities follow one principle: **high** when a
routine operation (``down -v``, ``rm``, recreate, restart, prune) loses data, or for the
Docker socket handed to a container; **medium** when data is lost only on a mistake or
is left unprotected (no backup, no consistency mode); **low**/**info** for hygiene.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from cargohold.audit.findings import Finding, Rule, Severity
from cargohold.audit.knowledge import StatefulImage, data_paths, image_paths, lookup
from cargohold.audit.model import AuditInput, Mount, StoreKind, VolumeFact, Workload
from cargohold.model.backups import BackupRecord
from cargohold.model.consistency import LABEL_MODE, OFFEN_STOP, Mode
from cargohold.units import human_bytes

H, M, L, INFO = Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO

_RULE_LIST = (
    Rule(
        "stateful-data-anonymous-volume",
        "Database/app data in an anonymous volume",
        H,
        "The image keeps its state in a path that is held by an anonymous volume. `docker compose down -v` "
        "and `docker rm -v` delete it, `docker compose up` after `rm` creates a new empty one instead of "
        "reattaching it, and `docker volume prune` removes it as soon as the container is gone.",
    ),
    Rule(
        "stateful-data-writable-layer",
        "Database/app data in the container's writable layer",
        H,
        "The image keeps its state in a path that is on no volume or bind mount, so the data lives in the "
        "container's writable layer: every recreate (`docker compose up` after an image or config change, "
        "`docker rm`, a new version) starts from an empty directory.",
    ),
    Rule(
        "anonymous-volume",
        "Anonymous volume in use",
        H,
        "A path of the container is held by an anonymous volume (a VOLUME of the image or a bare `- /path` "
        "entry). It is deleted by `down -v` / `rm -v`, not reattached after `rm` + `up`, and pruned once "
        "the container is gone. Give it a name if it holds anything worth keeping.",
    ),
    Rule(
        "writable-layer-data",
        "Data written into the writable layer",
        H,
        "The engine reports files the container added or changed outside every mount (`docker diff`). They "
        "are lost when the container is recreated. Large or growing paths are usually uploads, caches or "
        "databases that belong on a volume.",
    ),
    Rule(
        "tmpfs-data-path",
        "tmpfs on a data path",
        H,
        "A data path is a tmpfs mount: it lives in memory and is empty after every restart of the container.",
    ),
    Rule(
        "bind-source-missing",
        "Bind mount source missing",
        H,
        "The host directory of a bind mount does not exist (deleted, or relative to a compose working "
        "directory that is gone). What the container writes there is lost, and the next start either fails "
        "or gets a fresh empty directory.",
    ),
    Rule(
        "docker-socket-mounted",
        "Docker socket mounted into a container",
        H,
        "The Docker API socket gives the container full control of the engine, i.e. root on the host and "
        "the power to delete every volume. Mount it only into tools that need it, read-only through a "
        "filtering proxy.",
    ),
    Rule("backup-missing", "Volume never backed up", M, "No backup of this volume exists in the repository."),
    Rule(
        "backup-stale",
        "Last backup older than the policy",
        M,
        "The newest backup of this volume is older than the maximum age of the backup policy.",
    ),
    Rule(
        "backup-unverified",
        "Backup never verified",
        M,
        "No backup of this volume was ever verified (restore test or full read), so nobody knows whether "
        "it can be restored.",
    ),
    Rule(
        "backup-no-consistency",
        "Database backed up without a consistency mode",
        M,
        "The volume belongs to a database, but its newest backup was taken with consistency mode `none`: "
        "files copied while the database writes may not restore. Use a dump, or stop/pause it.",
    ),
    Rule(
        "backups-unknown",
        "No repository configured: backups unknown",
        INFO,
        "Without a repository (--repo or CARGOHOLD_REPO) the audit cannot tell which volumes are backed up.",
    ),
    Rule(
        "consistency-label-missing",
        "Database without a cargohold.consistency label",
        L,
        "cargohold picks a safe default for known databases, but an explicit `cargohold.consistency` label "
        "documents how this service must be backed up and keeps it right when the image changes.",
    ),
    Rule(
        "compose-version-obsolete",
        "Obsolete top-level version:",
        INFO,
        "The top-level `version:` key is obsolete: compose ignores it and warns.",
    ),
    Rule(
        "external-volume-missing",
        "External volume does not exist",
        M,
        "A volume is declared `external: true` but the engine has no volume of that name: `docker compose "
        "up` fails, and creating it by hand gives an empty volume where data was expected.",
    ),
    Rule(
        "volume-unused",
        "Declared volume not used by any service",
        L,
        "A top-level volume is declared but no service mounts it: a leftover, or a service lost its mount.",
    ),
    Rule(
        "volumes-from",
        "volumes_from couples containers",
        L,
        "`volumes_from` mounts every volume of another container, anonymous ones included; it hides where "
        "data lives and ties the lifetimes of both. Name the volumes and mount them explicitly.",
    ),
    Rule(
        "database-restart-always-no-volume",
        "Database restarts forever without a volume",
        M,
        "A database with `restart: always` and no named volume or bind mount on its data path looks "
        "durable because it survives restarts, until the first recreate wipes it.",
    ),
    Rule(
        "dangling-volume-data",
        "Dangling volume holding data",
        H,
        "No container uses this volume and it holds data: `docker volume prune` destroys it (anonymous "
        "volumes always; named volumes too on engines before 23.0, or with `--all`).",
    ),
    Rule(
        "drift-anonymous-instead-of-named",
        "Running with an anonymous volume where a named one is declared",
        H,
        "The compose file mounts a named volume here but the running container has an anonymous one: it was "
        "started from an older file. Its data is in the anonymous volume and the next `up` switches to the "
        "(empty) named volume.",
    ),
    Rule(
        "drift-volume-mismatch",
        "Running container mounts a different volume than declared",
        H,
        "The compose file declares one source for this path, the running container uses another. The next "
        "`docker compose up` recreates it with the declared source and the data seems gone.",
    ),
)
RULES: dict[str, Rule] = {r.id: r for r in _RULE_LIST}


_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
_MIB = 1 << 20


def _finding(rule: str, w: Workload | None, message: str, fix: str, **kw: object) -> Finding:
    sev = kw.pop("severity", None)
    severity = sev if isinstance(sev, Severity) else RULES[rule].severity
    base: dict[str, object] = {}
    if w is not None:
        base = {
            "service": w.service,
            "container": w.container,
            "project": w.project,
            "file": w.file,
            "line": w.line,
        }
    base.update(kw)
    return Finding(rule=rule, severity=severity, message=message, fix=fix, **base)  # type: ignore[arg-type]


def _who(w: Workload) -> str:
    return f"container {w.name}" if w.kind == "container" else f"service {w.name}"


def volume_key_for(w: Workload, path: str) -> str:
    """A name for a new volume: ``db-data`` for service db's ``/var/lib/postgresql/data``."""
    base = posixpath.basename(posixpath.normpath(path)) or "data"
    service = w.service or w.name
    if base.lower() in service.lower() or service.lower() in base.lower():
        base = "data"  # mysql's /var/lib/mysql → mysql-data, not mysql-mysql
    name = f"{service}-{base}".lower()
    return re.sub(r"[^a-z0-9_.-]", "-", name).strip("-.") or "data"


def _move_fix(w: Workload, path: str, *, from_anonymous: bool) -> str:
    key = volume_key_for(w, path)
    service = w.service or w.name
    snippet = f"services:\n  {service}:\n    volumes:\n      - {key}:{path}\nvolumes:\n  {key}: {{}}"
    if w.kind == "service":
        return f"mount a named volume there (`cargohold audit -f FILE --fix` writes this):\n{snippet}"
    if w.project and w.service:
        return (
            f"copy the data into the volume compose will use, then declare it and recreate:\n"
            f"  cargohold adopt {w.name}:{path} --as {w.project}_{key}\n{snippet}\n"
            f"  docker compose up -d {w.service}"
        )
    what = "anonymous volume" if from_anonymous else "writable layer"
    return (
        f"copy the data out of the {what} into a named volume and recreate the container with it:\n"
        f"  cargohold adopt {w.name}:{path} --as {key} --recreate"
    )


def _data_paths(w: Workload) -> list[tuple[str, StatefulImage | None]]:
    entry = lookup(w.image)
    out: dict[str, StatefulImage | None] = {}
    if entry is not None and w.image:
        for p in data_paths(entry, w.image):
            out[posixpath.normpath(p)] = entry
    for p in w.image_volumes:
        out.setdefault(posixpath.normpath(p), None)
    return sorted(out.items())


def check_workload_storage(inp: AuditInput) -> Iterator[Finding]:
    """Data paths on anonymous volumes, tmpfs or the writable layer; other anonymous volumes."""
    for w in inp.workloads:
        reported: set[str] = set()
        for path, entry in _data_paths(w):
            mount, _parent = w.store_of(path)
            what = f"{entry.key} keeps its data in {path}" if entry else f"the image declares VOLUME {path}"
            where: dict[str, object] = {"path": path}
            if mount is not None and mount.file is not None:
                where.update(file=mount.file, line=mount.line)
            if mount is None:
                if entry is None:
                    if w.kind == "service":  # an image VOLUME compose will back with an anonymous volume
                        yield _finding(
                            "anonymous-volume", w,
                            f"{_who(w)}: {what}, which is on no named volume or bind mount: compose gives it "
                            "an anonymous volume that `down -v` deletes",
                            _move_fix(w, path, from_anonymous=True), path=path,
                        )  # fmt: skip
                    continue
                if w.kind == "service" and w.image and path in image_paths(entry, w.image)[1]:
                    yield _finding(
                        "stateful-data-anonymous-volume",
                        w,
                        f"{_who(w)}: {what}, which is on no named volume or bind mount; the image declares "
                        f"VOLUME {path}, so compose gives it an anonymous volume that `down -v` deletes",
                        _move_fix(w, path, from_anonymous=True),
                        path=path,
                    )
                else:
                    yield _finding(
                        "stateful-data-writable-layer",
                        w,
                        f"{_who(w)}: {what}, which is on no volume or bind mount: the data lives in the "
                        "container's writable layer and is lost on recreate",
                        _move_fix(w, path, from_anonymous=False),
                        path=path,
                    )
                continue
            if mount.kind is StoreKind.ANONYMOUS_VOLUME:
                reported.add(posixpath.normpath(mount.target))
                rule = "stateful-data-anonymous-volume" if entry else "anonymous-volume"
                vol = f" {mount.source[:12]}" if mount.source else ""
                yield _finding(
                    rule,
                    w,
                    f"{_who(w)}: {what}, held by the anonymous volume{vol}: lost on `down -v`/`rm -v`, "
                    "not reattached after `rm` + `up`",
                    _move_fix(w, path, from_anonymous=True),
                    volume=mount.source or None,
                    **where,
                )
            elif mount.kind is StoreKind.TMPFS:
                reported.add(posixpath.normpath(mount.target))
                yield _finding(
                    "tmpfs-data-path",
                    w,
                    f"{_who(w)}: {what}, but {mount.target} is a tmpfs: empty after every restart",
                    f"replace the tmpfs at {mount.target} by a named volume (`--fix` does it for files):\n"
                    f"services:\n  {w.service or w.name}:\n    volumes:\n      - {volume_key_for(w, path)}:{path}\n"
                    f"volumes:\n  {volume_key_for(w, path)}: {{}}",
                    **where,
                )
        for m in w.mounts:
            if m.kind is not StoreKind.ANONYMOUS_VOLUME or posixpath.normpath(m.target) in reported:
                continue
            vol = f" {m.source[:12]}" if m.source else ""
            yield _finding(
                "anonymous-volume",
                w,
                f"{_who(w)}: {m.target} is held by the anonymous volume{vol}: lost on `down -v`/`rm -v`, "
                "not reattached after `rm` + `up`",
                _move_fix(w, m.target, from_anonymous=True),
                path=m.target,
                volume=m.source or None,
                **({"file": m.file, "line": m.line} if m.file else {}),
            )


def _is_socket(path: str) -> bool:
    return posixpath.normpath(path) in _SOCKETS or path.endswith("/docker.sock")


def check_mounts(inp: AuditInput) -> Iterator[Finding]:
    """Missing bind sources and the Docker socket."""
    for w in inp.workloads:
        for m in w.mounts:
            if m.kind is not StoreKind.BIND:
                continue
            loc = {"file": m.file, "line": m.line} if m.file else {}
            if _is_socket(m.source) or _is_socket(m.target):
                mode = "read-only" if m.read_only else "read-write"
                yield _finding(
                    "docker-socket-mounted",
                    w,
                    f"{_who(w)} has the Docker socket {m.source} mounted at {m.target} ({mode}): full control "
                    "of the engine, root on the host (read-only does not restrict the API)",
                    "remove the mount, or give the container a filtering proxy instead, e.g. "
                    "tecnativa/docker-socket-proxy with only the API sections it needs "
                    "(DOCKER_HOST=tcp://socket-proxy:2375)",
                    path=m.target,
                    **loc,
                )
                continue
            if m.source_exists is False:
                gone_workdir = w.working_dir and w.working_dir_exists is False
                why = f"; the compose working directory {w.working_dir} no longer exists" if gone_workdir else ""
                live = w.kind == "container"
                sev = H if live else M
                msg = f"{_who(w)}: bind source {m.source} (mounted at {m.target}) does not exist{why}" + (
                    "" if live else ": compose will create an empty directory there"
                )
                fix = (
                    f"restore {m.source} from a backup, or point the mount at where the data really is; "
                    "then recreate the container"
                    if live
                    else f"create {m.source} with the data the service expects, or fix the path"
                )
                yield _finding("bind-source-missing", w, msg, fix, path=m.target, severity=sev, **loc)


_DEEP_PREFIXES = ("/var/lib", "/var/www", "/var/opt", "/usr/local", "/usr/share", "/usr/src")


def _group_of(path: str, data_roots: Iterable[str]) -> str:
    """Where a written path belongs: its data path, else a directory two (or three) levels deep."""
    for root in data_roots:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return root
    parts = [x for x in path.split("/") if x]
    depth = 3 if any(path.startswith(p + "/") for p in _DEEP_PREFIXES) else 2
    return "/" + "/".join(parts[:depth]) if parts else "/"


def check_writable_layer(inp: AuditInput) -> Iterator[Finding]:
    """Files written outside mounts, grouped by top directory, with their size."""
    for w in inp.workloads:
        layer = w.writable
        if layer is None or not layer.paths:
            continue
        data_roots = [p for p, _ in _data_paths(w)]
        groups: dict[str, list[str]] = {}
        ordered = sorted(layer.paths)
        for i, p in enumerate(ordered):
            if i + 1 < len(ordered) and ordered[i + 1].startswith(p.rstrip("/") + "/"):
                continue  # a directory holding other written paths: counted through them
            groups.setdefault(_group_of(p, data_roots), []).append(p)
        for top, paths in sorted(groups.items()):
            size = sum(layer.sizes.get(p, 0) for p in paths)
            in_data = any(p == d or p.startswith(d.rstrip("/") + "/") for p in paths for d in data_roots)
            heavy = size >= _MIB
            sev = H if (in_data or heavy) else L
            shown = ", ".join(sorted(paths)[:3]) + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")
            approx = "at least " if layer.partial else ""
            yield _finding(
                "writable-layer-data",
                w,
                f"{_who(w)} wrote {len(paths)} path(s), {approx}{human_bytes(size)}, into its writable layer "
                f"under {top}: {shown}; lost on recreate",
                (
                    f"move it to a named volume: cargohold adopt {w.name}:{top} --as "
                    f"{volume_key_for(w, top)}"
                    + ("" if w.project else " --recreate")
                    + f"\nor, if it is scratch data, mount a tmpfs at {top}"
                ),
                path=top,
                size=size,
                severity=sev,
            )


def check_hygiene(inp: AuditInput) -> Iterator[Finding]:
    """volumes_from, databases restarting forever without a volume, missing consistency labels."""
    for w in inp.workloads:
        for other in w.volumes_from:
            yield _finding(
                "volumes-from",
                w,
                f"{_who(w)} uses volumes_from: {other} (every volume of it, anonymous ones included)",
                f"name the volumes {other} uses and mount them explicitly in {w.service or w.name}",
            )
        entry = lookup(w.image)
        if entry is None or not entry.database or not w.image:
            continue
        paths = data_paths(entry, w.image)
        held = [w.store_of(p)[0] for p in paths]
        persisted = any(m is not None and m.kind in (StoreKind.NAMED_VOLUME, StoreKind.BIND) for m in held)
        if (w.restart or "") == "always" and not persisted:
            yield _finding(
                "database-restart-always-no-volume",
                w,
                f"{_who(w)} ({entry.key}) has restart: always but no named volume or bind mount on {', '.join(paths)}",
                _move_fix(w, paths[0], from_anonymous=False),
                path=paths[0],
            )
        if LABEL_MODE not in w.labels and w.labels.get(OFFEN_STOP, "").lower() in ("", "false"):
            yield _finding(
                "consistency-label-missing",
                w,
                f"{_who(w)} is a {entry.key} database without a {LABEL_MODE} label "
                f"(cargohold would use {entry.consistency.value})",
                f"add the label:\n    labels:\n      {LABEL_MODE}: {entry.consistency.value}",
            )


def check_compose(inp: AuditInput) -> Iterator[Finding]:
    """Compose files: obsolete version, missing external volumes, unused volumes."""
    for file, line in inp.version_locs:
        yield _finding(
            "compose-version-obsolete",
            None,
            f"{file}: the top-level version: is obsolete and ignored by compose",
            "delete the `version:` line",
            file=file,
            line=line,
            project=inp.project,
        )
    if inp.source != "files":
        return
    for v in inp.volumes:
        loc = {"file": v.file, "line": v.line, "project": inp.project}
        if v.external and inp.engine_volumes is not None and v.name not in inp.engine_volumes:
            yield _finding(
                "external-volume-missing",
                None,
                f"volume {v.compose_key} is external: true but the engine has no volume {v.name}",
                f"restore it (`cargohold restore ... --to {v.name}`), create it (`docker volume create "
                f"{v.name}`), or fix its name:",
                volume=v.name,
                **loc,
            )
        if not v.users:
            yield _finding(
                "volume-unused",
                None,
                f"volume {v.compose_key} is declared but no service mounts it",
                f"mount it where its data belongs, or delete `{v.compose_key}:` from the top-level volumes",
                volume=v.name,
                **loc,
            )


def _engine_prunes_named(api: str | None) -> bool:
    """Engines before 23.0 (API 1.42) prune named dangling volumes too."""
    if not api:
        return True
    try:
        major, minor = (int(x) for x in api.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) < (1, 42)


def check_dangling(inp: AuditInput) -> Iterator[Finding]:
    if inp.source != "live":
        return
    named_pruned = _engine_prunes_named(inp.engine_api)
    for v in inp.volumes:
        if not v.dangling_with_data:
            continue
        sev = H if (v.anonymous or named_pruned) else M
        kind = "anonymous" if v.anonymous else "named"
        how = "`docker volume prune`" if sev is H else "`docker volume prune --all`"
        yield _finding(
            "dangling-volume-data",
            None,
            f"{kind} volume {v.name} is used by no container and holds {human_bytes(v.size)}: {how} destroys it",
            f"back it up (cargohold backup volume {v.name}), then remove it deliberately with "
            f"`docker volume rm {v.name}` — or mount it again where it belongs",
            volume=v.name,
            size=v.size,
            severity=sev,
        )


def _protected(inp: AuditInput) -> list[VolumeFact]:
    return [v for v in inp.volumes if v.users or (v.size or 0) > 0]


def check_backups(inp: AuditInput) -> Iterator[Finding]:
    volumes = _protected(inp)
    if not volumes:
        return
    if inp.backups is None:
        yield _finding(
            "backups-unknown",
            None,
            f"no repository configured — backups unknown for {len(volumes)} volume(s)",
            "pass --repo URL (or set CARGOHOLD_REPO) and the repository password to check backups",
            project=inp.project,
        )
        return
    now = inp.policy.now or datetime.now(UTC)
    for v in volumes:
        rec: BackupRecord | None = inp.backups.get(v.name)
        users = ", ".join(v.users) or "no container"
        base = {"volume": v.name, "file": v.file, "line": v.line, "project": inp.project}
        if rec is None or rec.last_backup is None:
            yield _finding(
                "backup-missing",
                None,
                f"volume {v.name} ({users}) has never been backed up",
                f"cargohold backup volume {v.name}",
                **base,
            )
            continue
        age = now - rec.last_backup
        if age > inp.policy.max_age:
            yield _finding(
                "backup-stale",
                None,
                f"volume {v.name}: newest backup is {_age(age.total_seconds())} old "
                f"(policy: {_age(inp.policy.max_age.total_seconds())})",
                f"cargohold backup volume {v.name}, and schedule it",
                **base,
            )
        if rec.last_verified is None or now - rec.last_verified > inp.policy.verify_max_age:
            when = "never" if rec.last_verified is None else f"{_age((now - rec.last_verified).total_seconds())} ago"
            yield _finding(
                "backup-unverified",
                None,
                f"volume {v.name}: backups verified {when}",
                f"cargohold verify --volume {v.name}",
                **base,
            )
        if v.database_users and rec.consistency in (None, Mode.NONE):
            yield _finding(
                "backup-no-consistency",
                None,
                f"volume {v.name} holds a database ({', '.join(v.database_users)}) but its newest backup "
                "used no consistency mode",
                f"label the database container {LABEL_MODE}=dump (or stop) and back it up again",
                **base,
            )


def _age(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"


def check_drift(inp: AuditInput, live: Iterable[Workload]) -> Iterator[Finding]:
    """Declared (files) against running (live): what `docker compose up` would change under the data."""
    running: dict[str, list[Workload]] = {}
    for c in live:
        if c.project == inp.project and c.service:
            running.setdefault(c.service, []).append(c)
    for w in inp.workloads:
        for c in running.get(w.service or w.name, []):
            for m in w.mounts:
                if m.kind not in (StoreKind.NAMED_VOLUME, StoreKind.BIND):
                    continue
                actual: Mount | None = next(
                    (x for x in c.mounts if posixpath.normpath(x.target) == posixpath.normpath(m.target)), None
                )
                declared = f"{'volume' if m.kind is StoreKind.NAMED_VOLUME else 'bind'} {m.source}"
                loc = {"file": m.file, "line": m.line, "container": c.name, "path": m.target}
                if actual is not None and actual.kind is StoreKind.ANONYMOUS_VOLUME:
                    yield _finding(
                        "drift-anonymous-instead-of-named",
                        w,
                        f"service {w.name}: {m.target} is declared as {declared} but container {c.name} "
                        f"runs with the anonymous volume {actual.source[:12]}",
                        f"copy the data before the next `up`: cargohold adopt {c.name}:{m.target} --as "
                        f"{m.source}\nthen `docker compose up -d {w.name}`",
                        volume=actual.source or None,
                        **loc,
                    )
                elif actual is None or actual.source != m.source or actual.kind is not m.kind:
                    now = (
                        "nothing mounted there"
                        if actual is None
                        else f"{actual.kind.value} {actual.source or '(none)'}"
                    )
                    yield _finding(
                        "drift-volume-mismatch",
                        w,
                        f"service {w.name}: {m.target} is declared as {declared} but container {c.name} has {now}",
                        "decide which is right: copy the data into the declared source (cargohold adopt "
                        f"{c.name}:{m.target} --as {m.source}) or change the compose file, then "
                        f"`docker compose up -d {w.name}`",
                        volume=m.source,
                        **loc,
                    )


CHECKS: tuple[Callable[[AuditInput], Iterable[Finding]], ...] = (
    check_workload_storage,
    check_mounts,
    check_writable_layer,
    check_hygiene,
    check_compose,
    check_dangling,
    check_backups,
)


def run(inp: AuditInput, *, live: Iterable[Workload] | None = None) -> list[Finding]:
    """Every finding for this input (and drift against ``live`` workloads), sorted, without duplicates."""
    seen: set[tuple[object, ...]] = set()
    out: list[Finding] = []
    checks: list[Iterable[Finding]] = [check(inp) for check in CHECKS]
    if live is not None:
        checks.append(check_drift(inp, live))
    for found in checks:
        for f in found:
            key = (f.rule, f.container, f.service, f.path, f.volume, f.file, f.line)
            if key in seen:
                continue
            seen.add(key)
            out.append(f)
    out.sort(key=Finding.sort_key)
    return out
