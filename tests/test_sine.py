"""A tiny sine meta-training: small enough for the suite, large enough to show meta-learning works."""

from __future__ import annotations

import json

import pytest
import torch

from maml_anomaly.benchmarks import sine


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sample_sine_tasks_follow_the_paper_ranges():
    x, y = sine.sample_sine_tasks(2000, 10, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 10, 1) and y.shape == (2000, 10)
    assert x.min() >= -5 and x.max() <= 5
    assert y.abs().max() <= 5
    assert y.abs().amax(1).min() < 0.1 + 1e-6  # some tasks have amplitudes near 0.1


@pytest.mark.parametrize("learn_inner_lr", [False, True])
def test_tiny_meta_training_beats_no_adaptation(learn_inner_lr):
    settings = sine.SineSettings(iterations=300, learn_inner_lr=learn_inner_lr, chunk=100)
    params, lrs = sine.meta_train_sine((10,), settings, seed=0)
    held_out = sine.eval_tasks(10, 200)  # the fixed evaluation tasks, never seen in training
    mse = sine.query_mse_by_step(params[0], lrs[0], held_out, lr=settings.inner_lr, hidden=settings.hidden, max_steps=1)
    no_adaptation, one_step = mse.mean(1).tolist()  # (2,): before and after one inner step
    assert one_step < 0.9 * no_adaptation  # measured: MAML 3.40 -> 2.62
    if learn_inner_lr:
        assert one_step < 0.5 * no_adaptation and one_step < 1.5  # measured: Meta-SGD 3.36 -> 0.88


def test_stacked_models_train_as_if_alone():
    """Several K trained side by side (padded and masked) give each model its lone result."""
    settings = sine.SineSettings(iterations=20, chunk=10)
    stacked, _ = sine.meta_train_sine((5, 10), settings, seed=3)
    alone, _ = sine.meta_train_sine((5,), settings, seed=3)
    for k in alone[0]:
        torch.testing.assert_close(stacked[0][k], alone[0][k], rtol=0, atol=1e-5)


def test_same_seed_same_result():
    settings = sine.SineSettings(iterations=30, chunk=10)
    a, la = sine.meta_train_sine((5,), settings, seed=1)
    b, lb = sine.meta_train_sine((5,), settings, seed=1)
    assert all(torch.equal(a[0][k], b[0][k]) and torch.equal(la[0][k], lb[0][k]) for k in a[0])


def test_run_sine_benchmark_json_shape():
    result = sine.run_sine_benchmark(k_shot=5, iterations=30, eval_tasks=20, processes=1)
    json.dumps(result, allow_nan=False)
    assert result["benchmark"] == "sine" and result["train_k_shot"] == 5 and result["iterations"] == 30
    assert result["seconds"] >= 0
    keys = {(r["k_shot"], r["inner_steps"]) for r in result["results"]}
    assert keys == {(k, s) for k in (5, 10, 20) for s in (1, 10)}
    for r in result["results"]:
        assert {"k_shot", "inner_steps", "mse", "ci95"} <= r.keys()
    assert {(r["k_shot"], r["inner_steps"]) for r in result["baseline"]["results"]} >= keys
