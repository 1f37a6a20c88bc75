"""tools/auto_caption.py: BLIP-2 captions end to end on a tiny random-weight model, on CPU."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
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


def one_image(tmp_path: Path) -> Path:
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (120, 90, 70)).save(images / "x.png")
    return images


def test_folder_without_config_is_refused_before_loading(tmp_path, hf_env):
    images = one_image(tmp_path)
    (tmp_path / "not_a_model").mkdir()
    result = run_script(SCRIPT, *caption_args(images, tmp_path / "not_a_model"), env=hf_env)
    assert result.returncode == 2 and "has no config.json" in result.stderr


def test_images_are_checked_before_the_model_is_loaded(tmp_path, hf_env):
    """All unreadable: listed, counted, exit 1, and the (missing) model is never even looked at."""
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"not a jpeg")
    (images / "b.png").write_bytes(b"")
    result = run_script(SCRIPT, *caption_args(images, tmp_path / "missing_model"), env=hf_env)
    assert result.returncode == 1, result.stderr
    assert "2 image(s) to caption: 0 readable, 2 not" in result.stderr
    assert "the model was not loaded" in result.stderr and "no such model folder" not in result.stderr
    assert "FAILED" in result.stderr and "a.jpg" in result.stderr and "b.png" in result.stderr


def test_unreadable_images_are_counted_before_loading_and_the_rest_captioned(tmp_path, tiny_model, hf_env):
    images = one_image(tmp_path)
    (images / "broken.webp").write_bytes(b"RIFF....WEBPVP8 broken")
    result = run_script(SCRIPT, *caption_args(images, tiny_model), env=hf_env)
    assert result.returncode == 1, result.stderr
    stderr = result.stderr
    assert stderr.index("2 image(s) to caption: 1 readable, 1 not") < stderr.index("loading ")
    assert (images / "x.txt").is_file() and not (images / "broken.txt").exists()


def test_hub_id_with_the_network_down_says_network(tmp_path):
    """A real connection failure: the Hub endpoint is a closed port on this machine."""
    images = one_image(tmp_path)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    result = run_script(SCRIPT, "--images", str(images), "--model", "Salesforce/blip2-opt-2.7b",
                        "--device", "cpu", env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "the network fails" in result.stderr and "127.0.0.1:9 is unreachable" in result.stderr
    assert "--model /path/to/folder" in result.stderr
    assert not (images / "x.txt").exists()


def test_hub_id_in_offline_mode_says_offline(tmp_path, hf_env):
    images = one_image(tmp_path)
    result = run_script(SCRIPT, "--images", str(images), "--model", "Salesforce/blip2-opt-2.7b",
                        "--device", "cpu", env=hf_env)
    assert result.returncode == 2
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in result.stderr


def test_hub_id_the_hub_does_not_have_says_so(tmp_path):
    """A Hub stand-in on the loopback interface answering 404 for every model."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        images = one_image(tmp_path)
        env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
               "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
        result = run_script(SCRIPT, "--images", str(images), "--model", "nobody/no-such-blip2",
                            "--device", "cpu", env=env, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2
    assert "has no such model, or it is private (HTTP 404)" in result.stderr


def test_hub_id_in_the_cache_needs_no_network(tmp_path, tiny_model, monkeypatch):
    """hub_problem returns None for a model the cache holds, even with the endpoint unreachable."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--owner--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123", encoding="utf-8")
    snapshot = repo / "snapshots" / "abc123"
    shutil.copytree(tiny_model, snapshot)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert auto_caption.hub_problem("owner/tiny", tmp_path / "hub") is None
    assert "the network fails" in auto_caption.hub_problem("owner/other", tmp_path / "hub")


# ----------------------------------------------------------------------------------------------
# Folders the captions cannot be written to, names that collide, odd flags (the careless user)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    """A real tmpfs of `size` mounted at `folder` (root on Linux only, else skip); unmounted after."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(folder)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True, timeout=30)


def read_only_images(tmp_path: Path):
    """A folder holding one image in which no file can be created: a tmpfs remounted read-only
    (root), or a chmod 555 folder (any other user)."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        images = one_image(tmp_path)
        images.chmod(0o555)
        return contextlib.nullcontext(images)

    @contextlib.contextmanager
    def mounted():
        with small_tmpfs(tmp_path / "ro", "1m") as folder:
            from PIL import Image

            Image.new("RGB", (40, 40), (120, 90, 70)).save(folder / "x.png")
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, timeout=30)
            yield folder

    return mounted()


def test_read_only_image_folder_is_found_before_the_model_loads(tmp_path, tiny_model, hf_env):
    with read_only_images(tmp_path) as images:
        result = run_script(SCRIPT, *caption_args(images, tiny_model), env=hf_env)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert f"FAILED {images / 'x.png'}: cannot write its caption: no file can be created in {images}" \
            in result.stderr
        assert "loading " not in result.stderr and "the model was not loaded" in result.stderr
        assert not (images / "x.txt").exists()
        if os.geteuid() != 0:
            images.chmod(0o755)


def test_full_disk_while_writing_counts_the_image_as_failed(tmp_path, tiny_model, hf_env):
    """A real full file system (a 64 KiB tmpfs filled up after the images): the temp file can be
    created, its bytes cannot; every image fails by name, no traceback, no temp file left."""
    with small_tmpfs(tmp_path / "full", "64k") as images:
        from PIL import Image

        for name in ("a.png", "b.png"):
            Image.new("RGB", (40, 40), (120, 90, 70)).save(images / name)
        with open(images / ".filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        result = run_script(SCRIPT, *caption_args(images, tiny_model), env=hf_env)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and "loading " in result.stderr
        for name in ("a", "b"):
            assert f"FAILED {images / (name + '.png')}: cannot write {images / (name + '.txt')}: " \
                   f"No space left on device" in result.stderr
        assert "captions written: 0" in result.stderr and "failed: 2" in result.stderr
        assert sorted(path.name for path in images.iterdir()) == [".filler", "a.png", "b.png"]


def test_two_images_with_one_caption_name_are_refused_before_loading(tmp_path, tiny_model, hf_env):
    """photo.jpg and photo.png both caption into photo.txt: the second would overwrite the first."""
    images = one_image(tmp_path)
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 90, 70)).save(images / "photo.jpg")
    Image.new("RGB", (40, 40), (90, 10, 70)).save(images / "photo.png")
    result = run_script(SCRIPT, *caption_args(images, tiny_model), env=hf_env)
    assert result.returncode == 2, result.stderr
    assert "photo.jpg and photo.png -> photo.txt" in result.stderr
    assert "loading " not in result.stderr
    assert not list(images.glob("*.txt"))


def test_a_missing_relative_model_folder_is_not_blamed_on_the_network(tmp_path):
    """--model models/blip2-opt-2.7b (one slash: a folder or a hub id): the message says both."""
    images = one_image(tmp_path)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    result = run_script(SCRIPT, "--images", str(images), "--model", "models/blip2-opt-2.7b", "--device", "cpu",
                        cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"no local folder named models/blip2-opt-2.7b (in {tmp_path})" in result.stderr
    assert "the network fails" in result.stderr and "Check the folder name" in result.stderr


@pytest.mark.parametrize("extension", [".a/b", "./x", ".a\\b", ".", "txt", ".txt."])
def test_caption_extension_that_is_no_suffix_is_a_usage_error(tmp_path, extension):
    result = run_script(SCRIPT, "--images", str(tmp_path), "--caption-extension", extension)
    assert result.returncode == 2, result.stderr
    assert "--caption-extension must look like '.txt'" in result.stderr
    assert "Traceback" not in result.stderr
