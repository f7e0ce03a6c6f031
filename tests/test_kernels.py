"""The lab's kernel pins (memtrace/lab/kernels.toml) and the drift track (memtrace lab drift)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memtrace.errors import InputError
from memtrace.lab import kernels

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lab"


def _memtrace(*args, env=None):
    return subprocess.run([sys.executable, "-m", "memtrace", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_series_names_their_pinned_builds():
    assert kernels.build_of("6.1").release == "6.1.0-56-cloud-amd64"
    assert kernels.build_of("6.12").version == "6.12.117-1~deb12u1"
    assert kernels.build_of("6.12.118").series == "6.12"
    assert kernels.build_of("6.12@latest") is None
    assert kernels.series_of("6.12@latest").meta_package == "linux-image-6.12-cloud-amd64"
    for name in ("6.13", "6.12@newest", "latest", ""):
        with pytest.raises(InputError, match="unknown kernel"):
            kernels.series_of(name)


def test_a_pinned_build_is_never_replaced_by_a_cached_newer_one(tmp_path):
    """A cache holding only another build of the series does not satisfy the pin."""
    if kernels.cached("6.12.118") is None:
        pytest.skip("6.12.118 is not cached (scripts/setup fetches it)")
    cache = tmp_path / "cache"
    (cache / "kernels").mkdir(parents=True)
    os.symlink(kernels.cached("6.12.118").root, cache / "kernels" / kernels.build_of("6.12.118").release)
    r = _memtrace("lab", "kernels", "--json", env={"MEMTRACE_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    rows = {k["name"]: k for k in json.loads(r.stdout)["kernels"]}
    assert rows["6.12.118"]["vmlinux"] and rows["6.12.117"]["vmlinux"] is None
    assert rows["6.12.117"]["pinned"] and not rows["6.12.118"]["pinned"]


def test_a_pinned_build_apt_no_longer_lists_fails_naming_the_newest(tmp_path):
    """When Debian stops serving a pinned version the fetch says so and names the newest
    build, exit 3, one line, and downloads nothing."""
    if shutil.which("apt-cache") is None:
        pytest.skip("needs Debian's apt-cache")
    pins = kernels.PINS_FILE.read_text().replace('version = "6.12.117-1~deb12u1"', 'version = "6.12.117-0~gone1"')
    toml = tmp_path / "kernels.toml"
    toml.write_text(pins)
    cache = tmp_path / "cache"
    r = _memtrace("lab", "kernels", "--fetch", "-k", "6.12", env={"MEMTRACE_KERNELS_TOML": str(toml),
                                                                    "MEMTRACE_CACHE": str(cache)})
    assert r.returncode == 3, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("memtrace: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pinned build linux-image-6.12.117+deb12-cloud-amd64 6.12.117-0~gone1 is not in apt's lists" in lines[0]
    assert "newest 6.12 build:" in lines[0] and "memtrace lab drift --kernel 6.12" in lines[0]
    assert not any(cache.rglob("*.deb")) and not any(cache.rglob("vmlinux"))


def test_a_broken_pins_file_is_a_one_line_error(tmp_path):
    toml = tmp_path / "kernels.toml"
    toml.write_text("[series.\n")
    r = _memtrace("lab", "kernels", env={"MEMTRACE_KERNELS_TOML": str(toml)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{toml}: cannot read the lab's kernel pins" in r.stderr


def test_drift_of_the_ghost_fixtures_shows_the_max_event_backport(tmp_path):
    """`memtrace lab drift` on the committed ghost runs of 6.12.117 and 6.12.118 (complete
    runs in its output folder are reused, so no guest boots): the failed charges' max events
    are a behaviour change, 0 -> one per refused charge, on gen1 and up the tree."""
    for name in ("6.12", "6.12.118"):
        if kernels.cached(name) is None:
            pytest.skip(f"{name} is not cached (scripts/setup fetches it)")
    out = tmp_path / "drift"
    for name, fixture in (("6.12", "ghost-6.12"), ("6.12.118", "ghost-6.12.118")):
        shutil.copytree(FIXTURES / fixture, out / f"ghost-{kernels.build_of(name).release}")
    r = _memtrace("lab", "drift", "-k", "6.12", "--against", "6.12.118", "-s", "ghost", "-o", str(out), "--json")
    assert r.returncode == 1, r.stderr  # something changed
    doc = json.loads(r.stdout)
    assert doc["schema"] == "memtrace.drift.json/1"
    assert doc["base"]["release"] == "6.12.117+deb12-cloud-amd64" and doc["new"]["release"] == "6.12.118+deb12-cloud-amd64"
    behaviour = {(c["step"], c["subject"], c["fact"]): (c["base"], c["new"])
                 for c in doc["changes"] if c["change"] == "behaviour"}
    truth = json.loads((FIXTURES / "ghost-6.12.118" / "truth.json").read_text())
    ev = {s["name"]: s["cgroups"]["/pod/gen1"]["memory.events"]["max"] for s in truth["steps"]}
    assert behaviour == {
        ("gen2-updated", path, "memory.events max change"): (0, ev["gen2-updated"]) for path in ("/pod", "/pod/gen1")
    } | {
        ("gen2-updated-more", path, "memory.events max change"): (0, ev["gen2-updated-more"] - ev["gen2-updated"])
        for path in ("/pod", "/pod/gen1")
    }
    md = _memtrace("lab", "drift", "-k", "6.12", "--against", "6.12.118", "-s", "ghost", "-o", str(out), "--markdown")
    assert md.returncode == 1 and md.stdout.splitlines()[0].startswith("| scenario | step |")
    assert "| ghost | gen2-updated | /pod/gen1 | memory.events max change | 0 |" in md.stdout


def test_drift_of_a_build_with_itself_is_empty(tmp_path):
    if kernels.cached("6.12") is None:
        pytest.skip("6.12 is not cached")
    r = _memtrace("lab", "drift", "-k", "6.12", "--against", "6.12.117", "-o", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["changes"] == [] and "same build" in r.stderr
