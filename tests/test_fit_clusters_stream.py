"""Streamed fit-clusters (batches of whole series) gives what the whole input in one panel gives."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from maml_anomaly.batch import summarise_periods
from maml_anomaly.commands import fit_clusters as fc
from maml_anomaly.commands.common import load_input
from maml_anomaly.config import Config
from maml_anomaly.store import ModelDir, jsonable


def _frame(seed: int = 0) -> pd.DataFrame:
    """Daily weekly series of two shapes (a group big enough to split), hourly, aperiodic, short and one-point series."""
    rng = np.random.default_rng(seed)
    parts = []

    def add(uid, start, freq, n, period, shape):
        t = np.arange(n)
        if shape == "sine":
            season = np.sin(2 * np.pi * (t + rng.integers(period)) / period)
        elif shape == "dip":
            season = np.where((t + rng.integers(period)) % period < 2, -1.0, 0.4)
        else:
            season = np.zeros(n)
        y = 10 + 3 * season + 0.3 * rng.normal(size=n)
        y[rng.uniform(size=n) < 0.03] = np.nan
        keep = rng.uniform(size=n) > 0.03  # missing rows too
        parts.append(
            pd.DataFrame({"unique_id": uid, "ds": pd.date_range(start, periods=n, freq=freq)[keep], "y": y[keep]})
        )

    for i in range(60):
        add(f"d-sine-{i:03d}", "2024-01-01", "D", int(rng.integers(30, 80)), 7, "sine")
        add(f"d-dip-{i:03d}", "2024-01-01", "D", int(rng.integers(30, 80)), 7, "dip")
    for i in range(25):
        add(f"d-flat-{i:03d}", "2024-02-01", "D", 40, 0, "none")
        add(f"h-day-{i:03d}", "2024-01-01", "h", 24 * 10, 24, "sine")
    add("short", "2024-03-01", "D", 5, 7, "sine")
    parts.append(pd.DataFrame({"unique_id": ["lonely"], "ds": [pd.Timestamp("2024-01-05")], "y": [1.0]}))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream_fit")
    frame = _frame()
    ordered = folder / "ordered.parquet"
    frame.sort_values(["unique_id", "ds"]).to_parquet(ordered, index=False, row_group_size=1500)
    shuffled = folder / "shuffled.parquet"  # row groups overlap in ids: the bucketed (spill) stream
    frame.sample(frac=1.0, random_state=1).to_parquet(shuffled, index=False, row_group_size=1500)
    return folder, ordered, shuffled


def _config() -> Config:
    return Config.from_dict({"clusters": {"min_cluster_size": 20}})


@pytest.mark.parametrize("which", ["ordered", "shuffled"])
def test_streamed_fit_clusters_equals_the_whole_input(inputs, which, monkeypatch, tmp_path):
    folder, ordered, shuffled = inputs
    path = ordered if which == "ordered" else shuffled
    config = _config()
    whole, states, groups, too_short = fc.periods_and_clusters(load_input(config, path).panel, config.clusters)
    assert whole["cluster"].str.contains("-").any(), "the test data should split a period group by shape"

    monkeypatch.setattr(fc, "STREAM_ROWS", 2_000)  # a dozen batches of whole series
    summary = fc.fit_clusters(config=config, input=path, model_dir=tmp_path / "m")
    md = ModelDir(tmp_path / "m")
    streamed = md.load_clusters()
    assert summary["series"] == len(whole) and summary["too_short"] == int(too_short.sum())
    pd.testing.assert_frame_equal(
        streamed.reset_index(drop=True)[list(whole.columns)], whole.reset_index(drop=True), check_dtype=False
    )
    assert md.load_json("clusterer")["step_groups"] == json.loads(json.dumps(jsonable(states)))


def test_batches_do_not_change_a_series_period(inputs):
    """A series' detection matrix width comes from its own length, not from its batch."""
    _, ordered, _ = inputs
    config = _config()
    panel = load_input(config, ordered).panel
    whole = summarise_periods(panel, config.clusters)
    half = panel.n_series // 2
    parts = [
        summarise_periods(panel.take(np.arange(lo, hi)), config.clusters)
        for lo, hi in ((0, half), (half, panel.n_series))
    ]
    joined = fc.concat_period_batches(parts)
    for name in ("period", "strength", "second", "n_obs", "step_ns"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name))
    assert joined.shapes.keys() == whole.shapes.keys()
    for key in whole.shapes:
        np.testing.assert_array_equal(joined.shapes[key][0], whole.shapes[key][0])
        np.testing.assert_array_equal(joined.shapes[key][1], whole.shapes[key][1])
