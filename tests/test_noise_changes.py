"""Series whose noise changes: flagged where the rise starts, then judged by the day's own noise; spikes
still flagged; clean series keep the calibration's false-alarm rate."""

import numpy as np
from synth import seasonal_panel, tiny_cluster, to_buffer  # noqa: F401 (fixture)

from maml_anomaly.core.residual_scales import NOISE_JUMP, TRAILING_POINTS, day_scale, trailing_scale, with_day_floor
from maml_anomaly.core.scoring import score_tasks

THRESHOLD = 3.5
DAY = 20  # the scored day of the 21-day hourly panels


def _score(cluster, matrix):
    values, indptr = to_buffer(matrix)
    rows = np.arange(matrix.shape[0])
    first = np.full(rows.size, DAY * 24)
    return score_tasks(cluster, values, indptr, rows, first, n_query=24, threshold=THRESHOLD, batch_size=64)


def _louder_on_the_scored_day(factor, seed=11):
    """(panel, spread): clean seasonal series whose noise is ``factor`` times louder on the scored day."""
    clean = seasonal_panel(40, 24 * 21, seed=seed)
    spread = np.std(np.diff(clean[:, : DAY * 24], axis=1), axis=1)  # (S,) the series' step noise before
    extra = np.random.default_rng(seed).normal(0.0, 1.0, (clean.shape[0], 24)) * factor * spread[:, None]
    louder = clean.copy()
    louder[:, DAY * 24 :] += extra
    return louder, spread


def test_trailing_scale_keeps_the_recent_scale_unless_the_noise_more_than_doubles():
    rng = np.random.default_rng(0)
    quiet = np.abs(rng.normal(0.0, 1.0, (200, TRAILING_POINTS + 24)))
    denom = np.ones(200)
    np.testing.assert_array_equal(trailing_scale(quiet, denom), 1.0)  # a clean series keeps its scale
    loud = quiet.copy()
    loud[:, TRAILING_POINTS:] *= 10.0  # tenfold from the first scored point on
    scale = trailing_scale(loud, denom)
    assert (scale[:, -1] > NOISE_JUMP).all()  # a day later the scale is the new noise's
    np.testing.assert_allclose(np.median(scale[:, -1]), 10.0, rtol=0.2)


def test_a_series_whose_noise_rises_tenfold_is_flagged_at_its_start_not_all_day(tiny_cluster):
    louder, _ = _louder_on_the_scored_day(10.0)
    out = _score(tiny_cluster, louder)
    assert out.enough_history.all()
    assert out.is_anomaly[:, :3].mean() >= 0.5  # the rise is found where it starts
    assert out.is_anomaly[:, 8:].mean() < 0.02  # then the day's own noise is the state (the trailing
    assert out.is_anomaly.mean() < 0.2  # scale alone needed half the day: a third of its points flagged)


def test_a_spike_on_a_louder_day_is_still_flagged(tiny_cluster):
    louder, spread = _louder_on_the_scored_day(10.0)
    spiked = louder.copy()
    spiked[:, DAY * 24 + 18] += 10.0 * 10.0 * spread  # ten times the day's new step noise, at 18:00
    out = _score(tiny_cluster, spiked)
    base = _score(tiny_cluster, louder)
    assert out.is_anomaly[:, 18].mean() >= 0.9
    assert out.score[:, 18].mean() > base.score[:, 18].mean() + 3


def test_clean_series_keep_the_calibrations_false_alarm_rate(tiny_cluster):
    clean, _ = _louder_on_the_scored_day(0.0)  # the same noise all along
    out = _score(tiny_cluster, clean)
    assert out.is_anomaly.mean() < 0.01


def test_the_day_floor_waits_for_the_flags_and_ignores_a_minority_of_anomalies():
    rng = np.random.default_rng(1)
    day = np.abs(rng.normal(0.0, 10.0, (50, 24)))  # tenfold the recent scale of 1
    day[:, :3] = 1e6  # a held change's few huge residuals barely move the median
    np.testing.assert_allclose(np.median(day_scale(day)), 10.0, rtol=0.3)
    flagged = np.zeros((50, 24), dtype=bool)
    flagged[:, [2, 4, 6]] = True
    scale = with_day_floor(np.ones((50, 24)), day, np.ones(50), flagged, accept_after=3)
    np.testing.assert_array_equal(scale[:, :7], 1.0)  # before the third flag: the recent scale
    assert (scale[:, 7:] > NOISE_JUMP).all()  # after it: the day's own
    quiet = np.abs(rng.normal(0.0, 1.0, (50, 24)))
    np.testing.assert_array_equal(with_day_floor(np.ones((50, 24)), quiet, np.ones(50), flagged, 3), 1.0)
    assert (day_scale(np.zeros((2, 24))) == 0).all() and (day_scale(day[:, :7]) == 0).all()  # flat; too few
