"""Properties of the batched inner loop and meta-objective (learn2learn-style MAML tests)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from maml_anomaly.core.maml import adapt, masked_mse, meta_loss, predict
from maml_anomaly.core.model import Forecaster, init_params


def make_tasks(seed: int, n_tasks: int = 6, k: int = 5, q: int = 7, d: int = 3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n_tasks, k, d, generator=g, dtype=dtype)  # (B, K, D)
    ys = torch.randn(n_tasks, k, generator=g, dtype=dtype)  # (B, K)
    xq = torch.randn(n_tasks, q, d, generator=g, dtype=dtype)  # (B, Q, D)
    yq = torch.randn(n_tasks, q, generator=g, dtype=dtype)  # (B, Q)
    return xs, ys, xq, yq


def make_model(seed: int = 0, d: int = 3, dtype=torch.float64) -> Forecaster:
    torch.manual_seed(seed)
    return Forecaster(d, (16, 12), 1).to(dtype)


def loop_meta_grads(model, params, xs, ys, xq, yq, *, steps, lr, first_order, inner_lrs=None):
    """Reference: one task at a time through the module itself, no vmap, no batched weights."""
    theta = {k: v.clone().requires_grad_() for k, v in params.items()}
    alphas = None if inner_lrs is None else {k: v.clone().requires_grad_() for k, v in inner_lrs.items()}
    total = 0.0
    for i in range(xs.shape[0]):
        p = dict(theta)
        for _ in range(steps):
            pred = functional_call(model, p, (xs[i],))  # (K, 1)
            loss = (pred[:, 0] - ys[i]).square().mean()
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=not first_order)
            step = {k: (alphas[k] if alphas else lr) for k in p}
            p = {k: v - step[k] * g for (k, v), g in zip(p.items(), grads)}
        pred = functional_call(model, p, (xq[i],))
        total = total + (pred[:, 0] - yq[i]).square().mean()
    total = total / xs.shape[0]
    leaves = list(theta.values()) + (list(alphas.values()) if alphas else [])
    return total.detach(), torch.autograd.grad(total, leaves)


def batched_meta_grads(model, params, xs, ys, xq, yq, *, steps, lr, first_order, inner_lrs=None):
    theta = {k: v.clone().requires_grad_() for k, v in params.items()}
    alphas = None if inner_lrs is None else {k: v.clone().requires_grad_() for k, v in inner_lrs.items()}
    loss = meta_loss(model, theta, xs, ys, xq, yq, steps=steps, lr=lr, inner_lrs=alphas, first_order=first_order)
    leaves = list(theta.values()) + (list(alphas.values()) if alphas else [])
    return loss.detach(), torch.autograd.grad(loss, leaves)


def test_zero_steps_leave_predictions_unchanged():
    model = make_model()
    params = init_params(model)
    xs, ys, xq, _ = make_tasks(0)
    task_params = adapt(model, params, xs, ys, steps=0, lr=0.1)
    expected = model(xq)  # (B, Q, 1): the module itself, same weights for every task
    torch.testing.assert_close(predict(model, task_params, xq), expected, rtol=0, atol=1e-12)


def test_one_step_lowers_support_loss():
    model = make_model()
    params = init_params(model)
    xs, ys, _, _ = make_tasks(1)
    before = masked_mse(predict(model, adapt(model, params, xs, ys, steps=0, lr=0.01), xs), ys, None)
    after = masked_mse(predict(model, adapt(model, params, xs, ys, steps=1, lr=0.01), xs), ys, None)
    assert before.shape == after.shape == (xs.shape[0],)
    assert torch.all(after < before)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_batched_meta_gradients_match_per_task_loop(first_order, steps):
    model = make_model()
    params = init_params(model)
    xs, ys, xq, yq = make_tasks(2)
    ref_loss, ref = loop_meta_grads(model, params, xs, ys, xq, yq, steps=steps, lr=0.05, first_order=first_order)
    loss, got = batched_meta_grads(model, params, xs, ys, xq, yq, steps=steps, lr=0.05, first_order=first_order)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-10)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)


def test_second_order_differs_from_first_order():
    """The second-order meta-gradient really goes through the inner gradients."""
    model = make_model()
    params = init_params(model)
    xs, ys, xq, yq = make_tasks(3)
    _, second = batched_meta_grads(model, params, xs, ys, xq, yq, steps=2, lr=0.1, first_order=False)
    _, first = batched_meta_grads(model, params, xs, ys, xq, yq, steps=2, lr=0.1, first_order=True)
    assert max((a - b).abs().max().item() for a, b in zip(second, first)) > 1e-6


@pytest.mark.parametrize("first_order", [False, True])
def test_learned_inner_lrs_meta_gradients_match_loop(first_order):
    model = make_model()
    params = init_params(model)
    g = torch.Generator().manual_seed(4)
    inner_lrs = {k: 0.01 + 0.05 * torch.rand(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
    xs, ys, xq, yq = make_tasks(4)
    kw = dict(steps=2, lr=0.0, first_order=first_order, inner_lrs=inner_lrs)
    _, ref = loop_meta_grads(model, params, xs, ys, xq, yq, **kw)
    _, got = batched_meta_grads(model, params, xs, ys, xq, yq, **kw)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_meta_gradient_reaches_initial_weights():
    model = make_model()
    params = {k: v.requires_grad_() for k, v in init_params(model).items()}
    xs, ys, xq, yq = make_tasks(5)
    meta_loss(model, params, xs, ys, xq, yq, steps=2, lr=0.05).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


@pytest.mark.parametrize("first_order", [False, True])
def test_adapt_never_mutates_shared_weights(first_order):
    model = make_model()
    params = {k: v.requires_grad_() for k, v in init_params(model).items()}
    before = {k: v.detach().clone() for k, v in params.items()}
    xs, ys, xq, yq = make_tasks(6)
    adapted = adapt(model, params, xs, ys, steps=3, lr=0.1, first_order=first_order)
    meta_loss(model, params, xs, ys, xq, yq, steps=3, lr=0.1, first_order=first_order).backward()
    for k in params:
        assert torch.equal(params[k].detach(), before[k])
        assert adapted[k].shape == (xs.shape[0], *before[k].shape)
    module_params = dict(model.named_parameters())
    assert all(torch.equal(module_params[k].detach(), before[k]) for k in before)


def test_no_graph_under_no_grad_or_first_order():
    """Daily scoring: adapted weights carry no graph, so memory does not grow with the steps."""
    model = make_model()
    params = init_params(model)
    xs, ys, _, _ = make_tasks(7)
    with torch.no_grad():
        adapted = adapt(model, params, xs, ys, steps=3, lr=0.1)
    assert all(v.grad_fn is None and not v.requires_grad for v in adapted.values())
    leafy = {k: v.clone().requires_grad_() for k, v in params.items()}
    with torch.no_grad():
        adapted = adapt(model, leafy, xs, ys, steps=3, lr=0.1)
    assert all(v.grad_fn is None for v in adapted.values())
    adapted = adapt(model, params, xs, ys, steps=3, lr=0.1, first_order=True)
    assert all(v.grad_fn is None for v in adapted.values())


def test_weight_masking_ignores_masked_points():
    model = make_model()
    params = init_params(model)
    xs, ys, _, _ = make_tasks(8, k=6)
    weight = torch.ones_like(ys)
    weight[:, 4:] = 0.0
    garbage_y = ys.clone()
    garbage_y[:, 4:] = 1e6
    garbage_x = xs.clone()
    garbage_x[:, 4:] = -1e3
    masked = adapt(model, params, garbage_x, garbage_y, steps=2, lr=0.05, weight=weight)
    short = adapt(model, params, xs[:, :4], ys[:, :4], steps=2, lr=0.05)
    for k in masked:
        torch.testing.assert_close(masked[k], short[k], rtol=0, atol=1e-10)


def test_masked_mse_values():
    pred = torch.tensor([[[1.0], [2.0], [5.0]]])  # (1, 3, 1)
    target = torch.tensor([[0.0, 0.0, 0.0]])
    assert masked_mse(pred, target, None).tolist() == pytest.approx([10.0])
    assert masked_mse(pred, target, torch.tensor([[1.0, 1.0, 0.0]])).tolist() == pytest.approx([2.5])
    assert masked_mse(pred, target, torch.zeros(1, 3)).tolist() == [0.0]


def test_same_seed_same_result():
    def run():
        model = make_model(seed=11, dtype=torch.float32)
        params = {k: v.requires_grad_() for k, v in init_params(model).items()}
        xs, ys, xq, yq = make_tasks(9, dtype=torch.float32)
        loss = meta_loss(model, params, xs, ys, xq, yq, steps=2, lr=0.05)
        loss.backward()
        return loss.detach(), [p.grad for p in params.values()]

    (l1, g1), (l2, g2) = run(), run()
    assert torch.equal(l1, l2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_vmap_fallback_matches_fast_path():
    """A model without the fast paths is adapted through vmap(functional_call) + autograd, same result."""
    model = make_model()

    class Plain(Forecaster):
        batched_forward = None  # forces the generic torch.func + autograd.grad path
        batched_mse_grads = None

    plain = Plain(3, (16, 12), 1).to(torch.float64)
    plain.load_state_dict(model.state_dict())
    params = init_params(model)
    plain_params = init_params(plain)
    xs, ys, xq, _ = make_tasks(10)
    fast = predict(model, adapt(model, params, xs, ys, steps=2, lr=0.05), xq)
    slow = predict(plain, adapt(plain, plain_params, xs, ys, steps=2, lr=0.05), xq)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)


def test_multi_step_loss_averages_step_losses():
    model = make_model()
    params = init_params(model)
    xs, ys, xq, yq = make_tasks(12)
    per_step = [meta_loss(model, params, xs, ys, xq, yq, steps=s, lr=0.05) for s in (1, 2, 3)]
    multi = meta_loss(model, params, xs, ys, xq, yq, steps=3, lr=0.05, multi_step=True)
    torch.testing.assert_close(multi, torch.stack(per_step).mean(), rtol=0, atol=1e-12)


def _abs_loss(pred, target, weight):
    """A loss other than masked_mse, so the inner gradients go through autograd (per task, (B,))."""
    return (pred[..., 0] - target).abs().mean(-1)


@pytest.mark.parametrize("second_order", [False, True])
def test_autograd_inner_step_gives_each_task_its_own_gradient(second_order):
    """A task adapts to the same weights alone as inside a batch (shared-weight fast path included)."""
    model = make_model()
    params = init_params(model)
    xs, ys, _, _ = make_tasks(5)
    theta = {k: v.clone().requires_grad_(second_order) for k, v in params.items()}
    batch = adapt(model, theta, xs, ys, steps=2, lr=0.1, first_order=not second_order, loss_fn=_abs_loss)
    for i in range(xs.shape[0]):
        alone = adapt(
            model, theta, xs[i : i + 1], ys[i : i + 1], steps=2, lr=0.1, first_order=not second_order, loss_fn=_abs_loss
        )
        for k in batch:
            torch.testing.assert_close(batch[k][i : i + 1], alone[k])
