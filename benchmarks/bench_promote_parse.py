"""Benchmark tools/promote_findings.py on hostile briefings: parse time and refusal time.

Usage:
    .venv/bin/python benchmarks/bench_promote_parse.py
    .venv/bin/python benchmarks/bench_promote_parse.py --repeats 3        # quick look

Writes each briefing into a temporary folder, then, best of --repeats, in this process:
- the issue's heading, `# x` + 10,000 spaces + `y` (the old regex was cubic: 3,000 spaces took
  28.6 s), parsed with parse_briefing in strict mode (target < 0.1 s);
- each adversarial 100 KB line of tests/test_promote_hostile.py (spaces, hashes, parentheses,
  unclosed `(source:`, escape codes, ...) in the header and in Findings, parsed the same way;
- a briefing just under the 1,000,000-byte limit made of 50,000 one-line items (the worst input
  that is still read: every line is a bullet), parsed and rule-checked;
- a 5 MB briefing refused by main(["--check", ...]) (target < 1 s) and, once, by the script as
  a subprocess (the wall time a user sees, interpreter start included).
Prints one line per case and the verdict. Exit 0 when both targets are met, 1 when one is missed,
2 on a usage error.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "tools" / "promote_findings.py"
HEADING_TARGET_S = 0.1
REFUSAL_TARGET_S = 1.0
HEADER = ("# Pistachio research briefing 2026-02-11\n\nDate: 2026-02-11\nStatus: completed\n"
          "Stop reason: goal-met\n\n")
LINES = {
    "heading of spaces": "# x" + " " * 100_000 + "y",
    "heading of closing hashes": "# x" + " #" * 50_000,
    "field of spaces": "Date:" + " " * 100_000 + "x",
    "bullet of spaces": "- " + " " * 100_000 + "x",
    "unclosed sources": "- x " + "(source: " * 11_000,
    "open parentheses": "- x " + "(" * 100_000,
    "closing parentheses": "- x (source: a)" + ")" * 100_000,
    "emphasis": "**" * 50_000,
    "hashes": "#" * 100_000,
    "escape codes": "- " + "\x1b[31m" * 20_000,
}


def load_promoter():
    spec = importlib.util.spec_from_file_location("promote_findings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["promote_findings"] = module
    spec.loader.exec_module(module)
    return module


def best_of(repeats: int, action) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timings per case, best kept (default: 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        print("error: --repeats must be 1 or more", file=sys.stderr)
        return 2
    promote = load_promoter()
    today = dt.date(2026, 2, 12)
    rules, _ = promote.load_all_rules(REPO_ROOT)
    with tempfile.TemporaryDirectory(prefix="bench-promote-") as folder:
        root = Path(folder)
        (root / "autonomous-research").mkdir()
        path = root / "autonomous-research" / "briefing-2026-02-11.md"

        def parse_case(text: str):
            data = text.encode("utf-8")
            path.write_bytes(data)
            return lambda: promote.parse_briefing(path, data, today, strict=True)

        heading = best_of(args.repeats, parse_case(HEADER + "# x" + " " * 10_000 + "y\n"))
        print(f"{'heading: # x + 10,000 spaces + y':<46} {heading * 1000:9.2f} ms   "
              f"(target < {HEADING_TARGET_S * 1000:.0f} ms)")
        for name, line in LINES.items():
            seconds = best_of(args.repeats, parse_case(HEADER + line + "\n## Findings\n" + line + "\n"))
            print(f"{'100 KB line: ' + name:<46} {seconds * 1000:9.2f} ms")

        items = "".join(f"- item {n} of the biggest briefing still read (source: x)\n"
                        for n in range(50_000))
        text = (HEADER + "## Findings\n" + items)[:promote.MAX_BRIEFING_BYTES - 100]
        data = text.encode("utf-8")
        path.write_bytes(data)

        def parse_and_check():
            parsed = promote.parse_briefing(path, data, today, strict=True)
            promote.find_candidates(parsed, rules)
        seconds = best_of(args.repeats, parse_and_check)
        print(f"{f'{len(data):,} bytes, 50,000 items (parse + rules)':<46} {seconds * 1000:9.2f} ms")

        big = root / "autonomous-research" / "briefing-2026-02-10.md"
        big.write_bytes(HEADER.encode() + b"## Findings\n" + b"- x (source: y)\n" * 330_000)
        size = big.stat().st_size

        def refuse():
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = promote.main(["--project-root", str(root), "--check", str(big),
                                     "--today", today.isoformat()])
            assert code == 1
        refusal = best_of(args.repeats, refuse)
        print(f"{f'{size / 1e6:.1f} MB briefing refused, main()':<46} {refusal * 1000:9.2f} ms   "
              f"(target < {REFUSAL_TARGET_S * 1000:.0f} ms)")
        start = time.perf_counter()
        completed = subprocess.run([sys.executable, str(SCRIPT), "--project-root", str(root),
                                    "--check", str(big), "--today", today.isoformat()],
                                   capture_output=True, text=True)
        wall = time.perf_counter() - start
        refused = completed.returncode == 1 and "nothing of it was read" in completed.stderr
        print(f"{f'{size / 1e6:.1f} MB briefing refused, subprocess':<46} {wall * 1000:9.2f} ms   "
              f"(exit {completed.returncode}{', refused unread' if refused else ''})")
    ok = heading < HEADING_TARGET_S and refusal < REFUSAL_TARGET_S and refused
    print("targets: " + ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
