"""``bench scale``: fit-clusters, meta-train and daily-score end to end on N synthetic series.

    maml-anomaly bench scale --series 2000000 --freq D [--json]

1. Generates N series (vectorised, written as parquet sorted by series in row groups; daily:
   35 days of history plus the scored day; hourly: the same days at 24 points a day) and caches
   the file in a work folder keyed by N, frequency and seed, so reruns skip generation.
2. Runs each step through the pipeline functions (parquet in, parquet out) in its own
   subprocess, so the peak resident memory (``ru_maxrss``) of each step is its own.
3. Runs the same one-day scoring job with StatsForecast's AutoETS (weekly season, 99% interval)
   on a sample of the same series, timed in the same run, and reports the per-series cost ratio.
   StatsForecast is the optional ``bench`` extra: without it the output says so.

The child processes start with the allocator settings of :data:`ALLOCATOR_ENV` (see
docs/performance.md: every large intermediate is otherwise freshly mapped and page-faulted).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HISTORY_DAYS = 35  # days of history before the scored day
START = np.datetime64("2026-01-05", "ns")  # a Monday: the first day of every synthetic series
SERIES_PER_ROW_GROUP = 50_000
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "2147483647", "MALLOC_TRIM_THRESHOLD_": "2147483647"}
STEPS = ("fit-clusters", "meta-train", "daily-score")


# -- synthetic data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`write_series` writes: N series of ``points_per_day * (HISTORY_DAYS + 1)`` points."""

    n_series: int
    freq: str = "D"  # D (daily) or h (hourly)
    seed: int = 0

    @property
    def points_per_day(self) -> int:
        return 1 if self.freq == "D" else 24

    @property
    def n_points(self) -> int:
        return self.points_per_day * (HISTORY_DAYS + 1)

    @property
    def step(self) -> np.timedelta64:
        return np.timedelta64(1, "D" if self.freq == "D" else "h").astype("m8[ns]")

    @property
    def scored_day(self) -> np.datetime64:
        return START + np.timedelta64(HISTORY_DAYS, "D")

    @property
    def file_name(self) -> str:
        return f"scale-{self.freq}-{self.n_series}-seed{self.seed}.parquet"


def _chunk_values(spec: SyntheticSpec, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """(B, T) float64 values of series lo..hi: level + weekly/daily cycle + trend + noise, some spikes.

    A fifth of the series have no cycle (a random walk); 1% of series get a 6-sd spike on the
    scored day; 1% of values are missing (NaN).
    """
    b, t = hi - lo, spec.n_points
    j = np.arange(t)  # (T,)
    ppd = spec.points_per_day
    period = 7 * ppd if spec.freq == "D" else ppd  # weekly for daily data, daily for hourly data
    level = 10.0 ** rng.uniform(0, 3, (b, 1))  # (B, 1) scales from 1 to 1000
    noise_sd = level * rng.uniform(0.02, 0.1, (b, 1))
    amp = level * rng.uniform(0.1, 0.5, (b, 1))
    phase = rng.integers(0, period, (b, 1))
    shape = rng.integers(0, 2, (b, 1))  # 0: sine, 1: a dip on 2 of 7 parts of the cycle
    x = 2 * np.pi * (j[None, :] + phase) / period  # (B, T)
    dip = np.where(((j[None, :] + phase) % period) < 2 * period // 7, -1.0, 0.4)
    season = amp * np.where(shape == 0, np.sin(x), dip)
    trend = level * rng.normal(0, 0.002, (b, 1)) * j[None, :]
    y = level + season + trend + noise_sd * rng.standard_normal((b, t))
    walk = rng.random(b) < 0.2  # aperiodic series
    y[walk] = level[walk] + np.cumsum(noise_sd[walk] * rng.standard_normal((int(walk.sum()), t)), axis=1)
    spike = rng.random(b) < 0.01
    pos = t - ppd + rng.integers(0, ppd, b)  # a point of the scored day
    y[spike, pos[spike]] += 6 * noise_sd[spike, 0] * rng.choice([-1.0, 1.0], int(spike.sum()))
    y[rng.random((b, t)) < 0.01] = np.nan
    return y


def write_series(spec: SyntheticSpec, path: Path) -> Path:
    """Write the synthetic long parquet (unique_id, ds, y), sorted by series, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    t = spec.n_points
    ds = START + np.arange(t) * spec.step  # (T,)
    schema = pa.schema([("unique_id", pa.string()), ("ds", pa.timestamp("ns")), ("y", pa.float64())])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for lo in range(0, spec.n_series, SERIES_PER_ROW_GROUP):
                hi = min(spec.n_series, lo + SERIES_PER_ROW_GROUP)
                ids = pa.array(np.char.add("s", np.char.zfill(np.arange(lo, hi).astype(str), 8)))  # (B,)
                codes = pa.array(np.repeat(np.arange(hi - lo, dtype=np.int32), t))  # (B * T,)
                table = pa.table(
                    {
                        "unique_id": pa.DictionaryArray.from_arrays(codes, ids).cast(pa.string()),
                        "ds": pa.array(np.tile(ds, hi - lo)),
                        "y": pa.array(_chunk_values(spec, lo, hi, rng).reshape(-1)),
                    },
                    schema=schema,
                )
                writer.write_table(table, row_group_size=table.num_rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def cached_series(spec: SyntheticSpec, workdir: Path) -> tuple[Path, float | None]:
    """The synthetic file for ``spec`` in ``workdir`` (written when missing) and the seconds spent writing."""
    path = workdir / spec.file_name
    if path.exists():
        return path, None
    started = time.perf_counter()
    write_series(spec, path)
    return path, time.perf_counter() - started


def default_workdir() -> Path:
    return Path(os.environ.get("MAML_ANOMALY_BENCH_DIR", Path(tempfile.gettempdir()) / "maml-anomaly-bench"))
