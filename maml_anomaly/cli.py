"""The ``maml-anomaly`` command line: commands only declare options and call one pipeline function.

Results and a one-line summary go to stdout (``--json``: one JSON object instead); logs go to
stderr. Exit codes: 0 success; 1 an error the user can fix (a MamlAnomalyError, printed as one
paragraph, no traceback); 2 bad usage. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from maml_anomaly import __version__, pipeline
from maml_anomaly.config import Config
from maml_anomaly.errors import MamlAnomalyError

app = typer.Typer(
    name="maml-anomaly",
    help=(
        "Find the day's anomalies in very many time series with meta-learned (MAML) forecasters.\n\n"
        "Daily use: fit-clusters, then meta-train (once, or weekly), then daily-score (every day)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
bench_app = typer.Typer(
    help="Benchmarks: the paper's sine benchmark and daily-score at scale.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class OnDuplicate(str, Enum):
    error = "error"
    first = "first"
    last = "last"
    mean = "mean"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class Freq(str, Enum):
    D = "D"
    h = "h"


# -- shared options -------------------------------------------------------------------------------

_DATA = "Data"
_RUN = "Run"

InputOpt = Annotated[
    Path,
    typer.Option("--input", "-i", help="Long-format parquet: a file or a directory of parquet files (hive partitions allowed).", rich_help_panel=_DATA),
]
ModelDirOpt = Annotated[
    Path, typer.Option("--model-dir", "-m", help="The model directory (made by fit-clusters, completed by meta-train).")
]
IdColOpt = Annotated[Optional[str], typer.Option("--id-col", help="Series id column (default: unique_id).", rich_help_panel=_DATA)]
TimeColOpt = Annotated[Optional[str], typer.Option("--time-col", help="Timestamp column (default: ds).", rich_help_panel=_DATA)]
ValueColOpt = Annotated[Optional[str], typer.Option("--value-col", help="Value column (default: y).", rich_help_panel=_DATA)]
OnDuplicateOpt = Annotated[
    Optional[OnDuplicate],
    typer.Option(
        "--on-duplicate",
        help="Rows sharing (id, timestamp): error (default), or keep the first / last, or their mean.",
        rich_help_panel=_DATA,
    ),
]
SnapOpt = Annotated[
    Optional[float],
    typer.Option(
        "--snap-tolerance",
        min=0.0,
        max=0.5,
        help="Move rows within this fraction of the step onto their nearest grid point; 0 = exact grid only (default: 0).",
        rich_help_panel=_DATA,
    ),
]
ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="TOML configuration file; command-line flags override it.", rich_help_panel=_RUN)
]
DeviceOpt = Annotated[Optional[Device], typer.Option("--device", help="auto (cuda when available), cpu or cuda (default: auto).", rich_help_panel=_RUN)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="Torch threads (default: 1, often fastest on small cores).", rich_help_panel=_RUN)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.", rich_help_panel=_RUN)]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs on stderr.", rich_help_panel=_RUN)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of the one-line summary.", rich_help_panel=_RUN)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace what a previous run wrote there.", rich_help_panel=_RUN)]
DateOpt = Annotated[Optional[str], typer.Option("--date", help="Day to score, YYYY-MM-DD (default: the last day in the input).")]
EngineOpt = Annotated[
    Engine,
    typer.Option("--engine", help='Where the per-series work runs: local (this process) or ray (Ray Data workers; pip install "maml-anomaly[ray]").', rich_help_panel=_RUN),
]
RayAddressOpt = Annotated[
    Optional[str],
    typer.Option("--ray-address", help="With --engine ray: the Ray cluster to join, e.g. ray://head:10001 or auto (default: start a local one).", rich_help_panel=_RUN),
]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Scores parquet to write (atomically; replaced on rerun).")]
ThresholdOpt = Annotated[
    Optional[float], typer.Option("--threshold", min=0.0, help="Flag points whose score is at or above this (default: 3.0).")
]
LockTimeoutOpt = Annotated[
    Optional[float],
    typer.Option(
        "--lock-timeout",
        min=0.0,
        help="Seconds to wait when another run holds the model directory or output (default: 0, stop at once).",
        rich_help_panel=_RUN,
    ),
]
MaxFailedOpt = Annotated[
    Optional[float],
    typer.Option(
        "--max-failed-fraction",
        min=0.0,
        max=1.0,
        help="Fail (exit 1) when more than this fraction of series cannot be scored (default: 1.0).",
    ),
]

_ALERTS = "Alerts (each rule only removes flags; see docs/alerts.md)"
EventsOpt = Annotated[
    Optional[Path],
    typer.Option("--events", help="Also write the events (runs of consecutive flagged points) to this parquet file.", rich_help_panel=_ALERTS),
]
FdrOpt = Annotated[
    Optional[float],
    typer.Option("--fdr", min=0.0, max=1.0, help="Keep a flag only if its Benjamini-Hochberg q_value is at most this (default: 0 = off).", rich_help_panel=_ALERTS),
]
QPerClusterOpt = Annotated[
    Optional[bool],
    typer.Option("--q-per-cluster/--q-per-run", help="Benjamini-Hochberg q-values per cluster instead of over the whole run (default: per run).", show_default=False, rich_help_panel=_ALERTS),
]
MaxAlertsOpt = Annotated[
    Optional[int],
    typer.Option("--max-alerts", min=0, help="Alert budget: keep the N most significant flagged points (default: 0 = no budget).", rich_help_panel=_ALERTS),
]
MinAbsOpt = Annotated[
    Optional[float],
    typer.Option("--min-abs-deviation", min=0.0, help="Drop flags with |y - y_hat| below this, in the series' units (default: 0).", rich_help_panel=_ALERTS),
]
MinRelOpt = Annotated[
    Optional[float],
    typer.Option("--min-rel-deviation", min=0.0, help="Drop flags with |y - y_hat| / |y_hat| below this, e.g. 0.1 = 10% (default: 0).", rich_help_panel=_ALERTS),
]


class Direction(str, Enum):
    both = "both"
    up = "up"
    down = "down"


DirectionOpt = Annotated[
    Optional[Direction],
    typer.Option("--direction", help="Keep flags above the forecast (up), below it (down) or both (default: both).", rich_help_panel=_ALERTS),
]
MinConsecutiveOpt = Annotated[
    Optional[int],
    typer.Option("--min-consecutive", min=1, help="Keep only runs of at least N consecutive flagged grid points (default: 1).", rich_help_panel=_ALERTS),
]


def _alert_flags(fdr, q_per_cluster, max_alerts, min_abs_deviation, min_rel_deviation, direction, min_consecutive) -> dict[str, Any]:
    return {
        "fdr": fdr,
        "q_per_cluster": q_per_cluster,
        "max_alerts": max_alerts,
        "min_abs_deviation": min_abs_deviation,
        "min_rel_deviation": min_rel_deviation,
        "direction": direction.value if direction else None,
        "min_consecutive": min_consecutive,
    }


def _columns(id_col: Optional[str], time_col: Optional[str], value_col: Optional[str]) -> dict[str, Any]:
    return {"id_col": id_col, "time_col": time_col, "value_col": value_col}


def _runtime(device: Optional[Device], threads: Optional[int]) -> dict[str, Any]:
    return {"device": device.value if device else None, "threads": threads}


def _run(
    fn: Callable[..., dict[str, Any]],
    *,
    config_path: Optional[Path],
    flags: dict[str, Any],
    quiet: bool,
    verbose: bool,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Build the config, call one pipeline function, print its summary; our errors exit 1."""
    _setup_logging(quiet, verbose)
    try:
        config = Config.load(config_path, flags)
        result = fn(config=config, **kwargs)
    except MamlAnomalyError as exc:
        typer.echo(f"Error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(pipeline.jsonable({k: v for k, v in result.items() if k != "summary"}), sort_keys=False))
    else:
        typer.echo(result.get("summary", ""))


def _setup_logging(quiet: bool, verbose: bool) -> None:
    logger = logging.getLogger("maml_anomaly")
    for handler in list(logger.handlers):
        if getattr(handler, "_maml_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)  # the current stderr (tests swap it)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler._maml_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"maml-anomaly {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Find the day's anomalies in very many time series with meta-learned (MAML) forecasters."""


# -- commands -------------------------------------------------------------------------------------


@app.command("fit-clusters")
def fit_clusters(
    input: InputOpt,
    model_dir: ModelDirOpt,
    id_col: IdColOpt = None,
    time_col: TimeColOpt = None,
    value_col: ValueColOpt = None,
    on_duplicate: OnDuplicateOpt = None,
    snap_tolerance: SnapOpt = None,
    min_cluster_size: Annotated[Optional[int], typer.Option(min=1, help="Smallest cluster; smaller groups merge (default: 50).")] = None,
    max_subclusters: Annotated[Optional[int], typer.Option(min=1, help="Most shape sub-clusters per period group (default: 8).")] = None,
    min_strength: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Least periodic strength to keep a period (default: 0.2).")] = None,
    max_period: Annotated[Optional[int], typer.Option(min=0, help="Longest period tried, in steps; 0 = automatic (default: 0).")] = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    lock_timeout: LockTimeoutOpt = None,
    overwrite: OverwriteOpt = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Detect each series' dominant period and group the series; write DIR/clusters.parquet."""
    _run(
        pipeline.fit_clusters,
        config_path=config,
        flags={
            **_columns(id_col, time_col, value_col),
            **_runtime(device, threads),
            "lock_timeout": lock_timeout,
            "on_duplicate": on_duplicate.value if on_duplicate else None,
            "snap_tolerance": snap_tolerance,
            "min_cluster_size": min_cluster_size,
            "max_subclusters": max_subclusters,
            "min_strength": min_strength,
            "max_period": max_period,
        },
        quiet=quiet,
        verbose=verbose,
        as_json=as_json,
        input=input,
        model_dir=model_dir,
        overwrite=overwrite,
        engine=engine.value,
        ray_address=ray_address,
    )


@app.command("meta-train")
def meta_train(
    input: InputOpt,
    model_dir: ModelDirOpt,
    id_col: IdColOpt = None,
    time_col: TimeColOpt = None,
    value_col: ValueColOpt = None,
    on_duplicate: OnDuplicateOpt = None,
    snap_tolerance: SnapOpt = None,
    k_shot: Annotated[Optional[int], typer.Option(min=1, help="K: support pairs per task (and per series when scoring) (default: 24).")] = None,
    inner_steps: Annotated[Optional[int], typer.Option(min=0, help="Gradient steps of the inner loop (default: 5).")] = None,
    inner_lr: Annotated[Optional[float], typer.Option(min=0.0, help="Inner learning rate alpha (default: 0.01).")] = None,
    meta_batch_size: Annotated[Optional[int], typer.Option(min=1, help="Tasks per meta-update (default: 32).")] = None,
    meta_lr: Annotated[Optional[float], typer.Option(min=0.0, help="Outer (Adam) learning rate (default: 0.001).")] = None,
    iterations: Annotated[Optional[int], typer.Option(min=0, help="Meta-updates per cluster (default: 2000).")] = None,
    first_order: Annotated[
        Optional[bool], typer.Option("--first-order/--second-order", help="First-order MAML approximation (default: second order).", show_default=False)
    ] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, help="Random seed (default: 0).")] = None,
    time_budget: Annotated[Optional[float], typer.Option(min=0.0, help="Seconds of training per cluster at most (default: 300).")] = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    lock_timeout: LockTimeoutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Meta-train one forecaster per cluster with MAML; write weights and a training report to DIR."""
    _run(
        pipeline.meta_train,
        config_path=config,
        flags={
            **_columns(id_col, time_col, value_col),
            **_runtime(device, threads),
            "lock_timeout": lock_timeout,
            "on_duplicate": on_duplicate.value if on_duplicate else None,
            "snap_tolerance": snap_tolerance,
            "k_shot": k_shot,
            "inner_steps": inner_steps,
            "inner_lr": inner_lr,
            "meta_batch_size": meta_batch_size,
            "meta_lr": meta_lr,
            "iterations": iterations,
            "first_order": first_order,
            "seed": seed,
            "time_budget_s": time_budget,
        },
        quiet=quiet,
        verbose=verbose,
        as_json=as_json,
        input=input,
        model_dir=model_dir,
        overwrite=overwrite,
    )


@app.command("daily-score")
def daily_score(
    input: InputOpt,
    model_dir: ModelDirOpt,
    output: OutputOpt,
    date: DateOpt = None,
    threshold: ThresholdOpt = None,
    max_failed_fraction: MaxFailedOpt = None,
    events: EventsOpt = None,
    fdr: FdrOpt = None,
    q_per_cluster: QPerClusterOpt = None,
    max_alerts: MaxAlertsOpt = None,
    min_abs_deviation: MinAbsOpt = None,
    min_rel_deviation: MinRelOpt = None,
    direction: DirectionOpt = None,
    min_consecutive: MinConsecutiveOpt = None,
    id_col: IdColOpt = None,
    time_col: TimeColOpt = None,
    value_col: ValueColOpt = None,
    on_duplicate: OnDuplicateOpt = None,
    snap_tolerance: SnapOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    lock_timeout: LockTimeoutOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score one calendar day: adapt each series' cluster model on its last K points, flag the day's outliers."""
    _run(
        pipeline.daily_score,
        config_path=config,
        flags={
            **_columns(id_col, time_col, value_col),
            **_runtime(device, threads),
            "lock_timeout": lock_timeout,
            "on_duplicate": on_duplicate.value if on_duplicate else None,
            "snap_tolerance": snap_tolerance,
            "threshold": threshold,
            "max_failed_fraction": max_failed_fraction,
            **_alert_flags(fdr, q_per_cluster, max_alerts, min_abs_deviation, min_rel_deviation, direction, min_consecutive),
        },
        quiet=quiet,
        verbose=verbose,
        as_json=as_json,
        input=input,
        model_dir=model_dir,
        output=output,
        events=events,
        engine=engine.value,
        ray_address=ray_address,
        date=date,
    )


@app.command("backtest")
def backtest(
    input: InputOpt,
    model_dir: ModelDirOpt,
    output: OutputOpt,
    start: Annotated[Optional[str], typer.Option("--start", help="First day, YYYY-MM-DD (default: the input's first day).")] = None,
    end: Annotated[Optional[str], typer.Option("--end", help="Last day (inclusive), YYYY-MM-DD (default: the input's last day).")] = None,
    threshold: ThresholdOpt = None,
    max_failed_fraction: MaxFailedOpt = None,
    events: EventsOpt = None,
    fdr: FdrOpt = None,
    q_per_cluster: QPerClusterOpt = None,
    max_alerts: MaxAlertsOpt = None,
    min_abs_deviation: MinAbsOpt = None,
    min_rel_deviation: MinRelOpt = None,
    direction: DirectionOpt = None,
    min_consecutive: MinConsecutiveOpt = None,
    id_col: IdColOpt = None,
    time_col: TimeColOpt = None,
    value_col: ValueColOpt = None,
    on_duplicate: OnDuplicateOpt = None,
    snap_tolerance: SnapOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    lock_timeout: LockTimeoutOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """daily-score for every day of a range, batched across days and series, into one output."""
    _run(
        pipeline.backtest,
        config_path=config,
        flags={
            **_columns(id_col, time_col, value_col),
            **_runtime(device, threads),
            "lock_timeout": lock_timeout,
            "on_duplicate": on_duplicate.value if on_duplicate else None,
            "snap_tolerance": snap_tolerance,
            "threshold": threshold,
            "max_failed_fraction": max_failed_fraction,
            **_alert_flags(fdr, q_per_cluster, max_alerts, min_abs_deviation, min_rel_deviation, direction, min_consecutive),
        },
        quiet=quiet,
        verbose=verbose,
        as_json=as_json,
        input=input,
        model_dir=model_dir,
        output=output,
        events=events,
        engine=engine.value,
        ray_address=ray_address,
        start=start,
        end=end,
    )


@app.command("evaluate")
def evaluate(
    scores: Annotated[Path, typer.Option("--scores", "-s", help="Scores parquet written by daily-score or backtest.")],
    labels: Annotated[
        Path,
        typer.Option("--labels", "-l", help="Labelled anomalies: points (unique_id, ds) or windows (unique_id, start, end) parquet."),
    ],
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Precision, recall, F1, false-alarm rate and forecast error of scores against labelled anomalies."""
    _run(pipeline.evaluate, config_path=config, flags={}, quiet=quiet, verbose=verbose, as_json=as_json, scores=scores, labels=labels)


@app.command("demo")
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", "-w", help="Folder for the sample data, the model and the scores.")] = Path("demo-run"),
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Make labelled sample data and run the whole pipeline on it in WORKDIR."""
    _run(
        pipeline.demo,
        config_path=config,
        flags=_runtime(device, threads),
        quiet=quiet,
        verbose=verbose,
        as_json=as_json,
        workdir=workdir,
        overwrite=overwrite,
    )


@app.command("plot")
def plot(
    input: InputOpt,
    scores: Annotated[Path, typer.Option("--scores", "-s", help="Scores parquet written by daily-score or backtest.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file (one --series) or folder (--top N, or several --series) to write.")],
    series: Annotated[Optional[list[str]], typer.Option("--series", help="Series id to plot (repeat for several) (default: the top anomalies).")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Without --series: draw the TOP most significant flagged series, one PNG each, into the folder --output.")] = 5,
    id_col: IdColOpt = None,
    time_col: TimeColOpt = None,
    value_col: ValueColOpt = None,
    on_duplicate: OnDuplicateOpt = None,
    snap_tolerance: SnapOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """A PNG of series with their forecast band and flagged points."""
    _run(
        pipeline.plot,
        config_path=config,
        flags={
            **_columns(id_col, time_col, value_col),
            "on_duplicate": on_duplicate.value if on_duplicate else None,
            "snap_tolerance": snap_tolerance,
        },
        quiet=quiet,
        verbose=verbose,
        as_json=as_json,
        input=input,
        scores=scores,
        output=output,
        series=series or None,
        top=top,
    )


@bench_app.command("sine")
def bench_sine(
    k_shot: Annotated[Optional[int], typer.Option(min=1, help="K used in meta-training (default: one model per evaluated K).")] = None,
    iterations: Annotated[int, typer.Option(min=0, help="Meta-training iterations (the paper: 70,000).")] = 70000,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    first_order: Annotated[bool, typer.Option("--first-order", help="First-order MAML instead of second order.")] = False,
    learn_inner_lr: Annotated[bool, typer.Option("--learn-inner-lr/--no-learn-inner-lr", help="Meta-learn the inner learning rates.")] = True,
    eval_tasks: Annotated[int, typer.Option(min=1, help="Fixed evaluation tasks (the paper's code: 600).")] = 600,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The MAML paper's sine-wave regression benchmark: MSE after 1 and 10 steps for K = 5, 10, 20."""
    _run(
        pipeline.bench_sine,
        config_path=None,
        flags=_runtime(device, threads),
        quiet=quiet,
        verbose=verbose,
        as_json=as_json,
        k_shot=k_shot,
        iterations=iterations,
        seed=seed,
        first_order=first_order,
        learn_inner_lr=learn_inner_lr,
        eval_tasks=eval_tasks,
    )


@bench_app.command("scale")
def bench_scale(
    series: Annotated[int, typer.Option("--series", min=1, help="Synthetic series to score.")] = 2_000_000,
    freq: Annotated[Freq, typer.Option("--freq", help="D (daily) or h (hourly) series.")] = Freq.D,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the synthetic data.")] = 0,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Folder for the cached data and the run (default: a folder in the system temp dir).")] = None,
    autoets_series: Annotated[int, typer.Option("--autoets-series", min=1, help="Series scored by StatsForecast AutoETS for the comparison.")] = 300,
    nice: Annotated[int, typer.Option("--nice", min=0, max=19, help="Run the steps at this nice level (shared machines).")] = 0,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """fit-clusters, meta-train and daily-score on N synthetic series: seconds, series/s and peak memory
    of each step, beside StatsForecast AutoETS on a sample of the same series."""
    _run(
        pipeline.bench_scale,
        config_path=config,
        flags=_runtime(device, threads),
        quiet=quiet,
        verbose=verbose,
        as_json=as_json,
        series=series,
        freq=freq.value,
        seed=seed,
        workdir=workdir,
        autoets_series=autoets_series,
        nice=nice,
    )


def main() -> None:
    """Console-script entry point (``maml-anomaly``)."""
    app(prog_name="maml-anomaly")


if __name__ == "__main__":
    main()
