"""--timezone: days are the zone's calendar days (23 or 25 hours across DST), through the CLI.

Hourly series s0..s7 (the reliability suite's tiny model scores them) around the spring and
autumn DST changes of Europe/Berlin (2024-03-31: 23 hours; 2024-10-27: 25 hours).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from reliability_data import ErrorCase, Work, assert_clean_failure, case, invoke, sha256, snapshot

ZONE = "Europe/Berlin"


def _hourly(start: str, end: str, n_series: int = 8, seed: int = 0) -> pd.DataFrame:
    """Hourly UTC rows of n_series daily-seasonal series from start to end (exclusive)."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range(start, end, freq="h", inclusive="left")
    t = np.arange(ds.size)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "unique_id": f"s{i}",
                    "ds": ds,
                    "y": 5.0 + i + np.sin(2 * np.pi * t / 24 + i) + rng.normal(0, 0.1, ds.size),
                }
            )
            for i in range(n_series)
        ],
        ignore_index=True,
    )


def _local_day_rows(frame: pd.DataFrame, day: str) -> pd.DataFrame:
    local = frame["ds"].dt.tz_localize("UTC").dt.tz_convert(ZONE)
    return frame[local.dt.strftime("%Y-%m-%d") == day]


def _score_day(w: Work, frame: pd.DataFrame, day: str) -> pd.DataFrame:
    result = invoke(w.score(w.parquet(frame), w.model(), "--date", day, "--timezone", ZONE, "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["timezone"] == ZONE
    return pd.read_parquet(w.out)


def _assert_whole_local_day(scores: pd.DataFrame, frame: pd.DataFrame, day: str, hours: int) -> None:
    expected = _local_day_rows(frame, day)
    assert len(expected) == 8 * hours
    assert sorted(zip(scores["unique_id"], scores["ds"])) == sorted(zip(expected["unique_id"], expected["ds"]))
    assert str(scores["ds_local"].dt.tz) == ZONE
    assert (scores["ds_local"].dt.strftime("%Y-%m-%d") == day).all()
    assert (scores["ds_local"].dt.tz_convert("UTC").dt.tz_localize(None) == scores["ds"]).all()
    assert (scores["status"] == "ok").all()


@case("timezone-spring-23-hour-day")
def test_status_spring_dst_day_is_23_hours_scored_whole(tmp_path):
    frame = _hourly("2024-03-18", "2024-04-03")
    scores = _score_day(Work(tmp_path), frame, "2024-03-31")
    _assert_whole_local_day(scores, frame, "2024-03-31", 23)
    assert scores["ds"].min() == pd.Timestamp("2024-03-30 23:00")  # Berlin midnight in UTC (CET)
    assert scores["ds"].max() == pd.Timestamp("2024-03-31 21:00")  # 23:00 CEST


@case("timezone-autumn-25-hour-day")
def test_status_autumn_dst_day_is_25_hours_scored_whole(tmp_path):
    frame = _hourly("2024-10-14", "2024-10-30")
    scores = _score_day(Work(tmp_path), frame, "2024-10-27")
    _assert_whole_local_day(scores, frame, "2024-10-27", 25)


@case("timezone-backtest-week-across-dst")
def test_status_backtest_over_a_dst_week_scores_every_point_once(tmp_path):
    w = Work(tmp_path)
    frame = _hourly("2024-03-16", "2024-04-06")
    args = w.backtest(w.parquet(frame), w.model(), "--start", "2024-03-28", "--end", "2024-04-03", "--timezone", ZONE)
    result = invoke(args)
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(w.out)
    local = frame["ds"].dt.tz_localize("UTC").dt.tz_convert(ZONE).dt.strftime("%Y-%m-%d")
    expected = frame[(local >= "2024-03-28") & (local <= "2024-04-03")]
    assert not scores.duplicated(["unique_id", "ds"]).any()  # no point twice
    assert sorted(zip(scores["unique_id"], scores["ds"])) == sorted(zip(expected["unique_id"], expected["ds"]))
    per_day = scores.groupby(scores["ds_local"].dt.strftime("%Y-%m-%d")).size() // 8
    assert per_day.to_dict() == {
        f"2024-{d}": 23 if d == "03-31" else 24 for d in ["03-28", "03-29", "03-30", "03-31", "04-01", "04-02", "04-03"]
    }
    assert (scores["status"] == "ok").all()


@case("timezone-default-day")
def test_status_default_day_is_the_zones_last_complete_day(tmp_path):
    w = Work(tmp_path)
    frame = _hourly("2024-03-20", "2024-04-02 22:00")  # ends at 23:00 Berlin time on 2024-04-02
    inp, model = w.parquet(frame), w.model()
    result = invoke(w.score(inp, model, "--timezone", ZONE, "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["completeness"]["day"] == "2024-04-02"
    assert len(pd.read_parquet(w.out)) == 8 * 24
    result = invoke(w.score(inp, model, "--json"))  # in UTC, 2024-04-02 lacks its last two hours
    assert result.exit_code == 0, result.output
    fields = json.loads(result.stdout)
    assert fields["completeness"]["day"] == "2024-04-01" and "2024-04-02" in fields["completeness"]["reason"]


@case("timezone-utc-unchanged")
def test_status_timezone_utc_writes_the_same_file_as_no_timezone(tmp_path):
    w = Work(tmp_path)
    inp, model = w.parquet(_hourly("2024-03-20", "2024-04-02")), w.model()
    assert invoke(w.score(inp, model)).exit_code == 0
    plain = sha256(w.out)
    assert invoke(w.score(inp, model, "--timezone", "UTC")).exit_code == 0
    assert sha256(w.out) == plain
    assert "ds_local" not in pd.read_parquet(w.out).columns


def test_evaluate_reads_naive_labels_as_local_times(tmp_path):
    w = Work(tmp_path)
    frame = _hourly("2024-03-18", "2024-04-03")
    frame.loc[(frame["unique_id"] == "s1") & (frame["ds"] == pd.Timestamp("2024-03-31 10:00")), "y"] += 8.0
    _score_day(w, frame, "2024-03-31")
    labels = w.parquet(pd.DataFrame({"unique_id": ["s1"], "ds": [pd.Timestamp("2024-03-31 12:00")]}), "labels.parquet")
    local = invoke(["evaluate", "--scores", w.out, "--labels", labels, "--timezone", ZONE, "--json"])
    utc = invoke(["evaluate", "--scores", w.out, "--labels", labels, "--json"])
    assert local.exit_code == 0 and utc.exit_code == 0, (local.output, utc.output)
    assert json.loads(local.stdout)["default"]["event_recall"] == 1.0  # 12:00 CEST is 10:00 UTC: the spike
    assert json.loads(utc.stdout)["default"]["event_recall"] == 0.0


def test_plot_draws_local_times(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from maml_anomaly import plotting

    w = Work(tmp_path)
    frame = _hourly("2024-03-18", "2024-04-03")
    _score_day(w, frame, "2024-03-31")
    drawn = []
    real = plotting.series_plot_data
    monkeypatch.setattr(plotting, "series_plot_data", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    png = w.root / "s1.png"
    args = ["plot", "-i", w.root / "input.parquet", "--scores", w.out, "--series", "s1", "-o", png]
    result = invoke([*args, "--timezone", ZONE])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 0
    assert pd.Timestamp(drawn[-1].ds[0]) == pd.Timestamp("2024-03-31 00:00")  # local midnight, not 23:00 UTC
    assert pd.Timestamp(drawn[-1].ds[-1]) == pd.Timestamp("2024-03-31 23:00")


ERROR_CASES = [
    ErrorCase(
        "timezone-unknown",
        lambda w: w.score(w.good(), w.model(), "--timezone", "Europe/Atlantis"),
        ("--timezone", "Europe/Atlantis", "IANA"),
    ),
    ErrorCase(
        "timezone-unknown-backtest",
        lambda w: w.backtest(w.good(), w.model(), "--timezone", "CEST+2"),
        ("--timezone", "IANA"),
    ),
]


def test_error_cases_exit_1_and_change_nothing(tmp_path):
    for i, error in enumerate(ERROR_CASES):
        w = Work(tmp_path / str(i))
        args = error.build(w)
        before = snapshot(w.root)
        assert_clean_failure(invoke(args), *error.words)
        assert snapshot(w.root) == before
