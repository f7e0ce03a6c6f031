"""Capture definitions (``memtrace/probes/*.toml``, package data) turned into probes for one kernel.

A definition names attach points in order of preference (tracepoint, then kprobe with
BTF-typed args, then kprobe with numeric offsets) and fetch-args written symbolically
(``cgid = memcg->css.cgroup->kn->id``). :func:`generate` picks, per probe, the first attach
point the target kernel supports, resolves every member chain against the kernel's own
type information (DWARF or BTF, :mod:`memtrace.sources.kernel.typeinfo`), and emits

* ``BTF`` form (the chain as written, by parameter name) where the kernel's tracefs
  accepts BTF args (CONFIG_PROBE_EVENTS_BTF_ARGS: Debian 6.12) and the function has a BTF
  FUNC record, or
* numeric form ``+104(+248(+0($arg1)))`` everywhere else (Debian 6.1).

Probes whose function the kernel cannot trace are skipped with a reason.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from memtrace.errors import InputError
from memtrace.sources.kernel.target import KernelTarget

DEFAULT_GROUP = "memtrace"


def definitions_dir() -> Traversable:
    """Where memtrace's probe definitions live: package data, ``memtrace/probes/`` (the
    checkout's top-level ``probes`` is a symlink to it). A `pathlib.Path` for a package on
    disk (checkout, editable or wheel install), read through importlib.resources."""
    return resources.files("memtrace") / "probes"


def default_definitions() -> list[Traversable]:
    """The ``*.toml`` probe definitions shipped with memtrace (``memtrace/probes/``)."""
    root = definitions_dir()
    files = sorted((f for f in root.iterdir() if f.name.endswith(".toml") and f.is_file()), key=lambda f: f.name) \
        if root.is_dir() else []
    if not files:
        raise InputError(f"{root}: no probe definitions (*.toml) found; pass --defs FILE")
    return files


@functools.lru_cache(maxsize=1)
def _default_kprobe_groups() -> tuple[tuple[str, str], ...]:
    try:
        defs = load_definitions()
    except (InputError, OSError):  # no definitions found, or a broken definition file
        return ()
    return tuple((p.name, p.group) for p in defs.probes if any(a.kind != "tracepoint" for a in p.attach))


def default_kprobe_groups() -> dict[str, str]:
    """{event name: group} of the kprobe events memtrace's own definitions (memtrace/probes/*.toml)
    make: how a trace line that names an event without its group is given one."""
    return dict(_default_kprobe_groups())


# -- definitions ---------------------------------------------------------------------------


@dataclass
class Attach:
    kind: str  # tracepoint | kprobe-btf | kprobe | kretprobe | kretprobe-btf
    functions: list[str]
    args: list[str] = field(default_factory=list)
    optional_args: list[str] = field(default_factory=list)


@dataclass
class ProbeDef:
    name: str
    group: str
    attach: list[Attach]
    why: str = ""
    stability: str = ""
    overhead: str = ""
    default: bool = True
    #: the definition file it came from (errors in its args name it)
    source: str = ""


@dataclass
class TracepointGroup:
    events: list[str]
    why: str = ""
    optional: bool = False


@dataclass
class Definitions:
    probes: list[ProbeDef]
    tracepoints: list[TracepointGroup]
    files: list[str]


_KINDS = {"tracepoint", "kprobe", "kprobe-btf", "kretprobe", "kretprobe-btf"}


def _want(where: str, key: str, value, typ, typename: str):
    """``value`` if it is a ``typ``, else InputError naming the file, the entry and the key."""
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise InputError(f"{where}: {key} must be {typename}, not {_toml_type(value)}")
    return value


def _str_list(where: str, key: str, value, *, one_ok: bool = False) -> list[str]:
    """A list of strings (or, with ``one_ok``, one string)."""
    if one_ok and isinstance(value, str):
        return [value]
    what = "a string or a list of strings" if one_ok else "a list of strings"
    if value is None:
        raise InputError(f"{where}: {key} missing (want {what})")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: {key} must be {what}, not {_toml_type(value)}")
    return list(value)


def _toml_type(v) -> str:
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, list):
        return "an array" + ("" if all(isinstance(x, str) for x in v) else " with non-string items")
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


def _tables(where: str, key: str, value) -> list[dict]:
    """An array of tables (``[[key]]``)."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InputError(f"{where}: {key} must be an array of tables ([[{key}]]), not {_toml_type(value)}")
    return value


def load_definitions(paths: list[Path] | None = None) -> Definitions:
    paths = paths or default_definitions()
    probes, tps = [], []
    for p in paths:
        try:
            # a path given by the user, or a Traversable of the package's own definitions
            text = (p if isinstance(p, Traversable) else Path(p)).read_bytes().decode("utf-8")
        except IsADirectoryError:
            raise InputError(f"{p}: is a directory, not a probe definition file") from None
        except OSError as e:
            raise InputError(f"{p}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise InputError(f"{p}: not a TOML text file (byte {e.object[e.start]:#04x} at offset {e.start} is not UTF-8)") from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"{p}: invalid TOML: {e}") from None
        for i, raw in enumerate(_tables(str(p), "probe", doc.get("probe", []))):
            where = f"{p}: probe #{i + 1}"
            name = raw.get("name")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise InputError(f"{where}: missing or invalid name" + (f" ({_toml_type(name)})" if name is not None else ""))
            where = f"{where} ({name})"
            atts = []
            for a in _tables(where, "probe.attach", raw.get("attach", [])):
                # kind may list several kinds with the same function and args, most preferred first
                kinds = _str_list(where, "attach kind", a.get("kind"), one_ok=True)
                for kind in kinds:
                    if kind not in _KINDS:
                        raise InputError(f"{where}: attach kind {kind!r} not one of {sorted(_KINDS)}")
                fns = _str_list(where, "attach function", a.get("function") or [], one_ok=True)
                if not fns:
                    raise InputError(f"{where}: attach point without function")
                args = _str_list(where, "attach args", a.get("args", []))
                optional = _str_list(where, "attach optional_args", a.get("optional_args", []))
                for kind in kinds:
                    atts.append(Attach(kind, fns, list(args), list(optional)))
            if not atts:
                raise InputError(f"{where}: no attach points")
            probes.append(
                ProbeDef(
                    name, _want(where, "group", raw.get("group", DEFAULT_GROUP), str, "a string"), atts,
                    _want(where, "why", raw.get("why", ""), str, "a string"),
                    _want(where, "stability", raw.get("stability", ""), str, "a string"),
                    _want(where, "overhead", raw.get("overhead", ""), str, "a string"),
                    _want(where, "default", raw.get("default", True), bool, "true or false"),
                    str(p),
                )
            )
        for i, t in enumerate(_tables(str(p), "tracepoints", doc.get("tracepoints", []))):
            where = f"{p}: tracepoints #{i + 1}"
            if "events" not in t:
                raise InputError(f"{where}: no events")
            tps.append(
                TracepointGroup(
                    _str_list(where, "events", t["events"]),
                    _want(where, "why", t.get("why", ""), str, "a string"),
                    _want(where, "optional", t.get("optional", False), bool, "true or false"),
                )
            )
    names = [f"{p.group}/{p.name}" for p in probes]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        files = ", ".join(dict.fromkeys(p.source for p in probes if f"{p.group}/{p.name}" in dup))
        raise InputError(f"{files}: duplicate probe names: {', '.join(sorted(dup))}")
    return Definitions(probes, tps, [str(p) for p in paths])


# -- fetch-arg expressions -------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(->|\.|\(|\)|,|\$[A-Za-z0-9_]+|struct\b|[A-Za-z_][A-Za-z0-9_]*)")


class ExprError(Exception):
    """An expression the kernel's types cannot resolve (reported per probe as a skip reason)."""


def _tokens(s: str) -> list[str]:
    out, pos = [], 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m:
            raise InputError(f"cannot parse fetch-arg expression {s!r} at {s[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


@dataclass
class _Val:
    """A value: either in hand (``expr`` evaluates to it, plus ``bias``), or in memory at
    ``expr`` + ``off`` (``mem``). ``t`` is its C type handle in the TypeInfo."""

    expr: str
    t: object
    mem: bool = False
    off: int = 0
    bias: int = 0
    pure: bool = True  # a plain param->member chain (BTF form possible)


def _deref(expr: str, off: int) -> str:
    return f"{'+' if off >= 0 else '-'}{abs(off)}({expr})"


class _Resolver:
    def __init__(self, target: KernelTarget, params: list[tuple[str, object]] | None, is_return: bool):
        self.ty = target.types
        self.params = params
        self.is_return = is_return
        self.entry_args_at_return = bool(target.retprobe_args)

    def parse(self, text: str) -> tuple[str, object, bool]:
        """-> (numeric fetcharg, C type handle or None, pure chain)."""
        self.toks = _tokens(text)
        self.i = 0
        v = self._expr()
        if self.i != len(self.toks):
            raise InputError(f"trailing tokens in {text!r}: {' '.join(self.toks[self.i:])}")
        if v.mem:
            return _deref(v.expr, v.off), v.t, v.pure
        if v.bias:
            raise ExprError(f"{text!r} is a pointer with an offset; dereference a member of it")
        return v.expr, v.t, v.pure

    def _next(self, want: str | None = None) -> str:
        if self.i >= len(self.toks):
            raise InputError(f"unexpected end of expression (wanted {want or 'more'})")
        t = self.toks[self.i]
        if want is not None and t != want:
            raise InputError(f"expected {want!r}, got {t!r}")
        self.i += 1
        return t

    def _peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _struct_name(self) -> str:
        self._next("struct")
        return "struct " + self._next()

    def _load(self, v: _Val) -> _Val:
        """A value in hand: load it if it is in memory."""
        if v.mem:
            return _Val(_deref(v.expr, v.off), v.t, pure=v.pure)
        return v

    def _primary(self) -> _Val:
        tok = self._next()
        if tok == "$retval":
            return _Val("$retval", None, pure=False)
        if tok == "$comm":
            return _Val("$comm", None, pure=False)
        if tok in ("container_of", "untag"):
            self._next("(")
            inner = self._load(self._expr())
            self._next(",")
            sname = self._struct_name()
            self._next(",")
            st = self._struct_handle(sname)
            if tok == "container_of":
                path = [self._next()]
                while self._peek() == ".":
                    self._next()
                    path.append(self._next())
                try:
                    off = self.ty.offsetof(sname, ".".join(path))
                except LookupError as e:
                    raise ExprError(str(e)) from None
                bias = -off
            else:
                const = self._next()
                try:
                    bias = -self.ty.enum_value(const)
                except LookupError as e:
                    raise ExprError(str(e)) from None
            self._next(")")
            return _Val(inner.expr, ("struct-ptr", st), bias=inner.bias + bias, pure=False)
        if tok.startswith("$"):
            raise InputError(f"unsupported special variable {tok}")
        if self.params is None:
            raise ExprError("the kernel's type information has no parameter list for this function")
        names = [n for n, _ in self.params]
        if tok not in names:
            raise ExprError(f"no parameter {tok!r} (parameters: {', '.join(names) or 'none'})")
        if self.is_return and not self.entry_args_at_return:
            raise ExprError(f"entry argument {tok!r} at a return probe needs a kernel whose return probes support $argN")
        idx = names.index(tok)
        return _Val(f"$arg{idx + 1}", self.params[idx][1])

    def _struct_handle(self, sname: str):
        try:
            return self.ty.struct_type(sname)
        except LookupError as e:
            raise ExprError(str(e)) from None

    def _pointee_struct(self, t):
        """The struct handle a pointer-typed value points to."""
        if isinstance(t, tuple) and t[0] == "struct-ptr":
            return t[1]
        ct = self.ty.ctype(t)
        if ct.kind != "ptr":
            raise ExprError(f"'->' on a {ct.kind}, not a pointer")
        return self.ty.pointee(t)

    def _expr(self) -> _Val:
        v = self._primary()
        while self._peek() in ("->", "."):
            op = self._next()
            name = self._next()
            try:
                if op == "->":
                    v = self._load(v) if v.mem else v
                    st = self._pointee_struct(v.t)
                    off, mt = self.ty.member(st, name)
                    v = _Val(v.expr, mt, mem=True, off=v.bias + off, pure=v.pure)
                else:
                    if not v.mem:
                        raise ExprError(f"'.{name}' on a value that is not a struct in memory")
                    off, mt = self.ty.member(v.t, name)
                    v = _Val(v.expr, mt, mem=True, off=v.off + off, pure=v.pure)
            except LookupError as e:
                raise ExprError(str(e)) from None
        return v


_ARG = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+?)\s*(?::\s*([A-Za-z0-9]+)\s*)?$")


# -- generation ------------------------------------------------------------------------------


@dataclass
class Probe:
    """One probe as generated for one kernel."""

    name: str
    group: str
    kind: str  # tracepoint | kprobe | kretprobe | skipped
    function: str | None = None  # attach function or system:event
    form: str | None = None  # btf | numeric | None
    line: str | None = None  # kprobe_events line
    args: dict[str, str] = field(default_factory=dict)  # name -> fetcharg as emitted
    skipped: str | None = None  # reason
    notes: list[str] = field(default_factory=list)
    default: bool = True
    why: str = ""
    overhead: str = ""
    stability: str = ""

    @property
    def event(self) -> str:
        """tracefs events path: group/name (kprobes) or system/event (tracepoints)."""
        if self.kind == "tracepoint":
            return self.function.replace(":", "/")
        return f"{self.group}/{self.name}"

    def as_dict(self) -> dict:
        return {
            "name": self.name, "group": self.group, "kind": self.kind, "event": self.event if self.kind != "skipped" else None,
            "function": self.function, "form": self.form, "line": self.line, "args": self.args,
            "skipped": self.skipped, "notes": self.notes, "default": self.default, "why": self.why,
            "overhead": self.overhead, "stability": self.stability,
        }


@dataclass
class ProbeSet:
    target: KernelTarget
    probes: list[Probe]
    tracepoints: list[str]
    tracepoints_missing: list[str]
    definitions: list[str]
    #: tracepoints of groups marked optional (absent on many kernels: not a loss)
    optional_tracepoints: set[str] = field(default_factory=set)

    @property
    def tracepoints_missing_required(self) -> list[str]:
        """Missing tracepoints of groups not marked optional: a capture without them is incomplete."""
        return [t for t in self.tracepoints_missing if t not in self.optional_tracepoints]

    @property
    def installable(self) -> list[Probe]:
        return [p for p in self.probes if p.kind in ("kprobe", "kretprobe")]

    @property
    def skipped(self) -> list[Probe]:
        return [p for p in self.probes if p.kind == "skipped"]

    @property
    def all_tracepoints(self) -> list[str]:
        """Plain tracepoints plus probes that resolved to a tracepoint, as system:event."""
        extra = [p.function for p in self.probes if p.kind == "tracepoint"]
        return list(dict.fromkeys(self.tracepoints + extra))

    def as_dict(self) -> dict:
        t = self.target
        return {
            "schema": "memtrace.probes/1",
            "kernel": {
                "description": t.description, "release": t.release, "types": t.types.source,
                "traceable": t.traceable_source, "btf_args": t.btf_args, "retprobe_args": t.retprobe_args,
                "kprobe_events": t.kprobe_events, "notes": t.notes,
            },
            "definitions": self.definitions,
            "probes": [p.as_dict() for p in self.probes],
            "tracepoints": self.all_tracepoints,
            "tracepoints_missing": self.tracepoints_missing,
        }


def generate(target: KernelTarget, defs: Definitions | None = None, *, include_all: bool = False,
             only: list[str] | None = None) -> ProbeSet:
    """Probes for ``target``: the first supported attach point of each definition."""
    defs = defs or load_definitions()
    if only is not None:
        unknown = sorted(set(only) - {d.name for d in defs.probes})
        if unknown:
            raise InputError(f"no probe named {', '.join(unknown)} (probes: {', '.join(d.name for d in defs.probes)})")
    out = []
    for d in defs.probes:
        if only is not None:
            if d.name not in only:
                continue
        elif not d.default and not include_all:
            continue
        try:
            out.append(_generate_one(target, d))
        except InputError as e:  # an arg the parser rejects: name the file it is written in
            if not d.source or e.message.startswith(d.source):
                raise
            msg = e.message if e.message.startswith(f"probe {d.name}:") else f"probe {d.name}: {e.message}"
            raise InputError(f"{d.source}: {msg}") from None
    tps, missing, optional = [], [], set()
    for g in defs.tracepoints:
        for ev in g.events:
            if g.optional:
                optional.add(ev)
            system, _, event = ev.partition(":")
            have = target.has_tracepoint(system, event)
            if have is False:
                missing.append(ev)
            else:
                tps.append(ev)
    return ProbeSet(target, out, tps, missing, defs.files, optional)


def _generate_one(target: KernelTarget, d: ProbeDef) -> Probe:
    base = dict(name=d.name, group=d.group, default=d.default, why=d.why, overhead=d.overhead, stability=d.stability)
    reasons = []
    for a in d.attach:
        if a.kind == "tracepoint":
            for ev in a.functions:
                system, _, event = ev.partition(":")
                if target.has_tracepoint(system, event):
                    return Probe(kind="tracepoint", function=ev, **base)
                reasons.append(f"no tracepoint {ev}")
            continue
        is_return = a.kind.startswith("kretprobe")
        want_btf = a.kind.endswith("-btf")
        if target.kprobe_events is False:
            reasons.append("kernel has no kprobe_events (CONFIG_KPROBE_EVENTS off)")
            continue
        if want_btf and not target.btf_args:
            reasons.append(f"{a.kind}: kernel's probe events take no BTF args")
            continue
        for fn in a.functions:
            if target.traceable is not None and fn not in target.traceable:
                clones = target.clones_of(fn)
                why = f"{fn} is not traceable ({target.traceable_source})"
                if clones:
                    why += f"; only clones {', '.join(clones)} whose $argN may not match the C parameters"
                reasons.append(why)
                continue
            if want_btf and not target.types.has_func_record(fn):
                reasons.append(f"{fn} has no BTF FUNC record")
                continue
            try:
                p = _emit(target, d, a, fn, is_return, want_btf)
            except ExprError as e:
                reasons.append(f"{fn}: {e}")
                continue
            p.__dict__.update(base)
            return p
    return Probe(kind="skipped", skipped="; ".join(dict.fromkeys(reasons)) or "no attach point", **base)


def _emit(target: KernelTarget, d: ProbeDef, a: Attach, fn: str, is_return: bool, want_btf: bool) -> Probe:
    params = target.types.func_params(fn)
    res = _Resolver(target, params, is_return)
    args: dict[str, str] = {}
    notes = []
    for spec in a.args:
        m = _ARG.match(spec)
        if not m:
            raise InputError(f"probe {d.name}: cannot parse arg {spec!r} (want NAME = EXPR [: TYPE])")
        name, text, typ = m.groups()
        try:
            numeric, ctype, pure = res.parse(text)
        except ExprError as e:
            if name in a.optional_args:
                notes.append(f"arg {name} dropped: {e}")
                continue
            raise
        if typ is None:
            if ctype is None:
                raise ExprError(f"arg {name}: give a type for {text!r}")
            typ = target.types.ctype(ctype).fetch_type()
        emitted = text.replace(" ", "") if (want_btf and pure) else numeric
        args[name] = f"{emitted}:{typ}"
    kind = "kretprobe" if is_return else "kprobe"
    prefix = "r" if is_return else "p"
    line = f"{prefix}:{d.group}/{d.name} {fn}" + "".join(f" {k}={v}" for k, v in args.items())
    return Probe(name=d.name, group=d.group, kind=kind, function=fn, form="btf" if want_btf else "numeric",
                 line=line, args=args, notes=notes)


# -- renderers (text; the CLI prints them) ---------------------------------------------------


#: a named probe in kprobe_events text: `p:group/event sym ...`, `r64:event ...`, `f:...` (fprobe)
_EVENT_DEF = re.compile(r"\s*([prf])\d*:(?:([^/\s]+)/)?([^/\s]+)\s")


def kprobe_event_defs(text: str | list[str] | None, kinds: str = "prf") -> list[tuple[str, str]]:
    """(group, event) of each named probe in kprobe_events text or lines, in order, of the
    ``kinds`` given (p kprobe, r kretprobe, f fprobe). The kernel's default groups: kprobes
    for p and r, fprobes for f. Lines that name no event (`p sym`, the kernel makes the
    name) or are not probe definitions are skipped."""
    lines = text.splitlines() if isinstance(text, str) else (text or [])
    out = []
    for line in lines:
        m = _EVENT_DEF.match(line)
        if m and m.group(1) in kinds:
            out.append((m.group(2) or ("fprobes" if m.group(1) == "f" else "kprobes"), m.group(3)))
    return out


def render_kprobe_events(ps: ProbeSet) -> str:
    t = ps.target
    lines = [
        f"# memtrace probes for {t.description}" + (f" ({t.release})" if t.release else ""),
        f"# types: {t.types.source}; traceable: {t.traceable_source}",
        f"# BTF args: {'yes' if t.btf_args else 'no'}; entry args at return probes: {'yes' if t.retprobe_args else 'no'}",
    ]
    for p in ps.probes:
        if p.kind == "skipped":
            lines.append(f"# skipped {p.group}/{p.name}: {p.skipped}")
        elif p.kind == "tracepoint":
            lines.append(f"# {p.group}/{p.name}: use tracepoint {p.function}")
        for n in p.notes:
            lines.append(f"# {p.group}/{p.name}: {n}")
    lines += [p.line for p in ps.installable]
    return "\n".join(lines) + "\n"


def _shq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def render_trace_cmd(ps: ProbeSet, tracefs: str = "/sys/kernel/tracing", output: str = "memtrace.dat") -> str:
    lines = ["#!/bin/sh", f"# memtrace probes for {ps.target.description}: create the kprobe events, record, remove them",
             "set -e", f"T={tracefs}"]
    for p in ps.installable:
        lines.append(f"echo {_shq(p.line)} >> $T/kprobe_events")
    for p in ps.skipped:
        lines.append(f"# skipped {p.event}: {p.skipped}")
    kp = [p.event.replace("/", ":") for p in ps.installable]
    evs = ps.all_tracepoints + kp
    rm = [f"echo {_shq('-:' + p.event)} >> $T/kprobe_events" for p in reversed(ps.installable)]
    lines.append("cleanup() { " + "; ".join(rm + ["true"]) + "; }")
    lines.append("trap cleanup EXIT")
    lines.append("# stop it with Ctrl-C (SIGINT). Run in the background (sh this.sh &), trace-cmd starts with SIGINT")
    lines.append("# ignored and catches it only once recording: wait for SigCgt bit 1 in /proc/PID/status first")
    # its own tracefs instance (-B), so the top-level buffer is neither consumed nor reset, and
    # the boot clock (-C), as `memtrace capture` and the lab use: timestamps join across captures
    lines.append(f"trace-cmd record -B memtrace -C boot -o {output} " + " ".join(f"-e {e}" for e in evs))
    return "\n".join(lines) + "\n"


def render_perfetto(ps: ProbeSet, *, duration_ms: int = 60000, buffer_kb: int = 65536) -> str:
    """A perfetto TraceConfig (text proto). perfetto's own kprobe config records no fetch-args,
    so memtrace's kprobe events must exist in tracefs first (memtrace probes --format
    kprobe_events) and are listed here as ordinary ftrace events."""
    evs = ps.all_tracepoints + [p.event for p in ps.installable]
    lines = [
        f"# memtrace probes for {ps.target.description}",
        "# create the kprobe events in tracefs first: memtrace probes --format kprobe_events >> /sys/kernel/tracing/kprobe_events",
        "buffers {", f"  size_kb: {buffer_kb}", "  fill_policy: RING_BUFFER", "}",
        "data_sources {", "  config {", '    name: "linux.ftrace"', "    ftrace_config {",
    ]
    for e in evs:
        lines.append(f'      ftrace_events: "{e.replace(":", "/")}"')
    lines += ["    }", "  }", "}", f"duration_ms: {duration_ms}"]
    return "\n".join(lines) + "\n"
