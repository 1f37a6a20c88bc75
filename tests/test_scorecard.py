"""Tests for evals/scorecard.py: configs, grading, the append-only history, --compare-to, --demo.

The sweep tests score real photos (../shared/faces) with the offline dlib backend; one embedding
cache in a temporary folder is shared by every run so each face is embedded once.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from conftest import REPO_ROOT, load_script, run_script

sc = load_script("evals/scorecard.py")
SCRIPT = "evals/scorecard.py"

SAME, PLASTIC, OTHERS, NOFACE = ("step1000_str0.8_cfg4", "step1000_str0.8_cfg7",
                                 "step1000_str0.4_cfg4", "step1000_str0.4_cfg7")


# --------------------------------------------------------------------------- fixtures

def _face_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The largest face, found by dlib's HOG detector on a copy at most 800 px on its long side."""
    import dlib
    scale = min(1.0, 800 / max(image.size))
    small = image.resize((round(image.width * scale), round(image.height * scale)))
    found = dlib.get_frontal_face_detector()(np.asarray(small), 1)
    assert found, "test photo without a detectable face"
    box = max(found, key=lambda rect: rect.width())
    return tuple(round(value / scale) for value in (box.left(), box.top(), box.right(),
                                                    box.bottom()))


@pytest.fixture(scope="session")
def sweeps(tmp_path_factory, faces_dir):
    """Real-photo sweeps: a 4-config sweep (folder layout), 3 single-config sweeps for --compare-to.

    References: Obama photos 1, 2, 4. Same person: crops of obama_3. Plastic: those crops heavily
    smoothed. Others: Biden, Kit Harington, Alex Lacamoire, Rose Leslie. No face: skimage photos.
    """
    root = tmp_path_factory.mktemp("scorecard_sweeps")
    photos = faces_dir / "photos"
    rng = np.random.default_rng(11)

    loaded = {}

    def face_crop(name: str) -> Image.Image:
        if name not in loaded:
            image = Image.open(photos / name).convert("RGB")
            loaded[name] = (image, _face_box(image))
        return sc._augment_face(*loaded[name], rng)

    reference = root / "reference"
    reference.mkdir()
    for name in ("obama_1.jpg", "obama_2.jpg", "obama_4.jpg"):
        face_crop(name).save(reference / name.replace(".jpg", ".png"))
    sweep = root / "sweep"
    others = ("biden_2.jpg", "kit_harington_2.jpg", "alex_lacamoire_2.jpg", "rose_leslie_1.jpg")
    faceless = [Image.open(sc._package_data("skimage", "data", name)).convert("RGB")
                for name in ("coffee.png", "rocket.jpg", "chelsea.png")]
    for index in range(4):
        for config, image in ((SAME, face_crop("obama_3.jpg")),
                              (PLASTIC, sc._plastic(face_crop("obama_3.jpg"))),
                              (OTHERS, face_crop(others[index]))):
            folder = sweep / config.split("_", 1)[0] / config.split("_", 1)[1]
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"img_{index + 1:03d}.png")
        if index < 3:
            folder = sweep / "step1000" / "str0.4_cfg7"
            folder.mkdir(parents=True, exist_ok=True)
            faceless[index].resize((384, 384)).save(folder / f"img_{index + 1:03d}.png")
    single = {}
    for label, names in (("good", ["obama_3.jpg"] * 6), ("equal", ["obama_3.jpg"] * 6),
                         ("worse", list(others) + ["rose_leslie_2.jpg", "kit_harington_3.jpg"])):
        folder = root / label
        folder.mkdir()
        for index, name in enumerate(names):
            face_crop(name).save(folder / f"str0.8_cfg4_seed{index}.png")
        single[label] = folder
    return {"root": root, "reference": reference, "sweep": sweep, "cache": root / "cache", **single}


def _score(sweeps, generated: Path, out: Path, *extra: str, version: str = "v1"):
    out.mkdir(parents=True, exist_ok=True)
    return run_script(SCRIPT, "--generated", generated, "--reference", sweeps["reference"],
                      "--lora-version", version, "--backend", "dlib",
                      "--cache-dir", sweeps["cache"],
                      "--history", out / "eval_history.jsonl", "--report", out / "latest_report.md",
                      "--no-progress", *extra, timeout=600)


def _lines(history: Path) -> list[str]:
    return history.read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------- in-process: configs

@pytest.mark.parametrize("path, expected", [
    ("step1500_str0.80_cfg4.0_seed42.png", "step1500_str0.80_cfg4.0"),
    ("step1500/str0.80_cfg4.0/img_001.png", "step1500_str0.80_cfg4.0"),
    ("step1500-str0.8-idx3.webp", "step1500_str0.8"),
    ("lora_str_0.8_cfg=4_batch2_n3.png", "str0.8_cfg4"),
    ("1024x1024_cfg4.5.png", "cfg4.5"),
    ("ComfyUI_00001_.png", "unparsed"),
    ("00012-1234567890.png", "unparsed"),
    ("IMG_1234.jpg", "unparsed"),
])
def test_config_name_from_path(tmp_path, path, expected):
    assert sc.image_config(tmp_path, path)[0] == expected


def test_config_from_png_text(tmp_path):
    a1111 = PngImagePlugin.PngInfo()
    a1111.add_text("parameters", "photo of sks woman <lora:sks_v3:0.75>\nNegative prompt: blurry\n"
                   "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 4.5, Seed: 1234, "
                   'Lora hashes: "sks_v3: 0123abcd", Version: v1.9.4')
    Image.new("RGB", (8, 8)).save(tmp_path / "00001-1234.png", pnginfo=a1111)
    comfy = PngImagePlugin.PngInfo()
    comfy.add_text("prompt", json.dumps({
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 25, "cfg": 3.5,
                                                   "model": ["10", 0]}},
        "10": {"class_type": "LoraLoader", "inputs": {"strength_model": 0.9, "strength_clip": 1.0}},
    }))
    Image.new("RGB", (8, 8)).save(tmp_path / "ComfyUI_00007_.png", pnginfo=comfy)
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert sc.image_config(tmp_path, "00001-1234.png")[0] == "str0.75_cfg4.5_steps30"
    assert sc.image_config(tmp_path, "ComfyUI_00007_.png")[0] == "str0.9_cfg3.5_steps25"
    assert sc.image_config(tmp_path, "plain.png")[0] == "unparsed"
    # A path that names a config wins over the PNG text.
    (tmp_path / "00001-1234.png").rename(tmp_path / "str0.5_cfg7_seed1.png")
    assert sc.image_config(tmp_path, "str0.5_cfg7_seed1.png")[0] == "str0.5_cfg7"


def test_identity_grade_and_score_formulas():
    assert sc.identity_value(None, 0.92, 0.96) == 0.0
    assert sc.identity_value(0.92, 0.92, 0.96) == pytest.approx(0.5)
    assert sc.identity_value(0.96, 0.92, 0.96) == pytest.approx(1.0)
    assert sc.identity_value(0.84, 0.92, 0.96) == 0.0  # another person on the dlib scale
    assert sc.combined_score(1.0, 1.0) == pytest.approx(1.0)
    assert sc.combined_score(0.0, 1.0) == 0.0  # wrong person: realism cannot rescue it
    assert sc.combined_score(1.0, 0.0) == pytest.approx(0.4)  # plastic
    grade = sc.grade_for
    assert grade(0.9, similarity_pass=True, detection_rate=1.0, min_detection_rate=0.8) == "A"
    assert grade(0.9, similarity_pass=False, detection_rate=1.0, min_detection_rate=0.8) == "C"
    assert grade(0.9, similarity_pass=True, detection_rate=0.5, min_detection_rate=0.8) == "D"
    assert grade(0.1, similarity_pass=True, detection_rate=1.0, min_detection_rate=0.8) == "F"


def test_default_paths_are_beside_the_script_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = sc.build_parser()
    args = parser.parse_args(["--generated", str(tmp_path), "--reference", str(tmp_path),
                              "--lora-version", "v1"])
    sc._check_args(parser, args)
    assert args.history == (REPO_ROOT / "evals" / "eval_history.jsonl").resolve()
    assert args.report == (REPO_ROOT / "evals" / "latest_report.md").resolve()
    assert args.backend == "insightface"


# --------------------------------------------------------------------------- in-process: history

APPEND_WORKER = """
import importlib.util, sys, time
from pathlib import Path
script, history, worker, ready, go = sys.argv[1:]
spec = importlib.util.spec_from_file_location("scorecard_under_test", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
Path(ready).touch()
deadline = time.monotonic() + 120
while not Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.002)
for line in range(3):
    module.append_history(Path(history), {"run_id": f"w{worker}_l{line}",
                                          "payload": "x" * 20000 + worker})
"""


def test_append_is_atomic_across_20_processes(tmp_path):
    """20 processes released together each append 3 lines of 20 kB: none lost, none interleaved."""
    history, go = tmp_path / "history.jsonl", tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", APPEND_WORKER, str(REPO_ROOT / SCRIPT),
                                 str(history), str(worker), str(tmp_path / f"ready{worker}"),
                                 str(go)]) for worker in range(20)]
    try:
        while not all((tmp_path / f"ready{worker}").exists() for worker in range(20)):
            assert all(process.poll() is None for process in workers), "a worker died early"
            time.sleep(0.01)
        go.touch()  # all appends start at once
        assert [process.wait(timeout=120) for process in workers] == [0] * 20
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
    lines = _lines(history)
    assert len(lines) == 60
    records = [json.loads(line) for line in lines]  # any interleaving breaks the JSON
    assert sorted(record["run_id"] for record in records) == sorted(
        f"w{worker}_l{line}" for worker in range(20) for line in range(3))
    assert all(record["payload"] == "x" * 20000 + record["run_id"][1:].split("_")[0]
               for record in records)


def test_corrupt_history_lines_are_skipped_never_deleted(tmp_path):
    history = tmp_path / "history.jsonl"
    good = json.dumps({"run_id": "a", "lora_version": "v1"})
    history.write_bytes(good.encode() + b"\n{not json\n\xff\xfe\n[1, 2]\n"
                        + b'{"run_id": "torn", "lora_ver')  # a torn last write: no newline
    messages = []
    assert [r["run_id"] for r in sc.read_history(history, report=messages.append)] == ["a"]
    assert len(messages) == 4 and all("skipped" in message for message in messages)
    sc.append_history(history, {"run_id": "b", "lora_version": "v2"})
    records = sc.read_history(history, report=messages.append)
    assert [r["run_id"] for r in records] == ["a", "b"]
    assert history.read_bytes().startswith(good.encode() + b"\n{not json\n\xff\xfe\n")
    assert sc.find_run(records, "v2")["run_id"] == "b"
    assert sc.find_run(records, "a")["lora_version"] == "v1"
    assert sc.find_run(records, "v9") is None


def test_a_run_id_already_in_the_history_is_refused_under_the_lock(tmp_path):
    history = tmp_path / "history.jsonl"
    first, second = tmp_path / "runs" / "same.json", tmp_path / "runs" / "same-again.json"
    sc.append_history(history, {"run_id": "same", "lora_version": "v1"}, first, "{}\n")
    with pytest.raises(sc.UsageError, match="--run-id same is already in"):
        sc.append_history(history, {"run_id": "same", "lora_version": "v2"}, second, "{}\n")
    assert [r["lora_version"] for r in sc.read_history(history)] == ["v1"]
    assert first.is_file() and not second.exists()


def test_bootstrap_interval():
    rng = np.random.default_rng(3)
    old = list(0.95 + 0.01 * rng.standard_normal(12))
    same = list(0.95 + 0.01 * rng.standard_normal(12))
    worse = list(0.86 + 0.01 * rng.standard_normal(12))
    low, high = sc.bootstrap_delta(same, old)
    assert low < 0 < high
    low, high = sc.bootstrap_delta(worse, old)
    assert high < 0 and low > -0.2
    assert sc.bootstrap_delta(worse, old) == (low, high)  # fixed seed: reproducible


# --------------------------------------------------------------------------- CLI

def test_help():
    result = run_script(SCRIPT, "--help")
    assert result.returncode == 0
    for flag in ("--generated", "--compare-to", "--demo", "--html", "--training-params"):
        assert flag in result.stdout


def test_usage_errors_exit_2(tmp_path):
    result = run_script(SCRIPT, "--reference", tmp_path, "--lora-version", "v1")
    assert result.returncode == 2 and "--generated" in result.stderr
    result = run_script(SCRIPT, "--demo", tmp_path / "d", "--generated", tmp_path)
    assert result.returncode == 2 and "--demo" in result.stderr
    result = run_script(SCRIPT, "--generated", tmp_path, "--reference", tmp_path,
                        "--lora-version", "v1", "--run-id", "../escape")
    assert result.returncode == 2 and "--run-id" in result.stderr
    result = run_script(SCRIPT, "--generated", tmp_path / "missing", "--reference", tmp_path,
                        "--lora-version", "v1")
    assert result.returncode == 2 and "missing" in result.stderr
    bad_params = tmp_path / "params.json"
    bad_params.write_text("{oops", encoding="utf-8")
    result = run_script(SCRIPT, "--generated", tmp_path, "--reference", tmp_path,
                        "--lora-version", "v1", "--training-params", bad_params)
    assert result.returncode == 2 and "--training-params" in result.stderr
    result = run_script(SCRIPT, "--generated", tmp_path, "--reference", tmp_path,
                        "--lora-version", "v2", "--history", tmp_path / "h.jsonl",
                        "--compare-to", "v1")
    assert result.returncode == 2 and "no run" in result.stderr
    assert not (tmp_path / "h.jsonl").exists()


@pytest.mark.slow
def test_sweep_of_real_photos_ranks_configs(sweeps, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"steps": 1000, "optimizer": "prodigy"}), encoding="utf-8")
    out = tmp_path / "out"
    result = _score(sweeps, sweeps["sweep"], out, "--training-params", params, "--notes", "real",
                    "--html", out / "report.html", "--json", out / "scorecard.json")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    for key in ("run_id", "timestamp", "lora_version", "face_similarity_mean",
                "face_similarity_pass", "skin_realism_mean", "overall_grade", "images_evaluated",
                "best_config", "worst_config"):
        assert key in card
    assert card["timestamp"].endswith("Z") and card["images_evaluated"] == 15
    assert card["backend"] == "dlib" and card["threshold"] == 0.92
    configs = {row["config"]: row for row in card["configs"]}
    assert set(configs) == {SAME, PLASTIC, OTHERS, NOFACE}
    assert card["best_config"] == SAME
    assert card["worst_config"] in (OTHERS, NOFACE)
    assert [row["config"] for row in card["configs"]][:2] == [SAME, PLASTIC]
    realisms = {name: row["realism_mean"] for name, row in configs.items()
                if row["realism_mean"] is not None}
    assert min(realisms, key=realisms.get) == PLASTIC
    assert configs[NOFACE]["detection_rate"] == 0 and configs[NOFACE]["similarity_mean"] == 0
    assert configs[SAME]["grade"] in "AB" and configs[OTHERS]["grade"] == "F"
    # The history: one line, the scorecard plus what the spec asks for; details in a sidecar.
    lines = _lines(out / "eval_history.jsonl")
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["training_params"] == {"steps": 1000, "optimizer": "prodigy"}
    assert record["notes"] == "real" and record["eval_scores"]["face_similarity"]["images"] == 15
    sidecar = out / record["details"]
    assert len(json.loads(sidecar.read_text(encoding="utf-8"))["images"]) == 15
    written = json.loads((out / "scorecard.json").read_text(encoding="utf-8"))
    assert written["run_id"] == card["run_id"]
    report = (out / "latest_report.md").read_text(encoding="utf-8")
    assert "Verdict" in report and f"`{SAME}`" in report and "no face found in 3" in report
    assert report.index(f"`{SAME}`") < report.index(f"`{OTHERS}`")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") >= 15 and "Strength x CFG" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained


@pytest.mark.slow
def test_compare_to_flags_regressions_not_noise(sweeps, tmp_path):
    out = tmp_path / "out"
    first = _score(sweeps, sweeps["good"], out, version="v1")
    assert first.returncode == 0, first.stderr
    worse = _score(sweeps, sweeps["worse"], out, "--compare-to", "v1", version="v2")
    assert worse.returncode == 1, worse.stderr
    comparison = json.loads(worse.stdout)["comparison"]
    assert comparison["verdict"] == "significant regression"
    assert comparison["interval"][1] < 0 and comparison["deltas"]["face_similarity_mean"] < 0
    equal = _score(sweeps, sweeps["equal"], out, "--compare-to",
                   json.loads(first.stdout)["run_id"], version="v3")
    assert equal.returncode == 0, equal.stderr
    assert json.loads(equal.stdout)["comparison"]["verdict"] == "within noise"
    assert len(_lines(out / "eval_history.jsonl")) == 3
    assert "Comparison with the previous version" in (out / "latest_report.md").read_text(
        encoding="utf-8")
    # Another backend's similarities are on another scale: refused before any model loads.
    other = run_script(SCRIPT, "--generated", sweeps["equal"], "--reference", sweeps["reference"],
                       "--lora-version", "v4", "--backend", "insightface",
                       "--history", out / "eval_history.jsonl", "--compare-to", "v1")
    assert other.returncode == 2 and "backend" in other.stderr
    assert len(_lines(out / "eval_history.jsonl")) == 3
    # Without the target's per-image sidecar the gate cannot decide: that is not a pass.
    (out / json.loads(first.stdout)["details"]).unlink()
    undecided = _score(sweeps, sweeps["worse"], out, "--compare-to", "v1", version="v5")
    assert undecided.returncode == 2, undecided.stderr
    assert "cannot decide" in undecided.stderr and "no per-image details" in undecided.stderr
    assert len(_lines(out / "eval_history.jsonl")) == 4


@pytest.mark.slow
def test_concurrent_cli_runs_each_append_one_line(sweeps, tmp_path):
    out = tmp_path / "out"
    warm = _score(sweeps, sweeps["good"], out, version="warm")  # fills the embedding cache
    assert warm.returncode == 0, warm.stderr
    history = out / "eval_history.jsonl"
    commands = [[sys.executable, str(REPO_ROOT / SCRIPT), "--generated", str(sweeps["good"]),
                 "--reference", str(sweeps["reference"]), "--lora-version", f"c{index}",
                 "--backend", "dlib", "--cache-dir", str(sweeps["cache"]),
                 "--history", str(history), "--report", str(out / f"report_{index}.md"),
                 "--no-progress"] for index in range(4)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, encoding="utf-8") for command in commands]
    results = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, [r[1] for r in results]
    records = [json.loads(line) for line in _lines(history)]
    assert sorted(record["lora_version"] for record in records) == ["c0", "c1", "c2", "c3", "warm"]
    assert len({record["run_id"] for record in records}) == 5
    assert all((out / record["details"]).is_file() for record in records)


@pytest.mark.slow
def test_demo_builds_and_ranks_the_sample_sweep(tmp_path, capsys):
    out = tmp_path / "demo"
    assert sc.main(["--demo", str(out), "--no-progress"]) == 0
    card = json.loads(capsys.readouterr().out)
    good, plastic, wrong, faceless = sc.DEMO_CONFIGS
    assert card["backend"] == "dlib" and card["lora_version"] == "demo"
    assert [row["config"] for row in card["configs"]][:2] == [good, plastic]
    assert card["best_config"] == good and card["worst_config"] in (wrong, faceless)
    for name in ("eval_history.jsonl", "latest_report.md", "report.html", "scorecard.json"):
        assert (out / name).is_file()
    assert len(_lines(out / "eval_history.jsonl")) == 1
    assert len(list((out / "sweep").glob("*.png"))) == 16
