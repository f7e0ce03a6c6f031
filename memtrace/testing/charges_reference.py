"""The per-event loops that paired entry and return events before memtrace paired them with
array operations (``memtrace.analyses.charges._pair_lifo``): kept as the reference the
vectorised pairing is tested against (tests/test_charges_pairing.py). Not in the wheel."""

from __future__ import annotations

import re

import pandas as pd

from memtrace.analyses.charges import (
    FORCE, MARKER_EVENT, PC_FORCE, PC_TRY, PC_TRY_RET, PC_UNCHARGE, TRY, TRY_FAILED,
    TRY_OK, TRY_RET, UNCHARGE, _short,
)


_ARG_OK = re.compile(r"\bok=(\d+)")
_ARG_COUNTER = re.compile(r"\bcounter=(0x[0-9a-fA-F]+)")


def _arg(args: pd.Series, rx: re.Pattern, base: int) -> pd.Series:
    got = args.astype("string").str.extract(rx, expand=False)
    return pd.Series([int(v, base) if isinstance(v, str) else pd.NA for v in got], index=args.index, dtype="UInt64")


def _thread_key(pid, cpu) -> tuple:
    """Entry/return pairing key: idle (pid 0) runs one task per CPU; every other thread is its own."""
    return (pid, cpu if pid in (0, None) else None)


def charge_attempts_reference(events: pd.DataFrame) -> pd.DataFrame:
    """One row per completed ``try_charge_memcg`` call of the capture, at its return event.

    Columns: ``row`` (position of the return in `events`), ``ts_ns``, ``cpu``, ``pid``,
    ``comm``, ``cgroup_id`` (the memcg charged), ``gfp`` (gfp_mask), ``pages`` (nr_pages),
    ``ret`` (0, or -12: the charge was refused with -ENOMEM; a refused charge is never
    forced). Entry and return are paired per thread, last in first out, as in
    ``page_counter_movements``. ``attrs``: ``unpaired_entries``, ``unpaired_returns``."""
    ev = events.reset_index(drop=True)
    name = _short(ev["event"])
    sel = name.isin([TRY, TRY_RET]) & ~ev["event"].astype(str).eq(MARKER_EVENT)
    t = ev[sel]
    kinds = name[sel].to_numpy()
    cols = {c: t[c].to_numpy(dtype=object, na_value=None) for c in ("pid", "cpu", "cgroup_id", "gfp", "pages", "ret")}
    comm = t["comm"].astype("string").to_numpy(dtype=object, na_value=None)
    ts, rows = t["ts_ns"].to_numpy(), t.index.to_numpy()
    stacks: dict[tuple, list[tuple]] = {}
    out: list[tuple] = []
    unpaired_returns = 0
    for i in range(len(t)):
        key = _thread_key(cols["pid"][i], cols["cpu"][i])
        if kinds[i] == TRY:
            stacks.setdefault(key, []).append((cols["cgroup_id"][i], cols["gfp"][i], cols["pages"][i]))
            continue
        st = stacks.get(key)
        if not st:
            unpaired_returns += 1
            continue
        cgid, gfp, nr = st.pop()
        out.append((rows[i], ts[i], cols["cpu"][i], cols["pid"][i], comm[i], cgid, gfp, nr, cols["ret"][i]))
    df = pd.DataFrame(out, columns=["row", "ts_ns", "cpu", "pid", "comm", "cgroup_id", "gfp", "pages", "ret"])
    df = df.astype({"row": "int64", "ts_ns": "int64", "cpu": "Int32", "pid": "Int32", "comm": "string",
                    "cgroup_id": "UInt64", "gfp": "UInt64", "pages": "Int64", "ret": "Int64"})
    df.attrs.update(unpaired_entries=sum(len(s) for s in stacks.values()), unpaired_returns=unpaired_returns)
    return df


def page_counter_movements_reference(events: pd.DataFrame) -> pd.DataFrame:
    """One row per page_counter call of the capture, in capture order.

    Columns: ``row`` (position in `events`), ``ts_ns``, ``cpu``, ``pid``, ``kind``
    (try_charge / try_charge_failed / force / uncharge), ``counter`` (address), ``cgroup_id``
    (owner memcg of the counter), ``pages`` (as passed), ``signed_pages`` (what the counter
    moved: + for try_charge and force, - for uncharge, 0 for a failed try_charge).

    A try_charge row sits at its return event (the outcome is only known there) and takes the
    counter/nr/cgid of its entry event. ``attrs``: ``unpaired_entries`` (entries without a
    return: the capture ended inside the call), ``unpaired_returns`` (returns without an
    entry: the capture began inside it), ``entry_return_mismatches`` (the return event
    carries its own counter, on 6.12, and it differs from the paired entry's: must be 0).
    """
    ev = events.reset_index(drop=True)
    name = _short(ev["event"])
    sel = name.isin([PC_TRY, PC_TRY_RET, PC_FORCE, PC_UNCHARGE]) & ~ev["event"].astype(str).eq(MARKER_EVENT)
    pc = ev[sel]
    kinds = name[sel].to_numpy()
    counters = _arg(pc["args"], _ARG_COUNTER, 16).to_numpy(dtype=object, na_value=None)
    oks = _arg(pc["args"], _ARG_OK, 10).to_numpy(dtype=object, na_value=None)
    rets = pc["ret"].to_numpy(dtype=object, na_value=None)
    cgids = pc["cgroup_id"].to_numpy(dtype=object, na_value=None)
    pages = pc["pages"].to_numpy(dtype=object, na_value=None)
    pids = pc["pid"].to_numpy(dtype=object, na_value=None)
    cpus = pc["cpu"].to_numpy(dtype=object, na_value=None)
    ts = pc["ts_ns"].to_numpy()
    rows = pc.index.to_numpy()

    out: list[tuple] = []
    stacks: dict[tuple, list[tuple]] = {}
    unpaired_returns = mismatches = 0
    for i in range(len(pc)):
        k = kinds[i]
        key = _thread_key(pids[i], cpus[i])
        if k == PC_TRY:
            stacks.setdefault(key, []).append((counters[i], cgids[i], pages[i]))
            continue
        if k == PC_TRY_RET:
            st = stacks.get(key)
            if not st:
                unpaired_returns += 1
                if counters[i] is None or pages[i] is None:
                    continue
                counter, cgid, nr = counters[i], cgids[i], pages[i]
            else:
                counter, cgid, nr = st.pop()
                if counters[i] is not None and (counters[i] != counter or pages[i] != nr):
                    mismatches += 1
            ok = oks[i] if oks[i] is not None else rets[i]
            okb = bool(ok) if ok is not None else False
            out.append((rows[i], ts[i], cpus[i], pids[i], TRY_OK if okb else TRY_FAILED, counter, cgid, nr,
                        int(nr) if okb else 0))
            continue
        sign = 1 if k == PC_FORCE else -1
        out.append((rows[i], ts[i], cpus[i], pids[i], FORCE if k == PC_FORCE else UNCHARGE, counters[i], cgids[i],
                    pages[i], sign * int(pages[i])))
    df = pd.DataFrame(out, columns=["row", "ts_ns", "cpu", "pid", "kind", "counter", "cgroup_id", "pages", "signed_pages"])
    df = df.astype({"row": "int64", "ts_ns": "int64", "cpu": "Int32", "pid": "Int32", "kind": "category",
                    "counter": "UInt64", "cgroup_id": "UInt64", "pages": "Int64", "signed_pages": "int64"})
    seen = set(kinds)
    df.attrs.update(
        events_not_seen=[n for n in (PC_TRY, PC_TRY_RET, PC_FORCE, PC_UNCHARGE) if n not in seen],
        unpaired_entries=sum(len(s) for s in stacks.values()),
        unpaired_returns=unpaired_returns,
        entry_return_mismatches=mismatches,
    )
    return df
