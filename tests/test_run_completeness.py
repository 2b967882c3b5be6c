"""A morning run never succeeds on partial work: absent series, partial days, off-grid rows, clocks.

Through the real CLI on the reliability suite's tiny model (8 hourly series s0..s7, 10 days):
the default day skips a day whose hours have not all arrived, --date scores a partial day and
says how complete it is, every expected series without a row gets an ``absent`` row that
counts against --max-failed-fraction (default 0.05), jittered clocks become one grid with
--snap-tolerance, and calendar-month steps are refused up front.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reliability_data import (
    TRAIN_ARGS,
    ErrorCase,
    Work,
    assert_clean_failure,
    case,
    history,
    invoke,
    snapshot,
)

LAST = pd.Timestamp("2024-01-10")  # the last day of history()


def _ok(args: list) -> object:
    result = invoke(args)
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result


def _json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def _partial() -> pd.DataFrame:
    """history() with only the first 2 of the last day's 24 hours."""
    h = history()
    return h[h["ds"] < LAST + pd.Timedelta(hours=2)].reset_index(drop=True)


@case("default-day-skips-partial-day")
def test_status_default_day_skips_a_day_with_2_of_24_hours(tmp_path):
    w = Work(tmp_path)
    result = _ok(w.score(w.parquet(_partial()), w.model()))
    scores = pd.read_parquet(w.out)
    assert scores["ds"].dt.normalize().unique().tolist() == [LAST - pd.Timedelta(days=1)]
    assert len(scores) == 8 * 24 and (scores["status"] == "ok").all()
    assert "scored 2024-01-09, the last day complete for most series" in result.stdout
    assert "2024-01-10 is complete for 0 of 8 series (8% of its points have arrived)" in result.stdout


@case("date-on-partial-day")
def test_status_date_on_a_partial_day_scores_it_and_says_how_complete(tmp_path):
    w = Work(tmp_path)
    inp, model = w.parquet(_partial()), w.model()
    result = _ok(w.score(inp, model, "--date", "2024-01-10", "--json"))
    fields = _json(result)
    assert fields["completeness"]["day"] == "2024-01-10"
    assert fields["completeness"]["points_share"] == pytest.approx(2 / 24, abs=1e-3)
    assert fields["completeness"]["complete"] is False and fields["completeness"]["series_complete"] == 0
    assert len(pd.read_parquet(w.out)) == 8 * 2
    text = _ok(w.score(inp, model, "--date", "2024-01-10")).stdout
    assert "8% of its expected points present" in text and "partial" in text


@case("absent-series-over-budget")
def test_status_99_of_100_series_absent_exit_1_with_scores_and_counts(tmp_path):
    w = Work(tmp_path)
    h = history(n_series=100)
    h = h[(h["ds"] < LAST) | (h["unique_id"] == "s0")]  # 99 series stop the day before
    result = invoke(w.score(w.parquet(h), w.model(), "--max-failed-fraction", "0.05"))
    assert_clean_failure(result, "99 of 100 series", "absent 99 points", "--max-failed-fraction 0.05", "still written")
    scores = pd.read_parquet(w.out)
    absent = scores[scores["status"] == "absent"]
    assert len(absent) == 99 and absent["unique_id"].nunique() == 99 and "s0" not in set(absent["unique_id"])
    assert (absent["ds"] == LAST).all() and absent["y"].isna().all() and absent["score"].isna().all()
    assert not absent["is_anomaly"].any()
    assert absent.loc[absent["unique_id"] == "s1", "cluster"].notna().all()  # the model's series keep their cluster
    assert list(scores.columns)[:10] == [
        "unique_id",
        "ds",
        "y",
        "y_hat",
        "lower",
        "upper",
        "score",
        "is_anomaly",
        "cluster",
        "status",
    ]
    assert scores[["unique_id", "ds"]].equals(scores.sort_values(["unique_id", "ds"])[["unique_id", "ds"]])


@case("model-series-missing-from-input")
def test_status_model_series_missing_from_the_whole_input_are_absent(tmp_path):
    w = Work(tmp_path)
    h = history()
    inp = w.parquet(h[h["unique_id"] != "s3"])
    result = invoke(w.score(inp, w.model()))  # default --max-failed-fraction 0.05: 1 of 8 is too many
    assert_clean_failure(result, "1 of 8 series", "absent")
    scores = pd.read_parquet(w.out)
    row = scores[scores["unique_id"] == "s3"]
    assert row["status"].tolist() == ["absent"] and row["ds"].tolist() == [LAST]
    assert (scores.loc[scores["unique_id"] != "s3", "status"] == "ok").all()
    result = _ok(w.score(inp, w.root / "model", "--max-failed-fraction", "0.2", "--json"))
    assert _json(result)["statuses"] == {"absent": 1, "ok": 7 * 24} and _json(result)["failed_series"] == 1


@case("backtest-absent-per-day")
def test_status_backtest_gives_one_absent_row_per_series_and_day_without_rows(tmp_path):
    w = Work(tmp_path)
    h = history()
    gap = (h["unique_id"] == "s2") & (h["ds"].dt.normalize() == LAST - pd.Timedelta(days=1))
    _ok(w.backtest(w.parquet(h[~gap]), w.model(), "--start", "2024-01-08", "--max-failed-fraction", "1"))
    scores = pd.read_parquet(w.out)
    absent = scores[scores["status"] == "absent"]
    assert absent[["unique_id", "ds"]].values.tolist() == [["s2", LAST - pd.Timedelta(days=1)]]
    assert len(scores) == 3 * 8 * 24 - 24 + 1


def test_absent_rows_of_a_batch_of_series_fit_clusters_never_saw(tmp_path):
    w = Work(tmp_path)
    h = history(n_series=4, seed=3)
    h["unique_id"] = "u" + h["unique_id"]
    h = h[(h["unique_id"] != "us2") | (h["ds"] < LAST)]
    result = _ok(w.score(w.parquet(h), w.model(), "--date", "2024-01-10", "--max-failed-fraction", "1", "--json"))
    scores = pd.read_parquet(w.out)
    absent = scores[scores["status"] == "absent"]
    assert sorted(absent["unique_id"]) == [f"s{i}" for i in range(8)] + ["us2"]  # the model's 8 and the new one
    assert absent.loc[absent["unique_id"] == "us2", "cluster"].isna().all()
    assert _json(result)["failed_series"] == 9 and _json(result)["series"] == 12


@case("all-rows-off-grid")
def test_status_a_day_of_off_grid_rows_fails_even_the_strictest_budget(tmp_path):
    w = Work(tmp_path)
    h = history()
    late = h["ds"] >= LAST
    h.loc[late, "ds"] += pd.Timedelta(minutes=7)  # every row of the day off its hourly grid
    result = invoke(w.score(w.parquet(h), w.model(), "--max-failed-fraction", "0"))
    assert_clean_failure(result, "8 of 8 series", "off_grid", "still written", "--snap-tolerance")
    assert (pd.read_parquet(w.out)["status"] == "off_grid").all()


def test_default_max_failed_fraction_is_for_cron():
    from maml_anomaly.config import Config

    assert Config().score.max_failed_fraction == 0.05


# -- clocks and steps ---------------------------------------------------------------------------------


def _jittered(step: str, jitter_s: float, days: int, seed: int = 0) -> pd.DataFrame:
    """8 daily-seasonal series on a ``step`` grid, every timestamp moved by up to +-jitter_s seconds."""
    rng = np.random.default_rng(seed)
    grid = pd.date_range("2024-01-01", periods=int(days * pd.Timedelta("1D") / pd.Timedelta(step)), freq=step)
    t = (grid - grid[0]) / pd.Timedelta("1D")
    parts = []
    for i in range(8):
        ds = grid + pd.to_timedelta(rng.uniform(-jitter_s, jitter_s, grid.size), unit="s")
        y = 5.0 + i + np.sin(2 * np.pi * t + i) + rng.normal(0, 0.1, grid.size)
        parts.append(pd.DataFrame({"unique_id": f"s{i}", "ds": ds, "y": y}))
    return pd.concat(parts, ignore_index=True)


def _fit_and_score(w: Work, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    inp, model = w.parquet(frame), w.root / "model"
    snap = ["--snap-tolerance", "0.5"]
    _ok(["fit-clusters", "-i", inp, "-m", model, "-q", *snap])
    _ok(["meta-train", "-i", inp, "-m", model, "-q", *TRAIN_ARGS, *snap])
    _ok(w.score(inp, model, "-q", *snap, "--max-failed-fraction", "0"))
    return pd.read_parquet(model / "current" / "clusters.parquet"), pd.read_parquet(w.out)


def _assert_one_grid_all_scored(w: Work, step: str, jitter_s: float, days: int) -> None:
    frame = _jittered(step, jitter_s, days)
    clusters, scores = _fit_and_score(w, frame)
    steps = pd.to_timedelta(clusters["step"]) if "step" in clusters else pd.to_timedelta(clusters["step_seconds"], "s")
    assert steps.unique().tolist() == [pd.Timedelta(step)]
    day = frame[frame["ds"] >= frame["ds"].max().normalize()]
    assert len(scores) == len(day)  # every row of the day, none dropped
    assert (scores["status"] == "ok").all(), scores["status"].value_counts()


@case("jitter-60s-on-5-minutes")
def test_status_jitter_of_60_s_on_a_5_minute_grid_is_one_grid_all_scored(tmp_path):
    _assert_one_grid_all_scored(Work(tmp_path), "5min", 60.0, 6)


@case("jitter-2s-on-hourly")
def test_status_jitter_of_2_s_on_hourly_data_is_one_grid_all_scored(tmp_path):
    _assert_one_grid_all_scored(Work(tmp_path), "1h", 2.0, 10)


def test_exact_grid_is_unchanged_by_the_jitter_rule():
    from maml_anomaly.data.panel import build_panel

    h = history()
    a, _ = build_panel(h, 0.0)
    b, _ = build_panel(h, 0.5)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.start, b.start)
    np.testing.assert_array_equal(a.step, b.step)
    assert b.snapped == 0


def _monthly(w: Work, freq: str = "MS") -> Path:
    ds = pd.date_range("2015-01-01", periods=96, freq=freq)
    return w.parquet(pd.DataFrame({"unique_id": np.repeat(["m0", "m1"], ds.size), "ds": np.tile(ds, 2), "y": 1.0}))


def _two_partial_days(w: Work) -> Path:
    """history() whose day before last lacks its last 5 hours and whose last day has 2 hours."""
    h = _partial()
    gap = (h["ds"] >= LAST - pd.Timedelta(hours=5)) & (h["ds"] < LAST)
    return w.parquet(h[~gap])


ERROR_CASES = [
    ErrorCase(
        "no-complete-day",
        lambda w: w.score(_two_partial_days(w), w.model()),
        ("no day", "complete", "2024-01-09 is complete for 0 of the 8 series", "2024-01-10", "--date"),
    ),
    ErrorCase(
        "monthly-steps-refused",
        lambda w: ["fit-clusters", "-i", _monthly(w), "-m", w.root / "model"],
        ("calendar month", "28 to 31 days", "resample", "daily"),
    ),
    ErrorCase(
        "yearly-steps-refused",
        lambda w: ["fit-clusters", "-i", _monthly(w, "YS"), "-m", w.root / "model"],
        ("calendar year", "365 to 366 days", "resample"),
    ),
    ErrorCase(
        "quarterly-steps-refused",
        lambda w: ["fit-clusters", "-i", _monthly(w, "QS"), "-m", w.root / "model"],
        ("calendar quarter", "'m0'", "resample"),
    ),
]


@pytest.mark.parametrize("error", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_error_cases_exit_1_and_change_nothing(tmp_path, error):
    w = Work(tmp_path)
    args = error.build(w)
    before = snapshot(tmp_path)
    assert_clean_failure(invoke(args), *error.words)
    assert snapshot(tmp_path) == before


# -- the Ray engine makes the same absent rows ---------------------------------------------------------


def test_absent_rows_on_ray_match_local(tmp_path):
    ray = pytest.importorskip("ray")
    w = Work(tmp_path)
    h = history(n_series=12)
    h = h[(h["ds"] < LAST) | h["unique_id"].isin(["s0", "s1", "s9"])]
    h = h[h["unique_id"] != "s5"]  # a model series missing from the whole input
    inp, model = w.parquet(h.sample(frac=1.0, random_state=0)), w.model()
    args = ["daily-score", "-i", inp, "-m", model, "--max-failed-fraction", "1", "-q"]
    _ok([*args, "-o", w.root / "local.parquet"])
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        _ok([*args, "-o", w.root / "ray.parquet", "--engine", "ray"])
    finally:
        ray.shutdown()
    local, remote = pd.read_parquet(w.root / "local.parquet"), pd.read_parquet(w.root / "ray.parquet")
    pd.testing.assert_frame_equal(local, remote, check_exact=False, rtol=1e-9)
    assert sorted(local.loc[local["status"] == "absent", "unique_id"]) == [
        "s10",
        "s11",
        "s2",
        "s3",
        "s4",
        "s5",
        "s6",
        "s7",
        "s8",
    ]
