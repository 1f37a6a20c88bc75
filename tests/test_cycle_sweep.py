"""The cycle's sweep steps: `--generate` (step 7 generate, tools/generate_sweep.py) and the
"new images in the sweep" check that decides whether step 7 scorecard runs.

The end-to-end test builds the tiny random-weight SDXL of tests/tiny_sdxl.py (a single-file base,
its config folder, two kohya LoRAs) outside the clone, runs the whole cycle with a stand-in agent
on CPU (`--generate-device cpu`, tiny `--generate-args`), and checks that the cycle generated the
newest checkpoint's images and the baseline, scored them, and committed only its own files.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import pytest

from conftest import REPO_ROOT, load_script, run_script
from cycle_fixtures import (BRIEFING_AGENT, add_user_work, base_env, briefing_agent,  # noqa: F401
                            clone, commits, cycle_env, git, run_cycle, stand_in_agent, today)

cycle = load_script("tools/run_full_cycle.py")
SCRIPT = "tools/run_full_cycle.py"
TINY_ARGS = "--strengths 1 --cfg 4 --seeds 1 --steps 2 --size 64"


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.timezone.utc)


def set_mtime(path, moment: dt.datetime) -> None:
    os.utime(path, (moment.timestamp(), moment.timestamp()))


# --------------------------------------------------------------------------- the history's times

def test_a_timestamp_without_a_zone_is_read_as_utc_with_a_warning(tmp_path):
    """main's check compared it with an aware time: TypeError. Now UTC, like the scorecard."""
    history = tmp_path / "eval_history.jsonl"
    history.write_text(json.dumps({"run_id": "a", "timestamp": "2026-03-01T10:00:00"}) + "\n"
                       + json.dumps({"run_id": "b", "timestamp": "2026-03-01T09:00:00Z"}) + "\n",
                       encoding="utf-8")
    latest, notes = cycle.last_history_time(history)
    assert latest == utc(2026, 3, 1, 10)
    assert notes == [f"{history}:1: timestamp '2026-03-01T10:00:00' has no time zone; read as UTC"]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    image = sweep / "step1_str1.00_cfg4.0_p01_seed1.png"
    image.write_bytes(b"x")
    set_mtime(image, utc(2026, 3, 1, 10, 30))
    new, why, notes = cycle.sweep_has_new_images(sweep, history)
    assert new and "after the last entry 2026-03-01 10:00:00 UTC" in why
    assert any("has no time zone" in note for note in notes)
    set_mtime(image, utc(2026, 3, 1, 9, 30))
    assert cycle.sweep_has_new_images(sweep, history)[0] is False


def test_a_bom_torn_and_corrupt_lines_are_skipped_like_the_scorecard_does(tmp_path):
    history = tmp_path / "eval_history.jsonl"
    lines = [b"\xef\xbb\xbf" + json.dumps({"run_id": "a", "timestamp": "2026-03-01T08:00:00Z"}).encode(),
             b"{not json",
             b"\xff\xfe broken utf-8",
             json.dumps(["a", "list"]).encode(),
             json.dumps({"timestamp": "2026-03-09T00:00:00Z"}).encode(),   # no run_id: skipped
             json.dumps({"run_id": "b", "timestamp": "yesterday"}).encode(),
             json.dumps({"run_id": "c"}).encode(),                          # no timestamp at all
             json.dumps({"run_id": "d", "timestamp": "2026-03-02T08:00:00+02:00"}).encode()]
    history.write_bytes(b"\n".join(lines) + b"\n" + b'{"run_id": "e", "timest')
    latest, notes = cycle.last_history_time(history)
    assert latest == utc(2026, 3, 2, 6)
    text = "\n".join(notes)
    assert f"{history}:1: a UTF-8 byte order mark (BOM) was skipped" in text
    assert f"{history}:2: corrupt history line skipped (JSONDecodeError)" in text
    assert f"{history}:3: corrupt history line skipped (UnicodeDecodeError)" in text
    assert f"{history}:4: history line without a run_id skipped" in text
    assert f"{history}:5: history line without a run_id skipped" in text
    assert f"{history}:6: timestamp 'yesterday' is not ISO 8601" in text
    assert f"{history}:9: torn last line skipped" in text
    assert len(notes) == 7
    # The scorecard reads the same file to the same conclusion (what the cycle copies from it).
    scorecard = load_script("evals/scorecard.py")
    records = scorecard.read_history(history, report=lambda message: None)
    assert [record["run_id"] for record in records] == ["a", "b", "c", "d"]


def test_no_history_an_empty_one_and_an_unreadable_one(tmp_path):
    assert cycle.last_history_time(tmp_path / "missing.jsonl") == (None, [])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert cycle.last_history_time(empty) == (None, [])
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    assert cycle.last_history_time(folder) == (None, [])


def test_the_history_counts_whole_seconds(tmp_path):
    """The scorecard writes its start time truncated to the second: an image from that same second
    was most likely scored by that run, so it is not new; one a second later is."""
    history = tmp_path / "eval_history.jsonl"
    history.write_text(json.dumps({"run_id": "a", "timestamp": "2026-03-01T10:00:00Z"}) + "\n",
                       encoding="utf-8")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    image = sweep / "a.png"
    image.write_bytes(b"x")
    set_mtime(image, utc(2026, 3, 1, 10, 0, 0, 700000))
    assert cycle.sweep_has_new_images(sweep, history)[0] is False
    set_mtime(image, utc(2026, 3, 1, 10, 0, 1))
    assert cycle.sweep_has_new_images(sweep, history)[0] is True


def test_a_dangling_link_or_a_folder_named_like_an_image_is_skipped(tmp_path):
    """main's check ran path.stat() on every name: a dangling link raised FileNotFoundError."""
    sweep = tmp_path / "sweep"
    (sweep / "nested").mkdir(parents=True)
    (sweep / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (sweep / "folder.png").mkdir()
    history = tmp_path / "eval_history.jsonl"
    new, why, notes = cycle.sweep_has_new_images(sweep, history)
    assert (new, why) == (False, f"no images in {sweep}")
    assert len(notes) == 1 and "gone.png: skipped (a dangling link" in notes[0]
    (sweep / "nested" / "step1_str1.00_cfg4.0_p01_seed1.png").write_bytes(b"x")
    (sweep / "linked.png").symlink_to(sweep / "nested" / "step1_str1.00_cfg4.0_p01_seed1.png")
    new, why, notes = cycle.sweep_has_new_images(sweep, history)
    assert new and why == "2 images, no history entry yet"


def test_dry_run_reads_an_odd_history_and_sweep_without_a_traceback(clone, cycle_env, tmp_path):
    """Through the CLI: a zone-less, BOM-prefixed history in the clone and a dangling link in the
    sweep give warnings and a decision, never a traceback."""
    (clone / "evals/eval_history.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"run_id": "old", "timestamp": "2020-01-01T00:00:00"}).encode()
        + b"\n{torn")
    git(clone, "add", "evals/eval_history.jsonl")
    git(clone, "commit", "-q", "-m", "a history written by hand")
    sweep, reference = tmp_path / "sweep", tmp_path / "reference"
    sweep.mkdir()
    reference.mkdir()
    (sweep / "step1_str1.00_cfg4.0_p01_seed1.png").write_bytes(b"x")
    (sweep / "gone.png").symlink_to(tmp_path / "nowhere.png")
    agent = stand_in_agent(tmp_path, "print('never runs')\n")
    completed = run_cycle(clone, "--dry-run", "--agent-cmd", agent, "--sweep-dir", sweep,
                          "--reference-dir", reference, "--lora-version", "v3", env=cycle_env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    assert "has no time zone; read as UTC" in completed.stdout
    assert "a UTF-8 byte order mark (BOM) was skipped" in completed.stdout
    assert "torn last line skipped" in completed.stdout
    assert "gone.png: skipped (a dangling link" in completed.stdout
    assert "(would run: 1 images, newest" in completed.stdout
    assert "after the last entry 2020-01-01 00:00:00 UTC" in completed.stdout


# --------------------------------------------------------------------------- --generate's flags

def usage_error(tmp_path, *args) -> str:
    completed = run_script(SCRIPT, "--project-root", tmp_path, *map(str, args))
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    return completed.stderr.strip().splitlines()[-1]


@pytest.fixture
def paths(tmp_path) -> dict:
    """Folders and files that exist (contents do not matter for the usage checks)."""
    out = {name: tmp_path / name for name in ("lora", "refs", "config")}
    for folder in out.values():
        folder.mkdir()
    out["base"] = tmp_path / "base.safetensors"
    out["base"].write_bytes(b"")
    out["sweep"] = tmp_path / "outside" / "sweep"
    out["project"] = tmp_path / "project"
    out["project"].mkdir()
    return out


def generate_args(paths, **change) -> list:
    flags = {"--base-model": paths["base"], "--lora-dir": paths["lora"], "--trigger": "ohwx",
             "--sweep-dir": paths["sweep"], "--reference-dir": paths["refs"],
             "--lora-version": "v3"}
    flags.update(change)
    args = ["--generate"]
    for flag, value in flags.items():
        if value is not None:
            args += [flag, value]
    return args


def test_generate_names_every_missing_companion_flag(paths):
    root = paths["project"]
    assert usage_error(root, "--generate").endswith(
        "error: --generate needs --base-model, --lora-dir, --trigger, --sweep-dir, "
        "--reference-dir, --lora-version")
    assert usage_error(root, *generate_args(paths, **{"--trigger": None})).endswith(
        "error: --generate needs --trigger")
    assert usage_error(root, *generate_args(paths, **{"--sweep-dir": None, "--lora-version": None})
                       ).endswith("error: --generate needs --sweep-dir, --lora-version")


def test_generate_flags_without_generate_are_refused(paths):
    root = paths["project"]
    assert usage_error(root, "--base-model", paths["base"]).endswith(
        "error: --base-model only makes sense with --generate")
    assert usage_error(root, "--lora-dir", paths["lora"], "--generate-device", "cpu",
                       "--generate-args", "--steps 2").endswith(
        "error: --lora-dir, --generate-device, --generate-args only make sense with --generate")


def test_generate_checks_its_paths_right_after_parsing(paths, tmp_path):
    root = paths["project"]
    missing = tmp_path / "missing.safetensors"
    assert usage_error(root, *generate_args(paths, **{"--base-model": missing})).endswith(
        f"error: --base-model {missing} does not exist (a .safetensors file or a diffusers folder)")
    assert usage_error(root, *generate_args(paths, **{"--lora-dir": paths["base"]})).endswith(
        f"error: --lora-dir {paths['base']} is not a folder")
    assert usage_error(root, *generate_args(paths), "--sweep-config", missing).endswith(
        f"error: --sweep-config {missing} is not a folder")
    assert usage_error(root, *generate_args(paths, **{"--sweep-dir": paths["base"]})).endswith(
        f"error: --sweep-dir {paths['base']} is not a folder")
    assert usage_error(root, *generate_args(paths, **{"--trigger": " "})).endswith(
        "error: --trigger is empty")


@pytest.mark.parametrize("inside", ["sweep", ".", "evals/../sweep"])
def test_generate_refuses_a_sweep_folder_inside_the_repository(paths, inside):
    """The images would be new files in the repository: the cycle commits only its own files
    and fails on any other, so such a sweep could never be scored. Refused before anything runs."""
    root = paths["project"]
    message = usage_error(root, *generate_args(paths, **{"--sweep-dir": root / inside}))
    assert "lies inside the repository" in message and "pass a folder outside the repository" in message
    assert not (root / "sweep").exists() and not (root / ".cycle.lock").exists()


def test_generate_refuses_a_sweep_folder_that_links_into_the_repository(paths, tmp_path):
    root = paths["project"]
    (root / "inside").mkdir()
    link = tmp_path / "link"
    link.symlink_to(root / "inside")
    assert "lies inside the repository" in usage_error(
        root, *generate_args(paths, **{"--sweep-dir": link}))


@pytest.mark.parametrize("extra", ["--out /tmp/x", "--device=cpu", "--dev cpu", "--overwrite",
                                   "--checkpoints all", "--dry-run", "-h", "--config /tmp",
                                   "--ov"])
def test_generate_args_may_not_set_what_the_cycle_sets(paths, extra):
    message = usage_error(paths["project"], *generate_args(paths), f"--generate-args={extra}")
    assert f"--generate-args: {extra.split()[0]} is set by the cycle itself" in message


def test_generate_args_that_cannot_be_split_are_a_usage_error(paths):
    message = usage_error(paths["project"], *generate_args(paths), "--generate-args", "--negative 'x")
    assert "--generate-args: cannot split it" in message


def test_the_generate_command_is_the_one_generate_sweep_expects(paths):
    args = cycle.build_parser().parse_args(
        ["--project-root", str(paths["project"])] + [str(a) for a in generate_args(paths)]
        + ["--sweep-config", str(paths["config"]), "--generate-args", "--seeds 1,2 --steps 20"])
    command = cycle.generate_command(args, paths["project"])
    assert command == [
        cycle.sys.executable, str(paths["project"] / "tools/generate_sweep.py"),
        "--base-model", str(paths["base"]), "--lora-dir", str(paths["lora"]), "--trigger", "ohwx",
        "--out", str(paths["sweep"]), "--checkpoints", "last", "--device", "cuda",
        "--config", str(paths["config"]), "--seeds", "1,2", "--steps", "20"]
    steps = cycle.post_agent_steps(args, paths["project"], paths["project"] / "b.md")
    assert [step.name for step in steps] == ["6 promote", "7 generate", "7 scorecard"]
    assert steps[1].writes == (), "the generation may write nothing in the repository"
    assert steps[2].decide is not None and steps[2].skip_reason is None, \
        "whether to score is decided when the step comes, after the generation"


# --------------------------------------------------------------------------- end to end, tiny SDXL

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    import tiny_sdxl

    root = tmp_path_factory.mktemp("tiny_sdxl")
    built = tiny_sdxl.build_demo(root)
    prompts = root / "prompts.txt"
    prompts.write_text("{trigger} photo\n", encoding="utf-8")  # short: the tokenizer is tiny
    built["prompts"] = prompts
    return built


def tiny_flags(tiny: dict, sweep, reference) -> list:
    return ["--generate", "--base-model", tiny["single_file"], "--sweep-config", tiny["config"],
            "--lora-dir", tiny["lora_dir"], "--trigger", "ohwx", "--generate-device", "cpu",
            "--generate-args", f"--prompts {tiny['prompts']} {TINY_ARGS}",
            "--sweep-dir", sweep, "--reference-dir", reference, "--lora-version", "tiny"]


@pytest.fixture
def offline_env(tmp_path, cycle_env) -> dict:
    return dict(cycle_env, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1")


def test_dry_run_checks_the_sweep_plan_and_shows_the_generate_step(clone, offline_env, tmp_path,
                                                                  tiny):
    sweep, reference = tmp_path / "sweep", tmp_path / "reference"
    reference.mkdir()
    agent = stand_in_agent(tmp_path, "print('never runs')\n")
    completed = run_cycle(clone, "--dry-run", "--agent-cmd", agent,
                          *tiny_flags(tiny, sweep, reference), env=offline_env)
    out = completed.stdout
    assert completed.returncode == 0, out[-3000:] + completed.stderr
    assert "==> step 1 preflight (sweep plan): " in out and "--dry-run" in out
    assert "<== step 1 preflight (sweep plan): exit 0" in out
    assert "    2 images: 1 baseline + 1 from 1 checkpoint(s) (step500); base tiny_sdxl.safetensors, " \
           "nothing loaded (dry run)" in out
    assert "baseline_cfg4.0_p01_seed1.png\t" not in out, "the plan's lines go to the log only"
    log = next((clone / ".cycle-logs").glob("cycle-*.log")).read_text(encoding="utf-8")
    assert "baseline_cfg4.0_p01_seed1.png\t" in log
    assert "  7 generate: " in out and "--checkpoints last --device cpu" in out
    assert "(runs if the sweep has images newer than the last history entry once 7 generate has " \
           "run)" in out
    assert not sweep.exists(), "a dry run makes no image"
    assert git(clone, "status", "--porcelain") == ""


def test_a_bad_generate_option_stops_the_cycle_at_step_1_before_the_agent(clone, offline_env,
                                                                         tmp_path, tiny):
    reference = tmp_path / "reference"
    reference.mkdir()
    marker = tmp_path / "agent-ran"
    agent = stand_in_agent(tmp_path, f"open({str(marker)!r}, 'w').close()\n")
    flags = tiny_flags(tiny, tmp_path / "sweep", reference)
    flags[flags.index("--generate-args") + 1] = "--steps 0"
    completed = run_cycle(clone, "--agent-cmd", agent, *flags, env=offline_env)
    assert completed.returncode == 1
    assert "FAILED at step 1 preflight (sweep plan): exited with code 2" in completed.stdout
    assert "--steps 0: give 1..500" in completed.stdout
    assert not marker.exists(), "the agent never ran"
    assert len(commits(clone)) == 1


def test_a_generation_that_fails_stops_the_cycle_and_commits_nothing(clone, offline_env, tmp_path,
                                                                     tiny):
    """The agent may write outside the repository; here it breaks the newest LoRA after the plan
    check passed. generate_sweep.py exits 2 naming the file, the scorecard does not run."""
    lora_dir = tmp_path / "lora"
    shutil.copytree(tiny["lora_dir"], lora_dir)
    reference = tmp_path / "reference"
    reference.mkdir()
    agent = stand_in_agent(tmp_path, briefing_agent(
        f'open({str(lora_dir / "v3.safetensors")!r}, "wb").write(b"not a safetensors file")\n'))
    flags = tiny_flags(dict(tiny, lora_dir=lora_dir), tmp_path / "sweep", reference)
    completed = run_cycle(clone, "--agent-cmd", agent, *flags, env=offline_env)
    assert completed.returncode == 1, completed.stdout[-3000:]
    assert "FAILED at step 7 generate: exited with code 2" in completed.stdout
    assert "v3.safetensors" in completed.stdout
    assert "==> step 7 scorecard" not in completed.stdout
    assert "later steps did not run; nothing was committed" in completed.stdout
    assert len(commits(clone)) == 1


@pytest.mark.slow
def test_the_cycle_generates_scores_and_commits_only_its_own_files(clone, offline_env, tmp_path,
                                                                   tiny, faces_dir):
    sweep, reference = tmp_path / "sweep_results", tmp_path / "reference"
    reference.mkdir()
    for name in ("obama_2.jpg", "obama_3.jpg", "obama_4.jpg"):  # the skin eval needs 3+
        shutil.copy(faces_dir / "photos" / name, reference / name)
    work = add_user_work(clone)
    remote_before = git(tmp_path / "remote.git", "rev-parse", "main")
    agent = stand_in_agent(tmp_path, BRIEFING_AGENT)

    completed = run_cycle(clone, "--agent-cmd", agent, *tiny_flags(tiny, sweep, reference),
                          "--backend", "dlib", env=offline_env, timeout=1200)
    out = completed.stdout
    assert completed.returncode == 0, out[-4000:] + completed.stderr
    order = [out.index(f"<== step {name}: exit 0") for name in
             ("1 preflight (sweep plan)", "5 agent", "6 promote", "7 generate", "7 scorecard")]
    assert order == sorted(order)
    assert "step 7 scorecard runs: 2 images, no history entry yet" in out

    made = sorted(path.name for path in sweep.iterdir() if path.suffix == ".png")
    assert made == ["baseline_cfg4.0_p01_seed1.png", "step500_str1.00_cfg4.0_p01_seed1.png"]
    assert json.loads((sweep / "sweep.json").read_text(encoding="utf-8"))

    history = (clone / "evals/eval_history.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(history) == 1
    record = json.loads(history[0])
    assert record["lora_version"] == "tiny" and record["images_evaluated"] == 2

    assert len(commits(clone)) == 2, "exactly one commit by the cycle"
    subject = git(clone, "log", "-1", "--format=%s")
    assert subject.startswith(f"LifeOS cycle {today()}: briefing briefing-{today()}.md promoted; "
                              f"generated and scored sweep sweep_results as tiny"), subject
    committed = set(git(clone, "show", "--name-only", "--format=", "HEAD").split())
    owned = {f"autonomous-research/briefing-{today()}.md", "evals/eval_history.jsonl",
             "evals/latest_report.md", *cycle.PROMOTE_WRITES}
    runs = {path for path in committed if path.startswith("evals/runs/")}
    assert len(runs) == 1 and runs.pop().endswith(".json")
    assert {path for path in committed if not path.startswith("evals/runs/")} <= owned
    assert f"autonomous-research/briefing-{today()}.md" in committed
    assert "evals/eval_history.jsonl" in committed and "evals/latest_report.md" in committed
    work.assert_intact()
    leftover = git(clone, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert sorted(line[3:] for line in leftover) == sorted([*work.untracked, *work.staged]), \
        "the generation left nothing in the repository, and the rest was committed"
    assert git(tmp_path / "remote.git", "rev-parse", "main") == remote_before, "nothing pushed"
