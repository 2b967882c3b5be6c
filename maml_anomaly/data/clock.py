"""Clock rules of the grid: a jittered clock made one regular grid, calendar steps refused.

Both work on one block of whole series as :meth:`~maml_anomaly.data.panel.Panel.from_sorted`
sees it: ``codes`` (B,) block-local series of each row, rows sorted by (code, ds); ``t`` (B,)
int64 ns; ``first`` (S,) first row and ``count`` (S,) rows of each series; ``step``/``start``
(S,) int64 ns from the mode of the differences; ``on`` (B,) rows exactly on that grid.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from maml_anomaly.errors import CalendarStepError

DAY_NS = 86_400 * 10**9
SECOND_NS = 10**9

#: A series with fewer of its rows than this share exactly on its mode grid has a jittered clock.
JITTERED_SHARE = 0.5
#: A jittered step is rounded to the coarsest of these units that moves it by at most ROUND_SLACK.
ROUND_UNITS_NS = (3600 * SECOND_NS, 60 * SECOND_NS, SECOND_NS)
ROUND_SLACK = 0.01
#: Steps that are calendar periods, not fixed durations: (shortest, longest in days, name).
CALENDAR_STEPS = ((28, 31, "month"), (89, 92, "quarter"), (365, 366, "year"))
CALENDAR_OFF_SHARE = 0.25  # share of a series' rows off its mode grid that marks a calendar step


def regrid_jittered(
    codes: np.ndarray,
    t: np.ndarray,
    first: np.ndarray,
    count: np.ndarray,
    step: np.ndarray,
    start: np.ndarray,
    on: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, start, on) with jittered series moved to a robust grid; others untouched.

    A jittered series (few of its rows exactly on its mode grid) gets as step the median of its differences rounded to a whole hour, minute or
    second (the coarsest within ROUND_SLACK of it), and its origin the circular mean of its
    rows' phases on that step, to the whole minute (second, for a step that is not whole
    minutes), starting at the first row: every row then lies within its jitter of a grid point,
    which snapping (``snap_tolerance``) moves it onto.
    """
    n_series = first.shape[0]
    on_count = np.bincount(codes[on], minlength=n_series)  # (S,)
    jittered = (count >= 3) & (on_count < JITTERED_SHARE * count)  # (S,)
    if not jittered.any():
        return step, start, on
    d = np.diff(t)  # (B-1,)
    keep = (codes[1:] == codes[:-1]) & jittered[codes[1:]] & (d > 0)
    median = median_per_code(codes[1:][keep], d[keep], n_series)  # (S,) 0 where not jittered
    new_step = step.copy()
    new_step[jittered] = round_step(median[jittered])
    rows = jittered[codes]  # (B,) rows of jittered series
    phase = circular_phase(codes[rows], t[rows], new_step, n_series)  # (S,)
    new_start = start.copy()
    t0, s = t[first[jittered]], new_step[jittered]
    new_start[jittered] = phase[jittered] + s * np.floor((t0 - phase[jittered]) / s + 0.5).astype(np.int64)
    new_on = on.copy()
    new_on[rows] = (t[rows] - new_start[codes[rows]]) % new_step[codes[rows]] == 0
    return new_step, new_start, new_on


def median_per_code(code: np.ndarray, value: np.ndarray, n_series: int) -> np.ndarray:
    """(S,) int64 lower median of ``value`` per code (0 for codes without values)."""
    out = np.zeros(n_series, np.int64)
    if code.shape[0] == 0:
        return out
    order = np.lexsort((value, code))
    c, v = code[order], value[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    n = np.diff(np.r_[starts, c.shape[0]])
    out[c[starts]] = v[starts + (n - 1) // 2]
    return out


def round_step(median: np.ndarray) -> np.ndarray:
    """(M,) int64 each median difference rounded to the coarsest unit within ROUND_SLACK of it."""
    out = median.astype(np.int64).copy()
    done = np.zeros(median.shape[0], bool)
    for unit in ROUND_UNITS_NS:
        r = np.round(median / unit).astype(np.int64) * unit
        fits = ~done & (r > 0) & (np.abs(r - median) <= ROUND_SLACK * median)
        out[fits] = r[fits]
        done |= fits
    return out


def circular_phase(codes: np.ndarray, t: np.ndarray, step: np.ndarray, n_series: int) -> np.ndarray:
    """(S,) int64 ns mean phase of each series' rows on its step, to the whole minute (or second, or
    nanosecond: the coarsest that divides the step)."""
    safe = np.where(step > 0, step, 1)  # (S,)
    s = safe[codes]  # (R,)
    angle = 2 * np.pi * (np.mod(t, s) / s)  # (R,)
    cos = np.bincount(codes, np.cos(angle), minlength=n_series)
    sin = np.bincount(codes, np.sin(angle), minlength=n_series)
    phase = np.mod(np.arctan2(sin, cos) / (2 * np.pi), 1.0) * safe  # (S,) ns in [0, step)
    unit = np.where(safe % (60 * SECOND_NS) == 0, 60 * SECOND_NS, np.where(safe % SECOND_NS == 0, SECOND_NS, 1))
    return np.mod(np.round(phase / unit).astype(np.int64) * unit, safe)


def refuse_calendar_steps(ids: np.ndarray, codes: np.ndarray, t: np.ndarray, step: np.ndarray, on: np.ndarray) -> None:
    """CalendarStepError when series are sampled by calendar month, quarter or year (no fixed step)."""
    n_series = step.shape[0]
    # a calendar step drifts off any fixed grid: most rows; a fixed 28-day step with a stray row does not
    off = np.bincount(codes[~on], minlength=n_series) >= CALENDAR_OFF_SHARE * np.bincount(codes, minlength=n_series)
    for low, high, name in CALENDAR_STEPS:
        bad = np.flatnonzero(off & (step >= low * DAY_NS) & (step <= high * DAY_NS))
        if bad.size == 0:
            continue
        i = int(bad[0])
        rows = t[codes == i][:4]
        shown = ", ".join(str(pd.Timestamp(int(v)).date()) for v in rows)
        raise CalendarStepError(
            f"{bad.size:,} series are sampled once a calendar {name} (their timestamps are {low} to "
            f"{high} days apart, e.g. {ids[i]!r} at {shown}, ...): that is not a fixed step, so most "
            "of their rows would lie off any regular grid. maml-anomaly needs a fixed step; "
            f"resample those series to a daily (or weekly) step upstream, or leave them out."
        )


def snapped_times(
    t: np.ndarray,
    series: np.ndarray,
    start: np.ndarray,
    step: np.ndarray,
    off_series: np.ndarray,
    off_t: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """(N,) each row's grid timestamp where snapping moved it onto its grid; its own elsewhere.

    ``t`` (N,) int64 ns and ``series`` (N,) panel position of rows of a panel built with
    ``tolerance``; ``start``/``step`` (S,) int64 ns its grids; ``off_series``/``off_t`` the rows
    it kept off the grid (they keep their timestamp, and so their off_grid status).
    """
    s = step[series]  # (N,)
    safe = np.where(s > 0, s, 1)
    rel = t - start[series]
    g = (rel + safe // 2) // safe  # (N,) nearest grid index
    near = (s > 0) & (np.abs(rel - g * safe) <= tolerance * safe)
    if off_series.shape[0]:
        rows = pd.MultiIndex.from_arrays([series, t])
        near &= ~rows.isin(pd.MultiIndex.from_arrays([off_series, off_t]))
    return np.where(near, start[series] + g * safe, t)
