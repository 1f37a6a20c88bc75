"""Shared test helpers: load a script by path, run it as a subprocess, find the shared test photos."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Real photos live beside the checkout (never inside it); CI lays a copy of shared/ there too.
FACES_DIR = REPO_ROOT.parent / "shared" / "faces"


def load_script(relative_path: str):
    """Import a standalone script (e.g. 'evals/face_similarity_eval.py') as a module, by path."""
    path = REPO_ROOT / relative_path
    name = "script_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_script(relative_path: str, *args: str, cwd: Path | None = None, timeout: float = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a script the way a user does: `python script args...`, capturing text output."""
    full_env = dict(os.environ)
    full_env["PYTHONIOENCODING"] = "utf-8"
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / relative_path), *map(str, args)],
        cwd=cwd or REPO_ROOT, capture_output=True, text=True, encoding="utf-8",
        timeout=timeout, env=full_env,
    )


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """../shared/faces, or skip: the photos are test data that must never be copied into the repo."""
    if not (FACES_DIR / "labels.tsv").is_file():
        pytest.skip(f"real test photos not found at {FACES_DIR} (shared/faces beside the checkout)")
    return FACES_DIR


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
