"""A scoring run's days and completeness: which day daily-score scores, absent rows, local times.

The rules are in :mod:`maml_anomaly.data.days`; this module applies them to a run: a short
read of the input's last days to choose the default day (or to measure a --date), the
``absent`` rows of series expected but without a row on a scored day (a batch's own series
on the worker that scored it, the model's series missing from the whole input here), and the
``ds_local`` column of a run in another timezone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maml_anomaly.batch import FAILED_STATUSES, ScoredBatch, scores_table
from maml_anomaly.config import Config
from maml_anomaly.core.scoring import STATUS_ABSENT, STATUS_INSUFFICIENT, STATUS_OFF_GRID
from maml_anomaly.data.days import (
    COMPLETE_SHARE,
    DEFAULT_DAY_WINDOW,
    UTC,
    DayChoice,
    DayCounts,
    absent_pairs,
    chosen_day,
    count_days,
    day_bounds,
    default_day,
    incomplete_days,
)
from maml_anomaly.data.panel import build_panel
from maml_anomaly.data.stream import iter_series_frames
from maml_anomaly.errors import CalendarStepError, InputError

STREAM_ROWS = 1_000_000
CALENDAR_SAMPLE = 20  # failed series whose whole history is read to tell a calendar step
_SORT = [("unique_id", "ascending"), ("ds", "ascending")]


def _frames(config: Config, input: Path, bounds: np.ndarray) -> Iterator[pd.DataFrame]:
    """The input's rows within ``bounds`` in frames of whole series; nothing when it has none."""
    try:
        yield from iter_series_frames(
            input,
            config.columns,
            config.input.on_duplicate,
            ds_min=bounds[0],
            ds_end=bounds[-1],
            batch_rows=STREAM_ROWS,
        )
    except InputError as exc:
        if "has no rows" not in str(exc):
            raise


def pick_default_day(config: Config, input: Path, data_last: np.datetime64, zone: str) -> tuple[DayChoice, dict]:
    """The default day of daily-score among the input's last days, and its completeness fields."""
    bounds = day_bounds(data_last - np.timedelta64(DEFAULT_DAY_WINDOW - 1, "D"), data_last, zone)
    counts = count_days(_frames(config, input, bounds), bounds)
    picked = default_day(counts, zone)
    if picked is None:
        raise InputError(
            f"no day at the end of the input {input} is complete for {COMPLETE_SHARE:.0%} of its series: "
            f"{incomplete_days(counts, zone)}. A day is complete for a series when its last grid point "
            "of the day has arrived. Rerun once the data has arrived, or score a partial day on purpose "
            "with --date YYYY-MM-DD."
        )
    choice, d = picked
    return choice, choice.fields(counts, d)


def measure_day(config: Config, input: Path, day: np.datetime64, zone: str) -> tuple[DayChoice, dict] | None:
    """The completeness of a day asked for by --date (None when the input has no row that day)."""
    bounds = day_bounds(day, day, zone)
    counts: DayCounts = count_days(_frames(config, input, bounds), bounds)
    if counts.series[0] == 0:
        return None
    choice = chosen_day(counts, 0, zone)
    return choice, choice.fields(counts, 0)


# -- absent rows ------------------------------------------------------------------------------------


def absent_frame(ids: np.ndarray, ds: np.ndarray, cluster: np.ndarray) -> pd.DataFrame:
    """Score rows (batch layout, with p_value and step) of absent (series, day) pairs."""
    n = ids.shape[0]
    nan = np.full(n, np.nan)
    return pd.DataFrame(
        {
            "unique_id": ids,
            "ds": np.asarray(ds, "datetime64[ns]"),
            "y": nan,
            "y_hat": nan,
            "lower": nan,
            "upper": nan,
            "score": nan,
            "is_anomaly": np.zeros(n, bool),
            "cluster": cluster,
            "status": np.full(n, STATUS_ABSENT, dtype=object),
            "p_value": nan,
            "step": np.full(n, np.timedelta64("NaT", "ns")),
        }
    )


def _clusters_of(clusters: Any, ids: np.ndarray) -> np.ndarray:
    """(M,) object cluster name of each id in clusters.parquet (None where fit-clusters never saw it)."""
    names = np.asarray(list(clusters.names) + [None], dtype=object)
    if len(clusters.code) == 0:  # a batch of series fit-clusters never saw
        return names[np.full(ids.shape[0], len(clusters.names))]
    pos = np.asarray(clusters.index.get_indexer(ids), np.int64)
    return names[np.where(pos >= 0, clusters.code[np.maximum(pos, 0)], len(clusters.names))]


def _series_ids(col: pd.Series) -> np.ndarray:
    """(S,) the sorted distinct ids of a frame's id column (a categorical's codes, not its rows)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories.to_numpy()
        ids = cats[np.unique(col.cat.codes.to_numpy())]
    else:
        ids = pd.unique(col.to_numpy())
    return np.sort(ids.astype(np.int64) if np.asarray(ids).dtype.kind in "iu" else ids.astype(object))


def with_absent_rows(scored: ScoredBatch, frame: pd.DataFrame, scorer: Any, bounds: np.ndarray) -> ScoredBatch:
    """``scored`` plus one ``absent`` row per series of ``frame`` and scored day without a row."""
    ids = _series_ids(frame["unique_id"])  # (S,) sorted
    rows = scored.rows
    row_pos = pd.Index(ids).get_indexer(rows.column("unique_id").to_numpy(zero_copy_only=False))  # (N,)
    ds = rows.column("ds").to_numpy().astype("datetime64[ns]")
    s, d = absent_pairs(row_pos, ds, ids.shape[0], bounds)
    if s.size == 0:
        return scored
    absent = scores_table(
        absent_frame(ids[s], bounds[d], _clusters_of(scorer.clusters, ids[s])), alerts=False, step=True
    )
    table = pa.concat_tables([rows, absent.cast(rows.schema)]).sort_by(_SORT)
    status = rows.column("status").to_numpy(zero_copy_only=False)
    failed = np.union1d(row_pos[np.isin(status, FAILED_STATUSES)], s)
    counts = dict(scored.counts)
    counts[STATUS_ABSENT] = counts.get(STATUS_ABSENT, 0) + int(s.size)
    return dataclasses.replace(
        scored, rows=table, n_series=int(ids.shape[0]), failed_series=int(failed.size), counts=counts
    )


def absent_model_series_part(
    parts: list[str], clusters: Any, bounds: np.ndarray, folder: Path
) -> tuple[str | None, int]:
    """A part file of ``absent`` rows for the model's series with no row in any of ``parts``; their number."""
    model_ids = clusters.index.ids  # (C,) Arrow array of clusters.parquet's ids
    if not len(model_ids) or not parts:
        return None, 0
    schema = pq.read_schema(parts[0])
    seen = pc.unique(pa.chunked_array([pq.read_table(p, columns=["unique_id"]).column(0) for p in parts]))
    if seen.type != model_ids.type:
        seen = seen.cast(model_ids.type)
    missing = pc.invert(pc.is_in(model_ids, value_set=seen)).to_numpy(zero_copy_only=False)
    n_missing = int(missing.sum())
    if n_missing == 0:
        return None, 0
    ids = model_ids.filter(pa.array(missing)).to_numpy(zero_copy_only=False)  # (M,)
    n_days = bounds.shape[0] - 1
    names = np.asarray(clusters.names, dtype=object)[clusters.code[missing]]
    frame = absent_frame(np.repeat(ids, n_days), np.tile(bounds[:-1], ids.shape[0]), np.repeat(names, n_days))
    absent = scores_table(frame, alerts=False, step=True).cast(schema).sort_by(_SORT)
    path = folder / "part-absent-model-series.parquet"
    pq.write_table(absent, path, compression="none")
    return str(path), n_missing


# -- calendar steps -------------------------------------------------------------------------------


def refuse_calendar_failures(config: Config, input: Path, output: Path, failed: str) -> None:
    """On a run over its failure budget: the calendar-step error when failed series are sampled monthly.

    A scoring run reads only the days before the scored one, too few to see a monthly step, so a
    sample of the series that could not be scored is read whole (a filtered read, on failure only).
    """
    scores = pq.read_table(output, columns=["unique_id", "status"])
    failing = pc.is_in(scores.column("status"), value_set=pa.array([STATUS_INSUFFICIENT, STATUS_OFF_GRID]))
    ids = pc.unique(scores.column("unique_id").filter(failing)).slice(0, CALENDAR_SAMPLE)
    if not len(ids):
        return
    frames = iter_series_frames(
        input, config.columns, config.input.on_duplicate, ids=ids.to_numpy(zero_copy_only=False)
    )
    try:
        for frame in frames:  # one or two frames: CALENDAR_SAMPLE series
            build_panel(frame)
    except CalendarStepError as exc:
        raise InputError(f"{exc} ({failed}; the scores were still written to {output}.)") from None


# -- local times ------------------------------------------------------------------------------------


def with_local_time(table: pa.Table, zone: str) -> pa.Table:
    """The scores table plus ``ds_local`` (ds in ``zone``, timezone-aware) when the run has a zone."""
    if zone == UTC:
        return table
    local = pc.assume_timezone(table.column("ds"), timezone=UTC).cast(pa.timestamp("ns", tz=zone))
    return table.append_column(pa.field("ds_local", pa.timestamp("ns", tz=zone)), local)


def with_local_span(table: pa.Table, zone: str) -> pa.Table:
    """An events or incidents table plus ``start_local``/``end_local`` (timezone-aware, in ``zone``) when the run has a zone."""
    if zone == UTC:
        return table
    local_type = pa.timestamp("ns", tz=zone)
    for column in ("start", "end"):
        local = pc.assume_timezone(table.column(column), timezone=UTC).cast(local_type)
        table = table.append_column(pa.field(f"{column}_local", local_type), local)
    return table


def with_day_fields(result: dict[str, Any], day: dict[str, Any], zone: str, failed_series: int) -> dict[str, Any]:
    """The run summary plus the timezone, the failed series and the scored day's completeness (and why it was picked)."""
    out = {**result, "timezone": zone, "failed_series": failed_series}
    if not day:
        return out
    reason = day.pop("reason", "")
    out["completeness"] = {**day, "reason": reason or None}
    note = f"day {day['day']}: {day['points_share']:.0%} of its expected points present"
    out["summary"] = f"{result['summary'].rstrip()}\n{note}" + (f"; {reason}" if reason else "")
    return out
