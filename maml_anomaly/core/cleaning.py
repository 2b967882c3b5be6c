"""Cleaning of flagged points out of the later lags, bounded in time and influence: forecasts in
time order where a flagged point enters the lags near its forecast until a change is the new level."""

from __future__ import annotations

import numpy as np

from maml_anomaly.core.adaptation import Adapted, Evidence
from maml_anomaly.core.calibration import Calibration, log_p_to_score, score_to_p
from maml_anomaly.core.references import (
    CANDIDATES,
    LAST_VALUE,
    PLAIN_REFERENCE,
    candidate_forecasts,
    choose_candidate,
)
from maml_anomaly.core.residual_scales import TRAILING_POINTS, trailing_scale
from maml_anomaly.core.tasks import LagSpec, Tasks, lag_inputs, reference_lag


def last_columns(a: np.ndarray, n: int) -> np.ndarray:
    """The last n columns of a (B, m), NaN-padded on the left where m < n."""
    if a.shape[1] >= n:
        return a[:, a.shape[1] - n :]
    return np.concatenate([np.full((a.shape[0], n - a.shape[1]), np.nan), a], axis=1)


MIN_MOVES = 2  # flagged recent moves that must have lasted before a series' flags are read as level changes


def cleaning_pays(tasks: Tasks, recent: np.ndarray, half: np.ndarray) -> np.ndarray:
    """(B,) whether holding flagged points out of the lags suits each series: False where most of
    its recent flagged moves (|deviation| >= ``half`` (B,), normalised) lasted, at least
    :data:`MIN_MOVES` of them (the next value stayed nearer the new value than the forecast).

    Cleaning pays where flagged deviations come back (spikes, outages: the lags keep the normal
    level and the later points are judged against it); on step-like series a flagged move is
    mostly a new level, and holding the lags on the old one for even three points made 1-minute
    telemetry's forecasts four times worse than the last value's. A series that holds exactly the
    same value for most of its recent steps is step-like by definition: its moves are followed
    even where the recent window holds none to learn from (a channel whose first jump in days
    cost three points of a whole step each time).
    """
    y, f = tasks.recent_values, recent  # (B, R)
    moved = np.abs(y[:, :-1] - f[:, :-1]) >= half[:, None]  # (B, R-1)
    nxt = y[:, 1:]
    lasted = np.abs(nxt - y[:, :-1]) < np.abs(nxt - f[:, :-1])
    seen = moved & np.isfinite(nxt)
    n_lasted = (seen & lasted).sum(axis=1)
    steps = np.diff(y, axis=1)  # (B, R-1)
    held_still = (steps == 0).sum(axis=1) * 2 > np.isfinite(steps).sum(axis=1)  # mostly exactly constant
    return ~(((n_lasted >= MIN_MOVES) & (2 * n_lasted > seen.sum(axis=1))) | held_still)


def over_threshold(
    dev: np.ndarray, denom: np.ndarray, cal: Calibration, threshold: float, routine: np.ndarray
) -> np.ndarray:
    """Which deviations (B, n) (normalised units) score at or above the threshold; ``routine`` (B,)
    is the |u| the series' own recent residuals reach routinely (see RoutineTail)."""
    u = np.abs(dev / denom[:, None])
    score = log_p_to_score(cal.log_tail_probability(u))
    return (np.nan_to_num(score, nan=-np.inf) >= threshold) & (np.nan_to_num(u, nan=-np.inf) > routine[:, None])


# candidates after a new level, of [on cleaned lags, on observed lags]: the net's lags straddle two
# levels it never saw, the reference follows the new one; the last observed value stays too
AFTER_NEW_LEVEL = np.isin(
    np.arange(2 * len(CANDIDATES)), [PLAIN_REFERENCE, len(CANDIDATES) + PLAIN_REFERENCE, len(CANDIDATES) + LAST_VALUE]
)

HELD_POINTS = 3  # flagged points (of the last 2 x this many) after which a change is the new level


def shift_accepted_after(query_len: int) -> int:
    """Flagged points after which the observed values enter the lags again: 3 of the last 6,
    whatever the step (``query_len``, the points of a day, no longer matters). It was an hour of
    points: 60 on 1-minute telemetry, where each frequent level change kept the lags on the old
    level for an hour and the forecasts were off by the whole step meanwhile; three flagged
    points of six are already a change (about 2e-6 on clean points at the default threshold)."""
    return HELD_POINTS


def on_observed_lags(
    adapted: Adapted,
    z_seen: np.ndarray,
    z: np.ndarray,
    c: int,
    spec: LagSpec,
    use_second: np.ndarray,
    cleaned: np.ndarray,
) -> np.ndarray:
    """(B, C) the candidates' forecasts of window column ``c`` from the observed lags ``z_seen``:
    ``cleaned`` (the same from the cleaned lags ``z``) where no lag was cleaned, so the two tie exactly."""
    out = cleaned.copy()
    differ = (z_seen[:, c - spec.max_lag : c] != z[:, c - spec.max_lag : c]).any(axis=1)  # (B,)
    if differ.any():
        x, base, naive = lag_inputs(z_seen[differ], np.array([c]), spec, use_second=use_second[differ])
        correction = adapted.take(differ).correction(x)[:, 0]
        out[differ] = candidate_forecasts(correction, base[:, 0], z_seen[differ, c - 1], naive[:, 0])
    return out


def forecast_in_time_order(
    adapted: Adapted,
    evidence: Evidence,
    tasks: Tasks,
    observed: np.ndarray,
    denom: np.ndarray,
    routine: np.ndarray,
    recent: np.ndarray,
    cal: Calibration,
    threshold: float,
    spec: LagSpec,
    hold: np.ndarray,
    *,
    accept_after: int,
    first_scored: int,
) -> np.ndarray:
    """One-step forecasts (B, P+Q) of the last P points before the day and the day's Q points, in
    time order, each by the candidate that forecast the recent points and the day's earlier points
    best (``evidence``, see :func:`~maml_anomaly.core.references.follow_the_day`). Every candidate
    runs twice, on the cleaned lags and on the observed ones; the two are the same forecast wherever
    nothing was cleaned, and the cleaned one is preferred on ties. So
    where flagged moves last (a step-like series without recent history to tell) the day's own
    errors stop the cleaning after a point or two instead of holding each move for three. Each flagged
    point enters later lags at forecast + h^2 / deviation, unless more than ``accept_after`` of the
    last ``2 accept_after`` points inside the day (from column ``first_scored``) were flagged: a new
    level. Counting flags in a trailing window instead of in a row bounds how long the lags can be
    held off the observed values however intermittent the flags: on step-like telemetry a move to a
    new level flagged most, not all, of its points, the run never formed and the forecasts stayed
    on the old level for hours.

    Before the day no run is accepted: those points are read through the seasonal lags, where
    yesterday's accepted outage would come back; the recent lags then hold the cleaned level at
    midnight, and a change that lasted is flagged again for its first points and accepted. But a
    point before the day is only replaced where it is also a jump from its value a period ago
    (``reference_lag``): the first points of the pass read older, uncleaned lags, and after an
    outage just before the pass its forecasts started at the outage's level; replacing every
    normal value that followed by such a forecast locked the whole pass onto the outage (a
    sample series' forecasts were off by 1,400, eighty scales, a week later).
    """
    q_half = np.maximum(cal.quantile(score_to_p(threshold)), routine)  # (B,) band half-width, in scales
    trail = last_columns(
        np.abs(tasks.recent_values - recent)[:, : tasks.recent_values.shape[1] - first_scored], TRAILING_POINTS
    )  # (B, L) ring buffer of the residuals before each point
    z = tasks.z_window.copy()  # (B, W) inputs; flagged points get replaced here
    z_seen = tasks.z_window.copy()  # (B, W) the same, nothing replaced
    first = z.shape[1] - observed.shape[1]  # window column of the first point
    forecast = np.empty_like(observed)
    recent_flags = np.zeros((observed.shape[0], 2 * accept_after), dtype=bool)  # (B, 2a) ring buffer
    ago = reference_lag(spec)  # a period (or a step) ago: the unchanged history confirms a jump
    rows = np.arange(observed.shape[0])
    prior = np.concatenate([evidence.error_sum, evidence.error_sum], axis=1)  # (B, 2C) nothing cleaned there
    day_error, day_count = np.zeros_like(prior), np.zeros(observed.shape[0], dtype=np.int64)
    fixed, settled = evidence.fixed.copy(), np.zeros(observed.shape[0], dtype=bool)
    for i in range(observed.shape[1]):
        c = first + i
        if i > 0:  # a missing point carries the (cleaned) previous value forward, as make_windows does
            z[:, c] = np.where(np.isfinite(observed[:, i]), observed[:, i], z[:, c - 1])
            z_seen[:, c] = np.where(np.isfinite(observed[:, i]), observed[:, i], z_seen[:, c - 1])
        scale_i = trailing_scale(np.concatenate([trail, trail[:, :1]], axis=1), denom)[:, 0]  # (B,) see trailing_scale
        half = q_half * scale_i
        x, base, naive = lag_inputs(z, np.array([c]), spec, use_second=tasks.use_second)
        cleaned = candidate_forecasts(adapted.correction(x)[:, 0], base[:, 0], z[:, c - 1], naive[:, 0])  # (B, C)
        cand = np.concatenate([cleaned, on_observed_lags(adapted, z_seen, z, c, spec, tasks.use_second, cleaned)], 1)
        allowed = np.where(settled[:, None], AFTER_NEW_LEVEL, True)
        pick = choose_candidate(prior + day_error, evidence.count + day_count, fixed, day_count, allowed)
        forecast[:, i] = cand[rows, pick]
        if i >= first_scored:  # the day's points are evidence for the choice of the later ones
            seen = np.isfinite(observed[:, i])
            day_error += np.where(seen[:, None], np.minimum(np.abs(cand - observed[:, i, None]), half[:, None]), 0.0)
            day_count += seen
        dev = observed[:, i] - forecast[:, i]
        flagged = over_threshold(dev[:, None], scale_i, cal, threshold, routine)[:, 0]
        trail = np.concatenate([trail[:, 1:], np.abs(dev)[:, None]], axis=1)  # |dev| >= half where flagged
        recent_flags[:, i % recent_flags.shape[1]] = flagged & (i >= first_scored)
        new_level = recent_flags.sum(axis=1) > accept_after
        replaced = flagged & ~new_level & hold  # (see cleaning_pays)
        if i < first_scored:  # before the day: a jump against the observed history too, else no lock-in
            replaced &= np.abs(observed[:, i] - tasks.z_window[:, c - ago]) >= half
        settled |= new_level
        fixed = np.where(new_level, PLAIN_REFERENCE, fixed)
        with np.errstate(divide="ignore", invalid="ignore"):
            kept = np.where(replaced, half**2 / np.where(replaced, dev, 1.0), 0.0)  # band edge .. ~0 far out
        z[:, c] = np.where(replaced, forecast[:, i] + kept, z[:, c])
    return forecast
