"""Every `ok` row has a finite score, forecast and band, whatever the magnitude of its value: a
value near the float limit is flagged with the day's largest score, never NaN."""

import numpy as np
import pytest
from synth import seasonal_panel, tiny_cluster, to_buffer  # noqa: F401 (fixture)

from maml_anomaly.core.scoring import STATUS_OK, score_rows

HOUR_NS = 3600 * 10**9
DAY = 20
THRESHOLD = 3.0


def _score_day(cluster, matrix):
    """score_rows over day DAY of every series of an hourly (S, T) panel starting at epoch 0."""
    s = matrix.shape[0]
    values, indptr = to_buffer(matrix)
    hours = DAY * 24 + np.arange(24)
    row_series = np.repeat(np.arange(s), 24)
    row_t = np.tile(hours * HOUR_NS, s).astype(np.int64)
    row_y = matrix[row_series, np.tile(hours, s)]
    with np.errstate(all="ignore"):  # overflow inside is the point of the test; the outputs are checked
        out = score_rows(
            [cluster],
            values,
            indptr,
            np.zeros(s, np.int64),
            np.full(s, HOUR_NS, np.int64),
            np.zeros(s, np.int64),
            row_series,
            row_t,
            row_y,
            threshold=THRESHOLD,
        )
    return out, row_series


def _assert_ok_rows_finite(out):
    ok = out.status == STATUS_OK
    assert ok.any()
    for name in ("score", "p_value", "y_hat", "lower", "upper"):
        assert np.isfinite(getattr(out, name)[ok]).all(), name


@pytest.mark.parametrize("value", [1e308, -1e308, np.finfo(np.float64).max, -1e300])
def test_a_value_near_the_float_limit_on_the_scored_day_gets_the_largest_score(tiny_cluster, value):
    matrix = seasonal_panel(4, 24 * 21, seed=3)
    matrix[:, DAY * 24 + 5] = value
    out, row_series = _score_day(tiny_cluster, matrix)
    _assert_ok_rows_finite(out)
    for s in range(4):
        day = out.score[row_series == s]
        assert day[5] == day.max() and out.is_anomaly[row_series == s][5]


def test_values_near_the_float_limit_in_the_history_keep_the_outputs_finite(tiny_cluster):
    matrix = seasonal_panel(4, 24 * 21, seed=4)
    matrix[0, (DAY - 1) * 24 + 5] = 1e308  # yesterday's overflow in today's lags
    matrix[1, (DAY - 1) * 24 : (DAY - 1) * 24 + 20] = 1e308  # most of yesterday at the limit
    matrix[2, 10 * 24 : DAY * 24 : 2] = -1e308  # a history that jumps between both limits
    matrix[2, 10 * 24 + 1 : DAY * 24 : 2] = 1e308
    matrix[3, DAY * 24 + 3 : DAY * 24 + 20] = -1e308  # most of today at the limit
    out, _ = _score_day(tiny_cluster, matrix)
    _assert_ok_rows_finite(out)
