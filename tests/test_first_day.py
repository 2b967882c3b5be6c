"""A series whose history starts within the scored day is scored from the point it has K support
points on, not left insufficient_history for the whole day."""

import numpy as np
from synth import seasonal_panel, tiny_cluster, to_buffer  # noqa: F401 (fixture)

from maml_anomaly.core.scoring import STATUS_INSUFFICIENT, STATUS_OK, first_with_support, score_rows

STEP_NS = 60 * 10**9  # 1-minute points: a day holds 1,440 of them


def test_a_series_that_starts_at_midnight_is_scored_once_it_has_its_support(tiny_cluster):
    n = 1440
    matrix = seasonal_panel(3, n, period=24, seed=2)  # the series start at the scored day's midnight
    spike_at = 900
    spread = np.std(np.diff(matrix[:, :spike_at], axis=1), axis=1)
    matrix[:, spike_at] += 12 * spread
    values, indptr = to_buffer(matrix)
    row_series = np.repeat(np.arange(3), n)
    row_t = np.tile(np.arange(n) * STEP_NS, 3).astype(np.int64)
    out = score_rows(
        [tiny_cluster],
        values,
        indptr,
        np.zeros(3, np.int64),
        np.full(3, STEP_NS, np.int64),
        np.zeros(3, np.int64),
        row_series,
        row_t,
        matrix.reshape(-1),
        threshold=3.0,
    )
    first = int(first_with_support([tiny_cluster])[0])
    slot = np.tile(np.arange(n), 3)
    assert (out.status[slot < first] == STATUS_INSUFFICIENT).all()
    ok = slot >= first
    assert (out.status[ok] == STATUS_OK).all() and np.isfinite(out.score[ok]).all()
    assert out.is_anomaly[slot == spike_at].all()
