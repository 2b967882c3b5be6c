"""Residuals, calibrated scores and flags of a batch of (series, day) tasks, and of input rows.

The pieces live beside this module: :mod:`~maml_anomaly.core.calibration` (tail probabilities,
scores), :mod:`~maml_anomaly.core.adaptation` (adapted forecasts),
:mod:`~maml_anomaly.core.references` (the forecast kept per task),
:mod:`~maml_anomaly.core.residual_scales` (scales, routine tails) and
:mod:`~maml_anomaly.core.cleaning` (flagged points held out of later lags).

Dividing the residual by the window's standard deviation never fires on seasonal series (the
cycle dominates that deviation); dividing by the adapted model's recent error does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

# names re-exported (``X as X``): callers import them from here
from maml_anomaly.core.adaptation import ClusterModel as ClusterModel
from maml_anomaly.core.adaptation import Forecasts, adapt_and_forecast, adapt_support
from maml_anomaly.core.adaptation import huber_loss as huber_loss
from maml_anomaly.core.adaptation import per_task as per_task
from maml_anomaly.core.calibration import MAX_SCORE as MAX_SCORE
from maml_anomaly.core.calibration import MIN_P, Calibration, log_p_to_score, score_to_p
from maml_anomaly.core.calibration import fit_calibration as fit_calibration
from maml_anomaly.core.calibration import p_to_score as p_to_score
from maml_anomaly.core.cleaning import (
    cleaning_pays,
    forecast_in_time_order,
    last_columns,
    over_threshold,
    shift_accepted_after,
)
from maml_anomaly.core.references import follow_the_day, shrink_to_reference
from maml_anomaly.core.residual_scales import TRAILING_POINTS, RoutineTail, trailing_scale, with_day_floor
from maml_anomaly.core.residual_scales import normalised_residuals as normalised_residuals
from maml_anomaly.core.stuck import stuck_log_p
from maml_anomaly.core.tasks import MAX_Z, Tasks, gather_windows, make_windows, window_width

CHUNK_CELLS = 16_000_000  # lag-input cells (tasks x window x lags) per chunk: bounds memory on fine steps

STATUS_OK = "ok"
STATUS_MISSING = "missing_value"
STATUS_INSUFFICIENT = "insufficient_history"
STATUS_UNKNOWN = "unknown_series"
STATUS_OFF_GRID = "off_grid"
STATUS_NO_MODEL = "no_model"
STATUS_ABSENT = "absent"  # an expected series without any row on a scored day (made by the scoring run)
STATUSES = (STATUS_OK, STATUS_MISSING, STATUS_INSUFFICIENT, STATUS_UNKNOWN, STATUS_OFF_GRID, STATUS_NO_MODEL)


@dataclass(frozen=True)
class PointScores:
    """Per-point results in the series' own units; all (B, Q)."""

    y_hat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray  # bool


def finite(a: np.ndarray) -> np.ndarray:
    """a with +-inf replaced by the largest finite float of that sign (NaN stays NaN)."""
    big = np.finfo(np.float64).max
    return np.clip(a, -big, big)


def score_points(tasks: Tasks, forecasts: Forecasts, calibration: Calibration, *, threshold: float) -> PointScores:
    """Residuals -> calibrated tail probability -> score, band and flag (NaN where y missing)."""
    u = normalised_residuals(tasks, forecasts, calibration.scale_floor)  # (B, Q)
    if forecasts.point_scale is not None:  # where the noise rose (see trailing_scale)
        u = (tasks.query_values - forecasts.query) / forecasts.point_scale
    u = np.clip(u, -MAX_Z, MAX_Z)  # an overflowing residual is as far out as any: the largest score, not NaN
    log_p = calibration.log_tail_probability(np.abs(u))
    half = calibration.quantile(score_to_p(threshold))  # |u| at the threshold
    denom = np.maximum(np.nan_to_num(forecasts.resid_scale, nan=np.inf), calibration.scale_floor)
    if forecasts.recent is not None:  # the series' own routine (see RoutineTail)
        routine = RoutineTail.of(tasks, forecasts.recent, denom, calibration)
        log_p = routine.log_tail_probability(np.abs(u))
        half = np.maximum(half, routine.half_width(score_to_p(threshold)))
    p = np.clip(np.exp(log_p), MIN_P, 1.0)
    score = np.where(np.isfinite(u), log_p_to_score(log_p), np.nan)
    point = forecasts.point_scale if forecasts.point_scale is not None else denom[:, None]  # (B, Q) or (B, 1)
    with np.errstate(over="ignore"):  # near the float limit the band saturates at it (see finite)
        width = finite(np.asarray(half).reshape(-1, 1) * point * tasks.scale[:, None])  # half-width, series' units
        y_hat = finite(tasks.denormalise(forecasts.query))
        lower, upper = finite(y_hat - width), finite(y_hat + width)
    return PointScores(
        y_hat=y_hat,
        lower=lower,
        upper=upper,
        score=score,
        p_value=np.where(np.isfinite(u), p, np.nan),
        is_anomaly=np.nan_to_num(score, nan=-np.inf) >= threshold,
    )


@dataclass(frozen=True)
class TaskScores:
    """Scores of B (series, day) tasks, each with up to Q query points; all (B, Q) unless noted."""

    y_hat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    enough_history: np.ndarray  # (B,) bool: False -> status insufficient_history


def min_support_observed(k_shot: int) -> int:
    """Observed support targets a task needs to be adapted and scored (half of K, at least 2)."""
    return max(2, (k_shot + 1) // 2)


def score_tasks(
    cluster: ClusterModel,
    values: np.ndarray,
    indptr: np.ndarray,
    rows: np.ndarray,
    first: np.ndarray,
    *,
    n_query: int,
    threshold: float,
    batch_size: int = 10_000,
    device: str = "cpu",
) -> TaskScores:
    """Score task b = the ``n_query`` grid points of series ``rows[b]`` from position ``first[b]``.

    Each task is adapted on the K pairs whose targets are the K grid points just before
    ``first[b]`` (strictly before the scored day) and forecasts its points one step ahead from the
    observed lags. Work is batched over tasks in equal chunks of at most ``batch_size`` (fewer on
    long windows); the last chunk is padded to the same size, so every chunk runs the same shapes
    (same kernels: the same bytes on every rerun).
    """
    spec, k = cluster.spec, cluster.k_shot
    width = window_width(spec, k, n_query)
    model = cluster.build_model()
    rows, first = np.asarray(rows, np.int64), np.asarray(first, np.int64)
    n = rows.size
    out = {name: np.full((n, n_query), np.nan) for name in ("y_hat", "lower", "upper", "score", "p_value")}
    flags = np.zeros((n, n_query), dtype=bool)
    enough = np.zeros(n, dtype=bool)
    size = max(1, min(batch_size, n, max(64, CHUNK_CELLS // (width * spec.n_inputs))))
    size = -(-n // -(-n // size))  # equal chunks: the last one pads a few tasks, not most of a chunk
    for lo in range(0, n, size):
        idx = np.arange(lo, lo + size).clip(max=n - 1)  # (size,) padded with the last task
        raw = gather_windows(values, indptr, rows[idx], first[idx] - (width - n_query), width)
        tasks, pts = _score_without_echoes(cluster, model, raw, n_query, threshold=threshold, device=device)
        m = min(size, n - lo)
        for name in out:
            out[name][lo : lo + m] = getattr(pts, name)[:m]
        flags[lo : lo + m] = pts.is_anomaly[:m]
        enough[lo : lo + m] = tasks.n_support_observed[:m] >= min_support_observed(k)
    return TaskScores(**out, is_anomaly=flags, enough_history=enough)


def _score_without_echoes(
    cluster: ClusterModel, model: torch.nn.Module, raw: np.ndarray, n_query: int, *, threshold: float, device: str
) -> tuple[Tasks, PointScores]:
    """Score the query of raw windows (B, W) point by point; later lags read flagged points
    pulled towards their forecast.

    One-step forecasts read the day's observed values as lags, so an anomaly would otherwise
    drag the next forecasts with it: normal points after a spike would be flagged ("echoes") and
    a lasting outage would be flagged at its first point only. The forecaster is adapted once;
    then the day's points are forecast in time order (batched over tasks), and each flagged
    point is replaced in the inputs of the later points. Every point is still scored against its
    own observed value. The points before the day that the lags read (``max_lag`` of them, the
    seasonal lags included) go through the same loop first, not scored: an outage yesterday
    would otherwise drag today's forecasts with it, at its own hour through the seasonal lags
    and at midnight through the recent ones.

    A flagged point with deviation ``d`` from its forecast enters the later lags at
    ``forecast + h^2 / d`` (``h`` = the band's half-width, ``|d| >= h``): a barely flagged false
    alarm stays at the band edge, so it shifts the next forecasts by almost nothing and does not
    breed more alarms; a point far out (a spike, an outage) is nearly replaced by its forecast,
    so an outage stays flagged instead of being absorbed by the last-value reference. After
    :func:`shift_accepted_after` flagged points in a row the observed values enter the lags again:
    a lasting change is then the new level (flagged at its start), not an alarm for the rest of
    the day (NAB's regime-switching CPU series had 30% of its clean points flagged).
    """
    spec, k, cal = cluster.spec, cluster.k_shot, cluster.calibration
    tasks = make_windows(raw, spec, k, n_query)
    net = adapt_and_forecast(
        model,
        cluster.params,
        tasks,
        inner_steps=cluster.inner_steps,
        inner_lr=cluster.inner_lr,
        inner_lrs=cluster.inner_lrs,
        device=device,
    )
    fast = shrink_to_reference(tasks, net)
    denom = np.maximum(np.nan_to_num(fast.resid_scale, nan=np.inf), cal.scale_floor)  # (B,)
    routine = RoutineTail.of(tasks, fast.recent, denom, cal).half_width(score_to_p(threshold))  # (B,) |u|
    half = np.maximum(cal.quantile(score_to_p(threshold)), routine) * denom  # (B,) the band's half-width
    n_before = min(spec.max_lag, tasks.recent_values.shape[1])  # the points before the day that lags read
    observed = np.concatenate([tasks.recent_values[:, -n_before:], tasks.query_values], axis=1)  # (B, P+Q)
    query = follow_the_day(tasks, net.query - tasks.base_query, fast.evidence, half)
    forecast = np.concatenate([fast.recent[:, -n_before:], query], axis=1)
    # a task none of whose points is flagged from observed lags gives the same forecasts in time
    # order (nothing to replace): only the others go through the sequential loop
    redo = (over_threshold(observed - forecast, denom, cal, threshold, routine)).any(axis=1)
    hold = cleaning_pays(tasks, fast.recent, half)
    if redo.any():
        sub = tasks.take(redo)
        adapted = adapt_support(
            model,
            cluster.params,
            sub,
            inner_steps=cluster.inner_steps,
            inner_lr=cluster.inner_lr,
            inner_lrs=cluster.inner_lrs,
            device=device,
        )
        forecast[redo] = forecast_in_time_order(
            adapted,
            fast.evidence.take(redo),
            sub,
            observed[redo],
            denom[redo],
            routine[redo],
            fast.recent[redo],
            cal,
            threshold,
            spec,
            hold[redo],
            accept_after=shift_accepted_after(n_query),
            first_scored=n_before,
        )
    before = np.concatenate([tasks.recent_values[:, :-n_before] - fast.recent[:, :-n_before], observed - forecast], 1)
    point_scale = trailing_scale(last_columns(np.abs(before), TRAILING_POINTS + n_query), denom)
    forecasts = Forecasts(
        query=forecast[:, n_before:], resid_scale=fast.resid_scale, recent=fast.recent, point_scale=point_scale
    )
    pts = score_points(tasks, forecasts, cal, threshold=threshold)
    if pts.is_anomaly.any():  # the day's own scale once its noise rise was flagged (see with_day_floor)
        day_dev = np.abs(observed - forecast)[:, n_before:]
        floored = with_day_floor(point_scale, day_dev, denom, pts.is_anomaly, shift_accepted_after(n_query))
        if not np.array_equal(floored, point_scale, equal_nan=True):  # rare: most chunks keep their scores
            pts = score_points(tasks, replace(forecasts, point_scale=floored), cal, threshold=threshold)
    return tasks, with_stuck_runs(pts, raw, tasks.scale, threshold)


def with_stuck_runs(pts: PointScores, raw: np.ndarray, scale: np.ndarray, threshold: float) -> PointScores:
    """A repeated value is tested twice, by its residual and by its flat run (:mod:`maml_anomaly.core.stuck`):
    its p becomes twice the smaller of the two (Bonferroni: the smaller alone added the run test's
    whole false-alarm rate to the residual's). A forecast that follows the last value never sees a
    stuck sensor. The band stays the residual's. As a level shift, a flat line is flagged for an
    hour of points (at least 3), then it is the new state. Other points keep their residual's p."""
    n_query = pts.score.shape[1]
    log_p = stuck_log_p(  # (B, Q), 0 where no repeat; a flat line flagged for an hour is the new state
        raw, n_query, scale, log_p_flag=np.log(score_to_p(threshold) / 2.0), accept_after=shift_accepted_after(n_query)
    )
    tested = log_p < 0.0  # (B, Q) a repeat under test: two tests, Bonferroni
    log_p_res = np.log(np.clip(pts.p_value, MIN_P, 1.0))
    both = np.minimum(np.log(2.0) + np.minimum(log_p_res, log_p), 0.0)
    score = np.where(np.isfinite(pts.score), np.where(tested, log_p_to_score(both), pts.score), np.nan)
    return PointScores(
        y_hat=pts.y_hat,
        lower=pts.lower,
        upper=pts.upper,
        score=score,
        p_value=np.where(np.isfinite(pts.p_value), np.where(tested, np.exp(both), pts.p_value), np.nan),
        is_anomaly=np.nan_to_num(score, nan=-np.inf) >= threshold,
    )


# -- scoring the input rows of one or many days ---------------------------------------------------

NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class RowScores:
    """One entry per input row; NaN where a value does not apply, status says why."""

    y_hat: np.ndarray  # (N,) float64
    lower: np.ndarray
    upper: np.ndarray
    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray  # (N,) bool
    status: np.ndarray  # (N,) object: one of STATUSES


def grid_positions(t_ns: np.ndarray, start_ns: np.ndarray, step_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid index of each timestamp on its series' grid, and whether it lies exactly on it.

    t_ns (N,) int64, start_ns / step_ns (N,) int64 of each row's series (step <= 0: unknown).
    """
    safe = np.where(step_ns > 0, step_ns, 1)
    delta = t_ns - start_ns
    return delta // safe, (step_ns > 0) & (delta % safe == 0)


def first_with_support(models: list[ClusterModel]) -> np.ndarray:
    """(n_models,) the first grid position of a series that has K support points with their lags.

    A day's task is adapted on the K points before its first point; on a series' first day
    (its history starts within the day) the task starts here instead of at midnight, so the
    rest of that day is scored rather than all of it left insufficient_history.
    """
    return np.array([m.spec.max_lag + m.k_shot for m in models] + [0], dtype=np.int64)  # [-1]: no model


def score_rows(
    models: list[ClusterModel],
    values: np.ndarray,
    indptr: np.ndarray,
    start_ns: np.ndarray,
    step_ns: np.ndarray,
    series_model: np.ndarray,
    row_series: np.ndarray,
    row_t_ns: np.ndarray,
    row_y: np.ndarray,
    *,
    threshold: float,
    batch_size: int = 10_000,
    device: str = "cpu",
    unknown: np.ndarray | None = None,
) -> RowScores:
    """Score input rows (any days): each (series, calendar day) among the rows is one task.

    values/indptr/start_ns/step_ns: the panel (S series); ``series_model`` (S,) index into
    ``models`` or -1; ``unknown`` (S,) bool marks series without a cluster (status
    unknown_series) as opposed to a cluster without a trained model (no_model). Rows: series
    position, timestamp (int64 ns, UTC-naive) and value. The panel must hold no data after the
    last scored day. Tasks are batched per (model, query length), never per series.
    """
    n = row_series.size
    out = {k: np.full(n, np.nan) for k in ("y_hat", "lower", "upper", "score", "p_value")}
    flags = np.zeros(n, dtype=bool)
    status = np.full(n, STATUS_OK, dtype=object)
    if n == 0:
        return RowScores(**out, is_anomaly=flags, status=status)
    start, step = start_ns[row_series], step_ns[row_series]
    pos, on_grid = grid_positions(row_t_ns, start, step)
    day = np.floor_divide(row_t_ns, NS_PER_DAY)  # (N,) calendar day number of each row
    model_of = series_model[row_series]  # (N,)
    scorable = on_grid & (model_of >= 0)

    # one task per (series, day); np.unique keeps the order deterministic
    key = np.stack([row_series, day], axis=1)[scorable]
    tasks, task_of_row = np.unique(key, axis=0, return_inverse=True)
    task_of_row = task_of_row.reshape(-1)
    t_series, t_day = tasks[:, 0], tasks[:, 1]
    t_step = step_ns[t_series]
    t_model = series_model[t_series]
    t_first = np.maximum(
        -((start_ns[t_series] - t_day * NS_PER_DAY) // t_step),  # (M,) the day's first point
        first_with_support(models)[t_model],
    )
    t_q = np.maximum(1, -(-NS_PER_DAY // t_step))  # (M,) most grid points a day can hold
    rows_idx = np.flatnonzero(scorable)
    q = np.full(n, -1)
    q[rows_idx] = pos[rows_idx] - t_first[task_of_row]  # index of the row inside its task's query
    before_support = scorable & (q < 0)  # the series' first points, before it has K support points
    status[before_support] = STATUS_INSUFFICIENT
    for m, qlen in sorted(set(zip(t_model.tolist(), t_q.tolist()))):
        sel = np.flatnonzero((t_model == m) & (t_q == qlen))  # tasks of this group
        res = score_tasks(
            models[m],
            values,
            indptr,
            t_series[sel],
            t_first[sel],
            n_query=int(qlen),
            threshold=threshold,
            batch_size=batch_size,
            device=device,
        )
        local = np.full(tasks.shape[0], -1)
        local[sel] = np.arange(sel.size)
        k = np.flatnonzero((local[task_of_row] >= 0) & (q[rows_idx] >= 0))
        r, b, qq = rows_idx[k], local[task_of_row[k]], q[rows_idx[k]]  # rows of this group, their task, slot
        for name in out:
            out[name][r] = getattr(res, name)[b, qq]
        flags[r] = res.is_anomaly[b, qq]
        status[r[~res.enough_history[b]]] = STATUS_INSUFFICIENT

    missing = ~np.isfinite(row_y)
    status[(status == STATUS_OK) & missing] = STATUS_MISSING
    no_model = model_of < 0
    status[no_model] = STATUS_NO_MODEL
    if unknown is not None:
        status[no_model & unknown[row_series]] = STATUS_UNKNOWN
    status[~on_grid] = STATUS_OFF_GRID
    not_ok = status != STATUS_OK
    for name in ("score", "p_value"):
        out[name][not_ok] = np.nan
    flags[not_ok] = False
    hidden = (status != STATUS_OK) & (status != STATUS_MISSING)  # no forecast to show
    for name in ("y_hat", "lower", "upper"):
        out[name][hidden] = np.nan
    return RowScores(**out, is_anomaly=flags, status=status)
