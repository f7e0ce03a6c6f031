"""Redaction of kernel addresses (``--redact``; docs/redact.md).

Kernel pointers (``struct bpf_map *``, ``struct mem_cgroup *``, objcgs, slab objects, pages)
reveal the KASLR base when a snapshot's JSON or file is pasted in a public log. ``redact()``
replaces every value of the address columns (``ADDRESS_COLUMNS``, declared next to the schema)
and every ``0x...`` number in the header's strings (notes such as "map at 0x... could not be
read") by a token ``kaddr-N``:

* N counts distinct addresses in order of first appearance over a fixed order: the tables
  ``maps``, ``allocations``, ``memcgs``, each row by row and, in a row, its address columns in
  schema order; then the header's strings (keys sorted). The same address gets the same token
  in every table (joins such as ``maps.owner_objcg`` = ``memcgs.objcg`` still hold), different
  addresses get different tokens, and a token says nothing of the value (no hash: nothing to
  brute-force). Tokens are per output: two redacted runs number independently.
* In the tables a token is stored as the integer N in the column's own dtype (``uint64`` /
  ``UInt64``; NULL stays NULL), so a redacted snapshot file is still a valid
  ``memtrace.snapshot/1`` file that ``--from`` loads and every report reads. Its header's
  ``redacted`` key says that the address columns hold token numbers; JSON renders them as the
  strings ``kaddr-0001``, ... (``for_json()``).
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd

from memtrace.tables.snapshot import ADDRESS_COLUMNS, TABLES, Snapshot

SCHEME = "memtrace.redact/1"
PREFIX = "kaddr-"
#: the lowest address of the kernel half on x86-64 and arm64 (48-bit VA): an integer at or
#: above it anywhere in the header is taken for an address
KERNEL_HALF = 0xFFFF800000000000
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b")


def token(n: int) -> str:
    """The token string of token number ``n``: ``kaddr-0001``."""
    return f"{PREFIX}{int(n):04d}"


def is_redacted(snap: Snapshot) -> bool:
    return isinstance(snap.header.get("redacted"), dict)


def _values(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 values with NULL as 0, mask of the non-NULL ones)."""
    present = s.notna().to_numpy(dtype=bool)
    return s.to_numpy(dtype="uint64", na_value=0), present


def _address_columns(table: str) -> list[str]:
    return [c.name for c in TABLES[table] if c.name in ADDRESS_COLUMNS[table]]


def _in_order(snap: Snapshot) -> np.ndarray:
    """Every address of the tables, in the fixed order, duplicates kept."""
    parts = []
    for t in TABLES:
        cols = _address_columns(t)
        df = snap.table(t)
        if not cols or df.empty:
            continue
        vals, present = zip(*(_values(df[c]) for c in cols))
        # row by row: a (rows, columns) matrix read in C order
        parts.append(np.column_stack(vals).ravel()[np.column_stack(present).ravel()])
    return np.concatenate(parts) if parts else np.array([], dtype=np.uint64)


class _Numbering:
    """Address -> token number, numbered in order of first appearance."""

    def __init__(self, addresses: np.ndarray):
        self.index = pd.Index(pd.unique(addresses), dtype="uint64")
        self.extra: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.index) + len(self.extra)

    def number(self, addr: int) -> int:
        i = self.index.get_indexer([np.uint64(addr)])[0] if 0 <= addr < 1 << 64 else -1
        if i >= 0:
            return int(i) + 1
        if addr not in self.extra:
            self.extra[addr] = len(self) + 1
        return self.extra[addr]

    def column(self, s: pd.Series) -> pd.Series:
        vals, present = _values(s)
        nums = (self.index.get_indexer(vals) + 1).astype(np.uint64)
        if str(s.dtype) == "UInt64":
            arr = pd.array(nums, dtype="UInt64")
            arr[~present] = pd.NA
            return pd.Series(arr, index=s.index, name=s.name)
        return pd.Series(nums, index=s.index, name=s.name, dtype=s.dtype)

    def scrub(self, v):
        """``v`` (a JSON-able header value) with its addresses replaced by tokens."""
        if isinstance(v, dict):  # numbered by sorted key, keys kept in their order
            done = {k: self.scrub(v[k]) for k in sorted(v, key=str)}
            return {k: done[k] for k in v}
        if isinstance(v, list):
            return [self.scrub(x) for x in v]
        if isinstance(v, str):
            return _HEX.sub(lambda m: token(self.number(int(m.group(0), 16))), v)
        if isinstance(v, int) and not isinstance(v, bool) and v >= KERNEL_HALF:
            return token(self.number(v))
        return v


def redact(snap: Snapshot) -> Snapshot:
    """``snap`` with every kernel address replaced by its token number (see the module doc).
    A snapshot redacted already is returned as it is."""
    if is_redacted(snap):
        return snap
    numbering = _Numbering(_in_order(snap))
    frames = {}
    for t in TABLES:
        df = snap.table(t).copy()
        for c in _address_columns(t):
            df[c] = numbering.column(df[c])
        frames[t] = df
    header = numbering.scrub(copy.deepcopy(snap.header))
    header["redacted"] = {
        "scheme": SCHEME,
        "tokens": len(numbering),
        "columns": {t: _address_columns(t) for t in TABLES},
        "meaning": f"kernel addresses replaced by tokens {PREFIX}N (N in order of first appearance); "
                   "the address columns hold N",
    }
    return Snapshot(header=header, **frames)


def for_json(snap: Snapshot) -> Snapshot:
    """For rendering only: a redacted snapshot with its address columns as token strings
    (``kaddr-0001``; NULL stays None). An unredacted snapshot is returned as it is."""
    if not is_redacted(snap):
        return snap
    frames = {}
    for t in TABLES:
        df = snap.table(t).copy()
        for c in _address_columns(t):
            vals, present = _values(df[c])
            strs = np.array([token(v) if p else None for v, p in zip(vals.tolist(), present.tolist())], dtype=object)
            df[c] = pd.Series(strs, index=df.index, dtype=object)
        frames[t] = df
    return Snapshot(header=snap.header, **frames)
