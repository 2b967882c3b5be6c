"""Adaptation of a cluster's forecaster to a batch of series, residuals, calibrated scores, flags.

Three layers, as in scikit-learn's outlier detectors: a raw residual ``u`` (the forecast error in
units of the adapted model's own one-step error over the day before), a calibrated tail probability
``p`` of ``|u|`` learned per cluster on held-out query residuals, and a score ``z`` = the
normal-equivalent of ``p`` (``z = 3`` is as rare as a 3-sigma Gaussian point). A point is flagged
when ``z >= threshold``, which means the same false-alarm rate on every series and cluster.

Dividing the residual by the window's standard deviation never fires on seasonal series (the
cycle dominates that deviation); dividing by the adapted model's recent error does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from scipy.special import log_ndtr, ndtr, ndtri

from maml_anomaly.core import fast_adapt
from maml_anomaly.core.maml import adapt_tasks, expand_params, predict
from maml_anomaly.core.model import Forecaster
from maml_anomaly.core.stuck import stuck_log_p
from maml_anomaly.core.tasks import (
    MAD_TO_SD,
    TARGET_CLIP,
    MEAN_AD_TO_SD,
    LagSpec,
    Tasks,
    gather_windows,
    lag_inputs,
    make_windows,
    nan_median_rows,
    reference_lag,
    window_width,
)

# upper-tail probabilities at which the calibration stores quantiles of |u|, each where the
# held-out sample has at least MIN_TAIL_POINTS beyond it (held-out history holds anomalies too:
# they inflate the rarest quantiles, which errs on the quiet side)
TAIL_LEVELS = (0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
MIN_TAIL_POINTS = 20
HEAVIEST_TAIL_DF = 3  # calibration tails are capped at a Student t with this many degrees of freedom
MIN_P = 1e-300
CHUNK_CELLS = 16_000_000  # lag-input cells (tasks x window x lags) per chunk: bounds memory on fine steps
MAX_SCORE = float(-ndtri(MIN_P / 2))  # about 37

STATUS_OK = "ok"
STATUS_MISSING = "missing_value"
STATUS_INSUFFICIENT = "insufficient_history"
STATUS_UNKNOWN = "unknown_series"
STATUS_OFF_GRID = "off_grid"
STATUS_NO_MODEL = "no_model"
STATUS_ABSENT = "absent"  # an expected series without any row on a scored day (made by the scoring run)
STATUSES = (STATUS_OK, STATUS_MISSING, STATUS_INSUFFICIENT, STATUS_UNKNOWN, STATUS_OFF_GRID, STATUS_NO_MODEL)


@dataclass(frozen=True)
class Calibration:
    """Tail probabilities of |u| learned on held-out residuals of one cluster.

    ``quantiles[i]`` is the value of |u| exceeded with probability ``levels[i]``. Between the
    stored points log p is interpolated linearly; beyond the last one a power law fitted over the
    last decade of levels extrapolates (log p linear in log u): u is a residual over a scale
    estimated from a day of residuals, pooled over series, so its far tail is polynomial
    (t-like); an exponential tail is far too light at the p-values Benjamini-Hochberg reaches
    across millions of points.
    """

    levels: tuple[float, ...]  # decreasing tail probabilities
    quantiles: tuple[float, ...]  # increasing |u| values
    scale_floor: float  # floor of the residual scale (normalised units) in u = residual / scale
    n_residuals: int

    def _tail_index(self) -> float:
        """Power-law index alpha of the tail, P(|U| >= u) ~ u^-alpha, over the last decade of levels."""
        lv, q = np.log(self.levels), np.log(np.asarray(self.quantiles))
        j = int(np.searchsorted(-lv, -np.log(10 * self.levels[-1]))) if len(q) > 2 else 0
        j = min(max(j, 1), len(q) - 2)
        return max((lv[j] - lv[-1]) / max(q[-1] - q[j], 1e-12), 1.0)

    def log_tail_probability(self, u_abs: np.ndarray) -> np.ndarray:
        """log P(|U| >= u_abs) for clean points, never underflowing (NaN stays NaN)."""
        u = np.asarray(u_abs, dtype=np.float64)
        q, lv = np.asarray(self.quantiles), np.log(self.levels)
        inner = np.interp(u, q, lv)  # flat outside [q0, q-1]: fixed below
        below = np.log1p(-np.clip(u / q[0], 0.0, 1.0) * (1.0 - self.levels[0]))  # 1 at 0 -> levels[0]
        beyond = lv[-1] - self._tail_index() * np.log(np.maximum(u, q[-1]) / q[-1])
        return np.minimum(np.where(u <= q[0], below, np.where(u >= q[-1], beyond, inner)), 0.0)

    def tail_probability(self, u_abs: np.ndarray) -> np.ndarray:
        """P(|U| >= u_abs) for clean points (NaN stays NaN), floored at MIN_P."""
        return np.clip(np.exp(self.log_tail_probability(u_abs)), MIN_P, 1.0)

    def quantile(self, p: float) -> float:
        """The |u| exceeded with probability p (inverse of :meth:`tail_probability`)."""
        lp, q, lv = np.log(max(p, MIN_P)), np.asarray(self.quantiles), np.log(self.levels)
        if lp >= lv[0]:
            return float(q[0] * (1.0 - p) / (1.0 - self.levels[0]))
        if lp <= lv[-1]:
            return float(q[-1] * np.exp((lv[-1] - lp) / self._tail_index()))
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


def heaviest_tail_ratio(levels) -> np.ndarray:
    """Quantiles of |T| (Student t, :data:`HEAVIEST_TAIL_DF` df) at ``levels``, over its median."""
    t = stats.t(HEAVIEST_TAIL_DF)
    return t.isf(np.asarray(levels) / 2.0) / t.isf(0.25)


def fit_calibration(u_abs: np.ndarray, *, scale_floor: float) -> Calibration:
    """Quantiles of held-out |u| at :data:`TAIL_LEVELS` (only levels the sample supports).

    Each quantile is capped at the median times the ratio a Student t with 3 df would give: a
    tail heavier than that comes from series whose residual scale collapses (flat or quantised
    stretches, where any move is a huge u), and would squash the scores of every other series
    of the cluster (seen on NAB: the 1% quantile of one cluster was 6e8).

    Each quantile is also at least the standard normal's: a score never exceeds |u|, the
    residual in robust standard deviations. A lighter held-out tail than the Gaussian's is
    almost always a degenerate one: on a cluster of flat series with rare spikes most held-out
    residuals are exactly 0, every quantile collapsed to 0 and every clean point that moved at
    all scored about 18 (NAB's spike-density series).
    """
    u = np.asarray(u_abs, dtype=np.float64)
    u = u[np.isfinite(u)]
    if u.size < 20:
        # too few residuals: a standard-normal |u|, documented as the fallback
        u = np.abs(ndtri(np.linspace(0.0005, 0.9995, 2000)))
    levels = [p for p in TAIL_LEVELS if p * u.size >= MIN_TAIL_POINTS] or list(TAIL_LEVELS[:3])
    gaussian = -ndtri(np.asarray(levels) / 2.0)  # |N(0, 1)| quantiles at the levels
    q = np.quantile(u, 1.0 - np.asarray(levels))
    q = np.minimum(q, max(np.quantile(u, 0.5), gaussian[0]) * heaviest_tail_ratio(levels))
    q = np.maximum.accumulate(np.maximum(q, gaussian))
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


def log_p_to_score(log_p: np.ndarray) -> np.ndarray:
    """log of a two-sided tail probability -> normal-equivalent z, without a ceiling.

    Beyond p = 1e-300 (z about 37) the score keeps growing (Newton on log Phi(-z) = log p - log 2),
    so two points far in the tail still rank by how far out they are instead of tying at 37.
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    z = p_to_score(np.exp(log_p))
    deep = np.isfinite(log_p) & (log_p < np.log(MIN_P))
    if deep.any():
        target = log_p[deep] - np.log(2.0)
        zd = np.sqrt(-2.0 * target)  # start: log Phi(-z) ~ -z^2 / 2
        for _ in range(30):  # log Phi(-z) is concave and smooth: Newton converges in a few steps
            f = log_ndtr(-zd) - target
            slope = -np.exp(-0.5 * zd**2 - 0.5 * np.log(2 * np.pi) - log_ndtr(-zd))  # d/dz log Phi(-z)
            zd = zd - f / slope
        z[deep] = zd
    return z


def score_to_p(z: float) -> float:
    return float(2.0 * ndtr(-z))


@dataclass(frozen=True)
class Forecasts:
    """Adapted forecasts of a batch of tasks, in normalised units (reference added)."""

    query: np.ndarray  # (B, Q) one-step-ahead forecasts of the query points from observed lags
    recent: np.ndarray | None = None  # (B, R) the same for the recent targets
    resid_scale: np.ndarray | None = None  # (B,) robust scale of the recent residuals (NaN if none), once measured
    gate: np.ndarray | None = None  # (B,) share of the net's correction kept (see shrink_to_reference)
    anchor: np.ndarray | None = None  # (B,) what the forecast stands on (see anchored)
    point_scale: np.ndarray | None = None  # (B, Q) per-point residual scale where it rose (see trailing_scale)


@dataclass(frozen=True)
class Adapted:
    """A batch of tasks' forecasters after adaptation to their support sets (normalised units)."""

    model: torch.nn.Module
    params: dict[str, torch.Tensor]  # per task (B, ...): adapted, or the meta-init where that was better
    device: torch.device

    def correction(self, x: np.ndarray) -> np.ndarray:
        """The net's output for inputs x (B, n, D) float32 -> (B, n) float64 (see :func:`_clamped`)."""
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            return _clamped(predict(self.model, self.params, xt)[..., 0])


def _clamped(correction: torch.Tensor) -> np.ndarray:
    """Corrections clamped to the range the net was trained on (an adapted net far outside its
    inputs can return anything), as float64 numpy."""
    return correction.clamp(-TARGET_CLIP, TARGET_CLIP).double().cpu().numpy()


def _on_device(params, tasks: Tasks, inner_lrs, device):
    """(device, support x, y, weight, detached meta-init, detached inner step sizes) on the device."""
    dev = torch.device(device)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
    base = {k: v.detach().to(dev) for k, v in params.items()}
    lrs = None if inner_lrs is None else _detach(inner_lrs, dev)
    return dev, to(tasks.x_support), to(tasks.y_support), to(tasks.w_support), base, lrs


def adapt_support(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    tasks: Tasks,
    *,
    inner_steps: int,
    inner_lr: float,
    inner_lrs=None,
    device: str | torch.device = "cpu",
) -> Adapted:
    """Adapt to every task's support set (first order, no graph kept) and keep the weights.

    A task whose support loss got worse keeps the meta-init (a guard against divergence).
    """
    dev, x_s, y_s, w_s, base, lrs = _on_device(params, tasks, inner_lrs, device)
    with torch.no_grad():  # adapt still takes its inner gradients; no graph is kept
        if fast_adapt.supports(model):  # hand-written loop, same results up to rounding
            fast = fast_adapt.adapt_huber(model, base, x_s, y_s, w_s, steps=inner_steps, lr=inner_lr, inner_lrs=lrs)
            task_params, pred_s0 = fast.params, fast.pred_support_init
        else:
            task_params = adapt_tasks(
                model, per_task(base, x_s.shape[0]), x_s, y_s, steps=inner_steps, lr=inner_lr, inner_lrs=lrs,
                weight=w_s, first_order=True, loss_fn=huber_loss,
            )
            pred_s0 = predict(model, expand_params(base, x_s.shape[0]), x_s)
        if inner_steps > 0:
            worse = huber_loss(predict(model, task_params, x_s), y_s, w_s) > huber_loss(pred_s0, y_s, w_s)  # (B,)
            if bool(worse.any()):
                init = expand_params(base, x_s.shape[0])
                task_params = {
                    k: torch.where(worse.view(-1, *([1] * (v.dim() - 1))), init[k], v) for k, v in task_params.items()
                }
    return Adapted(model, task_params, dev)


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
    """Adapt to every task's support set and forecast its recent and query points one step ahead
    from observed lags (the fused kernel where it runs). The residual scale is measured by
    :func:`shrink_to_reference`, on the forecasts scoring keeps."""
    dev, x_s, y_s, w_s, base, lrs = _on_device(params, tasks, inner_lrs, device)
    n_recent, k = tasks.x_recent.shape[1], x_s.shape[1]
    x_rq = torch.from_numpy(np.concatenate([tasks.x_recent, tasks.x_query], 1)).to(dev)  # (B, R + Q): one pass
    with torch.no_grad():
        if not fast_adapt.supports(model):  # weights kept and guarded by adapt_support
            adapted = adapt_support(
                model, params, tasks, inner_steps=inner_steps, inner_lr=inner_lr, inner_lrs=inner_lrs, device=dev
            )
            pred_rq = predict(model, adapted.params, x_rq)[..., 0]
        else:  # hand-written loop (fused C kernel on CPU), same results up to rounding
            pred_rq, pred_s0 = fast_adapt.adapt_and_predict(
                model, base, x_s, y_s, w_s, x_rq, steps=inner_steps, lr=inner_lr, inner_lrs=lrs
            )  # (B, R + Q), (B, K) the meta-init's support forecasts
            if inner_steps > 0:  # guard: a task whose support loss got worse keeps the meta-init
                pred_s = pred_rq[:, n_recent - k : n_recent]  # (B, K): the support is the last K recent targets
                worse = huber_loss(pred_s[..., None], y_s, w_s) > huber_loss(pred_s0[..., None], y_s, w_s)  # (B,)
                if bool(worse.any()):
                    init = expand_params(base, x_s.shape[0])
                    pred_rq = torch.where(worse[:, None], predict(model, init, x_rq)[..., 0], pred_rq)
    corr = _clamped(pred_rq)
    return Forecasts(query=corr[:, n_recent:] + tasks.base_query, recent=corr[:, :n_recent] + tasks.base_recent)


GATES = (1.0, 0.75, 0.5, 0.25, 0.0)  # shares of the net's correction a task may keep, best first on ties
ANCHOR_REFERENCE, ANCHOR_LAST, ANCHOR_NAIVE = 0, 1, 2  # what a forecast stands on (see anchored)
# the candidate forecasters (share of the net's correction, anchor), preferred in this order on ties:
# the net on its reference, then the two simple references a user would check it against
CANDIDATES = tuple((g, ANCHOR_REFERENCE) for g in GATES) + ((0.0, ANCHOR_LAST), (0.0, ANCHOR_NAIVE))
SWITCH_MARGIN = 1.1  # a simple reference replaces the net only where it was more than 10% better


def anchored(anchor: np.ndarray, reference: np.ndarray, last: np.ndarray, naive: np.ndarray) -> np.ndarray:
    """Per task (anchor (B,)), the forecast it stands on: the reference, the last value or seasonal
    naive; the others (B, ...) broadcast against it."""
    a = np.asarray(anchor).reshape((-1,) + (1,) * (np.ndim(reference) - 1))
    return np.where(a == ANCHOR_LAST, last, np.where(a == ANCHOR_NAIVE, naive, reference))


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
    candidates = CANDIDATES if held.stop > 0 else CANDIDATES[: len(GATES)]
    cols = held if held.stop > 0 else slice(None)
    n = np.maximum(np.isfinite(y[:, cols]).sum(axis=1), 1)
    mae = np.empty((y.shape[0], len(candidates)))
    for j, (g, a) in enumerate(candidates):  # a handful of candidates, each batched over tasks
        cand = g * corr_r[:, cols] + anchored(np.full(y.shape[0], a), tasks.base_recent[:, cols],
                                              tasks.last_recent[:, cols], tasks.naive_recent[:, cols])
        mae[:, j] = np.nansum(np.abs(cand - y[:, cols]), axis=1) / n
    mae[:, len(GATES) :] *= SWITCH_MARGIN  # choosing on a few recent points is noisy: see docstring
    best = np.argmin(mae, axis=1)  # (B,) the first candidate on ties
    gate = np.array([g for g, _ in CANDIDATES])[best]
    anchor = np.array([a for _, a in CANDIDATES])[best]
    recent = gate[:, None] * corr_r + anchored(anchor, tasks.base_recent, tasks.last_recent, tasks.naive_recent)
    query = gate[:, None] * (forecasts.query - tasks.base_query) + anchored(
        anchor, tasks.base_query, tasks.last_query, tasks.naive_query)
    resid = np.minimum(np.abs(recent - y), 2 * TARGET_CLIP)  # as far as the net's clipped targets reach
    return Forecasts(query=query, resid_scale=residual_scale(resid), recent=recent, gate=gate, anchor=anchor)


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
    if forecasts.point_scale is not None:  # where the noise rose (see trailing_scale)
        u = (tasks.query_values - forecasts.query) / forecasts.point_scale
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
    width = np.asarray(half).reshape(-1, 1) * point * tasks.scale[:, None]  # band half-width in the series' units
    y_hat = tasks.denormalise(forecasts.query)
    return PointScores(
        y_hat=y_hat,
        lower=y_hat - width,
        upper=y_hat + width,
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
    fast = shrink_to_reference(tasks, adapt_and_forecast(
        model, cluster.params, tasks, inner_steps=cluster.inner_steps, inner_lr=cluster.inner_lr,
        inner_lrs=cluster.inner_lrs, device=device,
    ))
    denom = np.maximum(np.nan_to_num(fast.resid_scale, nan=np.inf), cal.scale_floor)  # (B,)
    n_before = min(spec.max_lag, tasks.recent_values.shape[1])  # the points before the day that lags read
    observed = np.concatenate([tasks.recent_values[:, -n_before:], tasks.query_values], axis=1)  # (B, P+Q)
    forecast = np.concatenate([fast.recent[:, -n_before:], fast.query], axis=1)
    # a task none of whose points is flagged from observed lags gives the same forecasts in time
    # order (nothing to replace): only the others go through the sequential loop
    routine = RoutineTail.of(tasks, fast.recent, denom, cal).half_width(score_to_p(threshold))  # (B,) |u|
    redo = (_flags(observed - forecast, denom, cal, threshold, routine)).any(axis=1)
    hold = cleaning_pays(tasks, fast.recent, np.maximum(cal.quantile(score_to_p(threshold)), routine) * denom)
    if redo.any():
        sub = tasks.take(redo)
        adapted = adapt_support(
            model, cluster.params, sub, inner_steps=cluster.inner_steps, inner_lr=cluster.inner_lr,
            inner_lrs=cluster.inner_lrs, device=device,
        )
        forecast[redo] = _forecast_in_time_order(
            adapted, fast.gate[redo], fast.anchor[redo], sub, observed[redo], denom[redo], routine[redo],
            fast.recent[redo], cal,
            threshold, spec, hold[redo],
            accept_after=shift_accepted_after(n_query), first_scored=n_before,
        )
    before = np.concatenate([tasks.recent_values[:, :-n_before] - fast.recent[:, :-n_before], observed - forecast], 1)
    point_scale = trailing_scale(_last_columns(np.abs(before), TRAILING_POINTS + n_query), denom)
    forecasts = Forecasts(query=forecast[:, n_before:], resid_scale=fast.resid_scale, recent=fast.recent,
                          point_scale=point_scale)
    return tasks, with_stuck_runs(score_points(tasks, forecasts, cal, threshold=threshold), raw, tasks.scale, threshold)


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
        y_hat=pts.y_hat, lower=pts.lower, upper=pts.upper, score=score,
        p_value=np.where(np.isfinite(pts.p_value), np.where(tested, np.exp(both), pts.p_value), np.nan),
        is_anomaly=np.nan_to_num(score, nan=-np.inf) >= threshold,
    )


def _last_columns(a: np.ndarray, n: int) -> np.ndarray:
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


def _flags(dev: np.ndarray, denom: np.ndarray, cal: Calibration, threshold: float, routine: np.ndarray) -> np.ndarray:
    """Which deviations (B, n) (normalised units) score at or above the threshold; ``routine`` (B,)
    is the |u| the series' own recent residuals reach routinely (see RoutineTail)."""
    u = np.abs(dev / denom[:, None])
    score = log_p_to_score(cal.log_tail_probability(u))
    return (np.nan_to_num(score, nan=-np.inf) >= threshold) & (np.nan_to_num(u, nan=-np.inf) > routine[:, None])


HELD_POINTS = 3  # flagged points (of the last 2 x this many) after which a change is the new level


def shift_accepted_after(query_len: int) -> int:
    """Flagged points after which the observed values enter the lags again: 3 of the last 6,
    whatever the step (``query_len``, the points of a day, no longer matters). It was an hour of
    points: 60 on 1-minute telemetry, where each frequent level change kept the lags on the old
    level for an hour and the forecasts were off by the whole step meanwhile; three flagged
    points of six are already a change (about 2e-6 on clean points at the default threshold)."""
    return HELD_POINTS


def _forecast_in_time_order(
    adapted: Adapted, gate: np.ndarray, anchor: np.ndarray, tasks: Tasks, observed: np.ndarray, denom: np.ndarray,
    routine: np.ndarray, recent: np.ndarray, cal: Calibration,
    threshold: float, spec: LagSpec, hold: np.ndarray, *, accept_after: int, first_scored: int,
) -> np.ndarray:
    """One-step forecasts (B, P+Q) of the last P points before the day and the day's Q points, in
    time order (the net's correction times ``gate``, see :func:`shrink_to_reference`); each flagged
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
    trail = _last_columns(np.abs(tasks.recent_values - recent)[:, : tasks.recent_values.shape[1] - first_scored],
                          TRAILING_POINTS)  # (B, L) ring buffer of the residuals before each point
    z = tasks.z_window.copy()  # (B, W) inputs; flagged points get replaced here
    first = z.shape[1] - observed.shape[1]  # window column of the first point
    forecast = np.empty_like(observed)
    recent_flags = np.zeros((observed.shape[0], 2 * accept_after), dtype=bool)  # (B, 2a) ring buffer
    ago = reference_lag(spec)  # a period (or a step) ago: the unchanged history confirms a jump
    for i in range(observed.shape[1]):
        c = first + i
        if i > 0:  # a missing point carries the (cleaned) previous value forward, as make_windows does
            z[:, c] = np.where(np.isfinite(observed[:, i]), observed[:, i], z[:, c - 1])
        scale_i = trailing_scale(np.concatenate([trail, trail[:, :1]], axis=1), denom)[:, 0]  # (B,) see trailing_scale
        half = q_half * scale_i
        x, base, naive = lag_inputs(z, np.array([c]), spec, use_second=tasks.use_second)
        forecast[:, i] = gate * adapted.correction(x)[:, 0] + anchored(anchor, base[:, 0], z[:, c - 1], naive[:, 0])
        dev = observed[:, i] - forecast[:, i]
        flagged = _flags(dev[:, None], scale_i, cal, threshold, routine)[:, 0]
        trail = np.concatenate([trail[:, 1:], np.abs(dev)[:, None]], axis=1)  # |dev| >= half where flagged
        recent_flags[:, i % recent_flags.shape[1]] = flagged & (i >= first_scored)
        new_level = recent_flags.sum(axis=1) > accept_after
        replaced = flagged & ~new_level & hold  # (see cleaning_pays)
        if i < first_scored:  # before the day: a jump against the observed history too, else no lock-in
            replaced &= np.abs(observed[:, i] - tasks.z_window[:, c - ago]) >= half
        # a new level: lags the net never saw, the reference follows it
        gate = np.where(new_level, 0.0, gate)
        anchor = np.where(new_level, ANCHOR_REFERENCE, anchor)
        with np.errstate(divide="ignore", invalid="ignore"):
            kept = np.where(replaced, half**2 / np.where(replaced, dev, 1.0), 0.0)  # band edge .. ~0 far out
        z[:, c] = np.where(replaced, forecast[:, i] + kept, z[:, c])
    return forecast


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
