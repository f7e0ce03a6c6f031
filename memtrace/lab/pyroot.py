"""A Python root for the lab guest, so ``memtrace snapshot --live`` runs inside it.

The lab kernels have no 9p, so the host's Python cannot be shared into the guest. Instead
this module builds an ext4 disk image (``mke2fs -d``; ext4 is built into both lab kernels)
holding everything ``python -m memtrace snapshot --live`` needs, each file at its host
absolute path, so the guest mounts it, ``chroot``s into it and runs the very same
interpreter, packages and memtrace source without any path rewriting:

* the interpreter (``sys.executable`` and its symlink chain) and the standard library,
  without ``test``, ``idlelib``, ``tkinter``, ``turtledemo``, ``ensurepip``, ``lib2to3``
  and the static-library ``config-*`` folder;
* the site-packages of memtrace's requirement closure (from ``importlib.metadata``; the
  files each distribution's RECORD lists, without ``tests`` folders), and memtrace's own
  package folder as it is (for an editable install, the checkout's ``memtrace/``; the
  guest puts its parent on ``PYTHONPATH``);
* every shared library ``ldd`` lists for the interpreter and for each copied ``.so``
  (the dynamic loader included), with the host's symlinks (``/lib -> usr/lib``, ...);
* byte code for every ``.py`` (the host's ``__pycache__`` where current, compiled here
  otherwise), since the image is mounted read-only;
* the kernel's ``vmlinux`` (drgn needs its DWARF in the guest), at its cache path.

Images are cached as ``<cache>/pyroot/<kernel release>-<key>.ext4`` where the key hashes
the interpreter version, every closure package's version, memtrace's source tree, the
kernel's build id and this module's format number: an image is rebuilt only when one of
those changes, built in a temporary folder and renamed into place, and older images of
the same release are removed. A ``.json`` next to each image records what went in.

In the guest the image is the virtio disk with serial ``memtrace-pyroot`` (QEMU attaches
it read-only; see ``qemu_args``); ``guest/live.sh`` mounts it at ``/mnt/pyroot``. Such a
guest runs with ``-cpu max``: numpy 2 and pyarrow need x86-64-v2, which QEMU's default
TCG CPU lacks. Measured on the lab kernels (2 vCPU TCG): the image is 0.7 GiB (6.12) and
0.9 GiB (6.1) allocated, built in 6-15 s; the in-guest ``snapshot --live`` takes 17-25 s,
of which ~9 s import pandas/pyarrow and the CLI, ~5 s drgn's load of vmlinux (cold) and
1-2 s the walk; the Python process peaks at 0.55-0.65 GB, hence ``MIN_MEMORY_MB``.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from pathlib import Path

from memtrace.errors import EnvironmentProblem
from memtrace.lab.kernels import Kernel, cache_dir

#: bump when the image layout changes, so cached images are rebuilt
FORMAT = 1
#: an image of the same kernel not used for this long is removed when a new one is built
PRUNE_AFTER_S = 600
#: virtio serial of the image's disk, for the guest to find it by (guest/lib.sh mt_disk)
SERIAL = "memtrace-pyroot"
#: where the guest mounts the image
GUEST_MOUNT = "/mnt/pyroot"
#: guest memory a live snapshot needs: drgn's DWARF index of vmlinux plus pandas/pyarrow
MIN_MEMORY_MB = 2048
#: standard-library folders the guest never imports
STDLIB_PRUNE = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages", "dist-packages"}
#: mount points and scratch folders made in the image
#: mount points the guest needs in the image. The chroot's scratch space is a tmpfs on
#: /mt-tmp, not on /tmp: host files staged under /tmp (a checkout or venv there) stay visible
GUEST_DIRS = ("proc", "sys", "dev", "tmp", "out", "mt-tmp")
#: the mke2fs of e2fsprogs and the Debian package that ships it
MKE2FS = ("mke2fs", "e2fsprogs")


# -- what goes in --------------------------------------------------------------------------


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    """Names of ``dist``'s unconditional requirements (markers evaluated, no extras)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement
    names = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        names.append(req.name)
    return names


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "memtrace") -> dict[str, metadata.Distribution]:
    """The installed distributions ``root`` needs, itself included, by normalised name."""
    found: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if _norm(name) in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise EnvironmentProblem(
                f"Python package {name} (needed by {root}) is not installed; run scripts/setup"
            ) from None
        found[_norm(name)] = dist
        todo += _requirement_names(dist)
    return dict(sorted(found.items()))


def package_dir() -> Path:
    """memtrace's own package folder (the source tree of an editable install)."""
    import memtrace

    return Path(memtrace.__file__).resolve().parent


def probes_dir() -> Path:
    """The probe definitions `memtrace capture` reads (memtrace.sources.trace.probedefs)."""
    from memtrace.sources.trace.probedefs import definitions_dir

    return definitions_dir()


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts or not p.is_file():
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def inputs(kernel: Kernel) -> dict:
    """Everything the image's content depends on (hashed into its cache key)."""
    return {
        "format": FORMAT,
        "python": sys.version,
        "executable": sys.executable,
        "packages": {n: d.version for n, d in closure().items()},
        "memtrace_tree": _tree_hash(package_dir()),
        "probes_tree": _tree_hash(probes_dir()),
        # files sit at their host paths: the same tree in another checkout is another image
        "memtrace_dir": str(package_dir()),
        "kernel_release": kernel.release,
        "vmlinux_build_id": kernel.build_id,
        "vmlinux": str(kernel.vmlinux),
    }


def image_path(kernel: Kernel, info: dict | None = None) -> Path:
    info = info or inputs(kernel)
    key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "pyroot" / f"{kernel.release}-{key}.ext4"


def _site_files(dists: dict[str, metadata.Distribution]) -> list[Path]:
    files = []
    for dist in dists.values():
        base = Path(dist.locate_file("")).resolve()
        for f in dist.files or []:
            p = Path(os.path.normpath(dist.locate_file(f)))
            if p.suffix == ".pyc" or "__pycache__" in p.parts:
                continue  # byte code is added per source file below
            try:
                rel = p.relative_to(base)
            except ValueError:
                continue  # console scripts in bin/ and the like
            if "tests" in rel.parts[:-1]:
                continue
            if p.is_file() or p.is_symlink():
                files.append(p)
    return files


def _stdlib_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    prune = STDLIB_PRUNE | {Path(sysconfig.get_config_var("LIBPL") or "config").name}
    files = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not (here == stdlib and d in prune) and d != "__pycache__"]
        for f in filenames:
            if f.startswith(("_tkinter", "_test", "_xxtest")) and here.name == "lib-dynload":
                continue
            files.append(here / f)
    return files


def _ldd(paths: list[Path]) -> tuple[set[str], set[str]]:
    """Libraries ``ldd`` finds for ``paths`` (and, separately, the names it could not)."""
    libs: set[str] = set()
    missing: set[str] = set()
    for i in range(0, len(paths), 200):
        r = subprocess.run(["ldd", *map(str, paths[i : i + 200])], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            m = re.search(r"=>\s+(/\S+)\s+\(0x", line) or re.match(r"\s+(/\S+)\s+\(0x", line)
            if m:
                libs.add(m.group(1))
            elif "not found" in line:
                missing.add(line.split("=>")[0].strip())
    return libs, missing


# -- staging -----------------------------------------------------------------------------


class _Stage:
    """A folder that mirrors chosen host paths, symlinks along the way included."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: set[str] = set()
        self.bytes = 0
        self.files = 0

    def _dst(self, host: str) -> Path:
        return self.root / host.lstrip("/")

    def add(self, host: str | os.PathLike) -> None:
        host = os.path.normpath(os.path.abspath(host))
        if host in self.done:
            return
        parts = host.split("/")[1:]
        cur = ""
        for i, part in enumerate(parts):
            cur = f"{cur}/{part}"
            if os.path.islink(cur):
                dst = self._dst(cur)
                if cur not in self.done:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if not os.path.lexists(dst):
                        os.symlink(os.readlink(cur), dst)
                    self.done.add(cur)
                target = os.path.join(os.path.dirname(cur), os.readlink(cur))
                self.add(os.path.join(target, *parts[i + 1 :]) if parts[i + 1 :] else target)
                self.done.add(host)
                return
        dst = self._dst(host)
        if os.path.isdir(host):
            dst.mkdir(parents=True, exist_ok=True)
        elif os.path.isfile(host):
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(host, dst)  # same file system: free; else a copy
            except OSError:
                shutil.copy2(host, dst)
            self.bytes += os.path.getsize(host)
            self.files += 1
        self.done.add(host)

    def add_pyc(self, src: Path) -> None:
        """The host's byte code for ``src`` if it is there (checked later by compileall)."""
        tag = sys.implementation.cache_tag
        pyc = src.parent / "__pycache__" / f"{src.stem}.{tag}.pyc"
        if pyc.is_file():
            self.add(pyc)


# -- building ----------------------------------------------------------------------------


def build(kernel: Kernel, *, progress=None) -> Path:
    """Return the cached image for ``kernel``, building it first if needed."""
    say = progress or (lambda msg: None)
    info = inputs(kernel)
    dest = image_path(kernel, info)
    if dest.is_file() and dest.with_suffix(".json").is_file():
        os.utime(dest.with_suffix(".json"))  # in use: see the pruning below
        return dest
    mke2fs = shutil.which(MKE2FS[0]) or (f"/sbin/{MKE2FS[0]}" if os.path.exists(f"/sbin/{MKE2FS[0]}") else None)
    if mke2fs is None:
        raise EnvironmentProblem(f"{MKE2FS[0]}: not found; install Debian package {MKE2FS[1]} (scripts/setup does)")
    if not kernel.vmlinux.is_file():
        raise EnvironmentProblem(f"{kernel.vmlinux}: missing; run 'memtrace lab kernels --fetch'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    say(f"building the guest's Python image for {kernel.release} (once per memtrace/package change)")
    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".build-") as tmp:
        stage = _Stage(Path(tmp) / "root")
        stage.root.mkdir(mode=0o755)
        for d in GUEST_DIRS:
            (stage.root / d).mkdir()
        os.chmod(stage.root / "tmp", 0o1777)
        dists = closure()
        sources: list[Path] = []
        exe = Path(sys.executable)
        stage.add(exe)
        stage.add(os.path.realpath(exe))
        if sys.prefix != sys.base_prefix and (Path(sys.prefix) / "pyvenv.cfg").is_file():
            stage.add(Path(sys.prefix) / "pyvenv.cfg")
        # memtrace itself: its package folder below (its metadata may be a checkout's egg-info)
        deps = {n: d for n, d in dists.items() if n != "memtrace"}
        for group in (_stdlib_files(), _site_files(deps)):
            for f in group:
                stage.add(f)
                if f.suffix == ".py":
                    sources.append(f)
        pkg = package_dir()
        for f in pkg.rglob("*"):
            if "__pycache__" not in f.parts and f.is_file():
                stage.add(f)
                if f.suffix == ".py":
                    sources.append(f)
        for f in sorted(probes_dir().glob("*.toml")):  # `memtrace capture` in the guest reads them
            stage.add(f)
        for f in sources:
            stage.add_pyc(f)
        # shared libraries: for the interpreter and every extension module copied
        objects = [Path(os.path.realpath(exe))] + [
            Path(p)
            for p in stage.done
            if re.search(r"\.so(\.[0-9.]+)?$", p) and os.path.isfile(p) and not os.path.islink(p)
        ]
        libs, missing = _ldd(objects)
        for lib in sorted(libs):
            stage.add(lib)
            stage.add(os.path.realpath(lib))
        stage.add(kernel.vmlinux)
        t_stage = time.time()
        # byte code for sources the host never imported; embedded paths are the host's
        compiled = 0
        for top in {Path(sysconfig.get_paths()["stdlib"]), *{Path(d.locate_file("")).resolve() for d in deps.values()}, pkg}:
            staged = stage.root / str(top).lstrip("/")
            if staged.is_dir():
                compiled += 1
                compileall.compile_dir(
                    staged, quiet=2, workers=0, stripdir=str(stage.root), prependdir="/", legacy=False
                )
        t_compile = time.time()
        manifest = {
            "inputs": info,
            "files": stage.files,
            "bytes": stage.bytes,
            "libraries": sorted(libs),
            "libraries_not_found": sorted(missing),
        }
        (stage.root / "memtrace-pyroot.json").write_text(json.dumps(manifest, indent=1) + "\n")
        used = sum(f.stat().st_size for f in stage.root.rglob("*") if f.is_file() and not f.is_symlink())
        size_mb = int(used * 1.15 / 2**20) + 128
        img = Path(tmp) / "image.ext4"
        r = subprocess.run(
            [mke2fs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-L", "memtrace-py",
             "-E", "root_owner=0:0", "-d", str(stage.root), str(img), f"{size_mb}M"],
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise EnvironmentProblem(f"mke2fs could not build the guest's Python image: {last}")
        t_mkfs = time.time()
        manifest.update(
            image=dest.name,
            image_bytes=size_mb << 20,
            image_allocated_bytes=img.stat().st_blocks * 512,
            timings={
                "stage_s": round(t_stage - t0, 2),
                "compile_s": round(t_compile - t_stage, 2),
                "mke2fs_s": round(t_mkfs - t_compile, 2),
                "total_s": round(t_mkfs - t0, 2),
            },
        )
        # older images of this kernel go (0.7-0.9 GB each; a day of commits left 11 GB), but
        # not one used in the last PRUNE_AFTER_S: another checkout's test session may be
        # about to boot a guest on it (its key holds its own path). A guest already running
        # holds its image open, so removing the name does not disturb it.
        for old in dest.parent.glob(f"{kernel.release}-*.ext4"):
            side_old = old.with_suffix(".json")
            try:
                recent = time.time() - side_old.stat().st_mtime < PRUNE_AFTER_S
            except OSError:
                recent = False
            if old != dest and not recent:
                old.unlink(missing_ok=True)
                side_old.unlink(missing_ok=True)
        os.replace(img, dest)
        side = Path(tmp) / "image.json"
        side.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(side, dest.with_suffix(".json"))
    say(f"guest Python image: {dest} ({manifest['image_allocated_bytes'] / 2**20:.0f} MiB in {manifest['timings']['total_s']} s)")
    return dest


def manifest(image: Path) -> dict:
    """What went into ``image`` and how long building it took."""
    return json.loads(image.with_suffix(".json").read_text())


# -- the guest side ----------------------------------------------------------------------


def qemu_args(image: Path) -> tuple[str, ...]:
    """QEMU arguments attaching ``image`` read-only (shareable between guests) as a virtio
    disk with serial ``SERIAL``."""
    return ("-drive", f"file={image},format=raw,if=none,id=pyroot,readonly=on",
            "-device", f"virtio-blk-pci,drive=pyroot,serial={SERIAL}",
            # numpy >= 2 (and pyarrow) need x86-64-v2; QEMU's default TCG CPU (qemu64)
            # lacks SSE4.2/POPCNT and the interpreter dies of SIGILL importing them
            "-cpu", "max")


def _guest_path() -> list[str]:
    """PYTHONPATH for the guest: memtrace's parent folder, then every site folder the
    requirement closure was installed into (so a venv's packages are found without it)."""
    paths = [str(package_dir().parent)]
    for name, dist in closure().items():
        if name != "memtrace":
            site = str(Path(dist.locate_file("")).resolve())
            if site not in paths:
                paths.append(site)
    return paths


def guest_env(kernel: Kernel) -> str:
    """``/memtrace/live.env``: what ``guest/live.sh`` runs, as shell assignments."""
    env = {
        "MT_PYROOT_SERIAL": SERIAL,
        "MT_PYROOT": GUEST_MOUNT,
        # the real interpreter, not a venv's symlink to it (a venv's bin/ may sit where the
        # guest mounts something else, e.g. /tmp); the venv's own site-packages, if any, are
        # passed on PYTHONPATH instead
        "MT_PY": os.path.realpath(sys.executable),
        "MT_PYTHONPATH": ":".join(_guest_path()),
        "MT_VMLINUX": str(kernel.vmlinux),
    }
    for v in env.values():
        if "'" in v:
            raise EnvironmentProblem(f"{v!r}: a path with a quote cannot be passed to the guest")
    return "".join(f"{k}='{v}'\n" for k, v in env.items())


#: files guest/live.sh leaves in /out, moved into the run folder
LIVE_FILES = ("live-snapshot.json", "live-snapshot.err", "live.snapshot", "live-nonroot.err", "live-snapshot.txt")


def prepare(kernel: Kernel, *, progress=None) -> tuple[dict[str, bytes], tuple[str, ...], Path]:
    """For a run with a live snapshot: (initramfs extra files, QEMU arguments, image)."""
    from memtrace.lab.initramfs import guest_file

    image = build(kernel, progress=progress)
    extra = {"memtrace/live.sh": guest_file("live.sh"), "memtrace/live-lib.sh": guest_file("live-lib.sh"),
             "memtrace/live.env": guest_env(kernel).encode()}
    return extra, qemu_args(image), image


def collect(guest_out: Path, dest: Path, image: Path) -> dict:
    """Move what guest/live.sh left in ``guest_out`` to ``dest``; return its meta.json entry.

    GuestError if the live snapshot did not run or failed (exit status other than 0, or
    5 = incomplete walk, which is reported, not raised: a live kernel may change under it).
    """
    from memtrace.errors import GuestError

    kv: dict[str, str] = {}
    txt = guest_out / "live-snapshot.txt"
    if txt.exists():
        kv = dict(line.split("=", 1) for line in txt.read_text().splitlines() if "=" in line)
    for name in LIVE_FILES:
        if (guest_out / name).exists():
            os.replace(guest_out / name, dest / name)
    (guest_out / "live-nonroot.out").unlink(missing_ok=True)
    rc = kv.get("rc")
    if rc is None or not rc.isdigit() or int(rc) not in (0, 5):
        err = dest / "live-snapshot.err"
        tail = err.read_text(errors="replace").splitlines()[-15:] if err.exists() else []
        raise GuestError(
            f"memtrace snapshot --live failed in the guest (status {rc or 'none: it did not run'})",
            detail="its stderr tail:\n" + "\n".join("  " + l for l in tail) if tail else None,
        )

    def f(k: str) -> float | None:
        try:
            return float(kv[k])
        except (KeyError, ValueError):
            return None

    start, end, nr_end = f("start"), f("end"), f("nonroot_end")
    m = manifest(image)
    return {
        "exit_status": int(rc),
        "nonroot_exit_status": int(kv["nonroot_rc"]) if kv.get("nonroot_rc", "").isdigit() else None,
        "guest_device": kv.get("device"),
        "uptime_start_s": start,
        "wall_s": round(end - start, 3) if start is not None and end is not None else None,
        "nonroot_wall_s": round(nr_end - end, 3) if end is not None and nr_end is not None else None,
        "image": str(image),
        "image_allocated_bytes": m.get("image_allocated_bytes"),
        "image_build_s": m.get("timings", {}).get("total_s"),
    }
