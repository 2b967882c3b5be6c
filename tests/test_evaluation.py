"""Metrics on tiny hand-made cases whose answers are known."""

import numpy as np
import pandas as pd
import pytest

from maml_anomaly.core.evaluation import as_windows, evaluate_scores, threshold_at_far, window_of
from maml_anomaly.errors import InputError

T0 = pd.Timestamp("2024-01-01")


def _scores(flags: dict[str, list[int]], n=10, scores=None):
    """Two series 'a', 'b' of n hourly points; flags at the given hours; score = 5 if flagged else 1."""
    rows = []
    for uid in ("a", "b"):
        for h in range(n):
            f = h in flags.get(uid, [])
            rows.append((uid, T0 + pd.Timedelta(hours=h), 1.0, 1.0, 5.0 if f else 1.0, f, "ok"))
    df = pd.DataFrame(rows, columns=["unique_id", "ds", "y", "y_hat", "score", "is_anomaly", "status"])
    if scores is not None:
        df["score"] = scores
    return df


WINDOWS = pd.DataFrame(
    {
        "unique_id": ["a", "a", "b"],
        "start": [T0 + pd.Timedelta(hours=2), T0 + pd.Timedelta(hours=7), T0 + pd.Timedelta(hours=4)],
        "end": [T0 + pd.Timedelta(hours=3), T0 + pd.Timedelta(hours=7), T0 + pd.Timedelta(hours=5)],
        "kind": ["spike", "dip", "spike"],
    }
)


def test_recall_precision_far_by_hand():
    # a: flags at 3 (in window 1) and 9 (clean); b: flag at 0 (clean). Window a@7 and b@4-5 missed.
    out = evaluate_scores(_scores({"a": [3, 9], "b": [0]}), WINDOWS)
    d = out["default"]
    assert out["n_windows"] == 3 and out["n_points"] == 20
    assert out["n_clean_points"] == 20 - 5
    assert d["event_recall"] == pytest.approx(1 / 3)
    assert d["point_precision"] == pytest.approx(1 / 3)
    assert d["f1"] == pytest.approx(1 / 3)
    assert d["false_alarm_rate"] == pytest.approx(2 / 15)
    assert out["recall_by_kind"]["spike"] == {"n": 2, "recall_default": 0.5, "recall_at_far": 0.0}


def test_perfect_and_silent_detectors():
    perfect = evaluate_scores(_scores({"a": [2, 7], "b": [5]}), WINDOWS)["default"]
    assert perfect["event_recall"] == 1 and perfect["point_precision"] == 1
    assert perfect["false_alarm_rate"] == 0
    silent = evaluate_scores(_scores({}), WINDOWS)["default"]
    assert silent["event_recall"] == 0 and np.isnan(silent["point_precision"]) and silent["f1"] == 0


def test_points_as_labels_and_windows_outside_the_scores():
    points = pd.DataFrame(
        {
            "unique_id": ["a", "b", "b"],
            "ds": [T0 + pd.Timedelta(hours=3), T0 + pd.Timedelta(hours=4), T0 + pd.Timedelta(days=9)],
        }
    )
    out = evaluate_scores(_scores({"a": [3]}), points)
    assert out["n_windows"] == 2 and out["n_windows_outside_scores"] == 1
    assert out["default"]["event_recall"] == 0.5 and out["default"]["point_precision"] == 1


def test_non_ok_rows_are_not_points_and_int_ids_match():
    s = _scores({"a": [2]})
    s.loc[(s["unique_id"] == "b") & (s["ds"] == T0 + pd.Timedelta(hours=4)), "status"] = "missing_value"
    s["unique_id"] = s["unique_id"].map({"a": 1, "b": 2})
    w = WINDOWS.assign(unique_id=WINDOWS["unique_id"].map({"a": "1", "b": "2"}))
    out = evaluate_scores(s, w)
    assert out["n_points"] == 19 and out["n_windows"] == 3
    assert out["status_counts"] == {"missing_value": 1, "ok": 19}


def test_threshold_at_far():
    clean = np.arange(1.0, 101.0)  # 100 clean scores 1..100
    tau = threshold_at_far(clean, 0.05)
    assert tau == 95.0 and (clean > tau).sum() == 5
    assert threshold_at_far(clean, 0.0) == 100.0  # nothing clean flagged
    assert threshold_at_far(clean, 1.0) == -np.inf
    ties = np.array([1.0, 2, 2, 2, 3])
    assert (ties > threshold_at_far(ties, 0.5)).sum() <= 2  # ties never push the FAR over


def test_recall_at_fixed_far_uses_one_threshold_for_all_series():
    # clean points score 0..; window points score high on 'a', barely above the clean ones on 'b'
    s = _scores({}, n=10)
    score = np.tile(np.linspace(0.0, 1.0, 10), 2)
    s["score"] = score
    s.loc[(s["unique_id"] == "a") & (s["ds"] == T0 + pd.Timedelta(hours=2)), "score"] = 10.0
    out = evaluate_scores(s, WINDOWS, far=0.0)
    f = out["at_far"]
    assert f["false_alarm_rate"] == 0 and f["event_recall"] == pytest.approx(1 / 3)
    assert f["threshold"] == pytest.approx(1.0)


def test_overlapping_windows_are_merged():
    w = pd.DataFrame(
        {
            "unique_id": ["a", "a", "a"],
            "start": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-05"]),
            "end": pd.to_datetime(["2024-01-03 00:00", "2024-01-02 12:00", "2024-01-05 00:00"]),
        }
    )
    m = as_windows(w)
    assert len(m) == 2 and m["end"].iloc[0] == pd.Timestamp("2024-01-03")
    idx = window_of(
        pd.Series(["a", "a", "a", "b"]),
        pd.Series(pd.to_datetime(["2024-01-03", "2024-01-04", "2024-01-05", "2024-01-02"])),
        m,
    )
    assert idx.tolist() == [0, -1, 1, -1]


def test_forecast_accuracy_by_hand():
    s = _scores({})
    s["y"] = 2.0
    s["y_hat"] = np.where(s["unique_id"] == "a", 1.0, 1.5)  # errors 1 and 0.5
    naive = s[["unique_id", "ds"]].assign(y_naive=0.0, scale=np.where(s["unique_id"] == "a", 2.0, 1.0))
    fc = evaluate_scores(s, WINDOWS, naive=naive)["forecast"]
    assert fc["n_points"] == 15  # clean points only
    assert fc["mae_ratio_gmean"] == pytest.approx(np.sqrt(0.5 * 0.25))
    assert fc["mase"] == pytest.approx((1 / 2 + 0.5 / 1) / 2)
    assert fc["mase_naive"] == pytest.approx((2 / 2 + 2 / 1) / 2)
    assert "share_worse_than_references" not in fc  # no last value given


def test_share_of_series_worse_than_the_better_simple_reference():
    s = _scores({})
    s["y"] = 2.0
    s["y_hat"] = np.where(s["unique_id"] == "a", 1.0, 1.9)  # errors 1 and 0.1
    # the last value misses by 0.5 on both, seasonal naive by 2: only 'a' is more than 1.2x worse
    naive = s[["unique_id", "ds"]].assign(y_naive=0.0, y_last=1.5)
    assert evaluate_scores(s, WINDOWS, naive=naive)["forecast"]["share_worse_than_references"] == 0.5
    naive["y_last"] = 2.0 - 1.0 / 1.19  # 'a' within 1.2x of its last value now
    assert evaluate_scores(s, WINDOWS, naive=naive)["forecast"]["share_worse_than_references"] == 0.0


def test_bad_labels_and_scores_are_input_errors():
    with pytest.raises(InputError, match="labels need"):
        evaluate_scores(_scores({}), pd.DataFrame({"x": [1]}))
    with pytest.raises(InputError, match="scores lack"):
        evaluate_scores(pd.DataFrame({"unique_id": ["a"]}), WINDOWS)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.floats(0.0, 1.0))
def test_threshold_at_far_never_exceeds_and_is_tight(clean, far):
    clean = np.array(clean)
    tau = threshold_at_far(clean, far)
    k = int(np.floor(far * len(clean)))
    assert (clean > tau).sum() <= k
    below = clean[clean < tau]  # any lower threshold taken from the data flags more than k
    if below.size:
        assert (clean > below.max()).sum() > k


# -- the evaluate command and the demo's wiring ---------------------------------------------------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from scipy.stats import norm  # noqa: E402

from maml_anomaly.cli import app  # noqa: E402
from maml_anomaly.commands import demo as demo_command  # noqa: E402
from maml_anomaly.config import Config  # noqa: E402
from maml_anomaly.core.baselines import seasonal_naive_scores  # noqa: E402
from maml_anomaly.core.events import build_events  # noqa: E402
from maml_anomaly.sample import make_sample  # noqa: E402
from maml_anomaly.store import ModelDir  # noqa: E402


@pytest.fixture(scope="module")
def small_sample():
    return make_sample(seed=5, n_series=12, return_info=True)


def test_evaluate_command_table_and_json(tmp_path, runner, small_sample):
    values, windows, points, info = small_sample
    last = values["ds"].max().normalize()
    scores = seasonal_naive_scores(
        values, info.set_index("unique_id")["period"], start=last - pd.Timedelta(days=13), end=last
    )
    scores.to_parquet(tmp_path / "scores.parquet")
    windows.to_parquet(tmp_path / "labels.parquet")
    args = ["evaluate", "--scores", str(tmp_path / "scores.parquet"), "--labels", str(tmp_path / "labels.parquet")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "event recall" in res.output and "FAR" in res.output
    res = runner.invoke(app, args + ["--json"])
    out = json.loads(res.stdout)
    direct = evaluate_scores(scores, windows)
    assert out["default"]["event_recall"] == pytest.approx(direct["default"]["event_recall"])
    assert out["labels"] == "windows" and 0 < out["forecast"]["mae_ratio_gmean"] < 2


def test_evaluate_command_refuses_bad_labels(tmp_path, runner, small_sample):
    values = small_sample[0]
    scores = seasonal_naive_scores(values, 24)
    scores.to_parquet(tmp_path / "scores.parquet")
    pd.DataFrame({"series": ["a"], "when": [T0]}).to_parquet(tmp_path / "labels.parquet")
    res = runner.invoke(
        app, ["evaluate", "--scores", str(tmp_path / "scores.parquet"), "--labels", str(tmp_path / "labels.parquet")]
    )
    assert res.exit_code == 1 and "expected labelled points" in res.output
    assert "Traceback" not in res.output


def test_demo_wiring_with_a_stand_in_detector(tmp_path, monkeypatch):
    """demo's sequence (sample -> fit-clusters -> meta-train -> backtest -> evaluate) with the
    seasonal-naive baseline standing in for the detector's commands."""
    calls = []

    def fit_clusters(*, config, input, model_dir, overwrite=False):
        calls.append("fit-clusters")
        md = ModelDir(model_dir)
        md.prepare(overwrite)
        hist = pd.read_parquet(input)
        md.write_manifest(config, config.columns, {"rows": len(hist)})
        md.save_clusters(
            pd.DataFrame({"unique_id": np.sort(hist["unique_id"].unique()), "cluster": "c0", "period": 24})
        )
        return {}

    def meta_train(*, config, input, model_dir, overwrite=False):
        calls.append("meta-train")
        assert config.train.time_budget_s <= demo_command.DEMO_TRAIN_BUDGET_S
        assert pd.read_parquet(input)["ds"].max() < pd.Timestamp("2024-03-18")  # history only
        return {}

    def backtest(*, config, input, model_dir, output, start=None, end=None, events=None, **views):
        calls.append("backtest")
        scores = seasonal_naive_scores(pd.read_parquet(input), 24, start=start, end=end)
        scores.to_parquet(output)
        p_value = 2 * norm.sf(scores["score"].to_numpy(np.float64))  # build_events ranks events by p-values
        build_events(scores.assign(p_value=p_value)).to_parquet(events)  # the demo prints its top events from this file
        return {}

    for name, fn in (("fit_clusters", fit_clusters), ("meta_train", meta_train), ("backtest", backtest)):
        monkeypatch.setattr(demo_command, name, fn)
    out = demo_command.demo(config=Config(), workdir=tmp_path / "demo")
    assert calls == ["fit-clusters", "meta-train", "backtest"]
    assert "top 10 events by severity" in out["summary"] and str(tmp_path / "demo" / "scores.parquet") in out["summary"]
    assert out["evaluation"]["n_windows"] > 100 and len(out["top_anomalies"]) == 10 and len(out["top_events"]) == 10
    with pytest.raises(InputError, match="not empty"):
        demo_command.demo(config=Config(), workdir=tmp_path / "demo")


def test_detection_benchmark_runs_the_baselines_on_the_sample():
    from maml_anomaly.benchmarks.detection import markdown, run

    report = run("sample", ("seasonal_naive",))
    s = report["results"]["seasonal_naive"]
    assert s["n_series"] == 200 and s["n_windows"] > 200  # the last 14 days hold most windows
    assert 0 < s["at_far"]["event_recall"] <= 1 and s["at_far"]["false_alarm_rate"] <= 0.01
    assert s["forecast"]["mae_ratio_gmean"] == pytest.approx(1.0, abs=0.05)  # it IS seasonal naive
    assert markdown(report).count("\n") == 2


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, runner):
    """The real demo through the CLI: sample -> fit-clusters -> meta-train -> backtest -> evaluate."""
    res = runner.invoke(app, ["demo", "--workdir", str(tmp_path / "demo"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    ev = out["evaluation"]
    assert ev["n_series"] == 200 and ev["n_windows"] > 200
    assert ev["status_counts"].get("ok", 0) > 100_000
    assert 0 <= ev["default"]["false_alarm_rate"] <= 0.05 and ev["at_far"]["event_recall"] > 0.3
    assert len(out["top_anomalies"]) > 0
    for name in ("data", "model_dir", "scores"):
        assert Path(out["files"][name]).exists()
