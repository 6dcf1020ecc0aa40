"""A small seeded subset of the fault campaign (bench/faults.py, docs/RELIABILITY.md).

Each campaign runs against the real CLI with a few trials and must meet every target: no
committed snapshot lost, no silent wrong restore, no damage read as a wrong password, no silent
overwrite of a snapshot's own source, no staging leftovers after prune, no orphan process, ...
``make faults`` runs the full campaign.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from faults_common import CampaignResult

import faults

SEED = int(os.environ.get("CARGOHOLD_FAULT_SEED", "1"))
SUBSET = {
    "kill-backup": 3,
    "kill-prune": 2,
    "kill-restore": 2,
    "kill-copy": 1,
    "corrupt": 12,  # two per file kind
    "concurrent": 1,
    "full-disk": 2,
    "changing-file": 3,
    "bad-targets": 3,
}


def _report(res: CampaignResult) -> str:
    return faults.table([res]) + "\n" + faults.failures_text([res])


def _assert_targets(res: CampaignResult) -> None:
    report = _report(res)
    assert res.skipped is None, report
    assert res.trials == SUBSET[res.name], report
    missed = [f"{m.name} = {m.value} (target {m.target})" for m in res.metrics if not m.met]
    assert not missed, f"targets missed: {missed}\n{report}"


@pytest.mark.parametrize("op", ["backup", "prune", "restore", "copy"])
def test_kill_9_loses_nothing_and_leaves_nothing(tmp_path: Path, op: str) -> None:
    res = faults.run_campaign(f"kill-{op}", SEED, SUBSET[f"kill-{op}"], tmp_path)
    assert res.metric("killed").value >= 1, _report(res)
    assert res.metric("committed snapshots lost").value == 0, _report(res)
    assert res.metric("orphan processes").value == 0, _report(res)
    assert res.metric("staging bytes after prune").value == 0, _report(res)
    _assert_targets(res)


def test_every_damaged_file_is_detected_and_named(tmp_path: Path) -> None:
    res = faults.run_campaign("corrupt", SEED, SUBSET["corrupt"], tmp_path)
    assert res.metric("silent wrong restore").value == 0, _report(res)
    assert res.metric("wrong password for damage").value == 0, _report(res)
    assert res.ok == res.trials, _report(res)
    _assert_targets(res)


def test_concurrent_backups_with_forget_and_prune(tmp_path: Path) -> None:
    _assert_targets(faults.run_campaign("concurrent", SEED, SUBSET["concurrent"], tmp_path))


def test_a_full_disk_fails_clearly_and_recovers(tmp_path: Path) -> None:
    res = faults.run_campaign("full-disk", SEED, SUBSET["full-disk"], tmp_path)
    if res.skipped and ("loop" in res.skipped or "not root" in res.skipped or "missing" in res.skipped):
        pytest.skip(res.skipped)
    _assert_targets(res)


def test_a_file_changing_while_read_is_warned_and_consistent(tmp_path: Path) -> None:
    _assert_targets(faults.run_campaign("changing-file", SEED, SUBSET["changing-file"], tmp_path))


def test_restore_never_silently_overwrites_its_own_source(tmp_path: Path) -> None:
    res = faults.run_campaign("bad-targets", SEED, SUBSET["bad-targets"], tmp_path)
    assert res.metric("silent overwrites of the source").value == 0, _report(res)
    _assert_targets(res)
