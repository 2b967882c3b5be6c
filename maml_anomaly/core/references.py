"""The forecast scored per task: a share of the adapted net's correction on its reference, or one
of the simple references a user would compare it with (last value, seasonal naive), chosen on the
recent points and revised as the day's points come in."""

from __future__ import annotations

import numpy as np

from maml_anomaly.core.adaptation import Evidence, Forecasts
from maml_anomaly.core.residual_scales import residual_scale
from maml_anomaly.core.tasks import TARGET_CLIP, Tasks

GATES = (1.0, 0.75, 0.5, 0.25, 0.0)  # shares of the net's correction a task may keep, best first on ties
ANCHOR_REFERENCE, ANCHOR_LAST, ANCHOR_NAIVE = 0, 1, 2  # what a forecast stands on (see anchored)
# the candidate forecasters (share of the net's correction, anchor), preferred in this order on ties:
# the net on its reference, then the two simple references a user would check it against
CANDIDATES = tuple((g, ANCHOR_REFERENCE) for g in GATES) + ((0.0, ANCHOR_LAST), (0.0, ANCHOR_NAIVE))
N_NET = len(GATES)  # the first N_NET candidates are the net's shares; the others simple references
PLAIN_REFERENCE = GATES.index(0.0)  # the net's reference alone (a new level: see cleaning)
LAST_VALUE = CANDIDATES.index((0.0, ANCHOR_LAST))
SWITCH_MARGIN = 1.1  # a simple reference replaces the net only where it was more than 10% better
# a first day (no recent points) switches on the day's own errors once this many points are scored:
# the span over which the new-level rule judges a change (3 flagged of 6)
MIN_DAY_POINTS = 6


def anchored(anchor: np.ndarray, reference: np.ndarray, last: np.ndarray, naive: np.ndarray) -> np.ndarray:
    """Per task (anchor (B,)), the forecast it stands on: the reference, the last value or seasonal
    naive; the others (B, ...) broadcast against it."""
    a = np.asarray(anchor).reshape((-1,) + (1,) * (np.ndim(reference) - 1))
    return np.where(a == ANCHOR_LAST, last, np.where(a == ANCHOR_NAIVE, naive, reference))


def candidate_forecasts(
    correction: np.ndarray, reference: np.ndarray, last: np.ndarray, naive: np.ndarray
) -> np.ndarray:
    """(B, C, ...) every candidate's forecast from the net's correction and the references (B, ...)."""
    b = reference.shape[0]
    return np.stack([g * correction + anchored(np.full(b, a), reference, last, naive) for g, a in CANDIDATES], axis=1)


def choose_candidate(
    error_sum: np.ndarray,
    count: np.ndarray,
    fixed: np.ndarray,
    day_count: np.ndarray,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """The candidate with the smallest mean absolute one-step error (``error_sum`` (B, n C, ...): the
    candidates on cleaned lags, then on uncleaned lags, over ``count`` (B, ...) points), a simple
    reference or uncleaned lags only where more than :data:`SWITCH_MARGIN` better; ``fixed`` (B,)
    where the task has no such points yet, or fewer than :data:`MIN_DAY_POINTS` of the day's
    (``day_count``) on a first day. ``allowed`` (B, n C) masks candidates out."""
    mean = error_sum / np.expand_dims(np.maximum(count, 1), 1)
    j = np.arange(mean.shape[1])
    # choosing on a few points is noisy (see shrink_to_reference): the simple references, and any
    # candidate on uncleaned lags (one that follows an anomaly hides it), must be clearly better
    mean[:, (j % len(CANDIDATES) >= N_NET) | (j >= len(CANDIDATES))] *= SWITCH_MARGIN
    if allowed is not None:
        mean = np.where(np.reshape(allowed, np.shape(allowed) + (1,) * (mean.ndim - np.ndim(allowed))), mean, np.inf)
    best = np.argmin(mean, axis=1)  # (B, ...) the first candidate on ties
    evidence = (count > day_count) | (day_count >= MIN_DAY_POINTS)
    return np.where(evidence, best, np.reshape(fixed, (-1,) + (1,) * (best.ndim - 1)))


def held_out_recent(n_recent: int, k_shot: int) -> slice:
    """The recent targets adaptation did not fit: those before the support (none where the support
    is every recent target, as for daily series)."""
    return slice(0, max(n_recent - k_shot, 0))


def shrink_to_reference(tasks: Tasks, forecasts: Forecasts) -> Forecasts:
    """Keep, per task, the candidate forecaster that forecast its recent points best: a share of
    the adapted net's correction on the reference, or one of the simple references (last value,
    seasonal naive).

    The candidate (:data:`CANDIDATES`) minimises the mean absolute one-step error over the recent
    targets the adaptation did not fit (a week of a sub-daily series before its support). So the
    forecast scored is never worse over that week than what a user would compare it with: on a
    noise-free cycle the reference is exact and the net's correction, learned on noisy series of
    the cluster, was a systematic error over a residual scale of almost nothing (NAB's noise-free
    daily square wave: 19% of its clean points flagged); on step-like telemetry the last value is
    the best forecast and a correction learned on other channels was several times worse. On
    series where the net helps its full share stays. A simple reference must beat the net's best
    share by more than 10% (:data:`SWITCH_MARGIN`): chosen on 24 held-out days, the references won
    a quarter of the sample's daily tasks by chance and made its daily forecasts 4% worse. The
    residual scale is measured here, on the forecasts kept.
    """
    corr_r = forecasts.recent - tasks.base_recent  # (B, R)
    y = tasks.recent_values  # (B, R) unclipped, NaN = missing
    held = held_out_recent(y.shape[1], tasks.x_support.shape[1])
    # without held-out points only the net's shares compete, on the support (the previous rule): in
    # sample, ten days of a flatline anomaly made the last value win and the daily forecasts stuck
    # a task without observed held-out points (a series' first day) is judged like that too: on
    # all-missing held-out points every candidate tied at 0 and the net's full share was kept (a
    # step-like channel's first-day forecasts 54x worse than the last value's)
    err = np.abs(candidate_forecasts(corr_r, tasks.base_recent, tasks.last_recent, tasks.naive_recent) - y[:, None])
    count = np.isfinite(y[:, held]).sum(axis=1)  # (B,) held-out points to choose on
    error_sum = np.nansum(err[:, :, held], axis=2)  # (B, C)
    in_sample = np.nansum(err, axis=2) / np.maximum(np.isfinite(y).sum(axis=1), 1)[:, None]
    in_sample[:, N_NET:] = np.inf  # (B, C) the simple references never win in sample
    fixed = np.where(
        count > 0,
        choose_candidate(error_sum, count, np.zeros_like(count), np.zeros_like(count)),
        np.argmin(in_sample, 1),
    )
    evidence = Evidence(fixed=fixed, error_sum=error_sum, count=count)
    gate = np.array([g for g, _ in CANDIDATES])[fixed]
    anchor = np.array([a for _, a in CANDIDATES])[fixed]
    recent = gate[:, None] * corr_r + anchored(anchor, tasks.base_recent, tasks.last_recent, tasks.naive_recent)
    query = gate[:, None] * (forecasts.query - tasks.base_query) + anchored(
        anchor, tasks.base_query, tasks.last_query, tasks.naive_query
    )
    resid = np.minimum(np.abs(recent - y), 2 * TARGET_CLIP)  # as far as the net's clipped targets reach
    return Forecasts(
        query=query, resid_scale=residual_scale(resid), recent=recent, gate=gate, anchor=anchor, evidence=evidence
    )


def follow_the_day(tasks: Tasks, correction: np.ndarray, evidence: Evidence, half: np.ndarray) -> np.ndarray:
    """(B, Q) the query's forecasts from observed lags, each point's by the candidate that forecast
    the recent points and the day's points before it best (see :func:`choose_candidate`);
    ``correction`` (B, Q) the adapted net's, ``half`` (B,) the band's half-width (normalised).

    The day is forecast in time order, so its own earlier points are evidence too: where a task has
    no recent points (a series' first day) the choice made in sample would otherwise stand all day
    however it fares; elsewhere a day unlike the recent week moves the choice only as far as its
    points outweigh the week's. A day's point counts at most the band's half-width: an anomaly's
    size says nothing more about the forecasters, and one outage point outweighed a week of hourly
    errors (the forecast then followed the outage after one point and hid it)."""
    cand = candidate_forecasts(correction, tasks.base_query, tasks.last_query, tasks.naive_query)  # (B, C, Q)
    err = np.minimum(np.abs(cand - tasks.query_values[:, None]), half[:, None, None])
    seen = np.isfinite(tasks.query_values)  # (B, Q)
    # (B, C, Q) the day's errors before each point, summed in time order as the in-time-order loop does
    before = np.concatenate([np.zeros(err.shape[:2] + (1,)), np.cumsum(np.nan_to_num(err), axis=2)[..., :-1]], 2)
    day_count = np.cumsum(seen, axis=1) - seen  # (B, Q)
    pick = choose_candidate(
        evidence.error_sum[:, :, None] + before, evidence.count[:, None] + day_count, evidence.fixed, day_count
    )  # (B, Q)
    return np.take_along_axis(cand, pick[:, None], axis=1)[:, 0]
