"""State shared by every command: global options and lazily opened resources."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer

from cargohold.docker.port import DockerPort


@dataclass
class AppState:
    debug: bool = False
    host: str | None = None
    context: str | None = None
    _docker: DockerPort | None = field(default=None, repr=False)

    def docker(self) -> DockerPort:
        """The Docker port for --host/--context/DOCKER_HOST, connected on first use."""
        if self._docker is None:
            from cargohold.docker.sdk import connect

            self._docker = connect(host=self.host, context=self.context)
        return self._docker


def state(ctx: typer.Context) -> AppState:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppState):  # commands invoked without the root callback
        obj = AppState()
        ctx.find_root().obj = obj
    return obj
