"""The three LifeOS checks: PASS on this repository, FAIL on a planted fault, exit 2 on bad roots."""
from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT, load_script, run_script

LIFEOS_FILES = [
    "CLAUDE.md", "PROGRESS.md", "context/session-learnings.md",
    "context/projects/pistachio/context.md", "context/startup-context.txt",
    "agents/pistachio-agent-v2.md", "agents/pistachio-agent-v3.md",
    "autonomous-research/memory.md", "autonomous-research/pending-tasks.md",
]
TOOLS = ["tools/lifeos_preflight.py", "tools/lifeos_freshness_check.py",
         "tools/lifeos_context_budget.py"]


@pytest.fixture
def project(tmp_path):
    """A git repository holding a copy of this repository's LifeOS files, committed once."""
    root = tmp_path / "project"
    for name in LIFEOS_FILES:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "."], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=root, check=True)
    return root


def newest_last_updated(root) -> str:
    dates = []
    for path in root.rglob("*.md"):
        dates += re.findall(r"Last updated:\s*(\d{4}-\d{2}-\d{2})", path.read_text(encoding="utf-8"))
    return max(dates)


@pytest.mark.parametrize("tool", TOOLS)
def test_help(tool):
    completed = run_script(tool, "--help")
    assert completed.returncode == 0
    assert "--project-root" in completed.stdout


@pytest.mark.parametrize("tool", TOOLS)
def test_nonexistent_root_is_usage_error(tool, tmp_path):
    completed = run_script(tool, "--project-root", tmp_path / "nowhere")
    assert completed.returncode == 2
    assert "is not a folder" in completed.stderr


def test_preflight_passes_on_this_repository():
    completed = run_script("tools/lifeos_preflight.py", "--project-root", REPO_ROOT)
    fails = [line for line in completed.stdout.splitlines() if line.startswith("FAIL")]
    if subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=REPO_ROOT).returncode != 0:
        # A CI checkout of one commit is often a detached HEAD: that check alone may fail.
        assert len(fails) == 1 and "HEAD is detached" in fails[0], completed.stdout
        return
    assert completed.returncode == 0, completed.stdout
    assert fails == []


def test_budget_passes_on_this_repository():
    completed = run_script("tools/lifeos_context_budget.py", "--project-root", REPO_ROOT)
    assert completed.returncode == 0, completed.stdout
    assert "PASS context_budget" in completed.stdout


def test_freshness_passes_on_this_repository():
    # Measured on the day the documents were last updated, so the test does not age.
    completed = run_script("tools/lifeos_freshness_check.py", "--project-root", REPO_ROOT,
                           "--today", newest_last_updated(REPO_ROOT))
    assert completed.returncode == 0, completed.stdout
    assert "FAIL" not in completed.stdout


def test_preflight_fails_without_session_learnings(project):
    (project / "context/session-learnings.md").unlink()
    completed = run_script("tools/lifeos_preflight.py", "--project-root", project)
    assert completed.returncode == 1
    fails = [line for line in completed.stdout.splitlines() if line.startswith("FAIL")]
    assert fails == ["FAIL preflight required_files: missing context/session-learnings.md; "
                     "restore them from git"]


def test_preflight_fails_on_conflict_markers_and_merge(project):
    marker = "<" * 7
    (project / "PROGRESS.md").write_text(f"{marker} HEAD\nours\n=======\ntheirs\n{'>' * 7} b\n",
                                         encoding="utf-8")
    (project / ".git" / "MERGE_HEAD").write_text("0" * 40 + "\n", encoding="utf-8")
    completed = run_script("tools/lifeos_preflight.py", "--project-root", project)
    assert completed.returncode == 1
    assert "FAIL preflight conflict_markers: unresolved conflict in PROGRESS.md" in completed.stdout
    assert "FAIL preflight git_state: a merge is in progress" in completed.stdout


def test_preflight_refuses_a_detached_head_and_names_the_switch(project):
    """attack3/08: on a detached HEAD the cycle's commit would be on no branch."""
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                              cwd=project, check=True, capture_output=True, text=True).stdout.strip()
    branch = git("symbolic-ref", "--short", "HEAD")
    head = git("rev-parse", "HEAD")
    git("checkout", "-q", "--detach")
    completed = run_script("tools/lifeos_preflight.py", "--project-root", project)
    assert completed.returncode == 1
    assert (f"FAIL preflight git_state: HEAD is detached at {head[:12]}; the cycle's commit would be "
            f"on no branch: run git switch {branch}, then the cycle again") in completed.stdout
    git("pack-refs", "--all")  # the branch only in packed-refs: still found
    assert f"run git switch {branch}," in run_script(
        "tools/lifeos_preflight.py", "--project-root", project).stdout
    git("commit", "-q", "--allow-empty", "-m", "on no branch")  # no branch is at HEAD any more
    completed = run_script("tools/lifeos_preflight.py", "--project-root", project)
    assert completed.returncode == 1
    assert ("run git switch <branch> (or git switch -c <new-branch> to keep what was committed "
            "here)") in completed.stdout
    git("switch", "-q", "-c", "kept")
    completed = run_script("tools/lifeos_preflight.py", "--project-root", project)
    assert "PASS preflight git_state: a git repository on branch kept" in completed.stdout


def test_preflight_missing_cli_and_disk_floor(project):
    completed = run_script("tools/lifeos_preflight.py", "--project-root", project,
                           "--require-cli", "no-such-cli-xyz", "--min-free-gb", "1e9")
    assert completed.returncode == 1
    assert "FAIL preflight cli: not on PATH: no-such-cli-xyz" in completed.stdout
    assert "FAIL preflight disk:" in completed.stdout


def test_preflight_not_a_git_repository(tmp_path):
    completed = run_script("tools/lifeos_preflight.py", "--project-root", tmp_path)
    assert completed.returncode == 1
    assert "is not the root of a git repository" in completed.stdout


def test_freshness_fails_on_a_date_100_days_back(project):
    today = dt.date.fromisoformat(newest_last_updated(project))
    old = (today - dt.timedelta(days=100)).isoformat()
    path = project / "PROGRESS.md"
    text = re.sub(r"Last updated:\s*\d{4}-\d{2}-\d{2}", f"Last updated: {old}",
                  path.read_text(encoding="utf-8"))
    path.write_text(text, encoding="utf-8")
    completed = run_script("tools/lifeos_freshness_check.py", "--project-root", project,
                           "--today", today.isoformat())
    assert completed.returncode == 1
    fails = [line for line in completed.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1
    assert fails[0].startswith(f"FAIL freshness doc PROGRESS.md: updated {old} (Last updated line), "
                               f"100 days ago, older than 30 days")


def test_freshness_fails_on_a_date_in_the_future(project):
    today = dt.date.fromisoformat(newest_last_updated(project))
    path = project / "CLAUDE.md"
    text = re.sub(r"Last updated:\s*\d{4}-\d{2}-\d{2}",
                  f"Last updated: {today + dt.timedelta(days=400)}", path.read_text(encoding="utf-8"))
    path.write_text(text, encoding="utf-8")
    completed = run_script("tools/lifeos_freshness_check.py", "--project-root", project,
                           "--today", today.isoformat())
    assert completed.returncode == 1
    assert "FAIL freshness doc CLAUDE.md: 'Last updated'" in completed.stdout
    assert "is in the future" in completed.stdout


def test_freshness_falls_back_to_git_date_and_flags_briefing_and_tasks(project):
    module = load_script("tools/lifeos_freshness_check.py")
    path = project / "PROGRESS.md"
    path.write_text("# Progress\nno date line\n", encoding="utf-8")
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
                    "-am", "drop date", "--date", "2020-01-01T00:00:00"], cwd=project, check=True,
                   env={"GIT_COMMITTER_DATE": "2020-01-02T00:00:00", "PATH": "/usr/bin:/bin"})
    date, source = module.document_date(project, "PROGRESS.md")
    assert (date, source) == (dt.date(2020, 1, 2), "last git commit")

    briefings = project / "autonomous-research"
    (briefings / "briefing-2026-01-01.md").write_text("old\n", encoding="utf-8")
    (briefings / "briefing-2026-02-01.md").write_text("newer\n", encoding="utf-8")
    passed, detail = module.check_briefing(project, dt.date(2026, 2, 20), 7)
    assert not passed and "newest is briefing-2026-02-01.md, 19 days old" in detail

    tasks = briefings / "pending-tasks.md"
    tasks.write_text("- [ ] old task (source: x, added 2026-01-01)\n- [x] done (added 2020-01-01)\n"
                     "* [ ] fresh task (added 2026-02-15)\n", encoding="utf-8")
    passed, detail = module.check_tasks(project, dt.date(2026, 2, 20), 30)
    assert not passed
    assert detail.startswith("tasks: 1 of 2 open tasks older than 30 days; oldest (50 days): old task")


def test_budget_fails_with_300_more_lines(project):
    path = project / "context/session-learnings.md"
    with path.open("a", encoding="utf-8") as handle:
        handle.write("filler line\n" * 300)
    completed = run_script("tools/lifeos_context_budget.py", "--project-root", project)
    assert completed.returncode == 1
    assert re.search(r"^FAIL context_budget: \d+ lines is \d+ over the budget of 220",
                     completed.stdout, re.MULTILINE)


def test_budget_counts_a_missing_optional_file_as_zero(project, tmp_path):
    (project / "PROGRESS.md").unlink()
    report = tmp_path / "budget.json"
    completed = run_script("tools/lifeos_context_budget.py", "--project-root", project,
                           "--json", report)
    assert completed.returncode == 0
    assert "PROGRESS.md" in completed.stdout and "(missing, counts 0)" in completed.stdout
    module = load_script("tools/lifeos_context_budget.py")
    result = module.measure(project, 220)
    assert [entry["lines"] for entry in result["files"] if entry["file"] == "PROGRESS.md"] == [0]
    assert result["total"] == sum(module.count_lines(project / name)
                                  for name in module.startup_files(project))


def test_startup_context_limits():
    """CLAUDE.md at most 53 lines; the startup context at most 220 lines."""
    module = load_script("tools/lifeos_context_budget.py")
    assert module.count_lines(REPO_ROOT / "CLAUDE.md") <= 53
    assert module.measure(REPO_ROOT, 220)["total"] <= 220


def test_freshness_fails_on_a_briefing_dated_in_the_future(project):
    briefings = project / "autonomous-research"
    (briefings / "briefing-2026-02-18.md").write_text("today's\n", encoding="utf-8")
    (briefings / "briefing-2099-01-01.md").write_text("from the future\n", encoding="utf-8")
    completed = run_script("tools/lifeos_freshness_check.py", "--project-root", project,
                           "--today", "2026-02-20")
    assert completed.returncode == 1
    assert ("FAIL freshness briefing: briefing-2099-01-01.md dated after today (2026-02-20)"
            in completed.stdout)
    assert "-26" not in completed.stdout          # no negative age
    (briefings / "briefing-2099-01-01.md").unlink()
    module = load_script("tools/lifeos_freshness_check.py")
    passed, detail = module.check_briefing(project, dt.date(2026, 2, 20), 7)
    assert passed and "newest is briefing-2026-02-18.md, 2 days old" in detail
