"""Build the lab guest's initramfs from the host's Debian packages.

Contents: busybox-static with its applet links, bpftool (and, for the trace-cmd recorder,
trace-cmd) with the libraries ``ldd`` lists,
the static ``mapctl`` helper compiled from ``guest/mapctl.c``, the kernel's fw_cfg and
virtio modules, ``/init``, and the run's ``/memtrace`` folder (scenario, library, event
list, optional kprobe_events). Written as a gzip'd cpio "newc" archive.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
from importlib import resources
from pathlib import Path

from memtrace.errors import EnvironmentProblem
from memtrace.lab.kernels import Kernel, cache_dir

#: Host programs the guest is built from, and the Debian package that ships each.
HOST_TOOLS = {
    "busybox": ("/bin/busybox", "busybox-static"),
    "bpftool": ("/usr/sbin/bpftool", "bpftool"),
    "gcc": ("gcc", "gcc"),
    "trace-cmd": ("/usr/bin/trace-cmd", "trace-cmd"),
}

#: Recorders a lab run can use. "tracefs" (always on): the guest saves tracefs' `trace`
#: text as trace.txt. "trace-cmd": also the host's trace-cmd (with its shared libraries)
#: runs `trace-cmd record` in a tracefs instance of its own beside it, giving trace.dat.
RECORDERS = ("tracefs", "trace-cmd")
#: (trace-cmd records in its own tracefs instance, lib.sh's MT_TC_INSTANCE: the top-level
#: buffer stays trace.txt's, and a consuming trace-cmd read of it would empty trace.txt)

#: Tracepoints recorded over every lab run (those the kernel lacks are skipped and the
#: list of enabled ones lands in events-enabled.txt).
TRACE_EVENTS = (
    "kmem/kmalloc",
    "kmem/kfree",
    "kmem/kmem_cache_alloc",
    "kmem/kmem_cache_free",
    "kmem/mm_page_alloc",
    "kmem/mm_page_free",
    "percpu",
    "cgroup",
    "vmalloc",
    "memcg",
)


def guest_file(name: str) -> bytes:
    return resources.files("memtrace.lab").joinpath("guest", name).read_bytes()


def _which(tool: str) -> str:
    path, package = HOST_TOOLS[tool]
    found = shutil.which(path) if not os.path.isabs(path) else (path if os.path.exists(path) else None)
    if not found:
        raise EnvironmentProblem(f"{path}: not found; install Debian package {package} (scripts/setup does)")
    return found


def build_mapctl() -> Path:
    """Compile mapctl statically once per source version; return the binary's path."""
    src = guest_file("mapctl.c")
    out = cache_dir() / "bin" / f"mapctl-{hashlib.sha256(src).hexdigest()[:16]}"
    if out.exists():
        return out
    gcc = _which("gcc")
    out.parent.mkdir(parents=True, exist_ok=True)
    # names of this process's own: two lab runs may build the same source at once
    tmp_src = out.with_name(f"{out.name}.{os.getpid()}.c")
    tmp_src.write_bytes(src)
    tmp_out = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    r = subprocess.run([gcc, "-static", "-O2", "-Wall", "-o", str(tmp_out), str(tmp_src)], capture_output=True, text=True)
    tmp_src.unlink()
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["?"])[0]
        raise EnvironmentProblem(f"gcc could not build mapctl (need gcc and libc6-dev): {first}")
    os.replace(tmp_out, out)
    return out


def trace_cmd_events(kprobe_events: str | None = None) -> list[str]:
    """The events `memtrace probes --format trace-cmd` records, as system:event: the
    probes/*.toml tracepoints (optional ones included: the guest keeps those its kernel
    has), then the kprobe events of ``kprobe_events`` (the guest keeps those it installed)."""
    from memtrace.sources.trace.probedefs import kprobe_event_defs, load_definitions

    evs = [ev for g in load_definitions().tracepoints for ev in g.events]
    evs += [f"{group}:{name}" for group, name in kprobe_event_defs(kprobe_events, kinds="pr")]
    return list(dict.fromkeys(evs))


def _ldd(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


class Cpio:
    """A cpio newc archive, built in memory."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08x}"
            for v in (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0)
        )
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * ((4 - len(data) % 4) % 4))

    def mkdir(self, path: str) -> None:
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build(
    kernel: Kernel,
    scenario: bytes,
    dest: Path,
    *,
    kprobe_events: str | None = None,
    events: tuple[str, ...] = TRACE_EVENTS,
    extra: dict[str, bytes] | None = None,
    recorder: str = "tracefs",
    record_events: list[str] | None = None,
) -> Path:
    """Write the initramfs for one run to ``dest`` (gzip'd cpio) and return it.

    ``extra``: more files, by path in the guest (e.g. memtrace/live.sh for a live snapshot).
    ``recorder``: "trace-cmd" adds /usr/bin/trace-cmd, its libraries and the events it is to
    record (memtrace/trace-cmd.events): ``record_events`` (system:event), by default those
    `memtrace probes --format trace-cmd` records (:func:`trace_cmd_events`); see RECORDERS.
    """
    busybox = _which("busybox")
    bpftool = _which("bpftool")
    mapctl = build_mapctl()
    c = Cpio()
    for d in ("proc", "sys", "dev", "tmp", "out", "bin", "sbin", "usr/bin", "usr/sbin", "lib/modules", "memtrace"):
        c.mkdir(d)
    c.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "bin/busybox":
            c.symlink(applet, "/bin/busybox")
    libs: set[str] = set()

    def dynamic(binary: str, guest_path: str) -> None:
        """A dynamically linked host program plus its library closure (ldd: the libraries
        and the dynamic loader), each library once, at its host path and its real path."""
        c.file(guest_path, Path(binary).read_bytes(), 0o755)
        for lib in _ldd(binary):
            for path in dict.fromkeys((lib, os.path.realpath(lib))):
                if path not in libs:
                    libs.add(path)
                    c.file(path, Path(path).read_bytes(), 0o755)

    dynamic(bpftool, "usr/sbin/bpftool")
    if recorder == "trace-cmd":
        dynamic(_which("trace-cmd"), "usr/bin/trace-cmd")
        evs = record_events if record_events is not None else trace_cmd_events(kprobe_events)
        c.file("memtrace/trace-cmd.events", ("\n".join(evs) + "\n").encode())
    elif recorder != "tracefs":
        raise ValueError(f"recorder {recorder!r} not one of {RECORDERS}")
    c.file("bin/mapctl", mapctl.read_bytes(), 0o755)
    for mod in kernel.module_load_order():
        c.file(f"lib/modules/{mod}", (kernel.modules_dir / mod).read_bytes())
    c.file("memtrace/modules.load", "\n".join(kernel.module_load_order()).encode() + b"\n")
    c.file("init", guest_file("init"), 0o755)
    c.file("memtrace/lib.sh", guest_file("lib.sh"))
    c.file("memtrace/scenario.sh", scenario, 0o755)
    c.file("memtrace/events.list", ("\n".join(events) + "\n").encode())
    c.file("memtrace/kprobe_events", (kprobe_events or "").encode())
    for path, data in (extra or {}).items():
        c.file(path, data, 0o755 if path.endswith(".sh") else 0o644)
    data = gzip.compress(c.finish(), compresslevel=1)
    dest.write_bytes(data)
    return dest
