"""Time tools/run_full_cycle.py's snapshot (taken several times per cycle) on a repository.

Usage:
    .venv/bin/python benchmarks/bench_cycle_snapshot.py
    .venv/bin/python benchmarks/bench_cycle_snapshot.py --project-root /path/to/repo --repeats 10

Without --project-root it builds a throwaway clone of this checkout (its tracked and untracked,
not ignored, files; a bare 'origin'), with the ignored folders a working checkout has
(__pycache__ beside the scripts, .pytest_cache, .cycle-logs), and times snapshot() there, best
and median of --repeats, in this process. Prints one line per figure. Exit 0, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "tools" / "run_full_cycle.py"
GIT_ID = ["-c", "user.name=Bench", "-c", "user.email=bench@example.com"]


def load_cycle():
    spec = importlib.util.spec_from_file_location("run_full_cycle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_full_cycle"] = module
    spec.loader.exec_module(module)
    return module


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *GIT_ID, *args], cwd=cwd, check=True, capture_output=True)


def build_clone(folder: Path) -> Path:
    """A clone of this checkout's files with the ignored folders a working checkout has."""
    root = folder / "project"
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    for name in filter(None, listing.split("\0")):
        if (REPO_ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
    git(folder, "init", "-q", "-b", "main", str(root))
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "initial")
    git(folder, "clone", "-q", "--bare", str(root), str(folder / "remote.git"))
    git(root, "remote", "add", "origin", str(folder / "remote.git"))
    git(root, "fetch", "-q", "origin")
    for sub in ("tools", "evals", "tests"):  # bytecode as a normal checkout has it
        for source in sorted((root / sub).glob("*.py")):
            cache = root / sub / "__pycache__" / f"{source.stem}.cpython-311.pyc"
            cache.parent.mkdir(exist_ok=True)
            cache.write_bytes(b"\0" * 2048)
    for name in (".pytest_cache/v/cache/lastfailed", ".cycle-logs/cycle-20260101-000000.log"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n")
    return root


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-root", type=Path, default=None,
                        help="repository to snapshot (default: a throwaway clone of this checkout)")
    parser.add_argument("--repeats", type=int, default=5, help="timed snapshots (default: 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")
    if args.project_root is not None and not args.project_root.is_dir():
        parser.error(f"--project-root {args.project_root} is not a folder")
    cycle = load_cycle()
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
        root = (args.project_root.resolve() if args.project_root is not None
                else build_clone(Path(tmp)))
        cycle.snapshot(root)  # warm the file system cache
        times, state = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            state = cycle.snapshot(root)
            times.append(time.perf_counter() - started)
        print(f"repository: {root if args.project_root is not None else 'a clone of ' + str(REPO_ROOT)}")
        print(f"entries: {len(state.files)} files, {len(state.git_meta)} git settings, "
              f"{len(getattr(state, 'git_state', {}))} git state entries")
        print(f"snapshot: best {min(times):.3f} s, median {statistics.median(times):.3f} s "
              f"({args.repeats} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
