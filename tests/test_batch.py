"""batch.py's results survive the Arrow rows a remote engine sends them back in."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from maml_anomaly.batch import ScoredBatch, ScoredCodec
from maml_anomaly.data.schemas import ReadReport


def test_a_spilled_scored_batch_survives_its_arrow_row():
    report = ReadReport(rows=10, series=2, grid_points=12, missing=2, off_grid=1, duplicates=0, non_finite=1, snapped=0)
    batches = [
        ScoredBatch(None, report, np.datetime64("2026-01-01T00:00", "ns"), np.datetime64("2026-01-09T23:00", "ns"),
                    n_series=2, failed_series=1, counts={"ok": 7, "unknown_series": 3}, part="/tmp/x/part-1.parquet"),
        ScoredBatch(None, report, None, None, n_series=0, failed_series=0, counts={}, part="/tmp/x/part-2.parquet"),
    ]
    codec = ScoredCodec()
    table = pa.concat_tables([codec.encode(b) for b in batches])
    back = list(codec.decode(table))
    assert back == batches
