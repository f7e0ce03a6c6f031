"""The array-operation pairing of entry and return events (`charges._pair_lifo`) and the
streamed charge tables against the per-event loops memtrace used before
(memtrace/testing/charges_reference.py): on the committed real captures of both lab
kernels, on the same captures cut into chunks at every size, and on random nested call
sequences with captures that begin or end inside a call."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import KERNELS
from memtrace.analyses import charges
from memtrace.sources.trace import load_trace
from memtrace.testing.charges_reference import charge_attempts_reference, page_counter_movements_reference

CAPTURES = Path(__file__).resolve().parent.parent / "fixtures" / "captures"


def _captures():
    out = [CAPTURES / f"force-{k}.page_counter.txt" for k in KERNELS]
    if shutil.which("trace-cmd"):
        out += [CAPTURES / f"force-{k}.trace.dat" for k in KERNELS]
    return out


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = [c for c in b.columns]
    a = a[cols].reset_index(drop=True).astype(b.dtypes.to_dict())
    pd.testing.assert_frame_equal(a, b.reset_index(drop=True), check_categorical=False)


@pytest.mark.parametrize("path", _captures(), ids=lambda p: p.name)
def test_movements_and_attempts_equal_the_reference(path):
    ev, _ = load_trace(str(path))
    mv, ref = charges.page_counter_movements(ev), page_counter_movements_reference(ev)
    assert len(ref) > 100
    _same(mv, ref)
    for k in ("unpaired_entries", "unpaired_returns", "entry_return_mismatches"):
        assert mv.attrs[k] == ref.attrs[k], k
    if charges.TRY in set(charges._short(ev["event"])):
        at, aref = charges.charge_attempts(ev), charge_attempts_reference(ev)
        assert len(aref) > 10
        _same(at, aref)
        assert (at.attrs["unpaired_entries"], at.attrs["unpaired_returns"]) == (
            aref.attrs["unpaired_entries"], aref.attrs["unpaired_returns"])


@pytest.mark.parametrize("path,size", [
    (p, n) for p in _captures()  # chunks of one event only on the excerpts (a few ms a chunk)
    for n in ((1, 2, 7, 100, 997, 5000) if p.suffix == ".txt" else (100, 997, 5000))
], ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_chunks_give_the_whole_captures_tables(path, size):
    ev, _ = load_trace(str(path))
    whole = charges.charge_tables(ev)
    chunks = (ev.iloc[i:i + size] for i in range(0, len(ev), size))
    part = charges.stream_charge_tables(chunks)
    assert part.events == len(ev) and part.event_names == whole.event_names
    _same(part.movements, whole.movements)
    _same(part.attempts, whole.attempts)
    _same(part.markers, whole.markers)
    assert part.movements.attrs == whole.movements.attrs
    assert part.attempts.attrs == whole.attempts.attrs


def _lifo_loop(key, is_entry):
    partner = np.full(len(key), -1)
    stacks: dict = {}
    for i, (k, e) in enumerate(zip(key, is_entry)):
        if e:
            stacks.setdefault(k, []).append(i)
        elif stacks.get(k):
            partner[i] = stacks[k].pop()
    open_entry = np.zeros(len(key), bool)
    for st in stacks.values():
        open_entry[st] = True
    return partner, open_entry


@pytest.mark.parametrize("seed", range(40))
def test_pair_lifo_equals_a_stack_per_thread(seed):
    """Random interleavings of nested calls on a few threads; cut at random so captures begin
    and end inside calls."""
    rng = np.random.default_rng(seed)
    key, ent = [], []
    depth = {}
    for _ in range(int(rng.integers(1, 400))):
        k = int(rng.integers(-3, 4))
        d = depth.get(k, 0)
        e = bool(d == 0 or rng.random() < 0.45)
        depth[k] = d + (1 if e else -1)
        key.append(k)
        ent.append(e)
    lo = int(rng.integers(0, max(1, len(key) // 3)))
    key, ent = np.array(key[lo:], np.int64), np.array(ent[lo:], bool)
    got = charges._pair_lifo(key, ent)
    want = _lifo_loop(key, ent)
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()


def test_hex_and_decimal_args():
    args = pd.Series(["counter=0xffff8d8a4287f900 ok=1", "ok=0 counter=0x1", None, "counter=0x", "counter=0x1ffffffffffffffff"],
                     dtype="string")
    c = charges._arg(args, r"\bcounter=0x(?P<v>[0-9a-fA-F]+)", 16)
    assert c.tolist() == [0xffff8d8a4287f900, 1, pd.NA, pd.NA, pd.NA]
    assert charges._arg(args, r"\bok=(?P<v>\d+)", 10).tolist() == [1, 0, pd.NA, pd.NA, pd.NA]


@pytest.mark.parametrize("kernel", KERNELS)
def test_iter_trace_frames_are_the_whole_capture(kernel):
    """A text capture read in frames (here about 8 KiB of text each) gives the rows of the whole
    load, numbered by their position in the capture, and the same ingest statistics."""
    from memtrace.sources.trace import iter_trace
    from memtrace.tables.events import IngestStats

    path = str(CAPTURES / f"force-snap-{kernel}.page_counter.txt")
    whole, st = load_trace(path)
    st2 = IngestStats()
    frames = list(iter_trace(path, frame_bytes=8192, stats=st2))
    assert len(frames) > 10
    assert [f.index[0] for f in frames] == list(np.cumsum([0] + [len(f) for f in frames[:-1]]))
    cat = pd.concat(frames)
    assert cat.index.equals(pd.RangeIndex(len(whole)))
    for c in ("ts_ns", "pid", "cpu", "cgroup_id", "pages", "ret"):
        assert cat[c].equals(whole[c]), c
    assert (cat["event"].astype(str) == whole["event"].astype(str)).all()
    assert cat["args"].astype("string").fillna("").tolist() == whole["args"].astype("string").fillna("").tolist()
    assert st2.to_dict() == st.to_dict()
