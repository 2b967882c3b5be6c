"""The model directory: manifest, clusters, JSON reports and weights, with version and checksum checks.

Layout (plain, inspectable, safe to load; never a pickle)::

    DIR/manifest.json       format_version, package version, config, columns, data window,
                            created_at / updated_at, files: {name: {sha256, bytes}}
    DIR/clusters.parquet    unique_id, cluster (string), period (int64 steps; 0 = no period), ...
    DIR/<name>.json         reports and small metadata
    DIR/<name>.safetensors  weights (tensors + string metadata)

Every file is written atomically (temporary file + rename) and its sha256 recorded in the
manifest; loading verifies it, so a corrupt or hand-edited file is refused, not half-used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maml_anomaly import __version__
from maml_anomaly.config import ColumnConfig, Config
from maml_anomaly.errors import ModelDirError
from maml_anomaly.io import write_bytes_atomic

FORMAT_VERSION = 4  # 2: lags relative to the last value, reference y[t-1] + seasonal step; 3: step unclipped, lag 2p+1 (seasonal_step); 4: lag_spec.second (lags and reference step of a second period)
MANIFEST = "manifest.json"
CLUSTERS = "clusters.parquet"


class ModelDir:
    """A model directory made by fit-clusters and completed by meta-train."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._manifest: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    # -- lifecycle ----------------------------------------------------------------------------

    def exists(self) -> bool:
        """True when the directory holds a manifest (a previous run)."""
        return (self.path / MANIFEST).is_file()

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def check_fresh(self, overwrite: bool) -> None:
        """Raise unless a fresh run may start here (new/empty dir, or a previous run + overwrite).

        Changes nothing: call it before reading the input, and :meth:`prepare` once the new
        run's results are ready to be written.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ModelDirError(f"model directory {self.path} is a file; expected a directory. Choose another --model-dir.")
        if self.path.is_dir():
            _clean_stale_temps(self.path)  # a killed run's temporary files do not make it "not empty"
        if self.path.is_dir() and any(self.path.iterdir()):
            if not self.exists():
                raise ModelDirError(
                    f"model directory {self.path} is not empty and is not a maml-anomaly model "
                    "directory (no manifest.json); refusing to write into it, even with --overwrite. "
                    "Choose a new or empty --model-dir."
                )
            if not overwrite:
                raise ModelDirError(
                    f"model directory {self.path} already holds a previous run; refusing to "
                    "overwrite it. Pass --overwrite to replace it, or choose another --model-dir."
                )

    def prepare(self, overwrite: bool) -> None:
        """Make the directory ready for a fresh run; refuse to replace a previous run silently."""
        self.check_fresh(overwrite)
        if self.path.is_dir() and any(self.path.iterdir()):
            self._clear()
        self.path.mkdir(parents=True, exist_ok=True)
        self._manifest = None

    def guard_overwrite(self, names: list[str], overwrite: bool) -> None:
        """Refuse when any of ``names`` exists (a later stage of a previous run) unless overwrite."""
        present = [n for n in names if self.has(n)]
        if present and not overwrite:
            raise ModelDirError(
                f"model directory {self.path} already holds {', '.join(present)} from a previous run; "
                "refusing to overwrite. Pass --overwrite to replace them."
            )

    def _clear(self) -> None:
        # Called only on a directory with our manifest (prepare refuses foreign folders).
        for child in self.path.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    # -- manifest ------------------------------------------------------------------------------

    def write_manifest(
        self,
        config: Config,
        columns: ColumnConfig,
        data_window: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write manifest.json, keeping the checksums of files already saved in this directory."""
        now = _now()
        previous = self._read_manifest_raw() if self.exists() else None
        files = dict(previous.get("files", {})) if previous else {}
        if self._manifest:
            files.update(self._manifest.get("files", {}))
        manifest = {
            "format_version": FORMAT_VERSION,
            "package": {"name": "maml-anomaly", "version": __version__},
            "created_at": previous.get("created_at", now) if previous else now,
            "updated_at": now,
            "config": config.to_dict(),
            "columns": {"id_col": columns.id_col, "time_col": columns.time_col, "value_col": columns.value_col},
            "data_window": jsonable(dict(data_window)),
            "extra": jsonable(dict(extra or {})),
            "files": files,
        }
        self._write_manifest(manifest)
        return manifest

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, checked: exists, parses, and has this package's format version."""
        manifest = self._read_manifest_raw()
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            made_by = manifest.get("package", {}).get("version", "an unknown version")
            raise ModelDirError(
                f"model directory {self.path} has format version {version!r} (made by maml-anomaly "
                f"{made_by}); this is maml-anomaly {__version__}, which reads format version "
                f"{FORMAT_VERSION}. Re-run fit-clusters and meta-train into a new --model-dir "
                "(or the same one with --overwrite)."
            )
        self._manifest = manifest
        return manifest

    def config(self) -> Config:
        """The configuration stored with the model."""
        return Config.from_dict(self.read_manifest()["config"], source=str(self.path / MANIFEST))

    def _read_manifest_raw(self) -> dict[str, Any]:
        if self.path.exists() and not self.path.is_dir():
            raise ModelDirError(
                f"model directory {self.path} is a file; expected a directory made by fit-clusters "
                "(and meta-train). Check --model-dir."
            )
        if not self.path.is_dir():
            raise ModelDirError(
                f"model directory {self.path} does not exist. Expected a directory made by "
                "fit-clusters (and meta-train); check --model-dir or run those commands first."
            )
        file = self.path / MANIFEST
        if not file.is_file():
            state = "is empty" if not any(self.path.iterdir()) else "has no manifest.json"
            raise ModelDirError(
                f"model directory {self.path} {state}: it is not a maml-anomaly model directory. "
                "Run fit-clusters (then meta-train) with this --model-dir first."
            )
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelDirError(
                f"{file} is not valid JSON ({exc}); the model directory is corrupt. Re-run "
                "fit-clusters and meta-train with --overwrite."
            ) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
            raise ModelDirError(
                f"{file} is not a maml-anomaly manifest (expected a JSON object with a 'files' table); "
                "the model directory is corrupt. Re-run fit-clusters and meta-train with --overwrite."
            )
        return manifest

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
        write_bytes_atomic(text.encode("utf-8"), self.path / MANIFEST)
        self._manifest = manifest

    def _record(self, name: str, data: bytes) -> None:
        """Record a file's checksum; update manifest.json on disk when there is one."""
        entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        if self._manifest is None and self.exists():
            self._manifest = self._read_manifest_raw()
        if self._manifest is None:
            self._manifest = {"files": {}}
        self._manifest.setdefault("files", {})[name] = entry
        if "format_version" in self._manifest:
            self._manifest["updated_at"] = _now()
            self._write_manifest(self._manifest)

    def _verified_bytes(self, name: str) -> bytes:
        manifest = self._manifest if self._manifest and "format_version" in self._manifest else self.read_manifest()
        file = self.path / name
        entry = manifest.get("files", {}).get(name)
        if not file.is_file():
            raise ModelDirError(
                f"model directory {self.path} has no {name}. Run the command that makes it "
                "(fit-clusters for clusters, meta-train for weights) with this --model-dir."
            )
        if entry is None:
            raise ModelDirError(
                f"{file} is not recorded in the manifest; the model directory is incomplete or "
                "was edited by hand. Re-run the command that writes it with --overwrite."
            )
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.get("sha256"):
            raise ModelDirError(
                f"{file} does not match its checksum in the manifest (expected sha256 "
                f"{str(entry.get('sha256'))[:12]}..., found {digest[:12]}...): the file is corrupt or "
                "was changed. Re-run the command that writes it with --overwrite."
            )
        return data

    # -- files ---------------------------------------------------------------------------------

    def save_clusters(self, frame: pd.DataFrame) -> Path:
        """clusters.parquet: one row per series with unique_id, cluster (string), period (int)."""
        missing = [c for c in ("unique_id", "cluster", "period") if c not in frame.columns]
        if missing:
            raise ValueError(f"clusters frame lacks columns {missing}")
        frame = frame.copy()
        frame["cluster"] = frame["cluster"].astype(str).astype(object)
        frame["period"] = frame["period"].astype("int64")
        if isinstance(frame["unique_id"].dtype, pd.CategoricalDtype):
            frame["unique_id"] = frame["unique_id"].astype(frame["unique_id"].cat.categories.dtype)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return self._save_bytes(CLUSTERS, sink.getvalue().to_pybytes())

    def load_clusters(self) -> pd.DataFrame:
        return self.load_clusters_table().to_pandas()

    def load_clusters_table(self) -> pa.Table:
        """clusters.parquet as an Arrow table (no Python object per series: scoring at scale reads it so)."""
        data = self._verified_bytes(CLUSTERS)
        return pq.read_table(pa.BufferReader(data))

    def save_json(self, name: str, obj: Any) -> Path:
        name = _with_suffix(name, ".json")
        text = json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n"
        return self._save_bytes(name, text.encode("utf-8"))

    def load_json(self, name: str) -> Any:
        name = _with_suffix(name, ".json")
        return json.loads(self._verified_bytes(name).decode("utf-8"))

    def save_weights(self, name: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
        """Tensors in safetensors format (no pickle); metadata is a str -> str dict."""
        from safetensors.torch import save

        name = _with_suffix(name, ".safetensors")
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)
        return self._save_bytes(name, data)

    def load_weights(self, name: str) -> tuple[dict[str, Any], dict[str, str]]:
        """(tensors, metadata) of a weights file, after verifying its checksum."""
        from safetensors.torch import load

        name = _with_suffix(name, ".safetensors")
        data = self._verified_bytes(name)
        tensors = load(data)
        metadata = _safetensors_metadata(data)
        return tensors, metadata

    def _save_bytes(self, name: str, data: bytes) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.exists():
            # A placeholder manifest before the first file: a run killed before writing its own
            # manifest leaves a directory recognisably ours (replaced with --overwrite), not a
            # "foreign" folder that no rerun may touch.
            now = _now()
            files = (self._manifest or {}).get("files", {})
            self._write_manifest({
                "format_version": FORMAT_VERSION,
                "package": {"name": "maml-anomaly", "version": __version__},
                "created_at": now, "updated_at": now, "state": "incomplete", "config": {}, "files": files,
            })
        path = write_bytes_atomic(data, self.path / name)
        self._record(name, data)
        return path


# -- helpers -----------------------------------------------------------------------------------


def _clean_stale_temps(folder: Path) -> None:
    """Remove the temporary files (``.NAME.PID.*.tmp``) of killed runs in ``folder``."""
    from maml_anomaly.io import clean_stale_temps

    for name in {t.name[1:].rsplit(".", 3)[0] for t in folder.glob(".*.*.*.tmp")}:
        clean_stale_temps(folder / name)


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors buffer (an 8-byte length, then a JSON header)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    return dict(header.get("__metadata__", {}) or {})


def _with_suffix(name: str, suffix: str) -> str:
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"artifact names are plain file names; got {name!r}")
    return name if name.endswith(suffix) else name + suffix


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jsonable(obj: Any) -> Any:
    """Convert numpy / pandas scalars and timestamps to plain JSON types."""
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (pd.Timestamp, np.datetime64)):
        return None if pd.isna(obj) else pd.Timestamp(obj).isoformat()
    if isinstance(obj, (pd.Timedelta, np.timedelta64)):
        return None if pd.isna(obj) else str(pd.Timedelta(obj))
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if np.isnan(obj) else float(obj)
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


__all__ = ["FORMAT_VERSION", "MANIFEST", "CLUSTERS", "ModelDir", "jsonable"]
