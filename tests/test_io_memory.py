"""The low-memory read path gives the same results as the plain one: blockwise panel building,
dictionary-encoded string ids, the one-key sort, chunked column conversion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maml_anomaly.config import ColumnConfig
from maml_anomaly.data import panel as mpanel
from maml_anomaly.data import read as mio
from maml_anomaly.data.panel import Panel
from maml_anomaly.data.read import build_panel, read_long, read_panel

COLS = ColumnConfig()


def _rows(seed: int = 0, n_series: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sorted long rows of series with mixed steps, gaps, off-phase rows and drift."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n_series, dtype=np.int64) * 7
    codes, ts, ys = [], [], []
    for s in range(n_series):
        step = int(rng.choice([60, 3600, 86400])) * 10**9
        n = int(rng.integers(1, 60))
        j = np.sort(rng.choice(np.arange(n + 10), size=n, replace=False))
        t = 1_700_000_000 * 10**9 + j * step
        if n > 3 and s % 5 == 0:
            t[n // 2] += step // 3  # off the grid
        if s % 7 == 0:
            t = t + rng.integers(-step // 10, step // 10, size=n) * (rng.random(n) < 0.2)  # drift
        t = np.unique(t)
        codes.append(np.full(t.shape[0], s))
        ts.append(t)
        ys.append(rng.normal(size=t.shape[0]))
    return ids, np.concatenate(codes), np.concatenate(ts), np.concatenate(ys)


def _same(a: Panel, b: Panel) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.start, b.start)
    np.testing.assert_array_equal(a.step, b.step)
    pd.testing.assert_frame_equal(a.off_grid, b.off_grid)
    assert a.snapped == b.snapped


@pytest.mark.parametrize("snap", [0.0, 0.3])
@pytest.mark.parametrize("block", [1, 7, 50])
def test_blockwise_panel_equals_one_block(monkeypatch, block, snap):
    ids, codes, t, y = _rows()
    whole = Panel.from_sorted(ids, codes, t, y, snap)
    monkeypatch.setattr(mpanel, "_BLOCK_ROWS", block)
    _same(Panel.from_sorted(ids, codes.astype(np.int32), t, y, snap), whole)
    assert len(whole.off_grid) > 0 and (snap == 0 or whole.snapped > 0)  # the cases are exercised


def test_series_blocks_cover_every_series_once(monkeypatch):
    monkeypatch.setattr(mpanel, "_BLOCK_ROWS", 5)
    first = np.array([0, 1, 2, 12, 13, 20])  # a 10-row series longer than a block
    blocks = mpanel._series_blocks(first, 22)
    assert blocks[0][0] == 0 and blocks[-1][1] == 6 and blocks[-1][3] == 22
    for (_, s_hi, _, r_hi), (s_lo, _, r_lo, _) in zip(blocks, blocks[1:]):
        assert s_hi == s_lo and r_hi == r_lo
    assert all(r_hi - r_lo <= 5 + 10 for _, _, r_lo, r_hi in blocks)  # a block + the longest series
    assert len(blocks) == 3


def test_string_ids_of_a_single_file_are_read_as_a_dictionary(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(
        pa.table(
            {
                "unique_id": ["b", "a", "b"],
                "ds": pd.to_datetime(["2024-01-01"] * 2 + ["2024-01-02"]),
                "y": [1.0, 2.0, 3.0],
            }
        ),
        path,
    )
    table = mio._read_table(path, COLS)
    assert pa.types.is_dictionary(table.column("unique_id").type)
    out = read_long(path, COLS)
    assert list(out["unique_id"].astype(str)) == ["a", "b", "b"]


@pytest.mark.parametrize("policy", ["first", "last", "mean"])
def test_one_key_sort_matches_arrows_two_key_sort(tmp_path, monkeypatch, policy):
    rng = np.random.default_rng(3)
    n = 3000
    codes = rng.integers(0, 50, n)
    t = np.datetime64("2024-01-01", "ns") + rng.integers(0, 40, n) * np.timedelta64(3600, "s")
    path = tmp_path / "u.parquet"
    pq.write_table(
        pa.table({"unique_id": codes.astype(str), "ds": t, "y": rng.normal(size=n)}), path, row_group_size=700
    )  # several chunks per column
    fast = read_long(path, COLS, policy)
    monkeypatch.setattr(mpanel, "_combined_key", lambda codes, t: None)  # arrow's two-key sort
    slow = read_long(path, COLS, policy)
    pd.testing.assert_frame_equal(fast, slow)
    panel_fast, report_fast = read_panel(path, COLS, policy)
    assert report_fast.duplicates > 0 and panel_fast.n_series == 50


def test_combined_key_orders_like_code_then_time_and_refuses_overflow():
    codes = np.array([2, 0, 1, 0], np.int32)
    t = np.array([5, 9, 1, 3], np.int64) * 86_400 * 10**9
    key = mpanel._combined_key(codes, t)
    np.testing.assert_array_equal(np.argsort(key, kind="stable"), np.lexsort((t, codes)))
    huge = np.array([0, 1, 2], np.int64) * (2**40) + np.array([0, 1, 7])
    assert mpanel._combined_key(np.array([0, 2**30, 1], np.int64), huge) is None


def test_values_and_timestamps_of_many_chunks_with_nulls_and_inf():
    y = pa.chunked_array(
        [pa.array([1.0, None, np.inf]), pa.array([-np.inf, 2], type=pa.float64()), pa.array([], type=pa.float64())]
    )
    out, n_inf = mio.value_column(y, "y")
    np.testing.assert_array_equal(out, [1.0, np.nan, np.nan, np.nan, 2.0])
    assert n_inf == 2
    ints, _ = mio.value_column(pa.chunked_array([pa.array([1, None], pa.int32()), pa.array([3], pa.int32())]), "y")
    np.testing.assert_array_equal(ints, [1.0, np.nan, 3.0])
    ts = pa.chunked_array(
        [
            pa.array([0, 86_400], pa.timestamp("s", tz="Europe/Paris")),
            pa.array([1], pa.timestamp("s", tz="Europe/Paris")),
        ]
    )
    np.testing.assert_array_equal(mio.timestamps_ns(ts, "ds"), np.array([0, 86_400, 1]) * 10**9)


def test_build_panel_on_read_long_frame_keeps_the_frame_intact(tmp_path):
    ids, codes, t, y = _rows(seed=5)
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"unique_id": ids[codes], "ds": t.view("M8[ns]"), "y": y}), path)
    frame = read_long(path, COLS)
    before = frame.copy(deep=True)
    panel, _ = build_panel(frame)
    pd.testing.assert_frame_equal(frame, before)
    _same(panel, Panel.from_sorted(ids, codes, t, y))
