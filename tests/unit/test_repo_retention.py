"""The retention policy is a pure function: keep/remove with reasons."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from cargohold.repo.retention import Policy, apply_policy, parse_duration


@dataclass(frozen=True)
class S:
    name: str
    time: datetime


def snaps_every(hours: int, count: int) -> list[S]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [S(f"s{i}", start + timedelta(hours=hours * i)) for i in range(count)]


def kept(policy: Policy, snaps: list[S]) -> list[str]:
    return [s.name for s, _ in apply_policy(snaps, policy).keep]


def test_keep_last() -> None:
    snaps = snaps_every(1, 10)
    d = apply_policy(list(reversed(snaps)), Policy(last=3))
    assert [s.name for s, _ in d.keep] == ["s9", "s8", "s7"]
    assert {s.name for s in d.remove} == {f"s{i}" for i in range(7)}
    assert d.keep[0][1] == ["last 3"]


def test_keep_daily_takes_the_newest_of_each_day() -> None:
    snaps = snaps_every(6, 12)  # 3 days, 4 a day
    assert kept(Policy(daily=2), snaps) == ["s11", "s7"]
    assert kept(Policy(daily=10), snaps) == ["s11", "s7", "s3"]


def test_weekly_monthly_yearly_and_reasons_combine() -> None:
    snaps = snaps_every(24 * 10, 80)  # every 10 days for ~2 years
    d = apply_policy(snaps, Policy(last=1, monthly=3, yearly=5))
    names = [s.name for s, _ in d.keep]
    assert names[0] == "s79"
    assert "last 1" in d.keep[0][1] and any(r.startswith("monthly") for r in d.keep[0][1])
    years = {s.time.year for s, _ in d.keep}
    assert years == {2026, 2027, 2028}
    assert len(d.keep) + len(d.remove) == 80
    w = apply_policy(snaps_every(24, 30), Policy(weekly=2))
    assert len(w.keep) == 2


def test_within_is_relative_to_the_newest_snapshot() -> None:
    snaps = snaps_every(1, 48)
    assert len(kept(Policy(within=timedelta(hours=5)), snaps)) == 6


def test_empty_policy_keeps_everything_and_empty_input() -> None:
    snaps = snaps_every(1, 3)
    assert len(apply_policy(snaps, Policy()).keep) == 3
    assert apply_policy([], Policy(last=1)).keep == []


def test_parse_duration() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1y2m3w4d5h") == timedelta(hours=365 * 24 + 60 * 24 + 21 * 24 + 4 * 24 + 5)
    for bad in ("", "7", "d", "3x", "-1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
