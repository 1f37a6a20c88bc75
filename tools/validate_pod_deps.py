"""Check in seconds whether this pod can run our jobs: both environments, known traps, GPU, VRAM.

The pod has two Python environments (README.md, "On the pod"): the eval/caption environment
(requirements-pod.txt: evals/, auto_caption, sweep generation), which runs this script, and the
training environment, kohya sd-scripts' own venv (requirements-training.txt; its pins conflict
with the eval ones). Upload this one file to the pod and run it with the eval environment's Python:
    python3 /workspace/validate_pod_deps.py
    python3 /workspace/validate_pod_deps.py --json /workspace/pod_deps.json
    python3 /workspace/validate_pod_deps.py --sd-scripts /workspace/sd-scripts \
        --training-python /workspace/sd-scripts/venv/bin/python --locks /workspace/pistachio

The training environment: the sd-scripts checkout at --sd-scripts (default /workspace/sd-scripts),
its commit (read from .git, no git needed) against the one the project was checked against
(SD_SCRIPTS_COMMIT), and its venv, found as DIR/venv or DIR/.venv (or --training-python): every
pin of requirements-training.txt (the unpinned ones at their lock versions) installed, at its
version and really importing in THAT interpreter, xformers against its torch, torch with CUDA.
Each environment gets its own problems and its own ONE fix line; the training one installs the
lock (requirements-training-py3XX.lock, looked up in --locks, this script's folder or its parent).

Every third-party package that tools/*.py and evals/*.py import, and every pin of
requirements-pod.txt, is carried inside this file (MANIFEST). For each one it reports whether it is
installed, its version against the pin, and whether it really imports (each import runs in its own
subprocess with a timeout, so a crashing import cannot take the check down). Then the known traps:
onnxruntime and onnxruntime-gpu installed together, the providers an onnxruntime session really
gets, xformers built for another torch or CUDA, torch without CUDA on a GPU machine. It prints the
GPU (name, total and free VRAM, CUDA version), a VRAM estimate for the 24 GB card, and, for each
environment, ONE shell line that fixes everything it can fix (or says that nothing needs fixing).

Check the live project tree instead of the embedded manifest (scans tools/*.py and evals/*.py and
reads DIR/requirements-pod.txt); print the manifest literal to paste into this file after a change:
    python3 tools/validate_pod_deps.py --project-root .
    python3 tools/validate_pod_deps.py --project-root . --print-manifest

Tiny CPU run on a development machine (no GPU expected there; --skip-training checks the eval
environment only):
    python3 tools/validate_pod_deps.py --allow-no-gpu --import-timeout 60 --skip-training

Exit 0 when everything is in order, 1 when something needs fixing (the problems and the fix line
are on stdout), 2 on a usage or input error. Needs Python 3.10+ and nothing but the standard
library (`packaging` is used for version comparison when present).
"""
from __future__ import annotations

import argparse
import contextlib
import ast
import concurrent.futures
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from pathlib import Path

try:  # optional: exact PEP 440 semantics when present, a small fallback otherwise
    from packaging.requirements import Requirement as _Requirement
    from packaging.specifiers import SpecifierSet as _SpecifierSet
    from packaging.version import InvalidVersion as _InvalidVersion
except ImportError:  # pragma: no cover - exercised by running with a bare Python
    _Requirement = _SpecifierSet = None
    _InvalidVersion = ValueError

# --------------------------------------------------------------------------------------------
# Manifest. Keep in sync with the tree: tests/test_validate_pod_deps.py compares it with an AST
# scan of tools/*.py and evals/*.py and with requirements-pod.txt. Regenerate with
#   python3 tools/validate_pod_deps.py --project-root . --print-manifest
# --------------------------------------------------------------------------------------------

# requirements-pod.txt, verbatim: distribution -> pinned version.
REQUIREMENTS_POD = {
    "torch": "2.9.0",
    "torchvision": "0.24.0",
    "xformers": "0.0.33.post1",
    "onnxruntime-gpu": "1.23.2",
    "insightface": "2.1",
    "onnx": "1.19.1",
    "numpy": "2.2.6",
    "opencv-python": "4.12.0.88",
    "Pillow": "11.3.0",
    "scikit-image": "0.25.2",
    "transformers": "4.57.1",
    "accelerate": "1.11.0",
    "bitsandbytes": "0.48.2",
    "prodigyopt": "1.1.2",
    "packaging": "25.0",
    "filelock": "3.20.0",
    "tqdm": "4.67.1",
    "diffusers": "0.39.0",
    "peft": "0.21.2",
    "huggingface-hub": "0.36.2",
}

# import name -> (distribution, pinned version or None). Every third-party import of
# tools/*.py and evals/*.py, plus an import name for every pin of requirements-pod.txt.
# None: deliberately not in requirements-pod.txt (see UNPINNED_OK).
MANIFEST = {
    "accelerate": ("accelerate", "1.11.0"),
    "bitsandbytes": ("bitsandbytes", "0.48.2"),
    "cv2": ("opencv-python", "4.12.0.88"),
    "diffusers": ("diffusers", "0.39.0"),
    "detect_secrets": ("detect-secrets", None),
    "dlib": ("dlib-bin", None),
    "filelock": ("filelock", "3.20.0"),
    "huggingface_hub": ("huggingface-hub", "0.36.2"),
    "insightface": ("insightface", "2.1"),
    "numpy": ("numpy", "2.2.6"),
    "onnx": ("onnx", "1.19.1"),
    "onnxruntime": ("onnxruntime-gpu", "1.23.2"),
    "packaging": ("packaging", "25.0"),
    "peft": ("peft", "0.21.2"),
    "PIL": ("Pillow", "11.3.0"),
    "prodigyopt": ("prodigyopt", "1.1.2"),
    "skimage": ("scikit-image", "0.25.2"),
    "tomli": ("tomli", None),
    "torch": ("torch", "2.9.0"),
    "torchvision": ("torchvision", "0.24.0"),
    "tqdm": ("tqdm", "4.67.1"),
    "transformers": ("transformers", "4.57.1"),
    "xformers": ("xformers", "0.0.33.post1"),
}

# Imports that are deliberately not pinned for the pod: checked and reported, never a failure.
UNPINNED_OK = {
    "detect_secrets": "secret scan of tools/run_full_cycle.py's commit, which runs on the machine that "
                      "runs the cycle (Windows), not on the pod; pinned in requirements-dev.txt",
    "dlib": "offline backend of evals/face_similarity_eval.py (--backend dlib), used by tests/CI",
    "face_recognition_models": "dlib's model files for the offline backend, used by tests/CI",
    "tomli": "TOML reader of tools/retrain_lora_v3.py --config on Python 3.10 (3.11+ has tomllib)",
}

# Import name -> PyPI distribution where the two differ (or where several distributions exist).
KNOWN_DISTRIBUTIONS = {
    "PIL": "Pillow",
    "cv2": "opencv-python",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "PyYAML",
    "dlib": "dlib-bin",
    "detect_secrets": "detect-secrets",
    "face_recognition_models": "face-recognition-models",
    "onnxruntime": "onnxruntime-gpu",
    "huggingface_hub": "huggingface-hub",
    "google": "protobuf",
    "bs4": "beautifulsoup4",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    "tomli": "tomli",
}
# Distributions that legitimately provide the same import as the manifest's one.
ACCEPTED_ALTERNATIVES = {"dlib-bin": ("dlib",)}
# Distributions that ship the same import folder and overwrite each other when both installed.
CONFLICT_NOTES = {
    "onnxruntime": "they share one onnxruntime/ folder and the session silently gets "
                   "CPUExecutionProvider only",
    "cv2": "they overwrite each other's cv2/ folder",
}
# --------------------------------------------------------------------------------------------
# The training environment: kohya sd-scripts in a venv of its own (requirements-training.txt).
# Its pins: requirements-training.txt's, and for the lines sd-scripts leaves unpinned (bitsandbytes,
# tensorboard, numpy) the versions the locks requirements-training-py310/311.lock chose.
# tests/test_validate_pod_deps.py checks these against requirements-training.txt and the locks.
# --------------------------------------------------------------------------------------------
SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"  # tools/retrain_lora_v3.py's
SD_SCRIPTS_URL = "https://github.com/kohya-ss/sd-scripts"
DEFAULT_SD_SCRIPTS = "/workspace/sd-scripts"
REQUIREMENTS_TRAINING = {
    "torch": "2.6.0",
    "torchvision": "0.21.0",
    "xformers": "0.0.29.post3",
    "accelerate": "1.6.0",
    "transformers": "4.54.1",
    "diffusers": "0.32.1",
    "ftfy": "6.3.1",
    "opencv-python": "4.10.0.84",
    "einops": "0.7.0",
    "bitsandbytes": "0.50.2",
    "lion-pytorch": "0.2.3",
    "schedulefree": "1.4",
    "pytorch-optimizer": "3.9.0",
    "prodigy-plus-schedule-free": "1.9.2",
    "prodigyopt": "1.1.2",
    "tensorboard": "2.21.0",
    "safetensors": "0.4.5",
    "toml": "0.10.2",
    "voluptuous": "0.15.2",
    "huggingface-hub": "0.34.3",
    "imagesize": "1.4.1",
    "numpy": "2.4.6",
    "rich": "14.1.0",
    "sentencepiece": "0.2.1",
}
REQUIREMENTS_TRAINING_PY310 = {"numpy": "2.2.6"}  # where the cp310 lock differs
TRAINING_IMPORTS = {
    "torch": "torch", "torchvision": "torchvision", "xformers": "xformers", "accelerate": "accelerate",
    "transformers": "transformers", "diffusers": "diffusers", "ftfy": "ftfy", "cv2": "opencv-python",
    "einops": "einops", "bitsandbytes": "bitsandbytes", "lion_pytorch": "lion-pytorch",
    "schedulefree": "schedulefree", "pytorch_optimizer": "pytorch-optimizer",
    "prodigyplus": "prodigy-plus-schedule-free", "prodigyopt": "prodigyopt",
    "tensorboard": "tensorboard", "safetensors": "safetensors", "toml": "toml",
    "voluptuous": "voluptuous", "huggingface_hub": "huggingface-hub", "imagesize": "imagesize",
    "numpy": "numpy", "rich": "rich", "sentencepiece": "sentencepiece",
}
TRAINING_VENVS = ("venv", ".venv")  # where README.md puts the sd-scripts venv, inside the checkout

PROJECT_DIRS = ("tools", "evals")
PROJECT_PACKAGES = {"tools", "evals", "tests", "conftest"}

MARK = "@@validate_pod_deps@@"

# A minimal ONNX model (opset 13, IR 8): y = Identity(x), x and y float[1]. Built with
# onnx.helper.make_model(...).SerializeToString(); the test suite rebuilds and checks it.
IDENTITY_ONNX = (
    b'\x08\x08\x12\x00:>\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x08identityZ\x0f\n\x01x\x12\n\n'
    b'\x08\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B'
    b'\x04\n\x00\x10\r'
)

# --------------------------------------------------------------------------------------------
# VRAM estimate. Parameter counts and their sources:
# - BLIP-2 opt-2.7b (Salesforce/blip2-opt-2.7b): 3,744,679,936 parameters, counted with
#   transformers 4.57.1 Blip2ForConditionalGeneration built on the meta device from that
#   checkpoint's config (ViT-g/14 1408x39, Q-Former 768x12, OPT-2.7B 2560x32, 32 query tokens):
#   vision tower 985,952,256 (984,023,040 in nn.Linear weights), Q-Former 105,137,664 + query
#   tokens 24,576 (transformers keeps both in fp32: Blip2 `_keep_in_fp32_modules`), projection
#   1,968,640 (1,966,080 Linear), OPT-2.7B 2,651,596,800 (2,516,582,400 in Linear weights other
#   than the lm_head, which is tied to the 128,696,320-parameter token embedding).
#   The BLIP-2 paper (Li et al. 2023, arXiv:2301.12597) gives ViT-g ~1B and OPT-2.7B.
# - SDXL base U-Net: 2,567,463,684 parameters (sum of p.numel() of diffusers
#   UNet2DConditionModel for stabilityai/stable-diffusion-xl-base-1.0; the SDXL paper, Podell et
#   al. 2023, arXiv:2307.01952, Table 1: 2.6B). Its text encoders, CLIP ViT-L 123,060,480 and
#   OpenCLIP ViT-bigG 694,659,840 (transformers CLIPTextModel / CLIPTextModelWithProjection,
#   counted on the meta device), are only loaded to cache their outputs.
# - FLUX.1-dev transformer: 11,901,408,320 parameters (diffusers FluxTransformer2DModel: 19
#   double-stream + 38 single-stream blocks, hidden 3072, MLP 12288; counted from those shapes,
#   equal to the published count; Black Forest Labs: "12 billion parameter"). T5-XXL v1.1
#   encoder 4,762,310,656 and CLIP ViT-L text 123,060,480 (transformers, meta device) are only
#   loaded to cache their outputs.
# - LoRA sizes: r * (in + out) per adapted nn.Linear, r = 32 (network_dim of the v3 recipe in
#   tools/retrain_lora_v3.py). SDXL, kohya networks.lora (U-Net only): every Linear inside the 11
#   Transformer2DModel blocks (proj_in/out) and their 70 BasicTransformerBlocks (attn1 q/k/v/out,
#   attn2 q/out and k/v from the 2048-wide text context, GEGLU ff d->8d and 4d->d), 10 blocks at
#   640 channels and 60 at 1280: 32 * 2,659,840 = 85,114,880 (a rank-32 SDXL LoRA saved in fp16
#   is ~170 MB). Flux, kohya networks.lora_flux: every Linear of the 19 double and 38 single
#   blocks in the BFL layout (fused qkv, proj, MLP, modulation; single blocks' linear1
#   3072->21504, linear2 15360->3072, modulation): 32 * 4,786,176 = 153,157,632.
# - Optimizer: Prodigy (prodigyopt) keeps exp_avg, exp_avg_sq, s and p0 per parameter, fp32:
#   16 B; plus the fp32 LoRA weight (4 B) and its gradient (4 B) = 24 B per LoRA parameter.
# Assumptions (marked "assumed" in the table): activation memory and the per-process CUDA
# context + allocator overhead are estimates, not counts.
# --------------------------------------------------------------------------------------------
GIB = 1024 ** 3
CARD_NAME = "RTX 4090"
CARD_BYTES = 24564 * 1024 ** 2  # what nvidia-smi reports as memory.total on an RTX 4090
CONTEXT_BYTES = 1.0 * GIB       # assumed: CUDA context + cuBLAS/cuDNN workspaces + fragmentation
TIGHT_MARGIN_GIB = 1.5          # below this margin a fit is called tight

BLIP2_FP32_PARAMS = 105_137_664 + 24_576              # Q-Former + query tokens, kept fp32
BLIP2_OTHER_PARAMS = 3_744_679_936 - BLIP2_FP32_PARAMS  # 3,639,517,696
BLIP2_INT8_LINEAR = 984_023_040 + 1_966_080 + 2_516_582_400  # 3,502,571,520
SDXL_UNET_PARAMS = 2_567_463_684
LORA_RANK = 32  # tools/retrain_lora_v3.py V3_RECIPE["common"]["network_dim"]
SDXL_LORA_PARAMS = LORA_RANK * 2_659_840
FLUX_TRANSFORMER_PARAMS = 11_901_408_320
FLUX_LORA_PARAMS = LORA_RANK * 4_786_176
LORA_BYTES_PER_PARAM = 24


def _vram_jobs() -> list[dict]:
    """The jobs of the estimate, each a list of (component, bytes, basis)."""
    blip_act = ("activations + KV cache", 0.5 * GIB,
                "assumed: batch 1, 224x224 image (257 vision tokens), 32 queries + <=77 tokens")
    ctx = ("CUDA context + allocator", CONTEXT_BYTES, "assumed, one per process")
    return [
        {"key": "blip2_fp16", "job": "BLIP-2 opt-2.7b fp16 (captions)", "components": [
            ("weights", BLIP2_OTHER_PARAMS * 2 + BLIP2_FP32_PARAMS * 4,
             f"{BLIP2_OTHER_PARAMS:,} params x 2 B + Q-Former {BLIP2_FP32_PARAMS:,} x 4 B (fp32)"),
            blip_act, ctx]},
        {"key": "blip2_int8", "job": "BLIP-2 opt-2.7b 8-bit (captions)", "components": [
            ("int8 Linear weights", BLIP2_INT8_LINEAR * 1,
             f"{BLIP2_INT8_LINEAR:,} params x 1 B (bitsandbytes LLM.int8, all Linear but lm_head)"),
            ("fp16 rest + fp32 Q-Former",
             (BLIP2_OTHER_PARAMS - BLIP2_INT8_LINEAR) * 2 + BLIP2_FP32_PARAMS * 4,
             f"{BLIP2_OTHER_PARAMS - BLIP2_INT8_LINEAR:,} x 2 B (embeddings, norms, biases)"
             f" + {BLIP2_FP32_PARAMS:,} x 4 B"),
            ("int8 scales + outlier buffers", 0.3 * GIB, "assumed"),
            blip_act, ctx]},
        {"key": "sdxl_lora", "job": "SDXL LoRA, v3 recipe (train)", "components": [
            ("U-Net bf16, frozen", SDXL_UNET_PARAMS * 2, f"{SDXL_UNET_PARAMS:,} params x 2 B"),
            ("text encoders, VAE", 0,
             "not loaded: latents and text-encoder outputs cached beforehand"),
            ("LoRA + grads + Prodigy", SDXL_LORA_PARAMS * LORA_BYTES_PER_PARAM,
             f"rank {LORA_RANK} LoRA {SDXL_LORA_PARAMS:,} params x 24 B (fp32 weight, grad, "
             "4 Prodigy states)"),
            ("activations", 3.0 * GIB,
             "assumed: batch 1, 1024x1024 (128x128 latent), gradient checkpointing, xformers"),
            ctx]},
        {"key": "flux_lora", "job": "Flux.1-dev LoRA, fp8 base (train)", "components": [
            ("transformer fp8, frozen", FLUX_TRANSFORMER_PARAMS * 1,
             f"{FLUX_TRANSFORMER_PARAMS:,} params x 1 B (float8_e4m3fn)"),
            ("T5-XXL, CLIP-L, VAE", 0,
             "not loaded: latents and text-encoder outputs cached beforehand"),
            ("LoRA + grads + Prodigy", FLUX_LORA_PARAMS * LORA_BYTES_PER_PARAM,
             f"rank {LORA_RANK} LoRA {FLUX_LORA_PARAMS:,} params x 24 B (fp32 weight, grad, "
             "4 Prodigy states)"),
            ("activations", 4.0 * GIB,
             "assumed: batch 1, 1024x1024 (4096+512 tokens), gradient checkpointing, SDPA, bf16"),
            ctx]},
    ]


# Pairs that could share the card: a captioning job beside a training job.
CONCURRENT_PAIRS = (("blip2_fp16", "sdxl_lora"), ("blip2_int8", "sdxl_lora"),
                    ("blip2_fp16", "flux_lora"), ("blip2_int8", "flux_lora"))


def _fit(total_bytes: float, budget_bytes: float | None) -> dict | None:
    if budget_bytes is None:
        return None
    margin = (budget_bytes - total_bytes) / GIB
    verdict = "no" if margin < 0 else ("tight" if margin < TIGHT_MARGIN_GIB else "yes")
    return {"fits": verdict, "margin_gib": round(margin, 2)}


def vram_estimate(free_bytes: float | None = None) -> dict:
    """Estimated peak VRAM per job and the sequential/concurrent verdicts for the 24 GB card.

    free_bytes: the free memory of the GPU actually present, compared as a second budget.
    """
    jobs = []
    for job in _vram_jobs():
        total = sum(size for _, size, _ in job["components"])
        jobs.append({
            "key": job["key"], "job": job["job"],
            "components": [{"component": name, "gib": round(size / GIB, 2), "basis": basis}
                           for name, size, basis in job["components"]],
            "total_gib": round(total / GIB, 2),
            "card": _fit(total, CARD_BYTES), "free_now": _fit(total, free_bytes),
        })
    by_key = {job["key"]: job for job in jobs}
    pairs = []
    for first, second in CONCURRENT_PAIRS:
        total = (by_key[first]["total_gib"] + by_key[second]["total_gib"]) * GIB
        pairs.append({"jobs": [by_key[first]["job"], by_key[second]["job"]],
                      "total_gib": round(total / GIB, 2),
                      "card": _fit(total, CARD_BYTES), "free_now": _fit(total, free_bytes)})
    peak = max(job["total_gib"] for job in jobs) * GIB
    return {"card": CARD_NAME, "card_gib": round(CARD_BYTES / GIB, 2),
            "free_now_gib": None if free_bytes is None else round(free_bytes / GIB, 2),
            "jobs": jobs, "sequential": {"peak_gib": round(peak / GIB, 2),
                                         "card": _fit(peak, CARD_BYTES),
                                         "free_now": _fit(peak, free_bytes)},
            "concurrent": pairs}


# --------------------------------------------------------------------------------------------
# Versions and requirements
# --------------------------------------------------------------------------------------------
def normalize_name(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


_VERSION_RE = re.compile(
    r"^\s*v?(?:(\d+)!)?(\d+(?:\.\d+)*)"
    r"(?:[-_.]?(a|b|c|rc|alpha|beta|pre|preview)[-_.]?(\d*))?"
    r"(?:-(\d+)|[-_.]?(post|rev|r)[-_.]?(\d*))?"
    r"(?:[-_.]?(dev)[-_.]?(\d*))?"
    r"(?:\+([a-z0-9]+(?:[-_.][a-z0-9]+)*))?\s*$", re.IGNORECASE)
_PRE_NORMAL = {"a": "a", "alpha": "a", "b": "b", "beta": "b", "c": "rc", "rc": "rc",
               "pre": "rc", "preview": "rc"}


def _fallback_key(version: str) -> tuple | None:
    """Sort key for a PEP 440 version without `packaging` (None when it does not parse)."""
    match = _VERSION_RE.match(version)
    if not match:
        return None
    epoch, release, pre_l, pre_n, post_implicit, post_l, post_n, dev_l, dev_n, local = match.groups()
    parts = [int(p) for p in release.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    pre_order = {"a": 0, "b": 1, "rc": 2}
    if pre_l:
        pre = (pre_order[_PRE_NORMAL[pre_l.lower()]], int(pre_n or 0))
    elif dev_l and not (post_l or post_implicit):
        pre = (-1, 0)  # 1.0.dev1 sorts before 1.0a1
    else:
        pre = (3, 0)
    if post_implicit:
        post = int(post_implicit)
    elif post_l:
        post = int(post_n or 0)
    else:
        post = -1
    dev = int(dev_n or 0) if dev_l else float("inf")
    local_key = tuple(local.lower().replace("-", ".").replace("_", ".").split(".")) if local else ()
    return (int(epoch or 0), tuple(parts), pre, post, dev), local_key


def _compare(installed: str, op: str, wanted: str) -> bool | None:
    """Fallback for one `installed OP wanted` clause; None when a version does not parse."""
    have, want = _fallback_key(installed), _fallback_key(wanted)
    if have is None or want is None:
        return installed.strip() == wanted.strip() if op == "==" else None
    (have_public, have_local), (want_public, want_local) = have, want
    if op in ("==", "!="):
        if wanted.strip().endswith(".*"):
            return None
        equal = have_public == want_public and (not want_local or have_local == want_local)
        return equal if op == "==" else not equal
    if op == ">=":
        return have_public >= want_public
    if op == "<=":
        return have_public <= want_public
    same_release = have_public[:2] == want_public[:2]
    if op == ">":
        # PEP 440: >V excludes post-releases (and local versions) of V unless V is one itself.
        if same_release and want_public[3] == -1 and (have_public[3] >= 0 or have_local):
            return False
        return have_public > want_public
    if op == "<":
        # PEP 440: <V excludes pre-releases of V unless V is one itself.
        if same_release and want_public[2] == (3, 0) and want_public[4] == float("inf") \
                and (have_public[2] != (3, 0) or have_public[4] != float("inf")):
            return False
        return have_public < want_public
    if op == "~=":
        release = want_public[1]
        prefix_len = max(1, len(wanted.split("+")[0].split(".")) - 1)
        return have_public >= want_public and have_public[1][:prefix_len] == release[:prefix_len]
    return None


def version_satisfies(installed: str, specifier: str) -> bool | None:
    """Does `installed` satisfy a specifier such as '==2.9.0' or '>=2.8,<3'? None = unknown.

    Local labels follow PEP 440: '2.9.0+cu128' satisfies '==2.9.0'.
    """
    if _SpecifierSet is not None:
        try:
            return _SpecifierSet(specifier).contains(installed, prereleases=True)
        except (_InvalidVersion, ValueError):
            pass
    results = []
    for clause in specifier.split(","):
        clause = clause.strip()
        if not clause:
            continue
        match = re.match(r"^(===|==|!=|~=|>=|<=|>|<)\s*(\S+)$", clause)
        if not match:
            return None
        op, wanted = match.groups()
        results.append(installed.strip() == wanted if op == "===" else _compare(installed, op, wanted))
    if any(result is False for result in results):
        return False
    if any(result is None for result in results) or not results:
        return None
    return True


def pin_matches(installed: str | None, pin: str | None) -> bool | None:
    if installed is None or pin is None:
        return None
    return version_satisfies(installed, "==" + pin)


def parse_requirements(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file -> {name: version}; other lines are skipped."""
    pins = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*(?:;.*)?$",
                         line)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def _requirement_on(requirement: str) -> tuple[str, str] | None:
    """('torch', '==2.9.0') from a Requires-Dist line; None for extras or unevaluable markers."""
    if _Requirement is not None:
        try:
            req = _Requirement(requirement)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                return None
            return req.name, str(req.specifier)
        except Exception:  # noqa: BLE001 - malformed metadata must not stop the check
            return None
    if ";" in requirement:
        return None  # markers cannot be evaluated without packaging: skip rather than guess
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*\(?([^)]*)\)?\s*$",
                     requirement)
    if not match:
        return None
    return match.group(1), match.group(2).replace(" ", "")


# --------------------------------------------------------------------------------------------
# The live tree: AST scan and manifest
# --------------------------------------------------------------------------------------------
def _stdlib_names() -> set[str]:
    names = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
    names.add("__future__")
    return names


def _imports_of(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.add(node.args[0].value)
    return {name.split(".")[0] for name in found if name and not name.startswith(".")}


def scan_imports(project_root: Path, errors: list[str] | None = None) -> dict[str, set[str]]:
    """Third-party top-level imports of tools/*.py and evals/*.py -> the files (posix, relative).

    Excludes the standard library (sys.stdlib_module_names) and the project's own modules (any
    tools/ or evals/ file stem, and the tools/evals/tests packages). Files that do not parse are
    skipped and described in `errors` when a list is given; without one, SyntaxError is raised.
    """
    project_root = Path(project_root)
    files = sorted(p for folder in PROJECT_DIRS for p in (project_root / folder).glob("*.py"))
    local = {p.stem for p in files} | PROJECT_PACKAGES
    stdlib = _stdlib_names()
    result: dict[str, set[str]] = {}
    for path in files:
        relative = path.relative_to(project_root).as_posix()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
            if errors is None:
                raise
            errors.append(f"{relative}: cannot parse ({type(exc).__name__}: {exc})")
            continue
        for name in _imports_of(tree):
            if name in stdlib or name in local:
                continue
            result.setdefault(name, set()).add(relative)
    return result


def _import_name_for(distribution: str) -> str:
    for import_name, dist in KNOWN_DISTRIBUTIONS.items():
        if normalize_name(dist) == normalize_name(distribution):
            return import_name
    return distribution.replace("-", "_").replace(".", "_")


def build_manifest(imports, pins: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """MANIFEST from scanned import names and requirements-pod pins (no environment lookups)."""
    by_normal = {normalize_name(name): (name, version) for name, version in pins.items()}
    manifest: dict[str, tuple[str, str | None]] = {}
    for import_name in imports:
        dist = KNOWN_DISTRIBUTIONS.get(import_name, import_name)
        dist, pin = by_normal.get(normalize_name(dist), (dist, None))
        manifest[import_name] = (dist, pin)
    covered = {normalize_name(dist) for dist, _ in manifest.values()}
    for name, version in pins.items():
        if normalize_name(name) not in covered:
            manifest[_import_name_for(name)] = (name, version)
    return dict(sorted(manifest.items(), key=lambda item: item[0].lower()))


def format_manifest(manifest: dict) -> str:
    lines = ["MANIFEST = {"]
    for import_name, (dist, pin) in manifest.items():
        lines.append(f"    {import_name!r}: ({dist!r}, {pin!r}),".replace("'", '"'))
    lines.append("}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Probes: each runs in a subprocess of this Python, with a timeout
# --------------------------------------------------------------------------------------------
IMPORT_PROBE = r"""
import importlib, json, sys, warnings
r = {}
try:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(sys.argv[1])
    r["ok"] = True
    r["version"] = str(getattr(module, "__version__", "") or "")
    r["file"] = str(getattr(module, "__file__", "") or "")
except BaseException as exc:
    lines = str(exc).strip().splitlines()
    r["ok"] = False
    r["error"] = type(exc).__name__ + (": " + lines[0] if lines else "")
print(MARK + json.dumps(r))
"""

TORCH_PROBE = r"""
import json, warnings
r = {}
import torch
r["version"] = torch.__version__
r["cuda_build"] = torch.version.cuda
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        r["available"] = bool(torch.cuda.is_available())
    except Exception as exc:
        r["available"] = False
        r["cuda_error"] = (type(exc).__name__ + ": " + (str(exc).splitlines() or [""])[0])
if caught and not r.get("cuda_error"):
    r["cuda_warning"] = (str(caught[0].message).strip().splitlines() or [""])[0]
r["gpus"] = []
if r["available"]:
    try:
        r["cudnn"] = torch.backends.cudnn.version()
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            r["gpus"].append({"name": props.name, "total_bytes": int(total), "free_bytes": int(free),
                              "capability": "%d.%d" % (props.major, props.minor)})
    except Exception as exc:
        r["cuda_error"] = type(exc).__name__ + ": " + (str(exc).splitlines() or [""])[0]
print(MARK + json.dumps(r))
"""

ORT_PROBE = r"""
import json, sys
r = {}
import onnxruntime as ort
import numpy as np
r["version"] = ort.__version__
r["device"] = ort.get_device()
r["available"] = list(ort.get_available_providers())
model = MODEL
wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
def session_providers():
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, sess_options=options, providers=wanted)
    out = session.run(None, {"x": np.array([3.0], dtype=np.float32)})[0]
    assert float(out[0]) == 3.0, "identity model returned " + repr(out)
    return list(session.get_providers())
try:
    r["session"] = session_providers()
except Exception as exc:
    r["session_error"] = type(exc).__name__ + ": " + (str(exc).strip().splitlines() or [""])[0]
if "CUDAExecutionProvider" in r["available"] and "CUDAExecutionProvider" not in r.get("session", []) \
        and hasattr(ort, "preload_dlls"):
    try:
        ort.preload_dlls()
        r["session_after_preload"] = session_providers()
    except Exception as exc:
        r["preload_error"] = type(exc).__name__ + ": " + (str(exc).strip().splitlines() or [""])[0]
print(MARK + json.dumps(r))
"""

XFORMERS_PROBE = r"""
import json
r = {}
import torch
r["torch"] = torch.__version__
import xformers
r["version"] = getattr(xformers, "__version__", "")
try:
    from xformers import _cpp_lib
    meta = getattr(_cpp_lib, "_build_metadata", None)
    if meta is not None:
        r["built_for_torch"] = getattr(meta, "torch_version", None)
        r["built_for_cuda"] = getattr(meta, "cuda_version", None)
except Exception:
    pass
try:
    import xformers.ops as xops
    r["ops"] = True
except Exception as exc:
    r["ops"] = False
    r["ops_error"] = type(exc).__name__ + ": " + (str(exc).strip().splitlines() or [""])[0]
if r.get("ops") and torch.cuda.is_available():
    try:
        q = torch.randn(1, 16, 2, 64, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
        torch.cuda.synchronize()
        r["attention"] = "ok"
    except Exception as exc:
        r["attention"] = type(exc).__name__ + ": " + (str(exc).strip().splitlines() or [""])[0]
print(MARK + json.dumps(r))
"""


def _first_line(text: str, pattern: str | None = None) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and (pattern is None or re.search(pattern, line, re.IGNORECASE)):
            return line[:300]
    return ""


def run_probe(code: str, args: list[str] | None = None, timeout: float = 120,
              python: str | None = None) -> dict:
    """Run probe code in a fresh interpreter. Returns {"data": dict|None, "error": str|None,
    "stderr": str, "seconds": float}; never raises for what happens in the child."""
    code = code.replace("MARK", repr(MARK)).replace("MODEL", repr(IDENTITY_ONNX))
    start = time.monotonic()
    env = dict(os.environ)
    env.setdefault("PYTHONIOENCODING", "utf-8")
    try:
        proc = subprocess.run([python or sys.executable, "-c", code, *(args or [])],
                              capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, cwd=str(Path(__file__).resolve().parent), env=env)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")
        return {"data": None, "error": f"timed out after {timeout:g} s", "stderr": stderr,
                "seconds": time.monotonic() - start}
    except OSError as exc:
        return {"data": None, "error": f"could not start {python or sys.executable}: {exc}",
                "stderr": "", "seconds": time.monotonic() - start}
    data = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            try:
                data = json.loads(line[len(MARK):])
            except json.JSONDecodeError:
                data = None
            break
    error = None
    if data is None:
        last = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        exception = next((line for line in reversed(last)
                          if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line)),
                         None)
        if proc.returncode < 0:
            error = f"crashed with signal {-proc.returncode}" + (f" ({last[-1][:200]})" if last else "")
        else:
            error = (exception or (last[-1] if last else f"exit code {proc.returncode}"))[:300]
    return {"data": data, "error": error, "stderr": proc.stderr,
            "seconds": time.monotonic() - start}


def _nvidia_smi(timeout: float = 20) -> dict:
    """GPUs and the driver's CUDA version from nvidia-smi; {"found": False} without it."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {"found": False, "reason": "nvidia-smi not on PATH"}
    info = {"found": True, "path": exe, "gpus": []}
    try:
        query = subprocess.run(
            [exe, "--query-gpu=name,memory.total,memory.free,driver_version",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
        plain = subprocess.run([exe], capture_output=True, text=True, encoding="utf-8",
                               errors="replace", timeout=timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        return {"found": True, "path": exe, "gpus": [], "error": f"nvidia-smi failed: {exc}"}
    if query.returncode != 0:
        info["error"] = _first_line(query.stderr + query.stdout) or f"exit code {query.returncode}"
    info.update(parse_nvidia_smi(query.stdout, plain.stdout))
    return info


def parse_nvidia_smi(query_csv: str, plain: str) -> dict:
    """GPUs from `nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version
    --format=csv,noheader,nounits` (MiB) and the driver's CUDA version from plain `nvidia-smi`."""
    gpus = []
    for line in query_csv.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) >= 4:
            try:
                gpus.append({"name": fields[0], "total_bytes": int(float(fields[1])) * 1024 ** 2,
                             "free_bytes": int(float(fields[2])) * 1024 ** 2, "driver": fields[3]})
            except ValueError:
                continue
    match = re.search(r"CUDA Version:\s*([\d.]+)", plain)
    return {"gpus": gpus, "driver_cuda": match.group(1) if match else None}


# --------------------------------------------------------------------------------------------
# Installed distributions
# --------------------------------------------------------------------------------------------
def _providers_map() -> dict[str, list[str]]:
    """Top-level import name -> installed distributions providing it (deduplicated)."""
    try:
        raw = metadata.packages_distributions()
    except Exception:  # noqa: BLE001 - a broken dist-info must not stop the check
        raw = {}
    result = {}
    for top, dists in raw.items():
        seen = []
        for dist in dists:
            if normalize_name(dist) not in {normalize_name(d) for d in seen}:
                seen.append(dist)
        result[top] = seen
    return result


def installed_version(distribution: str) -> str | None:
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - broken metadata counts as not installed
        return None
    return version or None


def _requires(distribution: str) -> list[str]:
    try:
        return list(metadata.requires(distribution) or [])
    except Exception:  # noqa: BLE001
        return []


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------
class Report:
    def __init__(self):
        self.problems: list[dict] = []   # {"what", "detail", "pip_fixable": bool}
        self.warnings: list[str] = []
        self.uninstall: list[str] = []
        self.install: list[str] = []      # distribution names; pins looked up later
        self.apt: list[str] = []

    def problem(self, what: str, detail: str, pip_fixable: bool = True):
        self.problems.append({"what": what, "detail": detail, "pip_fixable": pip_fixable})

    def add(self, bucket: list[str], *names: str):
        for name in names:
            if normalize_name(name) not in {normalize_name(existing) for existing in bucket}:
                bucket.append(name)


def _check_packages(manifest: dict, imports: dict, providers: dict, report: Report) -> list[dict]:
    rows = []
    for import_name, (dist, pin) in manifest.items():
        optional = pin is None
        version = installed_version(dist)
        provided_by = providers.get(import_name, [])
        others = [d for d in provided_by if normalize_name(d) != normalize_name(dist)]
        accepted = ACCEPTED_ALTERNATIVES.get(dist, ())
        result = imports.get(import_name) or {"data": None, "error": "not checked"}
        data = result["data"] or {}
        import_ok = bool(data.get("ok"))
        import_error = None if import_ok else (data.get("error") or result["error"])
        row = {"import": import_name, "distribution": dist, "pin": pin, "installed": version,
               "provided_by": provided_by, "importable": import_ok, "import_error": import_error,
               "optional": optional, "status": "ok"}
        rows.append(row)
        if optional:
            alternative = next((d for d in others if normalize_name(d) in
                                {normalize_name(a) for a in accepted}), None)
            if version is None and alternative:
                row["installed"] = installed_version(alternative)
                row["distribution_found"] = alternative
            if not import_ok:
                row["status"] = "optional, missing" if version is None and not alternative \
                    else "optional, import error"
                reason = UNPINNED_OK.get(import_name, "not pinned in requirements-pod.txt")
                report.warnings.append(f"{import_name} ({dist}) does not import: {import_error} "
                                       f"[optional: {reason}]")
            continue
        conflict = version is not None and others
        if conflict:
            row["status"] = "CONFLICT"
            note = CONFLICT_NOTES.get(import_name, "they overwrite each other's files")
            report.problem(f"{import_name}: {' and '.join([dist, *others])} are both installed",
                           note)
            report.add(report.uninstall, *others, dist)
            report.add(report.install, dist)
        elif version is None and others:
            row["status"] = "WRONG DIST"
            report.problem(f"{import_name} is provided by {', '.join(others)}, not {dist}",
                           f"the pinned distribution is {dist}=={pin}")
            report.add(report.uninstall, *others)
            report.add(report.install, dist)
        elif version is None:
            row["status"] = "MISSING"
            report.problem(f"{dist} is not installed", f"pinned {dist}=={pin}")
            report.add(report.install, dist)
        elif pin_matches(version, pin) is False:
            row["status"] = "WRONG VERSION"
            report.problem(f"{dist} {version} is installed", f"pinned {dist}=={pin}")
            report.add(report.install, dist)
        elif pin_matches(version, pin) is None:
            report.warnings.append(f"{dist}: cannot compare version {version!r} with pin {pin!r}")
        if version is not None and not import_ok:
            if row["status"] == "ok":
                row["status"] = "IMPORT ERROR"
            library = re.search(r"(lib[\w.+-]+\.so[\w.]*)", import_error or "")
            if library and library.group(1).startswith("libGL."):
                report.add(report.apt, "libgl1", "libglib2.0-0")
                report.problem(f"import {import_name} fails", f"{import_error} (system library; "
                               "apt-get install libgl1 libglib2.0-0)")
            elif library and library.group(1).startswith(("libgthread", "libglib")):
                report.add(report.apt, "libglib2.0-0")
                report.problem(f"import {import_name} fails", f"{import_error} (system library)")
            else:
                report.problem(f"import {import_name} fails", import_error or "unknown error")
                if row["status"] == "IMPORT ERROR":
                    report.add(report.uninstall, dist)
                    report.add(report.install, dist)
    return rows


def _check_couplings(manifest: dict, report: Report) -> list[dict]:
    """Requires-Dist pins between manifest distributions (xformers->torch, torchvision->torch)."""
    dists = {normalize_name(dist): dist for dist, pin in manifest.values() if pin}
    findings = []
    for dist in dists.values():
        version = installed_version(dist)
        if version is None:
            continue
        for requirement in _requires(dist):
            parsed = _requirement_on(requirement)
            if not parsed:
                continue
            name, spec = parsed
            target = dists.get(normalize_name(name))
            if target is None or not spec:
                continue
            if normalize_name(dist) == "xformers" and normalize_name(target) == "torch":
                continue  # the xformers trap checks this pair, with the import and the kernels
            have = installed_version(target)
            if have is None:
                continue
            ok = version_satisfies(have, spec)
            findings.append({"distribution": dist, "version": version, "requires": f"{name}{spec}",
                             "installed": have, "ok": ok})
            if ok is False:
                pin_self, pin_target = _pin_of(manifest, dist), _pin_of(manifest, target)
                if pin_matches(version, pin_self) and pin_matches(have, pin_target):
                    report.problem(f"{dist} {version} requires {name}{spec}, {target} {have} installed",
                                   "the pins of requirements-pod.txt disagree: fix the file",
                                   pip_fixable=False)
                else:
                    report.problem(f"{dist} {version} requires {name}{spec}, {target} {have} installed",
                                   f"install {dist} and {target} at their pins together")
                    report.add(report.install, dist, target)
    return findings


def _pin_of(manifest: dict, distribution: str) -> str | None:
    for dist, pin in manifest.values():
        if normalize_name(dist) == normalize_name(distribution):
            return pin
    return None


def _gpu_present(smi: dict, torch_data: dict) -> bool:
    return bool(smi.get("gpus")) or bool(torch_data.get("gpus"))


def _check_traps(manifest: dict, probes: dict, smi: dict, providers: dict, allow_no_gpu: bool,
                 report: Report) -> list[dict]:
    traps = []
    torch_result = probes.get("torch") or {"data": None, "error": "not run"}
    torch_data = torch_result["data"] or {}
    gpu = _gpu_present(smi, torch_data)

    # 1. onnxruntime + onnxruntime-gpu together.
    ort_dists = [d for d in providers.get("onnxruntime", []) if installed_version(d)]
    both = len(ort_dists) > 1
    traps.append({"trap": "onnxruntime and onnxruntime-gpu both installed",
                  "status": "FAIL" if both else "ok",
                  "detail": (f"{', '.join(ort_dists)} installed: {CONFLICT_NOTES['onnxruntime']}"
                             if both else (f"onnxruntime provided by {ort_dists[0]} only" if ort_dists
                                            else "no onnxruntime distribution installed"))})

    # 2. The providers a session really gets.
    ort_result = probes.get("onnxruntime")
    if ort_result is None:
        traps.append({"trap": "onnxruntime session providers", "status": "skip",
                      "detail": "onnxruntime not in the manifest"})
    elif ort_result["data"] is None:
        traps.append({"trap": "onnxruntime session providers", "status": "skip",
                      "detail": f"onnxruntime does not import: {ort_result['error']}"})
    else:
        data = ort_result["data"]
        session = data.get("session")
        wants_gpu = normalize_name(manifest.get("onnxruntime", ("", None))[0]) == "onnxruntime-gpu"
        detail = (f"available {data.get('available')}, session got {session}"
                  if session is not None else f"session failed: {data.get('session_error')}")
        log_line = _first_line(ort_result["stderr"], r"fail|error|cannot|not found")
        if data.get("session_after_preload") is not None:
            detail += f"; after onnxruntime.preload_dlls(): {data['session_after_preload']}"
        if log_line:
            detail += f"; log: {log_line}"
        bad = session is None or (gpu and wants_gpu and "CUDAExecutionProvider" not in session)
        if bad:
            cuda_built = "CUDAExecutionProvider" in data.get("available", [])
            what = "onnxruntime session has no CUDAExecutionProvider" if session is not None \
                else "onnxruntime cannot create a session"
            if both:
                hint = " (caused by the double install above)"
            elif cuda_built:
                hint = (" (CUDA/cuDNN libraries did not load: onnxruntime-gpu 1.23 needs CUDA 12 "
                        "and cuDNN 9; import torch first or call onnxruntime.preload_dlls())")
            else:
                hint = " (this onnxruntime has no CUDA provider: reinstall onnxruntime-gpu)"
                report.add(report.uninstall, *ort_dists)
                report.add(report.install, manifest["onnxruntime"][0])
            report.problem(what, detail + hint, pip_fixable=both or not cuda_built)
        note = "" if gpu else " (no GPU here: CPU is expected)"
        traps.append({"trap": "onnxruntime session providers", "status": "FAIL" if bad else "ok",
                      "detail": detail + note})

    # 3. xformers built for another torch / CUDA.
    xf_result = probes.get("xformers")
    xf_version = installed_version("xformers")
    if xf_result is None or xf_version is None:
        traps.append({"trap": "xformers matches torch", "status": "skip",
                      "detail": "xformers not installed" if "xformers" in manifest
                      else "xformers not in the manifest"})
    else:
        problems = []
        torch_version = installed_version("torch")
        for requirement in _requires("xformers"):
            parsed = _requirement_on(requirement)
            if parsed and normalize_name(parsed[0]) == "torch" and parsed[1] and torch_version:
                if version_satisfies(torch_version, parsed[1]) is False:
                    problems.append(f"xformers {xf_version} requires torch{parsed[1]}, "
                                    f"torch {torch_version} installed")
        data = xf_result["data"]
        warning = _first_line(xf_result["stderr"], r"xformers.*(can't|cannot|built for)")
        built_line = _first_line(xf_result["stderr"], r"you have")
        if data is None:
            problems.append(f"import fails: {xf_result['error']}")
        else:
            if not data.get("ops"):
                problems.append(f"import xformers.ops fails: {data.get('ops_error')}")
            if warning:
                problems.append(warning + (f" {built_line}" if built_line and built_line != warning else ""))
            if data.get("attention") not in (None, "ok"):
                problems.append(f"memory_efficient_attention on CUDA fails: {data['attention']}")
        detail = "; ".join(problems) if problems else (
            f"xformers {xf_version} with torch {torch_version}"
            + (", memory_efficient_attention ran on CUDA" if (data or {}).get("attention") == "ok"
               else " (no CUDA here: kernels not exercised)"))
        traps.append({"trap": "xformers matches torch", "status": "FAIL" if problems else "ok",
                      "detail": detail})
        if problems:
            report.problem("xformers does not match torch", "; ".join(problems))
            report.add(report.uninstall, "xformers")
            report.add(report.install, "xformers", "torch")

    # 4. torch without CUDA on a GPU machine.
    if "torch" not in manifest:
        traps.append({"trap": "torch has CUDA", "status": "skip", "detail": "torch not in the manifest"})
    elif torch_result["data"] is None:
        traps.append({"trap": "torch has CUDA", "status": "skip",
                      "detail": f"torch does not import: {torch_result['error']}"})
    else:
        cpu_build = torch_data.get("cuda_build") is None or "+cpu" in torch_data.get("version", "")
        reason = torch_data.get("cuda_error") or torch_data.get("cuda_warning") or ""
        if gpu and not torch_data.get("available"):
            status = "FAIL"
            detail = (f"torch {torch_data.get('version')} is a CPU build" if cpu_build else
                      f"torch {torch_data.get('version')} (CUDA {torch_data.get('cuda_build')}) "
                      f"cannot use the GPU") + (f": {reason}" if reason else "")
            report.problem("torch does not see the GPU", detail, pip_fixable=cpu_build)
            if cpu_build:
                report.add(report.uninstall, "torch", "torchvision")
                report.add(report.install, "torch", "torchvision")
        elif cpu_build and not allow_no_gpu:
            status = "FAIL"
            detail = (f"torch {torch_data.get('version')} is a CPU build; the pod needs the CUDA build "
                      f"(PyPI's Linux torch=={str(manifest['torch'][1]).split('+')[0]} wheel is the CUDA one; "
                      "if pip picks a +cpu "
                      "wheel again, a CPU index is configured: add --index-url "
                      "https://download.pytorch.org/whl/cu128)")
            report.problem("torch is a CPU build", detail)
            report.add(report.uninstall, "torch", "torchvision")
            report.add(report.install, "torch", "torchvision")
        else:
            status = "ok"
            detail = (f"torch {torch_data.get('version')}, CUDA build {torch_data.get('cuda_build')}, "
                      f"cuda available: {torch_data.get('available')}")
        driver_cuda = smi.get("driver_cuda")
        if torch_data.get("cuda_build") and driver_cuda and \
                version_satisfies(driver_cuda, ">=" + torch_data["cuda_build"]) is False:
            status = "FAIL"
            detail += (f"; driver supports CUDA {driver_cuda} < torch's CUDA "
                       f"{torch_data['cuda_build']}")
            report.problem("NVIDIA driver too old for torch",
                           f"driver CUDA {driver_cuda}, torch built for {torch_data['cuda_build']} "
                           "(CUDA 12.8 needs driver >= 570): pick another pod image",
                           pip_fixable=False)
        traps.append({"trap": "torch has CUDA", "status": status, "detail": detail})
    return traps


def _gpu_summary(smi: dict, torch_result: dict | None, allow_no_gpu: bool, report: Report) -> dict:
    torch_data = (torch_result or {}).get("data") or {}
    if torch_data.get("gpus"):
        gpus = [dict(g, source="torch") for g in torch_data["gpus"]]
        cuda = torch_data.get("cuda_build")
    elif smi.get("gpus"):
        gpus = [dict(g, source="nvidia-smi") for g in smi["gpus"]]
        cuda = None
    else:
        gpus, cuda = [], None
    summary = {"gpus": gpus, "torch_cuda": cuda, "driver_cuda": smi.get("driver_cuda"),
               "nvidia_smi": smi.get("path"), "nvidia_smi_error": smi.get("error")}
    if not gpus:
        why = smi.get("reason") or smi.get("error") or "nvidia-smi lists no GPU"
        summary["none_reason"] = why
        if not allow_no_gpu:
            report.problem("no NVIDIA GPU visible", f"{why}; torch: "
                           f"{'not importable' if not torch_data else 'cuda not available'}",
                           pip_fixable=False)
    return summary


def _fix_line(manifest: dict, report: Report, python: str) -> str | None:
    pins = {normalize_name(dist): (dist, pin) for dist, pin in manifest.values() if pin}
    quote = subprocess.list2cmdline if os.name == "nt" else (lambda args: " ".join(map(shlex.quote, args)))
    pip = [python, "-m", "pip"]
    steps = []
    if report.apt:
        steps.append(quote(["apt-get", "install", "-y", *report.apt]))
    uninstall = [name for name in report.uninstall if installed_version(name) is not None]
    if uninstall:
        steps.append(quote([*pip, "uninstall", "-y", *uninstall]))
    install = []
    for name in report.install:
        dist, pin = pins.get(normalize_name(name), (name, None))
        if pin:
            install.append(f"{dist}=={pin}")
    if install:
        steps.append(quote([*pip, "install", *install]))
    ort_gpu = pins.get("onnxruntime-gpu")
    if ort_gpu and any(normalize_name(n) == "insightface" for n in report.install):
        # insightface declares a dependency on the CPU `onnxruntime`: pip brings it back, so the
        # recipe of requirements-pod.txt removes it and restores onnxruntime-gpu's files.
        steps.append(quote([*pip, "uninstall", "-y", "onnxruntime"]))
        steps.append(quote([*pip, "install", "--force-reinstall", "--no-deps",
                            f"{ort_gpu[0]}=={ort_gpu[1]}"]))
    return " && ".join(steps) if steps else None


def check(manifest: dict, *, scanned_files: dict | None = None, allow_no_gpu: bool = False,
          import_timeout: float = 120, python: str | None = None, progress=None) -> dict:
    """Run every check against this Python; returns the report dict (also what --json writes)."""
    report = Report()
    providers = _providers_map()
    say = progress or (lambda message: None)
    tasks = {f"import:{name}": (IMPORT_PROBE, [name]) for name in manifest}
    if "torch" in manifest:
        tasks["torch"] = (TORCH_PROBE, [])
    if "onnxruntime" in manifest:
        tasks["onnxruntime"] = (ORT_PROBE, [])
    if "xformers" in manifest and installed_version("xformers"):
        tasks["xformers"] = (XFORMERS_PROBE, [])
    results: dict[str, dict] = {}
    workers = max(2, min(8, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        smi_future = pool.submit(_nvidia_smi)
        futures = {pool.submit(run_probe, code, args, import_timeout, python): key
                   for key, (code, args) in tasks.items()}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            key = futures[future]
            results[key] = future.result()
            outcome = "ok" if results[key]["data"] and results[key]["data"].get("ok", True) \
                else (results[key]["error"] or (results[key]["data"] or {}).get("error") or "failed")
            say(f"[{done}/{len(futures)}] {key}: {outcome} ({results[key]['seconds']:.1f} s)")
        smi = smi_future.result()
    imports = {key.split(":", 1)[1]: value for key, value in results.items() if key.startswith("import:")}
    probes = {key: value for key, value in results.items() if not key.startswith("import:")}
    packages = _check_packages(manifest, imports, providers, report)
    couplings = _check_couplings(manifest, report)
    traps = _check_traps(manifest, probes, smi, providers, allow_no_gpu, report)
    gpu = _gpu_summary(smi, probes.get("torch"), allow_no_gpu, report)
    free = min((g["free_bytes"] for g in gpu["gpus"]), default=None) if gpu["gpus"] else None
    vram = vram_estimate(free)
    if free is not None and vram["sequential"]["free_now"]["fits"] == "no":
        report.problem("not enough free VRAM", f"the largest job needs ~{vram['sequential']['peak_gib']}"
                       f" GiB, {vram['free_now_gib']} GiB free: another process holds GPU memory",
                       pip_fixable=False)
    if scanned_files is not None:
        for import_name, (dist, pin) in manifest.items():
            if pin is None and import_name not in UNPINNED_OK:
                files = ", ".join(sorted(scanned_files.get(import_name, ())))
                report.problem(f"{import_name} has no pin in requirements-pod.txt",
                               f"imported by {files}; add `{dist}==X.Y.Z` to requirements-pod.txt",
                               pip_fixable=False)
    pip_python = python or sys.executable
    fix = _fix_line(manifest, report, pip_python)
    notes = []
    if fix and not _has_pip(python):
        notes.append(f"pip is not installed for {pip_python}: install it first "
                     "(apt-get install python3-pip, or python3 -m ensurepip)")
    if fix and _externally_managed():
        notes.append("this Python is externally managed (PEP 668): run the fix inside a venv, "
                     "or add --break-system-packages to the pip commands")
    return {
        "python": {"executable": pip_python, "version": sys.version.split()[0]},
        "packages": packages, "couplings": couplings, "traps": traps, "gpu": gpu, "vram": vram,
        "problems": report.problems, "warnings": report.warnings, "fix_command": fix,
        "fix_notes": notes, "ok": not report.problems,
    }


# --------------------------------------------------------------------------------------------
# The training environment (the sd-scripts venv) and the sd-scripts checkout
# --------------------------------------------------------------------------------------------
TRAINING_PROBE = r"""
import json, sys
from importlib import metadata
r = {"version": "%d.%d.%d" % tuple(sys.version_info[:3]), "executable": sys.executable,
     "installed": {}, "requires": {}}
for dist in json.loads(sys.argv[1]):
    try:
        r["installed"][dist] = metadata.version(dist)
    except Exception:
        r["installed"][dist] = None
for dist in ("xformers", "torchvision"):
    try:
        r["requires"][dist] = list(metadata.requires(dist) or [])
    except Exception:
        r["requires"][dist] = []
try:
    r["library"] = metadata.version("library")
except Exception:
    r["library"] = None
print(MARK + json.dumps(r))
"""


# Copied from tools/retrain_lora_v3.py:find_training_python
def find_training_python(sd_scripts: Path) -> Path | None:
    """The sd-scripts venv's interpreter where README.md puts it (DIR/venv or DIR/.venv), else None."""
    for venv in ("venv", ".venv"):
        for relative in (("bin", "python"), ("Scripts", "python.exe")):
            candidate = Path(sd_scripts, venv, *relative)
            if candidate.is_file():
                return candidate
    return None


def git_head(folder: Path) -> tuple[str | None, str]:
    """(commit of HEAD, how it was found) read from FOLDER/.git without the git program."""
    git = Path(folder) / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: PATH"
            text = git.read_text(encoding="utf-8", errors="replace").strip()
            if text.startswith("gitdir:"):
                git = (Path(folder) / text.split(":", 1)[1].strip()).resolve()
        if not git.is_dir():
            return None, "no .git (a snapshot, not a clone: its commit cannot be read)"
        head = (git / "HEAD").read_text(encoding="utf-8", errors="replace").strip()
        if re.fullmatch(r"[0-9a-f]{40}", head):
            return head, "detached HEAD"
        common = git
        if (git / "commondir").is_file():  # a worktree keeps its branches in the main .git
            common = (git / (git / "commondir").read_text(encoding="utf-8", errors="replace")
                      .strip()).resolve()
        if head.startswith("ref:"):
            ref = head[4:].strip()
            for base in (git, common):
                path = base / ref
                if path.is_file():
                    commit = path.read_text(encoding="utf-8", errors="replace").strip()
                    if re.fullmatch(r"[0-9a-f]{40}", commit):
                        return commit, ref
                    return None, f"unreadable {path} (not a commit id)"
            packed = common / "packed-refs"
            if packed.is_file():
                for line in packed.read_text(encoding="utf-8", errors="replace").splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0], ref + " (packed)"
            return None, f"HEAD names {ref}, which has no commit yet"
    except (OSError, ValueError) as exc:
        return None, f"cannot read .git: {exc}"
    return None, f"unreadable .git/HEAD (neither a commit id nor a ref: {head[:60]!r})"


def training_pins(python_version: str | None) -> dict[str, str]:
    pins = dict(REQUIREMENTS_TRAINING)
    if python_version and python_version.startswith("3.10."):
        pins.update(REQUIREMENTS_TRAINING_PY310)
    return pins


def lock_name(environment: str, python_version: str | None) -> str:
    major_minor = "".join((python_version or "3.11").split(".")[:2])
    return f"requirements-{environment}-py{major_minor}.lock"


def find_lock(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        if (Path(folder) / name).is_file():
            return (Path(folder) / name).resolve()
    return None


def _quote(args: list[str]) -> str:
    return subprocess.list2cmdline(args) if os.name == "nt" else " ".join(map(shlex.quote, args))


def check_training(sd_scripts: Path, python: str | None, *, import_timeout: float = 120,
                   lock_folders: list[Path] | None = None, gpu: bool = False,
                   allow_no_gpu: bool = False, progress=None) -> dict:
    """The sd-scripts checkout (commit) and its venv (pins, imports, xformers/torch, CUDA): the
    report dict of the training environment, with its own fix line."""
    say = progress or (lambda message: None)
    report = Report()
    sd_scripts = Path(sd_scripts)
    lock_folders = lock_folders or []
    steps: list[str] = []
    notes: list[str] = []
    result = {"sd_scripts": str(sd_scripts), "expected_commit": SD_SCRIPTS_COMMIT, "commit": None,
              "python": None, "python_version": None, "packages": [], "traps": []}
    is_checkout = (sd_scripts / "sdxl_train_network.py").is_file() and (
        sd_scripts / "library" / "train_util.py").is_file()
    if not sd_scripts.is_dir():
        report.problem(f"no sd-scripts checkout at {sd_scripts}",
                       f"clone kohya-ss/sd-scripts there at {SD_SCRIPTS_COMMIT[:12]} (or pass --sd-scripts)")
        steps += [_quote(["git", "clone", SD_SCRIPTS_URL, str(sd_scripts)]),
                  _quote(["git", "-C", str(sd_scripts), "checkout", SD_SCRIPTS_COMMIT])]
    elif not is_checkout:
        report.problem(f"{sd_scripts} is not a kohya sd-scripts checkout",
                       "it has no sdxl_train_network.py or library/train_util.py", pip_fixable=False)
    else:
        commit, how = git_head(sd_scripts)
        result["commit"], result["commit_source"] = commit, how
        if commit is None:
            report.warnings.append(f"sd-scripts commit unknown: {how}; the project was checked against "
                                   f"{SD_SCRIPTS_COMMIT}")
        elif commit != SD_SCRIPTS_COMMIT:
            report.problem(f"sd-scripts is at {commit[:12]}",
                           f"the project's launcher was checked against {SD_SCRIPTS_COMMIT[:12]} "
                           f"(tools/retrain_lora_v3.py SD_SCRIPTS_COMMIT)")
            steps += [_quote(["git", "-C", str(sd_scripts), "fetch", "origin"]),
                      _quote(["git", "-C", str(sd_scripts), "checkout", SD_SCRIPTS_COMMIT])]
    found = Path(python) if python else find_training_python(sd_scripts)
    if found is None or not found.is_file():
        where = f"--training-python {python}" if python else \
            f"neither {sd_scripts / 'venv'} nor {sd_scripts / '.venv'} holds a Python"
        report.problem("no training environment", f"{where} (sd-scripts needs a venv of its own: "
                       "its pins conflict with requirements-pod.txt)")
        version = "%d.%d.%d" % sys.version_info[:3]
        venv_python = sd_scripts / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        lock = find_lock(lock_name("training", version), lock_folders)
        steps.append(_quote([sys.executable, "-m", "venv", str(sd_scripts / "venv")]))
        steps.append(_quote([str(venv_python), "-m", "pip", "install", "--no-deps", "--require-hashes",
                             "-r", str(lock or lock_name("training", version))]))
        steps.append(_quote([str(venv_python), "-m", "pip", "install", "--no-deps", "-e", str(sd_scripts)]))
        if lock is None:
            notes.append(f"{lock_name('training', version)} is in the project's repository root: "
                         "run the line there, or upload the lock beside this script")
        import importlib.util
        if importlib.util.find_spec("ensurepip") is None:
            notes.append(f"{sys.executable} has no ensurepip, so `-m venv` fails: on Debian/Ubuntu "
                         "apt-get install python3-venv first")
        return _training_result(result, report, steps, notes)
    result["python"] = str(found)
    say(f"training environment: {found}")
    probe = run_probe(TRAINING_PROBE, [json.dumps(sorted(set(REQUIREMENTS_TRAINING)))],
                      import_timeout, str(found))
    data = probe["data"]
    if data is None:
        report.problem(f"cannot run the training Python {found}", probe["error"] or "no answer",
                       pip_fixable=False)
        return _training_result(result, report, steps, notes)
    version = data["version"]
    result["python_version"] = version
    if not version.startswith(("3.10.", "3.11.")):
        report.problem(f"the training Python is {version}", "the locks are for CPython 3.10 and 3.11: "
                       "make the venv with one of them", pip_fixable=False)
    pins = training_pins(version)
    tasks = {f"import:{name}": (IMPORT_PROBE, [name]) for name in TRAINING_IMPORTS}
    tasks["torch"] = (TORCH_PROBE, [])
    if data["installed"].get("xformers"):
        tasks["xformers"] = (XFORMERS_PROBE, [])
    results = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        futures = {pool.submit(run_probe, code, args, import_timeout, str(found)): key
                   for key, (code, args) in tasks.items()}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            results[futures[future]] = future.result()
            say(f"[training {done}/{len(futures)}] {futures[future]} ({results[futures[future]]['seconds']:.1f} s)")
    reinstall = []
    for import_name, dist in TRAINING_IMPORTS.items():
        pin = pins.get(dist)
        installed = data["installed"].get(dist)
        probe = results[f"import:{import_name}"]
        imported = bool(probe["data"] and probe["data"].get("ok"))
        error = None if imported else ((probe["data"] or {}).get("error") or probe["error"])
        status = "ok"
        if installed is None:
            status = "MISSING"
            report.problem(f"{dist} is not installed (training)", f"pinned {dist}=={pin}")
        elif pin_matches(installed, pin) is False:
            status = "WRONG VERSION"
            report.problem(f"{dist} {installed} is installed (training)", f"pinned {dist}=={pin}")
        elif not imported:
            status = "IMPORT ERROR"
            report.problem(f"import {import_name} fails (training)", error or "unknown error")
        if status != "ok":
            reinstall.append(f"{dist}=={pin}")
        result["packages"].append({"import": import_name, "distribution": dist, "pin": pin,
                                   "installed": installed, "importable": imported,
                                   "import_error": error, "status": status})
    torch_version = data["installed"].get("torch")
    xformers_torch = next((parsed[1] for parsed in map(_requirement_on, data["requires"].get("xformers", []))
                           if parsed and normalize_name(parsed[0]) == "torch"), None)
    if data["installed"].get("xformers") and torch_version and xformers_torch:
        ok = version_satisfies(torch_version, xformers_torch) is not False
        xf = results.get("xformers") or {"data": None, "error": "not run"}
        ops = bool(xf["data"] and xf["data"].get("ops"))
        detail = (f"xformers {data['installed']['xformers']} requires torch{xformers_torch}, torch "
                  f"{torch_version} installed" + ("" if ops else f"; import xformers.ops fails: "
                                                   f"{(xf['data'] or {}).get('ops_error') or xf['error']}"))
        result["traps"].append({"trap": "xformers matches torch", "status": "ok" if ok and ops else "FAIL",
                                "detail": detail})
        if not (ok and ops):
            report.problem("xformers does not match torch (training)", detail)
            reinstall += [f"xformers=={pins['xformers']}", f"torch=={pins['torch']}"]
    torch_data = (results.get("torch") or {}).get("data") or {}
    if torch_data:
        cpu_build = torch_data.get("cuda_build") is None
        bad = (gpu and not torch_data.get("available")) or (cpu_build and not allow_no_gpu)
        detail = (f"torch {torch_data.get('version')}, CUDA build {torch_data.get('cuda_build')}, cuda "
                  f"available: {torch_data.get('available')}")
        result["traps"].append({"trap": "torch has CUDA", "status": "FAIL" if bad else "ok", "detail": detail})
        if bad:
            report.problem("training torch cannot use the GPU", detail, pip_fixable=cpu_build)
            reinstall += [f"torch=={pins['torch']}", f"torchvision=={pins['torchvision']}"]
    if data.get("library") is None:
        report.warnings.append(f"sd-scripts' own `-e .` (the `library` package) is not installed in "
                               f"{found}; its scripts still import it from the checkout; README.md "
                               f"installs it with `pip install --no-deps -e {sd_scripts}`")
    if reinstall:
        lock = find_lock(lock_name("training", version), lock_folders)
        if lock is not None:
            steps.append(_quote([str(found), "-m", "pip", "install", "--no-deps", "--require-hashes",
                                 "-r", str(lock)]))
        else:
            steps.append(_quote([str(found), "-m", "pip", "install", "--no-deps",
                                 *dict.fromkeys(reinstall)]))
            notes.append(f"{lock_name('training', version)} (in the project's repository root) pins "
                         "every transitive package too: `pip install --no-deps --require-hashes -r` it "
                         "for an exact environment")
    return _training_result(result, report, steps, notes)


def _training_result(result: dict, report: Report, steps: list[str], notes: list[str]) -> dict:
    result.update({"problems": report.problems, "warnings": report.warnings,
                   "fix_command": " && ".join(steps) if steps else None, "fix_notes": notes,
                   "ok": not report.problems})
    return result


def _has_pip(python: str | None) -> bool:
    if python and Path(python).resolve() != Path(sys.executable).resolve():
        return True  # cannot tell cheaply for another interpreter
    import importlib.util
    return importlib.util.find_spec("pip") is not None


def _externally_managed() -> bool:
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        return False
    try:
        return (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").is_file()
    except (KeyError, TypeError, OSError):
        return False


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(header), *(fmt(r) for r in rows)]


def _fit_text(fit: dict | None) -> str:
    if fit is None:
        return "n/a"
    return f"{fit['fits']} ({fit['margin_gib']:+.1f})"


def render(result: dict, source: str) -> str:
    out = [f"validate_pod_deps: Python {result['python']['version']} ({result['python']['executable']}),"
           f" manifest: {source}", "", "Packages"]
    rows = []
    for p in result["packages"]:
        imported = "yes" if p["importable"] else "no"
        rows.append([p["import"], p.get("distribution_found") or p["distribution"],
                     p["pin"] or "(unpinned)", p["installed"] or "-", imported, p["status"]])
    out += _table(rows, ["import", "distribution", "pin", "installed", "imports", "status"])
    errors = [p for p in result["packages"] if p["import_error"] and p["installed"]]
    for p in errors:
        out.append(f"  {p['import']}: {p['import_error']}")
    if result["couplings"]:
        bad = [c for c in result["couplings"] if c["ok"] is False]
        out.append(f"  dependency pins between them: {len(result['couplings']) - len(bad)} ok, {len(bad)} broken")
    out += ["", "Traps"]
    for trap in result["traps"]:
        out.append(f"  [{trap['status']}] {trap['trap']}: {trap['detail']}")
    gpu = result["gpu"]
    out += ["", "GPU"]
    if gpu["gpus"]:
        for g in gpu["gpus"]:
            out.append(f"  {g['name']}: total {g['total_bytes'] / GIB:.2f} GiB, free "
                       f"{g['free_bytes'] / GIB:.2f} GiB (from {g['source']})")
        out.append(f"  CUDA: torch built for {gpu['torch_cuda'] or 'n/a'}, driver supports "
                   f"{gpu['driver_cuda'] or 'n/a'}")
    else:
        out.append(f"  none found ({gpu.get('none_reason')})")
    vram = result["vram"]
    out += ["", f"VRAM estimate for the {vram['card']} ({vram['card_gib']} GiB), from parameter counts "
            f"x bytes per parameter; free now: "
            f"{'n/a (no GPU)' if vram['free_now_gib'] is None else str(vram['free_now_gib']) + ' GiB'}"]
    rows = []
    for job in vram["jobs"]:
        for i, comp in enumerate(job["components"]):
            rows.append([job["job"] if i == 0 else "", comp["component"], f"{comp['gib']:.2f}",
                         comp["basis"]])
        rows.append(["", "TOTAL", f"{job['total_gib']:.2f}",
                     f"fits 24 GB: {_fit_text(job['card'])}; fits free now: {_fit_text(job['free_now'])}"])
    out += _table(rows, ["job", "component", "GiB", "basis"])
    seq = vram["sequential"]
    out.append(f"  Verdict, one after the other: peak {seq['peak_gib']:.2f} GiB -> fits 24 GB: "
               f"{_fit_text(seq['card'])}; fits free now: {_fit_text(seq['free_now'])}")
    for pair in vram["concurrent"]:
        out.append(f"  Verdict, at the same time: {pair['jobs'][0]} + {pair['jobs'][1]} = "
                   f"{pair['total_gib']:.2f} GiB -> fits 24 GB: {_fit_text(pair['card'])}; "
                   f"fits free now: {_fit_text(pair['free_now'])}")
    out.append("  (fit: yes / tight = margin under 1.5 GiB / no; margin in GiB. Running two jobs at "
               "once also halves each one's speed.)")
    if result["warnings"]:
        out += ["", "Warnings"] + [f"  - {w}" for w in result["warnings"]]
    out += ["", f"Problems ({len(result['problems'])})"]
    if not result["problems"]:
        out.append("  none")
    for p in result["problems"]:
        tag = "" if p["pip_fixable"] else " [not fixable by pip]"
        out.append(f"  - {p['what']}: {p['detail']}{tag}")
    out += ["", "Fix, eval/caption environment (one line, for this Python):"]
    if result["fix_command"]:
        out.append(result["fix_command"])
        out += [f"  note: {n}" for n in result["fix_notes"]]
        if any(not p["pip_fixable"] for p in result["problems"]):
            out.append("  note: the problems marked [not fixable by pip] remain after it.")
    elif result["problems"]:
        out.append("  no pip command fixes these; see the problems above.")
    else:
        out.append("  Nothing needs fixing.")
    if result.get("training") is not None:
        out += render_training(result["training"])
    return "\n".join(out) + "\n"


def render_training(training: dict) -> list[str]:
    commit = training.get("commit")
    out = ["", f"Training environment (kohya sd-scripts at {training['sd_scripts']})",
           f"  checkout commit: {commit or 'unknown'}"
           + (f" ({training.get('commit_source')})" if training.get("commit_source") else "")
           + f"; the project was checked against {training['expected_commit']}",
           f"  Python: {training.get('python') or 'none found'}"
           + (f" ({training['python_version']})" if training.get("python_version") else "")]
    if training["packages"]:
        rows = [[p["import"], p["distribution"], p["pin"] or "-", p["installed"] or "-",
                 "yes" if p["importable"] else "no", p["status"]] for p in training["packages"]]
        out += _table(rows, ["import", "distribution", "pin", "installed", "imports", "status"])
        for p in training["packages"]:
            if p["import_error"] and p["installed"]:
                out.append(f"  {p['import']}: {p['import_error']}")
    for trap in training["traps"]:
        out.append(f"  [{trap['status']}] {trap['trap']}: {trap['detail']}")
    if training["warnings"]:
        out += ["  Warnings"] + [f"  - {w}" for w in training["warnings"]]
    out.append(f"  Problems ({len(training['problems'])})")
    if not training["problems"]:
        out.append("  none")
    for p in training["problems"]:
        tag = "" if p["pip_fixable"] else " [not fixable by pip]"
        out.append(f"  - {p['what']}: {p['detail']}{tag}")
    out += ["", "Fix, training environment (one line):"]
    if training["fix_command"]:
        out.append(training["fix_command"])
        out += [f"  note: {n}" for n in training["fix_notes"]]
    elif training["problems"]:
        out.append("  no command fixes these; see the problems above.")
    else:
        out.append("  Nothing needs fixing.")
    return out


# Copied from evals/scorecard.py:output_path_problem
def output_path_problem(path: Path, in_place: bool = False) -> str | None:
    """Why a file cannot be written at `path`, or None: checked before any work is done.

    `path` must not be a folder or a dangling link; the nearest existing folder above it must be
    a folder in which a file can be created (probed with a temporary file: permission bits do not
    tell the truth to root or on a read-only mount). With `in_place` (a file appended to, not
    replaced) an existing file must also open for appending. Nothing is created or changed.
    """
    path = Path(path)
    if path.is_dir():
        return "is a folder; give a file path"
    if path.is_symlink() and not path.exists():
        return "is a dangling symbolic link"
    if path.exists():
        if not path.is_file():
            return "exists and is not a regular file"
        if in_place:
            try:
                with open(path, "ab"):
                    pass
            except OSError as error:
                return f"cannot be written ({error.strerror or error})"
    folder = path.parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        return f"no file can be created in {folder} ({error.strerror or error})"
    return None


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-root", type=Path, default=None,
                        help="scan DIR/tools/*.py and DIR/evals/*.py and read "
                             "DIR/requirements-pod.txt instead of the embedded manifest "
                             "(default: the embedded manifest)")
    parser.add_argument("--print-manifest", action="store_true",
                        help="with --project-root: print the MANIFEST literal for this file and "
                             "exit, checking nothing (default: off)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the full report as JSON to PATH, a file in a writable "
                             "folder, checked before anything runs (default: none)")
    parser.add_argument("--allow-no-gpu", action="store_true",
                        help="do not count a missing GPU or a CPU-only torch as a problem, for "
                             "development machines (default: off, a pod must have a GPU)")
    parser.add_argument("--import-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="limit for each import subprocess (default: 120)")
    parser.add_argument("--sd-scripts", type=Path, default=Path(DEFAULT_SD_SCRIPTS), metavar="DIR",
                        help="the kohya sd-scripts checkout: its commit is compared with the one the "
                             "project was checked against, and its venv (DIR/venv or DIR/.venv) is "
                             f"the training environment (default: {DEFAULT_SD_SCRIPTS})")
    parser.add_argument("--training-python", default=None, metavar="PATH",
                        help="the training environment's Python (default: found under --sd-scripts)")
    parser.add_argument("--locks", type=Path, default=None, metavar="DIR",
                        help="folder holding requirements-training-py3*.lock, named in the fix line "
                             "(default: this script's folder, then its parent)")
    parser.add_argument("--skip-training", action="store_true",
                        help="check only the eval/caption environment (default: both)")
    return parser


def _main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.print_manifest and args.project_root is None:
        parser.error("--print-manifest needs --project-root (the tree to scan)")
    if args.import_timeout <= 0:
        parser.error("--import-timeout must be positive")
    if args.training_python is not None and args.skip_training:
        parser.error("--training-python conflicts with --skip-training")
    if args.locks is not None and not args.locks.is_dir():
        parser.error(f"--locks {args.locks} is not a folder")
    if args.json is not None:  # before any probe runs: minutes of checks must not end unwritten
        problem = output_path_problem(args.json)
        if problem is not None:
            parser.error(f"--json {args.json}: {problem}")
    # Absolute (symlinks kept): the probes run in this script's folder, not the current one.
    args.sd_scripts = args.sd_scripts.absolute()
    if args.training_python is not None:
        args.training_python = str(Path(args.training_python).absolute())
    if sys.version_info < (3, 10):
        print(f"error: Python {sys.version.split()[0]} is too old: this check needs 3.10+",
              file=sys.stderr)
        return 2
    scanned_files = None
    if args.project_root is not None:
        root = args.project_root.resolve()
        requirements = root / "requirements-pod.txt"
        if not root.is_dir():
            print(f"error: --project-root {args.project_root}: not a folder", file=sys.stderr)
            return 2
        if not requirements.is_file():
            print(f"error: {requirements} not found: --project-root must be the repository root",
                  file=sys.stderr)
            return 2
        if not any((root / folder).is_dir() for folder in PROJECT_DIRS):
            print(f"error: --project-root {args.project_root} has neither tools/ nor evals/",
                  file=sys.stderr)
            return 2
        scan_errors: list[str] = []
        scanned_files = scan_imports(root, scan_errors)
        manifest = build_manifest(scanned_files, parse_requirements(requirements))
        for message in scan_errors:
            print(f"warning: {message}", file=sys.stderr)
        if args.print_manifest:
            print(format_manifest(manifest))
            return 0
        source = f"scanned {root} ({len(manifest)} packages)"
    else:
        manifest = dict(MANIFEST)
        source = f"embedded ({len(manifest)} packages)"
    print(f"validate_pod_deps: checking {len(manifest)} packages with {sys.executable} ...",
          file=sys.stderr)
    result = check(manifest, scanned_files=scanned_files, allow_no_gpu=args.allow_no_gpu,
                   import_timeout=args.import_timeout,
                   progress=lambda message: print(f"  {message}", file=sys.stderr))
    result["manifest_source"] = source
    result["training"] = None
    if not args.skip_training:
        here = Path(__file__).resolve().parent
        folders = [args.locks] if args.locks is not None else [here, here.parent]
        if args.project_root is not None:
            folders.insert(0, args.project_root.resolve())
        print(f"validate_pod_deps: checking the training environment ({args.sd_scripts}) ...",
              file=sys.stderr)
        result["training"] = check_training(
            args.sd_scripts, args.training_python, import_timeout=args.import_timeout,
            lock_folders=folders, gpu=bool(result["gpu"]["gpus"]), allow_no_gpu=args.allow_no_gpu,
            progress=lambda message: print(f"  {message}", file=sys.stderr))
        result["ok"] = result["ok"] and result["training"]["ok"]
    sys.stdout.write(render(result, source))
    if args.json is not None:
        try:
            write_atomic(args.json, json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            print(f"error: --json {args.json}: cannot write ({exc})", file=sys.stderr)
            return 2
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if result["ok"] else 1


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a broken environment must never end in a traceback
        print(f"error: validate_pod_deps stopped: {type(exc).__name__}: {exc} "
              "(the environment could not be checked; please report this)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
