"""The bench commands: the paper's sine benchmark and daily-score at scale (the CLI's only door into benchmarks)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from maml_anomaly.commands.common import setup_torch
from maml_anomaly.config import Config
from maml_anomaly.errors import InputError

log = logging.getLogger("maml_anomaly.commands")


def bench_sine(
    *,
    config: Config,
    k_shot: int | None,
    iterations: int,
    seed: int,
    first_order: bool,
    learn_inner_lr: bool,
    eval_tasks: int,
) -> dict[str, Any]:
    """The paper's sine benchmark (maml_anomaly.benchmarks.sine.run_sine_benchmark)."""
    setup_torch(config)
    from maml_anomaly.benchmarks.sine import format_table, run_sine_benchmark

    result = run_sine_benchmark(
        k_shot=k_shot,
        iterations=iterations,
        seed=seed,
        first_order=first_order,
        learn_inner_lr=learn_inner_lr,
        eval_tasks=eval_tasks,
    )
    return {"summary": format_table(result), **result}


def bench_scale(
    *,
    config: Config,
    series: int,
    freq: str,
    seed: int = 0,
    workdir: Path | None = None,
    autoets_series: int = 300,
    nice: int = 0,
    engine: str = "local",
) -> dict[str, Any]:
    """fit-clusters, meta-train and daily-score on N synthetic series, each step in its own process,
    beside StatsForecast AutoETS on a sample (maml_anomaly.benchmarks.scale)."""
    from maml_anomaly.benchmarks.scale import format_report, run_scale_benchmark

    if series < 1:
        raise InputError(f"--series must be at least 1; found {series}.")
    if freq not in ("D", "h"):
        raise InputError(f"--freq must be D (daily) or h (hourly); found {freq!r}.")
    if engine not in ("local", "ray"):
        raise InputError(f"--engine must be local or ray; found {engine!r}.")
    if autoets_series < 1:
        raise InputError(f"--autoets-series must be at least 1; found {autoets_series}.")
    setup_torch(config)
    report = run_scale_benchmark(
        config_dict=config.to_dict(),
        series=series,
        freq=freq,
        seed=seed,
        workdir=workdir,
        autoets_series=autoets_series,
        nice=nice,
        engine=engine,
        log=lambda msg: log.info("%s", msg),
    )
    return {"summary": format_report(report), **report}
