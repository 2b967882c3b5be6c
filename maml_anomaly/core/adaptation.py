"""Adaptation of a cluster's forecaster to a batch of series: the adapted forecasts of their
recent and query points one step ahead (normalised units), and the trained cluster's description."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maml_anomaly.core import fast_adapt
from maml_anomaly.core.calibration import Calibration
from maml_anomaly.core.maml import adapt_tasks, expand_params, predict
from maml_anomaly.core.model import Forecaster
from maml_anomaly.core.tasks import TARGET_CLIP, LagSpec, Tasks


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


@dataclass(frozen=True)
class Forecasts:
    """Adapted forecasts of a batch of tasks, in normalised units (reference added)."""

    query: np.ndarray  # (B, Q) one-step-ahead forecasts of the query points from observed lags
    recent: np.ndarray | None = None  # (B, R) the same for the recent targets
    resid_scale: np.ndarray | None = None  # (B,) robust scale of the recent residuals (NaN if none), once measured
    gate: np.ndarray | None = None  # (B,) share of the net's correction kept (see shrink_to_reference)
    anchor: np.ndarray | None = None  # (B,) what the forecast stands on (see anchored)
    point_scale: np.ndarray | None = None  # (B, Q) per-point residual scale where it rose (see trailing_scale)
    evidence: "Evidence | None" = None  # what each candidate forecaster scored on the recent points


@dataclass(frozen=True)
class Evidence:
    """Per task, how the candidate forecasters (``references.CANDIDATES``) did on the recent
    targets adaptation did not fit, and the one chosen on them; the day's points add to it."""

    fixed: np.ndarray  # (B,) int, the candidate chosen before the day
    error_sum: np.ndarray  # (B, C) each candidate's summed absolute one-step error on those points
    count: np.ndarray  # (B,) observed points among them (0: a series' first day)

    def take(self, which: np.ndarray) -> "Evidence":
        return Evidence(self.fixed[which], self.error_sum[which], self.count[which])


@dataclass(frozen=True)
class Adapted:
    """A batch of tasks' forecasters after adaptation to their support sets (normalised units)."""

    model: torch.nn.Module
    params: dict[str, torch.Tensor]  # per task (B, ...): adapted, or the meta-init where that was better
    device: torch.device

    def take(self, which: np.ndarray) -> "Adapted":
        """The forecasters of the tasks selected by a boolean mask or index array."""
        idx = torch.from_numpy(np.flatnonzero(which) if np.asarray(which).dtype == bool else np.asarray(which))
        return Adapted(self.model, {k: v[idx.to(v.device)] for k, v in self.params.items()}, self.device)

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
                model,
                per_task(base, x_s.shape[0]),
                x_s,
                y_s,
                steps=inner_steps,
                lr=inner_lr,
                inner_lrs=lrs,
                weight=w_s,
                first_order=True,
                loss_fn=huber_loss,
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


def per_task(params: dict[str, torch.Tensor], n_tasks: int) -> dict[str, torch.Tensor]:
    """n_tasks real copies of shared weights, each (n_tasks, ...); differentiable (grads sum back).

    Not ``maml.expand_params``: the model treats a stride-0 expanded view as one shared weight
    (a faster first step), and autograd through that view sends every task's gradient of a loss
    other than masked_mse to task 0 only, which mixes tasks and makes results depend on the batch.
    """
    return {k: v.expand(n_tasks, *v.shape).clone() for k, v in params.items()}


def huber_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, delta: float = 1.0
) -> torch.Tensor:
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
