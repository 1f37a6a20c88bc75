"""tools/retrain_lora_v3.py: the sd-scripts command, its checks, the files it writes, the launch."""
from __future__ import annotations

import json
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from conftest import load_script, run_script

SCRIPT = "tools/retrain_lora_v3.py"
retrain = load_script(SCRIPT)

# Option names of kohya sd-scripts, read from its argument parsers (train_network.setup_parser,
# library/train_util.py add_*_arguments, sdxl_train_util.add_sdxl_training_arguments,
# add_dit_training_arguments, flux_train_utils.add_flux_train_arguments). A typo in a flag this
# script writes would only surface on the pod as "unrecognized arguments".
SD_SCRIPTS_OPTIONS = {
    "pretrained_model_name_or_path", "dataset_config", "output_dir", "output_name", "save_model_as",
    "max_train_steps", "save_every_n_steps", "network_module", "network_dim", "network_alpha",
    "optimizer_type", "learning_rate", "unet_lr", "text_encoder_lr", "optimizer_args",
    "lr_scheduler", "mixed_precision", "save_precision", "seed", "max_data_loader_n_workers",
    "persistent_data_loader_workers", "network_train_unet_only", "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk", "cache_latents", "cache_latents_to_disk",
    "gradient_checkpointing", "xformers", "sdpa", "full_bf16", "full_fp16", "fp8_base",
    "cpu_offload_checkpointing", "blocks_to_swap",
}
SD_SCRIPTS_FLUX_OPTIONS = {
    "clip_l", "t5xxl", "ae", "guidance_scale", "timestep_sampling", "discrete_flow_shift",
    "model_prediction_type",
}
ACCELERATE_LAUNCH_OPTIONS = {"num_processes", "num_machines", "num_cpu_threads_per_process",
                             "dynamo_backend", "mixed_precision"}


def base_args(tmp_path: Path, model_type: str = "sdxl") -> list[str]:
    args = ["--base-model", str(tmp_path / "missing.safetensors"), "--images", str(tmp_path / "imgs"),
            "--trigger", "ohwx", "--output", str(tmp_path / "out"),
            "--sd-scripts", str(tmp_path / "no-sd-scripts")]
    if model_type == "flux":
        args += ["--model-type", "flux", "--clip-l", "c.safetensors", "--t5xxl", "t.safetensors",
                 "--ae", "ae.safetensors"]
    return args


def options_of(command: list[str]) -> tuple[list[str], dict]:
    """(launcher part, {kohya option: values}) of a built command."""
    index = next(i for i, token in enumerate(command) if token.endswith("_network.py"))
    options: dict[str, list[str]] = {}
    current = None
    for token in command[index + 1:]:
        if token.startswith("--"):
            current = token[2:]
            options[current] = []
        else:
            options[current].append(token)
    return command[:index + 1], options


@pytest.fixture
def pod(tmp_path: Path) -> dict:
    """A fake pod layout: sd-scripts checkout, base model file, a folder of two small images."""
    sd_scripts = tmp_path / "sd-scripts"
    sd_scripts.mkdir()
    recorder = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "args = sys.argv[1:]\n"
        "out = Path(args[args.index('--output_dir') + 1])\n"
        "(out / 'argv.json').write_text(json.dumps(args), encoding='utf-8')\n"
        "(out / 'cwd.txt').write_text(str(Path.cwd()), encoding='utf-8')\n"
        "if not __import__('os').environ.get('FAKE_TRAIN_NO_LORA'):  # what a finished run saves\n"
        "    name = args[args.index('--output_name') + 1]\n"
        "    (out / (name + '.safetensors')).write_bytes(b'a LoRA')\n"
        "sys.exit(int(__import__('os').environ.get('FAKE_TRAIN_EXIT', '0')))\n"
    )
    for name in ("sdxl_train_network.py", "flux_train_network.py"):
        (sd_scripts / name).write_text(recorder, encoding="utf-8")
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"not really a model")
    images = tmp_path / "training images"
    images.mkdir()
    for index, color in enumerate([(200, 150, 120), (90, 60, 40)]):
        Image.new("RGB", (64, 64), color).save(images / f"face_{index}.png")
    (images / "face_0.txt").write_text("ohwx, a man\n", encoding="utf-8")
    return {"sd_scripts": sd_scripts, "base": base, "images": images, "out": tmp_path / "lora out"}


def pod_args(pod: dict) -> list[str]:
    return ["--base-model", str(pod["base"]), "--images", str(pod["images"]), "--trigger", "ohwx",
            "--output", str(pod["out"]), "--sd-scripts", str(pod["sd_scripts"])]


# ----------------------------------------------------------------------------------------------
# CLI (subprocess)


def test_help_exits_0_and_states_defaults():
    result = run_script(SCRIPT, "--help")
    assert result.returncode == 0
    assert "--print-cmd" in result.stdout and "(default: 1500)" in result.stdout


def test_acceptance_line_names_both_flags(tmp_path):
    result = run_script(SCRIPT, "--print-cmd", *base_args(tmp_path),
                        "--cache_text_encoder_outputs", "--text_encoder_lr", "1e-5")
    assert result.returncode == 2, result.stderr
    assert "--cache_text_encoder_outputs" in result.stderr and "--text_encoder_lr" in result.stderr
    assert result.stdout == ""


def test_print_cmd_needs_no_pod_and_writes_nothing(tmp_path):
    result = run_script(SCRIPT, "--print-cmd", *base_args(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    command = shlex.split(lines[0])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    launcher, options = options_of(command)
    assert launcher[-1].endswith("sdxl_train_network.py")
    assert options["optimizer_type"] == ["prodigy"] and options["learning_rate"] == ["1"]
    assert options["optimizer_args"] == ["decouple=True", "weight_decay=0.01", "use_bias_correction=True",
                                         "safeguard_warmup=True", "d_coef=1"]
    for flag in ("network_train_unet_only", "cache_text_encoder_outputs", "cache_latents",
                 "cache_latents_to_disk", "gradient_checkpointing", "xformers"):
        assert options[flag] == [], flag
    assert options["lr_scheduler"] == ["constant"] and options["mixed_precision"] == ["bf16"]
    assert options["network_module"] == ["networks.lora"]
    assert "text_encoder_lr" not in options and "sdpa" not in options
    assert "warning:" in result.stderr and "--sd-scripts" in result.stderr
    assert list(tmp_path.iterdir()) == [], "--print-cmd must not write files"


def test_print_cmd_flux_uses_flux_script_and_flags(tmp_path):
    result = run_script(SCRIPT, "--print-cmd", *base_args(tmp_path, "flux"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    launcher, options = options_of(shlex.split(result.stdout))
    assert launcher[-1].endswith("flux_train_network.py")
    assert options["network_module"] == ["networks.lora_flux"]
    # relative paths are made absolute: sd-scripts runs in its checkout
    assert options["clip_l"] == [str(tmp_path / "c.safetensors")]
    assert options["ae"] == [str(tmp_path / "ae.safetensors")]
    assert options["timestep_sampling"] == ["shift"] and options["model_prediction_type"] == ["raw"]
    for flag in ("sdpa", "fp8_base", "network_train_unet_only", "cache_text_encoder_outputs"):
        assert options[flag] == [], flag
    assert "xformers" not in options


def test_missing_inputs_are_errors_without_print_cmd(tmp_path):
    result = run_script(SCRIPT, "--dry-run", *base_args(tmp_path))
    assert result.returncode == 2
    assert "--sd-scripts" in result.stderr and "--base-model" in result.stderr
    assert "--images" in result.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_writes_dataset_toml_and_training_params(pod):
    result = run_script(SCRIPT, "--dry-run", *pod_args(pod), "--class-word", "man", "--steps", "800")
    assert result.returncode == 0, result.stderr
    dataset_path = pod["out"] / "dataset_v3.toml"
    dataset = tomllib.loads(dataset_path.read_text(encoding="utf-8"))
    assert dataset["general"]["caption_extension"] == ".txt"
    assert dataset["general"]["shuffle_caption"] is False
    subset = dataset["datasets"][0]["subsets"][0]
    assert Path(subset["image_dir"]) == pod["images"]
    assert subset["class_tokens"] == "ohwx man" and subset["num_repeats"] == 10
    assert dataset["datasets"][0]["resolution"] == 1024
    params = json.loads((pod["out"] / "training_params.json").read_text(encoding="utf-8"))
    assert params["lora_version"] == "v3" and params["images"] == 2
    assert params["params"]["steps"] == 800 and params["params"]["model_type"] == "sdxl"
    assert params["command"] == shlex.split(result.stdout.strip())
    _, options = options_of(params["command"])
    assert Path(options["dataset_config"][0]) == dataset_path
    assert not (pod["out"] / "argv.json").exists(), "--dry-run must not launch"


def test_launch_runs_sd_scripts_with_the_printed_command(pod):
    result = run_script(SCRIPT, *pod_args(pod), "--launcher", "python",
                        "--extra-arg", "--noise_offset 0.05")
    assert result.returncode == 0, result.stderr
    argv = json.loads((pod["out"] / "argv.json").read_text(encoding="utf-8"))
    printed = shlex.split(result.stdout.strip())
    assert printed[0] == sys.executable and printed[1].endswith("sdxl_train_network.py")
    assert argv == printed[2:]
    assert argv[-2:] == ["--noise_offset", "0.05"]


def test_training_failure_exits_1(pod):
    result = run_script(SCRIPT, *pod_args(pod), "--launcher", "python",
                        env={"FAKE_TRAIN_EXIT": "3"})
    assert result.returncode == 1
    assert "exited with code 3" in result.stderr


def test_relative_paths_name_the_same_files_when_sd_scripts_runs_in_its_checkout(pod, tmp_path):
    """A careless user passes relative paths; sd-scripts runs with its checkout as working folder."""
    args = ["--base-model", "base.safetensors", "--images", "training images", "--trigger", "ohwx",
            "--output", "lora out", "--sd-scripts", "sd-scripts", "--launcher", "python"]
    result = run_script(SCRIPT, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (pod["out"] / "argv.json").is_file(), "the LoRA must land in ./lora out, not in sd-scripts/"
    assert Path((pod["out"] / "cwd.txt").read_text(encoding="utf-8")) == pod["sd_scripts"]
    _, options = options_of(shlex.split(result.stdout.strip()))
    assert options["pretrained_model_name_or_path"] == [str(pod["base"])]
    assert options["output_dir"] == [str(pod["out"])]
    assert options["dataset_config"] == [str(pod["out"] / "dataset_v3.toml")]
    dataset = tomllib.loads((pod["out"] / "dataset_v3.toml").read_text(encoding="utf-8"))
    assert dataset["datasets"][0]["subsets"][0]["image_dir"] == str(pod["images"])
    params = json.loads((pod["out"] / "training_params.json").read_text(encoding="utf-8"))
    assert params["images_dir"] == str(pod["images"]) and params["output_dir"] == str(pod["out"])


def test_relative_flux_inputs_and_python_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    settings = retrain.resolve_settings(retrain.build_parser().parse_args(
        [*base_args(tmp_path, "flux"), "--python", "venv/bin/python", "--base-model", "org/hub-id"]))
    for name in ("clip_l", "t5xxl", "ae"):
        assert Path(settings[name]).is_absolute() and Path(settings[name]).parent == tmp_path, name
    assert settings["python"] == str(tmp_path / "venv" / "bin" / "python")
    assert settings["base_model"] == "org/hub-id", "a name that is not a file stays as given (hub id)"


def test_sd_scripts_exiting_0_without_a_lora_file_is_a_failure(pod):
    """sd-scripts returns 0 after 'No data found' (or any early stop): that is no finished training."""
    result = run_script(SCRIPT, *pod_args(pod), "--launcher", "python", env={"FAKE_TRAIN_NO_LORA": "1"})
    assert result.returncode == 1, result.stderr
    assert "wrote no LoRA file (ohwx_v3_sdxl*.safetensors)" in result.stderr
    assert "training finished" not in result.stderr
    result = run_script(SCRIPT, *pod_args(pod), "--launcher", "python")
    assert result.returncode == 0, result.stderr
    assert "training finished" in result.stderr and "ohwx_v3_sdxl.safetensors" in result.stderr
    # A second run that writes nothing new does not count the first run's file.
    result = run_script(SCRIPT, *pod_args(pod), "--launcher", "python", env={"FAKE_TRAIN_NO_LORA": "1"})
    assert result.returncode == 1, result.stderr


@pytest.mark.parametrize("optimizer", ["AdamW", "Lion", "SGDNesterov", "Adafactor", "prodigyopt.Prodigy"])
def test_weight_decay_reaches_every_optimizer_and_is_recorded_as_passed(pod, optimizer):
    """--weight-decay 0.1 with AdamW was recorded in training_params.json but never passed."""
    result = run_script(SCRIPT, "--dry-run", *pod_args(pod), "--optimizer-type", optimizer,
                        "--learning-rate", "1" if "Prodigy" in optimizer else "1e-4", "--weight-decay", "0.1")
    assert result.returncode == 0, result.stderr
    _, options = options_of(shlex.split(result.stdout))
    assert "weight_decay=0.1" in options["optimizer_args"], options.get("optimizer_args")
    params = json.loads((pod["out"] / "training_params.json").read_text(encoding="utf-8"))
    assert params["params"]["weight_decay"] == 0.1
    assert params["optimizer_args"] == options["optimizer_args"]
    if "Prodigy" in optimizer:
        assert params["params"]["d_coef"] == 1.0 and "d_coef=1" in options["optimizer_args"]
    else:
        assert params["params"]["d_coef"] is None, "d_coef is not passed to this optimizer"
        assert options["optimizer_args"] == ["weight_decay=0.1"]


def test_config_file_toml_and_json_with_command_line_winning(pod, tmp_path):
    toml_config = tmp_path / "v3.toml"
    toml_config.write_text('steps = 700\nnetwork-dim = 16\nshuffle_caption = false\n', encoding="utf-8")
    result = run_script(SCRIPT, "--print-cmd", *pod_args(pod), "--config", toml_config,
                        "--network-dim", "64")
    assert result.returncode == 0, result.stderr
    _, options = options_of(shlex.split(result.stdout))
    assert options["max_train_steps"] == ["700"] and options["network_dim"] == ["64"]

    json_config = tmp_path / "v3.json"
    json_config.write_text(json.dumps({"model_type": "flux", "clip_l": "c", "t5xxl": "t", "ae": "a",
                                       "blocks_to_swap": 40}), encoding="utf-8")
    result = run_script(SCRIPT, "--print-cmd", *pod_args(pod), "--config", json_config)
    assert result.returncode == 2
    assert "--blocks_to_swap" in result.stderr and "35" in result.stderr

    json_config.write_text(json.dumps({"stepz": 5}), encoding="utf-8")
    result = run_script(SCRIPT, "--print-cmd", *pod_args(pod), "--config", json_config)
    assert result.returncode == 2 and "stepz" in result.stderr


@pytest.mark.parametrize("config,must_name", [
    ({"model_type": "SDXL"}, ["model_type", "--model-type must be one of flux, sdxl"]),
    ({"model_type": "Flux"}, ["--model-type must be one of"]),
    ({"steps": "abc"}, ["steps", "invalid int value for --steps"]),
    ({"steps": 700.5}, ["invalid int value for --steps"]),
    ({"steps": True}, ["--steps takes a number"]),
    ({"network_alpha": [16]}, ["--network-alpha takes a number"]),
    ({"extra_arg": 5}, ["--extra-arg takes a string or a list of strings"]),
    ({"extra_arg": ["--noise_offset 0.05", 5]}, ["--extra-arg takes a string or a list of strings"]),
    ({"xformers": "false"}, ["xformers", "write true or false"]),
    ({"xformers": 0}, ["write true or false"]),
    ({"mixed_precision": "BF16"}, ["--mixed-precision must be one of no, fp16, bf16"]),
    ({"launcher": "Accelerate"}, ["--launcher must be one of accelerate, python"]),
    ({"class_word": 7}, ["--class-word takes a string"]),
    ({"output_name": ["a", "b"]}, ["--output-name takes a string"]),
])
def test_config_values_are_checked_like_the_flags(pod, tmp_path, config, must_name):
    """A hand-written JSON config: wrong types and case become exit 2 naming the key, no traceback."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = run_script(SCRIPT, "--print-cmd", *pod_args(pod), "--config", path)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert str(path) in result.stderr
    for name in must_name:
        assert name in result.stderr, (name, result.stderr)


def test_config_values_of_the_right_type_are_used(pod, tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps({"steps": "800", "network_alpha": 8, "xformers": False, "sdpa": True,
                                "mixed_precision": "fp16", "save_precision": "fp16",
                                "extra_arg": "--noise_offset 0.05"}), encoding="utf-8")
    result = run_script(SCRIPT, "--print-cmd", *pod_args(pod), "--config", path)
    assert result.returncode == 0, result.stderr
    _, options = options_of(shlex.split(result.stdout))
    assert options["max_train_steps"] == ["800"] and options["network_alpha"] == ["8"]
    assert "xformers" not in options and options["sdpa"] == []
    assert options["mixed_precision"] == ["fp16"] and options["noise_offset"] == ["0.05"]


def test_unbalanced_quote_in_extra_arg_is_a_usage_error(tmp_path):
    result = run_script(SCRIPT, "--print-cmd", *base_args(tmp_path), "--extra-arg=--noise_offset '0.05")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--extra-arg" in result.stderr and "No closing quotation" in result.stderr


# ----------------------------------------------------------------------------------------------
# In-process: the checks


# Every combination sd-scripts (or Prodigy) refuses: (model type, launcher flags, names the refusal
# message must hold, the upstream place that raises). The same table drives the tests that run
# sd-scripts itself below, and tests/test_known_failures.py.
UPSTREAM_CONFLICTS = [
    ("sdxl", ["--cpu_offload_checkpointing"], ["--cpu_offload_checkpointing", "--model-type sdxl"],
     "library/sdxl_original_unet.py:1041"),
    ("sdxl", ["--extra-arg=--lr_warmup_steps 100"], ["--lr_scheduler constant", "--lr_warmup_steps"],
     "library/train_util.py:5296"),
    ("flux", ["--extra-arg=--lr_warmup_steps 0.1"], ["--lr_scheduler constant", "--lr_warmup_steps"],
     "library/train_util.py:5296"),
    ("sdxl", ["--lr-scheduler", "cosine_annealing"], ["--lr_scheduler cosine_annealing"],
     "library/train_util.py:5326"),
    ("sdxl", ["--extra-arg=--network_args loraplus_lr_ratio=16"], ["--optimizer_type prodigy", "loraplus_lr_ratio"],
     "prodigyopt/prodigy.py:152"),
    ("flux", ["--extra-arg=--network_args loraplus_unet_lr_ratio=4"],
     ["--optimizer_type prodigy", "loraplus_unet_lr_ratio"], "prodigyopt/prodigy.py:152"),
    ("sdxl", ["--extra-arg=--network_args down_lr_weight=1,0.5,0.5,0.5,1,1,1,1,1"],
     ["--optimizer_type prodigy", "down_lr_weight"], "prodigyopt/prodigy.py:152"),
    ("sdxl", ["--extra-arg=--bucket_reso_steps 48"], ["--bucket_reso_steps 48", "32"], "library/train_util.py:1094"),
    ("flux", ["--extra-arg=--bucket_reso_steps 96"], ["--bucket_reso_steps 96", "64"], "library/train_util.py:1094"),
    ("sdxl", ["--extra-arg=--fused_backward_pass"], ["--fused_backward_pass", "Adafactor"],
     "library/train_util.py:4850"),
    ("sdxl", ["--extra-arg=--adaptive_noise_scale 0.1"], ["--adaptive_noise_scale", "--noise_offset"],
     "library/train_util.py:4444"),
    ("sdxl", ["--extra-arg=--v2"], ["--v2", "--model-type sdxl"], "library/sdxl_train_util.py:349"),
    # Shortened options: sd-scripts' parser (allow_abbrev) reads each as the one option it starts.
    ("sdxl", ["--extra-arg=--lr_warmup 100"], ["--lr_scheduler constant", "--lr_warmup_steps"],
     "library/train_util.py:5296"),
    ("sdxl", ["--extra-arg=--adaptive_noise 0.01"], ["--adaptive_noise_scale", "--noise_offset"],
     "library/train_util.py:4444"),
    ("sdxl", ["--extra-arg=--fused_backward"], ["--fused_backward_pass", "Adafactor"],
     "library/train_util.py:4850"),
    ("sdxl", ["--extra-arg=--bucket_reso 48"], ["--bucket_reso_steps 48", "32"], "library/train_util.py:1094"),
    # 0 and 1 are values (0 == False and 1 == True in Python): upstream tests `is None`.
    ("sdxl", ["--extra-arg=--adaptive_noise_scale 0"], ["--adaptive_noise_scale", "--noise_offset"],
     "library/train_util.py:4444"),
    ("sdxl", ["--extra-arg=--bucket_reso_steps 1"], ["--bucket_reso_steps 1", "32"], "library/train_util.py:1094"),
    ("sdxl", ["--extra-arg=--lr_warmup_steps 1"], ["--lr_scheduler constant", "--lr_warmup_steps"],
     "library/train_util.py:5296"),
    # Prodigy by its dotted path: sd-scripts loads the class by name, the same Prodigy.
    ("sdxl", ["--optimizer-type", "prodigyopt.Prodigy", "--extra-arg=--network_args loraplus_lr_ratio=16"],
     ["--optimizer_type prodigyopt.Prodigy", "loraplus_lr_ratio"], "prodigyopt/prodigy.py:152"),
    # A network argument without '=': train_network.py splits it after loading the model.
    ("sdxl", ["--extra-arg=--network_args loraplus_lr_ratio"], ["--network_args loraplus_lr_ratio", "'='"],
     "train_network.py:667"),
    # Scheduler names get_scheduler_fix cannot build with its default arguments.
    ("sdxl", ["--lr-scheduler", "cosine_with_min_lr"], ["--lr_scheduler cosine_with_min_lr",
                                                        "--lr_scheduler_min_lr_ratio"], "library/train_util.py:5361"),
    ("sdxl", ["--lr-scheduler", "piecewise_constant"], ["--lr_scheduler piecewise_constant", "step_rules"],
     "library/train_util.py:5324"),
    ("sdxl", ["--lr-scheduler", "reduce_lr_on_plateau"], ["--lr_scheduler reduce_lr_on_plateau"],
     "library/train_util.py:5393"),
    ("flux", ["--lr-scheduler", "cosine_warmup_with_min_lr"], ["--lr_scheduler cosine_warmup_with_min_lr"],
     "library/train_util.py:5393"),
]
# Refused by the launcher only (its own rule, not an upstream error), or refused upstream by checks
# the tests above do not re-run here (covered by test_conflicts_exit_2_naming_both_flags).
LAUNCHER_CONFLICTS = [
    (["--no-network_train_unet_only"], "sdxl", ["--cache_text_encoder_outputs", "--network_train_unet_only"]),
    (["--shuffle_caption"], "sdxl", ["--cache_text_encoder_outputs", "--shuffle_caption"]),
    (["--caption_dropout_rate", "0.1"], "sdxl", ["--cache_text_encoder_outputs", "--caption_dropout_rate"]),
    (["--caption_tag_dropout_rate", "0.2"], "flux", ["--cache_text_encoder_outputs", "--caption_tag_dropout_rate"]),
    (["--caption_dropout_every_n_epochs", "3"], "sdxl",
     ["--cache_text_encoder_outputs", "--caption_dropout_every_n_epochs"]),
    (["--extra-arg", "--token_warmup_step 10"], "sdxl", ["--cache_text_encoder_outputs", "--token_warmup_step"]),
    (["--color_aug"], "sdxl", ["--cache_latents", "--color_aug"]),
    (["--random_crop"], "flux", ["--cache_latents", "--random_crop"]),
    (["--full_bf16", "--mixed_precision", "fp16"], "sdxl", ["--full_bf16", "--mixed_precision"]),
    (["--full_fp16"], "sdxl", ["--full_fp16", "--mixed_precision"]),
    (["--mixed_precision", "no", "--save_precision", "float"], "flux", ["--fp8_base", "--mixed_precision"]),
    (["--blocks_to_swap", "36"], "flux", ["--blocks_to_swap", "--model-type flux"]),
    (["--blocks_to_swap", "8", "--cpu_offload_checkpointing"], "flux",
     ["--blocks_to_swap", "--cpu_offload_checkpointing"]),
    (["--no-network_train_unet_only", "--no-cache_text_encoder_outputs",
      "--no-cache_text_encoder_outputs_to_disk", "--text_encoder_lr", "0.5"], "sdxl",
     ["--optimizer_type prodigy", "--unet_lr", "--text_encoder_lr", "prodigyopt/prodigy.py:151"]),
    (["--extra-arg", "--text_encoder_lr 1e-5"], "sdxl", ["--cache_text_encoder_outputs", "--text_encoder_lr"]),
    (["--cache_text_encoder_outputs", "--text_encoder_lr", "1e-5"], "flux",
     ["--cache_text_encoder_outputs", "--text_encoder_lr", "silently ignored"]),
    (["--extra-arg", "--dataset_config other.toml"], "sdxl", ["--extra-arg --dataset_config"]),
] + [(flags, model_type, names) for model_type, flags, names, _ in UPSTREAM_CONFLICTS]


@pytest.mark.parametrize("extra,model_type,must_name", LAUNCHER_CONFLICTS)
def test_conflicts_exit_2_naming_both_flags(tmp_path, capsys, extra, model_type, must_name):
    with pytest.raises(SystemExit) as exit_info:
        retrain.main(["--print-cmd", *base_args(tmp_path, model_type), *extra])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    for name in must_name:
        assert name in error, (name, error)


@pytest.mark.parametrize("model_type,extra,must_name,upstream", UPSTREAM_CONFLICTS,
                         ids=lambda value: value if isinstance(value, str) else None)
def test_each_upstream_conflict_message_quotes_the_upstream_place(model_type, extra, must_name, upstream):
    settings = retrain.resolve_settings(retrain.build_parser().parse_args(
        [*base_args(Path("/nonexistent"), model_type), *extra]))
    problems = retrain.find_conflicts(settings)
    assert len(problems) == 1, problems
    assert upstream.rsplit(":", 1)[0] in problems[0], problems[0]


@pytest.mark.parametrize("extra,model_type,warning", [
    (["--blocks_to_swap", "35"], "flux", None),
    (["--no-cache_text_encoder_outputs", "--no-cache_text_encoder_outputs_to_disk", "--shuffle_caption",
      "--no-cache_latents", "--no-cache_latents_to_disk", "--color_aug"], "sdxl", None),
    (["--learning_rate", "0.8", "--full_bf16"], "sdxl", None),
    (["--optimizer_type", "AdamW8bit", "--learning_rate", "1e-4"], "sdxl", None),
    # Not upstream conflicts: accepted by sd-scripts, so a warning at most.
    (["--no-cache_text_encoder_outputs", "--no-cache_text_encoder_outputs_to_disk",
      "--text_encoder_lr", "1e-5"], "sdxl", "silently ignored with --network_train_unet_only"),
    (["--text_encoder_lr", "0"], "sdxl", None),  # lr 0: sd-scripts drops the group, Prodigy accepts 0
    (["--no-network_train_unet_only", "--no-cache_text_encoder_outputs",
      "--no-cache_text_encoder_outputs_to_disk", "--text_encoder_lr", "0"], "sdxl", None),
    (["--learning_rate", "1e-4"], "sdxl", "sd-scripts itself only warns at lr <= 0.1"),
    (["--unet_lr", "3"], "flux", "keep it near 1.0"),
    (["--full_bf16", "--full_fp16", "--mixed_precision", "fp16", "--save_precision", "fp16"], "sdxl",
     "full_fp16 wins"),
    (["--extra-arg=--lr_warmup_steps 100", "--lr-scheduler", "constant_with_warmup"], "sdxl", None),
    (["--extra-arg=--bucket_reso_steps 32"], "sdxl", None),
    (["--extra-arg=--network_args loraplus_lr_ratio=16", "--optimizer_type", "AdamW", "--learning_rate",
      "1e-4"], "sdxl", None),
    (["--extra-arg=--network_args loraplus_text_encoder_lr_ratio=4"], "sdxl", None),  # no TE trained
    (["--extra-arg=--network_args down_lr_weight=1,0,1"], "sdxl", None),  # 0 drops, 1 is the lr
    (["--extra-arg=--network_args down_lr_weight=1,0.5"], "flux", "networks.lora_flux ignores them"),
    (["--extra-arg=--noise_offset 0.05 --adaptive_noise_scale 0.01"], "sdxl", None),
])
def test_valid_overrides_print_a_command(tmp_path, capsys, extra, model_type, warning):
    assert retrain.main(["--print-cmd", *base_args(tmp_path, model_type), *extra]) == 0
    captured = capsys.readouterr()
    assert "_train_network.py" in captured.out
    if warning:
        assert warning in captured.err, captured.err


@pytest.mark.parametrize("extra,must_name", [
    # sd-scripts lets the last of two values win: these would silently replace the recipe's values.
    ("--optimizer_arg decouple=False", ["--extra-arg --optimizer_arg", "--optimizer_args", "repeats a flag"]),
    ("--network_di 64", ["--extra-arg --network_di", "--network_dim", "repeats a flag"]),
    ("--max_train_st 10", ["--max_train_steps", "repeats a flag"]),
    # a prefix of several options: argparse refuses it, only on the pod without a checkout here
    ("--cache_text 1", ["--extra-arg --cache_text is ambiguous", "--cache_text_encoder_outputs"]),
    ("--output x", ["--extra-arg --output is ambiguous", "--output_config"]),
])
def test_shortened_extra_arg_options_are_resolved_or_refused(tmp_path, capsys, extra, must_name):
    with pytest.raises(SystemExit) as exit_info:
        retrain.main(["--print-cmd", *base_args(tmp_path), f"--extra-arg={extra}"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    for name in must_name:
        assert name in error, (name, error)


def test_a_shortened_option_is_written_out_in_the_command_with_a_warning(tmp_path, capsys):
    assert retrain.main(["--print-cmd", *base_args(tmp_path), "--lr-scheduler", "constant_with_warmup",
                         "--extra-arg=--lr_warm 10 --min_snr=5"]) == 0
    captured = capsys.readouterr()
    _, options = options_of(shlex.split(captured.out))
    assert options["lr_warmup_steps"] == ["10"] and "lr_warm" not in options
    assert options["min_snr_gamma=5"] == []  # kept as one token, --min_snr_gamma=5
    assert "--lr_warm is a shortened option that sd-scripts' parser reads as --lr_warmup_steps" in captured.err


@pytest.mark.parametrize("flags", [[], ["--skip-upstream-check"]])
def test_an_unknown_extra_arg_option_is_refused_when_sd_scripts_cannot_check_it(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        retrain.main(["--print-cmd", *base_args(tmp_path), "--extra-arg=--noise_ofset 0.05", *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--extra-arg --noise_ofset: not an option of sd-scripts' sdxl_train_network.py" in error
    with pytest.raises(SystemExit):  # dashes: sd-scripts' options are spelled with underscores only
        retrain.main(["--print-cmd", *base_args(tmp_path), "--extra-arg=--noise-offset 0.05", *flags])
    assert "--noise-offset: not an option" in capsys.readouterr().err


def test_prodigy_is_recognised_by_every_spelling_sd_scripts_accepts():
    for name in ("prodigy", "Prodigy", "PRODIGY", "prodigyopt.Prodigy"):
        assert retrain.is_prodigy(name), name
    for name in ("AdamW", "DAdaptAdam", "prodigyplus.ProdigyPlusScheduleFree", "ProdigyPlusScheduleFree"):
        assert not retrain.is_prodigy(name), name


@pytest.mark.parametrize("model_type", ["sdxl", "flux"])
def test_defaults_have_no_conflict_and_only_real_sd_scripts_flags(model_type):
    settings = retrain.default_settings(model_type)
    assert retrain.find_conflicts(settings) == []
    command = retrain.default_command(model_type)
    launcher, options = options_of(command)
    known = SD_SCRIPTS_OPTIONS | (SD_SCRIPTS_FLUX_OPTIONS if model_type == "flux" else set())
    assert set(options) <= known, set(options) - known
    launcher_flags = {token[2:] for token in launcher if token.startswith("--")}
    assert launcher_flags <= ACCELERATE_LAUNCH_OPTIONS
    dataset = retrain.default_dataset_config(model_type)
    assert set(dataset) == {"general", "datasets"}
    assert dataset["datasets"][0]["subsets"][0]["num_repeats"] == 10


def test_dataset_toml_text_round_trips(tmp_path):
    settings = retrain.default_settings("sdxl")
    settings["images"] = tmp_path / 'odd "name" \\ folder'
    text = retrain.dataset_toml_text(retrain.dataset_config(settings))
    parsed = tomllib.loads(text)
    assert parsed == json.loads(json.dumps(retrain.dataset_config(settings)))


def test_toml_config_without_tomllib_says_what_to_do(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text("steps = 5\n", encoding="utf-8")
    monkeypatch.setattr(retrain, "_toml_module", lambda: None)
    with pytest.raises(retrain.SettingsError, match="tomli"):
        retrain.load_config_file(config)


def test_print_cmd_works_where_torch_and_accelerate_cannot_be_imported(tmp_path):
    """A machine without GPU, torch or sd-scripts: block those imports and run the script."""
    import subprocess

    blocker = (
        "import runpy, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'accelerate', 'transformers', 'numpy'):\n"
        "            raise ImportError(f'blocked {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.argv = [{str(Path(retrain.__file__))!r}] + sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker, "--print-cmd", *base_args(tmp_path, "flux")],
                            capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "flux_train_network.py" in result.stdout


def test_accelerate_launcher_needs_accelerate(pod):
    import importlib.util

    if importlib.util.find_spec("accelerate") is not None:
        pytest.skip("accelerate is installed here; the missing-package message cannot be shown")
    result = run_script(SCRIPT, *pod_args(pod))
    assert result.returncode == 2
    assert "accelerate" in result.stderr and "--launcher python" in result.stderr


# ----------------------------------------------------------------------------------------------
# kohya sd-scripts itself (../shared/sd-scripts): its parser, its pre-model checks, its optimizer
# and scheduler code, and Prodigy on the parameter groups its LoRA networks build.

# Accepted by the launcher (at most a warning) and by sd-scripts alike.
UPSTREAM_ACCEPTS = [
    ("sdxl", []),
    ("flux", []),
    ("sdxl", ["--no-cache_text_encoder_outputs", "--no-cache_text_encoder_outputs_to_disk",
              "--text_encoder_lr", "1e-5"]),
    ("sdxl", ["--text_encoder_lr", "0"]),
    ("sdxl", ["--learning_rate", "1e-4"]),
    ("sdxl", ["--full_bf16", "--full_fp16", "--mixed_precision", "fp16", "--save_precision", "fp16"]),
    ("sdxl", ["--extra-arg=--lr_warmup_steps 100", "--lr-scheduler", "constant_with_warmup"]),
    ("flux", ["--extra-arg=--bucket_reso_steps 128"]),
    ("sdxl", ["--extra-arg=--noise_offset 0 --adaptive_noise_scale 0.01"]),  # noise_offset 0 is given
    ("sdxl", ["--extra-arg=--lr_warm 10", "--lr-scheduler", "constant_with_warmup"]),  # = lr_warmup_steps
    ("sdxl", ["--lr-scheduler", "cosine_with_min_lr", "--extra-arg=--lr_scheduler_min_lr_ratio 0.1"]),
    ("sdxl", ["--lr-scheduler", "piecewise_constant",
              "--extra-arg=--lr_scheduler_args \"step_rules='1:10,0.1'\""]),
    ("sdxl", ["--lr-scheduler", "warmup_stable_decay"]),
    ("flux", ["--lr-scheduler", "inverse_sqrt"]),
]
PRODIGY_CASES = [  # (model type, network module, launcher flags, Prodigy refuses?)
    ("sdxl", "networks.lora", [], False),
    ("flux", "networks.lora_flux", [], False),
    ("sdxl", "networks.lora", ["--extra-arg=--network_args down_lr_weight=1,0,1"], False),
] + [(model_type, "networks.lora_flux" if model_type == "flux" else "networks.lora", flags, True)
     for model_type, flags, _, upstream in UPSTREAM_CONFLICTS if upstream.startswith("prodigyopt")]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """sd-scripts snapshot, a folder of real images, and the probe environment (or skip)."""
    from sd_scripts_env import probe_env, sd_scripts_dir

    root = tmp_path_factory.mktemp("upstream")
    images = root / "images"
    images.mkdir()
    for index in range(3):
        Image.new("RGB", (96 + 32 * index, 128), (40 * index, 90, 120)).save(images / f"img_{index}.png")
    for name in ("base.safetensors", "clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        (root / name).write_bytes(b"placeholder: no model is loaded by these checks")
    return {"sd_scripts": sd_scripts_dir(), "images": images, "root": root,
            "env": probe_env(root / "placeholder")}


def upstream_args(upstream: dict, model_type: str) -> list[str]:
    args = ["--model-type", model_type, "--base-model", str(upstream["root"] / "base.safetensors"),
            "--images", str(upstream["images"]), "--trigger", "ohwx", "--output",
            str(upstream["root"] / "out"), "--sd-scripts", str(upstream["sd_scripts"]),
            "--python", sys.executable]
    if model_type == "flux":
        args += ["--clip-l", str(upstream["root"] / "clip_l.safetensors"),
                 "--t5xxl", str(upstream["root"] / "t5xxl.safetensors"),
                 "--ae", str(upstream["root"] / "ae.safetensors")]
    return args


@pytest.fixture(scope="module")
def upstream_results(upstream):
    """One probe subprocess for every non-Prodigy case: {(model_type, flags): result}."""
    cases = [(model_type, tuple(flags)) for model_type, flags, _, where in UPSTREAM_CONFLICTS
             if not where.startswith("prodigyopt")] + [(m, tuple(f)) for m, f in UPSTREAM_ACCEPTS]
    items = []
    for model_type, flags in cases:
        settings = retrain.resolve_settings(retrain.build_parser().parse_args(
            [*upstream_args(upstream, model_type), *flags]))
        items.append((settings, retrain.build_command(settings)))
    results = retrain.upstream_checks(items, env=upstream["env"])
    return dict(zip(cases, results))


@pytest.mark.slow
@pytest.mark.parametrize("model_type,flags", UPSTREAM_ACCEPTS, ids=str)
def test_sd_scripts_accepts_the_defaults_and_the_non_conflicts(upstream_results, model_type, flags):
    result = upstream_results[(model_type, tuple(flags))]
    assert result["ok"], result
    assert result["passed"][-1] == "get_scheduler_fix" and result["images"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("model_type,flags,must_name,where",
                         [case for case in UPSTREAM_CONFLICTS if not case[3].startswith("prodigyopt")],
                         ids=str)
def test_sd_scripts_refuses_each_conflict_where_the_launcher_says(upstream_results, model_type, flags,
                                                                   must_name, where):
    result = upstream_results[(model_type, tuple(flags))]
    assert result["ok"] is False and result["environment"] is False, result
    assert where in result["where"], result
    settings = retrain.resolve_settings(retrain.build_parser().parse_args(
        [*base_args(Path("/nonexistent"), model_type), *flags]))
    assert where.split(":")[0] in " ".join(retrain.find_conflicts(settings))


@pytest.mark.slow
@pytest.mark.parametrize("model_type,module,flags,refused", PRODIGY_CASES, ids=str)
def test_prodigy_refuses_the_parameter_groups_sd_scripts_builds(upstream, tmp_path, model_type, module,
                                                                flags, refused):
    """LoRA+ and block lr weights are only refused at Prodigy's first step: build sd-scripts' own
    network on a tiny stand-in model, take one real step (tests/prodigy_groups_probe.py)."""
    settings = retrain.resolve_settings(retrain.build_parser().parse_args(
        [*upstream_args(upstream, model_type), *flags]))
    command = retrain.build_command(settings)
    index = next(i for i, token in enumerate(command) if token.endswith("_network.py"))
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"script": f"{model_type}_train_network", "module": module,
                                   "argv": command[index + 1:]}), encoding="utf-8")
    import subprocess

    completed = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "prodigy_groups_probe.py"), str(upstream["sd_scripts"]),
         str(request)], capture_output=True, text=True, encoding="utf-8", timeout=600, env=upstream["env"])
    line = next(line for line in completed.stdout.splitlines() if line.startswith("@@prodigy_groups@@"))
    result = json.loads(line[len("@@prodigy_groups@@"):])
    if refused:
        assert result["ok"] is False and len(set(result["groups"])) > 1, result
        assert result["where"] == "prodigyopt/prodigy.py:152 (step)", result
        assert "different lr values in different parameter groups" in result["error"]
        assert retrain.find_conflicts(settings), "the launcher must refuse it too"
    else:
        assert result["ok"], result
        assert retrain.find_conflicts(settings) == []


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["sdxl", "flux"])
def test_cli_runs_the_command_through_sd_scripts_before_launch(upstream, model_type):
    result = run_script(SCRIPT, "--print-cmd", *upstream_args(upstream, model_type), env=upstream["env"])
    assert result.returncode == 0, result.stderr
    assert "sd-scripts accepts the command" in result.stderr and "3 training images" in result.stderr
    assert f"{model_type}_train_network.py" in result.stdout


@pytest.mark.slow
def test_relative_images_are_found_by_sd_scripts_itself(upstream):
    """The check runs sd-scripts in its checkout: relative --images/--output must still count."""
    import os

    root = upstream["root"]
    args = ["--base-model", "base.safetensors", "--images", "images", "--trigger", "ohwx",
            "--output", "out_relative", "--sd-scripts", os.path.relpath(upstream["sd_scripts"], root),
            "--python", sys.executable]
    result = run_script(SCRIPT, "--print-cmd", *args, cwd=root, env=upstream["env"])
    assert result.returncode == 0, result.stderr
    assert "(3 training images found)" in result.stderr
    assert not (root / "out_relative").exists()


@pytest.mark.slow
def test_a_folder_sd_scripts_reads_no_image_from_is_refused(upstream, tmp_path):
    """Names sd-scripts' glob skips (hidden, mixed-case suffix): it would log 'No data found' and
    exit 0 after minutes of setup, so the check refuses it (exit 2) instead of reporting success."""
    images = tmp_path / "odd images"
    images.mkdir()
    Image.new("RGB", (128, 128), (90, 60, 40)).save(images / ".hidden.png")
    Image.new("RGB", (128, 128), (90, 60, 40)).save(images / "face.Png", format="PNG")
    args = upstream_args(upstream, "sdxl")
    args[args.index("--images") + 1] = str(images)
    for mode in ("--print-cmd", "--dry-run"):
        result = run_script(SCRIPT, mode, *args, env=upstream["env"])
        assert result.returncode == 2, result.stderr
        assert "sd-scripts finds no training image in --images" in result.stderr
        assert "No data found" in result.stderr and result.stdout == ""


OPTION_LIST_PROBE = r"""
import contextlib, io, json, os, re, sys
sys.path.insert(0, sys.argv[1]); os.chdir(sys.argv[1])
import importlib
names = json.loads(sys.argv[2])
out = {}
for script in ("sdxl_train_network", "flux_train_network"):
    parser = importlib.import_module(script).setup_parser()
    options = sorted(o[2:] for o in parser._option_string_actions if o.startswith("--"))
    defaults = vars(parser.parse_args([]))
    resolved = {}
    for name in names:  # what the real parser (allow_abbrev on) makes of a bare --NAME
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                namespace, unknown = parser.parse_known_args(["--" + name])
        except SystemExit:
            text = err.getvalue()
            found = re.search(r"argument (--\w+)", text)
            resolved[name] = "AMBIGUOUS" if "ambiguous option" in text else found.group(1)[2:]
            continue
        if unknown:
            resolved[name] = "UNKNOWN"
            continue
        changed = [k for k, v in vars(namespace).items() if defaults.get(k) != v]
        action = next(a for a in parser._actions if a.dest == changed[0])
        resolved[name] = action.option_strings[0][2:]
    out[script] = {"options": options, "resolved": resolved}
print(json.dumps(out))
"""
SHORTENED = ["lr_warmup", "lr_warm", "adaptive_noise", "fused_backward", "bucket_reso", "optimizer_arg",
             "network_di", "max_train_st", "noise_off", "cache_text", "output", "max_train", "noise_ofset",
             "v2", "v_param", "network_args", "clip_", "t5xxl_max", "blocks_to", "split", "xformers"]


@pytest.mark.slow
def test_the_option_list_and_its_abbreviations_match_sd_scripts_parsers(upstream):
    """The launcher's copy of sd-scripts' option names is the parsers' own, and each shortened
    option resolves to what argparse in sd-scripts resolves it to (or is refused as it would be)."""
    import subprocess

    completed = subprocess.run([sys.executable, "-c", OPTION_LIST_PROBE, str(upstream["sd_scripts"]),
                                json.dumps(SHORTENED)], capture_output=True, text=True, encoding="utf-8",
                               timeout=600, env=upstream["env"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    real = json.loads(completed.stdout.strip().splitlines()[-1])
    sdxl, flux = real["sdxl_train_network"], real["flux_train_network"]
    assert set(sdxl["options"]) == retrain.SD_SCRIPTS_OPTIONS
    assert set(flux["options"]) == retrain.SD_SCRIPTS_OPTIONS | retrain.SD_SCRIPTS_FLUX_OPTIONS
    for model_type, found in (("sdxl", sdxl["resolved"]), ("flux", flux["resolved"])):
        for name in SHORTENED:
            try:
                ours = retrain.resolve_flag(name, model_type)
                ours = ours if ours in retrain.sd_scripts_options(model_type) else "UNKNOWN"
            except retrain.SettingsError:
                ours = "AMBIGUOUS"
            assert ours == found[name], (model_type, name, ours, found[name])


@pytest.mark.slow
def test_the_upstream_check_itself_takes_no_shortened_option(upstream):
    """Should a shortened option ever reach the check unresolved, it fails there, not on the pod."""
    settings = retrain.resolve_settings(retrain.build_parser().parse_args(upstream_args(upstream, "sdxl")))
    command = retrain.build_command(settings) + ["--lr_warm", "10"]
    result = retrain.upstream_checks([(settings, command)], env=upstream["env"])[0]
    assert result["ok"] is False and result["stage"] == "parse_args", result
    assert "unrecognized arguments: --lr_warm 10" in result["error"]


@pytest.mark.slow
def test_managed_options_given_shortened_would_really_override_the_recipe_upstream(upstream):
    """Why the launcher refuses --network_di / --optimizer_arg: sd-scripts' own parser takes them and
    lets the last value win over the recipe's."""
    settings = retrain.resolve_settings(retrain.build_parser().parse_args(upstream_args(upstream, "sdxl")))
    command = retrain.build_command(settings)
    index = next(i for i, token in enumerate(command) if token.endswith("_network.py"))
    code = ("import sys, os, json; sys.path.insert(0, sys.argv[1]); os.chdir(sys.argv[1]); "
            "import sdxl_train_network as m; a = m.setup_parser().parse_args(sys.argv[2:]); "
            "print(json.dumps([a.network_dim, a.optimizer_args]))")
    import subprocess

    completed = subprocess.run([sys.executable, "-c", code, str(upstream["sd_scripts"]), *command[index + 1:],
                                "--network_di", "64", "--optimizer_arg", "decouple=False"],
                               capture_output=True, text=True, encoding="utf-8", timeout=600, env=upstream["env"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == [64, ["decouple=False"]]
    with pytest.raises(SystemExit):
        retrain.main(["--print-cmd", *upstream_args(upstream, "sdxl"), "--extra-arg=--network_di 64"])


@pytest.mark.slow
def test_sd_scripts_builds_the_optimizer_with_the_recorded_weight_decay(upstream):
    """sd-scripts' own get_optimizer, on the launcher's command: the optimizer really gets it."""
    cases = [("prodigy", "1", "0.01"), ("AdamW", "1e-4", "0.1"), ("SGDNesterov", "1e-4", "0.2"),
             ("Adafactor", "1e-4", "0.05")]
    items = []
    for optimizer, lr, decay in cases:
        settings = retrain.resolve_settings(retrain.build_parser().parse_args(
            [*upstream_args(upstream, "sdxl"), "--optimizer-type", optimizer, "--learning-rate", lr,
             "--weight-decay", decay]))
        items.append((settings, retrain.build_command(settings)))
    results = retrain.upstream_checks(items, env=upstream["env"])
    for (optimizer, _, decay), result in zip(cases, results):
        assert result["ok"], result
        assert result["optimizer"]["weight_decay"] == float(decay), (optimizer, result["optimizer"])
    assert results[0]["optimizer"]["class"] == "prodigyopt.prodigy.Prodigy"
    assert results[0]["optimizer"]["d_coef"] == 1.0 and results[0]["optimizer"]["decouple"] is True
    assert results[1]["optimizer"]["class"] == "torch.optim.adamw.AdamW"


@pytest.mark.slow
def test_real_sd_scripts_stopping_with_no_data_found_is_not_a_finished_training(upstream, tmp_path):
    """The real launch, upstream check skipped: sd-scripts logs 'No data found' for an image it
    cannot see (a mixed-case suffix) and exits 0 after its setup; the launcher must say exit 1.
    Tiny offline CLIP tokenizers (tests/tiny_sdxl.py) stand in for the hub downloads it makes first."""
    from tiny_sdxl import build_tokenizer

    tokenizers = tmp_path / "tokenizers"
    for name in ("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"):
        build_tokenizer(tmp_path / "tok-src" / name).save_pretrained(str(tokenizers / name))
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (128, 128), (90, 60, 40)).save(images / "face.Png", format="PNG")
    args = upstream_args(upstream, "sdxl")
    args[args.index("--images") + 1] = str(images)
    args[args.index("--output") + 1] = str(tmp_path / "out")
    result = run_script(SCRIPT, *args, "--launcher", "python", "--skip-upstream-check",
                        f"--extra-arg=--tokenizer_cache_dir {tokenizers}", env=upstream["env"])
    assert "No data found" in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "sd-scripts exited 0 but wrote no LoRA file" in result.stderr
    assert "training finished" not in result.stderr


@pytest.mark.slow
def test_extra_arg_typo_is_caught_by_sd_scripts_parser(upstream):
    result = run_script(SCRIPT, "--dry-run", *upstream_args(upstream, "sdxl"),
                        "--extra-arg=--noise_ofset 0.05", env=upstream["env"])
    assert result.returncode == 2
    assert "unrecognized arguments: --noise_ofset 0.05" in result.stderr
    assert "sdxl_train_network.py setup_parser().parse_args()" in result.stderr
    assert not (upstream["root"] / "out").exists(), "a refused command writes nothing"


@pytest.mark.slow
def test_a_python_without_sd_scripts_packages_is_an_environment_error(upstream, tmp_path):
    """--python pointing at a bare venv: the check cannot run; --dry-run refuses, --print-cmd warns."""
    import subprocess
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    bare = retrain.find_training_python(tmp_path)
    assert bare is not None
    subprocess.run([str(bare), "-c", "pass"], check=True, timeout=60)
    args = [*upstream_args(upstream, "sdxl")[:-2], "--python", str(bare)]
    result = run_script(SCRIPT, "--dry-run", *args, env=upstream["env"])
    assert result.returncode == 2
    assert "cannot run sd-scripts' checks" in result.stderr and "No module named" in result.stderr
    assert "--training-python" in result.stderr
    result = run_script(SCRIPT, "--print-cmd", *args, env=upstream["env"])
    assert result.returncode == 0 and "warning: cannot run sd-scripts' checks" in result.stderr


def test_training_python_is_found_in_the_sd_scripts_venv(tmp_path):
    assert retrain.find_training_python(tmp_path) is None
    python = tmp_path / "venv" / ("Scripts" if sys.platform == "win32" else "bin")
    python.mkdir(parents=True)
    name = "python.exe" if sys.platform == "win32" else "python"
    (python / name).write_text("", encoding="utf-8")
    assert retrain.find_training_python(tmp_path) == python / name
    settings = retrain.resolve_settings(retrain.build_parser().parse_args(
        ["--base-model", "b", "--images", "i", "--trigger", "t", "--output", "o", "--sd-scripts", str(tmp_path)]))
    assert settings["python"] == str(python / name)
    settings = retrain.resolve_settings(retrain.build_parser().parse_args(
        ["--base-model", "b", "--images", "i", "--trigger", "t", "--output", "o", "--sd-scripts", str(tmp_path),
         "--python", sys.executable]))
    assert settings["python"] == sys.executable
