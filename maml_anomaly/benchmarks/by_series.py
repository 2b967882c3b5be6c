"""Per-series view of a NAB detection run: which series take the common threshold's budget.

    python -m maml_anomaly.benchmarks.by_series --workdir DIR

Reads what ``benchmarks.detection --data nab --workdir DIR`` left in ``DIR/nab`` (the detector's
scores and model directory), scores seasonal naive with the same periods, and prints one row per
series: forecast MAE of both, the 99th percentile of clean scores, the share of clean points
above each method's pooled 1% FAR threshold, and the windows each method hits at it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from maml_anomaly.benchmarks import detection
from maml_anomaly.core.evaluation import as_windows, threshold_at_far, window_of


def _marked(scores: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    out = scores.assign(unique_id=scores["unique_id"].astype(str))
    out["window"] = window_of(out["unique_id"], out["ds"], windows)
    out["clean"] = (out["window"] < 0) & (out["status"] == "ok") & np.isfinite(out["score"])
    out["abs_error"] = (out["y"] - out["y_hat"]).abs()
    return out


def _per_series(scores: pd.DataFrame, far: float) -> pd.DataFrame:
    threshold = threshold_at_far(scores.loc[scores["clean"], "score"].to_numpy(), far)
    above = scores["score"] > threshold
    clean = scores[scores["clean"]].assign(above=above)
    hits = scores[(scores["window"] >= 0) & above].groupby("unique_id")["window"].nunique()
    return pd.DataFrame(
        {
            "mae": clean.groupby("unique_id")["abs_error"].mean(),
            "q99": clean.groupby("unique_id")["score"].quantile(0.99),
            "far": clean.groupby("unique_id")["above"].mean(),
            "hits": hits,
        }
    ).fillna({"hits": 0})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the detection benchmark's --workdir")
    parser.add_argument("--far", type=float, default=0.01)
    args = parser.parse_args(argv)
    data = detection.load_nab()
    root = args.workdir / data.name
    period = pd.read_parquet(root / "model" / "current" / "clusters.parquet").set_index("unique_id")["period"]
    windows = as_windows(data.labels)
    maml = _marked(detection.scored_period(pd.read_parquet(root / "scores_maml.parquet"), data.cutoff), windows)
    naive = _marked(
        detection.scored_period(detection.run_baseline("seasonal_naive", data, period), data.cutoff), windows
    )
    table = _per_series(maml, args.far).add_suffix("_maml").join(_per_series(naive, args.far).add_suffix("_naive"))
    table["windows"] = maml[maml["window"] >= 0].groupby("unique_id")["window"].nunique()
    pd.set_option("display.width", 250)
    print(table.fillna({"windows": 0}).round(3).sort_values("far_maml", ascending=False).to_string())
    print(
        f"windows hit at a {args.far:.0%} FAR: maml {int(table['hits_maml'].sum())}, "
        f"seasonal naive {int(table['hits_naive'].sum())}, of {int(table['windows'].sum())} with scored rows"
    )


if __name__ == "__main__":
    main()
