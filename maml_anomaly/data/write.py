"""Atomic writers: a file appears complete or not at all, and a killed run's temporary files are cleaned."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maml_anomaly.errors import MamlAnomalyError
from maml_anomaly.locking import CRASH_ENV, crash_point

log = logging.getLogger(__name__)

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
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=self.path.parent
            )
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


# -- staging a run's parts beside its output, then one publish ---------------------------------

_STAGING_SUFFIX = ".staging"
ROW_GROUP_ROWS = 1024 * 1024  # pyarrow's default row group: the published file is laid out like a one-shot write


@contextmanager
def staging_folder(output: str | Path) -> Iterator[Path]:
    """A hidden folder beside ``output`` for a run's part files, removed when the block ends.

    Named ``.NAME.PID.XXXX.staging`` in the output's folder: on a cluster every worker writes its
    parts there, so that folder must be on storage every worker sees. Removed on success and on
    failure; a killed run's folder is removed by the next run for the same output.
    """
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        for old in output.parent.glob(f".{glob_escape(output.name)}.*{_STAGING_SUFFIX}"):
            pid = old.name[len(output.name) + 2 :].split(".", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed %s, left by a killed run (pid %s)", old, pid)
        folder = Path(
            tempfile.mkdtemp(prefix=f".{output.name}.{os.getpid()}.", suffix=_STAGING_SUFFIX, dir=output.parent)
        )
    except OSError as exc:
        raise _write_error(output, exc) from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish_parts(parts: list[str | Path], output: str | Path) -> int:
    """Stream part files, in order, into one parquet file that appears at ``output`` atomically.

    One part is in memory at a time (plus a row group being filled); row groups are cut every
    ROW_GROUP_ROWS rows across parts, as one ``pq.write_table`` of all rows would cut them.
    Returns the number of rows.
    """
    schema = pq.read_schema(parts[0]) if parts else None
    if schema is None:
        raise ValueError("publish_parts needs at least one part")
    try:
        return _stream_parts(parts, AtomicParquetWriter(output, schema))
    except OSError as exc:  # the writer removed its temporary file: the previous output stands
        raise _write_error(Path(output), exc) from None


def _stream_parts(parts: list[str | Path], writer: AtomicParquetWriter) -> int:
    with writer:
        pending: list[pa.Table] = []
        held = 0
        for part in parts:
            table = pq.read_table(part)
            if table.num_rows == 0:
                continue
            pending.append(table)
            held += table.num_rows
            while held >= ROW_GROUP_ROWS:
                rows = pa.concat_tables(pending)
                writer.write(rows.slice(0, ROW_GROUP_ROWS).combine_chunks())
                rest = rows.slice(ROW_GROUP_ROWS)
                pending, held = [rest], rest.num_rows
        if held:
            writer.write(pa.concat_tables(pending).combine_chunks())
        writer.commit()
        return writer.rows
