"""cargohold's error tree.

Every error cargohold raises on purpose derives from :class:`CargoholdError`. Lower
libraries' exceptions (docker-py, requests, OS errors of a backend) are translated at
the boundary of the layer that calls them, so the rest of the code, and the CLI that
maps errors to exit codes (``cargohold.cli.exit_codes``), only ever sees this tree::

    CargoholdError
    ├── UsageError                  bad argument or input from the user
    │   └── ComposeError            a compose file cannot be read (names file and line)
    ├── DockerError                 the Docker port (cargohold.docker)
    │   ├── EngineUnreachable       nothing answers where the engine should be
    │   ├── EngineConfigError       malformed DOCKER_HOST / unknown context
    │   ├── EnginePermissionDenied  the socket exists but we may not use it
    │   ├── DockerNotFound          VolumeNotFound, ContainerNotFound, ImageNotFound
    │   ├── DockerConflict          name in use, volume in use, container state
    │   └── DockerAPIError          any other answer of the engine
    ├── BackendError                storage backends (cargohold.backends)
    │   ├── ObjectNotFound
    │   ├── ObjectExists
    │   └── BackendIOError          transient or permanent I/O failure
    ├── RepositoryError             the repository engine (cargohold.repo)
    │   ├── RepositoryNotFound / RepositoryExists / UnsupportedFormat
    │   ├── WrongPassword
    │   ├── RepositoryLocked
    │   ├── IntegrityError          damaged data found while reading
    │   │   ├── ConfigDamaged       the ``config`` object is damaged or missing
    │   │   └── KeyFileDamaged      no key slot opens and at least one is damaged
    │   ├── SnapshotNotFound / AmbiguousSnapshot
    │   └── RestoreConflict         a restore target is (in, around) the snapshot's live source
    ├── ConsistencyError            hooks, stop/pause, dumps (later issues)
    └── TestbedError                the engine/image test bed

Each error carries a one-line ``message`` and an optional ``hint`` that tells the user
what to do; ``str(err)`` joins both.
"""

from __future__ import annotations


class CargoholdError(Exception):
    """Root of every error cargohold raises on purpose."""

    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} — {self.hint}"
        return self.message


class UsageError(CargoholdError):
    """The user's arguments or input files are wrong."""


class ComposeError(UsageError):
    """A compose file (or its ``.env``) is malformed, missing or cannot be interpolated.

    ``file`` and ``line`` (1-based, when known) say where; the message starts with them.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(where + message)
        self.file = file
        self.line = line
        self.reason = message


# --- Docker port -------------------------------------------------------------------


class DockerError(CargoholdError):
    """An error talking to the Docker engine."""


class EngineUnreachable(DockerError):
    default_hint = (
        "start the Docker engine or point DOCKER_HOST / DOCKER_CONTEXT at one "
        "(`make engine` starts a local test engine)"
    )


class EngineConfigError(DockerError):
    default_hint = "use unix:///path/docker.sock, tcp://HOST:PORT or ssh://USER@HOST in DOCKER_HOST"


class EnginePermissionDenied(DockerError):
    default_hint = "run as root or as a member of the 'docker' group, or use a socket you may open"


class DockerNotFound(DockerError):
    """A named Docker object does not exist."""


class VolumeNotFound(DockerNotFound):
    default_hint = "list volumes with `cargohold volumes`"


class ContainerNotFound(DockerNotFound):
    default_hint = "list containers with `cargohold mounts`"


class ImageNotFound(DockerNotFound):
    default_hint = "pull or build the image first"


class DockerConflict(DockerError):
    """The object exists already, is in use, or is in the wrong state."""


class DockerAPIError(DockerError):
    """Any other error answer of the engine."""


# --- storage backends --------------------------------------------------------------


class BackendError(CargoholdError):
    """An error of a storage backend."""


class ObjectNotFound(BackendError):
    pass


class ObjectExists(BackendError):
    pass


class BackendIOError(BackendError):
    """I/O failed; ``transient`` says whether retrying may help."""

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient

    @property
    def unreachable(self) -> bool:
        """The store, not the object, failed: the error says nothing about the data there
        (a restore or check fails on it instead of reporting damage)."""
        return self.transient


class StoreUnreachable(BackendIOError):
    """The store kept failing transiently for the whole retry budget."""

    @property
    def unreachable(self) -> bool:
        return True


# --- repository --------------------------------------------------------------------


class RepositoryError(CargoholdError):
    """An error of the repository engine."""


class RepositoryNotFound(RepositoryError):
    default_hint = "create it with `cargohold init` or check --repo / CARGOHOLD_REPO"


class RepositoryExists(RepositoryError):
    default_hint = "use another location, or use the repository that is there"


class UnsupportedFormat(RepositoryError):
    default_hint = "upgrade cargohold to a version that knows this repository format"


class WrongPassword(RepositoryError):
    default_hint = "check CARGOHOLD_PASSWORD or --password-file"


class RepositoryLocked(RepositoryError):
    pass


class IntegrityError(RepositoryError):
    default_hint = "run `cargohold check --read-data` to see what is damaged"


class ConfigDamaged(IntegrityError):
    """The repository's ``config`` object is damaged (or missing while key slots exist).

    ``recovered`` holds the fields that could still be read from it (name -> value)."""

    default_hint = (
        "run `cargohold repair config` to restore it from the verified copy in a key slot "
        "(or `cargohold key import FILE` with an exported key)"
    )

    def __init__(self, message: str, *, hint: str | None = None, recovered: dict[str, object] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.recovered = dict(recovered or {})


class KeyFileDamaged(IntegrityError):
    """No key slot opens with the password and at least one key file is damaged: the
    password may be right and its key file broken, so this is not reported as a wrong password."""

    default_hint = (
        "open the repository with the password of another key slot, or import an exported key "
        "with `cargohold key import FILE`; then `cargohold key remove` the damaged slot"
    )


class SnapshotNotFound(RepositoryError):
    default_hint = "list snapshots with `cargohold snapshots`"


class AmbiguousSnapshot(RepositoryError):
    default_hint = "give more characters of the snapshot id"


class RestoreConflict(RepositoryError):
    """A restore would write over, into or around the live source the snapshot was taken of."""

    default_hint = "give --force to restore over the source, or restore into another --target"


# --- consistency / test bed --------------------------------------------------------


class ConsistencyError(CargoholdError):
    """A hook, stop/pause or dump failed."""


class TestbedError(CargoholdError):
    """The engine or image test bed could not be set up."""

    __test__ = False  # not a pytest test class
