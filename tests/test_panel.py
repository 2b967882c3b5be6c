"""Panel construction from sorted long rows: grids, steps, phases, off-grid rows and views."""

from __future__ import annotations

import numpy as np
import pytest

from maml_anomaly.data.panel import Panel
from maml_anomaly.errors import InputError

H = np.int64(3600 * 10**9)
D = 24 * H


def _panel(ids, codes, ds, y=None) -> Panel:
    ds = np.asarray(ds, dtype=np.int64)
    y = np.arange(len(ds), dtype=float) if y is None else np.asarray(y, float)
    return Panel.from_sorted(np.asarray(ids, dtype=object), np.asarray(codes), ds, y)


def test_regular_series_with_a_gap_and_mixed_steps():
    p = _panel(["a", "b"], [0, 0, 0, 0, 1, 1, 1], [0, H, 2 * H, 4 * H, 0, D, 2 * D])
    assert p.n_series == 2
    assert p.lengths.tolist() == [5, 3]
    np.testing.assert_array_equal(p.series_values(0), [0, 1, 2, np.nan, 3])
    np.testing.assert_array_equal(p.series_values(1), [4, 5, 6])
    assert p.step_seconds.tolist() == [3600.0, 86400.0]
    assert p.off_grid.empty
    assert p.end.astype(np.int64).tolist() == [4 * H, 2 * D]
    np.testing.assert_array_equal(p.grid_timestamps(0).astype(np.int64), np.arange(5) * H)


def test_single_point_series_has_no_step():
    p = _panel(["a"], [0], [7])
    assert p.lengths.tolist() == [1]
    assert np.isnat(p.step[0])
    assert np.isnan(p.step_seconds[0])
    assert p.end.astype(np.int64).tolist() == [7]


def test_off_phase_rows_are_kept_off_grid_and_grid_anchors_on_the_common_phase():
    # first row 7 ns off the hourly phase that all other rows share
    ds = [7, H, 2 * H, 3 * H, 4 * H + 5]
    p = _panel(["a"], [0] * 5, ds)
    assert p.start.astype(np.int64)[0] == H
    np.testing.assert_array_equal(p.series_values(0), [1, 2, 3])
    assert sorted(p.off_grid["ds"].astype("int64").tolist()) == [7, 4 * H + 5]
    assert p.off_grid["series"].tolist() == [0, 0]
    assert p.off_grid["y"].tolist() == [0.0, 4.0]


def test_tail_matrix_left_pads_with_nan_and_selects_rows():
    p = _panel(["a", "b"], [0, 0, 0, 1], [0, H, 2 * H, 0])
    tail = p.tail_matrix(2)
    np.testing.assert_array_equal(tail, [[1, 2], [np.nan, 3]])
    np.testing.assert_array_equal(p.tail_matrix(4, series=np.array([1])), [[np.nan, np.nan, np.nan, 3]])
    assert p.tail_matrix(3, series=slice(0, 1)).shape == (1, 3)


def test_before_cuts_each_grid_strictly_before_the_timestamp():
    p = _panel(["a", "b"], [0, 0, 0, 1, 1], [0, H, 2 * H, 0, D])
    cut = p.before(np.datetime64(int(2 * H), "ns"))
    assert cut.lengths.tolist() == [2, 1]
    np.testing.assert_array_equal(cut.values, [0, 1, 3])


def test_positions_of_known_and_unknown_ids():
    p = _panel(["a", "c"], [0, 1], [0, 0])
    assert p.positions(["c", "b", "a", "z"]).tolist() == [1, -1, 0, -1]


def test_step_is_the_mode_of_differences():
    # diffs: H, H, H, 2H -> step H; a second series with diffs D, 3D, D -> step D
    p = _panel(["a", "b"], [0, 0, 0, 0, 0, 1, 1, 1, 1], [0, H, 2 * H, 3 * H, 5 * H, 0, D, 4 * D, 5 * D])
    assert p.step_seconds.tolist() == [3600.0, 86400.0]
    assert p.lengths.tolist() == [6, 6]


def test_a_tiny_mode_step_is_widened_to_bound_the_grid():
    # diffs 1 ns, one year, 3 ns: the mode (ties: smallest) would be 1 ns, a 3e16-point grid
    p = _panel(["a", "b"], [0, 0, 0, 0, 1, 1], [0, 1, 365 * D, 365 * D + 3, 0, H])
    assert p.step_seconds[0] == 365 * 86400 and p.lengths.tolist() == [2, 2]
    assert p.step_seconds[1] == 3600.0
    assert p.lengths.sum() - np.isnan(p.values).sum() + len(p.off_grid) == 6  # no row lost


def test_absurd_grid_is_refused_with_a_message(monkeypatch):
    import maml_anomaly.data.panel as panel_module

    monkeypatch.setattr(panel_module, "_widen_tiny_steps", lambda codes, t, first, count, step: step)
    with pytest.raises(InputError, match="regular"):
        _panel(["a"], [0, 0, 0, 0], [0, 1, 365 * D, 365 * D + 3])


def test_snap_tolerance_moves_drifting_rows_to_free_grid_points():
    m = np.int64(60 * 10**9)
    # 10-minute grid; rows drift by a minute or two; two rows compete for the 40-minute point
    ds = [0, 10 * m, 21 * m, 29 * m, 39 * m, 40 * m, 52 * m]
    exact = _panel(["a"], [0] * 7, ds)
    assert exact.snapped == 0 and len(exact.off_grid) == 4
    snapped = Panel.from_sorted(np.array(["a"], dtype=object), np.zeros(7, np.int64), np.array(ds), np.arange(7.0), 0.5)
    np.testing.assert_array_equal(snapped.series_values(0), [0, 1, 2, 3, 5, 6])
    assert snapped.snapped == 3
    assert snapped.off_grid["y"].tolist() == [4.0]  # 39 min lost to the exact 40-minute row
    tight = Panel.from_sorted(np.array(["a"], dtype=object), np.zeros(7, np.int64), np.array(ds), np.arange(7.0), 0.05)
    assert tight.snapped == 0


def test_take_selects_series_and_their_off_grid_rows():
    p = _panel(["a", "b", "c"], [0, 0, 1, 1, 1, 1, 2], [0, H, 0, D, 2 * D, 2 * D + 5, 0])
    sub = p.take(np.array([2, 1]))
    assert list(sub.ids) == ["c", "b"]
    np.testing.assert_array_equal(sub.values, [6, 2, 3, 4])
    assert sub.lengths.tolist() == [1, 3]
    assert sub.off_grid["series"].tolist() == [1] and sub.off_grid["y"].tolist() == [5.0]
    assert p.take(slice(0, 1)).values.tolist() == [0, 1]
