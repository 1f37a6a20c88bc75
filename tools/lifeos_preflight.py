"""Preflight: the checks that must pass before a LifeOS cycle may start.

Checks: the required files are present; the project is a git repository, on a branch (not a
detached HEAD: the cycle's commit would land on no branch), not in the middle of a merge, rebase,
cherry-pick or revert; no merge-conflict markers in active files (Markdown, Python,
PowerShell, text, TOML/JSON/YAML outside archive folders and .git); the Python version; the
command-line tools the cycle calls are on PATH; free disk space above a floor.

Usage:
    python3 tools/lifeos_preflight.py --project-root .
    python3 tools/lifeos_preflight.py --project-root . --require-cli git --require-cli claude \\
        --min-free-gb 5

One PASS/FAIL line per check with its reason on stdout. Exit 0 all pass, 1 a check failed,
2 usage error (e.g. the project root does not exist).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

REQUIRED_FILES = (
    "CLAUDE.md",
    "PROGRESS.md",
    "context/session-learnings.md",
    "context/projects/pistachio/context.md",
    "agents/pistachio-agent-v3.md",
    "autonomous-research/memory.md",
    "autonomous-research/pending-tasks.md",
)
DEFAULT_CLIS = ("git",)
DEFAULT_MIN_FREE_GB = 2.0
MIN_PYTHON = (3, 10)
ACTIVE_SUFFIXES = frozenset({".md", ".py", ".ps1", ".txt", ".toml", ".json", ".yaml", ".yml", ".cfg", ".ini"})
SKIPPED_FOLDERS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache",
                             "build", ".cycle-logs"})
# git writes exactly seven markers followed by a space (or end of line for the middle one).
CONFLICT_START = re.compile(r"^<<<<<<< ", re.MULTILINE)
CONFLICT_END = re.compile(r"^>>>>>>> ", re.MULTILINE)
IN_PROGRESS = {
    "MERGE_HEAD": "a merge", "rebase-merge": "a rebase", "rebase-apply": "a rebase or am",
    "CHERRY_PICK_HEAD": "a cherry-pick", "REVERT_HEAD": "a revert", "BISECT_LOG": "a bisect",
}


def is_archived(relative: Path) -> bool:
    return any("archive" in part.lower() for part in relative.parts[:-1])


def check_required_files(root: Path) -> tuple[bool, str]:
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        return False, f"required_files: missing {', '.join(missing)}; restore them from git"
    return True, f"required_files: all {len(REQUIRED_FILES)} present"


def find_git_dir(root: Path) -> Path | None:
    """The .git folder of the repository at `root` (a worktree's .git file points elsewhere)."""
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            target = Path(text.split(":", 1)[1].strip())
            return target if target.is_absolute() else (root / target).resolve()
    return None


def check_git_state(root: Path) -> tuple[bool, str]:
    git_dir = find_git_dir(root)
    if git_dir is None:
        return False, f"git_state: {root} is not the root of a git repository"
    for marker, operation in IN_PROGRESS.items():
        if (git_dir / marker).exists():
            return False, (f"git_state: {operation} is in progress ({marker} exists); "
                           f"finish or abort it first")
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8", errors="replace").strip()
    except OSError as error:
        return False, f"git_state: cannot read {git_dir / 'HEAD'} ({error.strerror or error})"
    if not head.startswith("ref:"):
        branches = branches_at(git_dir, head)
        fix = (f"git switch {branches[0]}" if branches else
               "git switch <branch> (or git switch -c <new-branch> to keep what was committed here)")
        return False, (f"git_state: HEAD is detached at {head[:12]}; the cycle's commit would be on "
                       f"no branch: run {fix}, then the cycle again")
    branch = head[4:].strip()
    branch = branch[len("refs/heads/"):] if branch.startswith("refs/heads/") else branch
    return True, f"git_state: a git repository on branch {branch}, no merge or rebase in progress"


def branches_at(git_dir: Path, commit: str) -> list[str]:
    """Local branches whose tip is `commit` (loose refs and packed-refs of the common git dir)."""
    common = git_dir
    commondir = git_dir / "commondir"
    if commondir.is_file():
        text = commondir.read_text(encoding="utf-8", errors="replace").strip()
        common = Path(text) if Path(text).is_absolute() else (git_dir / text).resolve()
    tips: dict[str, str] = {}
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8", errors="replace").splitlines():
            value, _, name = line.partition(" ")
            if name.startswith("refs/heads/"):
                tips[name[len("refs/heads/"):]] = value
    heads = common / "refs" / "heads"
    if heads.is_dir():  # a loose ref wins over its packed line
        for path in heads.rglob("*"):
            if path.is_file():
                tips[path.relative_to(heads).as_posix()] = path.read_text(
                    encoding="utf-8", errors="replace").strip()
    return sorted(name for name, value in tips.items() if value == commit)


def active_files(root: Path):
    """Text files outside archive folders, virtual environments and caches."""
    for folder, subfolders, files in os.walk(root):
        # Prune in place so os.walk never descends into a virtual environment or .git.
        subfolders[:] = sorted(name for name in subfolders if name not in SKIPPED_FOLDERS)
        for name in sorted(files):
            path = Path(folder) / name
            relative = path.relative_to(root)
            if path.suffix.lower() in ACTIVE_SUFFIXES and not is_archived(relative):
                yield path, relative


def check_conflict_markers(root: Path) -> tuple[bool, str]:
    conflicted, scanned = [], 0
    for path, relative in active_files(root):
        scanned += 1
        text = path.read_text(encoding="utf-8", errors="replace")
        if CONFLICT_START.search(text) or CONFLICT_END.search(text):
            conflicted.append(relative.as_posix())
    if conflicted:
        return False, (f"conflict_markers: unresolved conflict in {', '.join(sorted(conflicted))}; "
                       f"resolve and commit")
    return True, f"conflict_markers: none in {scanned} active files"


def check_python() -> tuple[bool, str]:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return False, (f"python: {version} is older than {MIN_PYTHON[0]}.{MIN_PYTHON[1]}; "
                       f"install Python 3.10 or newer")
    return True, f"python: {version} ({sys.executable})"


def check_clis(names: list[str]) -> tuple[bool, str]:
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, where in found.items() if where is None]
    if missing:
        return False, f"cli: not on PATH: {', '.join(missing)}; install them or fix PATH"
    return True, "cli: " + ", ".join(f"{name} ({where})" for name, where in found.items())


def check_disk(root: Path, min_free_gb: float) -> tuple[bool, str]:
    free_gb = shutil.disk_usage(root).free / 1e9
    if free_gb < min_free_gb:
        return False, f"disk: {free_gb:.1f} GB free under {root}, below the {min_free_gb:g} GB floor"
    return True, f"disk: {free_gb:.1f} GB free (floor {min_free_gb:g} GB)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-root", type=Path, default=Path("."),
                        help="repository root (default: the current folder)")
    parser.add_argument("--require-cli", action="append", metavar="NAME",
                        help=f"a command the cycle calls, checked on PATH; repeat for several "
                             f"(default: {' '.join(DEFAULT_CLIS)})")
    parser.add_argument("--min-free-gb", type=float, default=DEFAULT_MIN_FREE_GB,
                        help=f"minimum free disk space in GB (default: {DEFAULT_MIN_FREE_GB:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.project_root.is_dir():
        parser.error(f"--project-root {args.project_root} is not a folder; pass the repository root")
    if args.min_free_gb < 0:
        parser.error("--min-free-gb must be 0 or more")
    root = args.project_root.resolve()
    results = [
        check_required_files(root),
        check_git_state(root),
        check_conflict_markers(root),
        check_python(),
        check_clis(args.require_cli or list(DEFAULT_CLIS)),
        check_disk(root, args.min_free_gb),
    ]
    for passed, detail in results:
        print(f"{'PASS' if passed else 'FAIL'} preflight {detail}")
    failed = sum(1 for passed, _ in results if not passed)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
