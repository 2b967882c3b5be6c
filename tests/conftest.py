"""Shared fixtures: small long-format frames written as parquet, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner


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
