"""Repository commands: init, backup, snapshots, ls, diff, restore, check, forget, prune,
stats, key, unlock. A thin client of :mod:`cargohold.services.repository`.

Where: ``--repo URL``, else ``CARGOHOLD_REPO``, else ``$XDG_DATA_HOME/cargohold/repo``
(``~/.local/share/cargohold/repo``). Password: ``CARGOHOLD_PASSWORD``, else
``--password-file``, else an interactive prompt (no echo) when stdin is a terminal.
"""

from __future__ import annotations

import stat
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from cargohold.cli import docker_state, exit_codes
from cargohold.cli.common import (
    JsonOpt,
    PasswordFileOpt,
    ProgressOpt,
    RepoOpt,
    note,
    open_repo,
    password,
    progress_for,
    repo_url,
    snapshot_json,
)
from cargohold.cli.copy_snapshots import FromPasswordFileOpt, open_from
from cargohold.cli.output import human_bytes, print_json, print_table
from cargohold.errors import UsageError
from cargohold.model.consistency import Mode
from cargohold.repo.checker import CheckReport
from cargohold.repo.retention import Policy, parse_duration
from cargohold.repo.tree import DIR, FILE, SYMLINK, Node
from cargohold.services import keys as keysvc
from cargohold.services import repository as svc
from cargohold.services.docker_sources import Via


def _node_json(path: str, n: Node) -> dict[str, Any]:
    d: dict[str, Any] = {
        "path": path,
        "type": n.type,
        "mode": f"{n.mode:04o}",
        "uid": n.uid,
        "gid": n.gid,
        "size": n.size,
        "mtime_ns": n.mtime_ns,
    }
    if n.target is not None:
        d["target"] = n.target.decode("utf-8", "surrogateescape")
    return d


_IFMT = {
    DIR: stat.S_IFDIR,
    FILE: stat.S_IFREG,
    SYMLINK: stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
}


def _mode_string(n: Node) -> str:
    """``ls -l`` style, setuid/setgid/sticky included."""
    return stat.filemode(_IFMT.get(n.type, 0) | n.mode)


# --- commands ----------------------------------------------------------------------------


def init(
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    chunker_params_from: Annotated[
        str | None,
        typer.Option(
            "--copy-chunker-params-from",
            help="Share blob ids with this repository (chunker parameters, chunker seed, blob id key), so "
            "copy-snapshots between the two transfers only what is missing.",
            metavar="URL",
        ),
    ] = None,
    from_password_file: FromPasswordFileOpt = None,
) -> None:
    """Create a new encrypted repository."""
    url = repo_url(repo)
    made = svc.prepare_store(url)  # S3: creates the bucket when missing (or says how)
    if made:
        print(made)
    pw = password(password_file, confirm=True)
    if chunker_params_from is None:
        r = svc.init_repository(url, pw)
    else:
        with open_from(chunker_params_from, from_password_file, pw, option="--copy-chunker-params-from") as like:
            r = svc.init_repository(url, pw, like=like)
    print(f"created repository {r.config.id} at {url}")
    if chunker_params_from is not None:
        print(f"blob ids shared with {chunker_params_from}: copy-snapshots between the two copies only what is missing")
    note("keep the password safe: without it the data cannot be read back")
    note("recommended: keep an export of the key apart from the repository: `cargohold key export --paper`")


def backup(
    ctx: typer.Context,
    volumes: Annotated[
        list[str] | None, typer.Argument(help="Docker volumes to back up (or use --container/--project/--all).")
    ] = None,
    path: Annotated[str | None, typer.Option("--path", help="A directory to back up.", metavar="DIR")] = None,
    container: Annotated[
        list[str] | None, typer.Option("--container", "-c", help="Every volume and bind mount of this container.")
    ] = None,
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Every volume and bind mount of this compose project.")
    ] = None,
    all_volumes: Annotated[
        bool, typer.Option("--all", help="Every volume in use, and dangling volumes that hold data.")
    ] = False,
    binds: Annotated[bool, typer.Option("--binds", help="With --all: bind mounts too.")] = False,
    via: Annotated[
        Via, typer.Option("--via", help="Read volumes directly from the mountpoint, through the Engine API, or auto.")
    ] = Via.AUTO,
    consistency: Annotated[
        Mode | None,
        typer.Option("--consistency", help="Override every container's cargohold.consistency: none|pause|stop|dump."),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag the snapshot (repeatable).")] = None,
    ignore_inode: Annotated[
        bool, typer.Option("--ignore-inode", help="Compare only size and mtime with the previous snapshot.")
    ] = False,
    skip_if_unchanged: Annotated[
        bool, typer.Option("--skip-if-unchanged", help="Write no snapshot when nothing changed.")
    ] = False,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Back up Docker volumes, bind mounts, containers or compose projects — or a directory (--path)."""
    docker_selection = bool(volumes or container or project or all_volumes)
    if path is None:
        if not docker_selection:
            raise UsageError("say what to back up: VOLUME names, --container, --project, --all, or --path DIR")
        docker_state.backup_docker(
            ctx,
            volumes=volumes or [],
            containers=container or [],
            project=project,
            all_volumes=all_volumes,
            binds=binds,
            via=via,
            consistency=consistency,
            tags=tag or [],
            skip_if_unchanged=skip_if_unchanged,
            repo=repo,
            password_file=password_file,
            json=json,
            progress=progress,
        )
        return
    if docker_selection:
        raise UsageError("--path backs up a directory: do not combine it with volumes, --container, --project or --all")
    with open_repo(repo, password_file) as r:
        res = svc.backup(
            r,
            path,
            tags=tag or [],
            ignore_inode=ignore_inode,
            skip_if_unchanged=skip_if_unchanged,
            progress=progress_for(progress),
        )
    requests = r.request_counts()
    for w in res.warnings:
        note(f"warning: {w}")
    st = res.stats
    if json:
        print_json(
            {
                "snapshot": snapshot_json(res.snapshot) if res.snapshot else None,
                "skipped": res.skipped,
                "parent": res.parent,
                "warnings": res.warnings,
                "changed_while_read": res.changed,
                "excluded": res.excluded,
                "requests": requests,
                "stats": {
                    "files": st.files,
                    "bytes": st.bytes,
                    "added_bytes": st.added_bytes,
                    "files_new": st.files_new,
                    "files_changed": st.files_changed,
                    "files_unchanged": st.files_unchanged,
                    "duration": st.duration,
                },
            }
        )
    else:
        print(
            f"files: {st.files_new} new, {st.files_changed} changed, {st.files_unchanged} unchanged; "
            f"{human_bytes(st.bytes)} processed, {human_bytes(st.added_bytes)} added in {st.duration:.1f} s"
        )
        if res.skipped:
            print(f"nothing changed since snapshot {(res.parent or '')[:8]}: no snapshot written")
        elif res.snapshot is not None:
            print(f"snapshot {res.snapshot.short_id} saved")
    if res.warnings:
        raise typer.Exit(exit_codes.FINDINGS)


def snapshots(
    source: Annotated[str | None, typer.Option("--source", help="Only snapshots of this source name.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only snapshots with this tag.")] = None,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """List snapshots, oldest first."""
    with open_repo(repo, password_file) as r:
        snaps = svc.snapshots(r, source=source, tags=tag or [])
    if json:
        print_json([snapshot_json(s) for s in snaps])
        return
    rows = [
        [
            s.short_id,
            s.time.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            s.hostname,
            f"{s.source.kind}:{s.source.name}",
            ",".join(s.tags) or "-",
            str(s.stats.files),
            human_bytes(s.stats.bytes),
            human_bytes(s.stats.added_bytes),
        ]
        for s in snaps
    ]
    print_table(["id", "time", "host", "source", "tags", "files", "size", "added"], rows)


def ls(
    snapshot: Annotated[str, typer.Argument(help="Snapshot id, unique prefix or 'latest'.")],
    path: Annotated[str, typer.Argument(help="Path inside the snapshot.")] = "",
    long: Annotated[bool, typer.Option("--long", "-l", help="Mode, owner, size and time.")] = False,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """List the files of a snapshot (below PATH)."""
    with open_repo(repo, password_file) as r:
        _snap, entries = svc.ls(r, snapshot, path)
    if json:
        print_json([_node_json(e.path, e.node) for e in entries])
        return
    out = sys.stdout
    for e in entries:
        name = e.path + ("/" if e.node.type == DIR else "")
        if e.node.type == SYMLINK and e.node.target is not None:
            name += " -> " + e.node.target.decode("utf-8", "surrogateescape")
        if long:
            out.write(f"{_mode_string(e.node)} {e.node.uid:>5} {e.node.gid:>5} {e.node.size:>12} {name}\n")
        else:
            out.write(name + "\n")


def diff(
    snapshot1: Annotated[str, typer.Argument(help="Older snapshot.")],
    snapshot2: Annotated[str, typer.Argument(help="Newer snapshot.")],
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """What changed between two snapshots (+ added, - removed, M content, U metadata, T type)."""
    with open_repo(repo, password_file) as r:
        s1, s2, changes = svc.diff(r, snapshot1, snapshot2)
    if json:
        print_json({"from": s1.id, "to": s2.id, "changes": [{"change": c.change, "path": c.path} for c in changes]})
        return
    for c in changes:
        print(f"{c.change}  {c.path}")
    counts = {k: sum(1 for c in changes if c.change == k) for k in "+-MUT"}
    note(
        f"{counts['+']} added, {counts['-']} removed, {counts['M']} modified, "
        f"{counts['U']} metadata, {counts['T']} type changed"
    )


def restore(
    ctx: typer.Context,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id, unique prefix or 'latest'.")],
    target: Annotated[str | None, typer.Option("--target", help="Directory to restore into.", metavar="DIR")] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Docker volume to restore into (created when missing).", metavar="VOLUME")
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Only this path of the snapshot (repeatable).")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="With 'latest': the newest snapshot of this source.")
    ] = None,
    engine: Annotated[
        str | None, typer.Option("--engine", help="With --to: the target engine's URL (default: -H/DOCKER_HOST).")
    ] = None,
    path: Annotated[str | None, typer.Option("--path", help="With --to: only this path of the snapshot.")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With --to: replace a non-empty volume (after a safety snapshot). With --target: restore "
            "over, into or around the snapshot's own live source directory.",
        ),
    ] = False,
    restart_containers: Annotated[
        bool, typer.Option("--restart-containers", help="With --to: stop and restart containers using the volume.")
    ] = False,
    via: Annotated[Via, typer.Option("--via", help="With --to: write directly, through the Engine API, or auto.")] = (
        Via.AUTO
    ),
    from_dump: Annotated[
        bool,
        typer.Option(
            "--from-dump",
            help="With --to: load the snapshot's application dump into the volume with a fresh container "
            "of the recorded image, instead of restoring its files.",
        ),
    ] = False,
    dump_container: Annotated[
        str | None,
        typer.Option(
            "--dump-container",
            help="With --from-dump: the container whose dump to load, when the snapshot holds several.",
            metavar="CONTAINER",
        ),
    ] = None,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Restore a snapshot into a directory (--target) or a Docker volume (--to)."""
    if (from_dump or dump_container is not None) and to is None:
        raise UsageError("--from-dump loads a dump into a Docker volume: give --to VOLUME")
    if dump_container is not None and not from_dump:
        raise UsageError("--dump-container goes with --from-dump")
    if (target is None) == (to is None):
        raise UsageError("give exactly one of --target DIR or --to VOLUME")
    if to is not None:
        if include:
            raise UsageError("with --to, use --path SUBPATH to restore part of the snapshot")
        docker_state.restore_to_volume(
            ctx,
            snapshot=snapshot,
            to=to,
            engine=engine,
            path=path,
            force=force,
            restart_containers=restart_containers,
            via=via,
            from_dump=(dump_container or "") if from_dump else None,
            source=source,
            repo=repo,
            password_file=password_file,
            json=json,
            progress=progress,
        )
        return
    assert target is not None
    with open_repo(repo, password_file) as r:
        snap, res = svc.restore(
            r, snapshot, target, include=include or [], source=source, force=force, progress=progress_for(progress)
        )
    for w in res.warnings:
        note(f"warning: {w}")
    print(
        f"restored snapshot {snap.short_id}: {res.files} files, {res.dirs} dirs, {human_bytes(res.bytes)} into {target}"
    )
    if res.damaged:
        for path, why in sorted(res.damaged.items()):
            note(f"damaged: {path}: {why}")
        note(
            f"cargohold: error: {len(res.damaged)} file(s) could not be restored intact "
            "— run `cargohold check --read-data`"
        )
        raise typer.Exit(exit_codes.INTEGRITY)


def check(
    read_data: Annotated[bool, typer.Option("--read-data", help="Read and verify every pack.")] = False,
    subset: Annotated[
        float | None,
        typer.Option("--read-data-subset", help="Read and verify this percentage of packs.", metavar="PERCENT"),
    ] = None,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Check the repository; exit code 9 when anything is damaged (leftovers of interrupted writes are not damage)."""
    if read_data and subset is not None:
        raise UsageError("give either --read-data or --read-data-subset")
    with open_repo(repo, password_file) as r:
        rep = svc.check(r, read_data=read_data, subset=subset, progress=progress_for(progress))
        rep.warnings.extend(keysvc.key_warnings(r))  # issue 16: single key slot never exported (services/keys.py)
    if json:
        print_json(
            {
                "ok": rep.ok,
                "damage": [{"kind": d.kind, "name": d.name, "message": d.message} for d in rep.damage],
                "affected": rep.affected,
                "warnings": rep.warnings,
                "snapshots": rep.snapshots,
                "packs": rep.packs,
                "packs_read": rep.packs_read,
                "leftovers": _leftovers_json(rep),
            }
        )
    else:
        for w in rep.warnings:
            print(f"warning: {w}")
        if rep.leftovers:
            print(_leftovers_line(rep))
        for d in rep.damage:
            print(f"damaged: {d}")
        for sid, paths in sorted(rep.affected.items()):
            print(f"snapshot {sid[:8]} is affected:")
            for p in paths:
                print(f"  {p}")
        read = f", {rep.packs_read} packs read" if (read_data or subset is not None) else ""
        verdict = "no errors" if rep.ok else f"{len(rep.damage)} problem(s)"
        print(f"checked {rep.snapshots} snapshots, {rep.packs} packs{read}: {verdict}")
    if not rep.ok:
        raise typer.Exit(exit_codes.INTEGRITY)


def _leftovers_json(rep: CheckReport) -> dict[str, Any]:
    removable = rep.removable_leftovers
    return {
        "count": len(rep.leftovers),
        "bytes": rep.leftover_bytes,
        "removable": len(removable),
        "removable_bytes": sum(v.leftover.size for v in removable),
        "items": [
            {
                "name": v.leftover.name,
                "kind": v.leftover.kind,
                "size": v.leftover.size,
                "modified": datetime.fromtimestamp(v.leftover.modified, UTC).isoformat(),
                "removable": v.removable,
                "reason": v.reason,
            }
            for v in rep.leftovers
        ],
    }


def _leftovers_line(rep: CheckReport) -> str:
    """One line: how many leftovers, their bytes, and what prune does with them."""
    n, removable = len(rep.leftovers), rep.removable_leftovers
    kept = n - len(removable)
    line = (
        f"leftovers: {n} temporary file(s) of interrupted writes, {human_bytes(rep.leftover_bytes)} "
        "(not damage: no snapshot uses them)"
    )
    if removable:
        freed = human_bytes(sum(v.leftover.size for v in removable))
        line += f"; `cargohold prune` removes {len(removable)} ({freed}): their writers are gone"
    if kept:
        first = next(v for v in rep.leftovers if not v.removable)
        line += f"; {kept} belong to writes that may still be running ({first.reason}): prune keeps them until they end"
    return line


def forget(
    keep_last: Annotated[int, typer.Option("--keep-last", help="Keep the N newest.", metavar="N")] = 0,
    keep_hourly: Annotated[int, typer.Option("--keep-hourly", metavar="N")] = 0,
    keep_daily: Annotated[int, typer.Option("--keep-daily", metavar="N")] = 0,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly", metavar="N")] = 0,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly", metavar="N")] = 0,
    keep_yearly: Annotated[int, typer.Option("--keep-yearly", metavar="N")] = 0,
    keep_within: Annotated[
        str | None,
        typer.Option(
            "--keep-within", help="Keep all younger than this before the newest (7d, 12h, 1y6m).", metavar="DURATION"
        ),
    ] = None,
    source: Annotated[str | None, typer.Option("--source", help="Only this source name.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Show what would be kept and why.")] = False,
    prune_after: Annotated[bool, typer.Option("--prune", help="Prune right after forgetting.")] = False,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Remove snapshots by a retention policy, applied per source."""
    within: timedelta | None = None
    if keep_within:
        try:
            within = parse_duration(keep_within)
        except ValueError as err:
            raise UsageError(str(err)) from None
    policy = Policy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, within)
    with open_repo(repo, password_file) as r:
        res = svc.forget(r, policy, source=source, dry_run=dry_run, prune_after=prune_after)
    if json:
        print_json(
            {
                "dry_run": dry_run,
                "groups": [
                    {
                        "source": g.source,
                        "keep": [
                            {"id": s.id, "time": s.time.isoformat(), "reasons": why} for s, why in g.decision.keep
                        ],
                        "remove": [{"id": s.id, "time": s.time.isoformat()} for s in g.decision.remove],
                    }
                    for g in res.groups
                ],
                "removed": res.removed,
                "prune": res.prune.__dict__ if res.prune else None,
            }
        )
        return
    for g in res.groups:
        print(f"source {g.source}: keep {len(g.decision.keep)}, remove {len(g.decision.remove)}")
        for s, why in g.decision.keep:
            print(f"  keep   {s.short_id}  {s.time.astimezone():%Y-%m-%d %H:%M:%S}  {', '.join(why)}")
        for s in g.decision.remove:
            verb = "would remove" if dry_run else "remove"
            print(f"  {verb} {s.short_id}  {s.time.astimezone():%Y-%m-%d %H:%M:%S}")
    if res.prune is not None:
        _print_prune(res.prune)


def _print_prune(p: Any) -> None:
    verb = "would" if p.dry_run else "did"
    print(
        f"prune ({verb}): {p.packs_total} packs, {p.packs_unused} unused, {p.packs_repacked} repacked, "
        f"{p.packs_unindexed} unindexed; {human_bytes(p.bytes_unused)} unused data; "
        f"{p.packs_deleted} packs deleted, {human_bytes(p.bytes_freed)} freed"
    )
    if p.leftovers_removed or p.leftovers_kept:
        verb = "would remove" if p.dry_run else "removed"
        print(
            f"leftovers of interrupted writes: {verb} {p.leftovers_removed} temporary file(s), "
            f"{human_bytes(p.leftover_bytes_removed)}; kept {p.leftovers_kept} of running writes, "
            f"{human_bytes(p.leftover_bytes_kept)}"
        )
    for m in p.messages:
        print(f"  {m}")


def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only report what would be done.")] = False,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Remove data no snapshot needs, repack partly used packs and remove the temporary files of
    interrupted writes whose writers are gone (backups may keep running)."""
    with open_repo(repo, password_file) as r:
        rep = svc.prune(r, dry_run=dry_run, progress=progress_for(progress))
    if json:
        print_json(rep.__dict__)
    else:
        _print_prune(rep)


def stats(repo: RepoOpt = None, password_file: PasswordFileOpt = None, json: JsonOpt = False) -> None:
    """Logical vs stored size and the deduplication ratio."""
    with open_repo(repo, password_file) as r:
        st = svc.stats(r)
    if json:
        print_json(
            {
                **st.__dict__,
                "dedup_ratio": round(st.dedup_ratio, 3),
                "compression_ratio": round(st.compression_ratio, 3),
            }
        )
        return
    print_table(
        ["what", "value"],
        [
            ["snapshots", str(st.snapshots)],
            ["logical size (all snapshots)", human_bytes(st.logical_bytes)],
            ["unique data", human_bytes(st.unique_bytes)],
            ["stored (packs)", human_bytes(st.stored_bytes)],
            ["dedup ratio", f"{st.dedup_ratio:.2f}x"],
            ["compression ratio", f"{st.compression_ratio:.2f}x"],
            ["blobs / packs", f"{st.blobs} / {st.packs}"],
        ],
    )


def unlock(
    remove_all: Annotated[
        bool, typer.Option("--remove-all", help="Remove every lock, also fresh ones (holders must be gone).")
    ] = False,
    repo: RepoOpt = None,
) -> None:
    """Remove stale locks left by crashed processes."""
    n = svc.unlock(repo_url(repo), remove_all=remove_all)
    print(f"removed {n} lock(s)")


def rebuild_index(repo: RepoOpt = None, password_file: PasswordFileOpt = None, json: JsonOpt = False) -> None:
    """Rewrite the index from the headers of all packs (after `check` reports a damaged index)."""
    with open_repo(repo, password_file) as r:
        rep = svc.rebuild_index(r)
    if json:
        print_json(rep.__dict__)
    else:
        print(
            f"indexed {rep.blobs} blobs of {rep.packs} packs into index {rep.new_index[:12]}; "
            f"replaced {rep.index_files_replaced} index file(s)"
        )
        for name, msg in sorted(rep.damaged_packs.items()):
            print(f"damaged: {name}: {msg}")
    if rep.damaged_packs:
        raise typer.Exit(exit_codes.INTEGRITY)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("backup")(backup)
    app.command("snapshots")(snapshots)
    app.command("ls")(ls)
    app.command("diff")(diff)
    app.command("restore")(restore)
    app.command("check")(check)
    app.command("forget")(forget)
    app.command("prune")(prune)
    app.command("stats")(stats)
    app.command("unlock")(unlock)
    app.command("rebuild-index")(rebuild_index)
