"""The MAML paper's sine-wave regression benchmark (Finn et al. 2017, section 5.1).

Tasks: y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]; K support and K query
points per task. Model: MLP 1-40-40-1 ReLU. Meta-training: one inner step with alpha = 0.01
(or learned per parameter, Meta-SGD), meta-batch 25, Adam 1e-3, 70,000 iterations. Evaluation:
600 fixed tasks per K (a fixed seed, independent of the training seed), query MSE after 1 and 10
inner steps, mean and 95% interval (1.96 standard errors), as the paper's code reports it. With
learned step sizes (Meta-SGD, trained for one step) the 10-step rows take the learned step in 10
equal sub-steps; the ten full learned steps, which overshoot, are reported beside them.

``k_shot=None`` trains one model per K (5, 10, 20), as both papers do (train K = test K); the
models train in parallel processes with one torch thread each. ``k_shot=K`` trains one model at
K and evaluates it at all three K. The paper's transfer baseline (one network pretrained on all
tasks jointly, then fine-tuned with the same inner steps) is trained and reported beside it.

    python -m maml_anomaly.benchmarks.sine [--k-shot K] [--iterations N] [--seed S] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from maml_anomaly.core.maml import Params, adapt_tasks, masked_mse, predict, task_query_losses
from maml_anomaly.core.model import Forecaster, init_params

PAPER_K_SHOTS = (5, 10, 20)
EVAL_SEED = 600_2017  # the 600 evaluation tasks never depend on the training seed
VALIDATION_SEED = 100_2017  # tasks on which the baseline's fine-tuning step size is chosen
EVAL_STEPS = (1, 10)
BASELINE_LRS = (0.001, 0.003, 0.01, 0.03, 0.1)
PUBLISHED = {  # one-step MSE, Meta-SGD paper (Li et al. 2017), Table 1
    "maml": {5: 1.13, 10: 0.77, 20: 0.48},
    "meta_sgd": {5: 0.90, 10: 0.53, 20: 0.31},
}


@dataclass(frozen=True)
class SineSettings:
    iterations: int = 70_000
    meta_batch_size: int = 25
    inner_lr: float = 0.01
    train_inner_steps: int = 1
    meta_lr: float = 1e-3
    first_order: bool = False
    learn_inner_lr: bool = True
    multi_step: bool = False
    grad_clip: float | None = None
    hidden: tuple[int, ...] = (40, 40)
    eval_tasks: int = 600
    chunk: int = 500  # iterations of tasks sampled at once (fewer small ops per iteration)


def sample_sine_tasks(n_tasks: int, n_points: int, generator: torch.Generator, *, leading: tuple[int, ...] = ()):
    """x (*leading, n_tasks, n_points, 1) in [-5, 5] and y = A sin(x - phi) (*leading, n_tasks, n_points)."""
    shape = (*leading, n_tasks)
    amplitude = 0.1 + 4.9 * torch.rand(shape, generator=generator)  # (*L, n)
    phase = math.pi * torch.rand(shape, generator=generator)  # (*L, n)
    x = -5.0 + 10.0 * torch.rand((*shape, n_points, 1), generator=generator)  # (*L, n, P, 1)
    y = amplitude[..., None] * torch.sin(x[..., 0] - phase[..., None])  # (*L, n, P)
    return x, y


def _flat_layout(params: Params):
    names = list(params)
    return names, [params[k].shape for k in names], [params[k].numel() for k in names]


def _unflat(flat: Tensor, layout, n_tasks: int) -> Params:
    """(M, P) stacked flat weights of M models -> Params of (M * n_tasks, ...), n_tasks copies each."""
    names, shapes, sizes = layout
    m = flat.shape[0]
    out = {}
    for name, part, shape in zip(names, flat.split(sizes, dim=1), shapes):
        w = part.view(m, 1, *shape).expand(m, n_tasks, *shape)  # (M, B, ...)
        out[name] = w[0] if m == 1 else w.reshape(m * n_tasks, *shape)
    return out


def _stack_tasks(k_shots: tuple[int, ...], batch: int, chunk: int, gens: list[torch.Generator]):
    """A chunk of training tasks for M models, each at its own K, padded to the largest K.

    Returns x (chunk, M*B, 2*Kmax, 1), y (chunk, M*B, 2*Kmax), and support / query weights
    (M*B, Kmax) that mask the padding (None when every model has the same K).
    """
    k_max = max(k_shots)
    xs, ys = [], []
    for k, g in zip(k_shots, gens):  # one generator per model: a model's tasks do not depend on its neighbours
        x, y = sample_sine_tasks(batch, 2 * k, g, leading=(chunk,))  # (C, B, 2K, 1), (C, B, 2K)
        pad = k_max - k
        x = torch.cat(
            [x[:, :, :k], x.new_zeros(chunk, batch, pad, 1), x[:, :, k:], x.new_zeros(chunk, batch, pad, 1)], 2
        )
        y = torch.cat([y[:, :, :k], y.new_zeros(chunk, batch, pad), y[:, :, k:], y.new_zeros(chunk, batch, pad)], 2)
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)  # (C, M*B, 2*Kmax, ...)
    if len(set(k_shots)) == 1:
        return x, y, None
    mask = torch.cat([(torch.arange(k_max) < k).float().expand(batch, k_max) for k in k_shots])  # (M*B, Kmax)
    return x, y, mask


def meta_train_sine(
    k_shots: tuple[int, ...], settings: SineSettings, seed: int, progress: Callable[[int, int], None] | None = None
) -> tuple[list[Params], list[Params | None]]:
    """Meta-train one model per entry of k_shots, stacked along the task dimension in one process.

    Returns each model's initial weights and learned inner learning rates (None when fixed).
    """
    s = settings
    m, b, k_max = len(k_shots), s.meta_batch_size, max(k_shots)
    model = Forecaster(1, s.hidden)
    inits = []
    for k in k_shots:
        torch.manual_seed(seed * 1000 + k)
        inits.append(init_params(Forecaster(1, s.hidden)))
    layout = _flat_layout(inits[0])
    theta = torch.stack([torch.cat([p[k].reshape(-1) for k in layout[0]]) for p in inits]).requires_grad_()  # (M, P)
    leaves = [theta]
    alphas = None
    if s.learn_inner_lr:
        alphas = torch.full_like(theta, s.inner_lr).requires_grad_()  # (M, P): Meta-SGD, per parameter
        leaves.append(alphas)
    opt = torch.optim.Adam(leaves, lr=s.meta_lr)
    gens = [torch.Generator().manual_seed(seed * 1000 + k + 1) for k in k_shots]
    for it in range(s.iterations):
        if it % s.chunk == 0:
            xc, yc, mask = _stack_tasks(k_shots, b, min(s.chunk, s.iterations - it), gens)
        x, y = xc[it % s.chunk], yc[it % s.chunk]  # (M*B, 2*Kmax, 1), (M*B, 2*Kmax)
        losses = task_query_losses(
            model,
            _unflat(theta, layout, b),
            x[:, :k_max],
            y[:, :k_max],
            x[:, k_max:],
            y[:, k_max:],
            steps=s.train_inner_steps,
            lr=s.inner_lr,
            inner_lrs=None if alphas is None else _unflat(alphas, layout, b),
            weight_support=mask,
            weight_query=mask,
            first_order=s.first_order,
            multi_step=s.multi_step,
        )  # (M*B,)
        loss = losses.view(m, b).mean(1).sum()  # models are independent: each gets its own gradient
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip is not None:
            _clip_per_model(leaves, s.grad_clip)
        opt.step()
        if progress is not None and (it + 1) % 1000 == 0:
            progress(it + 1, s.iterations)
    names, shapes, sizes = layout
    out_params, out_lrs = [], []
    for i in range(m):
        out_params.append({k: t.detach().view(sh).clone() for k, t, sh in zip(names, theta[i].split(sizes), shapes)})
        out_lrs.append(
            None
            if alphas is None
            else {k: t.detach().view(sh).clone() for k, t, sh in zip(names, alphas[i].split(sizes), shapes)}
        )
    return out_params, out_lrs


def _clip_per_model(leaves: list[Tensor], max_norm: float) -> None:
    """Clip each model's meta-gradient (a row of every (M, P) leaf) to max_norm, independently."""
    norm = torch.sqrt(sum(t.grad.square().sum(1) for t in leaves))  # (M,)
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)[:, None]  # (M, 1)
    for t in leaves:
        t.grad.mul_(scale)


def pretrain_sine(settings: SineSettings, seed: int, points_per_task: int = 20) -> Params:
    """The paper's transfer baseline: one network regressed on all tasks jointly (no inner loop)."""
    s = settings
    torch.manual_seed(seed * 1000 + 7)
    model = Forecaster(1, s.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=s.meta_lr)
    g = torch.Generator().manual_seed(seed * 1000 + 8)
    for it in range(s.iterations):
        if it % s.chunk == 0:
            xc, yc = sample_sine_tasks(
                s.meta_batch_size, points_per_task, g, leading=(min(s.chunk, s.iterations - it),)
            )
        loss = (model(xc[it % s.chunk])[..., 0] - yc[it % s.chunk]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return init_params(model)


def eval_tasks(k_shot: int, n_tasks: int, seed: int = EVAL_SEED):
    """The fixed evaluation tasks for one K: support x, y then query x, y (K points each)."""
    x, y = sample_sine_tasks(n_tasks, 2 * k_shot, torch.Generator().manual_seed(seed + k_shot))
    return x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:]


@torch.no_grad()
def query_mse_by_step(params: Params, inner_lrs: Params | None, tasks, *, lr: float, hidden, max_steps: int) -> Tensor:
    """Per-task query MSE after 0..max_steps inner steps: (max_steps + 1, n_tasks)."""
    model = Forecaster(1, hidden)
    xs, ys, xq, yq = tasks
    task_params = {k: v.expand(xs.shape[0], *v.shape) for k, v in params.items()}
    rows = [masked_mse(predict(model, task_params, xq), yq, None)]
    for _ in range(max_steps):
        task_params = adapt_tasks(model, task_params, xs, ys, steps=1, lr=lr, inner_lrs=inner_lrs, first_order=True)
        rows.append(masked_mse(predict(model, task_params, xq), yq, None))
    return torch.stack(rows)  # (S + 1, N)


def _row(k_shot: int, steps: int, mse: Tensor, **extra) -> dict:
    """Mean and 95% interval over tasks; a diverged adaptation (non-finite MSE) reports null."""
    mean = mse.mean().item()
    if not math.isfinite(mean):
        return {"k_shot": k_shot, "inner_steps": steps, "mse": None, "ci95": None, "diverged": True, **extra}
    ci = 1.96 * mse.std(unbiased=True).item() / math.sqrt(mse.numel())
    return {"k_shot": k_shot, "inner_steps": steps, "mse": round(mean, 4), "ci95": round(ci, 4), **extra}


def _steps_row(
    params: Params, inner_lrs: Params | None, tasks, mse: Tensor, k_shot: int, steps: int, s: SineSettings, **extra
) -> dict:
    """The row for ``steps`` inner steps (``mse``: query MSE by step with the weights' own step sizes).

    Learned (Meta-SGD) step sizes are trained for one step; applied ten times they overshoot and
    diverge. Their multi-step row splits the learned step into ``steps`` equal sub-steps (the same
    first-order displacement, taken along the loss surface; a factor chosen on validation tasks was
    tried and was unstable); the full-size steps' MSE is kept beside it as ``mse_full_learned_steps``
    (null where it diverged).
    """
    if inner_lrs is None or steps == 1:
        return _row(k_shot, steps, mse[steps], **extra)
    split = {k: v / steps for k, v in inner_lrs.items()}
    split_mse = query_mse_by_step(params, split, tasks, lr=s.inner_lr, hidden=s.hidden, max_steps=steps)[steps]
    full = _row(k_shot, steps, mse[steps])["mse"]
    return _row(k_shot, steps, split_mse, inner_lr_per_step=f"learned / {steps}", mse_full_learned_steps=full, **extra)


def _train_and_evaluate(job: dict) -> dict:
    """One worker's job: meta-train models for job['k_shots'] and evaluate each on its eval K's."""
    torch.set_num_threads(job["threads"])
    s = SineSettings(**job["settings"])
    t0, c0 = time.perf_counter(), time.process_time()
    params, lrs = meta_train_sine(tuple(job["k_shots"]), s, job["seed"], progress=job.get("progress"))
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    rows, zero = [], []
    for k_train, p, a in zip(job["k_shots"], params, lrs):
        for k_eval in job["eval_k_shots"] or [k_train]:
            tasks = eval_tasks(k_eval, s.eval_tasks)
            mse = query_mse_by_step(p, a, tasks, lr=s.inner_lr, hidden=s.hidden, max_steps=max(EVAL_STEPS))
            rows += [_steps_row(p, a, tasks, mse, k_eval, st, s, train_k_shot=k_train) for st in EVAL_STEPS]
            zero.append(_row(k_eval, 0, mse[0], train_k_shot=k_train))
        if a is not None:
            flat = torch.cat([v.reshape(-1) for v in a.values()])
            zero[-1]["learned_inner_lr"] = {
                "mean": round(flat.mean().item(), 5),
                "min": round(flat.min().item(), 5),
                "max": round(flat.max().item(), 5),
            }
    return {
        "rows": rows,
        "no_adaptation": zero,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu, 1),
    }


def _baseline(job: dict) -> dict:
    """Pretrain jointly, then fine-tune with plain SGD; the step size is chosen per (K, steps) on
    separate validation tasks (the paper's "automatically tuned step size")."""
    torch.set_num_threads(job["threads"])
    s = SineSettings(**job["settings"])
    t0 = time.perf_counter()
    params = pretrain_sine(s, job["seed"])
    rows = []
    for k in job["eval_k_shots"]:
        val = {
            lr: query_mse_by_step(
                params, None, eval_tasks(k, 200, VALIDATION_SEED), lr=lr, hidden=s.hidden, max_steps=max(EVAL_STEPS)
            ).mean(1)
            for lr in BASELINE_LRS
        }
        mse = {
            lr: query_mse_by_step(
                params, None, eval_tasks(k, s.eval_tasks), lr=lr, hidden=s.hidden, max_steps=max(EVAL_STEPS)
            )
            for lr in BASELINE_LRS
        }
        rows.append(_row(k, 0, mse[BASELINE_LRS[0]][0]))
        for st in EVAL_STEPS:
            best = min(BASELINE_LRS, key=lambda lr: val[lr][st].item())
            rows.append(_row(k, st, mse[best][st], inner_lr=best))
    return {"rows": rows, "train_seconds": round(time.perf_counter() - t0, 1)}


def run_sine_benchmark(
    k_shot: int | None = None,
    iterations: int = 70_000,
    seed: int = 0,
    first_order: bool = False,
    learn_inner_lr: bool = True,
    eval_tasks: int = 600,
    progress: Callable[[str], None] | None = None,
    *,
    multi_step: bool = False,
    grad_clip: float | None = None,
    train_inner_steps: int = 1,
    processes: int = 2,
    baseline: bool = True,
) -> dict:
    """Meta-train on sine tasks and evaluate as the paper does; returns the JSON-ready summary.

    k_shot None: one model per K in (5, 10, 20), each evaluated at its own K. k_shot K: one model
    trained at K, evaluated at all three. ``processes`` worker processes (one torch thread each)
    share the jobs; 1 runs everything in this process, with the caller's thread setting.
    """
    settings = SineSettings(
        iterations=iterations,
        first_order=first_order,
        learn_inner_lr=learn_inner_lr,
        eval_tasks=eval_tasks,
        multi_step=multi_step,
        grad_clip=grad_clip,
        train_inner_steps=train_inner_steps,
    )
    base = {"settings": asdict(settings), "seed": seed, "threads": 1}
    if k_shot is None:  # the heaviest model alone, the two lighter ones stacked in one process
        jobs = [dict(base, k_shots=[20], eval_k_shots=None), dict(base, k_shots=[5, 10], eval_k_shots=None)]
    else:
        jobs = [dict(base, k_shots=[k_shot], eval_k_shots=list(PAPER_K_SHOTS))]
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    say(f"sine: {len(jobs)} meta-training job(s) of {iterations} iterations, {processes} process(es)")
    if processes <= 1:
        base["threads"] = torch.get_num_threads()
        outs = [_train_and_evaluate(dict(j, threads=base["threads"])) for j in jobs]
        base_out = _baseline(dict(base, eval_k_shots=list(PAPER_K_SHOTS))) if baseline else None
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
            futures = [pool.submit(_train_and_evaluate, j) for j in jobs]
            base_future = pool.submit(_baseline, dict(base, eval_k_shots=list(PAPER_K_SHOTS))) if baseline else None
            outs = [f.result() for f in futures]
            base_out = base_future.result() if base_future else None
    seconds = time.perf_counter() - t0
    key = lambda r: (r["k_shot"], r["inner_steps"], r["train_k_shot"])  # noqa: E731
    result = {
        "benchmark": "sine",
        "train_k_shot": k_shot,  # null: one model per K, trained at the K it is evaluated on
        "iterations": iterations,
        "seconds": round(seconds, 1),
        "results": sorted((r for o in outs for r in o["rows"]), key=key),
        "no_adaptation": sorted((r for o in outs for r in o["no_adaptation"]), key=key),
        "method": ("Meta-SGD" if learn_inner_lr else "MAML") + (" first-order" if first_order else " second-order"),
        "settings": asdict(settings) | {"seed": seed, "processes": processes, "threads_per_process": base["threads"]},
        "train_seconds": [o["train_seconds"] for o in outs],  # wall, per training process
        "train_cpu_seconds": [o["train_cpu_seconds"] for o in outs],  # what the wall would be on idle cores
        "published_one_step_mse": PUBLISHED,
    }
    if base_out is not None:
        result["baseline"] = {
            "name": "pretrained on all tasks jointly, fine-tuned with SGD (step size tuned on validation tasks)",
            "results": base_out["rows"],
            "train_seconds": base_out["train_seconds"],
        }
    say(f"sine: done in {seconds:.0f} s")
    return result


def _num(v: float | None) -> str:
    """A missing or non-finite MSE is a diverged adaptation."""
    return "diverged" if v is None or not math.isfinite(v) else f"{v:.3f}"


def format_table(result: dict) -> str:
    """A plain-text table of the result rows (and the baseline's) for the terminal."""
    lines = [
        f"{result['method']}, {result['iterations']} iterations, {result['seconds']} s",
        f"{'K':>3} {'steps':>5} {'train K':>7} {'MSE':>8} {'ci95':>7}   {'baseline MSE':<16} note",
    ]
    base = {(r["k_shot"], r["inner_steps"]): r for r in result.get("baseline", {}).get("results", [])}
    for r in result["results"]:
        b = base.get((r["k_shot"], r["inner_steps"]))
        bs = f"{_num(b.get('mse'))} +- {_num(b.get('ci95'))}" if b else ""
        note = ""
        if "inner_lr_per_step" in r:
            note = f"steps of {r['inner_lr_per_step']} (full learned steps: {_num(r.get('mse_full_learned_steps'))})"
        lines.append(
            f"{r['k_shot']:>3} {r['inner_steps']:>5} {r.get('train_k_shot', ''):>7} {_num(r.get('mse')):>8} "
            f"{_num(r.get('ci95')):>7}   {bs:<16} {note}".rstrip()
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m maml_anomaly.benchmarks.sine", description=__doc__.splitlines()[0])
    p.add_argument("--k-shot", type=int, default=None, help="train one model at K (default: one per K = 5, 10, 20)")
    p.add_argument("--iterations", type=int, default=70_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--no-learn-inner-lr", action="store_true", help="plain MAML: fixed inner lr 0.01")
    p.add_argument("--eval-tasks", type=int, default=600)
    p.add_argument("--multi-step", action="store_true")
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--train-inner-steps", type=int, default=1)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    result = run_sine_benchmark(
        k_shot=a.k_shot,
        iterations=a.iterations,
        seed=a.seed,
        first_order=a.first_order,
        learn_inner_lr=not a.no_learn_inner_lr,
        eval_tasks=a.eval_tasks,
        progress=lambda msg: print(msg, file=sys.stderr),
        multi_step=a.multi_step,
        grad_clip=a.grad_clip,
        train_inner_steps=a.train_inner_steps,
        processes=a.processes,
        baseline=not a.no_baseline,
    )
    print(json.dumps(result) if a.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
