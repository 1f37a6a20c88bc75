"""Grade a LoRA sweep: identity and skin realism per config, a history, a report, an HTML page.

Runs evals/face_similarity_eval.py and evals/skin_realism_eval.py on one folder of generated images,
groups the images by the config their names carry, ranks the configs, grades the run A-F, appends
one line to the history, writes the Markdown report (and, when asked, an HTML contact sheet), and
prints the scorecard JSON on stdout.

Usage:
  # The sample sweep, built at run time from photos that installed packages ship (CPU, offline,
  # dlib backend): writes build/demo/{sweep,reference}/, eval_history.jsonl, latest_report.md,
  # report.html, scorecard.json and runs/ (per-image details):
  python3 evals/scorecard.py --demo build/demo

  # A tiny CPU run on that sweep (no GPU, no download), writing outside the repo:
  python3 evals/scorecard.py --generated build/demo/sweep --reference build/demo/reference \\
      --lora-version test --backend dlib --history /tmp/h.jsonl --report /tmp/report.md

  # A real sweep on the pod, gated against the previous LoRA version (exit 1 on a regression):
  python3 evals/scorecard.py --generated /workspace/sweep_results \\
      --reference /workspace/training_images --lora-version v3 \\
      --training-params /workspace/v3_params.json --notes "prodigy, 1500 steps" \\
      --html evals/latest_report.html --compare-to v2

Configs. Every `key<number>` token in the image's path relative to --generated (folders and file
stem, e.g. `step1500_str0.80_cfg4.0_seed42.png` or `step1500/str0.80_cfg4.0/img_001.png`) is read;
seed and index tokens (seed, idx, index, img, image, n, num, no, batch, sample, i, frame, pic,
photo, copy) are dropped; the rest, joined with `_` in path order, name the config
(`step1500_str0.80_cfg4.0`). A key may be separated from its number by `_`, `-` or `=` only when
it is a known key (str, strength, lora, weight, cfg, scale, guidance, step, steps, epoch...).
An image whose path names no config is read for the generation parameters that A1111
(`parameters`: Steps, CFG scale, <lora:name:0.8>) or ComfyUI (`prompt`: KSampler cfg/steps,
LoraLoader strength_model) store in PNG text; an image with neither is in the group `unparsed`.

Score and grade (per config, and for the whole run):
  identity_i = clip(0.5 + 0.5 * (similarity_i - threshold) / span, 0, 1), span = max(ceiling -
               threshold, 0.25 * (1 - threshold)): 0.5 at the threshold, 1 at the reference ceiling
               (how alike the training photos are to each other); an image without a face is 0.
  realism_i  = min(1, skin realism / the training photos' own leave-one-out realism).
  score      = identity * (0.4 + 0.6 * realism), identity = mean identity_i over all images,
               realism = mean realism_i over images with a face: identity gates (another person
               or no face scores 0), realism scales between 40% and 100% of it (plastic skin).
  grade      = A >= 0.80, B >= 0.65, C >= 0.50, D >= 0.35, else F; capped at C when the face eval
               fails (mean similarity below threshold), at D when the detection rate is below the
               face eval's minimum (0.8).
Configs rank by score (ties: mean similarity, then name); best_config is first, worst_config last.

History. --history gets one JSON line per run (append-only: one O_APPEND write under a lock file
beside it, fsync'd, never rewritten; a corrupt line is skipped with a warning). Per-image scores go
to a sidecar, runs/<run_id>.json beside the history. --compare-to VERSION_OR_RUN_ID compares with
the newest run of that run id or lora version: per-metric deltas, and a bootstrap 95% interval
(2000 resamples, seed 0) of the difference in mean per-image similarity; the interval entirely below
0 is a significant regression (exit 1). Runs scored by other backends or models are refused
(exit 2). Without --compare-to the report still compares with the newest run of another version.
face_similarity_mean counts an image without a face as 0, like the face eval's summary mean.

Exit codes: 0 written; 1 --compare-to found a significant regression; 2 usage or input error
(also when --compare-to cannot decide: the target run has no per-image sidecar, or either run has
fewer than 3 images; the new run is still recorded).
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import html
import importlib.util
import io
import json
import math
import os
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

import numpy as np

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_HISTORY = SCRIPT_DIR / "eval_history.jsonl"
DEFAULT_REPORT = SCRIPT_DIR / "latest_report.md"

INDEX_KEYS = frozenset({
    "seed", "idx", "index", "img", "image", "n", "num", "no", "nr", "batch", "sample", "i",
    "frame", "pic", "photo", "copy",
})
STRENGTH_KEYS = frozenset({"str", "strength", "lora", "lorastrength", "lorastr", "weight", "w",
                           "lw", "ls"})
CFG_KEYS = frozenset({"cfg", "cfgscale", "scale", "guidance", "gs"})
KNOWN_KEYS = INDEX_KEYS | STRENGTH_KEYS | CFG_KEYS | frozenset({
    "step", "steps", "ckpt", "checkpoint", "epoch", "ep", "e", "rank", "dim", "alpha", "lr",
    "res", "size", "denoise", "shift", "clip", "clipskip",
})
UNPARSED = "unparsed"
# key<number>, not glued to a longer word or number; the number has no trailing letters.
_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9.])([A-Za-z]+)([_=-]?)(\d+(?:\.\d+)?)(?![A-Za-z0-9]|\.\d)")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

REALISM_FLOOR = 0.4  # score = identity * (REALISM_FLOOR + (1 - REALISM_FLOOR) * realism)
GRADE_CUTS = (("A", 0.80), ("B", 0.65), ("C", 0.50), ("D", 0.35))
GRADE_ORDER = "ABCDF"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_CONFIDENCE = 0.95
THUMB_SIZE = 160
LOCK_TIMEOUT_S = 120.0


class UsageError(Exception):
    """An exit-2 situation found after parsing (a missing run to compare with, a bad file)."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- configs

def parse_path_tokens(relative_path: str) -> list[tuple[str, str]]:
    """All `key<number>` tokens of a posix path (folders, then the file stem), index keys too."""
    parts = list(PurePosixPath(relative_path).parts)
    if parts:
        parts[-1] = PurePosixPath(parts[-1]).stem
    tokens = []
    for part in parts:
        for match in _TOKEN_RE.finditer(part):
            key, separator, value = match.groups()
            if separator and key.lower() not in KNOWN_KEYS:
                continue  # "ComfyUI_00001": a counter, not a config
            tokens.append((key, value))
    return tokens


def config_tokens(relative_path: str) -> list[tuple[str, str]]:
    """The config tokens of a path: seed and index tokens dropped, a repeated key kept once."""
    seen = set()
    kept = []
    for key, value in parse_path_tokens(relative_path):
        lower = key.lower()
        if lower in INDEX_KEYS or lower in seen:
            continue
        seen.add(lower)
        kept.append((key, value))
    return kept


def _number_text(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return f"{value:g}"


def parse_a1111_parameters(text: str) -> list[tuple[str, str]]:
    """Config tokens from A1111's `parameters`: LoRA strength (<lora:..>), CFG scale, Steps."""
    tokens = []
    lora = re.search(r"<lora:[^:>]+:\s*(-?\d+(?:\.\d+)?)", text)
    if lora:
        tokens.append(("str", lora.group(1)))
    lines = [line for line in text.splitlines() if re.search(r"(^|,\s*)Steps:\s*\d", line)]
    if lines:
        line = lines[-1]
        cfg = re.search(r"CFG scale:\s*(\d+(?:\.\d+)?)", line)
        if cfg:
            tokens.append(("cfg", cfg.group(1)))
        steps = re.search(r"(?:^|,\s*)Steps:\s*(\d+)", line)
        if steps:
            tokens.append(("steps", steps.group(1)))
    return tokens


def parse_comfyui_prompt(text: str) -> list[tuple[str, str]]:
    """Config tokens from ComfyUI's `prompt` JSON: LoraLoader strength_model, KSampler cfg/steps."""
    try:
        graph = json.loads(text)
    except (ValueError, TypeError):
        return []
    if not isinstance(graph, dict):
        return []

    def order(item):
        node_id = str(item[0])
        return (0, int(node_id), node_id) if node_id.isdigit() else (1, 0, node_id)

    strength = cfg = steps = None
    for _, node in sorted(graph.items(), key=order):
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        kind = str(node.get("class_type", ""))
        inputs = node["inputs"]
        if kind.startswith("LoraLoader") and strength is None:
            strength = _number_text(inputs.get("strength_model"))
        if kind.startswith("KSampler") and cfg is None:
            cfg = _number_text(inputs.get("cfg"))
            steps = _number_text(inputs.get("steps"))
    tokens = []
    for key, value in (("str", strength), ("cfg", cfg), ("steps", steps)):
        if value is not None:
            tokens.append((key, value))
    return tokens


def png_generation_tokens(path: Path) -> list[tuple[str, str]]:
    """Config tokens from the PNG text chunks of A1111 or ComfyUI output; [] for anything else."""
    if path.suffix.lower() != ".png":
        return []
    try:
        from PIL import Image
        with Image.open(path) as image:
            info = dict(image.info)
    except Exception:  # an unreadable file is reported by the evals, not here
        return []
    parameters = info.get("parameters")
    if isinstance(parameters, str):
        tokens = parse_a1111_parameters(parameters)
        if tokens:
            return tokens
    prompt = info.get("prompt")
    if isinstance(prompt, str):
        return parse_comfyui_prompt(prompt)
    return []


def image_config(generated_dir: Path, relative_path: str) -> tuple[str, list[tuple[str, str]]]:
    """(config name, tokens) of an image: from its path, else its PNG text, else `unparsed`."""
    tokens = config_tokens(relative_path)
    if not tokens:
        tokens = png_generation_tokens(generated_dir / relative_path)
    if not tokens:
        return UNPARSED, []
    return "_".join(f"{key}{value}" for key, value in tokens), tokens


def canonical_key(key: str) -> str:
    lower = key.lower()
    if lower in STRENGTH_KEYS:
        return "strength"
    if lower in CFG_KEYS:
        return "cfg"
    return lower


# --------------------------------------------------------------------------- scoring

def identity_value(similarity: float | None, threshold: float, ceiling: float | None) -> float:
    """0..1: 0.5 at the threshold, 1 at the reference ceiling, 0 without a face (see module doc)."""
    if similarity is None or not math.isfinite(similarity):
        return 0.0
    span = 0.25 * (1.0 - threshold)
    if ceiling is not None and math.isfinite(ceiling):
        span = max(span, ceiling - threshold)
    span = max(span, 1e-3)
    return float(min(1.0, max(0.0, 0.5 + 0.5 * (similarity - threshold) / span)))


def combined_score(identity: float, realism: float) -> float:
    """identity * (0.4 + 0.6 * realism), both in 0..1: identity gates, realism scales."""
    identity = min(1.0, max(0.0, identity))
    realism = min(1.0, max(0.0, realism))
    return float(identity * (REALISM_FLOOR + (1.0 - REALISM_FLOOR) * realism))


def relative_realism(realism: float | None, reference_realism: float | None) -> float | None:
    """Skin realism as a fraction of the training photos' own (leave-one-out) realism, max 1."""
    if realism is None or not math.isfinite(realism):
        return None
    if reference_realism is None or not math.isfinite(reference_realism) or reference_realism <= 0:
        return float(min(1.0, max(0.0, realism)))
    return float(min(1.0, max(0.0, realism / reference_realism)))


def grade_for(score: float, *, similarity_pass: bool, detection_rate: float,
              min_detection_rate: float) -> str:
    grade = "F"
    for letter, cut in GRADE_CUTS:
        if score >= cut:
            grade = letter
            break
    if not similarity_pass:
        grade = max(grade, "C", key=GRADE_ORDER.index)
    if detection_rate < min_detection_rate:
        grade = max(grade, "D", key=GRADE_ORDER.index)
    return grade


def _mean(values) -> float | None:
    values = [value for value in values if value is not None]
    return float(sum(values) / len(values)) if values else None


def summarize_group(images: list[dict], *, threshold: float, min_detection_rate: float) -> dict:
    """Metrics of a set of joined per-image records (a config, or the whole run)."""
    count = len(images)
    detected = [image for image in images if image["detected"]]
    detection_rate = len(detected) / count if count else 0.0
    similarity_mean = _mean(image["similarity_or_zero"] for image in images)
    identity = _mean(image["identity"] for image in images) or 0.0
    realism_detected = _mean(image["realism"] for image in detected)
    realism_relative = _mean(image["realism_relative"] for image in detected) or 0.0
    score = combined_score(identity, realism_relative)
    similarity_pass = similarity_mean is not None and similarity_mean >= threshold
    return {
        "images": count,
        "faces_found": len(detected),
        "detection_rate": detection_rate,
        "similarity_mean": similarity_mean,
        "similarity_mean_detected": _mean(image["similarity"] for image in detected),
        "pass_rate": (sum(1 for image in images if image["passed"]) / count) if count else 0.0,
        "identity": identity,
        "realism_mean": realism_detected,
        "realism_relative": realism_relative,
        "score": score,
        "grade": grade_for(score, similarity_pass=similarity_pass, detection_rate=detection_rate,
                           min_detection_rate=min_detection_rate),
    }


def reference_realism_of(skin: dict) -> float | None:
    """The training photos' own mean realism (each scored against the others), when reported."""
    leave_one_out = (skin.get("references") or {}).get("leave_one_out") or {}
    value = leave_one_out.get("overall_realism_score_mean")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def join_images(face: dict, skin: dict, generated_dir: Path) -> tuple[list[dict], list[dict]]:
    """One record per image from both evals' outputs; unreadable images go to the second list."""
    threshold = float(face["threshold"])
    ceiling = face.get("references", {}).get("ceiling")
    reference_realism = reference_realism_of(skin)
    skin_by_path = {image["path"]: image for image in skin.get("images", [])}
    face_by_path = {image["path"]: image for image in face.get("images", [])}
    joined, unreadable = [], []
    for path in sorted(set(face_by_path) | set(skin_by_path)):
        face_image = face_by_path.get(path)
        skin_image = skin_by_path.get(path)
        if face_image is None or face_image.get("error"):
            unreadable.append({"path": path, "error": (face_image or {}).get("error")
                               or "not scored by the face eval"})
            continue
        similarity = face_image.get("similarity") if face_image.get("detected") else None
        realism = None
        if skin_image is not None and not skin_image.get("error"):
            realism = skin_image.get("overall_realism_score")
        name, tokens = image_config(generated_dir, path)
        joined.append({
            "path": path,
            "config": name,
            "tokens": [[key, value] for key, value in tokens],
            "detected": bool(face_image.get("detected")),
            "faces": face_image.get("faces"),
            "similarity": similarity,
            "similarity_or_zero": similarity if similarity is not None else 0.0,
            "passed": bool(face_image.get("passed")),
            "identity": identity_value(similarity, threshold, ceiling),
            "realism": realism,
            "realism_relative": relative_realism(realism, reference_realism),
            "texture": (skin_image or {}).get("texture_score"),
            "color": (skin_image or {}).get("color_naturalness_score"),
            "skin_face_found": (skin_image or {}).get("face_found"),
            "skin_error": (skin_image or {}).get("error") if skin_image else "not scored",
        })
    return joined, unreadable


def rank_configs(images: list[dict], *, threshold: float, min_detection_rate: float) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    tokens: dict[str, list] = {}
    for image in images:
        groups.setdefault(image["config"], []).append(image)
        tokens.setdefault(image["config"], image["tokens"])
    table = []
    for name, members in groups.items():
        row = {"config": name, "tokens": {key: value for key, value in tokens[name]}}
        row.update(summarize_group(members, threshold=threshold,
                                   min_detection_rate=min_detection_rate))
        table.append(row)
    table.sort(key=lambda row: (-row["score"], -(row["similarity_mean"] or 0.0), row["config"]))
    for rank, row in enumerate(table, 1):
        row["rank"] = rank
    return table


def build_scorecard(face: dict, skin: dict, *, generated_dir: Path, reference_dir: Path,
                    lora_version: str, run_id: str, timestamp: str) -> tuple[dict, dict]:
    """(scorecard, sidecar details) from the two evals' result dicts."""
    threshold = float(face["threshold"])
    face_summary = face.get("summary", {})
    min_detection_rate = float(face_summary.get("min_detection_rate", 0.8))
    images, unreadable = join_images(face, skin, generated_dir)
    configs = rank_configs(images, threshold=threshold, min_detection_rate=min_detection_rate)
    run = summarize_group(images, threshold=threshold, min_detection_rate=min_detection_rate)
    references = face.get("references", {})
    ceiling = references.get("ceiling")
    similarity_mean = run["similarity_mean"]
    warnings = _collect_warnings(face, skin, images, unreadable)
    scorecard = {
        "run_id": run_id,
        "timestamp": timestamp,
        "lora_version": lora_version,
        "face_similarity_mean": similarity_mean,
        "face_similarity_pass": bool(similarity_mean is not None and similarity_mean >= threshold
                                     and run["detection_rate"] >= min_detection_rate),
        "skin_realism_mean": run["realism_mean"],
        "overall_grade": run["grade"] if images else "F",
        "images_evaluated": len(images),
        "best_config": configs[0]["config"] if configs else None,
        "worst_config": configs[-1]["config"] if configs else None,
        "score": run["score"],
        "identity_score": run["identity"],
        "backend": face.get("backend"),
        "model": face.get("model"),
        "threshold": threshold,
        "min_detection_rate": min_detection_rate,
        "detection_rate": run["detection_rate"],
        "face_similarity_mean_detected": run["similarity_mean_detected"],
        "pass_rate": run["pass_rate"],
        "reference_ceiling": ceiling,
        "identity_ratio": (similarity_mean / ceiling) if similarity_mean is not None and ceiling
        else None,
        "references_used": references.get("used"),
        "reference_outliers": list(references.get("outliers") or []),
        "reference_realism": reference_realism_of(skin),
        "images_unreadable": len(unreadable),
        "generated_dir": str(generated_dir),
        "reference_dir": str(reference_dir),
        "configs": configs,
        "warnings": warnings,
    }
    details = {
        "run_id": run_id,
        "lora_version": lora_version,
        "backend": face.get("backend"),
        "model": face.get("model"),
        "threshold": threshold,
        "generated_dir": str(generated_dir),
        "reference_dir": str(reference_dir),
        "images": [{key: value for key, value in image.items() if key != "similarity_or_zero"}
                   for image in images],
        "unreadable": unreadable,
        "references": references,
        "skin_references": skin.get("references"),
        "skin_method": skin.get("method"),
        "face_summary": face_summary,
        "skin_summary": skin.get("summary"),
        "warnings": warnings,
    }
    return scorecard, details


def _collect_warnings(face: dict, skin: dict, images: list[dict], unreadable: list[dict]
                      ) -> list[str]:
    warnings = []
    missing = [image["path"] for image in images if not image["detected"]]
    if missing:
        shown = ", ".join(missing[:10])
        if len(missing) > 10:
            shown += f" and {len(missing) - 10} more"
        warnings.append(f"no face found in {len(missing)} of {len(images)} images: {shown}")
    for item in unreadable:
        warnings.append(f"unreadable image skipped: {item['path']}: {item['error']}")
    outliers = face.get("references", {}).get("outliers") or []
    if outliers:
        warnings.append("reference outliers (least like the other training photos): "
                        + ", ".join(str(path) for path in outliers))
    for item in face.get("references", {}).get("skipped") or []:
        warnings.append(f"reference skipped: {item.get('path')}: {item.get('reason')}")
    for label, source in (("face eval", face), ("skin eval", skin)):
        for message in source.get("warnings") or []:
            warnings.append(f"{label}: {message}")
    return warnings


# --------------------------------------------------------------------------- history

@contextlib.contextmanager
def file_lock(lock_path: Path, timeout: float = LOCK_TIMEOUT_S):
    """An exclusive lock on `lock_path` (created, never deleted): msvcrt on Windows, else flock."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        if os.name == "nt":
            import msvcrt
            deadline = time.monotonic() + timeout
            while True:
                try:
                    os.lseek(fd, 0, os.SEEK_SET)
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"could not lock {lock_path} within {timeout:.0f} s")
                    time.sleep(0.05)
            try:
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"could not lock {lock_path} within {timeout:.0f} s")
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_path_for(history: Path) -> Path:
    return history.with_name(history.name + ".lock")


def clean_json(value):
    """Floats rounded to 6 places, NaN/inf to None, tuples to lists, paths to strings."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, (np.floating,)):
        return clean_json(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, dict):
        return {str(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def append_history(history: Path, record: dict, sidecar: Path | None = None,
                   sidecar_text: str = "") -> None:
    """Append `record` as one JSON line: one O_APPEND os.write under the lock, then fsync.

    Under the same lock the run id is checked to be new (two runs given the same --run-id at
    once must not both land) and the sidecar, when given, is written first. A previous line left
    without its newline (a torn write) gets one first: this line stays whole.
    """
    text = json.dumps(clean_json(record), ensure_ascii=True, allow_nan=False)
    data = (text + "\n").encode("ascii")
    history.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path_for(history)):
        run_id = str(record.get("run_id"))
        if any(str(old.get("run_id")) == run_id
               for old in read_history(history, report=lambda message: None)):
            raise UsageError(f"--run-id {run_id} is already in {history}; choose another id")
        if sidecar is not None:
            write_atomic(sidecar, sidecar_text)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        fd = os.open(history, flags, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(history, "rb") as handle:
                    handle.seek(size - 1)
                    if handle.read(1) != b"\n":
                        data = b"\n" + data
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"short write to {history}: {written} of {len(data)} bytes "
                              "(disk full?); the partial line will be skipped by readers")
            os.fsync(fd)
        finally:
            os.close(fd)


def read_history(history: Path, *, report=warn) -> list[dict]:
    """Every valid record of a history, in file order; a corrupt line is reported and skipped."""
    if not history.is_file():
        return []
    records = []
    with open(history, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as error:
                report(f"{history}:{number}: corrupt history line skipped ({type(error).__name__})")
                continue
            if not isinstance(record, dict) or "run_id" not in record:
                report(f"{history}:{number}: history line without a run_id skipped")
                continue
            records.append(record)
    return records


def find_run(records: list[dict], key: str) -> dict | None:
    """The newest record with run_id == key, else the newest with lora_version == key."""
    for field in ("run_id", "lora_version"):
        matches = [record for record in records if str(record.get(field)) == key]
        if matches:
            return matches[-1]
    return None


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


def sidecar_path(history: Path, run_id: str) -> Path:
    return history.parent / "runs" / f"{run_id}.json"


def load_details(history: Path, record: dict) -> dict | None:
    """The sidecar of a history record, or None (missing or corrupt) with a warning."""
    relative = record.get("details")
    path = history.parent / relative if relative else sidecar_path(history, str(record["run_id"]))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        warn(f"per-image details of run {record['run_id']} unavailable ({path}: {error}); "
             "the comparison has no noise estimate")
        return None


# --------------------------------------------------------------------------- comparison

def bootstrap_delta(new: list[float], old: list[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED, confidence: float = BOOTSTRAP_CONFIDENCE
                    ) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(new) - mean(old), resampling each run independently."""
    rng = np.random.default_rng(seed)
    new_values = np.asarray(new, dtype=np.float64)
    old_values = np.asarray(old, dtype=np.float64)
    new_means = new_values[rng.integers(0, len(new_values), (resamples, len(new_values)))].mean(1)
    old_means = old_values[rng.integers(0, len(old_values), (resamples, len(old_values)))].mean(1)
    low, high = np.quantile(new_means - old_means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def per_image_similarity(details: dict) -> list[float]:
    return [image["similarity"] if image.get("similarity") is not None else 0.0
            for image in details.get("images", [])]


COMPARED_METRICS = ("face_similarity_mean", "skin_realism_mean", "detection_rate", "identity_score",
                    "score", "pass_rate", "images_evaluated")


def compare_runs(new: dict, new_details: dict | None, old: dict, old_details: dict | None) -> dict:
    """Deltas (new - old) per metric and whether the identity change exceeds bootstrap noise."""
    deltas = {}
    for metric in COMPARED_METRICS:
        a, b = new.get(metric), old.get(metric)
        deltas[metric] = (a - b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool) else None
    comparison = {
        "run_id": old.get("run_id"),
        "lora_version": old.get("lora_version"),
        "timestamp": old.get("timestamp"),
        "old_grade": old.get("overall_grade"),
        "new_grade": new.get("overall_grade"),
        "old": {metric: old.get(metric) for metric in COMPARED_METRICS},
        "deltas": deltas,
        "interval": None,
        "verdict": "unknown",
        "significant_regression": False,
    }
    if old.get("threshold") != new.get("threshold"):
        comparison["note"] = (f"thresholds differ ({old.get('threshold')} then, "
                              f"{new.get('threshold')} now): pass and grade are not like for like")
    if not new_details or not old_details:
        comparison["verdict"] = "unknown (no per-image details for one run)"
        return comparison
    new_values = per_image_similarity(new_details)
    old_values = per_image_similarity(old_details)
    if len(new_values) < 3 or len(old_values) < 3:
        comparison["verdict"] = "unknown (fewer than 3 images in a run)"
        return comparison
    low, high = bootstrap_delta(new_values, old_values)
    comparison["interval"] = [low, high]
    comparison["confidence"] = BOOTSTRAP_CONFIDENCE
    if high < 0:
        comparison["verdict"] = "significant regression"
        comparison["significant_regression"] = True
    elif low > 0:
        comparison["verdict"] = "significant improvement"
    else:
        comparison["verdict"] = "within noise"
    return comparison


def same_scorer(a: dict, b: dict) -> bool:
    return a.get("backend") == b.get("backend") and a.get("model") == b.get("model")


# --------------------------------------------------------------------------- report

def _f(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _signed(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:+d}" if isinstance(value, int) else f"{value:+.{digits}f}"


GRADE_WORDS = {
    "A": "strong: identity and skin both hold",
    "B": "good: usable, check the weakest metric",
    "C": "borderline: identity or realism is weak",
    "D": "weak: most images miss the person or look artificial",
    "F": "failing: the person is not there",
}


def verdict_line(scorecard: dict, *, code: str = "`") -> str:
    grade = scorecard["overall_grade"]
    text = (f"Grade {grade} over all {scorecard['images_evaluated']} images "
            f"({GRADE_WORDS[grade]}).")
    if scorecard.get("best_config"):
        best = scorecard["configs"][0]
        text += (f" Best config: {code}{best['config']}{code} (grade {best['grade']}, "
                 f"score {best['score']:.2f}).")
    return text


def render_report(scorecard: dict, comparison: dict | None, *, notes: str | None = None,
                  training_params=None) -> str:
    """The Markdown summary a person reads."""
    s = scorecard
    lines = [f"# Scorecard: {s['lora_version']} ({s['run_id']})", ""]
    lines += [f"**Verdict:** {verdict_line(s)}", ""]
    lines += [
        f"- Grade: **{s['overall_grade']}** (score {_f(s['score'], 2)}; "
        "score = identity x (0.4 + 0.6 x realism relative to the training photos); "
        "A >= 0.80, B >= 0.65, C >= 0.50, D >= 0.35)",
        f"- Identity: mean similarity {_f(s['face_similarity_mean'])} (faceless images count 0; "
        f"{_f(s['face_similarity_mean_detected'])} over found faces) against threshold "
        f"{_f(s['threshold'])} and reference ceiling {_f(s['reference_ceiling'])}; "
        f"identity ratio {_f(s['identity_ratio'])}; "
        f"{'PASS' if s['face_similarity_pass'] else 'FAIL'}",
        f"- Skin realism: {_f(s['skin_realism_mean'])} (mean over images with a face, 0..1)",
        f"- Faces found: {_pct(s['detection_rate'])} of {s['images_evaluated']} images "
        f"(minimum {_pct(s['min_detection_rate'])})",
        f"- Scored by: {s['backend']} / {s['model']}; {s['timestamp']}",
        f"- Best config: `{s['best_config']}`; worst config: `{s['worst_config']}`",
    ]
    if notes:
        lines.append(f"- Notes: {notes}")
    if training_params:
        params = json.dumps(training_params, ensure_ascii=False)[:400]
        lines.append(f"- Training params: `{params}`")
    lines += ["", "## Configs, ranked", "",
              "| # | config | images | faces | similarity | pass | realism | score | grade |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in s["configs"]:
        lines.append(
            f"| {row['rank']} | `{row['config']}` | {row['images']} "
            f"| {_pct(row['detection_rate'])} | {_f(row['similarity_mean'])} "
            f"| {_pct(row['pass_rate'])} | {_f(row['realism_mean'])} "
            f"| {_f(row['score'], 2)} | {row['grade']} |")
    lines += ["", "## Comparison with the previous version", ""]
    if comparison is None:
        lines.append("No earlier run of another version in the history.")
    elif comparison.get("refused"):
        lines.append(comparison["refused"])
    else:
        interval = ""
        if comparison.get("interval"):
            low, high = comparison["interval"]
            interval = f" (95% bootstrap interval {_signed(low)} .. {_signed(high)})"
        lines.append(f"Against `{comparison['lora_version']}` run `{comparison['run_id']}` "
                     f"({comparison['timestamp']}): grade {comparison['old_grade']} -> "
                     f"{comparison['new_grade']}; identity change: **{comparison['verdict']}**"
                     f"{interval}.")
        lines += ["", "| metric | then | now | delta |", "|---|---|---|---|"]
        for metric in COMPARED_METRICS:
            lines.append(f"| {metric} | {_f(comparison['old'].get(metric))} | {_f(s.get(metric))} "
                         f"| {_signed(comparison['deltas'].get(metric))} |")
        if comparison.get("note"):
            lines += ["", f"Note: {comparison['note']}"]
    lines += ["", "## Warnings", ""]
    lines += [f"- {message}" for message in s["warnings"]] or ["None."]
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML

GRADE_COLORS = {"A": "#1a7f37", "B": "#4c9a2a", "C": "#b08800", "D": "#d4661b", "F": "#c0392b"}

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2328;
 background:#f6f8fa}
h1{margin:0 0 4px;font-size:24px} h2{margin:28px 0 10px;font-size:19px} h3{margin:0;font-size:16px}
.sub{color:#57606a}
.verdict{display:flex;gap:18px;align-items:center;background:#fff;border:1px solid #d0d7de;
 border-radius:8px;padding:14px 18px;margin:14px 0}
.big{font-size:46px;font-weight:700;color:#fff;width:72px;height:72px;border-radius:10px;
 display:flex;align-items:center;justify-content:center;flex:none}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.stat{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;min-width:120px}
.stat b{display:block;font-size:18px}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de}
th,td{padding:5px 10px;border-bottom:1px solid #eaeef2;text-align:right}
th{background:#f0f3f6} td.l,th.l{text-align:left}
.g{display:inline-block;min-width:22px;text-align:center;border-radius:4px;color:#fff;
 font-weight:700}
.bar{display:inline-block;height:8px;background:#0969da;border-radius:4px;vertical-align:middle}
.grid td{text-align:center;vertical-align:top;padding:6px}
.grid img{display:block;margin:0 auto 4px;border-radius:4px}
.config{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 14px;margin:14px 0}
.sheet{display:flex;flex-wrap:wrap;gap:10px;margin-top:10px}
.card{width:164px;font-size:12px}
.card img,.noimg{width:160px;height:160px;object-fit:contain;background:#eaeef2;border-radius:4px;
 border:2px solid #d0d7de;display:block}
.card.ok img{border-color:#1a7f37} .card.bad img{border-color:#c0392b}
.card.noface img{border-color:#8c959f;opacity:.8}
.name{color:#57606a;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.ok-t{color:#1a7f37;font-weight:600} .bad-t{color:#c0392b;font-weight:600}
ul.w{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:10px 28px}
"""


def thumbnail_data_uri(path: Path, size: int = THUMB_SIZE) -> str | None:
    """A base64 JPEG data URI of the image fitted in size x size, or None when it cannot be read."""
    try:
        from PIL import Image
        fse = load_evaluators()[0]
        rgb = fse.load_image(path)[:, :, ::-1]
        image = Image.fromarray(np.ascontiguousarray(rgb))
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=82)
    except Exception:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _grade_badge(grade: str) -> str:
    return f'<span class="g" style="background:{GRADE_COLORS.get(grade, "#57606a")}">{grade}</span>'


def _short_name(path: str, config: str) -> str:
    """The file name without the config it repeats (`..._cfg4.0_seed42.png` -> `seed42.png`)."""
    name = PurePosixPath(path).name
    if config != UNPARSED and name.startswith(config) and len(name) > len(config) + 1:
        return name[len(config):].lstrip("_-. ")
    return name


def _anchor(config: str) -> str:
    return "cfg-" + re.sub(r"[^A-Za-z0-9_.-]", "-", config)


def strength_cfg_grids(configs: list[dict]) -> list[dict]:
    """Strength x CFG grids, one per combination of the other tokens, each with >= 2 cells."""
    groups: dict[tuple, dict] = {}
    for row in configs:
        strength = cfg = None
        rest = []
        for key, value in row["tokens"].items():
            canon = canonical_key(key)
            try:
                number = float(value)
            except ValueError:
                number = None
            if canon == "strength" and strength is None and number is not None:
                strength = (number, f"{key}{value}")
            elif canon == "cfg" and cfg is None and number is not None:
                cfg = (number, f"{key}{value}")
            else:
                rest.append(f"{key}{value}")
        if strength is None or cfg is None:
            continue
        group = groups.setdefault(tuple(rest), {"cells": {}, "strengths": {}, "cfgs": {}})
        group["strengths"][strength[0]] = strength[1]
        group["cfgs"][cfg[0]] = cfg[1]
        cell = group["cells"].get((strength[0], cfg[0]))
        if cell is None or row["score"] > cell["score"]:
            group["cells"][(strength[0], cfg[0])] = row
    grids = []
    for rest, group in sorted(groups.items()):
        if len(group["cells"]) >= 2:
            grids.append({"title": "_".join(rest) or "all", **group})
    return grids


def render_html(scorecard: dict, details: dict, comparison: dict | None, generated_dir: Path, *,
                notes: str | None = None) -> str:
    """A self-contained page: verdict, ranked configs, strength x CFG grids, contact sheets."""
    s = scorecard
    e = html.escape
    thumbs = {image["path"]: thumbnail_data_uri(generated_dir / image["path"])
              for image in details["images"]}
    by_config: dict[str, list[dict]] = {}
    for image in details["images"]:
        by_config.setdefault(image["config"], []).append(image)
    grade = s["overall_grade"]
    out = ["<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Scorecard {e(s['lora_version'])} - grade {grade}</title>",
           f"<style>{CSS}</style></head><body>",
           f"<h1>LoRA scorecard: {e(str(s['lora_version']))}</h1>",
           f"<div class=\"sub\">run <code>{e(s['run_id'])}</code> · {e(s['timestamp'])} · "
           f"{e(str(s['backend']))} / {e(str(s['model']))} · {s['images_evaluated']} images · "
           f"{e(s['generated_dir'])}</div>",
           f"<div class=\"verdict\"><div class=\"big\" style=\"background:{GRADE_COLORS[grade]}\">"
           f"{grade}</div><div><b>{e(verdict_line(s, code=''))}</b>"]
    if comparison and not comparison.get("refused"):
        out.append(f"<br>Against {e(str(comparison['lora_version']))} "
                   f"(<code>{e(str(comparison['run_id']))}</code>): grade "
                   f"{e(str(comparison['old_grade']))}"
                   f" &rarr; {e(str(comparison['new_grade']))}, identity "
                   f"{_signed(comparison['deltas'].get('face_similarity_mean'))}: "
                   f"<b>{e(comparison['verdict'])}</b>")
    if notes:
        out.append(f"<br><span class=\"sub\">Notes: {e(notes)}</span>")
    out.append("</div></div><div class=\"stats\">")
    for label, value in (
        ("identity (mean sim.)", _f(s["face_similarity_mean"])),
        ("threshold", _f(s["threshold"])),
        ("reference ceiling", _f(s["reference_ceiling"])),
        ("skin realism", _f(s["skin_realism_mean"])),
        ("faces found", _pct(s["detection_rate"])),
        ("score", _f(s["score"], 2)),
    ):
        out.append(f"<div class=\"stat\">{e(label)}<b>{e(value)}</b></div>")
    out.append("</div><h2>Configs, ranked</h2><table><tr><th>#</th><th class=\"l\">config</th>"
               "<th>images</th><th>faces</th><th>similarity</th><th>pass</th><th>realism</th>"
               "<th class=\"l\">score</th><th>grade</th></tr>")
    for row in s["configs"]:
        width = int(round(100 * row["score"]))
        out.append(
            f"<tr><td>{row['rank']}</td><td class=\"l\"><a href=\"#{_anchor(row['config'])}\">"
            f"{e(row['config'])}</a></td><td>{row['images']}</td>"
            f"<td>{_pct(row['detection_rate'])}</td>"
            f"<td>{_f(row['similarity_mean'])}</td><td>{_pct(row['pass_rate'])}</td>"
            f"<td>{_f(row['realism_mean'])}</td><td class=\"l\"><span class=\"bar\" "
            f"style=\"width:{width}px\"></span> {row['score']:.2f}</td>"
            f"<td>{_grade_badge(row['grade'])}</td></tr>")
    out.append("</table>")
    for grid in strength_cfg_grids(s["configs"]):
        out.append(f"<h2>Strength x CFG ({e(grid['title'])})</h2>"
                   "<table class=\"grid\"><tr><th></th>")
        cfgs = sorted(grid["cfgs"])
        for cfg in cfgs:
            out.append(f"<th>{e(grid['cfgs'][cfg])}</th>")
        out.append("</tr>")
        for strength in sorted(grid["strengths"]):
            out.append(f"<tr><th>{e(grid['strengths'][strength])}</th>")
            for cfg in cfgs:
                row = grid["cells"].get((strength, cfg))
                if row is None:
                    out.append("<td class=\"sub\">-</td>")
                    continue
                best = max(by_config.get(row["config"], []), default=None,
                           key=lambda image: (image["identity"], image["realism"] or 0.0))
                thumb = thumbs.get(best["path"]) if best else None
                image_html = f"<img src=\"{thumb}\" width=\"120\" alt=\"\">" if thumb else ""
                out.append(f"<td><a href=\"#{_anchor(row['config'])}\">{image_html}</a>"
                           f"{_grade_badge(row['grade'])} {row['score']:.2f}<br>"
                           f"<span class=\"sub\">id {_f(row['similarity_mean'])} · "
                           f"real {_f(row['realism_mean'], 2)}</span></td>")
            out.append("</tr>")
        out.append("</table>")
    out.append("<h2>Contact sheets</h2><div class=\"sub\">Border: green = identity at or above "
               f"the threshold ({_f(s['threshold'])}), red = below, grey = no face found. "
               "Best identity first.</div>")
    threshold = s["threshold"]
    for row in s["configs"]:
        out.append(f"<div class=\"config\" id=\"{_anchor(row['config'])}\"><h3>#{row['rank']} "
                   f"{e(row['config'])} {_grade_badge(row['grade'])}</h3><div class=\"sub\">score "
                   f"{row['score']:.2f} · similarity {_f(row['similarity_mean'])} · realism "
                   f"{_f(row['realism_mean'])} · faces {row['faces_found']}/{row['images']}</div>"
                   "<div class=\"sheet\">")
        members = sorted(by_config.get(row["config"], []),
                         key=lambda image: (-image["identity"], image["path"]))
        for image in members:
            if not image["detected"]:
                state, identity = "noface", "<span class=\"bad-t\">no face found</span>"
            else:
                passed = image["similarity"] is not None and image["similarity"] >= threshold
                state = "ok" if passed else "bad"
                identity = (f"identity <span class=\"{'ok-t' if passed else 'bad-t'}\">"
                            f"{_f(image['similarity'])}</span>")
            thumb = thumbs.get(image["path"])
            picture = (f"<img src=\"{thumb}\" alt=\"{e(image['path'])}\">" if thumb
                       else "<div class=\"noimg\"></div>")
            out.append(f"<div class=\"card {state}\" title=\"{e(image['path'])}\">{picture}"
                       f"<div class=\"name\">{e(_short_name(image['path'], row['config']))}</div>"
                       f"<div>{identity}</div>"
                       f"<div>realism {_f(image['realism'] if image['detected'] else None, 2)}"
                       "</div></div>")
        out.append("</div></div>")
    if s["warnings"]:
        out.append("<h2>Warnings</h2><ul class=\"w\">")
        out += [f"<li>{e(message)}</li>" for message in s["warnings"]]
        out.append("</ul>")
    out.append("<p class=\"sub\">score = identity x (0.4 + 0.6 x relative realism); identity "
               "is 0.5 at the threshold, 1 at the reference ceiling, 0 without a face; "
               "grade A &ge; 0.80, B &ge; 0.65, C &ge; 0.50, D &ge; 0.35; capped at C when mean "
               "similarity is below the threshold, at D when too few faces are found.</p>")
    out.append("</body></html>\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- evaluators

_EVALUATORS = None


def load_evaluators():
    """(face_similarity_eval, skin_realism_eval), imported from this script's folder."""
    global _EVALUATORS
    if _EVALUATORS is None:
        if str(SCRIPT_DIR) not in sys.path:
            sys.path.insert(0, str(SCRIPT_DIR))
        import face_similarity_eval
        import skin_realism_eval
        _EVALUATORS = (face_similarity_eval, skin_realism_eval)
    return _EVALUATORS


def run_evals(generated: Path, reference: Path, *, backend: str, threshold: float | None,
              model_pack: str, device: str, cache_dir: Path | None, show_progress: bool
              ) -> tuple[dict, dict]:
    """Both evals' result dicts; their InputError becomes UsageError."""
    fse, sre = load_evaluators()
    try:
        face = fse.evaluate(generated, reference, threshold=threshold, backend=backend,
                            model_pack=model_pack, device=device, cache_dir=cache_dir,
                            show_progress=show_progress)
        skin = sre.evaluate(generated, reference, show_progress=show_progress)
    except (fse.InputError, sre.InputError) as error:
        raise UsageError(str(error)) from error
    return face, skin


# --------------------------------------------------------------------------- demo sweep

def _package_data(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"package {package} is not installed; install requirements-dev.txt")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise UsageError(f"{package} does not ship {'/'.join(parts)} (expected at {path})")
    return path


ASTRONAUT_FACE = (175, 76, 265, 166)  # left, top, right, bottom in skimage's astronaut.png
T1_FACES = ((450, 295, 557, 402), (724, 367, 832, 474), (870, 67, 999, 196),
            (275, 176, 364, 265))  # four of the six people in insightface's t1.jpg
DEMO_SIZE = 384
DEMO_CONFIGS = {
    "step1500_str0.80_cfg4.0": "same person (expected best)",
    "step1500_str0.80_cfg7.0": "same person, heavily smoothed: plastic skin",
    "step1500_str0.40_cfg4.0": "other people (wrong identity)",
    "step1500_str0.40_cfg7.0": "no face",
}


def _augment_face(image, face_box, rng, *, size: int = DEMO_SIZE):
    """A random crop around a face (scale, shift, flip, small rotation, light and colour jitter)."""
    from PIL import Image, ImageEnhance
    left, top, right, bottom = face_box
    width, height = image.size
    face = right - left
    side = min(face * rng.uniform(1.8, 2.4), width, height)
    cx = (left + right) / 2 + rng.uniform(-0.15, 0.15) * face
    cy = (top + bottom) / 2 + rng.uniform(-0.05, 0.2) * face
    x0 = min(max(0.0, cx - side / 2), width - side)
    y0 = min(max(0.0, cy - side / 2), height - side)
    # Rotate about the crop's centre inside a wider window, then cut: no blank corners.
    margin = side * 0.15
    window = image.crop((int(x0 - margin), int(y0 - margin), int(x0 + side + margin),
                         int(y0 + side + margin)))
    window = window.rotate(rng.uniform(-7, 7), resample=Image.Resampling.BICUBIC)
    crop = window.crop((int(margin), int(margin), int(margin + side), int(margin + side)))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    crop = crop.resize((size, size), Image.Resampling.LANCZOS)
    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.85, 1.15))
    crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.9, 1.1))
    crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.85, 1.15))
    return crop


def _plastic(image):
    """Heavy edge-preserving smoothing: the waxy, poreless skin of an over-cooked LoRA."""
    import cv2
    array = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()
    for _ in range(5):
        array = cv2.bilateralFilter(array, 9, 60, 9)
    array = cv2.GaussianBlur(array, (0, 0), 1.6)
    from PIL import Image
    return Image.fromarray(np.ascontiguousarray(array[:, :, ::-1]))


def build_demo_sweep(out_dir: Path) -> tuple[Path, Path]:
    """Write a 4-config sample sweep and its references under out_dir; returns (sweep, reference).

    Made from package data only: skimage's astronaut (one person: references and the good and
    plastic configs are different random crops of it), insightface's t1.jpg group photo (the
    wrong-identity config) and skimage's coffee, chelsea, rocket and motorcycle (no face).
    """
    from PIL import Image
    astronaut = Image.open(_package_data("skimage", "data", "astronaut.png")).convert("RGB")
    group = Image.open(_package_data("insightface", "data", "images", "t1.jpg")).convert("RGB")
    faceless = [Image.open(_package_data("skimage", "data", name)).convert("RGB")
                for name in ("coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")]
    sweep, reference = out_dir / "sweep", out_dir / "reference"
    sweep.mkdir(parents=True, exist_ok=True)
    reference.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20260211)
    for index in range(5):
        _augment_face(astronaut, ASTRONAUT_FACE, rng).save(reference / f"astronaut_{index + 1}.png")
    good, plastic, wrong, empty = DEMO_CONFIGS
    for index, seed in enumerate((101, 102, 103, 104)):
        _augment_face(astronaut, ASTRONAUT_FACE, rng).save(sweep / f"{good}_seed{seed}.png")
        _plastic(_augment_face(astronaut, ASTRONAUT_FACE, rng)).save(
            sweep / f"{plastic}_seed{seed}.png")
        _augment_face(group, T1_FACES[index], rng).save(sweep / f"{wrong}_seed{seed}.png")
        picture = faceless[index]
        side = min(picture.size) * rng.uniform(0.8, 1.0)
        x0 = rng.uniform(0, picture.size[0] - side)
        y0 = rng.uniform(0, picture.size[1] - side)
        square = picture.crop((int(x0), int(y0), int(x0 + side), int(y0 + side)))
        square.resize((DEMO_SIZE, DEMO_SIZE), Image.Resampling.LANCZOS).save(
            sweep / f"{empty}_seed{seed}.png")
    return sweep, reference


# --------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated", type=Path,
                        help="folder of generated sweep images, searched recursively")
    parser.add_argument("--reference", type=Path, help="folder of the person's training photos")
    parser.add_argument("--lora-version", help="the LoRA version scored, e.g. v3 (required unless "
                        "--demo; default with --demo: demo)")
    parser.add_argument("--run-id",
                        help="unique id of this run (default: <version>_<UTC time>_<4 hex>)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="identity pass threshold (default: the backend's default)")
    parser.add_argument("--backend", choices=("insightface", "dlib"), default=None,
                        help="face model (default: insightface, or dlib with --demo; dlib needs no "
                        "download)")
    parser.add_argument("--model-pack", default="buffalo_l",
                        help="insightface model pack (default: buffalo_l)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache folder for the face eval (default: its own default; "
                        "OUT_DIR/cache with --demo)")
    parser.add_argument("--training-params", type=Path,
                        help="JSON file of training parameters stored with the run (default: none)")
    parser.add_argument("--notes", default="",
                        help="free text stored with the run (default: empty)")
    parser.add_argument("--history", type=Path, default=None,
                        help=f"append-only history (default: {DEFAULT_HISTORY}, beside this "
                        "script)")
    parser.add_argument("--report", type=Path, default=None,
                        help=f"Markdown report (default: {DEFAULT_REPORT}, beside this script)")
    parser.add_argument("--html", type=Path, default=None,
                        help="also write a self-contained HTML contact sheet here (default: none)")
    parser.add_argument("--compare-to", metavar="VERSION_OR_RUN_ID",
                        help="compare with the newest run of this run id or lora version; exit 1 "
                        "on a significant identity regression (default: no gate)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the scorecard JSON to this file (default: stdout only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.add_argument("--demo", type=Path, metavar="OUT_DIR", default=None,
                        help="build the sample sweep under OUT_DIR and score it with the dlib "
                        "backend; history, report, HTML and JSON go under OUT_DIR unless given "
                        "(default: off)")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.demo is not None:
        for flag, value in (("--generated", args.generated), ("--reference", args.reference)):
            if value is not None:
                parser.error(f"--demo builds its own sweep; do not combine it with {flag}")
        if args.demo.exists() and not args.demo.is_dir():
            parser.error(f"--demo {args.demo} exists and is not a folder")
        args.backend = args.backend or "dlib"
        args.lora_version = args.lora_version or "demo"
        args.history = args.history or args.demo / "eval_history.jsonl"
        args.report = args.report or args.demo / "latest_report.md"
        args.html = args.html or args.demo / "report.html"
        args.json = args.json or args.demo / "scorecard.json"
        args.cache_dir = args.cache_dir or args.demo / "cache"
    else:
        missing = [flag for flag, value in (("--generated", args.generated),
                                            ("--reference", args.reference),
                                            ("--lora-version", args.lora_version)) if not value]
        if missing:
            parser.error(f"{', '.join(missing)} required (or --demo OUT_DIR for the sample sweep)")
        for flag, folder in (("--generated", args.generated), ("--reference", args.reference)):
            if not folder.is_dir():
                parser.error(f"{flag} {folder} is not a folder")
    args.backend = args.backend or "insightface"
    if not str(args.lora_version).strip():
        parser.error("--lora-version must not be empty")
    if args.run_id is not None and not RUN_ID_RE.match(args.run_id):
        parser.error(f"--run-id {args.run_id!r}: use letters, digits, '.', '_' and '-' only "
                     "(it names a file), up to 128 characters")
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold {args.threshold} is not a cosine similarity in [-1, 1]")
    args.history = (args.history or DEFAULT_HISTORY).resolve()
    args.report = (args.report or DEFAULT_REPORT).resolve()


def default_run_id(lora_version: str, now: dt.datetime) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", lora_version).strip("-.") or "run"
    return f"{safe[:64]}_{now.strftime('%Y%m%dT%H%M%SZ')}_{secrets.token_hex(2)}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    training_params = None
    if args.training_params is not None:
        try:
            training_params = json.loads(args.training_params.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            parser.error(f"--training-params {args.training_params}: not a readable JSON file "
                         f"({error})")
    try:
        return _run(args, training_params)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, training_params) -> int:
    history: Path = args.history
    records = read_history(history)
    now = dt.datetime.now(dt.timezone.utc)
    run_id = args.run_id or default_run_id(args.lora_version, now)
    if any(str(record.get("run_id")) == run_id for record in records):
        raise UsageError(f"--run-id {run_id} is already in {history}; choose another id")
    target = None
    if args.compare_to:
        target = find_run(records, args.compare_to)
        if target is None:
            raise UsageError(f"--compare-to {args.compare_to}: no run with that run_id or "
                             f"lora_version in {history}")
        if target.get("backend") != args.backend:
            raise UsageError(f"--compare-to {args.compare_to}: run {target['run_id']} was scored "
                             f"by backend {target.get('backend')}, this run uses {args.backend}; "
                             "similarities of different models are not comparable")
    if args.demo is not None:
        generated, reference = build_demo_sweep(args.demo)
        print(f"demo sweep: {generated} ({len(DEMO_CONFIGS)} configs), references: {reference}",
              file=sys.stderr)
        for name, meaning in DEMO_CONFIGS.items():
            print(f"  {name}: {meaning}", file=sys.stderr)
        if not args.notes:
            args.notes = "demo sweep: " + "; ".join(f"{name} = {meaning}"
                                                    for name, meaning in DEMO_CONFIGS.items())
    else:
        generated, reference = args.generated.resolve(), args.reference.resolve()

    face, skin = run_evals(generated, reference, backend=args.backend, threshold=args.threshold,
                           model_pack=args.model_pack, device=args.device, cache_dir=args.cache_dir,
                           show_progress=not args.no_progress)
    timestamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    scorecard, details = build_scorecard(face, skin, generated_dir=generated,
                                         reference_dir=reference, lora_version=args.lora_version,
                                         run_id=run_id, timestamp=timestamp)
    if target is not None and not same_scorer(scorecard, target):
        raise UsageError(f"--compare-to {args.compare_to}: run {target['run_id']} was scored by "
                         f"{target.get('backend')}/{target.get('model')}, this run by "
                         f"{scorecard['backend']}/{scorecard['model']}; refusing to compare")

    comparison = None
    previous = target
    if previous is None:  # the report still shows the newest run of another version
        earlier = [record for record in records
                   if str(record.get("lora_version")) != str(args.lora_version)]
        previous = earlier[-1] if earlier else None
    if previous is not None:
        if same_scorer(scorecard, previous):
            comparison = compare_runs(scorecard, details, previous, load_details(history, previous))
        else:
            comparison = {"refused": "The newest run of another version "
                          f"({previous.get('run_id')}) was scored by {previous.get('backend')}/"
                          f"{previous.get('model')}; not comparable."}
    scorecard["comparison"] = comparison

    sidecar = sidecar_path(history, run_id)
    record = dict(scorecard)
    record["training_params"] = training_params
    record["notes"] = args.notes
    record["eval_scores"] = {"face_similarity": face.get("summary"),
                             "skin_realism": skin.get("summary")}
    record["details"] = sidecar.relative_to(history.parent).as_posix()
    record = clean_json(record)
    append_history(history, record, sidecar,
                   json.dumps(clean_json(details), indent=1, ensure_ascii=False) + "\n")
    write_atomic(args.report, render_report(record, comparison, notes=args.notes,
                                            training_params=training_params))
    if args.html is not None:
        write_atomic(args.html, render_html(record, details, comparison, generated,
                                            notes=args.notes))
    text = json.dumps(record, indent=2, ensure_ascii=False)
    if args.json is not None:
        write_atomic(args.json, text + "\n")
    print(text)
    for message in record["warnings"]:
        warn(message)
    written = [str(history), str(args.report)] + [str(p) for p in (args.html, args.json) if p]
    print(f"grade {record['overall_grade']}, best {record['best_config']}, worst "
          f"{record['worst_config']}; wrote {', '.join(written)}", file=sys.stderr)
    if comparison and comparison.get("significant_regression") and target is not None:
        print(f"REGRESSION: identity fell against {target['run_id']} beyond noise "
              f"(interval {comparison['interval'][0]:+.3f} .. {comparison['interval'][1]:+.3f})",
              file=sys.stderr)
        return 1
    if comparison and target is not None and comparison["verdict"].startswith("unknown"):
        # A gate that cannot decide must not read as a pass.
        print(f"error: --compare-to {args.compare_to}: cannot decide against {target['run_id']}: "
              f"{comparison['verdict']}; this run was recorded, the comparison was not made",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
