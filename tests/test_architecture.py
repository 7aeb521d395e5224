"""The shape of the code, as `docs/architecture.md` draws it: imports run down its layers
and never in a circle (lazy and type-checking imports included), and no module of harness/
or models/ grows past what a reader holds at once."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_LINES, MAX_FUNCTION_LINES = 300, 60

# Bottom first; a module's layer is that of the longest prefix listed (harness.* default 1).
LAYERS = {
    "models": 0,
    "harness": 1,  # the core: values, devices, checkpoints, settings, runners (the contract)
    "harness.ports.options": 1,  # the --port options the core settings hold
    "harness.ports": 2, "harness.tp": 2, "harness.sandbox": 2, "harness.pool": 2,
    "harness.port_directories": 2,  # runners, ports and what loads them
    "harness.numerics": 3, "harness.perf": 3, "harness.accuracy": 3,  # the suites
    "harness.suites": 4, "harness.plugin": 4, "harness.options": 4, "harness.fixtures": 4,
    "harness.run_session": 4, "harness.report": 4, "harness.cli": 4,  # the run
}


def modules() -> dict[str, Path]:
    found = {}
    for path in [*ROOT.glob("harness/**/*.py"), *ROOT.glob("models/**/*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names = [f"{base}.{alias.name}" for alias in node.names]
            found |= {n for n in names if n in known} or ({base} & known)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & known
    return found - {name}


def layer(name: str) -> int:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_imports_run_down_the_layers():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in sorted(targets)
              if layer(b) > layer(a)]
    assert upward == []


def test_no_import_cycles():
    edges, cycles = graph(), []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_files_and_functions_stay_short():
    long = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_FILE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []


def test_a_cycle_and_an_upward_import_are_seen(tmp_path, monkeypatch):
    """The checks above can fail: a module importing a suite from the core is caught."""
    assert layer("harness.settings") < layer("harness.perf.options")
    assert "harness.perf.options" in imports(
        "harness.settings", _file(tmp_path, "from harness.perf.options import PerfSettings"),
        set(modules()))
    assert "harness.runners" in imports(
        "harness.ports.engine", _file(tmp_path, "from ..runners import right_padded"),
        set(modules()))


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "module.py"
    path.write_text(text + "\n")
    return path
