"""Which per-series scale ranks labelled events above clean points at a fixed FAR (diagnostic).

Reads the rows a detection benchmark run scored (``<workdir>/<data>/scores_maml.parquet``) and
ranks two residuals, the last value's (y minus the previous value) and the detector's
(y - y_hat), each divided by a per-(series, day) scale that sees the whole series, only the days
before the scored one (a day-ahead job), or the days through it (a daily job, which scores a
complete day). No calibration: what each scale alone does to the ranking across series.

    python -m maml_anomaly.benchmarks.day_scales --data msl --workdir /tmp/ds-bench
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from maml_anomaly.benchmarks import detection
from maml_anomaly.core.evaluation import evaluate_scores

TINY = 1e-12  # added to every scale: a move where the scale is 0 ranks first instead of being dropped


def daily_moments(ids: pd.Series, ds: pd.Series, x: pd.Series) -> pd.DataFrame:
    """Per (series, day): count, sum, sum of squares of x, and the same summed over the days
    before it (``*_before``) and over the whole series (``*_all``); NaN x are left out."""
    frame = pd.DataFrame({"uid": ids.to_numpy(), "day": ds.dt.floor("D").to_numpy(), "x": x.to_numpy()})
    frame = frame[np.isfinite(frame["x"])].assign(x2=lambda f: f["x"] ** 2)
    days = frame.groupby(["uid", "day"]).agg(n=("x", "size"), s=("x", "sum"), s2=("x2", "sum")).reset_index()
    by_series = days.groupby("uid")
    for col in ("n", "s", "s2"):
        days[f"{col}_before"] = by_series[col].cumsum() - days[col]
        days[f"{col}_all"] = by_series[col].transform("sum")
    return days


def _sd(n: pd.Series, s: pd.Series, s2: pd.Series) -> pd.Series:
    return np.sqrt(np.maximum(s2 / n - (s / n) ** 2, 0.0))


def scales_of(days: pd.DataFrame) -> pd.DataFrame:
    """Per (series, day) the candidate scales of a residual x whose daily moments are ``days``
    (for the |residual| the sums are of |x|: mean |x| = s / n)."""
    thru = {c: days[f"{c}_before"] + days[c] for c in ("n", "s", "s2")}
    return pd.DataFrame(
        {
            "uid": days["uid"],
            "day": days["day"],
            "sd whole series": _sd(days["n_all"], days["s_all"], days["s2_all"]),
            "sd before the day": _sd(days["n_before"], days["s_before"], days["s2_before"]),
            "sd through the day": _sd(thru["n"], thru["s"], thru["s2"]),
            "mean before the day": days["s_before"] / days["n_before"],
            "mean through the day": thru["s"] / thru["n"],
            "mean of the day": days["s"] / days["n"],
            "mean whole series": days["s_all"] / days["n_all"],
        }
    )


def recall_at_far(scores: pd.DataFrame, value: np.ndarray, labels: pd.DataFrame, far: float) -> float:
    scored = scores.assign(score=value)
    scored.loc[~np.isfinite(value), "status"] = "not_scaled"
    return evaluate_scores(scored, labels, far=far)["at_far"]["event_recall"]


def rankings(data: detection.Dataset, scores: pd.DataFrame, values: pd.DataFrame, far: float) -> dict[str, float]:
    """Recall at ``far`` of each residual / scale pair on the rows of ``scores``."""
    values = values.sort_values(["unique_id", "ds"])
    diff = values.groupby("unique_id")["y"].diff()
    key = ["uid", "day"]
    rows = pd.DataFrame({"uid": scores["unique_id"], "day": scores["ds"].dt.floor("D")})
    last = scores.merge(values.assign(d=diff)[["unique_id", "ds", "d"]], on=["unique_id", "ds"], how="left")["d"]
    last_scales = rows.merge(scales_of(daily_moments(values["unique_id"], values["ds"], diff)), on=key, how="left")
    abs_last = rows.merge(scales_of(daily_moments(values["unique_id"], values["ds"], diff.abs())), on=key, how="left")
    ok = scores["status"] == "ok"
    resid = (scores["y"] - scores["y_hat"]).abs().where(ok)
    own = rows.merge(scales_of(daily_moments(scores["unique_id"], scores["ds"], resid)), on=key, how="left")
    median = resid.groupby([rows["uid"], rows["day"]]).transform("median")
    out = {"detector as scored": recall_at_far(scores, scores["score"].to_numpy(float), data.labels, far)}
    pairs = [
        ("last value / sd of diffs, whole series", last.abs(), last_scales["sd whole series"]),
        ("last value / sd of diffs before the day", last.abs(), last_scales["sd before the day"]),
        ("last value / mean |diff| before the day", last.abs(), abs_last["mean before the day"]),
        ("last value / sd of diffs through the day", last.abs(), last_scales["sd through the day"]),
        ("detector / mean |r| of all scored days", resid, own["mean whole series"]),
        ("detector / mean |r| of scored days through the day", resid, own["mean through the day"]),
        ("detector / mean |r| of scored days before the day", resid, own["mean before the day"]),
        ("detector / mean |r| of the day", resid, own["mean of the day"]),
        ("detector / median |r| of the day", resid, median),
    ]
    for name, num, den in pairs:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = num.to_numpy(float) / (den.to_numpy(float) + TINY)
        out[name] = recall_at_far(scores, value, data.labels, far)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["msl", "nab"], default="msl")
    parser.add_argument("--workdir", type=Path, required=True, help="the detection benchmark's --workdir")
    parser.add_argument("--far", type=float, default=0.01)
    args = parser.parse_args()
    data = detection.LOADERS[args.data]()
    folder = args.workdir / args.data
    scores = detection.scored_period(pd.read_parquet(folder / "scores_maml.parquet"), data.cutoff)
    for name, recall in rankings(data, scores, pd.read_parquet(folder / "values.parquet"), args.far).items():
        print(f"| {name} | {recall:.3f} |")


if __name__ == "__main__":
    main()
