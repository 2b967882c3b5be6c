"""The morning view of a scoring run: its incidents and the one-file HTML report.

Used two ways: daily-score and backtest call :func:`run_incidents`, :func:`write_incidents` and
:func:`write_run_report` on the run they hold in memory (``--incidents`` / ``--report``), and the
``report`` command (:func:`report`) rebuilds the same view from a scores file, reading events and
incidents when given and deriving them from the scores otherwise.

Per-series work is batched: series codes come from one pass over adjacent rows (the pipeline
writes rows grouped by series), the charted series' rows are picked by integer codes, and only
the charted series' history is read back from the input.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from maml_anomaly.batch import plain_ids
from maml_anomaly.commands.common import check_output, command_result, read_parquet_frame
from maml_anomaly.commands.days import with_local_span
from maml_anomaly.config import Config
from maml_anomaly.core.events import build_events, top_events
from maml_anomaly.core.incidents import (
    INCIDENT_COLUMNS,
    empty_incidents,
    find_incidents,
    incident_line,
    incidents_schema,
    incidents_text,
    series_steps,
)
from maml_anomaly.data.days import UTC, check_zone, to_local
from maml_anomaly.data.stream import iter_series_frames
from maml_anomaly.data.write import write_parquet_atomic
from maml_anomaly.errors import InputError
from maml_anomaly.report import AFTER_DAYS, CONTEXT_DAYS, DEFAULT_TOP, cluster_counts, render_report, write_report

log = logging.getLogger("maml_anomaly.commands")

DAY = pd.Timedelta(days=1)
SCORES_COLUMNS = [
    "unique_id",
    "ds",
    "y",
    "y_hat",
    "lower",
    "upper",
    "score",
    "is_anomaly",
    "cluster",
    "status",
    "p_value",
]
EVENTS_COLUMNS = ["unique_id", "start", "end", "peak_ds", "peak_score", "severity", "direction", "n_points", "cluster"]
INCIDENTS_COLUMNS = list(INCIDENT_COLUMNS)
JSON_INCIDENT_FIELDS = [
    "incident_id",
    "start",
    "end",
    "direction",
    "n_series",
    "clusters",
    "cluster_series",
    "cluster_share",
]
JSON_INCIDENTS = 10  # incidents listed in the --json object (all are in the --incidents file)


@dataclass(frozen=True)
class RunSeries:
    """The series of a scores frame: a code per row and, per series, its first row."""

    codes: np.ndarray  # (N,) int64 series code of each row
    first_row: np.ndarray  # (S,) row of each series' first point
    ids: pd.Index  # (S,) the ids, by code

    def cluster_sizes(self, cluster: pd.Series) -> pd.Series:
        """cluster -> number of series (a series counts in the cluster of its first row)."""
        return pd.Series(cluster.to_numpy()[self.first_row]).value_counts()

    def rows_of(self, unique_ids: Any) -> np.ndarray:
        """(R,) rows of the given series (ids not in the run are ignored)."""
        wanted = self.ids.get_indexer(pd.Index(pd.unique(np.asarray(unique_ids, dtype=object))))
        return np.flatnonzero(np.isin(self.codes, wanted[wanted >= 0]))


def run_series(unique_id: pd.Series) -> RunSeries:
    """Series codes from adjacent rows when rows come grouped by series (the pipeline's order), else a hash."""
    ids = plain_ids(unique_id)
    n = ids.size
    if n == 0:
        return RunSeries(np.zeros(0, np.int64), np.zeros(0, np.int64), pd.Index([]))
    new = np.r_[True, ids[1:] != ids[:-1]]  # (N,) a row whose series differs from the row before
    first = np.flatnonzero(new)
    index = pd.Index(ids[first])
    if index.is_unique:  # grouped: each series is one run of rows
        return RunSeries(np.cumsum(new) - 1, first, index)
    codes, uniq = pd.factorize(ids)
    first_row = np.full(uniq.size, n, np.int64)
    np.minimum.at(first_row, codes, np.arange(n))
    return RunSeries(codes.astype(np.int64), first_row, pd.Index(uniq))


def run_incidents(
    scores: pd.DataFrame, events: pd.DataFrame, step: Any, series: RunSeries, first: Any, last: Any
) -> pd.DataFrame:
    """find_incidents over the run's events; ``step``: (S,) timedelta64 of each series, by code.

    ``first``/``last``: the first and last scored days (the run spans [first, last + 1 day)).
    """
    if not len(events):
        return empty_incidents(events["unique_id"].dtype)
    steps = pd.Series(np.asarray(step, dtype="timedelta64[ns]"), index=series.ids)
    span = (pd.Timestamp(first), pd.Timestamp(last) + DAY - pd.Timedelta(1, "ns"))
    found = find_incidents(events, steps, cluster_sizes=series.cluster_sizes(scores["cluster"]), span=span)
    return found.incidents


def write_incidents(incidents: pd.DataFrame, path: Path, id_is_int: bool, zone: str = UTC) -> None:
    """The incidents parquet, atomically (docs/alerts.md lists its columns; start_local/end_local with a zone)."""
    schema = incidents_schema(pa.int64() if id_is_int else pa.string())
    frame = incidents.assign(
        **{c: incidents[c].map(list) for c in ("clusters", "cluster_series", "cluster_share", "top_series")}
    )
    write_parquet_atomic(with_local_span(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), zone), path)


def incidents_fields(incidents: pd.DataFrame, path: Path | None) -> dict[str, Any]:
    """The JSON object's incidents: count, file, the summary lines and the largest ones as records."""
    order = np.lexsort((incidents["start"].to_numpy(), -incidents["n_series"].to_numpy()))[:JSON_INCIDENTS]
    largest = incidents.iloc[order]
    records = [
        {**{c: r[c] for c in JSON_INCIDENT_FIELDS}, "line": incident_line(r)}
        for _, r in largest.iterrows()  # at most JSON_INCIDENTS rows
    ]
    return {"count": len(incidents), "file": str(path) if path else None, "largest": records}


def with_incidents(
    result: dict[str, Any], incidents: pd.DataFrame, path: Path | None, zone: str = UTC
) -> dict[str, Any]:
    """The result with the incidents first: the summary's first line(s) and the JSON object's first field."""
    text = zoned_incidents_text(incidents, zone) + "\n" + result["summary"]
    rest = {k: v for k, v in result.items() if k != "summary"}
    return {"summary": text, "incidents": incidents_fields(incidents, path), **rest}


def zoned_incidents_text(incidents: pd.DataFrame, zone: str) -> str:
    """incidents_text with the times in ``zone``, saying so on the first line (UTC: unchanged)."""
    if zone == UTC or not len(incidents):
        return incidents_text(incidents)
    first, *rest = incidents_text(in_zone(incidents, zone)).split("\n")
    return "\n".join([f"{first} (times in {zone})", *rest])


# -- the view of a daily-score / backtest run ------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """What a scoring run's morning view holds between publishing the scores and the summary."""

    series: RunSeries
    incidents: pd.DataFrame
    incidents_path: Path | None
    seconds: float  # spent on the incidents (and their file)
    zone: str = UTC  # the run's timezone: local times in the files, the summary and the report


def check_view_outputs(output: Path, events: Path | None, incidents: Path | None, report: Path | None) -> None:
    """--incidents and --report get the scores' output check, and no two outputs are one file."""
    named = [("--output", output), ("--events", events), ("--incidents", incidents), ("--report", report)]
    given = [(option, path) for option, path in named if path is not None]
    for option, path in given[1:]:
        check_output(path, option)
    for i, (option, path) in enumerate(given):
        for other, earlier in given[:i]:
            if path.resolve() == earlier.resolve():
                raise InputError(f"{option} {path} is the same file as {other}; give each output its own path.")


def run_view(alerted: Any, step: Any, first: Any, last: Any, incidents: Path | None, zone: str = UTC) -> RunView:
    """The run's incidents (always: the summary lists them first), written to ``incidents`` when given.

    ``step``: the run's (N,) series step per row, as an arrow or numpy array aligned with
    ``alerted.scores``; only one row per series is read.
    """
    started = time.perf_counter()
    scores = alerted.scores
    series = run_series(scores["unique_id"])
    series_step = np.asarray(step.take(series.first_row) if hasattr(step, "take") else step[series.first_row])
    found = run_incidents(scores, alerted.events, series_step, series, first, last)
    if incidents is not None:
        write_incidents(found, incidents, scores["unique_id"].dtype.kind in "iu", zone)
    seconds = time.perf_counter() - started
    log.info("%s (%.1f s)", zoned_incidents_text(found, zone).splitlines()[0], seconds)
    return RunView(series, found, incidents, seconds, zone)


def finish_view(
    result: dict[str, Any], view: RunView, alerted: Any, config: Config, input: Path, report_path: Path | None
) -> dict[str, Any]:
    """The run's result with its incidents first, after writing the report when asked."""
    timings = {"incidents_seconds": round(view.seconds, 2)}
    if report_path is not None:
        zone = None if view.zone == UTC else view.zone
        seconds = write_run_report(
            report_path,
            config,
            input,
            result,
            alerted.scores,
            alerted.events,
            view.incidents,
            view.series,
            timezone=zone,
        )
        timings["report_seconds"] = round(seconds, 2)
        result = {**result, "summary": result["summary"] + f"\nreport: {report_path}", "report": str(report_path)}
    return {**with_incidents(result, view.incidents, view.incidents_path, view.zone), "morning_view": timings}


# -- the report of a run -----------------------------------------------------------------------------


def charted_history(config: Config, input: Path, ids: Any, first: Any, last: Any) -> pd.DataFrame:
    """Observed (unique_id, ds, y) of series ``ids`` around the run: what the report's charts show."""
    columns = ["unique_id", "ds", "y"]
    ids = pd.unique(np.asarray(ids, dtype=object))
    if ids.size == 0:
        return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in zip(columns, (object, "datetime64[ns]", float))})
    lo = np.datetime64(pd.Timestamp(first) - pd.Timedelta(days=CONTEXT_DAYS), "ns")
    hi = np.datetime64(pd.Timestamp(last) + DAY + pd.Timedelta(days=AFTER_DAYS), "ns")
    frames = [
        f[columns].assign(unique_id=plain_ids(f["unique_id"]))
        for f in iter_series_frames(input, config.columns, config.input.on_duplicate, ids=ids, ds_min=lo, ds_end=hi)
    ]  # a few frames: only the charted series are read
    return pd.concat(frames, ignore_index=True)


def run_report_html(
    config: Config,
    input: Path,
    summary: Mapping[str, Any],
    scores: pd.DataFrame,
    events: pd.DataFrame,
    incidents: pd.DataFrame | None,
    series: RunSeries,
    *,
    top: int = DEFAULT_TOP,
    timezone: str | None = None,
) -> str:
    """The report's HTML for a run: counts over every row, charts of the top events' series only."""
    chosen = top_events(events, top)
    clusters = cluster_counts(scores, events, series_code=series.codes)
    rows = scores.take(series.rows_of(chosen["unique_id"]))
    history = charted_history(config, input, chosen["unique_id"], summary["first_day"], summary["last_day"])
    frames = {"scores": rows, "history": history, "events": events, "incidents": incidents}
    if timezone:
        frames = {k: in_zone(v, timezone) for k, v in frames.items()}
    return render_report(summary=summary, clusters=clusters, top=top, zone=timezone or "UTC", **frames)


def write_run_report(path: Path, *args: Any, **kwargs: Any) -> float:
    """Render (:func:`run_report_html`) and write the report atomically; returns the seconds it took."""
    started = time.perf_counter()
    write_report(run_report_html(*args, **kwargs), path)
    seconds = time.perf_counter() - started
    log.info("wrote the report %s in %.1f s", path, seconds)
    return seconds


# -- time zone of the display -------------------------------------------------------------------------

TIME_COLUMNS = ("ds", "start", "end", "peak_ds")


def in_zone(frame: pd.DataFrame | None, zone: str) -> pd.DataFrame | None:
    """The frame with its naive-UTC time columns shown as wall-clock times of ``zone`` (display only)."""
    if frame is None:
        return None
    out = frame.copy(deep=False)
    for c in TIME_COLUMNS:
        if c in out.columns:
            out[c] = to_local(out[c], zone)
    return out


# -- the report command ---------------------------------------------------------------------------------


def report(
    *,
    config: Config,
    scores: Path,
    input: Path,
    output: Path,
    events: Path | None = None,
    incidents: Path | None = None,
    top: int = DEFAULT_TOP,
    timezone: str | None = None,
) -> dict[str, Any]:
    """The HTML report of a scores file; events and incidents are derived from the scores when not given."""
    started = time.perf_counter()
    timezone = None if timezone is None else check_zone(timezone)
    check_output(output, "--output")
    for option, path in (("--scores", scores), ("--events", events), ("--incidents", incidents)):
        if path is not None and path.resolve() == output.resolve():
            raise InputError(
                f"--output {output} is the same file as {option}; give the report its own path (report.html)."
            )
    frame = read_parquet_frame(scores, "--scores", SCORES_COLUMNS)
    if not len(frame):
        raise InputError(f"--scores {scores} has no rows; expected the scores of a daily-score or backtest run.")
    series = run_series(frame["unique_id"])
    ev = read_parquet_frame(events, "--events", EVENTS_COLUMNS) if events else build_events(frame)
    first, last = frame["ds"].min().normalize(), frame["ds"].max().normalize()
    if incidents is not None:
        inc = read_parquet_frame(incidents, "--incidents", INCIDENTS_COLUMNS)
    else:
        steps = _event_series_steps(config, input, ev, first, last)
        sizes = series.cluster_sizes(frame["cluster"])
        span = (first, last + DAY - pd.Timedelta(1, "ns"))
        inc = find_incidents(ev, steps, cluster_sizes=sizes, span=span).incidents
    summary = _summary_of(frame, ev, first, last)
    html = run_report_html(config, input, summary, frame, ev, inc, series, top=top, timezone=timezone)
    write_report(html, output)
    text = (
        f"{zoned_incidents_text(inc, timezone or UTC)}\nwrote {output}: {len(frame):,} points of {series.ids.size:,} series, "
        f"{len(ev):,} events, top {min(top, len(ev))} charted, in {time.perf_counter() - started:.1f} s"
    )
    return command_result(
        text, incidents=incidents_fields(inc, incidents), output=str(output), events=len(ev), points=len(frame)
    )


def _event_series_steps(config: Config, input: Path, events: pd.DataFrame, first: Any, last: Any) -> pd.Series:
    """unique_id -> step of the events' series, from their input rows around the run."""
    history = charted_history(config, input, events["unique_id"], first, last)
    return series_steps(history["unique_id"], history["ds"])


def _summary_of(scores: pd.DataFrame, events: pd.DataFrame, first: Any, last: Any) -> dict[str, Any]:
    """The run's summary rebuilt from its scores file (what daily-score printed, less the run's own counts)."""
    status = scores["status"].astype(object).fillna("unknown")
    statuses = {str(k): int(v) for k, v in status.value_counts().sort_index().items()}
    flagged = int(scores["is_anomaly"].fillna(False).astype(bool).sum())
    return {
        "points": len(scores),
        "series": int(scores["unique_id"].nunique()),  # the command reads the scores once; a hash is fine
        "statuses": statuses,
        "anomalies": flagged,
        "alerts": {"flagged": flagged, "ongoing_events": int(events["ongoing"].sum()) if "ongoing" in events else 0},
        "first_day": str(pd.Timestamp(first).date()),
        "last_day": str(pd.Timestamp(last).date()),
    }
