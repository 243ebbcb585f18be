"""The package's import graph has no cycle, between modules or between subpackages (LAYERS, top first),
counting every import of a ganexp module (function-level ones included: a cycle hidden inside a function is
still a cycle), and every module imports on its own."""
from __future__ import annotations

import pytest

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ganexp"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The ganexp modules `name` imports anywhere in its file (relative imports resolved; `from ganexp
    import x` with x a submodule imports ganexp.x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in mods else base)
    out = set()
    for dep in found:  # `import ganexp.a.b` names the deepest module the graph has
        while dep and dep not in mods:
            dep = dep.rpartition(".")[0]
        if dep and dep != name:
            out.add(dep)
    return out


def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module, as one cycle through it (a, b, ..., a)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_cycle_through(sorted(c)[0], c, edges) for c in components]


def _cycle_through(start: str, component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside the component (breadth-first)."""
    paths = {w: [start, w] for w in sorted(edges[start] & component)}
    queue = list(paths)
    while queue:
        v = queue.pop(0)
        if v == start:
            return paths[v]
        for w in sorted(edges[v] & component):
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return [start, start]


def test_graph_sees_every_kind_of_import():
    edges = graph()
    assert "ganexp.config.keys" in edges["ganexp.run.tensorboard"]  # module level
    assert "ganexp.io.results" in edges["ganexp.run.jobs"]
    assert "ganexp.run.build" in edges["ganexp.run.validate"]  # inside a function
    assert "ganexp.io.writes" in edges["ganexp.run.folders"]  # `from ganexp import writes`


def test_cycle_detection_spells_the_cycle():
    found = cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert found == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles in ganexp:\n" + "\n".join(" -> ".join(c) for c in found)


# The subpackages' layers, top first: a module imports only from its own subpackage or a layer below it
# (../STYLE.md: "arrows run down only"). The CLIs are the top-level modules; ganexp itself and errors the base.
LAYERS = [
    {"cli", "sample", "evaluate", "export", "compare"},  # python -m ganexp.<cli>, train.py's ganexp.cli
    {"sweeps"},              # summary, compare, search, launchers
    {"run"},                 # one run's lifecycle: check, build, lock, resume, signals, HParams row
    {"gan"},                 # the step (module.py), losses, noise, stacking
    {"metrics"},             # classifier, scores, evaluator, the eval callback
    {"callbacks"},           # one module per callback
    {"models", "data"},      # plain nn.Modules; datamodules
    {"io"},                  # the one writer, the readers of untrusted files, metrics.json
    {"config"},              # registry, value checks, key kinds
    {"", "errors"},          # ganexp/__init__.py, ganexp/errors.py
]


def layer(module: str) -> int:
    """The layer index of a ganexp module: its subpackage's (ganexp.run.lock: run), or a top-level module's own."""
    part = module.split(".")[1] if "." in module else ""
    found = [i for i, names in enumerate(LAYERS) if part in names]
    assert found, f"{module}: subpackage {part!r} has no layer in tests/test_imports.py's LAYERS; place it there"
    return found[0]


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Each import that goes to another subpackage of the same or a higher layer, as 'a -> b'."""
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}

    def unit(m: str) -> str:  # a subpackage, or the layer of a top-level module (the CLIs may import each other)
        part = m.split(".")[1] if "." in m else ""
        return part if part in subpackages else f"layer {layer(m)}"

    return sorted(f"{a} -> {b}" for a, deps in edges.items() for b in deps
                  if unit(a) != unit(b) and layer(b) <= layer(a))


def test_upward_detection_names_the_import():
    assert upward({"ganexp.io.files": {"ganexp.run.lock"}, "ganexp.run.lock": {"ganexp.io.files"}}) == \
        ["ganexp.io.files -> ganexp.run.lock"]
    assert upward({"ganexp.models.mlp": {"ganexp.data.base"}}) == ["ganexp.models.mlp -> ganexp.data.base"]  # same layer
    assert upward({"ganexp.run.lock": {"ganexp.run.signals", "ganexp.errors"}, "ganexp.sample": {"ganexp.export"}}) == []
    assert upward({"ganexp.errors": {"ganexp.sample"}}) == ["ganexp.errors -> ganexp.sample"]


def test_subpackages_import_downward_only():
    """No cycle between subpackages either: every import of another subpackage goes to a lower layer."""
    found = upward(graph())
    assert not found, "imports that go up or sideways between subpackages:\n" + "\n".join(found)


@pytest.mark.slow
def test_every_module_imports():
    """Each module by itself, in a fresh interpreter (one for all of them: each alone would start torch ~40 times)."""
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *sorted(_modules())], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, "modules that fail to import:\n" + result.stdout + result.stderr


def lightning_privates(source: str) -> list[str]:
    """`x.trainer._y`, `trainer._y` and `self._trainer` in `source`: private attributes of Lightning's objects."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            if node.attr == "_trainer" or owner == "trainer":
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_private_lightning_reads_are_found():
    assert lightning_privates("self._trainer\ntrainer._checkpoint_connector\nm.trainer._x\nself._draws") == \
        ["line 1: self._trainer", "line 2: trainer._checkpoint_connector", "line 3: m.trainer._x"]


def test_no_private_attribute_of_lightnings_trainer_is_read():
    found = {name: hits for name, path in _modules().items() if (hits := lightning_privates(path.read_text()))}
    assert not found, f"private Lightning attributes read: {found}"
