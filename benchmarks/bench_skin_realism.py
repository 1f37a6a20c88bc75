"""Benchmark evals/skin_realism_eval.py on 1024x1024 images: throughput, cost over decoding, memory.

Usage:
    .venv/bin/python benchmarks/bench_skin_realism.py                # 48 generated + 8 references
    .venv/bin/python benchmarks/bench_skin_realism.py --images 16 --repeats 1   # quick look
    .venv/bin/python benchmarks/bench_skin_realism.py --baseline-ref none        # no side by side

Builds 1024x1024 portraits in a temporary folder (square crops around the face of each photo in
../shared/faces/photos, cycled and mirrored; synthetic noise images where those photos are absent),
saved as PNG like diffusers/ComfyUI outputs (--format jpg for JPEG, quality 95). Then, best of
--repeats, in this process:
- bare decode: Image.open(...).load() of every file evaluate() reads (generated + references);
- load_image: the project's image loader (bytes -> PIL -> EXIF -> BGR array) on the same files;
- evaluate(): the whole evaluation, measurement caches cleared first;
then, image by image and interleaved, the fastest of --repeats for decode, load_image and
measure_image (a breakdown that resists load from other processes).
Prints images/s, evaluate() time over bare decode (target <= 1.5) and over load_image (for
information), the breakdown, and the peak RSS of a child process evaluating --images / 4 and --images images
(target: growth <= 5%, i.e. flat in the number of images). Side by side: the skin eval of git
revision --baseline-ref (default main; `git show REF:evals/skin_realism_eval.py` into a temporary
folder) and the current one evaluate the same files in this process, alternating run by run
(--side-repeats times each, caches cleared before every run), so load from other processes hits
both alike; the medians and current / baseline (target <= 1.10) are printed. Exit 0 when every
target is met, 1 when one is missed, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "evals" / "skin_realism_eval.py"
PHOTOS = REPO_ROOT.parent / "shared" / "faces" / "photos"
SIDE = 1024
RATIO_TARGET = 1.5
MEMORY_GROWTH_TARGET = 0.05
SIDE_BY_SIDE_TARGET = 1.10

CHILD_CODE = """
import importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("skin", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.evaluate(sys.argv[2], sys.argv[3], show_progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def load_module(path: Path = SCRIPT, name: str = "skin_realism_eval"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def baseline_module(ref: str, folder: Path):
    """The skin eval of git revision `ref`, loaded from a copy in `folder`."""
    shown = subprocess.run(["git", "-C", str(REPO_ROOT), "show",
                            f"{ref}:evals/skin_realism_eval.py"], capture_output=True, timeout=60)
    if shown.returncode != 0:
        raise SystemExit(f"error: --baseline-ref {ref}: git show failed: "
                         f"{shown.stderr.decode(errors='replace').strip()}")
    path = folder / "skin_realism_eval.py"
    path.write_bytes(shown.stdout)
    return load_module(path, "skin_realism_eval_baseline")


def portraits(module) -> list[np.ndarray]:
    """Square 1024 px crops around the face of each shared photo, or synthetic images."""
    sources = []
    if PHOTOS.is_dir():
        for path in module.list_images(PHOTOS):
            bgr = module.load_image(path)
            height, width = bgr.shape[:2]
            box = module.detect_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
            if box is None:
                continue
            x, y, w, h = box
            side = min(height, width, int(2.4 * w))
            cx, cy = x + w // 2, y + h // 2
            x0 = min(max(0, cx - side // 2), width - side)
            y0 = min(max(0, cy - side // 2), height - side)
            crop = bgr[y0:y0 + side, x0:x0 + side]
            interpolation = cv2.INTER_AREA if side > SIDE else cv2.INTER_CUBIC
            sources.append(cv2.resize(crop, (SIDE, SIDE), interpolation=interpolation))
    if not sources:
        print(f"note: {PHOTOS} not found; using synthetic images (no faces: the slower "
              "no-face path)", file=sys.stderr)
        rng = np.random.default_rng(0)
        for _ in range(6):
            base = cv2.GaussianBlur(rng.uniform(60, 200, (SIDE, SIDE, 3)).astype(np.float32), (0, 0), 25)
            noise = rng.normal(0, 6, (SIDE, SIDE, 3)).astype(np.float32)
            sources.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return sources


def write_set(folder: Path, sources: list[np.ndarray], count: int, offset: int, fmt: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = sources[(index + offset) % len(sources)]
        if ((index + offset) // len(sources)) % 2:
            image = image[:, ::-1]
        path = folder / f"img_{index:04d}.{fmt}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else []
        ok, encoded = cv2.imencode(f".{fmt}", np.ascontiguousarray(image), params)
        assert ok
        path.write_bytes(encoded.tobytes())
        paths.append(path)
    return paths


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def child_peak_rss_mb(generated: Path, reference: Path) -> float | None:
    try:
        import resource  # noqa: F401  (POSIX only)
    except ImportError:
        return None
    completed = subprocess.run(
        [sys.executable, "-c", CHILD_CODE, str(SCRIPT), str(generated), str(reference)],
        capture_output=True, text=True, encoding="utf-8", timeout=900, check=True)
    kilobytes = int(completed.stdout.strip().splitlines()[-1])
    return kilobytes / 1024 if sys.platform != "darwin" else kilobytes / 1024 / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48,
                        help="generated images (default: 48; the memory check also runs a quarter)")
    parser.add_argument("--references", type=int, default=8, help="reference images (default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats, best kept (default: 3)")
    parser.add_argument("--format", choices=("png", "jpg"), default="png",
                        help="file format of the test images (default: png)")
    parser.add_argument("--baseline-ref", default="main",
                        help="git revision to time side by side, or none (default: main)")
    parser.add_argument("--side-repeats", type=int, default=5,
                        help="side-by-side runs per version, medians kept (default: 5)")
    args = parser.parse_args(argv)
    if args.images < 4 or args.references < 3 or args.repeats < 1 or args.side_repeats < 1:
        parser.error("--images must be >= 4, --references >= 3, --repeats and --side-repeats "
                     ">= 1")

    module = load_module()
    sources = portraits(module)
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench_skin_") as temp:
        root = Path(temp)
        generated = write_set(root / "generated", sources, args.images, 0, args.format)
        write_set(root / "generated_small", sources, max(1, args.images // 4), 0, args.format)
        references = write_set(root / "reference", sources, args.references, 3, args.format)
        files = generated + references

        def bare_decode():
            for path in files:
                with Image.open(io.BytesIO(path.read_bytes())) as image:
                    image.load()

        def project_load():
            for path in files:
                module.load_image(path)

        def evaluation():
            module._MEASUREMENTS.clear()
            module._REFERENCE_MODELS.clear()
            module.evaluate(root / "generated", root / "reference", show_progress=False)

        evaluation()  # warm-up: cascade, imports, first-call allocations
        best = {"decode": float("inf"), "load": float("inf"), "evaluate": float("inf")}
        for _ in range(args.repeats):
            best["decode"] = min(best["decode"], timed(bare_decode))
            best["load"] = min(best["load"], timed(project_load))
            best["evaluate"] = min(best["evaluate"], timed(evaluation))
        # Breakdown, image by image and interleaved so that load from other processes hits the
        # three parts alike: the fastest of the repeats for each part of each image.
        parts = np.full((3, len(files)), np.inf)
        for _ in range(args.repeats):
            for index, path in enumerate(files):
                start = time.perf_counter()
                with Image.open(io.BytesIO(path.read_bytes())) as image:
                    image.load()
                decoded = time.perf_counter()
                bgr = module.load_image(path)
                loaded = time.perf_counter()
                module.measure_image(bgr)
                measured = time.perf_counter()
                parts[:, index] = np.minimum(parts[:, index],
                                             [decoded - start, loaded - decoded, measured - loaded])
        rss_small = child_peak_rss_mb(root / "generated_small", root / "reference")
        rss_large = child_peak_rss_mb(root / "generated", root / "reference")
        side = None
        if args.baseline_ref.lower() != "none":
            (root / "baseline").mkdir()
            old = baseline_module(args.baseline_ref, root / "baseline")
            side = {"baseline": [], "current": []}
            versions = {"baseline": old, "current": module}
            versions["baseline"].evaluate(root / "generated", root / "reference",
                                          show_progress=False)  # warm-up
            for repeat in range(args.side_repeats):
                order = ("baseline", "current") if repeat % 2 == 0 else ("current", "baseline")
                for name in order:
                    version = versions[name]
                    version._MEASUREMENTS.clear()
                    version._REFERENCE_MODELS.clear()
                    start = time.perf_counter()
                    version.evaluate(root / "generated", root / "reference", show_progress=False)
                    side[name].append(time.perf_counter() - start)

    count = len(files)
    ratio = best["evaluate"] / best["decode"]
    print(f"images: {args.images} generated + {args.references} references, {SIDE}x{SIDE} "
          f"{args.format.upper()}, best of {args.repeats}")
    print(f"bare decode (PIL load):  {best['decode'] / count * 1000:7.1f} ms/image")
    print(f"load_image (project):    {best['load'] / count * 1000:7.1f} ms/image")
    print(f"evaluate (everything):   {best['evaluate'] / count * 1000:7.1f} ms/image "
          f"({module.MEASURE_WORKERS} files in flight, so decoding overlaps measuring)")
    print(f"throughput:              {count / best['evaluate']:7.1f} images/s "
          f"(target >= {count / (RATIO_TARGET * best['decode']):.1f}, i.e. 1.5x bare decode time)")
    verdict = "met" if ratio <= RATIO_TARGET else "MISSED"
    failed |= ratio > RATIO_TARGET
    print(f"evaluate / bare decode:  {ratio:7.2f}   (target <= {RATIO_TARGET}: {verdict})")
    print(f"evaluate / load_image:   {best['evaluate'] / best['load']:7.2f}   "
          "(information: cost beyond the project's loader)")
    decode_ms, load_ms, measure_ms = parts.mean(axis=1) * 1000
    print(f"breakdown (fastest per image): decode {decode_ms:.1f} ms, load_image {load_ms:.1f} ms "
          f"(+{load_ms - decode_ms:.1f} over decode), measure_image {measure_ms:.1f} ms; "
          f"(load_image + measure_image) / decode = {(load_ms + measure_ms) / decode_ms:.2f} "
          "(information: the cost on one core, without the overlap)")
    if rss_small is None or rss_large is None:
        print("peak RSS: not measured (needs the POSIX resource module)")
    else:
        growth = (rss_large - rss_small) / rss_small
        verdict = "met" if growth <= MEMORY_GROWTH_TARGET else "MISSED"
        failed |= growth > MEMORY_GROWTH_TARGET
        print(f"peak RSS: {max(1, args.images // 4)} images {rss_small:.1f} MB, {args.images} images "
              f"{rss_large:.1f} MB, growth {growth:+.1%}   (target <= "
              f"{MEMORY_GROWTH_TARGET:.0%}: {verdict})")
    if side is not None:
        base, current = np.median(side["baseline"]), np.median(side["current"])
        ratio = current / base
        verdict = "met" if ratio <= SIDE_BY_SIDE_TARGET else "MISSED"
        failed |= ratio > SIDE_BY_SIDE_TARGET
        print(f"side by side with {args.baseline_ref} ({args.side_repeats} alternating runs each): "
              f"baseline median {base:.3f} s, current median {current:.3f} s, current / baseline "
              f"{ratio:.3f}   (target <= {SIDE_BY_SIDE_TARGET}: {verdict})")
        paired = np.median([c / b for c, b in zip(side["current"], side["baseline"])])
        print("  runs (s): baseline " + " ".join(f"{value:.3f}" for value in side["baseline"])
              + "; current " + " ".join(f"{value:.3f}" for value in side["current"])
              + f"; median of per-repeat ratios {paired:.3f} (information: resists load drift)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
