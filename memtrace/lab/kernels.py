"""The lab's kernels: Debian's cloud flavour of 6.1 (bookworm) and 6.12 (bookworm-security).

Package versions are resolved at fetch time through the Debian meta-packages, so a new
security upload is picked up without a code change. Everything lands in one cache folder,
``$MEMTRACE_CACHE`` (default ``~/.cache/memtrace``)::

    kernels/<release>/vmlinuz        boot image
    kernels/<release>/config         kernel config
    kernels/<release>/vmlinux        DWARF + BTF, from the -dbg package
    kernels/<release>/System.map     the real one, from the -dbg package
    kernels/<release>/modules/*.ko   the few modules the guest loads, decompressed
    kernels/<release>/kernel.json    package names and versions, vmlinux build id

A kernel is fetched once: a complete ``kernel.json`` marks it done. Partial work is done in
a temporary folder and renamed into place, so an interrupted fetch leaves nothing behind.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from memtrace.errors import EnvironmentProblem, InputError
from memtrace.sources.elf import read_build_id

#: Modules the guest needs, besides what is built in: fw_cfg carries vmcoreinfo to QEMU
#: (so drgn and dump-guest-memory find the kernel), virtio-blk carries the results out.
GUEST_MODULES = ("qemu_fw_cfg", "virtio_pci", "virtio_blk")


@dataclass(frozen=True)
class KernelSeries:
    """A lab kernel series and the Debian meta-package that names its current build."""

    name: str
    meta_package: str
    suite: str


SERIES = {
    "6.1": KernelSeries("6.1", "linux-image-cloud-amd64", "bookworm"),
    "6.12": KernelSeries("6.12", "linux-image-6.12-cloud-amd64", "bookworm-security"),
}


def cache_dir() -> Path:
    """The one cache folder for downloads and builds."""
    env = os.environ.get("MEMTRACE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "memtrace"


@dataclass(frozen=True)
class Kernel:
    """A fetched lab kernel, all files local."""

    series: str
    release: str  # uname -r, e.g. 6.1.0-56-cloud-amd64
    package_version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        return self.root / "vmlinux"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def modules_dir(self) -> Path:
        return self.root / "modules"

    @property
    def build_id(self) -> str:
        return json.loads((self.root / "kernel.json").read_text())["vmlinux_build_id"]

    def module_load_order(self) -> list[str]:
        """Module file names in the order the guest must insmod them."""
        return json.loads((self.root / "kernel.json").read_text())["module_load_order"]


def series_of(name: str) -> KernelSeries:
    try:
        return SERIES[name]
    except KeyError:
        raise InputError(f"unknown kernel {name!r}; the lab has: {', '.join(SERIES)}") from None


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{cmd[0]}: not found; run scripts/setup (Debian: apt-get install apt dpkg)") from None
    except subprocess.CalledProcessError as e:
        last = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise EnvironmentProblem(f"{' '.join(cmd[:3])}: failed: {last[0]}") from None


def resolve_package(series: KernelSeries) -> tuple[str, str]:
    """Return (image package name, version) that the series' meta-package depends on now."""
    out = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", series.meta_package]).stdout
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not m:
        raise EnvironmentProblem(
            f"apt-cache does not know {series.meta_package}; run 'apt-get update' (needs {series.suite} in sources)"
        )
    package = m.group(1)
    pol = _run(["apt-cache", "policy", package]).stdout
    vm = re.search(r"Candidate:\s*(\S+)", pol)
    if not vm or vm.group(1) == "(none)":
        raise EnvironmentProblem(f"apt has no candidate for {package}; run 'apt-get update'")
    return package, vm.group(1)


def cached(series_name: str) -> Kernel | None:
    """The newest complete cached kernel of a series, or None."""
    series_of(series_name)
    found = []
    kroot = cache_dir() / "kernels"
    if kroot.is_dir():
        for d in kroot.iterdir():
            meta = d / "kernel.json"
            if meta.is_file():
                info = json.loads(meta.read_text())
                if info.get("series") == series_name:
                    found.append(Kernel(series_name, info["release"], info["package_version"], d))
    if not found:
        return None
    return sorted(found, key=lambda k: _version_key(k.package_version))[-1]


def _version_key(v: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", v)]


def _module_deps(ko: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _extract_modules(image_tree: Path, release: str, dest: Path) -> list[str]:
    """Copy GUEST_MODULES and their dependencies (decompressed) into dest; return load order."""
    moddir = image_tree / "lib" / "modules" / release
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {Path(line.strip()).name.split(".ko")[0] for line in bfile.read_text().splitlines()}
    by_name: dict[str, Path] = {}
    for p in moddir.rglob("*.ko*"):
        by_name[p.name.split(".ko")[0].replace("-", "_")] = p
    order: list[str] = []

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if f"{key}.ko" in order:
            return
        src = by_name.get(key)
        if src is None:
            if key in builtin or name in builtin:
                return
            raise EnvironmentProblem(f"kernel {release}: module {name} is neither built in nor shipped")
        data = src.read_bytes()
        if src.name.endswith(".xz"):
            data = lzma.decompress(data)
        elif src.name.endswith(".zst"):
            data = _run_bytes(["zstd", "-dc", str(src)])
        for dep in _module_deps(data):
            visit(dep)
        (dest / f"{key}.ko").write_bytes(data)
        order.append(f"{key}.ko")

    dest.mkdir(parents=True, exist_ok=True)
    for name in GUEST_MODULES:
        visit(name)
    return order


def _run_bytes(cmd: list[str]) -> bytes:
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def fetch(series_name: str, *, progress=None) -> Kernel:
    """Fetch (once) the current build of a series into the cache and return it.

    If apt cannot resolve the series (no network, no package lists) but a build is cached,
    the cached one is used.
    """
    series = series_of(series_name)
    try:
        package, version = resolve_package(series)
    except EnvironmentProblem:
        have = cached(series_name)
        if have is not None:
            return have
        raise
    release = package.removeprefix("linux-image-")
    root = cache_dir() / "kernels" / release
    if (root / "kernel.json").is_file():
        info = json.loads((root / "kernel.json").read_text())
        if info.get("package_version") == version:
            return Kernel(series_name, release, version, root)
    for tool in ("apt-get", "dpkg-deb", "tar"):
        if shutil.which(tool) is None:
            raise EnvironmentProblem(f"{tool}: not found; memtrace's kernel fetch needs Debian's apt and dpkg")
    (cache_dir() / "kernels").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir() / "kernels", prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        dl = tmp / "debs"
        dl.mkdir()
        say = progress or (lambda msg: None)
        say(f"downloading {package} and {package}-dbg {version}")
        _run(["apt-get", "download", f"{package}={version}", f"{package}-dbg={version}"], cwd=dl)
        img = next(dl.glob(f"{package}_*.deb"))
        dbg = next(dl.glob(f"{package}-dbg_*.deb"))
        tree = tmp / "image"
        _run(["dpkg-deb", "-x", str(img), str(tree)])
        out = tmp / "out"
        out.mkdir()
        shutil.copy(tree / "boot" / f"vmlinuz-{release}", out / "vmlinuz")
        shutil.copy(tree / "boot" / f"config-{release}", out / "config")
        order = _extract_modules(tree, release, out / "modules")
        say(f"extracting vmlinux from {dbg.name}")
        dbgtree = tmp / "dbg"
        dbgtree.mkdir()
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(dbg)], stdout=subprocess.PIPE)
        subprocess.run(
            ["tar", "-x", "-C", str(dbgtree), "--wildcards", "./usr/lib/debug/boot/*"],
            stdin=tar.stdout,
            check=True,
        )
        tar.stdout.close()
        tar.wait()
        boot = dbgtree / "usr" / "lib" / "debug" / "boot"
        os.replace(boot / f"vmlinux-{release}", out / "vmlinux")
        os.replace(boot / f"System.map-{release}", out / "System.map")
        info = {
            "series": series_name,
            "release": release,
            "package": package,
            "package_version": version,
            "vmlinux_build_id": read_build_id(out / "vmlinux"),
            "module_load_order": order,
        }
        (out / "kernel.json").write_text(json.dumps(info, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(out, root)
    return Kernel(series_name, release, version, root)
