"""Regression tests for failures this project has already paid for in pod hours, run before launch.

Five tests, one line each on stdout (`PASS name: detail` or `FAIL name: reason`):
  dependency_chain_test  requirements-pod.txt: every line pinned with ==, the pins compatible
                         (xformers and torchvision with torch, no onnxruntime beside onnxruntime-gpu,
                         insightface's CPU onnxruntime defused by the documented reinstall), and
                         installed versions compared with the pins; the locks of both pod
                         environments (requirements-{pod,training}-py3*.lock): every entry pinned
                         and hashed, the top-level pins in them, xformers with its torch.
  training_flag_test     the commands tools/retrain_lora_v3.py builds for its SDXL and Flux
                         defaults hold no flag combination that sd-scripts or Prodigy refuses
                         (the launcher's rules, with the upstream file:line of each, checked by
                         independent code).
  stale_reference_test   no active file (outside archive folders) names a repo path that is
                         missing or archived.
  context_budget_test    the startup context fits 220 lines (as tools/lifeos_context_budget.py).
  script_syntax_test     every .py file in tools/ and evals/ compiles.

Usage:
    python3 evals/known_failures.py --project-root .
    python3 evals/known_failures.py --project-root . --resolve       # + pip's resolver (see below)
    python3 evals/known_failures.py --project-root . --check-installed   # on the pod, after install
Tiny CPU run (one fast test):
    python3 evals/known_failures.py --project-root . --only script_syntax_test

Two layers prove the pins (the PASS line says which ran):
- offline (always): a table of the exact torch each xformers release requires, the torchvision
  numbering rule, and, where a package is installed, its real Requires-Dist from the installed
  metadata. No network; milliseconds.
- resolver (--resolve, opt-in): `pip install --dry-run --report` for the pod platform (CPython
  3.11, manylinux_2_28 x86_64, wheels only) against the package index, then the table is checked
  against the Requires-Dist that pip read. Measured 2025-11-28 on the dev machine: the index here
  serves no separate wheel metadata (PEP 658), so pip downloads every wheel whole to read it:
  about 4.7 GB (torch 900 MB, nvidia-cudnn 707 MB, nvidia-cublas 594 MB, onnxruntime-gpu 300 MB,
  ...; 62 packages), 44 s with pip 25.3, 104 s and 189 s with pip 23.2.1, on a fast shared
  link; far longer on a slow one. Hence opt-in, not part of every CI run. --resolve-find-links
  DIR resolves against a local wheel folder instead (no index).

Stale references: tokens that start with a top-level folder (tools/, evals/, agents/, context/,
autonomous-research/, benchmarks/, tests/) and end in a file name with a doc/code suffix
(.md .py .ps1 .txt .toml .sh .ini .cfg .yml .yaml) or in "/", plus bare top-level names
(capitalised names such as CLAUDE.md, requirements files, and names of top-level files). Ignored: globs and
placeholders (`*`, `{x}`, `<x>`, YYYY-MM-DD), paths that are instances of a placeholder pattern
written somewhere in the repo (briefing-2026-02-11.md for briefing-YYYY-MM-DD.md), missing files
that a script in tools/ or evals/ names in code (outputs it writes, such as evals/latest_report.md),
lines holding "stale-ok", and files under tests/ (their paths are fixtures in temp folders),
archive folders, hidden folders, __pycache__ and virtualenvs. Briefings
(autonomous-research/briefing-YYYY-MM-DD.md) are historical records and are not scanned.
Exit codes: 0 all PASS, 1 any FAIL, 2 usage error (no such project root, unknown --only name).
"""
from __future__ import annotations

import argparse
import ast
import glob
import importlib.util
from importlib import metadata
import json
import os
import py_compile
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# dependency_chain_test

REQUIREMENTS_FILE = "requirements-pod.txt"
# Exact torch required by each xformers wheel on PyPI (its Requires-Dist "torch==X"). 0.0.33.post1
# was read by pip's resolver here (2025-11-28); the others as quoted by pip's resolver in public
# issue threads or stated in xformers' release notes. Every release before 0.0.34 pins one torch.
XFORMERS_TORCH = {
    "0.0.33.post1": "2.9.0",
    "0.0.32.post2": "2.8.0",
    "0.0.30": "2.7.0",
    "0.0.29.post3": "2.6.0",
    "0.0.28.post3": "2.5.1",
    "0.0.26.post1": "2.3.0",
    "0.0.26": "2.2.2",
    "0.0.25.post1": "2.2.2",
    "0.0.25": "2.2.1",
    "0.0.24": "2.2.0",
    "0.0.23.post1": "2.1.2",
    "0.0.23": "2.1.1",
    "0.0.22.post4": "2.1.0",
    "0.0.19": "2.0.0",
    "0.0.18": "2.0.0",
}
# Packages whose wheels declare a dependency on the CPU `onnxruntime` package.
NEEDS_CPU_ONNXRUNTIME = ("insightface",)
POD_PYTHON = "3.11"
POD_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + ["manylinux2014_x86_64"]
PIN_LINE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[^\]]*\])?\s*==\s*(?P<version>[^\s;,*]+)"
    r"\s*(?P<marker>;.*)?$"
)


# Copied from tools/validate_pod_deps.py:normalize_name
def normalize_name(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """'2.9.0+cu128' -> '2.9.0' (the local label does not change which release it is)."""
    return version.split("+", 1)[0].strip().lower().lstrip("v")


def same_version(left: str, right: str) -> bool:
    left, right = public_version(left), public_version(right)
    try:
        from packaging.version import Version

        return Version(left) == Version(right)
    except Exception:  # packaging missing or an unparsable version: compare as text
        return left == right


def parse_requirements(path: Path) -> tuple[dict, list[str]]:
    """{normalized name: (name, version, line number)} and the problems (unpinned lines etc.)."""
    pins: dict[str, tuple[str, str, int]] = {}
    problems: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        if line.startswith("-"):
            if re.match(r"^(-r|-c|-e|--requirement|--constraint|--editable)\b", line):
                problems.append(f"{path.name}:{number} `{line}` pulls in requirements this file "
                                f"does not pin")
            continue  # index options (--index-url, --extra-index-url, --find-links) pin nothing
        match = PIN_LINE.match(line)
        if not match:
            problems.append(f"{path.name}:{number} `{line}` is not pinned with == to one version")
            continue
        key = normalize_name(match["name"])
        if key in pins:
            problems.append(f"{path.name}:{number} {match['name']} is pinned twice (also line "
                            f"{pins[key][2]})")
        pins[key] = (match["name"], match["version"], number)
    return pins, problems


# Copied from tools/validate_pod_deps.py:installed_version
def installed_version(distribution: str) -> str | None:
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - broken metadata counts as not installed
        return None
    return version or None


def installed_requirement_pin(package: str, dependency: str) -> str | None:
    """The `dependency==X` pin in an installed package's Requires-Dist, or None."""
    try:
        requires = metadata.requires(package) or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requires:
        match = re.match(rf"^\s*{re.escape(dependency)}\s*\(?\s*==\s*([^\s;,)]+)", requirement,
                         re.IGNORECASE)
        if match and "extra ==" not in requirement:
            return match.group(1)
    return None


def torch_for_torchvision(version: str) -> str | None:
    """torchvision 0.M.P pairs with torch 2.(M-15).P for every torch 2.x release (0.15 -> 2.0)."""
    match = re.match(r"^0\.(\d+)\.(\d+)", public_version(version))
    if not match or int(match.group(1)) < 15:
        return None
    return f"2.{int(match.group(1)) - 15}.{match.group(2)}"


def pin_problems(pins: dict, requirements_text: str) -> tuple[list[str], list[str]]:
    """Offline compatibility checks of the pins: (problems, facts for the PASS line)."""
    problems: list[str] = []
    facts: list[str] = []
    torch = pins.get("torch")
    xformers = pins.get("xformers")
    if xformers:
        version = xformers[1]
        required = None
        source = "table"
        if installed_version("xformers") and same_version(installed_version("xformers"), version):
            required = installed_requirement_pin("xformers", "torch")
            source = "installed metadata"
        if required is None:
            required = XFORMERS_TORCH.get(public_version(version))
            source = "table"
        if required is None:
            problems.append(
                f"xformers {version} is not in the table of known xformers->torch pins; its wheel "
                f"pins one exact torch: read it with --resolve (or `pip show xformers` on the pod) "
                f"and add it to XFORMERS_TORCH"
            )
        elif not torch:
            problems.append(f"xformers {version} requires torch=={required} but torch is not "
                            f"pinned; pin torch=={required}")
        elif not same_version(torch[1], required):
            problems.append(
                f"xformers {version} requires torch=={required} ({source}) but {REQUIREMENTS_FILE} "
                f"pins torch=={torch[1]}: pip would replace torch or xformers would fail to load "
                f"its kernels; pin the xformers release built for torch {torch[1]}"
            )
        else:
            facts.append(f"xformers {version} -> torch=={required} ({source})")
    torchvision = pins.get("torchvision")
    if torchvision:
        required = None
        source = "numbering rule"
        if installed_version("torchvision") and same_version(installed_version("torchvision"),
                                                            torchvision[1]):
            required = installed_requirement_pin("torchvision", "torch")
            source = "installed metadata"
        required = required or torch_for_torchvision(torchvision[1])
        if required is None:
            problems.append(f"torchvision {torchvision[1]} has no known torch pairing")
        elif not torch or not same_version(torch[1], required):
            problems.append(f"torchvision {torchvision[1]} requires torch=={required} ({source}) "
                            f"but torch is pinned to {torch[1] if torch else 'nothing'}")
        else:
            facts.append(f"torchvision {torchvision[1]} -> torch=={required} ({source})")
    gpu = pins.get("onnxruntime-gpu")
    if gpu and "onnxruntime" in pins:
        problems.append("onnxruntime and onnxruntime-gpu are both pinned: they install into one "
                        "`onnxruntime` folder and the session silently runs on CPU; keep only "
                        "onnxruntime-gpu")
    needing_cpu = [pins[name][0] for name in NEEDS_CPU_ONNXRUNTIME if name in pins]
    if gpu and needing_cpu:
        uninstall = re.search(r"pip\s+uninstall\s+(-y\s+)?onnxruntime(?![\w-])", requirements_text)
        reinstall = re.search(r"pip\s+install\s+[^\n]*--no-deps[^\n]*onnxruntime-gpu==(\S+)",
                              requirements_text)
        if not uninstall or not reinstall:
            problems.append(
                f"{', '.join(needing_cpu)} depends on the CPU onnxruntime, which pip installs beside "
                f"onnxruntime-gpu; {REQUIREMENTS_FILE} must document the defuse: `pip uninstall -y "
                f"onnxruntime` then `pip install --force-reinstall --no-deps onnxruntime-gpu=={gpu[1]}`"
            )
        elif not same_version(reinstall.group(1), gpu[1]):
            problems.append(f"the documented reinstall names onnxruntime-gpu=={reinstall.group(1)} "
                            f"but the pin is onnxruntime-gpu=={gpu[1]}")
        else:
            facts.append("insightface's CPU onnxruntime defused (uninstall + --no-deps reinstall "
                         "documented)")
    return problems, facts


def installed_comparison(pins: dict) -> tuple[list[str], list[str], list[str]]:
    """(matching, differing, environment faults) for the pinned packages installed here."""
    matching, differing, faults = [], [], []
    for key, (name, version, _) in sorted(pins.items()):
        found = installed_version(name)
        if found is None:
            continue
        (matching if same_version(found, version) else differing).append(
            f"{name} {found}" + ("" if same_version(found, version) else f" (pin {version})"))
    cpu, gpu = installed_version("onnxruntime"), installed_version("onnxruntime-gpu")
    if cpu and gpu:
        faults.append(f"onnxruntime {cpu} and onnxruntime-gpu {gpu} are both installed here: they "
                      f"share one folder and sessions get CPUExecutionProvider only; run `pip "
                      f"uninstall -y onnxruntime` then `pip install --force-reinstall --no-deps "
                      f"onnxruntime-gpu=={gpu}`")
    xformers, torch = installed_version("xformers"), installed_version("torch")
    if xformers and torch:
        wanted = installed_requirement_pin("xformers", "torch")
        if wanted and not same_version(wanted, torch):
            faults.append(f"installed xformers {xformers} requires torch=={wanted} but torch "
                          f"{torch} is installed")
    return matching, differing, faults


def run_resolver(requirements: Path, args) -> dict:
    """pip's resolver in report mode for the pod platform; returns {'ok', 'detail' or 'reason', ...}."""
    with tempfile.TemporaryDirectory(prefix="known_failures_resolve_") as temp:
        report = Path(temp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                   "--disable-pip-version-check", "--report", str(report), "--only-binary=:all:",
                   "--python-version", args.resolve_python, "--implementation", "cp",
                   "--abi", "cp" + args.resolve_python.replace(".", ""),
                   "--target", str(Path(temp) / "target")]
        for platform in POD_PLATFORMS:
            command += ["--platform", platform]
        if args.resolve_find_links:
            command += ["--no-index", "--find-links", str(args.resolve_find_links)]
        command += ["-r", str(requirements)]
        started = time.monotonic()
        try:
            completed = subprocess.run(command, capture_output=True, text=True, encoding="utf-8",
                                       errors="replace", timeout=args.resolve_timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "reason": f"pip's resolver did not finish in {args.resolve_timeout} s "
                                           f"(--resolve-timeout)"}
        except OSError as error:
            return {"ok": False, "reason": f"cannot run pip ({error})"}
        seconds = time.monotonic() - started
        if completed.returncode != 0:
            lines = [line.strip() for line in (completed.stderr + completed.stdout).splitlines()
                     if line.strip()]
            keep = [line for line in lines
                    if line.startswith("ERROR") or "depends on" in line or "requested" in line
                    or "conflict" in line.lower()]
            return {"ok": False, "reason": "pip's resolver rejects the pins: "
                                           + " | ".join((keep or lines[-3:])[:8])}
        data = json.loads(report.read_text(encoding="utf-8"))
    resolved = {normalize_name(item["metadata"]["name"]): item["metadata"] for item in data["install"]}
    return {"ok": True, "resolved": resolved, "seconds": seconds, "pip": data.get("pip_version", "?")}


def resolver_checks(pins: dict, result: dict) -> tuple[list[str], list[str]]:
    problems, facts = [], []
    resolved = result["resolved"]
    for key, (name, version, _) in pins.items():
        got = resolved.get(key)
        if got is None:
            problems.append(f"the resolver did not install pinned {name}")
        elif not same_version(got["version"], version):
            problems.append(f"the resolver chose {name} {got['version']}, not the pinned {version}")
    xformers = resolved.get("xformers")
    if xformers:
        wheel_pin = None
        for requirement in xformers.get("requires_dist", []):
            match = re.match(r"^\s*torch\s*\(?\s*==\s*([^\s;,)]+)", requirement)
            if match and "extra" not in requirement:
                wheel_pin = match.group(1)
        table_pin = XFORMERS_TORCH.get(public_version(xformers["version"]))
        if wheel_pin and table_pin and not same_version(wheel_pin, table_pin):
            problems.append(f"XFORMERS_TORCH says xformers {xformers['version']} -> torch=={table_pin} "
                            f"but the wheel requires torch=={wheel_pin}; fix the table")
        elif wheel_pin:
            facts.append(f"wheel metadata confirms xformers {xformers['version']} -> torch=={wheel_pin}")
    if "onnxruntime" in resolved and "onnxruntime-gpu" in pins:
        facts.append(f"pulls onnxruntime {resolved['onnxruntime']['version']} (insightface), "
                     f"removed by the documented uninstall")
    return problems, facts


LOCKED_ENVIRONMENTS = ("pod", "training")  # requirements-ENV.txt -> requirements-ENV-py3XX.lock
LOCK_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")


def lock_problems(root: Path) -> tuple[list[str], list[str]]:
    """The committed locks: every entry pinned and hashed, the top-level pins in them unchanged,
    xformers with its torch, no CPU onnxruntime in the eval lock. Offline; tests/test_pod_locks.py
    re-resolves them against the index."""
    problems, facts = [], []
    for env in LOCKED_ENVIRONMENTS:
        top_file = root / f"requirements-{env}.txt"
        locks = sorted(root.glob(f"requirements-{env}-py3*.lock"))
        if not top_file.is_file():
            continue
        if not locks:  # tests/test_pod_locks.py requires them in the repository
            facts.append(f"{top_file.name}: no lock here")
            continue
        top = {}
        for raw in top_file.read_text(encoding="utf-8").splitlines():
            match = PIN_LINE.match(re.sub(r"(^|\s)#.*$", "", raw).strip())
            if match:
                top[normalize_name(match["name"])] = match["version"]
        for lock in locks:
            entries, current = {}, None
            for raw in lock.read_text(encoding="utf-8").splitlines():
                if raw.strip().startswith("#") or not raw.strip():
                    continue
                match = LOCK_ENTRY.match(raw)
                if match:
                    current = normalize_name(match["name"])
                    entries[current] = [match["version"], 0]
                elif not raw[0].isspace():
                    problems.append(f"{lock.name}: `{raw.strip()}` is not pinned with ==")
                if current and "--hash=sha256:" in raw:
                    entries[current][1] += raw.count("--hash=sha256:")
            unhashed = sorted(name for name, (_, hashes) in entries.items() if not hashes)
            if unhashed:
                problems.append(f"{lock.name}: no --hash for {', '.join(unhashed)}")
            for name, version in top.items():
                if name not in entries:
                    problems.append(f"{lock.name} lacks {name}, pinned in {top_file.name}")
                elif not same_version(entries[name][0], version):
                    problems.append(f"{lock.name} has {name} {entries[name][0]} but {top_file.name} "
                                    f"pins {version}: regenerate the lock (command in its header)")
            if "xformers" in entries and "torch" in entries:
                wanted = XFORMERS_TORCH.get(public_version(entries["xformers"][0]))
                if wanted and not same_version(wanted, entries["torch"][0]):
                    problems.append(f"{lock.name}: xformers {entries['xformers'][0]} requires torch=={wanted}"
                                    f", the lock has torch {entries['torch'][0]}")
            if env == "pod" and "onnxruntime" in entries:
                problems.append(f"{lock.name} installs the CPU onnxruntime beside onnxruntime-gpu")
            facts.append(f"{lock.name} {len(entries)} hashed pins")
    return problems, facts


def dependency_chain_test(root: Path, args) -> tuple[bool, str]:
    requirements = root / REQUIREMENTS_FILE
    if not requirements.is_file():
        return False, f"{REQUIREMENTS_FILE} not found in {root}"
    text = requirements.read_text(encoding="utf-8")
    pins, problems = parse_requirements(requirements)
    if not pins:
        problems.append(f"{REQUIREMENTS_FILE} pins no package")
    more, facts = pin_problems(pins, text)
    problems += more
    matching, differing, faults = installed_comparison(pins)
    problems += faults
    more, lock_facts = lock_problems(root)
    problems += more
    facts += lock_facts
    if args.check_installed and differing:
        problems.append("installed versions differ from the pins: " + ", ".join(differing))
    layers = "offline layer (table + installed metadata)"
    if args.resolve:
        result = run_resolver(requirements, args)
        if not result["ok"]:
            problems.append(result["reason"])
        else:
            more, resolver_facts = resolver_checks(pins, result)
            problems += more
            facts += resolver_facts
            layers += (f" + resolver layer (pip {result['pip']}, {len(result['resolved'])} packages "
                       f"for CPython {args.resolve_python} manylinux_2_28_x86_64, "
                       f"{result['seconds']:.0f} s)")
    else:
        layers += "; resolver layer not run (opt in with --resolve: downloads ~4.7 GB of wheels)"
    if problems:
        return False, "; ".join(problems)
    installed = f"installed here: {len(matching)} match the pins"
    if differing:
        enforced = "checked" if args.check_installed else "not enforced: --check-installed on the pod"
        installed += f", {len(differing)} differ ({', '.join(differing)}; {enforced})"
    return True, f"{len(pins)} pins; " + "; ".join(facts) + f"; {installed}; {layers}"


# ---------------------------------------------------------------------------------------------
# training_flag_test

TRAIN_SCRIPT = "tools/retrain_lora_v3.py"
# Names get_scheduler_fix builds with sd-scripts' default arguments (transformers 4.54.1's
# SchedulerType), the two that need an argument of their own, and the two it can never build (it
# passes num_warmup_steps/num_training_steps/num_decay_steps they do not take).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup", "inverse_sqrt", "warmup_stable_decay")
SCHEDULERS_NEEDING = {"cosine_with_min_lr": "--lr_scheduler_min_lr_ratio (library/train_util.py:5366)",
                      "piecewise_constant": "--lr_scheduler_args step_rules=... "
                                            "(library/train_util.py:5324)"}
SCHEDULERS_BROKEN = ("reduce_lr_on_plateau", "cosine_warmup_with_min_lr")


def kohya_options(argv: list[str]) -> tuple[str, dict]:
    """(training script name, {option: value}) from a launcher + sd-scripts argv."""
    script_index = next((index for index, token in enumerate(argv) if token.endswith("_network.py")),
                        None)
    if script_index is None:
        return "", {}
    options: dict = {}
    current = None
    for token in argv[script_index + 1:]:
        if token.startswith("--"):
            current = token[2:].split("=", 1)[0].replace("-", "_")
            options[current] = token.split("=", 1)[1] if "=" in token else True
        elif current is not None:
            value = options[current]
            options[current] = token if value is True else (
                value + [token] if isinstance(value, list) else [value, token])
    return Path(argv[script_index]).name, options


def flatten_dataset_config(config: dict) -> dict:
    """[general], [[datasets]] and [[datasets.subsets]] keys in one dict (innermost wins)."""
    flat = dict(config.get("general", {}))
    for dataset in config.get("datasets", []):
        flat.update({key: value for key, value in dataset.items() if key != "subsets"})
        for subset in dataset.get("subsets", []):
            flat.update(subset)
    return flat


def _truthy(value) -> bool:
    if isinstance(value, list):
        return any(_truthy(item) for item in value)
    if isinstance(value, str):
        try:
            return float(value) != 0
        except ValueError:
            return value.lower() not in ("", "false", "no", "none")
    return bool(value)


def _floats(value) -> list[float]:
    if value is None or value is True or value is False:
        return []
    values = value if isinstance(value, list) else [value]
    return [float(item) for item in values]


def _listed(options: dict, name: str) -> list[str]:
    value = options.get(name)
    if value is None or isinstance(value, bool):
        return []
    return [str(item) for item in (value if isinstance(value, list) else [value])]


def _network_args(options: dict) -> dict:
    return dict(item.split("=", 1) for item in _listed(options, "network_args") if "=" in item)


def _differs_from_one(text: str) -> bool:
    try:
        return float(text) != 1.0
    except ValueError:
        return True


def _block_lrs_differ(text: str) -> bool:
    try:
        weights = {float(part) if part.strip() else 0.0 for part in text.split(",")}
    except ValueError:
        return True  # a preset (sine, cosine, ...): weights vary by block
    return bool(weights - {0.0, 1.0})


def conflicting_pairs(options: dict, model_type: str) -> list[str]:
    """Flag combinations that sd-scripts (or Prodigy) refuses, or that this project refuses for its
    own reasons (cached text encoders with a text-encoder lr); independent of retrain_lora_v3.py's
    own checks, so a bug there cannot hide one here. The same rules, the same upstream places:
    tools/retrain_lora_v3.py UPSTREAM; tests/test_known_failures.py checks both agree."""
    found = []
    te_cached = _truthy(options.get("cache_text_encoder_outputs")) or _truthy(
        options.get("cache_text_encoder_outputs_to_disk"))
    unet_only = _truthy(options.get("network_train_unet_only"))
    te_lrs = [value for value in _floats(options.get("text_encoder_lr")) if value != 0]
    if te_cached and te_lrs:
        found.append("--cache_text_encoder_outputs with --text_encoder_lr "
                     f"{options['text_encoder_lr']} (the text encoder is not trained, the lr is "
                     f"silently ignored)")
    if te_cached and not unet_only and model_type == "sdxl":
        found.append("--cache_text_encoder_outputs without --network_train_unet_only "
                     "(sdxl_train_network.py:39-41)")
    if te_cached:
        for name in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
                     "caption_dropout_every_n_epochs", "token_warmup_step"):
            if _truthy(options.get(name)):
                found.append(f"--cache_text_encoder_outputs with --{name}")
    if _truthy(options.get("cache_latents")) or _truthy(options.get("cache_latents_to_disk")):
        for name in ("color_aug", "random_crop"):
            if _truthy(options.get(name)):
                found.append(f"--cache_latents with --{name}")
    mixed = str(options.get("mixed_precision") or "no")
    if _truthy(options.get("full_fp16")):  # checked first upstream; full_bf16 only without it
        if mixed != "fp16":
            found.append(f"--full_fp16 with --mixed_precision {mixed}")
    elif _truthy(options.get("full_bf16")) and mixed != "bf16":
        found.append(f"--full_bf16 with --mixed_precision {mixed}")
    if (_truthy(options.get("fp8_base")) or _truthy(options.get("fp8_base_unet"))) and mixed == "no":
        found.append("--fp8_base with --mixed_precision no")
    swap = options.get("blocks_to_swap")
    if model_type == "flux" and swap not in (None, True, False):
        if int(float(swap)) > 35:
            found.append(f"--blocks_to_swap {swap} above 35 on Flux")
        if int(float(swap)) > 0 and _truthy(options.get("cpu_offload_checkpointing")):
            found.append("--blocks_to_swap with --cpu_offload_checkpointing")
    if model_type == "sdxl" and _truthy(options.get("cpu_offload_checkpointing")):
        found.append("--cpu_offload_checkpointing on SDXL (library/sdxl_original_unet.py:1041 takes "
                     "no cpu_offload)")
    if model_type == "sdxl" and _truthy(options.get("v2")):
        found.append("--v2 on SDXL (library/sdxl_train_util.py:349)")
    if options.get("adaptive_noise_scale") is not None and options.get("noise_offset") is None:
        found.append("--adaptive_noise_scale without --noise_offset (library/train_util.py:4443)")
    bucket = options.get("bucket_reso_steps")
    if bucket not in (None, True, False):
        step = 32 if model_type == "sdxl" else 64
        if int(float(bucket)) % step:
            found.append(f"--bucket_reso_steps {bucket} not divisible by {step} "
                         f"(library/train_util.py:1094)")
    optimizer = str(options.get("optimizer_type", "")).lower()
    if _truthy(options.get("fused_backward_pass")) and optimizer != "adafactor":
        found.append(f"--fused_backward_pass with --optimizer_type {optimizer} "
                     f"(library/train_util.py:4848)")
    scheduler = str(options.get("lr_scheduler") or "constant")
    if not options.get("lr_scheduler_type"):
        if scheduler.startswith("adafactor"):
            if optimizer != "adafactor":
                found.append(f"--lr_scheduler {scheduler} without Adafactor")
        elif scheduler in SCHEDULERS_BROKEN:
            found.append(f"--lr_scheduler {scheduler} cannot be built (library/train_util.py:5393)")
        elif scheduler in SCHEDULERS_NEEDING:
            keys = {item.split("=", 1)[0] for item in _listed(options, "lr_scheduler_args")}
            given = ("min_lr" in keys or options.get("lr_scheduler_min_lr_ratio") is not None
                     if scheduler == "cosine_with_min_lr" else "step_rules" in keys)
            if not given:
                found.append(f"--lr_scheduler {scheduler} without {SCHEDULERS_NEEDING[scheduler]}")
        elif scheduler not in LR_SCHEDULERS:
            found.append(f"--lr_scheduler {scheduler} unknown (library/train_util.py:5326)")
        elif scheduler == "constant":
            warmup = options.get("lr_warmup_steps")
            if warmup not in (None, True, False):
                text = str(warmup).strip()  # int_or_float: below 1 (or N%) a ratio of the steps
                value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
                steps = int(options.get("max_train_steps") or 0)
                if (int(value * steps) if value < 1 else value):
                    found.append(f"--lr_scheduler constant with --lr_warmup_steps {warmup} "
                                 f"(library/train_util.py:5296)")
    for item in _listed(options, "network_args"):
        if "=" not in item:
            found.append(f"--network_args {item} without '=' (train_network.py:667)")
    if optimizer.split(".")[-1] == "prodigy":  # 'prodigy' in any case, or prodigyopt.Prodigy
        base = float(options.get("learning_rate", 2e-6))  # sd-scripts' default learning rate
        unet = _floats(options.get("unet_lr"))[0] if options.get("unet_lr") not in (None, True) else base
        nargs = _network_args(options)
        plus = [key for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio")
                + (() if unet_only else ("loraplus_text_encoder_lr_ratio",))
                if key in nargs and _differs_from_one(nargs[key])]
        if plus:
            found.append(f"--optimizer_type prodigy with LoRA+ {plus[0]}={nargs[plus[0]]} "
                         f"(prodigyopt/prodigy.py:151)")
        if model_type == "sdxl":
            blocks = [key for key in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
                      if key in nargs and _block_lrs_differ(nargs[key])]
            if blocks:
                found.append(f"--optimizer_type prodigy with block lr {blocks[0]}={nargs[blocks[0]]} "
                             f"(prodigyopt/prodigy.py:151)")
        elif nargs.get("network_reg_lrs"):
            found.append("--optimizer_type prodigy with network_reg_lrs (prodigyopt/prodigy.py:151)")
        if not unet_only and unet != 0 and any(value != unet for value in (te_lrs or [base])):
            found.append(f"--optimizer_type prodigy with different --unet_lr {unet:g} and "
                         f"--text_encoder_lr {te_lrs or base} (prodigyopt/prodigy.py:151)")
    return found


def load_project_script(root: Path, relative: str):
    """Import a project script by path (known_failures tests the project, so this is allowed)."""
    path = root / relative
    name = f"known_failures_target_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the repo
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
        sys.dont_write_bytecode = saved
    return module


def training_flag_test(root: Path, args) -> tuple[bool, str]:
    path = root / TRAIN_SCRIPT
    if not path.is_file():
        return False, f"{TRAIN_SCRIPT} not found"
    try:
        module = load_project_script(root, TRAIN_SCRIPT)
    except Exception as error:  # a broken script is exactly what this test reports
        return False, f"cannot import {TRAIN_SCRIPT}: {type(error).__name__}: {error}"
    if not hasattr(module, "default_command"):
        return False, f"{TRAIN_SCRIPT} has no default_command(model_type)"
    problems, facts = [], []
    for model_type, script in (("sdxl", "sdxl_train_network.py"), ("flux", "flux_train_network.py")):
        try:
            argv = [str(token) for token in module.default_command(model_type)]
            dataset = (module.default_dataset_config(model_type)
                       if hasattr(module, "default_dataset_config") else {})
        except Exception as error:
            problems.append(f"{model_type}: default_command failed: {type(error).__name__}: {error}")
            continue
        name, options = kohya_options(argv)
        if name != script:
            problems.append(f"{model_type}: the default command runs {name or 'no *_network.py'}, "
                            f"not {script}")
            continue
        merged = {**flatten_dataset_config(dataset), **options}
        pairs = conflicting_pairs(merged, model_type)
        problems += [f"{model_type} default: {pair}" for pair in pairs]
        facts.append(f"{model_type} ({len(options)} flags + {len(flatten_dataset_config(dataset))} "
                     f"dataset keys)")
    if problems:
        return False, "; ".join(problems)
    return True, "no conflicting flag pair in the default commands: " + ", ".join(facts)


# ---------------------------------------------------------------------------------------------
# stale_reference_test

TOP_FOLDERS = ("tools", "evals", "agents", "context", "autonomous-research", "benchmarks", "tests")
SCANNED_SUFFIXES = {".md", ".py", ".ps1", ".txt"}
CHECKED_SUFFIXES = {".md", ".py", ".ps1", ".txt", ".toml", ".sh", ".ini", ".cfg", ".yml", ".yaml"}
SKIPPED_DIRS = {"__pycache__", "node_modules", "venv", "build", "dist", "site-packages"}
PLACEHOLDER = re.compile(r"[*?{}<>\[\]$%]|YYYY|\bMM\b|\bDD\b|\.\.\.")
FOLDER_TOKEN = re.compile(
    r"(?<![\w./\\-])((?:" + "|".join(re.escape(folder) for folder in TOP_FOLDERS)
    + r")/[\w./*?{}<>$%-]*)"
)
BARE_TOKEN = re.compile(r"(?<![\w./\\-])([\w-]+\.(?:md|txt|ps1|py|toml|ini))(?![\w/-])")
PATTERN_TOKEN = re.compile(r"(?<![\w./\\-])((?:[\w-]+/)*[\w.-]*(?:YYYY|\*|\{[\w-]*\})[\w.{}*-]*)")


def is_archive(part: str) -> bool:
    return "archive" in part.lower()


def active_files(root: Path) -> list[Path]:
    """Markdown/Python/PowerShell/text files outside archive, hidden, cache and test folders."""
    found = []
    for directory, folders, files in os.walk(root):
        relative = Path(directory).relative_to(root)
        folders[:] = sorted(
            folder for folder in folders
            if not folder.startswith(".") and folder not in SKIPPED_DIRS and not is_archive(folder)
            and not (relative == Path(".") and folder == "tests")
            and not (Path(directory, folder) / "pyvenv.cfg").exists()
        )
        for name in sorted(files):
            path = Path(directory, name)
            if path.suffix.lower() in SCANNED_SUFFIXES and path.stat().st_size < 2_000_000:
                found.append(path)
    return found


def placeholder_regexes(texts: list[str]) -> list[re.Pattern]:
    """File-name patterns written in the repo (briefing-YYYY-MM-DD.md, cycle-*.log) as regexes.

    Only names with a literal stem of 3+ characters before the first placeholder and an extension
    count, so `*.py` or `{name}.json` never excuse anything.
    """
    patterns = set()
    for text in texts:
        for token in PATTERN_TOKEN.findall(text):
            name = token.rstrip(".,:;)`'\"").rsplit("/", 1)[-1]
            match = re.fullmatch(r"([\w.-]{3,}?)((?:YYYY|\*|\{[\w-]*\}).*)\.([A-Za-z]{1,5})", name)
            if not match or re.search(r"[*{}]|YYYY", match.group(1)):
                continue
            rest = re.escape(match.group(2))
            rest = rest.replace("YYYY", r"\d{4}").replace("MM", r"\d{2}").replace("DD", r"\d{2}")
            rest = rest.replace(r"\*", ".+")
            rest = re.sub(r"\\\{[\w\\-]*\\\}", ".+", rest)
            patterns.add(re.escape(match.group(1)) + rest + re.escape("." + match.group(3)))
    return [re.compile(f"^{pattern}$") for pattern in sorted(patterns)]


def names_in_code(root: Path) -> set[str]:
    """String literals (not docstrings) in tools/ and evals/ scripts: names of files they write."""
    names: set[str] = set()
    for folder in ("tools", "evals"):
        for path in sorted((root / folder).glob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, ValueError, UnicodeDecodeError):
                continue
            docstrings = set()
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    body = getattr(node, "body", [])
                    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                        docstrings.add(id(body[0].value))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and id(node) not in docstrings and len(node.value) < 200):
                    for part in re.split(r"[\\/\s]", node.value):
                        if "." in part:
                            names.add(part)
    return names


def references(text: str, top_level_names: set[str]) -> list[tuple[int, str]]:
    """(line number, path) for every path-like token on lines without a `stale-ok` marker."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if "stale-ok" in line:
            continue
        tokens = list(FOLDER_TOKEN.findall(line))
        for token in BARE_TOKEN.findall(line):
            if (re.fullmatch(r"[A-Z][A-Z0-9_-]*\.md", token) or token.startswith("requirements")
                    or token in top_level_names):
                tokens.append(token)
        for token in tokens:
            token = token.rstrip(".,:;`'\")")
            if not token or PLACEHOLDER.search(token):
                continue
            last = token.rstrip("/").rsplit("/", 1)[-1]
            if token.endswith("/") or Path(last).suffix.lower() in CHECKED_SUFFIXES:
                found.append((number, token))
    return found


# Briefings are dated historical records, never edited after their day: a path one cites may be
# moved or deleted later, and that must not fail every later cycle (agents/pistachio-agent-v3.md,
# "References"). They are not scanned; they still count as files that exist.
BRIEFING_RECORD = re.compile(r"^briefing-\d{4}-\d{2}-\d{2}\.md$")


def path_exists(path: Path, folder: bool = False) -> bool:
    """Path.exists()/is_dir() where a name the OS refuses (too long, a NUL) counts as missing:
    such a reference is stale, not a crash of the test."""
    try:
        return path.is_dir() if folder else path.exists()
    except (OSError, ValueError):
        return False


def archived_copies(root: Path, name: str) -> list[str]:
    """Files called `name` in an archive folder under root (glob characters in it taken
    literally; a name the OS refuses, too long say, has none)."""
    try:
        return sorted(candidate.relative_to(root).as_posix()
                      for candidate in root.rglob(glob.escape(name))
                      if any(is_archive(part) for part in candidate.relative_to(root).parts[:-1]))
    except (OSError, ValueError):
        return []


def stale_reference_test(root: Path, args) -> tuple[bool, str]:
    files = [path for path in active_files(root)
             if not (path.parent == root / "autonomous-research" and BRIEFING_RECORD.match(path.name))]
    texts = {path: path.read_text(encoding="utf-8", errors="replace") for path in files}
    patterns = placeholder_regexes(list(texts.values()))
    generated = names_in_code(root)
    top_level_names = {path.name for path in root.iterdir() if path.is_file()}
    problems, checked = [], 0
    for path, text in texts.items():
        relative = path.relative_to(root).as_posix()
        for number, token in references(text, top_level_names):
            checked += 1
            parts = token.rstrip("/").split("/")
            if any(is_archive(part) for part in parts[:-1]) or (
                    not token.endswith("/") and is_archive(parts[-1]) and "/" in token):
                problems.append(f"{relative}:{number} names {token}, which is archived")
                continue
            if is_archive(parts[-1]):
                continue  # the archive folder itself, e.g. "move it to context/archive/"
            if path_exists(root / token):
                continue
            name = parts[-1]
            documented = any(pattern.match(name) for pattern in patterns) or name in generated
            if documented and path_exists((root / token.rstrip("/")).parent, folder=True):
                # An instance of a documented pattern, or an output a script writes, in a folder
                # that exists (a report name under a missing folder is still stale).
                continue
            archived = archived_copies(root, name) if "/" in token or "." in name else []
            note = f" (an archived copy exists at {archived[0]})" if archived else ""
            problems.append(f"{relative}:{number} names {token}, which does not exist{note}")
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        return False, f"{len(problems)} stale reference(s): " + "; ".join(shown)
    return True, f"{checked} path references in {len(files)} active files all resolve"


# ---------------------------------------------------------------------------------------------
# context_budget_test


# Copied from tools/lifeos_context_budget.py:DEFAULT_BUDGET
DEFAULT_BUDGET = 220
# Copied from tools/lifeos_context_budget.py:STARTUP_LIST
STARTUP_LIST = "context/startup-context.txt"
# Copied from tools/lifeos_context_budget.py:DEFAULT_STARTUP_FILES
DEFAULT_STARTUP_FILES = (
    "CLAUDE.md",
    "context/session-learnings.md",
    "context/projects/pistachio/context.md",
    "PROGRESS.md",
)


# Copied from tools/lifeos_context_budget.py:startup_files
def startup_files(project_root: Path) -> list[str]:
    """The startup files named in context/startup-context.txt, or the default list without it."""
    listing = Path(project_root) / STARTUP_LIST
    if not listing.is_file():
        return list(DEFAULT_STARTUP_FILES)
    names = []
    for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


# Copied from tools/lifeos_context_budget.py:count_lines
def count_lines(path: Path) -> int:
    """Lines in a text file as an editor shows them (a last line without newline counts); 0 if absent."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return 0
    return len(data.splitlines())


def context_budget_test(root: Path, args) -> tuple[bool, str]:
    budget = args.context_budget
    names = startup_files(root)
    counts = [(name, count_lines(root / name)) for name in names]
    total = sum(lines for _, lines in counts)
    source = STARTUP_LIST if (root / STARTUP_LIST).is_file() else "the default list"
    listing = ", ".join(f"{name} {lines}" for name, lines in counts)
    if total > budget:
        return False, (f"startup context is {total} lines, {total - budget} over the budget of "
                       f"{budget} ({listing}; files from {source}); move detail out of the "
                       f"startup files")
    return True, f"{total} of {budget} lines ({listing}; files from {source})"


# ---------------------------------------------------------------------------------------------
# script_syntax_test


def script_syntax_test(root: Path, args) -> tuple[bool, str]:
    scripts = sorted(
        path for folder in ("tools", "evals") if (root / folder).is_dir()
        for path in (root / folder).rglob("*.py")
        if "__pycache__" not in path.parts and not any(part.startswith(".") for part in
                                                       path.relative_to(root).parts)
    )
    if not scripts:
        return False, "no .py files found in tools/ or evals/"
    problems = []
    with tempfile.TemporaryDirectory(prefix="known_failures_pyc_") as temp:
        for index, path in enumerate(scripts):
            relative = path.relative_to(root).as_posix()
            try:  # compile to a temp cfile so no __pycache__ lands in the repo
                py_compile.compile(str(path), cfile=str(Path(temp) / f"{index}.pyc"), doraise=True)
            except py_compile.PyCompileError as error:
                cause = error.exc_value
                if isinstance(cause, SyntaxError):
                    problems.append(f"{relative}:{cause.lineno}: {cause.msg}")
                else:
                    problems.append(f"{relative}: {type(cause).__name__}: {cause}")
    if problems:
        return False, f"{len(problems)} of {len(scripts)} scripts do not compile: " + "; ".join(problems)
    return True, f"{len(scripts)} scripts in tools/ and evals/ compile"


# ---------------------------------------------------------------------------------------------

TESTS = {
    "dependency_chain_test": dependency_chain_test,
    "training_flag_test": training_flag_test,
    "stale_reference_test": stale_reference_test,
    "context_budget_test": context_budget_test,
    "script_syntax_test": script_syntax_test,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project-root", type=Path, default=Path("."),
                        help="repository root (default: the current folder)")
    parser.add_argument("--only", action="append", choices=sorted(TESTS), default=None,
                        help="run only this test; repeatable (default: all five)")
    parser.add_argument("--resolve", action="store_true",
                        help="dependency_chain_test also runs pip's resolver for the pod platform; "
                             "needs the package index and downloads ~4.7 GB (default: off)")
    parser.add_argument("--resolve-python", default=POD_PYTHON,
                        help=f"Python version the resolver targets (default: {POD_PYTHON})")
    parser.add_argument("--resolve-find-links", type=Path, default=None,
                        help="resolve against this local wheel folder instead of the index "
                             "(default: the index)")
    parser.add_argument("--resolve-timeout", type=int, default=3600,
                        help="seconds the resolver may take (default: 3600)")
    parser.add_argument("--check-installed", action="store_true",
                        help="FAIL when an installed package differs from its pin; use on the pod "
                             "(default: differences are reported only, dev machines differ)")
    parser.add_argument("--context-budget", type=int, default=DEFAULT_BUDGET,
                        help=f"startup-context line budget (default: {DEFAULT_BUDGET})")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = args.project_root
    if not root.is_dir():
        parser.error(f"--project-root {root} is not a folder; pass the repository root")
    if args.resolve_find_links is not None and not args.resolve_find_links.is_dir():
        parser.error(f"--resolve-find-links {args.resolve_find_links} is not a folder")
    if args.resolve_find_links is not None and not args.resolve:
        parser.error("--resolve-find-links only applies with --resolve")
    root = root.resolve()
    failed = 0
    for name in args.only or list(TESTS):
        if args.resolve and name == "dependency_chain_test":
            print("dependency_chain_test: running pip's resolver (this downloads wheels) ...",
                  file=sys.stderr, flush=True)
        try:
            passed, detail = TESTS[name](root, args)
        except Exception as error:  # one broken test must not hide the others
            passed, detail = False, f"the test itself crashed: {type(error).__name__}: {error}"
        print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)
        failed += not passed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
