"""Promote a research briefing: action items to pending tasks, learnings to memory, rules to a human.

Reads the newest `autonomous-research/briefing-YYYY-MM-DD.md` (newest by the date in its name, not
the file time) or the one given with --briefing, checks it against the v3 briefing schema (stated
in agents/pistachio-agent-v3.md, enforced here) and then:
  - Action items          -> autonomous-research/pending-tasks.md (under "## Open"), one line each:
                             `- [ ] <task> (source: briefing-YYYY-MM-DD.md, added YYYY-MM-DD)`
  - Needs human decision  -> the same file, as `- [ ] Decide: <question> (source: ..., added ...)`
  - Learnings             -> autonomous-research/memory.md (under "## Learnings"), one line each:
                             `- YYYY-MM-DD: <learning> (source: briefing-YYYY-MM-DD.md)`
                             (the date is the briefing's date)
  - CRITICAL-rule candidates -> autonomous-research/critical-candidates.md, as proposals for a human,
    and printed. A candidate is an item of the "Critical candidates" section, an item marked
    `CRITICAL:` in any section, or a finding/learning/action item/decision that repeats or
    contradicts a numbered rule of context/session-learnings.md (see "Similarity" below).
    context/session-learnings.md is only ever opened for reading.
  - The briefing's name and sha256 -> autonomous-research/promoted-briefings.txt, so a re-run on
    the same bytes stops at once ("nothing new"). Delete its line there to promote it again.
Items already present (compared as normalised text: case, whitespace, punctuation, checkbox
state, dates and `(source: ...)` annotations ignored) are not added again, so running twice
changes nothing. Every change is printed as a unified diff on stdout; --dry-run prints the same
diff and writes nothing. Each file is written atomically (temp file in the same folder, fsync,
os.replace): an interrupted run leaves every file either old or new. A `Last updated:` line in
pending-tasks.md or memory.md is set to today when entries are added there.

Usage:
    python3 tools/promote_findings.py --project-root .
    python3 tools/promote_findings.py --project-root . --dry-run
    python3 tools/promote_findings.py --project-root . \\
        --briefing autonomous-research/briefing-2026-02-11.md
    python3 tools/promote_findings.py --project-root . \\
        --check autonomous-research/briefing-2026-02-11.md
Tiny CPU run (pure text, no GPU, no network), on the bundled sample in a scratch project:
    mkdir -p /tmp/promote-demo/autonomous-research
    cp tests/data/briefing-sample-v3.md /tmp/promote-demo/autonomous-research/briefing-2026-02-11.md
    python3 tools/promote_findings.py --project-root /tmp/promote-demo --dry-run

Tolerant parsing: headings of any level (`#`..`######`, setext, or a line that is only
`**Action items**`), any case, common synonyms ("Next steps", "Lessons learned", ...); bullets
`-`, `*`, `+`, `1.`, `1)`, with or without `[ ]`/`[x]`; wrapped and nested lines join their item;
trailing spaces, CRLF or CR line endings, a UTF-8 BOM. A missing section is a warning on stderr,
not an error. Errors (exit 1, each as `path:line: error: ...` on stderr): the file name is not
briefing-YYYY-MM-DD.md; no `Date:` field or one that differs from the name; `Status:` or
`Stop reason:` missing or outside its vocabulary, or not matching each other; no recognised
section; an item without `(source: ...)`; an impossible calendar date.

Similarity (for "repeats"/"contradicts" a CRITICAL rule): each rule of session-learnings.md (a
numbered list item, `**CRITICAL:**` stripped) is split into sentences. Text becomes content tokens:
lowercase [a-z0-9] runs, n't -> not, a small stopword list removed, a crude suffix strip
(-ing, -ed, -es, -s, then a final -e). Negation words (no, not, never, without, avoid, forbid,
reject, fail, disable, ...) are taken out of the token set and set the polarity (odd count =
negative). overlap = |A & B| / min(|A|, |B|) over the content tokens, needing at least
MIN_SHARED_TOKENS shared. A repeat: overlap >= REPEAT_OVERLAP with the same polarity. A
contradiction: overlap >= CONTRADICT_OVERLAP with opposite polarity. Flagged items are still
promoted to their own file as usual; the candidate is an extra proposal for a human.

Exit codes: 0 promoted or nothing new (also: --check found the briefing valid), 1 the briefing
fails the v3 schema (every problem printed with its line), 2 usage or input error (bad flags, no
project root, no briefing found, a target file that is not UTF-8 text).
Not safe to run twice at the same time on one project (tools/run_full_cycle.py holds a lock).
"""
from __future__ import annotations

import argparse
import datetime as dt
import difflib
import hashlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

RESEARCH_DIR = "autonomous-research"
PENDING_TASKS = f"{RESEARCH_DIR}/pending-tasks.md"
MEMORY = f"{RESEARCH_DIR}/memory.md"
CANDIDATES = f"{RESEARCH_DIR}/critical-candidates.md"
PROMOTED_RECORD = f"{RESEARCH_DIR}/promoted-briefings.txt"
SESSION_LEARNINGS = "context/session-learnings.md"
BRIEFING_NAME = re.compile(r"^briefing-(\d{4}-\d{2}-\d{2})\.md$")

# Similarity thresholds, documented in the module docstring and in agents/pistachio-agent-v3.md.
REPEAT_OVERLAP = 0.8
CONTRADICT_OVERLAP = 0.8
MIN_SHARED_TOKENS = 3

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
# Free-text sections: accepted silently, not parsed. "run" holds the header fields if the agent
# puts them under a heading instead of above the first section.
FREE_SECTIONS = ("notes", "sources", "references", "appendix", "details")
HEADER_SECTIONS = ("run", "metadata", "run info", "header")

STATUS_REASONS = {
    "completed": ("goal-met", "nothing-new"),
    "stopped": ("budget-time", "budget-tool-calls", "budget-money", "needs-human"),
    "failed": ("preflight-failed", "repeated-failure"),
}
STOP_REASONS = tuple(reason for reasons in STATUS_REASONS.values() for reason in reasons)
REQUIRED_FIELDS = ("date", "status", "stop reason")
RECOMMENDED_FIELDS = ("agent", "previous briefing", "budget used")

EMPTY_ITEM = re.compile(
    r"^(?:none|n/?a|nothing|nothing new|nothing to report|"
    r"no (?:action items|actions|tasks|learnings|findings|failures|decisions|questions|"
    r"critical candidates|candidates))\.?$", re.IGNORECASE)
CRITICAL_MARK = re.compile(r"^\s*(?:\[critical\]|critical\s*[:!\-\u2013\u2014])\s*", re.IGNORECASE)
ISO_DATE = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d-])")
HEADING_ATX = re.compile(r"^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)\s*$")
BOLD_LINE = re.compile(r"^\s*(?:\*\*|__)(.+?)(?:\*\*|__)\s*:?\s*$")
BULLET = re.compile(r"^(\s*)(?:[-*+]|\d{1,3}[.)])(?:\s+|$)(?:\[([ xX~\-])\](?:\s+|$))?(.*)$")
FENCE = re.compile(r"^\s*(```|~~~)")
FIELD = re.compile(r"^\s*(?:[-*+]\s+)?([A-Za-z][A-Za-z _-]{0,30}?)\s*:\s*(.*?)\s*$")
LAST_UPDATED = re.compile(r"^(\W*last updated\W*)(\d{4}-\d{2}-\d{2})", re.IGNORECASE)

STOPWORDS = frozenset("""
a an the and or but if then than so of to in on at by for from with into onto over under as is
are was were be been being it its this that these those there here we you they he she i our your
their us them do does did done has have had having can could should would will shall may might
must also only just very more most less same each every any all some such via per about after
before when while which who whom what where why how one two e g eg ie etc both
""".split())
NEGATIONS = frozenset("""
no not never without cannot nor none avoid avoids avoided forbid forbids forbidden forbade
reject rejects rejected fail fails failed disable disables disabled unsafe prevent prevents
""".split())


class InputError(Exception):
    """An exit-2 situation (no briefing, a target file that cannot be read); one clear line."""


@dataclass
class Problem:
    line: int | None
    message: str


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
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def section_items(self, key: str) -> list[Item]:
        return [item for item in self.items if item.section == key]


@dataclass
class Rule:
    number: str
    text: str


@dataclass
class Candidate:
    text: str
    why: str
    line: int


# --- small text helpers --------------------------------------------------------------------------
def split_lines(text: str) -> list[str]:
    """Lines without their endings; CRLF, CR and LF all end a line (unlike str.splitlines, no
    other control character does, so line numbers match what an editor shows)."""
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def strip_markup(text: str) -> str:
    """Remove emphasis markers and surrounding whitespace (keeps backticks and the words)."""
    return re.sub(r"(\*\*|__)", "", text).strip()


def normalise_heading(text: str) -> str:
    text = strip_markup(text).lower()
    text = re.sub(r"\([^)]*\)", " ", text)                 # "Action items (for the human)"
    text = re.sub(r"^\s*(?:\d+[.)]|[ivx]+\.)\s+", "", text)  # "2. Findings", "ii. Findings"
    text = re.sub(r"[^a-z0-9]+", " ", text)
    return text.strip()


def classify_heading(text: str) -> str | None:
    """Section key for a heading, 'free'/'header' for accepted free-text headings, or None."""
    heading = normalise_heading(text)
    if not heading:
        return None
    for key in SECTION_MATCH_ORDER:
        for synonym in SECTIONS[key]:
            if heading == synonym or heading.startswith(synonym + " "):
                return key
    if heading in HEADER_SECTIONS:
        return "header"
    if any(heading == name or heading.startswith(name + " ") for name in FREE_SECTIONS):
        return "free"
    return None


def extract_sources(text: str) -> tuple[str, list[str]]:
    """Remove every `(source: ...)` / `[sources: ...]` group (one nesting level of brackets
    allowed inside) and return (text without them, the sources). A bare trailing
    `source: X` after a dash or semicolon also counts."""
    sources: list[str] = []
    out = []
    index = 0
    pattern = re.compile(r"[(\[]\s*sources?\s*:", re.IGNORECASE)
    while True:
        match = pattern.search(text, index)
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
        index = end + 1
    remaining = "".join(out)
    bare = re.search(r"(?:^|\s[-\u2013\u2014;]\s*|;\s*)sources?\s*:\s*(.+)$", remaining,
                     re.IGNORECASE)
    if bare:
        sources.append(bare.group(1).strip())
        remaining = remaining[:bare.start()]
    remaining = re.sub(r"\s+", " ", remaining).strip()
    remaining = re.sub(r"\s+([.,;:!?])(?=\s|$)", r"\1", remaining)
    return remaining, sources


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


def normalise_item(text: str) -> str:
    """The text two entries are compared by: markup, source/added/proposed annotations, a
    leading date, a CRITICAL marker, case, punctuation and whitespace do not count."""
    text = strip_markup(text)
    text, _ = extract_sources(text)
    text = strip_annotations(text)
    text = re.sub(r"^\s*\d{4}-\d{2}-\d{2}\s*[:\u2013\u2014-]\s*", "", text)
    text = CRITICAL_MARK.sub("", text)
    text = text.lower()
    text = re.sub(r"[^\w\s]|_", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def stem(token: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3 and not token.endswith("ss"):
            token = token[:-len(suffix)]
            break
    if token.endswith("e") and len(token) > 3:
        token = token[:-1]
    return token


def tokens_and_polarity(text: str) -> tuple[frozenset[str], bool]:
    """(content tokens, negative?) as described under "Similarity" in the module docstring."""
    text = strip_markup(text).lower().replace("`", " ")
    text = re.sub(r"n['\u2019]t\b", " not", text)
    words = re.findall(r"[a-z0-9]+", text)
    negations = sum(1 for word in words if word in NEGATIONS)
    content = frozenset(stem(word) for word in words
                        if word not in NEGATIONS and word not in STOPWORDS and len(word) > 1)
    return content, negations % 2 == 1


def overlap(a: frozenset[str], b: frozenset[str]) -> tuple[float, int]:
    if not a or not b:
        return 0.0, 0
    shared = len(a & b)
    return shared / min(len(a), len(b)), shared


# --- the briefing parser -------------------------------------------------------------------------
def briefing_date_from_name(path: Path) -> dt.date | None:
    match = BRIEFING_NAME.match(path.name)
    if not match:
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


def parse_briefing(path: Path, data: bytes | None = None) -> Briefing:
    """Parse and validate one briefing file; problems land in .errors / .warnings."""
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    briefing = Briefing(path=path, date=briefing_date_from_name(path))
    if briefing.date is None:
        briefing.errors.append(Problem(None, f"file name {path.name!r} is not "
                                             "briefing-YYYY-MM-DD.md with a real date"))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        briefing.errors.append(Problem(None, f"not UTF-8 text (byte {exc.start}); save it as UTF-8"))
        return briefing
    lines = split_lines(text)

    section: str | None = None       # None = the preamble before the first heading
    current: dict | None = None      # the item being collected
    in_fence = False
    in_comment = False
    summary_lines: list[str] = []
    raw_items: list[dict] = []

    def close_item() -> None:
        nonlocal current
        if current is not None:
            raw_items.append(current)
            current = None

    def take_heading(title: str, number: int, level: int) -> None:
        nonlocal section
        close_item()
        key = classify_heading(title)
        if key in SECTIONS:
            if key in briefing.sections:
                briefing.warnings.append(Problem(number, f"second {SECTION_TITLES[key]!r} section; "
                                                         "its items are merged with the first"))
            else:
                briefing.sections[key] = number
            section = key
        elif key in ("free", "header"):
            section = key
        elif level == 1:
            section = "title"
        else:
            briefing.warnings.append(Problem(number, f"unknown section {title.strip()!r} ignored "
                                                     "(see the v3 schema for section names)"))
            section = "unknown"

    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].rstrip()
        index += 1
        if in_comment:
            if "-->" in line:
                in_comment = False
            continue
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.lstrip().startswith("<!--"):
            if "-->" not in line:
                in_comment = True
            continue
        atx = HEADING_ATX.match(line)
        if atx:
            take_heading(atx.group(2) or "", number, len(atx.group(1)))
            continue
        # Setext heading: a plain text line underlined with === or --- (not a list item).
        if (line.strip() and index < len(lines) and SETEXT_UNDERLINE.match(lines[index])
                and not BULLET.match(line) and (current is None or current["blank_after"])):
            take_heading(line, number, 1 if "=" in lines[index] else 2)
            index += 1
            continue
        bold = BOLD_LINE.match(line)
        if bold and classify_heading(bold.group(1)) in SECTIONS:
            take_heading(bold.group(1), number, 2)
            continue
        plain = re.match(r"^\s*([A-Za-z][A-Za-z ]{2,40}):\s*$", line)
        if plain and classify_heading(plain.group(1)) in SECTIONS:
            take_heading(plain.group(1), number, 2)
            continue

        if not line.strip():
            if current is not None:
                current["blank_after"] = True
            continue

        if section in (None, "title", "header"):
            match = FIELD.match(strip_markup(line))
            if match:
                key = re.sub(r"[\s_-]+", " ", match.group(1).strip().lower())
                if key in REQUIRED_FIELDS + RECOMMENDED_FIELDS and key not in briefing.fields:
                    briefing.fields[key] = (strip_markup(match.group(2)), number)
            continue
        if section == "summary":
            summary_lines.append(line.strip())
            continue
        if section not in ITEM_SECTIONS:
            continue

        bullet = BULLET.match(line)
        indent = len(line) - len(line.lstrip())
        if bullet and (current is None or indent <= current["indent"]):
            close_item()
            current = {"section": section, "line": number, "indent": indent,
                       "parts": [bullet.group(3).strip()], "checked": (bullet.group(2) or " ") in "xX",
                       "blank_after": False}
        elif current is not None and (indent > current["indent"] or not current["blank_after"]):
            # A wrapped line or a nested bullet: it belongs to the item above.
            part = bullet.group(3).strip() if bullet else line.strip()
            joiner = "; " if bullet else " "
            current["parts"].append((joiner, part))
            current["blank_after"] = False
        else:
            close_item()
            briefing.warnings.append(Problem(number, f"text outside a list item in "
                                                     f"{SECTION_TITLES[section]!r} ignored: "
                                                     f"{line.strip()[:60]!r}"))
    close_item()
    if in_fence:
        briefing.warnings.append(Problem(None, "a ``` code fence is never closed; the text after it "
                                               "was ignored"))

    for raw in raw_items:
        text = raw["parts"][0]
        for joiner, part in raw["parts"][1:]:
            text = f"{text}{joiner}{part}" if text else part
        text = strip_markup(text)
        body, sources = extract_sources(text)
        critical = bool(CRITICAL_MARK.match(body))
        body = CRITICAL_MARK.sub("", body).strip()
        if not body or EMPTY_ITEM.match(body):
            continue
        briefing.items.append(Item(section=raw["section"], text=body, sources=sources,
                                   line=raw["line"], checked=raw["checked"], critical=critical))
    briefing.summary = " ".join(summary_lines).strip()
    validate(briefing, lines)
    return briefing


def validate(briefing: Briefing, lines: list[str]) -> None:
    """Apply the v3 schema rules to a parsed briefing (errors block promotion; warnings don't)."""
    fields = briefing.fields
    errors, warnings = briefing.errors, briefing.warnings

    if "date" not in fields:
        errors.append(Problem(None, "no 'Date: YYYY-MM-DD' field above the first section"))
    else:
        value, number = fields["date"]
        try:
            stated = dt.date.fromisoformat(value.split()[0] if value else "")
        except ValueError:
            errors.append(Problem(number, f"Date {value!r} is not YYYY-MM-DD"))
        else:
            if briefing.date and stated != briefing.date:
                errors.append(Problem(number, f"Date {stated} differs from the date in the file "
                                              f"name ({briefing.date}); they must match"))

    status = None
    if "status" not in fields:
        errors.append(Problem(None, "no 'Status:' field (one of: " + ", ".join(STATUS_REASONS) + ")"))
    else:
        value, number = fields["status"]
        status = value.split()[0].strip(".,;").lower() if value else ""
        if status not in STATUS_REASONS:
            errors.append(Problem(number, f"Status {value!r} is not one of: "
                                          + ", ".join(STATUS_REASONS)))
            status = None
    reason = None
    if "stop reason" not in fields:
        errors.append(Problem(None, "no 'Stop reason:' field (one of: " + ", ".join(STOP_REASONS) + ")"))
    else:
        value, number = fields["stop reason"]
        reason = (re.split(r"[\s,;:(]", value.strip(), maxsplit=1)[0].strip(".").lower()
                  if value else "")
        if reason not in STOP_REASONS:
            errors.append(Problem(number, f"Stop reason {value!r} does not start with one of: "
                                          + ", ".join(STOP_REASONS)))
            reason = None
    if status and reason and reason not in STATUS_REASONS[status]:
        errors.append(Problem(fields["stop reason"][1],
                              f"Stop reason {reason!r} does not go with Status {status!r} "
                              f"(allowed: {', '.join(STATUS_REASONS[status])})"))
    for name in RECOMMENDED_FIELDS:
        if name not in fields:
            warnings.append(Problem(None, f"no '{name.capitalize()}:' field"))
    if "previous briefing" in fields and briefing.date:
        value, number = fields["previous briefing"]
        previous = BRIEFING_NAME.match(Path(value.strip().strip("`")).name) if value else None
        if value.strip().lower() != "none" and (
                not previous or previous.group(1) >= briefing.date.isoformat()):
            warnings.append(Problem(number, f"Previous briefing {value!r} should be 'none' or an "
                                            "earlier briefing-YYYY-MM-DD.md"))

    if not briefing.sections:
        errors.append(Problem(None, "no recognised section (expected: "
                                    + ", ".join(SECTION_TITLES.values()) + ")"))
    else:
        for key, title in SECTION_TITLES.items():
            if key not in briefing.sections:
                consequence = {"action_items": "; nothing goes to pending-tasks.md",
                               "learnings": "; nothing goes to memory.md"}.get(key, "")
                warnings.append(Problem(None, f"no {title!r} section{consequence}"))
    if "summary" in briefing.sections and not briefing.summary:
        warnings.append(Problem(briefing.sections["summary"], "the Summary section is empty"))
    if reason == "needs-human" and not briefing.section_items("decisions"):
        warnings.append(Problem(fields["stop reason"][1], "Stop reason needs-human but the "
                                                          "'Needs human decision' section is empty"))

    for item in briefing.items:
        if not item.sources or not all(item.sources):
            errors.append(Problem(item.line, f"{SECTION_TITLES[item.section]} item has no "
                                             f"'(source: ...)': {item.text[:70]!r}"))
        if item.section == "action_items" and item.checked:
            warnings.append(Problem(item.line, "action item is ticked ([x]); it is not promoted"))

    for number, line in enumerate(lines, start=1):
        for match in ISO_DATE.finditer(line):
            try:
                dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
            except ValueError:
                errors.append(Problem(number, f"{match.group(0)} is not a real calendar date"))


def format_problems(briefing: Briefing, display: str) -> list[str]:
    out = []
    for kind, problems in (("error", briefing.errors), ("warning", briefing.warnings)):
        for problem in sorted(problems, key=lambda p: (p.line or 0)):
            where = f"{display}:{problem.line}" if problem.line else display
            out.append(f"{where}: {kind}: {problem.message}")
    return out


# --- CRITICAL rules (read only) ------------------------------------------------------------------
def load_rules(path: Path) -> list[Rule]:
    """Numbered list items of session-learnings.md, continuation lines joined. Opened read-only."""
    rules: list[Rule] = []
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    current: Rule | None = None
    for line in split_lines(text):
        numbered = re.match(r"^\s{0,3}(\d+)[.)]\s+(.*)$", line)
        if numbered:
            current = Rule(numbered.group(1), numbered.group(2).strip())
            rules.append(current)
        elif current is not None and line.strip() and line.startswith((" ", "\t")) \
                and not BULLET.match(line):
            current.text += " " + line.strip()
        else:
            current = None
    for rule in rules:
        rule.text = CRITICAL_MARK.sub("", strip_markup(rule.text)).strip()
    return rules


def clauses(text: str) -> list[str]:
    """Sentences and colon/semicolon clauses: polarity is judged per clause, so "X, not Y: Z
    without W" is not read as one double negative."""
    return [part for part in re.split(r"(?<=[.;:!?])\s+", text) if part.strip()]


def rule_relation(text: str, rules: list[Rule]) -> str | None:
    """'repeats CRITICAL rule N (...)' or 'contradicts CRITICAL rule N (...)' for the best-matching
    pair of (item clause, rule clause), or None. On a tie, a contradiction wins."""
    item_clauses = [tokens_and_polarity(part) for part in clauses(text)]
    best: tuple[float, int, str] | None = None
    for rule in rules:
        for sentence in clauses(rule.text):
            rule_tokens, rule_negative = tokens_and_polarity(sentence)
            for tokens, negative in item_clauses:
                score, shared = overlap(tokens, rule_tokens)
                if shared < MIN_SHARED_TOKENS:
                    continue
                if negative == rule_negative and score >= REPEAT_OVERLAP:
                    relation = "repeats"
                elif negative != rule_negative and score >= CONTRADICT_OVERLAP:
                    relation = "contradicts"
                else:
                    continue
                rank = (score, relation == "contradicts")
                if best is None or rank > best[:2]:
                    quoted = rule.text if len(rule.text) <= 100 else rule.text[:97] + "..."
                    polarity = "opposite" if relation == "contradicts" else "same"
                    best = (*rank, f"{relation} CRITICAL rule {rule.number} (token overlap "
                                   f"{score:.2f}, {polarity} polarity): \"{quoted}\"")
    return best[2] if best else None


def find_candidates(briefing: Briefing, rules: list[Rule]) -> list[Candidate]:
    candidates = []
    for item in briefing.items:
        if item.section == "failures":
            continue
        reasons = []
        if item.section == "critical":
            reasons.append("listed under Critical candidates")
        elif item.critical:
            reasons.append(f"marked CRITICAL in {SECTION_TITLES[item.section]}")
        relation = rule_relation(item.text, rules) if rules else None
        if relation:
            reasons.append(relation)
        if reasons:
            candidates.append(Candidate(item.text, "; ".join(reasons), item.line))
    return candidates


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


def read_target(path: Path) -> str | None:
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
        bullet = BULLET.match(line)
        line_indent = len(line) - len(line.lstrip())
        if bullet and (current is None or line_indent <= indent):
            if current is not None:
                keys.add(normalise_item(" ".join(current)))
            current, indent = [bullet.group(3)], line_indent
        elif current is not None and line.strip() and not bullet and line_indent > indent \
                and not HEADING_ATX.match(line):
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

    headings = [(number, len(m.group(1)), m.group(2) or "") for number, m in
                ((n, HEADING_ATX.match(line.rstrip("\r\n"))) for n, line in enumerate(lines)) if m]
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
    if previous.strip() and not BULLET.match(previous) and not HEADING_ATX.match(previous.rstrip()):
        block.insert(0, newline)            # a paragraph above: a list needs a blank line first
    if position < len(lines) and lines[position].strip():
        block.append(newline)               # keep a blank line before what follows
    return "".join(lines[:position] + block + lines[position:])


# Not a copy of evals/scorecard.py:write_atomic on purpose: the files written here are edited by
# people too, so this one keeps the file's mode and also fsyncs the folder.
def atomic_write(path: Path, text: str) -> None:
    """Write text (UTF-8, line endings as given) so the file is either the old or the new one:
    a temp file in the same folder, fsync, then os.replace over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = (path.stat().st_mode & 0o777) if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(text.encode("utf-8"))
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


# --- the promotion ---------------------------------------------------------------------------------
def find_newest_briefing(project_root: Path) -> tuple[Path | None, list[str]]:
    """(newest briefing by the date in its name, notes about names that were skipped)."""
    folder = project_root / RESEARCH_DIR
    notes, dated = [], []
    if folder.is_dir():
        for path in folder.glob("briefing-*.md"):
            date = briefing_date_from_name(path)
            if date is None:
                notes.append(f"ignored {path.name}: the name is not briefing-YYYY-MM-DD.md "
                             "with a real date")
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
    notes: list[str] = []
    rules_path = project_root / SESSION_LEARNINGS
    rules = load_rules(rules_path) if rules_path.is_file() else []
    if not rules:
        notes.append(f"no numbered rules in {SESSION_LEARNINGS}; only items marked CRITICAL "
                     "become candidates")

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
    """Write text even where the console encoding lacks a character (Windows code pages)."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "utf-8"
        stream.write(text.encode(encoding, "replace").decode(encoding))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-root", type=Path, default=Path("."),
                        help="repository root holding autonomous-research/ and context/ "
                             "(default: the current folder)")
    parser.add_argument("--briefing", type=Path, metavar="PATH",
                        help="promote this briefing (default: the newest "
                             "autonomous-research/briefing-YYYY-MM-DD.md by the date in its name)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the diff of what would change and write nothing (default: off)")
    parser.add_argument("--check", type=Path, metavar="PATH",
                        help="only validate this briefing against the v3 schema: exit 0 valid, "
                             "1 invalid; writes nothing (default: off)")
    parser.add_argument("--today", metavar="YYYY-MM-DD",
                        help="the date written as 'added'/'proposed'/'Last updated' "
                             "(default: today's local date)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check is not None and args.briefing is not None:
        parser.error("--check and --briefing cannot be combined: --check validates the file it "
                     "names; --briefing chooses the file to promote")
    if args.check is not None and args.dry_run:
        parser.error("--check and --dry-run cannot be combined: --check never writes anything")
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
        path = resolve_input(args.check, root)
        if not path.is_file():
            print(f"error: --check {args.check}: no such file", file=sys.stderr)
            return 2
        briefing = parse_briefing(path)
        for line in format_problems(briefing, str(args.check)):
            emit(sys.stderr, line + "\n")
        summary = (f"{len(briefing.section_items('action_items'))} action items, "
                   f"{len(briefing.section_items('learnings'))} learnings, "
                   f"{len(briefing.section_items('findings'))} findings, "
                   f"{len(briefing.warnings)} warnings")
        if briefing.errors:
            print(f"FAIL {args.check}: {len(briefing.errors)} schema errors ({summary}); "
                  "see agents/pistachio-agent-v3.md, 'Output validation'")
            return 1
        print(f"PASS {args.check}: valid v3 briefing ({summary})")
        return 0

    if args.briefing is not None:
        path = resolve_input(args.briefing, root)
        if not path.is_file():
            print(f"error: --briefing {args.briefing}: no such file", file=sys.stderr)
            return 2
        display = str(args.briefing)
    else:
        path, notes = find_newest_briefing(root)
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        if path is None:
            print(f"error: no briefing found: expected {root / RESEARCH_DIR}/briefing-YYYY-MM-DD.md "
                  "(the research agent writes it; or pass --briefing PATH)", file=sys.stderr)
            return 2
        display = f"{RESEARCH_DIR}/{path.name}"

    try:
        data = path.read_bytes()
        record = read_record(read_target(root / PROMOTED_RECORD))
    except OSError as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if record.get(path.name) == hashlib.sha256(data).hexdigest():
        print(f"nothing new: {path.name} was already promoted (same sha256 in {PROMOTED_RECORD}; "
              "delete its line there to promote it again)")
        return 0

    briefing = parse_briefing(path, data)
    for line in format_problems(briefing, display):
        emit(sys.stderr, line + "\n")
    if briefing.errors:
        print(f"FAIL {display}: {len(briefing.errors)} schema errors; nothing was promoted. Fix "
              "them (see agents/pistachio-agent-v3.md, 'Output validation') and run again.")
        return 1
    try:
        plan = plan_promotion(root, briefing, data, today)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)

    for relative, (old, new) in plan.changes.items():
        emit(sys.stdout, unified_diff(relative, old, new))
    if plan.candidates:
        print(f"CRITICAL-rule candidates for a human ({CANDIDATES}; "
              f"{SESSION_LEARNINGS} is not changed):")
        for candidate in plan.candidates:
            emit(sys.stdout, f"  - line {candidate.line}: {candidate.text}\n    why: {candidate.why}\n")
    verb = "would add" if args.dry_run else "added"
    summary = (f"{verb} {plan.counts['tasks']} tasks, {plan.counts['learnings']} learnings, "
               f"{plan.counts['candidates']} critical candidates from {path.name}; "
               f"{plan.skipped_present} items were already present")
    if args.dry_run:
        print(f"dry run: {summary}; nothing written")
        return 0
    # The record goes last: if anything before it is interrupted, a re-run redoes the (idempotent) rest.
    try:
        for relative, (_, new) in plan.changes.items():
            atomic_write(root / relative, new)
    except OSError as exc:
        print(f"error: writing {exc.filename or 'a file'} failed: {exc}; every file is either "
              "unchanged or fully written; run again", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
