"""One side of `memtrace diff`: whatever a path holds, loaded (``memtrace.tables.diff.DiffInput``).

* a **folder** is a lab output folder: ``truth.json`` (required), its capture (``trace.txt``,
  else ``trace.dat``) and, for the snapshot facet, a ``*.snapshot`` file (or one named
  ``snapshot``) or, with ``vmlinux``, its ``vmcore`` walked with drgn; a vmcore without either
  is left out, with a note;
* a **snapshot file** (a zip with ``header.json``);
* a **truth.json** alone (schema ``memtrace.lab.truth/1``);
* anything else is a **capture** in any format ``memtrace ingest`` reads; its run's truth is
  ``truth`` when given, else a file beside it: ``CAPTURE.truth.json``, ``STEM.truth.json`` for
  each shorter stem of its name (``force-6.1.page_counter.txt`` -> ``force-6.1.truth.json``),
  or ``truth.json`` in its folder. A truth of another run is refused.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from memtrace.errors import InputError
from memtrace.tables.diff import DiffInput


def _sidecar_truth(capture: Path) -> Path | None:
    name = capture.name
    cands = [capture.with_name(name + ".truth.json")]
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):
        cands.append(capture.with_name(".".join(parts[:k]) + ".truth.json"))
    cands.append(capture.with_name("truth.json"))
    for c in cands:
        if c.is_file():
            return c
    return None


def _kernel_from_meta(*cands: Path) -> str | None:
    for m in cands:
        if m.is_file():
            try:
                doc = json.loads(m.read_text())
                rel = (doc.get("kernel") or {}).get("release")
                if isinstance(rel, str):
                    return rel
            except (OSError, ValueError, AttributeError):
                continue
    return None


def _is_truth_file(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.lstrip()[:1] == b"{" and b"memtrace.lab.truth/1" in head


def _load_truth(inp: DiffInput, path: Path) -> None:
    from memtrace.tables.lab_truth import read_truth_document, truth_frame

    p, doc = read_truth_document(path)
    try:
        inp.truth = truth_frame(doc)
    except InputError as e:
        raise InputError(f"{p}: {e.message}") from None
    inp.truth_doc = doc
    inp.sources["truth"] = str(p)


def _load_capture(inp: DiffInput, path: Path) -> None:
    from memtrace.sources.trace import load_trace

    events, st = load_trace(str(path))
    inp.events = events
    inp.sources["capture"] = str(path)
    for w in st.warnings or []:
        inp.notes.append(f"{path}: {w}")
    if st.lost_events or st.probe_misses:
        inp.notes.append(f"{path}: {st.lost_events} lost events, {st.probe_misses} probe misses: counts may be short")


def load_diff_input(path: str | Path, *, truth: str | Path | None = None, vmlinux: str | Path | None = None) -> DiffInput:
    """Load one side of a diff (see the module's docstring)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        inp = DiffInput(path=str(p), kind="lab folder")
        if not (p / "truth.json").is_file():
            raise InputError(f"{p}: a folder, but not a lab output folder (no truth.json); give a capture, a "
                             "snapshot file or a lab output folder")
        _load_truth(inp, Path(truth) if truth else p / "truth.json")
        inp.kernel = _kernel_from_meta(p / "meta.json")
        cap = next((p / n for n in ("trace.txt", "trace.dat") if (p / n).is_file()), None)
        if cap is not None:
            _load_capture(inp, cap)
            if (p / "trace.txt").is_file() and (p / "trace.dat").is_file():
                inp.notes.append(f"{p}: trace.txt compared; trace.dat (the same run, trace-cmd's instance) not")
        snaps = sorted(p.glob("*.snapshot")) + ([p / "snapshot"] if (p / "snapshot").is_file() else [])
        if len(snaps) > 1:
            raise InputError(f"{p}: {len(snaps)} snapshot files ({', '.join(s.name for s in snaps)}): diff one "
                             "of them directly")
        if snaps:
            from memtrace.tables.snapshot_file import load

            inp.snapshot = load(snaps[0])
            inp.sources["snapshot"] = str(snaps[0])
        elif (p / "vmcore").is_file():
            if vmlinux is None:
                inp.notes.append(f"{p}: vmcore not compared (give --vmlinux, or put a *.snapshot file beside it)")
            else:
                from memtrace.sources.snapshot import open_target, take_snapshot

                prog, target = open_target(live=False, vmcore=p / "vmcore", qmp=None, vmlinux=Path(vmlinux))
                inp.snapshot = take_snapshot(prog, target)
                inp.sources["snapshot"] = str(p / "vmcore")
        return inp
    if zipfile.is_zipfile(p):
        from memtrace.tables.snapshot_file import load

        inp = DiffInput(path=str(p), kind="snapshot")
        inp.snapshot = load(p)
        inp.sources["snapshot"] = str(p)
        inp.kernel = (inp.snapshot.header.get("kernel") or {}).get("release")
        return inp
    if _is_truth_file(p):
        inp = DiffInput(path=str(p), kind="truth")
        _load_truth(inp, p)
        inp.kernel = _kernel_from_meta(p.with_name("meta.json"))
        return inp
    inp = DiffInput(path=str(p), kind="capture")
    _load_capture(inp, p)
    t = Path(truth) if truth else _sidecar_truth(p)
    if t is not None:
        _load_truth(inp, t)
        if truth is None:
            inp.notes.append(f"{p}: its run's truth read from {t}")
    inp.kernel = _kernel_from_meta(Path(str(p) + ".meta.json"), p.with_name("meta.json"))
    return inp


__all__ = ["load_diff_input"]
