"""The forecast scored stays near the simple references on a series' first day too: the day's own
points, forecast in time order, decide which candidate forecaster (and whether cleaned lags) to use."""

import numpy as np
from synth import seasonal_panel, tiny_cluster, to_buffer  # noqa: F401 (fixture)

from maml_anomaly.core.scoring import STATUS_OK, score_rows, score_tasks

STEP_NS = 60 * 10**9  # 1-minute points, as telemetry channels


def _score_first_day(cluster, matrix):
    """Score every point of series whose history starts at the scored day's midnight."""
    s, n = matrix.shape
    values, indptr = to_buffer(matrix)
    out = score_rows(
        [cluster],
        values,
        indptr,
        np.zeros(s, np.int64),
        np.full(s, STEP_NS, np.int64),
        np.zeros(s, np.int64),
        np.repeat(np.arange(s), n),
        np.tile(np.arange(n) * STEP_NS, s).astype(np.int64),
        matrix.reshape(-1),
        threshold=3.0,
    )
    return out.y_hat.reshape(s, n), (out.status == STATUS_OK).reshape(s, n)


def test_a_noise_free_ramp_with_full_range_resets_stays_near_the_last_value_on_its_first_day(tiny_cluster):
    # a slow noise-free ramp reset to its bottom every 400 minutes: each reset is a flagged move
    # that lasts; holding it out of the lags for 3 points cost twice the last value's MAE
    t = np.arange(1440)
    ramps = np.stack([-1.0 + 2.0 * ((t + shift) % 400) / 400 for shift in (0, 37, 150, 290)])
    y_hat, ok = _score_first_day(tiny_cluster, ramps)
    ok[:, 0] = False  # the last value needs a point before
    err = np.abs(ramps - y_hat)
    err_last = np.abs(np.diff(ramps, axis=1, prepend=np.nan))
    ratio = np.array([err[i][ok[i]].mean() / err_last[i][ok[i]].mean() for i in range(len(ramps))])
    assert ok.sum(axis=1).min() > 1000  # scored from its K support points on
    assert (ratio < 1.2).all(), ratio  # before: 2.0


def test_a_day_unlike_the_recent_week_does_not_follow_an_outage(tiny_cluster):
    # the day's points are evidence for the choice, but each counts at most the band's half-width:
    # six hours far below the normal range must not make the uncleaned lags win after one point
    clean = seasonal_panel(40, 24 * 21, seed=5)
    low = clean[:, : 20 * 24].min(axis=1) - 6 * np.std(np.diff(clean[:, : 20 * 24], axis=1), axis=1)
    outage = clean.copy()
    outage[:, 20 * 24 + 8 : 20 * 24 + 14] = low[:, None]
    values, indptr = to_buffer(outage)
    out = score_tasks(
        tiny_cluster, values, indptr, np.arange(40), np.full(40, 20 * 24), n_query=24, threshold=3.5, batch_size=64
    )
    assert out.is_anomaly[:, 8:12].mean() >= 0.9  # measured 1, 1, 0.975, 0.95 (following it: 0.35, 0.15 at 10, 11)
