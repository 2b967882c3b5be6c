"""The streamed scoring path gives the same scores whatever the batching; per-task inner gradients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_end_to_end import TINY, _invoke, _panel

from maml_anomaly.commands import score
from maml_anomaly.core.maml import adapt, adapt_tasks
from maml_anomaly.core.model import Forecaster, init_params
from maml_anomaly.core.scoring import huber_loss
from maml_anomaly.core.tasks import recent_len
from maml_anomaly.store import ClusterIndex, load_models, open_trained


@pytest.fixture(scope="module")
def trained_sorted(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    frame = _panel()
    frame = frame[frame["unique_id"] != "late"].sort_values(["unique_id", "ds"]).reset_index(drop=True)
    frame.to_parquet(root / "input.parquet", row_group_size=500)  # sorted by series, many row groups
    (root / "tiny.toml").write_text(TINY)
    for command in ("fit-clusters", "meta-train"):
        result = _invoke(
            command, "--input", root / "input.parquet", "--model-dir", root / "model", "--config", root / "tiny.toml"
        )
        assert result.exit_code == 0, result.output
    return root


def _backtest(root, out):
    result = _invoke(
        "backtest",
        "--input",
        root / "input.parquet",
        "--model-dir",
        root / "model",
        "--output",
        out,
        "--start",
        "2026-01-10",
    )
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out)


def test_scores_do_not_depend_on_the_batching(trained_sorted, monkeypatch):
    root = trained_sorted
    whole = _backtest(root, root / "whole.parquet")  # one batch
    monkeypatch.setattr(score, "STREAM_ROWS", 700)  # several batches of whole series, in this process
    monkeypatch.setattr(score, "cpu_processes", lambda threads, device: 1)
    batched = _backtest(root, root / "batched.parquet")
    assert len(whole) == len(batched) > 0
    pd.testing.assert_frame_equal(whole, batched)  # same values; the files differ only in row groups


@pytest.mark.slow
def test_worker_processes_give_the_same_scores(trained_sorted, monkeypatch):
    root = trained_sorted
    whole = _backtest(root, root / "whole.parquet")
    monkeypatch.setattr(score, "STREAM_ROWS", 700)
    monkeypatch.setattr(score, "cpu_processes", lambda threads, device: 2)
    pd.testing.assert_frame_equal(whole, _backtest(root, root / "pooled.parquet"))


def test_history_window_covers_what_tasks_need(trained_sorted):
    md = open_trained(root := trained_sorted / "model")
    _, models = load_models(md)
    span = score.history_span(models, ClusterIndex.load(md).max_step_ns)
    hours = span / np.timedelta64(1, "h")
    need = max(m.spec.max_lag + recent_len(m.k_shot, m.query_len) for m in models)  # hourly: a point per hour
    assert need < hours <= need + 24 + 2 * 24 + 1, (root, hours)


def test_inner_gradients_are_per_task_with_a_custom_loss():
    """Weights still shared by all tasks must not send every task's gradient to task 0."""
    torch.manual_seed(0)
    model = Forecaster(5, (8, 8), 1)
    params = init_params(model)
    x, y, w = torch.randn(6, 10, 5), torch.randn(6, 10), torch.ones(6, 10)
    with torch.no_grad():
        shared = adapt(model, params, x, y, steps=2, lr=0.05, weight=w, first_order=True, loss_fn=huber_loss)
        own = {k: v.expand(6, *v.shape).clone() for k, v in params.items()}
        copied = adapt_tasks(model, own, x, y, steps=2, lr=0.05, weight=w, first_order=True, loss_fn=huber_loss)
    for name in params:
        torch.testing.assert_close(shared[name], copied[name])
        assert not torch.equal(shared[name][1], params[name].expand_as(shared[name][1]))  # task 1 moved
