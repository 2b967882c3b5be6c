"""plot: PNGs of series with their forecast band, y_hat, flags and events."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from maml_anomaly import plotting
from maml_anomaly.batch import plain_ids
from maml_anomaly.commands.common import check_output, command_result, load_input, read_scores_frame
from maml_anomaly.config import Config
from maml_anomaly.core.events import build_events
from maml_anomaly.data.days import UTC, check_zone, to_local
from maml_anomaly.data.write import write_bytes_atomic
from maml_anomaly.errors import InputError


def plot(
    *,
    config: Config,
    input: Path,
    scores: Path,
    output: Path,
    series: list[str] | None = None,
    top: int = 5,
    timezone: str | None = None,
) -> dict[str, Any]:
    """PNGs of series with their forecast band, y_hat, flags and events.

    ``--series ID --output FILE.png``: one picture. Several ``--series``, or none (then the
    ``--top`` most significant flagged series): one PNG per series in the folder ``--output``.
    ``timezone``: the time axis in its local times.
    """
    zone = check_zone(timezone)
    plotting.require_matplotlib()
    if top < 1:
        raise InputError(f"--top must be at least 1; found {top}.")
    single = series is not None and len(series) == 1 and output.suffix.lower() == ".png"
    if not single and output.suffix.lower() == ".png":
        raise InputError(
            f"--output {output} is a PNG file, but this plot draws {'several series' if series else f'the top {top} series'}; "
            "give --output a folder (one PNG per series), or name one --series."
        )
    if output.exists() and (output.is_dir() == single):
        raise InputError(
            f"--output {output} exists and is a {'folder' if single else 'file'}; expected a {'PNG file' if single else 'folder'}."
        )
    check_output(output, "--output", inputs=[input, scores], folder=True)
    score_frame = read_scores_frame(scores)
    data = load_input(config, input)
    ids = _plot_ids(score_frame, series, top)
    frame = data.frame.assign(unique_id=plain_ids(data.frame["unique_id"]))
    events = build_events(score_frame)
    if zone != UTC:  # events are found on the UTC grid, then everything is drawn in local time
        frame["ds"] = to_local(frame["ds"], zone)
        score_frame["ds"] = to_local(score_frame["ds"], zone)
        events = events.assign(**{c: to_local(events[c], zone) for c in ("start", "end", "peak_ds") if c in events})
    written = []
    for rank, uid in enumerate(ids, start=1):  # at most --top or the named series: a handful of pictures
        fig = plotting.render(plotting.series_plot_data(frame, score_frame, events, uid))
        path = output if single else output / f"{rank:02d}_{_file_safe(uid)}.png"
        write_bytes_atomic(plotting.to_png(fig), path)
        written.append(str(path))
    text = (
        f"drew {len(written)} series: " + ", ".join(written)
        if written
        else "no flagged series in the scores: nothing drawn"
    )
    return command_result(text, files=written, series=[str(i) for i in ids])


def _plot_ids(scores: pd.DataFrame, series: list[str] | None, top: int) -> list[Any]:
    """The ids to draw, typed as in the scores file (InputError naming unknown ids)."""
    if not series:
        return plotting.most_significant_series(scores, top)
    known = pd.unique(scores["unique_id"])
    by_text = {str(v): v for v in known}
    missing = [s for s in series if s not in by_text]
    if missing:
        examples = ", ".join(repr(str(v)) for v in known[:5])
        raise InputError(
            f"--series {', '.join(missing)} not found in the scores file (it holds {len(known):,} series, e.g. "
            f"{examples}); name series that daily-score or backtest scored."
        )
    return [by_text[s] for s in series]


def _file_safe(uid: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(uid))[:80] or "series"
