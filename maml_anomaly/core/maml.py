"""MAML's inner loop (``adapt``) and meta-objective (``meta_loss``), batched over tasks.

Every task gets its own copy of the weights along a leading task dimension B, and one call runs
the inner loop for all tasks at once (no Python loop over tasks). The forward pass is
``model.batched_forward`` when the model has one (plain batched matmuls, the fastest form
measured here) and ``torch.func.vmap`` over ``functional_call`` otherwise. Inner gradients come
from ``model.batched_mse_grads`` (hand-written backpropagation, differentiable) for the default
loss, else from one ``autograd.grad`` of the loss summed over tasks, which gives each task's
weights exactly that task's gradient.

Second order (the default) keeps the graph of the inner gradients so the meta-gradient flows
through them; ``first_order=True`` treats inner gradients as constants and never builds their
graph, which is also what daily scoring uses under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
InnerLrs = Params | Sequence[Params]


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Weighted mean squared error per task.

    pred (B, K, n_out) (only output 0 is scored), target (B, K), weight (B, K) in [0, 1] or
    None for all ones -> (B,). A task whose weights are all zero has loss 0.
    """
    err = (pred[..., 0] - target).square()  # (B, K)
    if weight is None:
        return err.mean(-1)
    return (err * weight).sum(-1) / weight.sum(-1).clamp_min(1e-12)


def batched_forward_fn(model: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    """f(task_params, x): task_params with a leading B, x (B, Q, D) -> (B, Q, n_out)."""
    fast = getattr(model, "batched_forward", None)
    if fast is not None:
        return fast

    def forward(task_params: Params, x: Tensor) -> Tensor:
        return vmap(lambda p, xi: functional_call(model, p, (xi,)))(task_params, x)

    return forward


def predict(model: nn.Module, task_params: Params, x: Tensor) -> Tensor:
    """Forecasts with per-task weights: task_params with leading B, x (B, Q, D) -> (B, Q, n_out)."""
    return batched_forward_fn(model)(task_params, x)


def expand_params(params: Params, n_tasks: int) -> Params:
    """Shared weights viewed as n_tasks copies (no memory copied): each (...) -> (n_tasks, ...)."""
    return {name: p.expand(n_tasks, *p.shape) for name, p in params.items()}


def lrs_at(inner_lrs: InnerLrs | None, step: int) -> Params | None:
    """Learned step sizes for one inner step: one Params for all steps, or one per step."""
    if inner_lrs is None or isinstance(inner_lrs, dict):
        return inner_lrs
    return inner_lrs[min(step, len(inner_lrs) - 1)]


def _needs_graph(task_params: Params, inner_lrs: InnerLrs | None) -> bool:
    """Build a graph only when grad mode is on and something upstream wants a gradient."""
    if not torch.is_grad_enabled():
        return False
    lrs = [inner_lrs] if isinstance(inner_lrs, dict) else list(inner_lrs or [])
    tensors = list(task_params.values()) + [t for d in lrs for t in d.values()]
    return any(t.requires_grad for t in tensors)


def _support_grads(
    model: nn.Module, leaves: Params, x: Tensor, y: Tensor, weight: Tensor | None, create_graph: bool, loss_fn: LossFn
) -> list[Tensor]:
    """Each task's gradient of its own support loss, in ``leaves`` order."""
    manual = getattr(model, "batched_mse_grads", None)
    if manual is not None and loss_fn is masked_mse:
        if create_graph:
            grads = manual(leaves, x, y, weight)
        else:
            with torch.no_grad():
                grads = manual({k: v.detach() for k, v in leaves.items()}, x, y, weight)
        return [grads[k] for k in leaves]
    with torch.enable_grad():
        # Per-task copies of weights still shared across tasks (stride-0 views): the forward's
        # shared-weight fast path reads task 0's slice of such a view, which would send every
        # task's gradient to task 0 and none to the others.
        leaves = {k: v.contiguous() if v.dim() and v.stride(0) == 0 else v for k, v in leaves.items()}
        # The loss summed over tasks: each task's weights get exactly that task's gradient.
        loss = loss_fn(batched_forward_fn(model)(leaves, x), y, weight).sum()
        return list(torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph))


def sgd_step(
    model: nn.Module,
    task_params: Params,
    x_support: Tensor,
    y_support: Tensor,
    *,
    lr: float,
    inner_lrs: Params | None = None,
    weight: Tensor | None = None,
    second_order: bool = True,
    loss_fn: LossFn = masked_mse,
) -> Params:
    """One inner gradient step for every task: theta_i <- theta_i - alpha * grad L_support(theta_i).

    alpha is ``inner_lrs[name]`` (broadcast against the parameter) when given, else ``lr``.
    With ``second_order`` the gradients keep their graph; otherwise they are constants and the
    update only carries the (cheap) graph of theta_i and alpha themselves, if any.
    """
    names = list(task_params)
    if second_order:
        leaves = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in task_params.items()}
    else:
        leaves = {k: v.detach().requires_grad_() for k, v in task_params.items()}
    grads = _support_grads(model, leaves, x_support, y_support, weight, second_order, loss_fn)
    base = leaves if second_order else task_params
    if inner_lrs is None:
        return {k: base[k] - lr * g for k, g in zip(names, grads)}
    return {k: base[k] - inner_lrs[k] * g for k, g in zip(names, grads)}


def adapt_tasks(
    model: nn.Module,
    task_params: Params,
    x_support: Tensor,
    y_support: Tensor,
    *,
    steps: int,
    lr: float,
    inner_lrs: InnerLrs | None = None,
    weight: Tensor | None = None,
    first_order: bool = False,
    loss_fn: LossFn = masked_mse,
) -> Params:
    """``adapt`` for weights that already have a leading task dimension B (e.g. several models)."""
    second_order = not first_order and _needs_graph(task_params, inner_lrs)
    for step in range(steps):
        task_params = sgd_step(
            model,
            task_params,
            x_support,
            y_support,
            lr=lr,
            inner_lrs=lrs_at(inner_lrs, step),
            weight=weight,
            second_order=second_order,
            loss_fn=loss_fn,
        )
    return task_params


def adapt(
    model: nn.Module,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    *,
    steps: int,
    lr: float,
    inner_lrs: InnerLrs | None = None,
    weight: Tensor | None = None,
    first_order: bool = False,
    loss_fn: LossFn = masked_mse,
) -> Params:
    """Adapt shared weights to each of B tasks with ``steps`` gradient steps on its support set.

    params: shared (unbatched) weights; x_support (B, K, D); y_support (B, K); weight (B, K) in
    [0, 1] (None = all ones). inner_lrs: learned step sizes (Meta-SGD: a Params of the same
    shapes; per layer: scalars; per step: a sequence of Params), used instead of ``lr``.
    Returns per-task weights, each (B, ...). Never mutates ``params``; ``steps=0`` returns them
    expanded (a view). Under ``torch.no_grad()`` or with ``first_order`` no graph of the inner
    gradients is kept.
    """
    task_params = expand_params(params, x_support.shape[0])
    return adapt_tasks(
        model,
        task_params,
        x_support,
        y_support,
        steps=steps,
        lr=lr,
        inner_lrs=inner_lrs,
        weight=weight,
        first_order=first_order,
        loss_fn=loss_fn,
    )


def task_query_losses(
    model: nn.Module,
    task_params: Params,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    steps: int,
    lr: float,
    inner_lrs: InnerLrs | None = None,
    weight_support: Tensor | None = None,
    weight_query: Tensor | None = None,
    first_order: bool = False,
    loss_fn: LossFn = masked_mse,
    multi_step: bool = False,
) -> Tensor:
    """Per-task query loss after adaptation, (B,); task_params already carry the leading B.

    multi_step (MAML++): the mean of the query losses after each of the ``steps`` inner steps
    (the query loss at the start when steps=0) instead of the last one only.
    """
    forward = batched_forward_fn(model)
    second_order = not first_order and _needs_graph(task_params, inner_lrs)
    step_losses = []
    for step in range(steps):
        task_params = sgd_step(
            model,
            task_params,
            x_support,
            y_support,
            lr=lr,
            inner_lrs=lrs_at(inner_lrs, step),
            weight=weight_support,
            second_order=second_order,
            loss_fn=loss_fn,
        )
        if multi_step:
            step_losses.append(loss_fn(forward(task_params, x_query), y_query, weight_query))
    if step_losses:
        return torch.stack(step_losses).mean(0)
    return loss_fn(forward(task_params, x_query), y_query, weight_query)


def meta_loss(
    model: nn.Module,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    steps: int,
    lr: float,
    inner_lrs: InnerLrs | None = None,
    weight_support: Tensor | None = None,
    weight_query: Tensor | None = None,
    first_order: bool = False,
    loss_fn: LossFn = masked_mse,
    multi_step: bool = False,
) -> Tensor:
    """MAML's objective: mean over B tasks of the query loss after adapting on the support set.

    Shapes as in ``adapt``; x_query (B, Q, D), y_query and weight_query (B, Q). Back-propagating
    the scalar reaches ``params`` (and learned ``inner_lrs``) through the inner steps: second
    order by default, first order (inner gradients as constants) on request.
    """
    task_params = expand_params(params, x_support.shape[0])
    return task_query_losses(
        model,
        task_params,
        x_support,
        y_support,
        x_query,
        y_query,
        steps=steps,
        lr=lr,
        inner_lrs=inner_lrs,
        weight_support=weight_support,
        weight_query=weight_query,
        first_order=first_order,
        loss_fn=loss_fn,
        multi_step=multi_step,
    ).mean()
