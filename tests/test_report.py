"""The HTML report: self-contained, escaped, one chart per top event, atomic write (no browser here)."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from report_data import EVIL_CLUSTER, scored_run  # noqa: E402

from maml_anomaly.core.incidents import empty_incidents  # noqa: E402
from maml_anomaly.report import cluster_counts, render_report, write_report  # noqa: E402

DATA_URI = re.compile(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run() -> dict:
    return scored_run()


@pytest.fixture(scope="module")
def page(run) -> str:
    return render_report(**run)


def test_every_string_from_the_data_is_escaped(page):
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert EVIL_CLUSTER not in page and "c&amp;&quot;&lt;b&gt;" in page


def test_nothing_is_loaded_from_anywhere(page):
    text = DATA_URI.sub('src=""', page)
    assert not re.search(r"https?:|//|@import|url\(", text.replace("http-equiv", ""))
    assert re.findall(r"(?:src|href)=", text) == ["src="] * len(DATA_URI.findall(page))
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert '<meta name=viewport content="width=device-width, initial-scale=1">' in page


def test_one_chart_per_top_event_with_band_forecast_and_flags(run, page):
    charts = DATA_URI.findall(page)
    assert len(charts) == min(10, len(run["events"])) and len(charts) > 3
    for chart in charts:
        svg = base64.b64decode(chart).decode()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        assert "<text" not in svg  # text drawn as paths: no font needed
    assert len(set(charts)) == len(charts)


def test_the_summary_incidents_and_clusters_are_shown(run, page):
    assert "576" in page and "expected false alarms" in page and "1.6" in page
    assert "Incidents (1)" in page and "8 series of 1h-p24 (50%) down at 2024-03-24 03:00..05:00" in page
    assert "Per cluster" in page and page.count("<tr><td>1h-p24</td>") == 1


def test_the_same_run_gives_the_same_bytes(run, page):
    assert render_report(**run) == page


def test_a_run_without_flags_or_incidents(run):
    quiet = run["scores"].assign(is_anomaly=False)
    page = render_report(
        summary={}, scores=quiet, history=run["history"], events=run["events"].iloc[:0], incidents=empty_incidents()
    )
    assert "No flagged points" in page and "No incident" in page and not DATA_URI.findall(page)
    assert "Not computed" in render_report(
        summary={}, scores=quiet, history=run["history"], events=run["events"].iloc[:0]
    )


def test_cluster_counts_match_a_groupby(run):
    scores, events = run["scores"], run["events"]
    got = cluster_counts(scores, events).set_index("cluster")
    want = scores.groupby("cluster").agg(
        series=("unique_id", "nunique"), points=("ds", "size"), flagged=("is_anomaly", "sum")
    )
    pd.testing.assert_frame_equal(got[["series", "points", "flagged"]], want, check_dtype=False, check_names=False)
    assert got["events"].to_dict() == events["cluster"].value_counts().to_dict()


def test_write_report_is_atomic_and_leaves_no_temporary_file(tmp_path, page):
    path = tmp_path / "out" / "report.html"
    write_report(page, path)
    write_report(page, path)  # replaces
    assert path.read_text(encoding="utf-8") == page
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_top_limits_the_charts(run):
    page = render_report(**run, top=2)
    assert len(DATA_URI.findall(page)) == 2 and "Top 2 events by severity (of" in page
    assert np.isfinite(run["events"]["severity"]).all()


def test_rows_without_a_cluster_are_counted_as_none(run):
    scores = run["scores"].copy()
    scores.loc[scores["unique_id"] == "s00", "cluster"] = None
    got = cluster_counts(scores).set_index("cluster")
    assert got.loc["(none)", "series"] == 1 and got.loc["(none)", "points"] == 24
    assert got["points"].sum() == len(scores) and got["series"].sum() == scores["unique_id"].nunique()
