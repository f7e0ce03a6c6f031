"""Plots of the reports and snapshots (``--plot FILE.png|FILE.svg``), drawn with matplotlib.

matplotlib is imported inside the functions, only when a plot is asked for (the CLI starts
without it), and draws on its Agg canvas (no display, no pyplot global state). Every plot
draws the tables the command's ``--json`` prints, never numbers of its own:

* :func:`plot_force` — ``report force --truth``: each memcg of the JSON's ``steps`` (the
  memcgs with a forced or refused charge; not the root, which has no memory.current): its
  memory.current at every step of the run (truth) and memory.max, with the steps' forced
  charges (at the JSON's ``memory_current_bytes``), the peak inside the step
  (``memory_max_bytes + peak_over_max_bytes``) and refused charges marked;
* :func:`plot_recharge_effects` — ``report recharge`` (effects): the JSON's ``steps``
  (old payer's own charge, the new generation, their combination, the double charge) per step,
  the peak double charge marked, and with a capture its peak inside the steps;
* :func:`plot_recharge_whatif` — ``report recharge --to`` (what-if): the pre-charge check's
  ``levels``: memory.current plus the bytes that would arrive, against memory.max/high;
* :func:`plot_owner_states` — ``report leftover`` (its JSON ``memcgs``) and ``snapshot``:
  per memcg charged, the BPF bytes charged to it stacked by the owner state of the map
  (online, ghost, dying, reparented, none);
* :func:`plot_diff` — two runs side by side on one y axis (for ``memtrace diff``).

Every data artist has a ``gid`` naming what it draws (``current:/pod/genf``, ``forced:/pod``,
``reparented:/pod``, ...) and bar containers are labelled with their owner state, so the tests
read the plotted values back from the figure. Values are drawn in the unit the y (or x) axis
label names: ``B``, ``KiB`` or ``MiB`` (``(KiB)`` in the label), a power of two, so the bytes
come back exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from memtrace.errors import InputError

#: file types --plot writes, by suffix
SUFFIXES = (".png", ".svg")
#: owner states in the order bars are stacked (memtrace.analyses.leftover.OWNER_STATES)
STATE_COLORS = {"online": "#4c72b0", "ghost": "#8172b3", "dying": "#c44e52", "reparented": "#dd8452", "none": "#937860"}
_DPI = 100


def check_plot_path(path) -> Path:
    """``path`` as a Path when memtrace can write a plot there (a .png or .svg in a folder that
    exists), else an InputError (exit 2): called before any work, so a bad --plot costs nothing."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise InputError(f"--plot {str(path)!r}: give a file ending in .png or .svg")
    d = p.parent if str(p.parent) else Path(".")
    if not d.is_dir():
        raise InputError(f"--plot {str(path)!r}: directory {d} does not exist")
    return p


def save(fig, path) -> Path:
    """Render ``fig`` as the suffix of ``path`` says (png or svg) and write it atomically: it is
    rendered in memory first, so a failure leaves no file (and an old one untouched)."""
    from memtrace.tables.atomic import write_bytes

    p = check_plot_path(path)
    fmt = p.suffix.lower()[1:]
    buf = io.BytesIO()
    # no date in an SVG, so the same input draws the same file
    fig.savefig(buf, format=fmt, dpi=_DPI, metadata={"Date": None} if fmt == "svg" else None)
    write_bytes(buf.getvalue(), p)
    return p


def _figure(width: float, height: float, ncols: int = 1, sharey: bool = False):
    import matplotlib

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "memtrace"  # stable ids in SVG output
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0]
    return fig, list(axes)


def unit_for(max_bytes) -> tuple[str, int]:
    """(name, bytes) of the unit an axis whose largest value is ``max_bytes`` is drawn in."""
    m = 0 if max_bytes is None or pd.isna(max_bytes) else abs(float(max_bytes))
    for name, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if m >= div:
            return name, div
    return "B", 1


def _nb(v) -> str:
    """Bytes for an annotation: 212 KiB, 2.6 MiB (the tables' rounding)."""
    from memtrace.render.snapshot import _b

    return _b(v)


def _floats(values, div: int) -> list[float]:
    return [float("nan") if v is None or pd.isna(v) else int(v) / div for v in values]


def _grid(ax) -> None:
    ax.grid(True, axis="y", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)


def _step_ticks(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35 if len(labels) <= 12 else 55, ha="right", rotation_mode="anchor",
                       fontsize=8 if len(labels) <= 12 else 7)


# -- force ------------------------------------------------------------------------------------


def plot_force(steps: pd.DataFrame, truth: pd.DataFrame, path=None, title: str | None = None):
    """The force report's plot; returns the Figure (and writes it when ``path`` is given).

    ``steps``: ``memtrace.analyses.force.per_step`` (the JSON's ``steps``); ``truth``: the run's
    truth table. One line per memcg of ``steps`` with a memory.current (gid ``current:PATH``:
    its memory.current at every step of the truth, NaN where the memcg did not exist), its
    memory.max where it has one (``max:PATH``), and markers at the steps of ``steps``: forced
    charges (``forced:PATH``, at ``memory_current_bytes``, annotated with the forcing calls
    and bytes), the highest point inside the step (``peak:PATH``, ``memory_max_bytes +
    peak_over_max_bytes``, from the capture) and refused charges (``refused:PATH``)."""
    order = truth.drop_duplicates("step").sort_values("step")
    step_ids = [int(s) for s in order["step"]]
    pos = {s: i for i, s in enumerate(step_ids)}
    withcur = steps[steps["memory_current_bytes"].notna()] if len(steps) else steps
    paths = list(dict.fromkeys(withcur["path"].astype(str))) if len(withcur) else []
    mine = truth[truth["path"].astype(str).isin(paths)]
    top = pd.concat([mine["memory_current_bytes"], mine["memory_max_bytes"]]).max() if len(mine) else 0
    uname, div = unit_for(top)
    fig, (ax,) = _figure(11, 4.8)
    colors = [f"C{i}" for i in range(10)]
    for i, p in enumerate(paths):
        c = colors[i % len(colors)]
        t = truth[truth["path"].astype(str).eq(p)].set_index("step")
        cur = [t["memory_current_bytes"].get(s, pd.NA) for s in step_ids]
        ax.plot(range(len(step_ids)), _floats(cur, div), color=c, marker=".", label=f"{p} memory.current", gid=f"current:{p}")
        mx = [t["memory_max_bytes"].get(s, pd.NA) for s in step_ids]
        if any(not pd.isna(v) for v in mx):
            ax.plot(range(len(step_ids)), _floats(mx, div), color=c, linestyle="--", linewidth=1,
                    label=f"{p} memory.max", gid=f"max:{p}")
        rows = withcur[withcur["path"].astype(str).eq(p)]
        f = rows[rows["forced_pages"].fillna(0) > 0]
        if len(f):
            xs = [pos[int(s)] for s in f["step"]]
            ax.plot(xs, _floats(f["memory_current_bytes"], div), linestyle="", marker="^", markersize=10, color=c,
                    markeredgecolor="black", label=f"{p} forced charges", gid=f"forced:{p}")
            for x, r in zip(xs, f.itertuples(index=False)):
                ax.annotate(f"{int(r.force_charges):,} forced, {_nb(r.forced_bytes)}", (x, int(r.memory_current_bytes) / div),
                            textcoords="offset points", xytext=(-12, -4 - 13 * i), ha="right", va="top", fontsize=8,
                            color=c)
        pk = rows[rows["peak_over_max_bytes"].notna() & rows["memory_max_bytes"].notna()]
        if len(pk):
            ax.plot([pos[int(s)] for s in pk["step"]],
                    _floats([int(m) + int(o) for m, o in zip(pk["memory_max_bytes"], pk["peak_over_max_bytes"])], div),
                    linestyle="", marker="_", markersize=16, markeredgewidth=2, color=c,
                    label=f"{p} peak inside the step (capture)", gid=f"peak:{p}")
        rf = rows[rows["refused_charges"].fillna(0) > 0]
        if len(rf):
            xs = [pos[int(s)] for s in rf["step"]]
            ax.plot(xs, _floats(rf["memory_current_bytes"], div), linestyle="", marker="X", markersize=10, color=c,
                    markeredgecolor="black", label=f"{p} refused charges (ENOMEM)", gid=f"refused:{p}")
            for x, r in zip(xs, rf.itertuples(index=False)):
                ax.annotate(f"{int(r.refused_charges):,} refused", (x, int(r.memory_current_bytes) / div),
                            textcoords="offset points", xytext=(8, -14 - 12 * i), fontsize=8, color=c)
    if not paths:
        ax.text(0.5, 0.5, "no forced or refused charge on a memcg with a memory.current", ha="center",
                transform=ax.transAxes)
    _step_ticks(ax, [f"{s} {n}" for s, n in zip(order["step"], order["step_name"].astype(str))])
    ax.set_xlabel("lab step (counters read after the step)")
    ax.set_ylabel(f"memory.current ({uname})")
    ax.set_ylim(bottom=0, top=max(float(top) / div * 1.12, 1) if not pd.isna(top) else None)
    _grid(ax)
    ax.set_title(title or "forced and refused charges: memory.current per step", fontsize=11)
    if paths:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    if path is not None:
        save(fig, path)
    return fig


# -- recharge ---------------------------------------------------------------------------------

#: effects columns drawn, their labels (formatted with the summary) and line styles
_EFFECT_LINES = (
    ("old_own_bytes", "{old} own charge (old payer)", "-"),
    ("new_bytes", "{new} memory.current (new generation)", "-"),
    ("combined_bytes", "combined", "-"),
    ("double_charge_bytes", "double charge (combined above its start)", ":"),
)


def plot_recharge_effects(summary: dict, steps: pd.DataFrame, path=None, title: str | None = None):
    """The recharge report's plot (effects); returns the Figure.

    ``summary`` and ``steps``: ``memtrace.analyses.recharge.effects`` (the JSON's ``summary``
    and ``steps``). One line per column of ``steps`` (gid = the column name), the peak double
    charge marked on the double-charge line at ``summary['peak_step']`` (gid ``peak``), and
    with a capture the combined charge's peak inside the steps as a level (gid
    ``capture_peak``: the first step's combined charge + ``capture_peak_double_charge``)."""
    cols = [c for c, _, _ in _EFFECT_LINES]
    top = max([int(steps[c].max()) for c in cols if len(steps)] + [0])
    if summary.get("capture_peak_double_charge") is not None and len(steps):
        top = max(top, int(steps["combined_bytes"].iloc[0]) + int(summary["capture_peak_double_charge"]))
    uname, div = unit_for(top)
    fig, (ax,) = _figure(11, 4.8)
    x = range(len(steps))
    for c, label, style in _EFFECT_LINES:
        if c == "combined_bytes":
            label = f"combined ({summary['old']} memory.current)" if summary.get("nested") else "combined (old own + new)"
        ax.plot(x, _floats(steps[c], div), linestyle=style, marker=".", label=label.format(**summary), gid=c)
    names = list(steps["step_name"].astype(str))
    if summary.get("peak_step") in names and summary.get("peak_double_charge"):
        i = names.index(summary["peak_step"])
        ax.plot([i], [int(summary["peak_double_charge"]) / div], linestyle="", marker="o", markersize=11,
                markerfacecolor="none", markeredgecolor="red", markeredgewidth=2,
                label=f"peak double charge at the steps: {_nb(summary['peak_double_charge'])}", gid="peak")
    if summary.get("capture_peak_double_charge") is not None and len(steps):
        level = int(steps["combined_bytes"].iloc[0]) + int(summary["capture_peak_double_charge"])
        ax.plot([0, len(steps) - 1], [level / div] * 2, color="red", linestyle="--", linewidth=1,
                label=f"combined at its peak inside the steps (capture): {_nb(level)}", gid="capture_peak")
    _step_ticks(ax, names)
    ax.set_xlabel("lab step (counters read after the step)")
    ax.set_ylabel(f"charged ({uname})")
    ax.set_ylim(bottom=0, top=max(top / div * 1.08, 1))
    _grid(ax)
    ax.set_title(title or f"recharge effects: {summary['old']} -> {summary['new']}", fontsize=11)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    if path is not None:
        save(fig, path)
    return fig


def plot_recharge_whatif(levels: pd.DataFrame, verdict: str, path=None, title: str | None = None):
    """The recharge report's plot (what-if); returns the Figure. Per level of ``levels``
    (``memtrace.analyses.recharge.precharge_levels``, the JSON's ``levels``): a bar of
    memory.current (gid ``current:PATH``) with the bytes that would arrive stacked on it
    (``change:PATH``), and memory.max / memory.high as ticks (``max:PATH``, ``high:PATH``)."""
    vals = list(levels["memory_current_bytes"] + levels["change"]) + [v for v in levels["memory_max_bytes"] if v is not None and not pd.isna(v)]
    uname, div = unit_for(max(vals + [0]))
    fig, (ax,) = _figure(8, 1.6 + 0.6 * max(len(levels), 1))
    ys = range(len(levels))
    paths = list(levels["path"].astype(str))
    cur = ax.barh(ys, _floats(levels["memory_current_bytes"], div), color="#999999", label="memory.current")
    chg = ax.barh(ys, _floats(levels["change"], div), left=_floats(levels["memory_current_bytes"], div),
                  color="#dd8452", label="would arrive")
    for p, a, b in zip(paths, cur, chg):
        a.set_gid(f"current:{p}")
        b.set_gid(f"change:{p}")
    for col, mk, lab in (("memory_max_bytes", "|", "memory.max"), ("memory_high_bytes", "4", "memory.high")):
        got = [(y, v) for y, v in zip(ys, levels[col]) if v is not None and not pd.isna(v)]
        if got:
            for y, v in got:
                ax.plot([int(v) / div], [y], linestyle="", marker=mk, markersize=18, markeredgewidth=2, color="red" if col == "memory_max_bytes" else "purple",
                        gid=f"{col.split('_')[1]}:{paths[y]}", label=lab if y == got[0][0] else None)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(paths, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(f"bytes ({uname})")
    ax.set_xlim(left=0)
    ax.grid(True, axis="x", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_title(title or f"recharge what-if: pre-charge check: {verdict}", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    if path is not None:
        save(fig, path)
    return fig


# -- snapshot: BPF bytes by owner state ---------------------------------------------------------


def plot_owner_states(memcgs: pd.DataFrame, path=None, title: str | None = None):
    """Maps' charged bytes per memcg charged, stacked by the map's owner state; returns the Figure.

    ``memcgs``: ``memtrace.analyses.leftover.leftover_memcgs`` (the leftover report's JSON
    ``memcgs``), whose ``bpf_<state>_bytes`` are the BPF bytes charged to the memcg itself (not
    its descendants) by maps of each owner state. Memcgs with no BPF bytes are left out. One
    bar container per owner state (label = the state), one bar per memcg (gid
    ``STATE:PATH``), drawn in the order of ``STATE_COLORS``; the bar's total is written at its
    end."""
    from memtrace.analyses.leftover import OWNER_STATES

    cols = [f"bpf_{s}_bytes" for s in OWNER_STATES]
    m = memcgs[memcgs[cols].sum(axis=1) > 0].sort_values("path", kind="stable")
    total = m[cols].sum(axis=1)
    uname, div = unit_for(total.max() if len(m) else 0)
    fig, (ax,) = _figure(9, 1.8 + 0.45 * max(len(m), 1))
    paths = list(m["path"].astype(str))
    ys = list(range(len(m)))
    left = [0.0] * len(m)
    for s in OWNER_STATES:
        w = _floats(m[f"bpf_{s}_bytes"], div)
        bars = ax.barh(ys, w, left=left, color=STATE_COLORS[s], label=s, edgecolor="white", linewidth=0.5)
        for p, b in zip(paths, bars):
            b.set_gid(f"{s}:{p}")
        left = [a + b for a, b in zip(left, w)]
    for y, t in zip(ys, total):
        ax.annotate(f" {_nb(int(t))}", (int(t) / div, y), va="center", fontsize=8)
    if not len(m):
        ax.text(0.5, 0.5, "no BPF map bytes charged to any memcg", ha="center", transform=ax.transAxes)
    ax.set_yticks(ys)
    ax.set_yticklabels(paths, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(f"BPF map bytes charged to the memcg itself ({uname})")
    ax.set_xlim(left=0, right=(max(left) * 1.15 if left and max(left) > 0 else 1))
    ax.grid(True, axis="x", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_title(title or "BPF map charge per memcg, by the owner state of the map", fontsize=11)
    ax.legend(title="owner state", fontsize=8, title_fontsize=8, loc="lower right")
    if path is not None:
        save(fig, path)
    return fig


def plot_snapshot(snap, path=None, title: str | None = None):
    """``memtrace snapshot --plot``: :func:`plot_owner_states` of the snapshot's tables (the
    split ``report leftover`` prints; per memcg its bars add up to the snapshot JSON's
    ``bpf_bytes``)."""
    from memtrace.analyses.leftover import leftover_memcgs

    k = snap.header.get("kernel", {}).get("release")
    return plot_owner_states(leftover_memcgs(snap.maps, snap.allocations, snap.memcgs), path,
                             title or f"BPF map charge per memcg, by the owner state of the map ({k})")


# -- diff -------------------------------------------------------------------------------------

#: the columns of a series for plot_diff
SERIES_COLUMNS = ("x", "label", "bytes")


def truth_series(truth: pd.DataFrame, paths=None) -> pd.DataFrame:
    """A series for :func:`plot_diff` from a lab truth table (``memtrace.tables.lab_truth``):
    ``x`` = step name, ``label`` = cgroup path, ``bytes`` = memory.current, in step order.
    ``paths``: the cgroups to keep (default: every one with a memory.current, i.e. not the root)."""
    t = truth.sort_values(["step", "path"], kind="stable")
    t = t[t["memory_current_bytes"].notna()]
    if paths is not None:
        t = t[t["path"].astype(str).isin(list(paths))]
    return pd.DataFrame({"x": t["step_name"].astype(str).to_numpy(), "label": t["path"].astype(str).to_numpy(),
                         "bytes": t["memory_current_bytes"].astype("int64").to_numpy()})


#: which diff rows a diff plot draws, first found wins: memory.current per step (truth), the
#: net page-counter movement per step (capture), BPF bytes per memcg (snapshot)
DIFF_PLOT_METRICS = (("truth", "memory_current_bytes", "memory.current"), ("capture", "net_bytes", "net charged"),
                     ("snapshot", "bpf_bytes", "BPF bytes"))


def diff_series(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(base series, new series, y label) for :func:`plot_diff` from a diff table
    (``memtrace.diffing`` rows): the memcg rows of the first metric of ``DIFF_PLOT_METRICS``
    the table has, rows no rule watches (``off``: the root, the lab's settle cgroup) left out;
    ``x`` is the step (``snapshot`` for a snapshot), a side without the row has no point."""
    m = rows[rows["entity"].astype(str).eq("memcg")]
    for facet, metric, ylabel in DIFF_PLOT_METRICS:
        sel = m[m["facet"].astype(str).eq(facet) & m["metric"].astype(str).eq(metric)]
        sel = sel[sel["watched"].to_numpy(dtype=bool)]
        if len(sel):
            break
    else:
        raise ValueError("the diff has no memcg rows to plot (memory.current, net charged bytes or BPF bytes)")
    sel = sel.sort_values(["step_order", "name"], kind="stable")
    x = sel["step"].astype(str).where(sel["step"].astype(str) != "", "snapshot")

    def side(col: str) -> pd.DataFrame:
        v = sel[col]
        keep = v.notna().to_numpy()
        return pd.DataFrame({"x": x[keep].to_numpy(), "label": sel["name"].astype(str)[keep].to_numpy(),
                             "bytes": v[keep].astype("int64").to_numpy()})

    return side("base"), side("new"), ylabel


def plot_diff(base_series: pd.DataFrame, new_series: pd.DataFrame, path=None, *, base_title: str = "base",
              new_title: str = "new", ylabel: str = "memory.current", title: str | None = None):
    """Base and new side by side, on one shared y axis; returns the Figure (and writes it to
    ``path``, .png or .svg, atomically, when given).

    Each series is a DataFrame with the columns ``x`` (str: a step name, or any category in
    the order it should be drawn), ``label`` (str: what one line is, e.g. a memcg path or a map
    name) and ``bytes`` (int). :func:`truth_series` makes one from a lab truth table. The x
    axis of both panels is the union of the two series' ``x`` values, base's order first then
    new's extra ones, so a step is at the same place in both; a line has NaN (a gap) where its
    series has no row for an x. A label has the same colour in both panels; a label only one
    side has is drawn there alone (and named "only in base/new" in the legend). Lines carry
    the gid ``base:LABEL`` / ``new:LABEL``; the axis label names the unit (B, KiB or MiB)."""
    for name, s in (("base_series", base_series), ("new_series", new_series)):
        missing = [c for c in SERIES_COLUMNS if c not in s]
        if missing:
            raise ValueError(f"plot_diff: {name} lacks the column(s) {', '.join(missing)}")
    xs = list(dict.fromkeys(list(base_series["x"].astype(str)) + list(new_series["x"].astype(str))))
    labels = list(dict.fromkeys(list(base_series["label"].astype(str)) + list(new_series["label"].astype(str))))
    color = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    top = max([int(s["bytes"].max()) for s in (base_series, new_series) if len(s)] + [0])
    uname, div = unit_for(top)
    fig, axes = _figure(12, 5, ncols=2, sharey=True)
    sides = (("base", base_series, base_title), ("new", new_series, new_title))
    for ax, (side, s, sub) in zip(axes, sides):
        other = new_series if side == "base" else base_series
        other_labels = set(other["label"].astype(str))
        for lab in labels:
            rows = s[s["label"].astype(str).eq(lab)]
            if rows.empty:
                continue
            by_x = dict(zip(rows["x"].astype(str), rows["bytes"]))
            ys = _floats([by_x.get(x) for x in xs], div)
            ax.plot(range(len(xs)), ys, marker=".", color=color[lab], gid=f"{side}:{lab}",
                    label=lab if lab in other_labels else f"{lab} (only in {side})")
        _step_ticks(ax, xs)
        ax.set_title(sub, fontsize=10)
        _grid(ax)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel(f"{ylabel} ({uname})")
    if title:
        fig.suptitle(title, fontsize=11)
    if path is not None:
        save(fig, path)
    return fig
