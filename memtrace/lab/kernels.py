"""The lab's kernels: Debian's cloud flavour of 6.1 and 6.12, pinned builds.

Which builds the lab boots is data, in ``kernels.toml`` beside this file: each series
(6.1, 6.12) names a pinned build, and ``--kernel 6.12`` means that build, whatever Debian
has published since. ``--kernel 6.12.118`` names another listed build; ``--kernel
6.12@latest`` is the build the series' meta-package depends on when fetched (the drift
track, ``memtrace lab drift``). A pinned build Debian no longer serves fails the fetch,
naming the newest; nothing switches silently. Everything lands in one cache folder,
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
import tomllib
from dataclasses import dataclass
from pathlib import Path

from memtrace.errors import EnvironmentProblem, InputError
from memtrace.sources.elf import read_build_id

#: Modules the guest needs, besides what is built in: fw_cfg carries vmcoreinfo to QEMU
#: (so drgn and dump-guest-memory find the kernel), virtio-blk carries the results out.
GUEST_MODULES = ("qemu_fw_cfg", "virtio_pci", "virtio_blk")

#: The suffix of a kernel name that means "the series' newest build, resolved now".
LATEST = "@latest"

#: The pins; ``$MEMTRACE_KERNELS_TOML`` names another file of the same form (your own builds).
PINS_FILE = Path(os.environ.get("MEMTRACE_KERNELS_TOML") or Path(__file__).with_name("kernels.toml"))


@dataclass(frozen=True)
class KernelSeries:
    """A lab kernel series: the meta-package that names its newest build, and its pin."""

    name: str
    meta_package: str
    suite: str
    pinned: str  # a key of BUILDS
    pinned_on: str  # ISO date


@dataclass(frozen=True)
class Build:
    """One Debian kernel build: image package (its -dbg package adds ``-dbg``) and version."""

    name: str
    series: str
    package: str
    version: str

    @property
    def release(self) -> str:
        """``uname -r`` of the build, e.g. 6.1.0-56-cloud-amd64."""
        return self.package.removeprefix("linux-image-")


def _load_pins() -> tuple[dict[str, KernelSeries], dict[str, Build]]:
    try:
        data = tomllib.loads(PINS_FILE.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{PINS_FILE}: cannot read the lab's kernel pins: {e}") from None
    try:
        builds = {n: Build(n, b["series"], b["package"], b["version"]) for n, b in data["builds"].items()}
        series = {
            n: KernelSeries(n, s["meta_package"], s["suite"], s["pinned"], str(s["pinned_on"]))
            for n, s in data["series"].items()
        }
        for s in series.values():
            if builds[s.pinned].series != s.name:
                raise InputError(f"{PINS_FILE}: the pin of {s.name} is a {builds[s.pinned].series} build")
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{PINS_FILE}: not a kernel pins file: missing or wrong {e}") from None
    return series, builds


SERIES, BUILDS = _load_pins()


def kernel_names() -> list[str]:
    """Every name ``--kernel`` takes: series (their pinned build), builds, SERIES@latest."""
    return [*SERIES, *BUILDS, *(f"{s}{LATEST}" for s in SERIES)]


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
    """The series of a kernel name (a series, a build, or SERIES@latest)."""
    if name in SERIES:
        return SERIES[name]
    if name in BUILDS:
        return SERIES[BUILDS[name].series]
    if name.endswith(LATEST) and name.removesuffix(LATEST) in SERIES:
        return SERIES[name.removesuffix(LATEST)]
    raise InputError(f"unknown kernel {name!r}; the lab has: {', '.join(kernel_names())}")


def build_of(name: str) -> Build | None:
    """The listed build a kernel name means (a series means its pin); None for SERIES@latest."""
    series = series_of(name)
    if name in BUILDS:
        return BUILDS[name]
    return None if name.endswith(LATEST) else BUILDS[series.pinned]


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
    versions = apt_versions(package)
    if not versions:
        raise EnvironmentProblem(f"apt has no candidate for {package}; run 'apt-get update'")
    return package, versions[0]


def apt_versions(package: str) -> list[str]:
    """Versions of ``package`` in apt's lists, newest first (empty when apt does not know it)."""
    pol = _run(["apt-cache", "policy", package]).stdout
    table = pol.split("Version table:", 1)[1] if "Version table:" in pol else ""
    vs = re.findall(r"^\s+(?:\*\*\*\s+)?(\S+)\s+-?\d+\s*$", table, re.M)
    return sorted(set(vs), key=_version_key, reverse=True)


def _read_cache(root: Path) -> dict | None:
    meta = root / "kernel.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


def cached(name: str) -> Kernel | None:
    """The cached kernel a name means, or None. A series or build name matches only its
    exact build and version; SERIES@latest, the newest cached build of the series."""
    series = series_of(name)
    build = build_of(name)
    kroot = cache_dir() / "kernels"
    if build is not None:
        info = _read_cache(kroot / build.release)
        if info and info.get("package_version") == build.version:
            return Kernel(series.name, build.release, build.version, kroot / build.release)
        return None
    found = []
    if kroot.is_dir():
        for d in kroot.iterdir():
            info = _read_cache(d)
            if info and info.get("series") == series.name:
                found.append(Kernel(series.name, info["release"], info["package_version"], d))
    return max(found, key=lambda k: _version_key(k.package_version)) if found else None


def _version_key(v: str) -> list:
    """Sort key of a Debian version: numeric parts as numbers, others as text (never compared
    with each other, so differently shaped versions still sort)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+~]", v)]


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


def fetch(name: str, *, progress=None) -> Kernel:
    """Fetch (once) the build a kernel name means into the cache and return it.

    A series or build name fetches exactly its listed build; when apt no longer lists that
    version the fetch fails naming the newest build (never another build in its place).
    SERIES@latest resolves the meta-package now; if apt cannot (no lists), the newest
    cached build of the series is used.
    """
    series = series_of(name)
    build = build_of(name)
    if build is not None:
        have = cached(name)
        if have is not None:
            return have
        package, version = build.package, build.version
        known = apt_versions(package)
        if version not in known:
            try:
                newest = " ".join(resolve_package(series))
            except EnvironmentProblem:
                newest = "unknown (apt-cache does not know the meta-package; run 'apt-get update')"
            raise EnvironmentProblem(
                f"kernel {name}: pinned build {package} {version} is not in apt's lists "
                f"({'versions listed: ' + ', '.join(known) if known else 'run apt-get update, or Debian no longer serves it'}); "
                f"newest {series.name} build: {newest}. Run 'memtrace lab drift --kernel {series.name}' and "
                f"move the pin in {PINS_FILE.name}"
            )
    else:
        try:
            package, version = resolve_package(series)
        except EnvironmentProblem:
            have = cached(name)
            if have is not None:
                return have
            raise
    release = package.removeprefix("linux-image-")
    root = cache_dir() / "kernels" / release
    info = _read_cache(root)
    if info and info.get("package_version") == version:
        return Kernel(series.name, release, version, root)
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
            "series": series.name,
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
    return Kernel(series.name, release, version, root)
