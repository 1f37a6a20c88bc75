"""One list: what agents/pistachio-agent-v3.md tells the agent it may use is what
tools/run_full_cycle.py lets the default agent use, and what tests/test_promote_findings.py's
HEADLESS_* constants say the contract lists.

The contract is parsed here (its "What you may run" section: the tool bullets, the Write/Edit
bullet, the nested Bash commands), then compared with the runner's AGENT_TOOLS, AGENT_READ_TOOLS,
AGENT_WRITABLE, AGENT_SCRIPT_COMMANDS, AGENT_GIT_COMMANDS, AGENT_DENIED_RULES, agent_allowed_rules()
and the prompt. How the two spellings map: the contract writes `$PISTACHIO_PYTHON X ...` where the
runner's rule is `Bash(<python> X:*)`, `git status ...` where it is `Bash(git status:*)`; an optional
part such as `[--strict]` after the runner's prefix is covered by that prefix rule (the real CLI
runs `--check --strict` under the `--check:*` rule: test_cycle_claude_cli.py).
"""
from __future__ import annotations

import re

from conftest import REPO_ROOT, load_script
from test_promote_findings import HEADLESS_COMMANDS, HEADLESS_TOOLS, HEADLESS_WRITABLE

CONTRACT = REPO_ROOT / "agents" / "pistachio-agent-v3.md"
cycle = load_script("tools/run_full_cycle.py")
PY = "/opt/venv/bin/python"
DAY = "2026-12-02"


def section(title: str) -> str:
    text = CONTRACT.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"the contract has no '## {title}' section"
    return match.group(1)


def contract_lists() -> dict:
    """The contract's tool groups, writable files and Bash commands, as it writes them."""
    text = section("What you may run")
    groups = [tuple(re.findall(r"`([A-Za-z]+)`", names)) for names in
              re.findall(r"^- ((?:`[A-Za-z]+`(?:, )?)+):", text, re.MULTILINE)]
    write_bullet = re.search(r"^- `Write`, `Edit`: (.*?)(?=^- )", text, re.MULTILINE | re.DOTALL)
    assert write_bullet, "no `Write`, `Edit` bullet"
    writable = re.findall(r"`([^`]+)`", write_bullet.group(1))
    commands = re.findall(r"^  - `([^`]+)`$", text, re.MULTILINE)
    return {"groups": groups, "writable": writable, "commands": commands, "text": text}


def runner_form(command: str) -> str:
    """A contract command as the runner's prefix: without `$PISTACHIO_PYTHON `, the trailing ` ...`
    and optional `[...]` parts."""
    assert command.endswith(" ..."), command
    prefix = re.sub(r" \[[^\]]+\]", "", command[:-len(" ...")])
    return prefix.removeprefix("$PISTACHIO_PYTHON ")


def test_the_contract_is_what_the_tests_constants_say():
    lists = contract_lists()
    assert lists["groups"] == HEADLESS_TOOLS
    assert lists["commands"] == HEADLESS_COMMANDS
    assert all(name in lists["writable"] for name in HEADLESS_WRITABLE), lists["writable"]


def test_the_tools_are_the_same_in_contract_and_runner():
    lists = contract_lists()
    offered = cycle.AGENT_TOOLS.split(",")
    assert len(offered) == len(set(offered))
    assert sorted(offered) == sorted(name for group in lists["groups"] for name in group)
    read_group = next(group for group in lists["groups"] if "Read" in group)
    assert cycle.AGENT_READ_TOOLS == read_group == ("Read", "Glob", "Grep")
    rules = cycle.agent_allowed_rules(PY, DAY)
    assert rules[:len(read_group)] == list(read_group), "each reading tool is allowed as a whole"
    # The budget's count names the same tools.
    counting = re.search(r"every call of any tool \(([^)]*)\)", section(
        "Budgets (defaults; the runner may set lower ones in its prompt, never higher)"))
    assert counting and sorted(counting.group(1).split(", ")) == sorted(offered)
    command = cycle.default_agent_command(DAY, cycle.Budgets(100, 5.0), python=PY)
    assert command[command.index("--tools") + 1] == cycle.AGENT_TOOLS


def test_the_writable_files_are_the_same_in_contract_and_runner():
    lists = contract_lists()
    assert lists["writable"] == ["PISTACHIO_BRIEFING", "PROGRESS.md"]
    # What PISTACHIO_BRIEFING holds, in the contract's own words.
    briefing = re.search(r"\*\*Write\*\* the briefing at `\$PISTACHIO_BRIEFING` \(`([^`]+)`",
                         CONTRACT.read_text(encoding="utf-8"))
    assert briefing, "the contract no longer says which path PISTACHIO_BRIEFING is"
    contract_paths = [briefing.group(1).replace("YYYY-MM-DD", "{date}"), "PROGRESS.md"]
    assert list(cycle.AGENT_WRITABLE) == contract_paths
    assert cycle.AGENT_WRITABLE[0] == f"{cycle.BRIEFING_DIR}/briefing-{{date}}.md"
    rules = cycle.agent_allowed_rules(PY, DAY)
    assert [rule for rule in rules if rule.startswith(("Edit", "Write"))] == [
        f"Edit(/{path.format(date=DAY)})" for path in contract_paths]


def test_the_commands_are_the_same_in_contract_and_runner():
    commands = contract_lists()["commands"]
    scripts = [runner_form(c) for c in commands if c.startswith("$PISTACHIO_PYTHON ")]
    gits = [runner_form(c) for c in commands if not c.startswith("$PISTACHIO_PYTHON ")]
    assert scripts == list(cycle.AGENT_SCRIPT_COMMANDS)
    assert gits == list(cycle.AGENT_GIT_COMMANDS)
    assert all(command.startswith("git ") for command in gits)
    rules = cycle.agent_allowed_rules(PY, DAY)
    assert [rule for rule in rules if rule.startswith("Bash(")] == (
        [f"Bash({PY} {entry}:*)" for entry in scripts] + [f"Bash({entry}:*)" for entry in gits])
    assert len(rules) == len(cycle.AGENT_READ_TOOLS) + len(commands) + len(cycle.AGENT_WRITABLE), \
        "nothing beyond the contract's lists is allowed"
    # What the contract forbids on top: git's --output (it writes a file) and a push.
    text = contract_lists()["text"]
    assert "no `--output` for git" in text
    assert set(cycle.AGENT_DENIED_RULES) == {"Bash(git *--output*)", "Bash(git push:*)"}


def test_the_prompt_names_the_contracts_commands_and_self_check():
    prompt = cycle.agent_prompt(PY, DAY, cycle.Budgets(100, 5.0))
    for command in contract_lists()["commands"]:
        spelled = runner_form(command)
        assert (f"{PY} {spelled} ..." if command.startswith("$") else f"{spelled} ...") in prompt
    self_check = re.search(r"^2\. `(\$PISTACHIO_PYTHON tools/promote_findings\.py [^`]+)`",
                           section("Self-check before you finish"), re.MULTILINE)
    assert self_check, "the contract's self-check command moved"
    expected = self_check.group(1).replace("$PISTACHIO_PYTHON", PY).replace("YYYY-MM-DD", DAY)
    assert "--check --strict" in expected
    assert prompt.endswith(f"self-check: {expected}"), prompt[-200:]


def test_the_cycles_commit_subject_is_the_one_the_contract_names():
    said = re.findall(r"subject starts with `([^`]+)`", CONTRACT.read_text(encoding="utf-8"))
    assert said == [cycle.COMMIT_PREFIX] == ["LifeOS cycle "]
    message = cycle.commit_message(DAY, REPO_ROOT / f"autonomous-research/briefing-{DAY}.md",
                                   "no sweep given", ["PROGRESS.md"])
    assert message.startswith(f"LifeOS cycle {DAY}: briefing briefing-{DAY}.md promoted")
