"""evaluate: precision, recall, F1, false-alarm rate and forecast error of scores against labels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from maml_anomaly.commands.common import command_result, parquet_columns, read_parquet_frame, read_scores_frame
from maml_anomaly.config import Config
from maml_anomaly.core.baselines import default_periods, seasonal_naive_reference
from maml_anomaly.core.evaluation import evaluate_scores, format_summary
from maml_anomaly.data.days import check_zone, to_utc
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
    score_frame = read_scores_frame(scores)
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
    label_frame = _labels_in_utc(read_parquet_frame(labels, "--labels", need), need, labels, zone)
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


def _labels_in_utc(frame: pd.DataFrame, need: list[str], path: Path, zone: str) -> pd.DataFrame:
    """Labels with ids present and their times as naive UTC, as in the scores (InputError otherwise);
    naive timestamps are local times of ``zone``."""
    n_null = int(frame["unique_id"].isna().sum())
    if n_null:
        raise InputError(
            f"--labels {path} has {n_null:,} label rows without a unique_id. Expected every label to name its "
            "series; drop or fill those rows."
        )
    frame = frame.assign(**{col: _utc_times(_zone_to_utc(frame[col], zone), col, path) for col in need[1:]})
    if "end" in frame.columns:
        reversed_ = frame["end"] < frame["start"]
        if reversed_.any():
            first = frame[reversed_].iloc[0]
            raise InputError(
                f"--labels {path} has {int(reversed_.sum()):,} windows that end before they start, e.g. "
                f"{first['unique_id']!r} from {first['start']} to {first['end']}. Expected start <= end "
                "(both inclusive); swap or fix them."
            )
    return frame


def _zone_to_utc(values: pd.Series, zone: str) -> pd.Series:
    """Naive timestamps read as ``zone``'s local times, as naive UTC; anything else as it is."""
    if pd.api.types.is_datetime64_dtype(values.dtype) and zone != "UTC":
        return to_utc(values, zone)
    return values


def _utc_times(values: pd.Series, col: str, path: Path) -> pd.Series:
    """Timestamps (aware: converted to UTC) or ISO 8601 strings as naive UTC datetime64[ns]."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        parsed = values.astype("datetime64[ns]")
    elif values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        parsed = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce").dt.tz_localize(None)
        bad = parsed.isna() & values.notna()
        if bad.any():
            examples = ", ".join(repr(v) for v in pd.unique(values[bad])[:5])
            raise InputError(
                f"--labels {path}: column {col!r} has {int(bad.sum()):,} values that are not timestamps, e.g. "
                f"{examples}. Expected timestamps or ISO 8601 strings such as 2024-01-31T13:00:00."
            )
        parsed = parsed.astype("datetime64[ns]")
    else:
        raise InputError(
            f"--labels {path}: column {col!r} has type {values.dtype}. Expected timestamps (naive UTC or "
            "timezone-aware) or ISO 8601 strings."
        )
    if parsed.isna().any():
        raise InputError(
            f"--labels {path}: column {col!r} has {int(parsed.isna().sum()):,} null timestamps. Expected "
            "every label to have its time; drop those rows."
        )
    return parsed


def _naive_from_scores(frame: pd.DataFrame, periods: pd.Series | None) -> pd.DataFrame | None:
    """Seasonal-naive forecasts of the scored points from the scores' own y (no MASE scale)."""
    rows = frame.loc[frame["status"] != "off_grid", ["unique_id", "ds", "y"]]
    rows = rows.drop_duplicates(["unique_id", "ds"])
    if rows.empty:
        return None
    period = periods if periods is not None else default_periods(rows)
    return seasonal_naive_reference(rows, period).drop(columns="scale")
