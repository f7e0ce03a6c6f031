"""First drgn contact: the BPF maps drgn walks in a lab guest, live over QMP and in the
vmcore, are the maps bpftool listed in the guest (ids, names, types)."""

from __future__ import annotations

import json
import os
import signal

import drgn
import pytest
from drgn.helpers.linux.bpf import bpf_map_for_each

pytestmark = pytest.mark.lab


def walked_maps(prog: drgn.Program) -> dict[int, tuple[str, str]]:
    maps = {}
    for m in bpf_map_for_each(prog):
        name = m.name.string_().decode()
        mtype = m.map_type.format_(type_name=False).removeprefix("BPF_MAP_TYPE_").lower()
        maps[m.id.value_()] = (name, mtype)
    return maps


def bpftool_maps(truth: dict) -> dict[int, tuple[str, str]]:
    return {m["id"]: (m["name"], m["type"]) for m in truth["steps"][-1]["maps"]}


def test_vmcore_maps_equal_bpftool(lab, kernel):
    out = lab.get("restart", kernel)
    meta = json.loads((out / "meta.json").read_text())
    prog = drgn.Program()
    prog.set_core_dump(str(out / "vmcore"))
    prog.load_debug_info([meta["kernel"]["vmlinux"]])
    assert prog["UTS_RELEASE"].string_().decode() == meta["kernel"]["release"]
    truth = json.loads((out / "truth.json").read_text())
    assert walked_maps(prog) == bpftool_maps(truth)


def test_qmp_live_maps_equal_bpftool(tmp_path, kernel):
    from memtrace.lab.run import run

    res = run("restart", kernel, tmp_path / "live", vmcore=False, keep_running=True)
    try:
        assert res.pid and res.qmp_socket.exists()
        prog = drgn.Program()
        prog.set_qemu_qmp(str(res.qmp_socket))
        prog.load_debug_info([res.meta["kernel"]["vmlinux"]])
        truth = json.loads((res.out / "truth.json").read_text())
        assert walked_maps(prog) == bpftool_maps(truth)
    finally:
        if res.pid:
            os.kill(res.pid, signal.SIGKILL)
            import shutil

            shutil.rmtree(res.qmp_socket.parent, ignore_errors=True)
