"""The scoring inner loop written by hand (torch and fused C kernel) against maml.adapt_tasks."""

import numpy as np
import pytest
import torch

from maml_anomaly.core import fast_adapt
from maml_anomaly.core.maml import adapt_tasks, predict
from maml_anomaly.core.model import Forecaster, init_params
from maml_anomaly.core.scoring import huber_loss, per_task


def _problem(seed=0, n=37, k=9, d=5, p=4, hidden=(12, 7)):
    torch.manual_seed(seed)
    model = Forecaster(d, hidden, 1)
    params = init_params(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, d, generator=g)
    y = 2.0 * torch.randn(n, k, generator=g)  # errors beyond delta: both Huber branches
    w = (torch.rand(n, k, generator=g) > 0.2).float()
    w[0] = 0.0  # a task without observed support points
    x_pred = torch.randn(n, p, d, generator=g)
    return model, params, x, y, w, x_pred


def _reference(model, params, x, y, w, x_pred, steps, lr, lrs):
    with torch.no_grad():
        adapted = adapt_tasks(
            model,
            per_task(params, x.shape[0]),
            x,
            y,
            steps=steps,
            lr=lr,
            inner_lrs=lrs,
            weight=w,
            first_order=True,
            loss_fn=huber_loss,
        )
        return predict(model, adapted, x_pred)[..., 0], predict(model, per_task(params, x.shape[0]), x)[..., 0]


def _lrs(params, kind):
    if kind == "scalar":
        return None
    g = torch.Generator().manual_seed(3)
    per_param = {k: 0.02 * torch.rand(v.shape, generator=g) for k, v in params.items()}
    if kind == "per_param":
        return per_param
    return [per_param, {k: 0.5 * v for k, v in per_param.items()}]  # per step, the last one repeats


@pytest.mark.parametrize("kernel", ["torch", "c"])
@pytest.mark.parametrize("steps", [0, 1, 4])
@pytest.mark.parametrize("lr_kind", ["scalar", "per_param", "per_step"])
def test_matches_autograd_inner_loop(kernel, steps, lr_kind, monkeypatch):
    if kernel == "c" and fast_adapt._load_kernel() is None:
        pytest.skip("no C compiler: the torch loop is the fallback")
    monkeypatch.setattr(fast_adapt, "_KERNEL", [] if kernel == "c" else [None])
    model, params, x, y, w, x_pred = _problem()
    lrs = _lrs(params, lr_kind)
    want_pred, want_init = _reference(model, params, x, y, w, x_pred, steps, 0.05, lrs)
    pred, init = fast_adapt.adapt_and_predict(model, params, x, y, w, x_pred, steps=steps, lr=0.05, inner_lrs=lrs)
    torch.testing.assert_close(pred, want_pred, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(init, want_init, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["torch", "c"])
def test_tasks_do_not_depend_on_their_batch(kernel, monkeypatch):
    if kernel == "c" and fast_adapt._load_kernel() is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(fast_adapt, "_KERNEL", [] if kernel == "c" else [None])
    model, params, x, y, w, x_pred = _problem(n=20)
    whole, _ = fast_adapt.adapt_and_predict(model, params, x, y, w, x_pred, steps=3, lr=0.05)
    parts = [
        fast_adapt.adapt_and_predict(
            model, params, x[i : i + 7], y[i : i + 7], w[i : i + 7], x_pred[i : i + 7], steps=3, lr=0.05
        )[0]
        for i in range(0, 20, 7)
    ]
    if kernel == "c":  # one task at a time: the same bytes whatever the batch
        assert torch.equal(whole, torch.cat(parts))
    else:
        torch.testing.assert_close(whole, torch.cat(parts), rtol=1e-5, atol=1e-6)


def test_never_mutates_the_meta_init():
    model, params, x, y, w, x_pred = _problem()
    before = {k: v.clone() for k, v in params.items()}
    fast_adapt.adapt_and_predict(model, params, x, y, w, x_pred, steps=3, lr=0.05)
    fast_adapt.adapt_huber(model, params, x, y, w, steps=3, lr=0.05)
    for k in params:
        assert torch.equal(params[k], before[k])


def test_kernel_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(fast_adapt.KERNEL_ENV, "torch")
    monkeypatch.setattr(fast_adapt, "_KERNEL", [])
    assert fast_adapt._kernel() is None
    model, params, x, y, w, x_pred = _problem()
    pred, _ = fast_adapt.adapt_and_predict(model, params, x, y, w, x_pred, steps=2, lr=0.05)
    assert np.isfinite(pred.numpy()).all()


def test_no_compiler_or_a_failed_build_falls_back_to_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached: a build is needed
    monkeypatch.setattr(fast_adapt.shutil, "which", lambda name: None)
    assert fast_adapt._load_kernel() is None
    monkeypatch.setattr(fast_adapt.shutil, "which", lambda name: "/bin/false")  # a "compiler" that fails
    assert fast_adapt._load_kernel() is None
    assert not list(tmp_path.rglob("*.so"))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no half-built library left behind
