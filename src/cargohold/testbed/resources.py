"""Containers and volumes the tests create: labelled, named uniquely, always removed.

Every resource gets the label ``cargohold.test=1`` and an owner label naming the
process that made it (``cargohold.test.owner=HOST:PID``). :class:`Resources` removes
what it created at the end of each test; :func:`sweep` removes what a session (or a
crashed earlier one) left behind, without touching resources of test sessions that
are still running in parallel on the same engine.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cargohold.docker.port import DockerPort
from cargohold.errors import CargoholdError, DockerNotFound, TestbedError
from cargohold.model.engine import ExecResult
from cargohold.testbed.recipes import DatabaseRecipe

TEST_LABEL = "cargohold.test"
OWNER_LABEL = "cargohold.test.owner"
NAME_PREFIX = "chtest"

_PREFIX_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def unique_name(prefix: str) -> str:
    """``chtest-<prefix>-<8 random hex>``: valid for containers and volumes alike."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"name prefix {prefix!r} may hold only letters, digits, '_', '.', '-'")
    return f"{NAME_PREFIX}-{prefix}-{secrets.token_hex(4)}"


def owner_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def test_labels(owner: str | None = None) -> dict[str, str]:
    return {TEST_LABEL: "1", OWNER_LABEL: owner or owner_id()}


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Test resources without an owner label are swept once they are this old (seconds):
#: younger ones may belong to a test that is running right now in another session.
UNOWNED_GRACE = 1800.0


def created_epoch(created: str) -> float | None:
    """Seconds since the epoch from the engine's ``Created``: a number, or RFC 3339 text."""
    text = created.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    match = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$", text)
    if not match:
        return None
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    try:
        return datetime.fromisoformat(match.group(1) + zone).timestamp()
    except ValueError:
        return None


def is_leftover(
    labels: Mapping[str, str],
    *,
    owner: str,
    created: str = "",
    hostname: str | None = None,
    now: float | None = None,
) -> bool:
    """Whether a resource with these labels is ours to sweep.

    Ours: test resources of ``owner``; those of owners on this host whose process is
    gone; test resources without an owner label once older than :data:`UNOWNED_GRACE`
    (or of unknown age). Not ours: non-test resources and those of live test sessions
    (possibly another engineer's run on the same engine).
    """
    if labels.get(TEST_LABEL) != "1":
        return False
    who = labels.get(OWNER_LABEL, "")
    if who == owner:
        return True
    if not who:
        born = created_epoch(created)
        return born is None or (time.time() if now is None else now) - born > UNOWNED_GRACE
    host, _, pid_text = who.rpartition(":")
    if host != (hostname or socket.gethostname()) or not pid_text.isdigit():
        return False
    return not _pid_running(int(pid_text))


@dataclass
class SweepResult:
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sweep(port: DockerPort, *, owner: str | None = None) -> SweepResult:
    """Force-remove leftover test containers, then leftover test volumes."""
    me = owner or owner_id()
    result = SweepResult()
    for ctr in port.list_containers(all=True):
        if is_leftover(ctr.labels, owner=me, created=ctr.created):
            try:
                port.remove_container(ctr.id, force=True)
                result.containers.append(ctr.name)
            except DockerNotFound:
                pass
            except CargoholdError as exc:
                result.errors.append(f"container {ctr.name}: {exc}")
    for vol in port.list_volumes():
        if is_leftover(vol.labels, owner=me, created=vol.created_at):
            try:
                port.remove_volume(vol.name, force=True)
                result.volumes.append(vol.name)
            except DockerNotFound:
                pass
            except CargoholdError as exc:
                result.errors.append(f"volume {vol.name}: {exc}")
    return result


class Resources:
    """Creates labelled test containers and volumes on one engine and removes them all.

    Use :meth:`volume`, :meth:`container` and :meth:`run`, or :meth:`track_container` /
    :meth:`track_volume` for things made another way; :meth:`cleanup` force-removes
    every tracked container, then every tracked volume, and ignores those already gone.
    """

    def __init__(self, port: DockerPort, *, owner: str | None = None) -> None:
        self.port = port
        self.labels = test_labels(owner)
        self.containers: list[str] = []
        self.volumes: list[str] = []

    @staticmethod
    def name(prefix: str) -> str:
        return unique_name(prefix)

    def track_container(self, name_or_id: str) -> str:
        self.containers.append(name_or_id)
        return name_or_id

    def track_volume(self, name: str) -> str:
        self.volumes.append(name)
        return name

    def volume(
        self,
        prefix: str = "vol",
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        driver: str = "local",
        options: Mapping[str, str] | None = None,
    ) -> str:
        """Create a labelled named volume; return its name."""
        vol_name = name or unique_name(prefix)
        self.track_volume(vol_name)
        self.port.create_volume(vol_name, driver=driver, options=options, labels={**self.labels, **(labels or {})})
        return vol_name

    def container(
        self,
        image: str,
        *,
        prefix: str = "ctr",
        name: str | None = None,
        command: Sequence[str] | None = None,
        entrypoint: Sequence[str] | None = None,
        volumes: Mapping[str, str] | None = None,
        mounts: Sequence[Mapping[str, object]] = (),
        labels: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | None = None,
        network_mode: str = "none",
        user: str | None = None,
        working_dir: str | None = None,
    ) -> str:
        """Create (not start) a labelled container; return its name.

        ``volumes`` maps volume name → path inside, added to ``mounts``.
        """
        ctr_name = name or unique_name(prefix)
        all_mounts = [dict(m) for m in mounts]
        all_mounts += [
            {"Type": "volume", "Source": vol, "Target": target, "ReadOnly": False}
            for vol, target in (volumes or {}).items()
        ]
        self.track_container(ctr_name)
        self.port.create_container(
            image,
            name=ctr_name,
            command=command,
            entrypoint=entrypoint,
            mounts=all_mounts,
            labels={**self.labels, **(labels or {})},
            environment=environment,
            network_mode=network_mode,
            user=user,
            working_dir=working_dir,
        )
        return ctr_name

    def run(self, image: str, **kwargs: Any) -> str:
        """Create and start a labelled container (same arguments as :meth:`container`)."""
        ctr_name = self.container(image, **kwargs)
        self.port.start(ctr_name)
        return ctr_name

    def cleanup(self) -> list[str]:
        """Remove everything tracked (force); return the errors, if any."""
        errors: list[str] = []
        for ctr in reversed(self.containers):
            try:
                self.port.remove_container(ctr, force=True, volumes=True)  # and its anonymous volumes
            except DockerNotFound:
                pass
            except CargoholdError as exc:
                errors.append(f"container {ctr}: {exc}")
        for vol in reversed(self.volumes):
            try:
                self.port.remove_volume(vol, force=True)
            except DockerNotFound:
                pass
            except CargoholdError as exc:
                errors.append(f"volume {vol}: {exc}")
        self.containers.clear()
        self.volumes.clear()
        return errors


def wait_ready(
    port: DockerPort,
    container: str,
    recipe: DatabaseRecipe,
    *,
    server_port: int | None = None,
    timeout: float = 90.0,
) -> float:
    """Wait until the database in ``container`` answers its readiness command.

    Returns the seconds waited. Raises :class:`TestbedError` with the container's log
    tail when it stops or does not get ready in time.
    """
    started = time.monotonic()
    command = recipe.ready(server_port)
    last: ExecResult | None = None
    while time.monotonic() - started < timeout:
        state = port.inspect_container(container).state
        if state != "running":
            raise TestbedError(
                f"{recipe.name} container {container} is {state or 'gone'}: {_one_line(port.logs(container, tail=15))}"
            )
        last = port.exec(container, command)
        if last.exit_code == 0:
            return time.monotonic() - started
        time.sleep(0.25)
    detail = last.stderr.decode(errors="replace").strip() if last else ""
    raise TestbedError(
        f"{recipe.name} in {container} not ready after {timeout:.0f} s ({detail}): "
        f"{_one_line(port.logs(container, tail=15))}"
    )


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-1500:]
