"""The cycle's secret scan (tools/run_full_cycle.py: SecretScanner): detect-secrets 1.5.0, the file
name rules and the extra key formats, over realistic fake secrets built at run time.

Run this file as a script to print the table of kinds tried against caught:
    .venv/bin/python tests/test_cycle_secrets.py
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO_ROOT, load_script  # noqa: E402
from cycle_fixtures import FakeSecrets  # noqa: E402

S = FakeSecrets(seed=5)
BIG = 6 * 1024 * 1024


def _filler(size: int) -> str:
    line = ("- The v3 sweep at strength 0.80 kept identity at 0.72 and skin realism at 0.55 "
            "(source: evals/latest_report.md)\n")
    return line * (size // len(line) + 1)


# (kind, file name, text, the secret) — each secret in the context a careless agent or user
# would write it.
def secret_cases() -> list[tuple[str, str, str, str]]:
    cases = []

    def add(kind, name, template, secret):
        cases.append((kind, name, template.format(secret), secret))

    add("AWS secret access key (env line)", "notes.md", "AWS_SECRET_ACCESS_KEY={}\n",
        S.aws_secret_key())
    add("AWS secret access key (ini)", "config.txt", "[default]\naws_secret_access_key = {}\n",
        S.aws_secret_key())
    add("AWS temporary key id ASIA...", "briefing.md", "- the pod used {} for S3 (source: env)\n",
        S.aws_access_key("AS" + "IA"))
    add("AWS access key id AKIA...", "briefing.md", "- key id {} (source: env)\n", S.aws_access_key())
    add("Stripe live secret key", "briefing.md", "- billing key {} (source: x)\n", S.stripe_live("s"))
    add("Stripe live restricted key", "notes.md", "STRIPE_KEY={}\n", S.stripe_live("r"))
    add("GitHub fine-grained token", "briefing.md", "- push with {} (source: x)\n",
        S.github_fine_grained())
    add("GitHub classic token", "notes.md", "token: {}\n", S.github_classic())
    add("Google API key", "briefing.md", "- maps key {} works (source: x)\n", S.google_api_key())
    add("Slack bot token", "notes.md", "- slack {}\n", S.slack_bot())
    add("Slack webhook URL", "notes.md", "post to {}\n", S.slack_webhook())
    add("Anthropic API key", "briefing.md", "- the key {} (source: x)\n", S.anthropic())
    add("OpenAI project key", "notes.md", "- {}\n", S.openai_project())
    add("Hugging Face token", "notes.md", "HF_TOKEN={}\n", S.huggingface())
    for label, kind in (("RSA", "RSA"), ("OpenSSH", "OPENSSH"), ("PKCS#8", "")):
        block = S.private_key_block(kind)
        cases.append((f"{label} private key", "key.txt" if kind == "RSA" else "notes.md", block,
                      block.splitlines()[1]))
    add("JSON Web Token", "notes.md", "- bearer {}\n", S.jwt())
    add("GitLab token", "notes.md", "- {}\n", S.gitlab())
    add("npm token", "notes.md", "//registry.npmjs.org/:_authToken={}\n", S.npm())
    add("password in a URL", "notes.md", "- db at https://admin:{}@db.example.com/x\n", S.chars(14))
    add("password assignment", "settings.py", 'password = "{}"\n', S.chars(18))
    key = S.github_fine_grained()
    cases.append(("key at the end of a 6 MB file", "big-report.md",
                  _filler(BIG) + f"- leaked {key} (source: x)\n", key))
    key = S.anthropic()
    cases.append(("key inside one 6 MB line", "minified.json",
                  '{"pad": "' + "a b " * (BIG // 8) + key + " " + "c d " * (BIG // 8) + '"}\n', key))
    return cases


NAME_CASES = [("prod.env", "name rule *.env"), (".envrc", "name rule .envrc"),
              (".env.local", "name rule .env*"), ("private/id_ed25519", "name rule key file"),
              ("server.pem", "name rule *.pem"), ("gcp/credentials.json", "name rule credentials"),
              (".ssh/config", "credentials folder")]


@pytest.fixture(scope="module")
def cycle():
    return load_script("tools/run_full_cycle.py")


@pytest.fixture(scope="module")
def scanner(cycle):
    return cycle.SecretScanner()


def scan_text(scanner, name: str, text: str) -> list[str]:
    data = text.encode("utf-8")
    return scanner.scan([(name, lambda: io.BytesIO(data))])


@pytest.mark.parametrize("kind,name,text,secret", [case for case in secret_cases()
                                                   if "6 MB" not in case[0]],
                         ids=[case[0] for case in secret_cases() if "6 MB" not in case[0]])
def test_each_secret_kind_is_caught_and_never_printed(scanner, kind, name, text, secret):
    problems = scan_text(scanner, name, text)
    assert problems, f"{kind} was not caught"
    for problem in problems:
        assert problem.startswith(f"{name}:"), problem
        assert secret not in problem and secret[:12] not in problem, "the message shows the secret"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["key at the end of a 6 MB file", "key inside one 6 MB line"])
def test_a_key_in_a_6_mb_file_is_found_by_streaming(scanner, kind):
    _, name, text, secret = next(case for case in secret_cases() if case[0] == kind)
    assert len(text) > BIG
    problems = scan_text(scanner, name, text)
    assert problems, f"{kind}: not caught"
    assert all(secret[:12] not in problem for problem in problems)
    if "end" in kind:
        assert any(problem.startswith(f"{name}:{text.count(chr(10))}:") for problem in problems), problems


@pytest.mark.parametrize("path,rule", NAME_CASES)
def test_secret_file_names_are_refused_whatever_they_hold(scanner, path, rule):
    problems = scan_text(scanner, path, "nothing secret here\n")
    assert problems and "file name" in problems[0] or "credentials folder" in problems[0], problems


def test_binary_bytes_do_not_hide_a_key(scanner):
    """detect-secrets alone skips a file that is not valid UTF-8; the cycle scans it anyway."""
    data = b"\xff\xfe\x00garbage\x81\n" + f"- {S.github_classic()}\n".encode() + b"\xc3\x28\n"
    problems = scanner.scan([("evals/runs/odd.json", lambda: io.BytesIO(data))])
    assert any(":2:" in problem for problem in problems), problems


def test_allowlist_comment_does_not_hide_a_key(scanner):
    problems = scan_text(scanner, "notes.md", f"{S.aws_access_key()}  # pragma: allowlist secret\n")
    assert problems, "`pragma: allowlist secret` must not let a key through the cycle"


def test_an_indirect_reference_line_does_not_hide_a_key(scanner):
    problems = scan_text(scanner, "notes.md", f"score = mean(values) {S.stripe_live('s')}\n")
    assert problems, "a line shaped like `x = f(y)` must not let a key through"


def test_the_cycles_own_outputs_are_not_flagged(scanner, tmp_path):
    """What a real cycle commits (the sample briefing, promoter files with sha256 lines, history
    lines, placeholders and code-like lines an agent may quote) passes the scan."""
    sample = (REPO_ROOT / "tests/data/briefing-sample-v3.md").read_text(encoding="utf-8")
    texts = {
        "autonomous-research/briefing-2026-12-01.md": sample + (
            "\n## Notes\n- set HF_TOKEN=<your token> before the download\n"
            "- `export HF_TOKEN=$HF_TOKEN` in the pod shell\n"
            "- token = os.environ['HF_TOKEN'] in auto_caption.py\n"
            "- MAX_TOKENS=4096 and TOKENIZER_PATH=/models/tokenizer\n"),
        "autonomous-research/promoted-briefings.txt":
            "briefing-2026-12-01.md sha256=" + "0123456789abcdef" * 4 + " promoted=2026-12-01\n",
        "evals/eval_history.jsonl": '{"timestamp": "2026-12-01T10:00:00+00:00", "run_id": '
                                    '"v3_sweep_2026-12-01", "identity": 0.72, "details": '
                                    '"runs/v3_sweep_2026-12-01.json"}\n',
        "autonomous-research/memory.md": (REPO_ROOT / "autonomous-research/memory.md").read_text(
            encoding="utf-8"),
        "PROGRESS.md": (REPO_ROOT / "PROGRESS.md").read_text(encoding="utf-8"),
    }
    for name, text in texts.items():
        assert scan_text(scanner, name, text) == [], name


def test_extra_patterns_take_linear_time(cycle):
    """No backtracking blow-up on hostile input: 200 000 characters of near-misses in well under
    a second per pattern."""
    hostile = ["aws" + "secret" * 30000, "A" * 200000 + "=" + "b" * 7, "_" * 200000,
               "sk-ant-" + "-" * 200000, "AIza" * 50000]
    for text in hostile:
        started = time.perf_counter()
        cycle.extra_secret_kinds(text)
        assert time.perf_counter() - started < 1.0, text[:20]


def secret_table() -> list[tuple[str, str]]:
    cycle = load_script("tools/run_full_cycle.py")
    scanner = cycle.SecretScanner()
    rows = []
    for kind, name, text, _secret in secret_cases():
        problems = scan_text(scanner, name, text)
        found = sorted({problem.split("looks like a ", 1)[-1] for problem in problems})
        rows.append((kind, "caught: " + "; ".join(found) if problems else "MISSED"))
    for path, rule in NAME_CASES:
        rows.append((f"file named {path}", "caught: " + rule if scan_text(scanner, path, "x\n")
                     else "MISSED"))
    return rows


if __name__ == "__main__":
    print("| secret kind | result |\n|---|---|")
    for kind, result in secret_table():
        print(f"| {kind} | {result} |")
