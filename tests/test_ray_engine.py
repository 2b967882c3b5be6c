"""--engine ray writes what the local engine writes (Ray in local mode), and fails as clearly.

One local Ray instance (2 CPUs, no dashboard) serves the whole module; a tiny model is trained
once. The tests that need Ray skip where it is not installed (pip install "maml-anomaly[ray]").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY
from synth import seasonal_panel
from typer.testing import CliRunner

from maml_anomaly.cli import app
from maml_anomaly.data.stream import stable_buckets
from maml_anomaly.engines import RAY_INSTALL

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "values.parquet"
DAYS = 10


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _ok(*args):
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    return result


# -- without Ray ----------------------------------------------------------------------------------


def test_buckets_are_stable_across_processes_and_encodings():
    ids = pa.array([f"s{i}" for i in range(500)] * 2)
    here = stable_buckets(ids, 7)
    assert here.shape == (1000,) and here.min() >= 0 and here.max() < 7
    assert len(np.unique(here)) == 7  # 500 ids spread over every bucket
    np.testing.assert_array_equal(here, stable_buckets(ids.dictionary_encode(), 7))
    np.testing.assert_array_equal(here[:500], here[500:])  # a series' rows share one bucket
    code = (
        "import pyarrow as pa; from maml_anomaly.data.stream import stable_buckets; "
        "print(','.join(map(str, stable_buckets(pa.array([f's{i}' for i in range(500)]), 7))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(ROOT)}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == ",".join(map(str, here[:500]))
    ints = stable_buckets(pa.array(np.arange(100, dtype=np.int64)), 5)
    np.testing.assert_array_equal(ints, stable_buckets(pa.array([str(i) for i in range(100)]), 5))


def test_engine_ray_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = _invoke(
        "daily-score",
        "-i",
        tmp_path / "x.parquet",
        "-m",
        tmp_path / "m",
        "-o",
        tmp_path / "o.parquet",
        "--engine",
        "ray",
    )
    assert result.exit_code == 1
    assert RAY_INSTALL in result.output
    assert "Traceback" not in result.output


def test_fit_clusters_engine_ray_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = _invoke("fit-clusters", "-i", tmp_path / "x.parquet", "-m", tmp_path / "m", "--engine", "ray")
    assert result.exit_code == 1
    assert RAY_INSTALL in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_period_summary_survives_its_arrow_row():
    """What a fit-clusters worker sends back decodes to the summary it computed, bit for bit."""
    from maml_anomaly.batch import PeriodCodec, summarise_batch
    from maml_anomaly.config import Config

    frame = _generated()
    frame = frame[frame["unique_id"] != "h07"]  # keep the read simple: no off-grid row
    frame = frame.sort_values(["unique_id", "ds"], ignore_index=True)
    batch, report = summarise_batch(Config(), frame)
    assert batch.shapes  # periodic series, so cycle shapes travel too
    lo, hi = frame["ds"].min().to_datetime64(), frame["ds"].max().to_datetime64()
    codec = PeriodCodec()
    table = pa.concat_tables([codec.encode((batch, report, lo, hi))] * 2).combine_chunks()  # rows of one block
    rows = list(codec.decode(table))
    assert len(rows) == 2
    for back, counts, lo2, hi2 in rows:
        for name in ("ids", "step_ns", "period", "strength", "second", "n_obs"):
            a, b = getattr(batch, name), getattr(back, name)
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert list(back.shapes) == sorted(batch.shapes)
        for key, (rows_a, prof_a) in batch.shapes.items():
            np.testing.assert_array_equal(back.shapes[key][0], rows_a)
            assert back.shapes[key][1].dtype == prof_a.dtype
            np.testing.assert_array_equal(back.shapes[key][1], prof_a)
        assert counts == report and (lo2, hi2) == (lo, hi)


def test_ray_address_needs_engine_ray(tmp_path):
    result = _invoke(
        "backtest",
        "-i",
        tmp_path / "x.parquet",
        "-m",
        tmp_path / "m",
        "-o",
        tmp_path / "o.parquet",
        "--ray-address",
        "auto",
    )
    assert result.exit_code == 1
    assert "--engine ray" in result.output


# -- with Ray (local mode) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _generated() -> pd.DataFrame:
    """30 hourly and 12 daily series with the oddities real inputs have, in random row order."""
    hours = DAYS * 24
    hourly = seasonal_panel(30, hours, seed=3)
    hourly[4, -9] *= 3.0  # a spike on the last day
    hourly[5, -6] = np.nan  # a missing value on the last day
    ds_h = pd.date_range("2026-01-01", periods=hours, freq="h")
    daily = seasonal_panel(12, 120, period=7, seed=4)
    ds_d = pd.date_range(end=pd.Timestamp("2026-01-01") + pd.Timedelta(days=DAYS - 1), periods=120, freq="D")
    parts = [
        pd.DataFrame(
            {
                "unique_id": np.repeat([f"h{i:02d}" for i in range(30)], hours),
                "ds": np.tile(ds_h, 30),
                "y": hourly.reshape(-1),
            }
        ),
        pd.DataFrame(
            {
                "unique_id": np.repeat([f"d{i:02d}" for i in range(12)], 120),
                "ds": np.tile(ds_d, 12),
                "y": daily.reshape(-1),
            }
        ),
        pd.DataFrame({"unique_id": "h07", "ds": [ds_h[-3] + pd.Timedelta("20min")], "y": [1.0]}),  # off its grid
        pd.DataFrame({"unique_id": "late", "ds": ds_h[-30:], "y": np.linspace(1, 2, 30)}),  # unseen by fit-clusters
    ]
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.drop(index=8 * hours + hours - 4)  # a missing timestamp on the last day
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(train_tiny, ray_local):
    frame = _generated()
    return train_tiny("ray", frame, frame[frame["unique_id"] != "late"])


def _assert_same(local: Path, ray: Path) -> None:
    a, b = pd.read_parquet(local), pd.read_parquet(ray)
    assert list(a.columns) == list(b.columns)
    assert a.dtypes.equals(b.dtypes)
    assert len(a) == len(b) > 0
    for col in ("unique_id", "ds", "is_anomaly", "cluster", "status"):
        pd.testing.assert_series_equal(a[col], b[col])
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-12)


def test_daily_score_ray_matches_local(trained, monkeypatch):
    from maml_anomaly.engines import ray_engine

    monkeypatch.setattr(ray_engine, "BUCKET_ROWS", 2000)  # several buckets, so several groups
    root = trained
    args = ["daily-score", "-i", root / "input.parquet", "-m", root / "model", "-q"]
    _ok(*args, "-o", root / "local.parquet")
    _ok(*args, "-o", root / "ray.parquet", "--engine", "ray")
    _assert_same(root / "local.parquet", root / "ray.parquet")
    scores = pd.read_parquet(root / "ray.parquet")
    assert {"ok", "missing_value", "off_grid"} <= set(scores["status"])
    assert scores.loc[scores["unique_id"] == "late", "status"].iloc[0] != "ok"  # too short to assign or score
    _ok(*args, "-o", root / "ray.parquet", "--engine", "ray")  # a rerun replaces the file
    assert len(pd.read_parquet(root / "ray.parquet")) == len(scores)


def test_backtest_ray_matches_local_with_events(trained):
    root = trained
    args = ["backtest", "-i", root / "input.parquet", "-m", root / "model", "--start", "2026-01-08", "-q"]
    _ok(*args, "-o", root / "bt_local.parquet", "--events", root / "ev_local.parquet")
    _ok(*args, "-o", root / "bt_ray.parquet", "--events", root / "ev_ray.parquet", "--engine", "ray")
    _assert_same(root / "bt_local.parquet", root / "bt_ray.parquet")
    pd.testing.assert_frame_equal(
        pd.read_parquet(root / "ev_local.parquet"),
        pd.read_parquet(root / "ev_ray.parquet"),
        check_exact=False,
        rtol=1e-9,
    )


def test_a_past_date_ignores_later_data(trained):
    root = trained
    args = ["daily-score", "-i", root / "input.parquet", "-m", root / "model", "--date", "2026-01-09", "-q"]
    _ok(*args, "-o", root / "past_local.parquet")
    _ok(*args, "-o", root / "past_ray.parquet", "--engine", "ray")
    _assert_same(root / "past_local.parquet", root / "past_ray.parquet")
    assert pd.read_parquet(root / "past_ray.parquet")["ds"].max() < pd.Timestamp("2026-01-10")


def test_worker_errors_reach_the_user_as_messages(trained):
    root = trained
    frame = pd.read_parquet(root / "input.parquet")
    pd.concat([frame, frame.iloc[:3]]).to_parquet(root / "dup.parquet")
    out = root / "dup_scores.parquet"
    result = _invoke("daily-score", "-i", root / "dup.parquet", "-m", root / "model", "-o", out, "--engine", "ray")
    assert result.exit_code == 1, result.output
    assert "duplicate" in result.output.lower() and "Traceback" not in result.output
    assert not out.exists()
    result = _invoke(
        "daily-score",
        "-i",
        root / "dup.parquet",
        "-m",
        root / "model",
        "-o",
        out,
        "--engine",
        "ray",
        "--on-duplicate",
        "first",
    )
    assert result.exit_code == 1 and "input order" in result.output
    result = _invoke(
        "daily-score",
        "-i",
        root / "input.parquet",
        "-m",
        root / "model",
        "-o",
        out,
        "--engine",
        "ray",
        "--date",
        "2025-06-01",
    )
    assert result.exit_code == 1 and "no data" in result.output
    assert not out.exists()
    assert not list(root.glob(".dup_scores.parquet.*"))  # no staging folder left after a failure


def _assert_close_json(a, b, where="clusterer.json"):
    """Same structure and values; floats to a relative 1e-9."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_close_json(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_json(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where


def test_fit_clusters_ray_matches_local(tmp_path, ray_local, monkeypatch):
    """Periods summarised on Ray workers, in several groups, give the local engine's model directory."""
    import json

    from maml_anomaly.engines import ray_engine

    monkeypatch.setattr(ray_engine, "BUCKET_ROWS", 2000)  # several buckets, so several groups
    frame = _generated()  # rows in random order: hourly and daily series, gaps, an off-grid row
    frame.to_parquet(tmp_path / "input.parquet")
    (tmp_path / "tiny.toml").write_text(TINY)  # small clusters: the hourly series split by shape
    args = ["fit-clusters", "-i", tmp_path / "input.parquet", "-c", tmp_path / "tiny.toml", "-q", "--json"]
    local = json.loads(_ok(*args, "-m", tmp_path / "local").stdout)
    ray = json.loads(_ok(*args, "-m", tmp_path / "ray", "--engine", "ray").stdout)
    a, b = (
        pd.read_parquet(tmp_path / "local" / "pending" / "clusters.parquet"),
        pd.read_parquet(tmp_path / "ray" / "pending" / "clusters.parquet"),
    )
    assert len(a) == frame["unique_id"].nunique()
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9)
    for col in ("unique_id", "cluster", "period", "second_period", "step", "n_obs"):
        pd.testing.assert_series_equal(a[col], b[col], check_exact=True)
    assert a["cluster"].nunique() > 2  # more than one cluster per step: shapes were compared
    _assert_close_json(
        json.loads((tmp_path / "local" / "pending" / "clusterer.json").read_text()),
        json.loads((tmp_path / "ray" / "pending" / "clusterer.json").read_text()),
    )
    local.pop("seconds"), ray.pop("seconds")
    assert local == ray
    manifests = [json.loads((tmp_path / d / "pending" / "manifest.json").read_text()) for d in ("local", "ray")]
    assert manifests[0]["data_window"] == manifests[1]["data_window"]


@pytest.mark.slow
def test_sample_data_ray_matches_local(tmp_path, ray_local):
    """The whole sample (200 series, 5-minute to daily): daily-score and a week of backtest."""
    (tmp_path / "tiny.toml").write_text(TINY)
    for cmd in ("fit-clusters", "meta-train"):
        _ok(cmd, "-i", SAMPLE, "-m", tmp_path / "model", "-c", tmp_path / "tiny.toml", "-q")
    for cmd, extra in (("daily-score", []), ("backtest", ["--start", "2024-03-25"])):
        args = [cmd, "-i", SAMPLE, "-m", tmp_path / "model", "-q", *extra]
        _ok(*args, "-o", tmp_path / f"{cmd}_local.parquet")
        _ok(*args, "-o", tmp_path / f"{cmd}_ray.parquet", "--engine", "ray")
        _assert_same(tmp_path / f"{cmd}_local.parquet", tmp_path / f"{cmd}_ray.parquet")


def test_unordered_row_groups_go_through_the_hash_shuffle_and_match_local(trained, monkeypatch):
    """Row groups whose id ranges overlap cannot be read as runs of whole series: Ray shuffles rows into id ranges."""
    import pyarrow.dataset as pads

    from maml_anomaly.data.stream import series_ordered_runs
    from maml_anomaly.engines import ray_engine

    root = trained
    table = pa.Table.from_pandas(pd.read_parquet(root / "input.parquet"), preserve_index=False)  # rows in random order
    pq.write_table(table, root / "unordered.parquet", row_group_size=500)
    assert series_ordered_runs(pads.dataset(root / "unordered.parquet"), "unique_id", None, 1000) is None
    ordered = table.sort_by([("unique_id", "ascending"), ("ds", "ascending")])
    pq.write_table(ordered, root / "ordered.parquet", row_group_size=500)
    runs = series_ordered_runs(pads.dataset(root / "ordered.parquet"), "unique_id", None, 1000)
    assert runs is not None and len(runs) >= 2  # whole series per run, cut only where no series crosses
    monkeypatch.setattr(ray_engine, "BUCKET_ROWS", 2000)
    for name in ("unordered", "ordered"):
        args = ["daily-score", "-i", root / f"{name}.parquet", "-m", root / "model", "-q"]
        _ok(*args, "-o", root / f"{name}_local.parquet")
        _ok(*args, "-o", root / f"{name}_ray.parquet", "--engine", "ray")
        _assert_same(root / f"{name}_local.parquet", root / f"{name}_ray.parquet")


def test_the_driver_receives_summaries_never_score_rows(trained, monkeypatch):
    """What comes back to the driver from the batches is counts, tested p-values, a few candidates
    and the events; the score rows go from the workers' parts to the output file."""
    from maml_anomaly.batch import ScoredBatch
    from maml_anomaly.commands.alerting import PartAlerts
    from maml_anomaly.core.events import EVENT_COLUMNS
    from maml_anomaly.engines import ray_engine

    monkeypatch.setattr(ray_engine, "BUCKET_ROWS", 2000)  # several buckets, so several batches
    received: list[pa.Table] = []
    parts_back: list = []
    in_order, map_parts = ray_engine._in_output_order, ray_engine.RayEngine.map_parts

    def spy_batches(tables, codec):
        received.extend(tables)
        yield from in_order(tables, codec)

    def spy_parts(self, fn, payload, items):
        for result in map_parts(self, fn, payload, items):
            parts_back.append(result)
            yield result

    monkeypatch.setattr(ray_engine, "_in_output_order", spy_batches)
    monkeypatch.setattr(ray_engine.RayEngine, "map_parts", spy_parts)
    root = trained
    out = root / "summaries.parquet"
    table = pa.Table.from_pandas(pd.read_parquet(root / "input.parquet"), preserve_index=False)
    pq.write_table(table, root / "shuffled.parquet", row_group_size=500)  # row groups overlap: buckets
    _ok(
        "backtest",
        "-i",
        root / "shuffled.parquet",
        "-m",
        root / "model",
        "-q",
        "--start",
        "2026-01-08",
        "--max-alerts",
        "5",
        "--fdr",
        "0.5",
        "-o",
        out,
        "--engine",
        "ray",
    )
    scores = pd.read_parquet(out)
    batches = pa.concat_tables(received)  # a block may hold several batches' rows
    assert batches.num_rows >= 2  # several batches
    assert set(batches.column_names) == {"scored", "tested", "sizes", "batch_key"}
    tested = sum(len(v) for v in batches.column("tested").to_pylist())
    assert tested == (scores["status"] == "ok").sum()  # one float per tested point, nothing else per row
    candidates = [r for r in parts_back if isinstance(r, tuple)]
    alerted = [r for r in parts_back if isinstance(r, PartAlerts)]
    assert len(candidates) == len(alerted) == batches.num_rows
    assert all(len(c[0]) <= 5 for c in candidates)  # at most the budget per batch
    for part in alerted:
        assert list(part.events.columns) == list(EVENT_COLUMNS) and len(part.events) == part.counts["events"]
    assert not [r for r in parts_back if isinstance(r, (ScoredBatch, pd.DataFrame))]
    assert 0 < scores["is_anomaly"].sum() <= 5
    assert not list(root.glob(".summaries.parquet.*"))  # the staging folder is gone
