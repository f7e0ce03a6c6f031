"""Benchmark `memtrace snapshot` on a 1M-element prealloc hash and a 1M-element
no-prealloc hash (lab scenario bench/snapshot_big.sh, guest with 2 GiB).

Reports wall time and peak RSS of the snapshot as ratios against, on the same vmcore:
  (a) read-once: reading the same bytes once through drgn (one prog.read per area or
      object, the areas taken from the snapshot's own allocation table), and
  (b) naive: a per-element drgn Object walk (drgn's hlist_nulls helpers, vmalloc_to_page,
      page->memcg_data / slab vector through Objects), timed on the first N elements
      of each map and extrapolated linearly.
Each measurement runs in its own process, so peak RSS (ru_maxrss) is its own.

    python bench/snapshot.py [--run DIR] [--naive-sample 20000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _open(run: Path):
    from memtrace.sources.snapshot import open_target

    meta = json.loads((run / "meta.json").read_text())
    return open_target(vmcore=run / "vmcore", vmlinux=Path(meta["kernel"]["vmlinux"]))


def m_snapshot(run: Path, extra: dict) -> dict:
    from memtrace.sources.snapshot import take_snapshot

    prog, target = _open(run)
    t = time.perf_counter()
    s = take_snapshot(prog, target)
    dt = time.perf_counter() - t
    a = s.allocations
    # the areas (a) will read: merged vmalloc runs, objects, pages
    areas = []
    for (mid, role, kind), g in a.groupby(["map_id", "role", "kind"]):
        addr = g["address"].to_numpy()
        size = g["size_bytes"].to_numpy()
        if kind == "vmalloc_page":
            order = addr.argsort()
            addr, size = addr[order], size[order]
            start, end = int(addr[0]), int(addr[0] + size[0])
            for x, z in zip(addr[1:].tolist(), size[1:].tolist()):
                if x == end:
                    end += z
                else:
                    areas.append((start, end - start))
                    start, end = x, x + z
            areas.append((start, end - start))
        elif kind in ("slab_object", "large_kmalloc", "page"):
            areas += list(zip(addr.tolist(), size.tolist()))
    Path(extra["areas"]).write_text(json.dumps(areas))
    return {"s": dt, "rows": len(a), "maps": len(s.maps), "charged_bytes": int(a["charged_bytes"].sum())}


def m_readonce(run: Path, extra: dict) -> dict:
    prog, _ = _open(run)
    areas = json.loads(Path(extra["areas"]).read_text())
    t = time.perf_counter()
    total = 0
    for addr, size in areas:
        off = 0
        while off < size:  # cap single reads at 64 MiB
            n = min(size - off, 64 << 20)
            total += len(prog.read(addr + off, n))
            off += n
    return {"s": time.perf_counter() - t, "bytes": total, "areas": len(areas)}


def m_naive(run: Path, extra: dict) -> dict:
    from drgn import Object, cast, container_of
    from drgn.helpers.linux.bpf import bpf_map_for_each
    from drgn.helpers.linux.list_nulls import hlist_nulls_for_each_entry
    from drgn.helpers.linux.mm import vmalloc_to_page, virt_to_page, compound_head

    prog, _ = _open(run)
    sample = extra["sample"]
    out = {}
    for m in bpf_map_for_each(prog):
        name = m.name.string_().decode()
        htab = container_of(m, "struct bpf_htab", "map")
        t = time.perf_counter()
        n = 0
        charged = 0
        if htab.elems:
            es = htab.elem_size.value_()
            total = m.max_entries.value_()
            for i in range(min(sample, total)):
                addr = htab.elems.value_() + i * es
                page = vmalloc_to_page(prog, addr)
                md = page.memcg_data.value_()
                charged += bool(md & 2)
                n += 1
        else:
            total = htab.count.counter.value_() if not htab.use_percpu_counter else 1_000_000
            done = False
            for b in range(htab.n_buckets.value_()):
                for e in hlist_nulls_for_each_entry("struct htab_elem", htab.buckets[b].head.address_of_(), "hash_node"):
                    page = compound_head(virt_to_page(prog, e.value_()))
                    slab = cast("struct slab *", page)
                    # slab->obj_exts since Linux kernel commit 21c690a349ba ("mm: introduce slabobj_ext
                    # to support slab object extensions") (in v6.10); slab->memcg_data before
                    try:
                        vec = slab.obj_exts.value_() & ~7
                    except AttributeError:
                        vec = slab.memcg_data.value_() & ~3
                    cache = slab.slab_cache
                    base = prog["page_offset_base"].value_() + (
                        (page.value_() - prog["vmemmap"].value_()) // prog.type("struct page").size << 12
                    )
                    idx = (e.value_() - base) // cache.size.value_()
                    oc = Object(prog, "struct obj_cgroup **", vec)[idx] if vec else None
                    charged += bool(oc is not None and oc.value_())
                    n += 1
                    if n >= sample:
                        done = True
                        break
                if done:
                    break
        dt = time.perf_counter() - t
        out[name] = {"sampled": n, "total": total, "s_sample": dt, "s_extrapolated": dt * total / max(n, 1)}
    out["s"] = sum(v["s_extrapolated"] for v in out.values() if isinstance(v, dict))
    return out


MEASURES = {"snapshot": m_snapshot, "readonce": m_readonce, "naive": m_naive}


def _child(which: str, run: Path, extra: dict) -> dict:
    r = subprocess.run(
        [sys.executable, __file__, "--child", which, "--run", str(run), "--extra", json.dumps(extra)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise SystemExit(f"bench child {which} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, help="an existing lab run of bench/snapshot_big.sh (else one is made)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/memtrace-bench-snapshot"))
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--naive-sample", type=int, default=20000)
    ap.add_argument("--child")
    ap.add_argument("--extra", default="{}")
    a = ap.parse_args()
    if a.child:
        res = MEASURES[a.child](a.run, json.loads(a.extra))
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(res))
        return
    run = a.run
    if run is None:
        from memtrace.lab.run import run as lab_run

        run = a.out / f"big-{a.kernel}"
        lab_run(str(HERE / "snapshot_big.sh"), a.kernel, run, memory_mb=2048, force=True, scenario_timeout=3600)
    extra = {"areas": str(a.out / "areas.json"), "sample": a.naive_sample}
    a.out.mkdir(parents=True, exist_ok=True)
    snap = _child("snapshot", run, extra)
    once = _child("readonce", run, extra)
    naive = _child("naive", run, extra)
    report = {
        "run": str(run),
        "snapshot": snap,
        "read_once": once,
        "naive": naive,
        "time_ratio_vs_read_once": round(snap["s"] / once["s"], 2),
        "time_speedup_vs_naive": round(naive["s"] / snap["s"], 1),
        "peak_rss_ratio_vs_read_once": round(snap["peak_rss_mb"] / once["peak_rss_mb"], 2),
        "peak_rss_ratio_vs_naive": round(snap["peak_rss_mb"] / naive["peak_rss_mb"], 2),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
