"""fit-clusters end to end through the CLI: periods, clusters, state for unseen series, summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maml_anomaly.cli import app
from maml_anomaly.core.clustering import PeriodClusterer
from maml_anomaly.store import ModelDir


def _invoke(runner, args):
    return runner.invoke(app, [str(a) for a in args], prog_name="maml-anomaly", color=False)


def _series(uid: str, start: str, freq: str, n: int, period: int, shape: str, rng) -> pd.DataFrame:
    t = np.arange(n)
    if shape == "sine":
        season = np.sin(2 * np.pi * t / period)
    elif shape == "square":
        season = np.sign(np.sin(2 * np.pi * (t + period // 4) / period))
    else:
        season = np.zeros(n)
    y = 5 + 2 * season + 0.3 * rng.normal(size=n) + 0.01 * t
    keep = rng.uniform(size=n) > 0.05  # 5% missing rows
    y[rng.uniform(size=n) < 0.01] = np.nan  # and some NaN values
    ds = pd.date_range(start, periods=n, freq=freq)
    return pd.DataFrame({"unique_id": uid, "ds": ds[keep], "y": y[keep]})


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    """Hourly series (24, two shapes), daily series (7), aperiodic ones and a one-point series."""
    rng = np.random.default_rng(0)
    parts = []
    for i in range(40):
        parts.append(_series(f"h-sine-{i}", "2024-01-01", "h", 24 * 14, 24, "sine", rng))
        parts.append(_series(f"h-square-{i}", "2024-01-01", "h", 24 * 14, 24, "square", rng))
    for i in range(20):
        parts.append(_series(f"h-noise-{i}", "2024-01-01", "h", 24 * 14, 0, "none", rng))
    for i in range(30):
        parts.append(_series(f"d-week-{i}", "2024-01-01", "D", 56, 7, "sine", rng))
    parts.append(pd.DataFrame({"unique_id": ["lonely"], "ds": [pd.Timestamp("2024-01-05")], "y": [1.0]}))
    path = tmp_path_factory.mktemp("fit") / "history.parquet"
    pd.concat(parts, ignore_index=True).to_parquet(path, index=False)
    return path


def test_fit_clusters_writes_periods_clusters_and_state(runner, history, tmp_path):
    model = tmp_path / "model"
    result = _invoke(runner, ["fit-clusters", "-i", history, "-m", model, "--min-cluster-size", "20", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["series"] == 131 and summary["too_short"] >= 1
    assert {s["step"] for s in summary["steps"]} == {"1h", "1D"}

    md = ModelDir(model)
    clusters = md.load_clusters().set_index("unique_id")
    assert {"cluster", "period", "strength", "second_period", "step", "n_obs"} <= set(clusters.columns)
    assert clusters["cluster"].map(type).eq(str).all()
    hourly = clusters.filter(like="h-s", axis=0)
    assert (hourly["period"] == 24).mean() >= 0.97
    assert (clusters.filter(like="d-week", axis=0)["period"] == 7).mean() >= 0.97
    assert (clusters.filter(like="h-noise", axis=0)["period"] == 0).mean() >= 0.9
    assert clusters.loc["lonely", "period"] == 0
    # several steps: names carry the step; the two hourly shapes get their own sub-clusters
    sine = clusters.filter(like="h-sine", axis=0)["cluster"]
    square = clusters.filter(like="h-square", axis=0)["cluster"]
    assert sine.str.startswith("1h-p24").all() and square.str.startswith("1h-p24").all()
    assert sine.mode()[0] != square.mode()[0]
    assert clusters.filter(like="d-week", axis=0)["cluster"].str.startswith("1D-p7").all()
    assert sum(r["size"] for r in summary["clusters"]) == 131

    # the clusterer state is plain JSON and reproduces the labels of its step group
    state = md.load_json("clusterer")
    hourly_state = next(g for g in state["step_groups"] if g["step_seconds"] == 3600)
    model_h = PeriodClusterer.from_dict(hourly_state["clusterer"])
    assert set(model_h.centroids_) == {24}
    manifest = md.read_manifest()
    assert {"clusters.parquet", "clusterer.json"} <= set(manifest["files"])
    assert manifest["extra"]["fit_clusters"]["series"] == 131


def test_fit_clusters_is_deterministic_and_prints_a_summary(runner, history, tmp_path):
    model = tmp_path / "model"
    first = _invoke(runner, ["fit-clusters", "-i", history, "-m", model])
    assert first.exit_code == 0, first.output
    assert "clusters" in first.stdout and "aperiodic" in first.stdout
    before = ModelDir(model).load_clusters()
    again = _invoke(runner, ["fit-clusters", "-i", history, "-m", model])
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    again = _invoke(runner, ["fit-clusters", "-i", history, "-m", model, "--overwrite"])
    assert again.exit_code == 0, again.output
    pd.testing.assert_frame_equal(ModelDir(model).load_clusters(), before)


def test_fit_clusters_single_step_names_have_no_prefix(runner, tmp_path):
    rng = np.random.default_rng(1)
    frame = pd.concat([_series(f"s{i}", "2024-03-01", "h", 24 * 10, 24, "sine", rng) for i in range(12)])
    path = tmp_path / "h.parquet"
    frame.to_parquet(path, index=False)
    result = _invoke(runner, ["fit-clusters", "-i", path, "-m", tmp_path / "m", "--json"])
    assert result.exit_code == 0, result.output
    clusters = ModelDir(tmp_path / "m").load_clusters()
    assert set(clusters["cluster"]) == {"p24"} and (clusters["period"] == 24).all()


def test_unseen_series_are_assigned_from_their_history(runner, history, tmp_path):
    from maml_anomaly.core.clustering import assign_clusters

    model = tmp_path / "model"
    result = _invoke(runner, ["fit-clusters", "-i", history, "-m", model, "--min-cluster-size", "20"])
    assert result.exit_code == 0, result.output
    md = ModelDir(model)
    clusters = md.load_clusters().set_index("unique_id")
    state = md.load_json("clusterer")
    rng = np.random.default_rng(5)
    new = [_series(f"new-{s}", "2024-02-01", "h", 24 * 14, 24, s, rng) for s in ("sine", "square", "none")]
    matrix = np.full((3, 24 * 14), np.nan)  # (S, T) on the hourly grid, NaN = missing
    for i, f in enumerate(new):
        j = ((f["ds"] - pd.Timestamp("2024-02-01")) // pd.Timedelta("1h")).to_numpy()
        matrix[i, j] = f["y"].to_numpy()
    period, names = assign_clusters(state, matrix, 3600.0)
    assert period[0] == 24 and period[1] == 24 and period[2] == 0
    assert names[0] == clusters.filter(like="h-sine", axis=0)["cluster"].mode()[0]
    assert names[1] == clusters.filter(like="h-square", axis=0)["cluster"].mode()[0]
    assert names[2] == "1h-p0"
