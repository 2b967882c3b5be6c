"""The day-scale diagnostic's moments: before, through and over the whole series, per series."""

import numpy as np
import pandas as pd

from maml_anomaly.benchmarks.day_scales import daily_moments, scales_of


def test_scales_before_through_and_whole_series_match_numpy():
    rng = np.random.default_rng(0)
    ds = pd.Series(pd.date_range("2024-01-01", periods=24 * 3, freq="h").tolist() * 2)
    ids = pd.Series(["a"] * 72 + ["b"] * 72)
    x = pd.Series(rng.normal(0.0, 1.0, 144) * np.repeat([1.0, 10.0], 72))
    x[5] = np.nan  # left out
    got = scales_of(daily_moments(ids, ds, x)).set_index(["uid", "day"])
    a = x[:72].to_numpy()
    day2 = pd.Timestamp("2024-01-02")
    np.testing.assert_allclose(got.loc[("a", day2), "sd before the day"], np.nanstd(a[:24]))
    np.testing.assert_allclose(got.loc[("a", day2), "sd through the day"], np.nanstd(a[:48]))
    np.testing.assert_allclose(got.loc[("a", day2), "mean of the day"], np.mean(a[24:48]))
    np.testing.assert_allclose(got.loc[("b", day2), "sd whole series"], np.std(x[72:].to_numpy()))
    assert np.isnan(got.loc[("b", pd.Timestamp("2024-01-01")), "mean before the day"])  # nothing before
