"""The layers of docs/ARCHITECTURE.md hold: imports go only downward and never in a circle.

Every module of the project's packages is parsed with `ast`; every import counts, including
those inside functions and under `if TYPE_CHECKING:`, because a lazy import is still a
dependency. The checks are plain functions, tested first on tiny package trees written to
`tmp_path` (so each check is seen to fail), then run on the project itself.
"""

from __future__ import annotations

import ast
import textwrap
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sepsis_rl", "training", "tuning", "data_prep", "sepsis_env")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("sepsis_rl.cli",),
    ("sepsis_rl.serve",),
    ("tuning",),
    ("training.study",),
    ("training.classification", "training.rl"),
    ("sepsis_env",),
    ("data_prep",),
    ("sepsis_rl.common",),
)
"""Top to bottom. A module may import its own package and the layers below it; packages that
share a layer (classification and rl) are siblings and must not import each other."""


@dataclass(frozen=True)
class Import:
    """One project module importing another, at the first line where it does."""

    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line})"


# --- reading the imports ---------------------------------------------------------------------


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module under `root/<package>/`, by dotted name (`pkg/__init__.py` is `pkg`)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _package_of(module: str, path: Path, level: int) -> str:
    """The package a relative import of `level` dots starts from."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return package


def _targets(node: ast.Import | ast.ImportFrom, module: str, path: Path) -> list[str]:
    """The dotted names one import statement loads, unresolved (`pkg.name` may be a variable)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = _package_of(module, path, node.level)
        base = f"{package}.{base}" if base else package
    return [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"] + [base]


def imports_of(
    module: str, path: Path, modules: Mapping[str, Path]
) -> tuple[list[Import], list[Import]]:
    """(imports of project modules, imports naming a project module that does not exist).

    `from pkg import name` imports `pkg.name` when that is a module, else `pkg`."""
    ours = {name.split(".")[0] for name in modules}
    found: dict[str, Import] = {}
    missing: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        targets = _targets(node, module, path)
        if isinstance(node, ast.ImportFrom):
            *names, base = targets
            targets = [name if name in modules else base for name in names] or [base]
        for target in targets:
            if target.split(".")[0] not in ours:
                continue  # not ours: the standard library or a dependency
            link = Import(module, target, node.lineno)
            if target not in modules:
                missing.append(link)
            elif target != module and (target not in found or link.line < found[target].line):
                found[target] = link
    return sorted(found.values(), key=lambda i: i.line), missing


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, list[Import]]:
    """Each module of `packages` under `root` and the project modules it imports."""
    modules = find_modules(root, packages)
    return {name: imports_of(name, path, modules)[0] for name, path in modules.items()}


def missing_imports(root: Path, packages: Iterable[str]) -> list[Import]:
    """Imports that name a module of `packages` that does not exist (left over from a move)."""
    modules = find_modules(root, packages)
    return [link for name, path in modules.items() for link in imports_of(name, path, modules)[1]]


# --- the checks ------------------------------------------------------------------------------


def _strongly_connected(graph: Mapping[str, Sequence[Import]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that can each reach all the others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for link in graph.get(node, ()):
            if link.imported not in index:
                visit(link.imported)
                low[node] = min(low[node], low[link.imported])
            elif link.imported in on_stack:
                low[node] = min(low[node], index[link.imported])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _shortest_cycle_through(start: str, graph: Mapping[str, Sequence[Import]], group: set[str]):
    """The shortest path start -> ... -> start inside one strongly connected group."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for link in graph.get(node, ()):
            nxt = link.imported
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if nxt in group and nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{start} is in a strongly connected group but on no cycle")


def find_cycles(graph: Mapping[str, Sequence[Import]]) -> list[list[str]]:
    """Import cycles, as [a, b, ..., a]: for every module on a cycle, the shortest one through it
    (duplicates removed), so every module of every tangle is shown at least once."""
    cycles: set[tuple[str, ...]] = set()
    for group in _strongly_connected(graph):
        on_cycle = len(group) > 1 or any(
            link.imported == group[0] for link in graph.get(group[0], ())
        )
        if not on_cycle:
            continue
        for module in group:
            cycle = _shortest_cycle_through(module, graph, set(group))[:-1]
            first = cycle.index(min(cycle))
            cycles.add(tuple(cycle[first:] + cycle[:first]))
    return [[*cycle, cycle[0]] for cycle in sorted(cycles, key=lambda c: (len(c), c))]


def layer_of(module: str, layers: Sequence[Sequence[str]]) -> tuple[int, str] | None:
    """(layer index, 0 at the top; the package in it) of a module, or None if it has no layer."""
    best = None
    for depth, packages in enumerate(layers):
        for package in packages:
            inside = module == package or module.startswith(package + ".")
            if inside and (best is None or len(package) > len(best[1])):
                best = (depth, package)
    return best


def _is_namespace(module: str, layers: Sequence[Sequence[str]]) -> bool:
    """A package that only holds layers (`training`, `sepsis_rl`) and is in none itself."""
    return layer_of(module, layers) is None and any(
        package.startswith(module + ".") for packages in layers for package in packages
    )


def unlayered_modules(
    graph: Mapping[str, Sequence[Import]], layers: Sequence[Sequence[str]]
) -> list[str]:
    """Modules in no layer. A namespace package (`training/__init__.py`) is allowed if it
    imports nothing of the project: otherwise it would be a layer no rule covers."""
    return sorted(
        module
        for module, links in graph.items()
        if layer_of(module, layers) is None and not (_is_namespace(module, layers) and not links)
    )


def layer_violations(
    graph: Mapping[str, Sequence[Import]], layers: Sequence[Sequence[str]]
) -> list[str]:
    """Every import that goes up the layers or sideways between sibling packages."""
    problems = []
    for links in graph.values():
        for link in links:
            importer = layer_of(link.importer, layers)
            imported = layer_of(link.imported, layers)
            if importer is None or imported is None:
                continue  # reported by unlayered_modules (a bare namespace package is harmless)
            (depth_from, package_from), (depth_to, package_to) = importer, imported
            if depth_to < depth_from:
                problems.append(f"{link}: up, {package_from} is below {package_to}")
            elif depth_to == depth_from and package_to != package_from:
                problems.append(f"{link}: sideways, {package_from} and {package_to} are siblings")
    return sorted(problems)


# --- the checks, on tiny trees ---------------------------------------------------------------

TOY_LAYERS = (("app",), ("left", "right"), ("base",))


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    """Write {relative path: source} under root, with an empty `__init__.py` in every folder."""
    for relative, source in files.items():
        path = root / relative
        for folder in path.relative_to(root).parents:
            if folder != Path(".") and not (root / folder / "__init__.py").exists():
                (root / folder).mkdir(parents=True, exist_ok=True)
                (root / folder / "__init__.py").write_text("")
        path.write_text(textwrap.dedent(source))
    return root


def toy_graph(tmp_path: Path, files: Mapping[str, str]) -> dict[str, list[Import]]:
    packages = {relative.split("/")[0] for relative in files}
    return import_graph(write_tree(tmp_path, files), sorted(packages))


def test_a_cycle_through_lazy_and_type_checking_imports_is_found(tmp_path):
    graph = toy_graph(
        tmp_path,
        {
            "base/a.py": "from base import b\n",
            "base/b.py": "def f():\n    from base.c import g\n",
            "base/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import base.a\n",
            "base/d.py": "from base import a\n",  # reaches the cycle but is not on it
        },
    )
    assert find_cycles(graph) == [["base.a", "base.b", "base.c", "base.a"]]


def test_every_module_of_two_cycles_is_shown(tmp_path):
    graph = toy_graph(
        tmp_path,
        {
            "base/a.py": "import base.b\nimport base.c\n",
            "base/b.py": "import base.a\n",
            "base/c.py": "import base.b\n",
            "base/x.py": "import base.y\n",
            "base/y.py": "import base.x\n",
        },
    )
    assert find_cycles(graph) == [
        ["base.a", "base.b", "base.a"],
        ["base.x", "base.y", "base.x"],
        ["base.a", "base.c", "base.b", "base.a"],
    ]


def test_relative_and_from_imports_resolve_to_modules(tmp_path):
    graph = toy_graph(
        tmp_path,
        {
            "base/__init__.py": "CONSTANT = 1\n",
            "base/a.py": "from . import b\nfrom .sub.m import f\nfrom base import CONSTANT\n",
            "base/b.py": "",
            "base/sub/m.py": "from .. import b\nfrom . import n\nfrom ..b import thing\n",
            "base/sub/n.py": "",
        },
    )
    assert [link.imported for link in graph["base.a"]] == ["base.b", "base.sub.m", "base"]
    assert {link.imported for link in graph["base.sub.m"]} == {"base.b", "base.sub.n"}


def test_an_import_of_a_moved_module_is_reported(tmp_path):
    write_tree(tmp_path, {"base/a.py": "from base.gone import f\nimport os\n"})
    assert [str(link) for link in missing_imports(tmp_path, ["base"])] == [
        "base.a -> base.gone (line 1)"
    ]


def test_upward_and_sideways_imports_are_caught(tmp_path):
    graph = toy_graph(
        tmp_path,
        {
            "app/main.py": "import left.x\nimport base.util\n",
            "left/x.py": "import base.util\n\ndef f():\n    import app.main\n",
            "right/y.py": "from left import x\n",
            "base/util.py": "",
        },
    )
    assert layer_violations(graph, TOY_LAYERS) == [
        "left.x -> app.main (line 4): up, left is below app",
        "right.y -> left.x (line 1): sideways, right and left are siblings",
    ]


def test_a_module_outside_every_layer_is_caught(tmp_path):
    files = {"base/util.py": "", "stray/thing.py": "", "ns/__init__.py": "", "ns/app/m.py": ""}
    graph = toy_graph(tmp_path, files)
    layers = (("ns.app",), ("base",))
    assert unlayered_modules(graph, layers) == ["stray", "stray.thing"]

    graph = toy_graph(tmp_path, {**files, "ns/__init__.py": "import base.util\n"})
    assert unlayered_modules(graph, layers) == ["ns", "stray", "stray.thing"]


def test_a_clean_tree_passes(tmp_path):
    graph = toy_graph(
        tmp_path,
        {
            "app/main.py": "from left import x\nfrom right import y\n",
            "left/x.py": "from base import util\nfrom . import z\n",
            "left/z.py": "import base.util\n",
            "right/y.py": "import base.util\n",
            "base/util.py": "import json\n",
        },
    )
    assert find_cycles(graph) == []
    assert layer_violations(graph, TOY_LAYERS) == []
    assert unlayered_modules(graph, TOY_LAYERS) == []


# --- the checks, on the project --------------------------------------------------------------


def project_graph() -> dict[str, list[Import]]:
    graph = import_graph(PROJECT_ROOT, PACKAGES)
    # Guard against a check that passes because it read nothing (a wrong root, a renamed package).
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100, "the import graph is too small"
    return graph


def test_no_import_cycles():
    cycles = find_cycles(project_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_go_down_the_layers():
    problems = layer_violations(project_graph(), LAYERS)
    assert not problems, "imports against the layers (importer -> imported):\n" + "\n".join(
        problems
    )


def test_every_module_belongs_to_a_layer():
    stray = unlayered_modules(project_graph(), LAYERS)
    assert not stray, f"modules in no layer of LAYERS (docs/ARCHITECTURE.md): {stray}"


def test_every_project_import_names_an_existing_module():
    missing = missing_imports(PROJECT_ROOT, PACKAGES)
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(map(str, missing))
