"""Period-detection benchmark: accuracy on generated series with known periods, and speed.

    python -m maml_anomaly.benchmarks.periods [--n 400] [--seed 1] [--speed/--no-speed] [--json]
    python -m maml_anomaly.benchmarks.periods --nab ../shared/data/nab/values.parquet
    python -m maml_anomaly.benchmarks.periods --end-to-end 1000000 56 D   # fit-clusters from parquet

Accuracy: series of several steps and periods (hourly 24 / 168 / 12 / 48, half-hourly 48,
daily 7, 5-minute 288, monthly 12) and aperiodic ones (white noise, AR(1), random walk, trend,
level shifts, heavy tails, random bursts), with varied waveforms (sine with harmonics, square-ish, sawtooth-ish, spiky
profiles, random profiles), amplitudes, signal-to-noise ratios, lengths, phases, trends,
outliers, 5% missing points (NaN) and left padding for short series. A series is "clearly
periodic" when its seasonal standard deviation is at least 1.5 times the noise's (SNR drawn
log-uniformly in [0.5, 6]); the rate on the weaker periodic series (SNR 0.8 to 1.5) is reported too.

Speed: detect_periods on 1,000,000 daily series x 56 points and 100,000 hourly series x 672
points (synthetic, half of them periodic), with wall time, process CPU time (the honest figure
on a shared machine) and the process's peak RSS (the input matrix included).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np

from maml_anomaly.core.periodicity import detect_periods

HOUR, DAY = 3600.0, 86400.0
MONTH = 365.25 * DAY / 12
CLEAR_SNR = 1.5  # "clearly periodic": the seasonal part holds at least ~70% of the variance

# (name, step seconds, true period (0 = aperiodic), min length, max length)
KINDS: list[tuple[str, float, int, int, int]] = [
    ("hourly-24", HOUR, 24, 24 * 7, 24 * 35),
    ("hourly-168", HOUR, 168, 168 * 3, 168 * 6),
    ("hourly-12", HOUR, 12, 12 * 8, 24 * 28),
    ("hourly-48", HOUR, 48, 48 * 4, 24 * 28),
    ("halfhourly-48", 1800.0, 48, 48 * 7, 48 * 28),
    ("daily-7", DAY, 7, 7 * 6, 7 * 52),
    ("5min-288", 300.0, 288, 288 * 4, 288 * 14),
    ("monthly-12", MONTH, 12, 12 * 4, 12 * 12),
    ("hourly-none", HOUR, 0, 24 * 7, 24 * 35),
    ("daily-none", DAY, 0, 7 * 6, 7 * 52),
    ("5min-none", 300.0, 0, 288 * 4, 288 * 14),
]


@dataclass(frozen=True)
class Group:
    name: str
    step_seconds: float
    matrix: np.ndarray  # (S, T) NaN = missing, left-padded
    period: np.ndarray  # (S,) true period, 0 = aperiodic
    clear: np.ndarray  # (S,) bool: periodic with seasonal sd >= CLEAR_SNR x noise sd
    snr: np.ndarray  # (S,) seasonal sd / noise sd (0 for aperiodic series)


def _profile(rng: np.random.Generator, p: int, kind: str) -> np.ndarray:
    """One cycle of a zero-mean, unit-sd seasonal shape."""
    ph = (np.arange(p) / p + rng.uniform()) % 1.0  # (p,) phase in [0, 1)
    if kind == "sine":
        f = np.sin(2 * np.pi * ph)
        for h in range(2, 5):  # a few harmonics
            f = f + rng.uniform(0, 0.5) / h * np.sin(2 * np.pi * h * ph + rng.uniform(0, 6.3))
    elif kind == "square":
        f = np.tanh(rng.uniform(3, 20) * np.sin(2 * np.pi * ph))
    elif kind == "sawtooth":
        f = ph if rng.uniform() < 0.5 else 1.0 - ph
    elif kind == "spiky":  # a busy hour or two
        f = np.zeros(p)
        for _ in range(rng.integers(1, 3)):
            c, w = rng.uniform(), rng.uniform(0.02, 0.08)
            d = np.minimum(np.abs(ph - c), 1 - np.abs(ph - c))
            f = f + rng.uniform(0.5, 1.0) * np.exp(-0.5 * (d / w) ** 2)
    else:  # random smooth profile
        f = np.zeros(p)
        for h in range(1, 6):
            f = f + rng.normal() / h * np.cos(2 * np.pi * h * ph + rng.uniform(0, 6.3))
    f = f - f.mean()
    return f / max(f.std(), 1e-12)


def _seasonal(rng: np.random.Generator, p: int, step: float, T: int) -> np.ndarray:
    kind = rng.choice(["sine", "square", "sawtooth", "spiky", "random"])
    prof = _profile(rng, p, kind)
    s = np.tile(prof, T // p + 2)[:T]
    if p == 168 and step == HOUR:  # weekly: day shape x weekday level
        day = np.tile(_profile(rng, 24, kind), 8)[:168]
        weekday = np.repeat(np.r_[np.ones(5), rng.uniform(0.1, 0.6, 2)], 24)
        weekday = np.roll(weekday, rng.integers(0, 168))
        w = (rng.uniform(0.3, 1.0) * day + 1.5) * weekday + 0.3 * prof
        w = (w - w.mean()) / w.std()
        s = np.tile(w, T // 168 + 2)[:T]
    if rng.uniform() < 0.3:  # amplitude drifts a little
        s = s * np.linspace(1.0, rng.uniform(0.6, 1.5), T)
    return s


def _noise(rng: np.random.Generator, T: int) -> np.ndarray:
    u = rng.uniform()
    if u < 0.15:  # heavy tails, unit sd
        return rng.standard_t(5, size=T) / np.sqrt(5 / 3)
    if u < 0.5:
        return rng.normal(size=T)
    phi = rng.uniform(0.2, 0.8)  # AR(1), unit marginal sd
    e = rng.normal(size=T) * np.sqrt(1 - phi**2)
    out = np.empty(T)
    out[0] = rng.normal()
    for t in range(1, T):
        out[t] = phi * out[t - 1] + e[t]
    return out


def _aperiodic(rng: np.random.Generator, T: int) -> np.ndarray:
    kind = rng.integers(0, 6)
    if kind == 0:
        return rng.normal(size=T)
    if kind == 4:  # heavy tails
        return rng.standard_t(3, size=T)
    if kind == 5:  # random bursts
        y = rng.normal(size=T) * 0.3
        for start in np.flatnonzero(rng.uniform(size=T) < rng.uniform(0.002, 0.02)):
            y[start:] += rng.exponential(3.0) * np.exp(-np.arange(T - start) / rng.uniform(2, 30))
        return y
    if kind == 1:
        phi = rng.uniform(0.5, 0.95)
        e = rng.normal(size=T)
        out = np.empty(T)
        out[0] = e[0]
        for t in range(1, T):
            out[t] = phi * out[t - 1] + e[t]
        return out
    if kind == 2:
        return np.cumsum(rng.normal(size=T)) * rng.uniform(0.1, 0.5) + rng.normal(size=T)
    y = rng.normal(size=T)  # level shifts
    for _ in range(rng.integers(1, 4)):
        y[rng.integers(0, T) :] += rng.normal(0, 3)
    return y


def _trend(rng: np.random.Generator, T: int) -> np.ndarray:
    """No trend, a line, a bend, or a slow random walk (in units of the noise sd)."""
    u = np.linspace(0, 1, T)
    kind = rng.integers(0, 4)
    if kind == 1:
        return rng.uniform(-5, 5) * u
    if kind == 2:
        return rng.uniform(-5, 5) * (u - rng.uniform(0.2, 0.8)) ** 2 * 4
    if kind == 3:
        return np.cumsum(rng.normal(size=T)) * rng.uniform(0.02, 0.1)
    return np.zeros(T)


def make_group(
    name: str, step: float, period: int, t_min: int, t_max: int, n: int, rng: np.random.Generator, missing: float = 0.05
) -> Group:
    """n series of one kind in an (n, t_max) matrix, left-padded with NaN."""
    mat = np.full((n, t_max), np.nan)
    snr_all = np.zeros(n)
    for i in range(n):
        T = int(rng.integers(t_min, t_max + 1))
        if period:
            snr = float(np.exp(rng.uniform(np.log(0.5), np.log(6.0))))  # seasonal sd / noise sd
            y = snr * _seasonal(rng, period, step, T) + _noise(rng, T)
            snr_all[i] = snr
        else:
            y = _aperiodic(rng, T)
        scale = float(np.exp(rng.uniform(-3, 8)))
        y = y + _trend(rng, T)
        if rng.uniform() < 0.2:  # multiplicative season
            y = y * np.linspace(1.0, rng.uniform(1.0, 3.0), T)
        y = scale * y + rng.uniform(-100, 100) * scale
        out = rng.uniform(size=T) < rng.uniform(0, 0.02)  # outliers
        y[out] += scale * rng.choice([-1, 1], out.sum()) * rng.uniform(6, 15, out.sum())
        y[rng.uniform(size=T) < missing] = np.nan
        mat[i, t_max - T :] = y
    return Group(name, step, mat, np.full(n, period, np.int64), snr_all >= CLEAR_SNR, snr_all)


def make_groups(n_per_kind: int, seed: int) -> list[Group]:
    rng = np.random.default_rng(seed)
    return [make_group(k, s, p, lo, hi, n_per_kind, rng) for k, s, p, lo, hi in KINDS]


def accuracy(groups: list[Group]) -> dict:
    """Exact-period rate on clearly periodic series, false-period rate on aperiodic ones."""
    rows, n_clear, ok_clear, n_none, fp_none, n_weak, ok_weak = [], 0, 0, 0, 0, 0, 0
    for g in groups:
        got = detect_periods(g.matrix, g.step_seconds).period
        if g.period[0]:
            weak = (g.snr >= 0.8) & ~g.clear
            n_weak += int(weak.sum())
            ok_weak += int((got[weak] == g.period[weak]).sum())
            hit = got[g.clear] == g.period[g.clear]
            n_clear += hit.size
            ok_clear += int(hit.sum())
            wrong = np.unique(got[g.clear][~hit], return_counts=True)
            rows.append(
                {
                    "kind": g.name,
                    "clear": int(hit.size),
                    "exact": round(float(hit.mean()), 4),
                    "wrong": dict(zip(map(int, wrong[0]), map(int, wrong[1]))),
                }
            )
        else:
            fp = got > 0
            n_none += fp.size
            fp_none += int(fp.sum())
            rows.append({"kind": g.name, "aperiodic": int(fp.size), "false_period": round(float(fp.mean()), 4)})
    return {
        "exact_rate_clear": ok_clear / max(n_clear, 1),
        "n_clear": n_clear,
        "false_period_rate": fp_none / max(n_none, 1),
        "n_aperiodic": n_none,
        "exact_rate_weak": ok_weak / max(n_weak, 1),
        "n_weak": n_weak,
        "kinds": rows,
    }


def _fast_matrix(rng: np.random.Generator, S: int, T: int, period: int) -> np.ndarray:
    """Vectorised synthetic panel for timing: half periodic, 5% missing, left-padded rows."""
    t = np.arange(T)
    phase = rng.uniform(0, 2 * np.pi, (S, 1)).astype(np.float32)
    amp = (rng.uniform(0, 2, (S, 1)) * (rng.uniform(size=(S, 1)) < 0.5)).astype(np.float32)
    x = amp * np.sin(2 * np.pi * t / period + phase) + rng.standard_normal((S, T), np.float32)
    x = x.astype(np.float64)
    x[rng.uniform(size=(S, T)) < 0.05] = np.nan
    short = rng.uniform(size=S) < 0.1
    x[short, : T // 4] = np.nan
    return x


def speed(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for name, S, T, step, period in [("daily", 1_000_000, 56, DAY, 7), ("hourly", 100_000, 672, HOUR, 24)]:
        x = _fast_matrix(rng, S, T, period)
        t0, c0 = time.perf_counter(), time.process_time()
        res = detect_periods(x, step)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        del x
        out.append(
            {
                "case": name,
                "series": S,
                "length": T,
                "seconds": round(secs, 2),
                "cpu_seconds": round(cpu, 2),
                "series_per_s": round(S / secs),
                "periodic_share": round(float((res.period > 0).mean()), 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    return out


def nab_listing(path: str) -> list[dict]:
    """Periods found on a long-format parquet (e.g. NAB values.parquet), one dict per series.

    Research helper, not the product's reader: duplicate timestamps keep their first row, and
    each series is put on the grid of its most common step (points snapped to the nearest grid
    point; the first point wins a grid slot).
    """
    import pandas as pd

    df = pd.read_parquet(path, columns=["unique_id", "ds", "y"])
    df = df.drop_duplicates(["unique_id", "ds"], keep="first").sort_values(["unique_id", "ds"])
    series = []
    for uid, g in df.groupby("unique_id", sort=True):  # 58 series: fine here
        ds = g["ds"].to_numpy("datetime64[ns]").astype(np.int64)
        step = int(pd.Series(np.diff(ds)).mode().iloc[0])
        idx = np.rint((ds - ds[0]) / step).astype(np.int64)
        vals = np.full(idx[-1] + 1, np.nan)
        first = np.unique(idx, return_index=True)[1]
        vals[idx[first]] = g["y"].to_numpy(np.float64)[first]
        series.append((str(uid), step / 1e9, vals))
    out = []
    for step in sorted({s for _, s, _ in series}):
        group = [(u, v) for u, s, v in series if s == step]
        T = max(len(v) for _, v in group)
        mat = np.full((len(group), T), np.nan)
        for i, (_, v) in enumerate(group):
            mat[i, T - len(v) :] = v
        res = detect_periods(mat, step)
        for i, (u, v) in enumerate(group):
            out.append(
                {
                    "unique_id": u,
                    "step_s": step,
                    "points": len(v),
                    "missing": int(np.isnan(v).sum()),
                    "period": int(res.period[i]),
                    "strength": round(float(res.strength[i]), 3),
                    "second_period": int(res.second_period[i]),
                }
            )
    return sorted(out, key=lambda r: r["unique_id"])


def write_history(path: str, n_series: int, n_points: int, freq: str, seed: int = 0) -> int:
    """A long parquet for the end-to-end check: half the series seasonal (a week for daily data,
    a day otherwise), 2% missing rows, rows in series order; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    step = {"D": DAY, "h": HOUR}[freq]
    period = 7 if freq == "D" else 24
    rng = np.random.default_rng(seed)
    writer = None
    rows = 0
    ids = np.char.add("series_", np.char.zfill(np.arange(n_series).astype(str), 7))
    chunk = max(1, 5_000_000 // n_points)  # ~5 M rows at a time
    for lo in range(0, n_series, chunk):
        hi = min(n_series, lo + chunk)
        codes = np.repeat(np.arange(lo, hi), n_points)  # (N,)
        j = np.tile(np.arange(n_points), hi - lo)  # (N,) grid index
        amp = np.where(rng.uniform(size=hi - lo) < 0.5, rng.uniform(0.5, 3, hi - lo), 0.0)
        phase = rng.uniform(0, 2 * np.pi, hi - lo)
        y = amp[codes - lo] * np.sin(2 * np.pi * j / period + phase[codes - lo]) + rng.normal(size=j.size)
        keep = rng.uniform(size=j.size) > 0.02
        ds = np.datetime64("2024-01-01", "ns") + (j[keep] * step * 1e9).astype("m8[ns]")
        uid = pa.DictionaryArray.from_arrays(pa.array(codes[keep] - lo), pa.array(ids[lo:hi])).cast(pa.string())
        table = pa.table({"unique_id": uid, "ds": pa.array(ds), "y": pa.array(y[keep])})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=1_000_000)
        rows += table.num_rows
    writer.close()
    return rows


def end_to_end(n_series: int, n_points: int, freq: str) -> dict:
    """Time `maml-anomaly fit-clusters` (a child process) on a synthetic long parquet."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "history.parquet")
        rows = write_history(path, n_series, n_points, freq)
        cmd = [
            sys.executable,
            "-m",
            "maml_anomaly",
            "fit-clusters",
            "-i",
            path,
            "-m",
            os.path.join(tmp, "model"),
            "--json",
            "--quiet",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        secs = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads(out.stdout)
    return {
        "case": f"fit-clusters end to end, {freq}",
        "series": n_series,
        "points": n_points,
        "rows": rows,
        "seconds": round(secs, 1),
        "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "peak_rss_mb": round(after.ru_maxrss / 1024),
        "clusters": len(summary["clusters"]),
        "periodic": summary["periodic"],
        "compute_seconds": summary["seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m maml_anomaly.benchmarks.periods")
    ap.add_argument("--n", type=int, default=400, help="series per kind for the accuracy check")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--nab", metavar="PARQUET", help="only list the periods found in this file")
    ap.add_argument(
        "--end-to-end",
        nargs=3,
        metavar=("SERIES", "POINTS", "FREQ"),
        help="only time fit-clusters from parquet, e.g. 1000000 56 D or 100000 672 h",
    )
    args = ap.parse_args(argv)
    if args.end_to_end:
        n, t, freq = args.end_to_end
        print(json.dumps(end_to_end(int(n), int(t), freq)))
        return 0
    if args.nab:
        rows = nab_listing(args.nab)
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                print(
                    f"{r['unique_id']:62s} {r['step_s']:>7.0f}s {r['points']:>6d} "
                    f"{r['missing']:>5d} {r['period']:>5d} {r['strength']:>6.3f} {r['second_period']:>5d}"
                )
        return 0
    t0 = time.perf_counter()
    acc = accuracy(make_groups(args.n, args.seed))
    acc["seconds"] = round(time.perf_counter() - t0, 1)
    result = {"benchmark": "periods", "seed": args.seed, "accuracy": acc}
    if args.speed:
        result["speed"] = speed(args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"exact period, clearly periodic: {acc['exact_rate_clear']:.4f} of {acc['n_clear']}")
    print(f"exact period, weak (SNR 0.8-1.5): {acc['exact_rate_weak']:.4f} of {acc['n_weak']}")
    print(f"false period, aperiodic:        {acc['false_period_rate']:.4f} of {acc['n_aperiodic']}")
    for r in acc["kinds"]:
        print("  ", json.dumps(r))
    for r in result.get("speed", []):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
