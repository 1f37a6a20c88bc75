"""Flag stale LifeOS documents, a stale newest briefing and old open tasks.

A document's date is its `Last updated: YYYY-MM-DD` line; without one, the date of the last git
commit that touched it; without that (untracked), its file time. The newest briefing is the
`autonomous-research/briefing-YYYY-MM-DD.md` with the latest date in its name; a briefing dated
after today fails the check (it would otherwise pass as the newest, "-26328 days old"). An open
task is a `- [ ]` line in `autonomous-research/pending-tasks.md`; its age comes from its
`added YYYY-MM-DD` (or the first date on the line).

Usage:
    python3 tools/lifeos_freshness_check.py --project-root .
    python3 tools/lifeos_freshness_check.py --project-root . --max-doc-age-days 30 \\
        --max-briefing-age-days 7 --max-task-age-days 30 --today 2026-11-28

One PASS/FAIL line per check on stdout. Exit 0 all fresh, 1 something is stale,
2 usage error (e.g. the project root does not exist).
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

DEFAULT_MAX_DOC_AGE_DAYS = 30
DEFAULT_MAX_BRIEFING_AGE_DAYS = 7
DEFAULT_MAX_TASK_AGE_DAYS = 30
# Active documents: the startup context plus the files the research loop writes and reads.
# Copied from tools/lifeos_context_budget.py:DEFAULT_STARTUP_FILES
DEFAULT_STARTUP_FILES = (
    "CLAUDE.md",
    "context/session-learnings.md",
    "context/projects/pistachio/context.md",
    "PROGRESS.md",
)
LOOP_DOCUMENTS = ("autonomous-research/memory.md", "autonomous-research/pending-tasks.md")
# Copied from tools/lifeos_context_budget.py:STARTUP_LIST
STARTUP_LIST = "context/startup-context.txt"
LAST_UPDATED = re.compile(r"^\W*last updated\W*(\d{4}-\d{2}-\d{2})", re.IGNORECASE | re.MULTILINE)
BRIEFING_NAME = re.compile(r"^briefing-(\d{4}-\d{2}-\d{2})\.md$")
DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")
ADDED_DATE = re.compile(r"\badded:?\s*(\d{4}-\d{2}-\d{2})\b", re.IGNORECASE)
OPEN_TASK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\[ \]\s+(.*)$")


# Copied from tools/lifeos_context_budget.py:startup_files
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


def parse_date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def git_commit_date(project_root: Path, relative: str) -> dt.date | None:
    """Date of the last commit touching `relative`, or None outside git or for untracked files."""
    try:
        completed = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", relative],
            cwd=project_root, capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_date(completed.stdout.strip()) if completed.returncode == 0 else None


def document_date(project_root: Path, relative: str) -> tuple[dt.date, str]:
    """(date, where the date came from) for one document that exists."""
    path = project_root / relative
    match = LAST_UPDATED.search(path.read_text(encoding="utf-8", errors="replace"))
    if match and parse_date(match.group(1)):
        return parse_date(match.group(1)), "Last updated line"
    committed = git_commit_date(project_root, relative)
    if committed:
        return committed, "last git commit"
    return dt.date.fromtimestamp(path.stat().st_mtime), "file time (not in git)"


def check_documents(project_root: Path, today: dt.date, max_age: int) -> list[tuple[bool, str]]:
    results = []
    for relative in [*startup_files(project_root), *LOOP_DOCUMENTS]:
        if not (project_root / relative).is_file():
            results.append((False, f"doc {relative}: missing"))
            continue
        date, source = document_date(project_root, relative)
        age = (today - date).days
        detail = f"doc {relative}: updated {date} ({source}), {age} days ago"
        if age < 0:
            results.append((False, f"doc {relative}: 'Last updated' {date} is in the future "
                                   f"(today is {today}); correct the date"))
        elif age > max_age:
            results.append((False, f"{detail}, older than {max_age} days; review it and update "
                                   f"its 'Last updated:' line"))
        else:
            results.append((True, detail))
    return results


def check_briefing(project_root: Path, today: dt.date, max_age: int) -> tuple[bool, str]:
    folder = project_root / "autonomous-research"
    dated = []
    if folder.is_dir():
        for path in folder.glob("briefing-*.md"):
            match = BRIEFING_NAME.match(path.name)
            if match and parse_date(match.group(1)):
                dated.append((parse_date(match.group(1)), path.name))
    future = sorted(name for date, name in dated if date > today)
    if future:
        return False, (f"briefing: {', '.join(future[:3])}{' ...' if len(future) > 3 else ''} "
                       f"dated after today ({today}); a briefing cannot come from the future: "
                       "rename or remove it")
    if not dated:
        return True, "briefing: none yet (the research agent has not run)"
    newest_date, newest_name = max(dated)
    age = (today - newest_date).days
    detail = f"briefing: newest is {newest_name}, {age} days old"
    if age > max_age:
        return False, f"{detail}, older than {max_age} days; run the research cycle"
    return True, detail


def check_tasks(project_root: Path, today: dt.date, max_age: int) -> tuple[bool, str]:
    path = project_root / "autonomous-research" / "pending-tasks.md"
    if not path.is_file():
        return False, "tasks: autonomous-research/pending-tasks.md is missing"
    open_tasks, stale = 0, []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = OPEN_TASK.match(line)
        if not match:
            continue
        open_tasks += 1
        found = ADDED_DATE.search(match.group(1)) or DATE.search(match.group(1))
        added = parse_date(found.group(1)) if found else None
        if added and (today - added).days > max_age:
            stale.append(((today - added).days, match.group(1).strip()))
    if stale:
        oldest_age, oldest = max(stale)
        return False, (f"tasks: {len(stale)} of {open_tasks} open tasks older than {max_age} days; "
                       f"oldest ({oldest_age} days): {oldest[:80]}")
    return True, f"tasks: {open_tasks} open, none older than {max_age} days"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-root", type=Path, default=Path("."),
                        help="repository root (default: the current folder)")
    parser.add_argument("--max-doc-age-days", type=int, default=DEFAULT_MAX_DOC_AGE_DAYS,
                        help=f"flag active documents older than this (default: {DEFAULT_MAX_DOC_AGE_DAYS})")
    parser.add_argument("--max-briefing-age-days", type=int, default=DEFAULT_MAX_BRIEFING_AGE_DAYS,
                        help=f"flag a newest briefing older than this (default: {DEFAULT_MAX_BRIEFING_AGE_DAYS})")
    parser.add_argument("--max-task-age-days", type=int, default=DEFAULT_MAX_TASK_AGE_DAYS,
                        help=f"flag open tasks older than this (default: {DEFAULT_MAX_TASK_AGE_DAYS})")
    parser.add_argument("--today", metavar="YYYY-MM-DD",
                        help="the date to measure ages against (default: today's local date)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.project_root.is_dir():
        parser.error(f"--project-root {args.project_root} is not a folder; pass the repository root")
    for flag in ("max_doc_age_days", "max_briefing_age_days", "max_task_age_days"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be 0 or more days")
    today = dt.date.today()
    if args.today:
        today = parse_date(args.today)
        if today is None:
            parser.error(f"--today {args.today!r} is not a date in the form YYYY-MM-DD")

    root = args.project_root.resolve()
    results = check_documents(root, today, args.max_doc_age_days)
    results.append(check_briefing(root, today, args.max_briefing_age_days))
    results.append(check_tasks(root, today, args.max_task_age_days))
    for passed, detail in results:
        print(f"{'PASS' if passed else 'FAIL'} freshness {detail}")
    failed = sum(1 for passed, _ in results if not passed)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
