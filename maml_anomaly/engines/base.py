"""The engine interface: map a per-batch function over batches of whole series of an input."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
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
        in input order on the local engine, in any order on Ray, which sends them back through
        ``codec`` (no pickles).
        """
