"""evals/face_similarity_eval.py: real dlib model on real photos, insightface's loading code on a
test-built ONNX pack, bad inputs, exit codes and the embedding cache.

Two layers: subprocess runs of the CLI (exit codes, stdout/stderr, --json) and in-process calls
of evaluate() and the backends. Model calls are counted by wrapping insightface's own
SCRFD.detect / ArcFaceONNX.get (the real methods still run; nothing is planted).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_script, run_script

sys.path.insert(0, str(Path(__file__).resolve().parent))
import insightface_test_pack as pack_kit  # noqa: E402

SCRIPT = "evals/face_similarity_eval.py"
fse = load_script(SCRIPT)

CONTRACT_TOP = {"backend", "model", "threshold", "device", "providers", "face_policy",
                "generated_dir", "reference_dir", "images", "references", "errors", "summary",
                "warnings"}
CONTRACT_IMAGE = {"path", "faces", "detected", "similarity", "max_reference", "mean_reference",
                  "passed", "error"}
CONTRACT_REFERENCES = {"count", "used", "skipped", "ceiling", "per_reference", "outliers"}
CONTRACT_SUMMARY = {"images", "faces_found", "detection_rate", "mean", "mean_detected", "median",
                    "min", "max", "pass_rate", "ceiling", "identity_ratio", "threshold",
                    "min_detection_rate", "pass", "errors"}


# ----------------------------------------------------------------------------------------------
# helpers and fixtures
# ----------------------------------------------------------------------------------------------


def save_bgr(array: np.ndarray, path: Path, **kwargs) -> Path:
    """Write a BGR array through PIL (non-ASCII paths work everywhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array[:, :, ::-1])).save(path, **kwargs)
    return path


def face_image(seed: int, canvas=(640, 640), center=(320, 320), size=pack_kit.FACE_SIZE):
    return pack_kit.place_faces(canvas, [(seed, center, size)])


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory) -> Path:
    return pack_kit.build_pack(tmp_path_factory.mktemp("packs") / "tiny_pack")


@pytest.fixture
def identity_dirs(tmp_path) -> tuple[Path, Path]:
    """Reference: identity 1 at four positions/scales. Generated: identity 1 twice (one of them
    at another size), identity 2 once."""
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    save_bgr(face_image(1, center=(320, 320)), ref / "r1.png")
    save_bgr(face_image(1, center=(160, 224)), ref / "r2.png")
    save_bgr(face_image(1, canvas=(960, 1280), center=(640, 448), size=256), ref / "r3.png")
    save_bgr(face_image(1, center=(448, 480)), ref / "r4.jpg", quality=98)
    save_bgr(face_image(1, center=(256, 384)), gen / "same_a.png")
    save_bgr(face_image(1, canvas=(1280, 1280), center=(704, 576), size=256), gen / "same_b.png")
    save_bgr(face_image(2, center=(320, 320)), gen / "other.png")
    return gen, ref


class CallCounter:
    """Counts calls of insightface's real SCRFD.detect and ArcFaceONNX.get (they still run)."""

    def __init__(self, monkeypatch):
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        from insightface.model_zoo.scrfd import SCRFD

        self.detect = 0
        self.recognize = 0
        original_detect, original_get = SCRFD.detect, ArcFaceONNX.get

        def detect(model, *args, **kwargs):
            self.detect += 1
            return original_detect(model, *args, **kwargs)

        def get(model, *args, **kwargs):
            self.recognize += 1
            return original_get(model, *args, **kwargs)

        monkeypatch.setattr(SCRFD, "detect", detect)
        monkeypatch.setattr(ArcFaceONNX, "get", get)

    def reset(self):
        self.detect = self.recognize = 0


def run_tiny(gen, ref, pack, cache_dir, **kwargs) -> dict:
    return fse.evaluate(gen, ref, backend="insightface", model_pack=str(pack), device="cpu",
                        cache_dir=cache_dir, show_progress=False, **kwargs)


def by_path(report: dict) -> dict:
    return {entry["path"]: entry for entry in report["images"]}


# ----------------------------------------------------------------------------------------------
# CLI layer
# ----------------------------------------------------------------------------------------------


def test_help_exits_0_and_documents_usage():
    result = run_script(SCRIPT, "--help")
    assert result.returncode == 0, result.stderr
    for text in ("--generated", "--reference", "--backend", "--model-pack", "--device",
                 "--face-policy", "--min-detection-rate", "--cache-dir", "--no-cache", "--json",
                 "0.92", "0.60"):
        assert text in result.stdout


def test_cli_insightface_run_writes_json_with_every_contract_field(tiny_pack, identity_dirs,
                                                                   tmp_path):
    gen, ref = identity_dirs
    out = tmp_path / "out" / "report.json"
    result = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--model-pack", tiny_pack,
                        "--device", "cpu", "--cache-dir", tmp_path / "cache", "--json", out)
    # 2 of 3 images are the person: mean ~0.77 >= 0.60 and every image has a face -> PASS.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT: PASS" in result.stdout and "other.png" in result.stdout
    assert "an image without a face counts 0" in result.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert CONTRACT_TOP <= set(report)
    assert CONTRACT_SUMMARY <= set(report["summary"])
    assert CONTRACT_REFERENCES <= set(report["references"])
    assert all(CONTRACT_IMAGE <= set(entry) for entry in report["images"])
    assert report["backend"] == "insightface" and report["threshold"] == 0.60
    assert report["model"] == "tiny_pack/rec_tiny.onnx"
    assert report["providers"] == ["CPUExecutionProvider"] and report["device"] == "cpu"
    assert [entry["path"] for entry in report["images"]] == ["other.png", "same_a.png",
                                                            "same_b.png"]
    assert set(report["references"]["per_reference"][0]) == {"path", "loo_similarity", "yaw",
                                                             "pitch", "roll", "map"}
    # The tiny pack has no 68-point landmark model: pose is honestly absent, and said so.
    assert report["pose"]["method"] is None and "no 68-point landmark model" in \
        report["pose"]["unavailable"]
    assert all(entry["yaw"] is None for entry in report["images"])
    assert "pose: not measured" in result.stdout


def test_cli_fail_is_exit_1(tiny_pack, identity_dirs, tmp_path):
    gen, ref = identity_dirs
    result = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--model-pack", tiny_pack,
                        "--threshold", "0.95", "--no-cache")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "RESULT: FAIL" in result.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "no_images", "file", "all_unreadable"])
def test_cli_bad_folder_is_exit_2_with_one_line(case, tiny_pack, tmp_path):
    ref = tmp_path / "ref"
    save_bgr(face_image(1), ref / "r.png")
    gen = tmp_path / "gen"
    if case == "empty":
        gen.mkdir()
    elif case == "no_images":
        gen.mkdir()
        (gen / "notes.txt").write_text("not an image", encoding="utf-8")
    elif case == "file":
        gen.write_text("x", encoding="utf-8")
    elif case == "all_unreadable":
        gen.mkdir()
        (gen / "broken.png").write_bytes(b"not a png at all")
    result = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--model-pack", tiny_pack,
                        "--no-cache")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if case == "all_unreadable":  # found only after the references were embedded (progress)
        lines = lines[-1:]
        assert "none of its 1 images could be read; first: broken.png" in lines[0]
    assert len(lines) == 1 and lines[0].startswith("error: --generated"), result.stderr
    assert str(gen) in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["--threshold", "1.5"], "--threshold"),
    (["--min-detection-rate", "2"], "--min-detection-rate"),
    (["--no-cache", "--cache-dir", "x"], "--cache-dir"),
    (["--backend", "dlib", "--model-pack", "buffalo_l"], "--model-pack"),
    (["--face-policy", "biggest"], "--face-policy"),
])
def test_cli_flag_errors_are_exit_2(args, needle, tmp_path):
    result = run_script(SCRIPT, "--generated", tmp_path, "--reference", tmp_path, *args)
    assert result.returncode == 2
    assert needle in result.stderr


def test_cli_missing_pack_is_exit_2_and_says_where_to_put_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    ref = tmp_path / "ref"
    save_bgr(face_image(1), ref / "r.png")
    save_bgr(face_image(1), tmp_path / "gen" / "g.png")
    result = run_script(SCRIPT, "--generated", tmp_path / "gen", "--reference", ref,
                        "--model-pack", "antelopev2", "--no-cache",
                        env={"HOME": str(home), "USERPROFILE": str(home)})
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    expected = home / ".insightface" / "models" / "antelopev2"
    assert str(expected) in message and "nothing is downloaded" in message
    assert "--model-pack" in message
    assert not expected.exists()  # no download attempt created it


def test_cli_no_reference_face_is_exit_2(tiny_pack, tmp_path):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    save_bgr(np.zeros((320, 320, 3), np.uint8), ref / "blank.png")
    save_bgr(face_image(1), gen / "g.png")
    result = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--model-pack", tiny_pack,
                        "--no-cache")
    assert result.returncode == 2
    assert "no usable reference face" in result.stderr


def test_cli_device_cuda_without_working_cuda_is_exit_2_naming_the_cause(tiny_pack,
                                                                         identity_dirs, tmp_path):
    import onnxruntime

    gen, ref = identity_dirs
    out = tmp_path / "cuda.json"
    result = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--model-pack", tiny_pack,
                        "--device", "cuda", "--no-cache", "--json", out)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        # A GPU machine with onnxruntime-gpu: the run must really use CUDA (or fail loudly).
        if result.returncode != 2:
            report = json.loads(out.read_text(encoding="utf-8"))
            assert report["providers"][0] == "CUDAExecutionProvider"
            assert report["device"] == "cuda"
        else:
            assert "CUDA" in result.stderr
        return
    assert result.returncode == 2
    assert "onnxruntime-gpu" in result.stderr and "--device cuda" in result.stderr


def test_cuda_diagnosis_names_the_double_install(monkeypatch):
    monkeypatch.setattr(fse, "_installed_onnxruntime_distributions",
                        lambda: {"onnxruntime": "1.23.2", "onnxruntime-gpu": "1.23.2"})
    message = fse.cuda_fallback_diagnosis()
    assert "both onnxruntime" in message
    assert ("pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps "
            "onnxruntime-gpu==1.23.2") in message


def test_cli_dlib_device_cuda_is_exit_2(faces_dir, tmp_path):
    import dlib

    if dlib.DLIB_USE_CUDA:
        pytest.skip("this dlib is built with CUDA")
    photos = faces_dir / "photos"
    result = run_script(SCRIPT, "--backend", "dlib", "--device", "cuda", "--generated", photos,
                        "--reference", photos, "--no-cache")
    assert result.returncode == 2 and "without CUDA" in result.stderr


# ----------------------------------------------------------------------------------------------
# insightface backend, end to end through FaceAnalysis on the test-built pack
# ----------------------------------------------------------------------------------------------


def test_insightface_pack_loads_through_faceanalysis_routing(tiny_pack):
    from insightface.app import FaceAnalysis
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    backend = fse.InsightFaceBackend(model_pack=str(tiny_pack), device="cpu")
    assert isinstance(backend.app, FaceAnalysis)
    assert isinstance(backend.detector, SCRFD) and backend.detector.use_kps
    assert backend.detector.fmc == 3 and backend.detector._num_anchors == 2
    assert isinstance(backend.recognizer, ArcFaceONNX)
    assert backend.recognizer.input_size == (112, 112)
    assert (backend.recognizer.input_mean, backend.recognizer.input_std) == (127.5, 127.5)
    # Providers come from the live sessions.
    assert backend.providers == list(backend.recognizer.session.get_providers())
    assert backend.providers == ["CPUExecutionProvider"]


def test_insightface_alignment_and_normalisation(tiny_pack):
    from insightface.app.common import Face

    backend = fse.InsightFaceBackend(model_pack=str(tiny_pack), device="cpu")
    small = backend.embed(face_image(7, center=(224, 320)), "largest")
    large = backend.embed(face_image(7, canvas=(960, 1280), center=(832, 320), size=256),
                          "largest")
    other = backend.embed(face_image(8, center=(224, 320)), "largest")
    assert small.faces == large.faces == other.faces == 1
    # Boxes come back in original pixels, found where the faces are.
    np.testing.assert_allclose(small.boxes[0], [160, 256, 288, 384], atol=1)
    np.testing.assert_allclose(large.boxes[0], [704, 192, 960, 448], atol=2)
    for record in (small, large, other):
        assert abs(np.linalg.norm(record.embeddings[0]) - 1.0) < 1e-5
    # norm_crop aligned both to the same 112x112 content: same identity, ~1.
    assert float(small.embeddings[0] @ large.embeddings[0]) > 0.99
    assert float(small.embeddings[0] @ other.embeddings[0]) < 0.6
    # The raw network output is not unit length: the normalisation is ours.
    face = Face(bbox=small.boxes[0], kps=None, det_score=1.0)
    _boxes, kps = backend.detector.detect(face_image(7, center=(224, 320)),
                                          input_size=(640, 640))
    face.kps = kps[0]
    raw = backend.recognizer.get(face_image(7, center=(224, 320)), face)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 0.5


def test_insightface_face_counts_best_policy_and_no_face(tiny_pack, tmp_path):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    for index, center in enumerate([(320, 320), (192, 192), (448, 320)]):
        save_bgr(face_image(3, center=center), ref / f"r{index}.png")
    group = pack_kit.place_faces((640, 640), [(4, (160, 160), 128), (3, (480, 480), 128)])
    save_bgr(group, gen / "group.png")
    save_bgr(np.zeros((512, 512, 3), np.uint8), gen / "empty_scene.png")
    best = run_tiny(gen, ref, tiny_pack, None, use_cache=False, face_policy="best",
                    min_detection_rate=0.5)
    rows = by_path(best)
    assert rows["group.png"]["faces"] == 2 and rows["group.png"]["similarity"] > 0.99
    assert rows["empty_scene.png"] == {**rows["empty_scene.png"], "faces": 0, "detected": False,
                                       "similarity": None, "passed": False, "error": None}
    summary = best["summary"]
    assert summary["faces_found"] == 1 and summary["detection_rate"] == 0.5
    # The image without a face counts 0 in mean, and is left out of mean_detected.
    assert summary["mean"] == pytest.approx(rows["group.png"]["similarity"] / 2, abs=1e-6)
    assert summary["mean_detected"] == pytest.approx(rows["group.png"]["similarity"], abs=1e-6)
    assert summary["min"] == 0.0 and summary["pass"] is False  # mean ~0.5 < 0.60
    assert best["face_policy"] == "best"


def test_model_pack_found_by_name_nested_and_by_folder(tiny_pack, tmp_path, monkeypatch,
                                                       identity_dirs):
    gen, ref = identity_dirs
    home = tmp_path / "home"
    nested = home / ".insightface" / "models" / "antelopev2" / "antelopev2"
    shutil.copytree(tiny_pack, nested)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    folder, name = fse.resolve_model_pack("antelopev2")
    assert folder == nested.resolve() and name == "antelopev2"
    by_name = fse.evaluate(gen, ref, model_pack="antelopev2", device="cpu", use_cache=False,
                           show_progress=False)
    assert by_name["model"] == "antelopev2/rec_tiny.onnx"
    by_folder = fse.evaluate(gen, ref, model_pack=str(home / ".insightface" / "models" /
                                                      "antelopev2"),
                             device="cpu", use_cache=False, show_progress=False)
    assert [row["similarity"] for row in by_name["images"]] == \
        [row["similarity"] for row in by_folder["images"]]


@pytest.mark.parametrize("broken", ["garbage", "no_detector", "empty"])
def test_broken_pack_is_input_error(broken, tiny_pack, tmp_path, identity_dirs):
    gen, ref = identity_dirs
    pack = tmp_path / "bad_pack"
    pack.mkdir()
    if broken == "garbage":
        (pack / "model.onnx").write_bytes(b"this is not an onnx file")
    elif broken == "no_detector":
        shutil.copy(tiny_pack / "rec_tiny.onnx", pack / "rec_tiny.onnx")
    with pytest.raises(fse.InputError) as caught:
        fse.evaluate(gen, ref, model_pack=str(pack), device="cpu", use_cache=False,
                     show_progress=False)
    assert str(pack) in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def test_input_formats_exif_non_ascii_and_unreadable_files(tiny_pack, tmp_path):
    ref = tmp_path / "référence 名前"
    gen = tmp_path / "générées"
    save_bgr(face_image(5), ref / "portrait_é.png")
    save_bgr(face_image(5, center=(224, 224)), ref / "sub" / "ZWEI.PNG")
    (gen / "deep").mkdir(parents=True)
    rgb = np.ascontiguousarray(face_image(5, center=(352, 288))[:, :, ::-1])
    Image.fromarray(rgb).convert("RGBA").save(gen / "rgba.png")
    # EXIF orientation 6 (rotate 90 clockwise to view): store the pixels rotated the other way.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(gen / "rotated.JPG", exif=exif,
                                                                 quality=98)
    gray16 = (face_image(5, center=(320, 256))[:, :, 1].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(gen / "deep" / "gray16.tiff")
    Image.fromarray(face_image(5)[:, :, 0]).save(gen / "gray8.webp", lossless=True)
    (gen / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (gen / "notes.txt").write_text("ignored: not an image extension", encoding="utf-8")
    Image.new("L", (8001, 8001)).save(gen / "huge.png")
    report = run_tiny(gen, ref, tiny_pack, None, use_cache=False, min_detection_rate=0.5)
    rows = by_path(report)
    assert sorted(rows) == ["broken.png", "deep/gray16.tiff", "gray8.webp", "huge.png",
                            "rgba.png", "rotated.JPG"]
    assert rows["rgba.png"]["similarity"] > 0.99
    # Only the EXIF-applied orientation matches the reference texture.
    assert rows["rotated.JPG"]["similarity"] > 0.95
    assert rows["deep/gray16.tiff"]["detected"] and rows["gray8.webp"]["detected"]
    assert "not a readable image" in rows["broken.png"]["error"]
    assert "MP limit" in rows["huge.png"]["error"]
    assert {error["path"] for error in report["errors"]} == {"broken.png", "huge.png"}
    summary = report["summary"]
    assert summary["errors"] == 2 and summary["images"] == 6 and summary["faces_found"] == 4
    assert report["references"]["count"] == 2 and report["references"]["used"] == 2


def test_reference_outlier_warning_ceiling_and_identity_ratio(tiny_pack, tmp_path):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    for index, center in enumerate([(320, 320), (192, 192), (448, 320), (320, 448)]):
        save_bgr(face_image(6, center=center), ref / f"r{index}.png")
    save_bgr(face_image(9), ref / "stranger.png")
    save_bgr(np.zeros((256, 256, 3), np.uint8), ref / "no_face.png")
    save_bgr(face_image(6, center=(256, 256)), gen / "g.png")
    report = run_tiny(gen, ref, tiny_pack, None, use_cache=False)
    refs = report["references"]
    assert refs["count"] == 6 and refs["used"] == 5
    assert refs["skipped"] == [{"path": "no_face.png", "reason": "no face found"}]
    assert refs["outliers"] == ["stranger.png"]
    assert any("stranger.png" in warning for warning in report["warnings"])
    loo = [entry["loo_similarity"] for entry in refs["per_reference"]]
    assert refs["ceiling"] == pytest.approx(np.mean(loo), abs=1e-5)
    summary = report["summary"]
    assert summary["identity_ratio"] == pytest.approx(summary["mean"] / summary["ceiling"],
                                                      abs=1e-5)
    row = report["images"][0]
    assert row["max_reference"] > 0.99 > row["mean_reference"]


# ----------------------------------------------------------------------------------------------
# cache: hit, miss, invalidation, corruption; counted at insightface's own model methods
# ----------------------------------------------------------------------------------------------


def test_cache_hit_miss_and_invalidation(tiny_pack, identity_dirs, tmp_path, monkeypatch):
    gen, ref = identity_dirs
    cache = tmp_path / "cache"
    calls = CallCounter(monkeypatch)
    first = run_tiny(gen, ref, tiny_pack, cache)
    assert calls.recognize == 7  # 4 references + 3 generated, one face each
    assert first["stats"]["cache_misses"] == 7 and first["stats"]["cache_hits"] == 0

    calls.reset()
    second = run_tiny(gen, ref, tiny_pack, cache)
    assert (calls.detect, calls.recognize) == (0, 0)
    assert second["stats"]["cache_hits"] == 7
    assert second["images"] == first["images"] and second["summary"] == first["summary"]

    # Same references, one generated file changed: only that one is recomputed.
    save_bgr(face_image(2, center=(192, 320)), gen / "other.png")
    calls.reset()
    third = run_tiny(gen, ref, tiny_pack, cache)
    assert calls.recognize == 1 and third["stats"]["cache_misses"] == 1

    # The best policy embeds every face of generated images: new entries for those only.
    calls.reset()
    run_tiny(gen, ref, tiny_pack, cache, face_policy="best")
    assert calls.recognize == 3

    # A different model (other weights, same file names) never reuses entries.
    other_pack = tmp_path / "other_pack"
    pack_kit.build_pack(other_pack, recognizer_seed=99)
    calls.reset()
    run_tiny(gen, ref, other_pack, cache)
    assert calls.recognize == 7


def test_corrupt_cache_entries_are_ignored_and_rebuilt(tiny_pack, identity_dirs, tmp_path,
                                                       monkeypatch):
    gen, ref = identity_dirs
    cache = tmp_path / "cache"
    first = run_tiny(gen, ref, tiny_pack, cache)
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == 7
    entries[0].write_bytes(b"garbage")
    entries[1].write_bytes(entries[1].read_bytes()[:40])  # truncated zip
    np.savez(entries[2], embeddings=np.zeros((1, 3)), boxes=np.zeros((1, 4)),
             meta=np.array(json.dumps({"key": "someone else", "faces": 1})))
    calls = CallCounter(monkeypatch)
    second = run_tiny(gen, ref, tiny_pack, cache)
    assert calls.recognize == 3 and second["stats"]["cache_rebuilt"] == 3
    assert second["images"] == first["images"]
    calls.reset()
    run_tiny(gen, ref, tiny_pack, cache)
    assert calls.recognize == 0  # rebuilt entries are good again
    # Entries load without pickle.
    with np.load(entries[0], allow_pickle=False) as data:
        assert data["embeddings"].dtype == np.float32


def test_no_cache_writes_nothing_and_default_cache_is_the_user_folder(tiny_pack, identity_dirs,
                                                                      tmp_path, monkeypatch):
    gen, ref = identity_dirs
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    run_tiny(gen, ref, tiny_pack, None, use_cache=False)
    assert not xdg.exists()
    if sys.platform.startswith("linux"):
        assert fse.default_cache_dir() == xdg / "face_similarity_eval"
        result = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--model-pack",
                            tiny_pack, env={"XDG_CACHE_HOME": str(xdg)})
        assert result.returncode == 0, result.stderr
        assert len(list((xdg / "face_similarity_eval").rglob("*.npz"))) == 7


# ----------------------------------------------------------------------------------------------
# dlib backend: real model, real photos (../shared/faces)
# ----------------------------------------------------------------------------------------------


def _identities(faces_dir: Path) -> dict[str, list[str]]:
    identities: dict[str, list[str]] = {}
    lines = (faces_dir / "labels.tsv").read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        path, identity = line.split("\t")[:2]
        identities.setdefault(identity, []).append(path)
    return identities


@pytest.fixture(scope="module")
def dlib_cache(tmp_path_factory) -> Path:
    """One cache for the dlib tests: each real photo is embedded once per face mode."""
    return tmp_path_factory.mktemp("dlib_cache")


@pytest.mark.slow
def test_dlib_holdout_same_person_passes_other_people_fail(faces_dir, dlib_cache, tmp_path):
    identities = {name: sorted(paths) for name, paths in _identities(faces_dir).items()
                  if all(path.startswith("photos/") for path in paths)}
    checked = 0
    for identity, paths in sorted(identities.items()):
        if len(paths) < 3:
            continue
        for held_out in paths:
            case = tmp_path / f"{identity}_{Path(held_out).stem}"
            (case / "ref").mkdir(parents=True)
            (case / "gen").mkdir()
            for path in paths:
                if path != held_out:
                    shutil.copy(faces_dir / path, case / "ref" / Path(path).name)
            generated = [held_out] + [path for name, group in identities.items()
                                      if name != identity for path in group]
            for path in generated:
                shutil.copy(faces_dir / path, case / "gen" / Path(path).name)
            report = fse.evaluate(case / "gen", case / "ref", backend="dlib",
                                  cache_dir=dlib_cache, show_progress=False)
            assert report["threshold"] == fse.DEFAULT_THRESHOLDS["dlib"] == 0.92
            rows = by_path(report)
            assert all(row["detected"] for row in rows.values()), rows
            held = rows[Path(held_out).name]
            assert held["passed"], (identity, held_out, held)
            strangers = {name: row["similarity"] for name, row in rows.items()
                         if name != Path(held_out).name and row["passed"]}
            assert not strangers, (identity, held_out, strangers)
            checked += 1
    assert checked == 10  # obama 4, alex_lacamoire 3, kit_harington 3


@pytest.mark.slow
def test_dlib_cli_holdout_exit_codes(faces_dir, dlib_cache, tmp_path):
    ref, same, other = tmp_path / "ref", tmp_path / "same", tmp_path / "other"
    ref.mkdir()
    for name in ("obama_1.jpg", "obama_2.jpg", "obama_3.jpg"):
        shutil.copy(faces_dir / "photos" / name, ref / name)
    same.mkdir()
    shutil.copy(faces_dir / "photos" / "obama_4.jpg", same / "obama_4.jpg")
    other.mkdir()
    for name in ("biden_2.jpg", "kit_harington_2.jpg"):
        shutil.copy(faces_dir / "photos" / name, other / name)
    passed = run_script(SCRIPT, "--backend", "dlib", "--generated", same, "--reference", ref,
                        "--cache-dir", dlib_cache, "--json", tmp_path / "same.json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    report = json.loads((tmp_path / "same.json").read_text(encoding="utf-8"))
    assert report["backend"] == "dlib" and report["model"] == \
        "dlib_face_recognition_resnet_model_v1"
    assert report["threshold"] == 0.92 and report["references"]["ceiling"] > 0.92
    failed = run_script(SCRIPT, "--backend", "dlib", "--generated", other, "--reference", ref,
                        "--cache-dir", dlib_cache)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "RESULT: FAIL" in failed.stdout


@pytest.mark.slow
def test_dlib_tight_crops_are_found(faces_dir, dlib_cache):
    crops = faces_dir / "crops"
    # Against the photos: a crop scored against itself would be excluded as a copy.
    report = fse.evaluate(crops, faces_dir / "photos", backend="dlib", cache_dir=dlib_cache,
                          show_progress=False)
    rows = report["images"]
    assert len(rows) == 25 and all(row["detected"] for row in rows), \
        [row["path"] for row in rows if not row["detected"]]
    # At least one crop needed a retry (README: one crop has no face without padding).
    assert any(row["detected_by"] != "hog" for row in rows)


@pytest.mark.slow
def test_dlib_default_threshold_separates_the_calibration_crops(faces_dir, dlib_cache, tmp_path):
    """The documented calibration: each crop held out vs its own people's other crops (must
    pass) and vs each other person's crops (must fail), at the default threshold."""
    identities = {name: sorted(paths) for name, paths in _identities(faces_dir).items()
                  if paths[0].startswith("crops/")}
    for identity, paths in identities.items():
        (tmp_path / "all" / identity).mkdir(parents=True)
        for path in paths:
            shutil.copy(faces_dir / path, tmp_path / "all" / identity / Path(path).name)
    worst_same, best_other = 1.0, -1.0
    for identity, paths in sorted(identities.items()):
        # Other people's crops against this person's 5-crop centroid.
        report = fse.evaluate(tmp_path / "all", tmp_path / "all" / identity, backend="dlib",
                              cache_dir=dlib_cache, show_progress=False)
        for row in report["images"]:
            if not row["path"].startswith(identity + "/"):
                best_other = max(best_other, row["similarity"])
        # This person's crops: leave-one-out against the other 4.
        for entry in report["references"]["per_reference"]:
            worst_same = min(worst_same, entry["loo_similarity"])
    threshold = fse.DEFAULT_THRESHOLDS["dlib"]
    assert best_other < threshold < worst_same, (best_other, worst_same)


@pytest.mark.slow
def test_dlib_largest_and_best_face_in_a_group_picture(faces_dir, dlib_cache, tmp_path):
    big = Image.open(faces_dir / "photos" / "obama_1.jpg").convert("RGB")
    small = Image.open(faces_dir / "photos" / "biden_2.jpg").convert("RGB")
    big = big.resize((int(big.width * 900 / big.height), 900))
    small = small.resize((450, 450))
    canvas = Image.new("RGB", (big.width + small.width, 900), (128, 128, 128))
    canvas.paste(big, (0, 0))
    canvas.paste(small, (big.width, 225))
    gen, obama, biden = tmp_path / "gen", tmp_path / "obama", tmp_path / "biden"
    gen.mkdir()
    canvas.save(gen / "group.jpg", quality=95)
    for folder, names in ((obama, ("obama_2.jpg", "obama_4.jpg")),
                          (biden, ("biden_1.jpg",))):
        folder.mkdir()
        for name in names:
            shutil.copy(faces_dir / "photos" / name, folder / name)
    largest_vs_obama = fse.evaluate(gen, obama, backend="dlib", cache_dir=dlib_cache,
                                    show_progress=False)
    largest_vs_biden = fse.evaluate(gen, biden, backend="dlib", cache_dir=dlib_cache,
                                    show_progress=False)
    best_vs_biden = fse.evaluate(gen, biden, backend="dlib", face_policy="best",
                                 cache_dir=dlib_cache, show_progress=False)
    assert largest_vs_obama["images"][0]["faces"] == 2
    assert largest_vs_obama["images"][0]["passed"]
    assert not largest_vs_biden["images"][0]["passed"]  # the largest face is not Biden
    assert best_vs_biden["images"][0]["passed"]  # but the best-matching face is
    assert best_vs_biden["images"][0]["faces"] == 2


def test_load_image_keeps_a_dark_16_bit_image_dark(tmp_path):
    """A 16-bit image whose values all sit below 256 is still 16-bit: 200/65535 is near black."""
    Image.fromarray(np.full((40, 40), 200, np.uint16)).save(tmp_path / "dark16.png")
    assert Image.open(tmp_path / "dark16.png").mode.startswith("I")
    image = fse.load_image(tmp_path / "dark16.png")
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8 and int(image.max()) <= 1


# ----------------------------------------------------------------------------------------------
# Hostile inputs: degenerate images, dangling links, copies of the references, output paths
# ----------------------------------------------------------------------------------------------


def test_degenerate_images_and_dangling_links_are_error_rows(tiny_pack, identity_dirs, tmp_path):
    gen, ref = identity_dirs
    Image.new("RGB", (1000, 1), "white").save(gen / "banner.png")
    Image.new("RGB", (5000, 5), "white").save(gen / "strip.png")
    Image.new("RGB", (2000, 40), "white").save(gen / "ribbon.png")
    Image.new("RGB", (31, 400), "white").save(gen / "narrow.png")
    Image.new("1", (1, 100000)).save(gen / "tall.png")
    Image.new("1", (64_000_000, 1)).save(gen / "wide.png")
    Image.new("RGB", (32, 640), "white").save(gen / "edge_ok.png")  # 1:20, 32 px: allowed
    (gen / "gone.png").symlink_to(tmp_path / "deleted.png")
    report = run_tiny(gen, ref, tiny_pack, None, use_cache=False, min_detection_rate=0.1)
    rows = by_path(report)
    assert "under 32 px" in rows["banner.png"]["error"]
    assert "under 32 px" in rows["strip.png"]["error"]
    assert "1:20" in rows["ribbon.png"]["error"] and "2000x40" in rows["ribbon.png"]["error"]
    assert "under 32 px" in rows["narrow.png"]["error"]
    assert "1x100000" in rows["tall.png"]["error"]
    assert "64000000x1" in rows["wide.png"]["error"]
    assert rows["edge_ok.png"]["error"] is None and not rows["edge_ok.png"]["detected"]
    assert "dangling symbolic link" in rows["gone.png"]["error"]
    summary = report["summary"]
    # Every image counts: 10 images, 3 with a face; the errors count 0 in the mean.
    assert summary["images"] == 11 and summary["errors"] == 7 and summary["faces_found"] == 3
    assert summary["mean"] == pytest.approx(
        sum(row["similarity"] or 0 for row in rows.values()) / 11, abs=1e-5)


def test_huge_allocations_are_gone_under_an_address_space_limit(tiny_pack, identity_dirs,
                                                                  tmp_path):
    """1x100000 and 64,000,000x1 PNGs made this eval allocate 56 GiB and 8 PiB: under a 4 GiB
    address-space limit the CLI now finishes, listing them as errors."""
    if sys.platform != "linux":
        pytest.skip("the address-space limit needs Linux")
    import resource
    import subprocess

    gen, ref = identity_dirs
    Image.new("1", (1, 100000)).save(gen / "tall.png")
    Image.new("1", (64_000_000, 1)).save(gen / "wide.png")
    limit = 4 << 30
    result = subprocess.run(
        [sys.executable, str(Path(fse.__file__)), "--generated", str(gen), "--reference", str(ref),
         "--model-pack", str(tiny_pack), "--no-cache", "--device", "cpu"],
        capture_output=True, text=True, encoding="utf-8", timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert "tall.png" in result.stderr and "wide.png" in result.stderr
    assert "ERROR: image is 1x100000 px" in result.stdout


def test_copies_of_references_are_flagged_and_excluded(tiny_pack, identity_dirs, tmp_path):
    gen, ref = identity_dirs
    shutil.copyfile(ref / "r1.png", gen / "byte_copy.png")
    Image.open(ref / "r2.png").save(gen / "pixel_copy.bmp")  # other bytes, the same pixels
    report = run_tiny(gen, ref, tiny_pack, None, use_cache=False)
    rows = by_path(report)
    assert rows["byte_copy.png"]["identical_to_reference"] == "r1.png"
    assert rows["pixel_copy.bmp"]["identical_to_reference"] == "r2.png"
    assert rows["byte_copy.png"]["excluded"] and rows["pixel_copy.bmp"]["excluded"]
    assert not rows["same_a.png"]["excluded"]
    summary = report["summary"]
    assert summary["images"] == 3 and summary["excluded"] == 2
    counted = [row["similarity"] for row in report["images"] if not row["excluded"]]
    assert summary["mean"] == pytest.approx(np.mean(counted), abs=1e-5)
    assert any("identical to a reference" in warning for warning in report["warnings"])
    # Cached embeddings keep the pixel digest: a second run finds the copies again.
    cache = tmp_path / "cache"
    run_tiny(gen, ref, tiny_pack, cache)
    again = run_tiny(gen, ref, tiny_pack, cache)
    assert again["stats"]["cache_misses"] == 0 and again["summary"]["excluded"] == 2


def test_all_copies_is_exit_2(tiny_pack, identity_dirs, tmp_path):
    _, ref = identity_dirs
    result = run_script(SCRIPT, "--generated", ref, "--reference", ref, "--model-pack", tiny_pack,
                        "--no-cache")
    assert result.returncode == 2
    assert "identical to reference images" in result.stderr.strip().splitlines()[-1]


def test_bad_json_path_is_exit_2_before_any_image_is_read(tiny_pack, identity_dirs, tmp_path):
    gen, ref = identity_dirs
    regular = tmp_path / "regular.txt"
    regular.write_text("x", encoding="utf-8")
    for target in (regular / "report.json", tmp_path):
        result = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--model-pack",
                            tiny_pack, "--cache-dir", tmp_path / "cache", "--json", target)
        assert result.returncode == 2 and "error: --json" in result.stderr
        assert result.stdout == "" and not (tmp_path / "cache").exists()


def test_unwritable_cache_is_one_warning_and_the_run_goes_on(tiny_pack, identity_dirs, tmp_path):
    gen, ref = identity_dirs
    blocker = tmp_path / "cache_is_a_file"
    blocker.write_text("x", encoding="utf-8")
    result = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--model-pack", tiny_pack,
                        "--cache-dir", blocker)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("embedding cache") == 1 and "cannot be written" in result.stderr


def test_download_pack_is_opt_in_and_uses_insightfaces_downloader(tmp_path):
    """Offline by default (the downloader is never reached); --download-pack calls
    insightface.utils.storage.download for real, which goes through a local refusing proxy."""
    from local_proxy import RefusingProxy

    home = tmp_path / "home"
    home.mkdir()
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    save_bgr(face_image(1), ref / "r.png")
    save_bgr(face_image(1), gen / "g.png")
    common = ["--generated", gen, "--reference", ref, "--model-pack", "buffalo_l", "--no-cache"]
    url = "https://github.com/deepinsight/insightface/releases/download/model-zoo/buffalo_l.zip"
    with RefusingProxy() as proxy:
        env = {"HOME": str(home), "USERPROFILE": str(home), **proxy.env}
        offline = run_script(SCRIPT, *common, env=env)
        assert offline.returncode == 2
        message = offline.stderr.strip()
        assert len(message.splitlines()) == 1
        assert "--download-pack" in message and f"unzip {url}" in message
        assert "--model-pack /path/to/pack_folder" in message
        assert proxy.requests == [] and not (home / ".insightface").exists()
        fetched = run_script(SCRIPT, *common, "--download-pack", env=env)
        assert fetched.returncode == 2, fetched.stderr
        assert proxy.requests[0].startswith("CONNECT github.com:443")
        assert url in fetched.stderr and "could not fetch" in fetched.stderr
        assert fetched.stdout == ""  # the downloader's own print went to stderr
        # A pack folder left empty by a broken download: offline says how, and the flag retries.
        empty = home / ".insightface" / "models" / "buffalo_l"
        empty.mkdir(parents=True)
        offline = run_script(SCRIPT, *common, env=env)
        assert offline.returncode == 2 and "no .onnx files" in offline.stderr
        assert "--download-pack" in offline.stderr
        before = len(proxy.requests)
        retried = run_script(SCRIPT, *common, "--download-pack", env=env)
        assert retried.returncode == 2 and len(proxy.requests) == before + 1
    dlib = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--backend", "dlib",
                      "--download-pack")
    assert dlib.returncode == 2
    assert "error: --download-pack applies only to --backend insightface" in dlib.stderr


# ----------------------------------------------------------------------------------------------
# The LoRA judge's per-face measures: pose, memorisation, rigidity (issue 17)
# ----------------------------------------------------------------------------------------------

import judge_sweeps  # noqa: E402  (tests/ is on sys.path, as for insightface_test_pack)

sc = load_script("evals/scorecard.py")


def turned_face(yaw: float, pitch: float = 0.0, *, center=(96.0, 96.0), eye_px: float = 56.0
                ) -> np.ndarray:
    """68 landmark pixels (iBUG order; only the six pose points differ from the nose) of the
    generic face turned by `yaw` and `pitch` (POSE_CONVENTION), seen from far away."""
    def rotation_y(angle):
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    def rotation_x(angle):
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

    rotation = rotation_y(np.radians(-yaw)) @ rotation_x(np.radians(-pitch))
    scale = eye_px / float(fse.POSE_MODEL[3, 0] - fse.POSE_MODEL[2, 0])
    projected = (fse.POSE_MODEL @ rotation.T)[:, :2] * scale + np.asarray(center)
    points = np.tile(projected[0], (68, 1))
    points[list(fse.POSE_LANDMARKS)] = projected
    return points


@pytest.mark.parametrize("yaw, pitch", [(0, 0), (30, 0), (-30, 0), (15, 10), (-45, -12)])
def test_head_pose_reads_back_a_known_turn_and_its_mirror(yaw, pitch):
    """cv2.solvePnP on the generic face drawn at a known turn; its mirror image negates yaw
    (and roll), never pitch."""
    points = turned_face(yaw, pitch, center=(300.0, 260.0))
    found = fse.head_pose(points, (320.0, 240.0), 640.0)
    assert found is not None
    assert found[0] == pytest.approx(yaw, abs=3.0) and found[1] == pytest.approx(pitch, abs=3.0)
    mirrored = points.copy()
    mirrored[:, 0] = 640.0 - mirrored[:, 0]
    # Mirroring swaps left and right: the image-left eye corner becomes the image-right one.
    swap = {36: 45, 45: 36, 48: 54, 54: 48}
    mirrored = mirrored[[swap.get(index, index) for index in range(68)]]
    back = fse.head_pose(mirrored, (320.0, 240.0), 640.0)
    assert back[0] == pytest.approx(-found[0], abs=1.0)
    assert back[1] == pytest.approx(found[1], abs=1.0)
    assert back[2] == pytest.approx(-found[2], abs=1.0)


def test_head_pose_refuses_what_is_no_face():
    assert fse.head_pose(np.zeros((5, 2)), (10, 10), 20) is None  # 5 points are not 68
    assert fse.head_pose(np.full((68, 2), np.nan), (10, 10), 20) is None
    assert fse.head_pose(np.full((68, 2), 7.0), (10, 10), 20) is None  # no eye distance


def test_insightface_pose_through_a_landmark_model_in_the_pack(tmp_path):
    """A pack with a landmark_3d_68 model (as buffalo_l's 1k3d68.onnx): insightface's own
    Landmark.get places the 68 points around each detected face, head_pose reads the turn.
    The faces sit at the image centre: yaw is measured from the camera's axis, and the model
    draws the turn as seen along it (a face off to one side would read a few degrees less)."""
    pack = pack_kit.build_pack(tmp_path / "pack_lmk", landmarks=turned_face(25.0))
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    save_bgr(face_image(1, center=(320, 320)), ref / "r1.png")
    save_bgr(face_image(1, canvas=(960, 960), center=(480, 480), size=192), ref / "r2.png")
    save_bgr(face_image(1, canvas=(1280, 1280), center=(640, 640), size=256), gen / "g1.png")
    report = run_tiny(gen, ref, pack, tmp_path / "cache")
    assert report["pose"]["method"].startswith(fse.POSE_METHOD + ":insightface68-")
    (row,) = report["images"]
    assert row["yaw"] == pytest.approx(25.0, abs=4.0) and abs(row["pitch"]) < 4.0
    assert all(entry["yaw"] == pytest.approx(25.0, abs=4.0)
               for entry in report["references"]["per_reference"])
    again = run_tiny(gen, ref, pack, tmp_path / "cache")  # poses come back from the cache
    assert again["stats"]["cache_hits"] == 3 and again["images"] == report["images"]


@pytest.mark.slow
def test_dlib_yaw_signs_on_mirrored_photos_and_near_zero_when_frontal(faces_dir, dlib_cache,
                                                                      tmp_path):
    """Every shared photo and its mirror image: a turned face's yaw changes sign, frontal photos
    read near 0, and the sign is the documented one (checked by eye on two photos: Kit
    Harington in kit_harington_2 turns to his right, Alex Lacamoire in alex_lacamoire_1 to
    his left)."""
    gen = tmp_path / "gen"
    gen.mkdir()
    for path in sorted((faces_dir / "photos").iterdir()):
        image = Image.open(path).convert("RGB")
        image.save(gen / f"{path.stem}.png")
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(gen / f"{path.stem}_mirrored.png")
    report = fse.evaluate(gen, faces_dir / "crops", backend="dlib", cache_dir=dlib_cache,
                          show_progress=False)
    assert report["pose"]["method"].startswith(fse.POSE_METHOD + ":dlib68-")
    yaw = {row["path"][:-4]: row["yaw"] for row in report["images"]}
    assert all(value is not None for value in yaw.values()), yaw
    turned = 0
    for path in sorted((faces_dir / "photos").iterdir()):
        original, mirrored = yaw[path.stem], yaw[f"{path.stem}_mirrored"]
        assert abs(original + mirrored) <= 10.0, (path.name, original, mirrored)
        if abs(original) >= 8.0:
            assert np.sign(mirrored) == -np.sign(original), (path.name, original, mirrored)
            turned += 1
    assert turned >= 8
    for frontal in ("obama_1", "alex_lacamoire_3", "biden_2"):
        assert abs(yaw[frontal]) < 8.0 and abs(yaw[f"{frontal}_mirrored"]) < 8.0, frontal
    assert yaw["kit_harington_2"] < -20 and yaw["kit_harington_2_mirrored"] > 20
    assert yaw["alex_lacamoire_1"] > 10 and yaw["alex_lacamoire_1_mirrored"] < -10
    pose = report["pose"]
    assert pose["faces_with_pose"] == 28 and pose["frontal_faces"] + pose["turned_faces"] == 28
    assert "yaw > 0: the face turned to the subject's left" in pose["convention"]


@pytest.fixture(scope="module")
def judge_sets(faces_dir, tmp_path_factory):
    """Two training photos (obama_1, obama_2), their light re-encodings, crops of the person's
    two other photos, 8 copies of one photo and 8 different pictures (tests/judge_sweeps.py)."""
    root = tmp_path_factory.mktemp("judge_sets")
    photos = judge_sweeps.Photos(faces_dir, sc)
    training = ("obama_1.jpg", "obama_2.jpg")
    return {"training": judge_sweeps.write_training(photos, root / "training", training),
            "copies": judge_sweeps.copies_set(photos, root / "copies", names=training)[0].parent,
            "others": judge_sweeps.others_set(photos, root / "others",
                                              names=("obama_3.jpg", "obama_4.jpg"))[0].parent,
            "rigid": judge_sweeps.rigid_set(photos, root / "rigid", source="obama_4.jpg")[0].parent,
            "varied": judge_sweeps.varied_set(photos, root / "varied")[0].parent}


@pytest.mark.slow
def test_dlib_memorisation_flags_re_encoded_training_photos_not_other_photos(judge_sets,
                                                                             dlib_cache):
    copies = fse.evaluate(judge_sets["copies"], judge_sets["training"], backend="dlib",
                          cache_dir=dlib_cache, show_progress=False)
    assert copies["summary"]["excluded"] == 0  # re-encoded, not identical: they are scored
    assert copies["summary"]["copy_rate"] >= 0.9, [row["nearest_training_similarity"]
                                                   for row in copies["images"]]
    for row in copies["images"]:
        assert row["copy_of"] == row["nearest_training"] in ("obama_1.jpg", "obama_2.jpg")
        assert row["copy_reason"] in ("face", "face and whole image")
    memo = copies["memorisation"]
    assert memo["closest_training_pair"][:2] == ["obama_1.jpg", "obama_2.jpg"]
    assert memo["copy_similarity"] == pytest.approx(
        1 - 0.5 * (1 - memo["closest_training_pair"][2]), abs=1e-6)
    others = fse.evaluate(judge_sets["others"], judge_sets["training"], backend="dlib",
                          cache_dir=dlib_cache, show_progress=False)
    assert others["summary"]["copy_rate"] <= 0.1
    assert all(row["detected"] and row["phash_distance"] > fse.PHASH_MAX_DISTANCE
               for row in others["images"])
    again = fse.evaluate(judge_sets["copies"], judge_sets["training"], backend="dlib",
                         cache_dir=dlib_cache, show_progress=False)
    assert again["stats"]["cache_misses"] == 0 and again["images"] == copies["images"]


@pytest.mark.slow
def test_dlib_rigidity_eight_copies_of_one_photo_against_eight_different_pictures(judge_sets,
                                                                                  dlib_cache):
    rigid = fse.evaluate(judge_sets["rigid"], judge_sets["training"], backend="dlib",
                         cache_dir=dlib_cache, show_progress=False)
    varied = fse.evaluate(judge_sets["varied"], judge_sets["training"], backend="dlib",
                          cache_dir=dlib_cache, show_progress=False)
    assert rigid["summary"]["images"] == varied["summary"]["images"] == 8
    assert rigid["summary"]["rigid"] and rigid["summary"]["spread_ratio"] < 0.1
    assert not varied["summary"]["rigid"] and varied["summary"]["spread_ratio"] > 0.6
    assert rigid["rigidity"]["reference_spread"] == varied["rigidity"]["reference_spread"] > 0
    assert rigid["rigidity"]["ratio_threshold"] == fse.RIGID_SPREAD_RATIO
    # The 8 copies are one pose; the 8 pictures (4 photos and their mirrors) are not.
    assert rigid["pose"]["yaw_std"] < 2.0 < varied["pose"]["yaw_std"]


def test_perceptual_hash_is_imagehash_phash_bit_for_bit(faces_dir, tmp_path):
    """The hash is imagehash.phash (the usual library) of the 128 px reduction, computed with a
    DCT matrix instead of scipy: every shared photo, crop, mirror image and re-encoding agrees."""
    import cv2
    import imagehash
    from PIL import Image as PILImage

    paths = sorted((faces_dir / "photos").iterdir()) + sorted((faces_dir / "crops").iterdir())
    checked = 0
    for path in paths:
        bgr = fse.load_image(path)
        for variant in (bgr, np.ascontiguousarray(bgr[:, ::-1]), cv2.GaussianBlur(bgr, (5, 5), 2)):
            small = cv2.resize(variant, (fse.PHASH_SIDE, fse.PHASH_SIDE),
                               interpolation=cv2.INTER_AREA)
            expected = str(imagehash.phash(PILImage.fromarray(small[:, :, ::-1].copy())))
            assert fse.perceptual_hash(variant) == expected, path.name
            checked += 1
    assert checked == 3 * 39
    assert fse.hash_distance("ffff000000000000", "0fff000000000001") == 5


@pytest.mark.slow
def test_whole_image_copies_are_found_without_imagehash_installed(judge_sets, tmp_path):
    """No dependency on imagehash or scipy at run time: with `import imagehash` failing, the
    hashes and the whole-image copies are the same."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in ("imagehash", "scipy"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} blocked by the test')\n",
                                            encoding="utf-8")
    result = run_script(SCRIPT, "--backend", "dlib", "--generated", judge_sets["copies"],
                        "--reference", judge_sets["training"], "--cache-dir", tmp_path / "cache",
                        "--json", tmp_path / "r.json", env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["memorisation"]["phash"] == fse.PHASH_METHOD
    assert all(row["phash_distance"] <= fse.PHASH_MAX_DISTANCE for row in report["images"])
    assert all(row["copy_reason"] == "face and whole image" for row in report["images"])


@pytest.mark.slow
def test_held_out_references_and_a_separate_training_folder(judge_sets, faces_dir, dlib_cache,
                                                            tmp_path):
    """--reference held-out photos, --training the training photos: identity is measured on
    the first, copies are found against the second; a held-out photo that is a training photo
    is named."""
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    shutil.copy(faces_dir / "photos" / "obama_3.jpg", held_out / "obama_3.jpg")
    shutil.copy(faces_dir / "photos" / "obama_4.jpg", held_out / "obama_4.jpg")
    report = fse.evaluate(judge_sets["copies"], held_out, training_dir=judge_sets["training"],
                          backend="dlib", cache_dir=dlib_cache, show_progress=False)
    assert report["identity_against"] == "held-out photos"
    assert report["training"]["separate"] and report["training"]["faces"] == 2
    assert report["summary"]["copy_rate"] >= 0.9
    assert {row["nearest_training"] for row in report["images"]} == {"obama_1.jpg",
                                                                     "obama_2.jpg"}
    assert {entry["path"] for entry in report["training"]["per_photo"]} == {"obama_1.jpg",
                                                                            "obama_2.jpg"}
    shutil.copy(judge_sets["training"] / "obama_1.jpg", held_out / "not_held_out.jpg")
    leaky = fse.evaluate(judge_sets["others"], held_out, training_dir=judge_sets["training"],
                         backend="dlib", cache_dir=dlib_cache, show_progress=False)
    assert any("held-out reference not_held_out.jpg is a near-duplicate of training photo "
               "obama_1.jpg" in warning for warning in leaky["warnings"])
    same = fse.evaluate(judge_sets["others"], judge_sets["training"],
                        training_dir=judge_sets["training"], backend="dlib",
                        cache_dir=dlib_cache, show_progress=False)
    assert same["identity_against"] == "training photos" and not same["training"]["separate"]


def test_cli_missing_or_empty_training_folder_is_exit_2(tiny_pack, identity_dirs, tmp_path):
    gen, ref = identity_dirs
    empty = tmp_path / "empty"
    empty.mkdir()
    for training, needle in ((tmp_path / "nope", "--training folder not found"),
                             (empty, "--training folder has no images")):
        result = run_script(SCRIPT, "--generated", gen, "--reference", ref, "--training",
                            training, "--model-pack", tiny_pack, "--device", "cpu", "--no-cache")
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert result.stdout == "" and "Traceback" not in result.stderr
