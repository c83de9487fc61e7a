"""The package's imports run one way (design: cli -> compress -> train, deploy,
factory -> saved, analysis, data, models -> registry, layers, io, errors) and form no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "cnnlab"

# Lower numbers are lower floors; a module may import its own floor or any below it.
FLOORS = {
    "errors": 0, "io": 0, "config": 0, "devices": 0, "registry": 0, "layers": 0, "codec": 0,
    "timing": 0, "weight_grads": 0, "signals": 0,
    "tables": 0,
    "models": 1, "data": 1, "analysis": 1, "interop": 1, "saved": 1, "plots": 1,
    "train": 2, "deploy": 2, "factory": 2, "detect": 2,
    "compress": 3, "experiments": 3,
    "cli": 4, "__main__": 4, "__init__": 4,
}  # fmt: skip


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every cnnlab module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "cnnlab":  # `from cnnlab import x` imports cnnlab.x
                found |= {node.module} if node.module != "cnnlab" else set()
                found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cnnlab"}
    modules = {_module(p) for p in SRC.rglob("*.py")}
    return {m for m in found if m in modules}


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS["__init__"] if len(parts) == 1 else FLOORS[parts[1]]


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in SRC.rglob("*.py")}


def test_every_package_has_a_floor() -> None:
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.iterdir()}
    assert tops - {"__pycache__"} <= set(FLOORS)


def test_no_upward_import() -> None:
    upward = [
        f"{m} (floor {_floor(m)}) imports {i} (floor {_floor(i)})"
        for m, imports in _graph().items()
        for i in imports
        if _floor(i) > _floor(m) and m != "cnnlab"
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    graph = _graph()
    # A package imports its own modules through its __init__; that is not a cycle.
    edges = {
        m: {i for i in imports if i != m and not m.startswith(i + ".")}
        for m, imports in graph.items()
    }
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for nxt in sorted(edges.get(m, ())):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[m] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_no_function_local_import_outside_the_cli() -> None:
    """A function-local import would hide a cycle (the CLI's are lazy loading, at the top)."""
    hidden = []
    for path in SRC.rglob("*.py"):
        if _module(path).startswith("cnnlab.cli"):
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                hidden += [
                    f"{path.relative_to(SRC)}:{node.lineno}"
                    for node in ast.walk(fn)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cnnlab")
                ]
    assert not hidden, hidden


def test_importing_cnnlab_and_its_commands_leaves_torchvision_out() -> None:
    """torchvision (and torch._dynamo, which it pulls in) takes over a second to import: the
    modules that use it import it where they use it, so `cnnlab eval` and the other commands
    that need none of it start that much sooner."""
    commands = [p.stem for p in (SRC / "cli").glob("*.py") if p.stem != "__init__"]
    code = "import sys, cnnlab, cnnlab.cli, " + ", ".join(f"cnnlab.cli.{c}" for c in commands)
    code += "; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
