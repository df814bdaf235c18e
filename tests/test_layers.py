"""The architecture in the folders: imports point down the layers, and no modules import each other in a cycle.

Layers, bottom to top (docs/architecture.md): `bench.core` (Backbone, registry, budget, configs, record I/O,
statistics) < `bench.toy` (the toy world, its oracle and assets) < `methods`, `metrics` (plugins; neither imports
the other) < `bench.harness` (training, evaluation, inversion benchmark, tuning, suites, toy builders) <
`bench.results` (report, figures, leaderboard) < `bench.cli`. The graph is read from the source with `ast`,
function-level imports included, so an import hidden inside a function is still an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bench
import methods
import metrics

ROOTS = {pkg.__name__: Path(pkg.__file__).parent for pkg in (bench, methods, metrics)}
LAYERS = [("bench.core",), ("bench.toy",), ("methods", "metrics"), ("bench.harness",), ("bench.results",),
          ("bench.cli", "bench")]


def layer(module: str) -> tuple[int, str]:
    """(floor, package) of a module: the longest prefix that names a layer."""
    best = None
    for floor, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (floor, prefix)
    assert best is not None, module
    return best


def modules() -> dict[str, Path]:
    out = {}
    for name, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports (`from a.b import c` is a.b.c when that is a module, else a.b)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {m for m in found if m in known and m != module}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_import_points_down_or_sideways_within_a_package():
    upward = []
    for module, targets in graph().items():
        floor, package = layer(module)
        for target in targets:
            t_floor, t_package = layer(target)
            if t_floor > floor or (t_floor == floor and t_package != package and package != "bench"):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layer_map_covers_the_packages_and_sees_hidden_imports():
    """Every module falls in a layer, and a function-level import counts (the check cannot be dodged)."""
    g = graph()
    assert all(layer(m) for m in g)
    assert {"bench.core.backbone", "bench.harness.run", "bench.results.leaderboard", "methods.alignment.dpo"} <= set(g)
    source = "def f():\n    from bench.harness.run import plan_run\n"
    tmp = Path(bench.__file__).parent / "core" / "registry.py"
    tree_imports = imports("bench.core.registry", tmp, set(g))
    assert "bench.harness.run" not in tree_imports  # the real registry imports nothing above it
    fake = tmp.with_name("_layer_probe.py")
    try:
        fake.write_text(source)
        assert imports("bench.core._layer_probe", fake, set(g)) == {"bench.harness.run"}
    finally:
        fake.unlink()
