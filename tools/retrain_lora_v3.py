"""Train the v3 identity LoRA with kohya sd-scripts (SDXL or Flux), checking the flags before launch.

Builds the sd-scripts command (sdxl_train_network.py, or flux_train_network.py with
--model-type flux), writes the dataset TOML and training_params.json into the output folder, and
runs it through `accelerate launch`. Two layers of checks before anything is launched:
- its own rules: every combination sd-scripts (or Prodigy) refuses, many only after minutes of
  model loading, is refused here (exit 2), naming the flags and the upstream file:line that
  raises (UPSTREAM below); what sd-scripts accepts but silently ignores is a warning;
- the upstream check, whenever --sd-scripts is a real checkout: the final command line goes
  through sd-scripts' own setup_parser()/parse_args(), verify_training_args, the dataset config
  validation, the trainer's assert_extra_args, get_optimizer and get_scheduler_fix, in the
  training interpreter (--python, default the sd-scripts venv), as a subprocess: seconds, no model
  loaded. A typo in --extra-arg, or anything else sd-scripts refuses, exits 2 with its message
  and file:line. --skip-upstream-check turns it off.

The v3 recipe (the defaults): Prodigy (--optimizer_type prodigy, --learning_rate 1.0,
decouple=True weight_decay=0.01 use_bias_correction=True safeguard_warmup=True d_coef=1.0),
constant scheduler, latents cached to disk, U-Net-only training with cached text-encoder outputs,
xformers on SDXL / SDPA on Flux, bf16 mixed precision and saves, gradient checkpointing. Flux
adds fp8 base weights, guidance 1.0, shift timestep sampling and raw model prediction. With
another --optimizer-type, --weight-decay still reaches it (--optimizer_args weight_decay=...).

Usage (on the pod):
    python3 tools/retrain_lora_v3.py --base-model /workspace/models/sd_xl_base_1.0.safetensors \\
        --images /workspace/training_images --trigger ohwx --output /workspace/lora_v3 \\
        --sd-scripts /workspace/sd-scripts
    python3 tools/retrain_lora_v3.py --model-type flux --base-model /workspace/models/flux1-dev.safetensors \\
        --clip-l /workspace/models/clip_l.safetensors --t5xxl /workspace/models/t5xxl_fp16.safetensors \\
        --ae /workspace/models/ae.safetensors --images /workspace/training_images --trigger ohwx \\
        --output /workspace/lora_v3_flux --sd-scripts /workspace/sd-scripts
    python3 tools/retrain_lora_v3.py --config lora_v3.toml          # same keys as the flags
    python3 tools/retrain_lora_v3.py --print-cmd ... --sd-scripts /workspace/sd-scripts \\
        --extra-arg="--noise_ofset 0.05"      # exit 2: sd-scripts' parser: unrecognized arguments
Tiny CPU run (no GPU, torch or sd-scripts needed; prints the exact command, launches nothing,
missing paths become warnings):
    python3 tools/retrain_lora_v3.py --print-cmd --base-model base.safetensors --images imgs \\
        --trigger ohwx --output out
    python3 tools/retrain_lora_v3.py --print-cmd --base-model b --images i --trigger t --output o \\
        --cache_text_encoder_outputs --text_encoder_lr 1e-5        # exit 2, names both flags

Flags that decide a check also take kohya's spelling (--text_encoder_lr, --network_train_unet_only,
--cache_text_encoder_outputs, ...); booleans have --no-... forms. Any other sd-scripts flag goes
through --extra-arg="--noise_offset 0.05" (repeatable; write it with `=`, since the value starts
with a dash) and is checked too: by the rules above, and by sd-scripts' own parser.
The sd-scripts venv (README.md, "On the pod"): found as SD_SCRIPTS/venv or SD_SCRIPTS/.venv, else
pass --python PATH; the project was checked against sd-scripts commit SD_SCRIPTS_COMMIT below.
--dry-run validates strictly, writes the dataset TOML and training_params.json, prints the command
and does not launch. --launcher python runs the sd-scripts file with this Python, without accelerate.
Config file (--config): TOML (Python 3.11+, or `pip install tomli` on 3.10) or JSON, a flat table
whose keys are the flag names (dashes or underscores); flags on the command line win.
Relative paths are made absolute first (sd-scripts runs with its checkout as working folder).
Exit codes: 0 launched and training finished with a LoRA file written (or --print-cmd/--dry-run),
1 training failed or sd-scripts exited 0 without writing a LoRA file, 2 usage error, a conflicting
flag pair, a missing input, or an image folder in which sd-scripts finds no training image.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT_FOR = {"sdxl": "sdxl_train_network.py", "flux": "flux_train_network.py"}
NETWORK_MODULE_FOR = {"sdxl": "networks.lora", "flux": "networks.lora_flux"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what sd-scripts' datasets read
PRODIGY_LR_RANGE = (0.5, 2.0)  # "near 1.0": Prodigy estimates the step size; lr only scales it
FLUX_MAX_BLOCKS_TO_SWAP = 35  # 19 double + 38 single blocks: n//2 <= 17 and (n - n//2)*2 <= 36

# The v3 recipe. Keys are this script's setting names (= kohya's option names where one exists).
# known_failures.py (training_flag_test) checks the commands these defaults produce.
V3_RECIPE = {
    "common": {
        "resolution": 1024,
        "steps": 1500,
        "save_every": 250,
        "network_dim": 32,
        "network_alpha": 16.0,
        "num_repeats": 10,
        "train_batch_size": 1,
        "seed": 42,
        "optimizer_type": "prodigy",
        "learning_rate": 1.0,
        "unet_lr": None,
        "text_encoder_lr": None,
        "d_coef": 1.0,
        "weight_decay": 0.01,
        "lr_scheduler": "constant",
        "mixed_precision": "bf16",
        "save_precision": "bf16",
        "full_bf16": False,
        "full_fp16": False,
        "gradient_checkpointing": True,
        "cache_latents": True,
        "cache_latents_to_disk": True,
        "network_train_unet_only": True,
        "cache_text_encoder_outputs": True,
        "cache_text_encoder_outputs_to_disk": True,
        "cpu_offload_checkpointing": False,
        "blocks_to_swap": None,
        "caption_extension": ".txt",
        "shuffle_caption": False,
        "caption_dropout_rate": 0.0,
        "caption_tag_dropout_rate": 0.0,
        "caption_dropout_every_n_epochs": 0,
        "color_aug": False,
        "random_crop": False,
        "flip_aug": False,
        "keep_tokens": 0,
        "max_data_loader_n_workers": 2,
    },
    "sdxl": {
        "xformers": True,
        "sdpa": False,
        "fp8_base": False,
    },
    "flux": {
        "xformers": False,
        "sdpa": True,
        "fp8_base": True,
        "guidance_scale": 1.0,
        "timestep_sampling": "shift",
        "discrete_flow_shift": 3.1582,
        "model_prediction_type": "raw",
    },
}

BOOL_SETTINGS = (
    "network_train_unet_only", "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk",
    "cache_latents", "cache_latents_to_disk", "gradient_checkpointing", "xformers", "sdpa",
    "full_bf16", "full_fp16", "fp8_base", "cpu_offload_checkpointing", "shuffle_caption",
    "color_aug", "random_crop", "flip_aug",
)
# Settings that live in the dataset TOML ([general]) rather than on the command line: with
# --dataset_config, sd-scripts ignores the command-line copies of these.
DATASET_SETTINGS = (
    "caption_extension", "shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
    "caption_dropout_every_n_epochs", "color_aug", "random_crop", "flip_aug", "keep_tokens",
)
# Kohya options this script writes itself; --extra-arg must not repeat them.
MANAGED_KOHYA_FLAGS = frozenset(
    {
        "pretrained_model_name_or_path", "dataset_config", "output_dir", "output_name",
        "max_train_steps", "save_every_n_steps", "network_module", "network_dim", "network_alpha",
        "optimizer_type", "learning_rate", "unet_lr", "text_encoder_lr", "optimizer_args",
        "lr_scheduler", "mixed_precision", "save_precision", "save_model_as", "seed",
        "max_data_loader_n_workers", "clip_l", "t5xxl", "ae", "guidance_scale", "timestep_sampling",
        "discrete_flow_shift", "model_prediction_type", "blocks_to_swap", "train_data_dir",
        "resolution", "train_batch_size",
    }
    | set(BOOL_SETTINGS)
)


class SettingsError(Exception):
    """A problem with the settings, one line that names the flags involved (exit 2)."""


# ---------------------------------------------------------------------------------------------
# Parser and config file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --base-model PATH --images DIR --trigger WORD --output DIR [options] "
              "(--help lists them)",
    )
    common = V3_RECIPE["common"]
    add = parser.add_argument
    add("--config", type=Path, default=None,
        help="TOML or JSON file with defaults for any flag below (default: none)")
    add("--model-type", choices=sorted(SCRIPT_FOR), default=None,
        help="sdxl runs sdxl_train_network.py, flux runs flux_train_network.py (default: sdxl)")
    add("--base-model", "--pretrained_model_name_or_path", dest="base_model", default=None,
        help="base checkpoint (.safetensors) or Diffusers folder; SDXL also takes a hub id (required)")
    add("--images", "--image-dir", dest="images", type=Path, default=None,
        help="folder of training images with optional kohya .txt captions beside them (required)")
    add("--trigger", default=None,
        help="trigger word; the class_tokens for images without a caption file (required)")
    add("--class-word", default=None,
        help="class word after the trigger in class_tokens, e.g. 'man' (default: none)")
    add("--output", "--output_dir", dest="output", type=Path, default=None,
        help="output folder for LoRA files, dataset TOML and training_params.json (required)")
    add("--output-name", "--output_name", dest="output_name", default=None,
        help="LoRA file name without extension (default: TRIGGER_v3_MODELTYPE)")
    add("--sd-scripts", dest="sd_scripts", type=Path, default=None,
        help="kohya sd-scripts checkout holding the training scripts (default: /workspace/sd-scripts)")
    add("--clip-l", "--clip_l", dest="clip_l", default=None,
        help="Flux: CLIP-L weights (.safetensors); required with --model-type flux")
    add("--t5xxl", default=None,
        help="Flux: T5-XXL weights (.safetensors); required with --model-type flux")
    add("--ae", default=None,
        help="Flux: autoencoder weights (ae.safetensors); required with --model-type flux")
    add("--resolution", type=int, default=None,
        help=f"training resolution in pixels, a multiple of 64 (default: {common['resolution']})")
    add("--steps", "--max_train_steps", dest="steps", type=int, default=None,
        help=f"training steps (default: {common['steps']})")
    add("--save-every", "--save_every_n_steps", dest="save_every", type=int, default=None,
        help=f"save a LoRA every N steps (default: {common['save_every']})")
    add("--network-dim", "--network_dim", dest="network_dim", type=int, default=None,
        help=f"LoRA rank (default: {common['network_dim']})")
    add("--network-alpha", "--network_alpha", dest="network_alpha", type=float, default=None,
        help=f"LoRA alpha (default: {common['network_alpha']})")
    add("--num-repeats", dest="num_repeats", type=int, default=None,
        help=f"dataset repeats per epoch (default: {common['num_repeats']})")
    add("--train-batch-size", "--train_batch_size", dest="train_batch_size", type=int, default=None,
        help=f"batch size (default: {common['train_batch_size']})")
    add("--seed", type=int, default=None, help=f"random seed (default: {common['seed']})")
    add("--optimizer-type", "--optimizer_type", dest="optimizer_type", default=None,
        help=f"sd-scripts optimizer (default: {common['optimizer_type']})")
    add("--learning-rate", "--learning_rate", dest="learning_rate", type=float, default=None,
        help=f"learning rate; Prodigy wants about 1.0 (default: {common['learning_rate']})")
    add("--unet-lr", "--unet_lr", dest="unet_lr", type=float, default=None,
        help="U-Net learning rate (default: none, i.e. --learning_rate)")
    add("--text-encoder-lr", "--text_encoder_lr", dest="text_encoder_lr", type=float, default=None,
        help="text-encoder learning rate (default: none; the recipe trains no text encoder)")
    add("--d-coef", "--d_coef", dest="d_coef", type=float, default=None,
        help=f"Prodigy d_coef, scales the estimated step size (default: {common['d_coef']})")
    add("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=None,
        help=f"weight decay, passed to the optimizer (any of them) as --optimizer_args "
             f"weight_decay=...; Prodigy's is decoupled (default: {common['weight_decay']})")
    add("--lr-scheduler", "--lr_scheduler", dest="lr_scheduler", default=None,
        help=f"learning-rate schedule (default: {common['lr_scheduler']})")
    add("--mixed-precision", "--mixed_precision", dest="mixed_precision",
        choices=["no", "fp16", "bf16"], default=None,
        help=f"mixed precision (default: {common['mixed_precision']})")
    add("--save-precision", "--save_precision", dest="save_precision",
        choices=["float", "fp16", "bf16"], default=None,
        help=f"precision of the saved LoRA (default: {common['save_precision']})")
    add("--blocks-to-swap", "--blocks_to_swap", dest="blocks_to_swap", type=int, default=None,
        help="Flux: transformer blocks swapped to CPU to save VRAM, at most 35 (default: none)")
    add("--caption-extension", "--caption_extension", dest="caption_extension", default=None,
        help=f"caption file extension (default: {common['caption_extension']})")
    add("--caption-dropout-rate", "--caption_dropout_rate", dest="caption_dropout_rate",
        type=float, default=None, help="caption dropout rate (default: 0)")
    add("--caption-tag-dropout-rate", "--caption_tag_dropout_rate", dest="caption_tag_dropout_rate",
        type=float, default=None, help="caption tag dropout rate (default: 0)")
    add("--caption-dropout-every-n-epochs", "--caption_dropout_every_n_epochs",
        dest="caption_dropout_every_n_epochs", type=int, default=None,
        help="drop all captions every N epochs (default: 0, never)")
    add("--keep-tokens", "--keep_tokens", dest="keep_tokens", type=int, default=None,
        help="caption tokens kept in front when shuffling (default: 0)")
    add("--guidance-scale", "--guidance_scale", dest="guidance_scale", type=float, default=None,
        help=f"Flux: guidance scale (default: {V3_RECIPE['flux']['guidance_scale']})")
    add("--timestep-sampling", "--timestep_sampling", dest="timestep_sampling",
        choices=["sigma", "uniform", "sigmoid", "shift", "flux_shift"], default=None,
        help=f"Flux: timestep sampling (default: {V3_RECIPE['flux']['timestep_sampling']})")
    add("--discrete-flow-shift", "--discrete_flow_shift", dest="discrete_flow_shift", type=float,
        default=None, help=f"Flux: flow shift (default: {V3_RECIPE['flux']['discrete_flow_shift']})")
    add("--model-prediction-type", "--model_prediction_type", dest="model_prediction_type",
        choices=["raw", "additive", "sigma_scaled"], default=None,
        help=f"Flux: prediction type (default: {V3_RECIPE['flux']['model_prediction_type']})")
    for name in BOOL_SETTINGS:
        dashed = "--" + name.replace("_", "-")
        default = V3_RECIPE["common"].get(name, V3_RECIPE["sdxl"].get(name))
        if name in V3_RECIPE["sdxl"]:
            default_text = (f"SDXL {'on' if V3_RECIPE['sdxl'][name] else 'off'}, "
                            f"Flux {'on' if V3_RECIPE['flux'][name] else 'off'}")
        else:
            default_text = "on" if default else "off"
        add(*dict.fromkeys([dashed, "--" + name]), dest=name,
            action=argparse.BooleanOptionalAction, default=None,
            help=f"sd-scripts --{name} (recipe default: {default_text})")
    add("--extra-arg", dest="extra_args", action="append", default=None,
        help="extra sd-scripts arguments, shell-quoted, e.g. --extra-arg \"--noise_offset 0.05\" "
             "(repeatable; checked like the rest; default: none)")
    add("--launcher", choices=["accelerate", "python"], default=None,
        help="accelerate = `python -m accelerate.commands.launch`; python = run the sd-scripts "
             "file directly (default: accelerate)")
    add("--python", dest="python", default=None,
        help="Python interpreter of the sd-scripts venv, which runs the training and the upstream "
             "check (default: SD_SCRIPTS/venv/bin/python or SD_SCRIPTS/.venv/bin/python where it "
             "exists, else this one)")
    add("--skip-upstream-check", action="store_true",
        help="do not run the command through sd-scripts' own parser and pre-model checks in the "
             "training Python (default: run them whenever --sd-scripts is a real checkout)")
    add("--upstream-timeout", type=float, default=600.0, metavar="SECONDS",
        help="limit for the upstream check subprocess (default: 600; it takes seconds)")
    add("--print-cmd", action="store_true",
        help="print the exact command as one shell-quoted line and exit 0; launches nothing, "
             "writes nothing, works without GPU/torch/sd-scripts (missing paths are warnings)")
    add("--dry-run", action="store_true",
        help="validate strictly, write the dataset TOML and training_params.json, print the "
             "command, do not launch")
    return parser


def load_config_file(path: Path) -> dict:
    """Flat dict from a TOML or JSON file; raises SettingsError with a clear reason."""
    if not path.is_file():
        raise SettingsError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SettingsError(f"--config {path}: invalid JSON ({error})") from error
    else:
        toml = _toml_module()
        if toml is None:
            raise SettingsError(
                f"--config {path}: reading TOML needs Python 3.11+ (tomllib) or `pip install tomli`"
                " on Python 3.10; or write the config as JSON"
            )
        try:
            data = toml.loads(text)
        except Exception as error:  # tomllib.TOMLDecodeError / tomli.TOMLDecodeError
            raise SettingsError(f"--config {path}: invalid TOML ({error})") from error
    if not isinstance(data, dict):
        raise SettingsError(f"--config {path}: the top level must be a table of flag = value")
    return data


def _toml_module():
    try:
        import tomllib  # Python 3.11+
        return tomllib
    except ModuleNotFoundError:
        try:
            import tomli
            return tomli
        except ModuleNotFoundError:
            return None


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, config: dict,
                 config_path: Path) -> None:
    """Fill flags not given on the command line from the config file (flat keys, - or _), each
    value checked as argparse checks the flag (its type and choices; booleans must be true/false)."""
    actions = {action.dest: action for action in parser._actions}
    for key, value in config.items():
        dest = str(key).replace("-", "_")
        dest = {"pretrained_model_name_or_path": "base_model", "output_dir": "output",
                "max_train_steps": "steps", "save_every_n_steps": "save_every",
                "image_dir": "images", "extra_arg": "extra_args"}.get(dest, dest)
        if dest not in actions or dest in ("config", "help", "print_cmd", "dry_run",
                                           "skip_upstream_check", "upstream_timeout"):
            raise SettingsError(f"--config {config_path}: unknown key {key!r}")
        if getattr(args, dest) is not None:
            continue  # the command line wins
        setattr(args, dest, config_value(actions[dest], value, f"--config {config_path}: {key}"))


def config_value(action: argparse.Action, value, where: str):
    """`value` from a config file converted and checked the way argparse treats the flag's text."""
    flag = action.option_strings[0]
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise SettingsError(f"{where} = {value!r}: {flag} is a switch; write true or false "
                                f"(a boolean, not a string or number)")
        return value
    if isinstance(action, argparse._AppendAction):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise SettingsError(f"{where} = {value!r}: {flag} takes a string or a list of strings")
        return [config_value_one(action, item, where) for item in items]
    return config_value_one(action, value, where)


def config_value_one(action: argparse.Action, value, where: str):
    flag = action.option_strings[0]
    kind = action.type.__name__ if action.type else "str"
    if action.type in (int, float):
        wanted, allowed = "a number", isinstance(value, (int, float, str))
    else:
        wanted, allowed = "a string", isinstance(value, str)
    if isinstance(value, bool) or not allowed:
        raise SettingsError(f"{where} = {value!r}: {flag} takes {wanted}")
    try:
        converted = action.type(str(value)) if action.type else value
    except (TypeError, ValueError) as error:
        raise SettingsError(f"{where} = {value!r}: invalid {kind} value for {flag}") from error
    if action.choices is not None and converted not in action.choices:
        raise SettingsError(f"{where} = {value!r}: {flag} must be one of "
                            f"{', '.join(map(str, action.choices))}")
    return converted


# ---------------------------------------------------------------------------------------------
# Settings, validation and the command


def resolve_settings(args: argparse.Namespace) -> dict:
    """Recipe defaults for the model type, overridden by every flag/config value that was set."""
    model_type = args.model_type or "sdxl"
    settings = dict(V3_RECIPE["common"])
    settings.update(V3_RECIPE[model_type])
    settings["model_type"] = model_type
    for key, value in vars(args).items():
        if key in ("config", "print_cmd", "dry_run", "model_type", "skip_upstream_check",
                   "upstream_timeout"):
            continue
        if value is not None:
            settings[key] = value
    settings.setdefault("extra_args", [])
    settings["extra_args"] = settings["extra_args"] or []
    settings.setdefault("launcher", "accelerate")
    settings["launcher"] = settings.get("launcher") or "accelerate"
    # Absolute paths (Path.absolute(): symlinks kept): sd-scripts runs with its checkout as the
    # working folder, so a relative path would name another place there.
    settings["sd_scripts"] = Path(settings.get("sd_scripts") or "/workspace/sd-scripts").absolute()
    for name in ("images", "output"):
        if settings.get(name):
            settings[name] = Path(settings[name]).absolute()
    for name in ("clip_l", "t5xxl", "ae"):
        if settings.get(name):
            settings[name] = str(Path(settings[name]).absolute())
    if settings.get("base_model") and Path(settings["base_model"]).exists():  # else maybe a hub id
        settings["base_model"] = str(Path(settings["base_model"]).absolute())
    python = settings.get("python")
    if python and (os.sep in str(python) or "/" in str(python)):  # a path, not a name on PATH
        python = Path(python).absolute()
    settings["python"] = str(python or find_training_python(settings["sd_scripts"]) or sys.executable)
    trigger = settings.get("trigger") or ""
    if not settings.get("output_name"):
        settings["output_name"] = f"{trigger or 'lora'}_v3_{model_type}"
    return settings


def parse_extra_args(extra_args: list[str]) -> list[str]:
    """Shell-split every --extra-arg value into argv tokens."""
    tokens: list[str] = []
    for value in extra_args:
        try:
            tokens.extend(shlex.split(value))
        except ValueError as error:  # an unbalanced quote
            raise SettingsError(f"--extra-arg {value!r}: cannot be split like a shell line "
                                f"({error}); balance its quotes") from error
    return tokens


def resolve_flag(name: str, model_type: str) -> str:
    """The sd-scripts option that `--name` selects, by argparse's rule (sd-scripts' parsers keep
    allow_abbrev on): the exact option, else the one option it is a prefix of. A prefix of several
    options is a SettingsError; a name that is no option is returned as given (sd-scripts' parser
    refuses it: the upstream check, or unknown_extra_flags without one)."""
    options = sd_scripts_options(model_type)
    if name in options:
        return name
    matches = sorted(option for option in options if option.startswith(name))
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join("--" + option for option in matches[:8]) + (", ..." if len(matches) > 8 else "")
        raise SettingsError(f"--extra-arg --{name} is ambiguous: sd-scripts' parser reads a "
                            f"shortened option only when one option starts with it, and "
                            f"{len(matches)} do ({shown}); write the full option name")
    return name


def sd_scripts_options(model_type: str) -> frozenset[str]:
    """Option names (without --) of SCRIPT_FOR[model_type]'s parser at SD_SCRIPTS_COMMIT."""
    return SD_SCRIPTS_OPTIONS | (SD_SCRIPTS_FLUX_OPTIONS if model_type == "flux" else frozenset())


def resolved_extra_args(settings: dict) -> list[str]:
    """The --extra-arg tokens with every shortened option written out in full (--lr_warmup 100 ->
    --lr_warmup_steps 100): the command then says what sd-scripts will do, and the upstream check
    (allow_abbrev off) sees the same options as the launcher's rules."""
    tokens = []
    for token in parse_extra_args(settings.get("extra_args", [])):
        if token.startswith("--") and len(token) > 2:
            name, sep, inline = token[2:].partition("=")
            token = "--" + resolve_flag(name, settings["model_type"]) + sep + inline
        tokens.append(token)
    return tokens


def flags_from_tokens(tokens: list[str], model_type: str | None = None) -> dict[str, list[str]]:
    """{'noise_offset': ['0.05'], 'xformers': []} from ['--noise_offset', '0.05', '--xformers'];
    with `model_type`, shortened options are resolved as sd-scripts' parser resolves them."""
    flags: dict[str, list[str]] = {}
    current = None
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name, sep, inline = token[2:].partition("=")
            current = resolve_flag(name, model_type) if model_type else name
            flags[current] = [inline] if sep else []
        elif current is not None:
            flags[current].append(token)
        else:
            raise SettingsError(f"--extra-arg: {token!r} is not preceded by a --flag")
    return flags


def unknown_extra_flags(settings: dict) -> list[str]:
    """--extra-arg options that sd-scripts' parser (at SD_SCRIPTS_COMMIT) does not have."""
    options = sd_scripts_options(settings["model_type"])
    return [name for name in flags_from_tokens(resolved_extra_args(settings)) if name not in options]


def abbreviated_extra_flags(settings: dict) -> list[tuple[str, str]]:
    """(as written, the option sd-scripts reads) for each shortened --extra-arg option."""
    pairs = []
    for token in parse_extra_args(settings.get("extra_args", [])):
        if token.startswith("--") and len(token) > 2:
            name = token[2:].partition("=")[0]
            full = resolve_flag(name, settings["model_type"])
            if full != name:
                pairs.append((name, full))
    return pairs


def effective_options(settings: dict) -> dict:
    """Settings merged with the --extra-arg flags, as kohya sees them (booleans, numbers)."""
    options = dict(settings)
    for name, values in flags_from_tokens(resolved_extra_args(settings)).items():
        if not values:
            options[name] = True
        elif len(values) == 1:
            options[name] = _number_or_text(values[0])
        else:
            options[name] = [_number_or_text(value) for value in values]
    return options


def _number_or_text(value: str):
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _on(options: dict, name: str) -> bool:
    value = options.get(name)
    if isinstance(value, (list, tuple)):
        return any(_on({name: item}, name) for item in value)
    if isinstance(value, str):
        return value.lower() not in ("", "0", "false", "no", "none")
    return bool(value)


def _lrs(value) -> list[float]:
    if value is None or value is False:
        return []
    if isinstance(value, (list, tuple)):
        return [float(item) for item in value]
    return [float(value)]


# Option names of sd-scripts' parsers at SD_SCRIPTS_COMMIT, read from
# sdxl_train_network.setup_parser()._option_string_actions (SD_SCRIPTS_OPTIONS; flux_train_network
# has all of them) and flux_train_network.setup_parser()'s (SD_SCRIPTS_FLUX_OPTIONS: the rest);
# tests/test_retrain_lora_v3.py compares them with the parsers of ../shared/sd-scripts.
SD_SCRIPTS_OPTIONS = frozenset({
    "adaptive_noise_scale", "alpha_mask", "async_upload", "base_weights",
    "base_weights_multiplier", "bucket_no_upscale", "bucket_reso_steps", "cache_info",
    "cache_latents", "cache_latents_to_disk", "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk", "caption_dropout_every_n_epochs",
    "caption_dropout_rate", "caption_extension", "caption_extention", "caption_prefix",
    "caption_separator", "caption_suffix", "caption_tag_dropout_rate", "clip_skip", "color_aug",
    "conditioning_data_dir", "config_file", "console_log_file", "console_log_level",
    "console_log_simple", "cpu_offload_checkpointing", "dataset_class", "dataset_config",
    "dataset_repeats", "ddp_gradient_as_bucket_view", "ddp_static_graph", "ddp_timeout",
    "debiased_estimation_loss", "debug_dataset", "deepspeed", "dim_from_weights",
    "disable_mmap_load_safetensors", "dynamo_backend", "enable_bucket", "enable_wildcard",
    "face_crop_aug_range", "flip_aug", "fp16_master_weights_and_gradients", "fp8_base",
    "fp8_base_unet", "full_bf16", "full_fp16", "fused_backward_pass",
    "gradient_accumulation_steps", "gradient_checkpointing", "help", "highvram", "huber_c",
    "huber_scale", "huber_schedule", "huggingface_path_in_repo", "huggingface_repo_id",
    "huggingface_repo_type", "huggingface_repo_visibility", "huggingface_token", "in_json",
    "initial_epoch", "initial_step", "ip_noise_gamma", "ip_noise_gamma_random_strength",
    "keep_tokens", "keep_tokens_separator", "learning_rate", "log_config", "log_prefix",
    "log_tracker_config", "log_tracker_name", "log_with", "logging_dir", "loss_type", "lowram",
    "lr_decay_steps", "lr_scheduler", "lr_scheduler_args", "lr_scheduler_min_lr_ratio",
    "lr_scheduler_num_cycles", "lr_scheduler_power", "lr_scheduler_timescale",
    "lr_scheduler_type", "lr_warmup_steps", "masked_loss", "max_bucket_reso",
    "max_data_loader_n_workers", "max_grad_norm", "max_timestep", "max_token_length",
    "max_train_epochs", "max_train_steps", "max_validation_steps", "mem_eff_attn",
    "metadata_author", "metadata_description", "metadata_is_negative_embedding",
    "metadata_license", "metadata_merged_from", "metadata_preprocessor", "metadata_tags",
    "metadata_thumbnail", "metadata_title", "metadata_trigger_phrase", "metadata_usage_hint",
    "min_bucket_reso", "min_snr_gamma", "min_timestep", "mixed_precision",
    "multires_noise_discount", "multires_noise_iterations", "network_alpha", "network_args",
    "network_dim", "network_dropout", "network_module", "network_train_text_encoder_only",
    "network_train_unet_only", "network_weights", "no_half_vae", "no_metadata", "noise_offset",
    "noise_offset_random_strength", "offload_optimizer_device", "offload_optimizer_nvme_path",
    "offload_param_device", "offload_param_nvme_path", "optimizer_args", "optimizer_type",
    "output_config", "output_dir", "output_name", "persistent_data_loader_workers",
    "pretrained_model_name_or_path", "prior_loss_weight", "random_crop", "reg_data_dir",
    "resize_interpolation", "resolution", "resume", "resume_from_huggingface",
    "sample_at_first", "sample_every_n_epochs", "sample_every_n_steps", "sample_prompts",
    "sample_sampler", "save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs",
    "save_last_n_epochs_state", "save_last_n_steps", "save_last_n_steps_state", "save_model_as",
    "save_n_epoch_ratio", "save_precision", "save_state", "save_state_on_train_end",
    "save_state_to_huggingface", "scale_v_pred_loss_like_noise_pred", "scale_weight_norms",
    "sdpa", "secondary_separator", "seed", "shuffle_caption", "skip_cache_check",
    "skip_until_initial_step", "text_encoder_lr", "token_warmup_min", "token_warmup_step",
    "tokenizer_cache_dir", "torch_compile", "train_batch_size", "train_data_dir",
    "training_comment", "unet_lr", "use_8bit_adam", "use_lion_optimizer", "v2",
    "v_parameterization", "v_pred_like_loss", "vae", "vae_batch_size",
    "validate_every_n_epochs", "validate_every_n_steps", "validation_seed", "validation_split",
    "wandb_api_key", "wandb_run_name", "weighted_captions", "xformers", "zero3_init_flag",
    "zero3_save_16bit_model", "zero_stage", "zero_terminal_snr",
})
SD_SCRIPTS_FLUX_OPTIONS = frozenset({
    "ae", "apply_t5_attn_mask", "blocks_to_swap", "clip_l", "controlnet_model_name_or_path",
    "discrete_flow_shift", "guidance_scale", "logit_mean", "logit_std", "mode_scale",
    "model_prediction_type", "model_type", "sigmoid_scale", "split_mode", "t5xxl",
    "t5xxl_max_token_length", "text_encoder_batch_size", "timestep_sampling", "weighting_scheme",
})

# Where sd-scripts (commit SD_SCRIPTS_COMMIT) or a library it calls raises each refused
# combination: file:line and the function, quoted in the messages. "after loading" = after the
# base model (minutes), "before loading" = during the checks at the start of train().
SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
UPSTREAM = {
    "te_cache_unet_only": "sdxl_train_network.py:39-41 (assert_extra_args, before loading)",
    "te_cache_captions": "sdxl_train_network.py:35-37 / flux_train_network.py:66-68 (assert_extra_args, "
                         "before loading)",
    "latent_cache_aug": "train_network.py:582-584 (NetworkTrainer.train, before loading)",
    "full_fp16": "train_network.py:814-817 (after loading)",
    "full_bf16": "train_network.py:820-823 (after loading)",
    "fp8_base": "train_network.py:831-833 (after loading)",
    "swap_max": "library/flux_models.py:977-980 (Flux.enable_block_swap, after loading)",
    "swap_offload": "flux_train_network.py:77-79 (assert_extra_args, before loading)",
    "offload_sdxl": "train_network.py:716-718 calls unet.enable_gradient_checkpointing(cpu_offload=True); "
                    "SDXL's U-Net, library/sdxl_original_unet.py:1041, takes no cpu_offload: TypeError "
                    "after loading",
    "constant_warmup": "library/train_util.py:5294-5296 + 5329-5330 (get_scheduler_fix, after loading)",
    "unknown_scheduler": "library/train_util.py:5326 (get_scheduler_fix: SchedulerType(name) raises "
                         "ValueError, after loading)",
    "prodigy_groups": "prodigyopt/prodigy.py:151-152 (Prodigy.step raises RuntimeError 'Setting "
                      "different lr values in different parameter groups is only supported for values "
                      "of 0' at the first step, after loading and caching)",
    "bucket_steps_sdxl": "library/train_util.py:1094-1097 via sdxl_train_network.py:43 "
                         "(verify_bucket_reso_steps(32), before loading)",
    "bucket_steps_flux": "library/train_util.py:1094-1097 via train_network.py:175 "
                         "(NetworkTrainer.assert_extra_args, verify_bucket_reso_steps(64), which "
                         "flux_train_network.py:46 calls first; before loading)",
    "fused_backward": "library/train_util.py:4848-4851 (get_optimizer, after loading)",
    "adaptive_noise": "library/train_util.py:4443-4444 (verify_training_args, before loading)",
    "v2_sdxl": "library/sdxl_train_util.py:349 (verify_sdxl_training_args, before loading)",
    "network_args": "train_network.py:667 (NetworkTrainer.train, after load_target_model at line 602)",
}
# lr_scheduler names get_scheduler_fix (library/train_util.py:5265-5398) builds with sd-scripts'
# default arguments: transformers' SchedulerType (4.54.1, the version sd-scripts pins), and
# "adafactor:LR" (with Adafactor only). Two more need arguments of their own (SCHEDULER_NEEDS), and
# two of SchedulerType's names never work (SCHEDULER_BROKEN): get_scheduler_fix calls them with
# num_warmup_steps / num_training_steps / num_decay_steps, which they do not take.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup", "inverse_sqrt", "warmup_stable_decay")
SCHEDULER_NEEDS = {
    "cosine_with_min_lr": "--lr_scheduler_min_lr_ratio R (or --lr_scheduler_args min_lr=LR): "
                          "library/train_util.py:5360-5366 passes min_lr_rate=lr_scheduler_min_lr_ratio "
                          "(default None) and transformers raises 'One of min_lr or min_lr_rate "
                          "should be set' (after loading)",
    "piecewise_constant": "--lr_scheduler_args step_rules=\"'1:100,0.1'\" (diffusers' "
                          "get_piecewise_constant_schedule has no default step_rules: TypeError at "
                          "library/train_util.py:5324, after loading)",
}
SCHEDULER_BROKEN = {
    "reduce_lr_on_plateau": "library/train_util.py:5393 passes num_warmup_steps, num_training_steps and "
                            "num_decay_steps to torch's ReduceLROnPlateau: TypeError (after loading)",
    "cosine_warmup_with_min_lr": "library/train_util.py:5393 passes num_decay_steps, which "
                                 "transformers' get_cosine_with_min_lr_schedule_with_warmup_lr_rate does "
                                 "not take: TypeError (after loading)",
}
LORAPLUS_KEYS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
BLOCK_LR_KEYS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")


def _given(value) -> bool:
    """A flag given with a value (0 and 1 included; None = not given, True = given bare)."""
    return value is not None and not isinstance(value, bool)


def _items(options: dict, name: str) -> list[str]:
    value = options.get(name)
    if not _given(value):
        return []
    return [str(item) for item in (value if isinstance(value, (list, tuple)) else [value])]


def network_args(options: dict) -> dict:
    """--network_args KEY=VALUE pairs (from --extra-arg) as {key: value string}, split the way
    train_network.py:666-667 splits them (at the first '='; nothing stripped)."""
    return dict(item.split("=", 1) for item in _items(options, "network_args") if "=" in item)


def is_prodigy(optimizer_type) -> bool:
    """Every spelling sd-scripts' get_optimizer turns into prodigyopt.Prodigy: 'prodigy' in any
    case (library/train_util.py:4979), or a dotted path such as prodigyopt.Prodigy, loaded by name
    (library/train_util.py:5121-5134)."""
    return str(optimizer_type or "").split(".")[-1].lower() == "prodigy"


def _block_weights_differ(text: str) -> bool:
    """True when a down/mid/up_lr_weight value gives some blocks another non-zero lr than others."""
    parts = [part.strip() for part in text.split(",")]
    try:
        weights = {float(part) if part else 0.0 for part in parts}
    except ValueError:
        return True  # a preset such as "sine" or "cosine": weights vary by block
    weights.discard(0.0)
    return bool(weights - {1.0})  # sd-scripts fills unnamed blocks with 1.0


def _warmup_steps(options: dict) -> float:
    """--lr_warmup_steps as sd-scripts reads it (int_or_float, library/train_util.py:3664-3676):
    below 1 (or N%) a ratio of the training steps, else a step count."""
    value = options.get("lr_warmup_steps")
    if not _given(value):
        return 0
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return 0
    return int(number * int(options.get("steps") or 0)) if number < 1 else number


def find_conflicts(settings: dict) -> list[str]:
    """Flag combinations sd-scripts (or Prodigy) refuses; each message names the flags and the
    upstream file and line that raises (UPSTREAM). What sd-scripts only ignores is in find_warnings."""
    options = effective_options(settings)
    model_type = options.get("model_type", "sdxl")
    problems: list[str] = []
    te_cached = (_on(options, "cache_text_encoder_outputs")
                 or _on(options, "cache_text_encoder_outputs_to_disk"))
    te_lrs = [value for value in _lrs(options.get("text_encoder_lr")) if value != 0]
    unet_only = _on(options, "network_train_unet_only")

    if te_cached and te_lrs:
        # Not an upstream error: this project's own rule (a run once believed it trained the TE).
        problems.append(
            "--cache_text_encoder_outputs conflicts with --text_encoder_lr: with cached text-encoder "
            "outputs sd-scripts trains no text encoder, and the text-encoder learning rate is "
            "silently ignored (sd-scripts does not refuse it); drop --text_encoder_lr, or drop the "
            "caching and --network_train_unet_only to really train the text encoder"
        )
    if model_type == "sdxl" and te_cached and not unet_only:
        problems.append(
            "--cache_text_encoder_outputs needs --network_train_unet_only on SDXL: sd-scripts asserts "
            "'network for Text Encoder cannot be trained with caching Text Encoder outputs' at "
            + UPSTREAM["te_cache_unet_only"]
        )
    if te_cached:
        for name in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
                     "token_warmup_step"):
            if _on(options, name):
                problems.append(
                    f"--cache_text_encoder_outputs conflicts with --{name}: cached text-encoder "
                    f"outputs are computed once per caption, so captions cannot change per step "
                    f"(sd-scripts asserts 'when caching Text Encoder output, either "
                    f"caption_dropout_rate, shuffle_caption, token_warmup_step or "
                    f"caption_tag_dropout_rate cannot be used' at {UPSTREAM['te_cache_captions']})"
                )
        if _on(options, "caption_dropout_every_n_epochs"):
            problems.append(
                "--cache_text_encoder_outputs conflicts with --caption_dropout_every_n_epochs: "
                "cached text-encoder outputs cannot drop the caption per epoch (sd-scripts' "
                "is_text_encoder_output_cacheable is false, same assert at "
                f"{UPSTREAM['te_cache_captions']})"
            )
    if _on(options, "cache_latents") or _on(options, "cache_latents_to_disk"):
        for name in ("color_aug", "random_crop"):
            if _on(options, name):
                problems.append(
                    f"--cache_latents conflicts with --{name}: cached latents are encoded once, so "
                    f"per-step augmentation is impossible (sd-scripts asserts 'when caching "
                    f"latents, either color_aug or random_crop cannot be used' at "
                    f"{UPSTREAM['latent_cache_aug']})"
                )
    mixed = str(options.get("mixed_precision") or "no")
    if _on(options, "full_fp16"):  # upstream checks full_fp16 first and full_bf16 only without it
        if mixed != "fp16":
            problems.append(f"--full_fp16 needs --mixed_precision fp16, got --mixed_precision {mixed} "
                            f"(sd-scripts asserts 'full_fp16 requires mixed precision='fp16'' at "
                            f"{UPSTREAM['full_fp16']})")
    elif _on(options, "full_bf16") and mixed != "bf16":
        problems.append(f"--full_bf16 needs --mixed_precision bf16, got --mixed_precision {mixed} "
                        f"(sd-scripts asserts 'full_bf16 requires mixed precision='bf16'' at "
                        f"{UPSTREAM['full_bf16']})")
    if (_on(options, "fp8_base") or _on(options, "fp8_base_unet")) and mixed == "no":
        problems.append("--fp8_base needs --mixed_precision fp16 or bf16, got --mixed_precision no "
                        f"(sd-scripts asserts 'fp8_base requires mixed precision' at "
                        f"{UPSTREAM['fp8_base']})")
    swap = options.get("blocks_to_swap")
    if _given(swap) and swap != 0:
        if model_type != "flux":
            problems.append(f"--blocks_to_swap {swap} is a Flux option; --model-type is {model_type}")
        else:
            if int(swap) > FLUX_MAX_BLOCKS_TO_SWAP:
                problems.append(
                    f"--blocks_to_swap {swap} is above {FLUX_MAX_BLOCKS_TO_SWAP} for --model-type flux: "
                    f"Flux has 19 double and 38 single blocks and sd-scripts asserts 'Cannot swap "
                    f"more than 17 double blocks and 36 single blocks' at {UPSTREAM['swap_max']}"
                )
            if _on(options, "cpu_offload_checkpointing"):
                problems.append("--blocks_to_swap conflicts with --cpu_offload_checkpointing "
                                "(sd-scripts asserts 'blocks_to_swap is not supported with "
                                f"cpu_offload_checkpointing' at {UPSTREAM['swap_offload']})")
    if model_type == "sdxl" and _on(options, "cpu_offload_checkpointing"):
        problems.append(
            "--cpu_offload_checkpointing is a Flux option, not for --model-type sdxl: with "
            f"--gradient_checkpointing {UPSTREAM['offload_sdxl']} (without it the flag does nothing)"
        )
    if model_type == "sdxl" and _on(options, "v2"):
        problems.append("--v2 is for SD 2.x checkpoints, not --model-type sdxl (sd-scripts asserts 'v2 "
                        f"cannot be enabled in SDXL training' at {UPSTREAM['v2_sdxl']})")
    if _given(options.get("adaptive_noise_scale")) and options.get("noise_offset") is None:
        problems.append("--adaptive_noise_scale needs --noise_offset (sd-scripts raises "
                        "'adaptive_noise_scale requires noise_offset' at "
                        f"{UPSTREAM['adaptive_noise']})")
    bucket_steps = options.get("bucket_reso_steps")
    if _given(bucket_steps):
        try:
            steps_value = int(float(bucket_steps))
        except ValueError:
            steps_value = None
        step = 32 if model_type == "sdxl" else 64
        if steps_value is not None and steps_value % step:
            problems.append(f"--bucket_reso_steps {bucket_steps} must be divisible by {step} for "
                            f"--model-type {model_type} (sd-scripts asserts 'bucket_reso_steps is "
                            f"{bucket_steps}. it must be divisible by {step}' at "
                            f"{UPSTREAM['bucket_steps_' + model_type]})")
    optimizer = str(options.get("optimizer_type") or "").lower()
    if _on(options, "fused_backward_pass") and optimizer != "adafactor":
        problems.append(f"--fused_backward_pass needs --optimizer_type Adafactor, got "
                        f"{options.get('optimizer_type')} (sd-scripts asserts 'fused_backward_pass "
                        f"currently only works with optimizer_type Adafactor' at "
                        f"{UPSTREAM['fused_backward']})")
    scheduler = str(options.get("lr_scheduler") or "constant")
    if not options.get("lr_scheduler_type"):  # a custom scheduler class bypasses the name
        if scheduler.startswith("adafactor"):
            if optimizer != "adafactor":
                problems.append(f"--lr_scheduler {scheduler} needs --optimizer_type Adafactor "
                                "(library/train_util.py:5314-5316, after loading)")
        elif scheduler in SCHEDULER_BROKEN:
            problems.append(f"--lr_scheduler {scheduler} cannot be built by sd-scripts: "
                            f"{SCHEDULER_BROKEN[scheduler]}; use one of {', '.join(LR_SCHEDULERS)}")
        elif scheduler in SCHEDULER_NEEDS:
            scheduler_args = dict(item.partition("=")[::2] for item in _items(options, "lr_scheduler_args"))
            if scheduler == "cosine_with_min_lr":
                missing = not (_given(options.get("lr_scheduler_min_lr_ratio")) or "min_lr" in scheduler_args)
            else:
                missing = "step_rules" not in scheduler_args
            if missing:
                problems.append(f"--lr_scheduler {scheduler} needs {SCHEDULER_NEEDS[scheduler]}")
        elif scheduler not in LR_SCHEDULERS:
            problems.append(f"--lr_scheduler {scheduler} is not a scheduler sd-scripts knows "
                            f"({', '.join(LR_SCHEDULERS + tuple(SCHEDULER_NEEDS))}, adafactor:LR): "
                            f"{UPSTREAM['unknown_scheduler']}")
        elif scheduler == "constant" and _warmup_steps(options):
            problems.append(f"--lr_scheduler constant conflicts with --lr_warmup_steps "
                            f"{options.get('lr_warmup_steps')}: sd-scripts raises 'constant does not "
                            f"require `num_warmup_steps`. Set None or 0.' at "
                            f"{UPSTREAM['constant_warmup']}; use --lr_scheduler constant_with_warmup")
    for item in _items(options, "network_args"):
        if "=" not in item:
            problems.append(f"--network_args {item} has no '=': sd-scripts splits each one as "
                            f"KEY=VALUE and raises ValueError at {UPSTREAM['network_args']}; write "
                            f"{item}=VALUE")
    if is_prodigy(optimizer):
        chosen = options.get("optimizer_type")
        base_lr = float(options.get("learning_rate") or 0.0)
        unet_lr = _lrs(options.get("unet_lr"))[0] if options.get("unet_lr") is not None else base_lr
        nargs = network_args(options)
        ratios = [key for key in LORAPLUS_KEYS if key in nargs
                  and (key != "loraplus_text_encoder_lr_ratio" or not unet_only)]
        for key in ratios:
            try:
                differs = float(nargs[key]) != 1.0
            except ValueError:
                differs = True
            if differs:
                problems.append(
                    f"--optimizer_type {chosen} conflicts with LoRA+ (--network_args {key}="
                    f"{nargs[key]}): LoRA+ gives lora_up weights their own parameter group at "
                    f"lr x {nargs[key]}, and {UPSTREAM['prodigy_groups']}; drop the LoRA+ ratio "
                    f"or use another optimizer"
                )
                break
        if model_type == "flux" and nargs.get("network_reg_lrs"):
            problems.append(
                f"--optimizer_type {chosen} conflicts with --network_args network_reg_lrs="
                f"{nargs['network_reg_lrs']}: each regex learning rate makes a parameter group "
                f"with its own lr (networks/lora_flux.py), and {UPSTREAM['prodigy_groups']}")
        for key in BLOCK_LR_KEYS if model_type == "sdxl" else ():
            if key in nargs and _block_weights_differ(nargs[key]):
                problems.append(
                    f"--optimizer_type {chosen} conflicts with block learning-rate weights "
                    f"(--network_args {key}={nargs[key]}): each block weight makes a parameter group "
                    f"with its own lr, and {UPSTREAM['prodigy_groups']}; use weights of 0 or 1 only"
                )
                break
        if not unet_only:  # the text encoders are trained too: one more parameter group each
            for te_lr in te_lrs or [base_lr]:
                if te_lr != unet_lr and unet_lr != 0:
                    problems.append(
                        f"--optimizer_type {chosen} conflicts with different per-group learning rates "
                        f"(--unet_lr {unet_lr:g}, --text_encoder_lr {te_lr:g}): "
                        f"{UPSTREAM['prodigy_groups']}; give both the same lr (or 0)"
                    )
                    break
    elif options.get("d_coef") not in (None, V3_RECIPE["common"]["d_coef"]) and optimizer:
        problems.append(f"--d_coef is a Prodigy argument; --optimizer_type is {optimizer}")
    return problems


def find_warnings(settings: dict) -> list[str]:
    """Settings sd-scripts accepts but ignores or only warns about: a warning, never a refusal."""
    options = effective_options(settings)
    warnings = [f"--extra-arg --{name} is a shortened option that sd-scripts' parser reads as "
                f"--{full}; the command spells it out" for name, full in abbreviated_extra_flags(settings)]
    te_cached = (_on(options, "cache_text_encoder_outputs")
                 or _on(options, "cache_text_encoder_outputs_to_disk"))
    te_lrs = [value for value in _lrs(options.get("text_encoder_lr")) if value != 0]
    if _on(options, "network_train_unet_only") and te_lrs and not te_cached:
        warnings.append("--text_encoder_lr is silently ignored with --network_train_unet_only: "
                        "sd-scripts trains no text encoder (train_network.py:221-222)")
    if is_prodigy(options.get("optimizer_type")):
        chosen = options.get("optimizer_type")
        low, high = PRODIGY_LR_RANGE
        checked = {"--learning_rate": float(options.get("learning_rate") or 0.0)}
        if options.get("unet_lr") is not None:
            checked["--unet_lr"] = _lrs(options.get("unet_lr"))[0]
        for flag, value in checked.items():
            if not low <= value <= high and value != 0:
                warnings.append(
                    f"--optimizer_type {chosen} with {flag} {value:g}: Prodigy estimates the step "
                    f"size and lr only scales it, so keep it near 1.0 and tune --d_coef (sd-scripts "
                    f"itself only warns at lr <= 0.1, library/train_util.py:4990-4994)")
    if options.get("model_type") == "flux" and any(key in network_args(options) for key in BLOCK_LR_KEYS):
        warnings.append("--network_args down/mid/up_lr_weight are networks.lora (SDXL) arguments; "
                        "networks.lora_flux ignores them")
    if _on(options, "full_bf16") and _on(options, "full_fp16"):
        warnings.append("--full_bf16 with --full_fp16: sd-scripts does not refuse the pair; "
                        "full_fp16 wins (train_network.py:814-823)")
    return warnings


# ---------------------------------------------------------------------------------------------
# The upstream check: the final command through sd-scripts' own code, in the training interpreter

PROBE_MARK = "@@retrain_lora_v3_upstream@@"
# Runs in the training Python, in the sd-scripts checkout. Mirrors the start of sd-scripts'
# NetworkTrainer.train() (train_network.py:491-590) up to, not including, accelerator and model
# loading, then builds the optimizer and scheduler on a one-element parameter (train_network.py:767
# and 811) and, on SDXL, makes the U-Net call that --cpu_offload_checkpointing leads to
# (train_network.py:716-718). Every check is sd-scripts' own function; nothing here re-implements one.
UPSTREAM_PROBE = r"""
import contextlib, importlib, io, json, os, sys, traceback
request = json.loads(open(sys.argv[1], encoding="utf-8").read())
root = os.path.abspath(request["sd_scripts"])

def where(error):
    # the innermost sd-scripts frame, and the innermost frame of all when that is a library's
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename != "<string>"]
    def name(frame):
        path = os.path.abspath(frame.filename)
        if path.startswith(root + os.sep):
            rel = os.path.relpath(path, root).replace(os.sep, "/")
        else:
            parts = path.replace(os.sep, "/").split("/site-packages/")
            rel = parts[-1] if len(parts) > 1 else os.path.basename(path)
        return "%s:%d (%s)" % (rel, frame.lineno, frame.name)
    ours = [f for f in frames if os.path.abspath(f.filename).startswith(root + os.sep)]
    names = [name(f) for f in (ours[-1:] + frames[-1:])]
    return " -> ".join(dict.fromkeys(names)) or None

def first_line(error):
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return type(error).__name__ + (": " + lines[0] if lines else "")

def check(item, result):
    import torch
    import train_network
    from library import train_util, config_util, strategy_base
    module = importlib.import_module(item["script"])
    result["stage"] = "parse_args"
    parser = module.setup_parser()
    parser.prog = item["script"] + ".py"
    parser.allow_abbrev = False  # the launcher writes every option in full; a short one is its bug
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = parser.parse_args(item["argv"])
    except SystemExit as exit_:
        message = [l for l in captured.getvalue().splitlines() if l.strip()]
        result["where"] = "%s.py setup_parser().parse_args()" % item["script"]
        raise ValueError(message[-1] if message else "argparse exit %s" % exit_.code)
    result["passed"].append("parse_args")
    result["stage"] = "verify_training_args"
    train_util.verify_command_line_training_args(args)
    args = train_util.read_config_from_file(args, parser)
    train_util.verify_training_args(args)
    train_util.prepare_dataset_args(args, True)
    result["passed"].append("verify_training_args")
    trainer_class = next(value for value in vars(module).values() if isinstance(value, type)
                         and issubclass(value, train_network.NetworkTrainer)
                         and value is not train_network.NetworkTrainer)
    trainer = trainer_class()
    result["stage"] = "dataset config"
    strategy_base.LatentsCachingStrategy._strategy = None  # set once per process upstream; one per check here
    strategy_base.LatentsCachingStrategy.set_strategy(trainer.get_latents_caching_strategy(args))
    generator = config_util.BlueprintGenerator(config_util.ConfigSanitizer(True, True, args.masked_loss, True))
    if args.dataset_config is not None:
        user_config = config_util.load_user_config(args.dataset_config)
    else:
        user_config = {"datasets": [{"subsets": config_util.generate_dreambooth_subsets_config_by_subdirs(
            args.train_data_dir, args.reg_data_dir)}]}
    blueprint = generator.generate(user_config, args)
    train_group, val_group = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
    result["images"] = sum(len(getattr(d, "image_data", {})) for d in train_group.datasets)
    result["passed"].append("dataset config")
    result["stage"] = "train() checks before loading"
    if args.cache_latents:
        assert train_group.is_latent_cacheable(), "when caching latents, either color_aug or random_crop cannot be used"
    trainer.assert_extra_args(args, train_group, val_group)
    result["passed"].append("assert_extra_args")
    result["stage"] = "network_args"
    result["where"] = "train_network.py:667 (NetworkTrainer.train, after loading)"
    for net_arg in args.network_args or []:  # what train_network.py:666-667 does with each one
        key, value = net_arg.split("=", 1)
    del result["where"]
    if item["model_type"] == "sdxl" and args.gradient_checkpointing and args.cpu_offload_checkpointing:
        result["stage"] = "U-Net gradient checkpointing"
        from library import sdxl_original_unet
        unet_class = sdxl_original_unet.SdxlUNet2DConditionModel
        result["where"] = ("train_network.py:718 (unet.enable_gradient_checkpointing(cpu_offload=True)) "
                           "-> library/sdxl_original_unet.py:1041")
        unet_class.enable_gradient_checkpointing(object.__new__(unet_class), cpu_offload=True)
        del result["where"]
    result["stage"] = "get_optimizer"
    parameter = torch.nn.Parameter(torch.zeros(1))
    lr = args.unet_lr if args.unet_lr is not None else args.learning_rate
    _, _, optimizer = train_util.get_optimizer(args, [{"params": [parameter], "lr": lr}])
    result["optimizer"] = dict({key: value for key, value in optimizer.param_groups[0].items()
                                if isinstance(value, (bool, int, float, str))},
                               **{"class": type(optimizer).__module__ + "." + type(optimizer).__name__})
    result["passed"].append("get_optimizer")
    result["stage"] = "get_scheduler_fix"
    train_util.get_scheduler_fix(args, optimizer, 1)
    result["passed"].append("get_scheduler_fix")
    result["ok"] = True
    result["stage"] = None

results = []
try:
    sys.path.insert(0, root)
    os.chdir(root)
    for item in request["checks"]:
        importlib.import_module(item["script"])
    environment_error = None
except BaseException as error:
    environment_error = {"ok": False, "environment": True, "stage": "import",
                         "error": first_line(error), "where": where(error), "passed": []}
for item in request["checks"]:
    if environment_error:
        results.append(dict(environment_error))
        continue
    result = {"ok": False, "stage": "import", "passed": ["import"], "environment": False}
    try:
        check(item, result)
    except BaseException as error:
        result["error"] = first_line(error)
        result.setdefault("where", where(error))
    results.append(result)
print(PROBE_MARK + json.dumps(results), flush=True)
"""


def find_training_python(sd_scripts: Path) -> Path | None:
    """The sd-scripts venv's interpreter where README.md puts it (DIR/venv or DIR/.venv), else None."""
    for venv in ("venv", ".venv"):
        for relative in (("bin", "python"), ("Scripts", "python.exe")):
            candidate = Path(sd_scripts, venv, *relative)
            if candidate.is_file():
                return candidate
    return None


def upstream_checks(items: list[tuple[dict, list[str]]], timeout: float = 600,
                    env: dict | None = None) -> list[dict]:
    """Run each (settings, command)'s sd-scripts arguments through sd-scripts' own parser and
    pre-model checks in the training interpreter: one subprocess (no model loaded) per call, all
    items sharing the first item's --python and --sd-scripts. Returns one result per item:
    {"ok": bool, "stage", "error", "where", "passed", "environment": bool (could not run)}.
    env: the subprocess environment (default: this process's)."""
    settings = items[0][0]
    with tempfile.TemporaryDirectory(prefix="retrain_lora_v3_check_") as temp:
        checks = []
        for index, (item_settings, command) in enumerate(items):
            script_index = next(i for i, token in enumerate(command) if token.endswith("_network.py"))
            argv = list(command[script_index + 1:])
            dataset = Path(temp) / f"dataset_{index}.toml"
            dataset.write_text(dataset_toml_text(dataset_config(item_settings)), encoding="utf-8")
            argv[argv.index("--dataset_config") + 1] = str(dataset)
            checks.append({"argv": argv, "script": Path(SCRIPT_FOR[item_settings["model_type"]]).stem,
                           "model_type": item_settings["model_type"]})
        request = Path(temp) / "request.json"
        request.write_text(json.dumps({"sd_scripts": str(Path(settings["sd_scripts"]).resolve()),
                                       "checks": checks}), encoding="utf-8")
        env = dict(os.environ if env is None else env, PYTHONDONTWRITEBYTECODE="1",
                   PYTHONIOENCODING="utf-8")
        code = UPSTREAM_PROBE.replace("PROBE_MARK", repr(PROBE_MARK))
        failure = None
        try:
            completed = subprocess.run([str(settings["python"]), "-c", code, str(request)],
                                       capture_output=True, text=True, encoding="utf-8",
                                       errors="replace", timeout=timeout, env=env, cwd=temp)
        except subprocess.TimeoutExpired:
            failure = f"the check did not finish in {timeout:g} s (--upstream-timeout)"
        except OSError as error:
            failure = f"cannot start {settings['python']}: {error}"
    if failure is None:
        for line in reversed(completed.stdout.splitlines()):
            if line.startswith(PROBE_MARK):
                return json.loads(line[len(PROBE_MARK):])
        tail = [line for line in completed.stderr.splitlines() if line.strip()][-1:]
        failure = f"exit code {completed.returncode}" + (f": {tail[0][:300]}" if tail else "")
    return [{"ok": False, "environment": True, "stage": "import", "error": failure, "passed": []}
            for _ in items]


def upstream_check(settings: dict, command: list[str], timeout: float = 600) -> dict:
    """upstream_checks for one command."""
    return upstream_checks([(settings, command)], timeout)[0]


def describe_upstream(result: dict, settings: dict) -> str:
    where = f" at {result['where']}" if result.get("where") else ""
    if result.get("environment"):
        return (f"cannot run sd-scripts' checks with --python {settings['python']}: "
                f"{result.get('error')}{where}; is it the sd-scripts venv? check it with "
                f"`python3 validate_pod_deps.py --training-python {settings['python']}`")
    return (f"sd-scripts refuses this command ({result.get('stage')}{where}): {result.get('error')}")


def check_values(settings: dict) -> list[str]:
    """Single-flag value problems (ranges); messages name the flag."""
    problems = []
    for name, flag in (("steps", "--steps"), ("save_every", "--save-every"),
                       ("network_dim", "--network-dim"), ("num_repeats", "--num-repeats"),
                       ("train_batch_size", "--train-batch-size")):
        if int(settings[name]) < 1:
            problems.append(f"{flag} must be at least 1, got {settings[name]}")
    if float(settings["network_alpha"]) <= 0:
        problems.append(f"--network-alpha must be above 0, got {settings['network_alpha']}")
    if int(settings["resolution"]) < 64 or int(settings["resolution"]) % 64:
        problems.append(f"--resolution must be a positive multiple of 64, got {settings['resolution']}")
    for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        if not 0.0 <= float(settings[name]) <= 1.0:
            problems.append(f"--{name} must be between 0 and 1, got {settings[name]}")
    if settings.get("trigger") is not None and not str(settings["trigger"]).strip():
        problems.append("--trigger must not be empty")
    written = dict((full, name) for name, full in abbreviated_extra_flags(settings))
    for name in flags_from_tokens(resolved_extra_args(settings)):
        if name in MANAGED_KOHYA_FLAGS:
            how = (f"--extra-arg --{written[name]} (which sd-scripts reads as --{name})"
                   if name in written else f"--extra-arg --{name}")
            problems.append(f"{how} repeats a flag this script sets, and sd-scripts would let the "
                            f"last one win; pass --{name} to this script instead")
    if settings["model_type"] != "flux":
        for name in ("clip_l", "t5xxl", "ae"):
            if settings.get(name):
                problems.append(f"--{name.replace('_', '-')} is a Flux input; add --model-type flux")
    return problems


def missing_values(settings: dict) -> list[str]:
    """Required flags that were not given (always an error, --print-cmd included)."""
    problems = []
    for name, flag in (("base_model", "--base-model"), ("images", "--images"),
                       ("trigger", "--trigger"), ("output", "--output")):
        if not settings.get(name):
            problems.append(f"{flag} is required (on the command line or in --config)")
    if settings["model_type"] == "flux":
        for name in ("clip_l", "t5xxl", "ae"):
            if not settings.get(name):
                problems.append(f"--{name.replace('_', '-')} is required with --model-type flux")
    return problems


def missing_inputs(settings: dict) -> list[str]:
    """Paths that do not exist: errors, or warnings under --print-cmd (which needs no pod)."""
    problems = []
    model_type = settings["model_type"]
    script = Path(settings["sd_scripts"]) / SCRIPT_FOR[model_type]
    if not Path(settings["sd_scripts"]).is_dir():
        problems.append(f"--sd-scripts {settings['sd_scripts']} is not a folder; clone "
                        f"kohya-ss/sd-scripts there or pass --sd-scripts")
    elif not script.is_file():
        problems.append(f"--sd-scripts {settings['sd_scripts']} has no {SCRIPT_FOR[model_type]}; "
                        f"is it a kohya sd-scripts checkout (the sd3 branch or newer for Flux)?")
    base = settings.get("base_model")
    if base and not Path(base).exists():
        looks_like_hub_id = (model_type == "sdxl" and base.count("/") == 1 and not base.startswith(".")
                             and Path(base).suffix.lower() not in (".safetensors", ".ckpt", ".sft"))
        if not looks_like_hub_id:
            problems.append(f"--base-model {base} does not exist")
    if model_type == "flux":
        for name in ("clip_l", "t5xxl", "ae"):
            flag = "--" + name.replace("_", "-")
            if settings.get(name) and not Path(settings[name]).exists():
                problems.append(f"{flag} {settings[name]} does not exist")
    images = settings.get("images")
    if images:
        folder = Path(images)
        if not folder.is_dir():
            problems.append(f"--images {folder} is not a folder")
        elif not any(path.suffix.lower() in IMAGE_SUFFIXES for path in folder.iterdir()
                     if path.is_file()):
            problems.append(f"--images {folder} has no images ({', '.join(IMAGE_SUFFIXES)}) at its "
                            f"top level, which is all sd-scripts reads")
    return problems


def dataset_config_path(settings: dict) -> Path:
    return Path(settings["output"]) / "dataset_v3.toml"


def dataset_config(settings: dict) -> dict:
    """The kohya dataset config ([general] / [[datasets]] / [[datasets.subsets]]) as a dict."""
    class_tokens = " ".join(part for part in (settings.get("trigger"), settings.get("class_word"))
                            if part)
    general = {name: settings[name] for name in DATASET_SETTINGS}
    return {
        "general": general,
        "datasets": [
            {
                "resolution": int(settings["resolution"]),
                "batch_size": int(settings["train_batch_size"]),
                "enable_bucket": True,
                "bucket_no_upscale": True,
                "subsets": [
                    {
                        "image_dir": str(settings.get("images") or ""),
                        "class_tokens": class_tokens,
                        "num_repeats": int(settings["num_repeats"]),
                    }
                ],
            }
        ],
    }


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string is JSON-compatible


def dataset_toml_text(config: dict) -> str:
    """Serialise dataset_config() to TOML (stdlib has no TOML writer)."""
    lines = ["# Written by tools/retrain_lora_v3.py: kohya sd-scripts dataset config (--dataset_config).",
             "[general]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in config["general"].items()]
    for dataset in config["datasets"]:
        lines += ["", "[[datasets]]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in dataset.items() if key != "subsets"]
        for subset in dataset["subsets"]:
            lines += ["", "  [[datasets.subsets]]"]
            lines += [f"  {key} = {_toml_value(value)}" for key, value in subset.items()]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def build_command(settings) -> list[str]:
    """The full argv (launcher + sd-scripts script + flags) for resolved settings (dict or Namespace)."""
    if isinstance(settings, argparse.Namespace):
        settings = resolve_settings(settings)
    model_type = settings["model_type"]
    script = Path(settings["sd_scripts"]) / SCRIPT_FOR[model_type]
    python = settings.get("python") or sys.executable
    if settings.get("launcher", "accelerate") == "python":
        command = [python, str(script)]
    else:
        command = [python, "-m", "accelerate.commands.launch", "--num_processes", "1",
                   "--num_machines", "1", "--num_cpu_threads_per_process", "2",
                   "--dynamo_backend", "no", "--mixed_precision", str(settings["mixed_precision"]),
                   str(script)]
    args = [
        "--pretrained_model_name_or_path", str(settings.get("base_model") or ""),
        "--dataset_config", str(dataset_config_path(settings)) if settings.get("output") else "",
        "--output_dir", str(settings.get("output") or ""),
        "--output_name", str(settings["output_name"]),
        "--save_model_as", "safetensors",
        "--max_train_steps", str(settings["steps"]),
        "--save_every_n_steps", str(settings["save_every"]),
        "--network_module", NETWORK_MODULE_FOR[model_type],
        "--network_dim", str(settings["network_dim"]),
        "--network_alpha", _fmt(settings["network_alpha"]),
        "--optimizer_type", str(settings["optimizer_type"]),
        "--learning_rate", _fmt(settings["learning_rate"]),
    ]
    if settings.get("unet_lr") is not None:
        args += ["--unet_lr", _fmt(settings["unet_lr"])]
    if settings.get("text_encoder_lr") is not None:
        args += ["--text_encoder_lr"] + [_fmt(value) for value in _lrs(settings["text_encoder_lr"])]
    args += ["--optimizer_args", *optimizer_args(settings)]
    args += [
        "--lr_scheduler", str(settings["lr_scheduler"]),
        "--mixed_precision", str(settings["mixed_precision"]),
        "--save_precision", str(settings["save_precision"]),
        "--seed", str(settings["seed"]),
        "--max_data_loader_n_workers", str(settings["max_data_loader_n_workers"]),
        "--persistent_data_loader_workers",
    ]
    for name in BOOL_SETTINGS:
        if name in DATASET_SETTINGS:
            continue  # written to the dataset TOML
        if settings.get(name):
            args.append("--" + name)
    if model_type == "flux":
        args += [
            "--clip_l", str(settings.get("clip_l") or ""),
            "--t5xxl", str(settings.get("t5xxl") or ""),
            "--ae", str(settings.get("ae") or ""),
            "--guidance_scale", _fmt(settings["guidance_scale"]),
            "--timestep_sampling", str(settings["timestep_sampling"]),
            "--discrete_flow_shift", _fmt(settings["discrete_flow_shift"]),
            "--model_prediction_type", str(settings["model_prediction_type"]),
        ]
        if settings.get("blocks_to_swap"):
            args += ["--blocks_to_swap", str(settings["blocks_to_swap"])]
    args += resolved_extra_args(settings)
    return command + args


def optimizer_args(settings: dict) -> list[str]:
    """The --optimizer_args KEY=VALUE list. sd-scripts' get_optimizer passes every one to the
    optimizer class as a keyword (ast.literal_eval'd, library/train_util.py:4856-4874); every
    optimizer it offers takes weight_decay, so --weight-decay is passed whatever the optimizer."""
    decay = f"weight_decay={_fmt(settings['weight_decay'])}"
    if is_prodigy(settings["optimizer_type"]):
        return ["decouple=True", decay, "use_bias_correction=True", "safeguard_warmup=True",
                f"d_coef={_fmt(settings['d_coef'])}"]
    return [decay]


def default_settings(model_type: str) -> dict:
    """The recipe defaults with placeholder paths (what known_failures.py inspects)."""
    args = build_parser().parse_args([
        "--model-type", model_type, "--base-model", "/workspace/models/base.safetensors",
        "--images", "/workspace/training_images", "--trigger", "ohwx",
        "--output", "/workspace/lora_v3", "--sd-scripts", "/workspace/sd-scripts",
    ] + (["--clip-l", "/workspace/models/clip_l.safetensors",
          "--t5xxl", "/workspace/models/t5xxl_fp16.safetensors",
          "--ae", "/workspace/models/ae.safetensors"] if model_type == "flux" else []))
    return resolve_settings(args)


def default_command(model_type: str) -> list[str]:
    """The command the recipe defaults produce for `model_type` ('sdxl' or 'flux'), unvalidated."""
    return build_command(default_settings(model_type))


def default_dataset_config(model_type: str) -> dict:
    """The dataset TOML content the recipe defaults produce (dataset options live there)."""
    return dataset_config(default_settings(model_type))


def training_params(settings: dict, command: list[str], image_count: int) -> dict:
    """What evals/scorecard.py's history records about this training run."""
    keys = ("model_type", "base_model", "trigger", "class_word", "output_name", "resolution", "steps",
            "save_every", "network_dim", "network_alpha", "num_repeats", "train_batch_size", "seed",
            "optimizer_type", "learning_rate", "unet_lr", "text_encoder_lr", "d_coef",
            "weight_decay", "lr_scheduler", "mixed_precision", "save_precision", "blocks_to_swap",
            "clip_l", "t5xxl", "ae", "guidance_scale", "timestep_sampling", "discrete_flow_shift",
            "model_prediction_type") + BOOL_SETTINGS + DATASET_SETTINGS
    params = {key: settings.get(key) for key in dict.fromkeys(keys)}
    if not is_prodigy(settings.get("optimizer_type")):
        params["d_coef"] = None  # a Prodigy argument: not in the command for other optimizers
    return {
        "lora_version": "v3",
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "script": "tools/retrain_lora_v3.py",
        "images_dir": str(settings.get("images")),
        "images": image_count,
        "output_dir": str(settings.get("output")),
        "dataset_config": str(dataset_config_path(settings)),
        "extra_args": list(settings.get("extra_args", [])),
        "optimizer_args": optimizer_args(settings),
        "params": params,
        "command": command,
    }


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


def lora_files(settings: dict) -> dict[str, tuple[int, int]]:
    """{name: (size, mtime_ns)} of the LoRA files sd-scripts saves in the output folder: the final
    OUTPUT_NAME.safetensors and the OUTPUT_NAME-stepNNNNNNNN.safetensors saves."""
    found = {}
    stem = str(settings["output_name"])
    with contextlib.suppress(OSError):
        for path in Path(settings["output"]).iterdir():
            if path.suffix == ".safetensors" and (path.stem == stem or path.stem.startswith(stem + "-")):
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    found[path.name] = (stat.st_size, stat.st_mtime_ns)
    return found


def shell_line(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.config is not None:
            apply_config(parser, args, load_config_file(args.config), args.config)
        settings = resolve_settings(args)
        problems = missing_values(settings) + check_values(settings) + find_conflicts(settings)
    except SettingsError as error:
        parser.error(str(error))
    if problems:
        parser.error("; ".join(problems) if len(problems) == 1 else
                     f"{len(problems)} problems:\n  " + "\n  ".join(problems))
    missing = missing_inputs(settings)
    if missing and args.print_cmd:
        for message in missing:
            print(f"warning: {message}", file=sys.stderr)
    elif missing:
        parser.error(missing[0] if len(missing) == 1 else
                     f"{len(missing)} missing inputs:\n  " + "\n  ".join(missing))
    for message in find_warnings(settings):
        print(f"warning: {message}", file=sys.stderr)
    if args.upstream_timeout <= 0:
        parser.error("--upstream-timeout must be positive")
    command = build_command(settings)
    sd_scripts = Path(settings["sd_scripts"])
    checkout = (sd_scripts / "library" / "train_util.py").is_file() and (
        sd_scripts / SCRIPT_FOR[settings["model_type"]]).is_file()
    if args.skip_upstream_check:
        pass
    elif checkout:
        print(f"checking the command with sd-scripts' own parser and pre-model checks "
              f"({settings['python']}, no model loaded) ...", file=sys.stderr, flush=True)
        result = upstream_check(settings, command, args.upstream_timeout)
        if result.get("ok") and not result.get("images"):
            parser.error(f"sd-scripts finds no training image in --images {settings['images']}: it "
                         f"reads {', '.join(IMAGE_SUFFIXES)} files (lower or upper case, not hidden "
                         f"ones) at the folder's top level, and with none it logs 'No data found' "
                         f"and stops without training (train_network.py:575-579)")
        elif result.get("ok"):
            print(f"sd-scripts accepts the command: {', '.join(result.get('passed', []))} passed "
                  f"({result.get('images', 0)} training images found)", file=sys.stderr)
        elif result.get("environment") and args.print_cmd:
            print(f"warning: {describe_upstream(result, settings)}", file=sys.stderr)
        else:
            parser.error(describe_upstream(result, settings))
    elif not missing:
        print(f"warning: --sd-scripts {sd_scripts} has no library/train_util.py, so the command was "
              f"not run through sd-scripts' own checks (--extra-arg flags are checked against the "
              f"option names of sd-scripts {SD_SCRIPTS_COMMIT[:12]} only)", file=sys.stderr)
    if args.skip_upstream_check or not checkout:
        unknown = unknown_extra_flags(settings)
        if unknown:
            parser.error(f"--extra-arg {', '.join('--' + name for name in unknown)}: not an option of "
                         f"sd-scripts' {SCRIPT_FOR[settings['model_type']]} (commit "
                         f"{SD_SCRIPTS_COMMIT[:12]}); its parser would stop with 'unrecognized "
                         f"arguments'. Check the spelling (options use underscores)")
    if args.print_cmd:
        print(shell_line(command))
        return 0
    if settings["launcher"] == "accelerate" and not args.dry_run:
        if importlib.util.find_spec("accelerate") is None:
            parser.error("--launcher accelerate needs the accelerate package (pip install "
                         "accelerate==1.11.0, see requirements-pod.txt) or use --launcher python")
    output = Path(settings["output"])
    output.mkdir(parents=True, exist_ok=True)
    images = [path for path in Path(settings["images"]).iterdir()
              if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    write_atomic(dataset_config_path(settings), dataset_toml_text(dataset_config(settings)))
    params = training_params(settings, command, len(images))
    write_atomic(output / "training_params.json", json.dumps(params, indent=2) + "\n")
    print(f"wrote {dataset_config_path(settings)} and {output / 'training_params.json'}",
          file=sys.stderr)
    print(shell_line(command))
    if args.dry_run:
        return 0
    print(f"launching sd-scripts {SCRIPT_FOR[settings['model_type']]} in {settings['sd_scripts']}",
          file=sys.stderr, flush=True)
    before = lora_files(settings)
    try:
        completed = subprocess.run(command, cwd=str(settings["sd_scripts"]))
    except OSError as error:
        print(f"error: cannot start {command[0]}: {error}", file=sys.stderr)
        return 2
    if completed.returncode != 0:
        print(f"error: training failed: {shell_line(command[:2])} ... exited with code "
              f"{completed.returncode}", file=sys.stderr)
        return 1
    written = sorted(name for name, stamp in lora_files(settings).items() if before.get(name) != stamp)
    if not written:
        print(f"error: sd-scripts exited 0 but wrote no LoRA file ({settings['output_name']}"
              f"*.safetensors) in {output}: it stopped without training (its log above says why, "
              f"e.g. 'No data found')", file=sys.stderr)
        return 1
    print(f"training finished; LoRA files in {output}: {', '.join(written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
