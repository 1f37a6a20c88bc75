"""tools/run_full_cycle.py end to end in temporary clones, and run-full-cycle.ps1's pass-through."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT, load_script, run_script

GIT_ID = ["-c", "user.name=Cycle Test", "-c", "user.email=cycle@example.com"]
SAMPLE_BRIEFING = REPO_ROOT / "tests" / "data" / "briefing-sample-v3.md"


def git(cwd, *args) -> str:
    return subprocess.run(["git", *GIT_ID, *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of this checkout: what a clone would hold."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    return [name for name in listing.split("\0") if name and (REPO_ROOT / name).is_file()]


@pytest.fixture
def clone(tmp_path):
    """A fresh repository holding this project, documents dated today, with a bare 'origin'."""
    root = tmp_path / "project"
    for name in project_files():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    today = dt.date.today().isoformat()
    for path in root.rglob("*.md"):
        text = path.read_text(encoding="utf-8")
        fresh = re.sub(r"(Last updated:\s*)\d{4}-\d{2}-\d{2}", rf"\g<1>{today}", text)
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
    return root


@pytest.fixture
def cycle_env(tmp_path):
    """Keep caches the steps write (embeddings) inside the test folder."""
    return {"XDG_CACHE_HOME": str(tmp_path / "cache"), "LOCALAPPDATA": str(tmp_path / "cache")}


def stand_in_agent(folder, body: str) -> str:
    """Write a stand-in agent script and return the --agent-cmd that runs it."""
    script = folder / "stand_in_agent.py"
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    return f"{sys.executable} {script}" if os.name != "nt" else f'"{sys.executable}" "{script}"'


BRIEFING_AGENT = f"""
    import os, pathlib, re
    date = os.environ["PISTACHIO_DATE"]
    text = pathlib.Path({str(SAMPLE_BRIEFING)!r}).read_text(encoding="utf-8")
    text = text.replace("2026-02-11", date)
    pathlib.Path(os.environ["PISTACHIO_BRIEFING"]).write_text(text, encoding="utf-8")
    print("stand-in agent wrote", os.environ["PISTACHIO_BRIEFING"])
"""


def commits(root) -> list[str]:
    return git(root, "rev-list", "HEAD").split()


def test_help_and_usage_errors(tmp_path):
    completed = run_script("tools/run_full_cycle.py", "--help")
    assert completed.returncode == 0 and "--dry-run" in completed.stdout
    completed = run_script("tools/run_full_cycle.py", "--project-root", tmp_path / "nowhere")
    assert completed.returncode == 2 and "is not a folder" in completed.stderr
    completed = run_script("tools/run_full_cycle.py", "--project-root", tmp_path,
                           "--sweep-dir", tmp_path)
    assert completed.returncode == 2
    assert "--sweep-dir needs --reference-dir and --lora-version" in completed.stderr


def test_dry_run_passes_and_changes_nothing(clone, cycle_env):
    completed = run_script("tools/run_full_cycle.py", "--project-root", clone, "--dry-run",
                           env=cycle_env, timeout=900)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    for step in ("1 preflight", "2 freshness", "3 context budget", "4 known failures"):
        assert f"<== step {step}: exit 0" in completed.stdout
    assert "5 agent: claude -p" in completed.stdout
    assert "dry run complete" in completed.stdout
    assert git(clone, "status", "--porcelain") == ""
    assert len(commits(clone)) == 1


def test_full_cycle_promotes_scores_commits_once_and_never_pushes(clone, cycle_env, tmp_path,
                                                                    faces_dir):
    sweep, reference = tmp_path / "sweep", tmp_path / "reference"
    sweep.mkdir()
    reference.mkdir()
    shutil.copy(faces_dir / "photos/obama_1.jpg", sweep / "step100_str0.80_cfg4.0_seed1.jpg")
    shutil.copy(faces_dir / "photos/biden_2.jpg", sweep / "step100_str0.80_cfg4.0_seed2.jpg")
    for name in ("obama_2.jpg", "obama_3.jpg", "obama_4.jpg"):  # the skin eval needs 3+
        shutil.copy(faces_dir / "photos" / name, reference / name)
    remote_before = git(tmp_path / "remote.git", "rev-parse", "main")
    agent = stand_in_agent(tmp_path, BRIEFING_AGENT)

    completed = run_script("tools/run_full_cycle.py", "--project-root", clone, "--agent-cmd", agent,
                           "--sweep-dir", sweep, "--reference-dir", reference,
                           "--lora-version", "v3", "--backend", "dlib", env=cycle_env, timeout=1200)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr
    assert "<== step 6 promote: exit 0" in completed.stdout
    assert "<== step 7 scorecard: exit 0" in completed.stdout

    today = dt.date.today().isoformat()
    tasks = (clone / "autonomous-research/pending-tasks.md").read_text(encoding="utf-8")
    assert f"Re-run the v3 sweep at strength 0.75 and 0.80 only" in tasks
    assert f"(source: briefing-{today}.md" in tasks
    history = (clone / "evals/eval_history.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(history) == 1 and json.loads(history[0])["lora_version"] == "v3"

    assert len(commits(clone)) == 2, "exactly one commit by the cycle"
    assert git(clone, "status", "--porcelain") == "", "everything the cycle wrote was committed"
    committed = git(clone, "show", "--name-only", "--format=", "HEAD").split()
    assert f"autonomous-research/briefing-{today}.md" in committed
    assert "autonomous-research/pending-tasks.md" in committed
    assert "evals/eval_history.jsonl" in committed
    assert git(tmp_path / "remote.git", "rev-parse", "main") == remote_before, "nothing pushed"


def test_syntax_error_stops_at_step_4_without_commit(clone, cycle_env, tmp_path):
    (clone / "tools/broken_tool.py").write_text("def broken(:\n    pass\n", encoding="utf-8")
    agent = stand_in_agent(tmp_path, BRIEFING_AGENT)
    completed = run_script("tools/run_full_cycle.py", "--project-root", clone, "--agent-cmd", agent,
                           env=cycle_env, timeout=900)
    assert completed.returncode == 1
    assert "FAILED at step 4 known failures: exited with code 1" in completed.stdout
    assert "broken_tool.py" in completed.stdout
    assert "==> step 5 agent" not in completed.stdout
    assert len(commits(clone)) == 1
    assert not list((clone / "autonomous-research").glob("briefing-*.md"))


def test_agent_without_briefing_fails_step_5(clone, cycle_env, tmp_path):
    agent = stand_in_agent(tmp_path, "print('did nothing')\n")
    completed = run_script("tools/run_full_cycle.py", "--project-root", clone, "--agent-cmd", agent,
                           env=cycle_env, timeout=900)
    assert completed.returncode == 1
    assert "FAILED at step 5 agent: the agent exited 0 but wrote no" in completed.stdout
    assert len(commits(clone)) == 1


def test_agent_timeout_is_stopped(clone, cycle_env, tmp_path):
    agent = stand_in_agent(tmp_path, "import time\nprint('thinking', flush=True)\ntime.sleep(600)\n")
    completed = run_script("tools/run_full_cycle.py", "--project-root", clone, "--agent-cmd", agent,
                           "--step-timeout", "15", env=cycle_env, timeout=900)
    assert completed.returncode == 1
    assert "FAILED at step 5 agent: timed out after 15 s" in completed.stdout
    assert "| thinking" in completed.stdout


def test_secret_written_by_the_cycle_is_refused(clone, cycle_env, tmp_path):
    agent = stand_in_agent(tmp_path, textwrap.dedent(BRIEFING_AGENT) + textwrap.dedent("""
        (pathlib.Path(os.environ["PISTACHIO_PROJECT_ROOT"]) / ".env").write_text("API_KEY=x\\n")
    """))
    completed = run_script("tools/run_full_cycle.py", "--project-root", clone, "--agent-cmd", agent,
                           env=cycle_env, timeout=900)
    assert completed.returncode == 1
    assert "FAILED at step 8 commit: refusing to commit files that look like secrets: .env" in completed.stdout
    assert len(commits(clone)) == 1


def test_lock_blocks_a_second_cycle_and_stale_lock_is_replaced(tmp_path):
    module = load_script("tools/run_full_cycle.py")
    lock = module.acquire_lock(tmp_path)
    with pytest.raises(RuntimeError, match="another cycle is running"):
        module.acquire_lock(tmp_path)
    lock.unlink()
    # A lock written by a process that has exited is stale.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    (tmp_path / module.LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}),
        encoding="utf-8")
    lock = module.acquire_lock(tmp_path)
    assert json.loads(lock.read_text(encoding="utf-8"))["pid"] == os.getpid()
    lock.unlink()


def test_a_folder_that_is_not_a_git_repository_is_a_usage_error(tmp_path):
    completed = run_script("tools/run_full_cycle.py", "--project-root", tmp_path, "--dry-run")
    assert completed.returncode == 2
    assert "is not the root of a git repository" in completed.stderr
    assert not (tmp_path / ".cycle-logs").exists() and not (tmp_path / ".cycle.lock").exists()


def test_a_lock_just_created_but_not_yet_written_is_held(tmp_path):
    module = load_script("tools/run_full_cycle.py")
    (tmp_path / module.LOCK_NAME).write_text("", encoding="utf-8")
    with pytest.raises(RuntimeError, match="another cycle is starting"):
        module.acquire_lock(tmp_path)


def test_agent_command_splits_like_the_platform_shell():
    module = load_script("tools/run_full_cycle.py")
    assert module.split_command('py -3 "C:\\a b\\agent.py" --x', windows=True) == [
        "py", "-3", "C:\\a b\\agent.py", "--x"]
    assert module.split_command("python3 '/tmp/a b/agent.py' --x", windows=False) == [
        "python3", "/tmp/a b/agent.py", "--x"]


def test_files_written_by_cycle_ignores_earlier_user_changes():
    module = load_script("tools/run_full_cycle.py")
    before = {"notes.md": "aaa", "PROGRESS.md": "bbb"}
    after = {"notes.md": "aaa", "PROGRESS.md": "ccc", "autonomous-research/briefing-x.md": "ddd"}
    assert module.files_written_by_cycle(before, after) == [
        "PROGRESS.md", "autonomous-research/briefing-x.md"]


def test_powershell_wrapper_passes_arguments_and_exit_code():
    text = (REPO_ROOT / "run-full-cycle.ps1").read_text(encoding="utf-8")
    assert "Get-Command py" in text and "Get-Command python" in text
    assert text.index("Get-Command py ") < text.index("Get-Command python")
    assert "@passThrough" in text and "$args" in text
    assert "exit $LASTEXITCODE" in text
    pwsh = shutil.which("pwsh")
    if pwsh is None:
        pytest.skip("PowerShell (pwsh) is not installed here; checked the script's text only")
    completed = subprocess.run([pwsh, "-NoProfile", "-File", str(REPO_ROOT / "run-full-cycle.ps1"),
                                "--project-root", str(REPO_ROOT / "nowhere")], capture_output=True,
                               text=True)
    assert completed.returncode == 2
