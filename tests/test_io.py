"""The reader: round trips (hypothesis), policies, conversions, every bad input, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maml_anomaly.config import ColumnConfig
from maml_anomaly.data import read as mio
from maml_anomaly.data.read import build_panel, read_long, read_panel
from maml_anomaly.data.schemas import SCORE_COLUMNS, empty_scores_frame, scores_schema
from maml_anomaly.data.write import write_parquet_atomic
from maml_anomaly.errors import InputError

COLS = ColumnConfig()
STEPS = {"15s": 15, "5min": 300, "h": 3600, "D": 86400}


# -- property tests -------------------------------------------------------------------------------


@st.composite
def panels(draw):
    """Random series (expected grids) plus the long rows that encode them."""
    n_series = draw(st.integers(1, 5))
    int_ids = draw(st.booleans())
    ids = draw(
        st.lists(st.integers(-(10**6), 10**6), min_size=n_series, max_size=n_series, unique=True)
        if int_ids
        else st.lists(st.text("abcxyz_0123", min_size=1, max_size=6), min_size=n_series, max_size=n_series, unique=True)
    )
    expected, rows = {}, []
    for sid in ids:
        step = draw(st.sampled_from(list(STEPS.values())))
        n = draw(st.integers(1, 25))
        start = pd.Timestamp("2020-01-01") + pd.Timedelta(seconds=draw(st.integers(0, 10**6)))
        values = draw(
            st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(np.nan)), min_size=n, max_size=n)
        )
        # Remove interior rows, never two adjacent ones, fewer than a third of the gaps, so the
        # step stays the mode of the differences and the ends stay in place.
        removed = set()
        for j in draw(st.lists(st.integers(1, max(n - 2, 1)), max_size=n // 4)):
            if 0 < j < n - 1 and j - 1 not in removed and j + 1 not in removed and (len(removed) + 1) * 3 < n - 1:
                removed.add(j)
        grid = np.array(values, dtype=float)
        grid[list(removed)] = np.nan
        expected[sid] = (start, step if n > 1 else None, grid)
        for j in range(n):
            if j not in removed:
                rows.append((sid, start + pd.Timedelta(seconds=j * step), values[j]))
    frame = pd.DataFrame(rows, columns=["unique_id", "ds", "y"])
    if int_ids:
        frame["unique_id"] = frame["unique_id"].astype("int64")
    return frame, expected


def _check_panel(panel, expected):
    assert panel.n_series == len(expected)
    assert list(panel.ids) == sorted(expected)
    for i, sid in enumerate(panel.ids):
        start, step, grid = expected[sid]
        assert pd.Timestamp(panel.start[i]) == start
        if step is None:
            assert np.isnat(panel.step[i])
        else:
            assert panel.step_seconds[i] == step
        np.testing.assert_array_equal(panel.series_values(i), grid)
    assert panel.off_grid.empty


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=panels(), seed=st.integers(0, 2**16))
def test_round_trip_any_row_order(tmp_path, data, seed):
    frame, expected = data
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    path = tmp_path / f"p{seed}.parquet"
    shuffled.to_parquet(path, index=False)
    panel, report = read_panel(path, COLS)
    _check_panel(panel, expected)
    assert report.rows == len(frame)
    assert report.series == len(expected)
    assert report.missing == int(np.isnan(panel.values).sum())
    if pd.api.types.is_integer_dtype(frame["unique_id"]):
        assert panel.ids.dtype == np.int64


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=panels())
def test_sorted_and_shuffled_inputs_give_identical_panels(tmp_path, data):
    frame, _ = data
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    frame.to_parquet(a, index=False)
    frame.iloc[::-1].to_parquet(b, index=False)
    pa_, _ = read_panel(a, COLS)
    pb, _ = read_panel(b, COLS)
    np.testing.assert_array_equal(pa_.ids, pb.ids)
    np.testing.assert_array_equal(pa_.indptr, pb.indptr)
    np.testing.assert_array_equal(pa_.values, pb.values)
    np.testing.assert_array_equal(pa_.start, pb.start)


def test_removed_rows_and_null_values_become_nan(tmp_path, long_frame):
    frame = long_frame.drop(index=[5, 6, 60]).copy()
    frame.loc[10, "y"] = None
    frame.to_parquet(tmp_path / "x.parquet", index=False)
    panel, report = read_panel(tmp_path / "x.parquet", COLS)
    assert panel.lengths.tolist() == [48, 48, 48]
    s0 = panel.series_values(0)
    assert np.isnan(s0[[5, 6, 10]]).all() and np.isnan(s0).sum() == 3
    assert np.isnan(panel.series_values(1)[12])
    assert report.missing == 4


def test_mixed_steps_in_one_input(tmp_path):
    hourly = pd.DataFrame({"unique_id": "h", "ds": pd.date_range("2024-01-01", periods=30, freq="h"), "y": 1.0})
    daily = pd.DataFrame({"unique_id": "d", "ds": pd.date_range("2024-01-01", periods=10, freq="D"), "y": 2.0})
    pd.concat([hourly, daily]).to_parquet(tmp_path / "m.parquet", index=False)
    panel, _ = read_panel(tmp_path / "m.parquet", COLS)
    assert dict(zip(panel.ids, panel.step_seconds)) == {"d": 86400.0, "h": 3600.0}
    assert dict(zip(panel.ids, panel.lengths)) == {"d": 10, "h": 30}


def test_off_grid_rows_are_kept_and_counted(tmp_path, long_frame):
    extra = pd.DataFrame({"unique_id": ["s1"], "ds": [pd.Timestamp("2024-01-01 03:30")], "y": [99.0]})
    pd.concat([long_frame, extra]).to_parquet(tmp_path / "x.parquet", index=False)
    panel, report = read_panel(tmp_path / "x.parquet", COLS)
    assert report.off_grid == 1
    assert panel.off_grid["y"].tolist() == [99.0]
    assert panel.ids[panel.off_grid["series"][0]] == "s1"


# -- conversions ----------------------------------------------------------------------------------


def test_renamed_columns_only_needed_ones_read(tmp_path, long_frame):
    frame = long_frame.rename(columns={"unique_id": "sid", "ds": "when", "y": "value"})
    frame["junk"] = "x"
    frame.to_parquet(tmp_path / "x.parquet", index=False)
    out = read_long(tmp_path / "x.parquet", ColumnConfig("sid", "when", "value"))
    assert list(out.columns) == ["unique_id", "ds", "y"]
    assert len(out) == len(long_frame)


def test_timezone_aware_timestamps_become_naive_utc(tmp_path):
    ds = pd.date_range("2024-03-01 10:00", periods=4, freq="h", tz="Europe/Paris")
    pd.DataFrame({"unique_id": "a", "ds": ds, "y": 1.0}).to_parquet(tmp_path / "x.parquet", index=False)
    out = read_long(tmp_path / "x.parquet", COLS)
    assert out["ds"].iloc[0] == pd.Timestamp("2024-03-01 09:00")
    assert out["ds"].dt.tz is None


def test_iso_strings_and_dates_are_parsed(tmp_path):
    table = pa.table(
        {"unique_id": ["a", "a"], "ds": ["2024-01-01T00:00:00+01:00", "2024-01-01T00:00:00Z"], "y": [1.0, 2.0]}
    )
    pq.write_table(table, tmp_path / "s.parquet")
    out = read_long(tmp_path / "s.parquet", COLS)
    assert out["ds"].tolist() == [pd.Timestamp("2023-12-31 23:00"), pd.Timestamp("2024-01-01")]
    import datetime as dt

    table = pa.table({"unique_id": [1, 1], "ds": pa.array([dt.date(2024, 1, 1), dt.date(2024, 1, 2)]), "y": [1, 2]})
    pq.write_table(table, tmp_path / "d.parquet")
    out = read_long(tmp_path / "d.parquet", COLS)
    assert out["ds"].tolist() == [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-02")]
    assert out["unique_id"].dtype == np.int64
    assert out["y"].dtype == np.float64


def test_infinities_are_missing_and_counted(tmp_path, long_frame):
    long_frame.loc[[3, 4], "y"] = [np.inf, -np.inf]
    long_frame.to_parquet(tmp_path / "x.parquet", index=False)
    panel, report = read_panel(tmp_path / "x.parquet", COLS)
    assert report.non_finite == 2
    assert np.isnan(panel.series_values(0)[[3, 4]]).all()


def test_hive_partitioned_directory(tmp_path, long_frame):
    root = tmp_path / "data"
    for day, part in long_frame.groupby(long_frame["ds"].dt.date):
        folder = root / f"day={day}"
        folder.mkdir(parents=True)
        part.to_parquet(folder / "part-0.parquet", index=False)
    (root / "_SUCCESS").write_text("")
    panel, report = read_panel(root, COLS)
    assert report.rows == len(long_frame)
    assert panel.lengths.tolist() == [48, 48, 48]


# -- duplicates -----------------------------------------------------------------------------------


def _dups(tmp_path) -> Path:
    frame = pd.DataFrame(
        {
            "unique_id": ["a", "a", "a", "a", "b"],
            "ds": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-02", "2024-01-03", "2024-01-01"]),
            "y": [1.0, 2.0, 4.0, 5.0, 7.0],
        }
    )
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    return tmp_path / "d.parquet"


def test_duplicates_are_an_error_naming_count_examples_and_fix(tmp_path):
    with pytest.raises(InputError) as err:
        read_long(_dups(tmp_path), COLS)
    msg = str(err.value)
    assert "1 duplicate" in msg and "'a' at 2024-01-02" in msg and "--on-duplicate" in msg


@pytest.mark.parametrize("policy, value", [("first", 2.0), ("last", 4.0), ("mean", 3.0)])
def test_duplicate_policies(tmp_path, policy, value):
    panel, report = read_panel(_dups(tmp_path), COLS, policy)
    assert panel.series_values(0).tolist() == [1.0, value, 5.0]
    assert report.duplicates == 1


# -- bad inputs -----------------------------------------------------------------------------------


def _error(path, columns=COLS) -> str:
    with pytest.raises(InputError) as err:
        read_panel(path, columns)
    return str(err.value)


def test_missing_path(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope.parquet")


def test_not_parquet(tmp_path):
    (tmp_path / "x.parquet").write_text("unique_id,ds,y\na,2024-01-01,1\n")
    assert "could not read" in _error(tmp_path / "x.parquet")


def test_truncated_file(tmp_path, long_parquet):
    data = long_parquet.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(cut)


def test_empty_directory_and_empty_table(tmp_path, long_frame):
    (tmp_path / "empty").mkdir()
    assert "no parquet files" in _error(tmp_path / "empty")
    long_frame.iloc[:0].to_parquet(tmp_path / "zero.parquet", index=False)
    assert "no rows" in _error(tmp_path / "zero.parquet")


def test_missing_column_names_present_columns_and_flags(tmp_path, long_frame):
    long_frame.rename(columns={"y": "value"}).to_parquet(tmp_path / "x.parquet", index=False)
    msg = _error(tmp_path / "x.parquet")
    assert "'y'" in msg and "'value'" in msg and "--value-col" in msg


def test_non_numeric_values_named(tmp_path):
    pd.DataFrame(
        {"unique_id": ["a", "a"], "ds": pd.to_datetime(["2024-01-01", "2024-01-02"]), "y": ["1.5", "oops"]}
    ).to_parquet(tmp_path / "x.parquet", index=False)
    msg = _error(tmp_path / "x.parquet")
    assert "numeric" in msg and "'oops'" in msg and "string" in msg


def test_unparseable_timestamps_named(tmp_path):
    pd.DataFrame({"unique_id": ["a", "a"], "ds": ["2024-01-01", "yesterday"], "y": [1.0, 2.0]}).to_parquet(
        tmp_path / "x.parquet", index=False
    )
    msg = _error(tmp_path / "x.parquet")
    assert "'yesterday'" in msg and "ISO 8601" in msg


def test_integer_timestamps_and_float_ids_are_refused(tmp_path):
    pd.DataFrame({"unique_id": ["a"], "ds": [1700000000], "y": [1.0]}).to_parquet(tmp_path / "t.parquet", index=False)
    assert "--time-col" in _error(tmp_path / "t.parquet")
    pd.DataFrame({"unique_id": [1.5], "ds": [pd.Timestamp("2024-01-01")], "y": [1.0]}).to_parquet(
        tmp_path / "i.parquet", index=False
    )
    assert "strings or integers" in _error(tmp_path / "i.parquet")


def test_null_ids_and_null_timestamps_refused(tmp_path):
    pd.DataFrame(
        {"unique_id": ["a", None], "ds": pd.to_datetime(["2024-01-01", "2024-01-02"]), "y": [1.0, 2.0]}
    ).to_parquet(tmp_path / "i.parquet", index=False)
    assert "null ids" in _error(tmp_path / "i.parquet")
    pd.DataFrame({"unique_id": ["a", "a"], "ds": pd.to_datetime(["2024-01-01", None]), "y": [1.0, 2.0]}).to_parquet(
        tmp_path / "t.parquet", index=False
    )
    assert "null timestamps" in _error(tmp_path / "t.parquet")


def test_build_panel_accepts_a_plain_frame(long_frame):
    panel, report = build_panel(long_frame.sample(frac=1.0, random_state=1))
    assert panel.lengths.tolist() == [48, 48, 48]
    assert report.rows == len(long_frame)


# -- writing --------------------------------------------------------------------------------------


def test_write_parquet_atomic_replaces_and_leaves_no_temp(tmp_path, long_frame):
    out = tmp_path / "sub" / "scores.parquet"
    write_parquet_atomic(long_frame, out)
    write_parquet_atomic(long_frame.iloc[:5], out)
    assert len(pd.read_parquet(out)) == 5
    assert os.listdir(out.parent) == ["scores.parquet"]


def test_write_parquet_atomic_keeps_previous_file_on_failure(tmp_path, long_frame, monkeypatch):
    out = tmp_path / "scores.parquet"
    write_parquet_atomic(long_frame, out)

    def broken(table, where, **kwargs):
        where.write(b"PAR1 partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(mio.pq, "write_table", broken)
    with pytest.raises(RuntimeError):
        write_parquet_atomic(long_frame.iloc[:1], out)
    assert len(pd.read_parquet(out)) == len(long_frame)
    assert os.listdir(tmp_path) == ["scores.parquet"]


def test_empty_scores_frame_has_the_contract_columns(tmp_path):
    frame = empty_scores_frame()
    assert list(frame.columns) == list(SCORE_COLUMNS)
    assert frame["is_anomaly"].dtype == bool and frame["ds"].dtype == "datetime64[ns]"
    write_parquet_atomic(frame, tmp_path / "e.parquet")
    assert list(pd.read_parquet(tmp_path / "e.parquet").columns) == list(SCORE_COLUMNS)
    assert scores_schema().names == list(SCORE_COLUMNS)


def test_categorical_ids_with_unused_categories(tmp_path, long_frame):
    frame = long_frame.copy()
    frame["unique_id"] = pd.Categorical(frame["unique_id"], categories=["zz", "s2", "s0", "s1", "aa"])
    frame.to_parquet(tmp_path / "c.parquet", index=False)
    panel, _ = read_panel(tmp_path / "c.parquet", COLS)
    assert list(panel.ids) == ["s0", "s1", "s2"]
    expected = long_frame[long_frame["unique_id"] == "s1"]["y"].to_numpy()
    np.testing.assert_array_equal(panel.series_values(1), expected)
    ints = long_frame.assign(unique_id=pd.Categorical(long_frame["unique_id"].str[1:].astype(int) * 7))
    ints.to_parquet(tmp_path / "i.parquet", index=False)
    panel, _ = read_panel(tmp_path / "i.parquet", COLS)
    assert panel.ids.tolist() == [0, 7, 14] and panel.ids.dtype == np.int64


def test_ids_as_hive_partition_keys(tmp_path, long_frame):
    for sid, part in long_frame.groupby("unique_id"):
        folder = tmp_path / "data" / f"unique_id={sid}"
        folder.mkdir(parents=True)
        part.drop(columns="unique_id").to_parquet(folder / "part-0.parquet", index=False)
    panel, report = read_panel(tmp_path / "data", COLS)
    assert list(panel.ids) == ["s0", "s1", "s2"] and report.rows == len(long_frame)
    np.testing.assert_array_equal(panel.series_values(2), long_frame["y"].to_numpy()[96:])


def test_boolean_values_are_refused(tmp_path):
    pd.DataFrame(
        {"unique_id": ["a", "a"], "ds": pd.to_datetime(["2024-01-01", "2024-01-02"]), "y": [True, False]}
    ).to_parquet(tmp_path / "b.parquet", index=False)
    msg = _error(tmp_path / "b.parquet")
    assert "bool" in msg and "numeric" in msg


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]), st.integers(0, 5), st.one_of(st.floats(-100, 100), st.just(np.nan))
        ),
        min_size=1,
        max_size=40,
    ),
    policy=st.sampled_from(["first", "last", "mean"]),
)
def test_duplicate_policies_match_pandas(tmp_path, rows, policy):
    frame = pd.DataFrame(rows, columns=["unique_id", "ds", "y"])
    frame["ds"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(frame["ds"], unit="D")
    path = tmp_path / f"{policy}.parquet"
    frame.to_parquet(path, index=False)
    got = read_long(path, COLS, policy)
    grouped = frame.groupby(["unique_id", "ds"], sort=True)["y"]
    expected = {"first": grouped.nth(0), "last": grouped.nth(-1), "mean": grouped.mean()}[policy]
    if policy != "mean":
        expected = frame.loc[expected.index].set_index(["unique_id", "ds"])["y"]
    expected = expected.sort_index()
    assert got["ds"].tolist() == [ds for _, ds in expected.index]
    assert got["unique_id"].astype(str).tolist() == [i for i, _ in expected.index]
    np.testing.assert_allclose(got["y"].to_numpy(), expected.to_numpy(), equal_nan=True)


def test_naive_iso_strings(tmp_path):
    table = pa.table(
        {
            "unique_id": ["a", "a", "a"],
            "ds": ["2024-01-01", "2024-01-01T01:00:00", "2024-01-01 02:00:00"],
            "y": [1.0, 2.0, 3.0],
        }
    )
    pq.write_table(table, tmp_path / "n.parquet")
    panel, _ = read_panel(tmp_path / "n.parquet", COLS)
    assert panel.step_seconds.tolist() == [3600.0] and panel.series_values(0).tolist() == [1.0, 2.0, 3.0]
