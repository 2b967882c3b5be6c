"""Which series forecast worse than the better simple reference, and of what kind (diagnostic).

Reads the rows a detection benchmark run scored (``<workdir>/<data folder>/scores_<name>.parquet``)
and the model it used (``model_last.txt``), and lists per series the MAE of ``y_hat``, of seasonal
naive and of the last value over the clean ``ok`` points (the benchmark's "worse than references"
column counts the series above 1.2x the better of the two), with its cluster, period and step.

    python -m maml_anomaly.benchmarks.worse_series --data sample --seed 0 --workdir /tmp/df-bench
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from maml_anomaly.benchmarks import detection
from maml_anomaly.core.baselines import seasonal_naive_reference
from maml_anomaly.core.evaluation import WORSE_THAN_REFERENCES, as_windows, window_of


def per_series(scores: pd.DataFrame, naive: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Per series: mean |error| of y_hat (``mae``), seasonal naive and last value over its clean
    ok points, their count, and ``ratio`` = mae / the better reference's."""
    rows = scores.merge(naive[["unique_id", "ds", "y_naive", "y_last"]], on=["unique_id", "ds"], how="left")
    clean = (rows["status"] == "ok").to_numpy() & (window_of(rows["unique_id"], rows["ds"], as_windows(labels)) < 0)
    rows = rows[clean]
    err = pd.DataFrame(
        {
            "unique_id": rows["unique_id"].to_numpy(),
            "mae": (rows["y"] - rows["y_hat"]).abs().to_numpy(),
            "seasonal_naive": (rows["y"] - rows["y_naive"]).abs().to_numpy(),
            "last_value": (rows["y"] - rows["y_last"]).abs().to_numpy(),
        }
    )
    out = err.groupby("unique_id").mean()
    out["points"] = err.groupby("unique_id").size()
    out["ratio"] = out["mae"] / np.minimum(out["seasonal_naive"], out["last_value"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(detection.LOADERS), default="sample")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (--data sample)")
    parser.add_argument("--workdir", type=Path, required=True, help="the detection benchmark's --workdir")
    parser.add_argument("--scores", default="maml", help="which scores file: maml, maml_0step, ...")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    data = detection.load_sample(seed=args.seed) if args.data == "sample" else detection.LOADERS[args.data]()
    folder = args.workdir / data.name
    model = Path((folder / "model_last.txt").read_text().strip()) / "current"
    clusters = pd.read_parquet(model / "clusters.parquet").set_index("unique_id")
    scores = detection.scored_period(pd.read_parquet(folder / f"scores_{args.scores}.parquet"), data.cutoff)
    naive = seasonal_naive_reference(data.values, clusters["period"], before=data.cutoff)
    table = per_series(scores, naive, data.labels).join(clusters[["cluster", "period"]])
    rows = data.values.sort_values(["unique_id", "ds"])
    table["step"] = rows.groupby("unique_id")["ds"].diff().groupby(rows["unique_id"]).median()
    worse = table["ratio"] > WORSE_THAN_REFERENCES
    print(table.sort_values("ratio", ascending=False).head(args.top).to_string())
    print(f"\n{int(worse.sum())} of {len(table)} series above {WORSE_THAN_REFERENCES}x the better reference")
    print(table.assign(worse=worse).groupby("step")["worse"].agg(["size", "sum"]).to_string())


if __name__ == "__main__":
    main()
