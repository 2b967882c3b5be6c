"""The days a run scores: calendar days in a timezone, how complete a day is, and absent series.

- Days are calendar days of a timezone (default UTC): :func:`day_bounds` gives their UTC edges,
  so a day across a DST change is 23 or 25 hours long.
- A day is *complete* for a series when the last grid point the series should have that day is
  present: its last row of the day is later than the day's end minus 1.5 steps (the step is the
  median difference between the series' rows, which tolerates gaps and a jittered clock). A
  series whose step is a day or longer (or unknown: one row) is complete on a day it has a row.
- The default day (:func:`default_day`) is the input's last day when it is complete for at least
  COMPLETE_SHARE of the series with rows that day, else the day before when it is; else there is
  none (a cron run then stops rather than score a partial or stale day).
- :func:`absent_rows` makes the one ``absent`` row of each expected series without any row on a
  scored day (ds = the day's first instant, in UTC).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from maml_anomaly.data.clock import median_per_code
from maml_anomaly.errors import InputError

UTC = "UTC"
COMPLETE_SHARE = 0.5  # a day is the default when complete for at least this share of its series
DEFAULT_DAY_WINDOW = 2  # the input's last day, or the day before: never an older (stale) day
_DAY = np.timedelta64(1, "D")


def check_zone(name: str | None) -> str:
    """The IANA zone name, checked (InputError with the fix otherwise); None -> UTC."""
    if name is None or name == UTC:
        return UTC
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise InputError(
            f"--timezone {name!r} is not a timezone this machine knows; expected an IANA name such "
            "as Europe/Berlin, America/New_York or UTC (the tzdata package supplies them)."
        ) from None
    return name


def local_date(t: np.datetime64 | np.ndarray, zone: str) -> np.ndarray:
    """Calendar date(s) (datetime64[D]) in ``zone`` of UTC instant(s) ``t`` (naive datetime64[ns])."""
    t = np.asarray(t, dtype="datetime64[ns]")
    if zone == UTC:
        return t.astype("datetime64[D]")
    local = pd.DatetimeIndex(t.ravel()).tz_localize(UTC).tz_convert(zone).tz_localize(None)
    return local.to_numpy().astype("datetime64[D]").reshape(t.shape)


def day_bounds(first: np.datetime64, last: np.datetime64, zone: str) -> np.ndarray:
    """(D+1,) datetime64[ns] UTC instants where the days ``first``..``last`` (dates in ``zone``) begin,
    then where the last one ends."""
    dates = np.arange(np.datetime64(first, "D"), np.datetime64(last, "D") + 2 * _DAY, _DAY)  # (D+1,)
    if zone == UTC:
        return dates.astype("datetime64[ns]")
    local = pd.DatetimeIndex(dates.astype("datetime64[ns]"))
    # a midnight that does not exist (DST starting at 00:00) begins the day at the first instant that does
    aware = local.tz_localize(zone, nonexistent="shift_forward", ambiguous=np.zeros(len(local), bool))
    return aware.tz_convert(UTC).tz_localize(None).to_numpy().astype("datetime64[ns]")


def day_index(ds: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(N,) int64 index of the day of each UTC timestamp (-1 before, D after the scored days)."""
    return np.searchsorted(bounds, np.asarray(ds, "datetime64[ns]"), side="right").astype(np.int64) - 1


# -- completeness ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayCounts:
    """How complete each of D days is, summed over series (each array (D,) int64)."""

    bounds: np.ndarray  # (D+1,) the days' UTC edges
    series: np.ndarray  # series with at least one row that day
    complete: np.ndarray  # of which the day is complete for
    points: np.ndarray  # rows that day (at most the expected ones per series)
    expected: np.ndarray  # grid points expected that day of the series with rows

    def share(self, d: int) -> float:
        """Share of the expected points present on day ``d`` (1.0 when none were expected)."""
        return float(self.points[d] / self.expected[d]) if self.expected[d] else 1.0

    def is_complete(self, d: int) -> bool:
        return bool(self.series[d]) and self.complete[d] >= COMPLETE_SHARE * self.series[d]


def count_days(frames: Iterable[pd.DataFrame], bounds: np.ndarray) -> DayCounts:
    """Completeness of the days ``bounds`` over frames of whole series (unique_id, ds, sorted)."""
    n_days = bounds.shape[0] - 1
    sums = np.zeros((4, n_days), np.int64)
    for frame in frames:
        sums += _frame_counts(frame, bounds)
    return DayCounts(bounds, *sums)


def _frame_counts(frame: pd.DataFrame, bounds: np.ndarray) -> np.ndarray:
    """(4, D) series, complete, points, expected of one frame's series (no loop per series)."""
    n_days = bounds.shape[0] - 1
    ids = frame["unique_id"]
    codes = ids.cat.codes.to_numpy() if isinstance(ids.dtype, pd.CategoricalDtype) else pd.factorize(ids)[0]
    codes = codes.astype(np.int64)
    t = frame["ds"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    order = np.lexsort((t, codes))
    codes, t = codes[order], t[order]
    n_series = int(codes.max()) + 1 if codes.size else 0
    d = np.diff(t)
    keep = (codes[1:] == codes[:-1]) & (d > 0)
    step = median_per_code(codes[1:][keep], d[keep], n_series)  # (S,) 0: unknown
    day = day_index(t.view("M8[ns]"), bounds)
    inside = (day >= 0) & (day < n_days)
    c, dd, tt = codes[inside], day[inside], t[inside]
    key = c * n_days + dd  # (R,) rows are sorted by (series, ds), hence by key
    last = np.flatnonzero(np.r_[key[1:] != key[:-1], True])  # last row of each (series, day)
    rows = np.diff(np.r_[-1, last])  # (K,) rows per (series, day)
    s, day_k, t_last = c[last], dd[last], tt[last]
    edge = bounds.view(np.int64)
    length = edge[day_k + 1] - edge[day_k]  # (K,) 23, 24 or 25 hours across DST
    st = step[s]
    sub_day = (st > 0) & (st < length)
    complete = ~sub_day | (t_last > edge[day_k + 1] - 1.5 * np.where(sub_day, st, 1))
    expected = np.where(sub_day, np.round(length / np.where(sub_day, st, 1)), rows).astype(np.int64)
    out = np.zeros((4, n_days), np.int64)
    out[0] = np.bincount(day_k, minlength=n_days)
    out[1] = np.bincount(day_k, complete.astype(np.int64), minlength=n_days).astype(np.int64)
    out[2] = np.bincount(day_k, np.minimum(rows, expected), minlength=n_days).astype(np.int64)
    out[3] = np.bincount(day_k, expected, minlength=n_days).astype(np.int64)
    return out


@dataclass(frozen=True)
class DayChoice:
    """The day a daily-score run scores and why."""

    date: np.datetime64  # datetime64[D], a date in the run's zone
    share: float  # share of the day's expected points present
    complete: bool  # complete for at least COMPLETE_SHARE of its series
    reason: str  # one sentence for the summary ("" when it is the input's last day and complete)

    def fields(self, counts: DayCounts, d: int) -> dict[str, object]:
        return {
            "day": str(self.date),
            "points_share": round(self.share, 4),
            "series_with_rows": int(counts.series[d]),
            "series_complete": int(counts.complete[d]),
            "complete": self.complete,
        }


def default_day(counts: DayCounts, zone: str) -> tuple[DayChoice, int] | None:
    """The latest complete day of ``counts`` (the input's last days) and its index; None if none is."""
    dates = local_date(counts.bounds[:-1], zone)
    last = counts.bounds.shape[0] - 2
    for d in range(last, -1, -1):  # two days
        if counts.is_complete(d):
            reason = "" if d == last else _skipped(counts, dates, d, last)
            return DayChoice(dates[d], counts.share(d), True, reason), d
    return None


def incomplete_days(counts: DayCounts, zone: str) -> str:
    """How complete each day of ``counts`` is, for a message."""
    dates = local_date(counts.bounds[:-1], zone)
    return "; ".join(
        f"{dates[d]} is complete for {counts.complete[d]:,} of the {counts.series[d]:,} series with rows "
        f"({counts.share(d):.0%} of their points)"
        for d in range(dates.shape[0])
    )


def _skipped(counts: DayCounts, dates: np.ndarray, chosen: int, last: int) -> str:
    later = "; ".join(
        f"{dates[d]} is complete for {counts.complete[d]:,} of {counts.series[d]:,} series "
        f"({counts.share(d):.0%} of its points have arrived)"
        for d in range(chosen + 1, last + 1)
    )
    return f"scored {dates[chosen]}, the last day complete for most series: {later}; score it with --date once it is complete"


def chosen_day(counts: DayCounts, d: int, zone: str) -> DayChoice:
    """A day asked for by --date, with its completeness."""
    date = local_date(counts.bounds[d], zone)
    complete = counts.is_complete(d)
    reason = "" if complete else f"{date} is partial: {counts.share(d):.0%} of its expected points are present"
    return DayChoice(date, counts.share(d), complete, reason)


# -- absent series ----------------------------------------------------------------------------------


def absent_pairs(
    series: np.ndarray, ds: np.ndarray, n_series: int, bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(series, day) of every series in range(n_series) without a row on a day of ``bounds``.

    ``series`` (N,) code and ``ds`` (N,) UTC timestamp of each scored row.
    """
    n_days = bounds.shape[0] - 1
    day = day_index(ds, bounds)
    inside = (day >= 0) & (day < n_days)
    present = np.zeros((n_series, n_days), bool)
    present[series[inside], day[inside]] = True
    s, d = np.nonzero(~present)  # row-major: sorted by (series, day)
    return s.astype(np.int64), d.astype(np.int64)


# -- local wall-clock times -------------------------------------------------------------------------


def to_local(ds: pd.Series | np.ndarray, zone: str) -> np.ndarray:
    """(N,) naive datetime64[ns] wall-clock times in ``zone`` of UTC timestamps (for display)."""
    t = pd.DatetimeIndex(np.asarray(ds, "datetime64[ns]"))
    if zone == UTC:
        return t.to_numpy()
    return t.tz_localize(UTC).tz_convert(zone).tz_localize(None).to_numpy()


def to_utc(ds: pd.Series, zone: str) -> pd.Series:
    """Timestamps as naive UTC: timezone-aware ones converted, naive ones read as ``zone``'s local times."""
    ds = pd.to_datetime(ds)
    if getattr(ds.dt, "tz", None) is not None:
        return ds.dt.tz_convert(UTC).dt.tz_localize(None)
    if zone == UTC:
        return ds
    return ds.dt.tz_localize(zone, ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert(UTC).dt.tz_localize(None)
