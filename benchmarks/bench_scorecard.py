"""Benchmark evals/scorecard.py on a 48-image sweep, side by side with another git revision.

Usage:
    .venv/bin/python benchmarks/bench_scorecard.py                     # against main, 3 + 5 runs
    .venv/bin/python benchmarks/bench_scorecard.py --baseline-ref HEAD~3 --cold-repeats 1 \\
        --warm-repeats 3                                               # a quicker look
    .venv/bin/python benchmarks/bench_scorecard.py --baseline-ref dc11bc6 --target 1.15

Builds the sweep in a temporary folder: 48 generated 1024x1024 PNG portraits (square crops
around the face of each photo in ../shared/faces/photos, cycled, mirrored and brightness-shifted
so that every file is unique) named as 4 configs x 12 seeds
(`step{1000,2000}_str{0.80,1.00}_cfg4.0_seed{n}.png`), and 8 reference photos made the same way
but never identical to a generated one. The baseline revision's evals/ (every evals/*.py it
has: scorecard.py, its sibling evals and, where the revision has it, scorecard_render.py, from
`git ls-tree` and `git show REF:evals/...`) go into a temporary folder beside the sweep; both
versions score the same files with the dlib backend, each as a child process
(`scorecard.py --generated ... --html ... --no-progress`, its own history and report folder),
alternating baseline and current run by run, so load from other processes hits both alike:
- cold: each run with an empty embedding cache (detection and embedding of all 56 images);
- warm: each run with that version's filled cache (what a re-run of a sweep costs: the skin
  eval, grouping, ranking, intervals, the report and the HTML contact sheet).
Prints every run's wall time (and the child's CPU time, user + system), the medians, and
current / baseline per mode against the target (--target, default <= 1.10); for information
the median of the per-repeat ratios (each repeat runs both versions back to back, so that ratio
resists load drift) and the CPU-time ratio (other processes on a shared machine lengthen wall
time, hardly CPU time). Exit 0 when every target is met, 1 when one is missed, 2 on a usage
error (the baseline revision cannot be read, no photos).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
PHOTOS = REPO_ROOT.parent / "shared" / "faces" / "photos"
EVAL_FILES = ("scorecard.py", "face_similarity_eval.py", "skin_realism_eval.py")  # at least
SIDE = 1024
TARGET = 1.10
CONFIGS = ("step1000_str0.80_cfg4.0", "step1000_str1.00_cfg4.0", "step2000_str0.80_cfg4.0",
           "step2000_str1.00_cfg4.0")


def load_skin_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("skin_realism_eval",
                                                  REPO_ROOT / "evals" / "skin_realism_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def portraits() -> list[np.ndarray]:
    """Square 1024 px crops around the face of each shared photo (OpenCV's cascade finds it)."""
    skin = load_skin_module()
    sources = []
    for path in skin.list_images(PHOTOS):
        bgr = skin.load_image(path)
        height, width = bgr.shape[:2]
        box = skin.detect_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
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
    return sources


def variant(sources: list[np.ndarray], index: int, shift: int) -> np.ndarray:
    """Source index mod n, mirrored every other cycle, brightness shifted: a unique image."""
    image = sources[index % len(sources)]
    if (index // len(sources)) % 2:
        image = image[:, ::-1]
    return np.clip(image.astype(np.int16) + shift, 0, 255).astype(np.uint8)


def write_png(image: np.ndarray, path: Path) -> None:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    assert ok
    path.write_bytes(encoded.tobytes())


def build_sweep(root: Path, count: int, references: int) -> tuple[Path, Path]:
    sources = portraits()
    if not sources:
        raise SystemExit(f"error: no usable photos in {PHOTOS} (../shared/faces)")
    generated, reference = root / "sweep", root / "reference"
    generated.mkdir()
    reference.mkdir()
    for index in range(count):
        config = CONFIGS[index % len(CONFIGS)]
        write_png(variant(sources, index, 2 + index % 7),
                  generated / f"{config}_seed{index // len(CONFIGS)}.png")
    for index in range(references):
        write_png(variant(sources, index + 3, -9 - index % 5), reference / f"ref_{index:02d}.png")
    return generated, reference


def baseline_evals(ref: str, folder: Path) -> Path:
    """The evals/ of git revision `ref` (every evals/*.py in it), written to folder/evals."""
    target = folder / "evals"
    target.mkdir(parents=True)
    listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-tree", "--name-only", f"{ref}:evals"],
                            capture_output=True, text=True, timeout=60)
    names = sorted(set(EVAL_FILES) | {name for name in listed.stdout.split()
                                      if name.endswith(".py")})
    for name in names:
        shown = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{ref}:evals/{name}"],
                               capture_output=True, timeout=60)
        if shown.returncode != 0:
            raise SystemExit(f"error: --baseline-ref {ref}: git show {ref}:evals/{name} failed: "
                             f"{shown.stderr.decode(errors='replace').strip()}")
        (target / name).write_bytes(shown.stdout)
    return target


def _children_cpu() -> float:
    try:
        import resource
    except ImportError:  # Windows: no CPU time of children
        return float("nan")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(evals: Path, generated: Path, reference: Path, out: Path,
             cache: Path) -> tuple[float, float]:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(evals / "scorecard.py"), "--generated", str(generated),
               "--reference", str(reference), "--lora-version", "bench", "--backend", "dlib",
               "--cache-dir", str(cache), "--history", str(out / "eval_history.jsonl"),
               "--report", str(out / "report.md"), "--html", str(out / "report.html"),
               "--no-progress"]
    cpu = _children_cpu()
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, encoding="utf-8",
                               timeout=1800)
    wall = time.perf_counter() - start
    cpu = _children_cpu() - cpu
    if completed.returncode != 0:  # no --compare-to: anything but 0 is a broken run
        raise SystemExit(f"error: {evals / 'scorecard.py'} exited {completed.returncode}:\n"
                         f"{completed.stderr[-2000:]}")
    return wall, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-ref", default="main",
                        help="git revision whose evals/ is the baseline (default: main)")
    parser.add_argument("--images", type=int, default=48, help="generated images (default: 48)")
    parser.add_argument("--references", type=int, default=8,
                        help="reference images (default: 8)")
    parser.add_argument("--cold-repeats", type=int, default=3,
                        help="cold runs per version, empty cache each (default: 3; 0 skips)")
    parser.add_argument("--warm-repeats", type=int, default=5,
                        help="warm runs per version, filled cache (default: 5; 0 skips)")
    parser.add_argument("--target", type=float, default=TARGET,
                        help=f"largest current / baseline wall-time ratio that passes (default: "
                        f"{TARGET:.2f})")
    args = parser.parse_args(argv)
    if args.images < 4 or args.references < 3 or min(args.cold_repeats, args.warm_repeats) < 0 \
            or args.cold_repeats + args.warm_repeats == 0:
        parser.error("--images must be >= 4, --references >= 3, repeats >= 0 and not both 0")
    if not PHOTOS.is_dir():
        parser.error(f"the benchmark needs the shared photos at {PHOTOS}")
    times: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_scorecard_") as temp:
        root = Path(temp)
        generated, reference = build_sweep(root, args.images, args.references)
        versions = {"baseline": baseline_evals(args.baseline_ref, root / "baseline"),
                    "current": REPO_ROOT / "evals"}
        print(f"sweep: {args.images} generated + {args.references} references, {SIDE}x{SIDE} PNG, "
              f"{len(CONFIGS)} configs; baseline {args.baseline_ref}, current = working tree",
              flush=True)
        for mode, repeats in (("cold", args.cold_repeats), ("warm", args.warm_repeats)):
            if not repeats:
                continue
            if mode == "warm":  # fill each version's cache once, untimed
                for name, evals in versions.items():
                    run_once(evals, generated, reference, root / "out" / name / "fill",
                             root / "cache" / name)
            for repeat in range(repeats):
                order = ("baseline", "current") if repeat % 2 == 0 else ("current", "baseline")
                for name in order:
                    cache = (root / "cache" / name if mode == "warm"
                             else root / "cold" / f"{name}_{repeat}")
                    wall, cpu = run_once(versions[name], generated, reference,
                                         root / "out" / name / f"{mode}_{repeat}", cache)
                    times.setdefault((mode, name), []).append(wall)
                    cpus.setdefault((mode, name), []).append(cpu)
                    print(f"  {mode} run {repeat + 1}/{repeats} {name:8s} {wall:7.2f} s wall, "
                          f"{cpu:7.2f} s CPU", flush=True)
    failed = False
    print()
    print(f"| mode | baseline ({args.baseline_ref}) median | current median | current / baseline "
          f"| target <= {args.target:.2f} | median of per-repeat ratios | CPU time: baseline, "
          "current, ratio |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("cold", "warm"):
        if (mode, "current") not in times:
            continue
        base = statistics.median(times[(mode, "baseline")])
        current = statistics.median(times[(mode, "current")])
        ratio = current / base
        verdict = "met" if ratio <= args.target else "MISSED"
        failed |= ratio > args.target
        runs = len(times[(mode, "current")])
        paired = statistics.median(c / b for c, b in zip(times[(mode, "current")],
                                                          times[(mode, "baseline")]))
        cpu_base = statistics.median(cpus[(mode, "baseline")])
        cpu_current = statistics.median(cpus[(mode, "current")])
        print(f"| {mode} ({runs} runs each) | {base:.2f} s | {current:.2f} s | {ratio:.3f} "
              f"| {verdict} | {paired:.3f} | {cpu_base:.2f} s, {cpu_current:.2f} s, "
              f"{cpu_current / cpu_base:.3f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
