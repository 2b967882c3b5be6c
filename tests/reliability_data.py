"""Shared data for the reliability tests: a small history, one tiny trained model, CLI helpers.

The model is fit and meta-trained once per test process (a few iterations through the real
CLI) and copied into each test that needs its own, so the suite stays fast.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from maml_anomaly.cli import app

N_SERIES, DAYS = 8, 10
TRAIN_ARGS = [
    "--iterations",
    "3",
    "--k-shot",
    "8",
    "--inner-steps",
    "1",
    "--meta-batch-size",
    "4",
    "--time-budget",
    "20",
]


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
    shutil.copytree(_trained()[1], dest, symlinks=True)
    return dest


def served(model: Path) -> Path:
    """The version folder of a model directory that scoring reads (``current``, else ``pending``)."""
    for link in ("current", "pending"):
        if (model / link).exists():
            return model / link
    return model


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


_FORK_SERVER = r"""
import json, os, sys
import torch  # noqa: F401  (imported once here; the children start without paying for it)
import maml_anomaly.api, maml_anomaly.core.scoring  # noqa: F401
from maml_anomaly.cli import app
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.update(job["env"])
        try:
            app(job["args"], prog_name="maml-anomaly")
        except SystemExit as exc:
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                      "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
"""


class ForkRunner:
    """Runs CLI commands in fresh processes forked from one that imported the package (and torch)
    once: a real separate process per run, killable with SIGKILL, without the import cost.

    Nothing runs torch before the fork, so no thread pool is copied into the children.
    """

    def __init__(self, root: Path) -> None:
        import os
        import subprocess
        import sys

        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )
        self._n = 0
        self._root = root

    def run(self, args: list, env: dict[str, str] | None = None) -> tuple[int, int | None, str]:
        """(signal that ended it or 0, exit code or None, its stdout+stderr)."""
        return self.finish(self.start(args, env))

    def start(self, args: list, env: dict[str, str] | None = None) -> Path:
        """Start one run (one at a time); returns its log file."""
        import json

        self._n += 1
        log = self._root / f"run-{self._n}.log"
        job = {"args": [str(a) for a in args], "env": env or {}, "log": str(log)}
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        return log

    def wait_for_log(self, log: Path, text: str, timeout: float) -> bool:
        """Poll the run's log until it shows ``text`` (bounded; the outcome does not depend on timing)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and text in log.read_text(errors="replace"):
                return True
            time.sleep(0.05)
        return False

    def finish(self, log: Path) -> tuple[int, int | None, str]:
        import json

        assert self._proc.stdout is not None
        reply = json.loads(self._proc.stdout.readline())
        return reply["signal"], reply["code"], log.read_text(errors="replace")

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait(timeout=60)


def case(*ids: str):
    """Name the reliability suite's case(s) a status test covers (listed in docs/operations.md)."""

    def mark(fn):
        fn.case_ids = ids
        return fn

    return mark


class Work:
    """A work folder for one case: inputs, a model directory and an output path inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "scores.parquet"

    def parquet(self, data: pd.DataFrame | pa.Table, name: str = "input.parquet") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, pa.Table):
            pq.write_table(data, path)
        else:
            data.to_parquet(path, index=False)
        return path

    def good(self) -> Path:
        return self.parquet(history())

    def model(self, name: str = "model") -> Path:
        return trained_model(self.root / name)

    def manifest(self, model: Path, **changes) -> Path:
        path = served(model) / "manifest.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
        return model

    def toml(self, text: str) -> Path:
        path = self.root / "config.toml"
        path.write_text(text)
        return path

    def score(self, inp: Path, model: Path, *extra) -> list:
        return ["daily-score", "-i", inp, "-m", model, "-o", self.out, *extra]

    def backtest(self, inp: Path, model: Path, *extra) -> list:
        return ["backtest", "-i", inp, "-m", model, "-o", self.out, *extra]


@dataclass(frozen=True)
class ErrorCase:
    id: str
    build: Callable[[Work], list]  # makes the inputs, returns the CLI arguments
    words: tuple[str, ...]  # all must appear in the message
