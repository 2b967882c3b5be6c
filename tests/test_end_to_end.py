"""fit-clusters -> meta-train -> daily-score / backtest through the CLI on a small generated panel."""

import numpy as np
import pandas as pd
import pytest
from synth import seasonal_panel
from typer.testing import CliRunner

from maml_anomaly.cli import app
from maml_anomaly.data.schemas import SCORE_COLUMNS

DAYS = 12
LAST_DAY = pd.Timestamp("2026-01-01") + pd.Timedelta(days=DAYS - 1)
TINY = """
[train]
iterations = 30
hidden = [16, 16]
meta_batch_size = 8
time_budget_s = 60.0

[clusters]
min_cluster_size = 5
"""


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def _panel() -> pd.DataFrame:
    """24 hourly series (16 daily-seasonal, 8 noise) with the oddities daily data has."""
    t = DAYS * 24
    seasonal = seasonal_panel(16, t, seed=11)
    rng = np.random.default_rng(12)
    noise = 50 + rng.normal(0, 1, (8, t)).cumsum(axis=1) * 0.1
    m = np.vstack([seasonal, noise])
    m[2, -10] += 30 * np.std(np.diff(m[2, :-24]))  # a spike on the last day
    m[3, -7] = np.nan  # a missing value on the last day
    ds = pd.date_range("2026-01-01", periods=t, freq="h")
    ids = [f"s{i:02d}" for i in range(m.shape[0])]
    frame = pd.DataFrame({"unique_id": np.repeat(ids, t), "ds": np.tile(ds, m.shape[0]), "y": m.reshape(-1)})
    frame = frame.drop(index=4 * t + t - 5)  # a missing timestamp on the last day
    odd = pd.DataFrame(
        {
            "unique_id": ["s05", "late"] + ["late"] * 30,
            "ds": [ds[-3] + pd.Timedelta("20min"), ds[-30]] + list(ds[-30:]),
            "y": [1.0, np.nan] + [1.0] * 30,
        }
    ).iloc[[0] + list(range(2, 32))]  # one off-grid row; a series seen only in the last 30 hours
    return pd.concat([frame, odd], ignore_index=True).sample(frac=1.0, random_state=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    frame = _panel()
    history = frame[(frame["unique_id"] != "late")]
    frame.to_parquet(root / "input.parquet")
    history.to_parquet(root / "history.parquet")
    (root / "tiny.toml").write_text(TINY)
    model = root / "model"
    fit = _invoke(
        "fit-clusters", "--input", root / "history.parquet", "--model-dir", model, "--config", root / "tiny.toml"
    )
    assert fit.exit_code == 0, fit.output
    train = _invoke(
        "meta-train", "--input", root / "history.parquet", "--model-dir", model, "--config", root / "tiny.toml"
    )
    assert train.exit_code == 0, train.output
    return root, frame


def _score(root, out, *extra, input_name="input.parquet"):
    # the 'late' series and an off-grid row fail 2 of 25 series: over the default budget of 0.05
    result = _invoke(
        "daily-score",
        "--input",
        root / input_name,
        "--model-dir",
        root / "model",
        "--output",
        out,
        "--max-failed-fraction",
        "1",
        *extra,
    )
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out)


def test_daily_score_schema_completeness_statuses(trained):
    root, frame = trained
    scores = _score(root, root / "scores.parquet")
    assert list(scores.columns[: len(SCORE_COLUMNS)]) == list(SCORE_COLUMNS)
    day_rows = frame[(frame["ds"] >= LAST_DAY) & (frame["ds"] < LAST_DAY + pd.Timedelta(days=1))]
    expected = set(zip(day_rows["unique_id"], day_rows["ds"]))
    assert len(scores) == len(day_rows) and set(zip(scores["unique_id"], scores["ds"])) == expected
    status = scores.set_index(["unique_id", "ds"])["status"]
    assert status[("s03", LAST_DAY + pd.Timedelta(hours=17))] == "missing_value"
    assert status[("s05", LAST_DAY + pd.Timedelta(hours=21, minutes=20))] == "off_grid"
    assert set(status.loc["late"]) <= {"unknown_series", "insufficient_history"}
    assert (status.drop(index=["late", "s03", "s05"], level=0) == "ok").all()
    ok = scores[scores["status"] == "ok"]
    assert ok[["y_hat", "lower", "upper", "score"]].notna().all().all()
    assert scores.loc[scores["status"] != "ok", "score"].isna().all()
    spike = scores.set_index(["unique_id", "ds"]).loc[("s02", LAST_DAY + pd.Timedelta(hours=14))]
    assert spike["is_anomaly"] and spike["score"] >= 4.0
    assert ok["is_anomaly"].mean() < 0.05


def test_reruns_and_appended_data_give_identical_bytes(trained):
    root, frame = trained
    day = (LAST_DAY - pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    a = root / "a.parquet"
    b = root / "b.parquet"
    _score(root, a, "--date", day)
    _score(root, b, "--date", day)
    assert a.read_bytes() == b.read_bytes()
    frame[frame["ds"] < LAST_DAY].to_parquet(root / "upto.parquet")
    c = root / "c.parquet"
    _score(root, c, "--date", day, input_name="upto.parquet")
    assert a.read_bytes() == c.read_bytes()


def test_date_without_data_is_an_input_error(trained):
    root, _ = trained
    result = _invoke(
        "daily-score",
        "--input",
        root / "input.parquet",
        "--model-dir",
        root / "model",
        "--output",
        root / "x.parquet",
        "--date",
        "2030-01-01",
    )
    assert result.exit_code == 1 and "no data on 2030-01-01" in result.output
    assert not (root / "x.parquet").exists()


def test_backtest_matches_daily_score(trained):
    root, _ = trained
    daily = _score(root, root / "d.parquet")
    out = root / "bt.parquet"
    result = _invoke(
        "backtest",
        "--input",
        root / "input.parquet",
        "--model-dir",
        root / "model",
        "--output",
        out,
        "--start",
        (LAST_DAY - pd.Timedelta(days=2)).strftime("%Y-%m-%d"),
        "--max-failed-fraction",
        "1",
    )
    assert result.exit_code == 0, result.output
    bt = pd.read_parquet(out)
    assert list(bt.columns) == list(daily.columns)
    assert bt["ds"].min() >= LAST_DAY - pd.Timedelta(days=2)
    last = bt[bt["ds"] >= LAST_DAY].reset_index(drop=True)
    run_wide = ["q_value"]  # Benjamini-Hochberg over the run: a 3-day run ranks more points than one day
    pd.testing.assert_frame_equal(
        last.drop(columns=run_wide), daily.drop(columns=run_wide), check_exact=False, rtol=1e-6
    )


def test_failure_budget_fails_after_writing(trained):
    root, _ = trained
    out = root / "budget.parquet"
    result = _invoke(
        "daily-score",
        "--input",
        root / "input.parquet",
        "--model-dir",
        root / "model",
        "--output",
        out,
        "--max-failed-fraction",
        "0",
    )
    assert result.exit_code == 1 and "could not be scored" in result.output  # the 'late' series
    assert "still written" in result.output and out.exists()  # issue 7: the scores show which failed


def test_zero_inner_steps_at_scoring_scores_the_meta_init(trained):
    """score.inner_steps_at_scoring = 0 scores as a model meta-trained with 0 steps would, and
    differs from the adapted scores (the detection benchmark's "0 inner steps" row)."""
    import shutil

    from maml_anomaly.store import ModelDir

    root, _ = trained
    (root / "zero.toml").write_text("[score]\ninner_steps_at_scoring = 0\n")
    adapted = _score(root, root / "adapted.parquet")
    zero = _score(root, root / "zero.parquet", "--config", root / "zero.toml")
    unadapted_model = root / "model_0"
    shutil.copytree(root / "model", unadapted_model)
    md = ModelDir(unadapted_model)
    index = md.load_json("detector.json")
    assert all(c["inner_steps"] > 0 for c in index["clusters"].values())
    for c in index["clusters"].values():
        c["inner_steps"] = 0
    md.save_json("detector.json", index)  # as if meta-train had stored 0 steps
    result = _invoke(
        "daily-score",
        "--input",
        root / "input.parquet",
        "--model-dir",
        unadapted_model,
        "--output",
        root / "zero_model.parquet",
        "--max-failed-fraction",
        "1",
    )
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(zero, pd.read_parquet(root / "zero_model.parquet"))
    ok = (adapted["status"] == "ok") & (zero["status"] == "ok")
    assert not np.allclose(adapted.loc[ok, "y_hat"], zero.loc[ok, "y_hat"])
