"""A daily and a weekly cycle: hourly series whose weekends are lower and flatter."""

import numpy as np
import pytest
from synth import TINY_SETTINGS, to_buffer

from maml_anomaly.core.scoring import score_tasks
from maml_anomaly.core.tasks import choose_lag_spec, cluster_second_period, lag_spec, make_windows, window_width

WEEKS = 6


def weekday_weekend(n_series, weeks=WEEKS, seed=0):
    """(S, T) hourly series from a Monday: daily cycle, weekends 0.5-1.5 amplitudes lower and flatter."""
    rng = np.random.default_rng(seed)
    t = np.arange(weeks * 168)
    weekend = ((t // 24) % 7 >= 5).astype(float)
    phase = rng.uniform(0, 24, (n_series, 1))
    cycle = np.sin(2 * np.pi * (t % 24 - phase) / 24) * (1 - rng.uniform(0.2, 0.6, (n_series, 1)) * weekend)
    step = rng.uniform(0.5, 1.5, (n_series, 1)) * weekend
    noise = rng.normal(0, 1, (n_series, t.size)) * rng.uniform(0.1, 0.3, (n_series, 1))
    return 10.0 ** rng.uniform(-1, 4, (n_series, 1)) * (5 + cycle - step + noise)


def test_cluster_second_period_is_bounded_and_needs_a_quarter_of_the_series():
    assert cluster_second_period(24, np.array([168] * 30 + [0] * 70), 3600) == 168
    assert cluster_second_period(24, np.array([168] * 20 + [0] * 80), 3600) == 0
    assert cluster_second_period(168, np.array([24] * 90 + [0] * 10), 3600) == 0  # a divisor: p's lags hold it
    assert cluster_second_period(7, np.array([365] * 100), 86400) == 0  # a year: never
    assert cluster_second_period(288, np.array([2016] * 100), 300) == 2016
    assert cluster_second_period(1440, np.array([10080] * 100), 60) == 0  # over MAX_SECOND_POINTS
    assert cluster_second_period(24, np.array([36] * 100), 3600) == 0  # not a multiple


def test_lags_of_both_periods_and_their_fallback():
    assert set(lag_spec(24, second=168).lags) >= {23, 24, 25, 48, 49, 167, 168, 169, 336, 337}
    spec = choose_lag_spec(24, np.full(10, 4 * 168), 24, 24, second=168)
    assert spec.second == 168 and 337 in spec.lags
    short = choose_lag_spec(24, np.full(10, 2 * 168), 24, 24, second=168)  # no room for 2s
    assert short.second == 168 and 168 in short.lags and 336 not in short.lags


def test_the_reference_follows_the_weekend_step_from_a_week_ago():
    x = weekday_weekend(40)
    spec = lag_spec(24, second=168)
    first = (WEEKS - 1) * 168 + 5 * 24  # the last Saturday
    width = window_width(spec, 24, 24)
    tasks = make_windows(x[:, first + 24 - width : first + 24], spec, 24, 24)
    assert tasks.use_second.mean() >= 0.75  # the week before holds both transitions (measured 0.8)
    daily = make_windows(x[:, first + 24 - width : first + 24], lag_spec(24), 24, 24)
    # Saturday 00:00: a week ago's step foresees the drop, yesterday's cannot
    err_week = np.abs(tasks.query_values[:, 0] - tasks.base_query[:, 0])
    err_day = np.abs(daily.query_values[:, 0] - daily.base_query[:, 0])
    assert np.median(err_week) < 0.5 * np.median(err_day)


@pytest.fixture(scope="module")
def weekly_models():
    import torch

    from maml_anomaly.core.training import TrainSettings, train_cluster

    torch.set_num_threads(1)
    train = weekday_weekend(60, WEEKS - 1, seed=1)
    values, indptr = to_buffer(train)
    settings = TrainSettings(**TINY_SETTINGS)
    with_week = train_cluster(values, indptr, np.arange(60), lag_spec(24, second=168), 24, settings)
    daily_only = train_cluster(values, indptr, np.arange(60), lag_spec(24), 24, settings)
    return with_week, daily_only


def test_the_scored_weeks_weekend_steps_are_not_flagged(weekly_models):
    with_week, daily_only = weekly_models
    x = weekday_weekend(40, seed=2)  # series the models never saw
    values, indptr = to_buffer(x)
    rows = np.repeat(np.arange(40), 7)
    first = np.tile((WEEKS - 1) * 168 + 24 * np.arange(7), 40)
    transition = np.zeros((40 * 7, 24), bool)
    transition[(np.arange(40 * 7) % 7 == 0) | (np.arange(40 * 7) % 7 == 5), :6] = True  # Mon, Sat 00-05
    rates = {}
    for name, model in (("week", with_week), ("day", daily_only)):
        out = score_tasks(model, values, indptr, rows, first, n_query=24, threshold=3.0, batch_size=64)
        rates[name] = out.is_anomaly[transition].mean(), out.is_anomaly[~transition].mean()
    assert rates["week"][0] < 0.02, rates  # the weekend step is expected
    assert rates["week"][1] < 0.01, rates
    assert rates["day"][0] > 2 * rates["week"][0], rates  # without the week it was flagged
