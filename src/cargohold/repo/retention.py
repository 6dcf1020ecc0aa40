"""Which snapshots ``forget`` keeps: a pure function of the snapshots, a policy and now.

Semantics follow restic's, which users know: snapshots are considered newest first;
``last=N`` keeps the N newest; ``hourly/daily/weekly/monthly/yearly=N`` keep the newest
snapshot of each of the N most recent hours/days/ISO weeks/months/years that have one;
``within=D`` keeps everything taken less than D before the newest snapshot. A snapshot
is kept when any rule keeps it, and the result says which rules did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar


class Dated(Protocol):
    @property
    def time(self) -> datetime: ...


T = TypeVar("T", bound=Dated)


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None

    def empty(self) -> bool:
        return not any((self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)) and (
            self.within is None
        )


@dataclass
class Decision(Generic[T]):
    keep: list[tuple[T, list[str]]] = field(default_factory=list)
    remove: list[T] = field(default_factory=list)


def _buckets() -> list[tuple[str, Callable[[datetime], object]]]:
    return [
        ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
        ("daily", lambda t: (t.year, t.month, t.day)),
        ("weekly", lambda t: t.isocalendar()[:2]),
        ("monthly", lambda t: (t.year, t.month)),
        ("yearly", lambda t: t.year),
    ]


def apply_policy(snapshots: Sequence[T], policy: Policy) -> Decision[T]:
    """Split ``snapshots`` (one group, any order) into kept (with reasons) and removed."""
    ordered = sorted(snapshots, key=lambda s: s.time, reverse=True)
    out: Decision[T] = Decision()
    if not ordered:
        return out
    if policy.empty():  # an empty policy keeps everything rather than deleting all
        out.keep = [(s, ["no policy"]) for s in ordered]
        return out
    counts = {
        "hourly": policy.hourly,
        "daily": policy.daily,
        "weekly": policy.weekly,
        "monthly": policy.monthly,
        "yearly": policy.yearly,
    }
    last_bucket: dict[str, object] = {}
    newest = ordered[0].time
    for i, snap in enumerate(ordered):
        reasons: list[str] = []
        if i < policy.last:
            reasons.append(f"last {policy.last}")
        if policy.within is not None and newest - snap.time <= policy.within:
            reasons.append(f"within {policy.within}")
        for name, key in _buckets():
            if counts[name] <= 0:
                continue
            b = key(snap.time)
            if last_bucket.get(name) != b:
                last_bucket[name] = b
                counts[name] -= 1
                reasons.append(f"{name} {b}")
        if reasons:
            out.keep.append((snap, reasons))
        else:
            out.remove.append(snap)
    return out


def parse_duration(text: str) -> timedelta:
    """``2d``, ``12h``, ``1y2m3d4h`` (y = 365 d, m = 30 d) -> timedelta; ValueError otherwise."""
    units = {"y": 365 * 24, "m": 30 * 24, "w": 7 * 24, "d": 24, "h": 1}
    hours = 0
    num = ""
    if not text:
        raise ValueError("empty duration")
    for ch in text.strip():
        if ch.isdigit():
            num += ch
        elif ch in units and num:
            hours += int(num) * units[ch]
            num = ""
        else:
            raise ValueError(f"bad duration {text!r} (use e.g. 7d, 12h, 1y6m)")
    if num:
        raise ValueError(f"bad duration {text!r}: a number needs a unit (y, m, w, d, h)")
    return timedelta(hours=hours)
