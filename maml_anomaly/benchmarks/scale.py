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


# -- running one step in its own process --------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc; 0 elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


def run_step(step: str, args: dict[str, Any], *, nice: int = 0, sample_s: float = 0.25) -> dict[str, Any]:
    """Run one step in a fresh ``python -m maml_anomaly.benchmarks.scale`` process.

    Returns the child's own figures (wall and CPU seconds, its summary) plus ``peak_rss_bytes``:
    the largest resident memory of the child and its worker processes together, sampled every
    ``sample_s`` seconds (and never below the child's own ``ru_maxrss``).
    """
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-m", "maml_anomaly.benchmarks.scale", "--step", step, "--args", json.dumps(args)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )
    peak = 0
    import threading

    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            stop.wait(sample_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - started
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(err.strip().splitlines()[-15:])
        return {
            "step": step,
            "ok": False,
            "error": f"exit {proc.returncode}: {tail}",
            "process_seconds": round(wall, 2),
        }
    result = json.loads(lines[-1])
    result.update(step=step, ok=True, process_seconds=round(wall, 2))
    result["peak_rss_bytes"] = max(peak, result.get("max_rss_self_bytes", 0), result.get("max_rss_children_bytes", 0))
    return result


def _child(step: str, args: dict[str, Any]) -> dict[str, Any]:
    """The body of one step process: call the pipeline function (or AutoETS) and time it."""
    import logging

    from maml_anomaly import api as pipeline
    from maml_anomaly.config import Config

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    config = Config.from_dict(args.get("config", {}))
    started, cpu = time.perf_counter(), _cpu_seconds()
    if step == "fit-clusters":
        result = pipeline.fit_clusters(
            config=config, input=Path(args["input"]), model_dir=Path(args["model_dir"]), overwrite=True
        )
    elif step == "meta-train":
        result = pipeline.meta_train(
            config=config,
            input=Path(args["input"]),
            model_dir=Path(args["model_dir"]),
            overwrite=True,
            allow_partial=True,
        )
    elif step in ("daily-score", "daily-score-ray"):
        result = pipeline.daily_score(
            config=config,
            input=Path(args["input"]),
            model_dir=Path(args["model_dir"]),
            output=Path(args["output"]),
            engine="ray" if step == "daily-score-ray" else "local",
        )
    elif step == "autoets":
        result = _autoets(args)
    else:
        raise ValueError(f"unknown step {step!r}")
    usage_self, usage_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(_cpu_seconds() - cpu, 2),
        "max_rss_self_bytes": usage_self.ru_maxrss * 1024,
        "max_rss_children_bytes": usage_children.ru_maxrss * 1024,
        "summary": result.get("summary", ""),
        "result": {
            k: v
            for k, v in result.items()
            if k
            in (
                "series",
                "points",
                "anomalies",
                "statuses",
                "trained",
                "clusters",
                "sample",
                "flagged",
                "model_seconds",
                "available",
            )
        },
    }


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (workers count once they exit)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# -- the same job by StatsForecast AutoETS -------------------------------------------------------------


def _autoets(args: dict[str, Any]) -> dict[str, Any]:
    """Forecast the scored day of a sample of the series with AutoETS (99% interval), flag outside it."""
    try:
        from statsforecast import StatsForecast
        from statsforecast.models import AutoETS
    except ImportError:
        return {"available": False, "summary": "StatsForecast is not installed (pip install 'maml-anomaly[bench]')"}
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    spec = SyntheticSpec(args["n_series"], args["freq"], args["seed"])
    n = min(args["sample"], spec.n_series)
    picked = np.unique(np.linspace(0, spec.n_series - 1, n).round().astype(np.int64))  # spread over the file
    ids = np.char.add("s", np.char.zfill(picked.astype(str), 8)).tolist()
    frame = pads.dataset(args["input"]).to_table(filter=pc.field("unique_id").isin(ids)).to_pandas()
    day = pd.Timestamp(spec.scored_day)
    history, today = frame[frame["ds"] < day], frame[frame["ds"] >= day]
    history = history.dropna(subset=["y"])  # AutoETS takes no missing values
    season = 7 if spec.freq == "D" else 24  # weekly for daily data; daily for hourly (ETS caps seasons at 24)
    started = time.perf_counter()
    sf = StatsForecast(
        models=[AutoETS(season_length=season)], freq="D" if spec.freq == "D" else "h", n_jobs=args.get("n_jobs", 1)
    )
    fc = sf.forecast(df=history, h=spec.points_per_day, level=[99])
    model_seconds = time.perf_counter() - started
    merged = today.merge(fc, on=["unique_id", "ds"], how="left")
    flagged = int(((merged["y"] < merged["AutoETS-lo-99"]) | (merged["y"] > merged["AutoETS-hi-99"])).sum())
    return {
        "available": True,
        "sample": int(len(picked)),
        "flagged": flagged,
        "model_seconds": round(model_seconds, 2),
        "summary": f"AutoETS(season_length={season}) on {len(picked)} series: {model_seconds:.1f} s, {flagged} points outside the 99% interval",
    }


# -- the benchmark --------------------------------------------------------------------------------------

BENCH_TRAIN = {"iterations": 50, "time_budget_s": 15.0}  # throughput, not quality: a small fixed budget


def bench_config(config_dict: dict[str, Any], freq: str) -> dict[str, Any]:
    """The user's configuration with the benchmark's small meta-training budget.

    Daily series get K = 21 support pairs (three weeks): with 35 days of history the default
    K = 24 leaves aperiodic series (12 recent lags) one point short of a task window.
    """
    out = {k: dict(v) for k, v in config_dict.items()}
    train = out.setdefault("train", {})
    train.update(BENCH_TRAIN)
    if freq == "D":
        train["k_shot"] = 21
    return out


def run_scale_benchmark(
    *,
    config_dict: dict[str, Any],
    series: int,
    freq: str = "D",
    seed: int = 0,
    workdir: Path | None = None,
    autoets_series: int = 300,
    nice: int = 0,
    steps: tuple[str, ...] = STEPS,
    engine: str = "local",
    log=print,
) -> dict[str, Any]:
    """Generate (or reuse) the data, run each step in its own process, then AutoETS on a sample.

    ``engine="ray"``: daily-score runs on the local engine and then on Ray, in the same run.
    """
    if engine == "ray":
        steps = (*steps, "daily-score-ray")
    workdir = Path(workdir) if workdir is not None else default_workdir()
    spec = SyntheticSpec(series, freq, seed)
    log(f"data: {series:,} {freq} series of {spec.n_points} points in {workdir}")
    path, gen_seconds = cached_series(spec, workdir)
    run_dir = workdir / f"run-{freq}-{series}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = bench_config(config_dict, freq)
    common = {"input": str(path), "model_dir": str(run_dir / "model"), "config": config}
    results: dict[str, Any] = {}
    for step in steps:
        log(f"running {step} ...")
        args = dict(common, output=str(run_dir / ("scores-ray.parquet" if step.endswith("-ray") else "scores.parquet")))
        results[step] = run_step(step, args, nice=nice)
        _rates(results[step], series)
        log("  " + _step_line(results[step]))
        (run_dir / "partial.json").write_text(
            json.dumps(results, indent=1, default=str)
        )  # long runs: keep what finished
        if not results[step]["ok"]:
            break
    log(f"running AutoETS on {autoets_series} series ...")
    ets = run_step(
        "autoets",
        {
            "input": str(path),
            "n_series": series,
            "freq": freq,
            "seed": seed,
            "sample": autoets_series,
            "n_jobs": os.cpu_count() or 1,
            "config": {},
        },
        nice=nice,
    )
    return {
        "benchmark": "scale",
        "series": series,
        "freq": freq,
        "points_per_series": spec.n_points,
        "rows": series * spec.n_points,
        "input": str(path),
        "input_bytes": path.stat().st_size,
        "generated_seconds": None if gen_seconds is None else round(gen_seconds, 2),
        "machine": _machine(),
        "config": config,
        "steps": results,
        "autoets": ets,
        "autoets_ratio": _ratio(results.get("daily-score"), ets, series),
        "ray_over_local": _engine_ratio(results),
    }


def _engine_ratio(results: dict[str, Any]) -> dict[str, Any] | None:
    """Ray's daily-score beside the local engine's in the same run: wall time and the driver's own peak memory."""
    local, ray = results.get("daily-score"), results.get("daily-score-ray")
    if not (local and ray and local.get("ok") and ray.get("ok")):
        return None
    return {
        "wall_ratio": round(ray["seconds"] / max(local["seconds"], 1e-9), 2),
        "ray_driver_peak_rss_gb": round(ray["max_rss_self_bytes"] / 1e9, 3),
        "local_driver_peak_rss_gb": round(local["max_rss_self_bytes"] / 1e9, 3),
    }


def _rates(r: dict[str, Any], series: int) -> None:
    if r.get("ok"):
        r["series_per_second"] = round(series / max(r["seconds"], 1e-9), 1)
        r["peak_rss_gb"] = round(r["peak_rss_bytes"] / 1e9, 3)


def _step_line(r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return f"{r['step']}: FAILED {r.get('error', '')}"
    return (
        f"{r['step']:<13} {r['seconds']:8.1f} s  {r['series_per_second']:>10,.0f} series/s  "
        f"cpu {r['cpu_seconds']:7.1f} s  peak RSS {r['peak_rss_gb']:.2f} GB"
    )


def _ratio(score: dict[str, Any] | None, ets: dict[str, Any], series: int) -> dict[str, Any] | None:
    """Per-series cost of AutoETS over the tool's daily-score (both wall seconds on the same machine)."""
    res = ets.get("result", {}) if ets.get("ok") else {}
    if not score or not score.get("ok") or not res.get("available"):
        return None
    ours = score["seconds"] / series
    theirs = res["model_seconds"] / max(res["sample"], 1)
    return {
        "daily_score_seconds_per_series": ours,
        "autoets_seconds_per_series": theirs,
        "autoets_over_daily_score": round(theirs / ours, 1),
        "autoets_series_per_second": round(1.0 / theirs, 2),
    }


def _machine() -> dict[str, Any]:
    import platform

    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in load] if load else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table that ``bench scale`` prints."""
    lines = [
        f"bench scale: {report['series']:,} {report['freq']} series x {report['points_per_series']} points "
        f"({report['rows']:,} rows, {report['input_bytes'] / 1e6:.0f} MB parquet"
        + (f", generated in {report['generated_seconds']:.0f} s" if report["generated_seconds"] else ", cached")
        + f"); {report['machine']['cpus']} CPUs, load average {report['machine']['load_average']}",
    ]
    for r in report["steps"].values():
        lines.append("  " + _step_line(r))
    if report.get("ray_over_local"):
        e = report["ray_over_local"]
        lines.append(
            f"  daily-score on Ray: {e['wall_ratio']:.2f}x the local engine's wall time; driver peak memory "
            f"{e['ray_driver_peak_rss_gb']:.2f} GB (local: {e['local_driver_peak_rss_gb']:.2f} GB)"
        )
    ets = report["autoets"]
    res = ets.get("result", {}) if ets.get("ok") else {}
    if not ets.get("ok"):
        lines.append(f"  AutoETS: failed ({ets.get('error', '')})")
    elif not res.get("available"):
        lines.append(f"  AutoETS: not run: {ets.get('summary')}")
    else:
        lines.append(f"  {ets['summary']}")
        ratio = report["autoets_ratio"]
        if ratio:
            lines.append(
                f"  per series: daily-score {ratio['daily_score_seconds_per_series'] * 1e6:.0f} us, AutoETS "
                f"{ratio['autoets_seconds_per_series'] * 1e3:.0f} ms: AutoETS costs {ratio['autoets_over_daily_score']:,.0f}x more"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="one step of bench scale (internal)")
    parser.add_argument("--step", required=True, choices=[*STEPS, "daily-score-ray", "autoets"])
    parser.add_argument("--args", required=True, help="JSON arguments")
    ns = parser.parse_args(argv)
    print(json.dumps(_child(ns.step, json.loads(ns.args))), flush=True)


if __name__ == "__main__":
    main()
