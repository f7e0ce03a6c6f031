"""The lab truth table: one row per (step, cgroup) of a lab run's ``truth.json``.

``truth.json`` (schema ``memtrace.lab.truth/1``, written by ``memtrace lab run``) holds the
kernel's own counters, read by the guest right after each step marker. This module turns the
cgroup part of it into a tidy frame, so analyses can join it to an event table without
importing the lab. Read-only and pure JSON: no guest, no QEMU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from memtrace.errors import InputError
from memtrace.tables.events import STRING, Column

TRUTH_SCHEMA = "memtrace.lab.truth/1"

#: The truth table, in column order.
TRUTH_COLUMNS: tuple[Column, ...] = (
    Column("step", "int64", "", False, "step index (the NNN of the `memtrace_step NNN name` marker)"),
    Column("step_name", "string", "", False, "step name"),
    Column("uptime_ns", "int64", "ns", False, "guest /proc/uptime when the step's counters were read (boot clock)"),
    Column("cgroup_id", "UInt64", "", False, "cgroup id (kernfs node id, inode of the cgroup directory)"),
    Column("path", "string", "", False, "cgroup path below /sys/fs/cgroup; the root is `/`"),
    Column("memory_current_bytes", "Int64", "bytes", True, "memory.current (null for the root cgroup, which has none)"),
    Column("memory_max_bytes", "Int64", "bytes", True, "memory.max; null = `max` or no such file"),
    Column("events_max", "Int64", "", True, "memory.events `max`: charge attempts that hit this cgroup's or a descendant's limit"),
    Column("events_local_max", "Int64", "", True, "memory.events.local `max`: the same, for this cgroup's own limit only"),
    Column("populated", "boolean", "", True, "cgroup.events `populated`: the cgroup or a descendant has tasks"),
)

TRUTH_COLUMN_NAMES = tuple(c.name for c in TRUTH_COLUMNS)


def truth_frame(truth: dict) -> pd.DataFrame:
    """The truth table of a parsed ``truth.json`` document."""
    if not isinstance(truth, dict):
        raise InputError(f"not a lab truth document (a JSON {type(truth).__name__}, not an object)")
    if truth.get("schema") != TRUTH_SCHEMA:
        raise InputError(f"not a lab truth document (schema {truth.get('schema')!r}, want {TRUTH_SCHEMA!r})")
    rows = []
    steps = truth.get("steps", [])
    if not isinstance(steps, list):
        raise InputError(f"not a lab truth document: steps is a JSON {type(steps).__name__}, not a list")
    for n, s in enumerate(steps, 1):
        # a value of the wrong JSON type or out of range is the document's fault, named by step
        try:
            for path, cg in s.get("cgroups", {}).items():
                rows.append(
                    {
                        "step": int(s["index"]),
                        "step_name": s["name"],
                        "uptime_ns": int(round(float(s["uptime_s"]) * 1e9)),
                        "cgroup_id": int(cg["id"]),
                        "path": path,
                        "memory_current_bytes": cg.get("memory.current"),
                        "memory_max_bytes": cg.get("memory.max"),
                        "events_max": (cg.get("memory.events") or {}).get("max"),
                        "events_local_max": (cg.get("memory.events.local") or {}).get("max"),
                        "populated": cg.get("populated"),
                    }
                )
        except KeyError as e:
            raise InputError(f"not a lab truth document: step #{n} lacks {e}") from None
        except (TypeError, ValueError, AttributeError, OverflowError) as e:
            raise InputError(f"not a lab truth document: step #{n}: {_one_line(e)}") from None
    data = {}
    for c in TRUTH_COLUMNS:
        vals = [r[c.name] for r in rows]
        dtype = STRING if c.dtype == "string" else c.pandas_dtype
        try:
            data[c.name] = pd.Series(pd.array(vals, dtype=dtype) if c.nullable or c.dtype == "UInt64" else vals, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as e:  # a value that does not fit the column
            raise InputError(f"not a lab truth document: {c.name}: {_one_line(e)}") from None
    return pd.DataFrame(data).sort_values(["step", "path"], kind="stable").reset_index(drop=True)


def read_truth_document(path: str | Path) -> tuple[Path, dict]:
    """(the file, its parsed document) of a lab run's ``truth.json`` (``path``: the file or the
    run's output folder). Unreadable files, non-JSON and documents of another schema are a
    one-line InputError naming the file; the rows are checked by ``truth_frame``."""
    p = Path(path)
    if p.is_dir():
        p = p / "truth.json"
    try:
        doc = json.loads(p.read_bytes())
    except OSError as e:
        raise InputError(f"{p}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a number too long to convert
        raise InputError(f"{p}: not JSON: {_one_line(e)}") from None
    except RecursionError:
        raise InputError(f"{p}: not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise InputError(f"{p}: not a lab truth document: a JSON {type(doc).__name__}, not an object")
    if doc.get("schema") != TRUTH_SCHEMA:
        raise InputError(f"{p}: not a lab truth document (schema {doc.get('schema')!r}, want {TRUTH_SCHEMA!r})")
    return p, doc


def load_truth(path: str | Path) -> pd.DataFrame:
    """The truth table of a lab run: ``path`` is its ``truth.json`` or its output folder."""
    p, doc = read_truth_document(path)
    try:
        return truth_frame(doc)
    except InputError as e:
        raise InputError(f"{p}: {e.message}") from None


def _one_line(e: BaseException, limit: int = 200) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= limit else msg[:limit] + "..."


__all__ = ["TRUTH_COLUMNS", "TRUTH_COLUMN_NAMES", "truth_frame", "read_truth_document", "load_truth"]
