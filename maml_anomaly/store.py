"""The model directory: every file name and format version, manifest, clusters, reports and weights.

Layout (plain, inspectable, safe to load; never a pickle)::

    DIR/current -> versions/<stamp>   the serving version (see maml_anomaly.model_versions)
    DIR/pending -> versions/<stamp>   clusters fit-clusters made, waiting for meta-train
    DIR/versions/<stamp>/manifest.json       format_version, package version, config, columns,
                            data window, state, created_at / updated_at, files: {name: {sha256, bytes}}
    DIR/versions/<stamp>/clusters.parquet    unique_id, cluster (string), period (int64 steps), ...
    DIR/versions/<stamp>/<name>.json, .safetensors   reports, metadata; weights (tensors + str metadata)

fit-clusters writes a version and points ``pending`` at it; meta-train builds a version on
``pending`` (else ``current``) and switches ``current`` to it only once it is complete: scoring
reads ``current`` only. A flat directory of the earlier layout is read as one version.

Every file is written atomically (temporary file + rename), its sha256 recorded in the manifest and
verified on load; non-finite weights or calibration are refused: a damaged file is never half-used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maml_anomaly import __version__
from maml_anomaly import model_versions as versions
from maml_anomaly.config import ColumnConfig, Config
from maml_anomaly.data.ids import IdLookup
from maml_anomaly.data.panel import Panel
from maml_anomaly.data.write import write_bytes_atomic
from maml_anomaly.errors import ModelDirError

FORMAT_VERSION = 4  # 2: lags relative to the last value, reference y[t-1] + seasonal step; 3: step unclipped, lag 2p+1 (seasonal_step); 4: lag_spec.second (lags and reference step of a second period)
MANIFEST = "manifest.json"
CLUSTERS = "clusters.parquet"
is_model_dir = versions.is_model_dir  # for output guards: True for a model directory (any layout)
inside_model_dir = versions.inside_model_dir  # the model directory a path lies in, or None


class ModelDir:
    """A model directory made by fit-clusters and completed by meta-train.

    ``path`` is the directory the user names; ``dir`` the version folder whose files are read
    (the serving one, see :func:`~maml_anomaly.model_versions.serving_folder`) or written (a new
    version made by :meth:`new_version`).
    """

    def __init__(self, path: str | Path, folder: str | Path | None = None) -> None:
        self.path = Path(path)
        self._folder = Path(folder) if folder is not None else None
        self._manifest: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    @property
    def dir(self) -> Path:
        """The version folder this object reads and writes."""
        if self._folder is None:
            self._folder = versions.serving_folder(self.path) if self.path.is_dir() else self.path
        return self._folder

    # -- lifecycle ----------------------------------------------------------------------------

    def exists(self) -> bool:
        """True when the version folder holds a manifest (a previous run)."""
        return (self.dir / MANIFEST).is_file()

    def has(self, name: str) -> bool:
        return (self.dir / name).is_file()

    def check_fresh(self, overwrite: bool) -> None:
        """Raise unless a fresh run may start here (new/empty dir, or a previous run + overwrite).

        Changes nothing: call it before reading the input, and :meth:`prepare` once the new
        run's results are ready to be written.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ModelDirError(
                f"model directory {self.path} is a file; expected a directory. Choose another --model-dir."
            )
        if self.path.is_dir():
            _clean_stale_temps(self.path)  # a killed run's temporary files do not make it "not empty"
        if self.path.is_dir() and any(self.path.iterdir()):
            if not versions.is_model_dir(self.path):
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
        """Start a new version for a fresh run (the serving one stays until :meth:`publish`)."""
        self.check_fresh(overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        self._folder = versions.new_version(self.path)
        self._manifest = None
        if versions.linked_version(self.path, versions.CURRENT) is None and not (self.path / MANIFEST).is_file():
            versions.switch(self.path, versions.PENDING, self._folder)  # nothing serves yet: reachable at once

    def new_version(self, keep: tuple[str, ...] = ()) -> ModelDir:
        """A new version folder beside this one, holding this version's files ``keep`` (hard links)."""
        _clean_stale_temps(self.path)  # a killed switch's temporary link
        folder = versions.new_version(self.path)
        built = ModelDir(self.path, folder)
        files = self.read_manifest().get("files", {})
        for name in keep:
            versions.link_or_copy(self.dir / name, folder / name)
        built._manifest = {"files": {n: files[n] for n in keep if n in files}}
        built._write_placeholder_manifest()
        return built

    def publish(self, link: str, keep_versions: int = versions.KEEP_VERSIONS) -> list[str]:
        """Point ``link`` (current or pending) at this version, then prune old versions; pruned names."""
        versions.switch(self.path, link, self.dir)
        if link == versions.CURRENT:
            versions.switch(self.path, versions.PENDING, None)  # meta-train consumed the pending clusters
            if (self.path / MANIFEST).is_file():
                versions.remove_flat_files(self.path)  # the earlier flat layout, now superseded
        return versions.prune(self.path, keep_versions)

    def discard(self) -> None:
        """Remove this unpublished version folder (a failed run)."""
        if self.dir.parent.name == versions.VERSIONS and self.dir.parent.parent == self.path:
            shutil.rmtree(self.dir, ignore_errors=True)

    def guard_overwrite(self, names: list[str], overwrite: bool) -> None:
        """Refuse when any of ``names`` exists (a later stage of a previous run) unless overwrite."""
        present = [n for n in names if self.has(n)]
        if present and not overwrite:
            raise ModelDirError(
                f"model directory {self.path} already holds {', '.join(present)} from a previous run; "
                "refusing to overwrite. Pass --overwrite to replace them."
            )

    # -- manifest ------------------------------------------------------------------------------

    def write_manifest(
        self,
        config: Config,
        columns: ColumnConfig,
        data_window: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
        state: str = "complete",
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
            "state": state,
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
        return Config.from_dict(self.read_manifest()["config"], source=str(self.dir / MANIFEST))

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
        file = self.dir / MANIFEST
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
        write_bytes_atomic(text.encode("utf-8"), self.dir / MANIFEST)
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
        file = self.dir / name
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
        return versions.parsed(self.dir / CLUSTERS, "parquet file", lambda: pq.read_table(pa.BufferReader(data)))

    def save_json(self, name: str, obj: Any) -> Path:
        name = _with_suffix(name, ".json")
        text = json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n"
        return self._save_bytes(name, text.encode("utf-8"))

    def load_json(self, name: str) -> Any:
        name = _with_suffix(name, ".json")
        data = self._verified_bytes(name)
        return versions.parsed(self.dir / name, "JSON file", lambda: json.loads(data.decode("utf-8")))

    def save_weights(self, name: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
        """Tensors in safetensors format (no pickle); metadata is a str -> str dict."""
        from safetensors.torch import save

        name = _with_suffix(name, ".safetensors")
        bad = versions.non_finite_tensors(tensors)
        if bad:
            raise ModelDirError(
                f"refusing to write {self.dir / name}: tensors {', '.join(bad)} hold NaN or infinite values "
                "(a diverged training). Nothing was published; the previous model keeps serving."
            )
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)
        return self._save_bytes(name, data)

    def load_weights(self, name: str) -> tuple[dict[str, Any], dict[str, str]]:
        """(tensors, metadata) of a weights file, after verifying its checksum."""
        from safetensors.torch import load

        name = _with_suffix(name, ".safetensors")
        data = self._verified_bytes(name)
        file = self.dir / name
        tensors, metadata = versions.parsed(file, "safetensors file", lambda: (load(data), _safetensors_metadata(data)))
        bad = versions.non_finite_tensors(tensors)
        if bad:
            raise ModelDirError(
                f"{file} holds NaN or infinite values in {', '.join(bad)}: the weights are damaged. "
                "Re-run meta-train with --overwrite."
            )
        return tensors, metadata

    def _write_placeholder_manifest(self) -> None:
        # Before the first file: a killed run's folder is recognisably ours and incomplete.
        now = _now()
        files = (self._manifest or {}).get("files", {})
        self._write_manifest(
            {
                "format_version": FORMAT_VERSION,
                "package": {"name": "maml-anomaly", "version": __version__},
                "created_at": now,
                "updated_at": now,
                "state": "incomplete",
                "config": {},
                "files": files,
            }
        )

    def _save_bytes(self, name: str, data: bytes) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.exists():
            self._write_placeholder_manifest()
        path = write_bytes_atomic(data, self.dir / name)
        self._record(name, data)
        return path


# -- what scoring reads back ----------------------------------------------------------------------

DETECTOR = "detector.json"  # cluster -> weights file and what scoring needs to rebuild the model
DETECTOR_FORMAT = 1
TRAINING_REPORT = "training_report.json"
CLUSTERER = "clusterer.json"  # PeriodClusterer state written by fit-clusters


def open_trained(model_dir: Path, for_training: bool = False) -> ModelDir:
    """The serving version (``for_training``: the one meta-train builds on), with a valid manifest
    and clusters (ModelDirError otherwise)."""
    path = Path(model_dir)
    md = ModelDir(path, versions.training_folder(path) if for_training and path.is_dir() else None)
    md.read_manifest()
    if not md.has(CLUSTERS):
        raise ModelDirError(
            f"model directory {md.path} has no {CLUSTERS}. Run fit-clusters with this --model-dir first."
        )
    return md


def weight_files(md: ModelDir) -> list[str]:
    """The weights files meta-train wrote (names)."""
    return sorted(p.name for p in md.dir.glob("*.safetensors"))


def load_models(md: ModelDir, inner_steps: int = -1) -> tuple[list[str], list[Any]]:
    """Cluster names and their ClusterModels, as meta-train wrote them (``inner_steps`` >= 0
    replaces the trained number of adaptation steps, for scoring only)."""
    from maml_anomaly.core.scoring import ClusterModel  # torch: imported when scoring, not for --help

    if not md.has(DETECTOR):
        raise ModelDirError(
            f"model directory {md.path} has no trained forecasters ({DETECTOR} is missing). "
            "Run meta-train with this --model-dir first."
        )
    index = md.load_json(DETECTOR)
    if index.get("format") != DETECTOR_FORMAT:
        raise ModelDirError(
            f"{md.path / DETECTOR} has format {index.get('format')!r}; this version reads format "
            f"{DETECTOR_FORMAT}. Re-run meta-train with --overwrite."
        )
    names, models = [], []
    for name in sorted(index["clusters"]):
        meta = index["clusters"][name]
        bad = versions.non_finite_fields({k: meta.get(k) for k in ("inner_lr", "calibration")})
        if bad:
            raise ModelDirError(
                f"{md.dir / DETECTOR} holds missing, NaN or infinite values for cluster {name} "
                f"({', '.join(bad)}): the calibration is damaged. Re-run meta-train with --overwrite."
            )
        tensors, _ = md.load_weights(meta["weights"])
        params = {k: v for k, v in tensors.items() if not k.startswith("inner_lr/")}
        lrs = {k[len("inner_lr/") :]: v for k, v in tensors.items() if k.startswith("inner_lr/")} or None
        names.append(name)
        model = ClusterModel.from_metadata(meta, params, inner_lrs=lrs)
        models.append(model if inner_steps < 0 else dataclasses.replace(model, inner_steps=inner_steps))
    return names, models


@dataclass(frozen=True)
class ClusterIndex:
    """clusters.parquet loaded once, looked up per batch of series by hashing (no per-batch reread)."""

    names: list[str]  # sorted cluster names
    index: Any  # (C,) unique_id of every clustered series: data.ids.IdLookup (pd.Index in a batch's subset)
    code: np.ndarray  # (C,) int64 position of each series' cluster in ``names``
    period: np.ndarray  # (C,) int64
    max_step_ns: int  # the largest step among clustered series (0 when unknown)

    @classmethod
    def load(cls, md: ModelDir) -> ClusterIndex:
        """Read clusters.parquet as Arrow columns: no Python object per series (2M of them at scale)."""
        table = md.load_clusters_table()
        clusters = table.column("cluster").combine_chunks()
        if not pa.types.is_dictionary(clusters.type):
            clusters = pc.dictionary_encode(clusters.cast(pa.string()))
        labels = [str(v) for v in clusters.dictionary.to_pylist()]
        names = sorted(set(labels))
        remap = np.asarray([names.index(v) for v in labels], np.int64)  # dictionary position -> sorted name
        code = remap[clusters.indices.to_numpy(zero_copy_only=False)] if labels else np.zeros(0, np.int64)
        max_step = 0
        if "step" in table.column_names and pa.types.is_duration(table.schema.field("step").type):
            steps = table.column("step").cast(pa.duration("ns")).fill_null(0).to_numpy().view(np.int64)
            max_step = int(steps[steps > 0].max(initial=0))
        elif "step_seconds" in table.column_names:
            steps = table.column("step_seconds").to_numpy().astype(np.float64)
            max_step = int(np.nanmax(steps, initial=0.0) * 1e9) if np.isfinite(steps).any() else 0
        index = IdLookup(table.column("unique_id").combine_chunks())
        period = table.column("period").to_numpy().astype(np.int64)
        del table, clusters
        pa.default_memory_pool().release_unused()  # the decoded file: about 200 MB at 2M series
        return cls(names, index, code, period, max_step)

    def subset(self, frame: pd.DataFrame) -> ClusterIndex:
        """The entries of the series in ``frame`` only: what a worker needs for one batch."""
        col = frame["unique_id"]
        ids = col.cat.categories.to_numpy() if isinstance(col.dtype, pd.CategoricalDtype) else np.unique(col.to_numpy())
        index = self.index
        if (index.dtype.kind in "iu") != (np.asarray(ids).dtype.kind in "iu"):
            ids, index = (
                np.asarray(ids).astype(str).astype(object),
                pd.Index(index.take(np.arange(len(index)))).astype(str),
            )
        pos = index.get_indexer(ids)
        pos = pos[pos >= 0]
        return ClusterIndex(
            self.names, pd.Index(self.index.take(pos)), self.code[pos], self.period[pos], self.max_step_ns
        )

    def example_ids(self) -> pd.Series:
        """A few clustered ids (their type is what batch.check_id_kinds compares)."""
        return pd.Series(self.index.take(np.arange(min(len(self.index), 3))))

    def lookup(self, panel: Panel) -> tuple[list[str], np.ndarray, np.ndarray]:
        """As ``batch.series_clusters``: names, (S,) cluster index per panel series (-1 unknown), (S,) period."""
        pos = self.index.get_indexer(panel.ids)  # (S,) -1 where unseen (id kinds checked by batch.check_id_kinds)
        known = pos >= 0
        if not known.any():  # a batch of series fit-clusters never saw (its subset is empty)
            return self.names, np.full(pos.size, -1, np.int64), np.zeros(pos.size, np.int64)
        cluster_of = np.where(known, self.code[np.maximum(pos, 0)], -1)
        period_of = np.where(known, self.period[np.maximum(pos, 0)], 0)
        return self.names, cluster_of, period_of


# -- helpers -----------------------------------------------------------------------------------


def _clean_stale_temps(folder: Path) -> None:
    """Remove the temporary files (``.NAME.PID.*.tmp``) of killed runs in ``folder``."""
    from maml_anomaly.data.write import clean_stale_temps

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


__all__ = ["FORMAT_VERSION", "MANIFEST", "CLUSTERS", "ModelDir", "is_model_dir", "inside_model_dir", "jsonable"]
