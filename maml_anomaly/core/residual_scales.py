"""Residual scales: the robust scale of a series' recent residuals, the trailing scale where its
noise rose, and the series' own routine tail (what it does routinely is no anomaly)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maml_anomaly.core.adaptation import Forecasts
from maml_anomaly.core.calibration import Calibration
from maml_anomaly.core.tasks import MAD_TO_SD, MEAN_AD_TO_SD, Tasks, nan_median_rows


def residual_scale(abs_resid: np.ndarray) -> np.ndarray:
    """Robust scale of each row of |residuals| (B, R): 1.4826 x median, or when more than half are
    exactly 0 (a quantised or mostly flat series) 1.2533 x their mean; NaN for a row without any."""
    mad = nan_median_rows(abs_resid) * MAD_TO_SD
    n = np.isfinite(abs_resid).sum(axis=1)
    mean = np.where(n > 0, np.nansum(abs_resid, axis=1) / np.maximum(n, 1), np.nan) * MEAN_AD_TO_SD
    return np.where(mad > 0, mad, mean)


TRAILING_POINTS = 24  # residuals of the trailing scale (a day of hourly residuals: about 25% error)
NOISE_JUMP = 2.0  # the trailing scale counts where it exceeds the recent window's by more than this


def trailing_scale(abs_dev: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """(B, n) the residual scale of each of n points: the recent window's ``denom`` (B,), or where
    the :data:`TRAILING_POINTS` residuals just before the point show a scale more than
    :data:`NOISE_JUMP` times larger, that scale.

    ``abs_dev`` (B, L + n): |residuals|, the L = TRAILING_POINTS before the first point first. A
    series whose noise grows within the day (telemetry whose noise rose tenfold when its test part
    began: 12% of its clean points flagged, most of the benchmark's false alarms) is judged by
    its current noise after a few points instead of by last week's; a clean series' trailing
    scale almost never doubles, so its scores do not change.
    """
    n = abs_dev.shape[1] - TRAILING_POINTS
    win = np.lib.stride_tricks.sliding_window_view(abs_dev[:, :-1], TRAILING_POINTS, axis=1)  # (B, n, L)
    trail = residual_scale(win.reshape(-1, TRAILING_POINTS)).reshape(-1, n)  # (B, n)
    trail = np.nan_to_num(trail, nan=0.0)
    return np.where(trail > NOISE_JUMP * denom[:, None], trail, denom[:, None])


MIN_DAY_RESIDUALS = 8  # the day's scale needs this many residuals: a held change (3 points) is then under half


def day_scale(abs_dev: np.ndarray) -> np.ndarray:
    """(B,) robust scale of each row of the scored day's |residuals| (B, n): 1.4826 x their median,
    0 where fewer than :data:`MIN_DAY_RESIDUALS` are observed or more than half are exactly 0 (a
    flat or few-valued day is no noisy day: its mean would be the anomalies' own)."""
    n = np.isfinite(abs_dev).sum(axis=1)
    with np.errstate(invalid="ignore"):
        mad = np.nan_to_num(nan_median_rows(abs_dev) * MAD_TO_SD, nan=0.0)
    return np.where(n >= MIN_DAY_RESIDUALS, mad, 0.0)


def with_day_floor(
    point_scale: np.ndarray, abs_dev: np.ndarray, denom: np.ndarray, flagged: np.ndarray, accept_after: int
) -> np.ndarray:
    """(B, n) ``point_scale`` floored by the scored day's own scale (:func:`day_scale` of
    ``abs_dev``, the day's |residuals| (B, n)) where that exceeds the recent window's ``denom``
    (B,) by more than :data:`NOISE_JUMP`, from the point after ``accept_after`` points of the day
    were ``flagged`` (B, n) on.

    A daily job scores a day once it is complete, so the day's spread is known: a series whose
    noise rose tenfold at midnight had the first half of its hourly day flagged before the
    trailing scale caught up. Like a level shift, the rise is flagged at its start (the event is
    found), then it is the new state. The median ignores anomalies under half of the day's points;
    a clean series' day scale almost never doubles, so its scores and the calibration's promise hold.
    """
    day = day_scale(abs_dev)
    floor = np.where(day > NOISE_JUMP * denom, day, 0.0)  # (B,)
    started = np.cumsum(flagged, axis=1) - flagged >= accept_after  # (B, n) flags strictly before
    return np.where(started, np.maximum(point_scale, floor[:, None]), point_scale)


def normalised_residuals(tasks: Tasks, forecasts: Forecasts, scale_floor: float) -> np.ndarray:
    """u = (observed - forecast) / max(residual scale, floor), normalised units, NaN where missing."""
    denom = np.maximum(np.nan_to_num(forecasts.resid_scale, nan=np.inf), scale_floor)  # (B,)
    return (tasks.query_values - forecasts.query) / denom[:, None]  # (B, Q)


MIN_ROUTINE = 5  # residuals about this large seen at least this often in the recent window: a routine size
ROUTINE_MARGIN = 1.5  # ... "about this large": at least 1/ROUTINE_MARGIN of the residual's size


@dataclass(frozen=True)
class RoutineTail:
    """A series' own recent |u| (B, R), NaN = missing: what it does routinely is no anomaly.

    The cluster's calibration pools many series and cannot know that one channel jumps between
    two levels every few minutes (1-minute telemetry: a quarter of its clean points flagged) or
    that a series' residuals have heavier tails than its cluster's. A residual's tail
    probability is the calibration's times the series' **excess tail weight**: how many times
    more often than the calibration says its recent residuals reached about the residual's size
    (at least 1/:data:`ROUTINE_MARGIN` of it: two-level jumps differ by the noise, and counting
    only larger ones flagged every jump a little larger than the fifth largest of the week),
    where at least :data:`MIN_ROUTINE` of them did; never less than 1. A series whose residuals
    follow its cluster's calibration keeps its scores (a share instead of a ratio lowered every
    Gaussian series' scores: 0.17% of clean points flagged at a stated 1%); below MIN_ROUTINE
    such residuals the calibration alone decides, so one anomaly in the recent window does not
    hide the next one.
    """

    recent_u: np.ndarray
    cal: Calibration

    @classmethod
    def of(cls, tasks: Tasks, recent: np.ndarray, denom: np.ndarray, cal: Calibration) -> "RoutineTail":
        return cls(np.abs(tasks.recent_values - recent) / denom[:, None], cal)

    def _excess(self, count: np.ndarray, v: np.ndarray) -> np.ndarray:
        """log of the excess tail weight at size v given the count of recent |u| >= v (same shape)."""
        n = np.maximum(np.isfinite(self.recent_u).sum(axis=1), 1).reshape((-1,) + (1,) * (count.ndim - 1))
        with np.errstate(divide="ignore"):
            ratio = np.log(np.maximum(count, 1) / n) - self.cal.log_tail_probability(v)
        return np.where(count >= MIN_ROUTINE, np.maximum(ratio, 0.0), 0.0)

    def log_tail_probability(self, u_abs: np.ndarray) -> np.ndarray:
        """(B, Q) log P(|U| >= u_abs) for this series (one sort of recent and query values per task)."""
        r = self.recent_u.shape[1]
        v = u_abs / ROUTINE_MARGIN
        both = np.nan_to_num(np.concatenate([self.recent_u, v], axis=1), nan=-np.inf)  # (B, R + Q)
        order = np.argsort(-both, axis=1, kind="stable")  # largest first; ties: recent before query
        at_least = np.cumsum(order < r, axis=1)  # recent values at or before each sorted position
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
        count = np.take_along_axis(at_least, rank[:, r:], axis=1)  # (B, Q)
        return np.minimum(self.cal.log_tail_probability(u_abs) + self._excess(count, v), 0.0)

    def half_width(self, p: float) -> np.ndarray:
        """(B,) the |u| at which the tail probability falls to p (bisection in log |u|)."""
        lo = np.full(self.recent_u.shape[0], self.cal.quantile(p))  # the excess is never below 1
        top = np.nan_to_num(self.recent_u, nan=0.0).max(axis=1, initial=0.0) * ROUTINE_MARGIN
        hi = np.maximum(lo, top) * (1.0 + 1e-9)  # beyond it no recent residual counts: p_cal < p
        for _ in range(40):
            mid = np.sqrt(lo * hi)
            v = mid / ROUTINE_MARGIN
            count = (np.nan_to_num(self.recent_u, nan=-np.inf) >= v[:, None]).sum(axis=1)
            above = self.cal.log_tail_probability(mid) + self._excess(count, v) > np.log(p)  # not flagged
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return hi
