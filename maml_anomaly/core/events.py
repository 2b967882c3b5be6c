"""Events: runs of consecutive flagged grid points of a series, one row each, and their file schema.

The run's points are sorted once by (series, ds); a run continues while the next flagged point is
of the same series and exactly one step later. Segment reductions (``np.*.reduceat``) give each
event's span, peak and severity: no Python loop per series or event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: the events parquet, in this order
EVENT_COLUMNS = (
    "unique_id",
    "start",
    "end",
    "peak_ds",
    "peak_score",
    "peak_p_value",
    "min_q_value",
    "peak_y",
    "peak_y_hat",
    "direction",
    "severity",
    "n_points",
    "cluster",
    "ongoing",
)


# -- runs of consecutive grid points --------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """The run's points sorted by (series, ds) and what is needed to find consecutive ones."""

    order: np.ndarray  # (N,) sorted position -> frame row
    series: np.ndarray  # (N,) series code of each sorted point
    ds: np.ndarray  # (N,) int64 ns of each sorted point
    step: np.ndarray  # (N,) int64 ns series step of each sorted point (<= 0: unknown)


def make_grid(
    unique_id: Any, ds: np.ndarray, step: np.ndarray | None = None, *, series: np.ndarray | None = None
) -> Grid:
    """Sort once by (series, ds); ``step`` (N,) timedelta64 per row, or inferred per series.

    ``series`` (N,) integer code of each row's series, when the caller has one (the pipeline's
    panel positions): it spares factorising millions of string ids. Inferred steps: the smallest
    positive gap between a series' points in this run (a daily-scored daily series has one
    point and so no neighbour: each flag is its own event).
    """
    if series is not None:
        codes = np.asarray(series, dtype=np.int64)
    else:
        codes = pd.factorize(pd.Series(unique_id), sort=False)[0].astype(np.int64)  # (N,)
    t = np.asarray(ds, dtype="datetime64[ns]").view(np.int64)
    order = np.lexsort((t, codes))
    codes, t = codes[order], t[order]
    if step is not None:
        st = np.asarray(step, dtype="timedelta64[ns]")[order]
        st = np.where(np.isnat(st), np.int64(0), st.view(np.int64))
    else:
        st = _inferred_step(codes, t)
    return Grid(order=order, series=codes, ds=t, step=st)


def _inferred_step(codes: np.ndarray, t: np.ndarray) -> np.ndarray:
    n = codes.size
    if n == 0:
        return np.zeros(0, np.int64)
    gap = np.diff(t)  # (N-1,)
    same = codes[1:] == codes[:-1]
    big = np.iinfo(np.int64).max
    gap = np.where(same & (gap > 0), gap, big)
    first = np.r_[0, np.flatnonzero(~same) + 1]  # start of each series
    per = np.minimum.reduceat(np.r_[gap, big], first)  # (S,) smallest gap of each series
    per = np.where(per == big, 0, per)
    return np.repeat(per, np.diff(np.r_[first, n]))


def runs(grid: Grid, flags_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of consecutive flagged grid points among sorted points.

    Returns (idx, run) where ``idx`` are the sorted positions of flagged points and ``run`` (F,)
    their run number: a new run starts unless the previous flagged point is of the same series
    and exactly one step earlier.
    """
    idx = np.flatnonzero(flags_sorted)
    if idx.size == 0:
        return idx, np.zeros(0, np.int64)
    s, t, st = grid.series[idx], grid.ds[idx], grid.step[idx]
    cont = (s[1:] == s[:-1]) & (st[1:] > 0) & (t[1:] - t[:-1] == st[1:])  # (F-1,) continues the run
    return idx, np.cumsum(np.r_[True, ~cont]) - 1


# -- events ---------------------------------------------------------------------------------------


def build_events(scores: pd.DataFrame, grid: Grid | None = None) -> pd.DataFrame:
    """One row per run of consecutive flagged grid points of a series (``is_anomaly``).

    severity = sum over the event's points of -log10(p_value): how unlikely the whole event is
    under clean noise, treating its points as independent (3 = one in a thousand); it grows with
    both the size and the length of an event and means the same on every series.
    ``ongoing``: the event reaches the series' last point in this run (it may go on tomorrow).
    """
    if grid is None:
        grid = make_grid(scores["unique_id"], scores["ds"].to_numpy())
    flags = scores["is_anomaly"].to_numpy(bool)[grid.order]  # sorted
    idx, run = runs(grid, flags)
    if idx.size == 0:
        return empty_events(scores["unique_id"].dtype)
    rows = grid.order[idx]  # (F,) frame rows of flagged points, in (series, ds) order
    col = lambda name: scores[name].take(rows).to_numpy()  # noqa: E731  (take first: ids may be arrow strings)
    p = np.clip(scores["p_value"].to_numpy(np.float64, na_value=np.nan)[rows], 1e-300, 1.0)
    score = scores["score"].to_numpy(np.float64, na_value=np.nan)[rows]
    q = (
        scores["q_value"].to_numpy(np.float64, na_value=np.nan)[rows]
        if "q_value" in scores
        else np.full(rows.size, np.nan)
    )
    y = scores["y"].to_numpy(np.float64, na_value=np.nan)[rows]
    y_hat = scores["y_hat"].to_numpy(np.float64, na_value=np.nan)[rows]
    start = np.r_[0, np.flatnonzero(np.diff(run)) + 1]  # (E,) first flagged point of each event
    stop = np.r_[start[1:], run.size] - 1  # (E,) last one
    peak = _segment_argmax(np.nan_to_num(score, nan=-np.inf), start)  # (E,) index into the F points
    up = np.add.reduceat((y > y_hat).astype(np.int64), start)
    down = np.add.reduceat((y < y_hat).astype(np.int64), start)
    size = stop - start + 1
    direction = np.where(up == size, "up", np.where(down == size, "down", "mixed"))
    last_of_series = np.r_[grid.series[1:] != grid.series[:-1], True]  # (N,) sorted: last point of its series
    ds = col("ds")
    events = pd.DataFrame(
        {
            "unique_id": col("unique_id")[start],
            "start": ds[start],
            "end": ds[stop],
            "peak_ds": ds[peak],
            "peak_score": score[peak],
            "peak_p_value": p[peak],
            "min_q_value": np.fmin.reduceat(q, start),
            "peak_y": y[peak],
            "peak_y_hat": y_hat[peak],
            "direction": direction.astype(object),
            "severity": np.add.reduceat(-np.log10(p), start),
            "n_points": size.astype(np.int64),
            "cluster": col("cluster")[start].astype(object),
            "ongoing": last_of_series[idx[stop]],
        }
    )
    events["start"] = events["start"].astype("datetime64[ns]")
    events["end"] = events["end"].astype("datetime64[ns]")
    events["peak_ds"] = events["peak_ds"].astype("datetime64[ns]")
    return events.sort_values(["unique_id", "start"], kind="stable", ignore_index=True)


def _segment_argmax(values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Index of the (first) largest value of each segment [start[i], start[i+1])."""
    seg = np.repeat(np.arange(start.size), np.diff(np.r_[start, values.size]))
    order = np.lexsort((np.arange(values.size), -values, seg))  # per segment: largest first, then earliest
    return order[start]


def empty_events(id_dtype: Any = object) -> pd.DataFrame:
    """An events frame with no rows and the right columns and dtypes."""
    dtypes = {
        "unique_id": "int64" if pd.api.types.is_integer_dtype(id_dtype) else object,
        "start": "datetime64[ns]",
        "end": "datetime64[ns]",
        "peak_ds": "datetime64[ns]",
        "peak_score": "float64",
        "peak_p_value": "float64",
        "min_q_value": "float64",
        "peak_y": "float64",
        "peak_y_hat": "float64",
        "direction": object,
        "severity": "float64",
        "n_points": "int64",
        "cluster": object,
        "ongoing": "bool",
    }
    return pd.DataFrame({c: pd.Series([], dtype=dtypes[c]) for c in EVENT_COLUMNS})


def events_schema(id_type):
    """Arrow schema of the events parquet (``id_type``: pa.string() or pa.int64())."""
    import pyarrow as pa

    ts = pa.timestamp("ns")
    types = {
        "unique_id": id_type,
        "start": ts,
        "end": ts,
        "peak_ds": ts,
        "peak_score": pa.float64(),
        "peak_p_value": pa.float64(),
        "min_q_value": pa.float64(),
        "peak_y": pa.float64(),
        "peak_y_hat": pa.float64(),
        "direction": pa.string(),
        "severity": pa.float64(),
        "n_points": pa.int64(),
        "cluster": pa.string(),
        "ongoing": pa.bool_(),
    }
    return pa.schema([(c, types[c]) for c in EVENT_COLUMNS])


def top_events(events: pd.DataFrame, n: int) -> pd.DataFrame:
    """The n most severe events (ties: higher peak score, then unique_id, start)."""
    if not len(events):
        return events
    order = np.lexsort(
        (
            events["start"].to_numpy(),
            events["unique_id"].astype(str).to_numpy(),
            -events["peak_score"].to_numpy(np.float64),
            -events["severity"].to_numpy(np.float64),
        )
    )
    return events.iloc[order[:n]].reset_index(drop=True)
