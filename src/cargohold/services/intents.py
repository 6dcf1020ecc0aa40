"""A journal of what cargohold is about to do to containers, so nothing stays stopped.

Before cargohold stops or pauses a container it writes an *intent* file (fsync'd) naming
the engine, the containers, what it does to each and which process does it. When the work
is done and every container runs again, the intent is deleted. If the process dies in
between (SIGKILL, crash, power loss), the next cargohold invocation — any command — or
``cargohold recover`` finds the intent of a dead process and puts every container back
the way it was.

The journal lives in ``$CARGOHOLD_STATE_DIR`` or ``$XDG_STATE_HOME/cargohold`` (default
``~/.local/state/cargohold``), folder ``intents/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cargohold.docker.connect import Endpoint
from cargohold.docker.port import DockerPort
from cargohold.errors import DockerError, DockerNotFound
from cargohold.procinfo import my_start, process_gone


def state_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("CARGOHOLD_STATE_DIR"):
        return Path(env["CARGOHOLD_STATE_DIR"])
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".local" / "state")
    return Path(base) / "cargohold"


@dataclass
class Action:
    container_id: str
    container_name: str
    #: "stop" or "pause"
    action: str
    #: False until cargohold has put the container back.
    undone: bool = False


@dataclass
class Intent:
    id: str
    pid: int
    proc_start: str
    hostname: str
    engine_host: str
    engine_tls_verify: bool
    engine_cert_path: str | None
    engine_id: str
    purpose: str
    created: float
    actions: list[Action] = field(default_factory=list)

    def endpoint(self) -> Endpoint:
        return Endpoint(
            host=self.engine_host,
            origin="recorded intent",
            tls_verify=self.engine_tls_verify,
            cert_path=self.engine_cert_path,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Intent:
        actions = [Action(**a) for a in data.pop("actions", [])]
        return cls(**data, actions=actions)


class IntentJournal:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or state_dir() / "intents"

    def _path(self, intent_id: str) -> Path:
        return self.directory / f"{intent_id}.json"

    def new(self, *, endpoint: Endpoint, engine_id: str, purpose: str) -> Intent:
        return Intent(
            id=f"{int(time.time())}-{uuid.uuid4().hex[:12]}",
            pid=os.getpid(),
            proc_start=str(my_start() or ""),
            hostname=socket.gethostname(),
            engine_host=endpoint.host,
            engine_tls_verify=endpoint.tls_verify,
            engine_cert_path=endpoint.cert_path,
            engine_id=engine_id,
            purpose=purpose,
            created=time.time(),
        )

    def write(self, intent: Intent) -> None:
        """Durably (re)write an intent: temp file, fsync, rename, fsync of the folder."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self._path(intent.id)
        tmp = final.with_suffix(f".tmp-{os.getpid()}")
        data = json.dumps(intent.to_json(), indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def clear(self, intent: Intent) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(intent.id).unlink()

    def pending(self) -> list[Intent]:
        if not self.directory.is_dir():
            return []
        out = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                out.append(Intent.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # unreadable: left for a human; never acted on
        return out

    def orphaned(self) -> list[Intent]:
        """Intents whose process died on this host before putting containers back."""
        host = socket.gethostname()
        return [
            i
            for i in self.pending()
            if i.hostname != host or process_gone(i.pid, int(i.proc_start) if i.proc_start.isdigit() else None)
        ]


@dataclass(frozen=True, slots=True)
class Recovered:
    intent_id: str
    container: str
    action: str
    #: "started", "unpaused", "already running", "gone", or "failed: ..."
    outcome: str


def undo(docker: DockerPort, action: Action) -> str:
    """Put one container back; return what happened."""
    try:
        info = docker.inspect_container(action.container_id)
    except DockerNotFound:
        return "gone"
    if action.action == "pause":
        if info.state == "paused":
            docker.unpause(action.container_id)
            return "unpaused"
        return "already running" if info.state == "running" else f"left {info.state}"
    if info.state == "paused":
        docker.unpause(action.container_id)
        return "unpaused"
    if info.state in ("running", "restarting"):
        return "already running"
    docker.start(action.container_id)
    return "started"


def recover(
    journal: IntentJournal,
    connect: Callable[[Endpoint], DockerPort],
    *,
    intents: list[Intent] | None = None,
) -> list[Recovered]:
    """Undo the actions of orphaned intents; clear each intent once all its containers are back."""
    results: list[Recovered] = []
    for intent in journal.orphaned() if intents is None else intents:
        todo = [a for a in intent.actions if not a.undone]
        if not todo:
            journal.clear(intent)
            continue
        try:
            docker = connect(intent.endpoint())
        except DockerError as err:
            results += [Recovered(intent.id, a.container_name, a.action, f"failed: {err}") for a in todo]
            continue
        failed = False
        # Put containers back in the order they were stopped, reversed: first stopped, last started.
        for action in reversed(todo):
            try:
                outcome = undo(docker, action)
                action.undone = True
            except DockerError as err:
                outcome, failed = f"failed: {err}", True
            results.append(Recovered(intent.id, action.container_name, action.action, outcome))
        if failed:
            journal.write(intent)
        else:
            journal.clear(intent)
    return results
