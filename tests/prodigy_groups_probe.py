"""Does Prodigy accept the parameter groups sd-scripts' LoRA network builds? (run as a subprocess)

    python tests/prodigy_groups_probe.py SD_SCRIPTS request.json

request.json: {"script": "sdxl_train_network", "module": "networks.lora", "argv": [...]} with argv
a full sd-scripts command line (the launcher's). The script parses it with sd-scripts' own parser,
builds the network with sd-scripts' own create_network on a tiny stand-in for the base model (the
same module class names and attribute paths the real U-Net / Flux transformer has, a few 8x8
Linear layers instead of billions of weights), asks the network for its optimizer parameter
groups exactly as train_network.py:733-754 does, builds the optimizer with sd-scripts'
get_optimizer (train_network.py:767) and takes one step with real gradients. Prints one JSON line:
{"ok": bool, "groups": [lr, ...], "error": "...", "where": "file:line (function)"}.
No model weights, no GPU, seconds.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import traceback


def stand_in_base_model(module_name: str):
    """A tiny module tree whose names match what the network module looks for."""
    import torch

    class Transformer2DModel(torch.nn.Module):  # SDXL: LoRANetwork.UNET_TARGET_REPLACE_MODULE
        def __init__(self):
            super().__init__()
            self.proj_in = torch.nn.Linear(8, 8)
            self.proj_out = torch.nn.Linear(8, 8)

    if module_name == "networks.lora":
        from library.sdxl_original_unet import SdxlUNet2DConditionModel

        class TinySdxlUNet(SdxlUNet2DConditionModel):  # is_sdxl: issubclass(..., SdxlUNet2DConditionModel)
            def __init__(self):
                torch.nn.Module.__init__(self)
                self.input_blocks = torch.nn.ModuleList(
                    [torch.nn.ModuleList([torch.nn.Identity(), Transformer2DModel()]) for _ in range(9)])
                self.middle_block = torch.nn.ModuleList([torch.nn.Identity(), Transformer2DModel()])
                self.output_blocks = torch.nn.ModuleList(
                    [torch.nn.ModuleList([torch.nn.Identity(), Transformer2DModel()]) for _ in range(9)])

        return TinySdxlUNet()

    class DoubleStreamBlock(torch.nn.Module):  # Flux: LoRANetwork.FLUX_TARGET_REPLACE_MODULE_DOUBLE
        def __init__(self):
            super().__init__()
            self.img_attn = torch.nn.Module()
            self.img_attn.qkv = torch.nn.Linear(8, 24)
            self.img_attn.proj = torch.nn.Linear(8, 8)

    class SingleStreamBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear1 = torch.nn.Linear(8, 8)
            self.linear2 = torch.nn.Linear(8, 8)

    class TinyFlux(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.double_blocks = torch.nn.ModuleList([DoubleStreamBlock() for _ in range(2)])
            self.single_blocks = torch.nn.ModuleList([SingleStreamBlock() for _ in range(2)])

    return TinyFlux()


def main() -> int:
    root = os.path.abspath(sys.argv[1])
    request = json.loads(open(sys.argv[2], encoding="utf-8").read())
    sys.path.insert(0, root)
    os.chdir(root)
    result = {"ok": False}
    try:
        import torch
        from library import train_util

        script = importlib.import_module(request["script"])
        args = script.setup_parser().parse_args(request["argv"])
        network_module = importlib.import_module(request["module"])
        kwargs = {}
        for pair in args.network_args or []:  # as train_network.py:640-645 splits them
            key, value = pair.split("=", 1)
            kwargs[key] = value
        base = stand_in_base_model(request["module"])
        network = network_module.create_network(1.0, args.network_dim, args.network_alpha, None, [],
                                                base, neuron_dropout=None, **kwargs)
        network.apply_to([], base, False, True)
        if hasattr(network, "prepare_optimizer_params_with_multiple_te_lrs"):
            params = network.prepare_optimizer_params_with_multiple_te_lrs(
                args.text_encoder_lr, args.unet_lr, args.learning_rate)
        else:
            params = network.prepare_optimizer_params(args.text_encoder_lr, args.unet_lr, args.learning_rate)
        params = params[0] if isinstance(params, tuple) else params
        result["groups"] = [group.get("lr") for group in params]
        _, _, optimizer = train_util.get_optimizer(args, params)
        loss = sum((parameter.float() ** 2).sum() + parameter.float().sum()
                   for group in params for parameter in group["params"])
        loss.backward()
        optimizer.step()
        result["ok"] = True
    except BaseException as error:  # report, never crash: the parent test reads this line
        lines = [line for line in str(error).splitlines() if line.strip()]
        result["error"] = type(error).__name__ + (": " + lines[0] if lines else "")
        frame = traceback.extract_tb(error.__traceback__)[-1]
        path = frame.filename.replace(os.sep, "/")
        result["where"] = f"{path.split('/site-packages/')[-1].split(root.replace(os.sep, '/') + '/')[-1]}" \
                          f":{frame.lineno} ({frame.name})"
    print("@@prodigy_groups@@" + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
