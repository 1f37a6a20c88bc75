"""evals/known_failures.py: all five PASS on the repository, and each FAILs on its planted fault.

Faults are planted in a temporary copy of the project, never in the checkout. Paths that would
look like stale references are assembled from parts so this file never names them literally.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT, load_script, run_script

SCRIPT = "evals/known_failures.py"
known_failures = load_script(SCRIPT)
TEST_NAMES = ["dependency_chain_test", "training_flag_test", "stale_reference_test",
              "context_budget_test", "script_syntax_test"]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", ".pytest_cache",
                                     "build", ".cycle-logs", "*.pyc")


def parse_lines(stdout: str) -> dict[str, tuple[str, str]]:
    results = {}
    for line in stdout.splitlines():
        match = re.match(r"^(PASS|FAIL) (\w+): (.*)$", line)
        assert match, f"not a PASS/FAIL line: {line!r}"
        results[match[2]] = (match[1], match[3])
    return results


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project without caches or virtualenvs; lead-owned docs stubbed if absent."""
    root = tmp_path / "project"
    shutil.copytree(REPO_ROOT, root, ignore=COPY_IGNORE)
    for name in ("README.md", "CODEX-PHASE2-CHANGES.md"):  # written by the lead, maybe not yet
        if not (root / name).exists():
            (root / name).write_text(f"# {name}\n", encoding="utf-8")
    return root


def run_checks(root: Path, *extra: str, env: dict | None = None):
    result = run_script(SCRIPT, "--project-root", str(root), *extra, env=env)
    return result, parse_lines(result.stdout)


def args(**overrides) -> argparse.Namespace:
    values = {"resolve": False, "resolve_python": "3.11", "resolve_find_links": None,
              "resolve_timeout": 600, "check_installed": False, "context_budget": 220}
    values.update(overrides)
    return argparse.Namespace(**values)


# ----------------------------------------------------------------------------------------------
# The repository and its copy


def test_all_five_pass_on_this_repository():
    result, lines = run_checks(REPO_ROOT)
    assert list(lines) == TEST_NAMES
    failed = {name: detail for name, (verdict, detail) in lines.items() if verdict != "PASS"}
    assert not failed and result.returncode == 0, failed
    assert "offline layer" in lines["dependency_chain_test"][1]
    assert "resolver layer not run" in lines["dependency_chain_test"][1]


def test_all_five_pass_on_the_clean_copy_and_leave_no_pycache(project):
    result, lines = run_checks(project)
    assert result.returncode == 0, result.stdout
    assert [verdict for verdict, _ in lines.values()] == ["PASS"] * 5
    assert not list(project.rglob("__pycache__")), "py_compile must write to a temp cfile"


def test_help_and_usage_errors(tmp_path):
    assert run_script(SCRIPT, "--help").returncode == 0
    assert run_script(SCRIPT, "--project-root", str(tmp_path / "missing")).returncode == 2
    assert run_script(SCRIPT, "--only", "no_such_test").returncode == 2


# ----------------------------------------------------------------------------------------------
# Each planted fault makes its test FAIL with a clear reason


def test_xformers_pin_for_another_torch_fails(project):
    requirements = project / "requirements-pod.txt"
    text = requirements.read_text(encoding="utf-8")
    assert "xformers==0.0.33.post1" in text
    requirements.write_text(text.replace("xformers==0.0.33.post1", "xformers==0.0.32.post2"),
                            encoding="utf-8")
    result, lines = run_checks(project)
    assert result.returncode == 1
    verdict, reason = lines["dependency_chain_test"]
    assert verdict == "FAIL"
    assert "xformers 0.0.32.post2 requires torch==2.8.0" in reason and "torch==2.9.0" in reason
    assert all(lines[name][0] == "PASS" for name in TEST_NAMES if name != "dependency_chain_test")


def test_conflicting_flag_pair_in_retrain_defaults_fails(project):
    script = project / "tools" / "retrain_lora_v3.py"
    text = script.read_text(encoding="utf-8")
    assert text.count('"text_encoder_lr": None,') == 1
    script.write_text(text.replace('"text_encoder_lr": None,', '"text_encoder_lr": 1e-05,'),
                      encoding="utf-8")
    result, lines = run_checks(project, "--only", "training_flag_test")
    assert result.returncode == 1
    verdict, reason = lines["training_flag_test"]
    assert verdict == "FAIL"
    assert "sdxl default" in reason and "flux default" in reason
    assert "--cache_text_encoder_outputs with --text_encoder_lr" in reason


def test_reference_to_an_archived_file_fails(project):
    archived = "context/" + "archive/old-plan.md"
    claude = project / "CLAUDE.md"
    text = claude.read_text(encoding="utf-8")
    claude.write_text(text + f"\nSee `{archived}` for the old plan.\n", encoding="utf-8")
    result, lines = run_checks(project, "--only", "stale_reference_test")
    assert result.returncode == 1
    verdict, reason = lines["stale_reference_test"]
    assert verdict == "FAIL"
    line_number = len(text.splitlines()) + 2
    assert f"CLAUDE.md:{line_number} names {archived}, which is archived" in reason


def test_reference_to_a_missing_file_fails_and_points_at_its_archived_copy(project):
    (project / "context" / "archive").mkdir(exist_ok=True)
    (project / "context" / "archive" / "old-notes.md").write_text("old\n", encoding="utf-8")
    moved = "context/" + "old-notes.md"
    agent = project / "agents" / "pistachio-agent-v3.md"
    agent.write_text(agent.read_text(encoding="utf-8") + f"\nRead {moved}.\n", encoding="utf-8")
    _, lines = run_checks(project, "--only", "stale_reference_test")
    verdict, reason = lines["stale_reference_test"]
    assert verdict == "FAIL" and f"names {moved}, which does not exist" in reason
    assert "an archived copy exists at context/archive/old-notes.md" in reason


def test_references_that_are_not_stale_pass(project):
    archive = project / "context" / "archive"
    archive.mkdir(exist_ok=True)
    # Archived files may name anything; placeholders, globs, outputs and stale-ok lines are fine.
    (archive / "old-plan.md").write_text("See tools/" + "gone.py\n", encoding="utf-8")
    notes = project / "context" / "notes.md"
    notes.write_text(
        "Briefings: autonomous-research/briefing-YYYY-MM-DD.md, e.g. autonomous-research/"
        "briefing-2031-01-02.md; all of tools/*.py; archive old files in context/archive/.\n"
        "The scorecard writes evals/latest_report.md.\n"
        "Historic: tools/" + "removed.py (stale-ok)\n", encoding="utf-8")
    _, lines = run_checks(project, "--only", "stale_reference_test")
    assert lines["stale_reference_test"][0] == "PASS", lines["stale_reference_test"][1]


def test_an_output_name_in_a_missing_folder_is_still_stale(project):
    notes = project / "context" / "notes.md"
    stale = "evals/" + "old/latest_report.md"
    notes.write_text(f"The old report was {stale}.\n", encoding="utf-8")
    _, lines = run_checks(project, "--only", "stale_reference_test")
    verdict, reason = lines["stale_reference_test"]
    assert verdict == "FAIL" and f"names {stale}, which does not exist" in reason


def test_a_name_the_os_refuses_is_a_stale_reference_not_a_crash(project):
    """Third outside review: a PROGRESS.md bullet naming tools/<300 a's>.md crashed the test
    (ENAMETOOLONG from the archive search)."""
    name = "a" * 300 + ".md"
    notes = project / "context" / "notes.md"
    notes.write_text(f"See tools/{name} for the plan.\n", encoding="utf-8")
    _, lines = run_checks(project, "--only", "stale_reference_test")
    verdict, reason = lines["stale_reference_test"]
    assert verdict == "FAIL" and f"names tools/{name}, which does not exist" in reason, reason
    assert "crashed" not in reason


def test_briefings_are_records_and_not_scanned_but_promoted_files_are(project):
    """A briefing that cites a path deleted later must not fail every later cycle (issue 13)."""
    gone = "tools/" + "deleted_since.py"
    research = project / "autonomous-research"
    research.mkdir(exist_ok=True)
    (research / "briefing-2026-02-11.md").write_text(
        f"# Pistachio research briefing 2026-02-11\n\n## Findings\n- {gone} was slow (source: {gone})\n",
        encoding="utf-8")
    _, lines = run_checks(project, "--only", "stale_reference_test")
    assert gone not in lines["stale_reference_test"][1]   # (other stale paths may exist meanwhile)
    # Only briefing-YYYY-MM-DD.md files in autonomous-research/ are records; the files the
    # promoter writes, and look-alikes elsewhere, are still checked.
    for relative in ("autonomous-research/memory.md", "autonomous-research/briefing-notes.md",
                     "context/briefing-2026-02-11.md"):
        path = project / relative
        original = path.read_text(encoding="utf-8") if path.exists() else None
        path.write_text((original or "") + f"\n- see {gone}\n", encoding="utf-8")
        _, lines = run_checks(project, "--only", "stale_reference_test")
        verdict, reason = lines["stale_reference_test"]
        assert verdict == "FAIL" and f"{relative}:" in reason, relative
        assert f"names {gone}, which does not exist" in reason, relative
        if original is None:
            path.unlink()
        else:
            path.write_text(original, encoding="utf-8")


def test_startup_file_300_lines_over_fails(project):
    first = known_failures.startup_files(project)[0]
    path = project / first
    path.write_text(path.read_text(encoding="utf-8") + "filler\n" * 300, encoding="utf-8")
    result, lines = run_checks(project, "--only", "context_budget_test")
    assert result.returncode == 1
    verdict, reason = lines["context_budget_test"]
    assert verdict == "FAIL" and "over the budget of 220" in reason and first in reason


def test_context_budget_matches_lifeos_context_budget(project):
    lifeos = load_script("tools/lifeos_context_budget.py")
    measured = lifeos.measure(project, 220)
    _, lines = run_checks(project, "--only", "context_budget_test")
    assert lines["context_budget_test"][1].startswith(f"{measured['total']} of 220 lines")


def test_syntax_error_in_tools_fails(project):
    (project / "tools" / "planted_broken.py").write_text("def broken(:\n    pass\n", encoding="utf-8")
    result, lines = run_checks(project, "--only", "script_syntax_test")
    assert result.returncode == 1
    verdict, reason = lines["script_syntax_test"]
    assert verdict == "FAIL" and "tools/planted_broken.py:1" in reason
    assert not (project / "tools" / "__pycache__").exists()


# ----------------------------------------------------------------------------------------------
def _launcher_cases():
    import test_retrain_lora_v3 as launcher_tests

    cases = [(model_type, flags, True) for model_type, flags, _, _ in launcher_tests.UPSTREAM_CONFLICTS]
    cases += [(model_type, flags, True) for flags, model_type, _ in launcher_tests.LAUNCHER_CONFLICTS
              if not any("--extra-arg --dataset_config" in name for name in _)]
    cases += [(model_type, flags, False) for model_type, flags in launcher_tests.UPSTREAM_ACCEPTS]
    cases += [(model_type, flags, False) for flags, model_type, _ in
              launcher_tests.test_valid_overrides_print_a_command.pytestmark[0].args[1]]
    return cases


@pytest.mark.parametrize("model_type,flags,conflict", _launcher_cases(), ids=str)
def test_training_flag_rules_agree_with_the_launcher(model_type, flags, conflict):
    """training_flag_test's own rules refuse exactly what tools/retrain_lora_v3.py refuses."""
    retrain = load_script("tools/retrain_lora_v3.py")
    argv = ["--model-type", model_type, "--base-model", "b.safetensors", "--images", "imgs", "--trigger",
            "ohwx", "--output", "out"]
    if model_type == "flux":
        argv += ["--clip-l", "c", "--t5xxl", "t", "--ae", "a"]
    settings = retrain.resolve_settings(retrain.build_parser().parse_args(argv + flags))
    assert bool(retrain.find_conflicts(settings)) is conflict
    _, options = known_failures.kohya_options([str(token) for token in retrain.build_command(settings)])
    merged = {**known_failures.flatten_dataset_config(retrain.dataset_config(settings)), **options}
    pairs = known_failures.conflicting_pairs(merged, model_type)
    assert bool(pairs) is conflict, pairs


# dependency_chain_test details, in process


def write_requirements(root: Path, body: str) -> None:
    (root / "requirements-pod.txt").write_text(body, encoding="utf-8")


DEFUSE = ("# pip install -r requirements-pod.txt\n# pip uninstall -y onnxruntime\n"
          "# pip install --force-reinstall --no-deps onnxruntime-gpu==1.23.2\n")


@pytest.mark.parametrize("body,reason", [
    ("torch>=2.9\n", "not pinned with =="),
    ("-r other.txt\ntorch==2.9.0\n", "pulls in requirements"),
    ("torch==2.9.0\nTorch==2.9.0\n", "pinned twice"),
    ("torch==2.9.0\ntorchvision==0.23.0\n", "torchvision 0.23.0 requires torch==2.8.0"),
    ("torch==2.9.0\nxformers==0.0.99\n", "not in the table"),
    ("onnxruntime==1.23.2\nonnxruntime-gpu==1.23.2\n", "both pinned"),
    ("onnxruntime-gpu==1.23.2\ninsightface==2.1\n", "must document the defuse"),
    (DEFUSE.replace("1.23.2", "1.22.0") + "onnxruntime-gpu==1.23.2\ninsightface==2.1\n",
     "names onnxruntime-gpu==1.22.0"),
])
def test_dependency_faults(tmp_path, body, reason):
    write_requirements(tmp_path, body)
    passed, detail = known_failures.dependency_chain_test(tmp_path, args())
    assert not passed and reason in detail, detail


def test_dependency_defuse_documented_passes(tmp_path):
    write_requirements(tmp_path, DEFUSE + "torch==2.9.0\nxformers==0.0.33.post1\n"
                                          "onnxruntime-gpu==1.23.2\ninsightface==2.1\n")
    passed, detail = known_failures.dependency_chain_test(tmp_path, args())
    assert passed, detail
    assert "defused" in detail and "xformers 0.0.33.post1 -> torch==2.9.0" in detail


def test_check_installed_enforces_the_pins_installed_here(tmp_path):
    from importlib import metadata

    pytest_version = metadata.version("pytest")
    write_requirements(tmp_path, "pytest==0.0.1\n")
    passed, detail = known_failures.dependency_chain_test(tmp_path, args())
    assert passed and f"pytest {pytest_version} (pin 0.0.1)" in detail
    passed, detail = known_failures.dependency_chain_test(tmp_path, args(check_installed=True))
    assert not passed and "installed versions differ from the pins" in detail
    write_requirements(tmp_path, f"pytest=={pytest_version}\n")
    passed, detail = known_failures.dependency_chain_test(tmp_path, args(check_installed=True))
    assert passed and "1 match the pins" in detail


# ----------------------------------------------------------------------------------------------
# The resolver layer, against a local wheel folder (the real index costs ~4.7 GB of downloads)


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A minimal valid wheel: just the metadata pip's resolver reads."""
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    metadata = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                + "".join(f"Requires-Dist: {requirement}\n" for requirement in requires))
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{info}/METADATA", metadata)
        archive.writestr(f"{info}/WHEEL", wheel)
        archive.writestr(f"{info}/RECORD", "")


def wheelhouse_for(project: Path, folder: Path, xformers_torch: str = "2.9.0") -> None:
    folder.mkdir()
    pins, problems = known_failures.parse_requirements(project / "requirements-pod.txt")
    assert not problems
    requires = {"xformers": (f"torch=={xformers_torch}", "numpy"), "torchvision": ("torch==2.9.0",),
                "insightface": ("onnxruntime", "numpy", "onnx>=1.13")}
    for key, (name, version, _) in pins.items():
        make_wheel(folder, name, version, requires.get(key, ()))
    make_wheel(folder, "onnxruntime", "1.23.2")


@pytest.mark.slow
def test_resolver_layer_proves_the_pins_with_pip(project, tmp_path):
    wheels = tmp_path / "wheels"
    wheelhouse_for(project, wheels)
    result, lines = run_checks(project, "--only", "dependency_chain_test", "--resolve",
                               "--resolve-find-links", str(wheels),
                               env={"PIP_CONFIG_FILE": os.devnull})
    verdict, detail = lines["dependency_chain_test"]
    assert verdict == "PASS", detail
    assert "resolver layer (pip" in detail
    assert "wheel metadata confirms xformers 0.0.33.post1 -> torch==2.9.0" in detail
    assert "pulls onnxruntime 1.23.2 (insightface)" in detail


@pytest.mark.slow
def test_resolver_layer_fails_when_the_wheel_disagrees(project, tmp_path):
    wheels = tmp_path / "wheels"
    wheelhouse_for(project, wheels, xformers_torch="2.8.0")
    result, lines = run_checks(project, "--only", "dependency_chain_test", "--resolve",
                               "--resolve-find-links", str(wheels),
                               env={"PIP_CONFIG_FILE": os.devnull})
    assert result.returncode == 1
    verdict, reason = lines["dependency_chain_test"]
    assert verdict == "FAIL" and "pip's resolver rejects the pins" in reason
    assert "torch==2.8.0" in reason


def test_dependency_chain_catches_a_training_pin_without_a_new_lock(project):
    top = project / "requirements-training.txt"
    top.write_text(top.read_text(encoding="utf-8").replace("safetensors==0.4.5", "safetensors==0.4.4"),
                   encoding="utf-8")
    problems = known_failures.lock_problems(project)[0]
    assert len(problems) == 2, problems  # both Python versions' locks
    assert all("has safetensors 0.4.5 but requirements-training.txt pins 0.4.4" in p for p in problems)


def test_dependency_chain_catches_an_unhashed_or_cpu_onnxruntime_lock(project):
    lock = project / "requirements-pod-py311.lock"
    lock.write_text(lock.read_text(encoding="utf-8") + "onnxruntime==1.23.2\n", encoding="utf-8")
    problems = known_failures.lock_problems(project)[0]
    assert any("no --hash for onnxruntime" in problem for problem in problems)
    assert any("installs the CPU onnxruntime" in problem for problem in problems)
    result, lines = run_checks(project, "--only", "dependency_chain_test")
    assert result.returncode == 1 and lines["dependency_chain_test"][0] == "FAIL"
