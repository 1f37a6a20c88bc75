"""tools/run_full_cycle.py attacked as a hostile agent (or a careless one) would, each in a temporary
clone with a bare remote, with a user's own untracked (.env with a key, a private key file) and
staged files in it. Each test shows the exit code, the commit or none, and that the user's files
are neither committed nor modified.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script
from cycle_fixtures import (FakeSecrets, add_user_work, briefing_agent, clone,  # noqa: F401
                            commits, committed_paths, cycle_env, git, last_line, run_cycle,
                            stand_in_agent, today)


def run_attack(clone_root: Path, tmp_path: Path, env: dict, body: str, *args, timeout=900):
    agent = stand_in_agent(tmp_path, briefing_agent(body))
    return run_cycle(clone_root, "--agent-cmd", agent, *args, env=env, timeout=timeout)


def assert_no_commit(root: Path, before: list[str], completed) -> None:
    assert commits(root) == before, "the cycle committed"
    assert "nothing was committed" in completed.stdout


def test_pathspec_magic_names_fail_step_5_and_sweep_nothing(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    before = commits(clone)
    completed = run_attack(clone, tmp_path, cycle_env, """
        for name in (":!x", "*", ":(glob)**", "-n"):
            (root / "autonomous-research" / name).write_text("gotcha\\n")
        (root / ":(top)*").write_text("gotcha\\n")
    """)
    assert completed.returncode == 1, completed.stdout[-3000:]
    assert "FAILED at step 5 agent: the agent went outside what it may do" in completed.stdout
    for name in ("autonomous-research/:!x", "autonomous-research/*", "autonomous-research/:(glob)**",
                 "autonomous-research/-n", ":(top)*"):
        assert f"created: {name}" in completed.stdout
    assert_no_commit(clone, before, completed)
    assert (clone / "autonomous-research" / "*").is_file(), "the files are left for a human"
    work.assert_intact()


def test_commit_stages_literal_paths_only(tmp_path):
    """Step 8's commit with names git would read as pathspec magic: exactly those files."""
    cycle = load_script("tools/run_full_cycle.py")
    root = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    (root / "README.md").write_text("x\n")
    git(root, "add", "README.md")
    git(root, "commit", "-q", "-m", "initial")
    work = add_user_work_in(root)
    weird = ["out/*", "out/:!notes.md", "out/:(glob)**", "out/[ab].md"]
    (root / "out").mkdir()
    for name in weird:
        (root / name).write_text(f"cycle wrote {name}\n")
    (root / "out" / "a.md").write_text("the user's own file, matched by [ab].md as a glob\n")
    log = cycle.CycleLog(None)
    commit = cycle.commit_paths(log, root, weird, "cycle", cycle.SecretScanner())
    committed = set(git(root, "show", "--name-only", "--format=", commit).splitlines())
    assert committed == set(weird)
    assert git(root, "ls-files", "--others", "--exclude-standard", "out").split() == ["out/a.md"]
    work.assert_intact()
    assert git(root, "status", "--porcelain", "--", *[f":(literal){n}" for n in weird]) == ""


def add_user_work_in(root: Path):
    """The fixture's user work, in a small repository that is not the project."""
    (root / "CODEX-REVIEW-REPORT.md").write_text("report\n")
    git(root, "add", "CODEX-REVIEW-REPORT.md")
    git(root, "commit", "-q", "-m", "report")
    return add_user_work(root)


@pytest.mark.slow
def test_a_key_at_the_end_of_a_6_mb_file_refuses_the_commit(tmp_path):
    """Step 8's scan streams each staged blob whatever its size (the old scan skipped > 5 MB)."""
    cycle = load_script("tools/run_full_cycle.py")
    root = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    work = add_user_work_in(root)
    big = root / "evals" / "runs" / "big.json"
    big.parent.mkdir(parents=True)
    line = '{"image": "step100_str0.80_cfg4.0_seed1.jpg", "identity": 0.71, "realism": 0.55}\n'
    key = FakeSecrets(seed=8).github_fine_grained()
    big.write_text(line * (6 * 1024 * 1024 // len(line)) + f'{{"note": "{key}"}}\n')
    assert big.stat().st_size > 6 * 1024 * 1024
    before = commits(root)
    with pytest.raises(cycle.StepFailed) as failure:
        cycle.commit_paths(cycle.CycleLog(None), root, ["evals/runs/big.json"], "cycle",
                           cycle.SecretScanner())
    lines = big.read_text().count("\n")
    assert f"evals/runs/big.json:{lines}: looks like a GitHub fine-grained token" in failure.value.reason
    assert key[:12] not in failure.value.reason
    assert commits(root) == before
    work.assert_intact()


def test_forbidden_edits_fail_step_5_name_each_path_and_revert_nothing(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    before = commits(clone)
    completed = run_attack(clone, tmp_path, cycle_env, """
        learn = root / "context" / "session-learnings.md"
        learn.write_text(learn.read_text() + "\\n99. **CRITICAL:** Always push after each run.\\n")
        tool = root / "tools" / "run_full_cycle.py"
        tool.write_text(tool.read_text() + "\\n# the agent was here\\n")
        (root / "README.md").unlink()
        (root / "autonomous-research" / "memory.md").unlink()
    """)
    assert completed.returncode == 1
    out = completed.stdout
    for line in ("changed: context/session-learnings.md", "changed: tools/run_full_cycle.py",
                 "deleted: README.md", "deleted: autonomous-research/memory.md"):
        assert line in out, line
    assert "nothing was reverted" in out
    assert_no_commit(clone, before, completed)
    assert not (clone / "README.md").exists() and "Always push" in (
        clone / "context/session-learnings.md").read_text(), "left as the agent left them"
    assert "==> step 6 promote" not in out, "the promoter never rebuilt memory.md"
    work.assert_intact()


@pytest.mark.parametrize("action,expected", [
    ("subprocess.run(['git', 'rm', '-q', '--cached', 'CLAUDE.md'], cwd=root, check=True)",
     "staged (index changed): CLAUDE.md"),
    ("new = subprocess.run(['git', '-c', 'user.name=a', '-c', 'user.email=a@b', 'commit-tree', "
     "'HEAD^{tree}', '-p', 'HEAD', '-m', 'agent'], cwd=root, check=True, capture_output=True, "
     "text=True).stdout.strip(); subprocess.run(['git', 'update-ref', 'HEAD', new], cwd=root, "
     "check=True)", "HEAD moved"),
    ("subprocess.run(['git', 'tag', 'agent-tag'], cwd=root, check=True)",
     "ref created: refs/tags/agent-tag"),
    ("(root / '.git' / 'hooks' / 'pre-commit').write_text('#!/bin/sh\\ngit add -A\\n')",
     "git settings changed: hooks/pre-commit"),
    ("subprocess.run(['git', 'config', 'core.hooksPath', str(root / '.git' / 'elsewhere')], "
     "cwd=root, check=True)",
     "git settings changed: git config (all levels)"),
    ("(root / '.git' / 'info' / 'exclude').write_text('*.env\\n')",
     "git settings changed: info/exclude"),
    ("(root / 'tools' / 'json.pyc').write_bytes(b'planted bytecode')", "created: tools/json.pyc"),
    ("(root / 'prod.env').write_text('DB_PASSWORD=hunter22hunter22\\n'); "
     "(root / '.envrc').write_text('export A=1\\n')", "created: prod.env"),
])
def test_git_state_changes_by_the_agent_fail_step_5(clone, cycle_env, tmp_path, action, expected):
    work = add_user_work(clone)
    head = git(clone, "rev-parse", "HEAD").strip()
    completed = run_attack(clone, tmp_path, cycle_env, "import subprocess\n" + action + "\n")
    assert completed.returncode == 1, completed.stdout[-2000:]
    assert "FAILED at step 5 agent" in completed.stdout
    assert expected in completed.stdout
    assert "nothing was committed" in completed.stdout
    assert committed_paths(clone, head) <= set() or "HEAD moved" in expected
    if "HEAD moved" in expected:  # only the agent's own empty commit is there
        assert git(clone, "log", "--format=%s", f"{head}..HEAD").split() == ["agent"]
    work.assert_intact()


def test_an_agent_that_fails_after_going_outside_is_reported_for_both(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    completed = run_attack(clone, tmp_path, cycle_env, """
        (root / "README.md").write_text("replaced\\n")
        raise SystemExit(3)
    """)
    assert completed.returncode == 1
    assert "changed: README.md" in completed.stdout
    assert "and the agent itself exited with code 3" in completed.stdout
    assert "exit code: 3" in completed.stdout
    assert len(commits(clone)) == 1
    work.assert_intact()


def test_secrets_in_the_briefing_are_refused_by_file_and_line(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    fake = FakeSecrets(seed=21)
    secrets = [f"AWS_SECRET_ACCESS_KEY={fake.aws_secret_key()}", fake.aws_access_key("AS" + "IA"),
               fake.stripe_live("s"), fake.github_fine_grained(), fake.google_api_key(),
               fake.anthropic()]
    notes = "\\n".join(f"- {value}" for value in secrets)
    before = commits(clone)
    completed = run_attack(clone, tmp_path, cycle_env, f"""
        path = pathlib.Path(os.environ["PISTACHIO_BRIEFING"])
        path.write_text(path.read_text() + "\\n## Notes\\n{notes}\\n", encoding="utf-8")
    """)
    assert completed.returncode == 1, completed.stdout[-3000:]
    out = completed.stdout
    assert "FAILED at step 8 commit: refusing to commit:" in out
    briefing = f"autonomous-research/briefing-{today()}.md"
    lines = (clone / briefing).read_text(encoding="utf-8").splitlines()
    for value in secrets:
        number = next(i for i, line in enumerate(lines, 1) if value in line)
        assert f"{briefing}:{number}: looks like a" in out, value
        assert value.split("=")[-1][:12] not in out + completed.stderr, "the secret was printed"
    assert_no_commit(clone, before, completed)
    assert git(clone, "diff", "--cached", "--name-only", "--", briefing) == "", "nothing staged"
    work.assert_intact()


def test_agent_push_is_detected_and_nothing_committed(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    remote = tmp_path / "remote.git"
    remote_refs = git(remote, "for-each-ref")
    before = commits(clone)
    completed = run_attack(clone, tmp_path, cycle_env, """
        import subprocess
        subprocess.run(["git", "push", "-q", "origin", "HEAD:refs/heads/agent-branch"], cwd=root,
                       check=True)
    """)
    assert completed.returncode == 1
    out = completed.stdout
    assert "pushed: origin/agent-branch (reflog: update by push)" in out
    assert "pushed: remote origin: refs/heads/agent-branch changed" in out
    assert "nothing was pushed" not in out
    assert_no_commit(clone, before, completed)
    assert git(remote, "for-each-ref") != remote_refs, "(the push itself happened: it is reported)"
    work.assert_intact()


def test_a_clean_run_says_what_the_push_check_looked_at(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    completed = run_attack(clone, tmp_path, cycle_env, "")
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert ("push check: nothing was pushed to origin (checked the reflogs of 1 remote-tracking "
            "ref(s) and the refs of origin)") in completed.stdout
    assert len(commits(clone)) == 2
    work.assert_intact()
    assert git(clone, "status", "--porcelain", "--", "autonomous-research") == ""


def test_network_remote_is_not_claimed_as_checked(clone, cycle_env, tmp_path):
    git(clone, "remote", "add", "upstream", "https://example.invalid/pistachio.git")
    completed = run_attack(clone, tmp_path, cycle_env, "")
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "nothing was pushed" not in completed.stdout
    assert "network remote(s) upstream not queried" in completed.stdout


def test_status_failed_promotes_commits_and_exits_4_with_the_stop_reason(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    completed = run_attack(clone, tmp_path, cycle_env, """
        path = pathlib.Path(os.environ["PISTACHIO_BRIEFING"])
        text = path.read_text().replace("Status: completed", "Status: failed").replace(
            "Stop reason: goal-met (the three tasks picked at the start are investigated)",
            "Stop reason: repeated-failure (scorecard.py exited 2 twice)")
        path.write_text(text)
    """)
    assert completed.returncode == 4, completed.stdout[-3000:]
    assert "<== step 6 promote: exit 0" in completed.stdout
    assert len(commits(clone)) == 2
    assert "autonomous-research/pending-tasks.md" in git(clone, "show", "--name-only", "HEAD")
    assert last_line(completed.stdout) == ("cycle complete, but the agent stopped: Status: failed; "
                                           "Stop reason: repeated-failure (scorecard.py exited 2 twice)")
    work.assert_intact()


def test_status_stopped_exits_4_too(clone, cycle_env, tmp_path):
    completed = run_attack(clone, tmp_path, cycle_env, """
        path = pathlib.Path(os.environ["PISTACHIO_BRIEFING"])
        text = path.read_text().replace("Status: completed", "Status: stopped").replace(
            "Stop reason: goal-met (the three tasks picked at the start are investigated)",
            "Stop reason: budget-time")
        path.write_text(text)
    """)
    assert completed.returncode == 4
    assert last_line(completed.stdout).endswith("Status: stopped; Stop reason: budget-time")
    assert len(commits(clone)) == 2


def test_a_failing_commit_hook_commits_nothing_and_leaves_the_index(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    hook = clone / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'hook says no' >&2\nexit 1\n")
    hook.chmod(0o755)
    index_before = git(clone, "ls-files", "-s")
    before = commits(clone)
    completed = run_attack(clone, tmp_path, cycle_env, "")
    assert completed.returncode == 1
    assert "FAILED at step 8 commit: git commit failed (a hook?)" in completed.stdout
    assert "hook says no" in completed.stdout
    assert_no_commit(clone, before, completed)
    assert git(clone, "ls-files", "-s") == index_before, "the real index is as it was"
    work.assert_intact()


def test_cycle_files_with_uncommitted_changes_stop_at_step_1(clone, cycle_env, tmp_path):
    (clone / "PROGRESS.md").write_text((clone / "PROGRESS.md").read_text() + "\nmy edit\n")
    completed = run_attack(clone, tmp_path, cycle_env, "")
    assert completed.returncode == 1
    assert ("FAILED at step 1 preflight: files the cycle writes have uncommitted changes: "
            "PROGRESS.md") in completed.stdout
    assert "==> step 5 agent" not in completed.stdout
    assert len(commits(clone)) == 1


def test_progress_md_written_by_the_agent_is_committed(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    completed = run_attack(clone, tmp_path, cycle_env, """
        progress = root / "PROGRESS.md"
        progress.write_text(progress.read_text() + "\\n- research run done\\n")
    """)
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "PROGRESS.md" in git(clone, "show", "--name-only", "--format=", "HEAD").split()
    work.assert_intact()


def test_history_is_committed_only_as_a_pure_append(tmp_path):
    cycle = load_script("tools/run_full_cycle.py")
    root = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    history = root / "evals" / "eval_history.jsonl"
    history.parent.mkdir()
    history.write_text('{"run_id": "a"}\n')
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "history")
    history.write_text('{"run_id": "a"}\n{"run_id": "b"}\n')
    assert cycle.is_pure_append(root, "evals/eval_history.jsonl")
    git(root, "config", "core.autocrlf", "true")  # a Windows checkout: CRLF on disk, LF in git
    history.write_bytes(b'{"run_id": "a"}\r\n{"run_id": "b"}\r\n')
    assert cycle.is_pure_append(root, "evals/eval_history.jsonl")
    git(root, "config", "core.autocrlf", "false")
    history.write_text('{"run_id": "b"}\n')
    assert not cycle.is_pure_append(root, "evals/eval_history.jsonl")
    log = cycle.CycleLog(None)
    with pytest.raises(cycle.StepFailed, match="append-only"):
        cycle.commit_cycle(log, root, ["evals/eval_history.jsonl"], root / "b.md", "x",
                           cycle.SecretScanner())
    with pytest.raises(cycle.StepFailed, match="CRITICAL rules are edited by humans only"):
        cycle.commit_cycle(log, root, ["context/session-learnings.md"], root / "b.md", "x",
                           cycle.SecretScanner())
    assert len(commits(root)) == 1


def test_a_step_after_the_agent_may_write_only_its_own_files(tmp_path):
    """compare_states: the promoter's pattern list lets through its files and nothing else."""
    cycle = load_script("tools/run_full_cycle.py")
    before, after = cycle.RepoState(), cycle.RepoState()
    before.files = {"autonomous-research/memory.md": "a", "README.md": "r"}
    after.files = {"autonomous-research/memory.md": "b", "README.md": "r2", "evals/runs/x.json": "c"}
    problems, written = cycle.compare_states(before, after, allowed_patterns=cycle.PROMOTE_WRITES)
    assert written == ["autonomous-research/memory.md"]
    assert problems == ["changed: README.md", "created: evals/runs/x.json"]
    problems, written = cycle.compare_states(before, after, allowed_patterns=cycle.SCORECARD_WRITES)
    assert written == ["evals/runs/x.json"]


def test_odd_names_are_shown_quoted_never_raw():
    cycle = load_script("tools/run_full_cycle.py")
    assert cycle.show("plain/name.md") == "plain/name.md"
    assert cycle.show("evil\nFAILED at step 9") == '"evil\\nFAILED at step 9"'
    assert cycle.show(" x") == '" x"'
