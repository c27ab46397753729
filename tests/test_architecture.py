"""The package's layering (docs/architecture.md), checked on the source: a package imports only from lower layers.

Every `import qsens.X` / `from qsens.X import ...` in qsens/, at module level or inside a function, is read with
`ast`; the check fails naming the file, the line and the two layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qsens"

# Lowest first; the same list, with what each layer is for, is in docs/architecture.md.
LAYERS = [
    {"__version__"},  # qsens/__init__.py: the version, nothing else
    {"documents", "errors", "provenance", "metrics", "quantizers", "fit", "blas"},
    {"families", "store", "executors"},
    {"suites"},
    {"runner"},
    {"analysis", "board", "testbed"},
    {"nightly", "bench"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_MODULE_LINES = 400


def _unit(path: Path) -> str:
    """The top-level package or module of qsens a file belongs to ('runner' for qsens/runner/plan.py)."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported unit) for every qsens import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "qsens":
                continue
            if len(parts) > 1:
                out.append((node.lineno, parts[1]))
            else:  # from qsens import documents, __version__
                out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names
                    if a.name.startswith("qsens.")]
    return out


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in _sources()}
    assert units <= set(LAYER_OF), f"give these a layer in LAYERS and docs/architecture.md: {units - set(LAYER_OF)}"


def test_no_import_reaches_up_or_across():
    wrong = []
    for path in _sources():
        here = _unit(path)
        for line, there in _imports(path):
            if there == here or there not in LAYER_OF:
                continue
            if LAYER_OF[there] >= LAYER_OF[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} (layer {LAYER_OF[here]}) imports "
                             f"{there} (layer {LAYER_OF[there]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a ground-floor module importing the runner is reported."""
    fake = tmp_path / "qsens"
    (fake / "metrics").mkdir(parents=True)
    (fake / "metrics" / "bad.py").write_text("def f():\n    from qsens.runner.plan import plan_cells\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match=r"metrics/bad.py:2: metrics \(layer 1\) imports runner \(layer 4\)"):
        test_no_import_reaches_up_or_across()


def test_every_folder_of_modules_is_a_package():
    """setuptools' find_packages (pyproject.toml) installs only folders with an __init__.py."""
    missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in {p.parent for p in PACKAGE.rglob("*.py")}
                     if not (f / "__init__.py").is_file())
    assert not missing, f"add an __init__.py (with a docstring saying what the package holds) to {missing}"


def test_test_modules_have_unique_names():
    """pytest's default import mode imports each test file under its bare name, so two test_x.py in different
    folders stop collection for the whole suite ("import file mismatch"), which a run of one folder never shows."""
    tests = Path(__file__).resolve().parent
    by_name: dict[str, list[str]] = {}
    for path in tests.rglob("*.py"):
        if path.name != "conftest.py" and "__pycache__" not in path.parts:
            by_name.setdefault(path.name, []).append(str(path.relative_to(tests)))
    clashes = {name: sorted(paths) for name, paths in by_name.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
