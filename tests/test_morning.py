"""The morning view through the CLI: --incidents and --report on daily-score and backtest, the report
command, the demo's top events and report, meta-train's progress."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reliability_data import ErrorCase, Work, assert_clean_failure, history, invoke, sha256, snapshot, trained_model
from report_data import scored_run

from maml_anomaly.core.events import events_schema

pytest.importorskip("matplotlib")

OUTAGE_SERIES = [f"s{i}" for i in range(8)]  # of 12
LAST_DAY = pd.Timestamp("2024-01-10")
LINE = re.compile(r"^1 incident: 8 series of \S+ \(\d+%\) down at 2024-01-10 03:00\.\.05:00$")
CHART = re.compile(r"<img class=chart ")


def outage_history() -> pd.DataFrame:
    """12 hourly series over 10 days; 8 of them drop to -20 from 03:00 to 05:00 on the last day."""
    h = history(12, 10)
    hours = (h["ds"] >= LAST_DAY + pd.Timedelta(hours=3)) & (h["ds"] < LAST_DAY + pd.Timedelta(hours=6))
    h.loc[h["unique_id"].isin(OUTAGE_SERIES) & hours, "y"] = -20.0
    return h


@pytest.fixture(scope="module")
def outage(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("outage")
    inp = root / "input.parquet"
    outage_history().to_parquet(inp, index=False)
    return inp, trained_model(root / "model")


def _score(outage, out: Path, *extra) -> object:
    inp, model = outage
    return invoke(["daily-score", "-i", inp, "-m", model, "-o", out / "scores.parquet", *extra])


def test_daily_score_writes_incidents_and_report_and_lists_the_incident_first(outage, tmp_path):
    result = _score(
        outage,
        tmp_path,
        "--events",
        tmp_path / "events.parquet",
        "--incidents",
        tmp_path / "incidents.parquet",
        "--report",
        tmp_path / "report.html",
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert LINE.match(lines[0]), lines[0]
    assert lines[1].startswith("scored 288 points of 12 series")
    assert "top 5 by severity:" in result.stdout  # the top list is by event
    inc = pd.read_parquet(tmp_path / "incidents.parquet")
    assert len(inc) == 1 and inc.loc[0, "n_series"] == 8 and inc.loc[0, "direction"] == "down"
    assert set(inc.loc[0, "top_series"]) <= set(OUTAGE_SERIES) and len(inc.loc[0, "top_series"]) == 5
    events = pd.read_parquet(tmp_path / "events.parquet")
    assert set(events.loc[events["start"] == LAST_DAY + pd.Timedelta(hours=3), "unique_id"]) == set(OUTAGE_SERIES)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Incidents (1)" in page and len(CHART.findall(page)) == min(10, len(events))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.parquet",
        "incidents.parquet",
        "report.html",
        "scores.parquet",
    ]


def test_the_json_object_lists_the_incidents_first(outage, tmp_path):
    result = _score(outage, tmp_path, "--incidents", tmp_path / "incidents.parquet", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert list(out)[0] == "incidents"
    inc = out["incidents"]
    assert inc["count"] == 1 and inc["file"] == str(tmp_path / "incidents.parquet")
    assert inc["largest"][0]["n_series"] == 8 and LINE.match("1 incident: " + inc["largest"][0]["line"])
    assert {e["unique_id"] for e in out["top_events"]} >= set(OUTAGE_SERIES) and "report" not in out


def test_backtest_writes_incidents_and_report(outage, tmp_path):
    inp, model = outage
    result = invoke(
        [
            "backtest",
            "-i",
            inp,
            "-m",
            model,
            "-o",
            tmp_path / "scores.parquet",
            "--start",
            "2024-01-09",
            "--end",
            "2024-01-10",
            "--incidents",
            tmp_path / "inc.parquet",
            "--report",
            tmp_path / "r.html",
        ]
    )
    assert result.exit_code == 0, result.output
    inc = pd.read_parquet(tmp_path / "inc.parquet")
    assert (inc["n_series"] == 8).sum() == 1 and inc["start"].min() >= pd.Timestamp("2024-01-09")
    assert "scored 2024-01-09 to 2024-01-10" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_a_failed_incidents_write_leaves_the_previous_file(outage, tmp_path, monkeypatch):
    path = tmp_path / "incidents.parquet"
    assert _score(outage, tmp_path, "--incidents", path).exit_code == 0
    before = sha256(path)
    real = pq.write_table

    def no_space_for_incidents(table, *args, **kwargs):
        if "incident_id" in table.column_names:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", no_space_for_incidents)
    result = _score(outage, tmp_path, "--incidents", path)
    assert result.exit_code == 1 and "could not write" in result.stderr.lower()
    assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incidents.parquet", "scores.parquet"]  # no temporary file


# -- the report command ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_files(tmp_path_factory) -> dict[str, Path]:
    """report_data's scored run as the files a daily-score run leaves: scores, events, the input."""
    root = tmp_path_factory.mktemp("run")
    run = scored_run()
    paths = {"scores": root / "scores.parquet", "input": root / "input.parquet", "events": root / "events.parquet"}
    run["scores"].to_parquet(paths["scores"], index=False)
    run["history"].to_parquet(paths["input"], index=False)
    pq.write_table(
        pa.Table.from_pandas(run["events"], schema=events_schema(pa.string()), preserve_index=False), paths["events"]
    )
    return paths


def _report(files, out: Path, *extra) -> object:
    return invoke(["report", "-s", files["scores"], "-i", files["input"], "-o", out, *extra])


def test_report_command_derives_events_and_incidents_from_the_scores(run_files, tmp_path):
    result = _report(run_files, tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "1 incident: 8 series of 1h-p24 (50%) down at 2024-03-24 03:00..05:00"
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Incidents (1)" in page and len(CHART.findall(page)) == 10 and "times in UTC" in page


def test_report_command_reads_given_events_and_incidents(run_files, tmp_path):
    missing = _report(run_files, tmp_path / "a.html", "--incidents", tmp_path / "none.parquet")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr  # a given file is read, never derived
    events = pd.read_parquet(run_files["events"]).iloc[:3]  # fewer events than the scores hold: the file wins
    events.to_parquet(tmp_path / "few.parquet", index=False)
    result = _report(run_files, tmp_path / "b.html", "--events", tmp_path / "few.parquet", "--top", "2")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "b.html").read_text(encoding="utf-8")
    assert len(CHART.findall(page)) == 2 and "Top 2 events by severity (of 3)" in page


def test_report_timezone_changes_only_the_times_shown(run_files, tmp_path):
    result = _report(run_files, tmp_path / "berlin.html", "--timezone", "Europe/Berlin")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]  # CET: UTC+1 in March before DST; the line says its zone
    assert first.endswith("down at 2024-03-24 04:00..06:00 (times in Europe/Berlin)"), first
    page = (tmp_path / "berlin.html").read_text(encoding="utf-8")
    assert "times in Europe/Berlin" in page and "04:00..06:00" in page and "03:00..05:00" not in page


# -- reliability cases: exit 1, one message, nothing written ---------------------------------------------


def _report_case(*extra):
    def build(w: Work) -> list:
        run = scored_run()
        scores, inp = w.parquet(run["scores"], "scores.parquet"), w.parquet(run["history"], "input.parquet")
        return [
            "report",
            "-s",
            scores,
            "-i",
            inp,
            "-o",
            w.root / "report.html",
            *[a(w) if callable(a) else a for a in extra],
        ]

    return build


ERROR_CASES = [
    ErrorCase(
        "incidents-same-as-output",
        lambda w: w.score(w.good(), w.model(), "--incidents", w.out),
        ("--incidents", "same file", "--output"),
    ),
    ErrorCase(
        "report-is-a-directory",
        lambda w: w.score(w.good(), w.model(), "--report", w.root),
        ("--report", "is a directory"),
    ),
    ErrorCase(
        "report-same-as-events",
        lambda w: w.backtest(w.good(), w.model(), "--events", w.root / "e.parquet", "--report", w.root / "e.parquet"),
        ("--report", "same file", "--events"),
    ),
    ErrorCase("report-timezone-unknown", _report_case("--timezone", "Mars/Olympus_Mons"), ("--timezone", "IANA")),
    ErrorCase(
        "report-output-is-the-scores",
        lambda w: [*_report_case()(w)[:-2], "-o", w.root / "scores.parquet"],
        ("same file as --scores",),
    ),
    ErrorCase(
        "report-scores-missing",
        lambda w: ["report", "-s", w.root / "nope.parquet", "-i", w.good(), "-o", w.root / "r.html"],
        ("--scores", "does not exist"),
    ),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_morning_error_case_exits_1_and_writes_nothing(case, tmp_path):
    args = case.build(Work(tmp_path))
    before = snapshot(tmp_path)
    result = invoke(args)
    assert_clean_failure(result, *case.words)
    assert snapshot(tmp_path) == before


# -- meta-train progress --------------------------------------------------------------------------------


def test_train_cluster_calls_back_after_every_iteration():
    from maml_anomaly.core.tasks import choose_lag_spec, query_len_for_step
    from maml_anomaly.core.training import TrainSettings, train_cluster
    from maml_anomaly.data.panel import build_panel

    panel, _ = build_panel(history(4, 10), 0.0)
    rows = np.arange(panel.n_series)
    settings = TrainSettings(
        k_shot=8,
        inner_steps=1,
        meta_batch_size=4,
        iterations=5,
        n_val_tasks=8,
        n_calib_tasks=16,
        n_report_tasks=8,
        time_budget_s=60.0,
    )
    query_len = query_len_for_step(3600.0)
    spec = choose_lag_spec(24, panel.lengths[rows], settings.k_shot, query_len)
    calls, lines = [], []
    model = train_cluster(
        panel.values,
        panel.indptr,
        rows,
        spec,
        query_len,
        settings,
        log=lines.append,
        on_iteration=lambda done, total: calls.append((done, total)),
    )
    assert model is not None
    assert calls == [(i, 5) for i in range(1, 6)]
    assert len(lines) == 1 and lines[0].startswith("iteration 5: train ")  # one line per validation


def test_meta_train_shows_a_bar_named_after_the_cluster_and_logs_validations(tmp_path, monkeypatch):
    from maml_anomaly.commands import common

    model = trained_model(tmp_path / "model")
    inp = tmp_path / "input.parquet"
    history().to_parquet(inp, index=False)
    monkeypatch.setattr(common, "show_progress", lambda: True)  # CliRunner's stderr is not a terminal
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws the bar on a captured stream too
    args = [
        "meta-train",
        "-i",
        inp,
        "-m",
        model,
        "--overwrite",
        "--iterations",
        "3",
        "--k-shot",
        "8",
        "--inner-steps",
        "1",
        "--meta-batch-size",
        "4",
    ]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    names = json.loads((model / "current" / "detector.json").read_text())["clusters"]
    for name in names:
        assert re.search(rf"meta-training {re.escape(name)} \(\d+/{len(names)}\)", result.stderr), result.stderr[-2000:]
        assert f"cluster {name}: iteration 3: train " in result.stderr
    assert "ETA" in result.stderr


def test_meta_train_shows_no_bar_with_json(tmp_path, monkeypatch):
    model = trained_model(tmp_path / "model")
    inp = tmp_path / "input.parquet"
    history().to_parquet(inp, index=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    result = invoke(
        [
            "meta-train",
            "-i",
            inp,
            "-m",
            model,
            "--overwrite",
            "--iterations",
            "2",
            "--k-shot",
            "8",
            "--inner-steps",
            "1",
            "--meta-batch-size",
            "4",
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "meta-training" not in result.stderr and "iteration 2: train" in result.stderr


# -- the demo ---------------------------------------------------------------------------------------------


def test_demo_prints_top_events_and_writes_the_report(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text("[train]\niterations = 3\ntime_budget_s = 5.0\nmeta_batch_size = 4\n")
    result = invoke(["demo", "--workdir", tmp_path / "demo", "--config", config, "-q"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    head, rest = text.split("top 10 events by severity:\n", 1)
    assert re.match(r"^\d+ incidents?", head)  # the incidents line comes first
    events = pd.read_parquet(tmp_path / "demo" / "events.parquet")
    shown = rest.splitlines()[:10]
    for line in shown:  # series, cluster, start..end, direction, peak score
        uid, cluster = line.split()[:2]
        assert ((events["unique_id"] == uid) & (events["cluster"] == cluster)).any(), line
        assert re.search(r" (up|down|mixed) +peak score \d+\.\d$", line), line
    assert shown[0].split()[0] == events.sort_values(["severity", "peak_score"], ascending=False)["unique_id"].iloc[0]
    page = (tmp_path / "demo" / "report.html").read_text(encoding="utf-8")
    assert len(CHART.findall(page)) == 10 and f"report: {tmp_path / 'demo' / 'report.html'}" in text
    assert (tmp_path / "demo" / "incidents.parquet").exists()
