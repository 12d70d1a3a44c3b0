"""The package's layering, read from the source: which modules may import which, and no import cycle.

Every import counts, including those inside functions and under TYPE_CHECKING: a lazy import is
still a dependency. The rules:

- ``mlperf_loadgen`` is imported only in ``asyncbench/loadgen/`` (LoadGen glue depends on the runtime,
  not the other way round);
- ``runtime/`` (the hot path) does not import ``loadgen/``, ``harness/``, ``cli`` or the engine factory
  (opening and sizing engines is the harness's business, through ``engines.sizing``);
- ``engines/`` does not import ``runtime/``, ``loadgen/``, ``harness/`` or ``cli``;
- ``loadgen/`` (the LoadGen adapter) does not import ``harness/`` or ``cli``;
- ``serving/`` (a Triton server serving an engine) opens engines only: no ``runtime/``, ``loadgen/``, ``harness/``
  or ``cli``;
- ``harness/`` (one run end to end, the commands over runs) is imported only by ``cli`` inside the package
  (benchmarks and tests use it from outside);
- no cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

from asyncbench.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "asyncbench"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from a import b`` counts b when it is a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules (and mlperf_loadgen) it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path) if m in files or m == "mlperf_loadgen"}
    return graph


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_loadgen_is_imported_only_by_the_loadgen_glue() -> None:
    users = sorted(m for m, deps in import_graph().items() if "mlperf_loadgen" in deps)
    assert users and all(_in(m, "asyncbench.loadgen") for m in users), users


def test_lower_layers_do_not_import_upper_ones() -> None:
    forbidden = {
        "asyncbench.runtime": ("asyncbench.loadgen", "asyncbench.harness", "asyncbench.cli",
                               "asyncbench.engines.factory", "asyncbench.engines.sizing"),
        "asyncbench.engines": ("asyncbench.runtime", "asyncbench.loadgen", "asyncbench.harness", "asyncbench.cli"),
        "asyncbench.loadgen": ("asyncbench.harness", "asyncbench.cli"),
        "asyncbench.cuda": ("asyncbench.runtime", "asyncbench.loadgen", "asyncbench.engines", "asyncbench.harness",
                            "asyncbench.cli"),
        "asyncbench.data": ("asyncbench.runtime", "asyncbench.loadgen", "asyncbench.engines", "asyncbench.harness",
                            "asyncbench.cli"),
        "asyncbench.model": ("asyncbench.runtime", "asyncbench.loadgen", "asyncbench.harness", "asyncbench.cli"),
        "asyncbench.serving": ("asyncbench.runtime", "asyncbench.loadgen", "asyncbench.harness", "asyncbench.cli"),
    }
    wrong = [(m, d) for m, deps in import_graph().items() for layer, bad in forbidden.items() if _in(m, layer)
             for d in deps if any(_in(d, b) for b in bad)]
    assert not wrong, wrong


def test_the_harness_is_entered_only_from_the_command_line() -> None:
    users = sorted(m for m, deps in import_graph().items() if not _in(m, "asyncbench.harness") and m != "asyncbench.cli"
                   and any(_in(d, "asyncbench.harness") for d in deps))
    assert not users, users
    assert any(_in(d, "asyncbench.harness") for d in import_graph()["asyncbench.cli"])


def test_no_import_cycle() -> None:
    graph = {m: {d for d in deps if d != "mlperf_loadgen" and d != m} for m, deps in import_graph().items()}
    # A package's __init__ is imported on the way to its modules; only real module edges count.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
