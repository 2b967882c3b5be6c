"""Incidents: events of different series that start together and go the same way.

An outage upstream that drops 3,000 series of a cluster at 03:00 is 3,000 events; this module
makes it one incident. Pure numpy / pandas / scipy, no I/O. The rule, with its parameters
(:class:`IncidentRules`):

1. Only ``up`` and ``down`` events take part (a ``mixed`` event, or one whose series step is
   unknown, stays an event).
2. Time is cut into *windows* of ``window_steps`` x the series' step, aligned on the epoch
   (hourly series: one window per clock hour). An event belongs to the window its ``start`` is in.
3. A *unit* is (cluster, direction, step). For each unit, ``T`` = its series with an event
   starting in the run and ``W`` = the windows the run spans (``span``: pass the run's first and
   last scored timestamps; by default the whole UTC days its events start on).
4. A window of a unit is *hot* when at least ``min_series`` distinct series start an event in it
   and either (a) that count ``k`` is improbable if the unit's ``T`` starts were independent and
   uniform over its ``W`` windows, ``P(Binomial(T, 1/W) >= k) <= alpha``, or (b) the run spans
   at most ``share_windows`` windows (daily series in daily-score: one), where (a) cannot tell,
   and ``k`` is at least ``min_share`` of the cluster's series (``cluster_sizes``).
5. Hot windows of one direction whose time ranges overlap or touch are one incident, across
   clusters and steps: an upstream outage seen in three clusters is one incident with a share
   of each. Every event of a hot window belongs to its incident; every other event stays an
   event. A cluster where the outage is not itself improbable (a few series among many
   background events) does not join.

Under (4a) a window of a run with no incident is hot with probability at most ``alpha``, so a
run has at most ``alpha`` x (clusters x directions x windows) spurious incidents on average; tests/test_incidents.py checks the exact rate on independent random starts.

Every step is one sort or a segment reduction over all events (no Python loop per event or
series); ``incident_id`` is ``<direction>-<start, ISO seconds>``, unique in a run and the same
on every rerun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.stats import binom

#: the incidents frame, in this order
INCIDENT_COLUMNS = (
    "incident_id",
    "start",
    "end",
    "direction",
    "n_series",
    "n_events",
    "n_clusters",
    "clusters",
    "cluster_series",
    "cluster_share",
    "peak_score",
    "peak_ds",
    "severity",
    "top_series",
)

DIRECTIONS = ("up", "down")  # an incident goes one way; mixed events stay events
NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class IncidentRules:
    """When coinciding events are one incident (defaults chosen for runs of 10^2 to 10^6 series)."""

    window_steps: int = 1  # window width in the series' steps: 1 = starts on the same grid point
    min_series: int = 2  # an incident needs at least this many series
    alpha: float = 1e-5  # tail probability of a window's count under independent uniform starts
    min_share: float = 0.1  # or, in runs of few windows, this share of the cluster's series (needs cluster_sizes)
    share_windows: int = 7  # "few windows": at most this many (a week of daily series)
    top_series: int = 5  # ids listed per incident, by severity

    def __post_init__(self) -> None:
        if self.window_steps < 1 or self.min_series < 2 or self.top_series < 0:
            raise ValueError("window_steps >= 1, min_series >= 2 and top_series >= 0 are required")
        if not 0 < self.alpha < 1 or not 0 < self.min_share <= 1:
            raise ValueError("alpha must be in (0, 1) and min_share in (0, 1]")


@dataclass(frozen=True)
class Incidents:
    """The incidents of a run and, for each input event row, the row of its incident (-1: none)."""

    incidents: pd.DataFrame  # INCIDENT_COLUMNS, sorted by start, then direction
    event_incident: np.ndarray  # (E,) int64 row of ``incidents`` of each event, -1 if it stays an event
    hot_windows: int  # windows found hot (for diagnostics and the rate test)

    def incident_ids(self) -> np.ndarray:
        """(E,) object: the incident_id of each event, None where it is in no incident."""
        ids = np.append(self.incidents["incident_id"].to_numpy(object), None)
        return ids[self.event_incident]  # -1 picks the appended None


def find_incidents(
    events: pd.DataFrame,
    step: Any,
    *,
    cluster_sizes: Mapping[str, int] | pd.Series | None = None,
    span: tuple[Any, Any] | None = None,
    rules: IncidentRules = IncidentRules(),
) -> Incidents:
    """Group the events frame (events.build_events) into incidents; see the module's rule.

    ``step``: the series' grid step, one Timedelta for all, an (E,) timedelta64 array aligned
    with ``events``, or a Series unique_id -> Timedelta; NaT or <= 0 means unknown.
    ``cluster_sizes``: cluster -> series in the run (shares and rule 4b; None: shares are NaN).
    ``span``: (first, last) timestamps the run scored; default: the UTC days its events start on.
    The result does not depend on the order of the event rows.
    """
    n = len(events)
    if n == 0:
        return Incidents(empty_incidents(), np.zeros(0, np.int64), 0)
    ev = _event_arrays(events, step, cluster_sizes)
    lo, hi = _span_ns(ev["start"], span)
    take, hot_lo, hot_hi, hot_dir = _hot_windows(ev, lo, hi, rules)  # (E,) hot window of each event, -1: none
    win_inc = _merge_windows(hot_lo, hot_hi, hot_dir)
    member = np.append(win_inc, -1)[take]  # (E,) provisional incident number; take = -1 picks the -1
    table, rank = _incident_table(events, ev, member, rules)
    event_incident = np.append(rank, -1)[member].astype(np.int64)
    return Incidents(table, event_incident, int(win_inc.size))


def series_steps(unique_id: Any, ds: Any) -> pd.Series:
    """unique_id -> grid step: the smallest positive gap between a series' points (NaT for one point).

    For callers that have only a file of rows (the panel knows its steps already).
    """
    codes, ids = pd.factorize(pd.Series(unique_id), sort=True)
    t = np.asarray(ds, dtype="datetime64[ns]").view(np.int64)
    order = np.lexsort((t, codes))
    c, t = codes[order], t[order]
    gap = np.diff(t)
    big = np.iinfo(np.int64).max
    gap = np.where((c[1:] == c[:-1]) & (gap > 0), gap, big)  # (N-1,) gaps within a series
    first = np.r_[0, np.flatnonzero(c[1:] != c[:-1]) + 1]  # (S,) each series' first sorted row
    per = np.minimum.reduceat(np.r_[gap, big], first) if c.size else np.zeros(0, np.int64)
    step = np.where(per == big, np.iinfo(np.int64).min, per).view("timedelta64[ns]")  # int64 min is NaT
    return pd.Series(step, index=pd.Index(ids, name="unique_id"), name="step")


def _event_arrays(events: pd.DataFrame, step: Any, cluster_sizes: Any) -> dict[str, np.ndarray]:
    """Integer codes and int64 ns times of the events; ``ok`` marks those that can join an incident."""
    start = events["start"].to_numpy("datetime64[ns]").view(np.int64)
    end = events["end"].to_numpy("datetime64[ns]").view(np.int64)
    st = _steps_ns(events, step)
    direction = events["direction"].astype(object).to_numpy()
    dir_code = np.select([direction == d for d in DIRECTIONS], range(len(DIRECTIONS)), -1)
    clusters = events["cluster"].astype(object).where(events["cluster"].notna(), "").astype(str)
    cluster_code, cluster_names = pd.factorize(clusters, sort=True)  # sorted: codes do not depend on row order
    series_code = pd.factorize(events["unique_id"], sort=True)[0]
    sizes = pd.Series(cluster_sizes if cluster_sizes is not None else {}, dtype="float64")
    size_of = sizes.reindex(cluster_names).to_numpy(np.float64)  # (C,) NaN where unknown
    ok = (dir_code >= 0) & (st > 0)
    return {
        "start": start,
        "end": end,
        "step": st,
        "dir": dir_code,
        "cluster": cluster_code.astype(np.int64),
        "series": series_code.astype(np.int64),
        "ok": ok,
        "cluster_size": size_of,
        "cluster_names": np.asarray(cluster_names, dtype=object),
    }


def _steps_ns(events: pd.DataFrame, step: Any) -> np.ndarray:
    """(E,) int64 ns step of each event's series; 0 where unknown."""
    if isinstance(step, pd.Series):
        vals = step.reindex(pd.Index(events["unique_id"])).to_numpy()
    elif np.ndim(step) == 0:
        vals = np.full(len(events), pd.Timedelta(step).to_timedelta64())
    else:
        vals = np.asarray(step)
    td = pd.to_timedelta(pd.Series(vals)).to_numpy("timedelta64[ns]")  # objects, strings and NaT alike
    return np.where(np.isnat(td), 0, td.view(np.int64)).clip(0)


def _span_ns(start: np.ndarray, span: tuple[Any, Any] | None) -> tuple[int, int]:
    """[lo, hi) ns of the run: the given (first, last) or the UTC days its events start on."""
    if span is not None:
        first, last = (pd.Timestamp(t).value for t in span)
        return int(first), int(last) + 1
    return int(start.min() // NS_PER_DAY * NS_PER_DAY), int((start.max() // NS_PER_DAY + 1) * NS_PER_DAY)


def _hot_windows(
    ev: dict[str, np.ndarray], lo: int, hi: int, rules: IncidentRules
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(E,) hot window of each event (-1: none) and the hot windows' [lo, hi) ns and direction."""
    ok = np.flatnonzero(ev["ok"])
    if ok.size == 0:  # only mixed events or unknown steps
        none = np.zeros(0, np.int64)
        return np.full(ev["ok"].size, -1, np.int64), none, none, none
    width = ev["step"][ok] * rules.window_steps  # (M,) ns
    w_code, width_of = pd.factorize(width, sort=True)
    unit = (ev["cluster"][ok] * len(DIRECTIONS) + ev["dir"][ok]) * len(width_of) + w_code  # (M,)
    bin_ = np.floor_divide(ev["start"][ok], width)  # (M,) window index on the epoch grid
    order = np.lexsort((ev["series"][ok], bin_, unit))
    u, b, s = unit[order], bin_[order], ev["series"][ok][order]
    new_win = np.r_[True, (u[1:] != u[:-1]) | (b[1:] != b[:-1])]  # (M,) first event of a window
    new_pair = new_win | np.r_[True, s[1:] != s[:-1]]  # first event of a (window, series)
    win = np.cumsum(new_win) - 1  # (M,) window of each sorted event
    k = np.bincount(win, weights=new_pair).astype(np.int64)  # (K,) distinct series per window
    first = np.flatnonzero(new_win)
    w_unit, w_bin = u[first], b[first]
    unit_total = pd.Series(k).groupby(w_unit).transform("sum").to_numpy()  # (K,) T of the window's unit
    w_width = width_of[w_unit % len(width_of)]  # (K,) ns
    n_windows = np.maximum(-(-(hi - lo) // w_width), 1)  # (K,) windows the run spans at this width
    tail = binom.sf(k - 1, unit_total, 1.0 / n_windows)  # P(Binomial(T, 1/W) >= k)
    size = np.nan_to_num(ev["cluster_size"][w_unit // len(DIRECTIONS) // len(width_of)], nan=np.inf)  # (K,)
    by_share = (n_windows <= rules.share_windows) & (k >= rules.min_share * size)
    hot = (k >= rules.min_series) & ((tail <= rules.alpha) | by_share)
    hot_id = np.where(hot, np.cumsum(hot) - 1, -1)  # (K,)
    take = np.full(ev["ok"].size, -1, np.int64)
    take[ok[order]] = hot_id[win]
    w_dir = (w_unit // len(width_of)) % len(DIRECTIONS)
    return take, (w_bin * w_width)[hot], ((w_bin + 1) * w_width)[hot], w_dir[hot]


def _merge_windows(lo: np.ndarray, hi: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """(H,) incident number of each hot window: same direction, ranges overlapping or touching."""
    if lo.size == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((hi, lo, direction))
    d, a, z = direction[order], lo[order], hi[order]
    reach = pd.Series(z).groupby(d).cummax().to_numpy()  # furthest end so far in the direction
    new = np.r_[True, (d[1:] != d[:-1]) | (a[1:] > reach[:-1])]
    inc = np.empty(lo.size, np.int64)
    inc[order] = np.cumsum(new) - 1
    return inc


def _incident_table(
    events: pd.DataFrame, ev: dict[str, np.ndarray], member: np.ndarray, rules: IncidentRules
) -> tuple[pd.DataFrame, np.ndarray]:
    """The incidents frame and (I,) final row of each provisional incident number."""
    rows = np.flatnonzero(member >= 0)
    if rows.size == 0:
        return empty_incidents(events["unique_id"].dtype), np.zeros(0, np.int64)
    m = pd.DataFrame(
        {
            "inc": member[rows],
            "series": ev["series"][rows],
            "cluster": ev["cluster"][rows],
            "start": ev["start"][rows],
            "end": ev["end"][rows],
            "dir": ev["dir"][rows],
            "severity": events["severity"].to_numpy(np.float64)[rows],
            "peak_score": events["peak_score"].to_numpy(np.float64)[rows],
            "peak_ds": events["peak_ds"].to_numpy("datetime64[ns]").view(np.int64)[rows],
            "uid": events["unique_id"].take(rows).to_numpy(),
        }
    )
    per = m.groupby("inc", sort=True).agg(
        start=("start", "min"),
        end=("end", "max"),
        dir=("dir", "first"),
        n_events=("series", "size"),
        n_series=("series", "nunique"),
        severity=("severity", "sum"),
    )
    peak = _first_by(m, ["peak_score", "peak_ds", "series"], [False, True, True]).set_index("inc")
    series = (
        m.groupby(["inc", "series"], sort=True)
        .agg(
            severity=("severity", "sum"),
            peak_score=("peak_score", "max"),
            cluster=("cluster", "first"),
            uid=("uid", "first"),
        )
        .reset_index()
    )
    top = _first_by(series, ["severity", "peak_score", "series"], [False, False, True], n=rules.top_series)
    by_cluster = _cluster_shares(series, ev)
    start = per["start"].to_numpy().astype("datetime64[ns]")
    direction = np.asarray(DIRECTIONS, dtype=object)[per["dir"].to_numpy()]
    table = pd.DataFrame(
        {
            "incident_id": direction + "-" + np.datetime_as_string(start, unit="s").astype(object),
            "start": start,
            "end": per["end"].to_numpy().astype("datetime64[ns]"),
            "direction": direction,
            "n_series": per["n_series"].to_numpy(np.int64),
            "n_events": per["n_events"].to_numpy(np.int64),
            "n_clusters": by_cluster["n_clusters"],
            "clusters": by_cluster["clusters"],
            "cluster_series": by_cluster["cluster_series"],
            "cluster_share": by_cluster["cluster_share"],
            "peak_score": peak["peak_score"].reindex(per.index).to_numpy(np.float64),
            "peak_ds": peak["peak_ds"].reindex(per.index).to_numpy().astype("datetime64[ns]"),
            "severity": per["severity"].to_numpy(np.float64),
            "top_series": _lists(top["inc"].to_numpy(), top["uid"].to_numpy(), per.index.to_numpy()),
        }
    )
    order = np.lexsort((table["direction"].to_numpy(str), table["start"].to_numpy()))  # by start, then direction
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    provisional = np.full(int(per.index.max()) + 1, -1, np.int64)
    provisional[per.index.to_numpy()] = rank
    return table.iloc[order].reset_index(drop=True), provisional


def _first_by(frame: pd.DataFrame, by: list[str], ascending: list[bool], n: int = 1) -> pd.DataFrame:
    """The first ``n`` rows of each incident ("inc") in the order ``by`` (ties end on the series code)."""
    ranked = frame.sort_values(["inc", *by], ascending=[True, *ascending], kind="stable")
    return ranked[ranked.groupby("inc").cumcount() < n]


def _cluster_shares(series: pd.DataFrame, ev: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per incident: its clusters by series count (desc, then name), their counts and shares of the cluster."""
    counts = series.groupby(["inc", "cluster"], sort=True).size().rename("n").reset_index()
    counts = counts.sort_values(["inc", "n", "cluster"], ascending=[True, False, True], kind="stable")
    incs = np.unique(counts["inc"].to_numpy())
    code = counts["cluster"].to_numpy()
    label = ev["cluster_names"][code]
    share = counts["n"].to_numpy(np.float64) / ev["cluster_size"][code]
    inc = counts["inc"].to_numpy()
    return {
        "n_clusters": np.bincount(np.searchsorted(incs, inc), minlength=incs.size).astype(np.int64),
        "clusters": _lists(inc, label, incs),
        "cluster_series": _lists(inc, counts["n"].to_numpy(np.int64), incs),
        "cluster_share": _lists(inc, share, incs),
    }


def _lists(group: np.ndarray, values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(G,) object array of numpy arrays: ``values`` split by ``group`` (sorted), one per entry of ``groups``."""
    cut = np.searchsorted(group, groups, side="left")
    stop = np.searchsorted(group, groups, side="right")
    out = np.empty(groups.size, dtype=object)
    out[:] = [values[a:b] for a, b in zip(cut, stop)]  # one slice per incident, not per event
    return out


def empty_incidents(id_dtype: Any = object) -> pd.DataFrame:
    """An incidents frame with no rows and the right columns and dtypes."""
    dtypes = {
        "incident_id": object,
        "start": "datetime64[ns]",
        "end": "datetime64[ns]",
        "direction": object,
        "n_series": "int64",
        "n_events": "int64",
        "n_clusters": "int64",
        "clusters": object,
        "cluster_series": object,
        "cluster_share": object,
        "peak_score": "float64",
        "peak_ds": "datetime64[ns]",
        "severity": "float64",
        "top_series": object,
    }
    return pd.DataFrame({c: pd.Series([], dtype=dtypes[c]) for c in INCIDENT_COLUMNS})


def incidents_schema(id_type):
    """Arrow schema of the incidents parquet (``id_type``: pa.string() or pa.int64(), as the events')."""
    import pyarrow as pa

    ts = pa.timestamp("ns")
    types = {
        "incident_id": pa.string(),
        "start": ts,
        "end": ts,
        "direction": pa.string(),
        "n_series": pa.int64(),
        "n_events": pa.int64(),
        "n_clusters": pa.int64(),
        "clusters": pa.list_(pa.string()),
        "cluster_series": pa.list_(pa.int64()),
        "cluster_share": pa.list_(pa.float64()),
        "peak_score": pa.float64(),
        "peak_ds": ts,
        "severity": pa.float64(),
        "top_series": pa.list_(id_type),
    }
    return pa.schema([(c, types[c]) for c in INCIDENT_COLUMNS])


# -- text ------------------------------------------------------------------------------------------


def incident_line(row: Mapping[str, Any], *, max_clusters: int = 2) -> str:
    """One line: "3,012 series of 1h-p24 (41%) down at 2024-03-24 03:00..04:10"."""
    names, counts, shares = list(row["clusters"]), list(row["cluster_series"]), list(row["cluster_share"])
    parts = [
        f"{name}" + (f" {n:,}" if len(names) > 1 else "") + (f" ({_percent(share)})" if np.isfinite(share) else "")
        for name, n, share in zip(names[:max_clusters], counts, shares)
    ]
    more = len(names) - max_clusters
    where = ", ".join(parts) + (f" and {more} more cluster{'s' * (more > 1)}" if more > 0 else "")
    start, end = pd.Timestamp(row["start"]), pd.Timestamp(row["end"])
    until = end.strftime("%H:%M") if end.normalize() == start.normalize() else end.strftime("%Y-%m-%d %H:%M")
    span = start.strftime("%Y-%m-%d %H:%M") + ("" if end == start else f"..{until}")
    return f"{row['n_series']:,} series of {where} {row['direction']} at {span}"


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 or share == 0 else f"{share:.1%}"  # 0.4% rather than 0%


def incidents_text(incidents: pd.DataFrame, *, top: int = 5) -> str:
    """The summary's incident lines: most series first; one line when there is one incident."""
    n = len(incidents)
    if n == 0:
        return "0 incidents"
    order = np.lexsort((incidents["start"].to_numpy(), -incidents["n_series"].to_numpy()))[:top]
    lines = [incident_line(incidents.iloc[i]) for i in order]  # at most ``top`` rows
    if n == 1:
        return f"1 incident: {lines[0]}"
    more = f" (the {top} largest)" if n > top else ""
    return f"{n:,} incidents{more}:\n" + "\n".join(f"  {line}" for line in lines)


__all__ = [
    "INCIDENT_COLUMNS",
    "IncidentRules",
    "Incidents",
    "empty_incidents",
    "find_incidents",
    "incident_line",
    "incidents_schema",
    "incidents_text",
    "series_steps",
]
