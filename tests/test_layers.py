"""The package layout's rules (docs/architecture.md): layers only point down, kernels and
runtime are torch-free, no import cycles, no module over ~700 lines."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "convkit"

# lower number = lower layer; a module may import its own layer or lower ones
LAYERS = {"runtime": 0, "kernels": 1, "engine": 2, "autograd": 3, "functional": 4, "nn": 5,
          "routing": 5}  # routing: the functional calls of a model, beside the modules
TOP = 6  # models, data, utils, train, cli, bench, testing, ...: applications of the layers above
MAX_LINES = 700


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2:
        return TOP
    return LAYERS.get(parts[1], TOP)


def _imports(path: pathlib.Path):
    """Every module an import statement in ``path`` names (also those inside functions)."""
    package = _module_name(path)
    if not path.name == "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module
                for alias in node.names:  # `from convkit.x import y` where y is a module
                    yield f"{node.module}.{alias.name}"


SOURCES = sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    me = _module_name(path)
    for name in _imports(path):
        if name.split(".")[0] != "convkit" or name == "convkit":
            continue
        assert _layer(name) <= _layer(me), f"{me} (layer {_layer(me)}) imports {name}"


@pytest.mark.parametrize("path", [p for p in SOURCES if _layer(_module_name(p)) <= 1],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_kernels_and_runtime_do_not_import_torch(path):
    for name in _imports(path):
        assert name.split(".")[0] != "torch", f"{_module_name(path)} imports {name}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"


def test_no_import_cycles():
    modules = {_module_name(p): p for p in SOURCES}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name
                       and not name.startswith(m + ".")}  # a package's own __init__ is a parent
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
