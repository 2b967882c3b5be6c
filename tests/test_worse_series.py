"""benchmarks.worse_series: per-series MAE against the better simple reference, clean ok points only."""

import numpy as np
import pandas as pd

from maml_anomaly.benchmarks.worse_series import per_series


def test_per_series_ratio_uses_the_better_reference_and_skips_labelled_and_failed_points():
    ds = pd.date_range("2024-01-01", periods=4, freq="D")
    scores = pd.DataFrame(
        {
            "unique_id": ["a"] * 4 + ["b"] * 4,
            "ds": list(ds) * 2,
            "y": [10.0, 10.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0],
            "y_hat": [12.0, 12.0, 50.0, 12.0, 5.5, 5.5, 5.5, np.nan],
            "status": ["ok", "ok", "ok", "ok", "ok", "ok", "ok", "missing_value"],
        }
    )
    naive = scores[["unique_id", "ds"]].assign(
        y_naive=[11.0, 11.0, 11.0, 11.0, 4.0, 4.0, 4.0, 4.0], y_last=[14.0, 14.0, 14.0, 14.0, 5.25, 5.25, 5.25, 5.25]
    )
    labels = pd.DataFrame({"unique_id": ["a"], "start": [ds[2]], "end": [ds[2]]})  # a's third point is labelled
    out = per_series(scores, naive, labels)
    assert out.loc["a", "points"] == 3 and out.loc["b", "points"] == 3
    assert np.isclose(out.loc["a", "ratio"], 2.0 / 1.0)  # seasonal naive is a's better reference
    assert np.isclose(out.loc["b", "ratio"], 0.5 / 0.25)  # the last value is b's
