"""The files of an input path: a parquet file, or the parquet files of a folder found by their content.

Names do not matter (``part-00001``, ``b.PARQUET``): a file is parquet when its bytes start and end
with ``PAR1``. Files that are not read are named in a warning, never skipped silently.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from maml_anomaly.errors import InputError

log = logging.getLogger("maml_anomaly.data.read")  # the read summary's logger: warnings sit beside it

PARQUET_MAGIC = b"PAR1"
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def input_files(path: Path) -> list[str]:
    """The files of an input: the file itself, or every parquet file of a folder by its content.

    In a folder, hidden files (a part of the path starting with "." or "_": _SUCCESS, .crc, lock
    and temporary files) and files whose content is not parquet are skipped and named in a
    warning. An empty file, one that starts as parquet but lacks its footer (still being written)
    or one named .parquet whose content is not parquet is an error: its series would vanish.
    """
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise InputError(
            f"input {path} is neither a regular file nor a directory. Expected a parquet file or a directory of "
            "parquet files."
        )
    chosen, hidden, other = [], [], []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith((".", "_")) for part in relative.parts):
            hidden.append(str(relative))
        elif _is_parquet(file, path):
            chosen.append(str(file))
        else:
            other.append(str(relative))
    _warn_skipped(str(path), tuple(hidden), tuple(other))
    if not chosen:
        raise InputError(
            f"input directory {path} holds no parquet files"
            + (f" (skipped: {name_examples(hidden + other)})" if hidden or other else "")
            + ". Expected a parquet file or a directory of parquet files (hive partition folders allowed)."
        )
    return chosen


def _is_parquet(file: Path, folder: Path) -> bool:
    """True for a complete parquet file (PAR1 at both ends); InputError for an incomplete or misnamed one."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(4)
            fh.seek(max(size - 4, 0))
            tail = fh.read(4)
    except OSError as exc:
        raise InputError(
            f"could not read {file} ({exc.strerror or exc}). Expected every file of the input folder {folder} "
            "to be readable; fix its permissions or remove it."
        ) from None
    if head == PARQUET_MAGIC and tail == PARQUET_MAGIC and size >= 12:
        return True
    if size == 0 or head == PARQUET_MAGIC or file.suffix.lower() in _PARQUET_SUFFIXES:
        raise InputError(
            f"could not read {file} as parquet: the file {_not_parquet_state(size, head)} (truncated, still being written, or in "
            f"another format). Expected every data file of the input folder {folder} to be complete parquet; "
            "wait for the upstream job to finish, or remove the file."
        )
    return False


def _not_parquet_state(size: int, head: bytes) -> str:
    if size == 0:
        return "is empty"
    if head == PARQUET_MAGIC:
        return "starts as parquet but has no parquet footer"
    return "is named as parquet but its content is not parquet"


@functools.lru_cache(maxsize=64)
def _warn_skipped(folder: str, hidden: tuple[str, ...], other: tuple[str, ...]) -> None:
    """Name the files of an input folder that are not read (once per folder state: commands open it several times)."""
    if hidden:
        log.warning(
            "input %s: %d hidden file(s) not read: %s",
            folder,
            len(hidden),
            name_examples(list(hidden)),
            extra={"skipped_files": [str(Path(folder) / f) for f in hidden]},
        )
    if other:
        log.warning(
            "input %s: %d file(s) not read because their content is not parquet: %s",
            folder,
            len(other),
            name_examples(list(other)),
            extra={"skipped_files": [str(Path(folder) / f) for f in other]},
        )


def forget_warned_folders() -> None:
    """Warn again about a folder's skipped files (a new command run in the same process)."""
    _warn_skipped.cache_clear()


def name_examples(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
