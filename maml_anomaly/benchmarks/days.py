"""Clock and day checks: jittered clocks with and without the robust grid; the default day's read.

    python -m maml_anomaly.benchmarks.days jitter
    python -m maml_anomaly.benchmarks.days default-day FILE.parquet

``jitter``: 100 synthetic series per case (seed 0), built with --snap-tolerance 0.5; "mode step"
is the grid of the most common difference (what snapping had before data/clock.py), "robust" the
jitter rule. ``default-day``: seconds of the default day's extra read of FILE (run twice: the
first includes the file cache warming), beside which daily-score's own time can be compared.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from maml_anomaly.commands.days import pick_default_day
from maml_anomaly.config import Config
from maml_anomaly.data import panel as panel_module
from maml_anomaly.data.days import local_date
from maml_anomaly.data.stream import time_bounds

CASES = (("5min", 60.0, 14), ("1h", 2.0, 30), ("5min", 5e-9, 14))


def jittered(step: str, jitter_s: float, days: int, n_series: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    grid = pd.date_range("2024-01-01", periods=int(days * pd.Timedelta("1D") / pd.Timedelta(step)), freq=step)
    parts = [
        pd.DataFrame(
            {
                "unique_id": f"s{i}",
                "ds": grid + pd.to_timedelta(rng.uniform(-jitter_s, jitter_s, grid.size), unit="s"),
                "y": rng.normal(size=grid.size),
            }
        )
        for i in range(n_series)
    ]
    return pd.concat(parts, ignore_index=True)


def jitter() -> None:
    robust = panel_module.regrid_jittered
    try:
        for step, jitter_s, days in CASES:
            frame = jittered(step, jitter_s, days)
            for name, rule in (("mode step", lambda *a: a[4:7]), ("robust", robust)):
                panel_module.regrid_jittered = rule
                panel, report = panel_module.build_panel(frame, 0.5)
                print(
                    f"{step} +-{jitter_s:g} s, {len(frame):,} rows, {name}: {np.unique(panel.step).size} distinct "
                    f"steps, {report.off_grid:,} off-grid rows"
                )
    finally:
        panel_module.regrid_jittered = robust


def default_day(path: Path) -> None:
    config = Config()
    last = local_date(time_bounds(path, config.columns)[1], "UTC")
    for _ in range(2):
        t, cpu = time.perf_counter(), time.process_time()
        _, fields = pick_default_day(config, path, last, "UTC")
        print(
            f"default day read: {time.perf_counter() - t:.2f} s wall, {time.process_time() - cpu:.2f} s cpu; {fields}"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["jitter"]:
        jitter()
    elif sys.argv[1:2] == ["default-day"] and len(sys.argv) == 3:
        default_day(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
