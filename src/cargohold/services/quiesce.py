"""Hold containers still while their volumes are read: hooks, pause, stop — and always undo.

:class:`Quiescer.hold` is a context manager around the read of one source:

1. pre-hooks run in every running container that has one; a failing hook aborts (the
   post-hooks of the containers whose pre-hook ran are still run);
2. the intent is written to the journal (:mod:`cargohold.services.intents`), then the
   containers are paused or stopped — stopped in reverse start order, so dependants go first;
3. the caller reads the data;
4. containers are unpaused or started again in their original start order, post-hooks run,
   the intent is cleared. If putting a container back fails, the intent stays for
   ``cargohold recover`` and the error is raised.

It reports how long each container was paused or stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cargohold.docker.connect import Endpoint
from cargohold.docker.port import DockerPort
from cargohold.errors import ConsistencyError, DockerError
from cargohold.model.consistency import Decision, Mode
from cargohold.model.engine import ContainerInfo
from cargohold.services.intents import Action, IntentJournal, undo

#: Seconds docker gives a container to stop before it kills it.
STOP_TIMEOUT = 30


@dataclass(frozen=True, slots=True)
class Participant:
    container: ContainerInfo
    decision: Decision


@dataclass
class Window:
    """What :meth:`Quiescer.hold` did, filled while it runs."""

    #: container name -> seconds paused or stopped
    downtime: dict[str, float] = field(default_factory=dict)
    #: container name -> "pause" | "stop"
    actions: dict[str, str] = field(default_factory=dict)
    hooks_run: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _tail(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


class Quiescer:
    def __init__(
        self,
        docker: DockerPort,
        journal: IntentJournal,
        *,
        endpoint: Endpoint,
        engine_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.docker = docker
        self.journal = journal
        self.endpoint = endpoint
        self.engine_id = engine_id
        self.clock = clock

    def _hook(self, container: ContainerInfo, command: str, which: str, window: Window) -> None:
        result = self.docker.exec(container.id, ["sh", "-c", command])
        window.hooks_run.append(f"{container.name}:{which}")
        if result.exit_code != 0:
            detail = _tail(result.stderr) or _tail(result.stdout)
            raise ConsistencyError(
                f"{which}-hook of container {container.name!r} failed with exit code {result.exit_code}"
                + (f": {detail}" if detail else ""),
                hint="fix the hook command in its label, or remove the label",
            )

    def _run_post_hooks(self, done: Sequence[Participant], window: Window) -> list[str]:
        errors = []
        for p in done:
            if p.decision.post_hook:
                try:
                    self._hook(p.container, p.decision.post_hook, "post", window)
                except (ConsistencyError, DockerError) as err:
                    errors.append(str(err))
        return errors

    @contextmanager
    def hold(
        self,
        participants: Sequence[Participant],
        *,
        purpose: str,
        mode: Mode,
        before_freeze: Callable[[], None] | None = None,
    ) -> Iterator[Window]:
        """Quiesce ``participants`` with ``mode`` (pause/stop/none/dump) around the caller's read.

        ``before_freeze`` runs after the pre-hooks, while every container still runs (dumps).
        """
        window = Window()
        running = [p for p in participants if p.container.state == "running"]
        pre_done: list[Participant] = []
        try:
            for p in running:
                if p.decision.pre_hook:
                    self._hook(p.container, p.decision.pre_hook, "pre", window)
                pre_done.append(p)
            if before_freeze is not None:
                before_freeze()
        except BaseException:
            self._run_post_hooks(pre_done, window)
            raise

        action = {Mode.PAUSE: "pause", Mode.STOP: "stop"}.get(mode)
        # Stop dependants first: latest started goes first, and comes back last.
        ordered = sorted(running, key=lambda p: p.container.started_at, reverse=True) if action else []
        intent = self.journal.new(endpoint=self.endpoint, engine_id=self.engine_id, purpose=purpose)
        intent.actions = [Action(p.container.id, p.container.name, action or "") for p in ordered]
        if ordered:
            self.journal.write(intent)
        since: dict[str, float] = {}
        body_error: BaseException | None = None
        try:
            for p in ordered:
                if action == "pause":
                    self.docker.pause(p.container.id)
                else:
                    self.docker.stop(p.container.id, timeout=STOP_TIMEOUT)
                since[p.container.id] = self.clock()
                window.actions[p.container.name] = action or ""
            yield window
        except BaseException as err:
            body_error = err
            raise
        finally:
            failures = []
            for act, p in zip(reversed(intent.actions), reversed(ordered), strict=True):
                try:
                    undo(self.docker, act)
                    act.undone = True
                except DockerError as err:
                    failures.append(f"{p.container.name}: {err}")
                if p.container.id in since:
                    window.downtime[p.container.name] = self.clock() - since[p.container.id]
            hook_errors = self._run_post_hooks(pre_done, window)
            if failures:
                self.journal.write(intent)
                if body_error is None:
                    raise ConsistencyError(
                        "could not put containers back: " + "; ".join(failures),
                        hint="run `cargohold recover` once the engine answers",
                    )
            else:
                self.journal.clear(intent)
            window.warnings.extend(hook_errors)
