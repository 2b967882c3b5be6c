import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maml_anomaly.benchmarks.periods import make_groups
from maml_anomaly.core.periodicity import PeriodResult, calendar_periods, cycle_profiles, detect_periods

HOUR, DAY = 3600.0, 86400.0


def test_calendar_periods_per_step():
    assert calendar_periods(3600) == [24, 168]
    assert calendar_periods(86400)[:1] == [7] and 365 in calendar_periods(86400)
    assert calendar_periods(300) == [288, 2016]
    assert calendar_periods(900) == [96, 672]
    assert calendar_periods(60)[:2] == [60, 1440]
    assert calendar_periods(365.25 * 86400 / 12) == [12]
    assert calendar_periods(0) == [] and calendar_periods(float("nan")) == []


def test_generated_series_known_periods():
    """Fixed seed: exact period on >= 97% of clearly periodic series, <= 5% false periods."""
    groups = make_groups(60, seed=7)
    n_clear = ok = n_none = fp = 0
    for g in groups:
        got = detect_periods(g.matrix, g.step_seconds).period
        if g.period[0]:
            n_clear += int(g.clear.sum())
            ok += int((got[g.clear] == g.period[g.clear]).sum())
        else:
            n_none += got.size
            fp += int((got > 0).sum())
    assert n_clear > 200 and n_none > 150
    assert ok / n_clear >= 0.97, (ok, n_clear)
    assert fp / n_none <= 0.05, (fp, n_none)


def _hourly(profile_fn, T=24 * 28, S=20, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    return profile_fn(t)[None, :] + noise * rng.normal(size=(S, T))


def test_harmonics_are_resolved():
    daily = _hourly(lambda t: np.sin(2 * np.pi * t / 24))
    res = detect_periods(daily, HOUR)
    assert (res.period == 24).all()
    half_day = _hourly(lambda t: np.sin(2 * np.pi * t / 12))
    assert (detect_periods(half_day, HOUR).period == 12).all()
    weekend = np.where((np.arange(24 * 28) // 24) % 7 >= 5, 0.2, 1.0)
    weekly = _hourly(lambda t: weekend[t] * (1.5 + np.sin(2 * np.pi * t / 24)))
    res = detect_periods(weekly, HOUR)
    assert (res.period == 168).all()
    assert (res.second_period == 24).all()


def test_missing_values_outliers_and_trend():
    x = _hourly(lambda t: np.sin(2 * np.pi * t / 24) + 0.01 * t, S=30, seed=1)
    rng = np.random.default_rng(1)
    x[rng.uniform(size=x.shape) < 0.1] = np.nan
    x[rng.uniform(size=x.shape) < 0.01] = 50.0
    x[:10, :300] = np.nan  # left-padded shorter series
    assert (detect_periods(x, HOUR).period == 24).all()


def test_degenerate_rows_get_no_period():
    x = np.full((5, 100), np.nan)
    x[1] = 3.0  # constant
    x[2, -5:] = np.arange(5.0)  # too short
    x[3, -40:] = np.sin(2 * np.pi * np.arange(40) / 24)  # < 2 cycles of 24
    x[4] = np.random.default_rng(0).normal(size=100)  # noise
    res = detect_periods(x, HOUR)
    assert isinstance(res, PeriodResult)
    assert res.period.dtype == np.int64 and res.second_period.dtype == np.int64
    assert (res.period[:4] == 0).all()
    assert ((res.strength >= 0) & (res.strength <= 1)).all()
    assert detect_periods(np.zeros((0, 50)), HOUR).period.shape == (0,)


def test_chunking_does_not_change_results():
    g = make_groups(8, seed=3)[0]
    a = detect_periods(g.matrix, g.step_seconds)
    b = detect_periods(g.matrix, g.step_seconds, chunk_size=3)
    np.testing.assert_array_equal(a.period, b.period)
    np.testing.assert_allclose(a.strength, b.strength, rtol=1e-5, atol=1e-6)


def test_daily_weekly_and_max_period():
    t = np.arange(56)
    x = np.sin(2 * np.pi * t / 7)[None] + 0.2 * np.random.default_rng(2).normal(size=(10, 56))
    assert (detect_periods(x, DAY).period == 7).all()
    assert (detect_periods(x, DAY, max_period=5).period == 0).all()


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 1e6), offset=st.floats(-1e6, 1e6), seed=st.integers(0, 10_000))
def test_period_is_invariant_to_scale_and_offset(scale, offset, seed):
    x = _hourly(lambda t: np.sin(2 * np.pi * t / 24), T=24 * 10, S=4, seed=seed, noise=0.5)
    a = detect_periods(x, HOUR).period
    b = detect_periods(x * scale + offset, HOUR).period
    np.testing.assert_array_equal(a, b)


def test_cycle_profiles_shape_and_bins():
    x = _hourly(lambda t: np.sin(2 * np.pi * t / 24), S=3)
    prof = cycle_profiles(x, 24)
    assert prof.shape == (3, 24)
    np.testing.assert_allclose(prof.std(1), 1.0, rtol=1e-4)
    assert cycle_profiles(x, 168, bins=48).shape == (3, 48)


def test_flat_series_spikes_and_perfect_cycles():
    t = np.arange(24 * 28)
    spiky = np.zeros((3, t.size))  # zero but for a busy hour, no noise
    spiky[:, t % 24 == 9], spiky[:, t % 24 == 10] = 5.0, 3.0
    assert (detect_periods(spiky, HOUR).period == 24).all()
    const = np.ones((3, t.size))  # a constant with one spike: no cycle
    const[:, 100] = 1000.0
    assert (detect_periods(const, HOUR).period == 0).all()
    rng = np.random.default_rng(4)
    rare = np.zeros((200, t.size))  # rare random events: no cycle,
    np.put_along_axis(rare, rng.integers(0, t.size, (200, 5)), 7.0, 1)
    assert (detect_periods(rare, HOUR).period > 0).mean() <= 0.05  # but for coincidences


def _weekday_weekend(weeks: int, step: float, S: int = 60, seed: int = 3, half_hourly: bool = False):
    """Daily sine of random phase and amplitude a; weekend days lower by ``step`` x a; noise 0.3 a."""
    rng = np.random.default_rng(seed)
    per_day = 48 if half_hourly else 24
    T = 7 * per_day * weeks
    t = np.arange(T)
    weekend = ((t // per_day) % 7 >= 5).astype(float)
    rows = []
    for _ in range(S):
        a = rng.uniform(1, 3)
        daily = a * np.sin(2 * np.pi * (t % per_day - rng.uniform(0, per_day)) / per_day)
        rows.append(100 + daily - step * a * weekend + rng.normal(0, 0.3 * a, T))
    return np.array(rows)


@pytest.mark.parametrize("weeks", [4, 6])
def test_weekday_weekend_step_gets_the_weekly_period(weeks):
    """A weekend level half the daily amplitude below the weekdays: the daily fold's levels absorb
    the step, so only a comparison inside the weekly fold sees it (the old rule gave 24 to all)."""
    got = detect_periods(_weekday_weekend(weeks, 0.5), HOUR)
    assert (got.period == 168).mean() >= 0.95, np.unique(got.period, return_counts=True)
    assert (got.second_period[got.period == 168] == 24).all()
    half = detect_periods(_weekday_weekend(weeks, 0.5, half_hourly=True), 1800.0)
    assert (half.period == 336).mean() >= 0.95, np.unique(half.period, return_counts=True)


def test_a_weekly_step_too_short_to_win_is_the_second_period():
    """Two weeks do not predict held-out weekend points better than the daily profile, but the
    weekly profile is significant: the period stays daily and the week is its second period."""
    got = detect_periods(_weekday_weekend(2, 0.5), HOUR)
    assert (got.period == 24).mean() >= 0.9
    assert (got.second_period[got.period == 24] == 168).mean() >= 0.7


def test_a_daily_cycle_without_a_weekly_pattern_has_no_weekly_second_period():
    got = detect_periods(_weekday_weekend(4, 0.0), HOUR)
    assert (got.period == 24).all()
    assert not (got.second_period == 168).any()
