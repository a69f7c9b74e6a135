"""The import rules of mm_hf/, checked on the source with `ast` (nothing is imported):

- the module import graph has no cycle, counting imports inside functions (a cycle hidden in a function is
  still a cycle: the two modules cannot be understood or tested one without the other) and the package
  `__init__` that importing `mm_hf.a.b` runs first; `if TYPE_CHECKING:` imports, which never run, do not count;
- no module imports another module's private (`_name`) helper: make it public or move it;
- an intra-package import inside a function states why in a comment on its line or the line above (e.g. an
  optional heavy dependency loaded at call time), otherwise it belongs at the top of the module;
- each UPPER_CASE constant is defined in one module (imported elsewhere; one with another meaning gets another
  name);
- the remote-code files (`models/configuration_*`, `models/modeling_*`, `models/processing_*` and what they import)
  import only sibling
  files of models/, which `save_pretrained` ships with a checkpoint.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mm_hf"

# Known exceptions: none today. Add one only with its reason; each entry must still occur (else the test fails),
# so the lists only shrink. Paths are relative to mm_hf/.
ALLOWED_PRIVATE_IMPORTS: set = set()  # (importing file, module, name)
ALLOWED_UNEXPLAINED_FUNCTION_IMPORTS: set[tuple[str, str]] = set()  # (file, import statement)
ALLOWED_DUPLICATE_CONSTANTS: set[tuple[str, str]] = set()  # (file, name) defined again elsewhere


@dataclass
class Import:
    """One intra-package import statement: the module it loads and the names it takes from it."""

    node: ast.stmt
    target: str
    names: list[str]
    in_function: bool
    type_only: bool


def source_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_exists(name: str, root: Path) -> bool:
    folder = root.joinpath(*name.split(".")[1:])
    return folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()


def is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in {getattr(test, "id", None), getattr(test, "attr", None)}


def intra_package_imports(path: Path, root: Path) -> list[Import]:
    """Every import of `root`'s package in `path`, relative or absolute, and where it sits."""
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    top = root.name
    found = []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source == top or source.startswith(top + "."):
                    names = [alias.name for alias in child.names]
                    # `from . import streaming` loads the submodules themselves.
                    submodules = [f"{source}.{n}" for n in names if module_exists(f"{source}.{n}", root)]
                    for target in submodules if len(submodules) == len(names) else [source]:
                        found.append(Import(child, target, names, in_function, type_only))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == top or alias.name.startswith(top + "."):
                        found.append(Import(child, alias.name, [], in_function, type_only))
            visit(
                child,
                in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
                type_only or is_type_checking(child),
            )

    visit(ast.parse(path.read_text(), filename=str(path)), False, False)
    return found


def packages_run_first(importer: str, target: str) -> list[str]:
    """The packages whose `__init__` importing `target` runs, apart from those `importer` already sits in."""
    parts = target.split(".")
    ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}
    return sorted(p for p in ancestors if not (importer == p or importer.startswith(p + ".")))


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules it imports anywhere in it (type-checking imports aside); importing `pkg.a.b` from
    outside `pkg.a` also runs `pkg.a`'s `__init__`, so that is an edge too: a cycle through a package `__init__`
    fails at import time or not depending on which module is imported first."""
    graph: dict[str, set[str]] = {}
    for path in source_files(root):
        here = module_name(path, root)
        edges = graph.setdefault(here, set())
        for imp in intra_package_imports(path, root):
            if not imp.type_only:
                edges.update(m for m in [imp.target, *packages_run_first(here, imp.target)] if m != here)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of each strongly connected component with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def private_imports(root: Path = PACKAGE) -> set[tuple[str, str, str]]:
    """(file, module, name) of each `_name` (not dunder) imported from another module of the package."""
    found = set()
    for path in source_files(root):
        for imp in intra_package_imports(path, root):
            found.update(
                (relative(path, root), imp.target, name)
                for name in imp.names
                if name.startswith("_") and not name.startswith("__")
            )
    return found


def comment_lines(source: str) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {token.start[0] for token in tokens if token.type == tokenize.COMMENT}


def unexplained_function_imports(root: Path = PACKAGE) -> set[tuple[str, str]]:
    """(file, import statement) of in-function intra-package imports without a comment on their lines or above."""
    found = set()
    for path in source_files(root):
        comments = comment_lines(path.read_text())
        for imp in intra_package_imports(path, root):
            node = imp.node
            if imp.in_function and not comments & set(range(node.lineno - 1, node.end_lineno + 1)):
                found.add((relative(path, root), ast.unparse(node)))
    return found


def duplicate_constants(root: Path = PACKAGE) -> dict[str, list[tuple[str, str]]]:
    """UPPER_CASE module-level names assigned in more than one module -> [(file, name as written)] (a leading `_`
    is ignored, so a private copy of a public constant counts). The evaluate module scripts (metrics/x/x.py) are
    left out: `evaluate.load` runs each alone, and their DESCRIPTION / KWARGS_DESCRIPTION are its convention."""
    defined: dict[str, list[tuple[str, str]]] = {}
    for path in source_files(root):
        if path.parent.parent.name == "metrics" and path.stem == path.parent.name:
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for name in (getattr(target, "id", "") for target in targets):
                if name.lstrip("_").isupper() and not name.startswith("__"):
                    defined.setdefault(name.lstrip("_"), []).append((relative(path, root), name))
    return {name: places for name, places in defined.items() if len(places) > 1}


def test_the_module_import_graph_has_no_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (modules that import each other, possibly through others):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_no_module_imports_a_private_name_of_another():
    found = private_imports() - ALLOWED_PRIVATE_IMPORTS
    assert not found, "private names imported across modules (make them public or move them):\n" + "\n".join(
        f"{file}: from {module} import {name}" for file, module, name in sorted(found)
    )


def test_imports_inside_functions_state_why():
    found = unexplained_function_imports() - ALLOWED_UNEXPLAINED_FUNCTION_IMPORTS
    assert not found, (
        "mm_hf imports inside a function without a comment saying why (move them to the top of the module, or "
        "comment the reason on the line or the line above):\n"
        + "\n".join(f"{file}: {statement}" for file, statement in sorted(found))
    )


def test_each_constant_is_defined_once():
    found = {
        name: places
        for name, places in duplicate_constants().items()
        if len([(file, written) for file, written in places if (file, written) not in ALLOWED_DUPLICATE_CONSTANTS]) > 1
    }
    assert not found, (
        "constants defined in several modules (define once and import; rename one whose meaning differs):\n"
        + "\n".join(f"{name}: {[file for file, _ in places]}" for name, places in sorted(found.items()))
    )


def test_the_allowlists_only_hold_live_violations():
    duplicates = {entry for places in duplicate_constants().values() for entry in places}
    stale = sorted(ALLOWED_PRIVATE_IMPORTS - private_imports())
    stale += sorted(ALLOWED_UNEXPLAINED_FUNCTION_IMPORTS - unexplained_function_imports())
    stale += sorted(ALLOWED_DUPLICATE_CONSTANTS - duplicates)
    assert not stale, f"allowlist entries that no longer occur (delete them): {stale}"


def shipped_with_checkpoints() -> list[Path]:
    """The configuration_* / modeling_* / processing_* files and every file they import, recursively: what
    `save_pretrained` copies next to a checkpoint (transformers' `get_relative_import_files`)."""
    models = PACKAGE / "models"
    todo = [*models.glob("configuration_*.py"), *models.glob("modeling_*.py"), *models.glob("processing_*.py")]
    shipped: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in shipped:
            continue
        shipped.add(path)
        for imp in intra_package_imports(path, PACKAGE):
            sibling = models / f"{imp.target.rpartition('.')[2]}.py"
            if imp.target.startswith("mm_hf.models.") and sibling.is_file():
                todo.append(sibling)
    return sorted(shipped)


@pytest.mark.parametrize("path", shipped_with_checkpoints(), ids=lambda p: p.name)
def test_code_shipped_with_checkpoints_imports_only_sibling_files(path):
    """transformers copies what `from .sibling import x` names; anything else of mm_hf is missing where the
    checkpoint is loaded with trust_remote_code=True and without mm_hf."""
    outside = [
        f"line {imp.node.lineno}: {ast.unparse(imp.node)}"
        for imp in intra_package_imports(path, PACKAGE)
        if not (
            isinstance(imp.node, ast.ImportFrom)
            and imp.node.level == 1
            and imp.node.module
            and (path.parent / f"{imp.node.module}.py").is_file()
        )
    ]
    assert not outside, (
        f"{relative(path, PACKAGE)} ships with checkpoints but imports more than sibling files: {outside}"
    )


FAKE_PACKAGE = {
    "__init__.py": "",
    "a.py": "from .b import helper\n",
    "b.py": "def helper():\n    from .a import x  # no reason given, but a comment: still a cycle\n",
    "c.py": (
        "from typing import TYPE_CHECKING\n"
        "from .b import _private\n"
        "if TYPE_CHECKING:\n"
        "    from .d import D\n"
        "LIMIT = 5\n"
        "def f():\n"
        "    from .b import helper\n"
        "    # lazy: heavy\n"
        "    from .sub import y\n"
        "    from fake.sub.e import (\n"
        "        z,  # explained inside the statement\n"
        "    )\n"
    ),
    "d.py": "from . import c\n_LIMIT = 6\n",
    "sub/__init__.py": "from ..d import thing\n",
    "sub/e.py": "",
}


def test_the_checks_find_what_they_should(tmp_path):
    """On a made-up package: a cycle through a function import, one through a package __init__, a private import,
    an unexplained function import (and three explained ones), a duplicated constant; type-checking imports and
    absolute imports are read right."""
    root = tmp_path / "fake"
    for name, text in FAKE_PACKAGE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = import_graph(root)
    assert graph["fake.c"] == {"fake.b", "fake.sub", "fake.sub.e"}  # not fake.d: TYPE_CHECKING only
    assert sorted(find_cycles(graph)) == [["fake.a", "fake.b"], ["fake.c", "fake.d", "fake.sub"]]
    assert private_imports(root) == {("c.py", "fake.b", "_private")}
    assert unexplained_function_imports(root) == {("c.py", "from .b import helper")}
    assert duplicate_constants(root) == {"LIMIT": [("c.py", "LIMIT"), ("d.py", "_LIMIT")]}
    assert find_cycles({"x": {"y"}, "y": set()}) == []
