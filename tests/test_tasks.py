import numpy as np
import pytest

from maml_anomaly.core.tasks import (
    LagSpec,
    choose_lag_spec,
    gather_windows,
    lag_spec,
    make_windows,
    nan_median_rows,
    query_len_for_step,
    robust_centre_scale,
    sample_window_starts,
    seasonal_step,
    training_query_len,
    training_room,
    window_width,
)


def test_lag_spec_seasonal_and_recent():
    assert lag_spec(24, n_recent=3).lags == (1, 2, 3, 23, 24, 25, 48, 49)
    assert lag_spec(24, n_recent=3, history=40).lags == (1, 2, 3, 23, 24, 25)  # 2p does not fit
    assert lag_spec(0, n_recent=3).lags == (1, 2, 3, 4, 5, 6)
    assert lag_spec(2, n_recent=3).lags == (1, 2, 3, 4, 5)  # overlaps removed
    spec = lag_spec(7, n_recent=2)
    assert LagSpec.from_dict(spec.to_dict()) == spec


def test_query_len_is_one_day():
    assert query_len_for_step(3600) == 24
    assert query_len_for_step(300) == 288
    assert query_len_for_step(86400) == 1
    assert query_len_for_step(7 * 86400) == 1


def test_windows_exactly_aligned_hand_checked():
    # series 0..9 with lags (1, 3), K = 2, so max_lag 3, query = 10 - 3 - 2 = 5 points
    spec = LagSpec(period=3, lags=(1, 3))
    raw = np.arange(10, dtype=float)[None, :]  # (1, 10)
    t = make_windows(raw, spec, k_shot=2, clip=1e9)

    def back(z):
        return t.denormalise(z.astype(np.float64))[0].round(5)

    # support targets are columns 3 and 4; inputs: lag 1 (the level), lag 3 relative to lag 1
    np.testing.assert_allclose(back(t.y_support + t.base_recent), [3, 4])
    np.testing.assert_allclose(back(t.base_recent), [2, 3])  # no lag p+1: the reference is the last value
    np.testing.assert_allclose(back(t.x_support[..., 0]), [2, 3])
    np.testing.assert_allclose(t.x_support[0, :, 1] * t.scale[0], [-2, -2])  # lag 3 - lag 1
    # query targets are columns 5..9, inputs are the observed values just before them
    np.testing.assert_allclose(back(t.y_query_abs), [5, 6, 7, 8, 9])
    np.testing.assert_allclose(back(t.x_query[..., 0]), [4, 5, 6, 7, 8])
    np.testing.assert_allclose(back(t.naive_query), [2, 3, 4, 5, 6])  # seasonal naive: 3 steps back
    # normalisation from the values before the query (columns 0..4) only: median 2
    assert t.centre[0] == 2.0


def test_reference_is_last_value_plus_last_cycles_step_and_follows_a_level_shift():
    spec = LagSpec(period=4, lags=(1, 4, 5))
    cycle = np.tile([0.0, 1.0, 3.0, 1.0], 6)  # period 4
    t = make_windows(cycle[None, :], spec, k_shot=4, n_query=4, clip=1e9)
    np.testing.assert_allclose(t.denormalise(t.base_query), cycle[None, -4:])  # exact on a clean cycle
    shifted = cycle.copy()
    shifted[-6:] += 100.0  # the level jumps two points before the query
    t = make_windows(shifted[None, :], spec, k_shot=4, n_query=4, clip=10.0)
    # the reference uses the unclipped last value: it follows the new level although the inputs
    # saturate, except one period after the jump, where last cycle's step holds it: it overshoots
    # by the jump at that one point (seasonal naive would be off by the whole jump for a period)
    ref = t.denormalise(t.base_query)[0]
    np.testing.assert_allclose(ref[[0, 1, 3]], shifted[[-4, -3, -1]])
    assert ref[2] - shifted[-2] == pytest.approx(100.0)


def test_reference_follows_a_regular_jump_far_beyond_the_robust_scale():
    # flat most of the day, a jump at a fixed hour: the robust scale is tiny, the step is huge;
    # a clipped step (the second version) missed the jump every day
    spec = LagSpec(period=8, lags=(1, 8, 9))
    day = np.array([20.0, 20.0, 20.0, 20.0, 20.0, 80.0, 80.0, 20.0])
    series = np.tile(day, 6) + np.tile(np.arange(8) * 1e-3, 6)
    t = make_windows(series[None, :], spec, k_shot=8, n_query=8)
    np.testing.assert_allclose(t.denormalise(t.base_query)[0], series[-8:], atol=1e-9)
    assert np.abs(t.y_query).max() < 1e-6  # nothing left for the net to correct


def test_recent_targets_before_the_support_when_the_day_is_longer_than_k():
    # lags (1,), K = 2, Q = 4 -> R = max(K, Q) = 4 recent targets, the support is their last 2
    spec = LagSpec(period=0, lags=(1,))
    assert window_width(spec, 2, 4, n_recent=4) == 1 + 4 + 4
    assert window_width(spec, 2, 4) == 1 + 7 * 4 + 4  # scoring: a week of recent residuals
    t = make_windows(np.arange(9, dtype=float)[None, :], spec, k_shot=2, n_query=4, clip=1e9)

    def back(z):
        return t.denormalise(z.astype(np.float64))[0].round(5)

    np.testing.assert_allclose(back(t.y_recent + t.base_recent), [1, 2, 3, 4])
    np.testing.assert_allclose(back(t.y_support + t.base_recent[:, 2:]), [3, 4])
    np.testing.assert_allclose(back(t.x_support[..., 0]), [2, 3])
    np.testing.assert_allclose(back(t.y_query_abs), [5, 6, 7, 8])
    np.testing.assert_allclose(back(t.x_query[..., 0]), [4, 5, 6, 7])
    assert t.centre[0] == 2.0  # median of the values before the query: columns 0..4


def test_normalisation_scale_invariant():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(4, 40)).cumsum(axis=1) + 3.0
    raw[1, 5] = np.nan
    spec = lag_spec(5, n_recent=2)
    small, big = make_windows(raw * 0.1, spec, 8), make_windows(raw * 1e5, spec, 8)
    np.testing.assert_allclose(small.x_support, big.x_support, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small.y_query, big.y_query, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(big.scale / small.scale, 1e6)


def test_normalisation_ignores_query():
    spec = lag_spec(0, n_recent=2)
    raw = np.arange(20, dtype=float)[None, :]
    changed = raw.copy()
    changed[0, -3:] = 1e9  # a huge anomaly in the query
    a, b = make_windows(raw, spec, 5), make_windows(changed, spec, 5)
    assert a.centre[0] == b.centre[0] and a.scale[0] == b.scale[0]
    np.testing.assert_array_equal(a.x_support, b.x_support)


def test_constant_and_zero_series_do_not_divide_by_zero():
    raw = np.stack([np.full(30, 7.0), np.zeros(30)])
    t = make_windows(raw, lag_spec(0, n_recent=2), 6)
    assert np.all(np.isfinite(t.scale)) and np.all(t.scale > 0)
    assert np.all(np.isfinite(t.x_query)) and np.all(t.y_query == 0)


def test_missing_targets_weight_zero_and_inputs_imputed_causally():
    spec = LagSpec(period=0, lags=(1,))
    raw = np.array([[1.0, 2.0, np.nan, 4.0, 5.0, np.nan, 7.0]])
    t = make_windows(raw, spec, k_shot=3, clip=1e9)
    np.testing.assert_array_equal(t.w_support[0], [1, 0, 1])
    np.testing.assert_array_equal(t.w_query[0], [1, 0, 1])
    assert np.isnan(t.query_values[0, 1])
    # lag-1 input of the point after a gap carries the last observed value forward
    np.testing.assert_allclose(t.denormalise(t.x_support[..., 0])[0], [1, 2, 2])
    np.testing.assert_allclose(t.denormalise(t.x_query[..., 0])[0], [4, 5, 5])


def test_nan_median_rows():
    a = np.array([[3.0, 1.0, np.nan, 2.0], [np.nan] * 4, [4.0, 1.0, 2.0, 3.0]])
    out = nan_median_rows(a)
    assert out[0] == 2.0 and np.isnan(out[1]) and out[2] == 2.5
    c, s = robust_centre_scale(np.array([[0.0, 0.0, 0.0, 10.0]]))
    assert c[0] == 0.0 and s[0] > 0  # MAD 0 -> mean absolute deviation


def test_gather_windows_pads_outside_series():
    values = np.array([0.0, 1.0, 2.0, 10.0, 11.0])
    indptr = np.array([0, 3, 5])
    out = gather_windows(values, indptr, rows=np.array([0, 1]), starts=np.array([-1, 1]), width=3)
    np.testing.assert_array_equal(out[0], [np.nan, 0.0, 1.0])
    np.testing.assert_array_equal(out[1], [11.0, np.nan, np.nan])


def test_sample_window_starts_fit_inside():
    rng = np.random.default_rng(1)
    lengths = np.array([5, 50, 20])
    rows, starts = sample_window_starts(lengths, 10, 500, rng)
    assert set(rows.tolist()) == {1, 2}
    assert np.all(starts >= 0) and np.all(starts + 10 <= lengths[rows])
    rows, _ = sample_window_starts(lengths, 100, 5, rng)
    assert rows.size == 0


@pytest.mark.parametrize("k", [1, 4])
def test_window_too_short_raises(k):
    with pytest.raises(ValueError):
        make_windows(np.zeros((1, 5)), LagSpec(0, (1, 2, 3, 4)), k)


def test_training_query_is_a_day_between_8_and_2k_points():
    assert training_query_len(1, 24) == 8  # a daily series: the next 8 days, not one point
    assert training_query_len(24, 24) == 24  # an hourly day
    assert training_query_len(288, 24) == 48  # a 5-minute day: at most 2K
    assert training_query_len(1, 2) == 4
    assert training_query_len(1, 24, room=3) == 3  # a short history keeps its lags first
    assert training_query_len(1, 24, room=-5) == 1 and training_query_len(24, 24, room=0) == 24


def test_short_daily_histories_keep_their_weekly_lags():
    # 36 days of history (the 2M benchmark's series): the daily query of 1 decides the lags,
    # the training query takes what room is left
    spec = choose_lag_spec(7, np.full(100, 36), 21, 1)
    assert {6, 7, 8} <= set(spec.lags)
    room = training_room(spec, 21, np.full(100, 36))
    assert training_query_len(1, 21, room) == 3


def test_a_seasonal_step_far_from_the_cycle_before_needs_it_to_agree():
    last, before = np.array([5.0, -7.0, 5.0, -19.0, 1.0, -2.5]), np.array([1.0, -2.0, -1.0, 0.3, -1.5, 0.0])
    # beyond 3 units apart: the smaller where they agree in sign, else 0; closer: last cycle's
    np.testing.assert_allclose(seasonal_step(last, before), [1.0, -2.0, 0.0, 0.0, 1.0, -2.5])


def test_an_outage_edge_last_cycle_does_not_come_back_a_regular_jump_does():
    spec = LagSpec(period=8, lags=(1, 8, 9, 16, 17))
    day = np.array([20.0, 20.0, 20.0, 20.0, 20.0, 80.0, 80.0, 20.0])
    series = np.tile(day, 6) + np.tile(np.arange(8) * 1e-3, 6)
    t = make_windows(series[None, :], spec, k_shot=8, n_query=8)
    np.testing.assert_allclose(t.denormalise(t.base_query)[0], series[-8:], atol=1e-9)  # the jumps repeat: kept
    out = series.copy()
    out[-14:-11] = 0.0  # an outage at hours 2-4 of the day before the query
    t = make_windows(out[None, :], spec, k_shot=8, n_query=8)
    ref = t.denormalise(t.base_query)[0]
    assert np.all(np.abs(ref - series[-8:]) < 1.0)  # last cycle's step alone would jump by 20 at hours 2 and 5
