"""Layering: the floors of the two libraries, checked on their source.

From the bottom up:

- ``skmm_jax.common`` is the ground floor: it imports nothing from the rest of
  ``skmm_jax`` and nothing from ``prune_jax``;
- ``skmm_jax`` is model-agnostic: it imports nothing from ``prune_jax``;
- ``prune_jax.models`` is below the pruning algorithms: it imports nothing from
  ``prune_jax.pruning`` and, of ``skmm_jax``, only ``skmm_jax.common``;
- experiment code (``*.experiments``) sits on top: only other experiment code and the
  command-line modules import it;
- no import cycle among the modules of both packages.

Every module is parsed, not imported, so an import inside a function, which an
import-time check would miss, counts for the floors. The cycle check counts only the
imports that run when the module is imported (module level, class bodies, ``try`` and
``if`` blocks; not function bodies): a cycle through a function-level import is how a
cycle is legitimately broken. Imports under ``if TYPE_CHECKING:`` do count: they are
module-level dependencies of the design even if they do not run.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

PACKAGES = ("skmm_jax", "prune_jax")
# The command-line modules, which may import experiment code; with a trailing dot, the
# submodules of a package (if prune_jax.cli becomes one).
CLI_MODULES = ("skmm_jax.cli", "prune_jax.cli", "prune_jax.cli.")


@dataclasses.dataclass(frozen=True)
class Import:
    line: int
    module: str  # absolute: relative imports resolved; `from p import m` → "p.m" when p.m is a module
    runs_on_import: bool  # not inside a function body (so part of the module-level import graph)


# --------------------------------------------------------------------- the scan


def package_modules(package: str) -> dict[str, Path]:
    """{dotted name: file} of every module of ``package``, found on disk (nothing is imported)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not an installed package"
    root = Path(next(iter(spec.submodule_search_locations)))
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def all_modules() -> dict[str, Path]:
    return {name: path for package in PACKAGES for name, path in package_modules(package).items()}


def _is_type_checking_guard(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imported_modules(
    path: Path, module: str = "m", *, is_package: bool = False, known: Iterable[str] = ()
) -> list[Import]:
    """Every import statement of the file at ``path`` (the module named ``module``), at any
    depth, resolved to absolute names. ``known``: the module names that exist, so that
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module."""
    known = set(known)
    found: list[Import] = []

    def visit(node: ast.AST, runs_on_import: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(node.lineno, alias.name, runs_on_import) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.append(Import(node.lineno, candidate if candidate in known else base, runs_on_import))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            runs_on_import = False
        for child in ast.iter_child_nodes(node):
            visit(child, runs_on_import)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def import_table() -> dict[str, list[Import]]:
    """{module: its imports} for every module of both packages."""
    modules = all_modules()
    return {
        name: imported_modules(path, name, is_package=path.name == "__init__.py", known=modules)
        for name, path in modules.items()
    }


def within(module: str, prefix: str) -> bool:
    """``module`` is ``prefix`` or one of its submodules (``prefix`` "a.b." matches only submodules)."""
    if prefix.endswith("."):
        return module.startswith(prefix)
    return module == prefix or module.startswith(prefix + ".")


def violations(
    importer: Callable[[str], bool], forbidden: Iterable[str], allowed: Iterable[str] = ()
) -> list[str]:
    """"module:line imports target" for every import, function-level ones included, of a
    module for which ``importer(module)`` holds, of a target within a ``forbidden`` prefix
    and not within an ``allowed`` one."""
    forbidden, allowed = list(forbidden), list(allowed)
    return sorted(
        {
            f"{name}:{imp.line} imports {imp.module}"
            for name, imports in import_table().items()
            if importer(name)
            for imp in imports
            if any(within(imp.module, p) for p in forbidden) and not any(within(imp.module, p) for p in allowed)
        }
    )


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One shortest cycle ``[a, b, ..., a]`` through every node that is on a cycle, without
    repeats (a cycle found from another of its nodes is not reported twice)."""
    graph = {node: sorted(set(targets) & set(graph)) for node, targets in graph.items()}
    cycles, seen = [], set()
    for start in sorted(graph):
        # Breadth-first from start's successors back to start: the shortest cycle through it.
        parents: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parents:
            next_frontier = []
            for node in frontier:
                for target in graph[node]:
                    if target not in parents:
                        parents[target] = node
                        next_frontier.append(target)
            frontier = next_frontier
        if start not in parents:
            continue
        path, node = [start], parents[start]
        while node != start:
            path.append(node)
            node = parents[node]
        path.append(start)
        path.reverse()
        key = frozenset(zip(path, path[1:]))
        if key not in seen:
            seen.add(key)
            cycles.append(path)
    return cycles


# --------------------------------------------------------------------- the floors


def test_the_walk_sees_every_module_of_both_packages():
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        walked = {package} | {info.name for info in pkgutil.walk_packages(path, prefix=f"{package}.")}
        assert set(package_modules(package)) == walked
    assert "skmm_jax.experiments.mlp_finetune" in all_modules()  # subpackages too
    assert "prune_jax.models.llama" in all_modules()  # a package is named by its __init__


def test_skmm_jax_imports_nothing_from_prune_jax():
    offending = violations(lambda name: within(name, "skmm_jax"), ["prune_jax"])
    assert not offending, "skmm_jax must not depend on prune_jax:\n" + "\n".join(offending)


def test_common_is_the_ground_floor():
    offending = violations(
        lambda name: within(name, "skmm_jax.common"), ["skmm_jax", "prune_jax"], allowed=["skmm_jax.common"]
    )
    assert not offending, "skmm_jax.common must import only itself of both packages:\n" + "\n".join(offending)


def test_models_are_below_pruning_and_see_only_common_of_skmm_jax():
    offending = violations(
        lambda name: within(name, "prune_jax.models"), ["prune_jax.pruning", "skmm_jax"], allowed=["skmm_jax.common"]
    )
    assert not offending, (
        "prune_jax.models must import nothing from prune_jax.pruning and only skmm_jax.common of skmm_jax:\n"
        + "\n".join(offending)
    )


def test_only_experiments_and_the_clis_import_experiment_code():
    experiments = ["skmm_jax.experiments", "prune_jax.experiments"]
    offending = violations(
        lambda name: not any(within(name, prefix) for prefix in experiments + list(CLI_MODULES)), experiments
    )
    assert not offending, "library code must not import experiment code:\n" + "\n".join(offending)


def test_no_import_cycles():
    graph = {
        name: [imp.module for imp in imports if imp.runs_on_import and imp.module != name]
        for name, imports in import_table().items()
    }
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (module-level imports):\n" + "\n".join(" -> ".join(c) for c in cycles)


# --------------------------------------------------------------------- the scan itself


def test_the_scan_catches_an_import_inside_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from prune_jax.data import load_documents\n    import prune_jax.models as m\n")
    imports = imported_modules(source)
    assert [imp.module for imp in imports] == ["prune_jax.data", "prune_jax.models"]
    assert not any(imp.runs_on_import for imp in imports)


def test_the_scan_resolves_relative_imports_and_submodules(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from . import sibling, helper_function\n"
        "from .sibling import thing\n"
        "from .. import other\n"
        "from ..other.deep import x\n"
        "import a.b.c\n"
        "from a.b import c\n"
        "class K:\n    from a import b\n"
        "if TYPE_CHECKING:\n    from pkg.sub.typing_only import T\n"
        "try:\n    import optional\nexcept ImportError:\n    pass\n"
    )
    known = {"pkg", "pkg.sub", "pkg.sub.mod", "pkg.sub.sibling", "pkg.other", "pkg.other.deep", "a", "a.b", "a.b.c"}
    imports = imported_modules(source, "pkg.sub.mod", known=known)
    assert [(imp.line, imp.module) for imp in imports] == [
        (1, "pkg.sub.sibling"),  # a submodule: counts as that module
        (1, "pkg.sub"),  # a name defined in the package: counts as the package
        (2, "pkg.sub.sibling"),
        (3, "pkg.other"),
        (4, "pkg.other.deep"),
        (5, "a.b.c"),
        (6, "a.b.c"),
        (8, "a.b"),
        (10, "pkg.sub.typing_only"),
        (12, "optional"),
    ]
    assert all(imp.runs_on_import for imp in imports)
    # In a package's __init__, one dot is the package itself.
    init = imported_modules(source, "pkg.sub", is_package=True, known=known)
    assert init[0].module == "pkg.sub.sibling" and init[3].module == "pkg.other"


def test_the_scan_names_every_cycle_with_its_path():
    graph = {"a": ["b"], "b": ["c", "x"], "c": ["a"], "x": [], "p": ["q"], "q": ["p"], "lone": ["lone"]}
    assert import_cycles(graph) == [["a", "b", "c", "a"], ["lone", "lone"], ["p", "q", "p"]]
    assert import_cycles({"a": ["b"], "b": ["c"], "c": []}) == []


def test_prefixes_match_whole_names():
    assert within("skmm_jax.common.io", "skmm_jax.common") and not within("skmm_jax.commonx", "skmm_jax.common")
    assert within("prune_jax.cli.prune", "prune_jax.cli.") and not within("prune_jax.cli", "prune_jax.cli.")


def test_no_test_module_imports_another_or_conftest():
    """Tests share builders through conftest fixtures only, so test files can move between
    folders freely (pytest's rootdir-relative imports would otherwise break)."""
    tests = Path(__file__).resolve().parent
    local = {path.stem for path in tests.rglob("*.py")} | {tests.name}
    offending = sorted(
        {
            f"{path.relative_to(tests)}:{imp.line} imports {imp.module}"
            for path in tests.rglob("*.py")
            for imp in imported_modules(path)
            if imp.module.split(".")[0] in local
        }
    )
    assert not offending, "a test module imports another test module (use a conftest fixture):\n" + "\n".join(offending)


def test_importing_the_libraries_starts_no_jax_backend():
    """A multi-process run must call jax.distributed.initialize() before any JAX computation,
    and the command lines import the libraries first: a module-level ``jnp`` constant would
    start the backend at import and break every multi-host run."""
    import subprocess
    import sys

    code = ("import skmm_jax, prune_jax, prune_jax.cli, prune_jax.runs, skmm_jax.cli\n"
            "from jax._src import xla_bridge\n"
            "assert not xla_bridge.backends_are_initialized(), 'a JAX backend started at import'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
