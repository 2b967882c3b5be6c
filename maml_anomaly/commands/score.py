"""daily-score and backtest: batches of whole series scored on an engine, then the run's alerts and one atomic publish.

The run: the days to score from the input's time bounds (no rows read), the history the models
need before them (:func:`history_span`), the engine maps :func:`score_and_spill` over batches of
whole series (each batch scored by :func:`~maml_anomaly.batch.score_batch` and its rows written
to a part file of a temporary folder, on whichever machine scored it), then here: the alerts over
the whole run (q-values, rules, budget, events), the failure budget, the scores and events files
written atomically, the summary.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maml_anomaly.batch import FAILED_STATUSES, ReadTotals, ScoredBatch, ScoredCodec, Scorer, score_batch, scores_table
from maml_anomaly.commands.common import DAY, check_output, command_result, locked, parse_day, progress, setup_torch
from maml_anomaly.commands.report import check_view_outputs, finish_view, run_view
from maml_anomaly.config import Config
from maml_anomaly.core.alerts import apply_alerts, events_schema, summary_text, top_events
from maml_anomaly.core.scoring import STATUS_OK
from maml_anomaly.core.tasks import recent_len
from maml_anomaly.data.stream import iter_series_frames, time_bounds
from maml_anomaly.data.write import write_parquet_atomic
from maml_anomaly.engines import Engine, Source, get_engine
from maml_anomaly.engines.local import LocalEngine, cpu_processes
from maml_anomaly.errors import ConfigError, InputError, MamlAnomalyError, ModelDirError
from maml_anomaly.store import CLUSTERER, ClusterIndex, ModelDir, load_models, open_trained

log = logging.getLogger("maml_anomaly.commands")

HISTORY_MARGIN_STEPS = 2  # grid steps read beyond the lags + K support points a task needs
NS_PER_DAY = 86_400 * 10**9
STREAM_ROWS = 1_000_000  # input rows per batch of whole series (cut at the first row-group boundary past it)


@locked(model_shared=True, output=True)
def daily_score(
    *,
    config: Config,
    input: Path,
    model_dir: Path,
    output: Path,
    date: str | None = None,
    events: Path | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    incidents: Path | None = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """Score one calendar day (default: the input's last day); write the scores atomically."""
    day = parse_day(date, "--date") if date is not None else None
    check_output(output)
    _check_events_path(events, output)
    check_view_outputs(output, events, incidents, report)
    runner = _engine(engine, config, ray_address)
    md = open_trained(model_dir)
    device = _device(config, runner)
    return score_days(
        config,
        md,
        input,
        output,
        device,
        runner,
        first=day,
        last=day,
        date_option=date,
        events=events,
        incidents=incidents,
        report=report,
    )


@locked(model_shared=True, output=True)
def backtest(
    *,
    config: Config,
    input: Path,
    model_dir: Path,
    output: Path,
    start: str | None = None,
    end: str | None = None,
    events: Path | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    incidents: Path | None = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """daily-score for every day of [start, end], batched across days and series, one output."""
    first = parse_day(start, "--start") if start is not None else None
    last = parse_day(end, "--end") if end is not None else None
    if first is not None and last is not None and first > last:
        raise InputError(f"--start {start} is after --end {end}; give a start on or before the end.")
    check_output(output)
    _check_events_path(events, output)
    check_view_outputs(output, events, incidents, report)
    runner = _engine(engine, config, ray_address)
    md = open_trained(model_dir)
    device = _device(config, runner)
    return score_days(
        config,
        md,
        input,
        output,
        device,
        runner,
        first=first,
        last=last,
        date_option=None,
        backtest=True,
        events=events,
        incidents=incidents,
        report=report,
    )


def _engine(engine: str, config: Config, address: str | None) -> Engine:
    return get_engine(engine, config, address=address)  # checks the engine (and that Ray is there) first


def _device(config: Config, runner: Engine) -> str:
    if runner.name == "ray" and config.runtime.device == "cuda":
        raise ConfigError(
            "--device cuda is not supported with --engine ray yet: Ray workers score on CPUs. Use "
            "--device cpu (or auto) with --engine ray, or --engine local to score on this machine's GPU."
        )
    device = setup_torch(config)
    if isinstance(runner, LocalEngine):
        runner.processes = cpu_processes(config.runtime.threads, device)
    return "cpu" if runner.name == "ray" else device  # Ray workers are CPU actors, whatever the driver has


@dataclass(frozen=True)
class ScoreTask:
    """What every batch of a scoring run shares (picklable: sent to every worker)."""

    scorer: Scorer
    first: np.datetime64
    last: np.datetime64
    spill_dir: str  # folder the batches' score rows are written to

    def for_batch(self, frame: pd.DataFrame) -> ScoreTask:
        return dataclasses.replace(self, scorer=self.scorer.for_batch(frame))


def score_and_spill(task: ScoreTask, frame: pd.DataFrame) -> ScoredBatch:
    """score_batch, then its rows written to a part file of the run's folder (only counts travel back)."""
    scored = score_batch(task.scorer, frame, task.first, task.last)
    part = Path(task.spill_dir) / f"part-{uuid.uuid4().hex}.parquet"
    try:
        with pq.ParquetWriter(part, scored.rows.schema, compression="none") as writer:
            writer.write_table(scored.rows)
    except OSError as exc:
        raise MamlAnomalyError(
            f"could not write a batch's scores to the temporary folder {task.spill_dir} ({exc}). Free space "
            "there, or point TMPDIR at a folder with room for the run's scores."
        ) from None
    return dataclasses.replace(scored, rows=None, part=str(part))


def score_days(
    config: Config,
    md: ModelDir,
    input: Path,
    output: Path,
    device: str,
    runner: Engine,
    *,
    first: np.datetime64 | None,
    last: np.datetime64 | None,
    date_option: str | None,
    backtest: bool = False,
    events: Path | None = None,
    incidents: Path | None = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """Score the days [first, last] reading the input in batches of whole series on ``runner``.

    ``first``/``last`` None: the input's last day (daily-score) or its first/last day (backtest).
    Only the history the models need is read; only the scored points are kept, on disk, until
    the alerts step, which needs the whole run for its q-values and alert budget.
    """
    started = time.perf_counter()
    data_first, data_last = (
        v.astype("datetime64[D]").astype("datetime64[ns]") for v in time_bounds(input, config.columns)
    )
    if backtest:
        first = data_first if first is None else max(first, data_first)
        last = data_last if last is None else min(last, data_last)
    elif first is None:
        first = last = data_last
    if first > data_last or last < data_first:  # nothing to score: say so before reading anything
        raise _no_data_error(date_option, first, last, data_first, data_last)
    try:
        names, models = load_models(md, config.score.inner_steps_at_scoring)
    except ModelDirError:
        # a bad input is reported before a missing model (fix the data first): check a batch
        next(iter_series_frames(input, config.columns, config.input.on_duplicate, batch_rows=STREAM_ROWS), None)
        raise
    lookup = ClusterIndex.load(md)
    span = history_span(models, lookup.max_step_ns)
    ds_min = None if span is None else first - span
    log.info(
        "scoring %s%s; reading %s",
        first.astype("datetime64[D]"),
        "" if first == last else f" to {last.astype('datetime64[D]')}",
        "all history" if ds_min is None else f"from {ds_min.astype('datetime64[D]')}",
    )
    clusterer = md.load_json(CLUSTERER) if md.has(CLUSTERER) else None
    scorer = Scorer(config, device, str(md.path), names, models, lookup, clusterer, lookup.example_ids())
    source = Source(Path(input), config.columns, config.input.on_duplicate, ds_min, last + DAY, STREAM_ROWS)
    totals = ReadTotals()
    counts: dict[str, int] = {}
    series = failed_series = 0
    parts: list[str] = []
    spill = Path(tempfile.mkdtemp(prefix="maml-anomaly-scores-"))  # removed whatever happens
    try:
        task = ScoreTask(scorer, first, last, str(spill))
        with progress("scoring", None) as advance:
            for scored in runner.map_batches(score_and_spill, task, source, ScoredCodec()):
                totals.add_counts(scored.report.to_dict(), scored.start, scored.end)
                parts.append(scored.part)
                series += scored.n_series
                failed_series += scored.failed_series
                for k, v in scored.counts.items():
                    counts[k] = counts.get(k, 0) + v
                advance(1)
        log.info("read %s: %s", input, totals.summary())
        if sum(counts.values()) == 0:
            raise _no_data_error(date_option, first, last, data_first, data_last)
        table = pa.concat_tables([pq.read_table(p) for p in parts])
        if runner.name != "local":  # groups come back in any order: the local engine's order is (unique_id, ds)
            table = table.sort_by([("unique_id", "ascending"), ("ds", "ascending")])
        alerted = _publish(table, config, output, events)
        view = run_view(alerted, table.column("step"), first, last, incidents)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    _fail_over_budget(failed_series, series, counts, config.score.max_failed_fraction, output)
    result = _run_summary(config, alerted, events, output, first, last, series, counts, started)
    return finish_view(result, view, alerted, config, input, report)


def _publish(table: pa.Table, config: Config, output: Path, events: Path | None) -> Any:
    """Alerts over the whole run (q-values, rules, budget, events), then the scores and events files."""
    scores = table.to_pandas()
    del table  # the frame holds the rows now
    step = scores.pop("step").to_numpy()
    alerted = apply_alerts(scores, config.alerts, step=step, threshold=config.score.threshold)
    write_parquet_atomic(scores_table(alerted.scores), output)
    if events is not None:
        id_type = pa.int64() if alerted.scores["unique_id"].dtype.kind in "iu" else pa.string()
        write_parquet_atomic(
            pa.Table.from_pandas(alerted.events, schema=events_schema(id_type), preserve_index=False), events
        )
    return alerted


def _run_summary(
    config: Config,
    alerted: Any,
    events: Path | None,
    output: Path,
    first: np.datetime64,
    last: np.datetime64,
    series: int,
    counts: dict[str, int],
    started: float,
) -> dict[str, Any]:
    """The summary of a daily-score / backtest run, whichever engine scored it."""
    counts = dict(sorted(counts.items()))
    points = len(alerted.scores)
    ok = counts.get(STATUS_OK, 0)
    anomalies = int(alerted.scores["is_anomaly"].sum())
    seconds = time.perf_counter() - started
    days = f"{first.astype('datetime64[D]')}" + ("" if first == last else f" to {last.astype('datetime64[D]')}")
    not_ok = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != STATUS_OK) or "none"
    return command_result(
        f"scored {points:,} points of {series:,} series on {days}: {anomalies:,} anomalies; {ok:,} ok, "
        f"{points - ok:,} not scored ({not_ok}); wrote {output} in {seconds:.1f} s\n" + summary_text(alerted),
        **_alert_fields(alerted, events),
        output=str(output),
        first_day=str(first.astype("datetime64[D]")),
        last_day=str(last.astype("datetime64[D]")),
        points=points,
        series=series,
        anomalies=anomalies,
        statuses=counts,
        threshold=config.score.threshold,
        seconds=round(seconds, 2),
    )


def _check_events_path(events: Path | None, output: Path) -> None:
    """--events names a parquet file other than the scores output."""
    if events is None:
        return
    if events.is_dir():
        raise InputError(f"--events {events} is a directory; expected the path of a parquet file to write.")
    if events.resolve() == output.resolve():
        raise InputError(f"--events {events} is the same file as --output; give the events their own parquet path.")


def _alert_fields(alerted: Any, events: Path | None) -> dict[str, Any]:
    """JSON summary fields of the alerts step: counts and the top events by severity."""
    top = top_events(alerted.events, 10)
    return {
        "alerts": alerted.counts,
        "events": str(events) if events else None,
        "top_events": top.to_dict(orient="records"),
    }


def _fail_over_budget(failed: int, series: int, counts: dict[str, int], limit: float, output: Path) -> None:
    """Raise (the scores are already written) when more than ``limit`` of ``series`` failed."""
    if series == 0 or failed / series <= limit:
        return
    shown = ", ".join(f"{k} {counts[k]:,} points" for k in FAILED_STATUSES if counts.get(k))
    raise MamlAnomalyError(
        f"{failed:,} of {series:,} series ({failed / series:.1%}) could not be scored "
        f"({shown}), more than --max-failed-fraction {limit:g}. The scores were still written to "
        f"{output} (see its status column). Check that the input holds enough history before the "
        "scored day(s) and that fit-clusters and meta-train ran on these series, or raise "
        "--max-failed-fraction."
    )


def history_span(models: list[Any], max_step_ns: int) -> np.timedelta64 | None:
    """How far before the first scored day a batch must read: lags + R recent points (+ margin).

    None when a model scores series whose step is not bounded (a day or longer and no step
    recorded in clusters.parquet): then all history is read.
    """
    span = 0
    for m in models:
        if m.query_len > 1:  # query_len = ceil(day / step), so step < day / (query_len - 1)
            step = -(-NS_PER_DAY // (m.query_len - 1))
        elif max_step_ns > 0:
            step = max_step_ns
        else:
            return None
        span = max(span, (m.spec.max_lag + recent_len(m.k_shot, m.query_len) + HISTORY_MARGIN_STEPS) * step)
    return np.timedelta64(span + NS_PER_DAY, "ns")


def _no_data_error(date_option, first, last, data_first, data_last) -> InputError:
    cover = f"it covers {data_first.astype('datetime64[D]')} to {data_last.astype('datetime64[D]')}"
    if date_option is not None:
        return InputError(
            f"the input has no data on {date_option}; {cover}. Choose a --date inside that range, or "
            "leave --date out to score the last day."
        )
    return InputError(
        f"the input has no data between {first.astype('datetime64[D]')} and {last.astype('datetime64[D]')}; "
        f"{cover}. Choose --start/--end inside that range."
    )
