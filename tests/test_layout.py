"""The house's import rules, read from the source: no import runs upward.

Layers, lowest first: ``merge_core`` < ``objectives`` < ``search``. Inside ``search`` the study definition
(``search.study``) is the bottom; the run engine (``search.engine``) and what comes after a run
(``search.results``) build on it and not on each other; ``search.run`` chains the engine into promotion;
the command line (``search.cli``) is the top. Function-level imports count: a lazy import upward is
still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the packages it may import (besides itself, the standard library and third parties)
ALLOWED: dict[str, set[str]] = {
    "merge_core": set(),
    "objectives": {"merge_core"},
    "search.study": {"merge_core", "objectives"},
    "search.engine": {"merge_core", "objectives", "search.study"},
    "search.results": {"merge_core", "objectives", "search.study"},
    "search.run": {"merge_core", "objectives", "search.study", "search.engine", "search.results"},
    "search.cli": {"merge_core", "objectives", "search.study", "search.engine", "search.results", "search.run"},
}
OURS = ("merge_core", "objectives", "search")


def layer_of(module: str) -> str | None:
    """The longest key of ALLOWED that ``module`` is, or lies inside; None for other modules."""
    for key in sorted(ALLOWED, key=len, reverse=True):
        if module == key or module.startswith(key + "."):
            return key
    return None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import of our packages in ``path``, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from search import run" names a module: count the longest name it can be
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(n, m) for n, m in found if m.split(".")[0] in OURS]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


SOURCES = sorted(p for pkg in OURS for p in (ROOT / pkg).rglob("*.py"))


def test_every_module_of_search_lies_in_a_layer():
    loose = [module_name(p) for p in SOURCES if layer_of(module_name(p)) is None and p.name != "__init__.py"]
    assert not loose, f"modules of search/ outside study/ engine/ results/ cli/ (or run.py): {loose}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_upward(path: Path):
    own = layer_of(module_name(path))
    if own is None:
        return  # search/__init__.py: empty, and checked above to be the only loose file
    bad = []
    for line, target in imported_modules(path):
        layer = layer_of(target)
        # "from search import x" with x unknown resolves to no layer: that is a module outside the layers
        if layer is None:
            bad.append(f"{path.relative_to(ROOT)}:{line}: {target} lies in no layer")
        elif layer != own and layer not in ALLOWED[own]:
            bad.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {target} ({layer})")
    assert not bad, "\n".join(bad)


def test_the_rule_catches_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from search.cli import main\n    import merge_core.recipe\n")
    found = imported_modules(probe)
    assert found == [(2, "search.cli.main"), (3, "merge_core.recipe")]
    assert layer_of("search.cli.main") == "search.cli"
    assert "search.cli" not in ALLOWED["search.engine"]
