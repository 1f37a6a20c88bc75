"""Tests for evals/scorecard.py: config identity, grading where every image counts, the
recommendation, the append-only history, output paths, --compare-to like with like, --demo.

The sweep tests score real photos (../shared/faces) with the offline dlib backend; one embedding
cache in a temporary folder is shared by every run, and every sweep is assembled from one pool of
crops, so each face is embedded once per session.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from conftest import REPO_ROOT, load_script, run_script
from local_proxy import RefusingProxy

sc = load_script("evals/scorecard.py")
SCRIPT = "evals/scorecard.py"
FACE_SCRIPT = "evals/face_similarity_eval.py"

SAME, PLASTIC, OTHERS, NOFACE = ("step1000_str0.80_cfg4.0", "step1000_str0.80_cfg7.0",
                                 "step1000_str0.40_cfg4.0", "step1000_str0.40_cfg7.0")
SPEC_KEYS = ("run_id", "timestamp", "lora_version", "face_similarity_mean", "face_similarity_pass",
             "skin_realism_mean", "overall_grade", "images_evaluated", "best_config",
             "worst_config")


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
def pool(tmp_path_factory, faces_dir):
    """Crops of real photos, each saved once as PNG; sweeps are made of copies of these files.

    References: Obama photos 1, 2, 4. same: 12 crops of obama_3. plastic: 4 of them heavily
    smoothed. others: 20 crops of Biden, Kit Harington, Alex Lacamoire, Rose Leslie. noface:
    4 skimage photos (no person).
    """
    root = tmp_path_factory.mktemp("scorecard_pool")
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
    files = {"same": [], "plastic": [], "others": [], "noface": []}
    store = root / "store"
    store.mkdir()
    for index in range(12):
        crop = face_crop("obama_3.jpg")
        crop.save(store / f"same_{index}.png")
        files["same"].append(store / f"same_{index}.png")
        if index < 4:
            sc._plastic(crop).save(store / f"plastic_{index}.png")
            files["plastic"].append(store / f"plastic_{index}.png")
    people = ("biden_2.jpg", "kit_harington_2.jpg", "alex_lacamoire_2.jpg", "rose_leslie_1.jpg",
              "rose_leslie_2.jpg", "kit_harington_3.jpg", "alex_lacamoire_3.jpg")
    for index in range(20):
        face_crop(people[index % len(people)]).save(store / f"other_{index}.png")
        files["others"].append(store / f"other_{index}.png")
    faceless = ("coffee.png", "rocket.jpg", "chelsea.png", "motorcycle_left.png")
    for index, name in enumerate(faceless):
        Image.open(sc._package_data("skimage", "data", name)).convert("RGB").resize(
            (384, 384)).save(store / f"noface_{index}.png")
        files["noface"].append(store / f"noface_{index}.png")
    return {"root": root, "reference": reference, "cache": root / "cache", **files}


def build(folder: Path, entries: list[tuple[str, Path]]) -> Path:
    """A sweep folder: (relative name, source file) pairs, copied byte for byte."""
    for name, source in entries:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return folder


@pytest.fixture(scope="session")
def sweeps(pool):
    root = pool["root"]
    sweep = root / "sweep"  # folder layout: step1000/str0.8_cfg4/img_001.png
    entries = []
    for index in range(4):
        for config, source in ((SAME, pool["same"][index]), (PLASTIC, pool["plastic"][index]),
                               (OTHERS, pool["others"][index])):
            step, rest = config.split("_", 1)
            entries.append((f"{step}/{rest}/img_{index + 1:03d}.png", source))
        if index < 3:
            entries.append((f"step1000/str0.40_cfg7.0/img_{index + 1:03d}.png",
                            pool["noface"][index]))
    build(sweep, entries)
    single = {}
    for label, sources in (("good", pool["same"][:6]), ("equal", pool["same"][6:12]),
                           ("worse", pool["others"][:6])):
        single[label] = build(root / label, [(f"str0.8_cfg4_seed{index}.png", source)
                                             for index, source in enumerate(sources)])
    return {"reference": pool["reference"], "sweep": sweep, "cache": pool["cache"], **single}


def _score(pool, generated: Path, out: Path, *extra, version: str = "v1", env=None,
           preexec=None):
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(REPO_ROOT / SCRIPT), "--generated", str(generated), "--reference",
            str(pool["reference"]), "--lora-version", version, "--backend", "dlib",
            "--cache-dir", str(pool["cache"]), "--history", str(out / "eval_history.jsonl"),
            "--report", str(out / "latest_report.md"), "--no-progress", *map(str, extra)]
    return subprocess.run(args, capture_output=True, text=True, encoding="utf-8", timeout=900,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONIOENCODING": "utf-8",
                                              **(env or {})}, preexec_fn=preexec)


def _lines(history: Path) -> list[str]:
    return history.read_text(encoding="utf-8").splitlines()


def _configs(card: dict) -> dict:
    return {row["config"]: row for row in card["configs"]}


# --------------------------------------------------------------------------- config identity

@pytest.mark.parametrize("path, expected", [
    ("step1500_str0.80_cfg4.0_seed42.png", "step1500_str0.80_cfg4.0"),
    ("step1500/str0.80_cfg4.0/img_001.png", "step1500_str0.80_cfg4.0"),
    ("step1500-str0.8-idx3.webp", "step1500_str0.80"),
    ("lora_str_0.8_cfg=4_batch2_n3.png", "str0.80_cfg4.0"),
    ("1024x1024_cfg4.5.png", "cfg4.5"),
    ("steps=2000/Strength_1/guidance-3.5/x.png", "step2000_str1.00_cfg3.5"),
    ("step001500_str0.825_cfg7.25.jpg", "step1500_str0.825_cfg7.25"),
    ("ComfyUI_00001_.png", "unparsed"),
    ("00012-1234567890.png", "unparsed"),
    ("IMG_1234.jpg", "unparsed"),
])
def test_config_name_from_path(tmp_path, path, expected):
    assert sc.image_config(tmp_path, path).config.name == expected


def test_four_spellings_of_one_config_are_one_config():
    spellings = ["str0.8_cfg4_seed1.png", "str0.80_cfg4.0_seed2.png", "cfg4.0_str0.80_seed3.png",
                 "STR0.8_CFG4_seed4.png", "Strength=0.8/Guidance_4/00001.png",
                 "lora0.80-scale4.jpg"]
    configs = {sc.parse_config(name) for name in spellings}
    assert len(configs) == 1
    (config,) = configs
    assert config.name == "str0.80_cfg4.0"
    assert config.settings == {"strength": 0.8, "cfg": 4.0}
    assert sc.DEFAULT_SCHEMA.describe(config) == "strength 0.80, CFG 4.0"
    # A stored name (an older run's spelling) reads back as the same config.
    assert sc.DEFAULT_SCHEMA.canonical_name("str0.8_cfg4") == "str0.80_cfg4.0"
    assert sc.parse_config("str0.8_cfg4") != sc.parse_config("str0.8_cfg4.5")


def test_generate_sweep_names_group_by_config_and_keep_their_index_tokens():
    """tools/generate_sweep.py names (issue 16): index tokens p03/seed2 are not config."""
    parsed = sc.DEFAULT_SCHEMA.parse_name("step1500_str0.80_cfg4.0_p03_seed2.png")
    assert parsed.config.name == "step1500_str0.80_cfg4.0"
    assert parsed.indices == {"prompt": 3, "seed": 2}
    baseline = sc.DEFAULT_SCHEMA.parse_name("baseline_cfg4.0_p03_seed2.png")
    assert baseline.config.name == "baseline_cfg4.0" and baseline.config.baseline
    assert baseline.indices == {"prompt": 3, "seed": 2}
    assert sc.DEFAULT_SCHEMA.describe(baseline.config) == "the no-LoRA baseline at CFG 4.0"
    assert sc.parse_config("noLoRA_cfg4.png") == baseline.config
    for name in ("00001.png", "img_00001.png", "p03_seed2.png"):
        assert not sc.parse_config(name).parsed, name


def test_unknown_word_digit_tokens_are_ignored_unless_named():
    parsed = sc.DEFAULT_SCHEMA.parse_name("ohwx_v3/step1500_str0.8_cfg4_seed1.png")
    assert parsed.config.name == "step1500_str0.80_cfg4.0" and parsed.ignored == ("v3",)
    named = sc.ConfigSchema(["v"]).parse("ohwx_v3/step1500_str0.8_cfg4_seed1.png")
    assert named.name == "step1500_str0.80_cfg4.0_v3" and named.settings["v"] == 3
    # A counter after a separator is no config and no warning.
    assert sc.DEFAULT_SCHEMA.parse_name("ComfyUI_00001_.png").ignored == ()
    # Values outside a key's range are not that key: a width, a kohya step counter.
    assert sc.parse_config("w1024_str1.0.png").name == "str1.00"
    assert sc.parse_config("lora_000500_00_20240101_42.png").name == "unparsed"
    with pytest.raises(ValueError):
        sc.ConfigSchema(["v2"])


def test_rendering_round_trips_and_every_axis_sorts_as_numbers():
    assert sc.format_number(0.8, 2) == "0.80" and sc.format_number(1500.0) == "1500"
    assert sc.format_number(0.0001) == "0.0001" and sc.format_number(-0.0, 2) == "0.00"
    assert sc.format_number(4.25, 1) == "4.25" and sc.format_number(1e-05) == "0.00001"
    schema = sc.DEFAULT_SCHEMA
    names = ["step2000_str0.8", "step500_str0.8", "step1000_str1.0", "step1000_str0.8",
             "step1500_str0.8", "str0.8", "baseline_cfg4", "step1000_str0.8_cfg10",
             "step1000_str0.8_cfg7.5", "unparsed"]
    ordered = [config.name for config in sorted(map(schema.parse, names), key=schema.sort_key)]
    assert ordered == ["baseline_cfg4.0", "str0.80", "step500_str0.80", "step1000_str0.80",
                       "step1000_str0.80_cfg7.5", "step1000_str0.80_cfg10.0",
                       "step1000_str1.00", "step1500_str0.80", "step2000_str0.80", "unparsed"]
    for name in ordered:
        assert schema.parse(name).name == name  # the canonical name reads back unchanged


def test_config_from_png_text(tmp_path):
    a1111 = PngImagePlugin.PngInfo()
    a1111.add_text("parameters", "photo of sks woman <lora:sks_v3:0.75>\nNegative prompt: blurry\n"
                   "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 4.5, Seed: 1234, "
                   'Lora hashes: "sks_v3: 0123abcd", Version: v1.9.4')
    Image.new("RGB", (40, 40)).save(tmp_path / "00001-1234.png", pnginfo=a1111)
    comfy = PngImagePlugin.PngInfo()
    comfy.add_text("prompt", json.dumps({
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 25, "cfg": 3.5,
                                                   "model": ["10", 0]}},
        "10": {"class_type": "LoraLoader", "inputs": {"strength_model": 0.9, "strength_clip": 1.0}},
    }))
    Image.new("RGB", (40, 40)).save(tmp_path / "ComfyUI_00007_.png", pnginfo=comfy)
    Image.new("RGB", (40, 40)).save(tmp_path / "plain.png")
    assert sc.image_config(tmp_path, "00001-1234.png").config.name == "str0.75_cfg4.5_sampling30"
    assert sc.image_config(tmp_path, "ComfyUI_00007_.png").config.name == \
        "str0.90_cfg3.5_sampling25"
    assert sc.image_config(tmp_path, "plain.png").config.name == "unparsed"
    # A path that names a config wins over the PNG text.
    (tmp_path / "00001-1234.png").rename(tmp_path / "str0.5_cfg7_seed1.png")
    assert sc.image_config(tmp_path, "str0.5_cfg7_seed1.png").config.name == "str0.50_cfg7.0"


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


def test_bom_torn_and_corrupt_history_lines_are_reported_never_deleted(tmp_path):
    history = tmp_path / "history.jsonl"
    first = json.dumps({"run_id": "a", "lora_version": "v1", "timestamp": "2026-01-02T03:04:05Z"})
    history.write_bytes(sc.UTF8_BOM + first.encode() + b"\n{not json\n\xff\xfe\n[1, 2]\n"
                        + b'{"run_id": "torn", "lora_ver')  # a torn last write: no newline
    messages = []
    records = sc.read_history(history, report=messages.append)
    assert [r["run_id"] for r in records] == ["a"]  # the BOM no longer hides the first run
    assert any("byte order mark" in message for message in messages)
    assert sum("corrupt history line" in message for message in messages) == 2
    assert any("history line without a run_id" in message for message in messages)
    assert any("torn last line" in message for message in messages)
    # The run id check sees the first line: a duplicate is refused, nothing is written.
    with pytest.raises(sc.UsageError, match="--run-id a is already in"):
        sc.append_history(history, {"run_id": "a", "lora_version": "v9"},
                          tmp_path / "runs" / "a.json", "{}\n")
    assert not (tmp_path / "runs" / "a.json").exists()
    before = history.read_bytes()
    sc.append_history(history, {"run_id": "b", "lora_version": "v2"})
    after = history.read_bytes()
    assert after.startswith(before) and after[len(before):len(before) + 1] == b"\n"
    records = sc.read_history(history, report=messages.append)
    assert [r["run_id"] for r in records] == ["a", "b"]
    assert sc.find_run(records, "v2")["run_id"] == "b"
    assert sc.find_run(records, "a")["lora_version"] == "v1"
    assert sc.find_run(records, "v9") is None


def test_zone_less_timestamps_are_read_as_utc_with_a_warning(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps({"run_id": "naive", "timestamp": "2026-01-02T03:04:05"}) + "\n"
                       + json.dumps({"run_id": "offset", "timestamp": "2026-01-02T05:04:05+02:00"})
                       + "\n" + json.dumps({"run_id": "junk", "timestamp": "yesterday"}) + "\n",
                       encoding="utf-8")
    messages = []
    records = {r["run_id"]: r for r in sc.read_history(history, report=messages.append)}
    assert records["naive"]["timestamp"] == "2026-01-02T03:04:05Z"
    assert records["offset"]["timestamp"] == "2026-01-02T03:04:05Z"
    assert records["junk"]["timestamp"] == "yesterday"
    assert any("no time zone; read as UTC" in message for message in messages)
    assert any("not ISO 8601" in message for message in messages)
    moment, note = sc.parse_timestamp("2026-01-02T03:04:05")
    assert moment.tzinfo is not None and "UTC" in note


def test_a_run_id_already_in_the_history_is_refused_and_a_sidecar_never_overwritten(tmp_path):
    history = tmp_path / "history.jsonl"
    first, second = tmp_path / "runs" / "same.json", tmp_path / "runs" / "same-again.json"
    sc.append_history(history, {"run_id": "same", "lora_version": "v1"}, first, "{}\n")
    with pytest.raises(sc.UsageError, match="--run-id same is already in"):
        sc.append_history(history, {"run_id": "same", "lora_version": "v2"}, second, "{}\n")
    assert [r["lora_version"] for r in sc.read_history(history)] == ["v1"]
    assert first.is_file() and not second.exists()
    orphan = tmp_path / "runs" / "orphan.json"
    orphan.write_text('{"keep": true}\n', encoding="utf-8")
    with pytest.raises(sc.UsageError, match="already exists"):
        sc.append_history(history, {"run_id": "orphan"}, orphan, "{}\n")
    assert orphan.read_text(encoding="utf-8") == '{"keep": true}\n'


def test_a_failed_history_write_leaves_no_sidecar_and_no_line(tmp_path):
    """/dev/full takes the history line: the write fails (ENOSPC) and the sidecar is removed."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux)")
    sidecar = tmp_path / "runs" / "r1.json"
    report = tmp_path / "report.md"
    with pytest.raises(sc.OutputError) as caught:
        sc.append_history(Path("/dev/full"), {"run_id": "r1"}, sidecar, "{}\n",
                          [("--report", report, "# report\n")])
    assert caught.value.flag == "--history" and "no partial line" in str(caught.value)
    assert not sidecar.exists() and report.is_file()  # reports first, then sidecar, line last


def test_output_path_problems_are_found_before_any_work(tmp_path):
    regular = tmp_path / "file.txt"
    regular.write_text("x", encoding="utf-8")
    (tmp_path / "dangling.md").symlink_to(tmp_path / "nowhere" / "x.md")
    assert sc.output_path_problem(tmp_path / "new" / "deeper" / "report.md") is None
    assert "is a folder" in sc.output_path_problem(tmp_path)
    assert "is not a folder" in sc.output_path_problem(regular / "report.md")
    assert "is not a folder" in sc.output_path_problem(regular / "a" / "b" / "report.md")
    assert "dangling" in sc.output_path_problem(tmp_path / "dangling.md")
    assert not (tmp_path / "new").exists()  # nothing created
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        problem = sc.output_path_problem(readonly / "report.md")
        if getattr(os, "geteuid", lambda: 1)() == 0:  # root writes anyway: a folder no one can
            problem = sc.output_path_problem(Path("/sys/scorecard-probe.md"))
        assert problem is not None and "no file can be created" in problem
    finally:
        readonly.chmod(0o755)


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


def _rows(config: str, similarities: list, threshold: float = 0.92) -> list[dict]:
    rows = []
    for index, similarity in enumerate(similarities):
        rows.append({"path": f"{config}_seed{index}.png", "config": config,
                     "detected": similarity is not None, "similarity": similarity,
                     "passed": similarity is not None and similarity >= threshold,
                     "realism": 0.8 if similarity is not None else None,
                     "realism_relative": 0.9 if similarity is not None else None,
                     "identity": 0.5})
    return rows


def test_compare_reads_old_sidecars_like_with_like():
    """An older sidecar (config `str0.8_cfg4`, unreadable images listed apart) meets this run's
    canonical `str0.80_cfg4.0`; its unreadable images count as failed images."""
    old_details = {"images": _rows("str0.8_cfg4", [0.95] * 6),
                   "unreadable": [{"path": f"str0.8_cfg4_seed{n}.png", "error": "broken"}
                                  for n in range(6, 10)]}
    rows = sc.comparison_images(old_details)
    assert {row["config"] for row in rows} == {"str0.80_cfg4.0"} and len(rows) == 10
    assert sum(row["passed"] for row in rows) == 6
    new_same = {"images": _rows("str0.80_cfg4.0", [0.95] * 6 + [None] * 4)}
    new_worse = {"images": _rows("str0.80_cfg4.0", [0.95] * 1 + [0.85] * 9)}
    old = {"run_id": "old", "threshold": 0.92, "best_config": "str0.8_cfg4"}
    new = {"run_id": "new", "threshold": 0.92, "best_config": "str0.80_cfg4.0"}
    same = sc.compare_runs(new, new_same, old, old_details)
    assert same["verdict"] == "within noise or better", same
    assert same["old_best_config"] == "str0.80_cfg4.0"
    worse = sc.compare_runs(new, new_worse, old, old_details)
    assert worse["verdict"] == "clearly worse" and worse["significant_regression"]
    assert worse["comparisons"][0]["metrics"]["pass_rate"]["verdict"] == "clearly worse"
    few = sc.compare_runs(new, {"images": _rows("str0.80_cfg4.0", [0.95] * 3)}, old, old_details)
    assert few["verdict"] == "cannot decide" and few["images_needed"] == 2
    assert sc.compare_runs(new, None, old, old_details)["verdict"] == "cannot decide"


# --------------------------------------------------------------------------- CLI: fast

def test_help():
    result = run_script(SCRIPT, "--help")
    assert result.returncode == 0
    for flag in ("--generated", "--compare-to", "--demo", "--html", "--training-params",
                 "--download-pack", "--config-key"):
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
    result = run_script(SCRIPT, "--generated", tmp_path, "--reference", tmp_path,
                        "--lora-version", "v1", "--config-key", "v2")
    assert result.returncode == 2 and "--config-key" in result.stderr
    result = run_script(SCRIPT, "--generated", tmp_path, "--reference", tmp_path,
                        "--lora-version", "v1", "--backend", "dlib", "--download-pack")
    assert result.returncode == 2
    assert "error: --download-pack applies only to --backend insightface" in result.stderr
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


def _bad_output(tmp_path: Path, case: str) -> tuple[list, str]:
    regular = tmp_path / "regular.txt"
    regular.write_text("x", encoding="utf-8")
    history = tmp_path / "out" / "eval_history.jsonl"
    if case == "report_under_file":
        return ["--history", history, "--report", regular / "report.md"], "--report"
    if case == "html_under_file":
        return ["--history", history, "--html", regular / "sub" / "report.html"], "--html"
    if case == "json_under_file":
        return ["--history", history, "--json", regular / "card.json"], "--json"
    if case == "history_under_file":
        return ["--history", regular / "eval_history.jsonl"], "--history"
    if case == "history_is_folder":
        (tmp_path / "hist").mkdir()
        return ["--history", tmp_path / "hist"], "--history"
    if case == "sidecar_folder_is_file":
        history.parent.mkdir(parents=True)
        (history.parent / "runs").write_text("not a folder", encoding="utf-8")
        return ["--history", history], "--history"
    if case == "history_read_only":
        history.parent.mkdir(parents=True)
        history.write_text("", encoding="utf-8")
        history.chmod(0o444)
        if getattr(os, "geteuid", lambda: 1)() == 0:  # root ignores the bits: a file no one can
            return ["--history", Path("/proc/version")], "--history"
        return ["--history", history], "--history"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["report_under_file", "html_under_file", "json_under_file",
                                  "history_under_file", "history_is_folder",
                                  "sidecar_folder_is_file", "history_read_only"])
def test_bad_output_paths_exit_2_naming_the_flag_before_any_evaluation(tmp_path, case):
    generated, reference = tmp_path / "gen", tmp_path / "ref"
    for folder in (generated, reference):
        folder.mkdir()
        Image.new("RGB", (64, 64), "gray").save(folder / "x.png")
    args, flag = _bad_output(tmp_path, case)
    cache = tmp_path / "cache"
    started = time.monotonic()
    result = run_script(SCRIPT, "--generated", generated, "--reference", reference,
                        "--lora-version", "v1", "--backend", "dlib", "--cache-dir", cache,
                        "--no-progress", *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} "), result.stderr
    assert "nothing was evaluated or written" in lines[0]
    assert result.stdout == "" and not cache.exists()  # no model ran, no image was read
    assert not (tmp_path / "out" / "latest_report.md").exists()
    assert time.monotonic() - started < 60


# --------------------------------------------------------------------------- CLI: real sweeps

@pytest.mark.slow
def test_sweep_of_real_photos_ranks_configs_and_leads_with_a_recommendation(sweeps, pool,
                                                                           tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"steps": 1000, "optimizer": "prodigy"}), encoding="utf-8")
    out = tmp_path / "out"
    result = _score(pool, sweeps["sweep"], out, "--training-params", params, "--notes", "real",
                    "--html", out / "report.html", "--json", out / "scorecard.json")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    for key in SPEC_KEYS + ("best_config_grade", "best_config_interval", "recommendation"):
        assert key in card
    assert card["timestamp"].endswith("Z") and card["images_evaluated"] == 15
    assert card["backend"] == "dlib" and card["threshold"] == 0.92
    configs = _configs(card)
    assert set(configs) == {SAME, PLASTIC, OTHERS, NOFACE}
    assert card["best_config"] == SAME and card["best_config_grade"] == configs[SAME]["grade"]
    assert card["worst_config"] in (OTHERS, NOFACE)
    assert [row["config"] for row in card["configs"]][:2] == [SAME, PLASTIC]
    realisms = {name: row["realism_mean"] for name, row in configs.items()
                if row["realism_mean"] is not None}
    assert min(realisms, key=realisms.get) == PLASTIC
    assert configs[NOFACE]["detection_rate"] == 0 and configs[NOFACE]["similarity_mean"] == 0
    assert configs[SAME]["grade"] in "AB" and configs[OTHERS]["grade"] == "F"
    assert configs[NOFACE]["grade_basis"] == "3 images: 0 with a face, 3 without"
    interval = card["best_config_interval"]
    low, high = interval["score"]
    assert low <= configs[SAME]["score"] <= high and interval["confidence"] == 0.95
    assert interval["face_similarity_mean"][0] <= configs[SAME]["similarity_mean"]
    best = card["recommendation"]
    assert best["words"] == "step 1000, strength 0.80, CFG 4.0"
    assert best["runner_up"]["config"] == PLASTIC and not best["runner_up"]["within_noise"]
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
    first = report.split("\n\n")[1]
    assert first.startswith("**Recommendation:** use step 1000, strength 0.80, CFG 4.0 "
                            f"(`{SAME}`): grade {configs[SAME]['grade']} on 4 images")
    assert "**How sure:**" in report and "**Whole sweep (context):** grade" in report
    assert report.index("**Recommendation:**") < report.index("**Whole sweep (context):**")
    assert "no face found in 3" in report
    assert report.index(f"`{SAME}`") < report.index(f"`{OTHERS}`")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") >= 15 and "Strength x CFG" in page
    assert "Recommendation:" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained


@pytest.mark.slow
def test_two_good_three_corrupt_grades_no_better_than_the_face_eval_allows(pool, tmp_path):
    folder = tmp_path / "gen"
    build(folder, [("str0.8_cfg4_seed1.png", pool["same"][0]),
                   ("str0.8_cfg4_seed2.png", pool["same"][1])])
    (folder / "str0.8_cfg4_seed3.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    (folder / "str0.8_cfg4_seed4.png").write_bytes(pool["same"][2].read_bytes()[:600])  # torn
    (folder / "str0.8_cfg4_seed5.png").write_bytes(b"")
    face = run_script(FACE_SCRIPT, "--generated", folder, "--reference", pool["reference"],
                      "--backend", "dlib", "--cache-dir", pool["cache"])
    assert face.returncode == 1 and "RESULT: FAIL" in face.stdout  # detection rate 0.40
    result = _score(pool, folder, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    # FAIL caps a grade at C and a detection rate under 0.8 at D.
    assert card["overall_grade"] in "DF" and card["best_config_grade"] in "DF"
    assert card["images_evaluated"] == 5 and card["images_failed"] == 3
    assert card["images_unreadable"] == 3 and not card["face_similarity_pass"]
    (row,) = card["configs"]
    assert row["grade_basis"] == "5 images: 2 with a face, 3 unreadable"
    assert row["pass_rate"] == pytest.approx(0.4) and row["detection_rate"] == pytest.approx(0.4)
    assert {item["path"] for item in card["failed_images"]} == {
        f"str0.8_cfg4_seed{n}.png" for n in (3, 4, 5)}
    report = (tmp_path / "out" / "latest_report.md").read_text(encoding="utf-8")
    assert "grade A" not in report and "on 5 images: 2 with a face, 3 unreadable" in report
    for n in (3, 4, 5):
        assert f"`str0.8_cfg4_seed{n}.png`" in report.split("## Failed images")[1]


@pytest.mark.slow
def test_four_spellings_group_as_one_and_steps_sort_as_numbers(pool, tmp_path):
    spellings = build(tmp_path / "spellings", [
        ("str0.8_cfg4_seed1.png", pool["same"][0]), ("str0.80_cfg4.0_seed2.png", pool["same"][1]),
        ("cfg4.0_str0.80_seed3.png", pool["same"][2]), ("STR0.8/CFG4/seed4.png", pool["same"][3]),
        ("ohwx_v3_str0.4_cfg4_seed1.png", pool["others"][0]),
        ("ohwx_v3_str0.40_cfg4_seed2.png", pool["others"][1])])
    result = _score(pool, spellings, tmp_path / "out1")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    configs = _configs(card)
    assert set(configs) == {"str0.80_cfg4.0", "str0.40_cfg4.0"}
    assert configs["str0.80_cfg4.0"]["images"] == 4 and card["best_config"] == "str0.80_cfg4.0"
    assert any("ignored: v (2 images)" in warning and "--config-key" in warning
               for warning in card["warnings"])
    # Steps 500..2000 with the same images each: every score ties, settings order decides.
    steps = build(tmp_path / "steps", [(f"step{step}_str0.8_seed{index}.png", pool["same"][index])
                                       for step in (1000, 2000, 500, 1500) for index in range(2)])
    result = _score(pool, steps, tmp_path / "out2", "--html", tmp_path / "out2" / "r.html")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    expected = ["step500_str0.80", "step1000_str0.80", "step1500_str0.80", "step2000_str0.80"]
    assert card["config_order"] == expected
    assert [row["config"] for row in card["configs"]] == expected  # equal scores: numeric order
    assert card["best_config"] == "step500_str0.80"
    report = (tmp_path / "out2" / "latest_report.md").read_text(encoding="utf-8")
    table = report.split("## Configs, ranked")[1]
    assert [table.index(f"`{name}`") for name in expected] == sorted(
        table.index(f"`{name}`") for name in expected)


@pytest.mark.slow
def test_degenerate_images_and_dangling_links_are_failed_images_never_a_crash(pool, tmp_path):
    """A 1000x1 / 5000x5 banner, 1x100000 and 64,000,000x1 PNGs, a dangling link: error rows.

    The run is limited to 6 GiB of address space: the 56 GiB and 8 PiB allocations these files
    once caused would fail it.
    """
    if sys.platform != "linux":
        pytest.skip("the address-space limit needs Linux")
    import resource
    folder = build(tmp_path / "gen", [(f"str0.8_cfg4_seed{n}.png", pool["same"][n])
                                      for n in range(3)])
    Image.new("RGB", (1000, 1), "white").save(folder / "str0.8_cfg4_banner.png")
    Image.new("RGB", (5000, 5), "white").save(folder / "str0.8_cfg4_strip.png")
    Image.new("1", (1, 100000)).save(folder / "str0.8_cfg4_tall.png")
    Image.new("1", (64_000_000, 1)).save(folder / "str0.8_cfg4_wide.png")
    Image.new("RGB", (2000, 40), "white").save(folder / "str0.8_cfg4_ribbon.png")
    (folder / "str0.8_cfg4_gone.png").symlink_to(tmp_path / "deleted.png")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    result = _score(pool, folder, tmp_path / "out", preexec=limit)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    card = json.loads(result.stdout)
    failed = {item["path"]: item["reason"] for item in card["failed_images"]}
    assert set(failed) == {f"str0.8_cfg4_{name}.png"
                           for name in ("banner", "strip", "tall", "wide", "ribbon", "gone")}
    assert "under 32 px" in failed["str0.8_cfg4_banner.png"]
    assert "under 32 px" in failed["str0.8_cfg4_strip.png"]
    assert "aspect ratio beyond 1:20" in failed["str0.8_cfg4_ribbon.png"]
    assert "1x100000" in failed["str0.8_cfg4_tall.png"]
    assert "64000000x1" in failed["str0.8_cfg4_wide.png"]
    assert "dangling symbolic link" in failed["str0.8_cfg4_gone.png"]
    (row,) = card["configs"]
    assert row["images"] == 9 and row["grade_basis"] == "9 images: 3 with a face, 6 unreadable"


@pytest.mark.slow
def test_copies_of_training_photos_are_flagged_and_excluded(pool, tmp_path):
    folder = build(tmp_path / "gen", [(f"str0.8_cfg4_seed{n}.png", pool["same"][n])
                                      for n in range(3)])
    shutil.copyfile(pool["reference"] / "obama_1.png", folder / "str0.8_cfg4_seed8.png")
    Image.open(pool["reference"] / "obama_2.png").save(folder / "str0.8_cfg4_seed9.bmp")
    result = _score(pool, folder, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["images_evaluated"] == 3 and card["images_excluded"] == 2
    assert {item["path"]: item["identical_to_reference"] for item in card["excluded_images"]} == {
        "str0.8_cfg4_seed8.png": "obama_1.png", "str0.8_cfg4_seed9.bmp": "obama_2.png"}
    # The figures rest on the three generations alone.
    details = json.loads((tmp_path / "out" / card["details"]).read_text(encoding="utf-8"))
    similarities = [image["similarity"] for image in details["images"]]
    assert len(similarities) == 3 and card["configs"][0]["images"] == 3
    assert card["face_similarity_mean"] == pytest.approx(np.mean(similarities), abs=1e-6)
    assert sum("identical to the reference" in warning for warning in card["warnings"]) == 2


@pytest.mark.slow
def test_an_unwritable_cache_is_one_warning(pool, tmp_path):
    folder = build(tmp_path / "gen", [(f"str0.8_cfg4_seed{n}.png", pool["same"][n])
                                      for n in range(2)])
    blocker = tmp_path / "cache_is_a_file"
    blocker.write_text("x", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    result = run_script(SCRIPT, "--generated", folder, "--reference", pool["reference"],
                        "--lora-version", "v1", "--backend", "dlib", "--cache-dir", blocker,
                        "--history", out / "h.jsonl", "--report", out / "r.md")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("embedding cache") == 1, result.stderr
    assert blocker.read_text(encoding="utf-8") == "x"


@pytest.mark.slow
def test_compare_to_pass_rate_62_to_17_percent_exits_1(pool, tmp_path):
    """Acceptance: v2's pass rate falls from 62% to 17% while its mean similarity rises (other
    people score 0.85 where v1 had faceless images at 0): the like-with-like gate exits 1."""
    configs = ("step1000_str0.8_cfg4", "step1000_str1.0_cfg4", "step2000_str0.8_cfg4",
               "step2000_str1.0_cfg4")
    same, others, noface = pool["same"], pool["others"], pool["noface"]
    v1, v2 = [], []
    for index, config in enumerate(configs):
        passing = 4 if index < 3 else 3
        sources = [same[(3 * index + n) % 12] for n in range(passing)]
        sources += [noface[n % 4] for n in range(6 - passing)]
        v1 += [(f"{config}_seed{n}.png", source) for n, source in enumerate(sources)]
        sources = [same[index]] + [others[5 * index + n] for n in range(5)]
        v2 += [(f"{config}_seed{n}.png", source) for n, source in enumerate(sources)]
    out = tmp_path / "out"
    first = _score(pool, build(tmp_path / "v1", v1), out, version="v1")
    assert first.returncode == 0, first.stderr
    second = _score(pool, build(tmp_path / "v2", v2), out, "--compare-to", "v1", version="v2")
    old, new = json.loads(first.stdout), json.loads(second.stdout)
    assert old["pass_rate"] == pytest.approx(15 / 24, abs=1e-5)
    assert new["pass_rate"] == pytest.approx(4 / 24, abs=1e-5)
    assert new["face_similarity_mean"] > old["face_similarity_mean"]  # the old gate saw a gain
    assert second.returncode == 1, second.stderr
    comparison = new["comparison"]
    assert comparison["verdict"] == "clearly worse" and comparison["significant_regression"]
    pooled = next(item for item in comparison["comparisons"] if item["kind"] == "pooled")
    assert pooled["metrics"]["pass_rate"]["verdict"] == "clearly worse"
    assert pooled["metrics"]["pass_rate"]["interval"][1] < 0
    assert "REGRESSION" in second.stderr and "pass rate" in second.stderr
    report = (out / "latest_report.md").read_text(encoding="utf-8")
    assert "**clearly worse**" in report and "| pass rate |" in report


@pytest.mark.slow
def test_compare_to_noise_undecided_and_refusals(sweeps, pool, tmp_path):
    out = tmp_path / "out"
    first = _score(pool, sweeps["good"], out, version="v1")
    assert first.returncode == 0, first.stderr
    worse = _score(pool, sweeps["worse"], out, "--compare-to", "v1", version="v2")
    assert worse.returncode == 1, worse.stderr
    assert json.loads(worse.stdout)["comparison"]["verdict"] == "clearly worse"
    equal = _score(pool, sweeps["equal"], out, "--compare-to",
                   json.loads(first.stdout)["run_id"], version="v3")
    assert equal.returncode == 0, equal.stderr
    assert json.loads(equal.stdout)["comparison"]["verdict"] == "within noise or better"
    assert len(_lines(out / "eval_history.jsonl")) == 3
    # Too few images in the best config: cannot decide, and it says how many it needs.
    few = build(tmp_path / "few", [(f"str0.8_cfg4_seed{n}.png", pool["same"][n])
                                   for n in range(3)])
    undecided = _score(pool, few, out, "--compare-to", "v1", version="v4")
    assert undecided.returncode == 2, undecided.stderr
    assert "cannot decide" in undecided.stderr and "2 more image" in undecided.stderr
    assert len(_lines(out / "eval_history.jsonl")) == 4  # recorded all the same
    # Another backend's similarities are on another scale: refused before any model loads.
    other = run_script(SCRIPT, "--generated", sweeps["equal"], "--reference", pool["reference"],
                       "--lora-version", "v5", "--backend", "insightface",
                       "--history", out / "eval_history.jsonl", "--compare-to", "v1")
    assert other.returncode == 2 and "backend" in other.stderr
    # A history written by hand or another tool: a BOM and a zone-less timestamp still compare.
    history = out / "eval_history.jsonl"
    lines = _lines(history)
    first_record = json.loads(lines[0])
    first_record["timestamp"] = first_record["timestamp"].rstrip("Z")
    history.write_bytes(sc.UTF8_BOM + "\n".join([json.dumps(first_record)] + lines[1:]).encode()
                        + b"\n")
    naive = _score(pool, sweeps["equal"], out, "--compare-to", first_record["run_id"],
                   version="v6")
    assert naive.returncode == 0, naive.stderr
    assert "read as UTC" in naive.stderr and "byte order mark" in naive.stderr
    duplicate = _score(pool, sweeps["equal"], out, "--run-id", first_record["run_id"],
                       version="v7")
    assert duplicate.returncode == 2 and "already in" in duplicate.stderr
    # Without the target's per-image sidecar the gate cannot decide: that is not a pass.
    (out / first_record["details"]).unlink()
    nodetails = _score(pool, sweeps["worse"], out, "--compare-to", first_record["run_id"],
                       version="v8")
    assert nodetails.returncode == 2, nodetails.stderr
    assert "cannot decide" in nodetails.stderr and "no per-image details" in nodetails.stderr


@pytest.mark.slow
def test_full_disk_leaves_no_partial_line_and_no_orphan(sweeps, pool, tmp_path):
    """RLIMIT_FSIZE caps every file this run writes: first below the report's size, then just
    above the history's size (a partial append), as a full disk would."""
    if sys.platform != "linux":
        pytest.skip("needs RLIMIT_FSIZE (POSIX) and Linux's short-write behaviour")
    import resource
    out = tmp_path / "out"
    warm = _score(pool, sweeps["good"], out, version="warm")
    assert warm.returncode == 0, warm.stderr
    history = out / "eval_history.jsonl"
    line = _lines(history)[0]
    padding = [json.dumps({**json.loads(line), "run_id": f"pad{n}", "details": None})
               for n in range(60)]
    with open(history, "a", encoding="utf-8") as handle:
        handle.write("\n".join(padding) + "\n")
    before = history.read_bytes()

    def capped(size):
        return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    small = _score(pool, sweeps["good"], out, "--run-id", "tiny", preexec=capped(200),
                   version="v1")
    assert small.returncode == 2, small.stderr
    assert "error: --report" in small.stderr and "not recorded" in small.stderr
    assert history.read_bytes() == before and not (out / "runs" / "tiny.json").exists()
    partial = _score(pool, sweeps["good"], out, "--run-id", "partial",
                     preexec=capped(len(before) + 100), version="v1")
    assert partial.returncode == 2, partial.stderr
    assert "error: --history" in partial.stderr and "no partial line" in partial.stderr
    assert history.read_bytes() == before  # cut back: no torn line
    assert not (out / "runs" / "partial.json").exists()  # no orphan sidecar


@pytest.mark.slow
def test_concurrent_cli_runs_each_append_one_line(sweeps, pool, tmp_path):
    out = tmp_path / "out"
    warm = _score(pool, sweeps["good"], out, version="warm")  # fills the embedding cache
    assert warm.returncode == 0, warm.stderr
    history = out / "eval_history.jsonl"
    commands = [[sys.executable, str(REPO_ROOT / SCRIPT), "--generated", str(sweeps["good"]),
                 "--reference", str(pool["reference"]), "--lora-version", f"c{index}",
                 "--backend", "dlib", "--cache-dir", str(pool["cache"]),
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


def test_download_pack_runs_insightfaces_downloader_only_when_asked(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    generated, reference = tmp_path / "gen", tmp_path / "ref"
    for folder in (generated, reference):
        folder.mkdir()
        Image.new("RGB", (64, 64), "gray").save(folder / "x.png")
    common = ["--generated", generated, "--reference", reference, "--lora-version", "v1",
              "--model-pack", "antelopev2", "--history", tmp_path / "out" / "h.jsonl",
              "--report", tmp_path / "out" / "r.md", "--no-progress"]
    with RefusingProxy() as proxy:
        env = {"HOME": str(home), "USERPROFILE": str(home), **proxy.env}
        offline = run_script(SCRIPT, *common, env=env)
        assert offline.returncode == 2
        assert "--download-pack" in offline.stderr and "unzip" in offline.stderr
        assert proxy.requests == [] and not (home / ".insightface").exists()
        fetched = run_script(SCRIPT, *common, "--download-pack", env=env)
    assert fetched.returncode == 2, fetched.stderr
    assert proxy.requests and proxy.requests[0].startswith("CONNECT github.com:443")
    url = "https://github.com/deepinsight/insightface/releases/download/model-zoo/antelopev2.zip"
    assert url in fetched.stderr and "could not fetch" in fetched.stderr
    assert not (home / ".insightface" / "models" / "antelopev2").exists()
    assert not (tmp_path / "out" / "h.jsonl").exists()


@pytest.mark.slow
def test_demo_builds_the_sample_sweep_and_recommends_its_best_config(tmp_path, capsys):
    out = tmp_path / "demo"
    assert sc.main(["--demo", str(out), "--no-progress"]) == 0
    card = json.loads(capsys.readouterr().out)
    good, plastic, wrong, faceless = sc.DEMO_CONFIGS
    assert card["backend"] == "dlib" and card["lora_version"] == "demo"
    assert [row["config"] for row in card["configs"]][:2] == [good, plastic]
    assert card["best_config"] == good and card["worst_config"] in (wrong, faceless)
    assert card["best_config_grade"] == "A" and card["overall_grade"] == "F"
    assert card["recommendation"]["words"] == "step 1500, strength 0.80, CFG 4.0"
    for name in ("eval_history.jsonl", "latest_report.md", "report.html", "scorecard.json"):
        assert (out / name).is_file()
    report = (out / "latest_report.md").read_text(encoding="utf-8")
    assert report.split("\n\n")[1].startswith(
        f"**Recommendation:** use step 1500, strength 0.80, CFG 4.0 (`{good}`): grade A")
    assert len(_lines(out / "eval_history.jsonl")) == 1
    assert len(list((out / "sweep").glob("*.png"))) == 16
