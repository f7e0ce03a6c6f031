"""memtrace snapshot --live while maps are created, filled and freed under the walk.

The lab test boots a guest (tests/scenarios/live_churn.sh, `--live-snapshot`): seven maps
that nothing touches, then a background job that, all through the in-guest `snapshot
--live`, creates a map, fills it and frees the one made two rounds before, and inserts and
deletes elements of a no-prealloc hash. What must hold whatever the timing: the walk ends
with exit 0 or 5 and no traceback, the fault count is in every output and is nonzero iff
the exit is 5, every stable map is there and right, and no row is garbage: a map is the
stable one, or one the churn job really made (its name, type and shape), or it is left
out with a note when it was freed under the walk.

The unit tests below drive take_snapshot with stand-ins for the kernel helpers, to pin
down what a freed map does to it (read as zeros or garbage, raising non-fault errors).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import drgn
import numpy as np
import pytest

from memtrace.errors import EXIT_INCOMPLETE, GuestError

SCENARIO = Path(__file__).parent / "scenarios" / "live_churn.sh"

# name -> (type, key, value, max_entries, flags), as the scenario creates them
STABLE = {
    "st_hash": ("hash", 8, 100, 1031, 0),
    "st_hash_np": ("hash", 8, 64, 2053, 1),
    "st_array": ("array", 4, 76, 3001, 0),
    "st_pcpu_arr": ("percpu_array", 4, 60, 127, 0),
    "st_lpm": ("lpm_trie", 8, 16, 509, 1),
    "st_ringbuf": ("ringbuf", 0, 0, 65536, 0),
}
CHURN_NP = ("churn_np", ("hash", 8, 100, 8191, 1))
CHURNED = {
    "hash": (8, 100, 2053, 1),
    "array": (4, 76, 3001, 0),
    "lpm_trie": (8, 16, 1021, 1),
    "percpu_hash": (4, 36, 521, 0),
}


# -- the real thing ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def churn(tmp_path_factory):
    # One kernel only (6.12): the guard code under test is kernel-independent Python, the
    # per-kernel layouts are covered by test_snapshot_live.py on 6.1 and 6.12, and each
    # run costs ~80 s of TCG guest; no vmcore (nothing compares against one).
    from memtrace.lab.run import run

    out = tmp_path_factory.mktemp("churn") / "live_churn-6.12"
    try:
        r = run(str(SCENARIO), "6.12", out, live_snapshot=True, vmcore=False)
    except GuestError as e:
        pytest.fail(f"{e}\n{e.detail or ''}")
    truth = json.loads((out / "truth.json").read_text())
    env = json.loads((out / "live-snapshot.json").read_text())
    err = (out / "live-snapshot.err").read_text()
    h = env["header"]
    print(
        f"\nlive churn: exit {r.meta['live_snapshot']['exit_status']}, faults {h['faults']}, "
        f"complete {h['complete']}, {len(env['maps'])} maps, walk {h['walk_s']} s; notes {h['notes']}"
    )
    return r, truth, env, err


def _notes(truth: dict, what: str) -> list[list[str]]:
    return [n.split()[2:] for n in truth["notes"] if n.startswith(f"churn {what} ")]


def _t(fields: list[str]) -> float:
    return float(next(f for f in fields if f.startswith("t="))[2:])


@pytest.mark.lab
def test_churn_ran_all_through_the_walk(churn):
    r, truth, _, _ = churn
    live = r.meta["live_snapshot"]
    start, end = live["uptime_start_s"], live["uptime_start_s"] + live["wall_s"]
    created = _notes(truth, "create")
    freed = _notes(truth, "free")
    (stopped,) = _notes(truth, "stopped")
    # it stopped on live.sh's flag, after the root run, not on its own time limit
    assert end <= _t(stopped) < end + 60
    assert int(stopped[0].removeprefix("rounds=")) == len(created) + len(_notes(truth, "create-failed"))
    # maps were made and freed before, during and after the snapshot process ran
    assert any(_t(c) < start for c in created) and any(start <= _t(c) <= end for c in created)
    assert any(start <= _t(f) <= end for f in freed)
    assert _notes(truth, "create-failed") == []


@pytest.mark.lab
def test_live_walk_ends_cleanly_and_reports_its_faults(churn):
    r, _, env, err = churn
    rc = r.meta["live_snapshot"]["exit_status"]
    h = env["header"]
    assert rc in (0, EXIT_INCOMPLETE)
    assert "Traceback" not in err
    assert isinstance(h["faults"], int) and h["faults"] >= 0
    # exit 5 iff incomplete iff a nonzero count
    assert (rc == EXIT_INCOMPLETE) == (not h["complete"]) == (h["faults"] > 0)
    warn = re.findall(r"^memtrace: warning: (\d+) faults while reading a live kernel", err, re.M)
    assert warn == ([str(h["faults"])] if h["faults"] else [])
    # the snapshot file says the same
    from memtrace.tables.snapshot_file import load

    s = load(r.out / "live.snapshot")
    assert (s.header["faults"], s.header["complete"]) == (h["faults"], h["complete"])
    assert s.maps["map_id"].tolist() == [m["map_id"] for m in env["maps"]]
    # maps freed under the walk are left out, each with a note, and counted
    gone = [n for n in h["notes"] if "was freed during the walk" in n]
    assert len(gone) <= h["faults"]


@pytest.mark.lab
def test_stable_maps_are_all_there_and_right(churn):
    _, truth, env, _ = churn
    made = {c["pin"].rsplit("/", 1)[1]: c for c in truth["maps_created"]}
    assert set(made) == set(STABLE) | {CHURN_NP[0]}
    last = truth["steps"][-1]["cgroups"]
    by_id = {m["map_id"]: m for m in env["maps"]}
    for name, shape in list(STABLE.items()) + [CHURN_NP]:
        c = made[name]
        m = by_id.get(c["id"])
        assert m is not None, f"stable map {name} (id {c['id']}) missing"
        assert (m["name"], m["type"], m["key_size"], m["value_size"], m["max_entries"], m["flags"]) == (name, *shape)
        assert m["owner_kind"] == "objcg"
        assert m["owner_path"] == c["cgroup"] and m["owner_cgroup_id"] == last[c["cgroup"]]["id"]
        assert f"/sys/fs/bpf/{name}" in m["pins"].split(";")
        assert m["allocations"] > 0 and m["charged_bytes"] > 0
        if name in STABLE:
            # nothing touches them, and /stable has no tasks: complete, and a ghost owner
            assert m["complete"], name
            assert m["owner_state"] == "ghost", name


@pytest.mark.lab
def test_churned_maps_are_real_or_left_out(churn):
    _, truth, env, _ = churn
    created = {int(c[0]): (c[1], c[2]) for c in _notes(truth, "create")}
    stable_ids = {c["id"] for c in truth["maps_created"]}
    churned = [m for m in env["maps"] if m["map_id"] not in stable_ids]
    # every fifth churned map lives ~25 rounds, longer than the walk: some are reported
    assert churned
    for m in churned:
        # no garbage row: every other map is one the churn job made, as it made it
        assert m["map_id"] in created, m
        typ, name = created[m["map_id"]]
        assert (m["name"], m["type"]) == (name, typ)
        assert (m["key_size"], m["value_size"], m["max_entries"], m["flags"]) == CHURNED[typ]
        assert m["owner_path"] == "/churn"
        if m["complete"]:
            assert m["allocations"] > 0 and m["charged_bytes"] > 0
        else:
            assert not env["header"]["complete"] and env["header"]["faults"] > 0


# -- take_snapshot with a map freed under it (no kernel) ----------------------------------


class _Obj:
    """Stands in for a drgn Object: attributes, value_(), string_()."""

    def __init__(self, v=0, **attrs):
        self._v = v
        self.__dict__.update(attrs)

    def value_(self):
        return self._v

    def string_(self):
        return self._v


def _map(addr, mid, name, max_entries=16):
    return _Obj(addr, id=_Obj(mid), name=_Obj(name), map_flags=_Obj(0), key_size=_Obj(8),
                value_size=_Obj(8), max_entries=_Obj(max_entries))


GARBAGE = 0xFFFF_FFFF_FFFF_FF00  # what a freed map's fields can read as: overflows int64


@pytest.fixture
def fake_kernel(monkeypatch):
    """A kernel of four maps: 1 stays, 2 is freed under the walk (reads as zeros; its walk
    trips over a garbage size), 3 is freed and its memory reused (garbage that would not
    fit the table), 4 stays but a read of it faults."""
    from memtrace.sources.kernel import bpf as kbpf
    from memtrace.sources.kernel import memcg as kmemcg

    maps = [_map(0x1000, 1, b"stays"), _map(0x2000, 0, b""), _map(0x3000, 77, b"\xff\xfe", GARBAGE),
            _map(0x4000, 4, b"faults")]
    listed = {(1, 0x1000), (4, 0x4000)}

    class Walker:
        forgotten: list = []

        def __init__(self, prog):
            self.stats = kbpf.WalkStats()
            self.ncpu = 2

        def forget_map(self, map_id):
            self.forgotten.append(map_id)

        def walk(self, m):
            mid = m.id.value_()
            if mid == 0:
                self.stats.notes.append("map 0: map_struct at 0x2000 is in no known area")
                raise OverflowError("garbage size")
            if mid == 4:
                raise drgn.FaultError("could not read memory", 0x4008)
            n = 1 if mid == 1 else 3
            self.stats.truncated_chains += mid == 77
            return [kbpf.AllocBatch(mid, "map_struct", np.array(["slab_object"] * n, dtype=object),
                                    np.arange(n, dtype=np.uint64) + np.uint64(m.value_()),
                                    np.full(n, 64, dtype=np.int64), np.zeros(n, dtype=np.uint64),
                                    np.array(["kmalloc-64"] * n, dtype=object))]

    monkeypatch.setattr(kmemcg, "root_mem_cgroup", lambda prog: _Obj(0x9000))
    monkeypatch.setattr(kmemcg, "memcg_for_each", lambda prog: iter([]))
    monkeypatch.setattr(kmemcg, "memcg_stock_for_each", lambda prog: iter([]))
    monkeypatch.setattr(kbpf, "bpf_map_pins", lambda prog: {})
    monkeypatch.setattr(kbpf, "bpf_maps", lambda prog: iter(maps))
    monkeypatch.setattr(kbpf, "MapMemoryWalker", Walker)
    monkeypatch.setattr(kbpf, "bpf_map_owner", lambda m: ("objcg", 0))
    monkeypatch.setattr(kbpf, "bpf_map_type_name", lambda m: "hash")
    monkeypatch.setattr(kbpf, "bpf_map_mem_usage", lambda m: m.max_entries.value_() * 16)
    monkeypatch.setattr(kbpf, "bpf_map_memlock", lambda m: m.max_entries.value_() * 16)
    monkeypatch.setattr(kbpf, "bpf_map_listed", lambda prog, mid, addr: (mid, addr) in listed)
    return _FakeProg({"PAGE_SIZE": _Obj(4096)})


class _FakeProg(dict):
    """The program the faked walk needs: PAGE_SIZE, and sizeof(struct obj_cgroup *)."""

    def type(self, name: str):
        assert name == "struct obj_cgroup *", name
        return _Obj(size=8)


def test_maps_freed_under_a_live_walk_are_left_out_and_counted(fake_kernel):
    from memtrace.sources.snapshot import take_snapshot

    s = take_snapshot(fake_kernel, {"kind": "live", "path": "/proc/kcore"})
    assert s.maps["map_id"].tolist() == [1, 4]
    assert s.maps["complete"].tolist() == [True, False]
    # 2 freed maps + 1 fault; nothing of the freed maps (rows, allocations, their notes)
    assert s.header["faults"] == 3 and not s.header["complete"]
    assert sorted(set(s.allocations["map_id"])) == [1]
    assert [n for n in s.header["notes"] if "freed during the walk" in n] == [
        "a map at 0x2000 (read as id 0) was freed during the walk; left out",
        "a map at 0x3000 (read as id 77) was freed during the walk; left out",
    ]
    assert not any("no known area" in n or "chain walks were cut" in n for n in s.header["notes"])
    # what the freed maps' walks claimed (shared local storages) is given up for later maps
    from memtrace.sources.kernel import bpf as kbpf

    # (and so is what the faulting map 4's walk claimed before its fault)
    assert set(kbpf.MapMemoryWalker.forgotten) == {0, 4, 77}


def test_a_vmcore_walk_raises_what_is_not_a_fault(fake_kernel):
    """A vmcore does not change: an error other than a drgn fault there is a bug, raised."""
    from memtrace.sources.snapshot import take_snapshot

    with pytest.raises(OverflowError):
        take_snapshot(fake_kernel, {"kind": "vmcore", "path": "x"})


# -- a certain race: the host frees a map between the walk's listing and its read ---------


def _wait_serial(path: Path, text: str, timeout: float = 120) -> None:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"the guest did not print {text!r} within {timeout:.0f} s")


@pytest.mark.lab
def test_a_map_freed_under_a_qmp_walk_is_left_out_and_counted(tmp_path):
    """tests/scenarios/live_race.sh, walked live over QMP: once the walk has listed the three
    maps, before it reads the second, the host tells the guest (second serial port) to free
    it and waits until bpftool no longer lists it. The walk must then leave it out, count
    it as a fault (so the snapshot is incomplete: exit 5 at the CLI) and say so, and get the
    other two right. Unlike the churn test above, the race happens in every run."""
    import socket

    from memtrace.lab.run import run
    from memtrace.sources.snapshot import open_target, take_snapshot

    res = run(str(Path(__file__).parent / "scenarios" / "live_race.sh"), "6.12", tmp_path / "run",
              keep_running=True, vmcore=False, force=True)
    rundir = res.qmp_socket.parent
    serial = rundir / "serial.log"
    freed: list[str] = []
    try:
        _wait_serial(serial, "MEMTRACE-RACE-READY")
        prog, target = open_target(qmp=res.qmp_socket, vmlinux=Path(res.meta["kernel"]["vmlinux"]))

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "maps" and done == 0 and not freed:
                assert total == 3, total  # the walk has listed all three
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(rundir / "ctl.sock"))
                    s.sendall(b"free race_b\n")
                    _wait_serial(serial, "MEMTRACE-FREED race_b")
                freed.append("race_b")

        snap = take_snapshot(prog, target, progress=progress)
    finally:
        res.stop()
    assert freed == ["race_b"]
    made = {m["name"]: m for m in json.loads((res.out / "truth.json").read_text())["steps"][-1]["maps"]}
    assert set(made) == {"race_a", "race_b", "race_c"}
    assert sorted(snap.maps["name"]) == ["race_a", "race_c"]
    assert set(snap.maps["map_id"]) == {made["race_a"]["id"], made["race_c"]["id"]}
    assert snap.maps["complete"].all()
    h = snap.header
    assert h["faults"] >= 1 and h["complete"] is False
    # race_b's memory may already be reused: its id reads as whatever is there now, or the
    # read faults; either way it is named as gone, not listed
    print(f"\nrace: faults {h['faults']}, notes {h['notes']}")
    assert [n for n in h["notes"] if "was freed during the walk; left out" in n or "could not be read" in n], h["notes"]
