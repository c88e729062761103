"""The package's imports point one way: down the layer order of docs/design.md, with no cycle.

Pure ast over dream/ (nothing is imported). A module's imports are every `import dream...` / `from ... import`
it holds, at top level or inside functions, except under `if __name__ == "__main__":` (a script's entry point
may call the CLI on top) and `if TYPE_CHECKING:` (annotations only, never run). The zoo is tooling apart: it imports nothing of the library, and the library
reaches it only lazily (inside a function) through the target resolver and the `dream zoo` verb.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dream"

# Lowest first; a module may import its own layer's modules and any lower layer's, never a higher one's.
LAYERS: list[set[str]] = [
    {"settings", "images", "jsonfile", "chat", "metrics", "sampling", "method_names", "torchvision_ops"},
    {"tree", "verify", "proposer"},
    {"target"},
    {"draft"},
    {"engine", "pld", "methods"},
    {"training"},
    {"bench"},
    {"serving"},
    {"commands"},
    {"cli"},
]
ZOO = "zoo"
ZOO_GATES = {"dream.target.loading", "dream.commands.zoo"}  # the resolver and the verb: lazy imports only

# (importer, imported) pairs allowed against the order, each with its reason. Empty: none left.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _skipped(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` and `if TYPE_CHECKING:` blocks."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported dream module, lazy: inside a function) for every import in the file; `from P import m` counts
    as importing the submodule P.m where that is a module."""
    modules = all_modules()
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _skipped(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                subs = [f"{module}.{alias.name}" for alias in child.names]
                found.extend((sub, lazy) for sub in subs if sub in modules)
                if not all(sub in modules for sub in subs):
                    found.append((module, lazy))
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text()), False)
    return [(module, lazy) for module, lazy in found if module == "dream" or module.startswith("dream.")]


@cache
def all_modules() -> frozenset[str]:
    return frozenset(module_name(path) for path in PACKAGE.rglob("*.py"))


@cache
def import_map() -> dict[str, list[tuple[str, bool]]]:
    """module -> the dream modules it imports, each with whether the import is lazy."""
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def area(module: str) -> str:
    """dream.target.adapter -> "target"; dream.engine -> "engine"; dream -> "dream"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dream"


def layer(module: str) -> int:
    for index, members in enumerate(LAYERS):
        if area(module) in members:
            return index
    raise AssertionError(f"{module}: its area {area(module)!r} is in no layer of LAYERS (add it)")


def test_every_area_has_a_layer():
    for module in import_map():
        if area(module) not in ("dream", ZOO):
            layer(module)


def test_imports_point_down():
    upward = []
    for importer, imported in ((m, d) for m, deps in import_map().items() for d, _ in deps):
        if ZOO in (area(importer), area(imported)) or "dream" in (area(importer), area(imported)):
            continue
        if layer(imported) > layer(importer) and (importer, imported) not in EXCEPTIONS:
            upward.append(f"{importer} -> {imported}")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_zoo_is_apart():
    wrong = []
    for importer, deps in import_map().items():
        for imported, lazy in deps:
            if area(importer) == ZOO and area(imported) not in (ZOO, "dream"):
                wrong.append(f"{importer} -> {imported} (the zoo imports nothing of the library)")
            elif area(importer) != ZOO and area(imported) == ZOO and not (lazy and importer in ZOO_GATES):
                wrong.append(f"{importer} -> {imported} (only lazily, from {sorted(ZOO_GATES)})")
    assert not wrong, "\n".join(wrong)


def test_no_cycle():
    graph = {m: {d for d, _ in deps if d in import_map()} for m, deps in import_map().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [module, dep]))
            if dep not in state:
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
