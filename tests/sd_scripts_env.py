"""Run kohya sd-scripts' own code (../shared/sd-scripts, unmodified) from the test environment.

sd-scripts' training scripts import, at module level: torch, accelerate, transformers, diffusers,
safetensors, cv2, PIL, numpy, tqdm (all in requirements-dev.txt), einops, toml, voluptuous,
imagesize, ftfy, rich (pinned in requirements-dev.txt for this), and torchvision, only for
`from torchvision import transforms` (library/utils.py:8, library/train_util.py:40; used when
images are turned into tensors, never by the parser or the pre-model checks). PyPI's torchvision
wheels are CUDA builds that cannot load beside this machine's CPU torch ("operator torchvision::nms
does not exist"), so where torchvision does not import, `placeholder_path()` makes a stand-in
package whose every transform raises when used: the parser and the checks run unchanged, and a
code path that really needed torchvision would fail loudly instead of passing. bitsandbytes,
xformers, wandb and deepspeed are imported lazily by sd-scripts and are not needed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SD_SCRIPTS = REPO_ROOT.parent / "shared" / "sd-scripts"

PLACEHOLDER_INIT = '''"""Stand-in for torchvision in tests/sd_scripts_env.py: the CPU test machine cannot load PyPI's
CUDA torchvision. Only `transforms` exists, and every transform raises when it is applied."""
from . import transforms  # noqa: F401
'''
PLACEHOLDER_TRANSFORMS = '''"""Transforms that can be built (sd-scripts builds some at import) but never applied."""


class _Unavailable:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision.transforms.{type(self).__name__} is a test placeholder: "
                           "torchvision is not installed on this machine")


def __getattr__(name):
    if name[:1].isupper():
        return type(name, (_Unavailable,), {})
    raise AttributeError(f"torchvision.transforms.{name} is not available (test placeholder)")
'''


def sd_scripts_dir() -> Path:
    """../shared/sd-scripts, or skip the test."""
    if not (SD_SCRIPTS / "sdxl_train_network.py").is_file():
        pytest.skip(f"kohya sd-scripts snapshot not found at {SD_SCRIPTS} (shared/sd-scripts beside "
                    f"the checkout)")
    return SD_SCRIPTS


def torchvision_imports() -> bool:
    result = subprocess.run([sys.executable, "-c", "from torchvision import transforms"],
                            capture_output=True, timeout=300)
    return result.returncode == 0


def placeholder_path(folder: Path) -> Path | None:
    """A folder holding the torchvision stand-in, or None when the real torchvision imports."""
    if torchvision_imports():
        return None
    package = Path(folder) / "torchvision"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(PLACEHOLDER_INIT, encoding="utf-8")
    (package / "transforms.py").write_text(PLACEHOLDER_TRANSFORMS, encoding="utf-8")
    return Path(folder)


def probe_env(folder: Path) -> dict:
    """Environment for a subprocess that imports sd-scripts: the placeholder (when needed) on
    PYTHONPATH, no bytecode written into the read-only snapshot, no hub access."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONIOENCODING="utf-8",
               HF_HUB_OFFLINE="1")
    extra = placeholder_path(folder)
    if extra is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra), env.get("PYTHONPATH")]))
    return env
