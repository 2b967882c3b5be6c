"""Peer detectors beside the MAML detector: ADTK, statsforecast (AutoETS, MSTL) and Merlion.

Each peer runs with its documented defaults in its own virtual environment (their pins clash with
the project's: statsforecast needs pandas < 3, Merlion numpy < 2 and a Java runtime), so no peer
is ever a dependency of the product. Set them up once:

    python -m maml_anomaly.benchmarks.peers --setup all      # or adtk, statsforecast, merlion
    apt-get install -y default-jre-headless                  # Merlion's random cut forest (Java)

The environments live under ``$MAML_ANOMALY_PEERS_DIR`` (default ``~/.cache/maml-anomaly/peers``),
one folder per environment. The benchmark hands a peer its data through parquet files and runs
``peer_worker.py`` (numpy, pandas and the peer library only) with that environment's python; the
worker writes y_hat, a continuous score and the peer's own flag per row, read back here into the
scores schema, so `evaluation` measures peers like the detector. A peer whose environment is
missing is reported as not run, with the command that installs it.

Methods (the period per series is the one every method of the benchmark uses; 0 = none):

* ``adtk``: SeasonalAD(freq=period) (c = 3, IQR of |residual|), PersistAD() on series without a
  period; fitted on each series' history before its cutoff, run on the rest.
* ``sf_autoets`` / ``sf_mstl``: Nixtla's anomaly recipe: fitted on the whole series, scored
  days included (in-sample, an advantage), 99% intervals on the fitted values; a point outside
  its interval is an anomaly.
* ``sf_mstl_dayahead``: MSTL fitted on everything before each scored day, then forecast that
  day with 99% intervals, as a daily job would run it (no look at the day it scores).
* ``merlion``: DefaultDetector(DefaultDetectorConfig()), trained on the history before the
  cutoff, run on the rest with that history as context; its calibrated score, flagged by its own
  post-rule threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maml_anomaly.core import baselines

_DAY_NS = np.int64(86_400 * 10**9)
WORKER = Path(__file__).with_name("peer_worker.py")


@dataclass(frozen=True)
class PeerEnv:
    """One virtual environment: the pins that are installed into it and what else it needs."""

    name: str
    requirements: tuple[str, ...]
    needs_java: bool = False


# numpy < 2 and pandas < 2 where the library predates them (adtk 0.6.2 is from 2020)
ENVS = {
    "adtk": PeerEnv(
        "adtk",
        (
            "adtk==0.6.2",
            "numpy==1.26.4",
            "pandas==1.5.3",
            "statsmodels==0.14.1",
            "scikit-learn==1.3.2",
            "matplotlib==3.8.4",
            "pyarrow==14.0.2",
        ),
    ),
    "statsforecast": PeerEnv("statsforecast", ("statsforecast==2.1.1", "pandas==2.2.3", "pyarrow==18.1.0")),
    "merlion": PeerEnv(
        "merlion",
        (
            "salesforce-merlion==2.0.4",
            "numpy==1.26.4",
            "pandas==1.5.3",
            "scipy==1.11.4",
            "statsmodels==0.14.1",
            "scikit-learn==1.3.2",
            "prophet==1.1.5",
            "lightgbm==4.3.0",
            "matplotlib==3.8.4",
            "pyarrow==14.0.2",
        ),
        needs_java=True,
    ),
}
# bumped when a method's code in peer_worker changes: cached results of an older revision are rerun
REVISION = {"adtk": 2, "sf_autoets": 1, "sf_mstl": 1, "sf_mstl_dayahead": 1, "merlion": 1}
# method -> environment it runs in
PEERS = {
    "adtk": "adtk",
    "sf_autoets": "statsforecast",
    "sf_mstl": "statsforecast",
    "sf_mstl_dayahead": "statsforecast",
    "merlion": "merlion",
}

LABELS = {
    "adtk": "ADTK SeasonalAD / PersistAD",
    "sf_autoets": "statsforecast AutoETS, 99% fitted (in-sample)",
    "sf_mstl": "statsforecast MSTL, 99% fitted (in-sample)",
    "sf_mstl_dayahead": "statsforecast MSTL, day-ahead 99%",
    "merlion": "Merlion DefaultDetector",
}


def peers_dir() -> Path:
    return Path(os.environ.get("MAML_ANOMALY_PEERS_DIR", Path.home() / ".cache" / "maml-anomaly" / "peers"))


def env_python(env: str) -> Path:
    return peers_dir() / env / "bin" / "python"


def setup_command(method: str) -> str:
    return f"python -m maml_anomaly.benchmarks.peers --setup {PEERS[method]}"


def missing(method: str) -> str | None:
    """Why the peer cannot run here (with the fix), or None when it can."""
    env = ENVS[PEERS[method]]
    if not env_python(env.name).exists():
        return f"its environment {peers_dir() / env.name} is not set up: run `{setup_command(method)}`"
    if env.needs_java and shutil.which("java") is None:
        return "no Java runtime (its random cut forest runs on the JVM): `apt-get install -y default-jre-headless`"
    return None


# -- exchange ------------------------------------------------------------------------------------


def write_inputs(frame: pd.DataFrame, period: pd.Series, cutoff: pd.Series, folder: Path) -> baselines.Grid:
    """Each series on its regular grid (the tool's panel, as the baselines see it) into
    ``folder/values.parquet`` and ``folder/series.parquet`` (the worker's input); returns the grid."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = baselines.to_grid(frame)
    vals, _ = baselines.dense(grid)  # (S, T)
    n = np.diff(grid.indptr)  # (S,)
    si, ti = np.nonzero(np.arange(vals.shape[1])[None, :] < n[:, None])
    start, step = grid.start.astype(np.int64), grid.step.astype(np.int64)
    ds = start[si] + ti * step[si]
    pd.DataFrame(
        {
            "unique_id": grid.ids[si].astype(str),
            "t": ti.astype(np.int64),
            "ds": ds.astype("datetime64[ns]"),
            "y": vals[si, ti],
            "day": ds // _DAY_NS,
        }
    ).to_parquet(folder / "values.parquet", index=False)
    cut = pd.to_datetime(cutoff.rename(index=str)).reindex(grid.ids.astype(str)).astype("datetime64[ns]")
    cut = cut.fillna(pd.Timestamp.max).to_numpy().astype(np.int64)
    with np.errstate(over="ignore"):
        cutoff_t = np.clip(-((start - cut) // step), 0, n)  # first grid index at or after the cutoff
    pd.DataFrame(
        {
            "unique_id": grid.ids.astype(str),
            "period": baselines.period_array(grid.ids, period),
            "cutoff_t": cutoff_t.astype(np.int64),
            "step_ns": step,
        }
    ).to_parquet(folder / "series.parquet", index=False)
    return grid


def read_outputs(grid: baselines.Grid, result: pd.DataFrame, method: str, start, end, not_reached=()) -> pd.DataFrame:
    """The worker's (unique_id, t, y_hat, score, flag) as the scores schema for the days start..end.

    Rows are those the baselines score (present grid points of the days, plus off-grid rows,
    unscored), less the series in ``not_reached`` (left for lack of time: a partial figure is
    measured on the series the peer reached); a point the peer gave no finite score is
    ``peer_failed`` (e.g. a series it failed on: its windows count as missed).
    """
    vals, present = baselines.dense(grid)
    days = baselines._scored_days(grid, start, end)
    sp = baselines.scored_points(grid, present, days)
    key = pd.DataFrame({"unique_id": grid.ids[sp.si].astype(str), "t": sp.ti.astype(np.int64)})
    res = result.assign(unique_id=result["unique_id"].astype(str), t=result["t"].astype(np.int64))
    m = key.merge(res, on=["unique_id", "t"], how="left")
    y = vals[sp.si, sp.ti]
    score = m["score"].to_numpy(float)
    status = np.where(np.isnan(y), "missing_value", np.where(np.isfinite(score), "ok", "peer_failed"))
    ok = status == "ok"
    out = pd.DataFrame(
        {
            "unique_id": grid.ids[sp.si],
            "ds": sp.ds.astype("datetime64[ns]"),
            "y": y,
            "y_hat": m["y_hat"].to_numpy(float),
            "lower": np.nan,
            "upper": np.nan,
            "score": np.where(ok, score, np.nan),
            "is_anomaly": ok & m["flag"].fillna(False).to_numpy(bool),
            "cluster": method,
            "status": status,
        }
    )
    off = grid.off_grid
    if len(off):
        off_day = off["ds"].to_numpy("datetime64[ns]").astype(np.int64) // _DAY_NS
        off = off[(off_day >= days[0]) & (off_day <= days[1])]
        out = pd.concat(
            [
                out,
                pd.DataFrame(
                    {
                        "unique_id": off["unique_id"].to_numpy(),
                        "ds": off["ds"].to_numpy(),
                        "y": off["y"].to_numpy(float),
                        "y_hat": np.nan,
                        "lower": np.nan,
                        "upper": np.nan,
                        "score": np.nan,
                        "is_anomaly": False,
                        "cluster": method,
                        "status": "off_grid",
                    }
                ),
            ],
            ignore_index=True,
        ).sort_values(["unique_id", "ds"], ignore_index=True)
    if len(not_reached):
        out = out[~out["unique_id"].astype(str).isin([str(u) for u in not_reached])].reset_index(drop=True)
    return out


def fingerprint(folder: Path) -> str:
    """What the peer was given: a hash of the exchange files (cached results are reused only for it)."""
    h = hashlib.sha256()
    for name in ("values.parquet", "series.parquet"):
        h.update(pd.read_parquet(folder / name).to_csv(index=False).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class PeerRun:
    """A peer's scores (None when it did not run) and what to say about the run."""

    scores: pd.DataFrame | None
    info: dict


def run_peer(
    method: str,
    frame: pd.DataFrame,
    period: pd.Series,
    cutoff: pd.Series,
    *,
    start,
    end,
    folder: Path,
    reuse: bool = False,
    max_seconds: float | None = None,
) -> PeerRun:
    """Run `method` in its environment on the panel, caching its results in `folder`.

    With ``reuse``, results cached for the same inputs (same fingerprint) are read instead of
    rerun (a run cut short by ``max_seconds`` only for the same limit). A peer whose environment is missing comes back with ``info["not_run"]`` saying how to
    install it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    inputs = folder / "inputs"
    grid = write_inputs(frame, period, cutoff, inputs)
    fp = fingerprint(inputs)
    result_path, info_path = folder / f"{method}.parquet", folder / f"{method}.json"
    if reuse and result_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        complete = not info.get("skipped_for_time") or info.get("max_seconds") == max_seconds  # a partial run: same cap
        if info.get("fingerprint") == fp and complete and info.get("revision", 1) == REVISION[method]:
            info["cached"] = True
            return PeerRun(
                read_outputs(grid, pd.read_parquet(result_path), method, start, end, info["skipped_for_time"]), info
            )
    if (why := missing(method)) is not None:
        return PeerRun(None, {"method": method, "not_run": why})
    cmd = [str(env_python(PEERS[method])), str(WORKER), method, str(inputs), str(result_path)]
    if max_seconds is not None:
        cmd += ["--max-seconds", str(max_seconds)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return PeerRun(
            None,
            {
                "method": method,
                "not_run": f"the worker failed (exit {proc.returncode}): " + proc.stderr.strip()[-2000:],
            },
        )
    info = json.loads(Path(f"{result_path}.json").read_text())
    info.update(
        wall_seconds=wall,
        fingerprint=fp,
        max_seconds=max_seconds,
        revision=REVISION[method],
        n_failed=len(info["failed"]),
        n_skipped_for_time=len(info["skipped_for_time"]),
    )
    info_path.write_text(json.dumps(info, indent=2))
    return PeerRun(read_outputs(grid, pd.read_parquet(result_path), method, start, end, info["skipped_for_time"]), info)


def markdown_notes(report: dict) -> str:
    """One line per peer that ran: version, wall time, series it failed on or did not reach."""
    lines = []
    for method, s in report["results"].items():
        if method not in PEERS or "peer" not in s:
            continue
        p = s["peer"]
        extra = [
            f"{p['n_failed']} series failed ({', '.join(sorted(p['failed'])[:5])})" if p["n_failed"] else "",
            f"{p['n_skipped_for_time']} series not reached in the time allowed (not measured)"
            if p["n_skipped_for_time"]
            else "",
            "cached result" if p.get("cached") else "",
        ]
        if same := p.get("maml_on_same_series"):
            extra.append(
                f"maml on the same {same['n_series']} series: event recall at the fixed FAR "
                f"{same['event_recall_at_far']:.3f}, F1 at its default {same['f1_default']:.3f}"
            )
        lines.append(
            f"- {method}: {p['version']}; {p['wall_seconds']:.0f} s wall ({p['seconds']:.0f} s in the peer)"
            + "".join(f"; {e}" for e in extra if e)
        )
    return "peers:\n" + "\n".join(lines) if lines else ""


# -- setup ---------------------------------------------------------------------------------------


def setup(name: str) -> None:
    """Create the environment `name` and install its pins (PyPI only)."""
    env = ENVS[name]
    path = peers_dir() / name
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--upgrade", "pip", "wheel"], check=True)
    subprocess.run(pip + list(env.requirements), check=True)
    if env.needs_java and shutil.which("java") is None:
        print(f"{name}: also install a Java runtime: apt-get install -y default-jre-headless", file=sys.stderr)
    print(f"{name}: ready at {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setup",
        required=True,
        choices=sorted(ENVS) + ["all"],
        help="create a peer's environment under $MAML_ANOMALY_PEERS_DIR",
    )
    args = parser.parse_args(argv)
    for name in sorted(ENVS) if args.setup == "all" else [args.setup]:
        setup(name)


if __name__ == "__main__":
    main()
