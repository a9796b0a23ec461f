"""The layering of ``hf_adapt`` (STYLE.md guideline 8), read from the source with ``ast``.

Every import counts: module level, inside functions, and under ``if TYPE_CHECKING:``. A
function-local import does not break a cycle here, it only hides it. The rules:

(a) the library never imports ``hf_adapt.recipes``: what two recipes need lives in the library;
(b) no import cycles among ``hf_adapt`` modules;
(c) no private name (one leading underscore) imported from, or read off, another ``hf_adapt`` module;
(d) no function over 80 lines, save those in ``LONG_FUNCTIONS``: a ratchet. That list may only
    shrink: an entry that grows fails, and one that is shortened to 80 lines or fewer (or gone)
    must be deleted from it.

``HF_ADAPT_ARCH_ROOT`` points the checks at another checkout (a folder holding ``hf_adapt/``).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("HF_ADAPT_ARCH_ROOT") or Path(__file__).resolve().parents[1])
PACKAGE = "hf_adapt"
RECIPES = f"{PACKAGE}.recipes"
MAX_LINES = 80

# Functions over MAX_LINES when this test was written, with their length (def line to last line).
# This list may only shrink: never add an entry or raise a number; split the function instead.
LONG_FUNCTIONS: dict[str, int] = {}


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: list[tuple[str, int]] = field(default_factory=list)  # (hf_adapt module imported, line)
    private: list[tuple[str, int]] = field(default_factory=list)  # ("module.name", line)
    functions: dict[str, int] = field(default_factory=dict)  # qualified name -> lines


def read_package(root: Path) -> dict[str, Module]:
    """Every module of ``root/hf_adapt``, by dotted name, with its hf_adapt imports resolved."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path, is_package, ast.parse(path.read_text(), str(path)))
    for module in modules.values():
        _read_imports(module, modules)
        _read_functions(module)
    return modules


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    base = base[:len(base) - node.level + (1 if module.is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _read_imports(module: Module, modules: dict[str, Module]) -> None:
    bound = {}  # local name -> hf_adapt module, for attribute reads such as figures._save
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    module.imports.append((alias.name, node.lineno))
                    if alias.asname:
                        bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in modules:  # from hf_adapt.x import y, where hf_adapt.x.y is a module
                    module.imports.append((target, node.lineno))
                    bound[alias.asname or alias.name] = target
                else:
                    module.imports.append((source, node.lineno))
                if _is_private(alias.name):
                    module.private.append((target, node.lineno))
    for node in ast.walk(module.tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and _is_private(node.attr)):
            module.private.append((f"{bound[node.value.id]}.{node.attr}", node.lineno))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _read_functions(module: Module) -> None:
    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                module.functions[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(module.tree, module.name + ".")


def known(modules: dict[str, Module], name: str) -> str | None:
    """The module ``name`` runs: itself, or for ``hf_adapt.x.attr`` spelt as a module path, its longest known prefix."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def recipe_imports(modules: dict[str, Module]) -> list[str]:
    return [f"{m.path.relative_to(ROOT) if m.path.is_relative_to(ROOT) else m.path}:{line}: {m.name} imports {target}"
            for m in modules.values() if not _in_recipes(m.name)
            for target, line in m.imports if _in_recipes(target)]


def _in_recipes(name: str) -> bool:
    return name == RECIPES or name.startswith(RECIPES + ".")


def import_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted, largest first."""
    graph = {name: sorted({t for target, _ in m.imports if (t := known(modules, target)) and t != name})
             for name, m in modules.items()}
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return sorted(components, key=lambda c: (-len(c), c))


def private_imports(modules: dict[str, Module]) -> list[str]:
    return [f"{m.name}:{line} uses {target}" for m in modules.values() for target, line in m.private]


def long_functions(modules: dict[str, Module], allowed: dict[str, int]) -> list[str]:
    lengths = {name: n for m in modules.values() for name, n in m.functions.items()}
    problems = [f"{name} has {n} lines (over {MAX_LINES}); split it" for name, n in sorted(lengths.items())
                if n > MAX_LINES and name not in allowed]
    for name, limit in sorted(allowed.items()):
        n = lengths.get(name)
        if n is None or n <= MAX_LINES:
            problems.append(f"{name} is {'gone' if n is None else f'{n} lines now'}: delete it from LONG_FUNCTIONS")
        elif n > limit:
            problems.append(f"{name} grew from {limit} to {n} lines; this list may only shrink, split it")
    return problems


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return read_package(ROOT)


def _listed(problems: list, advice: str) -> str:
    return advice + ":\n" + "\n".join(str(p) for p in problems)


def test_the_library_never_imports_recipes(modules):
    found = recipe_imports(modules)
    assert not found, _listed(found, "move what the library needs out of hf_adapt/recipes")


def test_no_import_cycles(modules):
    found = import_cycles(modules)
    assert not found, _listed(found, "move the shared piece to the module that owns it, or to a small new one")


def test_no_private_name_crosses_a_module(modules):
    found = private_imports(modules)
    assert not found, _listed(found, "make the name public (with a docstring), or move it to where it is used")


def test_no_function_grows_past_80_lines(modules):
    found = long_functions(modules, LONG_FUNCTIONS)
    assert not found, _listed(found, "see LONG_FUNCTIONS")


def test_the_checks_find_what_they_look_for(tmp_path):
    """The four checks on a small made-up package that breaks every rule (a check that finds nothing proves nothing)."""
    package = tmp_path / PACKAGE
    (package / "recipes").mkdir(parents=True)
    (package / "sub").mkdir()
    files = {
        "__init__.py": "",
        "recipes/__init__.py": "",
        "recipes/r.py": "def helper():\n    pass\n",
        "a.py": "def f():\n    from hf_adapt.recipes.r import helper\n    from hf_adapt.b import _hidden\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hf_adapt import c\n_hidden = 1\n",
        "c.py": "from hf_adapt import a\n\n\ndef g():\n    return a._private\n",
        "sub/__init__.py": "from . import leaf\n",
        "sub/leaf.py": "import hf_adapt.sub\n",
        "long.py": "def long():\n" + "    x = 1\n" * MAX_LINES,
    }
    for name, text in files.items():
        (package / name).write_text(text)
    found = read_package(tmp_path)
    assert [line.split(": ", 1)[1] for line in recipe_imports(found)] == ["hf_adapt.a imports hf_adapt.recipes.r"]
    assert import_cycles(found) == [["hf_adapt.a", "hf_adapt.b", "hf_adapt.c"], ["hf_adapt.sub", "hf_adapt.sub.leaf"]]
    assert sorted(private_imports(found)) == ["hf_adapt.a:3 uses hf_adapt.b._hidden", "hf_adapt.c:5 uses hf_adapt.a._private"]
    assert long_functions(found, {}) == [f"hf_adapt.long.long has {MAX_LINES + 1} lines (over {MAX_LINES}); split it"]
    assert long_functions(found, {"hf_adapt.long.long": MAX_LINES}) == [
        f"hf_adapt.long.long grew from {MAX_LINES} to {MAX_LINES + 1} lines; this list may only shrink, split it"]
    assert long_functions(found, {"hf_adapt.long.long": 90, "hf_adapt.c.g": 90}) == [
        "hf_adapt.c.g is 2 lines now: delete it from LONG_FUNCTIONS"]
