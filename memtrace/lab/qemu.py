"""One QEMU guest: start, watch the serial console for markers, talk QMP, dump, stop.

The guest is always ended when the ``Guest`` context exits (error, Ctrl-C or normal end)
unless ``detach()`` was called (``--keep-running``). QEMU runs in a session of its own so
a terminal's Ctrl-C reaches memtrace, which then ends QEMU itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from memtrace.errors import EnvironmentProblem, GuestError, InputError

QEMU = "qemu-system-x86_64"
PANIC_RE = re.compile(r"Kernel panic - not syncing|---\[ end Kernel panic")


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise EnvironmentProblem(f"{QEMU}: not found; install Debian package qemu-system-x86 (scripts/setup does)")
    return path


#: QEMU's ``-accel`` for each lab accelerator name (both TCG: KVM guests hung on these machines).
#: ``tcg`` runs all vCPUs on one host thread. Multi-threaded TCG (``mttcg``, QEMU 7.2) oopses
#: 6.12 guests with "Oops: int3" on a text-patching site (a tracepoint's static key or static
#: call) when the site is patched while another vCPU runs through it. The stress scenario
#: tests/scenarios/text_poke_stress.sh (60 enable/disable rounds) oopsed under mttcg in 2 of 2
#: runs, a 90 s variant of it in 5 of 5 (after 20 and 30 rounds where counted); lab runs oopsed
#: about 1 in 30. Under tcg the 90 s variant ran 3 x 177-196 rounds, and the scenario runs in
#: every CI run (tests/test_lab_accel.py), without one. 6.1 ran 2 x 92 rounds under mttcg.
ACCELS = {"tcg": "tcg,thread=single", "mttcg": "tcg,thread=multi"}
DEFAULT_ACCEL = "tcg"


def accel_arg(accel: str) -> str:
    """The ``-accel`` value for a lab accelerator name (a key of ``ACCELS``)."""
    try:
        return ACCELS[accel]
    except KeyError:
        raise InputError(f"unknown accelerator {accel!r}: choose one of {', '.join(ACCELS)}") from None


#: run QEMU through util-linux's setpriv (essential in Debian) so that it gets SIGKILL when
#: this process dies (PR_SET_PDEATHSIG), without Python code between fork and exec
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


class Guest:
    """A running QEMU guest with a serial log, two QMP sockets and an output disk."""

    def __init__(
        self,
        *,
        kernel: Path,
        initrd: Path,
        rundir: Path,
        out_disk: Path,
        memory_mb: int = 512,
        cpus: int = 2,
        accel: str = DEFAULT_ACCEL,
        append: str = "",
        extra_args: tuple[str, ...] = (),
        die_with_parent: bool = True,
    ) -> None:
        #: QEMU is killed when this process dies, however it dies (SIGKILL, a SIGTERM without
        #: a handler: no `finally` runs then); not for a guest meant to outlive it
        self.die_with_parent = die_with_parent
        self.rundir = rundir
        self.serial_log = rundir / "serial.log"
        self.qmp_control = rundir / "qmp.sock"
        #: a second QMP monitor, free for drgn (QMP serves one client per socket)
        self.qmp_drgn = rundir / "qmp-drgn.sock"
        #: the guest's second serial port (ttyS1): the host's answers to the guest's requests
        #: (lib.sh vmcore_at waits on it while the host dumps)
        self.control = rundir / "ctl.sock"
        self._control_sock: socket.socket | None = None
        self.args = [
            qemu_binary(),
            "-nodefaults",
            "-display", "none",
            "-accel", accel_arg(accel),
            "-m", str(memory_mb),
            "-smp", str(cpus),
            "-kernel", str(kernel),
            "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 oops=panic no_hash_pointers {append}".strip(),
            "-no-reboot",
            "-serial", f"file:{self.serial_log}",
            "-chardev", f"socket,id=mtctl,path={self.control},server=on,wait=off",
            "-serial", "chardev:mtctl",
            "-qmp", f"unix:{self.qmp_control},server=on,wait=off",
            "-qmp", f"unix:{self.qmp_drgn},server=on,wait=off",
            "-device", "vmcoreinfo",
            # the guest finds its disks by serial (guest/lib.sh mt_disk)
            "-drive", f"file={out_disk},format=raw,if=none,id=out",
            "-device", "virtio-blk-pci,drive=out,serial=memtrace-out",
            *extra_args,
        ]
        self.proc: subprocess.Popen | None = None
        self._detached = False
        self._pos = 0
        self._log_text = ""

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> "Guest":
        self.serial_log.touch()
        self.proc = subprocess.Popen(
            [*_DIE_WITH_PARENT, *self.args] if self.die_with_parent and shutil.which(_DIE_WITH_PARENT[0]) else self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.rundir / "qemu.stderr", "wb"),
            start_new_session=True,
        )
        (self.rundir / "qemu.pid").write_text(f"{self.proc.pid}\n")
        return self

    def __exit__(self, *exc) -> None:
        if not self._detached:
            self.kill()

    def detach(self) -> int:
        """Leave the guest running after the context exits; return its pid."""
        self._detached = True
        return self.proc.pid

    def kill(self) -> None:
        if self._control_sock is not None:
            self._control_sock.close()
            self._control_sock = None
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.qmp("quit", timeout=2)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    # -- serial console ----------------------------------------------------------------
    def serial_tail(self, lines: int = 25) -> str:
        text = self.serial_log.read_text(errors="replace") if self.serial_log.exists() else ""
        tail = text.splitlines()[-lines:]
        return "serial log tail:\n" + "\n".join("  " + l for l in tail)

    def panic_tail(self, most: int = 80) -> str:
        """The console of the oops that led to the last "Kernel panic" line (the first, "[#1]",
        when several CPUs oopsed): from the oops's first line ("BUG:", "Oops:", "general protection fault", ...) through the panic, at
        most ``most`` lines (the oops header and call trace are what say why)."""
        lines = self.serial_log.read_text(errors="replace").splitlines()
        if not lines:
            return "serial log from the panic: (empty)"
        at = max((i for i, l in enumerate(lines) if "Kernel panic - not syncing" in l), default=len(lines) - 1)
        start = max(0, at - 5)
        oops = re.compile(r"\] (BUG:|Oops:|general protection fault|kernel BUG at|WARNING:|Unable to handle|stack segment)")
        for i in range(at, max(-1, at - 400), -1):
            if oops.search(lines[i]):
                start = i
                break
        # "Oops: ... [#2]": another CPU oopsed first (e.g. at the same int3 while the first was
        # dying); its oops, "[#1]", is the one that says why
        if re.search(r"\[#([2-9]|\d\d+)\]", lines[start]):
            first = next((i for i in range(start - 1, max(-1, start - 400), -1) if "[#1]" in lines[i]), None)
            start = first if first is not None else start
        shown = lines[start : at + 2]
        if len(shown) > most:  # keep the head (why) and the tail (the panic)
            shown = shown[: most - 10] + ["  ..."] + shown[-9:]
        return "serial log from the panic:\n" + "\n".join("  " + l for l in shown)

    def _read_new(self) -> str:
        with open(self.serial_log, "rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        self._pos += len(chunk)
        text = chunk.decode(errors="replace")
        self._log_text += text
        return text

    def wait_for(self, pattern: str, timeout: float, *, on_line=None) -> re.Match:
        """Wait until a console line matches ``pattern`` (anywhere in the line).

        Raises GuestError on panic, QEMU exit or timeout, with the serial log tail.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        pending = ""
        while True:
            pending += self._read_new()
            *lines, pending = pending.split("\n")
            for line in lines:
                if on_line:
                    on_line(line)
                m = rx.search(line)
                if m:
                    return m
                if PANIC_RE.search(line):
                    # let the rest of the panic message reach the log (QEMU exits on panic=-1)
                    end = time.monotonic() + 3
                    while "end Kernel panic" not in self._log_text and time.monotonic() < end:
                        time.sleep(0.1)
                        self._read_new()
                    raise GuestError("the guest kernel panicked", detail=self.panic_tail())
            if self.proc.poll() is not None:
                self._read_new()
                stderr = (self.rundir / "qemu.stderr").read_text(errors="replace").strip()
                why = f"qemu exited with status {self.proc.returncode}"
                if stderr:
                    why += f": {stderr.splitlines()[-1]}"
                raise GuestError(why, detail=self.serial_tail())
            if time.monotonic() > deadline:
                raise GuestError(f"the guest did not print {pattern!r} within {timeout:.0f} s", detail=self.serial_tail())
            time.sleep(0.1)

    # -- QMP -----------------------------------------------------------------------------
    def qmp(self, command: str, arguments: dict | None = None, *, timeout: float = 600) -> dict:
        """Run one QMP command on the control socket and return its "return" value."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.qmp_control))
            f = s.makefile("rwb")
            json.loads(f.readline())  # greeting

            def call(cmd: str, args: dict | None) -> dict:
                msg = {"execute": cmd}
                if args:
                    msg["arguments"] = args
                f.write(json.dumps(msg).encode() + b"\n")
                f.flush()
                while True:
                    line = f.readline()
                    if not line:
                        raise GuestError(f"QMP connection closed during {cmd}")
                    reply = json.loads(line)
                    if "event" in reply:
                        continue
                    if "error" in reply:
                        raise GuestError(f"QMP {cmd} failed: {reply['error'].get('desc')}")
                    return reply.get("return", {})

            call("qmp_capabilities", None)
            return call(command, arguments)

    def tell(self, line: str) -> None:
        """Write one line to the guest's second serial port (ttyS1)."""
        if self._control_sock is None:
            self._control_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._control_sock.connect(str(self.control))
        self._control_sock.sendall(line.encode() + b"\n")

    def dump_memory(self, path: Path) -> None:
        """Write an ELF vmcore of the whole guest (QMP dump-guest-memory, paging off)."""
        self.qmp("dump-guest-memory", {"paging": False, "protocol": f"file:{path}"})
        _punch_zero_pages(path)


def _punch_zero_pages(path: Path) -> None:
    """Make the all-zero blocks of a fresh vmcore holes (``fallocate --dig-holes``).

    A lab guest touches little of its memory: a 512 MiB dump allocates about 144 MiB
    afterwards, in under a second; the file reads the same. Where the filesystem or
    util-linux cannot do it, the dump stays as written."""
    fallocate = shutil.which("fallocate")
    if fallocate is not None:
        subprocess.run([fallocate, "--dig-holes", str(path)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
