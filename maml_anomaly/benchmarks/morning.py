"""The morning view's cost at scale, and the report of a demo run.

    python -m maml_anomaly.benchmarks.morning --series 2000000 --events 100000 [--points 24] [--json]
    python -m maml_anomaly.benchmarks.morning --demo WORKDIR --output report.html [--screenshot report.png]
    python -m maml_anomaly.benchmarks.morning --page demo-run/report.html --screenshot docs/images/report-demo.png
    python -m maml_anomaly.benchmarks.morning --overhead --series 2000000 [--rounds 2] [--workdir DIR] [--nice 10]

Scale: a synthetic run of ``--series`` series in 40 clusters (hourly, 5-minute and daily steps)
with ``--events`` events (independent starts plus one outage of 3,000 series of one cluster at
03:00), timed stage by stage: find_incidents on the events, the counts per cluster
(``--points`` rows per series, as the integer codes the pipeline holds: cluster_table), and
render_report with its default top N (the charted series' rows only). Wall time of each stage
and the peak traced memory (tracemalloc: numpy and pandas buffers) are printed.

Overhead: what ``--incidents`` and ``--report`` add to daily-score's wall time on the same panel
in the same run: bench scale's synthetic daily panel (cached in ``--workdir``, with its model,
fit and meta-trained once by bench scale's steps), then daily-score without and with both options,
alternated ``--rounds`` times, each run in its own process. Printed per run: wall seconds of the
command, the driver's peak RSS and, with the options, the seconds the incidents and the report
took inside it; then the ratio of the medians.

Demo: the report of a demo workdir after a backtest of its evaluation period that keeps its
summary (docs/alerts.md)::

    maml-anomaly demo --workdir W
    cd W && maml-anomaly backtest --input data/values.parquet --model-dir model --output scores2.parquet \
        --events events.parquet --start 2024-03-18 --end 2024-03-31 --json --quiet > summary.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from maml_anomaly.core.events import build_events
from maml_anomaly.core.incidents import find_incidents, incidents_text, series_steps
from maml_anomaly.report import DEFAULT_TOP, cluster_counts, cluster_table, render_report, write_report

DAY = pd.Timestamp("2024-03-24")
STEPS = (pd.Timedelta(hours=1), pd.Timedelta(minutes=5), pd.Timedelta(days=1))


def synthetic_run(n_series: int, n_events: int, seed: int = 0) -> dict:
    """Events of one day of ``n_series`` series: independent starts and one outage of 3,000 series."""
    rng = np.random.default_rng(seed)
    cluster_of = rng.integers(0, 40, n_series)  # (S,)
    step_of = np.asarray(STEPS, dtype="timedelta64[ns]")[cluster_of % 3]  # each cluster has one step
    names = np.array([f"{('1h', '5min', '1D')[c % 3]}-c{c:02d}" for c in range(40)], dtype=object)
    who = rng.choice(n_series, n_events, replace=False)
    per_day = (np.timedelta64(1, "D") // step_of[who]).astype(np.int64)
    start = np.datetime64(DAY, "ns") + step_of[who] * (rng.random(n_events) * per_day).astype(np.int64)
    outage = np.flatnonzero(cluster_of == 0)[:3000]  # an hourly cluster
    who = np.r_[who, outage]
    start = np.r_[start, np.full(outage.size, np.datetime64(DAY + pd.Timedelta(hours=3), "ns"))]
    n = who.size
    down = np.r_[rng.random(n_events) < 0.5, np.ones(outage.size, bool)]
    ids = np.char.add("series-", np.char.zfill(who.astype(str), 7)).astype(object)
    events = pd.DataFrame(
        {
            "unique_id": ids,
            "start": start,
            "end": start + step_of[who] * (step_of[who] < np.timedelta64(1, "D")),
            "peak_ds": start,
            "peak_score": 3 + rng.exponential(1.0, n),
            "peak_p_value": 1e-3,
            "min_q_value": np.nan,
            "peak_y": 1.0,
            "peak_y_hat": 2.0,
            "direction": np.where(down, "down", "up").astype(object),
            "severity": 3 + rng.exponential(2.0, n),
            "n_points": 2,
            "cluster": names[cluster_of[who]],
            "ongoing": False,
        }
    )
    sizes = pd.Series(np.bincount(cluster_of, minlength=40), index=names)
    return {"events": events, "step": step_of[who], "cluster_sizes": sizes, "cluster_of": cluster_of, "names": names}


def synthetic_codes(run: dict, points: int) -> dict:
    """``points`` rows per series as the integer codes and flags the pipeline holds at its alerts step."""
    n = run["cluster_of"].size
    return {
        "cluster_code": np.repeat(run["cluster_of"], points),
        "names": run["names"],
        "series_code": np.repeat(np.arange(n), points),
        "ok": np.ones(n * points, bool),
        "flagged": np.zeros(n * points, bool),
    }


def charted_rows(events: pd.DataFrame, step: np.ndarray, days: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores and history of the top events' series only (what the caller hands the report)."""
    from maml_anomaly.core.events import top_events

    top = top_events(events, DEFAULT_TOP)
    rng = np.random.default_rng(1)
    sc, hist = [], []
    for uid in pd.unique(top["unique_id"]):  # DEFAULT_TOP series
        st = pd.Timedelta(step[np.flatnonzero(events["unique_id"].to_numpy() == uid)[0]])
        ds = pd.date_range(DAY - pd.Timedelta(days=days - 1), DAY + pd.Timedelta(days=1), freq=st, inclusive="left")
        y = 10 + np.sin(np.arange(ds.size) * 2 * np.pi * st / pd.Timedelta(days=1)) + 0.1 * rng.standard_normal(ds.size)
        ev = events[events["unique_id"] == uid]
        flag = ds.isin(ev["start"])
        y[flag] -= 3
        hist.append(pd.DataFrame({"unique_id": uid, "ds": ds, "y": y}))
        last = ds >= DAY
        sc.append(
            pd.DataFrame(
                {
                    "unique_id": uid,
                    "ds": ds[last],
                    "y": y[last],
                    "y_hat": 10.0,
                    "lower": 9.5,
                    "upper": 10.5,
                    "is_anomaly": flag[last],
                    "cluster": ev["cluster"].iloc[0],
                    "status": "ok",
                }
            )
        )
    return pd.concat(sc, ignore_index=True), pd.concat(hist, ignore_index=True)


def _timed(fn, *args, **kwargs):
    """(result, wall seconds, peak traced MiB): timed untraced, then run again under tracemalloc (it slows Python code)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    fn(*args, **kwargs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, round(seconds, 3), round(peak / 2**20, 1)


def scale(n_series: int, n_events: int, points: int) -> dict:
    run = synthetic_run(n_series, n_events)
    found, s_inc, m_inc = _timed(find_incidents, run["events"], run["step"], cluster_sizes=run["cluster_sizes"])
    events = run["events"]
    scores, hist = charted_rows(events, run["step"])
    result = {
        "series": n_series,
        "events": len(events),
        "incidents": len(found.incidents),
        "incidents_text": incidents_text(found.incidents, top=3),
        "find_incidents_s": s_inc,
        "find_incidents_peak_mib": m_inc,
    }
    if points:
        codes = synthetic_codes(run, points)
        clusters, s_cc, m_cc = _timed(cluster_table, **codes, events=events)
        del codes
        result.update(score_rows=n_series * points, cluster_table_s=s_cc, cluster_table_peak_mib=m_cc)
    else:
        clusters = None
    summary = {
        "points": n_series * max(points, 1),
        "series": n_series,
        "statuses": {"ok": n_series * max(points, 1)},
        "alerts": {"flagged": len(events), "events": len(events)},
        "threshold": 3.0,
    }
    page, s_rep, m_rep = _timed(
        render_report,
        summary=summary,
        scores=scores,
        history=hist,
        events=events,
        incidents=found.incidents,
        clusters=clusters,
    )
    result.update(report_s=s_rep, report_peak_mib=m_rep, report_bytes=len(page.encode()))
    return result


def demo_report(workdir: Path, output: Path, screenshot: Path | None) -> dict:
    """The report of a demo workdir: scores, events and summary of its backtest, values as history."""
    summary = json.loads((workdir / "summary.json").read_text())
    scores = pd.read_parquet(workdir / summary["output"])  # a relative --output is relative to the workdir
    events = pd.read_parquet(workdir / summary["events"]) if summary.get("events") else build_events(scores)
    history = pd.read_parquet(workdir / "data" / "values.parquet")
    clusters = cluster_counts(scores, events)
    sizes = clusters.set_index("cluster")["series"]
    found = find_incidents(
        events,
        series_steps(history["unique_id"], history["ds"]),
        cluster_sizes=sizes,
        span=(summary["first_day"], pd.Timestamp(summary["last_day"]) + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")),
    )
    page = render_report(
        summary=summary, scores=scores, history=history, events=events, incidents=found.incidents, clusters=clusters
    )
    write_report(page, output)
    if screenshot is not None:
        _screenshot(output, screenshot)
    return {
        "output": str(output),
        "incidents": incidents_text(found.incidents),
        "events": len(events),
        "bytes": len(page),
    }


def overhead(n_series: int, workdir: Path, rounds: int, nice: int) -> dict:
    """daily-score without and with --incidents/--report on one cached 2M panel, alternated."""
    import statistics

    from maml_anomaly.benchmarks.scale import SyntheticSpec, bench_config, cached_series, run_step
    from maml_anomaly.model_versions import serving_folder

    spec = SyntheticSpec(n_series, "D", 0)
    path, _ = cached_series(spec, workdir)
    model = workdir / "model"
    config = bench_config({}, "D")
    if not (serving_folder(model) / "detector.json").exists():  # fit and meta-train once, as bench scale does
        for step in ("fit-clusters", "meta-train"):
            done = run_step(step, {"input": str(path), "model_dir": str(model), "config": config}, nice=nice)
            if not done["ok"]:
                raise RuntimeError(f"{step} failed: {done['error']}")
    runs = []
    for _ in range(rounds):
        for with_view in (False, True):  # alternated: a load change hits both variants alike
            runs.append(_daily_score_process(path, model, workdir, config, with_view, nice))
            print(json.dumps(runs[-1]), flush=True)
    plain = statistics.median(r["seconds"] for r in runs if not r["with_view"])
    view = statistics.median(r["seconds"] for r in runs if r["with_view"])
    cpu_plain = statistics.median(r["cpu_seconds"] for r in runs if not r["with_view"])
    cpu_view = statistics.median(r["cpu_seconds"] for r in runs if r["with_view"])
    return {
        "series": n_series,
        "rounds": rounds,
        "runs": runs,
        "plain_median_s": plain,
        "view_median_s": view,
        "ratio": round(view / plain, 4),
        "cpu_ratio": round(cpu_view / cpu_plain, 4),
        "view_share_max": max(r["view_share"] for r in runs if r["with_view"]),
        "load_average": os.getloadavg(),
    }


def _daily_score_process(path: Path, model: Path, workdir: Path, config: dict, with_view: bool, nice: int) -> dict:
    args = {"input": str(path), "model_dir": str(model), "output": str(workdir / "scores.parquet"), "config": config}
    if with_view:
        args.update(incidents=str(workdir / "incidents.parquet"), report=str(workdir / "report.html"))
    cmd = [sys.executable, "-m", "maml_anomaly.benchmarks.morning", "--child", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=(lambda: os.nice(nice)) if nice else None)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"daily-score failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return {"with_view": with_view, **json.loads(lines[-1])}


def _child(args: dict) -> dict:
    """One daily-score in this process: wall seconds of the command and this process's peak RSS."""
    import resource

    from maml_anomaly.api import daily_score
    from maml_anomaly.config import Config

    config = Config.from_dict(args.pop("config"))
    started, cpu = time.perf_counter(), _cpu_seconds()
    result = daily_score(config=config, **{k: Path(v) for k, v in args.items()})
    view = result.get("morning_view") or {}
    seconds = time.perf_counter() - started
    view_seconds = view.get("incidents_seconds", 0.0) + view.get("report_seconds", 0.0)
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(_cpu_seconds() - cpu, 2),  # workers count once they exit
        "view_share": round(view_seconds / (seconds - view_seconds), 4),  # incidents + report over the rest, same run
        "driver_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "morning_view": result.get("morning_view"),
        "incidents": result["summary"].splitlines()[0],
        "events": result["alerts"]["events"],
    }


def _cpu_seconds() -> float:
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _screenshot(page: Path, png: Path, width: int = 1100) -> None:
    import os
    import shutil

    from playwright.sync_api import sync_playwright

    exe = os.environ.get("CHROMIUM") or shutil.which("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": width, "height": 1400})
        tab.goto(page.resolve().as_uri())
        tab.screenshot(path=str(png))  # the first screenful: summary, incidents, the first events
        browser.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=2_000_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--points", type=int, default=24, help="score rows per series for the counts per cluster (0: skip)")
    ap.add_argument("--demo", type=Path, help="a demo workdir: write its report instead")
    ap.add_argument("--output", type=Path, default=Path("report.html"))
    ap.add_argument("--screenshot", type=Path)
    ap.add_argument(
        "--page", type=Path, help="an HTML report to screenshot (with --screenshot), e.g. a demo's report.html"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--overhead", action="store_true", help="daily-score without and with --incidents/--report")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/maml-anomaly-bench-morning"))
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return
    if args.page:
        _screenshot(args.page, args.screenshot or Path("report.png"))
        return
    if args.overhead:
        out = overhead(args.series, args.workdir, args.rounds, args.nice)
    elif args.demo:
        out = demo_report(args.demo, args.output, args.screenshot)
    else:
        out = scale(args.series, args.events, args.points)
    print(json.dumps(out, indent=1, default=str) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
