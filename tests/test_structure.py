"""The package's structure as the developers' guide states it: chapters as packages whose row
code never reaches a card, imports at the top of modules (each exception says why) and no
import loop between adlib's modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from adlib.chapters.registry import chapters
from adlib.study.load import load_study
from adlib.study.provenance import import_closure

ADLIB = Path(__file__).resolve().parents[1] / "adlib"
SOURCES = sorted(p for p in ADLIB.rglob("*.py") if "resources" not in p.parts)


def _module(path: Path) -> str:
    parts = path.relative_to(ADLIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (not in functions or TYPE_CHECKING)."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and not _type_checking(node):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return out


def test_the_top_level_of_adlib_is_packages_by_job():
    modules = sorted(p.name for p in ADLIB.glob("*.py"))
    packages = sorted(p.name for p in ADLIB.iterdir() if (p / "__init__.py").is_file())
    assert modules == ["__init__.py", "__main__.py"], modules
    assert packages == ["analysis", "book", "chapters", "data", "nn", "resources", "study",
                        "training"]


def test_every_import_inside_a_function_says_why():
    """An import inside a function is a heavy optional dependency, a platform module or a loop
    it breaks: the line or one of the two above it says which, in a comment."""
    silent = []
    for path in SOURCES:
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        around = lines[max(sub.lineno - 3, 0):sub.lineno]
                        if not any("#" in line for line in around):
                            silent.append(f"{path.relative_to(ADLIB.parent)}:{sub.lineno}")
    assert not silent, f"imports inside functions without a reason: {silent}"


def _import_graph() -> dict[str, set[str]]:
    """adlib module -> the adlib modules it imports when it is imported."""
    known = {_module(p) for p in SOURCES}
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        name, edges = _module(path), set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            edges |= {t for t in targets if t in known and t != name}
        graph[name] = edges
    return graph


def _find_loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop of ``graph`` (``[a, b, ..., a]``), None when there is none."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (loop := visit(nxt, path + [nxt])):
                return loop
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (loop := visit(module, [module])):
            return loop
    return None


def test_the_loop_finder_finds_a_planted_loop():
    assert _find_loop({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_loop_between_adlib_modules():
    graph = _import_graph()
    assert "adlib.training.tasks" in graph["adlib.chapters.rlr.study"]
    loop = _find_loop(graph)
    assert loop is None, "import loop: " + " -> ".join(loop or [])


STUDIES = [c for c in chapters() if c.study]


@pytest.mark.parametrize("chapter", STUDIES, ids=lambda c: c.key)
def test_row_code_never_reaches_a_card(chapter):
    """The file boundary decides what is hashed: a study's row code imports no card, and none
    of the registry, the claims or the book."""
    study = load_study(chapter.key)
    closure = import_closure(study.code)
    assert study.code == f"{chapter.module.rpartition('.')[0]}.study"
    leaks = [m for m in closure if m.endswith(".card") or m.startswith((
        "adlib.chapters.registry", "adlib.chapters.base", "adlib.analysis.claims",
        "adlib.analysis.stats", "adlib.book", "adlib.study.engine", "adlib.study.report"))]
    assert not leaks, leaks
