"""Rules for `memtrace diff`: how much a metric may change before the diff fails.

Grammar (docs/diff.md), on the command line (``--rule``)::

    RULE   := METRIC ':' NAME ':' LIMITS          (METRIC and NAME are shell globs)
    LIMITS := 'off' | LIMIT (',' LIMIT)*
    LIMIT  := [SIGN] NUMBER [UNIT]
    SIGN   := '+' (growth only) | '-' (shrinking only) | none (either direction)
    UNIT   := '%' (relative to BASE) | B | K | KiB | M | MiB | G | GiB | none (a count, or bytes)

e.g. ``net_bytes:/pod*:+5%,+64KiB``. NAME may itself hold ':' (the first ':' ends METRIC, the
last begins LIMITS). In a rules file (TOML) each ``[[rule]]`` has ``metric``, ``name``,
``limits`` and optionally ``step``, ``facet`` and ``entity`` (globs, default ``*``).

Meaning: a row is judged by the **last** rule whose globs all match it (the shipped defaults
first, then ``--rules`` files, then ``--rule`` options, in order: a later, narrower rule can
loosen or tighten an earlier one; ``off`` exempts the rows it matches). In the row's direction
(delta > 0: the ``+`` and unsigned limits; delta < 0: the ``-`` and unsigned ones) the row
**crosses the rule when it exceeds every limit given**: ``+5%,+64KiB`` fails a growth only
when it is over 5 % *and* over 64 KiB, so small counters may jitter by a page and large ones
by a few percent (the noise-tolerant reading of "5 % or 64 KiB"). A row missing on one side
counts as 0 there; relative to a BASE of 0 any change is over every percentage.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path

from memtrace.errors import InputError

#: the shipped defaults (package data)
DEFAULT_RULES_FILE = "diff-rules.toml"

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GIB": 1 << 30}
_LIMIT = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d+)?)\s*(%|[A-Za-z]*)\s*$")
_RULE_KEYS = {"metric", "name", "limits", "step", "facet", "entity"}


@dataclass(frozen=True)
class Limits:
    """Limits of one direction: absolute (in the metric's unit) and relative (fraction of |base|)."""

    abs: float | None = None
    rel: float | None = None

    def crossed(self, delta: int, base: int | None) -> str | None:
        """Why |delta| crosses every given limit (None: it does not)."""
        mag = abs(delta)
        if mag == 0 or (self.abs is None and self.rel is None):
            return None
        why = []
        if self.abs is not None:
            if mag <= self.abs:
                return None
            why.append(f"{_fmt(mag)} > {_fmt(self.abs)}")
        if self.rel is not None:
            if base:
                r = mag / abs(base)
                if r <= self.rel:
                    return None
                why.append(f"{r:.1%} > {self.rel * 100:.4g}%")
            else:
                why.append(f"from 0 (any change is over {self.rel * 100:.4g}%)")
        return " and ".join(why)


@dataclass(frozen=True)
class Rule:
    metric: str
    name: str
    grow: Limits | None
    shrink: Limits | None
    off: bool = False
    step: str = "*"
    facet: str = "*"
    entity: str = "*"
    #: as written, for output: the --rule text or `FILE:LINE`
    text: str = ""

    def matches(self, facet: str, entity: str, name: str, step: str, metric: str) -> bool:
        return (fnmatchcase(metric, self.metric) and fnmatchcase(name, self.name) and fnmatchcase(step, self.step)
                and fnmatchcase(facet, self.facet) and fnmatchcase(entity, self.entity))

    def judge(self, base: int | None, new: int | None) -> str | None:
        """Why the change from ``base`` to ``new`` crosses this rule (None: it does not)."""
        if self.off:
            return None
        b, n = base or 0, new or 0
        delta = n - b
        lim = self.grow if delta > 0 else self.shrink if delta < 0 else None
        if lim is None:
            return None
        why = lim.crossed(delta, base)
        return None if why is None else f"{'+' if delta > 0 else '-'}{why}"


def _fmt(v: float) -> str:
    v = float(v)
    return f"{v:,.0f}" if v == int(v) else f"{v:,.2f}"


def parse_limits(text: str) -> tuple[Limits | None, Limits | None, bool]:
    """(growth limits, shrink limits, off) of a LIMITS string; ValueError with the reason."""
    t = text.strip()
    if t.lower() == "off":
        return None, None, True
    if not t:
        raise ValueError("no limits (give e.g. +5%,+64KiB, or off)")
    lims: dict[str, dict[str, float]] = {"+": {}, "-": {}}
    for part in t.split(","):
        m = _LIMIT.match(part)
        if not m:
            raise ValueError(f"limit {part.strip()!r} is not [+|-]NUMBER[%|B|K|KiB|M|MiB|G|GiB]")
        sign, num, unit = m.group(1), float(m.group(2)), m.group(3)
        if unit == "%":
            kind, value = "rel", num / 100
        else:
            mult = _UNITS.get(unit.upper())
            if mult is None:
                raise ValueError(f"limit {part.strip()!r}: unknown unit {unit!r} (use %, B, K/KiB, M/MiB or G/GiB; "
                                 "KB and MB are not used, to leave no doubt about 1000 or 1024)")
            kind, value = "abs", num * mult
        for d in ("+", "-") if not sign else (sign,):
            if kind in lims[d]:
                raise ValueError(f"limits {t!r} give two {'relative' if kind == 'rel' else 'absolute'} limits "
                                 f"for {'growth' if d == '+' else 'shrinking'}")
            lims[d][kind] = value
    grow = Limits(**lims["+"]) if lims["+"] else None
    shrink = Limits(**lims["-"]) if lims["-"] else None
    return grow, shrink, False


def parse_rule(text: str) -> Rule:
    """A ``--rule METRIC:NAME:LIMITS``; InputError naming the rule when malformed."""
    if text.count(":") < 2:
        raise InputError(f"--rule {text!r}: want METRIC:NAME:LIMITS, e.g. 'net_bytes:/pod*:+5%,+64KiB'")
    metric, rest = text.split(":", 1)
    name, limits = rest.rsplit(":", 1)
    if not metric.strip() or not name.strip():
        raise InputError(f"--rule {text!r}: METRIC and NAME must not be empty (use * for any)")
    try:
        grow, shrink, off = parse_limits(limits)
    except ValueError as e:
        raise InputError(f"--rule {text!r}: {e}") from None
    return Rule(metric.strip(), name.strip(), grow, shrink, off, text=text)


def parse_rules_text(text: str, where: str) -> list[Rule]:
    """Rules of a rules file's text; ``where`` names it in errors (which give the line)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends "(at line L, column C)"
        raise InputError(f"{where}: not a rules file: {e}") from None
    lines = text.splitlines()
    extra = sorted(set(doc) - {"rule"})
    if extra:
        raise InputError(f"{where}:{_key_line(lines, None, extra[0])}: unknown top-level key {extra[0]!r} "
                         "(a rules file holds [[rule]] tables)")
    rules = doc.get("rule", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise InputError(f"{where}:{_key_line(lines, None, 'rule')}: 'rule' must be an array of tables ([[rule]])")
    out = []
    for i, r in enumerate(rules):
        line = _rule_line(lines, i)
        bad = sorted(set(r) - _RULE_KEYS)
        if bad:
            raise InputError(f"{where}:{_key_line(lines, i, bad[0])}: rule #{i + 1}: unknown key {bad[0]!r} "
                             f"(keys: {', '.join(sorted(_RULE_KEYS))})")
        for key in ("metric", "name", "limits"):
            if key not in r:
                raise InputError(f"{where}:{line}: rule #{i + 1} lacks {key!r}")
        for key, v in r.items():
            if not isinstance(v, str) or not v.strip():
                raise InputError(f"{where}:{_key_line(lines, i, key)}: rule #{i + 1}: {key} must be a non-empty "
                                 f"string, not {v!r}")
        try:
            grow, shrink, off = parse_limits(r["limits"])
        except ValueError as e:
            raise InputError(f"{where}:{_key_line(lines, i, 'limits')}: rule #{i + 1}: {e}") from None
        out.append(Rule(r["metric"], r["name"], grow, shrink, off, step=r.get("step", "*"), facet=r.get("facet", "*"),
                        entity=r.get("entity", "*"), text=f"{Path(where).name}:{line}"))
    return out


def _rule_line(lines: list[str], i: int) -> int:
    """1-based line of the i-th ``[[rule]]`` header (1 when not found)."""
    k = -1
    for n, ln in enumerate(lines, 1):
        if re.match(r"\s*\[\[\s*rule\s*\]\]", ln):
            k += 1
            if k == i:
                return n
    return 1


def _key_line(lines: list[str], i: int | None, key: str) -> int:
    """1-based line of ``key =`` inside the i-th rule (top level when i is None)."""
    start = _rule_line(lines, i) if i is not None else 1
    rx = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=")
    for n in range(start, len(lines) + 1):
        ln = lines[n - 1]
        if n > start and i is not None and re.match(r"\s*\[", ln):
            break
        if rx.match(ln) or (key == "rule" and "rule" in ln):
            return n
    return start


def load_rules(path: str | Path) -> list[Rule]:
    """Rules of a TOML rules file; InputError naming the file and line when malformed."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise InputError(f"{p}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not a rules file: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_rules_text(text, str(p))


def default_rules_text() -> str:
    """The shipped default rules file's text (``memtrace/diff-rules.toml``)."""
    return resources.files("memtrace").joinpath(DEFAULT_RULES_FILE).read_text()


def default_rules() -> list[Rule]:
    return parse_rules_text(default_rules_text(), DEFAULT_RULES_FILE)


def rule_for(rules: list[Rule], facet: str, entity: str, name: str, step: str, metric: str) -> Rule | None:
    """The last rule matching the row (None: no rule applies)."""
    for r in reversed(rules):
        if r.matches(facet, entity, name, step, metric):
            return r
    return None


__all__ = ["Limits", "Rule", "parse_limits", "parse_rule", "parse_rules_text", "load_rules", "default_rules",
           "default_rules_text", "rule_for", "DEFAULT_RULES_FILE"]
