"""The input as a stream of batches of whole series, in bounded memory, only the rows of a time window.

Both engines read through here: the local engine iterates :func:`iter_series_frames`; the Ray
engine opens the same dataset, pushes down the same time filter (:func:`time_filter`), reads runs
of row groups of whole series (:func:`read_run`) or groups rows into ranges of ids, and turns each
into the same frame with :func:`long_frame`.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from maml_anomaly.config import ON_DUPLICATE, ColumnConfig
from maml_anomaly.data.read import (
    READ_ATTR,
    check_nulls,
    encode_ids,
    open_dataset,
    physical_columns,
    resolve_duplicates,
    rounded_integers,
    sort_order,
    timestamps_ns,
    value_column,
)
from maml_anomaly.errors import InputError

log = logging.getLogger(__name__)

# -- streaming: batches of whole series, appended output ----------------------------------------

#: Rows per batch of whole series when streaming (about 55,000 daily series of 36 points).
STREAM_BATCH_ROWS = 2_000_000


def time_bounds(path: str | Path, columns: ColumnConfig) -> tuple[np.datetime64, np.datetime64]:
    """First and last timestamp of the input (datetime64[ns], naive UTC) without reading its rows.

    Uses the parquet row-group statistics of the time column when every row group has them;
    otherwise scans that one column. InputError when the input has no rows.
    """
    dataset, _ = open_dataset(Path(path), columns)  # nulls are checked once, by iter_series_frames
    lo, hi = _stats_bounds(dataset, columns.time_col)
    if lo is None:
        mins, maxs = [], []
        for batch in dataset.to_batches(columns=[columns.time_col], batch_size=1 << 20):
            if batch.num_rows:
                t = timestamps_ns(batch.column(0), columns.time_col)
                mins.append(t.min())
                maxs.append(t.max())
        if not mins:
            raise no_rows_error(path, columns)
        lo, hi = min(mins), max(maxs)
    return np.int64(lo).view("M8[ns]"), np.int64(hi).view("M8[ns]")


def iter_series_frames(
    path: str | Path,
    columns: ColumnConfig,
    on_duplicate: str = "error",
    *,
    ds_min: np.datetime64 | None = None,
    ds_end: np.datetime64 | None = None,
    batch_rows: int = STREAM_BATCH_ROWS,
    spill_dir: str | Path | None = None,
    ids: np.ndarray | None = None,
) -> Iterator[pd.DataFrame]:
    """Read the input as a stream of frames, each holding whole series, in bounded memory.

    Each frame is what :func:`read_long` returns for its series (sorted by (unique_id, ds),
    duplicates resolved, counts in ``frame.attrs``), restricted to ``ds_min <= ds < ds_end``
    (either bound may be None). The filter is pushed into the parquet scan where the time
    column's type allows it, so rows outside the window are mostly never decoded.

    Inputs whose row groups are ordered by series (the row groups' id ranges, from the parquet
    statistics, do not overlap except at their ends: any file sorted by series, written in row
    groups) stream directly, about ``batch_rows`` rows at a time. Any other input first goes
    through one spill pass that hashes ids into buckets of about ``batch_rows`` rows as
    temporary parquet files under ``spill_dir`` (default: the system temp folder), then
    streams bucket by bucket (output then comes bucket by bucket, sorted within each bucket).
    ``ids`` keeps only those series (meta-train reads a sample of series this way).
    """
    if on_duplicate not in ON_DUPLICATE:
        raise InputError(f"--on-duplicate must be one of {', '.join(ON_DUPLICATE)}; found {on_duplicate!r}.")
    path = Path(path)
    dataset, _ = open_stream_dataset(path, columns)
    flt = time_filter(dataset.schema.field(columns.time_col).type, columns.time_col, ds_min, ds_end)
    if ids is not None:
        keep = pc.field(columns.id_col).isin(pa.array(np.asarray(ids).tolist()))
        flt = keep if flt is None else flt & keep
    wanted = [columns.id_col, columns.time_col, columns.value_col]
    groups = _ordered_row_groups(dataset, columns.id_col, flt)
    if groups is not None:
        tables = _sorted_stream(groups, dataset.schema, wanted, flt, columns.id_col, batch_rows)
    else:
        log.info("input %s is not ordered by series in its row groups: one spill pass groups it by hashed id", path)
        tables = _bucketed_stream(dataset, wanted, flt, columns.id_col, batch_rows, spill_dir)
    seen = False
    for table in tables:
        frame = long_frame(table, columns, on_duplicate, ds_min, ds_end)
        if len(frame):
            seen = True
            yield frame
    if not seen:
        raise no_rows_error(path, columns, ds_min, ds_end)


def open_stream_dataset(path: Path, columns: ColumnConfig) -> tuple[pads.Dataset, list[str]]:
    """The input as :func:`read_long` opens it (same checks), plus null ids/timestamps anywhere in it."""
    dataset, files = open_dataset(path, columns)
    check_nulls(dataset, columns, path)
    return dataset, files


def no_rows_error(path, columns: ColumnConfig, ds_min=None, ds_end=None) -> InputError:
    window = ""
    if ds_min is not None or ds_end is not None:
        window = f" between {ds_min if ds_min is not None else 'the start'} and {ds_end if ds_end is not None else 'the end'}"
    return InputError(
        f"input {path} has no rows{window}. Expected a long-format table with one row per "
        f"({columns.id_col}, {columns.time_col}); check the path or the upstream job."
    )


def _stats_bounds(dataset: pads.Dataset, col: str) -> tuple[int | None, int | None]:
    """(min, max) int64 ns of a timestamp column from row-group statistics; (None, None) if unknown."""
    typ = dataset.schema.field(col).type
    if not (pa.types.is_timestamp(typ) or pa.types.is_date(typ)):
        return None, None
    lo = hi = None
    try:
        for frag in dataset.get_fragments():
            for rg in frag.row_groups:
                if rg.num_rows == 0:
                    continue
                st = (rg.statistics or {}).get(col)
                if not st or st.get("min") is None or st.get("max") is None:
                    return None, None
                a, b = _stat_ns(st["min"]), _stat_ns(st["max"])
                lo, hi = (a if lo is None else min(lo, a)), (b if hi is None else max(hi, b))
    except (pa.ArrowInvalid, OSError, TypeError, ValueError):
        return None, None
    return lo, hi


def _stat_ns(v) -> int:
    ts = pd.Timestamp(v)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.as_unit("ns").value)


def time_filter(typ: pa.DataType, col: str, ds_min, ds_end) -> pc.Expression | None:
    """A pushdown filter lo <= ds < end for timestamp/date columns (None: no bound, or a string column)."""
    if ds_min is None and ds_end is None:
        return None
    if not (pa.types.is_timestamp(typ) or pa.types.is_date(typ)):
        return None  # strings are parsed first and filtered afterwards

    def scalar(v, upper: bool):
        ts = pd.Timestamp(np.datetime64(v, "ns"))
        if pa.types.is_date(typ):  # whole days: keep every day the bound touches
            day = ts.normalize()
            day = day + pd.Timedelta(days=1) if upper and day != ts else day
            return pa.scalar(day.date(), type=typ)
        unit = {"s": "s", "ms": "ms", "us": "us", "ns": "ns"}[typ.unit]
        ts = ts.ceil(unit) if upper else ts.floor(unit)  # whole units of the column: a bound never cuts a row
        if typ.tz is not None:
            ts = ts.tz_localize("UTC")
        return pa.scalar(ts, type=pa.timestamp("ns", tz=typ.tz)).cast(typ)

    field = pc.field(col)
    parts = []
    if ds_min is not None:
        parts.append(field >= scalar(ds_min, False))
    if ds_end is not None:
        parts.append(field < scalar(ds_end, True))
    return parts[0] if len(parts) == 1 else parts[0] & parts[1]


def _ordered_row_groups(dataset: pads.Dataset, id_col: str, flt) -> list | None:
    """Row-group fragments in series order when their id ranges do not overlap; else None."""
    if id_col not in physical_columns(dataset):
        return None
    groups, ranges = [], []
    try:
        for frag in dataset.get_fragments(filter=flt):
            for rg in frag.split_by_row_group(filter=flt):
                info = rg.row_groups[0]
                if info.num_rows == 0:
                    continue
                st = (info.statistics or {}).get(id_col)
                if not st or st.get("min") is None or st.get("max") is None:
                    return None
                groups.append(rg)
                ranges.append((st["min"], st["max"]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, TypeError):
        return None  # e.g. files in different timezones: the scan (one unified type) still reads them
    order = sorted(range(len(groups)), key=lambda i: ranges[i])
    for a, b in zip(order[:-1], order[1:]):
        if ranges[b][0] < ranges[a][1]:  # the next group starts before this one ends
            return None
    return [groups[i] for i in order]


def series_ordered_runs(
    dataset: pads.Dataset, id_col: str, flt: pc.Expression | None, batch_rows: int
) -> list[list[tuple[str, int]]] | None:
    """Row groups of an input ordered by series, as runs of about ``batch_rows`` rows of whole series.

    Each run is a list of (file, row-group index); a run ends only where the next row group's
    smallest id is larger than this one's largest, so no series crosses two runs. None when the
    row groups are not ordered by series (then a remote engine groups rows by hash instead).
    """
    groups = _ordered_row_groups(dataset, id_col, flt)
    if groups is None:
        return None
    runs: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    rows, last_max = 0, None
    for rg in groups:
        info = rg.row_groups[0]
        st = info.statistics[id_col]
        if current and rows >= batch_rows and st["min"] > last_max:
            runs.append(current)
            current, rows = [], 0
        current.append((rg.path, info.id))
        rows += info.num_rows
        last_max = st["max"] if last_max is None else max(last_max, st["max"])
    if current:
        runs.append(current)
    return runs


def read_run(
    run: list[tuple[str, int]], schema: pa.Schema, columns: ColumnConfig, flt: pc.Expression | None
) -> pa.Table:
    """The three columns of a run of row groups (see :func:`series_ordered_runs`), the window applied."""
    import pyarrow.fs as pafs

    fmt, local = pads.ParquetFileFormat(), pafs.LocalFileSystem()
    wanted = [columns.id_col, columns.time_col, columns.value_col]
    tables = [
        fmt.make_fragment(path, filesystem=local, row_groups=[index]).to_table(
            schema=schema, columns=wanted, filter=flt
        )
        for path, index in run
    ]
    table = pa.concat_tables(tables)
    ids = _plain_ids(table.column(columns.id_col))
    if pa.types.is_large_string(ids.type) or pa.types.is_string_view(ids.type):
        ids = ids.cast(pa.string())
    return pa.table([ids, table.column(1), table.column(2)], names=wanted)


def _plain_ids(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary.take(arr.indices)
    return arr


def _sorted_stream(groups, schema, wanted, flt, id_col: str, batch_rows: int) -> Iterator[pa.Table]:
    """Tables of whole series from row groups in series order (rows sorted by id within each)."""
    pending: list[pa.Table] = []
    n_pending = 0
    for rg in groups:
        table = rg.to_table(schema=schema, columns=wanted, filter=flt)
        if table.num_rows == 0:
            continue
        ids = _plain_ids(table.column(id_col))
        if table.num_rows > 1 and pc.any(pc.less(ids[1:], ids[:-1])).as_py():
            order = pc.sort_indices(ids)  # stable: rows of one series keep their input order
            table, ids = table.take(order), ids.take(order)
        pending.append(table)
        n_pending += table.num_rows
        if n_pending < batch_rows:
            continue
        # cut before the last series: it may continue in the next row group
        last = ids[-1]
        cut = pc.index(ids, last).as_py()  # first row of the last series in this table
        if cut == 0:  # the table is one series that may have begun earlier: keep accumulating
            continue
        done = pa.concat_tables(pending[:-1] + [table.slice(0, cut)])
        pending = [table.slice(cut)]
        n_pending = pending[0].num_rows
        yield done
    if pending:
        yield pa.concat_tables(pending)


def stable_buckets(ids: pa.Array | pa.ChunkedArray, n_buckets: int) -> np.ndarray:
    """(N,) bucket of each row: blake2b of the id's text modulo ``n_buckets``, for both engines.

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


def _bucketed_stream(dataset, wanted, flt, id_col: str, batch_rows: int, spill_dir) -> Iterator[pa.Table]:
    """One pass writes rows to hash buckets on disk; then each bucket (whole series) is one table."""
    n_rows = dataset.count_rows(filter=flt) if flt is not None else dataset.count_rows()
    n_buckets = max(1, -(-n_rows // batch_rows))
    with tempfile.TemporaryDirectory(prefix="maml-anomaly-spill-", dir=spill_dir) as tmp:
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for batch in dataset.to_batches(columns=wanted, filter=flt, batch_size=1 << 20):
                if batch.num_rows == 0:
                    continue
                ids = _plain_ids(batch.column(0))
                if pa.types.is_large_string(ids.type) or pa.types.is_string_view(ids.type):
                    ids = ids.cast(pa.string())
                table = pa.table([ids, batch.column(1), batch.column(2)], names=wanted)
                bucket = stable_buckets(ids, n_buckets)
                order = np.argsort(bucket, kind="stable")
                bounds = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
                for b in np.flatnonzero(np.diff(bounds)):
                    part = table.take(pa.array(order[bounds[b] : bounds[b + 1]]))
                    if b not in writers:
                        writers[b] = pq.ParquetWriter(Path(tmp) / f"bucket-{b:05d}.parquet", part.schema)
                    writers[b].write_table(part)
        finally:
            for w in writers.values():
                w.close()
        for b in sorted(writers):
            file = Path(tmp) / f"bucket-{b:05d}.parquet"
            yield pq.read_table(file)
            file.unlink()


def long_frame(table: pa.Table, columns: ColumnConfig, on_duplicate: str, ds_min=None, ds_end=None) -> pd.DataFrame:
    """The frame :func:`read_long` makes, from a table of whole series (columns id, time, value)."""
    ids, codes = encode_ids(table.column(0), columns.id_col)
    t = timestamps_ns(table.column(1), columns.time_col)
    y, non_finite = value_column(table.column(2), columns.value_col)
    rounded = rounded_integers(table.column(2).type, y)
    n_rows = table.num_rows
    del table
    keep = np.ones(t.shape[0], bool)  # exact window (string timestamps are not filtered by the scan)
    if ds_min is not None:
        keep &= t >= np.datetime64(ds_min, "ns").astype(np.int64)
    if ds_end is not None:
        keep &= t < np.datetime64(ds_end, "ns").astype(np.int64)
    if not keep.all():
        codes, t, y = codes[keep], t[keep], y[keep]
        n_rows = int(keep.sum())
        used = np.zeros(ids.shape[0], bool)
        used[codes] = True
        remap = np.cumsum(used) - 1
        ids, codes = ids[used], remap[codes]
    order = sort_order(codes, t)
    if order is not None:
        codes, t, y = codes[order], t[order], y[order]
    codes, t, y, n_dup = resolve_duplicates(ids, codes, t, y, on_duplicate, columns)
    if ids.dtype == np.int64:
        id_col = pd.Series(ids[codes], name="unique_id")
    else:
        id_col = pd.Series(pd.Categorical.from_codes(codes, categories=pd.Index(ids, dtype=object)))
    frame = pd.DataFrame({"unique_id": id_col, "ds": t.view("M8[ns]"), "y": y})
    frame.attrs[READ_ATTR] = {"rows": n_rows, "duplicates": n_dup, "non_finite": non_finite, "rounded": rounded}
    return frame
