"""Backends on real servers for the conformance suite.

Every ``servers_*.py`` module of this folder may define pytest fixtures that yield a fresh,
empty backend on a server the project's test bed starts (``cargohold.testbed``), and a
``SERVER_BACKENDS`` dict naming them (kind shown in test ids -> fixture name). They are
imported here so that pytest sees their fixtures and the suite parametrizes over them.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def _probe() -> None: ...


_FixtureDef = type(_probe)

#: Kind (as shown in test ids) -> name of the fixture that yields a fresh, empty backend.
SERVER_BACKENDS: dict[str, str] = {}

for _info in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _info.name.startswith("servers_"):
        _mod = importlib.import_module(f"{__package__}.{_info.name}")
        SERVER_BACKENDS.update(getattr(_mod, "SERVER_BACKENDS", {}))
        _fixtures: dict[str, Any] = {k: v for k, v in vars(_mod).items() if isinstance(v, _FixtureDef)}
        globals().update(_fixtures)
