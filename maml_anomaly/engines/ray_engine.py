"""daily-score, backtest and fit-clusters on Ray Data: whole series per worker, the same functions as local.

The job: read the input's three columns (rows after the last scored day dropped as they are
read), give each row a stable bucket (a hash of its series id modulo the bucket count), group by
bucket so that every series arrives whole at one worker, score each group with
:func:`maml_anomaly.pipeline.score_batch` in a pool of actors that load the model once, then
collect the score rows on the driver, sort them by (unique_id, ds) as the local engine does, and
finish with :func:`maml_anomaly.pipeline.write_scores` (alerts over the whole run, the failed
fraction, one atomic parquet file). Identical inputs to score_batch give identical rows, so the
output matches the local engine's to float tolerance (batched matrix products may round
differently with another batch composition).

fit-clusters runs the same plan with another worker: each group goes through
:func:`maml_anomaly.pipeline.summarise_batch` (periods, strengths and cycle shapes of its
series), comes back as one summary row (:func:`summary_table`), and the driver fits the clusters
on all summaries exactly as the local engine does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maml_anomaly.config import Config
from maml_anomaly.engines import RAY_INSTALL
from maml_anomaly.errors import ConfigError, InputError, MamlAnomalyError

log = logging.getLogger(__name__)

DAY = np.timedelta64(1, "D")
BUCKET_ROWS = 1_000_000  # input rows per bucket (one map_groups call): ~30,000 daily series of 36 points
BUCKET = "bucket"


def require_ray() -> Any:
    """The ray module, or a ConfigError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray Data, which is not installed in this environment. Install it "
            f"with `{RAY_INSTALL}`, or run with --engine local (the default)."
        ) from None
    return ray


# -- pure helpers (no Ray) ------------------------------------------------------------------------


def stable_buckets(ids: pa.Array | pa.ChunkedArray, n_buckets: int) -> np.ndarray:
    """(N,) bucket of each row: blake2b of the id's text modulo ``n_buckets``.

    The same in every process and on every machine (Python's ``hash(str)`` is salted per
    process). Hashes each distinct id once, not each row.
    """
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    encoded = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    uniq = encoded.dictionary.to_pylist()  # (U,) distinct ids of this block
    digest = np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little") % n_buckets for v in uniq),
        dtype=np.int64,
        count=len(uniq),
    )
    return digest[encoded.indices.to_numpy(zero_copy_only=False)]  # (N,)


def scored_days(
    bounds: tuple[np.datetime64, np.datetime64], *, date: str | None = None, start: str | None = None,
    end: str | None = None, backtest: bool = False,
) -> tuple[np.datetime64, np.datetime64]:
    """The days [first, last] to score from the input's time bounds (no rows read)."""
    from maml_anomaly.pipeline import parse_day

    data_first = bounds[0].astype("datetime64[D]").astype("datetime64[ns]")
    data_last = bounds[1].astype("datetime64[D]").astype("datetime64[ns]")
    if not backtest:
        day = parse_day(date, "--date") if date is not None else data_last
        return day, day
    first = parse_day(start, "--start") if start else data_first
    last = parse_day(end, "--end") if end else data_last
    if start and end and first > last:
        raise InputError(f"--start {start} is after --end {end}; give a start on or before the end.")
    return max(first, data_first), min(last, data_last)


SUMMARY_COUNTS = ("rows", "series", "grid_points", "missing", "off_grid", "duplicates", "non_finite", "snapped")


def summary_table(batch: Any, report: Any, lo: np.datetime64, hi: np.datetime64) -> pa.Table:
    """One row for a group's fit-clusters summary: its series as lists, its read counts and time bounds.

    ``batch``: the ``_PeriodBatch`` of :func:`maml_anomaly.pipeline.summarise_batch`; ``report``
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
    """(``_PeriodBatch``, ReadReport counts, first, last timestamp) of each row of summary tables."""
    from maml_anomaly.pipeline import _PeriodBatch

    for i in range(table.num_rows):
        row = table.slice(i, 1)
        def col(name: str, row: pa.Table = row) -> pa.Array:  # the row's list
            return row.column(name).combine_chunks().flatten()

        ids_arr = col("ids")
        ids = ids_arr.to_numpy() if pa.types.is_integer(ids_arr.type) else np.asarray(ids_arr.to_pylist(), dtype=object)
        step_ns, period, second, n_obs = (col(n).to_numpy().astype(np.int64) for n in ("step_ns", "period", "second", "n_obs"))
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
        yield _PeriodBatch(ids, step_ns, period, strength, second, n_obs, shapes), counts, lo, hi


# -- the Ray job ----------------------------------------------------------------------------------


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Join the cluster at ``address``, or start a local one for this command (and stop it after)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = require_ray()
    if not log.isEnabledFor(logging.DEBUG):  # Ray Data logs every execution, and a failed one with its
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # traceback: errors reach the user as ours
    if ray.is_initialized():  # a caller (or a test) already holds a session: use it as it is
        yield ray
        return
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        log.info("starting a local Ray instance (%d CPUs)", os.cpu_count() or 2)
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _bucket_rows(table: pa.Table, time_filter: Any, id_col: str, n_buckets: int) -> pa.Table:
    """map_batches step: drop rows after the scored days, add the stable bucket column."""
    if time_filter is not None:
        table = table.filter(time_filter)
    return table.append_column(BUCKET, pa.array(stable_buckets(table.column(id_col), n_buckets)))


class ScoreWorker:
    """A Ray actor that holds the loaded model and scores whole groups of series.

    The scorer (forecasters, clusters, clusterer state) is put once in the object store by the
    driver and fetched once per actor; torch runs on ``threads`` threads per actor.
    """

    def __init__(self, scorer: Any, first: np.datetime64, last: np.datetime64, schema: pa.Schema, threads: int) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        self.scorer = ray.get(scorer) if isinstance(scorer, ray.ObjectRef) else scorer
        self.first, self.last, self.schema = first, last, schema

    def __call__(self, group: pa.Table) -> pa.Table:
        from maml_anomaly.data.read import _long_frame
        from maml_anomaly.pipeline import score_batch

        cfg = self.scorer.config
        cols = cfg.columns
        table = group.select([cols.id_col, cols.time_col, cols.value_col])
        frame = _long_frame(table, cols, cfg.input.on_duplicate, None, self.last + DAY)
        out = score_batch(self.scorer, frame, self.first, self.last)
        return pa.Table.from_pandas(out, schema=self.schema, preserve_index=False)


def score_days_ray(
    *, config: Config, md: Any, input: Path, output: Path, events: Path | None, device: str,
    date: str | None = None, start: str | None = None, end: str | None = None, backtest: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """daily-score (or backtest) of ``input`` on Ray; the same output file as the local engine."""
    from maml_anomaly.data.read import _stream_dataset, _time_filter, scores_schema, time_bounds
    from maml_anomaly.pipeline import load_scorer, write_scores

    _check_options(config, address)
    if config.runtime.device == "cuda":
        raise ConfigError(
            "--device cuda is not supported with --engine ray yet: Ray workers score on CPUs. Use "
            "--device cpu (or auto) with --engine ray, or --engine local to score on this machine's GPU."
        )
    device = "cpu"  # workers are CPU actors, whatever the driver has
    started = time.perf_counter()
    cols = config.columns
    dataset, files = _stream_dataset(Path(input), cols)  # InputError for a missing path or column
    bounds = time_bounds(input, cols)
    first, last = scored_days(bounds, date=date, start=start, end=end, backtest=backtest)
    if first > bounds[1] or last < bounds[0].astype("datetime64[D]").astype("datetime64[ns]"):
        raise _no_data(first, last, bounds)  # say so before starting anything
    id_type = dataset.schema.field(cols.id_col).type
    if pa.types.is_dictionary(id_type):
        id_type = id_type.value_type
    id_type = pa.int64() if pa.types.is_integer(id_type) else pa.string()
    schema = scores_schema(id_type).append(pa.field("p_value", pa.float64())).append(pa.field("step", pa.duration("ns")))
    n_buckets = max(1, math.ceil(dataset.count_rows() / BUCKET_ROWS))
    scorer = load_scorer(config, md, device)
    time_filter = _time_filter(dataset.schema.field(cols.time_col).type, cols.time_col, None, last + DAY)
    log.info("ray: %d input file(s), %d bucket(s), scoring %s to %s", len(files), n_buckets,
             first.astype("datetime64[D]"), last.astype("datetime64[D]"))
    with ray_session(address) as ray:
        worker_args = (ray.put(scorer), first, last, schema, config.runtime.threads)
        tables = _run(ray, files, cols, time_filter, n_buckets, ScoreWorker, worker_args)
    out = pa.concat_tables(tables).to_pandas() if tables else schema.empty_table().to_pandas()
    if len(out) == 0:
        raise _no_data(first, last, bounds)
    out = out.sort_values(["unique_id", "ds"], kind="stable", ignore_index=True)  # the local engine's order
    return write_scores(config, out, first, last, output, events, started)


class PeriodWorker:
    """A Ray actor that summarises whole groups of series for fit-clusters (``summarise_batch``)."""

    def __init__(self, config: Config, threads: int) -> None:
        self.config, self.threads = config, threads

    def __call__(self, group: pa.Table) -> pa.Table:
        from threadpoolctl import threadpool_limits

        from maml_anomaly.data.read import _long_frame
        from maml_anomaly.pipeline import summarise_batch

        cols = self.config.columns
        frame = _long_frame(group.select([cols.id_col, cols.time_col, cols.value_col]), cols, self.config.input.on_duplicate)
        ds = frame["ds"].to_numpy()
        with threadpool_limits(limits=self.threads, user_api="blas"):
            batch, report = summarise_batch(self.config, frame)
        return summary_table(batch, report, ds.min(), ds.max())


def period_batches_ray(*, config: Config, input: Path, address: str | None = None) -> tuple[list[Any], Any]:
    """fit-clusters' per-batch summaries of ``input`` computed on Ray, and the read totals.

    Returns what the local engine's stream gives :func:`maml_anomaly.pipeline.fit_clusters`:
    one ``_PeriodBatch`` per group (in any order: the clusters are fitted on them sorted by id)
    and the ``_ReadTotals`` of all groups.
    """
    from maml_anomaly.data.read import _no_rows, _stream_dataset
    from maml_anomaly.pipeline import _ReadTotals

    _check_options(config, address)
    cols = config.columns
    dataset, files = _stream_dataset(Path(input), cols)  # InputError for a missing path or column
    n_rows = dataset.count_rows()
    if n_rows == 0:
        raise _no_rows(input, cols)
    n_buckets = max(1, math.ceil(n_rows / BUCKET_ROWS))
    log.info("ray: %d input file(s), %d bucket(s), summarising periods", len(files), n_buckets)
    with ray_session(address) as ray:
        tables = _run(ray, files, cols, None, n_buckets, PeriodWorker, (config, config.runtime.threads))
    totals = _ReadTotals()
    batches = []
    for table in tables:
        for batch, counts, lo, hi in summary_from_table(table):
            totals.add_counts(counts, lo, hi)
            batches.append(batch)
    return batches, totals


def _check_options(config: Config, address: str | None) -> None:
    """What every command refuses with --engine ray (Ray itself missing, an empty address, order-keeping options)."""
    require_ray()
    if address is not None and not address.strip():
        raise ConfigError("--ray-address is empty; give the cluster's address (e.g. ray://head:10001 or auto).")
    if config.input.on_duplicate in ("first", "last"):
        raise ConfigError(
            f"--on-duplicate {config.input.on_duplicate} keeps a row by its input order, which a "
            "distributed shuffle does not keep. With --engine ray use --on-duplicate error or mean, "
            "or deduplicate upstream (or run with --engine local)."
        )


def _no_data(first: np.datetime64, last: np.datetime64, bounds: tuple[np.datetime64, np.datetime64]) -> InputError:
    days = f"{first.astype('datetime64[D]')}" + ("" if first == last else f" to {last.astype('datetime64[D]')}")
    return InputError(
        f"the input has no data on {days}; it covers {bounds[0].astype('datetime64[D]')} to "
        f"{bounds[1].astype('datetime64[D]')}. Choose a --date (or --start/--end) inside that range, "
        "or leave them out to score the last day."
    )


def _run(ray, files, cols, time_filter, n_buckets, worker, worker_args) -> list[pa.Table]:
    """The Ray Data plan, executed: every bucket's rows through a pool of ``worker(*worker_args)``
    actors; the tables they return (score rows, or fit-clusters summaries)."""
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED  # fixed hash-shuffle cost is 10-15 s per groupby
    ctx.enable_progress_bars = sys.stderr.isatty() and log.isEnabledFor(logging.INFO)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = max(1, min(n_buckets, cpus - 1))  # leave a CPU to read and shuffle: a pool on every CPU hangs
    try:
        ds = ray.data.read_parquet(files, columns=[cols.id_col, cols.time_col, cols.value_col], file_extensions=None)
        ds = ds.map_batches(_bucket_rows, fn_args=(time_filter, cols.id_col, n_buckets), batch_format="pyarrow")
        done = ds.groupby(BUCKET).map_groups(
            worker, fn_constructor_args=worker_args,
            batch_format="pyarrow", compute=ActorPoolStrategy(size=actors), num_cpus=1,
        )
        return [t for t in ray.get(done.to_arrow_refs()) if t.num_rows]
    except Exception as exc:  # a worker's MamlAnomalyError comes back wrapped: unwrap it for the CLI
        cause = _user_error(exc)
        if cause is not None:
            raise cause from None
        raise


def _user_error(exc: BaseException) -> MamlAnomalyError | None:
    """The project error inside a Ray exception chain, as the worker raised it (None if there is none).

    Ray re-raises a worker's exception as a class derived from it whose message carries the
    worker's traceback; the original sits in ``.cause``. Where only the derived one is found,
    the project message is cut out of its text.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    wrapped = None
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, MamlAnomalyError):
            if type(e).__module__ == MamlAnomalyError.__module__:
                return type(e)(_clean(str(e)))
            wrapped = wrapped or e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    if wrapped is None:
        return None
    base = next(c for c in type(wrapped).__mro__ if c.__module__ == MamlAnomalyError.__module__)
    return base(_clean(str(wrapped).rsplit(f"{base.__name__}: ", 1)[-1]))


def _clean(message: str) -> str:
    """The project's message without what Ray Data appends to a failed task's (retry advice)."""
    return message.split(" Failed to apply UDF", 1)[0].strip()


__all__ = [
    "require_ray", "stable_buckets", "scored_days", "summary_table", "summary_from_table", "ray_session", "ScoreWorker",
    "score_days_ray", "PeriodWorker", "period_batches_ray", "BUCKET_ROWS",
]
