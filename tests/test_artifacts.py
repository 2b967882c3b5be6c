"""The model directory: round trips, checksums, version and overwrite refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from maml_anomaly import __version__
from maml_anomaly.config import Config
from maml_anomaly.errors import ModelDirError
from maml_anomaly.model_versions import PENDING
from maml_anomaly.store import FORMAT_VERSION, ModelDir

WINDOW = {"start": pd.Timestamp("2024-01-01"), "end": pd.Timestamp("2024-02-01"), "rows": 10, "series": 2}


def _clusters() -> pd.DataFrame:
    return pd.DataFrame({"unique_id": ["a", "b"], "cluster": [0, 1], "period": [24, 0]})


def _made(path) -> ModelDir:
    md = ModelDir(path)
    md.prepare(overwrite=False)
    md.save_clusters(_clusters())
    config = Config.load(None, {"k_shot": 12})
    md.write_manifest(config, config.columns, WINDOW, {"note": "test"})
    md.publish(PENDING)
    return md


def test_round_trip(tmp_path):
    _made(tmp_path / "m")
    md = ModelDir(tmp_path / "m")
    manifest = md.read_manifest()
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["package"]["version"] == __version__
    assert manifest["data_window"]["start"] == "2024-01-01T00:00:00"
    assert manifest["columns"] == {"id_col": "unique_id", "time_col": "ds", "value_col": "y"}
    assert md.config().train.k_shot == 12
    clusters = md.load_clusters()
    assert clusters["cluster"].tolist() == ["0", "1"] and clusters["period"].dtype == "int64"

    weights = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.zeros(3)}
    md.save_weights("cluster_0", weights, {"k_shot": 12, "cluster": "0"})
    md.save_json("report", {"loss": 0.5, "when": pd.Timestamp("2024-01-01")})
    again = ModelDir(tmp_path / "m")
    tensors, meta = again.load_weights("cluster_0")
    assert torch.equal(tensors["layer.weight"], weights["layer.weight"])
    assert meta == {"k_shot": "12", "cluster": "0"}
    assert again.load_json("report") == {"loss": 0.5, "when": "2024-01-01T00:00:00"}
    files = again.read_manifest()["files"]
    assert set(files) == {"clusters.parquet", "cluster_0.safetensors", "report.json"}
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "m").rglob("*"))


def test_weights_are_not_pickles(tmp_path):
    md = _made(tmp_path / "m")
    path = md.save_weights("w", {"x": torch.ones(2)})
    assert not path.read_bytes().startswith(b"\x80")  # pickle protocol marker


def test_checksum_mismatch_is_refused(tmp_path):
    md = _made(tmp_path / "m")
    md.save_weights("w", {"x": torch.ones(4)})
    raw = bytearray((md.dir / "w.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (md.dir / "w.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelDirError, match="checksum"):
        ModelDir(tmp_path / "m").load_weights("w")


def test_other_format_version_is_refused(tmp_path):
    path = _made(tmp_path / "m").dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="format version"):
        ModelDir(tmp_path / "m").read_manifest()


def test_missing_empty_and_corrupt_directories(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        ModelDir(tmp_path / "nope").read_manifest()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="is empty"):
        ModelDir(tmp_path / "empty").read_manifest()
    (_made(tmp_path / "m").dir / "manifest.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        ModelDir(tmp_path / "m").read_manifest()


def test_overwrite_refused_then_allowed(tmp_path):
    _made(tmp_path / "m")
    with pytest.raises(ModelDirError, match="--overwrite"):
        ModelDir(tmp_path / "m").prepare(overwrite=False)
    md = ModelDir(tmp_path / "m")
    md.prepare(overwrite=True)  # a new, empty version (nothing was trained: it is pending at once)
    assert md.dir.parent == tmp_path / "m" / "versions" and list(md.dir.iterdir()) == []
    assert (tmp_path / "m" / "pending").resolve() == md.dir.resolve()


def test_foreign_directory_never_cleared(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    with pytest.raises(ModelDirError, match="not a maml-anomaly model"):
        ModelDir(tmp_path / "home").prepare(overwrite=True)
    assert (tmp_path / "home" / "notes.txt").read_text() == "precious"


def test_guard_overwrite_and_missing_files(tmp_path):
    md = _made(tmp_path / "m")
    md.save_weights("w", {"x": torch.ones(1)})
    with pytest.raises(ModelDirError, match="--overwrite"):
        md.guard_overwrite(["w.safetensors"], overwrite=False)
    md.guard_overwrite(["w.safetensors"], overwrite=True)
    with pytest.raises(ModelDirError, match="has no"):
        ModelDir(tmp_path / "m").load_weights("absent")
    (md.dir / "stray.json").write_text("{}")
    with pytest.raises(ModelDirError, match="not recorded"):
        ModelDir(tmp_path / "m").load_json("stray")
