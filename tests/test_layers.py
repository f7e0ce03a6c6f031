"""The data flows one way: only memtrace.sources imports drgn; the CLI is the only layer
that imports typer; analyses never import sources or render."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "memtrace"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _files(layer: str):
    return sorted((PKG / layer).rglob("*.py"))


def test_only_sources_import_drgn():
    offenders = [
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if any(n == "drgn" or n.startswith("drgn.") for n in _imports(p))
        and not str(p.relative_to(PKG)).startswith("sources/")
    ]
    assert offenders == []


def test_only_cli_imports_typer():
    offenders = [
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if "typer" in _imports(p) and not str(p.relative_to(PKG)).startswith("cli/")
    ]
    assert offenders == []


def test_analyses_do_not_reach_sideways():
    for p in _files("analyses"):
        bad = {n for n in _imports(p) if n.startswith(("memtrace.sources", "memtrace.render", "memtrace.cli"))}
        assert not bad, f"{p.name} imports {bad}"
