"""The product imports only what `pip install .` installs: a fresh machine runs the demo.

CI installs the dev and ray extras, which bring packages of their own (click came with Ray), so an
import of an undeclared package passes every other test and fails only on a clean install.
"""

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"scikit-learn": "sklearn"}  # distributions whose import name differs
EXTRA_MODULES = {"ray": {"maml_anomaly/engines/ray_engine.py"}}  # an extra's package: only where it is used


def _declared(requirements: list[str]) -> set[str]:
    names = (re.split(r"[<>=!~\[; ]", r.strip(), maxsplit=1)[0].lower() for r in requirements)
    return {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names}


def _third_party_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return {m for m in out if m not in sys.stdlib_module_names and m != "maml_anomaly"}


def test_the_product_imports_only_its_declared_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _declared(project["dependencies"])
    undeclared = {}
    for path in sorted((ROOT / "maml_anomaly").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("maml_anomaly/benchmarks/"):  # out of the product: the bench extra and peers' envs
            continue
        extra = {m for m, where in EXTRA_MODULES.items() if rel in where}
        missing = _third_party_imports(path) - core - extra
        if missing:
            undeclared[rel] = sorted(missing)
    assert not undeclared, undeclared


def test_the_extras_that_modules_use_are_declared():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    declared = set().union(*(_declared(v) for v in extras.values()))
    assert set(EXTRA_MODULES) <= declared, (EXTRA_MODULES, extras)
