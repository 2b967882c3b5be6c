"""The report in a real browser: headless Chromium (Debian's package) driven by Playwright.

Playwright's own browser downloads are not used: it launches the system binary through
``executable_path``. The test fails on a console error, an uncaught page error, a dialog (a
script ran), a failed request, any request that is not the file itself, a chart that did not
load, or a page wider than a phone's screen; it saves a screenshot of each viewport.
Skipped only when no chromium binary exists (CI installs one: .ci/run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from reliability_data import invoke  # noqa: E402
from report_data import EVIL_ID, scored_run  # noqa: E402

from maml_anomaly.report import render_report, write_report  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORTS = {"laptop": ({"width": 1280, "height": 800}, False), "phone": ({"width": 390, "height": 844}, True)}

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium; or set CHROMIUM=/path)"
)


@pytest.fixture(scope="module", params=["rendered", "command"])
def report(request, tmp_path_factory) -> tuple[Path, int]:
    """The report as render_report writes it, and as the ``report`` command writes it from files."""
    run = scored_run()
    folder = tmp_path_factory.mktemp("report")
    path = folder / "report.html"
    if request.param == "rendered":
        write_report(render_report(**run), path)
    else:
        run["scores"].to_parquet(folder / "scores.parquet", index=False)
        run["history"].to_parquet(folder / "input.parquet", index=False)
        result = invoke(["report", "-s", folder / "scores.parquet", "-i", folder / "input.parquet", "-o", path])
        assert result.exit_code == 0, result.output
    return path, min(10, len(run["events"]))


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("chromium is installed but the playwright package is not: pip install -e '.[dev]'")
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_report_opens_cleanly_with_every_chart(browser, report, viewport, tmp_path):
    path, n_charts = report
    size, mobile = VIEWPORTS[viewport]
    context = browser.new_context(viewport=size, is_mobile=mobile, has_touch=mobile)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.on("request", lambda r: None if r.url == path.as_uri() else problems.append(f"request: {r.url}"))
    page.goto(path.as_uri(), wait_until="load")
    charts = page.evaluate(
        "Array.from(document.querySelectorAll('img.chart')).map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])"
    )
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    page.screenshot(path=str(tmp_path / f"report-{viewport}.png"), full_page=True)
    assert problems == []
    assert len(charts) == n_charts
    assert all(done and natural > 0 and shown >= 300 for done, natural, shown in charts), (
        charts
    )  # loaded, and wide enough to read
    assert widths[0] <= widths[1], "the page is wider than the screen: something does not wrap"
    assert page.locator("script").count() == 0
    assert page.get_by_text(EVIL_ID).count() >= 1  # shown as text, not run
    assert (tmp_path / f"report-{viewport}.png").stat().st_size > 10_000
    context.close()
