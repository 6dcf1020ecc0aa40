"""Progress reporting: an interface with a no-op default, so the engine never imports a UI."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, phase: str, total_bytes: int | None = None) -> None:
        """A phase begins (``"backup"``, ``"restore"``, ``"check"`` ...)."""

    def advance(self, nbytes: int = 0, items: int = 0) -> None:
        """Some bytes and/or items (files, packs) were processed."""

    def finish(self) -> None:
        """The phase is over."""


class NullProgress:
    def start(self, phase: str, total_bytes: int | None = None) -> None:
        return None

    def advance(self, nbytes: int = 0, items: int = 0) -> None:
        return None

    def finish(self) -> None:
        return None
