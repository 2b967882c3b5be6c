"""evaluate: precision, recall, F1, false-alarm rate and forecast error of scores against labels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from maml_anomaly.commands.common import command_result, parquet_columns, read_parquet_frame
from maml_anomaly.config import Config
from maml_anomaly.core.baselines import default_periods, seasonal_naive_reference
from maml_anomaly.core.evaluation import evaluate_scores, format_summary
from maml_anomaly.data.days import check_zone, to_utc
from maml_anomaly.data.schemas import SCORE_COLUMNS
from maml_anomaly.errors import InputError
from maml_anomaly.store import open_trained

log = logging.getLogger("maml_anomaly.commands")


def evaluate(
    *,
    config: Config,
    scores: Path,
    labels: Path,
    far: float = 0.01,
    model_dir: Path | None = None,
    timezone: str | None = None,
) -> dict[str, Any]:
    """Precision, recall, F1, false-alarm rate and forecast error of scores against labels.

    The forecast error compares y_hat with seasonal naive on the scored points whose lag is in the
    scores too (period: the model directory's clusters when given, else a day at the series' step,
    a week for daily series). Label timestamps without a timezone are local times of ``timezone``
    (default UTC); timezone-aware ones are converted to UTC like the scores' ``ds``.
    """
    zone = check_zone(timezone)
    if not 0.0 <= far < 1.0:
        raise InputError(f"the target false-alarm rate must be in [0, 1); found {far}.")
    score_frame = read_parquet_frame(scores, "--scores", list(SCORE_COLUMNS))
    label_cols = parquet_columns(labels, "--labels")
    if {"unique_id", "start", "end"} <= set(label_cols):
        label_kind, need = "windows", ["unique_id", "start", "end"]
    elif {"unique_id", "ds"} <= set(label_cols):
        label_kind, need = "points", ["unique_id", "ds"]
    else:
        raise InputError(
            f"--labels {labels} has columns {label_cols}; expected labelled points (unique_id, ds) "
            "or labelled windows (unique_id, start, end, both ends inclusive)."
        )
    label_frame = read_parquet_frame(labels, "--labels", need)
    for col in need[1:]:
        label_frame[col] = to_utc(label_frame[col], zone)
    if label_kind == "points" and len(label_frame) > 0.5 * len(score_frame):
        log.warning(
            "--labels %s labels %d points for %d scored rows: is it a labels file?",
            labels,
            len(label_frame),
            len(score_frame),
        )
    log.info("evaluating %d scored points against %s labels", len(score_frame), label_kind)
    periods = open_trained(model_dir).load_clusters().set_index("unique_id")["period"] if model_dir else None
    summary = evaluate_scores(score_frame, label_frame, far=far, naive=_naive_from_scores(score_frame, periods))
    summary["labels"] = label_kind
    return command_result(format_summary(summary, name=str(scores)), **summary)


def _naive_from_scores(frame: pd.DataFrame, periods: pd.Series | None) -> pd.DataFrame | None:
    """Seasonal-naive forecasts of the scored points from the scores' own y (no MASE scale)."""
    rows = frame.loc[frame["status"] != "off_grid", ["unique_id", "ds", "y"]]
    rows = rows.drop_duplicates(["unique_id", "ds"])
    if rows.empty:
        return None
    period = periods if periods is not None else default_periods(rows)
    return seasonal_naive_reference(rows, period).drop(columns="scale")
