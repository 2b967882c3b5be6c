"""Streaming: batches of whole series from sorted or unsorted parquet, windows, atomic appends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_long

from maml_anomaly.config import ColumnConfig
from maml_anomaly.data.read import read_long
from maml_anomaly.data.stream import iter_series_frames, time_bounds
from maml_anomaly.data.write import AtomicParquetWriter
from maml_anomaly.errors import InputError

COLS = ColumnConfig()


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(unique_id=frame["unique_id"].astype(str)).reset_index(drop=True)


def _write(frame: pd.DataFrame, path: Path, row_group_size: int) -> Path:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group_size)
    return path


@pytest.fixture
def history(tmp_path: Path) -> pd.DataFrame:
    frame = make_long(n_series=23, n_points=50, seed=1)
    frame.loc[frame.index % 17 == 3, "y"] = np.nan
    return frame.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)  # sorted by series


def test_sorted_input_streams_whole_series_in_order(tmp_path, history):
    path = _write(history, tmp_path / "h.parquet", row_group_size=37)  # row groups cut series
    frames = list(iter_series_frames(path, COLS, batch_rows=120))
    assert len(frames) > 3
    ids = [set(f["unique_id"].astype(str)) for f in frames]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 23  # every series in exactly one batch
    streamed = pd.concat([_plain(f) for f in frames], ignore_index=True)
    pd.testing.assert_frame_equal(streamed, _plain(read_long(path, COLS)))  # same rows, same order


def test_unsorted_input_is_grouped_by_hashed_id(tmp_path, history):
    shuffled = history.sample(frac=1.0, random_state=0)
    path = _write(shuffled, tmp_path / "h.parquet", row_group_size=100)
    frames = list(iter_series_frames(path, COLS, batch_rows=300, spill_dir=tmp_path))
    ids = [set(f["unique_id"].astype(str)) for f in frames]
    assert len(frames) > 1 and sum(map(len, ids)) == len(set().union(*ids)) == 23
    streamed = pd.concat([_plain(f) for f in frames]).sort_values(["unique_id", "ds"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(streamed, _plain(read_long(path, COLS)))
    assert not any(p.name.startswith("maml-anomaly-spill") for p in tmp_path.iterdir())  # spill files removed


@pytest.mark.parametrize("ds_kind", ["timestamp", "string"])
def test_time_window_is_applied(tmp_path, history, ds_kind):
    frame = history.copy()
    if ds_kind == "string":
        frame["ds"] = frame["ds"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    path = _write(frame, tmp_path / "h.parquet", row_group_size=200)
    lo, end = np.datetime64("2024-01-01T10:00", "ns"), np.datetime64("2024-01-02T01:00", "ns")
    got = pd.concat([_plain(f) for f in iter_series_frames(path, COLS, ds_min=lo, ds_end=end, batch_rows=100)])
    ref = _plain(read_long(path, COLS))
    ref = ref[(ref["ds"] >= lo) & (ref["ds"] < end)].reset_index(drop=True)
    assert len(ref) < len(history)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref)
    assert time_bounds(path, COLS) == (np.datetime64("2024-01-01T00:00", "ns"), np.datetime64("2024-01-03T01:00", "ns"))


def test_duplicates_are_found_within_a_streamed_batch(tmp_path, history):
    dup = pd.concat([history, history.iloc[[5]]], ignore_index=True).sort_values(["unique_id", "ds"], kind="stable")
    path = _write(dup, tmp_path / "h.parquet", row_group_size=40)
    with pytest.raises(InputError, match="duplicate"):
        list(iter_series_frames(path, COLS, batch_rows=100))
    frames = list(iter_series_frames(path, COLS, "first", batch_rows=100))
    assert sum(f.attrs["maml_anomaly.read"]["duplicates"] for f in frames) == 1


def test_empty_window_is_an_input_error(tmp_path, history):
    path = _write(history, tmp_path / "h.parquet", row_group_size=200)
    with pytest.raises(InputError, match="no rows"):
        list(iter_series_frames(path, COLS, ds_min=np.datetime64("2030-01-01", "ns")))


def test_atomic_writer_publishes_only_on_commit(tmp_path):
    table = pa.table({"a": [1, 2, 3]})
    target = tmp_path / "out.parquet"
    with AtomicParquetWriter(target, table.schema) as writer:
        writer.write(table)
    assert not target.exists() and not list(tmp_path.iterdir())  # abandoned: nothing left
    with AtomicParquetWriter(target, table.schema) as writer:
        writer.write(table)
        writer.write(table)
        writer.commit()
    assert pq.read_table(target).num_rows == 6 and [p.name for p in tmp_path.iterdir()] == ["out.parquet"]
