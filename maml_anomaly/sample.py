"""Seeded generator of realistic labelled sample data.

`make_sample` builds a panel of series of several frequencies, periods and scales, with trends,
noise of several kinds, missing rows and NaNs, and injected anomalies that are labelled twice:

* windows (unique_id, start, end, kind), both ends inclusive like NAB's: one per anomaly event,
  the altered points plus `margin` grid steps on each side;
* points (unique_id, ds, kind): every altered timestamp.

Most anomalies lie in the last `eval_days` days (the evaluation period, clean history before it);
about a fifth of the series also carry one labelled anomaly earlier in their history, because real
history is never clean and a detector must not be thrown by it.

The generator loops over series (a few hundred): it is a fixture maker, not a hot path.
`python -m maml_anomaly.sample --out DIR` writes values.parquet, labels.parquet (windows),
points.parquet and series.parquet (the true period, step and scale of each series).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

ANOMALY_KINDS = ("spike", "dip", "level_shift", "outage", "flatline", "out_of_phase", "burst")

_HOUR = pd.Timedelta(hours=1)
_DAY = pd.Timedelta(days=1)
_MIN5 = pd.Timedelta(minutes=5)


@dataclass(frozen=True)
class _Family:
    """One kind of series: sampling step, true period (0 = none), history length in days."""

    name: str
    step: pd.Timedelta
    period: int
    days: tuple[int, int]  # (min, max) history length in days, both inclusive
    share: float  # fraction of the series


_FAMILIES = (
    _Family("hourly_daily", _HOUR, 24, (28, 56), 0.34),
    _Family("hourly_weekly", _HOUR, 168, (56, 70), 0.16),
    _Family("daily_weekly", _DAY, 7, (240, 420), 0.22),
    _Family("min5_daily", _MIN5, 288, (20, 22), 0.08),
    _Family("hourly_aperiodic", _HOUR, 0, (28, 42), 0.20),
)


def _daily_shape(u: np.ndarray, template: int, rng: np.random.Generator) -> np.ndarray:
    """A daily cycle in [-1, 1]-ish evaluated at day fractions u (0 = midnight)."""
    if template == 0:  # smooth: one main wave and a harmonic
        phi = rng.uniform(0, 2 * np.pi)
        s = np.sin(2 * np.pi * (u - 0.3)) + 0.3 * np.sin(4 * np.pi * u + phi)
    elif template == 1:  # business hours plateau
        a, b = rng.uniform(0.3, 0.4), rng.uniform(0.7, 0.8)
        s = 2.0 / (1 + np.exp(-(u - a) * 40)) - 2.0 / (1 + np.exp(-(u - b) * 40)) - 0.5
    elif template == 2:  # two peaks (morning, evening)
        s = np.exp(-((u - 0.35) ** 2) / 0.004) + 0.8 * np.exp(-((u - 0.8) ** 2) / 0.006) - 0.3
    else:  # night dip
        s = -1.5 * np.exp(-((u - 0.15) ** 2) / 0.01) + 0.3
    return s / np.max(np.abs(s))


def _clean_series(fam: _Family, n: int, t0: pd.Timestamp, rng: np.random.Generator):
    """Return (values (n,), noise_sd, amplitude, noise-free base (n,)) of one clean series."""
    level = 10.0 ** rng.uniform(-1, 5)  # scales from 0.1 to 1e5
    t = np.arange(n, dtype=float)  # (n,)
    steps_per_day = int(_DAY / fam.step)
    # day fraction and weekday of every grid point
    u = ((t0 - t0.normalize()) / _DAY + t / steps_per_day) % 1.0
    weekday = ((t0.day_of_week + np.floor((t0 - t0.normalize()) / _DAY + t / steps_per_day)) % 7).astype(int)
    if fam.period == 0:
        amp = 0.0
        seasonal = np.zeros(n)
    else:
        amp = level * rng.uniform(0.15, 0.5)
        if fam.period == 7:
            week = rng.uniform(-1, 1, 7)
            week[5:] = -rng.uniform(0.6, 1.0, 2)  # weekends low
            seasonal = week[weekday] / np.max(np.abs(week))
        else:
            seasonal = _daily_shape(u, int(rng.integers(4)), rng)
            if fam.period == 168:
                weekend = rng.uniform(0.2, 0.5)
                seasonal = np.where(weekday >= 5, weekend * seasonal - (1 - weekend), seasonal)
    # noise_sd: the one-step noise, what a good forecaster cannot predict; anomaly sizes use it.
    noise_sd = (amp if amp > 0 else level) * rng.uniform(0.02, 0.08)
    trend = level * rng.uniform(-0.15, 0.25) * t / n if rng.random() < 0.5 else 0.0
    base = level + amp * seasonal + trend
    # Persistent deviations from the profile (busy days, slow drifts): AR(1) with innovations of
    # part of noise_sd; the rest is white. Real metrics wander like this, which is what makes
    # last-cycle forecasts (seasonal naive) much noisier than one-step forecasts from recent lags.
    phi = rng.uniform(0.9, 0.99) if fam.period == 0 else rng.uniform(0.5, 0.95)
    share = rng.uniform(0.4, 0.9)
    kind = rng.random()
    if kind < 0.2:  # heavy tails, same sd
        shocks = rng.standard_t(6, (2, n)) / np.sqrt(6 / 4)
    else:
        shocks = rng.normal(0, 1, (2, n))
    wander = lfilter([1.0], [1.0, -phi], shocks[0] * noise_sd * np.sqrt(share))
    noise = wander + shocks[1] * noise_sd * np.sqrt(1 - share)
    if 0.2 <= kind < 0.4:  # multiplicative: deviations grow with the value
        noise = noise * np.clip(base / level, 0.2, None)
    return base + noise, noise_sd, amp, base


def _inject(
    kind: str, y: np.ndarray, base: np.ndarray, i: int, fam: _Family, sd: float, amp: float, rng: np.random.Generator
) -> int:
    """Alter y in place from index i; return the number of altered points."""
    p = max(fam.period, 24)
    k = rng.uniform(3.5, 8.0)  # magnitude in one-step noise standard deviations
    sign = 1.0 if rng.random() < 0.5 else -1.0
    length = {
        "spike": 1 if rng.random() < 0.8 else 2,
        "dip": int(rng.integers(1, 4)),
        "level_shift": int(rng.integers(max(3, p // 8), max(4, p // 2))),
        "outage": int(rng.integers(3, max(4, p // 4))),
        "flatline": int(rng.integers(max(4, p // 4), max(5, p // 2))),
        "out_of_phase": int(rng.integers(1, 4)),
        "burst": int(rng.integers(6, 18)),
    }[kind]
    length = min(length, len(y) - i)
    sl = slice(i, i + length)
    if kind == "spike":
        y[sl] += k * sd
    elif kind == "dip":
        y[sl] -= k * sd
    elif kind == "level_shift":
        y[sl] += sign * rng.uniform(3.5, 7.0) * sd
    elif kind == "outage":  # the metric drops to zero
        y[sl] = 0.0
    elif kind == "flatline":  # stuck at the last value while the cycle moves on
        y[sl] = y[i - 1]
    elif kind == "out_of_phase":  # a value normal for the opposite time of the cycle
        half = fam.period // 2
        y[sl] = base[i - half : i - half + length] + (y[sl] - base[sl])
    elif kind == "burst":  # a run of large, erratic deviations
        y[sl] += rng.normal(0, 1, length) * 4.0 * sd + sign * 2.0 * sd
        y[i + length // 2] += sign * k * sd
    return length


def _kinds_for(fam: _Family, amp: float, sd: float) -> list[str]:
    """Anomaly kinds that are visible on this series."""
    kinds = ["spike", "dip", "level_shift", "outage", "burst"]
    if fam.period and amp >= 4 * sd:
        kinds += ["out_of_phase", "flatline"]
    return kinds


def _place(y, base, lo, hi, fam, sd, amp, kinds, rng, taken):
    """Pick a kind and an onset in [lo, hi) that does not touch an earlier event; inject it."""
    for _ in range(50):
        kind = kinds[int(rng.integers(len(kinds)))]
        i = int(rng.integers(lo, hi))
        if kind == "out_of_phase":  # a time of day where the two phases differ clearly
            half = fam.period // 2
            day = np.arange(max(lo, i - fam.period // 2), min(hi, i + fam.period // 2))
            day = day[day - half >= 0]
            if day.size == 0:
                continue
            day = day[np.abs(base[day] - base[day - half]) >= 4 * sd]
            if day.size == 0:
                continue
            i = int(day[rng.integers(day.size)])
        if kind == "flatline" and i >= 1:  # only where the cycle will move away from the value
            ahead = base[i : i + max(fam.period // 4, 4)]
            if np.max(np.abs(ahead - y[i - 1])) < 6 * sd:
                continue
        before = y.copy()
        length = _inject(kind, y, base, i, fam, sd, amp, rng)
        end = min(i + length, len(y))
        if end > hi or any(not (end + 3 <= a or b + 3 <= i) for a, b in taken):
            y[:] = before
            continue
        taken.append((i, end))
        return kind, i, end
    return None


def make_sample(
    *,
    seed: int = 0,
    n_series: int = 200,
    end: str = "2024-03-31",
    eval_days: int = 14,
    margin: int = 1,
    missing_share: float = 0.5,
    return_info: bool = False,
):
    """Generate sample series with labelled anomalies.

    Returns (values[unique_id, ds, y], windows[unique_id, start, end, kind],
    points[unique_id, ds, kind]) and, with `return_info`, a fourth frame of per-series facts
    (unique_id, family, step, period, level, noise_sd, amplitude). Every series ends on the
    calendar day `end`; anomalies of the evaluation period lie in its last `eval_days` days.
    """
    rng = np.random.default_rng(seed)
    end_day = pd.Timestamp(end).normalize()
    shares = np.array([f.share for f in _FAMILIES])
    counts = np.floor(shares / shares.sum() * n_series).astype(int)
    counts[0] += n_series - counts.sum()
    values, windows, points, info = [], [], [], []
    sid = 0
    for fam, count in zip(_FAMILIES, counts):
        for _ in range(count):
            uid = f"s{sid:03d}"
            sid += 1
            days = int(rng.integers(fam.days[0], fam.days[1] + 1))
            last = end_day + _DAY - fam.step
            t0 = end_day - pd.Timedelta(days=days - 1)
            if fam.step < _DAY:  # start at a random hour of the first day
                t0 = t0 + pd.Timedelta(hours=int(rng.integers(0, 12)))
            n = int((last - t0) / fam.step) + 1
            ds = t0 + fam.step * np.arange(n)
            y, sd, amp, base = _clean_series(fam, n, t0, rng)
            eval_lo = int(np.searchsorted(ds, end_day - pd.Timedelta(days=eval_days - 1)))
            kinds = _kinds_for(fam, amp, sd)
            taken: list[tuple[int, int]] = []
            events = []
            n_eval = int(rng.choice([0, 1, 1, 2, 2, 3], p=[0.25, 0.2, 0.2, 0.15, 0.1, 0.1]))
            for _ in range(n_eval):
                events.append(_place(y, base, eval_lo, n - 1, fam, sd, amp, kinds, rng, taken))
            if rng.random() < 0.2:  # an anomaly earlier in the history
                hist_lo = max(int(0.4 * eval_lo), fam.period + 1)
                events.append(_place(y, base, hist_lo, eval_lo - 1, fam, sd, amp, kinds, rng, taken))
            altered = np.zeros(n, dtype=bool)
            for ev in filter(None, events):
                kind, i, j = ev
                altered[i:j] = True
                lo, hi = max(i - margin, 0), min(j - 1 + margin, n - 1)
                windows.append((uid, ds[lo], ds[hi], kind))
                points.extend((uid, d, kind) for d in ds[i:j])
            keep = np.ones(n, dtype=bool)
            if rng.random() < missing_share:  # a few NaNs, never on a labelled point
                nan_at = rng.random(n) < 0.003
                y[nan_at & ~altered] = np.nan
            if rng.random() < 0.1:  # a gap of missing rows
                g = int(rng.integers(fam.period + 1, max(eval_lo - 10, fam.period + 2)))
                gap = np.arange(g, min(g + int(rng.integers(1, 7)), n))
                keep[gap[~altered[gap]]] = False
            values.append(pd.DataFrame({"unique_id": uid, "ds": ds[keep], "y": _round(y[keep])}))
            info.append((uid, fam.name, fam.step, fam.period, float(np.nanmean(base)), sd, amp))
    values = pd.concat(values, ignore_index=True)
    values["unique_id"] = values["unique_id"].astype(str)
    values["ds"] = values["ds"].astype("datetime64[ns]")
    windows = pd.DataFrame(windows, columns=["unique_id", "start", "end", "kind"])
    points = pd.DataFrame(points, columns=["unique_id", "ds", "kind"])
    for frame, cols in ((windows, ["start", "end"]), (points, ["ds"])):
        for c in cols:
            frame[c] = frame[c].astype("datetime64[ns]")
        frame["unique_id"] = frame["unique_id"].astype(str)
        frame["kind"] = frame["kind"].astype(str)
    out = (
        values,
        windows.sort_values(["unique_id", "start"], ignore_index=True),
        points.sort_values(["unique_id", "ds"], ignore_index=True),
    )
    if return_info:
        info = pd.DataFrame(info, columns=["unique_id", "family", "step", "period", "level", "noise_sd", "amplitude"])
        info["unique_id"] = info["unique_id"].astype(str)
        return out + (info,)
    return out


def _round(y: np.ndarray, digits: int = 5) -> np.ndarray:
    """Round to `digits` significant digits: real metrics are not float noise, and it compresses."""
    mag = np.floor(np.log10(np.abs(np.where(np.isfinite(y) & (y != 0), y, 1.0))))
    scale = 10.0 ** (digits - 1 - mag)
    return np.round(y * scale) / scale


def write_sample(out: str | Path, *, seed: int = 0, n_series: int = 200) -> dict[str, Path]:
    """Write values, labels (windows), points and series parquet files to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    values, windows, points, info = make_sample(seed=seed, n_series=n_series, return_info=True)
    info = info.assign(step_s=info["step"].dt.total_seconds().astype("int64")).drop(columns="step")
    paths = {name: out / f"{name}.parquet" for name in ("values", "labels", "points", "series")}
    for name, frame in zip(paths, (values, windows, points, info)):
        tmp = paths[name].with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False, compression="zstd")
        tmp.replace(paths[name])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the labelled sample data set.")
    parser.add_argument("--out", default="sample_data", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-series", type=int, default=200)
    args = parser.parse_args(argv)
    paths = write_sample(args.out, seed=args.seed, n_series=args.n_series)
    for path in paths.values():
        print(f"{path}  {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
