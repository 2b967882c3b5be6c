"""Schemas: the scores output's columns and types, and what reading an input found (ReadReport)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

READ_ATTR = "maml_anomaly.read"  # frame.attrs key carrying read_long's counts to build_panel

#: The scores output (daily-score, backtest): these columns first, in this order.
SCORE_COLUMNS: dict[str, pa.DataType | None] = {
    "unique_id": None,  # as input: string or int64
    "ds": pa.timestamp("ns"),
    "y": pa.float64(),
    "y_hat": pa.float64(),
    "lower": pa.float64(),
    "upper": pa.float64(),
    "score": pa.float64(),
    "is_anomaly": pa.bool_(),
    "cluster": pa.string(),
    "status": pa.string(),
}

_PANDAS_DTYPES = {
    "ds": "datetime64[ns]",
    "y": "float64",
    "y_hat": "float64",
    "lower": "float64",
    "upper": "float64",
    "score": "float64",
    "is_anomaly": "bool",
    "cluster": "object",
    "status": "object",
}


@dataclass(frozen=True)
class ReadReport:
    """What reading found; every count is rows unless named otherwise."""

    rows: int  # rows read (before resolving duplicates)
    series: int
    grid_points: int  # values in the panel (on-grid points, including missing ones)
    missing: int  # grid points without a value: missing timestamps, null/NaN/inf y
    off_grid: int  # rows off their series' regular grid (kept in Panel.off_grid)
    duplicates: int  # rows sharing (unique_id, ds) with an earlier row (resolved by policy)
    non_finite: int  # +inf/-inf values, treated as missing
    snapped: int = 0  # rows moved to their nearest grid point (snap_tolerance > 0)
    rounded: int = 0  # integer values beyond 2^53 read as the nearest float64

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.rows:,} rows, {self.series:,} series, {self.grid_points:,} grid points "
            f"({self.missing:,} missing), {self.off_grid:,} off-grid rows, "
            f"{self.duplicates:,} duplicates resolved, {self.non_finite:,} non-finite values"
            + (f", {self.snapped:,} rows snapped to their grid" if self.snapped else "")
            + (f", {self.rounded:,} integers beyond 2^53 rounded to float64" if self.rounded else "")
        )

    def warnings(self, path: Any) -> list[str]:
        """What the read summary of a whole run warns about, once per run (not once per batch)."""
        if not self.rounded:
            return []
        return [
            f"input {path}: {self.rounded:,} integer values beyond 2^53 read as float64, rounded to 53 "
            "significant bits (a relative error below 1.2e-16)"
        ]


def scores_schema(id_type: pa.DataType = pa.string()) -> pa.Schema:
    """Arrow schema of the scores output's leading columns (``id_type``: string or int64)."""
    return pa.schema([(name, typ if typ is not None else id_type) for name, typ in SCORE_COLUMNS.items()])


def empty_scores_frame(id_dtype: str = "object") -> pd.DataFrame:
    """A scores frame with no rows and the right columns and dtypes."""
    data = {"unique_id": pd.Series([], dtype=id_dtype)}
    data.update({name: pd.Series([], dtype=dtype) for name, dtype in _PANDAS_DTYPES.items()})
    return pd.DataFrame(data)
