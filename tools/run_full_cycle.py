"""Run the whole LifeOS cycle in order, stopping at the first failing step.

Steps:
  1 preflight        tools/lifeos_preflight.py (git, the agent's CLI on PATH), then the cycle's own
                     checks: the lock is free, the contract's budgets can be read, detect-secrets is
                     installed, and no file the cycle writes has uncommitted changes
  2 freshness        tools/lifeos_freshness_check.py
  3 context budget   tools/lifeos_context_budget.py
  4 known failures   evals/known_failures.py
  5 agent            the research agent (default: Claude Code CLI, headless, with
                     agents/pistachio-agent-v3.md as its contract), in its own process group;
                     afterwards the repository is compared with a snapshot taken before it, and
                     today's briefing must exist and pass `promote_findings.py --check`
  6 promote          tools/promote_findings.py on that briefing
  7 generate         with --generate only: tools/generate_sweep.py makes the sweep of the newest
                     checkpoint in --lora-dir (and the no-LoRA baseline, once) into --sweep-dir;
                     images already there for the same plan are skipped. Its plan is checked at
                     step 1 (generate_sweep.py --dry-run), before the agent spends anything
  7 scorecard        evals/scorecard.py, when --sweep-dir has images newer than the last history
                     entry, decided after 7 generate (by file time: a sweep copied with its times
                     kept, e.g. rsync -a, reads as old; score it by hand or touch its files)
  8 commit           a local commit of exactly the files the cycle wrote; never pushes

Usage:
    python3 tools/run_full_cycle.py --project-root . --dry-run
    python3 tools/run_full_cycle.py --project-root .
    python3 tools/run_full_cycle.py --project-root . --sweep-dir /workspace/sweep_results \\
        --reference-dir /workspace/training_images --lora-version v3
    python3 tools/run_full_cycle.py --project-root . --agent-cmd "python3 my_agent.py" --no-commit
Unattended on the pod, after a training: sweep and score its newest checkpoint (the sweep folder
must lie outside the repository; --sweep-config for a single-file base without hub access):
    python3 tools/run_full_cycle.py --project-root . --generate \\
        --base-model /workspace/models/sd_xl_base_1.0.safetensors --lora-dir /workspace/lora_v3 \\
        --trigger ohwx --sweep-config /workspace/models/sdxl_config \\
        --sweep-dir /workspace/sweep_results --reference-dir /workspace/training_images --lora-version v3
    ... --generate-args "--strengths 0.8,1.0 --seeds 1,2"   # more generate_sweep.py options

--dry-run runs steps 1-4 for real (the same checks as a real run, --generate's plan check
included; they only read) and prints the exact commands of steps 5-8 without running them. Every
step's output is streamed and kept in a cycle log (.cycle-logs/cycle-<time>.log under the project
root, ignored by git). On failure the step, its command, its exit code and the last lines of its
output are printed; later steps do not run and nothing is committed.

The safety envelope, enforced here rather than left to the agent:
  - The agent may create or change only today's briefing (PISTACHIO_BRIEFING) and PROGRESS.md.
    Before it runs, HEAD, the index, every ref, the git configuration and hooks (and the global
    excludes and attributes files), the git folder's state files (MERGE_HEAD, rebase-*/,
    sequencer/, shallow, alternates, linked worktrees), every tracked and untracked file with its
    hash, and every ignored file (ignored folders walked, but .venv/, venv/, node_modules/ at the
    top; .cycle-logs/ included) with a stat fingerprint are recorded, the files listed with the
    repository's own ignore rules only, and the start-up files of the Python running the cycle
    (site-packages entries, .pth, sitecustomize/usercustomize, pyvenv.cfg: a .pth runs at every
    start); afterwards anything else changed, created, deleted or
    staged, a new commit or a moved ref fails step 5, names each path and commits nothing. A
    FIFO, socket or device is named, never opened. Nothing is reverted: the files are left for a
    human. Both files must be UTF-8 text; PROGRESS.md at most 64 KB, changed only in its
    `## State` bullets (at most three, each ending with the briefing's name) and its Last updated
    date; then the next cycle's context-budget and stale-reference checks run on it at once.
  - Every step's Python gets a private, empty bytecode folder (PYTHONPYCACHEPREFIX): steps 1-4
    one, the agent its own, the steps after it one made once the agent is gone. The log is a new
    file (O_EXCL, never through a link) in a .cycle-logs that is a real folder.
  - The agent runs in its own process group (Windows: a job object, or taskkill /T by PID as a
    fallback); the whole group is killed when the agent exits, times out, or the cycle is
    interrupted. On Linux the cycle is also a child subreaper, so a child that left the group
    (setsid) is found and killed too.
  - Pushes: new "update by push" entries in the reflogs of remote-tracking refs, and the refs of
    remotes that are local folders, are compared before and after; a push is a failure.
  - Step 8 stages only the files the cycle wrote, by literal path, in a temporary index (a user's
    own staged work is never swept in), checks that the staged set is exactly that list, scans
    every staged blob for secrets (detect-secrets plus file-name rules and a few key formats it
    does not know, streamed, any size, UTF-16/32 read as text), and commits; never with a merge,
    cherry-pick, revert or rebase in progress, and a commit whose parents are not the old HEAD
    alone is reported. A failed `git commit` (a hook) lists the files left and a command that
    commits exactly them. context/session-learnings.md is never
    committed; evals/eval_history.jsonl only when the change is a pure append.
  - The lock (.cycle.lock) is an OS-level lock on the file (released by the OS when the cycle
    dies), holding the cycle's and its agent's pid and process start time. A cycle that died
    while its agent's process group lives on keeps the lock until that group is gone.
  - A briefing with Status stopped or failed (read with tools/promote_findings.py's own parser,
    loaded at step 1) is promoted and committed, and the cycle then exits 4 with the agent's stop
    reason on its last line.

The default agent command is Claude Code headless: `claude -p PROMPT --permission-mode dontAsk
--tools Bash,Read,Edit,Write,Glob,Grep --allowedTools <AGENT_RULES> --disallowedTools
<AGENT_DENIED_RULES> --max-turns N --max-budget-usd X --setting-sources project
--strict-mcp-config`, with N and X read from the contract's Budgets table (rows `| Tool calls |
100 |` and `| Money | USD 5.00 ...|`) and the interpreter for the agent's scripts passed as
PISTACHIO_PYTHON and spelled out in the prompt. The contract's "What you may run" section lists
the same tools, files and commands (tests/test_cycle_contract.py keeps the two lists equal).
The cycle's own commits have a subject starting `LifeOS cycle ` (the contract tells the agent so).

Tiny CPU run of --generate (a random-weight SDXL from tests/tiny_sdxl.py; the images are noise;
a dry run, with a stand-in --agent-cmd that it never starts, so no Claude Code CLI is needed):
    python3 -c "import sys; sys.path.insert(0, 'tests'); import tiny_sdxl; \\
        tiny_sdxl.build_demo('/tmp/tiny_sweep')"
    python3 tools/run_full_cycle.py --project-root . --dry-run --agent-cmd "python3 -c pass" --generate \\
        --base-model /tmp/tiny_sweep/tiny_sdxl.safetensors --sweep-config /tmp/tiny_sweep/tiny_sdxl_config \\
        --lora-dir /tmp/tiny_sweep/lora --trigger ohwx --generate-device cpu \\
        --generate-args "--size 64 --steps 2 --seeds 1 --cfg 4 --strengths 1" \\
        --sweep-dir /tmp/tiny_sweep/out --reference-dir /tmp/tiny_sweep --lora-version tiny

Exit 0 the cycle completed, 1 a step failed (or the cycle was interrupted), 2 usage error,
3 another cycle holds the lock (or the lock file is unreadable), 4 the cycle completed but the
agent's briefing says Status stopped or failed.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import fnmatch
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Callable
from stat import S_ISREG

DEFAULT_STEP_TIMEOUT = 3600
TAIL_LINES = 25
LOCK_NAME = ".cycle.lock"
LOG_DIR = ".cycle-logs"
CONTRACT = "agents/pistachio-agent-v3.md"
BRIEFING_DIR = "autonomous-research"
SESSION_LEARNINGS = "context/session-learnings.md"
HISTORY = "evals/eval_history.jsonl"
PROMOTER = "tools/promote_findings.py"
PROGRESS = "PROGRESS.md"
# What the agent may do to PROGRESS.md (the contract's "What you write"): UTF-8 text under this
# size; the `## State` bullets only, at most this many changed or added, each ending with the
# run's briefing name; and the `Last updated:` line.
PROGRESS_MAX_BYTES = 64 * 1024
PROGRESS_MAX_BULLETS = 3
PROGRESS_STATE = "## state"
# A continuation line of a State bullet that a Markdown reader shows as a heading (` ## Next`, a
# setext underline) or a rule; stripped of its indentation first.
MARKDOWN_BLOCK_LINE = re.compile(r"^(#|=+$|(-[ \t]*)+$)")
# Copied from evals/face_similarity_eval.py:IMAGE_EXTENSIONS
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
BRIEFING_NAME = re.compile(r"^briefing-(\d{4}-\d{2}-\d{2})\.md$")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_AGENT_STOPPED = 0, 1, 2, 3, 4

# ---------------------------------------------------------------- what the default agent may do
# One statement of the agent's permissions; agents/pistachio-agent-v3.md lists the same commands.
# Each script runs as `<PISTACHIO_PYTHON> <entry> ...`; each entry is a command prefix.
AGENT_SCRIPT_COMMANDS = (
    "tools/lifeos_preflight.py",
    "tools/lifeos_freshness_check.py",
    "tools/lifeos_context_budget.py",
    "evals/known_failures.py",
    "tools/promote_findings.py --project-root . --check",
    "evals/scorecard.py --demo",
)
AGENT_GIT_COMMANDS = ("git status", "git log", "git diff", "git show")
# Files the agent may write, relative to the project root ({date} is today).
AGENT_WRITABLE = ("autonomous-research/briefing-{date}.md", "PROGRESS.md")
# Narrower still: `git diff/log/show --output=FILE` would write a file; a push is never allowed.
AGENT_DENIED_RULES = ("Bash(git *--output*)", "Bash(git push:*)")
AGENT_TOOLS = "Bash,Read,Edit,Write,Glob,Grep"
# The tools that read (any file); allowed as whole tools.
AGENT_READ_TOOLS = ("Read", "Glob", "Grep")
# The subject of every commit the cycle makes starts with this (the contract says so to the agent).
COMMIT_PREFIX = "LifeOS cycle "

# ---------------------------------------------------------------- --generate
GENERATE_SCRIPT = "tools/generate_sweep.py"
# generate_sweep.py options the cycle sets itself; --generate-args may not give them (nor any
# abbreviation argparse would expand to one of them).
GENERATE_RESERVED = ("--base-model", "--lora-dir", "--trigger", "--out", "--config",
                     "--checkpoints", "--device", "--dry-run", "--overwrite", "--help")

# ---------------------------------------------------------------- what the other steps may write
PROMOTE_WRITES = ("autonomous-research/pending-tasks.md", "autonomous-research/memory.md",
                  "autonomous-research/critical-candidates.md",
                  "autonomous-research/promoted-briefings.txt")
SCORECARD_WRITES = (HISTORY, "evals/latest_report.md", "evals/runs/*.json")
NEVER_COMMITTED = (SESSION_LEARNINGS,)
# Lock files of the cycle and its steps: they come and go while the cycle runs, never committed.
TRANSIENT_FILES = (LOCK_NAME, "autonomous-research/.promote.lock", "evals/eval_history.jsonl.lock")

# ---------------------------------------------------------------- secrets
# File names that are never committed (matched against each path's last part, case-insensitive).
SECRET_FILE_NAME = re.compile(
    r"^(?:\.env(?:\..*)?|.*\.env|\.envrc|.*\.(?:pem|key|p12|pfx|jks|keystore|ppk|kdbx)|"
    r"id_(?:rsa|dsa|ecdsa|ed25519)(?:_sk)?(?:\.pub)?|\.netrc|_netrc|\.npmrc|\.pypirc|"
    r"\.git-credentials|\.htpasswd|credentials(?:\..*)?|.*credentials\.(?:json|ya?ml|csv|ini)|"
    r"client_secret.*\.json|service[-_]?account.*\.json|.*secret.*|token\.(?:json|pickle))$",
    re.IGNORECASE)
SECRET_FOLDERS = frozenset({".ssh", ".aws", ".gnupg", ".docker", ".kube", ".azure"})
# Key formats detect-secrets 1.5.0 does not know (or knows too narrowly). Each is a literal prefix
# and bounded character classes: linear time on any input.
EXTRA_SECRET_PATTERNS = (
    ("AWS secret access key", re.compile(
        r"(?i)aws.{0,20}?(?:secret|private).{0,20}?[=:]\s{0,5}[\"']?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])")),
    ("GitHub fine-grained token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    ("Google OAuth client secret", re.compile(r"\bGOCSPX-[0-9A-Za-z_-]{20,}")),
    ("Anthropic API key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}")),
    ("OpenAI API key", re.compile(r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}")),
    ("Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    ("npm token", re.compile(r"\bnpm_[A-Za-z0-9]{36}\b")),
    ("Stripe key", re.compile(r"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}")),
    ("Stripe webhook secret", re.compile(r"\bwhsec_[A-Za-z0-9]{24,}")),
    ("Slack app token", re.compile(r"\bxapp-\d-[A-Za-z0-9-]{10,}")),
    ("private key", re.compile(r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY( BLOCK)?-----")),
)
# `NAME=value` (shell, .env, a Markdown bullet, PowerShell `$env:NAME = value`) where a word of
# NAME says it holds a secret: HF_TOKEN, DB_PASSWORD, OPENAI_API_KEY (not TOKENIZER_PATH).
ENV_ASSIGNMENT = re.compile(
    r"^\s{0,20}(?:[-*+>]\s{1,3})?`?(?:export\s{1,5}|\$env:)?([A-Za-z][A-Za-z0-9_]{0,63})\s{0,5}="
    r"\s{0,5}[\"']?([^\s\"'#`]{8,})")
SECRET_NAME_WORDS = frozenset({"SECRET", "SECRETS", "TOKEN", "PASSWORD", "PASSWD", "APIKEY",
                               "CREDENTIAL", "CREDENTIALS"})
SECRET_KEY_QUALIFIERS = frozenset({"API", "ACCESS", "PRIVATE", "SECRET", "AUTH", "SIGNING",
                                   "ENCRYPTION", "CLIENT", "MASTER"})
PLACEHOLDER_WORDS = ("your", "example", "placeholder", "changeme", "dummy", "redacted", "xxxx",
                     "...", "<", "${", "$(")
SCAN_BLOCK_BYTES = 1 << 20      # detect-secrets sees the text in blocks of about 1 MiB
SCAN_LINE_CHARS = 1 << 16       # longer lines are cut into overlapping windows
SCAN_OVERLAP = 512
# Suffixes detect-secrets scans with file-type rules; other files are scanned as plain text.
SCAN_SUFFIXES = frozenset({".md", ".txt", ".json", ".jsonl", ".yaml", ".yml", ".ini", ".cfg",
                           ".toml", ".env", ".py", ".sh", ".ps1", ".csv", ".html", ".xml", ".js"})
# Heuristic filters of detect-secrets left out on purpose: the allowlist comment (`pragma:
# allowlist secret`) and the indirect-reference rule (`x = f(...)`) would let any line hide a key.
SCAN_FILTERS_OFF = ("detect_secrets.filters.allowlist.is_line_allowlisted",
                    "detect_secrets.filters.heuristic.is_indirect_reference")

# Every step's Python gets a private, empty folder for its bytecode cache (PYTHONPYCACHEPREFIX),
# so a .pyc planted by the agent (in a __pycache__ of the tree, or in a cache folder it was
# given) is never run by a later step: steps 1-4 share one, the agent gets its own, and the steps
# after it one made after the agent's processes were gone; each is deleted when done with.
PYCACHE_PREFIX: dict[str, str] = {}


def renew_pycache_prefix() -> str:
    """Delete the current private bytecode folder and make a new, empty one; its path."""
    drop_pycache_prefix()
    PYCACHE_PREFIX["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="pistachio-cycle-pycache-")
    return PYCACHE_PREFIX["PYTHONPYCACHEPREFIX"]


def drop_pycache_prefix() -> None:
    old = PYCACHE_PREFIX.pop("PYTHONPYCACHEPREFIX", None)
    if old:
        shutil.rmtree(old, ignore_errors=True)

NOT_LOGGED_IN = re.compile(r"not logged in|please run /login|invalid api key|"
                           r"authentication_error|oauth token (?:has )?expired", re.IGNORECASE)


class StepFailed(Exception):
    def __init__(self, step: str, command: list[str], code: int | None, tail: list[str], reason: str,
                 committed: str | None = None, command_text: str | None = None):
        super().__init__(reason)
        self.step, self.command, self.code, self.tail, self.reason = step, command, code, tail, reason
        self.committed = committed  # the commit made before the failure was found, if any
        self.command_text = command_text  # shown instead of `command` (a line for a shell)


class CycleInterrupted(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP (SIGINT raises KeyboardInterrupt)."""


class LockBusy(Exception):
    pass


class CycleLog:
    """Tees every line to stdout and to the cycle log file.

    The file is always a new one, created by this cycle (O_CREAT|O_EXCL, never following a
    link: a link planted under the name is refused by the OS), in a log folder that is a real
    folder; when the name is taken, `-1`, `-2`, ... is added. OSError says what was wrong.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.handle = None
        if path is not None:
            self.path, fd = open_new_log(path)
            self.handle = open(fd, "a", encoding="utf-8")

    def line(self, text: str = "", echo: bool = True) -> None:
        """One line to the log file, and to stdout unless `echo` is false."""
        if echo:
            print(text, flush=True)
        if self.handle:
            self.handle.write(text + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


def real_folder(folder: Path) -> None:
    """Create `folder` if needed; OSError unless it is a folder of its own (not a link or
    junction to one)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or _is_reparse_point(info) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{folder} is a link or not a folder; the cycle writes its log only into a "
                      f"real folder: remove it (the cycle makes a new one)")


def open_new_log(path: Path) -> tuple[Path, int]:
    """Create the log file `path` (or `<stem>-N<suffix>` when taken), new and empty: (its path,
    a file descriptor open for appending)."""
    real_folder(path.parent)
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_BINARY", 0))
    for number in range(100):
        candidate = path if not number else path.with_name(f"{path.stem}-{number}{path.suffix}")
        try:
            return candidate, os.open(candidate, flags, 0o644)
        except FileExistsError:
            continue
    raise OSError(f"cannot create a new log file beside {path}: 100 names are taken")


def show(path: str) -> str:
    """A path as it can be printed on one line (odd names are quoted, never interpreted)."""
    return path if path.isprintable() and path.strip() == path and path else json.dumps(path)


# ---------------------------------------------------------------- processes

def process_start_time(pid: int) -> str | None:
    """A token that changes when `pid` is reused: the process's start time, or None."""
    if pid <= 0:
        return None
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
            boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2:].split()
        return f"linux:{boot}:{fields[19]}" if len(fields) > 19 else None
    if os.name == "nt":
        return _windows_start_time(pid)
    try:
        completed = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True,
                                   text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = completed.stdout.strip()
    return f"ps:{text}" if completed.returncode == 0 and text else None


def _kernel32():
    """kernel32 with the signatures this script uses (HANDLE is pointer-sized)."""
    import ctypes
    from ctypes import wintypes
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    kernel32.GetProcessTimes.argtypes = (wintypes.HANDLE,) + (ctypes.POINTER(wintypes.FILETIME),) * 4
    return kernel32


def _windows_start_time(pid: int) -> str | None:
    import ctypes
    from ctypes import wintypes
    kernel32 = _kernel32()
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return None
    try:
        times = [wintypes.FILETIME() for _ in range(4)]
        if not kernel32.GetProcessTimes(handle, *(ctypes.byref(t) for t in times)):
            return None
        return f"win:{(times[0].dwHighDateTime << 32) | times[0].dwLowDateTime}"
    finally:
        kernel32.CloseHandle(handle)


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether `pid` runs and, when `start` is given, is still the process that had that start."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":
        import ctypes
        from ctypes import wintypes
        kernel32 = _kernel32()
        handle = kernel32.OpenProcess(0x1000, False, pid)
        if not handle:
            return False
        try:
            code = wintypes.DWORD()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            alive = code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    else:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if alive and sys.platform.startswith("linux"):
            fields = _linux_stat(pid)
            alive = fields is not None and fields[0] != "Z"  # a zombie has finished
    if alive and start is not None:
        now = process_start_time(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    return alive


def group_alive(pgid: int) -> bool:
    """Whether any process of POSIX process group `pgid` still runs (zombies do not count)."""
    if os.name == "nt" or not isinstance(pgid, int) or pgid <= 1:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if sys.platform.startswith("linux"):
        return any(info[3] == pgid and info[2] != "Z" for info in _linux_processes().values())
    return True


def _linux_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def become_subreaper() -> bool:
    """Linux: orphans of our steps (a setsid'd child, say) are reparented to us, not to init."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _linux_processes() -> dict[int, tuple[int, str, str, int]]:
    """pid -> (parent pid, start token, state, process group) of every process in /proc."""
    table = {}
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        entries = os.listdir("/proc")
    except OSError:
        return table
    for name in entries:
        if not name.isdigit():
            continue
        fields = _linux_stat(int(name))
        if fields is not None and len(fields) > 19:
            table[int(name)] = (int(fields[1]), f"linux:{boot}:{fields[19]}", fields[0],
                                int(fields[2]))
    return table


def kill_orphans(born_after: int) -> list[int]:
    """Linux: kill our descendants whose start (clock ticks) is not before `born_after`.

    Between steps the cycle has no child of its own, so any descendant is a leftover of a step
    (reparented to us because we are a subreaper). Repeats until none is left.
    """
    killed: list[int] = []
    if not sys.platform.startswith("linux"):
        return killed
    me = os.getpid()
    for _ in range(50):
        table = _linux_processes()
        children: dict[int, list[int]] = collections.defaultdict(list)
        for pid, (parent, *_rest) in table.items():
            children[parent].append(pid)
        for pid in children.get(me, ()):  # reap the finished ones reparented to us
            if table[pid][2] == "Z":
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
        found, stack = [], list(children.get(me, ()))
        while stack:
            pid = stack.pop()
            ticks = int(table[pid][1].rsplit(":", 1)[1])
            if ticks >= born_after and table[pid][2] != "Z":
                found.append(pid)
            stack.extend(children.get(pid, ()))
        if not found:
            break
        for pid in found:
            if process_start_time(pid) == table[pid][1]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        for pid in found:  # reap those that were our own children
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return killed


class WindowsJob:
    """A Windows job object holding one step and everything it starts.

    The step is created suspended, put in the job, then resumed, so it cannot start a child
    outside the job. KILL_ON_JOB_CLOSE: when the cycle dies, Windows closes the job handle and
    kills every process in it.
    """

    def __init__(self):
        import ctypes
        from ctypes import wintypes
        self.ctypes = ctypes
        k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        k32.CreateJobObjectW.restype = wintypes.HANDLE
        k32.CreateJobObjectW.argtypes = (wintypes.LPVOID, wintypes.LPCWSTR)
        k32.SetInformationJobObject.restype = wintypes.BOOL
        k32.SetInformationJobObject.argtypes = (wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
                                                wintypes.DWORD)
        k32.AssignProcessToJobObject.restype = wintypes.BOOL
        k32.AssignProcessToJobObject.argtypes = (wintypes.HANDLE, wintypes.HANDLE)
        k32.TerminateJobObject.restype = wintypes.BOOL
        k32.TerminateJobObject.argtypes = (wintypes.HANDLE, wintypes.UINT)
        k32.OpenProcess.restype = wintypes.HANDLE
        k32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
        k32.CloseHandle.argtypes = (wintypes.HANDLE,)
        self.kernel32 = k32
        self.ntdll = ctypes.WinDLL("ntdll")
        self.ntdll.NtResumeProcess.argtypes = (wintypes.HANDLE,)
        self.ntdll.NtResumeProcess.restype = ctypes.c_long
        self.handle = k32.CreateJobObjectW(None, None)
        if not self.handle:
            raise OSError(ctypes.get_last_error(), "CreateJobObjectW failed")
        info = job_limit_structure()()
        info.BasicLimitInformation.LimitFlags = 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if not k32.SetInformationJobObject(self.handle, 9, ctypes.byref(info), ctypes.sizeof(info)):
            error = ctypes.get_last_error()
            self.close()
            raise OSError(error, "SetInformationJobObject failed")

    def adopt_and_resume(self, pid: int) -> None:
        """Put the suspended process `pid` in the job and let it run.

        Raises JobError; its `resumed` says whether the process runs (outside the job) or is
        still suspended (the caller must then kill it).
        """
        access = 0x0100 | 0x0001 | 0x0800  # SET_QUOTA | TERMINATE | SUSPEND_RESUME
        process = self.kernel32.OpenProcess(access, False, pid)
        if not process:
            raise JobError(self.ctypes.get_last_error(), f"OpenProcess({pid}) failed", resumed=False)
        try:
            assigned = self.kernel32.AssignProcessToJobObject(self.handle, process)
            error = self.ctypes.get_last_error()
            status = self.ntdll.NtResumeProcess(process)
            if status != 0:
                raise JobError(status, "NtResumeProcess failed", resumed=False)
            if not assigned:
                raise JobError(error, "AssignProcessToJobObject failed", resumed=True)
        finally:
            self.kernel32.CloseHandle(process)

    def kill(self) -> None:
        if self.handle:
            self.kernel32.TerminateJobObject(self.handle, 1)

    def close(self) -> None:
        if self.handle:
            self.kernel32.CloseHandle(self.handle)
            self.handle = None


class JobError(OSError):
    def __init__(self, code: int, text: str, resumed: bool):
        super().__init__(code, text)
        self.resumed = resumed


def job_limit_structure():
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION as a ctypes structure (144 bytes on 64-bit)."""
    import ctypes
    dword = ctypes.c_uint32

    class Basic(ctypes.Structure):
        _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                    ("LimitFlags", dword), ("MinimumWorkingSetSize", ctypes.c_size_t),
                    ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", dword),
                    ("Affinity", ctypes.c_size_t), ("PriorityClass", dword), ("SchedulingClass", dword)]

    class IoCounters(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in (
            "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
            "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]

    class Extended(ctypes.Structure):
        _fields_ = [("BasicLimitInformation", Basic), ("IoInfo", IoCounters),
                    ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                    ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]
    return Extended


def parent_death_signal():
    """Linux: a preexec function that makes the child die with the cycle (PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here, not in the forked child
    except (OSError, AttributeError):
        return None
    kill = int(signal.SIGKILL)
    return lambda: prctl(1, kill, 0, 0, 0)


@dataclass
class StepProcess:
    """A running step: its Popen, and its process group or job."""
    process: subprocess.Popen
    job: WindowsJob | None = None
    start_ticks: int = 0

    def kill_all(self) -> list[int]:
        """Kill the step and everything it started (its group, job, and on Linux the orphans)."""
        if os.name == "nt":
            if self.job is not None:
                self.job.kill()
            else:
                subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.process.pid)],
                               capture_output=True)
                if self.process.poll() is None:
                    self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
            if self.job is not None:
                self.job.close()
                self.job = None
            return []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        return kill_orphans(self.start_ticks)


def start_step_process(command: list[str], cwd: Path, env: dict) -> StepProcess:
    kwargs: dict = dict(cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, env=env, text=True, encoding="utf-8",
                        errors="replace")
    if os.name == "nt":
        job = None
        with contextlib.suppress(OSError):
            job = WindowsJob()
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | (0x00000004 if job else 0)  # CREATE_SUSPENDED
        process = subprocess.Popen(command, creationflags=flags, **kwargs)
        if job is not None:
            try:
                job.adopt_and_resume(process.pid)
            except JobError as error:
                job.close()
                job = None  # when it runs (resumed) without a job, taskkill /T is the fallback
                if not error.resumed:  # never leave a suspended process behind
                    process.kill()
                    process.wait()
                    raise
        return StepProcess(process, job)
    linux = sys.platform.startswith("linux")
    ticks = _linux_now_ticks() if linux else 0
    process = subprocess.Popen(command, start_new_session=True,
                               preexec_fn=parent_death_signal() if linux else None, **kwargs)
    return StepProcess(process, None, ticks)


def _linux_now_ticks() -> int:
    """The current time in the clock ticks since boot that /proc/<pid>/stat uses for starts."""
    try:
        uptime = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
        return max(0, int(uptime * os.sysconf("SC_CLK_TCK")) - 1)
    except (OSError, ValueError, IndexError):
        return 0


def run_step(log: CycleLog, step: str, command: list[str], cwd: Path, timeout: float,
             env: dict | None = None, on_start=None, echo=None) -> list[str]:
    """Run one step, streaming its output; raise StepFailed on a non-zero exit or a timeout.

    `echo(line) -> bool`, when given, picks the lines shown on stdout; every line goes to the log
    file. Whatever happens, the step's process group (job) is killed before this returns.
    """
    log.line(f"==> step {step}: {shlex.join(command)}")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8",
                     **PYCACHE_PREFIX, **(env or {}))
    started = time.monotonic()
    try:
        running = start_step_process(command, cwd, child_env)
    except OSError as error:
        raise StepFailed(step, command, None, [], f"could not start: {error}") from error

    def pump() -> None:
        for raw in running.process.stdout:
            text = raw.rstrip("\r\n")
            tail.append(text)
            log.line(f"    {text}", echo=echo is None or bool(echo(text)))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if on_start is not None:
            on_start(running)
        code = running.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        running.kill_all()
        reader.join(timeout=5)
        raise StepFailed(step, command, None, list(tail),
                         f"timed out after {timeout:g} s (--step-timeout) and was stopped")
    except BaseException:
        running.kill_all()  # interrupted: the step's whole group goes with the cycle
        raise
    leftovers = running.kill_all()
    reader.join(timeout=30)
    if leftovers:
        log.line(f"    (stopped {len(leftovers)} process(es) the step left running: "
                 f"{', '.join(map(str, leftovers))})")
    log.line(f"<== step {step}: exit {code} in {time.monotonic() - started:.1f} s")
    if code != 0:
        raise StepFailed(step, command, code, list(tail), f"exited with code {code}")
    return list(tail)


# ---------------------------------------------------------------- lock

class CycleLock:
    """One cycle per project: an OS-level lock on .cycle.lock, plus a record of who holds it.

    The OS lock (flock; msvcrt.locking on Windows) decides: it is atomic, so of any number of
    cycles starting at once exactly one gets it, and the OS releases it when its holder dies.
    The record (JSON: pid, process start time, host, and the running agent's pid, start time and
    process group) says who holds it, and lets the next cycle see a dead cycle's agent still
    running: the lock then stays held until that agent's process group is gone.
    """

    WINDOWS_LOCK_OFFSET = 1 << 30  # lock a byte far past the record, so readers can still read it

    def __init__(self, root: Path):
        self.path = root / LOCK_NAME
        self.fd: int | None = None
        self.record: dict = {}
        self.previous: dict | None = None

    def clear_command(self) -> str:
        if os.name == "nt":
            return f"Remove-Item -LiteralPath '{self.path}'"
        return f"rm {shlex.quote(str(self.path))}"

    def acquire(self) -> None:
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
            try:
                self._os_lock(fd)
            except OSError:
                os.close(fd)
                raise LockBusy(self._busy_message()) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # released and removed by its last holder meanwhile: take the new file
                self._os_unlock(fd)
                os.close(fd)
                continue
            try:
                self._take_over(fd)
            except BaseException:
                self._os_unlock(fd)
                os.close(fd)
                raise
            self.fd = fd
            return
        raise LockBusy(f"could not take the lock {self.path}; try again")

    def _take_over(self, fd: int) -> None:
        """We hold the OS lock; check what the previous holder left, then write our record."""
        text = _read_fd(fd).decode("utf-8", errors="replace").strip()
        if text:
            holder = parse_lock_record(text)
            if holder is None:
                raise LockBusy(f"the lock file {self.path} holds unreadable content "
                               f"({text[:60]!r}); if no cycle runs, clear it with: "
                               f"{self.clear_command()}")
            if holder.get("host") not in (None, socket.gethostname()):
                raise LockBusy(f"the lock file {self.path} was written by host {holder['host']} "
                               f"(pid {holder['pid']}); if no cycle runs there, clear it with: "
                               f"{self.clear_command()}")
            if pid_alive(holder["pid"], holder.get("start")) and holder["pid"] != os.getpid():
                raise LockBusy(f"another cycle is running (pid {holder['pid']} since "
                               f"{holder.get('started')}); lock file {self.path}")
            agent = holder.get("agent") or {}
            if pid_alive(agent.get("pid", 0), agent.get("start")) or group_alive(agent.get("pgid", 0)):
                stop = (f"taskkill /T /F /PID {agent['pid']}" if os.name == "nt"
                        else f"kill -KILL -- -{agent.get('pgid') or agent['pid']}")
                raise LockBusy(f"the cycle pid {holder['pid']} has died but its agent (pid "
                               f"{agent.get('pid')}, process group {agent.get('pgid')}) still "
                               f"runs; stop it first ({stop}) and run the cycle again")
            self.previous = holder
        self.record = {"pid": os.getpid(), "start": process_start_time(os.getpid()),
                       "host": socket.gethostname(),
                       "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self._write(fd)

    def _write(self, fd: int) -> None:
        data = (json.dumps(self.record) + "\n").encode("utf-8")
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, data)
        with contextlib.suppress(OSError):
            os.fsync(fd)

    def set_agent(self, pid: int | None, pgid: int | None = None) -> None:
        if self.fd is None:
            return
        if pid is None:
            self.record.pop("agent", None)
        else:
            self.record["agent"] = {"pid": pid, "start": process_start_time(pid), "pgid": pgid}
        self._write(self.fd)

    def intact(self) -> bool:
        """Whether the lock file is still the one we hold, with our record in it."""
        if self.fd is None:
            return False
        try:
            if not os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                return False
            return parse_lock_record(_read_fd(self.fd).decode("utf-8", "replace")) == self.record
        except OSError:
            return False

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.ftruncate(fd, 0)
                if os.name != "nt":
                    os.unlink(self.path)  # while still locked: a waiting taker re-checks the path
        with contextlib.suppress(OSError):
            self._os_unlock(fd)
        os.close(fd)

    def _busy_message(self) -> str:
        try:
            holder = parse_lock_record(self.path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            holder = None
        if holder:
            return (f"another cycle is running (pid {holder['pid']} since {holder.get('started')}); "
                    f"lock file {self.path}")
        return f"another cycle is running or starting (it holds the lock file {self.path})"

    def _os_lock(self, fd: int) -> None:
        if os.name == "nt":
            import msvcrt
            os.lseek(fd, self.WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _os_unlock(self, fd: int) -> None:
        if os.name == "nt":
            import msvcrt
            os.lseek(fd, self.WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_UN)


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if sum(map(len, chunks)) > 1 << 20:
            return b"".join(chunks)


def parse_lock_record(text: str) -> dict | None:
    """The lock record as a dict with an int pid, or None for anything else (null, [1,2], ...)."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if record.get("start") is not None and not isinstance(record["start"], str):
        return None
    agent = record.get("agent")
    if agent is not None:
        if not isinstance(agent, dict):
            return None
        for key in ("pid", "pgid"):
            value = agent.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return None
    return record


# ---------------------------------------------------------------- git and snapshots

# Every git call of the cycle: a core.fsmonitor the agent set would run inside it (and could put
# .git/config back before the snapshot reads it).
GIT_OPTIONS = ("-c", "core.fsmonitor=false")


GIT_PROGRAM: str | None = None  # git's absolute path, resolved once (see git_program)
GIT_TIMEOUT = 120          # seconds for one git call (a FIFO named .gitignore blocks git forever)
GIT_COMMIT_TIMEOUT = 1800  # git commit runs the user's hooks
GIT_SPECIAL_NAMES = (".gitignore", ".gitattributes")  # files git opens in every folder it lists


class GitFailed(RuntimeError):
    """A git call of the cycle that failed (check=True) or ran past its timeout."""

    def __init__(self, args: tuple[str, ...], code: int | None, lines: list[str], reason: str):
        super().__init__(reason)
        self.command, self.code, self.lines, self.reason = ["git", *args], code, lines, reason

    def step_failed(self, step: str) -> StepFailed:
        return StepFailed(step, self.command, self.code, self.lines, self.reason + "; nothing "
                          "was committed" if step.startswith("8") else self.reason)


def git_program() -> str:
    """git's absolute path, looked up on PATH once, at the cycle's start: a `git` the agent plants
    later in a folder on PATH ahead of the real one is never run."""
    global GIT_PROGRAM
    if GIT_PROGRAM is None:
        GIT_PROGRAM = shutil.which("git") or "git"
    return GIT_PROGRAM


def git(root: Path, *args: str, check: bool = True, env: dict | None = None,
        text: bool = True, timeout: float | None = None,
        data: bytes | None = None) -> subprocess.CompletedProcess:
    """Run git in `root` (`data`: its stdin, bytes; then text=False)."""
    timeout = timeout or (GIT_COMMIT_TIMEOUT if "commit" in args[:3] else GIT_TIMEOUT)
    try:
        completed = subprocess.run([git_program(), *GIT_OPTIONS, *args], cwd=root,
                                   capture_output=True, text=text,
                                   encoding="utf-8" if text else None,
                                   errors="replace" if text else None, timeout=timeout,
                                   **({"input": data} if data is not None
                                      else {"stdin": subprocess.DEVNULL}),
                                   env=None if env is None else dict(os.environ, **env))
    except subprocess.TimeoutExpired:
        raise GitFailed(args, None, [], f"git {args[0]} did not finish in {timeout:g} s (a FIFO "
                        "or other special file in the tree, e.g. one named .gitignore or "
                        ".gitattributes, blocks git when it opens it); it was stopped") from None
    if check and completed.returncode != 0:
        stderr = completed.stderr if text else completed.stderr.decode("utf-8", "replace")
        raise GitFailed(args, completed.returncode, stderr.strip().splitlines(),
                        f"git {' '.join(args)} failed: {stderr.strip()}")
    return completed


def special_git_files(root: Path) -> list[str]:
    """.gitignore and .gitattributes in the tree that are not regular files or links (a FIFO
    would block git forever); the virtual environments at the top and .git are not walked."""
    found = []
    for folder, folders, files in os.walk(root):
        here = Path(folder)
        if here == root:
            folders[:] = [name for name in folders
                          if name != ".git" and name not in SNAPSHOT_SKIPPED_FOLDERS]
        for name in set(GIT_SPECIAL_NAMES) & set(files + folders):
            try:
                mode = os.lstat(here / name).st_mode
            except OSError:
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
                found.append(f"{show((here / name).relative_to(root).as_posix())} is a "
                             f"{special_kind(mode)}")
    return sorted(found)


def hash_file(path: Path) -> str:
    """sha256 of a file's bytes, streamed; 'link:<target>' for a symlink, 'dir' for a folder,
    'special:<kind>' for anything else (a FIFO, socket or device: never opened)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable:{error.errno}"
    if stat.S_ISLNK(info.st_mode) or _is_reparse_point(info):
        try:
            return "link:" + os.readlink(path)
        except OSError:
            return "link:?"
    if stat.S_ISDIR(info.st_mode):
        return "dir"
    if not stat.S_ISREG(info.st_mode):
        return "special:" + special_kind(info.st_mode)
    digest = hashlib.sha256()
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(
        os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable:{error.errno}"
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the lstat
            return "special:" + special_kind(os.fstat(fd).st_mode)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def special_kind(mode: int) -> str:
    """What a file that is not a regular file, folder or link is, in words."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return f"mode {stat.filemode(mode)}"


def _is_reparse_point(info: os.stat_result) -> bool:
    """Windows: a junction or other reparse point (lstat does not call a junction a link)."""
    return bool(getattr(info, "st_file_attributes", 0) & 0x400)  # FILE_ATTRIBUTE_REPARSE_POINT


def stat_fingerprint(path: Path) -> str:
    """Size, times and inode of a file (ctime changes with any write on POSIX); 'link:<target>'
    for a symlink. Never opens the file."""
    try:
        info = path.lstat()
    except OSError:
        return "missing"
    if stat.S_ISLNK(info.st_mode):
        with contextlib.suppress(OSError):
            return "link:" + os.readlink(path)
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}:{info.st_mode}"


def _nul_list(text: str) -> list[str]:
    return [item for item in text.split("\0") if item]


@dataclass
class RepoState:
    """What the cycle compares before and after a step."""
    head: str = ""
    head_ref: str = ""
    refs: dict[str, str] = field(default_factory=dict)
    index: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    git_meta: dict[str, str] = field(default_factory=dict)
    git_state: dict[str, str] = field(default_factory=dict)
    python_startup: dict[str, str] = field(default_factory=dict)
    remote_reflogs: dict[str, list[str]] = field(default_factory=dict)
    local_remotes: dict[str, dict[str, str]] = field(default_factory=dict)
    network_remotes: list[str] = field(default_factory=list)


def git_paths(root: Path) -> tuple[Path, Path]:
    """(git dir, common git dir) of the repository at `root`, absolute."""
    git_dir = Path(git(root, "rev-parse", "--git-dir").stdout.strip())
    common = Path(git(root, "rev-parse", "--git-common-dir").stdout.strip())
    return (git_dir if git_dir.is_absolute() else root / git_dir,
            common if common.is_absolute() else root / common)


def local_remote_path(url: str, root: Path) -> Path | None:
    """The folder of a remote that lives on this machine (a path or file:// URL), else None."""
    if url.startswith("file://"):
        candidate = Path(url[len("file://"):])
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) or re.match(r"^[^/\\]+@[^/\\]+:", url):
        return None  # https://, ssh://, git@host:path
    else:
        candidate = Path(url)
        if not candidate.is_absolute():
            candidate = root / candidate
    return candidate if candidate.is_dir() else None


NO_GLOBAL_RULES = ("-c", "core.excludesFile=", "-c", "core.attributesFile=")
# Ignored top-level folders the snapshot does not walk (only their own entry is fingerprinted).
SNAPSHOT_SKIPPED_FOLDERS = frozenset({".venv", "venv", "node_modules"})
# What the snapshot leaves out of the git folder: objects (new objects change nothing until a
# ref or a state file names them), reflogs and the index (git status rewrites it; its entries
# are compared), and what other checks cover (HEAD, refs, hooks, info, config).
GIT_DIR_SKIPPED = frozenset({"objects", "logs", "index", "HEAD", "refs", "packed-refs", "hooks",
                             "info", "config", "config.worktree", "lfs", "worktrees"})
# Files in the git folder that make step 8's `git commit` do more than commit (a merge parent,
# a cherry-pick's author, a squash message), named in the problem line.
# Their presence makes `git commit` record more than a plain commit: step 8 refuses to commit.
IN_PROGRESS_STATE = ("MERGE_HEAD", "MERGE_MODE", "CHERRY_PICK_HEAD", "REVERT_HEAD", "SQUASH_MSG",
                     "rebase-merge", "rebase-apply", "sequencer")
GIT_STATE_MEANING = {
    "MERGE_HEAD": "a merge in progress: a commit now would take its commit as a second parent",
    "MERGE_MODE": "a merge in progress", "MERGE_MSG": "a merge in progress",
    "CHERRY_PICK_HEAD": "a cherry-pick in progress", "REVERT_HEAD": "a revert in progress",
    "SQUASH_MSG": "a squash in progress", "AUTO_MERGE": "a merge in progress",
    "rebase-merge": "a rebase in progress", "rebase-apply": "a rebase or am in progress",
    "sequencer": "a cherry-pick or revert sequence in progress", "BISECT_LOG": "a bisect",
    "worktrees": "a linked worktree (git worktree add)", "shallow": "the history was cut",
    "objects/info/alternates": "objects borrowed from another repository",
}


def global_rule_files(root: Path) -> dict[str, Path]:
    """The user's global excludes and attributes files (git's defaults or core.* settings)."""
    found = {}
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for key, default in (("core.excludesFile", "ignore"), ("core.attributesFile", "attributes")):
        configured = git(root, "config", "--path", key, check=False).stdout.strip()
        path = Path(configured) if configured else Path(xdg) / "git" / default
        found[key] = path if path.is_absolute() else root / path
    return found


def walk_fingerprints(folder: Path, label: str):
    """(label/relative path, fingerprint) of everything under `folder`; links are not followed,
    a nested repository's .git is one entry."""
    stack = [(folder, label)]
    while stack:
        current, name = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as error:
            yield name + "/", f"unreadable:{error.errno}"
            continue
        for entry in entries:
            path = f"{name}/{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir and entry.name != ".git":
                stack.append((Path(entry.path), path))
            else:
                yield path, stat_fingerprint(Path(entry.path))


def git_internals(root: Path, git_dir: Path, common: Path) -> dict[str, str]:
    """The git folders' own state (MERGE_HEAD, rebase-*/, sequencer/, shallow, ...), each file
    hashed, and the names of linked worktrees; what GIT_DIR_SKIPPED names is left out."""
    found: dict[str, str] = {}
    for folder in sorted({git_dir, common}):
        try:
            label = folder.relative_to(root).as_posix()
        except ValueError:
            label = folder.as_posix()
        stack = [(folder, "")]
        while stack:
            current, prefix = stack.pop()
            try:
                entries = list(os.scandir(current))
            except OSError:
                continue
            for entry in entries:
                relative = prefix + entry.name
                if not prefix and entry.name == "worktrees":
                    if folder == common:  # the names only; the cycle's own is walked as git_dir
                        for name in sorted(os.listdir(entry.path)):
                            if not _same_path(Path(entry.path) / name, git_dir):
                                found[f"{label}/worktrees/{name}"] = "worktree"
                    continue
                if not prefix and entry.name == "objects":
                    if (Path(entry.path) / "info").is_dir():  # alternates
                        stack.append((Path(entry.path) / "info", "objects/info/"))
                    continue
                if ((not prefix and entry.name in GIT_DIR_SKIPPED)
                        or entry.name in ("objects", "logs", "lfs", "index")
                        or entry.name.startswith("sharedindex.")):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), relative + "/"))
                else:
                    found[f"{label}/{relative}"] = hash_file(Path(entry.path))
    return found


def _same_path(left: Path, right: Path) -> bool:
    try:
        return os.path.samefile(left, right)
    except OSError:
        return left == right


STARTUP_FILES = ("sitecustomize.py", "usercustomize.py")


def python_startup_files() -> dict[str, str]:
    """What runs whenever this Python starts, wherever it lies (in the repository's .venv or not):
    each site-packages folder's entries (a new module there shadows nothing of the stdlib, but a
    new package is importable) and its .pth, sitecustomize and usercustomize files, hashed, and
    the venv's pyvenv.cfg, and the interpreter itself with its folder's entries. A .pth line
    starting with `import` runs at every start, so an agent that writes one would run code in
    every step after it (promote, scorecard, commit)."""
    import site
    folders = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    found: dict[str, str] = {}
    for folder in dict.fromkeys(Path(name) for name in folders):
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            found[f"{folder}{os.sep}"] = "missing"
            continue
        names = "\n".join(entry.name for entry in entries if entry.name != "__pycache__")
        found[f"{folder}{os.sep}"] = hashlib.sha256(names.encode("utf-8", "replace")).hexdigest()
        for entry in entries:
            if entry.name.endswith(".pth") or entry.name in STARTUP_FILES:
                found[entry.path] = hash_file(Path(entry.path))
    config = Path(sys.prefix) / "pyvenv.cfg"
    found[str(config)] = hash_file(config)
    # The interpreter itself (every later step runs sys.executable): a wrapper script put in
    # place of the venv's bin/python would run first. Its link or bytes, the file it resolves to,
    # and each entry of its folder (stat only: that may be /usr/bin).
    executable = Path(sys.executable)
    found[str(executable)] = hash_file(executable)
    with contextlib.suppress(OSError, RuntimeError):
        real = executable.resolve()
        if real != executable:
            found[f"{real} (what {executable} runs)"] = hash_file(real)
    try:
        entries = sorted(os.scandir(executable.parent), key=lambda entry: entry.name)
    except OSError:
        entries = []
    found[f"{executable.parent}{os.sep}"] = hashlib.sha256(
        "\n".join(entry.name for entry in entries).encode("utf-8", "replace")).hexdigest()
    for entry in entries:
        if entry.path != str(executable):
            found[entry.path] = stat_fingerprint(Path(entry.path))
    return found


def snapshot_at(step: str, root: Path, own: frozenset[str] = frozenset()) -> RepoState:
    """snapshot(), a git failure or timeout in it a StepFailed of `step`."""
    try:
        return snapshot(root, own)
    except GitFailed as error:
        raise error.step_failed(step) from None


def snapshot(root: Path, own: frozenset[str] = frozenset()) -> RepoState:
    """HEAD, refs, index, files, git settings and git state of the repository at `root`.

    `own`: paths (relative, POSIX) the cycle itself writes meanwhile (its log), left out.
    """
    state = RepoState()
    special = special_git_files(root)
    if special:
        raise GitFailed(("ls-files",), None, special, "git would block reading "
                        + "; ".join(special) + " (never opened; remove it)")
    # The git settings first (rev-parse reads no index), before any git call that could run
    # something they name.
    git_dir, common = git_paths(root)
    config = git(root, "config", "--list", "--show-origin", "-z", check=False).stdout
    state.git_meta["git config (all levels)"] = hashlib.sha256(config.encode()).hexdigest()
    for folder in sorted({git_dir, common}):
        for name in ("config", "config.worktree"):
            if (folder / name).is_file():
                state.git_meta[f"{folder.name}/{name}"] = hash_file(folder / name)
    head = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False)
    state.head = head.stdout.strip()
    symbolic = git(root, "symbolic-ref", "-q", "HEAD", check=False)
    state.head_ref = symbolic.stdout.strip() or "(detached)"
    for line in git(root, "for-each-ref", "--format=%(refname) %(objectname)").stdout.splitlines():
        name, _, value = line.rpartition(" ")
        state.refs[name] = value
    stages = _nul_list(git(root, "ls-files", "-s", "-z").stdout)
    tags = _nul_list(git(root, "ls-files", "-v", "-z").stdout)
    tag_of = {entry[2:]: entry[0] for entry in tags}
    for entry in stages:
        meta, _, path = entry.partition("\t")
        state.index[path] = f"{meta} {tag_of.get(path, '?')}"
    skipped = set(TRANSIENT_FILES) | set(own)
    # The repository's own ignore rules only: a rule in the user's global excludes file (outside
    # the repository, so outside the snapshot) must not hide a file from it.
    listing = git(root, *NO_GLOBAL_RULES, "ls-files", "-z", "--cached", "--others",
                  "--exclude-standard").stdout
    for path in sorted(set(_nul_list(listing))):
        if path not in skipped:
            state.files[path] = hash_file(root / path)
    # Ignored files and folders too (a planted tools/json.pyc or tools/__pycache__/x.pyc would run
    # in a later step or outside the cycle), with a stat fingerprint each: they may be large, and
    # they are never committed. Only the virtual environments at the top are left out.
    ignored = git(root, *NO_GLOBAL_RULES, "ls-files", "-z", "--others", "--ignored",
                  "--exclude-standard", "--directory").stdout
    for path in _nul_list(ignored):
        if path in skipped:
            continue
        if path.endswith("/") and path.rstrip("/") in SNAPSHOT_SKIPPED_FOLDERS:
            state.files[path] = "ignored:" + stat_fingerprint(root / path.rstrip("/"))
        elif path.endswith("/"):
            for item, value in walk_fingerprints(root / path.rstrip("/"), path.rstrip("/")):
                if item not in skipped:
                    state.files[item] = "ignored:" + value
        else:
            state.files[path] = "ignored:" + stat_fingerprint(root / path)
    for key, path in global_rule_files(root).items():
        state.git_meta[f"{key} file {path}"] = hash_file(path)
    hooks = Path(git(root, "rev-parse", "--git-path", "hooks").stdout.strip())
    hooks = hooks if hooks.is_absolute() else root / hooks
    folders = {("hooks", hooks), ("info", common / "info"), ("worktree info", git_dir / "info")}
    for label, folder in sorted(folders, key=lambda pair: str(pair[1])):
        if folder.is_dir():
            for item in sorted(folder.rglob("*")):
                if item.is_file() or item.is_symlink():
                    state.git_meta[f"{label}/{item.relative_to(folder).as_posix()}"] = hash_file(item)
    state.git_state = git_internals(root, git_dir, common)
    state.python_startup = python_startup_files()
    logs = common / "logs" / "refs" / "remotes"
    if logs.is_dir():
        for item in sorted(logs.rglob("*")):
            if item.is_file():
                text = item.read_text(encoding="utf-8", errors="replace")
                state.remote_reflogs[item.relative_to(common / "logs").as_posix()] = text.splitlines()
    for line in git(root, "remote", check=False).stdout.split():
        url = git(root, "remote", "get-url", line, check=False).stdout.strip()
        folder = local_remote_path(url, root)
        if folder is None:
            state.network_remotes.append(line)
            continue
        listed = subprocess.run([git_program(), *GIT_OPTIONS, "ls-remote", str(folder)], cwd=root,
                                capture_output=True, text=True, encoding="utf-8",
                                errors="replace", timeout=60,
                                env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
        refs = {}
        for ref_line in listed.stdout.splitlines():
            value, _, name = ref_line.partition("\t")
            refs[name] = value
        state.local_remotes[line] = refs
    return state


def compare_states(before: RepoState, after: RepoState, allowed: set[str] | None = None,
                   allowed_patterns: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(problems, changed allowed paths) between two snapshots.

    A path in `allowed` (or matching `allowed_patterns`) may be created or changed in the working
    tree; every other difference is a problem, named on its own line.
    """
    allowed = allowed or set()
    problems: list[str] = []
    written: list[str] = []

    def may_write(path: str) -> bool:
        return path in allowed or any(fnmatch.fnmatchcase(path, pattern) for pattern in allowed_patterns)

    if before.head != after.head:
        problems.append(f"HEAD moved: {before.head[:12] or '(none)'} -> {after.head[:12] or '(none)'}"
                        " (a commit, reset or checkout)")
    if before.head_ref != after.head_ref:
        problems.append(f"HEAD now points at {after.head_ref} (was {before.head_ref})")
    for name in sorted(set(before.refs) | set(after.refs)):
        old, new = before.refs.get(name), after.refs.get(name)
        if old != new:
            what = "created" if old is None else "deleted" if new is None else "moved"
            problems.append(f"ref {what}: {show(name)}")
    for path in sorted(set(before.index) | set(after.index)):
        if before.index.get(path) != after.index.get(path):
            problems.append(f"staged (index changed): {show(path)}")
    for path in sorted(set(before.files) | set(after.files)):
        old, new = before.files.get(path), after.files.get(path)
        if old == new:
            continue
        if new is None or new == "missing":
            if old not in (None, "missing"):
                problems.append(f"deleted: {show(path)}")
            continue
        if new.startswith("special:"):
            problems.append(f"not a regular file: {show(path)} is a {new.rsplit(':', 1)[1]} "
                            "(never opened)")
            continue
        if may_write(path) and not new.startswith(("link:", "dir", "unreadable", "ignored:")):
            written.append(path)
            continue
        problems.append(f"{'created' if old is None else 'changed'}: {show(path)}"
                        + (" (a symlink)" if new.startswith(("link:", "ignored:link:")) else ""))
    for name in sorted(set(before.git_meta) | set(after.git_meta)):
        if before.git_meta.get(name) != after.git_meta.get(name):
            problems.append(f"git settings changed: {show(name)}")
    for name in sorted(set(before.git_state) | set(after.git_state)):
        old, new = before.git_state.get(name), after.git_state.get(name)
        if old != new:
            what = "created" if old is None else "deleted" if new is None else "changed"
            meaning = next((text for key, text in GIT_STATE_MEANING.items()
                            if f"/{key}/" in f"/{name}/"), "")
            problems.append(f"git state {what}: {show(name)}" + (f" ({meaning})" if meaning else ""))
    for name in sorted(set(before.python_startup) | set(after.python_startup)):
        if before.python_startup.get(name) != after.python_startup.get(name):
            what = ("the entries of" if name.endswith(os.sep) else
                    "created:" if before.python_startup.get(name) in (None, "missing") else
                    "changed:")
            problems.append(f"Python start-up files changed: {what} {show(name)} (Python runs "
                            "them at every start: every later step would)")
    return problems, written


def find_pushes(before: RepoState, after: RepoState) -> list[str]:
    """Pushes between two snapshots: reflog entries 'update by push', changed local remotes."""
    found = []
    for name, lines in after.remote_reflogs.items():
        old = before.remote_reflogs.get(name, [])
        for line in lines[len(old):] if lines[:len(old)] == old else lines:
            if "\tupdate by push" in line or line.endswith("update by push"):
                found.append(f"{name[len('refs/remotes/'):] if name.startswith('refs/remotes/') else name}"
                             f" (reflog: update by push)")
    for remote, refs in after.local_remotes.items():
        old = before.local_remotes.get(remote)
        if old is not None and old != refs:
            changed = sorted(name for name in set(old) | set(refs) if old.get(name) != refs.get(name))
            found.append(f"remote {remote}: {', '.join(map(show, changed))} changed")
    return found


def push_check_summary(state: RepoState) -> str:
    """What the push check looked at; "nothing was pushed" only when every remote was read."""
    checked = f"the reflogs of {len(state.remote_reflogs)} remote-tracking ref(s)"
    if state.local_remotes:
        checked += f" and the refs of {', '.join(sorted(state.local_remotes))}"
    if state.local_remotes and not state.network_remotes:
        return f"nothing was pushed to {', '.join(sorted(state.local_remotes))} (checked {checked})"
    summary = f"no push found in {checked}"
    if state.network_remotes:
        summary += f"; network remote(s) {', '.join(sorted(state.network_remotes))} not queried"
    return summary


def dirty_paths(root: Path, pathspecs: list[str]) -> list[str]:
    """Paths matching `pathspecs` (glob pathspecs) that differ from HEAD or the index."""
    listing = git(root, "--glob-pathspecs", "status", "--porcelain=v1", "-z", "--untracked-files=all",
                  "--", *pathspecs).stdout
    entries = listing.split("\0")
    found, index = [], 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if not entry:
            continue
        found.append(entry[3:])
        if entry[0] in "RC":
            index += 1
    return sorted(found)


# ---------------------------------------------------------------- secrets

def secret_name_problem(path: str) -> str | None:
    parts = path.split("/")
    if SECRET_FILE_NAME.match(parts[-1]):
        return f"{show(path)}: the file name looks like a secrets or key file"
    if any(part.lower() in SECRET_FOLDERS for part in parts[:-1]):
        return f"{show(path)}: it lies in a credentials folder"
    return None


def iter_text_lines(stream, encoding: str = "utf-8"):
    """(line number, text) from a binary stream, without reading it whole.

    Undecodable bytes are replaced (a binary file is scanned too, never skipped); NUL bytes are
    dropped first, so UTF-16 and UTF-32 text (with or without a byte order mark) reads as its
    ASCII letters; a line longer than SCAN_LINE_CHARS comes as overlapping windows with the same
    line number.
    """
    number, carry = 0, b""
    while True:
        block = stream.read(1 << 20)
        if not block:
            break
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        for raw in lines:
            number += 1
            yield from _windows(number, _decode(raw, encoding).rstrip("\r"))
        while len(carry) > 4 * SCAN_LINE_CHARS:  # one huge line: scan it in pieces as it comes
            piece, carry = carry[:2 * SCAN_LINE_CHARS], carry[2 * SCAN_LINE_CHARS - SCAN_OVERLAP:]
            yield from _windows(number + 1, _decode(piece, encoding))
    if carry:
        yield from _windows(number + 1, _decode(carry, encoding).rstrip("\r"))


def _decode(raw: bytes, encoding: str) -> str:
    return raw.replace(b"\0", b"").decode(encoding, errors="replace")


def _windows(number: int, text: str):
    if len(text) <= SCAN_LINE_CHARS:
        yield number, text
        return
    step = SCAN_LINE_CHARS - SCAN_OVERLAP
    for start in range(0, len(text), step):
        yield number, text[start:start + SCAN_LINE_CHARS]
        if start + SCAN_LINE_CHARS >= len(text):
            break


def without_format_characters(text: str) -> str:
    """`text` less its invisible format characters (Unicode category Cf: U+200B, U+2060, U+00AD,
    U+FEFF, ...), one of which inside a key hides it from pattern scans."""
    if text.isascii():  # every Cf character is outside ASCII: most lines need no walk
        return text
    return "".join(char for char in text if unicodedata.category(char) != "Cf")


def format_characters(text: str) -> list[str]:
    """The invisible format characters (category Cf) in `text`, as U+XXXX (NAME), in order."""
    if text.isascii():
        return []
    return [f"U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')})" for char in text
            if unicodedata.category(char) == "Cf"]


def names_a_secret(name: str) -> bool:
    words = name.upper().split("_")
    return any(word in SECRET_NAME_WORDS for word in words) or any(
        word == "KEY" and index and words[index - 1] in SECRET_KEY_QUALIFIERS
        for index, word in enumerate(words))


def extra_secret_kinds(line: str) -> list[str]:
    kinds = [name for name, pattern in EXTRA_SECRET_PATTERNS if pattern.search(line)]
    match = ENV_ASSIGNMENT.match(line)
    if match and names_a_secret(match.group(1)):
        value = match.group(2)
        if (not value.startswith(("$", "%")) and not set(value) & set("()[]{}")
                and not set(value) <= set("*xX.-_")
                and not any(word in value.lower() for word in PLACEHOLDER_WORDS)):
            kinds.append(f"secret assigned to {match.group(1)}")
    return kinds


class SecretScanner:
    """detect-secrets 1.5.0 (all its plugins, default filters less SCAN_FILTERS_OFF), the file-name
    rules and EXTRA_SECRET_PATTERNS, over any number of files of any size, streamed."""

    def __init__(self):
        from detect_secrets.core import scan  # noqa: F401  (fails early when not installed)
        from detect_secrets.settings import default_settings, get_settings
        self._default_settings, self._get_settings = default_settings, get_settings
        # Import every plugin now, before the agent runs, not from a tree it could have changed.
        self.scan([("warm-up.txt", lambda: io.BytesIO(b"nothing here\n"))])

    def scan(self, items) -> list[str]:
        """`items`: (path, opener) pairs; opener() returns a binary stream. Returns problems."""
        from detect_secrets.core import scan
        problems: list[str] = []
        with self._default_settings(), tempfile.TemporaryDirectory(prefix="cycle-scan-") as tmp:
            self._get_settings().disable_filters(*SCAN_FILTERS_OFF)
            for path, opener in items:
                problem = secret_name_problem(path)
                if problem:
                    problems.append(problem)
                seen: set[tuple[int, str]] = set()
                suffix = Path(path).suffix.lower()
                block_file = Path(tmp) / f"block{suffix if suffix in SCAN_SUFFIXES else '.txt'}"
                with opener() as stream:
                    block: list[tuple[int, str]] = []
                    size = 0
                    for number, text in iter_text_lines(stream):
                        lines = [text]
                        visible = without_format_characters(text)
                        if visible != text:  # a U+200B inside a key: scan the line without it too
                            lines.append(visible)
                        for line in lines:
                            for kind in extra_secret_kinds(line):
                                seen.add((number, kind))
                            block.append((number, line))
                            size += len(line) + 1
                        if size >= SCAN_BLOCK_BYTES:
                            self._scan_block(scan, block, block_file, seen)
                            block, size = [], 0
                    if block:
                        self._scan_block(scan, block, block_file, seen)
                for number, kind in sorted(seen):
                    problems.append(f"{show(path)}:{number}: looks like a {kind}")
        return problems

    @staticmethod
    def _scan_block(scan, block, block_file: Path, seen: set) -> None:
        block_file.write_text("\n".join(text for _, text in block) + "\n", encoding="utf-8")
        for secret in scan.scan_file(str(block_file)):
            index = min(max(secret.line_number, 1), len(block)) - 1
            seen.add((block[index][0], secret.type))


def secret_problems_in_files(root: Path, paths: list[str]) -> list[str]:
    """Scan working-tree files (used by tests and --dry-run style checks)."""
    return SecretScanner().scan([(path, lambda path=path: (root / path).open("rb")) for path in paths])


# ---------------------------------------------------------------- commit

def head_blob(root: Path, path: str) -> str | None:
    listed = git(root, "ls-tree", "-z", "HEAD", "--", path, check=False).stdout.strip("\0")
    return listed.split("\t", 1)[0].split()[2] if listed else None


def blob_is_prefix(root: Path, old: str | None, new: str) -> bool:
    """Whether blob `new` is blob `old` with bytes added at the end only (None: empty)."""
    if old is None:
        return True
    with _blob_stream(root, old) as before, _blob_stream(root, new) as after:
        while True:
            chunk = before.read(1 << 20)
            if not chunk:
                return True
            if after.read(len(chunk)) != chunk:
                return False


def is_pure_append(root: Path, path: str) -> bool:
    """Whether the working file, as git would store it, is HEAD's version plus appended bytes."""
    new = git(root, "hash-object", "-w", "--path", path, "--", path, check=False).stdout.strip()
    return bool(new) and blob_is_prefix(root, head_blob(root, path), new)


def commit_paths(log: CycleLog, root: Path, paths: list[str], message: str,
                 scanner: SecretScanner, append_only: tuple[str, ...] = (),
                 checked: dict[str, str] | None = None, today: str | None = None) -> str:
    """Commit exactly `paths` (literal) from the working tree; return the new commit id.

    Works in a temporary index built from HEAD, so whatever the user has staged stays staged and
    out of the commit. Raises StepFailed (nothing committed, the real index untouched) when the
    staged set differs from `paths`, a blob looks like a secret, or git commit fails (a hook).
    `checked`: the last snapshot's hashes; each file is then read once, staged only when its bytes
    are the ones checked (a process left behind may rewrite it meanwhile), and PROGRESS.md and
    the briefing (`today`'s) are checked again as staged.
    """
    step = "8 commit"
    display = ["git", "commit", "-m", message.splitlines()[0], "--", *paths]
    by_hand = commit_by_hand(message, paths)
    head = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="cycle-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_LITERAL_PATHSPECS": "1"}
        if head:
            git(root, "read-tree", head, env=env)
        existing = [path for path in paths if (root / path).exists()]
        if existing and checked is not None:
            for path in existing:
                stage_checked(root, path, checked.get(path, "(not seen)"), env, step, display)
        elif existing:
            added = git(root, "--literal-pathspecs", "add", "--", *existing, env=env, check=False)
            if added.returncode != 0:
                raise StepFailed(step, display, added.returncode, added.stderr.splitlines(),
                                 "git add of the cycle's files failed")
        listing = (git(root, "diff", "--cached", "--name-only", "-z", env=env) if head
                   else git(root, "ls-files", "-z", env=env))
        staged = set(_nul_list(listing.stdout))
        if staged != set(paths):
            extra = sorted(staged - set(paths))
            missing = sorted(set(paths) - staged)
            raise StepFailed(step, display, None, [], "the staged set is not the cycle's list "
                             f"(extra: {', '.join(map(show, extra)) or 'none'}; missing: "
                             f"{', '.join(map(show, missing)) or 'none'}); nothing committed")
        entries = {}
        for entry in _nul_list(git(root, "ls-files", "-s", "-z", env=env).stdout):
            meta, _, path = entry.partition("\t")
            if path in staged:
                entries[path] = meta.split()[1]
        agent_files = {PROGRESS, f"{BRIEFING_DIR}/briefing-{today}.md"} if today else set()
        problems = []
        for path in sorted(agent_files & set(entries)):
            with _blob_stream(root, entries[path]) as blob:
                problems += agent_file_problems(root, path, blob.read(8 * 1024 * 1024 + 1), today)
        if problems:
            raise StepFailed(step, display, None, problems, "refusing to commit what was staged: "
                             + "; ".join(problems[:10]) + "; nothing was committed")
        for path in append_only:
            if path in entries and not blob_is_prefix(root, head_blob(root, path), entries[path]):
                raise StepFailed(step, display, None, [], f"{path} changed other than by "
                                 "appending lines; it is append-only, so nothing was committed")
        problems = scanner.scan([(path, lambda blob=entries[path]: _blob_stream(root, blob))
                                 for path in sorted(entries)])
        if problems:
            raise StepFailed(step, display, None, problems,
                             "refusing to commit: " + "; ".join(problems[:10])
                             + (f"; and {len(problems) - 10} more" if len(problems) > 10 else ""))
        git_dir, _common = git_paths(root)
        pending = [name for name in IN_PROGRESS_STATE if (git_dir / name).exists()]
        if pending:  # git commit would make a merge (or take a cherry-pick's author and message)
            raise StepFailed(step, display, None, [f"{git_dir / name} exists" for name in pending],
                             f"refusing to commit: {', '.join(pending)} in the git folder (a merge, "
                             "cherry-pick, revert or rebase in progress) would make git commit do "
                             "more than commit the cycle's files; nothing was committed")
        log.line(f"==> step {step}: {len(paths)} files: {', '.join(map(show, paths))}")
        result = git(root, "commit", "-q", "-m", message, env=env, check=False)
        if result.returncode != 0:
            raise StepFailed(
                step, display, result.returncode, (result.stdout + result.stderr).splitlines() + [
                    "left uncommitted in the working tree (the cycle wrote them; the next cycle "
                    "stops at step 1 until they are committed or stashed):",
                    *(f"  {show(path)}" for path in paths),
                    "the command above commits exactly these files (and nothing you have "
                    "staged) once the hook passes"],
                "git commit failed (a hook?); nothing was committed and your own index is as it "
                "was; the files the cycle wrote are left uncommitted", command_text=by_hand)
    new_head = git(root, "rev-parse", "HEAD").stdout.strip()
    parents = git(root, "rev-list", "--parents", "-n", "1", new_head).stdout.split()[1:]
    if parents != ([head] if head else []):
        raise StepFailed(step, display, None, [f"parents of {new_head[:12]}: "
                                               f"{' '.join(p[:12] for p in parents) or 'none'}"],
                         f"commit {new_head[:12]} has parents {' '.join(p[:12] for p in parents)}"
                         f" instead of only {head[:12] or '(none)'}: it brings in history the "
                         "cycle did not write; check it before pushing (git log --graph)",
                         committed=new_head)
    # The real index still has the old entries of these paths: point them at the new commit.
    reset = git(root, "--literal-pathspecs", "reset", "-q", new_head, "--", *paths, check=False)
    if reset.returncode != 0:
        log.line(f"warning: committed, but your index could not be updated for the cycle's files "
                 f"({reset.stderr.strip()}); run: git reset -q -- <those files>")
    return new_head


def stage_checked(root: Path, path: str, digest: str, env: dict, step: str,
                  display: list[str]) -> None:
    """Stage `path` in the index of `env` from one read of it, when its bytes hash to `digest`
    (git's clean filters and line-ending rules apply as for git add); else StepFailed."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(
        os, "O_NONBLOCK", 0)
    data, now = b"", "unreadable"
    with contextlib.suppress(OSError):
        fd = os.open(root / path, flags)
        with os.fdopen(fd, "rb") as handle:
            if S_ISREG(os.fstat(handle.fileno()).st_mode):
                data = handle.read()
                now = hashlib.sha256(data).hexdigest()
    if now != digest:
        raise StepFailed(step, display, None, [f"{show(path)}: checked {digest[:16]}, now "
                                               f"{now[:16]}"],
                         f"{show(path)} changed after the cycle checked it (a process left "
                         "behind by the agent?); nothing was committed")
    blob = git(root, "hash-object", "-w", "--stdin", "--path", path, data=data, env=env,
               text=False).stdout.decode().strip()
    listed = git(root, "ls-files", "-s", "-z", "--", path, env=env).stdout.strip("\0")
    mode = "100755" if listed.startswith("100755") else "100644"
    git(root, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)


def commit_by_hand(message: str, paths: list[str], windows: bool = os.name == "nt") -> str:
    """A command line that commits exactly `paths` (literal, new or changed or deleted), as step 8
    does, for a user to type after step 8 failed: `git add` then `git commit -- <paths>`."""
    add = ["git", "--literal-pathspecs", "add", "-A", "--", *paths]
    commit = ["git", "--literal-pathspecs", "commit", "-m", message.splitlines()[0], "--", *paths]
    return f"{shlex.join(add)} {';' if windows else '&&'} {shlex.join(commit)}"


class _BlobStream:
    def __init__(self, root: Path, blob: str):
        self.process = subprocess.Popen([git_program(), *GIT_OPTIONS, "cat-file", "blob", blob],
                                        cwd=root, stdout=subprocess.PIPE)

    def read(self, size: int = -1) -> bytes:
        return self.process.stdout.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.process.stdout.close()
        self.process.wait()


def _blob_stream(root: Path, blob: str) -> _BlobStream:
    return _BlobStream(root, blob)


def verify_commit(root: Path, commit: str, paths: list[str]) -> list[str]:
    """Paths the commit changed beyond `paths` (a hook that staged more), or []."""
    parent = git(root, "rev-parse", "-q", "--verify", f"{commit}^", check=False).stdout.strip()
    if parent:
        changed = _nul_list(git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", "-z",
                                parent, commit).stdout)
    else:
        changed = _nul_list(git(root, "ls-tree", "-r", "--name-only", "-z", commit).stdout)
    return sorted(set(changed) - set(paths))


# ---------------------------------------------------------------- the cycle

@dataclass
class Budgets:
    tool_calls: int
    usd: float


def read_budgets(contract: Path) -> Budgets:
    """Tool calls and money from the contract's Budgets table; ValueError says what is missing."""
    try:
        text = contract.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"cannot read {contract}: {error.strerror or error}") from error
    calls = re.search(r"^\|\s*Tool calls\s*\|\s*(\d+)\s*\|", text, re.MULTILINE)
    money = re.search(r"^\|\s*Money\s*\|\s*USD\s*(\d+(?:\.\d+)?)\b", text, re.MULTILINE)
    missing = [row for row, found in (("| Tool calls | <number> |", calls),
                                      ("| Money | USD <amount> ... |", money)) if not found]
    if missing:
        raise ValueError(f"{contract}: its Budgets table has no {' and no '.join(missing)} row; "
                         f"the default agent's --max-turns and --max-budget-usd come from there")
    budgets = Budgets(int(calls.group(1)), float(money.group(1)))
    if budgets.tool_calls <= 0 or budgets.usd <= 0:
        raise ValueError(f"{contract}: the Tool calls and Money budgets must be above 0")
    return budgets


def python_spelling(executable: str, windows: bool = os.name == "nt") -> str:
    """The interpreter as the agent types it in Bash (forward slashes on Windows; quoted if odd)."""
    text = PureWindowsPath(executable).as_posix() if windows else executable
    return text if re.fullmatch(r"[A-Za-z0-9_./:@+~=-]+", text) else shlex.quote(text)


def agent_commands(python: str) -> list[str]:
    """The command prefixes the default agent may run, with the interpreter spelled in."""
    return [f"{python} {entry}" for entry in AGENT_SCRIPT_COMMANDS] + list(AGENT_GIT_COMMANDS)


def agent_allowed_rules(python: str, today: str) -> list[str]:
    """Claude Code permission rules: read and search anything (Read, Glob, Grep), run the
    commands above, write two files (an Edit rule covers Write too)."""
    return (list(AGENT_READ_TOOLS) + [f"Bash({command}:*)" for command in agent_commands(python)]
            + [f"Edit(/{path.format(date=today)})" for path in AGENT_WRITABLE])


def agent_prompt(python: str, today: str, budgets: Budgets) -> str:
    """One line, no quotes or percent signs (it may pass through a Windows .cmd shim)."""
    briefing = f"{BRIEFING_DIR}/briefing-{today}.md"
    commands = "; ".join(f"{command} ..." for command in agent_commands(python))
    return (f"You are the pistachio research agent. Read {CONTRACT} and follow it exactly as your "
            f"contract for this run. Today is {today}. Budgets for this run: at most "
            f"{budgets.tool_calls} tool calls and USD {budgets.usd:.2f}. Run every Python script "
            f"with this interpreter (also in the environment as PISTACHIO_PYTHON): {python}. "
            f"The only commands you may run are: {commands}. You may read any file (Read, Glob, "
            f"Grep), and write only {briefing} and PROGRESS.md: the runner fails the cycle on any "
            f"other change. Finish by writing {briefing} in the v3 schema and running its "
            f"self-check: {python} tools/promote_findings.py --project-root . --check --strict "
            f"{briefing}")


def default_agent_command(today: str, budgets: Budgets, python: str = sys.executable) -> list[str]:
    spelled = python_spelling(python)
    return ["claude", "-p", agent_prompt(spelled, today, budgets),
            "--permission-mode", "dontAsk", "--tools", AGENT_TOOLS,
            "--allowedTools", *agent_allowed_rules(spelled, today),
            "--disallowedTools", *AGENT_DENIED_RULES,
            "--max-turns", str(budgets.tool_calls), "--max-budget-usd", f"{budgets.usd:.2f}",
            "--setting-sources", "project", "--strict-mcp-config"]


def split_command(text: str, windows: bool = os.name == "nt") -> list[str]:
    """Split --agent-cmd like the platform's shell would: POSIX rules, or Windows quoting."""
    if not windows:
        return shlex.split(text)
    # shlex in non-POSIX mode keeps the quotes inside each token ('"C:\\a b\\x.py"').
    return [token[1:-1] if len(token) >= 2 and token[0] == token[-1] == '"' else token
            for token in shlex.split(text, posix=False)]


def resolve_executable(command: list[str]) -> list[str]:
    """Resolve the program through PATH, without a shell.

    On Windows npm installs `claude` as a .cmd shim; running it would pass the prompt through
    cmd.exe, so the native claude.exe beside it is used when it is there.
    """
    found = shutil.which(command[0])
    if not found:
        return command
    if os.name == "nt" and found.lower().endswith((".cmd", ".bat")):
        native = (Path(found).parent / "node_modules" / "@anthropic-ai" / "claude-code" / "bin"
                  / "claude.exe")
        if native.is_file():
            found = str(native)
    return [found, *command[1:]]


def load_promoter(root: Path):
    """tools/promote_findings.py as a module, compiled from its source here (no bytecode cache
    is read or written). Loaded at step 1, before the agent runs, so the cycle reads the
    briefing's header with the promoter's own (tolerant) parser, never with code the agent could
    have changed. OSError or SyntaxError when it cannot be loaded."""
    path = root / PROMOTER
    import types
    module = types.ModuleType("cycle_promote_findings")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    try:
        exec(compile(path.read_bytes(), str(path), "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(module.__name__, None)
        raise
    return module


def read_briefing_status(briefing: Path, promoter) -> tuple[str, str]:
    """(Status, Stop reason) from the briefing header as the promoter reads them (bold keys,
    bullets, a `## Run` heading over the fields), lowercased status; '' when absent."""
    parsed = promoter.parse_briefing(briefing)
    status = parsed.fields.get("status", ("", 0))[0]
    reason = parsed.fields.get("stop reason", ("", 0))[0]
    return promoter.clean(status).strip().lower(), promoter.clean(reason).strip()


def agent_text_problems(root: Path, written: list[str], today: str) -> list[str]:
    """What is wrong with the text files the agent wrote (its briefing, PROGRESS.md): each must
    be UTF-8 text without NUL bytes (a UTF-16 file would hide a key from the secret scan) or
    invisible format characters (Unicode category Cf; a leading byte order mark is allowed);
    PROGRESS.md also within PROGRESS_MAX_BYTES and changed only as progress_problems allows."""
    problems = []
    for path in written:
        limit = PROGRESS_MAX_BYTES if path == PROGRESS else 8 * 1024 * 1024
        with open(root / path, "rb") as handle:  # a regular file: the snapshot checked it
            problems += agent_file_problems(root, path, handle.read(limit + 1), today)
    return problems


def agent_file_problems(root: Path, path: str, data: bytes, today: str) -> list[str]:
    """agent_text_problems for one of the agent's files, given its bytes (or its first limit + 1)."""
    limit = PROGRESS_MAX_BYTES if path == PROGRESS else 8 * 1024 * 1024
    if len(data) > limit:
        return [f"{path} is over {limit:,} bytes (the limit for it)"]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        return [f"{path} is not UTF-8 text (byte {error.start}"
                + ("; it is UTF-16" if utf16 else "") + "); it must be saved as UTF-8"]
    if "\0" in text:
        return [f"{path} holds NUL bytes (UTF-16 or binary, not UTF-8 text)"]
    hidden = [(number, found) for number, line in enumerate(text.splitlines(), 1)
              if (found := format_characters(line))]
    if hidden:  # utf-8-sig took a leading byte order mark off already
        return [f"{path}:{number}: invisible character {', '.join(found)}; the agent's "
                "files may hold none (one inside a key hides it from the secret scan)"
                for number, found in hidden[:10]]
    if path == PROGRESS:
        old = git(root, "cat-file", "blob", f"HEAD:{PROGRESS}", check=False, text=False)
        if old.returncode == 0:
            return progress_problems(old.stdout.decode("utf-8-sig", "replace"), text, today)
    return []


def progress_sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, its lines without trailing blanks) of the text before the first `## ` heading
    ('' as its heading) and of each `## ` section, in order."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        line = line.rstrip()
        if re.match(r"^##[ \t]", line):
            sections.append((" ".join(line.split()), []))
        else:
            sections[-1][1].append(line)
    for _, lines in sections:
        while lines and not lines[-1]:
            lines.pop()
    return sections


def state_bullets(lines: list[str]) -> tuple[list[str], list[str]]:
    """(the non-blank lines before the first bullet, the bullets with their continuation lines)."""
    head, bullets = [], []
    for line in lines:
        if re.match(r"^[-*+][ \t]", line):
            bullets.append(line)
        elif bullets and line.strip():
            bullets[-1] += "\n" + line
        elif not bullets and line.strip():
            head.append(line)
    return head, bullets


def progress_problems(old: str, new: str, today: str) -> list[str]:
    """How the agent's PROGRESS.md differs from what the contract allows, given HEAD's `old`."""
    problems = []
    before, after = progress_sections(old), progress_sections(new)
    names_before, names_after = [name for name, _ in before], [name for name, _ in after]
    if names_before != names_after:
        return [f"{PROGRESS}: its sections changed ({', '.join(names_before[1:]) or 'none'} -> "
                f"{', '.join(names_after[1:]) or 'none'}); only the bullets under ## State may "
                "change"]
    stamp = re.compile(r"^(\W{0,10}last updated\W{0,10})\d{4}-\d{2}-\d{2}", re.IGNORECASE)
    for (name, lines_before), (_, lines_after) in zip(before, after):
        if name.lower() == PROGRESS_STATE:
            head_before, bullets_before = state_bullets(lines_before)
            head_after, bullets_after = state_bullets(lines_after)
            if head_before != head_after:
                problems.append(f"{PROGRESS}: the text under {name} before its bullets changed")
            # As multisets: 20 copies of an old bullet are 20 added bullets.
            remaining, added = collections.Counter(bullets_before), []
            for bullet in bullets_after:
                if remaining[bullet]:
                    remaining[bullet] -= 1
                else:
                    added.append(bullet)
            removed = list(remaining.elements())
            if max(len(added), len(removed)) > PROGRESS_MAX_BULLETS:
                problems.append(f"{PROGRESS}: {len(added)} bullets under {name} added or changed "
                                f"and {len(removed)} removed; at most {PROGRESS_MAX_BULLETS} a run")
            suffix = f"(briefing-{today}.md)"
            for bullet in added:
                shown = show(bullet.splitlines()[0][:80])
                if any(MARKDOWN_BLOCK_LINE.match(line.strip()) for line in bullet.splitlines()[1:]):
                    problems.append(f"{PROGRESS}: a new {name} bullet has a line a Markdown reader "
                                    f"shows as a heading (or a rule): {shown}")
                if "<!--" in bullet:
                    problems.append(f"{PROGRESS}: a new {name} bullet holds an HTML comment (a "
                                    f"Markdown reader hides it): {shown}")
                if not bullet.rstrip(" .").endswith(suffix):
                    problems.append(f"{PROGRESS}: a new {name} bullet does not end with {suffix}: "
                                    f"{show(bullet.splitlines()[0][:80])}")
        elif not name:
            fresh = [stamp.sub(r"\1", line) for line in lines_after]
            if [stamp.sub(r"\1", line) for line in lines_before] != fresh:
                problems.append(f"{PROGRESS}: the text above the first ## heading changed (only "
                                "its Last updated: date may)")
            dates = [match.group(0)[-10:] for match in map(stamp.match, lines_after) if match]
            old_dates = [match.group(0)[-10:] for match in map(stamp.match, lines_before) if match]
            if dates != old_dates and any(date != today for date in dates):
                problems.append(f"{PROGRESS}: its Last updated: date must be today ({today})")
        elif lines_before != lines_after:
            problems.append(f"{PROGRESS}: section {name} changed; it is the human's (only the "
                            "bullets under ## State may change)")
    return problems


# Copied from evals/scorecard.py:parse_timestamp
def parse_timestamp(text) -> tuple[dt.datetime | None, str | None]:
    """(aware datetime, None) for an ISO timestamp; a zone-less one is read as UTC with a note;
    (None, reason) when it is not a timestamp."""
    if not isinstance(text, str) or not text.strip():
        return None, "no timestamp"
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z",
                                                                                     "+00:00"))
    except ValueError:
        return None, f"timestamp {text!r} is not ISO 8601"
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc), (f"timestamp {text!r} has no time zone; "
                                                         "read as UTC")
    return moment, None


def last_history_time(history: Path) -> tuple[dt.datetime | None, list[str]]:
    """(the latest timestamp in the scorecard history, warnings).

    Read like evals/scorecard.py reads it: a UTF-8 BOM is skipped; a torn last line, a corrupt
    line or a line without a run_id is skipped, and an unreadable timestamp ignored, each with a
    warning; a timestamp without a zone is read as UTC (a warning). Nothing is rewritten.
    """
    notes: list[str] = []
    if not history.is_file():
        return None, notes
    latest = None
    try:
        handle = history.open("rb")
    except OSError as error:
        return None, [f"{history}: cannot read ({error.strerror or error}); taken as no history"]
    with handle:
        number = 0
        for raw in handle:
            number += 1
            if raw.startswith(b"\xef\xbb\xbf"):
                notes.append(f"{history}:{number}: a UTF-8 byte order mark (BOM) was skipped")
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as error:
                torn = not raw.endswith(b"\n")  # only the last line can lack its newline
                notes.append(f"{history}:{number}: " + (
                    "torn last line skipped (no newline: an interrupted write?)" if torn
                    else f"corrupt history line skipped ({type(error).__name__})"))
                continue
            if not isinstance(record, dict) or "run_id" not in record:
                notes.append(f"{history}:{number}: history line without a run_id skipped")
                continue
            if "timestamp" not in record:
                continue
            moment, note = parse_timestamp(record.get("timestamp"))
            if note:
                notes.append(f"{history}:{number}: {note}")
            if moment is not None and (latest is None or moment > latest):
                latest = moment
    return latest, notes


def sweep_has_new_images(sweep: Path, history: Path) -> tuple[bool, str, list[str]]:
    """(whether the sweep has an image newer than the last history entry, why, warnings).

    Only files count (a dangling link or a folder named like an image is skipped, with a
    warning). The history stores whole seconds, so an image counts as newer from the second
    after the last entry's.
    """
    latest_image, count, notes = None, 0, []
    for path in sweep.rglob("*"):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        try:
            info = path.stat()
        except OSError as error:
            notes.append(f"{path}: skipped ({'a dangling link' if path.is_symlink() else 'unreadable'}"
                         f": {error.strerror or error})")
            continue
        if not S_ISREG(info.st_mode):
            continue
        count += 1
        latest_image = info.st_mtime if latest_image is None else max(latest_image, info.st_mtime)
    if not count:
        return False, f"no images in {sweep}", notes
    newest_time = dt.datetime.fromtimestamp(latest_image, dt.timezone.utc)
    last, history_notes = last_history_time(history)
    notes += history_notes
    if last is None:
        return True, f"{count} images, no history entry yet", notes
    if newest_time >= last + dt.timedelta(seconds=1):
        return True, (f"{count} images, newest {newest_time:%Y-%m-%d %H:%M:%S} after the last "
                      f"entry {last:%Y-%m-%d %H:%M:%S} UTC"), notes
    return False, f"no image newer than the last history entry ({last:%Y-%m-%d %H:%M:%S} UTC)", notes


@dataclass
class PostStep:
    """A step after the agent: its command, and the repo paths (fnmatch patterns) it may write.

    run_cycle runs these in order; a new step is one more entry in post_agent_steps().
    """
    name: str
    command: list[str]
    writes: tuple[str, ...]
    skip_reason: str | None = None  # set: the step is logged as skipped, not run
    # Decided right before the step runs (after the steps before it): (run?, why, warnings).
    decide: Callable[[], tuple[bool, str, list[str]]] | None = None


def generate_command(args, root: Path) -> list[str]:
    """tools/generate_sweep.py with the cycle's --generate flags: the newest checkpoint only."""
    command = [sys.executable, str(root / GENERATE_SCRIPT), "--base-model", str(args.base_model),
               "--lora-dir", str(args.lora_dir), "--trigger", args.trigger,
               "--out", str(args.sweep_dir), "--checkpoints", "last",
               "--device", args.generate_device or "cuda"]
    if args.sweep_config is not None:
        command += ["--config", str(args.sweep_config)]
    return command + split_command(args.generate_args or "")


def progress_steps(root: Path) -> list[PostStep]:
    """The startup-context checks of the next cycle's steps 3 and 4 that PROGRESS.md can fail,
    run right after the agent changed it."""
    py = sys.executable
    return [PostStep("5 agent (PROGRESS.md: context budget)",
                     [py, str(root / "tools" / "lifeos_context_budget.py"), "--project-root", str(root)],
                     ()),
            PostStep("5 agent (PROGRESS.md: references)",
                     [py, str(root / "evals" / "known_failures.py"), "--project-root", str(root),
                      "--only", "stale_reference_test"], ())]


def post_agent_steps(args, root: Path, briefing: Path) -> list[PostStep]:
    py = sys.executable
    history = root / HISTORY
    steps = [PostStep("6 promote", [py, str(root / "tools" / "promote_findings.py"), "--project-root",
                                    str(root), "--briefing", str(briefing)], PROMOTE_WRITES)]
    if getattr(args, "generate", False):
        # Writes only into --sweep-dir, which lies outside the repository: nothing in it may change.
        steps.append(PostStep("7 generate", generate_command(args, root), ()))
    if args.sweep_dir is None:
        steps.append(PostStep("7 scorecard", [], SCORECARD_WRITES, "no --sweep-dir"))
    else:
        sweep = args.sweep_dir.resolve()
        scorecard = [py, str(root / "evals" / "scorecard.py"), "--generated",
                     str(sweep), "--reference", str(args.reference_dir.resolve()),
                     "--lora-version", args.lora_version, "--backend", args.backend,
                     "--history", str(history), "--report", str(root / "evals" / "latest_report.md")]
        steps.append(PostStep("7 scorecard", scorecard, SCORECARD_WRITES,
                              decide=lambda: sweep_has_new_images(sweep, history)))
    return steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-root", type=Path, default=Path("."),
                        help="repository root (default: the current folder)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run steps 1-4 (the same checks as a real run, with --generate its "
                             "plan check too), print steps 5-8 without running them")
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
    sweep = parser.add_argument_group(
        "--generate: make the sweep before scoring it (step 7 generate, tools/generate_sweep.py)")
    sweep.add_argument("--generate", action="store_true",
                       help="before the scorecard, generate the sweep of the newest checkpoint in "
                            "--lora-dir (plus the no-LoRA baseline, once) into --sweep-dir, which "
                            "must lie outside the repository; needs --base-model, --lora-dir, "
                            "--trigger, --sweep-dir, --reference-dir and --lora-version "
                            "(default: off, the sweep is made elsewhere)")
    sweep.add_argument("--base-model", type=Path, metavar="PATH",
                       help="SDXL base for --generate: a .safetensors file or a diffusers folder")
    sweep.add_argument("--lora-dir", type=Path, metavar="DIR",
                       help="folder of sd-scripts LoRA files for --generate; its newest is swept")
    sweep.add_argument("--trigger", metavar="WORD", help="trigger word for --generate's prompts")
    sweep.add_argument("--sweep-config", type=Path, metavar="DIR",
                       help="generate_sweep.py --config: a diffusers config folder for a "
                            "single-file base without hub access (default: none)")
    sweep.add_argument("--generate-device", choices=("cuda", "cpu", "auto"), default=None,
                       help="generate_sweep.py --device (default: cuda; cpu for a tiny test run)")
    sweep.add_argument("--generate-args", metavar="ARGS",
                       help="more generate_sweep.py options as one string (strengths, CFG, "
                            "seeds, steps, size, prompts: see Usage above; write "
                            "--generate-args=OPTION for a single option); relative paths in it "
                            "are read from --project-root; the options the cycle sets itself ("
                            + ", ".join(GENERATE_RESERVED) + ") are refused (default: none)")
    parser.add_argument("--no-commit", action="store_true", help="skip step 8 (default: commit locally)")
    parser.add_argument("--step-timeout", type=float, default=DEFAULT_STEP_TIMEOUT, metavar="S",
                        help=f"seconds before a step is stopped (default: {DEFAULT_STEP_TIMEOUT})")
    return parser


def check_generate_args(parser: argparse.ArgumentParser, args, root: Path) -> None:
    """--generate and its companions, right after parsing (parser.error: exit 2). Paths become
    absolute; `root` is the resolved project root."""
    companions = (("--base-model", args.base_model), ("--lora-dir", args.lora_dir),
                  ("--trigger", args.trigger))
    optional = (("--sweep-config", args.sweep_config), ("--generate-device", args.generate_device),
                ("--generate-args", args.generate_args))
    if not args.generate:
        given = [flag for flag, value in companions + optional if value is not None]
        if given:
            parser.error(f"{', '.join(given)} only make{'s' if len(given) == 1 else ''} sense "
                         "with --generate")
        return
    missing = [flag for flag, value in companions + (("--sweep-dir", args.sweep_dir),
                                                      ("--reference-dir", args.reference_dir),
                                                      ("--lora-version", args.lora_version))
               if not value]
    if missing:
        parser.error(f"--generate needs {', '.join(missing)}")
    if not args.base_model.exists():
        parser.error(f"--base-model {args.base_model} does not exist (a .safetensors file or a "
                     "diffusers folder)")
    if not args.lora_dir.is_dir():
        parser.error(f"--lora-dir {args.lora_dir} is not a folder")
    if args.sweep_config is not None and not args.sweep_config.is_dir():
        parser.error(f"--sweep-config {args.sweep_config} is not a folder")
    if not args.trigger.strip():
        parser.error("--trigger is empty")
    if args.sweep_dir.exists() and not args.sweep_dir.is_dir():
        parser.error(f"--sweep-dir {args.sweep_dir} is not a folder")
    sweep = args.sweep_dir.resolve()
    if sweep == root or root in sweep.parents:
        parser.error(f"--sweep-dir {args.sweep_dir} lies inside the repository ({root}): "
                     "--generate writes its images there, and the cycle commits only the files it "
                     "owns and fails on any other new file; pass a folder outside the repository "
                     "(e.g. /workspace/sweep_results)")
    try:
        extra = split_command(args.generate_args or "")
    except ValueError as error:
        parser.error(f"--generate-args: cannot split it ({error})")
    for token in extra:
        name = token.split("=", 1)[0]
        if name == "-h" or (name.startswith("--") and len(name) > 2 and " " not in name
                            and any(flag.startswith(name) for flag in GENERATE_RESERVED)):
            parser.error(f"--generate-args: {token} is set by the cycle itself; use the cycle's "
                         "own flag (--base-model, --lora-dir, --trigger, --sweep-dir, "
                         "--sweep-config, --generate-device)")
    args.base_model, args.lora_dir = args.base_model.resolve(), args.lora_dir.resolve()
    args.sweep_dir = sweep
    if args.sweep_config is not None:
        args.sweep_config = args.sweep_config.resolve()


def _raise_interrupted(signum, _frame) -> None:
    raise CycleInterrupted(signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    git_program()  # once, now: before anything the cycle runs could plant another on PATH
    root = args.project_root
    if not root.is_dir():
        parser.error(f"--project-root {root} is not a folder; pass the repository root")
    root = root.resolve()
    check_generate_args(parser, args, root)
    if args.sweep_dir is not None:
        missing = [flag for flag, value in (("--reference-dir", args.reference_dir),
                                            ("--lora-version", args.lora_version)) if not value]
        if missing:
            parser.error(f"--sweep-dir needs {' and '.join(missing)}")
        if not args.sweep_dir.is_dir() and not (args.generate and not args.sweep_dir.exists()):
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
    if args.agent_cmd is not None and not split_command(args.agent_cmd):
        parser.error("--agent-cmd is empty")

    lock = CycleLock(root)
    try:
        lock.acquire()
    except LockBusy as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_LOCKED
    except OSError as error:
        print(f"error: cannot use the lock file {lock.path}: {error}", file=sys.stderr)
        return EXIT_FAILED
    handlers = {}
    for name in ("SIGTERM", "SIGHUP", "SIGBREAK"):
        if hasattr(signal, name):
            with contextlib.suppress(ValueError, OSError):  # not the main thread: leave them
                handlers[name] = signal.signal(getattr(signal, name), _raise_interrupted)
    become_subreaper()
    renew_pycache_prefix()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log = None
    try:
        try:
            log = CycleLog(root / LOG_DIR / f"cycle-{stamp}.log")
        except OSError as error:
            print(f"error: cannot create the cycle log in {root / LOG_DIR}: {error}", file=sys.stderr)
            return EXIT_FAILED
        if lock.previous:
            log.line(f"warning: took over the lock left by pid {lock.previous.get('pid')} "
                     f"(started {lock.previous.get('started')}, no longer running)")
        return run_cycle(args, root, log, lock)
    except (KeyboardInterrupt, CycleInterrupted) as stop:
        what = "Ctrl+C" if isinstance(stop, KeyboardInterrupt) else f"signal {stop.args[0]}"
        log.line(f"INTERRUPTED by {what}: the running step and its process group were stopped; "
                 f"nothing more was committed")
        return EXIT_FAILED
    finally:
        if log is not None:
            log.close()
        lock.release()
        drop_pycache_prefix()
        for name, handler in handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(getattr(signal, name), handler)


def report_failure(log: CycleLog, failure: StepFailed) -> int:
    log.line("")
    log.line(f"FAILED at step {failure.step}: {failure.reason}")
    shown = failure.command_text or (shlex.join(failure.command) if failure.command
                                     else "(the cycle itself)")
    log.line(f"  command: {shown}")
    log.line(f"  exit code: {failure.code if failure.code is not None else 'none'}")
    if failure.tail:
        log.line(f"  last {len(failure.tail)} lines of its output:" if failure.code is not None
                 else "  details:")
        for text in failure.tail:
            log.line(f"    | {text}")
    if failure.committed:
        log.line(f"commit {failure.committed[:12]} was made before this was found (local only; "
                 f"nothing was reverted)")
    else:
        log.line("later steps did not run; nothing was committed")
    return EXIT_FAILED


def run_cycle(args, root: Path, log: CycleLog, lock: CycleLock) -> int:
    try:
        return _run_cycle(args, root, log, lock)
    except StepFailed as failure:
        return report_failure(log, failure)


def _run_cycle(args, root: Path, log: CycleLog, lock: CycleLock) -> int:
    py = sys.executable
    today = dt.date.today().isoformat()
    briefing_rel = f"{BRIEFING_DIR}/briefing-{today}.md"
    agent_may_write = {path.format(date=today) for path in AGENT_WRITABLE}  # the briefing included
    briefing = root / briefing_rel
    tools, evals = root / "tools", root / "evals"
    timeout = args.step_timeout
    log.line(f"LifeOS cycle {today} in {root}{' (dry run)' if args.dry_run else ''}; log {log.path}")
    log.line(f"git: {git_program()}")

    # Step 1: the preflight script, then the cycle's own checks (a real run and --dry-run alike).
    budgets = None
    if args.agent_cmd is None:
        try:
            budgets = read_budgets(root / CONTRACT)
        except ValueError as error:
            raise StepFailed("1 preflight", [], None, [], str(error)) from None
        agent_command = default_agent_command(today, budgets)
    else:
        agent_command = split_command(args.agent_cmd)
    preflight = [py, str(tools / "lifeos_preflight.py"), "--project-root", str(root),
                 "--require-cli", "git", "--require-cli", agent_command[0]]
    try:
        run_step(log, "1 preflight", preflight, root, timeout)
    except StepFailed as failure:
        if shutil.which(agent_command[0]) is None:
            failure.reason += (f"; the agent's program {agent_command[0]!r} is not on PATH"
                               + (" (install the Claude Code CLI: npm install -g "
                                  "@anthropic-ai/claude-code, then log in with `claude`; or pass "
                                  "--agent-cmd)" if args.agent_cmd is None else ""))
        raise
    scanner = None
    if not args.no_commit:
        try:
            scanner = SecretScanner()
        except ImportError as error:
            raise StepFailed("1 preflight", [], None, [], f"detect-secrets is not installed ({error}); "
                             f"the commit's secret scan needs it: pip install detect-secrets==1.5.0 "
                             f"(or run with --no-commit)") from None
    try:
        promoter = load_promoter(root)
    except (OSError, SyntaxError, ImportError) as error:
        raise StepFailed("1 preflight", [], None, [], f"cannot load {PROMOTER} (the cycle reads the "
                         f"briefing's Status with its parser): {error}") from None
    owned = [*sorted(agent_may_write), *PROMOTE_WRITES,
             *(SCORECARD_WRITES if args.sweep_dir is not None else ())]
    dirty = dirty_paths(root, owned)
    if dirty:
        raise StepFailed("1 preflight", [], None, [], "files the cycle writes have uncommitted "
                         f"changes: {', '.join(map(show, dirty))}; commit or stash them first "
                         "(the cycle commits only what it wrote itself)")
    log.line(f"<== step 1 preflight (cycle checks): lock {lock.path.name} held, "
             + (f"budgets {budgets.tool_calls} tool calls / USD {budgets.usd:.2f}, " if budgets else "")
             + ("detect-secrets ready, " if scanner else "")
             + "the files the cycle writes are clean")
    if args.generate:
        # The sweep's plan, checked now (no torch, no model: it only reads the files' headers), so
        # a wrong path or option stops the cycle before the agent spends anything.
        plan = generate_command(args, root) + ["--dry-run"]
        run_step(log, "1 preflight (sweep plan)", plan, root, timeout,
                 echo=lambda text: "\t" not in text)  # the plan's lines go to the log only

    for name, script in (("2 freshness", tools / "lifeos_freshness_check.py"),
                         ("3 context budget", tools / "lifeos_context_budget.py"),
                         ("4 known failures", evals / "known_failures.py")):
        run_step(log, name, [py, str(script), "--project-root", str(root)], root, timeout)

    if args.dry_run:
        log.line("dry run: steps 5-8 would run these commands:")
        log.line(f"  5 agent: {shlex.join(agent_command)}")
        log.line(f"    then: {shlex.join([py, str(tools / 'promote_findings.py'), '--project-root', str(root), '--check', str(briefing)])}")
        for step in progress_steps(root):
            log.line(f"    and, when the agent changed {PROGRESS}: {shlex.join(step.command)}")
        for step in post_agent_steps(args, root, briefing):
            if step.skip_reason:
                log.line(f"  {step.name}: skipped ({step.skip_reason})")
                continue
            log.line(f"  {step.name}: {shlex.join(step.command)}")
            if step.decide is not None:
                if args.generate:
                    log.line("    (runs if the sweep has images newer than the last history entry "
                             "once 7 generate has run)")
                else:
                    run, why, notes = step.decide()
                    for note in notes:
                        log.line(f"    warning: {note}")
                    log.line(f"    ({'would run' if run else 'would be skipped'}: {why})")
        if args.no_commit:
            log.line("  8 commit: skipped (--no-commit)")
        else:
            log.line("  8 commit: the files the cycle wrote, by literal path, in a temporary index; "
                     "secret scan; git commit (never pushes)")
        log.line("dry run complete: steps 1-4 passed; nothing was changed")
        return EXIT_OK

    # Step 5: the agent, inside the envelope.
    own = frozenset({log.path.relative_to(root).as_posix()} if log.path is not None
                    and root in log.path.parents else ())
    cycle_start = snapshot_at("5 agent", root, own)
    agent_env = {"PISTACHIO_PROJECT_ROOT": str(root), "PISTACHIO_DATE": today,
                 "PISTACHIO_BRIEFING": str(briefing), "PISTACHIO_PYTHON": py}
    command = resolve_executable(agent_command)

    def record_agent(running: StepProcess) -> None:
        lock.set_agent(running.process.pid, None if os.name == "nt" else running.process.pid)

    renew_pycache_prefix()  # the agent's own, thrown away after it
    try:
        run_step(log, "5 agent", command, root, timeout, env=agent_env, on_start=record_agent)
    except StepFailed as failure:
        if args.agent_cmd is None and any(NOT_LOGGED_IN.search(text) for text in failure.tail):
            failure.reason = ("the Claude Code CLI is not logged in (it printed: "
                              f"{next(t for t in failure.tail if NOT_LOGGED_IN.search(t)).strip()}); "
                              "run `claude` once and log in (or set ANTHROPIC_API_KEY), then run "
                              "the cycle again")
        try:
            check_envelope(root, cycle_start, agent_may_write, failure.step, lock, log, own)
        except StepFailed as outside:
            outside.reason += f"; and the agent itself {failure.reason}"
            outside.code, outside.command = failure.code, failure.command
            raise outside from None
        raise
    finally:
        lock.set_agent(None)
        renew_pycache_prefix()  # the agent and everything it started are gone: a new, empty one
    written, state = check_envelope(root, cycle_start, agent_may_write, "5 agent",
                                    lock, log, own)
    if briefing_rel not in written:
        raise StepFailed("5 agent", agent_command, 0, [],
                         f"the agent exited 0 but wrote no {briefing_rel}")
    problems = agent_text_problems(root, written, today)
    if problems:
        raise StepFailed("5 agent", agent_command, 0, problems + [
            "(nothing was reverted: the files are left as they are for you to inspect)"],
            "the agent wrote what it may not: " + "; ".join(problems))
    check = [py, str(tools / "promote_findings.py"), "--project-root", str(root), "--check", str(briefing)]
    steps = [PostStep("5 agent (briefing check)", check, ())]
    if PROGRESS in written:  # what the next cycle's steps 3 and 4 check in it, checked now
        steps += progress_steps(root)
    steps += post_agent_steps(args, root, briefing)
    status = stop_reason = ""

    # The briefing check, then steps 6 and 7 (and any added later): each may write only its own
    # files, compared with the state the previous step left.
    scored = "no sweep given"
    for step in steps:
        skip = step.skip_reason
        if skip is None and step.decide is not None:
            run, why, notes = step.decide()  # now: after the steps before it (7 generate)
            for note in notes:
                log.line(f"warning: {note}")
            if run:
                log.line(f"step {step.name} runs: {why}")
            else:
                skip = why
        if skip:
            log.line(f"==> step {step.name}: skipped ({skip})")
            if step.name == "7 scorecard":
                scored = (f"generated sweep {args.sweep_dir.name}, scoring skipped ({skip})"
                          if args.generate else f"sweep skipped ({skip})")
            continue
        run_step(log, step.name, step.command, root, timeout)
        after = snapshot_at(step.name, root, own)
        problems, changed = compare_states(state, after, allowed_patterns=step.writes)
        if problems:
            raise StepFailed(step.name, step.command, 0, problems,
                             f"it changed files outside its own: {'; '.join(problems)}")
        state = after
        written += [path for path in changed if path not in written]
        if step.name == "5 agent (briefing check)":
            status, stop_reason = read_briefing_status(briefing, promoter)
        if step.name == "7 scorecard":
            scored = (f"{'generated and ' if args.generate else ''}scored sweep "
                      f"{args.sweep_dir.name} as {args.lora_version}")

    # Step 8: commit exactly what the cycle wrote.
    commit = None
    if args.no_commit:
        log.line("==> step 8 commit: skipped (--no-commit)")
    else:
        commit = commit_cycle(log, root, sorted(written), briefing, scored, scanner, today,
                              checked=state.files)
    pushes = find_pushes(cycle_start, snapshot_at("8 commit", root, own))
    if pushes:
        raise StepFailed("8 commit", [], None, pushes, "a push happened during the cycle: "
                         + "; ".join(pushes), committed=commit)
    log.line(f"push check: {push_check_summary(cycle_start)}")
    if status in ("stopped", "failed"):
        log.line(f"cycle complete, but the agent stopped: Status: {status}; Stop reason: "
                 f"{stop_reason or '(none given)'}")
        return EXIT_AGENT_STOPPED
    log.line("cycle complete")
    return EXIT_OK


def check_envelope(root: Path, before: RepoState, allowed: set[str], step: str,
                   lock: CycleLock, log: CycleLog, own: frozenset[str] = frozenset()
                   ) -> tuple[list[str], RepoState]:
    """After the agent: what it wrote within `allowed` and the state it left; StepFailed naming
    everything else (`own`: the cycle's log, left out)."""
    after = snapshot_at(step, root, own)
    problems, written = compare_states(before, after, allowed=allowed)
    pushes = find_pushes(before, after)
    problems += [f"pushed: {push}" for push in pushes]
    if not lock.intact():
        problems.append(f"the lock file {LOCK_NAME} was changed or removed while the agent ran")
    if problems:
        raise StepFailed(step, [], None, problems + ["(nothing was reverted: the files are left "
                                                    "as they are for you to inspect)"],
                         f"the agent went outside what it may do ({len(problems)} problem(s)): "
                         + "; ".join(problems[:10])
                         + (f"; and {len(problems) - 10} more (listed below)"
                            if len(problems) > 10 else ""))
    return written, after


def commit_message(today: str, briefing: Path, scored: str, written: list[str]) -> str:
    """The cycle's commit message; its subject starts with COMMIT_PREFIX."""
    return (f"{COMMIT_PREFIX}{today}: briefing {briefing.name} promoted; {scored}\n\n"
            "Files written by tools/run_full_cycle.py:\n" + "\n".join(f"- {path}" for path in written))


def commit_cycle(log: CycleLog, root: Path, written: list[str], briefing: Path, scored: str,
                 scanner: SecretScanner, today: str | None = None,
                 checked: dict[str, str] | None = None) -> str | None:
    never = [path for path in written if path in NEVER_COMMITTED]
    if never:
        raise StepFailed("8 commit", [], None, [], f"refusing to commit {', '.join(never)} "
                         "(the CRITICAL rules are edited by humans only)")
    if not written:
        log.line("==> step 8 commit: nothing to commit")
        return None
    message = commit_message(today or dt.date.today().isoformat(), briefing, scored, written)
    head = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).stdout.strip()
    try:
        commit = commit_paths(log, root, written, message, scanner, append_only=(HISTORY,),
                              checked=checked, today=today)
        extra = verify_commit(root, commit, written)
    except GitFailed as error:  # a corrupt object, a full disk: one FAILED line, never a traceback
        now = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).stdout.strip()
        if now != head:
            raise StepFailed("8 commit", error.command, error.code, error.lines, error.reason,
                             committed=now) from None
        raise error.step_failed("8 commit") from None
    if extra:
        raise StepFailed("8 commit", [], None, extra, f"commit {commit[:12]} also changed "
                         f"{', '.join(map(show, extra))} (a commit hook?); check it before pushing",
                         committed=commit)
    log.line(f"<== step 8 commit: {commit[:12]} (local only)")
    return commit


if __name__ == "__main__":
    sys.exit(main())
