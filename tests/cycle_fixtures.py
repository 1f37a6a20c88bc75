"""Shared pieces of the tools/run_full_cycle.py tests: temporary clones with a bare remote, a user's
own untracked and staged files, stand-in agents, fake secrets built at run time, and the real
Claude Code CLI from npm (installed once into a cache folder outside the repository).

Import the fixtures into a test module with `from cycle_fixtures import clone, ...`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import shutil
import string
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_script

GIT_ID = ["-c", "user.name=Cycle Test", "-c", "user.email=cycle@example.com"]
SAMPLE_BRIEFING = REPO_ROOT / "tests" / "data" / "briefing-sample-v3.md"
CLAUDE_CODE_VERSION = "2.1.332"  # the pinned Claude Code CLI (npm @anthropic-ai/claude-code)


def git(cwd, *args, check: bool = True) -> str:
    return subprocess.run(["git", *GIT_ID, *args], cwd=cwd, check=check, capture_output=True,
                          text=True).stdout


def project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of this checkout: what a clone would hold."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    return [name for name in listing.split("\0") if name and (REPO_ROOT / name).is_file()]


def today() -> str:
    return dt.date.today().isoformat()


def make_clone(tmp_path: Path) -> Path:
    """A fresh repository holding this project, documents dated today, with a bare 'origin'."""
    root = tmp_path / "project"
    for name in project_files():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    for path in root.rglob("*.md"):
        text = path.read_text(encoding="utf-8")
        fresh = re.sub(r"(Last updated:\s*)\d{4}-\d{2}-\d{2}", rf"\g<1>{today()}", text)
        if fresh != text:
            path.write_text(fresh, encoding="utf-8")
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    git(root, "config", "user.name", "Cycle Test")
    git(root, "config", "user.email", "cycle@example.com")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "initial")
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(root), str(remote))
    git(root, "remote", "add", "origin", str(remote))
    git(root, "fetch", "-q", "origin")
    git(root, "branch", "-q", "--set-upstream-to=origin/main", "main")
    return root


@pytest.fixture
def clone(tmp_path):
    return make_clone(tmp_path)


def base_env(tmp_path: Path, path_dirs: list[str] | None = None) -> dict:
    """A clean environment for the cycle and its agent: no credentials of this machine, caches and
    HOME inside the test folder, nothing that could reach a real model API."""
    keep = ("LANG", "LC_ALL", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT", "WINDIR", "COMSPEC",
            "PATHEXT", "USERPROFILE" if os.name == "nt" else "")
    env = {name: os.environ[name] for name in keep if name and name in os.environ}
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    env.update({
        "PATH": os.pathsep.join(path_dirs) if path_dirs is not None else os.environ.get("PATH", ""),
        "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "LOCALAPPDATA": str(tmp_path / "cache"), "APPDATA": str(home / "appdata"),
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
        # Claude Code: no updates, telemetry or other traffic; and any API call goes to a closed
        # port on this machine unless a test points it at its own fake server.
        "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "PYTHONIOENCODING": "utf-8",
    })
    return env


@pytest.fixture
def cycle_env(tmp_path):
    return base_env(tmp_path)


def run_cycle(root: Path, *args, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """The cycle as a user runs it, with exactly `env` (run_script adds os.environ: not here)."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools/run_full_cycle.py"),
                           "--project-root", str(root), *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=env)


def stand_in_agent(folder: Path, body: str, name: str = "stand_in_agent.py") -> str:
    """Write a stand-in agent script and return the --agent-cmd that runs it."""
    script = folder / name
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    return f"{sys.executable} {script}" if os.name != "nt" else f'"{sys.executable}" "{script}"'


BRIEFING_AGENT = f"""
    import os, pathlib, re
    date = os.environ["PISTACHIO_DATE"]
    root = pathlib.Path(os.environ["PISTACHIO_PROJECT_ROOT"])
    text = pathlib.Path({str(SAMPLE_BRIEFING)!r}).read_text(encoding="utf-8")
    text = text.replace("2026-02-11", date)
    pathlib.Path(os.environ["PISTACHIO_BRIEFING"]).write_text(text, encoding="utf-8")
    print("stand-in agent wrote", os.environ["PISTACHIO_BRIEFING"])
"""


def briefing_agent(extra: str = "") -> str:
    """The stand-in agent body: writes today's valid briefing, then runs `extra` (dedented)."""
    return textwrap.dedent(BRIEFING_AGENT) + textwrap.dedent(extra)


def commits(root) -> list[str]:
    return git(root, "rev-list", "HEAD").split()


def committed_paths(root, since: str) -> set[str]:
    """Every path any commit after `since` touched."""
    listing = git(root, "log", "--name-only", "--format=", f"{since}..HEAD")
    return {line for line in listing.splitlines() if line}


# ---------------------------------------------------------------- a user's own work

@dataclass
class UserWork:
    """Untracked and staged files a user has in the clone before the cycle starts."""
    root: Path
    head: str
    untracked: dict[str, bytes] = field(default_factory=dict)
    staged: dict[str, bytes] = field(default_factory=dict)
    index: str = ""

    def assert_intact(self) -> None:
        """Neither committed nor modified: same bytes, untracked still untracked, staged still
        staged with the same blob, and no commit since the start touched them."""
        touched = committed_paths(self.root, self.head)
        for path, data in {**self.untracked, **self.staged}.items():
            assert (self.root / path).read_bytes() == data, f"{path} was modified"
            assert path not in touched, f"{path} was committed"
        tracked = set(git(self.root, "ls-files", "-z").split("\0"))
        for path in self.untracked:
            assert path not in tracked, f"{path} is no longer untracked"
        index_now = git(self.root, "ls-files", "-s", "--", *self.staged)
        assert index_now == self.index, "the user's staged entries changed"
        staged_now = set(git(self.root, "diff", "--cached", "--name-only").split())
        assert set(self.staged) <= staged_now, "the user's staged files are no longer staged"


def add_user_work(root: Path) -> UserWork:
    """A `.env` with a key and a private key file (untracked), a new file and a change (staged)."""
    secrets = FakeSecrets(seed=11)
    work = UserWork(root, git(root, "rev-parse", "HEAD").strip())
    work.untracked = {
        ".env": f"OPENAI_API_KEY={secrets.openai_project()}\nHF_TOKEN={secrets.huggingface()}\n".encode(),
        "private/id_ed25519": secrets.private_key_block("OPENSSH").encode(),
        "notes/ideas.md": b"# my own notes, not for the cycle\n",
    }
    for path, data in work.untracked.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    draft = root / "notes" / "draft-staged.md"
    draft.write_bytes(b"# a draft the user has staged\n")
    review = root / "CODEX-REVIEW-REPORT.md"
    review.write_bytes(review.read_bytes() + b"\nA line the user added and staged.\n")
    git(root, "add", "--", "notes/draft-staged.md", "CODEX-REVIEW-REPORT.md")
    work.staged = {"notes/draft-staged.md": draft.read_bytes(),
                   "CODEX-REVIEW-REPORT.md": review.read_bytes()}
    work.index = git(root, "ls-files", "-s", "--", *work.staged)
    return work


# ---------------------------------------------------------------- fake secrets

class FakeSecrets:
    """Realistic-looking but random secrets, assembled at run time from pieces so that this file
    itself holds nothing a scanner would flag."""

    ALNUM = string.ascii_letters + string.digits
    UPPER = string.ascii_uppercase + string.digits

    def __init__(self, seed: int = 0):
        self.random = random.Random(seed)

    def chars(self, n: int, alphabet: str = ALNUM) -> str:
        return "".join(self.random.choice(alphabet) for _ in range(n))

    def aws_access_key(self, prefix: str = "AK" + "IA") -> str:
        return prefix + self.chars(16, self.UPPER)

    def aws_secret_key(self) -> str:
        return self.chars(40, self.ALNUM + "/+")

    def stripe_live(self, kind: str = "s") -> str:
        return f"{kind}k_" + "live_" + self.chars(24)

    def github_classic(self) -> str:
        return "gh" + "p_" + self.chars(36)

    def github_fine_grained(self) -> str:
        return "github" + "_pat_" + self.chars(22) + "_" + self.chars(59)

    def google_api_key(self) -> str:
        return "AI" + "za" + self.chars(35, self.ALNUM + "-_")

    def slack_bot(self) -> str:
        digits = string.digits
        return "xo" + "xb-" + self.chars(12, digits) + "-" + self.chars(13, digits) + "-" + self.chars(24)

    def slack_webhook(self) -> str:
        return ("https://hooks.slack.com/" + "services/T" + self.chars(8, self.UPPER) + "/B"
                + self.chars(8, self.UPPER) + "/" + self.chars(24))

    def anthropic(self) -> str:
        return "sk-" + "ant-" + "api03-" + self.chars(93, self.ALNUM + "-_") + "AA"

    def openai_project(self) -> str:
        return ("sk-" + "proj-" + self.chars(74, self.ALNUM + "-_") + "T3Blbk" + "FJ"
                + self.chars(74, self.ALNUM + "-_"))

    def huggingface(self) -> str:
        return "h" + "f_" + self.chars(34)

    def private_key_block(self, kind: str = "RSA") -> str:
        body = "\n".join(self.chars(64, self.ALNUM + "+/") for _ in range(6))
        label = f"{kind} PRIVATE KEY" if kind else "PRIVATE KEY"
        return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"

    def jwt(self) -> str:
        import base64

        def part(payload: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        return ".".join([part({"alg": "HS256", "typ": "JWT"}),
                         part({"sub": self.chars(10), "name": "pod", "iat": 1700000000}),
                         self.chars(43, self.ALNUM + "-_")])

    def gitlab(self) -> str:
        return "glp" + "at-" + self.chars(20, self.ALNUM + "-_")

    def npm(self) -> str:
        return "np" + "m_" + self.chars(36)


# ---------------------------------------------------------------- the real Claude Code CLI

def claude_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pistachio-tests" / f"claude-code-{CLAUDE_CODE_VERSION}"


def claude_binary(prefix: Path) -> Path:
    return prefix / "node_modules" / ".bin" / ("claude.cmd" if os.name == "nt" else "claude")


def install_claude_code() -> Path:
    """The pinned CLI from npm into the cache (once); returns the folder holding `claude`."""
    prefix = claude_cache_dir()
    binary = claude_binary(prefix)
    if binary.exists() and CLAUDE_CODE_VERSION in _version(binary):
        return binary.parent
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install the Claude Code CLI for this test")
    staging = prefix.with_name(prefix.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        completed = subprocess.run(
            [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--no-save",
             "--loglevel=error", f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
            capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip("npm install of the Claude Code CLI timed out (registry unreachable?)")
    if completed.returncode != 0 or CLAUDE_CODE_VERSION not in _version(claude_binary(staging)):
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"could not install @anthropic-ai/claude-code@{CLAUDE_CODE_VERSION} from npm: "
                    f"{(completed.stderr or completed.stdout).strip()[-300:]}")
    shutil.rmtree(prefix, ignore_errors=True)
    staging.rename(prefix)
    return claude_binary(prefix).parent


def _version(binary: Path) -> str:
    if not binary.exists():
        return ""
    try:
        return subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              timeout=120, env={"PATH": os.environ.get("PATH", ""),
                                                "HOME": str(binary.parent),
                                                "DISABLE_AUTOUPDATER": "1"}).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


@pytest.fixture(scope="session")
def claude_bin_dir() -> Path:
    """The folder of the real, pinned `claude` (skips with the reason when it cannot be had)."""
    return install_claude_code()


def path_without_claude() -> list[str]:
    """PATH folders that hold git and Python but no `claude`."""
    folders = []
    for program in ("git", Path(sys.executable).name):
        found = shutil.which(program)
        if found and str(Path(found).parent) not in folders:
            folders.append(str(Path(found).parent))
    folders.append(str(Path(sys.executable).parent))
    if shutil.which("claude", path=os.pathsep.join(folders)):
        pytest.skip("a claude program sits beside git or python here; cannot build a PATH without it")
    return folders


def wait_for(predicate, timeout: float = 30, interval: float = 0.05) -> bool:
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


__all__ = ["GIT_ID", "SAMPLE_BRIEFING", "CLAUDE_CODE_VERSION", "git", "clone", "cycle_env",
           "base_env", "run_cycle", "stand_in_agent", "briefing_agent", "commits",
           "committed_paths", "UserWork", "add_user_work", "FakeSecrets", "claude_bin_dir",
           "install_claude_code", "path_without_claude", "wait_for", "last_line", "today",
           "make_clone", "json", "run_script"]
