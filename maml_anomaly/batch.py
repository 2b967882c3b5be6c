"""The pure per-batch functions every engine calls, on batches of whole series.

- :func:`summarise_batch` (fit-clusters): each series' period, strength and cycle shape;
- :func:`score_batch` (daily-score, backtest): each scored row's forecast, band, score, flag and
  status, with :func:`assign_unseen` giving series fit-clusters never saw a cluster.

Contract: no I/O and nothing global; a series' result depends on its own rows (and the model)
only, so any split of the input into batches of whole series gives the same results, on any
engine. Engines (:mod:`maml_anomaly.engines`) only decide where a batch runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from maml_anomaly.config import Config
from maml_anomaly.core.clustering import PeriodClusterer, profile_bins
from maml_anomaly.core.periodicity import calendar_periods, cycle_profiles, detect_periods
from maml_anomaly.core.scoring import (
    STATUS_ABSENT,
    STATUS_INSUFFICIENT,
    STATUS_NO_MODEL,
    STATUS_OFF_GRID,
    STATUS_UNKNOWN,
    score_rows,
)
from maml_anomaly.core.tasks import gather_windows
from maml_anomaly.data.panel import Panel, build_panel
from maml_anomaly.data.schemas import ReadReport, scores_schema
from maml_anomaly.errors import InputError

log = logging.getLogger(__name__)

DAY = np.timedelta64(1, "D")
# a series with a row of one of these on a scored day counts as failed (--max-failed-fraction)
FAILED_STATUSES = (STATUS_INSUFFICIENT, STATUS_UNKNOWN, STATUS_NO_MODEL, STATUS_ABSENT, STATUS_OFF_GRID)


# -- fit-clusters: periods and cycle shapes -------------------------------------------------------

# Longest history used to find a period: 4 cycles of the longest calendar period (a week of
# 5-minute steps: 8064 points), at least 1024 points; and a group's matrix stays under ~1.5 GB.
_HISTORY_CYCLES = 4

_MIN_HISTORY = 1024

_DETECT_BYTES = 256_000_000  # one detection matrix (float64) at most: rows are detected in chunks

# matrix widths: a series' own length rounded up to this ladder (about 19% apart), so its period
# depends on its own history only, never on which other series share its batch
_WIDTHS = np.unique(np.ceil(8 * 2 ** (np.arange(64) / 4)).astype(np.int64))


def summarise_batch(config: Config, frame: pd.DataFrame) -> tuple[PeriodBatch, ReadReport]:
    """fit-clusters' step for one batch of whole series, the one function every engine calls.

    ``frame``: unique_id, ds, y as :func:`~maml_anomaly.data.read.read_long` returns them, every row of
    each of its series. Pure: no I/O, nothing global; a series' summary depends on its own rows
    only, so any split of the input into batches of whole series gives the same summaries.
    """
    panel, report = build_panel(frame, config.input.snap_tolerance)
    return summarise_periods(panel, config.clusters), report


@dataclass(frozen=True)
class PeriodBatch:
    """What fit-clusters keeps of a batch of series: one entry per series, shapes of periodic ones."""

    ids: np.ndarray  # (S,)
    step_ns: np.ndarray  # (S,) int64, 0 = no step (a single point)
    period: np.ndarray  # (S,) int64
    strength: np.ndarray  # (S,) float64
    second: np.ndarray  # (S,) int64
    n_obs: np.ndarray  # (S,) int64
    shapes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]  # (step, period) -> (series (r,), profiles (r, bins))


def history_width(lengths: np.ndarray, cap: int) -> np.ndarray:
    """(G,) detection matrix width of each series: its length on the _WIDTHS ladder, at most ``cap``."""
    up = _WIDTHS[np.minimum(np.searchsorted(_WIDTHS, lengths), _WIDTHS.size - 1)]
    return np.maximum(8, np.minimum(up, cap))


def summarise_periods(panel: Panel, cc: Any) -> PeriodBatch:
    """Per step and matrix width: tail matrix -> detect_periods -> cycle shapes of periodic series."""
    step_ns = np.where(np.isnat(panel.step), 0, panel.step.astype(np.int64))  # (S,) 0 = no step
    n = panel.n_series
    period, second = np.zeros(n, np.int64), np.zeros(n, np.int64)
    strength = np.zeros(n, np.float64)
    parts: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    for s in np.unique(step_ns[step_ns > 0]).tolist():
        seconds = s / 1e9
        cap = max(_HISTORY_CYCLES * max([*calendar_periods(seconds), cc.max_period, 1]), _MIN_HISTORY)
        rows_s = np.flatnonzero(step_ns == s)
        width = history_width(panel.lengths[rows_s], cap)  # (G,)
        for w in np.unique(width).tolist():
            rows_w = rows_s[width == w]
            chunk = max(1, _DETECT_BYTES // (8 * w))
            for lo in range(0, rows_w.size, chunk):
                rows = rows_w[lo : lo + chunk]
                matrix = panel.tail_matrix(w, rows)  # (r, w)
                found = detect_periods(matrix, seconds, max_period=cc.max_period, min_strength=cc.min_strength)
                period[rows], strength[rows], second[rows] = found.period, found.strength, found.second_period
                for p in np.unique(found.period[found.period > 0]).tolist():
                    sel = found.period == p
                    parts.setdefault((s, p), []).append(
                        (rows[sel], cycle_profiles(matrix[sel], p, bins=profile_bins(p)))
                    )
    shapes = {}
    for key, chunks in parts.items():
        rows = np.concatenate([r for r, _ in chunks])
        order = np.argsort(rows, kind="stable")
        shapes[key] = (rows[order], np.concatenate([q for _, q in chunks])[order])
    return PeriodBatch(panel.ids, step_ns, period, strength, second, _observed_per_series(panel), shapes)


def _observed_per_series(panel: Panel) -> np.ndarray:
    """(S,) non-missing grid values per series (one cumulative sum, no loop over series)."""
    seen = np.concatenate([[0], np.cumsum(~np.isnan(panel.values))])  # (N+1,)
    return (seen[panel.indptr[1:]] - seen[panel.indptr[:-1]]).astype(np.int64)


class ReadTotals:
    """ReadReport counts and the data window summed over streamed batches."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.start: np.datetime64 | None = None
        self.end: np.datetime64 | None = None

    def add(self, report: ReadReport, frame: pd.DataFrame) -> None:
        ds = frame["ds"].to_numpy()
        self.add_counts(report.to_dict(), ds.min() if len(ds) else None, ds.max() if len(ds) else None)

    def add_counts(self, counts: dict[str, int], lo: np.datetime64 | None, hi: np.datetime64 | None) -> None:
        """A batch's ReadReport counts and its first and last timestamp (None: no rows)."""
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + int(value)
        if lo is not None:
            self.start = lo if self.start is None else min(self.start, lo)
            self.end = hi if self.end is None else max(self.end, hi)

    def report(self) -> ReadReport:
        return ReadReport(**self.counts)

    def summary(self) -> str:
        return self.report().summary() if self.counts else "no rows"

    def log(self, path: Any) -> None:
        """The run's read summary and its warnings, once."""
        report = self.report() if self.counts else None
        log.info("read %s: %s", path, report.summary() if report else "no rows")
        for warning in report.warnings(path) if report else []:
            log.warning("%s", warning)

    def window(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "rows": self.counts.get("rows", 0),
            "series": self.counts.get("series", 0),
        }


# -- daily-score and backtest ---------------------------------------------------------------------

ASSIGN_MIN_POINTS = 28  # observed points before the scored day an unseen series needs to get a cluster
ASSIGN_WINDOW = 4096  # at most this many recent points feed its period detection
ASSIGN_CHUNK = 10_000


@dataclass(frozen=True)
class Scorer:
    """What scoring needs from the model directory, loaded once per process (or engine worker).

    Plain data (arrays, dicts, torch tensors): an engine can ship it to its workers as it is.
    """

    config: Config
    device: str
    model_dir: str  # for messages only
    names: list[str]  # clusters that have a trained forecaster, sorted
    models: list[Any]  # their ClusterModels, in the same order
    clusters: Any  # store.ClusterIndex: cluster and period of every series fit-clusters saw
    clusterer: dict[str, Any] | None  # clusterer.json: assigns series fit-clusters never saw
    id_examples: pd.Series  # a few ids fit-clusters saw: their type is checked against the input's

    def for_batch(self, frame: pd.DataFrame) -> Scorer:
        """This scorer with the cluster entries of ``frame``'s series only (what a worker needs)."""
        return dataclasses.replace(self, clusters=self.clusters.subset(frame))


@dataclass(frozen=True)
class ScoredBatch:
    """The score rows of one batch of whole series and what the run summary needs of them."""

    rows: pa.Table | None  # score columns, p_value and each row's series ``step``; None once spilled
    report: ReadReport
    start: np.datetime64 | None  # the batch's first and last timestamp read (None: no rows)
    end: np.datetime64 | None
    n_series: int  # series with a row on the scored days
    failed_series: int  # of which could not be scored (FAILED_STATUSES)
    counts: dict[str, int]  # rows per status
    part: str | None = None  # where an engine spilled ``rows``
    tested: dict[str, np.ndarray] | None = None  # Benjamini-Hochberg summary (core.alerts.bh_summary)


def score_batch(scorer: Scorer, frame: pd.DataFrame, first: np.datetime64, last: np.datetime64) -> ScoredBatch:
    """Score rows of whole series for the days [first, last]: the one function every engine calls.

    ``frame``: unique_id, ds, y as :func:`~maml_anomaly.data.read.read_long` returns them, holding
    every row of each of its series up to ``last`` that the models read (more is ignored).
    Returns the rows of the scored days in frame order (sorted by unique_id, ds).
    """
    config = scorer.config
    end = last + DAY
    ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    if len(ds) and ds.max() >= end:  # data after the scored days must not change anything
        frame = frame[ds < end]
        ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    panel, report = build_panel(frame, config.input.snap_tolerance)
    in_range = np.flatnonzero(ds >= first)
    rows = frame.iloc[in_range]
    series = row_series(rows, panel)
    check_id_kinds(scorer.id_examples, panel, scorer.model_dir)
    cluster_names, cluster_of, _ = scorer.clusters.lookup(panel)
    cluster_of = assign_unseen(config, scorer.clusterer, panel, cluster_of, cluster_names, first)
    tolerance = config.input.snap_tolerance
    grid_ds = panel.grid_times(series, ds[in_range], tolerance) if tolerance > 0 else None  # snapped rows' grid points
    out = _score_rows_frame(
        config,
        scorer.names,
        scorer.models,
        panel,
        rows,
        ds[in_range],
        series,
        cluster_names,
        cluster_of,
        scorer.device,
        grid_ds=grid_ds,
    )
    status = out["status"]
    counts = {str(k): int(v) for k, v in status.value_counts().items()}
    failed = status.isin(FAILED_STATUSES).to_numpy()
    out["step"] = panel.step[series]
    return ScoredBatch(
        rows=scores_table(out, alerts=False, step=True),
        report=report,
        start=ds.min() if len(ds) else None,
        end=ds.max() if len(ds) else None,
        n_series=int(np.unique(series).size),
        failed_series=int(np.unique(series[failed]).size),  # batches hold whole series
        counts=counts,
    )


def scores_table(frame: pd.DataFrame, *, alerts: bool = True, step: bool = False) -> pa.Table:
    """The scores frame as Arrow with the output schema; ``alerts=False`` for a batch before the
    alerts step, ``step=True`` with each row's series step (for the alerts step)."""
    id_type = pa.int64() if frame["unique_id"].dtype.kind in "iu" else pa.string()
    schema = scores_schema(id_type).append(pa.field("p_value", pa.float64()))
    if alerts:
        schema = schema.append(pa.field("q_value", pa.float64())).append(pa.field("suppressed", pa.string()))
    if step:
        schema = schema.append(pa.field("step", pa.duration("ns")))
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def assign_unseen(
    config: Config,
    clusterer: dict[str, Any] | None,
    panel: Panel,
    cluster_of: np.ndarray,
    names: list[str],
    first: np.datetime64,
) -> np.ndarray:
    """Series fit-clusters never saw get a cluster from their own history before ``first``.

    Per step group that fit-clusters knows (clusterer.json), a series' period is detected on its
    last points before ``first`` (at most ASSIGN_WINDOW) in a matrix whose width is its own point
    count on fit-clusters' width ladder, and that group's PeriodClusterer predicts its cluster: the
    result depends on the series alone, never on which series share its batch. Series with fewer
    than ASSIGN_MIN_POINTS observed points, or with a step fit-clusters never saw, stay unknown.
    """
    unknown = np.flatnonzero(cluster_of < 0)
    if unknown.size == 0 or clusterer is None:
        return cluster_of
    groups = {float(g["step_seconds"]): g for g in clusterer.get("step_groups", [])}
    code = {name: i for i, name in enumerate(names)}
    out = cluster_of.copy()
    steps = panel.step_seconds[unknown]
    start, step = panel.start.view(np.int64)[unknown], panel.step.view(np.int64)[unknown]
    safe = np.where(step > 0, step, 1)
    stop = np.clip(-((start - first.astype(np.int64)) // safe), 0, panel.lengths[unknown])  # (U,) points before first
    width = history_width(stop, ASSIGN_WINDOW)  # (U,) the series' own matrix width
    for value in np.unique(steps[np.isfinite(steps)]):
        state = groups.get(float(value))
        if state is None:
            continue
        model = PeriodClusterer.from_dict(state["clusterer"])
        in_group = steps == value
        for w in np.unique(width[in_group]).tolist():
            group = np.flatnonzero(in_group & (width == w))
            for lo in range(0, group.size, ASSIGN_CHUNK):
                g = group[lo : lo + ASSIGN_CHUNK]
                matrix = gather_windows(panel.values, panel.indptr, unknown[g], stop[g] - w, w)  # (B, w)
                enough = np.isfinite(matrix).sum(axis=1) >= ASSIGN_MIN_POINTS
                if not enough.any():
                    continue
                periods = detect_periods(
                    matrix[enough],
                    float(value),
                    max_period=config.clusters.max_period,
                    min_strength=config.clusters.min_strength,
                ).period
                labels = model.predict(matrix[enough], periods)
                out[unknown[g[enough]]] = [code.get(state.get("prefix", "") + str(label), -1) for label in labels]
    assigned = int((out[unknown] >= 0).sum())
    if assigned:
        log.info(
            "assigned %d of %d series unseen by fit-clusters to a cluster from their history", assigned, unknown.size
        )
    return out


def _score_rows_frame(
    config: Config,
    names: list[str],
    models: list[Any],
    panel: Panel,
    rows: pd.DataFrame,
    ds: np.ndarray,
    row_series: np.ndarray,
    cluster_names: list[str],
    cluster_of: np.ndarray,
    device: str,
    grid_ds: np.ndarray | None = None,
) -> pd.DataFrame:
    """Score columns (and p_value) of ``rows`` (their timestamps ``ds``, series ``row_series`` in the
    panel), each series by its cluster's forecaster; shared by the local and the Ray engine.
    ``grid_ds``: the rows' grid timestamps where snapping moved them (default ``ds``)."""
    model_index = {name: i for i, name in enumerate(names)}
    series_model = np.array(
        [model_index.get(cluster_names[c], -1) if c >= 0 else -1 for c in range(len(cluster_names))] + [-1], np.int64
    )[np.where(cluster_of >= 0, cluster_of, len(cluster_names))]  # (S,) model per series, -1 none
    y = rows["y"].to_numpy(np.float64, na_value=np.nan)
    res = score_rows(
        models,
        panel.values,
        panel.indptr,
        panel.start.view(np.int64),
        panel.step.view(np.int64),
        series_model,
        row_series,
        (ds if grid_ds is None else grid_ds).view(np.int64),
        y,
        threshold=config.score.threshold,
        batch_size=config.score.batch_size,
        device=device,
        unknown=cluster_of < 0,
    )
    # a series with a single point has no step, so score_rows sees it as off its grid: it is short
    one_point = np.isnat(panel.step)[row_series] & (res.status == STATUS_OFF_GRID)
    res.status[one_point] = STATUS_INSUFFICIENT
    cluster_col = np.asarray(cluster_names + [None], dtype=object)[
        np.where(cluster_of >= 0, cluster_of, len(cluster_names))[row_series]
    ]
    return pd.DataFrame(
        {
            "unique_id": plain_ids(rows["unique_id"]),
            "ds": ds,
            "y": np.where(np.isfinite(y), y, np.nan),
            "y_hat": res.y_hat,
            "lower": res.lower,
            "upper": res.upper,
            "score": res.score,
            "is_anomaly": res.is_anomaly,
            "cluster": cluster_col,
            "status": res.status,
            "p_value": res.p_value,
        }
    )


def check_id_kinds(model_ids: pd.Series, panel: Panel, md: Any) -> None:
    """Integer ids in one and string ids in the other can never match: say so instead of failing."""
    model_int = pd.api.types.is_integer_dtype(model_ids.dtype)
    input_int = panel.ids.dtype.kind in "iu"
    if len(model_ids) and panel.n_series and model_int != input_int:
        kind = {True: "integer", False: "string"}
        raise InputError(
            f"the input's series ids are {kind[input_int]}s (e.g. {panel.ids[0]!r}) but the model "
            f"directory {getattr(md, 'path', md)} was fit on {kind[model_int]} ids (e.g. {model_ids.iloc[0]!r}). "
            "Give the id column the same type as when fit-clusters ran (cast it upstream), or "
            "name the right column with --id-col."
        )


def row_series(rows: pd.DataFrame, panel: Panel) -> np.ndarray:
    """(N,) panel position of every row's series (looked up once per id, not per row)."""
    col = rows["unique_id"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories.to_numpy()
        cats = cats.astype(np.int64) if cats.dtype.kind in "iu" else cats.astype(object)
        return panel.positions(cats)[col.cat.codes.to_numpy()]
    return panel.positions(col.to_numpy())


def plain_ids(col: pd.Series) -> np.ndarray:
    """(N,) the ids of a column as plain values (a categorical's codes looked up once)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories.to_numpy()
        return cats[col.cat.codes.to_numpy()]
    return col.to_numpy()


# -- fit-clusters summaries as Arrow ---------------------------------------------------------------

SUMMARY_COUNTS = (
    "rows",
    "series",
    "grid_points",
    "missing",
    "off_grid",
    "duplicates",
    "non_finite",
    "snapped",
    "rounded",
)


def summary_table(batch: Any, report: Any, lo: np.datetime64, hi: np.datetime64) -> pa.Table:
    """One row for a group's fit-clusters summary: its series as lists, its read counts and time bounds.

    ``batch``: the :class:`PeriodBatch` of :func:`summarise_batch`; ``report``
    its ReadReport; ``lo``/``hi`` the group's first and last timestamp. A cycle shape is stored
    with its series (null for a series without a period), so the row is plain Arrow, no pickles.
    """
    n = batch.ids.size
    bins = np.zeros(n, np.int64)  # (S,) profile length of each series, 0 = no profile
    for rows, prof in batch.shapes.values():
        bins[rows] = prof.shape[1]
    offsets = np.concatenate([[0], np.cumsum(bins)])  # (S+1,)
    values = np.zeros(offsets[-1], np.float32)
    for rows, prof in batch.shapes.values():
        values[offsets[rows][:, None] + np.arange(prof.shape[1])] = prof  # (r, bins) into their slots
    profiles = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values), mask=pa.array(bins == 0))
    ids = pa.array(batch.ids, type=pa.int64() if batch.ids.dtype == np.int64 else pa.string())
    columns = {"ids": _as_row(ids)}
    for name in ("step_ns", "period", "second", "n_obs"):
        columns[name] = _as_row(pa.array(getattr(batch, name).astype(np.int64)))
    columns["strength"] = _as_row(pa.array(batch.strength.astype(np.float64)))
    columns["profile"] = _as_row(profiles)
    counts = report.to_dict()
    columns.update({f"n_{k}": pa.array([int(counts[k])], pa.int64()) for k in SUMMARY_COUNTS})
    columns["ds_min"] = pa.array(np.array([lo], "datetime64[ns]"))
    columns["ds_max"] = pa.array(np.array([hi], "datetime64[ns]"))
    return pa.table(columns)


def _as_row(values: pa.Array) -> pa.Array:
    """A list column of one row that holds ``values``."""
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)


def summary_from_table(table: pa.Table) -> Iterator[tuple[Any, dict[str, int], np.datetime64, np.datetime64]]:
    """(:class:`PeriodBatch`, ReadReport counts, first, last timestamp) of each row of summary tables."""

    for i in range(table.num_rows):
        row = table.slice(i, 1)

        def col(name: str, row: pa.Table = row) -> pa.Array:  # the row's list
            return row.column(name).combine_chunks().flatten()

        ids_arr = col("ids")
        ids = ids_arr.to_numpy() if pa.types.is_integer(ids_arr.type) else np.asarray(ids_arr.to_pylist(), dtype=object)
        step_ns, period, second, n_obs = (
            col(n).to_numpy().astype(np.int64) for n in ("step_ns", "period", "second", "n_obs")
        )
        strength = col("strength").to_numpy().astype(np.float64)
        profile = col("profile")  # (S,) list<float32>, null without a period
        shapes = {}
        for s, p in sorted({(int(s), int(p)) for s, p in zip(step_ns[period > 0], period[period > 0])}):
            rows = np.flatnonzero((step_ns == s) & (period == p))  # increasing, as summarise_batch keeps them
            flat = profile.take(pa.array(rows)).flatten().to_numpy(zero_copy_only=False)
            shapes[(s, p)] = (rows, flat.astype(np.float32).reshape(rows.size, -1))  # (r, bins)
        counts = {k: int(row.column(f"n_{k}")[0].as_py()) for k in SUMMARY_COUNTS}
        lo = np.datetime64(row.column("ds_min")[0].value, "ns")
        hi = np.datetime64(row.column("ds_max")[0].value, "ns")
        yield PeriodBatch(ids, step_ns, period, strength, second, n_obs, shapes), counts, lo, hi


# -- results as Arrow rows (how a remote engine sends them back: no pickles) ----------------------


class PeriodCodec:
    """(PeriodBatch, ReadReport, first, last timestamp) of a batch <-> one Arrow row."""

    def encode(self, result: tuple[PeriodBatch, ReadReport, Any, Any]) -> pa.Table:
        return summary_table(*result)

    def decode(self, table: pa.Table) -> Iterator[tuple[PeriodBatch, ReadReport, Any, Any]]:
        for batch, counts, lo, hi in summary_from_table(table):
            yield batch, ReadReport(**counts), lo, hi


class ScoredCodec:
    """A spilled ScoredBatch (its rows already written to ``part``) <-> one Arrow row: JSON and its p-values."""

    def encode(self, result: ScoredBatch) -> pa.Table:
        assert result.rows is None, "score rows travel as files, not in the result"
        tested = result.tested or {}
        ns = lambda t: None if t is None else int(np.datetime64(t, "ns").astype(np.int64))  # noqa: E731
        fields = {
            "report": result.report.to_dict(),
            "start": ns(result.start),
            "end": ns(result.end),
            "n_series": result.n_series,
            "failed_series": result.failed_series,
            "counts": result.counts,
            "part": result.part,
            "groups": list(tested),
        }
        values = np.concatenate(list(tested.values())) if tested else np.zeros(0)
        return pa.table(
            {
                "scored": pa.array([json.dumps(fields)], pa.string()),
                "tested": _as_row(pa.array(values, pa.float64())),  # every group's p-values, one after another
                "sizes": _as_row(pa.array([v.size for v in tested.values()], pa.int64())),
            }
        )

    def decode(self, table: pa.Table) -> Iterator[ScoredBatch]:
        for i, text in enumerate(table.column("scored").to_pylist()):
            f = json.loads(text)
            values = table.column("tested")[i].values.to_numpy(zero_copy_only=False)
            ends = np.cumsum(table.column("sizes")[i].values.to_numpy(zero_copy_only=False))
            tested = dict(zip(f["groups"], np.split(values, ends[:-1]))) if f["groups"] else None
            at = lambda v: None if v is None else np.int64(v).view("M8[ns]")  # noqa: E731
            yield ScoredBatch(
                rows=None,
                report=ReadReport(**f["report"]),
                start=at(f["start"]),
                end=at(f["end"]),
                n_series=f["n_series"],
                failed_series=f["failed_series"],
                counts=f["counts"],
                part=f["part"],
                tested=tested,
            )
