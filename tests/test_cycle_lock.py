"""The cycle's lock and its process groups (tools/run_full_cycle.py): one holder always, stale and
garbage locks, a cycle killed with SIGKILL while its agent runs, an agent that leaves a child
behind, and the 50-trial race of 4 simultaneous starts on a stale lock.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, load_script
from cycle_fixtures import (add_user_work, briefing_agent, clone, commits, cycle_env,  # noqa: F401
                            run_cycle, stand_in_agent, wait_for)

LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="uses /proc and POSIX signals")


@pytest.fixture(scope="module")
def cycle():
    return load_script("tools/run_full_cycle.py")


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    if LINUX:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stale_record(pid: int | None = None, **extra) -> str:
    return json.dumps({"pid": pid or dead_pid(), "host": socket.gethostname(),
                       "started": "2026-01-01T00:00:00+00:00", **extra})


def test_one_holder_in_process_and_release_frees_it(cycle, tmp_path):
    first = cycle.CycleLock(tmp_path)
    first.acquire()
    second = cycle.CycleLock(tmp_path)
    with pytest.raises(cycle.LockBusy, match=f"another cycle is running \\(pid {os.getpid()}"):
        second.acquire()
    record = json.loads((tmp_path / ".cycle.lock").read_text())
    assert record["pid"] == os.getpid() and record["start"] == cycle.process_start_time(os.getpid())
    first.release()
    second.acquire()
    second.release()
    assert not (tmp_path / ".cycle.lock").exists() or (tmp_path / ".cycle.lock").read_text() == ""


@pytest.mark.parametrize("content", ["null", "[1, 2]", '{"pid": "abc"}', '{"pid": true}',
                                     '{"pid": -4}', "not json at all", '{"pid": 5, "agent": 7}'])
def test_garbage_lock_is_a_clear_message_with_the_command_to_clear_it(clone, cycle_env, tmp_path,
                                                                      content):
    work = add_user_work(clone)
    (clone / ".cycle.lock").write_text(content)
    agent = stand_in_agent(tmp_path, briefing_agent())
    completed = run_cycle(clone, "--agent-cmd", agent, env=cycle_env)
    assert completed.returncode == 3
    assert "holds unreadable content" in completed.stderr
    assert f"clear it with: rm {clone / '.cycle.lock'}" in completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
    assert (clone / ".cycle.lock").read_text() == content, "left for the human to look at"
    assert len(commits(clone)) == 1
    work.assert_intact()


def test_stale_lock_of_a_dead_cycle_is_taken_over(clone, cycle_env, tmp_path):
    pid = dead_pid()
    (clone / ".cycle.lock").write_text(stale_record(pid))
    agent = stand_in_agent(tmp_path, "print('never runs')\n")
    completed = run_cycle(clone, "--dry-run", "--agent-cmd", agent, env=cycle_env)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"warning: took over the lock left by pid {pid}" in completed.stdout


def test_pid_reuse_is_seen_through_the_start_time(cycle, tmp_path):
    """A record naming a live pid with another start time is stale; with its own start, held."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = cycle.process_start_time(sleeper.pid)
        if start is None:
            pytest.skip("no process start time on this platform")
        lock_file = tmp_path / ".cycle.lock"
        lock_file.write_text(stale_record(sleeper.pid, start=start + "0"))
        lock = cycle.CycleLock(tmp_path)
        lock.acquire()  # the pid was "reused": taken over
        assert lock.previous["pid"] == sleeper.pid
        lock.release()
        lock_file.write_text(stale_record(sleeper.pid, start=start))
        with pytest.raises(cycle.LockBusy, match=f"another cycle is running \\(pid {sleeper.pid}"):
            cycle.CycleLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_four_simultaneous_real_starts_on_a_stale_lock_run_exactly_one(clone, cycle_env, tmp_path):
    """Four real cycles at once; the one that gets the lock holds it (its agent waits) until the
    other three have given up."""
    work = add_user_work(clone)
    (clone / ".cycle.lock").write_text(stale_record())
    release = tmp_path / "release"
    agent = stand_in_agent(tmp_path, briefing_agent(f"""
        import time
        for _ in range(6000):
            if pathlib.Path({str(release)!r}).exists():
                break
            time.sleep(0.05)
    """))
    command = [sys.executable, str(REPO_ROOT / "tools/run_full_cycle.py"), "--project-root",
               str(clone), "--agent-cmd", agent]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=cycle_env) for _ in range(4)]
    try:
        assert wait_for(lambda: sum(process.poll() == 3 for process in processes) == 3, 300)
    finally:
        release.write_text("")
    results = [(process.wait(timeout=600), *process.communicate()) for process in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 3, 3, 3], [(code, out[-300:], err[-300:]) for code, out, err in results]
    assert sum("cycle complete" in out for _, out, _ in results) == 1
    assert len(commits(clone)) == 2, "exactly one cycle committed"
    work.assert_intact()


RACER = r'''
import importlib.util, os, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("cycle", sys.argv[1])
cycle = sys.modules["cycle"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cycle)
root, gate, index = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
(gate / f"ready-{index}").write_text("")
while not (gate / "go").exists():
    time.sleep(0.0005)
lock = cycle.CycleLock(root)
try:
    lock.acquire()
except cycle.LockBusy:
    print("BUSY", flush=True)
    sys.exit(3)
print("RAN", flush=True)
while not (gate / "release").exists():
    time.sleep(0.005)
lock.release()
'''


def race_trials(cycle_path: Path, folder: Path, trials: int, racers: int = 4) -> list[int]:
    """Run `trials` races of `racers` fresh processes taking a stale lock at the same instant;
    return how many ran in each trial."""
    script = folder / "racer.py"
    script.write_text(RACER)
    winners = []
    for trial in range(trials):
        root, gate = folder / f"trial-{trial}", folder / f"gate-{trial}"
        root.mkdir()
        gate.mkdir()
        (root / ".cycle.lock").write_text(stale_record())
        processes = [subprocess.Popen([sys.executable, str(script), str(cycle_path), str(root),
                                       str(gate), str(index)], stdout=subprocess.PIPE, text=True)
                     for index in range(racers)]
        assert wait_for(lambda: len(list(gate.glob("ready-*"))) == racers
                        or any(process.poll() is not None for process in processes), 120)
        assert all(process.poll() is None for process in processes), "a racer died before the start"
        (gate / "go").write_text("")
        outputs = []
        for process in processes:
            line = process.stdout.readline().strip()
            outputs.append(line)
            if line == "BUSY":
                process.wait(timeout=60)
        (gate / "release").write_text("")
        for process in processes:
            process.wait(timeout=60)
            process.stdout.close()
        winners.append(outputs.count("RAN"))
        assert outputs.count("RAN") + outputs.count("BUSY") == racers, outputs
    return winners


@pytest.mark.slow
def test_fifty_trials_of_four_simultaneous_starts_on_a_stale_lock(tmp_path):
    winners = race_trials(REPO_ROOT / "tools/run_full_cycle.py", tmp_path, trials=50)
    print(f"50 trials x 4 starts: winners per trial {sorted(set(winners))}, "
          f"{winners.count(1)} of 50 with exactly one")
    assert winners == [1] * 50


def test_lock_file_changed_by_the_agent_fails_step_5(clone, cycle_env, tmp_path):
    agent = stand_in_agent(tmp_path, briefing_agent("""
        lock = root / ".cycle.lock"
        lock.unlink()
        lock.write_text('{"pid": 1}')
    """))
    completed = run_cycle(clone, "--agent-cmd", agent, env=cycle_env)
    assert completed.returncode == 1
    assert "the lock file .cycle.lock was changed or removed while the agent ran" in completed.stdout
    assert len(commits(clone)) == 1


@linux_only
def test_kill_9_of_a_cycle_keeps_the_lock_while_its_agent_group_lives(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    marks = tmp_path / "marks"
    marks.mkdir()
    agent = stand_in_agent(tmp_path, f"""
        import os, pathlib, subprocess, sys, time
        marks = pathlib.Path({str(marks)!r})
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (marks / "child").write_text(str(child.pid))
        (marks / "agent").write_text(str(os.getpid()))
        time.sleep(600)
    """)
    cycle = subprocess.Popen([sys.executable, str(REPO_ROOT / "tools/run_full_cycle.py"),
                              "--project-root", str(clone), "--agent-cmd", agent],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cycle_env)
    group = None
    try:
        assert wait_for(lambda: (marks / "child").exists() and (marks / "agent").exists(), 300)
        agent_pid, child_pid = int((marks / "agent").read_text()), int((marks / "child").read_text())
        group = os.getpgid(agent_pid)
        assert group == agent_pid and group != os.getpgid(0), "the agent has its own group"
        cycle.send_signal(signal.SIGKILL)
        cycle.wait(timeout=30)
        assert wait_for(lambda: not alive(agent_pid), 10), "the agent died with its cycle"
        assert alive(child_pid), "(its child, in the agent's group, lives on)"
        probe = stand_in_agent(tmp_path, "print('never runs')\n", name="probe.py")
        second = run_cycle(clone, "--dry-run", "--agent-cmd", probe, env=cycle_env)
        assert second.returncode == 3, second.stdout + second.stderr
        assert (f"the cycle pid {cycle.pid} has died but its agent (pid {agent_pid}, process group "
                f"{group}) still runs; stop it first (kill -KILL -- -{group})") in second.stderr
        os.killpg(group, signal.SIGKILL)  # what the message says to do (our own test processes)
        assert wait_for(lambda: not alive(child_pid), 10)
        third = run_cycle(clone, "--dry-run", "--agent-cmd", probe, env=cycle_env)
        assert third.returncode == 0, third.stdout + third.stderr
        assert f"took over the lock left by pid {cycle.pid}" in third.stdout
    finally:
        if cycle.poll() is None:
            cycle.kill()
        if group is not None:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert len(commits(clone)) == 1
    work.assert_intact()


@linux_only
def test_a_child_the_agent_left_behind_is_killed_before_it_can_write(clone, cycle_env, tmp_path):
    work = add_user_work(clone)
    late = clone / "late-write.md"
    pid_file = tmp_path / "daemon.pid"
    agent = stand_in_agent(tmp_path, briefing_agent(f"""
        import subprocess, sys
        daemon = (
            "import os, sys, time\\n"
            "if os.fork(): sys.exit(0)\\n"          # double fork: the grandchild is an orphan
            "os.setsid()\\n"
            "open({str(pid_file)!r}, 'w').write(str(os.getpid()))\\n"
            "time.sleep(6)\\n"
            "open({str(late)!r}, 'w').write('written after the agent exited')\\n")
        subprocess.run([sys.executable, "-c", daemon], start_new_session=True)
        import time
        for _ in range(200):
            if pathlib.Path({str(pid_file)!r}).exists():
                break
            time.sleep(0.02)
    """))
    completed = run_cycle(clone, "--agent-cmd", agent, env=cycle_env)
    assert completed.returncode == 0, completed.stdout[-3000:]
    daemon = int(pid_file.read_text())
    assert "process(es) the step left running" in completed.stdout
    assert not alive(daemon)
    time.sleep(7)
    assert not late.exists(), "the left-behind child wrote into the repo"
    assert len(commits(clone)) == 2
    work.assert_intact()


@linux_only
def test_sigterm_to_the_cycle_kills_the_agent_group_and_commits_nothing(clone, cycle_env, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    agent = stand_in_agent(tmp_path, f"""
        import os, pathlib, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pathlib.Path({str(marks / 'pids')!r}).write_text(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(600)
    """)
    cycle = subprocess.Popen([sys.executable, str(REPO_ROOT / "tools/run_full_cycle.py"),
                              "--project-root", str(clone), "--agent-cmd", agent],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cycle_env)
    try:
        assert wait_for(lambda: (marks / "pids").exists(), 300)
        agent_pid, child_pid = map(int, (marks / "pids").read_text().split())
        cycle.send_signal(signal.SIGTERM)
        out, _ = cycle.communicate(timeout=60)
    finally:
        if cycle.poll() is None:
            cycle.kill()
    assert cycle.returncode == 1
    assert "INTERRUPTED by signal 15" in out
    assert wait_for(lambda: not alive(agent_pid) and not alive(child_pid), 10)
    assert not (clone / ".cycle.lock").exists()
    assert len(commits(clone)) == 1


def test_windows_job_limit_structure_has_the_documented_size(cycle):
    size = ctypes.sizeof(cycle.job_limit_structure())
    assert size == (144 if ctypes.sizeof(ctypes.c_void_p) == 8 else 112)


def test_process_start_time_and_pid_alive(cycle):
    me = cycle.process_start_time(os.getpid())
    if me is None:
        pytest.skip("no process start time on this platform")
    assert cycle.pid_alive(os.getpid(), me)
    assert not cycle.pid_alive(os.getpid(), me + "x"), "another start time: a reused pid"
    assert not cycle.pid_alive(dead_pid())
    assert not cycle.pid_alive(0) and not cycle.pid_alive(-1)


def test_lock_record_parser_rejects_every_odd_shape(cycle):
    assert cycle.parse_lock_record('{"pid": 12, "start": "linux:x:1", "agent": {"pid": 13}}')
    for text in ("null", "[]", "1", '"x"', '{"pid": 1.5}', '{"pid": "1"}', '{"pid": 0}',
                 '{"pid": 3, "start": 4}', '{"pid": 3, "agent": {"pid": "x"}}', "{", ""):
        assert cycle.parse_lock_record(text) is None, text
