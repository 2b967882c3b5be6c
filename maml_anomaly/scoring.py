"""Adaptation of a cluster's forecaster to a batch of series, residuals, calibrated scores, flags.

Three layers, as in scikit-learn's outlier detectors: a raw residual ``u`` (the forecast error in
units of the adapted model's own error on its support points), a calibrated tail probability
``p`` of ``|u|`` learned per cluster on held-out query residuals, and a score ``z`` = the
normal-equivalent of ``p`` (``z = 3`` is as rare as a 3-sigma Gaussian point). A point is flagged
when ``z >= threshold``, which means the same false-alarm rate on every series and cluster.

Dividing the residual by the window's standard deviation never fires on seasonal series (the
cycle dominates that deviation); dividing by the adapted model's support error does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.special import ndtr, ndtri

from maml_anomaly import fast_adapt
from maml_anomaly.maml import adapt_tasks, expand_params, predict
from maml_anomaly.model import Forecaster
from maml_anomaly.tasks import MAD_TO_SD, LagSpec, Tasks, gather_windows, make_windows, nan_median_rows, window_width

# upper-tail probabilities at which the calibration stores quantiles of |u|
# (only the bulk: held-out history holds anomalies too, which would inflate rarer quantiles)
TAIL_LEVELS = (0.5, 0.25, 0.1, 0.05)
MIN_P = 1e-300
MAX_SCORE = float(-ndtri(MIN_P / 2))  # about 37

STATUS_OK = "ok"
STATUS_MISSING = "missing_value"
STATUS_INSUFFICIENT = "insufficient_history"
STATUS_UNKNOWN = "unknown_series"
STATUS_OFF_GRID = "off_grid"
STATUS_NO_MODEL = "no_model"
STATUSES = (STATUS_OK, STATUS_MISSING, STATUS_INSUFFICIENT, STATUS_UNKNOWN, STATUS_OFF_GRID, STATUS_NO_MODEL)


@dataclass(frozen=True)
class Calibration:
    """Tail probabilities of |u| learned on held-out residuals of one cluster.

    ``quantiles[i]`` is the value of |u| exceeded with probability ``levels[i]``. Between the
    stored points log p is interpolated linearly; beyond the last one an exponential tail with
    the decay of the last decade extrapolates (heavier than Gaussian: errs on the quiet side).
    """

    levels: tuple[float, ...]  # decreasing tail probabilities
    quantiles: tuple[float, ...]  # increasing |u| values
    scale_floor: float  # floor of the residual scale (normalised units) in u = residual / scale
    n_residuals: int

    def _tail_decay(self) -> float:
        """Exponential decay of the tail, fitted from the second to the last stored quantile."""
        lv, q = np.log(self.levels), np.asarray(self.quantiles)
        j = min(1, len(q) - 2)
        return max((q[-1] - q[j]) / max(lv[j] - lv[-1], 1e-12), 1e-6)

    def tail_probability(self, u_abs: np.ndarray) -> np.ndarray:
        """P(|U| >= u_abs) for clean points (NaN stays NaN)."""
        u = np.asarray(u_abs, dtype=np.float64)
        q, lv = np.asarray(self.quantiles), np.log(self.levels)
        inner = np.interp(u, q, lv)  # flat outside [q0, q-1]: fixed below
        below = np.log1p(-np.clip(u / q[0], 0.0, 1.0) * (1.0 - self.levels[0]))  # 1 at 0 -> levels[0]
        beyond = lv[-1] - (u - q[-1]) / self._tail_decay()
        logp = np.where(u <= q[0], below, np.where(u >= q[-1], beyond, inner))
        return np.clip(np.exp(logp), MIN_P, 1.0)

    def quantile(self, p: float) -> float:
        """The |u| exceeded with probability p (inverse of :meth:`tail_probability`)."""
        lp, q, lv = np.log(max(p, MIN_P)), np.asarray(self.quantiles), np.log(self.levels)
        if lp >= lv[0]:
            return float(q[0] * (1.0 - p) / (1.0 - self.levels[0]))
        if lp <= lv[-1]:
            return float(q[-1] + (lv[-1] - lp) * self._tail_decay())
        return float(np.interp(-lp, -lv, q))

    def to_dict(self) -> dict:
        return {
            "levels": list(self.levels),
            "quantiles": list(self.quantiles),
            "scale_floor": self.scale_floor,
            "n_residuals": self.n_residuals,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return cls(
            levels=tuple(float(v) for v in data["levels"]),
            quantiles=tuple(float(v) for v in data["quantiles"]),
            scale_floor=float(data["scale_floor"]),
            n_residuals=int(data["n_residuals"]),
        )


def fit_calibration(u_abs: np.ndarray, *, scale_floor: float) -> Calibration:
    """Quantiles of held-out |u| at :data:`TAIL_LEVELS` (only levels the sample supports)."""
    u = np.asarray(u_abs, dtype=np.float64)
    u = u[np.isfinite(u)]
    if u.size < 20:
        # too few residuals: a standard-normal |u|, documented as the fallback
        u = np.abs(ndtri(np.linspace(0.0005, 0.9995, 2000)))
    levels = [p for p in TAIL_LEVELS if p * u.size >= 5] or list(TAIL_LEVELS[:3])
    q = np.quantile(u, 1.0 - np.asarray(levels))
    q = np.maximum.accumulate(np.maximum(q, 1e-6))
    q = q + np.arange(q.size) * 1e-9  # strictly increasing for interpolation
    return Calibration(
        levels=tuple(float(v) for v in levels),
        quantiles=tuple(float(v) for v in q),
        scale_floor=float(scale_floor),
        n_residuals=int(u.size),
    )


@dataclass(frozen=True)
class ClusterModel:
    """What scoring needs of a trained cluster (weights live in ``params``)."""

    spec: LagSpec
    k_shot: int
    query_len: int
    hidden: tuple[int, ...]
    inner_steps: int
    inner_lr: float
    params: dict[str, torch.Tensor]
    calibration: Calibration
    report: dict
    inner_lrs: object = None  # learned per-parameter inner learning rates, when meta-learned

    def build_model(self) -> torch.nn.Module:
        return Forecaster(self.spec.n_inputs, self.hidden, 1)

    def metadata(self) -> dict:
        """JSON-able description stored beside the weights."""
        return {
            "lag_spec": self.spec.to_dict(),
            "k_shot": self.k_shot,
            "query_len": self.query_len,
            "hidden": list(self.hidden),
            "inner_steps": self.inner_steps,
            "inner_lr": self.inner_lr,
            "calibration": self.calibration.to_dict(),
        }

    @classmethod
    def from_metadata(cls, meta: dict, params: dict[str, torch.Tensor], inner_lrs=None, report: dict | None = None):
        return cls(
            spec=LagSpec.from_dict(meta["lag_spec"]),
            k_shot=int(meta["k_shot"]),
            query_len=int(meta["query_len"]),
            hidden=tuple(int(h) for h in meta["hidden"]),
            inner_steps=int(meta["inner_steps"]),
            inner_lr=float(meta["inner_lr"]),
            params=params,
            calibration=Calibration.from_dict(meta["calibration"]),
            report=report or {},
            inner_lrs=inner_lrs,
        )


def p_to_score(p: np.ndarray) -> np.ndarray:
    """Two-sided tail probability -> normal-equivalent z (larger = more anomalous)."""
    return np.minimum(-ndtri(np.clip(p, MIN_P, 1.0) / 2.0), MAX_SCORE)


def score_to_p(z: float) -> float:
    return float(2.0 * ndtr(-z))


@dataclass(frozen=True)
class Forecasts:
    """Adapted forecasts of a batch of tasks, in normalised units."""

    query: np.ndarray  # (B, Q) one-step-ahead forecasts of the query points (reference added)
    resid_scale: np.ndarray  # (B,) robust scale of the adapted model's recent residuals (NaN if none)


def adapt_and_forecast(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    tasks: Tasks,
    *,
    inner_steps: int,
    inner_lr: float,
    inner_lrs=None,
    device: str | torch.device = "cpu",
) -> Forecasts:
    """Adapt to every task's support set (first order, no graph kept), forecast its query."""
    dev = torch.device(device)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
    x_s, y_s, w_s, x_q = to(tasks.x_support), to(tasks.y_support), to(tasks.w_support), to(tasks.x_query)
    base = {k: v.detach().to(dev) for k, v in params.items()}
    lrs = None if inner_lrs is None else _detach(inner_lrs, dev)
    n_recent, k = tasks.x_recent.shape[1], x_s.shape[1]
    x_r = to(tasks.x_recent)
    x_rq = torch.cat([x_r, x_q], 1)  # (B, R + Q): one forecast pass serves the residual scale and the query
    with torch.no_grad():  # adapt still takes its inner gradients; no graph is kept
        if fast_adapt.supports(model):  # hand-written loop (fused C kernel on CPU), same results up to rounding
            pred_rq, pred_s0 = fast_adapt.adapt_and_predict(
                model, base, x_s, y_s, w_s, x_rq, steps=inner_steps, lr=inner_lr, inner_lrs=lrs
            )  # (B, R + Q), (B, K) the meta-init's support forecasts
        else:
            task_params = adapt_tasks(
                model, per_task(base, x_s.shape[0]), x_s, y_s, steps=inner_steps, lr=inner_lr, inner_lrs=lrs,
                weight=w_s, first_order=True, loss_fn=huber_loss,
            )
            pred_rq, pred_s0 = predict(model, task_params, x_rq)[..., 0], None
        pred_s = pred_rq[:, n_recent - k : n_recent]  # (B, K): the support is the last K recent targets (make_windows)
        if inner_steps > 0:  # guard: a task whose support loss got worse keeps the meta-init
            init = expand_params(base, x_s.shape[0])
            if pred_s0 is None:
                pred_s0 = predict(model, init, x_s)[..., 0]  # (B, K)
            worse = huber_loss(pred_s[..., None], y_s, w_s) > huber_loss(pred_s0[..., None], y_s, w_s)  # (B,)
            if bool(worse.any()):
                pred_rq = torch.where(worse[:, None], predict(model, init, x_rq)[..., 0], pred_rq)
        pred_r, pred_q = pred_rq[:, :n_recent], pred_rq[:, n_recent:]  # (B, R), (B, Q)
    # residual scale: 1.4826 x median |residual| over the R recent points (a day, >= K)
    resid = np.abs(pred_r.double().cpu().numpy() - tasks.y_recent)  # (B, R)
    resid[tasks.w_recent == 0] = np.nan
    scale = nan_median_rows(resid) * MAD_TO_SD
    query = pred_q.double().cpu().numpy() + tasks.base_query  # (B, Q) correction + seasonal naive
    return Forecasts(query=query, resid_scale=scale)


def per_task(params: dict[str, torch.Tensor], n_tasks: int) -> dict[str, torch.Tensor]:
    """n_tasks real copies of shared weights, each (n_tasks, ...); differentiable (grads sum back).

    Not ``maml.expand_params``: the model treats a stride-0 expanded view as one shared weight
    (a faster first step), and autograd through that view sends every task's gradient of a loss
    other than masked_mse to task 0 only, which mixes tasks and makes results depend on the batch.
    """
    return {k: v.expand(n_tasks, *v.shape).clone() for k, v in params.items()}


def huber_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, delta: float = 1.0) -> torch.Tensor:
    """Weighted Huber loss per task (x2, so it equals the squared error within ``delta``).

    pred (B, K, n_out) (output 0 is scored), target (B, K), weight (B, K) or None -> (B,).

    Quadratic within ``delta`` (normalised units), linear beyond: an outlier among the support
    points (yesterday's spike, an outage) pulls the inner gradient step by at most ``delta``
    instead of by its full size, which keeps adaptation from diverging on such windows.
    """
    err = pred[..., 0] - target  # (B, K)
    a = err.abs()
    loss = torch.where(a <= delta, err.square(), delta * (2.0 * a - delta))  # = squared error within delta
    if weight is None:
        return loss.mean(-1)
    return (loss * weight).sum(-1) / weight.sum(-1).clamp_min(1e-12)


def _detach(lrs, dev):
    if isinstance(lrs, dict):
        return {k: v.detach().to(dev) for k, v in lrs.items()}
    if isinstance(lrs, (list, tuple)):
        return type(lrs)(v.detach().to(dev) for v in lrs)
    return lrs.detach().to(dev)


def normalised_residuals(tasks: Tasks, forecasts: Forecasts, scale_floor: float) -> np.ndarray:
    """u = (observed - forecast) / max(residual scale, floor), normalised units, NaN where missing."""
    denom = np.maximum(np.nan_to_num(forecasts.resid_scale, nan=np.inf), scale_floor)  # (B,)
    return (tasks.query_values - forecasts.query) / denom[:, None]  # (B, Q)


@dataclass(frozen=True)
class PointScores:
    """Per-point results in the series' own units; all (B, Q)."""

    y_hat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray  # bool


def score_points(
    tasks: Tasks, forecasts: Forecasts, calibration: Calibration, *, threshold: float
) -> PointScores:
    """Residuals -> calibrated tail probability -> score, band and flag (NaN where y missing)."""
    u = normalised_residuals(tasks, forecasts, calibration.scale_floor)  # (B, Q)
    p = calibration.tail_probability(np.abs(u))
    score = np.where(np.isfinite(u), p_to_score(p), np.nan)
    half = calibration.quantile(score_to_p(threshold))  # |u| at the threshold
    denom = np.maximum(np.nan_to_num(forecasts.resid_scale, nan=np.inf), calibration.scale_floor)
    width = half * denom * tasks.scale  # (B,) band half-width in the series' units
    y_hat = tasks.denormalise(forecasts.query)
    return PointScores(
        y_hat=y_hat,
        lower=y_hat - width[:, None],
        upper=y_hat + width[:, None],
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
    observed lags. Work is batched over tasks in chunks of ``batch_size``; a chunk is padded to
    full size so every chunk runs the same shapes (same kernels: the same bytes on every rerun).
    """
    spec, k = cluster.spec, cluster.k_shot
    width = window_width(spec, k, n_query)
    model = cluster.build_model()
    rows, first = np.asarray(rows, np.int64), np.asarray(first, np.int64)
    n = rows.size
    out = {name: np.full((n, n_query), np.nan) for name in ("y_hat", "lower", "upper", "score", "p_value")}
    flags = np.zeros((n, n_query), dtype=bool)
    enough = np.zeros(n, dtype=bool)
    size = max(1, min(batch_size, n))
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


ECHO_PASSES = 4  # rescoring passes that replace flagged lags; a run of anomalies needs one per point at most


def _score_without_echoes(
    cluster: ClusterModel, model: torch.nn.Module, raw: np.ndarray, n_query: int, *, threshold: float, device: str
) -> tuple[Tasks, PointScores]:
    """Score the query of raw windows (B, W); later lags read a flagged point clipped to its band.

    One-step forecasts read the day's observed values as lags, so an anomaly would otherwise
    drag the next few forecasts with it and flag normal points after it ("echoes"). Each pass
    clips the points flagged so far to their band in the inputs only (a barely flagged point
    barely changes, so false alarms do not breed more): every point is still
    scored against its own observed value, so a lasting anomaly (a burst, an outage) stays flagged.
    """
    spec, k = cluster.spec, cluster.k_shot
    observed = make_windows(raw, spec, k, n_query).query_values  # (B, Q) what each point is scored on
    inputs = raw
    for _ in range(ECHO_PASSES if n_query > 1 else 1):
        tasks = make_windows(inputs, spec, k, n_query)
        tasks = replace(tasks, query_values=observed)
        forecasts = adapt_and_forecast(
            model, cluster.params, tasks, inner_steps=cluster.inner_steps, inner_lr=cluster.inner_lr,
            inner_lrs=cluster.inner_lrs, device=device,
        )
        pts = score_points(tasks, forecasts, cluster.calibration, threshold=threshold)
        lagged = pts.is_anomaly[:, :-1]  # (B, Q-1) flags that later points read as lags
        cleaned = raw.copy()
        band = np.clip(raw[:, -n_query:-1], pts.lower[:, :-1], pts.upper[:, :-1])  # clipped to its band
        cleaned[:, -n_query:-1] = np.where(lagged, band, raw[:, -n_query:-1])
        if np.array_equal(cleaned, inputs, equal_nan=True):
            break
        inputs = cleaned
    return tasks, pts


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
    safe = np.where(step > 0, step, 1)
    first = -((start - day * NS_PER_DAY) // safe)  # (N,) ceil((day start - start) / step)
    q = pos - first  # (N,) index of the row inside its day's query
    model_of = series_model[row_series]  # (N,)
    scorable = on_grid & (model_of >= 0)

    # one task per (series, day); np.unique keeps the order deterministic
    key = np.stack([row_series, day], axis=1)[scorable]
    tasks, task_of_row = np.unique(key, axis=0, return_inverse=True)
    task_of_row = task_of_row.reshape(-1)
    t_series, t_day = tasks[:, 0], tasks[:, 1]
    t_step = step_ns[t_series]
    t_first = -((start_ns[t_series] - t_day * NS_PER_DAY) // t_step)  # (M,)
    t_model = series_model[t_series]
    t_q = np.maximum(1, -(-NS_PER_DAY // t_step))  # (M,) most grid points a day can hold
    rows_idx = np.flatnonzero(scorable)
    for m, qlen in sorted(set(zip(t_model.tolist(), t_q.tolist()))):
        sel = np.flatnonzero((t_model == m) & (t_q == qlen))  # tasks of this group
        res = score_tasks(
            models[m], values, indptr, t_series[sel], t_first[sel], n_query=int(qlen),
            threshold=threshold, batch_size=batch_size, device=device,
        )
        local = np.full(tasks.shape[0], -1)
        local[sel] = np.arange(sel.size)
        k = np.flatnonzero(local[task_of_row] >= 0)
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
