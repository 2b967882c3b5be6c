"""The Ray engine: the same per-batch functions on Ray workers, whole series per worker.

The job: read the input's three columns with the run's time window pushed into the scan (the
history the models need, as the local engine reads it). An input ordered by series is cut into
runs of row groups that each actor reads itself; any other input gets a bucket per row, a range
of ids cut at splitters sampled from the input, and is grouped by bucket so that every series
arrives whole at one worker. The per-batch function runs there in a pool of actors that fetch
the payload (the loaded model) once from the object store. Each batch's result comes back as
one small Arrow row (the caller's codec) with its batch's place in id order, so results reach
the caller in output order. Scoring writes its rows from the worker and returns only counts and
small summaries (:mod:`maml_anomaly.commands.score`), so no score row passes through the driver's
object store; the steps after it (:meth:`RayEngine.map_parts`) run as tasks on the parts the
workers wrote.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maml_anomaly.config import Config
from maml_anomaly.data.stream import (
    long_frame,
    no_rows_error,
    open_stream_dataset,
    read_run,
    series_ordered_runs,
    time_filter,
)
from maml_anomaly.engines.base import RAY_INSTALL, Codec, Engine, Source
from maml_anomaly.errors import ConfigError, MamlAnomalyError

log = logging.getLogger(__name__)

BUCKET_ROWS = 1_000_000  # input rows per bucket (one map_groups call): ~30,000 daily series of 36 points
BUCKET = "bucket"
BATCH_KEY = "batch_key"  # a result's place in output order (its run or bucket: ranges of ids)
SPLITTER_SAMPLE_GROUPS = 64  # row groups read to sample the ids the buckets are cut at
SPLITTER_SAMPLE_IDS = 10_000  # ids kept of each sampled row group


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


class RayEngine(Engine):
    """Groups of whole series (by stable hash of the id) through a pool of Ray actors."""

    name = "ray"

    def __init__(self, config: Config, *, address: str | None = None) -> None:
        require_ray()
        if address is not None and not address.strip():
            raise ConfigError("--ray-address is empty; give the cluster's address (e.g. ray://head:10001 or auto).")
        if config.input.on_duplicate in ("first", "last"):
            raise ConfigError(
                f"--on-duplicate {config.input.on_duplicate} keeps a row by its input order, which a "
                "distributed shuffle does not keep. With --engine ray use --on-duplicate error or mean, "
                "or deduplicate upstream (or run with --engine local)."
            )
        self.address = address
        self.threads = config.runtime.threads

    def map_batches(self, fn: Callable[[Any, Any], Any], payload: Any, source: Source, codec: Codec) -> Iterator[Any]:
        from ray.data import ActorPoolStrategy, DataContext
        from ray.data.context import ShuffleStrategy

        cols = source.columns
        dataset, files = open_stream_dataset(source.path, cols)  # InputError for a missing path or column
        flt = time_filter(dataset.schema.field(cols.time_col).type, cols.time_col, source.ds_min, source.ds_end)
        n_rows = dataset.count_rows(filter=flt) if flt is not None else dataset.count_rows()
        if n_rows == 0:
            raise no_rows_error(source.path, cols, source.ds_min, source.ds_end)
        runs = series_ordered_runs(dataset, cols.id_col, flt, source.batch_rows)
        if runs is not None:
            log.info(
                "ray: %d input file(s) ordered by series, %d rows in the window, %d batch(es)",
                len(files),
                n_rows,
                len(runs),
            )
            yield from self._map_runs(fn, payload, source, codec, runs, dataset.schema, flt)
            return
        n_buckets = max(1, math.ceil(n_rows / min(BUCKET_ROWS, source.batch_rows)))
        splitters = range_splitters(dataset, cols.id_col, flt, n_buckets)
        log.info("ray: %d input file(s), %d rows in the window, %d bucket(s)", len(files), n_rows, splitters.size + 1)
        with ray_session(self.address) as ray:
            ctx = DataContext.get_current()
            ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED  # hash shuffle: fixed 10-15 s per groupby
            ctx.enable_progress_bars = sys.stderr.isatty() and log.isEnabledFor(logging.INFO)
            cpus = int(ray.cluster_resources().get("CPU", 1))
            actors = max(1, min(n_buckets, cpus - 1))  # leave a CPU to read and shuffle: a pool on every CPU hangs
            try:
                without_unusable_http_filesystem()
                # the unified schema: files whose timestamps are in different zones are read as one type
                ds = ray.data.read_parquet(files, file_extensions=None, schema=dataset.schema).select_columns(
                    [cols.id_col, cols.time_col, cols.value_col]
                )
                ds = ds.map_batches(_bucket_rows, fn_args=(flt, cols.id_col, splitters), batch_format="pyarrow")
                done = ds.groupby(BUCKET).map_groups(
                    _BatchActor,
                    fn_constructor_args=(fn, ray.put(payload), source, self.threads, codec),
                    batch_format="pyarrow",
                    compute=ActorPoolStrategy(size=actors),
                    num_cpus=1,
                )
                tables = ray.get(done.to_arrow_refs())
            except Exception as exc:  # a worker's MamlAnomalyError comes back wrapped: unwrap it for the CLI
                cause = _user_error(exc)
                if cause is not None:
                    raise cause from None
                raise
        yield from _in_output_order(tables, codec)

    def _map_runs(self, fn, payload, source: Source, codec: Codec, runs, schema: pa.Schema, flt) -> Iterator[Any]:
        """Input ordered by series: each actor reads whole runs of row groups itself; no shuffle."""
        with ray_session(self.address) as ray:
            from ray.util import ActorPool

            cpus = int(ray.cluster_resources().get("CPU", 1))
            worker = ray.remote(num_cpus=1)(_RunActor)
            ref = ray.put(payload)
            pool = ActorPool(
                [worker.remote(fn, ref, source, self.threads, codec, schema, flt) for _ in range(min(len(runs), cpus))]
            )
            try:
                tables = list(pool.map_unordered(lambda actor, item: actor.run.remote(*item), list(enumerate(runs))))
            except Exception as exc:  # a worker's MamlAnomalyError comes back wrapped: unwrap it for the CLI
                cause = _user_error(exc)
                if cause is not None:
                    raise cause from None
                raise
        yield from _in_output_order(tables, codec)

    def map_parts(self, fn: Callable[[Any, Any], Any], payload: Any, items: list[Any]) -> Iterator[Any]:
        """One task per item on the cluster's CPUs, ``payload`` put in the object store once."""
        with ray_session(self.address) as ray:
            task = ray.remote(num_cpus=1)(_call_part)
            ref = ray.put(payload)
            try:
                results = ray.get([task.remote(fn, ref, item) for item in items])
            except Exception as exc:  # a worker's MamlAnomalyError comes back wrapped: unwrap it for the CLI
                cause = _user_error(exc)
                if cause is not None:
                    raise cause from None
                raise
        yield from results

    def session(self) -> Any:
        return ray_session(self.address)


def without_unusable_http_filesystem() -> None:
    """Mark fsspec's HTTP filesystem absent when aiohttp (which it needs) is missing.

    Ray lists a folder's files in threads and each thread tries that import; failing imports
    that race can raise ImportError instead of ModuleNotFoundError, which Ray does not catch.
    """
    if "fsspec.implementations.http" not in sys.modules and importlib.util.find_spec("aiohttp") is None:
        sys.modules["fsspec.implementations.http"] = None  # every import now fails the same way, at once


def _call_part(fn: Callable[[Any, Any], Any], payload: Any, item: Any) -> Any:
    """A map_parts task (Ray resolves ``payload``'s reference before the call)."""
    return fn(payload, item)


def _in_output_order(tables: list[pa.Table], codec: Codec) -> Iterator[Any]:
    """The batches' results (rows of blocks; a block may hold several) in their runs' or buckets'
    order (ranges of ids), whoever finished first."""
    if not tables:
        return
    rows = pa.concat_tables(tables)
    order = np.argsort(rows.column(BATCH_KEY).to_numpy(), kind="stable")
    yield from codec.decode(rows.take(pa.array(order)).drop_columns([BATCH_KEY]))


def range_splitters(dataset: Any, id_col: str, flt: Any, n_buckets: int) -> np.ndarray:
    """(B-1,) sorted ids that cut the input's ids into about ``n_buckets`` ranges of similar size.

    Sampled from up to SPLITTER_SAMPLE_GROUPS row groups spread over the input (metadata to find
    them, then only their id column): uneven buckets cost balance, never correctness.
    """
    if n_buckets <= 1:
        return np.zeros(0)
    groups = [rg for frag in dataset.get_fragments(filter=flt) for rg in frag.split_by_row_group(filter=flt)]
    chosen = np.unique(np.linspace(0, len(groups) - 1, min(len(groups), SPLITTER_SAMPLE_GROUPS)).astype(int))
    sample = [_spread(_distinct_ids(groups[i].to_table(columns=[id_col], filter=flt).column(id_col))) for i in chosen]
    ids = np.unique(np.concatenate(sample)) if sample else np.zeros(0)
    if ids.size == 0:
        return ids
    return np.unique(ids[(np.arange(1, n_buckets) * ids.size) // n_buckets])


def _spread(ids: np.ndarray) -> np.ndarray:
    """At most SPLITTER_SAMPLE_IDS of a row group's sorted distinct ids, evenly spaced (bounded driver memory)."""
    ids = np.sort(ids)
    if ids.size <= SPLITTER_SAMPLE_IDS:
        return ids
    return ids[np.linspace(0, ids.size - 1, SPLITTER_SAMPLE_IDS).astype(np.int64)]


def _distinct_ids(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The distinct ids of a column as numpy (int64, or object strings)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary
    return pc.unique(arr).to_numpy(zero_copy_only=False)


def _bucket_rows(table: pa.Table, flt: Any, id_col: str, splitters: np.ndarray) -> pa.Table:
    """map_batches step: keep the run's time window, add each row's bucket (its id's range)."""
    if flt is not None:
        table = table.filter(flt)
    ids = table.column(id_col).combine_chunks()
    encoded = ids if pa.types.is_dictionary(ids.type) else pc.dictionary_encode(ids)
    uniq = encoded.dictionary.to_numpy(zero_copy_only=False)  # (U,) each distinct id looked up once
    bucket = np.searchsorted(splitters, uniq, side="right").astype(np.int64)
    return table.append_column(BUCKET, pa.array(bucket[encoded.indices.to_numpy(zero_copy_only=False)]))


class _BatchActor:
    """A Ray actor: fetches the payload once, then calls the per-batch function on whole groups."""

    def __init__(self, fn: Callable[[Any, Any], Any], payload: Any, source: Source, threads: int, codec: Codec) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        self.fn, self.source, self.codec, self.key = fn, source, codec, 0
        self.payload = ray.get(payload) if isinstance(payload, ray.ObjectRef) else payload

    def __call__(self, group: pa.Table) -> pa.Table:
        cols = self.source.columns
        table = group.select([cols.id_col, cols.time_col, cols.value_col])
        frame = long_frame(table, cols, self.source.on_duplicate, self.source.ds_min, self.source.ds_end)
        payload = self.payload.for_batch(frame) if hasattr(self.payload, "for_batch") else self.payload
        result = self.codec.encode(self.fn(payload, frame))
        key = group.column(BUCKET)[0].as_py() if BUCKET in group.column_names else self.key
        return result.append_column(BATCH_KEY, pa.array([key] * result.num_rows, pa.int64()))


class _RunActor(_BatchActor):
    """A Ray actor that reads a run of row groups of whole series itself, then as _BatchActor."""

    def __init__(self, fn, payload, source: Source, threads: int, codec: Codec, schema: pa.Schema, flt) -> None:
        super().__init__(fn, payload, source, threads, codec)
        self.schema, self.flt = schema, flt

    def run(self, index: int, run: list[tuple[str, int]]) -> pa.Table:
        self.key = index  # runs come in id order
        return self(read_run(run, self.schema, self.source.columns, self.flt))


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
        ray.init(
            num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False
        )
    try:
        yield ray
    finally:
        ray.shutdown()


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


__all__ = ["BUCKET_ROWS", "RayEngine", "range_splitters", "require_ray", "ray_session"]
