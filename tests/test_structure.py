"""The shape of the package, checked from its source with ``ast``: no import cycle between its
packages (imports inside functions count; those under ``TYPE_CHECKING`` do not), ``units/`` below
every stage, one registry type for every kind of thing looked up by name, and the library's
private state touched by ``library/core.py`` alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import expertise
from expertise.registry import Registry

ROOT = Path(expertise.__file__).parent
STAGES = {"expertise.upstream", "expertise.select", "expertise.transfer", "expertise.bench", "expertise.dat",
          "expertise.cli", "expertise.demo", "expertise.wiring"}


def _unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: ``expertise.units.plan`` -> ``expertise.units``."""
    return ".".join(module.split(".")[:2])


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node not under an ``if TYPE_CHECKING:`` block."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden |= {id(n) for n in ast.walk(node)}
    return [n for n in ast.walk(tree) if id(n) not in hidden]


def _imports(path: Path) -> set[str]:
    module, out = _module(path), set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            if name == "expertise":
                out |= {f"expertise.{a.name}" for a in node.names}
    return {n for n in out if n.startswith("expertise.")}


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        src = _unit(_module(path))
        for name in _imports(path):
            dst = _unit(name)
            if dst != src:
                edges.setdefault(src, set()).add(dst)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_packages():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_units_import_nothing_above_them():
    assert not (_graph()["expertise.units"] & STAGES)


@pytest.mark.parametrize("where, name", [("expertise.select.proxy_registry", "PROXIES"),
                                         ("expertise.select.registry", "STRATEGIES"),
                                         ("expertise.units.registry", "KINDS"),
                                         ("expertise.models.backbones", "BACKBONES"),
                                         ("expertise.models.backbones", "MEMBER_CLASSES")])
def test_every_registry_is_the_one_registry_type(where: str, name: str):
    import importlib

    registry = getattr(importlib.import_module(where), name)
    assert isinstance(registry, Registry) and len(registry) > 0


PRIVATE = {"_members", "_write_manifest", "_locked", "_load_tensors", "_check_member", "_read_hierarchy", "_top_files",
           "_verified"}


def test_only_the_library_touches_its_private_state():
    touched = []
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "library" / "core.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE and not (
                    isinstance(node.value, ast.Name) and node.value.id == "self"):
                touched.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert touched == []
