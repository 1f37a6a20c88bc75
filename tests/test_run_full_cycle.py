"""tools/run_full_cycle.py end to end in temporary clones, and run-full-cycle.ps1's pass-through.

The attacks on the cycle's safety envelope are in test_cycle_security.py, the lock and process
groups in test_cycle_lock.py, the secret scan in test_cycle_secrets.py, and the real Claude Code
CLI in test_cycle_claude_cli.py.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, load_script, run_script
from cycle_fixtures import (BRIEFING_AGENT, add_user_work, base_env, claude_bin_dir,  # noqa: F401
                            clone, commits, cycle_env, git, path_without_claude, run_cycle,
                            stand_in_agent, wait_for)


def test_help_and_usage_errors(tmp_path):
    completed = run_script("tools/run_full_cycle.py", "--help")
    assert completed.returncode == 0 and "--dry-run" in completed.stdout
    assert "Exit 0 the cycle completed" in completed.stdout and "4 the cycle completed" in completed.stdout
    completed = run_script("tools/run_full_cycle.py", "--project-root", tmp_path / "nowhere")
    assert completed.returncode == 2 and "is not a folder" in completed.stderr
    completed = run_script("tools/run_full_cycle.py", "--project-root", tmp_path,
                           "--sweep-dir", tmp_path)
    assert completed.returncode == 2
    assert "--sweep-dir needs --reference-dir and --lora-version" in completed.stderr
    completed = run_script("tools/run_full_cycle.py", "--project-root", tmp_path, "--agent-cmd", " ")
    assert completed.returncode == 2


def test_dry_run_fails_at_step_1_naming_the_cli_where_it_is_missing(clone, tmp_path):
    work = add_user_work(clone)
    env = base_env(tmp_path, path_without_claude())
    completed = run_cycle(clone, "--dry-run", env=env)
    assert completed.returncode == 1, completed.stdout
    assert "FAIL preflight cli: not on PATH: claude" in completed.stdout
    assert "FAILED at step 1 preflight" in completed.stdout
    assert "the agent's program 'claude' is not on PATH (install the Claude Code CLI" in completed.stdout
    assert "==> step 2 freshness" not in completed.stdout
    assert "dry run complete" not in completed.stdout
    assert len(commits(clone)) == 1
    work.assert_intact()


def test_dry_run_passes_where_the_cli_is_installed_and_changes_nothing(clone, tmp_path,
                                                                     claude_bin_dir):
    env = base_env(tmp_path, [str(claude_bin_dir), *path_without_claude()])
    completed = run_cycle(clone, "--dry-run", env=env)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    for step in ("1 preflight", "2 freshness", "3 context budget", "4 known failures"):
        assert f"<== step {step}: exit 0" in completed.stdout
    assert "--require-cli claude" in completed.stdout
    assert "<== step 1 preflight (cycle checks): lock .cycle.lock held, budgets 100 tool calls / " \
           "USD 5.00, detect-secrets ready" in completed.stdout
    assert "5 agent: claude -p" in completed.stdout and "--max-turns 100" in completed.stdout
    assert "dry run complete" in completed.stdout
    assert git(clone, "status", "--porcelain") == ""
    assert len(commits(clone)) == 1
    assert not (clone / ".cycle.lock").exists(), "the lock is gone after the run"


def test_dry_run_holds_the_lock_like_a_real_run(clone, cycle_env, tmp_path):
    cycle = load_script("tools/run_full_cycle.py")
    lock = cycle.CycleLock(clone)
    lock.acquire()
    try:
        agent = stand_in_agent(tmp_path, "print('never runs')\n")
        completed = run_cycle(clone, "--dry-run", "--agent-cmd", agent, env=cycle_env)
    finally:
        lock.release()
    assert completed.returncode == 3
    assert f"another cycle is running (pid {os.getpid()}" in completed.stderr


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
    work = add_user_work(clone)
    agent = stand_in_agent(tmp_path, BRIEFING_AGENT)

    completed = run_cycle(clone, "--agent-cmd", agent, "--sweep-dir", sweep, "--reference-dir",
                          reference, "--lora-version", "v3", "--backend", "dlib", env=cycle_env,
                          timeout=1200)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr
    assert "<== step 6 promote: exit 0" in completed.stdout
    assert "<== step 7 scorecard: exit 0" in completed.stdout

    today = dt.date.today().isoformat()
    tasks = (clone / "autonomous-research/pending-tasks.md").read_text(encoding="utf-8")
    assert "Re-run the v3 sweep at strength 0.75 and 0.80 only" in tasks
    assert f"(source: briefing-{today}.md" in tasks
    history = (clone / "evals/eval_history.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(history) == 1 and json.loads(history[0])["lora_version"] == "v3"

    assert len(commits(clone)) == 2, "exactly one commit by the cycle"
    committed = git(clone, "show", "--name-only", "--format=", "HEAD").split()
    assert f"autonomous-research/briefing-{today}.md" in committed
    assert "autonomous-research/pending-tasks.md" in committed
    assert "evals/eval_history.jsonl" in committed and "evals/latest_report.md" in committed
    assert any(path.startswith("evals/runs/") for path in committed), "the sidecar is committed"
    work.assert_intact()
    leftover = git(clone, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert sorted(line[3:] for line in leftover) == sorted(
        [*work.untracked, *work.staged]), "everything the cycle wrote was committed"
    assert git(tmp_path / "remote.git", "rev-parse", "main") == remote_before, "nothing pushed"
    assert "push check: nothing was pushed to origin" in completed.stdout


def test_syntax_error_stops_at_step_4_without_commit(clone, cycle_env, tmp_path):
    (clone / "tools/broken_tool.py").write_text("def broken(:\n    pass\n", encoding="utf-8")
    agent = stand_in_agent(tmp_path, BRIEFING_AGENT)
    completed = run_cycle(clone, "--agent-cmd", agent, env=cycle_env)
    assert completed.returncode == 1
    assert "FAILED at step 4 known failures: exited with code 1" in completed.stdout
    assert "broken_tool.py" in completed.stdout
    assert "==> step 5 agent" not in completed.stdout
    assert len(commits(clone)) == 1
    assert not list((clone / "autonomous-research").glob("briefing-*.md"))


def test_agent_without_briefing_fails_step_5(clone, cycle_env, tmp_path):
    agent = stand_in_agent(tmp_path, "print('did nothing')\n")
    completed = run_cycle(clone, "--agent-cmd", agent, env=cycle_env)
    assert completed.returncode == 1
    assert "FAILED at step 5 agent: the agent exited 0 but wrote no" in completed.stdout
    assert len(commits(clone)) == 1


def test_agent_that_writes_another_days_briefing_fails_step_5(clone, cycle_env, tmp_path):
    agent = stand_in_agent(tmp_path, BRIEFING_AGENT.replace(
        'pathlib.Path(os.environ["PISTACHIO_BRIEFING"])',
        '(root / "autonomous-research" / "briefing-2020-01-01.md")'))
    completed = run_cycle(clone, "--agent-cmd", agent, env=cycle_env)
    assert completed.returncode == 1
    assert "created: autonomous-research/briefing-2020-01-01.md" in completed.stdout
    assert len(commits(clone)) == 1


def test_agent_timeout_stops_it_and_its_children(clone, cycle_env, tmp_path):
    pid_file = tmp_path / "child.pid"
    agent = stand_in_agent(tmp_path, f"""
        import subprocess, sys, time, pathlib
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
        print('thinking', flush=True)
        time.sleep(600)
    """)
    completed = run_cycle(clone, "--agent-cmd", agent, "--step-timeout", "15", env=cycle_env)
    assert completed.returncode == 1
    assert "FAILED at step 5 agent: timed out after 15 s" in completed.stdout
    assert "| thinking" in completed.stdout
    child = int(pid_file.read_text())
    assert wait_for(lambda: not _alive(child), 10), "the agent's child still runs"


def _alive(pid: int) -> bool:
    cycle = load_script("tools/run_full_cycle.py")
    if sys.platform.startswith("linux"):
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"
    return cycle.pid_alive(pid)


def test_a_folder_that_is_not_a_git_repository_is_a_usage_error(tmp_path):
    completed = run_script("tools/run_full_cycle.py", "--project-root", tmp_path, "--dry-run")
    assert completed.returncode == 2
    assert "is not the root of a git repository" in completed.stderr
    assert not (tmp_path / ".cycle-logs").exists() and not (tmp_path / ".cycle.lock").exists()


def test_budgets_come_from_the_contract_and_unreadable_ones_fail_step_1(clone, cycle_env, tmp_path):
    cycle = load_script("tools/run_full_cycle.py")
    budgets = cycle.read_budgets(REPO_ROOT / "agents/pistachio-agent-v3.md")
    assert (budgets.tool_calls, budgets.usd) == (100, 5.0)
    contract = clone / "agents/pistachio-agent-v3.md"
    contract.write_text(contract.read_text(encoding="utf-8").replace("| Tool calls | 100 |",
                                                                      "| Tool calls | many |"))
    git(clone, "commit", "-q", "-am", "a contract without a number")
    env = dict(cycle_env)
    completed = run_cycle(clone, "--dry-run", env=env)
    assert completed.returncode == 1
    assert ("FAILED at step 1 preflight: " + str(contract) + ": its Budgets table has no "
            "| Tool calls | <number> | row") in completed.stdout
    assert "==> step 2 freshness" not in completed.stdout


def test_default_agent_command_is_built_from_one_list():
    cycle = load_script("tools/run_full_cycle.py")
    budgets = cycle.Budgets(100, 5.0)
    command = cycle.default_agent_command("2026-12-02", budgets, python="/opt/py/bin/python3")
    assert command[:2] == ["claude", "-p"]
    allowed = command[command.index("--allowedTools") + 1:command.index("--disallowedTools")]
    assert allowed == [
        "Read", "Glob", "Grep",
        "Bash(/opt/py/bin/python3 tools/lifeos_preflight.py:*)",
        "Bash(/opt/py/bin/python3 tools/lifeos_freshness_check.py:*)",
        "Bash(/opt/py/bin/python3 tools/lifeos_context_budget.py:*)",
        "Bash(/opt/py/bin/python3 evals/known_failures.py:*)",
        "Bash(/opt/py/bin/python3 tools/promote_findings.py --project-root . --check:*)",
        "Bash(/opt/py/bin/python3 evals/scorecard.py --demo:*)",
        "Bash(git status:*)", "Bash(git log:*)", "Bash(git diff:*)", "Bash(git show:*)",
        "Edit(/autonomous-research/briefing-2026-12-02.md)", "Edit(/PROGRESS.md)"]
    assert allowed == cycle.agent_allowed_rules("/opt/py/bin/python3", "2026-12-02")
    assert command[command.index("--max-turns") + 1] == "100"
    assert command[command.index("--max-budget-usd") + 1] == "5.00"
    assert command[command.index("--permission-mode") + 1] == "dontAsk"
    assert command[command.index("--tools") + 1] == "Bash,Read,Edit,Write,Glob,Grep"
    prompt = command[2]
    assert "/opt/py/bin/python3 tools/lifeos_preflight.py" in prompt and "2026-12-02" in prompt
    # The self-check the prompt names is the contract's: --check --strict.
    assert prompt.endswith("self-check: /opt/py/bin/python3 tools/promote_findings.py --project-root "
                           ". --check --strict autonomous-research/briefing-2026-12-02.md"), prompt
    assert "Read, Glob, Grep" in prompt
    assert "\n" not in prompt and '"' not in prompt and "%" not in prompt, "safe through a .cmd shim"


def test_the_interpreter_is_spelled_for_bash_on_windows():
    cycle = load_script("tools/run_full_cycle.py")
    assert cycle.python_spelling(r"C:\Users\me\AppData\Local\Programs\Python\Python312\python.exe",
                                 windows=True) == \
        "C:/Users/me/AppData/Local/Programs/Python/Python312/python.exe"
    assert cycle.python_spelling(r"C:\Program Files\Python312\python.exe", windows=True) == \
        "'C:/Program Files/Python312/python.exe'"
    assert cycle.python_spelling("/usr/bin/python3", windows=False) == "/usr/bin/python3"


@pytest.mark.parametrize("header", [
    "Date: 2026-12-02\nStatus: Stopped\nStop reason: budget-money (pod)\n",
    "Date: 2026-12-02\n**Status:** stopped\n**Stop reason:** budget-money (pod)\n",
    "## Run\nDate: 2026-12-02\nStatus: stopped\nStop reason: budget-money (pod)\n",
    "- Date: 2026-12-02\n- Status: stopped\n- Stop reason: budget-money (pod)\n",
])
def test_briefing_status_is_read_as_the_promoter_reads_it(tmp_path, header):
    """Every header form the promoter accepts (and promotes) gives the cycle the same Status."""
    cycle = load_script("tools/run_full_cycle.py")
    promoter = cycle.load_promoter(REPO_ROOT)
    briefing = tmp_path / "briefing-2026-12-02.md"
    briefing.write_text("# x\n\n" + header + "## Summary\nStatus: completed\n", encoding="utf-8")
    assert cycle.read_briefing_status(briefing, promoter) == ("stopped", "budget-money (pod)")


def test_agent_command_splits_like_the_platform_shell():
    cycle = load_script("tools/run_full_cycle.py")
    assert cycle.split_command('py -3 "C:\\a b\\agent.py" --x', windows=True) == [
        "py", "-3", "C:\\a b\\agent.py", "--x"]
    assert cycle.split_command("python3 '/tmp/a b/agent.py' --x", windows=False) == [
        "python3", "/tmp/a b/agent.py", "--x"]


def test_post_agent_steps_are_a_list_a_new_step_can_join(tmp_path):
    cycle = load_script("tools/run_full_cycle.py")
    args = cycle.build_parser().parse_args(["--project-root", str(tmp_path)])
    steps = cycle.post_agent_steps(args, tmp_path, tmp_path / "b.md")
    assert [step.name for step in steps] == ["6 promote", "7 scorecard"]
    assert steps[0].writes == cycle.PROMOTE_WRITES and steps[1].skip_reason == "no --sweep-dir"


def test_powershell_wrapper_passes_arguments_and_exit_code():
    text = (REPO_ROOT / "run-full-cycle.ps1").read_text(encoding="utf-8")
    assert "Get-Command py" in text and "Get-Command python" in text
    assert text.index("Get-Command py ") < text.index("Get-Command python")
    assert text.index(".venv\\Scripts\\python.exe") < text.index("Get-Command py "), \
        "the venv (with detect-secrets) comes first"
    assert "@passThrough" in text and "$args" in text
    assert "exit $LASTEXITCODE" in text
    pwsh = shutil.which("pwsh")
    if pwsh is None:
        pytest.skip("PowerShell (pwsh) is not installed here; checked the script's text only")
    completed = subprocess.run([pwsh, "-NoProfile", "-File", str(REPO_ROOT / "run-full-cycle.ps1"),
                                "--project-root", str(REPO_ROOT / "nowhere")], capture_output=True,
                               text=True)
    assert completed.returncode == 2
