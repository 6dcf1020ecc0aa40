"""The fault campaign: kill -9, byte flips, concurrent writers, a full disk, a changing file and bad
restore targets against the real ``cargohold`` CLI (docs/RELIABILITY.md).

    .venv/bin/python bench/faults.py --seed 1                      # the full campaign (make faults)
    .venv/bin/python bench/faults.py --trials-scale 0.1            # a quick one
    .venv/bin/python bench/faults.py --only corrupt --trial 7      # replay one corruption trial
    .venv/bin/python bench/faults.py --only kill-prune --trials kill-prune=5 --json

Every campaign runs in a temporary directory it removes, bounds each subprocess with a timeout,
never touches the network, and derives every random choice from ``--seed``. Outcomes are
classified by evidence (exit codes, messages, content digests, file listings). The exit code is
0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults_common import CampaignResult, Ctx, SetupError, scratch
from faults_corrupt import run_corrupt
from faults_kill import campaign as kill_campaign
from faults_misc import run_bad_targets, run_changing, run_concurrent, run_full_disk

Runner = Callable[[Ctx, int, CampaignResult], None]


@dataclass(frozen=True)
class Campaign:
    name: str
    trials: int  # in the full campaign
    run: Runner
    what: str
    min_trials: int = 1
    scales: bool = True


CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign("kill-backup", 30, kill_campaign("backup"), "kill -9 during backup --path"),
    Campaign("kill-prune", 20, kill_campaign("prune"), "kill -9 during prune"),
    Campaign("kill-restore", 20, kill_campaign("restore"), "kill -9 during restore --target"),
    Campaign("kill-copy", 10, kill_campaign("copy"), "kill -9 during copy (Docker) or a backup of a restored tree"),
    Campaign("corrupt", 108, run_corrupt, "one bit flip or truncation per trial, per file kind", min_trials=6),
    Campaign("concurrent", 3, run_concurrent, "3 backups at once while forget+prune loop (rounds)"),
    Campaign("full-disk", 2, run_full_disk, "repository / restore target on a full loop-mounted ext4", scales=False),
    Campaign("changing-file", 6, run_changing, "a file appended to, rewritten or replaced while read", min_trials=3),
    Campaign("bad-targets", 9, run_bad_targets, "restore into SRC, SRC/sub, the parent of SRC", min_trials=3),
)
BY_NAME = {c.name: c for c in CAMPAIGNS}


def trials_for(c: Campaign, scale: float, overrides: dict[str, int]) -> int:
    if c.name in overrides:
        return overrides[c.name]
    if not c.scales:
        return c.trials
    return max(c.min_trials, math.ceil(c.trials * scale - 1e-9))


def run_campaign(
    name: str, seed: int, trials: int, workdir: Path | None = None, only_trial: int | None = None
) -> CampaignResult:
    """Run one campaign in its own temporary directory (removed afterwards)."""
    c = BY_NAME[name]
    res = CampaignResult(name, seed=seed)
    started = time.monotonic()
    with scratch(workdir, f"cargohold-faults-{name}-") as root:
        ctx = Ctx(root, seed)
        try:
            if name == "corrupt" and only_trial is not None:
                run_corrupt(ctx, trials, res, only_trial=only_trial)
            else:
                c.run(ctx, trials if only_trial is None else only_trial + 1, res)
        except SetupError as e:
            res.skipped = f"could not set up: {e}"
        except Exception:  # a bug of the campaign itself: report it as a failure row, go on
            res.fail(-1, "campaign crashed: " + traceback.format_exc(limit=3).replace("\n", " | "))
            res.add("campaign crashed", 1, 0)
    res.seconds = time.monotonic() - started
    return res


def run_all(
    seed: int,
    scale: float = 1.0,
    overrides: dict[str, int] | None = None,
    only: Sequence[str] = (),
    workdir: Path | None = None,
    only_trial: int | None = None,
    progress: Callable[[CampaignResult], None] | None = None,
) -> list[CampaignResult]:
    results = []
    for c in CAMPAIGNS:
        if only and c.name not in only:
            continue
        res = run_campaign(c.name, seed, trials_for(c, scale, overrides or {}), workdir, only_trial)
        results.append(res)
        if progress:
            progress(res)
    return results


# --- the table ------------------------------------------------------------------------------------


def _targets(res: CampaignResult) -> str:
    parts = []
    for m in res.metrics:
        if m.target is None:
            parts.append(f"{m.name} {m.value}")
        else:
            parts.append(f"{m.name} {m.value}{'' if m.met else ' ✗(target ' + str(m.target) + ')'}")
    return ", ".join(parts)


def table(results: Sequence[CampaignResult]) -> str:
    rows = [("campaign", "trials", "ok", "failed trials (replay: same --seed)", "time")]
    for r in results:
        if r.skipped:
            rows.append((r.name, "-", "skipped", r.skipped[:90], f"{r.seconds:.0f}s"))
            continue
        failed = sorted({f.trial for f in r.failures})
        shown = " ".join(f"t{t}" if t >= 0 else "setup" for t in failed[:12]) + (" …" if len(failed) > 12 else "")
        rows.append((r.name, str(r.trials), f"{r.ok} {r.ok_label}", shown or "none", f"{r.seconds:.0f}s"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for r in results:
        if r.skipped:
            continue
        mark = "targets met" if r.targets_met else "TARGETS MISSED"
        lines.append(f"{r.name} ({mark}): {_targets(r)}")
        if r.note:
            lines.append(f"    {r.note}")
    return "\n".join(lines)


def failures_text(results: Sequence[CampaignResult], limit: int = 400) -> str:
    lines = []
    for r in results:
        for f in r.failures:
            reason = f.reason if len(f.reason) <= limit else f.reason[:limit] + " …"
            lines.append(f"{r.name} seed {r.seed} trial {f.trial}: {reason}")
    return "\n".join(lines)


def replay_hint(results: Sequence[CampaignResult]) -> str:
    hints = []
    for r in results:
        if not r.failures or r.skipped:
            continue
        t = min(f.trial for f in r.failures if f.trial >= 0) if any(f.trial >= 0 for f in r.failures) else 0
        if r.name == "corrupt":
            hints.append(f"  .venv/bin/python bench/faults.py --seed {r.seed} --only corrupt --trial {t}")
        else:
            hints.append(
                f"  .venv/bin/python bench/faults.py --seed {r.seed} --only {r.name} --trial {t}   # runs trials 0..{t}"
            )
    return "\n".join(hints)


def _overrides(values: Sequence[str]) -> dict[str, int]:
    out = {}
    for v in values:
        name, _, n = v.partition("=")
        if name not in BY_NAME or not n.isdigit():
            raise SystemExit(f"--trials {v!r}: use NAME=N with NAME one of {', '.join(BY_NAME)}")
        out[name] = int(n)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trials-scale", type=float, default=1.0, help="multiply every campaign's trial count")
    ap.add_argument("--trials", action="append", default=[], metavar="NAME=N", help="one campaign's trial count")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these campaigns (repeatable or comma-separated): {', '.join(BY_NAME)}",
    )
    ap.add_argument(
        "--trial", type=int, default=None, help="replay: corrupt runs only this trial, the others run trials 0..N"
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    ap.add_argument("--out", type=Path, help="also write the JSON results to this file")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directories")
    args = ap.parse_args(argv)
    only = [n for v in args.only for n in v.split(",") if n]
    unknown = [n for n in only if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown campaign(s) {unknown}; known: {', '.join(BY_NAME)}")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)

    def progress(r: CampaignResult) -> None:
        if not args.json:
            state = "skipped" if r.skipped else f"{r.ok}/{r.trials} {r.ok_label}"
            print(f"... {r.name}: {state} in {r.seconds:.0f}s", file=sys.stderr, flush=True)

    started = time.monotonic()
    results = run_all(args.seed, args.trials_scale, _overrides(args.trials), only, args.workdir, args.trial, progress)
    total = time.monotonic() - started
    doc = {
        "seed": args.seed,
        "trials_scale": args.trials_scale,
        "seconds": round(total, 1),
        "tmpdir": str(args.workdir) if args.workdir else tempfile.gettempdir(),
        "load_average": os.getloadavg(),
        "campaigns": [r.as_json() for r in results],
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"fault campaign, seed {args.seed}, trials scale {args.trials_scale}, {total:.0f}s")
        print(table(results))
        fails = failures_text(results)
        if fails:
            print("\nfailures:\n" + fails)
            print("\nreplay:\n" + replay_hint(results))
    return 0 if all(r.targets_met for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
