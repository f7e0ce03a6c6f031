"""memtrace snapshot --live, run for real inside a lab guest, against --qmp and --vmcore of
the same guest.

One guest per kernel (`memtrace lab run restart --live-snapshot --keep-running`): after the
scenario's last step the guest mounts the cached Python image (memtrace.lab.pyroot),
chroots into it and runs `memtrace snapshot --live` on its own /proc/kcore (as root, then
as uid 65534). The host then dumps the vmcore and, with the guest still up, reads it over
QMP: three views of one final state.

Differences the live walk itself causes, and which the tests spell out instead of hiding:

* pins: live.sh bind-mounts /sys/fs/bpf into the chroot at /mnt/pyroot/sys/fs/bpf while
  the walk runs, so every pin is also reachable under that second mount of the same bpffs
  and the live walk lists both paths; the bind is gone by the time of the dump.
* the Python process doing the walk: it runs in the root cgroup, whose charges the kernel
  does not count, and creates no BPF maps, so it leaves no trace in the maps, allocations
  or non-root memcgs. The tests check exactly that (every table but the pins is equal).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.lab

SCENARIO = "restart"
MNT = "/mnt/pyroot"


class LiveRun:
    def __init__(self, out: Path, pid: int, qmp: Path) -> None:
        self.out, self.pid, self.qmp = out, pid, qmp
        self.meta = json.loads((out / "meta.json").read_text())
        self.vmlinux = Path(self.meta["kernel"]["vmlinux"])
        self._snaps: dict = {}

    def snapshot(self, kind: str):
        if kind not in self._snaps:
            if kind == "live":
                from memtrace.tables.snapshot_file import load

                self._snaps[kind] = load(self.out / "live.snapshot")
            else:
                from memtrace.sources.snapshot import open_target, take_snapshot

                where = {"vmcore": self.out / "vmcore", "qmp": self.qmp}[kind]
                prog, target = open_target(**{kind: where}, vmlinux=self.vmlinux)
                self._snaps[kind] = take_snapshot(prog, target)
        return self._snaps[kind]

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.qmp.parent, ignore_errors=True)


@pytest.fixture(scope="module", params=["6.1", "6.12"])
def live(request, tmp_path_factory):
    """The guest, started through the CLI flag a user would type; killed at teardown."""
    kernel = request.param
    out = tmp_path_factory.mktemp("live") / f"{SCENARIO}-{kernel}"
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "memtrace", "lab", "run", SCENARIO, "-k", kernel, "-o", str(out),
         "--live-snapshot", "--keep-running", "--json"],
        capture_output=True, text=True, timeout=1200,
    )
    pid = re.search(r"guest left running: pid (\d+)", r.stderr)
    if pid is None:
        pytest.fail(f"lab run failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    run = LiveRun(out, int(pid.group(1)), Path(r.stdout.strip().splitlines()[-1]))
    run.host_wall_s = round(time.time() - t0, 1)
    yield run
    run.stop()


def test_live_ran_in_the_guest(live):
    """The in-guest run read the guest's own kernel through /proc/kcore, completely."""
    m = live.meta["live_snapshot"]
    s = live.snapshot("live")
    h = s.header
    assert m["exit_status"] == 0
    assert h["target"] == {"kind": "live", "path": "/proc/kcore"}
    assert h["kernel"]["release"] == live.meta["kernel"]["release"]
    assert h["kernel"]["build_id"] == live.meta["kernel"]["vmlinux_build_id"]
    assert h["faults"] == 0 and h["complete"] and h["notes"] == []
    # stdout carried the JSON envelope of that same snapshot, stderr only the "wrote" line
    env = json.loads((live.out / "live-snapshot.json").read_text())
    assert env["header"]["target"]["kind"] == "live"
    assert [(x["map_id"], x["name"], x["charged_bytes"]) for x in env["maps"]] == list(
        s.maps[["map_id", "name", "charged_bytes"]].itertuples(index=False, name=None)
    )
    # (a blank line first: rich's transient progress bar, ended on a non-terminal)
    err = [l for l in (live.out / "live-snapshot.err").read_text().splitlines() if l.strip()]
    assert err == ["wrote /out/live.snapshot"]
    t = live.meta["timings"]
    print(
        f"\n{live.meta['kernel']['release']}: lab run {live.host_wall_s} s on the host "
        f"(boot {t['boot_s']} s, scenario+live {t['scenario_s']} s, vmcore {t['vmcore_s']} s); "
        f"in-guest snapshot --live {m['wall_s']} s (walk {h['walk_s']} s), non-root {m['nonroot_wall_s']} s; "
        f"image {m['image_allocated_bytes'] / 2**20:.0f} MiB allocated, built in {m['image_build_s']} s"
    )


def test_live_equals_qmp_and_vmcore(live):
    """--live in the guest, --qmp and --vmcore of the same final state: the same maps,
    owners and owner states, memcgs (memory.current, stocks, attributed bytes) and every
    allocation, to the byte. Only the pins differ, by the chroot's bpffs bind mount."""
    views = {k: live.snapshot(k) for k in ("live", "qmp", "vmcore")}
    for k, s in views.items():
        assert s.header["faults"] == 0 and s.header["complete"], k
        assert len(s.maps) == 14, k  # 9 kinds, 5 inner arrays (the template was freed)
    ref = views["vmcore"]

    def pins(s) -> dict[int, set[str]]:
        return {int(r.map_id): {p for p in r.pins.split(";") if p} for r in s.maps.itertuples()}

    assert pins(views["qmp"]) == pins(ref)
    # live: each pin twice, once more under the chroot's bind mount of /sys/fs/bpf
    assert pins(views["live"]) == {i: p | {MNT + x for x in p} for i, p in pins(ref).items()}
    assert any(pins(ref).values())

    def same(a: pd.DataFrame, b: pd.DataFrame, key: list[str], what: str) -> None:
        a = a.sort_values(key).reset_index(drop=True)
        b = b.sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, obj=what)

    def memcgs(s) -> pd.DataFrame:
        # the root's memory.stat counts the whole guest, the in-guest walk's own ~100 MB Python
        # process included while it runs (and gone by the vmcore); the root's page counter does
        # not charge it. Every other memcg is compared whole, its memory.stat included.
        m = s.memcgs.copy()
        stat = [c for c in m.columns if c.startswith("stat_")]
        m.loc[m["path"].eq("/"), stat] = pd.NA
        return m

    for k in ("live", "qmp"):
        s = views[k]
        same(s.maps.drop(columns="pins"), ref.maps.drop(columns="pins"), ["map_id"], f"maps {k} vs vmcore")
        same(memcgs(s), memcgs(ref), ["cgroup_id"], f"memcgs {k} vs vmcore")
        same(s.allocations, ref.allocations, ["map_id", "role", "kind", "address"], f"allocations {k} vs vmcore")

    # the story is there: gen1 made every map, was removed, its objcg reparented to /pod
    lv = views["live"]
    assert set(lv.maps["owner_state"]) == {"reparented"} and set(lv.maps["owner_path"]) == {"/pod"}
    pod = lv.memcgs.set_index("path").loc["/pod"]
    assert pod["bpf_bytes"] > 0 and pod["bpf_maps_owned"] == 14
    # and memory.current, read live, is what the guest's own cgroup files said at the last step
    truth = json.loads((live.out / "truth.json").read_text())["steps"][-1]["cgroups"]
    for r in lv.memcgs.itertuples():
        if r.path.startswith("/pod") and r.path in truth and "memory.current" in truth[r.path]:
            assert r.memory_current_bytes == truth[r.path]["memory.current"], r.path


def test_live_not_root_is_one_line_error(live):
    """The same command as uid/gid 65534 inside the guest: one line, exit 3 (environment),
    as memtrace/cli/snapshot.py documents."""
    from memtrace.errors import EnvironmentProblem

    assert live.meta["live_snapshot"]["nonroot_exit_status"] == EnvironmentProblem.exit_code == 3
    lines = (live.out / "live-nonroot.err").read_text().splitlines()
    assert lines == ["memtrace: error: /proc/kcore: permission denied; live mode needs root (or use --vmcore FILE)"]
