"""Shared data for the reliability tests: a small history, one tiny trained model, CLI helpers.

The model is fit and meta-trained once per test process (a few iterations through the real
CLI) and copied into each test that needs its own, so the suite stays fast.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from maml_anomaly.cli import app

N_SERIES, DAYS = 8, 10
TRAIN_ARGS = ["--iterations", "3", "--k-shot", "8", "--inner-steps", "1", "--meta-batch-size", "4", "--time-budget", "20"]


def history(n_series: int = N_SERIES, days: int = DAYS, seed: int = 0) -> pd.DataFrame:
    """Hourly daily-seasonal series s0..s{n-1}, sorted by (unique_id, ds)."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2024-01-01", periods=24 * days, freq="h")
    t = np.arange(ds.size)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "unique_id": f"s{i}",
                    "ds": ds,
                    "y": 5.0 + i + np.sin(2 * np.pi * t / 24 + i) + rng.normal(0, 0.1, ds.size),
                }
            )
            for i in range(n_series)
        ],
        ignore_index=True,
    )


def invoke(args: list) -> object:
    """Run the real CLI in-process (stdout and stderr apart)."""
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="maml-anomaly", color=False)


@functools.lru_cache(maxsize=1)
def _trained() -> tuple[Path, Path]:
    root = Path(tempfile.mkdtemp(prefix="maml-reliability-"))
    atexit.register(shutil.rmtree, root, True)
    data = root / "history.parquet"
    history().to_parquet(data, index=False)
    model = root / "model"
    for args in (
        ["fit-clusters", "-i", data, "-m", model, "-q"],
        ["meta-train", "-i", data, "-m", model, *TRAIN_ARGS, "-q"],
    ):
        result = invoke(args)
        assert result.exit_code == 0, result.output
    return data, model


def trained_model(dest: Path) -> Path:
    """A copy of the tiny trained model directory at ``dest``."""
    shutil.copytree(_trained()[1], dest)
    return dest


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden ones too)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_clean_failure(result, *words: str) -> None:
    """Exit 1, one message naming the problem (every word), no traceback, nothing on stdout."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    message = " ".join(line for line in result.stderr.splitlines() if line.startswith("Error: "))
    assert message, result.stderr
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    assert "Traceback" not in result.output
    assert result.stdout == ""
