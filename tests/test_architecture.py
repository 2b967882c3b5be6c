"""The package's import graph keeps the layout of docs/architecture.md.

cli -> commands -> {engines, batch, data, store, core}; engines -> {batch, data}; batch -> {core,
data.panel}; the numeric core imports no I/O, engine, command or CLI module; nothing imports
commands but the CLI and the Python API; benchmarks are reached only from the CLI's bench
commands. Every import counts, function-local ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "maml_anomaly"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PRODUCT = {m: p for m, p in MODULES.items() if not m.startswith("maml_anomaly.benchmarks")}


def _resolve(name: str) -> str:
    """The module an imported dotted name lives in (a name inside a module -> the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> dict[str, list[str]]:
    """{imported module: [names imported from it]} of every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("maml_anomaly"):
                    found.setdefault(_resolve(alias.name), [])
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if not base.startswith("maml_anomaly"):
                continue
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}")
                found.setdefault(target, []).append(alias.name)
    found.pop(module, None)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in GRAPH.get(m, {}):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n) :] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_core_imports_no_io_engine_command_or_cli_module():
    allowed = (
        "maml_anomaly.core",
        "maml_anomaly.config",
        "maml_anomaly.errors",
        "maml_anomaly.data.panel",
        "maml_anomaly.data.schemas",
    )
    for m in PRODUCT:
        if _under(m, "maml_anomaly.core"):
            bad = [n for n in GRAPH[m] if not _under(n, *allowed)]
            assert not bad, f"{m} imports {bad}"


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        (
            "maml_anomaly.batch",
            (
                "maml_anomaly.core",
                "maml_anomaly.data.panel",
                "maml_anomaly.data.schemas",
                "maml_anomaly.config",
                "maml_anomaly.errors",
            ),
        ),
        (
            "maml_anomaly.engines",
            (
                "maml_anomaly.engines",
                "maml_anomaly.batch",
                "maml_anomaly.data",
                "maml_anomaly.config",
                "maml_anomaly.errors",
            ),
        ),
        (
            "maml_anomaly.data",
            ("maml_anomaly.data", "maml_anomaly.config", "maml_anomaly.errors", "maml_anomaly.locking"),
        ),
    ],
)
def test_each_layer_imports_only_the_layers_below(layer, allowed):
    for m in PRODUCT:
        if _under(m, layer):
            bad = [n for n in GRAPH[m] if not _under(n, *allowed)]
            assert not bad, f"{m} imports {bad}"


def test_only_the_cli_and_the_api_import_commands_and_only_the_cli_reaches_benchmarks():
    for m in PRODUCT:
        if not _under(m, "maml_anomaly.cli", "maml_anomaly.api", "maml_anomaly.commands"):
            assert not [n for n in GRAPH[m] if _under(n, "maml_anomaly.commands")], m
        if not _under(m, "maml_anomaly.cli"):
            assert not [n for n in GRAPH[m] if _under(n, "maml_anomaly.benchmarks")], m


def test_no_private_name_is_imported_from_another_module():
    for m in MODULES:
        for target, names in GRAPH[m].items():
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{m} imports {private} from {target}"


def test_no_product_module_is_over_600_lines():
    long = {m: n for m, p in PRODUCT.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
