"""The morning view: one self-contained HTML file of a scoring run.

:func:`render_report` takes the run's in-memory frames and returns the HTML text:
the summary (points, series, statuses, flags, expected false alarms at the threshold), the
incidents, the top events each with a small chart (the series over the days around the event,
the band, the forecast, the flagged points) and counts per cluster. :func:`write_report`
writes it atomically.

The file needs nothing but itself: no scripts, no external styles, fonts or images (charts are
SVG drawn by matplotlib, embedded as ``data:`` images, text drawn as paths), and a
Content-Security-Policy that forbids any request, so it opens from a mail attachment and
cannot run anything even if a string slipped through. Every string from the data (series ids
are user input) is HTML-escaped. Responsive CSS and a viewport tag make it readable on a phone.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from maml_anomaly.core.events import top_events
from maml_anomaly.core.incidents import incident_line
from maml_anomaly.plotting import (
    COLOR_BAND,
    COLOR_DATA,
    COLOR_EVENT,
    COLOR_FLAG,
    COLOR_FORECAST,
    LayerStyle,
    SeriesPlot,
    draw_layers,
    plot_from_rows,
    require_matplotlib,
)

DEFAULT_TOP = 10  # events charted: a morning's reading, and about 0.1 s of drawing each
CONTEXT_DAYS = 3.0  # days of the series shown before an event's start
AFTER_DAYS = 1.0  # and after its end (clipped to the data)
# the report's charts: thinner lines, paler other events, smaller flags than plot's full-size picture
SMALL = LayerStyle(line_width=0.9, band_alpha=0.6, event_alpha=0.35, focus_alpha=0.9, flag_size=14.0)
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"  # nothing loads, nothing runs


def render_report(
    *,
    summary: Mapping[str, Any],
    scores: pd.DataFrame,
    history: pd.DataFrame,
    events: pd.DataFrame,
    incidents: pd.DataFrame | None = None,
    clusters: pd.DataFrame | None = None,
    top: int = DEFAULT_TOP,
    title: str = "maml-anomaly: the morning view",
    zone: str = "UTC",
) -> str:
    """The report's HTML text.

    ``summary``: the run's summary dict (daily-score / backtest: points, series, statuses,
    anomalies, alerts, threshold, first_day, last_day; missing keys are left out).
    ``scores``: scores rows of at least the charted series (unique_id, ds, y, y_hat, lower, upper,
    is_anomaly, cluster; at millions of series pass only those: finding them is an ``isin`` over
    every row); ``history``: observed (unique_id, ds, y) of those series before and
    during the run. ``events``: events.build_events; ``incidents``: incidents.find_incidents'
    frame. ``clusters``: :func:`cluster_counts` of the whole run (computed from ``scores`` when
    None, so pass it when ``scores`` holds only the charted series). ``zone``: the time zone the
    frames' times are in, said in the header (the caller converts them).
    """
    chosen = top_events(events, top)
    if clusters is None:
        clusters = cluster_counts(scores, events)
    charts = event_charts(scores, history, events, chosen)
    body = "\n".join(
        [
            f"<header><h1>{_e(title)}</h1><p class=sub>{_e(_run_span(summary, zone))}</p></header>",
            _failed_banner(summary.get("failed_budget")),
            _summary_section(summary, len(events), None if incidents is None else len(incidents)),
            _incidents_section(incidents),
            _events_section(chosen, charts, len(events)),
            _clusters_section(clusters),
            "<footer>Made by maml-anomaly. This file is self-contained: it loads nothing and runs no script.</footer>",
        ]
    )
    return _page(title, body)


def write_report(text: str, path: str | Path) -> Path:
    """Write the HTML atomically: a temporary file beside ``path``, fsync, then os.replace."""
    from maml_anomaly.data.write import write_bytes_atomic

    return write_bytes_atomic(text.encode("utf-8"), path)


# -- data ------------------------------------------------------------------------------------------


def cluster_counts(
    scores: pd.DataFrame, events: pd.DataFrame | None = None, *, series_code: np.ndarray | None = None
) -> pd.DataFrame:
    """Per cluster: series, points, ok points, flagged points and events, from a scores frame.

    Factorises the cluster, status (and unique_id, unless ``series_code`` (N,) is given) columns:
    about a second per 10 million rows. A caller that holds integer codes already should call
    :func:`cluster_table` directly.
    """
    code, names = pd.factorize(scores["cluster"], sort=True)  # (N,) -1 where no cluster
    if series_code is None:
        series_code = pd.factorize(scores["unique_id"])[0]
    return cluster_table(
        code,
        np.asarray(names, dtype=object),
        series_code,
        _is_ok(scores["status"]),
        scores["is_anomaly"].to_numpy(bool),
        events,
    )


def cluster_table(
    cluster_code: np.ndarray,
    names: np.ndarray,
    series_code: np.ndarray,
    ok: np.ndarray,
    flagged: np.ndarray,
    events: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per cluster counts from (N,) integer codes and flags: bincounts only, no sort, no strings.

    ``cluster_code`` (N,) index into ``names`` (-1: no cluster, shown as "(none)"); ``series_code``
    (N,) series of each row (a series is counted in the cluster of its rows).
    """
    names = np.append(np.asarray(names, dtype=object), "(none)")
    code = (
        cluster_code if cluster_code.min(initial=0) >= 0 else np.where(cluster_code < 0, names.size - 1, cluster_code)
    )
    cluster_of = np.full(int(series_code.max()) + 1 if len(series_code) else 0, -1, np.int64)
    cluster_of[series_code] = code  # (S,) any row's cluster: one per series
    n = names.size
    points = np.bincount(code, minlength=n)
    out = pd.DataFrame(
        {
            "cluster": names,
            "series": np.bincount(cluster_of[cluster_of >= 0], minlength=n),
            "points": points,
            "ok": points - np.bincount(code[~ok], minlength=n),  # few rows are not ok: index those, not all
            "flagged": np.bincount(code[flagged], minlength=n),
        }
    )
    per = (
        events["cluster"].astype(object).fillna("(none)").value_counts() if events is not None else pd.Series(dtype=int)
    )
    out["events"] = per.reindex(out["cluster"]).fillna(0).to_numpy(np.int64)
    return out[(out["points"] > 0) | (out["cluster"] != "(none)")].reset_index(drop=True)


def _is_ok(status: pd.Series) -> np.ndarray:
    """(N,) bool status == "ok" through a hash of the few distinct values (object == is a Python call per row)."""
    codes, values = pd.factorize(status)
    return np.isin(codes, np.flatnonzero(np.asarray(values, dtype=object) == "ok"))


def event_charts(scores: pd.DataFrame, history: pd.DataFrame, events: pd.DataFrame, chosen: pd.DataFrame) -> list[str]:
    """One SVG data URI per chosen event (empty string where the series has no rows to draw)."""
    if not len(chosen):
        return []
    require_matplotlib()
    ids = pd.unique(chosen["unique_id"])
    sc = scores[scores["unique_id"].isin(ids)].sort_values(["unique_id", "ds"], kind="stable")
    hist = history[history["unique_id"].isin(ids)].sort_values(["unique_id", "ds"], kind="stable")
    ev = events[events["unique_id"].isin(ids)]
    sc_by, hist_by, ev_by = (dict(tuple(f.groupby("unique_id", sort=False))) for f in (sc, hist, ev))
    empty_sc, empty_hist = sc.iloc[:0], hist.iloc[:0]
    uris = []
    for i, row in enumerate(chosen.itertuples(index=False)):  # at most --top figures, each closed after use
        data = event_plot_data(
            hist_by.get(row.unique_id, empty_hist),
            sc_by.get(row.unique_id, empty_sc),
            ev_by.get(row.unique_id, ev.iloc[:0]),
            row,
        )
        drawn = data.history_ds.size or data.ds.size
        uris.append(_svg_uri(render_small(data, focus=row.start, salt=f"event{i}")) if drawn else "")
    return uris


def event_plot_data(history: pd.DataFrame, scores: pd.DataFrame, events: pd.DataFrame, event: Any) -> SeriesPlot:
    """One series' rows around one event: CONTEXT_DAYS before its start to AFTER_DAYS after its end."""
    lo = pd.Timestamp(event.start) - pd.Timedelta(days=CONTEXT_DAYS)
    hi = pd.Timestamp(event.end) + pd.Timedelta(days=AFTER_DAYS)
    h = history[(history["ds"] >= lo) & (history["ds"] <= hi)]
    s = scores[(scores["ds"] >= lo) & (scores["ds"] <= hi)]
    ev = events[(events["end"] >= lo) & (events["start"] <= hi)]
    return plot_from_rows(event.unique_id, h, s, ev)


# -- charts ----------------------------------------------------------------------------------------


def render_small(
    plot: SeriesPlot, *, focus: Any = None, salt: str = "", width: float = 5.2, height: float = 2.3
) -> bytes:
    """SVG bytes of a compact chart (no title or legend: the page says what it shows).

    ``focus``: the start of the event the chart is for (drawn darker than the series' other events).
    """
    matplotlib = require_matplotlib()
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # file-only canvas, no pyplot state to leak between charts
    ax = fig.add_subplot(1, 1, 1)
    draw_layers(ax, plot, _half_step(plot.ds), SMALL, focus=focus)
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.tick_params(labelsize=8)
    ax.margins(x=0.01)
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.tight_layout(pad=0.4)
    buf = io.BytesIO()
    # text as paths: no font needed to read it; a per-chart salt keeps ids apart; no date: same bytes on rerun
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    fig.clear()
    return buf.getvalue()


def _half_step(ds: np.ndarray) -> pd.Timedelta:
    d = np.diff(ds.astype("datetime64[ns]").view(np.int64)) if ds.size > 1 else np.zeros(0, np.int64)
    d = d[d > 0]
    return pd.Timedelta(int(np.median(d)) // 2 if d.size else 0, "ns")


def _svg_uri(svg: bytes) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


# -- HTML --------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escape text for HTML (content and attribute values)."""
    return html.escape(str(value), quote=True)


def _run_span(summary: Mapping[str, Any], zone: str) -> str:
    first, last = summary.get("first_day"), summary.get("last_day")
    days = f"scored {first}" + ("" if last in (None, first) else f" to {last}") if first else ""
    threshold = f"threshold {summary['threshold']}" if "threshold" in summary else ""
    return ", ".join(p for p in (days, threshold, f"times in {zone}") if p)


def _failed_banner(failed: Mapping[str, Any] | None) -> str:
    """The run's failed budget, first on the page (empty when the run was within its budget)."""
    if not failed:
        return ""
    n, total = int(failed["failed_series"]), int(failed["series"])
    by_status = "; ".join(f"{_e(k)}: {int(v):,} series" for k, v in sorted((failed.get("by_status") or {}).items()))
    return (
        f"<section id=failed class=failed role=alert><h2>This run FAILED its budget</h2><p><b>{n:,} of {total:,} "
        f"series ({n / total:.1%}) could not be scored</b>, more than --max-failed-fraction {float(failed['limit']):g}; "
        "the run exited 1. What follows covers only the series that were scored."
        + (f"</p><p>Failed series by status: {by_status}." if by_status else "")
        + "</p></section>"
    )


def _card(label: str, value: Any, note: str = "") -> str:
    shown = f"{value:,}" if isinstance(value, (int, np.integer)) else f"{value}"
    return (
        f"<div class=card><div class=v>{_e(shown)}</div><div class=k>{_e(label)}</div>"
        + (f"<div class=n>{_e(note)}</div>" if note else "")
        + "</div>"
    )


def _summary_section(summary: Mapping[str, Any], n_events: int, n_incidents: int | None) -> str:
    alerts = summary.get("alerts") or {}
    statuses = summary.get("statuses") or {}
    cards = []
    if "points" in summary:
        cards.append(_card("points scored", int(summary["points"])))
    if "series" in summary:
        cards.append(_card("series", int(summary["series"])))
    if "flagged" in alerts or "anomalies" in summary:
        flagged = int(alerts.get("flagged", summary.get("anomalies", 0)))
        by_score = alerts.get("flagged_by_score")
        cards.append(
            _card(
                "flagged points",
                flagged,
                f"{int(by_score):,} by score before the rules" if by_score is not None else "",
            )
        )
    if "expected_false_alarms" in alerts:
        note = f"at threshold {summary['threshold']}" if "threshold" in summary else ""
        cards.append(_card("expected false alarms", f"{float(alerts['expected_false_alarms']):,.1f}", note))
    cards.append(
        _card("events", n_events, f"{int(alerts['ongoing_events']):,} ongoing" if "ongoing_events" in alerts else "")
    )
    if n_incidents is not None:
        cards.append(_card("incidents", n_incidents))
    rows = "".join(f"<tr><td>{_e(k)}</td><td class=num>{int(v):,}</td></tr>" for k, v in sorted(statuses.items()))
    suppressed = alerts.get("suppressed") or {}
    rows += "".join(
        f"<tr><td>flag removed by {_e(k)}</td><td class=num>{int(v):,}</td></tr>" for k, v in sorted(suppressed.items())
    )
    table = (
        f"<div class=scroll><table class=narrow><thead><tr><th>points by status</th><th>count</th></tr></thead><tbody>{rows}</tbody></table></div>"
        if rows
        else ""
    )
    return f"<section id=summary><h2>Summary</h2><div class=cards>{''.join(cards)}</div>{table}</section>"


def _incidents_section(incidents: pd.DataFrame | None) -> str:
    if incidents is None:
        return "<section id=incidents><h2>Incidents</h2><p>Not computed for this run.</p></section>"
    if not len(incidents):
        return (
            "<section id=incidents><h2>Incidents</h2><p>No incident: no window where events of several series "
            "started together improbably often.</p></section>"
        )
    order = np.lexsort((incidents["start"].to_numpy(), -incidents["n_series"].to_numpy()))
    items = []
    for r in (incidents.iloc[i] for i in order):  # one item per incident (tens at most on a bad day)
        top = ", ".join(str(u) for u in r["top_series"])
        items.append(
            f'<li><span class="dir {_e(r["direction"])}">{_e(r["direction"])}</span> <b>{_e(incident_line(r))}</b>'
            f"<div class=n>peak score {float(r['peak_score']):.1f} at {_e(_ts(r['peak_ds']))}; severity "
            f"{float(r['severity']):,.0f}; {int(r['n_events']):,} events; most severe series: {_e(top)}</div></li>"
        )
    return f"<section id=incidents><h2>Incidents ({len(incidents):,})</h2><ol class=incidents>{''.join(items)}</ol></section>"


def _events_section(chosen: pd.DataFrame, charts: list[str], n_events: int) -> str:
    if not len(chosen):
        return "<section id=events><h2>Top events</h2><p>No flagged points in this run.</p></section>"
    cards = []
    for r, uri in zip(chosen.itertuples(index=False), charts):  # at most --top cards
        span = _ts(r.start) if r.n_points == 1 else f"{_ts(r.start)} .. {_ts(r.end)}, {r.n_points} points"
        alt = f"chart of {r.unique_id} around its event at {_ts(r.peak_ds)}"
        img = f'<img class=chart src="{uri}" alt="{_e(alt)}">' if uri else "<p class=n>no rows to draw</p>"
        cards.append(
            f'<article class=event><h3><span class="dir {_e(r.direction)}">{_e(r.direction)}</span> '
            f"<span class=id>{_e(r.unique_id)}</span> <span class=cl>{_e(r.cluster)}</span></h3>"
            f"<p class=n>{_e(span)}{' (ongoing)' if r.ongoing else ''}; severity {float(r.severity):,.1f}; "
            f"peak score {float(r.peak_score):.1f} at {_e(_ts(r.peak_ds))}: y {float(r.peak_y):.4g}, "
            f"forecast {float(r.peak_y_hat):.4g}</p>{img}</article>"
        )
    head = f"Top {len(chosen)} events by severity" + (f" (of {n_events:,})" if n_events > len(chosen) else "")
    return f"<section id=events><h2>{_e(head)}</h2>{_LEGEND}<div class=events>{''.join(cards)}</div></section>"


_LEGEND = (
    "<p class=legend>"
    + "".join(
        f'<span class=item><i style="{swatch}"></i>{label}</span>'
        for swatch, label in (
            (f"border-top:2px solid {COLOR_DATA}", "observed y"),
            (f"border-top:2px dashed {COLOR_FORECAST}", "forecast y_hat"),
            (f"height:.7rem;background:{COLOR_BAND}", "band lower..upper"),
            (f"width:.6rem;height:.6rem;border-radius:50%;background:{COLOR_FLAG}", "flagged"),
            (f"height:.7rem;background:{COLOR_EVENT}", "the event"),
        )
    )
    + "</p>"
)


def _ts(value: Any) -> str:
    t = pd.Timestamp(value)
    return t.strftime("%Y-%m-%d %H:%M" + (":%S" if t.second else ""))


def _clusters_section(clusters: pd.DataFrame) -> str:
    cols = [c for c in ("cluster", "series", "points", "ok", "flagged", "events") if c in clusters.columns]
    head = "".join(f"<th>{_e(c)}</th>" if c == "cluster" else f"<th class=num>{_e(c)}</th>" for c in cols)
    rows = "".join(
        "<tr>"
        + "".join(f"<td class=num>{int(v):,}</td>" if c != "cluster" else f"<td>{_e(v)}</td>" for c, v in zip(cols, r))
        + "</tr>"
        for r in clusters[cols].itertuples(index=False)  # one row per cluster
    )
    return (
        f"<section id=clusters><h2>Per cluster</h2><div class=scroll><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table></div></section>"
    )


_STYLE = """
:root{color-scheme:light;--fg:#1d1d1f;--mute:#5f6368;--line:#e3e3e3;--bg:#fafafa;--up:#b3261e;--down:#1f5fbf}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:1rem}
header h1{font-size:1.35rem;margin:.2rem 0}
.sub{color:var(--mute);margin:0 0 .6rem}
h2{font-size:1.1rem;margin:1.4rem 0 .5rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}
h3{font-size:.98rem;margin:0 0 .2rem;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(9.5rem,1fr));gap:.6rem}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:.6rem .7rem}
.card .v{font-size:1.35rem;font-weight:600}
.card .k{color:var(--mute);font-size:.85rem}
.n{color:var(--mute);font-size:.82rem;margin:.1rem 0 .3rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem;margin-top:.6rem}
table.narrow{width:auto;min-width:16rem}
th.num{text-align:right}
ol.incidents{padding-left:1.4rem;margin:.4rem 0}
ol.incidents li{margin:.2rem 0 .6rem;overflow-wrap:anywhere}
.cl{color:var(--mute);font-weight:400;font-size:.85rem}
.legend{font-size:.82rem;color:var(--mute);margin:.2rem 0 .6rem;line-height:1.9}
.legend .item{white-space:nowrap;margin-right:.9rem}
.legend i{display:inline-block;width:1.4rem;height:0;vertical-align:middle;margin-right:.3rem;border-radius:2px}
th,td{border-bottom:1px solid var(--line);padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ids{overflow-wrap:anywhere;min-width:8rem}
.events{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,28rem),1fr));gap:.8rem}
.event{background:#fff;border:1px solid var(--line);border-radius:8px;padding:.6rem .7rem}
.chart{display:block;width:100%;height:auto}
.dir{font-size:.78rem;font-weight:600;padding:.05rem .4rem;border-radius:4px;color:#fff;background:var(--mute)}
.dir.up{background:var(--up)}.dir.down{background:var(--down)}
.failed{background:#fdecea;border:2px solid var(--up);border-radius:8px;padding:.2rem .9rem;margin:.6rem 0}
.failed h2{color:var(--up);border:0;margin:.5rem 0 .2rem}
footer{color:var(--mute);font-size:.8rem;margin:2rem 0 1rem}
@media (max-width:600px){body{font-size:14px}main{padding:.6rem}.card .v{font-size:1.15rem}table{font-size:.82rem}th,td{padding:.3rem .3rem}}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )


__all__ = [
    "DEFAULT_TOP",
    "cluster_counts",
    "cluster_table",
    "event_charts",
    "event_plot_data",
    "render_report",
    "render_small",
    "write_report",
]
