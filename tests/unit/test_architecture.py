"""The import rules of docs/architecture.md, read from the code: the import graph of
galaxy_tasks and workers has no cycle (imports inside functions and for type checking
included), each package imports only its own layer and those below it, nothing below the
edge imports Celery or kombu, and the Galaxy plugin never imports the edge."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: lowest first; a module may import its own layer and those below. The longest prefix that
#: matches a module's name places it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("galaxy_tasks.errors", "galaxy_tasks.states", "galaxy_tasks.logs", "galaxy_tasks.faults",
                    "galaxy_tasks.undumpable", "galaxy_tasks.yamlconf", "galaxy_tasks.confmodels", "galaxy_tasks.expressions",
                    "galaxy_tasks.arguments", "galaxy_tasks.render", "galaxy_tasks.native", "galaxy_tasks.freshness",
                    "galaxy_tasks.names")),
    ("domain", ("galaxy_tasks.config", "galaxy_tasks.model", "galaxy_tasks.spec", "galaxy_tasks.jobdir",
                "galaxy_tasks.events", "galaxy_tasks.policies", "galaxy_tasks.fairshare", "galaxy_tasks.routing",
                "galaxy_tasks.clients", "galaxy_tasks.schemas", "galaxy_tasks.runners", "galaxy_tasks.staging",
                "galaxy_tasks.store", "galaxy_tasks.runas")),
    ("steps", ("galaxy_tasks.context", "galaxy_tasks.lifecycle", "galaxy_tasks.workflows.")),
    ("plugin", ("galaxy_tasks.galaxy",)),
    ("edge", ("galaxy_tasks.edge", "galaxy_tasks.bench.noop")),
    ("entry points", ("galaxy_tasks.client", "galaxy_tasks.run", "galaxy_tasks.workflows.cli", "galaxy_tasks.cli",
                      "galaxy_tasks.operations", "galaxy_tasks.bench", "galaxy_tasks.child_workers", "workers",
                      "galaxy_tasks.realuser", "galaxy_tasks")),
]
#: the Galaxy plugin speaks the task contract with kombu and Celery's own serializers, inside
#: Galaxy; below it nothing knows the broker
CELERY_FREE = ("foundation", "domain", "steps")


def modules() -> dict[str, Path]:
    found = {}
    for path in [*(ROOT / "galaxy_tasks").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


MODULES = modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str) -> set[str]:
    """Every module `name` imports: the project's own (resolved to a module) and the
    top-level names of others, wherever the import statement stands."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target) if target.split(".")[0] in ("galaxy_tasks", "workers") else None
            found.add(resolved or target.split(".")[0])
    found.discard(name)
    return found


GRAPH = {name: {i for i in imports(name) if i in MODULES} for name in MODULES}


def layer(name: str) -> int:
    matches = [(len(prefix), rank) for rank, (_title, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if name == prefix.rstrip(".") or name.startswith(prefix if prefix.endswith(".") else prefix + ".")]
    assert matches, f"{name} is in no layer: add it to LAYERS and to docs/architecture.md"
    return max(matches)[1]


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_the_import_graph_has_no_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in GRAPH[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert cycles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    upward = sorted(other for other in GRAPH[name] if layer(other) > layer(name) and other != "galaxy_tasks")
    assert upward == [], f"{name} ({LAYERS[layer(name)][0]}) imports a higher layer"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if LAYERS[layer(n)][0] in CELERY_FREE))
def test_below_the_edge_nothing_knows_celery(name):
    assert not imports(name) & {"celery", "kombu", "galaxy_tasks.edge"}, name


def test_the_galaxy_plugin_never_reaches_the_edge():
    plugin = [n for n in MODULES if n.startswith("galaxy_tasks.galaxy")]
    reached, todo = set(), list(plugin)
    while todo:
        for other in GRAPH[todo.pop()]:
            if other not in reached:
                reached.add(other)
                todo.append(other)
    assert not {n for n in reached if n.startswith("galaxy_tasks.edge")}
