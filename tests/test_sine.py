"""A tiny sine meta-training: small enough for the suite, large enough to show meta-learning works."""

from __future__ import annotations

import functools
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


def test_bench_sine_command_keeps_diverged_rows(runner, monkeypatch):
    """`bench sine --json` end to end: a diverged row is null in the JSON and "diverged" in the table."""
    from maml_anomaly.cli import app

    real_mse = sine.query_mse_by_step

    def diverging(*args, **kwargs):
        mse = real_mse(*args, **kwargs)
        mse[10:] = float("inf")  # every 10-step adaptation blows up
        return mse

    monkeypatch.setattr(sine, "query_mse_by_step", diverging)
    monkeypatch.setattr(sine, "run_sine_benchmark", functools.partial(sine.run_sine_benchmark, processes=1))
    args = ["bench", "sine", "--iterations", "20", "--eval-tasks", "20", "--k-shot", "5"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    rows = {(r["k_shot"], r["inner_steps"]): r for r in out["results"]}
    assert set(rows) == {(k, s) for k in (5, 10, 20) for s in (1, 10)}
    assert all(rows[k, 10]["mse"] is None and rows[k, 10]["diverged"] for k in (5, 10, 20))
    assert all(isinstance(rows[k, 1]["mse"], float) for k in (5, 10, 20))

    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    lines = [line.split() for line in table.stdout.splitlines() if line.strip().startswith(("5 ", "10 ", "20 "))]
    assert len(lines) == 6 and sum("diverged" in line for line in lines) == 3


def test_multi_step_rows_of_learned_step_sizes_are_split():
    """Learned step sizes are trained for one step: the 10-step row takes ten steps of a tenth."""
    result = sine.run_sine_benchmark(k_shot=5, iterations=30, eval_tasks=20, processes=1, baseline=False)
    ten = [r for r in result["results"] if r["inner_steps"] == 10]
    assert ten and all(r["inner_lr_per_step"] == "learned / 10" and "mse_full_learned_steps" in r for r in ten)
    assert all(r["mse"] is not None for r in ten)
