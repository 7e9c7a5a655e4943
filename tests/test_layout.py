"""The package's shape, checked from its source: subpackages by role whose imports go one way, no import cycle
(imports inside functions included), an import inside a function only where it defers a heavy library and says so,
and at most eight modules directly in ``ablation/``. What a newcomer would draw by hand, redrawn on every run."""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.support.folders import ROOT

PACKAGE = ROOT / "ablation"
# Each subpackage and the subpackages it may import (README, "Where things live"; each __init__.py says the same).
# Read bottom-up: every layer may use the ones above it in this table, never one below it.
LAYERS = {
    "core": set(),
    "attention": {"core"},
    "models": {"core", "attention"},
    "data": {"core"},
    "experiment": {"core", "attention", "models", "data"},
    "stats": {"core", "experiment"},
    "tracking": {"core", "experiment"},
    "engine": {"core", "attention", "models", "data", "experiment", "tracking"},
    "scheduler": {"core", "attention", "models", "data", "experiment", "tracking", "engine", "stats", "report"},
    "slurm": {"core", "experiment", "tracking", "scheduler"},
    "report": {"core", "attention", "models", "data", "experiment", "tracking", "engine", "stats"},
}
# Read as layers, bottom up: core; attention, data; models; experiment; stats, tracking; engine; report; scheduler;
# slurm.
TOP_LEVEL = {"__init__", "__main__", "cli", "api"}  # the entry points; everything else lives in a subpackage
HEAVY = ("torch", "torchvision", "mlflow", "optuna", "scipy", "matplotlib", "pandas", "submitit", "sqlalchemy")


@cache
def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _target(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The ``ablation`` modules an import statement imports (the package imports itself by absolute names only; a
    ``from package import submodule`` counts as the submodule, not the package)."""
    known = modules()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        assert not node.level, f"{module}: a relative import"
        source = node.module or ""
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module and name.startswith("ablation"):
            out.append(name)
    return out


@cache
def imports() -> dict[str, list[tuple[str, ast.stmt, bool]]]:
    """module -> (imported ablation module, the statement, whether it sits inside a function)."""
    graph: dict[str, list] = {}
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        inside: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inside |= {id(sub) for sub in ast.walk(node) if isinstance(sub, ast.Import | ast.ImportFrom)}
        graph[module] = [
            (target, node, id(node) in inside)
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            and not (getattr(node, "module", "") or "").startswith("__")
            for target in _target(module, node)
        ]
    return graph


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def test_at_most_eight_modules_sit_directly_in_the_package():
    direct = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(direct) <= 8 and set(direct) <= TOP_LEVEL, direct


def test_every_subpackage_has_a_layer_and_says_what_it_owns_and_may_import():
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert set(packages) == set(LAYERS), packages
    for name in packages:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
        assert len(doc) > 80, f"ablation/{name}/__init__.py needs a docstring saying what it owns and may import"
        for allowed in LAYERS[name]:
            assert f"``{allowed}``" in doc, f"ablation/{name}/__init__.py does not say it may import {allowed}"


def test_subpackages_import_only_the_layers_they_may():
    wrong = []
    for module, edges in imports().items():
        mine = _package(module)
        if mine is None:
            continue
        for target, node, _ in edges:
            theirs = _package(target)
            if theirs not in (None, mine) and theirs not in LAYERS[mine]:
                wrong.append(f"{module}:{node.lineno} imports {target} ({mine} may not import {theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_counting_imports_inside_functions():
    graph = {module: {target for target, _, _ in edges} for module, edges in imports().items()}
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert not cycles, cycles


def _heavy_at_import(module: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether importing ``module`` imports a heavy library (itself or through the modules it imports at the top)."""
    tree = ast.parse(modules()[module].read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            name = node.names[0].name if isinstance(node, ast.Import) else node.module or ""
            if name.split(".")[0] in HEAVY:
                return True
    return any(
        _heavy_at_import(target, seen | {module})
        for target, _, inside in imports()[module]
        if not inside and target not in seen
    )


def _said(lines: list[str], node: ast.stmt) -> bool:
    """Whether an import statement says why it is where it is: a comment on its lines, or anywhere in the run of
    import lines it belongs to, or on the line just above that run."""
    first = node.lineno - 1
    while first > 0 and lines[first - 1].strip().startswith(("from ", "import ", "#")):
        first -= 1
    last = node.end_lineno or node.lineno
    return any("#" in line for line in lines[max(first - 1, 0) : last])


def test_an_import_inside_a_function_defers_a_heavy_library_and_says_so():
    lines = {module: path.read_text().splitlines() for module, path in modules().items()}
    wrong = set()
    for module, edges in imports().items():
        for target, node, inside in edges:
            if not inside:
                continue
            if not _heavy_at_import(target):
                wrong.add(f"{module}:{node.lineno} imports {target} inside a function, which imports nothing heavy")
            elif not _said(lines[module], node):
                wrong.add(f"{module}:{node.lineno} imports {target} inside a function without saying why")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_subpackage_imports_no_torch_when_it_is_imported(name):
    """A package's own __init__ stays light: the config check imports attention, models, data and experiment
    before torch, and every package can be imported to read its docstring."""
    tree = ast.parse((PACKAGE / name / "__init__.py").read_text())
    heavy = [
        node.lineno
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        and ((node.names[0].name if isinstance(node, ast.Import) else node.module or "").split(".")[0] in HEAVY)
    ]
    assert not heavy, f"ablation/{name}/__init__.py imports a heavy library at lines {heavy}"


def test_the_wheel_lists_every_package_folder():
    """pyproject.toml lists the packages (it must, to ship experiments/ as ablation/experiment/bundled/): a package
    folder left out of the list would be missing from every installed copy."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in PACKAGE.rglob("__init__.py")
        if "csrc" not in path.parts
    }
    assert listed == folders | {"ablation.experiment.bundled"}, sorted(
        listed ^ (folders | {"ablation.experiment.bundled"})
    )
