"""The default agent command against the real Claude Code CLI, pinned in cycle_fixtures
(CLAUDE_CODE_VERSION = 2.1.332, npm @anthropic-ai/claude-code), installed by npm into a cache
folder outside the repository; skipped with the reason when npm or the registry is unavailable.

Nothing here reaches a real model API or uses a real credential: HOME and the CLI's config folder
are empty temporary folders, and ANTHROPIC_BASE_URL points at a closed port on 127.0.0.1 or at
tests/fake_anthropic_api.py on 127.0.0.1, with a made-up key.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import load_script
from cycle_fixtures import (CLAUDE_CODE_VERSION, SAMPLE_BRIEFING, add_user_work, base_env,  # noqa: F401
                            claude_bin_dir, clone, commits, git, path_without_claude, run_cycle,
                            today)
from fake_anthropic_api import FakeModel


@pytest.fixture(scope="module")
def cycle():
    return load_script("tools/run_full_cycle.py")


@pytest.fixture
def cli_env(tmp_path, claude_bin_dir):
    """Not logged in: an empty HOME and config folder, no key, API calls to a closed port."""
    return base_env(tmp_path, [str(claude_bin_dir), *path_without_claude()])


def run_claude(args: list[str], env: dict, cwd, timeout: float = 180) -> subprocess.CompletedProcess:
    import shutil
    program = shutil.which("claude", path=env["PATH"])
    return subprocess.run([program, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_pinned_cli_is_the_one_installed(cli_env, tmp_path):
    completed = run_claude(["--version"], cli_env, tmp_path)
    print(f"claude --version: {completed.stdout.strip()}")
    assert completed.returncode == 0 and completed.stdout.startswith(CLAUDE_CODE_VERSION)


def test_unknown_options_fail_before_login(cli_env, tmp_path):
    completed = run_claude(["-p", "hello", "--no-such-option-here"], cli_env, tmp_path)
    print(f"claude {CLAUDE_CODE_VERSION} with an unknown option: rc {completed.returncode}: "
          f"{(completed.stdout + completed.stderr).strip()}")
    assert completed.returncode != 0
    assert "unknown option '--no-such-option-here'" in completed.stdout + completed.stderr
    assert "logged in" not in (completed.stdout + completed.stderr).lower()


@pytest.mark.parametrize("version", [CLAUDE_CODE_VERSION], ids=lambda v: f"claude-code-{v}")
def test_every_flag_of_the_default_command_is_accepted(cycle, cli_env, tmp_path, version):
    """Unknown options fail before login (above), so reaching the login check means every flag
    and value of the default command parsed."""
    assert run_claude(["--version"], cli_env, tmp_path).stdout.startswith(version)
    command = cycle.default_agent_command(today(), cycle.Budgets(100, 5.0))
    completed = run_claude(command[1:], cli_env, tmp_path)
    output = (completed.stdout + completed.stderr).strip()
    print(f"claude {CLAUDE_CODE_VERSION} with the default command, not logged in: rc "
          f"{completed.returncode}: {output}")
    assert "unknown option" not in output and "error: option" not in output, output
    assert "Not logged in" in output
    assert completed.returncode != 0


def test_a_cli_that_is_not_logged_in_stops_the_cycle_at_step_5(clone, cli_env):
    work = add_user_work(clone)
    completed = run_cycle(clone, env=cli_env)
    assert completed.returncode == 1, completed.stdout[-3000:]
    assert ("FAILED at step 5 agent: the Claude Code CLI is not logged in (it printed: Not logged "
            "in") in completed.stdout
    assert "run `claude` once and log in" in completed.stdout
    assert "nothing was committed" in completed.stdout
    assert len(commits(clone)) == 1
    work.assert_intact()


def test_the_default_agent_runs_headless_within_its_permissions(cycle, clone, cli_env):
    """The real CLI's own permission checks on the default command: the preflight, git status,
    the self-check, Glob and Grep run; a push, other writes, other Python and `git diff --output`
    are denied, and a tool outside --tools is not there to call; the briefing is written,
    promoted and committed."""
    work = add_user_work(clone)
    py = cycle.python_spelling(sys.executable)
    briefing = f"autonomous-research/briefing-{today()}.md"
    text = SAMPLE_BRIEFING.read_text(encoding="utf-8").replace("2026-02-11", today())
    script = [
        ("Bash", {"command": f"{py} tools/lifeos_preflight.py --project-root .", "description": "a"}),
        ("Bash", {"command": "git status --porcelain", "description": "b"}),
        ("Bash", {"command": "git log --oneline -3", "description": "c"}),
        ("Read", {"file_path": str(clone / "agents/pistachio-agent-v3.md")}),
        ("Bash", {"command": "git push origin HEAD:refs/heads/agent-push", "description": "d"}),
        ("Write", {"file_path": str(clone / "README.md"), "content": "replaced\n"}),
        ("Write", {"file_path": str(clone / "context/session-learnings.md"), "content": "x\n"}),
        ("Bash", {"command": f"{py} -c 'open(\"pwned\", \"w\")'", "description": "e"}),
        ("Bash", {"command": "git status && touch pwned", "description": "f"}),
        ("Bash", {"command": "git diff --output=README.md", "description": "g"}),
        ("Write", {"file_path": str(clone / briefing), "content": text}),
        ("Bash", {"command": f"{py} tools/promote_findings.py --project-root . --check {briefing}",
                  "description": "h"}),
        ("Bash", {"command": f"{py} tools/promote_findings.py --project-root . --briefing {briefing}",
                  "description": "i"}),
        ("Bash", {"command": f"{py} tools/promote_findings.py --project-root . --check --strict "
                             f"{briefing}", "description": "j"}),
        ("Bash", {"command": f"{py} tools/lifeos_preflight.py --project-root . && touch pwned",
                  "description": "k"}),
        ("Bash", {"command": f"{py} evals/known_failures.py --project-root .", "description": "l"}),
        # The contract's way to find files and text: Glob and Grep, allowed as whole tools.
        ("Glob", {"pattern": "autonomous-research/briefing-*.md"}),
        ("Grep", {"pattern": "Tool calls", "path": "agents", "output_mode": "files_with_matches"}),
        ("Grep", {"pattern": "def main", "glob": "tools/*.py", "output_mode": "count"}),
        # A tool the runner does not offer is not there to call.
        ("WebFetch", {"url": "http://127.0.0.1:9/", "prompt": "x"}),
        ("NotebookEdit", {"notebook_path": str(clone / "x.ipynb"), "new_source": "x"}),
    ]
    allowed = {0, 1, 2, 3, 10, 11, 13, 15, 16, 17, 18}
    not_offered = {19, 20}
    env = dict(cli_env, ANTHROPIC_API_KEY="test-key-not-a-real-one")
    with FakeModel(script) as model:
        env["ANTHROPIC_BASE_URL"] = model.url
        completed = run_cycle(clone, env=env, timeout=900)
    assert completed.returncode == 0, completed.stdout[-4000:]
    for index, (tool, arguments) in enumerate(script):
        result = model.result(index)
        assert result is not None, f"call {index} got no result"
        what = f"{index} {tool} {arguments.get('command') or arguments.get('file_path')}"
        if index in allowed:
            assert "denied" not in result["text"].lower(), f"{what}: {result['text'][:200]}"
            if tool in ("Glob", "Grep"):  # (a Bash command may be allowed and still exit 1)
                assert not result["is_error"], f"{what}: {result['text'][:200]}"
        elif index in not_offered:
            assert result["is_error"], f"{what}: {result['text'][:200]}"
            print(f"{what}: {result['text'][:200]}")
        else:
            assert result["is_error"] and "denied" in result["text"], f"{what}: {result['text'][:200]}"
    assert "PASS preflight" in model.result(0)["text"]
    assert "valid v3 briefing" in model.result(11)["text"]
    assert f"briefing-{today()}.md" in model.result(16)["text"], "Glob found today's briefing"
    assert "pistachio-agent-v3.md" in model.result(17)["text"], "Grep searched the contract"
    assert "run_full_cycle.py" in model.result(18)["text"]
    tools = set(model.tool_lists[0])
    offered = set(cycle.AGENT_TOOLS.split(","))
    assert offered == {"Bash", "Read", "Edit", "Write", "Glob", "Grep"}
    assert offered <= tools <= offered | {"DeferredToolPlaceholder"}, tools
    assert any(py in text and f"Today is {today()}" in text for text in model.prompts), \
        "the prompt spells out the interpreter and the date"
    assert not (clone / "pwned").exists()
    assert (clone / "README.md").read_text() != "replaced\n"
    assert len(commits(clone)) == 2
    assert briefing in git(clone, "show", "--name-only", "--format=", "HEAD").split()
    assert git(clone.parent / "remote.git", "for-each-ref", "refs/heads/agent-push") == ""
    work.assert_intact()
