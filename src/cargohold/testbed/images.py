"""Build the local test images, without any registry, through docker-py.

* ``cargohold-test/busybox``: a scratch image holding Debian's static busybox and a
  symlink per applet, imported from a tar made in memory (~1 s).
* ``cargohold-test/db-base``: one Debian root file system with PostgreSQL 15, MariaDB,
  Redis and sqlite3 and their clients, made by ``mmdebstrap`` and imported (~1 min, once).
* ``cargohold-test/postgres``, ``/mariadb``, ``/redis``: derived from the base in a
  second: a container gets the entrypoint script through the archive API and is
  committed with the image configuration (PATH, VOLUME, ENTRYPOINT, STOPSIGNAL).

Every image is tagged ``:<recipe hash>`` and ``:latest``; a build is skipped when the
hash tag exists. See :mod:`cargohold.testbed.recipes` for what goes in.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import secrets
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import docker.errors
import requests.exceptions

from cargohold.docker.connect import Endpoint, resolve_endpoint
from cargohold.docker.sdk import SdkDocker
from cargohold.errors import CargoholdError, ImageNotFound, TestbedError
from cargohold.testbed._system import apt_install, file_lock, log, run_logged, state_dir
from cargohold.testbed.recipes import (
    DATABASES,
    ENTRYPOINT_PATH,
    IMAGE_NAMES,
    BaseRecipe,
    BusyboxRecipe,
    DatabaseRecipe,
    busybox_links,
)

_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
_FIXED_MTIME = 1_700_000_000


def port_for(host: str | None) -> SdkDocker:
    """A Docker port to ``host`` (a DOCKER_HOST-style URL), or to the usual engine."""
    if host is None:
        return SdkDocker(resolve_endpoint())
    return SdkDocker(Endpoint(host=host, origin="test bed"))


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Turn any engine or I/O failure of a build step into a TestbedError."""
    try:
        yield
    except TestbedError:
        raise
    except (CargoholdError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise TestbedError(f"{what}: {exc}") from exc
    except OSError as exc:
        raise TestbedError(f"{what}: {exc}") from exc


def _check_stream(text: object, what: str) -> str:
    """Parse a JSON-lines progress answer (import, load); raise on an error entry.

    Returns the last ``status``/``stream`` text (the image id for an import).
    """
    raw = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    last = ""
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            last = line
            continue
        if not isinstance(entry, dict):
            continue
        if entry.get("error") or entry.get("errorDetail"):
            detail = entry.get("errorDetail") or {}
            message = entry.get("error") or (detail.get("message") if isinstance(detail, dict) else "")
            raise TestbedError(f"{what}: {message}")
        last = str(entry.get("status") or entry.get("stream") or last).strip()
    return last


# --- busybox ---------------------------------------------------------------------------


def elf_is_static(data: bytes) -> bool:
    """True for a 64/32-bit ELF executable without a program interpreter (PT_INTERP)."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return False
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    if is64:
        (phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    else:
        (phoff,) = struct.unpack_from(endian + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x2A)
    for i in range(phnum):
        offset = phoff + i * phentsize
        if offset + 4 > len(data):
            return False
        (p_type,) = struct.unpack_from(endian + "I", data, offset)
        if p_type == 3:  # PT_INTERP: needs a dynamic loader
            return False
    return True


def find_static_busybox() -> Path | None:
    seen: set[Path] = set()
    which = shutil.which("busybox")
    for candidate in (*_BUSYBOX_CANDIDATES, *([which] if which else [])):
        path = Path(candidate).resolve()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        with open(path, "rb") as handle:
            head = handle.read(64 * 1024)
        if elf_is_static(head):
            return path
    return None


def _busybox_binary() -> Path:
    path = find_static_busybox()
    if path is None:
        apt_install(["busybox-static"], why="no static busybox on this machine")
        path = find_static_busybox()
    if path is None:
        raise TestbedError("busybox-static was installed but no static busybox binary was found")
    return path


def busybox_recipe(binary: Path | None = None) -> tuple[BusyboxRecipe, bytes]:
    """The recipe of the busybox image for this machine's busybox, and the binary's bytes."""
    path = binary or _busybox_binary()
    data = path.read_bytes()
    try:
        listed = subprocess.run([str(path), "--list-full"], capture_output=True, check=True, timeout=30).stdout.decode()
    except (OSError, subprocess.SubprocessError) as exc:
        raise TestbedError(f"cannot list the applets of {path}: {exc}") from exc
    applets = tuple(sorted({line.strip() for line in listed.splitlines() if line.strip()}))
    return BusyboxRecipe(binary_sha256=hashlib.sha256(data).hexdigest(), applets=applets), data


def _tar_add(
    tar: tarfile.TarFile,
    name: str,
    *,
    data: bytes | None = None,
    mode: int = 0o755,
    kind: bytes = tarfile.REGTYPE,
    target: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = _FIXED_MTIME
    info.mode = mode
    info.type = kind
    info.linkname = target
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def busybox_tar(binary: bytes, applets: tuple[str, ...]) -> bytes:
    """The root file system of the busybox image, as an uncompressed tar."""
    links = busybox_links(applets)
    dirs = {"bin", "etc", "root", "tmp", "var", "usr"}
    for path, _target in links:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory in sorted(dirs):
            _tar_add(tar, directory, mode=0o1777 if directory == "tmp" else 0o755, kind=tarfile.DIRTYPE)
        _tar_add(tar, "bin/busybox", data=binary)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        _tar_add(tar, "etc/passwd", data=passwd, mode=0o644)
        _tar_add(tar, "etc/group", data=b"root:x:0:\nnogroup:x:65534:\n", mode=0o644)
        for path, target in links:
            _tar_add(tar, path, mode=0o777, kind=tarfile.SYMTYPE, target=target)
    return buf.getvalue()


def ensure_busybox(port: SdkDocker) -> str:
    """Import the busybox image unless its recipe tag exists; return its ``:<hash>`` ref."""
    recipe, binary = busybox_recipe()
    if _exists(port, recipe.ref):
        return recipe.ref
    started = time.monotonic()
    with _step("import the busybox image"):
        answer = port.api.import_image(
            src=busybox_tar(binary, recipe.applets),
            repository=recipe.repository,
            tag=recipe.digest,
            changes=recipe.changes(recipe.digest),
        )
        _check_stream(answer, "import the busybox image")
        port.api.tag(recipe.ref, recipe.repository, "latest", force=True)
    log.info("built %s in %.1f s", recipe.ref, time.monotonic() - started)
    return recipe.ref


# --- the database images -------------------------------------------------------------------


def _exists(port: SdkDocker, ref: str) -> bool:
    with _step(f"look for image {ref}"):
        return port.image_exists(ref)


def _scratch_dir() -> Path:
    for candidate in (Path("/var/tmp"), Path(tempfile.gettempdir())):
        if candidate.is_dir():
            return Path(tempfile.mkdtemp(prefix="cargohold-testbed-", dir=candidate))
    return Path(tempfile.mkdtemp(prefix="cargohold-testbed-"))


def ensure_base_image(port: SdkDocker, recipe: BaseRecipe | None = None) -> str:
    """Build the Debian base with every test database unless its tag exists (~1 min)."""
    recipe = recipe or BaseRecipe()
    if _exists(port, recipe.ref):
        return recipe.ref
    if shutil.which("mmdebstrap") is None:
        apt_install(["mmdebstrap"], why="mmdebstrap is needed to build the database images")
    started = time.monotonic()
    scratch = _scratch_dir()
    try:
        output = scratch / "rootfs.tar"
        run_logged(recipe.mmdebstrap_args(str(output)), state_dir() / "images.log")
        built = time.monotonic()
        with _step("import the database base image"):
            answer = port.api.import_image(
                src=str(output),
                repository=recipe.repository,
                tag=recipe.digest,
                changes=recipe.changes(recipe.digest),
            )
            _check_stream(answer, "import the database base image")
        log.info(
            "built %s in %.1f s (mmdebstrap %.1f s, %d MB)",
            recipe.ref,
            time.monotonic() - started,
            built - started,
            output.stat().st_size >> 20,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return recipe.ref


def file_tar(name: str, text: str, *, mode: int = 0o755) -> bytes:
    """A tar holding one file (for the archive API)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _tar_add(tar, name, data=text.encode(), mode=mode)
    return buf.getvalue()


def ensure_database_image(port: SdkDocker, recipe: DatabaseRecipe) -> str:
    """Derive a database image from the base unless its recipe tag exists."""
    if _exists(port, recipe.ref):
        return recipe.ref
    base = ensure_base_image(port, recipe.base)
    started = time.monotonic()
    directory, _, filename = ENTRYPOINT_PATH.rpartition("/")
    name = f"chtb-build-{recipe.name}-{secrets.token_hex(4)}"
    with _step(f"derive {recipe.ref} from {base}"):
        cid = port.create_container(base, name=name, command=["/bin/true"], network_mode="none")
        try:
            port.put_archive(cid, directory, file_tar(filename, recipe.entrypoint()))
            port.api.commit(
                cid,
                repository=recipe.repository,
                tag=recipe.digest,
                changes=recipe.changes(recipe.digest),
                conf=recipe.commit_config(),
                pause=False,
            )
            port.api.tag(recipe.ref, recipe.repository, "latest", force=True)
        finally:
            with contextlib.suppress(CargoholdError):
                port.remove_container(cid, force=True)
    log.info("built %s in %.1f s", recipe.ref, time.monotonic() - started)
    return recipe.ref


def copy_image(ref: str, source: SdkDocker, target: SdkDocker) -> None:
    """Move an image from one engine to another (``docker save | docker load``)."""
    with _step(f"copy image {ref}"):
        stream = source.api.get_image(ref, chunk_size=2 << 20)
        _check_stream(target.api.load_image(stream), f"load image {ref}")


# --- entry points ------------------------------------------------------------------------------


def image_ref(name: str) -> str:
    """The ``repository:<hash>`` the image ``name`` has when it is up to date."""
    if name == "busybox":
        return busybox_recipe()[0].ref
    if name in DATABASES:
        return DATABASES[name].ref
    raise TestbedError(f"unknown test image {name!r}; known: {', '.join(IMAGE_NAMES)}")


def _builder(name: str) -> Callable[[SdkDocker], str]:
    if name == "busybox":
        return ensure_busybox
    recipe = DATABASES[name]
    return lambda port: ensure_database_image(port, recipe)


def ensure_images(
    which: Iterable[str] = IMAGE_NAMES, *, host: str | None = None, copy_from: str | None = None
) -> dict[str, str]:
    """Make sure the named test images exist on the engine at ``host``; return name → ref.

    Only what is missing is built. With ``copy_from`` (another engine's URL), missing
    database images present there are copied instead of built.
    """
    names = list(dict.fromkeys(which))
    unknown = [n for n in names if n not in IMAGE_NAMES]
    if unknown:
        raise TestbedError(f"unknown test image(s) {', '.join(unknown)}; known: {', '.join(IMAGE_NAMES)}")
    port = port_for(host)
    try:
        refs = {name: image_ref(name) for name in names}
        missing = [name for name in names if not _exists(port, refs[name])]
        if not missing:
            return refs
        with file_lock("images"):
            for name in missing:
                if copy_from is not None and name != "busybox":
                    source = port_for(copy_from)
                    try:
                        if _exists(source, refs[name]) and not _exists(port, refs[name]):
                            copy_image(refs[name], source, port)
                            with _step(f"tag {refs[name]}"):
                                repo = refs[name].rsplit(":", 1)[0]
                                port.api.tag(refs[name], repo, "latest", force=True)
                    finally:
                        source.close()
                refs[name] = _builder(name)(port)
        return refs
    finally:
        port.close()


def image_status(host: str | None = None) -> dict[str, tuple[str, bool]]:
    """name → (up-to-date ref, present on the engine) for every test image."""
    port = port_for(host)
    try:
        out: dict[str, tuple[str, bool]] = {}
        for name in IMAGE_NAMES:
            ref = image_ref(name)
            try:
                present = port.image_exists(ref)
            except ImageNotFound:
                present = False
            except CargoholdError as exc:
                raise TestbedError(f"look for image {ref}: {exc}") from exc
            out[name] = (ref, present)
        return out
    finally:
        port.close()
