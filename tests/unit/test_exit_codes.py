"""Every error class maps to a documented exit code, most specific first."""

from __future__ import annotations

import inspect

from cargohold import errors
from cargohold.cli import exit_codes


def test_specific_codes() -> None:
    assert exit_codes.exit_code_for(errors.VolumeNotFound("x")) == exit_codes.NOT_FOUND
    assert exit_codes.exit_code_for(errors.EngineUnreachable("x")) == exit_codes.ENGINE_UNREACHABLE
    assert exit_codes.exit_code_for(errors.EnginePermissionDenied("x")) == exit_codes.PERMISSION_DENIED
    assert exit_codes.exit_code_for(errors.EngineConfigError("x")) == exit_codes.USAGE
    assert exit_codes.exit_code_for(errors.WrongPassword("x")) == exit_codes.WRONG_PASSWORD
    assert exit_codes.exit_code_for(errors.DockerAPIError("x")) == exit_codes.ENGINE_ERROR
    assert exit_codes.exit_code_for(ValueError("bug")) == exit_codes.INTERNAL
    assert exit_codes.exit_code_for(KeyboardInterrupt()) == exit_codes.INTERRUPTED


def test_every_error_class_has_a_non_internal_code() -> None:
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.CargoholdError) and cls is not errors.CargoholdError:
            code = exit_codes.exit_code_for(cls("x"))
            assert code not in (exit_codes.OK, exit_codes.INTERNAL), cls


def test_message_and_hint() -> None:
    err = errors.VolumeNotFound("volume 'x' not found")
    assert str(err) == "volume 'x' not found — list volumes with `cargohold volumes`"
    assert str(errors.UsageError("plain")) == "plain"
    assert "\n" not in str(errors.EngineUnreachable("no engine"))
