"""The ``maml-anomaly`` command line: commands only declare options and call one command function.

Results and a one-line summary go to stdout (``--json``: one JSON object instead); logs go to
stderr. Exit codes: 0 success; 1 an error the user can fix (a MamlAnomalyError, printed as one
paragraph, no traceback); 2 bad usage; 70 any other exception (a bug: its traceback on stderr);
130/143 interrupted by SIGINT/SIGTERM (one line saying what was left). ``--json``: a failed run
also prints one JSON object {"error", "exit_code", "command"} on stdout.
"""

# no ``from __future__ import annotations``: typer reads these annotations as objects
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from maml_anomaly import __version__
from maml_anomaly.cli.endings import (
    EX_SOFTWARE,
    Interrupted,
    RunWarnings,
    command_name,
    fail,
    signals_raise,
    what_was_left,
    written_state,
)
from maml_anomaly.cli.options import (
    RUN_GROUPS,
    Engine,
    Freq,
    InputOpt,
    ModelDirOpt,
    OutputOpt,
    ScoresOpt,
    alerts_group,
    config_group,
    data_group,
    engine_group,
    lock_group,
    log_group,
    options,
    overwrite_group,
    score_group,
    timezone_group,
    torch_group,
)
from maml_anomaly.commands import demo as demo_command
from maml_anomaly.commands import evaluate as evaluate_command
from maml_anomaly.commands import fit_clusters as fit_clusters_command
from maml_anomaly.commands import meta_train as meta_train_command
from maml_anomaly.commands import plot as plot_command
from maml_anomaly.commands import report as report_command
from maml_anomaly.commands import score as score_command
from maml_anomaly.config import Config
from maml_anomaly.data.files import forget_warned_folders
from maml_anomaly.errors import MamlAnomalyError
from maml_anomaly.model_versions import recorded_columns_as_defaults
from maml_anomaly.store import jsonable

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


def _run(fn: Callable[..., dict[str, Any]], *, flags: dict[str, Any], run: dict[str, Any], **kwargs: Any) -> None:
    """Build the config, call one command function, print its summary; map every ending to an exit code.

    Our errors exit 1 (one paragraph), any other exception is a bug: its traceback and exit 70.
    SIGINT/SIGTERM end the run with one line saying what was left, and exit 130/143. With --json
    a failed run also prints one JSON object on stdout.
    """
    warned = _setup_logging(run["quiet"], run["verbose"], run["as_json"])
    command = command_name(fn)
    before = written_state(kwargs)
    try:
        with signals_raise():
            config = Config.load(run.get("config_path"), flags)
            if kwargs.get("model_dir") is not None:
                refit = fn in (fit_clusters_command.fit_clusters, meta_train_command.meta_train)  # newest clusters
                config = recorded_columns_as_defaults(config, flags, kwargs["model_dir"], refit)
            result = fn(config=config, **kwargs)
    except MamlAnomalyError as exc:
        fail(run, command, " ".join(str(exc).split()), 1)
    except Interrupted as exc:
        fail(run, command, f"interrupted by {exc.name}: {what_was_left(before, kwargs)}", 128 + exc.signum)
    except (typer.Exit, typer.Abort, typer.TyperException):  # the CLI's own control flow, not a bug
        raise
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        message = (
            f"unexpected {type(exc).__name__} in {command} (a bug, not a problem with the input): "
            f"{' '.join(str(exc).split())}. The traceback is above; please report it."
        )
        fail(run, command, message, EX_SOFTWARE)
    if run["as_json"]:
        fields = {**{k: v for k, v in result.items() if k != "summary"}, **warned.fields()}
        typer.echo(json.dumps(jsonable(fields), sort_keys=False))
    else:
        typer.echo(result.get("summary", ""))


def _setup_logging(quiet: bool, verbose: bool, as_json: bool = False) -> RunWarnings:
    """stderr logging for one run; returns the handler that gathers its warnings for --json."""
    logger = logging.getLogger("maml_anomaly")
    for handler in list(logger.handlers):
        if getattr(handler, "_maml_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)  # the current stderr (tests swap it)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler._maml_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    warned = RunWarnings()
    warned._maml_cli = True  # type: ignore[attr-defined]
    logger.addHandler(warned)
    forget_warned_folders()  # this run names a folder's skipped files again
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    # progress bars (stderr, terminals only) stay off with -q and with --json, whose reader is a program
    logging.getLogger("maml_anomaly.progress").setLevel(logging.WARNING if quiet or as_json else logging.INFO)
    return warned


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


@app.command("fit-clusters")
@options(data_group, *RUN_GROUPS, torch_group, lock_group, overwrite_group, engine_group)
def fit_clusters(
    input: InputOpt,
    model_dir: ModelDirOpt,
    min_cluster_size: Annotated[
        Optional[int], typer.Option(min=1, help="Smallest cluster; smaller groups merge (default: 50).")
    ] = None,
    max_subclusters: Annotated[
        Optional[int], typer.Option(min=1, help="Most shape sub-clusters per period group (default: 8).")
    ] = None,
    min_strength: Annotated[
        Optional[float], typer.Option(min=0.0, max=1.0, help="Least periodic strength to keep a period (default: 0.2).")
    ] = None,
    max_period: Annotated[
        Optional[int], typer.Option(min=0, help="Longest period tried, in steps; 0 = automatic (default: 0).")
    ] = None,
    *,
    flags: dict[str, Any],
    kwargs: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """Detect each series' dominant period and group the series; write DIR/clusters.parquet."""
    own = {
        "min_cluster_size": min_cluster_size,
        "max_subclusters": max_subclusters,
        "min_strength": min_strength,
        "max_period": max_period,
    }
    _run(fit_clusters_command.fit_clusters, flags={**flags, **own}, run=run, input=input, model_dir=model_dir, **kwargs)


@app.command("meta-train")
@options(data_group, *RUN_GROUPS, torch_group, lock_group, overwrite_group)
def meta_train(
    input: InputOpt,
    model_dir: ModelDirOpt,
    k_shot: Annotated[
        Optional[int],
        typer.Option(min=1, help="K: support pairs per task (and per series when scoring) (default: 24)."),
    ] = None,
    inner_steps: Annotated[
        Optional[int], typer.Option(min=0, help="Gradient steps of the inner loop (default: 5).")
    ] = None,
    inner_lr: Annotated[
        Optional[float], typer.Option(min=0.0, help="Inner learning rate alpha (default: 0.01).")
    ] = None,
    meta_batch_size: Annotated[Optional[int], typer.Option(min=1, help="Tasks per meta-update (default: 32).")] = None,
    meta_lr: Annotated[
        Optional[float], typer.Option(min=0.0, help="Outer (Adam) learning rate (default: 0.001).")
    ] = None,
    iterations: Annotated[Optional[int], typer.Option(min=0, help="Meta-updates per cluster (default: 2000).")] = None,
    first_order: Annotated[
        Optional[bool],
        typer.Option(
            "--first-order/--second-order",
            help="First-order MAML approximation (default: second order).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, help="Random seed (default: 0).")] = None,
    time_budget: Annotated[
        Optional[float], typer.Option(min=0.0, help="Seconds of training per cluster at most (default: 300).")
    ] = None,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            help="Publish the model even when some clusters could not be trained (their series score "
            "no_model); without it such a run exits 1 and the previous model keeps serving.",
        ),
    ] = False,
    *,
    flags: dict[str, Any],
    kwargs: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """Meta-train one forecaster per cluster with MAML; write weights and a training report to DIR."""
    own = {
        "k_shot": k_shot,
        "inner_steps": inner_steps,
        "inner_lr": inner_lr,
        "meta_batch_size": meta_batch_size,
        "meta_lr": meta_lr,
        "iterations": iterations,
        "first_order": first_order,
        "seed": seed,
        "time_budget_s": time_budget,
    }
    _run(
        meta_train_command.meta_train,
        flags={**flags, **own},
        run=run,
        input=input,
        model_dir=model_dir,
        allow_partial=allow_partial,
        **kwargs,
    )


SCORE_GROUPS = (
    score_group,
    alerts_group,
    data_group,
    timezone_group,
    *RUN_GROUPS,
    torch_group,
    lock_group,
    engine_group,
)


@app.command("daily-score")
@options(*SCORE_GROUPS)
def daily_score(
    input: InputOpt,
    model_dir: ModelDirOpt,
    output: OutputOpt,
    date: Annotated[
        Optional[str],
        typer.Option(
            "--date", help="Day to score, YYYY-MM-DD (default: the input's last day complete for most series)."
        ),
    ] = None,
    *,
    flags: dict[str, Any],
    kwargs: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """Score one calendar day: adapt each series' cluster model on its last K points, flag the day's outliers."""
    _run(
        score_command.daily_score,
        flags=flags,
        run=run,
        input=input,
        model_dir=model_dir,
        output=output,
        date=date,
        **kwargs,
    )


@app.command("backtest")
@options(*SCORE_GROUPS)
def backtest(
    input: InputOpt,
    model_dir: ModelDirOpt,
    output: OutputOpt,
    start: Annotated[
        Optional[str], typer.Option("--start", help="First day, YYYY-MM-DD (default: the input's first day).")
    ] = None,
    end: Annotated[
        Optional[str], typer.Option("--end", help="Last day (inclusive), YYYY-MM-DD (default: the input's last day).")
    ] = None,
    *,
    flags: dict[str, Any],
    kwargs: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """daily-score for every day of a range, batched across days and series, into one output."""
    _run(
        score_command.backtest,
        flags=flags,
        run=run,
        input=input,
        model_dir=model_dir,
        output=output,
        start=start,
        end=end,
        **kwargs,
    )


@app.command("evaluate")
@options(timezone_group, *RUN_GROUPS)
def evaluate(
    scores: ScoresOpt,
    labels: Annotated[
        Path,
        typer.Option(
            "--labels",
            "-l",
            help="Labelled anomalies: points (unique_id, ds) or windows (unique_id, start, end) parquet.",
        ),
    ],
    *,
    kwargs: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """Precision, recall, F1, false-alarm rate and forecast error of scores against labelled anomalies."""
    _run(evaluate_command.evaluate, flags={}, run=run, scores=scores, labels=labels, **kwargs)


@app.command("demo")
@options(*RUN_GROUPS, torch_group, overwrite_group)
def demo(
    workdir: Annotated[
        Path, typer.Option("--workdir", "-w", help="Folder for the sample data, the model and the scores.")
    ] = Path("demo-run"),
    *,
    flags: dict[str, Any],
    kwargs: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """Make labelled sample data and run the whole pipeline on it in WORKDIR."""
    _run(demo_command.demo, flags=flags, run=run, workdir=workdir, **kwargs)


@app.command("plot")
@options(data_group, timezone_group, *RUN_GROUPS)
def plot(
    input: InputOpt,
    scores: ScoresOpt,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="PNG file (one --series) or folder (--top N, or several --series) to write."
        ),
    ],
    series: Annotated[
        Optional[list[str]],
        typer.Option("--series", help="Series id to plot (repeat for several) (default: the top anomalies)."),
    ] = None,
    top: Annotated[
        int,
        typer.Option(
            "--top",
            min=1,
            help="Without --series: draw the TOP most significant flagged series, one PNG each, into the folder --output.",
        ),
    ] = 5,
    *,
    flags: dict[str, Any],
    kwargs: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """A PNG of series with their forecast band and flagged points."""
    _run(
        plot_command.plot,
        flags=flags,
        run=run,
        input=input,
        scores=scores,
        output=output,
        series=series or None,
        top=top,
        **kwargs,
    )


@app.command("report")
@options(data_group, *RUN_GROUPS)
def report(
    scores: ScoresOpt,
    input: InputOpt,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="HTML file to write (one self-contained file; atomically).")
    ],
    events: Annotated[
        Optional[Path],
        typer.Option("--events", help="Events parquet of the same run (default: derived from the scores)."),
    ] = None,
    incidents: Annotated[
        Optional[Path],
        typer.Option("--incidents", help="Incidents parquet of the same run (default: derived from the events)."),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=0, help="Events charted, most severe first.")] = 10,
    timezone: Annotated[
        Optional[str],
        typer.Option("--timezone", help="Show times in this IANA zone, e.g. Europe/Berlin (default: UTC, as stored)."),
    ] = None,
    *,
    flags: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """The morning view of a scoring run: one HTML file with the summary, incidents, top events and their charts."""
    _run(
        report_command.report,
        flags=flags,
        run=run,
        scores=scores,
        input=input,
        output=output,
        events=events,
        incidents=incidents,
        top=top,
        timezone=timezone,
    )


@bench_app.command("sine")
@options(torch_group, log_group)
def bench_sine(
    k_shot: Annotated[
        Optional[int], typer.Option(min=1, help="K used in meta-training (default: one model per evaluated K).")
    ] = None,
    iterations: Annotated[int, typer.Option(min=0, help="Meta-training iterations (the paper: 70,000).")] = 70000,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    first_order: Annotated[
        bool, typer.Option("--first-order", help="First-order MAML instead of second order.")
    ] = False,
    learn_inner_lr: Annotated[
        bool, typer.Option("--learn-inner-lr/--no-learn-inner-lr", help="Meta-learn the inner learning rates.")
    ] = True,
    eval_tasks: Annotated[int, typer.Option(min=1, help="Fixed evaluation tasks (the paper's code: 600).")] = 600,
    *,
    flags: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """The MAML paper's sine-wave regression benchmark: MSE after 1 and 10 steps for K = 5, 10, 20."""
    from maml_anomaly.benchmarks.commands import bench_sine as command  # benchmarks: reached only from here

    _run(
        command,
        flags=flags,
        run=run,
        k_shot=k_shot,
        iterations=iterations,
        seed=seed,
        first_order=first_order,
        learn_inner_lr=learn_inner_lr,
        eval_tasks=eval_tasks,
    )


@bench_app.command("scale")
@options(config_group, torch_group, log_group)
def bench_scale(
    series: Annotated[int, typer.Option("--series", min=1, help="Synthetic series to score.")] = 2_000_000,
    freq: Annotated[Freq, typer.Option("--freq", help="D (daily) or h (hourly) series.")] = Freq.D,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the synthetic data.")] = 0,
    workdir: Annotated[
        Optional[Path],
        typer.Option(
            "--workdir", help="Folder for the cached data and the run (default: a folder in the system temp dir)."
        ),
    ] = None,
    autoets_series: Annotated[
        int, typer.Option("--autoets-series", min=1, help="Series scored by StatsForecast AutoETS for the comparison.")
    ] = 300,
    nice: Annotated[
        int, typer.Option("--nice", min=0, max=19, help="Run the steps at this nice level (shared machines).")
    ] = 0,
    engine: Annotated[
        Engine,
        typer.Option("--engine", help="ray: daily-score also on Ray, after the local engine, in the same run."),
    ] = Engine.local,
    *,
    flags: dict[str, Any],
    run: dict[str, Any],
) -> None:
    """fit-clusters, meta-train and daily-score on N synthetic series: seconds, series/s and peak memory
    of each step, beside StatsForecast AutoETS on a sample of the same series."""
    from maml_anomaly.benchmarks.commands import bench_scale as command  # benchmarks: reached only from here

    _run(
        command,
        flags=flags,
        run=run,
        series=series,
        freq=freq.value,
        seed=seed,
        workdir=workdir,
        autoets_series=autoets_series,
        nice=nice,
        engine=engine.value,
    )


def main() -> None:
    """Console-script entry point (``maml-anomaly``); a usage error under --json also prints its JSON line."""
    try:
        app(prog_name="maml-anomaly")
    except SystemExit as exc:
        if exc.code == 2 and "--json" in sys.argv[1:]:
            command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
            error = "bad usage: see the message on stderr (unknown option, missing or out-of-range value)"
            print(json.dumps({"error": error, "exit_code": 2, "command": command}), flush=True)
        raise


if __name__ == "__main__":
    main()
