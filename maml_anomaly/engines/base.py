"""The engine interface: map a per-batch function over batches of whole series of an input, then over their parts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from maml_anomaly.config import ColumnConfig

RAY_INSTALL = 'pip install "maml-anomaly[ray]"'


@dataclass(frozen=True)
class Source:
    """The input rows a run reads: ``ds_min <= ds < ds_end`` (either bound may be None)."""

    path: Path
    columns: ColumnConfig
    on_duplicate: str = "error"
    ds_min: np.datetime64 | None = None
    ds_end: np.datetime64 | None = None
    batch_rows: int = 1_000_000  # input rows per batch of whole series (about)


class Codec(Protocol):
    """A per-batch result as an Arrow table of one row and back (a remote engine's transport)."""

    def encode(self, result: Any) -> pa.Table: ...

    def decode(self, table: pa.Table) -> Iterator[Any]: ...


class Engine(ABC):
    """Runs a per-batch function over batches of whole series of an input."""

    name: str

    @abstractmethod
    def map_batches(self, fn: Callable[[Any, Any], Any], payload: Any, source: Source, codec: Codec) -> Iterator[Any]:
        """``fn(payload, frame)`` for every batch of whole series of ``source``; the results.

        ``fn`` must be a module-level function (workers import it by name) and ``payload``
        picklable; when it has a ``for_batch(frame)`` method, each batch gets what that returns
        (the part of the payload its series need). ``frame`` is what
        :func:`~maml_anomaly.data.read.read_long` returns for the batch's series. Results come
        in output order on both engines: the input's order of batches locally; on Ray, the
        order of the batches' first series (ranges of ids), whichever worker finishes first.
        Ray sends them back through ``codec`` (no pickles).
        """

    @abstractmethod
    def map_parts(self, fn: Callable[[Any, Any], Any], payload: Any, items: list[Any]) -> Iterator[Any]:
        """``fn(payload, item)`` for every item (a part file a batch wrote, say); results in item order.

        For the steps after :meth:`map_batches` that work on what the batches left in storage
        every worker reads: the local engine runs them one at a time in this process, Ray on its
        workers with ``payload`` in the object store once. Results must be small.
        """

    def session(self) -> AbstractContextManager[Any]:
        """Hold the engine's resources (a Ray session) across several map calls of one command."""
        return nullcontext()
