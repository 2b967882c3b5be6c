"""What every command shares: the input as one panel, torch setup, days and paths, locks, progress, summaries."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from maml_anomaly.config import Config
from maml_anomaly.data.panel import Panel, build_panel
from maml_anomaly.data.read import log_read, read_long
from maml_anomaly.data.schemas import SCORE_COLUMNS, ReadReport
from maml_anomaly.engines.local import tune_allocator
from maml_anomaly.errors import ConfigError, InputError
from maml_anomaly.locking import command_locks
from maml_anomaly.store import is_model_dir

log = logging.getLogger("maml_anomaly.commands")

DAY = np.timedelta64(1, "D")


@dataclass(frozen=True)
class LoadedInput:
    """A validated input: the long frame (sorted, deduplicated), its panel and what reading found."""

    frame: pd.DataFrame  # unique_id, ds, y sorted by (unique_id, ds)
    panel: Panel
    report: ReadReport

    @property
    def window(self) -> dict[str, Any]:
        """The data window, as stored in the manifest."""
        ds = self.frame["ds"]
        return {
            "start": ds.min(),
            "end": ds.max(),
            "rows": self.report.rows,
            "series": self.report.series,
        }


def load_input(config: Config, input: Path) -> LoadedInput:
    """Read, validate and build the panel of an input (InputError on anything wrong)."""
    frame = read_long(input, config.columns, config.input.on_duplicate)
    panel, report = build_panel(frame, config.input.snap_tolerance)
    log_read(input, report)
    if report.off_grid:
        log.warning(
            "%d rows lie off their series' regular grid; they are kept (Panel.off_grid) and reported",
            report.off_grid,
        )
    return LoadedInput(frame=frame, panel=panel, report=report)


def setup_torch(config: Config) -> str:
    """Set torch's thread count and resolve the device ("auto" -> cuda when available)."""
    import torch

    tune_allocator()
    torch.set_num_threads(config.runtime.threads)
    device = config.runtime.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for, but torch sees no CUDA device on this machine. Use --device cpu (or auto)."
        )
    log.debug("torch: device %s, %d thread(s)", device, config.runtime.threads)
    return device


def parse_day(value: str, option: str) -> np.datetime64:
    """A YYYY-MM-DD option as datetime64[ns] midnight (InputError with the fix otherwise)."""
    try:
        day = pd.Timestamp(pd.to_datetime(value, format="%Y-%m-%d"))
    except (ValueError, TypeError):
        raise InputError(f"{option} expects a date as YYYY-MM-DD; found {value!r}.") from None
    return np.datetime64(day.as_unit("ns").to_datetime64(), "ns")


def check_output(
    output: Path,
    option: str = "--output",
    *,
    inputs: Iterable[Path | None] = (),
    model_dir: Path | None = None,
    folder: bool = False,
) -> None:
    """Refuse, before anything is written, an output that cannot be made or would destroy data.

    ``folder``: the output is a folder of files (plot), not one file. The output must not be an
    input file, lie inside an input folder (the next run would read it back as input) or inside a
    model directory (``model_dir`` or any folder above the output holding our manifest.json).
    """
    output = Path(output)
    if not folder and output.is_dir():
        raise InputError(f"{option} {output} is a directory; expected the path of a parquet file to write.")
    parent = output.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {output}: {parent} is a file, so the folder cannot be made.")
    check_output_location(output, option, inputs=inputs, model_dir=model_dir)


def check_output_location(
    output: Path, option: str, *, inputs: Iterable[Path | None] = (), model_dir: Path | None = None
) -> None:
    """InputError when ``output`` is an input file, lies in an input folder or in a model directory."""
    target = Path(output).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source:
            raise InputError(
                f"{option} {output} is the input file {given}; writing it would replace the input data. "
                f"Give {option} a path of its own, outside the input."
            )
        if source.is_dir() and target.is_relative_to(source):
            raise InputError(
                f"{option} {output} lies inside the input folder {given}; the next run would read it back "
                f"as input (and fail on duplicate rows). Give {option} a path outside {given}."
            )
    model = _enclosing_model_dir(target, model_dir)
    if model is not None:
        raise InputError(
            f"{option} {output} lies inside the model directory {model}; writing there would damage the "
            f"model (its manifest checks every file). Give {option} a path outside {model}."
        )


def check_model_dir_apart(model_dir: Path, input: Path) -> None:
    """InputError when a model directory to be written and the input would overlap."""
    target, source = Path(model_dir).resolve(), Path(input).resolve()
    if source.is_dir() and target.is_relative_to(source):
        raise InputError(
            f"--model-dir {model_dir} lies inside the input folder {input}; its files would be read back "
            "as input by the next run. Choose a --model-dir outside the input."
        )
    if source.is_relative_to(target):
        raise InputError(
            f"--input {input} lies inside the model directory {model_dir}, which this command rewrites "
            "(and --overwrite clears). Keep the input outside the model directory."
        )


def _enclosing_model_dir(target: Path, model_dir: Path | None) -> Path | None:
    """The model directory holding ``target`` (the given one, or any folder above with our manifest)."""
    if model_dir is not None and target.is_relative_to(Path(model_dir).resolve()):
        return Path(model_dir)
    for folder in (target, *target.parents):
        if is_model_dir(folder):
            return folder
    return None


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal; a no-op otherwise.

    Use as ``with progress("scoring", n_batches) as advance: ... advance(1)``.
    """
    if not show_progress():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


PROGRESS_LOG = logging.getLogger("maml_anomaly.progress")  # the CLI turns it off with -q and --json


def show_progress() -> bool:
    """Progress bars go to stderr only when it is a terminal and progress is on (not -q, not --json)."""
    return sys.stderr.isatty() and PROGRESS_LOG.isEnabledFor(logging.INFO)


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Bars on stderr, one per piece of work, with an ETA; no-ops when :func:`show_progress` is off.

    Use as ``with progress_bars() as new_bar: update = new_bar("cluster a", 1500); update(done)``.
    """
    if not show_progress():
        yield lambda description, total: lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bars:

        def new_bar(description: str, total: int) -> Callable[[int], None]:
            task = bars.add_task(description, total=total)
            return lambda done: bars.update(task, completed=done)

        yield new_bar


def locked(*, model_shared: bool, output: bool = False):
    """Run a pipeline function holding its model-directory lock (shared for readers) and output lock.

    A second run on the same model directory or output waits ``config.runtime.lock_timeout``
    seconds at most, then stops with a message naming the holder (maml_anomaly.locking).
    """

    def wrap(fn):
        @functools.wraps(fn)
        def run(*, config: Config, **kwargs: Any) -> dict[str, Any]:
            model_dir = kwargs["model_dir"]
            guard_paths(kwargs, writes_model=not model_shared)  # before a lock file is made anywhere
            with command_locks(
                model_dir=None if model_shared and not Path(model_dir).is_dir() else model_dir,
                model_shared=model_shared,
                output=kwargs["output"] if output else None,
                timeout=config.runtime.lock_timeout,
                command=fn.__name__.replace("_", "-"),
            ):
                return fn(config=config, **kwargs)

        return run

    return wrap


OUTPUT_OPTIONS = {"output": "--output", "events": "--events", "incidents": "--incidents", "report": "--report"}


def guard_paths(kwargs: dict[str, Any], *, writes_model: bool) -> None:
    """Check a command's outputs (any keyword of OUTPUT_OPTIONS) and model directory against its input."""
    inputs = [kwargs.get("input")]
    for name, option in OUTPUT_OPTIONS.items():
        if kwargs.get(name) is not None:
            check_output_location(kwargs[name], option, inputs=inputs, model_dir=kwargs.get("model_dir"))
    if writes_model and kwargs.get("input") is not None:
        check_model_dir_apart(kwargs["model_dir"], kwargs["input"])


def command_result(text: str, **fields: Any) -> dict[str, Any]:
    """A command's result: the one-line human summary and the JSON fields."""
    return {"summary": text, **fields}


def parquet_columns(path: Path, option: str) -> list[str]:
    if not path.exists():
        raise InputError(f"{option} {path} does not exist; expected a parquet file.")
    try:
        return list(pads.dataset(str(path), format="parquet").schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"could not read {option} {path} as parquet ({exc}); expected a complete parquet file."
        ) from None


def read_parquet_frame(path: Path, option: str, required: list[str]) -> pd.DataFrame:
    names = parquet_columns(path, option)
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(
            f"{option} {path} lacks the columns {missing}; found {names}. Expected a scores file "
            "written by daily-score or backtest."
        )
    try:
        return pads.dataset(str(path), format="parquet").to_table().to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"could not read {option} {path} as parquet ({exc}).") from None


def read_scores_frame(path: Path, option: str = "--scores") -> pd.DataFrame:
    """A scores file written by daily-score or backtest, its column types checked (InputError otherwise).

    Timezone-aware ``ds`` (a scores file rewritten by another tool) is converted to naive UTC.
    """
    frame = read_parquet_frame(path, option, list(SCORE_COLUMNS))
    schema = pads.dataset(str(path), format="parquet").schema
    for name, expected in SCORE_COLUMNS.items():
        found = schema.field(name).type
        if pa.types.is_dictionary(found):
            found = found.value_type
        if not _score_type_ok(expected, found):
            raise InputError(
                f"{option} {path}: column {name!r} has type {found}; expected {expected or 'string or integer ids'}. "
                "Expected a scores file written by daily-score or backtest, unchanged."
            )
    if isinstance(frame["ds"].dtype, pd.DatetimeTZDtype):
        frame["ds"] = frame["ds"].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


def _score_type_ok(expected: pa.DataType | None, found: pa.DataType) -> bool:
    if pa.types.is_null(found):  # a column without a single value (an empty file written by pandas)
        return True
    text = pa.types.is_string(found) or pa.types.is_large_string(found) or pa.types.is_string_view(found)
    if expected is None:
        return text or pa.types.is_integer(found)
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(found)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(found) or pa.types.is_integer(found)
    if pa.types.is_string(expected):
        return text
    return found == expected
