"""Model versions: immutable folders under MODEL/versions and two links that are switched atomically.

Layout of a model directory MODEL::

    MODEL/versions/<stamp>/   one complete set of model files (manifest, clusters, weights, ...)
    MODEL/current  -> versions/<stamp>   the serving version: clusters + weights + calibration
    MODEL/pending  -> versions/<stamp>   fit-clusters' newest clusters, not meta-trained yet

A version folder is written once, by one run holding the model directory's exclusive lock, and
never changed after a link points to it. A link is replaced by creating a new symlink under a
temporary name and renaming it over the old one (atomic on POSIX), so a reader sees the old
version or the new one, never a mix; a run that fails or is killed leaves the links as they were.
A directory of the earlier flat layout (files directly in MODEL) is read as one version.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from maml_anomaly.config import ColumnConfig, Config
from maml_anomaly.errors import ModelDirError

VERSIONS = "versions"
CURRENT = "current"  # the serving version: complete, the only one scoring reads
PENDING = "pending"  # the version fit-clusters made last, waiting for meta-train
MANIFEST = "manifest.json"
KEEP_VERSIONS = 3  # trained versions kept (the serving one included); older ones are pruned


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` is a model directory (versioned or of the earlier flat layout)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return (path / MANIFEST).is_file() or any(os.path.lexists(path / n) for n in (CURRENT, PENDING, VERSIONS))


def inside_model_dir(path: str | Path) -> Path | None:
    """The model directory that ``path`` is or lies inside of, or None (for output guards)."""
    path = Path(os.path.abspath(path))
    for folder in (*reversed(path.parents), path):  # the outermost: a version folder lies inside one
        if is_model_dir(folder):
            return folder
    return None


def linked_version(root: Path, link: str) -> Path | None:
    """The version folder ``root/link`` points to; None when there is no such link."""
    where = root / link
    if not os.path.lexists(where):
        return None
    if not where.is_symlink() and (where / MANIFEST).is_file():
        return where  # a copy that followed the link (shutil.copytree, cp -L): the version itself
    target = os.readlink(where) if where.is_symlink() else ""
    parts = Path(target).parts
    if len(parts) != 2 or parts[0] != VERSIONS or parts[1].startswith("."):
        raise ModelDirError(
            f"{where} should be a link to {VERSIONS}/<version> inside {root}; found {target or 'a plain file'!r}. "
            "The model directory was edited by hand: re-run fit-clusters and meta-train with --overwrite."
        )
    folder = root / target
    if not folder.is_dir():
        raise ModelDirError(
            f"{where} points to {folder}, which does not exist: the model directory was edited by hand. "
            "Re-run fit-clusters and meta-train with --overwrite."
        )
    return folder


def serving_folder(root: Path) -> Path:
    """The folder a reader opens: the current version, else a flat model, else the pending clusters."""
    current = linked_version(root, CURRENT)
    if current is not None:
        return current
    if (root / MANIFEST).is_file():
        return root
    pending = linked_version(root, PENDING)
    return pending if pending is not None else root


def training_folder(root: Path) -> Path:
    """The version meta-train builds on: fit-clusters' pending clusters, else the serving version."""
    pending = linked_version(root, PENDING)
    return pending if pending is not None else serving_folder(root)


def new_version(root: Path) -> Path:
    """Create an empty version folder named by the UTC time (sortable) plus a random suffix."""
    remove_dead_versions(root)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    folder = root / VERSIONS / f"{stamp}-{secrets.token_hex(2)}"
    folder.mkdir(parents=True)
    return folder


def remove_dead_versions(root: Path) -> list[str]:
    """Remove the folders of runs that died before their switch: unlinked and newer than ``current``.

    Only under the exclusive lock (a live writer's folder would look the same).
    """
    folder = root / VERSIONS
    if not folder.is_dir():
        return []
    current = linked_version(root, CURRENT)
    pending = linked_version(root, PENDING)
    linked = {p.name for p in (current, pending) if p is not None}
    dead = [
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name not in linked and (current is None or p.name > current.name)
    ]
    for p in dead:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in dead]


def switch(root: Path, link: str, folder: Path | None) -> None:
    """Point ``root/link`` at ``folder`` (None: remove the link) in one atomic rename."""
    where = root / link
    if folder is None:
        if os.path.lexists(where):
            where.unlink()
        return
    if where.is_dir() and not where.is_symlink():  # a copied version in place of the link: keep it as one
        where.rename(root / VERSIONS / f"00000000T000000.000000Z-copy-{secrets.token_hex(2)}")  # sorts oldest
    tmp = root / f".{link}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
    os.symlink(f"{VERSIONS}/{folder.name}", tmp)
    os.replace(tmp, where)
    _fsync_dir(root)


def prune(root: Path, keep: int = KEEP_VERSIONS, trained: str = "detector.json") -> list[str]:
    """Remove versions no link points to, beyond the ``keep`` newest trained ones; their names.

    Call only while holding the model directory's exclusive lock: no run reads a version then.
    Untrained versions that no link names (superseded clusters, a killed run's folder) go first.
    """
    folder = root / VERSIONS
    if not folder.is_dir():
        return []
    linked = {p.name for p in (linked_version(root, CURRENT), linked_version(root, PENDING)) if p is not None}
    versions = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    kept_trained = sum(1 for p in versions if p.name in linked and (p / trained).is_file())
    removed = []
    for p in versions:
        if p.name in linked:
            continue
        if (p / trained).is_file() and kept_trained < keep:
            kept_trained += 1
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    return removed


def remove_flat_files(root: Path) -> None:
    """Delete the files of the earlier flat layout once a version serves in their place."""
    for child in root.iterdir():
        if child.is_file() and not child.is_symlink() and not child.name.startswith("."):
            child.unlink()


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    import torch

    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def non_finite_fields(obj: Any, where: str = "") -> list[str]:
    """Dotted paths of the numbers in ``obj`` that are NaN, infinite or null (JSON writes NaN as null)."""
    if isinstance(obj, Mapping):
        return [p for k, v in obj.items() for p in non_finite_fields(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in non_finite_fields(v, f"{where}[{i}]")]
    if obj is None or (isinstance(obj, (float, np.floating)) and not np.isfinite(obj)):
        return [where]
    return []


def parsed(file: Path, kind: str, parse: Callable[[], Any]) -> Any:
    """``parse()`` of a model file's verified bytes; a damaged file (a checksum rewritten to match)
    ends in one message naming it, not a traceback."""
    try:
        return parse()
    except Exception as exc:  # each format raises its own error types (ArrowInvalid, SafetensorError, ...)
        raise ModelDirError(
            f"{file} is not a readable {kind} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): "
            "it is damaged (its header or content). Re-run the command that writes it with --overwrite."
        ) from None


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard link (model files are never changed in place), else a copy (another filesystem)."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def recorded_columns_as_defaults(
    config: Config, flags: Mapping[str, Any], model_dir: str | Path, for_training: bool = False
) -> Config:
    """``config`` with the column names fit-clusters recorded in the model directory, for each
    column that neither a flag nor the config file named (it still has the package default)."""
    recorded = recorded_columns(Path(model_dir), for_training)
    default = ColumnConfig()
    changes = {
        k: v
        for k, v in recorded.items()
        if flags.get(k) is None and getattr(config.columns, k) == getattr(default, k) and v != getattr(default, k)
    }
    return config.replace_from_flags(changes) if changes else config


def recorded_columns(root: Path, for_training: bool = False) -> dict[str, str]:
    """{id_col, time_col, value_col} from the manifest of the version a command reads ({} if none)."""
    try:
        folder = training_folder(root) if for_training else serving_folder(root)
        columns = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("columns", {})
    except (OSError, ValueError, AttributeError, ModelDirError):
        return {}  # the command itself reports a missing or damaged model directory
    names = ("id_col", "time_col", "value_col")
    return (
        {k: v for k, v in columns.items() if k in names and isinstance(v, str) and v}
        if isinstance(columns, dict)
        else {}
    )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - not every filesystem syncs folders
        pass
    finally:
        os.close(fd)


__all__ = [
    "CURRENT",
    "PENDING",
    "VERSIONS",
    "KEEP_VERSIONS",
    "is_model_dir",
    "inside_model_dir",
    "linked_version",
    "serving_folder",
    "training_folder",
    "new_version",
    "switch",
    "prune",
    "remove_flat_files",
    "non_finite_tensors",
    "non_finite_fields",
    "link_or_copy",
    "parsed",
    "recorded_columns",
    "recorded_columns_as_defaults",
]
