"""Run the whole LifeOS cycle in order, stopping at the first failing step.

Steps:
  1 preflight        tools/lifeos_preflight.py
  2 freshness        tools/lifeos_freshness_check.py
  3 context budget   tools/lifeos_context_budget.py
  4 known failures   evals/known_failures.py
  5 agent            the research agent (default: Claude Code CLI, headless, with
                     agents/pistachio-agent-v3.md as its contract); afterwards a new briefing must
                     exist and pass `promote_findings.py --check`
  6 promote          tools/promote_findings.py on that briefing
  7 scorecard        evals/scorecard.py, when --sweep-dir has images newer than the last history
                     entry (by file time: a sweep copied with its times kept, e.g. rsync -a, reads
                     as old; score it by hand or touch its files)
  8 commit           a local commit of exactly the files the cycle wrote; never pushes

Usage:
    python3 tools/run_full_cycle.py --project-root . --dry-run
    python3 tools/run_full_cycle.py --project-root .
    python3 tools/run_full_cycle.py --project-root . --sweep-dir /workspace/sweep_results \\
        --reference-dir /workspace/training_images --lora-version v3
    python3 tools/run_full_cycle.py --project-root . --agent-cmd "python3 my_agent.py" --no-commit

--dry-run runs steps 1-4 for real (they only read) and prints the exact commands of steps 5-8
without running them. Every step's output is streamed and kept in a cycle log
(.cycle-logs/cycle-<time>.log under the project root, ignored by git). On failure the step, its
command, its exit code and the last lines of its output are printed; later steps do not run and
nothing is committed. A lock file (.cycle.lock) stops two cycles at once; a lock left by a dead
process is detected and replaced.

Exit 0 the cycle completed, 1 a step failed, 2 usage error, 3 another cycle is running.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DEFAULT_STEP_TIMEOUT = 3600
TAIL_LINES = 25
LOCK_NAME = ".cycle.lock"
FRESH_LOCK_SECONDS = 30
LOG_DIR = ".cycle-logs"
# Copied from evals/face_similarity_eval.py:IMAGE_EXTENSIONS
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
BRIEFING_NAME = re.compile(r"^briefing-(\d{4}-\d{2}-\d{2})\.md$")
# Names that must never be committed by an unattended cycle.
SECRET_NAME = re.compile(
    r"(^|/)(\.env(\..*)?|.*\.(pem|key|p12|pfx|keystore)|id_(rsa|dsa|ecdsa|ed25519)(\.pub)?|"
    r"\.netrc|\.npmrc|\.pypirc|credentials(\..*)?|.*secret.*|.*token.*)$", re.IGNORECASE)
SECRET_CONTENT = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}|"
    r"\bsk-(ant-)?[A-Za-z0-9_-]{20,}|\bhf_[A-Za-z0-9]{30,}|\bxox[baprs]-[A-Za-z0-9-]{10,}")


class StepFailed(Exception):
    def __init__(self, step: str, command: list[str], code: int | None, tail: list[str], reason: str):
        super().__init__(reason)
        self.step, self.command, self.code, self.tail, self.reason = step, command, code, tail, reason


class CycleLog:
    """Tees every line to stdout and to the cycle log file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.handle = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("a", encoding="utf-8")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if self.handle:
            self.handle.write(text + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


# ---------------------------------------------------------------- lock

def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes
        process_query_limited_information, still_active = 0x1000, 259
        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == still_active
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(root: Path) -> Path:
    """Create the lock file atomically; replace it when the process that wrote it is gone."""
    lock = root / LOCK_NAME
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started": dt.datetime.now(dt.timezone.utc).isoformat()})
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                holder = {}
            try:
                lock_age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if not holder and lock_age < FRESH_LOCK_SECONDS:
                # Created by another cycle an instant ago and not yet written: it is held.
                raise RuntimeError(f"another cycle is starting (lock file {lock} was just created)")
            same_host = holder.get("host") == socket.gethostname()
            if same_host and pid_alive(int(holder.get("pid", 0))):
                raise RuntimeError(f"another cycle is running (pid {holder['pid']} since "
                                   f"{holder.get('started')}); lock file {lock}")
            if holder and not same_host:
                raise RuntimeError(f"lock {lock} is held by host {holder.get('host')}; remove it "
                                   f"by hand if no cycle runs there")
            print(f"warning: removing stale lock {lock} left by dead process {holder.get('pid')}",
                  file=sys.stderr)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(record + "\n")
        return lock
    raise RuntimeError(f"could not take the lock {lock}")


# ---------------------------------------------------------------- running steps

def kill_tree(process: subprocess.Popen) -> None:
    """Stop a step and everything it started, by PID (its own process group on POSIX)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/PID", str(process.pid), "/T", "/F"], capture_output=True)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def run_step(log: CycleLog, step: str, command: list[str], cwd: Path, timeout: float,
             env: dict | None = None) -> list[str]:
    """Run one step, streaming its output; raise StepFailed on a non-zero exit or a timeout."""
    log.line(f"==> step {step}: {shlex.join(command)}")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", **(env or {}))
    extra = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
             else {"start_new_session": True})
    started = time.monotonic()
    try:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=child_env, text=True, encoding="utf-8",
                                   errors="replace", **extra)
    except OSError as error:
        raise StepFailed(step, command, None, [], f"could not start: {error}") from error

    def pump() -> None:
        for raw in process.stdout:
            text = raw.rstrip("\r\n")
            tail.append(text)
            log.line(f"    {text}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        reader.join(timeout=5)
        raise StepFailed(step, command, None, list(tail),
                         f"timed out after {timeout:g} s (--step-timeout) and was stopped")
    reader.join(timeout=30)
    log.line(f"<== step {step}: exit {code} in {time.monotonic() - started:.1f} s")
    if code != 0:
        raise StepFailed(step, command, code, list(tail), f"exited with code {code}")
    return list(tail)


# ---------------------------------------------------------------- git helpers

def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                               encoding="utf-8", errors="replace")
    if check and completed.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {completed.stderr.strip()}")
    return completed


def dirty_files(root: Path) -> dict[str, str]:
    """Changed or untracked (not ignored) files, each with a hash of its current content."""
    listing = git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all").stdout
    entries = listing.split("\0")
    states: dict[str, str] = {}
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if not entry:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":  # a rename or copy is followed by its source path
            index += 1
        file = root / path
        states[path] = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else "deleted"
    return states


def files_written_by_cycle(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(path for path, digest in after.items() if before.get(path) != digest)


def secret_problems(root: Path, paths: list[str]) -> list[str]:
    problems = []
    for path in paths:
        if SECRET_NAME.search(path):
            problems.append(f"{path} (name looks like a secret)")
            continue
        file = root / path
        if file.is_file() and file.stat().st_size < 5_000_000:
            if SECRET_CONTENT.search(file.read_text(encoding="utf-8", errors="replace")):
                problems.append(f"{path} (content looks like a key or token)")
    return problems


# ---------------------------------------------------------------- the cycle

def briefing_states(root: Path) -> dict[str, float]:
    folder = root / "autonomous-research"
    if not folder.is_dir():
        return {}
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("briefing-*.md")
            if BRIEFING_NAME.match(path.name)}


def newest_changed_briefing(root: Path, before: dict[str, float]) -> Path | None:
    after = briefing_states(root)
    changed = [name for name, stamp in after.items() if before.get(name) != stamp]
    if not changed:
        return None
    return root / "autonomous-research" / max(changed, key=lambda name: BRIEFING_NAME.match(name).group(1))


def last_history_time(history: Path) -> dt.datetime | None:
    """Timestamp of the last valid line of the scorecard history (corrupt lines are skipped)."""
    if not history.is_file():
        return None
    latest = None
    for line in history.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            stamp = json.loads(line).get("timestamp", "")
            moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except (ValueError, AttributeError, TypeError):
            continue
        latest = moment if latest is None or moment > latest else latest
    return latest


def sweep_has_new_images(sweep: Path, history: Path) -> tuple[bool, str]:
    images = [path for path in sweep.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        return False, f"no images in {sweep}"
    newest = max(path.stat().st_mtime for path in images)
    newest_time = dt.datetime.fromtimestamp(newest, dt.timezone.utc)
    last = last_history_time(history)
    if last is None:
        return True, f"{len(images)} images, no history entry yet"
    if newest_time > last:
        return True, f"{len(images)} images, newest {newest_time:%Y-%m-%d %H:%M} after last entry {last:%Y-%m-%d %H:%M}"
    return False, f"no image newer than the last history entry ({last:%Y-%m-%d %H:%M} UTC)"


def default_agent_command(root: Path, today: str) -> list[str]:
    contract = "agents/pistachio-agent-v3.md"
    prompt = (f"You are the pistachio research agent. Read {contract} and follow it exactly as your "
              f"contract for this run. Today is {today}. Finish by writing "
              f"autonomous-research/briefing-{today}.md in the v3 schema and running its self-check.")
    return ["claude", "-p", prompt, "--permission-mode", "acceptEdits", "--max-turns", "60"]


def split_command(text: str, windows: bool = os.name == "nt") -> list[str]:
    """Split --agent-cmd like the platform's shell would: POSIX rules, or Windows quoting."""
    if not windows:
        return shlex.split(text)
    # shlex in non-POSIX mode keeps the quotes inside each token ('"C:\\a b\\x.py"').
    return [token[1:-1] if len(token) >= 2 and token[0] == token[-1] == '"' else token
            for token in shlex.split(text, posix=False)]


def resolve_executable(command: list[str]) -> list[str]:
    """Resolve the program through PATH (finds .cmd/.exe shims on Windows without a shell)."""
    found = shutil.which(command[0])
    return [found, *command[1:]] if found else command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-root", type=Path, default=Path("."),
                        help="repository root (default: the current folder)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the read-only steps 1-4, print steps 5-8 without running them")
    parser.add_argument("--agent-cmd", metavar="CMD",
                        help="command line that replaces the default agent (default: claude -p "
                             "with agents/pistachio-agent-v3.md as the contract)")
    parser.add_argument("--sweep-dir", type=Path, metavar="DIR",
                        help="folder of generated images to grade (default: no scorecard step)")
    parser.add_argument("--reference-dir", type=Path, metavar="DIR",
                        help="training photos of the person (required with --sweep-dir)")
    parser.add_argument("--lora-version", metavar="V", help="LoRA version label (required with --sweep-dir)")
    parser.add_argument("--backend", choices=("insightface", "dlib"), default="insightface",
                        help="face backend for the scorecard (default: insightface)")
    parser.add_argument("--no-commit", action="store_true", help="skip step 8 (default: commit locally)")
    parser.add_argument("--step-timeout", type=float, default=DEFAULT_STEP_TIMEOUT, metavar="S",
                        help=f"seconds before a step is stopped (default: {DEFAULT_STEP_TIMEOUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = args.project_root
    if not root.is_dir():
        parser.error(f"--project-root {root} is not a folder; pass the repository root")
    root = root.resolve()
    if args.sweep_dir is not None:
        missing = [flag for flag, value in (("--reference-dir", args.reference_dir),
                                            ("--lora-version", args.lora_version)) if not value]
        if missing:
            parser.error(f"--sweep-dir needs {' and '.join(missing)}")
        if not args.sweep_dir.is_dir():
            parser.error(f"--sweep-dir {args.sweep_dir} is not a folder")
        if not args.reference_dir.is_dir():
            parser.error(f"--reference-dir {args.reference_dir} is not a folder")
    elif args.reference_dir or args.lora_version:
        parser.error("--reference-dir and --lora-version only make sense with --sweep-dir")
    if args.step_timeout <= 0:
        parser.error("--step-timeout must be a positive number of seconds")
    if shutil.which("git") is None:
        parser.error("git is not on PATH; the cycle needs it")
    toplevel = git(root, "rev-parse", "--show-toplevel", check=False)
    if toplevel.returncode != 0 or Path(toplevel.stdout.strip()).resolve() != root:
        parser.error(f"--project-root {root} is not the root of a git repository; the cycle "
                     f"commits what it writes, so run it in the repository's top folder")

    today = dt.date.today().isoformat()
    agent_command = (split_command(args.agent_cmd) if args.agent_cmd
                     else default_agent_command(root, today))
    if not agent_command:
        parser.error("--agent-cmd is empty")

    try:
        lock = acquire_lock(root)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log = CycleLog(root / LOG_DIR / f"cycle-{stamp}.log")
    try:
        return run_cycle(args, root, today, agent_command, log)
    finally:
        log.close()
        lock.unlink(missing_ok=True)


def run_cycle(args, root: Path, today: str, agent_command: list[str], log: CycleLog) -> int:
    py = sys.executable
    tools, evals = root / "tools", root / "evals"
    timeout = args.step_timeout
    history = root / "evals" / "eval_history.jsonl"
    preflight = [py, str(tools / "lifeos_preflight.py"), "--project-root", str(root)]
    if not args.dry_run:
        preflight += ["--require-cli", "git", "--require-cli", agent_command[0]]
    read_only_steps = [
        ("1 preflight", preflight),
        ("2 freshness", [py, str(tools / "lifeos_freshness_check.py"), "--project-root", str(root)]),
        ("3 context budget", [py, str(tools / "lifeos_context_budget.py"), "--project-root", str(root)]),
        ("4 known failures", [py, str(evals / "known_failures.py"), "--project-root", str(root)]),
    ]
    promote = [py, str(tools / "promote_findings.py"), "--project-root", str(root), "--briefing"]
    scorecard = None
    if args.sweep_dir is not None:
        scorecard = [py, str(evals / "scorecard.py"), "--generated", str(args.sweep_dir.resolve()),
                     "--reference", str(args.reference_dir.resolve()), "--lora-version",
                     args.lora_version, "--backend", args.backend, "--history", str(history),
                     "--report", str(root / "evals" / "latest_report.md")]
    log.line(f"LifeOS cycle {today} in {root}{' (dry run)' if args.dry_run else ''}; log {log.path}")
    before = dirty_files(root)
    try:
        for name, command in read_only_steps:
            run_step(log, name, command, root, timeout)

        if args.dry_run:
            expected = root / "autonomous-research" / f"briefing-{today}.md"
            log.line("dry run: steps 5-8 would run these commands:")
            log.line(f"  5 agent: {shlex.join(agent_command)}")
            log.line(f"    then: {shlex.join([py, str(tools / 'promote_findings.py'), '--project-root', str(root), '--check', str(expected)])}")
            log.line(f"  6 promote: {shlex.join([*promote, str(expected)])}")
            if scorecard:
                new, why = sweep_has_new_images(args.sweep_dir, history)
                log.line(f"  7 scorecard ({'would run' if new else 'would skip'}: {why}): {shlex.join(scorecard)}")
            else:
                log.line("  7 scorecard: skipped (no --sweep-dir)")
            if args.no_commit:
                log.line("  8 commit: skipped (--no-commit)")
            else:
                log.line("  8 commit: git add -- <files the cycle wrote>; git commit -m "
                         "'LifeOS cycle ...' -- <those files> (never pushes)")
            log.line("dry run complete: steps 1-4 passed; nothing was changed")
            return 0

        briefings_before = briefing_states(root)
        agent_env = {"PISTACHIO_PROJECT_ROOT": str(root), "PISTACHIO_DATE": today,
                     "PISTACHIO_BRIEFING": str(root / "autonomous-research" / f"briefing-{today}.md")}
        run_step(log, "5 agent", resolve_executable(agent_command), root, timeout, env=agent_env)
        briefing = newest_changed_briefing(root, briefings_before)
        if briefing is None:
            raise StepFailed("5 agent", agent_command, 0, [],
                             "the agent exited 0 but wrote no autonomous-research/briefing-YYYY-MM-DD.md")
        check = [py, str(tools / "promote_findings.py"), "--project-root", str(root), "--check", str(briefing)]
        run_step(log, "5 agent (briefing check)", check, root, timeout)

        run_step(log, "6 promote", [*promote, str(briefing)], root, timeout)

        scored = "no sweep given"
        if scorecard:
            new, why = sweep_has_new_images(args.sweep_dir, history)
            if new:
                run_step(log, "7 scorecard", scorecard, root, timeout)
                scored = f"scored sweep {args.sweep_dir.name} as {args.lora_version}"
            else:
                log.line(f"==> step 7 scorecard: skipped, {why}")
                scored = f"sweep skipped ({why})"
        else:
            log.line("==> step 7 scorecard: skipped (no --sweep-dir)")

        if args.no_commit:
            log.line("==> step 8 commit: skipped (--no-commit)")
        else:
            commit(log, root, before, briefing, scored)
    except StepFailed as failure:
        log.line("")
        log.line(f"FAILED at step {failure.step}: {failure.reason}")
        log.line(f"  command: {shlex.join(failure.command)}")
        log.line(f"  exit code: {failure.code if failure.code is not None else 'none'}")
        if failure.tail:
            log.line(f"  last {len(failure.tail)} lines of its output:")
            for text in failure.tail:
                log.line(f"    | {text}")
        log.line("later steps did not run; nothing was committed")
        return 1
    log.line("cycle complete")
    return 0


def commit(log: CycleLog, root: Path, before: dict[str, str], briefing: Path, scored: str) -> None:
    written = files_written_by_cycle(before, dirty_files(root))
    command = ["git", "commit", "-m", "LifeOS cycle ...", "--", *written]
    if not written:
        log.line("==> step 8 commit: nothing to commit")
        return
    problems = secret_problems(root, written)
    if problems:
        raise StepFailed("8 commit", command, None, problems,
                         "refusing to commit files that look like secrets: " + "; ".join(problems))
    message = (f"LifeOS cycle {dt.date.today().isoformat()}: briefing {briefing.name} promoted; {scored}\n\n"
               "Files written by tools/run_full_cycle.py:\n" + "\n".join(f"- {path}" for path in written))
    log.line(f"==> step 8 commit: {len(written)} files: {', '.join(written)}")
    existing = [path for path in written if (root / path).exists()]
    if existing:
        git(root, "add", "--", *existing)
    result = git(root, "commit", "-q", "-m", message, "--", *written, check=False)
    if result.returncode != 0:
        raise StepFailed("8 commit", ["git", "commit", "-m", message.splitlines()[0], "--", *written],
                         result.returncode, (result.stdout + result.stderr).splitlines(),
                         "git commit failed")
    head = git(root, "rev-parse", "--short", "HEAD").stdout.strip()
    log.line(f"<== step 8 commit: {head} (local only; nothing was pushed)")


if __name__ == "__main__":
    sys.exit(main())
