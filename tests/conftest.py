"""Shared test helpers (no engine needed here; engine fixtures live in tests/integration)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cargohold.testbed.resources import unique_name as _unique_name


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory: ``unique_name("pg")`` → ``chtest-pg-1a2b3c4d`` (valid container/volume name)."""
    return _unique_name
