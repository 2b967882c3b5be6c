import numpy as np
import torch
from synth import seasonal_panel, tiny_cluster, to_buffer  # noqa: F401 (fixture)

from maml_anomaly.core.tasks import lag_spec
from maml_anomaly.core.training import TrainSettings, train_cluster

BASELINES = (
    "maml_no_adaptation",
    "scratch_same_steps",
    "scratch_adam_100_steps",
    "transfer_finetuned",
    "seasonal_naive",
)


def test_report_compares_adapted_model_with_baselines(tiny_cluster):
    report = tiny_cluster.report
    errors = report["query_errors"]
    assert set(errors) == {"maml_adapted", *BASELINES}
    adapted = errors["maml_adapted"]["mse"]
    # 120 iterations on homogeneous sine + AR(1) series: the meta-init alone is already good, so
    # adaptation is only required not to hurt here; on the sample data it helps (docs/detector.md)
    assert adapted < 1.05 * errors["maml_no_adaptation"]["mse"]
    assert adapted < errors["scratch_same_steps"]["mse"]
    assert adapted < errors["scratch_adam_100_steps"]["mse"]
    assert adapted < errors["seasonal_naive"]["mse"]
    assert report["n_val_series"] >= 1 and report["n_train_series"] + report["n_val_series"] == 60
    assert report["history"] and report["iterations"] <= 120


def test_learned_inner_lrs_are_kept_non_negative(tiny_cluster):
    lrs = tiny_cluster.inner_lrs
    assert set(lrs) == set(tiny_cluster.params)
    assert all(float(v.min()) >= 0 for v in lrs.values())


def test_calibration_comes_from_held_out_residuals(tiny_cluster):
    cal = tiny_cluster.calibration
    assert cal.n_residuals > 1000
    assert np.all(np.diff(cal.quantiles) > 0)


def test_training_is_deterministic_and_does_not_touch_the_data():
    torch.set_num_threads(1)
    matrix = seasonal_panel(8, 24 * 10, seed=3)
    values, indptr = to_buffer(matrix)
    before = values.copy()
    settings = TrainSettings(iterations=6, eval_every=3, hidden=(8, 8), n_val_tasks=16, meta_batch_size=4)
    a = train_cluster(values, indptr, np.arange(8), lag_spec(24), 24, settings)
    b = train_cluster(values, indptr, np.arange(8), lag_spec(24), 24, settings)
    np.testing.assert_array_equal(values, before)
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name])


def test_cluster_without_long_enough_series_is_skipped():
    values, indptr = to_buffer(seasonal_panel(3, 30, seed=1))
    assert train_cluster(values, indptr, np.arange(3), lag_spec(24), 24, TrainSettings(iterations=2)) is None


def test_time_budget_stops_training():
    values, indptr = to_buffer(seasonal_panel(8, 24 * 10, seed=3))
    settings = TrainSettings(iterations=10_000, eval_every=1000, hidden=(8, 8), n_val_tasks=16, time_budget_s=0.0)
    cm = train_cluster(values, indptr, np.arange(8), lag_spec(24), 24, settings)
    assert cm.report["iterations"] == 1
