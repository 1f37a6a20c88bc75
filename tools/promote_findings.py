"""Promote a research briefing: action items to pending tasks, learnings to memory, rules to a human.

Reads the newest `autonomous-research/briefing-YYYY-MM-DD.md` dated today or earlier (newest by the
date in its name, not the file time; a briefing dated after today is skipped with a warning), or
the one given with --briefing; checks it against the v3 briefing schema (stated in
agents/pistachio-agent-v3.md, enforced here) and then, holding autonomous-research/.promote.lock:
  - Action items          -> autonomous-research/pending-tasks.md (under "## Open"), one line each:
                             `- [ ] <task> (source: briefing-YYYY-MM-DD.md, added YYYY-MM-DD)`
  - Needs human decision  -> the same file, as `- [ ] Decide: <question> (source: ..., added ...)`
  - Learnings             -> autonomous-research/memory.md (under "## Learnings"), one line each:
                             `- YYYY-MM-DD: <learning> (source: briefing-YYYY-MM-DD.md)`
                             (the date is the briefing's date)
  - Rule candidates       -> autonomous-research/critical-candidates.md, as proposals for a human,
    and printed. A candidate is an item of the "Critical candidates" section, an item marked
    `CRITICAL:` in any section, or an item that proposes an action a rule forbids, or the
    opposite of one a rule requires (see "Rule check" below). The rules are read, never written.
  - The briefing's name and sha256 -> autonomous-research/promoted-briefings.txt, written last.
Items already present (compared as normalised text: case, whitespace, punctuation, checkbox
state, dates and `(source: ...)` annotations ignored) are not added again, so running twice
changes nothing, and a run interrupted between two files (a crash, a full disk) is finished by the
next run without losing or doubling an item: the record is written only after every item file,
and a briefing without its record line is promoted again (its items already there are skipped).
Every change is printed as a unified diff on stdout; --dry-run prints the same diff and writes
nothing. Each file is written atomically (temp file in the same folder, fsync, os.replace).
Concurrent promoters serialise on an OS lock (fcntl.flock / msvcrt.locking) of
autonomous-research/.promote.lock; the kernel releases it when a process dies, so it never goes
stale. An output file that is a symbolic link or has a second hard link is refused, never
followed. Control characters are stripped from everything written or printed.

Usage:
    python3 tools/promote_findings.py --project-root .
    python3 tools/promote_findings.py --project-root . --dry-run
    python3 tools/promote_findings.py --project-root . \\
        --briefing autonomous-research/briefing-2026-02-11.md
    python3 tools/promote_findings.py --project-root . \\
        --check autonomous-research/briefing-2026-02-11.md
    python3 tools/promote_findings.py --project-root . --check --strict \\
        autonomous-research/briefing-2026-02-11.md        # the agent's self-check
Tiny CPU run (pure text, no GPU, no network), on the bundled sample in a scratch project:
    mkdir -p /tmp/promote-demo/autonomous-research
    cp tests/data/briefing-sample-v3.md /tmp/promote-demo/autonomous-research/briefing-2026-02-11.md
    python3 tools/promote_findings.py --project-root /tmp/promote-demo --dry-run

Limits (errors, both modes): a briefing over 1,000,000 bytes is refused before it is parsed; a line
or an item (with its wrapped lines) over 4,000 characters; more than 50 items in one section.

Tolerant parsing (plain --check and promotion): headings of any level (`#`..`######`, setext, or a
line that is only `**Action items**`), any case, common synonyms ("Next steps", "Lessons
learned", ...); bullets `-`, `*`, `+`, `1.`, `1)`, with or without `[ ]`/`[x]`; wrapped and nested
lines join their item; CRLF or CR line endings, a UTF-8 BOM. Errors (exit 1, each as
`path:line: error: ...` on stderr): a limit above; the file name is not briefing-YYYY-MM-DD.md or
its date is after today; no `Date:` field or one that differs from the name; `Status:` or
`Stop reason:` missing or outside its vocabulary, or not matching each other; no recognised
section; an item without `(source: ...)`; an impossible calendar date (dates inside Notes and code
fences are not checked). Warnings: a missing section or expected field, an unknown section, an
empty Summary, text outside a list item, a ticked action item, a malformed `Budget used`,
control characters (removed), an Action item, Learning or decision naming a repo path that does
not exist (it would be copied into a file stale_reference_test scans).
--strict (only with --check) turns every warning and every deviation from the canonical schema
into an error: the title line, the header fields in their order and form, the `##` section names
in order, `- none` for an empty section, a Summary of 2-5 lines, one `- ` line per item ending in
its single `(source: ...)`, `Budget used: <m> min, <n> tool calls, $<cost>`, the Previous briefing.

Rule check (what makes an item a candidate besides CRITICAL:). Only the proposing sections are
read: Action items, Learnings, Needs human decision and Critical candidates. Findings and Failures
state what happened and are never checked (an item there is a candidate only when marked
CRITICAL:). Rules: the numbered items of context/session-learnings.md and the bullets of the
"Never, whatever ..." list of agents/pistachio-agent-v3.md (named never-1, never-2, ...). Each rule
is cut into clauses (at . ; : ", not" "instead of" "rather than" "without <verb>ing", and between
coordinated imperatives);
a parenthesis that lists examples ("(`rebase`, `commit --amend`)") gives one variant of the clause
per example. A clause with never / must not / do not / forbid / avoid / skip / no ... may is a
prohibition; one led by an imperative verb, holding must / needs, or the rule's first clause is
a requirement; any other clause is a fact and is not used. Text becomes content tokens:
lowercase words, a crude suffix strip, a small synonym table (retry/twice/second -> again;
origin/remote -> git; mean -> average; remove/truncate/wipe -> delete; paste/put/store ->
write), stopwords, directive words and file-name extensions (py, md, jsonl, ...) dropped, a
pronoun ("... and never rewrite it") taking the tokens of the clause before. An item is cut like a
rule, and also before so / so that / because / since and before "and <modal>" ("cannot run A and
may not start B"). An item clause is a proposal when it is the first clause of an Action item, a
decision or a Critical candidate, or is led by an imperative verb, or holds should / must / can /
may / always / never / do not / "is safe" and the like; a purpose or reason clause (after so,
because, since) states a goal or a fact and proposes only with should / must / always / never /
ought / do not / need to of its own. Its polarity is negative with never / do not / avoid / skip /
disable / exclude / ignore / turn off / leave ... out / leave ... to (someone), or when it is
the contrasted part of ", not" / "instead of" / "without". similarity(item clause, rule clause)
= the cosine of their token sets with IDF weights (over all rule clauses; a token no rule has
weighs 1), 0 unless they share 2 tokens. An item contradicts a rule when one of its clauses has
C >= CONTRADICT_COVERAGE, where C is its best similarity to a rule clause of the opposite
polarity (a positive proposal against a prohibition, a negative one against a requirement),
C is above that clause's best same-polarity similarity to any rule, and C exceeds by at least
AGREE_MARGIN the best same-polarity similarity of the item's other clauses to that rule. The
rule with the largest C is named, with the shared words. The never-list is not applied to Needs
human decision items (asking a human is the point). Measured on
tests/data/rule-candidates-labelled.tsv by benchmarks/bench_rule_candidates.py.

Exit codes: 0 promoted or nothing new (also: --check found the briefing valid), 1 the briefing
fails the v3 schema or a limit (every problem printed with its line), 2 usage or input error
(bad flags, no project root, no briefing found, a target file that is not UTF-8 text, is a link,
or cannot be written; the lock not obtained within --lock-timeout).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import difflib
import hashlib
import math
import os
import random
import re
import sys
import unicodedata
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RESEARCH_DIR = "autonomous-research"
PENDING_TASKS = f"{RESEARCH_DIR}/pending-tasks.md"
MEMORY = f"{RESEARCH_DIR}/memory.md"
CANDIDATES = f"{RESEARCH_DIR}/critical-candidates.md"
PROMOTED_RECORD = f"{RESEARCH_DIR}/promoted-briefings.txt"
LOCK_FILE = f"{RESEARCH_DIR}/.promote.lock"
SESSION_LEARNINGS = "context/session-learnings.md"
CONTRACT = "agents/pistachio-agent-v3.md"
BRIEFING_NAME = re.compile(r"^briefing-(\d{4}-\d{2}-\d{2})\.md$")

# Limits, stated in agents/pistachio-agent-v3.md ("Limits"); a real briefing is a few KB.
MAX_BRIEFING_BYTES = 1_000_000
MAX_LINE_CHARS = 4_000
MAX_ITEMS_PER_SECTION = 50
MAX_RULES_BYTES = 1_000_000        # session-learnings.md and the contract, read for the rule check
MAX_PRINTED_PROBLEMS = 200
DEFAULT_LOCK_TIMEOUT = 120.0
NEWEST = Path("<newest briefing>")   # --check without a PATH

# Rule check thresholds (module docstring, "Rule check"; measured by benchmarks/bench_rule_candidates.py).
CONTRADICT_COVERAGE = 0.4
AGREE_MARGIN = 0.35
# The sections whose items propose; Findings and Failures state what happened and are never
# checked against the rules (an item there is a candidate only when marked CRITICAL:).
PROPOSING_SECTIONS = ("action_items", "learnings", "decisions", "critical")

# --- the v3 schema -------------------------------------------------------------------------------
# Section keys in the order the contract lists them; each with the headings accepted for it
# (compared after normalise_heading). Matching order is SECTION_MATCH_ORDER (most specific first).
SECTIONS = {
    "summary": ("summary", "tl dr", "tldr", "overview", "executive summary"),
    "findings": ("findings", "key findings", "results", "observations"),
    "action_items": ("action items", "action item", "actions", "next steps", "next actions",
                     "todo", "to do", "todos", "tasks", "follow ups", "followups",
                     "recommended actions"),
    "learnings": ("learnings", "learning", "lessons learned", "lessons", "what we learned",
                  "what i learned", "key learnings", "insights"),
    "decisions": ("needs human decision", "needs human decisions", "needs a human decision",
                  "human decisions", "human decision", "decisions needed", "decisions",
                  "questions for the human", "open questions", "questions"),
    "critical": ("critical candidates", "critical rule candidates", "critical rules",
                 "proposed critical rules", "candidate rules", "critical"),
    "failures": ("failures", "failure", "tool failures", "failures and fallbacks", "errors",
                 "problems"),
}
SECTION_TITLES = {
    "summary": "Summary", "findings": "Findings", "action_items": "Action items",
    "learnings": "Learnings", "decisions": "Needs human decision",
    "critical": "Critical candidates", "failures": "Failures",
}
SECTION_MATCH_ORDER = ("critical", "decisions", "action_items", "learnings", "findings",
                       "failures", "summary")
ITEM_SECTIONS = ("findings", "action_items", "learnings", "decisions", "critical", "failures")
# Free-text sections: accepted, not parsed ("notes" is the canonical one). "header" holds the
# header fields if the agent puts them under a heading instead of above the first section.
FREE_SECTIONS = ("notes", "sources", "references", "appendix", "details")
HEADER_SECTIONS = ("run", "metadata", "run info", "header")
NOTES_TITLE = "Notes"
TITLE_PREFIX = "Pistachio research briefing "

STATUS_REASONS = {
    "completed": ("goal-met", "nothing-new"),
    "stopped": ("budget-time", "budget-tool-calls", "budget-money", "needs-human"),
    "failed": ("preflight-failed", "repeated-failure"),
}
STOP_REASONS = tuple(reason for reasons in STATUS_REASONS.values() for reason in reasons)
# The header fields in their canonical order; the first three are required in every mode.
FIELD_ORDER = ("date", "agent", "status", "stop reason", "previous briefing", "budget used")
REQUIRED_FIELDS = ("date", "status", "stop reason")
RECOMMENDED_FIELDS = ("agent", "previous briefing", "budget used")
FIELD_TITLES = {"date": "Date", "agent": "Agent", "status": "Status", "stop reason": "Stop reason",
                "previous briefing": "Previous briefing", "budget used": "Budget used"}
AGENT_NAME = "pistachio-agent-v3"
BUDGET_USED = re.compile(r"^(\d{1,6}) min, (\d{1,6}) tool calls?, \$(\d{1,6}(?:\.\d{1,2})?)$")
FIELD_KEY = re.compile(r"^[A-Za-z][A-Za-z _-]{0,30}$")

EMPTY_ITEM = re.compile(
    r"^(?:none|n/?a|nothing|nothing new|nothing to report|"
    r"no (?:action items|actions|tasks|learnings|findings|failures|decisions|questions|"
    r"critical candidates|candidates))\.?$", re.IGNORECASE)
ISO_DATE = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d-])")
SOURCE_OPEN = re.compile(r"[(\[][ \t]{0,3}sources?[ \t]{0,3}:", re.IGNORECASE)
BARE_SOURCE = re.compile(r"sources?[ \t]{0,3}:", re.IGNORECASE)
DATE_PREFIX = re.compile(r"\d{4}-\d{2}-\d{2}[ \t]{0,3}[:\u2013\u2014-]")
LAST_UPDATED = re.compile(r"^([^\w\r\n]{0,10}last updated[^\w\r\n]{0,10})(\d{4}-\d{2}-\d{2})",
                          re.IGNORECASE)
NUMBERED_RULE = re.compile(r"^ {0,3}(\d{1,3})[.)][ \t]")
# Characters that are never written or printed, because a human reading the task file does not
# see them while a rule check or the next agent does: C0 and C1 controls and DEL (tab and line
# ends are handled apart); every invisible format character (Unicode category Cf: soft hyphen,
# zero-width and word joiners, bidirectional overrides, the TAG block U+E0000-E007F that can
# spell hidden text, and the rest; tests/test_promote_hostile.py checks this list against the
# running Python's unicodedata); variation selectors (they can smuggle bytes after any visible
# character); Hangul fillers (blank letters); the rest of Unicode's default-ignorable code points
# (U+034F, U+17B4-17B5, U+FFF0-FFF8, the whole U+E0000-E0FFF block).
CONTROL = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff"
    "\u180b-\u180d\u180f\ufe00-\ufe0f"
    "\u115f\u1160\u3164\uffa0\u034f\u17b4\u17b5\ufff0-\ufff8]")


class InputError(Exception):
    """An exit-2 situation (no briefing, a target file that cannot be read); one clear line."""


@dataclass
class Problem:
    line: int | None
    message: str
    level: str = "error"       # "error", "warning", or "style" (a deviation only --strict reports)


@dataclass
class Item:
    section: str
    text: str            # the item with its source annotations and checkbox removed, one line
    sources: list[str]
    line: int            # 1-based line of the item's first line in the briefing
    checked: bool = False
    critical: bool = False


@dataclass
class Briefing:
    path: Path
    date: dt.date | None
    fields: dict[str, tuple[str, int]] = field(default_factory=dict)
    sections: dict[str, int] = field(default_factory=dict)   # key -> line of its heading
    items: list[Item] = field(default_factory=list)
    summary: str = ""
    problems: list[Problem] = field(default_factory=list)
    strict: bool = False

    @property
    def errors(self) -> list[Problem]:
        levels = ("error", "warning", "style") if self.strict else ("error",)
        return [p for p in self.problems if p.level in levels]

    @property
    def warnings(self) -> list[Problem]:
        return [] if self.strict else [p for p in self.problems if p.level == "warning"]

    def section_items(self, key: str) -> list[Item]:
        return [item for item in self.items if item.section == key]


@dataclass
class Candidate:
    text: str
    why: str
    line: int


# --- small text helpers --------------------------------------------------------------------------
def clean(text: str) -> str:
    """text without control characters (tab and newline kept; CR kept only before LF)."""
    return re.sub("\r(?!\n)", "", CONTROL.sub("", text))


def split_lines(text: str) -> list[str]:
    """Lines without their endings; CRLF, CR and LF all end a line (unlike str.splitlines, no
    other control character does, so line numbers match what an editor shows)."""
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def strip_markup(text: str) -> str:
    """Remove emphasis markers and surrounding whitespace (keeps backticks and the words)."""
    return text.replace("**", "").replace("__", "").strip()


def normalise_heading(text: str) -> str:
    text = strip_markup(text).lower()
    text = re.sub(r"\([^)]*\)", " ", text)                  # "Action items (for the human)"
    text = text.strip()
    number = re.match(r"(?:\d{1,3}[.)]|[ivx]{1,5}\.) ", text)  # "2. Findings", "ii. Findings"
    if number:
        text = text[number.end():]
    text = re.sub(r"[^a-z0-9]+", " ", text)
    return text.strip()


def classify_heading(text: str) -> str | None:
    """Section key for a heading, 'notes'/'free'/'header' for accepted free-text headings, or None."""
    heading = normalise_heading(text)
    if not heading:
        return None
    for key in SECTION_MATCH_ORDER:
        for synonym in SECTIONS[key]:
            if heading == synonym or heading.startswith(synonym + " "):
                return key
    if heading in HEADER_SECTIONS:
        return "header"
    if heading == "notes":
        return "notes"
    if any(heading == name or heading.startswith(name + " ") for name in FREE_SECTIONS):
        return "free"
    return None


def parse_atx(line: str) -> tuple[int, str] | None:
    """(level, title) of an ATX heading (`## Title ##`), CommonMark-style, in one linear pass."""
    indent = len(line) - len(line.lstrip(" "))
    if indent > 3:
        return None
    rest = line[indent:]
    level = len(rest) - len(rest.lstrip("#"))
    if not 1 <= level <= 6:
        return None
    rest = rest[level:]
    if rest and rest[0] not in " \t":
        return None
    title = rest.strip(" \t")
    closing = title.rstrip("#")
    if closing != title and (not closing or closing[-1] in " \t"):
        title = closing.rstrip(" \t")
    return level, title


def is_setext_underline(line: str) -> str | None:
    """'=' or '-' when the line is a setext underline (up to 3 spaces, then only = or only -)."""
    stripped = line.rstrip(" \t")
    indent = len(stripped) - len(stripped.lstrip(" "))
    body = stripped[indent:]
    if indent > 3 or not body or body[0] not in "=-" or body.strip(body[0]):
        return None
    return body[0]


@dataclass
class Bullet:
    indent: int
    marker: str          # "-", "*", "+" or "1." style
    box: str | None      # the character inside [ ], or None
    text: str
    exact: bool          # "- text" or "- [ ] text" with single spaces


def parse_bullet(line: str) -> Bullet | None:
    """A list item line, parsed by hand (no backtracking)."""
    stripped = line.lstrip(" \t")
    indent = len(line) - len(stripped)
    if stripped[:1] in ("-", "*", "+"):
        marker, after = stripped[0], stripped[1:]
    else:
        digits = len(stripped) - len(stripped.lstrip("0123456789"))
        if not 1 <= digits <= 3 or stripped[digits:digits + 1] not in (".", ")"):
            return None
        marker, after = stripped[:digits + 1], stripped[digits + 1:]
    if after and after[0] not in " \t":
        return None
    exact = marker == "-" and after.startswith(" ") and after[1:2] not in (" ", "\t")
    after = after.lstrip(" \t")
    box = None
    if len(after) >= 3 and after[0] == "[" and after[2] == "]" and after[1] in " xX~-" \
            and (len(after) == 3 or after[3] in " \t"):
        box = after[1]
        exact = exact and after[3:4] == " " and after[4:5] not in (" ", "\t")
        after = after[3:].lstrip(" \t")
    return Bullet(indent, marker, box, after, exact)


def parse_field(line: str) -> tuple[str, str, bool] | None:
    """(key, value, plain form?) of a `Key: value` header line, or None."""
    text = line.strip()
    plain = True
    if text[:2] in ("- ", "* ", "+ "):
        text, plain = text[2:].lstrip(), False
    if "**" in text or "__" in text:
        text, plain = strip_markup(text), False
    colon = text.find(":")
    if colon < 1:
        return None
    key = text[:colon].rstrip()
    if not FIELD_KEY.match(key):
        return None
    if key != text[:colon]:
        plain = False
    value = text[colon + 1:].strip()
    if plain and text[colon + 1:colon + 2] != " " and value:
        plain = False
    normalised = " ".join(key.replace("_", " ").replace("-", " ").lower().split())
    return normalised, value, plain


def extract_sources(text: str) -> tuple[str, list[str]]:
    """Remove every `(source: ...)` / `[sources: ...]` group (one nesting level of brackets
    allowed inside) and return (text without them, the sources). A bare trailing
    `source: X` after a dash or semicolon also counts."""
    remaining, sources, _ = source_groups(text)
    return remaining, sources


def source_groups(text: str) -> tuple[str, list[str], list[tuple[int, int, str]]]:
    """(text without source groups, the sources, [(start, end, opener)] of each group found)."""
    sources: list[str] = []
    groups: list[tuple[int, int, str]] = []
    out = []
    index = 0
    while True:
        match = SOURCE_OPEN.search(text, index)
        if not match:
            out.append(text[index:])
            break
        opener = text[match.start()]
        closer = ")" if opener == "(" else "]"
        depth, end = 0, None
        for position in range(match.start(), len(text)):
            char = text[position]
            if char == opener:
                depth += 1
            elif char == closer:
                depth -= 1
                if depth == 0:
                    end = position
                    break
        if end is None:   # unbalanced: take the rest of the line as the source
            end = len(text)
        out.append(text[index:match.start()])
        sources.append(text[match.end():end].strip())
        groups.append((match.start(), end + 1, opener))
        index = end + 1
    remaining = "".join(out)
    bare = bare_source(remaining)
    if bare is not None:
        start, value = bare
        sources.append(value)
        groups.append((-1, -1, "bare"))
        remaining = remaining[:start]
    remaining = " ".join(remaining.split())
    remaining = re.sub(r" ([.,;:!?])(?= |$)", r"\1", remaining)
    return remaining, sources, groups


def bare_source(text: str) -> tuple[int, str] | None:
    """(where the separator starts, the value) of a trailing `- source: X` / `; source: X`."""
    for match in BARE_SOURCE.finditer(text):
        before = text[:match.start()].rstrip(" \t")
        at_start = not before
        separated = before[-1:] in ("-", "\u2013", "\u2014", ";") and (
            before[-1] == ";" or before[:-1].endswith((" ", "\t")) or len(before) == 1)
        if (at_start or separated) and text[match.end():].strip():
            start = 0 if at_start else len(before) - 1
            return start, text[match.end():].strip()
    return None


ANNOTATION_START = re.compile(r"^\s*(?:sources?|added|proposed|why|reason)\b", re.IGNORECASE)


def strip_annotations(text: str) -> str:
    """Drop trailing parenthetical annotations such as `(source: X, added D)` or `(proposed D)`."""
    text = text.rstrip()
    while text.endswith(")"):
        depth = 0
        for position in range(len(text) - 1, -1, -1):
            if text[position] == ")":
                depth += 1
            elif text[position] == "(":
                depth -= 1
                if depth == 0:
                    break
        else:
            return text
        if not ANNOTATION_START.match(text[position + 1:]):
            return text
        text = text[:position].rstrip()
    return text


def critical_mark(text: str) -> tuple[bool, str, bool]:
    """(marked?, text without the mark, canonical `CRITICAL: ` form?) for `CRITICAL:`,
    `critical -`, `[critical]` and similar prefixes."""
    stripped = text.lstrip()
    lowered = stripped.lower()
    if lowered.startswith("[critical]"):
        return True, stripped[len("[critical]"):].lstrip(), False
    if lowered.startswith("critical"):
        rest = stripped[len("critical"):]
        after = rest.lstrip(" \t")
        if after[:1] in (":", "!", "-", "\u2013", "\u2014"):
            canonical = stripped.startswith("CRITICAL: ") and rest == after
            return True, after[1:].lstrip(), canonical
    return False, text, True


def normalise_item(text: str) -> str:
    """The text two entries are compared by: markup, source/added/proposed annotations, a
    leading date, a CRITICAL marker, case, punctuation and whitespace do not count."""
    text = clean(text)[:20_000]
    text = strip_markup(text)
    text, _ = extract_sources(text)
    text = strip_annotations(text).lstrip()
    date = DATE_PREFIX.match(text)
    if date:
        text = text[date.end():]
    text = critical_mark(text)[1]
    text = text.lower()
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(text.split())


# --- the briefing parser -------------------------------------------------------------------------
def briefing_date_from_name(path: Path) -> dt.date | None:
    match = BRIEFING_NAME.match(path.name)
    if not match:
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


def read_briefing_bytes(path: Path) -> bytes:
    """The file's bytes, reading at most MAX_BRIEFING_BYTES + 1 (a larger file is refused by
    parse_briefing without being read whole)."""
    with open(path, "rb") as handle:
        return handle.read(MAX_BRIEFING_BYTES + 1)


def parse_briefing(path: Path, data: bytes | None = None, today: dt.date | None = None,
                   strict: bool = False) -> Briefing:
    """Parse and validate one briefing file; problems land in .errors / .warnings."""
    path = Path(path)
    today = today or dt.date.today()
    briefing = Briefing(path=path, date=briefing_date_from_name(path), strict=strict)
    add = briefing.problems.append
    if briefing.date is None:
        add(Problem(None, f"file name {clean(path.name)!r} is not briefing-YYYY-MM-DD.md with a "
                          "real date"))
    elif briefing.date > today:
        add(Problem(None, f"the briefing is dated {briefing.date}, after today ({today}); only "
                          "briefings dated today or earlier are valid"))
    size = len(data) if data is not None else path.stat().st_size
    if size > MAX_BRIEFING_BYTES:
        add(Problem(None, f"the briefing is {size:,} bytes, over the limit of "
                          f"{MAX_BRIEFING_BYTES:,} bytes; nothing of it was read (see the "
                          "contract's Limits)"))
        return briefing
    if data is None:
        data = read_briefing_bytes(path)
    if len(data) > MAX_BRIEFING_BYTES:
        add(Problem(None, f"the briefing is over the limit of {MAX_BRIEFING_BYTES:,} bytes"))
        return briefing
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        add(Problem(None, f"not UTF-8 text (byte {exc.start}); save it as UTF-8"))
        return briefing
    lines = split_lines(text)
    _Parser(briefing, lines, today).run()
    return briefing


class _Parser:
    """One pass over the lines; every step is linear in the line's length."""

    def __init__(self, briefing: Briefing, lines: list[str], today: dt.date):
        self.b = briefing
        self.today = today
        self.lines = lines
        self.section: str | None = None   # None = before the first heading
        self.current: dict | None = None  # the item being collected
        self.raw_items: list[dict] = []
        self.summary_lines: list[tuple[int, str]] = []
        self.headings: list[tuple[int, str, int, str, str]] = []  # line, key, level, form, title
        self.header_lines: list[tuple[int, str | None, bool]] = []  # line, field key, plain
        self.title: tuple[int, str] | None = None
        self.first_text_line: int | None = None
        self.date_lines: list[tuple[int, str]] = []

    def add(self, line, message, level="error"):
        self.b.problems.append(Problem(line, message, level))

    def close_item(self) -> None:
        if self.current is not None:
            self.raw_items.append(self.current)
            self.current = None

    def take_heading(self, title: str, number: int, level: int, form: str) -> None:
        self.close_item()
        key = classify_heading(title)
        self.headings.append((number, key or "", level, form, title))
        if key in SECTIONS:
            if key in self.b.sections:
                self.add(number, f"second {SECTION_TITLES[key]!r} section; its items are merged "
                                 "with the first", "warning")
            else:
                self.b.sections[key] = number
            self.section = key
        elif key in ("notes", "free", "header"):
            self.section = key
        elif level == 1 and self.title is None and not self.b.sections:
            self.section = "title"
            self.title = (number, title)
        else:
            self.add(number, f"unknown section {clean(title.strip())[:60]!r} ignored (see the v3 "
                             "schema for section names)", "warning")
            self.section = "unknown"

    def run(self) -> None:
        lines, b = self.lines, self.b
        in_fence = False
        fence_line = 0
        in_comment = False
        too_long = 0
        control_lines = []
        index = 0
        while index < len(lines):
            number = index + 1
            line = lines[index]
            index += 1
            if len(line) > MAX_LINE_CHARS:
                too_long += 1
                if too_long <= 10:
                    self.add(number, f"line is {len(line):,} characters, over the limit of "
                                     f"{MAX_LINE_CHARS:,}")
                line = line[:MAX_LINE_CHARS]
            if CONTROL.search(line) or "\r" in line:
                control_lines.append(number)
                line = CONTROL.sub("", line).replace("\r", "")
            line = line.rstrip()
            free_here = self.section in ("notes", "free")
            if in_comment:
                if "-->" in line:
                    in_comment = False
                continue
            stripped = line.lstrip()
            if stripped.startswith(("```", "~~~")):
                in_fence = not in_fence
                fence_line = number
                if not free_here:
                    self.add(number, "a code fence outside Notes; items are single lines",
                             "style")
                continue
            if in_fence:
                continue
            if stripped.startswith("<!--"):
                if "-->" not in line:
                    in_comment = True
                if not free_here:
                    self.add(number, "an HTML comment outside Notes", "style")
                continue
            if line and self.first_text_line is None:
                self.first_text_line = number
            if not free_here:
                self.date_lines.append((number, line))
            atx = parse_atx(line)
            if atx:
                self.take_heading(atx[1], number, atx[0], "atx")
                continue
            # Setext heading: a plain text line underlined with === or --- (not a list item).
            if (line.strip() and index < len(lines) and is_setext_underline(lines[index][:MAX_LINE_CHARS])
                    and not parse_bullet(line)
                    and (self.current is None or self.current["blank_after"])):
                self.take_heading(line, number, 1 if "=" in lines[index][:8] else 2, "setext")
                index += 1
                continue
            if stripped.startswith(("**", "__")) and stripped.rstrip(":").endswith(("**", "__")):
                inner = strip_markup(stripped.rstrip(":"))
                if inner and classify_heading(inner) in SECTIONS:
                    self.take_heading(inner, number, 2, "bold")
                    continue
            if stripped.endswith(":") and 3 <= len(stripped) <= 41 \
                    and re.fullmatch(r"[A-Za-z][A-Za-z ]{2,40}:", stripped) \
                    and classify_heading(stripped[:-1]) in SECTIONS:
                self.take_heading(stripped[:-1], number, 2, "plain")
                continue

            if not line.strip():
                if self.current is not None:
                    self.current["blank_after"] = True
                continue

            if self.section in (None, "title", "header"):
                parsed = parse_field(line)
                if parsed and parsed[0] in FIELD_ORDER:
                    key, value, plain = parsed
                    self.header_lines.append((number, key, plain))
                    if key in b.fields:
                        self.add(number, f"second {FIELD_TITLES[key]!r} field ignored", "warning")
                    else:
                        b.fields[key] = (value, number)
                else:
                    self.header_lines.append((number, None, False))
                continue
            if self.section == "summary":
                self.summary_lines.append((number, line.strip()))
                continue
            if self.section not in ITEM_SECTIONS:
                continue

            bullet = parse_bullet(line)
            indent = len(line) - len(line.lstrip())
            current = self.current
            if bullet and (current is None or indent <= current["indent"]):
                self.close_item()
                self.current = {"section": self.section, "line": number, "indent": indent,
                                "parts": [bullet.text.strip()], "checked": (bullet.box or " ") in "xX",
                                "box": bullet.box, "marker": bullet.marker, "exact": bullet.exact,
                                "blank_after": False, "length": len(bullet.text), "wrapped": False}
            elif current is not None and (indent > current["indent"] or not current["blank_after"]):
                # A wrapped line or a nested bullet: it belongs to the item above.
                part = bullet.text.strip() if bullet else line.strip()
                joiner = "; " if bullet else " "
                current["length"] += len(part) + len(joiner)
                if current["length"] <= MAX_LINE_CHARS:
                    current["parts"].append((joiner, part))
                current["blank_after"] = False
                current["wrapped"] = True
            else:
                self.close_item()
                self.add(number, f"text outside a list item in {SECTION_TITLES[self.section]!r} "
                                 f"ignored: {clean(line.strip())[:60]!r}", "warning")
        self.close_item()
        if too_long > 10:
            self.add(None, f"{too_long - 10} more lines over {MAX_LINE_CHARS:,} characters")
        if control_lines:
            shown = ", ".join(str(n) for n in control_lines[:5])
            more = f" and {len(control_lines) - 5} more" if len(control_lines) > 5 else ""
            self.add(control_lines[0], f"control characters (or a stray carriage return) on "
                                       f"line(s) {shown}{more}; they were removed", "warning")
        if in_fence:
            self.add(fence_line, "a ``` code fence is never closed; the text after it was ignored",
                     "warning")
        self.build_items()
        validate(self.b, self)

    def build_items(self) -> None:
        b = self.b
        counts: dict[str, int] = {}
        nones: dict[str, list[int]] = {}
        raw_counts: dict[str, int] = {}
        for raw in self.raw_items:
            section = raw["section"]
            raw_counts[section] = raw_counts.get(section, 0) + 1
            if raw_counts[section] > MAX_ITEMS_PER_SECTION:
                if raw_counts[section] == MAX_ITEMS_PER_SECTION + 1:
                    self.add(raw["line"], f"more than {MAX_ITEMS_PER_SECTION} items in "
                                          f"{SECTION_TITLES[section]!r}; the limit is "
                                          f"{MAX_ITEMS_PER_SECTION} per section")
                continue                 # over the limit: not read further (the run fails)
            text = raw["parts"][0]
            for joiner, part in raw["parts"][1:]:
                text = f"{text}{joiner}{part}" if text else part
            if raw["length"] > MAX_LINE_CHARS:
                self.add(raw["line"], f"item is {raw['length']:,} characters with its wrapped "
                                      f"lines, over the limit of {MAX_LINE_CHARS:,}")
            text = strip_markup(text)
            body, sources, groups = source_groups(text)
            marked, body, canonical_mark = critical_mark(body)
            body = body.strip()
            if not body or EMPTY_ITEM.match(body):
                nones.setdefault(section, []).append(raw["line"])
                if body != "none" or sources or raw["box"] is not None or not raw["exact"]:
                    self.add(raw["line"], "an empty section holds exactly `- none`", "style")
                continue
            counts[section] = counts.get(section, 0) + 1
            item = Item(section=section, text=clean(body), sources=[clean(s) for s in sources],
                        line=raw["line"], checked=raw["checked"], critical=marked)
            b.items.append(item)
            self.check_item_form(raw, text, groups, marked and not canonical_mark)
        for section, lines in nones.items():
            if counts.get(section) or len(lines) > 1:
                self.add(lines[0], f"`- none` in {SECTION_TITLES[section]!r}, which also holds "
                                   "other items (or a second `- none`)", "style")
        for key, number in b.sections.items():
            if key in ITEM_SECTIONS and not counts.get(key) and not nones.get(key):
                self.add(number, f"the {SECTION_TITLES[key]!r} section is empty; write `- none`",
                         "style")
        b.summary = " ".join(text for _, text in self.summary_lines).strip()

    def check_item_form(self, raw: dict, text: str, groups, bad_mark: bool) -> None:
        number, section = raw["line"], raw["section"]
        title = SECTION_TITLES[section]
        if raw["wrapped"]:
            self.add(number, f"{title} item spans several lines (or has a nested bullet); write "
                             "each item on one line", "style")
        wanted = "- [ ] " if section == "action_items" else "- "
        if not raw["exact"] or raw["marker"] != "-" or (
                (raw["box"] is not None) != (section == "action_items")) or (
                section == "action_items" and raw["box"] not in (" ", "x", "X")):
            self.add(number, f"{title} item must start with `{wanted}`", "style")
        if section == "action_items" and raw["checked"]:
            self.add(number, "action item is ticked ([x]); it is not promoted", "warning")
        if bad_mark:
            self.add(number, "write the rule mark as `CRITICAL: ` at the start of the item", "style")
        if groups:
            start, end, opener = groups[-1]
            tail_ok = opener == "(" and len(groups) == 1 and not text[end:].strip() \
                and text[start:start + 9] == "(source: "
            if not tail_ok:
                self.add(number, f"{title} item must end with one `(source: ...)` (several sources "
                                 "inside it, separated by `;`), with nothing after it", "style")


def validate(briefing: Briefing, parser: _Parser) -> None:
    """Apply the v3 schema rules to a parsed briefing."""
    fields = briefing.fields
    add = parser.add

    if "date" not in fields:
        add(None, "no 'Date: YYYY-MM-DD' field above the first section")
    else:
        value, number = fields["date"]
        try:
            stated = dt.date.fromisoformat(value.split()[0] if value else "")
        except ValueError:
            add(number, f"Date {clean(value)[:40]!r} is not YYYY-MM-DD")
        else:
            if briefing.date and stated != briefing.date:
                add(number, f"Date {stated} differs from the date in the file name "
                            f"({briefing.date}); they must match")
            elif value.strip() != stated.isoformat():
                add(number, "write the Date field as `Date: YYYY-MM-DD` alone", "style")

    status = None
    if "status" not in fields:
        add(None, "no 'Status:' field (one of: " + ", ".join(STATUS_REASONS) + ")")
    else:
        value, number = fields["status"]
        status = value.split()[0].strip(".,;").lower() if value else ""
        if status not in STATUS_REASONS:
            add(number, f"Status {clean(value)[:40]!r} is not one of: " + ", ".join(STATUS_REASONS))
            status = None
        elif value != status:
            add(number, f"write the Status field as `Status: {status}` (lower case, nothing else)",
                "style")
    reason = None
    if "stop reason" not in fields:
        add(None, "no 'Stop reason:' field (one of: " + ", ".join(STOP_REASONS) + ")")
    else:
        value, number = fields["stop reason"]
        first = re.split(r"[\s,;:(]", value.strip(), maxsplit=1)[0] if value else ""
        reason = first.strip(".").lower()
        if reason not in STOP_REASONS:
            add(number, f"Stop reason {clean(value)[:60]!r} does not start with one of: "
                        + ", ".join(STOP_REASONS))
            reason = None
        elif first != reason or (value[len(first):len(first) + 1] not in ("", " ")):
            add(number, f"write the Stop reason as `Stop reason: {reason}`, optionally followed by "
                        "a space and free text", "style")
    if status and reason and reason not in STATUS_REASONS[status]:
        add(fields["stop reason"][1], f"Stop reason {reason!r} does not go with Status {status!r} "
                                      f"(allowed: {', '.join(STATUS_REASONS[status])})")
    for name in RECOMMENDED_FIELDS:
        if name not in fields:
            add(None, f"no '{FIELD_TITLES[name]}:' field", "warning")
    if "agent" in fields and fields["agent"][0] != AGENT_NAME:
        add(fields["agent"][1], f"write the Agent field as `Agent: {AGENT_NAME}`", "style")
    if "budget used" in fields:
        value, number = fields["budget used"]
        if not BUDGET_USED.match(value):
            add(number, f"Budget used {clean(value)[:60]!r} is not `<minutes> min, <n> tool calls, "
                        "$<cost>` (e.g. `31 min, 61 tool calls, $3.05`)", "warning")
    check_previous(briefing, add)
    check_header_form(briefing, parser)

    if not briefing.sections:
        add(None, "no recognised section (expected: " + ", ".join(SECTION_TITLES.values()) + ")")
    else:
        for key, title in SECTION_TITLES.items():
            if key not in briefing.sections:
                consequence = {"action_items": "; nothing goes to pending-tasks.md",
                               "learnings": "; nothing goes to memory.md"}.get(key, "")
                add(None, f"no {title!r} section{consequence}", "warning")
    check_section_form(parser)
    if "summary" in briefing.sections:
        if not briefing.summary:
            add(briefing.sections["summary"], "the Summary section is empty", "warning")
        elif not 2 <= len(parser.summary_lines) <= 5:
            add(briefing.sections["summary"], f"the Summary has {len(parser.summary_lines)} lines; "
                                              "write 2-5 lines of prose", "style")
        for number, text in parser.summary_lines:
            if parse_bullet(text):
                add(number, "the Summary is prose, not a list", "style")
                break
    if reason == "needs-human" and not briefing.section_items("decisions"):
        add(fields["stop reason"][1], "Stop reason needs-human but the 'Needs human decision' "
                                      "section is empty", "warning")

    for item in briefing.items:
        if not item.sources or not all(item.sources):
            add(item.line, f"{SECTION_TITLES[item.section]} item has no '(source: ...)': "
                           f"{item.text[:70]!r}")

    for number, line in parser.date_lines:
        for match in ISO_DATE.finditer(line):
            try:
                dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
            except ValueError:
                add(number, f"{match.group(0)} is not a real calendar date")


def check_previous(briefing: Briefing, add) -> None:
    """The Previous briefing field: `none` or an earlier briefing; --strict: the newest earlier
    briefing in the same folder, or `none` when there is none."""
    if "previous briefing" not in briefing.fields or not briefing.date:
        return
    value, number = briefing.fields["previous briefing"]
    stripped = value.strip().strip("`")
    earlier = sorted(d for d in (briefing_date_from_name(p) for p in
                                 briefing.path.parent.glob("briefing-*.md"))
                     if d is not None and d < briefing.date) if briefing.path.parent.is_dir() else []
    newest = f"briefing-{earlier[-1].isoformat()}.md" if earlier else "none"
    if stripped.lower() == "none":
        if earlier:
            add(number, f"Previous briefing is 'none' but {newest} exists; name it", "style")
        return
    named = BRIEFING_NAME.match(Path(stripped).name)
    if not named or named.group(1) >= briefing.date.isoformat():
        add(number, f"Previous briefing {clean(value)[:60]!r} should be 'none' or an earlier "
                    "briefing-YYYY-MM-DD.md", "warning")
    elif not earlier:
        add(number, f"Previous briefing {clean(stripped)[:60]!r}, but there is no earlier briefing "
                    "beside this one; write `none`", "style")
    elif stripped != newest:
        add(number, f"Previous briefing {clean(stripped)[:60]!r}: the newest earlier briefing "
                    f"beside this one is {newest}; write exactly that name", "style")


def check_header_form(briefing: Briefing, parser: _Parser) -> None:
    """--strict: the title line first, then the six fields, plain, in FIELD_ORDER."""
    add = parser.add
    expected = f"{TITLE_PREFIX}{briefing.date.isoformat()}" if briefing.date else None
    title_ok = (parser.title is not None and parser.title[0] == parser.first_text_line
                and parser.headings and parser.headings[0][3] == "atx"
                and parser.headings[0][2] == 1 and parser.title[1] == expected)
    if not title_ok:
        add(parser.title[0] if parser.title else 1,
            f"the first line must be the title `# {expected or TITLE_PREFIX + 'YYYY-MM-DD'}`", "style")
    keys = []
    for number, key, plain in parser.header_lines:
        if key is None:
            add(number, "the header holds only `Key: value` field lines (Date, Agent, Status, "
                        "Stop reason, Previous briefing, Budget used)", "style")
            continue
        if not plain:
            add(number, f"write the {FIELD_TITLES[key]!r} field as a plain `{FIELD_TITLES[key]}: "
                        "value` line (no bullet, no bold)", "style")
        keys.append(key)
    present = [key for key in FIELD_ORDER if key in keys]
    if keys and keys != present:
        add(parser.header_lines[0][0], "the header fields must come in this order: "
                                       + ", ".join(FIELD_TITLES[k] for k in FIELD_ORDER), "style")
    if any(h[1] == "header" for h in parser.headings):
        add(next(h[0] for h in parser.headings if h[1] == "header"),
            "the header fields go above the first section, not under a heading", "style")


def check_section_form(parser: _Parser) -> None:
    """--strict: `## Title` for each section, the exact names, in order, Notes (optional) last."""
    add = parser.add
    order = list(SECTION_TITLES)
    seen = []
    for number, key, level, form, title in parser.headings:
        if key in SECTIONS:
            if form != "atx" or level != 2 or title != SECTION_TITLES[key]:
                add(number, f"write this heading as `## {SECTION_TITLES[key]}`", "style")
            seen.append((number, order.index(key)))
        elif key == "notes":
            if form != "atx" or level != 2 or title != NOTES_TITLE:
                add(number, f"write this heading as `## {NOTES_TITLE}`", "style")
            seen.append((number, len(order)))
        elif key in ("free",):
            add(number, f"section {clean(title)[:60]!r} is not in the schema; put free text under "
                        f"`## {NOTES_TITLE}`", "style")
    positions = [position for _, position in seen]
    if positions != sorted(positions):
        wrong = next(number for (number, position), previous in zip(seen[1:], positions)
                     if position < previous)
        add(wrong, "sections out of order; the order is: "
                   + ", ".join(SECTION_TITLES.values()) + f", then {NOTES_TITLE} (optional)", "style")


# A repo path as stale_reference_test reads one: a top-level folder, a slash, then the rest.
REPO_PATH = re.compile(r"(?<![\w./-])((?:tools|evals|agents|context|autonomous-research|benchmarks"
                       r"|tests)/[\w./-]{1,200})")
PROMOTED_TO = {"action_items": PENDING_TASKS, "decisions": PENDING_TASKS, "learnings": MEMORY}


def check_promoted_paths(briefing: Briefing, project_root: Path) -> None:
    """Warn (an error under --strict) when an item that is copied into pending-tasks.md or
    memory.md names a repo path that does not exist: those files are scanned by
    evals/known_failures.py's stale_reference_test, so the next cycle would fail at step 4.
    A name that a script in tools/ or evals/ writes (an output such as evals/latest_report.md)
    in a folder that exists is fine, as it is for that test."""
    scripts = None
    for item in briefing.items:
        if item.section not in PROMOTED_TO:
            continue
        for match in REPO_PATH.finditer(item.text):
            token = match.group(1).rstrip(".,:;`'\")")
            if any(mark in token for mark in "*?{}<>$") or "YYYY" in token or "..." in token:
                continue
            path = project_root / token.rstrip("/")
            if path.exists():
                continue
            if scripts is None:
                scripts = "\n".join(script.read_text(encoding="utf-8", errors="replace")
                                    for folder in ("tools", "evals")
                                    for script in sorted((project_root / folder).glob("*.py")))
            if path.parent.is_dir() and path.name and path.name in scripts:
                continue
            briefing.problems.append(Problem(
                item.line, f"{SECTION_TITLES[item.section]} item names {token}, which does not "
                           f"exist; it is copied into {PROMOTED_TO[item.section]}, which "
                           "stale_reference_test scans, so the next cycle would fail: name only "
                           "paths that exist (describe the missing one in words)", "warning"))


def format_problems(briefing: Briefing, display: str) -> list[str]:
    out = []
    for kind, problems in (("error", briefing.errors), ("warning", briefing.warnings)):
        for problem in sorted(problems, key=lambda p: (p.line or 0)):
            where = f"{display}:{problem.line}" if problem.line else display
            out.append(f"{where}: {kind}: {problem.message}")
    if len(out) > MAX_PRINTED_PROBLEMS:
        out = out[:MAX_PRINTED_PROBLEMS] + [f"{display}: ... and {len(out) - MAX_PRINTED_PROBLEMS} "
                                            "more problems"]
    return out


# --- the rule check (rules are only ever read) ---------------------------------------------------
@dataclass
class RuleClause:
    kind: str                     # "forbid" or "require"
    tokens: frozenset
    text: str


@dataclass
class Rule:
    number: str                   # "1".."n" for session-learnings.md, "never-k" for the contract
    text: str
    clauses: list[RuleClause] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.number.startswith("never-"):
            return f"contract rule {self.number}"
        return f"CRITICAL rule {self.number}"


STOPWORDS = frozenset("""
a an the and or but if then than so of to in on at by for from with into onto over under as is
are was were be been being it its this that these those there here we you they he she i our your
their us them do does did done has have had having can could should would will shall may might
must also only just very more most less same each every any all some such via per about after
before when while which who whom what where why how one two e g eg ie etc both re up out off
always never not no nor without cannot avoid forbid forbids forbidden prohibit prohibited
need needs needed want wants let lets let's ok okay fine safe safely better allowed instead
rather whenever whatever anything something everything own really
py md txt json jsonl toml yaml yml sh ps1 cfg ini csv tsv html
""".split())
# Words that make a clause a directive with negative polarity ("never X", "do not X", ...).
NEGATORS = frozenset("""never avoid avoids forbid forbids forbidden forbade prohibit prohibits
prohibited skip disable exclude omit ignore""".split())
MODALS = frozenset("must may should can could would need shall".split())
DIRECTIVE_MODALS = frozenset("must may should need shall".split())
# Phrases that make a finding or learning a proposal.
PROPOSAL_WORDS = frozenset("should must always never recommend recommended ought can may".split())
PROPOSAL_PHRASES = ("do not", "need to", "needs to", "have to", "has to", "let s", "lets ",
                    "is safe", "is fine", "is ok", "is okay", "safe to", "fine to", "ok to",
                    "better to", "can safely", "is allowed", "no need", "turn off", "switch off")
# Imperative verbs (an item or rule clause led by one of these proposes or requires an action).
VERBS = frozenset("""
add amend append archive ask average back bump cache caption change check clean clear close
commit compare copy count create cut delete deploy disable document downgrade drop edit enable
encode fix force free generate grade install judge keep launch leave let load lower make measure
merge move open pin point prefer push put raise read rebase record reduce reencode reinstall
remove rename replace report rerun reset restart resume retry revert review rewrite roll run
save score set ship shuffle skip sort split squash start state stop store switch terminate test
train try tune turn uninstall update upgrade use validate verify write
""".split())
SYNONYMS = {"twice": "again", "retry": "again", "retri": "again", "second": "again",
            "rerun": "again", "repeat": "again", "origin": "git", "remot": "git",
            "upstream": "git", "found": "detect", "mean": "averag", "past": "writ",
            "put": "writ", "stor": "writ", "truncat": "delet", "wip": "delet", "eras": "delet",
            "purg": "delet", "remov": "delet"}
CONTRAST = re.compile(r", not | instead of | rather than | without (?=[a-z]{2,30}ing\b)")
# A purpose or reason ("..., so that git status lists only what changed", "because ...") states
# a goal or a fact, not the action: it is a clause of its own, and proposes only with a
# directive of its own (STRONG_PROPOSAL).
PURPOSE = re.compile(r",? (?:so that|so|because|since) (?=[a-z])", re.IGNORECASE)
STRONG_PROPOSAL = frozenset("should must always never ought".split())
STRONG_PHRASES = ("do not", "need to", "needs to", "have to", "has to")
PRONOUNS = frozenset(("it", "them", "this", "these"))


def stem(token: str) -> str:
    for suffix in ("ing", "ure", "ed", "es", "s"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3 and not token.endswith("ss"):
            token = token[:-len(suffix)]
            break
    if token.endswith("e") and len(token) > 3:
        token = token[:-1]
    return SYNONYMS.get(token, token)


# Latin look-alikes in Cyrillic and Greek (lower case), for the rule check only: "рush" with a
# Cyrillic er must still read as "push". A small table of the letters that look the same in
# common fonts, not Unicode's whole confusables list.
LOOKALIKES = str.maketrans("\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455"
                           "\u04bb\u0501\u051b\u051d\u03bf\u03b1\u03bd\u03c1\u03b9\u03ba",
                           "aeopcyxijshdqwoavpik")


def rule_text(text: str) -> str:
    """text as the rule check reads it: compatibility forms folded (fullwidth letters), combining
    and other invisible marks dropped (U+034F, U+17B4), look-alike letters made Latin."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    kept = "".join(char for char in decomposed
                   if unicodedata.category(char) not in ("Mn", "Me", "Cf"))
    return unicodedata.normalize("NFKC", kept).translate(LOOKALIKES)


def words(text: str) -> list[str]:
    text = rule_text(strip_markup(text)).replace("`", " ")
    text = text.replace("can't", "cannot").replace("can\u2019t", "cannot")
    text = re.sub(r"n['\u2019]t\b", " not", text)
    text = re.sub(r"\bre-(?=[a-z])", "re", text)
    return re.findall(r"[a-z0-9]+", text)


def content_tokens(word_list: list[str]) -> frozenset:
    return frozenset(stem(word) for word in word_list
                     if word not in STOPWORDS and word not in NEGATORS and len(word) > 1
                     and not word.isdigit())


def is_negative(word_list: list[str]) -> bool:
    """A directive negation: never / avoid / skip / forbid / disable / exclude / omit / ignore,
    must (should, may, need) not, a leading `do not`, `no ... <modal>`, `no need`, `turn off`,
    `leave ... out`, `leave ... to` (someone else)."""
    leading = [w for w in word_list[:4] if w not in ("always", "please", "then", "also", "just")]
    if leading[:2] == ["do", "not"]:
        return True
    for position, word in enumerate(word_list):
        if word in NEGATORS:
            return True
        if word == "not" and position and word_list[position - 1] in DIRECTIVE_MODALS:
            return True
        if word == "no" and any(w in MODALS for w in word_list[position + 1:position + 4]):
            return True
        if word == "no" and word_list[position + 1:position + 2] == ["need"]:
            return True
        if word in ("turn", "switch") and word_list[position + 1:position + 2] == ["off"]:
            return True
        if word == "leave" and ("out" in word_list[position + 2:position + 8]
                                or "to" in word_list[position + 2:position + 6]):
            return True                  # "leave X out", "leave X to the human"
    return False


def is_imperative(word_list: list[str]) -> bool:
    """Led by an imperative verb, in the clause or in one of its comma-separated parts (the
    caller splits at commas); `always`/`please`/`then`/`also`/`just` may come first."""
    rest = [w for w in word_list[:3] if w not in ("always", "please", "then", "also", "just",
                                                   "first", "critical")]
    return bool(rest) and rest[0] in VERBS


def split_clauses(text: str, purpose: bool = False) -> list[tuple[str, bool, bool]]:
    """(clause text, contrast?, subordinate?) pieces: sentences and ; : clauses, then
    `X, not Y` / `X instead of Y` / `X rather than Y` / `X without doing Y` into X and the
    contrasted Y (polarity flipped), and X into its coordinated actions (split_actions). With
    purpose (items, not rules), X is first cut at `so (that)` / `because` / `since`: the part
    after it is subordinate."""
    text = " ".join(text.split())
    for abbreviation, plain in (("e.g.", "eg"), ("i.e.", "ie"), ("etc.", "etc"), ("vs.", "vs")):
        text = text.replace(abbreviation, plain)
    pieces = []
    for sentence in re.split(r"(?<=[.;:!?]) ", text):
        if not sentence.strip():
            continue
        parts = CONTRAST.split(sentence)
        main, *subordinate = PURPOSE.split(parts[0]) if purpose else [parts[0]]
        for action in split_actions(main):
            pieces.append((action, False, False))
        pieces.extend((part, False, True) for part in subordinate if part.strip())
        pieces.extend((part, True, False) for part in parts[1:] if part.strip())
    return pieces


def split_actions(text: str) -> list[str]:
    """`X and Y` (or `X, then Y`, `X and never Y`) where X is an imperative of three words or more
    and Y is led by an imperative verb (or a negated one): two actions. "Stop and ask" stays one.
    `X and <modal> Y` ("... cannot run A and may not start B"): two clauses, each with its own
    polarity."""
    out, start = [], 0
    for match in re.finditer(r"(?:,? and |, then |, )(?=[A-Za-z])", text):
        following = words(text[match.end():match.end() + 40])[:3]
        if match.group().endswith(" and ") and following[:1] and \
                following[0] in MODALS | {"cannot", "will"}:
            out.append(text[start:match.start()])   # "X cannot run A and may not start B"
            start = match.end()
            continue
        if following[:1] == ["never"] or following[:2] == ["do", "not"]:
            following = following[2:] if following[0] == "do" else following[1:]
        left = words(text[start:match.start()])
        if following and following[0] in VERBS and len(left) >= 3 and is_imperative(left):
            out.append(text[start:match.start()])
            start = match.end()
    out.append(text[start:])
    return [part for part in out if part.strip()]


def variants(piece: str) -> list[str]:
    """The clause without its parentheses, then once with each example listed in them:
    "rewrite git history (`rebase`, `commit --amend`)" -> "rewrite git history",
    "rewrite git history rebase", "rewrite git history commit --amend". A parenthesis is a list
    of examples when it holds a comma, " or ", a code span or "e.g."; any other one
    ("(append-only)", "(the CRITICAL rules)") describes and is dropped."""
    outside, examples, depth, current = [], [], 0, []
    for char in piece:
        if char == "(":
            depth += 1
            if depth == 1:
                current = []
                continue
        elif char == ")" and depth:
            depth -= 1
            if depth == 0:
                inner = "".join(current).strip()
                if any(mark in inner for mark in (",", " or ", "`")) or inner.startswith(("eg ", "e.g.")):
                    examples.extend(re.split(r", or |, | or ", inner))
                continue
        (current if depth else outside).append(char)
    main = "".join(outside)
    return [main] + [f"{main} {example}" for example in examples if example.strip()]


def rule_clauses(text: str, headline: bool = False) -> list[RuleClause]:
    """A rule's prohibition and requirement clauses (facts are dropped). With headline, the
    first clause is a requirement even when worded as a fact: it states the rule ("Archived files
    stay archived", "torch and xformers move together")."""
    out: list[RuleClause] = []
    previous: frozenset = frozenset()
    for position, (piece, contrast, _) in enumerate(split_clauses(text)):
        word_list = words(piece)
        tokens = content_tokens(word_list)
        if not tokens:
            continue
        negative = is_negative(word_list) or contrast
        commas = [words(part) for part in piece.split(",")]
        requires = any(is_imperative(part) for part in commas) or bool(
            set(word_list) & {"must", "needs", "need", "wants", "always"}) or (
            headline and position == 0)
        pronoun = bool(set(word_list) & PRONOUNS) and previous
        kind = "forbid" if negative else "require" if requires else None
        for variant in variants(piece) if kind else ():
            variant_tokens = content_tokens(words(variant))
            if pronoun:
                variant_tokens = variant_tokens | previous   # "never rewrite, sort or delete it"
            if len(variant_tokens) >= 2:                     # one word is too weak a frame
                out.append(RuleClause(kind, variant_tokens, piece))
        previous = tokens
    return out


def read_rules_text(path: Path) -> str:
    """A rules file's text, opened read-only and read up to MAX_RULES_BYTES."""
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        return handle.read(MAX_RULES_BYTES)


def load_rules(path: Path) -> list[Rule]:
    """Numbered list items of session-learnings.md, continuation lines joined. Opened read-only."""
    rules: list[Rule] = []
    current: Rule | None = None
    for line in split_lines(read_rules_text(path)):
        line = line[:MAX_LINE_CHARS]
        numbered = NUMBERED_RULE.match(line)
        if numbered:
            current = Rule(numbered.group(1), line[numbered.end():].strip())
            rules.append(current)
        elif current is not None and line.strip() and line.startswith((" ", "\t")) \
                and not parse_bullet(line):
            current.text += " " + line.strip()
        else:
            current = None
    for rule in rules:
        rule.text = clean(critical_mark(strip_markup(rule.text))[1]).strip()
        rule.clauses = rule_clauses(rule.text, headline=True)
    return rules


def load_never_list(path: Path) -> list[Rule]:
    """The bullets under the contract's `Never, whatever ...:` line, as rules never-1, never-2,
    ...: each bullet's first clause (and every `, or` alternative) is a prohibition."""
    rules: list[Rule] = []
    inside = False
    for line in split_lines(read_rules_text(path)):
        line = line[:MAX_LINE_CHARS]
        stripped = line.strip()
        if not inside:
            inside = stripped.startswith("Never") and stripped.endswith(":")
            continue
        bullet = parse_bullet(line)
        if bullet and bullet.indent == 0:
            rules.append(Rule(f"never-{len(rules) + 1}", bullet.text.strip()))
        elif rules and stripped and line.startswith((" ", "\t")):
            rules[-1].text += " " + stripped
        elif stripped or rules:
            break
    for rule in rules:
        rule.text = clean(rule.text)
        head, _, tail = rule.text.partition(": ")
        for alternative in re.split(r", or |; or ", head.rstrip(";.")):
            for variant in variants(alternative):
                tokens = content_tokens(words(variant))
                if len(tokens) >= 2:
                    rule.clauses.append(RuleClause("forbid", tokens, alternative))
        for piece in rule_clauses(tail) if tail else []:
            rule.clauses.append(piece)
    return rules


def idf_weights(rules: list[Rule]) -> dict[str, float]:
    clauses = [clause for rule in rules for clause in rule.clauses]
    counts: dict[str, int] = {}
    for clause in clauses:
        for token in clause.tokens:
            counts[token] = counts.get(token, 0) + 1
    total = max(len(clauses), 1)
    return {token: 1.0 + math.log(total / count) for token, count in counts.items()}


def item_clauses(text: str, section: str) -> list[tuple[frozenset, bool]]:
    """(tokens, negative?) of each clause of an item that proposes an action: in Action items,
    Needs human decision and Critical candidates the first clause; in those and Learnings a
    clause led by an imperative verb, holding a proposal word or phrase, or contrasted
    (", not ..."); a purpose or reason clause ("so that ...", "because ...") only with a directive
    of its own (should, must, always, never, do not, ...). Findings and Failures: none."""
    out = []
    if section not in PROPOSING_SECTIONS:
        return out
    always_proposal = section in ("action_items", "decisions", "critical")
    previous: frozenset = frozenset()
    for position, (piece, contrast, subordinate) in enumerate(split_clauses(text, purpose=True)):
        word_list = words(piece)
        tokens = content_tokens(word_list)
        if not tokens:
            continue
        if set(word_list) & PRONOUNS:
            tokens = tokens | previous           # "... and never rewrite it"
        previous = tokens
        joined = " ".join(word_list) + " "
        if subordinate:
            if set(word_list) & STRONG_PROPOSAL or any(p in joined for p in STRONG_PHRASES):
                out.append((tokens, is_negative(word_list)))
            continue
        # In a proposing section the first clause proposes; a later one ("; it only costs time")
        # only when it is itself a directive.
        proposal = ((always_proposal and position == 0) or contrast
                    or bool(set(word_list) & PROPOSAL_WORDS)
                    or any(phrase in joined for phrase in PROPOSAL_PHRASES)
                    or any(is_imperative(words(part)) for part in piece.split(",")))
        if proposal:
            out.append((tokens, is_negative(word_list) != contrast))
    return out


def coverage(tokens: frozenset, clause: RuleClause, weights: dict[str, float]) -> float:
    """IDF-weighted cosine of the two token sets (binary term weights); tokens no rule has
    weigh 1."""
    shared = clause.tokens & tokens
    if len(shared) < 2:
        return 0.0
    def norm(group):
        return math.sqrt(sum(weights.get(token, 1.0) ** 2 for token in group))
    total = norm(tokens) * norm(clause.tokens)
    return sum(weights.get(token, 1.0) ** 2 for token in shared) / total if total else 0.0


def rule_relation(text: str, rules: list[Rule], section: str = "action_items",
                  weights: dict[str, float] | None = None) -> str | None:
    """'contradicts <rule> ...' when the item proposes an action the rule forbids (or the
    opposite of one it requires), else None. See "Rule check" in the module docstring."""
    weights = weights if weights is not None else idf_weights(rules)
    clauses = item_clauses(text, section)
    if not clauses:
        return None
    applicable = [rule for rule in rules
                  if not (section == "decisions" and rule.number.startswith("never-"))]
    # A clause's best agreement with any rule: a contradiction must explain it better.
    agree_any = [max((coverage(tokens, clause, weights) for rule in applicable
                      for clause in rule.clauses if negative == (clause.kind == "forbid")),
                     default=0.0) for tokens, negative in clauses]
    best = None
    for rule in applicable:
        # Per item clause: its best opposite-polarity match (C) and same-polarity match (A).
        scored = []
        for tokens, negative in clauses:
            contra, agree, contra_clause = 0.0, 0.0, None
            for clause in rule.clauses:
                score = coverage(tokens, clause, weights)
                if negative != (clause.kind == "forbid"):
                    if score > contra:
                        contra, contra_clause = score, clause
                elif score > agree:
                    agree = score
            scored.append((contra, agree, contra_clause, tokens))
        for index, (contra, agree, contra_clause, tokens) in enumerate(scored):
            # The clause matches the rule's opposite better than the rule itself, and no other
            # clause of the item agrees with the rule nearly as well.
            elsewhere = max((other[1] for position, other in enumerate(scored) if position != index),
                            default=0.0)
            if contra < CONTRADICT_COVERAGE or contra <= agree_any[index] \
                    or contra - elsewhere < AGREE_MARGIN:
                continue
            if best is None or contra > best[0]:
                shared = ", ".join(sorted(contra_clause.tokens & tokens))
                verb = "forbids" if contra_clause.kind == "forbid" else "requires"
                quoted = contra_clause.text if len(contra_clause.text) <= 100 \
                    else contra_clause.text[:97] + "..."
                best = (contra, f"contradicts {rule.label}, which {verb}: \"{quoted}\" (shared "
                                f"words: {shared}; similarity {contra:.2f}, agreement "
                                f"{max(agree, elsewhere):.2f})")
    return best[1] if best else None


def find_candidates(briefing: Briefing, rules: list[Rule]) -> list[Candidate]:
    weights = idf_weights(rules)
    candidates = []
    for item in briefing.items:
        reasons = []
        if item.section == "critical":
            reasons.append("listed under Critical candidates")
        elif item.critical:
            reasons.append(f"marked CRITICAL in {SECTION_TITLES[item.section]}")
        relation = rule_relation(item.text, rules, item.section, weights) if rules else None
        if relation:
            reasons.append(relation)
        if reasons:
            candidates.append(Candidate(item.text, "; ".join(reasons), item.line))
    return candidates


def load_all_rules(project_root: Path) -> tuple[list[Rule], list[str]]:
    """The numbered rules and the contract's Never list, with notes about what was missing."""
    notes, rules = [], []
    for relative, loader in ((SESSION_LEARNINGS, load_rules), (CONTRACT, load_never_list)):
        path = project_root / relative
        found = loader(path) if path.is_file() else []
        if not found:
            notes.append(f"no rules read from {relative}; the rule check uses the others")
        rules.extend(found)
    return rules, notes


# --- target files --------------------------------------------------------------------------------
HEADERS = {
    PENDING_TASKS: ("# Pending tasks\nLast updated: {today}\n\n"
                    "Open tasks for the agent and the human. `tools/promote_findings.py` appends the "
                    "Action items of\neach briefing as `- [ ] <task> (source: <briefing file>, added "
                    "YYYY-MM-DD)`. Tick a task with\n`[x]` when done.\n\n## Open\n"),
    MEMORY: ("# Research memory\nLast updated: {today}\n\n"
             "What the research loop has learned, newest last. `tools/promote_findings.py` appends "
             "the\nLearnings of each briefing here as `- YYYY-MM-DD: <learning> (source: <briefing "
             "file>)`.\n\n## Learnings\n"),
    CANDIDATES: ("# CRITICAL-rule candidates (proposals for a human)\n\n"
                 "Written by `tools/promote_findings.py`; never applied automatically. To adopt one, "
                 "edit\n`context/session-learnings.md` by hand, then tick it here (`[x]`); to reject "
                 "it, tick it and say why.\n\n## Proposed\n"),
}
SECTION_FOR = {PENDING_TASKS: r"\b(open|pending|to ?do|backlog|inbox)\b",
               MEMORY: r"\b(learnings?|entries|log)\b",
               CANDIDATES: r"\b(proposed|open|candidates)\b"}


def refuse_link(path: Path) -> None:
    """Raise InputError when path is a symbolic link or a file with more than one hard link:
    the promoter never writes through either (the target could be the rules file)."""
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; the promoter never writes through links. "
                         "Replace it with a regular file")
    try:
        links = path.stat().st_nlink if path.exists() else 1
    except OSError:
        links = 1
    if links > 1:
        raise InputError(f"{path} has {links} hard links; the promoter never writes a file that "
                         "is also reachable under another name. Copy it to a fresh file")


def read_target(path: Path) -> str | None:
    refuse_link(path)
    if not path.exists():
        return None
    if not path.is_file():
        raise InputError(f"{path} is not a file; move it away so it can be written")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start}); fix its encoding "
                         "before promoting") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def existing_entries(text: str | None) -> set[str]:
    """Normalised text of every top-level list item in a target file (any checkbox state)."""
    keys: set[str] = set()
    if not text:
        return keys
    current: list[str] | None = None
    indent = 0
    for line in split_lines(text) + [""]:
        bullet = parse_bullet(line)
        line_indent = len(line) - len(line.lstrip())
        if bullet and (current is None or line_indent <= indent):
            if current is not None:
                keys.add(normalise_item(" ".join(current)))
            current, indent = [bullet.text], line_indent
        elif current is not None and line.strip() and not bullet and line_indent > indent \
                and not parse_atx(line):
            current.append(line.strip())     # a wrapped line of the same entry
        elif current is not None and bullet:
            continue                          # a nested bullet (e.g. "why:") is not the entry
        else:
            if current is not None:
                keys.add(normalise_item(" ".join(current)))
            current = None
    keys.discard("")
    return keys


def insert_entries(old: str | None, entries: list[str], relative: str, today: dt.date) -> str:
    """The file's new text: entries inserted at the end of its target section's own lines (e.g.
    after the last task under "## Open"), or appended; a missing file gets a header first."""
    if old is None:
        old = HEADERS[relative].format(today=today.isoformat())
    newline = "\r\n" if "\r\n" in old else "\n"
    lines = old.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += newline
    for number, line in enumerate(lines[:12]):      # bump "Last updated: YYYY-MM-DD"
        match = LAST_UPDATED.match(line)
        if match:
            lines[number] = LAST_UPDATED.sub(lambda m: m.group(1) + today.isoformat(), line, count=1)
            break

    headings = []
    for number, line in enumerate(lines):
        atx = parse_atx(line.rstrip("\r\n"))
        if atx:
            headings.append((number, atx[0], atx[1]))
    wanted = re.compile(SECTION_FOR[relative], re.IGNORECASE)
    unwanted = re.compile(r"\b(done|closed|completed|archived?|rejected|adopted)\b", re.IGNORECASE)
    matches = [(n, level) for n, level, title in headings
               if wanted.search(title) and not unwanted.search(title)]
    preferred = [m for m in matches if m[1] >= 2] or matches
    if preferred:
        start = preferred[0][0]
        end = next((n for n, _, _ in headings if n > start), len(lines))
        position = start + 1
        for number in range(start + 1, end):
            if lines[number].strip():
                position = number + 1
    else:
        position = len(lines)
    block = [entry + newline for entry in entries]
    previous = lines[position - 1] if position > 0 else ""
    if previous.strip() and not parse_bullet(previous.rstrip("\r\n")) \
            and not parse_atx(previous.rstrip("\r\n")):
        block.insert(0, newline)            # a paragraph above: a list needs a blank line first
    if position < len(lines) and lines[position].strip():
        block.append(newline)               # keep a blank line before what follows
    return "".join(lines[:position] + block + lines[position:])


# Not a copy of evals/scorecard.py:write_atomic on purpose: the files written here are edited by
# people too, so this one keeps the file's mode, refuses links and also fsyncs the folder.
def atomic_write(path: Path, text: str) -> None:
    """Write text (UTF-8, line endings as given, control characters removed) so the file is
    either the old or the new one: a temp file in the same folder, fsync, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    mode = (path.stat().st_mode & 0o777) if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(clean(text).encode("utf-8"))
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):            # make the rename itself durable (POSIX only)
        try:
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(directory)
        except OSError:
            pass
        finally:
            os.close(directory)


def unified_diff(relative: str, old: str | None, new: str) -> str:
    old_lines = (old or "").splitlines(keepends=True)
    new_lines = new.splitlines(keepends=True)
    for lines in (old_lines, new_lines):
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += "\n\\ No newline at end of file\n"
    return "".join(difflib.unified_diff(old_lines, new_lines,
                                        fromfile=f"a/{relative}" if old is not None else "/dev/null",
                                        tofile=f"b/{relative}"))


# --- the lock ------------------------------------------------------------------------------------
class LockTimeout(Exception):
    pass


def _try_lock(descriptor: int) -> bool:
    """Take an exclusive OS lock without waiting; False when another process holds it."""
    if os.name == "nt":
        import msvcrt
        os.lseek(descriptor, 0, os.SEEK_SET)
        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


def _unlock(descriptor: int) -> None:
    if os.name == "nt":
        import msvcrt
        os.lseek(descriptor, 0, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl
        fcntl.flock(descriptor, fcntl.LOCK_UN)


@contextlib.contextmanager
def promote_lock(project_root: Path, timeout: float):
    """Hold autonomous-research/.promote.lock exclusively (fcntl.flock / msvcrt.locking); wait up
    to `timeout` seconds. The lock file is never written; the kernel drops the lock when the
    holder exits or dies, so it cannot go stale."""
    path = project_root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; remove it (the promoter recreates it)")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags, 0o644)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while not _try_lock(descriptor):
            if time.monotonic() >= deadline:
                raise LockTimeout(f"another promote_findings.py has held {path} for more than "
                                  f"{timeout:g} s (--lock-timeout); wait for it to finish and run "
                                  "again")
            if not told:
                print(f"waiting for {LOCK_FILE} (another promoter is running)", file=sys.stderr)
                told = True
            time.sleep(random.uniform(0.01, 0.05))
        try:
            yield
        finally:
            _unlock(descriptor)
    finally:
        os.close(descriptor)


# --- the promotion ---------------------------------------------------------------------------------
def find_newest_briefing(project_root: Path, today: dt.date | None = None
                         ) -> tuple[Path | None, list[str]]:
    """(newest briefing dated today or earlier, by the date in its name; notes about names that
    were skipped, including future-dated ones)."""
    today = today or dt.date.today()
    folder = project_root / RESEARCH_DIR
    notes, dated = [], []
    if folder.is_dir():
        for path in sorted(folder.glob("briefing-*.md")):
            date = briefing_date_from_name(path)
            if date is None:
                notes.append(f"ignored {clean(path.name)}: the name is not briefing-YYYY-MM-DD.md "
                             "with a real date")
            elif date > today:
                notes.append(f"ignored {path.name}: dated after today ({today}); rename or remove "
                             "it")
            elif path.is_file():
                dated.append((date, path))
    return (max(dated)[1] if dated else None), notes


def read_record(text: str | None) -> dict[str, str]:
    """briefing name -> sha256 from promoted-briefings.txt."""
    record = {}
    for line in split_lines(text or ""):
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and parts[1].startswith("sha256="):
            record[parts[0]] = parts[1][len("sha256="):]
    return record


def record_text(old: str | None, name: str, digest: str, today: dt.date, counts: dict) -> str:
    entry = (f"{name} sha256={digest} promoted={today.isoformat()} "
             + " ".join(f"{key}={value}" for key, value in counts.items()))
    lines = split_lines(old) if old else [
        "# Briefings promoted by tools/promote_findings.py: name, sha256 of its bytes, the date it",
        "# was promoted and what it added. Delete a line to let that briefing be promoted again."]
    lines = [line for line in lines if line.split()[:1] != [name]]
    return "\n".join(lines + [entry]) + "\n"


@dataclass
class Plan:
    briefing: Briefing
    changes: dict[str, tuple[str | None, str]]      # relative path -> (old text, new text)
    candidates: list[Candidate]
    counts: dict[str, int]
    skipped_present: int
    notes: list[str]


def plan_promotion(project_root: Path, briefing: Briefing, data: bytes, today: dt.date) -> Plan:
    """Everything the promotion would write, without writing (raises InputError)."""
    name = briefing.path.name
    date = briefing.date.isoformat()
    rules, notes = load_all_rules(project_root)

    tasks = [(item.text, f"- [ ] {item.text} (source: {name}, added {today.isoformat()})")
             for item in briefing.section_items("action_items") if not item.checked]
    tasks += [(f"Decide: {item.text}", f"- [ ] Decide: {item.text} (source: {name}, added "
                                       f"{today.isoformat()})")
              for item in briefing.section_items("decisions")]
    learnings = [(item.text, f"- {date}: {item.text} (source: {name})")
                 for item in briefing.section_items("learnings")]
    candidates = find_candidates(briefing, rules)
    proposals = [(c.text, f"- [ ] {c.text} (source: {name}, proposed {today.isoformat()})\n"
                          f"  - why: {c.why}") for c in candidates]

    changes: dict[str, tuple[str | None, str]] = {}
    counts = {"tasks": 0, "learnings": 0, "candidates": 0}
    skipped = 0
    for relative, wanted, count_key in ((PENDING_TASKS, tasks, "tasks"),
                                        (MEMORY, learnings, "learnings"),
                                        (CANDIDATES, proposals, "candidates")):
        old = read_target(project_root / relative)
        present = existing_entries(old)
        fresh = []
        for key_text, entry in wanted:
            key = normalise_item(key_text)
            if key in present:
                skipped += 1
                continue
            present.add(key)
            fresh.extend(entry.split("\n"))
        counts[count_key] = sum(1 for line in fresh if not line.startswith(" "))
        if fresh:
            changes[relative] = (old, insert_entries(old, fresh, relative, today))
    old_record = read_target(project_root / PROMOTED_RECORD)
    digest = hashlib.sha256(data).hexdigest()
    changes[PROMOTED_RECORD] = (old_record, record_text(old_record, name, digest, today, counts))
    return Plan(briefing, changes, candidates, counts, skipped, notes)


def resolve_input(value: Path, project_root: Path) -> Path:
    """A relative --briefing/--check path: from the current folder if it exists there, else from
    the project root."""
    if value.is_absolute() or value.exists():
        return value
    return project_root / value


def emit(stream, text: str) -> None:
    """Write text without control characters, even where the console encoding lacks a character
    (Windows code pages)."""
    text = clean(text).replace("\r\n", "\n")
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "utf-8"
        stream.write(text.encode(encoding, "replace").decode(encoding))


def say(text: str, stream=None) -> None:
    emit(stream or sys.stdout, text + "\n")


def print_candidates(candidates: list[Candidate], heading: str) -> None:
    if not candidates:
        return
    say(heading)
    for candidate in candidates:
        say(f"  - line {candidate.line}: {candidate.text}\n    why: {candidate.why}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-root", type=Path, default=Path("."),
                        help="repository root holding autonomous-research/ and context/ "
                             "(default: the current folder)")
    parser.add_argument("--briefing", type=Path, metavar="PATH",
                        help="promote this briefing (default: the newest "
                             "autonomous-research/briefing-YYYY-MM-DD.md dated today or earlier)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the diff of what would change and write nothing (default: off)")
    parser.add_argument("--check", nargs="?", type=Path, const=NEWEST, metavar="PATH",
                        help="only validate this briefing against the v3 schema and list the rule "
                             "candidates it would create: exit 0 valid, 1 invalid; writes nothing. "
                             "PATH may also follow the other flags (`--check --strict PATH`); "
                             "without one, the newest briefing dated today or earlier (default: off)")
    parser.add_argument("path", nargs="?", type=Path, metavar="PATH",
                        help="the briefing for --check, when it is not written right after --check")
    parser.add_argument("--strict", action="store_true",
                        help="with --check: every warning and every deviation from the canonical "
                             "schema is an error (the agent's self-check; default: off)")
    parser.add_argument("--today", metavar="YYYY-MM-DD",
                        help="the date written as 'added'/'proposed'/'Last updated', and the latest "
                             "date a briefing may carry (default: today's local date)")
    parser.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT, metavar="S",
                        help="seconds to wait for another promoter's lock "
                             f"(default: {DEFAULT_LOCK_TIMEOUT:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.path is not None:
        if args.check is None:
            parser.error(f"unexpected argument {args.path}: a bare PATH goes with --check; to "
                         "promote a given briefing use --briefing PATH")
        if args.check is not NEWEST:
            parser.error(f"two briefings given to --check ({args.check} and {args.path}); check "
                         "one at a time")
        args.check = args.path
    if args.check is not None and args.briefing is not None:
        parser.error("--check and --briefing cannot be combined: --check validates the file it "
                     "names; --briefing chooses the file to promote")
    if args.check is not None and args.dry_run:
        parser.error("--check and --dry-run cannot be combined: --check never writes anything")
    if args.strict and args.check is None:
        parser.error("--strict works only with --check PATH (the agent's self-check); promotion "
                     "itself stays tolerant")
    if args.lock_timeout < 0:
        parser.error("--lock-timeout must be 0 or more seconds")
    today = dt.date.today()
    if args.today:
        try:
            today = dt.date.fromisoformat(args.today)
        except ValueError:
            parser.error(f"--today {args.today!r} is not a date in the form YYYY-MM-DD")
    if not args.project_root.is_dir():
        parser.error(f"--project-root {args.project_root} is not a folder; pass the repository root")
    root = args.project_root.resolve()

    if args.check is not None:
        return run_check(args, root, today)

    if args.briefing is not None:
        path = resolve_input(args.briefing, root)
        if not path.is_file():
            say(f"error: --briefing {args.briefing}: no such file (or not a regular file)",
                sys.stderr)
            return 2
        display = str(args.briefing)
    else:
        path, notes = find_newest_briefing(root, today)
        for note in notes:
            say(f"warning: {note}", sys.stderr)
        if path is None:
            say(f"error: no briefing found: expected {root / RESEARCH_DIR}/briefing-YYYY-MM-DD.md "
                "dated today or earlier (the research agent writes it; or pass --briefing PATH)",
                sys.stderr)
            return 2
        display = f"{RESEARCH_DIR}/{path.name}"

    try:
        size = path.stat().st_size
        data = b"" if size > MAX_BRIEFING_BYTES else read_briefing_bytes(path)
    except OSError as exc:
        say(f"error: cannot read {path}: {exc}", sys.stderr)
        return 2
    briefing = parse_briefing(path, data if size <= MAX_BRIEFING_BYTES else None, today)
    check_promoted_paths(briefing, root)
    for line in format_problems(briefing, display):
        say(line, sys.stderr)
    if briefing.errors:
        say(f"FAIL {display}: {len(briefing.errors)} schema errors; nothing was promoted. Fix "
            "them (see agents/pistachio-agent-v3.md, 'Output validation') and run again.")
        return 1
    if args.dry_run:
        try:
            return promote(root, briefing, data, today, dry_run=True)
        except InputError as exc:
            say(f"error: {exc}", sys.stderr)
            return 2
    try:
        with promote_lock(root, args.lock_timeout):
            return promote(root, briefing, data, today, dry_run=False)
    except LockTimeout as exc:
        say(f"error: {exc}", sys.stderr)
        return 2
    except InputError as exc:
        say(f"error: {exc}", sys.stderr)
        return 2
    except OSError as exc:
        say(f"error: {exc.filename or 'the lock'}: {exc}", sys.stderr)
        return 2


def run_check(args, root: Path, today: dt.date) -> int:
    if args.check is NEWEST:
        newest, notes = find_newest_briefing(root, today)
        for note in notes:
            say(f"warning: {note}", sys.stderr)
        if newest is None:
            say(f"error: --check: no briefing dated {today} or earlier in {root / RESEARCH_DIR}; "
                "pass its path", sys.stderr)
            return 2
        args.check = Path(RESEARCH_DIR) / newest.name
    path = resolve_input(args.check, root)
    if not path.is_file():
        say(f"error: --check {args.check}: no such file (or not a regular file)", sys.stderr)
        return 2
    try:
        briefing = parse_briefing(path, today=today, strict=args.strict)
    except OSError as exc:
        say(f"error: cannot read {path}: {exc}", sys.stderr)
        return 2
    check_promoted_paths(briefing, root)
    for line in format_problems(briefing, str(args.check)):
        say(line, sys.stderr)
    mode = "strict " if args.strict else ""
    summary = (f"{len(briefing.section_items('action_items'))} action items, "
               f"{len(briefing.section_items('learnings'))} learnings, "
               f"{len(briefing.section_items('findings'))} findings, "
               f"{len(briefing.warnings)} warnings")
    if briefing.errors:
        say(f"FAIL {args.check}: {len(briefing.errors)} {mode}schema errors ({summary}); "
            "see agents/pistachio-agent-v3.md, 'Output validation'")
        return 1
    say(f"PASS {args.check}: valid v3 briefing, {mode or 'tolerant '}check ({summary})")
    rules, _ = load_all_rules(root)
    candidates = find_candidates(briefing, rules)
    if candidates:
        print_candidates(candidates, f"the promoter would propose {len(candidates)} rule "
                                     f"candidate(s) ({CANDIDATES}):")
    else:
        say("the promoter would propose no rule candidates")
    return 0


def promote(root: Path, briefing: Briefing, data: bytes, today: dt.date, dry_run: bool) -> int:
    """Plan and write one promotion; the caller holds the lock unless dry_run. The record check
    runs here, under the lock, so two promoters of one briefing cannot both act on it."""
    name = briefing.path.name
    record = read_record(read_target(root / PROMOTED_RECORD))
    if record.get(name) == hashlib.sha256(data).hexdigest():
        say(f"nothing new: {name} was already promoted (same sha256 in {PROMOTED_RECORD}; delete "
            "its line there to promote it again)")
        return 0
    plan = plan_promotion(root, briefing, data, today)
    for note in plan.notes:
        say(f"note: {note}", sys.stderr)
    for relative, (old, new) in plan.changes.items():
        emit(sys.stdout, unified_diff(relative, old, new))
    print_candidates(plan.candidates, f"Rule candidates for a human ({CANDIDATES}; the rules "
                                      "files are not changed):")
    verb = "would add" if dry_run else "added"
    summary = (f"{verb} {plan.counts['tasks']} tasks, {plan.counts['learnings']} learnings, "
               f"{plan.counts['candidates']} critical candidates from {name}; "
               f"{plan.skipped_present} items were already present")
    if dry_run:
        say(f"dry run: {summary}; nothing written")
        return 0
    for relative in plan.changes:                 # refuse links before writing anything
        refuse_link(root / relative)
    # The record goes last: if anything before it is interrupted, a re-run redoes the
    # (idempotent) rest, so no item is lost or doubled and the briefing is not marked done early.
    try:
        for relative, (_, new) in plan.changes.items():
            atomic_write(root / relative, new)
    except OSError as exc:
        say(f"error: writing {exc.filename or 'a file'} failed: {exc}; every file is either "
            "unchanged or fully written, and the briefing is not recorded as promoted; run again",
            sys.stderr)
        return 2
    say(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
