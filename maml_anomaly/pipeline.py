"""The only place that sequences I/O, compute and artifacts: one keyword-only function per command.

Each function takes a :class:`~maml_anomaly.config.Config` plus the command's paths, raises
:class:`~maml_anomaly.errors.MamlAnomalyError` subclasses for anything the user can fix, and
returns a JSON-ready summary dict. The key ``"summary"`` holds the one-line human summary that
the CLI prints (with ``--json`` the CLI prints the whole dict instead).

Order inside a command: check the cheap things first (model directory, output path), then read
and validate the input, then compute, then write (atomically). Nothing is written before the
input has been validated, so a bad input never leaves a partial output or a damaged model.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from maml_anomaly.artifacts import CLUSTERS, ModelDir, jsonable
from maml_anomaly.config import Config
from maml_anomaly.errors import ConfigError, InputError, MamlAnomalyError, ModelDirError
from maml_anomaly.io import (
    SCORE_COLUMNS,
    ReadReport,
    build_panel,
    iter_series_frames,
    read_long,
    time_bounds,
    write_bytes_atomic,
    write_parquet_atomic,
)
from maml_anomaly.locking import command_locks
from maml_anomaly.panel import Panel
from maml_anomaly.tasks import recent_len

log = logging.getLogger(__name__)

DAY = np.timedelta64(1, "D")


# -- shared steps ---------------------------------------------------------------------------------


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
    log.info("read %s: %s", input, report.summary())
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
            "--device cuda was asked for, but torch sees no CUDA device on this machine. "
            "Use --device cpu (or auto)."
        )
    log.debug("torch: device %s, %d thread(s)", device, config.runtime.threads)
    return device


def tune_allocator(keep: bool = True) -> bool:
    """Keep freed memory in the process instead of returning it to the kernel (glibc only).

    With glibc's defaults every large intermediate of batched adaptation (tens of MB) is a fresh
    mmap, page-faulted on first touch and unmapped on free; raising the mmap and trim thresholds
    to their maximum (2 GiB, the same as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ in the
    environment) made scoring about 2.5x faster per CPU second (docs/performance.md). Returns
    whether the settings took. ``keep=False`` restores glibc's thresholds (128 KiB) and trims
    the heap: for a process that stops computing and only holds batches briefly.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    limit = ctypes.c_int(2**31 - 1 if keep else 128 * 1024)
    ok = bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, limit))
    if not keep and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    return ok


def parse_day(value: str, option: str) -> np.datetime64:
    """A YYYY-MM-DD option as datetime64[ns] midnight (InputError with the fix otherwise)."""
    try:
        day = pd.Timestamp(pd.to_datetime(value, format="%Y-%m-%d"))
    except (ValueError, TypeError):
        raise InputError(f"{option} expects a date as YYYY-MM-DD; found {value!r}.") from None
    return np.datetime64(day.as_unit("ns").to_datetime64(), "ns")


def resolve_day(frame: pd.DataFrame, date: str | None) -> np.datetime64:
    """The calendar day to score: ``date`` (which must have data) or the input's last day."""
    ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    last = ds.max().astype("datetime64[D]").astype("datetime64[ns]")
    if date is None:
        return last
    day = parse_day(date, "--date")
    if not np.any((ds >= day) & (ds < day + DAY)):
        first = ds.min().astype("datetime64[D]")
        raise InputError(
            f"the input has no data on {date}; it covers {first} to {last.astype('datetime64[D]')}. "
            "Choose a --date inside that range, or leave --date out to score the last day."
        )
    return day


def resolve_range(frame: pd.DataFrame, start: str | None, end: str | None) -> tuple[np.datetime64, np.datetime64]:
    """Backtest days [first, last] (inclusive) within the input's data."""
    ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    data_first = ds.min().astype("datetime64[D]").astype("datetime64[ns]")
    data_last = ds.max().astype("datetime64[D]").astype("datetime64[ns]")
    first = parse_day(start, "--start") if start else data_first
    last = parse_day(end, "--end") if end else data_last
    if start and end and first > last:
        raise InputError(f"--start {start} is after --end {end}; give a start on or before the end.")
    if first > last or not np.any((ds >= first) & (ds < last + DAY)):
        raise InputError(
            f"the input has no data between {first.astype('datetime64[D]')} and "
            f"{last.astype('datetime64[D]')}; it covers {data_first.astype('datetime64[D]')} to "
            f"{data_last.astype('datetime64[D]')}. Choose --start/--end inside that range."
        )
    return max(first, data_first), min(last, data_last)


def check_output(output: Path) -> None:
    """The scores output must be a file path whose folder can be made."""
    if output.is_dir():
        raise InputError(f"--output {output} is a directory; expected the path of a parquet file to write.")
    parent = output.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--output {output}: {parent} is a file, so the folder cannot be made.")


def open_trained(model_dir: Path) -> ModelDir:
    """A model directory with a valid manifest and clusters (ModelDirError otherwise)."""
    md = ModelDir(model_dir)
    md.read_manifest()
    if not md.has(CLUSTERS):
        raise ModelDirError(
            f"model directory {md.path} has no {CLUSTERS}. Run fit-clusters with this --model-dir first."
        )
    return md


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal; a no-op otherwise.

    Use as ``with progress("scoring", n_batches) as advance: ... advance(1)``.
    """
    if not sys.stderr.isatty() or not log.isEnabledFor(logging.INFO):
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def locked(*, model_shared: bool, output: bool = False):
    """Run a pipeline function holding its model-directory lock (shared for readers) and output lock.

    A second run on the same model directory or output waits ``config.runtime.lock_timeout``
    seconds at most, then stops with a message naming the holder (maml_anomaly.locking).
    """

    def wrap(fn):
        @functools.wraps(fn)
        def run(*, config: Config, **kwargs: Any) -> dict[str, Any]:
            model_dir = kwargs["model_dir"]
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


def _summary(text: str, **fields: Any) -> dict[str, Any]:
    return {"summary": text, **fields}


# -- fit-clusters (compute: issue #4) -------------------------------------------------------------

# Longest history used to find a period: 4 cycles of the longest calendar period (a week of
# 5-minute steps: 8064 points), at least 1024 points; and a group's matrix stays under ~1.5 GB.
_HISTORY_CYCLES = 4
_MIN_HISTORY = 1024
_DETECT_BYTES = 256_000_000  # one detection matrix (float64) at most: rows are detected in chunks
# matrix widths: a series' own length rounded up to this ladder (about 19% apart), so its period
# depends on its own history only, never on which other series share its batch
_WIDTHS = np.unique(np.ceil(8 * 2 ** (np.arange(64) / 4)).astype(np.int64))


@locked(model_shared=False)
def fit_clusters(
    *, config: Config, input: Path, model_dir: Path, overwrite: bool = False, engine: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Detect each series' period, group the series and write clusters.parquet + manifest.

    The input is streamed in batches of whole series (as daily-score reads it): each batch keeps
    only per-series summaries (period, strength, cycle shape, from :func:`summarise_batch`), and
    the clusters are fitted on those at the end, so memory is set by the batch size and the
    number of series, not the rows. With ``engine="ray"`` the batches are summarised on Ray
    workers (:func:`maml_anomaly.engines.ray_engine.period_batches_ray`); the clusters are fitted
    here all the same.
    """
    import time

    from threadpoolctl import threadpool_limits

    from maml_anomaly.clustering import step_tag

    _check_engine(engine, ray_address)
    md = ModelDir(model_dir)
    md.check_fresh(overwrite)
    cc = config.clusters
    t0 = time.perf_counter()
    if engine == "ray":  # -- engine dispatch (issue #8): the same summarise_batch on Ray workers --
        from maml_anomaly.engines.ray_engine import period_batches_ray

        batches, totals = period_batches_ray(config=config, input=input, address=ray_address)
    else:
        batches, totals = _period_batches_local(config, input)
    log.info("read %s: %s", input, totals.summary())
    if totals.counts.get("off_grid", 0):
        log.warning("%d rows lie off their series' regular grid; they are kept and reported", totals.counts["off_grid"])
    with threadpool_limits(limits=config.runtime.threads, user_api="blas"):  # tiny matmuls
        clusters, states, groups, too_short = _finish_periods(batches, cc)
    seconds = time.perf_counter() - t0
    table = _cluster_table(clusters)
    md.prepare(overwrite)
    md.save_clusters(clusters)
    md.save_json("clusterer", {"format_version": 1, "step_groups": states})
    step_ns = clusters["step"].to_numpy().astype(np.int64)
    summary = {
        "series": len(clusters),
        "clusters": table,
        "periodic": int((clusters["period"] > 0).sum()),
        "aperiodic": int((clusters["period"] == 0).sum()),
        "too_short": int(too_short.sum()),
        "steps": [{"step": step_tag(s / 1e9), "series": int((step_ns == s).sum())} for s in groups],
        "seconds": round(seconds, 2),
    }
    md.write_manifest(config, config.columns, totals.window(), extra={"fit_clusters": summary})
    return _summary(_fit_clusters_text(summary, md.path), **summary)


def summarise_batch(config: Config, frame: pd.DataFrame) -> tuple[_PeriodBatch, ReadReport]:
    """fit-clusters' step for one batch of whole series, the one function every engine calls.

    ``frame``: unique_id, ds, y as :func:`~maml_anomaly.io.read_long` returns them, every row of
    each of its series. Pure: no I/O, nothing global; a series' summary depends on its own rows
    only, so any split of the input into batches of whole series gives the same summaries.
    """
    panel, report = build_panel(frame, config.input.snap_tolerance)
    return _summarise_periods(panel, config.clusters), report


def _period_batches_local(config: Config, input: Path) -> tuple[list[_PeriodBatch], _ReadTotals]:
    """The input streamed in batches of whole series, each summarised in this process."""
    from threadpoolctl import threadpool_limits

    totals = _ReadTotals()
    batches = []
    frames = iter_series_frames(input, config.columns, config.input.on_duplicate, batch_rows=STREAM_ROWS)
    with threadpool_limits(limits=config.runtime.threads, user_api="blas"):  # tiny matmuls
        for frame in frames:
            batch, report = summarise_batch(config, frame)
            totals.add(report, frame)
            del frame  # only the summary is kept
            batches.append(batch)
    return batches, totals


def _periods_and_clusters(panel: Panel, cc: Any) -> tuple[pd.DataFrame, list[dict[str, Any]], list[int], np.ndarray]:
    """Periods and clusters of a whole panel: what streamed fit-clusters gives for the same series."""
    return _finish_periods([_summarise_periods(panel, cc)], cc)


@dataclass(frozen=True)
class _PeriodBatch:
    """What fit-clusters keeps of a batch of series: one entry per series, shapes of periodic ones."""

    ids: np.ndarray  # (S,)
    step_ns: np.ndarray  # (S,) int64, 0 = no step (a single point)
    period: np.ndarray  # (S,) int64
    strength: np.ndarray  # (S,) float64
    second: np.ndarray  # (S,) int64
    n_obs: np.ndarray  # (S,) int64
    shapes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]  # (step, period) -> (series (r,), profiles (r, bins))


def _history_width(lengths: np.ndarray, cap: int) -> np.ndarray:
    """(G,) detection matrix width of each series: its length on the _WIDTHS ladder, at most ``cap``."""
    up = _WIDTHS[np.minimum(np.searchsorted(_WIDTHS, lengths), _WIDTHS.size - 1)]
    return np.maximum(8, np.minimum(up, cap))


def _summarise_periods(panel: Panel, cc: Any) -> _PeriodBatch:
    """Per step and matrix width: tail matrix -> detect_periods -> cycle shapes of periodic series."""
    from maml_anomaly.clustering import profile_bins
    from maml_anomaly.periodicity import calendar_periods, cycle_profiles, detect_periods

    step_ns = np.where(np.isnat(panel.step), 0, panel.step.astype(np.int64))  # (S,) 0 = no step
    n = panel.n_series
    period, second = np.zeros(n, np.int64), np.zeros(n, np.int64)
    strength = np.zeros(n, np.float64)
    parts: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    for s in np.unique(step_ns[step_ns > 0]).tolist():
        seconds = s / 1e9
        cap = max(_HISTORY_CYCLES * max([*calendar_periods(seconds), cc.max_period, 1]), _MIN_HISTORY)
        rows_s = np.flatnonzero(step_ns == s)
        width = _history_width(panel.lengths[rows_s], cap)  # (G,)
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
                    parts.setdefault((s, p), []).append((rows[sel], cycle_profiles(matrix[sel], p, bins=profile_bins(p))))
    shapes = {}
    for key, chunks in parts.items():
        rows = np.concatenate([r for r, _ in chunks])
        order = np.argsort(rows, kind="stable")
        shapes[key] = (rows[order], np.concatenate([q for _, q in chunks])[order])
    return _PeriodBatch(panel.ids, step_ns, period, strength, second, _observed_per_series(panel), shapes)


def _finish_periods(
    batches: list[_PeriodBatch], cc: Any
) -> tuple[pd.DataFrame, list[dict[str, Any]], list[int], np.ndarray]:
    """Per step group: PeriodClusterer on the kept cycle shapes; the clusters frame (series sorted by id)."""
    from maml_anomaly.clustering import PeriodClusterer, step_tag
    from maml_anomaly.periodicity import calendar_periods

    b = _concat_period_batches(batches)
    batches.clear()
    step_ns, period, n = b.step_ns, b.period, b.ids.size
    cluster = np.empty(n, dtype=object)
    too_short = np.zeros(n, bool)
    steps = [int(s) for s in np.unique(step_ns[step_ns > 0])]
    groups = sorted(steps, key=lambda s: (-int((step_ns == s).sum()), s))  # largest group first
    prefixed = len(groups) > 1  # names carry the step only when steps differ ("1h-p24")
    states = []
    for s in groups:
        rows = np.flatnonzero(step_ns == s)  # (G,)
        seconds = s / 1e9
        cal = calendar_periods(seconds)
        too_short[rows] = b.n_obs[rows] < 2 * (min(cal) if cal else 3)
        model = PeriodClusterer(
            min_cluster_size=cc.min_cluster_size, max_subclusters=cc.max_subclusters, seed=0
        ).fit_profiles(period[rows], lambda p, _rows, s=s: b.shapes[(s, p)][1])
        prefix = f"{step_tag(seconds)}-" if prefixed else ""
        cluster[rows] = _prefixed(model.labels_, prefix)
        states.append({"step_seconds": seconds, "prefix": prefix, "clusterer": model.to_dict()})
    no_step = step_ns == 0  # a single point: no step, no period
    if no_step.any():
        too_short |= no_step
        cluster[no_step] = _fallback_cluster(states, cluster, step_ns, groups)
    clusters = pd.DataFrame(
        {
            "unique_id": b.ids,
            "cluster": cluster.astype(str),
            "period": period,
            "strength": b.strength.round(6),
            "second_period": b.second,
            "step": np.where(step_ns > 0, step_ns, np.iinfo(np.int64).min).view("m8[ns]"),  # NaT: no step
            "n_obs": b.n_obs,
        }
    )
    return clusters, states, groups, too_short


def _concat_period_batches(batches: list[_PeriodBatch]) -> _PeriodBatch:
    """One summary for all batches, series in id order (the bucketed stream of unsorted input is not)."""
    cat = lambda name: np.concatenate([getattr(x, name) for x in batches])  # noqa: E731
    ids = cat("ids")
    offsets = np.cumsum([0] + [x.ids.size for x in batches])
    shapes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for key in sorted({k for x in batches for k in x.shapes}):
        got = [(x.shapes[key][0] + off, x.shapes[key][1]) for x, off in zip(batches, offsets) if key in x.shapes]
        shapes[key] = (np.concatenate([r for r, _ in got]), np.concatenate([q for _, q in got]))
    out = _PeriodBatch(ids, cat("step_ns"), cat("period"), cat("strength"), cat("second"), cat("n_obs"), shapes)
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return out
    order = np.argsort(ids, kind="stable")  # (S,) new position -> old
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)  # old position -> new
    moved = {}
    for key, (rows, prof) in shapes.items():
        new = rank[rows]
        o = np.argsort(new, kind="stable")
        moved[key] = (new[o], prof[o])
    return _PeriodBatch(*(getattr(out, f)[order] for f in ("ids", "step_ns", "period", "strength", "second", "n_obs")), moved)


def _prefixed(labels: np.ndarray, prefix: str) -> np.ndarray:
    """Cluster names with a step prefix (one string per cluster, not per series)."""
    if not prefix:
        return labels
    names, inverse = np.unique(labels.astype(str), return_inverse=True)
    return np.asarray([prefix + n for n in names], dtype=object)[inverse]


def _observed_per_series(panel: Panel) -> np.ndarray:
    """(S,) non-missing grid values per series (one cumulative sum, no loop over series)."""
    seen = np.concatenate([[0], np.cumsum(~np.isnan(panel.values))])  # (N+1,)
    return (seen[panel.indptr[1:]] - seen[panel.indptr[:-1]]).astype(np.int64)


def _fallback_cluster(states: list[dict[str, Any]], cluster: np.ndarray, step_ns: np.ndarray, groups: list[int]) -> str:
    """Cluster for series without a step: the largest step group's aperiodic cluster (or its largest)."""
    if not groups:
        return "p0"
    main = cluster[step_ns == groups[0]].astype(str)
    aperiodic = f"{states[0]['prefix']}p0"
    if (main == aperiodic).any():
        return aperiodic
    names, counts = np.unique(main, return_counts=True)
    return str(names[np.argmax(counts)])


def _cluster_table(clusters: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per cluster: name, most common period, size (largest first, then by name)."""
    g = clusters.groupby("cluster", sort=True)
    table = pd.DataFrame({"size": g.size(), "period": g["period"].agg(lambda p: int(p.mode().iloc[0]))})
    table = table.reset_index().sort_values(["size", "cluster"], ascending=[False, True])
    return [
        {"cluster": str(r.cluster), "period": int(r.period), "size": int(r.size)} for r in table.itertuples(index=False)
    ]


def _fit_clusters_text(summary: dict[str, Any], path: Path, max_rows: int = 15) -> str:
    lines = [
        f"fit-clusters: {summary['series']:,} series in {len(summary['clusters'])} clusters -> {path}",
        f"  periodic {summary['periodic']:,}, aperiodic {summary['aperiodic']:,} "
        f"(too short to tell: {summary['too_short']:,}); steps: "
        + ", ".join(f"{s['step']} x {s['series']:,}" for s in summary["steps"]),
        f"  {'cluster':<16} {'period':>7} {'series':>10}",
    ]
    for row in summary["clusters"][:max_rows]:
        lines.append(f"  {row['cluster']:<16} {row['period']:>7} {row['size']:>10,}")
    if len(summary["clusters"]) > max_rows:
        rest = summary["clusters"][max_rows:]
        lines.append(f"  ... {len(rest)} more clusters, {sum(r['size'] for r in rest):,} series")
    lines.append(f"  {summary['seconds']:.1f} s for periods and clusters")
    return "\n".join(lines)


# -- meta-train (compute: issue #5) ---------------------------------------------------------------

DETECTOR = "detector.json"  # cluster -> weights file and what scoring needs to rebuild the model
TRAINING_REPORT = "training_report.json"
DETECTOR_FORMAT = 1


@locked(model_shared=False)
def meta_train(*, config: Config, input: Path, model_dir: Path, overwrite: bool = False) -> dict[str, Any]:
    """Meta-train one forecaster per cluster; write weights and the training report."""
    import time

    from maml_anomaly.tasks import choose_lag_spec, query_len_for_step, training_window_width
    from maml_anomaly.training import train_cluster

    md = open_trained(model_dir)
    md.guard_overwrite(_weight_files(md) + [n for n in (DETECTOR, TRAINING_REPORT) if md.has(n)], overwrite)
    setup_torch(config)
    data = load_training_input(config, md, input)
    panel = data.panel
    if not np.isfinite(panel.values).any():
        raise InputError(
            f"input {input} has no observed values: every y is null, NaN or infinite, so there is "
            "nothing to meta-train on. Check the --value-col column and the upstream job."
        )
    names, cluster_of, period_of = _series_clusters(md, panel)
    settings = _train_settings(config)
    started = time.perf_counter()
    index: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    with progress("meta-training", len(names)) as advance:
        for i, name in enumerate(names):
            rows = np.flatnonzero(cluster_of == i)  # panel positions of the cluster's series
            period = int(pd.Series(period_of[rows]).mode().iloc[0])
            steps = panel.step_seconds[rows]
            step = float(pd.Series(steps[np.isfinite(steps)]).mode().iloc[0]) if np.isfinite(steps).any() else np.nan
            query_len = query_len_for_step(step)
            spec = choose_lag_spec(period, panel.lengths[rows], settings.k_shot, query_len)
            log.info("cluster %s: %d series, period %d, lags %s, query %d", name, rows.size, period, spec.lags, query_len)
            model = train_cluster(
                panel.values, panel.indptr, rows, spec, query_len, settings,
                log=lambda msg, name=name: log.debug("cluster %s: %s", name, msg),
            )
            advance(1)
            if model is None:
                reports[name] = {"skipped": "no series is long enough for one task window", "n_series": int(rows.size),
                                 "window": training_window_width(spec, settings.k_shot, query_len, room=0)}
                log.warning("cluster %s: skipped, no series holds a full task window", name)
                continue
            file = f"cluster-{i:04d}.safetensors"
            tensors = dict(model.params)
            tensors.update({f"inner_lr/{k}": v for k, v in (model.inner_lrs or {}).items()})
            md.save_weights(file, tensors, {"cluster": name})
            index[name] = {"weights": file, **model.metadata()}
            reports[name] = model.report
            errs = model.report["query_errors"]
            log.info(
                "cluster %s: adapted query mse %.4f (no adaptation %.4f, scratch %.4f, transfer %.4f, seasonal naive %.4f)",
                name, errs["maml_adapted"]["mse"], errs["maml_no_adaptation"]["mse"], errs["scratch_same_steps"]["mse"],
                errs["transfer_finetuned"]["mse"], errs["seasonal_naive"]["mse"],
            )
    md.save_json(DETECTOR, {"format": DETECTOR_FORMAT, "clusters": index})
    md.save_json(TRAINING_REPORT, reports)
    extra = dict(md.read_manifest().get("extra", {}))
    extra["meta_train"] = {"clusters": len(names), "trained": len(index), "seconds": round(time.perf_counter() - started, 2)}
    md.write_manifest(config, config.columns, data.window, extra=extra)
    helped = sum(bool(r.get("adaptation_helps")) for r in reports.values())
    return _summary(
        f"meta-trained {len(index)} of {len(names)} clusters in {time.perf_counter() - started:.1f} s; "
        f"adaptation beat no adaptation and training from scratch in {helped}; report: {md.path / TRAINING_REPORT}",
        clusters=len(names),
        trained=len(index),
        adaptation_helps=helped,
        seconds=round(time.perf_counter() - started, 2),
        report=str(md.path / TRAINING_REPORT),
        query_errors={name: r.get("query_errors") for name, r in reports.items()},
    )


def _weight_files(md: ModelDir) -> list[str]:
    return sorted(p.name for p in md.path.glob("*.safetensors"))


def _train_settings(config: Config):
    from maml_anomaly.training import TrainSettings

    t = config.train
    return TrainSettings(
        k_shot=t.k_shot, inner_steps=t.inner_steps, inner_lr=t.inner_lr, learn_inner_lr=t.learn_inner_lr,
        meta_batch_size=t.meta_batch_size, meta_lr=t.meta_lr, iterations=t.iterations, first_order=t.first_order,
        seed=t.seed, hidden=tuple(t.hidden), time_budget_s=t.time_budget_s,
    )


def _series_clusters(
    md: ModelDir | str, panel: Panel, clusters: pd.DataFrame | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Cluster names (sorted) and, per panel series, its cluster index (-1 unknown) and period.

    ``clusters``: clusters.parquet as already loaded (else read from ``md``).
    """
    if clusters is None:
        clusters = md.load_clusters()
    names = sorted(clusters["cluster"].astype(str).unique().tolist())
    _check_id_kinds(clusters["unique_id"], panel, md)
    pos = panel.positions(clusters["unique_id"].to_numpy())  # (C,) panel position of each row
    known = pos >= 0
    code = pd.Categorical(clusters["cluster"].astype(str), categories=names).codes.astype(np.int64)
    cluster_of = np.full(panel.n_series, -1, np.int64)
    cluster_of[pos[known]] = code[known]
    period_of = np.zeros(panel.n_series, np.int64)
    period_of[pos[known]] = clusters["period"].to_numpy(np.int64)[known]
    return names, cluster_of, period_of


def _check_id_kinds(model_ids: pd.Series, panel: Panel, md: ModelDir | str) -> None:
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


def _load_models(md: ModelDir, inner_steps: int = -1) -> tuple[list[str], list[Any]]:
    """Cluster names and their ClusterModels, as meta-train wrote them (``inner_steps`` >= 0
    replaces the trained number of adaptation steps, for scoring only)."""
    from maml_anomaly.scoring import ClusterModel

    if not md.has(DETECTOR):
        raise ModelDirError(
            f"model directory {md.path} has no trained forecasters ({DETECTOR} is missing). "
            "Run meta-train with this --model-dir first."
        )
    index = md.load_json(DETECTOR)
    if index.get("format") != DETECTOR_FORMAT:
        raise ModelDirError(
            f"{md.path / DETECTOR} has format {index.get('format')!r}; this version reads format "
            f"{DETECTOR_FORMAT}. Re-run meta-train with --overwrite."
        )
    names, models = [], []
    for name in sorted(index["clusters"]):
        meta = index["clusters"][name]
        tensors, _ = md.load_weights(meta["weights"])
        params = {k: v for k, v in tensors.items() if not k.startswith("inner_lr/")}
        lrs = {k[len("inner_lr/"):]: v for k, v in tensors.items() if k.startswith("inner_lr/")} or None
        names.append(name)
        model = ClusterModel.from_metadata(meta, params, inner_lrs=lrs)
        models.append(model if inner_steps < 0 else dataclasses.replace(model, inner_steps=inner_steps))
    return names, models


# -- daily-score and backtest (compute: issue #5) -------------------------------------------------


@locked(model_shared=True, output=True)
def daily_score(
    *, config: Config, input: Path, model_dir: Path, output: Path, date: str | None = None, events: Path | None = None,
    engine: str = "local", ray_address: str | None = None,
) -> dict[str, Any]:
    """Score one calendar day (default: the input's last day); write the scores atomically.

    The input is streamed in batches of whole series (see ``_score_stream``): memory does not
    grow with the number of series, and only the history the forecasters need is read.
    """
    day = parse_day(date, "--date") if date is not None else None
    check_output(output)
    _check_events_path(events, output)
    _check_engine(engine, ray_address)
    md = open_trained(model_dir)
    device = setup_torch(config)
    if engine == "ray":  # -- engine dispatch (issue #8): the same score_batch on Ray workers --
        from maml_anomaly.engines.ray_engine import score_days_ray

        return score_days_ray(config=config, md=md, input=input, output=output, events=events, device=device,
                              date=date, address=ray_address)
    return _score_stream(config, md, input, output, device, first=day, last=day, date_option=date, events=events)


@locked(model_shared=True, output=True)
def backtest(
    *, config: Config, input: Path, model_dir: Path, output: Path, start: str | None = None, end: str | None = None,
    events: Path | None = None, engine: str = "local", ray_address: str | None = None,
) -> dict[str, Any]:
    """daily-score for every day of [start, end], batched across days and series, one output."""
    first = parse_day(start, "--start") if start is not None else None
    last = parse_day(end, "--end") if end is not None else None
    if first is not None and last is not None and first > last:
        raise InputError(f"--start {start} is after --end {end}; give a start on or before the end.")
    check_output(output)
    _check_events_path(events, output)
    _check_engine(engine, ray_address)
    md = open_trained(model_dir)
    device = setup_torch(config)
    if engine == "ray":  # -- engine dispatch (issue #8): the same score_batch on Ray workers --
        from maml_anomaly.engines.ray_engine import score_days_ray

        return score_days_ray(config=config, md=md, input=input, output=output, events=events, device=device,
                              start=start, end=end, backtest=True, address=ray_address)
    return _score_stream(
        config, md, input, output, device, first=first, last=last, date_option=None, backtest=True, events=events
    )


def _check_engine(engine: str, ray_address: str | None) -> None:
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray; found {engine!r}.")
    if ray_address is not None and engine != "ray":
        raise ConfigError("--ray-address joins a Ray cluster, which only --engine ray uses; add --engine ray.")
    if engine == "ray":
        from maml_anomaly.engines.ray_engine import require_ray

        require_ray()  # says how to install it before any work


@dataclass(frozen=True)
class Scorer:
    """What scoring needs from the model directory, loaded once per process (or engine worker).

    Plain data (frames, dicts, torch tensors): an engine can ship it to its workers as it is.
    """

    config: Config
    device: str
    model_dir: str  # for messages only
    names: list[str]  # clusters that have a trained forecaster, sorted
    models: list[Any]  # their ClusterModels, in the same order
    clusters: pd.DataFrame  # clusters.parquet: unique_id, cluster, period, ...
    clusterer: dict[str, Any] | None  # clusterer.json: assigns series fit-clusters never saw


def load_scorer(config: Config, md: ModelDir, device: str) -> Scorer:
    """Read the forecasters, clusters and clusterer state of a trained model directory once."""
    names, models = _load_models(md, config.score.inner_steps_at_scoring)
    clusterer = md.load_json(CLUSTERER) if md.has(CLUSTERER) else None
    return Scorer(config, device, str(md.path), names, models, md.load_clusters(), clusterer)


def score_batch(
    scorer: Scorer, frame: pd.DataFrame, first: np.datetime64, last: np.datetime64, panel: Panel | None = None
) -> pd.DataFrame:
    """Score rows of whole series for the days [first, last]: the one function every engine calls.

    ``frame``: unique_id, ds, y as :func:`~maml_anomaly.io.read_long` returns them, holding every
    row of each of its series up to ``last`` (more is ignored); ``panel``: its panel when already
    built. Pure: no I/O, nothing global, so a batch's rows do not depend on the other batches.
    Returns the score columns, ``p_value`` and each row's series ``step`` (for the alerts step),
    in frame order (sorted by unique_id, ds).
    """
    config = scorer.config
    end = last + DAY
    ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    if panel is None or (len(ds) and ds.max() >= end):  # data after the scored days must not change anything
        frame = frame[ds < end]
        panel, _ = build_panel(frame, config.input.snap_tolerance)
        ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    in_range = np.flatnonzero(ds >= first)
    rows = frame.iloc[in_range]
    row_series = _row_series(rows, panel)
    cluster_names, cluster_of, _ = _series_clusters(scorer.model_dir, panel, scorer.clusters)
    cluster_of = _assign_unknown(config, scorer.clusterer, panel, cluster_of, cluster_names, first)
    out = _score_rows_frame(
        config, scorer.names, scorer.models, panel, rows, ds[in_range], row_series, cluster_names, cluster_of,
        scorer.device,
    )
    out["step"] = panel.step[row_series]
    return out


def write_scores(
    config: Config, out: pd.DataFrame, first: np.datetime64, last: np.datetime64, output: Path,
    events: Path | None, started: float,
) -> dict[str, Any]:
    """The run-wide steps on all score rows (alerts, failed fraction), the atomic write, the summary."""
    step = out.pop("step").to_numpy()
    status = out["status"].to_numpy()
    row_series = pd.factorize(out["unique_id"])[0]  # (N,) series code of each row
    counts = {k: int(v) for k, v in pd.Series(status).value_counts().sort_index().items()}
    # -- alerts (issue #9): q-values, post-rules, alert budget, events: one call, see alerts.py --
    from maml_anomaly.alerts import apply_alerts

    alerted = apply_alerts(out, config.alerts, step=step, series=row_series, threshold=config.score.threshold)
    out = alerted.scores
    write_parquet_atomic(_scores_table(out), output)
    if events is not None:
        write_parquet_atomic(_events_table(alerted.events, out), events)
    # -- end of alerts --
    _check_failed_fraction(status, row_series, counts, config.score.max_failed_fraction, output)
    return _run_summary(config, alerted, events, output, first, last, int(np.unique(row_series).size), counts, started)


def _run_summary(
    config: Config, alerted: Any, events: Path | None, output: Path, first: np.datetime64, last: np.datetime64,
    series: int, counts: dict[str, int], started: float,
) -> dict[str, Any]:
    """The summary of a daily-score / backtest run, whichever engine scored it."""
    import time

    from maml_anomaly.alerts import summary_text
    from maml_anomaly.scoring import STATUS_OK

    counts = dict(sorted(counts.items()))
    points = len(alerted.scores)
    ok = counts.get(STATUS_OK, 0)
    anomalies = int(alerted.scores["is_anomaly"].sum())
    seconds = time.perf_counter() - started
    days = f"{first.astype('datetime64[D]')}" + ("" if first == last else f" to {last.astype('datetime64[D]')}")
    not_ok = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != STATUS_OK) or "none"
    return _summary(
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
    """--events names a parquet file other than the scores output (alerts, issue #9)."""
    if events is None:
        return
    if events.is_dir():
        raise InputError(f"--events {events} is a directory; expected the path of a parquet file to write.")
    if events.resolve() == output.resolve():
        raise InputError(f"--events {events} is the same file as --output; give the events their own parquet path.")


def _alert_fields(alerted: Any, events: Path | None) -> dict[str, Any]:
    """JSON summary fields of the alerts step: counts and the top events by severity."""
    from maml_anomaly.alerts import top_events

    top = top_events(alerted.events, 10)
    return {"alerts": alerted.counts, "events": str(events) if events else None, "top_events": top.to_dict(orient="records")}


def _events_table(events: pd.DataFrame, scores: pd.DataFrame):
    import pyarrow as pa

    from maml_anomaly.alerts import events_schema

    id_type = pa.int64() if scores["unique_id"].dtype.kind in "iu" else pa.string()
    return pa.Table.from_pandas(events, schema=events_schema(id_type), preserve_index=False)


FAILED_STATUSES = ("insufficient_history", "unknown_series", "no_model")  # the series could not be scored


def _check_failed_fraction(
    status: np.ndarray, row_series: np.ndarray, counts: dict[str, int], limit: float, output: Path
) -> None:
    """Fail (after writing) when more than ``limit`` of the scored series could not be scored.

    A series counts as failed when any of its rows has a status in FAILED_STATUSES: it had no
    model or too little history. missing_value and off_grid rows are not failures.
    """
    series = np.unique(row_series)
    failed = np.unique(row_series[np.isin(status, FAILED_STATUSES)]).size
    _fail_over_budget(failed, series.size, counts, limit, output)


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


def _row_series(rows: pd.DataFrame, panel: Panel) -> np.ndarray:
    """(N,) panel position of every row's series (looked up once per id, not per row)."""
    col = rows["unique_id"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories.to_numpy()
        cats = cats.astype(np.int64) if cats.dtype.kind in "iu" else cats.astype(object)
        return panel.positions(cats)[col.cat.codes.to_numpy()]
    return panel.positions(col.to_numpy())


def _plain_ids(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories.to_numpy()
        return cats[col.cat.codes.to_numpy()]
    return col.to_numpy()


CLUSTERER = "clusterer.json"  # PeriodClusterer state written by fit-clusters
ASSIGN_MIN_POINTS = 28  # observed points before the scored day an unseen series needs to get a cluster
ASSIGN_WINDOW = 4096  # at most this many recent points feed its period detection
ASSIGN_CHUNK = 10_000


def _assign_unknown(
    config: Config, clusterer: dict[str, Any] | None, panel: Panel, cluster_of: np.ndarray, names: list[str],
    first: np.datetime64,
) -> np.ndarray:
    """Series fit-clusters never saw get a cluster from their own history before ``first``.

    Per step group that fit-clusters knows (clusterer.json), their period is detected and that
    group's PeriodClusterer predicts the cluster, batched in chunks. Series with fewer than
    ASSIGN_MIN_POINTS observed points, or with a step fit-clusters never saw, stay unknown.
    """
    from maml_anomaly.tasks import gather_windows

    unknown = np.flatnonzero(cluster_of < 0)
    if unknown.size == 0 or clusterer is None:
        return cluster_of
    from maml_anomaly.clustering import PeriodClusterer
    from maml_anomaly.periodicity import detect_periods

    groups = {float(g["step_seconds"]): g for g in clusterer.get("step_groups", [])}
    code = {name: i for i, name in enumerate(names)}
    out = cluster_of.copy()
    steps = panel.step_seconds[unknown]
    start, step = panel.start.view(np.int64)[unknown], panel.step.view(np.int64)[unknown]
    safe = np.where(step > 0, step, 1)
    stop = np.clip(-((start - first.astype(np.int64)) // safe), 0, panel.lengths[unknown])  # (U,) points before first
    for value in np.unique(steps[np.isfinite(steps)]):
        state = groups.get(float(value))
        if state is None:
            continue
        model = PeriodClusterer.from_dict(state["clusterer"])
        group = np.flatnonzero(steps == value)
        width = int(min(max(stop[group].max(), 1), ASSIGN_WINDOW))
        for lo in range(0, group.size, ASSIGN_CHUNK):
            g = group[lo : lo + ASSIGN_CHUNK]
            matrix = gather_windows(panel.values, panel.indptr, unknown[g], stop[g] - width, width)  # (B, width)
            enough = np.isfinite(matrix).sum(axis=1) >= ASSIGN_MIN_POINTS
            if not enough.any():
                continue
            periods = detect_periods(
                matrix[enough], float(value), max_period=config.clusters.max_period,
                min_strength=config.clusters.min_strength,
            ).period
            labels = model.predict(matrix[enough], periods)
            out[unknown[g[enough]]] = [code.get(state.get("prefix", "") + str(label), -1) for label in labels]
    assigned = int((out[unknown] >= 0).sum())
    if assigned:
        log.info("assigned %d of %d series unseen by fit-clusters to a cluster from their history", assigned, unknown.size)
    return out


def _scores_table(frame: pd.DataFrame, *, alerts: bool = True):
    """The scores frame as Arrow with the output schema; ``alerts=False`` for a batch before the alerts step."""
    import pyarrow as pa

    from maml_anomaly.io import scores_schema

    id_type = pa.int64() if frame["unique_id"].dtype.kind in "iu" else pa.string()
    schema = scores_schema(id_type).append(pa.field("p_value", pa.float64()))
    if alerts:
        schema = schema.append(pa.field("q_value", pa.float64())).append(pa.field("suppressed", pa.string()))
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


# -- evaluate ------------------------------------------------------------------------------------


def evaluate(
    *, config: Config, scores: Path, labels: Path, far: float = 0.01, model_dir: Path | None = None
) -> dict[str, Any]:
    """Precision, recall, F1, false-alarm rate and forecast error of scores against labels.

    The forecast error compares y_hat with seasonal naive on the scored points whose lag is in the
    scores too (period: the model directory's clusters when given, else a day at the series' step,
    a week for daily series).
    """
    from maml_anomaly.evaluation import evaluate_scores, format_summary

    if not 0.0 <= far < 1.0:
        raise InputError(f"the target false-alarm rate must be in [0, 1); found {far}.")
    score_frame = _read_parquet_frame(scores, "--scores", list(SCORE_COLUMNS))
    label_cols = _parquet_columns(labels, "--labels")
    if {"unique_id", "start", "end"} <= set(label_cols):
        label_kind, need = "windows", ["unique_id", "start", "end"]
    elif {"unique_id", "ds"} <= set(label_cols):
        label_kind, need = "points", ["unique_id", "ds"]
    else:
        raise InputError(
            f"--labels {labels} has columns {label_cols}; expected labelled points (unique_id, ds) "
            "or labelled windows (unique_id, start, end, both ends inclusive)."
        )
    label_frame = _read_parquet_frame(labels, "--labels", need)
    if label_kind == "points" and len(label_frame) > 0.5 * len(score_frame):
        log.warning("--labels %s labels %d points for %d scored rows: is it a labels file?", labels,
                    len(label_frame), len(score_frame))
    log.info("evaluating %d scored points against %s labels", len(score_frame), label_kind)
    periods = open_trained(model_dir).load_clusters().set_index("unique_id")["period"] if model_dir else None
    summary = evaluate_scores(score_frame, label_frame, far=far, naive=_naive_from_scores(score_frame, periods))
    summary["labels"] = label_kind
    return _summary(format_summary(summary, name=str(scores)), **summary)


def _naive_from_scores(frame: pd.DataFrame, periods: pd.Series | None) -> pd.DataFrame | None:
    """Seasonal-naive forecasts of the scored points from the scores' own y (no MASE scale)."""
    from maml_anomaly.baselines import default_periods, seasonal_naive_reference

    rows = frame.loc[frame["status"] != "off_grid", ["unique_id", "ds", "y"]]
    rows = rows.drop_duplicates(["unique_id", "ds"])
    if rows.empty:
        return None
    period = periods if periods is not None else default_periods(rows)
    return seasonal_naive_reference(rows, period).drop(columns="scale")


def _parquet_columns(path: Path, option: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.dataset as pads

    if not path.exists():
        raise InputError(f"{option} {path} does not exist; expected a parquet file.")
    try:
        return list(pads.dataset(str(path), format="parquet").schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"could not read {option} {path} as parquet ({exc}); expected a complete parquet file.") from None


def _read_parquet_frame(path: Path, option: str, required: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.dataset as pads

    names = _parquet_columns(path, option)
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


# -- demo ----------------------------------------------------------------------------------------

DEMO_EVAL_DAYS = 14  # the sample's labelled evaluation period: its last 14 days
DEMO_TRAIN_BUDGET_S = 45.0  # meta-training seconds for all clusters together: the demo stays under 2 minutes


def demo(*, config: Config, workdir: Path, overwrite: bool = False) -> dict[str, Any]:
    """Make sample data in workdir and run fit-clusters, meta-train, backtest and evaluate on it.

    The model sees only the history before the evaluation period (the last 14 days); backtest
    then scores every day of that period as daily-score would have, and evaluate measures the
    flags against the sample's labelled windows.
    """
    import dataclasses

    from maml_anomaly.sample import write_sample

    if workdir.exists() and not workdir.is_dir():
        raise InputError(f"--workdir {workdir} is a file; expected a folder to create or reuse.")
    if workdir.is_dir() and any(workdir.iterdir()) and not overwrite:
        raise InputError(
            f"--workdir {workdir} is not empty; refusing to overwrite a previous demo. Pass "
            "--overwrite, or choose a new folder."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    paths = write_sample(workdir / "data")
    values = pd.read_parquet(paths["values"])
    last = values["ds"].max().normalize()
    first = last - pd.Timedelta(days=DEMO_EVAL_DAYS - 1)
    history = workdir / "data" / "history.parquet"
    write_parquet_atomic(values[values["ds"] < first], history)
    log.info("sample data in %s: %d series, evaluation period %s to %s", paths["values"].parent,
             values["unique_id"].nunique(), first.date(), last.date())

    model_dir, scores = workdir / "model", workdir / "scores.parquet"
    fit_clusters(config=config, input=history, model_dir=model_dir, overwrite=overwrite)
    n_clusters = max(1, ModelDir(model_dir).load_clusters()["cluster"].nunique())
    budget = min(config.train.time_budget_s, DEMO_TRAIN_BUDGET_S / n_clusters)
    train_config = dataclasses.replace(config, train=dataclasses.replace(config.train, time_budget_s=budget))
    meta_train(config=train_config, input=history, model_dir=model_dir, overwrite=True)
    backtest(config=config, input=paths["values"], model_dir=model_dir, output=scores,
             start=str(first.date()), end=str(last.date()))
    result = evaluate(config=config, scores=scores, labels=paths["labels"], model_dir=model_dir)
    top = _top_anomalies(pd.read_parquet(scores))
    files = {"data": paths["values"].parent, "model_dir": model_dir, "scores": scores}
    text = "\n".join([
        "top anomalies:",
        top.to_string(index=False) if len(top) else "  (none flagged)",
        "",
        result["summary"],
        "",
        *(f"{name}: {path}" for name, path in files.items()),
    ])
    fields = {k: v for k, v in result.items() if k != "summary"}
    return _summary(text, files=files, top_anomalies=top.to_dict(orient="records"), evaluation=fields)


def _top_anomalies(scores: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The n highest-scoring flagged points, the columns an operator reads first."""
    flagged = scores[scores["is_anomaly"].fillna(False).astype(bool)]
    cols = ["unique_id", "ds", "y", "y_hat", "lower", "upper", "score"]
    return flagged.nlargest(n, "score")[cols].reset_index(drop=True)


# -- plot (issue #9) -----------------------------------------------------------------------------


def plot(
    *, config: Config, input: Path, scores: Path, output: Path, series: list[str] | None = None, top: int = 5
) -> dict[str, Any]:
    """PNGs of series with their forecast band, y_hat, flags and events.

    ``--series ID --output FILE.png``: one picture. Several ``--series``, or none (then the
    ``--top`` most significant flagged series): one PNG per series in the folder ``--output``.
    """
    from maml_anomaly import plotting
    from maml_anomaly.alerts import build_events

    plotting.require_matplotlib()
    if top < 1:
        raise InputError(f"--top must be at least 1; found {top}.")
    single = series is not None and len(series) == 1 and output.suffix.lower() == ".png"
    if not single and output.suffix.lower() == ".png":
        raise InputError(
            f"--output {output} is a PNG file, but this plot draws {'several series' if series else f'the top {top} series'}; "
            "give --output a folder (one PNG per series), or name one --series."
        )
    if output.exists() and (output.is_dir() == single):
        raise InputError(f"--output {output} exists and is a {'folder' if single else 'file'}; expected a {'PNG file' if single else 'folder'}.")
    score_frame = _read_parquet_frame(scores, "--scores", list(SCORE_COLUMNS))
    data = load_input(config, input)
    ids = _plot_ids(score_frame, series, top)
    frame = data.frame.assign(unique_id=_plain_ids(data.frame["unique_id"]))
    events = build_events(score_frame)
    written = []
    for rank, uid in enumerate(ids, start=1):  # at most --top or the named series: a handful of pictures
        fig = plotting.render(plotting.series_plot_data(frame, score_frame, events, uid))
        path = output if single else output / f"{rank:02d}_{_file_safe(uid)}.png"
        write_bytes_atomic(plotting.to_png(fig), path)
        written.append(str(path))
    text = f"drew {len(written)} series: " + ", ".join(written) if written else "no flagged series in the scores: nothing drawn"
    return _summary(text, files=written, series=[str(i) for i in ids])


def _plot_ids(scores: pd.DataFrame, series: list[str] | None, top: int) -> list[Any]:
    """The ids to draw, typed as in the scores file (InputError naming unknown ids)."""
    from maml_anomaly.plotting import most_significant_series

    if not series:
        return most_significant_series(scores, top)
    known = pd.unique(scores["unique_id"])
    by_text = {str(v): v for v in known}
    missing = [s for s in series if s not in by_text]
    if missing:
        examples = ", ".join(repr(str(v)) for v in known[:5])
        raise InputError(
            f"--series {', '.join(missing)} not found in the scores file (it holds {len(known):,} series, e.g. "
            f"{examples}); name series that daily-score or backtest scored."
        )
    return [by_text[s] for s in series]


def _file_safe(uid: Any) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", str(uid))[:80] or "series"


# -- bench sine (compute: issue #3) --------------------------------------------------------------


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


# -- streamed daily-score and backtest (issue #6) ---------------------------------------------------

HISTORY_MARGIN_STEPS = 2  # grid steps read beyond the lags + K support points a task needs
NS_PER_DAY = 86_400 * 10**9
STREAM_ROWS = 1_000_000  # input rows per streamed batch (cut at the first row-group boundary past it)


@dataclass(frozen=True)
class ClusterIndex:
    """clusters.parquet loaded once, looked up per batch of series by hashing (no per-batch reread)."""

    names: list[str]  # sorted cluster names
    index: Any  # (C,) unique_id of every clustered series: IdLookup (pd.Index in a batch's subset)
    code: np.ndarray  # (C,) int64 position of each series' cluster in ``names``
    period: np.ndarray  # (C,) int64
    max_step_ns: int  # the largest step among clustered series (0 when unknown)

    @classmethod
    def load(cls, md: ModelDir) -> ClusterIndex:
        """Read clusters.parquet as Arrow columns: no Python object per series (2M of them at scale)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = md.load_clusters_table()
        clusters = table.column("cluster").combine_chunks()
        if not pa.types.is_dictionary(clusters.type):
            clusters = pc.dictionary_encode(clusters.cast(pa.string()))
        labels = [str(v) for v in clusters.dictionary.to_pylist()]
        names = sorted(set(labels))
        remap = np.asarray([names.index(v) for v in labels], np.int64)  # dictionary position -> sorted name
        code = remap[clusters.indices.to_numpy(zero_copy_only=False)] if labels else np.zeros(0, np.int64)
        max_step = 0
        if "step" in table.column_names and pa.types.is_duration(table.schema.field("step").type):
            steps = table.column("step").cast(pa.duration("ns")).fill_null(0).to_numpy().view(np.int64)
            max_step = int(steps[steps > 0].max(initial=0))
        elif "step_seconds" in table.column_names:
            steps = table.column("step_seconds").to_numpy().astype(np.float64)
            max_step = int(np.nanmax(steps, initial=0.0) * 1e9) if np.isfinite(steps).any() else 0
        index = IdLookup(table.column("unique_id").combine_chunks())
        period = table.column("period").to_numpy().astype(np.int64)
        del table, clusters
        pa.default_memory_pool().release_unused()  # the decoded file: about 200 MB at 2M series
        return cls(names, index, code, period, max_step)

    def subset(self, frame: pd.DataFrame) -> ClusterIndex:
        """The entries of the series in ``frame`` only: what a worker needs for one batch."""
        col = frame["unique_id"]
        ids = col.cat.categories.to_numpy() if isinstance(col.dtype, pd.CategoricalDtype) else np.unique(col.to_numpy())
        index = self.index
        if (index.dtype.kind in "iu") != (np.asarray(ids).dtype.kind in "iu"):
            ids, index = np.asarray(ids).astype(str).astype(object), pd.Index(index.take(np.arange(len(index)))).astype(str)
        pos = index.get_indexer(ids)
        pos = pos[pos >= 0]
        return ClusterIndex(self.names, pd.Index(self.index.take(pos)), self.code[pos], self.period[pos], self.max_step_ns)

    def example_ids(self) -> pd.Series:
        """A few clustered ids (their type is what _check_id_kinds compares)."""
        return pd.Series(self.index.take(np.arange(min(len(self.index), 3))))

    def lookup(self, panel: Panel) -> tuple[list[str], np.ndarray, np.ndarray]:
        """As ``_series_clusters``: names, (S,) cluster index per panel series (-1 unknown), (S,) period."""
        pos = self.index.get_indexer(panel.ids)  # (S,) -1 where unseen (id kinds checked by _check_id_kinds)
        known = pos >= 0
        cluster_of = np.where(known, self.code[np.maximum(pos, 0)], -1)
        period_of = np.where(known, self.period[np.maximum(pos, 0)], 0)
        return self.names, cluster_of, period_of


class IdLookup:
    """Positions of ids in a large id column, without a hash table of Python objects.

    pd.Index over 2,000,000 string ids held about 415 MB in the scoring process (the strings and
    the index's hash table); this holds the ids as one Arrow array plus their sorted 64-bit
    hashes (about 45 bytes per id): a query hashes its ids, finds them by binary search and
    confirms each match against the stored id, so a hash collision never maps a wrong series.
    Integer ids are their own sorted keys.
    """

    _HASH_CHUNK = 200_000  # ids turned into Python strings at a time while hashing

    def __init__(self, ids) -> None:
        import pyarrow as pa

        self.ids = ids if isinstance(ids, pa.Array) else pa.array(ids, from_pandas=True)  # (C,) as stored
        if pa.types.is_dictionary(self.ids.type):
            self.ids = self.ids.cast(self.ids.type.value_type)
        self.dtype = np.dtype(np.int64) if pa.types.is_integer(self.ids.type) else np.dtype(object)
        keys = np.concatenate(
            [np.zeros(0, np.uint64)]
            + [self._keys(self.ids.slice(lo, self._HASH_CHUNK).to_numpy(zero_copy_only=False))
               for lo in range(0, len(self.ids), self._HASH_CHUNK)]
        )  # (C,) uint64 hashes, or the integer ids themselves
        self.order = np.argsort(keys, kind="stable")  # (C,) sorted position -> id position
        self.keys = keys[self.order]

    def __len__(self) -> int:
        return len(self.ids)

    def _keys(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind in "iu":
            return ids.astype(np.int64)
        return pd.util.hash_array(ids.astype(object), categorize=False)  # (n,) uint64

    def take(self, pos: np.ndarray) -> np.ndarray:
        """The ids at positions ``pos`` (numpy)."""
        return self.ids.take(np.asarray(pos, np.int64)).to_numpy(zero_copy_only=False)

    def get_indexer(self, ids: np.ndarray) -> np.ndarray:
        """(n,) int64 position of each id, -1 where absent (as ``pd.Index.get_indexer``)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = np.asarray(ids)
        if not len(self) or not ids.size:
            return np.full(ids.size, -1, np.int64)
        h = self._keys(ids)
        i = np.minimum(np.searchsorted(self.keys, h), self.keys.size - 1)  # (n,)
        hit = self.keys[i] == h
        # equal hashes form a run in the sorted keys: try each member of the run (almost always one)
        pos = np.full(ids.size, -1, np.int64)
        cand = np.flatnonzero(hit)
        j = i[cand]
        while cand.size:
            at = self.order[j]
            same = pc.equal(self.ids.take(at), pa.array(ids[cand], from_pandas=True)).to_numpy(zero_copy_only=False)
            pos[cand[same]] = at[same]
            nxt = j[~same] + 1
            more = nxt < self.keys.size
            more[more] = self.keys[nxt[more]] == h[cand[~same]][more]
            cand, j = cand[~same][more], nxt[more]
        return pos


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


def _score_stream(
    config: Config, md: ModelDir, input: Path, output: Path, device: str, *, first: np.datetime64 | None,
    last: np.datetime64 | None, date_option: str | None, backtest: bool = False, events: Path | None = None,
) -> dict[str, Any]:
    """Score the days [first, last] reading the input in batches of whole series.

    ``first``/``last`` None: the input's last day (daily-score) or its first/last day (backtest).
    The history is streamed, so its memory is set by the batch size; only the scored points are
    kept (compact Arrow tables) until the alerts step, which needs the whole run for its q-values
    and alert budget. The output is written atomically once every batch was scored.
    """
    import time

    started = time.perf_counter()
    data_first, data_last = (v.astype("datetime64[D]").astype("datetime64[ns]") for v in time_bounds(input, config.columns))
    if backtest:
        first = data_first if first is None else max(first, data_first)
        last = data_last if last is None else min(last, data_last)
    elif first is None:
        first = last = data_last
    if first > data_last or last < data_first:  # nothing to score: say so before reading anything
        raise _no_data_error(date_option, first, last, data_first, data_last)
    try:
        names, models = _load_models(md, config.score.inner_steps_at_scoring)
    except ModelDirError:
        # a bad input is reported before a missing model (fix the data first): check a batch
        next(iter_series_frames(input, config.columns, config.input.on_duplicate, batch_rows=STREAM_ROWS), None)
        raise
    lookup = ClusterIndex.load(md)
    span = history_span(models, lookup.max_step_ns)
    ds_min = None if span is None else first - span
    log.info(
        "scoring %s%s; reading %s", first.astype("datetime64[D]"),
        "" if first == last else f" to {last.astype('datetime64[D]')}",
        "all history" if ds_min is None else f"from {ds_min.astype('datetime64[D]')}",
    )
    totals = _ReadTotals()
    counts: dict[str, int] = {}
    points = series = failed_series = 0
    spill = _ScoreSpill()  # scored points wait on disk for the alerts step: memory stays one batch
    steps: list[np.ndarray] = []
    frames = iter_series_frames(
        input, config.columns, config.input.on_duplicate, ds_min=ds_min, ds_end=last + DAY, batch_rows=STREAM_ROWS
    )
    job = _ScoreJob(config, md.path, first, last, device)
    with spill:
        with progress("scoring", None) as advance, _batch_scorer(job, names, models, lookup) as score:
            for frame, report, table, step, n_series, batch_counts in score(frames):
                totals.add(report, frame)
                spill.add(table)
                steps.append(step)
                points += table.num_rows
                series += n_series
                batch_counts.pop("_anomalies")
                failed_series += batch_counts.pop("_failed_series")
                for k, v in batch_counts.items():
                    counts[k] = counts.get(k, 0) + v
                advance(1)
        log.info("read %s: %s", input, totals.summary())
        if points == 0:
            raise _no_data_error(date_option, first, last, data_first, data_last)
        alerted = _write_scores(spill.read(), steps, config, output, events)
    _fail_over_budget(failed_series, series, counts, config.score.max_failed_fraction, output)
    return _run_summary(config, alerted, events, output, first, last, series, counts, started)


def _write_scores(table: Any, steps: list[np.ndarray], config: Config, output: Path, events: Path | None):
    """Alerts over the whole run (q-values, rules, budget, events), then the scores and events files."""
    from maml_anomaly.alerts import apply_alerts

    scores = table.to_pandas()
    del table  # the frame holds the rows now
    alerted = apply_alerts(scores, config.alerts, step=np.concatenate(steps), threshold=config.score.threshold)
    write_parquet_atomic(_scores_table(alerted.scores), output)
    if events is not None:
        write_parquet_atomic(_events_table(alerted.events, alerted.scores), events)
    return alerted


class _ScoreSpill:
    """The run's scored points in a temporary parquet file until the alerts step needs them all.

    Held in memory they grew with the number of series (about 100 bytes per point: 0.2 GB at 2M
    daily series) while the worker processes were alive; on local disk they cost one write and
    one read. Removed on exit, whatever happens.
    """

    def __init__(self) -> None:
        self.path: Path | None = None
        self._writer: Any = None

    def __enter__(self) -> _ScoreSpill:
        return self

    def add(self, table: Any) -> None:
        import tempfile

        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            fd, name = tempfile.mkstemp(prefix="maml-anomaly-scores-", suffix=".parquet")
            os.close(fd)
            self.path = Path(name)
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="none")
        self._writer.write_table(table)
        pa.default_memory_pool().release_unused()  # the batch's buffers: give them back now

    def read(self) -> Any:
        """Every batch's table, in order, as one Arrow table (empty when nothing was added)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            return pa.table({})
        self._writer.close()
        self._writer = None
        return pq.read_table(self.path)

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _ScoreJob:
    """What every batch of a streamed scoring run shares (picklable: sent once to each worker)."""

    config: Config
    model_dir: Path
    first: np.datetime64
    last: np.datetime64
    device: str


_WORKER: dict[str, Any] = {}  # per worker process: the job, models and cluster index, loaded once


def score_processes(config: Config, device: str) -> int:
    """Worker processes for streamed scoring: one per core at ``threads`` torch threads each (CPU only).

    On these 2-core machines two processes of one thread beat one process of two threads on the
    tiny batched matmuls of adaptation (docs/performance.md); a GPU is driven by one process.
    """
    if device != "cpu":
        return 1
    return max(1, (os.cpu_count() or 1) // config.runtime.threads)


def _score_one(job: _ScoreJob, names, models, lookup, frame: pd.DataFrame):
    """Panel, scores and counts of one batch of whole series (runs in a worker or in-process)."""
    panel, report = build_panel(frame, job.config.input.snap_tolerance)
    out, n_series = _score_frame(
        job.config, ModelDir(job.model_dir), names, models, lookup, frame, panel, job.first, job.last, job.device
    )
    from maml_anomaly.scoring import STATUS_INSUFFICIENT, STATUS_NO_MODEL, STATUS_UNKNOWN

    counts = {str(k): int(v) for k, v in pd.Series(out["status"]).value_counts().items()}
    counts["_anomalies"] = int(out["is_anomaly"].sum())
    failed = out["status"].isin([STATUS_INSUFFICIENT, STATUS_UNKNOWN, STATUS_NO_MODEL]).to_numpy()
    counts["_failed_series"] = int(pd.unique(out["unique_id"].to_numpy()[failed]).size)  # batches hold whole series
    step = panel.step[np.maximum(panel.positions(_plain_ids(out["unique_id"])), 0)]  # (N,) grid step per row
    return report, _scores_table(out, alerts=False), step, n_series, counts


def _worker_init(job: _ScoreJob) -> None:
    tune_allocator()
    import torch

    torch.set_num_threads(job.config.runtime.threads)
    names, models = _load_models(ModelDir(job.model_dir), job.config.score.inner_steps_at_scoring)
    _WORKER.update(job=job, names=names, models=models)


def _worker_score(frame: pd.DataFrame, lookup: ClusterIndex):
    w = _WORKER
    return _score_one(w["job"], w["names"], w["models"], lookup, frame)


def _worker_result(fut):
    """A worker's result; its MamlAnomalyError is raised here as itself (the user sees one paragraph)."""
    try:
        return fut.result()
    except MamlAnomalyError as exc:
        raise exc.with_traceback(None) from None  # the worker's traceback is not the user's business


@contextmanager
def _batch_scorer(job: _ScoreJob, names, models, lookup):
    """``score(frames)`` yields (frame, read report, scores table, row steps, series, counts) per batch, in input order.

    The first batch is scored in this process; when there is a second one and more than one core,
    the rest go to a pool of worker processes (spawned: no forked torch state), with at most
    one batch per worker plus one queued in flight so memory stays bounded.
    """
    import itertools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool: list[Any] = []

    def score(frames):
        frames = iter(frames)
        head = list(itertools.islice(frames, 2))
        n_proc = score_processes(job.config, job.device)
        if len(head) < 2 or n_proc < 2:
            for frame in itertools.chain(head, frames):
                yield (frame, *_score_one(job, names, models, lookup, frame))
            return
        ex = ProcessPoolExecutor(n_proc, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(job,))
        pool.append(ex)
        # this process now only reads, dispatches and collects: let freed batches go back to the
        # system (the workers keep the tuned allocator for adaptation)
        tune_allocator(keep=False)
        pending: list[tuple[pd.DataFrame, Any]] = []
        for frame in itertools.chain(head, frames):
            # the batch's own cluster entries travel with it: workers never hold all 2M of them
            pending.append((frame, ex.submit(_worker_score, frame, lookup.subset(frame))))
            while len(pending) > n_proc:  # one batch per worker plus one queued: each frame is held until scored
                done, fut = pending.pop(0)
                yield (done, *_worker_result(fut))
        for done, fut in pending:
            yield (done, *_worker_result(fut))

    try:
        yield score
    finally:
        for ex in pool:
            ex.shutdown(wait=True, cancel_futures=True)

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


def _score_rows_frame(
    config: Config, names: list[str], models: list[Any], panel: Panel, rows: pd.DataFrame, ds: np.ndarray,
    row_series: np.ndarray, cluster_names: list[str], cluster_of: np.ndarray, device: str,
) -> pd.DataFrame:
    """Score columns (and p_value) of ``rows`` (their timestamps ``ds``, series ``row_series`` in the
    panel), each series by its cluster's forecaster; shared by the local and the Ray engine."""
    from maml_anomaly.scoring import STATUS_INSUFFICIENT, STATUS_OFF_GRID, score_rows

    model_index = {name: i for i, name in enumerate(names)}
    series_model = np.array(
        [model_index.get(cluster_names[c], -1) if c >= 0 else -1 for c in range(len(cluster_names))] + [-1], np.int64
    )[np.where(cluster_of >= 0, cluster_of, len(cluster_names))]  # (S,) model per series, -1 none
    y = rows["y"].to_numpy(np.float64, na_value=np.nan)
    res = score_rows(
        models, panel.values, panel.indptr, panel.start.view(np.int64), panel.step.view(np.int64), series_model,
        row_series, ds.view(np.int64), y,
        threshold=config.score.threshold, batch_size=config.score.batch_size, device=device,
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
            "unique_id": _plain_ids(rows["unique_id"]),
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


def _score_frame(
    config: Config, md: ModelDir, names: list[str], models: list[Any], lookup: ClusterIndex, frame: pd.DataFrame,
    panel: Panel, first: np.datetime64, last: np.datetime64, device: str,
) -> tuple[pd.DataFrame, int]:
    """Scores of the rows of days [first, last] in one batch of whole series (no data after ``last``)."""
    ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    in_range = np.flatnonzero((ds >= first) & (ds < last + DAY))
    rows = frame.iloc[in_range]
    row_series = _row_series(rows, panel)
    _check_id_kinds(lookup.example_ids(), panel, md)
    cluster_names, cluster_of, _ = lookup.lookup(panel)
    clusterer = md.load_json(CLUSTERER) if (cluster_of < 0).any() and md.has(CLUSTERER) else None
    cluster_of = _assign_unknown(config, clusterer, panel, cluster_of, cluster_names, first)
    out = _score_rows_frame(config, names, models, panel, rows, ds[in_range], row_series, cluster_names, cluster_of, device)
    return out, int(np.unique(row_series).size)


def _scores_schema(out: pd.DataFrame):
    import pyarrow as pa

    from maml_anomaly.io import scores_schema

    id_type = pa.int64() if out["unique_id"].dtype.kind in "iu" else pa.string()
    return scores_schema(id_type).append(pa.field("p_value", pa.float64()))


class _ReadTotals:
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

    def window(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "rows": self.counts.get("rows", 0), "series": self.counts.get("series", 0)}


# -- meta-train on a sample of series (issue #6) ----------------------------------------------------

TRAIN_SAMPLE_MIN_SERIES = 200_000  # inputs with more clustered series are sampled before meta-training
TRAIN_SAMPLE_PER_CLUSTER = 4_000  # series read per cluster (training itself draws at most max_series)


def load_training_input(config: Config, md: ModelDir, input: Path) -> LoadedInput:
    """The input meta-train needs: all of it when small, else a seeded sample of each cluster's series.

    Meta-training draws its tasks from at most a few thousand series per cluster, so reading
    2,000,000 series to train would only cost time and memory: above TRAIN_SAMPLE_MIN_SERIES
    series, up to TRAIN_SAMPLE_PER_CLUSTER series per cluster are picked (seeded, uniform within
    each cluster) and only their rows are read, streamed in batches.
    """
    clusters = md.load_clusters()
    if len(clusters) <= TRAIN_SAMPLE_MIN_SERIES:
        return load_input(config, input)
    rng = np.random.default_rng(config.train.seed)
    code = pd.factorize(clusters["cluster"].astype(str), sort=True)[0]  # (C,)
    order = np.lexsort((rng.random(code.size), code))  # clusters together, random order inside each
    starts = np.r_[0, np.flatnonzero(np.diff(code[order])) + 1]  # first position of each cluster
    rank = np.arange(code.size) - np.repeat(starts, np.diff(np.r_[starts, code.size]))  # (C,) rank within cluster
    picked = np.sort(order[rank < TRAIN_SAMPLE_PER_CLUSTER])
    ids = clusters["unique_id"].to_numpy()[picked]
    frames = [
        f.assign(unique_id=_plain_ids(f["unique_id"]))
        for f in iter_series_frames(input, config.columns, config.input.on_duplicate, ids=ids)
    ]
    frame = pd.concat(frames, ignore_index=True)
    panel, report = build_panel(frame, config.input.snap_tolerance)
    log.info("meta-train reads a sample of %d of %d series (%d per cluster at most): %s",
             panel.n_series, len(clusters), TRAIN_SAMPLE_PER_CLUSTER, report.summary())
    return LoadedInput(frame=frame, panel=panel, report=report)


# -- bench scale (compute: issue #6) --------------------------------------------------------------


def bench_scale(
    *, config: Config, series: int, freq: str, seed: int = 0, workdir: Path | None = None, autoets_series: int = 300,
    nice: int = 0,
) -> dict[str, Any]:
    """fit-clusters, meta-train and daily-score on N synthetic series, each step in its own process,
    beside StatsForecast AutoETS on a sample (maml_anomaly.benchmarks.scale)."""
    from maml_anomaly.benchmarks.scale import format_report, run_scale_benchmark

    if series < 1:
        raise InputError(f"--series must be at least 1; found {series}.")
    if freq not in ("D", "h"):
        raise InputError(f"--freq must be D (daily) or h (hourly); found {freq!r}.")
    if autoets_series < 1:
        raise InputError(f"--autoets-series must be at least 1; found {autoets_series}.")
    setup_torch(config)
    report = run_scale_benchmark(
        config_dict=config.to_dict(), series=series, freq=freq, seed=seed, workdir=workdir,
        autoets_series=autoets_series, nice=nice, log=lambda msg: log.info("%s", msg),
    )
    return {"summary": format_report(report), **report}


__all__ = [
    "jsonable",
    "LoadedInput",
    "load_input",
    "setup_torch",
    "parse_day",
    "resolve_day",
    "resolve_range",
    "check_output",
    "open_trained",
    "progress",
    "fit_clusters",
    "meta_train",
    "daily_score",
    "backtest",
    "Scorer",
    "load_scorer",
    "score_batch",
    "write_scores",
    "evaluate",
    "demo",
    "plot",
    "bench_sine",
    "bench_scale",
]
