"""Events against labelled windows: do backtest's incidents line up with the real anomalies?

    python -m maml_anomaly.benchmarks.events --scores SCORES --labels LABELS [--start DAY]

Re-applies the alert rules (alerts.apply_alerts, as daily-score and backtest do) to one scores
file at several thresholds, builds the events, and matches them to the labelled windows: a
window is hit when an event overlaps it; an event is on a window when it overlaps one.

* event recall = windows hit / windows with scored rows;
* event precision = events on a window / events.

The sample data's table in docs/alerts.md comes from the scores of the detection benchmark
(`python -m maml_anomaly.benchmarks.detection --data sample`, which writes
``<workdir>/sample_seed0/scores_maml.parquet``) with ``--start 2024-03-18``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from maml_anomaly.config import AlertConfig
from maml_anomaly.core.alerts import apply_alerts
from maml_anomaly.core.evaluation import as_windows

RULES = (  # (name, threshold, alert rules)
    ("threshold 3.0 (default)", 3.0, AlertConfig()),
    ("threshold 3.5", 3.5, AlertConfig()),
    ("threshold 4.0", 4.0, AlertConfig()),
    ("threshold 4.0, --min-consecutive 2", 4.0, AlertConfig(min_consecutive=2)),
    ("threshold 3.0, --fdr 0.01", 3.0, AlertConfig(fdr=0.01)),
)


def overlaps(events: pd.DataFrame, windows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(windows hit (W,) bool, events on a window (E,) bool); few windows per series, so a merge."""
    ev = events[["unique_id", "start", "end"]].reset_index(drop=True).assign(e=lambda d: d.index)
    win = windows[["unique_id", "start", "end"]].reset_index(drop=True).assign(w=lambda d: d.index)
    ev["unique_id"], win["unique_id"] = ev["unique_id"].astype(str), win["unique_id"].astype(str)
    pairs = ev.merge(win, on="unique_id", suffixes=("_e", "_w"))
    hit = pairs[(pairs["start_e"] <= pairs["end_w"]) & (pairs["end_e"] >= pairs["start_w"])]
    return np.isin(win["w"], hit["w"]), np.isin(ev["e"], hit["e"])


def events_table(scores: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per rule: flagged points, events, event recall and precision."""
    windows = as_windows(labels)
    scored_ids = set(scores["unique_id"].astype(str))
    windows = windows[windows["unique_id"].astype(str).isin(scored_ids)]
    first, last = scores["ds"].min(), scores["ds"].max()
    windows = windows[(windows["end"] >= first) & (windows["start"] <= last)]
    rows = []
    for name, threshold, rules in RULES:
        flagged = scores.assign(is_anomaly=(scores["status"] == "ok") & (scores["score"] >= threshold))
        alerts = apply_alerts(flagged, rules)
        hit, on_window = overlaps(alerts.events, windows)
        rows.append(
            {
                "rule": name,
                "flagged points": int(alerts.scores["is_anomaly"].sum()),
                "events": len(alerts.events),
                "event recall": hit.mean() if hit.size else np.nan,
                "event precision": on_window.mean() if on_window.size else np.nan,
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--start", default=None, help="only rows from this day on")
    args = parser.parse_args(argv)
    scores = pd.read_parquet(args.scores)
    if args.start:
        scores = scores[scores["ds"] >= pd.Timestamp(args.start)].reset_index(drop=True)
    table = events_table(scores, pd.read_parquet(args.labels))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
