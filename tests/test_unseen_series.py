"""Series fit-clusters never saw get a cluster from their own history: the same in any batch, on any engine.

Late series (hourly, 3 to 16 days long, so long enough to be assigned) are left out of
fit-clusters, then scored in one batch, split into many batches, and on Ray; their clusters and
scores must not depend on which series share their batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synth import seasonal_panel
from typer.testing import CliRunner

from maml_anomaly.batch import assign_unseen
from maml_anomaly.cli import app
from maml_anomaly.config import Config
from maml_anomaly.data.panel import build_panel
from maml_anomaly.store import CLUSTERER, ModelDir

DAYS = 16


def _frame() -> tuple[pd.DataFrame, list[str]]:
    """30 known hourly series over DAYS days and 12 late ones of 3 to 16 days, all ending together."""
    hours = DAYS * 24
    ds = pd.date_range("2026-01-01", periods=hours, freq="h")
    known = seasonal_panel(30, hours, seed=11)
    late = seasonal_panel(12, hours, seed=12)
    parts = [
        pd.DataFrame(
            {
                "unique_id": np.repeat([f"k{i:02d}" for i in range(30)], hours),
                "ds": np.tile(ds, 30),
                "y": known.reshape(-1),
            }
        )
    ]
    late_ids = [f"late{i:02d}" for i in range(12)]
    for i, uid in enumerate(late_ids):
        n = 24 * (3 + i + (i > 6) * (i - 6))  # 3 to 16 days: every length on its own
        n = min(n, hours)
        parts.append(pd.DataFrame({"unique_id": uid, "ds": ds[-n:], "y": late[i, -n:]}))
    return pd.concat(parts, ignore_index=True), late_ids


def _ok(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained(train_tiny):
    frame, late = _frame()
    root = train_tiny("unseen", frame, frame[~frame["unique_id"].isin(late)])
    return root, frame, late


def test_a_late_series_gets_the_same_cluster_alone_or_with_others(trained):
    root, frame, late = trained
    md = ModelDir(root / "model")
    names = sorted(md.load_clusters()["cluster"].astype(str).unique())
    clusterer = md.load_json(CLUSTERER)
    config = Config()
    panel, _ = build_panel(frame[frame["unique_id"].isin(late)].reset_index(drop=True))
    first = np.datetime64(frame["ds"].max().normalize().to_datetime64(), "ns")
    unknown = np.full(panel.n_series, -1, np.int64)
    together = assign_unseen(config, clusterer, panel, unknown, names, first)
    assert (together >= 0).all()  # every late series is long enough to be assigned
    for i in range(panel.n_series):
        alone = assign_unseen(config, clusterer, panel.take(np.array([i])), unknown[:1], names, first)
        assert alone[0] == together[i], panel.ids[i]
    halves = [np.arange(0, panel.n_series, 2), np.arange(1, panel.n_series, 2)]  # another split
    for rows in halves:
        part = assign_unseen(config, clusterer, panel.take(rows), unknown[: rows.size], names, first)
        np.testing.assert_array_equal(part, together[rows])


def _scores(root: Path, name: str, *extra) -> pd.DataFrame:
    out = root / f"{name}.parquet"
    _ok("daily-score", "-i", root / "input.parquet", "-m", root / "model", "-o", out, "-q", *extra)
    return pd.read_parquet(out)


def test_scores_of_late_series_do_not_depend_on_the_batches(trained, monkeypatch):
    from maml_anomaly.commands import score

    root, _, late = trained
    whole = _scores(root, "whole")
    monkeypatch.setattr(score, "STREAM_ROWS", 1500)  # batches of a few series: the late ones apart
    monkeypatch.setattr(score, "cpu_processes", lambda threads, device: 1)
    split = _scores(root, "split")
    pd.testing.assert_frame_equal(whole, split, check_exact=False, rtol=1e-9, atol=1e-12)
    for col in ("unique_id", "ds", "cluster", "status", "is_anomaly"):
        pd.testing.assert_series_equal(whole[col], split[col])
    rows = whole[whole["unique_id"].isin(late)]
    assert rows["cluster"].notna().all() and (rows["status"] == "ok").mean() > 0.9


def test_ray_scores_late_series_as_local(trained, monkeypatch):
    ray = pytest.importorskip("ray")
    from maml_anomaly.engines import ray_engine

    root, _, _ = trained
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    local = _scores(root, "local")
    monkeypatch.setattr(ray_engine, "BUCKET_ROWS", 2000)  # several groups, split otherwise than local's
    started = ray.is_initialized()
    if not started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        on_ray = _scores(root, "ray", "--engine", "ray")
    finally:
        if not started:
            ray.shutdown()
    pd.testing.assert_frame_equal(local, on_ray, check_exact=False, rtol=1e-9, atol=1e-12)
    for col in ("unique_id", "ds", "cluster", "status", "is_anomaly"):
        pd.testing.assert_series_equal(local[col], on_ray[col])
