"""Every module, file and dotted name the docs mention exists (docs/*.md and README.md)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "maml_anomaly"
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
TOP = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
TOP -= {"__init__", "__main__"}


def _resolves(dotted: str) -> bool:
    """``maml_anomaly.a.b.c``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        path = ROOT.joinpath(*parts[:cut])
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            obj = importlib.import_module(name)
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def _mentions(text: str) -> set[str]:
    names = set(re.findall(r"maml_anomaly(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
    for token in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
        if token.split(".")[0] in TOP and not token.endswith((".py", ".md", ".json", ".parquet", ".toml")):
            names.add(f"maml_anomaly.{token}")
    return names


def _paths(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.py)\b", text))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_dotted_name_in_the_docs_exists(page):
    missing = sorted(n for n in _mentions(page.read_text()) if not _resolves(n))
    assert not missing, f"{page.name} names what does not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_file_in_the_docs_exists(page):
    files = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if ".git" not in p.parts}
    missing = []
    for path in _paths(page.read_text()):
        if "/" in path:
            ok = any(f == path or f.endswith("/" + path) for f in files)
        else:
            ok = any(f.rsplit("/", 1)[-1] == path for f in files)
        if not ok:
            missing.append(path)
    assert not missing, f"{page.name} names files that do not exist: {sorted(missing)}"
