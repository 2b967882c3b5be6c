"""Read and validate long-format parquet, build the panel, write parquet atomically, output schemas.

Input contract (docs/usage.md, "Input data"):

- a parquet file or a directory of parquet files (a pyarrow dataset; hive partition folders
  allowed); only the three needed columns are read;
- ids: string or integer (integer ids stay int64; string ids come back as a pandas Categorical
  whose categories are sorted, which keeps 10M rows cheap);
- ds: timestamp, date, or ISO 8601 strings; timezone-aware values are converted to UTC and made
  naive (all output timestamps are naive UTC);
- y: numeric; null and NaN are missing values; +inf/-inf are treated as missing and counted
  (``ReadReport.non_finite``);
- duplicate (unique_id, ds) rows: an error, unless ``on_duplicate`` is first, last (in input
  order) or mean (of the non-missing values).
"""

from __future__ import annotations

import logging
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from maml_anomaly.config import ON_DUPLICATE, ColumnConfig
from maml_anomaly.data.panel import Panel
from maml_anomaly.errors import InputError, MamlAnomalyError
from maml_anomaly.locking import CRASH_ENV, crash_point

log = logging.getLogger(__name__)

_READ_ATTR = "maml_anomaly.read"  # frame.attrs key carrying read_long's counts to build_panel

#: The scores output (daily-score, backtest): these columns first, in this order.
SCORE_COLUMNS: dict[str, pa.DataType | None] = {
    "unique_id": None,  # as input: string or int64
    "ds": pa.timestamp("ns"),
    "y": pa.float64(),
    "y_hat": pa.float64(),
    "lower": pa.float64(),
    "upper": pa.float64(),
    "score": pa.float64(),
    "is_anomaly": pa.bool_(),
    "cluster": pa.string(),
    "status": pa.string(),
}

_PANDAS_DTYPES = {
    "ds": "datetime64[ns]",
    "y": "float64",
    "y_hat": "float64",
    "lower": "float64",
    "upper": "float64",
    "score": "float64",
    "is_anomaly": "bool",
    "cluster": "object",
    "status": "object",
}


@dataclass(frozen=True)
class ReadReport:
    """What reading found; every count is rows unless named otherwise."""

    rows: int  # rows read (before resolving duplicates)
    series: int
    grid_points: int  # values in the panel (on-grid points, including missing ones)
    missing: int  # grid points without a value: missing timestamps, null/NaN/inf y
    off_grid: int  # rows off their series' regular grid (kept in Panel.off_grid)
    duplicates: int  # rows sharing (unique_id, ds) with an earlier row (resolved by policy)
    non_finite: int  # +inf/-inf values, treated as missing
    snapped: int = 0  # rows moved to their nearest grid point (snap_tolerance > 0)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.rows:,} rows, {self.series:,} series, {self.grid_points:,} grid points "
            f"({self.missing:,} missing), {self.off_grid:,} off-grid rows, "
            f"{self.duplicates:,} duplicates resolved, {self.non_finite:,} non-finite values"
            + (f", {self.snapped:,} rows snapped to their grid" if self.snapped else "")
        )


# -- reading ------------------------------------------------------------------------------------


def read_long(path: str | Path, columns: ColumnConfig, on_duplicate: str = "error") -> pd.DataFrame:
    """Read long-format parquet into a frame with columns unique_id, ds, y.

    Rows come back sorted by (unique_id, ds) with duplicates resolved. ``frame.attrs`` carries
    the counts that :func:`build_panel` reports. Raises InputError for anything unreadable.
    """
    if on_duplicate not in ON_DUPLICATE:
        raise InputError(f"--on-duplicate must be one of {', '.join(ON_DUPLICATE)}; found {on_duplicate!r}.")
    table = _read_table(Path(path), columns)
    n_rows = table.num_rows
    if n_rows == 0:
        raise InputError(
            f"input {path} has no rows. Expected a long-format table with one row per "
            f"({columns.id_col}, {columns.time_col}); check the path or the upstream job."
        )
    # Convert one column at a time and drop it from the table at once: the arrow copy and the
    # numpy copy of the whole input never coexist.
    ids, codes = _encode_ids(table.column(columns.id_col), columns.id_col)
    table = table.drop_columns([columns.id_col])
    t = _timestamps_ns(table.column(columns.time_col), columns.time_col)
    table = table.drop_columns([columns.time_col])
    y, non_finite = _values(table.column(columns.value_col), columns.value_col)
    del table
    pa.default_memory_pool().release_unused()

    order = _sort_order(codes, t)
    if order is not None:  # one permuted copy at a time, each original freed at once
        codes = codes[order]
        t = t[order]
        y = y[order]
        del order
    codes, t, y, n_dup = _resolve_duplicates(ids, codes, t, y, on_duplicate, columns)

    # The frame wraps the arrays without copying them (build_panel reads them back as views).
    if ids.dtype == np.int64:
        id_col = pd.Series(ids[codes], name="unique_id")
    else:
        dtype = pd.CategoricalDtype(pd.Index(ids, dtype=object))
        id_col = pd.Series(pd.Categorical.from_codes(codes, dtype=dtype, validate=False))
    frame = pd.DataFrame({"unique_id": id_col, "ds": t.view("M8[ns]"), "y": y}, copy=False)
    frame.attrs[_READ_ATTR] = {"rows": n_rows, "duplicates": n_dup, "non_finite": non_finite}
    return frame


def build_panel(frame: pd.DataFrame, snap_tolerance: float = 0.0) -> tuple[Panel, ReadReport]:
    """Panel of a long frame (unique_id, ds, y), rows in any order; duplicates are an error here.

    snap_tolerance: see :meth:`Panel.from_sorted` (0 = rows must lie exactly on their grid).
    """
    for col in ("unique_id", "ds", "y"):
        if col not in frame.columns:
            raise InputError(f"expected a column {col!r}; found {list(frame.columns)}.")
    counts = frame.attrs.get(_READ_ATTR, {})
    ids, codes = _factorize(frame["unique_id"])
    t = pd.to_datetime(frame["ds"]).to_numpy(dtype="datetime64[ns]").view(np.int64)
    y = frame["y"].to_numpy(dtype=np.float64, na_value=np.nan)  # a view when already float64
    inf = np.isinf(y)  # (N,)
    n_inf = int(inf.sum())
    if n_inf:
        y = np.where(inf, np.nan, y)
    del inf
    order = _sort_order(codes, t)
    if order is not None:  # one permuted copy at a time, each original freed at once
        codes = codes[order]
        t = t[order]
        y = y[order]
        del order
    codes, t, y, n_dup = _resolve_duplicates(ids, codes, t, y, "error", ColumnConfig())
    panel = Panel.from_sorted(ids, codes, t, y, snap_tolerance)
    report = ReadReport(
        rows=int(counts.get("rows", len(frame))),
        series=panel.n_series,
        grid_points=int(panel.values.shape[0]),
        missing=int(np.isnan(panel.values).sum()),
        off_grid=len(panel.off_grid),
        duplicates=int(counts.get("duplicates", 0)),
        non_finite=int(counts.get("non_finite", n_inf)),
        snapped=panel.snapped,
    )
    return panel, report


def read_panel(
    path: str | Path, columns: ColumnConfig, on_duplicate: str = "error", snap_tolerance: float = 0.0
) -> tuple[Panel, ReadReport]:
    """:func:`read_long` then :func:`build_panel`, logging what was found."""
    panel, report = build_panel(read_long(path, columns, on_duplicate), snap_tolerance)
    log.info("read %s: %s", path, report.summary())
    if report.off_grid:
        log.warning("%d rows are off their series' regular grid; they are kept and reported", report.off_grid)
    return panel, report


def _read_table(path: Path, columns: ColumnConfig) -> pa.Table:
    dataset, _ = _open_dataset(path, columns)
    wanted = [columns.id_col, columns.time_col, columns.value_col]
    try:
        return dataset.to_table(columns=wanted, batch_size=1 << 20)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        raise _unreadable(path, exc) from None


def _open_dataset(path: Path, columns: ColumnConfig) -> tuple[pads.Dataset, list[str]]:
    """The input as a dataset, checked as both read paths need it (one place for these checks).

    Several files: schemas are read per file (an unreadable one is named), int/float columns are
    unified, mixed tz-aware/naive timestamps and other type conflicts are refused. String ids are
    read as parquet dictionaries when the files agree on their types (far cheaper to encode).
    """
    if not path.exists():
        raise InputError(
            f"input path {path} does not exist. Expected a parquet file or a directory of "
            "parquet files; check the --input path."
        )
    files = _parquet_files(path)
    wanted = [columns.id_col, columns.time_col, columns.value_col]
    base = str(path) if path.is_dir() else None
    unified = _unified_schema(files, wanted, columns.time_col) if len(files) > 1 else None
    try:
        dataset = pads.dataset(files, format="parquet", partitioning="hive", partition_base_dir=base, schema=unified)
        schema = dataset.schema
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise _unreadable(path, exc) from None
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        flags = {columns.id_col: "--id-col", columns.time_col: "--time-col", columns.value_col: "--value-col"}
        raise InputError(
            f"input {path} has no column {', '.join(repr(c) for c in missing)}. Expected the columns "
            f"{wanted}; found {schema.names}. Name the right columns with "
            f"{', '.join(flags[c] for c in missing)} (or in the [columns] section of --config)."
        )
    id_type = schema.field(columns.id_col).type
    if (
        (pa.types.is_string(id_type) or pa.types.is_large_string(id_type))
        and columns.id_col in _file_columns(dataset)
        and unified is None  # files of mixed types keep the unified schema
    ):
        options = pads.ParquetReadOptions(dictionary_columns={columns.id_col})
        try:
            dataset = pads.dataset(
                files, format=pads.ParquetFileFormat(read_options=options), partitioning="hive", partition_base_dir=base
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise _unreadable(path, exc) from None
    return dataset, files


def _check_nulls(dataset: pads.Dataset, columns: ColumnConfig, path: Path) -> None:
    """Null ids or timestamps anywhere in the input are an error, even outside the window read.

    Counts come from the parquet row-group statistics where every row group has them, else from
    a scan of that one column.
    """
    stored = _physical_columns(dataset)
    for col, error in ((columns.id_col, _null_ids_error), (columns.time_col, _null_timestamps_error)):
        n = _stats_null_count(dataset, col) if col in stored else None
        if n is None:
            try:
                n = dataset.count_rows(filter=pc.field(col).is_null())
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
                raise _unreadable(path, exc) from None
        if n:
            raise error(col, n)


def _stats_null_count(dataset: pads.Dataset, col: str) -> int | None:
    """Nulls in a stored column from row-group statistics; None when some row group lacks them."""
    n = 0
    try:
        for frag in dataset.get_fragments():
            for rg in frag.row_groups:
                if rg.num_rows == 0:
                    continue
                st = (rg.statistics or {}).get(col)
                if not st or st.get("null_count") is None:
                    return None
                n += int(st["null_count"])
    except (pa.ArrowInvalid, OSError, TypeError, ValueError):
        return None
    return n


def _null_ids_error(name: str, n: int) -> InputError:
    return InputError(
        f"column {name!r} has {n:,} null ids. Expected every row to name its series; drop or fill those rows."
    )


def _null_timestamps_error(name: str, n: int) -> InputError:
    return InputError(
        f"column {name!r} has {n:,} null timestamps. Expected every row to have a timestamp "
        "(a missing value is a null y, not a null ds); drop those rows."
    )


def _unified_schema(files: list[str], wanted: list[str], time_col: str) -> pa.Schema | None:
    """One schema for files whose column types differ (int and float values -> float), or None.

    The dataset would otherwise take the first file's types and fail, or misread, on the others.
    Timezone-aware timestamps in some files and naive ones in others are refused: naive values
    would silently be taken as UTC.
    """
    types: dict[str, dict[pa.DataType, str]] = {c: {} for c in wanted}  # column -> type -> first file
    for file in files:
        try:
            file_schema = pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _unreadable(Path(file), exc) from None
        for c in wanted:
            if c in file_schema.names:
                types[c].setdefault(file_schema.field(c).type, file)
    if any(not t for t in types.values()) or all(len(t) == 1 for t in types.values()):
        return None  # a column only in partition folders, or nothing to unify
    fields = []
    for c in wanted:
        kinds = types[c]
        aware = {t: f for t, f in kinds.items() if pa.types.is_timestamp(t) and t.tz is not None}
        if c == time_col and aware and len(aware) < len(kinds):
            naive = next(f for t, f in kinds.items() if t not in aware)
            raise InputError(
                f"column {c!r} has timezone-aware timestamps in some files (e.g. {next(iter(aware.values()))}: "
                f"{next(iter(aware))}) and naive ones in others (e.g. {naive}: "
                f"{next(t for t in kinds if t not in aware)}). Expected one kind; write every file with "
                "timezone-aware timestamps, or every file with naive UTC timestamps."
            )
        if aware and len(aware) == len(kinds):
            fields.append(pa.field(c, pa.timestamp("ns", tz="UTC")))  # instants in any zone
            continue
        try:
            unified = pa.unify_schemas([pa.schema([pa.field(c, t)]) for t in kinds], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            shown = "; ".join(f"{Path(f).name}: {t}" for t, f in list(kinds.items())[:3])
            raise InputError(
                f"the input's files disagree on the type of column {c!r} ({shown}). Expected one type "
                "in every file; rewrite the odd files with the same column types."
            ) from None
        fields.append(unified.field(c))
    return pa.schema(fields)


def _file_columns(dataset: pads.Dataset) -> set[str]:
    """Columns stored in the files (not hive partition keys).

    From the first file's own schema: a dataset's partitioning schema is not reliable here (for
    a single file without partition folders it lists every column, which turned the dictionary
    read of string ids off).
    """
    for fragment in dataset.get_fragments():
        return set(fragment.physical_schema.names)
    return set()


def _parquet_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    files = sorted(
        str(p)
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    parquet = [f for f in files if f.endswith((".parquet", ".parq", ".pq"))]
    chosen = parquet or files
    if not chosen:
        raise InputError(
            f"input directory {path} holds no parquet files. Expected a parquet file or a "
            "directory of parquet files (hive partition folders allowed)."
        )
    return chosen


def _unreadable(path: Path, exc: Exception) -> InputError:
    return InputError(
        f"could not read {path} as parquet ({type(exc).__name__}: {str(exc).strip()}). Expected "
        "a complete parquet file or a directory of parquet files with one schema; the file may "
        "be truncated, still being written, or in another format (convert CSV with "
        "pandas.read_csv(...).to_parquet(...))."
    )


def _encode_ids(column: pa.ChunkedArray | pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids (S,) (object str or int64) and each row's code (N,) int32 (int64 past 2**31 ids).

    String ids are read from parquet as dictionaries (see _read_table): hashing one dictionary
    per chunk is far cheaper than hashing every row's string. Rows are mapped chunk by chunk
    into one preallocated array, with a single lookup table from dictionary index to sorted
    position, so no row-sized temporary is made.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if isinstance(column, pa.ChunkedArray) and pa.types.is_dictionary(column.type):
        column = column.unify_dictionaries()
        chunks = column.chunks
    if column.null_count:
        raise _null_ids_error(name, column.null_count)
    if chunks and pa.types.is_dictionary(chunks[0].type):
        values = chunks[0].dictionary  # (D,) shared after unify_dictionaries
        parts = [c.indices.to_numpy(zero_copy_only=False) for c in chunks]  # views of the indices
    else:
        arr = pa.chunked_array(chunks, type=column.type).combine_chunks()
        if pa.types.is_string(arr.type) or pa.types.is_string_view(arr.type):
            arr = arr.cast(pa.large_string())
        encoded = pc.dictionary_encode(arr)
        del arr
        values = encoded.dictionary
        parts = [encoded.indices.to_numpy(zero_copy_only=False)]
    typ = values.type
    if pa.types.is_integer(typ):
        values, kind = values.cast(pa.int64()), "int"
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        kind = "str"
    else:
        raise InputError(
            f"column {name!r} has type {typ}. Expected series ids as strings or integers; "
            "cast the column, or name another column with --id-col."
        )
    # Keep the dictionary values that rows use, once each, in sorted order.
    used_mask = np.zeros(max(len(values), 1), bool)  # (D,)
    for part in parts:
        used_mask[part] = True
    used = np.flatnonzero(used_mask)  # (U,)
    values = values.take(pa.array(used))
    encoded = pc.dictionary_encode(values)  # merges repeated dictionary values (rare)
    unique = encoded.dictionary
    if unique.null_count:
        raise InputError(f"column {name!r} has null ids. Expected every row to name its series; drop or fill those rows.")
    sort = pc.sort_indices(unique).to_numpy()  # (S,) unique order -> sorted order
    code_type = np.int32 if sort.shape[0] < np.iinfo(np.int32).max else np.int64
    rank = np.empty(sort.shape[0], code_type)
    rank[sort] = np.arange(sort.shape[0], dtype=code_type)
    lookup = np.zeros(used_mask.shape[0], code_type)  # (D,) dictionary index -> sorted position
    lookup[used] = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    codes = np.empty(sum(part.shape[0] for part in parts), code_type)  # (N,)
    at = 0
    for part in parts:
        np.take(lookup, part, out=codes[at : at + part.shape[0]])
        at += part.shape[0]
    ids = unique.take(pa.array(sort)).to_numpy(zero_copy_only=False)
    ids = ids.astype(np.int64) if kind == "int" else ids.astype(object)
    return ids, codes


def _factorize(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(ids.dtype, pd.CategoricalDtype):
        cats = ids.cat.categories.to_numpy()
        codes = ids.cat.codes.to_numpy()  # (N,) a view, int8..int32 (Panel.from_sorted takes any int)
        if (codes < 0).any():
            raise InputError("column 'unique_id' has null ids; expected every row to name its series.")
        if not (len(cats) < 2 or np.all(cats[1:] > cats[:-1])):
            sort = np.argsort(cats, kind="stable")
            rank = np.empty_like(sort)
            rank[sort] = np.arange(sort.shape[0])
            cats, codes = cats[sort], rank[codes]
        used = np.zeros(len(cats), bool)
        used[codes] = True
        if not used.all():  # drop unused categories so every id owns rows
            remap = np.cumsum(used) - 1
            cats, codes = cats[used], remap[codes]
        ids_out = cats.astype(np.int64) if cats.dtype.kind in "iu" else cats.astype(object)
        return ids_out, codes
    if ids.isna().any():
        raise InputError("column 'unique_id' has null ids; expected every row to name its series.")
    codes, uniques = pd.factorize(ids, sort=True)
    uniques = np.asarray(uniques)
    ids_out = uniques.astype(np.int64) if uniques.dtype.kind in "iu" else uniques.astype(object)
    return ids_out, codes.astype(np.int64)


def _timestamps_ns(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """(N,) int64 ns since the epoch, naive UTC."""
    if isinstance(column, pa.ChunkedArray) and _is_time_type(column.type) and not column.null_count:
        return _chunks_to_numpy(column, np.int64, lambda c: _timestamps_ns(c, name))
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    typ = arr.type
    try:
        if pa.types.is_timestamp(typ):
            # Arrow stores tz-aware timestamps as UTC instants; dropping the tz keeps UTC.
            out = arr.cast(pa.timestamp("ns", tz=typ.tz)).view(pa.int64())
        elif pa.types.is_date(typ):
            out = arr.cast(pa.timestamp("ns")).view(pa.int64())
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
            return _parse_strings(arr, name)
        else:
            raise InputError(
                f"column {name!r} has type {typ}. Expected timestamps, dates or ISO 8601 strings "
                "(e.g. 2024-01-31 or 2024-01-31T13:00:00); convert the column, or name another "
                "column with --time-col."
            )
    except pa.ArrowInvalid as exc:
        raise InputError(
            f"column {name!r} holds timestamps outside the supported range 1677-2262 ({exc}). "
            "Fix or drop those rows."
        ) from None
    if out.null_count:
        raise _null_timestamps_error(name, out.null_count)
    return out.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _is_time_type(typ: pa.DataType) -> bool:
    return pa.types.is_timestamp(typ) or pa.types.is_date(typ)


def _chunks_to_numpy(column: pa.ChunkedArray, dtype: type, convert) -> np.ndarray:
    """(N,) convert(chunk) of each chunk written into one preallocated array: no combined
    arrow copy of the whole column."""
    out = np.empty(len(column), dtype)  # (N,)
    at = 0
    for chunk in column.chunks:
        out[at : at + len(chunk)] = convert(chunk)
        at += len(chunk)
    return out


def _parse_strings(arr: pa.Array, name: str) -> np.ndarray:
    if arr.null_count:
        raise _null_timestamps_error(name, arr.null_count)
    try:  # fast path: naive ISO 8601 strings, parsed by arrow
        return arr.cast(pa.timestamp("ns")).view(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # offsets, "Z" or bad values: pandas parses the former and names the latter
    text = pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        examples = ", ".join(repr(v) for v in pd.unique(text[bad])[:5])
        raise InputError(
            f"column {name!r} has {int(bad.sum()):,} values that are not ISO 8601 timestamps, e.g. "
            f"{examples}. Expected timestamps such as 2024-01-31 or 2024-01-31T13:00:00(+00:00); "
            "fix those values or store the column as a parquet timestamp."
        )
    naive = parsed.dt.tz_convert(None)
    outside = ((naive < pd.Timestamp.min) | (naive > pd.Timestamp.max)).to_numpy()
    if outside.any():  # the ns conversion below would wrap around silently
        examples = ", ".join(repr(v) for v in pd.unique(text[outside])[:5])
        raise InputError(
            f"column {name!r} has {int(outside.sum()):,} timestamps outside the supported range "
            f"1677-2262, e.g. {examples}. Fix or drop those rows."
        )
    return naive.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _values(column: pa.ChunkedArray, name: str) -> tuple[np.ndarray, int]:
    """(N,) float64 values (NaN = missing) and the count of +-inf turned into NaN."""
    typ = column.type
    if isinstance(column, pa.ChunkedArray) and (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        y = _chunks_to_numpy(column, np.float64, _float_chunk)
        return y, _inf_to_nan(y, name)
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    typ = arr.type
    if pa.types.is_null(typ):
        return np.full(len(arr), np.nan), 0
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)):
        textual = pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
        sample = pc.unique(arr.drop_null()).slice(0, 200).to_pylist() if textual else []
        bad = [v for v in sample if not _is_number(v)][:5]
        if not textual:
            found = "values that are not numbers"
        elif bad:
            found = f"values such as {', '.join(repr(v) for v in bad)}"
        else:
            found = "numbers stored as text"
        raise InputError(
            f"column {name!r} has type {typ}, with {found}. Expected numeric values (integer or "
            "float; null or NaN for a missing value); cast the column to float, or name another "
            "column with --value-col."
        )
    y = np.array(_float_chunk(arr), dtype=np.float64, copy=True)
    return y, _inf_to_nan(y, name)


def _float_chunk(arr: pa.Array) -> np.ndarray:
    """(n,) float64 of a numeric arrow array, null -> NaN (read-only when zero-copy)."""
    return pc.fill_null(arr.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def _inf_to_nan(y: np.ndarray, name: str) -> int:
    """Turn +-inf into NaN in place; the count."""
    n_inf = 0
    for lo in range(0, y.shape[0], _BLOCK):
        block = y[lo : lo + _BLOCK]
        inf = np.isinf(block)
        if inf.any():
            block[inf] = np.nan
            n_inf += int(inf.sum())
    if n_inf:
        log.warning("column %r: %d infinite values treated as missing", name, n_inf)
    return n_inf


def _is_number(v: object) -> bool:
    try:
        float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


#: Rows per block in the checks below: bounds their temporaries at a few MB.
_BLOCK = 1 << 20


def _sort_order(codes: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """Permutation sorting rows by (code, ds) (stable: first/last policies keep input order),
    or None when they already are."""
    n = codes.shape[0]
    if n < 2:
        return None
    if _is_sorted(codes, t):
        return None
    if _is_monotonic(t):  # time-ordered input (daily appends): a stable sort by series suffices
        return np.argsort(codes, kind="stable")  # timsort: fast on the runs such input has
    key = _combined_key(codes, t)
    if key is not None:  # one int64 key: numpy's stable argsort beats arrow's two-key sort
        return np.argsort(key, kind="stable")
    keys = pa.table({"code": codes, "t": t})
    return pc.sort_indices(keys, sort_keys=[("code", "ascending"), ("t", "ascending")]).to_numpy()


def _is_sorted(codes: np.ndarray, t: np.ndarray) -> bool:
    """Whether rows are sorted by (code, ds), checked block by block (no row-sized temporary)."""
    n = codes.shape[0]
    for lo in range(0, n - 1, _BLOCK):
        hi = min(n, lo + _BLOCK + 1)  # blocks overlap by one row
        dc = np.diff(codes[lo:hi])
        if not ((dc >= 0).all() and ((dc > 0) | (np.diff(t[lo:hi]) >= 0)).all()):
            return False
    return True


def _is_monotonic(t: np.ndarray) -> bool:
    n = t.shape[0]
    return all((np.diff(t[lo : min(n, lo + _BLOCK + 1)]) >= 0).all() for lo in range(0, n - 1, _BLOCK))


def _combined_key(codes: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """(N,) int64 code * span + (ds - first ds) / g, ordered like (code, ds); None if it would
    overflow. g is the gcd of all ds offsets (a day for daily data), which keeps the span small."""
    t0 = int(t.min())
    g = 0
    for lo in range(0, t.shape[0], _BLOCK):
        g = int(np.gcd(g, np.gcd.reduce(t[lo : lo + _BLOCK] - t0)))
    g = max(g, 1)
    span = (int(t.max()) - t0) // g + 1
    if (int(codes.max()) + 1) * span >= np.iinfo(np.int64).max:
        return None
    key = codes.astype(np.int64)  # (N,)
    key *= span
    for lo in range(0, t.shape[0], _BLOCK):
        key[lo : lo + _BLOCK] += (t[lo : lo + _BLOCK] - t0) // g
    return key


def _resolve_duplicates(
    ids: np.ndarray, codes: np.ndarray, t: np.ndarray, y: np.ndarray, policy: str, columns: ColumnConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Apply the duplicate policy to rows sorted by (code, ds); returns rows and the dropped count."""
    if codes.shape[0] < 2:
        return codes, t, y, 0
    dup = (codes[1:] == codes[:-1]) & (t[1:] == t[:-1])  # (N-1,) row i+1 repeats row i
    n_dup = int(dup.sum())
    if n_dup == 0:
        return codes, t, y, 0
    if policy == "error":
        rows = np.flatnonzero(dup) + 1
        keys = sorted({(ids[codes[r]], pd.Timestamp(t[r])) for r in rows[:200]})[:5]
        shown = "; ".join(f"{i!r} at {ts}" for i, ts in keys)
        raise InputError(
            f"input has {n_dup:,} duplicate rows: {n_dup:,} rows repeat the ({columns.id_col}, "
            f"{columns.time_col}) of another row, e.g. {shown}. Expected one row per series and "
            "timestamp; aggregate them upstream or choose a policy with --on-duplicate "
            "first|last|mean."
        )
    new_group = np.r_[True, ~dup]  # (N,) first row of each (code, ds) group
    group_start = np.flatnonzero(new_group)
    if policy == "first":
        keep = group_start
        y_out = y[keep]
    elif policy == "last":
        keep = np.r_[group_start[1:] - 1, codes.shape[0] - 1]
        y_out = y[keep]
    else:  # mean of the non-missing values; NaN when none
        keep = group_start
        finite = ~np.isnan(y)
        sums = np.add.reduceat(np.where(finite, y, 0.0), group_start)
        counts = np.add.reduceat(finite.astype(np.int64), group_start)
        with np.errstate(invalid="ignore", divide="ignore"):
            y_out = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    log.warning("%d duplicate rows resolved with --on-duplicate %s", n_dup, policy)
    return codes[keep], t[keep], y_out, n_dup


# -- writing ------------------------------------------------------------------------------------


def write_parquet_atomic(data: pd.DataFrame | pa.Table, path: str | Path) -> Path:
    """Write parquet to a temporary file in the same folder, fsync it, then rename it over ``path``.

    A crash or a kill leaves either the previous file or the complete new one, never a part;
    the temporary file of a killed run is removed by the next write to the same path.
    """
    path = Path(path)
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)

    def write(fh) -> None:
        pq.write_table(table, _PartialCrash(fh) if os.environ.get(CRASH_ENV) else fh)

    return _replace_atomic(path, write, "parquet")


class _PartialCrash:
    """Test hook: a file that lets crash_point("parquet:partial") kill after the first bytes."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, data) -> int:
        n = self._fh.write(data)
        self._fh.flush()
        crash_point("parquet:partial")  # the file holds a part, no footer yet
        return n

    def __getattr__(self, name: str):
        return getattr(self._fh, name)


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """Atomic write of raw bytes (same guarantees as :func:`write_parquet_atomic`)."""
    return _replace_atomic(Path(path), lambda fh: fh.write(data), "bytes")


_TMP_SUFFIX = ".tmp"


def _replace_atomic(path: Path, write, kind: str) -> Path:
    """Write through ``write(fh)`` into ``.NAME.PID.XXXX.tmp`` beside ``path``, fsync, rename over it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual umask mode
        crash_point(f"{kind}:tmp-created")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            crash_point(f"{kind}:tmp-written")
            os.fsync(fh.fileno())
        crash_point(f"{kind}:before-rename")
        os.replace(tmp, path)
        crash_point(f"{kind}:after-rename")
        _fsync_dir(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    return path


def clean_stale_temps(path: str | Path) -> int:
    """Remove temporary files that killed runs left beside ``path``; returns how many.

    Only files named ``.NAME.PID.*.tmp`` whose PID is no longer a running process on this host
    are removed, so a concurrent writer's temporary file is never touched.
    """
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*{_TMP_SUFFIX}"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
            log.info("removed %s, left by a killed run (pid %s)", tmp, pid)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_error(path: Path, exc: OSError) -> MamlAnomalyError:
    return MamlAnomalyError(
        f"could not write {path} ({exc.strerror or type(exc).__name__}: {exc.filename or path}). "
        "Nothing was replaced: a previous file at that path is unchanged. Check that the folder "
        "exists, is writable and has free space, or choose another path."
    )


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not supported on every platform
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def scores_schema(id_type: pa.DataType = pa.string()) -> pa.Schema:
    """Arrow schema of the scores output's leading columns (``id_type``: string or int64)."""
    return pa.schema([(name, typ if typ is not None else id_type) for name, typ in SCORE_COLUMNS.items()])


def empty_scores_frame(id_dtype: str = "object") -> pd.DataFrame:
    """A scores frame with no rows and the right columns and dtypes."""
    data = {"unique_id": pd.Series([], dtype=id_dtype)}
    data.update({name: pd.Series([], dtype=dtype) for name, dtype in _PANDAS_DTYPES.items()})
    return pd.DataFrame(data)


# -- streaming: batches of whole series, appended output ----------------------------------------

#: Rows per batch of whole series when streaming (about 55,000 daily series of 36 points).
STREAM_BATCH_ROWS = 2_000_000


def time_bounds(path: str | Path, columns: ColumnConfig) -> tuple[np.datetime64, np.datetime64]:
    """First and last timestamp of the input (datetime64[ns], naive UTC) without reading its rows.

    Uses the parquet row-group statistics of the time column when every row group has them;
    otherwise scans that one column. InputError when the input has no rows.
    """
    dataset, _ = _open_dataset(Path(path), columns)  # nulls are checked once, by iter_series_frames
    lo, hi = _stats_bounds(dataset, columns.time_col)
    if lo is None:
        mins, maxs = [], []
        for batch in dataset.to_batches(columns=[columns.time_col], batch_size=1 << 20):
            if batch.num_rows:
                t = _timestamps_ns(batch.column(0), columns.time_col)
                mins.append(t.min())
                maxs.append(t.max())
        if not mins:
            raise _no_rows(path, columns)
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
    dataset, _ = _stream_dataset(path, columns)
    flt = _time_filter(dataset.schema.field(columns.time_col).type, columns.time_col, ds_min, ds_end)
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
        frame = _long_frame(table, columns, on_duplicate, ds_min, ds_end)
        if len(frame):
            seen = True
            yield frame
    if not seen:
        raise _no_rows(path, columns, ds_min, ds_end)


class AtomicParquetWriter:
    """Append tables to a parquet file that appears at ``path`` only when everything was written.

    Writes to a temporary file in the same folder; ``commit()`` fsyncs and renames it over
    ``path``; leaving the ``with`` block without ``commit()`` (or on an exception) deletes it, so a
    crash or a kill leaves either the previous file or the complete new one.
    """

    def __init__(self, path: str | Path, schema: pa.Schema) -> None:
        self.path = Path(path)
        self.schema = schema
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(self.path)
            # .NAME.PID.XXXX.tmp like _replace_atomic: a killed run's file is cleaned by the next
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=self.path.parent)
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        self._tmp = Path(tmp)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, schema)
        self.rows = 0
        crash_point("parquet:tmp-created")

    def write(self, table: pa.Table) -> None:
        assert self._writer is not None, "writer already closed"
        self._writer.write_table(table.cast(self.schema) if table.schema != self.schema else table)
        self.rows += table.num_rows
        crash_point("parquet:partial")  # a row group out, no footer yet

    def commit(self) -> Path:
        assert self._writer is not None, "writer already closed"
        self._writer.close()
        self._writer = None
        crash_point("parquet:tmp-written")
        with open(self._tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        crash_point("parquet:before-rename")
        os.replace(self._tmp, self.path)
        crash_point("parquet:after-rename")
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicParquetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()  # a no-op after commit()


def _stream_dataset(path: Path, columns: ColumnConfig) -> tuple[pads.Dataset, list[str]]:
    """The input as :func:`read_long` opens it (same checks), plus null ids/timestamps anywhere in it."""
    dataset, files = _open_dataset(path, columns)
    _check_nulls(dataset, columns, path)
    return dataset, files


def _physical_columns(dataset: pads.Dataset) -> set[str]:
    """Columns stored in the files themselves (hive partition keys are not)."""
    for frag in dataset.get_fragments():
        return set(frag.physical_schema.names)
    return set()


def _no_rows(path, columns: ColumnConfig, ds_min=None, ds_end=None) -> InputError:
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


def _time_filter(typ: pa.DataType, col: str, ds_min, ds_end) -> pc.Expression | None:
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
    if id_col not in _physical_columns(dataset):
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
    except (pa.ArrowInvalid, OSError, TypeError):
        return None
    order = sorted(range(len(groups)), key=lambda i: ranges[i])
    for a, b in zip(order[:-1], order[1:]):
        if ranges[b][0] < ranges[a][1]:  # the next group starts before this one ends
            return None
    return [groups[i] for i in order]


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


def _bucket_of(ids: pa.Array, n_buckets: int) -> np.ndarray:
    """(N,) stable bucket of every id (the same in every process: crc32 / a multiplicative hash)."""
    if pa.types.is_integer(ids.type):
        v = ids.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.uint64)
        return ((v * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)) % np.uint64(n_buckets)
    encoded = pc.dictionary_encode(ids)
    values = encoded.dictionary.to_pylist()
    hashed = np.fromiter((zlib.crc32(str(v).encode()) for v in values), np.uint64, len(values))
    return (hashed % np.uint64(n_buckets))[encoded.indices.to_numpy(zero_copy_only=False)]


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
                bucket = _bucket_of(ids, n_buckets)
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


def _long_frame(table: pa.Table, columns: ColumnConfig, on_duplicate: str, ds_min=None, ds_end=None) -> pd.DataFrame:
    """The frame :func:`read_long` makes, from a table of whole series (columns id, time, value)."""
    ids, codes = _encode_ids(table.column(0), columns.id_col)
    t = _timestamps_ns(table.column(1), columns.time_col)
    y, non_finite = _values(table.column(2), columns.value_col)
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
    order = _sort_order(codes, t)
    if order is not None:
        codes, t, y = codes[order], t[order], y[order]
    codes, t, y, n_dup = _resolve_duplicates(ids, codes, t, y, on_duplicate, columns)
    if ids.dtype == np.int64:
        id_col = pd.Series(ids[codes], name="unique_id")
    else:
        id_col = pd.Series(pd.Categorical.from_codes(codes, categories=pd.Index(ids, dtype=object)))
    frame = pd.DataFrame({"unique_id": id_col, "ds": t.view("M8[ns]"), "y": y})
    frame.attrs[_READ_ATTR] = {"rows": n_rows, "duplicates": n_dup, "non_finite": non_finite}
    return frame



__all__ = [
    "SCORE_COLUMNS",
    "ReadReport",
    "read_long",
    "build_panel",
    "read_panel",
    "write_parquet_atomic",
    "write_bytes_atomic",
    "clean_stale_temps",
    "scores_schema",
    "empty_scores_frame",
    "STREAM_BATCH_ROWS",
    "time_bounds",
    "iter_series_frames",
    "AtomicParquetWriter",
]
