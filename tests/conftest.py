"""Shared fixtures: small long-format frames written as parquet, a CLI runner, a tiny trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

#: a model small enough to fit-cluster and meta-train in seconds (the engine tests' setup)
TINY = """
[train]
iterations = 3
hidden = [8, 8]
meta_batch_size = 4
time_budget_s = 5.0

[clusters]
min_cluster_size = 5
"""


def make_long(n_series: int = 3, n_points: int = 48, freq: str = "h", seed: int = 0) -> pd.DataFrame:
    """A small long frame (unique_id, ds, y) of seasonal series, sorted by (unique_id, ds)."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2024-01-01", periods=n_points, freq=freq)
    frames = [
        pd.DataFrame(
            {
                "unique_id": f"s{i}",
                "ds": ds,
                "y": 10 * i + np.sin(2 * np.pi * np.arange(n_points) / 24) + rng.normal(0, 0.1, n_points),
            }
        )
        for i in range(n_series)
    ]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def long_frame() -> pd.DataFrame:
    return make_long()


@pytest.fixture
def long_parquet(tmp_path: Path, long_frame: pd.DataFrame) -> Path:
    path = tmp_path / "history.parquet"
    long_frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def train_tiny(tmp_path_factory):
    """A function (name, input frame, history frame) -> a folder with input.parquet, history.parquet,
    tiny.toml (TINY) and model/, fit-clustered and meta-trained on the history."""
    from maml_anomaly.cli import app

    def train(name: str, frame: pd.DataFrame, history: pd.DataFrame) -> Path:
        root = tmp_path_factory.mktemp(name)
        frame.to_parquet(root / "input.parquet", index=False)
        history.to_parquet(root / "history.parquet", index=False)
        (root / "tiny.toml").write_text(TINY)
        for cmd in ("fit-clusters", "meta-train"):
            args = [cmd, "-i", root / "history.parquet", "-m", root / "model", "-c", root / "tiny.toml", "-q"]
            result = CliRunner().invoke(app, [str(a) for a in args])
            assert result.exit_code == 0, result.output
        return root

    return train
