"""The lab's command line on bad input: one-line errors, documented exit codes, no QEMU
left running, no half-written output folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

MEMTRACE = [sys.executable, "-m", "memtrace"]


def run_cli(args, *, env=None, timeout=300):
    return subprocess.run(MEMTRACE + args, capture_output=True, text=True, env=env, timeout=timeout)


def one_line_error(proc) -> str:
    errors = [l for l in proc.stderr.splitlines() if l.startswith("memtrace: error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


@pytest.fixture
def short_tmp():
    """A short TMPDIR (QMP socket paths must fit in 108 bytes) unique to the test, so that
    any QEMU the test started can be found by its command line."""
    d = tempfile.mkdtemp(prefix="mt-test-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def qemu_left(tag: Path) -> list[str]:
    ps = subprocess.run(["pgrep", "-af", "qemu-system-x86_64"], capture_output=True, text=True).stdout
    return [l for l in ps.splitlines() if str(tag) in l]


def wait_for_first_step(proc: subprocess.Popen) -> None:
    """Read the lab run's progress on stderr until its first step (at most 180 s)."""
    seen = ""
    deadline = time.monotonic() + 180
    while "step 001 before" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert "step 001 before" in seen, seen


def no_output(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-")]


def test_unknown_scenario(tmp_path):
    p = run_cli(["lab", "run", "no-such-scenario", "--out", str(tmp_path / "o")])
    assert p.returncode == 2
    line = one_line_error(p)
    assert "no-such-scenario" in line and "restart" in line
    no_output(tmp_path / "o")


def test_unknown_kernel(tmp_path):
    p = run_cli(["lab", "run", "restart", "--kernel", "5.99", "--out", str(tmp_path / "o")])
    assert p.returncode == 2
    assert "5.99" in one_line_error(p)


def test_binary_scenario_file(tmp_path):
    f = tmp_path / "bad.sh"
    f.write_bytes(b"\x7fELF\0\0")
    p = run_cli(["lab", "run", str(f), "--out", str(tmp_path / "o")])
    assert p.returncode == 2
    assert str(f) in one_line_error(p)


def test_nonempty_out_refused(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    p = run_cli(["lab", "run", "restart", "--out", str(tmp_path / "o")])
    assert p.returncode == 2
    assert "--force" in one_line_error(p)
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


def test_missing_qemu_names_the_package(tmp_path):
    env = dict(os.environ, PATH="/nonexistent")
    p = run_cli(["lab", "run", "restart", "--out", str(tmp_path / "o")], env=env)
    assert p.returncode == 3
    assert "qemu-system-x86" in one_line_error(p)
    no_output(tmp_path / "o")


def failing_guest(tmp_path: Path, short_tmp: Path, script: str, *extra: str) -> tuple[str, str]:
    """Run a scenario that must fail in the guest; return (error line, stderr) after
    checking the exit code, that no QEMU is left and that no output folder was made."""
    sc = tmp_path / "scenario.sh"
    sc.write_text(script)
    out = tmp_path / "o"
    p = run_cli(["lab", "run", str(sc), "--out", str(out), *extra], env=dict(os.environ, TMPDIR=str(short_tmp)))
    assert p.returncode == 4, p.stderr
    line = one_line_error(p)
    assert qemu_left(short_tmp) == []
    no_output(out)
    return line, p.stderr


@pytest.mark.lab
def test_guest_panic_shows_serial_tail(tmp_path, short_tmp):
    line, stderr = failing_guest(tmp_path, short_tmp, "step before\necho c > /proc/sysrq-trigger\n")
    assert "panicked" in line
    assert "serial log from the panic" in stderr and "Kernel panic - not syncing" in stderr
    assert "sysrq" in stderr.lower()  # the cause, just above the panic line


@pytest.mark.lab
def test_hung_guest_times_out(tmp_path, short_tmp):
    line, stderr = failing_guest(tmp_path, short_tmp, "step before\nsleep 600\n", "--timeout", "20")
    assert "within 20 s" in line
    assert "serial log tail" in stderr


@pytest.mark.lab
def test_failing_scenario_shows_its_log(tmp_path, short_tmp):
    script = "step before\necho 'about to fail' >&2\nmapctl fill /sys/fs/bpf/none 1\n"
    line, stderr = failing_guest(tmp_path, short_tmp, script)
    assert "failed in the guest" in line
    assert "cannot open pinned map /sys/fs/bpf/none" in stderr


@pytest.mark.lab
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_the_guest(tmp_path, short_tmp, sig):
    sc = tmp_path / "slow.sh"
    sc.write_text("step before\nsleep 600\n")
    out = tmp_path / "o"
    proc = subprocess.Popen(
        MEMTRACE + ["lab", "run", str(sc), "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TMPDIR=str(short_tmp)),
    )
    wait_for_first_step(proc)
    assert qemu_left(short_tmp), "the guest should be running now"
    proc.send_signal(sig)
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 130
    assert "memtrace: interrupted" in rest and "Traceback" not in rest
    assert qemu_left(short_tmp) == []
    no_output(out)


@pytest.mark.lab
def test_a_killed_caller_takes_its_guest_with_it(tmp_path, short_tmp):
    """memtrace.lab.run.run() from a script that is killed outright (SIGKILL: no handler, no
    `finally`): QEMU dies with it (PR_SET_PDEATHSIG) instead of running on."""
    sc = tmp_path / "slow.sh"
    sc.write_text("step before\nsleep 600\n")
    code = ("import sys; from memtrace.lab.run import run; "
            "run(sys.argv[1], '6.1', __import__('pathlib').Path(sys.argv[2]), vmcore=False, "
            "progress=lambda m: print(m, file=sys.stderr, flush=True))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(sc), str(tmp_path / "o")], stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, TMPDIR=str(short_tmp)))
    wait_for_first_step(proc)
    assert qemu_left(short_tmp), "the guest should be running now"
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while qemu_left(short_tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert qemu_left(short_tmp) == []
