"""Read and validate long-format parquet and build the panel (streaming: :mod:`maml_anomaly.data.stream`).

Input contract (docs/usage.md, "Input data"):

- a parquet file or a directory of parquet files (a pyarrow dataset; hive partition folders
  allowed; files found by content, see :mod:`maml_anomaly.data.files`); only the three needed
  columns are read; files in different timezones are each converted to UTC;
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
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from maml_anomaly.config import ON_DUPLICATE, ColumnConfig
from maml_anomaly.data.files import input_files, name_examples
from maml_anomaly.data.panel import Panel, build_panel, resolve_duplicates, sort_order
from maml_anomaly.data.schemas import READ_ATTR, ReadReport
from maml_anomaly.errors import InputError

log = logging.getLogger(__name__)

_BLOCK = 1 << 20  # rows converted at a time
_EXACT_FLOAT_INT = 2**53  # every integer up to here is exact in float64


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
    ids, codes = encode_ids(table.column(columns.id_col), columns.id_col)
    table = table.drop_columns([columns.id_col])
    t = timestamps_ns(table.column(columns.time_col), columns.time_col)
    table = table.drop_columns([columns.time_col])
    value_type = table.column(columns.value_col).type
    y, non_finite = value_column(table.column(columns.value_col), columns.value_col)
    rounded = rounded_integers(value_type, y)
    del table
    pa.default_memory_pool().release_unused()

    order = sort_order(codes, t)
    if order is not None:  # one permuted copy at a time, each original freed at once
        codes = codes[order]
        t = t[order]
        y = y[order]
        del order
    codes, t, y, n_dup = resolve_duplicates(ids, codes, t, y, on_duplicate, columns)

    # The frame wraps the arrays without copying them (build_panel reads them back as views).
    if ids.dtype == np.int64:
        id_col = pd.Series(ids[codes], name="unique_id")
    else:
        dtype = pd.CategoricalDtype(pd.Index(ids, dtype=object))
        id_col = pd.Series(pd.Categorical.from_codes(codes, dtype=dtype, validate=False))
    frame = pd.DataFrame({"unique_id": id_col, "ds": t.view("M8[ns]"), "y": y}, copy=False)
    frame.attrs[READ_ATTR] = {"rows": n_rows, "duplicates": n_dup, "non_finite": non_finite, "rounded": rounded}
    return frame


def read_panel(
    path: str | Path, columns: ColumnConfig, on_duplicate: str = "error", snap_tolerance: float = 0.0
) -> tuple[Panel, ReadReport]:
    """:func:`read_long` then :func:`build_panel`, logging what was found."""
    panel, report = build_panel(read_long(path, columns, on_duplicate), snap_tolerance)
    log_read(path, report)
    if report.off_grid:
        log.warning("%d rows are off their series' regular grid; they are kept and reported", report.off_grid)
    return panel, report


def log_read(path: str | Path, report: ReadReport) -> None:
    """The read summary of a whole run's input, and its warnings once (not once per streamed batch)."""
    log.info("read %s: %s", path, report.summary())
    for warning in report.warnings(path):
        log.warning("%s", warning)


def _read_table(path: Path, columns: ColumnConfig) -> pa.Table:
    dataset, _ = open_dataset(path, columns)
    wanted = [columns.id_col, columns.time_col, columns.value_col]
    try:
        return dataset.to_table(columns=wanted, batch_size=1 << 20)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        raise _unreadable(path, exc) from None


def open_dataset(path: Path, columns: ColumnConfig) -> tuple[pads.Dataset, list[str]]:
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
    files = input_files(path)
    wanted = [columns.id_col, columns.time_col, columns.value_col]
    base = str(path) if path.is_dir() else None
    unified = _unified_schema(files, wanted, columns.time_col) if len(files) > 1 else None
    try:
        dataset = pads.dataset(files, format="parquet", partitioning="hive", partition_base_dir=base, schema=unified)
        schema = dataset.schema
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        _check_unique_columns(files)
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
    _check_id_type(id_type, columns.id_col)
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


def _check_unique_columns(files: list[str]) -> None:
    """InputError naming a file whose schema repeats a column name (arrow refuses such a file)."""
    for file in files:
        try:
            names = pq.read_schema(file).names
        except (pa.ArrowInvalid, OSError):
            continue
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(
                f"input file {file} has the column(s) {', '.join(repr(n) for n in repeated)} more than once "
                f"(columns: {names}). Expected unique column names; rewrite the file without the repeated columns."
            )


def check_nulls(dataset: pads.Dataset, columns: ColumnConfig, path: Path) -> None:
    """Null ids or timestamps anywhere in the input are an error, even outside the window read.

    Counts come from the parquet row-group statistics where every row group has them, else from
    a scan of that one column.
    """
    stored = physical_columns(dataset)
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
    lacking: dict[str, list[str]] = {c: [] for c in wanted}  # column -> files without it
    for file in files:
        try:
            file_schema = pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _unreadable(Path(file), exc) from None
        for c in wanted:
            if c in file_schema.names:
                types[c].setdefault(file_schema.field(c).type, file)
            else:
                lacking[c].append(file)
    _check_no_file_lacks(types, lacking)
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
            fields.append(pa.field(c, _aware_type({t.tz for t in aware})))
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


def _check_no_file_lacks(types: dict[str, dict[pa.DataType, str]], lacking: dict[str, list[str]]) -> None:
    """InputError when a column is in some files and not in others (its rows would silently be null)."""
    for c, files in lacking.items():
        if files and types[c]:  # absent from every file: a hive partition key, or named by the missing-column check
            raise InputError(
                f"column {c!r} is missing from {len(files)} file(s) of the input, e.g. {name_examples(files, 3)}, "
                f"while {next(iter(types[c].values()))} has it. Expected every file to hold the same columns; "
                "rewrite or remove the odd files."
            )


def _aware_type(zones: set[str]) -> pa.DataType:
    """The read type of timestamps that every file stores timezone-aware, in ``zones``.

    One zone: timestamps in it. Several: ISO 8601 strings with their UTC offsets, parsed value by
    value into UTC (slower, exact), because arrow cannot compare one time filter with row-group
    statistics stored in several zones.
    """
    return pa.timestamp("ns", tz=next(iter(zones))) if len(zones) == 1 else pa.string()


def _file_columns(dataset: pads.Dataset) -> set[str]:
    """Columns stored in the files (not hive partition keys).

    From the first file's own schema: a dataset's partitioning schema is not reliable here (for
    a single file without partition folders it lists every column, which turned the dictionary
    read of string ids off).
    """
    for fragment in dataset.get_fragments():
        return set(fragment.physical_schema.names)
    return set()


def _unreadable(path: Path, exc: Exception) -> InputError:
    return InputError(
        f"could not read {path} as parquet ({type(exc).__name__}: {str(exc).strip()}). Expected "
        "a complete parquet file or a directory of parquet files with one schema; the file may "
        "be truncated, still being written, or in another format (convert CSV with "
        "pandas.read_csv(...).to_parquet(...))."
    )


def encode_ids(column: pa.ChunkedArray | pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids (S,) (object str or int64) and each row's code (N,) int32 (int64 past 2**31 ids).

    String ids are read from parquet as dictionaries (see _read_table): hashing one dictionary
    per chunk is far cheaper than hashing every row's string. Rows are mapped chunk by chunk
    into one preallocated array, with a single lookup table from dictionary index to sorted
    position, so no row-sized temporary is made.
    """
    _check_id_type(column.type, name)
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
        values, kind = _int64_ids(values, name), "int"
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
        raise InputError(
            f"column {name!r} has null ids. Expected every row to name its series; drop or fill those rows."
        )
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


def _check_id_type(typ: pa.DataType, name: str) -> None:
    """InputError unless ids are strings or integers (before any encoding: nested types have no kernels)."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if not (pa.types.is_integer(typ) or _is_text(typ)):
        raise InputError(
            f"column {name!r} has type {typ}. Expected series ids as strings or integers; "
            "cast the column, or name another column with --id-col."
        )


def _is_text(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def _int64_ids(values: pa.Array, name: str) -> pa.Array:
    try:
        return values.cast(pa.int64())
    except pa.ArrowInvalid:
        raise InputError(
            f"column {name!r} holds unsigned integer ids beyond the int64 range (up to "
            f"{pc.max(values).as_py()}). Expected integer ids within int64; store the ids as strings."
        ) from None


def timestamps_ns(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """(N,) int64 ns since the epoch, naive UTC."""
    if isinstance(column, pa.ChunkedArray) and _is_time_type(column.type) and not column.null_count:
        return _chunks_to_numpy(column, np.int64, lambda c: timestamps_ns(c, name))
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
            f"column {name!r} holds timestamps outside the supported range 1677-2262 ({exc}). Fix or drop those rows."
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


def value_column(column: pa.ChunkedArray, name: str) -> tuple[np.ndarray, int]:
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
    """(n,) float64 of a numeric arrow array, null -> NaN (read-only when zero-copy).

    Integers beyond 2**53 (int64, uint64) are rounded to the nearest float64 (unchecked cast).
    """
    return pc.fill_null(arr.cast(pa.float64(), safe=False), np.nan).to_numpy(zero_copy_only=False)


def rounded_integers(column_type: pa.DataType, y: np.ndarray) -> int:
    """How many values of an integer column were beyond 2**53, so rounded in ``y`` (float64; warned once per run)."""
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    if not pa.types.is_integer(column_type):
        return 0
    n_big = 0
    for lo in range(0, y.shape[0], _BLOCK):
        n_big += int(np.count_nonzero(np.abs(y[lo : lo + _BLOCK]) > _EXACT_FLOAT_INT))
    return n_big


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


def physical_columns(dataset: pads.Dataset) -> set[str]:
    """Columns stored in the files themselves (hive partition keys are not)."""
    for frag in dataset.get_fragments():
        return set(frag.physical_schema.names)
    return set()
