"""The one place where errors become exit codes (documented in README.md)."""

from __future__ import annotations

from cargohold import errors as e

OK = 0
#: A command ran and found a problem it reports as its result (check found damage,
#: audit found findings at or above --fail-on, verify failed).
FINDINGS = 1
USAGE = 2
ENGINE_UNREACHABLE = 3
PERMISSION_DENIED = 4
NOT_FOUND = 5
REPOSITORY = 6
WRONG_PASSWORD = 7
LOCKED = 8
INTEGRITY = 9
CONFLICT = 10
CONSISTENCY = 11
STORAGE = 12
TESTBED = 13
ENGINE_ERROR = 14
INTERNAL = 70
INTERRUPTED = 130

# Most specific first: the first class in an error's MRO found here wins.
_TABLE: dict[type[e.CargoholdError], int] = {
    e.UsageError: USAGE,
    e.EngineUnreachable: ENGINE_UNREACHABLE,
    e.EngineConfigError: USAGE,
    e.EnginePermissionDenied: PERMISSION_DENIED,
    e.DockerNotFound: NOT_FOUND,
    e.DockerConflict: CONFLICT,
    e.DockerError: ENGINE_ERROR,
    e.ObjectNotFound: NOT_FOUND,
    e.BackendError: STORAGE,
    e.RepositoryNotFound: REPOSITORY,
    e.RepositoryExists: REPOSITORY,
    e.UnsupportedFormat: REPOSITORY,
    e.WrongPassword: WRONG_PASSWORD,
    e.RepositoryLocked: LOCKED,
    e.ConfigDamaged: INTEGRITY,
    e.KeyFileDamaged: INTEGRITY,
    e.IntegrityError: INTEGRITY,
    e.SnapshotNotFound: NOT_FOUND,
    e.AmbiguousSnapshot: USAGE,
    e.RestoreConflict: CONFLICT,
    e.RepositoryError: REPOSITORY,
    e.ConsistencyError: CONSISTENCY,
    e.TestbedError: TESTBED,
    e.CargoholdError: INTERNAL,
}


def exit_code_for(err: BaseException) -> int:
    """Exit code of an error; unexpected exceptions are internal errors."""
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED
    for cls in type(err).__mro__:
        code = _TABLE.get(cls)
        if code is not None:
            return code
    return INTERNAL
