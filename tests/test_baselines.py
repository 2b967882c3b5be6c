"""Baselines flag an obvious spike, stay quiet on clean noise, and keep the scores contract."""

import numpy as np
import pandas as pd
import pytest

from maml_anomaly.core.baselines import (
    BASELINES,
    holt_winters_forecast,
    seasonal_lag,
    seasonal_naive_reference,
)
from maml_anomaly.data.schemas import SCORE_COLUMNS
from maml_anomaly.errors import InputError


def _hourly(seed=0, days=30, uid="a", level=100.0):
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2024-01-01", periods=days * 24, freq="h")
    t = np.arange(len(ds))
    y = level + 0.2 * level * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.01 * level, len(ds))
    return pd.DataFrame({"unique_id": uid, "ds": ds, "y": y})


@pytest.mark.parametrize("name", list(BASELINES))
def test_flags_an_obvious_spike(name):
    df = _hourly()
    at = pd.Timestamp("2024-01-30 12:00")
    df.loc[df["ds"] == at, "y"] += 15.0  # 15 noise sd
    out = BASELINES[name](df, 24)  # default: the last day
    assert list(out.columns) == list(SCORE_COLUMNS)
    assert len(out) == 24 and (out["ds"].dt.normalize() == pd.Timestamp("2024-01-30")).all()
    hit = out.set_index("ds").loc[at]
    assert hit["is_anomaly"] and hit["score"] == out["score"].max()
    assert hit["y"] > hit["upper"]


@pytest.mark.parametrize("name", list(BASELINES))
def test_quiet_on_clean_noise(name):
    df = pd.concat([_hourly(seed=s, uid=f"s{s}", level=10.0 ** (s - 2)) for s in range(6)])
    out = BASELINES[name](df, 24, start="2024-01-24", end="2024-01-30")
    assert (out["status"] == "ok").all()
    assert out["is_anomaly"].mean() < 0.01
    # scale-free: the same noise on scales 0.01 .. 1000 gives scores of the same size
    med = out.groupby("unique_id")["score"].median()
    assert med.max() / med.min() < 2


def test_scored_day_ignores_later_data_and_rows_keep_their_status():
    df = _hourly(days=20)
    day = "2024-01-15"
    base = BASELINES["seasonal_naive"](df[df["ds"] < "2024-01-16"], 24, start=day, end=day)
    later = BASELINES["seasonal_naive"](df, 24, start=day, end=day)
    pd.testing.assert_frame_equal(base, later)
    df2 = df.copy()
    df2.loc[df2["ds"] == pd.Timestamp("2024-01-15 03:00"), "y"] = np.nan
    off = pd.DataFrame({"unique_id": ["a"], "ds": [pd.Timestamp("2024-01-15 05:30")], "y": [1.0]})
    out = BASELINES["seasonal_naive"](pd.concat([df2, off]), 24, start=day, end=day)
    status = out.set_index("ds")["status"]
    assert len(out) == 25  # every input row of the day, the off-grid one too
    assert status[pd.Timestamp("2024-01-15 03:00")] == "missing_value"
    assert status[pd.Timestamp("2024-01-15 05:30")] == "off_grid"
    assert not out.loc[out["status"] != "ok", "is_anomaly"].any()


def test_mixed_frequencies_and_short_history():
    hourly = _hourly(days=10, uid="h")
    daily = pd.DataFrame(
        {
            "unique_id": "d",
            "ds": pd.date_range("2023-10-01", "2024-01-10", freq="D"),
            "y": np.tile([5.0, 6, 7, 6, 5, 2, 2], 15)[:102],
        }
    )
    short = _hourly(days=1, uid="s").assign(ds=lambda d: d["ds"] + pd.Timedelta(days=9))
    out = BASELINES["seasonal_naive"](pd.concat([hourly, daily, short]), {"h": 24, "d": 7, "s": 24})
    st = out.groupby("unique_id")["status"].agg(lambda s: set(s))
    assert st["h"] == {"ok"} and st["d"] == {"ok"} and st["s"] == {"insufficient_history"}
    assert out.loc[out["unique_id"] == "d", "score"].iloc[0] < 1  # a perfectly weekly series


def test_duplicates_are_refused():
    df = _hourly(days=3)
    with pytest.raises(InputError, match="duplicate"):
        BASELINES["seasonal_naive"](pd.concat([df, df.iloc[:2]]), 24)


def test_seasonal_lag_reaches_back_over_missing_cycles():
    vals = np.array([[1.0, 2, np.nan, np.nan, 5, 6]])
    lag = seasonal_lag(vals, np.array([2]))
    np.testing.assert_array_equal(lag[0, 4:], [1.0, 2.0])  # t-2 missing: t-4 used
    assert np.isnan(lag[0, :2]).all()


def test_holt_winters_tracks_trend_and_season():
    t = np.arange(24 * 20)
    vals = (50 + 0.1 * t + 10 * np.sin(2 * np.pi * t / 24))[None, :]  # (1, T)
    y_hat, params = holt_winters_forecast(vals, np.array([24]), np.array([24 * 15]))
    err = np.abs(y_hat - vals)[0, 24 * 15 :]
    naive = np.abs(vals[0, 24 * 15 :] - vals[0, 24 * 14 : -24])  # seasonal naive misses the trend
    assert err.mean() < 0.5 * naive.mean()


def test_naive_reference_scale_uses_history_only():
    df = _hourly(days=5)
    ref = seasonal_naive_reference(df, 24, before="2024-01-04")
    hist = df[df["ds"] < "2024-01-04"]["y"].to_numpy()
    assert ref["scale"].iloc[0] == pytest.approx(np.mean(np.abs(hist[24:] - hist[:-24])))
    assert np.isnan(ref["y_naive"].iloc[0]) and ref["y_naive"].iloc[30] == df["y"].iloc[6]
