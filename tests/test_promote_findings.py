"""tools/promote_findings.py and the v3 briefing schema of agents/pistachio-agent-v3.md.

Two layers: the CLI as a subprocess (help, real runs in a scratch project, exit codes, the files
written) and the functions in-process (tolerant parsing, normalisation, similarity, atomic writes).
Every test builds its own project in tmp_path; the repository is only read.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT, load_script, run_script

SCRIPT = "tools/promote_findings.py"
SAMPLE = REPO_ROOT / "tests" / "data" / "briefing-sample-v3.md"
CONTRACT = REPO_ROOT / "agents" / "pistachio-agent-v3.md"
TODAY = "2026-02-12"

promote = load_script(SCRIPT)

# Starting files in the format of the real autonomous-research/ files (a "## Open" / "## Learnings"
# section, a "Last updated:" line, entries as the promoter writes them) plus a "## Done" section
# that new tasks must not land in.
PENDING = """# Pending tasks
Last updated: 2026-01-30

Open tasks for the agent and the human.

## Open
- [ ] Validate the pod with tools/validate_pod_deps.py before the first v3 training run (source: PROGRESS.md, added 2026-01-30)

## Done
- [x] Write the v2 contract (source: PROGRESS.md, added 2026-01-01)
"""
MEMORY = """# Research memory
Last updated: 2026-01-30

What the research loop has learned, newest last.

## Learnings
- 2026-01-30: Identity scores from different face models are not comparable. (source: PROGRESS.md)
"""
RULES = """# Session learnings: CRITICAL rules
Last updated: 2026-01-30

Humans edit this file; agents never do.

1. **CRITICAL:** Never `git push`. Commit locally by path; the human pushes after review.
2. **CRITICAL:** `onnxruntime` and `onnxruntime-gpu` must never be installed together: they
   share one folder and the session silently runs on CPU.
3. **CRITICAL:** Check the providers a session really uses (`session.get_providers()`), not
   the ones requested: onnxruntime falls back to CPU without raising.
4. **CRITICAL:** Cached text-encoder outputs forbid caption shuffle and caption dropout.
"""

CRLF_BRIEFING = (
    "# Research briefing 2026-02-13  \r\n"
    "\r\n"
    "* Date: 2026-02-13\r\n"
    "* Status: Stopped   \r\n"
    "* Stop reason: budget-time\r\n"
    "\r\n"
    "### SUMMARY\r\n"
    "Two tasks, no learnings this time.   \r\n"
    "\r\n"
    "### next steps\r\n"
    "* [ ] Caption the new photos with tools/auto_caption.py (source: PROGRESS.md)   \r\n"
    "* Re-grade the v2 sweep once captions exist\r\n"
    "  (source: evals/latest_report.md)\r\n"
)


def make_project(root: Path, briefings: dict[str, str | bytes] | None = None,
                 rules: str | None = RULES) -> Path:
    research = root / "autonomous-research"
    research.mkdir(parents=True)
    (research / "pending-tasks.md").write_text(PENDING, encoding="utf-8", newline="")
    (research / "memory.md").write_text(MEMORY, encoding="utf-8", newline="")
    if rules is not None:
        (root / "context").mkdir()
        (root / "context" / "session-learnings.md").write_text(rules, encoding="utf-8", newline="")
    for name, content in (briefings or {}).items():
        path = research / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")
    return root


def sample_text() -> str:
    return SAMPLE.read_text(encoding="utf-8")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, except the promoter's empty lock file (created by any real run)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".promote.lock"}


def read(root: Path, relative: str) -> str:
    return (root / relative).read_text(encoding="utf-8")


# --- subprocess layer ----------------------------------------------------------------------------
def test_help_lists_flags_and_exit_codes():
    result = run_script(SCRIPT, "--help")
    assert result.returncode == 0, result.stderr
    for text in ("--project-root", "--briefing", "--dry-run", "--check", "--strict",
                 "--lock-timeout", "Exit codes", "Limits"):
        assert text in result.stdout


def test_sample_promotes_tasks_learnings_and_candidates(tmp_path):
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()})
    rules_before = (root / "context" / "session-learnings.md").read_bytes()
    result = run_script(SCRIPT, "--project-root", root, "--today", TODAY)
    assert result.returncode == 0, result.stderr

    pending = read(root, "autonomous-research/pending-tasks.md")
    open_part, done_part = pending.split("## Done")
    assert ("- [ ] Re-run the v3 sweep at strength 0.75 and 0.80 only, CFG 4.0, to confirm the best "
            f"configuration (source: briefing-2026-02-11.md, added {TODAY})") in open_part
    assert "- [ ] Put the seed into the scorecard's best_config name" in open_part
    assert "- [ ] Decide: Make v3 the default LoRA?" in open_part
    assert "briefing-2026-02-11" not in done_part
    assert f"Last updated: {TODAY}" in pending
    # The existing task is still first: entries are appended to the Open section.
    assert open_part.index("Validate the pod") < open_part.index("Re-run the v3 sweep")

    memory = read(root, "autonomous-research/memory.md")
    assert ("- 2026-02-11: On v3, strength above 0.85 trades skin texture for identity: similarity "
            "+0.02, skin realism -0.17 (source: briefing-2026-02-11.md)") in memory
    assert memory.rstrip().endswith("(source: briefing-2026-02-11.md)")

    candidates = read(root, "autonomous-research/critical-candidates.md")
    assert "- [ ] Never ship a LoRA strength above 0.85 as the default" in candidates
    assert "listed under Critical candidates" in candidates
    # The second learning agrees with rule 3 of RULES: agreeing with a rule is not a candidate.
    assert "Check the providers" not in candidates
    assert "Rule candidates for a human" in result.stdout

    record = read(root, "autonomous-research/promoted-briefings.txt")
    assert re.search(r"^briefing-2026-02-11\.md sha256=[0-9a-f]{64} promoted=2026-02-12 "
                     r"tasks=3 learnings=2 candidates=1$", record, re.MULTILINE)
    # The diff names every file it changed.
    for relative in ("pending-tasks.md", "memory.md", "critical-candidates.md",
                     "promoted-briefings.txt"):
        assert f"+++ b/autonomous-research/{relative}" in result.stdout
    assert (root / "context" / "session-learnings.md").read_bytes() == rules_before


def test_second_run_changes_nothing(tmp_path):
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()})
    assert run_script(SCRIPT, "--project-root", root, "--today", TODAY).returncode == 0
    before = snapshot(root)
    again = run_script(SCRIPT, "--project-root", root, "--today", "2026-03-01")
    assert again.returncode == 0, again.stderr
    assert "nothing new" in again.stdout
    assert "+++" not in again.stdout
    assert snapshot(root) == before


def test_unrecorded_briefing_whose_items_are_present_adds_nothing(tmp_path):
    """Without the record (deleted by hand), the normalised-text comparison still adds nothing."""
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()})
    assert run_script(SCRIPT, "--project-root", root, "--today", TODAY).returncode == 0
    before = snapshot(root)
    (root / "autonomous-research" / "promoted-briefings.txt").unlink()
    again = run_script(SCRIPT, "--project-root", root, "--today", "2026-03-01")
    assert again.returncode == 0, again.stderr
    after = snapshot(root)
    for relative in ("pending-tasks.md", "memory.md", "critical-candidates.md"):
        key = str(Path("autonomous-research") / relative)
        assert after[key] == before[key]
    assert "added 0 tasks, 0 learnings, 0 critical candidates" in again.stdout


def test_items_already_present_in_other_spelling_are_skipped(tmp_path):
    """Case, whitespace, punctuation, checkbox state and annotations do not make a new item."""
    pending = PENDING.replace(
        "## Done\n",
        "## Done\n- [x] re-run   THE v3 sweep at strength 0.75 and 0.80 only; CFG 4.0 -- to confirm "
        "the best configuration! (source: briefing-2026-02-01.md, added 2026-02-01)\n")
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()})
    (root / "autonomous-research" / "pending-tasks.md").write_text(pending, encoding="utf-8")
    result = run_script(SCRIPT, "--project-root", root, "--today", TODAY)
    assert result.returncode == 0, result.stderr
    text = read(root, "autonomous-research/pending-tasks.md")
    assert text.count("v3 sweep at strength 0.75") == 1
    assert "added 2 tasks" in result.stdout


def test_dry_run_prints_diff_and_writes_nothing(tmp_path):
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()})
    before = snapshot(root)
    result = run_script(SCRIPT, "--project-root", root, "--dry-run", "--today", TODAY)
    assert result.returncode == 0, result.stderr
    assert snapshot(root) == before
    assert "--- a/autonomous-research/pending-tasks.md" in result.stdout
    assert "+- [ ] Put the seed into the scorecard's best_config name" in result.stdout
    assert "+++ b/autonomous-research/critical-candidates.md" in result.stdout
    assert "dry run" in result.stdout and "nothing written" in result.stdout


def test_crlf_star_bullets_missing_learnings_still_promote_with_warning(tmp_path):
    root = make_project(tmp_path, {"briefing-2026-02-13.md": CRLF_BRIEFING.encode("utf-8")})
    memory_before = (root / "autonomous-research" / "memory.md").read_bytes()
    rules_before = (root / "context" / "session-learnings.md").read_bytes()
    result = run_script(SCRIPT, "--project-root", root, "--today", "2026-02-14")
    assert result.returncode == 0, result.stderr
    assert "warning: no 'Learnings' section" in result.stderr
    pending = read(root, "autonomous-research/pending-tasks.md")
    assert ("- [ ] Caption the new photos with tools/auto_caption.py (source: "
            "briefing-2026-02-13.md, added 2026-02-14)") in pending
    assert ("- [ ] Re-grade the v2 sweep once captions exist (source: briefing-2026-02-13.md, "
            "added 2026-02-14)") in pending
    assert (root / "autonomous-research" / "memory.md").read_bytes() == memory_before
    assert (root / "context" / "session-learnings.md").read_bytes() == rules_before


def test_newest_briefing_is_chosen_by_the_date_in_its_name(tmp_path):
    older = sample_text().replace("2026-02-11", "2026-02-09").replace(
        "Previous briefing: briefing-2026-02-10.md", "Previous briefing: none")
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text(),
                                   "briefing-2026-02-09.md": older,
                                   "briefing-latest.md": "not a dated briefing\n"})
    research = root / "autonomous-research"
    # The older-named file is the newest on disk: the file time must not matter.
    os.utime(research / "briefing-2026-02-11.md", (1_000_000_000, 1_000_000_000))
    result = run_script(SCRIPT, "--project-root", root, "--today", TODAY)
    assert result.returncode == 0, result.stderr
    assert "briefing-2026-02-11.md" in read(root, "autonomous-research/promoted-briefings.txt")
    assert "briefing-2026-02-09.md" not in read(root, "autonomous-research/pending-tasks.md")
    assert "ignored briefing-latest.md" in result.stderr


def test_explicit_briefing_relative_to_project_root(tmp_path):
    older = sample_text().replace("2026-02-11", "2026-02-09").replace(
        "Previous briefing: briefing-2026-02-10.md", "Previous briefing: none")
    root = make_project(tmp_path / "p", {"briefing-2026-02-11.md": sample_text(),
                                         "briefing-2026-02-09.md": older})
    result = run_script(SCRIPT, "--project-root", root, "--briefing",
                        "autonomous-research/briefing-2026-02-09.md", "--today", TODAY,
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(source: briefing-2026-02-09.md, added" in read(root, "autonomous-research/pending-tasks.md")


def test_schema_failure_exits_1_with_line_numbers_and_writes_nothing(tmp_path):
    broken = (sample_text()
              .replace("Date: 2026-02-11", "Date: 2026-02-10")
              .replace(" (source: evals/scorecard.py --help)", "")
              .replace("Status: completed", "Status: stopped"))
    root = make_project(tmp_path, {"briefing-2026-02-11.md": broken})
    before = snapshot(root)
    result = run_script(SCRIPT, "--project-root", root, "--today", TODAY)
    assert result.returncode == 1
    assert snapshot(root) == before
    lines = broken.splitlines()
    date_line = lines.index("Date: 2026-02-10") + 1
    item_line = next(n for n, line in enumerate(lines, 1) if "Put the seed" in line)
    reason_line = next(n for n, line in enumerate(lines, 1) if line.startswith("Stop reason"))
    stderr = result.stderr
    assert f"briefing-2026-02-11.md:{date_line}: error: Date 2026-02-10 differs" in stderr
    assert f"briefing-2026-02-11.md:{item_line}: error: Action items item has no '(source: ...)'" in stderr
    assert f"briefing-2026-02-11.md:{reason_line}: error: Stop reason 'goal-met' does not go with " \
           "Status 'stopped'" in stderr
    assert "FAIL" in result.stdout and "nothing was promoted" in result.stdout


def test_check_validates_only(tmp_path):
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()})
    before = snapshot(root)
    ok = run_script(SCRIPT, "--project-root", root, "--check",
                    "autonomous-research/briefing-2026-02-11.md")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("PASS") and "0 warnings" in ok.stdout
    # --check lists the candidates the promoter would create.
    assert "would propose 1 rule candidate" in ok.stdout and "Never ship a LoRA" in ok.stdout
    bad_path = root / "autonomous-research" / "briefing-2026-02-30.md"
    bad_path.write_text(sample_text(), encoding="utf-8")
    bad = run_script(SCRIPT, "--project-root", root, "--check", bad_path)
    assert bad.returncode == 1
    assert "is not briefing-YYYY-MM-DD.md with a real date" in bad.stderr
    bad_path.unlink()
    assert snapshot(root) == before


@pytest.mark.parametrize("args, message", [
    (["--check", "x.md", "--briefing", "y.md"], "--check and --briefing"),
    (["--check", "x.md", "--dry-run"], "--check and --dry-run"),
    (["--today", "2026-13-01"], "--today"),
    (["--unknown-flag"], "unrecognized arguments"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    make_project(tmp_path)
    result = run_script(SCRIPT, "--project-root", tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_input_errors_exit_2(tmp_path):
    missing_root = run_script(SCRIPT, "--project-root", tmp_path / "nope")
    assert missing_root.returncode == 2 and "--project-root" in missing_root.stderr
    root = make_project(tmp_path / "p")
    nothing = run_script(SCRIPT, "--project-root", root)
    assert nothing.returncode == 2 and "no briefing found" in nothing.stderr
    no_file = run_script(SCRIPT, "--project-root", root, "--briefing", "autonomous-research/briefing-2026-01-01.md")
    assert no_file.returncode == 2 and "no such file" in no_file.stderr
    no_check_file = run_script(SCRIPT, "--project-root", root, "--check", root / "missing.md")
    assert no_check_file.returncode == 2


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xd8", "not UTF-8 text"),
    (b"", "no 'Date: YYYY-MM-DD' field"),
])
def test_corrupt_or_empty_briefing_fails_the_schema(tmp_path, content, message):
    root = make_project(tmp_path, {"briefing-2026-02-11.md": content})
    before = snapshot(root)
    result = run_script(SCRIPT, "--project-root", root)
    assert result.returncode == 1
    assert message in result.stderr
    assert snapshot(root) == before


def test_non_utf8_target_is_an_input_error_and_nothing_is_lost(tmp_path):
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()})
    memory = root / "autonomous-research" / "memory.md"
    memory.write_bytes(b"# Research memory\n\xff\xfe broken\n")
    before = snapshot(root)
    result = run_script(SCRIPT, "--project-root", root)
    assert result.returncode == 2
    assert "memory.md is not UTF-8" in result.stderr
    assert snapshot(root) == before


def test_contract_example_is_the_sample_and_valid(tmp_path):
    contract = CONTRACT.read_text(encoding="utf-8")
    example = re.search(r"### Example briefing\n.*?```markdown\n(.*?)```", contract, re.DOTALL)
    assert example, "agents/pistachio-agent-v3.md lost its example briefing"
    assert example.group(1) == sample_text()
    path = tmp_path / "briefing-2026-02-11.md"
    path.write_text(example.group(1), encoding="utf-8")
    # The example names briefing-2026-02-10.md as the previous one: --strict wants it to exist.
    (tmp_path / "briefing-2026-02-10.md").write_text("earlier\n", encoding="utf-8")
    result = run_script(SCRIPT, "--project-root", tmp_path, "--check", path)
    assert result.returncode == 0, result.stderr
    assert "0 warnings" in result.stdout
    strict = run_script(SCRIPT, "--project-root", tmp_path, "--check", "--strict", path)
    assert strict.returncode == 0, strict.stderr + strict.stdout
    assert "strict check" in strict.stdout
    # The contract states the vocabulary the validator enforces.
    for title in promote.SECTION_TITLES.values():
        assert f"## {title}" in contract
    for status, reasons in promote.STATUS_REASONS.items():
        for reason in reasons:
            assert re.search(rf"\| {status} \| {reason} \|", contract), (status, reason)
    for number in (f"{promote.MAX_BRIEFING_BYTES:,}", f"{promote.MAX_LINE_CHARS:,}",
                   str(promote.MAX_ITEMS_PER_SECTION), f"{promote.CONTRADICT_COVERAGE:g}",
                   f"{promote.AGREE_MARGIN:g}"):
        assert number in contract, number
    assert ("$PISTACHIO_PYTHON tools/promote_findings.py --project-root . --check --strict "
            "autonomous-research/briefing-YYYY-MM-DD.md") in contract


def test_real_session_learnings_parse_and_stay_untouched(tmp_path):
    """The repository's own rules file (read here, copied to tmp_path) yields numbered rules."""
    real = REPO_ROOT / "context" / "session-learnings.md"
    if not real.is_file():
        pytest.skip("context/session-learnings.md not in this checkout")
    rules = promote.load_rules(real)
    assert len(rules) >= 5
    assert all(not rule.text.startswith("**") and "CRITICAL:" not in rule.text[:12] for rule in rules)
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()},
                        rules=real.read_text(encoding="utf-8"))
    before = (root / "context" / "session-learnings.md").read_bytes()
    result = run_script(SCRIPT, "--project-root", root, "--today", TODAY)
    assert result.returncode == 0, result.stderr
    assert (root / "context" / "session-learnings.md").read_bytes() == before


# --- in-process layer ----------------------------------------------------------------------------
def parse_text(tmp_path: Path, text: str, name: str = "briefing-2026-02-11.md"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return promote.parse_briefing(path)


HEADER = "Date: 2026-02-11\nStatus: completed\nStop reason: goal-met\n"


def test_heading_and_bullet_variants(tmp_path):
    text = (
        "Pistachio briefing\n==================\n\n"
        "- **Date:** 2026-02-11\n- **Status:** Completed\n- **Stop reason:** goal-met\n\n"
        "## 1. Summary\nShort.\n\n"
        "**Next steps:**\n"
        "- dash item (source: a)\n"
        "* star item (source: b)\n"
        "+ plus item (source: c)\n"
        "1. numbered dot (source: d)\n"
        "2) numbered paren (source: e)\n"
        "- [ ] open box (source: f)\n"
        "* [ ] star box (source: g)\n"
        "- [x] done box (source: h)\n\n"
        "Lessons learned:\n"
        "- a learning that wraps\n  onto a second line [source: k]\n"
        "  - with a nested detail (source: l)\n\n"
        "#### CRITICAL RULE CANDIDATES (for review)\n"
        "- CRITICAL: always do X (source: m)\n\n"
        "Findings\n--------\n"
        "- a finding (source: evals/report.md (table 2))\n"
        "```\n- not an item inside a fence\n```\n"
        "<!-- - not an item inside a comment -->\n"
    )
    briefing = parse_text(tmp_path, text)
    assert not briefing.errors, briefing.errors
    actions = briefing.section_items("action_items")
    assert [item.text for item in actions] == [
        "dash item", "star item", "plus item", "numbered dot", "numbered paren", "open box",
        "star box", "done box"]
    assert [item.checked for item in actions][-1] is True
    learning, = briefing.section_items("learnings")
    assert learning.text == "a learning that wraps onto a second line; with a nested detail"
    assert learning.sources == ["k", "l"]
    critical, = briefing.section_items("critical")
    assert critical.text == "always do X" and critical.critical
    finding, = briefing.section_items("findings")
    assert finding.sources == ["evals/report.md (table 2)"]
    assert briefing.fields["status"][0] == "Completed"
    # The ticked action item is a warning (it is not promoted), not an error.
    assert any("ticked" in w.message for w in briefing.warnings)


def test_cr_only_line_endings_bom_and_trailing_spaces(tmp_path):
    text = ("\ufeff# B   \r" + HEADER.replace("\n", "   \r") + "## Action Items   \r"
            "- one (source: x)   \r- two (source: y)\r")
    briefing = parse_text(tmp_path, text)
    assert not briefing.errors, briefing.errors
    assert [i.text for i in briefing.section_items("action_items")] == ["one", "two"]
    assert briefing.section_items("action_items")[1].line == 7


def test_missing_sections_warn_and_none_items_are_empty(tmp_path):
    text = ("# B\n" + HEADER.replace("goal-met", "nothing-new") +
            "## Summary\nNothing new since briefing-2026-02-10.md.\n\n"
            "## Action items\n- none\n\n## Learnings\n- None.\n")
    briefing = parse_text(tmp_path, text)
    assert not briefing.errors
    assert briefing.items == []
    missing = [w.message for w in briefing.warnings if w.message.startswith("no '")]
    assert "no 'Findings' section" in missing
    assert "no 'Failures' section" in missing


def test_schema_errors_name_their_lines(tmp_path):
    text = ("# B\nDate: 2026-02-11\nStatus: maybe\nStop reason: tired\n"
            "## Findings\n- measured on 2026-02-30 (source: x)\n- no source here\n- (source: )\n")
    briefing = parse_text(tmp_path, text)
    messages = {(e.line, e.message.split(" ")[0]) for e in briefing.errors}
    assert (3, "Status") in messages
    assert (4, "Stop") in messages
    assert (6, "2026-02-30") in messages
    assert (7, "Findings") in messages
    assert (8, "Findings") not in messages       # "(source: )" alone is an empty item, skipped


def test_no_recognised_section_is_an_error(tmp_path):
    briefing = parse_text(tmp_path, "# B\n" + HEADER + "## Random\n- x (source: y)\n")
    assert any("no recognised section" in e.message for e in briefing.errors)
    assert any("unknown section 'Random'" in w.message for w in briefing.warnings)


def test_normalise_item_ignores_case_punctuation_dates_annotations():
    a = promote.normalise_item("- [ ] Re-run the sweep, at 0.80! (source: briefing-2026-02-11.md, added 2026-02-12)")
    same = [
        "Re-run the sweep at 0.80",
        "re-run   THE sweep; at 0.80",
        "2026-02-11: Re-run the sweep at 0.80 (source: briefing-2026-02-11.md)",
        "CRITICAL: re-run the sweep at 0.80 (proposed 2026-02-12)",
        "**Re-run** the sweep at `0.80` (source: x (y))",
    ]
    for text in same:
        assert promote.normalise_item(text) == promote.normalise_item(a), text
    assert promote.normalise_item("Re-run the sweep at 0.85") != promote.normalise_item(a)


def test_extract_sources_variants():
    assert promote.extract_sources("x (source: a (b)) tail") == ("x tail", ["a (b)"])
    assert promote.extract_sources("x [Sources: a; b].") == ("x.", ["a; b"])
    assert promote.extract_sources("x - source: PROGRESS.md") == ("x", ["PROGRESS.md"])
    assert promote.extract_sources("x (sourced elsewhere)") == ("x (sourced elsewhere)", [])


def test_rule_relation_contradicts_agrees_and_unrelated(tmp_path):
    path = tmp_path / "rules.md"
    path.write_text(RULES, encoding="utf-8")
    rules = promote.load_rules(path)
    assert [rule.number for rule in rules] == ["1", "2", "3", "4"]
    assert rules[1].text.startswith("`onnxruntime` and `onnxruntime-gpu` must never be installed "
                                    "together: they share one folder")
    assert [clause.kind for clause in rules[0].clauses][:1] == ["forbid"]
    relation = promote.rule_relation("Always git push after a cycle", rules)
    assert relation and relation.startswith("contradicts CRITICAL rule 1, which forbids")
    assert "shared words: git, push" in relation
    together = promote.rule_relation("Install onnxruntime and onnxruntime-gpu together", rules)
    assert together and together.startswith("contradicts CRITICAL rule 2")
    shuffle = promote.rule_relation("Enable caption shuffle with cached text-encoder outputs", rules)
    assert shuffle and shuffle.startswith("contradicts CRITICAL rule 4")
    skip_check = promote.rule_relation("Do not check session.get_providers(); the requested "
                                       "providers are used", rules, "learnings")
    assert skip_check and skip_check.startswith("contradicts CRITICAL rule 3, which requires")
    # Agreeing with a rule, restating it, or a finding that proposes nothing: not a candidate.
    for text, section in (("Never push from the cycle; the human pushes after review", "learnings"),
                          ("Check the providers a session really uses, not the ones requested",
                           "learnings"),
                          ("Caption shuffle and caption dropout are forbidden with cached "
                           "text-encoder outputs", "learnings"),
                          ("git log shows 4 commits, none of them pushed", "findings"),
                          ("Put the seed into the scorecard's config name", "action_items"),
                          ("Push the LoRA strength up to 0.9", "action_items")):
        assert promote.rule_relation(text, rules, section) is None, text


def test_insert_entries_sections_line_endings_and_headers():
    today = dt.date(2026, 2, 12)
    crlf = PENDING.replace("\n", "\r\n")
    new = promote.insert_entries(crlf, ["- [ ] new task"], promote.PENDING_TASKS, today)
    assert "\n" not in new.replace("\r\n", "")            # still CRLF only
    assert new.index("- [ ] new task") < new.index("## Done")
    assert "Last updated: 2026-02-12\r\n" in new
    created = promote.insert_entries(None, ["- 2026-02-11: x (source: b.md)"], promote.MEMORY, today)
    assert created.startswith("# Research memory\n")
    assert created.endswith("## Learnings\n- 2026-02-11: x (source: b.md)\n")
    no_section = promote.insert_entries("# Notes\n\nSome text.", ["- [ ] t"], promote.PENDING_TASKS, today)
    assert no_section == "# Notes\n\nSome text.\n\n- [ ] t\n"


def test_existing_entries_ignore_nested_why_lines():
    text = ("## Proposed\n- [ ] Never do X (source: b.md, proposed 2026-02-12)\n"
            "  - why: repeats CRITICAL rule 1\n- [x] A wrapped\n  entry (source: c)\n")
    assert promote.existing_entries(text) == {"never do x", "a wrapped entry"}


def test_main_in_process_dry_run_and_read_only_rules(tmp_path, capsys, monkeypatch):
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()})
    rules_path = (root / "context" / "session-learnings.md").resolve()
    modes = []
    real_open = open

    def spy_open(file, mode="r", *args, **kwargs):
        if Path(file).resolve() == rules_path:
            modes.append(mode)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy_open)
    before = snapshot(root)
    assert promote.main(["--project-root", str(root), "--dry-run", "--today", TODAY]) == 0
    out = capsys.readouterr().out
    assert "+- 2026-02-11: On v3, strength above 0.85" in out
    assert snapshot(root) == before
    assert modes == ["r"]


def test_interrupted_run_leaves_each_file_old_or_new(tmp_path, monkeypatch):
    """os.replace fails on the second file: files are old or new, no temp files, a re-run finishes."""
    reference = make_project(tmp_path / "reference", {"briefing-2026-02-11.md": sample_text()})
    assert promote.main(["--project-root", str(reference), "--today", TODAY]) == 0
    final = snapshot(reference)

    root = make_project(tmp_path / "root", {"briefing-2026-02-11.md": sample_text()})
    initial = snapshot(root)
    real_replace = os.replace
    calls = []

    def failing_replace(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(target))
        return real_replace(source, target)

    monkeypatch.setattr(promote.os, "replace", failing_replace)
    assert promote.main(["--project-root", str(root), "--today", TODAY]) == 2
    monkeypatch.setattr(promote.os, "replace", real_replace)
    middle = snapshot(root)
    assert not [name for name in middle if name.endswith(".tmp")]
    for name in set(initial) | set(final):
        assert middle.get(name) in (initial.get(name), final.get(name)), name
    assert "autonomous-research/promoted-briefings.txt" not in middle   # the record is written last

    assert promote.main(["--project-root", str(root), "--today", TODAY]) == 0
    done = snapshot(root)
    record = "autonomous-research/promoted-briefings.txt"
    assert {k: v for k, v in done.items() if k != record} == \
        {k: v for k, v in final.items() if k != record}
    # The record says what this run added (the tasks came in the interrupted run).
    assert b"briefing-2026-02-11.md sha256=" in done[record]


def test_changed_briefing_adds_only_its_new_item(tmp_path, capsys):
    root = make_project(tmp_path, {"briefing-2026-02-11.md": sample_text()})
    assert promote.main(["--project-root", str(root), "--today", TODAY]) == 0
    extended = sample_text().replace(
        "## Learnings\n",
        "## Learnings\n- The dlib backend needs no download, so CI can run it (source: tests)\n")
    (root / "autonomous-research" / "briefing-2026-02-11.md").write_text(extended, encoding="utf-8")
    capsys.readouterr()
    assert promote.main(["--project-root", str(root), "--today", "2026-02-13"]) == 0
    out = capsys.readouterr().out
    assert "added 0 tasks, 1 learnings, 0 critical candidates" in out
    memory = read(root, "autonomous-research/memory.md")
    assert memory.count("(source: briefing-2026-02-11.md)") == 3
    record = read(root, "autonomous-research/promoted-briefings.txt")
    assert record.count("briefing-2026-02-11.md ") == 1 and "promoted=2026-02-13" in record


# --- the contract's interfaces with the cycle ----------------------------------------------------
# What the agent may use headless, as the contract's "What you may run" lists it: the tools (one
# bullet per group: read anything; write two files; Bash for the commands below), then the Bash
# commands. tools/run_full_cycle.py builds Claude Code's --tools / --allowedTools from this list.
HEADLESS_TOOLS = [("Read", "Glob", "Grep"), ("Write", "Edit"), ("Bash",)]
HEADLESS_WRITABLE = ("PISTACHIO_BRIEFING", "PROGRESS.md")
HEADLESS_COMMANDS = [
    "$PISTACHIO_PYTHON tools/lifeos_preflight.py ...",
    "$PISTACHIO_PYTHON tools/lifeos_freshness_check.py ...",
    "$PISTACHIO_PYTHON tools/lifeos_context_budget.py ...",
    "$PISTACHIO_PYTHON evals/known_failures.py ...",
    "$PISTACHIO_PYTHON tools/promote_findings.py --project-root . --check [--strict] ...",
    "$PISTACHIO_PYTHON evals/scorecard.py --demo ...",
    "git status ...", "git log ...", "git diff ...", "git show ...",
]


def contract_section(title: str) -> str:
    text = CONTRACT.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert match, f"the contract has no '## {title}' section"
    return match.group(1)


def test_contract_lists_exactly_the_headless_tools_and_commands():
    """tools/run_full_cycle.py's allowed-tools list is compared with this one (same strings): one
    bullet per tool group, the Bash commands as its nested bullets, nothing else in a bullet."""
    section = contract_section("What you may run")
    groups = [tuple(re.findall(r"`([A-Za-z]+)`", names)) for names in
              re.findall(r"^- ((?:`[A-Za-z]+`(?:, )?)+):", section, re.MULTILINE)]
    assert groups == HEADLESS_TOOLS
    assert len(re.findall(r"^- ", section, re.MULTILINE)) == len(HEADLESS_TOOLS)
    commands = re.findall(r"^  - `([^`]+)`$", section, re.MULTILINE)
    assert commands == HEADLESS_COMMANDS
    assert len(re.findall(r"^  - ", section, re.MULTILINE)) == len(HEADLESS_COMMANDS)
    write_line = re.search(r"^- `Write`, `Edit`: (.*?)(?=^- )", section, re.MULTILINE | re.DOTALL)
    assert write_line and all(name in write_line.group(1) for name in HEADLESS_WRITABLE)
    assert "--demo OUT" in section and "outside the repository" in section
    # How the agent sees an exit code, and the forms that are refused.
    assert "Exit code N" in section and "; echo $?" in section and "| tail" in section
    assert "Glob" in section and "`autonomous-research/briefing-*.md`" in section


def test_contract_budget_rows_keep_the_form_the_cycle_parses():
    budgets = contract_section("Budgets (defaults; the runner may set lower ones in its prompt, never higher)")
    assert re.search(r"^\| Tool calls \| 100 \| .*`--max-turns` equal to this budget", budgets, re.MULTILINE)
    assert re.search(r"^\| Money \| USD 5\.00 of model/API cost; .*`--max-budget-usd`", budgets, re.MULTILINE)
    assert "--max-turns 60" not in CONTRACT.read_text(encoding="utf-8")
    environment = contract_section("Your environment")
    for name in ("PISTACHIO_PYTHON", "PISTACHIO_DATE", "PISTACHIO_BRIEFING"):
        assert f"`{name}`" in environment


def test_contract_never_list_feeds_the_rule_check():
    rules = promote.load_never_list(CONTRACT)
    assert [rule.number for rule in rules] == [f"never-{n}" for n in range(1, 6)]
    assert rules[0].text.startswith("push (`git push`)") and all(rule.clauses for rule in rules)


def test_a_promoted_item_naming_a_missing_path_is_refused_by_strict(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "real.py").write_text('REPORT = "evals/latest_report.md"\n', encoding="utf-8")
    (tmp_path / "evals").mkdir()
    text = sample_text().replace(
        "- [ ] Put the seed into",
        "- [ ] Delete tools/gone.py, keep tools/real.py, read evals/latest_report.md (source: x)\n"
        "- [ ] Put the seed into")
    root = make_project(tmp_path, {"briefing-2026-02-11.md": text, "briefing-2026-02-10.md": "x\n"})
    relative = "autonomous-research/briefing-2026-02-11.md"
    plain = run_script(SCRIPT, "--project-root", root, "--check", relative, "--today", TODAY)
    assert plain.returncode == 0
    assert "warning: Action items item names tools/gone.py, which does not exist" in plain.stderr
    assert "tools/real.py" not in plain.stderr and "latest_report" not in plain.stderr
    strict = run_script(SCRIPT, "--project-root", root, "--check", "--strict", relative, "--today", TODAY)
    assert strict.returncode == 1 and "error: Action items item names tools/gone.py" in strict.stderr
