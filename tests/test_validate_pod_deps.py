"""Tests for tools/validate_pod_deps.py: manifest drift, version logic, traps, the CLI on bare Pythons."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, load_script, run_script

SCRIPT = "tools/validate_pod_deps.py"


@pytest.fixture(scope="module")
def vpd():
    return load_script(SCRIPT)


def manifest_drift(vpd, project_root: Path) -> list[str]:
    """What differs between the embedded MANIFEST/REQUIREMENTS_POD and the tree at project_root."""
    errors: list[str] = []
    scanned = vpd.scan_imports(project_root, errors)
    pins = vpd.parse_requirements(project_root / "requirements-pod.txt")
    live = vpd.build_manifest(scanned, pins)
    problems = list(errors)
    for name in sorted(set(live) - set(vpd.MANIFEST)):
        problems.append(f"{name} ({', '.join(sorted(scanned.get(name, ())))}) is not in MANIFEST")
    for name in sorted(set(vpd.MANIFEST) - set(live)):
        problems.append(f"MANIFEST has {name}, which nothing imports or pins")
    for name in sorted(set(live) & set(vpd.MANIFEST)):
        if live[name] != vpd.MANIFEST[name]:
            problems.append(f"{name}: MANIFEST says {vpd.MANIFEST[name]}, the tree says {live[name]}")
    if pins != vpd.REQUIREMENTS_POD:
        problems.append(f"REQUIREMENTS_POD differs from requirements-pod.txt: {pins}")
    return problems


def copy_project(destination: Path) -> Path:
    for folder in ("tools", "evals"):
        (destination / folder).mkdir(parents=True)
        for path in (REPO_ROOT / folder).glob("*.py"):
            shutil.copy2(path, destination / folder / path.name)
    shutil.copy2(REPO_ROOT / "requirements-pod.txt", destination / "requirements-pod.txt")
    return destination


def bare_python(tmp_path: Path) -> str:
    """A fresh venv without any package (not even pip): a Python with no torch, no numpy."""
    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120, capture_output=True)
    exe = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    return str(exe)


def plant_dist_info(site: Path, name: str, version: str, top_level: str):
    """A minimal real *.dist-info folder: what importlib.metadata reads for an installed wheel."""
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                                     encoding="utf-8")
    (folder / "top_level.txt").write_text(top_level + "\n", encoding="utf-8")
    (folder / "INSTALLER").write_text("pip\n", encoding="utf-8")


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def mini_project(root: Path, imports: list[str], pins: dict[str, str]) -> Path:
    """tools/job.py importing the given modules; requirements-pod.txt with the given pins."""
    (root / "tools").mkdir(parents=True)
    body = "\n".join(f"import {name}" for name in imports)
    (root / "tools" / "job.py").write_text(f'"""A job."""\n{body}\n', encoding="utf-8")
    (root / "requirements-pod.txt").write_text(
        "".join(f"{dist}=={version}\n" for dist, version in pins.items()), encoding="utf-8")
    return root


# ---------------------------------------------------------------- manifest drift (acceptance 3)

def test_manifest_matches_the_tree_and_requirements_pod(vpd):
    assert manifest_drift(vpd, REPO_ROOT) == []


def test_embedded_pins_equal_requirements_pod(vpd):
    pins = vpd.parse_requirements(REPO_ROOT / "requirements-pod.txt")
    assert pins == vpd.REQUIREMENTS_POD
    pinned = {dist: pin for dist, pin in vpd.MANIFEST.values() if pin is not None}
    assert pinned == pins
    unpinned = {name for name, (_, pin) in vpd.MANIFEST.items() if pin is None}
    assert unpinned <= set(vpd.UNPINNED_OK), "an import without a pod pin must be declared"


def test_drift_test_fails_when_a_tools_script_imports_an_unlisted_package(vpd, tmp_path):
    project = copy_project(tmp_path / "project")
    assert manifest_drift(vpd, project) == []  # the copy itself is clean
    (project / "tools" / "planted_job.py").write_text(
        '"""Planted."""\nimport os\n\n\ndef run():\n    import yaml\n    return yaml, os\n',
        encoding="utf-8")
    problems = manifest_drift(vpd, project)
    assert problems and "yaml" in problems[0] and "tools/planted_job.py" in problems[0]
    # The CLI on the live tree sees it too, with the right distribution and no pod pin.
    proc = run_script(SCRIPT, "--project-root", project, "--print-manifest")
    assert proc.returncode == 0, proc.stderr
    assert '"yaml": ("PyYAML", None),' in proc.stdout


def test_scan_excludes_stdlib_and_project_modules(vpd, tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "evals").mkdir()
    (tmp_path / "tools" / "a.py").write_text(
        "from __future__ import annotations\nimport os, json\nimport numpy as np\n"
        "from PIL import Image\nimport importlib\nfrom .sibling import x\n"
        "def f():\n    import tomllib\n    return importlib.import_module('cv2')\n",
        encoding="utf-8")
    (tmp_path / "evals" / "face_similarity_eval.py").write_text("import insightface\n",
                                                                 encoding="utf-8")
    (tmp_path / "evals" / "scorecard.py").write_text(
        "import face_similarity_eval\nfrom evals import skin_realism_eval\n", encoding="utf-8")
    (tmp_path / "evals" / "skin_realism_eval.py").write_text("import skimage.filters\n",
                                                              encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("import pytest\n", encoding="utf-8")
    found = vpd.scan_imports(tmp_path)
    assert found == {"numpy": {"tools/a.py"}, "PIL": {"tools/a.py"}, "cv2": {"tools/a.py"},
                     "insightface": {"evals/face_similarity_eval.py"},
                     "skimage": {"evals/skin_realism_eval.py"}}


def test_scan_reports_files_that_do_not_parse(vpd, tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "broken.py").write_text("import numpy\ndef (:\n", encoding="utf-8")
    (tmp_path / "tools" / "fine.py").write_text("import torch\n", encoding="utf-8")
    errors: list[str] = []
    assert vpd.scan_imports(tmp_path, errors) == {"torch": {"tools/fine.py"}}
    assert len(errors) == 1 and errors[0].startswith("tools/broken.py: cannot parse")
    with pytest.raises(SyntaxError):
        vpd.scan_imports(tmp_path)


def test_build_manifest_resolves_distributions_and_pins(vpd):
    manifest = vpd.build_manifest({"cv2", "PIL", "dlib", "yaml", "onnxruntime"},
                                  {"opencv-python": "4.12.0.88", "pillow": "11.3.0",
                                   "onnxruntime-gpu": "1.23.2", "xformers": "0.0.33.post1",
                                   "scikit-image": "0.25.2"})
    assert manifest == {
        "cv2": ("opencv-python", "4.12.0.88"), "dlib": ("dlib-bin", None),
        "onnxruntime": ("onnxruntime-gpu", "1.23.2"), "PIL": ("pillow", "11.3.0"),
        "skimage": ("scikit-image", "0.25.2"), "xformers": ("xformers", "0.0.33.post1"),
        "yaml": ("PyYAML", None)}


def test_parse_requirements_skips_comments_and_options(vpd, tmp_path):
    path = tmp_path / "req.txt"
    path.write_text("# c\n--extra-index-url x\ntorch==2.9.0  # note\nPillow == 11.3.0\n"
                    "foo[bar]==1.0 ; python_version >= '3.10'\nunpinned>=1\n\n", encoding="utf-8")
    assert vpd.parse_requirements(path) == {"torch": "2.9.0", "Pillow": "11.3.0", "foo": "1.0"}


# ---------------------------------------------------------------- versions

VERSION_CASES = [
    ("2.9.0+cu128", "==2.9.0"), ("2.9.0", "==2.9.0+cu128"), ("2.9.0+cu128", "==2.9.0+cu128"),
    ("2.1", "==2.1.0"), ("0.0.33.post1", "==0.0.33"), ("0.0.33", "==0.0.33.post1"),
    ("1.23.2", ">=1.23,<1.24"), ("2.13.0+cpu", "==2.9.0"), ("2.10.0", ">2.9"),
    ("1.0rc1", "<1.0"), ("1.0rc1", "<1.0rc2"), ("1.0.dev1", "<1.0a1"), ("1.0.post1", ">1.0"),
    ("1.0.post2", ">1.0.post1"), ("1.0+local", ">1.0"), ("2.9.1", "~=2.9.0"),
    ("2.10.0", "~=2.9.0"), ("1!1.0", ">2.0"), ("0.24.0", "!=0.24.0"),
    ("4.12.0.88", "==4.12.0.88"), ("1.0-1", "==1.0.post1"), ("1.0RC1", "==1.0rc1"),
]


def test_fallback_version_logic_agrees_with_packaging(vpd, monkeypatch):
    specifiers = pytest.importorskip("packaging.specifiers")
    monkeypatch.setattr(vpd, "_SpecifierSet", None)  # take the no-packaging code path
    for installed, spec in VERSION_CASES:
        expected = specifiers.SpecifierSet(spec).contains(installed, prereleases=True)
        assert vpd.version_satisfies(installed, spec) is expected, (installed, spec)


def test_pin_matching_ignores_local_label_of_installed_version(vpd):
    assert vpd.pin_matches("2.9.0+cu128", "2.9.0") is True
    assert vpd.pin_matches("2.9.0+cpu", "2.9.0") is True  # the CPU-build trap is checked apart
    assert vpd.pin_matches("2.13.0+cpu", "2.9.0") is False
    assert vpd.pin_matches(None, "2.9.0") is None


# ---------------------------------------------------------------- probes, VRAM, fix line

def test_embedded_identity_model_is_a_valid_onnx_graph(vpd):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="")
    model.ir_version = 8
    assert model.SerializeToString() == vpd.IDENTITY_ONNX
    onnx.checker.check_model(onnx.load_from_string(vpd.IDENTITY_ONNX))


def test_onnxruntime_probe_creates_a_real_session(vpd):
    pytest.importorskip("onnxruntime")
    result = vpd.run_probe(vpd.ORT_PROBE, timeout=120)
    assert result["error"] is None, result["stderr"]
    assert "CPUExecutionProvider" in result["data"]["session"]
    assert set(result["data"]["session"]) <= set(result["data"]["available"])


def test_run_probe_survives_a_crash_and_a_hang(vpd):
    crashed = vpd.run_probe("import os\nos.abort()\n", timeout=60)
    assert crashed["data"] is None and crashed["error"]
    if os.name != "nt":
        assert crashed["error"].startswith("crashed with signal")
    hung = vpd.run_probe("import time\ntime.sleep(30)\n", timeout=1)
    assert hung["data"] is None and hung["error"] == "timed out after 1 s"


def test_parse_nvidia_smi_output(vpd):
    query = "NVIDIA GeForce RTX 4090, 24564, 23012, 570.124.04\n"
    plain = "| NVIDIA-SMI 570.124.04   Driver Version: 570.124.04   CUDA Version: 12.8     |\n"
    parsed = vpd.parse_nvidia_smi(query, plain)
    assert parsed == {"gpus": [{"name": "NVIDIA GeForce RTX 4090", "total_bytes": 24564 * 2 ** 20,
                                "free_bytes": 23012 * 2 ** 20, "driver": "570.124.04"}],
                      "driver_cuda": "12.8"}


def test_vram_parameter_counts_follow_from_the_architectures(vpd):
    r = vpd.LORA_RANK
    # SDXL, kohya LoRA on every Linear of the Transformer2DModels: per BasicTransformerBlock at
    # width d attn1 q/k/v/out (d->d), attn2 q/out (d->d) and k/v (2048->d), GEGLU d->8d and
    # 4d->d; per Transformer2DModel proj_in/proj_out (d->d). 5 models of 2 blocks at 640,
    # 6 models of 10 blocks at 1280.
    def block(d):
        return 4 * 2 * d + 2 * 2 * d + 2 * (2048 + d) + (d + 8 * d) + (4 * d + d)
    sdxl = 10 * block(640) + 60 * block(1280) + 5 * 2 * 2 * 640 + 6 * 2 * 2 * 1280
    assert r * sdxl == vpd.SDXL_LORA_PARAMS

    # Flux transformer: 19 double + 38 single blocks, hidden 3072, MLP 12288, head dim 128.
    def lin(i, o):
        return i * o + o
    h, mlp = 3072, 12288
    double = 2 * (lin(h, 6 * h) + lin(h, 3 * h) + lin(h, h) + 2 * 128 + lin(h, mlp) + lin(mlp, h))
    single = lin(h, 3 * h) + lin(h, 3 * h) + 2 * 128 + lin(h, mlp) + lin(h + mlp, h)
    embed = lin(64, h) + lin(4096, h) + 2 * (lin(256, h) + lin(h, h)) + lin(768, h) + lin(h, h)
    assert 19 * double + 38 * single + embed + lin(h, 2 * h) + lin(h, 64) == \
        vpd.FLUX_TRANSFORMER_PARAMS
    # LoRA on every Linear of the blocks, BFL layout (fused qkv; single-block linear1
    # h -> 3h + mlp, linear2 h + mlp -> h): r * (in + out) each.
    per_stream = (h + 3 * h) + (h + h) + (h + mlp) + (mlp + h) + (h + 6 * h)  # qkv proj mlp mod
    per_single = (h + 3 * h + mlp) + (h + mlp + h) + (h + 3 * h)               # linear1/2, mod
    lora = 19 * 2 * per_stream + 38 * per_single
    assert r * lora == vpd.FLUX_LORA_PARAMS


def test_lora_rank_is_the_v3_recipe(vpd):
    if not (REPO_ROOT / "tools" / "retrain_lora_v3.py").is_file():
        pytest.skip("tools/retrain_lora_v3.py not in this tree")
    recipe = load_script("tools/retrain_lora_v3.py").V3_RECIPE
    assert recipe["common"]["network_dim"] == vpd.LORA_RANK


@pytest.mark.slow
def test_blip2_parameter_counts_match_transformers(vpd):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    opt = transformers.OPTConfig(vocab_size=50272, hidden_size=2560, num_hidden_layers=32,
                                 ffn_dim=10240, num_attention_heads=32, max_position_embeddings=2048,
                                 word_embed_proj_dim=2560, tie_word_embeddings=True)
    config = transformers.Blip2Config(text_config=opt.to_dict(), num_query_tokens=32)
    with torch.device("meta"):
        model = transformers.Blip2ForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    fp32 = sum(p.numel() for p in model.qformer.parameters()) + model.query_tokens.numel()
    lm_head = model.language_model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m is not lm_head
                 and not any(m is q for q in model.qformer.modules()))
    assert fp32 == vpd.BLIP2_FP32_PARAMS
    assert total - fp32 == vpd.BLIP2_OTHER_PARAMS
    assert linear == vpd.BLIP2_INT8_LINEAR


def test_vram_estimate_totals_and_verdicts(vpd):
    estimate = vpd.vram_estimate()
    jobs = {job["key"]: job for job in estimate["jobs"]}
    assert set(jobs) == {"blip2_fp16", "blip2_int8", "sdxl_lora", "flux_lora"}
    for job in jobs.values():
        assert job["total_gib"] == pytest.approx(sum(c["gib"] for c in job["components"]), abs=0.02)
        assert job["card"]["fits"] == "yes" and job["free_now"] is None
    assert jobs["blip2_int8"]["total_gib"] < jobs["blip2_fp16"]["total_gib"]
    assert estimate["sequential"]["peak_gib"] == jobs["flux_lora"]["total_gib"]
    pairs = {tuple(p["jobs"]): p["card"]["fits"] for p in estimate["concurrent"]}
    assert pairs[(jobs["blip2_fp16"]["job"], jobs["sdxl_lora"]["job"])] == "yes"
    assert pairs[(jobs["blip2_fp16"]["job"], jobs["flux_lora"]["job"])] == "no"
    # With a GPU that has 8 GiB free: 8-bit captioning fits, SDXL training does not.
    small = {job["key"]: job for job in vpd.vram_estimate(8 * vpd.GIB)["jobs"]}
    assert small["blip2_int8"]["free_now"]["fits"] == "yes"
    assert small["sdxl_lora"]["free_now"]["fits"] == "no"


def test_fix_line_uninstalls_first_and_restores_onnxruntime_gpu(vpd, tmp_path, monkeypatch):
    site = tmp_path / "site"
    plant_dist_info(site, "onnxruntime", "1.23.2", "onnxruntime")
    plant_dist_info(site, "onnxruntime-gpu", "1.23.2", "onnxruntime")
    monkeypatch.syspath_prepend(str(site))
    report = vpd.Report()
    report.add(report.uninstall, "onnxruntime", "onnxruntime-gpu", "never-installed-dist")
    report.add(report.install, "onnxruntime-gpu", "insightface", "torch", "torch")
    line = vpd._fix_line(vpd.MANIFEST, report, "python3")
    assert line == ("python3 -m pip uninstall -y onnxruntime onnxruntime-gpu && "
                    "python3 -m pip install onnxruntime-gpu==1.23.2 insightface==2.1 torch==2.9.0 && "
                    "python3 -m pip uninstall -y onnxruntime && "
                    "python3 -m pip install --force-reinstall --no-deps onnxruntime-gpu==1.23.2")
    assert vpd._fix_line(vpd.MANIFEST, vpd.Report(), "python3") is None


# ---------------------------------------------------------------- CLI

def test_help_shows_the_pod_command():
    proc = run_script(SCRIPT, "--help", timeout=60)
    assert proc.returncode == 0
    assert "python3 /workspace/validate_pod_deps.py" in proc.stdout
    assert "default" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--print-manifest"], "--print-manifest needs --project-root"),
    (["--import-timeout", "0"], "--import-timeout must be positive"),
    (["--training-python", "p", "--skip-training"], "--training-python conflicts with --skip-training"),
    (["--locks", "no-such-folder"], "--locks no-such-folder is not a folder"),
    (["--project-root", "does-not-exist"], "not a folder"),
])
def test_usage_errors_exit_2(args, message, tmp_path):
    proc = run_script(SCRIPT, *args, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def _json_targets(tmp_path: Path) -> list[tuple[Path, str]]:
    """Places --json must refuse, made safely inside tmp_path (never the real /dev nodes)."""
    targets = []
    fifo = tmp_path / "a-fifo"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)
        targets.append((fifo, "exists and is not a regular file"))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        node = tmp_path / "full-like-device"
        os.mknod(node, 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 7))  # a /dev/full twin
        targets.append((node, "exists and is not a regular file"))
    targets.append((tmp_path, "is a folder; give a file path"))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    targets.append((tmp_path / "dangling", "is a dangling symbolic link"))
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    targets.append((tmp_path / "afile" / "report.json", f"{tmp_path / 'afile'} is not a folder"))
    return targets


def test_json_target_that_is_no_writable_file_is_refused_before_any_check(tmp_path):
    """--json onto a device node, a FIFO, a folder, a dangling link or under a file: exit 2 at
    once (no probe runs, which --import-timeout 0.001 would make fail), and nothing is replaced."""
    import stat

    for target, message in _json_targets(tmp_path):
        before = target.lstat() if os.path.lexists(target) else None
        proc = run_script(SCRIPT, "--allow-no-gpu", "--skip-training", "--json", target, cwd=tmp_path,
                          timeout=60)
        assert proc.returncode == 2, (target, proc.returncode, proc.stderr)
        assert f"--json {target}: " in proc.stderr and message in proc.stderr, proc.stderr
        assert "checking" not in proc.stderr, "the check must not start"
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        if before is not None:
            after = target.lstat()
            assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode), f"{target} was replaced"
            assert after.st_ino == before.st_ino, f"{target} was replaced"
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*.tmp")), "no temp file beside the folder"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can write into a read-only folder; the refusal needs a normal user")
def test_json_in_a_read_only_folder_is_refused_before_any_check(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        proc = run_script(SCRIPT, "--allow-no-gpu", "--skip-training", "--json", folder / "r.json",
                          cwd=tmp_path, timeout=60)
    finally:
        folder.chmod(0o700)
    assert proc.returncode == 2 and "no file can be created in" in proc.stderr


def test_project_root_without_requirements_is_an_input_error(tmp_path):
    (tmp_path / "tools").mkdir()
    proc = run_script(SCRIPT, "--project-root", tmp_path, timeout=60)
    assert proc.returncode == 2 and "requirements-pod.txt not found" in proc.stderr


def test_alone_in_an_empty_folder_with_a_bare_python(vpd, tmp_path):
    """Acceptance 1: no torch, no packages, no GPU -> missing list, one fix line, VRAM table, exit 1."""
    python = bare_python(tmp_path)
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy2(REPO_ROOT / SCRIPT, folder / "validate_pod_deps.py")
    proc = subprocess.run([python, "validate_pod_deps.py", "--json", "out/report.json"], cwd=folder,
                          capture_output=True, text=True, encoding="utf-8", timeout=300,
                          env=clean_env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "torch is not installed: pinned torch==2.9.0" in proc.stdout
    assert "VRAM estimate for the RTX 4090" in proc.stdout
    assert "Verdict, one after the other" in proc.stdout
    fix_lines = [line for line in proc.stdout.splitlines() if " -m pip install " in line]
    assert len(fix_lines) == 2, "one fix line per environment"
    for dist, pin in vpd.REQUIREMENTS_POD.items():
        assert f" {dist}=={pin}" in fix_lines[0]
    report = json.loads((folder / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["ok"] is False and report["fix_command"] == fix_lines[0]
    assert report["training"]["fix_command"] == fix_lines[1]
    assert fix_lines[1].startswith(f"git clone https://github.com/kohya-ss/sd-scripts {vpd.DEFAULT_SD_SCRIPTS}")
    assert "--require-hashes -r requirements-training-py3" in fix_lines[1]
    assert {p["import"] for p in report["packages"] if p["status"] == "MISSING"} >= {"torch", "numpy"}
    assert sorted(p.name for p in folder.iterdir()) == ["out", "validate_pod_deps.py"]


def test_names_the_onnxruntime_trap_from_installed_metadata(tmp_path):
    """Acceptance 2 (fast): onnxruntime and onnxruntime-gpu dist-info both on the path."""
    python = bare_python(tmp_path)
    site = tmp_path / "site"
    plant_dist_info(site, "onnxruntime", "1.23.2", "onnxruntime")
    plant_dist_info(site, "onnxruntime-gpu", "1.23.2", "onnxruntime")
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy2(REPO_ROOT / SCRIPT, folder / "validate_pod_deps.py")
    proc = subprocess.run([python, "validate_pod_deps.py", "--json", "r.json"], cwd=folder,
                          capture_output=True, text=True, encoding="utf-8", timeout=300,
                          env=clean_env(PYTHONPATH=str(site)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "[FAIL] onnxruntime and onnxruntime-gpu both installed" in proc.stdout
    report = json.loads((folder / "r.json").read_text(encoding="utf-8"))
    assert " -m pip uninstall -y onnxruntime onnxruntime-gpu && " in report["fix_command"]
    assert "onnxruntime-gpu==1.23.2" in report["fix_command"]
    row = next(p for p in report["packages"] if p["import"] == "onnxruntime")
    assert row["status"] == "CONFLICT"


def test_trap_with_the_real_onnxruntime_and_gpu_metadata(tmp_path):
    """The CPU onnxruntime of this venv plus onnxruntime-gpu metadata: a real session gets CPU only."""
    pytest.importorskip("onnxruntime")
    site = tmp_path / "site"
    plant_dist_info(site, "onnxruntime-gpu", "1.23.2", "onnxruntime")
    project = mini_project(tmp_path / "project", ["onnxruntime"], {"onnxruntime-gpu": "1.23.2"})
    proc = run_script(SCRIPT, "--project-root", project, "--allow-no-gpu", "--json", tmp_path / "r.json",
                      cwd=tmp_path, timeout=300, env={"PYTHONPATH": str(site)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    traps = {t["trap"]: t for t in report["traps"]}
    assert traps["onnxruntime and onnxruntime-gpu both installed"]["status"] == "FAIL"
    assert "session got ['CPUExecutionProvider']" in traps["onnxruntime session providers"]["detail"]
    assert report["fix_command"].endswith(
        "-m pip uninstall -y onnxruntime onnxruntime-gpu && "
        f"{shlex.quote(sys.executable)} -m pip install onnxruntime-gpu==1.23.2")


def test_xformers_for_another_torch_and_a_cpu_torch(tmp_path):
    """xformers metadata that requires another torch than the installed one, and a CPU torch."""
    torch = pytest.importorskip("torch")
    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build")
    from importlib import metadata
    torch_version = metadata.version("torch")
    site = tmp_path / "site"
    plant_dist_info(site, "xformers", "0.0.33.post1", "xformers")
    with (site / "xformers-0.0.33.post1.dist-info" / "METADATA").open("a", encoding="utf-8") as fh:
        fh.write("Requires-Dist: numpy\nRequires-Dist: torch==2.9.0\n")
    project = mini_project(tmp_path / "project", ["torch", "xformers"],
                           {"torch": torch_version, "xformers": "0.0.33.post1"})
    proc = run_script(SCRIPT, "--project-root", project, "--json", tmp_path / "r.json",
                      cwd=tmp_path, timeout=300, env={"PYTHONPATH": str(site)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    traps = {t["trap"]: t for t in report["traps"]}
    assert traps["xformers matches torch"]["status"] == "FAIL"
    assert f"requires torch==2.9.0, torch {torch_version} installed" in \
        traps["xformers matches torch"]["detail"]
    assert traps["torch has CUDA"]["status"] == "FAIL"
    assert "is a CPU build" in traps["torch has CUDA"]["detail"]
    assert " -m pip uninstall -y xformers torch && " in report["fix_command"]
    assert report["fix_command"].endswith(f" -m pip install xformers==0.0.33.post1 torch=={torch_version}")


def test_exit_0_when_everything_matches(tmp_path):
    numpy = pytest.importorskip("numpy")
    from importlib import metadata
    project = mini_project(tmp_path / "project", ["numpy"], {"numpy": metadata.version("numpy")})
    proc = run_script(SCRIPT, "--project-root", project, "--allow-no-gpu", "--skip-training",
                      cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Nothing needs fixing." in proc.stdout and "Training environment" not in proc.stdout
    assert numpy.__version__ in proc.stdout


def test_broken_imports_are_reported_not_fatal(tmp_path):
    """A package that aborts, one that hangs and one missing libGL: all reported, exit 1."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "crashy.py").write_text("import os\nos.abort()\n", encoding="utf-8")
    (site / "sleepy.py").write_text("import time\ntime.sleep(60)\n", encoding="utf-8")
    (site / "nogl.py").write_text(
        "raise ImportError('libGL.so.1: cannot open shared object file: No such file or directory')\n",
        encoding="utf-8")
    for name in ("crashy", "sleepy", "nogl"):
        plant_dist_info(site, name, "1.0", name)
    project = mini_project(tmp_path / "project", ["crashy", "sleepy", "nogl"],
                           {"crashy": "1.0", "sleepy": "1.0", "nogl": "1.0"})
    proc = run_script(SCRIPT, "--project-root", project, "--allow-no-gpu", "--import-timeout", "3",
                      "--json", tmp_path / "r.json", cwd=tmp_path, timeout=300,
                      env={"PYTHONPATH": str(site)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    rows = {p["import"]: p for p in report["packages"]}
    assert all(rows[name]["status"] == "IMPORT ERROR" for name in ("crashy", "sleepy", "nogl"))
    if os.name != "nt":
        assert rows["crashy"]["import_error"].startswith("crashed with signal")
    assert rows["sleepy"]["import_error"] == "timed out after 3 s"
    assert rows["nogl"]["import_error"].startswith("ImportError: libGL.so.1")
    assert report["fix_command"].startswith("apt-get install -y libgl1 libglib2.0-0 && ")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RUN_SLOW_VENV_TESTS") != "1",
                    reason="downloads onnxruntime-gpu (~300 MB): set RUN_SLOW_VENV_TESTS=1")
def test_real_venv_with_onnxruntime_and_onnxruntime_gpu(tmp_path):
    """Acceptance 2 with real wheels: pip install onnxruntime==1.23.2 onnxruntime-gpu==1.23.2."""
    venv = tmp_path / "ort-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    subprocess.run([python, "-m", "pip", "install", "--cache-dir", str(tmp_path / "pip-cache"),
                    "onnxruntime==1.23.2", "onnxruntime-gpu==1.23.2"], check=True, timeout=1800,
                   capture_output=True)
    proc = subprocess.run([python, str(REPO_ROOT / SCRIPT), "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, encoding="utf-8", timeout=600,
                          env=clean_env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[FAIL] onnxruntime and onnxruntime-gpu both installed" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert "-m pip uninstall -y onnxruntime onnxruntime-gpu && " in report["fix_command"]



# ---------------------------------------------------------------- the training environment

SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(not SYSTEM_PYTHON.is_file(), reason="no system /usr/bin/python3 on this machine")
def test_alone_in_an_empty_folder_with_the_system_python3(tmp_path):
    """The acceptance line: copied alone, bare system python3, no venv: exit 1, no traceback, a fix
    line per environment."""
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy2(REPO_ROOT / SCRIPT, folder / "validate_pod_deps.py")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([str(SYSTEM_PYTHON), "validate_pod_deps.py"], cwd=folder, capture_output=True,
                          text=True, encoding="utf-8", timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    eval_fix = lines[lines.index("Fix, eval/caption environment (one line, for this Python):") + 1]
    training_fix = lines[lines.index("Fix, training environment (one line):") + 1]
    assert eval_fix.startswith(f"{SYSTEM_PYTHON} -m pip install ")
    assert "git clone" in training_fix and "-m venv" in training_fix and "--no-deps -e" in training_fix
    assert sorted(p.name for p in folder.iterdir()) == ["validate_pod_deps.py"]


def test_embedded_training_pins_match_requirements_training_and_its_locks(vpd):
    from test_pod_locks import lock_entries, top_level

    top = top_level(REPO_ROOT / "requirements-training.txt")
    assert {vpd.normalize_name(name) for name in vpd.REQUIREMENTS_TRAINING} == set(top)
    assert set(vpd.TRAINING_IMPORTS.values()) == set(vpd.REQUIREMENTS_TRAINING)
    for version, lock in (("3.10.13", "requirements-training-py310.lock"),
                          ("3.11.7", "requirements-training-py311.lock")):
        entries = lock_entries(REPO_ROOT / lock)
        for dist, pin in vpd.training_pins(version).items():
            assert entries[vpd.normalize_name(dist)]["version"] == pin, (lock, dist)
            if top[vpd.normalize_name(dist)] is not None:
                assert top[vpd.normalize_name(dist)] == pin
    assert vpd.SD_SCRIPTS_COMMIT == load_script("tools/retrain_lora_v3.py").SD_SCRIPTS_COMMIT


def fake_checkout(root: Path, head: str | None = None, packed_branch: str | None = None) -> Path:
    """A folder with the two files that make it an sd-scripts checkout, and optionally a .git."""
    (root / "library").mkdir(parents=True)
    (root / "sdxl_train_network.py").write_text("", encoding="utf-8")
    (root / "library" / "train_util.py").write_text("", encoding="utf-8")
    if head or packed_branch:
        git = root / ".git"
        git.mkdir()
        if packed_branch:
            (git / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
            (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{packed_branch} refs/heads/main\n",
                                             encoding="utf-8")
        else:
            (git / "HEAD").write_text(head + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("layout,commit,problem", [
    ({"head": "48d368fa557731ad0488c07304dfeba8c07910eb"}, "48d368fa557731ad0488c07304dfeba8c07910eb", False),
    ({"packed_branch": "48d368fa557731ad0488c07304dfeba8c07910eb"}, "48d368fa557731ad0488c07304dfeba8c07910eb",
     False),
    ({"head": "a" * 40}, "a" * 40, True),
    ({}, None, False),
])
def test_sd_scripts_commit_is_read_from_git_and_compared(vpd, tmp_path, layout, commit, problem):
    checkout = fake_checkout(tmp_path / "sd-scripts", **layout)
    assert vpd.git_head(checkout)[0] == commit
    result = vpd.check_training(checkout, None, lock_folders=[REPO_ROOT])
    commit_problems = [p for p in result["problems"] if p["what"].startswith("sd-scripts is at")]
    assert bool(commit_problems) is problem
    if problem:
        assert f"git -C {checkout} checkout {vpd.SD_SCRIPTS_COMMIT}" in result["fix_command"]
    if commit is None:
        assert any("commit unknown" in warning for warning in result["warnings"])
    # no venv in the fake checkout: the fix line creates one from the repository's lock
    assert f"-m venv {checkout / 'venv'}" in result["fix_command"]
    assert str(REPO_ROOT / "requirements-training-py") in result["fix_command"]


def test_training_venv_is_found_under_sd_scripts_and_its_packages_checked(vpd, tmp_path):
    """A real venv at SD_SCRIPTS/venv (no packages, two planted dist-infos): found automatically,
    every package checked in THAT interpreter, one fix line that installs the lock."""
    checkout = fake_checkout(tmp_path / "sd-scripts", head=vpd.SD_SCRIPTS_COMMIT)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(checkout / "venv")], check=True,
                   timeout=120, capture_output=True)
    python = vpd.find_training_python(checkout)
    assert python is not None
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    plant_dist_info(Path(site), "toml", "0.10.2", "toml")
    (Path(site) / "toml").mkdir()
    (Path(site) / "toml" / "__init__.py").write_text("", encoding="utf-8")
    plant_dist_info(Path(site), "accelerate", "1.11.0", "accelerate")
    proc = run_script(SCRIPT, "--sd-scripts", checkout, "--locks", REPO_ROOT, "--allow-no-gpu",
                      "--import-timeout", "60", "--json", tmp_path / "r.json", cwd=tmp_path, timeout=600,
                      env=clean_env())
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    training = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["training"]
    assert training["python"] == str(python) and training["commit"] == vpd.SD_SCRIPTS_COMMIT
    rows = {row["import"]: row for row in training["packages"]}
    assert rows["toml"]["status"] == "ok" and rows["toml"]["installed"] == "0.10.2"
    assert rows["accelerate"]["status"] == "WRONG VERSION" and rows["accelerate"]["installed"] == "1.11.0"
    assert rows["torch"]["status"] == "MISSING"
    version = training["python_version"]
    lock = REPO_ROOT / vpd.lock_name("training", version)
    assert training["fix_command"] == (f"{python} -m pip install --no-deps --require-hashes -r {lock}")
    assert any("`library` package" in warning for warning in training["warnings"])
    assert "Fix, training environment (one line):" in proc.stdout


def test_relative_sd_scripts_and_a_non_utf8_head_are_checked_from_the_current_folder(vpd, tmp_path):
    """--sd-scripts sds (relative, its venv at sds/.venv) from another working folder, and a HEAD
    that is not UTF-8: both environments are checked, the HEAD is reported, fix lines printed."""
    checkout = fake_checkout(tmp_path / "sds", head=vpd.SD_SCRIPTS_COMMIT)
    (checkout / ".git" / "HEAD").write_bytes(b"\xff\xfe\x00ref: refs/heads/\xe9\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(checkout / ".venv")], check=True,
                   timeout=120, capture_output=True)
    assert vpd.git_head(checkout)[0] is None and "unreadable .git/HEAD" in vpd.git_head(checkout)[1]
    proc = run_script(SCRIPT, "--sd-scripts", "sds", "--locks", REPO_ROOT, "--allow-no-gpu",
                      "--import-timeout", "60", "--json", "r.json", cwd=tmp_path, timeout=600, env=clean_env())
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "stopped" not in proc.stderr
    training = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["training"]
    assert training["python"] == str(tmp_path / "sds" / ".venv" / "bin" / "python")
    assert training["sd_scripts"] == str(tmp_path / "sds")
    assert {row["import"]: row["status"] for row in training["packages"]}["torch"] == "MISSING"
    assert not any("cannot run the training Python" in p["what"] for p in training["problems"])
    assert any("unreadable .git/HEAD" in warning for warning in training["warnings"])
    assert "Fix, training environment (one line):" in proc.stdout


@pytest.mark.skipif(os.name == "nt", reason="a shell script as the training Python")
def test_relative_training_python_is_the_file_in_the_current_folder_not_one_on_path(tmp_path):
    """--training-python ./py.sh must run ./py.sh, not a py.sh found on PATH."""
    decoy = tmp_path / "on-path"
    decoy.mkdir()
    (decoy / "py.sh").write_text(f"#!/bin/sh\ntouch {tmp_path / 'decoy-ran'}\nexit 1\n", encoding="utf-8")
    (decoy / "py.sh").chmod(0o755)
    work = tmp_path / "work"
    fake_checkout(work / "sd-scripts", head="48d368fa557731ad0488c07304dfeba8c07910eb")
    (work / "py.sh").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n', encoding="utf-8")
    (work / "py.sh").chmod(0o755)
    env = clean_env(PATH=f"{decoy}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = run_script(SCRIPT, "--sd-scripts", "sd-scripts", "--training-python", "./py.sh", "--allow-no-gpu",
                      "--import-timeout", "60", "--json", "r.json", cwd=work, timeout=600, env=env)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert not (tmp_path / "decoy-ran").exists(), "a py.sh on PATH ran instead of ./py.sh"
    training = json.loads((work / "r.json").read_text(encoding="utf-8"))["training"]
    assert training["python"] == str(work / "py.sh")
    assert {row["import"]: row for row in training["packages"]}["einops"]["status"] == "ok"


@pytest.mark.slow
def test_training_check_against_the_real_snapshot_and_the_dev_venv(vpd, tmp_path):
    """The shared sd-scripts snapshot (no .git) with this dev venv as --training-python: the
    imports really run in that interpreter; the dev pins differ from the training pins."""
    from sd_scripts_env import sd_scripts_dir

    result = vpd.check_training(sd_scripts_dir(), sys.executable, import_timeout=300,
                                lock_folders=[REPO_ROOT], allow_no_gpu=True)
    rows = {row["import"]: row for row in result["packages"]}
    assert rows["einops"]["status"] == "ok" and rows["voluptuous"]["importable"]
    assert rows["accelerate"]["status"] == "WRONG VERSION"  # dev 1.11.0, sd-scripts pins 1.6.0
    assert rows["torchvision"]["status"] == "MISSING"
    assert any("commit unknown" in warning for warning in result["warnings"])
    assert result["fix_command"].endswith("-r " + str(REPO_ROOT / vpd.lock_name("training", result["python_version"])))
