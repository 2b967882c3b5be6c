"""daily-score on the local engine against --engine ray (local mode): wall time, peak memory, same rows.

    python -m maml_anomaly.benchmarks.engines --series 200000 [--workdir DIR] [--json]

Generates N daily synthetic series (the ``bench scale`` generator), runs fit-clusters and a
short meta-train once (the model's quality does not matter here), then daily-score once per
engine, each in its own process. Peak memory is the largest sum of the resident sets of the
command's whole process tree (the CLI, and for Ray its raylet, GCS and workers), sampled every
0.2 s from /proc; shared pages (Ray's object store) count once per process that maps them, so
the Ray figure is an upper bound. Finally it checks that both outputs hold the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from maml_anomaly.benchmarks.scale import SyntheticSpec, cached_series

TRAIN = """
[train]
iterations = 10
time_budget_s = 5.0
"""
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (read from /proc; no psutil needed)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/statm") as fh:
                pages = int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        pid = int(entry)
        parent[pid] = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: ppid (after the command name)
        rss[pid] = pages * PAGE
    total, todo, seen = 0, [root], set()
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run_measured(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; its wall seconds and the peak resident memory of its process tree (MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_mb": round(peak[0] / 2**20)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=200_000)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "maml-anomaly-bench")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    data, _ = cached_series(SyntheticSpec(args.series, "D"), work)
    model = work / f"engines-model-{args.series}"
    (work / "engines-train.toml").write_text(TRAIN)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    cli = [sys.executable, "-m", "maml_anomaly"]
    if not (model / "current" / "detector.json").exists():
        for step in ("fit-clusters", "meta-train"):
            run_measured(
                [
                    *cli,
                    step,
                    "-i",
                    str(data),
                    "-m",
                    str(model),
                    "-c",
                    str(work / "engines-train.toml"),
                    "-q",
                    "--overwrite",
                ],
                env,
            )
    result = {"series": args.series, "input": str(data), "engines": {}}
    outputs = {}
    for engine in ("local", "ray"):
        outputs[engine] = work / f"engines-scores-{engine}-{args.series}.parquet"
        result["engines"][engine] = run_measured(
            [
                *cli,
                "daily-score",
                "-i",
                str(data),
                "-m",
                str(model),
                "-o",
                str(outputs[engine]),
                "-q",
                "--engine",
                engine,
            ],
            env,
        )
    a, b = pd.read_parquet(outputs["local"]), pd.read_parquet(outputs["ray"])
    same_keys = len(a) == len(b) and a[["unique_id", "ds", "status", "is_anomaly", "cluster"]].equals(
        b[["unique_id", "ds", "status", "is_anomaly", "cluster"]]
    )
    diff = np.nanmax(np.abs(a["score"].to_numpy() - b["score"].to_numpy())) if same_keys and len(a) else float("nan")
    result.update(rows=len(a), same_rows_flags_statuses=bool(same_keys), max_abs_score_diff=float(diff))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
