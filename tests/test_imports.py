"""The package's import graph, read with ``ast``: no cycle, no function-local import of a dynashape
module (bar the few that must be lazy), production code never imports ``dynashape.testing``, and
``import dynashape`` stays light (issue 16)."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import dynashape

PACKAGE = Path(dynashape.__file__).parent

# (importer, imported) pairs that must stay inside a function, and why
MUST_BE_LAZY = {
    ("dynashape.__main__", "dynashape.cli"): "the console script imports the CLI inside the one error wrapper, "
    "so a Ctrl-C or a broken module during that import ends as exit 130 or 3",
    ("dynashape.serving.triton_model", "dynashape.trt.engine"): "runs inside Triton's Python backend, where dynashape "
    "is optional (the ONNX Runtime fallback needs only numpy and onnxruntime)",
}



@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    local: bool  # inside a function


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _edges() -> list[Edge]:
    modules = _modules()
    edges: list[Edge] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, local: bool, module: str = module, is_package: bool = is_package) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue  # for the type checker only
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        package = module.split(".") if is_package else module.split(".")[:-1]
                        package = package[: len(package) - (child.level - 1)]
                        base = ".".join([*package, base] if base else package)
                    # `from dynashape import cli` imports the module dynashape.cli; `from x import name`, x
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
                for target in targets:
                    if target == "dynashape" or target.startswith("dynashape."):
                        resolved = _resolve(target, modules)
                        if resolved and resolved != module:
                            edges.append(Edge(module, resolved, child.lineno, local))
                inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, local or inner)

        visit(ast.parse(path.read_text(), str(path)), False)
    return edges


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycle() -> None:
    edges = _edges()
    cycles = _cycles(edges)
    detail = [
        f"{' <-> '.join(c)}: " + "; ".join(f"{e.importer}:{e.line} -> {e.imported}" for e in edges
                                             if e.importer in c and e.imported in c)
        for c in cycles
    ]
    assert not cycles, "import cycles (move the shared code to where it belongs):\n" + "\n".join(detail)


def test_the_cycle_finder_finds_one() -> None:
    # the test above cannot pass by never seeing a cycle
    edges = [Edge("a", "b", 1, False), Edge("b", "c", 1, True), Edge("c", "a", 1, False), Edge("c", "d", 1, False)]
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles(edges[1:]) == []


def test_no_function_local_import_of_a_dynashape_module() -> None:
    local = [e for e in _edges() if e.local]
    assert local, "the scan found no function-local import at all: it is not reading the package"
    unexpected = [e for e in local if (e.importer, e.imported) not in MUST_BE_LAZY]
    assert not unexpected, "import these at the top of the module (lazy imports are for torch, TensorRT, " \
        "onnxruntime, cuda and tritonclient only):\n" + "\n".join(
            f"  {e.importer}:{e.line} imports {e.imported}" for e in unexpected)
    seen = {(e.importer, e.imported) for e in local}
    stale = [pair for pair in MUST_BE_LAZY if pair not in seen]
    assert not stale, f"allow-list entries that match no import any more; remove them: {stale}"


def test_production_code_does_not_import_the_test_helpers() -> None:
    users = sorted({e.importer for e in _edges() if e.imported == "dynashape.testing"})
    assert users == [], f"{users} import dynashape.testing; what they need belongs in a proper module (feeds.py)"


@pytest.mark.parametrize("statement", ["import dynashape", "from dynashape import Finding, Profile, DynashapeError"])
def test_import_dynashape_is_light(statement: str) -> None:
    code = (f"import sys; {statement}; "
            "heavy = {'torch', 'onnxruntime', 'tensorrt', 'onnx', 'onnx_ir', 'numpy', 'rich'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_api_does_not_import_torch_onnxruntime_or_tensorrt() -> None:
    code = ("import sys, dynashape; dynashape.check, dynashape.build, dynashape.Engine; "
            "heavy = {'torch', 'onnxruntime', 'tensorrt'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
