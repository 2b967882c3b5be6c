"""Batched MAML against a per-task Python loop doing the same work, measured in the same run.

Series-like setting by default: MLP 8-40-40-1 (8 lags in, one-step forecast out), K = 24 support
pairs per series, 5 inner SGD steps, then a one-step forecast. Prints

- adaptation series/s: ``adapt`` (first order, under no_grad, chunks of ``--chunk`` series) over
  ``--series`` series, against a loop adapting ``--loop-series`` series one at a time
  (functional_call + autograd.grad, the learn2learn / higher pattern);
- meta-training steps/s: ``meta_loss`` + backward at meta-batch ``--meta-batch-size``, second and
  first order, against the per-task loop computing the same meta-gradient;

and the ratios. Timings are medians of ``--repeats`` runs in CPU seconds of this process, on one
torch thread by default (``--threads``): per core, and robust to a shared machine's waiting.
Large chunks page-fault fresh memory on every call with glibc's defaults; chunks of about 2,000
series (or MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ raised) avoid it.

    python -m maml_anomaly.benchmarks.adapt_speed [--series 10000] [--loop-series 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.func import functional_call

from maml_anomaly.core.maml import Params, adapt, meta_loss, predict
from maml_anomaly.core.model import Forecaster, init_params


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU seconds of this process (one thread): on a shared machine, waiting for a core
    inflates the wall clock of both paths alike, and CPU time is what an idle core would take."""
    fn()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _series_tasks(n: int, k: int, d: int, seed: int):
    """Noisy sinusoid windows: x (n, K+1, d) lags, y (n, K+1) next values; the last pair is the forecast."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(k + 1 + d, dtype=torch.float32)  # (T,)
    phase = 2 * torch.pi * torch.rand(n, 1, generator=g)  # (n, 1)
    amp = 0.5 + torch.rand(n, 1, generator=g)  # (n, 1)
    values = amp * torch.sin(2 * torch.pi * t / 24 + phase) + 0.1 * torch.randn(n, t.numel(), generator=g)  # (n, T)
    x = values.unfold(1, d, 1)[:, : k + 1]  # (n, K+1, d)
    y = values[:, d : d + k + 1]  # (n, K+1)
    return x.contiguous(), y.contiguous()


def batched_adapt_forecast(model, params: Params, x, y, *, steps: int, lr: float, chunk: int):
    """Adapt on the first K pairs of each series and forecast the last point, chunk by chunk."""
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            xs, ys = x[s : s + chunk], y[s : s + chunk]
            tp = adapt(model, params, xs[:, :-1], ys[:, :-1], steps=steps, lr=lr, first_order=True)
            out.append(predict(model, tp, xs[:, -1:])[:, 0, 0])  # (chunk,)
    return torch.cat(out)


def looped_adapt_forecast(model, params: Params, x, y, *, steps: int, lr: float):
    """The same work one series at a time (the pattern of per-task MAML libraries)."""
    out = []
    for i in range(x.shape[0]):
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        for _ in range(steps):
            loss = (functional_call(model, p, (x[i, :-1],))[:, 0] - y[i, :-1]).square().mean()
            grads = torch.autograd.grad(loss, list(p.values()))
            p = {k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(p.items(), grads)}
        with torch.no_grad():
            out.append(functional_call(model, p, (x[i, -1:],))[0, 0])
    return torch.stack(out)


def looped_meta_step(model, params: Params, x, y, *, steps: int, lr: float, first_order: bool):
    """Meta-gradient with one task at a time; x (B, 2K, d): first K pairs support, last K query."""
    k = x.shape[1] // 2
    total = 0.0
    for i in range(x.shape[0]):
        p = dict(params)
        for _ in range(steps):
            loss = (functional_call(model, p, (x[i, :k],))[:, 0] - y[i, :k]).square().mean()
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=not first_order)
            p = {name: v - lr * g for (name, v), g in zip(p.items(), grads)}
        total = total + (functional_call(model, p, (x[i, k:],))[:, 0] - y[i, k:]).square().mean()
    (total / x.shape[0]).backward()


def run_adapt_speed(
    *,
    series: int = 10_000,
    loop_series: int = 300,
    n_inputs: int = 8,
    k_shot: int = 24,
    inner_steps: int = 5,
    inner_lr: float = 0.01,
    chunk: int = 2_000,
    meta_batch_size: int = 32,
    repeats: int = 3,
    seed: int = 0,
) -> dict:
    torch.manual_seed(seed)
    model = Forecaster(n_inputs, (40, 40), 1)
    params = init_params(model)
    x, y = _series_tasks(series, k_shot, n_inputs, seed)  # (N, K+1, d), (N, K+1)
    kw = dict(steps=inner_steps, lr=inner_lr)

    # Same numbers from both paths: the comparison is of the same work.
    n_check = min(50, loop_series)
    diff = (
        (
            batched_adapt_forecast(model, params, x[:n_check], y[:n_check], chunk=chunk, **kw)
            - looped_adapt_forecast(model, params, x[:n_check], y[:n_check], **kw)
        )
        .abs()
        .max()
        .item()
    )

    t_batched = _median_seconds(lambda: batched_adapt_forecast(model, params, x, y, chunk=chunk, **kw), repeats)
    t_loop = _median_seconds(
        lambda: looped_adapt_forecast(model, params, x[:loop_series], y[:loop_series], **kw), repeats
    )
    adapt_batched, adapt_loop = series / t_batched, loop_series / t_loop

    mx, my = _series_tasks(meta_batch_size, 2 * k_shot - 1, n_inputs, seed + 1)  # (B, 2K, d), (B, 2K)
    theta = {k: v.clone().requires_grad_() for k, v in params.items()}
    meta = {}
    for order, first_order in (("second_order", False), ("first_order", True)):

        def batched_step(first_order=first_order):  # the loop's value, bound here
            for v in theta.values():
                v.grad = None
            meta_loss(
                model,
                theta,
                mx[:, :k_shot],
                my[:, :k_shot],
                mx[:, k_shot:],
                my[:, k_shot:],
                first_order=first_order,
                **kw,
            ).backward()

        def looped_step(first_order=first_order):
            for v in theta.values():
                v.grad = None
            looped_meta_step(model, theta, mx, my, first_order=first_order, **kw)

        n_rep = 10
        tb = _median_seconds(lambda n_rep=n_rep: [batched_step() for _ in range(n_rep)], repeats) / n_rep
        tl = _median_seconds(looped_step, repeats)
        meta[order] = {
            "batched_steps_per_s": round(1 / tb, 1),
            "loop_steps_per_s": round(1 / tl, 2),
            "ratio": round(tl / tb, 1),
        }
    return {
        "benchmark": "adapt_speed",
        "setting": {
            "mlp": f"{n_inputs}-40-40-1",
            "k_shot": k_shot,
            "inner_steps": inner_steps,
            "series": series,
            "loop_series": loop_series,
            "chunk": chunk,
            "meta_batch_size": meta_batch_size,
            "threads": torch.get_num_threads(),
            "dtype": "float32",
            "timing": "CPU seconds",
        },
        "adaptation": {
            "batched_series_per_s": round(adapt_batched),
            "loop_series_per_s": round(adapt_loop, 1),
            "ratio": round(adapt_batched / adapt_loop, 1),
            "max_abs_forecast_difference": diff,
        },
        "meta_training": meta,
    }


def format_report(r: dict) -> str:
    a, s = r["adaptation"], r["setting"]
    lines = [
        f"MLP {s['mlp']}, K = {s['k_shot']}, {s['inner_steps']} inner steps, {s['threads']} thread(s), rates per CPU second",
        f"adaptation   batched {a['batched_series_per_s']:>10,} series/s ({s['series']} series)   "
        f"loop {a['loop_series_per_s']:>8,} series/s ({s['loop_series']} series)   ratio {a['ratio']}x",
        f"             forecasts agree to {a['max_abs_forecast_difference']:.1e}",
    ]
    for order, m in r["meta_training"].items():
        lines.append(
            f"meta-train   {order:<12} batched {m['batched_steps_per_s']:>7} steps/s   "
            f"loop {m['loop_steps_per_s']:>6} steps/s   ratio {m['ratio']}x (meta-batch {s['meta_batch_size']})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m maml_anomaly.benchmarks.adapt_speed", description=__doc__.splitlines()[0]
    )
    p.add_argument("--series", type=int, default=10_000)
    p.add_argument("--loop-series", type=int, default=300)
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--k-shot", type=int, default=24)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--chunk", type=int, default=2_000)
    p.add_argument("--meta-batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    r = run_adapt_speed(
        series=a.series,
        loop_series=a.loop_series,
        n_inputs=a.inputs,
        k_shot=a.k_shot,
        inner_steps=a.inner_steps,
        chunk=a.chunk,
        meta_batch_size=a.meta_batch_size,
        repeats=a.repeats,
    )
    print(json.dumps(r) if a.json else format_report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
