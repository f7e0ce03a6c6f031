"""Rendering of the leftover report (memtrace.analyses.leftover): rich tables, JSON envelope."""

from __future__ import annotations

import json

import pandas as pd
from rich.markup import escape
from rich.table import Table

from memtrace.render.snapshot import _b, _default, _records, _s

JSON_SCHEMA = "memtrace.report.leftover/1"


def maps_table(rows: pd.DataFrame, title: str) -> Table:
    t = Table(title=title)
    for col, j in (("id", "right"), ("name", "left"), ("type", "left"), ("owner state", "left"),
                   ("pays now", "left"), ("original", "left"), ("charged", "right"), ("uncharged", "right"),
                   ("charged to", "left"), ("RFC recharge", "left"), ("pins", "left")):
        t.add_column(col, justify=j)
    for r in rows.itertuples(index=False):
        t.add_row(str(r.map_id), _s(r.name), _s(r.type),
                  ("[bold]" + escape(r.owner_state) + "[/bold]") if r.leftover else _s(r.owner_state),
                  _s(r.owner_path), _s(r.original_path), _b(r.charged_bytes), _b(r.uncharged_bytes),
                  escape(" ".join(f"{p.split('=')[0]} {_b(int(p.split('=')[1]))}" for p in str(r.charged_to).split(";") if p)),
                  "yes" if r.recharge_candidate else f"no ({escape(str(r.owner_path)) if r.owner_path == '/' else escape(str(r.owner_state))})",
                  _s(str(r.pins).replace(";", " ")))
    return t


def memcgs_table(rows: pd.DataFrame) -> Table:
    t = Table(title="memcgs: own usage and the BPF charge in it, by the owner state of the map")
    for col in ("path", "state", "memory.current", "own", "BPF online", "BPF ghost", "BPF dying",
                "BPF reparented", "leftover", "share of own", "leftover in subtree"):
        t.add_column(col, justify="left" if col in ("path", "state") else "right")
    for r in rows.itertuples(index=False):
        if r.memory_current_bytes == 0 and r.leftover_subtree_bytes == 0 and r.path != "/":
            continue
        t.add_row(_s(r.path), _s(r.state), _b(r.memory_current_bytes), _b(r.own_bytes), _b(r.bpf_online_bytes),
                  _b(r.bpf_ghost_bytes), _b(r.bpf_dying_bytes), _b(r.bpf_reparented_bytes), _b(r.leftover_bytes),
                  "-" if pd.isna(r.leftover_share) else f"{float(r.leftover_share):.1%}", _b(r.leftover_subtree_bytes))
    return t


def where_table(rows: pd.DataFrame) -> Table | None:
    """Where each memcg's own usage went (None when the snapshot has no memory.stat)."""
    if "unexplained_bytes" not in rows:
        return None
    t = Table(title="where each memcg's own usage went (memory.current less its children's)")
    for col in ("path", "own", "BPF maps", "of which leftover", "anon", "file", "other kernel", "sock", "stocks",
                "unexplained"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for r in rows.itertuples(index=False):
        if r.own_bytes == 0 and r.path != "/":
            continue
        bpf = r.bpf_online_bytes + r.bpf_ghost_bytes + r.bpf_dying_bytes + r.bpf_reparented_bytes + r.bpf_none_bytes
        t.add_row(_s(r.path), _b(r.own_bytes), _b(bpf), _b(r.leftover_bytes), _b(r.own_anon_bytes), _b(r.own_file_bytes),
                  _b(r.kernel_other_bytes), _b(getattr(r, "own_sock_bytes", None)), _b(getattr(r, "stock_bytes", None)),
                  _b(r.unexplained_bytes))
    return t


def charged_here_table(rows: pd.DataFrame, path: str) -> Table:
    t = Table(title=f"everything BPF charged to {escape(path)} (not its descendants)")
    for col, j in (("map id", "right"), ("name", "left"), ("owner state", "left"), ("owner", "left"),
                   ("kind", "left"), ("allocations", "right"), ("charged", "right")):
        t.add_column(col, justify=j)
    for r in rows.itertuples(index=False):
        t.add_row(str(r.map_id), _s(r.name), _s(r.owner_state), _s(r.owner_path), _s(r.kind), f"{int(r.allocations):,}",
                  _b(r.charged_bytes))
    return t


def summary_lines(maps: pd.DataFrame, memcgs: pd.DataFrame) -> list[str]:
    """One sentence per ancestor carrying leftover charge, e.g. '/pod carries 2.6 MiB ...',
    and the RFC rule's reasons, once each."""
    lines = [f"RFC recharge {'yes' if c else 'no'}: {why} ({n} map(s))"
             for (c, why), n in maps.groupby(["recharge_candidate", "recharge_reason"]).size().items()]
    left = memcgs[memcgs["leftover_bytes"] > 0]
    for r in left.itertuples(index=False):
        n = int(maps[maps["charged_to"].str.contains(f"{r.path}=", regex=False) & maps["leftover"]].shape[0])
        lines.append(f"{r.path} ({r.state}) carries {_b(r.leftover_bytes)} of leftover BPF charge from {n} map(s)"
                     + ("" if pd.isna(r.leftover_share) else f": {float(r.leftover_share):.1%} of its own usage"))
    return lines


def json_envelope(header: dict, maps: pd.DataFrame, memcgs: pd.DataFrame, finding: str | None,
                  charged_here: pd.DataFrame | None = None) -> str:
    env = {
        "schema": JSON_SCHEMA,
        "snapshot": {k: header.get(k) for k in ("kernel", "target", "taken_at", "complete", "faults") if k in header},
        "finding": finding,
        "maps": _records(maps),
        "memcgs": _records(memcgs),
    }
    if charged_here is not None:
        env["charged_here"] = _records(charged_here)
    return json.dumps(env, indent=1, default=_default)
