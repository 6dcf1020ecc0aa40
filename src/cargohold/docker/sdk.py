"""The real :class:`~cargohold.docker.port.DockerPort`, over docker-py's low-level API.

docker-py is untyped, returns dicts and raises requests' exceptions; all of that stops
here. Every call goes through :func:`_translate`, which turns SDK and HTTP errors into
:mod:`cargohold.errors` types.
"""

from __future__ import annotations

import contextlib
import errno
import json
from base64 import b64decode
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from cargohold.docker.connect import Endpoint, resolve_endpoint

if TYPE_CHECKING:  # docker-py (and requests, paramiko) load on first use: commands that never
    import docker  # talk to an engine start ~0.2 s faster
    import docker.errors
from cargohold.errors import (
    ContainerNotFound,
    DockerAPIError,
    DockerConflict,
    DockerError,
    DockerNotFound,
    EngineConfigError,
    EnginePermissionDenied,
    EngineUnreachable,
    ImageNotFound,
    VolumeNotFound,
)
from cargohold.model.engine import (
    ContainerInfo,
    EngineInfo,
    ExecResult,
    FileChange,
    ImageInfo,
    MountInfo,
    MountType,
    PathStat,
    VolumeInfo,
)

_API_VERSION_MIN = "1.41"


def _find_oserror(exc: BaseException) -> OSError | None:
    """Dig the OSError out of requests/urllib3's wrapping, if any."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        for arg in getattr(cur, "args", ()):
            if isinstance(arg, BaseException):
                todo.append(arg)
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        for nxt in (cur.__cause__, cur.__context__):
            if nxt is not None:
                todo.append(nxt)
    return None


class _Translator:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def unreachable(self, exc: BaseException) -> NoReturn:
        where = f"{self.endpoint.host} (from {self.endpoint.origin})"
        os_err = _find_oserror(exc)
        if os_err is not None and os_err.errno in (errno.EACCES, errno.EPERM):
            raise EnginePermissionDenied(f"permission denied on the Docker engine socket {where}") from exc
        if os_err is not None and os_err.errno == errno.ENOENT:
            raise EngineUnreachable(f"no Docker engine socket at {where}") from exc
        raise EngineUnreachable(f"cannot reach the Docker engine at {where}") from exc

    @contextlib.contextmanager
    def __call__(self, what: str, not_found: type[DockerNotFound] | None = None) -> Iterator[None]:
        import docker.errors
        import requests.exceptions

        try:
            yield
        except docker.errors.NotFound as exc:
            if not_found is not None:
                raise not_found(f"{what} not found") from exc
            raise DockerNotFound(f"{what}: {_explain(exc)}") from exc
        except docker.errors.APIError as exc:
            status = exc.status_code
            msg = _explain(exc)
            if status == 409:
                raise DockerConflict(f"{what}: {msg}") from exc
            if status in (401, 403):
                raise EnginePermissionDenied(f"{what}: {msg}") from exc
            raise DockerAPIError(f"{what}: {msg}") from exc
        except docker.errors.TLSParameterError as exc:
            raise EngineConfigError(f"TLS settings for {self.endpoint.host}: {exc}") from exc
        except (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError) as exc:
            self.unreachable(exc)
        except PermissionError as exc:
            self.unreachable(exc)
        except requests.exceptions.Timeout as exc:
            raise EngineUnreachable(f"the Docker engine at {self.endpoint.host} did not answer in time") from exc
        except docker.errors.DockerException as exc:
            text = str(exc)
            if "Error while fetching server API version" in text or "Connection" in text:
                self.unreachable(exc)
            raise DockerError(f"{what}: {text}") from exc


def _explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc).strip()


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _volume(data: Mapping[str, Any]) -> VolumeInfo:
    return VolumeInfo(
        name=data["Name"],
        driver=data.get("Driver") or "local",
        mountpoint=data.get("Mountpoint") or "",
        labels=_str_map(data.get("Labels")),
        options=_str_map(data.get("Options")),
        scope=data.get("Scope") or "local",
        created_at=data.get("CreatedAt") or "",
    )


def _mount(data: Mapping[str, Any]) -> MountInfo:
    return MountInfo(
        type=MountType.parse(data.get("Type") or ""),
        destination=data.get("Destination") or data.get("Target") or "",
        source=data.get("Source") or "",
        name=data.get("Name") or "",
        driver=data.get("Driver") or "",
        read_only=not data.get("RW", True),
        mode=data.get("Mode") or "",
        propagation=data.get("Propagation") or "",
    )


def _container_summary(data: Mapping[str, Any]) -> ContainerInfo:
    names = data.get("Names") or []
    name = names[0].lstrip("/") if names else data["Id"][:12]
    return ContainerInfo(
        id=data["Id"],
        name=name,
        image=data.get("Image") or "",
        image_id=data.get("ImageID") or "",
        state=data.get("State") or "",
        labels=_str_map(data.get("Labels")),
        mounts=tuple(_mount(m) for m in data.get("Mounts") or ()),
        created=str(data.get("Created") or ""),
        network_mode=((data.get("HostConfig") or {}).get("NetworkMode") or ""),
    )


def _container_detail(data: Mapping[str, Any]) -> ContainerInfo:
    config = data.get("Config") or {}
    host = data.get("HostConfig") or {}
    mounts = [_mount(m) for m in data.get("Mounts") or ()]
    seen = {m.destination for m in mounts}
    # --tmpfs mounts appear only in HostConfig.Tmpfs; --mount type=tmpfs in HostConfig.Mounts.
    for dest, opts in (host.get("Tmpfs") or {}).items():
        if dest not in seen:
            mounts.append(MountInfo(type=MountType.TMPFS, destination=dest, options=opts or ""))
            seen.add(dest)
    for m in host.get("Mounts") or ():
        if m.get("Type") == "tmpfs" and m.get("Target") not in seen:
            opts = m.get("TmpfsOptions") or {}
            text = ",".join(f"{k}={v}" for k, v in sorted(opts.items()))
            mounts.append(
                MountInfo(
                    type=MountType.TMPFS,
                    destination=m["Target"],
                    read_only=bool(m.get("ReadOnly")),
                    options=text,
                )
            )
            seen.add(m["Target"])
    state = data.get("State") or {}
    restart = (host.get("RestartPolicy") or {}).get("Name") or ""
    return ContainerInfo(
        id=data["Id"],
        name=(data.get("Name") or "").lstrip("/") or data["Id"][:12],
        image=config.get("Image") or "",
        image_id=data.get("Image") or "",
        state=state.get("Status") or "",
        labels=_str_map(config.get("Labels")),
        mounts=tuple(mounts),
        created=data.get("Created") or "",
        working_dir=config.get("WorkingDir") or "",
        restart_policy=restart,
        network_mode=host.get("NetworkMode") or "",
        started_at=state.get("StartedAt") or "",
        env=_tuple(config.get("Env")),
    )


class _ArchiveStream:
    """The bytes of an archive response; :meth:`close` may be called from another thread and
    releases the connection (a reader blocked on it wakes up)."""

    def __init__(self, res: Any, chunk_size: int, translate: _Translator, what: str) -> None:
        self._res = res
        self._it = res.iter_content(chunk_size, False)
        self._translate = translate
        self._what = what

    def __iter__(self) -> _ArchiveStream:
        return self

    def __next__(self) -> bytes:
        try:
            with self._translate(self._what, ContainerNotFound):
                chunk: bytes = next(self._it)
        except StopIteration:
            self.close()
            raise
        return chunk

    def close(self) -> None:
        self._res.close()


class SdkDocker:
    """DockerPort over docker-py. Connects lazily on first use."""

    def __init__(self, endpoint: Endpoint | None = None, *, timeout: int = 120) -> None:
        self.endpoint = endpoint or resolve_endpoint()
        self._timeout = timeout
        self._translate = _Translator(self.endpoint)
        self._client: docker.APIClient | None = None

    # --- plumbing ---------------------------------------------------------------
    @property
    def api(self) -> docker.APIClient:
        if self._client is None:
            import docker
            import docker.tls

            tls: Any = False
            if self.endpoint.tls_verify or self.endpoint.cert_path:
                with self._translate("TLS settings"):
                    cert = self.endpoint.cert_path or ""
                    tls = docker.tls.TLSConfig(
                        client_cert=(f"{cert}/cert.pem", f"{cert}/key.pem") if cert else None,
                        ca_cert=f"{cert}/ca.pem" if cert and self.endpoint.tls_verify else None,
                        verify=self.endpoint.tls_verify,
                    )
            host = self.endpoint.host
            if host.startswith("tcp://") and tls:
                host = "https://" + host[len("tcp://") :]
            with self._translate("connect"):
                self._client = docker.APIClient(
                    base_url=host,
                    version="auto",
                    timeout=self._timeout,
                    tls=tls,
                    use_ssh_client=host.startswith("ssh://"),
                )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- engine -----------------------------------------------------------------
    def engine_info(self) -> EngineInfo:
        with self._translate("engine info"):
            info = self.api.info()
            version = self.api.version()
        security = info.get("SecurityOptions") or []
        return EngineInfo(
            id=info.get("ID") or "",
            name=info.get("Name") or "",
            server_version=version.get("Version") or info.get("ServerVersion") or "",
            api_version=version.get("ApiVersion") or "",
            os=info.get("OperatingSystem") or "",
            arch=info.get("Architecture") or "",
            docker_root_dir=info.get("DockerRootDir") or "",
            rootless=any("rootless" in str(opt) for opt in security),
            host=self.endpoint.host,
            local=self.endpoint.is_local,
        )

    # --- volumes ----------------------------------------------------------------
    def list_volumes(self) -> list[VolumeInfo]:
        with self._translate("list volumes"):
            data = self.api.volumes()
        return [_volume(v) for v in (data or {}).get("Volumes") or ()]

    def inspect_volume(self, name: str) -> VolumeInfo:
        with self._translate(f"volume {name!r}", VolumeNotFound):
            return _volume(self.api.inspect_volume(name))

    def volume_sizes(self) -> dict[str, int]:
        with self._translate("disk usage"):
            data = self.api.df()
        sizes: dict[str, int] = {}
        for vol in data.get("Volumes") or ():
            size = (vol.get("UsageData") or {}).get("Size", -1)
            if isinstance(size, int) and size >= 0:
                sizes[vol["Name"]] = size
        return sizes

    def create_volume(
        self,
        name: str | None = None,
        *,
        driver: str = "local",
        options: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> VolumeInfo:
        with self._translate(f"create volume {name or '(anonymous)'}"):
            data = self.api.create_volume(
                name=name, driver=driver, driver_opts=dict(options or {}), labels=dict(labels or {})
            )
        return _volume(data)

    def remove_volume(self, name: str, *, force: bool = False) -> None:
        with self._translate(f"remove volume {name!r}", VolumeNotFound):
            self.api.remove_volume(name, force=force)

    # --- containers -------------------------------------------------------------
    def list_containers(self, *, all: bool = True) -> list[ContainerInfo]:
        with self._translate("list containers"):
            data = self.api.containers(all=all)
        return [_container_summary(c) for c in data or ()]

    def inspect_container(self, name_or_id: str) -> ContainerInfo:
        with self._translate(f"container {name_or_id!r}", ContainerNotFound):
            return _container_detail(self.api.inspect_container(name_or_id))

    def create_container(
        self,
        image: str,
        *,
        name: str | None = None,
        command: Sequence[str] | None = None,
        entrypoint: Sequence[str] | None = None,
        mounts: Sequence[Mapping[str, object]] = (),
        labels: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | None = None,
        network_mode: str = "none",
        user: str | None = None,
        working_dir: str | None = None,
    ) -> str:
        with self._translate(f"create container from {image!r}", ImageNotFound):
            host_config = self.api.create_host_config(
                mounts=[dict(m) for m in mounts] or None, network_mode=network_mode
            )
            data = self.api.create_container(
                image,
                command=list(command) if command is not None else None,
                entrypoint=list(entrypoint) if entrypoint is not None else None,
                name=name,
                labels=dict(labels or {}),
                environment=dict(environment or {}),
                user=user,
                working_dir=working_dir,
                host_config=host_config,
            )
        return str(data["Id"])

    def remove_container(self, name_or_id: str, *, force: bool = False, volumes: bool = False) -> None:
        with self._translate(f"remove container {name_or_id!r}", ContainerNotFound):
            self.api.remove_container(name_or_id, force=force, v=volumes)

    def start(self, name_or_id: str) -> None:
        with self._translate(f"start {name_or_id!r}", ContainerNotFound):
            self.api.start(name_or_id)

    def stop(self, name_or_id: str, *, timeout: int = 10) -> None:
        with self._translate(f"stop {name_or_id!r}", ContainerNotFound):
            self.api.stop(name_or_id, timeout=timeout)

    def pause(self, name_or_id: str) -> None:
        with self._translate(f"pause {name_or_id!r}", ContainerNotFound):
            self.api.pause(name_or_id)

    def unpause(self, name_or_id: str) -> None:
        with self._translate(f"unpause {name_or_id!r}", ContainerNotFound):
            self.api.unpause(name_or_id)

    def wait(self, name_or_id: str, *, timeout: float | None = None) -> int:
        with self._translate(f"wait for {name_or_id!r}", ContainerNotFound):
            result = self.api.wait(name_or_id, timeout=timeout)
        return int(result.get("StatusCode", -1))

    def exec(
        self,
        name_or_id: str,
        command: Sequence[str],
        *,
        user: str | None = None,
        environment: Mapping[str, str] | None = None,
        workdir: str | None = None,
    ) -> ExecResult:
        with self._translate(f"exec in {name_or_id!r}", ContainerNotFound):
            created = self.api.exec_create(
                name_or_id,
                list(command),
                user=user or "",
                environment=dict(environment or {}) or None,
                workdir=workdir,
            )
            out, err = self.api.exec_start(created["Id"], demux=True)
            code = self.api.exec_inspect(created["Id"]).get("ExitCode")
        return ExecResult(exit_code=int(code if code is not None else -1), stdout=out or b"", stderr=err or b"")

    def exec_stream(
        self,
        name_or_id: str,
        command: Sequence[str],
        *,
        user: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> Iterator[bytes]:
        with self._translate(f"exec in {name_or_id!r}", ContainerNotFound):
            created = self.api.exec_create(
                name_or_id, list(command), user=user or "", environment=dict(environment or {}) or None
            )
            stream = self.api.exec_start(created["Id"], stream=True, demux=True)
        err_tail = bytearray()
        with self._translate(f"exec in {name_or_id!r}", ContainerNotFound):
            for out, err in stream:
                if err:
                    err_tail += err
                    del err_tail[:-4096]
                if out:
                    yield out
            code = self.api.exec_inspect(created["Id"]).get("ExitCode")
        if code != 0:
            text = err_tail.decode(errors="replace").strip().splitlines()
            raise DockerAPIError(
                f"{' '.join(command)!r} in {name_or_id!r} exited with {code}: {text[-1] if text else ''}"
            )

    def container_changes(self, name_or_id: str) -> list[FileChange]:
        with self._translate(f"changes of {name_or_id!r}", ContainerNotFound):
            data = self.api.diff(name_or_id)
        return [FileChange(path=c["Path"], kind=int(c["Kind"])) for c in data or ()]

    def logs(self, name_or_id: str, *, tail: int = 50) -> str:
        with self._translate(f"logs of {name_or_id!r}", ContainerNotFound):
            data = self.api.logs(name_or_id, tail=tail)
        return bytes(data).decode(errors="replace")

    # --- archive API ------------------------------------------------------------
    def get_archive(self, name_or_id: str, path: str, *, chunk_size: int = 2 << 20) -> Iterator[bytes]:
        # Not docker-py's get_archive: its generator never closes the response, so a reader
        # that stops early leaves the engine streaming and blocks the next call on the
        # container (e.g. its removal) until the read times out.
        what = f"read {path!r} of {name_or_id!r}"
        with self._translate(what, ContainerNotFound):
            url = self.api._url("/containers/{0}/archive", name_or_id)
            res = self.api._get(url, params={"path": path}, stream=True, headers={"Accept-Encoding": "identity"})
            self.api._raise_for_status(res)
            sock = self.api._get_raw_response_socket(res)
            self.api._disable_socket_timeout(sock)
        return _ArchiveStream(res, chunk_size, self._translate, what)

    def put_archive(self, name_or_id: str, path: str, data: bytes | Iterable[bytes]) -> None:
        with self._translate(f"write {path!r} of {name_or_id!r}", ContainerNotFound):
            ok = self.api.put_archive(name_or_id, path, data)
        if not ok:
            raise DockerAPIError(f"write {path!r} of {name_or_id!r}: the engine refused the archive")

    def stat_path(self, name_or_id: str, path: str) -> PathStat:
        with self._translate(f"stat {path!r} in {name_or_id!r}", DockerNotFound):
            url = self.api._url("/containers/{0}/archive", name_or_id)
            res = self.api.head(url, params={"path": path})
            self.api._raise_for_status(res)
        raw = res.headers.get("X-Docker-Container-Path-Stat", "")
        data = json.loads(b64decode(raw)) if raw else {}
        return PathStat(
            name=data.get("name", ""),
            size=int(data.get("size", 0)),
            mode=int(data.get("mode", 0)),
            mtime=data.get("mtime", ""),
            link_target=data.get("linkTarget", ""),
        )

    # --- images -----------------------------------------------------------------
    def inspect_image(self, ref: str) -> ImageInfo:
        with self._translate(f"image {ref!r}", ImageNotFound):
            data = self.api.inspect_image(ref)
        config = data.get("Config") or {}
        return ImageInfo(
            id=data.get("Id") or "",
            tags=_tuple(data.get("RepoTags")),
            volumes=tuple(sorted((config.get("Volumes") or {}).keys())),
            digests=_tuple(data.get("RepoDigests")),
            entrypoint=_tuple(config.get("Entrypoint")),
            cmd=_tuple(config.get("Cmd")),
            env=_tuple(config.get("Env")),
            labels=_str_map(config.get("Labels")),
        )

    def image_exists(self, ref: str) -> bool:
        try:
            self.inspect_image(ref)
        except ImageNotFound:
            return False
        return True

    def import_image(self, data: bytes, repository: str, tag: str) -> str:
        with self._translate(f"import image {repository}:{tag}"):
            self.api.import_image_from_data(data, repository=repository, tag=tag)
        return self.inspect_image(f"{repository}:{tag}").id


def connect(host: str | None = None, context: str | None = None) -> SdkDocker:
    """A port to the engine chosen like the docker CLI would (see :mod:`connect`)."""
    return SdkDocker(resolve_endpoint(host=host, context=context))
