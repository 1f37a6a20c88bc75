"""Caption every image in a folder with BLIP-2 and write kohya-style `name.txt` captions beside them.

Each caption goes to a text file with the image's name and the caption extension (photo.jpg ->
photo.txt), which is what kohya sd-scripts reads as the caption (`caption_extension = ".txt"`).
An optional trigger word is put in front ("ohwx, a man in a suit"). Images that already have a
caption file are skipped unless --overwrite. Every image to caption is decoded once BEFORE the
model loads (BLIP-2 takes minutes and GBs), and every folder its caption goes to is probed for
writing (a temporary file created and deleted): the count of readable ones is printed, unreadable
ones and those whose caption cannot be written are listed on stderr and the run goes on with the
rest (exit code 1); with none left, the model is not loaded at all. A caption that cannot be
written later (a full disk) fails that image only, by name. Two images that would share one
caption file (photo.jpg and photo.png -> photo.txt) are refused before loading (exit 2). A model that cannot be loaded is explained before the slow load where
possible: a missing local folder, a folder without config.json, a hub id that is not cached while
the network fails (the Hub unreachable) or HF_HUB_OFFLINE is set, or an id the Hub does not have.

Usage (on the pod; downloads Salesforce/blip2-opt-2.7b, about 15 GB, on first use):
    python3 tools/auto_caption.py --images /workspace/training_images --trigger ohwx
    python3 tools/auto_caption.py --images /workspace/training_images --trigger ohwx \\
        --batch-size 8 --load-in-8bit --overwrite
A local model folder works too (anything saved with save_pretrained):
    python3 tools/auto_caption.py --images imgs --model /workspace/models/blip2-opt-2.7b
Tiny CPU run (a random-weight BLIP-2 built by the tests, so the captions are nonsense):
    python3 -c "import sys; sys.path.insert(0, 'tests'); import tiny_blip2, pathlib; \\
        tiny_blip2.build_tiny_blip2(pathlib.Path('/tmp/tiny_blip2'))"
    python3 tools/auto_caption.py --images /tmp/imgs --model /tmp/tiny_blip2 --device cpu \\
        --min-new-tokens 3 --max-new-tokens 8

Precision: fp16 on CUDA, fp32 on CPU; --load-in-8bit (CUDA + bitsandbytes) roughly halves the
fp16 memory (blip2-opt-2.7b: about 7.5 GB in fp16, about 4 GB in 8-bit).
stdout: one line per written caption, `<image path relative to --images>\\t<caption>`.
stderr: progress bar, skipped and failed images, summary.
Exit codes: 0 every image captioned or skipped, 1 some images failed, 2 usage/input error
(missing folder, no images, two images for one caption file, model that cannot be loaded, 8-bit
without CUDA).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MODEL = "Salesforce/blip2-opt-2.7b"

# Copied from evals/face_similarity_eval.py:IMAGE_EXTENSIONS
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# 64 megapixels: far above any SDXL/Flux output, far below what exhausts memory when decoded.
# Copied from evals/face_similarity_eval.py:MAX_IMAGE_PIXELS
MAX_IMAGE_PIXELS = 64_000_000


# Copied from evals/face_similarity_eval.py:ImageLoadError
class ImageLoadError(Exception):
    """An image file that cannot be used; the message says why."""


# Copied from evals/face_similarity_eval.py:list_images
def list_images(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, extensions in any case, in a stable order."""
    found = [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


# Copied from evals/face_similarity_eval.py:load_image
def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS, min_side: int = 32,
               max_aspect: float = 20.0) -> np.ndarray:
    """Decode `path` to an 8-bit BGR array (H, W, 3), EXIF orientation applied.

    Reads the bytes through pathlib so non-ASCII paths work on Windows too. Grayscale, palette,
    RGBA (composited on white) and 16-bit images are converted. Raises ImageLoadError with the
    reason for a file that is not a usable image, or whose header (read before any pixel is
    decoded, so nothing large is allocated) gives a side under `min_side` px, an aspect ratio
    beyond 1:`max_aspect` or more than `max_pixels` pixels.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageLoadError(f"cannot read file: {error.strerror or error}") from error
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: Image.open decodes no pixels
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"image is {width}x{height} = {width * height / 1e6:.0f} MP, above the "
                    f"{max_pixels / 1e6:.0f} MP limit; downscale it first"
                )
            if min(width, height) < min_side:
                raise ImageLoadError(f"image is {width}x{height} px: a side under {min_side} px "
                                     "cannot hold a face")
            if max(width, height) > max_aspect * min(width, height):
                raise ImageLoadError(f"image is {width}x{height} px: aspect ratio beyond "
                                     f"1:{max_aspect:g} (a banner or strip, not a portrait)")
            if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation; skips a copy when upright
                image = ImageOps.exif_transpose(image)
            rgb = _to_rgb8(image)
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError as error:  # its message is just a BytesIO repr
        raise ImageLoadError("not a readable image (unknown format or broken file)") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"not a readable image ({type(error).__name__}: {error})") from error
    # Channel by channel: several times faster than np.ascontiguousarray(rgb[:, :, ::-1]).
    bgr = np.empty(rgb.shape, dtype=np.uint8)
    bgr[:, :, 0], bgr[:, :, 1], bgr[:, :, 2] = rgb[:, :, 2], rgb[:, :, 1], rgb[:, :, 0]
    return bgr


# Copied from evals/face_similarity_eval.py:_to_rgb8
def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL mode to an 8-bit RGB array; wide integer and float modes are rescaled, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        elif image.mode.startswith("I;16") or values.max(initial=0) > 255:
            top = 65535.0  # a 16-bit image is 16-bit even when dark (max <= 255)
        else:
            top = 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.stack([gray, gray, gray], axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if image.mode == "RGB":
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


class InputError(Exception):
    """A usage or input problem (exit 2); the message is one clear line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, required=True,
                        help="folder of images to caption, searched recursively (required)")
    parser.add_argument("--trigger", default="",
                        help="trigger word put in front of every caption as 'TRIGGER, caption' "
                             "(default: none)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"hub id or local folder of a BLIP-2 model (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run: auto = cuda when available, else cpu (default: auto)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="images per generate() call (default: 4)")
    parser.add_argument("--load-in-8bit", action="store_true",
                        help="load the model in 8-bit with bitsandbytes; CUDA only (default: off)")
    parser.add_argument("--overwrite", action="store_true",
                        help="re-caption images that already have a caption file (default: skip them)")
    parser.add_argument("--caption-extension", default=".txt",
                        help="extension of the caption files, as kohya's caption_extension "
                             "(default: .txt)")
    parser.add_argument("--prompt", default="",
                        help="optional text prompt the caption continues, e.g. 'a photo of' "
                             "(default: none, plain captioning)")
    parser.add_argument("--max-new-tokens", type=int, default=40,
                        help="longest caption in tokens (default: 40)")
    parser.add_argument("--min-new-tokens", type=int, default=0,
                        help="shortest caption in tokens (default: 0)")
    parser.add_argument("--num-beams", type=int, default=3,
                        help="beam search width; 1 = greedy (default: 3)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="Hugging Face cache folder for hub downloads (default: HF_HOME's)")
    parser.add_argument("--no-progress", action="store_true",
                        help="do not draw the progress bar (default: drawn on stderr)")
    return parser


def caption_path(image_path: Path, extension: str) -> Path:
    """kohya's convention: the caption sits beside the image, same stem, caption extension."""
    return image_path.with_suffix(extension)


def caption_extension_ok(extension: str) -> bool:
    """A suffix Path.with_suffix takes, without folder separators: '.txt', '.caption'."""
    if (len(extension) < 2 or not extension.startswith(".") or "/" in extension or "\\" in extension
            or extension.endswith(".")):
        return False
    try:
        Path("image.png").with_suffix(extension)
    except ValueError:
        return False
    return True


def unwritable_caption_folders(captions: list[Path]) -> dict[Path, str]:
    """{folder: reason} for each folder of `captions` in which no file can be created (probed with
    a temporary file, created and deleted: permission bits do not tell the truth to root or on a
    read-only mount)."""
    problems = {}
    for folder in sorted({caption.parent for caption in captions}):
        try:
            handle, probe = tempfile.mkstemp(prefix=".auto_caption-probe-", dir=folder)
            os.close(handle)
            os.unlink(probe)
        except OSError as error:
            problems[folder] = error.strerror or str(error)
    return problems


def format_caption(caption: str, trigger: str) -> str:
    """One line; the trigger word (if any) first, not repeated when the model already wrote it."""
    caption = " ".join(caption.split())
    trigger = trigger.strip()
    if not trigger:
        return caption
    if caption.lower().startswith(trigger.lower()):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


# Copied from evals/scorecard.py:write_atomic
def write_atomic(path: Path, text: str) -> None:
    """Write a text file via a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was given but torch sees no CUDA device; use --device cpu")
    return requested


def looks_like_path(name: str) -> bool:
    """True for a local path (absolute, ./ ../ ~, a drive letter or backslash); False for owner/name."""
    return (name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in name
            or (len(name) > 1 and name[1] == ":") or name.count("/") > 1)


def hub_problem(model_name: str, cache_dir: Path | None, timeout: float = 10) -> str | None:
    """Why a hub id cannot be loaded, found before the slow load: None when it is in the local
    Hugging Face cache or the Hub answers for it; else one line that says network, offline mode,
    or no such model. An owner/name id could also be a relative folder that is missing, so the
    line says first that no local folder has that name."""
    from huggingface_hub import constants, try_to_load_from_cache

    lead = (f"--model {model_name}: no local folder named {model_name} (in {Path.cwd()}), and as a "
            f"Hugging Face Hub id")

    try:
        cached = try_to_load_from_cache(model_name, "config.json",
                                        cache_dir=str(cache_dir) if cache_dir else None)
    except Exception:  # noqa: BLE001 - an odd id is for the loader to reject
        cached = None
    if isinstance(cached, str):
        return None
    if constants.HF_HUB_OFFLINE:
        return (f"{lead} it is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it "
                f"cannot be downloaded; unset HF_HUB_OFFLINE, or pass a local model folder")
    url = f"{constants.ENDPOINT.rstrip('/')}/api/models/{model_name}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
            return None
    except urllib.error.HTTPError as error:
        if error.code in (401, 403, 404):
            return (f"{lead} the Hugging Face Hub ({constants.ENDPOINT}) has no such model, or it "
                    f"is private (HTTP {error.code}); check the id or the folder name, or log in "
                    f"with `huggingface-cli login` for a gated model")
        return None  # the Hub answers; let the loader report what it finds
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return (f"{lead} it cannot be downloaded: the network fails ({constants.ENDPOINT} is "
                f"unreachable: {reason}); it is not in the local cache either. Check the folder "
                f"name, or download it where there is network and pass --model /path/to/folder, "
                f"or fix the network")


def load_model(model_name: str, device: str, load_in_8bit: bool, cache_dir: Path | None):
    """Blip2Processor + Blip2ForConditionalGeneration on `device`: fp16 on CUDA, fp32 on CPU."""
    local = Path(model_name).expanduser()
    if local.exists() and not local.is_dir():
        raise InputError(f"--model {model_name} is a file; give a model folder or a hub id")
    if not local.exists() and looks_like_path(model_name):
        # A hub id is "owner/name"; a missing folder must not turn into a download attempt.
        raise InputError(f"--model {model_name}: no such model folder (a local path, not a hub id)")
    if local.is_dir() and not (local / "config.json").is_file():
        raise InputError(f"cannot load BLIP-2 model {model_name!r}: the folder has no config.json, so "
                         f"it is not a model saved with save_pretrained")
    if not local.is_dir():
        problem = hub_problem(model_name, cache_dir)
        if problem:
            raise InputError(problem)
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    source = str(local) if local.is_dir() else model_name
    common = {"cache_dir": str(cache_dir) if cache_dir else None}
    if local.is_dir():
        common["local_files_only"] = True
    kwargs: dict = dict(common)
    if load_in_8bit:
        if device != "cuda":
            raise InputError("--load-in-8bit needs CUDA (bitsandbytes 8-bit has no CPU kernels); "
                             "drop it or run on the GPU")
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as error:
            raise InputError(f"--load-in-8bit needs bitsandbytes: pip install bitsandbytes "
                             f"({error})") from error
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": 0}
        kwargs["dtype"] = torch.float16
    else:
        kwargs["dtype"] = torch.float16 if device == "cuda" else torch.float32
    try:
        processor = Blip2Processor.from_pretrained(source, **common)
        model = Blip2ForConditionalGeneration.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"cannot load BLIP-2 model {model_name!r}: {first_line}") from error
    if not load_in_8bit:
        model = model.to(device)
    model.eval()
    if getattr(processor, "num_query_tokens", None) is None:
        # Older processor configs lack it; without it a text prompt would not get image tokens.
        processor.num_query_tokens = model.config.num_query_tokens
    return processor, model


def caption_batch(processor, model, images: list[Image.Image], args, device: str) -> list[str]:
    """Captions for a batch of RGB PIL images (plain strings, special tokens removed)."""
    import torch

    if args.prompt:
        inputs = processor(images=images, text=[args.prompt] * len(images), return_tensors="pt")
    else:
        inputs = processor(images=images, return_tensors="pt")
    dtype = next(model.parameters()).dtype if not args.load_in_8bit else torch.float16
    inputs = {
        key: (value.to(device, dtype) if key == "pixel_values" else value.to(device))
        for key, value in inputs.items()
    }
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
            num_beams=args.num_beams,
        )
    return [text.strip() for text in processor.batch_decode(output, skip_special_tokens=True)]


def run(args) -> int:
    folder: Path = args.images
    if not folder.is_dir():
        raise InputError(f"--images {folder} is not a folder")
    images = list_images(folder)
    if not images:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    nested = [path for path in images if path.parent != folder]
    if nested:
        print(f"warning: {len(nested)} image(s) are in subfolders of {folder} (e.g. "
              f"{nested[0].relative_to(folder).as_posix()}); tools/retrain_lora_v3.py trains on "
              f"the top level of the image folder only", file=sys.stderr)
    todo = [path for path in images
            if args.overwrite or not caption_path(path, args.caption_extension).exists()]
    skipped = len(images) - len(todo)
    if skipped:
        print(f"skipping {skipped} image(s) that already have a {args.caption_extension} caption "
              f"(--overwrite re-captions them)", file=sys.stderr)
    by_caption: dict[Path, list[Path]] = {}
    for path in todo:
        by_caption.setdefault(caption_path(path, args.caption_extension), []).append(path)
    shared = {caption: paths for caption, paths in by_caption.items() if len(paths) > 1}
    if shared:
        caption, paths = next(iter(shared.items()))
        raise InputError(
            f"{len(shared)} caption file(s) would be written by more than one image, e.g. "
            f"{' and '.join(path.relative_to(folder).as_posix() for path in paths)} -> "
            f"{caption.relative_to(folder).as_posix()} (kohya reads one caption per image name); "
            f"rename the images so that each name is used once")
    failed: list[tuple[Path, str]] = []
    written = 0
    unwritable = unwritable_caption_folders(list(by_caption))
    writable = []
    for path in todo:  # before BLIP-2 (minutes, GBs) is loaded
        caption = caption_path(path, args.caption_extension)
        if caption.parent in unwritable:
            failed.append((path, f"cannot write its caption: no file can be created in "
                                 f"{caption.parent} ({unwritable[caption.parent]})"))
        elif caption.exists() and not caption.is_file():
            failed.append((path, f"cannot write its caption: {caption} exists and is not a file"))
        else:
            writable.append(path)
    total, todo = len(todo), writable
    readable = []
    for path in todo:  # every image is decoded once before BLIP-2 (minutes, GBs) is loaded
        try:
            load_image(path)
            readable.append(path)
        except ImageLoadError as error:
            failed.append((path, str(error)))
    if total:
        print(f"{total} image(s) to caption: {len(readable)} readable, {len(failed)} not "
              f"(listed at the end)", file=sys.stderr)
    todo = readable
    if failed and not todo:
        print("no readable image with a writable caption to caption, so the model was not loaded",
              file=sys.stderr)
    if todo:
        device = resolve_device(args.device)
        print(f"loading {args.model} on {device}"
              f"{' (8-bit)' if args.load_in_8bit else ''}", file=sys.stderr)
        processor, model = load_model(args.model, device, args.load_in_8bit, args.cache_dir)
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="captioning", unit="img", file=sys.stderr,
                   disable=args.no_progress)
        for start in range(0, len(todo), args.batch_size):
            batch_paths = todo[start:start + args.batch_size]
            loaded: list[tuple[Path, Image.Image]] = []
            for path in batch_paths:
                try:
                    loaded.append((path, Image.fromarray(load_image(path)[:, :, ::-1])))
                except ImageLoadError as error:
                    failed.append((path, str(error)))
            if loaded:
                try:
                    captions = caption_batch(processor, model, [image for _, image in loaded],
                                             args, device)
                except RuntimeError as error:  # e.g. CUDA out of memory: lose this batch only
                    captions = [None] * len(loaded)
                    reason = f"generation failed: {str(error).splitlines()[0]}"
                    for path, _ in loaded:
                        failed.append((path, reason))
                for (path, _), caption in zip(loaded, captions):
                    if caption is None:
                        continue
                    if not caption:
                        failed.append((path, "the model returned an empty caption"))
                        continue
                    text = format_caption(caption, args.trigger)
                    target = caption_path(path, args.caption_extension)
                    try:
                        write_atomic(target, text + "\n")
                    except OSError as error:  # a full disk, a folder made read-only meanwhile
                        failed.append((path, f"cannot write {target}: {error.strerror or error}"))
                        continue
                    written += 1
                    print(f"{path.relative_to(folder).as_posix()}\t{text}", flush=True)
            bar.update(len(batch_paths))
        bar.close()
    for path, reason in failed:
        print(f"FAILED {path}: {reason}", file=sys.stderr)
    print(f"captions written: {written}, skipped (already captioned): {skipped}, "
          f"failed: {len(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.min_new_tokens < 0 or args.min_new_tokens > args.max_new_tokens:
        parser.error(f"--min-new-tokens {args.min_new_tokens} must be between 0 and "
                     f"--max-new-tokens {args.max_new_tokens}")
    if args.num_beams < 1:
        parser.error(f"--num-beams must be at least 1, got {args.num_beams}")
    if not caption_extension_ok(args.caption_extension):
        parser.error(f"--caption-extension must look like '.txt' (a dot, then letters or digits, no "
                     f"folder separator), got {args.caption_extension!r}")
    if args.caption_extension.lower() in IMAGE_EXTENSIONS:
        parser.error(f"--caption-extension {args.caption_extension} is an image extension; "
                     "it would overwrite the images")
    if args.load_in_8bit and args.device == "cpu":
        parser.error("--load-in-8bit needs CUDA; it cannot be combined with --device cpu")
    try:
        return run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
