"""Load a compose project the way ``docker compose`` does, for the audit.

* files: ``-f`` in order, else ``COMPOSE_FILE``, else ``compose.yaml`` (or ``compose.yml``, ``docker-compose.yaml``,
  ``docker-compose.yml``) in the directory plus its ``*.override.*`` file when present;
* project directory: the first file's directory; ``.env`` there (or ``--env-file``) gives
  variables, the process environment wins over it;
* interpolation of every value before merging (:mod:`cargohold.compose.interpolate`);
* merging in order: mappings deeply, ``volumes`` by container path, ``environment`` and
  ``labels`` by key, ``command``/``entrypoint`` replaced, other lists appended; ``!reset``
  and ``!override`` as compose 2.24 reads them; ``extends`` (same file or ``file:``);
* project name from ``-p``, ``COMPOSE_PROJECT_NAME``, ``name:``, or the directory,
  normalised (lowercase, only ``a-z0-9_-``); named volumes become ``PROJECT_key``
  unless they have ``name:`` or are ``external``.

Problems are :class:`~cargohold.errors.ComposeError` naming the file and line.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cargohold.compose.envfile import load_env_file
from cargohold.compose.interpolate import InterpolationError, interpolate
from cargohold.compose.model import ComposeProject, Service, ServiceVolume, TopVolume, VolumeType
from cargohold.compose.yamldoc import RESET, Loc, Override, Reset, YDict, YList, load_yaml
from cargohold.errors import ComposeError

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
OVERRIDE_FILES = {
    "compose.yaml": ("compose.override.yaml", "compose.override.yml"),
    "compose.yml": ("compose.override.yml", "compose.override.yaml"),
    "docker-compose.yaml": ("docker-compose.override.yaml", "docker-compose.override.yml"),
    "docker-compose.yml": ("docker-compose.override.yml", "docker-compose.override.yaml"),
}
_DICT_LIKE = ("environment", "labels", "annotations", "sysctls", "extra_hosts")
_REPLACED = ("command", "entrypoint")
_KEYED_TOP = ("services", "volumes", "networks", "secrets", "configs")


def normalize_project_name(name: str) -> str:
    """Compose's rule: lowercase, keep ``a-z0-9_-``, no leading ``_`` or ``-``."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower()).lstrip("_-")


def default_files(directory: Path) -> list[Path]:
    """The compose file of a directory and its override file, as compose picks them."""
    for base in DEFAULT_FILES:
        path = directory / base
        if path.is_file():
            overrides = [directory / o for o in OVERRIDE_FILES[base] if (directory / o).is_file()]
            return [path, *overrides[:1]]
    raise ComposeError(
        f"no compose file found in {directory} (looked for {', '.join(DEFAULT_FILES)})",
    )


# --- reading and interpolating -------------------------------------------------------------


def _read(path: Path) -> YDict:
    name = str(path)
    if not path.exists():
        raise ComposeError("no such file", file=name)
    if path.is_dir():
        raise ComposeError("is a directory, not a compose file", file=name)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ComposeError("not UTF-8 text", file=name) from None
    except OSError as err:
        raise ComposeError(f"cannot read: {err.strerror or err}", file=name) from None
    data = load_yaml(text, name)
    if data is None:
        raise ComposeError("empty compose file", file=name, line=1)
    if not isinstance(data, YDict):
        raise ComposeError("a compose file must be a mapping at the top level", file=name, line=1)
    return data


def _interpolate_tree(value: Any, env: Mapping[str, str], loc: Loc, on_missing: Callable[[str], None]) -> Any:
    if isinstance(value, str):
        try:
            return interpolate(value, env, on_missing=on_missing)
        except InterpolationError as err:
            raise ComposeError(str(err), file=loc.file, line=loc.line) from None
    if isinstance(value, YDict):
        out = YDict(loc=value.loc)
        for k, v in value.items():
            out[k] = _interpolate_tree(v, env, value.loc_of(k), on_missing)
            out.key_locs[k] = value.loc_of(k)
        return out
    if isinstance(value, YList):
        lst = YList(loc=value.loc)
        for i, v in enumerate(value):
            lst.append(_interpolate_tree(v, env, value.loc_of(i), on_missing))
            lst.item_locs.append(value.loc_of(i))
        return lst
    if isinstance(value, Override):
        return Override(_interpolate_tree(value.value, env, loc, on_missing))
    return value


# --- merging -------------------------------------------------------------------------------


def _copy(d: YDict) -> YDict:
    out = YDict(d, loc=d.loc)
    out.key_locs = dict(d.key_locs)
    return out


def _short_target(entry: str) -> str:
    parts = entry.split(":")
    return parts[0] if len(parts) == 1 else parts[1]


def _volume_target(entry: Any) -> str | None:
    if isinstance(entry, str):
        return posixpath.normpath(_short_target(entry)) if entry else None
    if isinstance(entry, dict):
        target = entry.get("target")
        return posixpath.normpath(target) if isinstance(target, str) and target else None
    return None


def _merge_volumes(base: YList, over: YList) -> YList:
    out = YList(loc=over.loc)
    index: dict[str, int] = {}
    for i, item in enumerate(base):
        target = _volume_target(item)
        if target is not None:
            index[target] = len(out)
        out.append(item)
        out.item_locs.append(base.loc_of(i))
    for i, item in enumerate(over):
        target = _volume_target(item)
        if target is not None and target in index:
            pos = index[target]
            out[pos] = item
            out.item_locs[pos] = over.loc_of(i)
            continue
        if target is not None:
            index[target] = len(out)
        out.append(item)
        out.item_locs.append(over.loc_of(i))
    return out


def _as_dict(value: Any) -> YDict | None:
    if isinstance(value, YDict):
        return value
    if isinstance(value, YList):
        out = YDict(loc=value.loc)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return None
            key, sep, val = item.partition("=")
            out[key] = val if sep else None
            out.key_locs[key] = value.loc_of(i)
        return out
    return None


def _append_unique(base: YList, over: YList) -> YList:
    out = YList(loc=over.loc)
    for src in (base, over):
        for i, item in enumerate(src):
            if item in out:
                continue
            out.append(item)
            out.item_locs.append(src.loc_of(i))
    return out


def _deep_merge(base: YDict, over: YDict, *, service_level: bool = False) -> YDict:
    out = _copy(base)
    for key, value in over.items():
        loc = over.loc_of(key)
        old = out.get(key)
        if isinstance(value, Reset):
            out.pop(key, None)
            out.key_locs.pop(key, None)
            continue
        if isinstance(value, Override):
            new: Any = value.value
        elif old is None:
            new = value
        elif service_level and key == "volumes" and isinstance(old, YList) and isinstance(value, YList):
            new = _merge_volumes(old, value)
        elif service_level and key in _DICT_LIKE:
            a, b = _as_dict(old), _as_dict(value)
            new = _deep_merge(a, b) if a is not None and b is not None else value
        elif service_level and key in _REPLACED:
            new = value
        elif isinstance(old, YDict) and isinstance(value, YDict):
            new = _deep_merge(old, value)
        elif isinstance(old, YList) and isinstance(value, YList):
            new = _append_unique(old, value)
        else:
            new = value
        out[key] = new
        out.key_locs[key] = loc
    return out


def merge_documents(base: YDict, over: YDict) -> YDict:
    """Merge a later compose file into an earlier one, as compose does."""
    out = _copy(base)
    for key, value in over.items():
        loc = over.loc_of(key)
        old = out.get(key)
        if isinstance(value, Reset):
            out.pop(key, None)
            continue
        if isinstance(value, Override):
            out[key] = value.value
        elif key in _KEYED_TOP and isinstance(old, YDict) and isinstance(value, YDict):
            merged = _copy(old)
            for name, entry in value.items():
                prev = merged.get(name)
                if isinstance(entry, Reset):
                    merged.pop(name, None)
                    continue
                if isinstance(entry, Override):
                    merged[name] = entry.value
                elif isinstance(prev, YDict) and isinstance(entry, YDict):
                    merged[name] = _deep_merge(prev, entry, service_level=key == "services")
                else:
                    merged[name] = entry
                merged.key_locs[name] = value.loc_of(name)
            out[key] = merged
        else:
            out[key] = value
        out.key_locs[key] = loc
    return out


def _strip_tags(value: Any) -> Any:
    """Remove ``!reset`` entries and unwrap ``!override`` left where nothing was merged."""
    if isinstance(value, Override):
        return _strip_tags(value.value)
    if isinstance(value, YDict):
        out = YDict(loc=value.loc)
        for k, v in value.items():
            if isinstance(v, Reset):
                continue
            out[k] = _strip_tags(v)
            out.key_locs[k] = value.loc_of(k)
        return out
    if isinstance(value, YList):
        lst = YList(loc=value.loc)
        for i, v in enumerate(value):
            if isinstance(v, Reset):
                continue
            lst.append(_strip_tags(v))
            lst.item_locs.append(value.loc_of(i))
        return lst
    return value


# --- extends -------------------------------------------------------------------------------


class _Extender:
    def __init__(self, env: Mapping[str, str], on_missing: Callable[[str], None]) -> None:
        self.env = env
        self.on_missing = on_missing
        self.docs: dict[Path, YDict] = {}

    def doc(self, path: Path, loc: Loc) -> YDict:
        if path not in self.docs:
            if not path.is_file():
                raise ComposeError(f"extends: no such file {path}", file=loc.file, line=loc.line)
            self.docs[path] = _interpolate_tree(_read(path), self.env, Loc(str(path), 1), self.on_missing)
        return self.docs[path]

    def resolve(self, services: YDict, name: str, base_dir: Path, stack: tuple[str, ...] = ()) -> YDict:
        service = services.get(name)
        if not isinstance(service, YDict):
            raise ComposeError(
                f"service {name!r} must be a mapping", file=services.loc.file, line=services.loc_of(name).line
            )
        ext = service.get("extends")
        if ext is None:
            return service
        loc = service.loc_of("extends")
        key = f"{base_dir}:{name}"
        if key in stack:
            raise ComposeError(f"extends: circular reference through service {name!r}", file=loc.file, line=loc.line)
        if isinstance(ext, str):
            parent_name, file_name = ext, None
        elif isinstance(ext, YDict) and isinstance(ext.get("service"), str):
            parent_name = ext["service"]
            file_name = ext.get("file")
        else:
            raise ComposeError("extends must be a service name or {service, file}", file=loc.file, line=loc.line)
        if file_name is not None:
            if not isinstance(file_name, str):
                raise ComposeError("extends.file must be a string", file=loc.file, line=loc.line)
            path = (Path(loc.file).parent / file_name).resolve()
            other = self.doc(path, loc).get("services")
            if not isinstance(other, YDict) or parent_name not in other:
                raise ComposeError(f"extends: no service {parent_name!r} in {file_name}", file=loc.file, line=loc.line)
            parent = self.resolve(other, parent_name, path.parent, (*stack, key))
        else:
            if parent_name not in services:
                raise ComposeError(f"extends: no service {parent_name!r}", file=loc.file, line=loc.line)
            parent = self.resolve(services, parent_name, base_dir, (*stack, key))
        own = _copy(service)
        own.pop("extends", None)
        parent = _copy(parent)
        for unshared in ("depends_on", "links", "volumes_from", "container_name"):
            parent.pop(unshared, None)  # compose never inherits these
        return _deep_merge(parent, own, service_level=True)


# --- normalising ---------------------------------------------------------------------------


def _fail(message: str, loc: Loc) -> ComposeError:
    return ComposeError(message, file=loc.file, line=loc.line)


def _labels(value: Any, loc: Loc, what: str) -> dict[str, str]:
    if value is None:
        return {}
    as_dict = _as_dict(value)
    if as_dict is None:
        raise _fail(f"{what} must be a mapping or a list of KEY=VALUE", loc)
    return {str(k): "" if v is None else str(v) for k, v in as_dict.items()}


def _bind_source(raw: str, directory: Path) -> str:
    path = os.path.expanduser(raw)
    if not os.path.isabs(path):
        path = os.path.join(directory, path)
    return os.path.normpath(path)


def _is_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", source))


def _parse_short(entry: str, loc: Loc, directory: Path, top: Mapping[str, Any], service: str) -> ServiceVolume:
    parts = entry.split(":")
    if not entry or len(parts) > 3 or any(p == "" for p in parts[:2]):
        raise _fail(f"service {service!r}: invalid volume specification {entry!r}", loc)
    if len(parts) == 1:
        return ServiceVolume(VolumeType.VOLUME, posixpath.normpath(parts[0]), "", False, loc)
    source, target = parts[0], parts[1]
    modes = set(parts[2].split(",")) if len(parts) == 3 else set()
    read_only = "ro" in modes
    if not target.startswith("/"):
        raise _fail(f"service {service!r}: volume target {target!r} must be an absolute path", loc)
    if _is_path(source):
        return ServiceVolume(
            VolumeType.BIND, posixpath.normpath(target), _bind_source(source, directory), read_only, loc
        )
    if source not in top:
        raise _fail(f"service {service!r} refers to undefined volume {source!r}", loc)
    return ServiceVolume(VolumeType.VOLUME, posixpath.normpath(target), source, read_only, loc)


def _parse_long(entry: YDict, loc: Loc, directory: Path, top: Mapping[str, Any], service: str) -> ServiceVolume:
    kind = entry.get("type")
    target = entry.get("target")
    try:
        vtype = VolumeType(str(kind))
    except ValueError:
        raise _fail(f"service {service!r}: unknown volume type {kind!r}", loc) from None
    if not isinstance(target, str) or not target:
        raise _fail(f"service {service!r}: a volume needs a target", loc)
    source = entry.get("source")
    if source is not None and not isinstance(source, str):
        raise _fail(f"service {service!r}: volume source must be a string", loc)
    read_only = entry.get("read_only", False) is True
    target = posixpath.normpath(target)
    if vtype is VolumeType.BIND:
        if not source:
            raise _fail(f"service {service!r}: a bind mount needs a source", loc)
        bind = entry.get("bind")
        create = not (isinstance(bind, dict) and bind.get("create_host_path") is False)
        return ServiceVolume(
            vtype, target, _bind_source(source, directory), read_only, loc, short=False, create_host_path=create
        )
    if vtype is VolumeType.VOLUME and source:
        if source not in top:
            raise _fail(f"service {service!r} refers to undefined volume {source!r}", loc)
        return ServiceVolume(vtype, target, source, read_only, loc, short=False)
    return ServiceVolume(vtype, target, source or "", read_only, loc, short=False)


def _service(name: str, data: Any, loc: Loc, directory: Path, top: Mapping[str, Any]) -> Service:
    if not isinstance(data, YDict):
        raise _fail(f"service {name!r} must be a mapping", loc)
    image = data.get("image")
    if image is not None and not isinstance(image, str):
        raise _fail(f"service {name!r}: image must be a string", data.loc_of("image"))
    volumes: list[ServiceVolume] = []
    raw_volumes = data.get("volumes")
    if raw_volumes is not None:
        if not isinstance(raw_volumes, YList):
            raise _fail(f"service {name!r}: volumes must be a list", data.loc_of("volumes"))
        for i, entry in enumerate(raw_volumes):
            item_loc = raw_volumes.loc_of(i)
            if isinstance(entry, str):
                volumes.append(_parse_short(entry, item_loc, directory, top, name))
            elif isinstance(entry, YDict):
                volumes.append(_parse_long(entry, item_loc, directory, top, name))
            else:
                raise _fail(f"service {name!r}: invalid volume entry {entry!r}", item_loc)
    tmpfs = data.get("tmpfs")
    if tmpfs is not None:
        entries = YList([tmpfs], loc=data.loc_of("tmpfs")) if isinstance(tmpfs, str) else tmpfs
        if not isinstance(entries, YList):
            raise _fail(f"service {name!r}: tmpfs must be a path or a list of paths", data.loc_of("tmpfs"))
        for i, entry in enumerate(entries):
            if not isinstance(entry, str) or not entry:
                raise _fail(f"service {name!r}: invalid tmpfs entry {entry!r}", entries.loc_of(i))
            path = posixpath.normpath(entry.split(":", 1)[0])
            volumes.append(
                ServiceVolume(
                    VolumeType.TMPFS,
                    path,
                    "",
                    False,
                    entries.loc_of(i) if entries.item_locs else data.loc_of("tmpfs"),
                    from_tmpfs_key=True,
                )
            )
    restart = data.get("restart")
    if restart is not None and not isinstance(restart, str):
        raise _fail(f'service {name!r}: restart must be a string (quote "no")', data.loc_of("restart"))
    volumes_from = data.get("volumes_from") or YList()
    if not isinstance(volumes_from, list) or not all(isinstance(v, str) for v in volumes_from):
        raise _fail(f"service {name!r}: volumes_from must be a list of names", data.loc_of("volumes_from"))
    container_name = data.get("container_name")
    return Service(
        name=name,
        image=image,
        volumes=tuple(volumes),
        restart=restart,
        labels=_labels(data.get("labels"), data.loc_of("labels"), f"service {name!r}: labels"),
        volumes_from=tuple(volumes_from),
        container_name=str(container_name) if container_name is not None else None,
        loc=loc,
        volumes_loc=data.loc_of("volumes") if "volumes" in data else None,
        has_build="build" in data,
    )


def _top_volumes(doc: YDict, project: str) -> dict[str, TopVolume]:
    raw = doc.get("volumes")
    if raw is None:
        return {}
    if not isinstance(raw, YDict):
        raise _fail("top-level volumes must be a mapping", doc.loc_of("volumes"))
    out: dict[str, TopVolume] = {}
    for key, spec in raw.items():
        loc = raw.loc_of(key)
        if spec is None:
            spec = YDict(loc=loc)
        if not isinstance(spec, YDict):
            raise _fail(f"volume {key!r} must be a mapping (or empty)", loc)
        external = spec.get("external", False)
        ext_name = None
        if isinstance(external, YDict):  # legacy form external: {name: x}
            ext_name, external = external.get("name"), True
        if not isinstance(external, bool):
            raise _fail(f"volume {key!r}: external must be true or false", spec.loc_of("external"))
        name = spec.get("name") or ext_name
        if name is not None and not isinstance(name, str):
            raise _fail(f"volume {key!r}: name must be a string", spec.loc_of("name"))
        engine_name = name or (str(key) if external else f"{project}_{key}")
        out[str(key)] = TopVolume(
            key=str(key),
            name=engine_name,
            external=external,
            driver=str(spec.get("driver") or "local"),
            labels=_labels(spec.get("labels"), spec.loc_of("labels"), f"volume {key!r}: labels"),
            loc=loc,
        )
    return out


def load_project(
    files: Sequence[Path | str] = (),
    *,
    project_name: str | None = None,
    project_directory: Path | str | None = None,
    env_files: Sequence[Path | str] = (),
    environ: Mapping[str, str] | None = None,
) -> ComposeProject:
    """Load, interpolate and merge compose files into one project."""
    base_env = dict(os.environ if environ is None else environ)
    compose_file = base_env.get("COMPOSE_FILE", "")
    if files:
        paths = [Path(f) for f in files]
    elif compose_file:  # like compose: COMPOSE_FILE=a.yaml:b.yaml when no -f is given
        sep = base_env.get("COMPOSE_PATH_SEPARATOR") or ":"
        paths = [Path(project_directory or ".") / f for f in compose_file.split(sep) if f]
    else:
        paths = default_files(Path(project_directory or "."))
    directory = Path(project_directory).absolute() if project_directory else paths[0].absolute().parent
    dotenv: dict[str, str] = {}
    if env_files:
        for env_file in env_files:
            path = Path(env_file)
            if not path.is_file():
                raise ComposeError("env file not found", file=str(path))
            dotenv.update(load_env_file(path, {**base_env, **dotenv}))
    elif (directory / ".env").is_file():
        dotenv = load_env_file(directory / ".env", base_env)
    env = {**dotenv, **base_env}
    missing: list[str] = []

    def on_missing(name: str) -> None:
        if name not in missing:
            missing.append(name)

    docs: list[YDict] = []
    for path in paths:
        raw = _read(path)
        docs.append(_interpolate_tree(raw, env, raw.loc, on_missing))
    merged = docs[0]
    for doc in docs[1:]:
        merged = merge_documents(merged, doc)
    merged = _strip_tags(merged)
    version_locs = tuple(d.loc_of("version") for d in docs if "version" in d)

    name = project_name or env.get("COMPOSE_PROJECT_NAME") or merged.get("name") or directory.name
    if not isinstance(name, str):
        raise _fail("name must be a string", merged.loc_of("name"))
    normalized = normalize_project_name(name)
    if not normalized:
        raise ComposeError(f"project name {name!r} has no usable characters (a-z, 0-9, _ and -)")

    raw_services = merged.get("services")
    if raw_services is None:
        raw_services = YDict(loc=merged.loc)
    if not isinstance(raw_services, YDict):
        raise _fail("services must be a mapping", merged.loc_of("services"))
    top = _top_volumes(merged, normalized)
    raw_top = merged.get("volumes") or {}
    extender = _Extender(env, on_missing)
    services: dict[str, Service] = {}
    for svc_name in raw_services:
        loc = raw_services.loc_of(svc_name)
        data = extender.resolve(raw_services, svc_name, Path(loc.file).parent)
        services[str(svc_name)] = _service(str(svc_name), data, loc, directory, raw_top)
    notes = []
    if merged.get("include"):
        loc = merged.loc_of("include")
        notes.append(f"{loc}: include: is not followed; audit the included files with more -f options")
    return ComposeProject(
        notes=tuple(notes),
        name=normalized,
        directory=directory,
        files=tuple(paths),
        services=services,
        volumes=top,
        version_locs=version_locs,
        missing_variables=tuple(missing),
        environment=env,
    )


__all__ = ["RESET", "default_files", "load_project", "merge_documents", "normalize_project_name"]
