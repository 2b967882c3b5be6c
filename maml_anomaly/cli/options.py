"""Option groups of the command line, each declared once and attached to commands with :func:`options`.

A group is a function whose parameters are typer options and which returns what they mean:
``flags`` (configuration keys, see maml_anomaly.config), ``kwargs`` (arguments of the command
function) and ``run`` (how the CLI runs it: config file, log level, JSON output).
"""

# no ``from __future__ import annotations``: typer reads these annotations as objects
import functools
import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

DATA_PANEL = "Data"
RUN_PANEL = "Run"
ALERTS_PANEL = "Alerts (each rule only removes flags; see docs/alerts.md)"


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


class Direction(str, Enum):
    both = "both"
    up = "up"
    down = "down"


# -- options every command names the same way --------------------------------------------------------

InputOpt = Annotated[
    Path,
    typer.Option(
        "--input",
        "-i",
        help="Long-format parquet: a file or a directory of parquet files (hive partitions allowed).",
        rich_help_panel=DATA_PANEL,
    ),
]
ModelDirOpt = Annotated[
    Path, typer.Option("--model-dir", "-m", help="The model directory (made by fit-clusters, completed by meta-train).")
]
OutputOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Scores parquet to write (atomically; replaced on rerun).")
]
ScoresOpt = Annotated[Path, typer.Option("--scores", "-s", help="Scores parquet written by daily-score or backtest.")]


# -- groups ------------------------------------------------------------------------------------------


def data_group(
    id_col: Annotated[
        Optional[str],
        typer.Option("--id-col", help="Series id column (default: unique_id).", rich_help_panel=DATA_PANEL),
    ] = None,
    time_col: Annotated[
        Optional[str], typer.Option("--time-col", help="Timestamp column (default: ds).", rich_help_panel=DATA_PANEL)
    ] = None,
    value_col: Annotated[
        Optional[str], typer.Option("--value-col", help="Value column (default: y).", rich_help_panel=DATA_PANEL)
    ] = None,
    on_duplicate: Annotated[
        Optional[OnDuplicate],
        typer.Option(
            "--on-duplicate",
            help="Rows sharing (id, timestamp): error (default), or keep the first / last, or their mean.",
            rich_help_panel=DATA_PANEL,
        ),
    ] = None,
    snap_tolerance: Annotated[
        Optional[float],
        typer.Option(
            "--snap-tolerance",
            min=0.0,
            max=0.5,
            help="Move rows within this fraction of the step onto their nearest grid point; "
            "0 = exact grid only (default: 0).",
            rich_help_panel=DATA_PANEL,
        ),
    ] = None,
) -> dict[str, Any]:
    """The input's columns and how rows are read."""
    return {
        "flags": {
            "id_col": id_col,
            "time_col": time_col,
            "value_col": value_col,
            "on_duplicate": on_duplicate.value if on_duplicate else None,
            "snap_tolerance": snap_tolerance,
        }
    }


def torch_group(
    device: Annotated[
        Optional[Device],
        typer.Option(
            "--device", help="auto (cuda when available), cpu or cuda (default: auto).", rich_help_panel=RUN_PANEL
        ),
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(
            "--threads",
            min=1,
            help="Torch threads (default: 1, often fastest on small cores).",
            rich_help_panel=RUN_PANEL,
        ),
    ] = None,
) -> dict[str, Any]:
    """Where and on how many threads torch runs."""
    return {"flags": {"device": device.value if device else None, "threads": threads}}


def lock_group(
    lock_timeout: Annotated[
        Optional[float],
        typer.Option(
            "--lock-timeout",
            min=0.0,
            help="Seconds to wait when another run holds the model directory or output (default: 0, stop at once).",
            rich_help_panel=RUN_PANEL,
        ),
    ] = None,
) -> dict[str, Any]:
    """Waiting for another run's lock."""
    return {"flags": {"lock_timeout": lock_timeout}}


def overwrite_group(
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace what a previous run wrote there.", rich_help_panel=RUN_PANEL)
    ] = False,
) -> dict[str, Any]:
    return {"kwargs": {"overwrite": overwrite}}


def engine_group(
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help='Where the per-series work runs: local (this process) or ray (Ray Data workers; pip install "maml-anomaly[ray]").',
            rich_help_panel=RUN_PANEL,
        ),
    ] = Engine.local,
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            "--ray-address",
            help="With --engine ray: the Ray cluster to join, e.g. ray://head:10001 or auto (default: start a local one).",
            rich_help_panel=RUN_PANEL,
        ),
    ] = None,
) -> dict[str, Any]:
    """Which engine runs the per-batch work."""
    return {"kwargs": {"engine": engine.value, "ray_address": ray_address}}


def config_group(
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config", "-c", help="TOML configuration file; command-line flags override it.", rich_help_panel=RUN_PANEL
        ),
    ] = None,
) -> dict[str, Any]:
    return {"run": {"config_path": config}}


def log_group(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.", rich_help_panel=RUN_PANEL)
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logs on stderr.", rich_help_panel=RUN_PANEL)
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object on stdout instead of the one-line summary.", rich_help_panel=RUN_PANEL
        ),
    ] = False,
) -> dict[str, Any]:
    return {"run": {"quiet": quiet, "verbose": verbose, "as_json": as_json}}


def score_group(
    threshold: Annotated[
        Optional[float],
        typer.Option("--threshold", min=0.0, help="Flag points whose score is at or above this (default: 3.0)."),
    ] = None,
    max_failed_fraction: Annotated[
        Optional[float],
        typer.Option(
            "--max-failed-fraction",
            min=0.0,
            max=1.0,
            help="Fail (exit 1, scores still written) when more than this fraction of the expected series "
            "failed: not scored, absent or off their grid (default: 0.05).",
        ),
    ] = None,
    events: Annotated[
        Optional[Path],
        typer.Option(
            "--events",
            help="Also write the events (runs of consecutive flagged points) to this parquet file.",
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
    incidents: Annotated[
        Optional[Path],
        typer.Option(
            "--incidents",
            help="Also write the incidents (events of many series starting together, one row each) to this parquet file.",
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
    report: Annotated[
        Optional[Path],
        typer.Option(
            "--report",
            help="Also write the run's one-file HTML report (summary, incidents, top events with charts) here.",
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
) -> dict[str, Any]:
    """daily-score and backtest: the flag threshold, the failure budget, the events, incidents and report files."""
    return {
        "flags": {"threshold": threshold, "max_failed_fraction": max_failed_fraction},
        "kwargs": {"events": events, "incidents": incidents, "report": report},
    }


def alerts_group(
    fdr: Annotated[
        Optional[float],
        typer.Option(
            "--fdr",
            min=0.0,
            max=1.0,
            help="Keep a flag only if its Benjamini-Hochberg q_value is at most this (default: 0 = off).",
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
    q_per_cluster: Annotated[
        Optional[bool],
        typer.Option(
            "--q-per-cluster/--q-per-run",
            help="Benjamini-Hochberg q-values per cluster instead of over the whole run (default: per run).",
            show_default=False,
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
    max_alerts: Annotated[
        Optional[int],
        typer.Option(
            "--max-alerts",
            min=0,
            help="Alert budget: keep the N most significant flagged points (default: 0 = no budget).",
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
    min_abs_deviation: Annotated[
        Optional[float],
        typer.Option(
            "--min-abs-deviation",
            min=0.0,
            help="Drop flags with |y - y_hat| below this, in the series' units (default: 0).",
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
    min_rel_deviation: Annotated[
        Optional[float],
        typer.Option(
            "--min-rel-deviation",
            min=0.0,
            help="Drop flags with |y - y_hat| / |y_hat| below this, e.g. 0.1 = 10% (default: 0).",
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
    direction: Annotated[
        Optional[Direction],
        typer.Option(
            "--direction",
            help="Keep flags above the forecast (up), below it (down) or both (default: both).",
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
    min_consecutive: Annotated[
        Optional[int],
        typer.Option(
            "--min-consecutive",
            min=1,
            help="Keep only runs of at least N consecutive flagged grid points (default: 1).",
            rich_help_panel=ALERTS_PANEL,
        ),
    ] = None,
) -> dict[str, Any]:
    """The rules that turn flags into alerts."""
    return {
        "flags": {
            "fdr": fdr,
            "q_per_cluster": q_per_cluster,
            "max_alerts": max_alerts,
            "min_abs_deviation": min_abs_deviation,
            "min_rel_deviation": min_rel_deviation,
            "direction": direction.value if direction else None,
            "min_consecutive": min_consecutive,
        }
    }


def timezone_group(
    timezone: Annotated[
        Optional[str],
        typer.Option(
            "--timezone",
            help="IANA timezone, e.g. Europe/Berlin: days (--date, --start, --end, the default day) are its "
            "calendar days (23 or 25 hours across a DST change) and outputs show its local times (default: UTC).",
            rich_help_panel=DATA_PANEL,
        ),
    ] = None,
) -> dict[str, Any]:
    """The timezone whose calendar days a command works in."""
    return {"kwargs": {"timezone": timezone}}


RUN_GROUPS = (config_group, log_group)  # every command that reads a config file and logs


def options(*groups: Callable[..., dict[str, Any]]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Add the parameters of ``groups`` to a command; it receives what they mean as ``flags``, ``kwargs``, ``run``.

    The command's own parameters come first in its help, then each group's in order.
    """

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command).parameters
        params = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for n, p in own.items()
            if n not in ("flags", "kwargs", "run")
        ]
        owner: dict[str, Callable[..., dict[str, Any]]] = {}
        for group in groups:
            for p in inspect.signature(group).parameters.values():
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                owner[p.name] = group

        @functools.wraps(command)
        def run(**values: Any) -> None:
            meant: dict[str, dict[str, Any]] = {"flags": {}, "kwargs": {}, "run": {}}
            for group in groups:
                mine = {name: values.pop(name) for name in list(values) if owner.get(name) is group}
                for target, entries in group(**mine).items():
                    meant[target].update(entries)
            return command(**values, **{k: v for k, v in meant.items() if k in own})

        del run.__wrapped__  # typer must read the signature below, not the command's own
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return wrap
