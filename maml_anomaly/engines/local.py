"""The local engine: the input streamed in batches of whole series, scored here and in spawned processes.

The first batch runs in this process; when there is a second one and more than one process is
allowed, the rest go to a pool of worker processes (spawned: no forked torch state) with at most
one batch per worker plus one queued in flight, so memory stays bounded by the batch size.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from maml_anomaly.data.stream import iter_series_frames
from maml_anomaly.engines.base import Codec, Engine, Source
from maml_anomaly.errors import MamlAnomalyError


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


def cpu_processes(threads: int, device: str) -> int:
    """Worker processes for scoring: one per core at ``threads`` torch threads each (CPU only).

    On these 2-core machines two processes of one thread beat one process of two threads on the
    tiny batched matmuls of adaptation (docs/performance.md); a GPU is driven by one process.
    """
    if device != "cpu":
        return 1
    return max(1, (os.cpu_count() or 1) // threads)


class LocalEngine(Engine):
    """Batches of whole series from :func:`~maml_anomaly.data.stream.iter_series_frames`, in input order."""

    name = "local"

    def __init__(self, *, threads: int = 1, processes: int = 1) -> None:
        self.threads = threads
        self.processes = processes

    def map_batches(
        self, fn: Callable[[Any, Any], Any], payload: Any, source: Source, codec: Codec | None = None
    ) -> Iterator[Any]:
        frames = iter_series_frames(
            source.path,
            source.columns,
            source.on_duplicate,
            ds_min=source.ds_min,
            ds_end=source.ds_end,
            batch_rows=source.batch_rows,
        )
        head = list(itertools.islice(frames, 2))
        if len(head) < 2 or self.processes < 2:
            for frame in itertools.chain(head, frames):
                yield fn(_for_batch(payload, frame), frame)
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            self.processes, mp_context=ctx, initializer=_worker_init, initargs=(self.threads,)
        ) as ex:
            # this process now only reads, dispatches and collects: let freed batches go back to the
            # system (the workers keep the tuned allocator for adaptation)
            tune_allocator(keep=False)
            pending: list[Future] = []
            try:
                for frame in itertools.chain(head, frames):
                    pending.append(ex.submit(fn, _for_batch(payload, frame), frame))
                    del frame
                    while len(pending) > self.processes:  # one batch per worker plus one queued
                        yield _result(pending.pop(0))
                while pending:
                    yield _result(pending.pop(0))
            finally:
                for fut in pending:
                    fut.cancel()

    def map_parts(self, fn: Callable[[Any, Any], Any], payload: Any, items: list[Any]) -> Iterator[Any]:
        for item in items:  # one part at a time in this process: memory stays one part's
            yield fn(payload, item)


def _for_batch(payload: Any, frame: Any) -> Any:
    """The part of the payload a batch needs (the payload's ``for_batch``), or all of it."""
    return payload.for_batch(frame) if hasattr(payload, "for_batch") else payload


def _worker_init(threads: int) -> None:
    import torch

    tune_allocator()
    torch.set_num_threads(threads)


def _result(fut: Future) -> Any:
    """A worker's result; its MamlAnomalyError is raised here as itself (the user sees one paragraph)."""
    try:
        return fut.result()
    except MamlAnomalyError as exc:
        raise exc.with_traceback(None) from None  # the worker's traceback is not the user's business
