"""Kernel drift: the facts one lab run shows, and what changed between two builds' runs.

A lab run's ``truth.json`` is read into a *facts* table, one row per observable fact:

* per step and ``/pod*`` cgroup: the change of ``memory.current`` over the step (bytes), of
  ``memory.events`` ``max`` and ``oom`` (counts), ``memory.max`` (bytes) and ``populated``;
* per map a step created: bpftool's ``bytes_memlock`` (bytes);
* per ``key=N`` pair of the scenario's notes (e.g. mapctl's ``done=168 failed=432
  errno=12``), by note and position, since map ids differ between runs.

``drift`` compares the facts of two runs of one scenario (a pinned build and a newer one).
Counts that go from zero to non-zero or back (and flipped booleans) are *behaviour*
changes, whatever their size
(6.12.118's "failed charges raise max events"); other differences count only beyond the
lab's run-to-run noise (``BYTES_TOLERANCE``, ``COUNT_TOLERANCE``).
"""

from __future__ import annotations

import re

import pandas as pd

#: Facts in bytes are "the same" within max(4 pages, 2 %): per-CPU stocks and late RCU
#: frees move a step's memory.current by a few pages from run to run.
BYTES_TOLERANCE = (4 * 4096, 0.02)
#: Counts (events, inserts done or failed) are "the same" within max(2, 5 %).
COUNT_TOLERANCE = (2, 0.05)

FACT_COLUMNS = ("scenario", "step", "subject", "fact", "unit", "value")

_KV = re.compile(r"\b([a-z_]+)=(-?\d+)\b")


def run_facts(scenario: str, truth: dict) -> pd.DataFrame:
    """The facts table of one lab run (``truth``: its parsed ``truth.json``)."""
    rows: list[tuple] = []
    prev: dict[str, dict] = {}
    for step in truth.get("steps", []):
        name = step["name"]
        for path, cg in step.get("cgroups", {}).items():
            if not path.startswith("/pod") or "memory.current" not in cg:
                continue
            before = prev.get(path)
            ev, ev0 = cg.get("memory.events") or {}, (before or {}).get("memory.events") or {}
            if before is not None:
                rows.append((scenario, name, path, "memory.current change", "bytes",
                             cg["memory.current"] - before["memory.current"]))
                for key in ("max", "oom"):
                    if key in ev and key in ev0:
                        rows.append((scenario, name, path, f"memory.events {key} change", "count", ev[key] - ev0[key]))
            rows.append((scenario, name, path, "memory.max", "bytes", cg.get("memory.max")))
            rows.append((scenario, name, path, "populated", "bool", int(bool(cg.get("populated")))))
            prev[path] = cg
    # each created map's memlock, as bpftool showed it at the last step that lists it
    last_seen = {m["id"]: (step["name"], m) for step in truth.get("steps", []) for m in step.get("maps", [])}
    for made in truth.get("maps_created", []):
        if made["id"] in last_seen:
            step_name, m = last_seen[made["id"]]
            rows.append((scenario, "maps", f"map {made.get('pin') or m.get('name')}", "bytes_memlock", "bytes",
                         m.get("bytes_memlock")))
    for i, note in enumerate(truth.get("notes", [])):
        for part, text in enumerate(note.split(";")):
            for k, v in _KV.findall(text):
                if k != "id":  # map ids differ between runs
                    rows.append((scenario, "notes", f"note {i} part {part}", k, "count", int(v)))
    df = pd.DataFrame(rows, columns=FACT_COLUMNS)
    return df.drop_duplicates(["scenario", "step", "subject", "fact"], keep="first").reset_index(drop=True)


def _same(unit: str, a, b) -> bool:
    if a is None or b is None or pd.isna(a) or pd.isna(b):
        return (a is None or pd.isna(a)) and (b is None or pd.isna(b))
    a, b = int(a), int(b)
    if unit == "bool" or (unit == "count" and (a == 0) != (b == 0)):
        return a == b
    absolute, relative = BYTES_TOLERANCE if unit == "bytes" else COUNT_TOLERANCE
    return abs(a - b) <= max(absolute, relative * max(abs(a), abs(b)))


def drift(base: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """What changed from the ``base`` facts to the ``new`` facts (both from ``run_facts``).

    One row per fact that differs beyond the tolerances, or that only one side has:
    ``base``/``new`` values (null where absent) and ``change``: ``behaviour`` (a count went
    from zero to non-zero or back, or a boolean flipped), ``size``, ``only in base``,
    ``only in new``. Rows come in the base's order, facts only in new last."""
    key = ["scenario", "step", "subject", "fact"]
    m = base.merge(new, on=key, how="outer", suffixes=("_base", "_new"), indicator=True, sort=False)
    out = []
    for r in m.itertuples(index=False):
        unit = r.unit_base if isinstance(r.unit_base, str) else r.unit_new
        if r._8 == "left_only":
            change = "only in base"
        elif r._8 == "right_only":
            change = "only in new"
        elif _same(unit, r.value_base, r.value_new):
            continue
        elif unit == "bool" or (unit == "count" and not pd.isna(r.value_base) and not pd.isna(r.value_new)
                                and (int(r.value_base) == 0) != (int(r.value_new) == 0)):
            change = "behaviour"
        else:
            change = "size"
        out.append((r.scenario, r.step, r.subject, r.fact, unit, _int(r.value_base), _int(r.value_new), change))
    return pd.DataFrame(out, columns=[*key, "unit", "base", "new", "change"])


def _int(v):
    return None if v is None or pd.isna(v) else int(v)
