"""The house: subpackages by pipeline stage, imports that point down, no cycles, and no submodule that
shadows a public function of ``sjunet``.

The layer order is the README's ("Layout"); the imports are read from the source with ``ast`` (at
module level and inside functions alike), through setup.cfg's mapping of ``sjunet.cli``,
``sjunet.calibration`` and ``sjunet.benchmarks`` to their own top-level folders."""
import ast
import importlib
import pkgutil
import types
import warnings
from pathlib import Path

import pytest

import sjunet

ROOT = Path(__file__).resolve().parents[1]
#: folder -> the package it is installed as (setup.cfg ``package_dir``)
FOLDERS = {"sjunet": "sjunet", "cli": "sjunet.cli", "calibration": "sjunet.calibration",
           "benchmarks": "sjunet.benchmarks"}
#: lowest first; a module may import from its own layer and the layers before it
LAYERS = [
    {"errors", "io", "rng", "distributed"},
    {"layers"},
    {"neurons"},
    {"graph"},
    {"calibration"},
    {"snn"},
    {"conversion"},
    {"data", "models"},
    {"metrics", "tasks"},
    {"evaluation"},
    {"training"},
    {"plots"},
    {"benchmarks", "demo"},
    {"cli"},
]
RANK = {name: i for i, group in enumerate(LAYERS) for name in group}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = f.relative_to(ROOT / folder).with_suffix("").parts
            out[".".join((package, *parts)).removesuffix(".__init__")] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The sjunet modules ``name`` imports (the longest known prefix of each import)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                up = package.split(".")[: len(package.split(".")) - (n.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in n.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _layer(module: str) -> str:
    return module.split(".")[1] if module != "sjunet" else "sjunet"


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    assert {_layer(m) for m in MODULES} - {"sjunet"} <= set(RANK), set(_layer(m) for m in MODULES) - set(RANK)


def test_imports_point_down():
    """A subpackage imports only from its own layer and lower ones (the package root ``sjunet``, the
    lazy public API, imports nothing at module level and is not a layer)."""
    upward = [f"{m} ({_layer(m)}) imports {t} ({_layer(t)})" for m, targets in GRAPH.items() if m != "sjunet"
              for t in targets if t != "sjunet" and RANK[_layer(t)] > RANK[_layer(m)]]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    """No cycle among the modules (a submodule importing its own package's ``__init__`` is one)."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_at_most_twelve_modules_at_the_top_and_no_file_over_600_lines():
    top = [f.name for f in (ROOT / "sjunet").glob("*.py")]
    assert len(top) <= 12, top
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
            if p.parts[len(ROOT.parts)] in ("sjunet", "calibration", "cli")
            and (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def _import_everything() -> list[types.ModuleType]:
    packages = [importlib.import_module(p) for p in FOLDERS.values()]
    out = list(packages)
    for pkg in packages:
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            out.append(importlib.import_module(info.name))
    return out


def test_public_names_stay_functions_after_every_submodule_is_imported():
    """No submodule shares a name with a public function or class of ``sjunet``: importing
    ``sjunet.X`` sets the attribute ``sjunet.X``, which would shadow the function ``X``."""
    modules = _import_everything()
    for name, where in sjunet._LAZY.items():
        obj = getattr(sjunet, name)
        assert not isinstance(obj, types.ModuleType), name
        assert obj is getattr(importlib.import_module(where), name), name
        assert callable(obj), name
    # and inside the subpackages: nothing re-exported under the name of one of its own submodules
    for m in modules:
        if hasattr(m, "__path__"):
            subs = {info.name for info in pkgutil.iter_modules(m.__path__)}
            clash = subs & set(getattr(m, "__all__", []))
            assert not clash, (m.__name__, clash)


def test_old_module_names_stay_reachable_for_one_release():
    with pytest.warns(DeprecationWarning, match="sjunet.flow moved to sjunet.training.flow"):
        assert sjunet.flow.MIN_GAIN == importlib.import_module("sjunet.training.finetuning").MIN_GAIN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert sjunet.dims is importlib.import_module("sjunet.layers.dims")
        assert sjunet.flow.flow_loss is importlib.import_module("sjunet.training.flow").flow_loss
        assert sjunet.loop.rng_preserved is importlib.import_module("sjunet.rng").rng_preserved
        assert sjunet.canonical.fold_bn_into is sjunet.graph.fold_bn_into
        for old, parts in sjunet._MOVED.items():
            assert getattr(sjunet, old) is not None and all(importlib.import_module(p) for p in parts), old
    assert sjunet.neurons.LADDERS and sjunet.graph.canonical_graph and sjunet.evaluation.evaluate_snn
    with pytest.raises(AttributeError):
        sjunet.no_such_module
