"""Reference detectors: what a user would otherwise run, scored like the MAML detector.

Two baselines, both batched over series (numpy, no Python loop per series):

* `seasonal_naive_scores`: forecast y_t by y_{t-p} (p = the series' period, 1 if none); score the
  residual by a robust z-score, (r - median) / (1.4826 * MAD), where median and MAD are taken over
  a trailing window of residuals strictly before the scored day.
* `holt_winters_scores`: additive Holt-Winters (ETS(A,Ad,A) in error-correction form) with its
  smoothing parameters chosen per series from a grid by one-step squared error on the history
  before the scored range; its one-step residuals are scored by the same robust z-score
  (residual-based intervals).

Both return the scores schema of daily-score (unique_id, ds, y, y_hat, lower, upper, score,
is_anomaly, cluster, status) for every input row of the scored days, so `evaluation` treats them
like the detector. Input is a long frame (unique_id, ds, y) without duplicate (series, timestamp)
pairs; each series is placed on its own regular grid by the tool's panel (io.build_panel: the
same step and anchor as daily-score); rows off that grid are kept with status `off_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from maml_anomaly.data.panel import build_panel
from maml_anomaly.errors import InputError

_DAY_NS = np.int64(86_400 * 10**9)
_MAD_TO_SD = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass(frozen=True)
class RobustZ:
    """How the trailing residual window is sized: `periods` cycles, clipped to [min_points, max_points]."""

    periods: int = 8
    min_points: int = 48
    max_points: int = 2016
    min_count: int = 8  # fewer valid residuals than this: insufficient_history


@dataclass(frozen=True)
class Grid:
    """Series on their own regular grids: the fields of the project's Panel that baselines need."""

    ids: np.ndarray  # (S,) series ids, sorted
    indptr: np.ndarray  # (S+1,) int64 offsets into values
    values: np.ndarray  # (N,) float64, NaN = missing
    present: np.ndarray  # (N,) bool: the grid point was a row of the input
    start: np.ndarray  # (S,) datetime64[ns]
    step: np.ndarray  # (S,) timedelta64[ns]
    off_grid: pd.DataFrame  # rows off their series' grid: unique_id, ds, y


def to_grid(frame: pd.DataFrame) -> Grid:
    """Place each series of a long frame on its regular grid: the tool's own panel (same step,
    anchor and off-grid rows as daily-score), plus which grid points were input rows."""
    panel, _ = build_panel(frame)  # InputError on duplicates, like the tool
    codes = panel.positions(frame["unique_id"].to_numpy())  # (R,)
    t = pd.to_datetime(frame["ds"]).to_numpy("datetime64[ns]").astype(np.int64)
    start = panel.start.astype(np.int64)[codes]
    step = np.where(np.isnat(panel.step), 0, panel.step.astype(np.int64))[codes]
    offset = t - start
    safe = np.where(step > 0, step, 1)
    j = np.where(step > 0, offset // safe, 0)
    on = (offset >= 0) & np.where(step > 0, offset % safe == 0, offset == 0) & (j < panel.lengths[codes])
    present = np.zeros(len(panel.values), dtype=bool)
    present[panel.indptr[codes[on]] + j[on]] = True
    off = panel.off_grid
    off = pd.DataFrame(
        {"unique_id": panel.ids[off["series"].to_numpy()], "ds": off["ds"].to_numpy(), "y": off["y"].to_numpy()}
    )
    step_all = np.where(np.isnat(panel.step), _DAY_NS, panel.step.astype(np.int64))  # one point: a day
    return Grid(panel.ids, panel.indptr, panel.values, present, panel.start, step_all.astype("timedelta64[ns]"), off)


def dense(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(S, T) left-aligned matrix of grid values (NaN-padded) and its (S, T) presence mask."""
    n = np.diff(grid.indptr)  # (S,)
    t = np.arange(n.max(initial=0))  # (T,)
    inside = t[None, :] < n[:, None]  # (S, T)
    idx = np.minimum(grid.indptr[:-1, None] + t[None, :], max(len(grid.values) - 1, 0))
    vals = np.where(inside, grid.values[idx] if len(grid.values) else np.nan, np.nan)
    return vals, inside & (grid.present[idx] if len(grid.values) else False)


def period_array(ids: np.ndarray, period: int | Mapping | pd.Series) -> np.ndarray:
    """(S,) int periods aligned to ids; 0 or missing means no period."""
    if np.isscalar(period):
        return np.full(len(ids), int(period), dtype=np.int64)
    p = pd.Series(period)
    return p.reindex(ids).fillna(0).to_numpy(np.int64)


def seasonal_lag(vals: np.ndarray, period: np.ndarray, back: int = 3) -> np.ndarray:
    """(S, T) y_{t-p}; where missing, the same phase one or more cycles further back."""
    p = np.maximum(period, 1)[:, None]  # (S, 1)
    t = np.arange(vals.shape[1])[None, :]  # (1, T)
    lag = np.full(vals.shape, np.nan)
    rows = np.arange(vals.shape[0])[:, None]
    for k in range(1, back + 1):  # a few cycles, not a loop over series
        src = t - k * p
        cand = np.where(src >= 0, vals[rows, np.maximum(src, 0)], np.nan)
        lag = np.where(np.isnan(lag), cand, lag)
    return lag


def _nanmedian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median over the last axis ignoring NaN, by one sort; also the count of valid values."""
    s = np.sort(x, axis=-1)  # NaN sort last
    n = np.sum(~np.isnan(x), axis=-1)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0]
    hi = np.take_along_axis(s, np.maximum(n // 2, 0)[..., None], -1)[..., 0]
    return np.where(n > 0, (lo + hi) / 2, np.nan), n


@dataclass(frozen=True)
class ScoredPoints:
    """Grid points of the scored days, and the (series, day) pairs they fall in."""

    si: np.ndarray  # (R,) series index of each point
    ti: np.ndarray  # (R,) grid index of each point
    ds: np.ndarray  # (R,) int64 ns timestamps
    pair: np.ndarray  # (R,) index of the point's (series, day) pair
    pair_series: np.ndarray  # (M,) series of each pair
    pair_bound: np.ndarray  # (M,) grid index of the first grid point of the pair's day


def scored_points(grid: Grid, present: np.ndarray, days: tuple[int, int]) -> ScoredPoints:
    """Present grid points whose calendar day (days since epoch) is in [days[0], days[1]]."""
    S, T = present.shape
    start = grid.start.astype(np.int64)  # (S,)
    step = grid.step.astype(np.int64)
    ds = start[:, None] + np.arange(T)[None, :] * step[:, None]  # (S, T) ns
    day = ds // _DAY_NS
    si, ti = np.nonzero(present & (day >= days[0]) & (day <= days[1]))  # sorted by series, time
    span = days[1] - days[0] + 1
    key = si * span + (day[si, ti] - days[0])
    uniq, pair = np.unique(key, return_inverse=True)
    ps, pday = uniq // span, uniq % span + days[0]
    n = np.diff(grid.indptr)
    bound = np.clip(-((start[ps] - pday * _DAY_NS) // step[ps]), 0, n[ps])  # ceil division
    return ScoredPoints(si, ti, ds[si, ti], pair.reshape(-1), ps, bound.astype(np.int64))


def trailing_robust(
    resid: np.ndarray, vals: np.ndarray, series: np.ndarray, bound: np.ndarray, window: np.ndarray, min_count: int
):
    """Median and robust scale of the `window` residuals before each bound (strictly before a day).

    resid, vals (S, T); series, bound (M,) pairs; window (S,) -> med (M,), scale (M,), ok (M,).
    A zero MAD (quantised or flat series) falls back to the mean absolute deviation; the scale
    never drops below 1e-4 of the mean |y| of the window, so a near-constant series does not
    give scores of 1e13 that swamp every other series.
    """
    w = int(window.max(initial=1))
    k = np.arange(w)  # (W,)
    idx = bound[:, None] - w + k  # (M, W)
    use = (idx >= 0) & (k[None, :] >= w - window[series][:, None])
    rows = series[:, None]
    r = np.where(use, resid[rows, np.maximum(idx, 0)], np.nan)  # (M, W)
    med, count = _nanmedian(r)
    dev = np.abs(r - med[:, None])
    mad = _nanmedian(dev)[0] * _MAD_TO_SD
    yabs = np.where(use, np.abs(vals[rows, np.maximum(idx, 0)]), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_dev = np.nansum(dev, axis=-1) / np.maximum(count, 1) * 1.2533
        level = np.nansum(yabs, axis=-1) / np.maximum(np.sum(np.isfinite(yabs), axis=-1), 1)
    floor = 1e-4 * level + 1e-12
    scale = np.maximum(np.where(mad > 0, mad, mean_dev), floor)
    return med, scale, count >= min_count


def _frame_out(
    grid: Grid,
    sp: ScoredPoints,
    days: tuple[int, int],
    vals,
    y_hat,
    resid,
    med,
    scale,
    ok_hist,
    threshold: float,
    cluster: np.ndarray,
) -> pd.DataFrame:
    """The scored points in the scores schema (+ off-grid rows of the scored days, unscored)."""
    si, ti, pr = sp.si, sp.ti, sp.pair
    m, sc = med[pr], scale[pr]
    yv = vals[si, ti]
    fc = y_hat[si, ti] + m
    z = np.abs(resid[si, ti] - m) / sc
    status = np.where(
        np.isnan(yv), "missing_value", np.where(~ok_hist[pr] | np.isnan(fc), "insufficient_history", "ok")
    )
    good = status == "ok"
    score = np.where(good, z, np.nan)
    out = pd.DataFrame(
        {
            "unique_id": grid.ids[si],
            "ds": sp.ds.astype("datetime64[ns]"),
            "y": yv,
            "y_hat": fc,
            "lower": fc - threshold * sc,
            "upper": fc + threshold * sc,
            "score": score,
            "is_anomaly": good & (score >= threshold),
            "cluster": cluster[si],
            "status": status,
        }
    )
    off = grid.off_grid
    if len(off):
        off_day = off["ds"].to_numpy("datetime64[ns]").astype(np.int64) // _DAY_NS
        off = off[(off_day >= days[0]) & (off_day <= days[1])]
        extra = pd.DataFrame(
            {
                "unique_id": off["unique_id"].to_numpy(),
                "ds": off["ds"].to_numpy(),
                "y": off["y"].to_numpy(np.float64),
                "y_hat": np.nan,
                "lower": np.nan,
                "upper": np.nan,
                "score": np.nan,
                "is_anomaly": False,
                "cluster": "",
                "status": "off_grid",
            }
        )
        out = pd.concat([out, extra], ignore_index=True).sort_values(["unique_id", "ds"], ignore_index=True)
    return out


def _scored_days(grid: Grid, start, end) -> tuple[int, int]:
    """(first, last) scored day as days since epoch; default: the last day of the data."""
    last = grid.start.astype(np.int64) + (np.diff(grid.indptr) - 1) * grid.step.astype(np.int64)
    hi = int(pd.Timestamp(end).value // _DAY_NS) if end is not None else int(last.max() // _DAY_NS)
    lo = int(pd.Timestamp(start).value // _DAY_NS) if start is not None else hi
    if hi < lo:
        raise InputError(f"the scored range is empty: start {start} is after end {end}")
    return lo, hi


def _window(period: np.ndarray, cfg: RobustZ) -> np.ndarray:
    return np.clip(cfg.periods * np.maximum(period, 1), cfg.min_points, cfg.max_points)


def seasonal_naive_scores(
    frame: pd.DataFrame,
    period: int | Mapping | pd.Series = 0,
    *,
    start=None,
    end=None,
    threshold: float = 3.5,
    robust: RobustZ = RobustZ(),
) -> pd.DataFrame:
    """Seasonal naive forecast + robust z-score of its residual, for the days start..end."""
    grid = to_grid(frame)
    p = period_array(grid.ids, period)  # (S,)
    vals, present = dense(grid)  # (S, T)
    lag = seasonal_lag(vals, p)  # (S, T)
    resid = vals - lag
    days = _scored_days(grid, start, end)
    sp = scored_points(grid, present, days)
    med, scale, ok = trailing_robust(resid, vals, sp.pair_series, sp.pair_bound, _window(p, robust), robust.min_count)
    cluster = np.array([f"seasonal_naive_p{q}" for q in p], dtype=object)
    return _frame_out(grid, sp, days, vals, lag, resid, med, scale, ok, threshold, cluster)


# Holt-Winters grid: (alpha, beta, gamma) with beta <= alpha and gamma <= 1 - alpha (admissible ETS).
_HW_GRID = np.array(
    [
        (a, b, g)
        for a in (0.05, 0.15, 0.35, 0.6, 0.9)
        for b in (0.0, 0.01)
        for g in (0.0, 0.05, 0.2)
        if b <= a and g <= 1 - a
    ]
)  # (G, 3)
_PHI = 0.98  # damped trend: keeps forecasts sane over gaps


def holt_winters_filter(vals: np.ndarray, period: np.ndarray, params: np.ndarray, fit_end: np.ndarray | None = None):
    """One-step forecasts of additive damped Holt-Winters, batched over series and parameter sets.

    vals (S, T) with NaN for missing, period (S,), params (S, G, 3) -> y_hat (S, G, T) unless
    fit_end (S,) is given, in which case -> sse (S, G) of one-step errors on t in [2p, fit_end).
    A missing y leaves the states to run on their own (no innovation).
    """
    S, T = vals.shape
    G = params.shape[1]
    p = np.maximum(period, 1)  # (S,)
    P = int(p.max(initial=1))
    alpha, beta, gamma = (params[..., i] for i in range(3))  # (S, G)
    first = np.pad(vals[:, :P], ((0, 0), (0, max(P - T, 0))), constant_values=np.nan)  # first cycle (S, P)
    in_cycle = np.arange(P)[None, :] < p[:, None]  # (S, P)
    level0 = np.nanmean(np.where(in_cycle, first, np.nan), axis=1)  # (S,)
    level0 = np.nan_to_num(level0, nan=np.nanmean(vals) if np.isfinite(vals).any() else 0.0)
    season0 = np.where(in_cycle & np.isfinite(first), first - level0[:, None], 0.0)
    season0 = np.where((period <= 1)[:, None], 0.0, season0)  # no period: no season
    level = np.repeat(level0[:, None], G, axis=1)  # (S, G)
    trend = np.zeros((S, G))
    season = np.repeat(season0[:, None, :], G, axis=1)  # (S, G, P)
    rows = np.arange(S)
    has_season = (period > 1)[:, None]
    sse = np.zeros((S, G))
    y_hat = None if fit_end is not None else np.empty((S, G, T))
    for t in range(T):  # time is sequential; series and parameter sets are batched
        ph = t % p  # (S,)
        s = season[rows, :, ph]  # (S, G)
        f = level + _PHI * trend + s
        y = vals[:, t][:, None]  # (S, 1)
        e = np.where(np.isnan(y), 0.0, y - f)  # (S, G)
        if fit_end is None:
            y_hat[:, :, t] = f
        else:
            counted = ((t >= 2 * p) & (t < fit_end))[:, None]
            sse += np.where(counted, e * e, 0.0)
        level = level + _PHI * trend + alpha * e
        trend = _PHI * trend + beta * e
        season[rows, :, ph] = np.where(has_season, s + gamma * e, 0.0)
    return y_hat if fit_end is None else sse


def holt_winters_forecast(vals: np.ndarray, period: np.ndarray, fit_end: np.ndarray):
    """Choose (alpha, beta, gamma) per series on [0, fit_end) by SSE, then filter: y_hat (S, T)."""
    S = vals.shape[0]
    grid = np.broadcast_to(_HW_GRID, (S,) + _HW_GRID.shape)  # (S, G, 3)
    sse = holt_winters_filter(vals[:, : int(fit_end.max(initial=1))], period, grid, fit_end)  # (S, G)
    best = grid[np.arange(S), np.argmin(sse, axis=1)][:, None, :]  # (S, 1, 3)
    return holt_winters_filter(vals, period, best)[:, 0, :], best[:, 0, :]


def holt_winters_scores(
    frame: pd.DataFrame,
    period: int | Mapping | pd.Series = 0,
    *,
    start=None,
    end=None,
    threshold: float = 3.5,
    robust: RobustZ = RobustZ(),
    fit_before=None,
) -> pd.DataFrame:
    """Holt-Winters one-step forecasts + robust z-score of their residuals, for the days start..end.

    The smoothing parameters are fitted on each series' history before `fit_before` (a
    timestamp, or one per series as a mapping), by default before its first scored point.
    """
    grid = to_grid(frame)
    p = period_array(grid.ids, period)
    vals, present = dense(grid)
    days = _scored_days(grid, start, end)
    sp = scored_points(grid, present, days)
    y_hat, _ = holt_winters_forecast(vals, p, _fit_end(grid, sp, fit_before))
    resid = vals - y_hat
    med, scale, ok = trailing_robust(resid, vals, sp.pair_series, sp.pair_bound, _window(p, robust), robust.min_count)
    cluster = np.array([f"holt_winters_p{q}" for q in p], dtype=object)
    return _frame_out(grid, sp, days, vals, y_hat, resid, med, scale, ok, threshold, cluster)


def _fit_end(grid: Grid, sp: ScoredPoints, fit_before) -> np.ndarray:
    """(S,) grid index where the parameter fit stops."""
    n = np.diff(grid.indptr)
    if fit_before is None:
        end = n.copy()
        np.minimum.at(end, sp.pair_series, sp.pair_bound)  # first scored day of each series
        return end
    if isinstance(fit_before, (Mapping, pd.Series)):
        cut = pd.to_datetime(pd.Series(fit_before)).reindex(grid.ids).astype("datetime64[ns]")
        cut = cut.fillna(pd.Timestamp.max).to_numpy().astype(np.int64)
    else:
        cut = np.full(len(n), pd.Timestamp(fit_before).value, dtype=np.int64)
    start, step = grid.start.astype(np.int64), grid.step.astype(np.int64)
    with np.errstate(over="ignore"):
        idx = -((start - cut) // step)
    return np.clip(idx, 0, n)


BASELINES = {"seasonal_naive": seasonal_naive_scores, "holt_winters": holt_winters_scores}


def seasonal_naive_reference(
    frame: pd.DataFrame, period: int | Mapping | pd.Series = 0, *, before=None
) -> pd.DataFrame:
    """Per present grid point: y_naive = y_{t-p}, y_last = y_{t-1} (the two simple references),
    and each series' MASE scale.

    The scale is the mean absolute seasonal difference over points strictly before `before` (a
    timestamp, or one per series as a mapping; all points when None), as in M4's MASE.
    Returns (unique_id, ds, y_naive, y_last, scale).
    """
    grid = to_grid(frame)
    p = period_array(grid.ids, period)
    vals, present = dense(grid)  # (S, T)
    lag = seasonal_lag(vals, p, back=1)
    T = vals.shape[1]
    ds = grid.start.astype(np.int64)[:, None] + np.arange(T)[None, :] * grid.step.astype(np.int64)[:, None]
    if before is None:
        hist = present
    elif isinstance(before, (Mapping, pd.Series)):  # a cutoff timestamp per series
        cut = pd.to_datetime(pd.Series(before)).reindex(grid.ids).astype("datetime64[ns]")
        cut = cut.fillna(pd.Timestamp.max).to_numpy().astype(np.int64)  # (S,)
        hist = present & (ds < cut[:, None])
    else:
        hist = present & (ds < pd.Timestamp(before).value)
    diff = np.where(hist, np.abs(vals - lag), np.nan)
    with np.errstate(invalid="ignore"):
        scale = np.nansum(diff, axis=1) / np.sum(np.isfinite(diff), axis=1)  # (S,)
    si, ti = np.nonzero(present)
    last = seasonal_lag(vals, np.ones_like(p), back=1)
    return pd.DataFrame(
        {
            "unique_id": grid.ids[si],
            "ds": ds[si, ti].astype("datetime64[ns]"),
            "y_naive": lag[si, ti],
            "y_last": last[si, ti],
            "scale": scale[si],
        }
    )


def default_periods(frame: pd.DataFrame) -> pd.Series:
    """Per series: a day of steps for sub-daily series, 7 for daily series, else 0 (no period).

    The calendar guess used where no detected period is at hand (e.g. `evaluate` without a model).
    """
    grid = to_grid(frame)
    step = grid.step.astype(np.int64)  # (S,)
    p = np.where(step < _DAY_NS, np.round(_DAY_NS / step), np.where(step == _DAY_NS, 7, 0))
    return pd.Series(p.astype(np.int64), index=grid.ids)
