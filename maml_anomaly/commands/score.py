"""daily-score and backtest: batches of whole series scored on an engine, then the run's alerts and one atomic publish.

The run: the days to score from the input's time bounds (no rows read), the history the models
need before them (:func:`history_span`), the engine maps :func:`score_and_spill` over batches of
whole series (each batch scored by :func:`~maml_anomaly.batch.score_batch` and its rows written
to a part file of a staging folder beside the output, on whichever machine scored it; only counts
and the batch's tested p-values come back), then the alerts over the whole run from those small
summaries and one atomic publish (:mod:`maml_anomaly.commands.alerting`), the failure budget, the
summary.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maml_anomaly.batch import FAILED_STATUSES, ReadTotals, ScoredBatch, ScoredCodec, Scorer, score_batch
from maml_anomaly.commands.alerting import publish_run
from maml_anomaly.commands.common import DAY, check_output, command_result, locked, parse_day, progress, setup_torch
from maml_anomaly.commands.days import (
    absent_model_series_part,
    measure_day,
    pick_default_day,
    refuse_calendar_failures,
    with_absent_rows,
    with_day_fields,
)
from maml_anomaly.commands.report import check_view_outputs, finish_view, in_zone, run_view
from maml_anomaly.config import AlertConfig, Config
from maml_anomaly.core.alerts import Alerts, bh_summary, summary_text
from maml_anomaly.core.events import top_events
from maml_anomaly.core.scoring import STATUS_ABSENT, STATUS_OFF_GRID, STATUS_OK
from maml_anomaly.core.tasks import recent_len
from maml_anomaly.data.days import UTC, check_zone, day_bounds, local_date
from maml_anomaly.data.stream import iter_series_frames, time_bounds
from maml_anomaly.data.write import staging_folder
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
    timezone: str | None = None,
    incidents: Path | None = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """Score one calendar day (default: the input's last complete day, see data/days.py); write the scores atomically."""
    zone = check_zone(timezone)
    day = parse_day(date, "--date") if date is not None else None
    runner, md, device = _prepared(config, model_dir, output, (events, incidents, report), engine, ray_address)
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
        zone=zone,
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
    timezone: str | None = None,
    incidents: Path | None = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """daily-score for every day of [start, end], batched across days and series, one output."""
    zone = check_zone(timezone)
    first = parse_day(start, "--start") if start is not None else None
    last = parse_day(end, "--end") if end is not None else None
    if first is not None and last is not None and first > last:
        raise InputError(f"--start {start} is after --end {end}; give a start on or before the end.")
    runner, md, device = _prepared(config, model_dir, output, (events, incidents, report), engine, ray_address)
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
        zone=zone,
        incidents=incidents,
        report=report,
    )


def _prepared(
    config: Config, model_dir: Path, output: Path, extra_outputs: tuple, engine: str, address: str | None
) -> tuple[Engine, ModelDir, str]:
    """The outputs checked, then the engine, the serving model and the device of a scoring run."""
    check_output(output)
    check_view_outputs(output, *extra_outputs)
    runner = _engine(engine, config, address)
    return runner, open_trained(model_dir), _device(config, runner)


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
    first: np.datetime64  # the scored window's first instant (UTC)
    last: np.datetime64  # its end minus one day (score_batch scores [first, last + 1 day))
    spill_dir: str  # folder the batches' score rows are written to (beside the output)
    rules: AlertConfig  # which p-values Benjamini-Hochberg groups together
    bounds: np.ndarray | None = None  # (D+1,) UTC edges of the scored days: absent rows per day

    def for_batch(self, frame: pd.DataFrame) -> ScoreTask:
        return dataclasses.replace(self, scorer=self.scorer.for_batch(frame))


def score_and_spill(task: ScoreTask, frame: pd.DataFrame) -> ScoredBatch:
    """score_batch, then its rows written to a part file of the run's staging folder; only counts
    and the batch's tested p-values (the Benjamini-Hochberg summary) travel back."""
    scored = score_batch(task.scorer, frame, task.first, task.last)
    if task.bounds is not None:
        scored = with_absent_rows(scored, frame, task.scorer, task.bounds)
    part = Path(task.spill_dir) / f"part-{uuid.uuid4().hex}.parquet"
    try:
        with pq.ParquetWriter(part, scored.rows.schema, compression="none") as writer:
            writer.write_table(scored.rows)
    except OSError as exc:
        raise MamlAnomalyError(
            f"could not write a batch's scores to the staging folder {task.spill_dir} ({exc}). Free space "
            "in the output's folder, or choose an output on a volume with room for the run's scores. Nothing was replaced: a previous output is unchanged."
        ) from None
    tested = bh_summary(scored.rows.select(["status", "p_value", "cluster"]).to_pandas(), task.rules)
    return dataclasses.replace(scored, rows=None, part=str(part), tested=tested)


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
    zone: str = UTC,
    incidents: Path | None = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """Score the days [first, last] (calendar days of ``zone``) reading the input in batches of whole series.

    ``first``/``last`` None: the input's last complete day (daily-score, see data/days.py) or its
    first/last day (backtest). Only the history the models need is read; the scored points are
    kept on disk, beside the output, until the alerts step has applied the run's cut-offs to them
    and they are published.
    """
    started = time.perf_counter()
    data_first, data_last = (local_date(v, zone) for v in time_bounds(input, config.columns))
    first, last = (None if v is None else v.astype("datetime64[D]") for v in (first, last))
    day_fields: dict[str, Any] = {}
    if backtest:
        first = data_first if first is None else max(first, data_first)
        last = data_last if last is None else min(last, data_last)
    elif first is None:
        choice, day_fields = pick_default_day(config, input, data_last, zone)
        first = last = choice.date
        day_fields["reason"] = choice.reason
    if first > data_last or last < data_first:  # nothing to score: say so before reading anything
        raise _no_data_error(date_option, first, last, data_first, data_last)
    if date_option is not None:
        measured = measure_day(config, input, first, zone)
        if measured is None:
            raise _no_data_error(date_option, first, last, data_first, data_last)
        day_fields = {**measured[1], "reason": measured[0].reason}
    bounds = day_bounds(first, last, zone)  # (D+1,) UTC edges of the scored days
    start, end = bounds[0], bounds[-1]
    try:
        names, models = load_models(md, config.score.inner_steps_at_scoring)
    except ModelDirError:
        # a bad input is reported before a missing model (fix the data first): check a batch
        next(iter_series_frames(input, config.columns, config.input.on_duplicate, batch_rows=STREAM_ROWS), None)
        raise
    lookup = ClusterIndex.load(md)
    span = history_span(models, lookup.max_step_ns)
    ds_min = None if span is None else start - span
    log.info(
        "scoring %s%s; reading %s",
        first.astype("datetime64[D]"),
        "" if first == last else f" to {last.astype('datetime64[D]')}",
        "all history" if ds_min is None else f"from {ds_min.astype('datetime64[D]')}",
    )
    clusterer = md.load_json(CLUSTERER) if md.has(CLUSTERER) else None
    scorer = Scorer(config, device, str(md.path), names, models, lookup, clusterer, lookup.example_ids())
    source = Source(Path(input), config.columns, config.input.on_duplicate, ds_min, end, STREAM_ROWS)
    totals = ReadTotals()
    counts: dict[str, int] = {}
    series = failed_series = 0
    parts: list[str] = []
    tested: list[dict[str, np.ndarray]] = []
    with staging_folder(output) as staging, runner.session():  # the folder is removed whatever happens
        spill = staging / "scored"
        spill.mkdir()
        task = ScoreTask(scorer, start, end - DAY, str(spill), config.alerts, bounds)
        with progress("scoring", None) as advance:
            for scored in runner.map_batches(score_and_spill, task, source, ScoredCodec()):  # in output order
                totals.add_counts(scored.report.to_dict(), scored.start, scored.end)
                parts.append(scored.part)
                tested.append(scored.tested or {})
                series += scored.n_series
                failed_series += scored.failed_series
                for k, v in scored.counts.items():
                    counts[k] = counts.get(k, 0) + v
                advance(1)
        totals.log(input)
        if sum(v for k, v in counts.items() if k != STATUS_ABSENT) == 0:
            raise _no_data_error(date_option, first, last, data_first, data_last)
        absent_part, n_absent = absent_model_series_part(parts, lookup, bounds, spill)
        if absent_part is not None:  # the model's series with no row at all in the input come last
            parts.append(absent_part)
            tested.append({})
            series, failed_series = series + n_absent, failed_series + n_absent
            counts[STATUS_ABSENT] = counts.get(STATUS_ABSENT, 0) + n_absent * (bounds.shape[0] - 1)
        alerted = publish_run(runner, parts, tested, config, staging, output, events, zone)
        alerted, step = _read_back_for_view(alerted, parts, output, full=report is not None)
        view = run_view(alerted, step, start, end - DAY, incidents, zone)  # the UTC instants the run spans
    written = [p for p in (output, events, incidents, report) if p is not None]
    over = over_budget(failed_series, series, counts, config.score.max_failed_fraction, written)
    summary = _run_summary(config, alerted, events, output, first, last, series, counts, started, zone)
    if over is not None:  # the report says so at its top: the morning page exists on the bad day too
        summary["failed_budget"] = budget_fields(failed_series, series, config.score.max_failed_fraction, view, alerted)
    result = finish_view(summary, view, alerted, config, input, report)
    if over is not None:  # every requested output is written; the run still fails
        refuse_calendar_failures(config, input, output, f"{failed_series:,} of {series:,} series could not be scored")
        raise over
    return with_day_fields(result, day_fields, zone, failed_series)


def _read_back_for_view(alerted: Alerts, parts: list[str], output: Path, *, full: bool) -> tuple[Alerts, Any]:
    """The published scores (every column only for a report) and each row's series step, in output order.

    The morning view needs the run's series and clusters (and, for the report, the top series'
    rows): they are read back from the published file, not gathered from the batches.
    """
    columns = None if full else ["unique_id", "cluster"]
    scores = pq.read_table(output, columns=columns).to_pandas()
    step = pa.chunked_array([pq.read_table(p, columns=["step"]).column(0) for p in parts])
    return dataclasses.replace(alerted, scores=scores), step


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
    zone: str = UTC,
) -> dict[str, Any]:
    """The summary of a daily-score / backtest run, whichever engine scored it (event times in ``zone``)."""
    counts = dict(sorted(counts.items()))
    points = sum(counts.values())
    ok = counts.get(STATUS_OK, 0)
    anomalies = int(alerted.counts["flagged"])
    seconds = time.perf_counter() - started
    days = f"{first.astype('datetime64[D]')}" + ("" if first == last else f" to {last.astype('datetime64[D]')}")
    not_ok = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != STATUS_OK) or "none"
    return command_result(
        f"scored {points:,} points of {series:,} series on {days}: {anomalies:,} anomalies; {ok:,} ok, "
        f"{points - ok:,} not scored ({not_ok}); wrote {output} in {seconds:.1f} s\n" + _alerts_text(alerted, zone),
        **_alert_fields(alerted, events, zone),
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


def _alerts_text(alerted: Alerts, zone: str) -> str:
    """The alerts' summary lines, the top events' times in ``zone`` (UTC: unchanged)."""
    if zone == UTC or not len(alerted.events):
        return summary_text(alerted)
    text = summary_text(dataclasses.replace(alerted, events=in_zone(alerted.events, zone)))
    return text.replace(" by severity:", f" by severity (times in {zone}):", 1)  # the top list's header line


def _alert_fields(alerted: Any, events: Path | None, zone: str = UTC) -> dict[str, Any]:
    """JSON summary fields of the alerts step: counts and the top events by severity (local times with a zone)."""
    top = top_events(alerted.events, 10)
    if zone != UTC and len(top):
        top = top.assign(
            **{f"{c}_local": pd.DatetimeIndex(top[c]).tz_localize(UTC).tz_convert(zone) for c in ("start", "end")}
        )
    return {
        "alerts": alerted.counts,
        "events": str(events) if events else None,
        "top_events": top.to_dict(orient="records"),
    }


def over_budget(
    failed: int, series: int, counts: dict[str, int], limit: float, written: list[Path]
) -> MamlAnomalyError | None:
    """The error of a run where more than ``limit`` of ``series`` failed (None within budget); ``written``: its outputs."""
    if series == 0 or failed / series <= limit:
        return None
    shown = ", ".join(f"{k} {counts[k]:,} points" for k in FAILED_STATUSES if counts.get(k))
    files = ", ".join(str(p) for p in written)
    return MamlAnomalyError(
        f"{failed:,} of {series:,} series ({failed / series:.1%}) could not be scored "
        f"({shown}), more than --max-failed-fraction {limit:g}. The scores were still written to "
        f"{written[0]} (see its status column); every output asked for was written ({files}). Check that the "
        "input holds enough history before the scored day(s), that every expected series delivered its rows "
        f"(absent) on their grid (off_grid{_OFF_GRID_HINT if counts.get(STATUS_OFF_GRID) else ''}), and that "
        "fit-clusters and meta-train ran on these series, or raise --max-failed-fraction."
    )


def budget_fields(failed: int, series: int, limit: float, view: Any, alerted: Alerts) -> dict[str, Any]:
    """The failed budget as the summary and the report show it: failed series in all and by status."""
    by_status = {}
    if "status" in alerted.scores:  # series with a row of each failed status, via its few distinct values
        code, values = pd.factorize(alerted.scores["status"])
        for k in FAILED_STATUSES:
            rows = np.isin(code, np.flatnonzero(np.asarray(values, dtype=object) == k))
            by_status[k] = int(np.unique(view.series.codes[rows]).size)
    return {
        "failed_series": failed,
        "series": series,
        "limit": limit,
        "by_status": {k: v for k, v in by_status.items() if v},
    }


_OFF_GRID_HINT = "; a jittered clock is snapped onto its grid by --snap-tolerance 0.5 at every step"


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
