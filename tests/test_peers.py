"""The peers' plumbing (parquet exchange, worker driver, not-run path, cache), without their environments."""

import json
import sys

import numpy as np
import pandas as pd
import pytest

from maml_anomaly.benchmarks import detection, peer_worker, peers
from maml_anomaly.core import baselines

START = pd.Timestamp("2026-01-01")


def _frame() -> pd.DataFrame:
    """Two hourly series over 4 days: a NaN on the last day, a missing row, an off-grid row."""
    ds = pd.date_range(START, periods=96, freq="h")
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"unique_id": "a", "ds": ds, "y": 10 + rng.normal(size=96)})
    b = pd.DataFrame({"unique_id": "b", "ds": ds, "y": 5 + rng.normal(size=96)})
    a.loc[90, "y"] = np.nan
    b = b.drop(index=80)
    odd = pd.DataFrame({"unique_id": ["b"], "ds": [ds[85] + pd.Timedelta("20min")], "y": [1.0]})
    return pd.concat([a, b, odd], ignore_index=True)


def _cutoff() -> pd.Series:
    return pd.Series({"a": START + pd.Timedelta(days=3), "b": START + pd.Timedelta(days=3, hours=5)})


def test_exchange_gives_the_baselines_rows_and_reads_scores_back(tmp_path):
    frame = _frame()
    grid = peers.write_inputs(frame, pd.Series({"a": 24, "b": 0}), _cutoff(), tmp_path)
    values = pd.read_parquet(tmp_path / "values.parquet")
    series = pd.read_parquet(tmp_path / "series.parquet").set_index("unique_id")
    assert len(values) == 2 * 96  # every grid point, the missing row as NaN
    assert values.loc[(values["unique_id"] == "b") & (values["t"] == 80), "y"].isna().all()
    assert series.loc["a", "cutoff_t"] == 72 and series.loc["b", "cutoff_t"] == 77
    assert series.loc["a", "period"] == 24 and series.loc["b", "period"] == 0
    # a fake peer: score = t, flags every 5th point, y_hat = y + 1, from each cutoff on
    res = values.merge(series[["cutoff_t"]], left_on="unique_id", right_index=True)
    res = res[res["t"] >= res["cutoff_t"]]
    res = pd.DataFrame(
        {
            "unique_id": res["unique_id"],
            "t": res["t"],
            "y_hat": res["y"] + 1.0,
            "score": res["t"].astype(float),
            "flag": res["t"] % 5 == 0,
        }
    )
    start, end = START + pd.Timedelta(days=3), START + pd.Timedelta(days=3)
    out = peers.read_outputs(grid, res, "fake", start, end)
    ref = baselines.seasonal_naive_scores(frame, 24, start=start, end=end)
    assert list(out.columns) == list(ref.columns)
    assert set(zip(out["unique_id"], out["ds"])) == set(zip(ref["unique_id"], ref["ds"]))
    st = out.set_index(["unique_id", "ds"])["status"]
    assert st[("a", START + pd.Timedelta(hours=90))] == "missing_value"
    assert st[("b", START + pd.Timedelta(hours=85, minutes=20))] == "off_grid"
    assert st[("b", START + pd.Timedelta(hours=73))] == "peer_failed"  # before b's cutoff: the peer gave none
    ok = out[out["status"] == "ok"]
    t = ((ok["ds"] - START) / pd.Timedelta("1h")).to_numpy()
    np.testing.assert_array_equal(ok["score"], t)
    np.testing.assert_array_equal(ok["is_anomaly"], t % 5 == 0)
    np.testing.assert_allclose(ok["y_hat"], ok["y"] + 1.0)
    partial = peers.read_outputs(grid, res, "fake", start, end, not_reached=["b"])
    assert set(partial["unique_id"]) == {"a"}


def test_worker_driver_counts_failures_and_stops_on_time(tmp_path, monkeypatch):
    peers.write_inputs(_frame(), pd.Series({"a": 24, "b": 0}), _cutoff(), tmp_path / "in")

    def fake_adtk(g, period, cutoff, step):
        if g["unique_id"].iloc[0] == "b":
            raise ValueError("cannot fit")
        n = len(g) - cutoff
        return np.zeros(n), np.arange(n, dtype=float), np.zeros(n, bool)

    monkeypatch.setattr(peer_worker, "run_adtk", fake_adtk)
    monkeypatch.setattr(peer_worker, "_version", lambda method: "fake 0")
    out = tmp_path / "out.parquet"
    peer_worker.main(["adtk", str(tmp_path / "in"), str(out)])
    res, info = pd.read_parquet(out), json.loads(out.with_name("out.parquet.json").read_text())
    assert set(res["unique_id"]) == {"a"} and len(res) == 96 - 72
    assert list(info["failed"]) == ["b"] and "cannot fit" in info["failed"]["b"]
    peer_worker.main(["adtk", str(tmp_path / "in"), str(out), "--max-seconds", "-1"])
    info = json.loads(out.with_name("out.parquet.json").read_text())
    assert sorted(info["skipped_for_time"]) == ["a", "b"] and len(pd.read_parquet(out)) == 0


def test_a_peer_without_its_environment_is_reported_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_ANOMALY_PEERS_DIR", str(tmp_path / "none"))
    ran = peers.run_peer(
        "sf_mstl",
        _frame(),
        pd.Series({"a": 24, "b": 0}),
        _cutoff(),
        start=START,
        end=START + pd.Timedelta(days=3),
        folder=tmp_path / "cache",
    )
    assert ran.scores is None
    assert "python -m maml_anomaly.benchmarks.peers --setup statsforecast" in ran.info["not_run"]
    report = {"far": 0.01, "results": {"sf_mstl": {"not_run": ran.info["not_run"]}}}
    row = detection.markdown(report).splitlines()[-1]
    assert row.startswith(f"| {peers.LABELS['sf_mstl']} | not run: ") and row.count("|") == 13
    assert detection.markdown_by_kind(report) == "" and peers.markdown_notes(report) == ""


@pytest.mark.skipif(sys.platform == "win32", reason="a shell-script python")
def test_run_peer_goes_through_a_subprocess_and_caches_by_inputs(tmp_path, monkeypatch):
    """An 'environment' whose python is this one (adtk absent): every series fails, is counted,
    and the cached result is reused only for the same inputs."""
    monkeypatch.setenv("MAML_ANOMALY_PEERS_DIR", str(tmp_path / "envs"))
    (tmp_path / "envs" / "adtk" / "bin").mkdir(parents=True)
    wrapper = tmp_path / "envs" / "adtk" / "bin" / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # this interpreter, its site-packages
    wrapper.chmod(0o755)
    if peers.missing("adtk") is not None:
        pytest.skip(peers.missing("adtk"))
    kw = dict(start=START + pd.Timedelta(days=3), end=START + pd.Timedelta(days=3), folder=tmp_path / "cache")
    try:
        import adtk  # noqa: F401

        pytest.skip("adtk is installed in this environment")
    except ImportError:
        pass
    ran = peers.run_peer("adtk", _frame(), pd.Series({"a": 24, "b": 0}), _cutoff(), **kw)
    assert "not_run" not in ran.info, ran.info["not_run"]
    assert ran.info["n_failed"] == 2 and "ModuleNotFoundError" in ran.info["failed"]["a"]
    assert set(ran.scores["status"]) <= {"peer_failed", "missing_value", "off_grid"}
    again = peers.run_peer("adtk", _frame(), pd.Series({"a": 24, "b": 0}), _cutoff(), reuse=True, **kw)
    assert again.info.get("cached") is True
    changed = peers.run_peer("adtk", _frame(), pd.Series({"a": 12, "b": 0}), _cutoff(), reuse=True, **kw)
    assert not changed.info.get("cached")
    monkeypatch.setitem(peers.REVISION, "adtk", peers.REVISION["adtk"] + 1)  # the method's code changed
    rerun = peers.run_peer("adtk", _frame(), pd.Series({"a": 12, "b": 0}), _cutoff(), reuse=True, **kw)
    assert not rerun.info.get("cached")
