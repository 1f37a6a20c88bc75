"""Check that the agent's startup context fits its line budget.

The startup context is the set of files the agent loads at the start of every session. They are
listed in one place, `context/startup-context.txt` (one repo-relative path per line); without that
file the default list is CLAUDE.md, context/session-learnings.md,
context/projects/pistachio/context.md and PROGRESS.md. A missing file counts 0 lines.

Usage:
    python3 tools/lifeos_context_budget.py --project-root .
    python3 tools/lifeos_context_budget.py --project-root . --budget 220 --json budget.json

Prints lines per file and the headroom on stdout. Exit 0 within budget, 1 over budget,
2 usage error (e.g. the project root does not exist).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_BUDGET = 220
STARTUP_LIST = "context/startup-context.txt"
DEFAULT_STARTUP_FILES = (
    "CLAUDE.md",
    "context/session-learnings.md",
    "context/projects/pistachio/context.md",
    "PROGRESS.md",
)


def startup_files(project_root: Path) -> list[str]:
    """The startup files named in context/startup-context.txt, or the default list without it."""
    listing = Path(project_root) / STARTUP_LIST
    if not listing.is_file():
        return list(DEFAULT_STARTUP_FILES)
    names = []
    for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def count_lines(path: Path) -> int:
    """Lines in a text file as an editor shows them (a last line without newline counts); 0 if absent."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return 0
    return len(data.splitlines())


def measure(project_root: Path, budget: int) -> dict:
    files = []
    for name in startup_files(project_root):
        path = project_root / name
        files.append({"file": name, "lines": count_lines(path), "present": path.is_file()})
    total = sum(entry["lines"] for entry in files)
    return {"budget": budget, "total": total, "headroom": budget - total,
            "passed": total <= budget, "files": files}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-root", type=Path, default=Path("."),
                        help="repository root (default: the current folder)")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                        help=f"maximum total lines of the startup context (default: {DEFAULT_BUDGET})")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the result as JSON to PATH (default: no JSON)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = args.project_root
    if not root.is_dir():
        parser.error(f"--project-root {root} is not a folder; pass the repository root")
    if args.budget <= 0:
        parser.error(f"--budget {args.budget} must be a positive number of lines")

    result = measure(root.resolve(), args.budget)
    width = max(len(entry["file"]) for entry in result["files"]) if result["files"] else 10
    for entry in result["files"]:
        note = "" if entry["present"] else "  (missing, counts 0)"
        print(f"{entry['file']:<{width}}  {entry['lines']:>5}{note}")
    print(f"{'total':<{width}}  {result['total']:>5} of {result['budget']} "
          f"(headroom {result['headroom']})")
    if result["passed"]:
        print(f"PASS context_budget: {result['total']} lines, {result['headroom']} to spare")
    else:
        print(f"FAIL context_budget: {result['total']} lines is {-result['headroom']} over the "
              f"budget of {result['budget']}; move detail out of the startup files")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
