"""Turn the guest's raw ``/out`` tree into ``truth.json``: the kernel's own counters per step.

Schema ``memtrace.lab.truth/1``::

    {"schema": "memtrace.lab.truth/1",
     "steps": [{"index": 1, "name": "start", "uptime_s": 2.91,
                "cgroups": {"/pod/gen1": {"id": 1234, "populated": false,
                                          "memory.current": 12288,      # bytes
                                          "memory.max": 1048576 | null, # null = "max"
                                          "memory.peak": ..., "memory.high": ...,
                                          "memory.events": {"max": 0, ...},
                                          "memory.events.local": {...},
                                          "memory.stat": {"kernel": ..., ...},  # bytes or counts
                                          "cgroup.stat": {...}}},
                "maps": [bpftool map show -j objects, with "pinned" paths],
                "fdinfo": {"<map id>": {"map_type": 1, "memlock": 4096, ...}},
                "pins": ["name", ...]}],
     "maps_created": [{"id": 7, "type": "hash", "pin": "/sys/fs/bpf/x",
                       "cgroup": "/pod/gen1", "step": 3}],
     "notes": ["free text the scenario noted"]}

The root cgroup is "/". Files a kernel lacks (memory.peak on 6.1) are absent, not null.
"""

from __future__ import annotations

import json
from pathlib import Path

from memtrace.errors import InputError
from memtrace.tables.lab_truth import TRUTH_SCHEMA as SCHEMA


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _scalar(text: str) -> int | None:
    text = text.strip()
    return None if text == "max" else int(text)


def _cgroup(d: Path) -> dict:
    rec: dict = {"id": int((d / "id").read_text())}
    for name in ("memory.current", "memory.max", "memory.high", "memory.peak"):
        f = d / name
        if f.exists():
            rec[name] = _scalar(f.read_text())
    for name in ("memory.events", "memory.events.local", "memory.stat", "cgroup.stat"):
        f = d / name
        if f.exists():
            rec[name] = _kv(f.read_text())
    ev = d / "cgroup.events"
    if ev.exists():
        rec["populated"] = bool(_kv(ev.read_text()).get("populated", 0))
    return rec


def _fdinfo(text: str) -> dict[str, dict]:
    maps: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("@@map "):
            cur = maps.setdefault(line.split()[1], {})
        elif cur is not None and ":" in line:
            k, v = line.split(":", 1)
            v = v.strip()
            try:
                cur[k.strip()] = int(v, 0) if v.startswith("0x") else int(v)
            except ValueError:
                cur[k.strip()] = v
    return maps


def _step(d: Path) -> dict:
    index, name = d.name.split("-", 1)
    cgroups = {}
    croot = d / "cgroups"
    for cg in sorted(p for p in croot.rglob("*") if p.is_dir() and (p / "id").exists()):
        cgroups["/" + str(cg.relative_to(croot))] = _cgroup(cg)
    if (croot / "id").exists():
        cgroups["/"] = _cgroup(croot)
    maps_text = (d / "maps.json").read_text() if (d / "maps.json").exists() else ""
    try:
        maps = json.loads(maps_text) if maps_text.strip() else []
    except json.JSONDecodeError as e:
        raise InputError(f"{d / 'maps.json'}: bpftool output is not JSON: {e}") from None
    return {
        "index": int(index),
        "name": name,
        "uptime_s": float((d / "uptime").read_text().split()[0]),
        "cgroups": cgroups,
        "maps": maps,
        "fdinfo": _fdinfo((d / "fdinfo.txt").read_text()) if (d / "fdinfo.txt").exists() else {},
        "pins": (d / "pins.txt").read_text().split() if (d / "pins.txt").exists() else [],
    }


def build_truth(guest_out: Path) -> dict:
    """Parse a guest's /out tree (unpacked from the output disk)."""
    steps_dir = guest_out / "steps"
    steps = [_step(d) for d in sorted(steps_dir.iterdir())] if steps_dir.is_dir() else []
    created = []
    mc = guest_out / "maps-created.txt"
    if mc.exists():
        for line in mc.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0].isdigit():
                created.append(
                    {
                        "id": int(parts[0]),
                        "type": parts[1],
                        "pin": parts[2],
                        "cgroup": parts[3],
                        "step": int(parts[4].removeprefix("step=")),
                    }
                )
    notes = (guest_out / "notes.txt").read_text().splitlines() if (guest_out / "notes.txt").exists() else []
    return {"schema": SCHEMA, "steps": steps, "maps_created": created, "notes": notes}


def load_truth(path: Path) -> dict:
    """A lab run's truth.json as a document (memtrace.tables.lab_truth reads and checks it)."""
    from memtrace.tables.lab_truth import read_truth_document

    return read_truth_document(path)[1]
