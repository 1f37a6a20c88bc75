"""tools/auto_caption.py: BLIP-2 captions end to end on a tiny random-weight model, on CPU."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import load_script, run_script
from tiny_blip2 import WORDS, build_tiny_blip2

SCRIPT = "tools/auto_caption.py"
auto_caption = load_script(SCRIPT)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_blip2(tmp_path_factory.mktemp("tiny_blip2") / "model")


@pytest.fixture
def hf_env(tmp_path) -> dict:
    """Keep every Hugging Face cache write inside tmp_path and never touch the network."""
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def caption_args(images: Path, model: Path, *extra: str) -> list[str]:
    return ["--images", str(images), "--model", str(model), "--device", "cpu", "--num-beams", "1",
            "--min-new-tokens", "2", "--max-new-tokens", "6", *extra]


def test_help_exits_0_and_states_defaults():
    result = run_script(SCRIPT, "--help")
    assert result.returncode == 0
    assert "Salesforce/blip2-opt-2.7b" in result.stdout and "(default: 4)" in result.stdout


@pytest.mark.slow
def test_captions_real_photos_end_to_end(tmp_path, faces_dir, tiny_model, hf_env):
    images = tmp_path / "training images"
    (images / "nested").mkdir(parents=True)
    photos = sorted((faces_dir / "photos").glob("*"))[:3]
    for photo in photos[:2]:
        shutil.copy(photo, images / photo.name)
    shutil.copy(photos[2], images / "nested" / photos[2].name)
    (images / "broken.jpg").write_bytes(b"this is not a jpeg")

    result = run_script(SCRIPT, *caption_args(images, tiny_model, "--trigger", "ohwx",
                                              "--batch-size", "2"), env=hf_env)
    assert result.returncode == 1, result.stderr  # one bad image: listed, the run went on
    assert "broken.jpg" in result.stderr and "failed: 1" in result.stderr
    written = {path.relative_to(images).as_posix() for path in images.rglob("*.txt")}
    expected = {photo.with_suffix(".txt").name for photo in photos[:2]}
    expected.add(f"nested/{photos[2].with_suffix('.txt').name}")
    assert written == expected
    vocabulary = set(WORDS)
    for caption_file in images.rglob("*.txt"):
        text = caption_file.read_text(encoding="utf-8")
        assert text.endswith("\n") and text.count("\n") == 1
        assert text.startswith("ohwx, ")
        words = text[len("ohwx, "):].split()
        assert 2 <= len(words) <= 6 and set(words) <= vocabulary, text
    stdout_lines = result.stdout.splitlines()
    assert len(stdout_lines) == 3 and all("\tohwx, " in line for line in stdout_lines)

    (images / "broken.jpg").unlink()
    before = {path: path.read_text(encoding="utf-8") for path in images.rglob("*.txt")}
    (images / "nested" / photos[2].with_suffix(".txt").name).write_text("hand written\n",
                                                                         encoding="utf-8")
    skipped = run_script(SCRIPT, *caption_args(images, tiny_model), env=hf_env)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped (already captioned): 3" in skipped.stderr and skipped.stdout == ""
    assert (images / "nested" / photos[2].with_suffix(".txt").name).read_text(
        encoding="utf-8") == "hand written\n"

    again = run_script(SCRIPT, *caption_args(images, tiny_model, "--overwrite", "--prompt",
                                             "a photo of"), env=hf_env)
    assert again.returncode == 0, again.stderr
    for path in before:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("a photo of") and "ohwx" not in text


@pytest.mark.parametrize("caption,trigger,expected", [
    ("a man  in a\nsuit", "ohwx", "ohwx, a man in a suit"),
    ("ohwx man smiling", "ohwx", "ohwx man smiling"),
    ("a man", "", "a man"),
])
def test_format_caption(caption, trigger, expected):
    assert auto_caption.format_caption(caption, trigger) == expected


def test_caption_path_is_kohya_convention(tmp_path):
    assert auto_caption.caption_path(tmp_path / "a.b.JPG", ".txt") == tmp_path / "a.b.txt"


def test_usage_and_input_errors_exit_2(tmp_path, capsys):
    assert auto_caption.main(["--images", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert auto_caption.main(["--images", str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        auto_caption.main(["--images", str(tmp_path), "--load-in-8bit", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "--load-in-8bit" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        auto_caption.main(["--images", str(tmp_path), "--caption-extension", ".png"])
    assert exit_info.value.code == 2


def test_model_folder_that_is_not_blip2_exits_2(tmp_path, hf_env):
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (120, 90, 70)).save(images / "x.png")
    (tmp_path / "not_a_model").mkdir()
    result = run_script(SCRIPT, *caption_args(images, tmp_path / "not_a_model"), env=hf_env)
    assert result.returncode == 2
    assert "cannot load BLIP-2 model" in result.stderr
    assert not (images / "x.txt").exists()


def test_missing_local_model_folder_exits_2_without_a_download(tmp_path, hf_env):
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (120, 90, 70)).save(images / "x.png")
    result = run_script(SCRIPT, *caption_args(images, tmp_path / "missing_model"), env=hf_env)
    assert result.returncode == 2
    assert "no such model folder" in result.stderr
    module = load_script(SCRIPT)
    assert module.looks_like_path("C:\\models\\blip2") and module.looks_like_path("./blip2")
    assert not module.looks_like_path("Salesforce/blip2-opt-2.7b")
