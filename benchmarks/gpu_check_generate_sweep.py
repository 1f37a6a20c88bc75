"""GPU check of tools/generate_sweep.py: the tiny SDXL in fp16 on CUDA, a handful of images, peak memory.

For a lent GPU machine (not CI; needs torch with CUDA plus diffusers 0.39.0, peft 0.21.2,
accelerate 1.11.0, transformers 4.57.1). Where the machine's Python lacks them, carry wheels:
    pip download --no-deps -d .gpu-wheels diffusers==0.39.0 peft==0.21.2 accelerate==1.11.0
    # on the GPU machine:
    python3 -m pip install -q --no-deps --target /tmp/site .gpu-wheels/*.whl
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check_generate_sweep.py --out "$OUT"

What it does (about a minute): builds the tiny random-weight SDXL and two kohya LoRAs of
tests/tiny_sdxl.py, then runs the script's real code with --device cuda and the default dtype:
baseline + 2 checkpoints x strengths 0 and 1, 2 prompts, 1 seed, 256x256, 4 steps (10 images);
then the same plan again into another folder, and once with --cpu-offload. It prints the dtype,
images/s and the peak CUDA memory (torch.cuda.max_memory_allocated, from sweep.json), and checks:
every image is made with finite pixels, strength 0 gives the baseline's pixels, the second run
gives the same pixels (determinism on this GPU), and the offload run's images (equal or the
largest pixel difference, for information). The tiny model says nothing about SDXL's own memory
at 1024: on the pod, sweep.json's peak_cuda_memory_bytes of a real run answers that.
Exit 0 when every check passes, 1 when one fails, 2 without CUDA.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_sweep", REPO_ROOT / "tools" / "generate_sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_sweep"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="copy sweep.json files and a summary here")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: the same checks on CPU in fp32, no offload run, to try the check "
                             "itself without a GPU (default: cuda)")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: torch sees no CUDA device", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__} cuda {torch.version.cuda} on {where}")
    expected_dtype = "fp16" if args.device == "cuda" else "fp32"
    import tiny_sdxl

    gs = load_script()
    failures = []
    summary = {}
    with tempfile.TemporaryDirectory(prefix="gpu_sweep_") as scratch:
        root = Path(scratch)
        demo = tiny_sdxl.build_demo(root / "model")
        prompts = root / "prompts.txt"
        prompts.write_text("{trigger} photo\nthe {trigger}\n", encoding="utf-8")

        def sweep(out: Path, *extra: str) -> tuple[int, float, dict]:
            argv = ["--base-model", str(demo["single_file"]), "--config", str(demo["config"]),
                    "--lora-dir", str(demo["lora_dir"]), "--trigger", "ohwx", "--out", str(out),
                    "--prompts", str(prompts), "--strengths", "0,1", "--cfg", "4", "--seeds", "1",
                    "--steps", "4", "--size", "256", "--device", args.device, *extra]
            if args.device == "cuda":
                torch.cuda.empty_cache()
            start = time.perf_counter()
            code = gs.main(argv)
            elapsed = time.perf_counter() - start
            record = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
            return code, elapsed, record

        runs = {}
        plans = [("first", ()), ("second", ())]
        if args.device == "cuda":
            plans.append(("offload", ("--cpu-offload",)))
        for name, extra in plans:
            out = root / name
            code, elapsed, record = sweep(out, *extra)
            images = sorted(out.glob("*.png"))
            peak = record.get("peak_cuda_memory_bytes")
            line = (f"{name}: exit {code}, {len(images)} images in {elapsed:.1f} s "
                    f"({len(images) / elapsed:.1f} images/s incl. loading), dtype "
                    f"{record['settings']['dtype']}, peak CUDA memory "
                    f"{(peak or 0) / 2**20:.1f} MiB, load {record.get('load_seconds')} s")
            print(line)
            summary[name] = line
            runs[name] = out
            if code != 0 or len(images) != 10:
                failures.append(f"{name}: exit {code}, {len(images)} images (10 planned)")
            if record["settings"]["dtype"] != expected_dtype:
                failures.append(f"{name}: dtype {record['settings']['dtype']}, expected {expected_dtype}")
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / "sweep.json", args.out / f"sweep_{name}.json")
        first = runs["first"]
        for label in ("step250", "step500"):
            for p in (1, 2):
                tail = f"cfg4.0_p{p:02d}_seed1.png"
                if not (first / f"baseline_{tail}").exists():
                    continue
                baseline = pixels(first / f"baseline_{tail}")
                if not (pixels(first / f"{label}_str0.00_{tail}") == baseline).all():
                    failures.append(f"strength 0 differs from the baseline: {label} p{p:02d}")
                if (pixels(first / f"{label}_str1.00_{tail}") == baseline).all():
                    failures.append(f"strength 1 equals the baseline (LoRA not applied): {label} p{p:02d}")
        for path in sorted(first.glob("*.png")):
            other = runs["second"] / path.name
            if not other.exists() or not (pixels(path) == pixels(other)).all():
                failures.append(f"not deterministic on this GPU: {path.name}")
            offload = runs.get("offload", first) / path.name
            if "offload" in runs and offload.exists():
                difference = int(abs(pixels(path) - pixels(offload)).max())
                summary.setdefault("offload_max_pixel_difference", 0)
                summary["offload_max_pixel_difference"] = max(summary["offload_max_pixel_difference"],
                                                              difference)
    print(f"offload vs plain: largest pixel difference {summary.get('offload_max_pixel_difference')}")
    for failure in failures:
        print(f"FAIL {failure}")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    if args.out:
        (args.out / "summary.json").write_text(json.dumps({"summary": summary, "failures": failures},
                                                          indent=2), encoding="utf-8")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
