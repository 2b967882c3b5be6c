"""The inner loop of daily scoring for the ``Forecaster`` MLP, written out by hand (no autograd).

Scoring adapts first order with no graph: every inner step is a forward pass, the gradient of
the weighted Huber support loss, and an SGD update. Written out for the MLP, the same step
needs far fewer passes over memory than autograd's generic version (measured in
docs/performance.md):

- the first step runs on the shared meta-init: its forward is one large matrix product over
  all B * K rows instead of B tiny ones, and its output is the meta-init's support forecast
  that the divergence guard compares against (kept, not recomputed);
- gradients are never materialised for a plain step size: ``baddbmm_`` adds ``-lr * d^T a``
  straight into each task's weights (learned per-parameter step sizes need one buffer);
- ReLU's backward is ``threshold_backward`` on the stored activations, as autograd does.

The results equal ``maml.adapt_tasks`` with ``scoring.huber_loss`` and ``first_order=True`` up to
float rounding (tests/test_fast_adapt.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from maml_anomaly.core.maml import InnerLrs, Params, lrs_at
from maml_anomaly.core.model import Forecaster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adapted:
    """Per-task weights after the inner loop, and the meta-init's forecast of the support points."""

    params: Params  # each (B, ...)
    pred_support_init: Tensor  # (B, K, n_out) forecasts of the support inputs by the meta-init


def supports(model: nn.Module) -> bool:
    """Whether :func:`adapt_huber` knows this model's structure (the project's MLP)."""
    return type(model) is Forecaster


def adapt_huber(
    model: Forecaster,
    params: Params,
    x: Tensor,
    y: Tensor,
    weight: Tensor | None,
    *,
    steps: int,
    lr: float,
    inner_lrs: InnerLrs | None = None,
    delta: float = 1.0,
) -> Adapted:
    """``steps`` first-order SGD steps on each task's weighted Huber support loss, under no_grad.

    params: the shared (unbatched) meta-init; x (B, K, D), y and weight (B, K) (weight None: all
    ones). The loss is ``scoring.huber_loss`` (x2, so its gradient is ``2 clamp(err, +-delta)``
    per point, weighted and divided by the weight sum). Never mutates ``params``.
    """
    n_layers = len(model.layers)
    names = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(n_layers)]
    with torch.no_grad():
        ws = [params[w] for w, _ in names]  # shared (out, in) until the first update
        bs = [params[b] for _, b in names]
        if weight is None:
            dscale = torch.full_like(y, 2.0 / y.shape[-1])  # (B, K)
        else:
            dscale = weight * (2.0 / weight.sum(-1, keepdim=True).clamp_min(1e-12))  # (B, K)
        init_out = None
        if steps == 0:
            init_out = _forward(ws, bs, x, shared=True)[-1]
        for step in range(steps):
            shared = step == 0
            acts = _forward(ws, bs, x, shared=shared)  # inputs of each layer, then the output
            out = acts.pop()  # (B, K, n_out)
            if shared:
                init_out = out
            d = (out[..., 0] - y).clamp_(-delta, delta).mul_(dscale).unsqueeze(-1)  # (B, K, 1) dLoss/dOutput
            if out.shape[-1] > 1:
                d = torch.nn.functional.pad(d, (0, out.shape[-1] - 1))  # other outputs are not scored
            lrs = lrs_at(inner_lrs, step)
            for i in range(n_layers - 1, -1, -1):
                d_in = None
                if i > 0:  # backprop through the pre-update weights, then ReLU
                    d_in = d @ ws[i] if shared else torch.bmm(d, ws[i])  # (B, K, in)
                    d_in = torch.ops.aten.threshold_backward(d_in, acts[i], 0.0)
                w_lr = lr if lrs is None else lrs[names[i][0]]
                b_lr = lr if lrs is None else lrs[names[i][1]]
                ws[i] = _update_weight(ws[i], d, acts[i], w_lr, shared)
                bs[i] = _update_bias(bs[i], d.sum(-2), b_lr, shared)  # d.sum: (B, out)
                d = d_in
        n = x.shape[0]
        if steps == 0:  # no update made the per-task copies: make them (callers may adapt them further)
            ws = [w.expand(n, *w.shape).clone() for w in ws]
            bs = [b.expand(n, *b.shape).clone() for b in bs]
        task_params = {k: v for (wn, bn), w, b in zip(names, ws, bs) for k, v in ((wn, w), (bn, b))}
    return Adapted(params=task_params, pred_support_init=init_out)


def _forward(ws: list[Tensor], bs: list[Tensor], x: Tensor, *, shared: bool) -> list[Tensor]:
    """[x, relu outputs of the hidden layers..., output]; shared: one weight set for all tasks."""
    acts = [x]
    h = x
    last = len(ws) - 1
    for i, (w, b) in enumerate(zip(ws, bs)):
        if shared:
            h = torch.nn.functional.linear(h, w, b)  # (B, K, out): one matmul over B * K rows
        else:
            h = torch.baddbmm(b.unsqueeze(-2), h, w.transpose(-1, -2))  # (B, K, out)
        if i < last:
            h = torch.relu_(h)
        acts.append(h)
    return acts


def _update_weight(w: Tensor, d: Tensor, a: Tensor, lr, shared: bool) -> Tensor:
    """w - lr * d^T a per task; w (out, in) shared or (B, out, in), d (B, K, out), a (B, K, in)."""
    n = d.shape[0]
    if not torch.is_tensor(lr):
        if shared:  # the first step writes each task's own copy: one pass, no separate clone
            return torch.baddbmm(w.expand(n, *w.shape), d.transpose(-1, -2), a, alpha=-lr)
        return w.baddbmm_(d.transpose(-1, -2), a, alpha=-lr)
    g = torch.bmm(d.transpose(-1, -2), a)  # (B, out, in)
    if shared:
        return torch.addcmul(w.expand(n, *w.shape), g, lr, value=-1.0)
    return w.addcmul_(g, lr, value=-1.0)


def _update_bias(b: Tensor, g: Tensor, lr, shared: bool) -> Tensor:
    """b - lr * g per task; b (out,) shared or (B, out), g (B, out)."""
    n = g.shape[0]
    if shared:
        b = b.expand(n, *b.shape)
        return torch.add(b, g, alpha=-lr) if not torch.is_tensor(lr) else torch.addcmul(b, g, lr, value=-1.0)
    if not torch.is_tensor(lr):
        return b.add_(g, alpha=-lr)
    return b.addcmul_(g, lr, value=-1.0)


# -- the fused C kernel (optional) ----------------------------------------------------------------

KERNEL_ENV = "MAML_ANOMALY_KERNEL"  # "torch" turns the C kernel off (e.g. to compare)
_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
_KERNEL: list = []  # [ctypes function or None], loaded once per process


def adapt_and_predict(
    model: Forecaster,
    params: Params,
    x: Tensor,
    y: Tensor,
    weight: Tensor,
    x_pred: Tensor,
    *,
    steps: int,
    lr: float,
    inner_lrs: InnerLrs | None = None,
    delta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Adapt as :func:`adapt_huber`, then forecast ``x_pred`` (B, P, D) with the adapted weights.

    Returns (forecasts of x_pred (B, P), the meta-init's support forecasts (B, K)), output 0.
    On CPU the fused C kernel runs when it could be built (a C compiler on the machine), else
    the torch loop; both give the same numbers up to float rounding.
    """
    fn = _kernel() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if fn is None:
        adapted = adapt_huber(model, params, x, y, weight, steps=steps, lr=lr, inner_lrs=inner_lrs, delta=delta)
        from maml_anomaly.core.maml import predict

        return predict(model, adapted.params, x_pred)[..., 0], adapted.pred_support_init[..., 0]
    return _run_kernel(fn, model, params, x, y, weight, x_pred, steps=steps, lr=lr, inner_lrs=inner_lrs, delta=delta)


def _pack(model: Forecaster, tensors: Params) -> Tensor:
    """Weights (or step sizes broadcast to the weights' shapes) packed as the kernel reads them."""
    parts = []
    for i, layer in enumerate(model.layers):
        w = torch.broadcast_to(tensors[f"layers.{i}.weight"], layer.weight.shape)  # (out, in)
        b = torch.broadcast_to(tensors[f"layers.{i}.bias"], layer.bias.shape)  # (out,)
        parts += [w.t().reshape(-1), b.reshape(-1)]  # W^T (in, out) then the bias
    return torch.cat(parts).to(torch.float32).contiguous()


def _run_kernel(fn, model, params, x, y, weight, x_pred, *, steps, lr, inner_lrs, delta) -> tuple[Tensor, Tensor]:
    import ctypes

    n, k, p = x.shape[0], x.shape[1], x_pred.shape[1]
    sizes = (ctypes.c_int * (len(model.layers) + 1))(model.n_inputs, *model.hidden, model.n_outputs)
    init = _pack(model, params)
    lr_sets = [] if inner_lrs is None else [inner_lrs] if isinstance(inner_lrs, dict) else list(inner_lrs)
    lrs = torch.stack([_pack(model, s) for s in lr_sets]) if lr_sets else None  # (sets, n_params)
    x, y, x_pred = x.contiguous(), y.contiguous(), x_pred.contiguous()
    w = torch.ones_like(y) if weight is None else weight.to(torch.float32).contiguous()
    pred, pred_s0 = torch.empty(n, p), torch.empty(n, k)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr()) if t is not None else None  # noqa: E731
    rc = fn(
        ctypes.c_int64(n),
        k,
        p,
        len(model.layers),
        sizes,
        ptr(x),
        ptr(y),
        ptr(w),
        ptr(x_pred),
        ptr(init),
        ctypes.c_int64(init.numel()),
        ptr(lrs),
        len(lr_sets),
        ctypes.c_float(lr),
        steps,
        ctypes.c_float(delta),
        ptr(pred),
        ptr(pred_s0),
    )
    if rc != 0:
        raise MemoryError("the adaptation kernel could not allocate its workspace")
    return pred, pred_s0


def _kernel():
    """The compiled kernel's function, or None (no compiler, build failed, or turned off); cached."""
    if not _KERNEL:
        _KERNEL.append(None if os.environ.get(KERNEL_ENV, "").lower() == "torch" else _load_kernel())
    return _KERNEL[0]


def _load_kernel():
    """Build (once per source, flags and CPU; cached on disk) and load kernels/adapt_mlp.c."""
    import ctypes

    source = Path(__file__).with_name("kernels") / "adapt_mlp.c"
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None or not source.exists():
        log.info("no C compiler found: adaptation uses the torch loop")
        return None
    key = hashlib.sha256(source.read_bytes() + " ".join([cc, *_CFLAGS, _cpu_id()]).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"adapt_mlp-{key}.so"
    tmp = lib.with_name(f".{lib.name}.{os.getpid()}.tmp")  # workers may build at once: rename atomically
    try:
        if not lib.exists():
            lib.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [cc, *_CFLAGS, "-shared", "-fPIC", "-o", str(tmp), str(source)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            os.replace(tmp, lib)
        fn = ctypes.CDLL(str(lib)).adapt_mlp_huber
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("the adaptation kernel could not be built (%s): using the torch loop", exc)
        tmp.unlink(missing_ok=True)
        return None
    fn.restype = ctypes.c_int
    return fn


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "maml-anomaly" / "kernels"


def _cpu_id() -> str:
    """What -march=native depends on: a library built for another CPU must not be reused."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()
