"""Build a tiny random-weight SDXL pipeline and kohya-format LoRAs for offline tests.

Same form as stabilityai/stable-diffusion-xl-base-1.0 (StableDiffusionXLPipeline: a
UNet2DConditionModel with text_time conditioning, CLIPTextModel + CLIPTextModelWithProjection, two
CLIP tokenizers, AutoencoderKL, EulerDiscreteScheduler), saved in the two forms
tools/generate_sweep.py loads:

- a diffusers folder (`save_pretrained`), and
- one `.safetensors` checkpoint in the original SDXL (sgm / "LDM") key layout that
  `from_single_file` reads: `model.diffusion_model.*` (U-Net with input_blocks/middle_block/
  output_blocks), `conditioner.embedders.0.transformer.*` (CLIP-L, HF layout),
  `conditioner.embedders.1.model.*` (OpenCLIP-G layout: fused in_proj, resblocks, ln_final,
  text_projection) and `first_stage_model.*` (VAE, down/up/mid.attn_1 with 1x1 conv weights).
  The conversion below is written from the layout's description; the tests check it by running
  diffusers' own single-file converters on it and comparing every tensor.

Plus a config-only folder (the JSON/txt files without weights: what `from_single_file(config=...)`
needs offline), and LoRA files in kohya sd-scripts' `networks.lora` format: names
`lora_unet_<sgm module path with _>`, `lora_te1_...`, `lora_te2_...`, tensors `.lora_down.weight`,
`.lora_up.weight`, `.alpha`, and sd-scripts' `ss_*` metadata; and the same U-Net LoRA weights,
without metadata, in the other layouts diffusers' load_lora_weights reads for SDXL (kohya names of
the diffusers module paths, `lora_unet_down_blocks_...`; PEFT `unet.<path>.lora_A.weight`).

The tokenizers are CLIP BPE tokenizers built offline from a byte-level vocabulary (every byte, with
and without the `</w>` end-of-word mark) and a handful of merges. Everything is a few MB.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

IMAGE_SIZE = 64  # pixels; the latent is 8x8 (the VAE downsamples by 8, like SDXL's)
TE1_HIDDEN = 32
TE2_HIDDEN = 48  # must differ from TE1's: diffusers tells the two CLIP towers apart by width
TE2_PROJECTION = 40
ADD_TIME_DIM = 8
MAX_LENGTH = 77
MERGES = ["o h", "oh w", "ohw x", "p h", "ph o", "pho t", "phot o</w>", "t h", "th e</w>"]

SDXL_UNET_PREFIX = "model.diffusion_model."
TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."
VAE_PREFIX = "first_stage_model."


# ----------------------------------------------------------------------------- tokenizer

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json + merges.txt of a tiny CLIP BPE tokenizer; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    for merge in MERGES:
        merged = merge.replace(" ", "")
        if merged not in tokens:
            tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_tokenizer_files(folder)
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=MAX_LENGTH)


# ----------------------------------------------------------------------------- pipeline

def build_components(seed: int = 0, work: Path | None = None) -> dict:
    """The pipeline's components with random weights (deterministic for a given seed)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_tokenizer(Path(work or scratch) / "tok")
        tokenizer_2 = build_tokenizer(Path(work or scratch) / "tok2")
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, max_position_embeddings=MAX_LENGTH, num_hidden_layers=2,
                  num_attention_heads=2, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=TE1_HIDDEN, intermediate_size=64, projection_dim=TE1_HIDDEN,
        hidden_act="quick_gelu", **common)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=TE2_HIDDEN, intermediate_size=96, projection_dim=TE2_PROJECTION,
        hidden_act="gelu", **common)).eval()
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
        cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN, attention_head_dim=(2, 4),
        transformer_layers_per_block=1, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=ADD_TIME_DIM,
        projection_class_embeddings_input_dim=TE2_PROJECTION + 6 * ADD_TIME_DIM,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=IMAGE_SIZE, scaling_factor=0.13025,
        force_upcast=True,
    ).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler)


def build_pipeline(seed: int = 0):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**build_components(seed))


# ----------------------------------------------------------------------------- diffusers -> SDXL keys

def _resnet_ldm(name: str) -> str:
    for diffusers_part, ldm_part in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"),
                                     ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
                                     ("time_emb_proj", "emb_layers.1"),
                                     ("conv_shortcut", "skip_connection")):
        if name.startswith(diffusers_part + "."):
            return ldm_part + name[len(diffusers_part):]
    raise KeyError(name)


def unet_key_to_ldm(key: str, layers_per_block: int) -> str:
    """A diffusers UNet2DConditionModel key -> its key in the SDXL original U-Net (no prefix)."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    module, _, param = key.rpartition(".")
    if module in fixed:
        return f"{fixed[module]}.{param}"
    parts = key.split(".")
    per = layers_per_block + 1
    if parts[0] == "down_blocks":
        block = int(parts[1])
        kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":  # downsamplers.0.conv.* -> input_blocks.N.0.op.*
            number = 1 + block * per + layers_per_block
            return f"input_blocks.{number}.0.op.{rest.split('.', 1)[1]}"
        number = 1 + block * per + index
        if kind == "resnets":
            return f"input_blocks.{number}.0.{_resnet_ldm(rest)}"
        return f"input_blocks.{number}.1.{rest}"  # attentions keep their inner names
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{0 if index == 0 else 2}.{_resnet_ldm(rest)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        block = int(parts[1])
        kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"output_blocks.{block * per + index}.0.{_resnet_ldm(rest)}"
        if kind == "attentions":
            return f"output_blocks.{block * per + index}.1.{rest}"
        raise KeyError(key)  # upsamplers are placed by sdxl_unet_to_ldm, which knows the block
    raise KeyError(key)


def sdxl_unet_to_ldm(state: dict, config) -> dict:
    layers = config.layers_per_block
    per = layers + 1
    out = {}
    blocks_with_attention = {int(k.split(".")[1]) for k in state
                             if k.startswith("up_blocks.") and ".attentions." in k}
    for key, value in state.items():
        if key.startswith("up_blocks.") and ".upsamplers." in key:
            block = int(key.split(".")[1])
            slot = 2 if block in blocks_with_attention else 1
            param = key.split(".")[-1]
            out[f"{SDXL_UNET_PREFIX}output_blocks.{block * per + layers}.{slot}.conv.{param}"] = value
        else:
            out[SDXL_UNET_PREFIX + unet_key_to_ldm(key, layers)] = value
    return out


def vae_key_to_ldm(key: str, num_blocks: int) -> str:
    parts = key.split(".")
    side = parts[0]  # encoder / decoder
    renames = {"conv_norm_out": "norm_out"}
    if parts[1] in ("conv_in", "conv_out", "conv_norm_out"):
        return f"{side}.{renames.get(parts[1], parts[1])}.{parts[2]}"
    if parts[1] in ("down_blocks", "up_blocks"):
        block = int(parts[2])
        ldm_block = block if side == "encoder" else num_blocks - 1 - block
        group = "down" if side == "encoder" else "up"
        if parts[3] == "resnets":
            rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.{group}.{ldm_block}.block.{parts[4]}.{rest}"
        sampler = "downsample" if side == "encoder" else "upsample"
        return f"{side}.{group}.{ldm_block}.{sampler}.conv.{parts[-1]}"
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
        inner = ".".join(parts[4:])
        for diffusers_part, ldm_part in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"),
                                         ("to_v", "v"), ("to_out.0", "proj_out")):
            if inner.startswith(diffusers_part + "."):
                return f"{side}.mid.attn_1.{ldm_part}{inner[len(diffusers_part):]}"
    raise KeyError(key)


def sdxl_vae_to_ldm(state: dict, config) -> dict:
    out = {}
    num_blocks = len(config.block_out_channels)
    for key, value in state.items():
        if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
            out[VAE_PREFIX + key] = value
            continue
        ldm = vae_key_to_ldm(key, num_blocks)
        if ".mid.attn_1." in ldm and value.ndim == 2:  # the original stores 1x1 convolutions
            value = value[:, :, None, None]
        out[VAE_PREFIX + ldm] = value
    return out


def te2_to_open_clip(state: dict) -> dict:
    """CLIPTextModelWithProjection keys -> OpenCLIP layout under conditioner.embedders.1.model."""
    import torch

    out = {}
    fixed = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias"}
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for key, value in state.items():
        if key in fixed:
            out[TE2_PREFIX + fixed[key]] = value
        elif key == "text_projection.weight":
            out[TE2_PREFIX + "text_projection"] = value.T.contiguous()
    for layer in layers:
        src = f"text_model.encoder.layers.{layer}."
        dst = f"{TE2_PREFIX}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0)
            out[f"{dst}attn.out_proj.{kind}"] = state[f"{src}self_attn.out_proj.{kind}"]
            out[f"{dst}ln_1.{kind}"] = state[f"{src}layer_norm1.{kind}"]
            out[f"{dst}ln_2.{kind}"] = state[f"{src}layer_norm2.{kind}"]
            out[f"{dst}mlp.c_fc.{kind}"] = state[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.c_proj.{kind}"] = state[f"{src}mlp.fc2.{kind}"]
    return out


def pipeline_to_sdxl_checkpoint(pipe) -> dict:
    """The whole pipeline as one state dict in the SDXL original layout."""
    checkpoint = {}
    checkpoint.update(sdxl_unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    checkpoint.update(sdxl_vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    for key, value in pipe.text_encoder.state_dict().items():
        if not key.endswith("position_ids"):
            checkpoint[TE1_PREFIX + key] = value
    checkpoint.update(te2_to_open_clip(pipe.text_encoder_2.state_dict()))
    return {key: value.contiguous() for key, value in checkpoint.items()}


# ----------------------------------------------------------------------------- on disk

def write_config_folder(diffusers_folder: Path, target: Path) -> Path:
    """Copy only the JSON/txt files of a diffusers folder: what from_single_file(config=...) reads."""
    for path in sorted(diffusers_folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".txt"):
            destination = target / path.relative_to(diffusers_folder)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
    return target


def build_tiny_sdxl(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny SDXL three ways under `folder`; returns the paths.

    keys: `diffusers` (a save_pretrained folder), `single_file` (tiny_sdxl.safetensors in the SDXL
    original layout), `config` (the diffusers folder's configs and tokenizer files, no weights).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    pipe = build_pipeline(seed)
    diffusers_dir = folder / "tiny_sdxl_diffusers"
    pipe.save_pretrained(diffusers_dir, safe_serialization=True)
    single_file = folder / "tiny_sdxl.safetensors"
    save_file(pipeline_to_sdxl_checkpoint(pipe), str(single_file),
              metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    config_dir = write_config_folder(diffusers_dir, folder / "tiny_sdxl_config")
    return {"diffusers": diffusers_dir, "single_file": single_file, "config": config_dir}


# ----------------------------------------------------------------------------- kohya LoRAs

def kohya_lora_modules(pipe, *, unet: bool = True, text_encoders: bool = False) -> dict[str, tuple[int, int]]:
    """kohya `networks.lora` module names of the pipeline -> (in_features, out_features).

    sd-scripts (networks/lora.py) wraps every Linear (and 1x1 Conv2d) inside U-Net
    Transformer2DModel blocks and inside the text encoders' CLIPAttention/CLIPMLP, and names each
    `prefix + "." + module path + "." + child` with dots replaced by `_`. For SDXL the U-Net
    module paths are the original sgm ones (input_blocks.N.1...), the text encoders' are the
    transformers ones (text_model.encoder.layers.N.self_attn.q_proj), prefixes lora_unet,
    lora_te1, lora_te2.
    """
    import torch

    modules: dict[str, tuple[int, int]] = {}
    if unet:
        layers = pipe.unet.config.layers_per_block
        for name, module in pipe.unet.named_modules():
            if module.__class__.__name__ != "Transformer2DModel":
                continue
            for child_name, child in module.named_modules():
                if isinstance(child, torch.nn.Linear):
                    diffusers_path = f"{name}.{child_name}"
                    ldm = unet_key_to_ldm(diffusers_path + ".weight", layers)[: -len(".weight")]
                    modules["lora_unet_" + ldm.replace(".", "_")] = (child.in_features, child.out_features)
    if text_encoders:
        for prefix, encoder in (("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)):
            for name, module in encoder.named_modules():
                if module.__class__.__name__ not in ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"):
                    continue
                for child_name, child in module.named_modules():
                    if isinstance(child, torch.nn.Linear):
                        full = f"{prefix}.{name}.{child_name}".replace(".", "_")
                        modules[full] = (child.in_features, child.out_features)
    return modules


def sd_scripts_metadata(*, steps: int, epoch: int, output_name: str = "v3",
                        base: str = "sdxl_base_v1-0", dim: int = 4, alpha: float = 2.0) -> dict:
    """The ss_* keys sd-scripts' train_network.py writes (a subset, same spelling and types: str)."""
    return {
        "ss_output_name": output_name, "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim), "ss_network_alpha": str(alpha),
        "ss_base_model_version": base, "ss_steps": str(steps), "ss_epoch": str(epoch),
        "ss_max_train_steps": "500", "ss_training_started_at": "1700000000.0",
        "ss_session_id": "123456", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
    }


def write_kohya_lora(path: Path, modules: dict[str, tuple[int, int]], *, seed: int, rank: int = 4,
                     alpha: float = 2.0, scale: float = 0.5, metadata: dict | None = None) -> Path:
    """A LoRA file as sd-scripts saves it, with random non-zero up weights (as if trained)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (in_features, out_features) in sorted(modules.items()):
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * scale
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * scale
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata or {})
    return path


def build_demo(folder, seed: int = 0) -> dict[str, Path]:
    """The tiny SDXL (three forms) plus a LoRA folder as sd-scripts leaves it after 500 steps.

    lora/v3-step00000250.safetensors (U-Net + both text encoders, ss_steps=250) and
    lora/v3.safetensors (the last save, U-Net only like the v3 recipe, ss_steps=500).
    """
    folder = Path(folder)
    paths = build_tiny_sdxl(folder, seed)
    pipe = build_pipeline(seed)
    lora_dir = folder / "lora"
    paths["lora_dir"] = lora_dir
    paths["lora_250"] = write_kohya_lora(
        lora_dir / "v3-step00000250.safetensors", kohya_lora_modules(pipe, unet=True, text_encoders=True),
        seed=seed + 1, metadata=sd_scripts_metadata(steps=250, epoch=1))
    paths["lora_500"] = write_kohya_lora(
        lora_dir / "v3.safetensors", kohya_lora_modules(pipe, unet=True), seed=seed + 2,
        metadata=sd_scripts_metadata(steps=500, epoch=2))
    return paths


# ----------------------------------------------------------------------------- LoRAs in other layouts

def unet_lora_modules(pipe) -> dict[str, tuple[int, int]]:
    """The U-Net Linear layers kohya wraps, by their diffusers module path -> (in, out features)."""
    import torch

    modules = {}
    for name, module in pipe.unet.named_modules():
        if module.__class__.__name__ == "Transformer2DModel":
            for child_name, child in module.named_modules():
                if isinstance(child, torch.nn.Linear):
                    modules[f"{name}.{child_name}"] = (child.in_features, child.out_features)
    return modules


def lora_weights(modules: dict[str, tuple[int, int]], *, seed: int, rank: int = 4,
                 scale: float = 0.5) -> dict:
    """Random (down, up) weights per module path, as if trained; deterministic for a seed."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, (in_features, out_features) in sorted(modules.items()):
        weights[name] = (torch.randn(rank, in_features, generator=generator) * scale,
                         torch.randn(out_features, rank, generator=generator) * scale)
    return weights


def write_lora_layout(path: Path, weights: dict, layout: str, *, alpha: float = 2.0,
                      layers_per_block: int = 1, metadata: dict | None = None) -> Path:
    """The same U-Net LoRA weights (keyed by diffusers module path) in one of three file layouts.

    `kohya_sgm`: sd-scripts' SDXL names (lora_unet_input_blocks_..., the original U-Net's paths);
    `kohya_diffusers`: kohya names of the diffusers paths (lora_unet_down_blocks_..., what
    sd-scripts writes for SD 1.x and converters write for SDXL); both with `.alpha`.
    `peft`: diffusers' own trainers' format (unet.<path>.lora_A/lora_B.weight, no alpha tensors),
    its up weights scaled by alpha/rank so that all three act the same. No metadata unless given.
    """
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name, (down, up) in weights.items():
        rank = down.shape[0]
        if layout == "peft":
            tensors[f"unet.{name}.lora_A.weight"] = down.contiguous()
            tensors[f"unet.{name}.lora_B.weight"] = (up * (alpha / rank)).contiguous()
            continue
        if layout == "kohya_sgm":
            module = unet_key_to_ldm(name + ".weight", layers_per_block)[: -len(".weight")]
        elif layout == "kohya_diffusers":
            module = name
        else:
            raise ValueError(layout)
        kohya = "lora_unet_" + module.replace(".", "_")
        tensors[f"{kohya}.lora_down.weight"] = down.contiguous()
        tensors[f"{kohya}.lora_up.weight"] = up.contiguous()
        tensors[f"{kohya}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata or {})
    return path


def is_cross_attention_kv(module_path: str) -> bool:
    """attn2.to_k / attn2.to_v: the layers whose input is the text encoders' width."""
    return module_path.endswith(("attn2.to_k", "attn2.to_v"))
