import numpy as np
import pytest
from synth import seasonal_panel, tiny_cluster, to_buffer  # noqa: F401 (fixture)

from maml_anomaly.core.scoring import score_tasks, shift_accepted_after
from maml_anomaly.core.stuck import run_depth, stuck_log_p

THRESHOLD = 3.0  # the default
LOG_P_AT_THRESHOLD = np.log(0.0027)  # two-sided p of a 3-sigma point


def _score(cluster, matrix, day):
    values, indptr = to_buffer(matrix)
    rows = np.arange(matrix.shape[0])
    first = np.full(rows.size, day * 24)
    return score_tasks(cluster, values, indptr, rows, first, n_query=24, threshold=THRESHOLD, batch_size=64)


def test_run_depth_counts_repeats_and_breaks_at_gaps():
    v = np.array([[1.0, 2.0, 2.0, 2.0, np.nan, 2.0, 2.0, 3.0]])
    assert run_depth(v, np.array([1e-9])).tolist() == [[0, 0, 1, 2, -1, 0, 1, 0]]


def test_an_eight_hour_flat_line_is_flagged(tiny_cluster):
    """The value at 08:00 held until 16:00 inside the normal range: each point is close to a
    forecast that follows the last value, so the residual alone missed it."""
    clean = seasonal_panel(40, 24 * 21, seed=5)
    flat = clean.copy()
    start = 20 * 24 + 8
    flat[:, start : start + 8] = clean[:, start : start + 1]
    out = _score(tiny_cluster, flat, 20)
    n = shift_accepted_after(24)  # flagged for that many points, then the flat line is the new state
    assert (out.is_anomaly[:, 9:16].sum(axis=1) >= n).mean() >= 0.95  # p 0.0023 x 2 at its 2nd repeat: from its 4th
    ok = _score(tiny_cluster, clean, 20)
    assert ok.is_anomaly[:, 9:16].mean() < 0.05


def _step_like(rng, n_series, length, heavy):
    """Telemetry of the MSL kind: a few levels, constant runs, sudden jumps. Run lengths are
    heavy-tailed (Pareto 1.5, as MSL's channels: a run many times the typical one is normal)
    or geometric (mean 8)."""
    out = np.empty((n_series, length))
    for i in range(n_series):
        runs = (rng.pareto(1.5, length) * 6 + 1 if heavy else rng.geometric(1 / 8, length)).astype(int)
        levels = rng.choice(rng.normal(size=5), runs.size)
        out[i] = np.repeat(levels, runs)[:length]
    return out


@pytest.mark.parametrize("heavy", [True, False])
def test_normal_constant_runs_of_a_step_like_series_are_not_flagged(heavy):
    rng = np.random.default_rng(3)
    x = _step_like(rng, 200, 24 * 30, heavy)
    log_p = stuck_log_p(x, 24, np.ones(200))  # the last day against the 29 before it
    assert (log_p <= LOG_P_AT_THRESHOLD).mean() < 0.005


def test_a_step_like_series_frozen_far_longer_than_its_runs_is_flagged():
    """Five-minute telemetry (a day is 288 points) with runs of about 8 points (the longest of a
    week about 55) frozen from 07:00 on: flagged once the flat line is far longer than its runs."""
    rng = np.random.default_rng(4)
    x = _step_like(rng, 100, 288 * 8, heavy=False)
    x[:, -204:] = x[:, -205:-204]
    log_p = stuck_log_p(x, 288, np.ones(100))
    assert (log_p[:, -1] <= LOG_P_AT_THRESHOLD).mean() > 0.9
    assert (log_p[:, -200] <= LOG_P_AT_THRESHOLD).mean() < 0.1  # its first minutes look like any run


def test_a_series_that_moves_gets_no_stuck_score():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 241))
    assert (stuck_log_p(x, 24, np.ones(50)) == 0.0).all()


def test_a_constant_series_is_not_stuck():
    x = np.zeros((3, 241))
    x[1, :] = 7.0
    x[2] = np.arange(241.0)
    x[2, 225:] = x[2, 224]  # moved, then froze at 08:00 of the scored day: that one is stuck
    log_p = stuck_log_p(x, 24, np.ones(3))
    assert (log_p[:2] == 0.0).all() and (log_p[2, 10:] < LOG_P_AT_THRESHOLD).all()
