"""Layering: ``skmm_jax`` is model-agnostic and imports nothing from ``prune_jax``.

Every module of the package is parsed (not imported), so imports inside functions,
which an import-time check would miss, count too.
"""

import ast
import pkgutil
from pathlib import Path

import skmm_jax


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def skmm_modules() -> dict[str, Path]:
    modules = {"skmm_jax": Path(skmm_jax.__file__)}
    for info in pkgutil.walk_packages(skmm_jax.__path__, prefix="skmm_jax."):
        spec = info.module_finder.find_spec(info.name)
        modules[info.name] = Path(spec.origin)
    return modules


def test_the_walk_sees_every_file_of_the_package():
    walked = {path.resolve() for path in skmm_modules().values()}
    on_disk = {path.resolve() for path in Path(skmm_jax.__file__).parent.rglob("*.py")}
    assert walked == on_disk
    assert any(name == "skmm_jax.experiments.mlp_finetune" for name in skmm_modules())  # subpackages too


def test_skmm_jax_imports_nothing_from_prune_jax():
    offending = [
        f"{name}:{line} imports {module}"
        for name, path in sorted(skmm_modules().items())
        for line, module in imported_modules(path)
        if module == "prune_jax" or module.startswith("prune_jax.")
    ]
    assert not offending, "skmm_jax must not depend on prune_jax:\n" + "\n".join(offending)


def test_the_scan_catches_an_import_inside_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from prune_jax.data import load_documents\n    import prune_jax.models as m\n")
    assert [module for _, module in imported_modules(source)] == ["prune_jax.data", "prune_jax.models"]
