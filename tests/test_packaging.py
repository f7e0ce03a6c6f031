"""A wheel of the checkout works on its own (issue 9): built with pip, installed into a fresh
venv, run from outside the repo so that `import memtrace` finds the wheel's copy, not the
checkout (nor the checkout's editable install).

What a wheel alone must carry: the probe definitions (package data, `memtrace/probes/*.toml`,
read by `memtrace probes` and `memtrace capture`), the compiled ftrace scanner (`memtrace ingest`
of text), and the console script. The test-and-bench helpers (`memtrace.testing`) stay out.

The venv sees the system's site-packages (drgn, pandas, pyarrow, perfetto, typer), so nothing is
downloaded but what pip's build isolation needs (setuptools, per pyproject's build-system).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "fixtures" / "captures" / "force-6.1.page_counter.txt"
SYS_BTF = Path("/sys/kernel/btf/vmlinux")
#: what the build reads: the rest of the checkout (lab output, .git) is neither copied nor read
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "memtrace")


def _run(cmd, *, cwd, env, timeout=120):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _small_btf(path: Path) -> Path:
    """The smallest valid BTF (one 4-byte int): `memtrace probes --btf` accepts it and reports
    every definition as skipped, which still needs the definitions."""
    types = struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", 32)  # INT "int", size 4, 32 bits
    strings = b"\0int\0"
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    path.write_bytes(hdr + types + strings)
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(memtrace console script, venv python, env, cwd outside the repo) of a venv holding the wheel."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler (gcc/cc): the wheel builds the ftrace scanner extension")
    try:
        import pip  # noqa: F401
    except ImportError:
        pytest.skip("pip is not installed for this Python")
    base = tmp_path_factory.mktemp("packaging")
    src, dist, env_dir, work = base / "src", base / "dist", base / "venv", base / "work"
    work.mkdir()
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    for name in BUILD_INPUTS:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=junk)
        else:
            shutil.copy2(p, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src], cwd=work, env=env, timeout=300)
    wheels = sorted(dist.glob("memtrace-*.whl"))
    assert len(wheels) == 1, wheels
    _run([sys.executable, "-m", "venv", "--system-site-packages", env_dir], cwd=work, env=env)
    py = env_dir / "bin" / "python"
    # --ignore-installed: the system's editable memtrace (seen through --system-site-packages) is
    # left alone; the venv's own site-packages comes first on sys.path
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheels[0]],
         cwd=work, env=env, timeout=180)
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(env_dir)
    return {"memtrace": env_dir / "bin" / "memtrace", "python": py, "env": env, "cwd": work, "wheel": wheels[0],
            "prefix": env_dir}


def test_wheel_contents(venv):
    names = set(zipfile.ZipFile(venv["wheel"]).namelist())
    assert "memtrace/probes/memcg.toml" in names
    assert any(n.startswith("memtrace/sources/trace/_ftrace_scan") and n.endswith(".so") for n in names)
    assert not any(n.startswith("memtrace/testing/") for n in names), "test helpers shipped in the wheel"


def test_venv_imports_the_wheel_not_the_checkout(venv):
    code = ("import memtrace, memtrace.sources.trace._ftrace_scan as s; "
            "from memtrace.sources.trace import probedefs; "
            "print(memtrace.__file__); print(s.__file__); print(probedefs.default_definitions()[0])")
    out = _run([venv["python"], "-c", code], cwd=venv["cwd"], env=venv["env"]).stdout.split()
    prefix = venv["prefix"].resolve()
    for f in out:
        assert Path(f).resolve().is_relative_to(prefix), f"{f} is not inside the venv {prefix}"
        assert not Path(f).resolve().is_relative_to(REPO), f"{f} is in the checkout"


def test_version(venv):
    from memtrace import __version__

    r = _run([venv["memtrace"], "--version"], cwd=venv["cwd"], env=venv["env"])
    assert r.stdout.strip() == f"memtrace {__version__}"


def test_probes(venv):
    btf = SYS_BTF if SYS_BTF.is_file() and os.access(SYS_BTF, os.R_OK) else _small_btf(venv["cwd"] / "small.btf")
    r = _run([venv["memtrace"], "probes", "--btf", btf, "--format", "kprobe_events"], cwd=venv["cwd"], env=venv["env"])
    assert "memtrace/pc_try_charge" in r.stdout + r.stderr  # a probe of the packaged memcg.toml


def test_ingest(venv):
    r = _run([venv["memtrace"], "ingest", FIXTURE], cwd=venv["cwd"], env=venv["env"])
    assert r.stdout.strip()


def test_commands_do_not_import_the_test_helpers():
    """memtrace.testing is left out of the wheel: no production module may need it. The one
    reference to it is ftrace_text's `_run(..., fast=False)`, inside the function, for the tests."""
    import ast

    pkg = REPO / "memtrace"
    found = {}
    for p in sorted(pkg.rglob("*.py")):
        rel = p.relative_to(pkg).as_posix()
        if rel.startswith("testing/"):
            continue
        tree = ast.parse(p.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m == "memtrace.testing" or m.startswith("memtrace.testing.") for m in mods):
                found.setdefault(rel, []).append("module level" if id(node) in top else "in a function")
    assert found == {"sources/trace/ftrace_text.py": ["in a function"]}
