"""Tests for evals/scorecard.py: config identity, grading where every image counts, the
recommendation, the append-only history, output paths, --compare-to like with like, --demo.

The sweep tests score real photos (../shared/faces) with the offline dlib backend; one embedding
cache in a temporary folder is shared by every run, and every sweep is assembled from one pool of
crops, so each face is embedded once per session.
"""
from __future__ import annotations

import io
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

import judge_sweeps
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

_face_box = judge_sweeps.face_box  # the largest face, by dlib's HOG detector


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
    # An 8-digit date is not kohya's %Y%m%d%H%M%S sample timestamp: not a sample name.
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
    report, card = tmp_path / "report.md", tmp_path / "new" / "card.json"
    report.write_text("# the last recorded run\n", encoding="utf-8")
    with pytest.raises(sc.OutputError) as caught:
        sc.append_history(Path("/dev/full"), {"run_id": "r1"}, sidecar, "{}\n",
                          [("--report", report, "# report\n"), ("--json", card, "{}\n")])
    assert caught.value.flag == "--history" and "no partial line" in str(caught.value)
    assert not sidecar.exists()
    # Attack review: the reports were replaced before the history line failed, so they
    # described a run that is not in the history. Now they are put in place only after it.
    assert report.read_text(encoding="utf-8") == "# the last recorded run\n"
    assert not card.exists()
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == ["report.md"]


def test_an_output_that_fails_after_the_history_line_says_the_run_was_recorded(tmp_path):
    """The one write that can fail after the line: putting a staged report in place (here a
    folder has taken the report's name). The run is in the history and the error says so."""
    history, report = tmp_path / "h.jsonl", tmp_path / "report.md"
    card = tmp_path / "card.json"
    real_replace = os.replace

    def replace(source, target):  # a folder appears where the report goes (a race)
        if Path(target) == report and not report.exists():
            report.mkdir()
            (report / "keep").write_text("x", encoding="utf-8")
        return real_replace(source, target)

    sc.os.replace = replace
    try:
        with pytest.raises(sc.RecordedOutputError) as caught:
            sc.append_history(history, {"run_id": "r1"}, tmp_path / "runs" / "r1.json", "{}\n",
                              [("--report", report, "# report\n"), ("--json", card, "{}\n")])
    finally:
        sc.os.replace = real_replace
    assert "--report" in str(caught.value) and "was recorded" in str(caught.value)
    assert [r["run_id"] for r in sc.read_history(history)] == ["r1"]
    assert card.read_text(encoding="utf-8") == "{}\n"  # the others are in place
    assert not [path for path in tmp_path.rglob("*.tmp")]


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
                 "--download-pack", "--config-key", "--csv", "--holdout-reference"):
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
    if case == "csv_under_file":
        return ["--history", history, "--csv", regular / "images.csv"], "--csv"
    if case == "csv_is_folder":
        (tmp_path / "csvdir").mkdir()
        return ["--history", history, "--csv", tmp_path / "csvdir"], "--csv"
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
                                  "csv_under_file", "csv_is_folder", "history_under_file", "history_is_folder",
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
    # SAME is 4 crops of one photo: rightly rigid, so the headline names it without "use".
    assert best["flags"] == [flag for flag in best["flags"] if flag.startswith("is rigid")] != []
    assert first.startswith("**Recommendation:** no config is clean; the best-scoring is step "
                            f"1000, strength 0.80, CFG 4.0 (`{SAME}`), and it is flagged (Caution "
                            f"below): grade {configs[SAME]['grade']} on 4 images")
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
    # Only 2 faces in one group: spread is measured, copying too; nothing is a copy here.
    assert row["copies"] == 0 and row["copy_rate"] == 0


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
    report_before = (out / "latest_report.md").read_bytes()

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
    # The report still describes the last recorded run, not this one; no temp file is left.
    assert (out / "latest_report.md").read_bytes() == report_before
    assert not list(out.glob(".*.tmp"))


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


# --------------------------------------------------------------------------- the LoRA judge


render = load_script("evals/scorecard_render.py")


@pytest.mark.parametrize("name, config, indices, ignored", [
    # kohya sd-scripts, library/train_util.py sample_image_inference:
    # f"{output_name}_{num_suffix}_{i:02d}_{ts_str}{_seed}.png", num_suffix steps or e+epoch.
    ("ohwx_000500_00_20260216101500_42.png", "step500", {"prompt": 0, "seed": 42}, ()),
    ("sample/ohwx_001500_03_20260216101500_7.png", "step1500", {"prompt": 3, "seed": 7}, ()),
    ("ohwx_e000004_01_20260216101500.png", "epoch4", {"prompt": 1}, ()),
    ("000250_12_20260216101500_1.png", "step250", {"prompt": 12, "seed": 1}, ()),
    ("my_lora_v3_1234567_00_20260216101500_5.png", "step1234567", {"prompt": 0, "seed": 5},
     ("v3",)),
    ("ohwx_e000000_00_20260216101500_1.png", "epoch0", {"prompt": 0, "seed": 1}, ()),
    ("ohwx_000500_00_2026021610150_42.png", "unparsed", {}, ()),  # 13-digit time: not kohya
])
def test_kohya_sample_names_parse_without_renaming(name, config, indices, ignored):
    parsed = sc.DEFAULT_SCHEMA.parse_name(name)
    assert parsed.config.name == config and parsed.indices == indices
    assert parsed.ignored == ignored
    # --config-key v makes the output name's version a setting of its own.
    assert sc.ConfigSchema(["v"]).parse("my_lora_v3_001000_00_20260216101500_5.png").name == \
        "step1000_v3"


def test_strength_step_or_epoch_zero_is_the_baseline():
    zero = sc.parse_config("step1500_str0_cfg4_p01_seed2.png")
    assert zero.baseline and zero.name == "step1500_str0.00_cfg4.0"  # the zero says baseline
    assert sc.parse_config(zero.name) == zero  # the name reads back
    assert sc.parse_config("baseline_step1500_str0_cfg4.png") == zero  # one config, one name
    assert sc.parse_config("baseline_cfg4.png").name == "baseline_cfg4.0"
    assert sc.parse_config("step0_str0.8.png").baseline
    assert sc.parse_config("epoch0.png").baseline
    assert not sc.parse_config("step1500_str0.05.png").baseline
    assert sc.DEFAULT_SCHEMA.describe(zero) == \
        "the no-LoRA baseline at step 1500, strength 0.00, CFG 4.0"
    assert sc.non_lora_settings(zero.settings) == {"cfg": 4.0}


def test_over_training_is_where_identity_stops_rising_while_copying_or_rigidity_rises():
    def point(x, identity, copy_rate=0.0, spread=1.0):
        return {"x": x, "config": f"step{x}", "identity": identity, "copy_rate": copy_rate,
                "spread_ratio": spread}

    rising = [point(500, 0.90), point(1000, 0.95, 0.25), point(2000, 0.97, 0.5)]
    assert sc.over_training_point(rising) is None  # copying rises, but so does identity
    copying = [point(500, 0.90), point(1000, 0.95), point(2000, 0.955, 0.5)]
    found = sc.over_training_point(copying)
    assert found["from"] == 2000 and found["last_good"] == 1000
    assert found["why"] == ["copy rate 0% -> 50%"]
    rigid = [point(500, 0.90), point(1000, 0.95), point(2000, 0.94, spread=0.2)]
    assert sc.over_training_point(rigid)["why"] == ["spread 1.00 -> 0.20 x the training photos'"]
    flat = [point(500, 0.95), point(1000, 0.95), point(2000, 0.951)]
    assert sc.over_training_point(flat) is None  # stops rising, but nothing else moves


def _judged_rows(config: str, copies: list, spreads: list) -> list[dict]:
    rows = _rows(config, [0.95] * len(copies))
    for row, copy, spread in zip(rows, copies, spreads):
        row.update(copy=copy, spread_ratio=spread)
    return rows


def test_compare_treats_more_copying_and_more_rigidity_as_worse():
    old = {"run_id": "old", "threshold": 0.92, "best_config": "str0.80_cfg4.0"}
    new = {"run_id": "new", "threshold": 0.92, "best_config": "str0.80_cfg4.0"}
    before = {"images": _judged_rows("str0.80_cfg4.0", [False] * 12, [1.0] * 12)}
    copying = {"images": _judged_rows("str0.80_cfg4.0", [True] * 10 + [False] * 2, [1.0] * 12)}
    result = sc.compare_runs(new, copying, old, before)
    metrics = result["comparisons"][0]["metrics"]
    assert result["verdict"] == "clearly worse" and metrics["copying"]["verdict"] == "clearly worse"
    assert metrics["identity"]["verdict"] == "within noise"
    rigid = {"images": _judged_rows("str0.80_cfg4.0", [False] * 12, [0.1] * 12)}
    result = sc.compare_runs(new, rigid, old, before)
    assert result["comparisons"][0]["metrics"]["rigidity"]["verdict"] == "clearly worse"
    assert "spread across seeds" in result["why"]
    # Less copying is better, not worse.
    result = sc.compare_runs(new, before, old, copying)
    assert result["verdict"] == "within noise or better"
    assert result["comparisons"][0]["metrics"]["copying"]["verdict"] == "clearly better"
    # An older sidecar without the judge's columns: those two cannot decide, the rest still do.
    older = {"images": _rows("str0.8_cfg4", [0.95] * 12)}
    result = sc.compare_runs(new, copying, old, older)
    metrics = result["comparisons"][0]["metrics"]
    assert metrics["copying"]["verdict"] == "cannot decide"
    assert metrics["rigidity"]["verdict"] == "cannot decide"
    assert result["verdict"] == "within noise or better"


def test_images_csv_one_row_per_image_and_no_formula_runs():
    import csv
    images = [{"path": "=HYPERLINK(\"x\").png", "config": "step500_str1.00", "baseline": False,
               "settings": {"step": 500.0, "strength": 1.0}, "indices": {"prompt": 3, "seed": 2},
               "detected": True, "similarity": 0.951234567, "copy": True, "copy_of": "@a.jpg",
               "yaw": -12.5, "map": [0.1, -0.2], "spread_ratio": None},
              {"path": "baseline_cfg4.0_p01_seed1.png", "config": "baseline_cfg4.0",
               "baseline": True, "settings": {"cfg": 4.0}, "indices": {}, "detected": False,
               "error": "+broken", "copy": False}]
    rows = list(csv.DictReader(io.StringIO(sc.images_csv(images))))
    assert len(rows) == 2
    first, second = rows
    assert list(first)[:6] == ["path", "config", "baseline", "step", "strength", "cfg"]
    assert first["path"] == "'=HYPERLINK(\"x\").png" and first["copy_of"] == "'@a.jpg"
    assert second["error"] == "'+broken"
    assert first["step"] == "500" and first["strength"] == "1" and second["cfg"] == "4"
    assert first["prompt"] == "3" and first["seed"] == "2" and first["similarity"] == "0.951235"
    assert first["copy"] == "true" and first["yaw"] == "-12.5" and first["map_y"] == "-0.2"
    assert first["spread_ratio"] == "" and second["step"] == ""


def test_svg_charts_are_plain_svg_without_script():
    import xml.etree.ElementTree as ET
    chart = render.svg_chart("Identity <&>", [
        {"label": "a", "color": "#0969da", "points": [(500, 0.9, "p<1>"), (1000, None, "gap"),
                                                      (2000, 0.95, "p3")]},
        {"label": "b", "color": "#d4661b", "hollow": True, "points": [(500, 0.8, "q")]}],
        x_label="step", y_label="similarity", guides=[("x", 1000, "#c0392b", "over")])
    root = ET.fromstring(chart)
    assert root.tag == "svg" and root.find("title").text == "Identity <&>"
    assert len(root.findall("circle")) == 3 and not root.findall("polyline")  # a gap breaks it
    assert all(circle.find("title") is not None for circle in root.findall("circle"))
    assert "script" not in chart and "http" not in chart and "href" not in chart
    assert render.nice_ticks(0.83, 0.99) == [0.85, 0.9, 0.95]
    assert render.nice_ticks(500, 3000) == [1000, 2000, 3000]
    assert render.nice_ticks(-40, 40) == [-40, -20, 0, 20, 40]


@pytest.fixture(scope="session")
def judged(faces_dir, tmp_path_factory):
    """tests/judge_sweeps.py's judge sweep (52 images, 9 configs) scored once with the dlib
    backend: the card, the HTML, the CSV, the history line and the sidecar."""
    root = tmp_path_factory.mktemp("judge_sweep")
    photos = judge_sweeps.Photos(faces_dir, sc)
    training = judge_sweeps.write_training(photos, root / "training")
    roles = judge_sweeps.judge_sweep(photos, root / "sweep")
    out = root / "out"
    out.mkdir()
    args = [sys.executable, str(REPO_ROOT / SCRIPT), "--generated", str(root / "sweep"),
            "--reference", str(training), "--lora-version", "judge", "--backend", "dlib",
            "--cache-dir", str(root / "cache"), "--history", str(out / "eval_history.jsonl"),
            "--report", str(out / "latest_report.md"), "--html", str(out / "report.html"),
            "--csv", str(out / "images.csv"), "--json", str(out / "card.json"), "--no-progress"]
    result = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", timeout=900,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    record = json.loads(_lines(out / "eval_history.jsonl")[0])
    return {"card": card, "roles": roles, "out": out, "root": root, "training": training,
            "record": record, "stderr": result.stderr,
            "details": json.loads((out / record["details"]).read_text(encoding="utf-8"))}


@pytest.mark.slow
def test_judge_copying_training_photos_at_90_percent_other_photos_at_10(judged):
    configs, roles = _configs(judged["card"]), judged["roles"]
    copies, others = configs[roles["copies"]], configs[roles["others"]]
    assert copies["images"] == others["images"] == 8
    assert copies["copy_rate"] >= 0.9 and others["copy_rate"] <= 0.1
    assert {photo for photo, _ in copies["copied_photos"]} == set(judge_sweeps.TRAINING)
    assert any(flag.startswith("copies training photos") for flag in copies["flags"])
    card = judged["card"]
    assert card["identity_against"] == "training photos" and card["holdout_dir"] is None
    assert 0 < card["copy_rate"] == judged["card"]["judge"]["memorisation"]["copy_rate"] < 1
    report = (judged["out"] / "latest_report.md").read_text(encoding="utf-8")
    assert "**Identity measured against:** identity is measured against the training photos, " \
           "which rewards copying them" in report


@pytest.mark.slow
def test_judge_rigid_copies_of_one_photo_but_not_eight_different_pictures(judged):
    configs, roles = _configs(judged["card"]), judged["roles"]
    rigid, varied = configs[roles["rigid"]], configs[roles["varied"]]
    assert rigid["images"] == varied["images"] == 8
    assert rigid["rigid"] and rigid["spread_ratio"] < 0.1
    assert varied["rigid"] is False and varied["spread_ratio"] > 0.6
    assert rigid["spread_groups"] == 2  # per prompt (p01, p02), across 4 seeds each
    assert roles["rigid"] in judged["card"]["rigid_configs"]
    assert roles["varied"] not in judged["card"]["rigid_configs"]
    assert rigid["pose"]["yaw_std"] < 2.0 < varied["pose"]["yaw_std"]


@pytest.mark.slow
def test_judge_never_says_use_a_flagged_config(judged):
    """On the judge sweep every A config is flagged (copying, rigid or past over-training) and the
    best unflagged one is clearly behind: the headline must not say "use" the flagged one while
    the over-training line says "use step 1000 or earlier"."""
    best = judged["card"]["recommendation"]
    assert best["grade"] == "A" and best["flags"] and best.get("unflagged_alternative")
    report = (judged["out"] / "latest_report.md").read_text(encoding="utf-8")
    first = next(line for line in report.splitlines() if line.startswith("**Recommendation:**"))
    assert first.startswith(f"**Recommendation:** no config is clean; the best-scoring is "
                            f"{best['words']} (`{best['config']}`), and it is flagged")
    assert " Caution: it " in first and "**Recommendation:** use" not in report
    assert f"({best['how_sure']}, flagged: " in judged["stderr"]


@pytest.mark.slow
def test_judge_baseline_lift_curves_and_over_training_verdict(judged):
    card, roles = judged["card"], judged["roles"]
    configs = _configs(card)
    assert configs[roles["baseline"]]["baseline"] and card["judge"]["baseline"]["configs"] == [
        roles["baseline"]]
    weak = configs[roles["weak"]]["baseline_lift"]
    assert weak["against"] == [roles["baseline"]] and not weak["beats_baseline"]
    assert roles["weak"] in card["configs_below_baseline"]
    assert configs[roles["others"]]["baseline_lift"]["beats_baseline"]
    assert configs[roles["others"]]["baseline_lift"]["lift"] > 0.1
    curves = card["judge"]["curves"]
    assert curves["axis"] == "step"
    series = {entry["name"]: entry for entry in curves["series"]}
    assert set(series) == {"str0.80_cfg4.0", "str1.00_cfg4.0"}
    assert [point["x"] for point in series["str1.00_cfg4.0"]["points"]] == [500, 1000, 1500,
                                                                            2000, 3000]
    verdict = card["over_training"]
    assert verdict["found"] and verdict["series"] == "str1.00_cfg4.0"
    assert verdict["verdict"].startswith(f"over-training from step {verdict['at']:g} "
                                         "(strength 1.00, CFG 4.0)")
    assert card["over_training_from"] == verdict["at"] in (1500, 2000, 3000)
    assert series["str0.80_cfg4.0"]["over_training"] is None  # it gains identity throughout
    best = card["recommendation"]
    assert best["config"] == card["best_config"] and not configs[best["config"]]["baseline"]
    # The history line carries the judge, so --compare-to can read it back.
    record = judged["record"]
    for key in ("copy_rate", "spread_ratio", "rigid_configs", "configs_below_baseline",
                "over_training_from", "judge"):
        assert key in record, key
    rows = {row["path"]: row for row in judged["details"]["images"]}
    assert all("copy" in row and "spread_ratio" in row and "yaw" in row for row in rows.values())


@pytest.mark.slow
def test_judge_csv_has_a_row_per_image_with_prompt_seed_and_the_judge(judged):
    import csv
    text = (judged["out"] / "images.csv").read_bytes().decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == judged["card"]["images_evaluated"] == 52
    assert text.count("\r\n") == 53 and text.count("\n") == 53  # RFC 4180 line ends
    by_config: dict = {}
    for row in rows:
        by_config.setdefault(row["config"], []).append(row)
        assert row["prompt"] in ("1", "2") and row["seed"] in tuple("1234")
    copies = by_config[judged["roles"]["copies"]]
    assert sum(row["copy"] == "true" for row in copies) >= 7
    assert all(row["copy_of"] in judge_sweeps.TRAINING for row in copies if row["copy"] == "true")
    assert all(row["yaw"] and row["spread_ratio"] for row in rows)


@pytest.mark.slow
def test_judge_html_holds_inline_svg_curves_no_script_no_network(judged):
    import re
    import xml.etree.ElementTree as ET
    page = (judged["out"] / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "http" not in page.replace("http-equiv", "")
    assert "@import" not in page and "url(" not in page
    charts = [ET.fromstring(match) for match in re.findall(r"<svg class=\"chart\".*?</svg>",
                                                           page, flags=re.S)]
    titles = [chart.find("title").text for chart in charts]
    for title in ("Identity (mean similarity)", "Skin realism", "Copy rate",
                  "Rigidity (spread vs training photos)", "Identity vs yaw",
                  "Identity map (PCA of face embeddings)"):
        assert title in titles, titles
    identity = charts[titles.index("Identity (mean similarity)")]
    assert len(identity.findall("polyline")) == 2  # one line per strength
    assert len(identity.findall("circle")) == 8  # 5 + 3 checkpoints
    guides = [line.find("title").text for line in identity.findall("line")
              if line.find("title") is not None]
    assert "no-LoRA baseline" in guides and "over-training" in guides
    scatter = charts[titles.index("Identity vs yaw")]
    assert len(scatter.findall("circle")) == 52 + 3  # every face and the training photos
    assert page.index("Checkpoint curves") < page.index("Configs, ranked")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.slow
def test_judge_html_renders_its_curves_in_headless_chromium(judged, tmp_path):
    """The page opened in a real browser, offline: the curves' colours are on the screenshot."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1400,1400", (judged["out"] / "report.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1400, 1400)

    def share(color: str) -> float:
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        return float((np.abs(pixels - rgb).sum(axis=2) < 40).mean())

    # The two strengths' lines (palette colours 1 and 2) and the red over-training marker.
    assert share(render.PALETTE[0]) > 0.0005 and share(render.PALETTE[1]) > 0.0005
    assert share("#c0392b") > 0.0002


@pytest.mark.slow
def test_kohya_samples_are_scored_per_checkpoint_without_renaming(pool, tmp_path):
    """Two checkpoints x two prompts x two seeds named as sd-scripts names its samples, in its
    sample/ folder, and the at-first sample (epoch 0, the untrained LoRA) as the baseline."""
    entries, index = [], 0
    for step in (500, 1000):
        for prompt in (0, 1):
            for seed in (11, 12):
                source = pool["others"][index] if step == 500 else pool["same"][index]
                stamp = f"20260216{step // 100:02d}{prompt:02d}{seed:02d}"  # %Y%m%d%H%M%S
                entries.append((f"sample/ohwx_{step:06d}_{prompt:02d}_{stamp}_{seed}.png",
                                source))
                index += 1
    entries.append(("sample/ohwx_e000000_00_20260216090000_11.png", pool["others"][10]))
    entries.append(("sample/ohwx_e000000_01_20260216090001_11.png", pool["others"][11]))
    folder = build(tmp_path / "output", entries)
    names = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.png"))
    out = tmp_path / "out"
    result = _score(pool, folder, out, "--csv", out / "images.csv", "--html", out / "r.html")
    assert result.returncode == 0, result.stderr
    assert sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.png")) == names
    card = json.loads(result.stdout)
    configs = _configs(card)
    assert set(configs) == {"step500", "step1000", "epoch0"} and configs["epoch0"]["baseline"]
    assert configs["step500"]["images"] == configs["step1000"]["images"] == 4
    assert card["config_order"] == ["epoch0", "step500", "step1000"]
    assert configs["step1000"]["spread_groups"] == 2  # per prompt, across its two seeds
    assert configs["step1000"]["baseline_lift"]["beats_baseline"]
    details = json.loads((out / card["details"]).read_text(encoding="utf-8"))
    indices = {(row["config"], row["indices"]["prompt"], row["indices"]["seed"])
               for row in details["images"]}
    assert {(config, prompt, seed) for config in ("step500", "step1000") for prompt in (0, 1)
            for seed in (11, 12)} <= indices
    series = card["judge"]["curves"]["series"]
    assert [[point["x"] for point in entry["points"]] for entry in series] == [[500, 1000]]
    assert card["best_config"] == "step1000"
    assert not any("ignored" in warning for warning in card["warnings"])


@pytest.mark.slow
def test_holdout_reference_measures_identity_on_photos_not_trained_on(faces_dir, tmp_path):
    photos = judge_sweeps.Photos(faces_dir, sc)
    training = judge_sweeps.write_training(photos, tmp_path / "training")
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    shutil.copy(faces_dir / "photos" / "obama_3.jpg", held_out / "obama_3.jpg")
    photos.crop("obama_3.jpg").save(held_out / "obama_3_crop.png")
    sweep = tmp_path / "sweep"
    judge_sweeps.copies_set(photos, sweep, count=6)
    judge_sweeps.strangers_set(photos, sweep, "step500_str1.00_cfg4.0", count=4)
    out = tmp_path / "out"
    common = ["--generated", sweep, "--reference", training, "--lora-version", "v1",
              "--backend", "dlib", "--cache-dir", tmp_path / "cache", "--history",
              out / "h.jsonl", "--report", out / "r.md", "--no-progress"]
    result = run_script(SCRIPT, *common, "--holdout-reference", held_out, "--html", out / "r.html")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["identity_against"] == "held-out photos"
    assert card["holdout_dir"] == str(held_out.resolve())
    assert card["reference_dir"] == str(training.resolve())
    assert card["references_used"] == 2  # the ceiling comes from the held-out photos
    copies = _configs(card)["step2000_str1.00_cfg4.0"]
    assert copies["copy_rate"] >= 0.9  # memorisation is still against the training photos
    report = (out / "r.md").read_text(encoding="utf-8")
    assert "identity is measured against held-out photos" in report
    assert "rewards copying" not in report
    assert "held-out photos" in (out / "r.html").read_text(encoding="utf-8")
    for bad, needle in ((training, "is the --reference folder"),
                        (sweep, "is the --generated folder"),
                        (tmp_path / "missing", "is not a folder")):
        refused = run_script(SCRIPT, *common, "--holdout-reference", bad)
        assert refused.returncode == 2 and needle in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


# --------------------------------------------------------------------------- attack review

def _collision(tmp_path: Path, case: str) -> tuple[list, str]:
    """Output flags that name one file twice, the history, its sidecar folder or an input."""
    out = tmp_path / "out"
    history = out / "eval_history.jsonl"
    report = out / "latest_report.md"
    if case == "report_is_history":
        return ["--history", history, "--report", history], "--report"
    if case == "json_is_history_through_dotdot":
        return ["--history", history, "--report", report, "--json",
                out / "sub" / ".." / "eval_history.jsonl"], "--json"
    if case == "html_is_history_through_symlink":
        (tmp_path / "alias").symlink_to(out, target_is_directory=True)
        return ["--history", history, "--report", report, "--html",
                tmp_path / "alias" / "eval_history.jsonl"], "--html"
    if case == "csv_is_history_lock":
        return ["--history", history, "--report", report, "--csv",
                out / "eval_history.jsonl.lock"], "--csv"
    if case == "csv_in_sidecar_folder":
        return ["--history", history, "--report", report, "--csv", out / "runs" / "x.csv"], \
            "--csv"
    if case == "json_is_report":
        return ["--history", history, "--report", report, "--json", report], "--json"
    if case == "html_is_csv_in_other_case":
        return ["--history", history, "--report", report, "--html", out / "pair.html",
                "--csv", out / "PAIR.html"], "--csv"
    if case == "report_is_input_image":
        return ["--history", history, "--report", tmp_path / "gen" / "x.png"], "--report"
    if case == "png_output_inside_generated":
        return ["--history", history, "--report", report, "--csv",
                tmp_path / "gen" / "sub" / "r.png"], "--csv"
    if case == "json_is_reference_photo_through_symlink":
        (tmp_path / "ref" / "y.png").symlink_to(tmp_path / "ref" / "x.png")
        return ["--history", history, "--report", report, "--json", tmp_path / "ref" / "y.png"],\
            "--json"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["report_is_history", "json_is_history_through_dotdot",
                                  "html_is_history_through_symlink", "csv_is_history_lock",
                                  "csv_in_sidecar_folder", "json_is_report",
                                  "html_is_csv_in_other_case", "report_is_input_image",
                                  "png_output_inside_generated",
                                  "json_is_reference_photo_through_symlink"])
def test_an_output_that_is_another_output_the_history_or_an_input_is_refused(tmp_path, case):
    """Attack: --report/--json/--html/--csv aimed at the history (directly, through `..` or a
    link), at each other, at the sidecar folder or at an input image wiped it once."""
    generated, reference = tmp_path / "gen", tmp_path / "ref"
    for folder in (generated, reference):
        folder.mkdir()
        Image.new("RGB", (64, 64), "gray").save(folder / "x.png")
    history = tmp_path / "out" / "eval_history.jsonl"
    history.parent.mkdir()
    history.write_text(json.dumps({"run_id": "keep", "lora_version": "v0"}) + "\n",
                       encoding="utf-8")
    args, flag = _collision(tmp_path, case)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    cache = tmp_path / "cache"
    result = run_script(SCRIPT, "--generated", generated, "--reference", reference,
                        "--lora-version", "v1", "--backend", "dlib", "--cache-dir", cache,
                        "--no-progress", *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} "), result.stderr
    assert "nothing was evaluated or written" in lines[0]
    assert result.stdout == "" and not cache.exists()
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before  # the history, the inputs: every byte as it was


def test_comma_decimals_exponents_and_signs_never_merge_or_truncate_configs():
    """Attack: `str0,8` (a European decimal comma) read as strength 0, a baseline; `lr1e-4` and
    `lr5e-4` split at the `e` (read as epoch 4) into one config; `str-0.8` lost its sign."""
    parse = sc.parse_config
    comma = parse("step1500_str0,8_cfg4,5_seed1.png")
    assert comma == parse("step1500_str0.80_cfg4.5_seed2.png") and not comma.baseline
    assert comma.name == "step1500_str0.80_cfg4.5"
    assert parse("str0,8.png") == parse("str0.80.png") and not parse("str0,8.png").baseline
    # A whole-number key with three digits after the comma is a thousands separator.
    assert parse("step1,500_str0,8.png").name == "step1500_str0.80"
    # A whole-number key with another comma number is neither: ignored with the file named.
    ambiguous = sc.DEFAULT_SCHEMA.parse_name("step0,5_str0,8.png")
    assert ambiguous.config.name == "str0.80" and not ambiguous.config.baseline
    assert ambiguous.ignored == ("step0,5",)
    low, high = parse("lr1e-4_dim16.png"), parse("lr5e-4_dim16.png")
    assert low != high and low.settings["lr"] == pytest.approx(1e-4)
    assert high.settings["lr"] == pytest.approx(5e-4) and "epoch" not in low.settings
    assert parse("lr5e-05.png").settings == {"lr": pytest.approx(5e-05)}
    assert parse("lr5e-05.png").name == "lr0.00005" and parse("lr0.00005") == parse("lr5e-05")
    assert parse("lr1E-4.png").settings == {"lr": pytest.approx(1e-4)}
    negative = parse("step1000_str-0.8_cfg4.png")
    assert negative.settings["strength"] == -0.8 and not negative.baseline
    assert negative != parse("step1000_str0.8_cfg4.png") and negative.name == \
        "step1000_str-0.80_cfg4.0"
    assert parse(negative.name) == negative  # the name reads back
    assert parse("str=-0.8.png") == parse("str_-0.8.png") == parse("str-0.8.png")
    # A key that cannot be negative keeps `-` as a separator: guidance-3.5 is CFG 3.5.
    assert parse("guidance-3.5.png").settings == {"cfg": 3.5}
    # Nothing of this makes a baseline by truncation.
    for name in ("str0,8.png", "str0,05.png", "step0,5_str1.png", "lr1e-4_str1.png",
                 "epoch1e1.png"):
        assert not parse(name).baseline, name


def test_ambiguous_comma_numbers_warn_naming_the_file():
    images = [{"path": "step0,5_str0,8_seed1.png", "ignored_tokens": ["step0,5"]}]
    warnings = sc._collect_warnings({}, {}, images, [], [])
    assert any("step0,5" in warning and "step0,5_str0,8_seed1.png" in warning
               for warning in warnings), warnings


JSON_VALUES = (None, True, 0, -7, 1.5, "", "x", "../../outside.json", [], [1], [[1]], [{}],
               [{"path": [1]}], {}, {"a": 1}, {"path": {}})


def test_hostile_timestamps_details_and_sidecar_rows_are_warnings_never_a_traceback(tmp_path):
    """Attack: a history line timestamped 0001-01-01T00:00:00+01:00 (OverflowError in UTC), a
    record whose "details" is 5, a sidecar whose images are [1] or whose rows hold lists."""
    history = tmp_path / "history.jsonl"
    lines = [{"run_id": "ancient", "timestamp": "0001-01-01T00:00:00+01:00"},
             {"run_id": "future", "timestamp": "9999-12-31T23:59:59-01:00"},
             {"run_id": "ok", "timestamp": "2026-01-02T03:04:05+01:00"}]
    history.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    messages = []
    records = {r["run_id"]: r for r in sc.read_history(history, report=messages.append)}
    assert records["ok"]["timestamp"] == "2026-01-02T02:04:05Z"
    assert records["ancient"]["timestamp"] == "0001-01-01T00:00:00+01:00"  # kept as written
    assert sum("outside the range" in message for message in messages) == 2, messages
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    outside.write_text('{"images": []}', encoding="utf-8")
    for details in (5, [1], True, {}, "runs/missing.json", str(outside),
                    f"../{outside.name}"):
        assert sc.load_details(history, {"run_id": "r", "details": details}) is None, details
    outside.unlink()
    (tmp_path / "runs").mkdir()
    for value in JSON_VALUES:
        (tmp_path / "runs" / "r.json").write_text(json.dumps(value), encoding="utf-8")
        details = sc.load_details(history, {"run_id": "r"})
        assert details is None or isinstance(details, dict)
        rows = sc.comparison_images({"images": value, "unreadable": value})
        assert all(isinstance(row["path"], (str, type(None))) for row in rows)
        for field in ("path", "config", "error", "detected", "similarity", "passed", "identity",
                      "realism", "realism_relative", "copy", "spread_ratio"):
            image = {"path": "str0.8_cfg4_seed1.png", "config": "str0.8_cfg4",
                     "detected": True, "similarity": 0.95, "passed": True, "identity": 0.6,
                     "realism": 0.8, "realism_relative": 0.9, "copy": False,
                     "spread_ratio": 1.0, field: value}
            rows = sc.comparison_images({"images": [image] * 6})
            sc._columns(rows, 0.92, judged=True)  # every figure is a number


def _fuzzed(template: dict, value) -> list[dict]:
    """One copy of `template` per top-level key, that key set to `value`."""
    return [{**template, key: value} for key in template]


@pytest.mark.slow
def test_compare_to_survives_every_json_type_in_every_field(sweeps, pool, tmp_path):
    """Each top-level JSON type in each field of a real history line and of its sidecar (and
    of one per-image row): the comparison and the report come out, never a traceback."""
    out = tmp_path / "out"
    first = _score(pool, sweeps["good"], out, version="v1")
    assert first.returncode == 0, first.stderr
    history = out / "eval_history.jsonl"
    record = json.loads(_lines(history)[0])
    sidecar = json.loads((out / record["details"]).read_text(encoding="utf-8"))
    new = json.loads(first.stdout)
    new_details = sc.clean_json(sidecar)
    hostile = tmp_path / "hostile"
    (hostile / "runs").mkdir(parents=True)
    checked = 0
    for value in JSON_VALUES:
        old_records = [{**old, "run_id": "old"} for old in _fuzzed(record, value)]
        sidecars = _fuzzed(sidecar, value) + [
            {**sidecar, "images": [{**sidecar["images"][0], key: value}] + sidecar["images"][1:]}
            for key in sidecar["images"][0]] + [value]
        for old, details in [(old, sidecar) for old in old_records] + [
                ({**record, "run_id": "old"}, details) for details in sidecars]:
            (hostile / "h.jsonl").write_text(json.dumps(old) + "\n", encoding="utf-8")
            (hostile / "runs" / "old.json").write_text(json.dumps(details), encoding="utf-8")
            (target,) = sc.read_history(hostile / "h.jsonl", report=lambda message: None)
            loaded = sc.load_details(hostile / "h.jsonl", target)
            comparison = sc.compare_runs(new, new_details, target, loaded)
            assert comparison["verdict"] in ("clearly worse", "within noise or better",
                                             "cannot decide")
            sc.render_report({**new, "comparison": comparison}, comparison)
            checked += 1
    assert checked > 500
    # And through the command line: an ancient timestamp, "details": 5, images [1].
    for index, (field, value) in enumerate((("timestamp", "0001-01-01T00:00:00+01:00"),
                                            ("details", 5), ("images", [1]))):
        if field == "images":
            (out / record["details"]).write_text(json.dumps({**sidecar, "images": [1]}),
                                                 encoding="utf-8")
            changed = record
        else:
            changed = {**record, field: value}
        history.write_text(json.dumps(changed) + "\n", encoding="utf-8")
        result = _score(pool, sweeps["equal"], out, "--compare-to", "v1", version=f"h{index}")
        assert "Traceback" not in result.stderr, result.stderr
        if field == "timestamp":  # the run itself is fine: compared, its time as written
            assert result.returncode == 0 and "outside the range" in result.stderr, \
                result.stderr
        else:
            assert result.returncode == 2 and "cannot decide" in result.stderr, result.stderr


@pytest.mark.slow
def test_how_sure_follows_the_interval_not_just_the_runner_up(pool, tmp_path):
    """Attack: "fairly sure" while the recommended config's 95% interval spans grades A to D:
    4 faces and 1 faceless image, a runner-up (other people) clearly behind."""
    folder = build(tmp_path / "gen", [(f"str0.8_cfg4_seed{n}.png", pool["same"][n])
                                      for n in range(4)]
                   + [("str0.8_cfg4_seed9.png", pool["noface"][0])]
                   + [(f"str0.4_cfg4_seed{n}.png", pool["others"][n]) for n in range(4)])
    out = tmp_path / "out"
    result = _score(pool, folder, out)
    assert result.returncode == 0, result.stderr
    best = json.loads(result.stdout)["recommendation"]
    worst, top = best["interval"]["grades"][1], best["interval"]["grades"][0]
    assert sc.GRADE_ORDER.index(worst) - sc.GRADE_ORDER.index(top) >= 2, best["interval"]
    assert best["runner_up"] and not best["runner_up"]["within_noise"]  # clearly behind
    assert best["images"] >= sc.UNSURE_MAX_IMAGES
    assert best["how_sure"] == "not sure" and best["interval_too_wide"]
    report = (out / "latest_report.md").read_text(encoding="utf-8")
    line = next(line for line in report.splitlines() if line.startswith("**How sure:**"))
    assert line.startswith("**How sure:** not sure: 5 images; the interval spans grade "
                           f"{top} to {worst}, too wide to rely on"), line


def _scored(config: str, identities: list) -> list[dict]:
    """Per-image records as join_images makes them: identity_i given, realism at the ceiling."""
    parsed = sc.parse_config(config)
    return [{"path": f"{config}_p{index:02d}.png", "config": parsed.name,
             "settings": parsed.settings, "baseline": False, "indices": {}, "error": None,
             "detected": True, "similarity": 0.9 + 0.08 * value,
             "similarity_or_zero": 0.9 + 0.08 * value, "passed": value >= 0.5,
             "identity": value, "realism": 0.9, "realism_relative": 1.0}
            for index, value in enumerate(identities)]


def test_a_flagged_top_config_gives_way_to_an_unflagged_one_whose_interval_overlaps():
    """Attack: the recommendation said "use X" with a caution for a copying X although an
    unflagged config's 95% score interval overlapped X's (their difference just excluded 0)."""
    images = (_scored("step2000_str1.0", [1.0] * 6 + [0.7] * 6)
              + _scored("step3000_str1.0", [1.0] * 6 + [0.7] * 6)
              + _scored("step1000_str0.8", [0.9] * 4 + [0.65] * 8)
              + _scored("step500_str0.8", [0.2] * 12))
    configs = sc.rank_configs(images, threshold=0.92, min_detection_rate=0.8)
    for row in configs:  # what the judge found (judge() on real sweeps: tests above)
        row["flags"] = {"step2000_str1.00": ["copies training photos (8 of 12 images)"],
                        "step3000_str1.00": ["is rigid"]}.get(row["config"], [])
    top, clean = configs[0], next(row for row in configs if not row["flags"])
    assert top["flags"] and clean["config"] == "step1000_str0.80"
    assert clean["score_interval"][1] >= top["score_interval"][0]  # the intervals overlap
    best = sc.recommend(configs, images, threshold=0.92, min_detection_rate=0.8)
    assert best["config"] == "step1000_str0.80" and not best["flags"]
    passed = best["preferred_over"]
    assert passed["config"] == top["config"] and passed["flags"] == top["flags"]
    assert [row["config"] for row in passed["passed_over"]] == [
        "step2000_str1.00", "step3000_str1.00"]
    text = dict(sc.headline({**_card(configs), "recommendation": best}))["Recommendation"]
    assert "Chosen over `step2000_str1.00` (score 0.85" in text
    assert "`step3000_str1.00` (score 0.85" in text and "is rigid" in text
    # No unflagged config comes near: the flagged one stays, and the report says why.
    far = _scored("step2000_str1.0", [1.0] * 12) + _scored("step500_str0.8", [0.2] * 12)
    configs = sc.rank_configs(far, threshold=0.92, min_detection_rate=0.8)
    configs[0]["flags"], configs[1]["flags"] = ["copies training photos (12 of 12 images)"], []
    best = sc.recommend(configs, far, threshold=0.92, min_detection_rate=0.8)
    assert best["config"] == "step2000_str1.00" and best["preferred_over"] is None
    assert best["unflagged_alternative"]["config"] == "step500_str0.80"
    text = dict(sc.headline({**_card(configs), "recommendation": best}))["Recommendation"]
    assert "Caution: it copies training photos" in text
    assert "the best unflagged config, `step500_str0.80`" in text and "clearly behind" in text


def _card(configs: list[dict]) -> dict:
    return {"overall_grade": "B", "score": 0.7, "overall_grade_basis": "24 images",
            "configs": configs, "judge": {}, "identity_against": "training photos"}


@pytest.mark.parametrize("case", ["inside_generated", "holds_generated", "inside_reference",
                                  "holds_reference", "link_to_generated"])
def test_holdout_reference_nested_in_or_holding_an_input_is_refused(tmp_path, case):
    """--holdout-reference must be photos apart from both inputs: inside --generated it would be
    scored as generations, holding --generated it would take them as held-out photos."""
    generated, reference = tmp_path / "gen", tmp_path / "ref"
    for folder in (generated, reference):
        folder.mkdir()
        Image.new("RGB", (64, 64), "gray").save(folder / "x.png")
    holdout = {"inside_generated": generated / "held", "holds_generated": tmp_path,
               "inside_reference": reference / "held", "holds_reference": tmp_path,
               "link_to_generated": tmp_path / "link"}[case]
    if case == "link_to_generated":
        holdout.symlink_to(generated, target_is_directory=True)
    holdout.mkdir(exist_ok=True)
    if case == "holds_reference":
        generated = tmp_path.parent / f"{tmp_path.name}-gen"
        generated.mkdir()
    result = run_script(SCRIPT, "--generated", generated, "--reference", reference,
                        "--lora-version", "v1", "--backend", "dlib", "--holdout-reference",
                        holdout, "--history", tmp_path.parent / f"{tmp_path.name}-h.jsonl",
                        "--no-progress")
    assert result.returncode == 2, result.stderr
    assert "--holdout-reference" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path.parent / f"{tmp_path.name}-h.jsonl").exists()


@pytest.mark.slow
def test_symlinked_folders_in_generated_are_not_followed_and_named_in_one_warning(pool, tmp_path):
    """Attack: a folder of the sweep that is a symbolic link was skipped without a word. It is
    still not followed (inside --generated its images would count twice, outside they are
    not this sweep's), and one warning names each link and where it leads."""
    folder = build(tmp_path / "gen", [(f"str0.8_cfg4/seed{n}.png", pool["same"][n])
                                      for n in range(3)])
    elsewhere = build(tmp_path / "elsewhere", [("seed9.png", pool["others"][0])])
    (folder / "str0.8_cfg4_again").symlink_to(folder / "str0.8_cfg4", target_is_directory=True)
    (folder / "str0.4_cfg4").symlink_to(elsewhere, target_is_directory=True)
    out = tmp_path / "out"
    result = _score(pool, folder, out)
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["images_evaluated"] == 3 and set(_configs(card)) == {"str0.80_cfg4.0"}
    lines = [line for line in result.stderr.splitlines() if "symbolic link" in line]
    assert len(lines) == 1, result.stderr
    assert "str0.8_cfg4_again -> " in lines[0] and "inside --generated" in lines[0]
    assert "str0.4_cfg4 -> " in lines[0] and "outside --generated" in lines[0]
    assert "not followed" in lines[0]
    assert "str0.4_cfg4 -> " in (out / "latest_report.md").read_text(encoding="utf-8")
