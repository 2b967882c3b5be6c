"""Gaps of the cron work through the CLI: the outputs of a run that fails its budget, mixed-timezone
folders on Ray, a diverging meta-train, monthly data, the big-integer warning and skipped files in JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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


@case("integers-beyond-2^53-warned-once")
def test_status_the_big_integer_warning_is_printed_once_per_run_with_the_run_total(tmp_path, monkeypatch):
    import maml_anomaly.commands.days as days_command
    import maml_anomaly.commands.score as score_command

    monkeypatch.setattr(score_command, "STREAM_ROWS", 300)  # 8 series of 240 rows: four batches
    monkeypatch.setattr(days_command, "STREAM_ROWS", 300)
    w = Work(tmp_path)
    h = history()
    counts = pa.array((h["y"] * 1000).round().astype("int64") + 2**60)  # counters far beyond 2^53
    table = pa.table({"unique_id": pa.array(h["unique_id"]), "ds": pa.array(h["ds"]), "y": counts})
    inp = tmp_path / "counters.parquet"
    pq.write_table(table, inp, row_group_size=240)  # one row group per series: batches are cut between them
    result = invoke(w.score(inp, w.model(), "--max-failed-fraction", "1"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line and "2^53" in line]
    assert len(warnings) == 1, result.stderr
    assert "1,920 integer values beyond 2^53" in warnings[0]  # every row of the 8 series x 10 days read


@case("skipped-files-in-json")
def test_status_files_skipped_in_an_input_folder_are_named_in_the_json_object(tmp_path):
    w = Work(tmp_path)
    folder = tmp_path / "input"
    folder.mkdir()
    history().to_parquet(folder / "part-00000", index=False)
    (folder / "notes.txt").write_text("not data\n")
    (folder / "_SUCCESS").write_text("")
    model = w.model()
    for _ in range(2):  # a second run in the same process names them again
        result = invoke(w.score(folder, model, "--json"))
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["skipped_files"] == [str(folder / "_SUCCESS"), str(folder / "notes.txt")]
        assert any("notes.txt" in m for m in out["warnings"])


@case("ray-files-in-different-timezones")
def test_status_ray_reads_a_folder_whose_files_have_different_timezones_like_local(tmp_path):
    ray = pytest.importorskip("ray")
    w = Work(tmp_path)
    h = history()
    later = h["ds"] >= "2024-01-06"  # every series spans both files: the Ray shuffle merges them
    w.parquet(h[~later].assign(ds=h.loc[~later, "ds"].dt.tz_localize("UTC")), "zones/a.parquet")
    w.parquet(
        h[later].assign(ds=h.loc[later, "ds"].dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo")), "zones/b.parquet"
    )
    args = ["daily-score", "-i", tmp_path / "zones", "-m", w.model(), "--max-failed-fraction", "1", "-q"]
    assert invoke([*args, "-o", tmp_path / "local.parquet"]).exit_code == 0
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        result = invoke([*args, "-o", tmp_path / "ray.parquet", "--engine", "ray"])
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    local, remote = pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(tmp_path / "ray.parquet")
    pd.testing.assert_frame_equal(local, remote, check_exact=False, rtol=1e-9)
    assert len(local) == 8 * 24 and (local["status"] == "ok").all()


# -- local times under --timezone ------------------------------------------------------------------

ZONE = "Europe/Berlin"
DST_DAY = "2024-03-31"  # Berlin's 23-hour day: 02:00 CET jumps to 03:00 CEST
OUTAGE = [f"s{i}" for i in range(6)]  # of 8


def _dst_outage(w: Work) -> Path:
    """8 hourly series; 6 drop to -20 from 04:00 to 06:00 Berlin time (02:00-04:00 UTC) on the DST day."""
    h = history(days=20).assign(ds=lambda f: f["ds"] + pd.Timedelta(days=70))  # 2024-03-11 .. 2024-03-30 23:00
    extra = history(days=2).assign(ds=lambda f: f["ds"] + pd.Timedelta(days=90))  # 2024-03-31, 2024-04-01
    h = pd.concat([h, extra], ignore_index=True).sort_values(["unique_id", "ds"], ignore_index=True)
    hit = h["unique_id"].isin(OUTAGE) & h["ds"].between(
        pd.Timestamp("2024-03-31 02:00"), pd.Timestamp("2024-03-31 04:00")
    )
    h.loc[hit, "y"] = -20.0
    return w.parquet(h)


def test_under_a_timezone_events_incidents_summary_and_report_show_local_times(tmp_path):
    w = Work(tmp_path)
    files = {name: tmp_path / name for name in ("events.parquet", "incidents.parquet", "report.html")}
    result = invoke(
        w.score(
            _dst_outage(w), w.model(), "--date", DST_DAY, "--timezone", ZONE, "--max-failed-fraction", "1",
            "--events", files["events.parquet"], "--incidents", files["incidents.parquet"],
            "--report", files["report.html"],
        )
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"1 incident: 6 series of p24 (75%) down at 2024-03-31 04:00..06:00 (times in {ZONE})", lines[0]
    assert f"by severity (times in {ZONE}):" in result.stdout and "2024-03-31 04:00:00" in result.stdout
    for name in ("events.parquet", "incidents.parquet"):
        frame = pd.read_parquet(files[name])
        assert len(frame) and str(frame["start_local"].dt.tz) == ZONE and str(frame["end_local"].dt.tz) == ZONE
        for c in ("start", "end"):  # the same instants as the UTC columns
            assert (frame[f"{c}_local"].dt.tz_convert("UTC").dt.tz_localize(None) == frame[c]).all()
    incident = pd.read_parquet(files["incidents.parquet"]).iloc[0]
    assert incident["start_local"] == pd.Timestamp("2024-03-31 04:00", tz=ZONE)  # CEST, after the jump
    page = files["report.html"].read_text(encoding="utf-8")
    assert f"times in {ZONE}" in page and "at 2024-03-31 04:00" in page and "2024-03-31 02:00" not in page


def test_a_utc_run_adds_no_local_columns(tmp_path):
    w = Work(tmp_path)
    events, incidents = tmp_path / "events.parquet", tmp_path / "incidents.parquet"
    args = ["--date", DST_DAY, "--max-failed-fraction", "1", "--events", events, "--incidents", incidents]
    result = invoke(w.score(_dst_outage(w), w.model(), *args))
    assert result.exit_code == 0, result.output
    assert "times in" not in result.stdout and "down at 2024-03-31 02:00..04:00" in result.stdout
    for path in (events, incidents):
        assert not {"start_local", "end_local"} & set(pd.read_parquet(path).columns)


def test_under_a_timezone_the_json_top_events_carry_local_times(tmp_path):
    w = Work(tmp_path)
    args = ["--date", DST_DAY, "--timezone", ZONE, "--max-failed-fraction", "1", "--json"]
    result = invoke(w.score(_dst_outage(w), w.model(), *args))
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["top_events"]
    outage = [e for e in top if e["unique_id"] in OUTAGE]
    assert outage and all(e["start_local"] == "2024-03-31T04:00:00+02:00" for e in outage)
    assert all(e["start"] == "2024-03-31T02:00:00" for e in outage)  # the UTC field unchanged
