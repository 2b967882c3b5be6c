"""The panel: every series on its own regular grid, all values in one float64 buffer with offsets.

Built without a Python loop per series: rows are sorted once by (series, ds); each series' step
is the mode of its positive timestamp differences and its grid is anchored on the most common
phase ``(ds - first ds) mod step``. Rows on the grid land by integer grid index in a NaN-filled
buffer (missing timestamps and missing values are both NaN); rows off the grid are kept in
``off_grid``, never dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from maml_anomaly.config import ColumnConfig
from maml_anomaly.data.clock import refuse_calendar_steps, regrid_jittered, snapped_times
from maml_anomaly.data.schemas import READ_ATTR, ReadReport
from maml_anomaly.errors import InputError

log = logging.getLogger(__name__)

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
# A grid this much larger than the rows it holds means the step was mis-inferred (e.g. two
# points a second apart in a yearly series); refuse rather than allocate gigabytes.
_MAX_GRID_BLOWUP = 20
_MAX_GRID_SLACK = 10_000_000


@dataclass(frozen=True)
class Panel:
    """All series in one array plus offsets (see docs/architecture.md).

    Grid point ``j`` of series ``i`` is at ``start[i] + j * step[i]`` and holds
    ``values[indptr[i] + j]`` (NaN = missing).
    """

    ids: np.ndarray  # (S,) series ids in sorted order (object array of str, or int64)
    indptr: np.ndarray  # (S+1,) int64; series i occupies values[indptr[i]:indptr[i+1]]
    values: np.ndarray  # (N,) float64 on each series' regular grid; NaN = missing value
    start: np.ndarray  # (S,) datetime64[ns]: each series' first grid timestamp
    step: np.ndarray  # (S,) timedelta64[ns]: each series' step (NaT if it has one point)
    off_grid: pd.DataFrame  # rows off their series' grid: series (int64 position), ds, y
    snapped: int = 0  # rows moved to their nearest grid point (snap_tolerance > 0)

    # -- views --------------------------------------------------------------------------------

    @property
    def n_series(self) -> int:
        return int(self.ids.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """(S,) int64 number of grid points per series."""
        return np.diff(self.indptr)

    @property
    def end(self) -> np.ndarray:
        """(S,) datetime64[ns] last grid timestamp per series (NaT for an empty series)."""
        last = self.lengths - 1  # (S,)
        step = np.where(np.isnat(self.step), np.timedelta64(0, "ns"), self.step)
        end = self.start + last * step  # (S,)
        return np.where(last >= 0, end, np.datetime64("NaT", "ns"))

    @property
    def step_seconds(self) -> np.ndarray:
        """(S,) float64 step in seconds (NaN where the step is unknown)."""
        out = self.step.astype("int64").astype(np.float64) / 1e9  # (S,)
        out[np.isnat(self.step)] = np.nan
        return out

    def series_values(self, i: int) -> np.ndarray:
        """(L_i,) the grid values of series ``i`` (a view, do not modify)."""
        return self.values[self.indptr[i] : self.indptr[i + 1]]

    def grid_timestamps(self, i: int) -> np.ndarray:
        """(L_i,) datetime64[ns] grid timestamps of series ``i``."""
        n = int(self.indptr[i + 1] - self.indptr[i])
        step = self.step[i] if not np.isnat(self.step[i]) else np.timedelta64(0, "ns")
        return self.start[i] + np.arange(n, dtype=np.int64) * step

    def tail_matrix(self, n: int, series: np.ndarray | slice | None = None) -> np.ndarray:
        """(S, n) float64 last ``n`` grid values per series, left-padded with NaN.

        ``series`` selects rows (positions or a slice) so callers can stream in chunks.
        """
        rows = np.arange(self.n_series)[series] if series is not None else np.arange(self.n_series)
        lo = self.indptr[rows]  # (B,)
        hi = self.indptr[rows + 1]  # (B,)
        pos = hi[:, None] - n + np.arange(n)[None, :]  # (B, n) buffer positions
        valid = pos >= lo[:, None]  # (B, n)
        out = np.full(pos.shape, np.nan)
        out[valid] = self.values[pos[valid]]
        return out

    def positions(self, ids: np.ndarray | list) -> np.ndarray:
        """(M,) int64 position of each id in ``self.ids``, -1 where the id is unknown."""
        ids = np.asarray(ids, dtype=self.ids.dtype)
        pos = np.searchsorted(self.ids, ids)  # (M,)
        pos = np.clip(pos, 0, max(self.n_series - 1, 0))
        found = (self.n_series > 0) & (self.ids[pos] == ids) if self.n_series else np.zeros(len(ids), bool)
        return np.where(found, pos, -1).astype(np.int64)

    def grid_times(self, series: np.ndarray, ds: np.ndarray, tolerance: float) -> np.ndarray:
        """(N,) datetime64[ns] rows' grid timestamps where a panel built with ``tolerance`` snapped
        them onto their grid; their own timestamps elsewhere (``series``: panel positions)."""
        step = np.where(np.isnat(self.step), 0, self.step.view(np.int64))
        off_series, off_t = self.off_grid["series"].to_numpy(), self.off_grid["ds"].to_numpy().view(np.int64)
        t = snapped_times(ds.view(np.int64), series, self.start.view(np.int64), step, off_series, off_t, tolerance)
        return t.view("M8[ns]")

    def before(self, ts: np.datetime64 | str | pd.Timestamp) -> Panel:
        """The panel cut to grid points strictly before ``ts`` (series keep their grid)."""
        ts = np.datetime64(pd.Timestamp(ts).as_unit("ns").to_datetime64(), "ns")
        delta = (ts - self.start).astype(np.int64)  # (S,) ns from start to ts
        step = np.where(np.isnat(self.step), 1, self.step.astype(np.int64))  # (S,)
        keep = np.clip(-(-delta // step), 0, self.lengths)  # (S,) ceil(delta / step) points
        indptr = np.zeros(self.n_series + 1, np.int64)
        np.cumsum(keep, out=indptr[1:])
        take = _ranges(self.indptr[:-1], keep)
        off = self.off_grid[self.off_grid["ds"].to_numpy() < ts].reset_index(drop=True)
        return Panel(self.ids, indptr, self.values[take], self.start, self.step, off)

    def take(self, series: np.ndarray | slice) -> Panel:
        """The sub-panel of the given series (positions or a slice), e.g. one streaming batch."""
        rows = np.arange(self.n_series)[series]  # (B,)
        lengths = self.lengths[rows]
        indptr = np.zeros(rows.shape[0] + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        values = self.values[_ranges(self.indptr[rows], lengths)]
        new_pos = np.full(self.n_series, -1, np.int64)
        new_pos[rows] = np.arange(rows.shape[0])
        off = self.off_grid[new_pos[self.off_grid["series"].to_numpy()] >= 0].copy()
        off["series"] = new_pos[off["series"].to_numpy()]
        return Panel(self.ids[rows], indptr, values, self.start[rows], self.step[rows], off.reset_index(drop=True))

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def from_sorted(
        cls, ids: np.ndarray, codes: np.ndarray, ds: np.ndarray, y: np.ndarray, snap_tolerance: float = 0.0
    ) -> Panel:
        """Build from long rows sorted by (codes, ds), with no duplicate (code, ds) pair.

        ids (S,) sorted ids; codes (N,) int64 position in ids of every row, every code present;
        ds (N,) datetime64[ns] or int64 ns; y (N,) float64 (NaN = missing).
        snap_tolerance: 0 keeps only rows exactly on the grid; f > 0 moves a row within
        f * step of a free grid point onto it (0.5 = the nearest point; of rows competing for
        one point the closest wins, the others stay off-grid).
        """
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            codes = codes.astype(np.int64)
        t = np.asarray(ds).view(np.int64) if np.asarray(ds).dtype.kind == "M" else np.asarray(ds, np.int64)
        y = np.asarray(y, dtype=np.float64)
        n_rows, n_series = t.shape[0], ids.shape[0]
        if n_rows == 0:
            return cls(
                ids,
                np.zeros(n_series + 1, np.int64),
                np.empty(0),
                np.empty(0, "M8[ns]"),
                np.empty(0, "m8[ns]"),
                _off_grid_frame(np.empty(0, np.int64), t, y),
            )

        first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])  # (S,) first row per series
        if first.shape[0] != n_series:
            raise ValueError("every id must own at least one row")
        count = np.diff(np.r_[first, n_rows])  # (S,)
        # Series are independent: work on blocks of whole series so that the row-sized
        # temporaries of the steps below stay a few MB, whatever the number of rows.
        step = np.zeros(n_series, np.int64)  # (S,) ns, 0 for one-point series
        start = np.zeros(n_series, np.int64)  # (S,) ns
        length = np.zeros(n_series, np.int64)  # (S,) grid points
        on = np.empty(n_rows, bool)  # (N,) row lies on (or was snapped to) its grid
        # grid index per row; int32 fits whenever the grid passes _check_blowup
        gidx = np.empty(n_rows, np.int32 if _MAX_GRID_BLOWUP * n_rows + _MAX_GRID_SLACK < 2**31 else np.int64)
        blocks = _series_blocks(first, n_rows)
        n_exact = 0
        for s_lo, s_hi, r_lo, r_hi in blocks:
            c = codes[r_lo:r_hi].astype(np.int64) - s_lo  # (B,) codes local to the block
            tb, fb, cb = t[r_lo:r_hi], first[s_lo:s_hi] - r_lo, count[s_lo:s_hi]
            st = _mode_step(c, tb, fb, cb)
            st = _widen_tiny_steps(c, tb, fb, cb, st)
            ob, sa = _anchor(c, tb, fb, st)
            refuse_calendar_steps(ids[s_lo:s_hi], c, tb, st, ob)
            if snap_tolerance > 0:  # a jittered clock: infer step and origin from all rows, not the mode
                st, sa, ob = regrid_jittered(c, tb, fb, cb, st, sa, ob)
            gb = (tb - sa[c]) // np.where(st > 0, st, 1)[c]  # (B,) grid index (valid where on)
            n_exact += int(ob.sum())
            if snap_tolerance > 0:
                ob, gb = _snap(c, tb, sa, st, ob, snap_tolerance)
            length[s_lo:s_hi] = _last_per_code(c[ob], gb[ob], s_hi - s_lo) + 1
            step[s_lo:s_hi], start[s_lo:s_hi] = st, sa
            on[r_lo:r_hi], gidx[r_lo:r_hi] = ob, gb  # gidx may wrap only where _check_blowup raises
        _check_blowup(ids, count, length, step)

        indptr = np.zeros(n_series + 1, np.int64)
        np.cumsum(length, out=indptr[1:])
        values = np.full(int(indptr[-1]), np.nan)  # (N_grid,)
        for _, _, r_lo, r_hi in blocks:
            ob = on[r_lo:r_hi]
            values[indptr[codes[r_lo:r_hi][ob]] + gidx[r_lo:r_hi][ob]] = y[r_lo:r_hi][ob]
        del gidx
        step_td = np.where(step > 0, step, np.iinfo(np.int64).min).view("m8[ns]")
        off = np.flatnonzero(~on)  # (M,) usually few
        return cls(
            ids,
            indptr,
            values,
            start.view("M8[ns]"),
            step_td,
            _off_grid_frame(codes[off], t[off], y[off]),
            int(on.sum()) - n_exact,
        )


#: Rows per block in Panel.from_sorted (a series longer than this is a block of its own).
_BLOCK_ROWS = 1 << 21


def _series_blocks(first: np.ndarray, n_rows: int) -> list[tuple[int, int, int, int]]:
    """(series lo, series hi, row lo, row hi) of consecutive blocks of whole series, each of
    about _BLOCK_ROWS rows; first (S,) is each series' first row."""
    cuts = np.unique(np.r_[0, np.searchsorted(first, np.arange(_BLOCK_ROWS, n_rows, _BLOCK_ROWS)), first.shape[0]])
    rows = np.r_[first, n_rows][cuts]
    return [(int(cuts[i]), int(cuts[i + 1]), int(rows[i]), int(rows[i + 1])) for i in range(cuts.shape[0] - 1)]


# -- building blocks (vectorised over series) ---------------------------------------------------


def _mode_step(codes: np.ndarray, t: np.ndarray, first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(S,) int64 mode of each series' positive ds differences (ties: the smallest); 0 if one point."""
    n_series = first.shape[0]
    step = np.zeros(n_series, np.int64)
    if t.shape[0] < 2:
        return step
    d = np.diff(t)  # (N-1,) difference to the next row
    same = codes[1:] == codes[:-1]  # (N-1,) both rows in one series
    multi = np.flatnonzero(count >= 2)  # series with at least one difference
    if multi.shape[0] == 0:
        return step
    lo = np.where(same, d, _INT64_MAX)
    hi = np.where(same, d, _INT64_MIN)
    dmin = np.minimum.reduceat(lo, first[multi])  # (M,)
    dmax = np.maximum.reduceat(hi, first[multi])  # (M,)
    # The smallest difference is the mode (ties: the smallest) whenever it makes at least half
    # of a series' differences: true of regular series, and of series with a few gaps.
    owner = np.repeat(np.arange(n_series), count)[1:]  # (N-1,) series of each difference
    dmin_full = np.zeros(n_series, np.int64)
    dmin_full[multi] = dmin
    at_min = np.add.reduceat((same & (d == dmin_full[owner])).astype(np.int64), first[multi])  # (M,)
    majority = (dmin == dmax) | (2 * at_min >= count[multi] - 1)
    step[multi[majority]] = dmin[majority]
    irregular = multi[~majority]
    if irregular.shape[0]:
        is_irregular = np.zeros(n_series, bool)
        is_irregular[irregular] = True
        keep = same & is_irregular[codes[1:]]
        step[irregular] = _mode_per_code(codes[1:][keep], d[keep], n_series)[irregular]
    return step


def _widen_tiny_steps(
    codes: np.ndarray, t: np.ndarray, first: np.ndarray, count: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """Widen a mode step that would blow a series' grid up (say two rows a nanosecond apart in
    a yearly series): use the series' smallest difference that keeps its grid within bounds."""
    span = t[first + count - 1] - t[first]  # (S,)
    bound = _MAX_GRID_BLOWUP * count + 1000  # (S,) grid points allowed per series
    grid_len = span // np.where(step > 0, step, 1) + 1  # (S,)
    odd = np.flatnonzero((step > 0) & (grid_len > bound))
    if odd.shape[0] == 0:
        return step
    is_odd = np.zeros(first.shape[0], bool)
    is_odd[odd] = True
    d = np.diff(t)  # (N-1,)
    keep = (codes[1:] == codes[:-1]) & is_odd[codes[1:]]  # rows sorted: c is sorted too
    c, v = codes[1:][keep], d[keep]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    wide_enough = v >= -(-span[c] // (bound[c] - 1))  # differences that bound the grid
    smallest_ok = np.minimum.reduceat(np.where(wide_enough, v, _INT64_MAX), starts)
    step = step.copy()
    step[c[starts]] = np.where(smallest_ok < _INT64_MAX, smallest_ok, np.maximum.reduceat(v, starts))
    return step


def _mode_per_code(code: np.ndarray, value: np.ndarray, n_series: int) -> np.ndarray:
    """(S,) most frequent value per code (ties: the smallest value), via sort + run lengths."""
    order = np.lexsort((value, code))
    c, v = code[order], value[order]  # (K,) sorted by (code, value)
    starts = np.flatnonzero(np.r_[True, (c[1:] != c[:-1]) | (v[1:] != v[:-1])])  # run starts
    run_len = np.diff(np.r_[starts, c.shape[0]])
    run_code, run_value = c[starts], v[starts]
    best = np.lexsort((-run_len, run_code))  # stable: equal lengths keep the smaller value first
    first_of_code = best[np.r_[True, run_code[best][1:] != run_code[best][:-1]]]
    out = np.zeros(n_series, np.int64)
    out[run_code[first_of_code]] = run_value[first_of_code]
    return out


def _anchor(codes: np.ndarray, t: np.ndarray, first: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows lie on their series' grid, and each grid's start (int64 ns).

    The grid is anchored on the most common phase ``(ds - first ds) mod step`` (ties: the
    first row's phase); it starts at the earliest row with that phase.
    """
    n_series = first.shape[0]
    safe_step = np.where(step > 0, step, 1)  # (S,)
    t0 = t[first]  # (S,)
    raw = (t - t0[codes]) % safe_step[codes]  # (N,) phase relative to the first row
    best = np.zeros(n_series, np.int64)  # (S,) anchor phase
    shifted = raw != 0
    if shifted.any():
        has_off = np.zeros(n_series, bool)
        has_off[codes[shifted]] = True
        sel = has_off[codes]
        best[has_off] = _mode_per_code(codes[sel], raw[sel], n_series)[has_off]
    on = raw == best[codes]  # (N,)
    on_rows = np.flatnonzero(on)
    oc = codes[on_rows]
    firsts = on_rows[np.r_[True, oc[1:] != oc[:-1]]]  # (S,) earliest on-grid row per series
    start = t0.copy()
    start[codes[firsts]] = t[firsts]
    return on, start


def _snap(
    codes: np.ndarray, t: np.ndarray, start: np.ndarray, step: np.ndarray, on: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """On-grid mask and grid index after moving rows within tolerance * step to the nearest point."""
    safe_step = np.where(step > 0, step, 1)[codes]  # (N,)
    rel = t - start[codes]  # (N,) ns since the grid start
    g = (rel + safe_step // 2) // safe_step  # (N,) nearest grid index
    dev = np.abs(rel - g * safe_step)  # (N,) 0 for rows exactly on the grid
    cand = np.flatnonzero(on | ((step[codes] > 0) & (g >= 0) & (dev <= tolerance * safe_step)))
    c, gg, dv = codes[cand], g[cand], dev[cand]
    # rows of one series competing for one grid point are adjacent (sorted by time)
    run = np.cumsum(np.r_[True, (c[1:] != c[:-1]) | (gg[1:] != gg[:-1])]) - 1
    order = np.lexsort((dv, run))  # closest first within each run (stable: earliest on ties)
    winners = cand[order[np.r_[True, run[order][1:] != run[order][:-1]]]]
    snapped_on = np.zeros_like(on)
    snapped_on[winners] = True
    return snapped_on, g


def _last_per_code(code: np.ndarray, value: np.ndarray, n_series: int) -> np.ndarray:
    """(S,) value of the last row of each code (rows sorted by code)."""
    out = np.full(n_series, -1, np.int64)
    if code.shape[0]:
        last = np.flatnonzero(np.r_[code[1:] != code[:-1], True])
        out[code[last]] = value[last]
    return out


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[i], starts[i] + counts[i]) for all i, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64)
    offsets = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts)
    return np.arange(total, dtype=np.int64) + offsets


def _check_blowup(ids: np.ndarray, count: np.ndarray, length: np.ndarray, step: np.ndarray) -> None:
    total = int(length.sum())
    if total <= _MAX_GRID_BLOWUP * int(count.sum()) + _MAX_GRID_SLACK:
        return
    worst = np.argsort(-(length / count))[:3]
    shown = "; ".join(
        f"{ids[i]!r}: {count[i]} rows, step {pd.Timedelta(int(step[i]), 'ns')} -> {length[i]} grid points"
        for i in worst
    )
    raise InputError(
        f"the regular grids inferred from the timestamps would hold {total:,} points for "
        f"{int(count.sum()):,} rows: some series have a step far smaller than their span ({shown}). "
        "Expected each series to be sampled at a regular step; resample or aggregate those series "
        "to a regular frequency, or remove them."
    )


def _off_grid_frame(codes: np.ndarray, t: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "series": np.asarray(codes, np.int64),
            "ds": np.asarray(t, np.int64).view("M8[ns]"),
            "y": np.asarray(y, np.float64),
        }
    )


# -- a long frame as a panel ----------------------------------------------------------------------


def build_panel(frame: pd.DataFrame, snap_tolerance: float = 0.0) -> tuple[Panel, ReadReport]:
    """Panel of a long frame (unique_id, ds, y), rows in any order; duplicates are an error here.

    snap_tolerance: see :meth:`Panel.from_sorted` (0 = rows must lie exactly on their grid).
    """
    for col in ("unique_id", "ds", "y"):
        if col not in frame.columns:
            raise InputError(f"expected a column {col!r}; found {list(frame.columns)}.")
    counts = frame.attrs.get(READ_ATTR, {})
    ids, codes = _factorize(frame["unique_id"])
    t = pd.to_datetime(frame["ds"]).to_numpy(dtype="datetime64[ns]").view(np.int64)
    y = frame["y"].to_numpy(dtype=np.float64, na_value=np.nan)  # a view when already float64
    inf = np.isinf(y)  # (N,)
    n_inf = int(inf.sum())
    if n_inf:
        y = np.where(inf, np.nan, y)
    del inf
    order = sort_order(codes, t)
    if order is not None:  # one permuted copy at a time, each original freed at once
        codes = codes[order]
        t = t[order]
        y = y[order]
        del order
    codes, t, y, n_dup = resolve_duplicates(ids, codes, t, y, "error", ColumnConfig())
    panel = Panel.from_sorted(ids, codes, t, y, snap_tolerance)
    report = ReadReport(
        rows=int(counts.get("rows", len(frame))),
        series=panel.n_series,
        grid_points=int(panel.values.shape[0]),
        missing=int(np.isnan(panel.values).sum()),
        off_grid=len(panel.off_grid),
        duplicates=int(counts.get("duplicates", 0)),
        non_finite=int(counts.get("non_finite", n_inf)),
        snapped=panel.snapped,
        rounded=int(counts.get("rounded", 0)),
    )
    return panel, report


def _factorize(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(ids.dtype, pd.CategoricalDtype):
        cats = ids.cat.categories.to_numpy()
        codes = ids.cat.codes.to_numpy()  # (N,) a view, int8..int32 (Panel.from_sorted takes any int)
        if (codes < 0).any():
            raise InputError("column 'unique_id' has null ids; expected every row to name its series.")
        if not (len(cats) < 2 or np.all(cats[1:] > cats[:-1])):
            sort = np.argsort(cats, kind="stable")
            rank = np.empty_like(sort)
            rank[sort] = np.arange(sort.shape[0])
            cats, codes = cats[sort], rank[codes]
        used = np.zeros(len(cats), bool)
        used[codes] = True
        if not used.all():  # drop unused categories so every id owns rows
            remap = np.cumsum(used) - 1
            cats, codes = cats[used], remap[codes]
        ids_out = cats.astype(np.int64) if cats.dtype.kind in "iu" else cats.astype(object)
        return ids_out, codes
    if ids.isna().any():
        raise InputError("column 'unique_id' has null ids; expected every row to name its series.")
    codes, uniques = pd.factorize(ids, sort=True)
    uniques = np.asarray(uniques)
    ids_out = uniques.astype(np.int64) if uniques.dtype.kind in "iu" else uniques.astype(object)
    return ids_out, codes.astype(np.int64)


#: Rows per block in the checks below: bounds their temporaries at a few MB.
_BLOCK = 1 << 20


def sort_order(codes: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """Permutation sorting rows by (code, ds) (stable: first/last policies keep input order),
    or None when they already are."""
    n = codes.shape[0]
    if n < 2:
        return None
    if _is_sorted(codes, t):
        return None
    if _is_monotonic(t):  # time-ordered input (daily appends): a stable sort by series suffices
        return np.argsort(codes, kind="stable")  # timsort: fast on the runs such input has
    key = _combined_key(codes, t)
    if key is not None:  # one int64 key: numpy's stable argsort beats arrow's two-key sort
        return np.argsort(key, kind="stable")
    keys = pa.table({"code": codes, "t": t})
    return pc.sort_indices(keys, sort_keys=[("code", "ascending"), ("t", "ascending")]).to_numpy()


def _is_sorted(codes: np.ndarray, t: np.ndarray) -> bool:
    """Whether rows are sorted by (code, ds), checked block by block (no row-sized temporary)."""
    n = codes.shape[0]
    for lo in range(0, n - 1, _BLOCK):
        hi = min(n, lo + _BLOCK + 1)  # blocks overlap by one row
        dc = np.diff(codes[lo:hi])
        if not ((dc >= 0).all() and ((dc > 0) | (np.diff(t[lo:hi]) >= 0)).all()):
            return False
    return True


def _is_monotonic(t: np.ndarray) -> bool:
    n = t.shape[0]
    return all((np.diff(t[lo : min(n, lo + _BLOCK + 1)]) >= 0).all() for lo in range(0, n - 1, _BLOCK))


def _combined_key(codes: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """(N,) int64 code * span + (ds - first ds) / g, ordered like (code, ds); None if it would
    overflow. g is the gcd of all ds offsets (a day for daily data), which keeps the span small."""
    t0 = int(t.min())
    g = 0
    for lo in range(0, t.shape[0], _BLOCK):
        g = int(np.gcd(g, np.gcd.reduce(t[lo : lo + _BLOCK] - t0)))
    g = max(g, 1)
    span = (int(t.max()) - t0) // g + 1
    if (int(codes.max()) + 1) * span >= np.iinfo(np.int64).max:
        return None
    key = codes.astype(np.int64)  # (N,)
    key *= span
    for lo in range(0, t.shape[0], _BLOCK):
        key[lo : lo + _BLOCK] += (t[lo : lo + _BLOCK] - t0) // g
    return key


def resolve_duplicates(
    ids: np.ndarray, codes: np.ndarray, t: np.ndarray, y: np.ndarray, policy: str, columns: ColumnConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Apply the duplicate policy to rows sorted by (code, ds); returns rows and the dropped count."""
    if codes.shape[0] < 2:
        return codes, t, y, 0
    dup = (codes[1:] == codes[:-1]) & (t[1:] == t[:-1])  # (N-1,) row i+1 repeats row i
    n_dup = int(dup.sum())
    if n_dup == 0:
        return codes, t, y, 0
    if policy == "error":
        rows = np.flatnonzero(dup) + 1
        keys = sorted({(ids[codes[r]], pd.Timestamp(t[r])) for r in rows[:200]})[:5]
        shown = "; ".join(f"{i!r} at {ts}" for i, ts in keys)
        raise InputError(
            f"input has {n_dup:,} duplicate rows: {n_dup:,} rows repeat the ({columns.id_col}, "
            f"{columns.time_col}) of another row, e.g. {shown}. Expected one row per series and "
            "timestamp; aggregate them upstream or choose a policy with --on-duplicate "
            "first|last|mean."
        )
    new_group = np.r_[True, ~dup]  # (N,) first row of each (code, ds) group
    group_start = np.flatnonzero(new_group)
    if policy == "first":
        keep = group_start
        y_out = y[keep]
    elif policy == "last":
        keep = np.r_[group_start[1:] - 1, codes.shape[0] - 1]
        y_out = y[keep]
    else:  # mean of the non-missing values; NaN when none
        keep = group_start
        finite = ~np.isnan(y)
        sums = np.add.reduceat(np.where(finite, y, 0.0), group_start)
        counts = np.add.reduceat(finite.astype(np.int64), group_start)
        with np.errstate(invalid="ignore", divide="ignore"):
            y_out = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    log.warning("%d duplicate rows resolved with --on-duplicate %s", n_dup, policy)
    return codes[keep], t[keep], y_out, n_dup
