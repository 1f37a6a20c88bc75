"""Generate a LoRA sweep: fixed prompts x seeds per checkpoint x strength x CFG, plus a baseline.

The base model loads once (an SDXL `.safetensors` file through diffusers' `from_single_file`, or a
diffusers folder); every kohya sd-scripts LoRA in --lora-dir is swapped in without reloading the
base, and the strength is set without reloading the LoRA. The images are named the way
evals/scorecard.py groups them, one config per checkpoint x strength x CFG:
`step1500_str0.80_cfg4.0_p03_seed2.png`, and the baseline `baseline_cfg4.0_p03_seed2.png`.

Usage (on the pod):
    python3 tools/generate_sweep.py --base-model /workspace/models/sd_xl_base_1.0.safetensors \\
        --lora-dir /workspace/lora_v3 --trigger ohwx --out /workspace/sweep_results
    python3 tools/generate_sweep.py --base-model BASE --lora-dir DIR --trigger ohwx --out OUT \\
        --strengths 0.6,0.8,1.0 --cfg 4,7 --seeds 1,2,3 --steps 30 --size 1024 --checkpoints last
    python3 tools/generate_sweep.py ... --dry-run      # the plan, one line per image; loads nothing
Unattended, after each training (what tools/run_full_cycle.py --generate runs; the baseline and
earlier checkpoints already in --out are skipped, only the newest checkpoint is made):
    python3 tools/generate_sweep.py --base-model BASE --lora-dir DIR --trigger ohwx --out OUT \\
        --checkpoints last
Offline (no hub access): a single file needs its pipeline's config files; pass a folder that has
them (a diffusers SDXL folder, weights not needed) with --config DIR. Without --config, diffusers
downloads the *.json and *.txt files of stabilityai/stable-diffusion-xl-base-1.0 once (about 3 MB:
model_index.json, each component's config, the two CLIP tokenizers' vocab.json and merges.txt)
into the Hugging Face cache (HF_HOME), and later runs read them from there (HF_HUB_OFFLINE=1
works then); no weights are downloaded. A config folder for the pod, made where the hub is reached:
    huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0 --include "*.json" "*.txt" \\
        --local-dir /workspace/models/sdxl_config
A diffusers folder as --base-model needs nothing.
Tiny CPU run (a random-weight SDXL and LoRAs built by the tests; the images are noise):
    python3 -c "import sys; sys.path.insert(0, 'tests'); import tiny_sdxl; \\
        tiny_sdxl.build_demo('/tmp/tiny_sweep')"
    python3 tools/generate_sweep.py --base-model /tmp/tiny_sweep/tiny_sdxl.safetensors \\
        --config /tmp/tiny_sweep/tiny_sdxl_config --lora-dir /tmp/tiny_sweep/lora --trigger ohwx \\
        --out /tmp/tiny_sweep/out --size 64 --steps 2 --seeds 1 --cfg 4 --device cpu

Checkpoints: every `*.safetensors` in --lora-dir, named as sd-scripts names them (`NAME.safetensors`
the last, `NAME-stepNNNNNNNN.safetensors` step saves, `NAME-NNNNNN.safetensors` epoch saves). The
step comes from the file's sd-scripts metadata `ss_steps` (else from a -stepN name); a file that
only tells its epoch is labelled `epochN`. Key layouts: kohya's (lora_unet_input_blocks_... as
sd-scripts writes SDXL, or lora_unet_down_blocks_...), diffusers'/PEFT's (unet....lora_A.weight).
A LoRA for another base exits 2: told by its `ss_base_model_version`, else by the width its U-Net
cross-attention (attn2 to_k/to_v) reads, which must be the base model's (SDXL 2048; 768 is an
SD 1.x LoRA, 1024 SD 2.x), else by names only one model has (lora_te1_/lora_te2_ SDXL, lora_te_
SD 1.x/2.x, Flux blocks); a LoRA with none of these is decided by loading it. A non-LoRA or
corrupt file, or a LoRA whose keys do not all land on the base model (checked by loading it,
before any image is made), exits 2.
Each PNG carries A1111-style `parameters` text and a `generate_sweep` JSON chunk with the same
facts; `sweep.json` beside the images records the plan. An image already there for the same plan
entry (same prompt, seed, strength, CFG, steps, size, sampler, dtype, base and LoRA hashes) is
skipped, so an interrupted run continues where it stopped; an image of another plan at a planned
name is refused (exit 2) unless --overwrite, and so is a second run into an --out that a run is
writing (an OS file lock, `.generate_sweep.lock`). Same plan, same seed: same image on the same
hardware and library versions (the noise comes from a CPU generator, not from the GPU's).

On CUDA the default dtype is fp16 (SDXL's VAE decodes in fp32, diffusers upcasts it), attention
runs through PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels), VAE tiling
is switched on above 1024x1024 pixels; SDXL at 1024 then needs about 7 GB of weights plus the
activations, far inside 24 GB, so model CPU offload is off unless --cpu-offload. On CPU: fp32.
Flux bases are recognised and refused (exit 2): see --help of --base-model.

stdout: each image file written (dry run: one line per planned image, then the count).
stderr: progress bar (images/s, ETA), skipped images, warnings, errors, the summary.
Exit codes: 0 every planned image is there, 1 some images failed (non-finite pixels, out of
memory, interrupted), 2 usage or input error (missing or corrupt model or LoRA, wrong base,
a planned file name holding another plan's image, unwritable --out).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import struct
import sys
import tempfile
import time
from pathlib import Path

TOOL = "generate_sweep"
FORMAT_VERSION = 1

DEFAULT_PROMPTS = (
    "{trigger}, frontal portrait photo of a person looking straight at the camera, neutral "
    "expression, soft window light, 85mm lens",
    "{trigger}, three-quarter view portrait photo of a person, head turned slightly to the side, "
    "natural light, sharp focus",
    "{trigger}, side profile portrait photo of a person, looking to the right, plain grey background",
    "{trigger}, close-up photo of a person's face filling the frame, detailed skin texture, soft light",
    "{trigger}, half body photo of a person standing, casual shirt, arms relaxed, indoors",
    "{trigger}, photo of a person outdoors in a park, golden hour sunlight, shallow depth of field",
    "{trigger}, studio portrait photo of a person, rembrandt lighting, dark background",
    "{trigger}, candid photo of a person smiling broadly, bright daylight, city street behind",
)
DEFAULT_NEGATIVE = ("lowres, blurry, out of focus, deformed face, bad anatomy, cartoon, painting, "
                    "3d render, watermark, text")
DEFAULT_STRENGTHS = "0.6,0.8,1.0"
DEFAULT_CFG = "4,7"
DEFAULT_SEEDS = "1,2,3"
DEFAULT_STEPS = 30
DEFAULT_SIZE = "1024"
# name -> (diffusers scheduler class, extra config, A1111 sampler name, A1111 schedule type)
SAMPLERS = {
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M", "Karras"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False}, "DPM++ 2M", "Automatic"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler", "Automatic"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a", "Automatic"),
}
DEFAULT_SAMPLER = "dpmpp_2m_karras"
TILING_ABOVE_PIXELS = 1024 * 1024
# LoRAs (file bytes, all checkpoints of a sweep together) that stay loaded side by side.
KEEP_LORAS_BYTES = 2 * 1024**3
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# (down, up) tensor name endings of one LoRA module, in the layouts load_lora_weights reads:
# kohya sd-scripts, PEFT (diffusers' own trainers), diffusers' older lora.down / attn-processor form.
LORA_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
              (".lora.down.weight", ".lora.up.weight"), ("_lora.down.weight", "_lora.up.weight"))
LORA_SUFFIXES = tuple(end for pair in LORA_PAIRS for end in pair) + (
    ".alpha", ".dora_scale", ".lora_magnitude_vector")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
# A U-Net cross-attention key/value projection: its input is the text encoder's width.
CROSS_ATTENTION = re.compile(r"attn2[._](?:processor[._])?to_[kv](?:_lora)?$")
# Cross-attention width (the text embedding the U-Net reads) -> the model it belongs to.
WIDTH_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}
STEP_NAME = re.compile(r"^(?P<name>.+)-step(?P<step>\d+)$")
EPOCH_NAME = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})$")
PART_FILE = re.compile(r"^\..+\.png\.\d+\.part$")
PNG_JSON_KEY = "generate_sweep"
LOCK_NAME = ".generate_sweep.lock"


class InputError(Exception):
    """A usage or input problem (exit 2); the message is one clear line."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


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


# --------------------------------------------------------------------------- safetensors (stdlib)

def read_safetensors_header(path: Path) -> tuple[dict, dict, int]:
    """(tensors, metadata, header length) of a .safetensors file, read without torch.

    tensors: name -> {"dtype", "shape", "data_offsets"}; metadata: the `__metadata__` strings.
    Raises InputError naming the file when it is not a complete, well-formed safetensors file.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise InputError(f"{path}: not a safetensors file (only {size} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise InputError(f"{path}: not a safetensors file, or truncated (header of "
                                 f"{length} bytes in a file of {size})")
            raw = handle.read(length)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from error
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path}: corrupt safetensors header ({error})") from error
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise InputError(f"{path}: corrupt safetensors header (__metadata__ {key!r} is "
                             f"{type(value).__name__}, not a string)")
    data_size = size - 8 - length
    spans = []
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]
                or not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape)
                or not isinstance(info.get("dtype"), str)):
            raise InputError(f"{path}: corrupt safetensors header (tensor {name!r} is not "
                             f"{{dtype, shape, data_offsets}})")
        if offsets[1] > data_size:
            raise InputError(f"{path}: truncated: tensor {name!r} ends at byte {offsets[1]} of "
                             f"{data_size} data bytes")
        item = DTYPE_BYTES.get(info["dtype"])
        if item is not None and math.prod(shape) * item != offsets[1] - offsets[0]:
            claimed = "x".join(map(str, shape)) or "scalar"
            raise InputError(f"{path}: corrupt safetensors header (tensor {name!r}: shape "
                             f"{claimed[:60]} of {info['dtype']} needs {math.prod(shape) * item} "
                             f"bytes, its data_offsets give {offsets[1] - offsets[0]})")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for start, stop, name in sorted(spans):  # safetensors' own rule: contiguous, all bytes covered
        if start != end:
            raise InputError(f"{path}: corrupt safetensors header (tensor {name!r} starts at data "
                             f"byte {start}, the tensor before it ends at {end})")
        end = stop
    if end != data_size:
        raise InputError(f"{path}: corrupt safetensors file ({data_size - end} bytes after the "
                         f"last tensor)")
    return header, dict(metadata), length


def sha256_file(path: Path, start: int = 0, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(start)
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- model families

FAMILY_NAMES = {"sdxl": "SDXL", "sdxl_refiner": "the SDXL refiner", "sd1": "SD 1.x", "sd2": "SD 2.x",
                "flux": "Flux", "lora": "a LoRA",
                "other": "another model"}


def base_family_of_keys(keys) -> str | None:
    keys = list(keys)
    if any(k.startswith(("lora_unet_", "lora_te", "lora_transformer_")) for k in keys[:1000]):
        return "lora"

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("double_blocks.") or has("model.diffusion_model.double_blocks."):
        return "flux"
    if has("conditioner.embedders.1.model.") and has("model.diffusion_model."):
        return "sdxl"
    if has("conditioner.embedders.0.model.") and has("model.diffusion_model."):
        return "sdxl_refiner"
    if has("cond_stage_model.transformer.") and has("model.diffusion_model."):
        return "sd1"
    if has("cond_stage_model.model.") and has("model.diffusion_model."):
        return "sd2"
    return None


PIPELINE_FAMILIES = {"StableDiffusionXLPipeline": "sdxl", "FluxPipeline": "flux",
                     "StableDiffusionPipeline": "sd1",
                     "StableDiffusionXLImg2ImgPipeline": "sdxl_refiner"}


@dataclasses.dataclass
class Base:
    path: Path
    kind: str  # "single_file" | "diffusers"
    family: str
    name: str
    cross_attention_dim: int | None = None  # the U-Net's attn2 to_k input width, when readable


def base_cross_attention_dim(tensors: dict) -> int | None:
    """attn2.to_k's input width in an original-layout checkpoint's U-Net (SDXL: 2048)."""
    for name, info in tensors.items():
        if name.startswith("model.diffusion_model.") and name.endswith("attn2.to_k.weight"):
            shape = info["shape"]
            return shape[1] if len(shape) == 2 else None
    return None


def folder_cross_attention_dim(path: Path) -> int | None:
    """cross_attention_dim from a diffusers folder's unet/config.json, when it is one number."""
    try:
        value = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
        value = value.get("cross_attention_dim")
    except (OSError, ValueError, AttributeError):
        return None
    return value if type(value) is int else None


def inspect_base(path: Path) -> Base:
    """What --base-model is (a single file or a diffusers folder) and which model family."""
    if not path.exists():
        raise InputError(f"--base-model {path}: no such file or folder")
    if path.is_dir():
        index = path / "model_index.json"
        try:
            class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError, AttributeError) as error:
            raise InputError(f"--base-model {path}: a folder without a readable model_index.json "
                             f"(not a diffusers pipeline folder): {error}") from error
        family = PIPELINE_FAMILIES.get(class_name)
        if family is None:
            raise InputError(f"--base-model {path}: a {class_name} folder; this script sweeps "
                             f"StableDiffusionXLPipeline models")
        return Base(path, "diffusers", family, path.name, folder_cross_attention_dim(path))
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"--base-model {path}: only .safetensors files are loaded (a .ckpt or .pt "
                         f"file is a pickle, which can run code); convert it first")
    tensors, _, _ = read_safetensors_header(path)
    family = base_family_of_keys(tensors)
    if family is None:
        raise InputError(f"--base-model {path}: cannot tell which model this is (no SDXL, SD or Flux "
                         f"key layout among its {len(tensors)} tensors)")
    if family == "lora":
        raise InputError(f"--base-model {path}: this file is a LoRA, not a base model")
    return Base(path, "single_file", family, path.stem, base_cross_attention_dim(tensors))


def require_supported_base(base: Base) -> None:
    if base.family == "sdxl":
        return
    if base.family == "flux":
        raise InputError(
            f"--base-model {base.path} is a Flux model. Flux sweeps are not supported yet: a Flux "
            f"single file holds only the transformer (the CLIP-L/T5-XXL encoders and VAE come from "
            f"the gated FLUX.1-dev repository), its bf16 transformer (~24 GB) does not fit a 24 GB "
            f"GPU without quantisation, and none of this can be tested offline here. Use an SDXL base")
    raise InputError(f"--base-model {base.path} is {FAMILY_NAMES.get(base.family, base.family)}; this "
                     f"script sweeps SDXL LoRAs")


# --------------------------------------------------------------------------- checkpoints

SS_BASE_FAMILIES = (("sdxl", "sdxl"), ("sd_v1", "sd1"), ("sd_v2", "sd2"), ("flux", "flux"),
                    ("chroma", "flux"))


def lora_module(key: str) -> tuple[str, str] | None:
    """(module name, "down"/"up") of a LoRA weight tensor name; None for other tensors."""
    for down, up in LORA_PAIRS:
        if key.endswith(down):
            return key[: -len(down)], "down"
        if key.endswith(up):
            return key[: -len(up)], "up"
    return None


def cross_attention_widths(tensors: dict) -> set[int]:
    """The input widths of the LoRA's U-Net cross-attention to_k/to_v down weights."""
    widths = set()
    for key, info in tensors.items():
        module = lora_module(key)
        if module and module[1] == "down" and CROSS_ATTENTION.search(module[0]) and (
                len(info["shape"]) == 2 or info["shape"][2:] == [1, 1]):
            widths.add(info["shape"][1])
    return widths


def lora_family(tensors: dict, metadata: dict, base_family: str = "sdxl",
                base_width: int | None = None) -> tuple[str | None, str]:
    """(family, evidence) of a LoRA: sd-scripts' metadata, else its tensors.

    Without metadata the U-Net's cross-attention width tells the model (768 SD 1.x, 1024 SD 2.x,
    2048 SDXL; a width equal to the base model's fits it); without cross-attention layers, key
    names that only one model has (kohya's lora_te1_/lora_te2_ SDXL, lora_te_ SD 1.x/2.x, Flux
    blocks); else (`base_family`, ...) and loading it decides. None: not a U-Net/text-encoder LoRA.
    """
    version = metadata.get("ss_base_model_version", "")
    for prefix, family in SS_BASE_FAMILIES:
        if version.startswith(prefix):
            return family, f"ss_base_model_version={version}"
    names = {module[0] for module in map(lora_module, tensors) if module}
    if any(n.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for n in names):
        return "flux", "kohya Flux key names (lora_unet_double_blocks_...)"
    if any(n.startswith(("transformer.", "lora_transformer_")) for n in names):
        return "flux", "transformer.* key names (a Flux-style diffusion transformer)"
    if not any(n.startswith(KOHYA_PREFIXES + DIFFUSERS_PREFIXES) for n in names):
        return None, "neither kohya (lora_unet_..., lora_te1_...) nor diffusers (unet...) key names"
    widths = cross_attention_widths(tensors)
    if len(widths) > 1:
        raise InputError(f"cross-attention widths {', '.join(map(str, sorted(widths)))} in one file "
                         f"(a merge of LoRAs for different models)")
    if widths:
        (width,) = widths
        family = WIDTH_FAMILIES.get(width, "other")
        if base_width is None:
            return family, f"cross-attention width {width}"
        if width == base_width:
            return base_family, f"cross-attention width {width}, the base model's"
        return (family if family != base_family else "other"), (
            f"cross-attention width {width}; the base model's is {base_width}")
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
        return "sdxl", "no cross-attention layers; kohya SDXL key names lora_te1_/lora_te2_"
    if any(n.startswith("lora_te_") for n in names):
        return "sd1", ("no cross-attention layers; kohya names one text encoder lora_te_ only for "
                       "SD 1.x/2.x (SDXL's are lora_te1_/lora_te2_)")
    return base_family, "no cross-attention layers to tell the model by: loading it decides"


@dataclasses.dataclass
class Checkpoint:
    path: Path
    step: int | None
    epoch: int | None
    modules: int  # LoRA modules in the file (lora_down tensors)
    data_start: int  # where the tensor bytes start (for the A1111 LoRA hash)
    output_name: str

    @property
    def label(self) -> str:
        return f"step{self.step}" if self.step is not None else f"epoch{self.epoch}"

    @property
    def adapter(self) -> str:
        return self.label


def _int_or_none(text) -> int | None:
    try:
        value = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def read_checkpoint(path: Path, base_family: str, base_width: int | None = None) -> Checkpoint:
    tensors, metadata, header_length = read_safetensors_header(path)
    module_kind = metadata.get("ss_network_module", "networks.lora")
    odd = [key for key in tensors if not key.endswith(LORA_SUFFIXES)]
    if odd or not tensors:
        example = odd[0] if odd else "(no tensors)"
        raise InputError(f"{path}: not a kohya networks.lora LoRA (ss_network_module={module_kind}; "
                         f"e.g. tensor {example!r}); this script loads LoRA files only")
    modules = [lora_module(key) for key in tensors]
    names = {module[0] for module in modules if module and module[1] == "down"}
    ups = {module[0] for module in modules if module and module[1] == "up"}
    if names != ups or not names:
        broken = sorted(names ^ ups)[0] if names ^ ups else "(no lora_down/lora_A weights)"
        raise InputError(f"{path}: corrupt LoRA: {broken!r} lacks its lora_down or lora_up weight")
    try:
        family, evidence = lora_family(tensors, metadata, base_family, base_width)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    if family is None:
        raise InputError(f"{path}: not a LoRA for a Stable Diffusion U-Net or text encoder "
                         f"({evidence}, e.g. {sorted(names)[0]!r})")
    if family != base_family:
        raise InputError(f"{path}: a LoRA for {FAMILY_NAMES[family]} ({evidence}), but the base model "
                         f"is {FAMILY_NAMES[base_family]}")
    if evidence.endswith("loading it decides"):
        warn(f"{path.name}: no sd-scripts metadata and no cross-attention layers to tell its model "
             f"by; it is checked when it is loaded (every module must land on the base)")
    stem = path.stem
    step = _int_or_none(metadata.get("ss_steps"))
    epoch = _int_or_none(metadata.get("ss_epoch"))
    step_match, epoch_match = STEP_NAME.match(stem), EPOCH_NAME.match(stem)
    name_step = int(step_match["step"]) if step_match else None
    if step is None:
        step = name_step
    elif name_step is not None and name_step != step:
        warn(f"{path.name}: its name says step {name_step}, its metadata ss_steps={step}; using {step}")
    if epoch is None and epoch_match:
        epoch = int(epoch_match["epoch"])
    if step is None and epoch is None:
        raise InputError(f"{path}: cannot tell its training step (no ss_steps/ss_epoch metadata and "
                         f"the name is not NAME-stepNNNNNNNN or NAME-NNNNNN); rename it "
                         f"NAME-stepN.safetensors")
    output_name = metadata.get("ss_output_name") or (
        step_match["name"] if step_match else epoch_match["name"] if epoch_match else stem)
    return Checkpoint(path, step, epoch, len(names), 8 + header_length, output_name)


def find_checkpoints(lora_dir: Path, base_family: str,
                     base_width: int | None = None) -> list[Checkpoint]:
    """Every LoRA in the folder, one per label, sorted by step (then epoch)."""
    if not lora_dir.is_dir():
        raise InputError(f"--lora-dir {lora_dir}: not a folder")
    files = sorted(p for p in lora_dir.iterdir() if p.suffix.lower() == ".safetensors" and p.is_file())
    for other in sorted(lora_dir.iterdir()):
        if other.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin") and other.is_file():
            warn(f"ignored {other.name}: only .safetensors LoRAs are read (pickle files can run code)")
    if not files:
        raise InputError(f"--lora-dir {lora_dir}: no LoRA .safetensors files in it")
    by_label: dict[str, Checkpoint] = {}
    for path in files:
        checkpoint = read_checkpoint(path, base_family, base_width)
        seen = by_label.get(checkpoint.label)
        if seen is None:
            by_label[checkpoint.label] = checkpoint
            continue
        if seen.output_name != checkpoint.output_name:
            raise InputError(f"{seen.path.name} and {path.name} are both {checkpoint.label} of different "
                             f"training runs ({seen.output_name}, {checkpoint.output_name}); give "
                             f"--lora-dir a folder of one run")
        # sd-scripts saves the last step twice (NAME-stepN and NAME): keep the final file.
        keep = checkpoint if not STEP_NAME.match(path.stem) and not EPOCH_NAME.match(path.stem) else seen
        drop = seen if keep is checkpoint else checkpoint
        warn(f"{drop.path.name} and {keep.path.name} are both {checkpoint.label}; using {keep.path.name}")
        by_label[checkpoint.label] = keep
    return sorted(by_label.values(), key=lambda c: (c.step is None, c.step or 0, c.epoch or 0))


def select_checkpoints(checkpoints: list[Checkpoint], spec: str) -> list[Checkpoint]:
    spec = spec.strip()
    if spec == "all":
        return checkpoints
    if spec == "last":
        return checkpoints[-1:]
    wanted = []
    for token in spec.split(","):
        token = token.strip().lower()
        label = f"step{int(token)}" if token.isdigit() else token
        if not re.fullmatch(r"(step|epoch)\d+", label):
            raise InputError(f"--checkpoints {spec}: {token!r} is not a step number, epochN, 'all' or 'last'")
        wanted.append(label)
    available = {c.label: c for c in checkpoints}
    missing = [label for label in wanted if label not in available]
    if missing:
        raise InputError(f"--checkpoints: no LoRA for {', '.join(missing)}; the folder has "
                         f"{', '.join(available)}")
    return [available[label] for label in dict.fromkeys(wanted)]


# --------------------------------------------------------------------------- the plan

def format_strength(value: float) -> str:
    return f"{value:.2f}"


def format_cfg(value: float) -> str:
    text = f"{value:.1f}"
    return text if float(text) == value else f"{value:.2f}"


@dataclasses.dataclass
class Entry:
    file: str
    config: str
    checkpoint: Checkpoint | None
    strength: float
    cfg: float
    prompt_index: int  # 1-based
    prompt: str
    seed: int
    entry_id: str = ""
    status: str = "planned"


def build_plan(checkpoints: list[Checkpoint], prompts: list[str], *, strengths, cfgs, seeds,
               baseline: bool) -> list[Entry]:
    plan = []
    groups = ([(None, 0.0)] if baseline else []) + [(c, s) for c in checkpoints for s in strengths]
    for checkpoint, strength in groups:
        for cfg in cfgs:
            config = (f"baseline_cfg{format_cfg(cfg)}" if checkpoint is None else
                      f"{checkpoint.label}_str{format_strength(strength)}_cfg{format_cfg(cfg)}")
            for index, prompt in enumerate(prompts, start=1):
                for seed in seeds:
                    plan.append(Entry(f"{config}_p{index:02d}_seed{seed}.png", config, checkpoint,
                                      strength, cfg, index, prompt, seed))
    return plan


def entry_facts(entry: Entry, settings: dict, hashes: dict) -> dict:
    """Everything that decides the pixels of one image (its identity for resuming)."""
    checkpoint = entry.checkpoint
    return {
        "prompt": entry.prompt, "negative_prompt": settings["negative"], "seed": entry.seed,
        "steps": settings["steps"], "cfg": entry.cfg, "width": settings["width"],
        "height": settings["height"], "sampler": settings["sampler"], "dtype": settings["dtype"],
        "model_hash": hashes.get("base"),
        "lora_hash": hashes.get(str(checkpoint.path)) if checkpoint else None,
        "strength": entry.strength if checkpoint else None, "format": FORMAT_VERSION,
    }


def entry_id(facts: dict) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def a1111_parameters(entry: Entry, settings: dict, base: Base, hashes: dict) -> str:
    """The `parameters` text A1111 writes (prompt, negative prompt, then one line of settings)."""
    _, _, sampler_name, schedule = SAMPLERS[settings["sampler"]]
    prompt = entry.prompt
    fields = [f"Steps: {settings['steps']}", f"Sampler: {sampler_name}", f"Schedule type: {schedule}",
              f"CFG scale: {format_cfg(entry.cfg)}", f"Seed: {entry.seed}",
              f"Size: {settings['width']}x{settings['height']}",
              f"Model hash: {hashes['base'][:10]}", f"Model: {base.name}"]
    if entry.checkpoint is not None:
        lora_name = entry.checkpoint.path.stem
        prompt = f"{prompt} <lora:{lora_name}:{format_strength(entry.strength)}>"
        fields.append(f'Lora hashes: "{lora_name}: {hashes[str(entry.checkpoint.path)][:12]}"')
    fields.append(f"Version: {TOOL} {FORMAT_VERSION}")
    return f"{prompt}\nNegative prompt: {settings['negative']}\n" + ", ".join(fields)


# --------------------------------------------------------------------------- argument parsing

def parse_number_list(text: str, flag: str, kind=float, low=None, high=None) -> list:
    values = []
    for token in text.split(","):
        token = token.strip()
        try:
            value = kind(token)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: {token!r} is not a number") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: {token!r} is not finite")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: {token} is outside {low}..{high}")
        if value in values:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: {token} is repeated")
        values.append(value)
    return values


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"--size {text!r}: give N or WIDTHxHEIGHT, e.g. 1024 or 832x1216")
    width = int(match[1])
    height = int(match[2]) if match[2] else width
    for value in (width, height):
        if value % 8 or not 64 <= value <= 4096:
            raise argparse.ArgumentTypeError(f"--size {text!r}: sides must be multiples of 8 in 64..4096")
    return width, height


def read_prompts(path: Path | None, trigger: str) -> list[str]:
    if path is None:
        lines = list(DEFAULT_PROMPTS)
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise InputError(f"--prompts {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"--prompts {path}: cannot read as UTF-8 text ({error})") from error
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if not lines:
            raise InputError(f"--prompts {path}: no prompts in it (one a line; # starts a comment)")
    prompts = []
    for number, line in enumerate(lines, start=1):
        if "{trigger}" not in line:
            warn(f"prompt {number} has no {{trigger}}: {line[:60]!r}")
        prompts.append(line.replace("{trigger}", trigger))
    return prompts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", type=Path, required=True,
                        help="SDXL base: a .safetensors single file (original layout, e.g. "
                             "sd_xl_base_1.0.safetensors) or a diffusers folder (required). Flux "
                             "bases are recognised and refused")
    parser.add_argument("--lora-dir", type=Path, required=True,
                        help="folder of LoRA .safetensors files: sd-scripts' (with or without its "
                             "metadata) or diffusers/PEFT format (required)")
    parser.add_argument("--trigger", required=True,
                        help="trigger word put where prompts say {trigger} (required)")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the images and sweep.json (required)")
    parser.add_argument("--config", type=Path, default=None,
                        help="diffusers-format folder with the pipeline's config and tokenizer files, "
                             "for a single-file base without hub access (default: diffusers fetches "
                             "them from the hub once)")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="text file, one prompt a line with {trigger}; blank lines and lines "
                             "starting with # are skipped (default: the 8 built-in portrait prompts)")
    parser.add_argument("--negative", default=DEFAULT_NEGATIVE,
                        help=f"negative prompt (default: {DEFAULT_NEGATIVE!r})")
    parser.add_argument("--strengths", default=DEFAULT_STRENGTHS,
                        help=f"LoRA strengths, comma-separated, 0..4 (default: {DEFAULT_STRENGTHS})")
    parser.add_argument("--cfg", default=DEFAULT_CFG,
                        help=f"CFG scales, comma-separated, 0..30 (default: {DEFAULT_CFG})")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS,
                        help=f"seeds, comma-separated (default: {DEFAULT_SEEDS})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"sampling steps per image (default: {DEFAULT_STEPS})")
    parser.add_argument("--size", default=DEFAULT_SIZE,
                        help=f"image size, N or WIDTHxHEIGHT, multiples of 8 (default: {DEFAULT_SIZE})")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default=DEFAULT_SAMPLER,
                        help=f"sampler (default: {DEFAULT_SAMPLER}, A1111's DPM++ 2M Karras)")
    parser.add_argument("--checkpoints", default="all",
                        help="all, last, or steps such as 1500,2000 (epochN for epoch-only saves) "
                             "(default: all)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the base model without LoRA (default: the baseline is made)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto = cuda when available, else cpu (default: auto)")
    parser.add_argument("--dtype", choices=["auto", "fp16", "bf16", "fp32"], default="auto",
                        help="auto = fp16 on CUDA, fp32 on CPU (default: auto)")
    parser.add_argument("--cpu-offload", action="store_true",
                        help="diffusers model CPU offload, for GPUs under 16 GB; slower (default: off)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace images at planned names that another plan made (default: refuse)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (one line per image, then the count) and load nothing")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        args.strength_list = parse_number_list(args.strengths, "--strengths", float, 0.0, 4.0)
        args.cfg_list = parse_number_list(args.cfg, "--cfg", float, 0.0, 30.0)
        args.seed_list = parse_number_list(args.seeds, "--seeds", int, 0, 2**32 - 1)
        args.width, args.height = parse_size(args.size)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    for value in args.strength_list:
        if round(value, 2) != value:
            parser.error(f"--strengths: {value} has more than two decimals (file names carry two)")
    for value in args.cfg_list:
        if round(value, 2) != value:
            parser.error(f"--cfg: {value} has more than two decimals")
    if not 1 <= args.steps <= 500:
        parser.error(f"--steps {args.steps}: give 1..500")
    if not args.trigger.strip() or any(c in args.trigger for c in "\r\n{}"):
        parser.error("--trigger must be a non-empty word without newlines or braces")
    if args.device == "cpu" and args.dtype in ("fp16", "bf16"):
        parser.error(f"--dtype {args.dtype} with --device cpu: CPU inference runs in fp32 "
                     f"(--dtype fp32 or auto)")
    if args.device == "cpu" and args.cpu_offload:
        parser.error("--cpu-offload with --device cpu: offload moves models to a GPU and back")
    if args.config is not None and not args.config.is_dir():
        parser.error(f"--config {args.config}: not a folder")


# --------------------------------------------------------------------------- the sweep file

def load_previous_sweep(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError) as error:
        warn(f"{path} is unreadable ({error}); it will be rewritten")
        return {}


def cached_hash(path: Path, cache: dict, *, start: int = 0) -> str:
    """sha256 of a file (from byte `start`), reused from sweep.json while size and mtime match."""
    stat = path.stat()
    key = f"{path.resolve()}@{start}"
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("size") == stat.st_size and hit.get("mtime_ns") == stat.st_mtime_ns:
        return hit["sha256"]
    digest = sha256_file(path, start)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    return digest


def base_hash(base: Base, cache: dict) -> str:
    """A1111's model hash input: sha256 of the file; for a folder, of its weight files' hashes."""
    if base.kind == "single_file":
        return cached_hash(base.path, cache)
    digest = hashlib.sha256()
    for weight in sorted(base.path.rglob("*.safetensors")):
        relative = weight.relative_to(base.path).as_posix()
        digest.update(f"{relative}\0{cached_hash(weight, cache)}\n".encode("utf-8"))
    return digest.hexdigest()


def sweep_record(args, base: Base, checkpoints, plan, settings, hashes, cache, extra=None) -> dict:
    record = {
        "tool": TOOL, "format": FORMAT_VERSION,
        "base_model": {"path": str(base.path), "kind": base.kind, "family": base.family,
                       "sha256": hashes.get("base")},
        "config": str(args.config) if args.config else None,
        "loras": [{"file": str(c.path), "label": c.label, "step": c.step, "epoch": c.epoch,
                   "modules": c.modules, "sha256_tensors": hashes.get(str(c.path))} for c in checkpoints],
        "settings": settings,
        "count": len(plan),
        "images": [{"file": e.file, "config": e.config, "entry_id": e.entry_id, "status": e.status,
                    "checkpoint": e.checkpoint.label if e.checkpoint else None,
                    "strength": e.strength if e.checkpoint else None, "cfg": e.cfg,
                    "prompt_index": e.prompt_index, "prompt": e.prompt, "seed": e.seed} for e in plan],
        "hash_cache": cache,
    }
    record.update(extra or {})
    return record


def existing_facts(path: Path) -> dict | None:
    """The facts in a PNG's generate_sweep chunk; None when absent or unreadable (not ours)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            data = json.loads(image.info.get(PNG_JSON_KEY, "null"))
    except Exception:  # any unreadable file is "not ours"
        return None
    return data if isinstance(data, dict) else None


def describe_difference(found: dict | None, facts: dict) -> str:
    if found is None:
        return "not made by this script"
    changed = [key for key in sorted(facts) if found.get(key) != facts[key]]
    if not changed:
        return "another plan"
    key = changed[0]
    return f"another plan: {key} {found.get(key)!r} -> {facts[key]!r}" + (
        f" (+{len(changed) - 1} more)" if len(changed) > 1 else "")


# --------------------------------------------------------------------------- torch part

def resolve_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was given but torch sees no CUDA device; use --device cpu")
    return name


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        name = "fp16" if device == "cuda" else "fp32"
    return name, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def error_summary(error: BaseException, limit: int = 300) -> str:
    """`Type: first line` of an exception, plus the next line when the first ends with a colon."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_pipeline(base: Base, config: Path | None, torch_dtype):
    from diffusers import StableDiffusionXLPipeline

    try:
        if base.kind == "diffusers":
            variant = None
            if not (base.path / "unet" / "diffusion_pytorch_model.safetensors").is_file() and \
                    (base.path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file():
                variant = "fp16"
            return StableDiffusionXLPipeline.from_pretrained(
                base.path, torch_dtype=torch_dtype, use_safetensors=True, local_files_only=True,
                variant=variant, add_watermarker=False)
        kwargs = {"config": str(config)} if config else {}
        # add_watermarker=False: where the invisible-watermark package happens to be installed,
        # diffusers would otherwise stamp every image (pixels that differ between machines).
        return StableDiffusionXLPipeline.from_single_file(
            str(base.path), torch_dtype=torch_dtype, local_files_only=config is not None,
            add_watermarker=False, **kwargs)
    except Exception as error:  # diffusers raises many kinds; each is "cannot load this base"
        hint = "" if config or base.kind == "diffusers" else (
            " (a single file needs its pipeline's config files: offline, pass --config DIR)")
        raise InputError(f"cannot load --base-model {base.path}: {error_summary(error)}{hint}") from error


def set_sampler(pipe, name: str) -> None:
    import diffusers

    class_name, extra, _, _ = SAMPLERS[name]
    scheduler_class = getattr(diffusers, class_name)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **extra)


def injected_modules(pipe, adapter: str) -> int:
    """How many layers of the pipeline carry this adapter (peft LoRA layers)."""
    count = 0
    for component in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        for module in component.modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is not None and hasattr(lora_a, "keys") and adapter in lora_a.keys():
                count += 1
    return count


def load_lora(pipe, checkpoint: Checkpoint) -> None:
    """Load one LoRA as adapter `checkpoint.adapter`; InputError unless every module landed."""
    from diffusers.utils import logging as diffusers_logging

    # diffusers logs a failed load at error level (every mismatched tensor, one a line) and then
    # raises; the InputError below says it in one line.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    try:
        pipe.load_lora_weights(str(checkpoint.path.parent), weight_name=checkpoint.path.name,
                               adapter_name=checkpoint.adapter)
    except Exception as error:
        raise InputError(f"{checkpoint.path}: its keys do not fit the base model "
                         f"({error_summary(error)})") from error
    finally:
        diffusers_logging.set_verbosity(verbosity)
    landed = injected_modules(pipe, checkpoint.adapter)
    if landed != checkpoint.modules:
        with contextlib.suppress(Exception):
            pipe.delete_adapters(checkpoint.adapter)
        raise InputError(f"{checkpoint.path}: only {landed} of its {checkpoint.modules} LoRA modules "
                         f"match layers of the base model; it was trained on another model")


def warn_long_prompts(pipe, settings: dict) -> None:
    """Once per prompt: CLIP reads 77 tokens; the rest of a longer prompt is ignored."""
    tokenizer = pipe.tokenizer
    limit = tokenizer.model_max_length
    texts = [(f"prompt {n}", text) for n, text in enumerate(settings["prompts"], start=1)]
    texts.append(("--negative", settings["negative"]))
    for name, text in texts:
        count = len(tokenizer(text, truncation=False).input_ids)
        if count > limit:
            warn(f"{name} is {count} CLIP tokens; only the first {limit} are read: {text[:60]!r}...")


def to_uint8(array):
    import numpy as np

    return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def save_png(path: Path, pixels, parameters: str, facts: dict) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_itxt(PNG_JSON_KEY, json.dumps(facts, sort_keys=True))
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        Image.fromarray(pixels).save(temp, format="PNG", pnginfo=info)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def library_versions() -> dict:
    from importlib import metadata

    versions = {}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


# --------------------------------------------------------------------------- main

def plan_only(args, base: Base, checkpoints: list[Checkpoint], plan: list[Entry]) -> int:
    for entry in plan:
        lora = entry.checkpoint.path.name if entry.checkpoint else "-"
        print(f"{entry.file}\t{lora}\tstrength={entry.strength if entry.checkpoint else '-'}\t"
              f"cfg={format_cfg(entry.cfg)}\tseed={entry.seed}\tprompt={entry.prompt}")
    baseline = sum(1 for e in plan if e.checkpoint is None)
    print(f"{len(plan)} images: {baseline} baseline + {len(plan) - baseline} from "
          f"{len(checkpoints)} checkpoint(s) ({', '.join(c.label for c in checkpoints)}); "
          f"base {base.path.name}, nothing loaded (dry run)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        return run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args) -> int:
    base = inspect_base(args.base_model)
    require_supported_base(base)
    found = find_checkpoints(args.lora_dir, base.family, base.cross_attention_dim)
    checkpoints = select_checkpoints(found, args.checkpoints)
    prompts = read_prompts(args.prompts, args.trigger.strip())
    plan = build_plan(checkpoints, prompts, strengths=args.strength_list, cfgs=args.cfg_list,
                      seeds=args.seed_list, baseline=not args.no_baseline)
    if args.dry_run:
        return plan_only(args, base, checkpoints, plan)

    out = args.out
    sweep_path = out / "sweep.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {out}: cannot create ({error.strerror or error})") from error
    if not out.is_dir():
        raise InputError(f"--out {out}: not a folder")
    from filelock import FileLock, Timeout

    # One run per output folder: a second one would make the same images twice. The OS lock goes
    # with the process, so a killed run leaves no stale lock.
    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"--out {out}: another generate_sweep.py run is writing there "
                         f"({LOCK_NAME} is locked); wait for it or use another --out") from None
    except OSError as error:
        raise InputError(f"--out {out}: cannot create its lock file ({error.strerror or error})") from error
    try:
        return run_locked(args, base, checkpoints, plan, prompts, out, sweep_path)
    finally:
        lock.release()


def run_locked(args, base, checkpoints, plan, prompts, out: Path, sweep_path: Path) -> int:
    previous = load_previous_sweep(sweep_path)
    cache = previous.get("hash_cache") if isinstance(previous.get("hash_cache"), dict) else {}
    print(f"hashing {base.path.name} and {len(checkpoints)} LoRA(s)...", file=sys.stderr)
    hashes = {"base": base_hash(base, cache)}
    for checkpoint in checkpoints:
        hashes[str(checkpoint.path)] = cached_hash(checkpoint.path, cache, start=checkpoint.data_start)

    # Device and dtype are settled before the plan is fixed: the dtype is part of every entry.
    device = resolve_device(args.device)
    dtype_name, torch_dtype = resolve_dtype(args.dtype, device)
    settings = {"trigger": args.trigger.strip(), "prompts": prompts, "negative": args.negative,
                "strengths": args.strength_list, "cfg": args.cfg_list, "seeds": args.seed_list,
                "steps": args.steps, "width": args.width, "height": args.height,
                "sampler": args.sampler, "dtype": dtype_name, "device": device,
                "baseline": not args.no_baseline, "cpu_offload": args.cpu_offload}
    conflicts = []
    for entry in plan:
        facts = entry_facts(entry, settings, hashes)
        entry.entry_id = entry_id(facts)
        target = out / entry.file
        if target.exists() or target.is_symlink():
            found = existing_facts(target)
            if found is not None and found.get("entry_id") == entry.entry_id:
                entry.status = "done"
            elif not args.overwrite:
                conflicts.append(f"{entry.file} ({describe_difference(found, facts)})")
    if conflicts:
        raise InputError(f"--out {out}: {len(conflicts)} planned file(s) already hold another image, "
                         f"e.g. {conflicts[0]}; use --overwrite to replace them, or another --out")
    for stale in out.iterdir():
        if PART_FILE.match(stale.name):
            with contextlib.suppress(OSError):
                stale.unlink()
    started = time.time()
    try:
        write_atomic(sweep_path, json.dumps(sweep_record(args, base, checkpoints, plan, settings,
                                                         hashes, cache), indent=2) + "\n")
    except OSError as error:
        raise InputError(f"--out {out}: cannot write {sweep_path.name} "
                         f"({error.strerror or error})") from error
    todo = [entry for entry in plan if entry.status != "done"]
    done_before = len(plan) - len(todo)
    if done_before:
        print(f"skipped (already there, same plan entry): {done_before}", file=sys.stderr)
    if not todo:
        print(f"all {len(plan)} images are already in {out}; nothing to do", file=sys.stderr)
        return 0
    return generate(args, base, checkpoints, plan, todo, settings, hashes, cache, device,
                    torch_dtype, sweep_path, started)


def generate(args, base, checkpoints, plan, todo, settings, hashes, cache, device, torch_dtype,
             sweep_path: Path, started: float) -> int:
    import warnings

    import numpy as np
    import torch
    from diffusers.utils import logging as diffusers_logging
    from tqdm import tqdm
    from transformers.utils import logging as transformers_logging

    # diffusers and transformers warn per call (a truncated prompt on every image, "no LoRA keys
    # for the text encoder" for every U-Net-only LoRA, peft's "multiple adapters"); the checks
    # here say the same once, or more precisely.
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
    print(f"loading {base.path} ({base.kind}, {settings['dtype']} on {device})...", file=sys.stderr)
    load_start = time.perf_counter()
    pipe = load_pipeline(base, args.config, torch_dtype)
    set_sampler(pipe, args.sampler)
    pipe.set_progress_bar_config(disable=True)
    warn_long_prompts(pipe, settings)
    if args.width * args.height > TILING_ABOVE_PIXELS:
        pipe.vae.enable_tiling()
    needed = [c for c in checkpoints if any(e.checkpoint is c for e in todo)]
    # Every LoRA that will be used is loaded and checked before the first image. The baseline is
    # made on the bare base (no LoRA layers at all), then the LoRAs are loaded again: all of them
    # side by side when they are small together (a switch is then set_adapters alone), else one
    # at a time, unloaded after its images.
    keep = sum(c.path.stat().st_size for c in needed) <= KEEP_LORAS_BYTES
    baseline_todo = any(e.checkpoint is None for e in todo)
    for checkpoint in needed:
        load_lora(pipe, checkpoint)
    loaded: list[Checkpoint] = list(needed)
    if needed and (baseline_todo or not keep):
        pipe.unload_lora_weights()
        loaded = []
    if needed:
        mode = "kept loaded side by side" if keep else (
            f"loaded one at a time (together over {KEEP_LORAS_BYTES >> 20} MiB)")
        print(f"{len(needed)} LoRA(s) checked: every module lands on the base; {mode}", file=sys.stderr)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load_seconds = time.perf_counter() - load_start
    versions = library_versions()

    made = failed = 0
    interrupted = False
    active: Checkpoint | None = None
    applied = None  # (adapter, strength) last given to set_adapters
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]")
    try:
        for entry in todo:
            if entry.checkpoint is not active or (active is None and loaded):
                active = entry.checkpoint
                if active is None or not keep:
                    if loaded:
                        pipe.unload_lora_weights()
                        loaded, applied = [], None
                if active is not None and active not in loaded:
                    for checkpoint in (needed if keep else [active]):
                        load_lora(pipe, checkpoint)
                    loaded = list(needed) if keep else [active]
            if active is not None and applied != (active.adapter, entry.strength):
                pipe.set_adapters([active.adapter], adapter_weights=[entry.strength])
                applied = (active.adapter, entry.strength)
            bar.set_description(entry.config, refresh=False)
            generator = torch.Generator("cpu").manual_seed(entry.seed)
            try:
                result = pipe(prompt=entry.prompt, negative_prompt=settings["negative"],
                              num_inference_steps=args.steps, guidance_scale=entry.cfg,
                              width=args.width, height=args.height, generator=generator,
                              output_type="np")
            except torch.cuda.OutOfMemoryError:
                bar.close()
                print(f"error: out of GPU memory at {entry.file}; try --cpu-offload or a smaller --size",
                      file=sys.stderr)
                entry.status = "failed"
                failed += 1
                break
            image = np.asarray(result.images[0], dtype=np.float32)
            if not np.isfinite(image).all():
                entry.status = "failed"
                failed += 1
                bar.write(f"failed: {entry.file}: the image has non-finite pixels (NaN/inf); not saved",
                          file=sys.stderr)
                bar.update(1)
                continue
            facts = entry_facts(entry, settings, hashes)
            facts.update({"entry_id": entry.entry_id, "file": entry.file, "config": entry.config,
                          "prompt_index": entry.prompt_index, "model": base.name,
                          "lora": entry.checkpoint.path.name if entry.checkpoint else None,
                          "checkpoint": entry.checkpoint.label if entry.checkpoint else None,
                          "device": device, "versions": versions})
            try:
                save_png(args.out / entry.file, to_uint8(image),
                         a1111_parameters(entry, settings, base, hashes), facts)
            except OSError as error:
                bar.close()
                raise InputError(f"cannot write {args.out / entry.file}: "
                                 f"{error.strerror or error}") from error
            entry.status = "done"
            made += 1
            print(entry.file, flush=True)
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        extra = {"versions": library_versions(), "load_seconds": round(load_seconds, 3),
                 "run_seconds": round(time.time() - started, 3)}
        if device == "cuda":
            extra["peak_cuda_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        with contextlib.suppress(OSError):
            write_atomic(sweep_path, json.dumps(sweep_record(args, base, checkpoints, plan, settings,
                                                             hashes, cache, extra), indent=2) + "\n")
    remaining = sum(1 for e in plan if e.status != "done")
    peak = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            if device == "cuda" else "")
    print(f"made {made}, skipped {len(plan) - len(todo)}, failed {failed}, left {remaining} of "
          f"{len(plan)}{peak}; plan: {sweep_path}", file=sys.stderr)
    if interrupted:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 1
    return 0 if remaining == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
