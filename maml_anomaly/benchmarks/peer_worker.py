"""Run one peer detector on a panel handed over in parquet; executed by the peer's own python.

    <env>/bin/python peer_worker.py METHOD INPUT_DIR OUTPUT [--max-seconds S]

Imports numpy, pandas and the peer library only (never maml_anomaly: the peer environments pin
other versions). INPUT_DIR holds ``values.parquet`` (unique_id, t, ds, y, day: each series on its
regular grid, t the grid index, y NaN where missing) and ``series.parquet`` (unique_id, period,
cutoff_t: the first grid index after the history). OUTPUT gets (unique_id, t, y_hat, score,
flag) for every grid point from cutoff_t on of each series the peer finished: score is
continuous, flag the peer's own rule. A series the peer fails on is left out and named in the
sidecar OUTPUT.json, with the library's version and the seconds spent.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings

import numpy as np
import pandas as pd

Z99 = 2.5758293035489  # half-width of a 99% normal interval in standard deviations


def _filled(y: np.ndarray) -> np.ndarray:
    """Missing values linearly interpolated (edges held): the peers need gap-free input."""
    s = pd.Series(y)
    if s.notna().sum() == 0:
        return np.zeros(len(y))
    return s.interpolate(limit_direction="both").to_numpy(float)


def _interval_score(y, mean, lo, hi):
    """|y - mean| in units of the interval's half-width times z_0.995: > Z99 iff y is outside."""
    half = np.maximum((np.asarray(hi) - np.asarray(lo)) / 2.0, 1e-12)
    score = np.abs(y - mean) / half * Z99
    flag = (y < lo) | (y > hi)
    return score, flag


# -- ADTK ----------------------------------------------------------------------------------------


def run_adtk(g: pd.DataFrame, period: int, cutoff: int, step: pd.Timedelta):
    """SeasonalAD or PersistAD: both flag |residual| (|change| for PersistAD) above Q3 + c * IQR of
    the history's; the continuous score is that statistic, (|r| - Q3) / IQR."""
    from adtk.detector import PersistAD, SeasonalAD

    idx = pd.date_range(g["ds"].iloc[0], periods=len(g), freq=step)
    s = pd.Series(_filled(g["y"].to_numpy(float)), index=idx)
    seasonal = period > 1
    det = SeasonalAD(freq=int(period)) if seasonal else PersistAD()
    det.fit(s.iloc[:cutoff])
    inter = det.pipe_.detect(s, return_intermediate=True)
    absolute = (inter["abs_residual"] if seasonal else inter["diff_abs"]).to_numpy(float)
    signed = (inter["deseasonal_residual"] if seasonal else inter["diff"]).to_numpy(float)
    q1, q3 = pd.Series(absolute[:cutoff]).quantile([0.25, 0.75])  # what InterQuartileRangeAD fitted
    score = (absolute - q3) / max(q3 - q1, 1e-12)
    flag = det.detect(s).fillna(False).to_numpy(bool)  # ADTK's own rule
    return (s.to_numpy(float) - signed)[cutoff:], score[cutoff:], flag[cutoff:]


# -- statsforecast -------------------------------------------------------------------------------


def _sf_model(method: str, period: int):
    from statsforecast.models import MSTL, AutoETS

    if method == "sf_autoets":
        return AutoETS(season_length=max(int(period), 1))
    if period > 1:
        return MSTL(season_length=int(period))
    return AutoETS(model="ZZN")  # MSTL's own trend forecaster: what MSTL is without a season


def run_sf_insample(method: str, g: pd.DataFrame, period: int, cutoff: int):
    """Nixtla's recipe: fit on the whole series, 99% intervals on the fitted values."""
    y = g["y"].to_numpy(float)
    yf = _filled(y)
    out = _sf_model(method, period).forecast(y=yf, h=1, fitted=True, level=[99])
    mean, lo, hi = out["fitted"], out["fitted-lo-99"], out["fitted-hi-99"]
    score, flag = _interval_score(y, mean, lo, hi)
    return mean[cutoff:], score[cutoff:], flag[cutoff:]


class OutOfTime(Exception):
    """The time limit ran out inside a series: it counts as not reached."""


def run_sf_dayahead(g: pd.DataFrame, period: int, cutoff: int, deadline: float = float("inf")):
    """MSTL fitted on everything before each scored day, forecasting that day with 99% intervals."""
    y = g["y"].to_numpy(float)
    day = g["day"].to_numpy()
    n = len(y)
    y_hat, score, flag = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool)
    first = int(day[cutoff]) if cutoff < n else None
    if first is None:
        return y_hat[cutoff:], score[cutoff:], flag[cutoff:]
    starts = np.flatnonzero((day >= first) & np.r_[True, day[1:] != day[:-1]])  # first index of each day
    ends = np.r_[starts[1:], n]
    for a, b in zip(starts, ends):
        if time.perf_counter() > deadline:  # one long series refits once a day: hundreds of fits
            raise OutOfTime
        if a < 2:
            continue
        out = _sf_model("sf_mstl", period).forecast(y=_filled(y[:a]), h=int(b - a), level=[99])
        y_hat[a:b] = out["mean"]
        score[a:b], flag[a:b] = _interval_score(y[a:b], out["mean"], out["lo-99"], out["hi-99"])
    return y_hat[cutoff:], score[cutoff:], flag[cutoff:]


# -- Merlion -------------------------------------------------------------------------------------


def run_merlion(g: pd.DataFrame, cutoff: int, step: pd.Timedelta):
    from merlion.models.defaults import DefaultDetector, DefaultDetectorConfig
    from merlion.post_process.threshold import Threshold
    from merlion.utils import TimeSeries

    idx = pd.date_range(g["ds"].iloc[0], periods=len(g), freq=step)
    y = g["y"].to_numpy(float)
    s = pd.Series(_filled(y), index=idx, name="y")
    train, test = TimeSeries.from_pd(s.iloc[:cutoff]), TimeSeries.from_pd(s.iloc[cutoff:])
    model = DefaultDetector(DefaultDetectorConfig())
    model.train(train_data=train)
    raw = model.get_anomaly_score(test, time_series_prev=train)
    calibrated = raw
    for rule in getattr(model.post_rule, "post_rules", [model.post_rule]):  # all but the threshold: a continuous score
        if not isinstance(rule, Threshold):
            calibrated = rule(calibrated)
    labels = model.post_rule(raw)  # its own rule: calibration, then threshold with alarm suppression
    z = calibrated.to_pd().iloc[:, 0].reindex(s.index[cutoff:]).to_numpy(float)
    lab = labels.to_pd().iloc[:, 0].reindex(s.index[cutoff:]).fillna(0).to_numpy(float)
    return np.full(len(z), np.nan), np.abs(z), lab != 0


# -- driver --------------------------------------------------------------------------------------


def _version(method: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    lib = {"adtk": "adtk", "merlion": "salesforce-merlion"}.get(method, "statsforecast")
    try:
        found = version(lib)
    except PackageNotFoundError:
        found = "not installed"
    return f"{lib} {found}, pandas {pd.__version__}, numpy {np.__version__}"


def main(argv: list[str]) -> None:
    method, in_dir, output = argv[0], argv[1], argv[2]
    max_seconds = float(argv[argv.index("--max-seconds") + 1]) if "--max-seconds" in argv else float("inf")
    warnings.filterwarnings("ignore")
    values = pd.read_parquet(f"{in_dir}/values.parquet")
    series = pd.read_parquet(f"{in_dir}/series.parquet").set_index("unique_id")
    t0 = time.perf_counter()
    parts, failed, skipped = [], {}, []
    groups = dict(list(values.groupby("unique_id", sort=True)))
    order = np.random.default_rng(0).permutation(sorted(groups))  # a time limit leaves a random subset, not a family
    for uid in order:
        g = groups[uid]
        if time.perf_counter() - t0 > max_seconds:
            skipped.append(str(uid))
            continue
        g = g.sort_values("t")
        info = series.loc[uid]
        period, cutoff = int(info["period"]), int(info["cutoff_t"])
        step = pd.Timedelta(int(info["step_ns"]), "ns")
        if cutoff >= len(g):
            continue
        try:
            if method == "adtk":
                y_hat, score, flag = run_adtk(g, period, cutoff, step)
            elif method in ("sf_autoets", "sf_mstl"):
                y_hat, score, flag = run_sf_insample(method, g, period, cutoff)
            elif method == "sf_mstl_dayahead":
                y_hat, score, flag = run_sf_dayahead(g, period, cutoff, t0 + max_seconds)
            elif method == "merlion":
                y_hat, score, flag = run_merlion(g, cutoff, step)
            else:
                raise SystemExit(f"unknown peer method {method!r}")
        except OutOfTime:
            skipped.append(str(uid))
            continue
        except Exception as exc:  # one bad series does not stop the run; it is counted
            failed[str(uid)] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
            continue
        parts.append(
            pd.DataFrame(
                {
                    "unique_id": str(uid),
                    "t": g["t"].to_numpy()[cutoff:],
                    "y_hat": y_hat,
                    "score": score,
                    "flag": np.asarray(flag, bool),
                }
            )
        )
    seconds = time.perf_counter() - t0
    out = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(
            {
                "unique_id": pd.Series([], dtype=str),
                "t": pd.Series([], dtype="int64"),
                "y_hat": [],
                "score": [],
                "flag": pd.Series([], dtype=bool),
            }
        )
    )
    out.to_parquet(output, index=False)
    with open(f"{output}.json", "w") as fh:
        json.dump(
            {
                "method": method,
                "version": _version(method),
                "seconds": seconds,
                "failed": failed,
                "skipped_for_time": skipped,
            },
            fh,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
