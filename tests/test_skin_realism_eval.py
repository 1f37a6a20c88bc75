"""evals/skin_realism_eval.py: the CLI and its exit codes, and the score properties on real photos.

Property bars (on the 14 real photos in ../shared/faces/photos, 5 people):
- leave-one-out: each photo scored against the other 13 through evaluate(); median
  overall_realism_score >= 0.7, median texture_score and color_naturalness_score >= 0.8;
- Gaussian smoothing of sigma 1, 2 and 4 px at the measuring scale (sigma_image = s x face width /
  FACE_WIDTH) lowers texture_score strictly at each step, for every photo;
- an orange cast (blue x 0.7, red x 1.18) and a 50% desaturation each lower
  color_naturalness_score, for every photo;
- rescaling (0.75x and 0.5x, INTER_AREA) changes texture_score by at most a third of what the
  weakest smoothing (sigma 1) takes off, for every photo whose rescaled face is still >=
  FACE_WIDTH (a smaller face has lost the detail for good), and by at most a tenth in the median.
"""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import load_script, run_script

SCRIPT = "evals/skin_realism_eval.py"
SMOOTHING_STRENGTHS = (1.0, 2.0, 4.0)


@pytest.fixture(scope="module")
def skin():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def photo_paths(faces_dir):
    return sorted((faces_dir / "photos").iterdir())


@pytest.fixture(scope="module")
def photos(skin, photo_paths):
    """name -> (BGR image, measurement, reference model of the other photos)."""
    images = [skin.load_image(path) for path in photo_paths]
    measurements = [skin.measure_image(image) for image in images]
    result = {}
    for index, path in enumerate(photo_paths):
        others = measurements[:index] + measurements[index + 1:]
        result[path.name] = (images[index], measurements[index], skin.build_reference_model(others))
    return result


def link_or_copy(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_png(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(encoded.tobytes())


def score(skin, image, model):
    return skin.score_measurement(skin.measure_image(image), model)


def smoothed(skin, image, face_width, strength):
    return cv2.GaussianBlur(image, (0, 0), strength * face_width / skin.FACE_WIDTH)


# ----------------------------------------------------------------------------- command line


def test_help_shows_usage_and_flags():
    completed = run_script(SCRIPT, "--help")
    assert completed.returncode == 0
    for text in ("--generated", "--reference", "--json", "--reencode-jpeg", "JPEG TRAP",
                 "overall_realism_score"):
        assert text in completed.stdout


@pytest.mark.slow
def test_cli_run_with_nested_non_ascii_exif_and_bad_files(tmp_path, photo_paths):
    references = tmp_path / "référence"
    for path in photo_paths[4:9]:
        link_or_copy(path, references / "nested" / path.name)
    generated = tmp_path / "généré"
    upright = cv2.imread(str(photo_paths[9]))
    write_png(upright, generated / "sub 写真" / "portrait_ü.png")
    # Stored turned a quarter to the left, with the EXIF tag that turns it upright on display.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(upright[:, :, ::-1], k=1)).save(generated / "exif_rotated.JPG",
                                                              quality=95, exif=exif)
    (generated / "broken.jpg").write_bytes(b"this is not an image")
    (generated / "empty.png").write_bytes(b"")
    (generated / "notes.txt").write_text("ignored", encoding="utf-8")
    out = tmp_path / "out" / "skin.json"

    completed = run_script(SCRIPT, "--generated", generated, "--reference", references,
                           "--json", out, "--no-progress")
    assert completed.returncode == 0, completed.stderr
    assert "portrait_ü.png" in completed.stdout
    assert "ERROR" in completed.stdout and "broken.jpg" in completed.stdout
    assert "errors 2" in completed.stdout
    assert "not scored" in completed.stderr

    result = json.loads(out.read_text(encoding="utf-8"))
    rows = {row["path"]: row for row in result["images"]}
    assert set(rows) == {"broken.jpg", "empty.png", "exif_rotated.JPG", "sub 写真/portrait_ü.png"}
    assert result["summary"]["images"] == 4
    assert result["summary"]["scored"] == 2
    assert result["summary"]["errors"] == 2
    assert {item["path"] for item in result["errors"]} == {"broken.jpg", "empty.png"}
    assert rows["broken.jpg"]["error"] and rows["broken.jpg"]["texture_score"] is None
    upright_row, rotated_row = rows["sub 写真/portrait_ü.png"], rows["exif_rotated.JPG"]
    # EXIF turned it upright: same size, a face found at the same place.
    assert rotated_row["raw"]["image_size"] == upright_row["raw"]["image_size"]
    assert upright_row["face_found"] and rotated_row["face_found"]
    (x0, y0, w0, h0), (x1, y1, w1, h1) = upright_row["raw"]["face_box"], rotated_row["raw"]["face_box"]
    assert abs(x0 - x1) < 0.1 * w0 and abs(y0 - y1) < 0.1 * h0 and abs(w0 - w1) < 0.1 * w0
    for row in (upright_row, rotated_row):
        for key in ("texture_score", "color_naturalness_score", "overall_realism_score"):
            assert 0.0 <= row[key] <= 1.0
        assert row["raw"]["laplacian_variance"] > 0 and row["error"] is None
    assert result["references"]["count"] == 5
    assert set(result["references"]["leave_one_out"]) >= {
        "texture_score_mean", "color_naturalness_score_mean", "overall_realism_score_mean"}
    assert set(result["summary"]) >= {"images", "scored", "errors", "faces_found", "texture_score",
                                      "color_naturalness_score", "overall_realism_score"}
    assert result["method"]["face_width_px"] == 160
    assert result["generated_dir"] == str(generated)


def test_cli_missing_generated_folder_is_exit_2(tmp_path):
    (tmp_path / "ref").mkdir()
    completed = run_script(SCRIPT, "--generated", tmp_path / "nowhere", "--reference", tmp_path / "ref")
    assert completed.returncode == 2
    assert "does not exist" in completed.stderr
    assert completed.stdout == ""


def test_cli_empty_folder_is_exit_2(tmp_path):
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "readme.txt").write_text("no images here", encoding="utf-8")
    (tmp_path / "ref").mkdir()
    completed = run_script(SCRIPT, "--generated", tmp_path / "gen", "--reference", tmp_path / "ref")
    assert completed.returncode == 2
    assert "holds no images" in completed.stderr


def test_cli_bad_quality_names_the_flag(tmp_path):
    completed = run_script(SCRIPT, "--generated", tmp_path, "--reference", tmp_path,
                           "--reencode-jpeg", "101")
    assert completed.returncode == 2
    assert "--reencode-jpeg" in completed.stderr


def test_cli_missing_required_flag_is_exit_2(tmp_path):
    completed = run_script(SCRIPT, "--generated", tmp_path)
    assert completed.returncode == 2
    assert "--reference" in completed.stderr


def test_too_few_references_is_exit_2(tmp_path, skin, photo_paths, capsys):
    for path in photo_paths[:2]:
        link_or_copy(path, tmp_path / "ref" / path.name)
    (tmp_path / "ref" / "bad.png").write_bytes(b"\x89PNG broken")
    link_or_copy(photo_paths[3], tmp_path / "gen" / photo_paths[3].name)
    code = skin.main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                      "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "at least 3" in err and "bad.png" in err


def test_no_readable_generated_image_is_exit_2(tmp_path, skin, photo_paths, capsys):
    for path in photo_paths[:3]:
        link_or_copy(path, tmp_path / "ref" / path.name)
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "a.jpg").write_bytes(b"garbage")
    code = skin.main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref")])
    assert code == 2
    assert "could be read" in capsys.readouterr().err


def test_main_in_process_writes_json(tmp_path, skin, photo_paths, capsys):
    for path in photo_paths[:4]:
        link_or_copy(path, tmp_path / "ref" / path.name)
    link_or_copy(photo_paths[5], tmp_path / "gen" / photo_paths[5].name)
    out = tmp_path / "result.json"
    assert skin.main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                      "--json", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert photo_paths[5].name in stdout and "mean texture_score" in stdout
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["summary"]["scored"] == 1
    assert result["images"][0]["raw"]["hellinger_distance"] >= 0.0


# ----------------------------------------------------------------------------- in process


def test_no_face_falls_back_to_whole_image(tmp_path, skin, photo_paths):
    rng = np.random.default_rng(0)
    base = np.empty((400, 400, 3), np.float32)
    base[:] = (120, 150, 205)  # a skin-like BGR colour, no face anywhere
    image = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
    write_png(image, tmp_path / "gen" / "wall.png")
    for path in photo_paths[:4]:
        link_or_copy(path, tmp_path / "ref" / path.name)
    result = skin.evaluate(tmp_path / "gen", tmp_path / "ref", show_progress=False)
    row = result["images"][0]
    assert row["face_found"] is False and row["raw"]["face_box"] is None
    assert row["raw"]["mask"].startswith("image_skin")
    assert 0.0 <= row["overall_realism_score"] <= 1.0
    assert result["summary"]["faces_found"] == 0
    assert any("no face found" in warning for warning in result["warnings"])


@pytest.mark.slow
def test_leave_one_out_real_photos_score_high(tmp_path, skin, photo_paths):
    """Each photo against the other 13 through evaluate() (measurements cached within the run)."""
    pool = tmp_path / "pool"
    for path in photo_paths:
        link_or_copy(path, pool / path.name)
    rows = []
    for index, path in enumerate(photo_paths):
        case = tmp_path / f"case{index}"
        link_or_copy(pool / path.name, case / "gen" / path.name)
        for other in photo_paths:
            if other != path:
                link_or_copy(pool / other.name, case / "ref" / other.name)
        result = skin.evaluate(case / "gen", case / "ref", show_progress=False)
        rows.append(result["images"][0])
        assert result["references"]["count"] == len(photo_paths) - 1
    overall = [row["overall_realism_score"] for row in rows]
    texture = [row["texture_score"] for row in rows]
    color = [row["color_naturalness_score"] for row in rows]
    assert all(row["face_found"] for row in rows)
    assert all(0.0 <= value <= 1.0 for value in overall + texture + color)
    assert np.median(overall) >= 0.7, overall
    assert np.median(texture) >= 0.8, texture
    assert np.median(color) >= 0.8, color


@pytest.mark.slow
def test_smoothing_lowers_texture_score_strictly_for_every_photo(skin, photos):
    for name, (image, measurement, model) in photos.items():
        face_width = measurement["raw"]["face_width_px"]
        scores = [skin.score_measurement(measurement, model)["texture_score"]]
        for strength in SMOOTHING_STRENGTHS:
            scores.append(score(skin, smoothed(skin, image, face_width, strength), model)["texture_score"])
        assert all(a > b for a, b in zip(scores, scores[1:])), (name, scores)


@pytest.mark.slow
def test_colour_cast_lowers_color_naturalness_for_every_photo(skin, photos):
    for name, (image, measurement, model) in photos.items():
        natural = skin.score_measurement(measurement, model)["color_naturalness_score"]
        orange = np.clip(image.astype(np.float32) * np.float32([0.7, 1.0, 1.18]), 0, 255).astype(np.uint8)
        gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR).astype(np.float32)
        washed = np.clip(gray + 0.5 * (image.astype(np.float32) - gray), 0, 255).astype(np.uint8)
        for label, cast in (("orange", orange), ("desaturated", washed)):
            assert score(skin, cast, model)["color_naturalness_score"] < natural, (name, label)


@pytest.mark.slow
def test_rescaling_changes_texture_far_less_than_weakest_smoothing(skin, photos):
    ratios = []
    for name, (image, measurement, model) in photos.items():
        face_width = measurement["raw"]["face_width_px"]
        original = skin.score_measurement(measurement, model)["texture_score"]
        weakest = score(skin, smoothed(skin, image, face_width, SMOOTHING_STRENGTHS[0]), model)
        drop = original - weakest["texture_score"]
        assert drop > 0
        for factor in (0.75, 0.5):
            if face_width * factor < skin.FACE_WIDTH:
                continue
            rescaled = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
            change = abs(score(skin, rescaled, model)["texture_score"] - original)
            ratios.append(change / drop)
            assert change <= drop / 3, (name, factor, change, drop)
    assert len(ratios) >= 10
    assert np.median(ratios) <= 0.1, ratios


@pytest.mark.slow
def test_reencode_flag_levels_jpeg_compression(tmp_path, skin, photo_paths):
    """Heavily compressed generated images read as smoothed; re-encoding both sets levels that."""
    for path in photo_paths[4:]:
        write_png(cv2.imread(str(path)), tmp_path / "ref" / (path.stem + ".png"))
    for path in photo_paths[:4]:
        image = cv2.imread(str(path))
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 15])
        (tmp_path / "gen").mkdir(exist_ok=True)
        (tmp_path / "gen" / (path.stem + ".jpg")).write_bytes(encoded.tobytes())
    plain = skin.evaluate(tmp_path / "gen", tmp_path / "ref", show_progress=False)
    leveled = skin.evaluate(tmp_path / "gen", tmp_path / "ref", reencode_jpeg_quality=15,
                            show_progress=False)
    assert any("--reencode-jpeg" in warning for warning in plain["warnings"])
    assert leveled["method"]["reencode_jpeg_quality"] == 15
    assert leveled["summary"]["texture_score"] > plain["summary"]["texture_score"]


def test_scores_are_logistic_of_the_documented_formula(skin):
    """The calibration maps a typical reference to 0.95 and 2.5 spreads worse to 0.5."""
    model = {"m_t": 0.2, "s_t": 0.8, "m_c": 0.4, "s_c": 0.1}
    typical = skin._scores(0.2, 0.4, model)
    assert typical["texture_score"] == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert typical["color_naturalness_score"] == pytest.approx(1 / (1 + np.exp(-3.0)))
    worse = skin._scores(0.2 - 2.5 * 0.8, 0.4 + 2.5 * 0.1, model)
    assert worse["texture_score"] == pytest.approx(0.5)
    assert worse["color_naturalness_score"] == pytest.approx(0.5)
    assert worse["overall_realism_score"] == pytest.approx(0.5)


def test_large_image_without_face_is_measured_in_blocks(skin):
    """A 2600 px image with no face takes the block-average path and still yields finite metrics."""
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal((110, 140, 200), 8, (2000, 2600, 3)), 0, 255).astype(np.uint8)
    measurement = skin.measure_image(image)
    assert measurement["face_found"] is False
    raw = measurement["raw"]
    assert raw["image_size"] == [2600, 2000]
    assert all(np.isfinite(raw[name]) and raw[name] > 0 for name in skin.TEXTURE_METRICS)
    assert measurement["hist"].sum() == pytest.approx(1.0, abs=1e-5)


def test_degenerate_images_and_dangling_links_are_error_rows(tmp_path, skin, photo_paths):
    """Banners that crashed OpenCV (1000x1, 5000x5), a 2000x40 ribbon, 1x100000 and
    64,000,000x1 PNGs and a dangling link are error rows; the smallest allowed shapes (32 px,
    1:20) are measured without a crash."""
    for path in photo_paths[:3]:
        link_or_copy(path, tmp_path / "ref" / path.name)
    gen = tmp_path / "gen"
    link_or_copy(photo_paths[5], gen / "portrait.jpg")
    Image.new("RGB", (1000, 1), "white").save(gen / "banner.png")
    Image.new("RGB", (5000, 5), "white").save(gen / "strip.png")
    Image.new("RGB", (2000, 40), "white").save(gen / "ribbon.png")
    Image.new("1", (1, 100000)).save(gen / "tall.png")
    Image.new("1", (64_000_000, 1)).save(gen / "wide.png")
    rng = np.random.default_rng(1)
    for name, size in (("edge_32x640.png", (32, 640)), ("edge_640x32.png", (640, 32)),
                       ("edge_32x32.png", (32, 32))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            gen / name)
    (gen / "gone.png").symlink_to(tmp_path / "deleted.png")
    result = skin.evaluate(gen, tmp_path / "ref", show_progress=False)
    rows = {row["path"]: row for row in result["images"]}
    assert "under 32 px" in rows["banner.png"]["error"]
    assert "under 32 px" in rows["strip.png"]["error"]
    assert "aspect ratio beyond 1:20" in rows["ribbon.png"]["error"]
    assert "1x100000" in rows["tall.png"]["error"] and "64000000x1" in rows["wide.png"]["error"]
    assert "dangling symbolic link" in rows["gone.png"]["error"]
    for name in ("edge_32x640.png", "edge_640x32.png", "edge_32x32.png", "portrait.jpg"):
        assert rows[name]["error"] is None and 0.0 <= rows[name]["overall_realism_score"] <= 1.0
    assert result["summary"]["errors"] == 6 and result["summary"]["scored"] == 4


def test_cli_bad_json_path_is_exit_2_before_measuring(tmp_path):
    regular = tmp_path / "regular.txt"
    regular.write_text("x", encoding="utf-8")
    (tmp_path / "gen").mkdir()
    for target in (regular / "skin.json", tmp_path / "gen"):
        completed = run_script(SCRIPT, "--generated", tmp_path / "gen", "--reference", tmp_path,
                               "--json", target)
        assert completed.returncode == 2 and "error: --json" in completed.stderr
        assert completed.stdout == ""
