"""Dominant period per series, vectorised over series.

The matrix holds one series per row on a shared step (``Panel.tail_matrix``): NaN is a missing
value and shorter series are left-padded with NaN. Every stage works on blocks of rows at once
(the only Python loops run over candidate periods, never over series):

1. robust standardisation: linear detrend, robust z (median / quartiles), clip outliers;
2. mask-aware autocorrelation by FFT (values with zeros at the gaps, divided by the FFT
   autocorrelation of the mask): its peaks are the free candidate periods;
3. calendar candidates for the step (hourly 24 and 168, daily 7, 5-minute 288 and 2016, ...);
   free peaks a step or two off a calendar period are snapped onto it;
4. each candidate p is scored by folding the series by p (level per cycle + profile per phase):
   adjusted share of variance explained (the reported strength), leave-one-out share (each
   point predicted from the other cycles) and an F test, which gate it;
5. the best leave-one-out candidate wins, then harmonics are resolved inside the multiple's
   fold (same cycle levels, same variance): a multiple is the period only when it beats its
   divisor there by a nested F test and predicts held-out points clearly better (a weekly
   profile over its daily part, a weekday / weekend step); a significant calendar multiple
   that is not clearly better becomes the second period.

A period needs ``MIN_CYCLES`` (2) full cycles within the observed span. Series with no
significant cycle get period 0. docs/periods.md has the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy.special import fdtrc

__all__ = ["PeriodResult", "calendar_periods", "cycle_profiles", "detect_periods"]

_MINUTE, _HOUR, _DAY, _WEEK = 60.0, 3600.0, 86400.0, 604800.0
_YEAR = 365.25 * _DAY

MIN_CYCLES = 2  # full cycles needed in the observed span to claim a period
CLIP_Z = 3.5  # robust z beyond which a point is an outlier and is clipped
ALPHA = 0.01  # F-test level of a calendar period; free periods get ALPHA / lags tried
NESTED_ALPHA = 0.001  # a multiple must beat its divisor at this level (weekly over daily)
LOO_MIN = 0.1  # leave-one-out share a period must explain (noise scores <= 0)
MULTIPLE_GAIN = 0.05  # a multiple must cut its divisor's held-out error by this share (same fold)
ADJ, LOO, PVAL, SSR, DFR, N_STATS = range(6)  # fold statistics per candidate (last axis)
FREE_ACF_MIN = 0.1  # free candidates need at least this autocorrelation at their lag
SMOOTH_FROM_LAG = 16  # ACF peaks from this lag on are found on a 5-tap smoothed ACF
N_FREE_PEAKS = 2  # ACF peaks taken as free candidates per series, besides the fundamental


@dataclass(frozen=True)
class PeriodResult:
    period: np.ndarray  # (S,) int64 steps, 0 = no dominant period
    strength: np.ndarray  # (S,) float64 in [0, 1]: seasonal strength of that period
    second_period: np.ndarray  # (S,) int64, 0 if none


def calendar_periods(step_seconds: float) -> list[int]:
    """Calendar cycles in steps for a sampling step, e.g. 3600 -> [24, 168], 300 -> [288, 2016].

    Day and week always count; the hour counts for steps of a minute or less, the minute for
    steps of a second or less, the year for steps of a day or more (daily 365, weekly 52,
    monthly 12). Only cycles that are (within 2%) a whole number of at least 2 steps are kept.
    """
    if not np.isfinite(step_seconds) or step_seconds <= 0:
        return []
    cycles = [_DAY, _WEEK]
    if step_seconds <= _MINUTE:
        cycles.insert(0, _HOUR)
    if step_seconds <= 1.0:
        cycles.insert(0, _MINUTE)
    if step_seconds >= _DAY:
        cycles.append(_YEAR)
    out = []
    for c in cycles:
        ratio = c / step_seconds
        p = int(round(ratio))
        if p >= 2 and abs(ratio - p) <= 0.02 * ratio:
            out.append(p)
    return sorted(set(out))


def _snap_tolerance(p: int) -> int:
    """How far (in steps) a free ACF peak may sit from calendar period p and still snap to it."""
    return 0 if p < 20 else max(1, int(round(0.012 * p)))  # 24 -> 1, 168 -> 2, 288 -> 3


def detect_periods(
    matrix: np.ndarray, step_seconds: float, *, max_period: int = 0, min_strength: float = 0.2, chunk_size: int = 50_000
) -> PeriodResult:
    """Dominant period (in steps) of every row of ``matrix`` (S, T); NaN = missing.

    ``max_period`` caps the periods considered (0: up to T / 2). ``min_strength`` is the seasonal
    strength a period needs. Rows are processed in chunks of at most ``chunk_size`` rows (fewer
    for long rows, so that FFT buffers stay around 100 MB).
    """
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"matrix must be 2-D (series, time), got shape {x.shape}")
    S, T = x.shape
    max_lag = T // MIN_CYCLES if max_period <= 0 else min(int(max_period), T // MIN_CYCLES)
    calendar = [p for p in calendar_periods(step_seconds) if 2 <= p <= max_lag]
    period = np.zeros(S, np.int64)
    strength = np.zeros(S, np.float64)
    second = np.zeros(S, np.int64)
    if S == 0 or max_lag < 2:
        return PeriodResult(period, strength, second)
    nfft = sfft.next_fast_len(T + max_lag + 1, real=True)
    rows = int(max(1, min(chunk_size, (1 << 23) // nfft)))
    for lo in range(0, S, rows):
        hi = min(S, lo + rows)
        p, s, p2 = _detect_chunk(x[lo:hi], calendar, max_lag, nfft, min_strength)
        period[lo:hi], strength[lo:hi], second[lo:hi] = p, s, p2
    return PeriodResult(period, strength, second)


def _detect_chunk(
    x: np.ndarray, calendar: list[int], max_lag: int, nfft: int, min_strength: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = np.isfinite(x)  # (C, T)
    z, ok = _standardise(x, mask)  # (C, T) float32, zeros at gaps
    C, T = z.shape
    n_obs = mask.sum(1)  # (C,)
    first = np.where(n_obs > 0, mask.argmax(1), T)
    span = T - first  # (C,) observed span incl. gaps
    lag_cap = np.minimum(span // MIN_CYCLES, max_lag)  # (C,)
    acf, pairs = _masked_acf(z, mask, max_lag, nfft)  # (C, max_lag + 1) each
    cands = _candidates(acf, pairs, lag_cap, calendar)  # (C, K) int64, 0 = empty slot
    cands[~ok] = 0
    stats = _score_candidates(z, mask, cands)  # (C, K, N_STATS)
    # a free period is one of ~lag_cap tried, a calendar one is a prior guess: Bonferroni
    alpha = np.where(np.isin(cands, calendar), ALPHA, ALPHA / np.maximum(lag_cap, 1)[:, None])
    good = _passes(cands, stats, min_strength, alpha)  # (C, K)
    # the fundamental of the leader may have no ACF peak of its own (a 12-hour cycle in
    # hourly data is found through 24): try its divisors too, then choose
    lead = np.where(good, stats[..., LOO], -np.inf).argmax(1)
    p_lead = np.where(good.any(1), cands[np.arange(C), lead], 0)  # (C,)
    divs = np.stack([np.where(p_lead % k == 0, p_lead // k, 0) for k in (2, 3, 4)], 1)
    divs = _snap(np.where(divs >= 2, divs, 0), calendar)
    divs = np.where((divs[:, :, None] == cands[:, None, :]).any(2), 0, divs)
    stats2 = _score_candidates(z, mask, divs)
    good2 = _passes(divs, stats2, min_strength, ALPHA / np.maximum(lag_cap, 1)[:, None])
    cands = np.concatenate([cands, divs], 1)
    stats = np.concatenate([stats, stats2], 1)
    good = np.concatenate([good, good2], 1)
    nested, gain = _nested_pvals(z, mask, np.where(good, cands, 0), stats)  # (C, K, K) each
    return _select(cands, stats, good, nested, gain, np.isin(cands, calendar))


def _passes(cands: np.ndarray, stats: np.ndarray, min_strength: float, alpha) -> np.ndarray:
    """Candidates strong enough, predictive out of sample, and significant."""
    return (cands > 0) & (stats[..., ADJ] >= min_strength) & (stats[..., LOO] >= LOO_MIN) & (stats[..., PVAL] < alpha)


def _standardise(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detrended, outlier-clipped, unit-variance rows (float32, 0 at gaps); ok = usable row."""
    n = mask.sum(1)  # (C,)
    y = np.where(mask, x, 0.0)  # (C, T)
    # a series flat most of the time (counts of rare events, a constant with a spike) is not
    # detrended: a line fitted through it leaves a ramp that every fold would call a cycle
    both = mask[:, 1:] & mask[:, :-1]
    flat = ((x[:, 1:] == x[:, :-1]) & both).sum(1) * 2 >= np.maximum(both.sum(1), 1)
    mean = y.sum(1) / np.maximum(n, 1)
    y = np.where(flat[:, None], (y - mean[:, None]) * mask, _detrend(y, mask, n)).astype(np.float32)
    med, q1, q3 = _masked_quantiles(y, mask, n)  # (C,) each, one sort
    scale = (q3 - q1) / 1.349  # robust sd around the trend
    mad = 1.2533 * (np.abs(y - med[:, None]) * mask).sum(1) / np.maximum(n, 1)
    std = np.sqrt((y * y).sum(1) / np.maximum(n, 1))
    scale = np.where(scale > 1e-6 * std, scale, np.where(mad > 1e-6 * std, mad, std))
    ok = (n >= 2 * MIN_CYCLES + 2) & (scale > 0) & np.isfinite(scale)
    scale = np.where(ok, scale, 1.0).astype(np.float32)
    y = np.clip((y - med[:, None]) / scale[:, None], -CLIP_Z, CLIP_Z)
    y *= mask
    y -= (y.sum(1) / np.maximum(n, 1))[:, None]  # clipping moved the mean
    y *= mask
    sd = np.sqrt((y * y).sum(1) / np.maximum(n, 1))
    ok &= sd > 1e-6
    y /= np.where(ok, sd, 1.0)[:, None]
    return y, ok


def _detrend(y: np.ndarray, mask: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Remove each row's least-squares line through its observed points (y is 0 at gaps)."""
    t = np.arange(y.shape[1], dtype=np.float64)  # (T,)
    m = mask.astype(np.float64)  # (C, T)
    nn = np.maximum(n, 1)
    t_mean = (m @ t) / nn  # (C,) sums as matrix products
    y_mean = y.sum(1) / nn
    sxx = m @ (t * t) - nn * t_mean * t_mean
    sxy = y @ t - t_mean * y.sum(1)
    slope = sxy / np.maximum(sxx, 1e-12)
    fit = (y_mean - slope * t_mean)[:, None] + slope[:, None] * t[None, :]
    return (y - fit) * m


def _masked_quantiles(y: np.ndarray, mask: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row median and quartiles over observed points (np.nanmedian loops over rows)."""
    srt = np.sort(np.where(mask, y, np.inf), axis=1)  # gaps sort last
    rows = np.arange(y.shape[0])
    last = y.shape[1] - 1

    def at(q: float) -> np.ndarray:
        pos = q * np.maximum(n - 1, 0)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, last)
        hi = np.clip(np.ceil(pos).astype(np.int64), 0, last)
        with np.errstate(invalid="ignore"):  # empty rows: inf - inf, dropped
            v = srt[rows, lo] + (pos - lo) * (srt[rows, hi] - srt[rows, lo])
        return np.where(n > 0, v, 0.0).astype(y.dtype)

    return at(0.5), at(0.25), at(0.75)


def _masked_acf(z: np.ndarray, mask: np.ndarray, max_lag: int, nfft: int) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation over observed pairs only, and the number of pairs, per lag."""
    zf = sfft.rfft(z, nfft, axis=1)  # (C, F) complex64
    num = sfft.irfft(zf.real**2 + zf.imag**2, nfft, axis=1)[:, : max_lag + 1]
    del zf
    mf = sfft.rfft(mask.astype(np.float32), nfft, axis=1)
    pairs = np.rint(sfft.irfft(mf.real**2 + mf.imag**2, nfft, axis=1)[:, : max_lag + 1])
    var = num[:, :1] / np.maximum(pairs[:, :1], 1)  # (C, 1) lag-0 variance
    acf = (num / np.maximum(pairs, 1)) / np.maximum(var, 1e-12)
    return acf.astype(np.float32), pairs.astype(np.float32)  # (C, L) each


def _candidates(acf: np.ndarray, pairs: np.ndarray, lag_cap: np.ndarray, calendar: list[int]) -> np.ndarray:
    """Candidate periods per row: calendar periods, the best ACF peaks and their fundamental."""
    C, L = acf.shape
    k = np.arange(L)  # (L,)
    raw = acf
    if L > 5:  # noise splits the broad peak of a long period: find peaks on a smoothed ACF
        smooth = acf.copy()
        smooth[:, 2:-2] = (acf[:, :-4] + 2 * acf[:, 1:-3] + 3 * acf[:, 2:-2] + 2 * acf[:, 3:-1] + acf[:, 4:]) / 9.0
        acf = np.where(k >= SMOOTH_FROM_LAG, smooth, acf)
    inner = acf[:, 1:-1]
    peak = np.zeros((C, L), bool)
    peak[:, 1:-1] = (inner >= acf[:, :-2]) & (inner > acf[:, 2:]) & (inner > 0)
    peak &= (k >= 2)[None, :] & (k[None, :] <= lag_cap[:, None]) & (pairs >= 8)
    # rank peaks by a lower confidence bound: ACF at long lags rests on few pairs
    score = np.where(peak, acf - 2.0 / np.sqrt(np.maximum(pairs, 1)), -np.inf)
    n_top = min(N_FREE_PEAKS, L)
    top = np.argpartition(-score, n_top - 1, axis=1)[:, :n_top]  # (C, n_top)
    top_ok = np.isfinite(np.take_along_axis(score, top, 1))
    free = [np.where(top_ok[:, j], top[:, j], 0) for j in range(n_top)]
    # fundamental: the first peak nearly as high as the highest one (drops 2p, 3p, ...)
    best_acf = np.take_along_axis(acf, top[:, :1], 1)  # (C, 1)
    fund_mask = peak & (acf >= 0.7 * best_acf)
    fund = np.where(fund_mask.any(1) & top_ok[:, 0], fund_mask.argmax(1), 0)
    free.append(fund)
    for base in (top[:, 0], fund):  # noise moves a long peak by a step
        for d in (-1, 1):
            nb = np.where(top_ok[:, 0] & (base >= SMOOTH_FROM_LAG), base + d, 0)
            free.append(np.where((nb >= 2) & (nb <= lag_cap), nb, 0))
    free = np.stack(free, 1).astype(np.int64)  # (C, n_free)
    # a period whose autocorrelation is this low cannot reach the strength gate: skip it
    # (and a noise peak at a long lag, resting on few pairs, is not worth a fold either)
    floor = np.clip(3.0 / np.sqrt(np.maximum(np.take_along_axis(pairs, free, 1), 1)), FREE_ACF_MIN, 0.2)  # (C, n_free)
    free = np.where(np.take_along_axis(raw, free, 1) >= floor, free, 0)
    free = _snap(free, calendar)
    cal = np.array(calendar, np.int64)[None, :].repeat(C, 0)  # (C, n_cal)
    cal = np.where(cal <= lag_cap[:, None], cal, 0)
    cands = np.concatenate([cal, free], 1)
    return _dedupe_rows(cands)


def _snap(periods: np.ndarray, calendar: list[int]) -> np.ndarray:
    """Move periods a step or two off a calendar period onto it."""
    for c in calendar:
        tol = _snap_tolerance(c)
        if tol:
            periods = np.where((periods > 0) & (np.abs(periods - c) <= tol), c, periods)
    return periods


def _dedupe_rows(c: np.ndarray) -> np.ndarray:
    """Zero out repeated values within each row (keeps the first occurrence)."""
    srt = np.sort(c, 1)
    dup = np.zeros_like(srt, bool)
    dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
    return np.where(dup, 0, srt)


def _by_period(cands: np.ndarray):
    """Yield (p, rows, slots) for every distinct period > 0 in cands (one sort, no rescans)."""
    K = cands.shape[1]
    flat = cands.ravel()
    idx = np.flatnonzero(flat > 0)
    idx = idx[np.argsort(flat[idx], kind="stable")]
    bounds = np.flatnonzero(np.diff(flat[idx])) + 1
    for seg in np.split(idx, bounds):
        if seg.size:
            yield int(flat[seg[0]]), seg // K, seg % K


def _score_candidates(z: np.ndarray, mask: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """The fold statistics of every candidate, (C, K, N_STATS) (empty slots: no strength).

    One batch per distinct period: a Python loop over periods, never over series.
    """
    stats = np.zeros(cands.shape + (N_STATS,))
    stats[..., LOO], stats[..., PVAL] = -1.0, 1.0
    for p, rows, slots in _by_period(cands):
        stats[rows, slots] = _fold_strength(z[rows], mask[rows], p)  # rows are distinct
    return stats


def _fold(z: np.ndarray, mask: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold rows by p, aligned on the last column, and remove each cycle's level.

    Returns points per cycle (r, n_cyc), and per phase (r, p): points, sum, sum of squares.
    """
    r, T = z.shape
    n_cyc = -(-T // p)
    pad = n_cyc * p - T
    zz = np.zeros((r, n_cyc * p), np.float32)
    mm = np.zeros((r, n_cyc * p), np.float32)
    zz[:, pad:] = z
    mm[:, pad:] = mask
    zz = zz.reshape(r, n_cyc, p)  # (r, n_cyc, p)
    mm = mm.reshape(r, n_cyc, p)
    cyc_n = mm.sum(2)  # (r, n_cyc)
    level = zz.sum(2) / np.maximum(cyc_n, 1)
    zz -= level[:, :, None]
    zz *= mm  # cycle-centred, 0 at gaps
    ph_n = mm.sum(1)  # (r, p)
    ph_sum = zz.sum(1)
    zz *= zz
    return cyc_n, ph_n, ph_sum, zz.sum(1)


def _nested_pvals(
    z: np.ndarray, mask: np.ndarray, cands: np.ndarray, stats: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """P[i, a, b]: F-test p-value that period cands[i, a] beats its exact divisor cands[i, b], and
    G[i, a, b]: the share of the divisor's held-out error that the multiple removes.

    Within the fold by the multiple m, the profile is tested against its own average over the
    m / d repeats of the divisor d (nested models with the same cycle levels). P is 1 elsewhere.
    G compares both profiles' leave-one-out errors in that same fold, so on the same variance:
    each fold has its own cycle levels, and a daily fold's levels absorb a weekday / weekend step
    that the weekly fold must explain with its profile (shares from different folds are not
    comparable). G is -inf where not computed.
    """
    C, K = cands.shape
    out = np.ones((C, K, K), np.float32)
    gain = np.full((C, K, K), -np.inf, np.float32)
    slot_of = {p: (rows, slots) for p, rows, slots in _by_period(cands)}
    for m, (rows, a_idx) in slot_of.items():
        divs = [d for d in slot_of if 2 <= d < m and m % d == 0]
        if not divs:
            continue
        _, ph_n, ph_sum, ph_sq = _fold(z[rows], mask[rows], m)  # (r, m) each
        loo_m = _loo_ss(ph_n, ph_sum, ph_sq)  # (r,) held-out error of m's profile
        st = stats[rows, a_idx]  # (r, N_STATS) of m
        sigma2 = st[:, SSR] / np.maximum(st[:, DFR], 1)
        prof = ph_sum / np.maximum(ph_n, 1)
        pos = np.full(C, -1, np.int64)
        pos[rows] = np.arange(rows.size)  # row -> position in this batch
        for d in divs:
            d_rows, d_slots = slot_of[d]
            both = pos[d_rows] >= 0  # rows holding both m and d
            if not both.any():
                continue
            i = pos[d_rows[both]]
            k = m // d
            w_d = ph_n[i].reshape(-1, k, d).sum(1)  # (b, d)
            prof_d = ph_sum[i].reshape(-1, k, d).sum(1) / np.maximum(w_d, 1)
            dev = prof[i] - np.tile(prof_d, (1, k))  # (b, m)
            chi = (ph_n[i] * dev * dev).sum(1)
            df1 = (ph_n[i] > 0).sum(1) - (w_d > 0).sum(1)
            dfr = st[i, DFR]
            ok = (df1 >= 1) & (dfr >= 1)
            # rows are unit-variance: a residual variance under 1e-9 is a perfect fit
            f = chi / np.maximum(df1, 1) / np.maximum(sigma2[i], 1e-9)
            pv = np.where(ok, fdtrc(np.maximum(df1, 1), np.maximum(dfr, 1), f), 1.0)
            out[d_rows[both], a_idx[i], d_slots[both]] = pv
            loo_d = _loo_ss(w_d, ph_sum[i].reshape(-1, k, d).sum(1), ph_sq[i].reshape(-1, k, d).sum(1))
            g = 1.0 - loo_m[i] / np.maximum(loo_d, 1e-12)
            gain[d_rows[both], a_idx[i], d_slots[both]] = np.where(ok, g, -np.inf)
    return out, gain


def _loo_ss(ph_n: np.ndarray, ph_sum: np.ndarray, ph_sq: np.ndarray) -> np.ndarray:
    """Leave-one-out squared error of a phase profile, per row: each point predicted by the mean
    of its phase's other points (n / (n - 1) x its in-sample residual; a lone point by 0)."""
    ssw = np.maximum(ph_sq - ph_sum * ph_sum / np.maximum(ph_n, 1), 0.0)
    infl = np.where(ph_n > 1, ph_n / np.maximum(ph_n - 1, 1), 0.0)
    return (ssw * infl * infl + ph_sq * (ph_n <= 1)).sum(1).astype(np.float64)


def _fold_strength(z: np.ndarray, mask: np.ndarray, p: int) -> np.ndarray:
    """Fold rows by p (aligned on the last point): level per cycle, then profile per phase.

    Returns, per row, the adjusted share of variance the phase profile explains beyond the
    cycle levels (about 0 for noise, whatever p), its leave-one-out share (each point
    predicted by the mean of the same phase in the other cycles: it does not reward a long
    period folded over few cycles, which makes it the one to compare periods by) and the
    F-test p-value of the profile (the significance gate), plus the residual sum of squares
    and its degrees of freedom (to test a multiple against its divisor). Returns (r, N_STATS).
    """
    r = z.shape[0]
    cyc_n, ph_n, ph_sum, ph_sq = _fold(z, mask, p)
    ph_ssw = np.maximum(ph_sq - ph_sum * ph_sum / np.maximum(ph_n, 1), 0.0)  # within phase
    ss_tot = ph_sq.sum(1).astype(np.float64)  # (r,)
    ss_res = ph_ssw.sum(1).astype(np.float64)
    # leave-one-out residual = n / (n - 1) x in-sample residual; lone points cannot be predicted
    infl = np.where(ph_n > 1, ph_n / np.maximum(ph_n - 1, 1), 0.0)
    ss_loo = (ph_ssw * infl * infl + ph_sq * (ph_n <= 1)).sum(1).astype(np.float64)
    n = ph_n.sum(1)
    k_cyc = (cyc_n > 0).sum(1)
    k_ph = (ph_n > 0).sum(1)
    df_res = n - k_ph - k_cyc + 1
    valid = (df_res >= 2) & (ss_tot > 0) & (k_cyc >= MIN_CYCLES)
    tot = np.maximum(ss_tot, 1e-300)
    adj = 1.0 - (ss_res / np.maximum(df_res, 1)) / (tot / np.maximum(n - k_cyc, 1))
    loo = 1.0 - ss_loo / tot
    df_ph = np.maximum(k_ph - 1, 1)
    f = ((ss_tot - ss_res) / df_ph) / np.maximum(ss_res / np.maximum(df_res, 1), 1e-300)
    pval = fdtrc(df_ph, np.maximum(df_res, 1), f)  # F test of the phase profile
    out = np.empty((r, N_STATS))  # (r, N_STATS)
    out[:, ADJ] = np.where(valid, np.clip(adj, 0.0, 1.0), 0.0)
    out[:, LOO] = np.where(valid, loo, -1.0)
    out[:, PVAL] = np.where(valid, pval, 1.0)
    out[:, SSR] = ss_res
    out[:, DFR] = np.where(valid, df_res, 0.0)
    return out


def _is_multiple(big: np.ndarray, small: np.ndarray) -> np.ndarray:
    """big is (within a step, or 2% for long periods) an integer multiple >= 2 of small."""
    small = np.maximum(small, 1)
    q = np.rint(big / small)
    return (q >= 2) & (np.abs(big - q * small) <= np.maximum(1.0, 0.02 * big))


def _select(
    cands: np.ndarray,
    stats: np.ndarray,
    good: np.ndarray,
    nested: np.ndarray,
    gain: np.ndarray,
    on_calendar: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick the period per row among the good candidates: best leave-one-out, then harmonics.

    A multiple and its divisor are compared in the multiple's fold (``gain``, see
    :func:`_nested_pvals`), never by shares from their own folds.
    """
    C, K = cands.shape
    rows = np.arange(C)
    adj, loo = stats[..., ADJ], stats[..., LOO]
    s = np.where(good, loo, -np.inf)
    best = s.argmax(1)
    has = good[rows, best]
    p_best = cands[rows, best]
    # a divisor is the real period when the winner does not beat it significantly (nested F
    # test; 2p folds as well as p) or does not predict held-out points clearly better
    not_beaten = (nested[rows, best, :] >= NESTED_ALPHA) | (gain[rows, best, :] < MULTIPLE_GAIN)  # (C, K)
    divides = good & _is_multiple(p_best[:, None], cands) & not_beaten
    j = np.where(divides, cands, np.iinfo(np.int64).max).argmin(1)
    j = np.where(divides[rows, j], j, best)
    # a multiple that is significant and predicts held-out points clearly better in its own fold
    # is the real period (a weekly profile over its daily part, a weekday / weekend step)
    beats = (nested[rows, :, j] < NESTED_ALPHA) & good & _is_multiple(cands, cands[rows, j][:, None])  # (C, K)
    wider = beats & (gain[rows, :, j] >= MULTIPLE_GAIN)
    jm = np.where(wider, gain[rows, :, j], -np.inf).argmax(1)
    j_final = np.where(wider[rows, jm], jm, j)
    period = np.where(has, cands[rows, j_final], 0)
    strength = np.where(has, adj[rows, j_final], 0.0)
    # second period: the best other candidate that is neither a divisor nor a multiple of it
    related = _is_multiple(cands, period[:, None]) | _is_multiple(period[:, None], cands)
    other = good & ~related & (cands != period[:, None]) & has[:, None]
    j2 = np.where(other, s, -np.inf).argmax(1)
    second = np.where(other[rows, j2], cands[rows, j2], 0)
    # ... before it, a significant calendar multiple that did not win (a weekly step over a daily
    # period, with too few weeks to predict held-out points better): the detector may still use
    # it (a free multiple that is significant is mostly a one-off event folded onto itself)
    kept = beats & on_calendar & ~wider[rows, jm][:, None] & has[:, None]
    jw = np.where(kept, gain[rows, :, j], -np.inf).argmax(1)
    second = np.where(kept[rows, jw], cands[rows, jw], second)
    # ... and first, for a weekly period over a daily one, the daily cycle
    sub = good & _is_multiple(period[:, None], cands) & has[:, None]
    js = np.where(sub, adj, -np.inf).argmax(1)
    second = np.where(sub[rows, js], cands[rows, js], second)
    return period.astype(np.int64), strength, second.astype(np.int64)


def cycle_profiles(matrix: np.ndarray, period: int, *, bins: int = 0) -> np.ndarray:
    """Mean cycle of each row folded by ``period`` (aligned on the last column), z-normalised.

    Rows are detrended and outlier-clipped as for detection. ``bins`` > 0 averages the phases
    into that many equal bins (long periods such as 2016 five-minute steps). Rows without a
    usable profile come back as zeros. Returns (S, bins or period) float32.
    """
    x = np.asarray(matrix, dtype=np.float64)
    S, T = x.shape
    p = int(period)
    out_w = bins if 0 < bins < p else p
    if S == 0 or p < 2:
        return np.zeros((S, out_w), np.float32)
    mask = np.isfinite(x)
    z, ok = _standardise(x, mask)  # (S, T)
    n_cyc = -(-T // p)
    pad = n_cyc * p - T
    zz = np.zeros((S, n_cyc * p), np.float32)
    mm = np.zeros((S, n_cyc * p), np.float32)
    zz[:, pad:], mm[:, pad:] = z, mask
    prof = zz.reshape(S, n_cyc, p).sum(1) / np.maximum(mm.reshape(S, n_cyc, p).sum(1), 1)  # (S, p)
    if out_w < p:  # average phases into bins
        edges = (np.arange(p) * out_w) // p  # (p,) bin of each phase
        counts = np.bincount(edges, minlength=out_w).astype(np.float32)
        starts = np.searchsorted(edges, np.arange(out_w))  # phases of a bin are contiguous
        prof = np.add.reduceat(prof, starts, axis=1) / counts
    prof = prof - prof.mean(1, keepdims=True)
    sd = prof.std(1, keepdims=True)
    ok &= sd[:, 0] > 1e-9
    prof = np.where(ok[:, None], prof / np.where(sd > 1e-9, sd, 1.0), 0.0)
    return prof.astype(np.float32)
