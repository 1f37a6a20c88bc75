"""Benchmark evals/face_similarity_eval.py (dlib backend) against its targets and face_recognition.

Builds generated sets of 40 and 160 images from ../shared/faces (every copy of a photo or crop is
rescaled, mirrored and brightness-shifted, so each file is unique and the cache cannot reuse one
copy for another) and a reference set of three real photos. Each run happens in a fresh child
process, so the peak memory (ru_maxrss) is that run's own. Figures, each with its target:
  - images/s, cold (empty cache) and warm (second run, same cache)
  - cold: total wall time / time inside model calls (dlib detector, landmarks, descriptor and
    model loading)                                                      target <= 1.25
  - warm run speed-up over cold                                         target >= 3x
  - peak RSS, 160 vs 40 images                                          target within 15%
  - the face_recognition package (same dlib models, its defaults: HOG with one upsampling,
    face_encodings) doing the same comparisons: ours cold no slower, ours warm faster
    (face_recognition has no cache, so its one run serves as both its cold and warm time)

Usage:
  python benchmarks/bench_face_similarity.py                  # 40 and 160 images (a few minutes)
  python benchmarks/bench_face_similarity.py --sizes 10 20 --skip-face-recognition  # quick look
  python benchmarks/bench_face_similarity.py --faces-dir /path/to/faces --json bench.json

face_recognition is optional (it works with dlib-bin):
  pip install --no-deps face-recognition==1.3.0
Exit code: 0 when every target is met, 1 when one is missed, 2 on a usage or input error.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EVAL_SCRIPT = REPO_ROOT / "evals" / "face_similarity_eval.py"
DEFAULT_FACES = REPO_ROOT.parent / "shared" / "faces"
REFERENCE_PHOTOS = ("photos/obama_1.jpg", "photos/obama_2.jpg", "photos/obama_3.jpg")
FACE_RECOGNITION_INSTALL = "pip install --no-deps face-recognition==1.3.0"
TARGET_OVERHEAD = 1.25
TARGET_WARM_SPEEDUP = 3.0
TARGET_MEMORY_GROWTH = 0.15


# ----------------------------------------------------------------------------------------------
# Child processes: one measured run each; the last stdout line is a JSON result
# ----------------------------------------------------------------------------------------------


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _load_eval_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("face_similarity_eval", EVAL_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def child_ours(generated: Path, reference: Path, cache_dir: Path) -> dict:
    fse = _load_eval_module()
    start = time.perf_counter()
    report = fse.evaluate(generated, reference, backend="dlib", cache_dir=cache_dir,
                          show_progress=False)
    wall = time.perf_counter() - start
    stats = report["stats"]
    return {"wall": wall, "model_seconds": stats["model_seconds"],
            "model_load_seconds": stats["model_load_seconds"],
            "cache_hits": stats["cache_hits"], "cache_misses": stats["cache_misses"],
            "images": report["summary"]["images"] + report["references"]["count"],
            "similarities": [row["similarity"] for row in report["images"]],
            "peak_rss_mib": _peak_rss_mib()}


def child_face_recognition(generated: Path, reference: Path) -> dict:
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)  # pkg_resources deprecation
    import numpy as np

    start = time.perf_counter()
    model_seconds = 0.0
    tick = time.perf_counter()
    import face_recognition  # loads the dlib models at import

    model_seconds += time.perf_counter() - tick

    def largest_encoding(path: Path):
        nonlocal model_seconds
        image = face_recognition.load_image_file(str(path))
        tick = time.perf_counter()
        locations = face_recognition.face_locations(image)
        if not locations:
            model_seconds += time.perf_counter() - tick
            return None
        top, right, bottom, left = max(locations, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        encoding = face_recognition.face_encodings(image, [(top, right, bottom, left)])[0]
        model_seconds += time.perf_counter() - tick
        return encoding

    def files(folder: Path):
        return sorted(path for path in folder.rglob("*") if path.is_file())

    references = [enc for enc in map(largest_encoding, files(reference)) if enc is not None]
    unit = np.array(references) / np.linalg.norm(references, axis=1, keepdims=True)
    centroid = unit.mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    similarities = []
    for path in files(generated):
        encoding = largest_encoding(path)
        if encoding is None:
            similarities.append(None)
            continue
        face_recognition.face_distance(references, encoding)  # its own comparison
        similarities.append(float(encoding / np.linalg.norm(encoding) @ centroid))
    wall = time.perf_counter() - start
    return {"wall": wall, "model_seconds": model_seconds, "model_load_seconds": 0.0,
            "images": len(files(generated)) + len(files(reference)),
            "similarities": similarities, "peak_rss_mib": _peak_rss_mib()}


def run_child(kind: str, generated: Path, reference: Path, cache_dir: Path | None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
               "--generated", str(generated), "--reference", str(reference)]
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8",
                            timeout=3600)
    process_wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({result.returncode}): {result.stderr[-2000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    data["process_wall"] = process_wall
    return data


# ----------------------------------------------------------------------------------------------
# Building the sets
# ----------------------------------------------------------------------------------------------


def build_sets(faces_dir: Path, sizes: list[int], work: Path) -> tuple[Path, dict[int, Path]]:
    """A reference folder of real photos, and one generated folder per size (unique files)."""
    import numpy as np
    from PIL import Image, ImageEnhance, ImageOps

    reference = work / "reference"
    reference.mkdir(parents=True)
    for relative in REFERENCE_PHOTOS:
        (reference / Path(relative).name).write_bytes((faces_dir / relative).read_bytes())
    sources = sorted((faces_dir / "photos").glob("*")) + sorted((faces_dir / "crops").glob("*"))
    sources = [path for path in sources if path.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not sources:
        raise SystemExit(f"error: no photos under {faces_dir}/photos or crops")
    loaded = [ImageOps.exif_transpose(Image.open(path)).convert("RGB") for path in sources]
    rng = np.random.default_rng(20240601)
    folders = {}
    for size in sizes:
        folder = work / f"generated_{size}"
        folder.mkdir()
        for index in range(size):
            image = loaded[index % len(loaded)]
            # Photos get a random downscale; the 150 px crops only a mirror/brightness change.
            if max(image.size) > 300:
                factor = float(rng.uniform(0.8, 1.0))
                image = image.resize((round(image.width * factor), round(image.height * factor)),
                                     Image.Resampling.LANCZOS)
            if (index // len(loaded)) % 2 == 1:
                image = ImageOps.mirror(image)
            image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.92, 1.08)))
            image.save(folder / f"gen_{index:04d}.jpg", quality=92)
        folders[size] = folder
    return reference, folders


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("OK" if ok else "MISSED")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces-dir", type=Path, default=DEFAULT_FACES,
                        help=f"the shared test photos (default: {DEFAULT_FACES})")
    parser.add_argument("--sizes", type=int, nargs=2, default=[40, 160], metavar=("SMALL", "LARGE"),
                        help="generated set sizes compared for memory (default: 40 160)")
    parser.add_argument("--skip-face-recognition", action="store_true",
                        help="do not run the face_recognition comparison (default: run it when "
                             "installed)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write all figures as JSON here (default: not written)")
    parser.add_argument("--child", choices=["ours", "face_recognition"], help=argparse.SUPPRESS)
    parser.add_argument("--generated", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "ours":
            result = child_ours(args.generated, args.reference, args.cache_dir)
        else:
            result = child_face_recognition(args.generated, args.reference)
        print(json.dumps(result))
        return 0
    small, large = args.sizes
    if not 0 < small < large:
        parser.error(f"--sizes needs 0 < SMALL < LARGE, got {small} {large}")
    if not (args.faces_dir / "photos").is_dir():
        print(f"error: --faces-dir has no photos/ folder: {args.faces_dir}", file=sys.stderr)
        return 2
    import importlib.util

    has_fr = importlib.util.find_spec("face_recognition") is not None
    run_fr = has_fr and not args.skip_face_recognition
    import dlib

    print(f"face similarity benchmark: dlib backend, {platform.platform()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, dlib {dlib.__version__}")
    results: dict = {"sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench_face_similarity_") as temp:
        work = Path(temp)
        reference, folders = build_sets(args.faces_dir, [small, large], work)
        print(f"sets: reference = {len(REFERENCE_PHOTOS)} real photos; generated = {small} and "
              f"{large} unique variants of the {len(list((args.faces_dir / 'photos').glob('*')))} "
              f"photos + {len(list((args.faces_dir / 'crops').glob('*')))} crops", flush=True)
        for size in (small, large):
            cache = work / f"cache_{size}"
            figures = {}
            print(f"  running {size} images: ours cold ...", file=sys.stderr, flush=True)
            figures["cold"] = run_child("ours", folders[size], reference, cache)
            print(f"  running {size} images: ours warm ...", file=sys.stderr, flush=True)
            figures["warm"] = run_child("ours", folders[size], reference, cache)
            if run_fr:
                print(f"  running {size} images: face_recognition ...", file=sys.stderr,
                      flush=True)
                figures["face_recognition"] = run_child("face_recognition", folders[size],
                                                        reference, None)
            results["sizes"][size] = figures

    rows, all_ok = [], True

    def row(label, values, target, ok):
        nonlocal all_ok
        if ok is False:
            all_ok = False
        rows.append((label, values, target, _verdict(ok)))

    s, l = results["sizes"][small], results["sizes"][large]

    def per_size(key):
        return [key(s), key(l)]

    row("ours cold: images/s", [f"{x:.2f}" for x in per_size(
        lambda f: f["cold"]["images"] / f["cold"]["wall"])], "(report)", None)
    row("ours warm: images/s", [f"{x:.1f}" for x in per_size(
        lambda f: f["warm"]["images"] / f["warm"]["wall"])], "(report)", None)
    overhead = per_size(lambda f: f["cold"]["wall"]
                        / (f["cold"]["model_seconds"] + f["cold"]["model_load_seconds"]))
    row("cold: wall / time in model calls", [f"{x:.3f}" for x in overhead],
        f"<= {TARGET_OVERHEAD}", all(x <= TARGET_OVERHEAD for x in overhead))
    row("  same, model loading not counted as model time",
        [f"{x:.3f}" for x in per_size(lambda f: f["cold"]["wall"] / f["cold"]["model_seconds"])],
        "(report)", None)
    speedup = per_size(lambda f: f["cold"]["wall"] / f["warm"]["wall"])
    row("warm speed-up (cold wall / warm wall)", [f"{x:.1f}x" for x in speedup],
        f">= {TARGET_WARM_SPEEDUP:.0f}x", all(x >= TARGET_WARM_SPEEDUP for x in speedup))
    process = per_size(lambda f: f["cold"]["process_wall"] / f["warm"]["process_wall"])
    row("  same, whole processes (incl. start-up)", [f"{x:.1f}x" for x in process],
        "(report)", None)
    rss = per_size(lambda f: f["cold"]["peak_rss_mib"])
    if None in rss:
        row("peak RSS (MiB), cold", ["n/a", "n/a"], "within 15%", None)
    else:
        growth = rss[1] / rss[0] - 1
        row("peak RSS (MiB), cold", [f"{rss[0]:.0f}", f"{rss[1]:.0f}"],
            f"{large} vs {small} within {TARGET_MEMORY_GROWTH:.0%} ({growth:+.1%})",
            abs(growth) <= TARGET_MEMORY_GROWTH)
    if run_fr:
        row("face_recognition: images/s", [f"{x:.2f}" for x in per_size(
            lambda f: f["face_recognition"]["images"] / f["face_recognition"]["wall"])],
            "(report)", None)
        cold_ratio = per_size(lambda f: f["cold"]["wall"] / f["face_recognition"]["wall"])
        row("ours cold time / face_recognition time", [f"{x:.2f}" for x in cold_ratio],
            "<= 1.00 (no slower)", all(x <= 1.0 for x in cold_ratio))
        warm_ratio = per_size(lambda f: f["warm"]["wall"] / f["face_recognition"]["wall"])
        row("ours warm time / face_recognition time", [f"{x:.3f}" for x in warm_ratio],
            "< 1.00 (faster)", all(x < 1.0 for x in warm_ratio))
        found = per_size(lambda f: sum(v is not None
                                       for v in f["face_recognition"]["similarities"]))
        ours_found = per_size(lambda f: sum(v is not None for v in f["cold"]["similarities"]))
        row("faces found: ours / face_recognition", [f"{a}/{b}" for a, b in zip(ours_found, found)],
            "(report)", None)
    else:
        reason = ("--skip-face-recognition" if has_fr
                  else f"not installed: {FACE_RECOGNITION_INSTALL}")
        row("face_recognition comparison", ["skipped", "skipped"], reason, None)

    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {small:>9}  {large:>9}  target / verdict")
    for label, values, target, verdict in rows:
        print(f"{label:<{width}}  {values[0]:>9}  {values[1]:>9}  {target}  {verdict}")
    print(f"model time = time inside dlib calls (detector, 5-point landmarks, descriptor) plus "
          f"model loading; wall = the evaluate() call in a fresh process")
    print(f"RESULT: {'all targets met' if all_ok else 'a target was missed'}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
