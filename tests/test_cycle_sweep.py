"""The cycle's sweep steps: the "new images in the sweep" check that decides whether step 7
scorecard runs."""
from __future__ import annotations

import datetime as dt
import json
import os

from conftest import load_script
from cycle_fixtures import clone, cycle_env, git, run_cycle, stand_in_agent  # noqa: F401

cycle = load_script("tools/run_full_cycle.py")


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
