"""The golden run: a small fixed-seed pass through every command, on the local and the Ray engine.

Shared by tests/test_golden.py (which compares a fresh run with the recorded fixture) and
tests/golden/record.py (which records it). The input is a fixed slice of sample_data: hourly and
daily series, two of them left out of fit-clusters but long enough to be assigned a cluster.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "values.parquet"
FIXTURE = Path(__file__).resolve().parent / "golden"
ENGINES = ("local", "ray")
TINY = """
[train]
iterations = 4
hidden = [8, 8]
meta_batch_size = 4
time_budget_s = 60.0
seed = 0

[clusters]
min_cluster_size = 5
"""
DAYS = 21  # days of history kept per series
BACKTEST_START = "2024-03-28"
LATE = ("s005", "s103")  # one hourly, one daily series fit-clusters never sees (assigned when scored)
# model-directory files whose bytes depend only on the computation (the manifest and the
# training report also hold wall-clock times, so only their stable keys are compared)
MODEL_FILES = ("clusters.parquet", "clusterer.json", "detector.json")
VALUE_TABLES = ("clusters", "daily", "backtest", "events")


def fingerprint() -> dict[str, str]:
    """What decides the last bits of numpy/torch floats on this machine."""
    import pyarrow
    import torch

    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    enabled = ",".join(sorted(k for k, v in features.items() if v))
    return {
        "platform": f"{platform.system()} {platform.machine()} python {platform.python_version()}",
        "numpy": f"{np.__version__} [{enabled}]",
        "torch": f"{torch.__version__} threads-default {torch.get_num_threads() > 0}",
        "pyarrow": pyarrow.__version__,
        "pandas": pd.__version__,
    }


def make_inputs(root: Path) -> tuple[Path, Path]:
    """history.parquet (without the late series) and input.parquet (all of them) under root."""
    frame = pd.read_parquet(SAMPLE)
    step = frame.groupby("unique_id")["ds"].agg(lambda ds: ds.diff().median())
    hourly = sorted(step.index[step == pd.Timedelta("1h")])[:24]
    daily = sorted(step.index[step == pd.Timedelta("1D")])[:10]
    assert all(i in hourly + daily for i in LATE), (LATE, hourly, daily)
    frame = frame[frame["unique_id"].isin(hourly + daily)]
    days = np.where(frame["unique_id"].isin(daily), 120, DAYS)  # daily series need weeks of history
    frame = frame[frame["ds"] >= frame["ds"].max().normalize() - pd.to_timedelta(days - 1, unit="D")]
    frame = frame.sort_values(["unique_id", "ds"], ignore_index=True)
    history, full = root / "history.parquet", root / "input.parquet"
    frame[~frame["unique_id"].isin(LATE)].to_parquet(history, index=False)
    frame.to_parquet(full, index=False)
    return history, full


def run(root: Path, engine: str) -> dict[str, Path]:
    """Every command of the golden run on ``engine``; the outputs by name."""
    from typer.testing import CliRunner

    from maml_anomaly.cli import app

    root.mkdir(parents=True, exist_ok=True)
    history, full = make_inputs(root)
    (root / "tiny.toml").write_text(TINY)
    model, cfg = root / "model", root / "tiny.toml"
    eng = ["--engine", engine]
    commands = [
        ["fit-clusters", "-i", history, "-m", model, "-c", cfg, *eng],
        ["meta-train", "-i", history, "-m", model, "-c", cfg],
        ["daily-score", "-i", full, "-m", model, "-c", cfg, "-o", root / "daily.parquet", *eng],
        [
            "backtest",
            "-i",
            full,
            "-m",
            model,
            "-c",
            cfg,
            "-o",
            root / "backtest.parquet",
            "--start",
            BACKTEST_START,
            "--events",
            root / "events.parquet",
            *eng,
        ],
    ]
    for args in commands:
        result = CliRunner().invoke(app, [str(a) for a in args] + ["-q"])
        assert result.exit_code == 0, (args, result.output)
    serving = model / "current"  # the version meta-train published
    outputs = {name: serving / name for name in MODEL_FILES}
    outputs.update({f"cluster-{i}": p for i, p in enumerate(sorted(serving.glob("*.safetensors")))})
    outputs.update({name: root / f"{name}.parquet" for name in ("daily", "backtest", "events")})
    return outputs


def digests(outputs: dict[str, Path]) -> dict[str, str]:
    """sha256 of every output file's bytes."""
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sorted(outputs.items())}


def value_tables(outputs: dict[str, Path]) -> dict[str, pd.DataFrame]:
    """The tables compared within a tolerance on any machine."""
    tables = {name: pd.read_parquet(outputs[name]) for name in ("daily", "backtest", "events")}
    tables["clusters"] = pd.read_parquet(outputs["clusters.parquet"])
    return tables


def load_fixture() -> tuple[dict, dict[str, pd.DataFrame]]:
    meta = json.loads((FIXTURE / "golden.json").read_text())
    return meta, {name: pd.read_parquet(FIXTURE / f"{name}.parquet") for name in VALUE_TABLES}


def assert_values_close(
    got: pd.DataFrame, want: pd.DataFrame, name: str, *, rtol: float, threshold: float = 3.0, margin: float = 0.0
) -> None:
    """Ids, timestamps, statuses and other non-float columns exactly; floats to ``rtol`` (relative and
    absolute); flags equal except on points whose recorded score is within ``margin`` (relative) of
    the threshold."""
    assert list(got.columns) == list(want.columns), name
    assert len(got) == len(want), f"{name}: {len(got)} rows, expected {len(want)}"
    near = np.zeros(len(want), bool)
    if "score" in want.columns:
        near = np.abs(want["score"].to_numpy(np.float64) - threshold) <= margin * threshold
    for col in want.columns:
        a, b = got[col], want[col]
        if col == "is_anomaly":
            differ = (a.to_numpy() != b.to_numpy()) & ~near
            assert not differ.any(), f"{name}.{col}: {int(differ.sum())} flags differ away from the threshold"
        elif pd.api.types.is_float_dtype(b.dtype):
            np.testing.assert_allclose(
                a.to_numpy(np.float64),
                b.to_numpy(np.float64),
                rtol=rtol,
                atol=rtol,
                equal_nan=True,
                err_msg=f"{name}.{col}",
            )
        elif col == "suppressed":  # follows the flags
            same = (a.fillna("").to_numpy() == b.fillna("").to_numpy()) | near
            assert same.all(), f"{name}.{col}"
        else:
            pd.testing.assert_series_equal(a, b, check_names=False, obj=f"{name}.{col}")
