"""Gaps of the cron work through the CLI: the outputs of a run that fails its budget, mixed-timezone
folders on Ray, a diverging meta-train, monthly data, the big-integer warning and skipped files in JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reliability_data import TRAIN_ARGS, Work, assert_clean_failure, case, history, invoke, snapshot

pytest.importorskip("matplotlib")

LAST = pd.Timestamp("2024-01-10")


def _over_budget_input(w: Work):
    """8 hourly series; 3 stop the day before the last day (absent there): 3 of 8 fail."""
    h = history()
    return w.parquet(h[(h["ds"] < LAST) | ~h["unique_id"].isin(["s1", "s2", "s3"])])


@case("over-budget-writes-every-output")
def test_status_over_budget_writes_events_incidents_and_a_report_that_says_it_failed(tmp_path):
    w = Work(tmp_path)
    outputs = {name: tmp_path / name for name in ("events.parquet", "incidents.parquet", "report.html")}
    extra = ["--events", outputs["events.parquet"], "--incidents", outputs["incidents.parquet"]]
    result = invoke(w.score(_over_budget_input(w), w.model(), *extra, "--report", outputs["report.html"]))
    assert_clean_failure(result, "3 of 8 series", "--max-failed-fraction 0.05", "every output asked for was written")
    assert all(p.is_file() for p in outputs.values())
    assert (pd.read_parquet(w.out)["status"] == "absent").sum() == 3
    page = outputs["report.html"].read_text(encoding="utf-8")
    banner = page.index("This run FAILED its budget")
    assert banner < page.index("<section id=summary>")  # first thing under the title
    assert "3 of 8 series (37.5%) could not be scored" in page and "absent: 3 series" in page


def test_a_run_within_its_budget_has_no_failure_banner(tmp_path):
    w = Work(tmp_path)
    inp = _over_budget_input(w)
    result = invoke(w.score(inp, w.model(), "--max-failed-fraction", "0.5", "--report", tmp_path / "r.html", "-q"))
    assert result.exit_code == 0, result.output
    assert "FAILED" not in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_over_budget_with_json_prints_one_error_object_and_still_writes_the_report(tmp_path):
    w = Work(tmp_path)
    result = invoke(w.score(_over_budget_input(w), w.model(), "--report", tmp_path / "r.html", "--json"))
    assert result.exit_code == 1 and '"exit_code": 1' in result.stdout
    assert (tmp_path / "r.html").is_file()


@case("meta-lr-overflow")
def test_status_meta_train_whose_steps_overflow_exits_1_naming_the_cluster_and_the_old_model_serves(tmp_path):
    w = Work(tmp_path)
    inp, model = w.good(), w.model()
    before = snapshot(model)
    result = invoke(["meta-train", "-i", inp, "-m", model, *TRAIN_ARGS, "--meta-lr", "1e38", "--overwrite", "-q"])
    assert_clean_failure(result, "cluster p24 diverged", "overflow", "previous model keeps serving", "--meta-lr")
    assert snapshot(model) == before


def _monthly(w: Work) -> Path:
    ds = pd.date_range("2015-01-01", periods=96, freq="MS")
    return w.parquet(pd.DataFrame({"unique_id": np.repeat(["m0", "m1"], ds.size), "ds": np.tile(ds, 2), "y": 1.0}))


@case("monthly-steps-daily-score")
def test_status_monthly_data_given_to_daily_score_says_calendar_months_are_not_supported(tmp_path):
    w = Work(tmp_path)
    result = invoke(w.score(_monthly(w), w.model()))
    assert_clean_failure(result, "calendar month", "28 to 31 days", "resample", "10 of 10 series", "still written")
    assert set(pd.read_parquet(w.out)["status"]) == {"insufficient_history", "absent"}
