"""State shared by every command: global options and lazily opened resources."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

import typer

from cargohold.docker.port import DockerPort


@dataclass
class AppState:
    debug: bool = False
    host: str | None = None
    context: str | None = None
    #: Options of s3:// repository URLs given on the command line (endpoint, addressing).
    s3_options: dict[str, str] = field(default_factory=dict)
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


#: The state of the command being run (set by the root callback), for helpers that are not
#: handed the Typer context (where the repository is: :func:`cargohold.cli.common.repo_url`).
current_state: ContextVar[AppState | None] = ContextVar("cargohold_cli_state", default=None)
