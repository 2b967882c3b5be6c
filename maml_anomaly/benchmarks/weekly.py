"""Generated check: hourly series with a weekday / weekend step, stuck values injected.

    python -m maml_anomaly.benchmarks.weekly [--series 150] [--weeks 8] [--seed 0] [--config C] [--workdir D]

Each series: a daily cycle (random phase, amplitude a, a second harmonic), weekends lower by 0.5
to 1.5 a with a flatter cycle, Gaussian noise of 0.2 to 0.4 a, level and scale drawn over five
decades. Meta-train sees every week but the last; backtest scores the last week (7 days, with a
Saturday and a Monday). A third of the series get an 8-hour stuck value (the value at its first
hour held) somewhere in that week, labelled. Measured: fit-clusters' periods, false alarms on
clean points (overall, and on the weekend transitions: Saturday 00:00-05:00 and Monday
00:00-05:00), stuck runs found at the default threshold, event recall at a 1% false-alarm rate.
Runs the installed (or PYTHONPATH's) maml-anomaly CLI in child processes, so an older tree can
be measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

START = pd.Timestamp("2024-01-01")  # a Monday


def make_data(n_series: int, weeks: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values (unique_id, ds, y), stuck windows (unique_id, start, end))."""
    rng = np.random.default_rng(seed)
    T = weeks * 168
    t = np.arange(T)
    hour, dow = t % 24, (t // 24) % 7
    weekend = (dow >= 5).astype(float)
    frames, labels = [], []
    for i in range(n_series):
        a = 1.0
        phase = rng.uniform(0, 24)
        cycle = np.sin(2 * np.pi * (hour - phase) / 24) + 0.3 * np.sin(
            4 * np.pi * (hour - phase) / 24 + rng.uniform(0, 6)
        )
        flatten = 1.0 - rng.uniform(0.2, 0.6) * weekend
        y = a * cycle * flatten - rng.uniform(0.5, 1.5) * a * weekend + rng.normal(0, rng.uniform(0.2, 0.4) * a, T)
        scale, level = 10 ** rng.uniform(-1, 4), rng.uniform(3, 10)
        y = scale * (level + y)
        uid = f"s{i:04d}"
        if i % 3 == 0:  # an 8-hour stuck value in the last week
            s0 = T - 168 + int(rng.integers(0, 168 - 8))
            y[s0 : s0 + 8] = y[s0]
            labels.append((uid, START + pd.Timedelta(hours=s0 + 1), START + pd.Timedelta(hours=s0 + 7)))
        frames.append(pd.DataFrame({"unique_id": uid, "ds": START + pd.to_timedelta(t, unit="h"), "y": y}))
    return pd.concat(frames, ignore_index=True), pd.DataFrame(labels, columns=["unique_id", "start", "end"])


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "maml_anomaly", *args, "--quiet"], check=True, env=os.environ.copy())


def run(n_series: int, weeks: int, seed: int, config: Path | None, workdir: Path) -> dict:
    from maml_anomaly.core.evaluation import evaluate_scores

    workdir.mkdir(parents=True, exist_ok=True)
    values, labels = make_data(n_series, weeks, seed)
    cut = START + pd.Timedelta(weeks=weeks - 1)
    values.to_parquet(workdir / "values.parquet")
    values[values["ds"] < cut].to_parquet(workdir / "train.parquet")
    md, out = workdir / "model", workdir / "scores.parquet"
    cfg = ["--config", str(config)] if config else []
    _cli("fit-clusters", "--input", str(workdir / "train.parquet"), "--model-dir", str(md), "--overwrite", *cfg)
    periods = pd.read_parquet(md / "pending" / "clusters.parquet")
    _cli("meta-train", "--input", str(workdir / "train.parquet"), "--model-dir", str(md), *cfg)
    _cli(
        "backtest",
        "--input",
        str(workdir / "values.parquet"),
        "--model-dir",
        str(md),
        "--output",
        str(out),
        "--start",
        str(cut.date()),
        "--max-failed-fraction",
        "1",  # a benchmark reports statuses, never fails on them
        *cfg,
    )
    scores = pd.read_parquet(out)
    summary = evaluate_scores(scores, labels, far=0.01)
    ok = scores["status"].eq("ok").to_numpy()
    ds = pd.to_datetime(scores["ds"])
    inside = np.zeros(len(scores), bool)
    for r in labels.itertuples():
        inside |= (
            scores["unique_id"].eq(r.unique_id) & (ds >= r.start - pd.Timedelta(hours=1)) & (ds <= r.end)
        ).to_numpy()
    clean = ok & ~inside
    transition = ((ds.dt.day_of_week == 5) | (ds.dt.day_of_week == 0)).to_numpy() & (ds.dt.hour < 6).to_numpy()
    flag = scores["is_anomaly"].fillna(False).to_numpy(bool)
    found = [
        bool((scores["unique_id"].eq(r.unique_id) & (ds >= r.start) & (ds <= r.end)).to_numpy()[flag].any())
        for r in labels.itertuples()
    ]
    return {
        "series": n_series,
        "weeks": weeks,
        "seed": seed,
        "periods": {str(k): int(v) for k, v in periods["period"].value_counts().items()},
        "second_periods": {str(k): int(v) for k, v in periods["second_period"].value_counts().items()},
        "clean_flag_rate": float(flag[clean].mean()),
        "transition_flag_rate": float(flag[clean & transition].mean()),
        "other_flag_rate": float(flag[clean & ~transition].mean()),
        "stuck_runs_found": float(np.mean(found)) if found else None,
        "event_recall_at_far_1pct": summary["at_far"]["event_recall"],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=150)
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/maml-weekly"))
    args = ap.parse_args(argv)
    print(json.dumps(run(args.series, args.weeks, args.seed, args.config, args.workdir), indent=2))


if __name__ == "__main__":
    main()
