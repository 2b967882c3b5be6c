"""Pictures of scored series: the data, the forecast band, y_hat, flagged points and events.

Two layers, so tests can check what is drawn without reading pixels:
:func:`series_plot_data` gathers, for one series, exactly what the picture shows (a
:class:`SeriesPlot`), and :func:`render` draws it with matplotlib (imported lazily: the
CLI starts without it) and returns the figure; :func:`to_png` turns a figure into PNG bytes. Writing
files is the pipeline's job.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from maml_anomaly.errors import InputError

# colours chosen to read at a glance and in grey scale: data dark, band pale, flags red
COLOR_DATA = "#222222"
COLOR_FORECAST = "#1f5fbf"
COLOR_BAND = "#9ec3f0"
COLOR_FLAG = "#d62728"
COLOR_EVENT = "#f7c6c7"

INSTALL_HINT = "pip install matplotlib  (a dependency of maml-anomaly: reinstall the package)"


def require_matplotlib() -> Any:
    """The matplotlib module with the file-only Agg backend, or an InputError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise InputError(f"charts need matplotlib, which is not installed. Install it with: {INSTALL_HINT}") from None
    matplotlib.use("Agg", force=True)
    return matplotlib


@dataclass(frozen=True)
class SeriesPlot:
    """What one picture shows; arrays are aligned by position."""

    unique_id: Any
    cluster: str | None
    history_ds: np.ndarray  # (H,) datetime64[ns]: observed points before and during the scored range
    history_y: np.ndarray  # (H,)
    ds: np.ndarray  # (P,) scored points
    y_hat: np.ndarray  # (P,)
    lower: np.ndarray  # (P,)
    upper: np.ndarray  # (P,)
    flagged_ds: np.ndarray  # (F,) flagged points (after the alert rules)
    flagged_y: np.ndarray  # (F,)
    events: pd.DataFrame  # start, end, peak_ds, peak_score, severity, direction, n_points

    @property
    def title(self) -> str:
        n_ev = len(self.events)
        head = f"{self.unique_id}" + (f"  (cluster {self.cluster})" if self.cluster else "")
        if n_ev == 0:
            return f"{head}: no flagged points"
        top = self.events.sort_values("severity", ascending=False).iloc[0]
        return (
            f"{head}: {self.flagged_ds.size} flagged point(s) in {n_ev} event(s); most severe "
            f"{top['direction']} at {pd.Timestamp(top['peak_ds'])}, peak score {top['peak_score']:.1f}"
        )


def series_plot_data(
    history: pd.DataFrame, scores: pd.DataFrame, events: pd.DataFrame, unique_id: Any, *, context: int | None = None
) -> SeriesPlot:
    """Gather one series' picture: scored points and ``context`` observed points before them.

    ``history``: long frame (unique_id, ds, y); ``scores``: scores frame; ``events``: events frame
    (all three may hold other series). ``context`` defaults to twice the scored points, at least 48.
    """
    sc = scores[scores["unique_id"] == unique_id].sort_values("ds")
    if sc.empty:
        raise InputError(
            f"series {unique_id!r} is not in the scores file; pick an id that daily-score or backtest scored."
        )
    hist = history[history["unique_id"] == unique_id].sort_values("ds")
    first = sc["ds"].min()
    context = max(2 * len(sc), 48) if context is None else context
    before = hist[hist["ds"] < first].tail(context)
    during = hist[(hist["ds"] >= first) & (hist["ds"] <= sc["ds"].max())]
    shown = pd.concat([before, during])
    ev = events[events["unique_id"] == unique_id].sort_values("start").reset_index(drop=True)
    return plot_from_rows(unique_id, shown, sc, ev)


def plot_from_rows(unique_id: Any, history: pd.DataFrame, scores: pd.DataFrame, events: pd.DataFrame) -> SeriesPlot:
    """The picture of rows already chosen for one series: observed history, scored rows, events."""
    flagged = scores[scores["is_anomaly"].to_numpy(bool)]
    cluster = scores["cluster"].dropna()
    f = lambda s: s.to_numpy(np.float64, na_value=np.nan)  # noqa: E731
    return SeriesPlot(
        unique_id=unique_id,
        cluster=str(cluster.iloc[0]) if len(cluster) else None,
        history_ds=history["ds"].to_numpy("datetime64[ns]"),
        history_y=f(history["y"]),
        ds=scores["ds"].to_numpy("datetime64[ns]"),
        y_hat=f(scores["y_hat"]),
        lower=f(scores["lower"]),
        upper=f(scores["upper"]),
        flagged_ds=flagged["ds"].to_numpy("datetime64[ns]"),
        flagged_y=f(flagged["y"]),
        events=events,
    )


@dataclass(frozen=True)
class LayerStyle:
    """Sizes of the drawn layers: the full-size picture's by default."""

    line_width: float = 1.1
    band_alpha: float = 0.55
    event_alpha: float = 0.6
    focus_alpha: float = 0.6  # the event a chart is about
    flag_size: float = 42.0


def draw_layers(
    ax: Any, plot: SeriesPlot, half_step: pd.Timedelta, style: LayerStyle = LayerStyle(), focus: Any = None
) -> None:
    """Events (``focus``: the start of the one drawn darker), band, observed y, forecast, flagged points."""
    for i, r in enumerate(plot.events.itertuples(index=False)):  # a handful of events per series
        mine = focus is not None and pd.Timestamp(r.start) == pd.Timestamp(focus)
        ax.axvspan(
            pd.Timestamp(r.start) - half_step,
            pd.Timestamp(r.end) + half_step,
            color=COLOR_EVENT,
            alpha=style.focus_alpha if mine else style.event_alpha,
            lw=0,
            label="event" if i == 0 else None,
        )
    ax.fill_between(
        plot.ds, plot.lower, plot.upper, color=COLOR_BAND, alpha=style.band_alpha, lw=0, label="band (lower, upper)"
    )
    ax.plot(plot.history_ds, plot.history_y, color=COLOR_DATA, lw=style.line_width, label="y")
    ax.plot(plot.ds, plot.y_hat, color=COLOR_FORECAST, lw=style.line_width * 0.9, ls="--", label="y_hat")
    if plot.flagged_ds.size:
        ax.scatter(
            plot.flagged_ds,
            plot.flagged_y,
            s=style.flag_size,
            color=COLOR_FLAG,
            zorder=5,
            label="flagged",
            edgecolors="none",
        )


def render(plot: SeriesPlot, *, width: float = 10.0, height: float = 3.6, dpi: int = 100):
    """A matplotlib Figure of ``plot`` (the caller closes it, or uses :func:`to_png`)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)  # a file-only canvas: no GUI, no global pyplot state
    ax = fig.add_subplot(1, 1, 1)
    draw_layers(ax, plot, _step(plot.history_ds) / 2)
    if plot.ds.size:
        ax.axvline(plot.ds[0], color="#888888", lw=0.8, ls=":")
    ax.set_title(plot.title, fontsize=9, loc="left")
    ax.legend(loc="upper left", fontsize=7, ncol=5, frameon=False)
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.tick_params(labelsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def to_png(fig) -> bytes:
    """PNG bytes of a figure made by :func:`render`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def most_significant_series(scores: pd.DataFrame, n: int) -> list[Any]:
    """Ids of the n series with the highest flagged score (ties: smaller p-value, then id)."""
    flagged = scores[scores["is_anomaly"].to_numpy(bool)]
    if flagged.empty:
        return []
    best = flagged.groupby("unique_id", sort=True, observed=True)["score"].max()  # one row per flagged series
    order = np.lexsort((best.index.astype(str).to_numpy(), -best.to_numpy(np.float64)))
    return best.index.to_numpy()[order[:n]].tolist()


def _step(ds: np.ndarray) -> pd.Timedelta:
    if ds.size < 2:
        return pd.Timedelta(hours=1)
    d = np.diff(ds.astype("datetime64[ns]").view(np.int64))
    d = d[d > 0]
    return pd.Timedelta(int(np.median(d)) if d.size else 3_600 * 10**9, "ns")


__all__ = [
    "SeriesPlot",
    "series_plot_data",
    "plot_from_rows",
    "draw_layers",
    "LayerStyle",
    "render",
    "to_png",
    "most_significant_series",
    "require_matplotlib",
    "INSTALL_HINT",
]
