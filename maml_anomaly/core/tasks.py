"""Support/query windows and per-task normalisation, shared by meta-training and scoring.

A *window* is a contiguous run of one series' grid values, ``max_lag + R + Q`` long:

    [ lag history | R recent targets, the last K = support | query targets ]
      max_lag       R = recent_len(K, Q): a week, >= K        Q = one calendar day of points

Each target's inputs are the values ``lags`` steps before it; query inputs are the OBSERVED
values (one-step-ahead, exactly as daily scoring forecasts a day). The recent targets give the
adapted model's residual scale (scoring divides residuals by it). Training cuts windows at random
places in history; scoring cuts the window that ends with the scored day. Both go through
:func:`make_windows`, so normalisation and imputation are the same code path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

SECONDS_PER_DAY = 86_400
MAD_TO_SD = 1.4826  # MAD of a normal sample times this estimates its standard deviation
MEAN_AD_TO_SD = 1.2533  # same for the mean absolute deviation
SCALE_FLOOR = 1e-3  # scale never below this fraction of the window's largest |value|
TARGET_CLIP = 10.0  # normalised inputs and corrections are clipped to +-this
MAX_Z = 1e100  # normalised values beyond this are equally far out: later squares and sums stay finite


@dataclass(frozen=True)
class LagSpec:
    """The lags that form a forecaster's inputs; fixed per cluster so the input width is fixed."""

    period: int
    lags: tuple[int, ...]  # sorted, unique, all >= 1
    second: int = 0  # a second seasonal period (a week over a day, a day in a week); 0 = none

    @property
    def n_inputs(self) -> int:
        return len(self.lags)

    @property
    def max_lag(self) -> int:
        return max(self.lags)

    def to_dict(self) -> dict:
        return {"period": int(self.period), "lags": [int(v) for v in self.lags], "second": int(self.second)}

    @classmethod
    def from_dict(cls, data: dict) -> "LagSpec":
        return cls(
            period=int(data["period"]), lags=tuple(int(v) for v in data["lags"]), second=int(data.get("second", 0))
        )


def lag_spec(period: int, *, n_recent: int = 6, history: int | None = None, second: int = 0) -> LagSpec:
    """Recent lags 1..n_recent, plus seasonal lags p-1, p, p+1 (and 2p, 2p+1 when history allows).

    ``history`` is the number of grid points a typical series of the cluster has before a task's
    first support target; ``2p`` is only used when it fits, so long periods do not starve tasks.
    Without a period (p = 0) twice as many recent lags stand in for the seasonal ones. A
    ``second`` period s (see :func:`cluster_second_period`) adds s-1, s, s+1 (and 2s, 2s+1 under
    the same rule): the reference can then take its step from either cycle (:func:`make_windows`).
    """
    if period < 0 or n_recent < 1 or second < 0:
        raise ValueError(f"period, second must be >= 0 and n_recent >= 1, got {period}, {second}, {n_recent}")
    if period == 0:
        return LagSpec(period=0, lags=tuple(range(1, 2 * n_recent + 1)))
    lags = set(range(1, n_recent + 1))
    for p in (period, second) if second > 0 else (period,):
        lags |= {max(p - 1, 1), p, p + 1}
        if history is None or history >= 2 * p + 1:
            lags |= {2 * p, 2 * p + 1}
    return LagSpec(period=int(period), lags=tuple(sorted(lags)), second=int(second))


MIN_TRAINING_QUERY = 8  # query points of a meta-training task even where a day holds fewer


def training_query_len(query_len: int, k_shot: int, room: int | None = None) -> int:
    """Query points of a meta-training task: the scored day, at most 2K points, and at least 8 where
    the cluster's series have ``room`` for them (None: no limit; see :func:`training_room`).

    MAML's objective needs some query points after the support, not a whole day of a 5-minute
    series: a shorter query lets a short history (NAB's probation, two days) hold windows with
    the seasonal lags. A daily series' day is one point, and one query point per task made a
    noisy meta-gradient: with the next 8 points (each forecast one step ahead from observed lags
    by the same adapted weights) the sample's daily clusters forecast their scored days with an
    MAE ratio to seasonal naive of 0.70 / 0.80 (seeds 0 / 1) instead of 0.81 / 0.87. Short
    histories keep their seasonal lags first: the longer query only takes the room they leave.
    """
    day = max(1, min(int(query_len), 2 * int(k_shot)))
    longer = min(MIN_TRAINING_QUERY, 2 * int(k_shot), int(room) if room is not None else MIN_TRAINING_QUERY)
    return max(day, longer)


def training_room(spec: LagSpec, k_shot: int, lengths: np.ndarray) -> int:
    """Query points a cluster's typical (median) series holds after a window's lag history and
    support with as many more window starts (the fit rule of :func:`choose_lag_spec`)."""
    typical = int(np.median(lengths)) if np.size(lengths) else 0
    return (typical - spec.max_lag - k_shot) // 2


def training_window_width(spec: LagSpec, k_shot: int, query_len: int, room: int | None = None) -> int:
    """Columns of a meta-training window: lag history, K support, a training query."""
    return window_width(spec, k_shot, training_query_len(query_len, k_shot, room), n_recent=k_shot)


def cluster_k_shot(k_shot: int, period: int, per_period: bool) -> int:
    """K of a cluster: the configured ``k_shot``, or with ``per_period`` one period of points where
    the cluster has a period (the seed's design: the support then spans one whole cycle)."""
    return period if per_period and period > 0 else k_shot


def choose_lag_spec(
    period: int, lengths: np.ndarray, k_shot: int, query_len: int, *, n_recent: int = 6, second: int = 0
) -> LagSpec:
    """The most seasonal lag set whose windows fit the cluster's typical series.

    Tries recent + seasonal lags of both periods (``second`` > 0) with 2p and 2s, then without
    2p and 2s, then the same with the period alone, then recent lags only; a spec fits when the
    median series holds a training window plus as many more distinct window starts.
    """
    typical = float(np.median(lengths)) if np.size(lengths) else 0.0
    candidates = (
        [
            lag_spec(period, n_recent=n_recent, second=second),
            lag_spec(period, n_recent=n_recent, history=0, second=second),
        ]
        if second > 0
        else []
    )
    candidates += [lag_spec(period, n_recent=n_recent), lag_spec(period, n_recent=n_recent, history=0)]
    candidates.append(lag_spec(0, n_recent=n_recent))
    q = training_query_len(query_len, k_shot, room=0)  # the day: lags come before a longer query
    for spec in candidates:
        if typical >= training_window_width(spec, k_shot, query_len, room=0) + q:
            return spec
    return candidates[-1]


MAX_SECOND_SPAN_S = 7 * SECONDS_PER_DAY  # a second period spans at most a week ...
MAX_SECOND_POINTS = 2016  # ... and at most this many points (a week of 5-minute steps): bounded windows
MIN_SECOND_SHARE = 0.25  # share of a cluster's series that must show the second period


def cluster_second_period(period: int, seconds: np.ndarray, step_seconds: float) -> int:
    """The second seasonal period a cluster's lags use: the most common ``second_period`` of its
    series (clusters.parquet) that is a multiple of the cluster's period, spans at most a week
    and :data:`MAX_SECOND_POINTS` points, held by at least a quarter of its series; else 0.

    A daily cluster whose series have a weekly pattern gets the week; a daily series' year would
    make windows a year long and is never used. A divisor (a weekly cluster's day, a daily
    cluster's half-day harmonic) is not used: the period's own lags already hold its cycle, and
    on the sample (seed 0, 300 iterations) those lags made the held-out query MSE of the weekly
    cluster 0.051 -> 0.080 and of the 5-minute one 0.148 -> 0.248.
    """
    s = np.asarray(seconds, dtype=np.int64)
    if period <= 0 or s.size == 0 or not np.isfinite(step_seconds) or step_seconds <= 0:
        return 0
    related = (s > period) & (s % period == 0)
    related &= (s * step_seconds <= MAX_SECOND_SPAN_S) & (s <= MAX_SECOND_POINTS)
    if related.sum() < MIN_SECOND_SHARE * s.size:
        return 0
    values, counts = np.unique(s[related], return_counts=True)
    return int(values[np.argmax(counts)])  # ties: the shorter one


def query_len_for_step(step_seconds: float) -> int:
    """The most grid points one calendar day can hold at this step: the query length of a task."""
    if not np.isfinite(step_seconds) or step_seconds <= 0:
        return 1
    return max(1, int(np.ceil(SECONDS_PER_DAY / step_seconds)))


@dataclass(frozen=True)
class Tasks:
    """A batch of B tasks, normalised per task from its support window only.

    Targets are normalised and clipped; a missing target has weight 0 (and value 0 so it cannot
    poison a masked loss with NaN). ``query_values`` keeps the unclipped normalised query values
    (NaN where missing) for residuals and scores. The ``recent`` pairs are the R >= K targets just
    before the query (the support is their last K): scoring measures the adapted model's
    residual scale on them.
    """

    x_support: np.ndarray  # (B, K, D) float32
    y_support: np.ndarray  # (B, K) float32
    w_support: np.ndarray  # (B, K) float32, 1 observed / 0 missing
    x_query: np.ndarray  # (B, Q, D) float32
    y_query: np.ndarray  # (B, Q) float32
    w_query: np.ndarray  # (B, Q) float32
    query_values: np.ndarray  # (B, Q) float64, normalised, unclipped, NaN = missing
    recent_values: np.ndarray  # (B, R) float64, same for the recent targets
    x_recent: np.ndarray  # (B, R, D) float32
    y_recent: np.ndarray  # (B, R) float32
    w_recent: np.ndarray  # (B, R) float32
    base_recent: np.ndarray  # (B, R) float64, the reference forecast the net corrects (see make_windows)
    base_query: np.ndarray  # (B, Q) float64, same for the query
    naive_query: np.ndarray  # (B, Q) float64, seasonal naive (the value a period, or a step, ago)
    naive_recent: np.ndarray  # (B, R) float64, same for the recent targets
    last_recent: np.ndarray  # (B, R) float64, the last value before each recent target (imputed)
    last_query: np.ndarray  # (B, Q) float64, same for the query
    z_window: np.ndarray  # (B, W) float64, the normalised window, imputed, unclipped (lag_inputs reads it)
    centre: np.ndarray  # (B,) float64
    scale: np.ndarray  # (B,) float64, > 0 where the support window had data
    n_support_observed: np.ndarray  # (B,) int64, observed support targets
    use_second: np.ndarray  # (B,) bool: the reference takes its step from the second period (see make_windows)

    def take(self, which: np.ndarray) -> "Tasks":
        """The tasks selected by a boolean mask or index array (every field has tasks first)."""
        return Tasks(**{f.name: getattr(self, f.name)[which] for f in fields(self)})

    @property
    def n_tasks(self) -> int:
        return self.x_support.shape[0]

    @property
    def y_query_abs(self) -> np.ndarray:
        """(B, Q) float64 normalised query targets (clipped), reference added back."""
        return self.y_query.astype(np.float64) + self.base_query

    def denormalise(self, z: np.ndarray) -> np.ndarray:
        """Map normalised values (B, ...) back to the series' own units."""
        shape = (-1,) + (1,) * (z.ndim - 1)
        return self.centre.reshape(shape) + self.scale.reshape(shape) * z


def reference_lag(spec: LagSpec) -> int:
    """The lag whose value is the seasonal-naive reference: the period, or 1 without one."""
    return spec.period if spec.period > 0 else 1


RECENT_DAYS = 7  # days of recent one-step residuals that give a sub-daily series' residual scale


def recent_len(k_shot: int, query_len: int) -> int:
    """R: targets before the query whose residuals give the residual scale (a week, at least K).

    A day of hourly residuals (24) gives a scale with about 25% error, which makes every score
    heavy-tailed; a week (168) cuts that to about 10%. Daily series use their K support points and
    the K before them: points the adaptation did not fit, on which scoring checks the net against
    the simple references (with the support alone, in sample, the net was kept on daily series
    whose forecasts were up to 6x worse than seasonal naive's).
    """
    return max(k_shot, RECENT_DAYS * query_len if query_len > 1 else 2 * k_shot)


def window_width(spec: LagSpec, k_shot: int, query_len: int, n_recent: int | None = None) -> int:
    """Columns of a task window: lag history, R recent targets (support = their last K), query.

    ``n_recent`` = R, by default :func:`recent_len` (scoring); meta-training windows use R = K
    (only the support and the query matter there).
    """
    return spec.max_lag + (recent_len(k_shot, query_len) if n_recent is None else n_recent) + query_len


def nan_median_rows(a: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN for an all-NaN row). Sort-based, no per-row loop."""
    # (B, W) -> (B,)
    s = np.sort(a, axis=1)  # NaN sorts last
    n = np.isfinite(s).sum(axis=1)
    lo = np.clip((n - 1) // 2, 0, a.shape[1] - 1)
    hi = np.clip(n // 2, 0, a.shape[1] - 1)
    rows = np.arange(a.shape[0])
    med = 0.5 * (s[rows, lo] + s[rows, hi])
    return np.where(n > 0, med, np.nan)


def robust_centre_scale(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and a robust standard deviation per row of (B, W), floored so constant rows work.

    The scale is the MAD (normal-consistent); where more than half the values are identical
    (MAD = 0, e.g. sparse counts) the mean absolute deviation stands in; the floor is relative to
    the row's largest |value|, so multiplying a series by any c > 0 multiplies both by c.
    An all-zero row gets scale 1.
    """
    centre = nan_median_rows(a)  # (B,)
    dev = np.abs(a - centre[:, None])  # (B, W)
    mad = nan_median_rows(dev) * MAD_TO_SD
    finite = np.isfinite(a)
    n = finite.sum(axis=1)
    mean_ad = np.where(finite, dev, 0.0).sum(axis=1) / np.maximum(n, 1) * MEAN_AD_TO_SD
    peak = np.where(finite, np.abs(a), 0.0).max(axis=1, initial=0.0)
    scale = np.where(mad > 0, mad, mean_ad)
    scale = np.maximum(scale, SCALE_FLOOR * peak)
    scale = np.where(peak > 0, scale, 1.0)
    big = np.finfo(np.float64).max  # sums of values near the float limit overflow: saturate instead
    return np.clip(centre, -big, big), np.minimum(scale, big)


def _forward_fill(a: np.ndarray) -> np.ndarray:
    """Causal fill along axis 1: each NaN takes the last earlier finite value (leading NaN stay)."""
    # (B, W) -> (B, W)
    idx = np.where(np.isfinite(a), np.arange(a.shape[1])[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    filled = np.take_along_axis(a, idx, axis=1)
    return filled


def make_windows(
    windows: np.ndarray, spec: LagSpec, k_shot: int, n_query: int | None = None, *, clip: float = TARGET_CLIP
) -> Tasks:
    """Cut (support, query) tasks from raw windows (B, W), W = max_lag + R + Q.

    ``n_query`` = Q (default: everything after max_lag + K, i.e. R = K). Centre and scale come
    from the values before the query only (lag history and recent targets). Missing inputs are
    imputed by carrying the last observed value forward inside the window, and by the centre
    (0 after normalisation) before the first observation: causal, so a forecast never sees the
    future, and identical in training and scoring.

    The net predicts a correction to a *reference* forecast from unclipped values: the last value
    plus the cycle's step (``y[t-1] + step``), or the last value without a period. The step is
    last cycle's, ``y[t-p] - y[t-p-1]``, confirmed by the cycle before where the lags hold it
    (:func:`seasonal_step`).
    Its inputs are the lags relative to the last value (lag 1 keeps the level), clipped
    (:func:`lag_inputs`). So a level shift moves the reference at once instead of saturating the
    inputs: after a jump the forecasts follow the new level one step later, as a person reading
    the chart would. The step is not clipped: a series that sits flat most of the day and jumps
    at fixed hours (a noise-free square wave, periodic spikes) has a tiny robust scale, and a
    clipped step missed every one of its regular jumps; a one-off jump a period ago (an outage's
    edge) is not confirmed by the cycle before and does not come back.
    """
    windows = np.asarray(windows, dtype=np.float64)
    n_tasks, width = windows.shape
    n_query = width - spec.max_lag - k_shot if n_query is None else n_query
    lead = width - n_query  # columns before the query
    n_recent = lead - spec.max_lag
    if k_shot < 1 or n_query < 1 or n_recent < k_shot:
        raise ValueError(f"window width {width} does not fit max_lag={spec.max_lag}, k={k_shot}, q={n_query}")
    centre, scale = robust_centre_scale(windows[:, :lead])  # (B,), (B,)
    safe_centre = np.where(np.isfinite(centre), centre, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):  # a value near the float limit: clipped just below
        z = np.clip((windows - safe_centre[:, None]) / scale[:, None], -MAX_Z, MAX_Z)  # (B, W), NaN = missing
    z_in = np.nan_to_num(_forward_fill(z), nan=0.0)  # (B, W) imputed for inputs, unclipped

    targets = np.arange(spec.max_lag, width)  # (R+Q,) columns of the targets
    x, base, naive = lag_inputs(z_in, targets, spec, clip=clip)  # (B, R+Q, D), (B, R+Q), (B, R+Q)
    y_raw = z[:, targets]  # (B, R+Q)
    use_second = choose_second_reference(y_raw[:, :n_recent], base[:, :n_recent], z_in, targets[:n_recent], spec)
    if use_second.any():
        base = np.where(use_second[:, None], second_reference(z_in, targets, spec), base)
    observed = np.isfinite(y_raw)
    y = np.clip(np.where(observed, y_raw - base, 0.0), -clip, clip).astype(np.float32)
    w = observed.astype(np.float32)
    r, k = n_recent, k_shot
    return Tasks(
        x_support=np.ascontiguousarray(x[:, r - k : r]),
        y_support=np.ascontiguousarray(y[:, r - k : r]),
        w_support=np.ascontiguousarray(w[:, r - k : r]),
        x_query=np.ascontiguousarray(x[:, r:]),
        y_query=np.ascontiguousarray(y[:, r:]),
        w_query=np.ascontiguousarray(w[:, r:]),
        query_values=np.ascontiguousarray(y_raw[:, r:]),
        recent_values=np.ascontiguousarray(y_raw[:, :r]),
        x_recent=np.ascontiguousarray(x[:, :r]),
        y_recent=np.ascontiguousarray(y[:, :r]),
        w_recent=np.ascontiguousarray(w[:, :r]),
        base_recent=np.ascontiguousarray(base[:, :r]),
        base_query=np.ascontiguousarray(base[:, r:]),
        naive_query=np.ascontiguousarray(naive[:, r:]),
        naive_recent=np.ascontiguousarray(naive[:, :r]),
        last_recent=np.ascontiguousarray(z_in[:, targets[:r] - 1]),
        last_query=np.ascontiguousarray(z_in[:, targets[r:] - 1]),
        z_window=z_in,
        centre=centre,
        scale=scale,
        n_support_observed=observed[:, r - k : r].sum(axis=1).astype(np.int64),
        use_second=use_second,
    )


def lag_inputs(
    z_in: np.ndarray,
    targets: np.ndarray,
    spec: LagSpec,
    *,
    clip: float = TARGET_CLIP,
    use_second: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Net inputs, reference forecast and seasonal naive for target columns of normalised windows.

    z_in (B, W) imputed, unclipped; targets (T,) column indices >= max_lag. Returns x (B, T, D)
    float32 (lags relative to the most recent one, which keeps the level; clipped), the reference
    (B, T) float64 the net corrects, and seasonal naive (B, T) float64 (see :func:`make_windows`).
    ``use_second`` (B,) bool: tasks whose reference takes the second period's step (``Tasks.use_second``).
    """
    lagged = z_in[:, targets[:, None] - np.asarray(spec.lags)[None, :]]  # (B, T, D)
    col = {lag: i for i, lag in enumerate(spec.lags)}
    last = lagged[..., 0]  # (B, T) the most recent lag (lag 1 in every spec lag_spec makes)
    base = last
    p = spec.period
    if p > 0 and {p, p + 1} <= col.keys():  # unclipped: see make_windows
        step = lagged[..., col[p]] - lagged[..., col[p + 1]]
        if {2 * p, 2 * p + 1} <= col.keys():
            step = seasonal_step(step, lagged[..., col[2 * p]] - lagged[..., col[2 * p + 1]])
        base = last + step
    if use_second is not None and use_second.any():
        base = np.where(np.asarray(use_second)[:, None], second_reference(z_in, targets, spec), base)
    naive = lagged[..., col.get(reference_lag(spec), 0)]
    x = lagged - last[..., None]
    x[..., 0] = last
    return np.clip(x, -clip, clip).astype(np.float32), base, naive


def second_reference(z_in: np.ndarray, targets: np.ndarray, spec: LagSpec) -> np.ndarray:
    """The reference with the second period's step, y[t-1] + (y[t-s] - y[t-s-1]) confirmed by the
    cycle before (:func:`seasonal_step`) where the lags hold 2s: (B, T) float64 for the target
    columns; the plain reference's last value where the spec has no second period."""
    have = set(spec.lags)
    last = z_in[:, targets - 1]  # (B, T)
    s = spec.second
    if s <= 0 or spec.period <= 0 or not {s, s + 1} <= have:
        return last
    step = z_in[:, targets - s] - z_in[:, targets - s - 1]
    if {2 * s, 2 * s + 1} <= have:
        step = seasonal_step(step, z_in[:, targets - 2 * s] - z_in[:, targets - 2 * s - 1])
    return last + step


def choose_second_reference(
    y_recent: np.ndarray, base_recent: np.ndarray, z_in: np.ndarray, recent_targets: np.ndarray, spec: LagSpec
) -> np.ndarray:
    """(B,) bool: tasks whose reference should take the second period's step, the one whose
    one-step error over the recent targets (before the query) is smaller.

    Where the weekly cycle explains more than the daily one (a weekday / weekend step, a
    different weekend shape), a week-old step foresees the change at midnight on Saturday and
    Monday that yesterday's step cannot; where it does not, yesterday's step is fresher. Scoring
    measures this over the week before the day (both transitions inside), training over the
    K support points. y_recent (B, R) normalised observed targets (NaN = missing).
    """
    n_tasks = y_recent.shape[0]
    if spec.second <= 0 or spec.period <= 0 or not {spec.second, spec.second + 1} <= set(spec.lags):
        return np.zeros(n_tasks, dtype=bool)
    alt = second_reference(z_in, recent_targets, spec)  # (B, R)
    seen = np.isfinite(y_recent)
    n = np.maximum(seen.sum(axis=1), 1)
    err = np.where(seen, np.abs(y_recent - base_recent), 0.0).sum(axis=1) / n
    err_alt = np.where(seen, np.abs(y_recent - alt), 0.0).sum(axis=1) / n
    return err_alt < err


STEP_DISAGREEMENT = 3.0  # normalised units: two cycles' steps this far apart mean a one-off jump


def seasonal_step(last_cycle: np.ndarray, cycle_before: np.ndarray) -> np.ndarray:
    """Last cycle's step, unless the cycle before disagrees by more than 3 normalised units (the
    series' robust spread): then the median of the two and 0, i.e. the smaller of the two where
    they agree in sign, 0 where they do not.

    A one-off jump a period ago (an outage's edge, a spike) then does not come back a period later:
    with last cycle's step alone, yesterday's outage came back today at the hour it began and
    ended, and scoring's cleaning of the points before the day turned that echo into a corrupted
    history that spread from day to day (a sample series' forecasts were off by 12,000 on a normal
    day three days after an outage). A jump that repeats every cycle is kept whole. Below the
    disagreement threshold last cycle's step stands: the median of the two on every point made
    the reference noisier (the sample's forecasts 2-3% worse, its daily cluster no better than
    seasonal naive).
    """
    lo, hi = np.minimum(last_cycle, cycle_before), np.maximum(last_cycle, cycle_before)
    confirmed = np.minimum(np.maximum(lo, 0.0), hi)
    return np.where(np.abs(last_cycle - cycle_before) > STEP_DISAGREEMENT, confirmed, last_cycle)


def gather_windows(
    values: np.ndarray, indptr: np.ndarray, rows: np.ndarray, starts: np.ndarray, width: int
) -> np.ndarray:
    """Windows of ``width`` grid values from many series stored as one buffer plus offsets.

    Row b is series ``rows[b]`` from grid position ``starts[b]`` on; positions before the series'
    first point or after its last are NaN (so a window may hang over either end).
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    lengths = (indptr[1:] - indptr[:-1])[rows]  # (B,)
    pos = starts[:, None] + np.arange(width)[None, :]  # (B, W) grid positions
    inside = (pos >= 0) & (pos < lengths[:, None])
    flat = indptr[rows][:, None] + np.where(inside, pos, 0)  # (B, W) buffer indices
    if values.size == 0:
        return np.full(pos.shape, np.nan)
    return np.where(inside, values[np.minimum(flat, values.size - 1)], np.nan)


def sample_window_starts(
    lengths: np.ndarray, width: int, n: int, rng: np.random.Generator, *, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` (series, start) pairs uniformly over all windows that fit inside a series.

    ``rows`` restricts the draw to those series; series shorter than ``width`` are never drawn.
    Returns (rows (n,), starts (n,)); empty arrays when no series is long enough.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    candidates = np.arange(lengths.size) if rows is None else np.asarray(rows, dtype=np.int64)
    fits = candidates[lengths[candidates] >= width]
    if fits.size == 0 or n <= 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    chosen = fits[rng.integers(0, fits.size, size=n)]  # (n,)
    n_starts = lengths[chosen] - width + 1
    starts = (rng.random(n) * n_starts).astype(np.int64)
    return chosen, np.minimum(starts, n_starts - 1)
