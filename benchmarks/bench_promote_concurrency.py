"""Stress tools/promote_findings.py with concurrent promoters: does every item land exactly once?

Usage:
    .venv/bin/python benchmarks/bench_promote_concurrency.py                  # 20 promoters x 5 rounds
    .venv/bin/python benchmarks/bench_promote_concurrency.py --promoters 10 --rounds 2

In a scratch project (temporary folder), each round writes --promoters new valid briefings with
distinct dates (3 action items, 2 learnings, 1 decision each, all distinct), starts one
promoter per briefing at the same moment (subprocesses), waits, and counts: exit codes, how many
of the expected tasks and learnings are in pending-tasks.md and memory.md, duplicates, and how
many briefings promoted-briefings.txt records. Rounds accumulate in the same project. Prints one
line per round. Exit 0 when every item of every briefing is there exactly once and every
briefing is recorded, 1 otherwise, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "tools" / "promote_findings.py"


def briefing(date: str) -> str:
    tasks = "\n".join(f"- [ ] Task {n} of {date} (source: x)" for n in range(3))
    learnings = "\n".join(f"- Learning {n} of {date} (source: x)" for n in range(2))
    return (f"# Pistachio research briefing {date}\n\nDate: {date}\nAgent: pistachio-agent-v3\n"
            "Status: completed\nStop reason: goal-met\nPrevious briefing: none\n"
            "Budget used: 1 min, 1 tool calls, $0.01\n\n## Summary\nA stress briefing.\nIt is one "
            f"of many.\n\n## Findings\n- a fact (source: x)\n\n## Action items\n{tasks}\n\n"
            f"## Learnings\n{learnings}\n\n## Needs human decision\n- Question of {date}? "
            "(source: x)\n\n## Critical candidates\n- none\n\n## Failures\n- none\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--promoters", type=int, default=20, help="promoters per round (default: 20)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default: 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.promoters < 1 or args.rounds < 1:
        print("error: --promoters and --rounds must be 1 or more", file=sys.stderr)
        return 2
    ok = True
    with tempfile.TemporaryDirectory(prefix="stress-promote-") as folder:
        root = Path(folder)
        research = root / "autonomous-research"
        research.mkdir()
        dates_so_far: list[str] = []
        for round_number in range(1, args.rounds + 1):
            dates = [(dt.date(2025, 1, 1) + dt.timedelta(days=len(dates_so_far) + n)).isoformat()
                     for n in range(args.promoters)]
            for date in dates:
                (research / f"briefing-{date}.md").write_text(briefing(date), encoding="utf-8")
            start = time.perf_counter()
            processes = [subprocess.Popen([sys.executable, str(SCRIPT), "--project-root", str(root),
                                           "--briefing", str(research / f"briefing-{d}.md"),
                                           "--today", "2026-02-12"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                         for d in dates]
            codes = [process.wait() for process in processes]
            seconds = time.perf_counter() - start
            dates_so_far += dates
            pending = (research / "pending-tasks.md").read_text(encoding="utf-8")
            memory = (research / "memory.md").read_text(encoding="utf-8")
            record = (research / "promoted-briefings.txt").read_text(encoding="utf-8")
            tasks = re.findall(r"^- \[ \] (.*) \(source: briefing-", pending, re.MULTILINE)
            learnings = re.findall(r"^- \d{4}-\d{2}-\d{2}: (.*) \(source: briefing-", memory,
                                   re.MULTILINE)
            want_tasks = {f"Task {n} of {d}" for d in dates_so_far for n in range(3)} | \
                {f"Decide: Question of {d}?" for d in dates_so_far}
            want_learnings = {f"Learning {n} of {d}" for d in dates_so_far for n in range(2)}
            recorded = set(re.findall(r"^(briefing-\S+) sha256=", record, re.MULTILINE))
            exact = (sorted(tasks) == sorted(want_tasks) and sorted(learnings) == sorted(want_learnings)
                     and recorded == {f"briefing-{d}.md" for d in dates_so_far})
            ok = ok and exact and set(codes) == {0}
            print(f"round {round_number}: {args.promoters} promoters in {seconds:5.1f} s, exit codes "
                  f"{sorted(set(codes))}, tasks {len(set(tasks) & want_tasks)}/{len(want_tasks)} "
                  f"(duplicates {len(tasks) - len(set(tasks))}), learnings "
                  f"{len(set(learnings) & want_learnings)}/{len(want_learnings)} (duplicates "
                  f"{len(learnings) - len(set(learnings))}), recorded {len(recorded)}/{len(dates_so_far)}")
    print("every item exactly once: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
