"""batch.py's results survive the Arrow rows a remote engine sends them back in."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from maml_anomaly.batch import ScoredBatch, ScoredCodec
from maml_anomaly.data.schemas import ReadReport


def test_a_spilled_scored_batch_survives_its_arrow_row():
    report = ReadReport(rows=10, series=2, grid_points=12, missing=2, off_grid=1, duplicates=0, non_finite=1, snapped=0)
    batches = [
        ScoredBatch(
            None,
            report,
            np.datetime64("2026-01-01T00:00", "ns"),
            np.datetime64("2026-01-09T23:00", "ns"),
            n_series=2,
            failed_series=1,
            counts={"ok": 7, "unknown_series": 3},
            part="/tmp/x/part-1.parquet",
        ),
        ScoredBatch(None, report, None, None, n_series=0, failed_series=0, counts={}, part="/tmp/x/part-2.parquet"),
    ]
    codec = ScoredCodec()
    table = pa.concat_tables([codec.encode(b) for b in batches])
    back = list(codec.decode(table))
    assert back == batches


def test_a_scored_batchs_tested_p_values_come_back_per_group_to_the_bit():
    report = ReadReport(rows=3, series=1, grid_points=3, missing=0, off_grid=0, duplicates=0, non_finite=0, snapped=0)
    tested = {"daily_7_0": np.array([1e-300, 0.1, 0.1, 0.7]), "": np.zeros(0), "hourly_24_1": np.array([0.3])}
    batch = ScoredBatch(
        None, report, None, None, n_series=1, failed_series=0, counts={"ok": 5}, part="p", tested=tested
    )
    codec = ScoredCodec()
    (back,) = codec.decode(codec.encode(batch))
    assert list(back.tested) == list(tested)
    for key, values in tested.items():
        np.testing.assert_array_equal(back.tested[key], values)
