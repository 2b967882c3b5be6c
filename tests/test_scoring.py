import numpy as np
import pytest
from scipy import stats
from scipy.special import ndtr, ndtri
from synth import seasonal_panel, tiny_cluster, to_buffer  # noqa: F401 (fixture)

from maml_anomaly.core.scoring import (
    Calibration,
    fit_calibration,
    p_to_score,
    score_tasks,
    score_to_p,
    shift_accepted_after,
)

THRESHOLD = 3.5


def test_calibration_of_gaussian_residuals_gives_gaussian_scores():
    u = np.abs(ndtri(np.linspace(0.00005, 0.99995, 20001)))  # |N(0, 1)| quantiles
    cal = fit_calibration(u, scale_floor=0.05)
    p = cal.tail_probability(np.array([0.0, 1.0, 1.5, 1.9]))
    np.testing.assert_allclose(p, [1.0, 0.3173, 0.1336, 0.0574], rtol=0.05)
    np.testing.assert_allclose(p_to_score(p)[1:], [1.0, 1.5, 1.9], atol=0.05)
    # beyond the stored quantiles (down to 0.001) a power law extrapolates: heavier than the
    # Gaussian far out (fewer flags on light tails), close at the default threshold
    far = cal.tail_probability(np.array([3.0, 4.0, 6.0]))
    gauss = 2 * ndtr(-np.array([3.0, 4.0, 6.0]))
    assert far[0] == pytest.approx(gauss[0], rel=0.2)
    assert np.all(far[1:] >= gauss[1:]) and np.all(far[1:] < [1e-3, 1e-4])


def test_calibration_of_gaussian_residuals_is_close_at_the_default_threshold():
    u = np.abs(ndtri(np.linspace(0.00005, 0.99995, 20001)))
    p3 = fit_calibration(u, scale_floor=0.05).tail_probability(np.array([3.0]))[0]
    assert 0.0027 / 1.5 <= p3 <= 1.5 * 0.0027  # the stated rate of threshold 3, within 1.5x


def test_calibration_tail_capped_when_a_few_series_blow_up():
    rng = np.random.default_rng(1)
    normal = np.abs(rng.normal(size=18000))
    flat = np.abs(rng.normal(size=2000)) * 1e6  # 10% of residuals from series whose scale collapsed
    cal = fit_calibration(np.concatenate([normal, flat]), scale_floor=0.05)
    assert cal.levels[-1] == 0.001 and cal.quantiles[-1] < 20.0  # the 0.1% quantile, not 1e6
    assert (
        p_to_score(cal.tail_probability(np.array([10.0])))[0] > 3.0
    )  # a 10-sigma point is still flagged (uncapped: 1.2)
    gaussian = fit_calibration(normal, scale_floor=0.05)
    sampled = np.quantile(normal, 1 - np.asarray(gaussian.levels))
    assert gaussian.quantiles == pytest.approx(  # a Gaussian tail is well below the cap: untouched
        np.maximum(sampled, -ndtri(np.asarray(gaussian.levels) / 2)), rel=1e-6
    )  # (up to the floor)
    assert gaussian.quantiles == pytest.approx(sampled, rel=0.05)


def test_calibration_of_mostly_exact_residuals_never_scores_above_u():
    # a cluster of flat series with rare spikes: most held-out residuals are exactly 0; the
    # quantiles used to collapse to 0 and every clean point that moved at all scored ~18
    rng = np.random.default_rng(2)
    u = np.concatenate([np.zeros(9000), np.abs(rng.normal(size=1000))])
    cal = fit_calibration(u, scale_floor=0.05)
    grid = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 10.0])
    assert np.all(p_to_score(cal.tail_probability(grid)) <= grid + 0.05)  # (log p interpolated linearly)
    assert p_to_score(cal.tail_probability(np.array([10.0])))[0] > 4.0  # a 10-sigma move still flags


def test_tail_probability_monotone_and_quantile_inverts_it():
    rng = np.random.default_rng(0)
    cal = fit_calibration(np.abs(rng.standard_t(3, 5000)), scale_floor=0.05)
    u = np.linspace(0, 50, 2001)
    p = cal.tail_probability(u)
    assert np.all(np.diff(p) <= 0) and p[0] == 1.0
    assert 1.0 <= p[-1] / (2 * stats.t.sf(50, 3)) <= 3.0  # a power law: close to the t's tail, not lighter
    for q in [0.7, 0.2, 0.01, 1e-3, 1e-6]:
        assert cal.tail_probability(np.array([cal.quantile(q)]))[0] == pytest.approx(q, rel=1e-6)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_score_to_p_round_trip():
    assert p_to_score(np.array([score_to_p(3.5)]))[0] == pytest.approx(3.5)


def _score(cluster, matrix, days, threshold=THRESHOLD):
    values, indptr = to_buffer(matrix)
    s = matrix.shape[0]
    rows = np.repeat(np.arange(s), len(days))
    first = np.tile(np.asarray(days) * 24, s)
    return score_tasks(cluster, values, indptr, rows, first, n_query=24, threshold=threshold, batch_size=64)


def test_clean_noise_rarely_flagged_and_spike_flagged(tiny_cluster):
    clean = seasonal_panel(40, 24 * 21, seed=5)  # series the cluster never saw
    out = _score(tiny_cluster, clean, range(14, 21))
    assert out.enough_history.all()
    assert np.mean(out.is_anomaly) < 0.005
    spiked = clean.copy()
    spread = np.std(np.diff(clean[:, : 20 * 24], axis=1), axis=1)
    spiked[:, 20 * 24 + 10] += 8 * spread  # an 8-sigma spike at 10:00 of the last day, every series
    out = _score(tiny_cluster, spiked, [20])
    assert out.is_anomaly[:, 10].mean() >= 0.9
    assert out.score[:, 10].mean() > out.score[:, :10].mean() + 3


def test_flags_match_band(tiny_cluster):
    matrix = seasonal_panel(20, 24 * 21, seed=6)
    matrix[:, 20 * 24 + 5] *= 1.5
    out = _score(tiny_cluster, matrix, [20])
    y = matrix[:, 20 * 24 :]
    outside = (y < out.lower) | (y > out.upper)
    assert out.is_anomaly.any()
    np.testing.assert_array_equal(out.is_anomaly, outside)


def test_scores_are_scale_invariant(tiny_cluster):
    matrix = seasonal_panel(10, 24 * 21, seed=7)
    a, b = _score(tiny_cluster, matrix, [19, 20]), _score(tiny_cluster, matrix * 1e5, [19, 20])
    np.testing.assert_allclose(a.score, b.score, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.y_hat * 1e5, b.y_hat, rtol=1e-5)


def test_missing_points_and_short_history(tiny_cluster):
    matrix = seasonal_panel(4, 24 * 21, seed=8)
    matrix[0, 20 * 24 + 3] = np.nan  # a missing point of the day
    matrix[1, : 20 * 24] = np.nan  # no history before the day at all
    out = _score(tiny_cluster, matrix, [20])
    assert np.isnan(out.score[0, 3]) and not out.is_anomaly[0, 3] and np.isfinite(out.y_hat[0, 3])
    np.testing.assert_array_equal(out.enough_history, [True, False, True, True])
    # a task starting at grid position 5 has almost no support points
    values, indptr = to_buffer(matrix)
    short = score_tasks(tiny_cluster, values, indptr, np.array([2]), np.array([5]), n_query=24, threshold=THRESHOLD)
    assert not short.enough_history[0]


def test_deterministic_and_chunking_does_not_change_results(tiny_cluster):
    matrix = seasonal_panel(30, 24 * 21, seed=9)
    values, indptr = to_buffer(matrix)
    rows, first = np.arange(30), np.full(30, 20 * 24)
    kw = dict(n_query=24, threshold=THRESHOLD)
    a = score_tasks(tiny_cluster, values, indptr, rows, first, batch_size=7, **kw)
    b = score_tasks(tiny_cluster, values, indptr, rows, first, batch_size=7, **kw)
    c = score_tasks(tiny_cluster, values, indptr, rows, first, batch_size=30, **kw)
    assert a.score.tobytes() == b.score.tobytes() and a.y_hat.tobytes() == b.y_hat.tobytes()
    np.testing.assert_allclose(a.score, c.score, rtol=1e-4, atol=1e-4)


def test_a_spike_does_not_flag_the_normal_points_after_it(tiny_cluster):
    clean = seasonal_panel(40, 24 * 21, seed=5)
    spiked = clean.copy()
    spread = np.std(np.diff(clean[:, : 20 * 24], axis=1), axis=1)
    spiked[:, 20 * 24 + 10] += 8 * spread  # the spike is read as lag 1..6 by the next six forecasts
    out = _score(tiny_cluster, spiked, [20])
    assert out.is_anomaly[:, 10].mean() >= 0.9
    assert out.is_anomaly[:, 11:17].mean() < 0.05  # echoes: 16% of these were flagged before the fix


def test_a_lasting_outage_stays_flagged(tiny_cluster):
    clean = seasonal_panel(40, 24 * 21, seed=5)
    out_day = clean.copy()
    low = clean[:, : 20 * 24].min(axis=1) - 6 * np.std(np.diff(clean[:, : 20 * 24], axis=1), axis=1)
    out_day[:, 20 * 24 + 8 : 20 * 24 + 14] = low[:, None]  # six hours far below the normal range
    out = _score(tiny_cluster, out_day, [20])
    n = shift_accepted_after(24)  # 3 hourly points, then the observed values enter the lags again
    assert out.is_anomaly[:, 8 : 8 + n].mean() >= 0.9  # not absorbed by the last-value reference
    # then the flat line is the new level; the return to the cycle at 14:00 is a change again
    # (measured: flagged share 1, 1, 1, 1, 0.18, 0.08 during the outage, 1.0 at its end)
    assert out.is_anomaly[:, 14].mean() >= 0.9


def test_a_level_shift_is_flagged_at_its_start_then_taken_as_the_new_level(tiny_cluster):
    clean = seasonal_panel(40, 24 * 21, seed=5)
    shifted = clean.copy()
    jump = 8 * np.std(np.diff(clean[:, : 20 * 24], axis=1), axis=1)
    shifted[:, 20 * 24 + 6 :] += jump[:, None]  # from 06:00 on, the same cycle a level higher
    out = _score(tiny_cluster, shifted, [20])
    assert out.is_anomaly[:, 6].mean() >= 0.9
    # once the recent lags hold the new level it is no alarm (before: flagged all day)
    assert out.is_anomaly[:, 6 + shift_accepted_after(24) + 6 :].mean() < 0.1


def test_an_outage_just_before_the_cleaned_points_does_not_lock_them_onto_it(tiny_cluster):
    # the points before the day that the lags read (49 here) are cleaned in time order; their
    # first forecasts read older, uncleaned lags. Ending an outage just before them once locked
    # the cleaned history onto the outage's level, and the next day was flagged all over.
    clean = seasonal_panel(40, 24 * 21, seed=5)
    out = clean.copy()
    first_cleaned = 20 * 24 - tiny_cluster.spec.max_lag
    out[:, first_cleaned - 6 : first_cleaned] = 0.0
    flagged = _score(tiny_cluster, out, [20]).is_anomaly.mean()
    assert flagged < 0.02, flagged  # without the rule: 7.8% of the day's points


def _step_panel(n_series, n_points, mean_run, seed):
    """Telemetry-like series: a few levels, held for geometric runs of ``mean_run`` points, small noise."""
    rng = np.random.default_rng(seed)
    change = rng.random((n_series, n_points)) < 1.0 / mean_run
    out = np.where(np.cumsum(change, axis=1) % 2 == 0, -1.0, 1.0)  # two levels, as many channels have
    return out + rng.normal(0, 0.005, out.shape)


def _stale_runs(out, y, jump):
    """Longest run of points per series whose forecast is off by more than half a level change."""
    off = np.abs(out.y_hat - y) > 0.5 * jump
    longest = np.zeros(off.shape[0], dtype=int)
    run = np.zeros(off.shape[0], dtype=int)
    for j in range(off.shape[1]):
        run = np.where(off[:, j], run + 1, 0)
        longest = np.maximum(longest, run)
    return longest


def test_step_like_series_with_frequent_level_changes_keep_the_observed_level(tiny_cluster):
    # 1-minute telemetry jumps between a few levels; holding flagged points out of the lags kept its
    # forecasts on the old level for an hour after each change
    panel = _step_panel(20, 24 * 21, 8, seed=11)
    out = _score(tiny_cluster, panel, range(17, 21))
    y = panel[:, 17 * 24 : 21 * 24].reshape(-1, 24)  # tasks are (series, day), series first
    prev = panel[:, 17 * 24 - 1 : 21 * 24 - 1].reshape(-1, 24)
    settled = np.abs(y - prev) < 0.1  # the level held since the point before
    off = np.abs(out.y_hat - y) > 1.0  # forecast off by half a level change
    assert off[settled].mean() < 0.01, off[settled].mean()  # only the jumps themselves are missed
    assert out.is_anomaly.mean() < 0.01  # changes this series makes every few points are no anomaly


def test_a_rare_level_change_is_flagged_and_the_forecast_follows_within_a_bounded_number_of_points(tiny_cluster):
    panel = _step_panel(20, 24 * 21, 10**9, seed=12)  # one level all along ...
    day = 20 * 24
    panel[:, day + 5 : day + 9] += 1.5  # ... then a change that does not last (4 points)
    panel[:, day + 14 :] += 1.5  # and one that does
    out = _score(tiny_cluster, panel, [20])
    assert out.is_anomaly[:, 5].mean() >= 0.9 and out.is_anomaly[:, 14].mean() >= 0.9  # level shifts flagged
    bound = 2 * shift_accepted_after(24) + 1  # the lags are held off the observed values at most this long
    assert _stale_runs(out, panel[:, day : day + 24], 1.5).max() <= bound
    assert out.is_anomaly[:, 14 + bound :].mean() < 0.05  # the new level is no alarm
